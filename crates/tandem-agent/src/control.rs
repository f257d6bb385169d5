//! The control protocol: how `tandem status`, `tandem move`, `tandem
//! volume ...` (and, later, the HTTP API) talk to the local agent.
//!
//! One request per connection, one JSON line each way:
//!
//! ```text
//! -> {"v":1,"request":"move","group":"web","node":"n2"}
//! <- {"answer":"accepted"}
//! -> {"v":1,"request":"status"}
//! <- {"answer":"status","status":{...}}
//! <- {"answer":"error","error":{"kind":"unknown_group","name":"wbe","known":["web"]}}
//! -> {"v":1,"request":"volume","command":{"command":"promote","name":"data","force":false}}
//! <- {"answer":"volume","volume":{"volumes":[...],"message":null,"error":null}}
//! ```
//!
//! `v` is [`PROTOCOL_VERSION`]; an agent refuses another version with
//! [`ControlError::Version`]. A request names only what an operator may
//! ask ([`ControlRequest`]): the cluster's internal requests (failure
//! reports, volume facts) cannot be written in it. Every request goes
//! through one [`Handler`]; the agent's main loop answers what needs its
//! state ([`Handler::handle`] forwards it), the volumes' runtime answers
//! volume commands (which may wait for the peer; the loop never waits).
//! [`Client`] is the other end.
//!
//! For an operator still running the previous `tandem` during an upgrade,
//! the bare line `status` is answered with the bare status, and any other
//! unversioned request with the previous shape of error (`{"error":
//! "..."}`), which that version shows. The other way round, a client
//! facing an agent of the previous version asks it for its status in its
//! own words, and says to restart it for anything else
//! ([`ClientError::Older`]).

use std::io::{Read as _, Write as _};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_core::http_access::Role;
use tandem_core::member::Request;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::sync::{mpsc, oneshot};

use crate::status::Status;
use crate::volume::{Hub, VolumeAnswer, VolumeCommand};

/// The protocol version this agent and client speak.
pub const PROTOCOL_VERSION: u32 = 1;
/// Largest request line read from a client: a configuration offered by
/// `tandem config apply`, escaped in JSON, fits.
pub const MAX_REQUEST_BYTES: usize = 2 * crate::config_store::MAX_CONFIG_BYTES + 4096;
/// How long a client waits for the answer to `config apply` (every node
/// checks the file, each within its own limit).
const APPLY_CLIENT_LIMIT: Duration = Duration::from_secs(60);
/// Largest answer a client reads.
pub const MAX_ANSWER_BYTES: u64 = 16 << 20;
/// How long the agent waits for a client's request line.
const READ_LIMIT: Duration = Duration::from_secs(2);
/// How long the agent waits for its main loop's answer, and for the client
/// to take the answer.
const ANSWER_LIMIT: Duration = Duration::from_secs(5);
/// How long a client waits for the agent's answer: longer than the agent
/// waits for its loop, so that a slow loop is reported as
/// [`ControlError::NoAnswer`] rather than as a client timeout.
const CLIENT_LIMIT: Duration = Duration::from_secs(8);
/// Requests queued for the main loop; beyond, [`ControlError::Busy`].
pub const LOOP_QUEUE: usize = 16;

/// What an operator may ask the agent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "request", rename_all = "snake_case", deny_unknown_fields)]
pub enum ControlRequest {
    /// This node's view of the cluster.
    Status,
    /// Pin `group` to `node` (None: clear the pin).
    Move {
        /// Group.
        group: String,
        /// Node (None: clear).
        node: Option<String>,
    },
    /// Move `group` to its next eligible node once.
    Failover {
        /// Group.
        group: String,
    },
    /// Put `node` in standby (`on`) or back online.
    Standby {
        /// Node.
        node: String,
        /// Standby (true) or online (false).
        on: bool,
    },
    /// `tandem node add|remove`: `node` votes (and may host groups) or
    /// stops voting (and hosts none).
    Voter {
        /// Node.
        node: String,
        /// Vote (add) or not (remove).
        vote: bool,
    },
    /// Maintenance of `group` on or off.
    Maintenance {
        /// Group.
        group: String,
        /// On (true) or off.
        on: bool,
    },
    /// Forget `group`'s failures.
    Cleanup {
        /// Group.
        group: String,
    },
    /// Fence `node` (or power it on, `on`).
    Fence {
        /// Node.
        node: String,
        /// Power on (true) instead of off.
        on: bool,
    },
    /// A command for this node's volumes.
    Volume {
        /// The command.
        command: VolumeCommand,
    },
    /// One node's part of `tandem report` (this node's or a peer's).
    Report {
        /// The node.
        node: String,
        /// Its events since this time, ms since the Unix epoch.
        #[serde(default)]
        since_unix_ms: Option<u64>,
    },
    /// Every node's kept events since a time, merged (`tandem events`).
    Events {
        /// Since this time, ms since the Unix epoch (None: all kept).
        #[serde(default)]
        since_unix_ms: Option<u64>,
        /// At most this many per node, the newest (None: the limit).
        #[serde(default)]
        max: Option<usize>,
    },
    /// `tandem config apply`: offer this configuration to every node and,
    /// when each accepts it, begin the change.
    ConfigApply {
        /// The new configuration file's text.
        text: String,
        /// Begin even though some nodes did not answer (they catch up
        /// when they return).
        #[serde(default)]
        force: bool,
    },
    /// Internal (from this agent's own change, never from a client): ask
    /// the leader to begin the change to the configuration `hash`, staged
    /// on every node.
    ConfigBegin {
        /// The staged configuration's identity hash.
        hash: String,
    },
}

