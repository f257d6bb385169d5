//! The wants rules over every combination of facts, and the stories that
//! made each rule.

use super::*;

/// Every combination of the seven facts.
fn all_facts() -> impl Iterator<Item = Facts> {
    (0u8..128).map(|bits| Facts {
        lease_ok: bits & 1 != 0,
        config_ok: bits & 2 != 0,
        placed_here: bits & 4 != 0,
        maintenance: bits & 8 != 0,
        active: bits & 16 != 0,
        retiring: bits & 32 != 0,
        moved_in_log: bits & 64 != 0,
    })
}

/// Every agent situation: fresh, shutting down, inheriting, both.
fn all_agents() -> Vec<Wants> {
    let mut out = Vec::new();
    for shut in [false, true] {
        for inherit in [None, Some(1_000)] {
            let mut w = Wants::new();
            if shut {
                w.shut_down();
            }
            if let Some(u) = inherit {
                w.inherit_lease(u);
            }
            out.push(w);
        }
    }
    out
}

const NOW_MS: u64 = 500;

#[test]
fn run_only_when_placed_here_with_a_lease_and_the_committed_configuration() {
    for w in all_agents() {
        for f in all_facts() {
            let want = w.want(f, NOW_MS);
            let may_run = f.placed_here
                && f.lease_ok
                && f.config_ok
                && !f.maintenance
                && !f.retiring
                && !w.shutting_down()
                && (f.active || !f.moved_in_log);
            assert_eq!(want == Want::Run, may_run, "{w:?} {f:?}");
        }
    }
}

#[test]
fn a_graceful_stop_stops_everything_even_in_maintenance() {
    let mut w = Wants::new();
    w.shut_down();
    for f in all_facts() {
        assert_eq!(w.want(f, NOW_MS), Want::Stop, "{f:?}");
    }
}

#[test]
fn a_restarted_agent_within_the_old_lease_neither_starts_nor_stops() {
    let mut w = Wants::new();
    w.inherit_lease(1_000);
    for f in all_facts().filter(|f| !f.lease_ok && !f.retiring) {
        assert_eq!(w.want(f, NOW_MS), Want::Leave, "{f:?}");
        // The previous agent's guard entry covers it: no end of its own.
        let d = w.decide_one(NOW_MS, f, || Some(0));
        assert_eq!(d.leaving_until_ms, None, "{f:?}");
    }
    // Past the inherited end, the ordinary rules apply.
    for f in all_facts().filter(|f| !f.lease_ok && !f.maintenance) {
        assert_eq!(w.want(f, 1_000), Want::Stop, "{f:?}");
    }
}

#[test]
fn our_own_lease_ends_the_inherited_one_for_good() {
    let mut w = Wants::new();
    w.inherit_lease(1_000);
    assert_eq!(w.inherited_until(NOW_MS), Some(1_000));
    w.note_lease(false);
    assert_eq!(w.inherited_until(NOW_MS), Some(1_000));
    w.note_lease(true);
    assert_eq!(w.inherited_until(NOW_MS), None);
    // A lease lost again later does not bring it back.
    w.note_lease(false);
    let f = Facts {
        lease_ok: false,
        config_ok: true,
        placed_here: true,
        maintenance: false,
        active: true,
        retiring: false,
        moved_in_log: false,
    };
    assert_eq!(w.want(f, NOW_MS), Want::Stop);
}

#[test]
fn maintenance_leaves_the_group_as_it_is() {
    let w = Wants::new();
    for f in all_facts().filter(|f| f.maintenance && !f.retiring) {
        assert_eq!(w.want(f, NOW_MS), Want::Leave, "{f:?}");
    }
}

#[test]
fn an_uncommitted_configuration_starts_nothing_and_stops_nothing_placed_here() {
    let w = Wants::new();
    for f in all_facts()
        .filter(|f| f.placed_here && f.lease_ok && !f.config_ok && !f.maintenance && !f.retiring)
    {
        let want = w.want(f, NOW_MS);
        if f.active {
            assert_eq!(want, Want::Leave, "{f:?}");
        } else {
            assert_eq!(want, Want::Stop, "{f:?}");
        }
    }
}

