//! Replicated volumes: the rules, without the disks.
//!
//! - [`bitmap`]: which 4 KiB blocks may differ from the peer.
//! - [`link`]: the replication protocol's messages and the peers' mutual
//!   authentication with the cluster key.
//! - this module: disk states, generation identifiers, the sync decision on
//!   connect (direction, bitmap or full, split brain and its recovery
//!   policies) and when a copy may be promoted.
//!
//! Generations follow DRBD's scheme. `current` names the data as it is
//! now; a primary that starts writing without its peer moves `current` to
//! `bitmap` (the last generation both copies shared: the dirty bitmap holds
//! every block changed since) and takes a fresh `current`. A finished
//! resync moves `bitmap` into `history`. Comparing two copies' generations
//! then says who holds newer data, whether the bitmap suffices, and whether
//! both changed apart (split brain).

pub mod bitmap;
pub mod link;
pub mod link_state;
pub mod rules;
pub mod seal;

use serde::{Deserialize, Serialize};

pub use crate::config::values::SplitBrainPolicy;

/// The state of one copy's data, as DRBD names them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum DiskState {
    /// The newest data: may be promoted.
    UpToDate,
    /// Partly written by a sync (or never synced): not usable.
    Inconsistent,
    /// Consistent but known to be older than the peer's.
    Outdated,
    /// Consistent, but whether it is the newest is not known (no peer and
    /// no cluster record says).
    Consistent,
    /// The peer's disk, while not connected.
    DUnknown,
}

impl std::fmt::Display for DiskState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self:?}")
    }
}

/// A copy's generation identifiers.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Generations {
    /// The data as it is now; 0 for a copy that never held data.
    pub current: u64,
    /// The generation both copies last shared, while this copy writes
    /// alone (0 otherwise).
    pub bitmap: u64,
    /// Older generations, newest first.
    pub history: [u64; 2],
}

impl Generations {
    /// Starts writing apart from the peer: `fresh` becomes current. Does
    /// nothing to `bitmap` if already apart (the bitmap still counts from
    /// the generation last shared).
    pub fn diverge(&mut self, fresh: u64) {
        if self.bitmap == 0 {
            self.bitmap = self.current;
        } else {
            self.push_history(self.current);
        }
        self.current = fresh;
    }

    /// A sync this copy was the source of finished: the shared generation
    /// becomes history.
    pub fn sync_finished(&mut self) {
        if self.bitmap != 0 {
            self.push_history(self.bitmap);
            self.bitmap = 0;
        }
    }

    fn push_history(&mut self, g: u64) {
        if g != 0 && self.history[0] != g {
            self.history = [g, self.history[0]];
        }
    }

    fn knows(&self, g: u64) -> bool {
        g != 0 && self.history.contains(&g)
    }
}

/// What one side brings to the sync decision.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Side {
    /// Node name (breaks ties).
    pub node: String,
    /// Generations.
    pub gens: Generations,
    /// Blocks marked in the dirty bitmap.
    pub dirty_blocks: u64,
    /// Whether the data is consistent (not a sync target cut short).
    pub consistent: bool,
    /// Primary now.
    pub primary: bool,
    /// When this copy was last promoted, ms since the Unix epoch (0: never).
    pub promoted_at_unix_ms: u64,
    /// The operator asked this side to give up its changes
    /// (`tandem volume connect --discard-my-data`).
    pub discard_my_data: bool,
}

/// How two copies get in step on connect, from one side's view.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Sync {
    /// Same data: nothing to copy.
    InSync,
    /// This side sends; `full` copies every block, else the union of both
    /// bitmaps.
    Source {
        /// Whole volume.
        full: bool,
    },
    /// This side receives.
    Target {
        /// Whole volume.
        full: bool,
    },
    /// Both copies changed apart and no policy settled it: stay
    /// disconnected.
    SplitBrain,
    /// Neither copy ever held data: an operator must say which is the
    /// source (`tandem volume create --source` or `promote --force`).
    NoData,
    /// The copies share no history: refuse to connect.
    Unrelated,
}

