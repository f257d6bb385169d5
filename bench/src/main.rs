//! `tandem-bench`: benchmarks on the testbed with real agents. Each prints
//! the machine, the command and the raw figures, ready for
//! `docs/BENCHMARKS.md`. Run through `bench/run` (builds release binaries).

mod corosync;
mod failover;
mod floor;
mod idle;
mod volume;
mod web;

use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};
use tandem_testbed::agents::{
    all_online, event_time, is_node_dead, leader, AgentCluster, ClusterShape,
};
use tandem_testbed::wire::Impairment;

/// Benchmarks of Tandem on the testbed (needs root).
#[derive(Debug, Parser)]
struct Cli {
    /// The tandem binary to run (build it with --release).
    #[arg(long, default_value = "target/release/tandem")]
    tandem: PathBuf,
    #[command(subcommand)]
    what: What,
}

#[derive(Debug, Subcommand)]
enum What {
    /// Volume throughput and latency: nbdkit's file plugin vs Tandem
    /// unreplicated vs Tandem protocol C (fio --ioengine=nbd).
    Volume {
        /// Seconds per measurement.
        #[arg(long, default_value_t = 10)]
        seconds: u64,
        /// Volume size in MiB.
        #[arg(long, default_value_t = 1024)]
        size_mib: u64,
        /// Run only the tests whose label contains this text (e.g. `seq`,
        /// `QD16`); all three by default.
        #[arg(long)]
        only: Option<String>,
    },
    /// Time from cutting every link of a node to `node dead` at its peers.
    Detect {
        /// Number of cuts.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Cluster size.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
    },
    /// False `node dead` events over a long run with both cores saturated
    /// and loss on one link.
    Soak {
        /// Duration in minutes.
        #[arg(long, default_value_t = 10)]
        minutes: u64,
        /// Loss on n1's sync link, percent.
        #[arg(long, default_value_t = 5.0)]
        loss_pct: f32,
        /// Busy threads competing for the CPU (default: one per core).
        #[arg(long)]
        busy: Option<usize>,
    },
    /// The detection benchmark against Corosync (knet, two links) in the
    /// same topology.
    CorosyncDetect {
        /// Number of cuts.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Corosync's token timeout.
        #[arg(long, default_value_t = 300)]
        token_ms: u64,
    },
    /// Crash-to-answer failover of a floating IP: Tandem (default profile)
    /// and keepalived (VRRPv3, advert_int 0.1 s and 1 s) in the same run.
    Failover {
        /// Crashes per contender.
        #[arg(long, default_value_t = 30)]
        runs: usize,
        /// Skip keepalived.
        #[arg(long)]
        tandem_only: bool,
        /// Restore Tandem's crashed node this long after the group answers
        /// elsewhere. The checker reads a return to an earlier responder
        /// within 1 s as dual-active (A, B, A), so a failback sooner than
        /// that would be flagged whether or not two nodes ever answered.
        #[arg(long, default_value_t = 1_500)]
        restore_ms: u64,
        /// Stop the holder cleanly (SIGTERM to its agent, or to keepalived)
        /// instead of cutting its links.
        #[arg(long)]
        clean_stop: bool,
    },
    /// Brief scenario 3 (IPaddr2 + apache, two nodes, fencing) under
    /// Tandem and under Pacemaker + Corosync with the same OCF agents:
    /// crash and planned move to the page answering, p50/p99, and each
    /// stack's idle CPU and memory.
    Web {
        /// Crashes and planned moves per stack.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Idle measurement window in seconds.
        #[arg(long, default_value_t = 30)]
        idle_seconds: u64,
        /// Corosync's token timeout.
        #[arg(long, default_value_t = 300)]
        token_ms: u64,
        /// Where the logs of a failed run go.
        #[arg(long, default_value = "/tmp/tandem-bench-web")]
        logs: PathBuf,
        /// Only this stack (`tandem` or `pacemaker`); both by default.
        #[arg(long)]
        only: Option<String>,
    },
    /// The fault campaign: seeded random schedules of faults (crash,
    /// kill -9, freeze, partitions, flaps, loss, restarts) against a
    /// 3-node cluster and a 2-node cluster with fencing, the client probing
    /// the floating IP; prints one line per schedule and a summary table.
    /// Replay one schedule with `--shape S --seed N --schedules 1`.
    Campaign {
        /// `three`, `two-fenced` or `both`.
        #[arg(long, default_value = "both")]
        shape: String,
        /// Schedules per shape.
        #[arg(long, default_value_t = 100)]
        schedules: u64,
        /// First seed (then seed+1, ...).
        #[arg(long, default_value_t = 1)]
        seed: u64,
        /// Write each schedule's agent logs and step times here.
        #[arg(long)]
        logs: Option<PathBuf>,
    },
    /// CPU, RSS and wake-ups of idle agents (and their guards), by
    /// default with one group per node with monitors.
    /// The floor under `idle`: per node, only heartbeat-sized datagrams
    /// to every peer on every link at the agents' rate, and their reads
    /// (no agent runs). What no agent sending as many packets can beat.
    Floor {
        /// Cluster size.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Measurement window in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// Between beats (the default profile's heartbeat: 50 ms).
        #[arg(long, default_value_t = 50)]
        interval_ms: u64,
        /// Bytes per datagram (an agent's heartbeat with its report).
        #[arg(long, default_value_t = 600)]
        size: usize,
    },
    /// One node of `floor` (started by it inside a node's namespace).
    #[command(hide = true)]
    BeatFloor {
        /// This node's address on each link, comma-separated.
        #[arg(long)]
        me: String,
        /// A peer's address on each link, comma-separated (repeated).
        #[arg(long)]
        peer: Vec<String>,
        #[arg(long)]
        interval_ms: u64,
        #[arg(long)]
        size: usize,
        /// Exits after this long whatever happens.
        #[arg(long)]
        lifetime_s: u64,
    },
    Idle {
        /// Cluster size.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Without groups (the agents alone, as the first figures were
        /// taken).
        #[arg(long)]
        bare: bool,
        /// Timing profile (`default`: 50 ms heartbeats; `relaxed`: 200 ms).
        #[arg(long, default_value = "default")]
        profile: String,
        /// Measurement window in seconds.
        #[arg(long, default_value_t = 60)]
        seconds: u64,
        /// With the HTTP API on (loopback), its metrics scraped from every
        /// node every 15 s during the window, as Prometheus would.
        #[arg(long)]
        http: bool,
    },
}

