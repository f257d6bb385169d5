//! The node's watchdog device (`/dev/watchdog`, e.g. the `softdog` module
//! or a hardware timer): opening and arming it, feeding it while the core's
//! [`Feeder`] says so, and the "magic close" that disarms it on a clean
//! stop. The rule of when to feed lives in `tandem_core::watchdog`.

use std::fs::{File, OpenOptions};
use std::io::{ErrorKind, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::OpenOptionsExt;
use std::path::PathBuf;

use anyhow::{bail, Result};
use serde::{Deserialize, Serialize};
use tandem_core::config::WatchdogSpec;
use tandem_core::watchdog::{Feeder, Verdict};

use crate::event::AgentEvent;

/// `WDIOC_SETTIMEOUT`: `_IOWR('W', 6, int)` from `<linux/watchdog.h>`.
const WDIOC_SETTIMEOUT: libc::c_ulong = 0xC004_5706;
/// `WDIOC_GETTIMEOUT`: `_IOR('W', 7, int)`.
const WDIOC_GETTIMEOUT: libc::c_ulong = 0x8004_5707;
/// `WDIOC_GETSUPPORT`: `_IOR('W', 0, struct watchdog_info)` (40 bytes).
const WDIOC_GETSUPPORT: libc::c_ulong = 0x8028_5700;
/// `WDIOF_MAGICCLOSE` in `watchdog_info.options`: the device stops only
/// after the magic `V`; a holder that dies without it leaves it counting.
const WDIOF_MAGICCLOSE: u32 = 0x0100;
/// How often the rule is looked at again while the device is not fed
/// (starving, or a feed failed): often enough to resume in time, without
/// spinning the agent's loop.
const RECHECK_MS: u64 = 100;

/// Feeds are at least this far apart (a write per loop pass would be
/// hundreds a second for nothing).
const MAX_FEED_INTERVAL_MS: u64 = 1_000;

/// The watchdog as status shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct WatchdogStatus {
    /// `armed`, `starving`, `absent`, `disabled` or `failed`.
    pub state: String,
    /// The device path (empty when disabled).
    pub device: String,
    /// Seconds without a feed before it resets the node.
    pub timeout_s: u32,
    /// Time since the last successful feed (ms), once fed.
    #[serde(default)]
    pub last_fed_ms_ago: Option<u64>,
    /// What this means, in words.
    pub note: String,
}

/// An open (or missing) watchdog and its feeding state.
pub struct Watchdog {
    spec: Option<WatchdogSpec>,
    file: Option<File>,
    feeder: Feeder,
    last_feed_ms: Option<u64>,
    /// Why it is not fed, while starving.
    starving: Option<String>,
    /// Why it could not be opened or fed.
    failure: Option<String>,
    /// The device rejected the timeout; it keeps its own.
    own_timeout: bool,
    /// Where the exposure (without a lease, something active) is kept
    /// for a restarted agent, and what it last held.
    exposure_file: Option<PathBuf>,
    /// The exposure's start as the file holds it (this boot's
    /// CLOCK_MONOTONIC ms), once written or found at start: kept as it
    /// is while the exposure lasts, however often the agent restarts.
    exposure_since_mono: Option<u64>,
    /// The exposure could not be recorded: not fed until it ends (a
    /// restarted agent would otherwise start a fresh grace).
    unrecorded: bool,
    /// When the rule was last looked at (agent clock).
    last_check_ms: u64,
}

/// The exposure a restarted agent carries on from: since when (this
/// boot's CLOCK_MONOTONIC ms) the node has been without a lease with
/// something active.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Exposure {
    boot_id: String,
    since_mono_ms: u64,
}

/// The exposure's start recorded in `path`, if any, and of this boot.
fn recorded_exposure(path: &std::path::Path) -> Option<u64> {
    let text = std::fs::read_to_string(path).ok()?;
    let e = serde_json::from_str::<Exposure>(&text).ok()?;
    (e.boot_id == crate::guard::boot_id()).then_some(e.since_mono_ms)
}

