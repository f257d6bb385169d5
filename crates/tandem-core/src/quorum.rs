//! Who may decide: the quorum rule over the current membership view.
//!
//! This is the membership-level rule only (which voters this node hears).
//! The agreed, replicated cluster record that builds on it is not part of
//! this module.
//!
//! - Majority mode: quorate when strictly more than half of the voters
//!   (this node included, a witness included) are heard.
//! - Two-node mode (no witness): quorate while the peer is heard. Without it,
//!   a node regains quorum only by fencing its peer — never by itself — so a
//!   partition can never leave both sides quorate.

/// Largest number of voters; further nodes join as non-voters.
pub const MAX_VOTERS: usize = 7;

/// A strict majority of `voters` votes.
pub fn majority_of(voters: usize) -> usize {
    voters / 2 + 1
}

/// How the cluster decides.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Majority of `voters` (nodes that vote, plus a witness if any).
    Majority {
        /// Number of votes in the cluster.
        voters: usize,
    },
    /// Exactly two nodes without a witness.
    TwoNode,
}

/// The quorum as this node sees it now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct View {
    /// Votes heard, this node's own included.
    pub votes: usize,
    /// Votes in the cluster.
    pub expected: usize,
    /// Whether this node may act.
    pub quorate: bool,
}

/// The quorum given `heard_votes`: voters heard *besides* this node, and
/// whether this node votes itself. `peer_fenced` is for two-node mode: the
/// peer is known fenced (recorded by the fencing machinery).
pub fn view(mode: Mode, self_votes: bool, heard_votes: usize, peer_fenced: bool) -> View {
    let votes = heard_votes + usize::from(self_votes);
    match mode {
        Mode::Majority { voters } => View {
            votes,
            expected: voters,
            quorate: voters > 0 && votes * 2 > voters,
        },
        Mode::TwoNode => View {
            votes,
            expected: 2,
            quorate: heard_votes >= 1 || peer_fenced,
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn majority_examples() {
        let m = Mode::Majority { voters: 3 };
        assert!(view(m, true, 1, false).quorate);
        assert!(!view(m, true, 0, false).quorate);
        assert_eq!(
            view(m, true, 2, false),
            View {
                votes: 3,
                expected: 3,
                quorate: true
            }
        );
        // Two nodes + witness = 3 votes: a survivor with the witness is quorate.
        assert!(view(Mode::Majority { voters: 3 }, true, 1, false).quorate);
        // Even split is never quorate.
        assert!(!view(Mode::Majority { voters: 4 }, true, 1, false).quorate);
    }

    #[test]
    fn two_node_needs_the_peer_or_its_fence() {
        assert!(view(Mode::TwoNode, true, 1, false).quorate);
        assert!(!view(Mode::TwoNode, true, 0, false).quorate);
        assert!(view(Mode::TwoNode, true, 0, true).quorate);
    }

    proptest! {
        /// Two disjoint sides of a partition are never both quorate.
        #[test]
        fn disjoint_sides_are_never_both_quorate(voters in 1usize..=MAX_VOTERS, left in 0usize..=MAX_VOTERS) {
            let left = left.min(voters);
            let right = voters - left;
            let m = Mode::Majority { voters };
            // Each side: one member is "self", the rest are heard.
            let l = left > 0 && view(m, true, left - 1, false).quorate;
            let r = right > 0 && view(m, true, right - 1, false).quorate;
            prop_assert!(!(l && r));
        }
    }
}
