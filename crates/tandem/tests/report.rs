//! `tandem report` on a real 3-node testbed cluster (needs root; CI runs
//! as root): one node collects every node's files over the cluster's
//! channel after a failover, the analysis tells it, and secrets planted in
//! the configuration (a fence device's password, an OCF agent's password
//! parameter, which also sits in the lease file's stop commands) are in no
//! file of the bundle.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use tandem_testbed::agents::{
    all_online, running_on, web_group_config, AgentCluster, ClusterShape,
};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(30);
const FENCE_SECRET: &str = "PlantedFencePassword-4242";
const OCF_SECRET: &str = "PlantedOcfPassword-7777";

fn files_under(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

#[test]
fn a_report_holds_every_nodes_files_and_no_secret() {
    if !require_root("a_report_holds_every_nodes_files_and_no_secret") {
        return;
    }
    if !Path::new("/usr/lib/ocf/resource.d/heartbeat/Dummy").exists() {
        panic!("Debian's resource-agents are missing: scripts/install-deps installs them");
    }
    let work = tempfile::tempdir_in("/dev/shm").unwrap();
    let extra = format!(
        "{}\n[[fence_device]]\nname = \"pdu\"\nagent = \"/usr/sbin/fence_dummy\"\nhosts = {{ n1 = \"1\", n2 = \"2\", n3 = \"3\" }}\noptions = {{ password = \"{FENCE_SECRET}\" }}\n\n[[group]]\nname = \"db\"\n\n[[group.resource]]\nname = \"state\"\nkind = \"ocf\"\nagent = \"ocf:heartbeat:Dummy\"\nparams = {{ state = \"{}\", passwd = \"{OCF_SECRET}\" }}\n",
        web_group_config(Path::new(TANDEM), "manual", 3, 8080, 8081),
        work.path().join("dummy.state").display(),
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(3)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    c.wait(1, GENEROUS, "all online, web and db running", |s| {
        all_online(s) && running_on(s, "web").is_some() && running_on(s, "db").is_some()
    })
    .unwrap();
    // A planned failover for the analysis to tell (no node dies: the
    // fence device is there for its password only).
    let holder = running_on(&c.status(1).unwrap(), "web").unwrap();
    let other = (1..=3).find(|n| *n != holder).unwrap();
    let out = Command::new(TANDEM)
        .args(["failover", "web", "--socket"])
        .arg(c.socket(holder))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    c.wait(other, GENEROUS, "web moved", |s| {
        running_on(s, "web").is_some_and(|n| n != holder)
    })
    .unwrap();

    let bundle = work.path().join("r.tar.gz");
    let out = Command::new(TANDEM)
        .args(["report", "--since", "10m", "--out"])
        .arg(&bundle)
        .arg("--socket")
        .arg(c.socket(other))
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    // Progress, node by node.
    for n in 1..=3 {
        assert!(
            stderr.contains(&format!("] n{n}: collecting... ")),
            "{stderr}"
        );
    }
    assert!(
        stdout.contains("wrote ") && stdout.contains("KiB"),
        "{stdout}"
    );

    let x = work.path().join("x");
    std::fs::create_dir_all(&x).unwrap();
    let st = Command::new("tar")
        .arg("-xzf")
        .arg(&bundle)
        .arg("-C")
        .arg(&x)
        .status()
        .unwrap();
    assert!(st.success());
    let top: Vec<PathBuf> = std::fs::read_dir(&x)
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .collect();
    assert_eq!(top.len(), 1, "{top:?}");
    let root = &top[0];
    assert!(root
        .file_name()
        .unwrap()
        .to_string_lossy()
        .starts_with("tandem-report-tb-"));
    for n in 1..=3 {
        let d = root.join(format!("n{n}"));
        for f in [
            "config.toml",
            "status.json",
            "events.log",
            "events.jsonl",
            "facts/uname.txt",
            "facts/ip-addr.txt",
            "state/state.json",
            "state-dir-listing.txt",
        ] {
            assert!(d.join(f).is_file(), "n{n}/{f} missing");
        }
        let cfg = std::fs::read_to_string(d.join("config.toml")).unwrap();
        assert!(
            cfg.contains("password = \"****\"") && cfg.contains("passwd = \"****\""),
            "{cfg}"
        );
        let listing = std::fs::read_to_string(d.join("state-dir-listing.txt")).unwrap();
        assert!(listing.contains("state.json"), "{listing}");
    }
    let summary = std::fs::read_to_string(root.join("summary.txt")).unwrap();
    assert!(summary.contains("nodes missing:\n  none"), "{summary}");
    let analysis = std::fs::read_to_string(root.join("analysis.txt")).unwrap();
    assert!(analysis.contains("web stopped everywhere"), "{analysis}");
    assert!(
        analysis.contains("the operator failed it over to n"),
        "{analysis}"
    );
    assert!(
        analysis.contains("started") && analysis.contains("after the decision"),
        "{analysis}"
    );

    // The planted secrets are in no file, whatever its kind.
    let mut all = Vec::new();
    files_under(root, &mut all);
    assert!(all.len() > 30, "{}", all.len());
    for f in &all {
        let bytes = std::fs::read(f).unwrap();
        let text = String::from_utf8_lossy(&bytes);
        for secret in [FENCE_SECRET, OCF_SECRET] {
            assert!(!text.contains(secret), "{secret} found in {}", f.display());
        }
    }
    // ...though the node that runs db has it in its lease file, which the
    // report lists but never copies.
    let db = running_on(&c.status(other).unwrap(), "db").unwrap();
    let lease = std::fs::read_to_string(c.state_dir(db).join("run/lease.json")).unwrap_or_default();
    assert!(
        lease.contains(OCF_SECRET),
        "the planted secret should be on disk for the test to mean anything"
    );
}
