//! systemd's service notification protocol (`sd_notify(3)`), for
//! `Type=notify` units: `READY=1` once the agent's loop runs, `WATCHDOG=1`
//! from that loop at half of `WatchdogSec` (so a hung loop gets the agent
//! restarted), `STOPPING=1` when it begins to stop. Outside systemd
//! (`NOTIFY_SOCKET` unset) every call does nothing.
//!
//! A datagram to the socket `NOTIFY_SOCKET` names (a path, or `@name` in
//! the abstract namespace). Sending never blocks and a failure is ignored:
//! the notification is advice to the service manager, never a reason for
//! the agent to stop.

use std::os::unix::net::{SocketAddr, UnixDatagram};
use std::time::Duration;

/// Where notifications go, and how often the watchdog wants one.
#[derive(Debug, Default)]
pub struct Notifier {
    target: Option<(UnixDatagram, SocketAddr)>,
    watchdog: Option<Duration>,
}

impl Notifier {
    /// The notifier this process's environment describes.
    pub fn from_env() -> Notifier {
        let socket = std::env::var_os("NOTIFY_SOCKET");
        let usec = std::env::var("WATCHDOG_USEC").ok();
        let pid = std::env::var("WATCHDOG_PID").ok();
        Notifier::new(
            socket.as_deref().and_then(|s| s.to_str()),
            usec.as_deref(),
            pid.as_deref(),
            std::process::id(),
        )
    }

    /// The notifier for `socket` (`NOTIFY_SOCKET`), `watchdog_usec`
    /// (`WATCHDOG_USEC`) and `watchdog_pid` (`WATCHDOG_PID`: the watchdog
    /// is this process's only if it names `me`, or is unset).
    pub fn new(
        socket: Option<&str>,
        watchdog_usec: Option<&str>,
        watchdog_pid: Option<&str>,
        me: u32,
    ) -> Notifier {
        let target = socket.and_then(|s| {
            let addr = match s.strip_prefix('@') {
                Some(name) => {
                    use std::os::linux::net::SocketAddrExt as _;
                    SocketAddr::from_abstract_name(name.as_bytes()).ok()?
                }
                None if s.starts_with('/') => SocketAddr::from_pathname(s).ok()?,
                None => return None,
            };
            let sock = UnixDatagram::unbound().ok()?;
            sock.set_nonblocking(true).ok()?;
            Some((sock, addr))
        });
        let mine = watchdog_pid.map_or(true, |p| p.trim().parse::<u32>().ok() == Some(me));
        let watchdog = watchdog_usec
            .and_then(|u| u.trim().parse::<u64>().ok())
            .filter(|u| *u > 0 && mine && target.is_some())
            // Ping at half the period, as sd_watchdog_enabled(3) advises.
            .map(|u| Duration::from_micros(u / 2).max(Duration::from_millis(10)));
        Notifier { target, watchdog }
    }

    /// Sends `state` (`READY=1`, `STATUS=...`, one per line).
    pub fn notify(&self, state: &str) {
        if let Some((sock, addr)) = &self.target {
            let _ = sock.send_to_addr(state.as_bytes(), addr);
        }
    }

    /// How often to send `WATCHDOG=1` (None: no watchdog asked for).
    pub fn watchdog_interval(&self) -> Option<Duration> {
        self.watchdog
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What a service manager receives, on a real socket.
    #[test]
    fn notifications_reach_the_socket_and_the_watchdog_is_halved() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("notify");
        let manager = UnixDatagram::bind(&path).unwrap();
        manager
            .set_read_timeout(Some(Duration::from_secs(2)))
            .unwrap();
        let n = Notifier::new(path.to_str(), Some("10000000"), Some("42"), 42);
        assert_eq!(n.watchdog_interval(), Some(Duration::from_secs(5)));
        n.notify("READY=1\nSTATUS=running");
        let mut buf = [0u8; 64];
        let k = manager.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"READY=1\nSTATUS=running");
        // Another process's watchdog, no socket, a relative path: nothing.
        assert_eq!(
            Notifier::new(path.to_str(), Some("10000000"), Some("7"), 42).watchdog_interval(),
            None
        );
        assert_eq!(
            Notifier::new(None, Some("10000000"), None, 42).watchdog_interval(),
            None
        );
        Notifier::new(Some("relative"), None, None, 42).notify("READY=1");
        Notifier::default().notify("READY=1");
        // The abstract namespace.
        use std::os::linux::net::SocketAddrExt as _;
        let name = format!("tandem-test-{}", std::process::id());
        let abs =
            UnixDatagram::bind_addr(&SocketAddr::from_abstract_name(name.as_bytes()).unwrap())
                .unwrap();
        abs.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
        Notifier::new(Some(&format!("@{name}")), None, None, 42).notify("WATCHDOG=1");
        let k = abs.recv(&mut buf).unwrap();
        assert_eq!(&buf[..k], b"WATCHDOG=1");
    }
}
