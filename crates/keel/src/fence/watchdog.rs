//! Patroni's `watchdog` section: a hardware (or softdog) watchdog device the leader keeps feeding once per HA
//! cycle, so that a host whose agent stops feeding it is reset before the leader key can expire. Keel's own fence
//! process (`super::process`) covers a blocked or dead agent; the device also covers a frozen host.
//!
//! Semantics as Patroni's: `mode: off | automatic | required` (default automatic), `device` (default
//! `/dev/watchdog`), `safety_margin` (default 5 s; -1 means a timeout of ttl/2). The device is opened when the
//! node becomes a writable leader, its timeout set to `ttl - safety_margin`, fed with a write each cycle, and
//! closed with the magic `V` when the node steps down (so that closing does not reset the host). With
//! `required`, a node whose device cannot be used does not take part in the leader race.
//!
//! A path that is not a character device (a regular file) is accepted as a stand-in for tests: it receives the
//! same writes, without a timeout (logged once).

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::os::unix::fs::FileTypeExt;
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use tracing::{error, info, warn};

/// Linux `WDIOC_SETTIMEOUT` (`_IOWR('W', 6, int)`).
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;

/// `watchdog.mode`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum WatchdogMode {
    Off,
    #[default]
    Automatic,
    Required,
}

impl WatchdogMode {
    /// Patroni's spellings; anything else is an error (never silently "off").
    pub fn parse(value: &str) -> Option<WatchdogMode> {
        match value.trim().to_ascii_lowercase().as_str() {
            "off" | "false" | "no" | "disable" | "disabled" => Some(WatchdogMode::Off),
            "automatic" | "auto" => Some(WatchdogMode::Automatic),
            "required" | "require" => Some(WatchdogMode::Required),
            _ => None,
        }
    }
}

/// The `watchdog` section, checked.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WatchdogConfig {
    pub mode: WatchdogMode,
    pub device: PathBuf,
    /// Seconds; -1: the device timeout is ttl/2.
    pub safety_margin: i64,
}

impl Default for WatchdogConfig {
    fn default() -> Self {
        WatchdogConfig { mode: WatchdogMode::Automatic, device: "/dev/watchdog".into(), safety_margin: 5 }
    }
}

impl WatchdogConfig {
    /// The device timeout for `ttl` (Patroni: `ttl - safety_margin`, or `ttl / 2` with a margin of -1).
    pub fn timeout_secs(&self, ttl: u64) -> u64 {
        match u64::try_from(self.safety_margin) {
            Ok(margin) => ttl.saturating_sub(margin).max(1),
            Err(_) => (ttl / 2).max(1),
        }
    }

    /// How long before the key can expire Keel's fence acts: the same margin.
    pub fn fence_margin_secs(&self, ttl: u64) -> u64 {
        ttl - self.timeout_secs(ttl).min(ttl)
    }

    /// Whether the device looks usable (exists and is writable), without opening it: opening a real watchdog
    /// arms it.
    pub fn device_usable(&self) -> bool {
        let Ok(path) = std::ffi::CString::new(self.device.as_os_str().as_encoded_bytes()) else { return false };
        // SAFETY: access(2) on a NUL-terminated path.
        unsafe { libc::access(path.as_ptr(), libc::W_OK) == 0 }
    }
}

/// The open device while this node is a writable leader.
pub struct Watchdog {
    config: WatchdogConfig,
    open: Option<File>,
    /// Activation failed in automatic mode: logged once until it works.
    reported: bool,
}

impl Watchdog {
    pub fn new(config: WatchdogConfig) -> Watchdog {
        Watchdog { config, open: None, reported: false }
    }

    pub fn config(&self) -> &WatchdogConfig {
        &self.config
    }

    pub fn is_open(&self) -> bool {
        self.open.is_some()
    }

    /// Opens the device if needed (setting its timeout for `ttl`) and feeds it.
    pub fn keepalive(&mut self, ttl: u64) {
        if self.config.mode == WatchdogMode::Off {
            return;
        }
        if self.open.is_none() {
            match activate(&self.config.device, self.config.timeout_secs(ttl)) {
                Ok(file) => {
                    info!(
                        "watchdog {} activated (timeout {} s)",
                        self.config.device.display(),
                        self.config.timeout_secs(ttl)
                    );
                    self.open = Some(file);
                    self.reported = false;
                }
                Err(e) if !self.reported => {
                    self.reported = true;
                    error!("cannot activate the watchdog {}: {e}", self.config.device.display());
                    return;
                }
                Err(_) => return,
            }
        }
        if let Some(f) = &mut self.open {
            if let Err(e) = f.write_all(b"1").and_then(|()| f.flush()) {
                error!("cannot feed the watchdog {}: {e}", self.config.device.display());
            }
        }
    }

    /// Closes the device with the magic `V` (disarming it), if open.
    pub fn disable(&mut self) {
        if let Some(mut f) = self.open.take() {
            match f.write_all(b"V").and_then(|()| f.flush()) {
                Ok(()) => info!("watchdog {} disabled", self.config.device.display()),
                Err(e) => warn!("cannot disarm the watchdog {}: {e}", self.config.device.display()),
            }
        }
    }
}

/// Opens the device and sets its timeout (a stand-in regular file has none).
fn activate(device: &Path, timeout: u64) -> std::io::Result<File> {
    let file = OpenOptions::new().write(true).open(device)?;
    if !file.metadata()?.file_type().is_char_device() {
        warn!("watchdog {} is not a device: writing to it as a stand-in (tests), without a timeout", device.display());
        return Ok(file);
    }
    let mut t = libc::c_int::try_from(timeout).unwrap_or(libc::c_int::MAX);
    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int through the pointer.
    if unsafe { libc::ioctl(file.as_raw_fd(), WDIOC_SETTIMEOUT, &mut t) } != 0 {
        let e = std::io::Error::last_os_error();
        let mut f = file;
        let _ = f.write_all(b"V");
        return Err(std::io::Error::new(e.kind(), format!("cannot set the timeout to {timeout} s: {e}")));
    }
    Ok(file)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes_and_timeouts() {
        assert_eq!(WatchdogMode::parse("off"), Some(WatchdogMode::Off));
        assert_eq!(WatchdogMode::parse("Required"), Some(WatchdogMode::Required));
        assert_eq!(WatchdogMode::parse("auto"), Some(WatchdogMode::Automatic));
        assert_eq!(WatchdogMode::parse("sometimes"), None);
        let c = WatchdogConfig::default();
        assert_eq!((c.timeout_secs(30), c.fence_margin_secs(30)), (25, 5));
        let half = WatchdogConfig { safety_margin: -1, ..WatchdogConfig::default() };
        assert_eq!((half.timeout_secs(30), half.fence_margin_secs(30)), (15, 15));
    }

    #[test]
    fn a_stand_in_file_is_fed_and_disarmed() {
        let dir = tempfile::tempdir().expect("tempdir");
        let device = dir.path().join("watchdog");
        std::fs::write(&device, "").expect("create");
        let mut w = Watchdog::new(WatchdogConfig { device: device.clone(), ..WatchdogConfig::default() });
        assert!(w.config().device_usable());
        w.keepalive(30);
        w.keepalive(30);
        w.disable();
        assert_eq!(std::fs::read_to_string(&device).expect("read"), "11V");
        let missing = WatchdogConfig { device: dir.path().join("none"), ..WatchdogConfig::default() };
        assert!(!missing.device_usable());
        let mut off = Watchdog::new(WatchdogConfig { mode: WatchdogMode::Off, device, ..WatchdogConfig::default() });
        off.keepalive(30);
        assert!(off.open.is_none());
    }
}
