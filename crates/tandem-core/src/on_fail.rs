//! What a failure leads to: a resource's or monitor's `on_fail` policy,
//! and what its kind says of the failure, read into what this node does now
//! ([`Local`]) and what it asks the leader to do ([`Escalation`]).
//!
//! One pure rule, [`decide`], tested over every combination:
//!
//! | `on_fail` | here                                   | leader                          |
//! |-----------|----------------------------------------|---------------------------------|
//! | `restart` | stop down to it, start again           | counts one failure; at the group's `migration_threshold` the group moves |
//! | `move`    | stop down to it, start nothing         | moves the group off this node now |
//! | `fence`   | touch nothing (the node goes off)      | moves the group and fences this node; the group starts elsewhere only once the fence is confirmed |
//! | `block`   | touch nothing                          | leaves the group alone everywhere (like maintenance) until `tandem cleanup` |
//! | `standby` | stop down to it, start nothing         | puts this node in standby: every group leaves it |
//! | `ignore`  | a failed check changes nothing         | records the failure for status only |
//!
//! What the kind says can only make it stronger: a failure that bars the
//! node (OCF's hard errors) moves the group even under `restart` or
//! `ignore`, and one that bars every node (OCF's "not configured") stops
//! the group everywhere unless the policy is `block`: fencing or emptying
//! node after node for a mistake in the configuration would take the
//! whole cluster down. `ignore` covers checks only: a start that failed
//! did not start anything, so it is recovered as under `restart`.

use crate::config::OnFail;
use crate::group::Bar;

/// What failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// A start (or a probe that says this node cannot run it).
    Start,
    /// A check of something that was running (a resource's own check or a
    /// group monitor).
    Check,
}

/// What this node does with the group now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Local {
    /// Stop what runs above the failed resource and the resource itself,
    /// then start them again (after the restart backoff).
    Recover,
    /// Stop down to the failed resource, and start nothing until the group
    /// is wanted elsewhere (or [`HOLD_MAX_MS`] passes: a request to the
    /// leader can be lost).
    Hold,
    /// Neither stop nor start anything of the group until the leader
    /// takes over (the group becomes unmanaged) or the node goes off.
    Freeze,
    /// Nothing: the resource counts as running.
    Keep,
}

/// How long a held group waits for the leader to move it before it is
/// recovered in place as under `restart` (a lost request must not leave a
/// service down for good).
pub const HOLD_MAX_MS: u64 = 60_000;

/// What the node asks the leader to do with a failure (`"count"`... in
/// JSON, in [`crate::member::Request::Failed`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Escalation {
    /// Record it for status only (`ignore`).
    Record,
    /// Move the group off the failing node now.
    Move,
    /// Move the group off every node until `tandem cleanup`: the failure
    /// is in its configuration.
    BarEverywhere,
    /// Fence the failing node; the group moves once it is off.
    Fence,
    /// Leave the group alone everywhere until `tandem cleanup`.
    Block,
    /// Put the failing node in standby.
    Standby,
    /// Count one failure toward the group's migration threshold. Also what
    /// a word from a newer version reads as.
    #[default]
    #[serde(other)]
    Count,
}

