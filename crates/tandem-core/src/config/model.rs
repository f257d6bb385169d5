//! The configuration model: what a valid file says, name-keyed, typed and
//! with every default applied. Validation builds it once
//! ([`crate::config::load`]); the agent and the commands read nothing
//! else (the raw [`super::schema`] is validation's input only).
//!
//! Every list is kept in file order (a node's position decides whether it
//! votes, a resource's its start order) and every entry has a name that is
//! unique in its list, which is how [`super::diff`] pairs two models.
//! The model serializes to the shape of the file it came from (`config
//! show --format toml`), with secrets redacted; [`super::identity`] hashes that
//! form (and the secrets themselves), so two files that say the same thing
//! have the same identity however they are written.

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};

use serde::{Serialize, Serializer};

pub use super::values::{Backing, Failback, OnFail, Profile, Protocol, SplitBrainPolicy};
use super::values::{Cidr, Size};
use crate::kinds::Params;

/// What is written in place of a secret wherever the model is shown.
pub const REDACTED: &str = "****";

/// Where the agent keeps its state unless `[cluster] state_dir` says.
pub const DEFAULT_STATE_DIR: &str = "/var/lib/tandem";
/// The agent's control socket unless `[cluster] control_socket` says.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tandem/control.sock";
/// Heartbeat port of a link unless `port` says.
pub const DEFAULT_HEARTBEAT_PORT: u16 = 5405;
/// Limit on one fence device call unless `timeout_ms` says.
pub const DEFAULT_FENCE_TIMEOUT_MS: u64 = 30_000;
/// Extra attempts at a failing fence device unless `retries` says.
pub const DEFAULT_FENCE_RETRIES: u32 = 2;
/// Time between checks of a group monitor unless `interval_ms` says.
pub const DEFAULT_MONITOR_INTERVAL_MS: u64 = 2_000;
/// Time between checks of a ping (link) monitor unless `interval_ms` says.
pub const DEFAULT_PING_INTERVAL_MS: u64 = 1_000;
/// Limit on one check unless `timeout_ms` says.
pub const DEFAULT_MONITOR_TIMEOUT_MS: u64 = 1_000;
/// Failures in a row before acting unless `failures` says.
pub const DEFAULT_MONITOR_FAILURES: u32 = 3;
/// Restarts in place before moving unless `restarts` says.
pub const DEFAULT_RESTARTS: u32 = 2;
/// Failures on a node before a group leaves it unless
/// `migration_threshold` says.
pub const DEFAULT_MIGRATION_THRESHOLD: u32 = 3;
/// How long a failure counts unless `failure_expiry_ms` says.
pub const DEFAULT_FAILURE_EXPIRY_MS: u64 = 600_000;
/// Device path used when `[watchdog] device` is not set.
pub const DEFAULT_WATCHDOG_DEVICE: &str = "/dev/watchdog";
/// Watchdog timeout unless `timeout_s` says.
pub const DEFAULT_WATCHDOG_TIMEOUT_S: u32 = 5;
/// Feeding past the lease unless `stop_grace_ms` says.
pub const DEFAULT_WATCHDOG_STOP_GRACE_MS: u64 = 10_000;
/// The link a volume replicates over unless `link` says.
pub const DEFAULT_VOLUME_LINK: &str = "sync";
/// Replication port when the configuration gives none.
pub const DEFAULT_VOLUME_PORT: u16 = 7789;
/// Congestion control of the replication connection when the
/// configuration gives none. The kernel's default may be `bbr` (it is on
/// the machines the benchmarks ran on): on a sub-millisecond link its
/// pacing held bulk writes to half the throughput at 1.6 times the CPU
/// per megabyte of `cubic`, with retransmissions (docs/BENCHMARKS.md).
pub const DEFAULT_CONGESTION_CONTROL: &str = "cubic";
/// The `congestion_control` word that keeps the kernel's default.
pub const SYSTEM_CONGESTION_CONTROL: &str = "system";
/// Resync rate when the configuration gives none, MiB/s.
pub const DEFAULT_RESYNC_RATE_MIB_S: u32 = 100;