impl ControlRequest {
    /// The role a request needs over the HTTP API: reading status (the
    /// cluster's or the volumes') is [`Role::Read`]; anything that changes
    /// something is [`Role::Operator`].
    pub fn role(&self) -> Role {
        match self {
            ControlRequest::Status
            | ControlRequest::Volume {
                command: VolumeCommand::Status { .. },
            } => Role::Read,
            _ => Role::Operator,
        }
    }

    /// Whether only root may ask it, on the control socket: a
    /// configuration change decides what every node runs as root.
    pub fn root_only(&self) -> bool {
        matches!(self, ControlRequest::ConfigApply { .. })
    }

    /// The cluster request it becomes (None: answered by this node alone).
    pub fn to_member(&self) -> Option<Request> {
        Some(match self.clone() {
            ControlRequest::Status
            | ControlRequest::Volume { .. }
            | ControlRequest::Events { .. }
            | ControlRequest::Report { .. }
            | ControlRequest::ConfigApply { .. } => return None,
            ControlRequest::ConfigBegin { hash } => Request::ConfigNext { hash },
            ControlRequest::Move { group, node } => Request::Move { group, node },
            ControlRequest::Failover { group } => Request::Failover { group },
            ControlRequest::Standby { node, on } => Request::Standby { node, on },
            ControlRequest::Voter { node, vote } => Request::Voter { node, vote },
            ControlRequest::Maintenance { group, on } => Request::Maintenance { group, on },
            ControlRequest::Cleanup { group } => Request::Cleanup { group },
            ControlRequest::Fence { node, on } => Request::Fence { node, on },
        })
    }
}

impl std::fmt::Display for ControlRequest {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ControlRequest::Status => f.write_str("status"),
            ControlRequest::Events { .. } => f.write_str("events"),
            ControlRequest::Report { node, .. } => write!(f, "report of {node}"),
            ControlRequest::Move {
                group,
                node: Some(n),
            } => write!(f, "move {group} to {n}"),
            ControlRequest::Move { group, node: None } => write!(f, "clear the move of {group}"),
            ControlRequest::Failover { group } => write!(f, "fail {group} over"),
            ControlRequest::Standby { node, on } => {
                write!(f, "node {node} {}", if *on { "standby" } else { "online" })
            }
            ControlRequest::Voter { node, vote } => {
                write!(f, "node {} {node}", if *vote { "add" } else { "remove" })
            }
            ControlRequest::Maintenance { group, on } => {
                write!(
                    f,
                    "maintenance {} for {group}",
                    if *on { "on" } else { "off" }
                )
            }
            ControlRequest::Cleanup { group } => write!(f, "clean up {group}"),
            ControlRequest::Fence { node, on: false } => write!(f, "fence {node}"),
            ControlRequest::Fence { node, on: true } => write!(f, "power {node} on"),
            ControlRequest::Volume { command } => write!(f, "volume {command:?}"),
            ControlRequest::ConfigApply { .. } => f.write_str("config apply"),
            ControlRequest::ConfigBegin { hash } => {
                write!(f, "begin the change to configuration {hash}")
            }
        }
    }
}

/// A request as it travels: the version and the request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Envelope {
    /// [`PROTOCOL_VERSION`] of the sender.
    pub v: u32,
    /// The request.
    #[serde(flatten)]
    pub request: ControlRequest,
}

