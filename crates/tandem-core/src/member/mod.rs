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

mod coordination;
mod voter_request;
pub use voter_request::{VoterOutcome, MAX_VOTER_WISHES, VOTER_WISH_MS};
pub mod record_check;

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
#[derive(Clone)]
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
    /// Identity of the configuration this member runs
    /// ([`crate::config::identity`]): its hash.
    pub config_hash: String,
    /// Its sections' hashes (sent to peers while it differs from the
    /// committed configuration, so they can say which sections differ).
    pub config_sections: Vec<(String, String)>,
    /// Fingerprint of the cluster key it sends with.
    pub key_fingerprint: String,
    /// Member names in configuration order, for the record.
    pub member_names: Vec<String>,
}

/// Written by hand: the keys must never reach a log through `{:?}`.
impl std::fmt::Debug for MemberSpec {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberSpec")
            .field("cluster", &self.cluster)
            .field("me", &self.me)
            .field("voter", &self.voter)
            .field("peers", &self.peers)
            .field("links", &self.links)
            .field("mode", &self.mode)
            .field("wait_for_all", &self.wait_for_all)
            .field("timing", &self.timing)
            .field("keys", &format_args!("[{} redacted]", self.keys.len()))
            .field("config_hash", &self.config_hash)
            .field("key_fingerprint", &self.key_fingerprint)
            .field("member_names", &self.member_names)
            .finish_non_exhaustive()
    }
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
    /// A committed entry placed a group (or stopped it everywhere).
    Placed {
        /// Group.
        group: String,
        /// Its node now (None: stopped everywhere).
        node: Option<String>,
        /// The placement's new epoch.
        epoch: u64,
        /// The leader's reason.
        reason: Option<String>,
    },
    /// This node's record differed from the leader's at the same index
    /// (a damaged state file): it was discarded and is fetched again; no
    /// lease until it matches.
    RecordDiverged {
        /// The index both had.
        index: u64,
    },
    /// This node's record matched the leader's: it may hold a lease.
    RecordVerified {
        /// The index both had.
        index: u64,
    },
    /// A node that lost its state followed a leader and votes again.
    Recovered {
        /// Term it followed in.
        term: u64,
        /// Leader of that term.
        leader: NodeId,
    },
    /// What became of an operator's wish that a node vote or not
    /// (`tandem node add|remove`), on the leader.
    VoterChange {
        /// The node.
        node: String,
        /// Whether it was to vote.
        vote: bool,
        /// Proposed, done, or refused with why.
        outcome: VoterOutcome,
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
    /// Its state there.
    pub state: crate::group::GroupState,
    /// Since when, ms since the Unix epoch.
    pub since_unix_ms: u64,
    /// The latest failure there, if any.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub failure: Option<String>,
    /// Its stop failed there and it may still run: why. The leader fences
    /// the node if a device can; otherwise the group stays blocked.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop_failed: Option<String>,
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
    /// from when the echoed stamp arrived at the sender (a stop grant for
    /// groups the recipient is stopping, see `Member::group_until`).
    #[serde(default)]
    pub lease_left_ms: u64,
    /// Sender's last log index.
    pub log_index: u64,
    /// Index of the newest `Place` entry in the sender's log, committed or
    /// not: the recipient counts the echo toward its lease once it has
    /// committed this far ([`crate::lease`]). Missing (a sender of an older
    /// version): never, so such an echo never extends a lease.
    #[serde(default = "never")]
    pub place_index: u64,
    /// Sender's commit index and the term of that entry: in two-node mode
    /// a node whose log lacks what its peer committed must not lead alone
    /// (`coordination::behind`).
    #[serde(default)]
    pub commit: (u64, u64),
    /// The sender's commit index and the digest of its record there
    /// ([`record_check`]): a follower compares its own with its leader's
    /// before it may hold a lease.
    #[serde(default)]
    pub record_at: Option<(u64, u64)>,
    /// Groups on the sender.
    pub groups: Vec<GroupReport>,
    /// Links whose ping monitor fails on the sender.
    pub failed_links: Vec<String>,
    /// Per peer, ms since the sender last received a stamp from it (its
    /// uptime when never): bounds leases after a leader change.
    #[serde(default)]
    pub silent_ms: Vec<(NodeId, u64)>,
    /// Identity of the configuration the sender runs.
    #[serde(default)]
    pub config: String,
    /// Its sections' hashes, sent only while it differs from the committed
    /// configuration.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub config_sections: Vec<(String, String)>,
    /// Fingerprint of the sender's cluster key.
    #[serde(default)]
    pub key_fp: String,
    /// The sender arms a required watchdog that has reset it at most this
    /// long after its lease ended ([`crate::config::WatchdogSpec::resets_within_ms`]):
    /// the leader counts it fenced then. Each node says so of itself, so
    /// a node on another configuration or without the device is never
    /// counted reset.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub watchdog_reset_ms: Option<u64>,
    /// The sender counts its leader's heartbeats as contact and learns
    /// the commit index from them, so its leader may spare it empty
    /// appends (absent from agents before this: they get an append every
    /// heartbeat, or their election timers would fire).
    #[serde(default)]
    pub beats_count: bool,
    /// Per link, the newest stamp the sender received from the recipient
    /// on it: the recipient's round trip on each link ([`crate::link_rtt`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub link_echo: Vec<crate::link_rtt::LinkEcho>,
}

