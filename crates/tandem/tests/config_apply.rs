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
    let pid = c
        .spawn_agent_args(
            4,
            &n4_file,
            &[
                "--join",
                &c.bed.address(asker, "lan").to_string(),
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
    eprintln!("node add:\n{said}");
    assert!(out.status.success(), "{said}\n{}", c.logs());
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
