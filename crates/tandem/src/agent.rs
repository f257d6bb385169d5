//! `tandem agent`: the node daemon's I/O shell for membership.
//!
//! Owns the sockets (one UDP socket per link, bound to this node's address
//! on it), the clock, the control socket and signals; every decision is made
//! by the sans-IO core ([`tandem_core::wire`], [`tandem_core::failure_detector`],
//! [`tandem_core::quorum`]). Runs on one thread: the work is tiny, and one
//! thread keeps idle CPU and memory low.

use std::collections::{BTreeMap, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::rc::Rc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tandem_core::config::Config;
use tandem_core::failure_detector::{Event, EventKind, FailureDetector, LinkState, NodeState};
use tandem_core::quorum::{self, MAX_VOTERS};
use tandem_core::wire::{
    self, replay::ReplayGuard, Body, ClusterId, DropReason, Header, Key, NodeId, Packet,
};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{UdpSocket, UnixListener};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::status::{EventRecord, LinkStatus, PeerStatus, QuorumStatus, Status};

/// Events kept for `tandem status`.
const EVENT_HISTORY: usize = 100;
/// Received datagrams waiting for the main loop before new ones are dropped.
const RX_QUEUE: usize = 1024;
/// Largest control request read.
const MAX_REQUEST: usize = 256;
/// Default control socket.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/tandem/control.sock";
/// Default heartbeat port of a link.
const DEFAULT_PORT: u16 = 5405;

/// Options of `tandem agent` beyond the configuration.
#[derive(Debug, Clone)]
pub struct AgentOptions {
    /// This node's name; found from local addresses when None.
    pub node: Option<String>,
    /// Control socket path, overriding the configuration's.
    pub control_socket: Option<PathBuf>,
}

/// The agent's fixed facts, derived once from the configuration.
struct Cluster {
    name: String,
    id: ClusterId,
    me: usize,
    names: Vec<String>,
    ids: Vec<NodeId>,
    links: Vec<String>,
    ports: Vec<u16>,
    mode: quorum::Mode,
}

impl Cluster {
    fn from_config(cfg: &Config, me: usize) -> Self {
        let f = &cfg.file;
        let names: Vec<String> = f.nodes.iter().map(|n| n.name.get_ref().clone()).collect();
        let two_node = f.quorum.two_node.as_ref().is_some_and(|t| *t.get_ref());
        let voters = names.len().min(MAX_VOTERS) + usize::from(f.quorum.witness.is_some());
        Cluster {
            name: f.cluster.name.get_ref().clone(),
            id: ClusterId::from_name(f.cluster.name.get_ref()),
            me,
            ids: names.iter().map(|n| NodeId::from_name(n)).collect(),
            names,
            links: f.links.iter().map(|l| l.name.get_ref().clone()).collect(),
            ports: f
                .links
                .iter()
                .map(|l| l.port.as_ref().map_or(DEFAULT_PORT, |p| *p.get_ref()))
                .collect(),
            mode: if two_node {
                quorum::Mode::TwoNode
            } else {
                quorum::Mode::Majority { voters }
            },
        }
    }

    fn name_of(&self, id: NodeId) -> &str {
        self.ids
            .iter()
            .position(|i| *i == id)
            .map_or("?", |i| &self.names[i])
    }

    fn is_voter(&self, index: usize) -> bool {
        index < MAX_VOTERS
    }
}

/// This node's address on each link (None where it has none).
fn addresses(cfg: &Config, node: usize, links: &[String]) -> Vec<Option<IpAddr>> {
    let addrs = cfg.file.nodes[node].addresses.get_ref();
    links
        .iter()
        .map(|l| {
            addrs
                .iter()
                .find(|(k, _)| k.get_ref() == l)
                .map(|(_, a)| *a.get_ref())
        })
        .collect()
}

/// Which configured node is this machine: the one whose addresses can be
/// bound here (a non-local address cannot be bound).
fn find_self(cfg: &Config, wanted: Option<&str>) -> Result<usize> {
    let nodes = &cfg.file.nodes;
    if let Some(name) = wanted {
        return nodes
            .iter()
            .position(|n| n.name.get_ref() == name)
            .with_context(|| {
                let all: Vec<&str> = nodes.iter().map(|n| n.name.get_ref().as_str()).collect();
                format!(
                    "--node {name}: no such node in the configuration (nodes: {})",
                    all.join(", ")
                )
            });
    }
    let local: Vec<usize> = (0..nodes.len())
        .filter(|&i| {
            nodes[i]
                .addresses
                .get_ref()
                .values()
                .any(|a| std::net::UdpSocket::bind(SocketAddr::new(*a.get_ref(), 0)).is_ok())
        })
        .collect();
    match local.as_slice() {
        [one] => Ok(*one),
        [] => bail!("none of the configured node addresses is on this machine; pass --node NAME or fix the addresses"),
        many => bail!(
            "several nodes' addresses are on this machine ({}); pass --node NAME",
            many.iter().map(|&i| nodes[i].name.get_ref().as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Runs the agent until SIGTERM or SIGINT.
pub fn run(cfg: Config, opts: AgentOptions) -> Result<()> {
    let me = find_self(&cfg, opts.node.as_deref())?;
    let key = crate::keyfile::load(&cfg.key_file)?;
    let previous = match &cfg.file.cluster.previous_key_file {
        Some(p) => Some(crate::keyfile::load(&tandem_core::config::resolve_path(
            cfg.key_file.parent().unwrap_or(Path::new("")),
            p.get_ref(),
        ))?),
        None => None,
    };
    let control = opts
        .control_socket
        .or_else(|| {
            cfg.file
                .cluster
                .control_socket
                .as_ref()
                .map(|p| p.get_ref().clone())
        })
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET));
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the agent's runtime")?;
    // Local tasks: the per-link receivers share sockets with the main loop.
    let local = tokio::task::LocalSet::new();
    local.block_on(&rt, Agent::start(cfg, me, key, previous, control)?.run())
}

struct Agent {
    cluster: Cluster,
    timing: tandem_core::config::Timing,
    key: Key,
    previous: Option<Key>,
    incarnation: u64,
    seq: u64,
    started: Instant,
    detector: FailureDetector,
    replay: ReplayGuard,
    dropped: BTreeMap<DropReason, u64>,
    events: VecDeque<EventRecord>,
    quorate: Option<bool>,
    sockets: Vec<Option<Rc<UdpSocket>>>,
    peer_addrs: Vec<Vec<Option<SocketAddr>>>,
    control_path: PathBuf,
    bind_plan: Vec<Option<SocketAddr>>,
}

impl Agent {
    fn start(
        cfg: Config,
        me: usize,
        key: Key,
        previous: Option<Key>,
        control_path: PathBuf,
    ) -> Result<Agent> {
        let cluster = Cluster::from_config(&cfg, me);
        let mine = addresses(&cfg, me, &cluster.links);
        let bind_plan = mine
            .iter()
            .zip(&cluster.ports)
            .map(|(a, p)| a.map(|a| SocketAddr::new(a, *p)))
            .collect();
        let peer_addrs = (0..cluster.names.len())
            .map(|n| {
                addresses(&cfg, n, &cluster.links)
                    .into_iter()
                    .zip(&cluster.ports)
                    .map(|(a, p)| a.map(|a| SocketAddr::new(a, *p)))
                    .collect()
            })
            .collect();
        let peers: Vec<NodeId> = cluster
            .ids
            .iter()
            .enumerate()
            .filter(|(i, _)| *i != me)
            .map(|(_, id)| *id)
            .collect();
        // Incarnations only grow across restarts: wall-clock µs at start.
        let incarnation = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(1, |d| d.as_micros() as u64);
        Ok(Agent {
            detector: FailureDetector::new(cfg.timing, &peers, cluster.links.len(), 0),
            timing: cfg.timing,
            cluster,
            key,
            previous,
            incarnation,
            seq: 0,
            started: Instant::now(),
            replay: ReplayGuard::default(),
            dropped: DropReason::ALL.iter().map(|r| (*r, 0)).collect(),
            events: VecDeque::new(),
            quorate: None,
            sockets: Vec::new(),
            peer_addrs,
            control_path,
            bind_plan,
        })
    }

    fn now_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    fn log(&mut self, text: String) {
        let at = unix_ms();
        eprintln!(
            "{} tandem[{}]: {text}",
            crate::status::format_utc(at),
            self.cluster.names[self.cluster.me]
        );
        if self.events.len() == EVENT_HISTORY {
            self.events.pop_front();
        }
        self.events.push_back(EventRecord {
            at_unix_ms: at,
            text,
        });
    }

    async fn run(mut self) -> Result<()> {
        let (tx, mut rx) = mpsc::channel::<(usize, Vec<u8>)>(RX_QUEUE);
        for (link, plan) in self.bind_plan.clone().into_iter().enumerate() {
            let Some(addr) = plan else {
                self.sockets.push(None);
                continue;
            };
            let sock = Rc::new(UdpSocket::bind(addr).await.with_context(|| {
                format!(
                    "binding heartbeat socket {addr} on link {} (is another agent running?)",
                    self.cluster.links[link]
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
        let control = bind_control(&self.control_path)?;
        let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut int = signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut heartbeat = tokio::time::interval(Duration::from_millis(self.timing.heartbeat_ms));
        heartbeat.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let links = self.cluster.links.join(", ");
        self.log(format!(
            "started (incarnation {}, links {links}, control socket {})",
            self.incarnation,
            self.control_path.display()
        ));
        self.update_quorum();
        loop {
            let deadline = self
                .detector
                .next_deadline()
                .map(|d| self.started + Duration::from_millis(d));
            tokio::select! {
                _ = heartbeat.tick() => self.send_all(false).await,
                Some((link, bytes)) = rx.recv() => self.receive(link, &bytes),
                _ = sleep_until_opt(deadline) => {
                    let ev = self.detector.on_tick(self.now_ms());
                    self.apply(ev);
                }
                conn = control.accept() => {
                    if let Ok((stream, _)) = conn {
                        let status = serde_json::to_vec(&self.status()).unwrap_or_default();
                        tokio::task::spawn_local(serve_control(stream, status));
                    }
                }
                _ = term.recv() => break,
                _ = int.recv() => break,
            }
        }
        // Leave cleanly so peers need not wait for deadtime.
        self.send_all(true).await;
        self.log("stopped (sent leave to every peer)".into());
        let _ = std::fs::remove_file(&self.control_path);
        Ok(())
    }

    async fn send_all(&mut self, leave: bool) {
        for link in 0..self.sockets.len() {
            let Some(sock) = self.sockets[link].clone() else {
                continue;
            };
            let body = if leave {
                Body::Leave
            } else {
                Body::Heartbeat {
                    link: link as u8,
                    heard: self.detector.heard_on(link),
                }
            };
            for peer in 0..self.cluster.names.len() {
                if peer == self.cluster.me {
                    continue;
                }
                let Some(dst) = self.peer_addrs[peer][link] else {
                    continue;
                };
                self.seq += 1;
                let header = Header {
                    cluster: self.cluster.id,
                    sender: self.cluster.ids[self.cluster.me],
                    incarnation: self.incarnation,
                    seq: self.seq,
                };
                if let Ok(bytes) = wire::encode(
                    &Packet {
                        header,
                        body: body.clone(),
                    },
                    &self.key,
                ) {
                    // Unreachable peers are the failure detector's business.
                    let _ = sock.send_to(&bytes, dst).await;
                }
            }
        }
    }

    fn receive(&mut self, link: usize, bytes: &[u8]) {
        let keys: Vec<&Key> = std::iter::once(&self.key)
            .chain(self.previous.as_ref())
            .collect();
        let verdict = wire::decode(bytes, self.cluster.id, &keys).and_then(|p| {
            let sender = p.header.sender;
            if sender == self.cluster.ids[self.cluster.me] || !self.cluster.ids.contains(&sender) {
                return Err(DropReason::UnknownNode);
            }
            self.replay.check(&p.header)?;
            Ok(p)
        });
        match verdict {
            Err(reason) => *self.dropped.entry(reason).or_default() += 1,
            Ok(p) => {
                let now = self.now_ms();
                let ev = match p.body {
                    Body::Heartbeat { .. } => {
                        self.detector
                            .on_heartbeat(now, p.header.sender, link, p.header.incarnation)
                    }
                    Body::Leave => self.detector.on_leave(now, p.header.sender),
                };
                self.apply(ev);
            }
        }
    }

    fn apply(&mut self, events: Vec<Event>) {
        if events.is_empty() {
            return;
        }
        for e in events {
            let text = self.describe(&e.kind);
            self.log(text);
        }
        self.update_quorum();
    }

    fn describe(&self, kind: &EventKind) -> String {
        let c = &self.cluster;
        match kind {
            EventKind::LinkUp { peer, link } => {
                format!("link {}/{} up", c.name_of(*peer), c.links[*link])
            }
            EventKind::LinkLate { peer, link } => {
                format!("link {}/{} late", c.name_of(*peer), c.links[*link])
            }
            EventKind::LinkDown { peer, link } => {
                format!("link {}/{} down", c.name_of(*peer), c.links[*link])
            }
            EventKind::NodeAlive { peer, .. } => format!("node {} online", c.name_of(*peer)),
            EventKind::NodeBack { peer, incarnation } => {
                format!(
                    "node {} back (new incarnation {incarnation})",
                    c.name_of(*peer)
                )
            }
            EventKind::NodeDead {
                peer,
                never_seen: false,
            } => format!("node {} dead", c.name_of(*peer)),
            EventKind::NodeDead {
                peer,
                never_seen: true,
            } => {
                format!("node {} dead (not seen since start)", c.name_of(*peer))
            }
            EventKind::NodeLeft { peer } => format!("node {} left the cluster", c.name_of(*peer)),
        }
    }

    fn quorum_view(&self) -> quorum::View {
        let heard = (0..self.cluster.names.len())
            .filter(|&i| i != self.cluster.me && self.cluster.is_voter(i))
            .filter(|&i| self.detector.node_state(self.cluster.ids[i]) == Some(NodeState::Alive))
            .count();
        quorum::view(
            self.cluster.mode,
            self.cluster.is_voter(self.cluster.me),
            heard,
            false,
        )
    }

    fn update_quorum(&mut self) {
        let v = self.quorum_view();
        if self.quorate != Some(v.quorate) {
            self.quorate = Some(v.quorate);
            let what = if v.quorate {
                "quorum gained"
            } else {
                "no quorum"
            };
            self.log(format!("{what} ({} of {} votes)", v.votes, v.expected));
        }
    }

    fn status(&self) -> Status {
        let c = &self.cluster;
        let v = self.quorum_view();
        let peers = (0..c.names.len())
            .filter(|&i| i != c.me)
            .map(|i| {
                let id = c.ids[i];
                let state = match self.detector.node_state(id) {
                    Some(NodeState::Alive) => "online",
                    Some(NodeState::Dead) => "offline",
                    Some(NodeState::Left) => "left",
                    _ => "unknown",
                };
                let links = c
                    .links
                    .iter()
                    .enumerate()
                    .map(|(l, name)| LinkStatus {
                        link: name.clone(),
                        state: match self.detector.link_state(id, l) {
                            Some(LinkState::Up) => "up",
                            Some(LinkState::Late) => "late",
                            Some(LinkState::Down) => "down",
                            _ => "unknown",
                        }
                        .to_string(),
                    })
                    .collect();
                PeerStatus {
                    name: c.names[i].clone(),
                    state: state.into(),
                    incarnation: self.replay.incarnation(id),
                    links,
                }
            })
            .collect();
        Status {
            cluster: c.name.clone(),
            node: c.names[c.me].clone(),
            incarnation: self.incarnation,
            uptime_ms: self.now_ms(),
            heartbeat_ms: self.timing.heartbeat_ms,
            deadtime_ms: self.timing.deadtime_ms,
            quorum: QuorumStatus {
                mode: match c.mode {
                    quorum::Mode::TwoNode => "two_node",
                    quorum::Mode::Majority { .. } => "majority",
                }
                .into(),
                votes: v.votes,
                expected: v.expected,
                quorate: v.quorate,
            },
            peers,
            dropped: self
                .dropped
                .iter()
                .map(|(r, n)| (r.as_str().to_string(), *n))
                .collect(),
            events: self.events.iter().cloned().collect(),
        }
    }
}

async fn sleep_until_opt(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d.into()).await,
        None => std::future::pending().await,
    }
}

/// Binds the control socket, readable and writable by root only. Refuses
/// to replace the socket of an agent that is still answering.
fn bind_control(path: &Path) -> Result<UnixListener> {
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
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    Ok(listener)
}

async fn serve_control(mut stream: tokio::net::UnixStream, status: Vec<u8>) {
    let mut req = vec![0u8; MAX_REQUEST];
    let n = match tokio::time::timeout(Duration::from_secs(2), stream.read(&mut req)).await {
        Ok(Ok(n)) => n,
        _ => return,
    };
    let reply = if String::from_utf8_lossy(&req[..n]).trim() == "status" {
        status
    } else {
        br#"{"error":"unknown request; this agent answers `status`"}"#.to_vec()
    };
    let _ = stream.write_all(&reply).await;
}

/// `tandem status`: asks the agent behind `socket` and prints its answer.
pub fn query_status(socket: &Path, json: bool) -> Result<()> {
    use std::io::{Read, Write};
    let mut s = std::os::unix::net::UnixStream::connect(socket).with_context(|| {
        format!(
            "connecting to the agent at {} (is `tandem agent` running, and are you root?)",
            socket.display()
        )
    })?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    s.write_all(b"status\n")?;
    let mut buf = Vec::new();
    s.take(16 << 20)
        .read_to_end(&mut buf)
        .context("reading the agent's answer")?;
    if json {
        println!("{}", String::from_utf8_lossy(&buf));
        return Ok(());
    }
    let status: Status =
        serde_json::from_slice(&buf).context("the agent's answer is not a status")?;
    print!("{}", status.render());
    Ok(())
}
