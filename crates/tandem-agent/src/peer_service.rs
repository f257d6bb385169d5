//! What agents serve each other for operators: each node's event journal
//! (merged across the cluster for `tandem events` on any node) and each
//! node's part of `tandem report` ([`crate::node_report`]).
//!
//! Every node serves its journal ([`crate::event_journal`]) to its peers on
//! each of its link addresses, TCP port [`EVENTS_PORT`], behind the
//! replication link's handshake under the name `events` (both ends prove
//! the cluster key; only a member, from its own address, is served). The
//! asking node reads its own journal, asks every peer at once (each over
//! its links in turn, within [`FETCH_LIMIT`]), and merges by time; a peer
//! that does not answer is named, not waited for.
//!
//! It also carries a configuration change (`tandem config apply`): the
//! node the operator asked offers the new configuration to every peer
//! (`config-stage`: each checks it on its own machine, keeps it staged and
//! says whether it accepts it), and a node whose configuration is behind
//! the cluster's fetches the committed one from a peer (`config-fetch`).
//!
//! One request, one answer, then the connection closes. Frames are the
//! replication link's (`kind u8 | length u32 | body`), sealed; bodies are
//! JSON. At most [`MAX_UNAUTHENTICATED`] connections in authentication at
//! once, each for at most the handshake's limit.

use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tandem_core::config::Config;
use tandem_core::volume::link::FRAME_HEADER;
use tandem_core::volume::seal::{self, Session};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

use crate::status::EventRecord;

/// TCP port every node serves its journal on, on each link address.
pub const EVENTS_PORT: u16 = 5411;
/// The handshake's name for this service.
pub const NAME: &str = "events";
/// The handshake's name for a node's part of a report.
pub const REPORT: &str = "report";
/// Limit on one peer's report, connection included (within the control
/// client's 8 s).
pub const REPORT_LIMIT: Duration = Duration::from_secs(6);
/// Limit on one peer's answer, connection included.
pub const FETCH_LIMIT: Duration = Duration::from_secs(3);
/// The handshake's name for offering a configuration to a peer.
pub const STAGE: &str = "config-stage";
/// The handshake's name for asking a peer for a configuration's text.
pub const CONFIG_FETCH: &str = "config-fetch";
/// The handshake's name for a new node's first ask (`tandem agent
/// --join`): the configuration that lists it, and its name there.
pub const JOIN: &str = "join";
/// Limit on one peer's check of a configuration offered to it (it runs
/// the fence and resource agents' own checks of their options).
pub const STAGE_LIMIT: Duration = Duration::from_secs(25);
/// Most events one answer carries (the newest).
pub const MAX_EVENTS: usize = 20_000;
/// Largest frame read (an answer of [`MAX_EVENTS`] events fits).
const MAX_FRAME: usize = 16 << 20;
/// Connections in authentication at once; more are closed at once.
const MAX_UNAUTHENTICATED: usize = 4;
const K_ASK: u8 = 1;
const K_EVENTS: u8 = 2;

/// One event and the node it happened on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeEvent {
    /// The node whose agent logged it.
    pub node: String,
    /// The event.
    #[serde(flatten)]
    pub record: EventRecord,
}

/// What a node asks a peer for.
#[derive(Debug, Clone, Copy, Serialize, Deserialize)]
struct Ask {
    since_unix_ms: u64,
    max: usize,
}

/// A configuration offered to a peer.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct StageAsk {
    text: String,
}

/// A configuration asked of a peer, by its identity hash.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct FetchAsk {
    hash: String,
}

/// What a member answers a new node (`tandem agent --join`): the
/// configuration it runs (the committed one, or during a change the one
/// it switched to), which lists the new node (it was identified by the
/// address it connected from), and that node's name there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct JoinAnswer {
    /// The new node's name in the configuration.
    pub node: String,
    /// The configuration's text, as the member keeps it.
    pub text: String,
}

