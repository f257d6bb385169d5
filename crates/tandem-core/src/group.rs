//! One node's groups: which resource action to run next so that what runs
//! here converges to what is wanted, in order.
//!
//! A sans-IO state machine. The shell tells it what is wanted of each
//! group ([`Want`]) and the outcome of every action it asked for; it answers
//! with the next actions. Rules:
//!
//! - **Probe first.** At start every resource is `Unknown` and is probed
//!   before anything is started or stopped: an agent that restarts finds
//!   what actually runs and never starts or stops blindly.
//! - **Order.** A group starts in order (resource `i` only once `0..i` run)
//!   and stops in reverse (resource `i` only once `i+1..` are stopped).
//! - **One action per group at a time**, each with a timeout in the shell;
//!   actions are idempotent (starting what runs, stopping what is stopped,
//!   are no-ops), so a retry is always safe.
//! - **Failures.** A resource that fails to start, or is found not running
//!   by its monitor, is handled as its `on_fail` says ([`crate::on_fail`]):
//!   by default the group *recovers*: stop what runs after it (reverse),
//!   then start again; every failure is reported with what the leader is
//!   to do (by default count it, and move the group at the threshold).
//!   Restarts are spaced by [`RESTART_BACKOFF_MS`]. A *held* group stops
//!   down to the failure and starts nothing until it is wanted elsewhere
//!   (at most [`HOLD_MAX_MS`]); a *frozen* one is neither started nor
//!   stopped until it is left alone (maintenance, or blocked in the record)
//!   or the node goes off. A stop that fails is retried after the same
//!   backoff; the group counts as active until it is known stopped.
//! - **Maintenance** ([`Want::Leave`]): observe, never act.
//! - **Held starts** ([`Groups::hold_starts`]): while the shell's guard is
//!   still stopping what an ended lease left here, nothing starts; probes
//!   and stops go on.

use std::collections::VecDeque;

use crate::config::OnFail;
pub use crate::on_fail::HOLD_MAX_MS;
use crate::on_fail::{self, Escalation, Local, Phase};

/// Minimum time between two start attempts of a group after a failure,
/// and between two attempts at a stop that failed.
pub const RESTART_BACKOFF_MS: u64 = 1_000;
/// Failures kept for the leader before the oldest are dropped.
pub const MAX_PENDING_FAILURES: usize = 64;
/// While a group is frozen (`fence`, `block`), its failure is reported
/// again this often until the cluster takes over: a request lost on the
/// way, or a leader that did not act on it, must not leave it frozen for
/// good.
pub const FROZEN_REPORT_EVERY_MS: u64 = 10_000;
/// While a check keeps failing under `on_fail = ignore`, it is reported
/// again at most this often (a check every 500 ms must not send the
/// leader a request every 500 ms).
pub const IGNORED_REPORT_EVERY_MS: u64 = 60_000;

/// How long past its timeout an action's own bounds get before the
/// agent's outer bound gives up on it.
pub const ACTION_GRACE_MS: u64 = 1_000;

/// The longest a group's stop may take on a node, from its resources'
/// timeouts: an action already under way (a start or probe) finishes
/// first, then each resource's stop in turn, each within its timeout and
/// the grace of the outer bound. The leader waits this long for a stop
/// before it calls it failed ([`crate::member::GroupsSpec::stop_bound_ms`]).
pub fn stop_bound_ms(timeouts_ms: impl Iterator<Item = u64>) -> u64 {
    let each: Vec<u64> = timeouts_ms
        .map(|t| t.saturating_add(ACTION_GRACE_MS))
        .collect();
    let in_flight = each.iter().copied().max().unwrap_or(0);
    each.into_iter().fold(in_flight, u64::saturating_add)
}

/// What is wanted of a group on this node (`"run"`, `"stop"`, `"leave"` in
/// JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Want {
    /// Run it (this node holds the placement and a lease).
    Run,
    /// Stop it (placed elsewhere, nowhere, or no lease).
    Stop,
    /// Maintenance: neither start nor stop.
    Leave,
}

/// What is known of one resource here.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ResourceState {
    /// Not probed yet.
    Unknown,
    /// Known not running.
    Stopped,
    /// Start in progress.
    Starting,
    /// Known running.
    Running,
    /// Stop in progress.
    Stopping,
    /// A start or probe failed; it may or may not run.
    Failed(String),
    /// A stop failed or timed out: it may still run, and nothing this node
    /// can do is sure to stop it. The leader fences the node if a device
    /// can, and otherwise keeps the group blocked ([`Groups::stop_failed`]).
    StopFailed(String),
}

impl ResourceState {
    /// Whether the resource may be running (anything not known stopped).
    pub fn maybe_running(&self) -> bool {
        !matches!(self, ResourceState::Stopped)
    }
}

/// What the shell must do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ActionKind {
    /// Find out whether it runs.
    Probe,
    /// Start it.
    Start,
    /// Stop it.
    Stop,
}

/// One action on one resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Action {
    /// Group index (configuration order).
    pub group: usize,
    /// Resource index in the group.
    pub resource: usize,
    /// What to do.
    pub kind: ActionKind,
}

