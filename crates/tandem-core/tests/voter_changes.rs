//! Deterministic simulation of the agreement while its voters change.
//!
//! Up to five [`Agreement`] engines on a seeded random network (delay and
//! so reordering, loss, duplication, links cut one way or both), with
//! seeded crashes (everything not persisted is lost), graceful stops (a
//! leader hands over first) and restarts, fencing (a crashed node is
//! confirmed off on every live node, which the engine counts as a vote
//! only where the two-node rule allows; a restarted one is seen alive a
//! random while after it runs again), placements proposed one by one and
//! in bursts (so logs are compacted into snapshots, which carry the
//! voters), and the leader adding or removing one voter at a time at
//! random: a learner promoted, a voter (the leader itself, sometimes)
//! demoted. In two runs of three, membership heartbeats (term, leader,
//! commit) go every 50 ms as the member layer hands them over, standing
//! in for empty appends. Checked after every message and every tick: at most one
//! leader per term, over the whole run. After every step:
//!
//! - committed entries never differ between nodes, and the record at a
//!   given commit index is the same everywhere (nothing committed lost;
//!   the record holds the committed voters).
//!
//! After the faults heal the cluster must converge: one leader, known to
//! every node, every node at its commit index with the same voters.
//!
//! A failure prints the seed and the command that replays it with a
//! trace. `TANDEM_VOTER_SIM_RUNS` sets how many runs (default 1 000),
//! `TANDEM_VOTER_SIM_BASE` the first seed. Majority-mode runs (no fencing,
//! `Agreement::set_fence_votes(false)`) replay with `TANDEM_VOTER_SIM_MAJORITY=1`.

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
/// Seeded runs in majority mode.
const DEFAULT_MAJORITY_MODE_RUNS: u64 = 500;

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
    /// Changes of voters appended by a leader.
    changes: usize,
    /// Restarted nodes the others still count as fenced: (when they are
    /// seen alive, node).
    unfence: Vec<(u64, usize)>,
    /// Membership heartbeats run (two runs in three; the others see the
    /// agreement alone), with their own random source so that runs
    /// without them replay as before they existed.
    beats: Option<StdRng>,
    /// Snapshots seen installed or taken (a run that never compacts
    /// proves nothing about snapshots).
    compacted: bool,
    /// Majority mode: nobody fences, and the engines count no fenced
    /// peer as a vote (`Agreement::set_fence_votes(false)`): plain Raft.
    majority_mode: bool,
}

impl Sim {
    fn new(seed: u64, trace: bool, majority_mode: bool) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let n = rng.gen_range(2..=5);
        let v = rng.gen_range(1..=n.min(3));
        let base_voters: Vec<NodeId> = (0..v).map(id).collect();
        let learners: Vec<NodeId> = (v..n).map(id).collect();
        let nodes = (0..n)
            .map(|i| {
                let mut a = Agreement::new(
                    id(i),
                    base_voters.clone(),
                    learners.clone(),
                    TIMING,
                    Durable::default(),
                    0,
                    seed,
                );
                a.set_fence_votes(!majority_mode);
                a
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
            unfence: Vec::new(),
            beats: (seed % 3 != 0).then(|| StdRng::seed_from_u64(seed ^ 0xBEA7_5EED)),
            compacted: false,
            majority_mode,
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
            self.check_leader(to)?;
            self.flush(to)?;
        }
        if self.now % 50 == 0 && self.beats.is_some() {
            self.beat()?;
        }
        let now = self.now;
        let due: Vec<usize> = self
            .unfence
            .iter()
            .filter(|(at, _)| *at <= now)
            .map(|(_, i)| *i)
            .collect();
        self.unfence.retain(|(at, _)| *at > now);
        for i in due {
            self.log(|| format!("{:?} seen alive again", id(i)));
            for j in 0..self.nodes.len() {
                if j != i && self.up[j] {
                    self.nodes[j].set_fenced(now, id(i), false);
                }
            }
        }
        for i in 0..self.nodes.len() {
            if self.up[i] && self.nodes[i].next_deadline() <= self.now {
                self.nodes[i].on_tick(now);
                self.check_leader(i)?;
            }
            if self.up[i] {
                self.flush(i)?;
            }
        }
        self.check()
    }