/// The agent's answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "answer", rename_all = "snake_case")]
pub enum ControlResponse {
    /// The status asked for.
    Status {
        /// This node's view.
        status: Box<Status>,
    },
    /// The request was checked and passed to the leader; status shows its
    /// outcome.
    Accepted,
    /// A volume command's answer.
    Volume {
        /// Statuses, message, error.
        volume: VolumeAnswer,
    },
    /// One node's part of a report.
    Report {
        /// What it gathered.
        report: Box<crate::node_report::NodeReport>,
    },
    /// The cluster's events, merged.
    Events {
        /// Every node's events and the peers that did not answer.
        events: crate::peer_service::Gathered,
    },
    /// What `config apply` got from every node.
    ConfigApply {
        /// The outcome.
        outcome: crate::config_change::ApplyOutcome,
    },
    /// The request was refused.
    Error {
        /// Why.
        error: ControlError,
    },
}

impl From<ControlError> for ControlResponse {
    fn from(error: ControlError) -> ControlResponse {
        ControlResponse::Error { error }
    }
}

/// Why the agent refused a request.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum ControlError {
    /// No group has that name.
    #[error("no group named {name} (groups: {})", known.join(", "))]
    UnknownGroup {
        /// The name asked for.
        name: String,
        /// The groups there are.
        known: Vec<String>,
    },
    /// No node has that name.
    #[error("no node named {name} (nodes: {})", known.join(", "))]
    UnknownNode {
        /// The name asked for.
        name: String,
        /// The nodes there are.
        known: Vec<String>,
    },
    /// A fence request for a node no device lists.
    #[error("no fence device lists node {node} in its `hosts`; add it to a [[fence_device]]")]
    NoFenceDevice {
        /// The node.
        node: String,
    },
    /// `tandem node add|remove` that can never be done.
    #[error("{why}; nothing was changed")]
    VoterRefused {
        /// Why.
        why: String,
    },
    /// A volume command on a node that holds no copy.
    #[error("this node holds no copy of any volume")]
    NoVolume,
    /// The main loop's queue is full.
    #[error("the agent is busy; try again")]
    Busy,
    /// A peer asked for its part did not answer.
    #[error("{node} did not answer: {why}")]
    Unreachable {
        /// The node.
        node: String,
        /// Why.
        why: String,
    },
    /// The main loop did not answer in time (it is stopping, or stuck).
    #[error("the agent did not answer within {limit_ms} ms; check `tandem status` and its log")]
    NoAnswer {
        /// The limit.
        limit_ms: u64,
    },
    /// A configuration change this node refused (before asking anyone).
    #[error("the configuration is refused:\n  {}", why.join("\n  "))]
    ConfigRefused {
        /// Every reason.
        why: Vec<String>,
    },
    /// A request only root may make, from someone else or over HTTP.
    #[error("only root may change the configuration (it decides what every node runs as root): run `tandem config apply` as root on a node")]
    RootOnly,
    /// The request line is not a request.
    #[error("malformed request: {why}")]
    Malformed {
        /// What is wrong.
        why: String,
    },
    /// The request speaks another protocol version.
    #[error("this agent speaks control protocol version {speaks} and the request is version {got}: use the `tandem` of the agent's version")]
    Version {
        /// The request's version.
        got: u32,
        /// The agent's.
        speaks: u32,
    },
}

/// A request forwarded to the main loop, with where its answer goes.
pub type LoopCall = (ControlRequest, oneshot::Sender<ControlResponse>);

/// The one entry point for every control request, whatever carried it.
#[derive(Clone)]
pub struct Handler {
    /// The agent's main loop.
    to_loop: mpsc::Sender<LoopCall>,
    /// This node's volumes (None: it holds no copy).
    hub: Option<Arc<Hub>>,
    /// The cluster's event journals (None: not served, as in tests).
    events: Option<Arc<crate::peer_service::PeerService>>,
}

impl Handler {
    /// A handler forwarding to `to_loop`, and volume commands to `hub`.
    pub fn new(to_loop: mpsc::Sender<LoopCall>, hub: Option<Arc<Hub>>) -> Handler {
        Handler {
            to_loop,
            hub,
            events: None,
        }
    }

    /// The handler, answering `events` requests from `events` (this
    /// node's journal and its peers').
    pub fn with_events(mut self, events: Arc<crate::peer_service::PeerService>) -> Handler {
        self.events = Some(events);
        self
    }

