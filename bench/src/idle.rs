//! `bench/run idle`: what an idle cluster costs per node. With `--groups`
//! (the default) every node runs one group of its own, as a real cluster
//! does: a service process and a floating address, an `http` monitor and an
//! `exec` monitor at their default intervals, and the lease guard beside the
//! agent. Per node: CPU of the agent and of its guard, the CPU of the
//! checks the agent ran (reaped children: exec monitors, probes) apart,
//! RSS, and wake-ups per second (context switches of every thread).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tandem_testbed::agents::{AgentCluster, ClusterShape};

/// One group per node: service, address 10.77.1.(100+i), two monitors.
fn groups_config(tandem: &Path, nodes: usize) -> String {
    let mut cfg = String::new();
    for i in 1..=nodes {
        cfg.push_str(&format!(
            r#"
[[group]]
name = "g{i}"
preferred = ["n{i}"]

[[group.resource]]
name = "service"
kind = "process"
command = ["{tandem}", "demo-service", "--port", "8080", "--probe-port", "7000"]

[[group.resource]]
name = "vip"
kind = "ip"
address = "10.77.1.{addr}/24"

[[group.monitor]]
name = "http"
kind = "http"
url = "http://127.0.0.1:8080/"

[[group.monitor]]
name = "alive"
kind = "exec"
command = ["/bin/true"]
"#,
            tandem = tandem.display(),
            addr = 100 + i,
        ));
    }
    cfg
}

/// CPU figures of one process from /proc: (own utime+stime, reaped
/// children's cutime+cstime), in clock ticks.
pub(crate) fn ticks(pid: u32) -> Result<(u64, u64)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .with_context(|| format!("reading /proc/{pid}/stat"))?;
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let f: Vec<&str> = rest.split_whitespace().collect();
    // f[0] is field 3 (state): utime 14, stime 15, cutime 16, cstime 17.
    let field = |i: usize| -> Result<u64> {
        Ok(f.get(i)
            .with_context(|| format!("field {} of /proc/{pid}/stat", i + 3))?
            .parse()?)
    };
    Ok((field(11)? + field(12)?, field(13)? + field(14)?))
}

/// Context switches (voluntary + involuntary) of every thread of `pid`.
fn switches(pid: u32) -> Result<u64> {
    let mut total = 0;
    for task in std::fs::read_dir(format!("/proc/{pid}/task"))? {
        let status = std::fs::read_to_string(task?.path().join("status")).unwrap_or_default();
        for l in status.lines() {
            if l.starts_with("voluntary_ctxt_switches:")
                || l.starts_with("nonvoluntary_ctxt_switches:")
            {
                total += l
                    .split_whitespace()
                    .nth(1)
                    .and_then(|v| v.parse::<u64>().ok())
                    .unwrap_or(0);
            }
        }
    }
    Ok(total)
}

pub(crate) fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    let line = status
        .lines()
        .find(|l| l.starts_with("VmRSS:"))
        .context("no VmRSS")?;
    Ok(line
        .split_whitespace()
        .nth(1)
        .context("VmRSS value")?
        .parse()?)
}

/// The lease guard the agent `agent` started (its child running `guard`).
fn guard_of(agent: u32) -> Option<u32> {
    let dir = std::fs::read_dir("/proc").ok()?;
    for e in dir.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<u32>().ok()) else {
            continue;
        };
        let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
            continue;
        };
        let ppid = stat
            .rsplit_once(')')
            .and_then(|(_, r)| r.split_whitespace().nth(1))
            .and_then(|p| p.parse::<u32>().ok());
        let cmd = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
        let guard = cmd.split(|b| *b == 0).any(|a| a == b"guard");
        if ppid == Some(agent) && guard {
            return Some(pid);
        }
    }
    None
}

struct Sample {
    agent: (u64, u64),
    guard: (u64, u64),
    switches: u64,
}

fn sample(agent: u32, guard: Option<u32>) -> Result<Sample> {
    let g = match guard {
        Some(g) => (ticks(g)?, switches(g)?),
        None => ((0, 0), 0),
    };
    Ok(Sample {
        agent: ticks(agent)?,
        guard: g.0,
        switches: switches(agent)? + g.1,
    })
}

/// What one idle run measures.
pub struct Shape<'a> {
    /// Cluster size.
    pub nodes: usize,
    /// Measurement window.
    pub seconds: u64,
    /// One group per node (see [`groups_config`]).
    pub groups: bool,
    /// The HTTP API on, scraped every 15 s.
    pub http: bool,
    /// Timing profile.
    pub profile: &'a str,
}