/// A validated configuration: every section, defaults applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Config {
    /// The directory relative paths in the file are resolved against
    /// (the file's own). Not part of what the file says.
    #[serde(skip)]
    pub base_dir: PathBuf,
    /// `[cluster]`.
    pub cluster: ClusterSpec,
    /// `[timing]` after applying the profile and overrides.
    pub timing: Timing,
    /// `[quorum]`.
    pub quorum: QuorumSpec,
    /// `[[link]]`, in file order.
    #[serde(rename = "link")]
    pub links: Vec<LinkSpec>,
    /// `[[node]]`, in file order (the first seven vote).
    #[serde(rename = "node")]
    pub nodes: Vec<NodeSpec>,
    /// `[[fence_device]]`, in file order.
    #[serde(rename = "fence_device")]
    pub fence_devices: Vec<FenceDeviceSpec>,
    /// `[[group]]`, in file order, with their resources and monitors.
    #[serde(rename = "group")]
    pub groups: Vec<GroupSpec>,
    /// Top-level `[[monitor]]`s: the node monitors (ping).
    #[serde(rename = "monitor")]
    pub node_monitors: Vec<MonitorSpec>,
    /// `[[volume]]`, in file order.
    #[serde(rename = "volume")]
    pub volumes: Vec<VolumeSpec>,
    /// The watchdog to arm; None when `[watchdog] enabled = false`.
    #[serde(serialize_with = "watchdog_table")]
    pub watchdog: Option<WatchdogSpec>,
    /// `[http]`; None: no HTTP API.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub http: Option<HttpSpec>,
    /// `[[alert]]`, in file order.
    #[serde(rename = "alert", skip_serializing_if = "Vec::is_empty")]
    pub alerts: Vec<AlertSpec>,
}

impl Config {
    /// The cluster key's path, resolved against the file's directory.
    pub fn key_path(&self) -> PathBuf {
        super::resolve_path(&self.base_dir, &self.cluster.key_file)
    }

    /// The previous cluster key's path (accepted during a rotation).
    pub fn previous_key_path(&self) -> Option<PathBuf> {
        self.cluster
            .previous_key_file
            .as_deref()
            .map(|p| super::resolve_path(&self.base_dir, p))
    }

    /// The model as a TOML document in the file's own shape, every
    /// default filled in and secrets redacted (`config show --format
    /// toml`).
    pub fn to_toml(&self) -> Result<String, toml::ser::Error> {
        // Through a value: a table's plain keys must come before its
        // sub-tables, which the value's writer orders.
        toml::to_string(&toml::Value::try_from(self)?)
    }

    /// Node `name`.
    pub fn node(&self, name: &str) -> Option<&NodeSpec> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// Every secret the serialized model hides, by the section that holds
    /// it: the identity hashes them (a new password is a new
    /// configuration) without ever writing them.
    pub fn secrets(&self) -> Vec<(&'static str, &str)> {
        let mut out = Vec::new();
        for d in &self.fence_devices {
            for (k, v) in &d.options {
                if !crate::fence::is_shown(k) {
                    out.push(("fence_device", v.as_str()));
                }
            }
        }
        for g in &self.groups {
            for r in &g.resources {
                out.extend(r.params.spec().secrets().into_iter().map(|v| ("group", v)));
            }
            for m in &g.monitors {
                if let MonitorCheck::Http { url } = &m.check {
                    out.push(("group", url.as_str()));
                }
            }
        }
        out
    }

    /// Volume `name`.
    pub fn volume(&self, name: &str) -> Option<&VolumeSpec> {
        self.volumes.iter().find(|v| v.name == name)
    }

    /// Where group `index` (file order) can run at all: the nodes holding
    /// a copy of every volume it uses (None when it uses no volume).
    pub fn confinement(&self, index: usize) -> Option<Confinement> {
        Confinement::of(&self.groups.get(index)?.resources, |name| {
            self.volume(name).map(|v| v.nodes.clone())
        })
    }
}

/// A hard limit on where a group can run: the nodes holding a copy of
/// each of its volumes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Confinement {
    /// Each volume the group uses, with the nodes holding its copies.
    pub volumes: Vec<(String, Vec<String>)>,
}

