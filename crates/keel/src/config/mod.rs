//! Keel's local configuration: Patroni's YAML file, read unchanged.

pub mod yaml;