    /// The membership heartbeats as the member layer hands them to the
    /// agreement (term, leader, commit), each lost like a message or cut:
    /// they stand in for empty appends (contact, commit) and for their
    /// replies (check-quorum).
    fn beat(&mut self) -> Result<(), String> {
        let n = self.nodes.len();
        for i in 0..n {
            if !self.up[i] {
                continue;
            }
            let (term, leader, commit) = {
                let a = &self.nodes[i];
                let c = a.commit_index();
                (a.term(), a.leader(), (c, a.term_at(c).unwrap_or(0)))
            };
            for j in 0..n {
                if i == j || !self.up[j] || self.cut[i][j] {
                    continue;
                }
                let lost = self
                    .beats
                    .as_mut()
                    .is_some_and(|r| r.gen_range(0..100) < self.loss_pct);
                if lost {
                    continue;
                }
                let now = self.now;
                if leader == Some(id(i)) {
                    self.nodes[j].on_leader_beat(now, id(i), term, commit);
                }
                self.nodes[j].on_follower_beat(now, id(i), term, leader, commit.0, true);
                self.check_leader(j)?;
                self.flush(j)?;
            }
        }
        Ok(())
    }

    /// At most one leader per term, over the whole run.
    fn check_leader(&mut self, i: usize) -> Result<(), String> {
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
        Ok(())
    }