use tandem_testbed::prober::unix_ms;

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!("{cores} cores, {cpu}, Linux {}", kernel.trim())
}

fn percentile(sorted: &[u64], p: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    // Nearest rank.
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summary(label: &str, values: &[u64]) {
    let mut v = values.to_vec();
    v.sort_unstable();
    println!(
        "{label}: n={} min={} p50={} p90={} p99={} max={} (ms)",
        v.len(),
        v.first().copied().unwrap_or(0),
        percentile(&v, 50.0),
        percentile(&v, 90.0),
        percentile(&v, 99.0),
        v.last().copied().unwrap_or(0)
    );
}

const SETTLE: Duration = Duration::from_secs(20);

fn wait_all_settled(c: &AgentCluster, members: usize) -> Result<()> {
    for n in 1..=members {
        c.wait(n, SETTLE, "all online, quorate, a leader", |s| {
            all_online(s) && s["quorum"]["quorate"] == true && leader(s).is_some()
        })?;
    }
    Ok(())
}

fn detect(tandem: PathBuf, runs: usize, nodes: usize) -> Result<()> {
    let c = AgentCluster::start(tandem, &ClusterShape::nodes(nodes))?;
    wait_all_settled(&c, nodes)?;
    let victim = nodes;
    let dead = format!("node n{victim} dead");
    let victim_name = format!("n{victim}");
    let mut figures = Vec::new();
    let mut raw = Vec::new();
    let mut cut_ms = Vec::new();
    for run in 1..=runs {
        // Cut at a random phase of the heartbeat cycle.
        std::thread::sleep(Duration::from_millis(500 + (run as u64 * 37) % 50));
        // A node is cut when its last link is: time from when the cut
        // command (one `ip link set down` per link) returned; its own
        // duration is reported beside.
        let before = unix_ms();
        c.bed.cut_node(victim)?;
        let t0 = unix_ms();
        cut_ms.push(t0 - before);
        let mut row = Vec::new();
        for n in 1..victim {
            c.wait(n, Duration::from_secs(5), &dead, |s| {
                event_time(s, before, |e| is_node_dead(e, &victim_name)).is_some()
            })?;
            // Events are immutable once logged: read the figure again.
            let s = c.status(n).context("status after detection")?;
            let at = event_time(&s, before, |e| is_node_dead(e, &victim_name))
                .context("event vanished")?;
            row.push(at.saturating_sub(t0));
            figures.push(at.saturating_sub(t0));
        }
        raw.push(format!("run {run}: {row:?}"));
        c.bed.restore_node(victim)?;
        wait_all_settled(&c, nodes)?;
    }
    println!("## detect: cut every link of n{victim} -> `node n{victim} dead` at each peer");
    println!("machine: {}", machine());
    println!("profile: default (heartbeat 50 ms, deadtime 200 ms, warntime 150 ms); {nodes} nodes x 2 links");
    for r in &raw {
        println!("{r}");
    }
    summary("cut command returned -> node dead", &figures);
    summary("duration of the cut command itself", &cut_ms);
    Ok(())
}

fn count_lines(logs: &str, pred: impl Fn(&str) -> bool) -> usize {
    logs.lines().filter(|l| pred(l)).count()
}

fn soak(tandem: PathBuf, minutes: u64, loss_pct: f32, busy: Option<usize>) -> Result<()> {
    let nodes = 3;
    let c = AgentCluster::start(tandem, &ClusterShape::nodes(nodes))?;
    wait_all_settled(&c, nodes)?;
    c.bed.impair_link(
        1,
        "sync",
        Impairment {
            delay_ms: 0,
            jitter_ms: 0,
            loss_pct,
        },
    )?;
    let stop = Arc::new(AtomicBool::new(false));
    let threads =
        busy.unwrap_or_else(|| std::thread::available_parallelism().map_or(2, |n| n.get()));
    let spinners: Vec<_> = (0..threads)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut x = 0u64;
                while !stop.load(Ordering::Relaxed) {
                    x = std::hint::black_box(x.wrapping_mul(6364136223846793005).wrapping_add(1));
                }
            })
        })
        .collect();
    let start = Instant::now();
    let end = start + Duration::from_secs(minutes * 60);
    let mut last_report = start;
    while Instant::now() < end {
        std::thread::sleep(Duration::from_secs(1));
        if last_report.elapsed() >= Duration::from_secs(60) {
            last_report = Instant::now();
            eprintln!("soak: {} of {minutes} min", start.elapsed().as_secs() / 60);
        }
    }
    stop.store(true, Ordering::Relaxed);
    for s in spinners {
        let _ = s.join();
    }
    let logs = c.logs();
    let dead = count_lines(&logs, |l| l.contains("tandem[") && l.contains(" dead"));
    let leader_changes = count_lines(&logs, |l| l.contains(": leader is "));
    let no_quorum = count_lines(&logs, |l| l.contains(": no quorum ("));
    let late = count_lines(&logs, |l| l.contains("/sync late"));
    let sync_down = count_lines(&logs, |l| l.contains("/sync down"));
    let lan_late = count_lines(&logs, |l| l.contains("/lan late"));
    println!("## soak: {minutes} min, {threads} busy threads, {loss_pct}% loss on n1's sync link");
    println!("machine: {}", machine());
    println!("profile: default; 3 nodes x 2 links");
    println!("node dead events (all nodes, whole run): {dead}");
    println!("leader elections logged (including the first): {leader_changes}");
    println!("no-quorum events (including each start's first view): {no_quorum}");
    println!("sync link late: {late}, sync link down: {sync_down}, lan link late: {lan_late}");
    for n in 1..=nodes {
        if let Some(s) = c.status(n) {
            println!(
                "n{n}: quorate={} leader={:?} term={} dropped={}",
                s["quorum"]["quorate"],
                s["agreement"]["leader"],
                s["agreement"]["term"],
                s["dropped"]
            );
        }
    }
    if dead > 0 {
        println!("FALSE NODE DEAD EVENTS:");
        for l in logs.lines().filter(|l| l.contains(" dead")) {
            println!("  {l}");
        }
    }
    Ok(())
}