/// A node's answer to a configuration offered to it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "verdict", rename_all = "snake_case")]
pub enum StageAnswer {
    /// Checked on that node and staged there.
    Accepted,
    /// Refused, with every reason.
    Refused {
        /// What that node found wrong, one line each.
        why: Vec<String>,
    },
}

/// The cluster's events as one node gathers them.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Gathered {
    /// Every node's events, oldest first.
    pub events: Vec<NodeEvent>,
    /// Peers that did not answer, with why.
    pub unreachable: Vec<(String, String)>,
}

/// This node's side of the service: who it is, its journal, its peers.
pub struct PeerService {
    /// Its configuration as `config show` writes it (secrets redacted).
    config: std::sync::Mutex<String>,
    /// The configuration it runs (a change offered is checked against it).
    running: std::sync::Mutex<Arc<Config>>,
    /// The directory of its configuration file (relative paths in a
    /// configuration offered resolve there).
    config_dir: PathBuf,
    /// Its staged and committed configurations.
    store: crate::config_store::Store,
    /// Its configuration's secrets, scrubbed from whatever a report of
    /// this node sends (an agent's failure text that echoed a password).
    secrets: std::sync::Mutex<Vec<String>>,
    /// Its control handler, for its own status in a report (set once the
    /// loop runs).
    handler: std::sync::OnceLock<crate::control::Handler>,
    me: String,
    key: [u8; 32],
    dir: PathBuf,
    /// Each peer with its addresses (per link, in link order); a switch
    /// to a configuration that adds a node adds it here.
    peers: std::sync::Mutex<Vec<Peer>>,
    /// This node's own addresses (per link, in link order).
    mine: Vec<Option<IpAddr>>,
    /// One gathering at a time (each may move megabytes through the
    /// agent's thread): another waits for it.
    gathering: tokio::sync::Mutex<()>,
}

impl PeerService {
    /// The service for node `me`, journal in `state_dir`, sealed with
    /// `key`; `secrets` (the configuration's) are scrubbed from its reports.
    pub fn new(
        cfg: &Config,
        me: &str,
        key: [u8; 32],
        state_dir: PathBuf,
        config_dir: PathBuf,
        secrets: Vec<String>,
    ) -> PeerService {
        PeerService {
            config: std::sync::Mutex::new(shown(cfg)),
            running: std::sync::Mutex::new(Arc::new(cfg.clone())),
            config_dir,
            store: crate::config_store::Store::new(&state_dir),
            handler: std::sync::OnceLock::new(),
            secrets: std::sync::Mutex::new(secrets),
            me: me.to_string(),
            key,
            dir: state_dir,
            peers: std::sync::Mutex::new(peers_of(cfg, me)),
            mine: cfg.node(me).map(|n| ips_of(cfg, n)).unwrap_or_default(),
            gathering: tokio::sync::Mutex::new(()),
        }
    }

    /// This node switched to configuration `cfg` (`tandem config apply`);
    /// `secrets` are scrubbed from its reports from now on.
    pub fn set_running(&self, cfg: &Config, secrets: &[String]) {
        if let Ok(mut s) = self.secrets.lock() {
            *s = secrets.to_vec();
        }
        if let Ok(mut c) = self.config.lock() {
            *c = shown(cfg);
        }
        if let Ok(mut r) = self.running.lock() {
            *r = Arc::new(cfg.clone());
        }
        if let Ok(mut p) = self.peers.lock() {
            *p = peers_of(cfg, &self.me);
        }
    }

    /// Each peer with its addresses, as the configuration running says.
    fn peers(&self) -> Vec<Peer> {
        self.peers.lock().map(|p| p.clone()).unwrap_or_default()
    }

    /// The peer whose address `ip` is, if any.
    fn peer_at(&self, ip: IpAddr) -> Option<String> {
        self.peers()
            .into_iter()
            .find(|(_, ips)| ips.contains(&Some(ip)))
            .map(|(n, _)| n)
    }

