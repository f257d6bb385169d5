//! What happened on this node, typed: the log line, the status event ring
//! (and later metrics and alerts) all read it from here, so a test or a
//! tool asks "did n2 start web/service, and when" without matching words.
//!
//! Each event renders as the line the log has always shown
//! ([`std::fmt::Display`]); in `tandem status --json` each record carries
//! both the words and the typed event (`"event": {"kind": ...}`).
//! Every event is typed; [`AgentEvent::Note`] only reads back what agents
//! of an earlier version logged in words.

use serde::{Deserialize, Serialize};
use tandem_core::group::ActionKind;

/// A resource action, as events name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Is it running?
    Probe,
    /// Start it.
    Start,
    /// Stop it.
    Stop,
}

impl From<ActionKind> for Action {
    fn from(k: ActionKind) -> Action {
        match k {
            ActionKind::Probe => Action::Probe,
            ActionKind::Start => Action::Start,
            ActionKind::Stop => Action::Stop,
        }
    }
}

impl Action {
    fn word(self) -> &'static str {
        match self {
            Action::Probe => "probe",
            Action::Start => "start",
            Action::Stop => "stop",
        }
    }
}

/// What became of `tandem node add|remove` on the leader.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "step", rename_all = "snake_case")]
pub enum VoterStep {
    /// The change of voters was proposed at this log index.
    Proposed {
        /// Its index.
        index: u64,
    },
    /// The log says what was asked, committed.
    Done,
    /// Not done, and the leader stopped trying.
    Refused {
        /// Why, and what to do.
        reason: String,
    },
}

impl From<&tandem_core::member::VoterOutcome> for VoterStep {
    fn from(o: &tandem_core::member::VoterOutcome) -> VoterStep {
        use tandem_core::member::VoterOutcome;
        match o {
            VoterOutcome::Proposed { index } => VoterStep::Proposed { index: *index },
            VoterOutcome::Done => VoterStep::Done,
            VoterOutcome::Refused { reason } => VoterStep::Refused {
                reason: reason.clone(),
            },
        }
    }
}

