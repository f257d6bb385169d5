//! Placement policy: where each group *should* run, as a pure function of
//! the configuration, what the leader knows of the nodes, and the agreed
//! record. It says nothing about *how* to get there safely; that is
//! [`crate::handover`].
//!
//! Rules, in order, for each group:
//! 1. In maintenance: leave it exactly as it is ([`Target::Unmanaged`]).
//! 2. A node is *eligible* when it is online, not in standby, its fail
//!    count for the group is under the threshold, none of the links the
//!    group needs has failed its ping monitor there, and (when the group
//!    lists preferred nodes) it is one of them or the group is pinned there.
//! 3. Candidates in order: the node of a pending one-time move (`tandem
//!    failover`), the pinned node (`tandem move`), then the preferred nodes
//!    in order, then (no preference list) every node in configuration
//!    order. A one-time move is used up when the group is placed anywhere;
//!    afterwards the group is like any other (it stays with failback
//!    `manual`; with `auto` it goes back to a more preferred node).
//! 4. Where the group runs now and that node is still eligible: stay,
//!    unless failback is `auto` and a better candidate is eligible.
//! 5. Otherwise the first eligible candidate, or nowhere.

use std::collections::BTreeMap;

use crate::agreement::{Intent, Record};
pub use crate::config::model::Confinement;

/// Failback policy of a group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failback {
    /// Move back to a more preferred node as soon as it is eligible.
    Auto,
    /// Stay put until an operator moves it.
    Manual,
}

/// A group as the policy sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupPolicy {
    /// Group name.
    pub name: String,
    /// Preferred nodes, most preferred first; empty: any node.
    pub preferred: Vec<String>,
    /// Failback policy.
    pub failback: Failback,
    /// Fail count at which a node is no longer eligible.
    pub migration_threshold: u32,
    /// Links the group needs (a floating address lives on one).
    pub needs_links: Vec<String>,
    /// The only nodes the group can run on at all, whatever the
    /// preference or an operator's move says; `None`: any node.
    pub confined_to: Option<Confinement>,
}

/// What the leader knows of one node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeFacts {
    /// Node name.
    pub name: String,
    /// Heard by the leader (alive, in the quorate partition).
    pub online: bool,
    /// Links whose ping monitor fails on that node.
    pub failed_links: Vec<String>,
    /// It runs the committed configuration (a node that does not starts
    /// nothing, so nothing is placed there).
    pub config_ok: bool,
}

/// Where a group should be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// On this node, or stopped everywhere (None).
    Node(Option<String>),
    /// In maintenance: the cluster neither starts nor stops it.
    Unmanaged,
}

/// Why a node cannot host a group, for status and logs.
pub fn ineligible_reason(g: &GroupPolicy, n: &NodeFacts, record: &Record) -> Option<String> {
    if let Some(why) = g.confined_to.as_ref().and_then(|c| c.why_not(&n.name)) {
        return Some(why);
    }
    if !n.online {
        return Some("offline".into());
    }
    if !n.config_ok {
        return Some("runs another configuration than the committed one".into());
    }
    if record.has_intent(&n.name, Intent::Standby) {
        return Some("standby".into());
    }
    let fails = record
        .fail_counts
        .get(&g.name)
        .and_then(|m| m.get(&n.name))
        .copied()
        .unwrap_or(0);
    if fails >= g.migration_threshold {
        return Some(format!(
            "{fails} failures (threshold {}); `tandem cleanup {}` clears them",
            g.migration_threshold, g.name
        ));
    }
    if let Some(l) = g.needs_links.iter().find(|l| n.failed_links.contains(l)) {
        return Some(format!("ping monitor on link {l} fails"));
    }
    let pinned =
        record.pins.get(&g.name) == Some(&n.name) || record.moves.get(&g.name) == Some(&n.name);
    if !g.preferred.is_empty() && !g.preferred.contains(&n.name) && !pinned {
        return Some("not a preferred node".into());
    }
    None
}