    /// Whether `node` is a peer and `ip` one of its addresses.
    fn is_peer_at(&self, node: &str, ip: IpAddr) -> bool {
        self.peers()
            .iter()
            .any(|(n, ips)| n == node && ips.contains(&Some(ip)))
    }

    /// A new node's first ask, from its address `from`: the configuration
    /// this node runs (which lists that address) and the new node's name
    /// in it.
    async fn join_answer(&self, from: IpAddr) -> Result<JoinAnswer, String> {
        let node = self.peer_at(from).ok_or_else(|| {
            format!(
                "{from} is no node's address in the configuration {} runs",
                self.me
            )
        })?;
        let running = self
            .running()
            .ok_or_else(|| format!("{} lost its own configuration", self.me))?;
        let hash = tandem_core::config::identity::of(&running).hash;
        let store = self.store.clone();
        let wanted = hash.clone();
        let text = tokio::task::spawn_blocking(move || store.text(&wanted))
            .await
            .unwrap_or_default();
        match text {
            Some(text) => Ok(JoinAnswer { node, text }),
            None => Err(format!(
                "{} keeps no text of the configuration it runs ({hash}); ask a node that took part in the change, or run `tandem config apply` with it again",
                self.me
            )),
        }
    }

    /// The configuration this node runs.
    pub fn running(&self) -> Option<Arc<Config>> {
        self.running.lock().ok().map(|r| r.clone())
    }

    /// Where relative paths of this node's configuration resolve.
    pub fn config_dir(&self) -> &std::path::Path {
        &self.config_dir
    }

    /// This node's name.
    pub fn me(&self) -> &str {
        &self.me
    }

    /// Checks configuration `text` on this machine against the one it
    /// runs and, when it passes, stages it: the answer this node gives
    /// when it is offered a change.
    pub async fn stage_here(&self, text: String) -> StageAnswer {
        let Some(running) = self.running() else {
            return StageAnswer::Refused {
                why: vec!["this agent lost its own configuration (a panic held its lock)".into()],
            };
        };
        let dir = self.config_dir.clone();
        let store = self.store.clone();
        tokio::task::spawn_blocking(move || {
            match crate::config_change::accept(&text, &dir, &running) {
                Ok(a) => match store.stage(&a.identity.hash, &text) {
                    Ok(()) => StageAnswer::Accepted,
                    Err(e) => StageAnswer::Refused {
                        why: vec![format!("cannot stage it: {e:#}")],
                    },
                },
                Err(why) => StageAnswer::Refused { why },
            }
        })
        .await
        .unwrap_or_else(|e| StageAnswer::Refused {
            why: vec![format!("its check failed: {e}")],
        })
    }

    /// Offers configuration `text` to every peer at once; each peer's
    /// answer, or why it gave none.
    pub async fn stage_everywhere(&self, text: &str) -> Vec<(String, Result<StageAnswer, String>)> {
        let ask = StageAsk {
            text: text.to_string(),
        };
        let peers = self.peers();
        let asks = peers.iter().map(|(name, ips)| {
            let ask = ask.clone();
            async move {
                (
                    name.clone(),
                    self.ask_peer(STAGE, ips, ask, STAGE_LIMIT).await,
                )
            }
        });
        futures_util::future::join_all(asks).await
    }

    /// The text of configuration `hash`, from the first peer that has it
    /// (each peer in turn, each within [`FETCH_LIMIT`]); None when none
    /// answers with it.
    pub async fn fetch_config(&self, hash: &str) -> Option<String> {
        for (_, ips) in &self.peers() {
            let ask = FetchAsk {
                hash: hash.to_string(),
            };
            let got: Result<Option<String>, String> =
                self.ask_peer(CONFIG_FETCH, ips, ask, FETCH_LIMIT).await;
            if let Ok(Some(text)) = got {
                return Some(text);
            }
        }
        None
    }

