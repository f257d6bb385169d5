//! One cluster member's protocol state: everything an agent (or a witness)
//! knows about the cluster, as a sans-IO state machine.
//!
//! It joins the pieces: datagrams are authenticated ([`crate::wire`]),
//! checked for replay, fed to the [`FailureDetector`] (heartbeats, leaves)
//! or to the [`Agreement`] engine; the quorum view follows the detector.
//! Out come datagrams to transmit (per peer and link), state to persist
//! and events to log. The agent and the simulation drive exactly this code.

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

use crate::agreement::{self, Agreement, Command, Durable, Intent, Note, ProposeError, Role};
use crate::config::Timing;
use crate::failure_detector::{Event, EventKind, FailureDetector, LinkState, NodeState};
use crate::handover::{self, NodeView};
use crate::lease;
use crate::policy::{self, GroupPolicy, NodeFacts, Target};
use crate::quorum::{self, View};
use crate::wire::{self, replay::ReplayGuard, Body, ClusterId, DropReason, Header, Key, NodeId};

/// A peer as this member sees the configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerSpec {
    /// Its id.
    pub id: NodeId,
    /// Per link: whether both it and this member are on it.
    pub links: Vec<bool>,
    /// Whether it votes (nodes beyond the seventh and nothing else don't).
    pub voter: bool,
}

/// Fixed facts one member is started with.
#[derive(Debug, Clone)]
pub struct MemberSpec {
    /// The cluster.
    pub cluster: ClusterId,
    /// This member.
    pub me: NodeId,
    /// Whether this member votes.
    pub voter: bool,
    /// Every other member.
    pub peers: Vec<PeerSpec>,
    /// Number of links (indices into `PeerSpec::links`).
    pub links: usize,
    /// Quorum rule.
    pub mode: quorum::Mode,
    /// After each start, claim no quorum (and so fence no one) until every
    /// voter has been seen once: a node rebooted after being fenced must
    /// not fence the survivor in turn (corosync's wait_for_all).
    pub wait_for_all: bool,
    /// Membership timers.
    pub timing: Timing,
    /// Accepted keys, the one to send with first.
    pub keys: Vec<Key>,
    /// Hash of the configuration this member runs (hex).
    pub config_hash: String,
    /// Member names in configuration order, for the record.
    pub member_names: Vec<String>,
}

/// What a member keeps across restarts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Persisted {
    /// Incarnation of the last start (the next must be larger).
    pub incarnation: u64,
    /// The agreement engine's durable state.
    pub agreement: Durable,
}

/// A datagram to send.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Transmit {
    /// Destination member.
    pub to: NodeId,
    /// Link to send it on.
    pub link: usize,
    /// The authenticated packet.
    pub bytes: Vec<u8>,
}

/// Something worth logging.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberEvent {
    /// A failure detector event.
    Detector(Event),
    /// The quorum view changed.
    Quorum(View),
    /// The known leader of the record changed.
    Leader {
        /// Term.
        term: u64,
        /// Leader, if any.
        leader: Option<NodeId>,
    },
    /// The record changed (entries up to `index` applied).
    Applied {
        /// Highest applied index.
        index: u64,
    },
    /// An agreement message could not be sent (too large for a packet).
    SendFailed {
        /// Destination.
        to: NodeId,
        /// Why.
        reason: String,
    },
}

/// Work for the shell: persist first, then transmit.
#[derive(Debug, Clone, Default)]
pub struct MemberOutput {
    /// State to write durably before transmitting.
    pub persist: Option<Persisted>,
    /// Datagrams to send.
    pub transmit: Vec<Transmit>,
    /// Events to log.
    pub events: Vec<MemberEvent>,
    /// Leader only: nodes to fence now, and whether to power them on
    /// instead (the shell runs the devices and reports with
    /// [`Member::fence_done`]).
    pub fence: Vec<(String, bool)>,
}

/// One group as a node reports it to its peers.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupReport {
    /// Group name.
    pub name: String,
    /// Placement epoch of this group in the sender's applied record.
    pub epoch: u64,
    /// Whether anything of it may run on the sender.
    pub active: bool,
    /// Its state there in one word (`running`, `stopped`, ...).
    pub state: String,
    /// Since when, ms since the Unix epoch.
    pub since_unix_ms: u64,
    /// The latest failure there, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
}

/// The state report a member sends with each heartbeat, per recipient:
/// lease stamps and echoes ([`crate::lease`]), and its groups.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    /// Sender's clock when sent (the stamp recipients echo).
    pub sent_ms: u64,
    /// Sender's agreement term.
    pub term: u64,
    /// Whom the sender follows (itself when it leads).
    pub leader: Option<NodeId>,
    /// The newest stamp the sender received from the recipient:
    /// (recipient's incarnation, its `sent_ms`).
    pub echo: Option<(u64, u64)>,
    /// When the sender leads: how much of its own lease is left, counted
    /// from when the echoed stamp arrived at the sender.
    pub lease_left_ms: u64,
    /// Sender's last log index (a grant counts once the recipient has
    /// applied this far).
    pub log_index: u64,
    /// Groups on the sender.
    pub groups: Vec<GroupReport>,
    /// Links whose ping monitor fails on the sender.
    pub failed_links: Vec<String>,
    /// Per peer, ms since the sender last received a stamp from it (its
    /// uptime when never): bounds leases after a leader change.
    #[serde(default)]
    pub silent_ms: Vec<(NodeId, u64)>,
}