/// The target of every group: `nodes` in configuration order.
pub fn targets(
    groups: &[GroupPolicy],
    nodes: &[NodeFacts],
    record: &Record,
) -> BTreeMap<String, Target> {
    groups
        .iter()
        .map(|g| (g.name.clone(), target(g, nodes, record)))
        .collect()
}

/// Why each group's target is what it is, where that moves it (the words
/// every node logs with the placement): `targets` as [`targets`] gave them.
pub fn reasons(
    groups: &[GroupPolicy],
    nodes: &[NodeFacts],
    record: &Record,
    targets: &BTreeMap<String, Target>,
) -> BTreeMap<String, String> {
    groups
        .iter()
        .filter_map(|g| {
            let t = targets.get(&g.name)?;
            Some((g.name.clone(), reason(g, nodes, record, t)?))
        })
        .map(|(g, mut r)| {
            if r.len() > crate::agreement::MAX_REASON_BYTES {
                let mut end = crate::agreement::MAX_REASON_BYTES - 3;
                while !r.is_char_boundary(end) {
                    end -= 1;
                }
                r.truncate(end);
                r.push_str("...");
            }
            (g, r)
        })
        .collect()
}

/// Why group `g` goes to `target` from where the record has it (None:
/// it stays, or it is unmanaged).
fn reason(
    g: &GroupPolicy,
    nodes: &[NodeFacts],
    record: &Record,
    target: &Target,
) -> Option<String> {
    let Target::Node(to) = target else {
        return None;
    };
    let current = record
        .placements
        .get(&g.name)
        .and_then(|p| p.node.as_deref());
    if current.is_some() && current == to.as_deref() {
        return None;
    }
    let why_not = |name: &str| -> Option<String> {
        let n = nodes.iter().find(|n| n.name == name);
        match n {
            None => Some("not a member".into()),
            Some(n) => ineligible_reason(g, n, record),
        }
    };
    let by_operator = |to: &str| {
        if record.moves.get(&g.name).map(String::as_str) == Some(to) {
            Some(format!("the operator failed it over to {to}"))
        } else if record.pins.get(&g.name).map(String::as_str) == Some(to) {
            Some(format!("the operator moved it to {to}"))
        } else {
            None
        }
    };
    Some(match (current, to.as_deref()) {
        (Some(c), Some(t)) => match (by_operator(t), why_not(c)) {
            (Some(op), _) => op,
            (None, Some(why)) => format!("{c} cannot keep it ({why}); {t} is next in preference"),
            (None, None) => format!("failback: {t} comes before {c} in its preference"),
        },
        (Some(c), None) => match why_not(c) {
            Some(why) => format!(
                "{c} cannot keep it ({why}), and no node can take it: {}",
                no_host(g, nodes, record)
            ),
            None => format!("no node can host it: {}", no_host(g, nodes, record)),
        },
        (None, Some(t)) => match by_operator(t) {
            Some(op) => op,
            None => format!("{t} is the first node in its preference that can host it"),
        },
        (None, None) => format!("no node can host it: {}", no_host(g, nodes, record)),
    })
}

/// Every node's reason it cannot host `g`, in words.
fn no_host(g: &GroupPolicy, nodes: &[NodeFacts], record: &Record) -> String {
    let list: Vec<String> = nodes
        .iter()
        .filter_map(|n| ineligible_reason(g, n, record).map(|w| format!("{} {w}", n.name)))
        .collect();
    if list.is_empty() {
        "no node".into()
    } else {
        list.join("; ")
    }
}

