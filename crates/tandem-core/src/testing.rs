//! An in-memory cluster for tests that read like stories, in the manner of
//! quinn-proto's `Pair`: N members joined by a simulated network, simulated
//! time, and on every node the agent's own group runner (the real
//! [`crate::wants`] and [`crate::group`] state machines) over resources
//! that are simply "running or not". Nothing here is random: a story runs
//! the same way every time.
//!
//! ```
//! use tandem_core::testing::Cluster;
//! let mut c = Cluster::new(3, &["web"]);
//! c.run_for(5_000);
//! let n = c.placed_on("web").expect("placed");
//! assert_eq!(c.running_on("web"), vec![n]);
//! ```
//!
//! Every start and stop is logged with its time ([`Cluster::actions_on`]),
//! and dual-active is checked after every runner pass
//! ([`Cluster::dual_active`]), so a story sees what happens between its
//! own looks.
//!
//! Each node runs on a [`Host`]: the agent's runner pass with the same
//! core calls as the agent. The seeded fault campaign
//! (`tests/simulation.rs`) runs its nodes on the same [`Host`], adding
//! the faults and invariants a story does not need (freezes, slow stops,
//! random schedules). A story may give every node a fence device
//! ([`Cluster::with_fencing`]): a fence powers its target off after
//! [`FENCE_MS`] and is confirmed to the member that asked.
//!
//! Compiled for this crate's own tests and, for others, behind the
//! `testing` feature.

use std::cmp::Reverse;
use std::collections::BinaryHeap;

use crate::agreement::{Record, Role};
use crate::config::{OnFail, Timing};
use crate::group::ResourceState;
use crate::member::{GroupsSpec, Member, MemberEvent, MemberSpec, PeerSpec, Persisted, Request};
use crate::policy::{Failback, GroupPolicy};
use crate::quorum::Mode;
use crate::wire::{ClusterId, NodeId};

/// The timing of every story: 100 ms heartbeats, a node dead after 1 s.
pub const TIMING: Timing = Timing {
    heartbeat_ms: 100,
    deadtime_ms: 1_000,
    warntime_ms: 500,
    startup_wait_ms: 2_000,
};

mod host;
pub use host::{Host, HostPass};

/// Delay of every datagram on the simulated network.
const DELAY_MS: u64 = 1;

/// How long a fence takes in a story with fencing.
pub const FENCE_MS: u64 = 200;

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Datagram {
    at_ms: u64,
    seq: u64,
    from: usize,
    to: usize,
    link: usize,
    bytes: Vec<u8>,
}

struct Node {
    spec: MemberSpec,
    member: Option<Member>,
    persisted: Persisted,
    /// Global time at which the running agent started.
    start_ms: u64,
    /// The agent's runner and the (one) resource of each group.
    host: Host,
    /// Every link of the node is cut.
    cut: bool,
}

/// A simulated cluster (see the module docs).
pub struct Cluster {
    now_ms: u64,
    groups: Vec<String>,
    nodes: Vec<Node>,
    ids: Vec<NodeId>,
    net: BinaryHeap<Reverse<Datagram>>,
    seq: u64,
    /// Every start and stop run: (time, node, group, start?).
    actions: Vec<(u64, usize, usize, bool)>,
    /// Every moment a group ran on two nodes: (time, group, nodes).
    dual_active: Vec<(u64, String, Vec<usize>)>,
    /// Every node is listed by a fence device.
    fencing: bool,
    /// Fences under way: (ends at, fencer, target).
    fences: Vec<(u64, usize, usize)>,
    /// Fences done: (time, target).
    fenced: Vec<(u64, usize)>,
    /// Every [`MemberEvent::VoterChange`]: (time, node that said it, event).
    voter_events: Vec<(u64, usize, MemberEvent)>,
}

impl Cluster {
    /// `n` voting nodes (`n1`...), two links, majority quorum, and these
    /// groups, each with one resource, preferring `n1`, `n2`, ... in order,
    /// failback manual. Every agent starts at time 0.
    pub fn new(n: usize, groups: &[&str]) -> Cluster {
        Cluster::build(n, groups, false)
    }

    /// As [`Cluster::new`], with a fence device listing every node.
    pub fn with_fencing(n: usize, groups: &[&str]) -> Cluster {
        Cluster::build(n, groups, true)
    }

