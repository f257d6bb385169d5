//! What `tandem status` shows: the agent's typed view of the cluster, as it
//! travels on its control socket (JSON). The CLI renders it for people.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};
use tandem_core::group::GroupState;

/// A node's view of the cluster.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// Cluster name.
    pub cluster: String,
    /// This node.
    pub node: String,
    /// This agent's incarnation.
    pub incarnation: u64,
    /// Time since the agent started.
    pub uptime_ms: u64,
    /// Heartbeat interval in force.
    pub heartbeat_ms: u64,
    /// Deadtime in force.
    pub deadtime_ms: u64,
    /// Quorum as this node sees it.
    pub quorum: QuorumStatus,
    /// The agreed record as this node knows it.
    pub agreement: AgreementStatus,
    /// Every other node.
    pub peers: Vec<PeerStatus>,
    /// Packets dropped, by reason.
    pub dropped: BTreeMap<String, u64>,
    /// The most recent events, oldest first.
    pub events: Vec<EventRecord>,
    /// This node's lease (None on the witness).
    #[serde(default)]
    pub lease: Option<LeaseStatus>,
    /// Links whose ping monitor fails on this node.
    #[serde(default)]
    pub failed_links: Vec<String>,
    /// Every group of the cluster.
    #[serde(default)]
    pub groups: Vec<GroupStatus>,
    /// Nodes in standby (`tandem node standby`).
    #[serde(default)]
    pub standby: Vec<String>,
    /// The most recent fencings, oldest first.
    #[serde(default)]
    pub fences: Vec<tandem_core::agreement::FenceEntry>,
    /// How a lost node's groups are recovered, in words.
    #[serde(default)]
    pub recovery: String,
    /// What protects each node that hosts groups when it goes silent.
    #[serde(default)]
    pub protection: Vec<ProtectionStatus>,
    /// This node's watchdog (None on the witness).
    #[serde(default)]
    pub watchdog: Option<crate::watchdog::WatchdogStatus>,
    /// This node's copies of replicated volumes.
    #[serde(default)]
    pub volumes: Vec<crate::volume::engine::VolumeStatus>,
    /// The configuration every node runs against the committed one.
    #[serde(default)]
    pub config: ConfigStatus,
    /// This node's alert recipients and what their deliveries came to.
    #[serde(default)]
    pub alerts: Vec<crate::alerts::AlertStatus>,
}

/// Configurations and keys across the cluster, as this node sees them.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigStatus {
    /// Identity of this node's configuration (hash of what it says).
    pub identity: String,
    /// Identity of the committed configuration (the record's).
    pub committed: String,
    /// The configuration a change under way switches every node to
    /// (`tandem config apply`), until it commits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub next: Option<String>,
    /// Fingerprint of the key this node sends with.
    pub key_fingerprint: String,
    /// Nodes whose configuration is not the committed one (this one
    /// included), with the sections that differ when known.
    pub differing: Vec<ConfigDifference>,
    /// Plain sentences about peers this node cannot authenticate.
    pub unauthenticated: Vec<String>,
}

/// One node running another configuration than the committed one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ConfigDifference {
    /// Node.
    pub node: String,
    /// Identity of the configuration it runs.
    pub identity: String,
    /// Sections that differ from the committed configuration (empty: not
    /// known here).
    pub sections: Vec<String>,
}

/// This node's lease on running groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseStatus {
    /// Whether it holds one now.
    pub held: bool,
    /// How much of it is left (ms).
    pub remaining_ms: u64,
}

/// One group, cluster-wide as this node knows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GroupStatus {
    /// Group name.
    pub name: String,
    /// Where the agreed record places it (None: stopped everywhere).
    pub placed_on: Option<String>,
    /// Placement epoch.
    pub epoch: u64,
    /// Its state where it is placed, as this node knows it.
    pub state: ShownState,
    /// Since when (ms since the Unix epoch), when known.
    pub since_unix_ms: Option<u64>,
    /// Nodes where something of it may run now.
    pub active_on: Vec<String>,
    /// The node an operator pinned it to (`tandem move`), until
    /// `tandem move --clear`.
    pub pinned: Option<String>,
    /// A failover under way (`tandem failover`): the node it is moving to
    /// once; gone when it is placed.
    #[serde(default)]
    pub moving_to: Option<String>,
    /// In maintenance: not started, stopped or monitored.
    pub maintenance: bool,
    /// Blocked after a failure (`on_fail = block`): left alone like
    /// maintenance until `tandem cleanup`.
    #[serde(default)]
    pub blocked: bool,
    /// Why it cannot move yet (known on the leader only).
    pub waiting: Option<String>,
    /// Fail counts by node.
    pub fail_counts: BTreeMap<String, u32>,
    /// Latest failure per node: (node, when, why).
    pub failures: Vec<(String, u64, String)>,
    /// Its resources on this node.
    pub resources: Vec<ResourceStatus>,
    /// Its monitors as this node checks them (on the node it runs on:
    /// the last result and when).
    #[serde(default)]
    pub monitors: Vec<MonitorStatus>,
}

