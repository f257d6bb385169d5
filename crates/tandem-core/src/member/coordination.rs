//! The part of [`Member`] that coordinates groups: per-recipient reports
//! and the leases they carry ([`crate::lease`]), requests to the leader
//! (operator commands, failure reports), fencing triggers, and the
//! leader's placement loop (expired fail counts, [`crate::policy`],
//! [`crate::handover`]). Kept apart from the membership protocol in the
//! parent module; both act on the same state.

use std::collections::{BTreeMap, BTreeSet};

use super::*;
use crate::on_fail::Escalation;

/// Leases, reports, requests and the leader's placement loop.
impl Member {
    /// Tells the member what groups the cluster has (every member, the
    /// witness included, since any voter may lead) and the wall clock at
    /// `now_ms == 0` (for failure times and their expiry).
    pub fn set_groups(&mut self, groups: GroupsSpec, unix_at_zero_ms: u64) {
        self.groups = groups;
        self.fence_listed = self.spec.mode == quorum::Mode::TwoNode
            && self
                .host_name()
                .is_some_and(|me| self.groups.fence_hosts.iter().any(|h| h == me));
        self.unix_at_zero_ms = unix_at_zero_ms;
        self.lead_dirty = true;
    }

    /// A node the configuration gained while running (`tandem node add
    /// NAME --address`, committed through `tandem config apply`'s
    /// machinery): from now on this member sends it heartbeats on the
    /// links they share, hears it, and (leading) replicates the log to it
    /// as a learner. It votes only once a committed change of voters names
    /// it (`tandem node add NAME` once it runs), so the voters in force
    /// stay those of the log. Returns false when it was a member already.
    pub fn add_peer(&mut self, id: NodeId, name: &str, links: Vec<bool>) -> bool {
        if id == self.spec.me || self.spec.peers.iter().any(|p| p.id == id) {
            return false;
        }
        let mut links = links;
        links.resize(self.spec.links, false);
        self.spec.peers.push(PeerSpec {
            id,
            links,
            voter: false,
        });
        self.spec.member_names.push(name.to_string());
        self.detector.add_peer(id, self.spec.links);
        self.agreement.add_known(id);
        self.heartbeat_due_ms = self.now_ms;
        self.lead_dirty = true;
        true
    }

    /// Why node `name` cannot be forgotten now, if it cannot: it votes (in
    /// this member's log, or a change of voters is under way), or the
    /// record places a group on it (`tandem node remove NAME` first).
    pub fn peer_removal_refusal(&self, id: NodeId, name: &str) -> Option<String> {
        if id == self.spec.me {
            return Some(format!("{name} is this node"));
        }
        if self.agreement.voters().contains(&id) || self.agreement.voters_changing() {
            return Some(format!(
                "{name} votes, or a change of voters is under way: `tandem node remove {name}` first"
            ));
        }
        let placed = self
            .agreement
            .record()
            .placements
            .iter()
            .find(|(_, p)| p.node.as_deref() == Some(name));
        placed.map(|(g, _)| {
            format!("group {g} is placed on {name}: `tandem node remove {name}` first")
        })
    }

    /// A node the configuration dropped while running (`tandem node remove
    /// NAME --forget`, or an abandoned addition undone): no longer heard,
    /// sent to, or given the log. Refused, with why, while it votes or
    /// hosts a group ([`Member::peer_removal_refusal`]); Ok(false) when it
    /// was no member.
    pub fn remove_peer(&mut self, id: NodeId, name: &str) -> Result<bool, String> {
        if !self.spec.peers.iter().any(|p| p.id == id) {
            return Ok(false);
        }
        if let Some(why) = self.peer_removal_refusal(id, name) {
            return Err(why);
        }
        if !self.agreement.remove_known(id) {
            return Err(format!("{name} votes: `tandem node remove {name}` first"));
        }
        self.spec.peers.retain(|p| p.id != id);
        self.spec.member_names.retain(|n| n != name);
        self.detector.remove_peer(id);
        self.reports.remove(&id);
        self.stamps.remove(&id);
        self.echoes.remove(&id);
        self.link_stamps.retain(|(p, _), _| *p != id);
        self.rtt.retain(|(p, _), _| *p != id);
        self.lead_dirty = true;
        Ok(true)
    }

    /// This node switched to another configuration in place (`tandem
    /// config apply`): its identity, said to every peer at once.
    pub fn set_config_identity(&mut self, hash: String, sections: Vec<(String, String)>) {
        if self.spec.config_hash == hash {
            return;
        }
        self.spec.config_hash = hash;
        self.spec.config_sections = sections;
        self.heartbeat_due_ms = self.now_ms;
        self.lead_dirty = true;
        self.note_own_digest();
    }

    /// This node has armed a required watchdog that resets it at most
    /// `reset_ms` after its lease ended (None: it has not). Reported to
    /// the leader, which then counts this node fenced once silent that
    /// long past its lease.
    pub fn set_watchdog_armed(&mut self, reset_ms: Option<u64>) {
        self.own_watchdog_reset_ms = reset_ms;
    }

    /// What runs on this node, and which links fail their ping monitor.
    pub fn set_local(&mut self, groups: Vec<GroupReport>, failed_links: Vec<String>) {
        let changed = |a: &[GroupReport], b: &[GroupReport]| {
            a.len() != b.len()
                || a.iter()
                    .zip(b)
                    .any(|(x, y)| x.active != y.active || x.state != y.state)
        };
        // The leader waits on these: send them now, not at the next beat.
        if changed(&self.local_groups, &groups) || self.failed_links != failed_links {
            self.heartbeat_due_ms = self.now_ms;
            self.lead_dirty = true;
        }
        self.leaving
            .retain(|g, _| groups.iter().any(|l| l.name == *g && l.active));
        self.local_groups = groups;
        self.failed_links = failed_links;
    }

    /// Why groups cannot move yet (leader only; empty elsewhere).
    pub fn waiting(&self) -> &BTreeMap<String, String> {
        &self.waiting
    }

    /// The latest report from `peer`, with this member's time of receipt.
    pub fn report_from(&self, peer: NodeId) -> Option<(&Report, u64)> {
        self.reports.get(&peer).map(|r| (&r.report, r.rx_ms))
    }

    pub(super) fn unix_ms(&self, now_ms: u64) -> u64 {
        self.unix_at_zero_ms + now_ms
    }

