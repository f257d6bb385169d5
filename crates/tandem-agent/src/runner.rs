//! The agent's resource shell: joins the core's [`Groups`] state machine
//! to the real resources ([`crate::kinds`]) and monitors
//! ([`crate::monitor`]) of this node.
//!
//! Each pass ([`Runner::drive`]) decides what is wanted of every group from
//! the agreed record and this node's lease, asks the core for the next
//! actions and runs them: address actions inline (they take well under a
//! millisecond, and a node whose lease ended must drop its addresses before
//! it does anything else), the others as local tasks whose outcomes come
//! back through a channel. It also runs the periodic resource checks,
//! group monitors, the node's ping monitors and the repeated announcements
//! of addresses taken over.

use std::path::PathBuf;
use std::rc::Rc;
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tandem_core::config::{Config, MonitorCheck};
use tandem_core::group::{
    Action, ActionKind, Bar, GroupState, Groups, Outcome, ResourceState, Want,
};
use tandem_core::link_monitors::{LinkMonitorPlan, LinkMonitors, LinkVerdict};
use tandem_core::member::{GroupReport, Member, Request};
use tandem_core::monitors::{MonitorPlan, Monitors, Verdict};
use tandem_core::on_fail::Escalation;
use tandem_core::wants::{Held, Pass, Wants};
use tokio::sync::mpsc;

use crate::child::Owner;
use crate::event::AgentEvent;
use crate::guard::{self, LeaseFile};
use crate::kinds::ip::ANNOUNCE_AT_MS;
use crate::kinds::{run_action, run_check, Resource};
use crate::kinds::{Bind, Health};
use crate::monitor::{self, Check};
use crate::status::{MonitorShown, MonitorStatus, ResourceShown, ResourceStatus};

/// How often running resources are checked (address present and on the
/// right interface, process alive, script status).
const RESOURCE_CHECK_MS: u64 = 500;
/// How often every address held here is announced again, so switches and
/// neighbours that missed the takeover (or aged their entry) learn it.
const ANNOUNCE_REFRESH_MS: u64 = 10_000;
/// After a group starts, how long its monitors may fail before failures
/// count (the service is still coming up; see `tandem_core::monitors`).
const START_GRACE_MS: u64 = 20_000;
/// Most inline passes of one drive (each pass finishes at least one action).
const MAX_INLINE_PASSES: usize = 64;

/// A finished action or check, sent back to the agent's loop.
#[derive(Debug)]
pub enum Done {
    /// A resource action finished.
    Action(Action, Outcome),
    /// A resource's periodic check found it stopped or failing.
    ResourceCheck {
        /// Group.
        group: usize,
        /// Resource.
        resource: usize,
        /// Err: why it is unhealthy, and where that bars its group from
        /// (None: one failure, recovered in place).
        result: Result<(), (String, Option<Bar>)>,
    },
    /// A monitor check finished.
    Monitor {
        /// Index into the node or group monitors.
        index: usize,
        /// Node monitor (true) or group monitor.
        node: bool,
        /// Err: what failed.
        result: Result<(), monitor::CheckError>,
    },
}

/// One group on this node, for status.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct LocalGroup {
    /// Group name.
    pub name: String,
    /// What is wanted here.
    pub want: Want,
    /// State here.
    pub state: GroupState,
    /// Since when (ms since the Unix epoch).
    pub since_unix_ms: u64,
    /// Resources in order.
    pub resources: Vec<ResourceStatus>,
    /// Its monitors, as checked here.
    pub monitors: Vec<MonitorStatus>,
}

