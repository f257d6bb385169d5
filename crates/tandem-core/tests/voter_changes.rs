//! Deterministic simulation of the agreement while its voters change.
//!
//! Up to five [`Agreement`] engines on a seeded random network (delay and
//! so reordering, loss, duplication, links cut one way or both), with
//! seeded crashes (everything not persisted is lost) and restarts, the
//! two-node rule (a crashed peer fenced, so its vote counts) whenever two
//! voters are left, placements proposed, and the leader adding or
//! removing one voter at a time at random: a learner promoted, a voter
//! (the leader itself, sometimes) demoted. After every step:
//!
//! - at most one leader per term, over the whole run;
//! - committed entries never differ between nodes, and the record at a
//!   given commit index is the same everywhere (nothing committed lost);
//! - every node's voters are those of the latest change in its log.
//!
//! After the faults heal the cluster must converge: one leader, known to
//! every node, every node at its commit index with the same voters.
//!
//! A failure prints the seed and the command that replays it with a
//! trace. `TANDEM_VOTER_SIM_RUNS` sets how many runs (default 1 000),
//! `TANDEM_VOTER_SIM_BASE` the first seed.

#![allow(clippy::unwrap_used, clippy::expect_used, reason = "test harness")]

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use tandem_core::agreement::{
    Agreement, Command, Durable, Message, ProposeError, Record, Role, Timing,
};
use tandem_core::wire::NodeId;

const TIMING: Timing = Timing {
    heartbeat_ms: 50,
    idle_append_ms: 500,
    election_min_ms: 250,
    election_max_ms: 500,
};
/// Simulated time per step.
const STEP_MS: u64 = 5;
/// Faults and changes happen during this much simulated time.
const FAULT_PHASE_MS: u64 = 8_000;
/// After healing, the cluster must converge within this.
const CONVERGE_BOUND_MS: u64 = 6_000;
/// Most messages in flight, so a storm fails instead of eating memory.
const MAX_IN_FLIGHT: usize = 100_000;
const DEFAULT_RUNS: u64 = 1_000;

fn id(i: usize) -> NodeId {
    NodeId(i as u64 + 1)
}

fn index_of(n: NodeId) -> usize {
    (n.0 - 1) as usize
}

struct Sim {
    rng: StdRng,
    trace: bool,
    now: u64,
    nodes: Vec<Agreement>,
    durable: Vec<Durable>,
    up: Vec<bool>,
    /// cut[a][b]: messages from a to b are lost.
    cut: Vec<Vec<bool>>,
    base_voters: Vec<NodeId>,
    learners: Vec<NodeId>,
    loss_pct: u32,
    queue: BinaryHeap<Reverse<(u64, u64, usize, usize)>>,
    in_flight: BTreeMap<u64, Message>,
    seq: u64,
    /// Term -> its leader, over the whole run.
    leaders: BTreeMap<u64, NodeId>,
    /// Index -> (term, command) of every entry seen committed.
    committed: BTreeMap<u64, (u64, Command)>,
    /// Commit index -> the record there, as first seen.
    records: BTreeMap<u64, Record>,
    /// Changes of voters committed (a run that makes none proves little).
    changes: usize,
}

