//! Volume throughput and latency, side by side in one run: nbdkit's `file`
//! plugin (no replication; as it comes, and with `fadvise=random`, the
//! advice Tandem gives the kernel for its backing file), Tandem with its
//! peer disconnected (no replication), and Tandem protocol C to the peer
//! in another namespace.
//! Every server runs in node n1's namespace and is reached from the client
//! namespace over the testbed's `lan` link; fio drives them with its `nbd`
//! engine (libnbd).

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;
use tandem_testbed::agents::{AgentCluster, ClusterShape};

const GENEROUS: Duration = Duration::from_secs(120);

/// One fio measurement.
#[derive(Debug, Clone)]
pub struct Figures {
    /// Write bandwidth, MiB/s.
    pub mib_s: f64,
    /// Write IOPS.
    pub iops: f64,
    /// Completion latency mean, µs.
    pub lat_mean_us: f64,
    /// Completion latency p50, µs.
    pub lat_p50_us: f64,
    /// Completion latency p99, µs.
    pub lat_p99_us: f64,
    /// Cores busy on average over the run (the whole machine: client,
    /// servers, peer, kernel), from /proc/stat.
    pub busy_cores: f64,
    /// Machine CPU time per completed write, µs.
    pub cpu_us_per_op: f64,
    /// Share of the machine's CPU time the hypervisor stole, %.
    pub steal_pct: f64,
}

/// (busy, stolen, total) clock ticks of all CPUs since boot, from
/// /proc/stat. Busy leaves out time the hypervisor stole: that is not
/// this machine's work, and on a shared host it comes and goes.
fn cpu_ticks() -> Result<(u64, u64, u64)> {
    let stat = std::fs::read_to_string("/proc/stat").context("reading /proc/stat")?;
    let line = stat.lines().next().unwrap_or_default();
    let v: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal ...
    let idle = v.get(3).copied().unwrap_or(0) + v.get(4).copied().unwrap_or(0);
    let steal = v.get(7).copied().unwrap_or(0);
    let total: u64 = v.iter().take(8).sum();
    Ok((total.saturating_sub(idle + steal), steal, total))
}

fn fio(
    c: &AgentCluster,
    uri: &str,
    rw: &str,
    bs: &str,
    depth: u32,
    seconds: u64,
) -> Result<Figures> {
    let ns = c.bed.client_ns();
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get()) as f64;
    // Every measurement starts with no dirty pages: the writeback of the
    // one before (up to gigabytes) must not land on this one's cores.
    Command::new("sync")
        .status()
        .context("running sync before a measurement")?;
    let (busy0, steal0, total0) = cpu_ticks()?;
    let out = Command::new("ip")
        .args([
            "netns",
            "exec",
            &ns,
            "fio",
            "--name=bench",
            "--ioengine=nbd",
        ])
        .arg(format!("--uri={uri}"))
        .arg(format!("--rw={rw}"))
        .arg(format!("--bs={bs}"))
        .arg(format!("--iodepth={depth}"))
        .args([
            "--size=1G",
            "--time_based",
            "--ramp_time=2",
            "--output-format=json",
        ])
        .arg(format!("--runtime={seconds}"))
        .output()
        .context("running fio")?;
    let (busy1, steal1, total1) = cpu_ticks()?;
    if !out.status.success() {
        bail!("fio on {uri}: {}", String::from_utf8_lossy(&out.stderr));
    }
    // Includes fio's ramp, which runs at the same rate.
    let ticks = (total1 - total0).max(1) as f64;
    let busy_cores = (busy1 - busy0) as f64 / ticks * cores;
    let steal_pct = (steal1 - steal0) as f64 / ticks * 100.0;
    // fio may print notes before its JSON.
    let text = String::from_utf8_lossy(&out.stdout);
    let json = text.find('{').map_or("", |i| &text[i..]);
    let v: Value = serde_json::from_str(json).with_context(|| format!("fio's JSON: {text}"))?;
    let w = &v["jobs"][0]["write"];
    let clat = &w["clat_ns"];
    let pct = |p: &str| clat["percentile"][p].as_f64().unwrap_or(0.0) / 1000.0;
    let iops = w["iops"].as_f64().unwrap_or(0.0);
    Ok(Figures {
        mib_s: w["bw"].as_f64().unwrap_or(0.0) / 1024.0,
        iops,
        busy_cores,
        steal_pct,
        cpu_us_per_op: busy_cores * 1e6 / iops.max(0.001),
        lat_mean_us: clat["mean"].as_f64().unwrap_or(0.0) / 1000.0,
        lat_p50_us: pct("50.000000"),
        lat_p99_us: pct("99.000000"),
    })
}