/// This node's groups, resources and monitors.
pub struct Runner {
    node: String,
    names: Vec<String>,
    resources: Vec<Vec<Rc<Resource>>>,
    groups: Groups,
    /// Group monitors: schedule and verdicts in the core, checks here
    /// (index-aligned; None for `process` monitors).
    monitors: Monitors,
    monitor_kinds: Vec<&'static str>,
    monitor_checks: Vec<Option<Check>>,
    monitor_timeouts_ms: Vec<u64>,
    /// Link monitors: schedule and thresholds in the core, pings here
    /// (index-aligned).
    link_monitors: LinkMonitors,
    link_checks: Vec<(Check, Duration)>,
    announce: Vec<(u64, usize, usize)>,
    next_check_ms: u64,
    next_refresh_ms: u64,
    checking: Vec<Vec<bool>>,
    /// When each resource's next check (run as a task) is due; 0: not
    /// scheduled (the resource does not run).
    check_due_ms: Vec<Vec<u64>>,
    last_failure: Vec<Option<String>>,
    unix_at_zero_ms: u64,
    lease_held: Option<bool>,
    /// What this node wants of its groups (the rule lives in the core).
    wants: Wants,
    tx: mpsc::Sender<Done>,
    /// This agent's process id (for the lease file; asked once).
    pid: u32,
    /// Groups being stopped whose end passed and whose remains were killed
    /// (once per stop).
    killed_leaving: std::collections::BTreeSet<usize>,
    /// The lease file the guard watches.
    lease_path: PathBuf,
    /// The guard's lock beside the lease file ([`guard::lock_path`]).
    guard_lock: PathBuf,
    /// The guard held its lock at the last pass (said once per wait).
    waiting_for_guard: bool,
    /// What was written there last.
    written: Option<LeaseFile>,
    /// Why the last write of the lease file failed (None: it did not).
    lease_write_error: Option<String>,
}

impl Runner {
    /// This node's runner. Fails (with what to do) when a configured
    /// resource cannot run in this version.
    pub fn new(
        cfg: &Config,
        node: &str,
        run_dir: PathBuf,
        unix_at_zero_ms: u64,
        tx: mpsc::Sender<Done>,
        hub: Option<&std::sync::Arc<crate::volume::Hub>>,
        filesync: Option<&std::sync::Arc<crate::filesync::Service>>,
    ) -> Result<Runner> {
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let mut names = Vec::new();
        let mut resources = Vec::new();
        for g in &cfg.groups {
            let gname = g.name.clone();
            let mut rs = Vec::new();
            for spec in &g.resources {
                let owner = Owner {
                    cluster: cfg.cluster.name.clone(),
                    node: node.to_string(),
                    group: gname.clone(),
                    resource: spec.name.clone(),
                    run_dir: run_dir.clone(),
                };
                let bind = Bind {
                    hub,
                    filesync,
                    group: &gname,
                    resource: &spec.name,
                    run_dir: &run_dir,
                };
                let r = Resource::new(spec, owner, &bind)?;
                rs.push(Rc::new(r));
            }
            names.push(gname);
            resources.push(rs);
        }
        let mut plans = Vec::new();
        let mut monitor_kinds = Vec::new();
        let mut monitor_checks = Vec::new();
        let mut monitor_timeouts_ms = Vec::new();
        for (gi, g) in cfg.groups.iter().enumerate() {
            for spec in &g.monitors {
                let (check, resource) = match &spec.check {
                    MonitorCheck::Tcp { address } => (Some(Check::Tcp(*address)), None),
                    MonitorCheck::Http { url } => (Some(Check::Http(url.clone())), None),
                    MonitorCheck::Exec { command } => (Some(Check::Exec(command.clone())), None),
                    MonitorCheck::Process { resource } => {
                        (None, g.resources.iter().position(|r| r.name == *resource))
                    }
                    MonitorCheck::Ping { .. } => continue,
                };
                plans.push(MonitorPlan {
                    name: spec.name.clone(),
                    group: gi,
                    resource,
                    has_check: check.is_some(),
                    interval_ms: spec.interval_ms,
                    threshold: spec.failures,
                    on_fail: spec.on_fail,
                    restarts: spec.restarts,
                    start_grace_ms: START_GRACE_MS,
                });
                monitor_kinds.push(spec.kind());
                monitor_checks.push(check);
                monitor_timeouts_ms.push(spec.timeout_ms);
            }
        }
        let my_addrs = cfg
            .node(node)
            .map(|n| n.addresses.clone())
            .unwrap_or_default();
        let mut link_plans = Vec::new();
        let mut link_checks = Vec::new();
        for spec in &cfg.node_monitors {
            let MonitorCheck::Ping { targets, link } = &spec.check else {
                continue;
            };
            let source = my_addrs.get(link).copied();
            link_plans.push(LinkMonitorPlan {
                name: spec.name.clone(),
                link: link.clone(),
                interval_ms: spec.interval_ms,
                threshold: spec.failures,
            });
            link_checks.push((
                Check::Ping {
                    targets: targets.clone(),
                    source,
                },
                Duration::from_millis(spec.timeout_ms),
            ));
        }
        let counts: Vec<usize> = resources.iter().map(Vec::len).collect();
        let mut groups = Groups::new(&counts, 0);
        for (gi, g) in cfg.groups.iter().enumerate() {
            for (ri, r) in g.resources.iter().enumerate() {
                groups.set_on_fail(gi, ri, r.on_fail);
            }
        }
        Ok(Runner {
            node: node.to_string(),
            groups,
            checking: counts.iter().map(|&n| vec![false; n]).collect(),
            check_due_ms: counts.iter().map(|&n| vec![0; n]).collect(),
            last_failure: vec![None; names.len()],
            names,
            resources,
            monitors: Monitors::new(plans),
            monitor_kinds,
            monitor_checks,
            monitor_timeouts_ms,
            link_monitors: LinkMonitors::new(link_plans),
            link_checks,
            announce: Vec::new(),
            next_check_ms: RESOURCE_CHECK_MS,
            next_refresh_ms: ANNOUNCE_REFRESH_MS,
            unix_at_zero_ms,
            lease_held: None,
            wants: Wants::new(),
            tx,
            pid: std::process::id(),
            killed_leaving: std::collections::BTreeSet::new(),
            lease_path: run_dir.join("lease.json"),
            guard_lock: guard::lock_path(&run_dir.join("lease.json")),
            waiting_for_guard: false,
            written: None,
            lease_write_error: None,
        })
    }

