//! `keel run`: the agent on one node, an interpreter of the core. The runtime loop ([`runtime`]) reads the store
//! and PostgreSQL, asks `keel_core::ha::decide` what to do, and has `keel_core::exec` carry the decision out
//! through the agent's host ([`host`]); then it publishes ([`publish`]). Requests from the REST API arrive on
//! [`request_channel`] and are answered between cycles ([`requests`]).

mod cost;
mod dynamic;
pub mod failsafe;
mod fencing;
pub mod follower;
mod host;
pub mod local;
pub mod pgauth;
pub mod probe;
mod publish;
pub mod request_channel;
mod requests;
mod runtime;
mod shutdown;
pub mod slot_manager;

pub(crate) use runtime::{Agent, AgentParts};