    /// The control handler whose status a report of this node carries.
    pub fn set_handler(&self, h: crate::control::Handler) {
        let _ = self.handler.set(h);
    }

    /// This node's part of a report: its events since `since_unix_ms`.
    pub async fn own_report(&self, since_unix_ms: u64) -> crate::node_report::NodeReport {
        let status = match self.handler.get() {
            Some(h) => match h.ask_loop(crate::control::ControlRequest::Status).await {
                crate::control::ControlResponse::Status { status } => {
                    serde_json::to_value(&status).ok()
                }
                _ => None,
            },
            None => None,
        };
        let config = self.config.lock().map(|c| c.clone()).unwrap_or_default();
        let r =
            crate::node_report::gather(&self.me, config, status, &self.dir, since_unix_ms).await;
        let secrets = self.secrets.lock().map(|s| s.clone()).unwrap_or_default();
        crate::node_report::scrub(r, &secrets)
    }

    /// Node `node`'s part of a report (this node's own, or a peer's over
    /// its links in turn), or why not.
    pub async fn report_of(
        &self,
        node: &str,
        since_unix_ms: u64,
    ) -> Result<crate::node_report::NodeReport, String> {
        let _one_at_a_time = self.gathering.lock().await;
        if node == self.me {
            return Ok(self.own_report(since_unix_ms).await);
        }
        let Some((_, ips)) = self.peers().into_iter().find(|(n, _)| n == node) else {
            return Err(format!("no node named {node}"));
        };
        let ask = Ask {
            since_unix_ms,
            max: crate::node_report::MAX_REPORT_EVENTS,
        };
        self.ask_peer(REPORT, &ips, ask, REPORT_LIMIT).await
    }

    /// Binds a listener on each of this node's link addresses and serves
    /// the journal there, as local tasks, until the runtime ends. An
    /// address that cannot be bound is reported and skipped.
    pub async fn serve(self: Arc<Self>) -> Vec<String> {
        let mut problems = Vec::new();
        let count = Arc::new(AtomicUsize::new(0));
        for ip in self.mine.iter().flatten().copied() {
            let at = SocketAddr::new(ip, EVENTS_PORT);
            match TcpListener::bind(at).await {
                Ok(l) => {
                    let (me, count) = (self.clone(), count.clone());
                    tokio::task::spawn_local(async move { me.accept_loop(l, count).await });
                }
                Err(e) => problems.push(format!("the event journal cannot be served on {at}: {e}")),
            }
        }
        problems
    }

    async fn accept_loop(self: Arc<Self>, l: TcpListener, count: Arc<AtomicUsize>) {
        loop {
            let Ok((stream, from)) = l.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            // Only a member's address takes one of the few slots: a
            // stranger's connections are closed at once.
            if self.peer_at(from.ip()).is_none() {
                continue;
            }
            if count.fetch_add(1, Ordering::AcqRel) >= MAX_UNAUTHENTICATED {
                count.fetch_sub(1, Ordering::AcqRel);
                continue;
            }
            let (me, count) = (self.clone(), count.clone());
            tokio::task::spawn_local(async move {
                let _ = me.answer(stream, from, &count).await;
            });
        }
    }

