//! One node's agent side, in memory: its group runner ([`Groups`]), what
//! it wants of each group ([`Wants`]) and the resources it starts and
//! stops, which are simply running or not. A pass ([`Host::drive`]) is the
//! agent's runner pass (`tandem_agent::runner::Runner::drive`) with the
//! same core calls in the same order; what the guard and the agent kill is
//! [`Pass::kills`]. The story harness ([`super::Cluster`]) and the seeded
//! simulation (`tests/simulation.rs`) both run their nodes on it, so
//! neither re-implements a rule of the agent.

use crate::config::OnFail;
use crate::group::{Action, ActionKind, Groups, Outcome, ResourceState, Want};
use crate::member::{GroupReport, Member, Request};
use crate::wants::{Held, Pass, Wants};

/// Most runner passes of one drive (each finishes at least one action).
const MAX_PASSES: usize = 16;

/// A stop under way that takes a while (a service shutting down slowly).
#[derive(Debug, Clone)]
struct SlowStop {
    /// When it ends (the caller's global clock).
    ends_at_ms: u64,
    /// The agent generation that asked: a later agent never hears of it.
    asked_by: u64,
    /// The stop.
    action: Action,
}

/// What one pass did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct HostPass {
    /// Each start and stop that took effect, in order: (group, started?).
    pub actions: Vec<(usize, bool)>,
    /// The first group the runner was last told to run, placed here, that
    /// this node may no longer run (its lease is lost): the group and the
    /// lease end the member gives now.
    pub lease_lost: Option<(usize, Option<u64>)>,
    /// The decisions of the pass.
    pub pass: Option<Pass>,
}

/// One node's agent and resources (see the module docs).
#[derive(Debug, Clone)]
pub struct Host {
    /// The runner; None while the agent is down.
    runner: Option<Groups>,
    /// The agent's own situation.
    wants: Wants,
    /// The groups' names, in the runner's order.
    names: Vec<String>,
    /// Resources per group.
    resources: Vec<usize>,
    /// Per group and resource: whether it really runs here.
    alive: Vec<Vec<bool>>,
    /// Per group: whether the runner was last told to run it.
    wanted_run: Vec<bool>,
    /// Stops under way.
    slow_stops: Vec<SlowStop>,
    /// Slow stops that ended, for the runner that asked (told on its next
    /// pass).
    finished: Vec<Action>,
    /// The running agent's generation (counts agent starts).
    generation: u64,
    /// Per group and resource: its `on_fail`, once any was set; then the
    /// runner's failures are also reported to the leader, as the agent
    /// does (off by default: the seeded runs model failures as restarts).
    on_fail: Option<Vec<Vec<OnFail>>>,
}

impl Host {
    /// A node with these groups of `resources` resources each, nothing
    /// running, no agent yet.
    pub fn new(names: &[&str], per_group: usize) -> Host {
        let resources = vec![per_group; names.len()];
        Host {
            names: names.iter().map(|n| n.to_string()).collect(),
            runner: None,
            wants: Wants::new(),
            resources,
            alive: vec![vec![false; per_group]; names.len()],
            wanted_run: vec![false; names.len()],
            slow_stops: Vec::new(),
            finished: Vec::new(),
            generation: 0,
            on_fail: None,
        }
    }

    /// Sets resource `r` of group `g`'s `on_fail` (this agent and every
    /// later one), and from now on reports the runner's failures to the
    /// leader.
    pub fn set_on_fail(&mut self, g: usize, r: usize, policy: OnFail) {
        let all = self.on_fail.get_or_insert_with(|| {
            self.resources
                .iter()
                .map(|&n| vec![OnFail::Restart; n])
                .collect()
        });
        if let Some(p) = all.get_mut(g).and_then(|rs| rs.get_mut(r)) {
            *p = policy;
        }
        if let Some(runner) = self.runner.as_mut() {
            runner.set_on_fail(g, r, policy);
        }
    }

