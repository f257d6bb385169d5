//! One copy of one volume while the agent runs: its role, the write path
//! (local copy, peer, acknowledgement), promotion and demotion, the dirty
//! bitmap and activity log, and keeping the cluster's record of which
//! copies are up to date.
//!
//! The rule behind every acknowledgement: a write is acknowledged only once
//! it is on every copy the cluster record calls up to date. Connected, the
//! peer's acknowledgement gives that (protocol C; protocol A acknowledges
//! once sent). Alone, the primary first makes the record say only its own
//! copy is up to date, so the other copy can no longer be promoted without
//! an operator forcing it.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use super::CommandError;
use crate::event::AgentEvent;
use anyhow::Result;
use serde::{Deserialize, Serialize};
use tandem_core::config::Protocol;
use tandem_core::member::Request;
use tandem_core::nbd::errno;
use tandem_core::volume::bitmap::{Bitmap, BLOCK};
use tandem_core::volume::link::Msg;
use tandem_core::volume::rules::{self, Ack};
use tandem_core::volume::{self, DiskState, Knowledge, Side, VolumeFacts};
use tokio::sync::{mpsc, oneshot, Notify};

use super::splice::Chain;
use super::store::{ActivityLog, Backing, Meta};
use super::stream::{Outgoing, Tail};
use super::VolumeConfig;

/// How long a write waits for the peer or for the cluster before it fails
/// with EIO: long enough for a failover to finish, short enough that a
/// client is told.
pub const WRITE_WAIT: Duration = Duration::from_secs(30);
/// How often the cluster record is asked again when a change did not land.
const RECORD_RETRY: Duration = Duration::from_millis(500);
/// Volume events kept for status.
const EVENTS: usize = 20;

/// The state of the link to the peer copy, and its rules: the core's.
pub use tandem_core::volume::link_state::LinkState;

/// What the connected session decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum SyncRole {
    /// Nothing to copy: both copies the same.
    InSync,
    /// Sending a sync.
    Source,
    /// Receiving a sync.
    Target,
}

/// A write waiting for the peer.
struct Pending {
    offset: u64,
    len: u64,
    done: Option<oneshot::Sender<Result<(), u32>>>,
}

/// The live connection, as the write path sees it.
pub struct Conn {
    /// Session number: a newer session replaces an older one.
    pub epoch: u64,
    /// Frames to the peer, in order.
    pub tx: mpsc::Sender<Outgoing>,
    pending: HashMap<u64, Pending>,
    next_id: u64,
    /// Writes go to the peer (handshake done, not a sync target).
    pub replicating: bool,
    /// This side's role in the sync.
    pub sync_role: SyncRole,
    /// The peer is primary.
    pub peer_primary: bool,
    /// Verify replies awaited.
    pub verify_waiters: HashMap<u64, oneshot::Sender<Vec<u64>>>,
    /// Sync bytes sent and not yet acknowledged.
    pub sync_unacked: u64,
}

impl Conn {
    /// A new session's connection, before the sync decision.
    pub fn new(epoch: u64, tx: mpsc::Sender<Outgoing>) -> Conn {
        Conn {
            epoch,
            tx,
            pending: HashMap::new(),
            next_id: 1,
            replicating: false,
            sync_role: SyncRole::InSync,
            peer_primary: false,
            verify_waiters: HashMap::new(),
            sync_unacked: 0,
        }
    }

    /// A fresh id for a request to the peer.
    pub fn next_id(&mut self) -> u64 {
        self.next_id += 1;
        self.next_id
    }
}

/// Progress of a running sync.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct SyncProgress {
    /// `source` or `target`.
    pub direction: String,
    /// Whole volume.
    pub full: bool,
    /// Bytes to copy when it started.
    pub total_bytes: u64,
    /// Bytes copied (acknowledged by the target).
    pub done_bytes: u64,
    /// When it started.
    #[serde(skip)]
    pub started: Option<Instant>,
    /// Observed rate.
    pub rate_bytes_s: f64,
    /// Remaining seconds at that rate.
    pub eta_s: Option<u64>,
}

/// Progress of an online verify.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct VerifyProgress {
    /// Still running.
    pub running: bool,
    /// Bytes compared.
    pub done_bytes: u64,
    /// Bytes to compare.
    pub total_bytes: u64,
    /// Blocks whose checksums differ.
    pub differing_blocks: u64,
    /// The first differing blocks' byte offsets.
    pub first_differing: Vec<u64>,
    /// Why it stopped early, if it did.
    pub error: Option<String>,
}

/// Counters since the agent started.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Counters {
    /// Bytes sent as sync source.
    pub resync_bytes_sent: u64,
    /// Bytes received as sync target.
    pub resync_bytes_received: u64,
    /// Syncs finished.
    pub syncs_finished: u64,
    /// Writes replicated to the peer.
    pub writes_replicated: u64,
    /// Writes done while not connected (marked in the bitmap).
    pub writes_alone: u64,
    /// Blocks marked by crash recovery (activity log) at start.
    pub activity_log_blocks: u64,
    /// Large payloads (client writes, replicated writes, sync blocks of
    /// 64 KiB to 1 MiB) received into a kernel pipe, not copied.
    #[serde(default)]
    pub payloads_spliced: u64,
    /// Large payloads received through a buffer instead (no pipe to be
    /// had, longer than 1 MiB, or arriving in fragments too small to fit).
    #[serde(default)]
    pub payloads_buffered: u64,
    /// Frames on the replication link that failed authentication (forged,
    /// altered or replayed): each one dropped its connection.
    #[serde(default)]
    pub frames_forged: u64,
    /// Connections refused before authentication: a frame too large for
    /// the handshake, too many at once, too slow, or a failed proof.
    #[serde(default)]
    pub connections_refused: u64,
    /// NBD clients refused: a handshake that failed (no or a wrong client
    /// certificate, a client that hung up on `TLS required`...) or timed
    /// out, or no slot free (see CONFIG.md, `nbd_tcp`).
    #[serde(default)]
    pub nbd_clients_refused: u64,
}

