//! The HTTP API (`[http]`): the control protocol's handler over HTTP, and
//! Prometheus metrics.
//!
//! | method and path | role | answer |
//! |---|---|---|
//! | `GET /v1/status` | read | `{"answer":"status","status":{...}}`, as `tandem status --json` |
//! | `POST /v1/control` | read for `status` and `volume status`, operator otherwise | a [`ControlResponse`]; the body is the control socket's request line (`{"v":1,"request":"move",...}`) |
//! | `GET /metrics` | read | Prometheus text ([`crate::metrics`]) |
//! | `GET /v1/status/stream` | read | server-sent events: the status each time it changes (checked every 500 ms) |
//! | `GET /` | none | the dashboard: a page with no data in it, embedded in the binary (no CDN); it reads the stream above with the token the operator types |
//!
//! Who may ask what is [`tandem_core::http_access`]'s rule. Off loopback
//! the configuration requires TLS and a token (`config validate` refuses
//! anything else). Every limit is explicit: connections at once, the
//! request's size, the TLS handshake, the headers, a connection's life.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use axum::body::Bytes;
use axum::extract::{DefaultBodyLimit, State};
use axum::http::{header, HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tandem_core::config::{Config, HttpSpec};
use tandem_core::http_access::{bearer, Access, Refusal, Role, Token};

use crate::control::{ControlError, ControlRequest, ControlResponse, Handler};

/// Largest request body: every request the API takes is a short line
/// (`config apply`, which carries a file, is the control socket's only).
const MAX_HTTP_REQUEST_BYTES: usize = 4096;
use crate::metrics::Tally;

/// Connections served at once; more wait in the kernel's backlog until
/// one ends.
pub const MAX_CONNECTIONS: usize = 32;
/// Longest a TLS handshake may take.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(3);
/// Longest a request's headers may take to arrive.
const HEADER_LIMIT: Duration = Duration::from_secs(5);
/// Longest a connection lives (keep-alive included).
const CONNECTION_LIMIT: Duration = Duration::from_secs(60);

/// The API ready to serve: its listener and who may use it.
pub struct Api {
    listener: std::net::TcpListener,
    access: Access,
    tls: Option<tokio_rustls::TlsAcceptor>,
    /// Where it listens, for the log.
    pub address: SocketAddr,
}

impl std::fmt::Debug for Api {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Api")
            .field("address", &self.address)
            .field("tls", &self.tls.is_some())
            .finish_non_exhaustive()
    }
}

impl Api {
    /// Reads the tokens and TLS files of `[http]` and binds node `node`'s
    /// listener. Every failure names the file or address and what to do.
    pub fn prepare(cfg: &Config, spec: &HttpSpec, node: &str) -> Result<Api> {
        let node_spec = cfg
            .node(node)
            .with_context(|| format!("node {node} is not in the configuration"))?;
        let address = spec.address_of(node_spec).with_context(|| {
            format!("[http] listen = \"{}\": node {node} has no address on that link; give it one under [[node]] addresses", spec.listen)
        })?;
        let (access, tls) = load_files(cfg, spec)?;
        let listener = std::net::TcpListener::bind(address).with_context(|| {
            format!("binding the HTTP API on {address} (is another agent or program using the port? change [http] port)")
        })?;
        listener
            .set_nonblocking(true)
            .context("setting the HTTP API's socket non-blocking")?;
        Ok(Api {
            listener,
            access,
            tls,
            address,
        })
    }

    /// Whether it serves TLS.
    pub fn tls(&self) -> bool {
        self.tls.is_some()
    }

