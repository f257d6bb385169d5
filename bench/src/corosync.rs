//! Corosync 3 (Debian's package) in the same testbed topology, for the
//! detection benchmark: three nodes, links `lan` and `sync` (knet, two
//! links), each node in its own network *and* mount namespace with private
//! /etc/corosync, /var/lib/corosync, /run and /dev/shm.
//!
//! Detection is read from corosync's own log (to stderr, hires
//! timestamps): the time of the `Members[2]` quorum line after the cut.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tandem_testbed::{Testbed, TestbedSpec};

const NODES: usize = 3;

fn config(bed: &Testbed, token_ms: u64) -> String {
    let mut nodes = String::new();
    for n in 1..=NODES {
        nodes += &format!(
            "  node {{\n    ring0_addr: {}\n    ring1_addr: {}\n    nodeid: {n}\n    name: n{n}\n  }}\n",
            bed.address(n, "lan"),
            bed.address(n, "sync")
        );
    }
    format!(
        "totem {{\n  version: 2\n  cluster_name: tb\n  transport: knet\n  token: {token_ms}\n  crypto_cipher: none\n  crypto_hash: none\n  interface {{\n    linknumber: 0\n  }}\n  interface {{\n    linknumber: 1\n  }}\n}}\n\
nodelist {{\n{nodes}}}\n\
quorum {{\n  provider: corosync_votequorum\n}}\n\
logging {{\n  to_stderr: yes\n  to_logfile: no\n  to_syslog: no\n  timestamp: hires\n}}\n"
    )
}

/// Milliseconds since midnight UTC of a corosync hires timestamp at the
/// start of `line` ("Nov 22 03:12:01.123 ..."), if any.
fn line_ms(line: &str) -> Option<u64> {
    let t = line.split_whitespace().nth(2)?;
    let (hms, ms) = t.split_once('.')?;
    let mut p = hms.split(':').map(|x| x.parse::<u64>().ok());
    let (h, m, s) = (p.next()??, p.next()??, p.next()??);
    Some(((h * 60 + m) * 60 + s) * 1000 + ms.get(..3)?.parse::<u64>().ok()?)
}

fn now_day_ms() -> u64 {
    tandem_testbed::prober::unix_ms() % 86_400_000
}

/// The first quorum line announcing `members` members in `log` at or after
/// `since` (ms of the day).
fn members_at(log: &Path, members: usize, since: u64) -> Option<u64> {
    let text = std::fs::read_to_string(log).ok()?;
    let needle = format!("Members[{members}]:");
    text.lines()
        .filter(|l| l.contains("[QUORUM]") && l.contains(&needle))
        .filter_map(line_ms)
        .find(|t| *t >= since)
}

fn wait_members(log: &Path, members: usize, since: u64, limit: Duration) -> Result<u64> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Some(t) = members_at(log, members, since) {
            return Ok(t);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    bail!(
        "corosync did not report {members} members in {} within {limit:?}",
        log.display()
    )
}

/// Runs the detection benchmark against corosync; returns per-run figures.
pub fn detect(runs: usize, token_ms: u64) -> Result<Vec<Vec<u64>>> {
    if !Path::new("/usr/sbin/corosync").exists() {
        bail!("corosync is not installed: apt-get install -y corosync");
    }
    let bed = Testbed::new(TestbedSpec {
        nodes: NODES,
        links: vec!["lan".into(), "sync".into()],
    })?;
    let dir = tempfile::tempdir()?;
    let conf = config(&bed, token_ms);
    let mut logs: Vec<PathBuf> = Vec::new();
    for n in 1..=NODES {
        let root = dir.path().join(format!("n{n}"));
        for sub in ["etc", "lib", "run", "shm"] {
            std::fs::create_dir_all(root.join(sub))?;
        }
        std::fs::write(root.join("etc/corosync.conf"), &conf)?;
        let r = root.display();
        let script = format!(
            "mount --bind {r}/etc /etc/corosync && mount --bind {r}/lib /var/lib/corosync && \
             mount --bind {r}/run /run && mount --bind {r}/shm /dev/shm && exec corosync -f"
        );
        bed.spawn(
            n,
            "unshare",
            &["--mount", "--propagation", "private", "sh", "-c", &script],
        )
        .with_context(|| format!("starting corosync in n{n}"))?;
        logs.push(bed.run_dir().join(format!("n{n}-unshare.log")));
    }
    let t = now_day_ms();
    for log in &logs {
        wait_members(log, NODES, t.saturating_sub(1000), Duration::from_secs(30))?;
    }
    std::thread::sleep(Duration::from_secs(2));
    let mut figures = Vec::new();
    for run in 0..runs {
        std::thread::sleep(Duration::from_millis(500 + (run as u64 * 37) % 50));
        let t0 = now_day_ms();
        bed.cut_node(NODES)?;
        let mut row = Vec::new();
        for log in &logs[..NODES - 1] {
            let at = wait_members(log, NODES - 1, t0, Duration::from_secs(30))?;
            row.push(at.saturating_sub(t0));
        }
        eprintln!("corosync run {}: {row:?}", run + 1);
        figures.push(row);
        let t1 = now_day_ms();
        bed.restore_node(NODES)?;
        for log in &logs {
            wait_members(log, NODES, t1, Duration::from_secs(30))?;
        }
        std::thread::sleep(Duration::from_secs(1));
    }
    Ok(figures)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_hires_timestamps() {
        let l = "Nov 22 03:12:01.123 [QUORUM] Members[2]: 1 2";
        assert_eq!(line_ms(l), Some(((3 * 60 + 12) * 60 + 1) * 1000 + 123));
        assert_eq!(line_ms("garbage"), None);
    }
}
