//! Zero-copy moves of large write payloads through kernel pipes.
//!
//! On this kind of machine a megabyte copied by the CPU costs 200 to
//! 400 us, and a replicated write used to be copied six times (out of the
//! client's socket, into the primary's page cache, into the peer's socket,
//! out of it, into the peer's page cache, plus the client's own send). With
//! `splice(2)`, page references move instead of bytes: the client's
//! payload goes socket -> pipe -> page cache with one copy (the last), and
//! the peer's frame is sent from the primary's page cache by reference and
//! lands socket -> pipe -> page cache on the peer, again with one copy.
//!
//! The peer's data is read from the primary's own page cache at send time,
//! not from the client's pages: both copies then hold what the primary's
//! copy holds, whatever a client does with pages it handed to the kernel.
//! A later write to the same blocks is always followed by its own frame,
//! so the peer ends where the primary is.
//!
//! Everything here is bounded: pipes open at once ([`MAX_OPEN`]), pipes
//! kept for reuse ([`POOL`]), bytes moved through one pipe
//! ([`MAX_SPLICED`]). When no pipe is to be had, callers use buffers.

use std::future::Future;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;

use tokio::io::Interest;

/// Payloads up to this long go through a pipe; longer ones (rare: NBD
/// allows writes up to 32 MiB) through buffers.
pub const MAX_SPLICED: usize = 1 << 20;
/// Payloads shorter than this use buffers: a splice costs several system
/// calls, a copy of a few KiB less. (The NBD reader also reads payloads
/// from this length on past its request buffer.)
pub const MIN_SPLICED: usize = 64 << 10;
/// Capacities asked for each pipe, largest first. A pipe holds one page
/// reference per slot (capacity / 4 KiB slots), and a socket's data may
/// arrive in fragments smaller than a page: four times [`MAX_SPLICED`]
/// leaves room for fragments averaging a quarter page. Above
/// `/proc/sys/fs/pipe-max-size` (1 MiB by default) the kernel wants
/// CAP_SYS_RESOURCE, which containers often drop; 1 MiB still holds a
/// megabyte that arrives in fragments of 4 KiB or more (seen on loopback
/// and veth: about 15 KiB each). A payload that does not fit is finished
/// through a buffer ([`Filled::Full`]).
const PIPE_BYTES: [libc::c_int; 2] = [4 << 20, 1 << 20];
/// Empty pipes kept for reuse.
const POOL: usize = 32;
/// Pipes open at once (two descriptors each), across all volumes.
const MAX_OPEN: usize = 256;
/// Bytes moved by one splice into a file: the page cache sizes a new
/// folio after the write that creates it (see `store::WRITE_PIECE`).
const FILE_PIECE: u64 = super::store::WRITE_PIECE;
/// System calls one move may take before it is abandoned as stuck (a
/// megabyte takes a few dozen at most).
const MAX_CALLS: usize = 1 << 16;

static OPEN: AtomicUsize = AtomicUsize::new(0);
static FREE: Mutex<Vec<Ends>> = Mutex::new(Vec::new());

/// A pipe's two descriptors.
#[derive(Debug)]
struct Ends {
    rd: OwnedFd,
    wr: OwnedFd,
}

/// A kernel pipe and how many bytes it holds.
#[derive(Debug)]
pub struct Pipe {
    /// Always `Some` but while dropping (when the ends go back to the pool).
    ends: Option<Ends>,
    held: usize,
    /// Whether `held` is known to be right (false after a failed move:
    /// the pipe is then closed, never reused).
    clean: bool,
}

fn free() -> std::sync::MutexGuard<'static, Vec<Ends>> {
    FREE.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

fn last_error() -> io::Error {
    io::Error::last_os_error()
}

