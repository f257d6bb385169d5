//! `tandem config apply` and `config rollback` on a running 3-node cluster
//! under client load (needs root; CI runs as root). Each node runs its own
//! copy of the configuration file, as on real machines.
//!
//! The change adds a group, changes the monitor of the group the client
//! uses (`web`), and removes a group, while one node (n3) is offline: the
//! client must see no gap, `web`'s service must be neither stopped nor
//! started again, both online nodes must run the new configuration at the
//! new epoch with their files rewritten, and n3, started again with its
//! old file, must catch up by itself. A rollback then restores the first
//! configuration everywhere.
//!
//! Time bounds are generous safety limits, not measurements.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;
use tandem_testbed::agents::{self, all_online, AgentCluster, ClusterShape};
use tandem_testbed::checker::{analyze, CheckOptions, ProbeKind};
use tandem_testbed::prober::{unix_ms, ProbeSpec, Prober};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(30);

fn group<'a>(s: &'a Value, name: &str) -> Option<&'a Value> {
    s["groups"].as_array()?.iter().find(|g| g["name"] == name)
}

fn running(s: &Value, name: &str) -> bool {
    group(s, name).is_some_and(|g| g["state"] == "running")
}

/// Whether status `s` logs a start or stop of `group` (not a probe) since
/// `since_unix_ms`.
fn stopped_or_started(s: &Value, group: &str, since_unix_ms: u64) -> bool {
    s["events"].as_array().unwrap().iter().any(|e| {
        e["at_unix_ms"].as_u64().unwrap_or(0) >= since_unix_ms
            && e["event"]["group"] == group
            && e["event"]["kind"] == "action_begun"
            && e["event"]["action"] != "probe"
    })
}

fn tandem(args: &[&str]) -> (bool, String) {
    let out = std::process::Command::new(TANDEM)
        .args(args)
        .output()
        .unwrap();
    (
        out.status.success(),
        format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ),
    )
}

/// `old` (a process on n2) and the client's `web` (process + address,
/// with a TCP monitor every 2 s).
fn groups(tandem: &Path) -> String {
    agents::web_group_config(tandem, "manual", 3, 8080, 7000)
        + r#"
[[group.monitor]]
name = "http"
kind = "tcp"
address = "10.77.1.100:8080"
interval_ms = 2000

[[group]]
name = "old"
preferred = ["n2"]

[[group.resource]]
name = "sleeper"
kind = "process"
command = ["/bin/sleep", "3600"]
"#
}

