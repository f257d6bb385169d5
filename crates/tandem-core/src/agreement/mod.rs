//! Agreement: one replicated [`Record`] among the voters, by Raft.
//!
//! A sans-IO Raft engine: messages and `now` in, messages to send, state to
//! persist and notes out. It has pre-vote (a node cut off and healed cannot
//! depose a working leader), check-quorum (a leader that stops hearing a
//! majority steps down within `election_min_ms`), leadership hand-off on a
//! graceful stop, log compaction into a snapshot of the record, learners
//! (non-voters that receive the record), and a hook for two-node clusters:
//! a voter confirmed fenced counts as a vote (it is off, so it cannot vote
//! elsewhere) — but only on a node that has been *in sync* since its own
//! start (it held everything a leader had committed, or was elected by
//! real votes). Without that rule a node fenced earlier, rebooted and not
//! yet caught up could fence the survivor and lose entries the survivor
//! committed alone (found by the simulation, seed 505). A leader that
//! counts a peer as fenced says so in its appends, so that peer, rebooted
//! and hearing the leader while the leader cannot hear it, does not take
//! itself for in sync.
//!
//! Voters change one at a time (Raft's single-server membership change,
//! thesis section 4.1): a [`Command::Voters`] entry names the voters from
//! the moment it is in a node's log, committed or not, and a node that
//! loses the entry to a conflicting leader returns to the voters before
//! it. Any majority of the voters before a one-voter change and any
//! majority after it share a node, so two leaders of a term cannot be
//! elected by old and new voters. A leader proposes a change only once
//! an entry of its own term has committed and no change is uncommitted
//! (the correction to the thesis's rule for changes across leaders); a
//! leader that is no longer a voter hands over and steps down once the
//! change committed. A fenced voter counts as a vote only for a member
//! of a settled pair (exactly two voters, no change uncommitted), and a
//! change away from a pair commits, and is won in elections, only with
//! both of the pair: the two-node rule is about that pair alone, and
//! neither may be left believing in it while others vote.
//!
//! Why not openraft: its engine is driven through async storage and network
//! traits on a runtime, while the deterministic simulation (`tests/simulation.rs`)
//! needs to step every node by hand with simulated time. The protocol here
//! is the plain one from the Raft paper (sections 5 and 7, pre-vote and
//! check-quorum from section 9.6 of the thesis) and small enough to check.
//!
//! The caller must apply an [`Output`] in order: write `persist` to stable
//! storage (fsync) *before* sending any of `send`; Raft's safety rests on a
//! vote or an appended entry being durable before anyone hears of it.

pub mod record;

use std::collections::{BTreeMap, BTreeSet};

use serde::{Deserialize, Serialize};

pub use record::{Command, FenceEntry, Intent, Placement, Record, MAX_REASON_BYTES};

use crate::wire::NodeId;

/// Entries after the snapshot before the applied prefix is compacted.
pub const COMPACT_AFTER: u64 = 128;
/// Most uncommitted entries a leader accepts before refusing proposals.
pub const MAX_UNCOMMITTED: u64 = 256;
/// Acknowledgement times kept per peer ([`Agreement::held_since`]).
pub const MAX_HELD_SINCE: usize = 64;
/// Most entries in one append message.
pub const MAX_ENTRIES_PER_MESSAGE: usize = 32;

/// Timers of the protocol.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timing {
    /// A leader's timer for appends: a peer that lacks entries, or the
    /// latest commit index, or whose membership heartbeats do not show it
    /// following this leader, gets an append (maybe empty) this often.
    pub heartbeat_ms: u64,
    /// Every peer gets an append at least this often, even one whose
    /// membership heartbeats already say it follows and is up to date
    /// (those heartbeats keep elections away and feed check-quorum; see
    /// [`Agreement::on_leader_beat`]). Idle clusters send a fraction of
    /// the packets they would with an empty append every heartbeat.
    pub idle_append_ms: u64,
    /// Election timeouts are drawn from `[election_min_ms, election_max_ms)`.
    /// Also the window in which a leader must hear a majority.
    pub election_min_ms: u64,
    /// Upper bound of the election timeout.
    pub election_max_ms: u64,
}

impl Timing {
    /// Timers matching a membership profile: heartbeats with the
    /// membership heartbeats, elections after about one deadtime.
    pub fn from_membership(t: &crate::config::model::Timing) -> Self {
        Timing {
            heartbeat_ms: t.heartbeat_ms,
            idle_append_ms: t.deadtime_ms * 2,
            election_min_ms: t.deadtime_ms,
            election_max_ms: t.deadtime_ms * 2,
        }
    }
}

/// One log entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Term of the leader that created it.
    pub term: u64,
    /// The change.
    pub cmd: Command,
}

/// The record as of a log index, replacing the log before it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Snapshot {
    /// Last index included.
    pub last_index: u64,
    /// Term of that entry.
    pub last_term: u64,
    /// The record after applying every entry up to `last_index`.
    pub record: Record,
}

/// What must survive a crash.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Durable {
    /// Latest term seen.
    pub term: u64,
    /// Candidate voted for in `term`.
    pub voted_for: Option<NodeId>,
    /// Compacted prefix.
    pub snapshot: Snapshot,
    /// Entries after the snapshot; entry i has index `snapshot.last_index + 1 + i`.
    pub log: Vec<Entry>,
    /// This node lost its durable state (a damaged state file the
    /// operator discarded): it may have voted in a term it no longer
    /// remembers, so it neither votes nor campaigns until it has followed
    /// a leader; it then counts as having voted for that leader in that
    /// term, and votes only in later ones. Persisted, so a restart while
    /// recovering does not forget it.
    #[serde(default)]
    pub recovering: bool,
    /// Index of the latest [`Command::Voters`] this node knew committed
    /// (0: none). Raft keeps the commit index in memory only; this one
    /// fact survives a restart so that a lone voter, or a node weighing
    /// an election across a change, knows the change is settled.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub voters_committed: u64,
}

fn is_zero(n: &u64) -> bool {
    *n == 0
}