fn target(g: &GroupPolicy, nodes: &[NodeFacts], record: &Record) -> Target {
    if record.unmanaged(&g.name) {
        return Target::Unmanaged;
    }
    let eligible = |name: &str| {
        nodes
            .iter()
            .find(|n| n.name == name)
            .is_some_and(|n| ineligible_reason(g, n, record).is_none())
    };
    let mut candidates: Vec<&str> = Vec::new();
    if let Some(to) = record.moves.get(&g.name) {
        candidates.push(to);
    }
    if let Some(pin) = record.pins.get(&g.name) {
        candidates.push(pin);
    }
    if g.preferred.is_empty() {
        candidates.extend(nodes.iter().map(|n| n.name.as_str()));
    } else {
        candidates.extend(g.preferred.iter().map(String::as_str));
    }
    let best = candidates.iter().copied().find(|c| eligible(c));
    // An operator's move wins over "stay put" while its node can host.
    if let Some(to) = record.moves.get(&g.name) {
        if eligible(to) {
            return Target::Node(Some(to.clone()));
        }
    }
    if let Some(pin) = record.pins.get(&g.name) {
        if eligible(pin) {
            return Target::Node(Some(pin.clone()));
        }
    }
    let current = record
        .placements
        .get(&g.name)
        .and_then(|p| p.node.as_deref());
    match current {
        Some(c) if eligible(c) => match g.failback {
            Failback::Manual => Target::Node(Some(c.to_string())),
            Failback::Auto => Target::Node(best.map(String::from)),
        },
        _ => Target::Node(best.map(String::from)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::Command;
    use proptest::prelude::*;

    fn group(name: &str, preferred: &[&str], failback: Failback) -> GroupPolicy {
        GroupPolicy {
            name: name.into(),
            preferred: preferred.iter().map(|s| s.to_string()).collect(),
            failback,
            migration_threshold: 3,
            needs_links: vec!["lan".into()],
            confined_to: None,
        }
    }

    fn nodes(online: &[bool]) -> Vec<NodeFacts> {
        online
            .iter()
            .enumerate()
            .map(|(i, o)| NodeFacts {
                name: format!("n{}", i + 1),
                online: *o,
                config_ok: true,
                failed_links: vec![],
            })
            .collect()
    }

    fn placed(record: &mut Record, group: &str, node: Option<&str>) {
        record.apply(&Command::Place {
            group: group.into(),
            node: node.map(String::from),
            reason: None,
        });
    }

    fn on(t: &BTreeMap<String, Target>, g: &str) -> Option<String> {
        match &t[g] {
            Target::Node(n) => n.clone(),
            Target::Unmanaged => panic!("unmanaged"),
        }
    }

    /// Every kind of move says why, in the words each node logs.
    #[test]
    fn every_move_says_why() {
        let g = [group("web", &["n1", "n2"], Failback::Manual)];
        let why = |online: &[bool], r: &Record| {
            let n = nodes(online);
            let t = targets(&g, &n, r);
            reasons(&g, &n, r, &t).get("web").cloned()
        };
        let mut r = Record::default();
        assert_eq!(
            why(&[true, true], &r).as_deref(),
            Some("n1 is the first node in its preference that can host it")
        );
        placed(&mut r, "web", Some("n1"));
        assert_eq!(why(&[true, true], &r), None, "it stays: nothing to say");
        assert_eq!(
            why(&[false, true], &r).as_deref(),
            Some("n1 cannot keep it (offline); n2 is next in preference")
        );
        assert_eq!(
            why(&[false, false], &r).as_deref(),
            Some("n1 cannot keep it (offline), and no node can take it: n1 offline; n2 offline")
        );
        r.apply(&Command::FailCount {
            group: "web".into(),
            node: "n1".into(),
            count: 3,
        });
        let w = why(&[true, true], &r).unwrap();
        assert!(
            w.starts_with("n1 cannot keep it (3 failures (threshold 3)"),
            "{w}"
        );
        r.apply(&Command::FailCount {
            group: "web".into(),
            node: "n1".into(),
            count: 0,
        });
        r.moves.insert("web".into(), "n2".into());
        assert_eq!(
            why(&[true, true], &r).as_deref(),
            Some("the operator failed it over to n2")
        );
        r.moves.clear();
        r.pins.insert("web".into(), "n2".into());
        assert_eq!(
            why(&[true, true], &r).as_deref(),
            Some("the operator moved it to n2")
        );
        r.pins.clear();
        // Failback: n2 holds it, n1 (preferred) is back.
        let g = [group("web", &["n1", "n2"], Failback::Auto)];
        placed(&mut r, "web", Some("n2"));
        let n = nodes(&[true, true]);
        let t = targets(&g, &n, &r);
        assert_eq!(
            reasons(&g, &n, &r, &t).get("web").map(String::as_str),
            Some("failback: n1 comes before n2 in its preference")
        );
    }

    #[test]
    fn first_preferred_online_node() {
        let g = [group("web", &["n2", "n1"], Failback::Manual)];
        let r = Record::default();
        assert_eq!(
            on(&targets(&g, &nodes(&[true, true, true]), &r), "web").as_deref(),
            Some("n2")
        );
        assert_eq!(
            on(&targets(&g, &nodes(&[true, false, true]), &r), "web").as_deref(),
            Some("n1")
        );
        assert_eq!(
            on(&targets(&g, &nodes(&[false, false, true]), &r), "web"),
            None
        );
    }

    fn standby(r: &mut Record, node: &str, on: bool) {
        r.apply(&Command::SetIntent {
            target: node.into(),
            intent: Intent::Standby,
            on,
        });
    }

    fn failover(r: &mut Record, to: &str) {
        r.apply(&Command::MoveOnce {
            group: "web".into(),
            node: to.into(),
        });
    }

    /// Follows the policy as the leader would (through "stopped
    /// everywhere"), until the placement stops changing.
    fn settle(g: &[GroupPolicy], ns: &[NodeFacts], r: &mut Record) -> Option<String> {
        for _ in 0..4 {
            let want = on(&targets(g, ns, r), "web");
            let now = r.placements.get("web").and_then(|p| p.node.clone());
            if want == now {
                return now;
            }
            placed(r, "web", None);
            placed(r, "web", want.as_deref());
        }
        panic!("the placement does not settle");
    }

    /// Regression (issue "keep the promises", defect 4): `tandem failover`
    /// left a hidden pin. Afterwards `node standby n2` moved the group to
    /// n1 while status still said "moved to n2 by an operator", and `node
    /// online n2` moved it back although failback is manual.
    #[test]
    fn failover_leaves_no_pin_so_online_does_not_pull_the_group_back() {
        let g = [group("web", &["n1", "n2"], Failback::Manual)];
        let ns = nodes(&[true, true]);
        let mut r = Record::default();
        placed(&mut r, "web", Some("n1"));
        failover(&mut r, "n2");
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n2"));
        assert!(r.pins.is_empty() && r.moves.is_empty(), "{r:?}");
        standby(&mut r, "n2", true);
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n1"));
        standby(&mut r, "n2", false);
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n1"));
    }

    /// Regression (defect 4, second half): after a ping monitor drove the
    /// group off the node it was failed over to, the hidden pin pulled it
    /// back once the link healed.
    #[test]
    fn failover_then_a_failed_link_then_healed_stays_where_it_went() {
        let g = [group("web", &["n1", "n2"], Failback::Manual)];
        let mut ns = nodes(&[true, true]);
        let mut r = Record::default();
        placed(&mut r, "web", Some("n1"));
        failover(&mut r, "n2");
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n2"));
        ns[1].failed_links = vec!["lan".into()];
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n1"));
        ns[1].failed_links.clear();
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n1"));
    }

    /// `tandem move` pins for as long as the operator wants; `--clear`
    /// removes it and the group stays where it is (manual failback); a
    /// failover replaces a pin instead of being pulled back by it.
    #[test]
    fn a_pin_holds_until_cleared_and_a_failover_replaces_it() {
        let g = [group("web", &["n1", "n2", "n3"], Failback::Manual)];
        let ns = nodes(&[true, true, true]);
        let mut r = Record::default();
        placed(&mut r, "web", Some("n1"));
        r.apply(&Command::Pin {
            group: "web".into(),
            node: Some("n3".into()),
        });
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n3"));
        standby(&mut r, "n3", true);
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n1"));
        // The pin still stands and brings it back (shown in status).
        standby(&mut r, "n3", false);
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n3"));
        failover(&mut r, "n2");
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n2"));
        assert!(r.pins.is_empty(), "a failover ends the pin");
        r.apply(&Command::Pin {
            group: "web".into(),
            node: None,
        });
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n2"));
    }

    /// A failover to a node that cannot host by the time the leader acts
    /// is used up by wherever the group goes, and never acts later.
    #[test]
    fn a_failover_that_cannot_happen_does_not_linger() {
        let g = [group("web", &["n1", "n2"], Failback::Manual)];
        let mut ns = nodes(&[true, true]);
        let mut r = Record::default();
        placed(&mut r, "web", None);
        failover(&mut r, "n2");
        ns[1].online = false;
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n1"));
        assert!(r.moves.is_empty());
        ns[1].online = true;
        assert_eq!(settle(&g, &ns, &mut r).as_deref(), Some("n1"));
    }

    #[test]
    fn manual_failback_stays_auto_failback_returns() {
        let mut r = Record::default();
        placed(&mut r, "web", Some("n2"));
        let all = nodes(&[true, true, true]);
        let manual = [group("web", &["n1", "n2"], Failback::Manual)];
        assert_eq!(
            on(&targets(&manual, &all, &r), "web").as_deref(),
            Some("n2")
        );
        let auto = [group("web", &["n1", "n2"], Failback::Auto)];
        assert_eq!(on(&targets(&auto, &all, &r), "web").as_deref(), Some("n1"));
    }

    #[test]
    fn standby_fail_counts_and_failed_links_make_a_node_ineligible() {
        let g = [group("web", &["n1", "n2"], Failback::Manual)];
        let mut r = Record::default();
        placed(&mut r, "web", Some("n1"));
        r.apply(&Command::SetIntent {
            target: "n1".into(),
            intent: Intent::Standby,
            on: true,
        });
        assert_eq!(
            on(&targets(&g, &nodes(&[true, true]), &r), "web").as_deref(),
            Some("n2")
        );
        let mut r = Record::default();
        placed(&mut r, "web", Some("n1"));
        r.apply(&Command::FailCount {
            group: "web".into(),
            node: "n1".into(),
            count: 3,
        });
        assert_eq!(
            on(&targets(&g, &nodes(&[true, true]), &r), "web").as_deref(),
            Some("n2")
        );
        let mut ns = nodes(&[true, true]);
        ns[0].failed_links = vec!["lan".into()];
        let mut r = Record::default();
        placed(&mut r, "web", Some("n1"));
        assert_eq!(on(&targets(&g, &ns, &r), "web").as_deref(), Some("n2"));
    }

    #[test]
    fn pin_wins_over_preference_and_failback() {
        let g = [group("web", &["n1", "n2"], Failback::Auto)];
        let mut r = Record::default();
        placed(&mut r, "web", Some("n1"));
        r.apply(&Command::Pin {
            group: "web".into(),
            node: Some("n3".into()),
        });
        assert_eq!(
            on(&targets(&g, &nodes(&[true, true, true]), &r), "web").as_deref(),
            Some("n3")
        );
        // A pinned node that goes away: back to the preference list.
        assert_eq!(
            on(&targets(&g, &nodes(&[true, true, false]), &r), "web").as_deref(),
            Some("n1")
        );
    }

    #[test]
    fn a_confined_group_runs_nowhere_else_even_when_moved_there() {
        let mut g = group("db", &[], Failback::Manual);
        g.confined_to = Some(Confinement {
            volumes: vec![("data".into(), vec!["n1".into(), "n2".into()])],
        });
        let g = [g];
        let mut r = Record::default();
        assert_eq!(
            on(&targets(&g, &nodes(&[false, true, true]), &r), "db").as_deref(),
            Some("n2")
        );
        // Only the node without a copy is left: stopped, not started there.
        assert_eq!(
            on(&targets(&g, &nodes(&[false, false, true]), &r), "db"),
            None
        );
        r.apply(&Command::Pin {
            group: "db".into(),
            node: Some("n3".into()),
        });
        assert_eq!(
            on(&targets(&g, &nodes(&[true, true, true]), &r), "db").as_deref(),
            Some("n1")
        );
        assert_eq!(
            ineligible_reason(&g[0], &nodes(&[true, true, true])[2], &r).as_deref(),
            Some("holds no copy of volume data (copies on n1, n2)")
        );
        assert_eq!(ineligible_reason(&g[0], &nodes(&[true])[0], &r), None);
    }

    #[test]
    fn regression_pin_ignored_under_manual_failback() {
        // `tandem failover` pins the group elsewhere; with failback manual
        // the group stayed where it ran and the move never happened.
        let g = [group("web", &["n1", "n2"], Failback::Manual)];
        let mut r = Record::default();
        placed(&mut r, "web", Some("n1"));
        r.apply(&Command::Pin {
            group: "web".into(),
            node: Some("n2".into()),
        });
        assert_eq!(
            on(&targets(&g, &nodes(&[true, true]), &r), "web").as_deref(),
            Some("n2")
        );
    }

    #[test]
    fn maintenance_leaves_the_group_alone() {
        let g = [group("web", &["n1"], Failback::Auto)];
        let mut r = Record::default();
        r.apply(&Command::SetIntent {
            target: "web".into(),
            intent: Intent::Maintenance,
            on: true,
        });
        assert_eq!(targets(&g, &nodes(&[false]), &r)["web"], Target::Unmanaged);
    }

    #[test]
    fn mutual_takeover_spreads_groups_by_preference() {
        let g = [
            group("db", &["n1", "n2"], Failback::Auto),
            group("app", &["n2", "n1"], Failback::Auto),
        ];
        let r = Record::default();
        let t = targets(&g, &nodes(&[true, true]), &r);
        assert_eq!(
            (on(&t, "db").as_deref(), on(&t, "app").as_deref()),
            (Some("n1"), Some("n2"))
        );
        let t = targets(&g, &nodes(&[false, true]), &r);
        assert_eq!(
            (on(&t, "db").as_deref(), on(&t, "app").as_deref()),
            (Some("n2"), Some("n2"))
        );
    }

    proptest! {
        /// Whatever the facts, a target is one eligible node or nowhere,
        /// and never a node that is offline or in standby.
        #[test]
        fn targets_are_single_eligible_nodes(
            online in proptest::collection::vec(any::<bool>(), 1..6),
            standby in proptest::collection::vec(any::<bool>(), 6),
            current in proptest::option::of(0usize..6),
            auto in any::<bool>(),
            fails in proptest::collection::vec(0u32..5, 6),
        ) {
            let ns = nodes(&online);
            let mut r = Record::default();
            for (i, s) in standby.iter().enumerate() {
                r.apply(&Command::SetIntent { target: format!("n{}", i + 1), intent: Intent::Standby, on: *s });
                r.apply(&Command::FailCount { group: "g".into(), node: format!("n{}", i + 1), count: fails[i] });
            }
            if let Some(c) = current {
                placed(&mut r, "g", Some(&format!("n{}", c + 1)));
            }
            let g = [group("g", &[], if auto { Failback::Auto } else { Failback::Manual })];
            if let Target::Node(Some(n)) = &targets(&g, &ns, &r)["g"] {
                let facts = ns.iter().find(|x| &x.name == n).unwrap();
                prop_assert!(ineligible_reason(&g[0], facts, &r).is_none());
            }
        }
    }
}
