//! The fault campaign: random but replayable schedules of faults against a
//! real cluster, a client probing the floating IP all along, and the
//! checker's verdict on every schedule.
//!
//! A [`Schedule`] is a pure function of a [`Shape`] and a seed (its own
//! SplitMix64, so a seed means the same schedule on any machine and any
//! crate version). Faults that name "the holder" are resolved when they are
//! injected, so a replay hits the same roles even if placement differs.
//! [`run_schedule`] starts a fresh cluster, settles it, then for each step
//! injects the fault, holds it, heals it (powering on and restarting any
//! node whose agent died or was fenced, as an operator would), waits for
//! the cluster to settle and stays quiet for a moment. The probe log is
//! then analysed: dual-active instants, and every outage attributed to
//! the step during which it began and judged against that step's
//! expectation ([`Expect`]).

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::agents::{self, all_online, AgentCluster, ClusterShape};
use crate::checker::{analyze, CheckOptions, ProbeKind};
use crate::prober::{ProbeSpec, Prober};
use crate::wire::Impairment;

/// The probe service's UDP port.
const PROBE_PORT: u16 = 7000;
/// A settled cluster: every agent online, quorate, the group running.
const SETTLE_LIMIT: Duration = Duration::from_secs(30);
/// Quiet time after settling, longer than the checker's 1 s window for an
/// A,B,A return, so that two moves in a row never read as dual-active.
const QUIET_MS: u64 = 1_200;
/// Unanswered stretches shorter than this are packet loss, not outages.
pub const OUTAGE_MIN_MS: f64 = 50.0;
/// The longest a schedule's prober may run.
const PROBE_LIMIT_MS: u64 = 15 * 60 * 1_000;
/// Reboots of dead nodes while settling after one step.
const MAX_REBOOTS: usize = 4;
/// Longest graceful stop of an agent (it hands its groups over first).
const STOP_LIMIT: Duration = Duration::from_secs(15);

/// The cluster a campaign runs against.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Shape {
    /// Three nodes, majority quorum, leases alone (no fence device), a ping
    /// monitor of the client over `lan`.
    Three,
    /// Two nodes, `two_node` mode, no witness: the testbed fence device for
    /// each (n1's carries a 1 s delay, so n1 wins a race), the same ping
    /// monitor.
    TwoFenced,
}

impl Shape {
    /// Its name on the command line and in the summary.
    pub fn as_str(self) -> &'static str {
        match self {
            Shape::Three => "three",
            Shape::TwoFenced => "two-fenced",
        }
    }

    /// Parses [`Shape::as_str`].
    pub fn parse(s: &str) -> Option<Shape> {
        match s {
            "three" => Some(Shape::Three),
            "two-fenced" => Some(Shape::TwoFenced),
            _ => None,
        }
    }

    /// Cluster size.
    pub fn nodes(self) -> usize {
        match self {
            Shape::Three => 3,
            Shape::TwoFenced => 2,
        }
    }

    /// The failover bound outages are judged against (ms): detection
    /// (deadtime 200 ms), the lease bound, a start; with fencing also the
    /// 1 s fence delay of n1's device and the fence itself; plus the
    /// ping monitor's 600 ms for a cut `lan`, and margin for a loaded
    /// 2-core machine.
    pub fn bound_ms(self) -> f64 {
        match self {
            Shape::Three => 2_000.0,
            Shape::TwoFenced => 3_500.0,
        }
    }
}

/// Which node a fault hits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Target {
    /// The node running the group when the fault is injected.
    Holder,
    /// A node that is not running it (the lowest-numbered such node).
    Other,
}