/// Messages between voters and learners.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Message {
    /// "Would you vote for me in `term`?" (sent without changing term).
    PreVote {
        /// The term the sender would campaign in.
        term: u64,
        /// Sender's last log index.
        last_index: u64,
        /// Term of that entry.
        last_term: u64,
    },
    /// Answer to [`Message::PreVote`].
    PreVoteReply {
        /// The asked term if granted, else the replier's term.
        term: u64,
        /// Whether it would vote.
        granted: bool,
        /// The replier's commit index and that entry's term: a candidate
        /// whose log holds that entry learns it is committed (see
        /// [`Agreement::learn_commit`]). Absent from older agents.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<(u64, u64)>,
    },
    /// Request for a vote in `term`.
    Vote {
        /// Candidate's term.
        term: u64,
        /// Candidate's last log index.
        last_index: u64,
        /// Term of that entry.
        last_term: u64,
    },
    /// Answer to [`Message::Vote`].
    VoteReply {
        /// Replier's term.
        term: u64,
        /// Whether the vote was given.
        granted: bool,
        /// As in [`Message::PreVoteReply`].
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<(u64, u64)>,
    },
    /// Entries (maybe none) from the leader, and its commit index.
    Append {
        /// Leader's term.
        term: u64,
        /// Index before the first entry.
        prev_index: u64,
        /// Term of that entry.
        prev_term: u64,
        /// New entries.
        entries: Vec<Entry>,
        /// Leader's commit index.
        commit: u64,
        /// The leader counts the receiver as fenced (it may be committing
        /// without it), so the receiver is not in sync however complete
        /// its log looks.
        fenced_you: bool,
    },
    /// Answer to [`Message::Append`] and [`Message::InstallSnapshot`].
    AppendReply {
        /// Replier's term.
        term: u64,
        /// Whether the entries matched and were stored.
        ok: bool,
        /// If ok: index the replier now matches up to. Otherwise: where the
        /// leader should retry from (the replier's last index or the index
        /// before a conflicting term).
        last_index: u64,
    },
    /// The leader's snapshot, for a follower behind the compacted prefix.
    InstallSnapshot {
        /// Leader's term.
        term: u64,
        /// The snapshot.
        snapshot: Box<Snapshot>,
    },
    /// "Campaign now": the leader is stopping and hands over.
    TimeoutNow {
        /// Leader's term.
        term: u64,
        /// As in [`Message::PreVoteReply`]: a leader removed from the
        /// voters hands over as soon as the change committed, maybe before
        /// an append told its successor so.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        commit: Option<(u64, u64)>,
    },
}

impl Message {
    /// The term a message carries.
    pub fn term(&self) -> u64 {
        match self {
            Message::PreVote { term, .. }
            | Message::PreVoteReply { term, .. }
            | Message::Vote { term, .. }
            | Message::VoteReply { term, .. }
            | Message::Append { term, .. }
            | Message::AppendReply { term, .. }
            | Message::InstallSnapshot { term, .. }
            | Message::TimeoutNow { term, .. } => *term,
        }
    }
}

/// Role in the current term.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub enum Role {
    /// Follows a leader (or waits for one).
    Follower,
    /// Asking whether an election could be won.
    PreCandidate,
    /// Campaigning.
    Candidate,
    /// Leads the term.
    Leader,
}

/// Something the shell may want to log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Note {
    /// The known leader changed (None: no leader known).
    Leader {
        /// Term.
        term: u64,
        /// Leader.
        leader: Option<NodeId>,
    },
    /// Entries up to `index` are committed and applied to the record.
    Applied {
        /// Highest applied index.
        index: u64,
    },
    /// A committed entry changed a group's placement.
    Placed {
        /// Group.
        group: String,
        /// Where it is placed now (None: stopped everywhere).
        node: Option<String>,
        /// The placement's new epoch.
        epoch: u64,
        /// The leader's reason, if it gave one.
        reason: Option<String>,
    },
    /// A node that lost its state followed `leader` in `term`: it votes
    /// again, from the next term on ([`Durable::recovering`]).
    Recovered {
        /// The term it followed in.
        term: u64,
        /// The leader of that term.
        leader: NodeId,
    },
}

/// Work for the shell, in order: persist, then send.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Output {
    /// State to write durably before sending anything.
    pub persist: Option<Durable>,
    /// Messages to deliver.
    pub send: Vec<(NodeId, Message)>,
    /// Things that happened.
    pub notes: Vec<Note>,
}

/// Why a proposal was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProposeError {
    /// Only the leader takes proposals.
    #[error("this node is not the leader (leader: {leader:?})")]
    NotLeader {
        /// The leader, if known.
        leader: Option<NodeId>,
    },
    /// Too many entries wait for a majority.
    #[error("too many uncommitted entries; is a majority of voters reachable?")]
    Busy,
    /// A change of voters waits: one is uncommitted, or this leader has
    /// not committed an entry of its own term yet.
    #[error("a change of voters is already under way (or this leader is new); try again once it committed")]
    VotersChanging,
    /// A change of voters must add or remove exactly one known node and
    /// leave at least one voter.
    #[error("voters change one node at a time, among the cluster's nodes, leaving at least one")]
    NotOneVoter,
    /// A node becomes a voter only once it holds the committed log and
    /// answered within the last election timeout, and a change needs a
    /// majority of the new voters in that state: a voter that cannot vote
    /// yet would only make majorities harder to reach.
    #[error("the new voter has not caught up with the leader yet; wait until it follows")]
    NotCaughtUp,
}

/// A small deterministic generator for election timeouts (splitmix64).
#[derive(Debug, Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
}

/// The Raft engine of one node.
#[derive(Debug, Clone)]
pub struct Agreement {
    id: NodeId,
    /// Every node this engine talks to (voters and learners as given at
    /// start); voters change among these only.
    known: Vec<NodeId>,
    /// The voters given at start, before any [`Command::Voters`].
    base_voters: Vec<NodeId>,
    /// The voters now: from the latest [`Command::Voters`] in the log or
    /// snapshot, else `base_voters` ([`Agreement::refresh_voters`]).
    voters: Vec<NodeId>,
    /// `known` minus `voters`: they receive the log but do not vote.
    learners: Vec<NodeId>,
    fenced: BTreeSet<NodeId>,
    /// Whether a confirmed-fenced voter may count as a vote (two-node
    /// mode): the pair rules across a change of voters apply only then.
    fence_votes: bool,
    /// Since this start, this node held everything a leader had committed.
    synced: bool,
    timing: Timing,
    durable: Durable,
    dirty: bool,
    role: Role,
    leader: Option<NodeId>,
    commit: u64,
    applied: u64,
    record: Record,
    election_deadline_ms: u64,
    /// When a leader was last heard (followers deny pre-votes while one is).
    leader_contact_ms: Option<u64>,
    rng: Rng,
    votes: BTreeSet<NodeId>,
    next: BTreeMap<NodeId, u64>,
    matched: BTreeMap<NodeId, u64>,
    /// Leader: when (its clock) each peer first acknowledged holding the
    /// leader's log up to an index, oldest first, at most
    /// [`MAX_HELD_SINCE`] per peer (bounds leases, see [`crate::lease`]).
    held_since: BTreeMap<NodeId, std::collections::VecDeque<(u64, u64)>>,
    last_ack_ms: BTreeMap<NodeId, u64>,
    /// Leader: per peer, when its membership heartbeat last said it
    /// follows this leader in this term, and its commit index then.
    beats: BTreeMap<NodeId, (u64, u64)>,
    /// Leader: when every peer next gets an append, up to date or not.
    idle_append_due_ms: u64,
    heartbeat_due_ms: u64,
    quorum_check_due_ms: u64,
    out: Output,
}

impl Agreement {
    /// Whether this node lost its state and waits to follow a leader
    /// before it votes ([`Durable::recovering`]).
    pub fn recovering(&self) -> bool {
        self.durable.recovering
    }

    /// Drops the snapshot and log (keeping term and vote): this node's
    /// record was found to differ from the leader's at the same index, so
    /// it is damaged; the leader sends it again from the start.
    pub fn discard_record(&mut self) {
        // The voters it knew stay its fallback: those given at start may
        // be older (the configuration's, before changes in the log), and
        // a node taking itself for a lone voter would elect itself
        // (hostile review of the voter changes).
        self.base_voters = self.voters.clone();
        self.durable.snapshot = Snapshot::default();
        self.durable.log.clear();
        self.commit = 0;
        self.applied = 0;
        self.record = Record::default();
        self.durable.voters_committed = 0;
        self.refresh_voters();
        self.synced = self.voters == [self.id];
        self.dirty = true;
    }