pub(super) struct State {
    pub meta: Meta,
    pub bitmap: Bitmap,
    al: ActivityLog,
    /// The promotion was forced: the record may be overwritten.
    forced: bool,
    pub conn: Option<Conn>,
    pub link: LinkState,
    pub peer_disk: DiskState,
    pub in_flight: u64,
    pub sync: Option<SyncProgress>,
    pub verify: Option<VerifyProgress>,
    pub counters: Counters,
    pub discard_my_data: bool,
    pub bitmap_dirty: bool,
    pub nbd_clients: u64,
    events: VecDeque<String>,
    last_record_request: Option<Instant>,
}

/// One change to a copy, as the write path receives it.
#[derive(Debug)]
pub enum Change {
    /// Data in memory.
    Bytes(Vec<u8>),
    /// Data in kernel pipes (every byte they hold), moved into the page
    /// cache without passing through memory of ours.
    Piped(Chain),
    /// This many zero bytes (WRITE_ZEROES, TRIM).
    Zero(u64),
}

impl Change {
    /// Bytes changed.
    pub(super) fn len(&self) -> u64 {
        match self {
            Change::Bytes(d) => d.len() as u64,
            Change::Piped(p) => p.len() as u64,
            Change::Zero(n) => *n,
        }
    }

    /// The data a message carried: in `piped` if it came through a pipe
    /// (the message's own buffer is then empty), else in `data`.
    pub fn carried(data: Vec<u8>, piped: Option<Chain>) -> Change {
        match piped {
            Some(p) => Change::Piped(p),
            None => Change::Bytes(data),
        }
    }
}

/// A change once it is in the local copy: what the peer is sent.
pub(super) enum Landed {
    /// The data, in memory.
    Bytes(Vec<u8>),
    /// This many bytes, read from the store when sent.
    InStore(usize),
    /// Zeroes.
    Zero(u64),
}

impl Landed {
    /// Hands a buffer back for reuse once nothing is left to send.
    pub(super) fn recycle(self) {
        if let Landed::Bytes(d) = self {
            super::buffers::give(d);
        }
    }

    /// Bytes changed.
    fn len(&self) -> u64 {
        match self {
            Landed::Bytes(d) => d.len() as u64,
            Landed::InStore(n) => *n as u64,
            Landed::Zero(n) => *n,
        }
    }
}

/// One copy of a volume.
pub struct Volume {
    /// Its configuration on this node (its `peer` as it started: see
    /// [`Volume::peer`] for the one now).
    pub cfg: VolumeConfig,
    /// The other copy now: a configuration change may give a volume with
    /// one copy its second, or take the second away.
    peer: Mutex<Option<super::PeerCopy>>,
    /// Grows at every change of `peer`: a link's loops end once it moved
    /// (a peer forgotten and given again at once gets a new link, never
    /// two).
    peer_generation: std::sync::atomic::AtomicU64,
    /// The backing store (shared with the link's writer, which sends
    /// written ranges from its page cache).
    pub backing: Arc<Backing>,
    pub(super) st: Mutex<State>,
    /// Orders "write locally, then queue for the peer" against sync reads
    /// and verify reads, so the peer sees every block's changes in the
    /// order the local copy took them.
    pub order: tokio::sync::Mutex<()>,
    /// Woken on every change of role, link, record or sync.
    pub changed: Notify,
    record: Mutex<Option<VolumeFacts>>,
    /// Requests and events for the agent's loop.
    to_agent: super::ToAgent,
    /// The agent holds its lease: the cluster lets this node run groups.
    may_run: Arc<AtomicBool>,
    epoch: std::sync::atomic::AtomicU64,
    /// Whether this copy is primary. Changed only under the state lock (so
    /// it reads steady there), read anywhere without it: the lock may be
    /// held across a metadata fsync, and the agent's thread must never
    /// wait for the disk.
    primary_now: AtomicBool,
    /// The last status built, for readers that must not wait.
    last_status: Mutex<Option<VolumeStatus>>,
    /// Large payloads received into pipes and through buffers: counted by
    /// the socket readers, which must not wait for the state lock (held
    /// across metadata fsyncs).
    payloads: [std::sync::atomic::AtomicU64; 2],
    /// Link security counters (see [`Counters::frames_forged`]): forged
    /// frames, refused connections.
    link_refusals: [std::sync::atomic::AtomicU64; 3],
    /// Connections in authentication now (capped).
    pub(super) unauthenticated: std::sync::atomic::AtomicUsize,
}

fn random_gen() -> u64 {
    use rand::RngCore;
    // Never 0: 0 means "no data".
    rand::rngs::OsRng.next_u64() | 1
}

use crate::clock::unix_ms;

