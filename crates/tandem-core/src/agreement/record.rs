//! The agreed cluster record: what the cluster is doing, as every voter
//! agrees on it, and the commands that change it.
//!
//! The record only changes by applying committed [`Command`]s in log order,
//! so every node that applied the same prefix holds the same record.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::wire::NodeId;

/// Where a resource group is placed, with the epoch of that decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Placement {
    /// The node that hosts the group; None when it is stopped everywhere.
    pub node: Option<String>,
    /// Grows by one at every placement change of this group, so an agent
    /// acting on an older decision can tell it is stale.
    pub epoch: u64,
    /// Log index of the entry that made this decision (0 when unknown:
    /// applied outside the log, or recorded before this field existed).
    /// The leader bounds a silent holder's lease from when the voters
    /// held it ([`crate::lease`]).
    #[serde(default)]
    pub index: u64,
}

/// An administrator's standing wish, kept until revoked.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub enum Intent {
    /// The node hosts nothing (`tandem node standby`).
    Standby,
    /// The group is left alone: not started, stopped or monitored.
    Maintenance,
    /// The group is left alone after a failure under `on_fail = block`,
    /// until `tandem cleanup`.
    Blocked,
}

/// Longest reason a placement carries (it travels in a datagram with up
/// to 31 other entries).
pub const MAX_REASON_BYTES: usize = 200;

/// One change to the record.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    /// Appended by every new leader so that entries of earlier terms commit.
    Noop,
    /// The configuration the leader runs, identified by a hash of its
    /// content; a new hash starts a new config epoch.
    Config {
        /// BLAKE3 of the configuration text, hex.
        hash: String,
        /// Member node names, in configuration order.
        members: Vec<String>,
    },
    /// A configuration change begins (Some: every node may switch to
    /// the configuration of this hash, staged on each by `tandem config
    /// apply`) or is abandoned (None). It ends when a [`Command::Config`]
    /// of that hash commits.
    ConfigNext {
        /// The new configuration's hash, or None to abandon the change.
        hash: Option<String>,
    },
    /// Places `group` on `node` (None: stopped).
    Place {
        /// Group name.
        group: String,
        /// Target node.
        node: Option<String>,
        /// Why the leader decided it, in words (at most
        /// [`MAX_REASON_BYTES`]): logged by every node that applies it,
        /// never part of the record (an agent of an earlier version, which
        /// ignores it, holds the same record).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reason: Option<String>,
    },
    /// Sets (Some) or clears (None) an intent on a node or group.
    SetIntent {
        /// Node or group name.
        target: String,
        /// The intent.
        intent: Intent,
        /// Whether it now holds.
        on: bool,
    },
    /// Sets the fail count of `group` on `node` (0 clears it).
    FailCount {
        /// Group name.
        group: String,
        /// Node name.
        node: String,
        /// New count.
        count: u32,
    },
    /// The time of the latest failure of `group` on `node` (wall clock,
    /// for expiry and status).
    FailedAt {
        /// Group name.
        group: String,
        /// Node name.
        node: String,
        /// When, in ms since the Unix epoch.
        at_unix_ms: u64,
        /// Why, in words.
        reason: String,
    },
    /// The outcome of one fencing of `node`, with every attempt's
    /// (redacted) output, for the fence history.
    FenceLog {
        /// The node fenced.
        node: String,
        /// When it ended, ms since the Unix epoch.
        at_unix_ms: u64,
        /// `off` (a fence) or `on` (powered back on).
        action: String,
        /// Whether it succeeded.
        ok: bool,
        /// One line per attempt.
        attempts: Vec<String>,
    },
    /// Moves `group` to `node` once (`tandem failover`), leaving no pin.
    MoveOnce {
        /// Group name.
        group: String,
        /// The node to move to.
        node: String,
    },
    /// Pins `group` to `node` (`tandem move`), or removes the pin (None).
    Pin {
        /// Group name.
        group: String,
        /// The node the operator chose.
        node: Option<String>,
    },
    /// Sets which copies of a volume hold every acknowledged write, if
    /// the volume's facts are still at `expect_version` (compare-and-set:
    /// a primary that writes alone first makes this say only its copy).
    Volume {
        /// Volume name.
        volume: String,
        /// The version the proposer saw.
        expect_version: u64,
        /// The copies up to date from now on.
        up_to_date: Vec<String>,
    },
    /// Records that `node` was fenced successfully at `at_unix_ms`.
    Fenced {
        /// Node name.
        node: String,
        /// When the fence device confirmed it.
        at_unix_ms: u64,
    },
    /// Forgets `group` (removed from the configuration, and known stopped
    /// on every node): its placement, pins, failures and intents, so that
    /// a group given that name again starts as a new one.
    Forget {
        /// Group name.
        group: String,
    },
    /// The nodes that vote from this entry on (Raft's membership change,
    /// one voter added or removed at a time): every node uses the latest
    /// such entry in its log, committed or not ([`crate::agreement`]).
    Voters {
        /// The voters, sorted.
        voters: Vec<NodeId>,
    },
}

