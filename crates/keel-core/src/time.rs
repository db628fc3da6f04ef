//! Time as a value. The core never reads a clock: callers pass the current time in.

use serde::{Deserialize, Serialize};

/// Milliseconds on a clock chosen by the caller (wall clock in the agent, a counter in simulations).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default, Serialize, Deserialize)]
pub struct Millis(pub u64);

impl Millis {
    pub const fn from_secs(secs: u64) -> Self {
        Millis(secs * 1000)
    }

    pub fn plus_secs(self, secs: u64) -> Self {
        Millis(self.0.saturating_add(secs.saturating_mul(1000)))
    }

    pub fn plus_millis(self, ms: u64) -> Self {
        Millis(self.0.saturating_add(ms))
    }

    /// Milliseconds elapsed since `earlier`, zero if `earlier` is in the future.
    pub fn since(self, earlier: Millis) -> u64 {
        self.0.saturating_sub(earlier.0)
    }
}