    /// One peer's request: authenticate (a member, from one of its own
    /// addresses), read the ask, send the journal's events.
    async fn answer(
        &self,
        mut stream: TcpStream,
        from: SocketAddr,
        count: &AtomicUsize,
    ) -> Result<()> {
        let authed = tokio::time::timeout(
            crate::peer_auth::PREAUTH_LIMIT,
            crate::peer_auth::accept(&mut stream, &self.key, |name, node| {
                // A new node does not know its name yet: its address says
                // who it is (the key proves it is one of the cluster's).
                let admitted = if name == JOIN {
                    self.peer_at(from.ip()).is_some()
                } else {
                    [NAME, REPORT, STAGE, CONFIG_FETCH].contains(&name)
                        && self.is_peer_at(node, from.ip())
                };
                admitted.then(|| name.to_string())
            }),
        )
        .await;
        count.fetch_sub(1, Ordering::AcqRel);
        let (name, mut session, _) = authed.context("handshake timed out")??;
        if name == STAGE {
            let work = async {
                let ask: StageAsk = recv(&mut stream, &mut session, K_ASK).await?;
                let answer = self.stage_here(ask.text).await;
                send(&mut stream, &mut session, K_EVENTS, &answer).await
            };
            return tokio::time::timeout(STAGE_LIMIT, work)
                .await
                .context("configuration check timed out")?;
        }
        if name == JOIN {
            let work = async {
                let _: JoinAsk = recv(&mut stream, &mut session, K_ASK).await?;
                let answer = self.join_answer(from.ip()).await;
                send(&mut stream, &mut session, K_EVENTS, &answer).await
            };
            return tokio::time::timeout(FETCH_LIMIT, work)
                .await
                .context("answering a joining node timed out")?;
        }
        if name == CONFIG_FETCH {
            let work = async {
                let ask: FetchAsk = recv(&mut stream, &mut session, K_ASK).await?;
                let store = self.store.clone();
                let text = tokio::task::spawn_blocking(move || store.text(&ask.hash))
                    .await
                    .unwrap_or_default();
                send(&mut stream, &mut session, K_EVENTS, &text).await
            };
            return tokio::time::timeout(FETCH_LIMIT, work)
                .await
                .context("configuration fetch timed out")?;
        }
        if name == REPORT {
            let work = async {
                let ask: Ask = recv(&mut stream, &mut session, K_ASK).await?;
                let r = self.own_report(ask.since_unix_ms).await;
                send(&mut stream, &mut session, K_EVENTS, &r).await
            };
            return tokio::time::timeout(REPORT_LIMIT, work)
                .await
                .context("report timed out")?;
        }
        let work = async {
            let ask: Ask = recv(&mut stream, &mut session, K_ASK).await?;
            let dir = self.dir.clone();
            let max = ask.max.min(MAX_EVENTS);
            let events = tokio::task::spawn_blocking(move || {
                crate::event_journal::read(&dir, ask.since_unix_ms, max)
            })
            .await
            .unwrap_or_default();
            send(&mut stream, &mut session, K_EVENTS, &events).await
        };
        tokio::time::timeout(FETCH_LIMIT, work)
            .await
            .context("answer timed out")?
    }

    /// This node's events and every peer's since `since_unix_ms` (at most
    /// `max` per node), merged by time.
    pub async fn gather(&self, since_unix_ms: u64, max: usize) -> Gathered {
        let _one_at_a_time = self.gathering.lock().await;
        let max = max.min(MAX_EVENTS);
        let ask = Ask { since_unix_ms, max };
        let dir = self.dir.clone();
        let own = tokio::task::spawn_blocking(move || {
            crate::event_journal::read(&dir, since_unix_ms, max)
        });
        let peers = self.peers();
        let asks = peers.iter().map(|(name, ips)| async move {
            (
                name.clone(),
                self.ask_peer(NAME, ips, ask, FETCH_LIMIT).await,
            )
        });
        let answers = futures_util::future::join_all(asks).await;
        let mut out = Gathered::default();
        let tag = |node: &str, events: Vec<EventRecord>| {
            events.into_iter().map({
                let node = node.to_string();
                move |record| NodeEvent {
                    node: node.clone(),
                    record,
                }
            })
        };
        out.events
            .extend(tag(&self.me, own.await.unwrap_or_default()));
        for (name, answer) in answers {
            match answer {
                Ok(events) => out.events.extend(tag(&name, events)),
                Err(why) => out.unreachable.push((name, why)),
            }
        }
        // Stable: events of one node at the same millisecond keep their order.
        out.events.sort_by_key(|e| e.record.at_unix_ms);
        out
    }