    /// A report from `from`: with a heartbeat (`beat`), or with its leave.
    pub(super) fn on_report(
        &mut self,
        now_ms: u64,
        from: NodeId,
        incarnation: u64,
        r: Report,
        beat: bool,
    ) {
        // Entries applied since the last look: note the groups leaving
        // before this report's echo may count on the new record.
        self.catch_up_leaving();
        let fresh = self.stamps.get(&from).map_or(true, |s| {
            incarnation > s.0 .0 || (incarnation == s.0 .0 && r.sent_ms > s.0 .1)
        });
        if fresh {
            self.stamps.insert(from, ((incarnation, r.sent_ms), now_ms));
        }
        // A fresh heartbeat stands in for the agreement's empty appends
        // and their replies: contact with the leader and its commit
        // index; for a leader, a follower that follows it (only from
        // agents that count their leader's heartbeats likewise: an older
        // agent needs its empty appends). A late or repeated report, or a
        // leave, is no such evidence.
        if beat && fresh {
            let commit_before = self.agreement.commit_index();
            if r.leader == Some(from) {
                self.agreement
                    .on_leader_beat(now_ms, from, r.term, r.commit);
            }
            self.agreement.on_follower_beat(
                now_ms,
                from,
                r.term,
                r.leader,
                r.commit.0,
                r.beats_count,
            );
            // What that heartbeat committed here is noted as leaving
            // before its echo counts (the lease's proof excludes echoes on
            // a record not yet noted); most heartbeats commit nothing.
            if self.agreement.commit_index() != commit_before {
                self.catch_up_leaving();
            }
        }
        if let (true, Some((index, d))) = (self.agreement.leader() == Some(from), r.record_at) {
            let v = self.record_check.note_leader(index, d);
            self.on_record_verdict(v);
        }
        // Echoes are kept from every configured peer (bounded by the
        // configuration): which of them vote is the log's to say, and it
        // changes ([`Member::change_voters`]).
        let peer = self.spec.peers.iter().any(|p| p.id == from);
        if let (true, Some((inc, echoed))) = (peer, r.echo) {
            if inc == self.incarnation {
                let commit = self.agreement.commit_index();
                self.echoes
                    .entry(from)
                    .or_default()
                    .add(echoed, r.place_index, commit);
            }
        }
        // What the placement loop reads of a report (its stamps and
        // echoes move with every beat and matter only while a group waits).
        let moved = self.reports.get(&from).map_or(true, |old| {
            let o = &old.report;
            o.groups != r.groups
                || o.failed_links != r.failed_links
                || o.term != r.term
                || o.leader != r.leader
                || o.commit != r.commit
        });
        if moved {
            self.lead_dirty = true;
        }
        self.reports.insert(
            from,
            PeerReport {
                report: r,
                rx_ms: now_ms,
            },
        );
    }

    /// The index of the newest `Place` entry in this member's log,
    /// committed or not (what its echoes ask of their recipients, see
    /// [`crate::lease`]). Decisions compacted into the snapshot count by
    /// the index the record keeps for them (the commit index when it was
    /// not kept).
    ///
    /// A member that lost its log (state discarded, or a record found
    /// damaged) asks "never" until it has caught up with a leader: its
    /// log may lack a `Place` it acknowledged before, and an echo asking
    /// less than that would let its recipient's lease outlive the bound
    /// the leader computed from that acknowledgement.
    pub(super) fn place_index(&self) -> u64 {
        if self.log_lost() {
            return never();
        }
        let a = &self.agreement;
        let applied = a
            .record()
            .placements
            .values()
            .map(|p| {
                if p.index == 0 {
                    a.commit_index()
                } else {
                    p.index
                }
            })
            .max()
            .unwrap_or(0);
        // A change of voters counts as a placement does: a node counts
        // this member's echo only once it committed every change this
        // member holds, so its lease never rests on voters it left.
        let pending = (a.commit_index() + 1..=a.last_index())
            .rev()
            .find(|k| {
                a.entry(*k).map_or(true, |e| {
                    matches!(e.cmd, Command::Place { .. } | Command::Voters { .. })
                })
            })
            .unwrap_or(0);
        applied.max(pending).max(a.voters_index())
    }

    pub(super) fn report_for(&self, peer: NodeId) -> Report {
        let record = self.agreement.record();
        let groups = self
            .local_groups
            .iter()
            .map(|g| GroupReport {
                epoch: record.placements.get(&g.name).map_or(0, |p| p.epoch),
                ..g.clone()
            })
            .collect();
        Report {
            sent_ms: self.now_ms,
            term: self.agreement.term(),
            leader: self.agreement.leader(),
            echo: self.stamps.get(&peer).map(|s| s.0),
            // A leader's stop grant, measured from when the echoed stamp
            // arrived here (after the peer sent it): the peer's `stamp +
            // left` never passes this leader's own lease end.
            lease_left_ms: match (
                self.agreement.role() == Role::Leader,
                self.stamps.get(&peer),
            ) {
                (true, Some((_, rx))) => self
                    .leader_lease_until(self.now_ms)
                    .map_or(0, |u| u.saturating_sub(*rx)),
                _ => 0,
            },
            log_index: self.agreement.last_index(),
            place_index: self.place_index(),
            record_at: self.record_check.newest(),
            commit: {
                let c = self.agreement.commit_index();
                (c, self.agreement.term_at(c).unwrap_or(0))
            },
            groups,
            failed_links: self.failed_links.clone(),
            config: self.spec.config_hash.clone(),
            // Sections only while configurations differ somewhere: then
            // every node can say which sections differ.
            config_sections: if self.config_committed()
                && self
                    .reports
                    .values()
                    .all(|r| r.report.config.is_empty() || r.report.config == self.spec.config_hash)
            {
                Vec::new()
            } else {
                self.spec.config_sections.clone()
            },
            key_fp: self.spec.key_fingerprint.clone(),
            beats_count: true,
            link_echo: (0..self.spec.links)
                .filter_map(|l| {
                    let s = self.link_stamps.get(&(peer, l))?;
                    Some(s.echo(u8::try_from(l).ok()?, self.now_ms))
                })
                .collect(),
            watchdog_reset_ms: self.own_watchdog_reset_ms,
            silent_ms: self
                .spec
                .peers
                .iter()
                .map(|p| {
                    let heard = self.reports.get(&p.id).map_or(0, |r| r.rx_ms);
                    (p.id, self.now_ms.saturating_sub(heard))
                })
                .collect(),
        }
    }

    /// When (this leader's clock) every lease `x` could hold on a record
    /// older than the committed entry `index` has ended, or None while it
    /// cannot be bounded yet (see [`crate::lease`]).
    ///
    /// Across a change of voters `x` may count a majority of the voters
    /// before it: while the change is uncommitted, the bound is the later
    /// of the two sets' bounds; once committed, a node that does not hold
    /// it has no lease a `lease_ms` after this member saw it committed
    /// (its echoes from the voters that committed it no longer count), so
    /// the bound is at least that (see [`Member::change_voters`]).
    pub(super) fn lease_end(&self, x: NodeId, index: u64) -> Option<u64> {
        let current = self.lease_end_over(self.agreement.voters(), x, index)?;
        match self.agreement.voters_before_change() {
            Some(before) => Some(current.max(self.lease_end_over(&before, x, index)?)),
            None => Some(current.max(self.voters_moved_ms + self.groups.lease_ms)),
        }
    }

    /// [`Member::lease_end`] for a lease from a majority of `voters`.
    fn lease_end_over(&self, voters: &[NodeId], x: NodeId, index: u64) -> Option<u64> {
        let me = self.spec.me;
        let mut bounds: Vec<Option<u64>> = Vec::new();
        let mut x_votes = false;
        for &v in voters {
            if v == x {
                x_votes = true;
                continue;
            }
            if v == me {
                // This node echoes only what it received from x.
                bounds.push(Some(self.stamps.get(&x).map_or(0, |s| s.1)));
                continue;
            }
            let acked = self.agreement.held_since(v, index);
            let reported = self.reports.get(&v).and_then(|r| {
                if r.report.commit.0 < index {
                    return None;
                }
                let silent = r.report.silent_ms.iter().find(|(id, _)| *id == x)?.1;
                Some(r.rx_ms.saturating_sub(silent))
            });
            bounds.push(match (acked, reported) {
                (Some(a), Some(b)) => Some(a.min(b)),
                (a, b) => a.or(b),
            });
        }
        lease::lease_end_bound(
            x_votes,
            quorum::majority_of(voters.len()),
            &bounds,
            self.groups.lease_ms,
        )
    }

