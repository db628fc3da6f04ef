//! Failsafe mode (Patroni's `failsafe_mode`): a primary keeps its role through a store outage while every member
//! accepts it. [`exchange`] is the primary's side (`POST /failsafe` to every member), [`state`] what a member
//! received, shared between the REST API (which records announcements) and the HA loop (which reads them).

pub mod exchange;
mod primary;
pub mod state;

pub use exchange::{announcement, confirm, FAILSAFE_TIMEOUT};
pub use state::{FailsafeAnnouncement, FailsafeState};