fn failover_summary(label: &str, what: &str, runs: &[failover::Run]) {
    let gaps: Vec<u64> = runs.iter().map(|r| r.gap_ms.round() as u64).collect();
    summary(
        &format!("{label}: {what} -> answer from another node"),
        &gaps,
    );
    println!(
        "{label}: dual-active instants over all runs (crash and restore): {}",
        runs.iter().map(|r| r.dual).sum::<usize>()
    );
    for (i, r) in runs.iter().enumerate().filter(|(_, r)| r.dual > 0) {
        println!("{label}: run {}: {}", i + 1, r.dual_detail.join("; "));
    }
    println!(
        "{label}: raw gaps (ms): {}",
        gaps.iter()
            .map(|g| g.to_string())
            .collect::<Vec<_>>()
            .join(" ")
    );
}

fn failover_all(
    tandem: &std::path::Path,
    runs: usize,
    tandem_only: bool,
    restore_ms: u64,
    clean_stop: bool,
) -> Result<()> {
    let fault = if clean_stop {
        println!("## failover: clean stop (SIGTERM) of the agent or keepalived holding 10.77.1.100 -> client answered from another node");
        failover::Fault::CleanStop
    } else {
        println!("## failover: cut every link of the node holding 10.77.1.100 -> client answered from another node");
        failover::Fault::Crash
    };
    println!("machine: {}", machine());
    println!("3 nodes x 2 links (lan, sync); client probes UDP every 5 ms (100 ms timeout); {runs} runs each; both fail back after restore");
    let t = failover::tandem(tandem, runs, restore_ms, fault)?;
    let what = if clean_stop { "clean stop" } else { "crash" };
    failover_summary(
        "tandem (default profile: heartbeat 50 ms, deadtime 200 ms)",
        what,
        &t,
    );
    if !tandem_only {
        for advert in [100, 1000] {
            let k = failover::keepalived(tandem, runs, advert, fault)?;
            failover_summary(
                &format!(
                    "keepalived 2.2.7 VRRPv3 advert_int {:.1} s",
                    advert as f64 / 1000.0
                ),
                what,
                &k,
            );
        }
    }
    Ok(())
}

