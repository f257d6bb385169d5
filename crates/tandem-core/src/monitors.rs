//! Group monitors on one node: what is due when, and what a run of failures
//! means (`failures`, `on_fail`, `restarts`). Pure: time is an argument,
//! checks run in the shell, which reports each result back.
//!
//! Rules, each tested here with simulated time:
//!
//! - A monitor runs only while its group runs on this node. While the group
//!   does not, the monitor is idle: it is never due and takes no part in
//!   [`Monitors::next_deadline`] (an idle monitor that stayed "due" made the
//!   agent spin: issue "keep the promises", defect 1). When the group runs
//!   again, its first check is due at once.
//! - A monitor without a check of its own (a `process` monitor: the periodic
//!   resource check is its check) is never due.
//! - At most one check of a monitor runs at a time; the next is due
//!   `interval_ms` after the result.
//! - After the group starts here, its monitors *verify* it: they check
//!   every [`VERIFY_RETRY_MS`] until each has passed once, failures not
//!   counted, for up to `start_grace_ms`; then at their interval. The group
//!   counts as answering ([`Monitors::verified`]) once every monitor with a
//!   check has passed: "done" means the service answers, not that its
//!   process was forked. Past the grace, failures count as usual.
//! - `threshold` failures in a row trigger `on_fail`: `restart` restarts the
//!   group from the monitored resource (or its last one) up to `restarts`
//!   times while the group stays here, then moves it; `ignore` records it;
//!   `move`, `fence`, `block` and `standby` are escalated as
//!   [`crate::on_fail`] says.

use crate::config::OnFail;

/// How soon a monitor checks again while it verifies a group that just
/// started (see the module docs).
pub const VERIFY_RETRY_MS: u64 = 100;

/// One monitor as configured, with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MonitorPlan {
    /// Monitor name (for messages).
    pub name: String,
    /// Index of its group.
    pub group: usize,
    /// The resource it watches (restarts start there), if any.
    pub resource: Option<usize>,
    /// Whether it has a check of its own (false: a `process` monitor).
    pub has_check: bool,
    /// Time between the end of one check and the start of the next.
    pub interval_ms: u64,
    /// Failures in a row before `on_fail` (at least 1).
    pub threshold: u32,
    /// What the failures lead to.
    pub on_fail: OnFail,
    /// Restarts in place before the group moves (`on_fail = restart`).
    pub restarts: u32,
    /// How long after the group starts a failed check does not count yet
    /// (the service is still coming up).
    pub start_grace_ms: u64,
}

/// The last result of a monitor, for status.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastResult {
    /// When it came (the caller's clock).
    pub at_ms: u64,
    /// Err: what failed.
    pub result: Result<(), String>,
}

/// What a check result leads to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// Nothing to do (healthy, or failing below the threshold).
    Nothing,
    /// Restart the group from this resource, here.
    Restart {
        /// Group.
        group: usize,
        /// First resource to restart.
        resource: usize,
        /// Why.
        reason: String,
    },
    /// Handle it as `on_fail` says ([`crate::on_fail`]): `move` (also
    /// once out of restarts), `fence`, `block` or `standby`.
    Escalate {
        /// Group.
        group: usize,
        /// The watched resource, if any (else the group's last).
        resource: Option<usize>,
        /// Why.
        reason: String,
        /// What to do.
        on_fail: OnFail,
    },
    /// Record the failure only (`on_fail = ignore`).
    Ignore {
        /// Group.
        group: usize,
        /// Why.
        reason: String,
    },
}

#[derive(Debug, Clone)]
struct Item {
    plan: MonitorPlan,
    /// When the next check is due; None while idle or busy.
    next_ms: Option<u64>,
    busy: bool,
    consecutive: u32,
    restarts_done: u32,
    last: Option<LastResult>,
    /// Since when (caller's clock) its group runs here, while this monitor
    /// has not passed yet since then; None once it has (or while idle).
    verifying_since: Option<u64>,
    /// It passed at least once since its group last started here.
    verified: bool,
}

/// The group monitors of one node.
#[derive(Debug, Clone, Default)]
pub struct Monitors {
    items: Vec<Item>,
}

impl Monitors {
    /// Monitors from their plans, all idle.
    pub fn new(plans: Vec<MonitorPlan>) -> Monitors {
        Monitors {
            items: plans
                .into_iter()
                .map(|plan| Item {
                    plan,
                    next_ms: None,
                    busy: false,
                    consecutive: 0,
                    restarts_done: 0,
                    last: None,
                    verifying_since: None,
                    verified: false,
                })
                .collect(),
        }
    }

