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

mod on_fail {
    //! Each `on_fail` policy, from a resource that dies on the node that
    //! runs its group to what the whole cluster does about it.

    use super::{Cluster, SETTLE_MS};
    use crate::agreement::Intent;
    use crate::config::OnFail;
    use crate::member::Request;

    /// A story's cluster with `policy` on its group's resource, settled
    /// with the group on the leader or (moved there) on a follower, and the
    /// node that runs it. Every story runs both ways: a failure on a
    /// follower reaches the leader over the network, one on the leader
    /// does not.
    fn settled(c: &mut Cluster, group: &str, policy: OnFail, on_leader: bool) -> usize {
        c.set_on_fail(group, policy);
        c.run_for(SETTLE_MS);
        let leader = c.leader().expect("a leader");
        let n = c.placed_on(group).expect("placed");
        if (n == leader) != on_leader {
            let to = if on_leader { leader } else { (leader + 1) % 3 };
            c.request(
                leader,
                Request::Move {
                    group: group.into(),
                    node: Some(format!("n{}", to + 1)),
                },
            );
            c.run_for(SETTLE_MS);
        }
        let n = c.placed_on(group).expect("placed");
        assert_eq!(n == leader, on_leader, "placed where the story wants it");
        assert_eq!(c.running_on(group), vec![n]);
        n
    }

    fn leader_record(c: &Cluster) -> crate::agreement::Record {
        let l = c.leader().expect("a leader");
        c.record(l).expect("its record").clone()
    }

    #[test]
    fn move_takes_the_group_to_another_node_at_the_first_failure() {
        for on_leader in [true, false] {
            let mut c = Cluster::new(3, &["web"]);
            let first = settled(&mut c, "web", OnFail::Move, on_leader);
            let t = c.now_ms();
            c.resource_dies(first, "web");
            c.run_for(3_000);
            let now = c.running_on("web");
            assert_eq!(now.len(), 1, "{now:?}");
            assert_ne!(now[0], first);
            assert!(
                c.actions_on(first, "web", t)
                    .iter()
                    .all(|(_, start)| !start),
                "never started again where it failed: {:?}",
                c.actions_on(first, "web", t)
            );
            assert_eq!(
                leader_record(&c).fail_count("web", &format!("n{}", first + 1)),
                3
            );
            assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
        }
    }

    #[test]
    fn fence_powers_the_node_off_and_the_group_starts_elsewhere_only_after() {
        // On a follower. On the leader, the leader fences itself, and the
        // next leader, which never heard of that fence, fences the node
        // again before the group may start (safe, one fence slower; open).
        {
            let on_leader = false;
            let mut c = Cluster::with_fencing(3, &["web"]);
            let first = settled(&mut c, "web", OnFail::Fence, on_leader);
            let t = c.now_ms();
            c.resource_dies(first, "web");
            c.run_for(4_000);
            let fenced = c.fenced().to_vec();
            assert_eq!(fenced.iter().map(|f| f.1).collect::<Vec<_>>(), vec![first]);
            assert!(!c.is_on(first));
            let now = c.running_on("web");
            assert_eq!(now.len(), 1, "{now:?}");
            let started = c.actions_on(now[0], "web", t);
            assert!(
                started
                    .first()
                    .is_some_and(|(at, start)| *start && *at >= fenced[0].0),
                "started {started:?}, fenced {fenced:?}"
            );
            // Frozen where it failed: neither stopped nor started there.
            assert_eq!(c.actions_on(first, "web", t), vec![]);
            assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
        }
    }

    #[test]
    fn block_leaves_the_group_alone_everywhere_until_cleanup() {
        for on_leader in [true, false] {
            let mut c = Cluster::new(3, &["web"]);
            let first = settled(&mut c, "web", OnFail::Block, on_leader);
            let t = c.now_ms();
            c.resource_dies(first, "web");
            c.run_for(3_000);
            let record = leader_record(&c);
            assert!(record.has_intent("web", Intent::Blocked));
            assert_eq!(c.placed_on("web"), Some(first), "not moved");
            assert_eq!(c.running_on("web"), Vec::<usize>::new(), "not restarted");
            for n in 0..3 {
                assert_eq!(c.actions_on(n, "web", t), vec![], "n{} touched it", n + 1);
            }
            let l = c.leader().expect("a leader");
            c.request(
                l,
                Request::Cleanup {
                    group: "web".into(),
                },
            );
            c.run_for(3_000);
            assert!(!leader_record(&c).has_intent("web", Intent::Blocked));
            assert_eq!(c.running_on("web").len(), 1, "managed again after cleanup");
            assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
        }
    }