    /// One node standing alone in two-node mode (`two_node = true`, wait
    /// for all), a fence device listing every node: the stand-alone node
    /// that [`Cluster::add_node`] makes a pair.
    pub fn alone_in_two_node_mode(groups: &[&str]) -> Cluster {
        let mut c = Cluster::build(0, groups, true);
        c.nodes.push(Node {
            spec: MemberSpec {
                cluster: ClusterId(7),
                me: NodeId(100),
                voter: true,
                peers: vec![],
                links: 2,
                mode: Mode::TwoNode,
                wait_for_all: true,
                timing: TIMING,
                keys: vec![[3u8; 32]],
                config_hash: "story".into(),
                config_sections: vec![],
                key_fingerprint: "fp".into(),
                member_names: vec!["n1".into()],
            },
            member: None,
            persisted: Persisted::default(),
            start_ms: 0,
            host: Host::new(groups, 1),
            cut: false,
        });
        c.ids.push(NodeId(100));
        c.start_agent(0, None);
        c
    }

    fn build(n: usize, groups: &[&str], fencing: bool) -> Cluster {
        let ids: Vec<NodeId> = (0..n).map(|i| NodeId(100 + i as u64)).collect();
        let names: Vec<String> = (0..n).map(|i| format!("n{}", i + 1)).collect();
        let nodes = (0..n)
            .map(|me| Node {
                spec: MemberSpec {
                    cluster: ClusterId(7),
                    me: ids[me],
                    voter: true,
                    peers: (0..n)
                        .filter(|&i| i != me)
                        .map(|i| PeerSpec {
                            id: ids[i],
                            links: vec![true, true],
                            voter: true,
                        })
                        .collect(),
                    links: 2,
                    mode: Mode::Majority { voters: n },
                    wait_for_all: false,
                    timing: TIMING,
                    keys: vec![[3u8; 32]],
                    config_hash: "story".into(),
                    config_sections: vec![],
                    key_fingerprint: "fp".into(),
                    member_names: names.clone(),
                },
                member: None,
                persisted: Persisted::default(),
                start_ms: 0,
                host: Host::new(groups, 1),
                cut: false,
            })
            .collect();
        let mut c = Cluster {
            now_ms: 0,
            groups: groups.iter().map(|g| g.to_string()).collect(),
            nodes,
            ids,
            net: BinaryHeap::new(),
            seq: 0,
            actions: Vec::new(),
            dual_active: Vec::new(),
            fencing,
            fences: Vec::new(),
            fenced: Vec::new(),
            voter_events: Vec::new(),
        };
        for i in 0..n {
            c.start_agent(i, None);
        }
        c
    }

    fn groups_spec(&self) -> GroupsSpec {
        let hosts: Vec<String> = (0..self.nodes.len())
            .map(|i| format!("n{}", i + 1))
            .collect();
        let fence_all = hosts.clone();
        GroupsSpec {
            groups: self
                .groups
                .iter()
                .map(|name| GroupPolicy {
                    name: name.clone(),
                    preferred: hosts.clone(),
                    failback: Failback::Manual,
                    migration_threshold: 3,
                    needs_links: vec![],
                    confined_to: None,
                })
                .collect(),
            failure_expiry_ms: vec![600_000; self.groups.len()],
            host_ids: self.ids.clone(),
            hosts,
            lease_ms: TIMING.deadtime_ms,
            fence_hosts: if self.fencing { fence_all } else { vec![] },
            stop_bound_ms: vec![1_000; self.groups.len()],
        }
    }

    /// Starts node `i`'s agent, inheriting a previous agent's lease that
    /// ends at `inherited_until_ms` (global time), if any.
    fn start_agent(&mut self, i: usize, inherited_until_ms: Option<u64>) {
        let spec = self.groups_spec();
        let now = self.now_ms;
        let node = &mut self.nodes[i];
        let incarnation = node.persisted.incarnation + 1;
        let mut m = Member::new(
            node.spec.clone(),
            incarnation,
            node.persisted.clone(),
            0,
            // Well mixed: members' election timers must differ.
            0x9E37_79B9_7F4A_7C15_u64.wrapping_mul(i as u64 + 1) ^ (now << 20),
        );
        m.set_groups(spec, 0);
        node.member = Some(m);
        node.start_ms = now;
        node.host
            .start_agent(inherited_until_ms.filter(|u| *u > now).map(|u| u - now));
        self.flush(i);
    }

