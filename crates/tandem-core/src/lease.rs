//! Leases: how long a node may keep its groups running without fresh word
//! from the cluster, and when the leader may be sure that a silent node's
//! lease has ended, so that its groups can start elsewhere. Pure arithmetic
//! on times; the proofs are here because "never dual-active" and
//! "undisturbed bystanders" rest on them.
//!
//! Every node stamps each heartbeat report with its own monotonic time
//! (`sent_ms`, [`crate::member::Report`]). Every peer echoes back the newest
//! stamp it received from that node, together with `p`, the index of the
//! newest `Place` entry in its own log, committed or not (a placement
//! decision; for decisions compacted into its snapshot, the index its record
//! keeps for them).
//!
//! ## The lease: a majority of voters' echoes
//!
//! A node `x` *counts* an echo from voter `v` only once `x` has committed
//! (and so applied) its log up to the `p` carried with it: by then it has
//! applied every placement decision, and every change of voters, `v` held
//! when it echoed (`p` is the newest such entry's index; a change of
//! voters compacted into a snapshot counts as the snapshot's last index).
//! Its lease runs
//! until `b + lease_ms`, where `b` is the largest time such that a majority
//! of voters gave a counted echo of a stamp `>= b` (`x` itself, when it
//! votes, counting as "now"). An echo, once counted, stays counted: `x`'s
//! commit index only grows. So `x` keeps its lease for as long as it
//! exchanges heartbeats with a majority of voters, whoever leads: a change
//! of leader, the leader's crash, freeze or restart, or a commit, does not
//! end it. (Echoes that arrive while `x` has not yet caught up with `p` are
//! held back, at most [`MAX_PENDING_ECHOES`] per voter, and count as soon as
//! it has; meanwhile the older counted ones keep the lease. Entries that
//! are neither placement decisions nor changes of voters, such as pins,
//! fail counts and fence logs, never hold an echo back.) `x` itself counts
//! only while it votes and has not lost its log (a log it lost may have
//! held the decision that moved its groups away). Across a change of
//! voters the majority is of both sets while it is uncommitted (see
//! `Member::change_voters`).
//!
//! ## Why the leader may take over: one committed entry
//!
//! The leader moves a group `g` off a silent `x` in two steps
//! ([`crate::handover`]): it commits `Place(g, None)` at index `j`, then
//! places `g` elsewhere once `x` is known stopped or its lease has ended.
//! `x` runs `g` only while its applied record places `g` on `x`, so only
//! while its commit index is below `j`. An echo `x` counted then carried
//! `p` at most `x`'s commit index at the time, so below `j`: `v` sent it
//! before its log held entry `j` (which is a `Place` entry). Entry `j` is
//! committed, so it never leaves `v`'s log again: from the moment `a_v` at
//! which `v` appended it, every echo of `v` carries `p >= j`. (This holds
//! for every group `x` runs at any later time too: whatever decision placed
//! a group on `x` after the echo has an index above every `Place` `v` held
//! then.) And an echoed stamp was sent by `x` before `v` received it. So
//! every echo `x` can count while running `g` echoes a stamp `<= B_v`, for
//! any upper bound `B_v` on `v`'s last receipt from `x` before `a_v`. The
//! leader knows such bounds:
//!
//! - itself: its last receipt from `x` (it only echoes what it received);
//! - a voter that acknowledged holding entry `j` (a Raft append reply), at
//!   leader time `t`: `B_v = t` (the reply is sent after `a_v`);
//! - a voter whose report says it has committed `j` and had not heard `x`
//!   for `s` ms, received at leader time `t`: `B_v = t - s` (the report was
//!   sent after `a_v`, and `v` heard nothing from `x` in the `s` ms before);
//! - any other voter: no bound (`B_v = ∞`), and `x` itself if it votes.
//!
//! `x`'s lease needs a majority of counted echoes, and at most one less
//! than a majority of them can come from the largest bounds, so `x` holds no lease on a
//! record that places `g` on it after the majority-th largest `B_v` plus
//! `lease_ms` ([`lease_end_bound`]). The leader adds a margin
//! ([`takeover_margin_ms`]) for clock rates and the holder's stop. With a
//! majority of voters alive and answering the leader (it needs them to
//! lead), at most a minority of bounds is infinite, so the bound is finite
//! and, after a crash of `x`, about `lease_ms` after the survivors last
//! heard it: the same takeover time as a leader-granted lease, without its
//! weak point.
//!
//! ## Groups being stopped: the lease before the decision, and stop grants
//!
//! Once `x` applies `Place(g, None)` (index `j`) it stops `g`, and from
//! then on its own lease (echoes with `p >= j` count now) says nothing
//! about `g`. What it may keep of `g` while the stop runs
//! (`Member::group_until`) is the later of:
//!
//! - the lease it held on the record before `j`: the echoes that counted at
//!   commit `j - 1`, which the bound above covers;
//! - a *stop grant* of a leader: each leader report echoes `x`'s stamp `s`
//!   and says how long the leader's own lease (the majority-th newest echo
//!   of its stamps from voters following it in its term) runs past the
//!   moment that stamp arrived (`left`): `x` may keep `g` until
//!   `s + min(lease_ms, left)` ([`holder_lease_until`]). `s` is earlier than
//!   the leader's receipt `r` of it, so this ends by `r + lease_ms` and by
//!   the granting leader's own lease end; a voter that moves to a later term
//!   never echoes for the old one again, so any later leader elected at `e`
//!   sees every older leader's grants end by `e + lease_ms`.
//!
//! The leader therefore waits, for a silent `x`, for the later of the bound
//! above and [`takeover_at`] (its last receipt from `x`, or its election,
//! plus `lease_ms`), and for a heard `x` that applied `j` and still stops
//! `g`, for its report. A stop that outlasts both is killed (the agent, and
//! its guard if the agent is gone), so `g` never outlives what the leader
//! waits for.
//!
//! Clocks: each node's times are its own monotonic clock (frozen processes
//! see it move on; only rates are compared across nodes, never values).
//! A frozen `x` that thaws finds its echoes older than `lease_ms` and stops
//! before it does anything else.