/// One event on this node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum AgentEvent {
    /// A start or stop of a resource began.
    ActionBegun {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// Start or stop.
        action: Action,
    },
    /// A probe found a resource running (a restarted agent keeps it).
    FoundRunning {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
    },
    /// A resource started.
    Started {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
    },
    /// A resource stopped.
    Stopped {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
    },
    /// An action on a resource failed.
    ActionFailed {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// Which action.
        action: Action,
        /// Why, as the resource said it.
        reason: String,
    },
    /// Something a resource's periodic check did that the log should say
    /// (an address moved to another interface).
    ResourceNote {
        /// Group.
        group: String,
        /// Resource.
        resource: String,
        /// What happened.
        text: String,
    },
    /// A group failed here; the leader hears of it.
    GroupFailed {
        /// Group.
        group: String,
        /// Why.
        reason: String,
    },
    /// A group's monitor failed with `on_fail = ignore`.
    FailureIgnored {
        /// Group.
        group: String,
        /// Why.
        reason: String,
    },
    /// This node's lease came or went.
    Lease {
        /// Held now (may run its groups) or lost (stops them).
        held: bool,
    },
    /// The guard's lease file could not be written: the lease counts as
    /// lost.
    LeaseFileUnwritable {
        /// Why.
        error: String,
    },
    /// The guard is still stopping what an ended lease left here (at an
    /// agent's start: what the previous one may have run): nothing starts
    /// until it is done (probes and stops go on), or the guard's stop could
    /// land after the agent's start of the same resource.
    WaitingForGuard,
    /// A group's stop outlasted what this node may keep of it: what was
    /// left was killed.
    StopCutShort {
        /// Group.
        group: String,
        /// What was done.
        did: Vec<String>,
    },
    /// A link monitor crossed its threshold: the link is failed here.
    LinkFailed {
        /// Monitor.
        monitor: String,
        /// Link.
        link: String,
        /// Failures in a row.
        failures: u32,
        /// Why the last check failed.
        reason: String,
    },
    /// A failed link monitor passed again.
    LinkHealthy {
        /// Monitor.
        monitor: String,
        /// Link.
        link: String,
    },
    /// A link to a peer came up.
    LinkUp {
        /// Peer.
        node: String,
        /// Link.
        link: String,
    },
    /// A link to a peer is late (heartbeats missed, not dead yet).
    LinkLate {
        /// Peer.
        node: String,
        /// Link.
        link: String,
    },
    /// A link to a peer went down.
    LinkDown {
        /// Peer.
        node: String,
        /// Link.
        link: String,
    },
    /// A peer is heard.
    NodeOnline {
        /// Peer.
        node: String,
    },
    /// A peer restarted (a new incarnation while it was alive).
    NodeBack {
        /// Peer.
        node: String,
        /// Its new incarnation.
        incarnation: u64,
    },
    /// A peer is dead: every link silent for the deadtime.
    NodeDead {
        /// Peer.
        node: String,
        /// Not heard once since this agent started.
        never_seen: bool,
    },
    /// A peer left cleanly.
    NodeLeft {
        /// Peer.
        node: String,
    },
    /// The quorum view changed.
    Quorum {
        /// Quorate now.
        quorate: bool,
        /// Whether it was before (None: first view).
        was: Option<bool>,
        /// Votes present.
        votes: usize,
        /// Votes expected.
        expected: usize,
        /// Not quorate because a rebooted node waits to see every voter once.
        waiting_for_all: bool,
    },
    /// The known leader changed.
    Leader {
        /// Raft term.
        term: u64,
        /// The leader (None: none known).
        leader: Option<String>,
    },
    /// This node's record matches the leader's.
    RecordVerified {
        /// At this commit index.
        index: u64,
    },
    /// This node's record differs from the leader's: discarded, fetched
    /// again.
    RecordDiverged {
        /// At this commit index.
        index: u64,
    },
    /// After a damaged state file: this node followed a leader.
    Recovered {
        /// Term.
        term: u64,
        /// Leader followed.
        leader: String,
    },
    /// On the leader: what became of `tandem node add|remove` (a change
    /// of voters).
    VoterChange {
        /// The node.
        node: String,
        /// Whether it was to vote (add) or not (remove).
        vote: bool,
        /// Proposed, done or refused.
        outcome: VoterStep,
    },
    /// A datagram could not be sent.
    SendFailed {
        /// Peer.
        node: String,
        /// Why.
        reason: String,
    },
    /// Fencing (or powering on) a node through its devices began.
    FenceBegun {
        /// The node.
        node: String,
        /// Powering it on rather than off.
        power_on: bool,
    },
    /// Fencing (or powering on) a node ended.
    FenceDone {
        /// The node.
        node: String,
        /// Powering it on rather than off.
        power_on: bool,
        /// Whether a device confirmed it.
        ok: bool,
        /// One line per attempt (secrets redacted).
        attempts: Vec<String>,
    },
    /// A fencing could not even start.
    FenceNotStarted {
        /// The node.
        node: String,
        /// Why.
        reason: String,
    },
    /// An operator's request reached this agent (and goes to the leader).
    OperatorRequest {
        /// The request in words.
        request: String,
    },
    /// Something happened to a copy of a replicated volume.
    Volume {
        /// The volume.
        volume: String,
        /// What happened.
        text: String,
    },
    /// The agent started.
    AgentStarted {
        /// Its incarnation.
        incarnation: u64,
        /// The links it listens on.
        links: Vec<String>,
        /// Its control socket.
        control_socket: String,
        /// Its state file.
        state_file: String,
    },
    /// The cluster placed a group (or stopped it everywhere): a committed
    /// decision of the leader, logged by every node, with its reason.
    Placed {
        /// Group.
        group: String,
        /// Where it runs now (None: stopped everywhere).
        node: Option<String>,
        /// The placement's epoch.
        epoch: u64,
        /// Why, as the leader decided it.
        reason: Option<String>,
    },
    /// A service for operators or peers could not start here (the event
    /// journal's listener on an address); the rest runs.
    ServiceUnavailable {
        /// What, and why.
        what: String,
    },
    /// The HTTP API listens.
    HttpListening {
        /// Its address.
        address: String,
        /// Over TLS.
        tls: bool,
    },
    /// What protects this node against a hang: the watchdog, in words.
    Watchdog {
        /// The watchdog's state.
        text: String,
    },
    /// The state directory cannot be written: the agent leaves.
    StateDirFailed {
        /// What failed.
        why: String,
        /// It released its space reserve to leave cleanly.
        freed_reserve: bool,
        /// The directory to free or fix.
        dir: String,
    },
    /// The watchdog is no longer fed: the node resets unless that changes.
    WatchdogStarving {
        /// Why.
        reason: String,
    },
    /// The watchdog is fed again: after starving (`again`), or after a
    /// failed feed.
    WatchdogFeeding {
        /// It had been starved on purpose.
        again: bool,
    },
    /// Feeding the watchdog failed.
    WatchdogFeedFailed {
        /// The OS error.
        error: String,
    },
    /// The watchdog was disarmed on a clean stop (or could not be).
    WatchdogDisarmed {
        /// Why it could not be, if it could not.
        error: Option<String>,
    },
    /// A new configuration epoch was committed.
    ConfigEpoch {
        /// The epoch.
        epoch: u64,
    },
    /// This node's configuration is not the committed one.
    ConfigNotCommitted {
        /// This node's identity.
        mine: String,
        /// The committed one.
        committed: String,
    },
    /// This node runs the committed configuration (again).
    ConfigCommitted {
        /// Its identity.
        identity: String,
    },
    /// This node begins its switch to another configuration in place
    /// (`tandem config apply`, or catching up with the cluster's).
    ConfigSwitching {
        /// The new configuration's identity.
        identity: String,
        /// Groups stopped first (removed, or with other resources).
        restart: Vec<String>,
    },
    /// This node switched to another configuration in place.
    ConfigSwitched {
        /// The new configuration's identity.
        identity: String,
        /// What changed, in words.
        changes: Vec<String>,
        /// Where the new file was written (None: it could not be; a
        /// restart would run the old file and catch up again).
        file: Option<String>,
    },
    /// A node the configuration gained while running (`tandem node add
    /// NAME --address`) is a member here from now on: heard, sent to, and
    /// given the log; it votes once a change of voters names it.
    NodeAdded {
        /// Its name.
        node: String,
    },
    /// A node the configuration dropped while running (`tandem node remove
    /// NAME --forget`) is no member here any more.
    NodeForgotten {
        /// Its name.
        node: String,
    },
    /// This node runs an older configuration of the cluster's and cannot
    /// switch to the committed one in place (a change made by hand, such
    /// as a node or link, needs its agent restarted with the new file).
    ConfigNotCaughtUp {
        /// The committed configuration's identity.
        identity: String,
        /// Why, in words.
        why: String,
    },
    /// This node cannot switch to the cluster's configuration.
    ConfigSwitchFailed {
        /// The configuration's identity.
        identity: String,
        /// Why, with what to do.
        why: String,
    },
    /// An operator's request waited so long in the queue that its asker
    /// gave up: it was not acted on.
    RequestDropped {
        /// The request in words.
        request: String,
    },
    /// A volume's request for the record went to the leader.
    VolumeRequest {
        /// The request in words.
        request: String,
    },
    /// A graceful stop was asked for: the groups here stop first.
    AgentStopping,
    /// The agent stopped: it handed over and told every peer it left.
    AgentStopped,
    /// The agent leaves with resources still active here: the watchdog
    /// stays armed.
    LeavingActive,
    /// Words only: what agents of an earlier version logged before their
    /// events were typed (read back from their status), or an event
    /// withheld because it could not be scrubbed of the configuration's
    /// secrets.
    Note {
        /// What happened.
        text: String,
    },
}