    #[test]
    fn standby_empties_the_node_of_every_group() {
        for on_leader in [true, false] {
            let mut c = Cluster::new(3, &["web", "db"]);
            let first = settled(&mut c, "web", OnFail::Standby, on_leader);
            let db_on = c.placed_on("db").expect("db placed");
            c.resource_dies(first, "web");
            c.run_for(4_000);
            let name = format!("n{}", first + 1);
            assert!(leader_record(&c).has_intent(&name, Intent::Standby));
            for g in ["web", "db"] {
                let on = c.running_on(g);
                assert_eq!(on.len(), 1, "{g}: {on:?}");
                assert_ne!(on[0], first, "{g} still on the node in standby");
            }
            if db_on != first {
                assert_eq!(c.running_on("db"), vec![db_on], "db elsewhere stays put");
            }
            assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
        }
    }

    #[test]
    fn ignore_records_the_failure_and_changes_nothing() {
        for on_leader in [true, false] {
            let mut c = Cluster::new(3, &["web"]);
            let first = settled(&mut c, "web", OnFail::Ignore, on_leader);
            let t = c.now_ms();
            c.resource_dies(first, "web");
            c.run_for(3_000);
            let record = leader_record(&c);
            let name = format!("n{}", first + 1);
            assert_eq!(record.fail_count("web", &name), 0);
            assert!(
                record
                    .failures
                    .get("web")
                    .is_some_and(|f| f.contains_key(&name)),
                "{:?}",
                record.failures
            );
            assert_eq!(c.placed_on("web"), Some(first));
            assert_eq!(c.actions_on(first, "web", t), vec![]);
        }
    }

    #[test]
    fn restart_restarts_in_place_and_moves_at_the_threshold() {
        for on_leader in [true, false] {
            let mut c = Cluster::new(3, &["web"]);
            let first = settled(&mut c, "web", OnFail::Restart, on_leader);
            let t = c.now_ms();
            c.resource_dies(first, "web");
            c.run_for(3_000);
            assert_eq!(c.running_on("web"), vec![first], "restarted in place");
            assert!(
                c.actions_on(first, "web", t)
                    .iter()
                    .any(|(_, start)| *start),
                "{:?}",
                c.actions_on(first, "web", t)
            );
            for _ in 0..2 {
                c.resource_dies(first, "web");
                c.run_for(3_000);
            }
            let now = c.running_on("web");
            assert_eq!(now.len(), 1, "{now:?}");
            assert_ne!(now[0], first, "moved at the third failure");
            assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
        }
    }
}

/// `tandem config apply`: a change begins when the leader commits the
/// new configuration's hash as the next one; each node switches in place
/// when it sees that; nothing moves meanwhile, not even with some nodes
/// switched and others not; the change commits once every node runs it.
#[test]
fn a_configuration_change_commits_once_every_node_runs_it_and_moves_nothing() {
    use crate::member::Request;
    let mut c = Cluster::new(3, &["web", "db"]);
    c.run_for(SETTLE_MS);
    c.request(
        0,
        Request::Move {
            group: "db".into(),
            node: Some("n2".into()),
        },
    );
    c.run_for(SETTLE_MS);
    let (web, db) = (c.placed_on("web").unwrap(), c.placed_on("db").unwrap());
    assert_ne!(web, db);
    let leader = c.leader().unwrap();
    let epoch = c.record(leader).unwrap().config_epoch;
    let t = c.now_ms();
    c.request(2, Request::ConfigNext { hash: "v2".into() });
    c.run_for(1_000);
    for i in 0..3 {
        assert_eq!(c.record(i).unwrap().config_next.as_deref(), Some("v2"));
    }
    // One node at a time, the leader not last, with time between: no
    // node running the old or the new configuration loses its groups.
    let mut order: Vec<usize> = (0..3).collect();
    order.rotate_left(leader);
    for (k, i) in order.into_iter().enumerate() {
        c.switch_config(i, "v2");
        c.run_for(2_000);
        if k < 2 {
            assert_eq!(c.record(i).unwrap().config_hash, "story", "not before all");
        }
    }
    c.run_for(1_000);
    for i in 0..3 {
        let r = c.record(i).unwrap();
        assert_eq!((r.config_hash.as_str(), r.config_epoch), ("v2", epoch + 1));
        assert_eq!(r.config_next, None);
    }
    for (g, n) in [("web", web), ("db", db)] {
        assert_eq!(c.actions_on(n, g, t), vec![], "{g} on n{}", n + 1);
        assert_eq!(c.running_on(g), vec![n], "{g}");
    }
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
}

