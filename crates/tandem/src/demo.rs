//! `tandem demo`: a local cluster that fails over, measured.
//!
//! Three real agents (this binary) in network namespaces on the testbed,
//! one group `web` = floating IP 10.77.1.100 + a small HTTP service, a
//! client probing the address every 5 ms. It crashes the active node (every
//! link cut, as with a pulled power cord), prints the measured outage and
//! the agents' timeline, restores the node and shows failback at work, then
//! tears everything down.

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpListener};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tandem_testbed::agents::{AgentCluster, ClusterShape};
use tandem_testbed::checker::{analyze, CheckOptions, ProbeKind};
use tandem_testbed::prober::{ProbeSpec, Prober};

/// The HTTP port behind the floating IP.
const PORT: u16 = 8080;
/// The probe port (UDP `tprobe`, TCP name line) behind the floating IP.
pub const PROBE_PORT: u16 = 7000;
/// Longest wait for any step.
const STEP_LIMIT: Duration = Duration::from_secs(30);

use tandem_agent::clock::unix_ms;

/// The demo service: HTTP GET on `port` -> `served by NAME`; on
/// `probe_port`, the testbed's probe responder (UDP `tprobe N` -> `NAME N`,
/// a TCP connection -> `NAME` line). Runs until killed.
pub fn serve(name: &str, port: u16, probe_port: u16) -> Result<()> {
    let tcp =
        TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding TCP port {port}"))?;
    let body = format!("served by {name}\n");
    std::thread::Builder::new()
        .name("http".into())
        .spawn(move || {
            for mut s in tcp.incoming().flatten() {
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                // Read the whole request head (bounded) before answering:
                // closing with unread bytes would reset the connection.
                let mut head = Vec::new();
                let mut buf = [0u8; 512];
                while head.len() < 8192 && !head.windows(4).any(|w| w == b"\r\n\r\n") {
                    match s.read(&mut buf) {
                        Ok(0) | Err(_) => break,
                        Ok(n) => head.extend_from_slice(&buf[..n]),
                    }
                }
                let _ = write!(
                    s,
                    "HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
            }
        })
        .context("starting the HTTP thread")?;
    tandem_testbed::responder::serve(name, probe_port)
}

fn group_on(s: &Value) -> Option<(String, String)> {
    let g = s["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == "web")?;
    Some((
        g["placed_on"].as_str()?.to_string(),
        g["state"].as_str()?.to_string(),
    ))
}

fn running_on(c: &AgentCluster, ask: usize, node: &str) -> Result<Duration> {
    c.wait(ask, STEP_LIMIT, &format!("web running on {node}"), |s| {
        group_on(s).is_some_and(|(n, st)| n == node && st == "running")
    })
}

/// An HTTP GET of the floating IP from the client namespace.
fn http_get(c: &AgentCluster) -> Result<String> {
    let ns = c.bed.client_ns();
    let target = SocketAddr::new(c.bed.vip("lan").into(), PORT);
    std::thread::scope(|sc| {
        sc.spawn(|| -> Result<String> {
            tandem_testbed::sys::enter_netns(&ns)?;
            let mut s = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(2))
                .with_context(|| format!("connecting to {target}"))?;
            s.set_read_timeout(Some(Duration::from_secs(2)))?;
            s.write_all(format!("GET / HTTP/1.0\r\nHost: {}\r\n\r\n", target.ip()).as_bytes())?;
            let mut text = String::new();
            s.read_to_string(&mut text)?;
            Ok(text
                .split("\r\n\r\n")
                .nth(1)
                .unwrap_or("")
                .trim()
                .to_string())
        })
        .join()
        .map_err(|_| anyhow::anyhow!("the HTTP client thread panicked"))?
    })
}

fn events_since(c: &AgentCluster, n: usize, since: u64) -> Vec<(u64, String)> {
    c.status(n)
        .and_then(|s| {
            s["events"].as_array().map(|es| {
                es.iter()
                    .filter_map(|e| {
                        let at = e["at_unix_ms"].as_u64()?;
                        let text = e["text"].as_str()?;
                        (at >= since).then(|| (at, format!("n{n}: {text}")))
                    })
                    .collect()
            })
        })
        .unwrap_or_default()
}

fn pause(fast: bool) {
    if !fast {
        std::thread::sleep(Duration::from_millis(1500));
    }
}

fn measure(log: &tandem_testbed::prober::ProbeLog) -> (f64, usize, usize) {
    let report = analyze(&log.records, CheckOptions::default());
    let k = report.kind(ProbeKind::Udp);
    (k.max_gap_ms(), k.dual_active.len(), k.probes)
}

/// Installs the Debian packages the demo needs (`ip`, `ping`) if missing.
fn ensure_tools() -> Result<()> {
    let missing: Vec<&str> = [("ip", "iproute2"), ("ping", "iputils-ping")]
        .into_iter()
        .filter(|(cmd, _)| {
            std::process::Command::new(cmd)
                .arg("-V")
                .output()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::NotFound)
        })
        .map(|(_, pkg)| pkg)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    println!(
        "== the demo needs `ip` and `ping`; installing the Debian package(s) {} with `apt-get install` (remove them later with `apt-get remove`)",
        missing.join(" ")
    );
    let ok = std::process::Command::new("apt-get")
        .args(["install", "-y", "-qq"])
        .args(&missing)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?
        .success();
    if !ok {
        bail!(
            "apt-get could not install {}; install them and run the demo again",
            missing.join(" ")
        );
    }
    Ok(())
}