    /// Resource `r` of group `g` dies here (its process crashed); the
    /// agent's next periodic check finds it.
    pub fn resource_dies(&mut self, g: usize, r: usize) {
        if let Some(up) = self.alive.get_mut(g).and_then(|rs| rs.get_mut(r)) {
            *up = false;
        }
    }

    /// A new agent starts (its clock at 0), inheriting the previous
    /// agent's lease until `inherited_until_ms` (its clock) if given: what
    /// runs is kept and probed, not restarted.
    pub fn start_agent(&mut self, inherited_until_ms: Option<u64>) {
        self.generation += 1;
        let mut runner = Groups::new(&self.resources, 0);
        for (g, rs) in self.on_fail.iter().flatten().enumerate() {
            for (r, p) in rs.iter().enumerate() {
                runner.set_on_fail(g, r, *p);
            }
        }
        self.runner = Some(runner);
        self.wants = Wants::new();
        if let Some(u) = inherited_until_ms {
            self.wants.inherit_lease(u);
        }
        self.wanted_run = vec![false; self.resources.len()];
        self.finished.clear();
    }

    /// The agent dies (kill -9): its resources keep running (the guard
    /// acts on its lease file, which the caller models).
    pub fn agent_died(&mut self) {
        self.runner = None;
        self.finished.clear();
    }

    /// The node loses power: agent and resources are gone.
    pub fn power_off(&mut self) {
        self.agent_died();
        self.wants = Wants::new();
        self.slow_stops.clear();
        for g in &mut self.alive {
            g.iter_mut().for_each(|r| *r = false);
        }
    }

    /// The guard stops everything (the dead agent's lease ended).
    pub fn guard_stops_all(&mut self) {
        for g in &mut self.alive {
            g.iter_mut().for_each(|r| *r = false);
        }
    }

    /// Whether anything of group `g` really runs here.
    pub fn runs(&self, g: usize) -> bool {
        self.alive.get(g).is_some_and(|rs| rs.iter().any(|r| *r))
    }

    /// Whether resource `r` of group `g` really runs here.
    pub fn resource_runs(&self, g: usize, r: usize) -> bool {
        self.alive.get(g).and_then(|rs| rs.get(r)).copied() == Some(true)
    }

    /// Whether every resource of group `g` really runs here.
    pub fn runs_whole(&self, g: usize) -> bool {
        self.alive.get(g).is_some_and(|rs| rs.iter().all(|r| *r))
    }

    /// Group `g`'s resources: running or not.
    pub fn alive(&self, g: usize) -> &[bool] {
        self.alive.get(g).map_or(&[], Vec::as_slice)
    }

    /// Stops under way.
    pub fn slow_stops(&self) -> usize {
        self.slow_stops.len()
    }

    /// When the next stop under way ends (the caller's global clock).
    pub fn next_slow_stop_ms(&self) -> Option<u64> {
        self.slow_stops.iter().map(|s| s.ends_at_ms).min()
    }

    /// The agent's runner (None while the agent is down).
    pub fn runner(&self) -> Option<&Groups> {
        self.runner.as_ref()
    }

    /// The agent's wants.
    pub fn wants(&self) -> &Wants {
        &self.wants
    }

    /// Slow stops that end by `now_ms` (global clock) end: the resource
    /// stops, and the agent that asked hears of it on its next pass.
    pub fn end_slow_stops(&mut self, now_ms: u64) {
        let generation = self.generation;
        let has_runner = self.runner.is_some();
        let mut still = Vec::new();
        for s in std::mem::take(&mut self.slow_stops) {
            if s.ends_at_ms > now_ms {
                still.push(s);
                continue;
            }
            if let Some(r) = self
                .alive
                .get_mut(s.action.group)
                .and_then(|g| g.get_mut(s.action.resource))
            {
                *r = false;
            }
            if s.asked_by == generation && has_runner {
                self.finished.push(s.action);
            }
        }
        self.slow_stops = still;
    }

