//! The configuration file as written: serde types that keep the position of
//! every value an error may need to point at.
//!
//! Monitors are deliberately flat (every field of every kind is an
//! `Option`): serde's internally tagged enums lose positions, and a flat form
//! lets validation say "field `command` does not apply to kind `tcp`" at the
//! field itself. A resource keeps its kind's fields as a map of located
//! values, which the kind's own check reads ([`crate::kinds`]).

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;

use serde::Deserialize;
use serde_spanned::Spanned;

pub use super::values::{Backing, Failback, OnFail, Profile, Protocol, SplitBrainPolicy};
use super::values::{Cidr, Size};

/// A whole configuration file. Identical on every node of the cluster.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConfigFile {
    /// Cluster identity and secrets.
    pub cluster: Cluster,
    /// Heartbeat and failure-detection timing.
    #[serde(default)]
    pub timing: Timing,
    /// How the cluster decides it may act.
    #[serde(default)]
    pub quorum: Quorum,
    /// The networks nodes talk over (`[[link]]`).
    #[serde(default, rename = "link")]
    pub links: Vec<Link>,
    /// The cluster members (`[[node]]`).
    #[serde(default, rename = "node")]
    pub nodes: Vec<Node>,
    /// Fence devices (`[[fence_device]]`).
    #[serde(default, rename = "fence_device")]
    pub fence_devices: Vec<FenceDevice>,
    /// Resource groups (`[[group]]`).
    #[serde(default, rename = "group")]
    pub groups: Vec<Group>,
    /// Node-level monitors such as gateway pings (`[[monitor]]`).
    #[serde(default, rename = "monitor")]
    pub monitors: Vec<Monitor>,
    /// Replicated volumes (`[[volume]]`).
    #[serde(default, rename = "volume")]
    pub volumes: Vec<Volume>,
    /// The hardware or software watchdog the agent feeds.
    #[serde(default)]
    pub watchdog: Watchdog,
    /// The HTTP API; off unless the section is there.
    pub http: Option<Http>,
    /// Alert agents (`[[alert]]`), Pacemaker's alert agents among them.
    #[serde(default, rename = "alert")]
    pub alerts: Vec<Alert>,
}

/// `[[alert]]`: a program run for each event it selects, once per
/// recipient, with Pacemaker's `CRM_alert_*` variables.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Alert {
    /// Alert name.
    pub name: Spanned<String>,
    /// The program (absolute path).
    pub path: Spanned<PathBuf>,
    /// Recipients: one run per recipient, `CRM_alert_recipient` set to it
    /// (none: one run with it empty).
    pub recipients: Option<Spanned<Vec<Spanned<String>>>>,
    /// The kinds sent: `node`, `fencing`, `resource` (default all).
    pub kinds: Option<Spanned<Vec<Spanned<String>>>>,
    /// Limit on one run (default 30 000 ms).
    pub timeout_ms: Option<Spanned<u64>>,
    /// `CRM_alert_timestamp`'s format (strftime, with `%N`/`%06N` for the
    /// fraction of the second; default `%H:%M:%S.%06N`).
    pub timestamp_format: Option<Spanned<String>>,
}

/// `[http]`: the HTTP API (status, operator requests, Prometheus metrics).
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Http {
    /// Where it listens: an address (`127.0.0.1`, the default, or `::1`)
    /// or a link's name (each node's own address on that link).
    pub listen: Option<Spanned<String>>,
    /// TCP port (default 9640).
    pub port: Option<Spanned<u16>>,
    /// PEM certificate chain served over TLS (required off loopback).
    pub tls_cert: Option<Spanned<PathBuf>>,
    /// PEM private key of `tls_cert`.
    pub tls_key: Option<Spanned<PathBuf>>,
    /// File holding the token that may read (status, metrics).
    pub read_token_file: Option<Spanned<PathBuf>>,
    /// File holding the token that may also act (move, failover, ...).
    pub operator_token_file: Option<Spanned<PathBuf>>,
}

