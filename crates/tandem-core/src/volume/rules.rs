//! When a primary may acknowledge a write, and what it asks the cluster
//! record to say of the copies ([`VolumeFacts`]). The volume engine asks
//! these; nothing else decides them.
//!
//! The rules, which together keep "never acknowledge a write that a copy
//! taking over could lack":
//! 1. With the peer replicating, protocol C acknowledges once the peer
//!    has the write, protocol A once the local copy has it.
//! 2. Without the peer (or when its session ends before it answered), a
//!    write is acknowledged only once the record says this copy *alone* is
//!    up to date, and the node may run (it holds its lease).
//! 3. A copy the record leaves out (and that no operator forced up) never
//!    acknowledges alone: it is outdated.
//! 4. The record names both copies while they are in sync and replicating
//!    (asked by the primary, or by the dialing secondary when no copy is
//!    primary); a primary without its peer asks for itself alone, and only
//!    while it may run. No copy writes another out of the record unless it
//!    is in it itself (or forced).

use super::VolumeFacts;
use crate::config::values::Protocol;

/// How a write (or a flush) is to be acknowledged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ack {
    /// Now: the local copy has it (protocol A with the peer replicating).
    Local,
    /// When the peer answers (protocol C); should its session end first,
    /// as [`Ack::Alone`].
    Peer,
    /// When the record says this copy alone is up to date (rule 2).
    Alone,
}

/// Rule 1: how a write sent to the peer (`sent_to_peer`) or not is
/// acknowledged.
pub fn ack(protocol: Protocol, sent_to_peer: bool) -> Ack {
    match (sent_to_peer, protocol) {
        (true, Protocol::A) => Ack::Local,
        (true, Protocol::C) => Ack::Peer,
        (false, _) => Ack::Alone,
    }
}

/// Rule 2, the record's half: the record says copy `me` alone is up to
/// date. (The other half, that the node may run, is the engine's to ask:
/// it holds the lease flag.)
pub fn alone_ok(record: Option<&VolumeFacts>, me: &str) -> bool {
    record.is_some_and(|r| r.up_to_date.len() == 1 && r.up_to_date[0] == me)
}

/// Whether copy `node` holds every acknowledged write by the record's
/// list of up-to-date copies `up_to_date` (None or empty: the record has
/// no word, nothing was written through the cluster). A copy that does
/// not is never the one left when the other's node is forgotten.
pub fn holds_every_write(up_to_date: Option<&[String]>, node: &str) -> bool {
    up_to_date
        .filter(|c| !c.is_empty())
        .map_or(true, |c| c.iter().any(|n| n == node))
}

/// Rule 3: the record names other copies but not `me`, and no operator
/// forced it up: this copy is outdated.
pub fn excluded(record: Option<&VolumeFacts>, me: &str, forced: bool) -> bool {
    !forced
        && record.is_some_and(|r| !r.up_to_date.is_empty() && !r.up_to_date.iter().any(|c| c == me))
}

/// A copy as the record rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Copy<'a> {
    /// This copy's node.
    pub me: &'a str,
    /// The other copy's node.
    pub peer: &'a str,
    /// This copy is primary.
    pub primary: bool,
    /// Connected, replicating and in sync with the peer.
    pub in_sync: bool,
    /// This copy dials the peer (the first of the volume's nodes).
    pub dialer: bool,
    /// The peer said it is primary.
    pub peer_primary: bool,
    /// An operator forced this copy up.
    pub forced: bool,
    /// This node may run its groups (it holds its lease).
    pub may_run: bool,
}