/// The one rule: what `policy` and the kind's `bar` make of a failure in
/// `phase`.
pub fn decide(policy: OnFail, phase: Phase, bar: Option<Bar>) -> (Local, Escalation) {
    let by_policy = match (policy, phase) {
        (OnFail::Restart, _) | (OnFail::Ignore, Phase::Start) => {
            (Local::Recover, Escalation::Count)
        }
        (OnFail::Ignore, Phase::Check) => (Local::Keep, Escalation::Record),
        (OnFail::Move, _) => (Local::Hold, Escalation::Move),
        (OnFail::Fence, _) => (Local::Freeze, Escalation::Fence),
        (OnFail::Block, _) => (Local::Freeze, Escalation::Block),
        (OnFail::Standby, _) => (Local::Hold, Escalation::Standby),
    };
    match (bar, policy) {
        (None, _) | (Some(_), OnFail::Block) => by_policy,
        (Some(Bar::Everywhere), _) => (Local::Hold, Escalation::BarEverywhere),
        (Some(Bar::Node), OnFail::Restart | OnFail::Ignore) => (Local::Hold, Escalation::Move),
        (Some(Bar::Node), OnFail::Move | OnFail::Fence | OnFail::Standby) => by_policy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const POLICIES: [OnFail; 6] = [
        OnFail::Restart,
        OnFail::Move,
        OnFail::Fence,
        OnFail::Block,
        OnFail::Standby,
        OnFail::Ignore,
    ];

    #[test]
    fn each_policy_reads_as_its_table_row_when_the_kind_bars_nothing() {
        let row = |p| decide(p, Phase::Check, None);
        assert_eq!(row(OnFail::Restart), (Local::Recover, Escalation::Count));
        assert_eq!(row(OnFail::Move), (Local::Hold, Escalation::Move));
        assert_eq!(row(OnFail::Fence), (Local::Freeze, Escalation::Fence));
        assert_eq!(row(OnFail::Block), (Local::Freeze, Escalation::Block));
        assert_eq!(row(OnFail::Standby), (Local::Hold, Escalation::Standby));
        assert_eq!(row(OnFail::Ignore), (Local::Keep, Escalation::Record));
    }

    #[test]
    fn a_failed_start_is_never_ignored() {
        assert_eq!(
            decide(OnFail::Ignore, Phase::Start, None),
            (Local::Recover, Escalation::Count)
        );
        for p in POLICIES {
            for bar in [None, Some(Bar::Node), Some(Bar::Everywhere)] {
                assert_ne!(decide(p, Phase::Start, bar).0, Local::Keep, "{p:?} {bar:?}");
            }
        }
    }

    #[test]
    fn a_bar_only_makes_the_outcome_stronger() {
        // Never counted or recorded only, never recovered in place: what
        // retrying cannot mend is not retried here.
        for p in POLICIES {
            for phase in [Phase::Start, Phase::Check] {
                for bar in [Bar::Node, Bar::Everywhere] {
                    let (local, esc) = decide(p, phase, Some(bar));
                    assert!(
                        !matches!(esc, Escalation::Count | Escalation::Record),
                        "{p:?} {phase:?} {bar:?}: {esc:?}"
                    );
                    assert!(
                        matches!(local, Local::Hold | Local::Freeze),
                        "{p:?} {phase:?} {bar:?}: {local:?}"
                    );
                }
            }
        }
    }

    #[test]
    fn a_failure_in_the_configuration_neither_fences_nor_empties_node_after_node() {
        for p in [
            OnFail::Restart,
            OnFail::Move,
            OnFail::Fence,
            OnFail::Standby,
            OnFail::Ignore,
        ] {
            assert_eq!(
                decide(p, Phase::Start, Some(Bar::Everywhere)).1,
                Escalation::BarEverywhere,
                "{p:?}"
            );
        }
        // Block still blocks: nothing is touched anywhere.
        assert_eq!(
            decide(OnFail::Block, Phase::Check, Some(Bar::Everywhere)),
            (Local::Freeze, Escalation::Block)
        );
        // A node bar under fence or standby keeps the stronger policy.
        assert_eq!(
            decide(OnFail::Fence, Phase::Start, Some(Bar::Node)).1,
            Escalation::Fence
        );
        assert_eq!(
            decide(OnFail::Standby, Phase::Start, Some(Bar::Node)).1,
            Escalation::Standby
        );
    }

    #[test]
    fn an_escalation_reads_back_and_an_unknown_word_counts_one_failure() {
        for e in [
            Escalation::Record,
            Escalation::Move,
            Escalation::BarEverywhere,
            Escalation::Fence,
            Escalation::Block,
            Escalation::Standby,
            Escalation::Count,
        ] {
            let s = serde_json::to_string(&e).unwrap();
            assert_eq!(serde_json::from_str::<Escalation>(&s).unwrap(), e);
        }
        assert_eq!(
            serde_json::from_str::<Escalation>("\"reboot-the-moon\"").unwrap(),
            Escalation::Count
        );
    }
}
