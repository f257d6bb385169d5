//! The NBD export of a volume: listeners on a Unix socket and/or TCP,
//! the handshake and the request loop of each client. Listeners stay open
//! on both nodes; a secondary answers the handshake with a policy error
//! that names the situation, and a demotion closes every client.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result};
use tandem_core::nbd::{self, errno, Event, ExportInfo, Handshake, Next, Op, RequestParser};
use tandem_core::volume::link::Frame;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::{mpsc, Semaphore};
use tokio_rustls::TlsAcceptor;

use super::engine::{Change, Volume};
use super::splice::{Chain, SpliceRead, MAX_SPLICED, MIN_SPLICED};
use super::stream::{Outgoing, Payload};

/// Requests of one client being served at once (pipelining depth).
const MAX_IN_FLIGHT: usize = 64;
/// Replies queued for one client's socket.
const REPLY_QUEUE: usize = 128;
/// Clients of one volume at once.
const MAX_CLIENTS: usize = 64;
/// Bytes asked of the socket per read while parsing requests.
const READ_CHUNK: usize = 64 << 10;
/// Limit on the whole handshake.
const HANDSHAKE_LIMIT: Duration = Duration::from_secs(10);

/// Serves the volume's Unix-socket export until the agent stops. The
/// socket is root-only (mode 0600): the export is not authenticated.
pub async fn serve_unix(vol: Arc<Volume>, path: &Path) -> Result<()> {
    if let Some(d) = path.parent() {
        crate::atomic_file::private_dir(d)?;
    }
    let _ = std::fs::remove_file(path);
    let l = UnixListener::bind(path)
        .with_context(|| format!("binding the NBD socket {}", path.display()))?;
    std::fs::set_permissions(path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
        .with_context(|| format!("restricting {} to root", path.display()))?;
    accept_loop(vol, None, || async {
        l.accept().await.map(|(s, _)| (s, None))
    })
    .await
}

/// Serves the volume's TCP export until the agent stops: only over TLS
/// (with a client certificate) when `tls` is given.
pub async fn serve_tcp(
    vol: Arc<Volume>,
    addr: std::net::SocketAddr,
    tls: Option<TlsAcceptor>,
) -> Result<()> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the NBD address {addr}"))?;
    accept_loop(vol, tls, || async {
        let (s, from) = l.accept().await?;
        s.set_nodelay(true).ok();
        Ok((s, Some(from.ip())))
    })
    .await
}

/// A client's connection in transmission: a stream that splits into
/// halves, with the data path each kind of stream allows (a plain socket
/// splices payloads by reference; TLS passes them through user space).
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half.
    type Read: AsyncRead + Unpin + Send + Sync + 'static;
    /// The writing half.
    type Write: AsyncWrite + Unpin + Send + Sync + 'static;
    /// Splits the stream.
    fn halves(self) -> (Self::Read, Self::Write);
    /// Reads a write payload of `len` bytes, of which the client's first
    /// `already` bytes were buffered.
    fn read_payload(
        rd: &mut Self::Read,
        already: &[u8],
        len: usize,
    ) -> impl std::future::Future<Output = std::io::Result<Payload>> + Send;
    /// Writes replies in order until the queue closes.
    fn write_replies(
        wr: Self::Write,
        rx: mpsc::Receiver<Outgoing>,
    ) -> impl std::future::Future<Output = ()> + Send;
}

/// A plain socket: payloads and replies by reference where pipes allow.
macro_rules! spliced_client_stream {
    ($stream:ty, $read:ty, $write:ty) => {
        impl ClientStream for $stream {
            type Read = $read;
            type Write = $write;
            fn halves(self) -> (Self::Read, Self::Write) {
                self.into_split()
            }
            fn read_payload(
                rd: &mut Self::Read,
                already: &[u8],
                len: usize,
            ) -> impl std::future::Future<Output = std::io::Result<Payload>> + Send {
                read_spliced_payload(rd, already, len)
            }
            fn write_replies(
                wr: Self::Write,
                rx: mpsc::Receiver<Outgoing>,
            ) -> impl std::future::Future<Output = ()> + Send {
                super::stream::write_frames(wr, rx)
            }
        }
    };
}

