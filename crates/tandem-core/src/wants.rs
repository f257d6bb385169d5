//! What this node wants of each of its groups, and until when it may keep
//! a group that the record moved away.
//!
//! This is the one place that turns the agreed record, this node's lease
//! and the agent's own situation (shutting down, inheriting a previous
//! agent's lease, able to write the guard's lease file) into a [`Want`]
//! per group. The agent's runner and the simulation both call
//! [`Wants::decide`], so the rule the simulation checks is the rule that
//! runs.
//!
//! The rules, in order (the first that applies wins):
//! 1. Shutting down: stop everything, maintenance or not (a clean leave).
//!    Retiring (a configuration change removes the group or changes its
//!    resources): stop it, maintenance or not, before the switch.
//! 2. No lease of its own, but within the lease of the agent this one
//!    replaced: leave what runs as it is (neither start nor stop).
//! 3. The group is in maintenance: leave it.
//! 4. Placed here, lease held, but this node's configuration is not the
//!    committed one: keep what already runs, start nothing new.
//! 5. Placed here and lease held: run it. Anything else: stop it.
//!
//! A group that still runs here while the record places it elsewhere may
//! keep running until [`Member::group_until`]; past that the agent cuts
//! its stop short ([`Decision::cut_short`]), so a group never outlives what
//! the leader waits for before it starts the group elsewhere.

use crate::group::Want;
use crate::member::Member;

/// The agent's own situation, kept across passes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Wants {
    /// A graceful stop was asked for: every group here stops.
    shutting_down: bool,
    /// The previous agent's lease end (this agent's clock), while it lasts
    /// and this agent holds no lease of its own yet.
    inherited_until_ms: Option<u64>,
    /// Groups to stop before this node switches to another configuration
    /// (removed by it, or with other resources).
    retiring: std::collections::BTreeSet<String>,
}

/// One group as this node holds it, for [`Wants::decide`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Held<'a> {
    /// The group's name (as in the record).
    pub name: &'a str,
    /// Whether any of its resources may be running here.
    pub active: bool,
}

/// What one pass decided for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    /// What is wanted of the group here.
    pub want: Want,
    /// Whether the record places the group on this node.
    pub placed_here: bool,
    /// For a group that may still run here although the record places it
    /// elsewhere: until when (this node's clock) it may keep running. None
    /// when the group is placed here, not active, or held under an
    /// inherited lease (the previous agent's guard entry covers it).
    pub leaving_until_ms: Option<u64>,
}

impl Decision {
    /// Whether what is left of a group being moved away must be killed
    /// now: its stop outlasted what this node may keep of it.
    pub fn cut_short(&self, now_ms: u64) -> bool {
        self.leaving_until_ms.is_some_and(|end| now_ms >= end)
    }
}

/// The outcome of one pass over every group.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pass {
    /// Whether this node may run its groups now: a valid lease that the
    /// guard was told of.
    pub lease_ok: bool,
    /// Until when (this node's clock) what may run here of the groups not
    /// being moved away may keep running: the node's lease while it holds
    /// one, else the lease it inherited from the agent it replaced, else
    /// None (not a moment longer). The agent gives the guard this end.
    pub keep_until_ms: Option<u64>,
    /// One decision per group, in the order given.
    pub groups: Vec<Decision>,
}

impl Pass {
    /// Whether what may still run here of group `g` must be killed at
    /// `now_ms`: a group being moved away once its own end passed
    /// ([`Decision::cut_short`], done by the agent), any other once the
    /// node's end passed ([`Pass::keep_until_ms`], done by the guard).
    /// The simulation kills its resources by this same rule.
    pub fn kills(&self, g: usize, now_ms: u64) -> bool {
        let Some(d) = self.groups.get(g) else {
            return false;
        };
        match d.leaving_until_ms {
            Some(end) => now_ms >= end,
            None => self.keep_until_ms.map_or(true, |end| now_ms >= end),
        }
    }
}

impl Wants {
    /// A fresh agent: not shutting down, no inherited lease.
    pub fn new() -> Wants {
        Wants::default()
    }

    /// This agent replaced one whose lease runs until `until_ms` (this
    /// agent's clock): what runs may be kept, not restarted, until then.
    pub fn inherit_lease(&mut self, until_ms: u64) {
        self.inherited_until_ms = Some(until_ms);
    }

    /// A graceful stop: every group here stops (maintenance or not).
    pub fn shut_down(&mut self) {
        self.shutting_down = true;
    }

    /// Groups to stop, whatever else holds, before a configuration switch
    /// (replaces the previous set; empty: none).
    pub fn retire(&mut self, groups: impl IntoIterator<Item = String>) {
        self.retiring = groups.into_iter().collect();
    }