/// Runs the idle benchmark and prints its figures.
pub fn run(tandem: PathBuf, shape: Shape<'_>, hz: u64, machine: &str) -> Result<()> {
    let Shape {
        nodes,
        seconds,
        groups,
        http,
        profile,
    } = shape;
    let mut extra = if groups {
        groups_config(&tandem, nodes)
    } else {
        String::new()
    };
    if http {
        extra.push_str("\n[http]\n");
    }
    let shape = ClusterShape {
        extra,
        profile: profile.to_string(),
        ..ClusterShape::nodes(nodes)
    };
    let c = AgentCluster::start(tandem, &shape)?;
    super::wait_all_settled(&c, nodes)?;
    if groups {
        for n in 1..=nodes {
            c.wait(n, super::SETTLE, "its own group running", |s| {
                s["groups"].as_array().is_some_and(|gs| {
                    gs.iter()
                        .any(|g| g["name"] == format!("g{n}") && g["state"] == "running")
                })
            })?;
        }
        // Let the start-up announcements and first checks pass.
        std::thread::sleep(Duration::from_secs(3));
    }
    let guards: Vec<Option<u32>> = c.pids.iter().map(|p| guard_of(*p)).collect();
    if groups && guards.iter().any(Option::is_none) {
        bail!("a node has no lease guard running: {guards:?}");
    }
    let before: Vec<Sample> = c
        .pids
        .iter()
        .zip(&guards)
        .map(|(p, g)| sample(*p, *g))
        .collect::<Result<_>>()?;
    let start = Instant::now();
    let window = Duration::from_secs(seconds);
    let mut scrapes = 0u32;
    if http {
        // As Prometheus would: every node's /metrics every 15 s.
        while start.elapsed() < window {
            for n in 1..=nodes {
                let out = c.bed.exec(
                    n,
                    "curl",
                    &["-sf", "--max-time", "5", "http://127.0.0.1:9640/metrics"],
                )?;
                if !out.contains("tandem_quorate 1") {
                    bail!("n{n}'s metrics do not say it is quorate:\n{out}");
                }
                scrapes += 1;
            }
            std::thread::sleep(Duration::from_secs(15).min(window.saturating_sub(start.elapsed())));
        }
    } else {
        std::thread::sleep(window);
    }
    let wall = start.elapsed().as_secs_f64();
    let after: Vec<Sample> = c
        .pids
        .iter()
        .zip(&guards)
        .map(|(p, g)| sample(*p, *g))
        .collect::<Result<_>>()?;
    println!(
        "## idle: {nodes} nodes x 2 links, timing profile {profile}, {seconds} s window, after settling, {}",
        if groups {
            "one group per node (process + ip, http + exec monitors at default intervals), guard included"
        } else {
            "no groups"
        }
    );
    if http {
        println!(
            "HTTP API on (loopback), /metrics scraped on every node every 15 s: {scrapes} scrapes"
        );
    }
    println!("machine: {machine}");
    let pct = |t: u64| t as f64 / hz as f64 / wall * 100.0;
    let mut worst_cpu = 0.0f64;
    let mut worst_rss = 0u64;
    for (i, pid) in c.pids.iter().enumerate() {
        let (b, a) = (&before[i], &after[i]);
        let agent = pct(a.agent.0 - b.agent.0);
        let guard = pct(a.guard.0 - b.guard.0);
        let checks = pct(a.agent.1 - b.agent.1);
        let rss = rss_kib(*pid)? + guards[i].map_or(Ok(0), rss_kib)?;
        let wakes = (a.switches - b.switches) as f64 / wall;
        println!(
            "n{}: agent {agent:.2}% + guard {guard:.2}% = {:.2}% of a core; checks (children) {checks:.2}%; rss agent+guard {:.1} MiB; {wakes:.0} wake-ups/s",
            i + 1,
            agent + guard,
            rss as f64 / 1024.0
        );
        worst_cpu = worst_cpu.max(agent + guard);
        worst_rss = worst_rss.max(rss);
    }
    println!(
        "max per node: agent + guard {worst_cpu:.2}% of a core, rss {:.1} MiB (target <= 0.5%, <= 30 MiB)",
        worst_rss as f64 / 1024.0
    );
    if c.pids.iter().any(|p| !c.bed.is_running(*p)) {
        bail!("an agent died during the measurement");
    }
    Ok(())
}
