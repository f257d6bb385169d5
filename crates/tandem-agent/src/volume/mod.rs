//! Replicated volumes in the shell: this node's copies, the runtime they
//! run on, and the agent's handle to them.
//!
//! - [`store`]: the backing store, metadata, bitmap and activity log on disk.
//! - [`engine`]: one copy's role, write path and cluster-record keeping.
//! - [`peer`]: the replication link (connect, authenticate, sync, verify).
//! - [`nbd_server`]: the NBD export.
//! - [`stream`], [`splice`], [`buffers`]: the data path's socket I/O, its
//!   zero-copy moves through kernel pipes, and its reusable buffers.
//!
//! Volumes run on a runtime of their own (two worker threads): disk
//! flushes and bulk copies there never delay the agent's heartbeats.

pub mod buffers;
pub mod engine;
pub mod nbd_server;
pub mod nbd_tls;
pub mod peer;
pub mod splice;
pub mod store;
pub mod stream;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tandem_core::agreement::record::Record;
use tandem_core::config::{Config, Protocol, SplitBrainPolicy, SYSTEM_CONGESTION_CONTROL};
use tandem_core::member::Request;
use tokio::sync::mpsc;

use engine::{Volume, VolumeStatus};
use store::MetaPaths;

/// Requests from volumes to the cluster queued before they are dropped
/// (each is retried while still needed).
pub const REQUEST_QUEUE: usize = 64;

/// One volume as this node runs it.
#[derive(Clone)]
pub struct VolumeConfig {
    /// Volume name.
    pub name: String,
    /// This node.
    pub me: String,
    /// The other copy (None: the volume has one copy until `tandem node
    /// add NAME --volume` gives it a second, see [`Hub::add_peer`]).
    pub peer: Option<PeerCopy>,
    /// Size in bytes.
    pub size: u64,
    /// Backing file or device on this node.
    pub backing: PathBuf,
    /// `C` or `A`.
    pub protocol: Protocol,
    /// This node's replication address.
    pub my_addr: SocketAddr,
    /// NBD on a Unix socket.
    pub nbd_socket: Option<PathBuf>,
    /// NBD on TCP.
    pub nbd_tcp: Option<SocketAddr>,
    /// Serve the TCP export only over TLS, with these credentials.
    pub nbd_tls: Option<nbd_tls::NbdTls>,
    /// Resync rate limit, bytes per second.
    pub rate_bytes_s: u64,
    /// Split-brain recovery.
    pub split_brain: SplitBrainPolicy,
    /// TCP congestion control of the replication connection; `None`
    /// keeps the kernel's default.
    pub congestion_control: Option<String>,
    /// The cluster key (authenticates the peer).
    pub key: [u8; 32],
    /// Keepalive interval on the link.
    pub ping_interval_ms: u64,
    /// Silence after which the link is dropped.
    pub peer_timeout_ms: u64,
    /// Metadata and bitmap paths.
    pub paths: MetaPaths,
}

/// Written by hand: the key must never reach a log through `{:?}`.
impl std::fmt::Debug for VolumeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VolumeConfig")
            .field("name", &self.name)
            .field("me", &self.me)
            .field("peer", &self.peer)
            .field("size", &self.size)
            .field("backing", &self.backing)
            .field("protocol", &self.protocol)
            .field("my_addr", &self.my_addr)
            .field("nbd_socket", &self.nbd_socket)
            .field("nbd_tcp", &self.nbd_tcp)
            .field("nbd_tls", &self.nbd_tls)
            .field("key", &"<redacted>")
            .finish_non_exhaustive()
    }
}

/// A volume's other copy, as this node reaches it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCopy {
    /// The node holding it.
    pub node: String,
    /// Its replication address.
    pub addr: SocketAddr,
    /// This node dials it (this node is listed first); else it dials.
    pub dialer: bool,
}