    /// Whether a graceful stop was asked for.
    pub fn shutting_down(&self) -> bool {
        self.shutting_down
    }

    /// The inherited lease's end, while it lasts (None once this agent
    /// holds its own lease or the inherited one is over).
    pub fn inherited_until(&self, now_ms: u64) -> Option<u64> {
        self.inherited_until_ms.filter(|u| *u > now_ms)
    }

    /// Whether this agent took over a previous agent's lease and holds no
    /// lease of its own yet (whether or not the inherited one has ended).
    pub fn on_inherited_lease(&self) -> bool {
        self.inherited_until_ms.is_some()
    }

    /// Our own lease, once held, replaces the inherited one for good.
    fn note_lease(&mut self, lease_ok: bool) {
        if lease_ok {
            self.inherited_until_ms = None;
        }
    }

    /// Whether the inherited lease still covers `now_ms`.
    fn inheriting(&self, now_ms: u64) -> bool {
        self.inherited_until_ms.is_some_and(|u| now_ms < u)
    }

    /// Decides every group's want at `now_ms`. `lease_file_written`: the
    /// guard's lease file was written last time (when it could not be,
    /// the guard would act on a stale end: the lease counts as lost).
    pub fn decide(
        &mut self,
        now_ms: u64,
        member: &Member,
        lease_file_written: bool,
        groups: &[Held<'_>],
    ) -> Pass {
        let lease_ok = member.lease_valid(now_ms) && lease_file_written;
        self.note_lease(lease_ok);
        let config_ok = member.config_committed();
        let me = member.host_name();
        let record = member.agreement().record();
        let decisions = groups
            .iter()
            .map(|g| {
                let facts = Facts {
                    lease_ok,
                    config_ok,
                    placed_here: me.is_some()
                        && record
                            .placements
                            .get(g.name)
                            .and_then(|p| p.node.as_deref())
                            == me,
                    maintenance: record.unmanaged(g.name),
                    moved_in_log: member.moved_in_log(g.name),
                    active: g.active,
                    retiring: self.retiring.contains(g.name),
                };
                self.decide_one(now_ms, facts, || member.group_until(g.name, now_ms))
            })
            .collect();
        let keep_until_ms = if lease_ok {
            member.lease_until(now_ms)
        } else {
            self.inherited_until(now_ms)
        };
        Pass {
            lease_ok,
            keep_until_ms,
            groups: decisions,
        }
    }

    /// One group's decision from its facts; `group_until` is asked only
    /// for a group that may keep running while placed elsewhere.
    fn decide_one(
        &self,
        now_ms: u64,
        facts: Facts,
        group_until: impl FnOnce() -> Option<u64>,
    ) -> Decision {
        let leaving_until_ms = (!facts.placed_here && facts.active && !self.inheriting(now_ms))
            .then(|| group_until().unwrap_or(now_ms));
        Decision {
            want: self.want(facts, now_ms),
            placed_here: facts.placed_here,
            leaving_until_ms,
        }
    }

    /// Rules 1-5 of the module's documentation for one group.
    fn want(&self, f: Facts, now_ms: u64) -> Want {
        if self.shutting_down || f.retiring {
            return Want::Stop;
        }
        if !f.lease_ok && self.inheriting(now_ms) {
            return Want::Leave;
        }
        if f.maintenance {
            return Want::Leave;
        }
        match (f.placed_here && f.lease_ok, f.config_ok, f.active) {
            // Not the committed configuration: start nothing the cluster
            // did not agree on; leave what runs.
            (true, false, true) => Want::Leave,
            (true, false, false) => Want::Stop,
            // A decision in this node's log moves it away: not started
            // here until that decision is committed or dropped.
            (true, true, false) if f.moved_in_log => Want::Stop,
            (true, true, _) => Want::Run,
            (false, _, _) => Want::Stop,
        }
    }
}

/// What one decision depends on, for one group.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Facts {
    /// This node holds a lease the guard knows of.
    lease_ok: bool,
    /// This node runs the committed configuration.
    config_ok: bool,
    /// The record places the group here.
    placed_here: bool,
    /// The group is in maintenance.
    maintenance: bool,
    /// This node's log holds an uncommitted decision that moves the group
    /// away ([`Member::moved_in_log`]): it is not started here meanwhile.
    moved_in_log: bool,
    /// Something of the group may run here.
    active: bool,
    /// The group stops before a configuration switch ([`Wants::retire`]).
    retiring: bool,
}

#[cfg(test)]
mod tests;
