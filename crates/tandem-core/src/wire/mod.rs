//! Versioned, authenticated packet formats between agents and the witness.
//!
//! Every packet is `header | body | mac`:
//!
//! ```text
//! offset size field
//!      0    4 magic "TNDM"
//!      4    1 version (2)
//!      5    1 kind (1 = heartbeat, 2 = leave, 3 = agreement, 4 = request)
//!      6    2 body length, big endian
//!      8    8 cluster id   (derived from the cluster name)
//!     16    8 sender node id (derived from the node name)
//!     24    8 recipient node id: the one node that may accept it
//!     32    8 incarnation  (changes at every agent start, only grows)
//!     40    8 sequence     (per sender, recipient and incarnation, only grows)
//!     48    n body
//!   48+n   16 MAC: BLAKE3 keyed hash of bytes 0 .. 48+n, first 16 bytes
//! ```
//!
//! The MAC covers the recipient, so a packet captured on its way to one
//! node and sent to another is refused ([`DropReason::Misdirected`]); with
//! sequence numbers and replay windows per sender and recipient, a capture
//! can be accepted at most once, by the node it was meant for, and never
//! again (version 1 bound only the sender: a capture of heartbeats to n2,
//! replayed to n3 after the sender died, kept it "online" there).
//!
//! A heartbeat body is `link u8 | count u8 | count x node id u64 |
//! report`, where `report` (possibly empty) is the sender's per-recipient
//! state report, opaque here and decoded by [`crate::member`]. A leave body
//! is the same report, sent once the node has stopped what it could: its
//! statement of what it still runs as it goes (empty: no statement). A request body
//! is opaque too: an operator's or a node's request to the leader.
//!
//! Decoding is total: any byte string yields a [`Packet`] or a
//! [`DropReason`], never a panic. The MAC is checked with every accepted key
//! (the current one and, during a rotation, the previous one) before any
//! field is trusted. Replay and stale incarnations are caught by
//! [`replay::ReplayGuard`], which needs the sender's history.

pub mod replay;

use std::fmt;

/// Packet magic.
pub const MAGIC: [u8; 4] = *b"TNDM";
/// The wire version this build speaks.
pub const VERSION: u8 = 2;
/// Header length in bytes.
pub const HEADER_LEN: usize = 48;
/// MAC length in bytes (128-bit tag).
pub const MAC_LEN: usize = 16;
/// Largest packet sent or accepted. Heartbeats fit one Ethernet frame;
/// agreement messages carrying entries or a snapshot may be larger (the
/// kernel fragments them on the local links this runs over).
pub const MAX_PACKET: usize = 16 * 1024;
/// Most nodes one heartbeat can report hearing.
pub const MAX_HEARD: usize = 64;

/// A cluster key: 32 bytes.
pub type Key = [u8; 32];

/// Identifies a cluster on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClusterId(pub u64);

/// Identifies a node on the wire.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize, serde::Deserialize,
)]
pub struct NodeId(pub u64);

fn derive_id(context: &str, name: &str) -> u64 {
    let h = blake3::derive_key(context, name.as_bytes());
    u64::from_be_bytes([h[0], h[1], h[2], h[3], h[4], h[5], h[6], h[7]])
}

impl ClusterId {
    /// The id of the cluster called `name`.
    pub fn from_name(name: &str) -> Self {
        ClusterId(derive_id("tandem 2026 cluster id", name))
    }
}

impl NodeId {
    /// The id of the node called `name` (stable across configuration edits).
    pub fn from_name(name: &str) -> Self {
        NodeId(derive_id("tandem 2026 node id", name))
    }
}

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Fields every packet carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Header {
    /// Sender's cluster.
    pub cluster: ClusterId,
    /// Sender.
    pub sender: NodeId,
    /// The node the packet is for; any other node refuses it.
    pub recipient: NodeId,
    /// Sender's incarnation (boot id).
    pub incarnation: u64,
    /// Sender's sequence number in this incarnation.
    pub seq: u64,
}