/// The volumes of `cfg` that have a copy on node `me`.
pub fn configs(
    cfg: &Config,
    me: &str,
    key: [u8; 32],
    state_dir: &Path,
) -> Result<Vec<VolumeConfig>> {
    let mut out = Vec::new();
    for v in &cfg.volumes {
        if !v.nodes.iter().any(|n| n == me) {
            continue;
        }
        let name = v.name.clone();
        let backing = v
            .backing_of(me)
            .map(Path::to_path_buf)
            .with_context(|| format!("volume `{name}` has no backing path for node `{me}`"))?;
        let peer = peer_copy(cfg, &name, me)?;
        let my_addr = replication_addr(cfg, v, me)?;
        out.push(VolumeConfig {
            me: me.to_string(),
            size: v.size.bytes,
            backing,
            protocol: v.protocol,
            my_addr,
            peer,
            // Private by default: a root-only socket in the state
            // directory.
            nbd_socket: Some(
                v.nbd_socket
                    .clone()
                    .unwrap_or_else(|| state_dir.join("run").join(format!("{name}.nbd"))),
            ),
            nbd_tcp: v.nbd_tcp,
            nbd_tls: match (&v.nbd_tcp, &v.nbd_tls) {
                (Some(_), Some(dir)) => Some(nbd_tls::NbdTls::load(dir).with_context(|| {
                    format!("volume `{name}`: the NBD export's TLS credentials")
                })?),
                _ => None,
            },
            rate_bytes_s: u64::from(v.resync_rate_mib_s) << 20,
            split_brain: v.split_brain,
            congestion_control: (v.congestion_control != SYSTEM_CONGESTION_CONTROL)
                .then(|| v.congestion_control.clone()),
            key,
            ping_interval_ms: cfg.timing.heartbeat_ms.max(100),
            peer_timeout_ms: cfg.timing.deadtime_ms.max(500),
            paths: MetaPaths::new(state_dir, &name),
            name,
        });
    }
    Ok(out)
}

/// Volume `volume`'s other copy as node `me` reaches it in `cfg` (None:
/// the volume has one copy, or none on `me`).
pub fn peer_copy(cfg: &Config, volume: &str, me: &str) -> Result<Option<PeerCopy>> {
    let v = cfg
        .volume(volume)
        .with_context(|| format!("no volume `{volume}` in the configuration"))?;
    let Some(pos) = v.nodes.iter().position(|n| n == me) else {
        return Ok(None);
    };
    let Some(node) = v.nodes.iter().find(|n| *n != me) else {
        return Ok(None);
    };
    Ok(Some(PeerCopy {
        addr: replication_addr(cfg, v, node)?,
        node: node.clone(),
        dialer: pos == 0,
    }))
}

/// Where node `node`'s copy of volume `v` replicates: its address on the
/// volume's link, the volume's port.
fn replication_addr(
    cfg: &Config,
    v: &tandem_core::config::VolumeSpec,
    node: &str,
) -> Result<SocketAddr> {
    let (name, link) = (&v.name, &v.link);
    let n = cfg
        .node(node)
        .with_context(|| format!("volume `{name}`: node `{node}` is not in the configuration"))?;
    let ip = n.addresses.get(link).copied().with_context(|| {
        format!("volume `{name}`: node `{node}` has no address on link `{link}`; add it to the node's `addresses`")
    })?;
    Ok(SocketAddr::new(ip, v.port))
}

/// A `tandem volume` command sent to the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "command", rename_all = "snake_case", deny_unknown_fields)]
pub enum VolumeCommand {
    /// Status of one volume or all.
    Status {
        /// Volume (None: all).
        name: Option<String>,
    },
    /// Promote this node's copy.
    Promote {
        /// Volume.
        name: String,
        /// Override the disk-state rule.
        force: bool,
    },
    /// Demote this node's copy.
    Demote {
        /// Volume.
        name: String,
    },
    /// Start an online verify (status shows its progress).
    Verify {
        /// Volume.
        name: String,
    },
    /// Drop the link and stay disconnected.
    Disconnect {
        /// Volume.
        name: String,
    },
    /// Connect again (after `disconnect` or split brain).
    Connect {
        /// Volume.
        name: String,
        /// This copy gives up its changes at the next sync.
        discard_my_data: bool,
    },
}

/// Where the volumes' requests and events go: the agent's loop. Two
/// queues, so that a burst of events never crowds out a request for the
/// record.
#[derive(Debug, Clone)]
pub struct ToAgent {
    /// Requests for the cluster: the record's word on a volume.
    pub requests: mpsc::Sender<Request>,
    /// What happened to a copy, for the agent's log and event history
    /// (the copy keeps its own for `tandem volume status`).
    pub events: mpsc::Sender<crate::event::AgentEvent>,
}

