//! Keel's decision core.
//!
//! Pure functions and plain data only: no async runtime, no clock, no database or network client. The agent
//! reads the store and PostgreSQL, hands the results in as values ([`view::ClusterView`], the local observation
//! and the current [`time::Millis`]), and executes the typed actions that come back.

pub mod divergence;
pub mod dynconfig;
pub mod exec;
pub mod fence;
pub mod ha;
pub mod lsn;
pub mod member_state;
pub mod pgconfig;
pub mod pgcontrol;
pub mod slotfile;
pub mod slots;
pub mod store;
pub mod sync;
pub mod time;
pub mod timeline_history;
pub mod view;