    /// Per group stopped everywhere in the record: when every lease `x`
    /// could hold on a record that still placed it on `x` has ended (only
    /// the groups with a bound so far).
    ///
    /// A node not heard since this member started may arm the watchdog
    /// the cluster requires (this node's own, from the same
    /// configuration): with its agent and guard both killed, only that
    /// reset stops what it runs, so its bounds are that much later (group
    /// simulation with voter changes, seed 12196: a leader that had
    /// restarted took over at the lease bound alone). Only later: such a
    /// node never counts as reset by it (a fence device that lists it is
    /// still waited for), since this member does not know it armed one.
    fn lease_ends(&self, x: NodeId) -> BTreeMap<String, u64> {
        let unheard_wait_ms = if self.reports.contains_key(&x) {
            0
        } else {
            self.own_watchdog_reset_ms.unwrap_or(0)
        };
        let commit = self.agreement.commit_index();
        self.agreement
            .record()
            .placements
            .iter()
            .filter(|(_, p)| p.node.is_none())
            .filter_map(|(g, p)| {
                // Unknown index (a record from before it was kept): the
                // commit index is later, so its bound is later, still safe.
                let index = if p.index == 0 { commit } else { p.index };
                Some((g.clone(), self.lease_end(x, index)? + unheard_wait_ms))
            })
            .collect()
    }

    /// A majority of the voters now (two-node mode: both).
    pub(super) fn majority(&self) -> usize {
        quorum::majority_of(self.agreement.voters().len())
    }

    /// Until when (this member's clock) it may run its groups, if at all.
    pub fn lease_until(&self, now_ms: u64) -> Option<u64> {
        if self.lease_backed && self.fence_backed() {
            return Some(now_ms + self.groups.lease_ms);
        }
        self.normal_lease_until(now_ms)
    }

    /// The lease from a majority of voters' counted echoes, whoever leads
    /// ([`crate::lease`]). Voters confirmed fenced count as "now": they
    /// are off.
    ///
    /// None until this incarnation's record matched its leader's
    /// ([`super::record_check`]): a damaged record is never acted on.
    fn normal_lease_until(&self, now_ms: u64) -> Option<u64> {
        if !self.record_check.verified() {
            return None;
        }
        self.lease_counting_to(now_ms, self.agreement.commit_index())
    }

    /// The lease from the echoes that count once this member has committed
    /// up to `commit`: with `j - 1`, the lease it held on a record older
    /// than entry `j`.
    fn lease_counting_to(&self, now_ms: u64, commit: u64) -> Option<u64> {
        self.lease_from_voters(now_ms, |id| self.echoes.get(&id)?.best(commit))
    }

    /// The lease of a leader in its term: the majority-th newest echo of
    /// its stamps from voters following it in that term. It bounds the
    /// stop grants it gives ([`Member::group_until`]).
    pub(super) fn leader_lease_until(&self, now_ms: u64) -> Option<u64> {
        let term = self.agreement.term();
        self.lease_from_voters(now_ms, |id| {
            let r = &self.reports.get(&id)?.report;
            let (inc, stamp) = r.echo?;
            (r.term == term && r.leader == Some(self.spec.me) && inc == self.incarnation)
                .then_some(stamp)
        })
    }

    /// A lease from one echo per voter (`echo_of`; voters confirmed fenced
    /// count as "now": they are off), this member's own "now" when it votes.
    /// While a change of voters is uncommitted here, the lease needs a
    /// majority of the voters before it and of those after (the shorter
    /// of the two leases): whichever commits, every leader's bound covers it.
    fn lease_from_voters(
        &self,
        now_ms: u64,
        echo_of: impl Fn(NodeId) -> Option<u64>,
    ) -> Option<u64> {
        let over = |voters: &[NodeId]| {
            let echoes: Vec<u64> = voters
                .iter()
                .filter(|v| **v != self.spec.me)
                .filter_map(|v| {
                    if self.fenced.contains(v) {
                        return Some(now_ms);
                    }
                    echo_of(*v)
                })
                .collect();
            // A member that lost its log (and has not caught up) is no
            // vote for its own lease: the log it lost may have held the
            // decision that moved its groups away, committed with its
            // acknowledgement (group simulation, seed 28121).
            lease::lease_until(
                now_ms,
                &echoes,
                voters.contains(&self.spec.me) && !self.log_lost(),
                quorum::majority_of(voters.len()),
                self.groups.lease_ms,
            )
        };
        let current = over(self.agreement.voters())?;
        match self.agreement.voters_before_change() {
            Some(before) => Some(current.min(over(&before)?)),
            None => Some(current),
        }
    }

    /// The latest stop grant from a node that claims to lead (in this
    /// member's term or a later one): the echoed stamp plus the shorter of
    /// `lease_ms` and what that leader said was left of its own lease.
    /// Bounded by that leader's takeover wait ([`lease::takeover_at`]).
    fn grant_until(&self) -> Option<u64> {
        // A leader grants itself its own lease: no later leader starts its
        // groups before that has ended (the election bound), and it waits
        // for its own stop itself.
        let own = if self.agreement.role() == Role::Leader {
            self.leader_lease_until(self.now_ms)
        } else {
            None
        };
        self.reports
            .iter()
            .filter_map(|(id, pr)| {
                let r = &pr.report;
                let (inc, stamp) = r.echo?;
                (r.leader == Some(*id)
                    && r.term >= self.agreement.term()
                    && inc == self.incarnation)
                    .then(|| {
                        lease::holder_lease_until(stamp, r.lease_left_ms, self.groups.lease_ms)
                    })
            })
            .chain(own)
            .max()
    }

    /// Until when (this member's clock) it may keep anything of `group`
    /// running, if at all. Placed here: the node's lease. Placed elsewhere
    /// (stopping it): the lease it held on the record before the decision
    /// that moved it (which the leader's bound covers), or a stop grant of
    /// a leader (which the leader's takeover wait covers), whichever is
    /// later; nothing when neither. A hung stop is killed then, so the
    /// group never outlives what the leader waits for.
    pub fn group_until(&self, group: &str, now_ms: u64) -> Option<u64> {
        let me = self.host_name();
        let placed = self
            .agreement
            .record()
            .placements
            .get(group)
            .and_then(|p| p.node.as_deref());
        if me.is_some() && placed == me {
            return self.lease_until(now_ms);
        }
        if self.lease_backed && self.fence_backed() {
            // Two-node with fencing: the peer fences, it never waits out.
            return self.lease_until(now_ms);
        }
        [self.leaving.get(group).copied(), self.grant_until()]
            .into_iter()
            .flatten()
            .max()
    }

    /// Whether this member's log holds, past its commit index, a decision
    /// that places `group` elsewhere (or nowhere). A leader appended it
    /// once it knew the group stopped here; if it commits, it is taken as
    /// the truth without that check being made again. So a member whose
    /// committed record still places the group here (a restart re-applies
    /// the older committed prefix) must not start it meanwhile: simulation
    /// seed 4891 of the operator-request runs (a leader failed a group
    /// over and crashed before the decision committed; the holder
    /// restarted, started the group from the committed prefix, and the
    /// next leader committed the move: dual-active).
    pub fn moved_in_log(&self, group: &str) -> bool {
        let me = self.host_name();
        let a = &self.agreement;
        (a.commit_index() + 1..=a.last_index()).any(|i| {
            a.entry(i).is_some_and(|e| {
                matches!(&e.cmd, Command::Place { group: g, node, .. }
                    if g == group && node.as_deref() != me)
            })
        })
    }