/// What a packet says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Body {
    /// "I am alive", sent on every link to every peer every heartbeat.
    Heartbeat {
        /// Index of the link (in configuration order) it was sent on.
        link: u8,
        /// Nodes the sender currently hears on this link, so a receiver
        /// learns whether its own heartbeats arrive (one-way links).
        heard: Vec<NodeId>,
        /// The sender's state report for this recipient (leases, groups);
        /// opaque to the wire layer, empty from senders that have none.
        report: Vec<u8>,
    },
    /// "I am leaving on purpose": peers need not wait for deadtime.
    Leave {
        /// The sender's last state report for this recipient (opaque
        /// here): what it still runs as it leaves. Empty: no statement.
        report: Vec<u8>,
    },
    /// A message of the agreement protocol, encoded by
    /// [`crate::agreement`]; authenticated here like everything else.
    Agreement(Vec<u8>),
    /// A request to the leader (admin command, failure report), opaque here.
    Request(Vec<u8>),
}

impl Body {
    fn kind(&self) -> u8 {
        match self {
            Body::Heartbeat { .. } => 1,
            Body::Leave { .. } => 2,
            Body::Agreement(_) => 3,
            Body::Request(_) => 4,
        }
    }
}

/// A decoded, authenticated packet.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Packet {
    /// Common fields.
    pub header: Header,
    /// The message.
    pub body: Body,
}

/// Why a received packet was dropped. Counted per reason and shown in status.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum DropReason {
    /// Too short, too long, wrong magic or length, or a body that does not parse.
    Malformed,
    /// A version this build does not speak.
    UnknownVersion,
    /// Another cluster's packet.
    WrongCluster,
    /// The MAC does not match any accepted key: forged, corrupted, or a peer
    /// with another key.
    BadMac,
    /// A sequence number already seen (or too old to tell).
    Replay,
    /// An incarnation older than the newest seen from that sender.
    StaleIncarnation,
    /// A sender that is not in the configuration.
    UnknownNode,
    /// Authentic, but addressed to another node: a capture replayed here.
    Misdirected,
}

impl DropReason {
    /// Every reason, for counters.
    pub const ALL: [DropReason; 8] = [
        DropReason::Malformed,
        DropReason::UnknownVersion,
        DropReason::WrongCluster,
        DropReason::BadMac,
        DropReason::Replay,
        DropReason::StaleIncarnation,
        DropReason::UnknownNode,
        DropReason::Misdirected,
    ];

    /// Short name for status and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            DropReason::Malformed => "malformed",
            DropReason::UnknownVersion => "unknown_version",
            DropReason::WrongCluster => "wrong_cluster",
            DropReason::BadMac => "bad_mac",
            DropReason::Replay => "replay",
            DropReason::StaleIncarnation => "stale_incarnation",
            DropReason::UnknownNode => "unknown_node",
            DropReason::Misdirected => "misdirected",
        }
    }
}

impl fmt::Display for DropReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Why a packet could not be encoded.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    /// A heartbeat reports more nodes than fit.
    #[error("a heartbeat can report at most {MAX_HEARD} heard nodes, not {0}")]
    TooManyHeard(usize),
    /// An agreement message does not fit in one packet.
    #[error("an agreement message of {0} bytes does not fit in one packet")]
    TooLarge(usize),
}

fn mac(key: &Key, bytes: &[u8]) -> [u8; MAC_LEN] {
    let full = blake3::keyed_hash(key, bytes);
    let mut out = [0u8; MAC_LEN];
    out.copy_from_slice(&full.as_bytes()[..MAC_LEN]);
    out
}