/// A group's state as status shows it. In JSON it is one word (`running`,
/// `starting`, ... `stopped`, `unknown`) or, in maintenance,
/// `unmanaged: not checked (last known WORD)`: nothing checks the group
/// then, so status never claims it runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShownState {
    /// What the node it is placed on reports (`Stopped`: placed nowhere).
    Reported(GroupState),
    /// Placed on a node that has not reported it (yet).
    Unreported,
    /// In maintenance: not checked; the last state known, if any.
    Unmanaged(Option<GroupState>),
}

/// The JSON prefix of [`ShownState::Unmanaged`].
const UNMANAGED: &str = "unmanaged: not checked (last known ";

impl ShownState {
    /// Whether it runs where it is placed, as its node reports.
    pub fn is_running(self) -> bool {
        self == ShownState::Reported(GroupState::Running)
    }
}

impl std::fmt::Display for ShownState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ShownState::Reported(s) => f.write_str(s.as_str()),
            ShownState::Unreported => f.write_str("unknown"),
            ShownState::Unmanaged(last) => write!(
                f,
                "{UNMANAGED}{})",
                last.map_or("unknown", GroupState::as_str)
            ),
        }
    }
}

/// Serializes a typed word as the text it displays, and reads it back
/// with `$from` (which never fails: an unknown word from a newer node
/// reads as the type's unknown case).
macro_rules! as_text {
    ($ty:ty, $from:expr) => {
        impl Serialize for $ty {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.collect_str(self)
            }
        }

        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                let from: fn(&str) -> $ty = $from;
                Ok(from(&text))
            }
        }
    };
}

/// A word of a core enum that serializes in lower case, or its `unknown`.
fn group_word(w: &str) -> GroupState {
    GroupState::deserialize(serde::de::value::StrDeserializer::<serde::de::value::Error>::new(w))
        .unwrap_or(GroupState::Unknown)
}

as_text!(ShownState, |text| {
    if let Some(rest) = text.strip_prefix(UNMANAGED) {
        let w = rest.trim_end_matches(')');
        ShownState::Unmanaged((w != "unknown").then(|| group_word(w)))
    } else if text == "unknown" {
        ShownState::Unreported
    } else {
        // A word this version does not know reads as GroupState::Unknown.
        ShownState::Reported(group_word(text))
    }
});

/// A resource's state on this node, as status shows it: one word, or
/// `failed: WHY`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceShown {
    /// Not probed yet (or a word this version does not know).
    Unknown,
    /// Not running.
    Stopped,
    /// Being started.
    Starting,
    /// Running.
    Running,
    /// Being stopped.
    Stopping,
    /// Failed (a start, a check, or a stop): why.
    Failed(String),
}

impl std::fmt::Display for ResourceShown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            ResourceShown::Unknown => "unknown",
            ResourceShown::Stopped => "stopped",
            ResourceShown::Starting => "starting",
            ResourceShown::Running => "running",
            ResourceShown::Stopping => "stopping",
            ResourceShown::Failed(why) => return write!(f, "failed: {why}"),
        })
    }
}

as_text!(ResourceShown, |text| match text {
    "stopped" => ResourceShown::Stopped,
    "starting" => ResourceShown::Starting,
    "running" => ResourceShown::Running,
    "stopping" => ResourceShown::Stopping,
    t => t
        .strip_prefix("failed: ")
        .map_or(ResourceShown::Unknown, |w| ResourceShown::Failed(
            w.to_string()
        )),
});

/// A group monitor's last result as status shows it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MonitorShown {
    /// A `process` monitor: the resource's own periodic check.
    ByResourceCheck,
    /// Not checked: the group does not run here.
    NotHere,
    /// Not checked yet.
    NotYet,
    /// The last check passed.
    Ok,
    /// The last check failed: why.
    Failed(String),
    /// A word this version does not know.
    Unknown(String),
}

impl std::fmt::Display for MonitorShown {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            MonitorShown::ByResourceCheck => "by the periodic resource check (every 500 ms)",
            MonitorShown::NotHere => "not checked: the group does not run here",
            MonitorShown::NotYet => "not checked yet",
            MonitorShown::Ok => "ok",
            MonitorShown::Failed(why) => return write!(f, "failed: {why}"),
            MonitorShown::Unknown(text) => text,
        })
    }
}