impl Confinement {
    /// Where a group with these resources can run at all: the nodes
    /// holding a copy of every volume it uses (`copies` of a volume; one
    /// it does not know is left out: it is reported where it is named).
    /// None when the group uses no volume.
    pub fn of(
        resources: &[ResourceSpec],
        copies: impl Fn(&str) -> Option<Vec<String>>,
    ) -> Option<Confinement> {
        let volumes: Vec<(String, Vec<String>)> = resources
            .iter()
            .filter_map(|r| r.params.spec().volume())
            .filter_map(|name| Some((name.to_string(), copies(name)?)))
            .collect();
        (!volumes.is_empty()).then_some(Confinement { volumes })
    }

    /// Why the group cannot run on `node`; `None` when it can.
    pub fn why_not(&self, node: &str) -> Option<String> {
        self.volumes
            .iter()
            .find(|(_, copies)| !copies.iter().any(|c| c == node))
            .map(|(v, copies)| {
                format!(
                    "holds no copy of volume {v} (copies on {})",
                    copies.join(", ")
                )
            })
    }
}

/// `[cluster]`: the cluster's name, keys and where the agent keeps things.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ClusterSpec {
    /// Name (also separates clusters sharing a network).
    pub name: String,
    /// The cluster key's file as written (see [`Config::key_path`]).
    pub key_file: PathBuf,
    /// The previous key's file as written, during a key rotation.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub previous_key_file: Option<PathBuf>,
    /// The agent's state directory ([`DEFAULT_STATE_DIR`]).
    pub state_dir: PathBuf,
    /// The agent's control socket ([`DEFAULT_CONTROL_SOCKET`]).
    pub control_socket: PathBuf,
    /// The Unix group allowed to use the control socket besides root.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub control_group: Option<String>,
}

/// Resolved failure-detection timing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct Timing {
    /// Interval between heartbeats.
    pub heartbeat_ms: u64,
    /// Silence on all links after which a node is dead.
    pub deadtime_ms: u64,
    /// Silence after which a link is reported late.
    pub warntime_ms: u64,
    /// Wait for peers at start-up before acting alone.
    pub startup_wait_ms: u64,
}

impl Timing {
    /// The values of a named profile.
    pub fn of_profile(profile: Profile) -> Timing {
        match profile {
            Profile::Default => Timing {
                heartbeat_ms: 50,
                deadtime_ms: 200,
                warntime_ms: 150,
                startup_wait_ms: 5_000,
            },
            Profile::Relaxed => Timing {
                heartbeat_ms: 200,
                deadtime_ms: 1_000,
                warntime_ms: 600,
                startup_wait_ms: 10_000,
            },
            Profile::Wan => Timing {
                heartbeat_ms: 500,
                deadtime_ms: 5_000,
                warntime_ms: 2_500,
                startup_wait_ms: 30_000,
            },
        }
    }
}

/// `[quorum]`: how the cluster decides who may act.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct QuorumSpec {
    /// The witness's address, if there is one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub witness: Option<SocketAddr>,
    /// Two nodes deciding by fencing.
    pub two_node: bool,
    /// Wait at start until every node was seen (default: `two_node`).
    pub wait_for_all: bool,
}

/// A link after validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkSpec {
    /// Name.
    pub name: String,
    /// The subnet its addresses are in, when given.
    #[serde(
        skip_serializing_if = "Option::is_none",
        serialize_with = "display_opt"
    )]
    pub subnet: Option<Cidr>,
    /// Heartbeat UDP port ([`DEFAULT_HEARTBEAT_PORT`]).
    pub port: u16,
}

/// A node and its address on each link.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NodeSpec {
    /// Name.
    pub name: String,
    /// Link name -> this node's address on it.
    pub addresses: BTreeMap<String, IpAddr>,
}

/// A fence device after validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FenceDeviceSpec {
    /// Name.
    pub name: String,
    /// The fence agent program.
    pub agent: PathBuf,
    /// Level: devices of level 1 are tried first (default 1).
    pub level: u8,
    /// Limit on one call ([`DEFAULT_FENCE_TIMEOUT_MS`]).
    pub timeout_ms: u64,
    /// Extra attempts after a failure ([`DEFAULT_FENCE_RETRIES`]).
    pub retries: u32,
    /// Wait before the first attempt (default 0).
    pub delay_ms: u64,
    /// Node name -> plug on this device, sorted by node.
    #[serde(serialize_with = "pairs_as_table")]
    pub hosts: Vec<(String, String)>,
    /// The agent's other options, sorted by name. Secrets among them:
    /// serialized redacted, as everything shown is.
    #[serde(serialize_with = "redacted_options")]
    pub options: Vec<(String, String)>,
}