    /// A node restarting from `durable` (default for a first start).
    /// `seed` varies election timeouts between nodes and runs.
    ///
    /// `voters` must be the voters in force as far as the caller knows:
    /// the log's latest [`Command::Voters`] overrides them, but a node
    /// whose log is gone (a first start, a discarded state) falls back to
    /// them, and a lone voter among them starts afresh without asking
    /// anyone. While every voter comes from the configuration that holds;
    /// once the agent changes voters it must keep the latest ones outside
    /// the log too (hostile review of the voter changes).
    pub fn new(
        id: NodeId,
        voters: Vec<NodeId>,
        learners: Vec<NodeId>,
        timing: Timing,
        durable: Durable,
        now_ms: u64,
        seed: u64,
    ) -> Self {
        let mut durable = durable;
        let commit = durable.snapshot.last_index;
        let record = durable.snapshot.record.clone();
        let mut known: Vec<NodeId> = voters.iter().chain(&learners).copied().collect();
        known.sort();
        known.dedup();
        let mut base_voters = voters;
        base_voters.sort();
        base_voters.dedup();
        let voters = current_voters(&durable, &base_voters);
        let learners = learners_of(&known, &voters);
        // A lone voter holds everything by definition, once it knows
        // that it is one: a change to it alone that may not have
        // committed leaves its old peers a say.
        let settled = last_change_index(&durable).map_or(true, |c| c <= durable.voters_committed);
        let synced = voters == [id] && settled;
        // ... and has no one to recover from: its state starts afresh.
        // (Two voters still recover: in two-node mode one vote elects.)
        if synced {
            durable.recovering = false;
        }
        let mut a = Agreement {
            id,
            known,
            base_voters,
            voters,
            learners,
            fenced: BTreeSet::new(),
            fence_votes: true,
            synced,
            timing,
            durable,
            dirty: false,
            role: Role::Follower,
            leader: None,
            commit,
            applied: commit,
            record,
            election_deadline_ms: 0,
            leader_contact_ms: None,
            rng: Rng(seed ^ id.0),
            votes: BTreeSet::new(),
            next: BTreeMap::new(),
            matched: BTreeMap::new(),
            held_since: BTreeMap::new(),
            last_ack_ms: BTreeMap::new(),
            beats: BTreeMap::new(),
            idle_append_due_ms: 0,
            heartbeat_due_ms: 0,
            quorum_check_due_ms: 0,
            out: Output::default(),
        };
        a.reset_election_timer(now_ms);
        a
    }

    /// A node that joined the cluster while this engine runs (the
    /// configuration gained it: `tandem node add NAME --address`): it
    /// receives the log from now on as a learner; it votes only once a
    /// committed [`Command::Voters`] names it. Returns false when it was
    /// known already (nothing changes).
    pub fn add_known(&mut self, id: NodeId) -> bool {
        if id == self.id || self.known.contains(&id) {
            return false;
        }
        self.known.push(id);
        self.known.sort();
        self.learners = learners_of(&self.known, &self.voters);
        if self.role == Role::Leader {
            let next = self.last_index() + 1;
            self.next.insert(id, next);
            self.matched.insert(id, 0);
        }
        true
    }

    /// A learner the cluster forgets (the configuration dropped it):
    /// nothing is sent to it any more. Refused (false) for a voter, and
    /// while the voters change.
    pub fn remove_known(&mut self, id: NodeId) -> bool {
        if id == self.id || self.voters.contains(&id) || self.voters_changing() {
            return false;
        }
        self.known.retain(|k| *k != id);
        self.learners = learners_of(&self.known, &self.voters);
        self.next.remove(&id);
        self.matched.remove(&id);
        true
    }

    /// Whether the log or its snapshot names the voters (a
    /// [`Command::Voters`]); if not, they are the ones this engine was
    /// started with, from the configuration.
    pub fn voters_written(&self) -> bool {
        self.last_voters_index().is_some() || self.durable.snapshot.record.voters.is_some()
    }

    /// Leader only: the time (this leader's clock) at which `peer` first
    /// acknowledged holding this leader's log up to `index` or beyond, in
    /// the current term. None when it has not (or this node does not lead).
    /// When older acknowledgements were dropped, a later time is returned,
    /// which is still an upper bound on when the peer's log held `index`.
    pub fn held_since(&self, peer: NodeId, index: u64) -> Option<u64> {
        if self.role != Role::Leader {
            return None;
        }
        self.held_since
            .get(&peer)?
            .iter()
            .find(|(m, _)| *m >= index)
            .map(|(_, at)| *at)
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.id
    }

    /// Current role.
    pub fn role(&self) -> Role {
        self.role
    }

    /// Current term.
    pub fn term(&self) -> u64 {
        self.durable.term
    }

    /// The leader of the current term, if known.
    pub fn leader(&self) -> Option<NodeId> {
        self.leader
    }

    /// Highest committed index known here.
    pub fn commit_index(&self) -> u64 {
        self.commit
    }

    /// Last index in the log.
    pub fn last_index(&self) -> u64 {
        self.durable.snapshot.last_index + self.durable.log.len() as u64
    }

    /// The record as of the committed prefix applied here.
    pub fn record(&self) -> &Record {
        &self.record
    }

    /// The durable state (as last handed out to persist, or loaded).
    pub fn durable(&self) -> &Durable {
        &self.durable
    }

    /// Term of the entry at `index`, if still held.
    pub fn term_at(&self, index: u64) -> Option<u64> {
        let snap = &self.durable.snapshot;
        if index == snap.last_index {
            return Some(snap.last_term);
        }
        if index < snap.last_index {
            return None;
        }
        self.durable
            .log
            .get(slot(index - snap.last_index - 1))
            .map(|e| e.term)
    }

    /// The entry at `index`, if still in the log (not compacted).
    pub fn entry(&self, index: u64) -> Option<&Entry> {
        let snap = self.durable.snapshot.last_index;
        if index <= snap {
            return None;
        }
        self.durable.log.get(slot(index - snap - 1))
    }

    /// When [`Agreement::on_tick`] must next be called.
    pub fn next_deadline(&self) -> u64 {
        match self.role {
            Role::Leader => self.heartbeat_due_ms.min(self.quorum_check_due_ms),
            _ => self.election_deadline_ms,
        }
    }

    /// Takes the work accumulated so far.
    pub fn take_output(&mut self) -> Output {
        let mut out = std::mem::take(&mut self.out);
        if self.dirty {
            self.dirty = false;
            out.persist = Some(self.durable.clone());
        }
        out
    }

    /// Whether this node has been in sync with a leader since it started
    /// (required before a fenced peer's vote counts).
    pub fn synced(&self) -> bool {
        self.synced
    }

    /// Whether `id` votes.
    pub fn is_voter(&self, id: NodeId) -> bool {
        self.voters.contains(&id)
    }

    /// The voters now, sorted (the latest [`Command::Voters`] in this
    /// node's log, committed or not, else the voters given at start).
    pub fn voters(&self) -> &[NodeId] {
        &self.voters
    }