    /// One request to the peer whose link addresses are `ips`: each link
    /// in turn, from this node's own address on it (the peer serves a
    /// member only from that member's addresses), all within `limit`;
    /// the answer, or why the last link failed.
    async fn ask_peer<A: Serialize + Clone, T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
        ips: &[Option<IpAddr>],
        ask: A,
        limit: Duration,
    ) -> Result<T, String> {
        let mut why = String::from("no address on a link this node has");
        let pairs = ips
            .iter()
            .zip(&self.mine)
            .filter_map(|(p, m)| Some(((*p)?, (*m)?)));
        let deadline = tokio::time::Instant::now() + limit;
        for (ip, mine) in pairs {
            let at = SocketAddr::new(ip, EVENTS_PORT);
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            if left.is_zero() {
                break;
            }
            match tokio::time::timeout(left, self.ask(name, mine, at, ask.clone())).await {
                Ok(Ok(answer)) => return Ok(answer),
                Ok(Err(e)) => why = format!("{at}: {e:#}"),
                Err(_) => why = format!("{at}: no answer within {} s", limit.as_secs()),
            }
        }
        Err(why)
    }

    /// One request to the peer at `at`, from this node's address `from`,
    /// under the handshake's `name`.
    async fn ask<A: Serialize, T: for<'de> Deserialize<'de>>(
        &self,
        name: &str,
        from: IpAddr,
        at: SocketAddr,
        ask: A,
    ) -> Result<T> {
        let socket = if from.is_ipv4() {
            tokio::net::TcpSocket::new_v4()
        } else {
            tokio::net::TcpSocket::new_v6()
        }
        .context("a socket")?;
        socket
            .bind(SocketAddr::new(from, 0))
            .with_context(|| format!("binding to this node's address {from}"))?;
        let mut stream = socket.connect(at).await.context("connecting")?;
        let mut session = crate::peer_auth::dial(&mut stream, &self.key, name, &self.me).await?;
        send(&mut stream, &mut session, K_ASK, &ask).await?;
        recv(&mut stream, &mut session, K_EVENTS).await
    }
}

/// A peer's name and its address on each link, in link order.
type Peer = (String, Vec<Option<IpAddr>>);

/// Every node of `cfg` but `me`, with its addresses.
fn peers_of(cfg: &Config, me: &str) -> Vec<Peer> {
    cfg.nodes
        .iter()
        .filter(|n| n.name != me)
        .map(|n| (n.name.clone(), ips_of(cfg, n)))
        .collect()
}

/// Node `n`'s address on each link of `cfg`, in link order.
fn ips_of(cfg: &Config, n: &tandem_core::config::NodeSpec) -> Vec<Option<IpAddr>> {
    cfg.links
        .iter()
        .map(|l| n.addresses.get(&l.name).copied())
        .collect()
}

/// A new node's ask (`tandem agent --join`); it carries nothing: the
/// address it comes from names the node.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize)]
struct JoinAsk {}

/// A new node's first ask, dialled from whichever of its addresses the
/// route to `at` (a member, port [`EVENTS_PORT`] if none given) picks:
/// the configuration that lists this node and its name there. Sealed
/// with the cluster key `key`; within [`FETCH_LIMIT`].
pub async fn join(at: SocketAddr, key: &[u8; 32]) -> Result<JoinAnswer> {
    let work = async {
        let mut stream = TcpStream::connect(at)
            .await
            .with_context(|| format!("connecting to {at}"))?;
        let mut session = crate::peer_auth::dial(&mut stream, key, JOIN, "")
            .await
            .with_context(|| format!("authenticating with {at}"))?;
        send(&mut stream, &mut session, K_ASK, &JoinAsk {}).await?;
        let answer: Result<JoinAnswer, String> = recv(&mut stream, &mut session, K_EVENTS).await?;
        answer.map_err(|why| anyhow::anyhow!("{at} answered: {why}"))
    };
    tokio::time::timeout(FETCH_LIMIT, work)
        .await
        .map_err(|_| anyhow::anyhow!("{at} did not answer within {} s", FETCH_LIMIT.as_secs()))?
}