    /// Whether anything of any group may run here.
    pub fn any_active(&self) -> bool {
        (0..self.groups.len()).any(|g| self.groups.active(g))
    }

    /// Whether any group has resources (else there is nothing to guard).
    pub fn has_resources(&self) -> bool {
        self.resources.iter().any(|g| !g.is_empty())
    }

    /// Links whose ping monitor fails here.
    pub fn failed_links(&self) -> Vec<String> {
        self.link_monitors.failed_links()
    }

    /// When the runner next needs a pass without any input.
    pub fn next_deadline(&self) -> Option<u64> {
        let mut d = self.groups.next_deadline();
        let mut consider = |t: u64| d = Some(d.map_or(t, |x: u64| x.min(t)));
        if self.has_resources() {
            consider(self.next_check_ms);
            consider(self.next_refresh_ms);
        }
        for (t, _, _) in &self.announce {
            consider(*t);
        }
        if let Some(t) = self.monitors.next_deadline() {
            consider(t);
        }
        if let Some(t) = self.link_monitors.next_deadline() {
            consider(t);
        }
        d
    }

    /// The lease file the guard watches.
    pub fn lease_path(&self) -> &std::path::Path {
        &self.lease_path
    }

    /// Keeps what the previous agent ran (without restarting it) until
    /// `until_ms` (this agent's clock), unless a lease or the record says
    /// otherwise first.
    pub fn inherit_lease(&mut self, until_ms: u64) {
        self.wants.inherit_lease(until_ms);
    }

    /// Groups to stop before a configuration switch (replaces the
    /// previous set; empty: none).
    pub fn retire(&mut self, groups: Vec<String>) {
        self.wants.retire(groups);
    }

    /// Whether this runner may be replaced by another configuration's:
    /// no action runs or is due on any group (no resource starting,
    /// stopping or unprobed), and none of `retired` may still run here.
    pub fn settled(&self, retired: &[String]) -> bool {
        use tandem_core::group::ResourceState as R;
        (0..self.groups.len()).all(|g| {
            let busy = self
                .groups
                .resources(g)
                .iter()
                .any(|r| matches!(r, R::Starting | R::Stopping | R::Unknown));
            let retiring = self.names.get(g).is_some_and(|n| retired.contains(n));
            let stopping_first = retiring && self.groups.active(g);
            !busy && !stopping_first
        })
    }

    /// A graceful stop: every group here stops (maintenance or not).
    pub fn shut_down(&mut self) {
        self.wants.shut_down();
    }

    /// What this node wants of every group now ([`Wants::decide`]).
    fn decide(&mut self, now_ms: u64, member: &Member) -> Pass {
        let held: Vec<Held<'_>> = (0..self.groups.len())
            .map(|g| Held {
                name: &self.names[g],
                active: self.groups.active(g),
            })
            .collect();
        self.wants
            .decide(now_ms, member, self.lease_write_error.is_none(), &held)
    }