spliced_client_stream!(
    tokio::net::TcpStream,
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf
);
spliced_client_stream!(
    tokio::net::UnixStream,
    tokio::net::unix::OwnedReadHalf,
    tokio::net::unix::OwnedWriteHalf
);

/// A client over TLS: the data passes through user space to be
/// decrypted and encrypted.
impl<S: AsyncRead + AsyncWrite + Unpin + Send + Sync + 'static> ClientStream
    for tokio_rustls::server::TlsStream<S>
{
    type Read = tokio::io::ReadHalf<Self>;
    type Write = tokio::io::WriteHalf<Self>;
    fn halves(self) -> (Self::Read, Self::Write) {
        tokio::io::split(self)
    }
    async fn read_payload(
        rd: &mut Self::Read,
        already: &[u8],
        len: usize,
    ) -> std::io::Result<Payload> {
        super::stream::read_payload(rd, already, len)
            .await
            .map(Payload::Bytes)
    }
    fn write_replies(
        wr: Self::Write,
        rx: mpsc::Receiver<Outgoing>,
    ) -> impl std::future::Future<Output = ()> + Send {
        super::stream::write_copied_frames(wr, rx, None)
    }
}

/// Accepts clients. At most [`MAX_HANDSHAKING`] connections may be in
/// the handshake (TLS included) at once, each for at most
/// [`HANDSHAKE_LIMIT`]; only a client that completed it takes one of the
/// [`MAX_CLIENTS`] slots, at most [`MAX_CLIENTS_PER_ADDRESS`] per address
/// (an IPv6 /64 counts as one). When every slot is taken, the client idle
/// longest (at least [`IDLE_EVICT_AFTER`]) is closed to make room; if none
/// is, the newcomer is closed. So neither idle clients nor strangers that
/// never finish a handshake can lock the export's clients out.
async fn accept_loop<S, F, Fut>(vol: Arc<Volume>, tls: Option<TlsAcceptor>, accept: F) -> Result<()>
where
    S: ClientStream + Sync,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, Option<std::net::IpAddr>)>>,
{
    let clients: Arc<std::sync::Mutex<Clients>> = Arc::default();
    let handshaking = Arc::new(Semaphore::new(MAX_HANDSHAKING));
    let per_address: PerAddress = Arc::default();
    let refusals: Arc<std::sync::Mutex<Throttle>> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let Ok((s, from)) = accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let peer = from;
        let from = from.map(address_key);
        let Some(slot) = HandshakeSlot::take(&handshaking, &per_address, from) else {
            refused(
                &vol,
                &refusals,
                format!(
                    "NBD client from {} refused: {MAX_HANDSHAKING} connections in their handshake at once, {MAX_HANDSHAKING_PER_ADDRESS} per address",
                    show(peer)
                ),
            );
            continue;
        };
        let id = next_id;
        next_id += 1;
        let (vol, clients, tls, refusals) =
            (vol.clone(), clients.clone(), tls.clone(), refusals.clone());
        tokio::spawn(async move {
            let s = match tokio::time::timeout(HANDSHAKE_LIMIT, handshake(&vol, s, tls)).await {
                Ok(Ok(Some(s))) => s,
                Ok(Ok(None)) => return,
                Ok(Err(e)) => {
                    refused(
                        &vol,
                        &refusals,
                        format!("NBD handshake from {} failed: {e:#}", show(peer)),
                    );
                    return;
                }
                Err(_) => {
                    refused(
                        &vol,
                        &refusals,
                        format!(
                            "NBD client from {} did not finish its handshake within {} s",
                            show(peer),
                            HANDSHAKE_LIMIT.as_secs()
                        ),
                    );
                    return;
                }
            };
            drop(slot);
            let admitted = {
                let mut c = clients.lock().unwrap_or_else(|p| p.into_inner());
                c.admit(id, from, std::time::Instant::now())
            };
            let Some(entry) = admitted else {
                refused(
                    &vol,
                    &refusals,
                    format!(
                        "NBD client from {} refused: {MAX_CLIENTS} clients at once, {MAX_CLIENTS_PER_ADDRESS} per address, none idle for {} s",
                        show(peer),
                        IDLE_EVICT_AFTER.as_secs()
                    ),
                );
                return;
            };
            match s {
                Either::Plain(s) => transmit(vol, s, entry.clone()).await,
                Either::Tls(t) => transmit(vol, t, entry.clone()).await,
            }
            clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&entry);
        });
    }
}

