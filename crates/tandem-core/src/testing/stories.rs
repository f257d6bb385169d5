//! Stories: how the cluster behaves, told through [`Cluster`].

use super::Cluster;

/// Long enough for a cluster to elect a leader and place its groups.
const SETTLE_MS: u64 = 5_000;

#[test]
fn a_group_is_placed_on_one_node_and_runs_there_only() {
    let mut c = Cluster::new(3, &["web", "db"]);
    c.run_for(SETTLE_MS);
    for g in ["web", "db"] {
        let n = c.placed_on(g).unwrap_or_else(|| panic!("{g} not placed"));
        assert_eq!(c.running_on(g), vec![n], "{g}");
    }
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
}

#[test]
fn a_crashed_nodes_group_starts_on_another_node_after_its_lease() {
    let mut c = Cluster::new(3, &["web"]);
    c.run_for(SETTLE_MS);
    let first = c.placed_on("web").expect("placed");
    let crashed_at = c.now_ms();
    c.power_off(first);
    c.run_for(SETTLE_MS);
    let now = c.running_on("web");
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], first);
    // Not before the lease it held could have ended.
    let started = c.actions_on(now[0], "web", crashed_at);
    assert!(
        started
            .first()
            .is_some_and(|(t, start)| *start && *t >= crashed_at + super::TIMING.deadtime_ms),
        "{started:?}"
    );
}

/// Issue 14 ("a leader restart cut services on other nodes"): restarting
/// the leader's agent must not stop a group running on a follower.
#[test]
fn a_leader_restart_leaves_the_followers_groups_running() {
    let mut c = Cluster::new(3, &["web", "db"]);
    c.run_for(SETTLE_MS);
    let leader = c.leader().expect("a leader");
    let on_followers: Vec<(&str, usize)> = ["web", "db"]
        .into_iter()
        .filter_map(|g| c.placed_on(g).filter(|n| *n != leader).map(|n| (g, n)))
        .collect();
    let restarted_at = c.now_ms();
    c.restart_agent(leader);
    c.run_for(3_000);
    for (g, n) in &on_followers {
        // Not stopped, not even for a moment between looks.
        assert_eq!(
            c.actions_on(*n, g, restarted_at),
            vec![],
            "{g} on n{}",
            n + 1
        );
        assert_eq!(c.running_on(g), vec![*n], "{g}");
    }
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
}

/// A restarted agent within its predecessor's lease probes, finds its
/// group running, and keeps it: no stop, no second start.
#[test]
fn a_restarted_agent_keeps_its_running_group_without_restarting_it() {
    let mut c = Cluster::new(3, &["web"]);
    c.run_for(SETTLE_MS);
    let n = c.placed_on("web").expect("placed");
    let restarted_at = c.now_ms();
    c.restart_agent(n);
    c.run_for(3_000);
    assert_eq!(c.actions_on(n, "web", restarted_at), vec![]);
    assert_eq!(c.running_on("web"), vec![n]);
    assert!(c.runner_says_running(n, "web"));
}

#[test]
fn a_node_cut_off_stops_its_group_before_another_starts_it() {
    let mut c = Cluster::new(3, &["web"]);
    c.run_for(SETTLE_MS);
    let first = c.placed_on("web").expect("placed");
    let cut_at = c.now_ms();
    c.set_cut(first, true);
    c.run_for(SETTLE_MS);
    let on = c.running_on("web");
    assert!(on.len() == 1 && on[0] != first, "{on:?}");
    let stopped = c.actions_on(first, "web", cut_at);
    let started = c.actions_on(on[0], "web", cut_at);
    assert!(
        matches!((stopped.first(), started.first()), (Some((s, false)), Some((t, true))) if s < t),
        "stop {stopped:?} before start {started:?}"
    );
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
}