/// A group: resources started in order on one node at a time.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupSpec {
    /// Name.
    pub name: String,
    /// Nodes it prefers, most preferred first (empty: any).
    pub preferred: Vec<String>,
    /// Whether it returns to a preferred node (default manual).
    pub failback: Failback,
    /// Failures on a node before it leaves it, at least 1
    /// ([`DEFAULT_MIGRATION_THRESHOLD`]).
    pub migration_threshold: u32,
    /// How long a failure counts ([`DEFAULT_FAILURE_EXPIRY_MS`]).
    pub failure_expiry_ms: u64,
    /// Its resources, in start order.
    #[serde(rename = "resource")]
    pub resources: Vec<ResourceSpec>,
    /// Its monitors.
    #[serde(rename = "monitor")]
    pub monitors: Vec<MonitorSpec>,
}

/// A resource after validation: its name, limit and kind with the kind's
/// typed fields, every default applied.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ResourceSpec {
    /// Name, unique in its group.
    pub name: String,
    /// Limit on one start, stop or check.
    pub timeout_ms: u64,
    /// What a failed start or check leads to ([`crate::on_fail`]).
    pub on_fail: OnFail,
    /// The kind and its fields.
    #[serde(flatten)]
    pub params: Params,
}

/// A monitor after validation: its name, schedule and thresholds with
/// every default applied, and its check.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct MonitorSpec {
    /// Name, unique among its group's (or the node's) monitors.
    pub name: String,
    /// Time between the end of one check and the start of the next
    /// ([`DEFAULT_MONITOR_INTERVAL_MS`]; ping [`DEFAULT_PING_INTERVAL_MS`]).
    pub interval_ms: u64,
    /// Limit on one check ([`DEFAULT_MONITOR_TIMEOUT_MS`]).
    pub timeout_ms: u64,
    /// Failures in a row before acting, at least 1
    /// ([`DEFAULT_MONITOR_FAILURES`]).
    pub failures: u32,
    /// What the failures lead to (group monitors; default restart).
    pub on_fail: OnFail,
    /// Restarts in place before the group moves ([`DEFAULT_RESTARTS`]).
    pub restarts: u32,
    /// What is checked.
    #[serde(flatten)]
    pub check: MonitorCheck,
}

impl MonitorSpec {
    /// The kind's name (`ping`, `process`, `tcp`, `http`, `exec`).
    pub fn kind(&self) -> &'static str {
        match self.check {
            MonitorCheck::Ping { .. } => "ping",
            MonitorCheck::Process { .. } => "process",
            MonitorCheck::Tcp { .. } => "tcp",
            MonitorCheck::Http { .. } => "http",
            MonitorCheck::Exec { .. } => "exec",
        }
    }
}

/// What a monitor checks.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum MonitorCheck {
    /// Node monitor: fails when no target answers over `link`.
    Ping {
        /// Addresses pinged.
        targets: Vec<IpAddr>,
        /// The link they are reached over.
        link: String,
    },
    /// The watched `process` resource is alive.
    Process {
        /// Resource name.
        resource: String,
    },
    /// A TCP connect succeeds.
    Tcp {
        /// Where to connect.
        address: SocketAddr,
    },
    /// An HTTP GET answers 2xx or 3xx.
    Http {
        /// URL (a password in it is written redacted).
        #[serde(serialize_with = "redacted_url")]
        url: String,
    },
    /// A command exits 0.
    Exec {
        /// Program and arguments.
        command: Vec<String>,
    },
}

