//! `tandem agent` and `tandem witness`: the I/O shell around one
//! [`Member`] core.
//!
//! Owns the sockets (one UDP socket per link, bound to this member's
//! address on it), the clock, the state file, the control socket and
//! signals; every decision is made by [`tandem_core::member`]. Runs on one
//! thread: the work is tiny, and one thread keeps idle CPU and memory low.

use std::collections::VecDeque;
use std::net::SocketAddr;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tandem_core::agreement::{Intent, Role};
use tandem_core::config::Config;
use tandem_core::failure_detector::{EventKind, LinkState, NodeState};
use tandem_core::member::{
    GroupsSpec, Member, MemberEvent, MemberOutput, MemberSpec, PeerSpec, Request,
};
use tandem_core::policy::{self, GroupPolicy};
use tandem_core::quorum::{self, MAX_VOTERS};
use tandem_core::wire::{self, ClusterId, NodeId};
use tokio::net::{UdpSocket, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::control::{ControlError, ControlRequest, ControlResponse, Handler, LoopCall};
use crate::event::AgentEvent;
use crate::runner::{Done, Runner};
use crate::state_file::{Loaded, StateFile};
use crate::status::{
    AgreementStatus, EventRecord, GroupStatus, LeaseStatus, LinkStatus, LinkWord, PeerState,
    PeerStatus, QuorumStatus, ShownState, Status,
};
use tandem_core::group::GroupState;

mod fencing;
mod switch;
mod topology;
mod view;

use fencing::run_fence;
use topology::{find_self, groups_spec, spec, Topology};
use view::describe_request;

/// Events kept for `tandem status`.
const EVENT_HISTORY: usize = 100;
/// Received datagrams waiting for the main loop before new ones are dropped.
const RX_QUEUE: usize = 1024;
/// Packets that failed authentication count in status for this long.
const UNAUTHENTICATED_RECENT_MS: u64 = 10_000;
/// Datagrams already queued that one pass handles together, beyond the
/// first (a pass per datagram was a good part of an idle agent's cost).
const MAX_BATCH: usize = 32;
/// Outcomes of resource actions and checks waiting for the main loop.
const DONE_QUEUE: usize = 256;
/// Control connections served at once; more are closed at once.
const MAX_CONTROL_CONNECTIONS: usize = 32;
/// Fencings run at once by this agent (as leader); more wait their turn.
const MAX_CONCURRENT_FENCES: usize = 4;
/// Fencings waiting for a slot (more than the largest cluster has nodes
/// to fence and power on).
const MAX_QUEUED_FENCES: usize = 128;
/// Longest a graceful stop waits for the groups here to stop.
const SHUTDOWN_LIMIT: Duration = Duration::from_secs(120);
/// Default control socket of an agent.
pub use tandem_core::config::DEFAULT_CONTROL_SOCKET;
/// Default control socket of a witness.
pub const DEFAULT_WITNESS_SOCKET: &str = "/run/tandem/witness.sock";
/// The witness's member name (reserved; no node may use it).
pub const WITNESS_NAME: &str = "witness";

/// What this process is in the cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum MemberRole {
    /// A node (`tandem agent`); None: find it from local addresses.
    Node(Option<String>),
    /// The witness (`tandem witness`).
    Witness,
}

/// Options beyond the configuration.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// Node or witness.
    pub role: MemberRole,
    /// Control socket path, overriding the configuration's.
    pub control_socket: Option<PathBuf>,
    /// State directory, overriding the configuration's.
    pub state_dir: Option<PathBuf>,
    /// The configuration's identity (hash of what it says, per section).
    pub config: tandem_core::config::identity::Identity,
    /// What to do with a state file that fails its check.
    pub recovery: crate::state_file::Recovery,
    /// The configuration file's path and text, as read (a configuration
    /// change rewrites it, and its history keeps the text; None: neither).
    pub config_file: Option<(PathBuf, String)>,
}

use crate::clock::unix_ms;