/// Echoes held back per voter until the node has committed as far as they
/// require (see the module docs); the oldest is dropped beyond this.
pub const MAX_PENDING_ECHOES: usize = 8;

/// The echoes one node has from one voter: the newest it may count, and
/// those it may count once its commit index reaches their log index.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Echoes {
    counted: Option<u64>,
    pending: std::collections::VecDeque<(u64, u64)>,
}

impl Echoes {
    /// Records an echo of the stamp `stamp_ms` that counts once the node
    /// has committed up to `log_index` (the voter's newest `Place` index),
    /// for a node that has committed up to `commit`.
    pub fn add(&mut self, stamp_ms: u64, log_index: u64, commit: u64) {
        self.promote(commit);
        if log_index <= commit {
            self.counted = Some(self.counted.map_or(stamp_ms, |c| c.max(stamp_ms)));
            return;
        }
        // Same requirement as the newest one held back: the newer stamp
        // replaces it (it is worth more and counts at the same moment).
        if let Some(last) = self.pending.back_mut() {
            if last.1 == log_index {
                last.0 = last.0.max(stamp_ms);
                return;
            }
        }
        if self.pending.len() == MAX_PENDING_ECHOES {
            self.pending.pop_front();
        }
        self.pending.push_back((stamp_ms, log_index));
    }

    /// Counts every held-back echo whose log index is now committed.
    pub fn promote(&mut self, commit: u64) {
        let mut best = self.counted;
        self.pending.retain(|(stamp, index)| {
            if *index <= commit {
                best = Some(best.map_or(*stamp, |b| b.max(*stamp)));
                false
            } else {
                true
            }
        });
        self.counted = best;
    }

    /// The newest stamp this voter echoed that counts at `commit`.
    pub fn best(&self, commit: u64) -> Option<u64> {
        self.pending
            .iter()
            .filter(|(_, index)| *index <= commit)
            .map(|(stamp, _)| *stamp)
            .chain(self.counted)
            .max()
    }
}

/// Lease end of a node: the `majority`-th newest of the echoes it counts
/// (one per voter; its own "now" added when it votes), plus `lease_ms`.
/// Echoes from the future are clamped to now. `None` when fewer than
/// `majority` stamps exist at all.
pub fn lease_until(
    now_ms: u64,
    echoes: &[u64],
    self_votes: bool,
    majority: usize,
    lease_ms: u64,
) -> Option<u64> {
    let mut all: Vec<u64> = echoes.iter().map(|e| (*e).min(now_ms)).collect();
    if self_votes {
        all.push(now_ms);
    }
    if majority == 0 || all.len() < majority {
        return None;
    }
    all.sort_unstable_by(|a, b| b.cmp(a));
    Some(all[majority - 1] + lease_ms)
}

