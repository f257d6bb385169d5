//! A node's link monitors (`ping` monitors with `link = NAME`): what is due
//! when, and when a run of failures marks the link failed here, so that
//! groups that need the link leave this node. Pure: time is an argument,
//! the pings run in the shell, which reports each result back.
//!
//! Rules, each tested here with simulated time:
//!
//! - Every monitor is due at once when the agent starts, then
//!   `interval_ms` after each result. At most one check of a monitor runs
//!   at a time: a running check is never due and takes no part in
//!   [`LinkMonitors::next_deadline`].
//! - `threshold` failures in a row (at least 1) mark the monitor failed,
//!   once: [`LinkVerdict::Failed`] is given when it crosses, not again for
//!   each later failure.
//! - One success clears the count; a failed monitor that passes gives
//!   [`LinkVerdict::Healthy`], once.
//! - A link is failed here while any of its monitors is failed.

/// One link monitor as configured, with its defaults applied.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LinkMonitorPlan {
    /// Monitor name (for messages).
    pub name: String,
    /// The link whose health it tells.
    pub link: String,
    /// Time between the end of one check and the start of the next.
    pub interval_ms: u64,
    /// Failures in a row before the link counts as failed (at least 1).
    pub threshold: u32,
}

/// What one result changed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LinkVerdict {
    /// The monitor crossed its threshold: the link is failed here.
    Failed {
        /// Monitor name.
        monitor: String,
        /// Its link.
        link: String,
        /// Failures in a row.
        failures: u32,
        /// Why the last check failed.
        reason: String,
    },
    /// A failed monitor passed again.
    Healthy {
        /// Monitor name.
        monitor: String,
        /// Its link.
        link: String,
    },
}

#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Run {
    /// Failures in a row.
    consecutive: u32,
    /// Past its threshold (until a success).
    failed: bool,
    /// When the next check is due.
    next_ms: u64,
    /// A check is running.
    busy: bool,
}

/// This node's link monitors.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct LinkMonitors {
    plans: Vec<LinkMonitorPlan>,
    runs: Vec<Run>,
}

impl LinkMonitors {
    /// Monitors from their plans, each due at once.
    pub fn new(plans: Vec<LinkMonitorPlan>) -> LinkMonitors {
        let runs = vec![Run::default(); plans.len()];
        LinkMonitors { plans, runs }
    }

    /// How many monitors there are.
    pub fn len(&self) -> usize {
        self.plans.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.plans.is_empty()
    }

    /// Monitor `i`'s plan.
    pub fn plan(&self, i: usize) -> Option<&LinkMonitorPlan> {
        self.plans.get(i)
    }

    /// The monitors due at `now_ms`, each marked running: the caller starts
    /// one check of each and reports it with [`LinkMonitors::on_result`].
    pub fn due(&mut self, now_ms: u64) -> Vec<usize> {
        let mut out = Vec::new();
        for (i, r) in self.runs.iter_mut().enumerate() {
            if !r.busy && now_ms >= r.next_ms {
                r.busy = true;
                out.push(i);
            }
        }
        out
    }

    /// The result of monitor `i`'s check, at `now_ms`.
    pub fn on_result(
        &mut self,
        now_ms: u64,
        i: usize,
        result: Result<(), String>,
    ) -> Option<LinkVerdict> {
        let (plan, run) = (self.plans.get(i)?, self.runs.get_mut(i)?);
        run.busy = false;
        run.next_ms = now_ms.saturating_add(plan.interval_ms);
        match result {
            Ok(()) => {
                run.consecutive = 0;
                if !run.failed {
                    return None;
                }
                run.failed = false;
                Some(LinkVerdict::Healthy {
                    monitor: plan.name.clone(),
                    link: plan.link.clone(),
                })
            }
            Err(reason) => {
                run.consecutive = run.consecutive.saturating_add(1);
                if run.failed || run.consecutive < plan.threshold.max(1) {
                    return None;
                }
                run.failed = true;
                Some(LinkVerdict::Failed {
                    monitor: plan.name.clone(),
                    link: plan.link.clone(),
                    failures: run.consecutive,
                    reason,
                })
            }
        }
    }

    /// The links failed here, sorted, each once.
    pub fn failed_links(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .plans
            .iter()
            .zip(&self.runs)
            .filter(|(_, r)| r.failed)
            .map(|(p, _)| p.link.clone())
            .collect();
        v.sort();
        v.dedup();
        v
    }

