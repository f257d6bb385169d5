//! The replication link between a volume's two copies: message framing
//! and the peers' mutual authentication.
//!
//! A frame is `kind: u8, length: u32 (big endian), body`. Writes and sync
//! data carry their bytes raw; the handshake's state travels as JSON (it
//! is small and sent once per connection).
//!
//! Authentication: the dialing side sends a nonce, the accepting side
//! answers with its own nonce and a MAC over both (keyed BLAKE3 with the
//! cluster key), the dialer proves itself the same way. Neither side sends
//! data before the other has proven it holds the key. Before that, no
//! frame larger than [`PREAUTH_MAX_FRAME`] is read. Every frame after the
//! handshake is encrypted and authenticated ([`super::seal`]).

use serde::{Deserialize, Serialize};

use super::{Generations, Side};
use crate::nbd::MAX_PAYLOAD;

/// Largest frame body read before the peer has proven it holds the key:
/// a hello (nonce, volume and node names), a challenge or a proof. A
/// stranger's 32 MiB frame is refused after its 5-byte header.
pub const PREAUTH_MAX_FRAME: u32 = 1024;

/// Largest frame body: a full write plus its fixed fields.
pub const MAX_FRAME: u32 = MAX_PAYLOAD + 64;
/// Bytes before a frame's body.
pub const FRAME_HEADER: usize = 5;
/// Bitmap bytes per frame when sending a bitmap.
pub const BITMAP_CHUNK: usize = 1 << 20;

/// What a side tells the other right after authentication.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Hello2 {
    /// Volume size in bytes (must match).
    pub size: u64,
    /// The side's view for the sync decision.
    pub side: Side,
}

/// One message on the replication link.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Msg {
    /// Dialer: who it is and its nonce.
    Hello {
        /// Volume name.
        volume: String,
        /// Dialing node.
        node: String,
        /// Random nonce.
        nonce: [u8; 16],
    },
    /// Acceptor: its nonce and its proof. It names no node: a stranger
    /// who connects learns nothing before it has proven it holds the key.
    Challenge {
        /// Random nonce.
        nonce: [u8; 16],
        /// MAC proving the acceptor holds the key.
        mac: [u8; 32],
    },
    /// Dialer: its proof.
    Proof {
        /// MAC proving the dialer holds the key.
        mac: [u8; 32],
    },
    /// Each side's state for the sync decision.
    State(Hello2),
    /// A piece of the sender's dirty bitmap (for the union).
    Bitmap {
        /// Byte offset into the bitmap.
        at: u64,
        /// Whether this is the last piece.
        last: bool,
        /// Bitmap bytes.
        bytes: Vec<u8>,
    },
    /// Replicate a write.
    Write {
        /// Acknowledgement id.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Make it durable before acknowledging.
        fua: bool,
        /// The data.
        data: Vec<u8>,
    },
    /// Replicate zeroes (WRITE_ZEROES and TRIM).
    Zero {
        /// Acknowledgement id.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u32,
        /// Make it durable before acknowledging.
        fua: bool,
    },
    /// Make everything received so far durable.
    Flush {
        /// Acknowledgement id.
        id: u64,
    },
    /// The write, zero or flush `id` is done (durable if asked).
    Ack {
        /// Acknowledgement id.
        id: u64,
    },
    /// The write, zero or flush `id` failed on the peer.
    Failed {
        /// Acknowledgement id.
        id: u64,
        /// NBD error number.
        errno: u32,
    },
    /// Sync data for the target.
    SyncData {
        /// Byte offset.
        offset: u64,
        /// The data.
        data: Vec<u8>,
    },
    /// The target wrote sync data.
    SyncAck {
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u32,
    },
    /// Every block was sent: the target adopts these generations.
    SyncDone {
        /// The source's generations.
        gens: Generations,
    },
    /// Hash these blocks of your copy.
    Verify {
        /// Request id.
        id: u64,
        /// Byte offset.
        offset: u64,
        /// Byte count.
        length: u32,
    },
    /// Per-4 KiB-block hashes of a verified range.
    VerifyReply {
        /// Request id.
        id: u64,
        /// One truncated BLAKE3 per block.
        hashes: Vec<u64>,
    },
    /// Keepalive.
    Ping,
    /// Keepalive answer.
    Pong,
}

