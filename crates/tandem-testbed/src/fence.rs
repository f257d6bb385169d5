//! The `testbed` fence device: a fence-agents compatible agent (options as
//! `key=value` lines on stdin) that fences a testbed node the way power or
//! fabric fencing would: its switch ports go down, every process in its
//! cgroup is killed (thawed first, so a frozen node dies too), and the
//! addresses added at run time leave its interfaces (as a power cycle
//! takes them).
//!
//! Options: `action` (`off`, `on`, `status`, `monitor`, `list`,
//! `metadata`), `plug` (the node, `n3` or `3`), `testbed` (the run id),
//! and for tests `fail_while=PATH` (fail while that file exists).
//! Exit codes follow fence-agents: 0 success (status: on), 2 status off,
//! 1 failure.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::freezer::{Flavor, NodeCgroup};
use crate::{sys, PREFIX};

/// Longest wait for a fenced node's processes to be gone.
const KILL_LIMIT: Duration = Duration::from_secs(5);
/// Most input lines read.
const MAX_LINES: usize = 256;

/// Where "node is off" is recorded: in the run's own directory, removed
/// with the run.
fn marker(run: &str, node: usize) -> PathBuf {
    std::env::temp_dir()
        .join(format!("{PREFIX}{run}"))
        .join(format!("n{node}.fenced"))
}

/// Whether the testbed device has node `node` of run `run` powered off.
pub fn is_off(run: &str, node: usize) -> bool {
    marker(run, node).exists()
}

/// Runs the agent on `input`; returns the exit code and what to print.
pub fn agent(input: &str) -> (i32, String) {
    let opts: BTreeMap<&str, &str> = input
        .lines()
        .take(MAX_LINES)
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim(), v.trim()))
        .collect();
    let action = opts.get("action").copied().unwrap_or("reboot");
    if matches!(action, "metadata" | "list" | "monitor" | "validate-all") {
        return (0, format!("testbed fence agent: {action} ok"));
    }
    let Some(run) = opts
        .get("testbed")
        .copied()
        .filter(|r| !r.is_empty() && r.chars().all(|c| c.is_ascii_alphanumeric()))
    else {
        return (
            1,
            "testbed fence agent: option testbed=<run id> is missing or invalid".into(),
        );
    };
    let Some(node) = opts
        .get("plug")
        .or_else(|| opts.get("port"))
        .and_then(|p| p.trim_start_matches('n').parse::<usize>().ok())
        .filter(|n| *n > 0)
    else {
        return (
            1,
            "testbed fence agent: plug=<node> is missing or invalid".into(),
        );
    };
    if let Some(path) = opts.get("fail_while") {
        if std::path::Path::new(path).exists() {
            return (
                1,
                format!("testbed fence agent: failing on purpose while {path} exists"),
            );
        }
    }
    let sw = format!("{PREFIX}{run}-sw");
    let ports = || -> Result<Vec<String>, String> {
        let out = sys::ip(&sw, &["-o", "link", "show"]).map_err(|e| e.to_string())?;
        let me = format!("n{node}-");
        Ok(out
            .lines()
            .filter_map(|l| l.split(':').nth(1))
            .map(|n| n.trim().split('@').next().unwrap_or("").to_string())
            .filter(|n| n.starts_with(&me) && !n.ends_with('w') && !n.ends_with('b'))
            .collect())
    };
    match action {
        "status" => {
            if marker(run, node).exists() {
                (2, format!("testbed fence agent: n{node} is off"))
            } else {
                (0, format!("testbed fence agent: n{node} is on"))
            }
        }
        "on" => {
            let ports = match ports() {
                Ok(p) => p,
                Err(e) => return (1, format!("testbed fence agent: {e}")),
            };
            for p in &ports {
                if let Err(e) = sys::ip(&sw, &["link", "set", p, "up"]) {
                    return (1, format!("testbed fence agent: {p} up: {e}"));
                }
            }
            let _ = std::fs::remove_file(marker(run, node));
            (
                0,
                format!(
                    "testbed fence agent: n{node} on (ports {} up)",
                    ports.join(", ")
                ),
            )
        }
        "off" | "reboot" => {
            let ports = match ports() {
                Ok(p) => p,
                Err(e) => return (1, format!("testbed fence agent: {e}")),
            };
            for p in &ports {
                if let Err(e) = sys::ip(&sw, &["link", "set", p, "down"]) {
                    return (1, format!("testbed fence agent: {p} down: {e}"));
                }
            }
            let killed = match kill_node(run, node) {
                Ok(k) => k,
                Err(e) => return (1, format!("testbed fence agent: {e}")),
            };
            if let Err(e) = forget_runtime_addresses(run, node) {
                return (1, format!("testbed fence agent: {e}"));
            }
            if let Err(e) = std::fs::write(marker(run, node), b"off") {
                return (
                    1,
                    format!("testbed fence agent: recording n{node} off: {e}"),
                );
            }
            (
                0,
                format!(
                    "testbed fence agent: n{node} off (ports {} down, {killed} processes killed)",
                    ports.join(", ")
                ),
            )
        }
        other => (1, format!("testbed fence agent: unknown action {other}")),
    }
}