impl Sync {
    /// The same decision seen from the other side.
    pub fn mirror(&self) -> Sync {
        match self {
            Sync::Source { full } => Sync::Target { full: *full },
            Sync::Target { full } => Sync::Source { full: *full },
            other => other.clone(),
        }
    }
}

/// Decides the sync between `me` and `peer`. Both sides run it on the
/// same inputs; the answer of one is the [`Sync::mirror`] of the other's.
///
/// A primary is never made a sync target: that would change the data under
/// its clients. Where the generations say it should be, the answer is
/// [`Sync::SplitBrain`] and an operator decides.
pub fn decide(me: &Side, peer: &Side, policy: SplitBrainPolicy) -> Sync {
    let sync = decide_by_data(me, peer, policy);
    match sync {
        Sync::Target { .. } if me.primary => Sync::SplitBrain,
        Sync::Source { .. } if peer.primary => Sync::SplitBrain,
        other => other,
    }
}

fn decide_by_data(me: &Side, peer: &Side, policy: SplitBrainPolicy) -> Sync {
    let (a, b) = (me.gens, peer.gens);
    if a.current == 0 && b.current == 0 {
        return Sync::NoData;
    }
    // A sync cut short leaves the target inconsistent: it stays a target.
    if !me.consistent && peer.consistent && b.current != 0 {
        return Sync::Target {
            full: a.current == 0,
        };
    }
    if me.consistent && !peer.consistent && a.current != 0 {
        return Sync::Source {
            full: b.current == 0,
        };
    }
    if a.current == 0 {
        return Sync::Target { full: true };
    }
    if b.current == 0 {
        return Sync::Source { full: true };
    }
    if a.current == b.current {
        // Same generation; blocks marked by a crash (the activity log)
        // still need copying, from the primary or, with none, the side
        // that sorts first (both sides agree on that).
        if me.dirty_blocks == 0 && peer.dirty_blocks == 0 {
            return Sync::InSync;
        }
        return if me.primary || (!peer.primary && me.node < peer.node) {
            Sync::Source { full: false }
        } else {
            Sync::Target { full: false }
        };
    }
    // Each test asks both directions; a history that points both ways is
    // not one the rules produce, so it is refused as unrelated.
    let a_ahead = a.bitmap != 0 && a.bitmap == b.current;
    let b_ahead = b.bitmap != 0 && b.bitmap == a.current;
    match (a_ahead, b_ahead) {
        (true, false) => return Sync::Source { full: false },
        (false, true) => return Sync::Target { full: false },
        (true, true) => return Sync::Unrelated,
        (false, false) => {}
    }
    // Both moved on from the same shared generation, or one moved on from
    // a generation the other has already left behind.
    let split = (a.bitmap != 0 && a.bitmap == b.bitmap) || a.knows(b.bitmap) || b.knows(a.bitmap);
    if split {
        return split_brain(me, peer, policy);
    }
    match (a.knows(b.current), b.knows(a.current)) {
        (true, false) => return Sync::Source { full: true },
        (false, true) => return Sync::Target { full: true },
        _ => {}
    }
    Sync::Unrelated
}

/// Split brain: who gives up its changes, if the operator or the policy
/// says. Both copies changed since they were last in step, so whichever
/// is the target loses the blocks it wrote alone.
fn split_brain(me: &Side, peer: &Side, policy: SplitBrainPolicy) -> Sync {
    // Both copies changed, so the union of bitmaps covers every block that
    // differs: a bitmap sync suffices.
    let me_target = Sync::Target { full: false };
    let me_source = Sync::Source { full: false };
    match (me.discard_my_data, peer.discard_my_data) {
        (true, false) => return me_target,
        (false, true) => return me_source,
        _ => {}
    }
    let younger_me = (me.promoted_at_unix_ms, &me.node) > (peer.promoted_at_unix_ms, &peer.node);
    match policy {
        SplitBrainPolicy::Disconnect => Sync::SplitBrain,
        SplitBrainPolicy::DiscardZeroChanges => match (me.dirty_blocks, peer.dirty_blocks) {
            (0, 0) => {
                if younger_me {
                    me_target
                } else {
                    me_source
                }
            }
            (0, _) => me_target,
            (_, 0) => me_source,
            _ => Sync::SplitBrain,
        },
        SplitBrainPolicy::DiscardYoungerPrimary => {
            if younger_me {
                me_target
            } else {
                me_source
            }
        }
        SplitBrainPolicy::DiscardLeastChanges => {
            if (me.dirty_blocks, !younger_me) < (peer.dirty_blocks, younger_me) {
                me_target
            } else {
                me_source
            }
        }
    }
}

