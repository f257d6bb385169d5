//! Crash-to-answer failover, Tandem beside keepalived (Debian's, VRRPv3),
//! in the same topology and the same run: three nodes on `lan` + `sync`, a
//! floating IP 10.77.1.100 with the same probe service on it, the client
//! probing it every 5 ms. Each run cuts every link of the node holding the
//! address (a crash, as far as the network can tell), measures the outage
//! the client saw, restores the node and lets the cluster settle (both
//! fail back: keepalived preempts by default, Tandem's group has
//! `failback = "auto"`). Dual-active instants are counted over the whole
//! run, crash and restore included.

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tandem_testbed::agents::{all_online, AgentCluster, ClusterShape};
use tandem_testbed::checker::{analyze, CheckOptions, ProbeKind};
use tandem_testbed::prober::{ProbeLog, ProbeSpec, Prober};
use tandem_testbed::{Testbed, TestbedSpec};

const NODES: usize = 3;
const PROBE_PORT: u16 = 7000;

/// What happens to the node holding the address.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Every link cut (a crash, as far as the network can tell).
    Crash,
    /// A clean stop: SIGTERM to the agent (Tandem) or to keepalived, as a
    /// service manager stops it.
    CleanStop,
}

/// One run's figures.
#[derive(Debug, Clone)]
pub struct Run {
    /// The outage the client saw after the crash (ms).
    pub gap_ms: f64,
    /// Dual-active instants over the run.
    pub dual: usize,
    /// Who answered before and after.
    pub from_to: (String, String),
    /// Each dual-active instant in words (kind, reason, when, who).
    pub dual_detail: Vec<String>,
}

fn measure(log: &ProbeLog, crash_us: u64) -> Run {
    let report = analyze(&log.records, CheckOptions::default());
    let k = report.kind(ProbeKind::Udp);
    // The outage of the crash: the gap that contains the cut.
    let gap = k
        .gaps
        .iter()
        .find(|g| g.from_us <= crash_us + 50_000 && g.to_us >= crash_us)
        .map_or(0.0, |g| g.duration_ms());
    let before = log
        .records
        .iter()
        .filter(|r| r.t_us < crash_us)
        .filter_map(|r| r.responder.clone())
        .next_back()
        .unwrap_or_default();
    let after = log
        .records
        .iter()
        .filter(|r| r.t_us > crash_us)
        .find_map(|r| r.responder.clone())
        .unwrap_or_default();
    Run {
        gap_ms: gap,
        dual: report.dual_active().count(),
        from_to: (before, after),
        dual_detail: report
            .dual_active()
            .map(|d| {
                format!(
                    "{:?} {:?} {}..{} ms after the cut: {} and {}",
                    d.kind,
                    d.reason,
                    (d.from_us as i64 - crash_us as i64) / 1000,
                    (d.to_us as i64 - crash_us as i64) / 1000,
                    d.nodes.0,
                    d.nodes.1
                )
            })
            .collect(),
    }
}