    /// Answers one request.
    pub async fn handle(&self, request: ControlRequest) -> ControlResponse {
        if let ControlRequest::Report {
            node,
            since_unix_ms,
        } = &request
        {
            let Some(e) = &self.events else {
                return ControlError::Malformed {
                    why: "this agent keeps no event journal".into(),
                }
                .into();
            };
            return match e.report_of(node, since_unix_ms.unwrap_or(0)).await {
                Ok(r) => ControlResponse::Report {
                    report: Box::new(r),
                },
                Err(why) => ControlError::Unreachable {
                    node: node.clone(),
                    why,
                }
                .into(),
            };
        }
        if let ControlRequest::Events { since_unix_ms, max } = request {
            let Some(e) = &self.events else {
                return ControlError::Malformed {
                    why: "this agent keeps no event journal".into(),
                }
                .into();
            };
            let max = max.unwrap_or(crate::peer_service::MAX_EVENTS);
            return ControlResponse::Events {
                events: e.gather(since_unix_ms.unwrap_or(0), max).await,
            };
        }
        if let ControlRequest::ConfigApply { text, force } = request {
            let Some(e) = &self.events else {
                return ControlError::Malformed {
                    why: "the witness runs no configuration change".into(),
                }
                .into();
            };
            return crate::config_change::apply(e, self, text, force).await;
        }
        if let ControlRequest::Volume { command } = request {
            return match &self.hub {
                Some(h) => ControlResponse::Volume {
                    volume: h.command(command).await,
                },
                None => ControlError::NoVolume.into(),
            };
        }
        self.ask_loop(request).await
    }

    /// Asks the agent's main loop (what needs its state: status, the
    /// operator's requests), within [`ANSWER_LIMIT`].
    pub async fn ask_loop(&self, request: ControlRequest) -> ControlResponse {
        let (tx, rx) = oneshot::channel();
        // A full queue: the agent is busy; the client may retry.
        if self.to_loop.try_send((request, tx)).is_err() {
            return ControlError::Busy.into();
        }
        match tokio::time::timeout(ANSWER_LIMIT, rx).await {
            Ok(Ok(answer)) => answer,
            _ => ControlError::NoAnswer {
                limit_ms: ANSWER_LIMIT.as_millis() as u64,
            }
            .into(),
        }
    }

    /// Answers one request line (the Unix socket's framing) from a client
    /// that is root or not: the bytes to send back.
    pub async fn handle_line_from(&self, line: &str, root: bool) -> Vec<u8> {
        if !root {
            if let Ok(r) = parse(line.trim()) {
                if r.root_only() {
                    let answer: ControlResponse = ControlError::RootOnly.into();
                    return serde_json::to_vec(&answer).unwrap_or_default();
                }
            }
        }
        self.handle_line(line).await
    }

    /// Answers one request line (the Unix socket's framing): the bytes
    /// to send back.
    pub async fn handle_line(&self, line: &str) -> Vec<u8> {
        let line = line.trim();
        if line == "status" {
            // The previous version's status request.
            return match self.handle(ControlRequest::Status).await {
                ControlResponse::Status { status } => {
                    serde_json::to_vec(&status).unwrap_or_default()
                }
                other => legacy_error(&format!("{other:?}")),
            };
        }
        let answer = match parse(line) {
            Ok(request) => self.handle(request).await,
            Err(Parsed::Legacy) => {
                return legacy_error(
                    "this agent speaks a newer control protocol: use the `tandem` of the agent's version",
                )
            }
            Err(Parsed::Refused(e)) => e.into(),
        };
        serde_json::to_vec(&answer).unwrap_or_else(|e| {
            // A status that cannot be encoded is a bug; say so rather than
            // close the connection without a word.
            legacy_error(&format!("the agent could not encode its answer: {e}"))
        })
    }

    /// Serves one connection: reads a request line (bounded in size and
    /// time), answers it, and closes.
    pub async fn serve(&self, mut stream: tokio::net::UnixStream) {
        let read_line = async {
            let mut req = Vec::new();
            let mut buf = [0u8; 512];
            while req.len() < MAX_REQUEST_BYTES && !req.contains(&b'\n') {
                match stream.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => req.extend_from_slice(&buf[..n]),
                }
            }
            req
        };
        let Ok(req) = tokio::time::timeout(READ_LIMIT, read_line).await else {
            return;
        };
        // Who asks: root, or a member of the socket's group.
        let root = stream.peer_cred().is_ok_and(|c| c.uid() == 0);
        let answer = self
            .handle_line_from(&String::from_utf8_lossy(&req), root)
            .await;
        let _ = tokio::time::timeout(ANSWER_LIMIT, stream.write_all(&answer)).await;
    }
}

