//! Undisturbed bystanders, with real agents on the testbed (needs root; CI
//! runs as root): a change of leader, or commits, never interrupt a group
//! on a node that stays connected to a majority.
//!
//! Group `web` (a service process + floating IP 10.77.1.100, with a TCP
//! monitor) is pinned to a node that does not lead; the client probes the
//! address (UDP and TCP every 5 ms). Then the leader is crashed (links cut
//! and agent killed, then powered back), killed with -9, stopped with
//! SIGTERM, frozen for 5 s and thawed, or restarted; the witness of a
//! two-node cluster is killed and restarted; 100 operator commits are made
//! in a row. Each time: no gap of 50 ms or more, no answer from another
//! node, the holder never stopped or restarted the group (same service
//! process, same "since"), and no failure was counted.
//!
//! Repetitions: `TANDEM_BYSTANDER_REPS` (default 3; the issue's acceptance
//! run uses 10). The figures printed are the largest gap per repetition.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_testbed::agents::{self, all_online, AgentCluster, ClusterShape};
use tandem_testbed::checker::{analyze, CheckOptions};
use tandem_testbed::prober::{ProbeSpec, Prober};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(30);
/// A gap the client notices.
const GAP_LIMIT_MS: f64 = 50.0;

/// One cluster at a time: the machine has two cores.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn reps() -> usize {
    std::env::var("TANDEM_BYSTANDER_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(3)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// All links cut and the agent killed (a power cut as the others see
    /// it), then links restored and the agent started again.
    Crash,
    /// kill -9 of the agent; started again once a new leader is known.
    Kill9,
    /// SIGTERM (a clean stop); started again once a new leader is known.
    Term,
    /// The whole node frozen for 5 s (cgroup freezer), then thawed.
    Freeze,
    /// SIGTERM and an immediate start (a rolling restart).
    Restart,
}

fn web(s: &Value) -> Option<&Value> {
    s["groups"].as_array()?.iter().find(|g| g["name"] == "web")
}

fn num(name: &str) -> Option<usize> {
    name.strip_prefix('n')?.parse().ok()
}

/// What must not change on the holder across a fault.
#[derive(Debug, PartialEq, Eq)]
struct HolderState {
    since: Value,
    state: Value,
    placed_on: Value,
    pid: String,
}

struct Bed {
    c: AgentCluster,
    /// Nodes that host groups (the witness excluded).
    hosts: usize,
    gaps: Vec<f64>,
}

impl Bed {
    fn start(hosts: usize, witness: bool) -> Bed {
        let extra = agents::web_group_config(Path::new(TANDEM), "manual", hosts, 8080, 7000)
            + r#"
[[group.monitor]]
name = "service-port"
kind = "tcp"
address = "127.0.0.1:8080"
interval_ms = 1000
"#;
        let shape = ClusterShape {
            witness,
            extra,
            ..ClusterShape::nodes(hosts)
        };
        let c = AgentCluster::start(TANDEM, &shape).unwrap();
        let b = Bed {
            c,
            hosts,
            gaps: Vec::new(),
        };
        b.settle();
        b
    }

    fn members(&self) -> Vec<usize> {
        (1..=self.c.pids.len()).collect()
    }

    /// Every member online, quorate, a leader known, web running.
    fn settle(&self) {
        for n in self.members() {
            let hosts = self.hosts;
            self.c
                .wait(n, GENEROUS, "settled", |s| {
                    all_online(s)
                        && s["quorum"]["quorate"] == true
                        && agents::leader(s).is_some()
                        // The witness runs no groups.
                        && (n > hosts || web(s).is_some_and(|g| g["state"] == "running"))
                })
                .unwrap();
        }
    }

    /// The leader's member number (the witness is member hosts + 1).
    fn leader(&self) -> usize {
        let s = self.c.status(1).unwrap();
        let name = agents::leader(&s).unwrap();
        num(&name).unwrap_or(self.hosts + 1)
    }

    fn holder(&self) -> usize {
        let s = self.c.status(1).unwrap();
        num(web(&s).unwrap()["placed_on"].as_str().unwrap()).unwrap()
    }

