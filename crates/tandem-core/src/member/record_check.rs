//! A rejoining node compares its record with the leader's before it may
//! hold a lease.
//!
//! Raft's log matching compares (index, term) pairs only: an entry edited
//! on disk under the same index and term (a damaged or hand-edited state
//! file) is never noticed, and the node would act on a record no one else
//! holds (issue 15: it started a group the leader had placed elsewhere).
//! So every node digests its record at each commit index it reaches and
//! sends the newest in its reports; a follower checks its own digests
//! against its leader's at the same index. Equal once: this incarnation's
//! record is the cluster's, and Raft keeps it so. Different: it is damaged,
//! and the node discards it and fetches it again.

use std::collections::VecDeque;

use crate::agreement::Record;

/// Digests remembered per side: enough for a follower that lags its
/// leader by this many commits to still find a common index.
pub const KEPT: usize = 64;

/// The digest of a record: the first 8 bytes of the BLAKE3 hash of its
/// canonical JSON (every map in it is ordered).
pub fn digest(record: &Record) -> u64 {
    let bytes = serde_json::to_vec(record).unwrap_or_default();
    let h = blake3::hash(&bytes);
    let b = h.as_bytes();
    u64::from_be_bytes([b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]])
}

/// What a comparison found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// No common index yet, or already verified.
    Pending,
    /// The records agree at `index`: verified from now on.
    Agrees {
        /// The common index.
        index: u64,
    },
    /// The records differ at `index`: this node's record is damaged.
    Differs {
        /// The common index.
        index: u64,
    },
}

/// One incarnation's comparison of its record with its leader's.
#[derive(Debug, Clone, Default)]
pub struct RecordCheck {
    own: VecDeque<(u64, u64)>,
    leader: VecDeque<(u64, u64)>,
    verified: bool,
}

fn push(q: &mut VecDeque<(u64, u64)>, at: (u64, u64)) {
    if q.back().is_some_and(|b| b.0 >= at.0) {
        // A lower or equal index again (a discarded record, a new leader):
        // start the list over so indexes stay ordered.
        q.retain(|e| e.0 < at.0);
    }
    q.push_back(at);
    while q.len() > KEPT {
        q.pop_front();
    }
}

impl RecordCheck {
    /// Whether this incarnation's record matched its leader's once.
    pub fn verified(&self) -> bool {
        self.verified
    }

    /// This node's newest (commit index, digest), for its reports.
    pub fn newest(&self) -> Option<(u64, u64)> {
        self.own.back().copied()
    }

    /// This node's record at commit index `index` has digest `d`.
    pub fn note_own(&mut self, index: u64, d: u64) -> Verdict {
        push(&mut self.own, (index, d));
        self.compare()
    }

    /// The leader reported digest `d` at its commit index `index`.
    pub fn note_leader(&mut self, index: u64, d: u64) -> Verdict {
        push(&mut self.leader, (index, d));
        self.compare()
    }

    /// The leader changed: its predecessor's digests no longer apply.
    pub fn leader_changed(&mut self) {
        self.leader.clear();
    }

    /// This node leads: its record is the reference.
    pub fn set_verified(&mut self) {
        self.verified = true;
    }

    /// The record was discarded: compare again from scratch.
    pub fn reset(&mut self) {
        *self = RecordCheck::default();
    }

    fn compare(&mut self) -> Verdict {
        if self.verified {
            return Verdict::Pending;
        }
        for &(i, d) in self.own.iter().rev() {
            if let Some(&(_, l)) = self.leader.iter().find(|e| e.0 == i) {
                if l == d {
                    self.verified = true;
                    return Verdict::Agrees { index: i };
                }
                return Verdict::Differs { index: i };
            }
        }
        Verdict::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::agreement::Command;

    #[test]
    fn agrees_at_a_common_index_and_stays_verified() {
        let mut c = RecordCheck::default();
        assert_eq!(c.note_own(3, 30), Verdict::Pending);
        assert_eq!(c.note_leader(5, 50), Verdict::Pending);
        assert!(!c.verified());
        assert_eq!(c.note_own(5, 50), Verdict::Agrees { index: 5 });
        assert!(c.verified());
        assert_eq!(c.note_leader(6, 99), Verdict::Pending);
    }

    /// Issue 15, defect 1: a committed `Place` edited in a stopped node's
    /// state file (valid JSON, same index and term) went unnoticed, and
    /// the node started the group on restart. The digests differ.
    #[test]
    fn an_edited_record_differs_from_the_leaders() {
        let mut good = Record::default();
        good.apply_at(
            1,
            &Command::Place {
                group: "web".into(),
                node: Some("n2".into()),
                reason: None,
            },
        );
        let mut edited = Record::default();
        edited.apply_at(
            1,
            &Command::Place {
                group: "web".into(),
                node: Some("n3".into()),
                reason: None,
            },
        );
        let mut c = RecordCheck::default();
        c.note_leader(1, digest(&good));
        assert_eq!(
            c.note_own(1, digest(&edited)),
            Verdict::Differs { index: 1 }
        );
        assert!(!c.verified());
        c.reset();
        c.note_own(1, digest(&good));
        assert_eq!(
            c.note_leader(1, digest(&good)),
            Verdict::Agrees { index: 1 }
        );
    }

    #[test]
    fn lists_are_bounded_and_restart_on_a_lower_index() {
        let mut c = RecordCheck::default();
        for i in 0..(KEPT as u64 * 2) {
            c.note_own(i, i);
        }
        assert_eq!(c.own.len(), KEPT);
        c.note_own(2, 7);
        assert_eq!(c.own, VecDeque::from([(2, 7)]));
        assert_eq!(c.newest(), Some((2, 7)));
    }
}