/// Runs the agent (or witness) until SIGTERM or SIGINT.
pub fn run(cfg: Config, opts: AgentOptions) -> Result<()> {
    let topo = Topology::from_config(&cfg);
    let me = find_self(&cfg, &topo, &opts.role)?;
    let mut keys = vec![crate::keyfile::load(&cfg.key_path())?];
    if let Some(p) = cfg.previous_key_path() {
        keys.push(crate::keyfile::load(&p)?);
    }
    let witness = opts.role == MemberRole::Witness;
    // The witness has its own socket: it may share a machine (and a
    // configuration) with a node.
    let control = opts.control_socket.clone().unwrap_or_else(|| {
        if witness {
            PathBuf::from(DEFAULT_WITNESS_SOCKET)
        } else {
            cfg.cluster.control_socket.clone()
        }
    });
    // The witness keeps its own subdirectory: it may share a machine (and
    // a configuration) with a node.
    let state_dir = opts.state_dir.clone().unwrap_or_else(|| {
        let base = cfg.cluster.state_dir.clone();
        if witness {
            base.join("witness")
        } else {
            base
        }
    });
    let state = StateFile::open(&state_dir)?;
    let (persisted, loaded) = state.load(opts.recovery)?;
    let say = |severity, text: String| {
        crate::logging::emit(
            crate::logging::Program::Agent,
            severity,
            &topo.names[me],
            "state_file",
            &text,
        )
    };
    if let Err(e) = state.reserve() {
        say(
            crate::logging::Severity::Warn,
            format!(
                "cannot set {} MiB aside in {} ({e:#}): if that filesystem fills up, this node may stop without leaving cleanly",
                crate::state_file::RESERVE_BYTES >> 20,
                state_dir.display()
            ),
        );
    }
    match &loaded {
        Loaded::Fresh | Loaded::Checked => {}
        Loaded::Discarded(aside) => say(
            crate::logging::Severity::Error,
            format!(
                "{} was damaged and is kept as {}; starting empty: no vote until this node has followed the leader",
                state.path().display(),
                aside.display()
            ),
        ),
        Loaded::Unchecksummed => say(
            crate::logging::Severity::Info,
            format!(
                "{} had no checksum (an older version wrote it); accepted, and written with one from now on",
                state.path().display()
            ),
        ),
    }
    // Incarnations only grow: wall-clock µs, but past the last one even if
    // the clock went back.
    let now_us = crate::clock::unix_us();
    let incarnation = now_us.max(persisted.incarnation + 1);
    let volume_key = keys[0];
    let key_fingerprint = tandem_core::config::identity::key_fingerprint(&keys[0]);
    let spec = spec(&cfg, &topo, me, keys, &opts.config);
    let fence_devices = Rc::new(crate::fence_agent::devices(&cfg));
    let groups = groups_spec(&cfg, &topo, &fence_devices)?;
    let started = Instant::now();
    let unix_at_zero_ms = unix_ms();
    // The election timers' seed. Not the time: the incarnation usually is
    // the time, and the core mixes the two (`seed ^ incarnation`), which
    // left every start of a node with the same timers.
    let seed: u64 = rand::random();
    let mut member = Member::new(spec, incarnation, persisted, 0, seed);
    member.set_groups(groups, unix_at_zero_ms);
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    // Local tasks: the per-link receivers share sockets with the main loop.
    let local = tokio::task::LocalSet::new();
    let (done_tx, done_rx) = mpsc::channel::<Done>(DONE_QUEUE);
    let (volume_tx, volume_rx) = mpsc::channel::<Request>(crate::volume::REQUEST_QUEUE);
    let (volume_event_tx, volume_event_rx) =
        mpsc::channel::<AgentEvent>(crate::volume::EVENT_QUEUE);
    let hub = if witness {
        None
    } else {
        crate::volume::Hub::start(
            crate::volume::configs(&cfg, &topo.names[me], volume_key, &state_dir)?,
            crate::volume::ToAgent {
                requests: volume_tx,
                events: volume_event_tx,
            },
        )?
    };
    let filesync = if witness {
        None
    } else {
        crate::filesync::Service::start(&cfg, &topo.names[me], volume_key)?
    };
    let (fetched_tx, fetched_rx) = mpsc::channel::<(String, Option<String>)>(1);
    let config_dir = opts
        .config_file
        .as_ref()
        .and_then(|(p, _)| p.parent())
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let runner = if witness {
        None
    } else {
        let mut r = Runner::new(
            &cfg,
            &topo.names[me],
            state_dir.join("run"),
            unix_at_zero_ms,
            done_tx,
            hub.as_ref(),
            filesync.as_ref(),
        )?;
        if r.has_resources() {
            // The previous agent's lease, if it still runs: keep what runs.
            if let Some(old) = crate::guard::read(r.lease_path()) {
                let mono = crate::guard::mono_ms();
                if old.boot_id == crate::guard::boot_id() && old.until_mono_ms > mono {
                    let left = (old.until_mono_ms - mono).min(cfg.timing.deadtime_ms);
                    r.inherit_lease(started.elapsed().as_millis() as u64 + left);
                }
            }
            spawn_guard(r.lease_path(), &topo.names[me])?;
        }
        Some(r)
    };
    let (fence_tx, fence_rx) = mpsc::channel::<FenceDone>(MAX_CONCURRENT_FENCES);
    // The witness hosts nothing: a reset would protect nothing.
    let watchdog = crate::watchdog::Watchdog::open(
        if witness { None } else { cfg.watchdog.as_ref() },
        Some(state_dir.join("run").join("watchdog-exposure.json")),
    )?;
    member.set_watchdog_armed(watchdog.resets_within_ms());
    // The HTTP API's files and port, checked before anything runs. A
    // problem there turns the API off, said in the log and status: an
    // optional way in must not keep the agent (and its groups) down.
    let (api, api_problem) = match (&cfg.http, witness) {
        (Some(spec), false) => match crate::http::Api::prepare(&cfg, spec, &topo.names[me]) {
            Ok(api) => (Some(api), None),
            Err(e) => (None, Some(format!("the HTTP API is off: {e:#}"))),
        },
        _ => (None, None),
    };
    let tally = Arc::new(crate::metrics::Tally::new(
        cfg.timing.deadtime_ms,
        crate::metrics::last_resources(&cfg),
    ));
    let journal = crate::event_journal::Journal::open(&state_dir);
    // Scrubbed from every event and every report this node sends.
    let secrets: Vec<String> = cfg
        .secrets()
        .into_iter()
        .map(|(_, v)| v.to_string())
        .collect();
    let peer_service = Arc::new(crate::peer_service::PeerService::new(
        &cfg,
        &topo.names[me],
        volume_key,
        state_dir.clone(),
        config_dir,
        secrets.clone(),
    ));
    // The witness sends no alerts.
    let alerts = (!witness).then(|| crate::alerts::Alerts::new(&cfg, &topo.names[me]));
    let cs = switch::ConfigState::new(
        cfg.clone(),
        opts.config_file.clone(),
        &state_dir,
        fetched_tx,
    );
    let agent = Agent {
        cs,
        fetched_rx,
        state_dir: state_dir.clone(),
        unix_at_zero_ms,
        filesync,
        api_problem,
        secrets,
        sd: crate::sd_notify::Notifier::from_env(),
        api,
        tally,
        alerts,
        journal,
        peer_service,
        hub,
        volume_rx,
        volume_event_rx,
        runner,
        watchdog,
        fence_devices,
        fences: tandem_core::fence::Slots::new(MAX_CONCURRENT_FENCES, MAX_QUEUED_FENCES),
        fence_tx,
        fence_rx,
        done_rx,
        shutting_down: false,
        fatal: None,
        timing: cfg.timing,
        cluster: cfg.cluster.name.clone(),
        topo,
        me,
        member,
        started,
        events: VecDeque::new(),
        sockets: Vec::new(),
        control_path: control,
        control_group: cfg.cluster.control_group.clone(),
        state,
        config_epoch: None,
        config: opts.config.clone(),
        key_fingerprint,
        config_note: None,
        last_quorate: std::cell::Cell::new(None),
    };
    local.block_on(&rt, agent.run())
}

