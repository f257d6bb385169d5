//! Replicated volumes with real agents on the testbed and real NBD clients
//! (`nbdcopy`, `nbdinfo`, `qemu-img`, `qemu-io` from libnbd-bin and
//! qemu-utils) in the client namespace (needs root; CI runs as root).
//!
//! The cluster: n1 and n2 hold the copies of volume `data` (replicated on
//! the `sync` link), a witness makes the quorum; group `db` = the volume
//! then the floating IP 10.77.1.100, so clients always reach the primary
//! at nbd://10.77.1.100:10809/data.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use rand::{RngCore, SeedableRng};
use serde_json::Value;
use tandem_testbed::agents::{self, AgentCluster, ClusterShape};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(60);
/// Bound on a sync reaching "both UpToDate and recorded": the 4 GiB full
/// sync ran at 70-110 MB/s on this machine under writeback pressure (a
/// minute or more), against seconds when the page cache keeps up.
const SYNC_BOUND: Duration = Duration::from_secs(300);
const URI: &str = "nbd://10.77.1.100:10809/data";

/// One cluster at a time: the machine has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

struct Vol {
    c: AgentCluster,
    /// Backing files and images (outlives the cluster).
    dir: tempfile::TempDir,
}

impl Vol {
    /// Two copies (n1 the source of the initial full sync) and a witness.
    fn start(size: &str, extra: &str) -> Vol {
        let dir = tempfile::tempdir().unwrap();
        let mut shape = ClusterShape::nodes(2);
        shape.witness = true;
        shape.extra = agents::volume_config(dir.path(), size, extra, true);
        let c = AgentCluster::prepare(TANDEM, &shape).unwrap();
        let mut v = Vol { c, dir };
        v.c.create_volume_copies("data", 1).unwrap();
        v.c.start_members().unwrap();
        v
    }

    /// A 16 MiB volume on n1 and n2 with a witness, `edit` applied to the
    /// configuration and `before` run on the prepared cluster; started,
    /// with the group on n1 and both copies in sync.
    fn started_with(
        edit: impl FnOnce(String) -> String,
        before: impl FnOnce(&AgentCluster),
    ) -> Vol {
        let dir = tempfile::tempdir().unwrap();
        let mut shape = ClusterShape::nodes(2);
        shape.witness = true;
        shape.extra = edit(agents::volume_config(dir.path(), "16MiB", "", true));
        let c = AgentCluster::prepare(TANDEM, &shape).unwrap();
        before(&c);
        let mut v = Vol { c, dir };
        v.c.create_volume_copies("data", 1).unwrap();
        v.c.start_members().unwrap();
        v.wait_group_on(1);
        v.wait_in_sync();
        v
    }

    fn volume(&self, n: usize) -> Option<Value> {
        let s = self.c.status(n)?;
        s["volumes"].as_array()?.first().cloned()
    }

    fn wait_volume(&self, n: usize, what: &str, pred: impl Fn(&Value) -> bool) {
        self.wait_volume_for(n, GENEROUS, what, pred);
    }

    fn wait_volume_for(
        &self,
        n: usize,
        bound: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) {
        self.c
            .wait(n, bound, what, |s| {
                s["volumes"]
                    .as_array()
                    .and_then(|v| v.first())
                    .is_some_and(&pred)
            })
            .unwrap();
    }

    /// Both copies connected, UpToDate, and the cluster record says so
    /// (until it does, only the primary's copy may be promoted).
    fn wait_in_sync(&self) {
        for n in [1, 2] {
            self.wait_volume_for(
                n,
                SYNC_BOUND,
                "both copies UpToDate, connected and recorded",
                |v| {
                    v["disk"] == "UpToDate"
                        && v["peer_disk"] == "UpToDate"
                        && v["link"] == "Connected"
                        && v["sync"].is_null()
                        && v["record_up_to_date"] == serde_json::json!(["n1", "n2"])
                },
            );
        }
    }

    fn wait_group_on(&self, n: usize) {
        let name = format!("n{n}");
        self.c
            .wait(n, GENEROUS, &format!("db running on {name}"), |s| {
                s["groups"].as_array().is_some_and(|gs| {
                    gs.iter().any(|g| {
                        g["name"] == "db"
                            && g["state"] == "running"
                            && g["placed_on"] == name.as_str()
                    })
                })
            })
            .unwrap();
    }