    /// Number of monitors.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// Monitor `i`'s plan.
    pub fn plan(&self, i: usize) -> Option<&MonitorPlan> {
        self.items.get(i).map(|m| &m.plan)
    }

    /// Monitor `i`'s last result, if any since its group last came here.
    pub fn last(&self, i: usize) -> Option<&LastResult> {
        self.items.get(i).and_then(|m| m.last.as_ref())
    }

    /// The checks to start now; each is marked busy until
    /// [`Monitors::on_result`]. `running(g)`: group `g` runs here;
    /// `wanted(g)`: it is wanted here (a monitor of a group that left
    /// forgets its restarts).
    pub fn due(
        &mut self,
        now_ms: u64,
        running: impl Fn(usize) -> bool,
        wanted: impl Fn(usize) -> bool,
    ) -> Vec<usize> {
        let mut start = Vec::new();
        for (i, m) in self.items.iter_mut().enumerate() {
            if !m.plan.has_check {
                continue;
            }
            if !running(m.plan.group) {
                // Idle until the group runs again; a check in flight
                // still reports (and is then ignored).
                m.next_ms = None;
                m.consecutive = 0;
                m.verifying_since = None;
                m.verified = false;
                if !wanted(m.plan.group) {
                    m.restarts_done = 0;
                    m.last = None;
                }
                continue;
            }
            if !m.verified && m.verifying_since.is_none() {
                m.verifying_since = Some(now_ms);
            }
            if m.busy {
                continue;
            }
            let due_at = *m.next_ms.get_or_insert(now_ms);
            if now_ms >= due_at {
                m.busy = true;
                m.next_ms = None;
                start.push(i);
            }
        }
        start
    }

    /// A check of monitor `i` finished; `running`: whether its group still
    /// runs here (a result for a group that stopped meanwhile is dropped).
    pub fn on_result(
        &mut self,
        now_ms: u64,
        i: usize,
        result: Result<(), String>,
        running: bool,
    ) -> Verdict {
        let Some(m) = self.items.get_mut(i) else {
            return Verdict::Nothing;
        };
        m.busy = false;
        if !running {
            return Verdict::Nothing;
        }
        m.next_ms = Some(now_ms + m.plan.interval_ms);
        m.last = Some(LastResult {
            at_ms: now_ms,
            result: result.clone(),
        });
        let why = match result {
            Ok(()) => {
                m.consecutive = 0;
                m.verified = true;
                m.verifying_since = None;
                return Verdict::Nothing;
            }
            Err(w) => w,
        };
        if let Some(since) = m.verifying_since {
            if now_ms.saturating_sub(since) < m.plan.start_grace_ms {
                // Still coming up: look again soon, count nothing.
                m.next_ms = Some(now_ms + VERIFY_RETRY_MS.min(m.plan.interval_ms));
                return Verdict::Nothing;
            }
            m.verifying_since = None;
        }
        m.consecutive = m.consecutive.saturating_add(1);
        if m.consecutive < m.plan.threshold.max(1) {
            return Verdict::Nothing;
        }
        m.consecutive = 0;
        let group = m.plan.group;
        let reason = format!("monitor {}: {why}", m.plan.name);
        match m.plan.on_fail {
            OnFail::Ignore => Verdict::Ignore { group, reason },
            OnFail::Restart if m.restarts_done < m.plan.restarts => {
                m.restarts_done += 1;
                Verdict::Restart {
                    group,
                    resource: m.plan.resource.unwrap_or(usize::MAX),
                    reason,
                }
            }
            // Restarts used up: a restart policy moves the group.
            on_fail => Verdict::Escalate {
                group,
                resource: m.plan.resource,
                reason,
                on_fail: if on_fail == OnFail::Restart {
                    OnFail::Move
                } else {
                    on_fail
                },
            },
        }
    }

    /// Whether every monitor of group `g` that has a check of its own has
    /// passed since the group last started here (true when it has none).
    pub fn verified(&self, g: usize) -> bool {
        self.items
            .iter()
            .filter(|m| m.plan.group == g && m.plan.has_check)
            .all(|m| m.verified)
    }

