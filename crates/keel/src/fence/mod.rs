//! The fence: a small process beside the agent (`keel fence`, started by the agent, fed over a pipe) that kills
//! PostgreSQL when the leader key may expire and the agent has not re-armed it — because the HA loop is blocked
//! in a long action, the agent is frozen (SIGSTOP) or dead. It works like a watchdog the agent must keep feeding;
//! the decision of when to arm and with which deadline is `keel_core::fence`.

pub mod handle;
pub mod process;
pub mod watchdog;

pub use handle::Fence;
