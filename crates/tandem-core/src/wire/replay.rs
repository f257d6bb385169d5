//! Anti-replay: per sender, the newest incarnation seen and a sliding window
//! of sequence numbers (as IPsec does). A packet is accepted once; a captured
//! packet sent again, or one from an older incarnation of its sender, is
//! dropped. Only authentic packets (MAC checked) may be shown to the guard,
//! or a forger could move the window.

use std::collections::BTreeMap;

use super::{DropReason, Header, NodeId};

/// Sequence numbers remembered behind the newest one. Heartbeats are sent in
/// order on every link; 256 covers reordering between links many times over.
pub const WINDOW: u64 = 256;
const WORDS: usize = (WINDOW / 64) as usize;

/// One sender's state.
#[derive(Debug, Clone, PartialEq, Eq)]
struct SenderWindow {
    incarnation: u64,
    /// Highest sequence accepted in this incarnation.
    top: u64,
    /// Bit i set: sequence `top - i` was seen.
    seen: [u64; WORDS],
}

impl SenderWindow {
    /// Everything below the first sequence accepted counts as seen: a
    /// captured packet older than that cannot be told from a replay, and
    /// refusing a genuine late heartbeat costs nothing.
    fn new(incarnation: u64, seq: u64) -> Self {
        let seen = [u64::MAX; WORDS];
        SenderWindow {
            incarnation,
            top: seq,
            seen,
        }
    }

    fn bit(&self, back: u64) -> bool {
        self.seen[(back / 64) as usize] & (1 << (back % 64)) != 0
    }

    fn set(&mut self, back: u64) {
        self.seen[(back / 64) as usize] |= 1 << (back % 64);
    }

    /// Moves the window so that `top` becomes `seq`.
    fn advance(&mut self, seq: u64) {
        let shift = seq - self.top;
        if shift >= WINDOW {
            self.seen = [0; WORDS];
        } else {
            // Shift the whole bitmap left by `shift` bits (towards older).
            let (words, bits) = ((shift / 64) as usize, shift % 64);
            for i in (0..WORDS).rev() {
                let src = i.checked_sub(words);
                let mut v = src.map_or(0, |s| self.seen[s] << bits);
                if bits > 0 {
                    if let Some(s) = src.and_then(|s| s.checked_sub(1)) {
                        v |= self.seen[s] >> (64 - bits);
                    }
                }
                self.seen[i] = v;
            }
        }
        self.top = seq;
    }
}

/// Replay protection for every sender.
#[derive(Debug, Clone, Default)]
pub struct ReplayGuard {
    senders: BTreeMap<NodeId, SenderWindow>,
}

/// What accepting a packet revealed about its sender.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Accepted {
    /// Same incarnation as before.
    Known,
    /// First packet from this sender, or a newer incarnation (it restarted).
    NewIncarnation,
}

impl ReplayGuard {
    /// Accepts `header` once; refuses replays and stale incarnations.
    pub fn check(&mut self, header: &Header) -> Result<Accepted, DropReason> {
        let Some(w) = self.senders.get_mut(&header.sender) else {
            self.senders.insert(
                header.sender,
                SenderWindow::new(header.incarnation, header.seq),
            );
            return Ok(Accepted::NewIncarnation);
        };
        if header.incarnation < w.incarnation {
            return Err(DropReason::StaleIncarnation);
        }
        if header.incarnation > w.incarnation {
            *w = SenderWindow::new(header.incarnation, header.seq);
            return Ok(Accepted::NewIncarnation);
        }
        if header.seq > w.top {
            w.advance(header.seq);
            w.set(0);
            return Ok(Accepted::Known);
        }
        let back = w.top - header.seq;
        if back >= WINDOW || w.bit(back) {
            return Err(DropReason::Replay);
        }
        w.set(back);
        Ok(Accepted::Known)
    }