/// The outcome of an action.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// It runs (after a probe or a start).
    Running,
    /// It does not run (after a probe or a stop).
    Stopped,
    /// The action failed or timed out; why. Recovery may retry it here
    /// (each failure counts toward the group's migration threshold).
    Failed(String),
    /// The action failed in a way that retrying cannot mend (OCF's hard
    /// and fatal errors: a missing binary, a wrong parameter): the group
    /// may not run where `bar` says until `tandem cleanup`.
    Barred {
        /// Where the group may no longer run.
        bar: Bar,
        /// Why, in words.
        why: String,
    },
}

/// Where a failure that retrying cannot mend bars its group from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Bar {
    /// From the node it failed on (OCF's hard errors: the node lacks
    /// something another node may have).
    Node,
    /// From every node (OCF's fatal error, "not configured": the same
    /// configuration fails wherever it runs).
    Everywhere,
}

/// A group's state in one word, for status and the reports nodes send
/// each other (`"running"`... in JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum GroupState {
    /// Still probing.
    Probing,
    /// Nothing runs.
    Stopped,
    /// Starting (some resources run).
    Starting,
    /// Every resource runs.
    Running,
    /// Stopping.
    Stopping,
    /// A failure is being recovered from, or a stop failed.
    Failed,
    /// A word this version does not know, from a newer node's report: a
    /// mixed-version cluster keeps its reports (and the lease echoes they
    /// carry) instead of dropping them as malformed. Never produced here.
    #[serde(other)]
    Unknown,
}

impl GroupState {
    /// Lower-case name.
    pub fn as_str(self) -> &'static str {
        match self {
            GroupState::Probing => "probing",
            GroupState::Stopped => "stopped",
            GroupState::Starting => "starting",
            GroupState::Running => "running",
            GroupState::Stopping => "stopping",
            GroupState::Failed => "failed",
            GroupState::Unknown => "unknown",
        }
    }
}

#[derive(Debug, Clone)]
struct GroupRun {
    resources: Vec<ResourceState>,
    want: Want,
    busy: bool,
    /// Recovering from a failure: stop down to the failed resource first.
    recovering: bool,
    /// Each resource's `on_fail`.
    on_fail: Vec<OnFail>,
    /// Held after a failure: start nothing before this time unless the
    /// group is wanted elsewhere first.
    hold_until_ms: Option<u64>,
    /// While frozen: the failure that froze it and when it was last
    /// reported ([`FROZEN_REPORT_EVERY_MS`]).
    frozen_report: Option<(u64, Failure)>,
    /// Per resource: when a failed check ignored under `on_fail = ignore`
    /// was last reported (until the resource is acted on again).
    ignored_at_ms: Vec<Option<u64>>,
    /// No start (after a failure) or stop retry before this time.
    not_before_ms: u64,
    /// Since when the group is in its current state (for status).
    since_ms: u64,
    last_state: GroupState,
}

impl GroupRun {
    /// Frozen after a failure (its report kept until the cluster takes
    /// over): no action at all until it is left alone.
    fn frozen(&self) -> bool {
        self.frozen_report.is_some()
    }
}

/// A failure to report to the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Failure {
    /// Group index.
    pub group: usize,
    /// Resource index.
    pub resource: usize,
    /// Why, in words.
    pub reason: String,
    /// What the leader is asked to do with it.
    pub then: Escalation,
}

/// Every group of this node.
#[derive(Debug, Clone)]
pub struct Groups {
    groups: Vec<GroupRun>,
    failures: VecDeque<Failure>,
    /// No resource starts while set (probes and stops go on): the shell's
    /// guard is still stopping what an ended lease left here, and a start
    /// now could be undone by its stop landing after it.
    starts_held: bool,
}

impl Groups {
    /// Groups with the given number of resources each, all unknown (to be
    /// probed), wanted stopped until told otherwise.
    pub fn new(resource_counts: &[usize], now_ms: u64) -> Self {
        Groups {
            groups: resource_counts
                .iter()
                .map(|&n| GroupRun {
                    resources: vec![ResourceState::Unknown; n],
                    want: Want::Stop,
                    busy: false,
                    recovering: false,
                    on_fail: vec![OnFail::Restart; n],
                    hold_until_ms: None,
                    frozen_report: None,
                    ignored_at_ms: vec![None; n],
                    not_before_ms: 0,
                    since_ms: now_ms,
                    last_state: GroupState::Probing,
                })
                .collect(),
            failures: VecDeque::new(),
            starts_held: false,
        }
    }

    /// Number of groups.
    pub fn len(&self) -> usize {
        self.groups.len()
    }

    /// Whether there are no groups.
    pub fn is_empty(&self) -> bool {
        self.groups.is_empty()
    }

    /// Holds (or lets go) every start: see [`Groups::poll`]'s rules. Probes
    /// and stops are never held (a node losing its lease must still stop).
    pub fn hold_starts(&mut self, held: bool) {
        self.starts_held = held;
    }

    /// Sets what is wanted of group `g`. Wanted elsewhere ends a hold;
    /// left alone ends a freeze (whoever left it alone now decides).
    pub fn set_want(&mut self, g: usize, want: Want) {
        if let Some(run) = self.groups.get_mut(g) {
            run.want = want;
            if want != Want::Run {
                run.hold_until_ms = None;
            }
            if want == Want::Leave {
                run.frozen_report = None;
            }
        }
    }