    /// One pass: wants from the record and the lease, actions, checks.
    /// Returns what happened, typed (the agent logs it).
    pub fn drive(&mut self, now_ms: u64, member: &mut Member) -> Vec<AgentEvent> {
        let mut log = Vec::new();
        let pass = self.decide(now_ms, member);
        let lease_ok = pass.lease_ok;
        if self.lease_held != Some(lease_ok) {
            let held_groups = self.any_active();
            if self.lease_held.is_some() && (held_groups || lease_ok) {
                log.push(AgentEvent::Lease { held: lease_ok });
            }
            self.lease_held = Some(lease_ok);
        }
        for (g, d) in pass.groups.iter().enumerate() {
            if self.groups.want(g) != d.want {
                self.groups.set_want(g, d.want);
            }
        }
        // While the guard stops what an ended lease left here, nothing
        // starts (its stop could land after our start); probes and stops
        // go on (a node losing its lease must still stop at once). The
        // next pass (heartbeats drive one every few tens of ms) looks
        // again.
        let guard_busy = guard::busy(&self.guard_lock);
        if guard_busy && !self.waiting_for_guard {
            log.push(AgentEvent::WaitingForGuard);
        }
        self.waiting_for_guard = guard_busy;
        self.groups.hold_starts(guard_busy);
        self.run_actions(now_ms, &mut log);
        self.periodic(now_ms, &mut log);
        for f in self.groups.take_failures() {
            let group = self.names[f.group].clone();
            let resource = self.resources[f.group]
                .get(f.resource)
                .map_or("?", |r| r.owner.resource.as_str())
                .to_string();
            let reason = format!("{resource}: {}", f.reason);
            self.report_failure(now_ms, member, group, reason, f.then, &mut log);
        }
        member.set_local(self.reports(), self.failed_links());
        let until = pass.keep_until_ms;
        let leaving = self.leaving(now_ms, &pass, &mut log);
        // A failure is retried once at once (a passing error); a second
        // one in a row means the lease cannot be renewed.
        let written = self
            .write_lease(now_ms, until, &leaving)
            .or_else(|_| self.write_lease(now_ms, until, &leaving));
        match written {
            Ok(()) => self.lease_write_error = None,
            Err(e) => {
                let e = format!("{e:#}");
                if self.lease_write_error.is_none() {
                    log.push(AgentEvent::LeaseFileUnwritable { error: e.clone() });
                }
                self.lease_write_error = Some(e);
            }
        }
        log
    }

    /// Why the lease file could not be written last time, if it could not.
    /// The guard acts on what the file says: while it cannot be renewed,
    /// this node holds no lease (nothing starts here; the agent leaves).
    pub fn lease_write_error(&self) -> Option<&str> {
        self.lease_write_error.as_deref()
    }

    /// What of group `g` may be running here, for the guard (its end is
    /// set by the caller).
    fn may_run(&self, g: usize) -> guard::Leaving {
        let mut part = guard::Leaving::default();
        // In stop order, the reverse of the group's: the guard runs the
        // stop commands in the order listed, and a filesystem cannot be
        // unmounted before the database on it has stopped. (A kind may mark
        // a command `first`, run before every other: an fs on a volume
        // cuts the dead agent's data path before anything stops.)
        for (r, state) in self.resources[g].iter().zip(self.groups.resources(g)).rev() {
            if !state.maybe_running() {
                continue;
            }
            r.kind.guard(&r.owner, &mut part);
        }
        part
    }