    /// This member's name among the hosts (None: the witness).
    pub fn host_name(&self) -> Option<&str> {
        self.groups
            .host_ids
            .iter()
            .position(|id| *id == self.spec.me)
            .and_then(|i| self.groups.hosts.get(i))
            .map(String::as_str)
    }

    /// The id of the host called `name` (None: no host has that name).
    pub(super) fn host_id(&self, name: &str) -> Option<NodeId> {
        self.groups
            .hosts
            .iter()
            .position(|h| h == name)
            .and_then(|i| self.groups.host_ids.get(i).copied())
    }

    /// Runs [`Member::note_leaving`] once per commit index reached.
    pub(super) fn catch_up_leaving(&mut self) {
        let commit = self.agreement.commit_index();
        if commit != self.leaving_commit {
            self.leaving_commit = commit;
            self.note_leaving();
        }
    }

    /// After entries were applied: every group that runs here but that the
    /// record no longer places here gets the lease this member held on the
    /// record before that decision (its echoes that counted then), once.
    pub(super) fn note_leaving(&mut self) {
        let now = self.now_ms;
        let Some(me) = self.host_name().map(String::from) else {
            return;
        };
        let record = self.agreement.record();
        let mut leaving = std::mem::take(&mut self.leaving);
        leaving.retain(|g, _| {
            let placed_here = record
                .placements
                .get(g)
                .is_some_and(|p| p.node.as_deref() == Some(me.as_str()));
            let active = self.local_groups.iter().any(|l| l.name == *g && l.active);
            active && !placed_here
        });
        for l in self.local_groups.iter().filter(|l| l.active) {
            let Some(p) = record.placements.get(&l.name) else {
                continue;
            };
            if p.node.as_deref() == Some(me.as_str()) || leaving.contains_key(&l.name) {
                continue;
            }
            // Index unknown (a record from before it was kept): no lease
            // can be shown to predate it; only grants remain.
            let until = if p.index == 0 {
                now
            } else {
                self.lease_counting_to(now, p.index - 1).unwrap_or(now)
            };
            leaving.insert(l.name.clone(), until);
        }
        self.leaving = leaving;
    }

    /// Whether this member may run its groups at `now_ms`: quorate, and
    /// holding a lease.
    pub fn lease_valid(&self, now_ms: u64) -> bool {
        (self.lease_backed && self.fence_backed())
            || (self.view().quorate && self.normal_lease_until(now_ms).is_some_and(|u| now_ms < u))
    }

    /// Called after every input: a fence-backed node that holds a normal
    /// lease keeps it from then on (see [`Member::fence_backed`]). It
    /// must have held one: that is what makes its record current, so
    /// it never starts anything from a stale record (a node back from a
    /// fence has to be granted a lease first).
    pub(super) fn note_lease(&mut self) {
        let now = self.now_ms;
        if !self.lease_backed
            && self.fence_backed()
            && self.view().quorate
            && self.normal_lease_until(now).is_some_and(|u| now < u)
        {
            self.lease_backed = true;
        }
    }

    /// Two-node mode, a fence device lists this node, and it has seen its
    /// peer since it started: the peer can start this node's groups only
    /// after fencing it (powering it off), and the leader never counts on
    /// its lease ending (`NodeView::fence_backed`), so once this node has
    /// held a lease, its right to run its groups no longer depends on
    /// hearing the peer. It keeps them while it fences a silent peer (as
    /// Pacemaker's two-node clusters do) instead of stopping them for as
    /// long as the fence takes, and while a fenced peer comes back.
    pub(super) fn fence_backed(&self) -> bool {
        self.fence_listed && self.two_node() && !self.waiting_for_all()
    }

    /// The shell finished fencing `node` (on this leader): records the
    /// outcome and every attempt in the agreed record.
    pub fn fence_done(
        &mut self,
        now_ms: u64,
        node: &str,
        on: bool,
        ok: bool,
        attempts: Vec<String>,
    ) {
        self.now_ms = now_ms;
        self.lead_dirty = true;
        if !on {
            self.fencing.remove(node);
            if ok {
                self.fenced_at_ms.insert(node.to_string(), now_ms);
                self.fence_retry.remove(node);
                // Two-node quorum: a peer confirmed off counts as its vote.
                let id = self.host_id(node);
                if let (true, Some(id)) = (self.two_node(), id) {
                    if id != self.spec.me && !self.behind(id) {
                        self.set_fenced(now_ms, id, true);
                    }
                }
            } else {
                let last = attempts.last().cloned().unwrap_or_default();
                self.fence_retry
                    .insert(node.to_string(), (now_ms + FENCE_RETRY_MS, last));
                self.lead_due_ms = Some(now_ms + FENCE_RETRY_MS);
            }
        }
        let cmd = Command::FenceLog {
            node: node.to_string(),
            at_unix_ms: self.unix_ms(now_ms),
            action: if on { "on" } else { "off" }.to_string(),
            ok,
            attempts,
        };
        // Not leading (a two-node survivor fences before it can lead, or
        // leadership moved meanwhile): record it once this member leads.
        if self.agreement.propose(now_ms, cmd.clone()).is_err() {
            if self.pending_fence_logs.len() == MAX_PENDING_FENCE_LOGS {
                self.pending_fence_logs.pop_front();
            }
            self.pending_fence_logs.push_back(cmd);
        }
    }

    /// Sends a request to the leader (handled here when this member leads;
    /// queued while no leader is known, the oldest dropped past a limit).
    pub fn request(&mut self, now_ms: u64, request: Request) {
        self.now_ms = now_ms;
        self.request_seq += 1;
        let env = RequestEnvelope {
            id: (self.spec.me, self.incarnation, self.request_seq),
            request,
        };
        if self.queued_requests.len() == MAX_QUEUED_REQUESTS {
            self.queued_requests.pop_front();
        }
        self.queued_requests.push_back(env);
        self.flush_requests();
    }

    pub(super) fn flush_requests(&mut self) {
        let Some(leader) = self.agreement.leader() else {
            return;
        };
        while let Some(env) = self.queued_requests.pop_front() {
            if leader == self.spec.me {
                let now = self.now_ms;
                self.on_request(now, env);
                continue;
            }
            let bytes = match serde_json::to_vec(&env) {
                Ok(b) => b,
                Err(_) => continue,
            };
            // Every shared link, so one lossy link does not lose an
            // operator's command; the leader drops duplicates by id.
            let links: Vec<usize> = self
                .spec
                .peers
                .iter()
                .find(|p| p.id == leader)
                .map(|p| {
                    (0..self.spec.links)
                        .filter(|&l| p.links.get(l).copied().unwrap_or(false))
                        .collect()
                })
                .unwrap_or_default();
            for link in links {
                if let Err(e) = self.transmit(leader, link, Body::Request(bytes.clone())) {
                    self.out.events.push(MemberEvent::SendFailed {
                        to: leader,
                        reason: e.to_string(),
                    });
                }
            }
        }
    }