/// The replicated record.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    /// Grows by one at every distinct configuration applied.
    pub config_epoch: u64,
    /// Hash of the configuration of `config_epoch`.
    pub config_hash: String,
    /// Member node names.
    pub members: Vec<String>,
    /// The configuration the cluster is switching to, while a change
    /// (`tandem config apply`) is under way: a node running it counts as
    /// running the committed one, and the leader places nothing until
    /// the change ends.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_next: Option<String>,
    /// Placement of every group ever placed.
    pub placements: BTreeMap<String, Placement>,
    /// Intents in force: (target, intent).
    pub intents: Vec<(String, Intent)>,
    /// Fail counts: (group, node) -> count, zero counts removed.
    pub fail_counts: BTreeMap<String, BTreeMap<String, u32>>,
    /// Last successful fence of each node.
    pub fenced: BTreeMap<String, u64>,
    /// Operator pins: group -> node it was moved to (`tandem move`): a
    /// standing preference, shown in status, until `tandem move --clear`.
    #[serde(default)]
    pub pins: BTreeMap<String, String>,
    /// One-time moves (`tandem failover`): group -> node it is to move to
    /// once. Gone as soon as the group is placed anywhere, so it never
    /// pulls the group back later.
    #[serde(default)]
    pub moves: BTreeMap<String, String>,
    /// Latest failure per group and node: (when, why).
    #[serde(default)]
    pub failures: BTreeMap<String, BTreeMap<String, (u64, String)>>,
    /// The most recent fencings, oldest first ([`MAX_FENCE_LOG`] kept).
    #[serde(default)]
    pub fence_log: Vec<FenceEntry>,
    /// Replicated volumes: which copies are up to date.
    #[serde(default)]
    pub volumes: BTreeMap<String, crate::volume::VolumeFacts>,
    /// The voters set by the latest committed [`Command::Voters`] (None:
    /// the configuration's, never changed; skipped then, so the digest of
    /// a record that never changed voters is what it always was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub voters: Option<Vec<NodeId>>,
}

/// Fencings kept in the record.
pub const MAX_FENCE_LOG: usize = 20;

/// One fencing in the history.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FenceEntry {
    /// The node fenced.
    pub node: String,
    /// When it ended, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// `off` (a fence) or `on` (powered back on).
    #[serde(default)]
    pub action: String,
    /// Whether it succeeded.
    pub ok: bool,
    /// One line per attempt (device, exit status, output).
    pub attempts: Vec<String>,
}

impl Record {
    /// Applies one committed command (outside a log: placement decisions
    /// get index 0).
    pub fn apply(&mut self, cmd: &Command) {
        self.apply_at(0, cmd);
    }

