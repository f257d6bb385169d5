//! A configuration change on a running cluster (`tandem config apply`):
//! what a node must do to switch from one configuration to another without
//! a restart, and which changes cannot be made that way.
//!
//! A node switches in place: groups the new configuration removes, and
//! groups whose resources change, are stopped first; every other group
//! keeps running untouched (its monitors may change: they are checked
//! anew from the switch on). One node may be added, at the end of the
//! list (`tandem node add NAME --address`): every member then hears it and
//! sends it the log, and it votes only once a change of voters names it.
//! A volume with one copy may take its second, and the last node's copies
//! go with it when it is forgotten. Other changes to what the membership itself runs on (cluster, timing,
//! quorum, links, existing nodes, keys), to fence devices, volumes, the
//! watchdog, the HTTP API or alerts need each agent restarted, one node at
//! a time, and are refused here with that advice.

use std::fmt;

use super::diff::{diff, Change, ChangeKind, Section};
use super::model::Config;

/// What switching from one configuration to another does on a node.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Plan {
    /// Every change, as `config diff` shows it.
    pub changes: Vec<Change>,
    /// Groups stopped before the switch: removed by the new configuration,
    /// or with resources added, removed, changed or reordered (they start
    /// again, as the new configuration says, once the switch is done).
    pub restart: Vec<String>,
    /// The node the new configuration adds (at the end of its list), if
    /// any: every member adds it as a peer when it switches.
    pub added_node: Option<String>,
    /// The node the new configuration drops (the last of the old list),
    /// if any: every member forgets it as a peer when it switches, which
    /// it refuses while that node votes or hosts a group.
    pub removed_node: Option<String>,
    /// Copies the change gives volumes: a volume with one copy takes its
    /// second (`tandem node add NAME --volume VOLUME=PATH`); the new copy
    /// does a full sync from the running one.
    pub copies_added: Vec<VolumeCopy>,
    /// Copies the change drops: the removed node's (`tandem node remove
    /// NAME --forget`), leaving its volumes one copy each.
    pub copies_dropped: Vec<VolumeCopy>,
}

/// One copy of a volume: the volume and the node that holds it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeCopy {
    /// Volume name.
    pub volume: String,
    /// The node holding the copy.
    pub node: String,
    /// The node holding the volume's other copy, which runs on.
    pub kept: String,
}

impl Plan {
    /// Why this change of the nodes cannot begin (None: it may, or it
    /// changes no node): a node is added only once the record names the
    /// voters (`voters_written`; else a node started with the new file
    /// could count the new node as a voter), and removed only once it
    /// neither `votes` nor `hosts` a group (`tandem node remove NAME`
    /// first). Checked by the node asked, before any node is offered it;
    /// each member's switch checks again ([`crate::member::Member::remove_peer`]).
    /// A copy is dropped only while the one that stays holds every
    /// acknowledged write (`up_to_date(volume, node)`: the record names
    /// it, or has no word on the volume): else the only good copy would
    /// go with the forgotten node.
    pub fn membership_refusal(
        &self,
        voters_written: bool,
        votes: impl Fn(&str) -> bool,
        hosts: impl Fn(&str) -> bool,
        up_to_date: impl Fn(&str, &str) -> bool,
    ) -> Option<String> {
        if self.added_node.is_some() && !voters_written {
            return Some(
                "the cluster's record does not name its voters yet (its leader writes them once it leads: is there a leader?); try again in a few seconds".into(),
            );
        }
        if let Some(c) = self
            .copies_dropped
            .iter()
            .find(|c| !up_to_date(&c.volume, &c.kept))
        {
            return Some(format!(
                "volume {v}: {kept}'s copy does not hold every write yet (the cluster's record names {node}'s), and {node}'s copy would go with it; wait until `tandem volume status {v}` on {kept} shows both copies UpToDate, then try again",
                v = c.volume,
                kept = c.kept,
                node = c.node
            ));
        }
        let gone = self.removed_node.as_deref()?;
        let (votes, hosts) = (votes(gone), hosts(gone));
        (votes || hosts).then(|| {
            format!(
                "{gone} still {}: `tandem node remove {gone}` first (its groups move away and its vote goes), then remove it from the configuration",
                if votes { "votes" } else { "hosts a group" }
            )
        })
    }