    /// Tells the guard the lease end and what may run here: the groups
    /// placed here under the node's lease, and each group being stopped
    /// after the record moved it away under its own end (`leaving`: group
    /// -> end on this agent's clock).
    fn write_lease(
        &mut self,
        now_ms: u64,
        until_ms: Option<u64>,
        leaving: &[(usize, u64)],
    ) -> Result<()> {
        let mono = guard::mono_ms();
        let to_mono = |u: u64| mono + u.saturating_sub(now_ms);
        let mut lease = LeaseFile {
            agent_pid: self.pid,
            boot_id: String::new(),
            until_mono_ms: until_ms.map_or(mono, to_mono),
            ..LeaseFile::default()
        };
        for g in 0..self.groups.len() {
            let mut part = self.may_run(g);
            if let Some((_, end)) = leaving.iter().find(|(lg, _)| *lg == g) {
                if part != guard::Leaving::default() {
                    part.until_mono_ms = to_mono(*end);
                    lease.leaving.push(part);
                }
            } else {
                lease.addresses.extend(part.addresses);
                lease.pidfiles.extend(part.pidfiles);
                lease.stop_commands.extend(part.stop_commands);
            }
        }
        // Rewrite when what is held changes, when the lease end moves earlier,
        // or when less than half of what the new end gives is left of the
        // written one: renewals come with every heartbeat, and writing each
        // of them (a file and a rename, 20-40 times a second) was a good part
        // of an idle agent's cost. The written end is always one the agent
        // held, so the guard never acts before the lease really ends.
        let same = self.written.as_ref().is_some_and(|w| {
            let left = w.until_mono_ms.saturating_sub(mono);
            let fresh = lease.until_mono_ms.saturating_sub(mono);
            w.addresses == lease.addresses
                && w.pidfiles == lease.pidfiles
                && w.stop_commands == lease.stop_commands
                && w.leaving == lease.leaving
                // (Ends within 2 ms are the same end: converting from the
                // agent's clock to CLOCK_MONOTONIC rounds by a millisecond
                // either way; the takeover margin is far larger.)
                && lease.until_mono_ms + 2 >= w.until_mono_ms
                && left.saturating_mul(2) >= fresh
        });
        if same {
            return Ok(());
        }
        lease.boot_id = guard::boot_id();
        guard::write(&self.lease_path, &lease)?;
        self.written = Some(lease);
        Ok(())
    }

    /// Groups running here that the record places elsewhere, with the end
    /// of what this node may keep of them ([`Member::group_until`]). A
    /// stop that outlasted it is cut short now: addresses removed, process
    /// groups killed (what the guard would do), so the group never outlives
    /// what the leader waits for.
    fn leaving(
        &mut self,
        now_ms: u64,
        pass: &Pass,
        log: &mut Vec<AgentEvent>,
    ) -> Vec<(usize, u64)> {
        // The pass decided before this pass's actions: a group whose stop
        // finished since has nothing left to list or kill (`may_run` is
        // empty), so deciding again would change nothing.
        let mut out = Vec::new();
        for (g, d) in pass.groups.iter().enumerate() {
            let Some(end) = d.leaving_until_ms else {
                continue;
            };
            if pass.kills(g, now_ms) && !self.killed_leaving.contains(&g) {
                // Addresses and process groups at once; scripts' own stop
                // is what the runner is already doing.
                let lease = LeaseFile {
                    stop_commands: Vec::new(),
                    ..self.may_run(g).as_lease()
                };
                let did = guard::enforce(&lease);
                // Said (and done) once per stop, and only when something
                // was still there (not for a group still being probed).
                if !did.is_empty() {
                    self.killed_leaving.insert(g);
                    log.push(AgentEvent::StopCutShort {
                        group: self.names[g].clone(),
                        did,
                    });
                }
            }
            out.push((g, end));
        }
        self.killed_leaving.retain(|g| self.groups.active(*g));
        out
    }

    /// Logs a failure here and reports it to the leader with what the
    /// leader is to do (`then`).
    fn report_failure(
        &mut self,
        now_ms: u64,
        member: &mut Member,
        group: String,
        reason: String,
        then: Escalation,
        log: &mut Vec<AgentEvent>,
    ) {
        self.note_failure(&group, &reason, log);
        member.request(
            now_ms,
            Request::Failed {
                group,
                node: self.node.clone(),
                reason,
                at_unix_ms: self.unix_at_zero_ms + now_ms,
                // So that a leader of an older version (which reads only
                // these) at least moves it.
                move_now: !matches!(
                    then,
                    Escalation::Count | Escalation::Record | Escalation::Block
                ),
                everywhere: then == Escalation::BarEverywhere,
                then,
            },
        );
    }

    fn note_failure(&mut self, group: &str, reason: &str, log: &mut Vec<AgentEvent>) {
        log.push(AgentEvent::GroupFailed {
            group: group.to_string(),
            reason: reason.to_string(),
        });
        if let Some(g) = self.names.iter().position(|n| n == group) {
            self.last_failure[g] = Some(reason.to_string());
        }
    }