fn web_on(s: &serde_json::Value) -> Option<String> {
    let g = s["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == "web")?;
    (g["state"] == "running").then(|| g["placed_on"].as_str().map(String::from))?
}

/// Tandem, default profile. The crashed node is restored `restore_ms`
/// after the group answers elsewhere.
pub fn tandem(tandem: &Path, runs: usize, restore_ms: u64, fault: Fault) -> Result<Vec<Run>> {
    let shape = ClusterShape {
        extra: tandem_testbed::agents::web_group_config(tandem, "auto", NODES, 8080, PROBE_PORT),
        ..ClusterShape::nodes(NODES)
    };
    let mut c = AgentCluster::start(tandem, &shape)?;
    let settle = |c: &AgentCluster| -> Result<()> {
        for n in 1..=NODES {
            c.wait(n, Duration::from_secs(30), "settled, web on n1", |s| {
                all_online(s) && web_on(s).as_deref() == Some("n1")
            })?;
        }
        Ok(())
    };
    settle(&c)?;
    let target = SocketAddr::new(c.bed.vip("lan").into(), PROBE_PORT);
    let mut out = Vec::new();
    for run in 1..=runs {
        let prober = Prober::start(
            &c.bed.client_ns(),
            ProbeSpec {
                tcp: false,
                http_port: None,
                ..ProbeSpec::new(target, 60_000)
            },
        )?;
        std::thread::sleep(Duration::from_millis(300 + (run as u64 * 17) % 50));
        let crash = unix_ms();
        match fault {
            Fault::Crash => c.bed.cut_node(1)?,
            Fault::CleanStop => {
                c.bed.stop_gracefully(c.pids[0], Duration::from_secs(30))?;
            }
        }
        c.wait(2, Duration::from_secs(30), "web running elsewhere", |s| {
            web_on(s).is_some_and(|n| n != "n1")
        })?;
        std::thread::sleep(Duration::from_millis(restore_ms));
        match fault {
            Fault::Crash => c.bed.restore_node(1)?,
            Fault::CleanStop => c.pids[0] = c.spawn_agent(1)?,
        }
        settle(&c)?;
        std::thread::sleep(Duration::from_millis(500));
        let log = prober.stop()?;
        let r = measure(&log, on_log(&log, crash));
        eprintln!(
            "tandem run {run}: gap {:.0} ms, dual {} {:?}",
            r.gap_ms, r.dual, r.dual_detail
        );
        out.push(r);
    }
    Ok(out)
}

use tandem_testbed::prober::unix_ms;

/// The crash time on the probe log's clock.
fn on_log(log: &ProbeLog, crash_unix_ms: u64) -> u64 {
    crash_unix_ms.saturating_sub(log.started_unix_ms) * 1000
}

fn keepalived_config(node: usize, advert_ms: u64) -> String {
    let priority = 200 - 50 * node;
    format!(
        "global_defs {{\n  vrrp_version 3\n  router_id n{node}\n  enable_script_security\n  script_user root\n}}\n\
vrrp_instance web {{\n  state BACKUP\n  interface lan\n  virtual_router_id 51\n  priority {priority}\n  advert_int {:.2}\n  virtual_ipaddress {{\n    10.77.1.100/24 dev lan\n  }}\n}}\n",
        advert_ms as f64 / 1000.0
    )
}

/// keepalived, VRRPv3 with `advert_int` = `advert_ms`, the probe service
/// running on every node (keepalived moves only the address).
pub fn keepalived(tandem: &Path, runs: usize, advert_ms: u64, fault: Fault) -> Result<Vec<Run>> {
    if std::process::Command::new("keepalived")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!("keepalived is not installed: apt-get install -y keepalived");
    }
    let bed = Testbed::new(TestbedSpec {
        nodes: NODES,
        links: vec!["lan".into(), "sync".into()],
    })?;
    let dir = tempfile::tempdir().context("creating the keepalived directory")?;
    let start_keepalived = |n: usize| -> Result<u32> {
        let conf = dir.path().join(format!("n{n}.conf"));
        std::fs::write(&conf, keepalived_config(n, advert_ms))?;
        let pid = dir.path().join(format!("n{n}.pid"));
        let vpid = dir.path().join(format!("n{n}.vrrp.pid"));
        bed.spawn(
            n,
            "keepalived",
            &[
                "-n",
                "-l",
                "-D",
                "-G",
                "-P",
                "-f",
                &conf.to_string_lossy(),
                "-p",
                &pid.to_string_lossy(),
                "-r",
                &vpid.to_string_lossy(),
            ],
        )
    };
    let mut n1_keepalived = 0;
    for n in 1..=NODES {
        let pid = start_keepalived(n)?;
        if n == 1 {
            n1_keepalived = pid;
        }
        let name = format!("n{n}");
        let tandem_s = tandem.to_string_lossy();
        bed.spawn(
            n,
            &tandem_s,
            &[
                "demo-service",
                "--name",
                &name,
                "--port",
                "8080",
                "--probe-port",
                &PROBE_PORT.to_string(),
            ],
        )?;
    }
    let target = SocketAddr::new(bed.vip("lan").into(), PROBE_PORT);
    // Master down detection is 3 advertisements plus skew; settling after a
    // restore is a few more (preemption, gratuitous ARPs).
    let settle = Duration::from_millis((advert_ms * 8).max(2_000));
    std::thread::sleep(settle);
    let mut out = Vec::new();
    for run in 1..=runs {
        let prober = Prober::start(
            &bed.client_ns(),
            ProbeSpec {
                tcp: false,
                http_port: None,
                ..ProbeSpec::new(target, 120_000)
            },
        )?;
        std::thread::sleep(Duration::from_millis(300 + (run as u64 * 17) % 50));
        let crash = unix_ms();
        match fault {
            Fault::Crash => bed.cut_node(1)?,
            Fault::CleanStop => {
                bed.stop_gracefully(n1_keepalived, Duration::from_secs(30))?;
            }
        }
        std::thread::sleep(Duration::from_millis((advert_ms * 6).max(1_000)));
        match fault {
            Fault::Crash => bed.restore_node(1)?,
            Fault::CleanStop => n1_keepalived = start_keepalived(1)?,
        }
        std::thread::sleep(settle);
        let log = prober.stop()?;
        let r = measure(&log, on_log(&log, crash));
        eprintln!(
            "keepalived({advert_ms} ms) run {run}: gap {:.0} ms, dual {} ({} -> {}) {:?}",
            r.gap_ms, r.dual, r.from_to.0, r.from_to.1, r.dual_detail
        );
        if r.from_to.0 != "n1" {
            bail!(
                "run {run}: n1 was not master before the crash ({:?})",
                r.from_to
            );
        }
        out.push(r);
    }
    Ok(out)
}