impl Sim {
    fn new(seed: u64, trace: bool) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(2..=5);
        let v = rng.gen_range(1..=n.min(3));
        let base_voters: Vec<NodeId> = (0..v).map(id).collect();
        let learners: Vec<NodeId> = (v..n).map(id).collect();
        let nodes = (0..n)
            .map(|i| {
                Agreement::new(
                    id(i),
                    base_voters.clone(),
                    learners.clone(),
                    TIMING,
                    Durable::default(),
                    0,
                    seed,
                )
            })
            .collect();
        let loss_pct = rng.gen_range(0..=10);
        Sim {
            rng,
            trace,
            now: 0,
            nodes,
            durable: vec![Durable::default(); n],
            up: vec![true; n],
            cut: vec![vec![false; n]; n],
            base_voters,
            learners,
            loss_pct,
            queue: BinaryHeap::new(),
            in_flight: BTreeMap::new(),
            seq: 0,
            leaders: BTreeMap::new(),
            committed: BTreeMap::new(),
            records: BTreeMap::new(),
            changes: 0,
        }
    }

    fn log(&self, what: impl FnOnce() -> String) {
        if self.trace {
            println!("{:>6} ms  {}", self.now, what());
        }
    }

    /// Moves node `i`'s output: persist first, then the messages onto
    /// the network.
    fn flush(&mut self, i: usize) -> Result<(), String> {
        let out = self.nodes[i].take_output();
        if let Some(d) = out.persist {
            self.durable[i] = d;
        }
        for (to, msg) in out.send {
            let j = index_of(to);
            if j >= self.nodes.len() || self.cut[i][j] {
                continue;
            }
            if self.rng.gen_range(0..100) < self.loss_pct {
                continue;
            }
            let copies = if self.rng.gen_range(0..100) < 2 { 2 } else { 1 };
            for _ in 0..copies {
                if self.in_flight.len() >= MAX_IN_FLIGHT {
                    return Err("more than 100 000 messages in flight".into());
                }
                let at = self.now + self.rng.gen_range(0..=30);
                self.seq += 1;
                self.in_flight.insert(self.seq, msg.clone());
                self.queue.push(Reverse((at, self.seq, i, j)));
            }
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += STEP_MS;
        while let Some(Reverse((at, seq, from, to))) = self.queue.peek().copied() {
            if at > self.now {
                break;
            }
            self.queue.pop();
            let Some(msg) = self.in_flight.remove(&seq) else {
                continue;
            };
            if !self.up[to] || self.cut[from][to] {
                continue;
            }
            let now = self.now;
            self.nodes[to].on_message(now, id(from), msg);
            self.flush(to)?;
        }
        for i in 0..self.nodes.len() {
            if self.up[i] && self.nodes[i].next_deadline() <= self.now {
                let now = self.now;
                self.nodes[i].on_tick(now);
            }
            if self.up[i] {
                self.flush(i)?;
            }
        }
        self.check()
    }

    /// The invariants, on every live node.
    fn check(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            if !self.up[i] {
                continue;
            }
            let n = &self.nodes[i];
            if n.role() == Role::Leader {
                let prior = *self.leaders.entry(n.term()).or_insert(n.id());
                if prior != n.id() {
                    return Err(format!(
                        "two leaders in term {}: {:?} and {:?}",
                        n.term(),
                        prior,
                        n.id()
                    ));
                }
            }
            let snap = n.durable().snapshot.last_index;
            for index in (snap + 1)..=n.commit_index() {
                let Some(e) = n.entry(index) else { continue };
                let seen = self
                    .committed
                    .entry(index)
                    .or_insert((e.term, e.cmd.clone()));
                if *seen != (e.term, e.cmd.clone()) {
                    return Err(format!(
                        "committed entry {index} differs on {:?}: {:?} vs {seen:?}",
                        n.id(),
                        (e.term, &e.cmd)
                    ));
                }
            }
            let record = self
                .records
                .entry(n.commit_index())
                .or_insert_with(|| n.record().clone());
            if record != n.record() {
                return Err(format!(
                    "record at commit {} differs on {:?}",
                    n.commit_index(),
                    n.id()
                ));
            }
            let from_log = n
                .durable()
                .log
                .iter()
                .rev()
                .find_map(|e| match &e.cmd {
                    Command::Voters { voters } => Some(voters.clone()),
                    _ => None,
                })
                .or_else(|| n.durable().snapshot.record.voters.clone())
                .unwrap_or_else(|| self.base_voters.clone());
            if n.voters() != from_log {
                return Err(format!(
                    "{:?} uses voters {:?}, its log says {from_log:?}",
                    n.id(),
                    n.voters()
                ));
            }
        }
        Ok(())
    }

    fn leader(&self) -> Option<usize> {
        (0..self.nodes.len())
            .filter(|i| self.up[*i] && self.nodes[*i].role() == Role::Leader)
            .max_by_key(|i| self.nodes[*i].term())
    }

    fn crash(&mut self, i: usize) {
        self.log(|| format!("crash {:?}", id(i)));
        self.up[i] = false;
        // The two-node rule: with two voters, a peer confirmed off counts.
        for j in 0..self.nodes.len() {
            if j != i && self.up[j] && self.nodes[j].voters().len() == 2 {
                let now = self.now;
                self.nodes[j].set_fenced(now, id(i), true);
                self.nodes[j].on_peer_dead(now, id(i));
            }
        }
    }

    fn restart(&mut self, i: usize) {
        self.log(|| format!("restart {:?}", id(i)));
        // Seen alive again: nobody counts it as fenced any more.
        for j in 0..self.nodes.len() {
            if j != i {
                let now = self.now;
                self.nodes[j].set_fenced(now, id(i), false);
            }
        }
        self.nodes[i] = Agreement::new(
            id(i),
            self.base_voters.clone(),
            self.learners.clone(),
            TIMING,
            self.durable[i].clone(),
            self.now,
            self.rng.gen(),
        );
        self.up[i] = true;
    }

    /// The leader adds or removes one node at random.
    fn change_voters(&mut self) {
        let Some(l) = self.leader() else { return };
        let n = self.nodes.len();
        let mut voters = self.nodes[l].voters().to_vec();
        let pick = id(self.rng.gen_range(0..n));
        if voters.contains(&pick) {
            if voters.len() == 1 {
                return;
            }
            voters.retain(|v| *v != pick);
        } else {
            voters.push(pick);
            voters.sort();
        }
        let now = self.now;
        let r = self.nodes[l].propose(
            now,
            Command::Voters {
                voters: voters.clone(),
            },
        );
        self.log(|| format!("{:?} proposes voters {voters:?}: {r:?}", id(l)));
        if r.is_ok() {
            self.changes += 1;
        }
        match r {
            Ok(_)
            | Err(ProposeError::VotersChanging)
            | Err(ProposeError::NotCaughtUp)
            | Err(ProposeError::Busy) => {}
            Err(e) => self.log(|| format!("unexpected refusal: {e}")),
        }
    }

    fn place(&mut self) {
        let Some(l) = self.leader() else { return };
        let node = format!("n{}", self.rng.gen_range(1..=3));
        let now = self.now;
        let _ = self.nodes[l].propose(
            now,
            Command::Place {
                group: "web".into(),
                node: Some(node),
                reason: None,
            },
        );
    }

    fn fault(&mut self) {
        let n = self.nodes.len();
        let i = self.rng.gen_range(0..n);
        match self.rng.gen_range(0..100) {
            0..=9 => {
                if self.up[i] && self.up.iter().filter(|u| **u).count() > 1 {
                    self.crash(i);
                }
            }
            10..=29 => {
                if !self.up[i] {
                    self.restart(i);
                }
            }
            30..=39 => {
                let j = self.rng.gen_range(0..n);
                let both = self.rng.gen_bool(0.7);
                self.log(|| format!("cut {:?} -> {:?} (both ways: {both})", id(i), id(j)));
                self.cut[i][j] = true;
                if both {
                    self.cut[j][i] = true;
                }
            }
            40..=54 => {
                let j = self.rng.gen_range(0..n);
                self.cut[i][j] = false;
                self.cut[j][i] = false;
            }
            55..=79 => self.change_voters(),
            _ => self.place(),
        }
    }

    fn heal(&mut self) {
        self.log(|| "heal".into());
        self.loss_pct = 0;
        for row in &mut self.cut {
            row.iter_mut().for_each(|c| *c = false);
        }
        for i in 0..self.nodes.len() {
            if !self.up[i] {
                self.restart(i);
            }
        }
    }

    fn converged(&self) -> bool {
        let Some(l) = self.leader() else { return false };
        let lead = &self.nodes[l];
        if lead.voters_changing() || lead.commit_index() != lead.last_index() {
            return false;
        }
        self.nodes.iter().all(|n| {
            n.leader() == Some(id(l))
                && n.term() == lead.term()
                && n.commit_index() == lead.commit_index()
                && n.voters() == lead.voters()
        })
    }

    /// Returns how long convergence took after healing.
    fn run(&mut self) -> Result<u64, String> {
        while self.now < FAULT_PHASE_MS {
            if self.now % 50 == 0 && self.rng.gen_range(0..100) < 30 {
                self.fault();
            }
            self.step()?;
        }
        self.heal();
        let healed = self.now;
        while self.now < healed + CONVERGE_BOUND_MS {
            self.step()?;
            if self.converged() {
                return Ok(self.now - healed);
            }
        }
        let l = self.leader();
        Err(format!(
            "no convergence {CONVERGE_BOUND_MS} ms after healing: leader {l:?}, nodes {:?}",
            self.nodes
                .iter()
                .map(|n| (
                    n.id(),
                    n.role(),
                    n.term(),
                    n.commit_index(),
                    n.voters().to_vec()
                ))
                .collect::<Vec<_>>()
        ))
    }
}