/// Events from the volumes waiting for the agent's loop; beyond, they go
/// to stderr directly.
pub const EVENT_QUEUE: usize = 256;

/// Why a volume command failed.
#[derive(Debug, thiserror::Error)]
pub enum CommandError {
    /// No copy of that name on this node.
    #[error("no volume named `{name}` on this node (volumes here: {})", here.join(", "))]
    NoSuchVolume {
        /// The name asked for.
        name: String,
        /// The copies this node holds.
        here: Vec<String>,
    },
    /// The peer is primary and the cluster did not move the volume here.
    #[error("volume `{volume}`: the peer {peer} is primary; demote it first (`tandem volume demote {volume}` there) — two primaries would split the data")]
    PeerIsPrimary {
        /// Volume.
        volume: String,
        /// The peer's node.
        peer: String,
    },
    /// The copy may not become primary ([`tandem_core::volume::may_promote`]).
    #[error(transparent)]
    Refused(#[from] tandem_core::volume::PromoteRefused),
    /// The copy's metadata could not be saved.
    #[error("volume `{volume}`: saving its metadata: {why}")]
    Metadata {
        /// Volume.
        volume: String,
        /// The error.
        why: String,
    },
    /// The volume runtime's task for the command died.
    #[error("the {what} task failed: {why}")]
    Task {
        /// The command.
        what: &'static str,
        /// The error.
        why: String,
    },
    /// A verify is already running.
    #[error("a verify of volume `{volume}` is already running")]
    Verifying {
        /// Volume.
        volume: String,
    },
    /// A verify needs the peer connected and in sync.
    #[error("volume `{volume}`: verify needs the peer connected and in sync (see `tandem volume status {volume}`)")]
    NotInSync {
        /// Volume.
        volume: String,
    },
}

/// The answer to a volume command.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct VolumeAnswer {
    /// Statuses (for `status`, and after every other command).
    pub volumes: Vec<VolumeStatus>,
    /// Something to tell the operator (warnings).
    pub message: Option<String>,
    /// Why the command failed.
    pub error: Option<String>,
}

/// This node's volumes and the runtime they run on.
pub struct Hub {
    handle: tokio::runtime::Handle,
    volumes: BTreeMap<String, Arc<Volume>>,
    may_run: Arc<AtomicBool>,
}

impl Hub {
    /// Opens every copy on this node and starts their links, exports and
    /// record keeping; None when this node holds no volume.
    pub fn start(configs: Vec<VolumeConfig>, to_agent: ToAgent) -> Result<Option<Arc<Hub>>> {
        if configs.is_empty() {
            return Ok(None);
        }
        let may_run = Arc::new(AtomicBool::new(false));
        let mut volumes = BTreeMap::new();
        for c in configs {
            let name = c.name.clone();
            let v = Volume::open(c, to_agent.clone(), may_run.clone())
                .with_context(|| format!("opening volume `{name}`"))?;
            volumes.insert(name, Arc::new(v));
        }
        let (htx, hrx) = std::sync::mpsc::channel();
        std::thread::Builder::new()
            .name("tandem-volumes".into())
            .spawn(move || {
                let rt = match tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(2)
                    .thread_name("tandem-volume")
                    .enable_all()
                    .build()
                {
                    Ok(rt) => rt,
                    Err(e) => {
                        let _ = htx.send(Err(e));
                        return;
                    }
                };
                let _ = htx.send(Ok(rt.handle().clone()));
                // Runs until the process exits.
                rt.block_on(std::future::pending::<()>());
            })
            .context("starting the volume thread")?;
        let handle = hrx
            .recv()
            .context("the volume thread did not start")?
            .context("starting the volume runtime")?;
        let hub = Arc::new(Hub {
            handle,
            volumes,
            may_run,
        });
        for v in hub.volumes.values() {
            if v.peer().is_some() {
                hub.handle.spawn(peer::run(v.clone()));
            }
            if let Some(p) = v.cfg.nbd_socket.clone() {
                let v = v.clone();
                hub.handle.spawn(async move {
                    if let Err(e) = nbd_server::serve_unix(v.clone(), &p).await {
                        v.event(format!("{e:#}"));
                    }
                });
            }
            if let Some(a) = v.cfg.nbd_tcp {
                let v = v.clone();
                let tls = v.cfg.nbd_tls.as_ref().map(|t| t.acceptor.clone());
                hub.handle.spawn(async move {
                    if let Err(e) = nbd_server::serve_tcp(v.clone(), a, tls).await {
                        v.event(format!("{e:#}"));
                    }
                });
            }
            // A first snapshot for readers that never wait (the agent).
            v.status_now();
            hub.handle.spawn(keeper(v.clone()));
        }
        Ok(Some(hub))
    }