    pub(super) fn on_request(&mut self, now_ms: u64, env: RequestEnvelope) {
        self.lead_dirty = true;
        if self.seen_requests.contains(&env.id) {
            return;
        }
        if self.agreement.role() != Role::Leader {
            // Not (or no longer) the leader: pass it on if one is known.
            if self.agreement.leader().is_some_and(|l| l != self.spec.me) {
                self.queued_requests.push_back(env);
                self.flush_requests();
            }
            return;
        }
        if self.seen_requests.len() == MAX_SEEN_REQUESTS {
            self.seen_requests.pop_front();
        }
        self.seen_requests.push_back(env.id);
        if let Request::Fence { node, on } = &env.request {
            let item = (node.clone(), *on);
            if !self.out.fence.contains(&item) {
                self.out.fence.push(item);
            }
            return;
        }
        if let Request::Failed { node, .. } = &env.request {
            if Self::escalation(&env.request) == Some(Escalation::Fence)
                && self.groups.fence_hosts.contains(node)
            {
                // `on_fail = fence`: the group moves (below) and starts
                // elsewhere once the fence is confirmed; the node froze it.
                self.fence_for_placement(now_ms, node.clone());
            }
        }
        if let Request::Voter { node, vote } = &env.request {
            // The change itself may have to wait; the standby below not.
            if !self.want_voter(node, *vote) {
                return;
            }
        }
        for cmd in self.commands_for(&env.request) {
            // A refused proposal (too many uncommitted) is lost; the
            // operator's command then times out and says so.
            let _ = self.agreement.propose(now_ms, cmd);
        }
    }

    pub(super) fn commands_for(&self, request: &Request) -> Vec<Command> {
        let record = self.agreement.record();
        match request {
            Request::Move { group, node } => vec![Command::Pin {
                group: group.clone(),
                node: node.clone(),
            }],
            Request::Failover { group } => {
                let current = record.placements.get(group).and_then(|p| p.node.clone());
                let Some(g) = self.groups.groups.iter().find(|g| g.name == *group) else {
                    return vec![];
                };
                let facts = self.node_facts();
                let mut candidates: Vec<&String> = g.preferred.iter().collect();
                candidates.extend(self.groups.hosts.iter());
                let next = candidates.into_iter().find(|n| {
                    Some(*n) != current.as_ref()
                        && facts
                            .iter()
                            .find(|f| f.name == **n)
                            .is_some_and(|f| policy::ineligible_reason(g, f, record).is_none())
                });
                next.map_or_else(Vec::new, |n| {
                    vec![Command::MoveOnce {
                        group: group.clone(),
                        node: n.clone(),
                    }]
                })
            }
            Request::Standby { node, on } => vec![Command::SetIntent {
                target: node.clone(),
                intent: Intent::Standby,
                on: *on,
            }],
            // A node that stops voting hosts nothing (its groups move away
            // while the change waits); one that votes again may host.
            Request::Voter { node, vote } => vec![Command::SetIntent {
                target: node.clone(),
                intent: Intent::Standby,
                on: !*vote,
            }],
            Request::Maintenance { group, on } => vec![Command::SetIntent {
                target: group.clone(),
                intent: Intent::Maintenance,
                on: *on,
            }],
            // Handled before: the shell runs the devices.
            Request::Fence { .. } => vec![],
            Request::Cleanup { group } => {
                // Every node with a count or a recorded failure.
                let nodes: BTreeSet<&String> = record
                    .fail_counts
                    .get(group)
                    .into_iter()
                    .flat_map(|m| m.keys())
                    .chain(
                        record
                            .failures
                            .get(group)
                            .into_iter()
                            .flat_map(|m| m.keys()),
                    )
                    .collect();
                let mut cmds: Vec<Command> = nodes
                    .into_iter()
                    .map(|n| Command::FailCount {
                        group: group.clone(),
                        node: n.clone(),
                        count: 0,
                    })
                    .collect();
                // `on_fail = block` ends here: the group is managed again.
                if record.has_intent(group, Intent::Blocked) {
                    cmds.push(Command::SetIntent {
                        target: group.clone(),
                        intent: Intent::Blocked,
                        on: false,
                    });
                }
                cmds
            }
            // One change at a time; the committed configuration is no change;
            // a change that no majority of voters online could commit is
            // not begun.
            Request::ConfigNext { hash } => {
                let online = self
                    .voter_configs()
                    .iter()
                    .filter(|(_, c)| c.is_some())
                    .count();
                if *hash == record.config_hash
                    || record.config_next.as_ref().is_some_and(|n| n != hash)
                    || online < self.majority()
                {
                    vec![]
                } else {
                    vec![Command::ConfigNext {
                        hash: Some(hash.clone()),
                    }]
                }
            }
            Request::Volume {
                volume,
                expect_version,
                up_to_date,
            } => vec![Command::Volume {
                volume: volume.clone(),
                expect_version: *expect_version,
                up_to_date: up_to_date.clone(),
            }],
            Request::Failed {
                group,
                node,
                reason,
                ..
            } => {
                let then = Self::escalation(request).unwrap_or_default();
                let threshold = self
                    .groups
                    .groups
                    .iter()
                    .find(|g| g.name == *group)
                    .map(|g| g.migration_threshold);
                let next = record.fail_count(group, node).saturating_add(1);
                let count = match (then, threshold) {
                    (Escalation::Move | Escalation::Fence | Escalation::BarEverywhere, Some(t)) => {
                        next.max(t)
                    }
                    (Escalation::Count, _) => next,
                    // Recorded, not counted: the group stays where it is
                    // (ignore, block) or leaves with the node (standby).
                    _ => record.fail_count(group, node),
                };
                let mut cmds = Vec::new();
                if count != record.fail_count(group, node) {
                    cmds.push(Command::FailCount {
                        group: group.clone(),
                        node: node.clone(),
                        count,
                    });
                }
                match then {
                    Escalation::Block => cmds.push(Command::SetIntent {
                        target: group.clone(),
                        intent: Intent::Blocked,
                        on: true,
                    }),
                    Escalation::Standby => cmds.push(Command::SetIntent {
                        target: node.clone(),
                        intent: Intent::Standby,
                        on: true,
                    }),
                    _ => {}
                }
                if let (Escalation::BarEverywhere, Some(t)) = (then, threshold) {
                    // Every other host too: what fails for its
                    // configuration fails wherever it runs, so the group
                    // stops everywhere until `tandem cleanup`.
                    for other in self.groups.hosts.iter().filter(|h| *h != node) {
                        cmds.push(Command::FailCount {
                            group: group.clone(),
                            node: other.clone(),
                            count: record.fail_count(group, other).max(t),
                        });
                    }
                }
                // Stamped with the leader's clock, the one that expires it:
                // the reporting node's clock may be far off (it expired a
                // failure at once when it was a day behind).
                cmds.push(Command::FailedAt {
                    group: group.clone(),
                    node: node.clone(),
                    at_unix_ms: self.unix_ms(self.now_ms),
                    reason: reason.clone(),
                });
                cmds
            }
        }
    }

    /// What a failure report asks of the leader, read from its fields
    /// (an older sender's `move_now`/`everywhere` included); None for any
    /// other request.
    pub(super) fn escalation(request: &Request) -> Option<Escalation> {
        let Request::Failed {
            move_now,
            everywhere,
            then,
            ..
        } = request
        else {
            return None;
        };
        Some(match (then, everywhere, move_now) {
            (Escalation::Count, true, _) => Escalation::BarEverywhere,
            (Escalation::Count, false, true) => Escalation::Move,
            (then, _, _) => *then,
        })
    }