fn run_seed(seed: u64, trace: bool) -> Result<(usize, usize, u64), String> {
    let mut sim = Sim::new(seed, trace);
    let t = sim.run()?;
    let committed = sim
        .committed
        .values()
        .filter(|(_, c)| matches!(c, Command::Voters { .. }))
        .count();
    Ok((sim.changes, committed, t))
}

/// Seeded runs with voters changing under faults: never two leaders in a
/// term, never a committed entry lost or different, and convergence
/// after healing.
#[test]
fn seeded_voter_change_runs() {
    let runs: u64 = std::env::var("TANDEM_VOTER_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_RUNS);
    let base: u64 = std::env::var("TANDEM_VOTER_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut proposed, mut committed, mut worst) = (0, 0, 0);
    for seed in base..base + runs {
        match run_seed(seed, false) {
            Ok((p, c, t)) => {
                proposed += p;
                committed += c;
                worst = worst.max(t);
            }
            Err(e) => panic!(
                "voter simulation seed {seed} failed: {e}\nreplay with a trace:\n  TANDEM_VOTER_SIM_SEED={seed} cargo test -p tandem-core --test voter_changes replay -- --nocapture"
            ),
        }
    }
    println!(
        "{runs} seeded runs with voter changes passed; {proposed} changes appended by a leader, {committed} committed; slowest convergence after healing {worst} ms"
    );
    assert!(
        committed as u64 > runs,
        "the voters must change: {committed} changes committed in {runs} runs"
    );
}

/// Replays one seed with a trace (`TANDEM_VOTER_SIM_SEED=N`).
#[test]
fn replay() {
    let Some(seed) = std::env::var("TANDEM_VOTER_SIM_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
    else {
        return;
    };
    match run_seed(seed, true) {
        Ok((p, c, t)) => println!("seed {seed}: {p} changes, {c} committed, converged in {t} ms"),
        Err(e) => panic!("seed {seed}: {e}"),
    }
}

/// Seeds that failed while the rules were being found, each pinned: 11
/// (a removed leader's change stuck with no one allowed to campaign),
/// 100 (a change away from a pair committed without one of the pair,
/// which then elected itself by its peer's fencing), 1107 (entries
/// before such a change committed by the new voters alone, then
/// overwritten the same way) and 1189 (a pair member fenced with a
/// change only it held elected itself among its new voters on reboot),
/// 44819 (the only voter of a committed change, not knowing it
/// committed, could not win against the removed leader's longer log),
/// 4570 (a pair member with a change adding a node, fenced and
/// rebooted, voted that node in beside the leader its fencing elected),
/// 9078 (a pair member with such a change, never restarted, won a term
/// among the new voters that its peer, fencing it, also won), 221 (a
/// removed node counted both of a pair fenced and elected itself).
#[test]
fn regression_voter_change_seeds_found_failing() {
    for seed in [11, 100, 221, 1107, 1189, 4570, 9078, 44819] {
        if let Err(e) = run_seed(seed, false) {
            panic!("seed {seed}: {e}");
        }
    }
}