    /// Whether this node holds a copy of volume `name`.
    pub fn holds(&self, name: &str) -> bool {
        self.volumes.contains_key(name)
    }

    /// Volume `name`'s copy here takes `peer` as its other copy (a
    /// configuration change gave the volume its second copy): the link
    /// starts, and the sync decides who copies what (a new copy holds no
    /// data: a full sync from this one). Nothing else changes: the export
    /// and its clients run on.
    pub fn add_peer(&self, name: &str, peer: PeerCopy) -> Result<(), CommandError> {
        let v = self.get(name)?;
        if v.set_peer(Some(peer)) {
            self.handle.spawn(peer::run(v));
        }
        Ok(())
    }

    /// Volume `name`'s other copy is gone from the configuration (its node
    /// was forgotten): the link ends, and this copy runs alone.
    pub fn drop_peer(&self, name: &str) -> Result<(), CommandError> {
        self.get(name)?.set_peer(None);
        Ok(())
    }

    /// Whether this node holds its lease (may run groups), from the agent.
    pub fn set_may_run(&self, ok: bool) {
        if self.may_run.swap(ok, Ordering::SeqCst) != ok {
            for v in self.volumes.values() {
                v.changed.notify_waiters();
            }
        }
    }

    /// The cluster record changed.
    pub fn set_record(&self, record: &Record) {
        for (name, v) in &self.volumes {
            v.set_record(record.volumes.get(name).cloned());
        }
    }

    /// Every copy's status, without waiting for any copy's state (the
    /// agent's thread calls this; see [`Volume::status_now`]).
    pub fn status(&self) -> Vec<VolumeStatus> {
        self.volumes.values().map(|v| v.status_now()).collect()
    }

    fn get(&self, name: &str) -> Result<Arc<Volume>, CommandError> {
        self.volumes
            .get(name)
            .cloned()
            .ok_or_else(|| CommandError::NoSuchVolume {
                name: name.to_string(),
                here: self.volumes.keys().cloned().collect(),
            })
    }

    /// Promotes a copy (on the volume runtime); Ok carries a warning.
    pub async fn promote(
        &self,
        name: &str,
        force: bool,
        cluster: bool,
    ) -> Result<Option<String>, CommandError> {
        let v = self.get(name)?;
        self.handle
            .spawn(async move { v.promote(force, cluster).await })
            .await
            .map_err(|e| CommandError::Task {
                what: "promote",
                why: e.to_string(),
            })?
    }

    /// Demotes a copy.
    pub async fn demote(&self, name: &str) -> Result<(), CommandError> {
        let v = self.get(name)?;
        self.handle
            .spawn(async move { v.demote().await })
            .await
            .map_err(|e| CommandError::Task {
                what: "demote",
                why: e.to_string(),
            })
    }

    /// The Unix socket of volume `name`'s NBD export on this node.
    pub fn nbd_socket(&self, name: &str) -> Option<PathBuf> {
        self.volumes.get(name)?.cfg.nbd_socket.clone()
    }

    /// Whether this node holds a copy of `name`.
    pub fn has(&self, name: &str) -> bool {
        self.volumes.contains_key(name)
    }

    /// Whether a copy is primary here.
    pub fn is_primary(&self, name: &str) -> bool {
        self.volumes.get(name).is_some_and(|v| v.is_primary())
    }

    /// Why a primary copy cannot serve writes, if it cannot (for the
    /// resource monitor).
    pub fn trouble(&self, name: &str) -> Option<String> {
        let v = self.volumes.get(name)?;
        if !v.is_primary() {
            return Some(format!("volume `{name}` is not primary here"));
        }
        v.outdated_primary().then(|| format!(
            "volume `{name}`: the cluster records another copy as the only one up to date; this copy is outdated and cannot acknowledge writes"
        ))
    }

