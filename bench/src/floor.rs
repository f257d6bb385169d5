//! The floor under the idle figure: a program that only sends and
//! receives heartbeat-sized UDP datagrams at the agent's rate over the
//! testbed's links, and nothing else (no MAC, no report, no agreement,
//! no timers but its own, one thread blocked in poll(2)). What it costs
//! per node is what the kernel's UDP path over veth and the wake-ups cost
//! on this machine at that rate: no agent doing the same can cost less.

use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::os::fd::AsRawFd as _;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _, Result};
use tandem_testbed::agents::{AgentCluster, ClusterShape};

use crate::idle::{rss_kib, ticks};

/// The port the floor's datagrams go to (the agents' own are not used:
/// no agent runs).
const PORT: u16 = 5499;

/// One node's beat: binds `me[l]:PORT` per link, sends `size` bytes to
/// every peer on every link each `interval_ms`, and reads whatever
/// arrives, for at most `lifetime_s` (the bench kills it sooner).
pub fn beat(
    me: &[Ipv4Addr],
    peers: &[Vec<Ipv4Addr>],
    interval_ms: u64,
    size: usize,
    lifetime_s: u64,
) -> Result<()> {
    let socks: Vec<UdpSocket> = me
        .iter()
        .map(|a| {
            let s = UdpSocket::bind((*a, PORT)).with_context(|| format!("binding {a}:{PORT}"))?;
            s.set_nonblocking(true)?;
            Ok(s)
        })
        .collect::<Result<_>>()?;
    let payload = vec![0x5a_u8; size];
    let mut buf = vec![0_u8; 64 * 1024];
    let interval = Duration::from_millis(interval_ms.max(1));
    let end = Instant::now() + Duration::from_secs(lifetime_s);
    let mut next = Instant::now();
    let mut fds: Vec<libc::pollfd> = socks
        .iter()
        .map(|s| libc::pollfd {
            fd: s.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    while Instant::now() < end {
        let now = Instant::now();
        if now >= next {
            for (l, s) in socks.iter().enumerate() {
                for p in peers {
                    if let Some(a) = p.get(l) {
                        let _ = s.send_to(&payload, SocketAddr::from((*a, PORT)));
                    }
                }
            }
            next += interval;
            if next < now {
                next = now + interval;
            }
        }
        let wait_ms = next.saturating_duration_since(Instant::now()).as_millis() + 1;
        let wait_ms = i32::try_from(wait_ms).unwrap_or(i32::MAX);
        let nfds = libc::nfds_t::try_from(fds.len()).unwrap_or(0);
        // SAFETY: `fds` is a live array of `nfds` pollfd structs.
        let n = unsafe { libc::poll(fds.as_mut_ptr(), nfds, wait_ms) };
        if n <= 0 {
            continue;
        }
        for (i, s) in socks.iter().enumerate() {
            if fds[i].revents & libc::POLLIN != 0 {
                // Bounded: what arrived since the last look.
                for _ in 0..1024 {
                    if s.recv_from(&mut buf).is_err() {
                        break;
                    }
                }
            }
        }
    }
    Ok(())
}

/// Runs the floor on a testbed of `nodes` x 2 links for `seconds` and
/// prints its cost per node, in the idle benchmark's terms.
pub fn run(
    tandem: PathBuf,
    nodes: usize,
    seconds: u64,
    interval_ms: u64,
    size: usize,
    hz: u64,
    machine: &str,
) -> Result<()> {
    let c = AgentCluster::prepare(tandem, &ClusterShape::nodes(nodes))?;
    let exe = std::env::current_exe().context("finding tandem-bench")?;
    let exe = exe.to_string_lossy().into_owned();
    let links = ["lan", "sync"];
    let addrs = |n: usize| -> String {
        links
            .iter()
            .map(|l| c.bed.address(n, l).to_string())
            .collect::<Vec<_>>()
            .join(",")
    };
    let mut pids = Vec::new();
    for n in 1..=nodes {
        let mut args = vec![
            "beat-floor".to_string(),
            "--me".into(),
            addrs(n),
            "--interval-ms".into(),
            interval_ms.to_string(),
            "--size".into(),
            size.to_string(),
            "--lifetime-s".into(),
            (seconds + 60).to_string(),
        ];
        for p in (1..=nodes).filter(|p| *p != n) {
            args.push("--peer".into());
            args.push(addrs(p));
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        pids.push(c.bed.spawn(n, &exe, &args)?);
    }
    // Settle as the idle run does, then measure the same window.
    std::thread::sleep(Duration::from_secs(3));
    let before: Vec<(u64, u64)> = pids.iter().map(|p| ticks(*p)).collect::<Result<_>>()?;
    let start = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let wall = start.elapsed().as_secs_f64();
    let after: Vec<(u64, u64)> = pids.iter().map(|p| ticks(*p)).collect::<Result<_>>()?;
    println!(
        "## floor: {nodes} nodes x 2 links, a datagram of {size} bytes to every peer on every link each {interval_ms} ms, and the reads; nothing else; {seconds} s window"
    );
    println!("machine: {machine}");
    let mut worst = 0.0f64;
    for (i, pid) in pids.iter().enumerate() {
        let pct = (after[i].0 - before[i].0) as f64 / hz as f64 / wall * 100.0;
        println!(
            "n{}: {pct:.2}% of a core; rss {:.1} MiB",
            i + 1,
            rss_kib(*pid)? as f64 / 1024.0
        );
        worst = worst.max(pct);
    }
    println!("max per node: {worst:.2}% of a core");
    for p in &pids {
        if !c.bed.is_running(*p) {
            bail!("a floor process died during the measurement");
        }
        c.bed.kill9(*p)?;
    }
    Ok(())
}