/// The cluster's agreed word on a volume: which copies hold every
/// acknowledged write. Kept in the replicated record and changed only by
/// compare-and-set on `version`, so a primary that writes alone has first
/// made the cluster agree that the other copy is outdated.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct VolumeFacts {
    /// Copies holding every acknowledged write, sorted.
    pub up_to_date: Vec<String>,
    /// Grows by one at every change.
    pub version: u64,
}

/// What this copy's disk state is, from what the node knows locally.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Knowledge<'a> {
    /// This node's name.
    pub me: &'a str,
    /// The data is consistent (no sync into it cut short).
    pub consistent: bool,
    /// The copy holds data (its generation is not 0).
    pub has_data: bool,
    /// Connected to the peer, handshake done, not a sync target.
    pub connected_current: bool,
    /// Connected and receiving a sync, or told by the peer that it is
    /// newer.
    pub connected_behind: bool,
    /// The last local word: the copy was up to date when last known.
    pub local_up_to_date: bool,
    /// The cluster record's word, if it has one for this volume.
    pub record: Option<&'a VolumeFacts>,
}

/// The disk state of this copy.
pub fn disk_state(k: &Knowledge<'_>) -> DiskState {
    if !k.consistent || !k.has_data {
        return DiskState::Inconsistent;
    }
    if k.connected_behind {
        return DiskState::Outdated;
    }
    if k.connected_current {
        return DiskState::UpToDate;
    }
    match k.record {
        Some(r) if !r.up_to_date.is_empty() => {
            if r.up_to_date.iter().any(|n| n == k.me) {
                DiskState::UpToDate
            } else {
                DiskState::Outdated
            }
        }
        _ if k.local_up_to_date => DiskState::UpToDate,
        _ => DiskState::Consistent,
    }
}

/// Why a promotion was refused, with what forcing it would lose.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PromoteRefused {
    /// The copy is not the newest or not known to be.
    #[error("volume `{volume}` on {node} is {state}: {loss}. Promote it anyway only if the other copy is gone for good: `tandem volume promote {volume} --force`")]
    NotUpToDate {
        /// Volume name.
        volume: String,
        /// This node.
        node: String,
        /// Its disk state.
        state: DiskState,
        /// What may be lost.
        loss: String,
    },
}

/// Whether a copy in `state` may be promoted; `force` overrides, and the
/// returned warning says what may be lost.
pub fn may_promote(
    volume: &str,
    node: &str,
    state: DiskState,
    force: bool,
) -> Result<Option<String>, PromoteRefused> {
    let loss = match state {
        DiskState::UpToDate => return Ok(None),
        DiskState::Inconsistent => "a sync into this copy never finished, so some blocks are older than others and the filesystem on it may be damaged".to_string(),
        DiskState::Outdated => "the other copy holds newer writes; promoting this one serves older data and makes the newer writes a split brain to resolve later".to_string(),
        DiskState::Consistent | DiskState::DUnknown => "whether the other copy holds newer writes is not known (no connection to it and no cluster record)".to_string(),
    };
    if force {
        return Ok(Some(format!(
            "WARNING: promoting volume `{volume}` on {node} while {state}: {loss}"
        )));
    }
    Err(PromoteRefused::NotUpToDate {
        volume: volume.into(),
        node: node.into(),
        state,
        loss,
    })
}

/// Remaining time of a sync at the observed rate, in seconds (None until
/// a rate is known).
#[allow(
    clippy::cast_possible_truncation,
    reason = "a float-to-integer cast saturates; an ETA past u64 seconds is no ETA anyway"
)]
pub fn eta_s(remaining_bytes: u64, bytes_per_s: f64) -> Option<u64> {
    (bytes_per_s >= 1.0).then(|| (remaining_bytes as f64 / bytes_per_s).ceil() as u64)
}

#[cfg(test)]
mod tests;
