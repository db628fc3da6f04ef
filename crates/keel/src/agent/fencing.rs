//! Keeping the fence and the watchdog in step with this node's leadership (see `keel_core::fence`).

use keel_core::fence::{Arming, FenceInput};
use keel_core::ha::HaInput;
use keel_core::time::Millis;

use super::runtime::Agent;
use crate::dcs::KvBackend;
use crate::fence::watchdog::WatchdogMode;

impl<B: KvBackend> Agent<B> {
    /// Arms the fence while this node is a writable leader (with the last refresh, or now when failsafe mode
    /// confirmed it), disarms it otherwise.
    pub(super) fn update_fence(&mut self, input: &HaInput, is_primary: bool, now: Millis) {
        let unobserved_but_running = self.last_obs.is_none() && self.local.ctl.is_running();
        let failsafe_confirmed = self.failsafe_active && self.exec.holds_leader;
        let fence_input = FenceInput {
            holds_leader: self.exec.holds_leader,
            may_write: is_primary || unobserved_but_running,
            paused: input.config.pause,
            refreshed: if failsafe_confirmed { Some(now) } else { self.exec.last_leader_refresh },
            ttl_secs: input.config.timing.ttl,
            safety_margin_secs: self.watchdog.config().fence_margin_secs(input.config.timing.ttl),
        };
        let arming = keel_core::fence::arming(&fence_input);
        self.fence.set(arming);
        match arming {
            Arming::Armed { .. } => self.watchdog.keepalive(input.config.timing.ttl),
            Arming::Disarmed => self.watchdog.disable(),
        }
    }

    /// `watchdog.mode: required` and the device cannot be used (an open device is in use).
    pub(super) fn watchdog_unavailable(&self) -> bool {
        let w = self.watchdog.config();
        w.mode == WatchdogMode::Required && !self.watchdog.is_open() && !w.device_usable()
    }
}
