//! `tandem import`: golden tests on real inputs (heartbeat's own Debian
//! samples, the classic two-node configuration, seed 004's), each output
//! checked by `tandem config validate`, and the report line by line.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// Where `scripts/install-deps` extracts Debian's heartbeat samples.
const DEBIAN_SAMPLES: &str = "/usr/local/share/tandem-test/heartbeat";

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/import/heartbeat")
        .join(name)
}

/// Runs `tandem import heartbeat DIR ...` writing into `tmp`.
fn import(dir: &Path, tmp: &Path, extra: &[&str]) -> Output {
    let key = tmp.join("cluster.key");
    let out = tmp.join("tandem.toml");
    Command::new(TANDEM)
        .arg("import")
        .arg("heartbeat")
        .arg(dir)
        .arg("--key")
        .arg(&key)
        .arg("--out")
        .arg(&out)
        .args(extra)
        .output()
        .unwrap()
}

/// The written configuration and the report, with the scratch directory
/// replaced by `TMP`, for snapshots.
fn golden(tmp: &Path, o: &Output) -> (String, String) {
    let t = tmp.display().to_string();
    let config = std::fs::read_to_string(tmp.join("tandem.toml"))
        .unwrap()
        .replace(&t, "TMP");
    // The importer's own lines; validation's verdict (which says things
    // of this machine, such as its watchdog) is checked apart.
    let report = String::from_utf8_lossy(&o.stderr)
        .replace(&t, "TMP")
        .lines()
        .filter(|l| {
            [
                "mapped ",
                "changed ",
                "not mapped ",
                "not needed ",
                "created ",
            ]
            .iter()
            .any(|w| l.starts_with(w))
        })
        .map(|l| format!("{l}\n"))
        .collect();
    (config, report)
}

/// `tandem config validate` on the written file.
fn validates(tmp: &Path) {
    let o = Command::new(TANDEM)
        .args(["config", "validate"])
        .arg(tmp.join("tandem.toml"))
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "config validate failed:\n{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
}

#[test]
fn the_classic_two_node_web_cluster_imports_and_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let o = import(
        &fixture("classic"),
        tmp.path(),
        &[
            "--name",
            "web",
            "--address",
            "web1:eth0=192.168.1.11/24",
            "--address",
            "web2:eth0=192.168.1.12/24",
            "--address",
            "web1:eth1=10.0.0.1/30",
            "--address",
            "web2:eth1=10.0.0.2/30",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (config, report) = golden(tmp.path(), &o);
    insta::assert_snapshot!("heartbeat_classic_config", config);
    insta::assert_snapshot!("heartbeat_classic_report", report);
    validates(tmp.path());
    // authkeys' secret is in neither; the new key is 32 bytes, 0600.
    assert!(!config.contains("ThisSecretMustNotLeak") && !report.contains("ThisSecretMustNotLeak"));
    let meta = std::fs::metadata(tmp.path().join("cluster.key")).unwrap();
    assert_eq!(meta.len(), 32);
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&meta.permissions()) & 0o777,
        0o600
    );
    // Never over an existing file.
    let again = import(
        &fixture("classic"),
        tmp.path(),
        &[
            "--address",
            "web1:eth0=192.168.1.11/24",
            "--address",
            "web2:eth0=192.168.1.12/24",
            "--address",
            "web1:eth1=10.0.0.1/30",
            "--address",
            "web2:eth1=10.0.0.2/30",
        ],
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("never replaced"));
}

