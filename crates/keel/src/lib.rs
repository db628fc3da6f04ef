//! Keel's agent: everything that talks to the outside world (configuration files, the store, PostgreSQL, HTTP).
//! The decisions themselves live in the `keel-core` crate.

pub mod agent;
pub mod api;
pub mod cli;
pub mod clock;
pub mod cluster_runner;
pub mod config;
pub mod dcs;
pub mod fence;
pub mod node;
pub mod postgres;
pub mod status;
pub mod tls_verify;
pub mod workload;