    /// Whether a change of voters is in the log but not yet committed.
    pub fn voters_changing(&self) -> bool {
        self.pending_change().is_some()
    }

    /// The voters before the change in the log that is not yet committed
    /// (None when there is none): a lease holds across the change only
    /// with a majority of these and of [`Agreement::voters`].
    pub fn voters_before_change(&self) -> Option<Vec<NodeId>> {
        self.pending_change().map(|index| self.voters_before(index))
    }

    /// An index at or after the latest [`Command::Voters`] this node
    /// holds (0: none ever): what a node must have committed before it
    /// may count this node's echo, so that a lease never rests on a
    /// majority of voters the cluster has left. A change compacted into
    /// the snapshot counts as its last index (later, so safe).
    pub fn voters_index(&self) -> u64 {
        let compacted = if self.durable.snapshot.record.voters.is_some() {
            self.durable.snapshot.last_index
        } else {
            0
        };
        self.last_voters_index()
            .unwrap_or(0)
            .max(compacted)
            .max(self.durable.voters_committed)
    }

    /// Index of the latest [`Command::Voters`] in the log when it is not
    /// known committed here.
    fn pending_change(&self) -> Option<u64> {
        let settled = self.commit.max(self.durable.voters_committed);
        self.last_voters_index().filter(|index| *index > settled)
    }

    /// Index of the latest [`Command::Voters`] still in the log.
    fn last_voters_index(&self) -> Option<u64> {
        last_change_index(&self.durable)
    }

    /// Sets the voters from the log after it changed (appended, truncated,
    /// replaced by a snapshot). A leader starts replicating to a voter it
    /// did not know at once.
    fn refresh_voters(&mut self) {
        let voters = current_voters(&self.durable, &self.base_voters);
        if voters == self.voters {
            return;
        }
        self.voters = voters;
        self.learners = learners_of(&self.known, &self.voters);
        if self.voters == [self.id] && !self.voters_changing() {
            self.synced = true;
        }
        if self.role == Role::Leader {
            let next = self.last_index() + 1;
            for p in self.voters.clone() {
                if p != self.id {
                    self.next.entry(p).or_insert(next);
                    self.matched.entry(p).or_insert(0);
                }
            }
        }
    }

    /// Checks a proposed [`Command::Voters`]: one node added or removed,
    /// among the known nodes, at least one voter left, no other change
    /// uncommitted, an entry of this leader's term committed, and an
    /// added node caught up and answering.
    fn check_voters(&self, now_ms: u64, proposed: &[NodeId]) -> Result<(), ProposeError> {
        if self.voters_changing() || self.term_at(self.commit) != Some(self.durable.term) {
            return Err(ProposeError::VotersChanging);
        }
        let sorted = proposed.windows(2).all(|w| w[0] < w[1]);
        let known = proposed.iter().all(|v| self.known.contains(v));
        let differ = proposed.iter().filter(|v| !self.voters.contains(v)).count()
            + self.voters.iter().filter(|v| !proposed.contains(v)).count();
        // The same voters again is a pin, allowed only while neither the
        // log nor the snapshot names the voters: it changes no quorum, and
        // from then on every node holding the log agrees on the voters
        // whatever its configuration lists ([`Agreement::voters_written`]).
        let pin = differ == 0 && !self.voters_written();
        if !sorted || !known || proposed.is_empty() || (differ != 1 && !pin) {
            return Err(ProposeError::NotOneVoter);
        }
        let since = now_ms.saturating_sub(self.timing.election_min_ms);
        let current = |v: &NodeId| {
            *v == self.id
                || (self.matched.get(v).copied().unwrap_or(0) >= self.commit
                    && self.last_ack_ms.get(v).is_some_and(|t| *t >= since))
        };
        // The added node, and a majority of the new voters, must be able
        // to commit the change now: a change no majority can commit would
        // hold every later entry back.
        let added_lags = proposed
            .iter()
            .any(|v| !self.voters.contains(v) && !current(v));
        let able = proposed.iter().filter(|v| current(v)).count();
        if added_lags || able * 2 <= proposed.len() {
            return Err(ProposeError::NotCaughtUp);
        }
        Ok(())
    }

    /// Whether a voter confirmed fenced may count as a vote (the default;
    /// the two-node hook). A cluster that never counts one (majority
    /// mode) turns it off: then plain Raft rules a change of voters, and a
    /// change away from a pair commits and elects with a majority of the
    /// new voters (the pair rules exist only for the hook, and would
    /// otherwise wait for a pair member that lost its state).
    pub fn set_fence_votes(&mut self, on: bool) {
        self.fence_votes = on;
    }

    /// Marks a voter as confirmed fenced (it counts as a vote and as an
    /// acknowledgement) or clears that when it is seen alive again.
    pub fn set_fenced(&mut self, now_ms: u64, peer: NodeId, fenced: bool) {
        let changed = if fenced {
            self.fenced.insert(peer)
        } else {
            self.fenced.remove(&peer)
        };
        if changed && self.role == Role::Leader {
            self.advance_commit();
        } else if changed && fenced && self.leader == Some(peer) {
            self.on_peer_dead(now_ms, peer);
        }
    }

    /// The membership layer declared `peer` dead: if it led, campaign now
    /// instead of waiting for the election timeout.
    pub fn on_peer_dead(&mut self, now_ms: u64, peer: NodeId) {
        if self.leader == Some(peer) && self.role != Role::Leader {
            self.leader_contact_ms = None;
            self.set_leader(None);
            if self.is_voter(self.id) {
                // Every survivor learns this at about the same moment; a
                // jitter of up to two heartbeats keeps them from splitting
                // the vote.
                let jitter = self.rng.next() % (2 * self.timing.heartbeat_ms).max(1);
                self.election_deadline_ms = now_ms + jitter;
            }
        }
    }

    /// Proposes a command; returns its log index once appended here.
    pub fn propose(&mut self, now_ms: u64, cmd: Command) -> Result<u64, ProposeError> {
        if self.role != Role::Leader {
            return Err(ProposeError::NotLeader {
                leader: self.leader,
            });
        }
        if self.last_index() - self.commit >= MAX_UNCOMMITTED {
            return Err(ProposeError::Busy);
        }
        if let Command::Voters { voters } = &cmd {
            self.check_voters(now_ms, voters)?;
        }
        if !self.is_voter(self.id) && !self.voters_changing() {
            // Removed, handing over: the voters take proposals now.
            return Err(ProposeError::NotLeader { leader: None });
        }
        let index = self.append_local(cmd);
        self.broadcast(now_ms);
        Ok(index)
    }

    /// A graceful stop: a leader hands leadership to the most up-to-date
    /// voter so the cluster need not wait for an election timeout.
    pub fn hand_off(&mut self) {
        let all = self.voters.clone();
        self.hand_off_to(&all);
    }