    /// Runs one `tandem volume` command, on the volumes' runtime: it may
    /// wait for a copy's state, which may wait for the disk.
    pub async fn command(self: &Arc<Self>, cmd: VolumeCommand) -> VolumeAnswer {
        let hub = self.clone();
        self.handle
            .spawn(async move { hub.run_command(cmd).await })
            .await
            .unwrap_or_else(|e| VolumeAnswer {
                error: Some(format!("volume command task failed: {e}")),
                ..Default::default()
            })
    }

    async fn run_command(&self, cmd: VolumeCommand) -> VolumeAnswer {
        let mut answer = VolumeAnswer::default();
        let result: Result<Option<String>, CommandError> = match &cmd {
            VolumeCommand::Status { name } => match name {
                Some(n) => self.get(n).map(|_| None),
                None => Ok(None),
            },
            VolumeCommand::Promote { name, force } => self.promote(name, *force, false).await,
            VolumeCommand::Demote { name } => self.demote(name).await.map(|()| None),
            VolumeCommand::Verify { name } => self.get(name).map(|v| {
                let vv = v.clone();
                self.handle.spawn(async move {
                    let _ = peer::verify(vv).await;
                });
                None
            }),
            VolumeCommand::Disconnect { name } => self.get(name).map(|v| {
                v.disconnect_by_operator();
                None
            }),
            VolumeCommand::Connect {
                name,
                discard_my_data,
            } => self.get(name).map(|v| {
                v.connect_by_operator(*discard_my_data);
                None
            }),
        };
        match result {
            Ok(m) => answer.message = m,
            Err(e) => answer.error = Some(e.to_string()),
        }
        let only = match &cmd {
            VolumeCommand::Status { name } => name.clone(),
            VolumeCommand::Promote { name, .. }
            | VolumeCommand::Demote { name }
            | VolumeCommand::Verify { name }
            | VolumeCommand::Disconnect { name }
            | VolumeCommand::Connect { name, .. } => Some(name.clone()),
        };
        answer.volumes = self
            .volumes
            .values()
            .filter(|v| only.as_ref().map_or(true, |n| *n == v.cfg.name))
            .map(|v| v.status())
            .collect();
        answer
    }

    /// Saves every copy's bitmap and metadata (clean stop).
    pub fn close(&self) {
        for v in self.volumes.values() {
            v.close();
        }
    }
}

/// Periodic upkeep of one copy: the cluster record, the bitmap on disk,
/// retiring the activity log.
async fn keeper(v: Arc<Volume>) {
    let mut tick: u64 = 0;
    loop {
        let n = v.changed.notified();
        v.keep_record();
        if tick % 5 == 0 {
            v.persist_bitmap();
        }
        if tick % 25 == 0 {
            v.retire_activity_log();
        }
        tick += 1;
        let _ = tokio::time::timeout(Duration::from_millis(200), n).await;
    }
}

/// `tandem volume create`: the backing file (if missing) and this node's
/// metadata for one configured volume.
pub fn create(
    cfg: &Config,
    node: &str,
    state_dir: &Path,
    name: &str,
    source: bool,
    force: bool,
) -> Result<String> {
    let vc = configs(cfg, node, [0; 32], state_dir)?
        .into_iter()
        .find(|v| v.name == name)
        .with_context(|| {
            format!("no volume `{name}` with a copy on node `{node}` in the configuration")
        })?;
    if vc.paths.meta.exists() && !force {
        bail!(
            "volume `{name}` already has metadata at {} on this node; `--force` recreates it (this copy then takes a full sync from the peer, or becomes the data with `--source`)",
            vc.paths.meta.display()
        );
    }
    let created = store::Backing::create_file(&vc.backing, vc.size)?;
    store::Backing::open(&vc.backing, vc.size)?;
    use rand::RngCore;
    let gen = rand::rngs::OsRng.next_u64() | 1;
    let meta = store::Meta::new(name, vc.size, source, gen);
    vc.paths.save_meta(&meta)?;
    vc.paths
        .save_bitmap(&tandem_core::volume::bitmap::Bitmap::new(vc.size))?;
    Ok(format!(
        "volume `{name}` on {node}: {} backing {} ({} MiB), metadata {}; {}",
        if created { "created" } else { "using existing" },
        vc.backing.display(),
        vc.size >> 20,
        vc.paths.meta.display(),
        if source {
            "this copy holds the data (UpToDate): the peer takes a full sync from it"
        } else {
            "this copy is Inconsistent until it syncs from the peer"
        }
    ))
}