impl AgentEvent {
    /// How severe it is, for the log's level (and `journalctl -p`): an
    /// error wants the operator (a fence unconfirmed, a lease file that
    /// cannot be written, a damaged record); a warning is a failure the
    /// cluster acts on; the rest says what the cluster did.
    pub fn severity(&self) -> crate::logging::Severity {
        use crate::logging::Severity::{Error, Info, Warn};
        match self {
            AgentEvent::LeaseFileUnwritable { .. }
            | AgentEvent::RecordDiverged { .. }
            | AgentEvent::FenceNotStarted { .. }
            | AgentEvent::FenceDone { ok: false, .. }
            | AgentEvent::StateDirFailed { .. }
            | AgentEvent::ConfigSwitchFailed { .. }
            | AgentEvent::WatchdogFeedFailed { .. }
            | AgentEvent::WatchdogDisarmed { error: Some(_) } => Error,
            AgentEvent::ActionFailed { .. }
            | AgentEvent::GroupFailed { .. }
            | AgentEvent::FailureIgnored { .. }
            | AgentEvent::Lease { held: false }
            | AgentEvent::StopCutShort { .. }
            | AgentEvent::LinkFailed { .. }
            | AgentEvent::LinkLate { .. }
            | AgentEvent::LinkDown { .. }
            | AgentEvent::NodeDead { .. }
            | AgentEvent::SendFailed { .. }
            | AgentEvent::VoterChange {
                outcome: VoterStep::Refused { .. },
                ..
            }
            | AgentEvent::Quorum { quorate: false, .. }
            | AgentEvent::FenceBegun { .. }
            | AgentEvent::ServiceUnavailable { .. }
            | AgentEvent::WatchdogStarving { .. }
            | AgentEvent::ConfigNotCommitted { .. }
            | AgentEvent::ConfigNotCaughtUp { .. }
            | AgentEvent::RequestDropped { .. } => Warn,
            _ => Info,
        }
    }