/// Encodes and authenticates a packet with `key`.
pub fn encode(packet: &Packet, key: &Key) -> Result<Vec<u8>, EncodeError> {
    let mut body = Vec::new();
    match &packet.body {
        Body::Heartbeat {
            link,
            heard,
            report,
        } => {
            let count = u8::try_from(heard.len())
                .ok()
                .filter(|n| usize::from(*n) <= MAX_HEARD)
                .ok_or(EncodeError::TooManyHeard(heard.len()))?;
            body.push(*link);
            body.push(count);
            for n in heard {
                body.extend_from_slice(&n.0.to_be_bytes());
            }
            if body.len() + report.len() > MAX_PACKET - HEADER_LEN - MAC_LEN {
                return Err(EncodeError::TooLarge(report.len()));
            }
            body.extend_from_slice(report);
        }
        Body::Leave { report: bytes } | Body::Agreement(bytes) | Body::Request(bytes) => {
            if bytes.len() > MAX_PACKET - HEADER_LEN - MAC_LEN {
                return Err(EncodeError::TooLarge(bytes.len()));
            }
            body.extend_from_slice(bytes);
        }
    }
    let h = &packet.header;
    let mut out = Vec::with_capacity(HEADER_LEN + body.len() + MAC_LEN);
    out.extend_from_slice(&MAGIC);
    out.push(VERSION);
    out.push(packet.body.kind());
    // Each body was checked against MAX_PACKET above.
    let len = u16::try_from(body.len()).map_err(|_| EncodeError::TooLarge(body.len()))?;
    out.extend_from_slice(&len.to_be_bytes());
    out.extend_from_slice(&h.cluster.0.to_be_bytes());
    out.extend_from_slice(&h.sender.0.to_be_bytes());
    out.extend_from_slice(&h.recipient.0.to_be_bytes());
    out.extend_from_slice(&h.incarnation.to_be_bytes());
    out.extend_from_slice(&h.seq.to_be_bytes());
    out.extend_from_slice(&body);
    let tag = mac(key, &out);
    out.extend_from_slice(&tag);
    Ok(out)
}

fn be_u64(b: &[u8]) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[..8]);
    u64::from_be_bytes(a)
}

/// The sender a packet claims, read without authenticating it: only for
/// telling the operator which peer sends what this node cannot verify.
pub fn claimed_sender(bytes: &[u8]) -> Option<NodeId> {
    if bytes.len() < HEADER_LEN || bytes[..4] != MAGIC {
        return None;
    }
    Some(NodeId(be_u64(&bytes[16..])))
}

/// Decodes and authenticates `bytes` for node `me` of cluster `cluster`,
/// accepting a MAC made with any of `keys` (current first). Checks, in
/// order: size and magic, version, MAC, cluster, recipient, body.
pub fn decode(
    bytes: &[u8],
    cluster: ClusterId,
    me: NodeId,
    keys: &[&Key],
) -> Result<Packet, DropReason> {
    if bytes.len() < HEADER_LEN + MAC_LEN || bytes.len() > MAX_PACKET || bytes[..4] != MAGIC {
        return Err(DropReason::Malformed);
    }
    if bytes[4] != VERSION {
        return Err(DropReason::UnknownVersion);
    }
    let body_len = u16::from_be_bytes([bytes[6], bytes[7]]) as usize;
    if HEADER_LEN + body_len + MAC_LEN != bytes.len() {
        return Err(DropReason::Malformed);
    }
    let (signed, tag) = bytes.split_at(HEADER_LEN + body_len);
    // Constant-time comparison: a timing side channel must not reveal tags.
    let authentic = keys
        .iter()
        .any(|k| blake3::Hash::from(pad(&mac(k, signed))) == blake3::Hash::from(pad(tag)));
    if !authentic {
        return Err(DropReason::BadMac);
    }
    let header = Header {
        cluster: ClusterId(be_u64(&bytes[8..])),
        sender: NodeId(be_u64(&bytes[16..])),
        recipient: NodeId(be_u64(&bytes[24..])),
        incarnation: be_u64(&bytes[32..]),
        seq: be_u64(&bytes[40..]),
    };
    if header.cluster != cluster {
        return Err(DropReason::WrongCluster);
    }
    if header.recipient != me {
        return Err(DropReason::Misdirected);
    }
    let body = &bytes[HEADER_LEN..HEADER_LEN + body_len];
    let body = match bytes[5] {
        1 => {
            let (&link, rest) = body.split_first().ok_or(DropReason::Malformed)?;
            let (&count, ids) = rest.split_first().ok_or(DropReason::Malformed)?;
            let count = count as usize;
            if count > MAX_HEARD || ids.len() < count * 8 {
                return Err(DropReason::Malformed);
            }
            let (ids, report) = ids.split_at(count * 8);
            let heard = ids.chunks_exact(8).map(|c| NodeId(be_u64(c))).collect();
            Body::Heartbeat {
                link,
                heard,
                report: report.to_vec(),
            }
        }
        2 => Body::Leave {
            report: body.to_vec(),
        },
        3 => Body::Agreement(body.to_vec()),
        4 => Body::Request(body.to_vec()),
        _ => return Err(DropReason::Malformed),
    };
    Ok(Packet { header, body })
}