/// A request to the leader, from an operator (through any agent) or from a
/// node reporting a failure.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Request {
    /// Pin a group to a node (`tandem move`), or clear the pin (None).
    Move {
        /// Group.
        group: String,
        /// Node, or None to clear the pin.
        node: Option<String>,
    },
    /// Planned failover: pin the group to the best other eligible node.
    Failover {
        /// Group.
        group: String,
    },
    /// `tandem node standby|online`.
    Standby {
        /// Node.
        node: String,
        /// Standby on or off.
        on: bool,
    },
    /// `tandem maintenance on|off` for a group (or the whole cluster with
    /// every group named).
    Maintenance {
        /// Group.
        group: String,
        /// On or off.
        on: bool,
    },
    /// `tandem fence NODE [--on]`: the leader fences the node through its
    /// devices (or powers it back on).
    Fence {
        /// The node to fence.
        node: String,
        /// Power on instead of off (after maintenance, or to unfence).
        #[serde(default)]
        on: bool,
    },
    /// `tandem cleanup`: forget a group's failures everywhere.
    Cleanup {
        /// Group.
        group: String,
    },
    /// A node saw a group fail.
    Failed {
        /// Group.
        group: String,
        /// Where.
        node: String,
        /// Why.
        reason: String,
        /// When, ms since the Unix epoch.
        at_unix_ms: u64,
        /// Move the group off that node at once (fail count to the
        /// threshold) instead of counting one failure.
        #[serde(default)]
        move_now: bool,
    },
}

/// A request with its sender's id for it (duplicates are dropped).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RequestEnvelope {
    id: (u64, u64),
    request: Request,
}

/// Requests remembered to drop duplicates.
const MAX_SEEN_REQUESTS: usize = 256;
/// Requests waiting for a leader before the oldest is dropped.
const MAX_QUEUED_REQUESTS: usize = 64;

/// What the cluster's groups are, for members that coordinate them.
#[derive(Debug, Clone, Default)]
pub struct GroupsSpec {
    /// Groups in configuration order.
    pub groups: Vec<GroupPolicy>,
    /// Failures older than this are forgotten, per group (ms).
    pub failure_expiry_ms: Vec<u64>,
    /// Nodes that may host groups (the witness excluded), config order.
    pub hosts: Vec<String>,
    /// Their ids, in the same order.
    pub host_ids: Vec<NodeId>,
    /// Lease length (ms); the membership deadtime.
    pub lease_ms: u64,
    /// Nodes some fence device lists: when they go silent, they are fenced
    /// before their groups start elsewhere.
    pub fence_hosts: Vec<String>,
}

/// After a failed fence of a node, wait this long before trying again.
pub const FENCE_RETRY_MS: u64 = 5_000;

/// The latest report from a peer and when it came.
#[derive(Debug, Clone)]
struct PeerReport {
    report: Report,
    rx_ms: u64,
}

/// One member's protocol state.
#[derive(Debug, Clone)]
pub struct Member {
    spec: MemberSpec,
    incarnation: u64,
    seq: u64,
    detector: FailureDetector,
    replay: ReplayGuard,
    agreement: Agreement,
    dropped: BTreeMap<DropReason, u64>,
    all_seen: bool,
    seen: BTreeSet<NodeId>,
    fenced: BTreeSet<NodeId>,
    view: Option<View>,
    heartbeat_due_ms: u64,
    /// Time of the latest input, for work started from `take_output`.
    now_ms: u64,
    persist: bool,
    out: MemberOutput,
    /// Newest stamp received from each peer: (its incarnation, sent_ms),
    /// and when it arrived (this member's clock).
    stamps: BTreeMap<NodeId, ((u64, u64), u64)>,
    /// Latest report from each peer.
    reports: BTreeMap<NodeId, PeerReport>,
    /// When this member last became leader.
    leader_since_ms: u64,
    /// This node's groups as the shell reports them.
    local_groups: Vec<GroupReport>,
    failed_links: Vec<String>,
    groups: GroupsSpec,
    /// Wall clock (ms since the Unix epoch) at `now_ms == 0`.
    unix_at_zero_ms: u64,
    request_seq: u64,
    seen_requests: std::collections::VecDeque<(u64, u64)>,
    queued_requests: std::collections::VecDeque<RequestEnvelope>,
    /// Why groups wait, as the leader last computed it.
    waiting: BTreeMap<String, String>,
    /// When a waiting takeover becomes possible (leader's clock).
    lead_due_ms: Option<u64>,
    /// Leader: when it fenced each node (its clock), for ordering with
    /// the node's reports.
    fenced_at_ms: BTreeMap<String, u64>,
    /// Leader: fences running, and when a failed one may be retried (with
    /// the failure, for status).
    fencing: BTreeSet<String>,
    fence_retry: BTreeMap<String, (u64, String)>,
    /// Fence outcomes to record once this member leads (a two-node
    /// survivor fences before it can lead).
    pending_fence_logs: std::collections::VecDeque<Command>,
}

/// Fence outcomes kept for the record while not leading.
const MAX_PENDING_FENCE_LOGS: usize = 16;