    /// Hands leadership to the most up-to-date of `candidates` (voters other
    /// than this one), if one holds the whole log; otherwise nothing.
    pub fn hand_off_to(&mut self, candidates: &[NodeId]) {
        if self.role != Role::Leader {
            return;
        }
        let last = self.last_index();
        let best = self
            .voters
            .iter()
            .filter(|v| **v != self.id && !self.fenced.contains(v) && candidates.contains(v))
            .max_by_key(|v| (self.matched.get(v).copied().unwrap_or(0), v.0));
        if let Some(&to) = best {
            if self.matched.get(&to).copied().unwrap_or(0) == last {
                let commit = self.commit_mark();
                self.out.send.push((
                    to,
                    Message::TimeoutNow {
                        term: self.durable.term,
                        commit,
                    },
                ));
            }
        }
    }

    /// Timers: heartbeats and check-quorum for a leader, elections otherwise.
    pub fn on_tick(&mut self, now_ms: u64) {
        if self.role == Role::Leader && !self.is_voter(self.id) && !self.voters_changing() {
            // The change that removed this leader committed: it hands
            // over to a voter holding its whole log and steps down. Until
            // one does, it goes on replicating (taking no proposals): a
            // voter that lacks its last entries could not win without it
            // (simulation `voter_changes`, seed 44819).
            if self.hand_off_ready() {
                let voters = self.voters.clone();
                self.hand_off_to(&voters);
                self.become_follower(now_ms, self.durable.term, None);
                return;
            }
        }
        if self.role == Role::Leader {
            if now_ms >= self.quorum_check_due_ms {
                self.quorum_check_due_ms = now_ms + self.timing.election_min_ms;
                let since = now_ms.saturating_sub(self.timing.election_min_ms);
                let acks = self.last_ack_ms.clone();
                if !self.is_majority(|v| acks.get(&v).is_some_and(|t| *t >= since)) {
                    self.become_follower(now_ms, self.durable.term, None);
                    return;
                }
            }
            if now_ms >= self.heartbeat_due_ms {
                self.beat(now_ms);
            }
        } else if now_ms >= self.election_deadline_ms {
            self.reset_election_timer(now_ms);
            // A node that the latest change removed still campaigns (its
            // votes counted among the new voters, as any candidate's
            // among its latest): it may hold the only copy of entries
            // that the new voters need, and a leader need not be a voter
            // (it hands over once they hold everything). Pre-votes keep
            // it from disturbing a leader they hear.
            let may_lead = self.is_voter(self.id) || self.removed_by_latest_change();
            if may_lead && !self.durable.recovering {
                self.start_pre_vote(now_ms);
            }
        }
    }

    /// Follower: the membership heartbeat of `from` says it leads `term`
    /// and has committed `commit` (index, term of that entry). When that
    /// is this node's leader and term, it counts as contact (no election,
    /// pre-votes denied), as an empty append would; and the commit index
    /// is learnt when this log holds that very entry: by Log Matching the
    /// whole prefix is then the leader's, so it is committed here too.
    pub fn on_leader_beat(&mut self, now_ms: u64, from: NodeId, term: u64, commit: (u64, u64)) {
        if self.role != Role::Follower || self.leader != Some(from) || term != self.durable.term {
            return;
        }
        self.leader_contact_ms = Some(now_ms);
        self.reset_election_timer(now_ms);
        let (index, entry_term) = commit;
        if index > self.commit
            && index <= self.last_index()
            && self.term_at(index) == Some(entry_term)
        {
            self.commit = index;
            self.apply_committed();
        }
    }

    /// Leader: the membership heartbeat of `from` says that in `term` it
    /// follows `follows` and has committed up to `commit`. Following this
    /// leader in its term counts for check-quorum as an append reply does,
    /// and, from a follower that `counts` beats itself, spares it the
    /// empty appends while nothing is missing there. A heartbeat that
    /// says it follows no one or another (a restarted follower, one in
    /// another term) gets it an append at once.
    pub fn on_follower_beat(
        &mut self,
        now_ms: u64,
        from: NodeId,
        term: u64,
        follows: Option<NodeId>,
        commit: u64,
        counts: bool,
    ) {
        if self.role != Role::Leader || !self.peers().any(|p| p == from) {
            return;
        }
        if term == self.durable.term && follows == Some(self.id) {
            if counts {
                self.last_ack_ms.insert(from, now_ms);
                self.beats.insert(from, (now_ms, commit));
            }
            return;
        }
        if self.beats.remove(&from).is_some() {
            self.heartbeat_due_ms = now_ms;
        }
    }

    /// Whether `peer` needs an append at this beat: it lacks entries or
    /// the commit index, or its heartbeats are not fresh evidence that it
    /// follows (a witness sends none; an older agent's do not count).
    fn needs_append(&self, peer: NodeId, now_ms: u64) -> bool {
        if self.matched.get(&peer).copied().unwrap_or(0) < self.last_index() {
            return true;
        }
        match self.beats.get(&peer) {
            Some((at, commit)) => {
                *commit < self.commit || now_ms.saturating_sub(*at) > 2 * self.timing.heartbeat_ms
            }
            None => true,
        }
    }

    /// The leader's timer: appends to the peers that need one, and to
    /// every peer once per [`Timing::idle_append_ms`].
    fn beat(&mut self, now_ms: u64) {
        self.heartbeat_due_ms = now_ms + self.timing.heartbeat_ms;
        let all = now_ms >= self.idle_append_due_ms;
        if all {
            self.idle_append_due_ms = now_ms + self.timing.idle_append_ms;
        }
        let peers: Vec<NodeId> = self
            .peers()
            .filter(|p| all || self.needs_append(*p, now_ms))
            .collect();
        for p in peers {
            self.send_append(p);
        }
    }

    /// Handles a message from `from`.
    pub fn on_message(&mut self, now_ms: u64, from: NodeId, msg: Message) {
        if from == self.id || !(self.known.contains(&from) || self.is_voter(from)) {
            return;
        }
        let term = self.durable.term;
        match msg {
            Message::PreVote {
                term: t,
                last_index,
                last_term,
            } => {
                let leader_fresh = self.role == Role::Leader
                    || self
                        .leader_contact_ms
                        .is_some_and(|c| now_ms < c + self.timing.election_min_ms);
                let granted = t > term
                    && !leader_fresh
                    && !self.durable.recovering
                    && self.log_ok(last_index, last_term);
                let reply_term = if granted { t } else { term };
                let commit = self.commit_mark();
                self.out.send.push((
                    from,
                    Message::PreVoteReply {
                        term: reply_term,
                        granted,
                        commit,
                    },
                ));
            }
            Message::PreVoteReply {
                term: t,
                granted,
                commit,
            } => {
                self.learn_commit(commit);
                if granted && self.role == Role::PreCandidate && t == term + 1 {
                    self.votes.insert(from);
                    self.check_pre_vote_won(now_ms);
                } else if !granted && t > term {
                    self.become_follower(now_ms, t, None);
                }
            }
            Message::Vote {
                term: t,
                last_index,
                last_term,
            } => {
                if t > term {
                    self.become_follower(now_ms, t, None);
                }
                let term = self.durable.term;
                let granted = t == term
                    && !self.durable.recovering
                    && self.durable.voted_for.map_or(true, |v| v == from)
                    && self.log_ok(last_index, last_term);
                if granted && self.durable.voted_for.is_none() {
                    self.durable.voted_for = Some(from);
                    self.dirty = true;
                    self.reset_election_timer(now_ms);
                }
                let commit = self.commit_mark();
                self.out.send.push((
                    from,
                    Message::VoteReply {
                        term,
                        granted,
                        commit,
                    },
                ));
            }
            Message::VoteReply {
                term: t,
                granted,
                commit,
            } => {
                self.learn_commit(commit);
                if t > term {
                    self.become_follower(now_ms, t, None);
                } else if granted && t == term && self.role == Role::Candidate {
                    self.votes.insert(from);
                    if self.won_votes() {
                        // Real votes from a majority: this log holds every
                        // committed entry (Raft's election restriction).
                        self.synced = true;
                        self.become_leader(now_ms);
                    }
                }
            }
            Message::Append {
                term: t,
                prev_index,
                prev_term,
                entries,
                commit,
                fenced_you,
            } => {
                if t < term {
                    self.refuse_append(from);
                    return;
                }
                self.follow(now_ms, t, from);
                self.on_append(from, prev_index, prev_term, entries, commit, fenced_you);
            }
            Message::InstallSnapshot { term: t, snapshot } => {
                if t < term {
                    self.refuse_append(from);
                    return;
                }
                self.follow(now_ms, t, from);
                self.on_snapshot(from, *snapshot);
            }
            Message::AppendReply {
                term: t,
                ok,
                last_index,
            } => {
                if t > term {
                    self.become_follower(now_ms, t, None);
                } else if t == term && self.role == Role::Leader {
                    self.on_append_reply(now_ms, from, ok, last_index);
                }
            }
            Message::TimeoutNow { term: t, commit } => {
                self.learn_commit(commit);
                if t == term && self.leader == Some(from) && self.is_voter(self.id) {
                    self.start_election(now_ms);
                }
            }
        }
    }