/// A node that does not switch (its agent stuck, or the new file refused
/// there) holds the change up only until its bound: then the voters that
/// switched commit it, and that node, on another configuration, gives up
/// its groups.
#[test]
fn a_configuration_change_past_its_bound_commits_with_a_majority() {
    use crate::member::{Request, CONFIG_SWITCH_BOUND_MS};
    let mut c = Cluster::new(3, &["web"]);
    c.run_for(SETTLE_MS);
    let web = c.placed_on("web").unwrap();
    c.request(0, Request::ConfigNext { hash: "v2".into() });
    c.run_for(1_000);
    for i in (0..3).filter(|&i| i != web) {
        c.switch_config(i, "v2");
    }
    c.run_for(CONFIG_SWITCH_BOUND_MS / 2);
    assert_eq!(c.record(0).unwrap().config_next.as_deref(), Some("v2"));
    assert_eq!(c.running_on("web"), vec![web], "frozen meanwhile");
    c.run_for(CONFIG_SWITCH_BOUND_MS / 2 + SETTLE_MS);
    let r = c.record((web + 1) % 3).unwrap();
    assert_eq!(
        (r.config_hash.as_str(), r.config_next.as_ref()),
        ("v2", None)
    );
    let now = c.running_on("web");
    assert!(now.len() == 1 && now[0] != web, "{now:?}");
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
}

/// A change no majority switches to is abandoned at its bound: the
/// committed configuration stays, and a second change is refused while
/// one is under way.
#[test]
fn a_configuration_change_no_majority_takes_is_abandoned() {
    use crate::member::{Request, CONFIG_SWITCH_BOUND_MS};
    let mut c = Cluster::new(3, &["web"]);
    c.run_for(SETTLE_MS);
    c.request(0, Request::ConfigNext { hash: "v2".into() });
    c.run_for(1_000);
    c.request(1, Request::ConfigNext { hash: "v3".into() });
    c.run_for(1_000);
    assert_eq!(c.record(0).unwrap().config_next.as_deref(), Some("v2"));
    c.run_for(CONFIG_SWITCH_BOUND_MS + SETTLE_MS);
    let r = c.record(0).unwrap();
    assert_eq!(
        (r.config_hash.as_str(), r.config_next.as_ref()),
        ("story", None)
    );
    assert_eq!(c.running_on("web").len(), 1);
}

/// A leader that does not switch (the witness never does; a node's switch
/// may fail) must not hold the change up: once a majority of voters runs
/// the new configuration it hands leadership to one of them, which
/// commits it (at the change's bound, since the old leader hosts groups
/// and has not switched).
#[test]
fn a_leader_that_does_not_switch_hands_the_change_to_one_that_did() {
    use crate::member::{Request, CONFIG_SWITCH_BOUND_MS};
    let mut c = Cluster::new(3, &["web"]);
    c.run_for(SETTLE_MS);
    let leader = c.leader().unwrap();
    c.request(leader, Request::ConfigNext { hash: "v2".into() });
    c.run_for(1_000);
    for i in (0..3).filter(|&i| i != leader) {
        c.switch_config(i, "v2");
    }
    // Five deadtimes (the hand-off), well within the change's bound.
    c.run_for(8_000);
    let now = c.leader().unwrap();
    assert_ne!(now, leader, "leadership handed over");
    assert_eq!(c.record(now).unwrap().config_next.as_deref(), Some("v2"));
    c.run_for(CONFIG_SWITCH_BOUND_MS);
    let r = c.record(now).unwrap();
    assert_eq!(
        (r.config_hash.as_str(), r.config_next.as_ref()),
        ("v2", None)
    );
    assert_eq!(c.running_on("web").len(), 1);
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
}