as_text!(MonitorShown, |text| {
    [
        MonitorShown::ByResourceCheck,
        MonitorShown::NotHere,
        MonitorShown::NotYet,
        MonitorShown::Ok,
    ]
    .into_iter()
    .find(|m| m.to_string() == text)
    .or_else(|| {
        text.strip_prefix("failed: ")
            .map(|w| MonitorShown::Failed(w.to_string()))
    })
    .unwrap_or_else(|| MonitorShown::Unknown(text.to_string()))
});

/// How quorum is counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum QuorumMode {
    /// A majority of voters (a witness among them, if any).
    Majority,
    /// Two nodes deciding by fencing.
    TwoNode,
    /// A word this version does not know.
    #[serde(other)]
    Unknown,
}

impl QuorumMode {
    /// Its word.
    pub fn as_str(self) -> &'static str {
        match self {
            QuorumMode::Majority => "majority",
            QuorumMode::TwoNode => "two_node",
            QuorumMode::Unknown => "unknown",
        }
    }
}

/// This member's part in the agreement.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum AgreementRole {
    /// It leads.
    Leader,
    /// It follows.
    Follower,
    /// It stands for election.
    Candidate,
    /// A word this version does not know.
    #[serde(other)]
    Unknown,
}

impl AgreementRole {
    /// Its word.
    pub fn as_str(self) -> &'static str {
        match self {
            AgreementRole::Leader => "leader",
            AgreementRole::Follower => "follower",
            AgreementRole::Candidate => "candidate",
            AgreementRole::Unknown => "unknown",
        }
    }
}

/// One resource in status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ResourceStatus {
    /// Name.
    pub name: String,
    /// Kind (`ip`, `process`, `exec`).
    pub kind: String,
    /// State on this node.
    pub state: ResourceShown,
    /// What its kind adds (a filesync's last sync per node).
    #[serde(default)]
    pub detail: Option<String>,
}

/// One group monitor as this node sees it, for status.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct MonitorStatus {
    /// Monitor name.
    pub name: String,
    /// Kind (`http`, `tcp`, `exec`, `process`).
    pub kind: String,
    /// Interval between checks (ms).
    pub interval_ms: u64,
    /// Its last result here: ok, failed and why, or why it is not
    /// checked here.
    pub last: MonitorShown,
    /// When that result came (ms since the Unix epoch), if it is one.
    pub at_unix_ms: Option<u64>,
}

/// Quorum as seen by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct QuorumStatus {
    /// How quorum is counted.
    pub mode: QuorumMode,
    /// Votes heard, own included.
    pub votes: usize,
    /// Votes in the cluster.
    pub expected: usize,
    /// Whether this node may act.
    pub quorate: bool,
    /// Not every node was seen since this agent started (wait_for_all).
    pub waiting_for_all: bool,
}

/// The replicated record and its leader, as seen by one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct AgreementStatus {
    /// Its part in the agreement.
    pub role: AgreementRole,
    /// Whether this member votes.
    pub voter: bool,
    /// Current term.
    pub term: u64,
    /// The leader, if known.
    pub leader: Option<String>,
    /// Highest committed entry known here.
    pub commit_index: u64,
    /// Configuration epoch of the record.
    pub config_epoch: u64,
    /// A change of voters is in this node's log, not yet committed (the
    /// `voter` flags already show it).
    #[serde(default)]
    pub voters_changing: bool,
    /// The record names the voters (its first leader wrote them); until
    /// then they are each node's configuration's, and no node is added
    /// to the configuration while running.
    #[serde(default)]
    pub voters_written: bool,
    /// The record's word on each volume it has one for: the copies that
    /// hold every acknowledged write.
    #[serde(default)]
    pub volumes_up_to_date: std::collections::BTreeMap<String, Vec<String>>,
}

impl AgreementStatus {
    /// Whether `node`'s copy of `volume` holds every acknowledged write as
    /// the record says (true when the record has no word on the volume:
    /// nothing was written through the cluster).
    pub fn copy_up_to_date(&self, volume: &str, node: &str) -> bool {
        tandem_core::volume::rules::holds_every_write(
            self.volumes_up_to_date.get(volume).map(Vec::as_slice),
            node,
        )
    }
}

/// What keeps one node that went silent from running its groups.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProtectionStatus {
    /// Node name.
    pub node: String,
    /// `fence-device`, `watchdog` or `leases-alone`.
    pub by: String,
    /// In words, with what it costs or what to do.
    pub note: String,
}

/// One peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PeerStatus {
    /// Node name.
    pub name: String,
    /// What this node knows of it.
    pub state: PeerState,
    /// Its incarnation, once heard.
    pub incarnation: Option<u64>,
    /// Whether it votes.
    pub voter: bool,
    /// Each link to it.
    pub links: Vec<LinkStatus>,
}

