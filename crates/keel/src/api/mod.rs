//! The REST API (Patroni-compatible paths and status codes).

pub mod control;
pub mod health;
pub mod metrics;
pub mod server;