/// One splice(2) call: bytes moved, or the error as it came.
fn splice(
    src: RawFd,
    src_off: Option<&mut libc::loff_t>,
    dst: RawFd,
    dst_off: Option<&mut libc::loff_t>,
    len: usize,
    flags: libc::c_uint,
) -> io::Result<usize> {
    let ptr = |o: Option<&mut libc::loff_t>| o.map_or(std::ptr::null_mut(), |o| o as *mut _);
    // SAFETY: splice between descriptors the caller keeps open across the
    // call; the offsets, when given, point at live integers; no other
    // memory of ours is touched.
    let n = unsafe { libc::splice(src, ptr(src_off), dst, ptr(dst_off), len, flags) };
    if n < 0 {
        Err(last_error())
    } else {
        Ok(n as usize)
    }
}

impl Pipe {
    /// An empty pipe, reused or new; `None` at the bound or when the
    /// kernel refuses one (callers then use buffers).
    pub fn take() -> Option<Pipe> {
        if let Some(ends) = free().pop() {
            return Some(Pipe {
                ends: Some(ends),
                held: 0,
                clean: true,
            });
        }
        if OPEN.fetch_add(1, Ordering::SeqCst) >= MAX_OPEN {
            OPEN.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        let mut fds = [0 as RawFd; 2];
        // SAFETY: pipe2 writes two descriptors into `fds`, which lives
        // across the call.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC | libc::O_NONBLOCK) } != 0 {
            OPEN.fetch_sub(1, Ordering::SeqCst);
            return None;
        }
        // SAFETY: both descriptors were just created and are owned here.
        let (rd, wr) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // If every size is refused the default (64 KiB) still works, with
        // more payloads finished through buffers.
        for size in PIPE_BYTES {
            // SAFETY: fcntl on a descriptor we own, integer argument.
            if unsafe { libc::fcntl(wr.as_raw_fd(), libc::F_SETPIPE_SZ, size) } > 0 {
                break;
            }
        }
        Some(Pipe {
            ends: Some(Ends { rd, wr }),
            held: 0,
            clean: true,
        })
    }

    fn rd(&self) -> RawFd {
        self.ends.as_ref().map_or(-1, |e| e.rd.as_raw_fd())
    }

    fn wr(&self) -> RawFd {
        self.ends.as_ref().map_or(-1, |e| e.wr.as_raw_fd())
    }

    /// Bytes the pipe holds.
    pub fn len(&self) -> usize {
        self.held
    }

    /// Whether the pipe holds nothing.
    pub fn is_empty(&self) -> bool {
        self.held == 0
    }

    /// Runs one move; a failure leaves the pipe's content unknown.
    fn guard<T>(&mut self, r: io::Result<T>) -> io::Result<T> {
        if r.is_err() {
            self.clean = false;
        }
        r
    }

    /// Appends bytes already in memory (the part of a payload a reader
    /// had buffered before it knew the payload's size).
    pub fn fill_from_slice(&mut self, mut bytes: &[u8]) -> io::Result<()> {
        let r = (|| {
            for _ in 0..MAX_CALLS {
                if bytes.is_empty() {
                    return Ok(());
                }
                // SAFETY: write from a live slice to a descriptor we own.
                let n = unsafe { libc::write(self.wr(), bytes.as_ptr().cast(), bytes.len()) };
                if n <= 0 {
                    // A non-blocking pipe that is full: the caller asked
                    // for more than it can hold.
                    return Err(if n == 0 {
                        io::ErrorKind::WriteZero.into()
                    } else {
                        last_error()
                    });
                }
                bytes = &bytes[n as usize..];
                self.held += n as usize;
            }
            Err(io::ErrorKind::TimedOut.into())
        })();
        self.guard(r)
    }