/// When (leader time, before the margin) every lease a silent node `x`
/// could hold on a record older than a committed entry `j` has ended, or
/// `None` while that cannot be bounded yet.
///
/// `bounds` holds, for every voter other than `x`, an upper bound on that
/// voter's last receipt from `x` before its log held `j` (None: unknown;
/// see the module docs for how the leader knows them). `x` counts as
/// unbounded when it votes.
pub fn lease_end_bound(
    x_votes: bool,
    majority: usize,
    bounds: &[Option<u64>],
    lease_ms: u64,
) -> Option<u64> {
    let mut all: Vec<Option<u64>> = bounds.to_vec();
    if x_votes {
        all.push(None);
    }
    if majority == 0 || all.len() < majority {
        return None;
    }
    // Unknown sorts first (largest), then newest first.
    all.sort_by(|a, b| match (a, b) {
        (None, None) => std::cmp::Ordering::Equal,
        (None, _) => std::cmp::Ordering::Less,
        (_, None) => std::cmp::Ordering::Greater,
        (Some(a), Some(b)) => b.cmp(a),
    });
    all[majority - 1].map(|b| b + lease_ms)
}

/// End of a stop grant: the echoed stamp of the holder's heartbeat plus
/// the shorter of `lease_ms` and what the leader said was left of its own
/// lease.
pub fn holder_lease_until(echo_ms: u64, leader_left_ms: u64, lease_ms: u64) -> u64 {
    echo_ms + lease_ms.min(leader_left_ms)
}