    /// What the leader knows of every hosting node.
    pub(super) fn node_facts(&self) -> Vec<NodeFacts> {
        self.groups
            .hosts
            .iter()
            .zip(&self.groups.host_ids)
            .map(|(h, &id)| {
                if id == self.spec.me {
                    return NodeFacts {
                        name: h.clone(),
                        online: true,
                        config_ok: self.config_committed(),
                        failed_links: self.failed_links.clone(),
                    };
                }
                NodeFacts {
                    name: h.clone(),
                    online: self.detector.node_state(id) == Some(NodeState::Alive)
                        && self.reports.contains_key(&id),
                    // Unknown (no report, or a sender of an older version):
                    // not held against it.
                    config_ok: self.reports.get(&id).map_or(true, |r| {
                        r.report.config.is_empty() || self.config_accepted(&r.report.config)
                    }),
                    failed_links: self
                        .reports
                        .get(&id)
                        .map(|r| r.report.failed_links.clone())
                        .unwrap_or_default(),
                }
            })
            .collect()
    }

    /// What keeps each node that hosts groups from running them after it
    /// went silent, in configuration order.
    pub fn protections(&self) -> Vec<(String, crate::handover::Protection)> {
        self.node_views()
            .into_iter()
            .map(|n| {
                let p = crate::handover::Protection::of(&n);
                (n.name, p)
            })
            .collect()
    }

    pub(super) fn node_views(&self) -> Vec<NodeView> {
        let record = self.agreement.record();
        self.groups
            .hosts
            .iter()
            .zip(&self.groups.host_ids)
            .map(|(h, &id)| {
                let (groups, last): (&[GroupReport], Option<u64>) = if id == self.spec.me {
                    (&self.local_groups, Some(self.now_ms))
                } else {
                    match self.reports.get(&id) {
                        Some(r) => (&r.report.groups, Some(r.rx_ms)),
                        None => (&[], None),
                    }
                };
                let silent =
                    id != self.spec.me && self.detector.node_state(id) != Some(NodeState::Alive);
                let fenced = self
                    .fenced_at_ms
                    .get(h)
                    .is_some_and(|f| last.map_or(true, |l| *f > l));
                let fence_note = if self.fencing.contains(h) {
                    Some("fencing in progress".to_string())
                } else {
                    self.fence_retry.get(h).map(|(at, why)| {
                        format!(
                            "fencing failed, retry in {} ms: {why}",
                            at.saturating_sub(self.now_ms)
                        )
                    })
                };
                NodeView {
                    name: h.clone(),
                    last_report_ms: last,
                    lease_end_ms: if id == self.spec.me {
                        BTreeMap::new()
                    } else {
                        self.lease_ends(id)
                    },
                    fence_required: self.groups.fence_hosts.contains(h),
                    fence_backed: self.two_node() && self.groups.fence_hosts.contains(h),
                    silent,
                    reports_committed: !groups.is_empty()
                        && if id == self.spec.me {
                            self.spec.config_hash == record.config_hash
                        } else {
                            self.reports
                                .get(&id)
                                .is_some_and(|r| r.report.config == record.config_hash)
                        },
                    left_stopped: silent
                        && self.detector.node_state(id) == Some(NodeState::Left)
                        && self.left_clean.get(&id).copied() == self.detector.incarnation(id),
                    fenced,
                    watchdog_reset_ms: if id == self.spec.me {
                        self.own_watchdog_reset_ms
                    } else {
                        self.reports
                            .get(&id)
                            .and_then(|r| r.report.watchdog_reset_ms)
                    },
                    fence_note,
                    active: groups
                        .iter()
                        .filter(|g| g.active)
                        .map(|g| g.name.clone())
                        .collect(),
                    stop_failed: groups
                        .iter()
                        .filter(|g| g.active)
                        .filter_map(|g| Some((g.name.clone(), g.stop_failed.clone()?)))
                        .collect(),
                    seen: groups
                        .iter()
                        .map(|g| {
                            // Our own groups see our own record.
                            let e = if id == self.spec.me {
                                record.placements.get(&g.name).map_or(0, |p| p.epoch)
                            } else {
                                g.epoch
                            };
                            (g.name.clone(), e)
                        })
                        .collect(),
                }
            })
            .collect()
    }

    /// Asks the shell to fence `node` so that a group can move or a stray
    /// ends, unless a fence of it is under way or waits for its retry.
    fn fence_for_placement(&mut self, now: u64, node: String) {
        let retry = self.fence_retry.get(&node).map(|r| r.0);
        if self.fencing.contains(&node) || retry.is_some_and(|r| now < r) {
            return;
        }
        self.fencing.insert(node.clone());
        self.out.fence.push((node, false));
    }

    /// The leader acts on what the reports say runs: a heard node that
    /// still runs a group its applied placement puts elsewhere, past the
    /// group's stop bound, is fenced where a device lists it; either way
    /// the group's status says so until it stops.
    fn watch_strays(&mut self, now: u64) {
        // A node on another configuration may have other stop limits: it
        // is shown, never fenced, for a stray.
        let committed = self.agreement.record().config_hash.clone();
        let views = self.node_views();
        let other_config: Vec<String> = self
            .groups
            .hosts
            .iter()
            .zip(&self.groups.host_ids)
            .filter(|(_, id)| {
                self.reports
                    .get(id)
                    .is_some_and(|r| !r.report.config.is_empty() && r.report.config != committed)
            })
            .map(|(h, _)| h.clone())
            .collect();
        // A new term starts every bound afresh.
        if self.strays_term != self.agreement.term() {
            self.strays.clear();
            self.strays_term = self.agreement.term();
        }
        let my_name = self.host_name().map(String::from);
        let found: Vec<handover::Stray> = handover::strays(self.agreement.record(), &views)
            .into_iter()
            .filter(|s| Some(&s.node) != my_name.as_ref())
            .collect();
        let bounds: BTreeMap<&str, u64> = self
            .groups
            .groups
            .iter()
            .enumerate()
            .map(|(i, g)| {
                (
                    g.name.as_str(),
                    self.groups
                        .stop_bound_ms
                        .get(i)
                        .copied()
                        .unwrap_or(super::DEFAULT_STOP_BOUND_MS),
                )
            })
            .collect();
        let deadtime = self.spec.timing.deadtime_ms;
        let verdict = self.strays.update(
            now,
            found,
            |g| {
                bounds
                    .get(g)
                    .copied()
                    .unwrap_or(super::DEFAULT_STOP_BOUND_MS)
                    .saturating_add(deadtime)
            },
            &views,
            &other_config,
        );
        for (g, note) in verdict.notes {
            self.waiting.insert(g, note);
        }
        if let Some(due) = verdict.due_ms {
            self.lead_due_ms = Some(self.lead_due_ms.map_or(due, |d| d.min(due)));
        }
        for node in verdict.fence {
            self.fence_for_placement(now, node);
        }
    }

    /// The leader's placement loop: one safe step toward the policy's
    /// targets, once everything proposed before has committed.
    pub(super) fn lead(&mut self) {
        self.lead_dirty = false;
        self.last_lead_ms = self.now_ms;
        self.lead_config();
        self.lead_voters();
        if self.agreement.role() != Role::Leader
            || self.groups.groups.is_empty()
            || !self.view().quorate
            || self.agreement.last_index() != self.agreement.commit_index()
            || self.agreement.record().config_hash != self.spec.config_hash
            // A configuration change under way: nothing moves until every
            // node runs the new one (or its bound passes).
            || self.agreement.record().config_next.is_some()
        {
            self.waiting.clear();
            self.lead_due_ms = None;
            // Sightings last while this member leads in this term (a
            // proposal in flight only pauses them).
            if self.agreement.role() != Role::Leader {
                self.strays.clear();
            }
            return;
        }
        let now = self.now_ms;
        while let Some(cmd) = self.pending_fence_logs.pop_front() {
            let _ = self.agreement.propose(now, cmd);
        }
        // Expired failures first: they change eligibility; then one-time
        // moves whose node can no longer take the group (they would linger
        // and pull it there later, as a hidden pin).
        let mut cmds = self.expired_failures(now);
        cmds.extend(self.stale_moves());
        if cmds.is_empty() {
            let steps = self.plan(now);
            self.waiting = steps.waiting;
            self.lead_due_ms = steps.retry_at_ms;
            cmds = steps.propose;
            for node in steps.fence {
                self.fence_for_placement(now, node);
            }
        }
        self.watch_strays(now);
        for cmd in cmds {
            let _ = self.agreement.propose(now, cmd);
        }
    }