    /// Whether the two configurations say the same.
    pub fn is_empty(&self) -> bool {
        self.changes.is_empty()
    }

    /// The groups whose entry the change adds or removes.
    fn groups(&self, kind: &ChangeKind) -> Vec<String> {
        self.changes
            .iter()
            .filter(|c| c.section == Section::Group && c.kind == *kind)
            .map(|c| c.name.clone())
            .collect()
    }

    /// What a switch does to groups, in words: which stop for good (the
    /// new configuration removes them), which stop and start again,
    /// which start (new); every other group runs on untouched.
    pub fn summary(&self) -> String {
        let removed = self.groups(&ChangeKind::Removed);
        let added = self.groups(&ChangeKind::Added);
        let restarted: Vec<String> = self
            .restart
            .iter()
            .filter(|g| !removed.contains(g))
            .cloned()
            .collect();
        let mut parts = Vec::new();
        for (what, list) in [
            ("stops for good", &removed),
            ("stops and starts again", &restarted),
            ("starts", &added),
        ] {
            if !list.is_empty() {
                parts.push(format!("{what}: {}", list.join(", ")));
            }
        }
        if parts.is_empty() {
            "no group stops or starts".to_string()
        } else {
            format!("{}; every other group runs on untouched", parts.join("; "))
        }
    }
}

/// Changes a running node cannot make in place.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct NotLive {
    /// The changes that need a restart of every agent.
    pub changes: Vec<Change>,
}

impl fmt::Display for NotLive {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let list: Vec<String> = self.changes.iter().map(ToString::to_string).collect();
        let filesync = if self.changes.iter().any(|c| c.section == Section::Resource) {
            " (a filesync resource's sync service is set up when the agent starts)"
        } else {
            ""
        };
        write!(
            f,
            "these changes cannot be applied to a running cluster: {}{filesync}; install the new file on every node and restart the agents one node at a time (each keeps its groups running), or apply only the group, resource and monitor changes",
            list.join("; ")
        )
    }
}

/// Whether resource change `c` (named `group/resource`) touches a
/// `filesync` resource in `old` or `new`.
fn filesync(c: &Change, old: &Config, new: &Config) -> bool {
    let Some((g, r)) = c.name.split_once('/') else {
        return false;
    };
    [old, new].iter().any(|cfg| {
        cfg.groups
            .iter()
            .filter(|x| x.name == g)
            .flat_map(|x| &x.resources)
            .any(|x| x.name == r && matches!(x.params, crate::kinds::Params::Filesync(_)))
    })
}

/// Whether a change can be made while the agents run.
fn live(c: &Change) -> bool {
    matches!(
        c.section,
        Section::Group | Section::Resource | Section::Monitor
    )
}

/// A resource's fields that change how it is watched, not what runs: a
/// change of these alone restarts nothing (the new limits and checks apply
/// from the switch on).
const WATCH_FIELDS: [&str; 4] = ["check_interval_ms", "check_level", "on_fail", "timeout_ms"];

/// The group a change is in, when it is a group's resource change that
/// restarts the group (or the group's removal).
fn restarts(c: &Change) -> Option<&str> {
    match (c.section, &c.kind) {
        (Section::Group, ChangeKind::Removed) => Some(&c.name),
        (Section::Resource, ChangeKind::Changed { fields })
            if fields.iter().all(|f| WATCH_FIELDS.contains(&f.as_str())) =>
        {
            None
        }
        (Section::Resource, _) => c.name.split('/').next(),
        (
            Section::Group,
            ChangeKind::Reordered {
                list: Section::Resource,
            },
        ) => Some(&c.name),
        _ => None,
    }
}

