//! What the agent tells: its typed status (the control protocol's answer)
//! and the typed events made of the core's events and the cluster's
//! requests.

use super::*;
use crate::status::AgreementRole;

impl Agent {
    pub(super) fn describe(&self, e: &MemberEvent) -> Option<AgentEvent> {
        let t = &self.topo;
        let link = |l: usize| t.links.get(l).map_or("?", |s| s.as_str()).to_string();
        let name = |id| t.name_of(id).to_string();
        Some(match e {
            MemberEvent::Detector(ev) => match ev.kind {
                EventKind::LinkUp { peer, link: l } => AgentEvent::LinkUp {
                    node: name(peer),
                    link: link(l),
                },
                EventKind::LinkLate { peer, link: l } => AgentEvent::LinkLate {
                    node: name(peer),
                    link: link(l),
                },
                EventKind::LinkDown { peer, link: l } => AgentEvent::LinkDown {
                    node: name(peer),
                    link: link(l),
                },
                EventKind::NodeAlive { peer, .. } => AgentEvent::NodeOnline { node: name(peer) },
                EventKind::NodeBack { peer, incarnation } => AgentEvent::NodeBack {
                    node: name(peer),
                    incarnation,
                },
                EventKind::NodeDead { peer, never_seen } => AgentEvent::NodeDead {
                    node: name(peer),
                    never_seen,
                },
                EventKind::NodeLeft { peer } => AgentEvent::NodeLeft { node: name(peer) },
            },
            MemberEvent::Quorum(v) => AgentEvent::Quorum {
                quorate: v.quorate,
                was: self.last_quorate.replace(Some(v.quorate)),
                votes: v.votes,
                expected: v.expected,
                waiting_for_all: self.member.waiting_for_all(),
            },
            MemberEvent::Leader { term, leader } => AgentEvent::Leader {
                term: *term,
                leader: leader.map(name),
            },
            MemberEvent::Applied { .. } => return None,
            MemberEvent::Placed {
                group,
                node,
                epoch,
                reason,
            } => AgentEvent::Placed {
                group: group.clone(),
                node: node.clone(),
                epoch: *epoch,
                reason: reason.clone(),
            },
            MemberEvent::RecordVerified { index } => AgentEvent::RecordVerified { index: *index },
            MemberEvent::RecordDiverged { index } => AgentEvent::RecordDiverged { index: *index },
            MemberEvent::Recovered { term, leader } => AgentEvent::Recovered {
                term: *term,
                leader: name(*leader),
            },
            MemberEvent::VoterChange {
                node,
                vote,
                outcome,
            } => AgentEvent::VoterChange {
                node: node.clone(),
                vote: *vote,
                outcome: outcome.into(),
            },
            MemberEvent::SendFailed { to, reason } => AgentEvent::SendFailed {
                node: name(*to),
                reason: reason.clone(),
            },
        })
    }