    /// Its kind, as the JSON of status and the journal name it
    /// (`node_dead`, ...).
    pub fn kind(&self) -> String {
        serde_json::to_value(self)
            .ok()
            .and_then(|v| v.get("kind")?.as_str().map(str::to_string))
            .unwrap_or_default()
    }
}

impl std::fmt::Display for AgentEvent {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            AgentEvent::ActionBegun {
                group,
                resource,
                action,
            } => {
                let verb = match action {
                    Action::Start => "starting",
                    Action::Stop => "stopping",
                    Action::Probe => "probing",
                };
                write!(f, "{verb} {group}/{resource}")
            }
            AgentEvent::FoundRunning { group, resource } => {
                write!(f, "found {group}/{resource} running")
            }
            AgentEvent::Started { group, resource } => write!(f, "started {group}/{resource}"),
            AgentEvent::Stopped { group, resource } => write!(f, "stopped {group}/{resource}"),
            AgentEvent::ActionFailed {
                group,
                resource,
                action,
                reason,
            } => write!(
                f,
                "{} of {group}/{resource} failed: {reason}",
                action.word()
            ),
            AgentEvent::ResourceNote {
                group,
                resource,
                text,
            } => write!(f, "{group}/{resource}: {text}"),
            AgentEvent::GroupFailed { group, reason } => {
                write!(f, "group {group} failed here: {reason}")
            }
            AgentEvent::FailureIgnored { group, reason } => {
                write!(f, "group {group}: {reason} (on_fail = ignore)")
            }
            AgentEvent::Lease { held: true } => {
                f.write_str("lease held: this node may run its groups")
            }
            AgentEvent::Lease { held: false } => {
                f.write_str("lease lost: stopping every group here")
            }
            AgentEvent::LeaseFileUnwritable { error } => write!(
                f,
                "cannot write the lease file for the guard: {error}; this node's lease counts as lost"
            ),
            AgentEvent::WaitingForGuard => write!(
                f,
                "waiting for the guard: it is still stopping what an ended lease left here; nothing starts until it is done"
            ),
            AgentEvent::StopCutShort { group, did } => write!(
                f,
                "group {group}: its stop outlasted what the cluster waits for (the lease held before it was moved away): {}",
                did.join("; ")
            ),
            AgentEvent::LinkFailed {
                monitor,
                link,
                failures,
                reason,
            } => write!(
                f,
                "monitor {monitor} (link {link}) failed {failures} times: {reason}; groups that need link {link} leave this node"
            ),
            AgentEvent::LinkHealthy { monitor, link } => {
                write!(f, "monitor {monitor} (link {link}) healthy again")
            }
            AgentEvent::LinkUp { node, link } => write!(f, "link {node}/{link} up"),
            AgentEvent::LinkLate { node, link } => write!(f, "link {node}/{link} late"),
            AgentEvent::LinkDown { node, link } => write!(f, "link {node}/{link} down"),
            AgentEvent::NodeOnline { node } => write!(f, "node {node} online"),
            AgentEvent::NodeBack { node, incarnation } => {
                write!(f, "node {node} back (new incarnation {incarnation})")
            }
            AgentEvent::NodeDead {
                node,
                never_seen: false,
            } => write!(f, "node {node} dead"),
            AgentEvent::NodeDead {
                node,
                never_seen: true,
            } => write!(f, "node {node} dead (not seen since start)"),
            AgentEvent::NodeLeft { node } => write!(f, "node {node} left the cluster"),
            AgentEvent::Quorum {
                quorate,
                was,
                votes,
                expected,
                waiting_for_all,
            } => {
                let votes = format!("{votes} of {expected} votes");
                match (was, quorate) {
                    (Some(true), true) => write!(f, "quorum kept ({votes})"),
                    (_, true) => write!(f, "quorum gained ({votes})"),
                    (Some(false), false) => write!(f, "still no quorum ({votes})"),
                    _ if *waiting_for_all => write!(
                        f,
                        "no quorum ({votes}; waiting to see every node once since start)"
                    ),
                    _ => write!(f, "no quorum ({votes})"),
                }
            }
            AgentEvent::Leader {
                term,
                leader: Some(l),
            } => write!(f, "leader is {l} (term {term})"),
            AgentEvent::Leader { term, leader: None } => write!(f, "no leader (term {term})"),
            AgentEvent::RecordVerified { index } => write!(
                f,
                "record matches the leader's (index {index}): leases may count"
            ),
            AgentEvent::RecordDiverged { index } => write!(
                f,
                "RECORD DAMAGED: this node's record differs from the leader's at index {index}; \
                 it was discarded and is fetched again from the leader (nothing runs here until then)"
            ),
            AgentEvent::Recovered { term, leader } => write!(
                f,
                "state recovered: followed leader {leader} in term {term}; this node votes again from the next term"
            ),
            AgentEvent::VoterChange {
                node,
                vote,
                outcome,
            } => {
                let what = if *vote { "add" } else { "remove" };
                match outcome {
                    VoterStep::Proposed { index } => {
                        write!(f, "node {what} {node}: change of voters proposed at index {index}")
                    }
                    VoterStep::Done => write!(
                        f,
                        "node {what} {node}: done, {node} {} from now on",
                        if *vote { "votes" } else { "no longer votes" }
                    ),
                    VoterStep::Refused { reason } => {
                        write!(f, "node {what} {node}: refused: {reason}")
                    }
                }
            }
            AgentEvent::SendFailed { node, reason } => {
                write!(f, "could not send to {node}: {reason}")
            }
            AgentEvent::FenceBegun { node, power_on } => write!(
                f,
                "{} {node} through its fence devices",
                if *power_on { "powering on" } else { "fencing" }
            ),
            AgentEvent::FenceDone {
                node,
                power_on,
                ok,
                attempts,
            } => write!(
                f,
                "{} {node} {}: {}",
                if *power_on { "powering on" } else { "fencing" },
                if *ok { "succeeded" } else { "FAILED" },
                attempts.join("; ")
            ),
            AgentEvent::FenceNotStarted { node, reason } => write!(f, "fencing {node}: {reason}"),
            AgentEvent::OperatorRequest { request } => write!(f, "operator request: {request}"),
            AgentEvent::Volume { volume, text } => write!(f, "volume {volume}: {text}"),
            AgentEvent::AgentStarted {
                incarnation,
                links,
                control_socket,
                state_file,
            } => write!(
                f,
                "started (incarnation {incarnation}, links {}, control socket {control_socket}, state {state_file})",
                links.join(", ")
            ),
            AgentEvent::Placed {
                group,
                node,
                epoch,
                reason,
            } => {
                match node {
                    Some(n) => write!(f, "{group} placed on {n} (epoch {epoch})")?,
                    None => write!(f, "{group} stopped everywhere (epoch {epoch})")?,
                }
                match reason {
                    Some(r) => write!(f, ": {r}"),
                    None => Ok(()),
                }
            }
            AgentEvent::ServiceUnavailable { what } => f.write_str(what),
            AgentEvent::HttpListening { address, tls } => write!(
                f,
                "HTTP API on {}://{address} (GET / the dashboard, GET /v1/status, GET /v1/status/stream, POST /v1/control, GET /metrics)",
                if *tls { "https" } else { "http" }
            ),
            AgentEvent::Watchdog { text } => f.write_str(text),
            AgentEvent::StateDirFailed {
                why,
                freed_reserve,
                dir,
            } => write!(
                f,
                "{why}: this node's lease is lost; stopping its groups and leaving the cluster{}. Free space in {dir} (or fix the filesystem), then start the agent again",
                if *freed_reserve {
                    "; released its space reserve to leave cleanly"
                } else {
                    ""
                }
            ),
            AgentEvent::WatchdogStarving { reason } => write!(
                f,
                "watchdog: NOT feeding it any more ({reason}); the node resets unless that changes"
            ),
            AgentEvent::WatchdogFeeding { again: true } => {
                f.write_str("watchdog: feeding it again")
            }
            AgentEvent::WatchdogFeeding { again: false } => f.write_str("watchdog: fed again"),
            AgentEvent::WatchdogFeedFailed { error } => {
                write!(f, "watchdog: feeding failed: {error}")
            }
            AgentEvent::WatchdogDisarmed { error: None } => f.write_str("watchdog disarmed"),
            AgentEvent::WatchdogDisarmed { error: Some(e) } => write!(
                f,
                "watchdog: could not disarm it ({e}); it resets the node unless an agent starts within its timeout"
            ),
            AgentEvent::ConfigEpoch { epoch } => write!(f, "config epoch {epoch}"),
            AgentEvent::ConfigNotCommitted { mine, committed } => write!(
                f,
                "this node's configuration ({mine}) is not the committed one ({committed}): it starts nothing the cluster did not agree on and leaves what runs; `tandem status` shows which sections differ"
            ),
            AgentEvent::ConfigCommitted { identity } => {
                write!(f, "this node runs the committed configuration ({identity})")
            }
            AgentEvent::ConfigSwitching { identity, restart } if restart.is_empty() => {
                write!(f, "switching to configuration {identity}; every group keeps running")
            }
            AgentEvent::ConfigSwitching { identity, restart } => write!(
                f,
                "switching to configuration {identity}: stopping {} first (removed, or their resources change)",
                restart.join(", ")
            ),
            AgentEvent::ConfigSwitched {
                identity,
                changes,
                file,
            } => write!(
                f,
                "now running configuration {identity} ({}); {}",
                if changes.is_empty() {
                    "no change here".to_string()
                } else {
                    changes.join("; ")
                },
                match file {
                    Some(p) => format!("written to {p}"),
                    None => "its file could not be written: a restart would run the old one".into(),
                }
            ),
            AgentEvent::NodeAdded { node } => write!(
                f,
                "node {node} added to the members: heard, sent to and given the log from now on; it votes once `tandem node add {node}` gives it a vote"
            ),
            AgentEvent::NodeForgotten { node } => write!(
                f,
                "node {node} is no member any more: not heard, sent to or given the log"
            ),
            AgentEvent::ConfigNotCaughtUp { identity, why } => write!(
                f,
                "this node's configuration is older than the cluster's ({identity}) and cannot be switched in place: {why}; install the cluster's file here and restart this agent (`tandem config history` on a peer shows it)"
            ),
            AgentEvent::ConfigSwitchFailed { identity, why } => {
                write!(f, "cannot switch to configuration {identity}: {why}")
            }
            AgentEvent::VolumeRequest { request } => write!(f, "volume request: {request}"),
            AgentEvent::RequestDropped { request } => write!(
                f,
                "operator request not acted on: `{request}` waited longer than its asker (who was told there was no answer)"
            ),
            AgentEvent::AgentStopping => f.write_str("stopping: stopping the groups here first"),
            AgentEvent::AgentStopped => {
                f.write_str("stopped (handed over and sent leave to every peer)")
            }
            AgentEvent::LeavingActive => {
                f.write_str("leaving with resources still active: the watchdog stays armed")
            }
            AgentEvent::Note { text } => f.write_str(text),
        }
    }
}