/// A replicated volume after validation.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct VolumeSpec {
    /// Name.
    pub name: String,
    /// The two nodes holding a copy; the first dials the second.
    pub nodes: Vec<String>,
    /// Size in bytes, a multiple of 4 KiB.
    #[serde(serialize_with = "size_bytes")]
    pub size: Size,
    /// Where each node keeps its copy.
    pub backing: Backing,
    /// Replication protocol (default C).
    pub protocol: Protocol,
    /// The link it replicates over ([`DEFAULT_VOLUME_LINK`]).
    pub link: String,
    /// Replication TCP port ([`DEFAULT_VOLUME_PORT`]).
    pub port: u16,
    /// The NBD export's Unix socket. None: `<name>.nbd` in the `run`
    /// directory of the agent's state directory, root only (the default
    /// follows the agent's `--state-dir`, so it is not filled in here).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbd_socket: Option<PathBuf>,
    /// The NBD export's TCP address, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbd_tcp: Option<SocketAddr>,
    /// Directory of the TCP export's TLS credentials, if any.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub nbd_tls: Option<PathBuf>,
    /// The operator accepted a TCP export without TLS.
    pub nbd_insecure: bool,
    /// Resync rate, MiB/s ([`DEFAULT_RESYNC_RATE_MIB_S`]).
    pub resync_rate_mib_s: u32,
    /// What happens after a split brain (default disconnect).
    pub split_brain: SplitBrainPolicy,
    /// TCP congestion control ([`DEFAULT_CONGESTION_CONTROL`];
    /// [`SYSTEM_CONGESTION_CONTROL`] keeps the kernel's).
    pub congestion_control: String,
}

impl VolumeSpec {
    /// Node `node`'s backing path, if it holds a copy.
    pub fn backing_of(&self, node: &str) -> Option<&Path> {
        match &self.backing {
            Backing::Same(p) => Some(p),
            Backing::PerNode(m) => m.get(node).map(PathBuf::as_path),
        }
    }
}

/// Limit on one run of an alert agent when `[[alert]]` gives none
/// (Pacemaker's default).
pub const DEFAULT_ALERT_TIMEOUT_MS: u64 = 30_000;
/// `CRM_alert_timestamp`'s format when `[[alert]]` gives none
/// (Pacemaker's default).
pub const DEFAULT_ALERT_TIMESTAMP_FORMAT: &str = "%H:%M:%S.%06N";
/// Most recipients of one alert (each has its own queue and runs).
pub const MAX_ALERT_RECIPIENTS: usize = 16;

/// What an alert is about (`CRM_alert_kind`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum AlertKind {
    /// A node joined or was lost.
    Node,
    /// A node was fenced (or powered on).
    Fencing,
    /// A resource was started or stopped, or an action on it failed.
    Resource,
}

impl AlertKind {
    /// Every kind.
    pub const ALL: [AlertKind; 3] = [AlertKind::Node, AlertKind::Fencing, AlertKind::Resource];

    /// As Pacemaker names it.
    pub fn word(self) -> &'static str {
        match self {
            AlertKind::Node => "node",
            AlertKind::Fencing => "fencing",
            AlertKind::Resource => "resource",
        }
    }
}

/// An `[[alert]]` after defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct AlertSpec {
    /// Name.
    pub name: String,
    /// The program.
    pub path: PathBuf,
    /// Recipients (empty: one run, no recipient).
    pub recipients: Vec<String>,
    /// The kinds it is sent.
    pub kinds: Vec<AlertKind>,
    /// Limit on one run.
    pub timeout_ms: u64,
    /// `CRM_alert_timestamp`'s format.
    pub timestamp_format: String,
}

/// TCP port of the HTTP API when `[http]` gives none.
pub const DEFAULT_HTTP_PORT: u16 = 9640;

/// `[http]` after defaults: where the API listens and who may use it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HttpSpec {
    /// An address, or a link (each node's own address on it).
    #[serde(serialize_with = "display")]
    pub listen: HttpListen,
    /// TCP port.
    pub port: u16,
    /// Certificate chain and key (PEM files, as written), for TLS.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_cert: Option<PathBuf>,
    /// The key of `tls_cert`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub tls_key: Option<PathBuf>,
    /// The read-only role's token file, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub read_token_file: Option<PathBuf>,
    /// The operator role's token file, as written.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub operator_token_file: Option<PathBuf>,
}

/// Where the HTTP API listens.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum HttpListen {
    /// This address on every node (loopback, or all addresses).
    Address(IpAddr),
    /// Each node's own address on this link.
    Link(String),
}

impl std::fmt::Display for HttpListen {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            HttpListen::Address(a) => write!(f, "{a}"),
            HttpListen::Link(l) => write!(f, "{l}"),
        }
    }
}

impl HttpSpec {
    /// Whether only this machine can reach it (a loopback address).
    pub fn is_loopback(&self) -> bool {
        matches!(self.listen, HttpListen::Address(a) if a.is_loopback())
    }