/// What switching a running node from `old` to `new` does, or why it
/// cannot be done in place.
pub fn plan(old: &Config, new: &Config) -> Result<Plan, NotLive> {
    let changes = diff(old, new);
    let refused: Vec<Change> = changes
        .iter()
        .filter(|c| {
            !(live(c)
                || node_added(c, old, new)
                || node_removed(c, old, new)
                || copy_change(c, old, new).is_some()
                || fence_hosts_change(c, old, new))
                || (c.section == Section::Resource && filesync(c, old, new))
        })
        .cloned()
        .collect();
    if !refused.is_empty() {
        return Err(NotLive { changes: refused });
    }
    let mut restart: Vec<String> = changes
        .iter()
        .filter_map(restarts)
        .filter(|g| !g.is_empty())
        .map(String::from)
        .collect();
    restart.sort();
    restart.dedup();
    let node = |kind: ChangeKind| {
        changes
            .iter()
            .find(|c| c.section == Section::Node && c.kind == kind)
            .map(|c| c.name.clone())
    };
    let (added_node, removed_node) = (node(ChangeKind::Added), node(ChangeKind::Removed));
    let mut copies_added = Vec::new();
    let mut copies_dropped = Vec::new();
    for (copy, added) in changes.iter().filter_map(|c| copy_change(c, old, new)) {
        if added {
            copies_added.push(copy);
        } else {
            copies_dropped.push(copy);
        }
    }
    Ok(Plan {
        changes,
        restart,
        added_node,
        removed_node,
        copies_added,
        copies_dropped,
    })
}

/// Whether fence-device change `c` only says how to fence the node the
/// change adds, or forgets how to fence the node it removes: a device
/// listing it alone comes or goes, or a device gains or loses its entry
/// (`tandem node add NAME --fence DEVICE=PLUG`). Every other node is
/// fenced as before.
fn fence_hosts_change(c: &Change, old: &Config, new: &Config) -> bool {
    if c.section != Section::FenceDevice {
        return false;
    }
    let added = |n: &str| old.node(n).is_none() && new.node(n).is_some();
    let removed = |n: &str| old.node(n).is_some() && new.node(n).is_none();
    let device = |cfg: &Config| cfg.fence_devices.iter().find(|d| d.name == c.name).cloned();
    match (&c.kind, device(old), device(new)) {
        (ChangeKind::Added, None, Some(d)) => d.hosts.iter().all(|(n, _)| added(n)),
        (ChangeKind::Removed, Some(d), None) => d.hosts.iter().all(|(n, _)| removed(n)),
        (ChangeKind::Changed { fields }, Some(a), Some(b)) if *fields == ["hosts"] => {
            let only =
                |x: &[(String, String)], y: &[(String, String)], ok: &dyn Fn(&str) -> bool| {
                    y.iter().all(|h| x.contains(h) || ok(&h.0))
                };
            // Entries of the other nodes are the same on both sides.
            only(&a.hosts, &b.hosts, &added) && only(&b.hosts, &a.hosts, &removed)
        }
        _ => false,
    }
}

/// The volume fields a change of copies touches.
const COPY_FIELDS: [&str; 2] = ["nodes", "backing"];

/// Whether volume change `c` is one a running cluster makes: a volume
/// with one copy takes a second on the node the change adds (true), or
/// the node the change removes loses its copy (false, the volume keeps
/// the other). Nothing else about the volume changes, and
/// the copy that stays keeps its backing path: it runs on untouched.
fn copy_change(c: &Change, old: &Config, new: &Config) -> Option<(VolumeCopy, bool)> {
    let ChangeKind::Changed { fields } = &c.kind else {
        return None;
    };
    if c.section != Section::Volume || !fields.iter().all(|f| COPY_FIELDS.contains(&f.as_str())) {
        return None;
    }
    let (a, b) = (old.volume(&c.name)?, new.volume(&c.name)?);
    let (shorter, longer, added) = match (a.nodes.len(), b.nodes.len()) {
        (1, 2) => (a, b, true),
        (2, 1) => (b, a, false),
        _ => return None,
    };
    let kept = &shorter.nodes[0];
    let other = longer.nodes.iter().find(|n| *n != kept)?;
    let same_kept = longer.nodes.contains(kept) && a.backing_of(kept) == b.backing_of(kept);
    // A copy comes and goes only with its node: the node added opens it
    // when its agent starts (a running agent opens its copies at start),
    // and forgetting the node is what checks that it hosts nothing.
    let node_ok = if added {
        old.node(other).is_none()
    } else {
        new.node(other).is_none()
    };
    (same_kept && node_ok).then(|| {
        (
            VolumeCopy {
                volume: c.name.clone(),
                node: other.clone(),
                kept: kept.clone(),
            },
            added,
        )
    })
}