    /// The newest incarnation seen from `sender`.
    pub fn incarnation(&self, sender: NodeId) -> Option<u64> {
        self.senders.get(&sender).map(|w| w.incarnation)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::ClusterId;
    use proptest::prelude::*;
    use std::collections::BTreeSet;

    fn h(incarnation: u64, seq: u64) -> Header {
        Header {
            cluster: ClusterId(1),
            sender: NodeId(9),
            recipient: NodeId(1),
            incarnation,
            seq,
        }
    }

    #[test]
    fn each_sequence_is_accepted_once() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(&h(1, 10)), Ok(Accepted::NewIncarnation));
        assert_eq!(g.check(&h(1, 10)), Err(DropReason::Replay));
        assert_eq!(g.check(&h(1, 12)), Ok(Accepted::Known));
        assert_eq!(g.check(&h(1, 11)), Ok(Accepted::Known)); // reordered, fine
        assert_eq!(g.check(&h(1, 11)), Err(DropReason::Replay));
    }

    /// CI run of session 1: the membership test replayed n2's packet with
    /// sequence 1, but n1 had first heard n2 at a later sequence, so the
    /// empty window below it accepted the capture.
    #[test]
    fn regression_packet_older_than_the_first_one_heard_is_replay() {
        let mut g = ReplayGuard::default();
        assert_eq!(g.check(&h(1, 7)), Ok(Accepted::NewIncarnation));
        assert_eq!(g.check(&h(1, 1)), Err(DropReason::Replay));
        assert_eq!(g.check(&h(1, 6)), Err(DropReason::Replay));
        assert_eq!(g.check(&h(2, 3)), Ok(Accepted::NewIncarnation));
        assert_eq!(g.check(&h(2, 2)), Err(DropReason::Replay));
        assert_eq!(g.check(&h(2, 4)), Ok(Accepted::Known));
    }

    #[test]
    fn too_old_is_replay() {
        let mut g = ReplayGuard::default();
        g.check(&h(1, 1)).unwrap();
        g.check(&h(1, 1000)).unwrap();
        assert_eq!(g.check(&h(1, 1000 - WINDOW)), Err(DropReason::Replay));
        assert_eq!(g.check(&h(1, 1000 - WINDOW + 1)), Ok(Accepted::Known));
    }

    #[test]
    fn new_incarnation_resets_and_old_one_is_stale() {
        let mut g = ReplayGuard::default();
        g.check(&h(1, 500)).unwrap();
        assert_eq!(g.check(&h(2, 0)), Ok(Accepted::NewIncarnation));
        assert_eq!(g.incarnation(NodeId(9)), Some(2));
        assert_eq!(g.check(&h(1, 501)), Err(DropReason::StaleIncarnation));
        assert_eq!(g.check(&h(2, 1)), Ok(Accepted::Known));
    }

    #[test]
    fn large_jumps_clear_the_window() {
        let mut g = ReplayGuard::default();
        g.check(&h(1, 5)).unwrap();
        g.check(&h(1, 5 + 10 * WINDOW)).unwrap();
        assert_eq!(g.check(&h(1, 5 + 10 * WINDOW - 1)), Ok(Accepted::Known));
    }

    proptest! {
        /// Against a model: a sequence is accepted iff it was never accepted
        /// before, is not below the first one accepted, and is within the
        /// window of the highest accepted so far.
        #[test]
        fn matches_the_model(seqs in proptest::collection::vec(0u64..2_000, 1..400)) {
            let mut g = ReplayGuard::default();
            let mut seen = BTreeSet::new();
            let mut top: Option<u64> = None;
            let mut first: Option<u64> = None;
            for s in seqs {
                let expect_ok = !seen.contains(&s)
                    && first.map_or(true, |f| s > f)
                    && top.map_or(true, |t| s > t || t - s < WINDOW);
                let got = g.check(&h(1, s));
                prop_assert_eq!(got.is_ok(), expect_ok, "seq {} top {:?}", s, top);
                if got.is_ok() {
                    first.get_or_insert(s);
                    seen.insert(s);
                    top = Some(top.map_or(s, |t| t.max(s)));
                }
            }
        }
    }
}