    /// Runs a program in the client namespace, bounded in time.
    fn client(&self, program: &str, args: &[&str]) -> String {
        let ns = self.c.bed.client_ns();
        let mut full = vec!["netns", "exec", &ns, "timeout", "300", program];
        full.extend_from_slice(args);
        let out = Command::new("ip").args(&full).output().unwrap();
        assert!(
            out.status.success(),
            "{program} {args:?} failed: {}\n{}\nagent logs:\n{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
            self.c.logs()
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn tandem(&self, n: usize, args: &[&str]) -> std::process::Output {
        let mut full: Vec<String> = args.iter().map(|s| s.to_string()).collect();
        full.push("--socket".into());
        full.push(self.c.socket(n).display().to_string());
        Command::new(TANDEM).args(&full).output().unwrap()
    }
}

fn random_file(path: &Path, bytes: u64, seed: u64) {
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut f = std::fs::File::create(path).unwrap();
    let mut buf = vec![0u8; 1 << 20];
    let mut left = bytes;
    while left > 0 {
        rng.fill_bytes(&mut buf);
        let n = left.min(buf.len() as u64) as usize;
        std::io::Write::write_all(&mut f, &buf[..n]).unwrap();
        left -= n as u64;
    }
}

fn same_files(a: &Path, b: &Path) -> bool {
    Command::new("cmp")
        .arg("-s")
        .arg(a)
        .arg(b)
        .status()
        .unwrap()
        .success()
}

fn image_mib() -> u64 {
    std::env::var("TANDEM_VOLUME_IMAGE_MIB")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1024)
}

/// Acceptance: a 1 GiB random image written with nbdcopy through the
/// primary; after an unplanned failover (kill -9 of the primary's agent)
/// the new primary serves byte-identical data (read back with nbdcopy and
/// compared with `cmp`, with `qemu-img compare`, and through `nbdfuse`).
#[test]
fn image_written_through_the_primary_is_identical_after_failover() {
    if !require_root("image_written_through_the_primary_is_identical_after_failover") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mib = image_mib();
    let v = Vol::start(&format!("{mib}MiB"), "");
    v.wait_group_on(1);
    v.wait_in_sync();
    let info = v.client("nbdinfo", &[URI]);
    assert!(info.contains(&format!("{}", mib << 20)), "{info}");
    assert!(
        info.contains("can_flush: true") && info.contains("can_fua: true"),
        "{info}"
    );
    let src = v.dir.path().join("image.raw");
    random_file(&src, mib << 20, 6);
    let t = Instant::now();
    v.client("nbdcopy", &["--flush", src.to_str().unwrap(), URI]);
    let write_s = t.elapsed().as_secs_f64();
    // The secondary refuses clients.
    let n2 = v.c.bed.address(2, "lan").to_string();
    let secondary = Command::new("ip")
        .args([
            "netns",
            "exec",
            &v.c.bed.client_ns(),
            "nbdinfo",
            &format!("nbd://{n2}:10809/data"),
        ])
        .output()
        .unwrap();
    // libnbd reports the policy error without the server's text.
    assert!(!secondary.status.success(), "the secondary served a client");
    // Crash the primary's agent.
    v.c.bed.kill9(v.c.pids[0]).unwrap();
    v.wait_group_on(2);
    let back = v.dir.path().join("back.raw");
    v.client("nbdcopy", &[URI, back.to_str().unwrap()]);
    assert!(
        same_files(&src, &back),
        "n2 serves different data than was written"
    );
    let cmp = v.client(
        "qemu-img",
        &[
            "compare",
            "-f",
            "raw",
            "-F",
            "raw",
            src.to_str().unwrap(),
            URI,
        ],
    );
    assert!(cmp.contains("identical"), "{cmp}");
    // nbdfuse: the export as a file through FUSE, read with cmp (in one
    // shell: `ip netns exec` gives the mount a namespace of its own).
    let mnt = v.dir.path().join("mnt");
    std::fs::create_dir(&mnt).unwrap();
    let (m, f) = (mnt.display(), src.display());
    v.client(
        "sh",
        &[
            "-c",
            &format!(
                "nbdfuse {m} {URI} & i=0; while [ ! -e {m}/nbd ] && [ $i -lt 200 ]; do sleep 0.1; i=$((i+1)); done; \
                 cmp {f} {m}/nbd; r=$?; fusermount3 -u {m}; wait; exit $r"
            ),
        ],
    );
    println!("{mib} MiB written through n1 in {write_s:.1} s; identical on n2 after kill -9 of n1 (nbdcopy + cmp, qemu-img compare, nbdfuse + cmp)");
}

/// What the torture writer knows about one block.
#[derive(Default, Clone)]
struct BlockLog {
    /// Hash of the last acknowledged write.
    acked: Option<[u8; 32]>,
    /// Writes sent after it whose outcome is unknown (they may have landed).
    maybe: Vec<[u8; 32]>,
}

struct Writer {
    log: Mutex<std::collections::HashMap<u64, BlockLog>>,
    acked: std::sync::atomic::AtomicU64,
    pause: std::sync::atomic::AtomicBool,
    idle: std::sync::atomic::AtomicBool,
    stop: std::sync::atomic::AtomicBool,
}

const TORTURE_BLOCKS: u64 = 2048;
/// Blocks in the torture's large writes (128 KiB).
const TORTURE_RUN: u64 = 32;

fn torture_writer(w: &Writer, ns: &str, seed: u64) {
    use std::sync::atomic::Ordering::SeqCst;
    tandem_testbed::sys::enter_netns(ns).unwrap();
    let addr: std::net::SocketAddr = "10.77.1.100:10809".parse().unwrap();
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut seq: u64 = 0;
    'connect: while !w.stop.load(SeqCst) {
        w.idle.store(true, SeqCst);
        let Ok(mut c) =
            tandem_testbed::nbd_client::NbdClient::connect(addr, "data", Duration::from_secs(5))
        else {
            std::thread::sleep(Duration::from_millis(100));
            continue;
        };
        loop {
            if w.stop.load(SeqCst) {
                return;
            }
            if w.pause.load(SeqCst) {
                w.idle.store(true, SeqCst);
                std::thread::sleep(Duration::from_millis(10));
                continue;
            }
            w.idle.store(false, SeqCst);
            if w.pause.load(SeqCst) {
                continue;
            }
            seq += 1;
            // Every eighth write is 128 KiB: large payloads take the
            // spliced path (kernel pipes, page cache by reference), the
            // rest the buffered one.
            let run = if seq % 8 == 0 { TORTURE_RUN } else { 1 };
            let first = rand::Rng::gen_range(&mut rng, 0..TORTURE_BLOCKS / run) * run;
            let mut data = vec![0u8; 4096 * run as usize];
            rng.fill_bytes(&mut data);
            let hashes: Vec<[u8; 32]> = data
                .chunks_mut(4096)
                .map(|b| {
                    b[..8].copy_from_slice(&seq.to_be_bytes());
                    *blake3::hash(b).as_bytes()
                })
                .collect();
            {
                let mut log = w.log.lock().unwrap();
                for (i, h) in hashes.iter().enumerate() {
                    log.entry(first + i as u64).or_default().maybe.push(*h);
                }
            }
            match c.write(first * 4096, &data, true) {
                Ok(tandem_testbed::nbd_client::Reply::Ok(_)) => {
                    let mut log = w.log.lock().unwrap();
                    for (i, h) in hashes.iter().enumerate() {
                        let e = log.entry(first + i as u64).or_default();
                        e.acked = Some(*h);
                        e.maybe.clear();
                    }
                    w.acked.fetch_add(1, SeqCst);
                }
                // An error or a dropped connection: the outcome is unknown.
                _ => continue 'connect,
            }
        }
    }
}