/// Earliest leader time at which every stop grant a leader may have given a
/// node it last heard at `last_heard_ms` (None: not since it became leader)
/// has ended, for a leader elected at `leader_since_ms`.
pub fn takeover_at(
    last_heard_ms: Option<u64>,
    leader_since_ms: u64,
    lease_ms: u64,
    margin_ms: u64,
) -> u64 {
    last_heard_ms.unwrap_or(0).max(leader_since_ms) + lease_ms + margin_ms
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
    fn lease_needs_a_majority_of_echoes() {
        // 3 voters, this one voting: self + one echo is a majority.
        assert_eq!(lease_until(1000, &[900], true, 2, 200), Some(1100));
        // The newest majority counts: self (1000) and the better echo (950).
        assert_eq!(lease_until(1000, &[900, 950], true, 2, 200), Some(1150));
        // 5 voters: two echoes and self are enough, two echoes alone not.
        assert_eq!(lease_until(1000, &[990, 980], true, 3, 200), Some(1180));
        assert_eq!(lease_until(1000, &[990], true, 3, 200), None);
        // A node that does not vote needs a majority of others' echoes.
        assert_eq!(lease_until(1000, &[990], false, 2, 200), None);
        assert_eq!(lease_until(1000, &[990, 900], false, 2, 200), Some(1100));
    }

    #[test]
    fn echoes_from_the_future_are_clamped() {
        // A forged or confused echo must not extend the lease past now.
        assert_eq!(lease_until(1000, &[5000], true, 2, 200), Some(1200));
    }

    #[test]
    fn an_echo_counts_once_the_log_it_names_is_committed() {
        let mut e = Echoes::default();
        e.add(100, 5, 5);
        assert_eq!(e.best(5), Some(100));
        // Ahead of this node's commit: held back, the older one still counts.
        e.add(150, 7, 5);
        assert_eq!(e.best(5), Some(100));
        assert_eq!(e.best(6), Some(100));
        assert_eq!(e.best(7), Some(150));
        e.promote(7);
        assert_eq!(e.best(7), Some(150));
    }

    /// Regression (issue "keep the promises", defect 2): about 30 commits
    /// in a row kept every grant ahead of the follower's commit index for
    /// a few milliseconds, and its lease lapsed. Held-back echoes count as
    /// soon as the commit catches up, and the last counted one meanwhile.
    #[test]
    fn commits_in_a_row_never_leave_a_lease_without_a_counted_echo() {
        let mut e = Echoes::default();
        let mut commit = 10;
        e.add(0, 10, commit);
        for beat in 1..100u64 {
            // Every beat the voter holds one more entry than this node
            // has committed; the commit follows a beat later.
            e.add(beat * 50, commit + 1, commit);
            commit += 1;
            let best = e.best(commit);
            assert_eq!(best, Some(beat * 50), "beat {beat}");
        }
        assert!(e.pending.len() <= MAX_PENDING_ECHOES);
    }

    #[test]
    fn held_back_echoes_are_bounded() {
        let mut e = Echoes::default();
        for i in 0..100 {
            e.add(i, 1000 + i, 0);
        }
        assert_eq!(e.pending.len(), MAX_PENDING_ECHOES);
        assert_eq!(e.best(2000), Some(99));
    }

    #[test]
    fn a_stop_grant_takes_the_shorter_of_the_lease_and_the_leaders() {
        assert_eq!(holder_lease_until(500, 1000, 200), 700);
        assert_eq!(holder_lease_until(500, 50, 200), 550);
        assert_eq!(takeover_at(Some(1000), 500, 200, 50), 1250);
        assert_eq!(takeover_at(None, 500, 200, 50), 750);
    }

    #[test]
    fn takeover_bound_is_the_majority_th_largest_bound() {
        // 3 voters, x votes: the larger of the two others' bounds.
        assert_eq!(
            lease_end_bound(true, 2, &[Some(1000), Some(1010)], 200),
            Some(1210)
        );
        // One of them unknown: no bound yet.
        assert_eq!(lease_end_bound(true, 2, &[Some(1000), None], 200), None);
        // 5 voters, x and one other unknown: the third largest.
        assert_eq!(
            lease_end_bound(true, 3, &[None, Some(900), Some(1000), Some(950)], 200),
            Some(1200)
        );
        // x does not vote: 3 voters, majority 2, one unknown.
        assert_eq!(
            lease_end_bound(false, 2, &[None, Some(900), Some(1000)], 200),
            Some(1200)
        );
    }

    proptest! {
        /// Whatever the echoes, a lease never ends later than the newest
        /// echo from a majority allows, and never more than `lease_ms`
        /// past now.
        #[test]
        fn lease_is_bounded_by_any_majority(
            now in 1000u64..10_000,
            echoes in proptest::collection::vec(0u64..10_000, 0..7),
            voters in 1usize..8,
            votes in any::<bool>(),
        ) {
            let majority = voters / 2 + 1;
            let echoes: Vec<u64> = echoes.into_iter().take(voters - usize::from(votes)).collect();
            if let Some(until) = lease_until(now, &echoes, votes, majority, 200) {
                let base = until - 200;
                let support = echoes.iter().filter(|e| (**e).min(now) >= base).count()
                    + usize::from(votes);
                prop_assert!(support >= majority);
                prop_assert!(until <= now + 200);
            } else {
                prop_assert!(echoes.len() + usize::from(votes) < majority);
            }
        }

        /// The takeover proof, executed: voters append entry `j` at times
        /// of their own and echo every stamp they receive from `x` with
        /// their log index; `x` has not committed `j`. Whatever `x` counts,
        /// its lease ends by [`lease_end_bound`] over any valid bounds
        /// (each voter's last receipt before it appended `j`, or later).
        #[test]
        fn no_lease_outlives_the_takeover_bound(
            voters in 2usize..7,
            x_votes in any::<bool>(),
            // Per voter other than x: when it appends j, and a slack
            // added to its bound (a later bound is still valid).
            appends in proptest::collection::vec((0u64..3000, 0u64..300), 7),
            // x's stamps: when sent, and per voter the delay until received
            // (None: lost).
            stamps in proptest::collection::vec(
                (0u64..3000, proptest::collection::vec(proptest::option::of(0u64..200), 7)),
                1..30,
            ),
            unknown in proptest::collection::vec(any::<bool>(), 7),
        ) {
            let others = voters - usize::from(x_votes);
            let majority = voters / 2 + 1;
            let j = 10;
            let commit_x = j - 1;
            let mut echoes = vec![Echoes::default(); others];
            let mut last_before = vec![None::<u64>; others];
            for (sent, delays) in &stamps {
                for v in 0..others {
                    let Some(d) = delays[v] else { continue };
                    let rx = sent + d;
                    let held = rx >= appends[v].0;
                    let l = if held { j } else { j - 1 };
                    if !held {
                        last_before[v] = Some(last_before[v].map_or(rx, |b: u64| b.max(rx)));
                    }
                    echoes[v].add(*sent, l, commit_x);
                }
            }
            let counted: Vec<u64> = echoes.iter().filter_map(|e| e.best(commit_x)).collect();
            let bounds: Vec<Option<u64>> = (0..others)
                .map(|v| {
                    if unknown[v] {
                        None
                    } else {
                        // Any bound at or after the last receipt before
                        // the append is valid.
                        Some(last_before[v].unwrap_or(0) + appends[v].1)
                    }
                })
                .collect();
            if let Some(end) = lease_end_bound(x_votes, majority, &bounds, 200) {
                // x, at any time `now` from `end` on, holds no lease.
                for now in [end, end + 1, end + 1000] {
                    let lease = lease_until(now, &counted, x_votes, majority, 200);
                    prop_assert!(lease.map_or(true, |u| u <= end), "{lease:?} > {end}");
                }
            }
        }
    }
}