/// Why a line is not a request of this version.
enum Parsed {
    /// An unversioned request: the previous protocol.
    Legacy,
    /// Refused with this error.
    Refused(ControlError),
}

fn parse(line: &str) -> Result<ControlRequest, Parsed> {
    let value: serde_json::Value = serde_json::from_str(line).map_err(|e| {
        Parsed::Refused(ControlError::Malformed {
            why: format!("not JSON ({e})"),
        })
    })?;
    let Some(v) = value.get("v") else {
        return Err(Parsed::Legacy);
    };
    let got = v.as_u64().unwrap_or(0);
    if got != u64::from(PROTOCOL_VERSION) {
        return Err(Parsed::Refused(ControlError::Version {
            got: u32::try_from(got).unwrap_or(u32::MAX),
            speaks: PROTOCOL_VERSION,
        }));
    }
    let request = serde_json::from_value::<Envelope>(value)
        .map(|e| e.request)
        .map_err(|e| Parsed::Refused(ControlError::Malformed { why: e.to_string() }))?;
    // The agent's own step of a change: a client may not skip the checks.
    if let ControlRequest::ConfigBegin { .. } = request {
        return Err(Parsed::Refused(ControlError::Malformed {
            why: "`config_begin` is the agent's own step; use `tandem config apply`".into(),
        }));
    }
    Ok(request)
}

/// A request as the HTTP API receives it: the control socket's request
/// line (`{"v":1,"request":...}`), which must carry its version.
pub fn parse_request(text: &str) -> Result<ControlRequest, ControlError> {
    parse(text.trim()).map_err(|p| match p {
        Parsed::Refused(e) => e,
        Parsed::Legacy => ControlError::Malformed {
            why: format!("no version: write {{\"v\":{PROTOCOL_VERSION},\"request\":...}}"),
        },
    })
}

fn legacy_error(text: &str) -> Vec<u8> {
    serde_json::to_vec(&serde_json::json!({ "error": text })).unwrap_or_default()
}

/// Why a client's call failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// No agent listens there (or no permission).
    #[error("connecting to the agent at {path} (is `tandem agent` running, and are you root?)")]
    Connect {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The exchange broke off.
    #[error("talking to the agent at {path}: {source}")]
    Io {
        /// The socket.
        path: PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
    /// The answer is not one this version understands.
    #[error(
        "the agent's answer is not understood ({why}); is it the same version as this `tandem`?"
    )]
    Answer {
        /// What is wrong with it.
        why: String,
    },
    /// The agent refused the request.
    #[error("{0}")]
    Refused(#[from] ControlError),
    /// The agent is of the previous version (it answered in that
    /// version's words): restart it with this version.
    #[error("the agent runs an older version of tandem ({why}); restart it with this version")]
    Older {
        /// What it said.
        why: String,
    },
}

/// A connection-per-call client of one agent's control socket.
#[derive(Debug, Clone)]
pub struct Client {
    socket: PathBuf,
}

impl Client {
    /// A client of the agent listening on `socket`.
    pub fn new(socket: &Path) -> Client {
        Client {
            socket: socket.to_path_buf(),
        }
    }

    /// Sends one line and reads the whole answer.
    fn exchange(&self, line: &[u8], limit: Duration) -> Result<Vec<u8>, ClientError> {
        let path = || self.socket.clone();
        let mut s = std::os::unix::net::UnixStream::connect(&self.socket).map_err(|source| {
            ClientError::Connect {
                path: path(),
                source,
            }
        })?;
        let io = |source| ClientError::Io {
            path: path(),
            source,
        };
        s.set_read_timeout(Some(limit)).map_err(io)?;
        let mut msg = line.to_vec();
        msg.push(b'\n');
        // One write: the agent answers as soon as it has the line.
        s.write_all(&msg).map_err(io)?;
        let mut buf = Vec::new();
        s.take(MAX_ANSWER_BYTES).read_to_end(&mut buf).map_err(io)?;
        Ok(buf)
    }