/// What a peer said of the configuration it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerConfig<'a> {
    /// Identity of its configuration.
    pub identity: &'a str,
    /// Its sections' hashes (only while configurations differ).
    pub sections: &'a [(String, String)],
    /// Fingerprint of its key.
    pub key_fingerprint: &'a str,
}

fn never() -> u64 {
    u64::MAX
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
    /// `tandem node add|remove`: the node votes from now on (and may host
    /// groups), or stops voting (and hosts none: standby).
    Voter {
        /// Node.
        node: String,
        /// Vote (add) or not (remove).
        vote: bool,
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
    /// A volume's copy asks the cluster to record which copies are up to
    /// date (compare-and-set on the facts' version).
    Volume {
        /// Volume name.
        volume: String,
        /// The facts' version the node saw.
        expect_version: u64,
        /// The copies up to date from now on.
        up_to_date: Vec<String>,
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
        /// Bar the group from every hosting node (fail count to the
        /// threshold everywhere): the failure is in its configuration and
        /// would recur wherever it ran (OCF's "not configured").
        #[serde(default)]
        everywhere: bool,
        /// What the leader is to do ([`crate::on_fail`]). A sender of an
        /// older version leaves it out (`count`) and says `move_now` or
        /// `everywhere` instead; a newer sender sets those too, so that an
        /// older leader at least moves the group.
        #[serde(default)]
        then: crate::on_fail::Escalation,
    },
    /// `tandem config apply`: every member has staged and accepted the
    /// configuration of this hash; the cluster may switch to it.
    ConfigNext {
        /// The new configuration's hash.
        hash: String,
    },
}

/// A request with its sender's id for it (duplicates are dropped): the
/// sending member, its incarnation and its sequence number. The member is
/// part of it because incarnations come from the clock, and two agents
/// started in the same microsecond share one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct RequestEnvelope {
    id: RequestId,
    request: Request,
}

/// Who sent a request (member, incarnation) and its number there.
type RequestId = (NodeId, u64, u64);

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
    /// Per group (configuration order): the longest its stop may take on
    /// a node (every resource's stop limit). A heard node that still runs
    /// the group this long after it applied a placement elsewhere (plus a
    /// deadtime for its report) is a stray ([`crate::handover::StrayWatch`]).
    pub stop_bound_ms: Vec<u64>,
}

