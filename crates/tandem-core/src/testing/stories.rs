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
}

#[test]
fn a_crashed_nodes_group_starts_on_another_node_after_its_lease() {
    let mut c = Cluster::new(3, &["web"]);
    c.run_for(SETTLE_MS);
    let first = c.placed_on("web").expect("placed");
    c.power_off(first);
    // Not before the lease it held could have ended.
    c.run_for(super::TIMING.deadtime_ms / 2);
    assert!(c.running_on("web").is_empty(), "{:?}", c.running_on("web"));
    c.run_for(SETTLE_MS);
    let now = c.running_on("web");
    assert_eq!(now.len(), 1, "{now:?}");
    assert_ne!(now[0], first);
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
    c.restart_agent(leader);
    // Every few milliseconds for a while: never stopped, not even briefly.
    for _ in 0..300 {
        c.run_for(10);
        for (g, n) in &on_followers {
            assert_eq!(c.running_on(g), vec![*n], "{g} at {} ms", c.now_ms());
        }
    }
}

/// A restarted agent within its predecessor's lease probes, finds its
/// group running, and keeps it: no stop, no second start.
#[test]
fn a_restarted_agent_keeps_its_running_group_without_restarting_it() {
    let mut c = Cluster::new(3, &["web"]);
    c.run_for(SETTLE_MS);
    let n = c.placed_on("web").expect("placed");
    c.restart_agent(n);
    for _ in 0..300 {
        c.run_for(10);
        assert_eq!(c.running_on("web"), vec![n], "at {} ms", c.now_ms());
    }
    assert!(c.runner_says_running(n, "web"));
}

#[test]
fn a_node_cut_off_stops_its_group_before_another_starts_it() {
    let mut c = Cluster::new(3, &["web"]);
    c.run_for(SETTLE_MS);
    let first = c.placed_on("web").expect("placed");
    c.set_cut(first, true);
    let mut moved = false;
    for _ in 0..1_000 {
        c.run_for(10);
        let on = c.running_on("web");
        assert!(on.len() <= 1, "dual-active at {} ms: {on:?}", c.now_ms());
        if on.len() == 1 && on[0] != first {
            moved = true;
            break;
        }
    }
    assert!(moved, "the group never moved off the cut node");
}