/// One control connection's place among [`MAX_CONTROL_CONNECTIONS`],
/// given back when its task ends, however it ends.
struct OpenSlot(Rc<std::cell::Cell<usize>>);

impl Drop for OpenSlot {
    fn drop(&mut self) {
        self.0.set(self.0.get().saturating_sub(1));
    }
}

/// A finished fencing: node, power on (not off), success, one line per
/// attempt.
type FenceDone = (String, bool, bool, Vec<String>);

struct Agent {
    /// The configuration this agent runs, its files, and a change under
    /// way ([`switch`]).
    cs: switch::ConfigState,
    /// Configurations fetched from peers.
    fetched_rx: mpsc::Receiver<(String, Option<String>)>,
    /// This node's state directory.
    state_dir: PathBuf,
    /// The wall clock at this agent's time 0.
    unix_at_zero_ms: u64,
    /// The `filesync` resources' service (None on the witness).
    filesync: Option<Arc<crate::filesync::Service>>,
    /// Why the HTTP API is off although configured, to log once running.
    api_problem: Option<String>,
    /// The configuration's secrets, scrubbed from every event.
    secrets: Vec<String>,
    /// systemd's notification socket (does nothing outside systemd).
    sd: crate::sd_notify::Notifier,
    /// The HTTP API, until the loop starts serving it.
    api: Option<crate::http::Api>,
    /// What the metrics keep between scrapes, fed by every event.
    tally: Arc<crate::metrics::Tally>,
    /// This node's events on disk.
    journal: crate::event_journal::Journal,
    /// This node's journal served to its peers, and theirs gathered.
    peer_service: Arc<crate::peer_service::PeerService>,
    /// The alert recipients (None on the witness).
    alerts: Option<crate::alerts::Alerts>,
    /// This node's configuration identity.
    config: tandem_core::config::identity::Identity,
    /// Fingerprint of the key it sends with.
    key_fingerprint: String,
    /// The last thing said of this node's configuration against the
    /// committed one (logged when it changes).
    config_note: Option<AgentEvent>,
    /// This node's replicated volumes (None when it holds no copy).
    hub: Option<Arc<crate::volume::Hub>>,
    /// The volumes' requests to the cluster (record updates).
    volume_rx: mpsc::Receiver<Request>,
    /// What happened to this node's copies.
    volume_event_rx: mpsc::Receiver<AgentEvent>,
    /// This node's groups (None on the witness).
    runner: Option<Runner>,
    /// The node's watchdog, fed while the rule says so.
    watchdog: crate::watchdog::Watchdog,
    /// The configuration's fence devices.
    fence_devices: Rc<Vec<crate::fence_agent::FenceDevice>>,
    /// Nodes being fenced (or powered on) now, and those waiting for a slot.
    fences: tandem_core::fence::Slots<(String, bool)>,
    fence_tx: mpsc::Sender<FenceDone>,
    fence_rx: mpsc::Receiver<FenceDone>,
    done_rx: mpsc::Receiver<Done>,
    /// SIGTERM seen: stopping the groups here, then leaving.
    shutting_down: bool,
    /// Why this agent must leave and exit with an error (its state
    /// directory cannot be written): it stops its groups, leaves cleanly,
    /// then exits non-zero.
    fatal: Option<String>,
    cluster: String,
    timing: tandem_core::config::Timing,
    topo: Topology,
    me: usize,
    member: Member,
    started: Instant,
    events: VecDeque<EventRecord>,
    sockets: Vec<Option<Rc<UdpSocket>>>,
    control_path: PathBuf,
    control_group: Option<String>,
    state: StateFile,
    config_epoch: Option<u64>,
    /// Last quorum state logged, so a change of votes alone reads as such.
    last_quorate: std::cell::Cell<Option<bool>>,
}