#[test]
fn a_group_moved_away_may_keep_running_until_its_end_then_is_cut_short() {
    let w = Wants::new();
    let moved = Facts {
        lease_ok: true,
        config_ok: true,
        placed_here: false,
        maintenance: false,
        active: true,
        retiring: false,
        moved_in_log: false,
    };
    let d = w.decide_one(NOW_MS, moved, || Some(700));
    assert_eq!(d.want, Want::Stop);
    assert_eq!(d.leaving_until_ms, Some(700));
    assert!(!d.cut_short(699));
    assert!(d.cut_short(700));
    // Nothing the leader waits for: it may keep nothing.
    let d = w.decide_one(NOW_MS, moved, || None);
    assert!(d.cut_short(NOW_MS));
    // Placed here, or nothing running: no end to keep.
    for f in all_facts().filter(|f| f.placed_here || !f.active) {
        let d = w.decide_one(NOW_MS, f, || panic!("asked for an end of {f:?}"));
        assert_eq!(d.leaving_until_ms, None);
        assert!(!d.cut_short(u64::MAX));
    }
}

/// What the guard (or the agent, for a group moved away) kills: a group
/// moved away once its own end passed; any other once the node's end
/// passed, and at once without one.
#[test]
fn what_may_still_run_is_killed_past_its_end_and_only_then() {
    let moving = Decision {
        want: Want::Stop,
        placed_here: false,
        leaving_until_ms: Some(700),
    };
    let placed = Decision {
        want: Want::Run,
        placed_here: true,
        leaving_until_ms: None,
    };
    let pass = |keep_until_ms: Option<u64>| Pass {
        lease_ok: keep_until_ms.is_some(),
        keep_until_ms,
        groups: vec![moving, placed],
    };
    let held = pass(Some(900));
    assert!(!held.kills(0, 699) && held.kills(0, 700), "moved away");
    assert!(!held.kills(1, 899) && held.kills(1, 900), "placed here");
    // Without a lease (nor an inherited one) nothing placed here may stay;
    // the group being moved away keeps its own end.
    let none = pass(None);
    assert!(none.kills(1, 0));
    assert!(!none.kills(0, 699));
    // A group the pass does not know is not killed.
    assert!(!held.kills(2, 10_000));
}

#[test]
fn a_retiring_group_stops_whatever_else_holds_and_only_it() {
    let mut w = Wants::new();
    w.retire(["old".to_string()]);
    for f in all_facts().filter(|f| f.retiring) {
        assert_eq!(w.want(f, NOW_MS), Want::Stop, "{f:?}");
    }
    // Through `decide`, by name: only the group named retires.
    assert!(w.retiring.contains("old") && !w.retiring.contains("web"));
    w.retire(Vec::new());
    assert!(w.retiring.is_empty());
}

/// Simulation seed 4891 (operator-request runs): a restarted holder
/// started a group from its committed prefix while its own log held the
/// leader's uncommitted decision to move it away; the next leader
/// committed that decision and the group ran on two nodes. Placed here
/// with a lease, a group that such a decision moves is not started, and
/// one that runs is kept (the decision may never commit).
#[test]
fn regression_a_move_in_the_uncommitted_log_starts_nothing_here() {
    let w = Wants::new();
    for f in all_facts().filter(|f| {
        f.placed_here
            && f.lease_ok
            && f.config_ok
            && !f.maintenance
            && !f.retiring
            && f.moved_in_log
    }) {
        let want = w.want(f, NOW_MS);
        if f.active {
            assert_eq!(want, Want::Run, "{f:?}");
        } else {
            assert_eq!(want, Want::Stop, "{f:?}");
        }
    }
}