    /// Applies the committed command at log index `index`.
    pub fn apply_at(&mut self, index: u64, cmd: &Command) {
        match cmd {
            Command::Noop => {}
            Command::Config { hash, members } => {
                if *hash != self.config_hash {
                    self.config_epoch += 1;
                    self.config_hash = hash.clone();
                }
                self.members = members.clone();
                // Whatever change was under way ends with any commit.
                self.config_next = None;
            }
            Command::ConfigNext { hash } => {
                self.config_next = hash.clone().filter(|h| *h != self.config_hash);
            }
            Command::Place { group, node, .. } => {
                let p = self.placements.entry(group.clone()).or_insert(Placement {
                    node: None,
                    epoch: 0,
                    index: 0,
                });
                if p.node != *node || p.epoch == 0 {
                    p.node = node.clone();
                    p.epoch += 1;
                    p.index = index;
                }
                // A one-time move is used up once the group is placed on a
                // node (there or, if it could not go there, elsewhere).
                if node.is_some() {
                    self.moves.remove(group);
                }
            }
            Command::SetIntent { target, intent, on } => {
                let item = (target.clone(), *intent);
                let present = self.intents.contains(&item);
                if *on && !present {
                    self.intents.push(item);
                    self.intents.sort();
                } else if !*on && present {
                    self.intents.retain(|i| *i != item);
                }
            }
            Command::FailCount { group, node, count } => {
                if *count == 0 {
                    if let Some(g) = self.fail_counts.get_mut(group) {
                        g.remove(node);
                        if g.is_empty() {
                            self.fail_counts.remove(group);
                        }
                    }
                    if let Some(g) = self.failures.get_mut(group) {
                        g.remove(node);
                        if g.is_empty() {
                            self.failures.remove(group);
                        }
                    }
                } else {
                    self.fail_counts
                        .entry(group.clone())
                        .or_default()
                        .insert(node.clone(), *count);
                }
            }
            Command::Fenced { node, at_unix_ms } => {
                self.fenced.insert(node.clone(), *at_unix_ms);
            }
            Command::Voters { voters } => {
                self.voters = Some(voters.clone());
            }
            Command::Forget { group } => {
                self.placements.remove(group);
                self.pins.remove(group);
                self.moves.remove(group);
                self.fail_counts.remove(group);
                self.failures.remove(group);
                self.intents.retain(|(t, _)| t != group);
            }
            Command::FailedAt {
                group,
                node,
                at_unix_ms,
                reason,
            } => {
                self.failures
                    .entry(group.clone())
                    .or_default()
                    .insert(node.clone(), (*at_unix_ms, reason.clone()));
            }
            Command::FenceLog {
                node,
                at_unix_ms,
                action,
                ok,
                attempts,
            } => {
                if self.fence_log.len() == MAX_FENCE_LOG {
                    self.fence_log.remove(0);
                }
                self.fence_log.push(FenceEntry {
                    node: node.clone(),
                    at_unix_ms: *at_unix_ms,
                    action: action.clone(),
                    ok: *ok,
                    attempts: attempts.clone(),
                });
                if *ok && action == "off" {
                    self.fenced.insert(node.clone(), *at_unix_ms);
                }
            }
            Command::Volume {
                volume,
                expect_version,
                up_to_date,
            } => {
                let facts = self.volumes.entry(volume.clone()).or_default();
                if facts.version == *expect_version {
                    let mut nodes = up_to_date.clone();
                    nodes.sort();
                    nodes.dedup();
                    facts.up_to_date = nodes;
                    facts.version += 1;
                }
            }
            Command::Pin { group, node } => {
                // The operator's latest word replaces a pending failover.
                self.moves.remove(group);
                match node {
                    Some(n) => {
                        self.pins.insert(group.clone(), n.clone());
                    }
                    None => {
                        self.pins.remove(group);
                    }
                }
            }
            Command::MoveOnce { group, node } => {
                // A failover also ends a standing pin: the group is to
                // leave where the operator put it.
                self.pins.remove(group);
                self.moves.insert(group.clone(), node.clone());
            }
        }
    }