    /// Sets resource `r` of group `g`'s `on_fail` (default `restart`).
    pub fn set_on_fail(&mut self, g: usize, r: usize, policy: OnFail) {
        if let Some(p) = self
            .groups
            .get_mut(g)
            .and_then(|run| run.on_fail.get_mut(r))
        {
            *p = policy;
        }
    }

    /// Whether group `g` is frozen after a failure (`fence`, `block`):
    /// nothing is started or stopped until it is left alone.
    pub fn frozen(&self, g: usize) -> bool {
        self.groups.get(g).is_some_and(GroupRun::frozen)
    }

    /// Until when group `g` is held after a failure (`move`, `standby`):
    /// nothing is started before then unless it is wanted elsewhere.
    pub fn held_until(&self, g: usize) -> Option<u64> {
        self.groups.get(g).and_then(|r| r.hold_until_ms)
    }

    /// What is wanted of group `g`.
    pub fn want(&self, g: usize) -> Want {
        self.groups.get(g).map_or(Want::Stop, |r| r.want)
    }

    /// Resource states of group `g`.
    pub fn resources(&self, g: usize) -> &[ResourceState] {
        self.groups.get(g).map_or(&[], |r| &r.resources)
    }

    /// Whether anything of group `g` may run here.
    pub fn active(&self, g: usize) -> bool {
        self.groups
            .get(g)
            .is_some_and(|r| r.resources.iter().any(ResourceState::maybe_running))
    }

    /// Why a stop of group `g` failed, while any of its resources is in
    /// that state (it may still run; see [`ResourceState::StopFailed`]).
    pub fn stop_failed(&self, g: usize) -> Option<&str> {
        self.groups.get(g)?.resources.iter().find_map(|r| match r {
            ResourceState::StopFailed(why) => Some(why.as_str()),
            _ => None,
        })
    }

    /// Whether every resource of every group has been probed.
    pub fn probed(&self) -> bool {
        self.groups
            .iter()
            .all(|g| !g.resources.contains(&ResourceState::Unknown))
    }

    /// Group `g`'s state and since when.
    pub fn state(&self, g: usize) -> (GroupState, u64) {
        self.groups
            .get(g)
            .map_or((GroupState::Stopped, 0), |r| (r.last_state, r.since_ms))
    }

    fn compute_state(run: &GroupRun) -> GroupState {
        use ResourceState as R;
        let rs = &run.resources;
        if rs.contains(&R::Unknown) {
            GroupState::Probing
        } else if run.recovering
            || rs
                .iter()
                .any(|r| matches!(r, R::Failed(_) | R::StopFailed(_)))
        {
            GroupState::Failed
        } else if rs.iter().all(|r| *r == R::Running) && !rs.is_empty() {
            GroupState::Running
        } else if rs.iter().all(|r| *r == R::Stopped) {
            GroupState::Stopped
        } else if run.want == Want::Run {
            GroupState::Starting
        } else {
            GroupState::Stopping
        }
    }

    /// Takes the failures not yet reported.
    pub fn take_failures(&mut self) -> Vec<Failure> {
        self.failures.drain(..).collect()
    }

    /// Resource `r` of group `g`'s policy read for a failure in `phase`.
    fn decide(&self, g: usize, r: usize, phase: Phase, bar: Option<Bar>) -> (Local, Escalation) {
        let policy = self
            .groups
            .get(g)
            .and_then(|run| run.on_fail.get(r))
            .copied()
            .unwrap_or_default();
        on_fail::decide(policy, phase, bar)
    }

    /// Reports a failure and applies what it means here.
    fn fail(
        &mut self,
        g: usize,
        r: usize,
        reason: String,
        (local, then): (Local, Escalation),
        now_ms: u64,
    ) {
        let failure = Failure {
            group: g,
            resource: r,
            reason,
            then,
        };
        self.push_failure(failure.clone());
        let Some(run) = self.groups.get_mut(g) else {
            return;
        };
        match local {
            Local::Keep => {}
            Local::Recover | Local::Hold => {
                run.recovering = true;
                run.not_before_ms = now_ms + RESTART_BACKOFF_MS;
                if local == Local::Hold && run.want == Want::Run {
                    run.hold_until_ms = Some(now_ms + HOLD_MAX_MS);
                }
            }
            Local::Freeze => {
                run.frozen_report = Some((now_ms, failure));
            }
        }
    }

    /// Queues a failure for the leader, dropping the oldest at
    /// [`MAX_PENDING_FAILURES`].
    fn push_failure(&mut self, f: Failure) {
        if self.failures.len() == MAX_PENDING_FAILURES {
            self.failures.pop_front();
        }
        self.failures.push_back(f);
    }