#[test]
fn seed_004s_zvm_pair_imports_with_its_serial_line_reported() {
    let tmp = tempfile::tempdir().unwrap();
    let o = import(
        &fixture("zvm"),
        tmp.path(),
        &[
            "--address",
            "lnx31:eth0=192.168.1.31/24",
            "--address",
            "lnx41:eth0=192.168.1.41/24",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (config, report) = golden(tmp.path(), &o);
    insta::assert_snapshot!("heartbeat_zvm_config", config);
    insta::assert_snapshot!("heartbeat_zvm_report", report);
    validates(tmp.path());
}

#[test]
fn missing_addresses_are_named_with_the_flags_to_add() {
    let tmp = tempfile::tempdir().unwrap();
    let o = import(&fixture("zvm"), tmp.path(), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("no address for lnx31:eth0, lnx41:eth0")
            && err.contains("--address lnx31:eth0="),
        "{err}"
    );
    assert!(!tmp.path().join("tandem.toml").exists());
}

/// Debian's samples: as shipped (every directive commented out) the
/// import says what is missing; with the documented example lines
/// uncommented, as a site starts from them, it maps them.
#[test]
fn debians_heartbeat_samples_import() {
    let samples = Path::new(DEBIAN_SAMPLES);
    if !samples.join("ha.cf").exists() {
        println!("skipped: {DEBIAN_SAMPLES} is missing (scripts/install-deps extracts it as root)");
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = import(samples, tmp.path(), &[]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("0 `node` line(s)"), "{err}");

    // A site's edit: uncomment the sample's own example lines.
    let dir = tmp.path().join("ha.d");
    std::fs::create_dir(&dir).unwrap();
    let keep = [
        "#logfile\t/var/log/ha-log",
        "#keepalive 2",
        "#deadtime 30",
        "#warntime 10",
        "#initdead 120",
        "#udpport\t694",
        "#serial\t/dev/ttyS0\t# Linux",
        "#bcast\teth1 eth2\t# Linux",
        "#stonith_host ken3  rps10 /dev/ttyS1 kathy 0 ",
        "#watchdog /dev/watchdog",
        "#node\tken3",
        "#node\tkathy",
        "#ping_group group1 10.10.10.254 10.10.10.253",
        "#respawn hacluster /usr/lib/heartbeat/ipfail",
        "#apiauth ipfail gid=haclient uid=hacluster",
    ];
    let uncomment = |text: &str, lines: &[&str]| -> String {
        text.lines()
            .map(|l| {
                if lines.contains(&l) {
                    l[1..].to_string()
                } else {
                    l.to_string()
                }
            })
            .collect::<Vec<_>>()
            .join("\n")
    };
    let ha_cf = std::fs::read_to_string(samples.join("ha.cf")).unwrap();
    let edited = uncomment(&ha_cf, &keep);
    for k in &keep {
        assert!(
            edited.lines().any(|l| l == &k[1..]),
            "the sample no longer has `{k}`"
        );
    }
    std::fs::write(dir.join("ha.cf"), edited).unwrap();
    // The sample's shared-filesystem example, for the node ha.cf names.
    let hr = std::fs::read_to_string(samples.join("haresources")).unwrap();
    let example = "#node1  10.0.0.170 Filesystem::/dev/sda1::/data1::ext2";
    assert!(hr.lines().any(|l| l == example), "{hr}");
    std::fs::write(
        dir.join("haresources"),
        hr.replace(
            example,
            "ken3  10.0.0.170 Filesystem::/dev/sda1::/data1::ext2",
        ),
    )
    .unwrap();
    std::fs::copy(samples.join("authkeys"), dir.join("authkeys")).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = import(
        &dir,
        &out,
        &[
            "--address",
            "ken3:eth1=10.0.0.1/24",
            "--address",
            "kathy:eth1=10.0.0.2/24",
            "--address",
            "ken3:eth2=10.0.1.1/24",
            "--address",
            "kathy:eth2=10.0.1.2/24",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (config, report) = golden(&out, &o);
    let root = tmp.path().display().to_string();
    let (config, report) = (config.replace(&root, "TMP"), report.replace(&root, "TMP"));
    insta::assert_snapshot!("heartbeat_debian_sample_config", config);
    insta::assert_snapshot!("heartbeat_debian_sample_report", report);
    validates(&out);
}

/// An imported heartbeat cluster runs: three nodes on the testbed's two
/// links, an `haresources` line of a floating address and a resource.d
/// script with an argument (heartbeat's `webd::8080`). It starts on its
/// node, answers at the address, and fails over when that node's agent is
/// killed.
#[test]
fn an_imported_heartbeat_cluster_runs_and_fails_over() {
    use std::time::Duration;
    use tandem_testbed::agents::{running_on, AgentCluster, ClusterShape};
    if !tandem_testbed::require_root("an_imported_heartbeat_cluster_runs_and_fails_over") {
        return;
    }
    let generous = Duration::from_secs(30);
    let mut c = AgentCluster::prepare(TANDEM, &ClusterShape::nodes(3)).unwrap();
    let ha_d = c.dir().join("ha.d");
    std::fs::create_dir_all(ha_d.join("resource.d")).unwrap();
    std::fs::write(
        ha_d.join("ha.cf"),
        "keepalive 50ms\ndeadtime 1\nwarntime 500ms\ninitdead 3\nbcast lan sync\nauto_failback off\nnode n1\nnode n2\nnode n3\n",
    )
    .unwrap();
    std::fs::write(ha_d.join("haresources"), "n1 10.77.1.100/24 webd::8080\n").unwrap();
    // A heartbeat resource.d script: `webd PORT start|stop|status`, status
    // said in words.
    let pids = c.dir().join("pids");
    std::fs::create_dir_all(&pids).unwrap();
    let script = ha_d.join("resource.d/webd");
    std::fs::write(
        &script,
        format!(
            r#"#!/bin/sh
port=$1
pidf={pids}/$(cat /proc/sys/kernel/hostname).$port
case "$2" in
start) {TANDEM} demo-service --port "$port" >/dev/null 2>&1 &
       echo $! > "$pidf"; echo "webd started";;
stop) [ -f "$pidf" ] && kill "$(cat "$pidf")" 2>/dev/null; rm -f "$pidf"; echo "webd stopped";;
status) if [ -f "$pidf" ] && kill -0 "$(cat "$pidf")" 2>/dev/null; then echo "webd is running"; else echo "webd is stopped"; fi;;
esac
exit 0
"#,
            pids = pids.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let out = c.dir().join("imported");
    std::fs::create_dir_all(&out).unwrap();
    let mut args: Vec<String> = Vec::new();
    for n in 1..=3 {
        for l in ["lan", "sync"] {
            args.push("--address".into());
            args.push(format!("n{n}:{l}={}/24", c.bed.address(n, l)));
        }
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let o = import(&ha_d, &out, &args);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let cfg = out.join("tandem.toml");
    for n in 1..=3 {
        let pid = c.spawn_agent_with(n, &cfg).unwrap();
        c.pids.push(pid);
    }
    let group = "webd";
    c.wait(1, generous, "webd running on n1", |s| {
        running_on(s, group) == Some(1)
    })
    .unwrap();
    let answer = |c: &AgentCluster| {
        c.bed
            .exec_client(
                "curl",
                &["-s", "--max-time", "2", "http://10.77.1.100:8080/"],
            )
            .unwrap_or_default()
    };
    let deadline = std::time::Instant::now() + generous;
    while !answer(&c).contains("n1") && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        answer(&c).contains("n1"),
        "the address does not answer from n1"
    );
    // n1's agent dies: the group moves, and the address answers from there.
    // SAFETY: kill(2) of an agent this test started.
    unsafe { libc::kill(c.pids[0] as i32, libc::SIGKILL) };
    c.wait(2, generous, "webd running on a survivor", |s| {
        running_on(s, group).is_some_and(|n| n != 1)
    })
    .unwrap();
    let taker = running_on(&c.status(2).unwrap(), group).unwrap();
    let deadline = std::time::Instant::now() + generous;
    while !answer(&c).contains(&format!("n{taker}")) && std::time::Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        answer(&c).contains(&format!("n{taker}")),
        "the address does not answer from n{taker}: {}",
        c.logs()
    );
}

const KEEPALIVED_SAMPLES: &str = "/usr/local/share/tandem-test/keepalived";

fn keepalived_fixture() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import/keepalived")
}

/// Runs `tandem import keepalived FILES ...` writing into `tmp`.
fn import_keepalived(files: &[PathBuf], tmp: &Path, extra: &[&str]) -> Output {
    Command::new(TANDEM)
        .args(["import", "keepalived"])
        .args(files)
        .arg("--key")
        .arg(tmp.join("cluster.key"))
        .arg("--out")
        .arg(tmp.join("tandem.toml"))
        .args(extra)
        .output()
        .unwrap()
}

#[test]
fn a_unicast_keepalived_pair_imports_and_validates() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = keepalived_fixture().join("pair");
    let files = [dir.join("lb1.conf"), dir.join("lb2.conf")];
    let o = import_keepalived(&files, tmp.path(), &["--name", "lb"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (config, report) = golden(tmp.path(), &o);
    let fixture = dir.display().to_string();
    let (config, report) = (
        config.replace(&fixture, "FIXTURE"),
        report.replace(&fixture, "FIXTURE"),
    );
    insta::assert_snapshot!("keepalived_pair_config", config);
    insta::assert_snapshot!("keepalived_pair_report", report);
    validates(tmp.path());
    assert!(!config.contains("s3cr3tVR") && !report.contains("s3cr3tVR"));
}

/// Debian's samples: one file is one node (the import says so); the
/// `vrrp` sample as a site copies it to its backup (priorities lowered,
/// router_id left the same) imports with the addresses given.
#[test]
fn debians_keepalived_samples_import() {
    let samples = Path::new(KEEPALIVED_SAMPLES);
    if !samples.join("keepalived.conf.vrrp").exists() {
        println!(
            "skipped: {KEEPALIVED_SAMPLES} is missing (scripts/install-deps extracts it as root)"
        );
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let o = import_keepalived(&[samples.join("keepalived.conf.vrrp")], tmp.path(), &[]);
    assert!(!o.status.success());
    assert!(String::from_utf8_lossy(&o.stderr).contains("every node's file"));

    let master = std::fs::read_to_string(samples.join("keepalived.conf.vrrp")).unwrap();
    assert!(master.contains("priority 100") && master.contains("priority 50"));
    let backup = master
        .replace("priority 100", "priority 90")
        .replace("priority 50", "priority 40")
        .replace("state MASTER", "state BACKUP");
    let files = [
        tmp.path().join("master.conf"),
        tmp.path().join("backup.conf"),
    ];
    std::fs::write(&files[0], &master).unwrap();
    std::fs::write(&files[1], &backup).unwrap();
    let out = tmp.path().join("out");
    std::fs::create_dir(&out).unwrap();
    let o = import_keepalived(
        &files,
        &out,
        &[
            "--address",
            "node1:eth0=192.168.200.1/24",
            "--address",
            "node2:eth0=192.168.200.2/24",
            "--address",
            "node1:eth1=192.168.201.1/24",
            "--address",
            "node2:eth1=192.168.201.2/24",
        ],
    );
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (config, report) = golden(&out, &o);
    let root = tmp.path().display().to_string();
    let (config, report) = (config.replace(&root, "TMP"), report.replace(&root, "TMP"));
    insta::assert_snapshot!("keepalived_debian_vrrp_config", config);
    insta::assert_snapshot!("keepalived_debian_vrrp_report", report);
    validates(&out);
}

/// A CIB built offline by Debian's real `crm` from `web.crm` (IPMI
/// fencing, a group with a preference and stickiness, a colocated systemd
/// service), imported with Corosync's node list: golden files, validated;
/// the fence password is kept only in the configuration, never in the
/// report.
#[test]
fn a_cib_built_by_crm_imports_with_corosyncs_nodes() {
    let have = |p: &str| {
        Command::new("sh")
            .args(["-c", &format!("command -v {p}")])
            .output()
            .is_ok_and(|o| o.status.success())
    };
    if !have("crm") || !have("cibadmin") {
        println!(
            "skipped: crm or cibadmin is missing (scripts/install-deps installs crmsh as root)"
        );
        return;
    }
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/import/pacemaker");
    let tmp = tempfile::tempdir().unwrap();
    let cib = tmp.path().join("cib.xml");
    let empty = Command::new("cibadmin").arg("--empty").output().unwrap();
    assert!(empty.status.success());
    std::fs::write(&cib, &empty.stdout).unwrap();
    let mut script = std::fs::read_to_string(dir.join("web.crm")).unwrap();
    script.push_str("commit\n");
    let mut crm = Command::new("crm")
        .args(["-F", "configure"])
        .env("CIB_file", &cib)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::io::Write::write_all(&mut crm.stdin.take().unwrap(), script.as_bytes()).unwrap();
    let out = crm.wait_with_output().unwrap();
    let written = std::fs::read_to_string(&cib).unwrap();
    assert!(
        written.contains("webgroup") && written.contains("fencing-level"),
        "crm did not write the CIB:\n{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    let out_dir = tmp.path().join("out");
    std::fs::create_dir(&out_dir).unwrap();
    let o = Command::new(TANDEM)
        .args(["import", "pacemaker"])
        .arg(&cib)
        .arg("--corosync")
        .arg(dir.join("corosync.conf"))
        .arg("--key")
        .arg(out_dir.join("cluster.key"))
        .arg("--out")
        .arg(out_dir.join("tandem.toml"))
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let (config, report) = golden(&out_dir, &o);
    insta::assert_snapshot!("pacemaker_web_config", config);
    insta::assert_snapshot!("pacemaker_web_report", report);
    validates(&out_dir);
    assert!(config.contains("secretpw") && !report.contains("secretpw"));
}