impl Agent {
    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn log(&mut self, event: impl Into<AgentEvent>) {
        let event = event.into();
        // The configuration's secrets never reach the log, the journal,
        // status, the API or alert programs (a failure text may echo one).
        let event = crate::event::scrubbed(event, &self.secrets).unwrap_or(AgentEvent::Note {
            text: "(an event withheld: it could not be scrubbed of secrets)".into(),
        });
        let text = event.to_string();
        let at = unix_ms();
        self.tally.observe(at, &event);
        if let Some(a) = self.alerts.as_mut() {
            a.send(crate::clock::unix_us(), &event);
        }
        crate::logging::emit(
            crate::logging::Program::Agent,
            event.severity(),
            &self.topo.names[self.me],
            &event.kind(),
            &text,
        );
        if self.events.len() == EVENT_HISTORY {
            self.events.pop_front();
        }
        let record = EventRecord {
            at_unix_ms: at,
            text,
            event: Some(event),
        };
        self.journal.append(&record);
        self.events.push_back(record);
    }

    async fn bind(&mut self, tx: &mpsc::Sender<(usize, Vec<u8>)>) -> Result<()> {
        for link in 0..self.topo.links.len() {
            let Some(addr) = self.topo.addrs[self.me][link] else {
                self.sockets.push(None);
                continue;
            };
            let sock = Rc::new(UdpSocket::bind(addr).await.with_context(|| {
                format!(
                    "binding heartbeat socket {addr} on link {} (is another agent running, and is this address on this machine?)",
                    self.topo.links[link]
                )
            })?);
            self.sockets.push(Some(sock.clone()));
            let tx = tx.clone();
            tokio::task::spawn_local(async move {
                let mut buf = vec![0u8; wire::MAX_PACKET + 1];
                loop {
                    match sock.recv_from(&mut buf).await {
                        // A full queue drops: heartbeats are periodic, the next one comes.
                        Ok((n, _)) => {
                            let _ = tx.try_send((link, buf[..n].to_vec()));
                        }
                        Err(_) => tokio::time::sleep(Duration::from_millis(10)).await,
                    }
                }
            });
        }
        Ok(())
    }