    fn run_actions(&mut self, now_ms: u64, log: &mut Vec<AgentEvent>) {
        for _ in 0..MAX_INLINE_PASSES {
            let actions = self.groups.poll(now_ms);
            if actions.is_empty() {
                return;
            }
            let mut inline = false;
            for a in actions {
                let Some(r) = self.resources[a.group].get(a.resource).cloned() else {
                    continue;
                };
                if a.kind != ActionKind::Probe {
                    log.push(AgentEvent::ActionBegun {
                        group: r.owner.group.clone(),
                        resource: r.owner.resource.clone(),
                        action: a.kind.into(),
                    });
                }
                if let Some(outcome) = r.kind.inline_action(a.kind) {
                    // Inline (addresses): sub-millisecond netlink calls,
                    // and a lost lease must drop addresses before anything
                    // else runs.
                    if a.kind == ActionKind::Start && outcome == Outcome::Running {
                        for at in ANNOUNCE_AT_MS.iter().skip(1) {
                            self.announce.push((now_ms + at, a.group, a.resource));
                        }
                    }
                    self.log_outcome(a, &r, &outcome, log);
                    self.groups.on_outcome(now_ms, a, outcome);
                    inline = true;
                } else {
                    let tx = self.tx.clone();
                    tokio::task::spawn_local(async move {
                        let outcome = run_action(&r, a.kind).await;
                        let _ = tx.send(Done::Action(a, outcome)).await;
                    });
                }
            }
            if !inline {
                return;
            }
        }
    }

    fn log_outcome(&self, a: Action, r: &Resource, outcome: &Outcome, log: &mut Vec<AgentEvent>) {
        let (group, resource) = (r.owner.group.clone(), r.owner.resource.clone());
        match (a.kind, outcome) {
            (ActionKind::Probe, Outcome::Running) => {
                log.push(AgentEvent::FoundRunning { group, resource })
            }
            (ActionKind::Probe, Outcome::Stopped) => {}
            (ActionKind::Start, Outcome::Running) => {
                log.push(AgentEvent::Started { group, resource })
            }
            (ActionKind::Stop, Outcome::Stopped) => {
                log.push(AgentEvent::Stopped { group, resource })
            }
            (k, Outcome::Failed(why) | Outcome::Barred { why, .. }) => {
                log.push(AgentEvent::ActionFailed {
                    group,
                    resource,
                    action: k.into(),
                    reason: why.clone(),
                })
            }
            _ => {}
        }
    }

    /// An outcome or check result from a task.
    pub fn on_done(&mut self, now_ms: u64, done: Done, member: &mut Member) -> Vec<AgentEvent> {
        let mut log = Vec::new();
        match done {
            Done::Action(a, outcome) => {
                if let Some(r) = self.resources[a.group].get(a.resource).cloned() {
                    log.extend(
                        r.take_notes()
                            .into_iter()
                            .map(|text| AgentEvent::ResourceNote {
                                group: r.owner.group.clone(),
                                resource: r.owner.resource.clone(),
                                text,
                            }),
                    );
                    self.log_outcome(a, &r, &outcome, &mut log);
                }
                self.groups.on_outcome(now_ms, a, outcome);
            }
            Done::ResourceCheck {
                group,
                resource,
                result,
            } => {
                if let Some(c) = self
                    .checking
                    .get_mut(group)
                    .and_then(|v| v.get_mut(resource))
                {
                    *c = false;
                }
                if let Err((why, bar)) = result {
                    self.groups
                        .on_monitor_failure(now_ms, group, resource, why, bar);
                }
            }
            Done::Monitor {
                index,
                node: true,
                result,
            } => {
                match self
                    .link_monitors
                    .on_result(now_ms, index, result.map_err(|e| e.to_string()))
                {
                    None => {}
                    Some(LinkVerdict::Healthy { monitor, link }) => {
                        log.push(AgentEvent::LinkHealthy { monitor, link });
                    }
                    Some(LinkVerdict::Failed {
                        monitor,
                        link,
                        failures,
                        reason,
                    }) => log.push(AgentEvent::LinkFailed {
                        monitor,
                        link,
                        failures,
                        reason,
                    }),
                }
            }
            Done::Monitor {
                index,
                node: false,
                result,
            } => self.on_group_monitor(
                now_ms,
                index,
                // The core keeps the reason as text (it goes into the
                // record and status).
                result.map_err(|e| e.to_string()),
                &mut log,
            ),
        }
        log.extend(self.drive(now_ms, member));
        log
    }