/// `[watchdog]`: a device that resets the node unless the agent keeps
/// writing to it.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Watchdog {
    /// Arm the device when it exists (default true).
    pub enabled: Option<Spanned<bool>>,
    /// Refuse to start when the device is missing or cannot be armed
    /// (default false).
    pub required: Option<Spanned<bool>>,
    /// The device (default `/dev/watchdog`).
    pub device: Option<Spanned<PathBuf>>,
    /// Seconds without a feed before the device resets the node (default 5).
    pub timeout_s: Option<Spanned<u32>>,
    /// After the lease ended with resources still active here, how long the
    /// agent keeps feeding while it stops them (default 10 000 ms).
    pub stop_grace_ms: Option<Spanned<u64>>,
}

/// `[cluster]`: identity, key, and where the agent keeps its state.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Cluster {
    /// Cluster name; packets from another cluster are dropped.
    pub name: Spanned<String>,
    /// File holding the 32-byte cluster key (relative paths are relative to the
    /// configuration file).
    pub key_file: Spanned<PathBuf>,
    /// The key being rotated out; accepted but never used to send.
    pub previous_key_file: Option<Spanned<PathBuf>>,
    /// Directory for the agent's persistent state.
    pub state_dir: Option<Spanned<PathBuf>>,
    /// Unix socket for `tandem` commands.
    pub control_socket: Option<Spanned<PathBuf>>,
    /// Group allowed to use the control socket besides root.
    pub control_group: Option<Spanned<String>>,
}

/// `[timing]`: a named profile, with optional overrides of each value.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Timing {
    /// Named profile; `default` when absent.
    pub profile: Option<Spanned<Profile>>,
    /// Interval between heartbeats to every peer on every link.
    pub heartbeat_ms: Option<Spanned<u64>>,
    /// A node is declared dead when all its links were silent this long.
    pub deadtime_ms: Option<Spanned<u64>>,
    /// A link silent this long is reported late (a warning, no action).
    pub warntime_ms: Option<Spanned<u64>>,
    /// At start-up, how long to wait for peers before acting alone.
    pub startup_wait_ms: Option<Spanned<u64>>,
}

/// `[quorum]`: majority of voters (the default), a witness, or two-node mode.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Quorum {
    /// Address of a `tandem witness` that votes but hosts nothing.
    pub witness: Option<Spanned<SocketAddr>>,
    /// Two nodes, no witness: decide by fencing.
    pub two_node: Option<Spanned<bool>>,
    /// At first start, wait until every node was seen once (default true).
    pub wait_for_all: Option<Spanned<bool>>,
}

/// `[[link]]`: one network the nodes heartbeat over.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Link name, e.g. `lan` or `sync`.
    pub name: Spanned<String>,
    /// The subnet node addresses on this link must be in.
    pub subnet: Option<Spanned<Cidr>>,
    /// UDP port for heartbeats on this link (default 5405).
    pub port: Option<Spanned<u16>>,
}

/// `[[node]]`: a cluster member.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Node {
    /// Node name, unique in the cluster.
    pub name: Spanned<String>,
    /// One address per link: `addresses = { lan = "10.0.0.1", sync = "10.0.1.1" }`.
    pub addresses: Spanned<BTreeMap<Spanned<String>, Spanned<IpAddr>>>,
}

/// `[[fence_device]]`: a fence-agents compatible program.
#[derive(Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FenceDevice {
    /// Device name.
    pub name: Spanned<String>,
    /// Path of the fence agent, e.g. `/usr/sbin/fence_ipmilan`.
    pub agent: Spanned<PathBuf>,
    /// Level: every device of level 1 is tried before level 2 (default 1).
    pub level: Option<Spanned<u8>>,
    /// Limit on one run of the agent (default 30 000 ms).
    pub timeout_ms: Option<Spanned<u64>>,
    /// Extra attempts after a failure (default 2).
    pub retries: Option<Spanned<u32>>,
    /// Wait before fencing (default 0).
    pub delay_ms: Option<Spanned<u64>>,
    /// Node name to plug/port on this device.
    pub hosts: Spanned<BTreeMap<Spanned<String>, Spanned<String>>>,
    /// Further `key=value` lines for the agent (`ip`, `username`,
    /// `password_script`, ...).
    #[serde(default)]
    pub options: BTreeMap<Spanned<String>, Spanned<String>>,
}

