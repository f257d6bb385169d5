//! Leases: how long a node may keep its groups running without fresh word
//! from the cluster, and how long the leader must wait before it may start
//! a silent node's groups elsewhere. Pure arithmetic on times; the proofs
//! are in the comments because "never dual-active" rests on them.
//!
//! Every node stamps each heartbeat report with its own monotonic time
//! (`sent_ms`, [`crate::member::Report`]); every peer echoes back the
//! newest stamp it received from that node, with its own term and leader.
//!
//! - **Leader lease.** A leader in term `T` holds a lease until
//!   `b + lease_ms`, where `b` is the largest time such that a majority of
//!   voters (the leader itself counting as "now") echoed a stamp `>= b`
//!   while following it in term `T`. A voter that moves to a later term
//!   never echoes for `T` again, so once a new leader is elected (by a
//!   majority, which intersects every majority), `b` cannot pass the new
//!   leader's election time `e`: the old leader's lease ends by
//!   `e + lease_ms`.
//! - **Holder lease (followers).** A follower's lease is granted by its
//!   leader: each leader report echoes the follower's stamp `s` and says how
//!   long the leader's own lease runs past the moment that stamp arrived
//!   (`left`). The follower holds its lease until `s + min(lease_ms, left)`.
//!   `s` is earlier than the leader's receipt of that stamp, so `s + left`
//!   is no later than the leader's own lease end, and `s + lease_ms` no
//!   later than the leader's last receipt from the follower `r` plus
//!   `lease_ms`. So a follower's lease ends by `min(r, e) + lease_ms` for
//!   any later leader elected at `e`. (Counting `left` from the receipt,
//!   not from when the grant is sent, keeps a heartbeat's worth of lease
//!   that would otherwise be lost to the phase between the two.)
//!   A grant counts only once the follower has applied the leader's log up
//!   to the index the grant names, so a node cannot renew a lease and act on
//!   a placement the leader has already changed.
//! - **Takeover.** The leader may give a silent node's group to another
//!   node once `now >= max(last report from it, own election) + lease_ms +
//!   margin_ms`: by then every lease the silent node could hold has ended
//!   (the margin covers clock-rate differences and the holder's stop).
//!
//! Clocks: each node's times are its own monotonic clock (frozen processes
//! see it move on; only rates are compared across nodes, never values).

/// Lease end for a leader: the `majority`-th largest of the echoes (its
/// own "now" included), plus `lease_ms`. `echoes` holds one stamp per
/// voter that currently follows this leader in its term (fenced voters
/// count as "now": they are off). `None` when fewer than `majority` voters
/// echo at all.
pub fn leader_lease_until(
    now_ms: u64,
    echoes: &[u64],
    majority: usize,
    lease_ms: u64,
) -> Option<u64> {
    let mut all: Vec<u64> = echoes.iter().map(|e| (*e).min(now_ms)).collect();
    all.push(now_ms);
    if majority == 0 || all.len() < majority {
        return None;
    }
    all.sort_unstable_by(|a, b| b.cmp(a));
    Some(all[majority - 1] + lease_ms)
}

/// Lease end for a follower from one grant: the echoed stamp of its own
/// heartbeat plus the shorter of `lease_ms` and what the leader said was
/// left of its own lease.
pub fn holder_lease_until(echo_ms: u64, leader_left_ms: u64, lease_ms: u64) -> u64 {
    echo_ms + lease_ms.min(leader_left_ms)
}

/// Earliest leader time at which a node the leader last heard at
/// `last_heard_ms` (None: not since it became leader) holds no lease any
/// more, for a leader elected at `leader_since_ms`.
pub fn takeover_at(
    last_heard_ms: Option<u64>,
    leader_since_ms: u64,
    lease_ms: u64,
    margin_ms: u64,
) -> u64 {
    last_heard_ms.unwrap_or(0).max(leader_since_ms) + lease_ms + margin_ms
}

/// A tighter bound on when every lease a silent node `x` could hold has
/// ended, from what the voters that now follow this leader report.
///
/// `x`'s lease (as a follower) is at most a grant's echo plus `lease_ms`,
/// and a grantor only echoes stamps it received from `x`; as a leader of
/// an older term, its lease is the majority-th newest echo plus
/// `lease_ms`. So with `heard[v]` an upper bound on when voter `v` last
/// received a stamp from `x` (None: unknown), every grant is bounded:
///
/// - by this leader: `last_heard_x + lease_ms`;
/// - by a voter that reported in this term (it cannot grant for an older
///   term any more): `heard[v] + lease_ms`;
/// - by any other voter: the election bound `leader_since_ms + lease_ms`;
/// - by `x` itself as an old leader: the majority-th largest of `heard`
///   (`x` counting as unbounded) plus `lease_ms`, and the election bound.
///
/// The result is the smaller of this and [`takeover_at`] (both are proven
/// bounds), without the margin.
pub fn lease_end_bound(
    last_heard_x: Option<u64>,
    leader_since_ms: u64,
    lease_ms: u64,
    x_votes: bool,
    majority: usize,
    heard: &[Option<u64>],
) -> u64 {
    let election = leader_since_ms + lease_ms;
    let plain = last_heard_x.unwrap_or(0).max(leader_since_ms) + lease_ms;
    let mut worst = last_heard_x.unwrap_or(0) + lease_ms;
    for h in heard {
        worst = worst.max(h.map_or(election, |h| h + lease_ms));
    }
    if x_votes {
        // x itself is unbounded; the majority-th largest of the rest.
        let mut known: Vec<Option<u64>> = heard.to_vec();
        known.push(None);
        known.sort_by(|a, b| match (a, b) {
            (None, None) => std::cmp::Ordering::Equal,
            (None, _) => std::cmp::Ordering::Less,
            (_, None) => std::cmp::Ordering::Greater,
            (Some(a), Some(b)) => b.cmp(a),
        });
        let as_leader = match known.get(majority.saturating_sub(1)) {
            Some(Some(b)) => (b + lease_ms).min(election),
            _ => election,
        };
        worst = worst.max(as_leader);
    }
    worst.min(plain)
}