    /// When the next check is due (None: none is, every one is running).
    pub fn next_deadline(&self) -> Option<u64> {
        self.runs
            .iter()
            .filter(|r| !r.busy)
            .map(|r| r.next_ms)
            .min()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(name: &str, link: &str, threshold: u32) -> LinkMonitorPlan {
        LinkMonitorPlan {
            name: name.into(),
            link: link.into(),
            interval_ms: 1_000,
            threshold,
        }
    }

    fn fail(m: &mut LinkMonitors, now_ms: u64, i: usize) -> Option<LinkVerdict> {
        assert_eq!(m.due(now_ms), vec![i]);
        m.on_result(now_ms, i, Err("no answer".into()))
    }

    #[test]
    fn due_at_once_then_an_interval_after_each_result_never_while_running() {
        let mut m = LinkMonitors::new(vec![plan("gw", "lan", 3)]);
        assert_eq!(m.next_deadline(), Some(0));
        assert_eq!(m.due(0), vec![0]);
        // Running: not due again, no deadline (an idle agent must sleep).
        assert_eq!(m.due(5_000), Vec::<usize>::new());
        assert_eq!(m.next_deadline(), None);
        assert_eq!(m.on_result(5_000, 0, Ok(())), None);
        assert_eq!(m.next_deadline(), Some(6_000));
        assert!(m.due(5_999).is_empty());
        assert_eq!(m.due(6_000), vec![0]);
    }

    #[test]
    fn threshold_failures_in_a_row_fail_the_link_once_and_a_pass_heals_it() {
        let mut m = LinkMonitors::new(vec![plan("gw", "lan", 3)]);
        assert_eq!(fail(&mut m, 0, 0), None);
        assert_eq!(fail(&mut m, 1_000, 0), None);
        assert!(m.failed_links().is_empty());
        let v = fail(&mut m, 2_000, 0);
        assert!(
            matches!(&v, Some(LinkVerdict::Failed { failures: 3, link, .. }) if link == "lan"),
            "{v:?}"
        );
        assert_eq!(m.failed_links(), vec!["lan".to_string()]);
        // Said once, however long it lasts.
        assert_eq!(fail(&mut m, 3_000, 0), None);
        assert_eq!(m.due(4_000), vec![0]);
        let v = m.on_result(4_000, 0, Ok(()));
        assert!(matches!(v, Some(LinkVerdict::Healthy { .. })), "{v:?}");
        assert!(m.failed_links().is_empty());
    }

    #[test]
    fn a_success_between_failures_starts_the_count_again() {
        let mut m = LinkMonitors::new(vec![plan("gw", "lan", 2)]);
        assert_eq!(fail(&mut m, 0, 0), None);
        assert_eq!(m.due(1_000), vec![0]);
        assert_eq!(m.on_result(1_000, 0, Ok(())), None);
        assert_eq!(fail(&mut m, 2_000, 0), None);
        assert!(m.failed_links().is_empty());
        assert!(fail(&mut m, 3_000, 0).is_some());
    }

    #[test]
    fn a_threshold_of_zero_counts_as_one() {
        let mut m = LinkMonitors::new(vec![plan("gw", "lan", 0)]);
        assert!(fail(&mut m, 0, 0).is_some());
    }

    #[test]
    fn a_link_stays_failed_while_any_of_its_monitors_fails() {
        let mut m = LinkMonitors::new(vec![plan("a", "lan", 1), plan("b", "lan", 1)]);
        assert_eq!(m.due(0), vec![0, 1]);
        assert!(m.on_result(0, 0, Err("x".into())).is_some());
        assert!(m.on_result(0, 1, Err("x".into())).is_some());
        assert_eq!(m.failed_links(), vec!["lan".to_string()]);
        assert_eq!(m.due(1_000), vec![0, 1]);
        assert!(m.on_result(1_000, 0, Ok(())).is_some());
        assert_eq!(m.failed_links(), vec!["lan".to_string()]);
        assert!(m.on_result(1_000, 1, Ok(())).is_some());
        assert!(m.failed_links().is_empty());
    }

    #[test]
    fn a_result_for_an_unknown_monitor_changes_nothing() {
        let mut m = LinkMonitors::new(vec![plan("gw", "lan", 1)]);
        assert_eq!(m.on_result(0, 7, Err("x".into())), None);
        assert!(m.failed_links().is_empty());
    }
}