/// Rule 4: the copies the record should name now, if this copy should ask
/// for a change (None: leave the record as it is). `current` is what the
/// record says.
pub fn record_wanted(c: &Copy<'_>, current: Option<&VolumeFacts>) -> Option<Vec<String>> {
    let both = || {
        let mut v = vec![c.me.to_string(), c.peer.to_string()];
        v.sort();
        v
    };
    let desired = if c.primary {
        if c.in_sync {
            both()
        } else {
            vec![c.me.to_string()]
        }
    } else if c.in_sync && c.dialer && !c.peer_primary {
        both()
    } else {
        return None;
    };
    let empty = VolumeFacts::default();
    let current = current.unwrap_or(&empty);
    if current.up_to_date == desired {
        return None;
    }
    let mine = current.up_to_date.is_empty() || current.up_to_date.iter().any(|n| n == c.me);
    if !mine && !c.forced {
        return None;
    }
    if desired.len() == 1 && !c.may_run {
        return None;
    }
    Some(desired)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn facts(copies: &[&str]) -> VolumeFacts {
        VolumeFacts {
            up_to_date: copies.iter().map(|s| s.to_string()).collect(),
            version: 1,
        }
    }

    #[test]
    fn a_write_the_peer_did_not_get_waits_for_the_record() {
        for p in [Protocol::A, Protocol::C] {
            assert_eq!(ack(p, false), Ack::Alone);
        }
        assert_eq!(ack(Protocol::A, true), Ack::Local);
        assert_eq!(ack(Protocol::C, true), Ack::Peer);
    }

    #[test]
    fn a_copy_holds_every_write_when_the_record_names_it_or_says_nothing() {
        let both = ["n1".to_string(), "n2".to_string()];
        let n2 = ["n2".to_string()];
        assert!(holds_every_write(Some(&both), "n1"));
        assert!(!holds_every_write(Some(&n2), "n1"));
        assert!(holds_every_write(Some(&[]), "n1"));
        assert!(holds_every_write(None, "n1"));
    }

    #[test]
    fn alone_only_when_the_record_names_this_copy_alone() {
        assert!(alone_ok(Some(&facts(&["n1"])), "n1"));
        assert!(!alone_ok(Some(&facts(&["n1", "n2"])), "n1"));
        assert!(!alone_ok(Some(&facts(&["n2"])), "n1"));
        assert!(!alone_ok(Some(&facts(&[])), "n1"));
        assert!(!alone_ok(None, "n1"));
    }

    #[test]
    fn left_out_of_the_record_is_outdated_unless_forced() {
        assert!(excluded(Some(&facts(&["n2"])), "n1", false));
        assert!(!excluded(Some(&facts(&["n2"])), "n1", true));
        assert!(!excluded(Some(&facts(&["n1", "n2"])), "n1", false));
        assert!(!excluded(Some(&facts(&[])), "n1", false));
        assert!(!excluded(None, "n1", false));
    }

    /// Every combination of a copy's facts against every record: a copy
    /// never writes the other out unless it is in the record (or forced),
    /// never asks for itself alone while it may not run, and a secondary
    /// never asks for anything but both.
    #[test]
    fn the_record_rule_over_every_combination() {
        let records = [
            None,
            Some(facts(&[])),
            Some(facts(&["n1"])),
            Some(facts(&["n2"])),
            Some(facts(&["n1", "n2"])),
        ];
        for bits in 0u8..64 {
            let c = Copy {
                me: "n1",
                peer: "n2",
                primary: bits & 1 != 0,
                in_sync: bits & 2 != 0,
                dialer: bits & 4 != 0,
                peer_primary: bits & 8 != 0,
                forced: bits & 16 != 0,
                may_run: bits & 32 != 0,
            };
            for r in &records {
                let Some(wanted) = record_wanted(&c, r.as_ref()) else {
                    continue;
                };
                let current = r.clone().unwrap_or_default();
                assert_ne!(wanted, current.up_to_date, "{c:?} {r:?}: no change asked");
                if !current.up_to_date.is_empty() && !current.up_to_date.contains(&"n1".to_string())
                {
                    assert!(
                        c.forced,
                        "{c:?} {r:?}: wrote n2's copy out without being in"
                    );
                }
                if wanted == vec!["n1".to_string()] {
                    assert!(c.primary && !c.in_sync && c.may_run, "{c:?} {r:?}");
                }
                if !c.primary {
                    assert_eq!(wanted, vec!["n1".to_string(), "n2".to_string()], "{c:?}");
                    assert!(c.in_sync && c.dialer && !c.peer_primary, "{c:?}");
                }
            }
        }
        // The primary without its peer asks for itself alone.
        let alone = Copy {
            me: "n1",
            peer: "n2",
            primary: true,
            in_sync: false,
            dialer: false,
            peer_primary: false,
            forced: false,
            may_run: true,
        };
        assert_eq!(
            record_wanted(&alone, Some(&facts(&["n1", "n2"]))),
            Some(vec!["n1".to_string()])
        );
        // Back in sync: both.
        let synced = Copy {
            in_sync: true,
            ..alone
        };
        assert_eq!(
            record_wanted(&synced, Some(&facts(&["n1"]))),
            Some(vec!["n1".to_string(), "n2".to_string()])
        );
    }
}