    /// The outcome of an action asked for by [`Groups::poll`].
    pub fn on_outcome(&mut self, now_ms: u64, a: Action, outcome: Outcome) {
        let Some(run) = self.groups.get_mut(a.group) else {
            return;
        };
        run.busy = false;
        if let Some(i) = run.ignored_at_ms.get_mut(a.resource) {
            *i = None;
        }
        let Some(state) = run.resources.get_mut(a.resource) else {
            return;
        };
        match (a.kind, outcome) {
            (_, Outcome::Running) => *state = ResourceState::Running,
            (_, Outcome::Stopped) => *state = ResourceState::Stopped,
            (ActionKind::Probe, Outcome::Failed(why)) => {
                *state = ResourceState::Failed(format!("probe failed: {why}"));
            }
            // A probe that says this node cannot run it at all (an OCF
            // agent's binary missing here) is reported, so that the leader
            // places the group elsewhere.
            (ActionKind::Probe, Outcome::Barred { bar, why }) => {
                let why = format!("probe failed: {why}");
                *state = ResourceState::Failed(why.clone());
                let d = self.decide(a.group, a.resource, Phase::Start, Some(bar));
                self.fail(a.group, a.resource, why, d, now_ms);
            }
            (ActionKind::Start, Outcome::Failed(why)) => {
                let why = format!("start failed: {why}");
                *state = ResourceState::Failed(why.clone());
                let d = self.decide(a.group, a.resource, Phase::Start, None);
                self.fail(a.group, a.resource, why, d, now_ms);
            }
            (ActionKind::Start, Outcome::Barred { bar, why }) => {
                let why = format!("start failed: {why}");
                *state = ResourceState::Failed(why.clone());
                let d = self.decide(a.group, a.resource, Phase::Start, Some(bar));
                self.fail(a.group, a.resource, why, d, now_ms);
            }
            // A failed stop is a failed stop whatever its kind says: the
            // resource may still run (the leader fences or blocks).
            (ActionKind::Stop, Outcome::Failed(why) | Outcome::Barred { why, .. }) => {
                *state = ResourceState::StopFailed(format!("stop failed: {why}"));
                run.not_before_ms = now_ms + RESTART_BACKOFF_MS;
            }
        }
        self.refresh(a.group, now_ms);
    }

    /// Resource `r` of group `g`'s own check found it not running (or
    /// unhealthy) while it should run; handled as its `on_fail` says.
    /// `bar`: where the failure bars the group from, if retrying cannot
    /// mend it.
    pub fn on_monitor_failure(
        &mut self,
        now_ms: u64,
        g: usize,
        r: usize,
        reason: String,
        bar: Option<Bar>,
    ) {
        if !self.checked_running(g, r) {
            return;
        }
        let d = self.decide(g, r, Phase::Check, bar);
        self.check_failed(now_ms, g, r, reason, d);
    }

    /// A group monitor of group `g` reached its threshold: handled as the
    /// monitor's `policy` says, from resource `r` (its watched resource or
    /// the group's last). Always reported, even if the group changed
    /// meanwhile: the leader must hear of it.
    pub fn on_group_monitor(
        &mut self,
        now_ms: u64,
        g: usize,
        r: usize,
        reason: String,
        policy: OnFail,
    ) {
        let d = on_fail::decide(policy, Phase::Check, None);
        if self.checked_running(g, r) {
            self.check_failed(now_ms, g, r, reason, d);
        } else {
            self.fail(g, r, reason, (Local::Keep, d.1), now_ms);
        }
    }

    /// Whether a failed check of resource `r` of group `g` may act: the
    /// group is wanted here, idle, not frozen, and the resource runs.
    fn checked_running(&self, g: usize, r: usize) -> bool {
        self.groups.get(g).is_some_and(|run| {
            run.want == Want::Run
                && !run.busy
                && !run.frozen()
                && run.resources.get(r) == Some(&ResourceState::Running)
        })
    }

    fn check_failed(
        &mut self,
        now_ms: u64,
        g: usize,
        r: usize,
        reason: String,
        d: (Local, Escalation),
    ) {
        if d.0 == Local::Keep {
            let Some(at) = self
                .groups
                .get_mut(g)
                .and_then(|run| run.ignored_at_ms.get_mut(r))
            else {
                return;
            };
            if at.is_some_and(|t| now_ms.saturating_sub(t) < IGNORED_REPORT_EVERY_MS) {
                return;
            }
            *at = Some(now_ms);
        } else {
            if let Some(state) = self
                .groups
                .get_mut(g)
                .and_then(|run| run.resources.get_mut(r))
            {
                *state = ResourceState::Failed(reason.clone());
            }
        }
        self.fail(g, r, reason, d, now_ms);
        self.refresh(g, now_ms);
    }

    fn refresh(&mut self, g: usize, now_ms: u64) {
        if let Some(run) = self.groups.get_mut(g) {
            let s = Self::compute_state(run);
            if s != run.last_state {
                run.last_state = s;
                run.since_ms = now_ms;
            }
        }
    }

