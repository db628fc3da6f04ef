//! Failsafe mode, API side: what `POST /failsafe` received from the primary, shared with the agent.
//!
//! The agent owns the HA side (Patroni's `Failsafe` in `patroni/ha.py`) and, per cycle:
//! - calls [`FailsafeState::set_config`] with `failsafe_mode` and the `failsafe` key of the last view it read
//!   (keep the old members when the store could not be read: that is exactly when they matter);
//! - while the store is unreachable, reads [`FailsafeState::active`] with `ttl`: a primary that announced itself
//!   within `ttl` means "do not start a leader race", and its `slots` are the positions to advance slots to;
//! - calls [`FailsafeState::reset`] when it promotes.

use std::collections::BTreeMap;
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::time::{Duration, Instant};

use keel_core::dynconfig::parse_uint;
use keel_core::lsn::Lsn;
use serde_json::Value;

/// One `POST /failsafe` from the primary: `{"name", "conn_url", "api_url", "slots": {name: lsn}}`.
#[derive(Debug, Clone, PartialEq)]
pub struct FailsafeAnnouncement {
    pub name: String,
    pub conn_url: Option<String>,
    pub api_url: Option<String>,
    /// Slot positions on the primary, including its own name → its flush position.
    pub slots: BTreeMap<String, Lsn>,
    pub received: Instant,
}

impl FailsafeAnnouncement {
    /// Reads the primary's body; `Err` with a message for the client when it is not one.
    pub fn from_json(v: &Value, received: Instant) -> Result<Self, String> {
        let obj = v.as_object().ok_or("failsafe: the body must be a JSON object")?;
        let name = obj
            .get("name")
            .and_then(Value::as_str)
            .filter(|s| !s.is_empty())
            .ok_or("failsafe: \"name\" must be a non-empty string")?;
        let text = |k: &str| -> Result<Option<String>, String> {
            match obj.get(k) {
                None | Some(Value::Null) => Ok(None),
                Some(Value::String(s)) => Ok(Some(s.clone())),
                Some(_) => Err(format!("failsafe: \"{k}\" must be a string")),
            }
        };
        let mut slots = BTreeMap::new();
        match obj.get("slots") {
            None | Some(Value::Null) => {}
            Some(Value::Object(m)) => {
                for (k, v) in m {
                    let lsn =
                        parse_uint(v).ok_or_else(|| format!("failsafe: slot {k:?} position must be an integer"))?;
                    slots.insert(k.clone(), Lsn(lsn));
                }
            }
            Some(_) => return Err("failsafe: \"slots\" must be an object".into()),
        }
        Ok(FailsafeAnnouncement {
            name: name.to_string(),
            conn_url: text("conn_url")?,
            api_url: text("api_url")?,
            slots,
            received,
        })
    }
}

#[derive(Debug, Default)]
struct Inner {
    enabled: bool,
    members: Option<BTreeMap<String, String>>,
    last: Option<FailsafeAnnouncement>,
}

/// Shared between the API (writer of announcements) and the agent (writer of the mode and member list).
#[derive(Debug, Default)]
pub struct FailsafeState {
    inner: Mutex<Inner>,
}

impl FailsafeState {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// The agent: `failsafe_mode` from the dynamic configuration and the store's `failsafe` key.
    pub fn set_config(&self, enabled: bool, members: Option<BTreeMap<String, String>>) {
        let mut g = self.lock();
        g.enabled = enabled;
        g.members = members;
    }

    pub fn enabled(&self) -> bool {
        self.lock().enabled
    }

    /// The `failsafe` key as last published by the agent.
    pub fn members(&self) -> Option<BTreeMap<String, String>> {
        self.lock().members.clone()
    }

    /// The API: a primary announced itself.
    pub fn record(&self, announcement: FailsafeAnnouncement) {
        self.lock().last = Some(announcement);
    }

    /// The last announcement, if it is younger than `ttl` (Patroni's `Failsafe.is_active`).
    pub fn active(&self, ttl: Duration) -> Option<FailsafeAnnouncement> {
        self.lock().last.as_ref().filter(|a| a.received.elapsed() < ttl).cloned()
    }

    /// Forgets the last announcement (on promotion).
    pub fn reset(&self) {
        self.lock().last = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn announcement_parsing_and_expiry() {
        let now = Instant::now();
        let a = FailsafeAnnouncement::from_json(
            &json!({"name":"n1","api_url":"http://h:8008/patroni","slots":{"n1":100,"s":"5"}}),
            now,
        )
        .unwrap();
        assert_eq!(a.slots.get("s"), Some(&Lsn(5)));
        assert!(FailsafeAnnouncement::from_json(&json!({"api_url":"x"}), now).is_err());
        assert!(FailsafeAnnouncement::from_json(&json!({"name":"n","slots":[1]}), now).is_err());
        let st = FailsafeState::new();
        assert!(st.active(Duration::from_secs(30)).is_none());
        st.record(a);
        assert!(st.active(Duration::from_secs(30)).is_some());
        assert!(st.active(Duration::ZERO).is_none());
        st.reset();
        assert!(st.active(Duration::from_secs(30)).is_none());
    }
}