    /// The invariants, on every live node.
    fn check(&mut self) -> Result<(), String> {
        for i in 0..self.nodes.len() {
            if !self.up[i] {
                continue;
            }
            self.check_leader(i)?;
            let n = &self.nodes[i];
            let snap = n.durable().snapshot.last_index;
            self.compacted |= snap > 0;
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
            if snap > 0 {
                let at = self
                    .records
                    .entry(snap)
                    .or_insert_with(|| n.durable().snapshot.record.clone());
                if *at != n.durable().snapshot.record {
                    return Err(format!("snapshot at {snap} differs on {:?}", n.id()));
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
        self.unfence.retain(|(_, k)| *k != i);
        // Confirmed off everywhere; the engine decides where that counts.
        for j in 0..self.nodes.len() {
            if j != i && self.up[j] {
                let now = self.now;
                if !self.majority_mode {
                    self.nodes[j].set_fenced(now, id(i), true);
                }
                self.nodes[j].on_peer_dead(now, id(i));
            }
        }
    }

    /// A graceful stop: a leader hands over, then the node goes down.
    fn stop(&mut self, i: usize) -> Result<(), String> {
        self.log(|| format!("graceful stop {:?}", id(i)));
        self.nodes[i].hand_off();
        self.flush(i)?;
        self.up[i] = false;
        self.unfence.retain(|(_, k)| *k != i);
        Ok(())
    }

    fn restart(&mut self, i: usize) {
        self.log(|| format!("restart {:?}", id(i)));
        // The others count it as fenced until they hear it again.
        let seen = self.now + self.rng.gen_range(0..=300);
        self.unfence.push((seen, i));
        self.nodes[i] = Agreement::new(
            id(i),
            self.base_voters.clone(),
            self.learners.clone(),
            TIMING,
            self.durable[i].clone(),
            self.now,
            self.rng.gen(),
        );
        self.nodes[i].set_fence_votes(!self.majority_mode);
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

    fn place(&mut self, count: usize) {
        let Some(l) = self.leader() else { return };
        for _ in 0..count {
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
    }

    fn fault(&mut self) -> Result<(), String> {
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
            55..=76 => self.change_voters(),
            77..=79 => {
                if self.up[i] && self.up.iter().filter(|u| **u).count() > 1 {
                    self.stop(i)?;
                }
            }
            80..=89 => self.place(50),
            _ => self.place(1),
        }
        Ok(())
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
                self.fault()?;
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

/// One run: changes appended, changes seen committed, whether any node
/// compacted, convergence time after healing.
fn run_seed(seed: u64, trace: bool) -> Result<(usize, usize, bool, u64), String> {
    run_seed_in(seed, trace, false)
}

/// As [`run_seed`], in majority mode when `majority_mode` (no fencing).
fn run_seed_in(
    seed: u64,
    trace: bool,
    majority_mode: bool,
) -> Result<(usize, usize, bool, u64), String> {
    let mut sim = Sim::new(seed, trace, majority_mode);
    let t = sim.run()?;
    let committed = sim
        .committed
        .values()
        .filter(|(_, c)| matches!(c, Command::Voters { .. }))
        .count();
    Ok((sim.changes, committed, sim.compacted, t))
}

/// Seeded runs with voters changing under faults: never two leaders in a
/// term, never a committed entry lost or different, and convergence
/// after healing.
#[test]
fn seeded_voter_change_runs() {
    seeded_runs(false, DEFAULT_RUNS);
}

/// The same in majority mode (no fencing, the pair rules off): plain
/// Raft's single-server change, which the member layer uses outside
/// two-node mode.
#[test]
fn seeded_majority_mode_voter_change_runs() {
    seeded_runs(true, DEFAULT_MAJORITY_MODE_RUNS);
}

fn seeded_runs(majority_mode: bool, default_runs: u64) {
    let runs: u64 = std::env::var("TANDEM_VOTER_SIM_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default_runs);
    let base: u64 = std::env::var("TANDEM_VOTER_SIM_BASE")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0);
    let (mut proposed, mut committed, mut compacted, mut worst) = (0, 0, 0, 0);
    for seed in base..base + runs {
        match run_seed_in(seed, false, majority_mode) {
            Ok((p, c, k, t)) => {
                proposed += p;
                committed += c;
                compacted += usize::from(k);
                worst = worst.max(t);
            }
            Err(e) => panic!(
                "voter simulation seed {seed}{} failed: {e}\nreplay with a trace:\n  TANDEM_VOTER_SIM_SEED={seed}{} cargo test -p tandem-core --test voter_changes replay -- --nocapture",
                if majority_mode { " (majority mode)" } else { "" },
                if majority_mode { " TANDEM_VOTER_SIM_MAJORITY=1" } else { "" },
            ),
        }
    }
    println!(
        "{runs} seeded runs with voter changes{} passed; {proposed} changes appended by a leader, {committed} committed; {compacted} runs compacted a log; slowest convergence after healing {worst} ms",
        if majority_mode { " in majority mode" } else { "" }
    );
    assert!(
        committed as u64 > runs,
        "the voters must change: {committed} changes committed in {runs} runs"
    );
    assert!(
        compacted as u64 > runs / 4,
        "logs must be compacted: {compacted} runs of {runs} did"
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
    let majority_mode = std::env::var("TANDEM_VOTER_SIM_MAJORITY").is_ok_and(|v| v == "1");
    match run_seed_in(seed, true, majority_mode) {
        Ok((p, c, k, t)) => {
            println!("seed {seed}: {p} changes, {c} committed, compacted: {k}, converged in {t} ms")
        }
        Err(e) => panic!("seed {seed}: {e}"),
    }
}

/// Seeds of this harness that fail with one of the engine's rules taken
/// out (each checked so): 548 (a node outside the pair counting a fenced
/// peer), 948 (the two-node rule used while a change is uncommitted), 19
/// (a change away from a pair committed without one of the pair holding
/// it), 629 (an election won among the new voters without both of the
/// old pair: two leaders in one term) and 1338 (with no voter change: a
/// follower of a restarted leader took itself for in sync before that
/// leader had committed an entry of its term, then, fencing it, overwrote
/// what it had committed alone). Learning the commit index from replies
/// is pinned by unit tests in `agreement::tests`. Earlier versions of
/// this harness found the rules with other seeds (11, 100, 221, 1107,
/// 1189, 4570, 9078, 44819); it has grown since, so those now run other
/// histories.
#[test]
fn regression_voter_change_seeds_found_failing() {
    for seed in [19, 548, 629, 948, 1338] {
        if let Err(e) = run_seed(seed, false) {
            panic!("seed {seed}: {e}");
        }
    }
}