    /// The next actions: at most one per group. Call after every change.
    pub fn poll(&mut self, now_ms: u64) -> Vec<Action> {
        let mut out = Vec::new();
        let again: Vec<Failure> = self
            .groups
            .iter_mut()
            .filter_map(|run| {
                let (at, f) = run.frozen_report.as_mut()?;
                (now_ms >= at.saturating_add(FROZEN_REPORT_EVERY_MS)).then(|| {
                    *at = now_ms;
                    f.clone()
                })
            })
            .collect();
        for f in again {
            self.push_failure(f);
        }
        for g in 0..self.groups.len() {
            if let Some(a) = self.next(g, now_ms) {
                self.groups[g].busy = true;
                match a.kind {
                    ActionKind::Start => {
                        self.groups[g].resources[a.resource] = ResourceState::Starting
                    }
                    ActionKind::Stop => {
                        self.groups[g].resources[a.resource] = ResourceState::Stopping
                    }
                    ActionKind::Probe => {}
                }
                out.push(a);
            }
            self.refresh(g, now_ms);
        }
        out
    }

    /// When [`Groups::poll`] may have something new without any outcome
    /// (a backoff ends), if ever.
    pub fn next_deadline(&self) -> Option<u64> {
        self.groups
            .iter()
            .filter(|r| !r.busy)
            // A held group wakes at the end of its hold, not at a backoff
            // that passed meanwhile (waking then would find nothing to do,
            // again and again: a spinning agent); a frozen one only to
            // report its failure again.
            .filter_map(|r| match (&r.frozen_report, r.hold_until_ms) {
                (Some((at, _)), _) => Some(at.saturating_add(FROZEN_REPORT_EVERY_MS)),
                (None, Some(h)) => Some(h.max(r.not_before_ms)),
                (None, None) => (r.not_before_ms > 0).then_some(r.not_before_ms),
            })
            .min()
    }

