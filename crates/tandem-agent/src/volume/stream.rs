//! The volume data path's socket I/O: write payloads read straight into
//! buffers of their own, and frames (replication messages, NBD replies)
//! written with small ones gathered and large data sent where it lies
//! (in its buffer, or in the backing store's page cache: see
//! [`super::splice`]).

use std::sync::Arc;

use tandem_core::volume::link::Frame;
use tokio::sync::mpsc;

use super::splice::{Chain, Filled, Pipe, Socket, SpliceRead, MAX_SPLICED};
use super::store::Backing;

/// A frame to write and where the rest of its bulk data comes from.
#[derive(Debug)]
pub struct Outgoing {
    /// The frame; its head announces the tail's bytes too.
    pub frame: Frame,
    /// Bulk data sent after the frame's own.
    pub tail: Tail,
}

/// Bulk data sent after a frame, from outside it.
#[derive(Debug)]
pub enum Tail {
    /// None.
    None,
    /// `len` bytes of the backing store from `offset`, as its page cache
    /// holds them when the frame goes out (by reference where a pipe is
    /// to be had).
    File {
        /// The backing store.
        store: Arc<Backing>,
        /// Byte offset.
        offset: u64,
        /// Bytes.
        len: usize,
    },
}

impl From<Frame> for Outgoing {
    fn from(frame: Frame) -> Outgoing {
        Outgoing {
            frame,
            tail: Tail::None,
        }
    }
}

/// Reads a payload of exactly `len` bytes into a buffer of its own: the
/// `already` bytes the caller had buffered, then the rest straight from
/// the stream into the buffer's spare room (no zero-fill, no second
/// copy; write payloads are up to 32 MiB and this is the data path).
pub(crate) async fn read_payload<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    already: &[u8],
    len: usize,
) -> std::io::Result<Vec<u8>> {
    let mut out = super::buffers::take(len);
    out.extend_from_slice(&already[..already.len().min(len)]);
    read_payload_onto(r, out, len).await
}

/// A write payload as received.
#[derive(Debug)]
pub enum Payload {
    /// In a buffer.
    Bytes(Vec<u8>),
    /// In kernel pipes, by reference.
    Piped(Chain),
}

/// Reads the rest of a `len`-byte payload whose first bytes `chain`
/// holds: by reference while pipes hold out, else (no pipe to be had,
/// or fragments too small for the chain's slots) through a buffer. The
/// reader must hold nothing buffered.
pub(crate) async fn finish_payload<R: SpliceRead>(
    r: &mut R,
    mut chain: Chain,
    len: usize,
) -> std::io::Result<Payload> {
    let rest = len.saturating_sub(chain.len());
    if chain.fill_from_socket(r.socket(), rest).await? == Filled::All {
        return Ok(Payload::Piped(chain));
    }
    let mut out = super::buffers::take(len);
    chain.drain_into(&mut out)?;
    read_payload_onto(r, out, len).await.map(Payload::Bytes)
}

/// Reads onto the end of `out` until it holds `len` bytes.
async fn read_payload_onto<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    mut out: Vec<u8>,
    len: usize,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut rest = r.take((len.saturating_sub(out.len())) as u64);
    while out.len() < len {
        if rest.read_buf(&mut out).await? == 0 {
            return Err(std::io::ErrorKind::UnexpectedEof.into());
        }
    }
    Ok(out)
}

/// Bulk data at least this long is written to a socket as it is; shorter
/// frames (acknowledgements, NBD replies, 4 KiB writes) are gathered with
/// what else is queued into one socket write of up to [`GATHER`] bytes.
const DIRECT: usize = 64 << 10;
/// Most bytes gathered into one socket write.
const GATHER: usize = 256 << 10;

