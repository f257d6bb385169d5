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

use super::engine::{Change, Volume};
use super::splice::{Chain, Socket, SpliceRead, MAX_SPLICED, MIN_SPLICED};
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
    accept_loop(vol, || async { l.accept().await.map(|(s, _)| (s, None)) }).await
}

/// Serves the volume's TCP export until the agent stops.
pub async fn serve_tcp(vol: Arc<Volume>, addr: std::net::SocketAddr) -> Result<()> {
    let l = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding the NBD address {addr}"))?;
    accept_loop(vol, || async {
        let (s, from) = l.accept().await?;
        s.set_nodelay(true).ok();
        Ok((s, Some(from.ip())))
    })
    .await
}

/// A client's connection: a stream that splits into owned halves the
/// data path can splice from and to.
pub trait ClientStream: AsyncRead + AsyncWrite + Unpin + Send + 'static {
    /// The reading half.
    type Read: AsyncRead + SpliceRead + Socket + Unpin + Send + Sync + 'static;
    /// The writing half.
    type Write: AsyncWrite + Socket + Unpin + Send + Sync + 'static;
    /// Splits the stream.
    fn halves(self) -> (Self::Read, Self::Write);
}

impl ClientStream for tokio::net::TcpStream {
    type Read = tokio::net::tcp::OwnedReadHalf;
    type Write = tokio::net::tcp::OwnedWriteHalf;
    fn halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

impl ClientStream for tokio::net::UnixStream {
    type Read = tokio::net::unix::OwnedReadHalf;
    type Write = tokio::net::unix::OwnedWriteHalf;
    fn halves(self) -> (Self::Read, Self::Write) {
        self.into_split()
    }
}

/// Accepts clients: at most [`MAX_CLIENTS`] at once and
/// [`MAX_CLIENTS_PER_ADDRESS`] from one address. When every slot is taken,
/// the client idle longest (at least [`IDLE_EVICT_AFTER`]) is closed to
/// make room; if none is, the newcomer is closed. So idle connections
/// from one host cannot lock every other client out.
async fn accept_loop<S, F, Fut>(vol: Arc<Volume>, accept: F) -> Result<()>
where
    S: ClientStream,
    F: Fn() -> Fut,
    Fut: std::future::Future<Output = std::io::Result<(S, Option<std::net::IpAddr>)>>,
{
    let clients: Arc<std::sync::Mutex<Clients>> = Arc::default();
    let mut next_id = 0u64;
    loop {
        let Ok((s, from)) = accept().await else {
            tokio::time::sleep(Duration::from_millis(50)).await;
            continue;
        };
        let admitted = {
            let mut c = clients.lock().unwrap_or_else(|p| p.into_inner());
            c.admit(next_id, from, std::time::Instant::now())
        };
        let Some(entry) = admitted else {
            vol.event(format!(
                "NBD client from {} refused: {} clients at once, {} per address, none idle for {} s",
                from.map_or_else(|| "the socket".to_string(), |a| a.to_string()),
                MAX_CLIENTS,
                MAX_CLIENTS_PER_ADDRESS,
                IDLE_EVICT_AFTER.as_secs()
            ));
            continue;
        };
        next_id += 1;
        let vol = vol.clone();
        let clients = clients.clone();
        tokio::spawn(async move {
            client(vol, s, entry.clone()).await;
            clients
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .remove(&entry);
        });
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

async fn handshake<S: AsyncRead + AsyncWrite + Unpin>(vol: &Volume, s: &mut S) -> Result<bool> {
    s.write_all(&nbd::greeting()).await?;
    let mut h = Handshake::new(export(vol));
    let mut want = Handshake::first_read();
    loop {
        let mut buf = vec![0u8; want];
        s.read_exact(&mut buf).await?;
        match h.on_bytes(&buf)? {
            Next::Read(n) => want = n,
            Next::SendThenRead(out, n) => {
                s.write_all(&out).await?;
                want = n;
            }
            Next::Transmit(out) => {
                s.write_all(&out).await?;
                return Ok(true);
            }
            Next::Close(out) => {
                s.write_all(&out).await?;
                return Ok(false);
            }
        }
    }
}

async fn client<S: ClientStream>(vol: Arc<Volume>, mut s: S, me: ClientEntry) {
    match tokio::time::timeout(HANDSHAKE_LIMIT, handshake(&vol, &mut s)).await {
        Ok(Ok(true)) => {}
        Ok(Ok(false)) | Err(_) => return,
        Ok(Err(e)) => {
            vol.event(format!("NBD handshake failed: {e:#}"));
            return;
        }
    }
    // A client that attached to a primary that since was demoted is cut.
    if !vol.is_primary() {
        return;
    }
    vol.lock().nbd_clients += 1;
    let (mut rd, wr) = s.halves();
    // Replies go out in order of completion, gathered per socket write.
    let (tx, rx) = mpsc::channel::<Outgoing>(REPLY_QUEUE);
    let writer = tokio::spawn(super::stream::write_frames(wr, rx));
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
                r = read_payload(&mut rd, &buf[start..], len) => r,
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
async fn read_payload<R: AsyncRead + SpliceRead + Unpin>(
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
}