    /// Serves until the runtime ends: each connection on a task of its
    /// own, at most [`MAX_CONNECTIONS`] at once.
    pub async fn serve(self, handler: Handler, tally: Arc<Tally>) {
        let Ok(listener) = tokio::net::TcpListener::from_std(self.listener) else {
            crate::logging::emit(
                crate::logging::Program::Agent,
                crate::logging::Severity::Error,
                "",
                "http",
                "the HTTP API's listener could not join the runtime; no HTTP API",
            );
            return;
        };
        let router = router(Served {
            handler,
            tally,
            access: Arc::new(self.access),
        });
        let slots = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
        loop {
            // Wait for a slot before accepting: the backlog holds the rest.
            let Ok(permit) = slots.clone().acquire_owned().await else {
                return;
            };
            let Ok((tcp, _)) = listener.accept().await else {
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            };
            let router = router.clone();
            let tls = self.tls.clone();
            tokio::spawn(async move {
                let _permit = permit;
                match tls {
                    Some(acceptor) => {
                        if let Ok(Ok(s)) =
                            tokio::time::timeout(HANDSHAKE_LIMIT, acceptor.accept(tcp)).await
                        {
                            serve_io(s, router).await;
                        }
                    }
                    None => serve_io(tcp, router).await,
                }
            });
        }
    }
}

async fn serve_io<I>(io: I, router: Router)
where
    I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
{
    let service = hyper_util::service::TowerToHyperService::new(router);
    let conn = hyper::server::conn::http1::Builder::new()
        .timer(hyper_util::rt::TokioTimer::new())
        .header_read_timeout(HEADER_LIMIT)
        .serve_connection(hyper_util::rt::TokioIo::new(io), service);
    let _ = tokio::time::timeout(CONNECTION_LIMIT, conn).await;
}

/// The tokens and TLS identity `[http]` names, read as the agent reads
/// them at its start (also `tandem config validate`'s check of this
/// machine's files).
pub fn load_files(
    cfg: &Config,
    spec: &HttpSpec,
) -> Result<(Access, Option<tokio_rustls::TlsAcceptor>)> {
    let resolve = |p: &PathBuf| tandem_core::config::resolve_path(&cfg.base_dir, p);
    let token = |p: &Option<PathBuf>, role: &str| -> Result<Option<Token>> {
        let Some(p) = p else { return Ok(None) };
        read_token(&resolve(p), role).map(Some)
    };
    let access = Access {
        loopback: spec.is_loopback(),
        read: token(&spec.read_token_file, "read")?,
        operator: token(&spec.operator_token_file, "operator")?,
    };
    let tls = match (&spec.tls_cert, &spec.tls_key) {
        (Some(c), Some(k)) => Some(tls_acceptor(&resolve(c), &resolve(k))?),
        _ => None,
    };
    if !access.loopback && (tls.is_none() || (access.read.is_none() && access.operator.is_none())) {
        // `config validate` refuses this; never serve it anyway.
        bail!(
            "[http] on {} needs TLS and a token off loopback; run `tandem config validate`",
            spec.listen
        );
    }
    Ok((access, tls))
}

/// A role's token file: kept from other users, holding a token.
fn read_token(path: &Path, role: &str) -> Result<Token> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "reading the HTTP API's {role} token {}: create it with a long random token, mode 0600",
            path.display()
        )
    })?;
    crate::keyfile::refuse_readable(&meta, path, &format!("the HTTP API's {role} token"))?;
    if meta.len() > tandem_core::http_access::MAX_TOKEN_BYTES as u64 + 64 {
        bail!(
            "{} is {} bytes: not a token file",
            path.display(),
            meta.len()
        );
    }
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading the HTTP API's {role} token {}", path.display()))?;
    Token::from_file_text(&text).with_context(|| format!("{}", path.display()))
}

fn tls_acceptor(cert: &Path, key: &Path) -> Result<tokio_rustls::TlsAcceptor> {
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|i| i.collect::<Result<Vec<_>, _>>())
        .with_context(|| format!("reading the HTTP API's certificate {}", cert.display()))?;
    if chain.is_empty() {
        bail!("{} holds no certificate (PEM)", cert.display());
    }
    let meta = std::fs::metadata(key).with_context(|| format!("reading {}", key.display()))?;
    crate::keyfile::refuse_readable(&meta, key, "the HTTP API's private key")?;
    let key_der = PrivateKeyDer::from_pem_file(key)
        .with_context(|| format!("reading the HTTP API's private key {}", key.display()))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("choosing TLS versions")?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .with_context(|| {
            format!(
                "{} and {} do not make a usable server identity (does the key match the certificate?)",
                cert.display(),
                key.display()
            )
        })?;
    Ok(tokio_rustls::TlsAcceptor::from(Arc::new(config)))
}

