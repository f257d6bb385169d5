//! The volume data path's socket I/O: write payloads read straight into
//! buffers of their own, and frames (replication messages, NBD replies)
//! written with small ones gathered and large data sent where it lies.

use tandem_core::volume::link::Frame;
use tokio::sync::mpsc;

/// Reads a payload of exactly `len` bytes into a buffer of its own: the
/// `already` bytes the caller had buffered, then the rest straight from
/// the stream into the buffer's spare room (no zero-fill, no second
/// copy; write payloads are up to 32 MiB and this is the data path).
pub(crate) async fn read_payload<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    already: &[u8],
    len: usize,
) -> std::io::Result<Vec<u8>> {
    use tokio::io::AsyncReadExt;
    let mut out = super::buffers::take(len);
    out.extend_from_slice(&already[..already.len().min(len)]);
    let mut rest = r.take((len - out.len()) as u64);
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
pub(crate) async fn write_frames<W: tokio::io::AsyncWrite + Unpin>(
    mut w: W,
    mut rx: mpsc::Receiver<Frame>,
) {
    use tokio::io::AsyncWriteExt;
    let mut buf = Vec::with_capacity(GATHER + DIRECT);
    while let Some(frame) = rx.recv().await {
        let mut next = Some(frame);
        while let Some(f) = next.take() {
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