/// Runs the demo.
pub fn run(fast: bool) -> Result<ExitCode> {
    if !tandem_testbed::is_root() {
        bail!("tandem demo builds network namespaces and needs root: run `sudo tandem demo` (or the README's cargo command as root)");
    }
    ensure_tools()?;
    let exe = std::env::current_exe().context("finding this program")?;
    let mut extra = tandem_testbed::agents::ping_monitor_config();
    extra += &tandem_testbed::agents::web_group_config(&exe, "auto", 3, PORT, PROBE_PORT);
    println!("== tandem demo: 3 nodes, links lan + sync, group web = HTTP service + floating IP 10.77.1.100");
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(3)
    };
    let c = AgentCluster::start(&exe, &shape)?;
    println!(
        "   testbed {} (namespaces {}-*); agents started",
        c.bed.id(),
        c.bed.prefix()
    );
    let t = running_on(&c, 1, "n1")?;
    println!(
        "== web runs on n1 ({} ms after start). `tandem status` on n1:\n",
        t.as_millis()
    );
    for line in c.status_text(1)?.lines() {
        if line.starts_with("recent events") {
            break;
        }
        println!("   {line}");
    }
    println!(
        "\n   client: GET http://10.77.1.100:{PORT}/ -> {}",
        http_get(&c)?
    );
    pause(fast);

    println!("\n== crash n1: every link cut (like a power cut). The client probes 10.77.1.100 every 5 ms.");
    let spec = ProbeSpec {
        tcp: false,
        http_port: None,
        ..ProbeSpec::new(SocketAddr::new(c.bed.vip("lan").into(), PROBE_PORT), 30_000)
    };
    let prober = Prober::start(&c.bed.client_ns(), spec)?;
    std::thread::sleep(Duration::from_millis(500));
    let crash_at = unix_ms();
    let t0 = Instant::now();
    c.bed.cut_node(1)?;
    let new = ["n2", "n3"];
    c.wait(2, STEP_LIMIT, "web running on n2 or n3", |s| {
        group_on(s).is_some_and(|(n, st)| new.contains(&n.as_str()) && st == "running")
    })?;
    let took = t0.elapsed();
    std::thread::sleep(Duration::from_millis(700));
    let log = prober.stop()?;
    let (gap, dual, probes) = measure(&log);
    let holder = c
        .status(2)
        .and_then(|s| group_on(&s))
        .map(|g| g.0)
        .unwrap_or_default();
    println!(
        "   web runs on {holder}; status saw it {} ms after the cut",
        took.as_millis()
    );
    println!("   measured by the client: outage {gap:.0} ms, {dual} dual-active instants ({probes} probes)");
    println!(
        "   client: GET http://10.77.1.100:{PORT}/ -> {}",
        http_get(&c)?
    );
    println!("\n   timeline:");
    let mut ev: Vec<(u64, String)> = (1..=3)
        .flat_map(|n| events_since(&c, n, crash_at))
        .collect();
    ev.sort();
    for (at, text) in ev
        .iter()
        .filter(|(_, t)| !t.contains("link ") || t.contains("down"))
        .take(24)
    {
        println!("   +{:>5} ms  {text}", at.saturating_sub(crash_at));
    }
    pause(fast);

    println!("\n== restore n1: failback = auto, so web returns to n1 (stopped cleanly on {holder} first)");
    let prober = Prober::start(&c.bed.client_ns(), spec)?;
    std::thread::sleep(Duration::from_millis(300));
    let t1 = Instant::now();
    c.bed.restore_node(1)?;
    running_on(&c, 2, "n1")?;
    let took = t1.elapsed();
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop()?;
    let (gap, dual, _) = measure(&log);
    println!("   web back on n1 {} ms after the restore; planned-move outage {gap:.0} ms, {dual} dual-active instants", took.as_millis());
    println!(
        "   client: GET http://10.77.1.100:{PORT}/ -> {}",
        http_get(&c)?
    );
    println!("\n== done; tearing the testbed down");
    drop(c);
    Ok(ExitCode::SUCCESS)
}