#[test]
fn config_apply_adds_changes_and_removes_groups_without_a_gap_and_rollback_restores() {
    if !require_root(
        "config_apply_adds_changes_and_removes_groups_without_a_gap_and_rollback_restores",
    ) {
        return;
    }
    let shape = ClusterShape {
        extra: groups(Path::new(TANDEM)),
        ..ClusterShape::nodes(3)
    };
    let mut c = AgentCluster::prepare(TANDEM, &shape).unwrap();
    let first = std::fs::read_to_string(c.config_path()).unwrap();
    let file = |n: usize| -> PathBuf { c.dir().join(format!("n{n}.toml")) };
    let files: Vec<PathBuf> = (1..=3).map(file).collect();
    for f in &files {
        std::fs::write(f, &first).unwrap();
    }
    for (i, f) in files.iter().enumerate() {
        let pid = c.spawn_agent_with(i + 1, f).unwrap();
        c.pids.push(pid);
    }
    for n in 1..=3 {
        c.wait(n, GENEROUS, "all online, web and old running", |s| {
            all_online(s) && running(s, "web") && running(s, "old")
        })
        .unwrap();
    }
    let s1 = c.status(1).unwrap();
    let (first_hash, first_epoch) = (
        s1["config"]["committed"].as_str().unwrap().to_string(),
        s1["agreement"]["config_epoch"].as_u64().unwrap(),
    );
    let mut web_on: usize = group(&s1, "web").unwrap()["placed_on"].as_str().unwrap()[1..]
        .parse()
        .unwrap();
    assert_ne!(web_on, 3, "web prefers n1");

    // n3 leaves cleanly and stays away during the change.
    c.bed
        .stop_gracefully(c.pids[2], Duration::from_secs(20))
        .unwrap();
    c.wait(1, GENEROUS, "n3 gone, a leader among n1 and n2", |s| {
        agents::peer(s, "n3")["state"] != "online"
            && matches!(s["agreement"]["leader"].as_str(), Some("n1" | "n2"))
    })
    .unwrap();
    let s1 = c.status(1).unwrap();
    // The group under load runs on a follower, not on the leader that
    // drives the change: a follower's switch is the one that once cut
    // services (the leader's is tested by the rollback below).
    let leader: usize = s1["agreement"]["leader"].as_str().unwrap()[1..]
        .parse()
        .unwrap();
    if web_on == leader {
        let to = 3 - leader;
        let (ok, out) = tandem(&[
            "move",
            "web",
            "--to",
            &format!("n{to}"),
            "--socket",
            c.socket(1).to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
        c.wait(to, GENEROUS, "web moved to the follower", |s| {
            running(s, "web") && group(s, "web").unwrap()["placed_on"] == format!("n{to}").as_str()
        })
        .unwrap();
        web_on = to;
    }
    eprintln!("leader n{leader}, web on n{web_on}");

    let second = first
        .replace("interval_ms = 2000", "interval_ms = 1000")
        .replace(
            "[[group]]\nname = \"old\"\npreferred = [\"n2\"]\n\n[[group.resource]]\nname = \"sleeper\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"3600\"]\n",
            "[[group]]\nname = \"extra\"\npreferred = [\"n2\"]\n\n[[group.resource]]\nname = \"sleeper2\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"3601\"]\n",
        );
    assert_ne!(second, first);
    let new_file = c.dir().join("second.toml");
    std::fs::write(&new_file, &second).unwrap();
    let sock1 = c.socket(1);
    let sock1 = sock1.to_str().unwrap();

    // Without --force the offline node stops the change before it begins.
    let (ok, out) = tandem(&[
        "config",
        "apply",
        new_file.to_str().unwrap(),
        "--socket",
        sock1,
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("unreachable") && out.contains("--force"),
        "{out}"
    );
    assert!(out.contains("nothing was changed"), "{out}");

    let prober = Prober::start(
        &c.bed.client_ns(),
        ProbeSpec::new(SocketAddr::new(c.bed.vip("lan").into(), 7000), 120_000),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = unix_ms();
    let (ok, out) = tandem(&[
        "config",
        "apply",
        new_file.to_str().unwrap(),
        "--force",
        "--socket",
        sock1,
    ]);
    assert!(ok, "{out}\n{}", c.logs());
    eprintln!("config apply:\n{out}");
    assert!(out.contains("group `extra` added"), "{out}");
    assert!(out.contains("group `old` removed"), "{out}");
    assert!(
        out.contains("monitor `web/http` changed: interval_ms"),
        "{out}"
    );
    assert!(
        out.contains("stops for good: old") && out.contains("starts: extra"),
        "{out}"
    );
    for n in [1, 2] {
        c.wait(
            n,
            GENEROUS,
            "the new configuration, extra running, old gone",
            |s| {
                s["config"]["committed"] == s["config"]["identity"]
                    && s["config"]["committed"] != first_hash.as_str()
                    && s["agreement"]["config_epoch"] == first_epoch + 1
                    && running(s, "extra")
                    && group(s, "old").is_none()
            },
        )
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&files[n - 1]).unwrap(),
            second,
            "n{n}'s file"
        );
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    let gap = report.kind(ProbeKind::Udp).max_gap_ms();
    assert_eq!(report.dual_active().count(), 0);
    // Probes go every 5 ms: a lost one or two is the network, a restart
    // of the service or its address is hundreds.
    assert!(
        gap < 100.0,
        "web had a {gap} ms gap during the change\n{}",
        c.logs()
    );
    let holder = c.status(web_on).unwrap();
    let restarted = stopped_or_started(&holder, "web", t);
    assert!(
        !restarted,
        "web was stopped or started: {}",
        holder["events"]
    );
    // The old group's process is gone from n2.
    // (The testbed's nodes share one PID namespace: pgrep sees them all.)
    let pgrep = std::process::Command::new("pgrep")
        .args(["-f", "^/bin/sleep 3600$"])
        .output()
        .unwrap();
    assert_eq!(
        pgrep.status.code(),
        Some(1),
        "old's process still runs (or pgrep failed): {}",
        String::from_utf8_lossy(&pgrep.stdout)
    );

    // n3 comes back with its old file and catches up by itself.
    let new_hash = c.status(1).unwrap()["config"]["committed"]
        .as_str()
        .unwrap()
        .to_string();
    c.pids[2] = c.spawn_agent_with(3, &files[2]).unwrap();
    c.wait(3, GENEROUS, "n3 caught up", |s| {
        all_online(s)
            && s["config"]["identity"] == new_hash.as_str()
            && s["config"]["committed"] == new_hash.as_str()
    })
    .unwrap();
    assert_eq!(
        std::fs::read_to_string(&files[2]).unwrap(),
        second,
        "n3's file"
    );

    // The history lists both; a rollback to the first restores it.
    let state1 = c.state_dir(1);
    let (ok, out) = tandem(&["config", "history", "--state-dir", state1.to_str().unwrap()]);
    assert!(
        ok && out.contains(&first_hash) && out.contains(&new_hash),
        "{out}"
    );
    let (ok, out) = tandem(&[
        "config",
        "rollback",
        &first_epoch.to_string(),
        "--state-dir",
        state1.to_str().unwrap(),
        "--socket",
        sock1,
    ]);
    assert!(ok, "{out}\n{}", c.logs());
    eprintln!("config rollback:\n{out}");
    for n in 1..=3 {
        c.wait(n, GENEROUS, "the first configuration again", |s| {
            s["config"]["committed"] == first_hash.as_str()
                && s["config"]["identity"] == first_hash.as_str()
                && s["agreement"]["config_epoch"] == first_epoch + 2
                && running(s, "old")
                && group(s, "extra").is_none()
        })
        .unwrap();
        assert_eq!(
            std::fs::read_to_string(&files[n - 1]).unwrap(),
            first,
            "n{n}'s file"
        );
    }
}

/// Issue 19: a machine that was in no configuration joins a running
/// 3-node cluster. `tandem node add n4 --address ...` on one node commits
/// a configuration listing n4 (every node checks it and switches in place)
/// and waits; n4 starts with `tandem agent --join` and only the key, gets
/// the configuration from a member, joins as a learner and is given a
/// vote. The client's group, on a follower, sees no gap and is neither
/// stopped nor started; n4's file is the cluster's; n4 can then host it.
#[test]
fn a_node_not_in_the_configuration_joins_with_node_add_and_agent_join_without_a_gap() {
    if !require_root(
        "a_node_not_in_the_configuration_joins_with_node_add_and_agent_join_without_a_gap",
    ) {
        return;
    }
    let shape = ClusterShape {
        extra: agents::web_group_config(Path::new(TANDEM), "manual", 3, 8080, 7000),
        ..ClusterShape::nodes(4)
    };
    let mut c = AgentCluster::prepare(TANDEM, &shape).unwrap();
    let full = std::fs::read_to_string(c.config_path()).unwrap();
    let (lan4, sync4) = (c.bed.address(4, "lan"), c.bed.address(4, "sync"));
    let n4_block = format!(
        "[[node]]\nname = \"n4\"\naddresses = {{ lan = \"{lan4}\", sync = \"{sync4}\" }}\n\n"
    );
    assert!(full.contains(&n4_block), "{full}");
    let three = full.replace(&n4_block, "");
    let dir = c.dir().to_path_buf();
    let file = |n: usize| -> PathBuf { dir.join(format!("n{n}.toml")) };
    for n in 1..=3 {
        std::fs::write(file(n), &three).unwrap();
        let pid = c.spawn_agent_with(n, &file(n)).unwrap();
        c.pids.push(pid);
    }
    for n in 1..=3 {
        c.wait(n, GENEROUS, "all online, web running", |s| {
            all_online(s) && running(s, "web")
        })
        .unwrap();
    }
    let s1 = c.status(1).unwrap();
    let leader: usize = s1["agreement"]["leader"].as_str().unwrap()[1..]
        .parse()
        .unwrap();
    let mut web_on: usize = group(&s1, "web").unwrap()["placed_on"].as_str().unwrap()[1..]
        .parse()
        .unwrap();
    // The client's group on a follower: the node that asks is another.
    if web_on == leader {
        let to = if leader == 1 { 2 } else { 1 };
        let (ok, out) = tandem(&[
            "move",
            "web",
            "--to",
            &format!("n{to}"),
            "--socket",
            c.socket(1).to_str().unwrap(),
        ]);
        assert!(ok, "{out}");
        c.wait(to, GENEROUS, "web moved to a follower", |s| {
            running(s, "web") && group(s, "web").unwrap()["placed_on"] == format!("n{to}").as_str()
        })
        .unwrap();
        web_on = to;
    }
    let asker = (1..=3).find(|n| *n != web_on).unwrap();
    eprintln!("leader n{leader}, web on n{web_on}, node add run on n{asker}");
    // Before `node add`, the machine is a stranger: refused, nothing written.
    let key = c.dir().join("cluster.key");
    let n4_file = file(4);
    let early = c.bed.exec(
        4,
        TANDEM,
        &[
            "agent",
            "--join",
            &c.bed.address(asker, "lan").to_string(),
            "--key",
            key.to_str().unwrap(),
            "--config",
            n4_file.to_str().unwrap(),
        ],
    );
    let early = match early {
        Ok(out) => format!("succeeded: {out}"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        early.contains("did not give this machine its configuration"),
        "{early}"
    );
    assert!(
        !n4_file.exists(),
        "a refused join wrote {}",
        n4_file.display()
    );
    eprintln!("a join before node add: {early}");
    let prober = Prober::start(
        &c.bed.client_ns(),
        ProbeSpec::new(SocketAddr::new(c.bed.vip("lan").into(), 7000), 120_000),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = unix_ms();
    let adding = std::process::Command::new(TANDEM)
        .args([
            "node",
            "add",
            "n4",
            "--address",
            &format!("lan={lan4},sync={sync4}"),
            "--config",
            file(asker).to_str().unwrap(),
            "--socket",
            c.socket(asker).to_str().unwrap(),
            "--timeout",
            "60",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // Every member knows n4 once it switched to the configuration that
    // lists it; then the new machine starts with the key alone.
    for n in 1..=3 {
        c.wait(n, GENEROUS, "n4 among the members", |s| {
            s["peers"]
                .as_array()
                .is_some_and(|p| p.iter().any(|p| p["name"] == "n4"))
                && s["config"]["committed"] == s["config"]["identity"]
        })
        .unwrap_or_else(|e| panic!("{e:?}\n{}", c.logs()));
    }
    let said = join_and_finish(&mut c, 4, asker, &n4_file, adding);
    assert!(said.contains("node `n4` added"), "{said}");
    assert!(said.contains("tandem agent --join"), "{said}");
    assert!(
        said.contains("votes and may host groups (4 voters)"),
        "{said}"
    );
    let committed = c.status(1).unwrap()["config"]["committed"]
        .as_str()
        .unwrap()
        .to_string();
    for n in 1..=4 {
        c.wait(n, GENEROUS, "4 voters, one configuration", |s| {
            all_online(s)
                && s["quorum"]["expected"] == 4
                && s["config"]["identity"] == committed.as_str()
        })
        .unwrap_or_else(|e| panic!("n{n}: {e:?}\n{}", c.logs()));
        assert_eq!(
            std::fs::read_to_string(file(n)).unwrap(),
            std::fs::read_to_string(file(asker)).unwrap(),
            "n{n}'s file"
        );
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    let gap = report.kind(ProbeKind::Udp).max_gap_ms();
    assert_eq!(report.dual_active().count(), 0);
    assert!(
        gap < 100.0,
        "web had a {gap} ms gap during the add\n{}",
        c.logs()
    );
    let holder = c.status(web_on).unwrap();
    let touched = stopped_or_started(&holder, "web", t);
    assert!(!touched, "web was stopped or started: {}", holder["events"]);

    // The new node hosts.
    let (ok, out) = tandem(&[
        "move",
        "web",
        "--to",
        "n4",
        "--socket",
        c.socket(4).to_str().unwrap(),
    ]);
    assert!(ok, "{out}\n{}", c.logs());
    c.wait(4, GENEROUS, "web runs on n4", |s| {
        running(s, "web") && group(s, "web").unwrap()["placed_on"] == "n4"
    })
    .unwrap_or_else(|e| panic!("{e:?}\n{}", c.logs()));

    // `node remove n4 --forget` reverses it: web moves off n4, its vote
    // goes, and the configuration drops it everywhere.
    let prober = Prober::start(
        &c.bed.client_ns(),
        ProbeSpec::new(SocketAddr::new(c.bed.vip("lan").into(), 7000), 120_000),
    )
    .unwrap();
    let (ok, out) = tandem(&[
        "node",
        "remove",
        "n4",
        "--forget",
        "--config",
        file(asker).to_str().unwrap(),
        "--socket",
        c.socket(asker).to_str().unwrap(),
    ]);
    eprintln!("node remove n4 --forget:\n{out}");
    assert!(ok, "{out}\n{}", c.logs());
    assert!(out.contains("node `n4` removed"), "{out}");
    assert!(out.contains("no member any more"), "{out}");
    for n in 1..=3 {
        c.wait(n, GENEROUS, "3 voters, n4 forgotten, web running", |s| {
            s["quorum"]["expected"] == 3
                && s["peers"]
                    .as_array()
                    .is_some_and(|p| p.len() == 2 && p.iter().all(|p| p["name"] != "n4"))
                && s["config"]["committed"] == s["config"]["identity"]
                && group(s, "web").is_some_and(|g| g["placed_on"] != "n4")
        })
        .unwrap_or_else(|e| panic!("n{n}: {e:?}\n{}", c.logs()));
        let text = std::fs::read_to_string(file(n)).unwrap();
        assert!(!text.contains("\"n4\""), "n{n}'s file:\n{text}");
    }
    c.bed
        .stop_gracefully(c.pids[3], Duration::from_secs(20))
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    assert_eq!(report.dual_active().count(), 0);
    eprintln!(
        "node add n4: joined and voting; web untouched on n{web_on} (largest gap {gap:.0} ms, 0 dual-active), then moved to n4; node remove n4 --forget: web moved off (largest gap {:.0} ms, 0 dual-active), 3 voters, n4 gone from every file",
        report.kind(ProbeKind::Udp).max_gap_ms()
    );
}

/// Starts member `n` with `tandem agent --join` (member `at`'s `lan`
/// address, the cluster key, configuration `file`), then waits for the
/// `tandem node add` run `adding` to end: its output, which must say it
/// succeeded.
fn join_and_finish(
    c: &mut AgentCluster,
    n: usize,
    at: usize,
    file: &Path,
    adding: std::process::Child,
) -> String {
    let key = c.dir().join("cluster.key");
    let pid = c
        .spawn_agent_args(
            n,
            file,
            &[
                "--join",
                &c.bed.address(at, "lan").to_string(),
                "--key",
                key.to_str().unwrap(),
            ],
        )
        .unwrap();
    c.pids.push(pid);
    let out = adding.wait_with_output().unwrap();
    let said = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    eprintln!("node add n{n}:\n{said}");
    assert!(out.status.success(), "{said}\n{}", c.logs());
    said
}

/// Runs `program` in the testbed's client namespace, bounded in time;
/// its stdout.
fn client(c: &AgentCluster, program: &str, args: &[&str]) -> String {
    let ns = c.bed.client_ns();
    let mut full = vec!["netns", "exec", &ns, "timeout", "120", program];
    full.extend_from_slice(args);
    let out = std::process::Command::new("ip")
        .args(&full)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{program} {args:?}: {}\n{}",
        String::from_utf8_lossy(&out.stderr),
        c.logs()
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Issue 19, seed 000's `startHA` and `stopHA` on real agents: n1 stands
/// alone (`two_node = true`, one node) with group `db` = volume `data`
/// (one copy) + a service + the floating address, a client probing the
/// service and an image written over NBD. `tandem node add n2 --address
/// ... --volume data=PATH --fence power=n2` makes it a pair while the
/// client runs: n2 joins (`agent --join` creates its copy), gets its
/// vote, and takes a full sync with progress shown; `db` is never stopped
/// and the client sees no gap. Then n1 crashes (kill -9): n2 fences it
/// and serves the same image. n1 comes back, and `tandem node remove n2
/// --forget` moves `db` back and leaves n1 alone again: one voter, one
/// copy, n2 gone from the file. Never dual-active.
#[test]
fn a_node_standing_alone_becomes_a_pair_with_a_replicated_volume_and_back() {
    if !require_root("a_node_standing_alone_becomes_a_pair_with_a_replicated_volume_and_back") {
        return;
    }
    let images = tempfile::tempdir().unwrap();
    let fence = agents::testbed_fence_script(images.path(), Path::new(TANDEM)).unwrap();
    let extra = format!(
        r#"
[[fence_device]]
name = "power"
agent = "{fence}"
hosts = {{ n1 = "n1" }}
options = {{ testbed = "@TESTBED_ID@" }}

[[volume]]
name = "data"
nodes = ["n1"]
size = "64MiB"
backing = {{ n1 = "{img1}" }}
nbd_tcp = "0.0.0.0:10809"
# The testbed's client network is its own namespace.
nbd_insecure = true
# Slow enough that the sync's progress shows.
resync_rate_mib_s = 16

[[group]]
name = "db"
failback = "manual"

[[group.resource]]
name = "disk"
kind = "volume"
volume = "data"

[[group.resource]]
name = "service"
kind = "process"
command = ["{TANDEM}", "demo-service", "--port", "8080", "--probe-port", "7000"]

[[group.resource]]
name = "vip"
kind = "ip"
address = "10.77.1.100/24"
"#,
        fence = fence.display(),
        img1 = images.path().join("n1.img").display(),
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(2)
    };
    let mut c = AgentCluster::prepare(TANDEM, &shape).unwrap();
    let full = std::fs::read_to_string(c.config_path()).unwrap();
    let (lan2, sync2) = (c.bed.address(2, "lan"), c.bed.address(2, "sync"));
    let n2_block = format!(
        "[[node]]\nname = \"n2\"\naddresses = {{ lan = \"{lan2}\", sync = \"{sync2}\" }}\n\n"
    );
    assert!(full.contains(&n2_block), "{full}");
    let alone = full.replace(&n2_block, "");
    let dir = c.dir().to_path_buf();
    let file = |n: usize| -> PathBuf { dir.join(format!("n{n}.toml")) };
    std::fs::write(file(1), &alone).unwrap();
    let (ok, out) = tandem(&[
        "volume",
        "create",
        "data",
        "--config",
        file(1).to_str().unwrap(),
        "--node",
        "n1",
        "--state-dir",
        c.state_dir(1).to_str().unwrap(),
        "--source",
    ]);
    assert!(ok, "{out}");
    let pid = c.spawn_agent_with(1, &file(1)).unwrap();
    c.pids.push(pid);
    c.wait(1, GENEROUS, "db running on n1 alone", |s| {
        running(s, "db") && s["quorum"]["expected"] == 1
    })
    .unwrap_or_else(|e| panic!("{e:?}\n{}", c.logs()));
    // An image through the export, to find again after the failover.
    let image = images.path().join("image");
    {
        use std::io::Write as _;
        let mut f = std::fs::File::create(&image).unwrap();
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut buf = Vec::with_capacity(64 << 20);
        while buf.len() < 64 << 20 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            buf.extend_from_slice(&x.to_le_bytes());
        }
        f.write_all(&buf).unwrap();
    }
    const URI: &str = "nbd://10.77.1.100:10809/data";
    client(&c, "nbdcopy", &[image.to_str().unwrap(), URI]);

    let prober = Prober::start(
        &c.bed.client_ns(),
        ProbeSpec::new(SocketAddr::new(c.bed.vip("lan").into(), 7000), 120_000),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let t = unix_ms();
    let adding = std::process::Command::new(TANDEM)
        .args([
            "node",
            "add",
            "n2",
            "--address",
            &format!("lan={lan2},sync={sync2}"),
            "--volume",
            &format!("data={}", images.path().join("n2.img").display()),
            "--fence",
            "power=n2",
            "--config",
            file(1).to_str().unwrap(),
            "--socket",
            c.socket(1).to_str().unwrap(),
            "--timeout",
            "120",
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    c.wait(1, GENEROUS, "n2 a member of n1", |s| {
        s["peers"]
            .as_array()
            .is_some_and(|p| p.iter().any(|p| p["name"] == "n2"))
            && s["config"]["committed"] == s["config"]["identity"]
    })
    .unwrap_or_else(|e| panic!("{e:?}\n{}", c.logs()));
    let said = join_and_finish(&mut c, 2, 1, &file(2), adding);
    assert!(said.contains("full sync"), "no progress shown: {said}");
    assert!(said.contains("copies are in sync"), "{said}");
    for n in 1..=2 {
        c.wait(n, GENEROUS, "a pair in two-node mode, in sync", |s| {
            all_online(s)
                && s["quorum"]["expected"] == 2
                && s["quorum"]["mode"] == "two_node"
                && s["volumes"][0]["disk"] == "UpToDate"
                && s["volumes"][0]["peer_disk"] == "UpToDate"
                && s["volumes"][0]["record_up_to_date"] == serde_json::json!(["n1", "n2"])
        })
        .unwrap_or_else(|e| panic!("n{n}: {e:?}\n{}", c.logs()));
    }
    std::thread::sleep(Duration::from_millis(300));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    let add_gap = report.kind(ProbeKind::Udp).max_gap_ms();
    assert_eq!(report.dual_active().count(), 0);
    assert!(
        add_gap < 100.0,
        "db had a {add_gap} ms gap during the add\n{}",
        c.logs()
    );
    let holder = c.status(1).unwrap();
    assert!(
        !stopped_or_started(&holder, "db", t),
        "db was stopped or started: {}",
        holder["events"]
    );

    // Failover: n1 crashes; n2 fences it and serves the same image.
    let t_crash = std::time::Instant::now();
    c.bed.kill9(c.pids[0]).unwrap();
    c.wait(2, GENEROUS, "db running on n2", |s| {
        running(s, "db") && group(s, "db").unwrap()["placed_on"] == "n2"
    })
    .unwrap_or_else(|e| panic!("{e:?}\n{}", c.logs()));
    let failover_ms = t_crash.elapsed().as_millis();
    // In two-node mode the survivor holds only by fencing its peer.
    let s2 = c.status(2).unwrap();
    let fenced = s2["events"].as_array().unwrap().iter().any(|e| {
        e["event"]["kind"] == "fence_done" && e["event"]["node"] == "n1" && e["event"]["ok"] == true
    });
    assert!(fenced, "n2 took db without fencing n1: {}", s2["events"]);
    let back = images.path().join("back");
    client(&c, "nbdcopy", &[URI, back.to_str().unwrap()]);
    let same = std::process::Command::new("cmp")
        .arg("-s")
        .arg(&image)
        .arg(&back)
        .status()
        .unwrap()
        .success();
    assert!(same, "n2 serves other data than was written through n1");

    // Forgetting n2 now would take the only copy holding every write
    // with it (n1's is behind): refused, n2 keeps its vote (found by
    // review: the vote went first, then the copy).
    c.wait(2, GENEROUS, "the record names n2's copy alone", |s| {
        s["volumes"][0]["record_up_to_date"] == serde_json::json!(["n2"])
    })
    .unwrap_or_else(|e| panic!("{e:?}\n{}", c.logs()));
    let (ok, out) = tandem(&[
        "node",
        "remove",
        "n2",
        "--forget",
        "--config",
        file(2).to_str().unwrap(),
        "--socket",
        c.socket(2).to_str().unwrap(),
    ]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("n1's copy does not hold every write yet"),
        "{out}"
    );
    assert_eq!(c.status(2).unwrap()["agreement"]["voter"], true);
    // n1 back (powered on by the fence device, as a reboot), then stopHA.
    let (code, said) =
        tandem_testbed::fence::agent(&format!("action=on\ntestbed={}\nplug=n1\n", c.bed.id()));
    assert_eq!(code, 0, "{said}");
    c.bed.restore_node(1).unwrap();
    c.pids[0] = c.spawn_agent_with(1, &file(1)).unwrap();
    for n in 1..=2 {
        c.wait(n, GENEROUS, "both online, n1's copy in sync again", |s| {
            all_online(s)
                && s["config"]["committed"] == s["config"]["identity"]
                && s["volumes"][0]["disk"] == "UpToDate"
                && s["volumes"][0]["peer_disk"] == "UpToDate"
        })
        .unwrap_or_else(|e| panic!("n{n}: {e:?}\n{}", c.logs()));
    }
    let prober = Prober::start(
        &c.bed.client_ns(),
        ProbeSpec::new(SocketAddr::new(c.bed.vip("lan").into(), 7000), 120_000),
    )
    .unwrap();
    let (ok, out) = tandem(&[
        "node",
        "remove",
        "n2",
        "--forget",
        "--config",
        file(1).to_str().unwrap(),
        "--socket",
        c.socket(1).to_str().unwrap(),
        "--timeout",
        "120",
    ]);
    eprintln!("node remove n2 --forget:\n{out}");
    assert!(ok, "{out}\n{}", c.logs());
    c.wait(1, GENEROUS, "n1 alone again, db on it", |s| {
        s["quorum"]["expected"] == 1
            && s["peers"].as_array().is_some_and(|p| p.is_empty())
            && running(s, "db")
            && group(s, "db").unwrap()["placed_on"] == "n1"
            && s["volumes"][0]["peer"] == ""
            && s["config"]["committed"] == s["config"]["identity"]
    })
    .unwrap_or_else(|e| panic!("{e:?}\n{}", c.logs()));
    let text = std::fs::read_to_string(file(1)).unwrap();
    assert!(!text.contains("\"n2\""), "n1's file:\n{text}");
    c.bed
        .stop_gracefully(c.pids[1], Duration::from_secs(20))
        .unwrap();
    // n1 alone writes on: the record names its copy alone.
    client(&c, "nbdcopy", &[image.to_str().unwrap(), URI]);
    std::thread::sleep(Duration::from_millis(300));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    assert_eq!(report.dual_active().count(), 0);
    eprintln!(
        "n1 alone -> node add n2 with volume data: full sync shown, db untouched (largest gap {add_gap:.0} ms, 0 dual-active); kill -9 of n1: db on n2 after {failover_ms} ms with the same 64 MiB image; node remove n2 --forget: db back on n1 (largest gap {:.0} ms, 0 dual-active), one voter, one copy",
        report.kind(ProbeKind::Udp).max_gap_ms()
    );
}