    /// The socket address node `node` listens on (None: the node has no
    /// address on the link named).
    pub fn address_of(&self, node: &NodeSpec) -> Option<SocketAddr> {
        let ip = match &self.listen {
            HttpListen::Address(a) => *a,
            HttpListen::Link(l) => *node.addresses.get(l)?,
        };
        Some(SocketAddr::new(ip, self.port))
    }
}

fn display<T: std::fmt::Display, S: Serializer>(v: &T, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(v)
}

/// The watchdog settings after defaults.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct WatchdogSpec {
    /// The device to open.
    pub device: PathBuf,
    /// Reset after this many seconds without a feed.
    pub timeout_s: u32,
    /// Feeding goes on this long after the lease ended with resources
    /// still active here, so that a slow stop is not a reset.
    pub stop_grace_ms: u64,
    /// The agent refuses to start without the device.
    pub required: bool,
}

impl WatchdogSpec {
    /// When the node is sure to arm the device (`required`: the agent
    /// refuses to start without it, or when the device does not take
    /// `timeout_s`), how long after its lease ended a silent node has been
    /// reset: the agent feeds for at most `stop_grace_ms` past its lease
    /// (across restarts too); then the device bites within `timeout_s`,
    /// plus one more `timeout_s` because Linux pings a device once when
    /// its holder dies without the magic close. The leader then counts
    /// the node as fenced.
    pub fn resets_within_ms(&self) -> Option<u64> {
        self.required
            .then(|| self.stop_grace_ms + 2 * u64::from(self.timeout_s) * 1_000)
    }
}

/// `[watchdog]` as the file writes it: `enabled` and, when enabled, its
/// settings (a disabled one must say so: the file's default is enabled).
fn watchdog_table<S: Serializer>(w: &Option<WatchdogSpec>, s: S) -> Result<S::Ok, S::Error> {
    #[derive(Serialize)]
    struct Table<'a> {
        enabled: bool,
        #[serde(flatten)]
        spec: Option<&'a WatchdogSpec>,
    }
    Table {
        enabled: w.is_some(),
        spec: w.as_ref(),
    }
    .serialize(s)
}

/// `url` with the password of its user information masked.
pub fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_string();
    };
    let authority_end = rest.find('/').unwrap_or(rest.len());
    let (authority, path) = rest.split_at(authority_end);
    match authority.rsplit_once('@') {
        Some((user, host)) => {
            let user = user.split_once(':').map_or(user, |(u, _)| u);
            format!("{scheme}://{user}:{REDACTED}@{host}{path}")
        }
        None => url.to_string(),
    }
}

fn redacted_url<S: Serializer>(url: &str, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_str(&redact_url(url))
}

fn display_opt<T: std::fmt::Display, S: Serializer>(
    v: &Option<T>,
    s: S,
) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => s.collect_str(v),
        None => s.serialize_none(),
    }
}

fn pairs_as_table<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(pairs.iter().map(|(k, v)| (k, v)))
}

fn redacted_options<S: Serializer>(pairs: &[(String, String)], s: S) -> Result<S::Ok, S::Error> {
    s.collect_map(crate::fence::shown_options(
        pairs.iter().map(|(k, v)| (k.as_str(), v.as_str())),
    ))
}