/// Reads every logged block through the primary: each must hold its last
/// acknowledged write, or a later write whose outcome was unknown.
fn verify_log(v: &Vol, w: &Writer) -> usize {
    let log = w.log.lock().unwrap().clone();
    let ns = v.c.bed.client_ns();
    let addr: std::net::SocketAddr = "10.77.1.100:10809".parse().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            tandem_testbed::sys::enter_netns(&ns).unwrap();
            let mut c = tandem_testbed::nbd_client::NbdClient::connect(
                addr,
                "data",
                Duration::from_secs(10),
            )
            .unwrap();
            let mut checked = 0;
            for (block, e) in &log {
                let Some(acked) = e.acked else { continue };
                let tandem_testbed::nbd_client::Reply::Ok(data) =
                    c.read(block * 4096, 4096).unwrap()
                else {
                    panic!("read of block {block} failed");
                };
                let h = *blake3::hash(&data).as_bytes();
                assert!(
                    h == acked || e.maybe.contains(&h),
                    "block {block}: an acknowledged write is lost (holds seq {})",
                    u64::from_be_bytes(data[..8].try_into().unwrap())
                );
                checked += 1;
            }
            checked
        })
        .join()
        .unwrap()
    })
}

fn holder(v: &Vol) -> Option<usize> {
    for n in [1, 2] {
        if let Some(s) = v.c.status(n) {
            if let Some(g) = s["groups"]
                .as_array()
                .and_then(|gs| gs.iter().find(|g| g["name"] == "db"))
            {
                if g["state"] == "running" {
                    return g["placed_on"].as_str()?.strip_prefix('n')?.parse().ok();
                }
            }
        }
    }
    None
}