/// A frame that cannot be decoded: the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LinkError {
    /// Unknown kind byte.
    #[error("unknown replication message kind {0}")]
    UnknownKind(u8),
    /// A frame longer than [`MAX_FRAME`].
    #[error("replication frame of {0} bytes exceeds the {MAX_FRAME}-byte limit")]
    TooLong(u32),
    /// A body shorter than its fields or with trailing bytes.
    #[error("malformed replication message of kind {0}")]
    Malformed(u8),
}

const K_HELLO: u8 = 1;
const K_CHALLENGE: u8 = 2;
const K_PROOF: u8 = 3;
const K_STATE: u8 = 4;
const K_BITMAP: u8 = 5;
const K_WRITE: u8 = 6;
const K_ZERO: u8 = 7;
const K_FLUSH: u8 = 8;
const K_ACK: u8 = 9;
const K_FAILED: u8 = 10;
const K_SYNC_DATA: u8 = 11;
const K_SYNC_ACK: u8 = 12;
const K_SYNC_DONE: u8 = 13;
const K_VERIFY: u8 = 14;
const K_VERIFY_REPLY: u8 = 15;
const K_PING: u8 = 16;
const K_PONG: u8 = 17;

fn json<T: Serialize>(v: &T) -> Vec<u8> {
    serde_json::to_vec(v).unwrap_or_default()
}

impl Msg {
    /// Appends the framed message to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        let start = out.len();
        out.extend_from_slice(&[0; FRAME_HEADER]);
        let kind = match self {
            Msg::Hello {
                volume,
                node,
                nonce,
            } => {
                out.extend_from_slice(nonce);
                out.extend(json(&(volume, node)));
                K_HELLO
            }
            Msg::Challenge { nonce, mac } => {
                out.extend_from_slice(nonce);
                out.extend_from_slice(mac);
                K_CHALLENGE
            }
            Msg::Proof { mac } => {
                out.extend_from_slice(mac);
                K_PROOF
            }
            Msg::State(h) => {
                out.extend(json(h));
                K_STATE
            }
            Msg::Bitmap { at, last, bytes } => {
                out.extend_from_slice(&at.to_be_bytes());
                out.push(u8::from(*last));
                out.extend_from_slice(bytes);
                K_BITMAP
            }
            Msg::Write {
                id,
                offset,
                fua,
                data,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.push(u8::from(*fua));
                out.extend_from_slice(data);
                K_WRITE
            }
            Msg::Zero {
                id,
                offset,
                length,
                fua,
            } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
                out.push(u8::from(*fua));
                K_ZERO
            }
            Msg::Flush { id } => {
                out.extend_from_slice(&id.to_be_bytes());
                K_FLUSH
            }
            Msg::Ack { id } => {
                out.extend_from_slice(&id.to_be_bytes());
                K_ACK
            }
            Msg::Failed { id, errno } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&errno.to_be_bytes());
                K_FAILED
            }
            Msg::SyncData { offset, data } => {
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(data);
                K_SYNC_DATA
            }
            Msg::SyncAck { offset, length } => {
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
                K_SYNC_ACK
            }
            Msg::SyncDone { gens } => {
                out.extend(json(gens));
                K_SYNC_DONE
            }
            Msg::Verify { id, offset, length } => {
                out.extend_from_slice(&id.to_be_bytes());
                out.extend_from_slice(&offset.to_be_bytes());
                out.extend_from_slice(&length.to_be_bytes());
                K_VERIFY
            }
            Msg::VerifyReply { id, hashes } => {
                out.extend_from_slice(&id.to_be_bytes());
                for h in hashes {
                    out.extend_from_slice(&h.to_be_bytes());
                }
                K_VERIFY_REPLY
            }
            Msg::Ping => K_PING,
            Msg::Pong => K_PONG,
        };
        // Messages are at most a frame (MAX_FRAME) long.
        let len = u32::try_from(out.len() - start - FRAME_HEADER).unwrap_or(u32::MAX);
        out[start] = kind;
        out[start + 1..start + FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
    }

    /// The framed message.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = Vec::new();
        self.encode(&mut v);
        v
    }

    /// The framed message with the data of a write or sync block kept
    /// apart, moved rather than copied: on the wire `head` then `data`.
    pub fn into_frame(mut self) -> Frame {
        let data = match &mut self {
            Msg::Write { data, .. } | Msg::SyncData { data, .. } => std::mem::take(data),
            _ => Vec::new(),
        };
        let mut head = self.to_bytes();
        add_len(&mut head, data.len());
        Frame { head, data }
    }

    /// The same write or sync block with `data` as its data (moved, not
    /// copied); any other message as it is.
    pub fn with_data(self, data: Vec<u8>) -> Msg {
        match self {
            Msg::Write {
                id, offset, fua, ..
            } => Msg::Write {
                id,
                offset,
                fua,
                data,
            },
            Msg::SyncData { offset, .. } => Msg::SyncData { offset, data },
            other => other,
        }
    }

    /// The framed message of a write or sync block whose `data_len` bytes
    /// of data the caller sends right after `head` from elsewhere (a
    /// kernel pipe, a file): the message's own data must be empty, and the
    /// frame's `data` is.
    pub fn into_frame_apart(self, data_len: usize) -> Frame {
        let mut f = self.into_frame();
        add_len(&mut f.head, data_len + f.data.len());
        f.data.clear();
        f
    }
}