/// Widens a tag to 32 bytes so `blake3::Hash`'s constant-time `==` applies.
fn pad(tag: &[u8]) -> [u8; 32] {
    let mut out = [0u8; 32];
    let n = tag.len().min(32);
    out[..n].copy_from_slice(&tag[..n]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const KEY: Key = [7u8; 32];
    const OLD: Key = [9u8; 32];

    fn cluster() -> ClusterId {
        ClusterId::from_name("web")
    }

    fn me() -> NodeId {
        NodeId::from_name("n2")
    }

    fn heartbeat(seq: u64) -> Packet {
        Packet {
            header: Header {
                cluster: cluster(),
                sender: NodeId::from_name("n1"),
                recipient: me(),
                incarnation: 5,
                seq,
            },
            body: Body::Heartbeat {
                link: 1,
                heard: vec![NodeId::from_name("n2"), NodeId::from_name("n3")],
                report: Vec::new(),
            },
        }
    }

    #[test]
    fn round_trip_heartbeat_and_leave() {
        let p = heartbeat(42);
        let bytes = encode(&p, &KEY).unwrap();
        assert_eq!(bytes.len(), HEADER_LEN + 2 + 16 + MAC_LEN);
        assert_eq!(decode(&bytes, cluster(), me(), &[&KEY]), Ok(p.clone()));
        let leave = Packet {
            body: Body::Leave {
                report: b"{}".to_vec(),
            },
            ..p
        };
        assert_eq!(
            decode(&encode(&leave, &KEY).unwrap(), cluster(), me(), &[&KEY]),
            Ok(leave)
        );
    }

    #[test]
    fn wrong_key_is_bad_mac_and_previous_key_is_accepted_during_rotation() {
        let bytes = encode(&heartbeat(1), &OLD).unwrap();
        assert_eq!(
            decode(&bytes, cluster(), me(), &[&KEY]),
            Err(DropReason::BadMac)
        );
        assert!(decode(&bytes, cluster(), me(), &[&KEY, &OLD]).is_ok());
    }

    #[test]
    fn any_flipped_bit_is_refused() {
        let bytes = encode(&heartbeat(1), &KEY).unwrap();
        for i in 0..bytes.len() {
            for bit in 0..8 {
                let mut b = bytes.clone();
                b[i] ^= 1 << bit;
                assert!(
                    decode(&b, cluster(), me(), &[&KEY]).is_err(),
                    "byte {i} bit {bit}"
                );
            }
        }
    }

    #[test]
    fn other_cluster_with_same_key_is_wrong_cluster() {
        let mut p = heartbeat(1);
        p.header.cluster = ClusterId::from_name("db");
        let bytes = encode(&p, &KEY).unwrap();
        assert_eq!(
            decode(&bytes, cluster(), me(), &[&KEY]),
            Err(DropReason::WrongCluster)
        );
    }

    /// Issue 15, defect 4: heartbeats n1 sent to n2, captured and resent to
    /// n3, were all accepted there (the MAC did not cover the recipient).
    #[test]
    fn heartbeat_replayed_to_another_recipient_is_misdirected() {
        let bytes = encode(&heartbeat(1), &KEY).unwrap();
        let n3 = NodeId::from_name("n3");
        assert_eq!(
            decode(&bytes, cluster(), n3, &[&KEY]),
            Err(DropReason::Misdirected)
        );
        assert!(decode(&bytes, cluster(), me(), &[&KEY]).is_ok());
        // Rewriting the recipient field breaks the MAC.
        let mut moved = bytes.clone();
        moved[24..32].copy_from_slice(&n3.0.to_be_bytes());
        assert_eq!(
            decode(&moved, cluster(), n3, &[&KEY]),
            Err(DropReason::BadMac)
        );
    }

    #[test]
    fn size_magic_and_version_checks() {
        let bytes = encode(&heartbeat(1), &KEY).unwrap();
        assert_eq!(
            decode(&bytes[..bytes.len() - 1], cluster(), me(), &[&KEY]),
            Err(DropReason::Malformed)
        );
        assert_eq!(
            decode(&[], cluster(), me(), &[&KEY]),
            Err(DropReason::Malformed)
        );
        let mut v2 = bytes.clone();
        v2[4] = 1; // the version before recipients were bound
        assert_eq!(
            decode(&v2, cluster(), me(), &[&KEY]),
            Err(DropReason::UnknownVersion)
        );
        let mut big = bytes;
        big.resize(MAX_PACKET + 1, 0);
        assert_eq!(
            decode(&big, cluster(), me(), &[&KEY]),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn authentic_but_malformed_body_is_malformed() {
        // Sign a heartbeat body whose count disagrees with its length.
        let mut bytes = encode(&heartbeat(1), &KEY).unwrap();
        bytes.truncate(bytes.len() - MAC_LEN);
        bytes[HEADER_LEN + 1] = 3;
        let tag = mac(&KEY, &bytes);
        bytes.extend_from_slice(&tag);
        assert_eq!(
            decode(&bytes, cluster(), me(), &[&KEY]),
            Err(DropReason::Malformed)
        );
    }

    #[test]
    fn too_many_heard_nodes_is_an_encode_error() {
        let mut p = heartbeat(1);
        p.body = Body::Heartbeat {
            link: 0,
            heard: vec![NodeId(1); MAX_HEARD + 1],
            report: Vec::new(),
        };
        assert_eq!(
            encode(&p, &KEY),
            Err(EncodeError::TooManyHeard(MAX_HEARD + 1))
        );
    }

    #[test]
    fn ids_are_stable_and_distinct() {
        assert_eq!(NodeId::from_name("n1"), NodeId::from_name("n1"));
        assert_ne!(NodeId::from_name("n1"), NodeId::from_name("n2"));
        assert_ne!(ClusterId::from_name("n1").0, NodeId::from_name("n1").0);
    }

    proptest! {
        #[test]
        fn any_bytes_decode_to_a_packet_or_a_reason(bytes in proptest::collection::vec(any::<u8>(), 0..1600)) {
            let _ = decode(&bytes, cluster(), me(), &[&KEY]);
        }

        #[test]
        fn valid_header_with_garbage_after_never_panics(tail in proptest::collection::vec(any::<u8>(), 0..200), kind in any::<u8>()) {
            let mut b = MAGIC.to_vec();
            b.push(VERSION);
            b.push(kind);
            b.extend_from_slice(&(tail.len() as u16).to_be_bytes());
            b.extend_from_slice(&[0u8; 32]);
            b.extend_from_slice(&tail);
            let tag = mac(&KEY, &b);
            b.extend_from_slice(&tag);
            let _ = decode(&b, ClusterId(0), NodeId(0), &[&KEY]);
        }

        #[test]
        fn round_trip(incarnation in any::<u64>(), seq in any::<u64>(), link in any::<u8>(),
                      heard in proptest::collection::vec(any::<u64>(), 0..=MAX_HEARD), kind in 0u8..4,
                      agreement in proptest::collection::vec(any::<u8>(), 0..2000)) {
            let body = match kind {
                0 => Body::Leave { report: agreement },
                1 => Body::Agreement(agreement),
                2 => Body::Request(agreement),
                _ => Body::Heartbeat { link, heard: heard.into_iter().map(NodeId).collect(), report: agreement },
            };
            let p = Packet { header: Header { cluster: cluster(), sender: NodeId(3), recipient: me(), incarnation, seq }, body };
            prop_assert_eq!(decode(&encode(&p, &KEY).unwrap(), cluster(), me(), &[&KEY]), Ok(p));
        }
    }
}