/// One fault.
#[derive(Debug, Clone, PartialEq)]
pub enum Fault {
    /// Power loss: every link cut and every process killed; powered on
    /// again after the hold.
    Crash(Target),
    /// `kill -9` of the agent (its guard and resources live on); restarted
    /// after the hold.
    KillAgent(Target),
    /// Every process of the node frozen for the hold (1-10 s).
    Freeze(Target),
    /// The node cut from every other node, the client still reaching it.
    Partition(Target),
    /// Packets from the target to the other node dropped (one direction).
    OneWay(Target),
    /// A link of the target going down and up `flaps` times.
    LinkFlap {
        /// Whose link.
        target: Target,
        /// `lan` or `sync`.
        link: &'static str,
        /// How many times.
        flaps: u32,
        /// Down time of each flap.
        down_ms: u64,
        /// Up time between flaps.
        up_ms: u64,
    },
    /// 30% loss on a link of the target, both directions.
    Loss {
        /// Whose link.
        target: Target,
        /// `lan` or `sync`.
        link: &'static str,
    },
    /// A graceful stop of the agent (SIGTERM: it hands its groups over)
    /// and an immediate start.
    Restart(Target),
    /// Every node cut from every other (the client reaches them all): no
    /// side has quorum.
    SplitAll,
}

/// What the client should see after a fault.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Expect {
    /// Any outage ends within the shape's failover bound, fault or not.
    Failover,
    /// The fault itself may keep the service unreachable (its link is
    /// down or lossy, or no side has quorum): an outage must end within
    /// the bound after the fault is healed.
    UntilHeal(&'static str),
}

impl Fault {
    /// What the client should see.
    pub fn expect(&self) -> Expect {
        match self {
            Fault::LinkFlap { .. } => Expect::UntilHeal("a link of the holder was down"),
            Fault::Loss { .. } => Expect::UntilHeal("a link of the holder lost 30% of packets"),
            Fault::SplitAll => Expect::UntilHeal("no partition had quorum (by design)"),
            _ => Expect::Failover,
        }
    }
}

/// One step: a fault and how long it is held.
#[derive(Debug, Clone, PartialEq)]
pub struct Step {
    /// The fault.
    pub fault: Fault,
    /// How long it lasts before it is healed.
    pub hold_ms: u64,
}

/// A schedule: its shape, its seed and its steps.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    /// The cluster.
    pub shape: Shape,
    /// The seed it came from.
    pub seed: u64,
    /// The faults, one after the other.
    pub steps: Vec<Step>,
}

/// SplitMix64: tiny, and fixed forever, so seeds replay everywhere.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `lo..=hi`.
    fn range(&mut self, lo: u64, hi: u64) -> u64 {
        lo + self.next() % (hi - lo + 1)
    }

    fn target(&mut self) -> Target {
        // The holder more often: that is where faults hurt.
        if self.range(0, 2) < 2 {
            Target::Holder
        } else {
            Target::Other
        }
    }

    fn link(&mut self) -> &'static str {
        if self.range(0, 1) == 0 {
            "lan"
        } else {
            "sync"
        }
    }
}

/// The schedule for `shape` and `seed`: 3 or 4 faults.
pub fn schedule(shape: Shape, seed: u64) -> Schedule {
    // Mixing in the shape keeps equal seeds of two shapes unrelated.
    let mut rng = Rng(seed ^ if shape == Shape::Three { 0 } else { 0xA5A5 });
    let n = rng.range(3, 4);
    let steps = (0..n)
        .map(|_| {
            let kinds = if shape == Shape::Three { 9 } else { 8 };
            match rng.range(0, kinds - 1) {
                0 => Step {
                    fault: Fault::Crash(rng.target()),
                    hold_ms: rng.range(1_500, 3_000),
                },
                1 => Step {
                    fault: Fault::KillAgent(rng.target()),
                    hold_ms: rng.range(300, 2_500),
                },
                2 => Step {
                    fault: Fault::Freeze(rng.target()),
                    hold_ms: rng.range(1_000, 10_000),
                },
                3 => Step {
                    fault: Fault::Partition(rng.target()),
                    hold_ms: rng.range(1_000, 4_000),
                },
                4 => Step {
                    fault: Fault::OneWay(rng.target()),
                    hold_ms: rng.range(1_000, 4_000),
                },
                5 => {
                    let (target, link) = (rng.target(), rng.link());
                    let flaps = rng.range(2, 5) as u32;
                    let down_ms = rng.range(100, 500);
                    let up_ms = rng.range(200, 800);
                    Step {
                        fault: Fault::LinkFlap {
                            target,
                            link,
                            flaps,
                            down_ms,
                            up_ms,
                        },
                        hold_ms: u64::from(flaps) * (down_ms + up_ms),
                    }
                }
                6 => Step {
                    fault: Fault::Loss {
                        target: rng.target(),
                        link: rng.link(),
                    },
                    hold_ms: rng.range(2_000, 5_000),
                },
                7 => Step {
                    fault: Fault::Restart(rng.target()),
                    hold_ms: 0,
                },
                _ => Step {
                    fault: Fault::SplitAll,
                    hold_ms: rng.range(1_000, 3_000),
                },
            }
        })
        .collect();
    Schedule { shape, seed, steps }
}