    fn cmd(&self, n: usize, args: &[&str]) -> String {
        let out = std::process::Command::new(TANDEM)
            .args(args)
            .arg("--socket")
            .arg(self.c.socket(n))
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "tandem {args:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Pins web to a host that does not lead (moving it if it must);
    /// returns the holder.
    fn pin_to_follower(&self) -> usize {
        let leader = self.leader();
        let holder = self.holder();
        if holder != leader {
            return holder;
        }
        let to = (1..=self.hosts).find(|h| *h != leader).unwrap();
        let said = self.cmd(to, &["move", "web", "--to", &format!("n{to}")]);
        // Defect 5: "done" once the service answers (its monitor passed).
        assert!(
            said.contains(&format!(
                "web answers on n{to} (monitor service-port passed)"
            )),
            "{said}"
        );
        self.settle();
        to
    }

    fn pidfile(&self, holder: usize) -> PathBuf {
        self.c.state_dir(holder).join("run/web.service.pid")
    }

    fn holder_state(&self, holder: usize) -> HolderState {
        let s = self.c.status(holder).unwrap();
        let g = web(&s).unwrap();
        HolderState {
            since: g["since_unix_ms"].clone(),
            state: g["state"].clone(),
            placed_on: g["placed_on"].clone(),
            pid: std::fs::read_to_string(self.pidfile(holder)).unwrap_or_default(),
        }
    }

    fn log_len(&self, n: usize) -> usize {
        std::fs::metadata(self.log_path(n)).map_or(0, |m| m.len() as usize)
    }

    fn log_path(&self, n: usize) -> PathBuf {
        self.c.bed.run_dir().join(format!("n{n}-tandem.log"))
    }

    fn prober(&self) -> Prober {
        let target = SocketAddr::new(self.c.bed.vip("lan").into(), 7000);
        Prober::start(&self.c.bed.client_ns(), ProbeSpec::new(target, 300_000)).unwrap()
    }

    /// Runs `disturb` with web on a follower and checks that nothing of
    /// web moved, stopped, restarted or failed.
    fn undisturbed(&mut self, what: &str, disturb: impl FnOnce(&mut Bed, usize)) {
        let holder = self.pin_to_follower();
        let before = self.holder_state(holder);
        let log_from = self.log_len(holder);
        let prober = self.prober();
        let t0 = Instant::now();
        std::thread::sleep(Duration::from_millis(300));
        disturb(self, holder);
        self.settle();
        std::thread::sleep(Duration::from_millis(500));
        let log = prober.stop().unwrap();
        let report = analyze(&log.records, CheckOptions::default());
        let logs = || {
            let bytes = std::fs::read(self.log_path(holder)).unwrap_or_default();
            String::from_utf8_lossy(&bytes[log_from.min(bytes.len())..]).into_owned()
        };
        assert_eq!(
            report.dual_active().count(),
            0,
            "{what}: dual-active\n{report}"
        );
        let mut worst = 0.0f64;
        for (kind, k) in &report.kinds {
            worst = worst.max(k.max_gap_ms());
            assert!(
                k.max_gap_ms() < GAP_LIMIT_MS,
                "{what}: {kind:?} gap {:.1} ms (holder n{holder})\n{report}\nholder log:\n{}",
                k.max_gap_ms(),
                logs()
            );
            let me = format!("n{holder}");
            assert!(
                k.responders.keys().all(|r| *r == me),
                "{what}: answers from {:?}, holder n{holder}",
                k.responders.keys().collect::<Vec<_>>()
            );
        }
        let (sent, answered): (usize, usize) = report
            .kinds
            .values()
            .fold((0, 0), |(p, a), k| (p + k.probes, a + k.answered));
        println!(
            "{what}: holder n{holder}, {:.1} s probed, {answered} of {sent} probes answered, largest gap {worst:.1} ms",
            t0.elapsed().as_secs_f64()
        );
        let after = self.holder_state(holder);
        assert_eq!(
            before,
            after,
            "{what}: web changed on n{holder}\nholder log:\n{}",
            logs()
        );
        let tail = logs();
        for bad in [
            "lease lost",
            "stopping web/",
            "starting web/",
            "group web failed",
        ] {
            assert!(!tail.contains(bad), "{what}: `{bad}` on n{holder}:\n{tail}");
        }
        let s = self.c.status(holder).unwrap();
        let g = web(&s).unwrap();
        // Status lists the monitor with its last result (issue "keep the
        // promises", defect 8: monitors were invisible until they failed).
        let m = &g["monitors"][0];
        assert_eq!(m["name"], "service-port", "{g:#}");
        assert_eq!(m["last"], "ok", "{g:#}");
        assert!(m["at_unix_ms"].as_u64().is_some(), "{g:#}");
        let counted: u64 = g["fail_counts"]
            .as_object()
            .map_or(0, |m| m.values().filter_map(Value::as_u64).sum());
        assert_eq!(counted, 0, "{what}: failures counted: {g:#}");
        self.gaps.push(worst);
    }

    fn report(&self, what: &str) {
        let mut g = self.gaps.clone();
        g.sort_by(f64::total_cmp);
        println!(
            "{what}: {} repetitions, largest client gap per repetition (ms): min {:.1} median {:.1} max {:.1}; 0 dual-active, 0 stops, 0 failures",
            g.len(),
            g.first().copied().unwrap_or(0.0),
            g.get(g.len() / 2).copied().unwrap_or(0.0),
            g.last().copied().unwrap_or(0.0),
        );
    }

    /// Waits until some member other than `gone` leads (asking `ask`).
    fn wait_new_leader(&self, ask: usize, gone: usize) {
        let gone_name = if gone > self.hosts {
            "witness".to_string()
        } else {
            format!("n{gone}")
        };
        self.c
            .wait(ask, GENEROUS, "a new leader", |s| {
                s["quorum"]["quorate"] == true && agents::leader(s).is_some_and(|l| l != gone_name)
            })
            .unwrap();
    }

    fn apply(&mut self, fault: Fault, victim: usize, holder: usize) {
        let pid = self.c.pids[victim - 1];
        match fault {
            Fault::Crash => {
                self.c.bed.cut_node(victim).unwrap();
                self.c.bed.kill9(pid).unwrap();
                self.wait_new_leader(holder, victim);
                self.c.bed.restore_node(victim).unwrap();
                self.c.pids[victim - 1] = self.c.spawn_agent(victim).unwrap();
            }
            Fault::Kill9 => {
                self.c.bed.kill9(pid).unwrap();
                self.wait_new_leader(holder, victim);
                self.c.pids[victim - 1] = self.c.spawn_agent(victim).unwrap();
            }
            Fault::Term => {
                self.c
                    .bed
                    .stop_gracefully(pid, Duration::from_secs(15))
                    .unwrap();
                self.wait_new_leader(holder, victim);
                self.c.pids[victim - 1] = self.c.spawn_agent(victim).unwrap();
            }
            Fault::Freeze => {
                let t = Instant::now();
                self.c.bed.freeze(victim).unwrap();
                std::thread::sleep(Duration::from_secs(5).saturating_sub(t.elapsed()));
                self.c.bed.thaw(victim).unwrap();
            }
            Fault::Restart => {
                self.c
                    .bed
                    .stop_gracefully(pid, Duration::from_secs(15))
                    .unwrap();
                self.c.pids[victim - 1] = self.c.spawn_agent(victim).unwrap();
            }
        }
    }
}

fn leader_fault(test: &str, fault: Fault) {
    if !require_root(test) {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = Bed::start(3, false);
    for rep in 0..reps() {
        b.undisturbed(
            &format!("{fault:?} of the leader, rep {rep}"),
            |b, holder| {
                let leader = b.leader();
                assert_ne!(leader, holder);
                b.apply(fault, leader, holder);
            },
        );
    }
    b.report(&format!("3 nodes, {fault:?} of the leader"));
}

#[test]
fn a_crash_of_the_leader_leaves_a_follower_holder_alone() {
    leader_fault(
        "a_crash_of_the_leader_leaves_a_follower_holder_alone",
        Fault::Crash,
    );
}

#[test]
fn kill_9_of_the_leader_leaves_a_follower_holder_alone() {
    leader_fault(
        "kill_9_of_the_leader_leaves_a_follower_holder_alone",
        Fault::Kill9,
    );
}

#[test]
fn a_clean_stop_of_the_leader_leaves_a_follower_holder_alone() {
    leader_fault(
        "a_clean_stop_of_the_leader_leaves_a_follower_holder_alone",
        Fault::Term,
    );
}

#[test]
fn a_frozen_leader_leaves_a_follower_holder_alone() {
    leader_fault(
        "a_frozen_leader_leaves_a_follower_holder_alone",
        Fault::Freeze,
    );
}

#[test]
fn a_restart_of_the_leader_leaves_a_follower_holder_alone() {
    leader_fault(
        "a_restart_of_the_leader_leaves_a_follower_holder_alone",
        Fault::Restart,
    );
}

/// Two nodes and a witness: the witness (leading or not) is killed with -9
/// and restarted, and the node that leads (when it is not the holder) is
/// too; the holder keeps web throughout.
#[test]
fn a_witness_or_leader_kill_leaves_the_holder_alone() {
    if !require_root("a_witness_or_leader_kill_leaves_the_holder_alone") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = Bed::start(2, true);
    let witness = 3;
    for rep in 0..reps() {
        b.undisturbed(
            &format!("kill -9 of the witness, rep {rep}"),
            |b, holder| {
                b.apply(Fault::Kill9, witness, holder);
            },
        );
        b.undisturbed(&format!("kill -9 of the leader, rep {rep}"), |b, holder| {
            let victim = b.leader();
            assert_ne!(victim, holder);
            b.apply(Fault::Kill9, victim, holder);
        });
    }
    b.report("2 nodes + witness, kill -9 of the witness and of the leader");
}

/// 100 operator commits in a row (pins set and cleared without waiting):
/// no group stops anywhere.
#[test]
fn a_hundred_commits_in_a_row_stop_nothing() {
    if !require_root("a_hundred_commits_in_a_row_stop_nothing") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut b = Bed::start(3, false);
    b.undisturbed("100 commits in a row", |b, holder| {
        let leader = b.leader();
        let s = b.c.status(leader).unwrap();
        let before = s["agreement"]["commit_index"].as_u64().unwrap();
        let to = format!("n{holder}");
        // Asked through the node that does not hold web nor lead, so its
        // requests travel to the leader.
        let via = (1..=3).find(|n| *n != holder && *n != leader).unwrap();
        for _ in 0..50 {
            b.cmd(via, &["move", "web", "--to", &to, "--no-wait"]);
            b.cmd(via, &["move", "web", "--clear", "--no-wait"]);
        }
        for n in 1..=3 {
            b.c.wait(n, GENEROUS, "100 commits applied", |s| {
                s["agreement"]["commit_index"]
                    .as_u64()
                    .is_some_and(|c| c >= before + 100)
            })
            .unwrap();
        }
    });
    b.report("3 nodes, 100 pins set and cleared");
}

/// Found in review: a group moved away is kept only as long as the node
/// may (the lease before the move, or a leader's stop grant). A service
/// that takes a second to shut down, on the leader and on a follower, is
/// waited for on a planned move: stopped by its own signal handler, not
/// killed, and never running on two nodes.
#[test]
fn a_slow_stop_on_a_planned_move_is_waited_for_not_killed() {
    if !require_root("a_slow_stop_on_a_planned_move_is_waited_for_not_killed") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let shape = ClusterShape {
        extra: r#"
[[group]]
name = "slow"
preferred = ["n1", "n2", "n3"]
failback = "manual"

[[group.resource]]
name = "svc"
kind = "process"
command = ["sh", "-c", "trap 'sleep 1.5; exit 0' TERM; while :; do sleep 0.1; done"]
"#
        .into(),
        ..ClusterShape::nodes(3)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    let slow = |s: &Value| {
        s["groups"]
            .as_array()
            .and_then(|g| g.iter().find(|g| g["name"] == "slow"))
            .cloned()
    };
    let running_on = |s: &Value| {
        slow(s).and_then(|g| {
            (g["state"] == "running")
                .then(|| g["placed_on"].as_str().map(String::from))
                .flatten()
        })
    };
    c.wait(1, GENEROUS, "slow running", |s| running_on(s).is_some())
        .unwrap();
    for round in 0..2 {
        let s = c.status(1).unwrap();
        let leader = agents::leader(&s).unwrap();
        let from = running_on(&s).unwrap();
        // Round 0 from the leader, round 1 from a follower.
        let from = if round == 0 {
            let out = std::process::Command::new(TANDEM)
                .args(["move", "slow", "--to", &leader, "--socket"])
                .arg(c.socket(1))
                .output()
                .unwrap();
            assert!(out.status.success(), "{out:?}");
            leader.clone()
        } else {
            from
        };
        let to = ["n1", "n2", "n3"]
            .into_iter()
            .find(|n| *n != from && (round == 0 || *n != leader))
            .unwrap()
            .to_string();
        let t0 = Instant::now();
        let out = std::process::Command::new(TANDEM)
            .args(["move", "slow", "--to", &to, "--socket"])
            .arg(c.socket(1))
            .output()
            .unwrap();
        let took = t0.elapsed();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        // The shutdown took its 1.5 s: it was waited for, not cut short.
        assert!(took >= Duration::from_millis(1_400), "moved in {took:?}");
        let logs = c.logs();
        assert!(
            !logs.contains("its stop outlasted"),
            "round {round}: the slow stop was killed:\n{logs}"
        );
        println!(
            "slow stop moved from {from} ({}) to {to} in {} ms, not killed",
            if from == leader { "leader" } else { "follower" },
            took.as_millis()
        );
    }
}