/// Whether a device that stops only after the magic close (so a holder
/// killed without it leaves it counting). A device that stops on any close
/// is disarmed by a kill -9 of the agent: it cannot be counted as a fence.
fn stops_only_on_magic_close(f: &File) -> bool {
    let mut info = [0u8; 40];
    // SAFETY: WDIOC_GETSUPPORT writes one 40-byte `struct watchdog_info`
    // through the pointer, which lives for the call.
    let rc = unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_GETSUPPORT as _, info.as_mut_ptr()) };
    let options = u32::from_ne_bytes([info[0], info[1], info[2], info[3]]);
    rc == 0 && options & WDIOF_MAGICCLOSE != 0
}

impl Watchdog {
    /// Opens and arms the configured device. A missing device is not an
    /// error unless the configuration requires it. `exposure_file` keeps
    /// the feeding rule's exposure across agent restarts.
    pub fn open(spec: Option<&WatchdogSpec>, exposure_file: Option<PathBuf>) -> Result<Watchdog> {
        let exposure_since_mono = exposure_file.as_deref().and_then(recorded_exposure);
        let mut w = Watchdog {
            spec: spec.cloned(),
            file: None,
            feeder: Feeder::new(spec.map_or(0, |s| s.stop_grace_ms)),
            last_feed_ms: None,
            starving: None,
            failure: None,
            own_timeout: false,
            exposure_file,
            exposure_since_mono,
            unrecorded: false,
            last_check_ms: 0,
        };
        let Some(spec) = spec else {
            return Ok(w);
        };
        // Non-blocking: a device node never blocks, and a FIFO standing
        // in for one must not hang the agent.
        match OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&spec.device)
        {
            Ok(f) => {
                let mut t: libc::c_int = spec.timeout_s as libc::c_int;
                let mut current: libc::c_int = 0;
                // SAFETY: WDIOC_GETTIMEOUT writes one int through the
                // pointer, which lives for the call.
                let got =
                    unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_GETTIMEOUT as _, &mut current) };
                // Setting the timeout pings the device: a restarted agent
                // whose device already has it must not (its exposure
                // carries on, see `Feeder::carrying`).
                let rc = if got == 0 && current == t {
                    0
                } else {
                    // SAFETY: WDIOC_SETTIMEOUT reads and writes one int
                    // through the pointer, which lives for the call.
                    unsafe { libc::ioctl(f.as_raw_fd(), WDIOC_SETTIMEOUT as _, &mut t) }
                };
                // The driver writes back the timeout it set (it may round
                // up): longer than asked is not what the leader counts on.
                w.own_timeout = rc != 0 || i64::from(t) > i64::from(spec.timeout_s);
                if spec.required && !stops_only_on_magic_close(&f) {
                    bail!(
                        "the watchdog is required (it counts as a fence), but {} does not say it stops only after the magic close: a kill -9 of the agent could disarm it; use a driver with WDIOF_MAGICCLOSE (softdog has it), or set `[watchdog] required = false`",
                        spec.device.display()
                    );
                }
                if spec.required && w.own_timeout {
                    bail!(
                        "the watchdog is required (the cluster counts a silent node as reset {} ms after its lease), but {} did not take timeout_s = {} ({}): set `[watchdog] timeout_s` to a value the device supports",
                        spec.resets_within_ms().unwrap_or(0),
                        spec.device.display(),
                        spec.timeout_s,
                        if rc != 0 {
                            format!("the ioctl failed: {}", std::io::Error::last_os_error())
                        } else {
                            format!("it set {t} s")
                        }
                    );
                }
                w.file = Some(f);
            }
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => {
                w.failure = Some(format!("cannot open {}: {e}", spec.device.display()));
            }
        }
        if spec.required && w.file.is_none() {
            bail!(
                "the watchdog is required but {}: load a watchdog driver (`modprobe softdog`, or the board's), make sure no other program holds it, or set `[watchdog] required = false`",
                w.failure
                    .clone()
                    .unwrap_or_else(|| format!("{} does not exist", spec.device.display()))
            );
        }
        Ok(w)
    }

    /// One line for the log at start.
    pub fn describe(&self) -> String {
        let s = self.status(0);
        match s.state.as_str() {
            "armed" => format!("watchdog {} armed: {}", s.device, s.note),
            _ => format!("watchdog {}: {}", s.state, s.note),
        }
    }

    /// When this node is sure to have been reset after its lease ended,
    /// for the leader: only with a required device that took the
    /// configured timeout (the agent refuses to start otherwise).
    pub fn resets_within_ms(&self) -> Option<u64> {
        self.file.as_ref()?;
        if self.own_timeout {
            return None;
        }
        self.spec.as_ref()?.resets_within_ms()
    }

    /// Keeps the feeding rule's exposure where a restarted agent finds it:
    /// its start is written once when it begins (or kept as a previous
    /// agent wrote it), and the file removed when it ends. False when it
    /// could not be recorded.
    fn keep_exposure(&mut self, now_ms: u64) -> bool {
        let Some(path) = &self.exposure_file else {
            return true;
        };
        match (self.feeder.exposure(), self.exposure_since_mono) {
            (Some(_), Some(_)) => !self.unrecorded,
            (Some((since, carried)), None) => {
                let since_mono_ms = crate::guard::mono_ms()
                    .saturating_sub(now_ms.saturating_sub(since))
                    .saturating_sub(carried);
                let written = serde_json::to_vec(&Exposure {
                    boot_id: crate::guard::boot_id(),
                    since_mono_ms,
                })
                .map_err(anyhow::Error::from)
                .and_then(|b| {
                    crate::atomic_file::replace(path, &b, crate::atomic_file::Durability::ThisBoot)
                });
                self.exposure_since_mono = Some(since_mono_ms);
                self.unrecorded = written.is_err();
                !self.unrecorded
            }
            (None, Some(_)) => {
                match std::fs::remove_file(path) {
                    Err(e) if e.kind() != ErrorKind::NotFound => {}
                    _ => {
                        self.exposure_since_mono = None;
                        self.unrecorded = false;
                    }
                }
                true
            }
            (None, None) => true,
        }
    }

    /// Applies the rule at `now_ms`; feeds when due. Returns an event to log
    /// when the watchdog starts or stops being fed, or a feed fails.
    pub fn tick(&mut self, now_ms: u64, lease_valid: bool, active: bool) -> Option<AgentEvent> {
        self.file.as_ref()?;
        self.last_check_ms = now_ms;
        // A previous agent's exposure carries on from where it began (as
        // recorded), not from this agent's start.
        if let (None, Some(since)) = (self.feeder.exposure(), self.exposure_since_mono) {
            let carried = crate::guard::mono_ms().saturating_sub(since);
            self.feeder =
                Feeder::carrying(self.spec.as_ref().map_or(0, |s| s.stop_grace_ms), carried);
        }
        let mut verdict = self.feeder.verdict(now_ms, lease_valid, active);
        if !self.keep_exposure(now_ms) {
            verdict = Verdict::Starve {
                reason: "the exposure could not be recorded for a restarted agent (is the state directory full?)".into(),
            };
        }
        let file = self.file.as_mut()?;
        match verdict {
            Verdict::Starve { reason } => {
                let first = self.starving.is_none();
                self.starving = Some(reason.clone());
                first.then_some(AgentEvent::WatchdogStarving { reason })
            }
            Verdict::Feed => {
                let resumed = self
                    .starving
                    .take()
                    .map(|_| AgentEvent::WatchdogFeeding { again: true });
                let due = self
                    .last_feed_ms
                    .map_or(true, |t| now_ms >= t + feed_interval_ms(self.spec.as_ref()));
                if !due {
                    return resumed;
                }
                match file.write_all(b"\0") {
                    Ok(()) => {
                        self.last_feed_ms = Some(now_ms);
                        self.failure
                            .take()
                            .map(|_| AgentEvent::WatchdogFeeding { again: false })
                            .or(resumed)
                    }
                    Err(e) => {
                        let first = self.failure.is_none();
                        self.failure = Some(format!("feeding failed: {e}"));
                        first.then(|| AgentEvent::WatchdogFeedFailed {
                            error: e.to_string(),
                        })
                    }
                }
            }
        }
    }

    /// When the next feed is due (agent clock), if armed; while it is not
    /// fed (starving, or a feed failed), when to look at the rule again.
    pub fn next_deadline(&self) -> Option<u64> {
        self.file.as_ref()?;
        let due = self
            .last_feed_ms
            .map_or(0, |t| t + feed_interval_ms(self.spec.as_ref()));
        Some(due.max(self.last_check_ms + RECHECK_MS))
    }

    /// A clean stop with nothing active: tells the device to stop (the
    /// magic `V`) and closes it. Without this the device keeps counting
    /// and resets the node unless a new agent opens it in time.
    pub fn disarm(&mut self) -> Option<AgentEvent> {
        let mut f = self.file.take()?;
        Some(AgentEvent::WatchdogDisarmed {
            error: f.write_all(b"V").err().map(|e| e.to_string()),
        })
    }

    /// For `tandem status`, at `now_ms` (agent clock).
    pub fn status(&self, now_ms: u64) -> WatchdogStatus {
        let Some(spec) = &self.spec else {
            return WatchdogStatus {
                state: "disabled".into(),
                device: String::new(),
                timeout_s: 0,
                last_fed_ms_ago: None,
                note: "disabled in the configuration: a hung node will not reset itself".into(),
            };
        };
        let device = spec.device.display().to_string();
        let (state, note) = if self.file.is_none() {
            match &self.failure {
                Some(f) => ("failed", format!("{f}; a hung node will not reset itself")),
                None => ("absent", absent_note(&spec.device)),
            }
        } else if let Some(why) = &self.starving {
            ("starving", format!("not fed: {why}"))
        } else if let Some(f) = &self.failure {
            (
                "failed",
                format!("{f}; it resets the node unless feeding recovers"),
            )
        } else {
            (
                "armed",
                format!(
                    "resets the node if the agent hangs, or if it keeps resources without a lease for {} ms; timeout {}",
                    spec.stop_grace_ms,
                    if self.own_timeout {
                        "the device's own (it did not accept one)".to_string()
                    } else {
                        format!("{} s", spec.timeout_s)
                    }
                ),
            )
        };
        WatchdogStatus {
            state: state.into(),
            device,
            timeout_s: spec.timeout_s,
            last_fed_ms_ago: self.last_feed_ms.map(|t| now_ms.saturating_sub(t)),
            note,
        }
    }
}