/// Grows the body length a frame header announces by `extra` bytes (data
/// sent after the encoded part).
fn add_len(frame: &mut [u8], extra: usize) {
    let mut l = [0u8; 4];
    l.copy_from_slice(&frame[1..FRAME_HEADER]);
    let extra = u32::try_from(extra).unwrap_or(u32::MAX);
    let len = u32::from_be_bytes(l).saturating_add(extra);
    frame[1..FRAME_HEADER].copy_from_slice(&len.to_be_bytes());
}

/// A message ready to send: the encoded header and fields, then bulk data
/// (empty except for writes and sync blocks).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// Frame header and every field but the bulk data.
    pub head: Vec<u8>,
    /// The bulk data, sent right after `head`.
    pub data: Vec<u8>,
}

impl Frame {
    /// Bytes on the wire.
    pub fn len(&self) -> usize {
        self.head.len() + self.data.len()
    }

    /// Whether the frame is empty (never, for an encoded message).
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The body length a frame header announces, checked against the limit.
pub fn frame_len(header: &[u8; FRAME_HEADER]) -> Result<u32, LinkError> {
    let len = u32::from_be_bytes([header[1], header[2], header[3], header[4]]);
    if len > MAX_FRAME {
        return Err(LinkError::TooLong(len));
    }
    Ok(len)
}

struct Body<'a> {
    b: &'a [u8],
    kind: u8,
}

impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], LinkError> {
        if self.b.len() < n {
            return Err(LinkError::Malformed(self.kind));
        }
        let (a, rest) = self.b.split_at(n);
        self.b = rest;
        Ok(a)
    }
    fn u64(&mut self) -> Result<u64, LinkError> {
        let mut x = [0u8; 8];
        x.copy_from_slice(self.take(8)?);
        Ok(u64::from_be_bytes(x))
    }
    fn u32(&mut self) -> Result<u32, LinkError> {
        let mut x = [0u8; 4];
        x.copy_from_slice(self.take(4)?);
        Ok(u32::from_be_bytes(x))
    }
    fn flag(&mut self) -> Result<bool, LinkError> {
        match self.take(1)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            _ => Err(LinkError::Malformed(self.kind)),
        }
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], LinkError> {
        let mut x = [0u8; N];
        x.copy_from_slice(self.take(N)?);
        Ok(x)
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.b)
    }
    fn json<T: for<'de> Deserialize<'de>>(&mut self) -> Result<T, LinkError> {
        serde_json::from_slice(self.rest()).map_err(|_| LinkError::Malformed(self.kind))
    }
    fn end(&self) -> Result<(), LinkError> {
        if self.b.is_empty() {
            Ok(())
        } else {
            Err(LinkError::Malformed(self.kind))
        }
    }
}

/// Fixed-field bytes at the front of a frame body whose rest is bulk data
/// (writes and sync blocks), so a reader can take the data straight into
/// its own buffer; `None` for every other kind.
pub fn bulk_prefix(kind: u8) -> Option<usize> {
    match kind {
        K_WRITE => Some(17),
        K_SYNC_DATA => Some(8),
        _ => None,
    }
}