/// Connections in their handshake at once, per export.
const MAX_HANDSHAKING: usize = 16;
/// Of which from one address (an IPv6 /64 counts as one): one host
/// cannot take every handshake slot.
const MAX_HANDSHAKING_PER_ADDRESS: usize = 4;

/// Handshakes under way per address.
type PerAddress = Arc<std::sync::Mutex<std::collections::BTreeMap<std::net::IpAddr, usize>>>;

/// One connection's place in the handshake limits, given back on drop.
struct HandshakeSlot {
    _permit: tokio::sync::OwnedSemaphorePermit,
    per_address: PerAddress,
    from: Option<std::net::IpAddr>,
}

impl HandshakeSlot {
    /// A place for a connection from `from`, if the limits allow one.
    fn take(
        all: &Arc<Semaphore>,
        per_address: &PerAddress,
        from: Option<std::net::IpAddr>,
    ) -> Option<HandshakeSlot> {
        let permit = all.clone().try_acquire_owned().ok()?;
        if let Some(a) = from {
            let mut m = per_address.lock().unwrap_or_else(|p| p.into_inner());
            let n = m.entry(a).or_default();
            if *n >= MAX_HANDSHAKING_PER_ADDRESS {
                return None;
            }
            *n += 1;
        }
        Some(HandshakeSlot {
            _permit: permit,
            per_address: per_address.clone(),
            from,
        })
    }
}

impl Drop for HandshakeSlot {
    fn drop(&mut self) {
        let Some(a) = self.from else {
            return;
        };
        let mut m = self.per_address.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(n) = m.get_mut(&a) {
            *n -= 1;
            if *n == 0 {
                m.remove(&a);
            }
        }
    }
}
/// Refusals and failed handshakes are logged at most this often (with a
/// count of those left out), so a flood does not push real events out of
/// the volume's bounded event list.
const REFUSAL_EVENT_EVERY: Duration = Duration::from_secs(10);

/// Rate limit of refusal events.
#[derive(Debug, Default)]
struct Throttle {
    last: Option<std::time::Instant>,
    left_out: u64,
}

impl Throttle {
    /// Whether an event may go out at `now`, and how many were left out
    /// before it.
    fn allow(&mut self, now: std::time::Instant) -> Option<u64> {
        if self
            .last
            .is_some_and(|l| now.duration_since(l) < REFUSAL_EVENT_EVERY)
        {
            self.left_out += 1;
            return None;
        }
        self.last = Some(now);
        Some(std::mem::take(&mut self.left_out))
    }
}

fn refused(vol: &Volume, throttle: &std::sync::Mutex<Throttle>, what: String) {
    vol.count_nbd_refused();
    let allowed = throttle
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .allow(std::time::Instant::now());
    match allowed {
        Some(0) => vol.event(what),
        Some(n) => vol.event(format!("{what} ({n} more refusals not logged)")),
        None => {}
    }
}

fn show(from: Option<std::net::IpAddr>) -> String {
    from.map_or_else(|| "the socket".to_string(), |a| a.to_string())
}

/// The address a client counts under: its IPv4 address, or its IPv6 /64
/// (one host usually holds a whole /64).
fn address_key(ip: std::net::IpAddr) -> std::net::IpAddr {
    match ip {
        std::net::IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => std::net::IpAddr::V4(v4),
            None => {
                let mut seg = v6.segments();
                seg[4..].fill(0);
                std::net::IpAddr::V6(seg.into())
            }
        },
        v4 => v4,
    }
}

/// Clients from one address at once.
const MAX_CLIENTS_PER_ADDRESS: usize = 8;
/// A client idle this long may be closed to make room for a new one.
const IDLE_EVICT_AFTER: Duration = Duration::from_secs(60);