impl Member {
    /// Starts a member at `now_ms` with incarnation `incarnation` (larger
    /// than `persisted.incarnation`) from what it persisted last time.
    pub fn new(
        spec: MemberSpec,
        incarnation: u64,
        persisted: Persisted,
        now_ms: u64,
        seed: u64,
    ) -> Self {
        let ids: Vec<NodeId> = spec.peers.iter().map(|p| p.id).collect();
        let mut voters: Vec<NodeId> = spec
            .peers
            .iter()
            .filter(|p| p.voter)
            .map(|p| p.id)
            .collect();
        let mut learners: Vec<NodeId> = spec
            .peers
            .iter()
            .filter(|p| !p.voter)
            .map(|p| p.id)
            .collect();
        if spec.voter {
            voters.push(spec.me);
        } else {
            learners.push(spec.me);
        }
        voters.sort();
        learners.sort();
        let agreement = Agreement::new(
            spec.me,
            voters,
            learners,
            agreement::Timing::from_membership(&spec.timing),
            persisted.agreement,
            now_ms,
            seed ^ incarnation,
        );
        let mut m = Member {
            detector: FailureDetector::new(spec.timing, &ids, spec.links, now_ms),
            incarnation,
            seq: 0,
            replay: ReplayGuard::default(),
            agreement,
            dropped: DropReason::ALL.iter().map(|r| (*r, 0)).collect(),
            all_seen: false,
            seen: BTreeSet::new(),
            fenced: BTreeSet::new(),
            view: None,
            heartbeat_due_ms: now_ms,
            now_ms,
            // The new incarnation must be on disk before any packet carries it.
            persist: true,
            out: MemberOutput::default(),
            stamps: BTreeMap::new(),
            reports: BTreeMap::new(),
            leader_since_ms: now_ms,
            local_groups: Vec::new(),
            failed_links: Vec::new(),
            groups: GroupsSpec::default(),
            unix_at_zero_ms: 0,
            request_seq: 0,
            seen_requests: std::collections::VecDeque::new(),
            queued_requests: std::collections::VecDeque::new(),
            waiting: BTreeMap::new(),
            lead_due_ms: None,
            fenced_at_ms: BTreeMap::new(),
            fencing: BTreeSet::new(),
            fence_retry: BTreeMap::new(),
            pending_fence_logs: std::collections::VecDeque::new(),
            spec,
        };
        m.update_view();
        m
    }

    /// This member's incarnation.
    pub fn incarnation(&self) -> u64 {
        self.incarnation
    }

    /// The failure detector (node and link states).
    pub fn detector(&self) -> &FailureDetector {
        &self.detector
    }

    /// The agreement engine (leader, term, record).
    pub fn agreement(&self) -> &Agreement {
        &self.agreement
    }

    /// The newest incarnation heard from `peer`.
    pub fn peer_incarnation(&self, peer: NodeId) -> Option<u64> {
        self.replay.incarnation(peer)
    }

    /// Dropped packets by reason.
    pub fn dropped(&self) -> &BTreeMap<DropReason, u64> {
        &self.dropped
    }

    /// Whether `peer` is confirmed fenced (and not seen since).
    pub fn is_fenced(&self, peer: NodeId) -> bool {
        self.fenced.contains(&peer)
    }

    /// Whether wait-for-all still holds this member back.
    pub fn waiting_for_all(&self) -> bool {
        self.spec.wait_for_all && !self.all_seen
    }

    /// The current quorum view.
    pub fn view(&self) -> View {
        let heard = self
            .spec
            .peers
            .iter()
            .filter(|p| p.voter && self.detector.node_state(p.id) == Some(NodeState::Alive))
            .count();
        let peer_fenced = !self.fenced.is_empty();
        let mut v = quorum::view(self.spec.mode, self.spec.voter, heard, peer_fenced);
        if self.waiting_for_all() {
            v.quorate = false;
        }
        v
    }

    /// When [`Member::on_tick`] must next be called.
    pub fn next_deadline(&self) -> u64 {
        let mut d = self.heartbeat_due_ms.min(self.agreement.next_deadline());
        if let Some(f) = self.detector.next_deadline() {
            d = d.min(f);
        }
        if let Some(l) = self.lead_due_ms {
            d = d.min(l);
        }
        d
    }

    /// Takes the work accumulated so far.
    pub fn take_output(&mut self) -> MemberOutput {
        let a = self.agreement.take_output();
        self.absorb(a);
        self.flush_requests();
        self.lead();
        let a = self.agreement.take_output();
        self.absorb(a);
        let mut out = std::mem::take(&mut self.out);
        if self.persist {
            self.persist = false;
            out.persist = Some(self.persisted());
        }
        out
    }

    fn persisted(&self) -> Persisted {
        Persisted {
            incarnation: self.incarnation,
            agreement: self.agreement.durable().clone(),
        }
    }

    /// Timers: heartbeats, failure detection, agreement.
    pub fn on_tick(&mut self, now_ms: u64) {
        self.now_ms = now_ms;
        if now_ms >= self.heartbeat_due_ms {
            self.heartbeat_due_ms = now_ms + self.spec.timing.heartbeat_ms;
            self.send_heartbeats();
        }
        let ev = self.detector.on_tick(now_ms);
        self.on_detector(now_ms, ev);
        self.two_node_fence(now_ms);
        if now_ms >= self.agreement.next_deadline() {
            self.agreement.on_tick(now_ms);
        }
    }

    /// Two-node mode: a node that lost its peer has no quorum until it has
    /// fenced it, so it fences it (through the shell, [`MemberOutput::fence`]).
    /// Both sides of a partition race; a `delay_ms` on the device that
    /// fences the preferred node lets that node win. Never while waiting
    /// for all (a node back from being fenced must not fence the survivor:
    /// no fence loops), and only a peer that some device lists.
    fn two_node_fence(&mut self, now_ms: u64) {
        if self.spec.mode != quorum::Mode::TwoNode || self.waiting_for_all() {
            return;
        }
        let peers: Vec<(String, NodeId)> = self
            .groups
            .hosts
            .iter()
            .cloned()
            .zip(self.groups.host_ids.iter().copied())
            .filter(|(_, id)| *id != self.spec.me)
            .collect();
        for (name, id) in peers {
            let dead = self.detector.node_state(id) == Some(NodeState::Dead);
            let retry = self.fence_retry.get(&name).map(|r| r.0);
            if !dead
                || self.fenced.contains(&id)
                || !self.groups.fence_hosts.contains(&name)
                || self.fencing.contains(&name)
                || retry.is_some_and(|r| now_ms < r)
            {
                continue;
            }
            self.fencing.insert(name.clone());
            self.out.fence.push((name, false));
        }
    }