    /// This node's commit index and the term of that entry, for replies
    /// ([`Message::PreVoteReply`]).
    fn commit_mark(&self) -> Option<(u64, u64)> {
        Some((self.commit, self.term_at(self.commit)?))
    }

    /// Another node says `(index, term)` is committed: when this log holds
    /// that very entry, its whole prefix is the committer's (Log
    /// Matching), so it is committed here too. This is how a voter learns
    /// that a change of voters committed when no leader is left to tell
    /// it: one whose removal the change was and that compacted it away,
    /// or that handed over at once (hostile review of the voter changes).
    fn learn_commit(&mut self, commit: Option<(u64, u64)>) {
        let Some((index, term)) = commit else { return };
        if index > self.commit && index <= self.last_index() && self.term_at(index) == Some(term) {
            self.commit = index;
            self.apply_committed();
        }
    }

    fn log_ok(&self, last_index: u64, last_term: u64) -> bool {
        let my_term = self.term_at(self.last_index()).unwrap_or(0);
        (last_term, last_index) >= (my_term, self.last_index())
    }

    fn is_majority(&self, yes: impl Fn(NodeId) -> bool) -> bool {
        // The two-node rule (a fenced peer's vote) holds for a member of
        // a settled pair only: across a change the overlap of majorities
        // needs real votes, and a node outside the pair counting both
        // fenced would elect itself (simulation `voter_changes`, seed 221).
        let pair = self.fence_votes
            && self.voters.len() == 2
            && self.is_voter(self.id)
            && !self.voters_changing();
        let count = self
            .voters
            .iter()
            .filter(|&&v| {
                (v == self.id && self.is_voter(self.id))
                    || (pair && self.synced && self.fenced.contains(&v))
                    || yes(v)
            })
            .count();
        count * 2 > self.voters.len()
    }

    /// Whether the votes gathered elect: a majority of the voters, and,
    /// while a change away from a pair is uncommitted, both of that pair
    /// (one confirmed fenced counts, on a node in sync since its start,
    /// as in the pair's own rule). Raft needs only the first. The second
    /// keeps the two-node rule sound: the pair member that did not see
    /// the change may take its peer's fencing for the vote it lacks, so
    /// its peer must not win among the new voters without it (simulation
    /// `voter_changes`, seeds 1189 and 9078).
    fn won_votes(&self) -> bool {
        if !self.is_majority(|v| self.votes.contains(&v)) {
            return false;
        }
        match self.pending_change() {
            None => true,
            Some(change) => {
                let before = self.voters_before(change);
                let member = before.contains(&self.id);
                !self.fence_votes
                    || before.len() != 2
                    || before.iter().all(|v| {
                        self.votes.contains(v) || (member && self.synced && self.fenced.contains(v))
                    })
            }
        }
    }

    /// Whether a voter holds this leader's whole log (a hand-off to it
    /// loses nothing).
    fn hand_off_ready(&self) -> bool {
        let last = self.last_index();
        self.voters.iter().any(|v| {
            *v != self.id
                && !self.fenced.contains(v)
                && self.matched.get(v).copied().unwrap_or(0) == last
        })
    }

    /// Whether this node voted before the latest change in its log and
    /// not after it.
    fn removed_by_latest_change(&self) -> bool {
        match self.last_voters_index() {
            Some(change) => {
                !self.is_voter(self.id) && self.voters_before(change).contains(&self.id)
            }
            None => false,
        }
    }

    /// Whom a campaign asks: the voters, and while a change is
    /// uncommitted those before it ([`Agreement::won_votes`]).
    fn electorate(&self) -> Vec<NodeId> {
        let mut all = self.voters.clone();
        if let Some(change) = self.pending_change() {
            all.extend(self.voters_before(change));
        }
        all.sort();
        all.dedup();
        all.retain(|v| *v != self.id);
        all
    }

    fn reset_election_timer(&mut self, now_ms: u64) {
        let span = self
            .timing
            .election_max_ms
            .saturating_sub(self.timing.election_min_ms)
            .max(1);
        self.election_deadline_ms = now_ms + self.timing.election_min_ms + self.rng.next() % span;
    }

    fn set_leader(&mut self, leader: Option<NodeId>) {
        if self.leader != leader {
            self.leader = leader;
            self.out.notes.push(Note::Leader {
                term: self.durable.term,
                leader,
            });
        }
    }

    fn become_follower(&mut self, now_ms: u64, term: u64, leader: Option<NodeId>) {
        if term > self.durable.term {
            self.durable.term = term;
            self.durable.voted_for = None;
            self.dirty = true;
        }
        if self.role != Role::Follower {
            self.reset_election_timer(now_ms);
        }
        self.role = Role::Follower;
        self.votes.clear();
        self.set_leader(leader);
    }

    /// Accepts `from` as the leader of `term` (an append or snapshot came).
    fn follow(&mut self, now_ms: u64, term: u64, from: NodeId) {
        self.become_follower(now_ms, term, Some(from));
        if self.durable.recovering && term == self.durable.term && self.durable.voted_for.is_none()
        {
            // Whatever this node voted before it lost its state, `from`
            // won this term: count the vote as its, never give another.
            // It stays `recovering` (no vote, no campaign) until its log
            // holds what the leader has committed ([`Agreement::on_append`]):
            // a voter with an empty log could otherwise elect, with another
            // empty one, a leader that lacks committed entries (simulation
            // seed 286 with groups).
            self.durable.voted_for = Some(from);
            self.dirty = true;
        }
        self.leader_contact_ms = Some(now_ms);
        self.reset_election_timer(now_ms);
    }