    /// Whether this member runs the committed configuration (or none is
    /// committed yet). A member that does not starts nothing new.
    pub fn config_committed(&self) -> bool {
        self.config_accepted(&self.spec.config_hash)
    }

    /// Whether a node running the configuration of hash `hash` runs the
    /// cluster's: none is committed yet, it is the committed one, or it is
    /// the one a change under way switches to.
    pub fn config_accepted(&self, hash: &str) -> bool {
        let r = self.agreement.record();
        r.config_hash.is_empty() || r.config_hash == hash || r.config_next.as_deref() == Some(hash)
    }

    /// Each voter's configuration identity as this member knows it (its
    /// own included; None: no report yet, or not alive now: a dead node's
    /// last word must not commit a configuration nor attract a hand-off).
    pub fn voter_configs(&self) -> Vec<(NodeId, Option<&str>)> {
        self.agreement
            .voters()
            .iter()
            .map(|&id| {
                if id == self.spec.me {
                    return (id, Some(self.spec.config_hash.as_str()));
                }
                if self.detector.node_state(id) != Some(NodeState::Alive) {
                    return (id, None);
                }
                (
                    id,
                    self.reports
                        .get(&id)
                        .map(|r| r.report.config.as_str())
                        .filter(|c| !c.is_empty()),
                )
            })
            .collect()
    }

    /// A leader may commit its configuration when none is committed yet,
    /// or when a majority of voters run it: a node restarted with another
    /// file never imposes it on the others; a change rolled out to a
    /// majority takes effect.
    pub(super) fn may_commit_config(&self) -> bool {
        if self.agreement.record().config_hash.is_empty() {
            return true;
        }
        let same = self
            .voter_configs()
            .iter()
            .filter(|(_, c)| *c == Some(self.spec.config_hash.as_str()))
            .count();
        same >= self.majority()
    }

    /// The leader's configuration rule, once per placement pass: commit its
    /// configuration when a majority runs it; when its own is not the
    /// committed one and cannot become it, or a majority runs another one,
    /// hand leadership over (at most once a deadtime) so that a node whose
    /// configuration can be committed leads.
    fn lead_config(&mut self) {
        if self.agreement.role() != Role::Leader {
            return;
        }
        if let Some(next) = self.agreement.record().config_next.clone() {
            self.lead_config_change(next);
            return;
        }
        self.config_next_since = None;
        let mine = self.spec.config_hash.clone();
        let committed = self.agreement.record().config_hash.clone();
        if committed != mine && self.may_commit_config() {
            if self.agreement.last_index() == self.agreement.commit_index() {
                let cmd = Command::Config {
                    hash: mine,
                    members: self.spec.member_names.clone(),
                };
                let _ = self.agreement.propose(self.now_ms, cmd);
            }
            return;
        }
        let configs = self.voter_configs();
        let mut other: BTreeMap<&str, usize> = BTreeMap::new();
        for c in configs.iter().filter_map(|(_, c)| *c) {
            if c != mine {
                *other.entry(c).or_default() += 1;
            }
        }
        // The configuration that should lead: one a majority runs, else the
        // committed one when this leader does not run it.
        let target = other
            .iter()
            .find(|(_, n)| **n >= self.majority())
            .map(|(c, _)| c.to_string())
            .or_else(|| (committed != mine).then_some(committed));
        let Some(target) = target else {
            return;
        };
        let candidates: Vec<NodeId> = configs
            .iter()
            .filter(|(id, c)| *id != self.spec.me && *c == Some(target.as_str()))
            .map(|(id, _)| *id)
            .collect();
        let recently = self
            .config_handoff_ms
            .is_some_and(|t| self.now_ms < t + self.spec.timing.deadtime_ms);
        if !candidates.is_empty() && !recently {
            self.config_handoff_ms = Some(self.now_ms);
            self.agreement.hand_off_to(&candidates);
        }
    }

    /// The leader's rule while a configuration change is under way (see
    /// [`Record::config_next`](crate::agreement::Record::config_next)):
    ///
    /// - a leader running the new configuration commits it once every
    ///   hosting node it hears runs it; past the change's bound
    ///   ([`Member::config_switch_bound_ms`]), once a majority of voters
    ///   runs it and no node still runs a group the new configuration
    ///   removed (that node's groups then move away as on any node that
    ///   runs another configuration);
    /// - a leader that has not switched (the witness, which never does, or
    ///   a node whose switch fails) hands leadership to a voter that has,
    ///   once a majority has, or at the bound;
    /// - past the bound without a majority, the change is abandoned (the
    ///   nodes that switched switch back: [`crate::config::change::is_stale`]).
    fn lead_config_change(&mut self, next: String) {
        let now = self.now_ms;
        let since = match &self.config_next_since {
            Some((h, t)) if *h == next => *t,
            _ => {
                self.config_next_since = Some((next.clone(), now));
                now
            }
        };
        // One proposal at a time (the placement pass runs at least once a
        // heartbeat, so the bound is seen when it passes).
        if self.agreement.last_index() != self.agreement.commit_index() {
            return;
        }
        let mine = self.spec.config_hash.clone();
        let alive: Vec<NodeId> = self
            .spec
            .peers
            .iter()
            .filter(|p| self.detector.node_state(p.id) == Some(NodeState::Alive))
            .map(|p| p.id)
            .collect();
        // The witness hosts nothing and never switches: only hosts count.
        let hosts_on_next = alive
            .iter()
            .filter(|id| self.groups.host_ids.contains(id))
            .all(|id| {
                self.reports
                    .get(id)
                    .is_some_and(|r| r.report.config == next)
            });
        let voters_on_next: Vec<NodeId> = self
            .voter_configs()
            .iter()
            .filter(|(_, c)| *c == Some(next.as_str()))
            .map(|(id, _)| *id)
            .collect();
        let majority = voters_on_next.len() >= self.majority();
        let bound_passed = now >= since + self.config_switch_bound_ms();
        if mine == next {
            // A group the new configuration removed, still running on a
            // node that has not switched: committing now would let a group
            // that replaces it (a rename) start beside it.
            let known: BTreeSet<&str> =
                self.groups.groups.iter().map(|g| g.name.as_str()).collect();
            let removed_running = alive.iter().any(|id| {
                self.reports.get(id).is_some_and(|r| {
                    r.report.config != next
                        && r.report
                            .groups
                            .iter()
                            .any(|g| g.active && !known.contains(g.name.as_str()))
                })
            });
            // Past the bound, a node that has not switched and still runs
            // a removed group abandons the change rather than freeze
            // placements until it stops (the nodes that switched switch
            // back).
            let cmd = if hosts_on_next || (bound_passed && majority && !removed_running) {
                Some(Command::Config {
                    hash: next,
                    members: self.spec.member_names.clone(),
                })
            } else if bound_passed {
                Some(Command::ConfigNext { hash: None })
            } else {
                None
            };
            if let Some(cmd) = cmd {
                let _ = self.agreement.propose(now, cmd);
            }
            return;
        }
        if bound_passed && !majority {
            let _ = self
                .agreement
                .propose(now, Command::ConfigNext { hash: None });
            return;
        }
        let hosting = self.groups.host_ids.contains(&self.spec.me);
        let waited = now >= since + self.spec.timing.deadtime_ms * HAND_OFF_AFTER_DEADTIMES;
        let recently = self
            .config_handoff_ms
            .is_some_and(|t| now < t + self.spec.timing.deadtime_ms);
        let candidates: Vec<NodeId> = voters_on_next
            .into_iter()
            .filter(|id| *id != self.spec.me)
            .collect();
        if majority && (!hosting || waited || bound_passed) && !candidates.is_empty() && !recently {
            self.config_handoff_ms = Some(now);
            self.agreement.hand_off_to(&candidates);
        }
    }