/// `value` with every one of `secrets` replaced by the redaction mark
/// wherever it appears in it (an agent's failure text that echoed a
/// password), or None if it could not be read back. Values shorter than 4
/// characters are not secrets here: they would scrub ordinary words.
pub fn scrubbed<T>(value: T, secrets: &[String]) -> Option<T>
where
    T: Serialize + for<'de> Deserialize<'de>,
{
    let mut text = serde_json::to_string(&value).ok()?;
    let mut changed = false;
    for s in secrets.iter().filter(|s| s.len() >= 4) {
        // As the JSON text writes it (quotes and backslashes escaped).
        let Ok(quoted) = serde_json::to_string(s) else {
            continue;
        };
        let inner = &quoted[1..quoted.len() - 1];
        if text.contains(inner) {
            text = text.replace(inner, tandem_core::config::REDACTED);
            changed = true;
        }
    }
    if !changed {
        return Some(value);
    }
    serde_json::from_str(&text).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_from_an_event_wherever_they_appear() {
        let e = AgentEvent::ActionFailed {
            group: "db".into(),
            resource: "pg".into(),
            action: Action::Start,
            reason: "login failed: pa\"ss-1234".into(),
        };
        let s = scrubbed(e.clone(), &["pa\"ss-1234".to_string(), "ab".into()]).unwrap();
        assert_eq!(s.to_string(), "start of db/pg failed: login failed: ****");
        assert_eq!(scrubbed(e.clone(), &[]), Some(e));
    }

    /// The words stay what operators (and their log scrapers) know.
    #[test]
    fn events_render_as_the_log_lines_they_replace() {
        let r = |group: &str, resource: &str| (group.to_string(), resource.to_string());
        let (g, res) = r("web", "service");
        let cases = [
            (
                AgentEvent::ActionBegun {
                    group: g.clone(),
                    resource: res.clone(),
                    action: Action::Start,
                },
                "starting web/service",
            ),
            (
                AgentEvent::Stopped {
                    group: g.clone(),
                    resource: "vip".into(),
                },
                "stopped web/vip",
            ),
            (
                AgentEvent::ActionFailed {
                    group: g.clone(),
                    resource: res.clone(),
                    action: Action::Stop,
                    reason: "exit 1".into(),
                },
                "stop of web/service failed: exit 1",
            ),
            (
                AgentEvent::Lease { held: false },
                "lease lost: stopping every group here",
            ),
        ];
        for (e, text) in cases {
            assert_eq!(e.to_string(), text);
        }
    }

    #[test]
    fn events_carry_their_kind_and_fields_in_json() {
        let e = AgentEvent::Started {
            group: "web".into(),
            resource: "vip".into(),
        };
        let v = serde_json::to_value(&e).unwrap_or_default();
        assert_eq!(v["kind"], "started");
        assert_eq!(v["group"], "web");
        assert_eq!(v["resource"], "vip");
        let back: AgentEvent = serde_json::from_value(v).unwrap_or_else(|_| AgentEvent::Note {
            text: String::new(),
        });
        assert_eq!(back, e);
    }

    /// A newer agent's event kind does not make its whole status unreadable.
    #[test]
    fn an_event_of_an_unknown_kind_reads_as_untyped() {
        let r: crate::status::EventRecord = serde_json::from_str(
            r#"{"at_unix_ms":1,"text":"something new","event":{"kind":"from_the_future","x":1}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.text, "something new");
        assert_eq!(r.event, None);
        let r: crate::status::EventRecord = serde_json::from_str(
            r#"{"at_unix_ms":1,"text":"node n2 online","event":{"kind":"node_online","node":"n2"}}"#,
        )
        .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.event, Some(AgentEvent::NodeOnline { node: "n2".into() }));
    }
}
