//! The lease guard: a small process beside the agent (`tandem guard`, in
//! its own session) that stops this node's resources when the agent can no
//! longer do it — killed with -9, crashed, or stuck — by the time its lease
//! ends. Without it, a dead agent would leave its floating addresses in the
//! kernel and its services running while the cluster starts them elsewhere.
//!
//! The agent writes the lease file (`<state>/run/lease.json`) whenever its
//! lease or the set of resources that may run here changes: the lease end
//! on `CLOCK_MONOTONIC` (shared by every process of the machine, and moving
//! on while a process is frozen), the boot id, and what to stop. The guard
//! polls it; once the lease end has passed and resources are still listed,
//! it removes the addresses and kills the process groups (SIGKILL: the
//! lease is over, there is no time for a graceful stop), then runs the
//! scripts' `stop`. A live agent stops its groups itself at the lease end,
//! so the guard only acts when it did not.
//!
//! A restarted agent reads the file first: while the previous agent's
//! lease still runs (same boot), it may keep what it finds running without
//! restarting it, until it holds a lease of its own.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::netlink;

/// How often the guard reads the lease file.
const POLL: Duration = Duration::from_millis(10);
/// Largest lease file read.
const MAX_FILE: u64 = 1 << 20;
/// Longest a script's `stop` may run when the guard calls it.
const SCRIPT_STOP_LIMIT: Duration = Duration::from_secs(20);

/// What the agent hands the guard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseFile {
    /// The agent that wrote it.
    pub agent_pid: u32,
    /// `/proc/sys/kernel/random/boot_id`: monotonic times are per boot.
    pub boot_id: String,
    /// End of the lease, CLOCK_MONOTONIC ms (0: none).
    pub until_mono_ms: u64,
    /// Floating addresses that may be configured here: (address, prefix).
    pub addresses: Vec<(IpAddr, u8)>,
    /// Pid files of processes that may run here.
    pub pidfiles: Vec<PathBuf>,
    /// Scripts whose resources may run here: (script, environment).
    pub scripts: Vec<(PathBuf, Vec<(String, String)>)>,
}

impl LeaseFile {
    /// Whether anything is listed.
    pub fn holds_anything(&self) -> bool {
        !(self.addresses.is_empty() && self.pidfiles.is_empty() && self.scripts.is_empty())
    }
}

/// CLOCK_MONOTONIC in ms.
pub fn mono_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// This boot's id.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Reads a lease file (None: absent or unreadable).
pub fn read(path: &Path) -> Option<LeaseFile> {
    let f = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE), &mut bytes).ok()?;
    serde_json::from_slice(&bytes).ok()
}

/// Writes a lease file atomically (temporary file, rename). No fsync: the
/// file matters to processes of this boot only.
pub fn write(path: &Path, lease: &LeaseFile) -> Result<()> {
    let tmp = path.with_extension("json.tmp");
    let bytes = serde_json::to_vec(lease).context("encoding the lease file")?;
    std::fs::write(&tmp, bytes).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))
}

fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    pid != 0 && unsafe { libc::kill(pid as i32, 0) } == 0
}

/// Stops everything a lease file lists; returns what it did.
pub fn enforce(lease: &LeaseFile) -> Vec<String> {
    let mut did = Vec::new();
    if let Ok(addrs) = netlink::addresses() {
        for (ip, prefix) in &lease.addresses {
            for a in addrs.iter().filter(|a| a.ip == *ip) {
                if netlink::delete_address(a.ip, *prefix, a.index).unwrap_or(false) {
                    did.push(format!("removed {ip}/{prefix}"));
                }
            }
        }
    }
    for p in &lease.pidfiles {
        let Ok(text) = std::fs::read_to_string(p) else {
            continue;
        };
        let Some(pid) = text
            .split_whitespace()
            .next()
            .and_then(|s| s.parse::<i32>().ok())
        else {
            continue;
        };
        if pid > 1 {
            // SAFETY: kill(2) on the process group the resource leads.
            if unsafe { libc::kill(-pid, libc::SIGKILL) } == 0 {
                did.push(format!("killed process group {pid} ({})", p.display()));
            }
        }
    }
    did
}

/// Runs the scripts' `stop` (after the fast part above is done).
fn stop_scripts(lease: &LeaseFile) -> Vec<String> {
    let mut did = Vec::new();
    for (script, env) in &lease.scripts {
        let mut cmd = std::process::Command::new(script);
        cmd.arg("stop")
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in env {
            cmd.env(k, v);
        }
        let Ok(mut child) = cmd.spawn() else { continue };
        let t0 = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    did.push(format!("{} stop: {st}", script.display()));
                    break;
                }
                Ok(None) if t0.elapsed() < SCRIPT_STOP_LIMIT => std::thread::sleep(POLL),
                _ => {
                    let _ = child.kill();
                    let _ = child.wait();
                    did.push(format!("{} stop: timed out", script.display()));
                    break;
                }
            }
        }
    }
    did
}

/// `tandem guard`: watches `path` for the agent `agent_pid` until that
/// agent is gone and nothing is held, or another live agent took over.
pub fn run(path: &Path, agent_pid: u32, label: &str) -> Result<()> {
    let boot = boot_id();
    let say = |s: &str| {
        let now = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64);
        eprintln!(
            "{} tandem-guard[{label}]: {s}",
            crate::status::format_utc(now)
        );
    };
    loop {
        std::thread::sleep(POLL);
        let Some(lease) = read(path) else {
            if !alive(agent_pid) {
                return Ok(());
            }
            continue;
        };
        if lease.agent_pid != agent_pid && alive(lease.agent_pid) {
            // A newer agent with a guard of its own.
            return Ok(());
        }
        if lease.boot_id != boot {
            return Ok(());
        }
        let expired = mono_ms() >= lease.until_mono_ms;
        if expired && lease.holds_anything() {
            let mut did = enforce(&lease);
            did.extend(stop_scripts(&lease));
            let cleared = LeaseFile {
                addresses: Vec::new(),
                pidfiles: Vec::new(),
                scripts: Vec::new(),
                ..lease.clone()
            };
            // Only clear what we enforced if the agent did not rewrite it.
            if read(path).as_ref() == Some(&lease) {
                let _ = write(path, &cleared);
            }
            if !did.is_empty() {
                say(&format!(
                    "the agent's lease ended with resources still here ({}): {}",
                    if alive(lease.agent_pid) {
                        "agent stuck"
                    } else {
                        "agent gone"
                    },
                    did.join("; ")
                ));
            }
        }
        if !alive(agent_pid) && !lease.holds_anything() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_file_round_trips_and_tells_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lease.json");
        assert_eq!(read(&p), None);
        let l = LeaseFile {
            agent_pid: 1,
            boot_id: boot_id(),
            until_mono_ms: mono_ms() + 200,
            addresses: vec![("10.0.0.1".parse().unwrap(), 24)],
            ..LeaseFile::default()
        };
        write(&p, &l).unwrap();
        assert_eq!(read(&p), Some(l.clone()));
        assert!(l.holds_anything());
        assert!(!LeaseFile::default().holds_anything());
    }

    #[test]
    fn enforce_kills_the_listed_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        crate::resources::own_session(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let pidfile = dir.path().join("g.r.pid");
        std::fs::write(&pidfile, format!("{} 0\n", child.id())).unwrap();
        let did = enforce(&LeaseFile {
            pidfiles: vec![pidfile],
            ..LeaseFile::default()
        });
        assert_eq!(did.len(), 1, "{did:?}");
        let st = child.wait().unwrap();
        assert!(!st.success());
    }
}