/// What every request's handler shares.
#[derive(Clone)]
struct Served {
    handler: Handler,
    tally: Arc<Tally>,
    access: Arc<Access>,
}

fn router(s: Served) -> Router {
    Router::new()
        .route("/v1/status", get(status))
        .route("/v1/control", post(control))
        .route("/metrics", get(metrics))
        .route("/v1/status/stream", get(status_stream))
        .route("/", get(dashboard))
        .fallback(not_found)
        .layer(DefaultBodyLimit::max(MAX_HTTP_REQUEST_BYTES))
        .with_state(s)
}

/// An error answer in the control protocol's shape.
fn error(code: StatusCode, kind: &str, why: &str) -> Response {
    let body = serde_json::json!({ "answer": "error", "error": { "kind": kind, "why": why } });
    (code, axum::Json(body)).into_response()
}

fn refused(r: Refusal) -> Response {
    match r {
        Refusal::NoToken | Refusal::WrongToken => {
            let mut resp = error(StatusCode::UNAUTHORIZED, "unauthorized", &r.to_string());
            resp.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                header::HeaderValue::from_static("Bearer realm=\"tandem\""),
            );
            resp
        }
        Refusal::ReadOnly | Refusal::OperatorOff => {
            error(StatusCode::FORBIDDEN, "forbidden", &r.to_string())
        }
    }
}

impl Served {
    fn authorize(&self, headers: &HeaderMap, need: Role) -> Result<Role, Refusal> {
        let presented = match headers.get(header::AUTHORIZATION) {
            None => None,
            Some(v) => match v.to_str().ok().and_then(bearer) {
                Some(t) => Some(t),
                None => return Err(Refusal::WrongToken),
            },
        };
        self.access.authorize(presented, need)
    }
}

/// The HTTP status of a control answer.
pub fn status_code(answer: &ControlResponse) -> StatusCode {
    match answer {
        ControlResponse::Status { .. }
        | ControlResponse::Accepted
        | ControlResponse::Events { .. }
        | ControlResponse::Report { .. } => StatusCode::OK,
        ControlResponse::Volume { volume } if volume.error.is_some() => StatusCode::CONFLICT,
        ControlResponse::Volume { .. } => StatusCode::OK,
        ControlResponse::ConfigApply { outcome } if outcome.begun || outcome.changes.is_empty() => {
            StatusCode::OK
        }
        ControlResponse::ConfigApply { .. } => StatusCode::CONFLICT,
        ControlResponse::Error { error } => match error {
            ControlError::UnknownGroup { .. }
            | ControlError::UnknownNode { .. }
            | ControlError::NoVolume => StatusCode::NOT_FOUND,
            ControlError::NoFenceDevice { .. }
            | ControlError::ConfigRefused { .. }
            | ControlError::VoterRefused { .. } => StatusCode::CONFLICT,
            ControlError::RootOnly => StatusCode::FORBIDDEN,
            ControlError::Busy => StatusCode::SERVICE_UNAVAILABLE,
            ControlError::NoAnswer { .. } | ControlError::Unreachable { .. } => {
                StatusCode::GATEWAY_TIMEOUT
            }
            ControlError::Malformed { .. } | ControlError::Version { .. } => {
                StatusCode::BAD_REQUEST
            }
        },
    }
}

fn answer(a: ControlResponse) -> Response {
    (status_code(&a), axum::Json(a)).into_response()
}