/// An outage the client saw.
#[derive(Debug, Clone, PartialEq)]
pub struct Outage {
    /// Its length (ms).
    pub ms: f64,
    /// The step during which it began (None: before the first fault).
    pub step: Option<usize>,
    /// Why it is acceptable, or None when it is not.
    pub explained: Option<String>,
}

/// What one schedule gave.
#[derive(Debug, Clone, PartialEq)]
pub struct Outcome {
    /// The schedule.
    pub schedule: Schedule,
    /// Each step as it was injected (targets resolved).
    pub injected: Vec<String>,
    /// Dual-active instants, in words.
    pub dual_active: Vec<String>,
    /// Every outage.
    pub outages: Vec<Outage>,
    /// What went wrong outside the client's view (a cluster that did not
    /// settle, a fault that could not be injected).
    pub problems: Vec<String>,
    /// Probes sent and answered (UDP).
    pub probes: (usize, usize),
}

impl Outcome {
    /// Outages without an explanation, and problems.
    pub fn unexplained(&self) -> Vec<String> {
        let mut v: Vec<String> = self
            .outages
            .iter()
            .filter(|o| o.explained.is_none())
            .map(|o| {
                format!(
                    "outage of {:.0} ms during {}",
                    o.ms,
                    o.step
                        .and_then(|s| self.injected.get(s))
                        .map_or("no fault", String::as_str)
                )
            })
            .collect();
        v.extend(self.problems.iter().cloned());
        v
    }

    /// One line per schedule, for the log.
    pub fn line(&self) -> String {
        let gaps: Vec<String> = self
            .outages
            .iter()
            .map(|o| {
                format!(
                    "{:.0}{}{}",
                    o.ms,
                    o.step.map_or(String::new(), |s| format!("@{}", s + 1)),
                    if o.explained.is_some() { "" } else { "!" }
                )
            })
            .collect();
        format!(
            "{} seed {}: {} | dual-active {} | outages ms@step [{}] | unexplained {}",
            self.schedule.shape.as_str(),
            self.schedule.seed,
            self.injected.join("; "),
            self.dual_active.len(),
            gaps.join(" "),
            self.unexplained().len()
        )
    }
}

fn cluster_shape(shape: Shape, tandem: &Path, dir: &Path) -> Result<ClusterShape> {
    let nodes = shape.nodes();
    let mut extra = agents::ping_monitor_config();
    if shape == Shape::TwoFenced {
        let a = agents::testbed_fence_script(dir, tandem)?;
        extra += &agents::two_node_fence_config(&a, 1);
    }
    extra += &agents::web_group_config(tandem, "manual", nodes, 8080, PROBE_PORT);
    Ok(ClusterShape {
        extra,
        ..ClusterShape::nodes(nodes)
    })
}

fn running_on(s: &Value) -> Option<usize> {
    crate::agents::running_on(s, "web")
}