    /// Sends `request`; returns the answer's bytes as the agent wrote
    /// them, once it is known not to be an error.
    fn call_bytes(&self, request: &ControlRequest) -> Result<Vec<u8>, ClientError> {
        let line = serde_json::to_vec(&Envelope {
            v: PROTOCOL_VERSION,
            request: request.clone(),
        })
        .map_err(|e| ClientError::Answer { why: e.to_string() })?;
        let limit = match request {
            ControlRequest::ConfigApply { .. } => APPLY_CLIENT_LIMIT,
            _ => CLIENT_LIMIT,
        };
        let buf = self.exchange(&line, limit)?;
        #[derive(Deserialize)]
        struct Head {
            answer: Option<String>,
            error: Option<serde_json::Value>,
        }
        let head: Head = serde_json::from_slice(&buf).map_err(|e| ClientError::Answer {
            why: format!("{e}: {}", String::from_utf8_lossy(&buf)),
        })?;
        match (head.answer.as_deref(), head.error) {
            (Some("error"), Some(e)) => Err(ClientError::Refused(
                serde_json::from_value::<ControlError>(e)
                    .map_err(|e| ClientError::Answer { why: e.to_string() })?,
            )),
            // The previous version's error shape: an agent older than this
            // client, which knows only its own requests.
            (None, Some(serde_json::Value::String(e))) => Err(ClientError::Older { why: e }),
            _ => Ok(buf),
        }
    }

    /// Sends `request` and decodes the answer.
    pub fn call(&self, request: &ControlRequest) -> Result<ControlResponse, ClientError> {
        let buf = self.call_bytes(request)?;
        serde_json::from_slice(&buf).map_err(|e| ClientError::Answer { why: e.to_string() })
    }