/// What a power cycle does to a node's interfaces: every address added
/// at run time (a floating address an agent held) is gone; the node's own
/// (10.77.x.(10+node), as the testbed gives them) stays. Without this a
/// node "powered off" would come back still holding the address.
fn forget_runtime_addresses(run: &str, node: usize) -> Result<(), String> {
    let ns = format!("{PREFIX}{run}-n{node}");
    let out = sys::ip(&ns, &["-o", "-4", "addr", "show"]).map_err(|e| e.to_string())?;
    for line in out.lines() {
        // "2: lan    inet 10.77.1.11/24 brd ... scope global lan"
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(dev), Some(addr)) = (f.get(1), f.get(3)) else {
            continue;
        };
        if *dev == "lo" {
            continue;
        }
        let own = addr
            .split('/')
            .next()
            .and_then(|a| a.parse::<std::net::Ipv4Addr>().ok())
            .is_some_and(|a| usize::from(a.octets()[3]) == 10 + node);
        if !own {
            sys::ip(&ns, &["addr", "del", addr, "dev", dev]).map_err(|e| e.to_string())?;
        }
    }
    Ok(())
}

/// Kills every process of the node (thawing it so they can die); returns
/// how many there were.
fn kill_node(run: &str, node: usize) -> Result<usize, String> {
    let flavor = Flavor::detect().map_err(|e| format!("no cgroup freezer: {e}"))?;
    let name = format!("{PREFIX}{run}-n{node}");
    let cg = NodeCgroup::with_prefix(&flavor, &name)
        .into_iter()
        .find(|c| {
            c.dir()
                .file_name()
                .is_some_and(|f| f.to_string_lossy() == name)
        })
        .ok_or_else(|| format!("no cgroup {name}: is the testbed run {run} alive?"))?;
    let me = std::process::id() as i32;
    let first = cg.pids();
    let t0 = Instant::now();
    loop {
        let pids: Vec<i32> = cg.pids().into_iter().filter(|p| *p != me).collect();
        if pids.is_empty() {
            return Ok(first.len());
        }
        for p in &pids {
            // SAFETY: kill(2) on a PID read from the node's own cgroup.
            unsafe {
                libc::kill(*p, libc::SIGKILL);
            }
        }
        let _ = cg.thaw();
        if t0.elapsed() > KILL_LIMIT {
            return Err(format!(
                "{} processes of n{node} survived SIGKILL",
                pids.len()
            ));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_input_is_refused_with_what_is_missing() {
        assert_eq!(agent("action=metadata\n").0, 0);
        let (c, m) = agent("action=off\nplug=n2\n");
        assert_eq!(c, 1);
        assert!(m.contains("testbed=<run id>"), "{m}");
        let (c, m) = agent("action=off\ntestbed=../x\nplug=n2\n");
        assert_eq!(c, 1, "{m}");
        let (c, m) = agent("action=off\ntestbed=abc123\nplug=nx\n");
        assert_eq!(c, 1);
        assert!(m.contains("plug=<node>"), "{m}");
        let (c, m) = agent("action=off\ntestbed=abc123\nplug=n2\nfail_while=/\n");
        assert_eq!(c, 1);
        assert!(m.contains("on purpose"), "{m}");
    }
}