/// A configuration as `config show` writes it (secrets redacted), for
/// reports.
fn shown(cfg: &Config) -> String {
    cfg.to_toml()
        .unwrap_or_else(|e| format!("# the configuration could not be written: {e}\n"))
}

async fn send<T: Serialize>(
    s: &mut TcpStream,
    session: &mut Session,
    kind: u8,
    body: &T,
) -> Result<()> {
    let body = serde_json::to_vec(body)?;
    let len = u32::try_from(body.len()).context("a frame over 4 GiB")?;
    let mut out = Vec::with_capacity(FRAME_HEADER + body.len() + seal::TAG_LEN);
    out.push(kind);
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&body);
    session.send.seal(&mut out);
    s.write_all(&out).await.context("sending to the peer")
}

async fn recv<T: for<'de> Deserialize<'de>>(
    s: &mut TcpStream,
    session: &mut Session,
    kind: u8,
) -> Result<T> {
    let mut h = [0u8; FRAME_HEADER];
    s.read_exact(&mut h)
        .await
        .context("reading from the peer")?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
    if len > MAX_FRAME {
        bail!("a {len}-byte frame (at most {MAX_FRAME} are read)");
    }
    let mut body = vec![0u8; len + seal::TAG_LEN];
    s.read_exact(&mut body)
        .await
        .context("reading from the peer")?;
    let plain = session.recv.open(&h, &mut body)?;
    if h[0] != kind {
        bail!("unexpected frame kind {}", h[0]);
    }
    serde_json::from_slice(plain).context("a malformed answer")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Two services on loopback addresses: the asker merges both
    /// journals; a stranger's key gets nothing; a dead peer is named.
    #[test]
    fn a_node_gathers_its_peers_journals_and_names_the_silent_ones() {
        // Needs 127.0.0.2/.3 (Linux routes all of 127/8 to loopback).
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        let text = "[cluster]\nname = \"c\"\nkey_file = \"k\"\n\n[[link]]\nname = \"lan\"\n\n[[node]]\nname = \"n1\"\naddresses = { lan = \"127.0.0.21\" }\n\n[[node]]\nname = \"n2\"\naddresses = { lan = \"127.0.0.22\" }\n\n[[node]]\nname = \"n3\"\naddresses = { lan = \"127.0.0.23\" }\n";
        let cfg = tandem_core::config::load(text, std::path::Path::new("/"), &|_| {
            tandem_core::config::KeyFileFacts::Present {
                mode: 0o600,
                len: 32,
            }
        })
        .config
        .unwrap();
        for (i, d) in dirs.iter().enumerate() {
            let mut j = crate::event_journal::Journal::open(d.path());
            for at in [10 + i as u64, 20 + i as u64] {
                let event = crate::event::AgentEvent::NodeOnline {
                    node: format!("x{at}"),
                };
                j.append(&EventRecord {
                    at_unix_ms: at,
                    text: event.to_string(),
                    event: Some(event),
                });
            }
        }
        let key = [9u8; 32];
        let node = |i: usize, key: [u8; 32]| {
            Arc::new(PeerService::new(
                &cfg,
                &format!("n{}", i + 1),
                key,
                dirs[i].path().to_path_buf(),
                dirs[i].path().to_path_buf(),
                Vec::new(),
            ))
        };
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            // n1 and n2 serve; n3 does not run.
            for i in [0, 1] {
                assert!(node(i, key).serve().await.is_empty());
            }
            let g = node(0, key).gather(0, 100).await;
            let seen: Vec<(String, u64)> = g
                .events
                .iter()
                .map(|e| (e.node.clone(), e.record.at_unix_ms))
                .collect();
            assert_eq!(
                seen,
                vec![
                    ("n1".into(), 10),
                    ("n2".into(), 11),
                    ("n1".into(), 20),
                    ("n2".into(), 21)
                ]
            );
            assert_eq!(g.unreachable.len(), 1);
            assert_eq!(g.unreachable[0].0, "n3");
            let g = node(0, key).gather(15, 100).await;
            assert_eq!(g.events.len(), 2, "since");
            // Asked with another key: n2 refuses; only n1's own events.
            let g = node(0, [1u8; 32]).gather(0, 100).await;
            assert!(g.events.iter().all(|e| e.node == "n1"), "{g:?}");
            assert!(g.unreachable.iter().any(|(n, _)| n == "n2"), "{g:?}");
        });
    }

    /// `tandem config apply`'s offer over real connections: the peer that
    /// serves checks the file on its machine and stages it, the silent one
    /// is named, a change a running cluster cannot make is refused with its
    /// reason, and the staged text is fetched back by its hash.
    #[test]
    fn a_configuration_is_offered_checked_staged_and_fetched_by_hash() {
        let dirs: Vec<tempfile::TempDir> = (0..3).map(|_| tempfile::tempdir().unwrap()).collect();
        for d in &dirs {
            let k = d.path().join("k");
            std::fs::write(&k, [5u8; 32]).unwrap();
            std::fs::set_permissions(&k, std::os::unix::fs::PermissionsExt::from_mode(0o600))
                .unwrap();
        }
        let text = "[cluster]\nname = \"c\"\nkey_file = \"k\"\n\n[[link]]\nname = \"lan\"\n\n[[node]]\nname = \"n1\"\naddresses = { lan = \"127.0.0.31\" }\n\n[[node]]\nname = \"n2\"\naddresses = { lan = \"127.0.0.32\" }\n\n[[node]]\nname = \"n3\"\naddresses = { lan = \"127.0.0.33\" }\n";
        let load = |t: &str| {
            tandem_core::config::load(t, dirs[0].path(), &crate::keyfile::facts)
                .config
                .unwrap()
        };
        let cfg = load(text);
        let key = [9u8; 32];
        let node = |i: usize| {
            Arc::new(PeerService::new(
                &cfg,
                &format!("n{}", i + 1),
                key,
                dirs[i].path().to_path_buf(),
                dirs[i].path().to_path_buf(),
                Vec::new(),
            ))
        };
        let extra = format!(
            "{text}\n[[group]]\nname = \"extra\"\n[[group.resource]]\nname = \"app\"\nkind = \"process\"\ncommand = [\"/bin/sleep\", \"1000\"]\n"
        );
        let hash = tandem_core::config::identity::of(&load(&extra)).hash;
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let local = tokio::task::LocalSet::new();
        local.block_on(&rt, async {
            assert!(node(1).serve().await.is_empty());
            let asker = node(0);
            let answers = asker.stage_everywhere(&extra).await;
            let of = |n: &str| answers.iter().find(|(m, _)| m == n).map(|(_, a)| a.clone());
            assert_eq!(of("n2"), Some(Ok(StageAnswer::Accepted)), "{answers:?}");
            assert!(matches!(of("n3"), Some(Err(_))), "{answers:?}");
            assert_eq!(
                crate::config_store::Store::new(dirs[1].path()).text(&hash),
                Some(extra.clone())
            );
            assert_eq!(asker.fetch_config(&hash).await, Some(extra.clone()));
            assert_eq!(asker.fetch_config("00ff").await, None);
            let moved = text.replace("127.0.0.33", "127.0.0.34");
            let answers = asker.stage_everywhere(&moved).await;
            match &answers.iter().find(|(m, _)| m == "n2").unwrap().1 {
                Ok(StageAnswer::Refused { why }) => {
                    assert!(why[0].contains("node `n3` changed"), "{why:?}")
                }
                other => panic!("{other:?}"),
            }
        });
    }
}