    fn next(&mut self, g: usize, now_ms: u64) -> Option<Action> {
        let starts_held = self.starts_held;
        let run = &mut self.groups[g];
        if run.busy || run.frozen() {
            return None;
        }
        let act = |resource, kind| {
            Some(Action {
                group: g,
                resource,
                kind,
            })
        };
        if let Some(r) = run
            .resources
            .iter()
            .position(|s| *s == ResourceState::Unknown)
        {
            return act(r, ActionKind::Probe);
        }
        let waiting = now_ms < run.not_before_ms;
        match run.want {
            Want::Leave => None,
            Want::Stop => {
                run.recovering = false;
                let r = run
                    .resources
                    .iter()
                    .rposition(ResourceState::maybe_running)?;
                if waiting
                    && matches!(
                        run.resources[r],
                        ResourceState::Failed(_) | ResourceState::StopFailed(_)
                    )
                {
                    return None;
                }
                act(r, ActionKind::Stop)
            }
            Want::Run
                if run.recovering
                    || run.resources.iter().any(|s| {
                        matches!(s, ResourceState::Failed(_) | ResourceState::StopFailed(_))
                    }) =>
            {
                // A failed probe or stop counts as a failure to recover from.
                run.recovering = true;
                // Stop everything from the last running resource down to
                // the first failed one, then start afresh.
                let first_failed = run.resources.iter().position(|s| {
                    matches!(s, ResourceState::Failed(_) | ResourceState::StopFailed(_))
                });
                let low = first_failed.unwrap_or(run.resources.len());
                if let Some(r) = run.resources.iter().rposition(ResourceState::maybe_running) {
                    if r >= low {
                        return act(r, ActionKind::Stop);
                    }
                }
                if let Some(until) = run.hold_until_ms {
                    if now_ms < until {
                        return None;
                    }
                    // The leader never moved it (a lost request): recover
                    // in place rather than leave the service down.
                    run.hold_until_ms = None;
                }
                if waiting {
                    return None;
                }
                if starts_held {
                    return None;
                }
                run.recovering = false;
                run.not_before_ms = 0;
                let r = run
                    .resources
                    .iter()
                    .position(|s| *s != ResourceState::Running)?;
                act(r, ActionKind::Start)
            }
            Want::Run if starts_held => None,
            Want::Run => {
                // Never start past a predecessor that is not running.
                let r = run
                    .resources
                    .iter()
                    .position(|s| *s != ResourceState::Running)?;
                act(r, ActionKind::Start)
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn a(group: usize, resource: usize, kind: ActionKind) -> Action {
        Action {
            group,
            resource,
            kind,
        }
    }

    /// Runs actions to completion with `outcome` deciding each result.
    fn settle(gs: &mut Groups, now: u64, outcome: impl Fn(Action) -> Outcome) -> Vec<Action> {
        let mut log = Vec::new();
        for _ in 0..100 {
            let acts = gs.poll(now);
            if acts.is_empty() {
                break;
            }
            for x in acts {
                log.push(x);
                gs.on_outcome(now, x, outcome(x));
            }
        }
        log
    }

    /// Regression (bench web, a restarted node): the guard's stops of an
    /// ended lease overlapped the agent's starts under its new lease.
    /// While starts are held, a wanted group is probed but not started,
    /// and a group wanted stopped still stops; let go, it starts.
    #[test]
    fn held_starts_let_probes_and_stops_through_and_nothing_start() {
        let mut gs = Groups::new(&[2, 1], 0);
        gs.hold_starts(true);
        gs.set_want(0, Want::Run);
        let log = settle(&mut gs, 0, ok);
        assert!(log.iter().all(|x| x.kind == ActionKind::Probe), "{log:?}");
        // Group 1 found running, wanted stopped: it stops while held.
        let mut gs = Groups::new(&[1], 0);
        gs.hold_starts(true);
        let log = settle(&mut gs, 0, |x| match x.kind {
            ActionKind::Probe => Outcome::Running,
            _ => Outcome::Stopped,
        });
        assert_eq!(
            log,
            vec![a(0, 0, ActionKind::Probe), a(0, 0, ActionKind::Stop)]
        );
        let mut gs = Groups::new(&[2], 0);
        gs.hold_starts(true);
        gs.set_want(0, Want::Run);
        settle(&mut gs, 0, ok);
        gs.hold_starts(false);
        let log = settle(&mut gs, 0, ok);
        assert_eq!(
            log,
            vec![a(0, 0, ActionKind::Start), a(0, 1, ActionKind::Start)]
        );
    }

    fn ok(x: Action) -> Outcome {
        match x.kind {
            ActionKind::Probe | ActionKind::Stop => Outcome::Stopped,
            ActionKind::Start => Outcome::Running,
        }
    }

    #[test]
    fn probes_everything_before_acting() {
        let mut gs = Groups::new(&[3], 0);
        gs.set_want(0, Want::Run);
        let log = settle(&mut gs, 0, ok);
        assert_eq!(
            log,
            vec![
                a(0, 0, ActionKind::Probe),
                a(0, 1, ActionKind::Probe),
                a(0, 2, ActionKind::Probe),
                a(0, 0, ActionKind::Start),
                a(0, 1, ActionKind::Start),
                a(0, 2, ActionKind::Start),
            ]
        );
        assert_eq!(gs.state(0).0, GroupState::Running);
        gs.set_want(0, Want::Stop);
        let log = settle(&mut gs, 0, ok);
        assert_eq!(
            log,
            vec![
                a(0, 2, ActionKind::Stop),
                a(0, 1, ActionKind::Stop),
                a(0, 0, ActionKind::Stop)
            ]
        );
        assert!(!gs.active(0));
    }

    #[test]
    fn restarted_agent_finds_its_group_running_and_leaves_it() {
        let mut gs = Groups::new(&[2], 0);
        gs.set_want(0, Want::Run);
        let log = settle(&mut gs, 0, |_| Outcome::Running);
        assert_eq!(
            log,
            vec![a(0, 0, ActionKind::Probe), a(0, 1, ActionKind::Probe)]
        );
        assert_eq!(gs.state(0).0, GroupState::Running);
    }

    #[test]
    fn maintenance_observes_only() {
        let mut gs = Groups::new(&[2], 0);
        gs.set_want(0, Want::Leave);
        let log = settle(&mut gs, 0, |_| Outcome::Running);
        assert!(log.iter().all(|x| x.kind == ActionKind::Probe));
    }

    /// A failure retrying cannot mend is reported with its bar (from a
    /// probe too: the leader must place the group elsewhere), and a barred
    /// stop is a failed stop like any other.
    #[test]
    fn a_barred_outcome_is_reported_with_its_bar_and_a_barred_stop_is_a_stop_failure() {
        let barred = |bar| Outcome::Barred {
            bar,
            why: "not installed".into(),
        };
        let mut gs = Groups::new(&[1], 0);
        gs.set_want(0, Want::Run);
        settle(&mut gs, 0, |x| match x.kind {
            ActionKind::Start => barred(Bar::Node),
            _ => Outcome::Stopped,
        });
        let f = gs.take_failures();
        assert_eq!(f.len(), 1, "{f:?}");
        assert_eq!(f[0].then, Escalation::Move);
        assert!(f[0].reason.starts_with("start failed: not installed"));

        let mut gs = Groups::new(&[1], 0);
        gs.set_want(0, Want::Stop);
        settle(&mut gs, 0, |_| barred(Bar::Everywhere));
        let f = gs.take_failures();
        assert_eq!(f.len(), 1, "the probe's failure: {f:?}");
        assert_eq!(f[0].then, Escalation::BarEverywhere);
        // It may run (the probe could not tell), so it is stopped after
        // the backoff, and the stop's barred outcome leaves it stop-failed.
        settle(&mut gs, RESTART_BACKOFF_MS, |_| barred(Bar::Everywhere));
        assert!(gs.stop_failed(0).is_some());
    }

    #[test]
    fn a_failed_start_is_reported_and_retried_after_backoff() {
        let mut gs = Groups::new(&[2], 0);
        gs.set_want(0, Want::Run);
        settle(&mut gs, 0, |x| match (x.resource, x.kind) {
            (1, ActionKind::Start) => Outcome::Failed("exit 1".into()),
            _ => ok(x),
        });
        let f = gs.take_failures();
        assert_eq!(f.len(), 1);
        assert!(f[0].reason.contains("exit 1"));
        // Resource 0 was stopped again (recover stops down to the failure).
        assert_eq!(gs.state(0).0, GroupState::Failed);
        assert!(gs.poll(500).is_empty(), "backoff");
        let log = settle(&mut gs, RESTART_BACKOFF_MS, ok);
        assert_eq!(
            log.first(),
            Some(&a(0, 1, ActionKind::Start)).or(log.first())
        );
        assert_eq!(gs.state(0).0, GroupState::Running);
    }

    #[test]
    fn monitor_failure_restarts_from_the_failed_resource() {
        let mut gs = Groups::new(&[3], 0);
        gs.set_want(0, Want::Run);
        settle(&mut gs, 0, ok);
        gs.on_monitor_failure(10, 0, 1, "process exited".into(), None);
        let log = settle(&mut gs, 10, ok);
        // Stops 2 and the failed 1, keeps 0 running; waits for the backoff.
        assert_eq!(
            log,
            vec![a(0, 2, ActionKind::Stop), a(0, 1, ActionKind::Stop)]
        );
        let log = settle(&mut gs, 10 + RESTART_BACKOFF_MS, ok);
        assert_eq!(
            log,
            vec![a(0, 1, ActionKind::Start), a(0, 2, ActionKind::Start)]
        );
    }

    /// `move` and `standby` hold the group: it stops down to the failure
    /// and starts nothing while the leader moves it, but recovers in place
    /// if no move comes within the hold (a lost request).
    #[test]
    fn a_held_group_stops_down_to_the_failure_and_restarts_only_after_the_hold() {
        for policy in [OnFail::Move, OnFail::Standby] {
            let mut gs = Groups::new(&[3], 0);
            gs.set_on_fail(0, 1, policy);
            gs.set_want(0, Want::Run);
            settle(&mut gs, 0, ok);
            gs.on_monitor_failure(10, 0, 1, "gone".into(), None);
            let f = gs.take_failures();
            let want = if policy == OnFail::Move {
                Escalation::Move
            } else {
                Escalation::Standby
            };
            assert_eq!(f[0].then, want);
            let log = settle(&mut gs, 10, ok);
            assert_eq!(
                log,
                vec![a(0, 2, ActionKind::Stop), a(0, 1, ActionKind::Stop)]
            );
            assert!(
                settle(&mut gs, 10 + RESTART_BACKOFF_MS, ok).is_empty(),
                "{policy:?}"
            );
            assert_eq!(gs.next_deadline(), Some(10 + HOLD_MAX_MS));
            let log = settle(&mut gs, 10 + HOLD_MAX_MS, ok);
            assert_eq!(
                log,
                vec![a(0, 1, ActionKind::Start), a(0, 2, ActionKind::Start)]
            );
        }
        // Wanted elsewhere: the hold ends and the rest stops at once.
        let mut gs = Groups::new(&[2], 0);
        gs.set_on_fail(0, 1, OnFail::Move);
        gs.set_want(0, Want::Run);
        settle(&mut gs, 0, ok);
        gs.on_monitor_failure(10, 0, 1, "gone".into(), None);
        settle(&mut gs, 10, ok);
        gs.set_want(0, Want::Stop);
        assert_eq!(gs.held_until(0), None);
        assert_eq!(settle(&mut gs, 20, ok), vec![a(0, 0, ActionKind::Stop)]);
    }

    /// `fence` and `block` freeze the group: no stop, no start, no probe,
    /// even when it is wanted stopped (the node goes off, or the operator
    /// decides), until it is left alone.
    #[test]
    fn a_frozen_group_is_touched_by_nothing_until_it_is_left_alone() {
        for (policy, then) in [
            (OnFail::Fence, Escalation::Fence),
            (OnFail::Block, Escalation::Block),
        ] {
            let mut gs = Groups::new(&[2], 0);
            gs.set_on_fail(0, 0, policy);
            gs.set_want(0, Want::Run);
            settle(&mut gs, 0, ok);
            gs.on_monitor_failure(10, 0, 0, "hung".into(), None);
            assert_eq!(gs.take_failures()[0].then, then);
            assert!(gs.frozen(0));
            assert!(settle(&mut gs, 10 + HOLD_MAX_MS, ok).is_empty());
            gs.set_want(0, Want::Stop);
            assert!(
                settle(&mut gs, 20 + HOLD_MAX_MS, ok).is_empty(),
                "{policy:?}"
            );
            assert!(gs.active(0));
            // It wakes only to report its failure again, every so often,
            // until the cluster takes over.
            assert_eq!(
                gs.next_deadline(),
                Some(10 + HOLD_MAX_MS + FROZEN_REPORT_EVERY_MS)
            );
            // (It was reported again once, at the first look past 10 s.)
            assert_eq!(gs.take_failures().len(), 1);
            // Further checks do not pile up failures.
            gs.on_monitor_failure(30, 0, 1, "hung".into(), None);
            assert!(gs.take_failures().is_empty());
            gs.poll(10 + HOLD_MAX_MS + FROZEN_REPORT_EVERY_MS);
            let again = gs.take_failures();
            assert_eq!(again.len(), 1, "{again:?}");
            assert_eq!(again[0].then, then);
            // Left alone (blocked in the record, or maintenance) and then
            // wanted again: recovered as usual.
            gs.set_want(0, Want::Leave);
            assert!(!gs.frozen(0));
            gs.set_want(0, Want::Run);
            let log = settle(&mut gs, 40 + HOLD_MAX_MS, ok);
            assert_eq!(log.first(), Some(&a(0, 1, ActionKind::Stop)), "{log:?}");
            assert_eq!(gs.state(0).0, GroupState::Running);
        }
    }

    /// `ignore` keeps a failed check's resource running and only reports;
    /// a failed start under `ignore` is still recovered.
    #[test]
    fn ignore_reports_a_failed_check_and_changes_nothing_but_a_failed_start_is_recovered() {
        let mut gs = Groups::new(&[1], 0);
        gs.set_on_fail(0, 0, OnFail::Ignore);
        gs.set_want(0, Want::Run);
        settle(&mut gs, 0, ok);
        gs.on_monitor_failure(10, 0, 0, "slow".into(), None);
        assert_eq!(gs.take_failures()[0].then, Escalation::Record);
        assert_eq!(gs.state(0).0, GroupState::Running);
        assert!(settle(&mut gs, 10, ok).is_empty());
        // Failing on: reported again only after a while.
        gs.on_monitor_failure(510, 0, 0, "slow".into(), None);
        assert!(gs.take_failures().is_empty());
        gs.on_monitor_failure(10 + IGNORED_REPORT_EVERY_MS, 0, 0, "slow".into(), None);
        assert_eq!(gs.take_failures().len(), 1);

        let mut gs = Groups::new(&[1], 0);
        gs.set_on_fail(0, 0, OnFail::Ignore);
        gs.set_want(0, Want::Run);
        settle(&mut gs, 0, |x| match x.kind {
            ActionKind::Start => Outcome::Failed("exit 1".into()),
            _ => ok(x),
        });
        assert_eq!(gs.take_failures()[0].then, Escalation::Count);
        settle(&mut gs, RESTART_BACKOFF_MS, ok);
        assert_eq!(gs.state(0).0, GroupState::Running);
    }

    /// A group monitor's failure is reported even when its group is busy,
    /// and acts with the monitor's policy, not the resource's.
    #[test]
    fn a_group_monitor_failure_uses_the_monitors_policy_and_is_always_reported() {
        let mut gs = Groups::new(&[2], 0);
        gs.set_want(0, Want::Run);
        settle(&mut gs, 0, ok);
        gs.on_group_monitor(10, 0, 1, "http 500".into(), OnFail::Block);
        assert_eq!(gs.take_failures()[0].then, Escalation::Block);
        assert!(gs.frozen(0));
        // A later one while frozen is still reported (no local change).
        gs.on_group_monitor(20, 0, 1, "http 500".into(), OnFail::Move);
        assert_eq!(gs.take_failures()[0].then, Escalation::Move);
    }

    proptest! {
        /// Under any sequence of wants and outcomes, a start is only ever
        /// asked for a resource whose predecessors all run, a stop only for
        /// one whose successors are all stopped (or failed), and nothing
        /// happens before every resource is probed.
        #[test]
        fn starts_follow_order_and_stops_reverse_it(
            sizes in proptest::collection::vec(1usize..5, 1..3),
            script in proptest::collection::vec((0usize..3, any::<u8>()), 1..80),
        ) {
            let mut gs = Groups::new(&sizes, 0);
            let mut now = 0;
            for (g, r) in script {
                now += 300;
                let g = g % sizes.len();
                match r % 7 {
                    0 => gs.set_want(g, Want::Run),
                    1 => gs.set_want(g, Want::Stop),
                    2 => gs.on_monitor_failure(now, g, (r as usize / 7) % sizes[g], "x".into(), None),
                    _ => {}
                }
                for x in gs.poll(now) {
                    let rs = gs.resources(x.group).to_vec();
                    match x.kind {
                        ActionKind::Start => prop_assert!(rs[..x.resource].iter().all(|s| *s == ResourceState::Running), "{:?} {:?}", x, rs),
                        ActionKind::Stop => prop_assert!(rs[x.resource + 1..].iter().all(|s| !s.maybe_running()), "{:?} {:?}", x, rs),
                        ActionKind::Probe => {}
                    }
                    if x.kind != ActionKind::Probe {
                        prop_assert!(!rs.contains(&ResourceState::Unknown));
                    }
                    let out = match (r % 3, x.kind) {
                        (0, ActionKind::Start) => Outcome::Failed("boom".into()),
                        (1, ActionKind::Probe) => Outcome::Running,
                        _ => ok(x),
                    };
                    gs.on_outcome(now, x, out);
                }
            }
        }
    }

    #[test]
    fn a_stop_bound_covers_an_action_under_way_then_every_stop_in_turn() {
        // One resource: a start under way (20 s + grace), then its stop.
        assert_eq!(stop_bound_ms([20_000].into_iter()), 2 * 21_000);
        // The longest action under way, then each stop.
        assert_eq!(
            stop_bound_ms([1_000, 2_000].into_iter()),
            3_000 + 2_000 + 3_000
        );
        assert_eq!(stop_bound_ms(std::iter::empty()), 0);
        assert_eq!(stop_bound_ms([u64::MAX].into_iter()), u64::MAX);
    }

    #[test]
    fn a_state_word_from_a_newer_node_reads_as_unknown() {
        let s: GroupState = serde_json::from_str("\"migrating\"").unwrap_or(GroupState::Failed);
        assert_eq!(s, GroupState::Unknown);
        let s: GroupState = serde_json::from_str("\"running\"").unwrap_or(GroupState::Failed);
        assert_eq!(s, GroupState::Running);
    }
}