/// One connected client as the accept loop tracks it.
#[derive(Debug, Clone)]
struct ClientEntry {
    id: u64,
    from: Option<std::net::IpAddr>,
    /// When it last sent a request (or connected).
    last_active: Arc<std::sync::Mutex<std::time::Instant>>,
    /// Closes it (to make room for a newcomer).
    evict: Arc<tokio::sync::Notify>,
}

impl ClientEntry {
    fn touch(&self) {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner()) = std::time::Instant::now();
    }

    fn idle_since(&self) -> std::time::Instant {
        *self.last_active.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The connected clients of one listener.
#[derive(Debug, Default)]
struct Clients {
    list: Vec<ClientEntry>,
}

impl Clients {
    /// Makes room for a client from `from` and registers it, or refuses.
    fn admit(
        &mut self,
        id: u64,
        from: Option<std::net::IpAddr>,
        now: std::time::Instant,
    ) -> Option<ClientEntry> {
        if from.is_some()
            && self.list.iter().filter(|c| c.from == from).count() >= MAX_CLIENTS_PER_ADDRESS
        {
            return None;
        }
        if self.list.len() >= MAX_CLIENTS {
            let idlest = self
                .list
                .iter()
                .filter(|c| now.duration_since(c.idle_since()) >= IDLE_EVICT_AFTER)
                .min_by_key(|c| c.idle_since())?
                .clone();
            idlest.evict.notify_one();
            self.remove(&idlest);
        }
        let entry = ClientEntry {
            id,
            from,
            last_active: Arc::new(std::sync::Mutex::new(now)),
            evict: Arc::default(),
        };
        self.list.push(entry.clone());
        Some(entry)
    }

    fn remove(&mut self, e: &ClientEntry) {
        self.list.retain(|c| c.id != e.id);
    }
}

fn export(vol: &Volume) -> ExportInfo {
    let refusal = (!vol.is_primary()).then(|| {
        format!(
            "volume `{}` is secondary on {}: connect to the primary (see `tandem volume status {}`)",
            vol.cfg.name, vol.cfg.me, vol.cfg.name
        )
    });
    ExportInfo {
        name: vol.cfg.name.clone(),
        description: format!(
            "Tandem replicated volume {} on {}",
            vol.cfg.name, vol.cfg.me
        ),
        size: vol.cfg.size,
        read_only: false,
        refusal,
    }
}

/// How option haggling ended.
enum Haggled {
    /// The client chose the export: transmission follows.
    Transmit,
    /// The client asked for TLS: run its handshake, then haggle on.
    StartTls,
    /// The connection ends.
    Close,
}

/// Runs option haggling from a read of `want` bytes, as the core's
/// [`Handshake`] directs.
async fn haggle<S: AsyncRead + AsyncWrite + Unpin>(
    h: &mut Handshake,
    s: &mut S,
    mut want: usize,
) -> Result<Haggled> {
    loop {
        let mut buf = vec![0u8; want];
        s.read_exact(&mut buf).await?;
        let (out, then) = match h.on_bytes(&buf)? {
            Next::Read(n) => {
                want = n;
                continue;
            }
            Next::SendThenRead(out, n) => {
                want = n;
                (out, None)
            }
            Next::Transmit(out) => (out, Some(Haggled::Transmit)),
            Next::StartTls(out) => (out, Some(Haggled::StartTls)),
            Next::Close(out) => (out, Some(Haggled::Close)),
        };
        s.write_all(&out).await?;
        s.flush().await?;
        if let Some(then) = then {
            return Ok(then);
        }
    }
}

/// The handshake of a client: greeting, options, and TLS where the
/// export requires it. The stream to transmit on, or `None` to close.
async fn handshake<S: ClientStream + Sync>(
    vol: &Volume,
    mut s: S,
    tls: Option<TlsAcceptor>,
) -> Result<Option<Either<S, tokio_rustls::server::TlsStream<S>>>> {
    let mut h = match tls {
        Some(_) => Handshake::requiring_tls(export(vol)),
        None => Handshake::new(export(vol)),
    };
    s.write_all(&nbd::greeting()).await?;
    match haggle(&mut h, &mut s, Handshake::first_read()).await? {
        Haggled::Transmit => Ok(Some(Either::Plain(s))),
        Haggled::Close => Ok(None),
        Haggled::StartTls => {
            // The core asks for TLS only of an export that requires it.
            let acceptor = tls.context("STARTTLS on an export without TLS")?;
            let mut t = acceptor.accept(s).await.context(
                "TLS handshake (does the client present a certificate the export's CA signed?)",
            )?;
            h.tls_started();
            match haggle(&mut h, &mut t, 16).await? {
                Haggled::Transmit => Ok(Some(Either::Tls(t))),
                Haggled::Close | Haggled::StartTls => Ok(None),
            }
        }
    }
}

/// A client's stream after the handshake.
enum Either<P, T> {
    /// As accepted.
    Plain(P),
    /// Inside TLS.
    Tls(T),
}

/// Serves requests until the client leaves, the volume is demoted, or
/// the client is closed to make room.
async fn transmit<S: ClientStream>(vol: Arc<Volume>, s: S, me: ClientEntry) {
    // A client that attached to a primary that since was demoted is cut.
    if !vol.is_primary() {
        return;
    }
    vol.lock().nbd_clients += 1;
    let (mut rd, wr) = s.halves();
    // Replies go out in order of completion, gathered per socket write.
    let (tx, rx) = mpsc::channel::<Outgoing>(REPLY_QUEUE);
    let writer = tokio::spawn(S::write_replies(wr, rx));
    let slots = Arc::new(Semaphore::new(MAX_IN_FLIGHT));
    let mut parser = RequestParser::new(vol.cfg.size, false);
    let mut buf: Vec<u8> = Vec::with_capacity(2 * READ_CHUNK);
    // Demotion cuts the client: a watcher wakes the reader (a stored
    // permit if the reader is busy).
    let cut = Arc::new(tokio::sync::Notify::new());
    let watcher = {
        let (vol, cut, evict) = (vol.clone(), cut.clone(), me.evict.clone());
        tokio::spawn(async move {
            // Demoted, or closed to make room (it was idle longest).
            tokio::select! {
                () = demoted(&vol) => {}
                () = evict.notified() => {}
            }
            cut.notify_one();
        })
    };
    // `piped`: the payload of a write, held in a kernel pipe.
    let dispatch = |ev: Event, piped: Option<Chain>| {
        let (vol, tx, slots) = (vol.clone(), tx.clone(), slots.clone());
        async move {
            match ev {
                Event::Request { cookie, op } => {
                    let Ok(permit) = slots.acquire_owned().await else {
                        return false;
                    };
                    tokio::spawn(async move {
                        let reply = run(&vol, cookie, op, piped).await;
                        let _ = tx.send(reply.into()).await;
                        drop(permit);
                    });
                    true
                }
                Event::Refuse { cookie, errno, .. } => {
                    tx.send(simple(cookie, errno).into()).await.is_ok()
                }
                Event::Disconnect => false,
                Event::Abort(e) => {
                    vol.event(format!("NBD client dropped: {e}"));
                    false
                }
            }
        }
    };
    let mut after_spliced = false;
    'read: loop {
        // Everything parseable first; consumed bytes are dropped once.
        let mut start = 0;
        loop {
            let (n, ev) = parser.next(&buf[start..]);
            start += n;
            if let Some(ev) = ev {
                me.touch();
                if !dispatch(ev, None).await {
                    break 'read;
                }
            } else if n == 0 {
                break;
            }
        }
        // A large write's payload goes straight from the socket into a
        // kernel pipe (or a buffer of its own), which then travels to the
        // disk and the peer.
        if let Some(len) = parser
            .payload_wanted()
            .filter(|l| *l >= MIN_SPLICED && *l > buf.len() - start)
        {
            let payload = tokio::select! {
                r = S::read_payload(&mut rd, &buf[start..], len) => r,
                _ = cut.notified() => break 'read,
            };
            buf.clear();
            if let Ok(p) = &payload {
                vol.count_payload(matches!(p, Payload::Piped(_)));
            }
            after_spliced = matches!(payload, Ok(Payload::Piped(_)));
            let ev = match payload {
                Ok(Payload::Piped(p)) => parser.take_payload_apart().map(|ev| (ev, Some(p))),
                Ok(Payload::Bytes(data)) => parser.take_payload(data).map(|ev| (ev, None)),
                Err(_) => break,
            };
            let Some((ev, piped)) = ev else {
                break;
            };
            me.touch();
            if !dispatch(ev, piped).await {
                break;
            }
            continue;
        }
        buf.drain(..start);
        buf.reserve(READ_CHUNK);
        // Right after a spliced payload, ask for one request header only:
        // if another large write follows (sequential writers send them
        // back to back), none of its payload is copied through `buf`.
        let ask = if std::mem::take(&mut after_spliced) {
            nbd::REQUEST_LEN
        } else {
            READ_CHUNK
        };
        let mut limited = (&mut rd).take(ask as u64);
        let read = tokio::select! {
            r = limited.read_buf(&mut buf) => r,
            _ = cut.notified() => break 'read,
        };
        match read {
            Ok(0) | Err(_) => break,
            Ok(_) => {}
        }
    }
    watcher.abort();
    // Outstanding requests finish (bounded by the write wait) before the
    // socket closes.
    let _ = tokio::time::timeout(
        super::engine::WRITE_WAIT,
        slots.acquire_many(MAX_IN_FLIGHT as u32),
    )
    .await;
    drop(tx);
    let _ = writer.await;
    vol.lock().nbd_clients -= 1;
}