fn tandem(c: &AgentCluster, tandem: &Path, n: usize, args: &[&str]) -> Result<String> {
    let out = Command::new(tandem)
        .args(args)
        .arg("--socket")
        .arg(c.socket(n))
        .output()?;
    if !out.status.success() {
        bail!("tandem {args:?}: {}", String::from_utf8_lossy(&out.stderr));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

fn volume(c: &AgentCluster, n: usize) -> Option<Value> {
    c.status(n)?["volumes"].as_array()?.first().cloned()
}

fn wait_in_sync(c: &AgentCluster) -> Result<()> {
    for n in [1, 2] {
        c.wait(n, GENEROUS, "volume in sync and recorded", |s| {
            s["volumes"]
                .as_array()
                .and_then(|v| v.first())
                .is_some_and(|v| {
                    v["link"] == "Connected"
                        && v["disk"] == "UpToDate"
                        && v["peer_disk"] == "UpToDate"
                        && v["sync"].is_null()
                        && v["record_up_to_date"] == serde_json::json!(["n1", "n2"])
                })
        })?;
    }
    Ok(())
}

fn rtt_us(c: &AgentCluster) -> Result<f64> {
    let to = c.bed.address(2, "sync").to_string();
    let out = c
        .bed
        .exec(1, "ping", &["-q", "-c", "50", "-i", "0.01", &to])?;
    // rtt min/avg/max/mdev = a/b/c/d ms
    let avg = out
        .lines()
        .find(|l| l.contains("min/avg/max"))
        .and_then(|l| l.split('=').nth(1))
        .and_then(|v| v.trim().split('/').nth(1))
        .and_then(|v| v.parse::<f64>().ok())
        .context("reading ping's summary")?;
    Ok(avg * 1000.0)
}

struct Nbdkit(Child);

impl Drop for Nbdkit {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Runs the comparison and prints the raw figures.
pub fn run(tandem_bin: &Path, seconds: u64, size_mib: u64, only: Option<&str>) -> Result<()> {
    let dir = tempfile::tempdir_in("/var/tmp").context("a directory for the backing files")?;
    let mut shape = ClusterShape::nodes(2);
    shape.witness = true;
    shape.extra =
        tandem_testbed::agents::volume_config(dir.path(), &format!("{size_mib}MiB"), "", false);
    let mut c = AgentCluster::prepare(tandem_bin, &shape)?;
    c.create_volume_copies("data", 1)?;
    c.start_members()?;
    wait_in_sync(&c)?;
    // Fill the volume once so every run writes over allocated blocks.
    let n1 = c.bed.address(1, "lan").to_string();
    let tandem_uri = format!("nbd://{n1}:10809/data");
    // nbdkit serves a file of the same size on the same filesystem, once
    // as it comes and once told the access is random (as Tandem tells the
    // kernel about its backing file).
    let kit = |port: &str, file: &str, extra: &[&str]| -> Result<Nbdkit> {
        let path = dir.path().join(file);
        std::fs::File::create(&path)?.set_len(size_mib << 20)?;
        Ok(Nbdkit(
            Command::new("ip")
                .args(["netns", "exec", &c.bed.node_ns(1), "nbdkit", "-f", "-i"])
                .args([n1.as_str(), "-p", port, "file"])
                .arg(&path)
                .args(extra)
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .context("starting nbdkit")?,
        ))
    };
    let kit_default = kit("10810", "nbdkit.img", &[])?;
    let kit_random = kit("10811", "nbdkit-random.img", &["fadvise=random"])?;
    std::thread::sleep(Duration::from_millis(500));
    let kit_uri = format!("nbd://{n1}:10810/");
    let kit_random_uri = format!("nbd://{n1}:10811/");
    println!("## volume: nbdkit file plugin (default, fadvise=random) vs Tandem unreplicated vs Tandem protocol C");
    println!("machine: {}", super::machine());
    println!(
        "nbdkit {}; fio {}; volume {size_mib} MiB on /var/tmp (ext4 on virtio disk); servers in n1's namespace, fio --ioengine=nbd in the client namespace over the lan bridge; peer n2 in its own namespace over the sync bridge; {seconds} s per measurement after 2 s ramp",
        version("nbdkit", "--version"),
        version("fio", "--version")
    );
    let rtt = rtt_us(&c)?;
    println!("sync link round trip n1 -> n2 (ping, 50 samples): {rtt:.0} us");
    let started = Instant::now();
    let tests: [(&str, &str, &str, u32); 3] = [
        ("seq 1 MiB writes QD8", "write", "1M", 8),
        ("rand 4 KiB writes QD1", "randwrite", "4k", 1),
        ("rand 4 KiB writes QD16", "randwrite", "4k", 16),
    ];
    let mut rows = Vec::new();
    for (label, rw, bs, depth) in tests {
        if only.is_some_and(|o| !label.contains(o)) {
            continue;
        }
        let kit_f = fio(&c, &kit_uri, rw, bs, depth, seconds)?;
        let kit_r = fio(&c, &kit_random_uri, rw, bs, depth, seconds)?;
        let c_f = fio(&c, &tandem_uri, rw, bs, depth, seconds)?;
        // Unreplicated: the peer disconnected, writes tracked in the bitmap.
        tandem(&c, tandem_bin, 2, &["volume", "disconnect", "data"])?;
        c.wait(1, GENEROUS, "n1 alone and recorded alone", |s| {
            s["volumes"][0]["link"] != "Connected"
                && s["volumes"][0]["record_up_to_date"] == serde_json::json!(["n1"])
        })?;
        let alone_f = fio(&c, &tandem_uri, rw, bs, depth, seconds)?;
        tandem(&c, tandem_bin, 2, &["volume", "connect", "data"])?;
        wait_in_sync(&c)?;
        let sent = volume(&c, 1).map_or(0, |v| {
            v["counters"]["resync_bytes_sent"].as_u64().unwrap_or(0)
        });
        rows.push((label, kit_f, kit_r, alone_f, c_f, sent));
    }
    drop((kit_default, kit_random));
    println!("\n| test | server | MiB/s | IOPS | lat mean us | p50 us | p99 us | cores busy | CPU us/write | stolen % |\n|---|---|---|---|---|---|---|---|---|---|");
    for (label, k, kr, a, cc, _) in &rows {
        for (name, f) in [
            ("nbdkit file", k),
            ("nbdkit file fadvise=random", kr),
            ("Tandem unreplicated", a),
            ("Tandem protocol C", cc),
        ] {
            println!(
                "| {label} | {name} | {:.1} | {:.0} | {:.0} | {:.0} | {:.0} | {:.2} | {:.0} | {:.0} |",
                f.mib_s,
                f.iops,
                f.lat_mean_us,
                f.lat_p50_us,
                f.lat_p99_us,
                f.busy_cores,
                f.cpu_us_per_op,
                f.steal_pct
            );
        }
    }
    println!();
    for (label, k, kr, _, cc, sent) in &rows {
        println!(
            "{label}: protocol C throughput {:.0}% of nbdkit's ({:.0}% of nbdkit fadvise=random); mean latency nbdkit {:.0} us, protocol C {:.0} us (bound nbdkit + RTT + 100 = {:.0} us); resync counter after the unreplicated run: {} MiB sent in total",
            cc.mib_s / k.mib_s.max(0.001) * 100.0,
            cc.mib_s / kr.mib_s.max(0.001) * 100.0,
            k.lat_mean_us,
            cc.lat_mean_us,
            k.lat_mean_us + rtt + 100.0,
            sent >> 20
        );
    }
    for n in [1, 2] {
        let v = volume(&c, n);
        let count = |k: &str| {
            v.as_ref()
                .and_then(|v| v["counters"][k].as_u64())
                .unwrap_or(0)
        };
        println!(
            "n{n}: large payloads received into a pipe {}, through a buffer {}",
            count("payloads_spliced"),
            count("payloads_buffered")
        );
    }
    println!("total {:.0} s", started.elapsed().as_secs_f64());
    Ok(())
}

fn version(program: &str, flag: &str) -> String {
    Command::new(program)
        .arg(flag)
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or("")
                .to_string()
        })
        .unwrap_or_default()
}