    /// One runner pass at `local_ms` (the agent's clock; `now_ms` is the
    /// caller's global clock, for slow stops): wants from the record and
    /// the lease, what may no longer run killed ([`Pass::kills`]), the
    /// periodic check (a resource the runner thinks runs but that does
    /// not is a failure), then every action, each stop taking the next of
    /// `stop_ms` (0 or none: at once), and the reports to the member.
    /// Nothing when the agent is down.
    pub fn drive(
        &mut self,
        local_ms: u64,
        now_ms: u64,
        member: &mut Member,
        stop_ms: impl IntoIterator<Item = u64>,
    ) -> HostPass {
        let mut out = HostPass::default();
        let names = &self.names;
        let Some(runner) = self.runner.as_mut() else {
            return out;
        };
        for a in std::mem::take(&mut self.finished) {
            runner.on_outcome(local_ms, a, Outcome::Stopped);
        }
        let held: Vec<Held<'_>> = names
            .iter()
            .enumerate()
            .map(|(g, name)| Held {
                name,
                active: runner.active(g),
            })
            .collect();
        let pass = self.wants.decide(local_ms, member, true, &held);
        for g in 0..names.len() {
            if pass.kills(g, local_ms) {
                self.alive[g].iter_mut().for_each(|r| *r = false);
            }
        }
        for (g, d) in pass.groups.iter().enumerate() {
            if self.wanted_run[g] && d.placed_here && !pass.lease_ok && out.lease_lost.is_none() {
                out.lease_lost = Some((g, member.lease_until(local_ms)));
            }
            self.wanted_run[g] = d.want == Want::Run;
            runner.set_want(g, d.want);
        }
        for (g, alive) in self.alive.iter().enumerate() {
            for (r, up) in alive.iter().enumerate() {
                if runner.resources(g).get(r) == Some(&ResourceState::Running) && !up {
                    runner.on_monitor_failure(local_ms, g, r, "found not running".into(), None);
                }
            }
        }
        let mut stop_ms = stop_ms.into_iter();
        for _ in 0..MAX_PASSES {
            let actions = runner.poll(local_ms);
            if actions.is_empty() {
                break;
            }
            for a in actions {
                let real = &mut self.alive[a.group][a.resource];
                let outcome = match a.kind {
                    ActionKind::Probe if *real => Outcome::Running,
                    ActionKind::Probe => Outcome::Stopped,
                    ActionKind::Start => {
                        *real = true;
                        out.actions.push((a.group, true));
                        Outcome::Running
                    }
                    ActionKind::Stop => match stop_ms.next().unwrap_or(0) {
                        0 => {
                            *real = false;
                            out.actions.push((a.group, false));
                            Outcome::Stopped
                        }
                        ms if *real => {
                            self.slow_stops.push(SlowStop {
                                ends_at_ms: now_ms + ms,
                                asked_by: self.generation,
                                action: a,
                            });
                            continue;
                        }
                        _ => Outcome::Stopped,
                    },
                };
                runner.on_outcome(local_ms, a, outcome);
            }
        }
        let failures = runner.take_failures();
        if self.on_fail.is_some() {
            if let Some(node) = member.host_name().map(str::to_string) {
                for f in failures {
                    let then = f.then;
                    member.request(
                        local_ms,
                        Request::Failed {
                            group: names[f.group].clone(),
                            node: node.clone(),
                            reason: f.reason,
                            at_unix_ms: local_ms,
                            move_now: false,
                            everywhere: false,
                            then,
                        },
                    );
                }
            }
        }
        let reports = names
            .iter()
            .enumerate()
            .map(|(g, name)| GroupReport {
                name: name.clone(),
                epoch: 0,
                active: runner.active(g),
                state: runner.state(g).0,
                since_unix_ms: 0,
                failure: None,
                stop_failed: runner.stop_failed(g).map(str::to_string),
            })
            .collect();
        member.set_local(reports, vec![]);
        out.pass = Some(pass);
        out
    }
}
