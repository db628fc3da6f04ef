//! The REST API (Patroni-compatible paths and status codes).

pub mod access;
pub mod ciphers;
pub mod control;
pub mod health;
pub mod keys;
pub mod listener;
pub mod metrics;
pub mod server;
pub mod tls;