/// A group's stop bound when [`GroupsSpec::stop_bound_ms`] does not say.
pub const DEFAULT_STOP_BOUND_MS: u64 = 60_000;

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
    /// Last sequence number sent to each recipient (one stream per
    /// recipient, as the recipient's replay window is per sender).
    seq: BTreeMap<NodeId, u64>,
    detector: FailureDetector,
    replay: ReplayGuard,
    agreement: Agreement,
    dropped: BTreeMap<DropReason, u64>,
    all_seen: bool,
    seen: BTreeSet<NodeId>,
    fenced: BTreeSet<NodeId>,
    /// Its log was lost (started recovering, or its record was found
    /// damaged and discarded) and it has not caught up with a leader
    /// since: see `place_index`.
    log_lost: bool,
    /// This incarnation's record compared with its leader's.
    record_check: record_check::RecordCheck,
    /// Peers that left with a statement of what they run, and the
    /// incarnation that left (a later one is a return).
    left_clean: BTreeMap<NodeId, u64>,
    /// Fence-backed (two-node with fencing) and has held a lease this
    /// incarnation: keeps it (`coordination::fence_backed`).
    lease_backed: bool,
    /// Two-node mode and a fence device lists this node (set with the
    /// groups): the static half of `coordination::fence_backed`.
    fence_listed: bool,
    view: Option<View>,
    heartbeat_due_ms: u64,
    /// Time of the latest input, for work started from `take_output`.
    now_ms: u64,
    persist: bool,
    out: MemberOutput,
    /// Newest stamp received from each peer: (its incarnation, sent_ms),
    /// and when it arrived (this member's clock).
    stamps: BTreeMap<NodeId, ((u64, u64), u64)>,
    /// Newest stamp received from each peer on each link (bounded by the
    /// configuration: peers x links).
    link_stamps: BTreeMap<(NodeId, usize), crate::link_rtt::Stamp>,
    /// Round trips to each peer on each link.
    rtt: BTreeMap<(NodeId, usize), crate::link_rtt::RttStats>,
    /// Latest report from each peer.
    reports: BTreeMap<NodeId, PeerReport>,
    /// Echoes of this member's stamps from each voter, for its lease.
    echoes: BTreeMap<NodeId, lease::Echoes>,
    /// Groups running here that the record moved away: the lease this
    /// member held on the record before that decision (its clock).
    leaving: BTreeMap<String, u64>,
    /// The commit index `leaving` was last brought up to date at.
    leaving_commit: u64,
    /// When this member last became leader.
    leader_since_ms: u64,
    /// This node's groups as the shell reports them.
    local_groups: Vec<GroupReport>,
    failed_links: Vec<String>,
    groups: GroupsSpec,
    /// Wall clock (ms since the Unix epoch) at `now_ms == 0`.
    unix_at_zero_ms: u64,
    request_seq: u64,
    seen_requests: std::collections::VecDeque<RequestId>,
    queued_requests: std::collections::VecDeque<RequestEnvelope>,
    /// Why groups wait, as the leader last computed it.
    waiting: BTreeMap<String, String>,
    /// When a waiting takeover becomes possible (leader's clock).
    lead_due_ms: Option<u64>,
    /// Something the placement loop reads changed since it last ran.
    lead_dirty: bool,
    /// [`Member::step`] ran since the last [`Member::take_output`].
    stepped: bool,
    /// When the placement loop last ran (this member's clock).
    last_lead_ms: u64,
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
    /// Groups heard nodes run against the record, and since when.
    strays: crate::handover::StrayWatch,
    /// The term those sightings belong to.
    strays_term: u64,
    /// This node arms a required watchdog that resets it this long after
    /// its lease ended (sent in reports).
    own_watchdog_reset_ms: Option<u64>,
    /// Per configured peer, packets that named it as sender but failed
    /// authentication: (count, this member's time of the latest).
    bad_mac_from: BTreeMap<NodeId, (u64, u64)>,
    /// Leader: when it last handed leadership over because its
    /// configuration is not the one a majority runs.
    config_handoff_ms: Option<u64>,
    /// Leader: the configuration change under way ([`Record::config_next`])
    /// and when this member first saw it while leading, for its bound.
    config_next_since: Option<(String, u64)>,
    /// When (this member's clock) the voters last moved here: a change
    /// appended, committed or dropped, or this start. See
    /// [`Member::change_voters`] for what waits on it.
    voters_moved_ms: u64,
    /// The voters and whether a change of them was uncommitted, when
    /// `voters_moved_ms` was last set.
    voters_noted: (Vec<NodeId>, bool),
    /// Leader only: operators' wishes for nodes' votes, carried out in
    /// order ([`voter_request`]; at most [`MAX_VOTER_WISHES`]).
    voter_wishes: std::collections::VecDeque<voter_request::VoterWish>,
}