    fn on_group_monitor(
        &mut self,
        now_ms: u64,
        index: usize,
        result: Result<(), String>,
        log: &mut Vec<AgentEvent>,
    ) {
        let Some(group) = self.monitors.plan(index).map(|p| p.group) else {
            return;
        };
        let running = self.groups.state(group).0 == GroupState::Running;
        match self.monitors.on_result(now_ms, index, result, running) {
            Verdict::Nothing => {}
            Verdict::Ignore { group, reason } => log.push(AgentEvent::FailureIgnored {
                group: self.names[group].clone(),
                reason,
            }),
            Verdict::Restart {
                group,
                resource,
                reason,
            } => {
                let last = self.resources[group].len().saturating_sub(1);
                self.groups
                    .on_monitor_failure(now_ms, group, resource.min(last), reason, None);
            }
            // Out of restarts here, `move`, `fence`, `block`, `standby`:
            // the groups decide what it means here and for the leader.
            Verdict::Escalate {
                group,
                resource,
                reason,
                on_fail,
            } => {
                let last = self.resources[group].len().saturating_sub(1);
                let resource = resource.unwrap_or(last).min(last);
                self.groups
                    .on_group_monitor(now_ms, group, resource, reason, on_fail);
            }
        }
    }

    fn periodic(&mut self, now_ms: u64, log: &mut Vec<AgentEvent>) {
        // Repeated announcements of addresses taken over.
        let due: Vec<(usize, usize)> = self
            .announce
            .iter()
            .filter(|(t, _, _)| *t <= now_ms)
            .map(|(_, g, r)| (*g, *r))
            .collect();
        self.announce.retain(|(t, _, _)| *t > now_ms);
        for (g, r) in due {
            if self.groups.resources(g).get(r) == Some(&ResourceState::Running) {
                self.resources[g][r].kind.announce();
            }
        }
        if now_ms >= self.next_check_ms {
            self.next_check_ms = now_ms + RESOURCE_CHECK_MS;
            self.check_resources(now_ms, log);
        }
        if now_ms >= self.next_refresh_ms {
            self.next_refresh_ms = now_ms + ANNOUNCE_REFRESH_MS;
            for g in 0..self.groups.len() {
                for (r, state) in self.resources[g].iter().zip(self.groups.resources(g)) {
                    if *state == ResourceState::Running {
                        r.kind.announce();
                    }
                }
            }
        }
        let groups = &self.groups;
        let due = self.monitors.due(
            now_ms,
            |g| groups.state(g).0 == GroupState::Running,
            |g| groups.want(g) == Want::Run,
        );
        for i in due {
            if let Some(Some(check)) = self.monitor_checks.get(i) {
                let timeout = Duration::from_millis(self.monitor_timeouts_ms[i]);
                self.spawn_check(i, false, check.clone(), timeout);
            }
        }
        for i in self.link_monitors.due(now_ms) {
            if let Some((check, timeout)) = self.link_checks.get(i) {
                self.spawn_check(i, true, check.clone(), *timeout);
            }
        }
    }

    /// Runs one monitor check as a task; its result comes back as `Done`.
    fn spawn_check(&self, index: usize, node: bool, check: Check, timeout: Duration) {
        let tx = self.tx.clone();
        tokio::task::spawn_local(async move {
            let result = monitor::check(&check, timeout).await;
            let _ = tx
                .send(Done::Monitor {
                    index,
                    node,
                    result,
                })
                .await;
        });
    }