/// The margin added to a takeover: one heartbeat for the old holder to
/// finish stopping, plus 1% of the lease (plus 1 ms) for clock-rate
/// differences between machines (real clocks drift by parts per million).
pub fn takeover_margin_ms(heartbeat_ms: u64, lease_ms: u64) -> u64 {
    heartbeat_ms + lease_ms / 100 + 1
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn leader_lease_needs_a_majority_of_echoes() {
        // 3 voters: self + one echo is a majority.
        assert_eq!(leader_lease_until(1000, &[900], 2, 200), Some(1100));
        // The newest majority counts: self (1000) and the better echo (950).
        assert_eq!(leader_lease_until(1000, &[900, 950], 2, 200), Some(1150));
        // 5 voters: two echoes are not enough.
        assert_eq!(leader_lease_until(1000, &[990, 980], 3, 200), Some(1180));
        assert_eq!(leader_lease_until(1000, &[990], 3, 200), None);
    }

    #[test]
    fn echoes_from_the_future_are_clamped() {
        // A forged or confused echo must not extend the lease past now.
        assert_eq!(leader_lease_until(1000, &[5000], 2, 200), Some(1200));
    }

    #[test]
    fn holder_takes_the_shorter_of_its_lease_and_the_leaders() {
        assert_eq!(holder_lease_until(500, 1000, 200), 700);
        assert_eq!(holder_lease_until(500, 50, 200), 550);
        assert_eq!(holder_lease_until(500, 0, 200), 500);
    }

    #[test]
    fn takeover_waits_from_the_later_of_last_heard_and_election() {
        assert_eq!(takeover_at(Some(1000), 500, 200, 50), 1250);
        assert_eq!(takeover_at(Some(100), 500, 200, 50), 750);
        assert_eq!(takeover_at(None, 500, 200, 50), 750);
    }

    #[test]
    fn followers_reports_shorten_the_wait_after_a_leader_crash() {
        // 3 voters; x (the old leader) was last heard by this new leader at
        // 1000 and by the other follower at 1010; elected at 1300.
        let b = lease_end_bound(Some(1000), 1300, 200, true, 2, &[Some(1000), Some(1010)]);
        assert_eq!(b, 1210);
        assert!(b < takeover_at(Some(1000), 1300, 200, 0));
        // The other follower has not reported in this term: no better
        // than the election bound.
        let b = lease_end_bound(Some(1000), 1300, 200, true, 2, &[Some(1000), None]);
        assert_eq!(b, 1500);
    }

    #[test]
    fn a_follower_that_still_hears_x_keeps_the_plain_bound() {
        // One-sided partition: the other follower hears x now (2000).
        let b = lease_end_bound(Some(1000), 500, 200, true, 2, &[Some(1000), Some(2000)]);
        assert_eq!(b, takeover_at(Some(1000), 500, 200, 0));
    }

    proptest! {
        /// The tighter bound is never later than the plain one and never
        /// earlier than what this leader's own grants allow.
        #[test]
        fn tight_bound_is_between_own_grants_and_plain(
            last in proptest::option::of(0u64..5000), since in 0u64..5000,
            heard in proptest::collection::vec(proptest::option::of(0u64..5000), 0..6),
            votes in any::<bool>(),
        ) {
            let majority = (heard.len() + 2) / 2 + 1;
            let b = lease_end_bound(last, since, 200, votes, majority, &heard);
            prop_assert!(b <= takeover_at(last, since, 200, 0));
            prop_assert!(b >= last.unwrap_or(0) + 200);
        }

        /// Whatever the echoes, the leader's lease never ends later than
        /// the newest echo from a majority allows, and never before "now"
        /// is possible only with a majority echoing.
        #[test]
        fn leader_lease_is_bounded_by_any_majority(
            now in 1000u64..10_000,
            echoes in proptest::collection::vec(0u64..10_000, 0..7),
            voters in 1usize..8,
        ) {
            let majority = voters / 2 + 1;
            let echoes: Vec<u64> = echoes.into_iter().take(voters - 1).collect();
            if let Some(until) = leader_lease_until(now, &echoes, majority, 200) {
                // At least `majority` stamps (self included) are >= until - 200.
                let base = until - 200;
                let support = echoes.iter().filter(|e| (**e).min(now) >= base).count() + 1;
                prop_assert!(support >= majority);
                prop_assert!(until <= now + 200);
            } else {
                prop_assert!(echoes.len() + 1 < majority);
            }
        }

        /// A follower's lease from a grant never outlasts the leader's own
        /// lease as the leader computed it when it sent the grant.
        #[test]
        fn holder_lease_never_outlasts_the_leaders(
            sent in 0u64..10_000, delay in 0u64..500, left in 0u64..400,
        ) {
            // The stamp was sent at `sent` (real time); the leader received
            // it at `sent + delay`, when its own lease had `left` to run.
            let holder = holder_lease_until(sent, left, 200);
            let leader_end = sent + delay + left;
            prop_assert!(holder <= leader_end);
            prop_assert!(holder <= sent + 200);
        }
    }
}