fn size_bytes<S: Serializer>(size: &Size, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&size.bytes)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, KeyFileFacts};

    const EXAMPLES: &[(&str, &str)] = &[
        (
            "appliance-pair",
            include_str!("../../../../examples/appliance-pair.toml"),
        ),
        (
            "hot-standby",
            include_str!("../../../../examples/hot-standby.toml"),
        ),
        (
            "interface-preference",
            include_str!("../../../../examples/interface-preference.toml"),
        ),
        (
            "mutual-takeover",
            include_str!("../../../../examples/mutual-takeover.toml"),
        ),
        (
            "ordered-takeover",
            include_str!("../../../../examples/ordered-takeover.toml"),
        ),
        (
            "web-two-node",
            include_str!("../../../../examples/web-two-node.toml"),
        ),
    ];

    fn model(name: &str, text: &str) -> Config {
        let facts = |_: &Path| KeyFileFacts::Present {
            len: 32,
            mode: 0o600,
        };
        let l = load(text, Path::new("/etc/tandem"), &facts);
        l.config
            .unwrap_or_else(|| panic!("{name}: {:?}", l.diagnostics))
    }

    /// Stands in for a secret when a test reads a shown model back.
    const PUT_BACK: &str = "put-back-by-hand";

    /// `cfg` with every secret as a file made from `config show` has it
    /// once the operator replaced each mark (here by [`PUT_BACK`]).
    fn with_secrets_put_back(cfg: &Config) -> Config {
        let mut c = cfg.clone();
        for d in &mut c.fence_devices {
            for (k, v) in &mut d.options {
                if !crate::fence::is_shown(k) {
                    *v = PUT_BACK.into();
                }
            }
        }
        for g in &mut c.groups {
            for r in &mut g.resources {
                if let Params::Process(p) = &mut r.params {
                    for (k, v) in &mut p.env {
                        if crate::fence::is_secret(k) {
                            *v = PUT_BACK.into();
                        }
                    }
                }
            }
            for m in &mut g.monitors {
                if let MonitorCheck::Http { url } = &mut m.check {
                    *url = redact_url(url).replace(REDACTED, PUT_BACK);
                }
            }
        }
        c
    }

    /// What `config show --format toml` prints is a configuration that
    /// says the same, once its masked secrets are written back; with the
    /// marks left in, validation refuses it rather than fence with `****`.
    #[test]
    fn the_model_written_as_toml_reads_back_as_the_same_model() {
        let disabled = EXAMPLES[5].1.to_string() + "\n[watchdog]\nenabled = false\n";
        let secrets = EXAMPLES[0].1.replace(
            "command = [",
            "env = { API_TOKEN = \"s3cr3t\", MODE = \"fast\" }\ncommand = [",
        );
        let extra = [
            ("watchdog disabled", disabled.as_str()),
            ("process env", secrets.as_str()),
        ];
        for (name, text) in EXAMPLES.iter().copied().chain(extra) {
            let cfg = model(name, text);
            let written = cfg.to_toml().unwrap_or_else(|e| panic!("{name}: {e}"));
            let mut again = model(name, &written.replace(REDACTED, PUT_BACK));
            again.base_dir.clone_from(&cfg.base_dir);
            assert_eq!(again, with_secrets_put_back(&cfg), "{name}:\n{written}");
            if written.contains(REDACTED) {
                let facts = |_: &Path| KeyFileFacts::Present {
                    len: 32,
                    mode: 0o600,
                };
                let l = load(&written, Path::new("/etc/tandem"), &facts);
                assert!(l.config.is_none(), "{name}: `{REDACTED}` accepted");
            }
        }
        let c = model("process env", &secrets);
        let written = c.to_toml().unwrap();
        assert!(
            written.contains("MODE = \"fast\"") && !written.contains("s3cr3t"),
            "{written}"
        );
        let d = model("watchdog disabled", &disabled);
        assert_eq!(d.watchdog, None);
        assert!(d.to_toml().unwrap().contains("[watchdog]\nenabled = false"));
    }

    #[test]
    fn a_password_in_a_url_is_masked() {
        assert_eq!(
            redact_url("http://admin:pw@10.0.0.1:8080/health"),
            "http://admin:****@10.0.0.1:8080/health"
        );
        assert_eq!(redact_url("http://10.0.0.1/a@b"), "http://10.0.0.1/a@b");
        assert_eq!(redact_url("not a url"), "not a url");
    }

    #[test]
    fn every_default_is_filled_in_and_no_secret_is_written() {
        let cfg = model("ordered-takeover", EXAMPLES[4].1);
        let written = cfg.to_toml().unwrap();
        for key in [
            "state_dir",
            "control_socket",
            "heartbeat_ms",
            "wait_for_all",
            "migration_threshold",
            "failure_expiry_ms",
            "timeout_ms",
            "resync_rate_mib_s",
            "split_brain",
            "congestion_control",
            "stop_grace_ms",
        ] {
            assert!(
                written.contains(&format!("{key} = ")),
                "no {key}:\n{written}"
            );
        }
        for d in &cfg.fence_devices {
            for (k, v) in &d.options {
                if !crate::fence::is_shown(k) {
                    assert!(!written.contains(v.as_str()), "{k} shown:\n{written}");
                }
            }
        }
    }
}