/// Where the group runs, asking every agent that answers.
fn holder(c: &AgentCluster, nodes: usize) -> Option<usize> {
    (1..=nodes).find_map(|n| c.status(n).as_ref().and_then(running_on))
}

/// Every agent answers, sees every peer online on every link, is quorate,
/// and they agree where the group runs. Meanwhile a node whose agent died
/// or that a fence powered off (a fence started during a fault may land
/// after its heal, or after the node was rebooted) is rebooted, as an
/// operator or the power-on after a fence would; at most [`MAX_REBOOTS`]
/// times.
fn settle(c: &mut AgentCluster, nodes: usize) -> Result<usize> {
    let start = Instant::now();
    let mut reboots = 0;
    while start.elapsed() < SETTLE_LIMIT {
        for n in 1..=nodes {
            // Powered off by a fence, or its agent gone: power it on. An
            // agent started just before a fence's power-off may live on
            // behind cut ports: it goes too.
            let dead = !c.bed.is_running(c.pids[n - 1]);
            if (dead || crate::fence::is_off(c.bed.id(), n)) && reboots < MAX_REBOOTS {
                reboots += 1;
                if !dead {
                    c.bed.kill9(c.pids[n - 1])?;
                }
                reboot(c, n)?;
            }
        }
        let views: Vec<Option<usize>> = (1..=nodes)
            .map(|n| {
                c.status(n)
                    .filter(|s| all_online(s) && s["quorum"]["quorate"] == true)
                    .as_ref()
                    .and_then(running_on)
            })
            .collect();
        if let Some(Some(h)) = views.first() {
            if views.iter().all(|v| *v == Some(*h)) {
                return Ok(*h);
            }
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("the cluster did not settle within {SETTLE_LIMIT:?}")
}

/// Powers a node back on as a reboot would: its runtime addresses gone,
/// its ports up, the "off" mark of the fence device cleared, its agent
/// started.
fn reboot(c: &mut AgentCluster, node: usize) -> Result<()> {
    let _ = c.bed.thaw(node);
    // A crashed or fenced machine comes back without the floating address.
    let _ = crate::sys::ip(
        &c.bed.node_ns(node),
        &["addr", "del", "10.77.1.100/24", "dev", "lan"],
    );
    let (code, out) = crate::fence::agent(&format!(
        "action=on\ntestbed={}\nplug=n{node}\n",
        c.bed.id()
    ));
    if code != 0 {
        bail!("powering n{node} on: {out}");
    }
    c.bed.restore_node(node)?;
    c.pids[node - 1] = c.spawn_agent(node)?;
    Ok(())
}

/// Kills every process of a node (thawed first) and cuts its links: the
/// testbed fence device's `off`, which is a power cut.
fn power_off(c: &AgentCluster, node: usize) -> Result<()> {
    let (code, out) = crate::fence::agent(&format!(
        "action=off\ntestbed={}\nplug=n{node}\n",
        c.bed.id()
    ));
    if code != 0 {
        bail!("powering n{node} off: {out}");
    }
    Ok(())
}

fn resolve(t: Target, holder: usize, nodes: usize) -> usize {
    match t {
        Target::Holder => holder,
        Target::Other => (1..=nodes).find(|n| *n != holder).unwrap_or(1),
    }
}

/// Injects, holds and heals one step; returns it in words.
fn apply(c: &mut AgentCluster, nodes: usize, step: &Step, h: usize) -> Result<String> {
    let hold = Duration::from_millis(step.hold_ms);
    let others = |t: usize| (1..=nodes).filter(move |o| *o != t);
    Ok(match &step.fault {
        Fault::Crash(t) => {
            let t = resolve(*t, h, nodes);
            power_off(c, t)?;
            std::thread::sleep(hold);
            format!("crash n{t} {} ms", step.hold_ms)
        }
        Fault::KillAgent(t) => {
            let t = resolve(*t, h, nodes);
            c.bed.kill9(c.pids[t - 1])?;
            std::thread::sleep(hold);
            format!("kill -9 agent n{t}, {} ms", step.hold_ms)
        }
        Fault::Freeze(t) => {
            let t = resolve(*t, h, nodes);
            c.bed.freeze(t)?;
            std::thread::sleep(hold);
            c.bed.thaw(t)?;
            format!("freeze n{t} {} ms", step.hold_ms)
        }
        Fault::Partition(t) => {
            let t = resolve(*t, h, nodes);
            for o in others(t) {
                c.bed.drop_one_way(t, o)?;
                c.bed.drop_one_way(o, t)?;
            }
            std::thread::sleep(hold);
            for o in others(t) {
                c.bed.heal_one_way(t, o)?;
                c.bed.heal_one_way(o, t)?;
            }
            format!("partition n{t} {} ms", step.hold_ms)
        }
        Fault::OneWay(t) => {
            let t = resolve(*t, h, nodes);
            for o in others(t) {
                c.bed.drop_one_way(t, o)?;
            }
            std::thread::sleep(hold);
            for o in others(t) {
                c.bed.heal_one_way(t, o)?;
            }
            format!("one-way drop from n{t} {} ms", step.hold_ms)
        }
        Fault::LinkFlap {
            target,
            link,
            flaps,
            down_ms,
            up_ms,
        } => {
            let t = resolve(*target, h, nodes);
            for _ in 0..*flaps {
                c.bed.cut_link(t, link)?;
                std::thread::sleep(Duration::from_millis(*down_ms));
                c.bed.restore_link(t, link)?;
                std::thread::sleep(Duration::from_millis(*up_ms));
            }
            format!("flap n{t} {link} {flaps}x ({down_ms} ms down, {up_ms} ms up)")
        }
        Fault::Loss { target, link } => {
            let t = resolve(*target, h, nodes);
            c.bed.impair_link(
                t,
                link,
                Impairment {
                    loss_pct: 30.0,
                    ..Impairment::default()
                },
            )?;
            std::thread::sleep(hold);
            c.bed.clear_impairment(t, link)?;
            format!("30% loss n{t} {link} {} ms", step.hold_ms)
        }
        Fault::Restart(t) => {
            let t = resolve(*t, h, nodes);
            c.bed.stop_gracefully(c.pids[t - 1], STOP_LIMIT)?;
            c.pids[t - 1] = c.spawn_agent(t)?;
            format!("restart agent n{t}")
        }
        Fault::SplitAll => {
            for a in 1..=nodes {
                for b in others(a) {
                    c.bed.drop_one_way(a, b)?;
                }
            }
            std::thread::sleep(hold);
            for a in 1..=nodes {
                for b in others(a) {
                    c.bed.heal_one_way(a, b)?;
                }
            }
            format!("split all {} ms", step.hold_ms)
        }
    })
}

/// Runs one schedule on a fresh cluster of real agents (`tandem` is the
/// binary). Errors only when the testbed itself fails; everything the
/// cluster does wrong is in the [`Outcome`]. With `logs`, every agent's
/// log and the step times are written there as
/// `<shape>-<seed>.log`.
pub fn run_schedule(tandem: &Path, schedule: &Schedule, logs: Option<&Path>) -> Result<Outcome> {
    let nodes = schedule.shape.nodes();
    let dir = tempfile::tempdir().context("creating the campaign's directory")?;
    let shape = cluster_shape(schedule.shape, tandem, dir.path())?;
    let mut c = AgentCluster::start(tandem, &shape)?;
    let mut out = Outcome {
        schedule: schedule.clone(),
        injected: Vec::new(),
        dual_active: Vec::new(),
        outages: Vec::new(),
        problems: Vec::new(),
        probes: (0, 0),
    };
    if let Err(e) = settle(&mut c, nodes) {
        out.problems.push(format!("before the first fault: {e:#}"));
        return Ok(out);
    }
    let target = SocketAddr::new(c.bed.vip("lan").into(), PROBE_PORT);
    let prober = Prober::start(&c.bed.client_ns(), ProbeSpec::new(target, PROBE_LIMIT_MS))?;
    std::thread::sleep(Duration::from_millis(500));
    let mut agents_log = String::new();
    // (inject, heal) per step, ms since the epoch.
    let mut windows: Vec<(u64, u64)> = Vec::new();
    for (i, step) in schedule.steps.iter().enumerate() {
        let h = holder(&c, nodes).unwrap_or(1);
        let inject = crate::prober::unix_ms();
        let what = match apply(&mut c, nodes, step, h) {
            Ok(w) => w,
            Err(e) => {
                out.problems
                    .push(format!("step {}: injecting: {e:#}", i + 1));
                break;
            }
        };
        let healed = crate::prober::unix_ms();
        agents_log += &format!(
            "campaign: step {} `{what}` injected at {}, healed at {}\n",
            i + 1,
            crate::agents::format_ms(inject),
            crate::agents::format_ms(healed)
        );
        out.injected.push(what);
        windows.push((inject, healed));
        // Settled, and still so after the quiet time: a fence started
        // during the fault may land just after the cluster looked settled,
        // and the next fault must not meet a node that is still down.
        let mut settled = Err(anyhow::anyhow!("not tried"));
        for _ in 0..3 {
            settled = settle(&mut c, nodes);
            if settled.is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(QUIET_MS));
            let all_up = (1..=nodes)
                .all(|n| c.bed.is_running(c.pids[n - 1]) && !crate::fence::is_off(c.bed.id(), n));
            if all_up {
                break;
            }
        }
        if let Err(e) = settled {
            out.problems
                .push(format!("after step {} ({}): {e:#}", i + 1, out.injected[i]));
            break;
        }
    }
    let log = prober.stop()?;
    let report = analyze(&log.records, CheckOptions::default());
    let on_log = |unix: u64| unix.saturating_sub(log.started_unix_ms) * 1_000;
    for d in report.dual_active() {
        out.dual_active.push(format!(
            "{:?} {:?} at {} ms: {} and {}",
            d.kind,
            d.reason,
            d.from_us / 1_000,
            d.nodes.0,
            d.nodes.1
        ));
    }
    let udp = report.kind(ProbeKind::Udp);
    out.probes = (udp.probes, udp.answered);
    let bound = schedule.shape.bound_ms();
    for g in udp.gaps.iter().filter(|g| g.duration_ms() >= OUTAGE_MIN_MS) {
        // The step during which it began: the last one injected before
        // the last answer ahead of it (plus a little: the gap starts right
        // after that answer).
        let step = windows
            .iter()
            .rposition(|(inject, _)| on_log(*inject) <= g.from_us + 10_000);
        let explained = match (step, g.is_open()) {
            (_, true) => None,
            (None, false) => None,
            (Some(s), false) => match schedule.steps[s].fault.expect() {
                Expect::Failover => {
                    (g.duration_ms() <= bound).then(|| "failover within the bound".to_string())
                }
                Expect::UntilHeal(why) => {
                    let healed = on_log(windows[s].1).max(g.from_us);
                    ((g.to_us as f64) <= healed as f64 + bound * 1_000.0).then(|| {
                        if g.duration_ms() <= bound {
                            "within the bound".to_string()
                        } else {
                            format!("{why}; answered within the bound after the heal")
                        }
                    })
                }
            },
        };
        out.outages.push(Outage {
            ms: g.duration_ms(),
            step,
            explained,
        });
    }
    if let Some(dir) = logs {
        let path = dir.join(format!("{}-{}.log", schedule.shape.as_str(), schedule.seed));
        let text = format!(
            "{agents_log}probe log starts at {}\n{}\n{}",
            crate::agents::format_ms(log.started_unix_ms),
            out.line(),
            c.logs()
        );
        std::fs::write(&path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    c.bed.teardown()?;
    Ok(out)
}

/// The summary table of a campaign, one row per shape.
pub fn summary(outcomes: &[Outcome]) -> String {
    let mut o = String::new();
    let _ = writeln!(
        o,
        "| shape | schedules | faults | dual-active | outages | gap p50 ms | gap p99 ms | gap max ms | outages beyond the bound, explained | unexplained |"
    );
    let _ = writeln!(o, "|---|---|---|---|---|---|---|---|---|---|");
    for shape in [Shape::Three, Shape::TwoFenced] {
        let rows: Vec<&Outcome> = outcomes
            .iter()
            .filter(|x| x.schedule.shape == shape)
            .collect();
        if rows.is_empty() {
            continue;
        }
        let mut gaps: Vec<f64> = rows
            .iter()
            .flat_map(|r| r.outages.iter().map(|g| g.ms))
            .collect();
        gaps.sort_by(f64::total_cmp);
        let pct = |p: f64| -> String {
            if gaps.is_empty() {
                return "-".into();
            }
            let i = ((gaps.len() as f64 * p).ceil() as usize).clamp(1, gaps.len()) - 1;
            format!("{:.0}", gaps[i])
        };
        let beyond: Vec<String> = rows
            .iter()
            .flat_map(|r| r.outages.iter())
            .filter(|g| g.ms > shape.bound_ms())
            .filter_map(|g| g.explained.clone())
            .collect();
        let _ = writeln!(
            o,
            "| {} (bound {:.0} ms) | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            shape.as_str(),
            shape.bound_ms(),
            rows.len(),
            rows.iter().map(|r| r.injected.len()).sum::<usize>(),
            rows.iter().map(|r| r.dual_active.len()).sum::<usize>(),
            gaps.len(),
            pct(0.5),
            pct(0.99),
            gaps.last().map_or("-".into(), |m| format!("{m:.0}")),
            if beyond.is_empty() {
                "0".to_string()
            } else {
                format!("{}: {}", beyond.len(), dedup_count(&beyond))
            },
            rows.iter().map(|r| r.unexplained().len()).sum::<usize>(),
        );
    }
    o
}

/// "reason (n), other (m)".
fn dedup_count(items: &[String]) -> String {
    let mut m: std::collections::BTreeMap<&str, usize> = std::collections::BTreeMap::new();
    for i in items {
        *m.entry(i.as_str()).or_default() += 1;
    }
    m.iter()
        .map(|(k, v)| format!("{k} ({v})"))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_seed_always_gives_the_same_schedule() {
        for shape in [Shape::Three, Shape::TwoFenced] {
            for seed in 0..200 {
                let a = schedule(shape, seed);
                assert_eq!(a, schedule(shape, seed));
                assert!((3..=4).contains(&a.steps.len()));
                for s in &a.steps {
                    if let Fault::Freeze(_) = s.fault {
                        assert!((1_000..=10_000).contains(&s.hold_ms));
                    }
                    if shape == Shape::TwoFenced {
                        assert_ne!(s.fault, Fault::SplitAll);
                    }
                }
            }
        }
        // Fixed forever (recorded replays depend on it).
        let s = schedule(Shape::Three, 1);
        assert_eq!(
            format!("{:?}", s.steps),
            "[Step { fault: Restart(Holder), hold_ms: 0 }, Step { fault: Freeze(Holder), hold_ms: 1879 }, \
             Step { fault: Crash(Holder), hold_ms: 2173 }, Step { fault: KillAgent(Holder), hold_ms: 315 }]"
        );
    }

    #[test]
    fn every_fault_kind_appears_in_a_few_dozen_seeds() {
        let mut seen = std::collections::HashSet::new();
        for seed in 0..50 {
            for s in schedule(Shape::Three, seed).steps {
                seen.insert(std::mem::discriminant(&s.fault));
            }
        }
        assert_eq!(seen.len(), 9);
    }
}