    /// A node that was in no configuration joins (`tandem node add NAME
    /// --address`, then `tandem agent --join`): every running member adds
    /// it as a peer and a host, as the agent does when it switches to the
    /// configuration that lists it, and its own agent starts with that
    /// configuration (every node a voter, as a configuration says; the
    /// log's voters override that). Returns its index.
    pub fn add_node(&mut self) -> usize {
        let k = self.nodes.len();
        let id = NodeId(100 + k as u64);
        let name = format!("n{}", k + 1);
        self.ids.push(id);
        let names: Vec<String> = (0..=k).map(|i| format!("n{}", i + 1)).collect();
        let mut spec = self.nodes[0].spec.clone();
        spec.me = id;
        spec.peers = (0..k)
            .map(|i| PeerSpec {
                id: self.ids[i],
                links: vec![true, true],
                voter: true,
            })
            .collect();
        spec.member_names = names;
        self.nodes.push(Node {
            spec,
            member: None,
            persisted: Persisted::default(),
            start_ms: self.now_ms,
            host: Host::new(
                &self.groups.iter().map(String::as_str).collect::<Vec<_>>(),
                1,
            ),
            cut: false,
        });
        let groups = self.groups_spec();
        for i in 0..k {
            let node = &mut self.nodes[i];
            // A restart reads the new configuration: the node is listed.
            node.spec.peers.push(PeerSpec {
                id,
                links: vec![true, true],
                voter: true,
            });
            node.spec.member_names.push(name.clone());
            if let Some(m) = node.member.as_mut() {
                m.add_peer(id, &name, vec![true, true]);
                m.set_groups(groups.clone(), 0);
            }
        }
        self.start_agent(k, None);
        k
    }

    /// Node `k` leaves the configuration (`tandem node remove NAME
    /// --forget`): every other running member forgets it, each answer in
    /// node order (a refusal says why); once all forgot it, it is powered
    /// off.
    pub fn forget_node(&mut self, k: usize) -> Vec<Result<bool, String>> {
        let (id, name) = (self.ids[k], format!("n{}", k + 1));
        let mut answers = Vec::new();
        for i in (0..self.nodes.len()).filter(|i| *i != k) {
            if let Some(m) = self.nodes[i].member.as_mut() {
                answers.push(m.remove_peer(id, &name));
            }
            self.flush(i);
        }
        if answers.iter().all(Result::is_ok) {
            self.power_off(k);
        }
        answers
    }

    /// The current simulated time (ms since the story began).
    pub fn now_ms(&self) -> u64 {
        self.now_ms
    }

    /// Node `i`'s member (None while its agent is down).
    pub fn member(&self, i: usize) -> Option<&Member> {
        self.nodes.get(i)?.member.as_ref()
    }