    fn check_resources(&mut self, now_ms: u64, log: &mut Vec<AgentEvent>) {
        for g in 0..self.groups.len() {
            if self.groups.want(g) != Want::Run {
                continue;
            }
            for r in 0..self.resources[g].len() {
                if self.groups.resources(g).get(r) != Some(&ResourceState::Running) {
                    self.check_due_ms[g][r] = 0;
                    continue;
                }
                if self.checking[g][r] {
                    continue;
                }
                let res = self.resources[g][r].clone();
                match res.kind.check_inline() {
                    Some(Health::Fine) => {}
                    Some(Health::Note(text)) => log.push(AgentEvent::ResourceNote {
                        group: res.owner.group.clone(),
                        resource: res.owner.resource.clone(),
                        text,
                    }),
                    Some(Health::Failed(why)) => {
                        self.groups.on_monitor_failure(now_ms, g, r, why, None)
                    }
                    None => {
                        // The first check one interval after it was seen
                        // running, then one interval after each check.
                        let due = &mut self.check_due_ms[g][r];
                        if *due == 0 {
                            *due = now_ms + res.kind.check_interval_ms();
                        }
                        if now_ms < *due {
                            continue;
                        }
                        *due = now_ms + res.kind.check_interval_ms();
                        self.checking[g][r] = true;
                        let tx = self.tx.clone();
                        tokio::task::spawn_local(async move {
                            let result = match run_check(&res).await {
                                Outcome::Running => Ok(()),
                                Outcome::Stopped => Err(("found not running".to_string(), None)),
                                Outcome::Failed(w) => Err((w, None)),
                                Outcome::Barred { bar, why } => Err((why, Some(bar))),
                            };
                            let _ = tx
                                .send(Done::ResourceCheck {
                                    group: g,
                                    resource: r,
                                    result,
                                })
                                .await;
                        });
                    }
                }
            }
        }
    }

    /// Group `g`'s state for reports and status: `running` only once its
    /// monitors have passed since it started ("done" means it answers),
    /// `starting` until then.
    fn reported_state(&self, g: usize) -> GroupState {
        let (state, _) = self.groups.state(g);
        if state == GroupState::Running && !self.monitors.verified(g) {
            return GroupState::Starting;
        }
        state
    }

    fn reports(&self) -> Vec<GroupReport> {
        (0..self.groups.len())
            .map(|g| {
                let (_, since) = self.groups.state(g);
                GroupReport {
                    name: self.names[g].clone(),
                    epoch: 0,
                    active: self.groups.active(g),
                    state: self.reported_state(g),
                    since_unix_ms: self.unix_at_zero_ms + since,
                    failure: self.last_failure[g].clone(),
                    stop_failed: self.groups.stop_failed(g).map(str::to_string),
                }
            })
            .collect()
    }

    /// Group `g`'s monitors as checked here.
    fn monitor_status(&self, g: usize) -> Vec<MonitorStatus> {
        let running = self.groups.state(g).0 == GroupState::Running;
        (0..self.monitors.len())
            .filter_map(|i| {
                let plan = self.monitors.plan(i).filter(|p| p.group == g)?;
                let last = self.monitors.last(i);
                let (text, at) = match (plan.has_check, running, last) {
                    (false, _, _) => (MonitorShown::ByResourceCheck, None),
                    (true, false, _) => (MonitorShown::NotHere, None),
                    (true, true, None) => (MonitorShown::NotYet, None),
                    (true, true, Some(l)) => (
                        match &l.result {
                            Ok(()) => MonitorShown::Ok,
                            Err(why) => MonitorShown::Failed(why.clone()),
                        },
                        Some(self.unix_at_zero_ms + l.at_ms),
                    ),
                };
                Some(MonitorStatus {
                    name: plan.name.clone(),
                    kind: self.monitor_kinds.get(i).copied().unwrap_or("?").into(),
                    interval_ms: plan.interval_ms,
                    last: text,
                    at_unix_ms: at,
                })
            })
            .collect()
    }

    /// This node's groups for status.
    pub fn local_status(&self) -> Vec<LocalGroup> {
        (0..self.groups.len())
            .map(|g| {
                let (_, since) = self.groups.state(g);
                LocalGroup {
                    monitors: self.monitor_status(g),
                    name: self.names[g].clone(),
                    want: self.groups.want(g),
                    state: self.reported_state(g),
                    since_unix_ms: self.unix_at_zero_ms + since,
                    resources: self.resources[g]
                        .iter()
                        .zip(self.groups.resources(g))
                        .map(|(r, s)| ResourceStatus {
                            name: r.owner.resource.clone(),
                            kind: r.kind.kind().into(),
                            state: match s {
                                ResourceState::Unknown => ResourceShown::Unknown,
                                ResourceState::Stopped => ResourceShown::Stopped,
                                ResourceState::Starting => ResourceShown::Starting,
                                ResourceState::Running => ResourceShown::Running,
                                ResourceState::Stopping => ResourceShown::Stopping,
                                ResourceState::Failed(w) | ResourceState::StopFailed(w) => {
                                    ResourceShown::Failed(w.clone())
                                }
                            },
                            detail: r.kind.detail(),
                        })
                        .collect(),
                }
            })
            .collect()
    }
}