/// Status of one copy, for `tandem volume status` and `tandem status`.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct VolumeStatus {
    /// Volume name.
    pub name: String,
    /// This node.
    pub node: String,
    /// The node of the other copy (empty: the volume has one copy).
    pub peer: String,
    /// `primary` or `secondary`.
    pub role: String,
    /// The peer's role, when connected.
    pub peer_role: Option<String>,
    /// This copy's disk state.
    pub disk: DiskState,
    /// The peer's, as last known.
    pub peer_disk: DiskState,
    /// Link state.
    pub link: LinkState,
    /// Sync decision of the current session.
    pub sync_role: Option<SyncRole>,
    /// `C` or `A`.
    pub protocol: String,
    /// Size in bytes.
    pub size: u64,
    /// Bytes marked dirty (to copy at the next sync).
    pub dirty_bytes: u64,
    /// A running sync.
    pub sync: Option<SyncProgress>,
    /// The last or running verify.
    pub verify: Option<VerifyProgress>,
    /// Counters.
    pub counters: Counters,
    /// Generations (hex).
    pub generations: String,
    /// The cluster record's up-to-date copies.
    pub record_up_to_date: Option<Vec<String>>,
    /// NBD clients attached.
    pub nbd_clients: u64,
    /// Recent events, oldest first.
    pub events: Vec<String>,
}

impl Volume {
    /// Opens this node's copy: backing store, metadata, and crash recovery
    /// from the activity log.
    pub fn open(
        cfg: VolumeConfig,
        to_agent: super::ToAgent,
        may_run: Arc<AtomicBool>,
    ) -> Result<Volume> {
        let backing = Backing::open(&cfg.backing, cfg.size)?;
        let (mut meta, mut bitmap) = cfg.paths.load(&cfg.name, cfg.size)?;
        let mut counters = Counters::default();
        let al = ActivityLog::from_list(&meta.activity_log);
        let mut events = VecDeque::new();
        if !meta.clean {
            let marked = al.mark(&mut bitmap, cfg.size);
            counters.activity_log_blocks = marked;
            events.push_back(format!(
                "the agent did not stop cleanly: {} activity-log extents ({} blocks) marked for resync",
                meta.activity_log.len(),
                marked
            ));
            cfg.paths.save_bitmap(&bitmap)?;
        }
        meta.clean = false;
        cfg.paths.save_meta(&meta)?;
        Ok(Volume {
            peer: Mutex::new(cfg.peer.clone()),
            peer_generation: std::sync::atomic::AtomicU64::new(0),
            cfg,
            backing: Arc::new(backing),
            st: Mutex::new(State {
                meta,
                bitmap,
                al,
                forced: false,
                conn: None,
                link: LinkState::Connecting,
                peer_disk: DiskState::DUnknown,
                in_flight: 0,
                sync: None,
                verify: None,
                counters,
                discard_my_data: false,
                bitmap_dirty: false,
                nbd_clients: 0,
                events,
                last_record_request: None,
            }),
            order: tokio::sync::Mutex::new(()),
            changed: Notify::new(),
            record: Mutex::new(None),
            to_agent,
            may_run,
            epoch: std::sync::atomic::AtomicU64::new(0),
            primary_now: AtomicBool::new(false),
            last_status: Mutex::new(None),
            payloads: Default::default(),
            link_refusals: Default::default(),
            unauthenticated: Default::default(),
        })
    }