    /// A datagram received on `link`.
    pub fn on_datagram(&mut self, now_ms: u64, link: usize, bytes: &[u8]) {
        self.now_ms = now_ms;
        let keys: Vec<&Key> = self.spec.keys.iter().collect();
        let verdict = wire::decode(bytes, self.spec.cluster, &keys).and_then(|p| {
            if !self.spec.peers.iter().any(|x| x.id == p.header.sender) {
                return Err(DropReason::UnknownNode);
            }
            self.replay.check(&p.header)?;
            Ok(p)
        });
        let p = match verdict {
            Ok(p) => p,
            Err(reason) => {
                *self.dropped.entry(reason).or_default() += 1;
                return;
            }
        };
        let from = p.header.sender;
        match p.body {
            Body::Heartbeat {
                link: sent_on,
                heard,
                report,
            } => {
                // The link index in the packet is the sender's view; a
                // mismatch means crossed wiring, so trust where it arrived.
                let _ = sent_on;
                if !report.is_empty() {
                    match serde_json::from_slice::<Report>(&report) {
                        Ok(r) => self.on_report(now_ms, from, p.header.incarnation, r),
                        Err(_) => *self.dropped.entry(DropReason::Malformed).or_default() += 1,
                    }
                }
                let ev = self
                    .detector
                    .on_heartbeat(now_ms, from, link, p.header.incarnation);
                self.detector
                    .on_heard_list(from, link, heard.contains(&self.spec.me));
                self.on_detector(now_ms, ev);
            }
            Body::Leave => {
                let ev = self.detector.on_leave(now_ms, from);
                self.on_detector(now_ms, ev);
            }
            Body::Agreement(bytes) => match serde_json::from_slice(&bytes) {
                Ok(msg) => self.agreement.on_message(now_ms, from, msg),
                Err(_) => *self.dropped.entry(DropReason::Malformed).or_default() += 1,
            },
            Body::Request(bytes) => match serde_json::from_slice::<RequestEnvelope>(&bytes) {
                Ok(env) => self.on_request(now_ms, env),
                Err(_) => *self.dropped.entry(DropReason::Malformed).or_default() += 1,
            },
        }
    }

    /// Proposes a change to the record (only the leader accepts).
    pub fn propose(&mut self, now_ms: u64, cmd: Command) -> Result<u64, ProposeError> {
        self.now_ms = now_ms;
        self.agreement.propose(now_ms, cmd)
    }

    /// The fencing machinery confirmed `peer` off (or it came back).
    pub fn set_fenced(&mut self, now_ms: u64, peer: NodeId, fenced: bool) {
        if fenced {
            self.fenced.insert(peer);
        } else {
            self.fenced.remove(&peer);
        }
        self.agreement.set_fenced(now_ms, peer, fenced);
        self.update_view();
    }

    /// A graceful stop: hand leadership over and tell every peer on every
    /// link, so nobody waits for deadtime.
    pub fn leave(&mut self) {
        self.agreement.hand_off();
        let a = self.agreement.take_output();
        self.absorb(a);
        self.broadcast(|_, _| Body::Leave);
    }

    fn send_heartbeats(&mut self) {
        let heard: Vec<Vec<NodeId>> = (0..self.spec.links)
            .map(|l| self.detector.heard_on(l))
            .collect();
        let reports: BTreeMap<NodeId, Vec<u8>> = self
            .spec
            .peers
            .iter()
            .map(|p| {
                let r = self.report_for(p.id);
                (p.id, serde_json::to_vec(&r).unwrap_or_default())
            })
            .collect();
        self.broadcast(|to, link| Body::Heartbeat {
            link: link as u8,
            heard: heard[link].clone(),
            report: reports.get(&to).cloned().unwrap_or_default(),
        });
    }

    fn broadcast(&mut self, body: impl Fn(NodeId, usize) -> Body) {
        for i in 0..self.spec.peers.len() {
            for link in 0..self.spec.links {
                if self.spec.peers[i].links.get(link).copied().unwrap_or(false) {
                    let to = self.spec.peers[i].id;
                    if let Err(e) = self.transmit(to, link, body(to, link)) {
                        self.out.events.push(MemberEvent::SendFailed {
                            to,
                            reason: e.to_string(),
                        });
                    }
                }
            }
        }
    }

    fn transmit(&mut self, to: NodeId, link: usize, body: Body) -> Result<(), wire::EncodeError> {
        self.seq += 1;
        let header = Header {
            cluster: self.spec.cluster,
            sender: self.spec.me,
            incarnation: self.incarnation,
            seq: self.seq,
        };
        let key = self.spec.keys.first().copied().unwrap_or([0; 32]);
        let bytes = wire::encode(&wire::Packet { header, body }, &key)?;
        self.out.transmit.push(Transmit { to, link, bytes });
        Ok(())
    }