    /// The fail count of `group` on `node`.
    pub fn fail_count(&self, group: &str, node: &str) -> u32 {
        self.fail_counts
            .get(group)
            .and_then(|m| m.get(node))
            .copied()
            .unwrap_or(0)
    }

    /// Whether `target` has `intent` in force.
    pub fn has_intent(&self, target: &str, intent: Intent) -> bool {
        self.intents
            .iter()
            .any(|(t, i)| t == target && *i == intent)
    }

    /// Whether the cluster leaves `group` alone: nothing started, stopped
    /// or moved anywhere (maintenance, or blocked after a failure).
    pub fn unmanaged(&self, group: &str) -> bool {
        self.has_intent(group, Intent::Maintenance) || self.has_intent(group, Intent::Blocked)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn place(group: &str, node: Option<&str>) -> Command {
        Command::Place {
            group: group.into(),
            node: node.map(Into::into),
            reason: None,
        }
    }

    #[test]
    fn placement_epochs_grow_only_on_change() {
        let mut r = Record::default();
        r.apply(&place("web", Some("n1")));
        assert_eq!(r.placements["web"].epoch, 1);
        r.apply(&place("web", Some("n1")));
        assert_eq!(r.placements["web"].epoch, 1);
        r.apply(&place("web", Some("n2")));
        r.apply(&place("web", None));
        assert_eq!(
            r.placements["web"],
            Placement {
                node: None,
                epoch: 3,
                index: 0,
            }
        );
        r.apply_at(17, &place("web", Some("n1")));
        assert_eq!(
            (r.placements["web"].epoch, r.placements["web"].index),
            (4, 17)
        );
        // No change, no new decision: the index stays.
        r.apply_at(18, &place("web", Some("n1")));
        assert_eq!(r.placements["web"].index, 17);
    }

    #[test]
    fn a_forgotten_group_leaves_nothing_behind() {
        let mut r = Record::default();
        r.apply(&Command::Place {
            group: "web".into(),
            node: None,
            reason: None,
        });
        r.apply(&Command::Pin {
            group: "web".into(),
            node: Some("n1".into()),
        });
        r.apply(&Command::SetIntent {
            target: "web".into(),
            intent: Intent::Maintenance,
            on: true,
        });
        r.apply(&Command::FailCount {
            group: "web".into(),
            node: "n1".into(),
            count: 2,
        });
        r.apply(&Command::Forget {
            group: "web".into(),
        });
        assert!(r.placements.is_empty() && r.pins.is_empty() && r.fail_counts.is_empty());
        assert!(!r.has_intent("web", Intent::Maintenance));
    }

    #[test]
    fn config_epoch_counts_distinct_configurations() {
        let mut r = Record::default();
        let cfg = |h: &str| Command::Config {
            hash: h.into(),
            members: vec!["n1".into()],
        };
        r.apply(&cfg("a"));
        r.apply(&cfg("a"));
        r.apply(&cfg("b"));
        assert_eq!((r.config_epoch, r.config_hash.as_str()), (2, "b"));
    }

    #[test]
    fn intents_and_fail_counts_set_and_clear() {
        let mut r = Record::default();
        let intent = |on| Command::SetIntent {
            target: "n2".into(),
            intent: Intent::Standby,
            on,
        };
        r.apply(&intent(true));
        r.apply(&intent(true));
        assert_eq!(r.intents.len(), 1);
        assert!(r.has_intent("n2", Intent::Standby));
        r.apply(&intent(false));
        assert!(!r.has_intent("n2", Intent::Standby));
        let fc = |count| Command::FailCount {
            group: "web".into(),
            node: "n1".into(),
            count,
        };
        r.apply(&fc(2));
        assert_eq!(r.fail_counts["web"]["n1"], 2);
        r.apply(&fc(0));
        assert!(r.fail_counts.is_empty());
        r.apply(&Command::Fenced {
            node: "n2".into(),
            at_unix_ms: 5,
        });
        assert_eq!(r.fenced["n2"], 5);
    }
}