/// Acceptance: protocol C, a writer issuing 4 KiB FUA writes and logging
/// each acknowledged one; the primary is crashed 20 times at random
/// moments (kill -9 of its agent, all its links cut, frozen, or power
/// loss shortly after its sync link failed); after each
/// failover every acknowledged write is on the new primary. The old
/// primary is then restored and resynced before the next crash.
#[test]
fn torture_acknowledged_writes_survive_twenty_crashes_of_the_primary() {
    use std::sync::atomic::Ordering::SeqCst;
    if !require_root("torture_acknowledged_writes_survive_twenty_crashes_of_the_primary") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let crashes: usize = std::env::var("TANDEM_TORTURE_CRASHES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(20);
    let mut v = Vol::start("64MiB", "");
    v.wait_group_on(1);
    v.wait_in_sync();
    let w = Writer {
        log: Mutex::new(Default::default()),
        acked: Default::default(),
        pause: Default::default(),
        idle: Default::default(),
        stop: Default::default(),
    };
    let ns = v.c.bed.client_ns();
    let mut rng = rand::rngs::StdRng::seed_from_u64(20);
    std::thread::scope(|s| {
        s.spawn(|| torture_writer(&w, &ns, 7));
        let mut summary = Vec::new();
        for i in 0..crashes {
            let from = holder(&v).unwrap_or_else(|| panic!("crash {i}: no holder\n{}", v.c.logs()));
            let to = 3 - from;
            let before = w.acked.load(SeqCst);
            // Writes flowing, then the crash at a random moment.
            let t = Instant::now();
            while w.acked.load(SeqCst) < before + 20 && t.elapsed() < GENEROUS {
                std::thread::sleep(Duration::from_millis(5));
            }
            std::thread::sleep(Duration::from_millis(rand::Rng::gen_range(
                &mut rng,
                0..400,
            )));
            let fault = [
                "kill -9",
                "links cut",
                "frozen",
                "power loss after its sync link failed",
            ][i % 4];
            match i % 4 {
                0 => {
                    v.c.bed.kill9(v.c.pids[from - 1]).unwrap();
                }
                1 => v.c.bed.cut_node(from).unwrap(),
                2 => v.c.bed.freeze(from).unwrap(),
                _ => {
                    // Replication stops first while clients still reach the
                    // primary: nothing it acknowledges from then on may be
                    // missing from the copy that takes over.
                    v.c.bed.cut_link(from, "sync").unwrap();
                    std::thread::sleep(Duration::from_millis(rand::Rng::gen_range(
                        &mut rng,
                        100..600,
                    )));
                    v.c.bed.cut_node(from).unwrap();
                    v.c.bed.kill9(v.c.pids[from - 1]).unwrap();
                }
            }
            v.wait_group_on(to);
            // The writer goes on against the new primary.
            let after = w.acked.load(SeqCst);
            let t = Instant::now();
            while w.acked.load(SeqCst) < after + 10 && t.elapsed() < GENEROUS {
                std::thread::sleep(Duration::from_millis(5));
            }
            assert!(
                w.acked.load(SeqCst) >= after + 10,
                "crash {i}: no write acknowledged by n{to}\n{}",
                v.c.logs()
            );
            w.pause.store(true, SeqCst);
            while !w.idle.load(SeqCst) {
                std::thread::sleep(Duration::from_millis(5));
            }
            let checked = verify_log(&v, &w);
            w.pause.store(false, SeqCst);
            summary.push(format!(
                "{i}: n{from} {fault} -> n{to}, {checked} blocks checked"
            ));
            // Restore the old primary; it resyncs before the next crash.
            match i % 4 {
                0 => {
                    let pid = v.c.spawn_agent(from).unwrap();
                    v.c.pids[from - 1] = pid;
                }
                1 => v.c.bed.restore_node(from).unwrap(),
                2 => v.c.bed.thaw(from).unwrap(),
                _ => {
                    v.c.bed.restore_node(from).unwrap();
                    let pid = v.c.spawn_agent(from).unwrap();
                    v.c.pids[from - 1] = pid;
                }
            }
            v.wait_in_sync();
        }
        w.stop.store(true, SeqCst);
        println!(
            "torture: {} writes acknowledged\n{}",
            w.acked.load(SeqCst),
            summary.join("\n")
        );
    });
}

fn vol_status(v: &Vol, n: usize) -> Value {
    v.volume(n)
        .unwrap_or_else(|| panic!("n{n} shows no volume\n{}", v.c.logs()))
}

fn run_ok(v: &Vol, n: usize, args: &[&str]) -> String {
    let out = v.tandem(n, args);
    assert!(
        out.status.success(),
        "tandem {args:?} on n{n}: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Acceptance: disconnect the secondary, write 64 MiB into a 4 GiB volume,
/// reconnect: the resync copies about the dirty data (counted by the
/// volume), not the whole volume; then an online verify finds both copies
/// identical.
#[test]
fn resync_after_disconnect_copies_only_what_changed() {
    if !require_root("resync_after_disconnect_copies_only_what_changed") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let v = Vol::start("4GiB", "");
    v.wait_group_on(1);
    v.wait_in_sync();
    let sent_before = vol_status(&v, 1)["counters"]["resync_bytes_sent"]
        .as_u64()
        .unwrap();
    run_ok(&v, 2, &["volume", "disconnect", "data"]);
    v.wait_volume(1, "n1 sees the link down", |s| s["link"] != "Connected");
    // 64 MiB in 16 runs of 4 MiB spread over the volume.
    let chunk = v.dir.path().join("chunk.raw");
    random_file(&chunk, 4 << 20, 9);
    for i in 0..16u64 {
        let off = i * (256 << 20) + 12_288;
        v.client(
            "qemu-io",
            &[
                "-f",
                "raw",
                "-c",
                &format!("write -s {} {off} 4M", chunk.display()),
                URI,
            ],
        );
    }
    let dirty = vol_status(&v, 1)["dirty_bytes"].as_u64().unwrap();
    assert!(dirty >= 64 << 20, "only {dirty} bytes marked dirty");
    run_ok(&v, 2, &["volume", "connect", "data"]);
    v.wait_in_sync();
    let sent = vol_status(&v, 1)["counters"]["resync_bytes_sent"]
        .as_u64()
        .unwrap()
        - sent_before;
    println!("resync after 64 MiB written to a 4 GiB volume: {sent} bytes sent ({dirty} bytes were dirty)");
    assert!(
        ((64 << 20)..=2 * (64 << 20)).contains(&sent),
        "resync sent {sent} bytes"
    );
    let out = run_ok(&v, 1, &["volume", "verify", "data"]);
    assert!(out.contains("0 blocks differ"), "{out}");
}

/// Acceptance: both copies made primary while disconnected and written,
/// then reconnected: split brain is detected and reported, and under the
/// default policy neither copy's changes are discarded. An operator's
/// `connect --discard-my-data` on one side then resolves it.
#[test]
fn split_brain_is_detected_and_nothing_is_discarded() {
    if !require_root("split_brain_is_detected_and_nothing_is_discarded") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let v = Vol::start("64MiB", "");
    v.wait_group_on(1);
    v.wait_in_sync();
    // The cluster leaves the group alone from here: the operator acts.
    let out = v.tandem(1, &["maintenance", "on", "db"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    run_ok(&v, 1, &["volume", "disconnect", "data"]);
    run_ok(&v, 2, &["volume", "disconnect", "data"]);
    let n1 = format!("nbd://{}:10809/data", v.c.bed.address(1, "lan"));
    let n2 = format!("nbd://{}:10809/data", v.c.bed.address(2, "lan"));
    v.client("qemu-io", &["-f", "raw", "-c", "write -P 0x11 0 64k", &n1]);
    // n2 is Outdated now (the record says only n1): promotion needs force.
    let refused = v.tandem(2, &["volume", "promote", "data"]);
    assert!(!refused.status.success());
    let text = String::from_utf8_lossy(&refused.stderr).to_string();
    assert!(
        text.contains("Outdated") && text.contains("--force"),
        "{text}"
    );
    let forced = run_ok(&v, 2, &["volume", "promote", "data", "--force"]);
    assert!(forced.contains("WARNING"), "{forced}");
    v.client("qemu-io", &["-f", "raw", "-c", "write -P 0x22 1M 64k", &n2]);
    run_ok(&v, 1, &["volume", "connect", "data"]);
    run_ok(&v, 2, &["volume", "connect", "data"]);
    for n in [1, 2] {
        v.wait_volume(n, "split brain reported", |s| {
            s["link"]["SplitBrain"]
                .as_str()
                .is_some_and(|t| t.contains("No data was discarded"))
        });
    }
    let text = v.c.status_text(1).unwrap();
    assert!(text.contains("SPLIT BRAIN"), "{text}");
    // Nothing discarded: each side still holds what it wrote alone.
    let read = |uri: &str, cmd: &str| v.client("qemu-io", &["-f", "raw", "-c", cmd, uri]);
    assert!(!read(&n1, "read -P 0x11 0 64k").contains("Pattern verification failed"));
    assert!(!read(&n2, "read -P 0x22 1M 64k").contains("Pattern verification failed"));
    // The operator keeps n2's changes.
    run_ok(&v, 1, &["volume", "demote", "data"]);
    run_ok(&v, 1, &["volume", "connect", "data", "--discard-my-data"]);
    for n in [1, 2] {
        v.wait_volume(n, "resolved and in sync", |s| {
            s["link"] == "Connected"
                && s["disk"] == "UpToDate"
                && s["peer_disk"] == "UpToDate"
                && s["sync"].is_null()
        });
    }
    let out = run_ok(&v, 2, &["volume", "verify", "data"]);
    assert!(out.contains("0 blocks differ"), "{out}");
    // n1's lone write was the one given up.
    let back = read(&n2, "read -P 0x22 1M 64k");
    assert!(!back.contains("Pattern verification failed"), "{back}");
}

/// Acceptance: malformed requests (bad magic, past the end, unknown
/// commands, bad flags, truncated frames) get an error reply or a clean
/// disconnect; the server keeps serving and neither copy changes.
#[test]
fn malformed_requests_never_change_either_copy() {
    use tandem_testbed::nbd_client::{NbdClient, Reply};
    if !require_root("malformed_requests_never_change_either_copy") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let v = Vol::start("16MiB", "");
    v.wait_group_on(1);
    v.wait_in_sync();
    v.client("qemu-io", &["-f", "raw", "-c", "write -P 0x5a 0 16M", URI]);
    let ns = v.c.bed.client_ns();
    let addr: std::net::SocketAddr = "10.77.1.100:10809".parse().unwrap();
    std::thread::scope(|s| {
        s.spawn(|| {
            tandem_testbed::sys::enter_netns(&ns).unwrap();
            let t = Duration::from_secs(10);
            let size = 16u64 << 20;
            let mut c = NbdClient::connect(addr, "data", t).unwrap();
            assert_eq!(c.size, size);
            // Past the end (payload consumed, stream stays in step).
            let mut req = NbdClient::header(1, 0, 1, size - 2, 4);
            req.extend_from_slice(b"evil");
            c.send_raw(&req).unwrap();
            assert_eq!(c.read_reply(0).unwrap(), (1, Reply::Error(22)));
            // Offset overflow, unknown command, bad flags, huge read.
            for (cookie, hdr) in [
                (2, NbdClient::header(0, 0, 2, u64::MAX - 1, 4096)),
                (3, NbdClient::header(42, 0, 3, 0, 0)),
                (4, NbdClient::header(3, 0x80, 4, 0, 0)),
                (5, NbdClient::header(0, 0, 5, 0, u32::MAX)),
            ] {
                c.send_raw(&hdr).unwrap();
                assert_eq!(
                    c.read_reply(0).unwrap(),
                    (cookie, Reply::Error(22)),
                    "cookie {cookie}"
                );
            }
            // Still serving on this connection.
            assert!(
                matches!(c.read(0, 4096).unwrap(), Reply::Ok(d) if d.iter().all(|&b| b == 0x5a))
            );
            // Bad magic: disconnected.
            let mut bad = NbdClient::header(1, 0, 6, 0, 4);
            bad[0] ^= 0xff;
            bad.extend_from_slice(b"evil");
            c.send_raw(&bad).unwrap();
            assert!(c.closed_within(t), "bad magic did not close the connection");
            // A write whose payload never comes, then a hang-up.
            let mut c = NbdClient::connect(addr, "data", t).unwrap();
            let mut trunc = NbdClient::header(1, 0, 7, 0, 4096);
            trunc.extend_from_slice(&[0xee; 100]);
            c.send_raw(&trunc).unwrap();
            drop(c);
            // A payload larger than the maximum: disconnected.
            let mut c = NbdClient::connect(addr, "data", t).unwrap();
            c.send_raw(&NbdClient::header(1, 0, 8, 0, 64 << 20))
                .unwrap();
            assert!(c.closed_within(t));
            // Random garbage after a valid handshake.
            let mut rng = rand::rngs::StdRng::seed_from_u64(3);
            for _ in 0..20 {
                let mut c = NbdClient::connect(addr, "data", t).unwrap();
                let mut junk = vec![0u8; rand::Rng::gen_range(&mut rng, 1..200)];
                rng.fill_bytes(&mut junk);
                let _ = c.send_raw(&junk);
            }
        })
        .join()
        .unwrap();
    });
    // The server still serves, and both copies are unchanged.
    let out = v.client("qemu-io", &["-f", "raw", "-c", "read -P 0x5a 0 16M", URI]);
    assert!(!out.contains("Pattern verification failed"), "{out}");
    let out = run_ok(&v, 1, &["volume", "verify", "data"]);
    assert!(out.contains("0 blocks differ"), "{out}");
}

/// Resident memory of process `pid`, in KiB.
fn rss_kib(pid: u32) -> u64 {
    std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

/// Issue 15, defect 5: 8 unauthenticated connections each sending a 32 MiB
/// frame raised an agent from 8 to 264 MiB (whole frames were read before
/// any check, with no cap on connections). Now a frame larger than the
/// handshake needs is refused after its 5-byte header, connections in
/// authentication are capped and timed, each is counted, and the live
/// link stays up.
#[test]
fn replication_port_refuses_large_frames_before_authentication() {
    if !require_root("replication_port_refuses_large_frames_before_authentication") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let v = Vol::start("16MiB", "");
    v.wait_group_on(1);
    v.wait_in_sync();
    let acceptor = v.c.pids[1];
    let before = rss_kib(acceptor);
    let target = std::net::SocketAddr::new(v.c.bed.address(2, "sync").into(), 7789);
    let ns = v.c.bed.node_ns(1);
    let sent = std::thread::spawn(move || {
        use std::io::Write;
        tandem_testbed::sys::enter_netns(&ns).unwrap();
        let mut header = vec![1u8];
        header.extend_from_slice(&(32u32 << 20).to_be_bytes());
        let junk = vec![0u8; 32 << 20];
        let mut conns = Vec::new();
        for _ in 0..8 {
            let Ok(mut c) = std::net::TcpStream::connect_timeout(&target, Duration::from_secs(5))
            else {
                continue;
            };
            c.set_write_timeout(Some(Duration::from_secs(5))).unwrap();
            let _ = c.write_all(&header).and_then(|()| c.write_all(&junk));
            conns.push(c);
        }
        conns.len()
    })
    .join()
    .unwrap();
    v.wait_volume(2, "the hostile connections counted", |vol| {
        vol["counters"]["connections_refused"].as_u64().unwrap_or(0) >= 8
    });
    let after = rss_kib(acceptor);
    let vol = v.volume(2).unwrap();
    println!(
        "8 unauthenticated 32 MiB frames: {sent} connections made, {} refused, acceptor RSS {} -> {} MiB, link {}",
        vol["counters"]["connections_refused"],
        before >> 10,
        after >> 10,
        vol["link"]
    );
    assert!(
        after < before + (32 << 10),
        "RSS grew from {before} to {after} KiB"
    );
    assert_eq!(vol["link"], "Connected");
    assert_eq!(vol["counters"]["frames_forged"], 0);
}

/// Issue 15, defect 3: the NBD export was open to the LAN (the testbed
/// itself bound 0.0.0.0), with no authentication: a client wrote both
/// copies. With no address configured, the export is now a root-only Unix
/// socket in the state directory: a real client (nbdinfo) uses it on the
/// node, and nothing answers NBD from the client network.
#[test]
fn default_nbd_export_is_a_root_only_socket_unreachable_from_the_network() {
    use std::os::unix::fs::PermissionsExt;
    if !require_root("default_nbd_export_is_a_root_only_socket_unreachable_from_the_network") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let v = Vol::started_with(
        |cfg| {
            let cfg = cfg
                .replace("nbd_tcp = \"0.0.0.0:10809\"\n", "")
                .replace("nbd_insecure = true\n", "");
            assert!(!cfg.contains("nbd_tcp"));
            cfg
        },
        |_| {},
    );
    let sock = v.c.state_dir(1).join("run/data.nbd");
    let mode = std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o600, "{}", sock.display());
    let info = Command::new("nbdinfo")
        .arg(format!("nbd+unix:///data?socket={}", sock.display()))
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&info.stdout);
    assert!(info.status.success() && text.contains("16777216"), "{text}");
    let ns = v.c.bed.client_ns();
    let from_lan = Command::new("ip")
        .args(["netns", "exec", &ns, "timeout", "20", "nbdinfo", URI])
        .output()
        .unwrap();
    println!(
        "default export: {} (mode {mode:o}), nbdinfo there: ok; from the client network: {}",
        sock.display(),
        String::from_utf8_lossy(&from_lan.stderr).trim()
    );
    assert!(
        !from_lan.status.success(),
        "the export answered from the client network"
    );
}

/// Issue 15, defect 3: a volume exported on a network address could be
/// read and written by anyone who reached it. With `nbd_tls`, the export
/// is served only over TLS with a client certificate the CA signed: real
/// clients (qemu-io and qemu-img with `tls-creds-x509`, nbdcopy and
/// nbdinfo with `nbds://`) use it from the client network; a plain
/// client, one without a certificate and one with a certificate of
/// another CA are refused.
#[test]
fn nbd_export_open_to_the_lan_is_served_only_over_tls_with_a_client_certificate() {
    use tandem_testbed::x509::Ca;
    if !require_root("nbd_export_open_to_the_lan_is_served_only_over_tls_with_a_client_certificate")
    {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let certs = tempfile::tempdir().unwrap();
    let ca = Ca::create(&certs.path().join("ca"), "tandem-test-ca").unwrap();
    let server = ca
        .issue(&certs.path().join("tls-server"), "server", &["10.77.1.100"])
        .unwrap();
    let client = ca
        .issue(&certs.path().join("tls-client"), "client", &[])
        .unwrap();
    let rogue_ca = Ca::create(&certs.path().join("rogue-ca"), "someone-else").unwrap();
    let rogue = rogue_ca
        .issue(&certs.path().join("tls-rogue"), "client", &[])
        .unwrap();
    // The rogue skips checking the server (its directory holds its own
    // CA) and presents a certificate its own CA signed.
    let no_cert = certs.path().join("tls-no-cert");
    std::fs::create_dir_all(&no_cert).unwrap();
    std::fs::copy(&ca.cert, no_cert.join("ca-cert.pem")).unwrap();

    let v = Vol::started_with(
        |cfg| {
            let cfg = cfg.replace(
                "nbd_insecure = true\n",
                &format!("nbd_tls = \"{}\"\n", server.display()),
            );
            assert!(cfg.contains("nbd_tls") && !cfg.contains("nbd_insecure"));
            cfg
        },
        |_| {},
    );

    let qemu_tls = |d: &Path| format!("tls-creds-x509,id=tls0,endpoint=client,dir={}", d.display());
    let image = "driver=nbd,host=10.77.1.100,port=10809,export=data,tls-creds=tls0";
    v.client(
        "qemu-io",
        &[
            "--object",
            &qemu_tls(&client),
            "--image-opts",
            image,
            "-c",
            "write -P 0x5a 1M 64k",
        ],
    );
    let info = v.client(
        "qemu-img",
        &[
            "info",
            "--object",
            &qemu_tls(&client),
            "--image-opts",
            image,
        ],
    );
    assert!(info.contains("16 MiB"), "{info}");
    let copy = v.dir.path().join("copy.img");
    let nbds = |d: &Path| {
        format!(
            "nbds://10.77.1.100:10809/data?tls-certificates={}",
            d.display()
        )
    };
    v.client("nbdcopy", &[&nbds(&client), &copy.display().to_string()]);
    let bytes = std::fs::read(&copy).unwrap();
    assert_eq!(bytes.len(), 16 << 20);
    assert!(bytes[1 << 20..(1 << 20) + (64 << 10)]
        .iter()
        .all(|b| *b == 0x5a));
    assert!(bytes[..1 << 20].iter().all(|b| *b == 0));

    // Refused: the plain protocol, TLS without a certificate, and a
    // certificate another CA signed.
    let ns = v.c.bed.client_ns();
    let refused = |what: &str, program: &str, args: &[&str]| {
        let mut full = vec!["netns", "exec", &ns, "timeout", "60", program];
        full.extend_from_slice(args);
        let out = Command::new("ip").args(&full).output().unwrap();
        let err = String::from_utf8_lossy(&out.stderr).trim().to_string();
        println!("{what}: refused: {}", err.lines().next().unwrap_or(""));
        assert!(!out.status.success(), "{what} was served");
        err
    };
    // libnbd words NBD_REP_ERR_TLS_REQD as "not supported".
    refused("plain nbdinfo", "nbdinfo", &[URI]);
    refused(
        "plain qemu-img",
        "qemu-img",
        &[
            "info",
            "--image-opts",
            "driver=nbd,host=10.77.1.100,port=10809,export=data",
        ],
    );
    refused(
        "nbdinfo without a client certificate",
        "nbdinfo",
        &[&nbds(&no_cert)],
    );
    refused(
        "nbdinfo with another CA's certificate",
        "nbdinfo",
        &[&nbds(&rogue)],
    );
    refused(
        "qemu-io with another CA's certificate",
        "qemu-io",
        &[
            "--object",
            &qemu_tls(&rogue),
            "--image-opts",
            image,
            "-c",
            "write -P 0x66 0 4k",
        ],
    );
    // The refusals were the server's (not only the clients' own checks):
    // it counted each one, and logged the first failed TLS handshake.
    let logs = v.c.logs();
    assert!(logs.contains("failed: TLS handshake"), "{logs}");
    let refused_count = v.volume(1).unwrap()["counters"]["nbd_clients_refused"]
        .as_u64()
        .unwrap_or(0);
    println!("the primary counted {refused_count} refused NBD clients");
    assert!(refused_count >= 3, "{logs}");
    // The volume is as the trusted client left it, on both copies.
    v.wait_in_sync();
    let out = v.client("nbdcopy", &[&nbds(&client), &copy.display().to_string()]);
    let _ = out;
    let again = std::fs::read(&copy).unwrap();
    assert!(
        again[..4096].iter().all(|b| *b == 0),
        "a refused client wrote"
    );
    println!("TLS export: qemu-io wrote 64 KiB, qemu-img info and nbdcopy read it back over TLS; 5 clients refused");
}

/// A man in the middle of the replication link, inside n2's namespace:
/// nftables sends the dialer's connection to n2:7789 to a proxy, which
/// forwards it to the acceptor and, when asked, injects one forged frame
/// (a well-formed header, random body and tag) at a frame boundary after
/// the handshake.
struct LinkMitm {
    inject: std::sync::Arc<std::sync::atomic::AtomicBool>,
    injected: std::sync::Arc<std::sync::atomic::AtomicU64>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
}

const MITM_PORT: u16 = 17789;

impl LinkMitm {
    fn start(ns: &str, addr: std::net::Ipv4Addr) -> LinkMitm {
        use std::sync::atomic::{AtomicBool, AtomicU64};
        use std::sync::Arc;
        let rules = format!(
            "table ip tandem_mitm {{\n chain prerouting {{\n  type nat hook prerouting priority -100;\n  ip daddr {addr} tcp dport 7789 dnat to {addr}:{MITM_PORT}\n }}\n}}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", ns, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        {
            use std::io::Write;
            nft.stdin
                .take()
                .unwrap()
                .write_all(rules.as_bytes())
                .unwrap();
        }
        assert!(nft.wait().unwrap().success(), "nft");
        let m = LinkMitm {
            inject: Arc::new(AtomicBool::new(false)),
            injected: Arc::new(AtomicU64::new(0)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (inject, injected, stop) = (m.inject.clone(), m.injected.clone(), m.stop.clone());
        let ns = ns.to_string();
        std::thread::spawn(move || {
            tandem_testbed::sys::enter_netns(&ns).unwrap();
            let l = std::net::TcpListener::bind((addr, MITM_PORT)).unwrap();
            l.set_nonblocking(true).unwrap();
            let deadline = Instant::now() + Duration::from_secs(900);
            let mut conns = 0;
            while !stop.load(std::sync::atomic::Ordering::Relaxed)
                && Instant::now() < deadline
                && conns < 32
            {
                let Ok((down, _)) = l.accept() else {
                    std::thread::sleep(Duration::from_millis(20));
                    continue;
                };
                conns += 1;
                down.set_nonblocking(false).unwrap();
                let Ok(up) = std::net::TcpStream::connect((addr, 7789)) else {
                    continue;
                };
                let (d2, u2) = (down.try_clone().unwrap(), up.try_clone().unwrap());
                // Acceptor to dialer: as it comes.
                std::thread::spawn(move || {
                    let (mut r, mut w) = (u2, d2);
                    let _ = std::io::copy(&mut r, &mut w);
                    let _ = w.shutdown(std::net::Shutdown::Both);
                });
                let (inject, injected) = (inject.clone(), injected.clone());
                // Dialer to acceptor: frame by frame (Hello and Proof in
                // the clear, then sealed frames with a 16-byte tag).
                std::thread::spawn(move || {
                    use std::io::{Read, Write};
                    let (mut r, mut w) = (down, up);
                    let mut frames = 0u64;
                    loop {
                        if frames >= 2 && inject.swap(false, std::sync::atomic::Ordering::SeqCst) {
                            let mut forged = vec![0x05u8];
                            forged.extend_from_slice(&4096u32.to_be_bytes());
                            let mut body = vec![0u8; 4096 + 16];
                            rand::thread_rng().fill_bytes(&mut body);
                            forged.extend_from_slice(&body);
                            if w.write_all(&forged).is_err() {
                                break;
                            }
                            injected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                        }
                        let mut h = [0u8; 5];
                        if r.read_exact(&mut h).is_err() {
                            break;
                        }
                        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize
                            + if frames >= 2 { 16 } else { 0 };
                        let mut body = vec![0u8; len];
                        if r.read_exact(&mut body).is_err()
                            || w.write_all(&h).is_err()
                            || w.write_all(&body).is_err()
                        {
                            break;
                        }
                        frames += 1;
                    }
                    let _ = w.shutdown(std::net::Shutdown::Both);
                });
            }
        });
        m
    }
}

impl Drop for LinkMitm {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
    }
}

/// Issue 15, defect 5: after the handshake no replication frame was
/// authenticated, so anyone on the path could inject blocks. A man in the
/// middle of the live link injects a forged block: the secondary refuses
/// and counts it, drops the connection, the link comes back, and both
/// copies stay identical.
#[test]
fn forged_block_on_a_live_replication_link_is_refused_and_counted() {
    use std::sync::atomic::Ordering;
    if !require_root("forged_block_on_a_live_replication_link_is_refused_and_counted") {
        return;
    }
    let _serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let mut mitm = None;
    let v = Vol::started_with(
        |cfg| cfg,
        |c| mitm = Some(LinkMitm::start(&c.bed.node_ns(2), c.bed.address(2, "sync"))),
    );
    let mitm = mitm.unwrap();
    v.client("qemu-io", &["-f", "raw", "-c", "write -P 0x11 0 1M", URI]);
    mitm.inject.store(true, Ordering::SeqCst);
    // Writes make frames; one of them follows the forged one.
    let deadline = Instant::now() + GENEROUS;
    let mut round = 0u64;
    while mitm.injected.load(Ordering::SeqCst) == 0 && Instant::now() < deadline {
        let cmd = format!("write -P 0x22 {}k 64k", (round % 64) * 64);
        v.client("qemu-io", &["-f", "raw", "-c", &cmd, URI]);
        round += 1;
    }
    assert_eq!(mitm.injected.load(Ordering::SeqCst), 1, "nothing injected");
    v.wait_volume(2, "the forged frame counted", |vol| {
        vol["counters"]["frames_forged"].as_u64().unwrap_or(0) >= 1
    });
    v.wait_in_sync();
    v.client("qemu-io", &["-f", "raw", "-c", "write -P 0x33 2M 1M", URI]);
    v.wait_in_sync();
    let vol = v.volume(2).unwrap();
    let a = std::fs::read(v.dir.path().join("n1.img")).unwrap();
    let b = std::fs::read(v.dir.path().join("n2.img")).unwrap();
    println!(
        "forged frames injected 1, counted on n2 {}, link {}, copies identical: {}",
        vol["counters"]["frames_forged"],
        vol["link"],
        a == b
    );
    assert!(a == b, "the copies differ");
    assert_eq!(vol["link"], "Connected");
}