/// Decodes a bulk frame from its fixed fields (`prefix`, exactly
/// [`bulk_prefix`] bytes) and its data, which becomes the message's data
/// as it is.
pub fn decode_bulk(kind: u8, prefix: &[u8], data: Vec<u8>) -> Result<Msg, LinkError> {
    if bulk_prefix(kind) != Some(prefix.len()) {
        return Err(LinkError::Malformed(kind));
    }
    match decode(kind, prefix)? {
        m @ (Msg::Write { .. } | Msg::SyncData { .. }) => Ok(m.with_data(data)),
        _ => Err(LinkError::Malformed(kind)),
    }
}

/// Decodes one frame body of `kind`.
pub fn decode(kind: u8, body: &[u8]) -> Result<Msg, LinkError> {
    let mut b = Body { b: body, kind };
    let msg = match kind {
        K_HELLO => {
            let nonce = b.array::<16>()?;
            let (volume, node): (String, String) = b.json()?;
            Msg::Hello {
                volume,
                node,
                nonce,
            }
        }
        K_CHALLENGE => {
            let nonce = b.array::<16>()?;
            let mac = b.array::<32>()?;
            b.end()?;
            Msg::Challenge { nonce, mac }
        }
        K_PROOF => Msg::Proof { mac: b.array()? },
        K_STATE => Msg::State(b.json()?),
        K_BITMAP => Msg::Bitmap {
            at: b.u64()?,
            last: b.flag()?,
            bytes: b.rest().to_vec(),
        },
        K_WRITE => Msg::Write {
            id: b.u64()?,
            offset: b.u64()?,
            fua: b.flag()?,
            data: b.rest().to_vec(),
        },
        K_ZERO => Msg::Zero {
            id: b.u64()?,
            offset: b.u64()?,
            length: b.u32()?,
            fua: b.flag()?,
        },
        K_FLUSH => Msg::Flush { id: b.u64()? },
        K_ACK => Msg::Ack { id: b.u64()? },
        K_FAILED => Msg::Failed {
            id: b.u64()?,
            errno: b.u32()?,
        },
        K_SYNC_DATA => Msg::SyncData {
            offset: b.u64()?,
            data: b.rest().to_vec(),
        },
        K_SYNC_ACK => Msg::SyncAck {
            offset: b.u64()?,
            length: b.u32()?,
        },
        K_SYNC_DONE => Msg::SyncDone { gens: b.json()? },
        K_VERIFY => Msg::Verify {
            id: b.u64()?,
            offset: b.u64()?,
            length: b.u32()?,
        },
        K_VERIFY_REPLY => {
            let id = b.u64()?;
            let rest = b.rest();
            if rest.len() % 8 != 0 {
                return Err(LinkError::Malformed(kind));
            }
            let hashes = rest
                .chunks_exact(8)
                .map(|c| {
                    let mut x = [0u8; 8];
                    x.copy_from_slice(c);
                    u64::from_be_bytes(x)
                })
                .collect();
            Msg::VerifyReply { id, hashes }
        }
        K_PING => Msg::Ping,
        K_PONG => Msg::Pong,
        other => return Err(LinkError::UnknownKind(other)),
    };
    b.end()?;
    Ok(msg)
}

/// The MAC one side sends to prove it holds the cluster key; `role` is
/// `dialer` or `acceptor` so a side's proof cannot be reflected back.
pub fn auth_mac(
    key: &[u8; 32],
    role: &str,
    volume: &str,
    dialer_nonce: &[u8; 16],
    acceptor_nonce: &[u8; 16],
) -> [u8; 32] {
    let mut h = blake3::Hasher::new_keyed(key);
    h.update(b"tandem volume link v1\0");
    h.update(role.as_bytes());
    h.update(&[0]);
    h.update(volume.as_bytes());
    h.update(&[0]);
    h.update(dialer_nonce);
    h.update(acceptor_nonce);
    *h.finalize().as_bytes()
}

/// Whether `mac` is the expected one (constant time).
pub fn mac_ok(
    key: &[u8; 32],
    role: &str,
    volume: &str,
    dialer_nonce: &[u8; 16],
    acceptor_nonce: &[u8; 16],
    mac: &[u8; 32],
) -> bool {
    blake3::Hash::from(auth_mac(key, role, volume, dialer_nonce, acceptor_nonce))
        == blake3::Hash::from(*mac)
}