fn feed_interval_ms(spec: Option<&WatchdogSpec>) -> u64 {
    spec.map_or(MAX_FEED_INTERVAL_MS, |s| {
        (u64::from(s.timeout_s) * 1_000 / 4).clamp(1, MAX_FEED_INTERVAL_MS)
    })
}

/// What a missing device means, for status and `config validate`.
pub fn absent_note(device: &std::path::Path) -> String {
    format!(
        "no watchdog: {} does not exist on this node, so a hung node will not reset itself (load `softdog` or the board's watchdog driver, or set `[watchdog] enabled = false`)",
        device.display()
    )
}

/// For `config validate`: a note when the configured device is missing
/// on this machine.
pub fn machine_note(spec: Option<&WatchdogSpec>) -> Option<String> {
    let spec = spec?;
    let device: PathBuf = spec.device.clone();
    (!device.exists()).then(|| absent_note(&device))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    fn spec(device: PathBuf, required: bool) -> WatchdogSpec {
        WatchdogSpec {
            device,
            timeout_s: 4,
            stop_grace_ms: 500,
            required,
        }
    }

    #[test]
    fn a_missing_device_is_reported_and_refused_only_when_required() {
        let missing = PathBuf::from("/nonexistent/watchdog");
        let w = Watchdog::open(Some(&spec(missing.clone(), false)), None).unwrap();
        let s = w.status(0);
        assert_eq!(s.state, "absent");
        assert!(s.note.contains("does not exist"), "{}", s.note);
        let e = Watchdog::open(Some(&spec(missing, true)), None)
            .err()
            .unwrap();
        assert!(format!("{e:#}").contains("softdog"), "{e:#}");
        assert_eq!(
            Watchdog::open(None, None).unwrap().status(0).state,
            "disabled"
        );
    }

    /// A FIFO in `dir` standing in for the device (no watchdog driver
    /// here), and its reading end: every byte written to it is a feed.
    fn fifo_device(dir: &std::path::Path) -> (PathBuf, File) {
        let fifo = dir.join("wd");
        let c = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let reader = OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(&fifo)
            .unwrap();
        (fifo, reader)
    }

    /// A FIFO stands in for the device (no watchdog driver here): every
    /// byte written to it is a feed.
    #[test]
    fn feeds_while_the_rule_says_so_and_disarms_with_the_magic_close() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, mut reader) = fifo_device(dir.path());
        let mut w = Watchdog::open(
            Some(&spec(fifo, false)),
            Some(dir.path().join("exposure.json")),
        )
        .unwrap();
        assert_eq!(w.status(0).state, "armed");
        let mut read = || {
            let mut buf = [0u8; 64];
            match reader.read(&mut buf) {
                Ok(n) => buf[..n].to_vec(),
                Err(_) => Vec::new(),
            }
        };
        // Fed at once, then not again before the interval (1 s for 4 s).
        assert_eq!(w.tick(0, true, true), None);
        assert_eq!(read(), b"\0");
        w.tick(500, true, true);
        assert!(read().is_empty());
        w.tick(1_000, true, true);
        assert_eq!(read(), b"\0");
        // Lease lost with something active: fed through the grace, then not.
        w.tick(2_000, false, true);
        assert_eq!(read(), b"\0");
        let line = w.tick(2_600, false, true).unwrap();
        assert!(
            matches!(line, AgentEvent::WatchdogStarving { .. }),
            "{line}"
        );
        assert!(line.to_string().contains("NOT feeding"), "{line}");
        let s = w.status(2_600);
        assert_eq!(
            (s.state.as_str(), s.last_fed_ms_ago),
            ("starving", Some(600))
        );
        w.tick(4_000, false, true);
        assert!(read().is_empty());
        // The stop completed: feeding resumes.
        assert_eq!(
            w.tick(4_100, false, false)
                .map(|e| e.to_string())
                .as_deref(),
            Some("watchdog: feeding it again")
        );
        assert_eq!(read(), b"\0");
        assert_eq!(
            w.disarm().map(|e| e.to_string()).as_deref(),
            Some("watchdog disarmed")
        );
        assert_eq!(read(), b"V");
    }

    /// Review of issue 15, defect 8: a restarted agent gave a stuck stop
    /// a fresh grace. The exposure is kept in a file and carried over.
    #[test]
    fn a_restarted_agent_carries_on_the_grace_of_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let (fifo, _reader) = fifo_device(dir.path());
        let exposure = dir.path().join("exposure.json");
        let mut w =
            Watchdog::open(Some(&spec(fifo.clone(), false)), Some(exposure.clone())).unwrap();
        w.tick(0, false, true);
        assert!(exposure.exists());
        std::thread::sleep(std::time::Duration::from_millis(600));
        drop(w);
        // The next agent starts 600 ms into a 500 ms grace: it starves.
        let mut w =
            Watchdog::open(Some(&spec(fifo.clone(), false)), Some(exposure.clone())).unwrap();
        let line = w
            .tick(0, false, true)
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(line.contains("NOT feeding"), "{line}");
        // A lease ends the exposure, and the file goes.
        w.tick(10, true, true);
        assert!(!exposure.exists());
        let mut w = Watchdog::open(Some(&spec(fifo, false)), Some(exposure)).unwrap();
        assert_eq!(w.tick(0, false, true), None);
    }
}