    /// Links to carry agreement traffic to `peer`: the first link that is up
    /// both ways, or every shared link when none is known good.
    fn agreement_links(&self, peer: NodeId) -> Vec<usize> {
        let Some(p) = self.spec.peers.iter().find(|p| p.id == peer) else {
            return Vec::new();
        };
        let shared: Vec<usize> = (0..self.spec.links)
            .filter(|&l| p.links.get(l).copied().unwrap_or(false))
            .collect();
        let good = shared.iter().copied().find(|&l| {
            self.detector.link_state(peer, l) == Some(LinkState::Up)
                && self.detector.peer_hears_me(peer, l)
        });
        good.map_or(shared, |l| vec![l])
    }

    fn absorb(&mut self, a: agreement::Output) {
        if a.persist.is_some() {
            self.persist = true;
        }
        for (to, msg) in a.send {
            let bytes = match serde_json::to_vec(&msg) {
                Ok(b) => b,
                Err(e) => {
                    self.out.events.push(MemberEvent::SendFailed {
                        to,
                        reason: e.to_string(),
                    });
                    continue;
                }
            };
            for link in self.agreement_links(to) {
                if let Err(e) = self.transmit(to, link, Body::Agreement(bytes.clone())) {
                    self.out.events.push(MemberEvent::SendFailed {
                        to,
                        reason: e.to_string(),
                    });
                }
            }
        }
        for note in a.notes {
            match note {
                Note::Leader { term, leader } => {
                    self.out.events.push(MemberEvent::Leader { term, leader });
                    // Leases follow the leader: tell every peer now.
                    self.heartbeat_due_ms = self.now_ms;
                    if leader == Some(self.spec.me) {
                        self.leader_since_ms = self.now_ms;
                        self.propose_config();
                    }
                }
                Note::Applied { index } => self.out.events.push(MemberEvent::Applied { index }),
            }
        }
    }

    /// A new leader records the configuration it runs, if it is new.
    fn propose_config(&mut self) {
        if self.agreement.record().config_hash == self.spec.config_hash {
            return;
        }
        let cmd = Command::Config {
            hash: self.spec.config_hash.clone(),
            members: self.spec.member_names.clone(),
        };
        // The leader just appended its no-op; this cannot be refused.
        let _ = self.agreement.propose(self.now_ms, cmd);
    }

    fn on_detector(&mut self, now_ms: u64, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        for e in &events {
            match e.kind {
                EventKind::NodeDead { peer, .. } | EventKind::NodeLeft { peer } => {
                    self.agreement.on_peer_dead(now_ms, peer);
                }
                EventKind::NodeBack { peer, .. } => {
                    // A new incarnation: the process that led, if it did,
                    // is gone; elect now instead of waiting for a timeout.
                    self.agreement.on_peer_dead(now_ms, peer);
                    self.seen.insert(peer);
                    if self.fenced.contains(&peer) {
                        self.set_fenced(now_ms, peer, false);
                    }
                }
                EventKind::NodeAlive { peer, .. } => {
                    self.seen.insert(peer);
                    if self.fenced.contains(&peer) {
                        self.set_fenced(now_ms, peer, false);
                    }
                }
                _ => {}
            }
        }
        self.out
            .events
            .extend(events.into_iter().map(MemberEvent::Detector));
        if !self.all_seen
            && self
                .spec
                .peers
                .iter()
                .filter(|p| p.voter)
                .all(|p| self.seen.contains(&p.id))
        {
            self.all_seen = true;
        }
        self.update_view();
    }

    fn update_view(&mut self) {
        let v = self.view();
        if self.view != Some(v) {
            self.view = Some(v);
            self.out.events.push(MemberEvent::Quorum(v));
        }
    }
}

/// Leases, reports, requests and the leader's placement loop.
impl Member {
    /// Tells the member what groups the cluster has (every member, the
    /// witness included, since any voter may lead) and the wall clock at
    /// `now_ms == 0` (for failure times and their expiry).
    pub fn set_groups(&mut self, groups: GroupsSpec, unix_at_zero_ms: u64) {
        self.groups = groups;
        self.unix_at_zero_ms = unix_at_zero_ms;
    }

    /// What runs on this node, and which links fail their ping monitor.
    pub fn set_local(&mut self, groups: Vec<GroupReport>, failed_links: Vec<String>) {
        let changed = |a: &[GroupReport], b: &[GroupReport]| {
            a.len() != b.len()
                || a.iter()
                    .zip(b)
                    .any(|(x, y)| x.active != y.active || x.state != y.state)
        };
        // The leader waits on these: send them now, not at the next beat.
        if changed(&self.local_groups, &groups) || self.failed_links != failed_links {
            self.heartbeat_due_ms = self.now_ms;
        }
        self.local_groups = groups;
        self.failed_links = failed_links;
    }

    /// Why groups cannot move yet (leader only; empty elsewhere).
    pub fn waiting(&self) -> &BTreeMap<String, String> {
        &self.waiting
    }

    /// The latest report from `peer`, with this member's time of receipt.
    pub fn report_from(&self, peer: NodeId) -> Option<(&Report, u64)> {
        self.reports.get(&peer).map(|r| (&r.report, r.rx_ms))
    }

    fn unix_ms(&self, now_ms: u64) -> u64 {
        self.unix_at_zero_ms + now_ms
    }

    fn on_report(&mut self, now_ms: u64, from: NodeId, incarnation: u64, r: Report) {
        let stamp = self
            .stamps
            .entry(from)
            .or_insert(((incarnation, r.sent_ms), now_ms));
        if incarnation > stamp.0 .0 || (incarnation == stamp.0 .0 && r.sent_ms > stamp.0 .1) {
            *stamp = ((incarnation, r.sent_ms), now_ms);
        }
        self.reports.insert(
            from,
            PeerReport {
                report: r,
                rx_ms: now_ms,
            },
        );
    }