    /// The node whose member leads in the highest term (an old leader
    /// may not have heard of the new one yet).
    pub fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter_map(|i| {
                let a = self.member(i)?.agreement();
                (a.role() == Role::Leader).then(|| (a.term(), i))
            })
            .max()
            .map(|(_, i)| i)
    }

    /// The record as node `i` has applied it.
    pub fn record(&self, i: usize) -> Option<&Record> {
        Some(self.member(i)?.agreement().record())
    }

    /// The node the leader's record places `group` on.
    pub fn placed_on(&self, group: &str) -> Option<usize> {
        let node = self
            .record(self.leader()?)?
            .placements
            .get(group)?
            .node
            .clone()?;
        node.strip_prefix('n')?
            .parse::<usize>()
            .ok()?
            .checked_sub(1)
    }

    /// The nodes where `group`'s resource really runs.
    pub fn running_on(&self, group: &str) -> Vec<usize> {
        let Some(g) = self.groups.iter().position(|n| n == group) else {
            return Vec::new();
        };
        (0..self.nodes.len())
            .filter(|&i| self.nodes[i].host.runs(g))
            .collect()
    }

    /// Node `i` loses power: its agent and resources are gone until
    /// [`Cluster::power_on`].
    pub fn power_off(&mut self, i: usize) {
        let n = &mut self.nodes[i];
        n.member = None;
        n.host.power_off();
        self.net.retain(|Reverse(d)| d.to != i);
    }

    /// Node `i` boots again: a fresh agent from its persisted state.
    pub fn power_on(&mut self, i: usize) {
        self.start_agent(i, None);
    }

    /// Node `i`'s agent is killed (-9) and started again at once: its
    /// resources keep running, and the new agent inherits the lease the
    /// old one held (what its guard would have enforced).
    pub fn restart_agent(&mut self, i: usize) {
        let inherited = self.nodes[i].member.as_ref().and_then(|m| {
            let local = self.now_ms - self.nodes[i].start_ms;
            m.lease_until(local).map(|u| self.nodes[i].start_ms + u)
        });
        self.nodes[i].member = None;
        self.nodes[i].host.agent_died();
        self.start_agent(i, inherited);
    }

    /// Node `i`'s agent switches in place to the configuration `hash`
    /// (as `tandem config apply` makes it do; the groups stay the same).
    pub fn switch_config(&mut self, i: usize, hash: &str) {
        self.nodes[i].spec.config_hash = hash.to_string();
        if let Some(m) = self.nodes[i].member.as_mut() {
            m.set_config_identity(hash.to_string(), vec![]);
        }
        self.flush(i);
    }

    /// Every node's agent handles a failure of `group`'s resource as
    /// `policy` says, and reports its failures to the leader.
    pub fn set_on_fail(&mut self, group: &str, policy: OnFail) {
        if let Some(g) = self.groups.iter().position(|n| n == group) {
            for n in &mut self.nodes {
                n.host.set_on_fail(g, 0, policy);
            }
        }
    }

    /// `group`'s resource dies on node `i` (its agent finds out at its
    /// next pass).
    pub fn resource_dies(&mut self, i: usize, group: &str) {
        if let Some(g) = self.groups.iter().position(|n| n == group) {
            self.nodes[i].host.resource_dies(g, 0);
        }
    }

    /// Node `i` sends `request` to the leader (an operator's command).
    pub fn request(&mut self, i: usize, request: Request) {
        let local = self.now_ms - self.nodes[i].start_ms;
        if let Some(m) = self.nodes[i].member.as_mut() {
            m.request(local, request);
        }
        self.flush(i);
    }

    /// The leader (node `i`, which must lead) proposes that exactly the
    /// nodes `voters` vote ([`Member::change_voters`]).
    pub fn change_voters(
        &mut self,
        i: usize,
        voters: &[usize],
    ) -> Result<u64, crate::member::VoterChangeError> {
        let local = self.now_ms - self.nodes[i].start_ms;
        let mut ids: Vec<NodeId> = voters.iter().map(|v| self.ids[*v]).collect();
        ids.sort();
        let Some(m) = self.nodes[i].member.as_mut() else {
            return Err(crate::member::VoterChangeError::Agreement(
                crate::agreement::ProposeError::NotLeader { leader: None },
            ));
        };
        let r = m.change_voters(local, ids);
        self.flush(i);
        r
    }

    /// The voters as node `i`'s log has them (None: its agent is down).
    pub fn voters(&self, i: usize) -> Option<Vec<usize>> {
        let m = self.nodes[i].member.as_ref()?;
        Some(
            m.voters()
                .iter()
                .filter_map(|v| self.ids.iter().position(|id| id == v))
                .collect(),
        )
    }

    /// Every outcome of an operator's wish for a node's vote: (time, the
    /// leader that said it, the event).
    pub fn voter_events(&self) -> &[(u64, usize, MemberEvent)] {
        &self.voter_events
    }

    /// Every fence done: (time, node fenced).
    pub fn fenced(&self) -> &[(u64, usize)] {
        &self.fenced
    }

    /// Whether node `i`'s agent runs (it is powered on).
    pub fn is_on(&self, i: usize) -> bool {
        self.nodes[i].member.is_some()
    }

    /// Cuts (or restores) every link of node `i` (what was on its way to
    /// or from it is lost).
    pub fn set_cut(&mut self, i: usize, cut: bool) {
        self.nodes[i].cut = cut;
        if cut {
            self.net.retain(|Reverse(d)| d.to != i && d.from != i);
        }
    }

    /// When (simulated ms) node `i` started or stopped `group`, since
    /// `since_ms`: (time, start?) in order.
    pub fn actions_on(&self, i: usize, group: &str, since_ms: u64) -> Vec<(u64, bool)> {
        let Some(g) = self.groups.iter().position(|n| n == group) else {
            return Vec::new();
        };
        self.actions
            .iter()
            .filter(|(t, n, gg, _)| *t >= since_ms && *n == i && *gg == g)
            .map(|(t, _, _, start)| (*t, *start))
            .collect()
    }

    /// Every moment, checked after every runner pass, a group ran on more
    /// than one node: (time, group, nodes). Empty in a safe cluster.
    pub fn dual_active(&self) -> &[(u64, String, Vec<usize>)] {
        &self.dual_active
    }

    /// Runs the cluster for `ms` of simulated time.
    pub fn run_for(&mut self, ms: u64) {
        let end = self.now_ms + ms;
        while self.now_ms < end {
            self.step();
            self.now_ms = self.next_time(end);
        }
    }

    /// When something is next due (at most `limit`).
    fn next_time(&self, limit: u64) -> u64 {
        let mut t = limit;
        if let Some(Reverse(d)) = self.net.peek() {
            t = t.min(d.at_ms);
        }
        if let Some(f) = self.fences.iter().map(|f| f.0).min() {
            t = t.min(f);
        }
        for n in &self.nodes {
            if let Some(m) = &n.member {
                t = t.min(n.start_ms + m.next_deadline());
                if let Some(d) = n.host.runner().and_then(|r| r.next_deadline()) {
                    t = t.min(n.start_ms + d);
                }
                // The modelled guard acts when an inherited lease ends.
                let local = self.now_ms - n.start_ms;
                if let Some(u) = n.host.wants().inherited_until(local) {
                    t = t.min(n.start_ms + u);
                }
            }
        }
        t.max(self.now_ms + 1)
    }

    fn step(&mut self) {
        let due: Vec<(u64, usize, usize)> = self
            .fences
            .iter()
            .copied()
            .filter(|f| f.0 <= self.now_ms)
            .collect();
        self.fences.retain(|f| f.0 > self.now_ms);
        for (_, by, target) in due {
            self.power_off(target);
            self.fenced.push((self.now_ms, target));
            let local = self.now_ms.saturating_sub(self.nodes[by].start_ms);
            if let Some(m) = self.nodes[by].member.as_mut() {
                m.fence_done(local, &format!("n{}", target + 1), false, true, vec![]);
                self.flush(by);
            }
        }
        while self
            .net
            .peek()
            .is_some_and(|Reverse(d)| d.at_ms <= self.now_ms)
        {
            let Some(Reverse(d)) = self.net.pop() else {
                break;
            };
            let local = self.now_ms - self.nodes[d.to].start_ms;
            if let Some(m) = self.nodes[d.to].member.as_mut() {
                m.on_datagram(local, d.link, &d.bytes);
                self.flush(d.to);
            }
        }
        for i in 0..self.nodes.len() {
            let local = self.now_ms - self.nodes[i].start_ms;
            if let Some(m) = self.nodes[i].member.as_mut() {
                if m.next_deadline() <= local {
                    m.on_tick(local);
                }
                self.flush(i);
            }
        }
    }

    /// A member's output onto the network, then the node's runner pass.
    fn flush(&mut self, i: usize) {
        self.send(i);
        self.drive(i);
        self.send(i);
    }

    fn send(&mut self, i: usize) {
        let Some(m) = self.nodes[i].member.as_mut() else {
            return;
        };
        m.step();
        let out = m.take_output();
        if let Some(p) = out.persist {
            self.nodes[i].persisted = p;
        }
        for e in out.events {
            if matches!(e, MemberEvent::VoterChange { .. }) {
                self.voter_events.push((self.now_ms, i, e));
            }
        }
        for (name, on) in out.fence {
            let target = name
                .strip_prefix('n')
                .and_then(|k| k.parse::<usize>().ok())
                .and_then(|k| k.checked_sub(1));
            if let (Some(target), false, true) = (target, on, self.fencing) {
                if !self.fences.iter().any(|f| f.2 == target) {
                    self.fences.push((self.now_ms + FENCE_MS, i, target));
                }
            }
        }
        for t in out.transmit {
            let Some(to) = self.ids.iter().position(|id| *id == t.to) else {
                continue;
            };
            if self.nodes[i].cut || self.nodes[to].cut {
                continue;
            }
            self.seq += 1;
            self.net.push(Reverse(Datagram {
                at_ms: self.now_ms + DELAY_MS,
                seq: self.seq,
                from: i,
                to,
                link: t.link,
                bytes: t.bytes,
            }));
        }
    }

    /// The agent's runner pass ([`Host::drive`]), every start and stop
    /// logged, then the dual-active check.
    fn drive(&mut self, i: usize) {
        let now = self.now_ms;
        let local = now - self.nodes[i].start_ms;
        let node = &mut self.nodes[i];
        let Some(m) = node.member.as_mut() else {
            return;
        };
        let did = node.host.drive(local, now, m, []);
        for (g, start) in did.actions {
            self.actions.push((now, i, g, start));
        }
        for (g, name) in self.groups.iter().enumerate() {
            let on: Vec<usize> = (0..self.nodes.len())
                .filter(|&n| self.nodes[n].host.runs(g))
                .collect();
            if on.len() > 1 {
                self.dual_active.push((now, name.clone(), on));
            }
        }
    }

    /// Whether node `i`'s runner believes `group`'s resource runs.
    pub fn runner_says_running(&self, i: usize, group: &str) -> bool {
        let Some(g) = self.groups.iter().position(|n| n == group) else {
            return false;
        };
        self.nodes[i]
            .host
            .runner()
            .is_some_and(|r| r.resources(g).first() == Some(&ResourceState::Running))
    }
}

#[cfg(test)]
mod stories;
