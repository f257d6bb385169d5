//! The filesync connection: the replication link's handshake (hello,
//! challenge, proof: both ends prove they hold the cluster key, bound to
//! the name `filesync/GROUP/RESOURCE`), then every frame sealed with
//! AES-256-GCM under keys fresh per connection
//! ([`tandem_core::volume::seal`]). A frame that fails its check ends the
//! connection before anything in it is looked at.
//!
//! Frames: `kind u8 | length u32 | body` (sealed: body encrypted, tag
//! appended). Bodies are JSON, except a file's: its index (u32) then its
//! bytes.

use anyhow::{bail, Context, Result};
use tandem_core::filesync::Manifest;
use tandem_core::volume::link::FRAME_HEADER;
use tandem_core::volume::seal::{self, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

pub use crate::peer_auth::{accept, dial, PREAUTH_LIMIT};
/// Largest JSON frame (a manifest of `MAX_ENTRIES` entries fits).
const MAX_JSON_FRAME: usize = 32 << 20;

const K_MANIFEST: u8 = 1;
const K_NEED: u8 = 2;
const K_FILE: u8 = 3;
const K_DONE: u8 = 4;
const K_REFUSED: u8 = 5;

/// The largest frame a resource with `max_file_bytes` sends.
pub fn frame_limit(max_file_bytes: u64) -> usize {
    usize::try_from(max_file_bytes)
        .unwrap_or(usize::MAX)
        .saturating_add(4)
        .max(MAX_JSON_FRAME)
}

/// The end of a sync, from the receiver (the sender's `Done` carries only
/// the files it could not send).
#[derive(Debug, Clone, Default, serde::Serialize, serde::Deserialize)]
pub struct Done {
    /// Files written.
    pub written: u64,
    /// Entries removed.
    pub removed: u64,
    /// What could not be done, in words.
    pub problems: Vec<String>,
}

/// One message of a sync.
#[derive(Debug)]
pub enum Frame {
    /// Sender: what it has.
    Manifest(Manifest),
    /// Receiver: the entries whose content it needs.
    Need(Vec<u32>),
    /// Sender: one entry's content.
    File(u32, Vec<u8>),
    /// Either: the end (see [`Done`]).
    Done(Done),
    /// Receiver: it will not take this sync, and why.
    Refused(String),
}

impl Frame {
    /// Its name, for messages.
    pub fn name(&self) -> &'static str {
        match self {
            Frame::Manifest(_) => "a manifest",
            Frame::Need(_) => "a list of needs",
            Frame::File(..) => "a file",
            Frame::Done(_) => "the end",
            Frame::Refused(_) => "a refusal",
        }
    }

    fn encode(&self) -> Result<Vec<u8>> {
        let (kind, body) = match self {
            Frame::Manifest(m) => (K_MANIFEST, serde_json::to_vec(m)?),
            Frame::Need(n) => (K_NEED, serde_json::to_vec(n)?),
            Frame::File(i, data) => {
                let mut b = Vec::with_capacity(4 + data.len());
                b.extend_from_slice(&i.to_be_bytes());
                b.extend_from_slice(data);
                (K_FILE, b)
            }
            Frame::Done(d) => (K_DONE, serde_json::to_vec(d)?),
            Frame::Refused(w) => (K_REFUSED, serde_json::to_vec(w)?),
        };
        let len = u32::try_from(body.len()).context("a frame over 4 GiB")?;
        let mut out = Vec::with_capacity(FRAME_HEADER + body.len() + seal::TAG_LEN);
        out.push(kind);
        out.extend_from_slice(&len.to_be_bytes());
        out.extend_from_slice(&body);
        Ok(out)
    }

    fn decode(kind: u8, body: &[u8]) -> Result<Frame> {
        Ok(match kind {
            K_MANIFEST => Frame::Manifest(serde_json::from_slice(body).context("a manifest")?),
            K_NEED => Frame::Need(serde_json::from_slice(body).context("a list of needs")?),
            K_FILE => {
                let Some((i, data)) = body.split_first_chunk::<4>() else {
                    bail!("a file frame without its index");
                };
                Frame::File(u32::from_be_bytes(*i), data.to_vec())
            }
            K_DONE => Frame::Done(serde_json::from_slice(body).context("the end")?),
            K_REFUSED => Frame::Refused(serde_json::from_slice(body).context("a refusal")?),
            other => bail!("unknown frame kind {other}"),
        })
    }
}

/// A connection after the handshake: every frame sealed.
pub struct Sealed {
    stream: TcpStream,
    session: Session,
    limit: usize,
}

impl Sealed {
    /// Wraps an authenticated stream; frames over `limit` bytes are refused.
    pub fn new(stream: TcpStream, session: Session, limit: usize) -> Sealed {
        Sealed {
            stream,
            session,
            limit,
        }
    }

    /// Sends one frame.
    pub async fn send(&mut self, f: &Frame) -> Result<()> {
        let mut bytes = f.encode()?;
        self.session.send.seal(&mut bytes);
        self.stream
            .write_all(&bytes)
            .await
            .context("sending to the peer")
    }

    /// Receives one frame, opened and checked.
    pub async fn recv(&mut self) -> Result<Frame> {
        let mut h = [0u8; FRAME_HEADER];
        self.stream
            .read_exact(&mut h)
            .await
            .context("reading from the peer")?;
        let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]) as usize;
        if len > self.limit {
            bail!("a {len}-byte frame (at most {} are read)", self.limit);
        }
        let mut body = vec![0u8; len + seal::TAG_LEN];
        self.stream
            .read_exact(&mut body)
            .await
            .context("reading from the peer")?;
        let plain = self.session.recv.open(&h, &mut body)?;
        if h[0] != K_FILE && plain.len() > MAX_JSON_FRAME {
            bail!("a {}-byte message", plain.len());
        }
        Frame::decode(h[0], plain)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::net::TcpListener;

    async fn pair(
        key_a: [u8; 32],
        key_b: [u8; 32],
    ) -> (Result<Session>, Result<((), Session, String)>) {
        let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let acc = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let r = accept(&mut s, &key_b, |name, node| {
                (name == "filesync/g/r" && node == "n1").then_some(())
            })
            .await;
            (r, s)
        });
        let mut s = TcpStream::connect(addr).await.unwrap();
        let d = dial(&mut s, &key_a, "filesync/g/r", "n1").await;
        // A dialer that gave up closes the connection (the acceptor's
        // own bound is the agent's `PREAUTH_LIMIT`).
        drop(s);
        let (a, _keep) = acc.await.unwrap();
        (d, a)
    }

    #[tokio::test]
    async fn both_ends_must_hold_the_cluster_key() {
        let (d, a) = pair([1; 32], [1; 32]).await;
        assert!(d.is_ok() && a.is_ok());
        let (d, a) = pair([1; 32], [2; 32]).await;
        assert!(d.is_err() || a.is_err());
        assert!(a.is_err(), "the acceptor admitted a stranger");
    }

    #[test]
    fn frames_read_back() {
        for f in [
            Frame::Need(vec![1, 2]),
            Frame::File(7, b"abc".to_vec()),
            Frame::Refused("no".into()),
        ] {
            let bytes = f.encode().unwrap();
            let back = Frame::decode(bytes[0], &bytes[FRAME_HEADER..]).unwrap();
            assert_eq!(format!("{f:?}"), format!("{back:?}"));
        }
        assert!(Frame::decode(9, b"").is_err());
        assert!(Frame::decode(K_FILE, b"ab").is_err());
    }
}