    async fn run(mut self) -> Result<()> {
        let (tx, mut rx) = mpsc::channel::<(usize, Vec<u8>)>(RX_QUEUE);
        self.bind(&tx).await?;
        let control = bind_control(&self.control_path, self.control_group.as_deref())?;
        if let Some(a) = self.alerts.as_mut() {
            a.spawn_workers();
        }
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let links: Vec<&str> = (0..self.topo.links.len())
            .filter(|&l| self.sockets[l].is_some())
            .map(|l| self.topo.links[l].as_str())
            .collect();
        let started = AgentEvent::AgentStarted {
            incarnation: self.member.incarnation(),
            links: links.iter().map(|l| l.to_string()).collect(),
            control_socket: self.control_path.display().to_string(),
            state_file: self.state.path().display().to_string(),
        };
        self.log(started);
        let text = self.watchdog.describe();
        self.log(AgentEvent::Watchdog { text });
        self.flush().await?;
        let mut shutdown_deadline: Option<Instant> = None;
        let control_open = Rc::new(std::cell::Cell::new(0usize));
        let (ctl_tx, mut ctl_rx) = mpsc::channel::<LoopCall>(crate::control::LOOP_QUEUE);
        let handler = Handler::new(ctl_tx, self.hub.clone()).with_events(self.peer_service.clone());
        self.peer_service.set_handler(handler.clone());
        for problem in self.peer_service.clone().serve().await {
            self.log(AgentEvent::ServiceUnavailable { what: problem });
        }
        if let Some(what) = self.api_problem.take() {
            self.log(AgentEvent::ServiceUnavailable { what });
        }
        if let Some(api) = self.api.take() {
            self.log(AgentEvent::HttpListening {
                address: api.address.to_string(),
                tls: api.tls(),
            });
            // A thread and runtime of its own: TLS handshakes and requests
            // (a stranger may open them by the dozen) never hold up the
            // heartbeats; what the API asks of the loop goes through the
            // handler's bounded queue like the control socket's.
            let (h, tally) = (handler.clone(), self.tally.clone());
            let me = self.topo.names[self.me].clone();
            let spawned = std::thread::Builder::new()
                .name("tandem-http".into())
                .spawn(move || {
                    match tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                    {
                        Ok(rt) => rt.block_on(api.serve(h, tally)),
                        Err(e) => crate::logging::emit(
                            crate::logging::Program::Agent,
                            crate::logging::Severity::Error,
                            &me,
                            "service_unavailable",
                            &format!("the HTTP API's runtime could not start ({e}); no HTTP API"),
                        ),
                    }
                });
            if let Err(e) = spawned {
                self.log(AgentEvent::ServiceUnavailable {
                    what: format!("the HTTP API's thread could not start ({e}); no HTTP API"),
                });
            }
        }
        // systemd (Type=notify): ready once the loop runs; the watchdog
        // is fed from the loop itself, so a hung loop is restarted.
        self.sd.notify(&format!(
            "READY=1\nSTATUS=member of cluster {} as {}",
            self.cluster, self.topo.names[self.me]
        ));
        let sd_every_ms = self
            .sd
            .watchdog_interval()
            .map(|d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX));
        let mut sd_due_ms = sd_every_ms.map(|e| self.now_ms() + e);
        loop {
            // The lease is checked before any input is handled: a node that
            // was frozen drops its addresses first thing when it resumes.
            self.drive();
            self.flush().await?;
            if self.fatal.is_some() {
                self.begin_shutdown(&mut shutdown_deadline);
            }
            if self.shutting_down
                && (!self.runner.as_ref().is_some_and(Runner::any_active)
                    || shutdown_deadline.is_some_and(|d| Instant::now() >= d))
            {
                break;
            }
            if let (Some(due), Some(every)) = (sd_due_ms, sd_every_ms) {
                let now = self.now_ms();
                if now >= due {
                    self.sd.notify("WATCHDOG=1");
                    sd_due_ms = Some(now + every);
                }
            }
            let mut next = self.member.next_deadline();
            if let Some(d) = self.watchdog.next_deadline() {
                next = next.min(d);
            }
            if let Some(d) = sd_due_ms {
                next = next.min(d);
            }
            if let Some(r) = &self.runner {
                if let Some(d) = r.next_deadline() {
                    next = next.min(d);
                }
                if r.any_active() {
                    if let Some(u) = self.member.lease_until(self.now_ms()) {
                        next = next.min(u);
                    }
                }
            }
            let deadline = self.started + Duration::from_millis(next);
            tokio::select! {
                Some((link, bytes)) = rx.recv() => {
                    let now = self.now_ms();
                    self.member.on_datagram(now, link, &bytes);
                    // What arrived together (a beat on every link, from
                    // every peer) is handled in one pass, not one each.
                    for _ in 0..MAX_BATCH {
                        let Ok((link, bytes)) = rx.try_recv() else { break };
                        self.member.on_datagram(now, link, &bytes);
                    }
                }
                _ = tokio::time::sleep_until(deadline.into()) => {
                    let now = self.now_ms();
                    self.member.on_tick(now);
                }
                Some(done) = self.done_rx.recv() => {
                    let now = self.now_ms();
                    if let Some(r) = self.runner.as_mut() {
                        for event in r.on_done(now, done, &mut self.member) {
                            self.log(event);
                        }
                    }
                }
                conn = control.accept() => {
                    // At most MAX_CONTROL_CONNECTIONS at once: each may hold
                    // a request of up to a configuration's size.
                    if let Ok((stream, _)) = conn {
                        if control_open.get() < MAX_CONTROL_CONNECTIONS {
                            control_open.set(control_open.get() + 1);
                            let (handler, open) = (handler.clone(), OpenSlot(control_open.clone()));
                            tokio::task::spawn_local(async move {
                                handler.serve(stream).await;
                                drop(open);
                            });
                        }
                    }
                }
                Some(r) = self.volume_rx.recv() => {
                    let now = self.now_ms();
                    self.log(AgentEvent::VolumeRequest {
                        request: describe_request(&r),
                    });
                    self.member.request(now, r);
                }
                Some(e) = self.volume_event_rx.recv() => self.log(e),
                Some((hash, text)) = self.fetched_rx.recv() => self.on_fetched(hash, text),
                Some((node, on, ok, attempts)) = self.fence_rx.recv() => {
                    let now = self.now_ms();
                    self.fences.done(&(node.clone(), on));
                    self.log(AgentEvent::FenceDone {
                        node: node.clone(),
                        power_on: on,
                        ok,
                        attempts: attempts.clone(),
                    });
                    self.member.fence_done(now, &node, on, ok, attempts);
                    self.start_fences();
                }
                Some((request, reply)) = ctl_rx.recv() => {
                    // Whoever asked gave up waiting (and was told there
                    // was no answer): do not act on it behind their back.
                    if reply.is_closed() {
                        self.log(AgentEvent::RequestDropped {
                            request: request.to_string(),
                        });
                    } else {
                        let answer = self.answer(request);
                        let _ = reply.send(answer);
                    }
                }
                _ = term.recv() => self.begin_shutdown(&mut shutdown_deadline),
                _ = int.recv() => self.begin_shutdown(&mut shutdown_deadline),
            }
            self.flush().await?;
        }
        // Disarm only when nothing may still run here: otherwise the reset
        // the device will do is the last way to stop it.
        if !self.runner.as_ref().is_some_and(Runner::any_active) {
            if let Some(event) = self.watchdog.disarm() {
                self.log(event);
            }
        } else {
            self.log(AgentEvent::LeavingActive);
        }
        if let Some(h) = &self.hub {
            h.close();
        }
        // Leave cleanly so peers need not wait for deadtime.
        self.member.leave();
        self.flush().await?;
        self.log(AgentEvent::AgentStopped);
        let _ = std::fs::remove_file(&self.control_path);
        match self.fatal.take() {
            Some(why) => Err(anyhow::anyhow!(why)),
            None => Ok(()),
        }
    }

    /// Starts queued fencings while slots are free.
    fn start_fences(&mut self) {
        while let Some((node, on)) = self.fences.start_next() {
            self.log(AgentEvent::FenceBegun {
                node: node.clone(),
                power_on: on,
            });
            let (devices, tx, started) = (
                self.fence_devices.clone(),
                self.fence_tx.clone(),
                self.started,
            );
            tokio::task::spawn_local(async move {
                let (ok, attempts) = run_fence(&devices, &node, on, started).await;
                let _ = tx.send((node, on, ok, attempts)).await;
            });
        }
    }

    fn begin_shutdown(&mut self, deadline: &mut Option<Instant>) {
        if self.shutting_down {
            return;
        }
        self.shutting_down = true;
        self.sd.notify("STOPPING=1");
        *deadline = Some(Instant::now() + SHUTDOWN_LIMIT);
        if let Some(r) = self.runner.as_mut() {
            r.shut_down();
            if r.any_active() {
                self.log(AgentEvent::AgentStopping);
            }
        }
    }

    /// One runner pass (wants, actions, checks), logging what it did,
    /// then the watchdog's feeding by what the pass left.
    fn drive(&mut self) {
        let now = self.now_ms();
        self.config_step(now);
        if let Some(r) = self.runner.as_mut() {
            for event in r.drive(now, &mut self.member) {
                self.log(event);
            }
        }
        if let Some(e) = self.runner.as_ref().and_then(Runner::lease_write_error) {
            let e = e.to_string();
            self.fail_state_dir(format!("the lease file cannot be written ({e})"));
        }
        let active = self.runner.as_ref().is_some_and(Runner::any_active);
        let lease = self.member.lease_valid(now);
        if let Some(h) = &self.hub {
            h.set_may_run(lease);
            h.set_record(self.member.agreement().record());
        }
        if let Some(event) = self.watchdog.tick(now, lease, active) {
            self.log(event);
        }
    }

    /// The state directory cannot be written: the lease is lost (the
    /// guard would act on a stale file), so this node releases its space
    /// reserve (to persist what it must on the way out), stops its groups,
    /// leaves with a statement of what it still runs, and exits with an
    /// error. Said once.
    fn fail_state_dir(&mut self, why: String) {
        if self.fatal.is_some() {
            return;
        }
        let event = AgentEvent::StateDirFailed {
            why,
            freed_reserve: self.state.release_reserve(),
            dir: self
                .state
                .path()
                .parent()
                .map_or_else(String::new, |p| p.display().to_string()),
        };
        self.fatal = Some(event.to_string());
        self.log(event);
    }

    /// Answers one control request that needs the loop's state (the
    /// [`crate::control::Handler`] forwards them here).
    fn answer(&mut self, request: ControlRequest) -> ControlResponse {
        if request == ControlRequest::Status {
            return ControlResponse::Status {
                status: Box::new(self.status()),
            };
        }
        if let Err(e) = self.check_request(&request) {
            return e.into();
        }
        let Some(r) = request.to_member() else {
            // Volume commands never reach the loop; should one, say so
            // rather than pretend it was done.
            return ControlError::Malformed {
                why: format!("`{request}` is answered by the volumes, not the agent's loop"),
            }
            .into();
        };
        let now = self.now_ms();
        self.log(AgentEvent::OperatorRequest {
            request: request.to_string(),
        });
        self.member.request(now, r);
        ControlResponse::Accepted
    }

    /// Refuses requests that name unknown groups or nodes, with the names
    /// that exist.
    fn check_request(&self, r: &ControlRequest) -> std::result::Result<(), ControlError> {
        let groups: Vec<String> = self
            .runner
            .as_ref()
            .map(|ru| ru.local_status().into_iter().map(|g| g.name).collect())
            .unwrap_or_default();
        let hosts: Vec<String> = self.topo.hosts().cloned().collect();
        let group_ok = |g: &str| {
            if groups.iter().any(|x| x == g) {
                Ok(())
            } else {
                Err(ControlError::UnknownGroup {
                    name: g.to_string(),
                    known: groups.clone(),
                })
            }
        };
        let node_ok = |n: &str| {
            if hosts.iter().any(|x| x == n) {
                Ok(())
            } else {
                Err(ControlError::UnknownNode {
                    name: n.to_string(),
                    known: hosts.clone(),
                })
            }
        };
        match r {
            ControlRequest::Move { group, node } => {
                group_ok(group)?;
                node.as_deref().map_or(Ok(()), node_ok)
            }
            ControlRequest::Failover { group }
            | ControlRequest::Cleanup { group }
            | ControlRequest::Maintenance { group, .. } => group_ok(group),
            ControlRequest::Standby { node, .. } => node_ok(node),
            ControlRequest::Voter { node, vote } => {
                node_ok(node)?;
                // What can never be done is said at once (the leader
                // checks again: this node's log may be behind).
                self.member
                    .voter_refusal(node, *vote)
                    .map(|_| ())
                    .map_err(|why| ControlError::VoterRefused { why })
            }
            ControlRequest::Fence { node, .. } => {
                node_ok(node)?;
                if crate::fence_agent::covers(&self.fence_devices, node) {
                    Ok(())
                } else {
                    Err(ControlError::NoFenceDevice { node: node.clone() })
                }
            }
            ControlRequest::ConfigBegin { hash } => {
                if self.cs.store.text(hash).is_some() {
                    Ok(())
                } else {
                    Err(ControlError::ConfigRefused {
                        why: vec![format!("configuration {hash} is not staged on this node")],
                    })
                }
            }
            ControlRequest::Status
            | ControlRequest::Volume { .. }
            | ControlRequest::Events { .. }
            | ControlRequest::Report { .. }
            | ControlRequest::ConfigApply { .. } => Ok(()),
        }
    }

    /// Applies the core's output: persist, then send, then log.
    async fn flush(&mut self) -> Result<()> {
        let MemberOutput {
            persist,
            transmit,
            events,
            fence,
        } = {
            self.member.step();
            self.member.take_output()
        };
        for (node, on) in fence {
            if self.fences.request((node.clone(), on)) == tandem_core::fence::Request::QueueFull {
                // A failure the core retries later, shown in status.
                let now = self.now_ms();
                let why = format!(
                    "not started: {MAX_QUEUED_FENCES} fencings already waiting for one of {MAX_CONCURRENT_FENCES} slots"
                );
                self.log(AgentEvent::FenceNotStarted {
                    node: node.clone(),
                    reason: why.clone(),
                });
                self.member.fence_done(now, &node, on, false, vec![why]);
            }
        }
        self.start_fences();
        if let Some(p) = persist {
            // Never send a vote or an entry that is not on disk: stop instead.
            if let Err(e) = self.state.save(&p) {
                // A full filesystem: the reserve makes room to leave cleanly.
                let e = format!("{e:#}");
                self.fail_state_dir(format!("the state file cannot be written ({e})"));
                self.state.save(&p).context(
                    "saving the agreement state; the agent stops rather than risk its promises",
                )?;
            }
        }
        for t in transmit {
            let (Some(sock), Some(to)) = (
                self.sockets.get(t.link).cloned().flatten(),
                self.topo.index_of(t.to),
            ) else {
                continue;
            };
            if let Some(dst) = self.topo.addrs[to][t.link] {
                // Unreachable peers are the failure detector's business.
                let _ = sock.send_to(&t.bytes, dst).await;
            }
        }
        for e in events {
            if let Some(event) = self.describe(&e) {
                self.log(event);
            }
        }
        let epoch = self.member.agreement().record().config_epoch;
        if epoch > 0 && self.config_epoch != Some(epoch) {
            self.config_epoch = Some(epoch);
            self.log(AgentEvent::ConfigEpoch { epoch });
        }
        let note = (!self.member.config_committed()).then(|| AgentEvent::ConfigNotCommitted {
            mine: self.config.hash.clone(),
            committed: self.member.agreement().record().config_hash.clone(),
        });
        if note != self.config_note {
            if let Some(n) = &note {
                self.log(n.clone());
            } else if self.config_note.is_some() {
                self.log(AgentEvent::ConfigCommitted {
                    identity: self.config.hash.clone(),
                });
            }
            self.config_note = note;
        }
        Ok(())
    }
}