    /// Whether the pipe has a free slot (a splice into it can progress).
    fn has_room(&self) -> bool {
        let mut p = libc::pollfd {
            fd: self.wr(),
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: poll on one pollfd that lives across the call, no wait.
        let r = unsafe { libc::poll(&mut p, 1, 0) };
        r == 1 && p.revents & libc::POLLOUT != 0
    }

    /// Moves `len` bytes from a socket into the pipe, by reference.
    /// [`Filled::Full`] when the pipe ran out of slots first (what it
    /// took stays in it; the rest is still in the socket).
    pub async fn fill_from_socket<S: Socket>(&mut self, s: &S, len: usize) -> io::Result<Filled> {
        let r = self.fill_from_socket_inner(s, len).await;
        self.guard(r)
    }

    async fn fill_from_socket_inner<S: Socket>(&mut self, s: &S, len: usize) -> io::Result<Filled> {
        let mut left = len;
        for _ in 0..MAX_CALLS {
            if left == 0 {
                return Ok(Filled::All);
            }
            s.ready(Interest::READABLE).await?;
            let (src, dst) = (s.fd(), self.wr());
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
            let moved = s.try_io(Interest::READABLE, || {
                match splice(src, None, dst, None, left, flags) {
                    Ok(n) => Ok(Some(n)),
                    // EAGAIN means an empty socket or a full pipe; only
                    // the first may clear the socket's readiness (or the
                    // reader would wait for data that is already there).
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock && !self.has_room() => Ok(None),
                    Err(e) => Err(e),
                }
            });
            match moved {
                Ok(Some(0)) => return Err(io::ErrorKind::UnexpectedEof.into()),
                Ok(Some(n)) => {
                    left -= n;
                    self.held += n;
                }
                Ok(None) => return Ok(Filled::Full),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::ErrorKind::TimedOut.into())
    }

    /// Reads everything the pipe holds onto the end of `out` (a copy: the
    /// fallback when a payload did not fit).
    pub fn drain_into(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        let r = (|| {
            out.reserve(self.held);
            for _ in 0..MAX_CALLS {
                if self.held == 0 {
                    return Ok(());
                }
                let spare = out.spare_capacity_mut();
                let want = spare.len().min(self.held);
                // SAFETY: read into the vector's spare capacity, at most
                // `want` bytes, which it has; the length is set to what
                // the kernel wrote.
                let n = unsafe { libc::read(self.rd(), spare.as_mut_ptr().cast(), want) };
                if n <= 0 {
                    return Err(if n == 0 {
                        io::ErrorKind::UnexpectedEof.into()
                    } else {
                        last_error()
                    });
                }
                // SAFETY: the kernel initialised `n` more bytes.
                unsafe { out.set_len(out.len() + n as usize) };
                self.held -= n as usize;
            }
            Err(io::ErrorKind::TimedOut.into())
        })();
        self.guard(r)
    }

    /// Writes everything the pipe holds to `fd` at `offset` (the one copy,
    /// into the page cache), in pieces that end on [`FILE_PIECE`]
    /// boundaries. Blocking, like `pwrite`.
    pub fn drain_to_file(&mut self, fd: RawFd, offset: u64) -> io::Result<()> {
        let r = (|| {
            let mut at = offset;
            for _ in 0..MAX_CALLS {
                if self.held == 0 {
                    return Ok(());
                }
                let piece = (FILE_PIECE - at % FILE_PIECE) as usize;
                let mut off = at as libc::loff_t;
                let want = piece.min(self.held);
                let n = match splice(
                    self.rd(),
                    None,
                    fd,
                    Some(&mut off),
                    want,
                    libc::SPLICE_F_MOVE,
                ) {
                    Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                    Ok(n) => n,
                    Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                    Err(e) => return Err(e),
                };
                at += n as u64;
                self.held -= n;
            }
            Err(io::ErrorKind::TimedOut.into())
        })();
        self.guard(r)
    }

    /// Takes up to `len` bytes of `fd` from `offset` into the pipe, by
    /// reference to the page cache: all of them, or fewer (at least one)
    /// when the pipe runs out of slots (an unaligned range takes one more
    /// page than its length says). Returns the bytes taken.
    pub fn fill_from_file(&mut self, fd: RawFd, offset: u64, len: usize) -> io::Result<usize> {
        let r = (|| {
            let mut off = offset as libc::loff_t;
            let mut taken = 0;
            for _ in 0..MAX_CALLS {
                if taken == len {
                    return Ok(taken);
                }
                let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK;
                let n = match splice(fd, Some(&mut off), self.wr(), None, len - taken, flags) {
                    Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
                    Ok(n) => n,
                    Err(e) => match e.kind() {
                        io::ErrorKind::Interrupted => continue,
                        io::ErrorKind::WouldBlock if taken > 0 => return Ok(taken),
                        _ => return Err(e),
                    },
                };
                taken += n;
                self.held += n;
            }
            Err(io::ErrorKind::TimedOut.into())
        })();
        self.guard(r)
    }

    /// Sends everything the pipe holds to a socket, by reference.
    pub async fn drain_to_socket<S: Socket>(&mut self, s: &S) -> io::Result<()> {
        let r = self.drain_to_socket_inner(s).await;
        self.guard(r)
    }

    async fn drain_to_socket_inner<S: Socket>(&mut self, s: &S) -> io::Result<()> {
        for _ in 0..MAX_CALLS {
            // Never splice from an empty pipe: with a writer open it says
            // EAGAIN, which would wrongly clear the socket's readiness.
            if self.held == 0 {
                return Ok(());
            }
            s.ready(Interest::WRITABLE).await?;
            let (src, dst, left) = (self.rd(), s.fd(), self.held);
            let flags = libc::SPLICE_F_MOVE | libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MORE;
            let moved = s.try_io(Interest::WRITABLE, || {
                splice(src, None, dst, None, left, flags)
            });
            match moved {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => self.held -= n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Err(io::ErrorKind::TimedOut.into())
    }
}

impl Drop for Pipe {
    fn drop(&mut self) {
        let Some(ends) = self.ends.take() else {
            return;
        };
        if self.clean && self.held == 0 {
            let mut f = free();
            if f.len() < POOL {
                f.push(ends);
                return;
            }
        }
        drop(ends);
        OPEN.fetch_sub(1, Ordering::SeqCst);
    }
}

/// Pipes one payload may take: data from the page cache of a peer
/// arrives a page or less per fragment, so a megabyte can need just over
/// one 1 MiB pipe's 256 slots.
const MAX_CHAIN: usize = 4;

/// A payload held in one or more pipes, in order.
#[derive(Debug)]
pub struct Chain {
    pipes: Vec<Pipe>,
}

impl Chain {
    /// An empty chain of one pipe; `None` when no pipe is to be had.
    pub fn take() -> Option<Chain> {
        Some(Chain {
            pipes: vec![Pipe::take()?],
        })
    }

    /// Bytes held.
    pub(crate) fn len(&self) -> usize {
        self.pipes.iter().map(Pipe::len).sum()
    }

    fn last(&mut self) -> io::Result<&mut Pipe> {
        self.pipes
            .last_mut()
            .ok_or_else(|| io::Error::other("a pipe chain without pipes"))
    }

    /// Appends bytes already in memory (at most a pipe's worth).
    pub fn fill_from_slice(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.last()?.fill_from_slice(bytes)
    }

    /// Moves `len` bytes from a socket into the chain, by reference,
    /// taking another pipe whenever one runs out of slots.
    /// [`Filled::Full`] when the chain is at its bound (or no pipe is to
    /// be had) first; what it took stays in it.
    pub async fn fill_from_socket<S: Socket>(&mut self, s: &S, len: usize) -> io::Result<Filled> {
        let mut left = len;
        loop {
            let before = self.len();
            let filled = self.last()?.fill_from_socket(s, left).await?;
            left -= self.len() - before;
            if filled == Filled::All {
                return Ok(Filled::All);
            }
            if self.pipes.len() >= MAX_CHAIN {
                return Ok(Filled::Full);
            }
            match Pipe::take() {
                Some(p) => self.pipes.push(p),
                None => return Ok(Filled::Full),
            }
        }
    }

    /// Reads everything held onto the end of `out`.
    pub fn drain_into(&mut self, out: &mut Vec<u8>) -> io::Result<()> {
        self.pipes.iter_mut().try_for_each(|p| p.drain_into(out))
    }

    /// Writes everything held to `fd` at `offset` (see
    /// [`Pipe::drain_to_file`]).
    pub fn drain_to_file(&mut self, fd: RawFd, offset: u64) -> io::Result<()> {
        let mut at = offset;
        for p in &mut self.pipes {
            let n = p.len() as u64;
            p.drain_to_file(fd, at)?;
            at += n;
        }
        Ok(())
    }
}

/// How a fill from a socket ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Filled {
    /// Every byte asked for is in the pipe.
    All,
    /// The pipe ran out of slots first.
    Full,
}

/// A reader whose data can be spliced straight from its socket.
pub trait SpliceRead: tokio::io::AsyncRead + Unpin {
    /// The socket.
    type Sock: Socket + Sync;
    /// The socket, to splice from once the reader holds nothing buffered.
    fn socket(&self) -> &Self::Sock;
}

/// A non-blocking socket registered with the runtime that splice can
/// move data to or from.
pub trait Socket {
    /// Its descriptor.
    fn fd(&self) -> RawFd;
    /// Waits until the runtime reports the socket ready for `interest`.
    fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<()>> + Send;
    /// Runs one non-blocking operation; a `WouldBlock` result clears the
    /// readiness it relied on.
    fn try_io<R>(&self, interest: Interest, f: impl FnOnce() -> io::Result<R>) -> io::Result<R>;
}

macro_rules! socket_half {
    ($half:ty, $stream:ty) => {
        impl Socket for $half {
            fn fd(&self) -> RawFd {
                AsRef::<$stream>::as_ref(self).as_raw_fd()
            }
            fn ready(&self, interest: Interest) -> impl Future<Output = io::Result<()>> + Send {
                let s: &$stream = self.as_ref();
                async move { s.ready(interest).await.map(|_| ()) }
            }
            fn try_io<R>(
                &self,
                interest: Interest,
                f: impl FnOnce() -> io::Result<R>,
            ) -> io::Result<R> {
                AsRef::<$stream>::as_ref(self).try_io(interest, f)
            }
        }
    };
}

socket_half!(tokio::net::tcp::OwnedReadHalf, tokio::net::TcpStream);
socket_half!(tokio::net::tcp::OwnedWriteHalf, tokio::net::TcpStream);
socket_half!(tokio::net::unix::OwnedReadHalf, tokio::net::UnixStream);
socket_half!(tokio::net::unix::OwnedWriteHalf, tokio::net::UnixStream);

impl SpliceRead for tokio::net::tcp::OwnedReadHalf {
    type Sock = Self;
    fn socket(&self) -> &Self {
        self
    }
}

impl SpliceRead for tokio::net::unix::OwnedReadHalf {
    type Sock = Self;
    fn socket(&self) -> &Self {
        self
    }
}

impl<R: SpliceRead> SpliceRead for tokio::io::BufReader<R> {
    type Sock = R::Sock;
    fn socket(&self) -> &R::Sock {
        self.get_ref().socket()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::FileExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    fn pattern(len: usize, seed: u8) -> Vec<u8> {
        (0..len)
            .map(|i| (i as u8).wrapping_mul(31) ^ seed)
            .collect()
    }

    type Client = tokio::task::JoinHandle<(tokio::net::TcpStream, Vec<u8>)>;

    /// A loopback connection whose client sends `data`, then reads
    /// `back` bytes (returned with its stream, kept open until then); the
    /// server's halves.
    async fn connection(
        data: Vec<u8>,
        back: usize,
    ) -> (
        tokio::net::tcp::OwnedReadHalf,
        tokio::net::tcp::OwnedWriteHalf,
        Client,
    ) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let client = tokio::spawn(async move {
            let mut c = tokio::net::TcpStream::connect(addr).await.unwrap();
            c.write_all(&data).await.unwrap();
            let mut got = vec![0u8; back];
            c.read_exact(&mut got).await.unwrap();
            (c, got)
        });
        let (s, _) = l.accept().await.unwrap();
        let (rd, wr) = s.into_split();
        (rd, wr, client)
    }

    /// Socket -> pipe -> file, and file -> pipe -> socket, byte exact,
    /// with a buffered prefix and offsets that do not fall on pieces.
    #[tokio::test]
    async fn payloads_move_through_pipes_byte_exact() {
        let len = MAX_SPLICED;
        let data = pattern(len, 7);
        let (rd, wr, client) = connection(data[1000..].to_vec(), len).await;
        let mut p = Pipe::take().expect("a pipe");
        // The first 1000 bytes "were buffered" by a reader.
        p.fill_from_slice(&data[..1000]).unwrap();
        // Data sent from user memory arrives in page-sized or larger
        // fragments: it fits.
        assert_eq!(
            p.fill_from_socket(&rd, len - 1000).await.unwrap(),
            Filled::All
        );
        assert_eq!(p.len(), len);
        let dir = tempfile::tempdir().unwrap();
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(dir.path().join("f"))
            .unwrap();
        f.set_len(4 << 20).unwrap();
        let at = 12_345;
        p.drain_to_file(f.as_raw_fd(), at).unwrap();
        assert!(p.is_empty());
        let mut disk = vec![0u8; len];
        f.read_exact_at(&mut disk, at).unwrap();
        assert!(disk == data, "the file holds the payload");
        let mut sent = 0;
        while sent < len {
            sent += p
                .fill_from_file(f.as_raw_fd(), at + sent as u64, len - sent)
                .unwrap();
            p.drain_to_socket(&wr).await.unwrap();
        }
        drop(p);
        assert!(
            client.await.unwrap().1 == data,
            "the socket got the file's bytes"
        );
    }

    /// A pipe that runs out of slots says so, keeps what it took, and
    /// leaves the rest in the socket, in order (the callers' fallback).
    #[tokio::test]
    async fn a_full_pipe_says_so_and_the_rest_stays_in_the_socket() {
        let len = MAX_SPLICED;
        let data = pattern(len, 3);
        let (mut rd, _wr, client) = connection(data.clone(), 0).await;
        let mut p = Pipe::take().expect("a pipe");
        // SAFETY: fcntl on the pipe's own descriptor.
        assert!(unsafe { libc::fcntl(p.wr(), libc::F_SETPIPE_SZ, 64 << 10) } > 0);
        assert_eq!(p.fill_from_socket(&rd, len).await.unwrap(), Filled::Full);
        assert!(!p.is_empty() && p.len() < len);
        let mut got = Vec::new();
        p.drain_into(&mut got).unwrap();
        assert!(p.is_empty());
        let mut rest = vec![0u8; len - got.len()];
        rd.read_exact(&mut rest).await.unwrap();
        got.extend_from_slice(&rest);
        assert!(got == data, "pipe part then socket part is the payload");
        drop(client.await.unwrap());
        // Its size was changed: never pooled.
        p.clean = false;
    }

    /// Data that a single pipe cannot hold fills a chain, in order.
    #[tokio::test]
    async fn a_chain_takes_more_pipes_and_keeps_the_order() {
        let len = MAX_SPLICED;
        let data = pattern(len, 9);
        let (rd, _wr, client) = connection(data.clone(), 0).await;
        let mut chain = Chain::take().expect("a pipe");
        // A small first pipe: the chain must go on in more.
        // SAFETY: fcntl on the pipe's own descriptor.
        assert!(unsafe { libc::fcntl(chain.pipes[0].wr(), libc::F_SETPIPE_SZ, 64 << 10) } > 0);
        chain.pipes[0].clean = false;
        assert_eq!(chain.fill_from_socket(&rd, len).await.unwrap(), Filled::All);
        assert!(chain.pipes.len() > 1);
        assert_eq!(chain.len(), len);
        let mut got = Vec::new();
        chain.drain_into(&mut got).unwrap();
        assert!(got == data, "the chain holds the payload in order");
        drop(client.await.unwrap());
    }

    #[test]
    fn pipes_are_reused_clean_and_bounded() {
        for _ in 0..3 {
            let p = Pipe::take().expect("a pipe");
            assert!(p.is_empty() && p.clean);
        }
        let mut p = Pipe::take().expect("a pipe");
        p.fill_from_slice(&[1, 2, 3]).unwrap();
        assert_eq!(p.len(), 3);
        drop(p); // holds data: closed, not pooled
        assert!(free().len() <= POOL);
        assert!(OPEN.load(Ordering::SeqCst) <= MAX_OPEN);
    }
}