    fn start_pre_vote(&mut self, now_ms: u64) {
        self.role = Role::PreCandidate;
        self.set_leader(None);
        self.votes = BTreeSet::from([self.id]);
        let (last_index, last_term) = self.last();
        for v in self.electorate() {
            self.out.send.push((
                v,
                Message::PreVote {
                    term: self.durable.term + 1,
                    last_index,
                    last_term,
                },
            ));
        }
        self.check_pre_vote_won(now_ms);
    }

    fn check_pre_vote_won(&mut self, now_ms: u64) {
        if self.role == Role::PreCandidate && self.won_votes() {
            self.start_election(now_ms);
        }
    }

    fn start_election(&mut self, now_ms: u64) {
        self.durable.term += 1;
        self.durable.voted_for = Some(self.id);
        self.dirty = true;
        self.role = Role::Candidate;
        self.set_leader(None);
        self.votes = BTreeSet::from([self.id]);
        self.reset_election_timer(now_ms);
        let (last_index, last_term) = self.last();
        for v in self.electorate() {
            self.out.send.push((
                v,
                Message::Vote {
                    term: self.durable.term,
                    last_index,
                    last_term,
                },
            ));
        }
        if self.won_votes() {
            self.become_leader(now_ms);
        }
    }

    fn become_leader(&mut self, now_ms: u64) {
        self.role = Role::Leader;
        self.votes.clear();
        self.set_leader(Some(self.id));
        let next = self.last_index() + 1;
        let peers: Vec<NodeId> = self.peers().collect();
        self.next = peers.iter().map(|p| (*p, next)).collect();
        self.matched = peers.iter().map(|p| (*p, 0)).collect();
        self.held_since.clear();
        self.beats.clear();
        // Every peer gets one check-quorum window to answer.
        self.last_ack_ms = peers.iter().map(|p| (*p, now_ms)).collect();
        self.quorum_check_due_ms = now_ms + self.timing.election_min_ms;
        self.append_local(Command::Noop);
        self.broadcast(now_ms);
    }

    fn append_local(&mut self, cmd: Command) -> u64 {
        let voters = matches!(cmd, Command::Voters { .. });
        self.durable.log.push(Entry {
            term: self.durable.term,
            cmd,
        });
        self.dirty = true;
        if voters {
            self.refresh_voters();
        }
        let index = self.last_index();
        self.advance_commit();
        index
    }

    fn last(&self) -> (u64, u64) {
        let i = self.last_index();
        (i, self.term_at(i).unwrap_or(0))
    }

    fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.voters
            .iter()
            .chain(&self.learners)
            .copied()
            .filter(|p| *p != self.id)
    }

    fn broadcast(&mut self, now_ms: u64) {
        self.heartbeat_due_ms = now_ms + self.timing.heartbeat_ms;
        self.idle_append_due_ms = now_ms + self.timing.idle_append_ms;
        let peers: Vec<NodeId> = self.peers().collect();
        for p in peers {
            self.send_append(p);
        }
    }

    fn send_append(&mut self, to: NodeId) {
        let next = self.next.get(&to).copied().unwrap_or(1).max(1);
        let snap = &self.durable.snapshot;
        if next <= snap.last_index {
            let msg = Message::InstallSnapshot {
                term: self.durable.term,
                snapshot: Box::new(snap.clone()),
            };
            self.out.send.push((to, msg));
            return;
        }
        let prev_index = next - 1;
        let prev_term = self.term_at(prev_index).unwrap_or(0);
        let from = slot(prev_index - snap.last_index);
        let entries: Vec<Entry> = self
            .durable
            .log
            .iter()
            .skip(from)
            .take(MAX_ENTRIES_PER_MESSAGE)
            .cloned()
            .collect();
        let msg = Message::Append {
            term: self.durable.term,
            prev_index,
            prev_term,
            entries,
            commit: self.commit,
            fenced_you: self.fenced.contains(&to),
        };
        self.out.send.push((to, msg));
    }

    /// Answers an append or snapshot: `last_index` is what matches when
    /// `ok`, or where the leader should retry from.
    fn reply_append(&mut self, to: NodeId, ok: bool, last_index: u64) {
        let term = self.durable.term;
        self.out.send.push((
            to,
            Message::AppendReply {
                term,
                ok,
                last_index,
            },
        ));
    }

    /// Refuses an append; the last index tells the leader where to retry.
    fn refuse_append(&mut self, to: NodeId) {
        self.reply_append(to, false, self.last_index());
    }

    fn on_append(
        &mut self,
        from: NodeId,
        mut prev_index: u64,
        mut prev_term: u64,
        mut entries: Vec<Entry>,
        commit: u64,
        fenced_you: bool,
    ) {
        let snap = self.durable.snapshot.last_index;
        if prev_index < snap {
            // Everything up to the snapshot is committed, so it matches.
            let skip = slot(snap - prev_index);
            if skip > entries.len() {
                self.reply_append(from, true, snap);
                return;
            }
            entries.drain(..skip);
            prev_index = snap;
            prev_term = self.durable.snapshot.last_term;
        }
        if prev_index > self.last_index() {
            self.refuse_append(from);
            return;
        }
        if let Some(t) = self.term_at(prev_index).filter(|t| *t != prev_term) {
            // Skip back over the whole conflicting term in one round trip.
            let mut hint = prev_index - 1;
            while hint > snap && self.term_at(hint) == Some(t) {
                hint -= 1;
            }
            self.reply_append(from, false, hint);
            return;
        }
        let mut index = prev_index;
        // The voters change only with a `Voters` entry added or dropped:
        // most appends need no look back over the log.
        let mut voters_touched = false;
        for e in entries {
            index += 1;
            voters_touched |= matches!(e.cmd, Command::Voters { .. });
            match self.term_at(index) {
                Some(t) if t == e.term => continue,
                Some(_) => {
                    debug_assert!(index > self.commit, "truncating a committed entry");
                    if index <= self.commit {
                        // Never drop a committed entry; refuse instead.
                        self.refuse_append(from);
                        return;
                    }
                    self.durable.log.truncate(slot(index - snap - 1));
                    voters_touched = true;
                    self.durable.log.push(e);
                }
                None => self.durable.log.push(e),
            }
            self.dirty = true;
        }
        if voters_touched {
            self.refresh_voters();
        }
        // In sync once this log holds the leader's commit index *and* that
        // entry is of the leader's own term: only then does the leader's
        // commit cover everything committed before it. A leader restarted
        // knows no commit index until its term's first entry commits, and
        // its log may hold entries it committed alone, its peer fenced,
        // before it went down; a follower holding part of them took itself
        // for in sync and, fencing that leader in turn, overwrote them
        // (simulation `voter_changes`, seed 1338, with no voter change).
        let leader_commit_current = self.term_at(commit) == Some(self.durable.term);
        if commit <= index && !fenced_you && leader_commit_current {
            self.synced = true;
            if self.durable.recovering {
                // Its log now holds everything the leader has committed.
                self.durable.recovering = false;
                self.dirty = true;
                let term = self.durable.term;
                self.out.notes.push(Note::Recovered { term, leader: from });
            }
        }
        let new_commit = commit.min(index);
        if new_commit > self.commit {
            self.commit = new_commit;
            self.apply_committed();
        }
        self.reply_append(from, true, index);
    }

    fn on_snapshot(&mut self, from: NodeId, snapshot: Snapshot) {
        if snapshot.last_index <= self.commit {
            self.reply_append(from, true, self.commit);
            return;
        }
        let keep = if self.term_at(snapshot.last_index) == Some(snapshot.last_term) {
            let cut = slot(snapshot.last_index - self.durable.snapshot.last_index);
            self.durable.log.split_off(cut.min(self.durable.log.len()))
        } else {
            Vec::new()
        };
        self.durable.log = keep;
        self.commit = snapshot.last_index;
        self.applied = snapshot.last_index;
        self.record = snapshot.record.clone();
        let index = snapshot.last_index;
        self.durable.snapshot = snapshot;
        self.dirty = true;
        self.refresh_voters();
        self.out.notes.push(Note::Applied { index });
        self.reply_append(from, true, index);
    }

    fn on_append_reply(&mut self, now_ms: u64, from: NodeId, ok: bool, last_index: u64) {
        self.last_ack_ms.insert(from, now_ms);
        let next = self.next.get(&from).copied().unwrap_or(1);
        if ok {
            let acked = last_index.min(self.last_index());
            let m = self.matched.entry(from).or_insert(0);
            let grew = acked > *m;
            *m = (*m).max(acked);
            let m = *m;
            if grew {
                let held = self.held_since.entry(from).or_default();
                if held.len() == MAX_HELD_SINCE {
                    held.pop_front();
                }
                held.push_back((m, now_ms));
            }
            self.next.insert(from, m + 1);
            self.advance_commit();
            if m < self.last_index() {
                self.send_append(from);
            }
        } else {
            let retry = next.saturating_sub(1).min(last_index + 1).max(1);
            self.next.insert(from, retry);
            self.send_append(from);
        }
    }

    fn advance_commit(&mut self) {
        if self.role != Role::Leader {
            return;
        }
        let term = self.durable.term;
        let mut n = self.last_index();
        while n > self.commit {
            // Only entries of the current term commit by counting (Raft 5.4.2).
            if self.term_at(n) == Some(term)
                && self.is_majority(|v| self.matched.get(&v).is_some_and(|m| *m >= n))
                && self.pair_holds_change(n)
            {
                self.commit = n;
                self.apply_committed();
                // Tell the followers now rather than at the next beat:
                // placements wait on this.
                self.heartbeat_due_ms = 0;
                return;
            }
            n -= 1;
        }
    }

    /// Whether committing `n` keeps the two-node rule sound while a
    /// change of voters away from a pair is uncommitted: each of the pair
    /// must hold `n` or the change itself (or be fenced, off, as the
    /// pair's own rule allows). Otherwise one of them, not knowing of the
    /// change, could take its peer's fencing for the vote it lacks and
    /// overwrite entries that the new voters committed without it
    /// (simulation `voter_changes`, seeds 100 and 1107).
    fn pair_holds_change(&self, n: u64) -> bool {
        let Some(change) = self.pending_change() else {
            return true;
        };
        let before = self.voters_before(change);
        let need = n.min(change);
        let member = before.contains(&self.id);
        !self.fence_votes
            || before.len() != 2
            || before.iter().all(|v| {
                *v == self.id
                    || (member && self.synced && self.fenced.contains(v))
                    || self.matched.get(v).is_some_and(|m| *m >= need)
            })
    }

    /// The voters in force before the entry at `index` (a change).
    fn voters_before(&self, index: u64) -> Vec<NodeId> {
        let snap = self.durable.snapshot.last_index;
        let upto = slot(index.saturating_sub(snap + 1)).min(self.durable.log.len());
        voters_in(&self.durable, upto, &self.base_voters)
    }

    fn apply_committed(&mut self) {
        let start = self.applied;
        while self.applied < self.commit {
            let next = self.applied + 1;
            let Some(e) = self.entry(next) else { break };
            let cmd = e.cmd.clone();
            let before = self.placement_epoch(&cmd);
            self.record.apply_at(next, &cmd);
            self.applied = next;
            if matches!(cmd, Command::Voters { .. }) {
                self.durable.voters_committed = next;
                self.dirty = true;
                if self.voters == [self.id] {
                    self.synced = true;
                }
            }
            if let Command::Place { group, reason, .. } = &cmd {
                if let Some(p) = self
                    .record
                    .placements
                    .get(group)
                    .filter(|p| Some(p.epoch) != before)
                {
                    self.out.notes.push(Note::Placed {
                        group: group.clone(),
                        node: p.node.clone(),
                        epoch: p.epoch,
                        reason: reason.clone(),
                    });
                }
            }
        }
        if self.applied > start {
            self.out.notes.push(Note::Applied {
                index: self.applied,
            });
        }
        self.compact();
    }

    /// The epoch of the placement a `Place` command changes, before it is
    /// applied (None: not a placement, or the group was never placed).
    fn placement_epoch(&self, cmd: &Command) -> Option<u64> {
        match cmd {
            Command::Place { group, .. } => self.record.placements.get(group).map(|p| p.epoch),
            _ => None,
        }
    }

    fn compact(&mut self) {
        let snap = self.durable.snapshot.last_index;
        if self.applied - snap < COMPACT_AFTER {
            return;
        }
        let last_term = self.term_at(self.applied).unwrap_or(0);
        let drop = slot(self.applied - snap);
        self.durable.log.drain(..drop);
        self.durable.snapshot = Snapshot {
            last_index: self.applied,
            last_term,
            record: self.record.clone(),
        };
        self.dirty = true;
    }
}

#[cfg(test)]
mod tests;

/// The voters named by the latest [`Command::Voters`] in `durable`'s log,
/// else in its snapshot's record, else `base`.
fn current_voters(durable: &Durable, base: &[NodeId]) -> Vec<NodeId> {
    voters_in(durable, durable.log.len(), base)
}

/// As [`current_voters`], looking only at the first `log_len` entries of
/// the log (the voters before a change).
fn voters_in(durable: &Durable, log_len: usize, base: &[NodeId]) -> Vec<NodeId> {
    durable.log[..log_len.min(durable.log.len())]
        .iter()
        .rev()
        .find_map(|e| match &e.cmd {
            Command::Voters { voters } => Some(voters.clone()),
            _ => None,
        })
        .or_else(|| durable.snapshot.record.voters.clone())
        .unwrap_or_else(|| base.to_vec())
}

/// Index of the latest [`Command::Voters`] still in `durable`'s log.
fn last_change_index(durable: &Durable) -> Option<u64> {
    durable
        .log
        .iter()
        .rposition(|e| matches!(e.cmd, Command::Voters { .. }))
        .map(|i| durable.snapshot.last_index + 1 + i as u64)
}

/// The known nodes that do not vote.
fn learners_of(known: &[NodeId], voters: &[NodeId]) -> Vec<NodeId> {
    known
        .iter()
        .copied()
        .filter(|k| !voters.contains(k))
        .collect()
}

/// A log position as an index into memory: on a 64-bit machine every u64
/// fits; elsewhere an index past `usize` is past the end of any log held.
fn slot(n: u64) -> usize {
    usize::try_from(n).unwrap_or(usize::MAX)
}
