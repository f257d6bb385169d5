//! Resource groups and failover with real agents on the testbed (needs
//! root; CI runs as root). A group `web` = a service process + floating IP
//! 10.77.1.100 on a 3-node cluster; the client probes the address (UDP and
//! TCP every 5 ms) and the checker reads the log. Each fault is repeated
//! (`TANDEM_FAILOVER_REPS`, default 10): every time the group must answer
//! from another node with zero dual-active instants, and — checked at the
//! resources themselves, from the agents' event times — the old holder must
//! have stopped before the new one started.
//!
//! Time bounds here are generous safety limits; gap figures belong to the
//! benchmark (`bench/run failover`).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_testbed::agents::{self, all_online, peer, AgentCluster, ClusterShape};
use tandem_testbed::checker::{analyze, CheckOptions};
use tandem_testbed::prober::{ProbeSpec, Prober};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(20);
const NODES: usize = 3;

/// One cluster at a time: the machine has two cores.
static SERIAL: Mutex<()> = Mutex::new(());

fn reps() -> usize {
    std::env::var("TANDEM_FAILOVER_REPS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10)
}

use tandem_testbed::prober::unix_ms;

struct Fx {
    c: AgentCluster,
    gaps: Vec<f64>,
    name: &'static str,
    /// Check from the agents' events that the old holder stopped before
    /// the new one started (not for a frozen node: it cannot act until
    /// thawed, and yields its address first thing then).
    check_order: bool,
}

fn web(s: &Value) -> Option<&Value> {
    s["groups"].as_array()?.iter().find(|g| g["name"] == "web")
}

fn running_on(s: &Value) -> Option<usize> {
    let g = web(s)?;
    if g["state"] != "running" {
        return None;
    }
    g["placed_on"].as_str()?.strip_prefix('n')?.parse().ok()
}

/// The wall time of the first event at or after `since` whose text is `text`.
/// When (ms since the Unix epoch, at or after `since`) the agent's typed
/// event `kind` (its `"kind"` in `tandem status --json`) happened to
/// `group/resource`: e.g. `started`, `stopped`, `found_running`, or
/// `action_begun` (a start: use [`start_begun_at`]).
fn event_at(s: &Value, kind: &str, what: &str, since: u64) -> Option<u64> {
    let (group, resource) = what.split_once('/')?;
    s["events"].as_array()?.iter().find_map(|e| {
        let at = e["at_unix_ms"].as_u64()?;
        let ev = &e["event"];
        (at >= since && ev["kind"] == kind && ev["group"] == group && ev["resource"] == resource)
            .then_some(at)
    })
}

/// When a start of `group/resource` began (see [`event_at`]).
fn start_begun_at(s: &Value, what: &str, since: u64) -> Option<u64> {
    let (group, resource) = what.split_once('/')?;
    s["events"].as_array()?.iter().find_map(|e| {
        let at = e["at_unix_ms"].as_u64()?;
        let ev = &e["event"];
        (at >= since
            && ev["kind"] == "action_begun"
            && ev["action"] == "start"
            && ev["group"] == group
            && ev["resource"] == resource)
            .then_some(at)
    })
}

impl Fx {
    fn start(name: &'static str) -> Fx {
        Fx::start_with(name, "")
    }

    /// As [`Fx::start`], with `extra` configuration (fence devices...).
    fn start_with(name: &'static str, extra: &str) -> Fx {
        Fx::start_shaped(name, extra, "default")
    }

    /// As [`Fx::start_with`], with timing profile `profile`.
    fn start_shaped(name: &'static str, extra: &str, profile: &str) -> Fx {
        let shape = ClusterShape {
            extra: agents::ping_monitor_config()
                + &agents::web_group_config(Path::new(TANDEM), "manual", NODES, 8080, 7000)
                + extra,
            profile: profile.into(),
            ..ClusterShape::nodes(NODES)
        };
        let c = AgentCluster::start(TANDEM, &shape).unwrap();
        let fx = Fx {
            c,
            gaps: Vec::new(),
            name,
            check_order: true,
        };
        fx.settle();
        fx
    }

    /// Every agent online, quorate, and the group running somewhere.
    fn settle(&self) {
        for n in 1..=NODES {
            self.c
                .wait(n, GENEROUS, "all online, quorate, web running", |s| {
                    all_online(s) && s["quorum"]["quorate"] == true && running_on(s).is_some()
                })
                .unwrap();
        }
    }

    fn holder(&self) -> usize {
        running_on(&self.c.status(1).or_else(|| self.c.status(2)).unwrap()).unwrap()
    }

    fn prober(&self) -> Prober {
        let target = SocketAddr::new(self.c.bed.vip("lan").into(), 7000);
        Prober::start(&self.c.bed.client_ns(), ProbeSpec::new(target, 120_000)).unwrap()
    }

    fn other(old: usize) -> usize {
        old % NODES + 1
    }

    /// Waits until a node other than `old` runs the group (asking a node
    /// that is not `old`); returns it.
    fn wait_moved(&self, old: usize) -> usize {
        let ask = Self::other(old);
        self.c
            .wait(ask, GENEROUS, "web running on another node", |s| {
                running_on(s).is_some_and(|n| n != old)
            })
            .unwrap();
        running_on(&self.c.status(ask).unwrap()).unwrap()
    }

    /// One repetition: `fault` on the holder, wait for the move, `after`
    /// (still probing), then the checks; `recover` brings the old holder
    /// back. Returns (old, new).
    fn rep(
        &mut self,
        rep: usize,
        fault: impl FnOnce(&Fx, usize),
        after: impl FnOnce(&Fx, usize),
        recover: impl FnOnce(&mut Fx, usize),
    ) -> (usize, usize) {
        let old = self.holder();
        let prober = self.prober();
        std::thread::sleep(Duration::from_millis(300));
        let t_fault = unix_ms();
        fault(self, old);
        let new = self.wait_moved(old);
        after(self, old);
        std::thread::sleep(Duration::from_millis(500));
        let log = prober.stop().unwrap();
        let report = analyze(&log.records, CheckOptions::default());
        let dual: Vec<_> = report.dual_active().collect();
        assert!(
            dual.is_empty(),
            "{} rep {rep}: dual-active instants {dual:?}\nlogs:\n{}",
            self.name,
            self.c.logs()
        );
        let udp = report.kind(tandem_testbed::checker::ProbeKind::Udp);
        let last = log
            .records
            .iter()
            .rev()
            .find_map(|r| r.responder.clone())
            .expect("answers after the move");
        assert_eq!(
            last,
            format!("n{new}"),
            "{} rep {rep}: answers come from the new holder",
            self.name
        );
        let gap = udp.max_gap_ms();
        assert!(gap < 10_000.0, "{} rep {rep}: outage {gap} ms", self.name);
        self.gaps.push(gap);
        // At the resources: the new holder started after the old one
        // stopped (when the old agent can still tell).
        let s_new = self.c.status(new).unwrap();
        let started = start_begun_at(&s_new, "web/service", t_fault)
            .expect("the new holder logged its start");
        if let Some(s_old) = self.c.status(old).filter(|_| self.check_order) {
            if let Some(stopped) = event_at(&s_old, "stopped", "web/vip", t_fault) {
                assert!(
                    stopped <= started,
                    "{} rep {rep}: n{old} stopped its address at {stopped}, n{new} started at {started}",
                    self.name
                );
            }
        }
        recover(self, old);
        self.settle();
        (old, new)
    }

    fn report(&self) {
        let mut g = self.gaps.clone();
        g.sort_by(f64::total_cmp);
        println!(
            "{}: {} repetitions, outage ms min {:.0} p50 {:.0} max {:.0}, 0 dual-active",
            self.name,
            g.len(),
            g.first().copied().unwrap_or(0.0),
            g.get(g.len() / 2).copied().unwrap_or(0.0),
            g.last().copied().unwrap_or(0.0)
        );
    }

    /// The address and service are gone from node `n`.
    fn assert_nothing_left(&self, n: usize) {
        let t0 = Instant::now();
        loop {
            let addrs = self.c.bed.exec(n, "ip", &["-o", "addr"]).unwrap();
            if !addrs.contains("10.77.1.100") {
                return;
            }
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "{}: n{n} still holds 10.77.1.100:\n{addrs}\nlogs:\n{}",
                self.name,
                self.c.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

#[test]
fn crash_of_the_active_node_fails_over() {
    if !require_root("crash_of_the_active_node_fails_over") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fx = Fx::start("crash (all links cut)");
    for rep in 0..reps() {
        fx.rep(
            rep,
            |f, old| f.c.bed.cut_node(old).unwrap(),
            |f, old| f.assert_nothing_left(old),
            |f, old| f.c.bed.restore_node(old).unwrap(),
        );
    }
    fx.report();
}

#[test]
fn kill_9_of_the_active_agent_fails_over_and_the_guard_cleans_up() {
    if !require_root("kill_9_of_the_active_agent_fails_over_and_the_guard_cleans_up") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fx = Fx::start("kill -9 of the active agent");
    for rep in 0..reps() {
        fx.rep(
            rep,
            |f, old| {
                f.c.bed.kill9(f.c.pids[old - 1]).unwrap();
            },
            |f, old| f.assert_nothing_left(old),
            |f, old| {
                let pid = f.c.spawn_agent(old).unwrap();
                f.c.pids[old - 1] = pid;
            },
        );
    }
    assert!(
        fx.c.logs().contains("tandem-guard[") && fx.c.logs().contains("agent gone"),
        "the guard stopped what the killed agent left"
    );
    fx.report();
}

#[test]
fn freeze_of_the_active_node_fails_over_and_it_yields_on_thaw() {
    if !require_root("freeze_of_the_active_node_fails_over_and_it_yields_on_thaw") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fx = Fx::start("freeze 5 s, thaw");
    fx.check_order = false;
    let frozen_at = Mutex::new(Instant::now());
    for rep in 0..reps() {
        fx.rep(
            rep,
            |f, old| {
                *frozen_at.lock().unwrap() = Instant::now();
                f.c.bed.freeze(old).unwrap();
            },
            |f, old| {
                let since = frozen_at.lock().unwrap().elapsed();
                std::thread::sleep(Duration::from_secs(5).saturating_sub(since));
                f.c.bed.thaw(old).unwrap();
                // Thawed, it checks its lease first and drops the address.
                f.assert_nothing_left(old);
                std::thread::sleep(Duration::from_millis(500));
            },
            |_, _| {},
        );
    }
    fx.report();
}

#[test]
fn active_node_partitioned_from_the_majority_yields() {
    if !require_root("active_node_partitioned_from_the_majority_yields") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fx = Fx::start("partition from the majority");
    for rep in 0..reps() {
        fx.rep(
            rep,
            |f, old| {
                for o in (1..=NODES).filter(|o| *o != old) {
                    f.c.bed.drop_one_way(old, o).unwrap();
                    f.c.bed.drop_one_way(o, old).unwrap();
                }
            },
            // The client still reaches it: it must have let go itself.
            |f, old| f.assert_nothing_left(old),
            |f, old| {
                for o in (1..=NODES).filter(|o| *o != old) {
                    f.c.bed.heal_one_way(old, o).unwrap();
                    f.c.bed.heal_one_way(o, old).unwrap();
                }
            },
        );
    }
    fx.report();
}

#[test]
fn planned_failover_moves_the_group_cleanly() {
    if !require_root("planned_failover_moves_the_group_cleanly") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fx = Fx::start("tandem failover");
    for rep in 0..reps() {
        fx.rep(
            rep,
            |f, old| {
                let out = std::process::Command::new(TANDEM)
                    .args(["failover", "web", "--socket"])
                    .arg(f.c.socket(old))
                    .output()
                    .unwrap();
                let text = String::from_utf8_lossy(&out.stdout);
                assert!(
                    out.status.success() && text.contains("done in"),
                    "tandem failover: {text}{}\nlogs:\n{}",
                    String::from_utf8_lossy(&out.stderr),
                    f.c.logs()
                );
            },
            |_, _| {},
            |_, _| {},
        );
    }
    fx.report();
}

#[test]
fn lan_cut_on_the_active_node_moves_the_group_by_ping_monitor() {
    if !require_root("lan_cut_on_the_active_node_moves_the_group_by_ping_monitor") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let mut fx = Fx::start("lan cut, sync up (ping monitor)");
    for rep in 0..reps() {
        fx.rep(
            rep,
            |f, old| f.c.bed.cut_link(old, "lan").unwrap(),
            |f, old| {
                // It stayed in the cluster over sync and stopped by itself.
                let s = f.c.status(old).unwrap();
                assert_eq!(
                    s["quorum"]["quorate"], true,
                    "n{old} keeps quorum over sync"
                );
                f.assert_nothing_left(old);
            },
            |f, old| {
                f.c.bed.restore_link(old, "lan").unwrap();
                f.c.wait(old, GENEROUS, "ping monitor healthy again", |s| {
                    s["failed_links"].as_array().is_some_and(|l| l.is_empty())
                })
                .unwrap();
            },
        );
    }
    fx.report();
}

#[test]
fn restarted_agent_finds_its_group_running_and_keeps_it() {
    if !require_root("restarted_agent_finds_its_group_running_and_keeps_it") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    // The restarted agent keeps what runs only within the lease it
    // inherits, at most a deadtime: the `relaxed` profile (1 s), the one
    // for busy machines, since a debug build restarting on a loaded CI
    // machine once took longer than the default's 200 ms (the group was
    // then stopped, safely, and started again).
    let mut fx = Fx::start_shaped("agent restart", "", "relaxed");
    // The holder must not be the Raft leader: a restarted leader needs an
    // election before any new lease, which can outlast what is left of its
    // old one (then the guard stops the group and it is started again).
    let leader: usize = agents::leader(&fx.c.status(1).unwrap())
        .and_then(|l| l.strip_prefix('n').and_then(|n| n.parse().ok()))
        .unwrap();
    let old = leader % NODES + 1;
    tandem_cmd(
        &["move", "web", "--to", &format!("n{old}")],
        &fx.c.socket(1),
    );
    fx.settle();
    assert_eq!(fx.holder(), old);
    let pidfile = |f: &Fx| {
        std::fs::read_dir(
            f.c.config_path()
                .parent()
                .unwrap()
                .join(format!("state-n{old}/run")),
        )
        .unwrap()
        .flatten()
        .find(|e| e.file_name().to_string_lossy().ends_with(".pid"))
        .map(|e| std::fs::read_to_string(e.path()).unwrap())
        .unwrap()
    };
    let before = pidfile(&fx);
    let prober = fx.prober();
    std::thread::sleep(Duration::from_millis(300));
    let t = unix_ms();
    fx.c.bed.kill9(fx.c.pids[old - 1]).unwrap();
    fx.c.pids[old - 1] = fx.c.spawn_agent(old).unwrap();
    fx.c.wait(
        old,
        GENEROUS,
        "restarted agent holds a lease with web running here",
        |s| s["lease"]["held"] == true && running_on(s) == Some(old),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop().unwrap();
    let s = fx.c.status(old).unwrap();
    assert!(
        event_at(&s, "found_running", "web/service", t).is_some(),
        "probed first: {s:#}"
    );
    assert!(
        start_begun_at(&s, "web/service", t).is_none(),
        "must not restart: {}\nlogs:\n{}",
        s["events"],
        fx.c.logs()
    );
    assert_eq!(pidfile(&fx), before, "the same service process");
    let report = analyze(&log.records, CheckOptions::default());
    assert_eq!(report.dual_active().count(), 0);
    fx.gaps.push(
        report
            .kind(tandem_testbed::checker::ProbeKind::Udp)
            .max_gap_ms(),
    );
    fx.report();
}

fn tandem_cmd(args: &[&str], socket: &Path) -> String {
    let out = std::process::Command::new(TANDEM)
        .args(args)
        .arg("--socket")
        .arg(socket)
        .output()
        .unwrap();
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "tandem {args:?}: {text}");
    text
}

#[test]
fn operator_commands_standby_maintenance_failure_and_cleanup() {
    if !require_root("operator_commands_standby_maintenance_failure_and_cleanup") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fx::start("operator commands");
    let old = fx.holder();
    let sock = fx.c.socket(old);

    // Standby: the group leaves the node, and comes back only by policy.
    let t = tandem_cmd(&["node", "standby", &format!("n{old}")], &sock);
    assert!(t.contains("runs no group"), "{t}");
    let s = fx.c.status(old).unwrap();
    assert_ne!(running_on(&s), Some(old));
    assert!(s["standby"]
        .as_array()
        .unwrap()
        .iter()
        .any(|n| *n == format!("n{old}")));
    let t = tandem_cmd(&["node", "online", &format!("n{old}")], &sock);
    assert!(t.contains("may host groups again"), "{t}");

    // A service that dies is found by the resource check, restarted in
    // place, and the failure shows in status with its reason.
    let service_pid = |fx: &Fx| -> (usize, i32) {
        let holder = fx.holder();
        let pidfile =
            fx.c.config_path()
                .parent()
                .unwrap()
                .join(format!("state-n{holder}/run/web.service.pid"));
        let text = std::fs::read_to_string(&pidfile).unwrap();
        (
            holder,
            text.split_whitespace().next().unwrap().parse().unwrap(),
        )
    };
    let (holder, pid) = service_pid(&fx);
    // SAFETY: the service's own process group, started by the agent.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    fx.c.wait(
        holder,
        GENEROUS,
        "failure recorded and service running again",
        |s| {
            let g = web(s).unwrap();
            g["fail_counts"][format!("n{holder}")] == 1 && g["state"] == "running"
        },
    )
    .unwrap();
    let text = fx.c.status_text(holder).unwrap();
    assert!(
        text.contains("failed on n") && text.contains("not running"),
        "{text}"
    );
    let t = tandem_cmd(&["cleanup", "web"], &fx.c.socket(holder));
    assert!(t.contains("no failures recorded"), "{t}");

    // Maintenance: nothing is restarted any more, and status says so.
    fx.settle();
    let (holder, pid) = service_pid(&fx);
    let t = tandem_cmd(&["maintenance", "on", "web"], &fx.c.socket(holder));
    assert!(t.contains("unmanaged"), "{t}");
    let since = unix_ms();
    // SAFETY: as above.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    std::thread::sleep(Duration::from_secs(2));
    let s = fx.c.status(holder).unwrap();
    assert_eq!(web(&s).unwrap()["maintenance"], true);
    // Defect 8: a killed process no longer shows as running while nothing
    // checks it.
    assert!(
        web(&s).unwrap()["state"]
            .as_str()
            .is_some_and(|st| st.starts_with("unmanaged: not checked")),
        "{:#}",
        web(&s).unwrap()
    );
    assert!(
        start_begun_at(&s, "web/service", since).is_none(),
        "maintenance must not restart: {}",
        s["events"]
    );
    assert!(fx.c.status_text(holder).unwrap().contains("MAINTENANCE"));
    let t = tandem_cmd(&["maintenance", "off", "web"], &fx.c.socket(holder));
    assert!(t.contains("managed again"), "{t}");
    fx.c.wait(
        holder,
        GENEROUS,
        "web running again after maintenance",
        |s| running_on(s).is_some(),
    )
    .unwrap();
}

/// Issue 19: `tandem node remove` takes a node's vote away and `node add`
/// gives it back, on a running cluster under client load. Removing a
/// node that runs nothing leaves the group untouched (no stop, no gap);
/// removing the holder moves the group off it cleanly. Every node
/// agrees on the voters; never dual-active.
#[test]
fn node_remove_and_add_change_the_voters_under_client_load() {
    if !require_root("node_remove_and_add_change_the_voters_under_client_load") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let fx = Fx::start("node remove/add");
    let holder = fx.holder();
    let other = Fx::other(holder);
    let prober = fx.prober();
    std::thread::sleep(Duration::from_millis(300));
    let t0 = unix_ms();
    let voter_of = |s: &Value, n: usize| -> Option<bool> {
        if s["node"] == format!("n{n}") {
            return s["agreement"]["voter"].as_bool();
        }
        peer(s, &format!("n{n}"))["voter"].as_bool()
    };
    let agree = |n: usize, vote: bool, voters: u64| {
        for ask in 1..=NODES {
            fx.c.wait(ask, GENEROUS, "voters agree", |s| {
                voter_of(s, n) == Some(vote) && s["quorum"]["expected"] == voters
            })
            .unwrap_or_else(|e| panic!("n{ask}: {e:?}\nlogs:\n{}", fx.c.logs()));
        }
    };

    // A node that runs nothing: the group keeps running, untouched.
    let t = tandem_cmd(
        &["node", "remove", &format!("n{other}")],
        &fx.c.socket(holder),
    );
    assert!(t.contains("follows as a non-voter (2 voters)"), "{t}");
    agree(other, false, 2);
    let t = tandem_cmd(&["node", "add", &format!("n{other}")], &fx.c.socket(other));
    assert!(t.contains("votes and may host groups (3 voters)"), "{t}");
    agree(other, true, 3);
    let s = fx.c.status(holder).unwrap();
    assert_eq!(running_on(&s), Some(holder));
    assert_eq!(
        event_at(&s, "stopped", "web/vip", t0),
        None,
        "the group stopped on n{holder}: {}",
        s["events"]
    );
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    assert_eq!(report.dual_active().count(), 0);
    let untouched_gap = report
        .kind(tandem_testbed::checker::ProbeKind::Udp)
        .max_gap_ms();

    // The holder itself: its group moves away first, then it stops voting.
    let prober = fx.prober();
    let t = tandem_cmd(
        &["node", "remove", &format!("n{holder}")],
        &fx.c.socket(other),
    );
    assert!(
        t.contains("runs no group and follows as a non-voter"),
        "{t}"
    );
    agree(holder, false, 2);
    let new = fx.wait_moved(holder);
    let t = tandem_cmd(
        &["node", "add", &format!("n{holder}")],
        &fx.c.socket(holder),
    );
    assert!(t.contains("votes and may host groups"), "{t}");
    agree(holder, true, 3);
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    assert_eq!(report.dual_active().count(), 0);
    println!(
        "node remove/add: untouched group's largest gap {untouched_gap:.0} ms; \
         holder removed: group moved n{holder} -> n{new}, largest gap {:.0} ms; 0 dual-active",
        report
            .kind(tandem_testbed::checker::ProbeKind::Udp)
            .max_gap_ms()
    );
}

#[test]
fn address_follows_the_interface_preference_list() {
    if !require_root("address_follows_the_interface_preference_list") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let extra = r#"
[[group]]
name = "paths"
preferred = ["n1"]

[[group.resource]]
name = "vip"
kind = "ip"
address = "10.77.1.100/24"
interfaces = ["lan", "sync"]
"#;
    let shape = ClusterShape {
        extra: extra.into(),
        ..ClusterShape::nodes(NODES)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    let on = |iface: &str| {
        let t0 = Instant::now();
        loop {
            let a = c
                .bed
                .exec(1, "ip", &["-o", "addr", "show", "dev", iface])
                .unwrap();
            if a.contains("10.77.1.100") {
                return t0.elapsed();
            }
            assert!(
                t0.elapsed() < GENEROUS,
                "10.77.1.100 never on {iface}:\n{}",
                c.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    };
    on("lan");
    c.bed.cut_link(1, "lan").unwrap();
    let moved = on("sync");
    println!(
        "address moved to sync {} ms after lan lost carrier",
        moved.as_millis()
    );
    c.bed.restore_link(1, "lan").unwrap();
    on("lan");
    let s = c.status(1).unwrap();
    assert!(
        s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["event"]["kind"] == "resource_note"
                && e["event"]["text"]
                    .as_str()
                    .unwrap()
                    .contains("interface preference")),
        "{}",
        s["events"]
    );
}

/// The README's main command, end to end.
#[test]
fn demo_fails_over_and_back() {
    if !require_root("demo_fails_over_and_back") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let out = std::process::Command::new(TANDEM)
        .args(["demo", "--fast"])
        .output()
        .unwrap();
    let text =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{text}");
    for want in [
        "-> served by n1",
        "0 dual-active instants (",
        "web back on n1",
        "done; tearing the testbed down",
    ] {
        assert!(text.contains(want), "missing {want:?} in:\n{text}");
    }
    assert!(
        text.contains("-> served by n2") || text.contains("-> served by n3"),
        "{text}"
    );
}

/// Two nodes and a witness (the appliance pair): the survivor holds its
/// lease with the witness's echoes and takes the group over.
#[test]
fn two_nodes_and_a_witness_fail_over() {
    if !require_root("two_nodes_and_a_witness_fail_over") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let shape = ClusterShape {
        witness: true,
        extra: agents::web_group_config(Path::new(TANDEM), "manual", 2, 8080, 7000),
        ..ClusterShape::nodes(2)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    for n in 1..=2 {
        c.wait(n, GENEROUS, "online, quorate, web running", |s| {
            all_online(s) && s["quorum"]["quorate"] == true && running_on(s).is_some()
        })
        .unwrap();
    }
    let mut gaps = Vec::new();
    for rep in 0..reps().min(5) {
        let old = running_on(&c.status(1).unwrap()).unwrap();
        let other = 3 - old;
        let target = SocketAddr::new(c.bed.vip("lan").into(), 7000);
        let prober = Prober::start(&c.bed.client_ns(), ProbeSpec::new(target, 60_000)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        c.bed.cut_node(old).unwrap();
        c.wait(other, GENEROUS, "the survivor runs web", |s| {
            running_on(s) == Some(other)
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(500));
        let log = prober.stop().unwrap();
        let report = analyze(&log.records, CheckOptions::default());
        assert_eq!(report.dual_active().count(), 0, "rep {rep}");
        gaps.push(
            report
                .kind(tandem_testbed::checker::ProbeKind::Udp)
                .max_gap_ms(),
        );
        // The cut node has no quorum and ran its group down.
        let s = c.status(old).unwrap();
        assert_eq!(s["quorum"]["quorate"], false);
        c.bed.restore_node(old).unwrap();
        for n in 1..=2 {
            c.wait(n, GENEROUS, "both online again", |s| {
                all_online(s) && s["quorum"]["quorate"] == true
            })
            .unwrap();
        }
    }
    println!("two nodes + witness: crash outages (ms) {gaps:?}, 0 dual-active");
}

/// `tandem fence` runs Debian's fence_dummy through the leader: success is
/// recorded with the device's output, a failing device is retried as
/// configured and its error shows in status, secrets never do.
#[test]
fn operator_fence_drives_fence_dummy_and_records_history() {
    if !require_root("operator_fence_drives_fence_dummy_and_records_history") {
        return;
    }
    if !Path::new("/usr/sbin/fence_dummy").exists() {
        println!("skipped: fence_dummy not installed (scripts/install-deps installs fence-agents)");
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let status_file = dir.path().join("n3.status");
    std::fs::write(&status_file, "on").unwrap();
    let extra = format!(
        r#"
[[fence_device]]
name = "dummy"
agent = "/usr/sbin/fence_dummy"
hosts = {{ n3 = "n3" }}
retries = 1
options = {{ type = "file", status_file = "{}", password = "not-a-real-password" }}

[[fence_device]]
name = "broken"
agent = "/usr/sbin/fence_dummy"
hosts = {{ n2 = "n2" }}
retries = 1
options = {{ type = "fail", power_timeout = "1", password = "not-a-real-password" }}
"#,
        status_file.display()
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(NODES)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    for n in 1..=NODES {
        c.wait(n, GENEROUS, "settled", |s| {
            all_online(s) && s["quorum"]["quorate"] == true
        })
        .unwrap();
    }
    let t = tandem_cmd(&["fence", "n3", "--yes"], &c.socket(1));
    assert!(
        t.contains("n3 fenced") && t.contains("dummy off: exit 0"),
        "{t}"
    );
    assert_eq!(std::fs::read_to_string(&status_file).unwrap(), "off");

    let out = std::process::Command::new(TANDEM)
        .args(["fence", "n2", "--yes", "--socket"])
        .arg(c.socket(1))
        .output()
        .unwrap();
    let t = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(!out.status.success(), "{t}");
    assert!(
        t.contains("FENCING n2 FAILED") && t.matches("attempt ").count() == 2,
        "{t}"
    );
    let status = c.status_text(2).unwrap();
    assert!(
        status.contains("fence history") && status.contains("broken off: exit 1"),
        "{status}"
    );
    assert!(!status.contains("not-a-real-password") && !c.logs().contains("not-a-real-password"));
    // Without --yes and without a terminal, nothing is fenced.
    let out = std::process::Command::new(TANDEM)
        .args(["fence", "n3", "--socket"])
        .arg(c.socket(1))
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("pass --yes"));
}

fn testbed_fence_agent(dir: &Path) -> std::path::PathBuf {
    agents::testbed_fence_script(dir, Path::new(TANDEM)).unwrap()
}

/// Issue 15, defect 2: SIGTERM to the agent holding the group (a clean
/// shutdown) made the leader fence it at once, and with a failing device
/// the group stayed down. Now its leave says what it still runs (nothing)
/// and the leader takes that as proof: every repetition moves the group
/// without a fence, even though the device fails whenever it is asked.
#[test]
fn clean_stop_of_the_holder_is_not_fenced() {
    if !require_root("clean_stop_of_the_holder_is_not_fenced") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let agent = testbed_fence_agent(dir.path());
    let fail = dir.path().join("fail");
    std::fs::write(&fail, "").unwrap();
    let extra = format!(
        r#"
[[fence_device]]
name = "power"
agent = "{}"
hosts = {{ n1 = "n1", n2 = "n2", n3 = "n3" }}
retries = 0
timeout_ms = 10000
options = {{ testbed = "@TESTBED_ID@", fail_while = "{}" }}
"#,
        agent.display(),
        fail.display(),
    );
    let mut fx = Fx::start_with("clean stop (SIGTERM) of the holder, fencing on", &extra);
    for rep in 0..reps() {
        fx.rep(
            rep,
            |f, old| {
                f.c.bed
                    .stop_gracefully(f.c.pids[old - 1], Duration::from_secs(20))
                    .unwrap();
            },
            |f, old| f.assert_nothing_left(old),
            |f, old| {
                let pid = f.c.spawn_agent(old).unwrap();
                f.c.pids[old - 1] = pid;
            },
        );
    }
    let mut fences = 0;
    for n in 1..=NODES {
        let s = fx.c.status(n).unwrap();
        fences += s["fences"].as_array().map_or(0, Vec::len);
    }
    let logs = fx.c.logs();
    let attempts = logs.matches("through its fence devices").count();
    println!("clean stops: {fences} fences in the record, {attempts} fence attempts logged");
    assert_eq!(fences, 0, "{logs}");
    assert_eq!(attempts, 0, "{logs}");
    fx.report();
}

/// Issue 15, defect 7: a node still heard whose stop fails was never
/// fenced, though a device listed it: the group stayed down until someone
/// intervened. Now the leader fences it (Pacemaker's on-fail for stops),
/// then starts the group elsewhere.
#[test]
fn failed_stop_on_a_node_a_fence_device_lists_is_fenced_then_recovered() {
    if !require_root("failed_stop_on_a_node_a_fence_device_lists_is_fenced_then_recovered") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let agent = testbed_fence_agent(dir.path());
    let fail_stop = dir.path().join("fail-stop");
    let state = dir.path().join("stuck");
    std::fs::create_dir(&state).unwrap();
    let script = dir.path().join("stuck.sh");
    // An LSB-style script whose stop fails while `fail-stop` exists.
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nf={}/$TANDEM_NODE\ncase \"$1\" in\n  start) touch \"$f\" ;;\n  stop) [ -e {} ] && {{ echo 'cannot stop' >&2; exit 1; }}; rm -f \"$f\" ;;\n  status) [ -e \"$f\" ] || exit 3 ;;\nesac\n",
            state.display(),
            fail_stop.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let extra = format!(
        r#"
[[fence_device]]
name = "power"
agent = "{}"
hosts = {{ n1 = "n1", n2 = "n2", n3 = "n3" }}
retries = 0
timeout_ms = 10000
options = {{ testbed = "@TESTBED_ID@" }}

[[group]]
name = "web"
preferred = ["n1", "n2", "n3"]
failback = "manual"

[[group.resource]]
name = "stuck"
kind = "exec"
script = "{}"

[[group.resource]]
name = "service"
kind = "process"
command = ["{}", "demo-service", "--port", "8080", "--probe-port", "7000"]

[[group.resource]]
name = "vip"
kind = "ip"
address = "10.77.1.100/24"
"#,
        agent.display(),
        script.display(),
        TANDEM
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(NODES)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    for n in 1..=NODES {
        c.wait(n, GENEROUS, "settled", |s| {
            all_online(s) && s["quorum"]["quorate"] == true && running_on(s).is_some()
        })
        .unwrap();
    }
    let old = running_on(&c.status(1).unwrap()).unwrap();
    let ask = old % NODES + 1;
    let target = SocketAddr::new(c.bed.vip("lan").into(), 7000);
    let prober = Prober::start(&c.bed.client_ns(), ProbeSpec::new(target, 60_000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    std::fs::write(&fail_stop, "").unwrap();
    let out = std::process::Command::new(TANDEM)
        .args(["failover", "web", "--socket"])
        .arg(c.socket(ask))
        .output()
        .unwrap();
    let said = String::from_utf8_lossy(&out.stdout).trim().to_string();
    println!("failover: {said}");
    assert!(said.contains(&format!("n{old} was fenced first")), "{said}");
    c.wait(
        ask,
        GENEROUS,
        "web running elsewhere after fencing the node whose stop failed",
        |s| running_on(s).is_some_and(|n| n != old),
    )
    .unwrap();
    std::fs::remove_file(&fail_stop).unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    let dual = report.dual_active().count();
    let s = c.status(ask).unwrap();
    let fences: Vec<&Value> = s["fences"].as_array().unwrap().iter().collect();
    println!(
        "failed stop on n{old}: {} fence(s) {:?}, outage {:.0} ms, {dual} dual-active",
        fences.len(),
        fences
            .iter()
            .map(|f| (f["node"].clone(), f["ok"].clone()))
            .collect::<Vec<_>>(),
        report
            .kind(tandem_testbed::checker::ProbeKind::Udp)
            .max_gap_ms()
    );
    assert_eq!(dual, 0);
    assert!(
        fences
            .iter()
            .any(|f| f["ok"] == true && f["node"] == format!("n{old}")),
        "{s:#}"
    );
    let logs = c.logs();
    assert!(
        logs.contains("stop failed") || logs.contains("cannot stop"),
        "the failed stop is logged:\n{logs}"
    );
}

/// Unmounts a tmpfs when dropped (lazily: a process may still hold it).
struct Mounted(std::path::PathBuf);

impl Drop for Mounted {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.0)
            .status();
    }
}

/// A 3-node cluster whose n1 (holding `web`) keeps its state on an 8 MiB
/// tmpfs; a prober is running.
fn small_state_dir_cluster() -> (AgentCluster, Mounted, std::path::PathBuf, Prober) {
    let shape = ClusterShape {
        extra: agents::web_group_config(Path::new(TANDEM), "manual", NODES, 8080, 7000),
        ..ClusterShape::nodes(NODES)
    };
    let mut c = AgentCluster::prepare(TANDEM, &shape).unwrap();
    let dir = c.state_dir(1);
    std::fs::create_dir_all(&dir).unwrap();
    let st = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", "size=8m,mode=0700", "tandem-full-test"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(st.success(), "mounting a tmpfs on {}", dir.display());
    let mounted = Mounted(dir.clone());
    c.start_members().unwrap();
    for n in 1..=NODES {
        c.wait(n, GENEROUS, "settled", |s| {
            all_online(s) && s["quorum"]["quorate"] == true && running_on(s) == Some(1)
        })
        .unwrap();
    }
    let target = SocketAddr::new(c.bed.vip("lan").into(), 7000);
    let prober = Prober::start(&c.bed.client_ns(), ProbeSpec::new(target, 60_000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    (c, mounted, dir, prober)
}

/// Fills the filesystem of `dir` to the last block.
fn fill(dir: &Path) {
    let _ = std::process::Command::new("dd")
        .args(["if=/dev/zero", "bs=64k"])
        .arg(format!("of={}", dir.join("fill").display()))
        .stderr(std::process::Stdio::null())
        .status();
}

/// The guard's side of issue 15, defect 6: the agent is killed (-9) and
/// the state directory is full, so the guard, acting at the lease end,
/// cannot clear the lease file. It acts once, says so once, and does not
/// loop (it killed the service every 10 ms before).
#[test]
fn guard_acts_once_when_it_cannot_clear_a_full_state_directorys_lease_file() {
    if !require_root("guard_acts_once_when_it_cannot_clear_a_full_state_directorys_lease_file") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (c, _mounted, dir, prober) = small_state_dir_cluster();
    c.bed.kill9(c.pids[0]).unwrap();
    fill(&dir);
    c.wait(2, GENEROUS, "web moved off n1", |s| {
        running_on(s).is_some_and(|n| n != 1)
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(1));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    let dual = report.dual_active().count();
    let logs = c.logs();
    let acts = logs
        .matches("lease ended with resources still here")
        .count();
    let cannot = logs.matches("cannot update the lease file").count();
    println!("guard with a full state directory: acted {acts}, said it cannot update the file {cannot}, {dual} dual-active");
    assert_eq!(dual, 0);
    assert_eq!(acts, 1, "{logs}");
    assert!(cannot <= 1, "{logs}");
}

/// Issue 15, defect 6: with the state directory's filesystem full, the
/// lease file could not be renewed; the guard took that for "agent stuck",
/// removed the address and SIGKILLed the service every 10 ms, and clients
/// saw gaps of 1.4 s, twice, before the group moved. Now the agent counts
/// its lease as lost, stops its groups and leaves cleanly (the group moves
/// at once), and exits with an error saying what to do; the guard never
/// has to act, and would not loop if it had to.
#[test]
fn full_state_directory_moves_the_group_cleanly_and_the_agent_exits() {
    if !require_root("full_state_directory_moves_the_group_cleanly_and_the_agent_exits") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let (c, _mounted, dir, prober) = small_state_dir_cluster();
    fill(&dir);
    c.wait(2, GENEROUS, "web moved off n1", |s| {
        running_on(s).is_some_and(|n| n != 1)
    })
    .unwrap();
    let t0 = Instant::now();
    while c.bed.is_running(c.pids[0]) {
        assert!(t0.elapsed() < GENEROUS, "n1's agent did not exit");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    let dual = report.dual_active().count();
    let gap = report
        .kind(tandem_testbed::checker::ProbeKind::Udp)
        .max_gap_ms();
    let logs = c.logs();
    let guard_acts = logs
        .matches("lease ended with resources still here")
        .count();
    let said = logs
        .lines()
        .find(|l| l.contains("lease is lost"))
        .unwrap_or_else(|| panic!("the agent did not say why it left:\n{logs}"));
    println!("n1: {said}");
    println!(
        "full state directory: {dual} dual-active, longest gap {gap:.0} ms, guard acted {guard_acts} times"
    );
    assert_eq!(dual, 0);
    assert_eq!(guard_acts, 0, "{logs}");
    assert!(said.contains("Free space in"), "{said}");
    assert!(gap < 2_000.0, "{gap} ms");
}

/// With a fence device, a lost node is fenced (really: the testbed device
/// cuts its ports and kills its processes) before its group starts
/// elsewhere. While the device fails, the group stays stopped, the fence is
/// retried and the error shows in status; once it works, the group starts.
#[test]
fn lost_node_is_fenced_before_its_group_starts_elsewhere() {
    if !require_root("lost_node_is_fenced_before_its_group_starts_elsewhere") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let agent = testbed_fence_agent(dir.path());
    let fail = dir.path().join("fail");
    let extra = format!(
        r#"
[[fence_device]]
name = "power"
agent = "{}"
hosts = {{ n1 = "n1", n2 = "n2", n3 = "n3" }}
retries = 0
timeout_ms = 10000
options = {{ testbed = "@TESTBED_ID@", fail_while = "{}" }}
{}"#,
        agent.display(),
        fail.display(),
        agents::web_group_config(Path::new(TANDEM), "manual", NODES, 8080, 7000)
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(NODES)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    for n in 1..=NODES {
        c.wait(n, GENEROUS, "settled", |s| {
            all_online(s) && s["quorum"]["quorate"] == true && running_on(s).is_some()
        })
        .unwrap();
    }
    let old = running_on(&c.status(1).unwrap()).unwrap();
    let ask = old % NODES + 1;
    assert!(c.status_text(ask).unwrap().contains("recovery: fencing"));
    // The device fails at first.
    std::fs::write(&fail, "").unwrap();
    let target = SocketAddr::new(c.bed.vip("lan").into(), 7000);
    let prober = Prober::start(&c.bed.client_ns(), ProbeSpec::new(target, 60_000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    // A partition: the node lives on and the client still reaches it.
    for o in (1..=NODES).filter(|o| *o != old) {
        c.bed.drop_one_way(old, o).unwrap();
        c.bed.drop_one_way(o, old).unwrap();
    }
    c.wait(ask, GENEROUS, "the fence failed and is shown", |s| {
        s["fences"]
            .as_array()
            .is_some_and(|f| f.iter().any(|e| e["ok"] == false))
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(2));
    let s = c.status(ask).unwrap();
    assert!(
        running_on(&s).is_none(),
        "never started while the fence fails: {:#}",
        s["groups"]
    );
    let text = c.status_text(ask).unwrap();
    assert!(
        text.contains("FENCING FAILED") && text.contains("failing on purpose"),
        "{text}"
    );
    // The device works again: the next retry fences, the group starts.
    std::fs::remove_file(&fail).unwrap();
    c.wait(
        ask,
        Duration::from_secs(30),
        "web running elsewhere after the fence",
        |s| running_on(s).is_some_and(|n| n != old),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    assert_eq!(
        report.dual_active().count(),
        0,
        "{:?}",
        report.dual_active().collect::<Vec<_>>()
    );
    let s = c.status(ask).unwrap();
    assert!(
        s["fences"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["ok"] == true && e["node"] == format!("n{old}")),
        "{:#}",
        s["fences"]
    );
    // Really fenced: nothing of the old node runs any more.
    assert!(
        !c.bed.is_running(c.pids[old - 1]),
        "the fenced node's agent is gone"
    );
    assert!(c.bed.node_pids(old).unwrap().is_empty());
    println!(
        "fenced partition: outage {:.0} ms (including the failing fence), 0 dual-active",
        report
            .kind(tandem_testbed::checker::ProbeKind::Udp)
            .max_gap_ms()
    );
}

/// Two nodes without a witness (`two_node`), partitioned 20 times: each
/// side fences the other, the device of the preferred node n1 carries a
/// delay, so n1 wins every race: exactly one node keeps the group, the
/// other is fenced (its processes killed), and back from the fence it does
/// not fence the survivor (wait_for_all).
#[test]
fn two_nodes_partitioned_exactly_one_keeps_the_group_the_other_is_fenced() {
    if !require_root("two_nodes_partitioned_exactly_one_keeps_the_group_the_other_is_fenced") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let dir = tempfile::tempdir().unwrap();
    let agent = testbed_fence_agent(dir.path());
    let extra = agents::two_node_fence_config(&agent, 0)
        + &agents::web_group_config(Path::new(TANDEM), "manual", 2, 8080, 7000);
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(2)
    };
    let mut c = AgentCluster::start(TANDEM, &shape).unwrap();
    let settle = |c: &AgentCluster| {
        for n in 1..=2 {
            c.wait(n, GENEROUS, "both online, quorate, web on n1", |s| {
                all_online(s) && s["quorum"]["quorate"] == true && running_on(s) == Some(1)
            })
            .unwrap();
        }
    };
    settle(&c);
    let target = SocketAddr::new(c.bed.vip("lan").into(), 7000);
    let reps = reps() * 2;
    let mut gaps = Vec::new();
    for rep in 0..reps {
        let prober = Prober::start(&c.bed.client_ns(), ProbeSpec::new(target, 60_000)).unwrap();
        std::thread::sleep(Duration::from_millis(300));
        c.bed.drop_one_way(1, 2).unwrap();
        c.bed.drop_one_way(2, 1).unwrap();
        c.wait(1, GENEROUS, "n1 fenced n2 and runs web", |s| {
            peer(s, "n2")["state"] == "fenced" && running_on(s) == Some(1)
        })
        .unwrap();
        std::thread::sleep(Duration::from_millis(300));
        let log = prober.stop().unwrap();
        let report = analyze(&log.records, CheckOptions::default());
        assert_eq!(report.dual_active().count(), 0, "rep {rep}");
        gaps.push(
            report
                .kind(tandem_testbed::checker::ProbeKind::Udp)
                .max_gap_ms(),
        );
        assert!(
            !c.bed.is_running(c.pids[1]),
            "rep {rep}: n2's agent was fenced"
        );
        assert!(
            c.bed.node_pids(2).unwrap().is_empty(),
            "rep {rep}: nothing of n2 runs"
        );
        // Power n2 back on, heal, restart its agent: it waits to see n1
        // and does not fence it.
        tandem_cmd(&["fence", "n2", "--on"], &c.socket(1));
        c.bed.heal_one_way(1, 2).unwrap();
        c.bed.heal_one_way(2, 1).unwrap();
        c.pids[1] = c.spawn_agent(2).unwrap();
        settle(&c);
    }
    let s = c.status(1).unwrap();
    let fences = s["fences"].as_array().unwrap();
    assert!(
        fences.iter().all(|f| f["node"] == "n2"),
        "only n2 was ever fenced: {fences:?}"
    );
    println!(
        "two_node partitions: {reps} times n1 kept the group and fenced n2; outages (ms) {gaps:?}"
    );
}

/// The watchdog (a FIFO stands in for /dev/watchdog: this kernel has no
/// watchdog driver): every agent feeds it; the node holding a group whose
/// stop fails stops feeding once it is cut from the quorum past its lease
/// and the stop grace; it feeds again once the stop succeeds.
#[test]
fn watchdog_starves_while_a_stop_fails_without_quorum() {
    if !require_root("watchdog_starves_while_a_stop_fails_without_quorum") {
        return;
    }
    let _s = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let dir = tempfile::tempdir().unwrap();
    let fifo = dir.path().join("watchdog");
    let c_path = std::ffi::CString::new(fifo.to_string_lossy().as_bytes()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0);
    // Held open for the whole test: without a reader, feeds fail.
    let _reader = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open(&fifo)
        .unwrap();
    let stuck = dir.path().join("stuck");
    let script = dir.path().join("db");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nf={d}/$TANDEM_NODE.running\ncase \"$1\" in\n  start) touch \"$f\" ;;\n  stop) [ -e {stuck} ] && {{ echo stuck; exit 1; }}; rm -f \"$f\" ;;\n  status) [ -e \"$f\" ] || exit 3 ;;\nesac\n",
            d = dir.path().display(),
            stuck = stuck.display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        r#"
[watchdog]
device = "{}"
timeout_s = 4
stop_grace_ms = 1000

[[group]]
name = "web"
preferred = ["n1", "n2", "n3"]

[[group.resource]]
name = "db"
kind = "exec"
script = "{}"
"#,
        fifo.display(),
        script.display()
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(NODES)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    let fed = |s: &Value| -> Option<(String, u64)> {
        let w = &s["watchdog"];
        Some((
            w["state"].as_str()?.to_string(),
            w["last_fed_ms_ago"].as_u64()?,
        ))
    };
    for n in 1..=NODES {
        c.wait(n, GENEROUS, "settled, web on n1, watchdog armed", |s| {
            all_online(s)
                && running_on(s) == Some(1)
                && fed(s).is_some_and(|(st, ago)| st == "armed" && ago <= 1_500)
        })
        .unwrap();
    }
    std::fs::write(&stuck, "").unwrap();
    c.bed.cut_node(1).unwrap();
    c.wait(1, GENEROUS, "n1 stops feeding its watchdog", |s| {
        fed(s).is_some_and(|(st, _)| st == "starving")
    })
    .unwrap();
    std::thread::sleep(Duration::from_secs(3));
    let s1 = c.status(1).unwrap();
    let (state, ago) = fed(&s1).unwrap();
    assert!(state == "starving" && ago >= 3_000, "{:#}", s1["watchdog"]);
    let text = c.status_text(1).unwrap();
    assert!(
        text.contains("starving") && text.contains("resources still active"),
        "{text}"
    );
    assert!(
        agents::event_time(&s1, 0, |e| e["kind"] == "watchdog_starving").is_some(),
        "{:#}",
        s1["events"]
    );
    // The others keep feeding theirs.
    for n in 2..=NODES {
        let (state, ago) = fed(&c.status(n).unwrap()).unwrap();
        assert!(state == "armed" && ago <= 1_500, "n{n}: {state} {ago}");
    }
    // The stop succeeds at last: n1 feeds again.
    std::fs::remove_file(&stuck).unwrap();
    c.wait(1, GENEROUS, "n1 feeds its watchdog again", |s| {
        fed(s).is_some_and(|(st, ago)| st == "armed" && ago <= 1_500)
    })
    .unwrap();
    c.bed.restore_node(1).unwrap();
    println!("watchdog: n1 starved {ago} ms+ while its stop failed without quorum, fed again once stopped; n2, n3 fed throughout");
}