fn clock_ticks_per_second() -> u64 {
    // Linux has reported 100 ticks per second to user space (USER_HZ) on
    // every architecture for decades; getconf confirms it when present.
    std::process::Command::new("getconf")
        .arg("CLK_TCK")
        .output()
        .ok()
        .and_then(|o| String::from_utf8_lossy(&o.stdout).trim().parse().ok())
        .unwrap_or(100)
}

fn campaign(
    tandem: &std::path::Path,
    shape: &str,
    schedules: u64,
    seed: u64,
    logs: Option<&std::path::Path>,
) -> Result<()> {
    use tandem_testbed::campaign::{run_schedule, schedule, summary, Shape};
    let shapes = match shape {
        "both" => vec![Shape::Three, Shape::TwoFenced],
        s => vec![Shape::parse(s)
            .with_context(|| format!("unknown shape {s}: use three, two-fenced or both"))?],
    };
    if let Some(dir) = logs {
        std::fs::create_dir_all(dir)
            .with_context(|| format!("creating the log directory {}", dir.display()))?;
    }
    println!("## fault campaign");
    println!("machine: {}", machine());
    let started = Instant::now();
    let mut outcomes = Vec::new();
    let total = shapes.len() as u64 * schedules;
    for shape in shapes {
        for s in seed..seed + schedules {
            let o = run_schedule(tandem, &schedule(shape, s), logs)?;
            println!("{}", o.line());
            for d in &o.dual_active {
                println!("    DUAL-ACTIVE {d}");
            }
            for u in o.unexplained() {
                println!("    UNEXPLAINED {u}");
            }
            outcomes.push(o);
            eprintln!(
                "campaign: {}/{total} schedules, {:.0} s",
                outcomes.len(),
                started.elapsed().as_secs_f64()
            );
        }
    }
    println!(
        "\n{} schedules in {:.0} s; outages are UDP gaps >= {} ms; replay one with `bench/run campaign --shape SHAPE --seed N --schedules 1`\n",
        outcomes.len(),
        started.elapsed().as_secs_f64(),
        tandem_testbed::campaign::OUTAGE_MIN_MS
    );
    print!("{}", summary(&outcomes));
    Ok(())
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    if !tandem_testbed::is_root() {
        bail!("the benchmarks build network namespaces: run them as root");
    }
    if !cli.tandem.exists() {
        bail!(
            "{} not found: build it with `cargo build --release -p tandem` or pass --tandem",
            cli.tandem.display()
        );
    }
    let args: Vec<String> = std::env::args().collect();
    println!("command: {}", args.join(" "));
    match cli.what {
        What::Volume {
            seconds,
            size_mib,
            only,
        } => volume::run(&cli.tandem, seconds, size_mib, only.as_deref()),
        What::Detect { runs, nodes } => detect(cli.tandem, runs, nodes),
        What::Soak {
            minutes,
            loss_pct,
            busy,
        } => soak(cli.tandem, minutes, loss_pct, busy),
        What::Floor {
            nodes,
            seconds,
            interval_ms,
            size,
        } => floor::run(
            cli.tandem,
            nodes,
            seconds,
            interval_ms,
            size,
            clock_ticks_per_second(),
            &machine(),
        ),
        What::BeatFloor {
            me,
            peer,
            interval_ms,
            size,
            lifetime_s,
        } => {
            let parse = |s: &str| -> Result<Vec<std::net::Ipv4Addr>> {
                s.split(',')
                    .map(|a| a.parse().with_context(|| format!("address {a:?}")))
                    .collect()
            };
            let peers = peer.iter().map(|p| parse(p)).collect::<Result<Vec<_>>>()?;
            floor::beat(&parse(&me)?, &peers, interval_ms, size, lifetime_s)
        }
        What::Idle {
            nodes,
            seconds,
            bare,
            profile,
            http,
        } => idle::run(
            cli.tandem,
            idle::Shape {
                nodes,
                seconds,
                groups: !bare,
                http,
                profile: &profile,
            },
            clock_ticks_per_second(),
            &machine(),
        ),
        What::Campaign {
            shape,
            schedules,
            seed,
            logs,
        } => campaign(&cli.tandem, &shape, schedules, seed, logs.as_deref()),
        What::Failover {
            runs,
            tandem_only,
            restore_ms,
            clean_stop,
        } => failover_all(&cli.tandem, runs, tandem_only, restore_ms, clean_stop),
        What::Web {
            runs,
            idle_seconds,
            token_ms,
            logs,
            only,
        } => {
            let stacks = web::run(
                &cli.tandem,
                runs,
                idle_seconds,
                token_ms,
                &logs,
                only.as_deref(),
            )?;
            println!("## web: IPaddr2 + apache on two nodes with fencing, Tandem beside Pacemaker");
            println!("machine: {}", machine());
            println!(
                "tandem: default profile; pacemaker 2.1.5 + corosync 3.1.7, udpu, token {token_ms} ms; {runs} runs of each fault; client GET every 5 ms"
            );
            for (name, f) in &stacks {
                println!("{name} crash raw: {:?}", f.crash_ms);
                println!("{name} planned raw: {:?}", f.planned_ms);
                summary(&format!("{name} crash -> page answers"), &f.crash_ms);
                summary(
                    &format!("{name} planned move -> page answers"),
                    &f.planned_ms,
                );
                println!(
                    "{name}: dual-active instants {}; idle over {idle_seconds} s: CPU {:.2}% of one core, RSS {:.1} MiB, {} processes (both nodes, apache included)",
                    f.dual, f.idle_cpu_pct, f.idle_rss_mib, f.idle_processes
                );
                println!("{name}: {} failed runs {:?}", f.failed.len(), f.failed);
            }
            if let [(_, t), (_, p)] = &stacks[..] {
                let p50 = |v: &[u64]| {
                    let mut v = v.to_vec();
                    v.sort_unstable();
                    percentile(&v, 50.0).max(1) as f64
                };
                println!(
                    "tandem / pacemaker, p50: crash {:.2}, planned {:.2}",
                    p50(&t.crash_ms) / p50(&p.crash_ms),
                    p50(&t.planned_ms) / p50(&p.planned_ms)
                );
            }
            Ok(())
        }
        What::CorosyncDetect { runs, token_ms } => {
            let rows = corosync::detect(runs, token_ms)?;
            println!(
                "## corosync detect: cut every link of n3 -> quorum `Members[2]` at each peer"
            );
            println!("machine: {}", machine());
            println!("corosync 3.1.7, knet, links lan + sync, token {token_ms} ms; 3 nodes");
            for (i, r) in rows.iter().enumerate() {
                println!("run {}: {r:?}", i + 1);
            }
            let all: Vec<u64> = rows.into_iter().flatten().collect();
            summary("cut -> Members[2]", &all);
            Ok(())
        }
    }
}
