use super::*;
use proptest::prelude::*;

fn side(node: &str, current: u64, bitmap: u64) -> Side {
    Side {
        node: node.into(),
        gens: Generations {
            current,
            bitmap,
            history: [0, 0],
        },
        dirty_blocks: 0,
        consistent: true,
        primary: false,
        promoted_at_unix_ms: 0,
        discard_my_data: false,
    }
}

const D: SplitBrainPolicy = SplitBrainPolicy::Disconnect;

#[test]
fn primary_that_wrote_alone_is_the_bitmap_source() {
    // n1 and n2 shared X; n2 was promoted alone (the failover).
    let mut n2 = side("n2", 0x58, 0);
    n2.gens.diverge(0x5a);
    n2.primary = true;
    n2.dirty_blocks = 10;
    let n1 = side("n1", 0x58, 0);
    assert_eq!(decide(&n2, &n1, D), Sync::Source { full: false });
    assert_eq!(decide(&n1, &n2, D), Sync::Target { full: false });
    // After the sync both hold Z and the shared X is history.
    n2.gens.sync_finished();
    assert_eq!(
        n2.gens,
        Generations {
            current: 0x5a,
            bitmap: 0,
            history: [0x58, 0]
        }
    );
}

#[test]
fn both_written_alone_is_split_brain_and_policies_settle_it() {
    let mut a = side("n1", 1, 0);
    let mut b = side("n2", 1, 0);
    a.gens.diverge(2);
    b.gens.diverge(3);
    a.dirty_blocks = 5;
    b.dirty_blocks = 0;
    a.promoted_at_unix_ms = 100;
    b.promoted_at_unix_ms = 200;
    assert_eq!(decide(&a, &b, D), Sync::SplitBrain);
    assert_eq!(decide(&b, &a, D), Sync::SplitBrain);
    let z = SplitBrainPolicy::DiscardZeroChanges;
    assert_eq!(decide(&b, &a, z), Sync::Target { full: false });
    b.dirty_blocks = 9;
    assert_eq!(decide(&b, &a, z), Sync::SplitBrain);
    let y = SplitBrainPolicy::DiscardYoungerPrimary;
    assert_eq!(decide(&b, &a, y), Sync::Target { full: false });
    let l = SplitBrainPolicy::DiscardLeastChanges;
    assert_eq!(decide(&a, &b, l), Sync::Target { full: false });
    // The operator's word wins over the policy.
    a.discard_my_data = false;
    b.discard_my_data = false;
    let mut a2 = a.clone();
    a2.discard_my_data = true;
    assert_eq!(decide(&a2, &b, D), Sync::Target { full: false });
    // Both primary: never resolved automatically.
    a.primary = true;
    b.primary = true;
    assert_eq!(decide(&a, &b, y), Sync::SplitBrain);
}

#[test]
fn fresh_copies_and_history() {
    assert_eq!(
        decide(&side("n1", 0, 0), &side("n2", 0, 0), D),
        Sync::NoData
    );
    assert_eq!(
        decide(&side("n1", 7, 0), &side("n2", 0, 0), D),
        Sync::Source { full: true }
    );
    // Too old for the bitmap: known only from history.
    let mut a = side("n1", 9, 0);
    a.gens.history = [8, 7];
    assert_eq!(
        decide(&a, &side("n2", 7, 0), D),
        Sync::Source { full: true }
    );
    assert_eq!(decide(&a, &side("n2", 99, 0), D), Sync::Unrelated);
    // An interrupted sync target stays the target.
    let mut t = side("n2", 9, 0);
    t.consistent = false;
    assert_eq!(decide(&t, &a, D), Sync::Target { full: false });
    // Same generation with activity-log blocks: copied from the primary.
    let mut p = side("n2", 9, 0);
    p.primary = true;
    let mut s = side("n1", 9, 0);
    s.dirty_blocks = 3;
    assert_eq!(decide(&p, &s, D), Sync::Source { full: false });
    assert_eq!(decide(&s, &p, D), Sync::Target { full: false });
    // A primary is never the target.
    let mut stale = side("n1", 7, 0);
    stale.primary = true;
    assert_eq!(decide(&stale, &a, D), Sync::SplitBrain);
}

#[test]
fn disk_state_follows_the_record_and_promotion_needs_up_to_date() {
    let rec = VolumeFacts {
        up_to_date: vec!["n1".into()],
        version: 3,
    };
    let k = Knowledge {
        me: "n2",
        consistent: true,
        has_data: true,
        connected_current: false,
        connected_behind: false,
        local_up_to_date: true,
        record: Some(&rec),
    };
    assert_eq!(disk_state(&k), DiskState::Outdated);
    assert_eq!(
        disk_state(&Knowledge { me: "n1", ..k }),
        DiskState::UpToDate
    );
    assert_eq!(
        disk_state(&Knowledge { record: None, ..k }),
        DiskState::UpToDate
    );
    assert_eq!(
        disk_state(&Knowledge {
            record: None,
            local_up_to_date: false,
            ..k
        }),
        DiskState::Consistent
    );
    assert_eq!(
        disk_state(&Knowledge {
            consistent: false,
            ..k
        }),
        DiskState::Inconsistent
    );
    assert!(may_promote("v", "n2", DiskState::Outdated, false).is_err());
    let warn = may_promote("v", "n2", DiskState::Outdated, true);
    assert!(matches!(warn, Ok(Some(w)) if w.contains("newer writes")));
    assert_eq!(may_promote("v", "n1", DiskState::UpToDate, false), Ok(None));
}

fn arb_side(node: &'static str) -> impl Strategy<Value = Side> {
    (
        0u64..4,
        0u64..4,
        0u64..4,
        0u64..4,
        0u64..3,
        any::<bool>(),
        any::<bool>(),
        0u64..3,
        any::<bool>(),
    )
        .prop_map(
            move |(c, b, h0, h1, dirty, consistent, primary, promoted, discard)| Side {
                node: node.into(),
                gens: Generations {
                    current: c,
                    bitmap: b,
                    history: [h0, h1],
                },
                dirty_blocks: dirty,
                consistent,
                primary,
                promoted_at_unix_ms: promoted,
                discard_my_data: discard,
            },
        )
}

proptest! {
    /// Both sides reach the same decision from their own view, and a
    /// primary is never a target.
    #[test]
    fn decisions_are_symmetric(a in arb_side("n1"), b in arb_side("n2"), p in 0usize..4) {
        let policy = [
            SplitBrainPolicy::Disconnect,
            SplitBrainPolicy::DiscardZeroChanges,
            SplitBrainPolicy::DiscardYoungerPrimary,
            SplitBrainPolicy::DiscardLeastChanges,
        ][p];
        let mine = decide(&a, &b, policy);
        prop_assert_eq!(mine.clone(), decide(&b, &a, policy).mirror());
        let target = matches!(mine, Sync::Target { .. });
        prop_assert!(!(a.primary && target), "primary made a target");
    }
}