/// Writes queued frames to a socket in order until the queue closes (or
/// the socket fails): small ones gathered, large data written where it
/// lies and its buffer returned to the pool.
pub(crate) async fn write_frames<W: tokio::io::AsyncWrite + Socket + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Outgoing>,
) {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::with_capacity(GATHER + DIRECT);
    // The writer's own pipe for tails from the backing store, taken at the
    // first such tail.
    let mut pipe: Option<Pipe> = None;
    while let Some(out) = rx.recv().await {
        let mut next = Some(out);
        while let Some(Outgoing { frame: f, tail }) = next.take() {
            buf.extend_from_slice(&f.head);
            if f.data.len() >= DIRECT {
                if w.write_all(&buf).await.is_err() || w.write_all(&f.data).await.is_err() {
                    return;
                }
                buf.clear();
                super::buffers::give(f.data);
            } else {
                buf.extend_from_slice(&f.data);
            }
            if let Tail::File { store, offset, len } = tail {
                if w.write_all(&buf).await.is_err() {
                    return;
                }
                buf.clear();
                if !matches!(&pipe, Some(p) if p.is_empty()) {
                    pipe = Pipe::take();
                }
                // The frame's head is out: a tail that fails leaves the
                // stream unusable, so the connection ends.
                if send_file_range(&mut w, pipe.as_mut(), &store, offset, len)
                    .await
                    .is_err()
                {
                    return;
                }
            }
            if buf.len() < GATHER {
                next = rx.try_recv().ok();
            }
        }
        if !buf.is_empty() {
            if w.write_all(&buf).await.is_err() {
                return;
            }
            buf.clear();
        }
    }
    let _ = w.shutdown().await;
}

/// Writes queued frames through user space, each one sealed
/// ([`tandem_core::volume::seal`]) when `seal` is given: small ones
/// gathered into one write, tails read from the backing store into the
/// frame. For streams the kernel cannot splice into: the replication
/// link (data must pass through user space to be encrypted) and NBD
/// clients over TLS. Each batch is flushed (a TLS stream buffers).
pub(crate) async fn write_copied_frames<W: tokio::io::AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Outgoing>,
    mut seal: Option<tandem_core::volume::seal::Direction>,
) {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::with_capacity(GATHER + DIRECT);
    while let Some(out) = rx.recv().await {
        let mut next = Some(out);
        while let Some(Outgoing { frame: f, tail }) = next.take() {
            let start = buf.len();
            buf.extend_from_slice(&f.head);
            buf.extend_from_slice(&f.data);
            super::buffers::give(f.data);
            if let Tail::File { store, offset, len } = tail {
                let at = buf.len();
                buf.resize(at + len, 0);
                if store.read_at(&mut buf[at..], offset).is_err() {
                    // The head announced the tail: the stream is unusable.
                    return;
                }
            }
            if let Some(dir) = seal.as_mut() {
                dir.seal_at(&mut buf, start);
            }
            if buf.len() < GATHER {
                next = rx.try_recv().ok();
            }
        }
        if w.write_all(&buf).await.is_err() || w.flush().await.is_err() {
            return;
        }
        buf.clear();
        if buf.capacity() > 4 * (GATHER + DIRECT) {
            // A large sync block passed: give the memory back.
            buf = Vec::with_capacity(GATHER + DIRECT);
        }
    }
    let _ = w.shutdown().await;
}

/// Sends `len` bytes of the backing store from `offset`: by reference
/// through `pipe` when there is one, else through a buffer.
async fn send_file_range<W: tokio::io::AsyncWrite + Socket + Unpin>(
    w: &mut W,
    pipe: Option<&mut Pipe>,
    store: &Backing,
    offset: u64,
    len: usize,
) -> std::io::Result<()> {
    use tokio::io::AsyncWriteExt;
    let mut done = 0;
    match pipe {
        Some(p) => {
            while done < len {
                let n = (len - done).min(MAX_SPLICED);
                done += p.fill_from_file(store.raw_fd(), offset + done as u64, n)?;
                p.drain_to_socket(w).await?;
            }
        }
        None => {
            let mut data = super::buffers::take(len.min(MAX_SPLICED));
            while done < len {
                let n = (len - done).min(MAX_SPLICED);
                data.resize(n, 0);
                store.read_at(&mut data, offset + done as u64)?;
                w.write_all(&data).await?;
                done += n;
            }
            super::buffers::give(data);
        }
    }
    Ok(())
}