    fn report_for(&self, peer: NodeId) -> Report {
        let record = self.agreement.record();
        let groups = self
            .local_groups
            .iter()
            .map(|g| GroupReport {
                epoch: record.placements.get(&g.name).map_or(0, |p| p.epoch),
                ..g.clone()
            })
            .collect();
        let leading = self.agreement.role() == Role::Leader;
        Report {
            sent_ms: self.now_ms,
            term: self.agreement.term(),
            leader: self.agreement.leader(),
            echo: self.stamps.get(&peer).map(|s| s.0),
            // Measured from when the echoed stamp arrived here, which is
            // after the peer sent it: the peer's `stamp + left` can then
            // never pass this leader's own lease end.
            lease_left_ms: match (leading, self.stamps.get(&peer)) {
                (true, Some((_, rx))) => self
                    .leader_lease_until(self.now_ms)
                    .map_or(0, |u| u.saturating_sub(*rx)),
                _ => 0,
            },
            log_index: self.agreement.last_index(),
            groups,
            failed_links: self.failed_links.clone(),
            silent_ms: self
                .spec
                .peers
                .iter()
                .map(|p| {
                    let heard = self.reports.get(&p.id).map_or(0, |r| r.rx_ms);
                    (p.id, self.now_ms.saturating_sub(heard))
                })
                .collect(),
        }
    }

    /// When (this leader's clock) every lease `x` could hold has ended.
    fn lease_end(&self, x: NodeId) -> u64 {
        let me = self.spec.me;
        let term = self.agreement.term();
        let last = self.reports.get(&x).map(|r| r.rx_ms);
        let mut heard: Vec<Option<u64>> = Vec::new();
        let mut x_votes = false;
        let mut voters: Vec<NodeId> = self
            .spec
            .peers
            .iter()
            .filter(|p| p.voter)
            .map(|p| p.id)
            .collect();
        if self.spec.voter {
            voters.push(me);
        }
        for v in voters {
            if v == x {
                x_votes = true;
                continue;
            }
            if v == me {
                heard.push(Some(last.unwrap_or(0)));
                continue;
            }
            let bound = self.reports.get(&v).and_then(|r| {
                if r.report.term != term || r.report.leader != Some(me) {
                    return None;
                }
                let silent = r.report.silent_ms.iter().find(|(id, _)| *id == x)?.1;
                Some(r.rx_ms.saturating_sub(silent))
            });
            heard.push(bound);
        }
        lease::lease_end_bound(
            last,
            self.leader_since_ms,
            self.groups.lease_ms,
            x_votes,
            self.majority(),
            &heard,
        )
    }

    fn majority(&self) -> usize {
        match self.spec.mode {
            quorum::Mode::Majority { voters } => voters / 2 + 1,
            quorum::Mode::TwoNode => 2,
        }
    }

    /// The lease of a leader: echoes from voters following it in its term.
    fn leader_lease_until(&self, now_ms: u64) -> Option<u64> {
        let term = self.agreement.term();
        let echoes: Vec<u64> = self
            .spec
            .peers
            .iter()
            .filter(|p| p.voter)
            .filter_map(|p| {
                if self.fenced.contains(&p.id) {
                    return Some(now_ms);
                }
                let r = &self.reports.get(&p.id)?.report;
                let (inc, stamp) = r.echo?;
                (r.term == term && r.leader == Some(self.spec.me) && inc == self.incarnation)
                    .then_some(stamp)
            })
            .collect();
        lease::leader_lease_until(now_ms, &echoes, self.majority(), self.groups.lease_ms)
    }

    /// Until when (this member's clock) it may run its groups, if at all.
    pub fn lease_until(&self, now_ms: u64) -> Option<u64> {
        if !self.spec.voter && self.agreement.role() == Role::Leader {
            return None;
        }
        match self.agreement.role() {
            Role::Leader => self.leader_lease_until(now_ms),
            // A grant from any peer that claims to lead: each is bounded by
            // that leader's own lease, and the takeover bound of any later
            // leader covers every grantor (see `lease`). Counted only once
            // the log is applied as far as the grantor's, so a grant never
            // outruns a placement change the grantor already made.
            _ => self
                .reports
                .iter()
                .filter_map(|(id, pr)| {
                    let r = &pr.report;
                    let (inc, stamp) = r.echo?;
                    let granted = r.leader == Some(*id)
                        && r.term >= self.agreement.term()
                        && inc == self.incarnation
                        && self.agreement.commit_index() >= r.log_index;
                    granted.then(|| {
                        lease::holder_lease_until(stamp, r.lease_left_ms, self.groups.lease_ms)
                    })
                })
                .max(),
        }
    }

    /// Whether this member may run its groups at `now_ms`: quorate, and
    /// holding a lease.
    pub fn lease_valid(&self, now_ms: u64) -> bool {
        self.view().quorate && self.lease_until(now_ms).is_some_and(|u| now_ms < u)
    }