/// A block's checksum for online verify.
pub fn block_hash(data: &[u8]) -> u64 {
    let h = blake3::hash(data);
    let mut x = [0u8; 8];
    x.copy_from_slice(&h.as_bytes()[..8]);
    u64::from_be_bytes(x)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn round(m: Msg) {
        let b = m.to_bytes();
        let mut h = [0u8; FRAME_HEADER];
        h.copy_from_slice(&b[..FRAME_HEADER]);
        let len = frame_len(&h).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(len as usize, b.len() - FRAME_HEADER);
        assert_eq!(decode(b[0], &b[FRAME_HEADER..]), Ok(m));
    }

    #[test]
    fn messages_round_trip() {
        round(Msg::Hello {
            volume: "data".into(),
            node: "n1".into(),
            nonce: [7; 16],
        });
        round(Msg::Challenge {
            nonce: [1; 16],
            mac: [2; 32],
        });
        round(Msg::Write {
            id: 9,
            offset: 4096,
            fua: true,
            data: vec![1, 2, 3],
        });
        let apart = Msg::Write {
            id: 9,
            offset: 4096,
            fua: true,
            data: Vec::new(),
        }
        .into_frame_apart(3);
        let whole = Msg::Write {
            id: 9,
            offset: 4096,
            fua: true,
            data: vec![1, 2, 3],
        }
        .to_bytes();
        assert_eq!([apart.head, vec![1, 2, 3]].concat(), whole);
        round(Msg::Zero {
            id: 1,
            offset: 0,
            length: 8192,
            fua: false,
        });
        round(Msg::VerifyReply {
            id: 3,
            hashes: vec![1, u64::MAX],
        });
        round(Msg::SyncDone {
            gens: Generations {
                current: 5,
                bitmap: 0,
                history: [4, 3],
            },
        });
        round(Msg::Bitmap {
            at: 8,
            last: true,
            bytes: vec![0xff; 10],
        });
        round(Msg::Pong);
        for m in [
            Msg::Write {
                id: 4,
                offset: 8,
                fua: false,
                data: vec![9; 100],
            },
            Msg::SyncData {
                offset: 4096,
                data: vec![],
            },
            Msg::Ack { id: 1 },
        ] {
            // Split framing is the same bytes as whole framing.
            let b = m.to_bytes();
            let f = m.clone().into_frame();
            assert_eq!([f.head.clone(), f.data.clone()].concat(), b);
            match bulk_prefix(b[0]) {
                Some(p) => {
                    let body = &b[FRAME_HEADER..];
                    assert_eq!(decode_bulk(b[0], &body[..p], body[p..].to_vec()), Ok(m));
                }
                None => assert_eq!(decode(b[0], &b[FRAME_HEADER..]), Ok(m)),
            }
        }
        assert!(decode_bulk(K_WRITE, &[0; 5], vec![]).is_err());
        assert!(decode_bulk(K_ACK, &[0; 8], vec![]).is_err());
    }

    #[test]
    fn macs_bind_role_volume_and_nonces() {
        let k = [9u8; 32];
        let m = auth_mac(&k, "dialer", "v", &[1; 16], &[2; 16]);
        assert!(mac_ok(&k, "dialer", "v", &[1; 16], &[2; 16], &m));
        assert!(!mac_ok(&k, "acceptor", "v", &[1; 16], &[2; 16], &m));
        assert!(!mac_ok(&k, "dialer", "w", &[1; 16], &[2; 16], &m));
        assert!(!mac_ok(&[8; 32], "dialer", "v", &[1; 16], &[2; 16], &m));
    }

    proptest! {
        #[test]
        fn any_body_decodes_or_errs(kind in 0u8..20, body in proptest::collection::vec(any::<u8>(), 0..64)) {
            if let Ok(m) = decode(kind, &body) {
                // Accepted bodies re-encode to a frame that decodes alike.
                let b = m.to_bytes();
                prop_assert_eq!(decode(b[0], &b[FRAME_HEADER..]), Ok(m));
            }
        }
    }
}
