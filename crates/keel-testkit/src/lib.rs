//! Test harness for Keel's integration and scenario tests: [`EtcdServer`] and a whole [`KeelCluster`].
//!
//! Everything here runs real processes on loopback ports and cleans up after itself: every process a helper
//! starts is killed (SIGKILL, then reaped) when its handle is dropped, so a failing or panicking test never leaves
//! one running. Readiness is always detected by polling with a generous deadline, never by fixed sleeps.

mod cluster;
mod etcd;
pub mod netns;
mod pki;

pub use cluster::{EtcdAuth, KeelCluster, KeelOptions};
pub use etcd::{EtcdServer, EtcdServerTls, EtcdctlTls};
pub use keel::cluster_runner::{ClusterOptions, LocalCluster, NodeSpec, SecurityOptions};
pub use pki::{TestPki, KEY_PASSWORD};

use std::io;
use std::net::{Ipv4Addr, TcpListener};
use std::time::Duration;

/// A TCP port on 127.0.0.1 that was free a moment ago (the OS picked it for a listener we closed again).
///
/// Another process may take it before the caller binds it; [`EtcdServer::start`] retries with fresh ports when
/// that happens.
pub fn free_port() -> io::Result<u16> {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
    Ok(listener.local_addr()?.port())
}

/// Polls `probe` every `interval` until it returns `Some`, or fails with the last probe's description once
/// `deadline` has passed.
pub fn wait_until<T>(
    what: &str,
    deadline: Duration,
    interval: Duration,
    probe: impl FnMut() -> Result<Option<T>, String>,
) -> io::Result<T> {
    keel::cluster_runner::wait_until(what, deadline, interval, probe)
        .map_err(|message| io::Error::new(io::ErrorKind::TimedOut, message))
}

/// Sends `signal` to the process `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) -> io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "pid too large"))?;
    // SAFETY: kill(2) has no memory-safety preconditions; it only takes integers.
    let rc = unsafe { libc::kill(pid, signal) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_port_is_bindable() {
        let port = free_port().unwrap();
        assert_ne!(port, 0);
        TcpListener::bind((Ipv4Addr::LOCALHOST, port)).unwrap();
    }

    #[test]
    fn wait_until_times_out_with_last_error() {
        let err = wait_until::<()>("thing", Duration::from_millis(30), Duration::from_millis(5), || Err("nope".into()))
            .unwrap_err();
        assert!(err.to_string().contains("nope"), "{err}");
    }
}