/// Why a change of voters was refused ([`Member::change_voters`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VoterChangeError {
    /// Two-node mode changes its voters only by a restart.
    #[error("a two-node cluster changes its voters while running only between one node and two (`tandem node add` to a node standing alone, `tandem node remove` of one of a pair): install the new configuration on every node and restart the agents one at a time")]
    TwoNode,
    /// More than [`quorum::MAX_VOTERS`] voters.
    #[error(
        "at most {} nodes vote; the others follow as non-voters",
        quorum::MAX_VOTERS
    )]
    TooMany,
    /// The previous change is too recent: nodes that missed it may still
    /// hold a lease on the voters before it.
    #[error("the previous change of voters is too recent: try again in {wait_ms} ms")]
    Settling {
        /// How long until a change may be proposed.
        wait_ms: u64,
    },
    /// The agreement engine refused it.
    #[error(transparent)]
    Agreement(ProposeError),
}

/// Whether a two-node cluster may change its voters from `from` voters to
/// `to` while running: a node standing alone (two-node mode configured,
/// one voter, ruled by a majority of one) takes a second voter (`tandem
/// node add`), and a pair gives one vote up to stand alone again (`tandem
/// node remove`), the same set rewritten included. No fence-backed holder
/// crosses such a change: a lone voter holds by its majority of one, and
/// the voter leaving a pair hosts no group by then (`node remove` moves
/// its groups away first; forgetting it is refused while it hosts one).
pub fn two_node_change_ok(from: usize, to: usize) -> bool {
    (1..=2).contains(&from) && (1..=2).contains(&to) && (from == 1 || to == 1)
}

/// How long a configuration change may take before the leader commits it
/// with the voters that switched (a majority; the others catch up) or
/// abandons it: the slowest node's switch stops the groups the change
/// restarts, within their stop timeouts.
pub const CONFIG_SWITCH_BOUND_MS: u64 = 30_000;