/// Issue 19 (`tandem node remove`, then `node add`): a voter leaves the
/// voters and comes back, one change at a time, while every group keeps
/// running where it is: no stop, no second start, never dual-active. The
/// next change waits a lease after the previous one was seen committed.
#[test]
fn voters_change_one_at_a_time_without_touching_a_running_group() {
    let mut c = Cluster::new(3, &["web", "db"]);
    c.run_for(SETTLE_MS);
    let leader = c.leader().expect("a leader");
    // A follower that runs a group, if any: its lease must hold across.
    let follower = (0..3)
        .filter(|i| *i != leader)
        .max_by_key(|i| {
            ["web", "db"]
                .iter()
                .filter(|g| c.placed_on(g) == Some(*i))
                .count()
        })
        .expect("a follower");
    let placed: Vec<(&str, usize)> = ["web", "db"]
        .into_iter()
        .map(|g| (g, c.placed_on(g).expect("placed")))
        .collect();
    let since = c.now_ms();
    let rest: Vec<usize> = (0..3).filter(|i| *i != follower).collect();
    c.change_voters(leader, &rest).expect("remove a voter");
    // At once: too soon for the next change.
    assert!(
        matches!(
            c.change_voters(leader, &[0, 1, 2]),
            Err(crate::member::VoterChangeError::Settling { .. })
                | Err(crate::member::VoterChangeError::Agreement(_))
        ),
        "a second change while the first is fresh"
    );
    c.run_for(1_000);
    for i in 0..3 {
        assert_eq!(c.voters(i), Some(rest.clone()), "n{}", i + 1);
    }
    // A lease after the leader saw the change committed, the next one.
    let mut added = Err(crate::member::VoterChangeError::TwoNode);
    for _ in 0..20 {
        let leader = c.leader().expect("a leader");
        added = c.change_voters(leader, &[0, 1, 2]);
        if added.is_ok() {
            break;
        }
        c.run_for(100);
    }
    added.expect("add it back");
    c.run_for(1_000);
    for i in 0..3 {
        assert_eq!(c.voters(i), Some(vec![0, 1, 2]), "n{}", i + 1);
    }
    for (g, n) in &placed {
        assert_eq!(c.actions_on(*n, g, since), vec![], "{g} on n{}", n + 1);
        assert_eq!(c.running_on(g), vec![*n], "{g}");
    }
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
}

/// Issue 19, as the operator runs it: `tandem node remove` (a request
/// through a follower) empties the node and takes its vote away, waiting
/// for the change to be proposable; `tandem node add` gives it back (the
/// leader waits a lease after the first change by itself). Groups on the
/// other nodes never stop; never dual-active; each wish ends in `Done`.
#[test]
fn node_remove_then_add_through_a_follower_changes_one_vote_each() {
    use crate::member::{MemberEvent, Request, VoterOutcome};
    let mut c = Cluster::new(3, &["web", "db"]);
    c.run_for(SETTLE_MS);
    let leader = c.leader().expect("a leader");
    let asked = (0..3).find(|i| *i != leader).expect("a follower");
    let gone = (0..3)
        .find(|i| *i != leader && *i != asked)
        .expect("another");
    let stay: Vec<(&str, usize)> = ["web", "db"]
        .into_iter()
        .filter_map(|g| c.placed_on(g).filter(|n| *n != gone).map(|n| (g, n)))
        .collect();
    let since = c.now_ms();
    let name = format!("n{}", gone + 1);
    c.request(
        asked,
        Request::Voter {
            node: name.clone(),
            vote: false,
        },
    );
    c.run_for(3_000);
    let rest: Vec<usize> = (0..3).filter(|i| *i != gone).collect();
    for i in 0..3 {
        assert_eq!(c.voters(i), Some(rest.clone()), "n{}", i + 1);
    }
    for g in ["web", "db"] {
        assert_ne!(c.placed_on(g), Some(gone), "{g} still on the removed node");
        assert_eq!(c.running_on(g).len(), 1, "{g}");
    }
    // At once after: the leader waits a lease after the first change.
    c.request(
        asked,
        Request::Voter {
            node: name.clone(),
            vote: true,
        },
    );
    c.run_for(3_000);
    for i in 0..3 {
        assert_eq!(c.voters(i), Some(vec![0, 1, 2]), "n{}", i + 1);
    }
    for (g, n) in &stay {
        assert_eq!(c.actions_on(*n, g, since), vec![], "{g} on n{}", n + 1);
    }
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
    let outcomes: Vec<(bool, &VoterOutcome)> = c
        .voter_events()
        .iter()
        .filter_map(|(_, _, e)| match e {
            MemberEvent::VoterChange {
                node,
                vote,
                outcome,
            } if *node == name => Some((*vote, outcome)),
            _ => None,
        })
        .collect();
    let done: Vec<bool> = outcomes
        .iter()
        .filter(|(_, o)| **o == VoterOutcome::Done)
        .map(|(v, _)| *v)
        .collect();
    assert_eq!(done, vec![false, true], "{outcomes:?}");
    assert!(
        !outcomes
            .iter()
            .any(|(_, o)| matches!(o, VoterOutcome::Refused { .. })),
        "{outcomes:?}"
    );
}