    /// When [`Monitors::due`] next has something to start (None: nothing
    /// until an input changes what runs).
    pub fn next_deadline(&self) -> Option<u64> {
        self.items
            .iter()
            .filter(|m| m.plan.has_check && !m.busy)
            .filter_map(|m| m.next_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(has_check: bool, on_fail: OnFail) -> MonitorPlan {
        MonitorPlan {
            name: "web".into(),
            group: 0,
            resource: Some(1),
            has_check,
            interval_ms: 2_000,
            threshold: 3,
            on_fail,
            restarts: 2,
            start_grace_ms: 0,
        }
    }

    /// Drives the monitors like the agent's loop: wake at the deadline (or
    /// every `idle_ms` when there is none), start what is due, answer each
    /// check after 5 ms. Returns the number of wake-ups.
    fn run(m: &mut Monitors, running: bool, until_ms: u64, healthy: bool) -> u64 {
        let mut now = 0;
        let mut wakes = 0;
        let mut pending: Vec<(u64, usize)> = Vec::new();
        while now < until_ms {
            wakes += 1;
            assert!(wakes < 100_000, "busy loop at {now}");
            for (at, i) in std::mem::take(&mut pending) {
                if at <= now {
                    let r = if healthy { Ok(()) } else { Err("down".into()) };
                    m.on_result(now, i, r, running);
                } else {
                    pending.push((at, i));
                }
            }
            for i in m.due(now, |_| running, |_| running) {
                pending.push((now + 5, i));
            }
            let next = [m.next_deadline(), pending.iter().map(|p| p.0).min()]
                .into_iter()
                .flatten()
                .min()
                .unwrap_or(until_ms);
            assert!(next > now || !pending.is_empty(), "deadline in the past");
            now = next.max(now + 1);
        }
        wakes
    }

    /// Regression (issue "keep the promises", defect 1): a monitor of a
    /// group not running here, or a `process` monitor, stayed due in the
    /// past, and the agents spun at 54-97% of a core.
    #[test]
    fn idle_monitors_never_make_the_loop_spin() {
        let mut m = Monitors::new(vec![
            plan(true, OnFail::Restart),
            plan(false, OnFail::Restart),
        ]);
        m.due(0, |_| false, |_| false);
        assert_eq!(m.next_deadline(), None);
        assert!(run(&mut m, false, 60_000, true) <= 2);
        // A running group: one check per interval (plus its answer).
        let mut m = Monitors::new(vec![
            plan(true, OnFail::Restart),
            plan(false, OnFail::Restart),
        ]);
        let wakes = run(&mut m, true, 60_000, true);
        assert!(wakes <= 2 * 60_000 / 2_000 + 2, "{wakes} wake-ups");
    }

    #[test]
    fn the_first_check_is_due_as_soon_as_the_group_runs() {
        let mut m = Monitors::new(vec![plan(true, OnFail::Restart)]);
        assert!(m.due(100, |_| false, |_| true).is_empty());
        assert_eq!(m.due(700, |_| true, |_| true), vec![0]);
        // Busy until the result; then one interval later.
        assert!(m.due(800, |_| true, |_| true).is_empty());
        assert_eq!(m.next_deadline(), None);
        assert_eq!(m.on_result(710, 0, Ok(()), true), Verdict::Nothing);
        assert_eq!(m.next_deadline(), Some(2_710));
        assert_eq!(m.last(0).map(|l| l.at_ms), Some(710));
    }

    #[test]
    fn failures_in_a_row_restart_then_move() {
        let mut m = Monitors::new(vec![plan(true, OnFail::Restart)]);
        let mut verdicts = Vec::new();
        for k in 0..9u64 {
            m.due(k * 3_000, |_| true, |_| true);
            verdicts.push(m.on_result(k * 3_000 + 1, 0, Err("refused".into()), true));
        }
        let kinds: Vec<&str> = verdicts
            .iter()
            .map(|v| match v {
                Verdict::Nothing => ".",
                Verdict::Restart { .. } => "R",
                Verdict::Escalate {
                    on_fail: OnFail::Move,
                    ..
                } => "M",
                Verdict::Escalate { .. } => "E",
                Verdict::Ignore { .. } => "I",
            })
            .collect();
        assert_eq!(kinds.concat(), "..R..R..M");
        // A success in between resets the count.
        let mut m = Monitors::new(vec![plan(true, OnFail::Move)]);
        m.due(0, |_| true, |_| true);
        m.on_result(1, 0, Err("x".into()), true);
        m.due(3_000, |_| true, |_| true);
        m.on_result(3_001, 0, Ok(()), true);
        for k in 2..4u64 {
            m.due(k * 3_000, |_| true, |_| true);
            assert_eq!(
                m.on_result(k * 3_000 + 1, 0, Err("x".into()), true),
                Verdict::Nothing
            );
        }
    }

    #[test]
    fn fence_block_and_standby_escalate_at_the_threshold_with_the_watched_resource() {
        for on_fail in [OnFail::Move, OnFail::Fence, OnFail::Block, OnFail::Standby] {
            let mut m = Monitors::new(vec![MonitorPlan {
                resource: Some(1),
                threshold: 2,
                ..plan(true, on_fail)
            }]);
            m.due(0, |_| true, |_| true);
            assert_eq!(m.on_result(1, 0, Err("x".into()), true), Verdict::Nothing);
            m.due(3_000, |_| true, |_| true);
            assert_eq!(
                m.on_result(3_001, 0, Err("x".into()), true),
                Verdict::Escalate {
                    group: 0,
                    resource: Some(1),
                    reason: "monitor web: x".into(),
                    on_fail
                }
            );
        }
    }

    #[test]
    fn a_group_that_leaves_forgets_its_restarts() {
        let mut m = Monitors::new(vec![MonitorPlan {
            threshold: 1,
            restarts: 1,
            ..plan(true, OnFail::Restart)
        }]);
        m.due(0, |_| true, |_| true);
        assert!(matches!(
            m.on_result(1, 0, Err("x".into()), true),
            Verdict::Restart { .. }
        ));
        m.due(3_000, |_| true, |_| true);
        assert!(matches!(
            m.on_result(3_001, 0, Err("x".into()), true),
            Verdict::Escalate {
                on_fail: OnFail::Move,
                ..
            }
        ));
        // It left (not wanted here), came back: restarts again first.
        m.due(4_000, |_| false, |_| false);
        m.due(5_000, |_| true, |_| true);
        assert!(matches!(
            m.on_result(5_001, 0, Err("x".into()), true),
            Verdict::Restart { .. }
        ));
    }

    /// Issue "keep the promises", defect 5: `tandem move` said "done"
    /// 0.3 s before the service answered. A group counts as answering only
    /// once each monitor passed after the start; failures while it comes
    /// up are retried quickly and not counted, within the grace.
    #[test]
    fn a_started_group_is_verified_by_its_first_passing_checks() {
        let mut m = Monitors::new(vec![
            MonitorPlan {
                start_grace_ms: 5_000,
                ..plan(true, OnFail::Move)
            },
            plan(false, OnFail::Move),
        ]);
        assert!(!m.verified(0));
        assert_eq!(m.due(1_000, |_| true, |_| true), vec![0]);
        // Refused: the service is not listening yet.
        assert_eq!(
            m.on_result(1_005, 0, Err("refused".into()), true),
            Verdict::Nothing
        );
        assert!(!m.verified(0));
        assert_eq!(m.next_deadline(), Some(1_005 + VERIFY_RETRY_MS));
        for _ in 1..10 {
            let t = m.next_deadline().unwrap();
            assert_eq!(m.due(t, |_| true, |_| true), vec![0]);
            assert_eq!(
                m.on_result(t + 1, 0, Err("refused".into()), true),
                Verdict::Nothing
            );
        }
        let t = m.next_deadline().unwrap();
        assert!(t < 2_200, "retried every {VERIFY_RETRY_MS} ms: {t}");
        assert_eq!(m.due(2_200, |_| true, |_| true), vec![0]);
        assert_eq!(m.on_result(2_210, 0, Ok(()), true), Verdict::Nothing);
        assert!(m.verified(0));
        // Then at the interval again, and failures count.
        assert_eq!(m.next_deadline(), Some(4_210));
        // It stops and starts again: verified afresh.
        m.due(5_000, |_| false, |_| true);
        assert!(!m.verified(0));
    }

    #[test]
    fn a_group_that_never_answers_fails_after_the_grace() {
        let mut m = Monitors::new(vec![MonitorPlan {
            start_grace_ms: 1_000,
            threshold: 1,
            ..plan(true, OnFail::Move)
        }]);
        let mut t = 0;
        let mut verdict = Verdict::Nothing;
        for _ in 0..100 {
            m.due(t, |_| true, |_| true);
            verdict = m.on_result(t + 1, 0, Err("refused".into()), true);
            if verdict != Verdict::Nothing {
                break;
            }
            t = m.next_deadline().unwrap();
        }
        assert!(
            matches!(
                verdict,
                Verdict::Escalate {
                    on_fail: OnFail::Move,
                    ..
                }
            ),
            "{verdict:?}"
        );
        assert!((1_000..1_200).contains(&t), "failed at {t}");
    }

    #[test]
    fn a_result_for_a_group_that_stopped_is_dropped() {
        let mut m = Monitors::new(vec![MonitorPlan {
            threshold: 1,
            ..plan(true, OnFail::Move)
        }]);
        m.due(0, |_| true, |_| true);
        assert_eq!(m.on_result(1, 0, Err("x".into()), false), Verdict::Nothing);
        assert_eq!(m.next_deadline(), None);
    }
}