/// Written by hand: option values are redacted unless safe to show.
impl std::fmt::Debug for FenceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options = crate::fence::shown_options(
            self.options
                .iter()
                .map(|(k, v)| (k.get_ref().as_str(), v.get_ref().as_str())),
        );
        f.debug_struct("FenceDevice")
            .field("name", &self.name)
            .field("agent", &self.agent)
            .field("level", &self.level)
            .field("timeout_ms", &self.timeout_ms)
            .field("retries", &self.retries)
            .field("delay_ms", &self.delay_ms)
            .field("hosts", &self.hosts)
            .field("options", &options)
            .finish()
    }
}

/// `[[group]]`: resources started in order and stopped in reverse.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Group {
    /// Group name.
    pub name: Spanned<String>,
    /// Nodes in order of preference; empty means any node.
    #[serde(default)]
    pub preferred: Vec<Spanned<String>>,
    /// `auto` or `manual` (default `manual`).
    pub failback: Option<Spanned<Failback>>,
    /// Run on every eligible node instead of exactly one (hot standby /
    /// load-balanced services).
    pub clone: Option<Spanned<bool>>,
    /// Run only on a node where this other group runs healthy.
    pub colocate_with: Option<Spanned<String>>,
    /// Failures on one node before the group leaves it (default 3).
    pub migration_threshold: Option<Spanned<u32>>,
    /// Failures older than this are forgotten (default 600 000 ms).
    pub failure_expiry_ms: Option<Spanned<u64>>,
    /// The resources, in start order (`[[group.resource]]`).
    #[serde(default, rename = "resource")]
    pub resources: Vec<Resource>,
    /// Health checks of the group's resources (`[[group.monitor]]`).
    #[serde(default, rename = "monitor")]
    pub monitors: Vec<Monitor>,
}

/// `[[group.resource]]`: the fields every kind has, and the others as
/// written, each with its position, for the kind named by `kind` to take
/// ([`crate::kinds`]): no list of every kind's fields lives here.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Resource name, unique in its group.
    pub name: Spanned<String>,
    /// The kind, one of [`crate::kinds::KINDS`].
    pub kind: Spanned<String>,
    /// Limit on start and stop (default 20 000 ms).
    pub timeout_ms: Option<Spanned<u64>>,
    /// What a failed start or check leads to (default `restart`).
    pub on_fail: Option<Spanned<OnFail>>,
    /// The kind's own fields, by key.
    pub fields: BTreeMap<String, Spanned<toml::Value>>,
}

impl<'de> Deserialize<'de> for Resource {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Resource, D::Error> {
        use serde::de::Error;
        let mut fields = BTreeMap::<String, Spanned<toml::Value>>::deserialize(d)?;
        fn take<T: serde::de::DeserializeOwned, E: Error>(
            fields: &mut BTreeMap<String, Spanned<toml::Value>>,
            key: &str,
        ) -> Result<Option<Spanned<T>>, E> {
            let Some(v) = fields.remove(key) else {
                return Ok(None);
            };
            let at = v.span();
            T::deserialize(v.into_inner())
                .map(|t| Some(Spanned::new(at, t)))
                .map_err(E::custom)
        }
        let name = take(&mut fields, "name")?.ok_or_else(|| D::Error::missing_field("name"))?;
        let kind = take(&mut fields, "kind")?.ok_or_else(|| D::Error::missing_field("kind"))?;
        // A `timeout_ms` of the wrong type stays among the fields, where
        // validation reports it at its place with the others.
        let timeout_ms = match fields.get("timeout_ms").map(|v| v.get_ref().as_integer()) {
            Some(Some(n)) if n >= 0 => take::<u64, D::Error>(&mut fields, "timeout_ms")?,
            _ => None,
        };
        // Likewise an `on_fail` that is not one of the words.
        let on_fail = match fields
            .get("on_fail")
            .map(|v| OnFail::deserialize(v.get_ref().clone()))
        {
            Some(Ok(_)) => take::<OnFail, D::Error>(&mut fields, "on_fail")?,
            _ => None,
        };
        Ok(Resource {
            name,
            kind,
            timeout_ms,
            on_fail,
            fields,
        })
    }
}