async fn status(State(s): State<Served>, headers: HeaderMap) -> Response {
    if let Err(r) = s.authorize(&headers, Role::Read) {
        return refused(r);
    }
    answer(s.handler.handle(ControlRequest::Status).await)
}

async fn control(State(s): State<Served>, headers: HeaderMap, body: Bytes) -> Response {
    let Ok(text) = std::str::from_utf8(&body) else {
        return answer(
            ControlError::Malformed {
                why: "the body is not UTF-8".into(),
            }
            .into(),
        );
    };
    let request = match crate::control::parse_request(text) {
        Ok(r) => r,
        Err(e) => return answer(e.into()),
    };
    if let Err(r) = s.authorize(&headers, request.role()) {
        return refused(r);
    }
    if request.root_only() {
        return answer(ControlError::RootOnly.into());
    }
    answer(s.handler.handle(request).await)
}

async fn metrics(State(s): State<Served>, headers: HeaderMap) -> Response {
    if let Err(r) = s.authorize(&headers, Role::Read) {
        return refused(r);
    }
    let status = match s.handler.handle(ControlRequest::Status).await {
        ControlResponse::Status { status } => Some(status),
        _ => None,
    };
    let text = crate::metrics::render(status.as_deref(), &s.tally);
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// The dashboard's page (its script reads `/v1/status/stream`).
const DASHBOARD: &str = include_str!("dashboard.html");
/// How often a stream looks at the status.
const STREAM_EVERY: Duration = Duration::from_millis(500);
/// How often a stream that sent nothing says it is alive.
const STREAM_KEEPALIVE: Duration = Duration::from_secs(10);

async fn dashboard() -> Response {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            // Everything is in the page; it may talk to this origin only.
            (
                header::CONTENT_SECURITY_POLICY,
                "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; connect-src 'self'; img-src 'self'; frame-ancestors 'none'",
            ),
            (header::X_FRAME_OPTIONS, "DENY"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        DASHBOARD,
    )
        .into_response()
}

/// Server-sent events: the status (as `GET /v1/status` answers it) each
/// time it changes, looked at every [`STREAM_EVERY`]; a comment every
/// [`STREAM_KEEPALIVE`] otherwise. Ends with the connection's limit (the
/// page reconnects).
async fn status_stream(State(s): State<Served>, headers: HeaderMap) -> Response {
    if let Err(r) = s.authorize(&headers, Role::Read) {
        return refused(r);
    }
    struct At {
        handler: Handler,
        last: Vec<u8>,
        quiet: Duration,
        first: bool,
    }
    let start = At {
        handler: s.handler.clone(),
        last: Vec::new(),
        quiet: Duration::ZERO,
        first: true,
    };
    let stream = futures_util::stream::unfold(start, |mut at| async move {
        loop {
            if !at.first {
                tokio::time::sleep(STREAM_EVERY).await;
            }
            at.first = false;
            let answer = at.handler.handle(ControlRequest::Status).await;
            let json = serde_json::to_vec(&answer).unwrap_or_default();
            if json != at.last {
                at.quiet = Duration::ZERO;
                let mut chunk = b"data: ".to_vec();
                chunk.extend_from_slice(&json);
                chunk.extend_from_slice(b"\n\n");
                at.last = json;
                return Some((Ok::<_, std::convert::Infallible>(Bytes::from(chunk)), at));
            }
            at.quiet += STREAM_EVERY;
            if at.quiet >= STREAM_KEEPALIVE {
                at.quiet = Duration::ZERO;
                return Some((Ok(Bytes::from_static(b": alive\n\n")), at));
            }
        }
    });
    (
        [
            (header::CONTENT_TYPE, "text/event-stream"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        axum::body::Body::from_stream(stream),
    )
        .into_response()
}

async fn not_found() -> Response {
    error(
        StatusCode::NOT_FOUND,
        "not_found",
        "no such endpoint: GET /, GET /v1/status, GET /v1/status/stream, POST /v1/control, GET /metrics",
    )
}