/// Whether `cfg` syncs files between nodes: its sync service learns its
/// peers when the agent starts, so the nodes do not change while it runs.
fn has_filesync(cfg: &Config) -> bool {
    cfg.groups
        .iter()
        .flat_map(|g| &g.resources)
        .any(|r| matches!(r.params, crate::kinds::Params::Filesync(_)))
}

/// Whether `c` adds one node at the end of the list, the only change of
/// nodes a running cluster makes: the others keep their places (who votes
/// by the configuration's order) and their addresses.
fn node_added(c: &Change, old: &Config, new: &Config) -> bool {
    c.kind == ChangeKind::Added && last_node_only(c, old, new)
}

/// Whether `c` removes the last node of the list, the one a running
/// cluster forgets (one added while running, or an abandoned addition
/// undone): the others keep their places.
fn node_removed(c: &Change, old: &Config, new: &Config) -> bool {
    c.kind == ChangeKind::Removed && last_node_only(c, new, old)
}

/// Whether node change `c` is `longer`'s last node, `shorter` holding the
/// same nodes before it in the same order, and no `filesync` resource in
/// `longer` (its peers are fixed when the agent starts).
fn last_node_only(c: &Change, shorter: &Config, longer: &Config) -> bool {
    c.section == Section::Node
        && longer.nodes.len() == shorter.nodes.len() + 1
        && longer.nodes.last().is_some_and(|n| n.name == c.name)
        && shorter
            .nodes
            .iter()
            .zip(&longer.nodes)
            .all(|(a, b)| a.name == b.name)
        && !has_filesync(longer)
}

/// Whether a node running the configuration `mine`, with no change under
/// way, should switch to the committed one: `mine` is not the committed
/// configuration, and either this node saw `mine` committed before, at an
/// earlier epoch than the committed one (`seen`: each configuration this
/// node saw committed, with its epoch), or `mine` came from a change
/// (`from_change`: it was staged here by `tandem config apply`) that was
/// abandoned or overtaken. A configuration the cluster never committed
/// and no change brought (an operator's edit, rolled out node by node) is
/// never replaced.
pub fn is_stale(
    mine: &str,
    committed: &str,
    committed_epoch: u64,
    seen: &[(u64, String)],
    from_change: bool,
) -> bool {
    !committed.is_empty()
        && mine != committed
        && (from_change
            || seen
                .iter()
                .any(|(epoch, hash)| hash == mine && *epoch < committed_epoch))
}

/// Where a node's configuration goes next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// The configuration to switch to.
    pub hash: String,
    /// To the committed configuration (catching up, or back from an
    /// abandoned change), not to a change's next one.
    pub catching_up: bool,
}

/// The record's word on configurations, as a node reads it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Committed<'a> {
    /// The committed configuration (empty: none yet).
    pub hash: &'a str,
    /// Its epoch.
    pub epoch: u64,
    /// The configuration a change under way switches to.
    pub next: Option<&'a str>,
}

/// The configuration a node running `mine` switches to now: the next one
/// while a change is under way; with none under way, the committed one
/// when `mine` is stale ([`is_stale`]; `switched`: the configuration this
/// node switched to because a change began, until it commits); None when
/// it stays.
pub fn target(
    mine: &str,
    record: Committed<'_>,
    seen: &[(u64, String)],
    switched: Option<&str>,
) -> Option<Target> {
    match record.next {
        Some(n) if n != mine => Some(Target {
            hash: n.to_string(),
            catching_up: false,
        }),
        Some(_) => None,
        None => is_stale(
            mine,
            record.hash,
            record.epoch,
            seen,
            switched == Some(mine),
        )
        .then(|| Target {
            hash: record.hash.to_string(),
            catching_up: true,
        }),
    }
}