/// `[[monitor]]` (node level) or `[[group.monitor]]`, all kinds flat.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Monitor {
    /// Monitor name.
    pub name: Spanned<String>,
    /// `ping` (node level), or `process`, `tcp`, `http`, `exec` (group level).
    pub kind: Spanned<String>,
    /// Time between checks (default 2 000 ms; ping 1 000 ms).
    pub interval_ms: Option<Spanned<u64>>,
    /// Limit on one check (default 1 000 ms).
    pub timeout_ms: Option<Spanned<u64>>,
    /// Consecutive failures before acting (default 3).
    pub failures: Option<Spanned<u32>>,
    /// `restart`, `move`, `fence` or `ignore` (default `restart`).
    pub on_fail: Option<Spanned<OnFail>>,
    /// Restarts on the same node before moving (default 2).
    pub restarts: Option<Spanned<u32>>,
    /// `process`/`exec`: the resource watched.
    pub resource: Option<Spanned<String>>,
    /// `tcp`: address to connect to.
    pub address: Option<Spanned<SocketAddr>>,
    /// `http`: URL to GET; 2xx and 3xx are healthy.
    pub url: Option<Spanned<String>>,
    /// `exec`: program and arguments; exit 0 is healthy.
    pub command: Option<Spanned<Vec<String>>>,
    /// `ping`: addresses; the check fails when none answers.
    pub targets: Option<Spanned<Vec<Spanned<IpAddr>>>>,
    /// `ping`: the link the targets are reached over.
    pub link: Option<Spanned<String>>,
}

/// `[[volume]]`: a block volume mirrored between two nodes.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Volume {
    /// Volume name.
    pub name: Spanned<String>,
    /// The two nodes holding a copy.
    pub nodes: Spanned<Vec<Spanned<String>>>,
    /// Size, e.g. `"4GiB"`.
    pub size: Spanned<Size>,
    /// Backing file or block device.
    pub backing: Spanned<Backing>,
    /// `C` (default) or `A`.
    pub protocol: Option<Spanned<Protocol>>,
    /// Link replication runs over (default `sync`).
    pub link: Option<Spanned<String>>,
    /// TCP port for replication (default 7789).
    pub port: Option<Spanned<u16>>,
    /// NBD export on a Unix socket, on the primary (default
    /// `<state_dir>/run/NAME.nbd`, mode 0600: root only).
    pub nbd_socket: Option<Spanned<PathBuf>>,
    /// NBD export on TCP, on the primary: a loopback address, or any
    /// other with `nbd_tls` (or `nbd_insecure = true`).
    pub nbd_tcp: Option<Spanned<SocketAddr>>,
    /// Serve the `nbd_tcp` export only over TLS, with the x509
    /// credentials in this directory (`ca-cert.pem`, `server-cert.pem`,
    /// `server-key.pem`); clients must present a certificate the CA
    /// signed.
    pub nbd_tls: Option<Spanned<PathBuf>>,
    /// Accept exporting on a non-loopback `nbd_tcp` address without TLS:
    /// anyone who can reach the address can read and write the volume.
    pub nbd_insecure: Option<Spanned<bool>>,
    /// Resync rate limit in MiB/s (default 100).
    pub resync_rate_mib_s: Option<Spanned<u32>>,
    /// Split-brain recovery policy (default `disconnect`).
    pub split_brain: Option<Spanned<SplitBrainPolicy>>,
    /// TCP congestion control of the replication connection (default
    /// `cubic`; `system` keeps the kernel's default).
    pub congestion_control: Option<Spanned<String>>,
}