/// Issue 19: a node that was in no configuration joins a running
/// cluster. Every member adds it as a peer, the leader writes the voters
/// in force into the log (the new node's own configuration lists it as a
/// voter, and the log must say otherwise), it holds the record as a
/// learner, `node add` then gives it a vote, and it can host a group.
/// Groups already placed never stop; never dual-active. Then `node remove
/// --forget` reverses it: the members refuse to forget a voter, and
/// forget it once its vote and group are gone.
#[test]
fn a_node_added_while_running_learns_the_log_then_gets_a_vote_and_hosts() {
    use crate::member::Request;
    let mut c = Cluster::new(3, &["web", "db"]);
    c.run_for(SETTLE_MS);
    let placed: Vec<(&str, usize)> = ["web", "db"]
        .into_iter()
        .filter_map(|g| c.placed_on(g).map(|n| (g, n)))
        .collect();
    assert_eq!(placed.len(), 2);
    let since = c.now_ms();
    let new = c.add_node();
    c.run_for(3_000);
    for i in 0..4 {
        assert_eq!(c.voters(i), Some(vec![0, 1, 2]), "n{}: voters", i + 1);
    }
    let leader = c.leader().expect("a leader");
    assert_ne!(leader, new, "a learner does not lead");
    let held = c.record(leader).map(|r| r.placements.clone());
    assert_eq!(
        c.record(new).map(|r| r.placements.clone()),
        held,
        "the learner holds the record"
    );
    let asked = (0..3).find(|i| *i != leader).expect("a follower");
    c.request(
        asked,
        Request::Voter {
            node: "n4".into(),
            vote: true,
        },
    );
    c.run_for(3_000);
    for i in 0..4 {
        assert_eq!(c.voters(i), Some(vec![0, 1, 2, 3]), "n{}: voters", i + 1);
    }
    let (g, from) = placed[0];
    c.request(
        asked,
        Request::Move {
            group: g.to_string(),
            node: Some("n4".into()),
        },
    );
    c.run_for(3_000);
    assert_eq!(
        c.running_on(g),
        vec![new],
        "{g} moved to the new node from n{}",
        from + 1
    );
    let (other, on) = placed[1];
    assert_eq!(c.actions_on(on, other, since), vec![], "{other} untouched");

    // `node remove n4 --forget`: refused while it votes; its vote and its
    // group go first, then every member forgets it.
    let refused = c.forget_node(new);
    assert!(
        refused
            .iter()
            .all(|r| r.as_ref().is_err_and(|e| e.contains("votes"))),
        "{refused:?}"
    );
    c.request(
        asked,
        Request::Voter {
            node: "n4".into(),
            vote: false,
        },
    );
    c.run_for(3_000);
    assert_ne!(c.placed_on(g), Some(new), "{g} still on n4");
    assert_eq!(c.forget_node(new), vec![Ok(true); 3]);
    c.run_for(3_000);
    for i in 0..3 {
        assert_eq!(c.voters(i), Some(vec![0, 1, 2]), "n{}: voters", i + 1);
    }
    assert_eq!(c.running_on(g).len(), 1, "{g}");
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
}

/// A wish nobody can meet ends with a reason: the last voter cannot go,
/// and an unknown node is no node.
#[test]
fn node_remove_of_the_last_voter_or_an_unknown_node_is_refused_with_why() {
    use crate::member::{MemberEvent, Request, VoterOutcome};
    let mut c = Cluster::new(1, &["web"]);
    c.run_for(SETTLE_MS);
    for node in ["n1", "n9"] {
        c.request(
            0,
            Request::Voter {
                node: node.into(),
                vote: false,
            },
        );
    }
    c.run_for(1_000);
    let reasons: Vec<String> = c
        .voter_events()
        .iter()
        .filter_map(|(_, _, e)| match e {
            MemberEvent::VoterChange {
                node,
                outcome: VoterOutcome::Refused { reason },
                ..
            } => Some(format!("{node}: {reason}")),
            _ => None,
        })
        .collect();
    assert_eq!(
        reasons,
        vec![
            "n1: n1 is the only voter: removing it would leave no voter".to_string(),
            "n9: n9 is not a node of this cluster's configuration".to_string(),
        ]
    );
    assert_eq!(c.voters(0), Some(vec![0]));
}