    pub(super) fn status(&self) -> Status {
        let t = &self.topo;
        let m = &self.member;
        let d = m.detector();
        let a = m.agreement();
        let record = a.record();
        let v = m.view();
        let peers = (0..t.names.len())
            .filter(|&i| i != self.me)
            .map(|i| {
                let id = t.ids[i];
                let state = match d.node_state(id) {
                    _ if m.is_fenced(id) => PeerState::Fenced,
                    _ if record.has_intent(&t.names[i], Intent::Standby) => PeerState::Standby,
                    Some(NodeState::Alive) => PeerState::Online,
                    Some(NodeState::Dead) => PeerState::Offline,
                    Some(NodeState::Left) => PeerState::Left,
                    _ => PeerState::Unknown,
                };
                let links = (0..t.links.len())
                    .filter(|&l| t.addrs[self.me][l].is_some() && t.addrs[i][l].is_some())
                    .map(|l| LinkStatus {
                        link: t.links[l].clone(),
                        state: match d.link_state(id, l) {
                            Some(LinkState::Up) => LinkWord::Up,
                            Some(LinkState::Late) => LinkWord::Late,
                            Some(LinkState::Down) => LinkWord::Down,
                            _ => LinkWord::Unknown,
                        },
                        hears_us: d.peer_hears_me(id, l),
                        rtt: m.link_rtt(id, l).cloned(),
                    })
                    .collect();
                PeerStatus {
                    name: t.names[i].clone(),
                    state,
                    incarnation: m.peer_incarnation(id),
                    // From the log: `tandem node add|remove` changes it.
                    voter: m.voters().contains(&t.ids[i]),
                    links,
                }
            })
            .collect();
        Status {
            cluster: self.cluster.clone(),
            node: t.names[self.me].clone(),
            incarnation: m.incarnation(),
            uptime_ms: self.now_ms(),
            heartbeat_ms: self.timing.heartbeat_ms,
            deadtime_ms: self.timing.deadtime_ms,
            quorum: QuorumStatus {
                // The rule in force: a node standing alone in two-node
                // mode is ruled by a majority of one.
                mode: match m.mode() {
                    tandem_core::quorum::Mode::TwoNode => crate::status::QuorumMode::TwoNode,
                    tandem_core::quorum::Mode::Majority { .. } => {
                        crate::status::QuorumMode::Majority
                    }
                },
                votes: v.votes,
                expected: v.expected,
                quorate: v.quorate,
                waiting_for_all: m.waiting_for_all(),
            },
            agreement: AgreementStatus {
                role: match a.role() {
                    Role::Leader => AgreementRole::Leader,
                    Role::Follower => AgreementRole::Follower,
                    Role::PreCandidate | Role::Candidate => AgreementRole::Candidate,
                },
                voter: m.voters().contains(&t.ids[self.me]),
                term: a.term(),
                leader: a.leader().map(|l| t.name_of(l).to_string()),
                commit_index: a.commit_index(),
                config_epoch: record.config_epoch,
                voters_changing: a.voters_changing(),
                voters_written: a.voters_written(),
                volumes_up_to_date: record
                    .volumes
                    .iter()
                    .map(|(v, f)| (v.clone(), f.up_to_date.clone()))
                    .collect(),
            },
            peers,
            dropped: m
                .dropped()
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), *n))
                .collect(),
            events: self.events.iter().cloned().collect(),
            lease: self.runner.as_ref().map(|_| {
                let now = self.now_ms();
                let held = m.lease_valid(now);
                LeaseStatus {
                    held,
                    remaining_ms: if held {
                        m.lease_until(now).map_or(0, |u| u.saturating_sub(now))
                    } else {
                        0
                    },
                }
            }),
            failed_links: self
                .runner
                .as_ref()
                .map(Runner::failed_links)
                .unwrap_or_default(),
            groups: self.groups_status(),
            fences: record.fence_log.clone(),
            recovery: self.recovery_text(),
            watchdog: self
                .runner
                .as_ref()
                .map(|_| self.watchdog.status(self.now_ms())),
            volumes: self.hub.as_ref().map(|h| h.status()).unwrap_or_default(),
            alerts: self
                .alerts
                .as_ref()
                .map(crate::alerts::Alerts::status)
                .unwrap_or_default(),
            protection: m
                .protections()
                .into_iter()
                .map(|(node, p)| crate::status::ProtectionStatus {
                    node,
                    by: p.kind().to_string(),
                    note: p.to_string(),
                })
                .collect(),
            standby: record
                .intents
                .iter()
                .filter(|(_, i)| *i == Intent::Standby)
                .map(|(t, _)| t.clone())
                .collect(),
            config: self.config_status(),
        }
    }

    /// Configurations against the committed one, and peers this node
    /// cannot authenticate.
    pub(super) fn config_status(&self) -> crate::status::ConfigStatus {
        use crate::status::ConfigDifference;
        let m = &self.member;
        let t = &self.topo;
        let committed = m.agreement().record().config_hash.clone();
        // The committed configuration's sections, if known here: this
        // node's own, or those a peer running it sent.
        let committed_sections: Option<Vec<(String, String)>> = if self.config.hash == committed {
            Some(self.config.sections.clone())
        } else {
            (0..t.names.len())
                .filter(|&i| i != self.me)
                .filter_map(|i| m.peer_config(t.ids[i]))
                .find(|p| p.identity == committed && !p.sections.is_empty())
                .map(|p| p.sections.to_vec())
        };
        let sections_of = |theirs: &[(String, String)]| -> Vec<String> {
            match &committed_sections {
                Some(c) if !theirs.is_empty() => tandem_core::config::identity::Identity {
                    hash: String::new(),
                    sections: c.clone(),
                }
                .differing(theirs),
                _ => Vec::new(),
            }
        };
        let mut differing = Vec::new();
        if !committed.is_empty() && self.config.hash != committed {
            differing.push(ConfigDifference {
                node: t.names[self.me].clone(),
                identity: self.config.hash.clone(),
                sections: sections_of(&self.config.sections),
            });
        }
        for i in (0..t.names.len()).filter(|&i| i != self.me) {
            if let Some(p) = m.peer_config(t.ids[i]) {
                if !p.identity.is_empty() && !committed.is_empty() && p.identity != committed {
                    differing.push(ConfigDifference {
                        node: t.names[i].clone(),
                        identity: p.identity.to_string(),
                        sections: sections_of(p.sections),
                    });
                }
            }
        }
        let now = self.now_ms();
        let unauthenticated = m
            .unauthenticated_peers()
            .into_iter()
            // Recent only: a key rotated since is no longer a problem.
            .filter(|(_, _, at)| now.saturating_sub(*at) < UNAUTHENTICATED_RECENT_MS)
            .map(|(id, n, at)| {
                format!(
                    "{} sends heartbeats this node cannot authenticate: the cluster keys differ ({n} packets, the last {} ms ago); give every node the same key file (this node's key fingerprint is {})",
                    t.name_of(id),
                    now.saturating_sub(at),
                    self.key_fingerprint
                )
            })
            .collect();
        crate::status::ConfigStatus {
            identity: self.config.hash.clone(),
            committed,
            next: m.agreement().record().config_next.clone(),
            key_fingerprint: self.key_fingerprint.clone(),
            differing,
            unauthenticated,
        }
    }

    /// How a lost node's groups are recovered, in plain words.
    pub(super) fn recovery_text(&self) -> String {
        use tandem_core::handover::Protection;
        let mut by: std::collections::BTreeMap<&str, Vec<String>> = Default::default();
        let mut watchdog_ms = 0;
        for (node, p) in self.member.protections() {
            if let Protection::Watchdog { resets_within_ms } = p {
                watchdog_ms = watchdog_ms.max(resets_within_ms);
            }
            by.entry(p.kind()).or_default().push(node);
        }
        let mut parts = Vec::new();
        if let Some(n) = by.get("fence-device") {
            parts.push(format!(
                "fencing for {} (fenced before their groups start elsewhere)",
                n.join(", ")
            ));
        }
        if let Some(n) = by.get("watchdog") {
            parts.push(format!(
                "watchdog for {} (their groups start elsewhere {watchdog_ms} ms after their lease)",
                n.join(", ")
            ));
        }
        if let Some(n) = by.get("leases-alone") {
            parts.push(format!(
                "leases alone for {} (groups start elsewhere once the lease ended; a node that hangs, or whose agent and guard are both killed, keeps its addresses)",
                n.join(", ")
            ));
        }
        parts.join("; ")
    }

    pub(super) fn groups_status(&self) -> Vec<GroupStatus> {
        let m = &self.member;
        let record = m.agreement().record();
        let local = self
            .runner
            .as_ref()
            .map(Runner::local_status)
            .unwrap_or_default();
        let me = self.topo.names[self.me].clone();
        local
            .into_iter()
            .map(|lg| {
                let name = lg.name.clone();
                let placement = record.placements.get(&name);
                let placed_on = placement.and_then(|p| p.node.clone());
                // Each node's own report of the group.
                let mut per_node: Vec<(String, GroupState, u64, bool)> = vec![(
                    me.clone(),
                    lg.state,
                    lg.since_unix_ms,
                    lg.state != GroupState::Stopped,
                )];
                for (i, n) in self.topo.names.iter().enumerate() {
                    if i == self.me || n == WITNESS_NAME {
                        continue;
                    }
                    if let Some((rep, _)) = m.report_from(self.topo.ids[i]) {
                        if let Some(g) = rep.groups.iter().find(|g| g.name == name) {
                            let alive =
                                m.detector().node_state(self.topo.ids[i]) == Some(NodeState::Alive);
                            per_node.push((n.clone(), g.state, g.since_unix_ms, g.active && alive));
                        }
                    }
                }
                let (state, since) = match &placed_on {
                    Some(p) => per_node
                        .iter()
                        .find(|(n, ..)| n == p)
                        .map_or((ShownState::Unreported, None), |(_, st, t, _)| {
                            (ShownState::Reported(*st), Some(*t))
                        }),
                    None => (ShownState::Reported(GroupState::Stopped), None),
                };
                // In maintenance nothing checks it: say so rather than
                // repeat the last state as if it were known.
                let maintenance = record.unmanaged(&name);
                let state = match state {
                    ShownState::Reported(last) if maintenance => ShownState::Unmanaged(Some(last)),
                    ShownState::Unreported if maintenance => ShownState::Unmanaged(None),
                    other => other,
                };
                GroupStatus {
                    active_on: per_node
                        .iter()
                        .filter(|x| x.3)
                        .map(|x| x.0.clone())
                        .collect(),
                    placed_on,
                    epoch: placement.map_or(0, |p| p.epoch),
                    state,
                    since_unix_ms: since,
                    pinned: record.pins.get(&name).cloned(),
                    moving_to: record.moves.get(&name).cloned(),
                    maintenance: record.has_intent(&name, Intent::Maintenance),
                    blocked: record.has_intent(&name, Intent::Blocked),
                    waiting: m.waiting().get(&name).cloned(),
                    fail_counts: record.fail_counts.get(&name).cloned().unwrap_or_default(),
                    failures: record
                        .failures
                        .get(&name)
                        .map(|f| {
                            f.iter()
                                .map(|(n, (at, why))| (n.clone(), *at, why.clone()))
                                .collect()
                        })
                        .unwrap_or_default(),
                    resources: lg.resources,
                    monitors: lg.monitors,
                    name,
                }
            })
            .collect()
    }
}

