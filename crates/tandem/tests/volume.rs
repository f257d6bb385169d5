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
use tandem_testbed::agents::{AgentCluster, ClusterShape};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(60);
const URI: &str = "nbd://10.77.1.100:10809/data";

/// One cluster at a time: the machine has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn volume_config(dir: &Path, size: &str, extra: &str) -> String {
    format!(
        r#"
[[volume]]
name = "data"
nodes = ["n1", "n2"]
size = "{size}"
backing = {{ n1 = "{}", n2 = "{}" }}
nbd_tcp = "0.0.0.0:10809"
resync_rate_mib_s = 2000
{extra}

[[group]]
name = "db"
preferred = ["n1", "n2"]
failback = "manual"

[[group.resource]]
name = "disk"
kind = "volume"
volume = "data"

[[group.resource]]
name = "vip"
kind = "ip"
address = "10.77.1.100/24"
"#,
        dir.join("n1.img").display(),
        dir.join("n2.img").display()
    )
}

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
        shape.extra = volume_config(dir.path(), size, extra);
        let c = AgentCluster::prepare(TANDEM, &shape).unwrap();
        let mut v = Vol { c, dir };
        for (n, source) in [(1, true), (2, false)] {
            let mut args = vec![
                "volume".to_string(),
                "create".into(),
                "data".into(),
                "--config".into(),
                v.c.config_path().display().to_string(),
                "--node".into(),
                format!("n{n}"),
                "--state-dir".into(),
                v.c.state_dir(n).display().to_string(),
            ];
            if source {
                args.push("--source".into());
            }
            let out = Command::new(TANDEM).args(&args).output().unwrap();
            assert!(
                out.status.success(),
                "volume create n{n}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        v.c.start_members().unwrap();
        v
    }

    fn volume(&self, n: usize) -> Option<Value> {
        let s = self.c.status(n)?;
        s["volumes"].as_array()?.first().cloned()
    }

    fn wait_volume(&self, n: usize, what: &str, pred: impl Fn(&Value) -> bool) {
        self.c
            .wait(n, GENEROUS, what, |s| {
                s["volumes"].as_array().and_then(|v| v.first()).is_some_and(&pred)
            })
            .unwrap();
    }

    fn wait_in_sync(&self) {
        for n in [1, 2] {
            self.wait_volume(n, "both copies UpToDate and connected", |v| {
                v["disk"] == "UpToDate" && v["peer_disk"] == "UpToDate" && v["link"] == "Connected" && v["sync"].is_null()
            });
        }
    }

    fn wait_group_on(&self, n: usize) {
        let name = format!("n{n}");
        self.c
            .wait(n, GENEROUS, &format!("db running on {name}"), |s| {
                s["groups"].as_array().is_some_and(|gs| {
                    gs.iter().any(|g| g["name"] == "db" && g["state"] == "running" && g["placed_on"] == name.as_str())
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
/// compared with `cmp`, and with `qemu-img compare`).
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
    assert!(info.contains("can_flush: true") && info.contains("can_fua: true"), "{info}");
    let src = v.dir.path().join("image.raw");
    random_file(&src, mib << 20, 6);
    let t = Instant::now();
    v.client("nbdcopy", &["--flush", src.to_str().unwrap(), URI]);
    let write_s = t.elapsed().as_secs_f64();
    // The secondary refuses clients.
    let n2 = v.c.bed.address(2, "lan").to_string();
    let secondary = Command::new("ip")
        .args(["netns", "exec", &v.c.bed.client_ns(), "nbdinfo", &format!("nbd://{n2}:10809/data")])
        .output()
        .unwrap();
    // libnbd reports the policy error without the server's text.
    assert!(!secondary.status.success(), "the secondary served a client");
    // Crash the primary's agent.
    v.c.bed.kill9(v.c.pids[0]).unwrap();
    v.wait_group_on(2);
    let back = v.dir.path().join("back.raw");
    v.client("nbdcopy", &[URI, back.to_str().unwrap()]);
    assert!(same_files(&src, &back), "n2 serves different data than was written");
    let cmp = v.client("qemu-img", &["compare", "-f", "raw", "-F", "raw", src.to_str().unwrap(), URI]);
    assert!(cmp.contains("identical"), "{cmp}");
    println!("{mib} MiB written through n1 in {write_s:.1} s; identical on n2 after kill -9 of n1");
}