    /// The shell finished fencing `node` (on this leader): records the
    /// outcome and every attempt in the agreed record.
    pub fn fence_done(
        &mut self,
        now_ms: u64,
        node: &str,
        on: bool,
        ok: bool,
        attempts: Vec<String>,
    ) {
        self.now_ms = now_ms;
        if !on {
            self.fencing.remove(node);
            if ok {
                self.fenced_at_ms.insert(node.to_string(), now_ms);
                self.fence_retry.remove(node);
                // Two-node quorum: a peer confirmed off counts as its vote.
                let id = self
                    .groups
                    .hosts
                    .iter()
                    .position(|h| h == node)
                    .and_then(|i| self.groups.host_ids.get(i).copied());
                if let (quorum::Mode::TwoNode, Some(id)) = (self.spec.mode, id) {
                    if id != self.spec.me {
                        self.set_fenced(now_ms, id, true);
                    }
                }
            } else {
                let last = attempts.last().cloned().unwrap_or_default();
                self.fence_retry
                    .insert(node.to_string(), (now_ms + FENCE_RETRY_MS, last));
                self.lead_due_ms = Some(now_ms + FENCE_RETRY_MS);
            }
        }
        let cmd = Command::FenceLog {
            node: node.to_string(),
            at_unix_ms: self.unix_ms(now_ms),
            action: if on { "on" } else { "off" }.to_string(),
            ok,
            attempts,
        };
        // Not leading (a two-node survivor fences before it can lead, or
        // leadership moved meanwhile): record it once this member leads.
        if self.agreement.propose(now_ms, cmd.clone()).is_err() {
            if self.pending_fence_logs.len() == MAX_PENDING_FENCE_LOGS {
                self.pending_fence_logs.pop_front();
            }
            self.pending_fence_logs.push_back(cmd);
        }
    }

    /// Sends a request to the leader (handled here when this member leads;
    /// queued while no leader is known, the oldest dropped past a limit).
    pub fn request(&mut self, now_ms: u64, request: Request) {
        self.now_ms = now_ms;
        self.request_seq += 1;
        let env = RequestEnvelope {
            id: (self.incarnation, self.request_seq),
            request,
        };
        if self.queued_requests.len() == MAX_QUEUED_REQUESTS {
            self.queued_requests.pop_front();
        }
        self.queued_requests.push_back(env);
        self.flush_requests();
    }