    /// The other copy now (None: this volume has one copy).
    pub fn peer(&self) -> Option<super::PeerCopy> {
        self.peer.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// Which setting of the other copy this is (see [`Volume::set_peer`]).
    pub fn peer_generation(&self) -> u64 {
        self.peer_generation.load(Ordering::SeqCst)
    }

    /// The other copy's node, or empty when there is none.
    pub fn peer_name(&self) -> String {
        self.peer().map(|p| p.node).unwrap_or_default()
    }

    /// Sets the other copy; true when the caller must start a link (a
    /// copy now, none or another before). The link to the copy before, if
    /// any, ends at once: its session is torn down, one still
    /// authenticating is refused ([`Volume::peer_generation`]), and its
    /// loops end at their next look. Without a copy, this one runs alone
    /// (a primary then asks the record to name it alone).
    pub fn set_peer(&self, peer: Option<super::PeerCopy>) -> bool {
        let was = self.peer();
        if was == peer {
            return false;
        }
        self.peer_generation.fetch_add(1, Ordering::SeqCst);
        if let Some(p) = &was {
            let live = self.lock().conn.as_ref().map(|c| c.epoch);
            self.next_epoch();
            if let Some(epoch) = live {
                self.teardown(epoch, &format!("{} left the configuration", p.node));
            }
        }
        *self.peer.lock().unwrap_or_else(|p| p.into_inner()) = peer.clone();
        match (&was, &peer) {
            (_, Some(p)) => {
                self.event(format!(
                    "{} holds this volume's second copy now: connecting",
                    p.node
                ));
            }
            (Some(p), None) => {
                self.event(format!(
                    "{}'s copy is gone from the configuration: this copy runs alone",
                    p.node
                ));
            }
            (None, None) => {}
        }
        self.changed.notify_waiters();
        peer.is_some()
    }

    /// Counts a replication frame that failed authentication. Never waits.
    pub fn count_forged(&self) {
        self.link_refusals[0].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts a connection refused before authentication.
    pub fn count_refused(&self) {
        self.link_refusals[1].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts an NBD client refused (handshake failed, or no slot).
    pub fn count_nbd_refused(&self) {
        self.link_refusals[2].fetch_add(1, Ordering::Relaxed);
    }

    /// Counts one large payload received, by the way it came. Never
    /// waits.
    pub fn count_payload(&self, spliced: bool) {
        self.payloads[usize::from(!spliced)].fetch_add(1, Ordering::Relaxed);
    }

    /// The state, locked. Never held across an await.
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        self.st.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// The state if nobody holds it now (for readers that must not wait).
    fn try_lock(&self) -> Option<MutexGuard<'_, State>> {
        match self.st.try_lock() {
            Ok(st) => Some(st),
            Err(std::sync::TryLockError::Poisoned(p)) => Some(p.into_inner()),
            Err(std::sync::TryLockError::WouldBlock) => None,
        }
    }

    /// Something happened to this copy: the agent's log and event history
    /// hear of it, and the copy's own history keeps it.
    pub fn event(&self, text: String) {
        self.tell(text.clone());
        let mut st = self.lock();
        if st.events.len() == EVENTS {
            st.events.pop_front();
        }
        st.events.push_back(text);
    }

    /// Tells the agent's loop (never waits, never takes the state lock:
    /// callable with it held). Should the loop's queue be full, the line
    /// goes to stderr itself rather than nowhere.
    fn tell(&self, text: String) {
        let event = AgentEvent::Volume {
            volume: self.cfg.name.clone(),
            text,
        };
        if let Err(e) = self.to_agent.events.try_send(event) {
            let event = e.into_inner();
            crate::logging::emit(
                crate::logging::Program::Agent,
                event.severity(),
                &self.cfg.me,
                &event.kind(),
                &event.to_string(),
            );
        }
    }

    /// A new session number.
    pub fn next_epoch(&self) -> u64 {
        self.epoch.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// Whether `epoch` is still the newest session.
    pub fn current_epoch(&self) -> u64 {
        self.epoch.load(Ordering::SeqCst)
    }

    /// The cluster record's facts changed.
    pub fn set_record(&self, facts: Option<VolumeFacts>) {
        let mut r = self.record.lock().unwrap_or_else(|p| p.into_inner());
        if *r != facts {
            *r = facts;
            drop(r);
            self.changed.notify_waiters();
        }
    }

    fn record(&self) -> Option<VolumeFacts> {
        self.record
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
    }

    pub(super) fn disk_state_of(&self, st: &State) -> DiskState {
        let record = self.record();
        let (current, behind) = match &st.conn {
            Some(c) if c.replicating || c.sync_role == SyncRole::InSync => {
                (c.sync_role != SyncRole::Target, false)
            }
            Some(c) => (false, c.sync_role == SyncRole::Target),
            None => (false, false),
        };
        volume::disk_state(&Knowledge {
            me: &self.cfg.me,
            consistent: st.meta.consistent,
            has_data: st.meta.gens.current != 0,
            connected_current: current && st.conn.as_ref().is_some_and(|c| c.replicating),
            connected_behind: behind,
            local_up_to_date: st.meta.up_to_date,
            record: record.as_ref(),
        })
    }

    /// This side's view for the sync decision.
    pub(super) fn side(&self, st: &State) -> Side {
        Side {
            node: self.cfg.me.clone(),
            gens: st.meta.gens,
            dirty_blocks: st.bitmap.count(),
            consistent: st.meta.consistent,
            primary: self.is_primary(),
            promoted_at_unix_ms: st.meta.promoted_at_unix_ms,
            discard_my_data: st.discard_my_data,
        }
    }

    /// Whether this copy is primary (never waits for the state lock).
    pub fn is_primary(&self) -> bool {
        self.primary_now.load(Ordering::SeqCst)
    }

    /// Starts writing apart from the peer (if not already): a new current
    /// generation, persisted before the first write acknowledged alone.
    fn diverge(&self, st: &mut State) -> Result<()> {
        if st.meta.gens.bitmap == 0 {
            st.meta.gens.diverge(random_gen());
            self.cfg.paths.save_meta(&st.meta)?;
        }
        Ok(())
    }

    /// Promotes this copy. `force` overrides the disk-state rule; `cluster`
    /// says the cluster placed the volume here (so a peer still seen as
    /// primary is no longer allowed to be: its session is dropped).
    pub async fn promote(
        &self,
        force: bool,
        cluster: bool,
    ) -> Result<Option<String>, CommandError> {
        // A peer that is demoting says so over the link; wait a little.
        for _ in 0..20 {
            let peer_primary = self.lock().conn.as_ref().is_some_and(|c| c.peer_primary);
            if !peer_primary {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        let Some((state, warning, conn_tx, side)) = self.promote_locked(force, cluster)? else {
            return Ok(None);
        };
        if let Some(tx) = conn_tx {
            let _ = tx
                .send(Msg::State(self.hello(side)).into_frame().into())
                .await;
        }
        self.event(format!(
            "promoted to primary ({state}{})",
            if force { ", forced" } else { "" }
        ));
        if let Some(w) = &warning {
            self.event(w.clone());
        }
        self.changed.notify_waiters();
        Ok(warning)
    }

    /// The locked part of a promotion; None when already primary.
    #[allow(
        clippy::type_complexity,
        reason = "a tuple of what the lock hands out, used by one caller"
    )]
    fn promote_locked(
        &self,
        force: bool,
        cluster: bool,
    ) -> Result<
        Option<(
            DiskState,
            Option<String>,
            Option<mpsc::Sender<Outgoing>>,
            Side,
        )>,
        CommandError,
    > {
        let mut st = self.lock();
        if self.is_primary() {
            return Ok(None);
        }
        if st.conn.as_ref().is_some_and(|c| c.peer_primary) {
            if !cluster && !force {
                return Err(CommandError::PeerIsPrimary {
                    volume: self.cfg.name.clone(),
                    peer: self.peer_name(),
                });
            }
            // The cluster moved the volume here: the old primary may no
            // longer run it, whatever the link last said.
            st.conn = None;
            self.epoch.fetch_add(1, Ordering::SeqCst);
        }
        let state = self.disk_state_of(&st);
        let warning = volume::may_promote(&self.cfg.name, &self.cfg.me, state, force)?;
        if st.meta.gens.current == 0 {
            // Forced on a copy that never held data: it becomes the data.
            st.meta.gens.current = random_gen();
            st.meta.consistent = true;
        }
        self.primary_now.store(true, Ordering::SeqCst);
        st.forced = force && state != DiskState::UpToDate;
        st.meta.promoted_at_unix_ms = unix_ms();
        st.meta.up_to_date = true;
        self.cfg
            .paths
            .save_meta(&st.meta)
            .map_err(|e| CommandError::Metadata {
                volume: self.cfg.name.clone(),
                why: format!("{e:#}"),
            })?;
        let conn_tx = st.conn.as_ref().map(|c| c.tx.clone());
        Ok(Some((state, warning, conn_tx, self.side(&st))))
    }

    /// Demotes this copy: NBD clients are cut, writes in flight finish or
    /// fail, and the copy becomes secondary.
    pub async fn demote(&self) {
        let Some(conn_tx) = self.demote_locked() else {
            return;
        };
        self.changed.notify_waiters();
        // Writes already queued reach the peer before the role change.
        let _order = self.order.lock().await;
        let side = self.side(&self.lock());
        if let Some(tx) = conn_tx {
            let _ = tx
                .send(Msg::State(self.hello(side)).into_frame().into())
                .await;
        }
        self.persist_bitmap();
        self.event("demoted to secondary".into());
    }

    /// Marks the copy secondary; None when it was not primary.
    fn demote_locked(&self) -> Option<Option<mpsc::Sender<Outgoing>>> {
        let mut st = self.lock();
        if !self.is_primary() {
            return None;
        }
        self.primary_now.store(false, Ordering::SeqCst);
        st.forced = false;
        Some(st.conn.as_ref().map(|c| c.tx.clone()))
    }

    /// The sync bytes unacknowledged in session `epoch` (None: it ended).
    pub fn sync_unacked(&self, epoch: u64) -> Option<u64> {
        self.lock()
            .conn
            .as_ref()
            .filter(|c| c.epoch == epoch)
            .map(|c| c.sync_unacked)
    }

    /// The handshake state message for this side.
    pub fn hello(&self, side: Side) -> tandem_core::volume::link::Hello2 {
        tandem_core::volume::link::Hello2 {
            size: self.cfg.size,
            side,
        }
    }

    /// Saves the bitmap if it changed since last saved.
    pub fn persist_bitmap(&self) {
        let mut st = self.lock();
        if st.bitmap_dirty {
            match self.cfg.paths.save_bitmap(&st.bitmap) {
                Ok(()) => st.bitmap_dirty = false,
                Err(e) => self.tell(format!("saving the bitmap: {e:#}")),
            }
        }
    }

    /// Logs the extents a write touches before it lands.
    fn log_activity(&self, offset: u64, len: u64) -> Result<(), u32> {
        let mut st = self.lock();
        if st.al.touch(offset, len) {
            st.meta.activity_log = st.al.to_list();
            if st.bitmap_dirty {
                // Extents may have left the log: their marks must be on
                // disk before the log stops covering them.
                if self.cfg.paths.save_bitmap(&st.bitmap).is_err() {
                    return Err(errno::EIO);
                }
                st.bitmap_dirty = false;
            }
            if let Err(e) = self.cfg.paths.save_meta(&st.meta) {
                self.tell(format!("saving the activity log: {e:#}"));
                return Err(errno::EIO);
            }
        }
        Ok(())
    }

    /// Retires the activity log when nothing is in flight and the bitmap
    /// is on disk: a crash now would leave nothing unknown.
    pub fn retire_activity_log(&self) {
        let mut st = self.lock();
        if st.in_flight > 0 || st.al.to_list().is_empty() {
            return;
        }
        if st.bitmap_dirty {
            if self.cfg.paths.save_bitmap(&st.bitmap).is_err() {
                return;
            }
            st.bitmap_dirty = false;
        }
        st.al.clear();
        st.meta.activity_log.clear();
        let _ = self.cfg.paths.save_meta(&st.meta);
    }

    /// Runs one change to the copy (write, zeroes) through local disk and
    /// peer; Ok once it may be acknowledged.
    pub async fn write(&self, offset: u64, change: Change, fua: bool) -> Result<(), u32> {
        let len = change.len();
        if !self.is_primary() {
            return Err(errno::ESHUTDOWN);
        }
        self.log_activity(offset, len)?;
        let waiter = {
            let _order = self.order.lock().await;
            {
                let mut st = self.lock();
                if !self.is_primary() {
                    return Err(errno::ESHUTDOWN);
                }
                st.in_flight += 1;
            }
            let landed = match self.store_change(offset, change) {
                Ok(l) => l,
                Err(e) => {
                    self.lock().in_flight -= 1;
                    self.event(format!(
                        "write of {len} bytes at {offset} to {} failed: {e}",
                        self.backing.path().display()
                    ));
                    return Err(errno::EIO);
                }
            };
            self.queue_to_peer(offset, landed, fua).await
        };
        let result = self.finish_write(waiter, fua).await;
        self.lock().in_flight -= 1;
        result
    }

    /// Writes a change into this copy: the local half of every write
    /// path (client writes here, replicated writes and sync blocks on a
    /// secondary).
    pub(super) fn store_change(&self, offset: u64, change: Change) -> std::io::Result<Landed> {
        Ok(match change {
            Change::Bytes(d) => {
                self.backing.write_at(&d, offset)?;
                Landed::Bytes(d)
            }
            Change::Piped(mut p) => {
                let len = p.len();
                p.drain_to_file(self.backing.raw_fd(), offset)?;
                Landed::InStore(len)
            }
            Change::Zero(len) => {
                self.backing.zero(offset, len)?;
                Landed::Zero(len)
            }
        })
    }

    /// Queues a change for the peer if connected and replicating; else
    /// marks it in the bitmap. Called with the order lock held, after the
    /// local write (a range sent from the store is read as it is now).
    async fn queue_to_peer(
        &self,
        offset: u64,
        landed: Landed,
        fua: bool,
    ) -> Option<oneshot::Receiver<Result<(), u32>>> {
        let len = landed.len();
        let (out, tx, rx) = {
            let mut guard = self.lock();
            let st = &mut *guard;
            let Some(conn) = st.conn.as_mut().filter(|c| c.replicating) else {
                st.bitmap.set_range(offset, len);
                st.bitmap_dirty = true;
                st.counters.writes_alone += 1;
                drop(guard);
                landed.recycle();
                return None;
            };
            let id = conn.next_id();
            let (tx, rx) = oneshot::channel();
            conn.pending.insert(
                id,
                Pending {
                    offset,
                    len,
                    done: Some(tx),
                },
            );
            let write = |data| Msg::Write {
                id,
                offset,
                fua,
                data,
            };
            let out = match landed {
                Landed::Bytes(data) => write(data).into_frame().into(),
                Landed::InStore(n) => Outgoing {
                    frame: write(Vec::new()).into_frame_apart(n),
                    tail: Tail::File {
                        store: self.backing.clone(),
                        offset,
                        len: n,
                    },
                },
                Landed::Zero(len) => Msg::Zero {
                    id,
                    offset,
                    length: len as u32,
                    fua,
                }
                .into_frame()
                .into(),
            };
            st.counters.writes_replicated += 1;
            (out, conn.tx.clone(), rx)
        };
        if tx.send(out).await.is_err() {
            // The session ended between the lock and the send: its
            // teardown marked the range (it was pending).
        }
        Some(rx)
    }

    async fn finish_write(
        &self,
        waiter: Option<oneshot::Receiver<Result<(), u32>>>,
        fua: bool,
    ) -> Result<(), u32> {
        if fua {
            self.sync_local()?;
        }
        match (rules::ack(self.cfg.protocol, waiter.is_some()), waiter) {
            (Ack::Local, _) => Ok(()),
            (Ack::Peer, Some(w)) => match tokio::time::timeout(WRITE_WAIT, w).await {
                Ok(Ok(r)) => r,
                // The session ended first: the range is in the bitmap.
                Ok(Err(_)) => self.wait_alone().await,
                Err(_) => Err(errno::EIO),
            },
            (Ack::Peer | Ack::Alone, _) => self.wait_alone().await,
        }
    }

    /// Makes the local copy durable (blocking: on the volume runtime).
    pub fn sync_local(&self) -> Result<(), u32> {
        tokio::task::block_in_place(|| self.backing.sync()).map_err(|e| {
            self.event(format!("flushing {}: {e}", self.backing.path().display()));
            errno::EIO
        })
    }

    /// Whether this primary may acknowledge writes the peer has not seen:
    /// the record says its copy alone is up to date.
    fn alone_ok(&self) -> bool {
        rules::alone_ok(self.record().as_ref(), &self.cfg.me)
    }

    /// Waits until a write done alone may be acknowledged.
    async fn wait_alone(&self) -> Result<(), u32> {
        let deadline = Instant::now() + WRITE_WAIT;
        loop {
            let notified = self.changed.notified();
            if !self.is_primary() {
                return Err(errno::ESHUTDOWN);
            }
            if self.alone_ok() && self.may_run.load(Ordering::SeqCst) {
                // The first write acknowledged alone starts a generation of
                // its own. Not before: writes never acknowledged may be
                // discarded, so a primary cut off before it could record
                // itself alone has not split from the copy that took over.
                let mut st = self.lock();
                return self.diverge(&mut st).map_err(|e| {
                    self.tell(format!("{e:#}"));
                    errno::EIO
                });
            }
            if self.excluded() {
                return Err(errno::EIO);
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(errno::EIO);
            }
            let _ = tokio::time::timeout(left.min(Duration::from_millis(200)), notified).await;
        }
    }

    /// The record names other copies but not this one, and no operator
    /// forced it: this copy is outdated.
    fn excluded(&self) -> bool {
        let forced = self.lock().forced;
        rules::excluded(self.record().as_ref(), &self.cfg.me, forced)
    }

    /// A primary the record leaves out while it is not replicating: it
    /// cannot acknowledge writes (the resource monitor reports it).
    ///
    /// Never waits for the state lock: when it is held (a metadata fsync
    /// may take a while under heavy writeback) the answer is false and the
    /// next check tells.
    pub fn outdated_primary(&self) -> bool {
        let Some(st) = self.try_lock() else {
            return false;
        };
        let replicating = st.conn.as_ref().is_some_and(|c| c.replicating);
        drop(st);
        !replicating && self.excluded()
    }

    /// FLUSH: local copy, then the peer's (so it keeps its meaning on both).
    pub async fn flush(&self) -> Result<(), u32> {
        if !self.is_primary() {
            return Err(errno::ESHUTDOWN);
        }
        self.sync_local()?;
        let waiter = {
            let mut st = self.lock();
            match st.conn.as_mut().filter(|c| c.replicating) {
                Some(conn) => {
                    let id = conn.next_id();
                    let (tx, rx) = oneshot::channel();
                    conn.pending.insert(
                        id,
                        Pending {
                            offset: 0,
                            len: 0,
                            done: Some(tx),
                        },
                    );
                    Some((Msg::Flush { id }.into_frame().into(), conn.tx.clone(), rx))
                }
                None => None,
            }
        };
        match waiter {
            Some((frame, tx, rx)) => {
                let _ = tx.send(frame).await;
                match tokio::time::timeout(WRITE_WAIT, rx).await {
                    Ok(Ok(r)) => r,
                    Ok(Err(_)) => self.wait_alone().await,
                    Err(_) => Err(errno::EIO),
                }
            }
            None => self.wait_alone().await,
        }
    }

    /// The peer acknowledged (or failed) request `id`.
    pub fn on_ack(&self, epoch: u64, id: u64, result: Result<(), u32>) {
        let mut st = self.lock();
        let Some(conn) = st.conn.as_mut().filter(|c| c.epoch == epoch) else {
            return;
        };
        if let Some(mut p) = conn.pending.remove(&id) {
            if result.is_err() {
                st.bitmap.set_range(p.offset, p.len);
                st.bitmap_dirty = true;
            }
            if let Some(done) = p.done.take() {
                let _ = done.send(result);
            }
        }
    }

    /// `tandem volume disconnect`: the link goes down and stays down until
    /// [`Volume::connect_by_operator`]. Under one lock: from here no
    /// session may install itself (`peer::session` checks AdminDown under
    /// the same lock), and the one present, whatever its epoch, is torn
    /// down.
    pub fn disconnect_by_operator(&self) {
        let live = {
            let mut st = self.lock();
            st.link.disconnect();
            st.conn.as_ref().map(|c| c.epoch)
        };
        self.next_epoch();
        if let Some(epoch) = live {
            self.teardown(epoch, "disconnected by the operator");
        }
        self.event("disconnected by the operator".into());
    }

    /// `tandem volume connect [--discard-my-data]`: the link may come up
    /// again.
    pub fn connect_by_operator(&self, discard_my_data: bool) {
        let mut st = self.lock();
        st.discard_my_data = discard_my_data;
        st.link.connect();
        drop(st);
        self.event(format!(
            "connect requested by the operator{}",
            if discard_my_data {
                " (this copy discards its changes at the next sync)"
            } else {
                ""
            }
        ));
    }

    /// Ends session `epoch`: every change the peer did not acknowledge is
    /// marked for the next sync; a primary goes on alone.
    pub fn teardown(&self, epoch: u64, why: &str) {
        let mut st = self.lock();
        if st.conn.as_ref().map_or(true, |c| c.epoch != epoch) {
            return;
        }
        let Some(conn) = st.conn.take() else {
            return;
        };
        let unacked = conn.pending.len();
        for p in conn.pending.into_values() {
            st.bitmap.set_range(p.offset, p.len);
        }
        st.bitmap_dirty = true;
        if st.sync.take().is_some() {
            st.events
                .push_back("sync interrupted; it resumes from the bitmap on reconnect".into());
        }
        st.peer_disk = DiskState::DUnknown;
        st.link.on_session_end();
        let _ = self.cfg.paths.save_bitmap(&st.bitmap);
        st.bitmap_dirty = false;
        drop(st);
        self.event(format!(
            "disconnected from {} ({why}); {unacked} changes unacknowledged, marked for resync",
            self.peer_name()
        ));
        self.changed.notify_waiters();
    }

    /// Keeps the cluster record in step with this copy: called on every
    /// change and periodically.
    pub fn keep_record(&self) {
        let record = self.record();
        let peer = self.peer();
        let mut st = self.lock();
        let conn = st.conn.as_ref();
        let copy = rules::Copy {
            me: &self.cfg.me,
            peer: peer.as_ref().map_or("", |p| p.node.as_str()),
            primary: self.is_primary(),
            in_sync: peer.is_some()
                && conn.is_some_and(|c| c.replicating && c.sync_role == SyncRole::InSync),
            dialer: peer.as_ref().is_some_and(|p| p.dialer),
            peer_primary: conn.is_some_and(|c| c.peer_primary),
            forced: st.forced,
            may_run: self.may_run.load(Ordering::SeqCst),
        };
        let Some(desired) = rules::record_wanted(&copy, record.as_ref()) else {
            return;
        };
        let current_version = record.map_or(0, |r| r.version);
        if st
            .last_record_request
            .is_some_and(|t| t.elapsed() < RECORD_RETRY)
        {
            return;
        }
        st.last_record_request = Some(Instant::now());
        drop(st);
        let _ = self.to_agent.requests.try_send(Request::Volume {
            volume: self.cfg.name.clone(),
            expect_version: current_version,
            up_to_date: desired,
        });
    }

    /// Status of this copy.
    pub fn status(&self) -> VolumeStatus {
        let st = self.lock();
        self.status_of(&st)
    }

    /// The status without waiting: the last one built while the state
    /// lock is held elsewhere (for the agent's thread, which must keep
    /// its heartbeats going whatever the disk does). The hub takes a first
    /// one at start; before that, this waits.
    pub fn status_now(&self) -> VolumeStatus {
        let fresh = self.try_lock().map(|st| self.status_of(&st));
        let mut last = self.last_status.lock().unwrap_or_else(|p| p.into_inner());
        let s = match (fresh, last.take()) {
            (Some(s), _) | (None, Some(s)) => s,
            (None, None) => self.status(),
        };
        *last = Some(s.clone());
        s
    }

    fn status_of(&self, st: &State) -> VolumeStatus {
        let record = self.record();
        let disk = self.disk_state_of(st);
        let g = st.meta.gens;
        VolumeStatus {
            name: self.cfg.name.clone(),
            node: self.cfg.me.clone(),
            peer: self.peer_name(),
            role: if self.is_primary() {
                "primary"
            } else {
                "secondary"
            }
            .into(),
            peer_role: st.conn.as_ref().map(|c| {
                if c.peer_primary {
                    "primary"
                } else {
                    "secondary"
                }
                .to_string()
            }),
            disk,
            peer_disk: if st.conn.is_some() {
                st.peer_disk
            } else {
                DiskState::DUnknown
            },
            link: st.link.clone(),
            sync_role: st.conn.as_ref().map(|c| c.sync_role),
            protocol: match self.cfg.protocol {
                Protocol::C => "C",
                Protocol::A => "A",
            }
            .into(),
            size: self.cfg.size,
            dirty_bytes: st.bitmap.count() * BLOCK,
            sync: st.sync.clone(),
            verify: st.verify.clone(),
            counters: Counters {
                payloads_spliced: self.payloads[0].load(Ordering::Relaxed),
                payloads_buffered: self.payloads[1].load(Ordering::Relaxed),
                frames_forged: self.link_refusals[0].load(Ordering::Relaxed),
                connections_refused: self.link_refusals[1].load(Ordering::Relaxed),
                nbd_clients_refused: self.link_refusals[2].load(Ordering::Relaxed),
                ..st.counters.clone()
            },
            generations: format!(
                "{:016X}:{:016X}:{:016X}:{:016X}",
                g.current, g.bitmap, g.history[0], g.history[1]
            ),
            record_up_to_date: record.map(|r| r.up_to_date),
            nbd_clients: st.nbd_clients,
            events: st.events.iter().cloned().collect(),
        }
    }

    /// Stops cleanly: bitmap and metadata saved, marked clean if nothing
    /// is in flight.
    pub fn close(&self) {
        let mut st = self.lock();
        let _ = self.cfg.paths.save_bitmap(&st.bitmap);
        if st.in_flight == 0 {
            st.meta.clean = true;
            st.al.clear();
            st.meta.activity_log.clear();
        }
        let _ = self.cfg.paths.save_meta(&st.meta);
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::volume::store::MetaPaths;

    /// One copy of a 1 MiB volume named `data` in `dir`: node `me` with
    /// peer `peer`, listening on (or dialing from) `my_addr`. Shared with
    /// the link's tests.
    pub(crate) fn copy(
        dir: &std::path::Path,
        me: &str,
        peer: &str,
        dialer: bool,
        my_addr: std::net::SocketAddr,
        peer_addr: std::net::SocketAddr,
    ) -> Volume {
        let size = 1 << 20;
        let cfg = VolumeConfig {
            name: "data".into(),
            me: me.into(),
            peer: Some(super::super::PeerCopy {
                node: peer.into(),
                addr: peer_addr,
                dialer,
            }),
            size,
            backing: dir.join("data.img"),
            protocol: Protocol::C,
            my_addr,
            nbd_socket: None,
            nbd_tcp: None,
            nbd_tls: None,
            rate_bytes_s: 1 << 20,
            split_brain: tandem_core::config::SplitBrainPolicy::Disconnect,
            key: [9; 32],
            congestion_control: None,
            ping_interval_ms: 1000,
            peer_timeout_ms: 3000,
            paths: MetaPaths::new(dir, "data"),
        };
        Backing::create_file(&cfg.backing, size).unwrap_or_else(|e| panic!("{e:#}"));
        cfg.paths
            .save_meta(&Meta::new("data", size, true, 7))
            .unwrap_or_else(|e| panic!("{e:#}"));
        cfg.paths
            .save_bitmap(&Bitmap::new(size))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let to_agent = crate::volume::ToAgent {
            requests: mpsc::channel(64).0,
            events: mpsc::channel(64).0,
        };
        Volume::open(cfg, to_agent, Arc::new(AtomicBool::new(true)))
            .unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn volume(dir: &std::path::Path) -> Volume {
        let addr = |s: &str| s.parse().unwrap_or_else(|e| panic!("{e}"));
        copy(
            dir,
            "n1",
            "n2",
            true,
            addr("127.0.0.1:1"),
            addr("127.0.0.1:2"),
        )
    }

    /// The agent's thread reads a copy's role, trouble and status every
    /// few hundred ms; it waited for the state lock, which a write holds
    /// across a metadata fsync (seconds under heavy writeback), and the
    /// node lost its lease mid-write.
    #[test]
    fn regression_agent_thread_waited_for_a_metadata_fsync() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let v = Arc::new(volume(dir.path()));
        let before = v.status_now();
        let held = v.lock();
        let (tx, rx) = std::sync::mpsc::channel();
        let reader = v.clone();
        std::thread::spawn(move || {
            let _ = tx.send((
                reader.is_primary(),
                reader.outdated_primary(),
                reader.status_now(),
            ));
        });
        let got = rx.recv_timeout(Duration::from_secs(10));
        drop(held);
        let (primary, outdated, status) =
            got.unwrap_or_else(|_| panic!("the agent-side reads waited for the state lock"));
        assert!(!primary && !outdated);
        // While busy: the last status, not a made-up one.
        assert_eq!(status.generations, before.generations);
        assert_eq!(status.name, "data");
    }
}
