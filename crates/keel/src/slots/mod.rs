//! Replication slots on the agent's side: copying a logical slot's state file to a standby.

pub mod copy;