/// Whether a switch to `hash` under way is still wanted: it is the next
/// configuration or the committed one (else the change was abandoned, and
/// what stopped for it starts again).
pub fn still_wanted(hash: &str, record: Committed<'_>) -> bool {
    record.next == Some(hash) || record.hash == hash
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::load;
    use crate::config::KeyFileFacts;

    const BASE: &str = r#"
[cluster]
name = "c"
key_file = "/k"

[[link]]
name = "lan"
subnet = "10.0.0.0/24"

[[node]]
name = "n1"
addresses = { lan = "10.0.0.1" }

[[node]]
name = "n2"
addresses = { lan = "10.0.0.2" }

[[node]]
name = "n3"
addresses = { lan = "10.0.0.3" }

[[group]]
name = "web"
[[group.resource]]
name = "vip"
kind = "ip"
address = "10.0.0.100/24"
[[group.monitor]]
name = "http"
kind = "tcp"
address = "10.0.0.100:80"
interval_ms = 2000

[[group]]
name = "old"
[[group.resource]]
name = "vip"
kind = "ip"
address = "10.0.0.101/24"

[[group]]
name = "db"
[[group.resource]]
name = "vip"
kind = "ip"
address = "10.0.0.102/24"
"#;

    fn cfg(text: &str) -> Config {
        let facts = |_: &std::path::Path| KeyFileFacts::Present {
            len: 32,
            mode: 0o600,
        };
        let l = load(text, std::path::Path::new("/"), &facts);
        match l.config {
            Some(c) => c,
            None => panic!("invalid test configuration: {:?}", l.diagnostics),
        }
    }

    #[test]
    fn adding_removing_and_changing_groups_is_live_and_restarts_only_what_it_must() {
        let old = cfg(BASE);
        let new_text = BASE
            // The monitor of `web` changes: web keeps running.
            .replace("interval_ms = 2000", "interval_ms = 1000")
            // `db`'s address changes: db restarts.
            .replace("10.0.0.102/24", "10.0.0.103/24")
            // `old` goes.
            .replace(
                "[[group]]\nname = \"old\"\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"10.0.0.101/24\"\n",
                "",
            )
            + "\n[[group]]\nname = \"extra\"\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"10.0.0.104/24\"\n";
        let new = cfg(&new_text);
        let p = plan(&old, &new).unwrap();
        assert_eq!(p.restart, vec!["db".to_string(), "old".to_string()]);
        let shown: Vec<String> = p.changes.iter().map(ToString::to_string).collect();
        assert!(
            shown.contains(&"monitor `web/http` changed: interval_ms 2000 -> 1000".to_string()),
            "{shown:?}"
        );
        assert!(
            shown.contains(&"group `extra` added".to_string()),
            "{shown:?}"
        );
        assert!(!p.is_empty());
        assert!(plan(&old, &old).unwrap().is_empty());
        // From a new user's trial: a removed group is not "started again".
        assert_eq!(
            p.summary(),
            "stops for good: old; stops and starts again: db; starts: extra; every other group runs on untouched"
        );
        assert_eq!(
            plan(&old, &old).unwrap().summary(),
            "no group stops or starts"
        );
    }

    #[test]
    fn membership_changes_are_refused_with_what_to_do() {
        let old = cfg(BASE);
        let new = cfg(&BASE.replace("10.0.0.2\" }", "10.0.0.9\" }"));
        let e = plan(&old, &new).unwrap_err();
        assert_eq!(e.changes.len(), 1);
        let text = e.to_string();
        assert!(text.contains("node `n2` changed: addresses"), "{text}");
        assert!(text.contains("one node at a time"), "{text}");
    }

    /// `tandem node add NAME --address`: one node at the end of the list
    /// is live (every member adds the peer, nothing restarts), and so is
    /// its removal (`tandem node remove NAME --forget`, or an abandoned
    /// addition undone); two at once, one placed before others, the
    /// removal of another node, or either beside filesync are not.
    #[test]
    fn one_node_added_at_the_end_is_live_other_node_changes_are_not() {
        let n = |name: &str, ip: &str| {
            format!("\n[[node]]\nname = \"{name}\"\naddresses = {{ lan = \"{ip}\" }}\n")
        };
        let (head, groups) = BASE.split_at(BASE.find("[[group]]").unwrap_or(BASE.len()));
        let with = |extra: &str| cfg(&format!("{head}{extra}\n{groups}"));
        let old = cfg(BASE);
        let p = plan(&old, &with(&n("n4", "10.0.0.4"))).expect("live");
        assert_eq!(p.added_node.as_deref(), Some("n4"));
        assert!(p.restart.is_empty(), "{:?}", p.restart);
        let two = with(&format!("{}{}", n("n4", "10.0.0.4"), n("n5", "10.0.0.5")));
        assert!(plan(&old, &two).is_err(), "two nodes at once");
        let before = cfg(&BASE.replacen(
            "[[node]]\nname = \"n1\"",
            &format!(
                "{}\n[[node]]\nname = \"n1\"",
                n("n0", "10.0.0.9").trim_start()
            ),
            1,
        ));
        assert!(
            plan(&old, &before).is_err(),
            "a node placed before the others"
        );
        let back = plan(&with(&n("n4", "10.0.0.4")), &old).expect("the last node removed");
        assert_eq!(back.removed_node.as_deref(), Some("n4"));
        assert_eq!(back.added_node, None);
        let four = format!("{head}{}\n{groups}", n("n4", "10.0.0.4"));
        let first = cfg(&four.replacen(
            "[[node]]\nname = \"n1\"\naddresses = { lan = \"10.0.0.1\" }\n\n",
            "",
            1,
        ));
        let e = plan(&cfg(&four), &first).unwrap_err();
        assert!(e.to_string().contains("node `n1` removed"), "{e}");
        // Filesync learns its peers at start: no node comes or goes.
        let files = "[[group.resource]]\nname = \"files\"\nkind = \"filesync\"\npaths = [\"/srv/www\"]\nlink = \"lan\"\n";
        let synced = cfg(&(BASE.to_string() + files));
        let synced_more = cfg(&format!("{head}{}\n{groups}{files}", n("n4", "10.0.0.4")));
        assert!(
            plan(&synced, &synced_more).is_err(),
            "a node added beside filesync"
        );
    }

    #[test]
    fn a_node_is_added_once_the_voters_are_written_and_dropped_once_it_neither_votes_nor_hosts() {
        let add = Plan {
            added_node: Some("n4".into()),
            ..Plan::default()
        };
        let never = |_: &str| false;
        let all = |_: &str, _: &str| true;
        assert!(add
            .membership_refusal(false, never, never, all)
            .is_some_and(|w| w.contains("voters")));
        assert_eq!(add.membership_refusal(true, never, never, all), None);
        let drop = Plan {
            removed_node: Some("n4".into()),
            ..Plan::default()
        };
        let n4 = |n: &str| n == "n4";
        assert_eq!(drop.membership_refusal(false, never, never, all), None);
        let w = drop
            .membership_refusal(true, n4, never, all)
            .unwrap_or_default();
        assert!(
            w.contains("n4 still votes") && w.contains("tandem node remove n4"),
            "{w}"
        );
        let w = drop
            .membership_refusal(true, never, n4, all)
            .unwrap_or_default();
        assert!(w.contains("n4 still hosts a group"), "{w}");
        assert_eq!(Plan::default().membership_refusal(false, n4, n4, all), None);
        // A copy goes only while the one that stays holds every write.
        let forget = Plan {
            removed_node: Some("n4".into()),
            copies_dropped: vec![VolumeCopy {
                volume: "data".into(),
                node: "n4".into(),
                kept: "n1".into(),
            }],
            ..Plan::default()
        };
        assert_eq!(forget.membership_refusal(true, never, never, all), None);
        let n4_only = |_: &str, n: &str| n == "n4";
        let w = forget
            .membership_refusal(true, never, never, n4_only)
            .unwrap_or_default();
        assert!(
            w.contains("volume data: n1's copy does not hold every write yet"),
            "{w}"
        );
    }

    #[test]
    fn a_volume_takes_its_second_copy_live_and_loses_it_only_with_its_node() {
        let vol = |nodes: &str, backing: &str| {
            format!("\n[[volume]]\nname = \"data\"\nnodes = [{nodes}]\nsize = \"16MiB\"\nlink = \"lan\"\nbacking = {{ {backing} }}\n")
        };
        let n4 = "\n[[node]]\nname = \"n4\"\naddresses = { lan = \"10.0.0.4\" }\n";
        let one = cfg(&format!("{BASE}{}", vol("\"n1\"", "n1 = \"/a\"")));
        let pair_text = format!(
            "{BASE}{n4}{}",
            vol("\"n1\", \"n4\"", "n1 = \"/a\", n4 = \"/b\"")
        );
        let pair = cfg(&pair_text);
        let copy = |node: &str| VolumeCopy {
            volume: "data".into(),
            node: node.into(),
            kept: "n1".into(),
        };
        // n4 added with the volume's second copy: both live, no group
        // restarted (the running copy runs on).
        let grow = plan(&one, &pair).unwrap_or_default();
        assert_eq!(grow.copies_added, [copy("n4")]);
        assert_eq!(grow.added_node.as_deref(), Some("n4"));
        assert!(grow.restart.is_empty(), "{grow:?}");
        // Forgetting n4 drops its copy with it.
        let shrink = plan(&pair, &one).unwrap_or_default();
        assert_eq!(shrink.copies_dropped, [copy("n4")]);
        assert_eq!(shrink.removed_node.as_deref(), Some("n4"));
        // A copy dropped from a node that stays, or given to a node
        // already running, or the running copy's backing moved, or a
        // bigger volume: a restart of every agent.
        let kept = cfg(&format!("{BASE}{n4}{}", vol("\"n1\"", "n1 = \"/a\"")));
        assert!(plan(&pair, &kept).is_err());
        assert!(plan(&kept, &pair).is_err());
        let moved = cfg(&format!(
            "{BASE}{n4}{}",
            vol("\"n1\", \"n4\"", "n1 = \"/c\", n4 = \"/b\"")
        ));
        assert!(plan(&one, &moved).is_err());
        let bigger = cfg(&pair_text.replace("16MiB", "32MiB"));
        assert!(plan(&pair, &bigger).is_err());
    }

    #[test]
    fn only_the_added_or_removed_nodes_fencing_changes_live() {
        let dev = |hosts: &str| {
            format!("\n[[fence_device]]\nname = \"power\"\nagent = \"/bin/true\"\nhosts = {{ {hosts} }}\n")
        };
        let n4 = "\n[[node]]\nname = \"n4\"\naddresses = { lan = \"10.0.0.4\" }\n";
        let three = cfg(&format!("{BASE}{}", dev("n1 = \"1\"")));
        let four = cfg(&format!("{BASE}{n4}{}", dev("n1 = \"1\", n4 = \"4\"")));
        assert!(plan(&three, &four).is_ok());
        assert!(plan(&four, &three).is_ok());
        // Another node's plug, or a node running already: a restart.
        let moved = cfg(&format!("{BASE}{n4}{}", dev("n1 = \"9\", n4 = \"4\"")));
        assert!(plan(&three, &moved).is_err());
        let three_more = cfg(&format!("{BASE}{}", dev("n1 = \"1\", n2 = \"2\"")));
        assert!(plan(&three, &three_more).is_err());
        // A device for the added node alone comes with it.
        let own = cfg(&format!(
            "{BASE}{n4}{}{}",
            dev("n1 = \"1\""),
            dev("n4 = \"4\"").replace("\"power\"", "\"power4\"")
        ));
        assert!(plan(&three, &own).is_ok());
        assert!(plan(&own, &three).is_ok());
    }

    #[test]
    fn a_resource_watched_differently_restarts_nothing() {
        let old = cfg(BASE);
        let new = cfg(&BASE.replace(
            "address = \"10.0.0.102/24\"\n",
            "address = \"10.0.0.102/24\"\ntimeout_ms = 5000\non_fail = \"block\"\n",
        ));
        let p = plan(&old, &new).unwrap();
        assert!(!p.is_empty() && p.restart.is_empty(), "{p:?}");
    }

    #[test]
    fn a_filesync_resource_cannot_be_added_live() {
        let old = cfg(BASE);
        let new = cfg(&(BASE.to_string()
            + "[[group.resource]]\nname = \"files\"\nkind = \"filesync\"\npaths = [\"/srv/www\"]\nlink = \"lan\"\n"));
        let e = plan(&old, &new).unwrap_err();
        assert!(e.to_string().contains("filesync"), "{e}");
    }

    #[test]
    fn reordering_resources_restarts_the_group_reordering_groups_does_not() {
        let text = BASE.replace(
            "[[group]]\nname = \"db\"\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"10.0.0.102/24\"\n",
            "[[group]]\nname = \"db\"\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"10.0.0.102/24\"\n[[group.resource]]\nname = \"vip2\"\nkind = \"ip\"\naddress = \"10.0.0.105/24\"\n",
        );
        let two = cfg(&text);
        let swapped = cfg(&text.replace("name = \"vip\"\nkind = \"ip\"\naddress = \"10.0.0.102/24\"\n[[group.resource]]\nname = \"vip2\"\nkind = \"ip\"\naddress = \"10.0.0.105/24\"", "name = \"vip2\"\nkind = \"ip\"\naddress = \"10.0.0.105/24\"\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"10.0.0.102/24\""));
        assert_eq!(
            plan(&two, &swapped).unwrap().restart,
            vec!["db".to_string()]
        );
        let mut reordered = two.clone();
        reordered.groups.reverse();
        let p = plan(&two, &reordered).unwrap();
        assert!(p.restart.is_empty() && !p.is_empty(), "{p:?}");
    }

    #[test]
    fn a_node_follows_the_next_configuration_then_catches_up_with_the_committed_one() {
        let seen = vec![(1, "a".to_string())];
        let rec = |hash, epoch, next| Committed { hash, epoch, next };
        let to = |hash: &str, catching_up| {
            Some(Target {
                hash: hash.into(),
                catching_up,
            })
        };
        // A change under way: to its configuration, unless already there.
        assert_eq!(
            target("a", rec("a", 1, Some("b")), &seen, None),
            to("b", false)
        );
        assert_eq!(target("b", rec("a", 1, Some("b")), &seen, Some("b")), None);
        // It committed while this node was away: catch up.
        assert_eq!(target("a", rec("b", 2, None), &seen, None), to("b", true));
        // It was abandoned after this node switched: back.
        assert_eq!(
            target("b", rec("a", 1, None), &seen, Some("b")),
            to("a", true)
        );
        // An operator's own file: left alone.
        assert_eq!(target("z", rec("a", 1, None), &seen, None), None);
        assert!(still_wanted("b", rec("a", 1, Some("b"))));
        assert!(still_wanted("b", rec("b", 2, None)));
        assert!(!still_wanted("b", rec("a", 1, None)));
    }

    #[test]
    fn only_an_older_committed_configuration_or_an_abandoned_change_is_stale() {
        let seen = vec![(1, "a".to_string()), (2, "b".to_string())];
        assert!(is_stale("a", "b", 2, &seen, false));
        // The committed one, an operator's edit, nothing committed yet.
        assert!(!is_stale("b", "b", 2, &seen, false));
        assert!(!is_stale("z", "b", 2, &seen, false));
        assert!(!is_stale("a", "", 0, &seen, false));
        // Seen committed at the current epoch: a rollback made it current.
        assert!(!is_stale("b", "a", 2, &seen, false));
        // A change's configuration left behind when the change was abandoned.
        assert!(is_stale("z", "b", 2, &seen, true));
        assert!(!is_stale("b", "b", 2, &seen, true));
    }
}