/// Two-node mode with fencing refuses a change of voters other than
/// between one voter and two: a fence-backed holder keeps its groups with
/// no lease end a takeover could wait for.
#[test]
fn a_two_node_cluster_with_fencing_refuses_to_change_voters() {
    use crate::member::{Member, MemberSpec, PeerSpec, Persisted, VoterChangeError};
    use crate::wire::{ClusterId, NodeId};
    let spec = MemberSpec {
        cluster: ClusterId(7),
        me: NodeId(1),
        voter: true,
        peers: vec![PeerSpec {
            id: NodeId(2),
            links: vec![true],
            voter: true,
        }],
        links: 1,
        mode: crate::quorum::Mode::TwoNode,
        wait_for_all: true,
        timing: super::TIMING,
        keys: vec![[3u8; 32]],
        config_hash: "story".into(),
        config_sections: vec![],
        key_fingerprint: "fp".into(),
        member_names: vec!["n1".into(), "n2".into()],
    };
    let mut m = Member::new(spec, 1, Persisted::default(), 0, 1);
    assert_eq!(
        m.change_voters(60_000, vec![NodeId(1), NodeId(2), NodeId(3)]),
        Err(VoterChangeError::TwoNode)
    );
    assert_eq!(
        m.change_voters(60_000, vec![NodeId(1), NodeId(3)]),
        Err(VoterChangeError::TwoNode)
    );
}

/// Issue 19, seed 000's `startHA` and `stopHA`: a node standing alone in
/// two-node mode runs its groups by a majority of one; `tandem node add`
/// makes it a pair (the new node learns the log, then gets its vote, and
/// the pair is in two-node mode with fencing); the first node crashes and
/// the second fences it and takes its groups; back up, `tandem node
/// remove` of the second moves its groups back and takes its vote, the
/// first stands alone again (a majority of one, quorate without its
/// peer), and forgetting the second powers it off. Never dual-active.
#[test]
fn a_node_standing_alone_becomes_a_pair_fails_over_and_stands_alone_again() {
    use crate::member::Request;
    use crate::quorum::Mode;
    let mut c = Cluster::alone_in_two_node_mode(&["web", "db"]);
    c.run_for(SETTLE_MS);
    for g in ["web", "db"] {
        assert_eq!(c.running_on(g), vec![0], "{g} alone");
    }
    let mode = |c: &Cluster, i: usize| c.member(i).map(|m| m.mode());
    assert_eq!(mode(&c, 0), Some(Mode::Majority { voters: 1 }));
    assert!(c.member(0).is_some_and(|m| m.agreement().voters_written()));
    let since = c.now_ms();
    let second = c.add_node();
    c.run_for(3_000);
    assert_eq!(c.voters(second), Some(vec![0]), "a learner first");
    c.request(
        0,
        Request::Voter {
            node: "n2".into(),
            vote: true,
        },
    );
    c.run_for(3_000);
    for i in 0..2 {
        assert_eq!(c.voters(i), Some(vec![0, 1]), "n{}", i + 1);
        assert_eq!(mode(&c, i), Some(Mode::TwoNode), "n{}", i + 1);
    }
    for g in ["web", "db"] {
        assert_eq!(c.actions_on(0, g, since), vec![], "{g} ran on untouched");
    }
    // Failover: the first node dies; the second fences it and takes over.
    c.power_off(0);
    c.run_for(8_000);
    assert!(c.fenced().iter().any(|(_, t)| *t == 0), "{:?}", c.fenced());
    for g in ["web", "db"] {
        assert_eq!(c.running_on(g), vec![1], "{g} failed over");
    }
    c.power_on(0);
    c.run_for(5_000);
    // stopHA: the second gives its groups back and its vote up.
    let leader = c.leader().expect("a leader");
    c.request(
        leader,
        Request::Voter {
            node: "n2".into(),
            vote: false,
        },
    );
    c.run_for(8_000);
    for i in 0..2 {
        assert_eq!(c.voters(i), Some(vec![0]), "n{}", i + 1);
    }
    for g in ["web", "db"] {
        assert_eq!(c.running_on(g), vec![0], "{g} back on the first");
    }
    assert_eq!(c.forget_node(second), vec![Ok(true)]);
    c.run_for(5_000);
    assert_eq!(mode(&c, 0), Some(Mode::Majority { voters: 1 }));
    for g in ["web", "db"] {
        assert_eq!(c.running_on(g), vec![0], "{g} alone again");
    }
    assert!(c.dual_active().is_empty(), "{:?}", c.dual_active());
}