/// A leader that has not switched to a configuration a majority of voters
/// switched to hands leadership over after this many deadtimes (it
/// normally switches within that time itself).
const HAND_OFF_AFTER_DEADTIMES: u64 = 5;

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
        let log_lost = persisted.agreement.recovering;
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
        let mut agreement = Agreement::new(
            spec.me,
            voters,
            learners,
            agreement::Timing::from_membership(&spec.timing),
            persisted.agreement,
            now_ms,
            seed ^ incarnation,
        );
        // Only two-node mode counts a fenced peer as its vote.
        agreement.set_fence_votes(spec.mode == quorum::Mode::TwoNode);
        let mut m = Member {
            detector: FailureDetector::new(spec.timing, &ids, spec.links, now_ms),
            incarnation,
            seq: BTreeMap::new(),
            replay: ReplayGuard::default(),
            agreement,
            dropped: DropReason::ALL.iter().map(|r| (*r, 0)).collect(),
            all_seen: false,
            seen: BTreeSet::new(),
            left_clean: BTreeMap::new(),
            record_check: record_check::RecordCheck::default(),
            log_lost,
            fenced: BTreeSet::new(),
            lease_backed: false,
            fence_listed: false,
            view: None,
            heartbeat_due_ms: now_ms,
            now_ms,
            // The new incarnation must be on disk before any packet carries it.
            persist: true,
            out: MemberOutput::default(),
            stamps: BTreeMap::new(),
            link_stamps: BTreeMap::new(),
            rtt: BTreeMap::new(),
            reports: BTreeMap::new(),
            echoes: BTreeMap::new(),
            leaving: BTreeMap::new(),
            leaving_commit: 0,
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
            lead_dirty: true,
            stepped: false,
            last_lead_ms: 0,
            fenced_at_ms: BTreeMap::new(),
            fencing: BTreeSet::new(),
            fence_retry: BTreeMap::new(),
            pending_fence_logs: std::collections::VecDeque::new(),
            strays: crate::handover::StrayWatch::default(),
            strays_term: 0,
            own_watchdog_reset_ms: None,
            bad_mac_from: BTreeMap::new(),
            config_handoff_ms: None,
            config_next_since: None,
            voters_moved_ms: now_ms,
            voters_noted: (Vec::new(), false),
            voter_wishes: std::collections::VecDeque::new(),
            spec,
        };
        m.voters_noted = (m.agreement.voters().to_vec(), m.agreement.voters_changing());
        m.note_all_seen();
        m.update_view();
        m.note_own_digest();
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

    /// The voters now: the latest change of voters in this member's log,
    /// committed or not, else those of the configuration.
    pub fn voters(&self) -> &[NodeId] {
        self.agreement.voters()
    }

    /// The quorum rule over the voters now: two-node mode as configured
    /// (its voters never change while running, see
    /// [`Member::change_voters`]), else a majority of however many vote.
    pub fn mode(&self) -> quorum::Mode {
        if self.two_node() {
            quorum::Mode::TwoNode
        } else {
            quorum::Mode::Majority {
                voters: self.voters().len(),
            }
        }
    }

    /// Two-node mode: configured so, and two voters. A log whose voters
    /// changed before a restart with a two-node configuration (its voters
    /// override the configuration's) is ruled by majority, never by the
    /// two-node hook meant for a pair.
    pub(crate) fn two_node(&self) -> bool {
        self.spec.mode == quorum::Mode::TwoNode && self.voters().len() == 2
    }

    /// The current quorum view.
    pub fn view(&self) -> View {
        let me = self.spec.me;
        let voters = self.voters();
        let heard = voters
            .iter()
            .filter(|v| **v != me && self.detector.node_state(**v) == Some(NodeState::Alive))
            .count();
        let peer_fenced = !self.fenced.is_empty();
        let mut v = quorum::view(self.mode(), voters.contains(&me), heard, peer_fenced);
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

    /// The step after each batch of inputs, before [`Member::take_output`]:
    /// applies what the agreement committed, passes queued requests to the
    /// leader, runs the leader's placement pass (`lead`) when it is
    /// needed, and notes the lease the record now gives this member.
    pub fn step(&mut self) {
        let a = self.agreement.take_output();
        self.absorb(a);
        // Before the placement pass: its takeover bounds count from when
        // the voters moved (hostile review: a commit first seen here was
        // otherwise dated from its append).
        self.note_voters();
        self.flush_requests();
        if self.lead_needed() {
            self.lead();
        }
        let a = self.agreement.take_output();
        self.absorb(a);
        self.note_voters();
        self.note_lease();
        if self.log_lost && self.agreement.synced() {
            self.log_lost = false;
        }
        self.stepped = true;
    }

    /// Takes the work accumulated so far (it only drains: the decisions
    /// were made by [`Member::step`], which must run first).
    pub fn take_output(&mut self) -> MemberOutput {
        debug_assert!(
            self.stepped,
            "take_output without step: the leader's placement pass would not run"
        );
        self.stepped = false;
        let mut out = std::mem::take(&mut self.out);
        if self.persist {
            self.persist = false;
            out.persist = Some(self.persisted());
        }
        out
    }

    /// Whether the leader's placement loop must run now: something it
    /// reads changed (the record, a node's state or groups, a request), a
    /// group waits (its bounds move with every report and acknowledgement),
    /// a retry is due, or a heartbeat passed (a safety net). Running it on
    /// every datagram was the largest single cost of an idle leader.
    fn lead_needed(&self) -> bool {
        self.lead_dirty
            || !self.waiting.is_empty()
            || self.lead_due_ms.is_some_and(|d| self.now_ms >= d)
            || self.now_ms >= self.last_lead_ms + self.spec.timing.heartbeat_ms
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

    /// A datagram received on `link`.
    pub fn on_datagram(&mut self, now_ms: u64, link: usize, bytes: &[u8]) {
        self.now_ms = now_ms;
        let keys: Vec<&Key> = self.spec.keys.iter().collect();
        let verdict = wire::decode(bytes, self.spec.cluster, self.spec.me, &keys).and_then(|p| {
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
                // Which configured peer it claims to come from (unproven,
                // for the operator only): a peer whose every packet fails
                // authentication has another cluster key.
                if reason == DropReason::BadMac {
                    if let Some(from) = wire::claimed_sender(bytes)
                        .filter(|id| self.spec.peers.iter().any(|p| p.id == *id))
                    {
                        let e = self.bad_mac_from.entry(from).or_insert((0, now_ms));
                        e.0 = e.0.saturating_add(1);
                        e.1 = now_ms;
                    }
                }
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
                        Ok(r) => {
                            self.on_link_stamp(now_ms, from, link, p.header.incarnation, &r);
                            self.on_report(now_ms, from, p.header.incarnation, r, true)
                        }
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
            Body::Leave { report } => {
                // Its statement of what it still runs: what it says is
                // stopped need not be fenced or waited for (it is
                // authenticated, and this incarnation runs nothing more).
                match serde_json::from_slice::<Report>(&report) {
                    Ok(r) if !report.is_empty() => {
                        self.on_report(now_ms, from, p.header.incarnation, r, false);
                        self.left_clean.insert(from, p.header.incarnation);
                    }
                    Ok(_) | Err(_) if report.is_empty() => {}
                    Ok(_) | Err(_) => {
                        *self.dropped.entry(DropReason::Malformed).or_default() += 1;
                    }
                }
                let ev = self.detector.on_leave(now_ms, from, p.header.incarnation);
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

    /// A report that arrived on `link`: the newest stamp from `from` there,
    /// and a round trip if it echoes one of this member's on that link.
    fn on_link_stamp(
        &mut self,
        now_ms: u64,
        from: NodeId,
        link: usize,
        incarnation: u64,
        r: &Report,
    ) {
        if link >= self.spec.links {
            return;
        }
        let stamp = crate::link_rtt::Stamp {
            incarnation,
            sent_ms: r.sent_ms,
            rx_ms: now_ms,
        };
        let newer = self.link_stamps.get(&(from, link)).map_or(true, |s| {
            (s.incarnation, s.sent_ms) < (incarnation, r.sent_ms)
        });
        if newer {
            self.link_stamps.insert((from, link), stamp);
        }
        if let Some(e) = r.link_echo.iter().find(|e| usize::from(e.link) == link) {
            self.rtt
                .entry((from, link))
                .or_default()
                .on_echo(now_ms, self.incarnation, e);
        }
    }

    /// Round trips measured to `peer` on `link`.
    pub fn link_rtt(&self, peer: NodeId, link: usize) -> Option<&crate::link_rtt::RttStats> {
        self.rtt.get(&(peer, link))
    }

    /// Proposes a change to the record (only the leader accepts).
    pub fn propose(&mut self, now_ms: u64, cmd: Command) -> Result<u64, ProposeError> {
        if let Command::Voters { voters } = cmd {
            return self.change_voters(now_ms, voters).map_err(|e| match e {
                VoterChangeError::Agreement(p) => p,
                _ => ProposeError::VotersChanging,
            });
        }
        self.now_ms = now_ms;
        self.agreement.propose(now_ms, cmd)
    }

    /// On the leader: proposes that `voters` (sorted, one node more or
    /// less than now, among the configured nodes) vote from now on.
    ///
    /// Leases stay sound across the change because (a) a node counts an
    /// echo only once it has committed every change of voters the echoing
    /// voter held (`place_index`), (b) while a change is
    /// uncommitted a lease needs a majority of the voters before and after
    /// it, and a leader's takeover bound is the later of both sets', and
    /// (c) a change is proposed only a lease after the previous one was
    /// seen committed (`voters_moved_ms`): by then a node that missed it
    /// has no lease left (the voters that committed it no longer echo
    /// for it), so a lease rests on the voters of the latest change, or of
    /// the one before while the latest is uncommitted, never older ones.
    ///
    /// In two-node mode only between one voter and two
    /// ([`two_node_change_ok`]): a fence-backed holder keeps its groups
    /// without a lease's end, which no takeover bound could cover across a
    /// change of a pair into another pair; a pair changes those by a
    /// restart with a new configuration.
    pub fn change_voters(
        &mut self,
        now_ms: u64,
        voters: Vec<NodeId>,
    ) -> Result<u64, VoterChangeError> {
        self.now_ms = now_ms;
        if self.spec.mode == quorum::Mode::TwoNode
            && !two_node_change_ok(self.voters().len(), voters.len())
        {
            return Err(VoterChangeError::TwoNode);
        }
        if voters.len() > quorum::MAX_VOTERS {
            return Err(VoterChangeError::TooMany);
        }
        let ready_at_ms = self.voters_moved_ms + self.groups.lease_ms;
        if now_ms < ready_at_ms {
            return Err(VoterChangeError::Settling {
                wait_ms: ready_at_ms - now_ms,
            });
        }
        let index = self
            .agreement
            .propose(now_ms, Command::Voters { voters })
            .map_err(VoterChangeError::Agreement)?;
        self.note_voters();
        Ok(index)
    }

    /// Notes when the voters moved here (a change appended, committed or
    /// dropped): the time [`Member::change_voters`] and the takeover bound
    /// ([`Member::lease_end`]) count from.
    fn note_voters(&mut self) {
        let now = (
            self.agreement.voters().to_vec(),
            self.agreement.voters_changing(),
        );
        if now != self.voters_noted {
            self.voters_noted = now;
            self.voters_moved_ms = self.now_ms;
            self.lead_dirty = true;
            self.note_all_seen();
            self.update_view();
        }
    }

    /// The fencing machinery confirmed `peer` off (or it came back).
    pub fn set_fenced(&mut self, now_ms: u64, peer: NodeId, fenced: bool) {
        self.lead_dirty = true;
        if fenced {
            self.fenced.insert(peer);
        } else {
            self.fenced.remove(&peer);
        }
        self.agreement.set_fenced(now_ms, peer, fenced);
        self.update_view();
    }

    /// A graceful stop: hand leadership over and tell every peer on every
    /// link, so nobody waits for deadtime. Each leave carries this node's
    /// last report (from [`Member::set_local`]): what it still runs. The
    /// leader places what it says is stopped elsewhere at once, without a
    /// fence and without waiting out the lease.
    pub fn leave(&mut self) {
        self.agreement.hand_off();
        let a = self.agreement.take_output();
        self.absorb(a);
        let reports = self.encoded_reports();
        self.broadcast(|to, _| Body::Leave {
            report: reports.get(&to).cloned().unwrap_or_default(),
        });
    }

    /// This member's report for each peer, encoded (heartbeats and the
    /// leave carry them).
    fn encoded_reports(&self) -> BTreeMap<NodeId, Vec<u8>> {
        self.spec
            .peers
            .iter()
            .map(|p| {
                let r = self.report_for(p.id);
                (p.id, serde_json::to_vec(&r).unwrap_or_default())
            })
            .collect()
    }

    fn send_heartbeats(&mut self) {
        let heard: Vec<Vec<NodeId>> = (0..self.spec.links)
            .map(|l| self.detector.heard_on(l))
            .collect();
        let reports = self.encoded_reports();
        self.broadcast(|to, link| Body::Heartbeat {
            // Validation allows a handful of links; never past 255.
            link: u8::try_from(link).unwrap_or(u8::MAX),
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
        let seq = self.seq.entry(to).or_default();
        *seq += 1;
        let header = Header {
            cluster: self.spec.cluster,
            sender: self.spec.me,
            recipient: to,
            incarnation: self.incarnation,
            seq: *seq,
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
        if !a.notes.is_empty() {
            self.lead_dirty = true;
        }
        // Before any later echo counts on the new record.
        self.catch_up_leaving();
        for note in a.notes {
            match note {
                Note::Leader { term, leader } => {
                    self.out.events.push(MemberEvent::Leader { term, leader });
                    self.record_check.leader_changed();
                    if leader == Some(self.spec.me) {
                        // Elected by a majority: its record is the reference.
                        self.record_check.set_verified();
                    }
                    // Leases follow the leader: tell every peer now.
                    self.heartbeat_due_ms = self.now_ms;
                    if leader == Some(self.spec.me) {
                        self.leader_since_ms = self.now_ms;
                        self.propose_config();
                    }
                }
                Note::Applied { index } => {
                    self.out.events.push(MemberEvent::Applied { index });
                    self.note_own_digest();
                }
                Note::Placed {
                    group,
                    node,
                    epoch,
                    reason,
                } => {
                    self.out.events.push(MemberEvent::Placed {
                        group,
                        node,
                        epoch,
                        reason,
                    });
                }
                Note::Recovered { term, leader } => {
                    self.out
                        .events
                        .push(MemberEvent::Recovered { term, leader });
                }
            }
        }
    }

    /// Whether its log was lost (state discarded, or a damaged record
    /// dropped) and it has not caught up with a leader since: its echoes
    /// count for no lease meanwhile.
    pub fn log_lost(&self) -> bool {
        self.log_lost && !self.agreement.synced()
    }

    /// Whether this incarnation's record has matched its leader's (or it
    /// leads): before that it holds no lease.
    pub fn record_verified(&self) -> bool {
        self.record_check.verified()
    }

    /// Digests the record at the commit index just reached and compares.
    fn note_own_digest(&mut self) {
        let index = self.agreement.commit_index();
        let d = record_check::digest(self.agreement.record());
        let v = self.record_check.note_own(index, d);
        self.on_record_verdict(v);
    }

    /// Acts on a comparison of this node's record with the leader's.
    pub(super) fn on_record_verdict(&mut self, v: record_check::Verdict) {
        match v {
            record_check::Verdict::Pending => {}
            record_check::Verdict::Agrees { index } => {
                self.out.events.push(MemberEvent::RecordVerified { index });
            }
            record_check::Verdict::Differs { index } => {
                self.out.events.push(MemberEvent::RecordDiverged { index });
                self.agreement.discard_record();
                self.record_check.reset();
                self.log_lost = true;
                self.persist = true;
                self.lead_dirty = true;
            }
        }
    }

    /// A new leader records the configuration it runs, if it is new and
    /// may be (see [`Member::may_commit_config`]).
    fn propose_config(&mut self) {
        // A change under way is the leader's own rule's ([`Member::lead`]).
        if self.agreement.record().config_hash == self.spec.config_hash
            || self.agreement.record().config_next.is_some()
            || !self.may_commit_config()
        {
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
        self.lead_dirty = true;
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
        self.note_all_seen();
        self.update_view();
    }

    /// Wait-for-all ends once every voter was seen (at once for a node
    /// that is its only voter: one standing alone in two-node mode). Not
    /// while a change of voters is uncommitted: a pair member restarted
    /// with a change to itself alone in its log may see the change
    /// dropped, and must then not fence a peer it never saw.
    fn note_all_seen(&mut self) {
        let me = self.spec.me;
        if !self.all_seen
            && !self.agreement.voters_changing()
            && self
                .agreement
                .voters()
                .iter()
                .all(|v| *v == me || self.seen.contains(v))
        {
            self.all_seen = true;
        }
    }

    fn update_view(&mut self) {
        let v = self.view();
        if self.view != Some(v) {
            self.view = Some(v);
            self.out.events.push(MemberEvent::Quorum(v));
        }
    }
}