/// A request in words, for the log.
pub(super) fn describe_request(r: &Request) -> String {
    match r {
        Request::Move {
            group,
            node: Some(n),
        } => format!("move {group} to {n}"),
        Request::Move { group, node: None } => format!("clear the move of {group}"),
        Request::Failover { group } => format!("fail {group} over"),
        Request::Standby { node, on } => {
            format!("node {node} {}", if *on { "standby" } else { "online" })
        }
        Request::Voter { node, vote: true } => format!("node add {node}"),
        Request::Voter { node, vote: false } => format!("node remove {node}"),
        Request::Maintenance { group, on } => {
            format!("maintenance {} for {group}", if *on { "on" } else { "off" })
        }
        Request::Cleanup { group } => format!("clean up {group}"),
        Request::Fence { node, on: false } => format!("fence {node}"),
        Request::Fence { node, on: true } => format!("power {node} on"),
        Request::Failed {
            group,
            node,
            reason,
            ..
        } => format!("{group} failed on {node}: {reason}"),
        Request::Volume {
            volume, up_to_date, ..
        } => format!(
            "volume {volume}: up to date on {}",
            if up_to_date.is_empty() {
                "no copy".to_string()
            } else {
                up_to_date.join(", ")
            }
        ),
        Request::ConfigNext { hash } => format!("switch to configuration {hash}"),
    }
}