    fn flush_requests(&mut self) {
        let Some(leader) = self.agreement.leader() else {
            return;
        };
        while let Some(env) = self.queued_requests.pop_front() {
            if leader == self.spec.me {
                let now = self.now_ms;
                self.on_request(now, env);
                continue;
            }
            let bytes = match serde_json::to_vec(&env) {
                Ok(b) => b,
                Err(_) => continue,
            };
            // Every shared link, so one lossy link does not lose an
            // operator's command; the leader drops duplicates by id.
            let links: Vec<usize> = self
                .spec
                .peers
                .iter()
                .find(|p| p.id == leader)
                .map(|p| {
                    (0..self.spec.links)
                        .filter(|&l| p.links.get(l).copied().unwrap_or(false))
                        .collect()
                })
                .unwrap_or_default();
            for link in links {
                if let Err(e) = self.transmit(leader, link, Body::Request(bytes.clone())) {
                    self.out.events.push(MemberEvent::SendFailed {
                        to: leader,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    fn on_request(&mut self, now_ms: u64, env: RequestEnvelope) {
        if self.seen_requests.contains(&env.id) {
            return;
        }
        if self.agreement.role() != Role::Leader {
            // Not (or no longer) the leader: pass it on if one is known.
            if self.agreement.leader().is_some_and(|l| l != self.spec.me) {
                self.queued_requests.push_back(env);
                self.flush_requests();
            }
            return;
        }
        if self.seen_requests.len() == MAX_SEEN_REQUESTS {
            self.seen_requests.pop_front();
        }
        self.seen_requests.push_back(env.id);
        if let Request::Fence { node, on } = &env.request {
            let item = (node.clone(), *on);
            if !self.out.fence.contains(&item) {
                self.out.fence.push(item);
            }
            return;
        }
        for cmd in self.commands_for(&env.request) {
            // A refused proposal (too many uncommitted) is lost; the
            // operator's command then times out and says so.
            let _ = self.agreement.propose(now_ms, cmd);
        }
    }

    fn commands_for(&self, request: &Request) -> Vec<Command> {
        let record = self.agreement.record();
        match request {
            Request::Move { group, node } => vec![Command::Pin {
                group: group.clone(),
                node: node.clone(),
            }],
            Request::Failover { group } => {
                let current = record.placements.get(group).and_then(|p| p.node.clone());
                let Some(g) = self.groups.groups.iter().find(|g| g.name == *group) else {
                    return vec![];
                };
                let facts = self.node_facts();
                let mut candidates: Vec<&String> = g.preferred.iter().collect();
                candidates.extend(self.groups.hosts.iter());
                let next = candidates.into_iter().find(|n| {
                    Some(*n) != current.as_ref()
                        && facts
                            .iter()
                            .find(|f| f.name == **n)
                            .is_some_and(|f| policy::ineligible_reason(g, f, record).is_none())
                });
                next.map_or_else(Vec::new, |n| {
                    vec![Command::Pin {
                        group: group.clone(),
                        node: Some(n.clone()),
                    }]
                })
            }
            Request::Standby { node, on } => vec![Command::SetIntent {
                target: node.clone(),
                intent: Intent::Standby,
                on: *on,
            }],
            Request::Maintenance { group, on } => vec![Command::SetIntent {
                target: group.clone(),
                intent: Intent::Maintenance,
                on: *on,
            }],
            // Handled before: the shell runs the devices.
            Request::Fence { .. } => vec![],
            Request::Cleanup { group } => {
                // Every node with a count or a recorded failure.
                let nodes: BTreeSet<&String> = record
                    .fail_counts
                    .get(group)
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .chain(
                        record
                            .failures
                            .get(group)
                            .into_iter()
                            .flat_map(|m| m.keys()),
                    )
                    .collect();
                nodes
                    .into_iter()
                    .map(|n| Command::FailCount {
                        group: group.clone(),
                        node: n.clone(),
                        count: 0,
                    })
                    .collect()
            }
            Request::Failed {
                group,
                node,
                reason,
                at_unix_ms,
                move_now,
            } => vec![
                Command::FailCount {
                    group: group.clone(),
                    node: node.clone(),
                    count: {
                        let next = record.fail_count(group, node).saturating_add(1);
                        let threshold = self
                            .groups
                            .groups
                            .iter()
                            .find(|g| g.name == *group)
                            .map_or(next, |g| g.migration_threshold);
                        if *move_now {
                            next.max(threshold)
                        } else {
                            next
                        }
                    },
                },
                Command::FailedAt {
                    group: group.clone(),
                    node: node.clone(),
                    at_unix_ms: *at_unix_ms,
                    reason: reason.clone(),
                },
            ],
        }
    }

    /// What the leader knows of every hosting node.
    fn node_facts(&self) -> Vec<NodeFacts> {
        self.groups
            .hosts
            .iter()
            .zip(&self.groups.host_ids)
            .map(|(h, &id)| {
                if id == self.spec.me {
                    return NodeFacts {
                        name: h.clone(),
                        online: true,
                        failed_links: self.failed_links.clone(),
                    };
                }
                NodeFacts {
                    name: h.clone(),
                    online: self.detector.node_state(id) == Some(NodeState::Alive)
                        && self.reports.contains_key(&id),
                    failed_links: self
                        .reports
                        .get(&id)
                        .map(|r| r.report.failed_links.clone())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    fn node_views(&self) -> Vec<NodeView> {
        let record = self.agreement.record();
        self.groups
            .hosts
            .iter()
            .zip(&self.groups.host_ids)
            .map(|(h, &id)| {
                let (groups, last): (&[GroupReport], Option<u64>) = if id == self.spec.me {
                    (&self.local_groups, Some(self.now_ms))
                } else {
                    match self.reports.get(&id) {
                        Some(r) => (&r.report.groups, Some(r.rx_ms)),
                        None => (&[], None),
                    }
                };
                let silent =
                    id != self.spec.me && self.detector.node_state(id) != Some(NodeState::Alive);
                let fenced = self
                    .fenced_at_ms
                    .get(h)
                    .is_some_and(|f| last.map_or(true, |l| *f > l));
                let fence_note = if self.fencing.contains(h) {
                    Some("fencing in progress".to_string())
                } else {
                    self.fence_retry.get(h).map(|(at, why)| {
                        format!(
                            "fencing failed, retry in {} ms: {why}",
                            at.saturating_sub(self.now_ms)
                        )
                    })
                };
                NodeView {
                    name: h.clone(),
                    last_report_ms: last,
                    lease_end_ms: (id != self.spec.me).then(|| self.lease_end(id)),
                    fence_required: self.groups.fence_hosts.contains(h),
                    silent,
                    fenced,
                    fence_note,
                    active: groups
                        .iter()
                        .filter(|g| g.active)
                        .map(|g| g.name.clone())
                        .collect(),
                    seen: groups
                        .iter()
                        .map(|g| {
                            // Our own groups see our own record.
                            let e = if id == self.spec.me {
                                record.placements.get(&g.name).map_or(0, |p| p.epoch)
                            } else {
                                g.epoch
                            };
                            (g.name.clone(), e)
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// The leader's placement loop: one safe step toward the policy's
    /// targets, once everything proposed before has committed.
    fn lead(&mut self) {
        if self.agreement.role() != Role::Leader
            || self.groups.groups.is_empty()
            || !self.view().quorate
            || self.agreement.last_index() != self.agreement.commit_index()
            || self.agreement.record().config_hash != self.spec.config_hash
        {
            self.waiting.clear();
            self.lead_due_ms = None;
            return;
        }
        let now = self.now_ms;
        while let Some(cmd) = self.pending_fence_logs.pop_front() {
            let _ = self.agreement.propose(now, cmd);
        }
        let record = self.agreement.record().clone();
        // Expired failures first: they change eligibility.
        let unix = self.unix_ms(now);
        let mut cmds = Vec::new();
        for (gi, g) in self.groups.groups.iter().enumerate() {
            let expiry = self
                .groups
                .failure_expiry_ms
                .get(gi)
                .copied()
                .unwrap_or(u64::MAX);
            if let Some(fs) = record.failures.get(&g.name) {
                for (node, (at, _)) in fs {
                    if unix.saturating_sub(*at) >= expiry {
                        cmds.push(Command::FailCount {
                            group: g.name.clone(),
                            node: node.clone(),
                            count: 0,
                        });
                    }
                }
            }
        }
        if cmds.is_empty() {
            let facts = self.node_facts();
            let targets: BTreeMap<String, Target> =
                policy::targets(&self.groups.groups, &facts, &record);
            let views = self.node_views();
            let steps = handover::steps(&handover::HandoverInput {
                now_ms: now,
                leader_since_ms: self.leader_since_ms,
                lease_ms: self.groups.lease_ms,
                margin_ms: lease::takeover_margin_ms(
                    self.spec.timing.heartbeat_ms,
                    self.groups.lease_ms,
                ),
                record: &record,
                targets: &targets,
                nodes: &views,
            });
            self.waiting = steps.waiting;
            self.lead_due_ms = steps.retry_at_ms;
            cmds = steps.propose;
            for node in steps.fence {
                let retry = self.fence_retry.get(&node).map(|r| r.0);
                if self.fencing.contains(&node) || retry.is_some_and(|r| now < r) {
                    continue;
                }
                self.fencing.insert(node.clone());
                self.out.fence.push((node, false));
            }
        }
        for cmd in cmds {
            let _ = self.agreement.propose(now, cmd);
        }
    }
}