    /// The agent's status as JSON, exactly as the agent wrote it
    /// (`tandem status --json`). An agent of the previous version is asked
    /// in its own words.
    pub fn status_json(&self) -> Result<String, ClientError> {
        let buf = match self.call_bytes(&ControlRequest::Status) {
            Err(ClientError::Older { .. }) => return self.older_status(),
            other => other?,
        };
        #[derive(Deserialize)]
        struct Answer<'a> {
            #[serde(borrow)]
            status: &'a serde_json::value::RawValue,
        }
        let a: Answer<'_> = serde_json::from_slice(&buf).map_err(|e| ClientError::Answer {
            why: format!("no status in the answer ({e})"),
        })?;
        Ok(a.status.get().to_string())
    }

    /// The bare `status` line of the previous version, and its bare answer.
    fn older_status(&self) -> Result<String, ClientError> {
        let buf = self.exchange(b"status", CLIENT_LIMIT)?;
        String::from_utf8(buf).map_err(|e| ClientError::Answer { why: e.to_string() })
    }

    /// The agent's status.
    pub fn status(&self) -> Result<Status, ClientError> {
        match self.call(&ControlRequest::Status) {
            Ok(ControlResponse::Status { status }) => Ok(*status),
            Ok(other) => Err(unexpected(&other)),
            Err(ClientError::Older { .. }) => {
                let text = self.older_status()?;
                serde_json::from_str(&text).map_err(|e| ClientError::Answer { why: e.to_string() })
            }
            Err(e) => Err(e),
        }
    }

    /// Node `node`'s part of a report, its events since `since_unix_ms`.
    pub fn report(
        &self,
        node: &str,
        since_unix_ms: Option<u64>,
    ) -> Result<crate::node_report::NodeReport, ClientError> {
        match self.call(&ControlRequest::Report {
            node: node.to_string(),
            since_unix_ms,
        })? {
            ControlResponse::Report { report } => Ok(*report),
            other => Err(unexpected(&other)),
        }
    }

    /// Every node's kept events since `since_unix_ms`, merged.
    pub fn events(
        &self,
        since_unix_ms: Option<u64>,
    ) -> Result<crate::peer_service::Gathered, ClientError> {
        match self.call(&ControlRequest::Events {
            since_unix_ms,
            max: None,
        })? {
            ControlResponse::Events { events } => Ok(events),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends an operator request; Ok once the agent accepted it.
    pub fn request(&self, request: &ControlRequest) -> Result<(), ClientError> {
        match self.call(request)? {
            ControlResponse::Accepted => Ok(()),
            other => Err(unexpected(&other)),
        }
    }

    /// Sends a volume command.
    pub fn volume(&self, command: VolumeCommand) -> Result<VolumeAnswer, ClientError> {
        match self.call(&ControlRequest::Volume { command })? {
            ControlResponse::Volume { volume } => Ok(volume),
            other => Err(unexpected(&other)),
        }
    }
}

fn unexpected(answer: &ControlResponse) -> ClientError {
    let word = match answer {
        ControlResponse::Status { .. } => "status",
        ControlResponse::Accepted => "accepted",
        ControlResponse::Volume { .. } => "volume",
        ControlResponse::Events { .. } => "events",
        ControlResponse::Report { .. } => "report",
        ControlResponse::ConfigApply { .. } => "config_apply",
        ControlResponse::Error { .. } => "error",
    };
    ClientError::Answer {
        why: format!("an answer of kind `{word}` to another request"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn handler_with_loop(
        answer: impl Fn(ControlRequest) -> ControlResponse + 'static,
    ) -> (Handler, tokio::task::JoinHandle<()>) {
        let (tx, mut rx) = mpsc::channel::<LoopCall>(LOOP_QUEUE);
        let task = tokio::task::spawn_local(async move {
            while let Some((req, reply)) = rx.recv().await {
                let _ = reply.send(answer(req));
            }
        });
        (Handler::new(tx, None), task)
    }

    fn run<F: std::future::Future>(f: F) -> F::Output {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        tokio::task::LocalSet::new().block_on(&rt, f)
    }

    #[test]
    fn requests_travel_versioned_and_tagged() {
        let e = Envelope {
            v: PROTOCOL_VERSION,
            request: ControlRequest::Move {
                group: "web".into(),
                node: Some("n2".into()),
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"request":"move","group":"web","node":"n2"}"#
        );
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), e);
    }

    #[test]
    fn volume_commands_travel_tagged_in_snake_case() {
        let e = Envelope {
            v: PROTOCOL_VERSION,
            request: ControlRequest::Volume {
                command: VolumeCommand::Promote {
                    name: "data".into(),
                    force: false,
                },
            },
        };
        let text = serde_json::to_string(&e).unwrap();
        assert_eq!(
            text,
            r#"{"v":1,"request":"volume","command":{"command":"promote","name":"data","force":false}}"#
        );
        assert_eq!(serde_json::from_str::<Envelope>(&text).unwrap(), e);
    }

    #[test]
    fn internal_requests_cannot_be_written() {
        // The cluster's own failure report, as an operator might forge it.
        for line in [
            r#"{"v":1,"request":"failed","group":"web","node":"n1","reason":"x"}"#,
            r#"{"v":1,"request":"volume_facts"}"#,
            r#"{"v":1,"request":"config_begin","hash":"ab"}"#,
        ] {
            assert!(matches!(
                parse(line),
                Err(Parsed::Refused(ControlError::Malformed { .. }))
            ));
        }
    }

    #[test]
    fn only_root_may_apply_a_configuration() {
        let (tx, _rx) = mpsc::channel::<LoopCall>(1);
        let h = Handler::new(tx, None);
        let line = r#"{"v":1,"request":"config_apply","text":"x"}"#;
        let answer = run(h.handle_line_from(line, false));
        let v: serde_json::Value = serde_json::from_slice(&answer).unwrap();
        assert_eq!(v["error"]["kind"], "root_only", "{v}");
        assert!(ControlRequest::ConfigApply {
            text: String::new(),
            force: false
        }
        .root_only());
        assert!(!ControlRequest::Status.root_only());
    }

    #[test]
    fn another_version_and_unversioned_requests_are_refused_with_what_to_do() {
        match parse(r#"{"v":2,"request":"status"}"#) {
            Err(Parsed::Refused(e @ ControlError::Version { got: 2, speaks: 1 })) => {
                assert!(e.to_string().contains("agent's version"), "{e}");
            }
            _ => panic!("version 2 accepted"),
        }
        assert!(matches!(
            parse(r#"{"Move":{"group":"web","node":null}}"#),
            Err(Parsed::Legacy)
        ));
        assert!(matches!(
            parse("mvoe web"),
            Err(Parsed::Refused(ControlError::Malformed { .. }))
        ));
    }

    #[test]
    fn the_handler_forwards_to_the_loop_and_answers_volumes_itself() {
        run(async {
            let (h, _task) = handler_with_loop(|req| match req {
                ControlRequest::Cleanup { group } if group == "web" => ControlResponse::Accepted,
                ControlRequest::Cleanup { group } => ControlError::UnknownGroup {
                    name: group,
                    known: vec!["web".into()],
                }
                .into(),
                _ => ControlError::Busy.into(),
            });
            let ok = h
                .handle_line(r#"{"v":1,"request":"cleanup","group":"web"}"#)
                .await;
            assert_eq!(ok, br#"{"answer":"accepted"}"#);
            let refused = h
                .handle_line(r#"{"v":1,"request":"cleanup","group":"wbe"}"#)
                .await;
            let v: serde_json::Value = serde_json::from_slice(&refused).unwrap();
            assert_eq!(v["error"]["kind"], "unknown_group", "{v}");
            // No copy here: answered without the loop.
            let vol = h
                .handle(ControlRequest::Volume {
                    command: VolumeCommand::Status { name: None },
                })
                .await;
            assert!(matches!(
                vol,
                ControlResponse::Error {
                    error: ControlError::NoVolume
                }
            ));
            // The previous version's shapes.
            let legacy = h.handle_line(r#"{"Cleanup":{"group":"web"}}"#).await;
            let v: serde_json::Value = serde_json::from_slice(&legacy).unwrap();
            assert!(v["error"]
                .as_str()
                .unwrap()
                .contains("newer control protocol"));
        });
    }

    #[test]
    fn a_full_loop_queue_is_busy_not_a_hang() {
        run(async {
            let (tx, _rx) = mpsc::channel::<LoopCall>(1);
            let h = Handler::new(tx, None);
            // The first waits for an answer that never comes; the second
            // finds the queue full.
            let first = tokio::task::spawn_local({
                let h = h.clone();
                async move { h.handle(ControlRequest::Status).await }
            });
            tokio::task::yield_now().await;
            let second = h.handle(ControlRequest::Status).await;
            assert!(matches!(
                second,
                ControlResponse::Error {
                    error: ControlError::Busy
                }
            ));
            let first = first.await.unwrap();
            assert!(matches!(
                first,
                ControlResponse::Error {
                    error: ControlError::NoAnswer { .. }
                }
            ));
        });
    }

    #[test]
    fn client_and_handler_talk_over_a_real_socket() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("control.sock");
        let listener = std::os::unix::net::UnixListener::bind(&path).unwrap();
        listener.set_nonblocking(true).unwrap();
        let server = std::thread::spawn(move || {
            run(async move {
                let listener = tokio::net::UnixListener::from_std(listener).unwrap();
                let (h, _task) = handler_with_loop(|req| match req {
                    ControlRequest::Fence { node, .. } => {
                        ControlError::NoFenceDevice { node }.into()
                    }
                    _ => ControlResponse::Accepted,
                });
                for _ in 0..2 {
                    let (stream, _) = listener.accept().await.unwrap();
                    h.serve(stream).await;
                }
            })
        });
        let c = Client::new(&path);
        c.request(&ControlRequest::Failover {
            group: "web".into(),
        })
        .unwrap();
        let e = c
            .request(&ControlRequest::Fence {
                node: "n1".into(),
                on: false,
            })
            .unwrap_err();
        assert!(
            matches!(&e, ClientError::Refused(ControlError::NoFenceDevice { node }) if node == "n1"),
            "{e}"
        );
        assert!(
            e.to_string().contains("add it to a [[fence_device]]"),
            "{e}"
        );
        server.join().unwrap();
        let e = Client::new(&dir.path().join("none.sock"))
            .status()
            .unwrap_err();
        assert!(e.to_string().contains("is `tandem agent` running"), "{e}");
    }

    /// Over HTTP only reading status needs no more than the read role;
    /// every request that changes something, or gathers from every node
    /// (events, reports: heavy, and what peers logged), needs the
    /// operator's.
    #[test]
    fn only_status_is_read_everything_else_is_an_operators() {
        let read = [
            ControlRequest::Status,
            ControlRequest::Volume {
                command: VolumeCommand::Status { name: None },
            },
        ];
        for r in read {
            assert_eq!(r.role(), Role::Read, "{r}");
        }
        let act = [
            ControlRequest::Move {
                group: "g".into(),
                node: None,
            },
            ControlRequest::Failover { group: "g".into() },
            ControlRequest::Standby {
                node: "n".into(),
                on: true,
            },
            ControlRequest::Voter {
                node: "n".into(),
                vote: false,
            },
            ControlRequest::Maintenance {
                group: "g".into(),
                on: true,
            },
            ControlRequest::Cleanup { group: "g".into() },
            ControlRequest::Fence {
                node: "n".into(),
                on: false,
            },
            ControlRequest::Volume {
                command: VolumeCommand::Promote {
                    name: "v".into(),
                    force: false,
                },
            },
        ];
        for r in act {
            assert_eq!(r.role(), Role::Operator, "{r}");
        }
        // The HTTP body must carry its version.
        assert!(matches!(
            parse_request("{\"request\":\"status\"}"),
            Err(ControlError::Malformed { why }) if why.contains("no version")
        ));
        assert_eq!(
            parse_request("{\"v\":1,\"request\":\"status\"}\n"),
            Ok(ControlRequest::Status)
        );
    }
}