/// What a node knows of a peer (`"online"`... in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum PeerState {
    /// Not heard since this agent started.
    Unknown,
    /// Heard.
    Online,
    /// Dead: every link silent for the deadtime.
    Offline,
    /// Left cleanly.
    Left,
    /// In standby: runs no group.
    Standby,
    /// Fenced.
    Fenced,
}

/// A link's state to one peer (`"up"`... in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LinkWord {
    /// Not heard on yet.
    Unknown,
    /// Heartbeats arrive.
    Up,
    /// Heartbeats are late.
    Late,
    /// Silent for the deadtime.
    Down,
}

impl PeerState {
    /// The word status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            PeerState::Unknown => "unknown",
            PeerState::Online => "online",
            PeerState::Offline => "offline",
            PeerState::Left => "left",
            PeerState::Standby => "standby",
            PeerState::Fenced => "fenced",
        }
    }
}

impl LinkWord {
    /// The word status shows.
    pub fn as_str(self) -> &'static str {
        match self {
            LinkWord::Unknown => "unknown",
            LinkWord::Up => "up",
            LinkWord::Late => "late",
            LinkWord::Down => "down",
        }
    }
}

/// One link to one peer.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkStatus {
    /// Link name.
    pub link: String,
    /// Heard on it, late, or silent.
    pub state: LinkWord,
    /// Whether the peer's heartbeats say it hears this node on this link
    /// (`up` without it: a one-way link).
    pub hears_us: bool,
    /// Heartbeat round trips on it, once measured (absent from agents
    /// before this field).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rtt: Option<tandem_core::link_rtt::RttStats>,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct EventRecord {
    /// Wall-clock time (ms since the Unix epoch).
    pub at_unix_ms: u64,
    /// What happened, in words.
    pub text: String,
    /// What happened, typed (absent from agents before typed events; an
    /// event kind this version does not know reads as absent, so a newer
    /// agent's status still reads).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_event"
    )]
    pub event: Option<crate::event::AgentEvent>,
}

/// A typed event, or None for one this version cannot read.
fn lenient_event<'de, D: serde::Deserializer<'de>>(
    d: D,
) -> Result<Option<crate::event::AgentEvent>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(serde_json::from_value(v).ok())
}

pub use crate::clock::format_utc;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shown_states_read_back_and_keep_their_json_words() {
        let all = [
            ShownState::Reported(GroupState::Running),
            ShownState::Reported(GroupState::Stopped),
            ShownState::Unreported,
            ShownState::Unmanaged(Some(GroupState::Running)),
            ShownState::Unmanaged(None),
        ];
        let words = [
            "running",
            "stopped",
            "unknown",
            "unmanaged: not checked (last known running)",
            "unmanaged: not checked (last known unknown)",
        ];
        for (s, w) in all.iter().zip(words) {
            let json = serde_json::to_string(s).unwrap();
            assert_eq!(json, format!("\"{w}\""));
            assert_eq!(serde_json::from_str::<ShownState>(&json).unwrap(), *s);
        }
        // A newer node's word.
        assert_eq!(
            serde_json::from_str::<ShownState>("\"migrating\"").unwrap(),
            ShownState::Reported(GroupState::Unknown)
        );
    }

    #[test]
    fn resource_and_monitor_words_read_back() {
        for r in [
            ResourceShown::Unknown,
            ResourceShown::Stopped,
            ResourceShown::Starting,
            ResourceShown::Running,
            ResourceShown::Stopping,
            ResourceShown::Failed("exited 1".into()),
        ] {
            let json = serde_json::to_string(&r).unwrap();
            assert_eq!(serde_json::from_str::<ResourceShown>(&json).unwrap(), r);
        }
        for m in [
            MonitorShown::ByResourceCheck,
            MonitorShown::NotHere,
            MonitorShown::NotYet,
            MonitorShown::Ok,
            MonitorShown::Failed("GET http://x/: status 503".into()),
        ] {
            let json = serde_json::to_string(&m).unwrap();
            assert_eq!(serde_json::from_str::<MonitorShown>(&json).unwrap(), m);
        }
        assert_eq!(serde_json::to_string(&MonitorShown::Ok).unwrap(), "\"ok\"");
        assert_eq!(
            serde_json::to_string(&QuorumMode::TwoNode).unwrap(),
            "\"two_node\""
        );
        assert_eq!(
            serde_json::from_str::<AgreementRole>("\"observer\"").unwrap(),
            AgreementRole::Unknown
        );
    }

    #[test]
    fn utc_formatting() {
        assert_eq!(format_utc(0), "1970-01-01 00:00:00.000");
        assert_eq!(format_utc(951_782_400_123), "2000-02-29 00:00:00.123");
        assert_eq!(format_utc(1_795_305_601_500), "2026-11-22 00:00:01.500");
    }
}