/// Starts the lease guard in its own session, so that it outlives this
/// agent however the agent dies.
fn spawn_guard(lease_path: &Path, node: &str) -> Result<()> {
    let exe = std::env::current_exe().context("finding this program to start the guard")?;
    let mut cmd = std::process::Command::new(exe);
    cmd.args(["guard", "--lease-file"])
        .arg(lease_path)
        .args([
            "--agent-pid",
            &std::process::id().to_string(),
            "--label",
            node,
        ])
        // The guard logs where and as the agent does.
        .args(crate::logging::options().to_args())
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null());
    crate::child::own_session(&mut cmd);
    cmd.spawn().context("starting the lease guard")?;
    Ok(())
}

/// Binds the control socket: readable and writable by root only, or also
/// by `group` when configured. Refuses to replace the socket of an agent
/// that is still answering.
fn bind_control(path: &Path, group: Option<&str>) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    if path.exists() {
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            bail!(
                "another agent is running with control socket {}; stop it first",
                path.display()
            );
        }
        std::fs::remove_file(path)
            .with_context(|| format!("removing stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding control socket {}", path.display()))?;
    let mode = match group {
        Some(g) => {
            let gid = group_id(g)?;
            std::os::unix::fs::chown(path, None, Some(gid))
                .with_context(|| format!("giving {} to group {g}", path.display()))?;
            0o660
        }
        None => 0o600,
    };
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))
        .with_context(|| format!("restricting {}", path.display()))?;
    Ok(listener)
}

/// The numeric id of group `name`, from /etc/group.
pub fn group_id(name: &str) -> Result<u32> {
    let text = std::fs::read_to_string("/etc/group").context("reading /etc/group")?;
    text.lines()
        .filter_map(|l| {
            let mut f = l.split(':');
            let n = f.next()?;
            let gid = f.nth(1)?.parse().ok()?;
            Some((n, gid))
        })
        .find(|(n, _)| *n == name)
        .map(|(_, g)| g)
        .with_context(|| format!("control_group {name}: no such group in /etc/group; create it or remove control_group"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn group_lookup_says_what_to_do() {
        assert_eq!(group_id("root").unwrap(), 0);
        let err = format!("{:#}", group_id("no-such-group-xyz").unwrap_err());
        assert!(err.contains("create it"), "{err}");
    }
}
