//! When the agent feeds the node's watchdog, and when it lets it bite.
//!
//! The watchdog is the backstop behind leases: the agent stops its
//! resources when its lease ends, and a separate guard process does so if
//! the agent dies. Neither helps when the node hangs, or when a stop never
//! completes (a process stuck in the kernel, a script that fails). The
//! watchdog covers both: a hung agent stops feeding by itself, and a live
//! agent stops feeding once it has been without a lease — cut off from the
//! quorum — while something still may run here for longer than
//! `stop_grace_ms`. The device then resets the node.
//!
//! A node with nothing active keeps feeding without a lease: resetting it
//! would protect nothing and only turn a partition into a reboot loop.

/// What to do with the watchdog now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Keep feeding it.
    Feed,
    /// Stop feeding: the device resets the node once its timeout passes.
    Starve {
        /// Why, in words for status and the log.
        reason: String,
    },
}

/// The feeding rule, with its memory of when the node lost its lease while
/// something was active.
#[derive(Debug, Clone)]
pub struct Feeder {
    stop_grace_ms: u64,
    /// Since when the node has been without a lease with something active.
    exposed_since_ms: Option<u64>,
    /// How long it already was before this agent started (a previous
    /// agent's exposure, carried over a restart): a restart must not give
    /// a stuck stop a fresh grace, or the leader's bound on the reset
    /// would not hold.
    carried_ms: u64,
}

impl Feeder {
    /// A feeder that tolerates `stop_grace_ms` of stopping without a lease.
    pub fn new(stop_grace_ms: u64) -> Feeder {
        Feeder {
            stop_grace_ms,
            exposed_since_ms: None,
            carried_ms: 0,
        }
    }

    /// A feeder for an agent that starts while the node has already been
    /// without a lease with something active for `exposed_ms` (what the
    /// previous agent recorded): the grace counts on from there.
    pub fn carrying(stop_grace_ms: u64, exposed_ms: u64) -> Feeder {
        Feeder {
            carried_ms: exposed_ms,
            ..Feeder::new(stop_grace_ms)
        }
    }

    /// Since when (this agent's clock) the node has been without a lease
    /// with something active, and how long before this agent started:
    /// what a restarted agent must carry on from.
    pub fn exposure(&self) -> Option<(u64, u64)> {
        self.exposed_since_ms.map(|s| (s, self.carried_ms))
    }

    /// The verdict at `now_ms`: `lease_valid` is whether this node may run
    /// its groups now, `active` whether any resource here may be running.
    pub fn verdict(&mut self, now_ms: u64, lease_valid: bool, active: bool) -> Verdict {
        if lease_valid || !active {
            self.exposed_since_ms = None;
            self.carried_ms = 0;
            return Verdict::Feed;
        }
        let since = *self.exposed_since_ms.get_or_insert(now_ms);
        let waited = now_ms.saturating_sub(since) + self.carried_ms;
        if waited < self.stop_grace_ms {
            Verdict::Feed
        } else {
            Verdict::Starve {
                reason: format!(
                    "no lease (quorum lost) and resources still active here {waited} ms after the lease ended (stop grace {} ms)",
                    self.stop_grace_ms
                ),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Review of issue 15, defect 8: a restarted agent began a fresh
    /// grace, so a node whose stop hung while cut off could be fed past
    /// the reset the leader counts on. The grace carries over.
    #[test]
    fn a_restart_does_not_restart_the_grace() {
        let mut f = Feeder::carrying(1_000, 900);
        assert_eq!(f.verdict(0, false, true), Verdict::Feed);
        assert!(matches!(
            f.verdict(100, false, true),
            Verdict::Starve { .. }
        ));
        assert_eq!(f.exposure(), Some((0, 900)));
        // A lease (or nothing active) ends the exposure, carried part too.
        assert_eq!(f.verdict(200, true, true), Verdict::Feed);
        assert_eq!(f.exposure(), None);
        assert_eq!(f.verdict(300, false, true), Verdict::Feed);
        assert_eq!(f.verdict(1_299, false, true), Verdict::Feed);
    }

    #[test]
    fn starves_only_after_the_grace_without_a_lease_with_something_active() {
        let mut f = Feeder::new(1_000);
        assert_eq!(f.verdict(0, true, true), Verdict::Feed);
        assert_eq!(f.verdict(100, false, true), Verdict::Feed);
        assert_eq!(f.verdict(1_099, false, true), Verdict::Feed);
        assert!(matches!(
            f.verdict(1_100, false, true),
            Verdict::Starve { .. }
        ));
        // Once the stop completes, feeding resumes.
        assert_eq!(f.verdict(1_200, false, false), Verdict::Feed);
        // And a new exposure starts a new grace.
        assert_eq!(f.verdict(5_000, false, true), Verdict::Feed);
        assert_eq!(f.verdict(5_999, false, true), Verdict::Feed);
        assert!(matches!(
            f.verdict(6_000, false, true),
            Verdict::Starve { .. }
        ));
        // Regaining the lease also resumes feeding.
        assert_eq!(f.verdict(6_001, true, true), Verdict::Feed);
    }

    #[test]
    fn an_idle_node_without_quorum_is_never_reset() {
        let mut f = Feeder::new(0);
        for t in 0..100 {
            assert_eq!(f.verdict(t * 1_000, false, false), Verdict::Feed);
        }
    }

    proptest! {
        /// Whatever the history, the verdict is Feed while the lease is
        /// valid or nothing is active, and Starve exactly when the current
        /// exposure (no lease, active) has lasted the grace.
        #[test]
        fn verdict_matches_the_rule(
            grace in 0u64..5_000,
            steps in proptest::collection::vec((1u64..2_000, any::<bool>(), any::<bool>()), 1..60),
        ) {
            let mut f = Feeder::new(grace);
            let mut now = 0u64;
            let mut exposed_since: Option<u64> = None;
            for (dt, lease, active) in steps {
                now += dt;
                let v = f.verdict(now, lease, active);
                if lease || !active {
                    exposed_since = None;
                    prop_assert_eq!(v, Verdict::Feed);
                } else {
                    let since = *exposed_since.get_or_insert(now);
                    let starve = now - since >= grace;
                    prop_assert_eq!(matches!(v, Verdict::Starve { .. }), starve);
                }
            }
        }
    }
}