    /// How long a configuration change may take before the leader acts
    /// without the nodes that did not switch: [`CONFIG_SWITCH_BOUND_MS`],
    /// or twice the longest stop bound of a group (a switch stops the
    /// groups it restarts first).
    pub fn config_switch_bound_ms(&self) -> u64 {
        let stops = self.groups.stop_bound_ms.iter().copied().max().unwrap_or(0);
        CONFIG_SWITCH_BOUND_MS.max(stops.saturating_mul(2))
    }

    /// What `peer` last said of its configuration (sections only while
    /// configurations differ).
    pub fn peer_config(&self, peer: NodeId) -> Option<PeerConfig<'_>> {
        self.reports.get(&peer).map(|r| PeerConfig {
            identity: r.report.config.as_str(),
            sections: r.report.config_sections.as_slice(),
            key_fingerprint: r.report.key_fp.as_str(),
        })
    }

    /// Peers whose packets this member cannot authenticate (another
    /// cluster key): (peer, packets, this member's time of the latest).
    ///
    /// The claimed sender is unproven: anyone on the network can put a
    /// peer's id in a forged packet. Only a peer that is not heard with
    /// authentic packets is named (with another key it never is); forgeries
    /// in the name of a live peer are counted as `bad_mac` only.
    pub fn unauthenticated_peers(&self) -> Vec<(NodeId, u64, u64)> {
        self.bad_mac_from
            .iter()
            .filter(|(id, _)| self.detector.node_state(**id) != Some(NodeState::Alive))
            .map(|(id, (n, at))| (*id, *n, *at))
            .collect()
    }

    /// Clears every one-time move whose node cannot host its group now.
    pub(super) fn stale_moves(&self) -> Vec<Command> {
        let record = self.agreement.record();
        let facts = self.node_facts();
        record
            .moves
            .iter()
            .filter(|(g, to)| {
                let policy = self.groups.groups.iter().find(|p| p.name == **g);
                let fact = facts.iter().find(|f| f.name == **to);
                match (policy, fact) {
                    (Some(p), Some(f)) => policy::ineligible_reason(p, f, record).is_some(),
                    _ => true,
                }
            })
            .map(|(g, _)| Command::Pin {
                group: g.clone(),
                node: None,
            })
            .collect()
    }

    /// `FailCount 0` for every failure older than its group's expiry.
    pub(super) fn expired_failures(&self, now_ms: u64) -> Vec<Command> {
        let record = self.agreement.record();
        let unix = self.unix_ms(now_ms);
        let mut cmds = Vec::new();
        for (gi, g) in self.groups.groups.iter().enumerate() {
            let expiry = self
                .groups
                .failure_expiry_ms
                .get(gi)
                .copied()
                .unwrap_or(u64::MAX);
            for (node, (at, _)) in record.failures.get(&g.name).into_iter().flatten() {
                if unix.saturating_sub(*at) >= expiry {
                    cmds.push(Command::FailCount {
                        group: g.name.clone(),
                        node: node.clone(),
                        count: 0,
                    });
                }
            }
        }
        cmds
    }

    /// The policy's targets and the handover's next steps toward them.
    pub(super) fn plan(&self, now_ms: u64) -> handover::Steps {
        let record = self.agreement.record();
        let facts = self.node_facts();
        let targets: BTreeMap<String, Target> =
            policy::targets(&self.groups.groups, &facts, record);
        let views = self.node_views();
        let reasons = policy::reasons(&self.groups.groups, &facts, record, &targets);
        let removed: Vec<String> = record
            .placements
            .keys()
            .filter(|g| !self.groups.groups.iter().any(|x| x.name == **g))
            .cloned()
            .collect();
        let mut steps = handover::steps(&handover::HandoverInput {
            now_ms,
            leader_since_ms: self.leader_since_ms,
            lease_ms: self.groups.lease_ms,
            margin_ms: lease::takeover_margin_ms(
                self.spec.timing.heartbeat_ms,
                self.groups.lease_ms,
            ),
            record,
            targets: &targets,
            nodes: &views,
            removed: &removed,
        });
        // Every placement says why, in the words every node will log.
        for cmd in &mut steps.propose {
            if let Command::Place { group, reason, .. } = cmd {
                if let Some(r) = reasons.get(group) {
                    *reason = Some(r.clone());
                }
            }
        }
        steps
    }

    /// Whether the peer reported committing an entry this node's log lacks
    /// (or holds with another term). In two-node mode such a node neither
    /// fences its peer nor counts a fenced peer's vote: leading alone, it
    /// would overwrite what the peer committed (a node back from a fence
    /// that never caught up, then lost its peer again). It waits for the
    /// peer instead; the peer, if alive, fences it.
    pub(super) fn behind(&self, peer: NodeId) -> bool {
        let Some(r) = self.reports.get(&peer) else {
            return false;
        };
        let (index, term) = r.report.commit;
        // Below our snapshot: committed here as well (only committed
        // entries are compacted).
        index > 0
            && index >= self.agreement.durable().snapshot.last_index
            && self.agreement.term_at(index) != Some(term)
    }

    /// Two-node mode: a node that lost its peer has no quorum until it has
    /// fenced it, so it fences it (through the shell, [`MemberOutput::fence`]).
    /// Both sides of a partition race; a `delay_ms` on the device that
    /// fences the preferred node lets that node win. Never while waiting
    /// for all (a node back from being fenced must not fence the survivor:
    /// no fence loops), and only a peer that some device lists.
    pub(super) fn two_node_fence(&mut self, now_ms: u64) {
        if !self.two_node() || self.waiting_for_all() {
            return;
        }
        let peers: Vec<(String, NodeId)> = self
            .groups
            .hosts
            .iter()
            .cloned()
            .zip(self.groups.host_ids.iter().copied())
            .filter(|(_, id)| *id != self.spec.me)
            .collect();
        for (name, id) in peers {
            let dead = self.detector.node_state(id) == Some(NodeState::Dead);
            let retry = self.fence_retry.get(&name).map(|r| r.0);
            if !dead
                || self.behind(id)
                || self.fenced.contains(&id)
                || !self.groups.fence_hosts.contains(&name)
                || self.fencing.contains(&name)
                || retry.is_some_and(|r| now_ms < r)
            {
                continue;
            }
            self.fencing.insert(name.clone());
            self.out.fence.push((name, false));
        }
    }
}