/// Reads a write payload of `len` bytes, of which the client's first
/// `already` bytes were buffered: into pipes by reference where they are
/// to be had and the payload fits, else into a buffer.
async fn read_spliced_payload<R: AsyncRead + SpliceRead + Unpin>(
    rd: &mut R,
    already: &[u8],
    len: usize,
) -> std::io::Result<Payload> {
    let chain = (len <= MAX_SPLICED).then(Chain::take).flatten();
    let Some(mut chain) = chain else {
        return super::stream::read_payload(rd, already, len)
            .await
            .map(Payload::Bytes);
    };
    chain.fill_from_slice(&already[..already.len().min(len)])?;
    super::stream::finish_payload(rd, chain, len).await
}

/// Resolves once the volume is no longer primary.
async fn demoted(vol: &Volume) {
    loop {
        let n = vol.changed.notified();
        if !vol.is_primary() {
            return;
        }
        let _ = tokio::time::timeout(Duration::from_millis(500), n).await;
    }
}

/// A reply without data.
fn simple(cookie: u64, errno: u32) -> Frame {
    Frame {
        head: nbd::simple_reply(cookie, errno).to_vec(),
        data: Vec::new(),
    }
}

async fn run(vol: &Volume, cookie: u64, op: Op, piped: Option<Chain>) -> Frame {
    match op {
        Op::Read { offset, length } => {
            if !vol.is_primary() {
                return simple(cookie, errno::ESHUTDOWN);
            }
            let mut data = super::buffers::take(length as usize);
            data.resize(length as usize, 0);
            match vol.backing.read_at(&mut data, offset) {
                Ok(()) => Frame {
                    head: nbd::simple_reply(cookie, 0).to_vec(),
                    data,
                },
                Err(e) => {
                    vol.event(format!("read of {length} bytes at {offset} failed: {e}"));
                    simple(cookie, errno::EIO)
                }
            }
        }
        Op::Write { offset, data, fua } => {
            let change = match piped {
                Some(p) => Change::Piped(p),
                None => Change::Bytes(data),
            };
            let r = vol.write(offset, change, fua).await;
            simple(cookie, r.err().unwrap_or(0))
        }
        Op::Trim {
            offset,
            length,
            fua,
        }
        | Op::WriteZeroes {
            offset,
            length,
            fua,
        } => {
            // Trim zeroes too: both copies must read back the same.
            let r = vol
                .write(offset, Change::Zero(u64::from(length)), fua)
                .await;
            simple(cookie, r.err().unwrap_or(0))
        }
        Op::Flush => {
            let r = vol.flush().await;
            simple(cookie, r.err().unwrap_or(0))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Issue 15, defect 3: 64 idle connections locked every new client
    /// out. One address gets at most 8; when every slot is taken, the
    /// client idle longest (a minute or more) makes room.
    #[test]
    fn one_address_cannot_take_every_slot_and_idle_clients_make_room() {
        let t0 = std::time::Instant::now();
        let mut c = Clients::default();
        let a: std::net::IpAddr = "192.0.2.1".parse().unwrap();
        for i in 0..MAX_CLIENTS_PER_ADDRESS as u64 {
            assert!(c.admit(i, Some(a), t0).is_some());
        }
        assert!(
            c.admit(99, Some(a), t0).is_none(),
            "a ninth from one address"
        );
        // Fill every slot from many addresses.
        let mut id = 100;
        while c.list.len() < MAX_CLIENTS {
            let from: std::net::IpAddr = format!("198.51.100.{}", id % 200).parse().unwrap();
            let _ = c.admit(id, Some(from), t0);
            id += 1;
        }
        let newcomer: std::net::IpAddr = "203.0.113.9".parse().unwrap();
        assert!(
            c.admit(1000, Some(newcomer), t0).is_none(),
            "nobody idle yet"
        );
        // One client stays busy; later, a newcomer evicts the idlest.
        let busy = c.list[0].clone();
        let later = t0 + IDLE_EVICT_AFTER + Duration::from_secs(1);
        *busy.last_active.lock().unwrap() = later;
        let victim = c.list[1].clone();
        let e = c.admit(1001, Some(newcomer), later).expect("room made");
        assert_eq!(e.id, 1001);
        assert!(
            !c.list.iter().any(|x| x.id == victim.id),
            "the idlest was closed"
        );
        assert!(c.list.iter().any(|x| x.id == busy.id), "the busy one stays");
    }

    /// Review of issue 15, defect 3: an attacker with an IPv6 /64 had no
    /// per-address limit, and a flood of refusals filled the event list.
    #[test]
    fn a_v6_slash_64_counts_as_one_address_and_refusals_are_throttled() {
        let a: std::net::IpAddr = "2001:db8:1:2:aaaa::1".parse().unwrap();
        let b: std::net::IpAddr = "2001:db8:1:2:bbbb::9".parse().unwrap();
        let c: std::net::IpAddr = "2001:db8:1:3::1".parse().unwrap();
        assert_eq!(address_key(a), address_key(b));
        assert_ne!(address_key(a), address_key(c));
        let mapped: std::net::IpAddr = "::ffff:192.0.2.7".parse().unwrap();
        assert_eq!(
            address_key(mapped),
            "192.0.2.7".parse::<std::net::IpAddr>().unwrap()
        );
        let mut t = Throttle::default();
        let t0 = std::time::Instant::now();
        assert_eq!(t.allow(t0), Some(0));
        for i in 1..=5 {
            assert_eq!(t.allow(t0 + Duration::from_secs(i)), None);
        }
        assert_eq!(t.allow(t0 + REFUSAL_EVENT_EVERY), Some(5));
    }

    /// Review of issue 15, defect 3: one host holding 16 idle sockets
    /// blocked every new client. It gets 4 handshakes at once; others
    /// still get in, and every place is given back.
    #[test]
    fn one_address_cannot_take_every_handshake_slot() {
        let all = Arc::new(Semaphore::new(MAX_HANDSHAKING));
        let per: PerAddress = Arc::default();
        let a = Some(address_key("2001:db8::1".parse().unwrap()));
        let b = Some(address_key("192.0.2.1".parse().unwrap()));
        let held: Vec<_> = (0..MAX_HANDSHAKING_PER_ADDRESS)
            .map(|_| HandshakeSlot::take(&all, &per, a).unwrap())
            .collect();
        assert!(HandshakeSlot::take(&all, &per, a).is_none());
        let other = HandshakeSlot::take(&all, &per, b);
        assert!(other.is_some());
        drop(held);
        drop(other);
        assert!(per.lock().unwrap().is_empty());
        assert_eq!(all.available_permits(), MAX_HANDSHAKING);
    }
}
