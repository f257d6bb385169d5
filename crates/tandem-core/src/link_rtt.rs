//! Heartbeat round-trip times per peer and link.
//!
//! Every heartbeat carries the sender's clock (`sent_ms`). Each node's
//! report to a peer echoes, per link, the newest stamp it received from
//! that peer on that link and how long it held it before this report was
//! sent ([`LinkEcho`]). When the echo comes back on the same link, the
//! round trip is `now - sent - held`: out and back on that one link, the
//! time the echo waited for the next heartbeat taken out.
//!
//! The protocol's clock counts milliseconds, so a sample is a whole
//! number of milliseconds and a LAN's sub-millisecond round trip reads as
//! 0 or 1 ms: enough to see a link that turned slow, not a benchmark.

use serde::{Deserialize, Serialize};

/// Upper bounds of the histogram's buckets, ms (a last one, everything
/// above, is implied).
pub const BUCKETS_MS: [u64; 10] = [1, 2, 5, 10, 25, 50, 100, 250, 500, 1_000];

/// One link's echo of a peer's stamp, in a report to that peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct LinkEcho {
    /// Link index (configuration order).
    pub link: u8,
    /// The recipient's incarnation in the stamp.
    pub incarnation: u64,
    /// The recipient's `sent_ms` in the stamp (its own clock).
    pub sent_ms: u64,
    /// How long the sender held the stamp before sending this report.
    pub held_ms: u64,
}

/// The newest stamp received from a peer on one link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Stamp {
    /// The peer's incarnation.
    pub incarnation: u64,
    /// The peer's `sent_ms`.
    pub sent_ms: u64,
    /// When it arrived here (this node's clock).
    pub rx_ms: u64,
}

impl Stamp {
    /// The echo of this stamp in a report sent at `now_ms` on `link`.
    pub fn echo(&self, link: u8, now_ms: u64) -> LinkEcho {
        LinkEcho {
            link,
            incarnation: self.incarnation,
            sent_ms: self.sent_ms,
            held_ms: now_ms.saturating_sub(self.rx_ms),
        }
    }
}

/// Round trips measured on one link to one peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct RttStats {
    /// Samples per bucket of [`BUCKETS_MS`], then one for everything above.
    pub buckets: Vec<u64>,
    /// Sum of all samples, ms.
    pub sum_ms: u64,
    /// Number of samples.
    pub count: u64,
    /// The latest sample, ms.
    pub last_ms: u64,
    /// The stamp of the latest sample (so a report arriving twice, or an
    /// older one arriving late, is counted once).
    #[serde(skip)]
    last_sent_ms: u64,
}

impl RttStats {
    /// Takes the echo in a report that arrived at `now_ms` on the echo's
    /// own link, from a peer echoing this node's stamps of `incarnation`.
    /// Returns the sample, if the echo was new.
    pub fn on_echo(&mut self, now_ms: u64, incarnation: u64, echo: &LinkEcho) -> Option<u64> {
        if echo.incarnation != incarnation || echo.sent_ms <= self.last_sent_ms {
            return None;
        }
        // An echo of a stamp from the future is forged or confused.
        let elapsed = now_ms.checked_sub(echo.sent_ms)?;
        let rtt = elapsed.saturating_sub(echo.held_ms);
        self.last_sent_ms = echo.sent_ms;
        if self.buckets.len() != BUCKETS_MS.len() + 1 {
            self.buckets = vec![0; BUCKETS_MS.len() + 1];
        }
        let b = BUCKETS_MS
            .iter()
            .position(|le| rtt <= *le)
            .unwrap_or(BUCKETS_MS.len());
        self.buckets[b] = self.buckets[b].saturating_add(1);
        self.sum_ms = self.sum_ms.saturating_add(rtt);
        self.count = self.count.saturating_add(1);
        self.last_ms = rtt;
        Some(rtt)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn echo(sent_ms: u64, held_ms: u64) -> LinkEcho {
        LinkEcho {
            link: 0,
            incarnation: 7,
            sent_ms,
            held_ms,
        }
    }

    #[test]
    fn the_round_trip_leaves_out_the_time_the_echo_was_held() {
        let mut s = RttStats::default();
        // Sent at 100, held 30 ms by the peer, back at 134: 4 ms.
        assert_eq!(s.on_echo(134, 7, &echo(100, 30)), Some(4));
        assert_eq!((s.count, s.sum_ms, s.last_ms), (1, 4, 4));
        assert_eq!(s.buckets[2], 1, "4 ms is in the 5 ms bucket");
    }

    #[test]
    fn an_echo_is_counted_once_and_never_out_of_order() {
        let mut s = RttStats::default();
        assert!(s.on_echo(150, 7, &echo(100, 0)).is_some());
        assert_eq!(s.on_echo(151, 7, &echo(100, 0)), None, "the same, again");
        assert_eq!(s.on_echo(152, 7, &echo(90, 0)), None, "an older one");
        assert_eq!(s.count, 1);
    }

    #[test]
    fn echoes_of_another_incarnation_or_from_the_future_are_ignored() {
        let mut s = RttStats::default();
        assert_eq!(s.on_echo(150, 8, &echo(100, 0)), None);
        assert_eq!(s.on_echo(50, 7, &echo(100, 0)), None);
        assert_eq!(s.count, 0);
    }

    #[test]
    fn a_slow_round_trip_lands_in_the_last_bucket() {
        let mut s = RttStats::default();
        assert_eq!(s.on_echo(5_000, 7, &echo(1_000, 0)), Some(4_000));
        assert_eq!(s.buckets[BUCKETS_MS.len()], 1);
    }
}
