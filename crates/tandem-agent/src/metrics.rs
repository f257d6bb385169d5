//! Prometheus metrics (`GET /metrics` of the HTTP API), in Prometheus'
//! text format, names prefixed `tandem_` and in base units.
//!
//! Two sources: this node's [`Status`] (nodes, quorum, links, groups,
//! resources, fail counts, volumes, dropped packets), read at each scrape;
//! and a [`Tally`] of what only a history can tell (fence attempts by
//! result, failover durations), fed with every event the agent logs.
//!
//! What each family means is in its help text, which `promtool check
//! metrics` reads (the HTTP API's test runs it on a real scrape).

use std::collections::BTreeMap;
use std::sync::Mutex;

use prometheus_client::encoding::text::encode;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::registry::{Registry, Unit};

use crate::event::AgentEvent;
use crate::status::{LinkWord, PeerState, Status};

/// Labels of one series.
type Labels = Vec<(String, String)>;

/// Bucket bounds of the failover histogram, seconds: from a sub-second
/// failover to a minute (a slow agent's start).
const FAILOVER_BUCKETS_S: [f64; 12] = [
    0.1, 0.25, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 30.0, 60.0,
];
/// How long after a peer was declared dead a group's start here still
/// counts as its failover.
const FAILOVER_WINDOW_MS: u64 = 120_000;
/// Peers whose death is remembered (the cluster's size bounds it; this
/// bounds a confused one).
const MAX_TRACKED: usize = 256;

/// Each group's last resource (its start completes the group), for
/// [`Tally::new`].
pub fn last_resources(cfg: &tandem_core::config::Config) -> BTreeMap<String, String> {
    cfg.groups
        .iter()
        .filter_map(|g| Some((g.name.clone(), g.resources.last()?.name.clone())))
        .collect()
}

/// What the metrics keep between scrapes, fed by [`Tally::observe`].
pub struct Tally {
    inner: Mutex<Inner>,
}

struct Inner {
    /// The deadtime: the silence before a peer is declared dead, which a
    /// failover's duration includes.
    deadtime_ms: u64,
    /// Each group's last resource (its start completes the group).
    last_resource: BTreeMap<String, String>,
    /// When the last peer was declared dead here (unix ms).
    dead_at_ms: Option<u64>,
    /// Groups whose start began here since then, with the death they
    /// follow (unix ms).
    starting: BTreeMap<String, u64>,
    fence_attempts: Family<Labels, Counter>,
    failover: Histogram,
}

impl Tally {
    /// A tally for a cluster with `deadtime_ms`, whose groups end with
    /// the resources `last_resource` names (group -> resource).
    pub fn new(deadtime_ms: u64, last_resource: BTreeMap<String, String>) -> Tally {
        Tally {
            inner: Mutex::new(Inner {
                deadtime_ms,
                last_resource,
                dead_at_ms: None,
                starting: BTreeMap::new(),
                fence_attempts: Family::default(),
                failover: Histogram::new(FAILOVER_BUCKETS_S),
            }),
        }
    }

    /// The groups changed (a configuration change): the resources that
    /// complete them from now on.
    pub fn set_groups(&self, last_resource: BTreeMap<String, String>) {
        if let Ok(mut i) = self.inner.lock() {
            i.last_resource = last_resource;
        }
    }

    /// Takes one event, logged at `at_unix_ms`.
    ///
    /// A failover, as this node sees it: a peer is declared dead, then a
    /// group's start begins here within [`FAILOVER_WINDOW_MS`], and its
    /// last resource starts. Its duration is the deadtime (the silence
    /// that declared the peer dead) plus the time from the declaration to
    /// that last start: the service's outage, as the cluster can know it.
    pub fn observe(&self, at_unix_ms: u64, event: &AgentEvent) {
        let Ok(mut t) = self.inner.lock() else { return };
        match event {
            AgentEvent::NodeDead { .. } => t.dead_at_ms = Some(at_unix_ms),
            AgentEvent::ActionBegun {
                group,
                action: crate::event::Action::Start,
                ..
            } => {
                if let Some(dead) = t
                    .dead_at_ms
                    .filter(|d| at_unix_ms.saturating_sub(*d) <= FAILOVER_WINDOW_MS)
                {
                    if t.starting.len() < MAX_TRACKED {
                        t.starting.entry(group.clone()).or_insert(dead);
                    }
                }
            }
            AgentEvent::Started { group, resource } => {
                if t.last_resource.get(group) != Some(resource) {
                    return;
                }
                if let Some(dead) = t.starting.remove(group) {
                    let ms = t.deadtime_ms + at_unix_ms.saturating_sub(dead);
                    t.failover.observe(ms as f64 / 1000.0);
                }
            }
            AgentEvent::ActionFailed { group, .. } | AgentEvent::GroupFailed { group, .. } => {
                // A failed start is not a failover's end; the next start
                // after another death may be.
                t.starting.remove(group);
            }
            AgentEvent::FenceDone {
                node, power_on, ok, ..
            } => {
                let result = if *ok { "ok" } else { "failed" };
                let action = if *power_on { "on" } else { "off" };
                t.fence_attempts
                    .get_or_create(&vec![
                        ("node".into(), node.clone()),
                        ("action".into(), action.into()),
                        ("result".into(), result.into()),
                    ])
                    .inc();
            }
            _ => {}
        }
    }
}

/// A gauge family registered under `name` with `help`.
fn gauges(reg: &mut Registry, name: &str, help: &str) -> Family<Labels, Gauge> {
    let f = Family::<Labels, Gauge>::default();
    reg.register(name, help, f.clone());
    f
}

/// A counter family registered under `name` with `help` (and `unit`, if
/// any: it names the family's unit suffix).
fn counters(
    reg: &mut Registry,
    name: &str,
    help: &str,
    unit: Option<Unit>,
) -> Family<Labels, Counter> {
    let f = Family::<Labels, Counter>::default();
    match unit {
        Some(u) => reg.register_with_unit(name, help, u, f.clone()),
        None => reg.register(name, help, f.clone()),
    }
    f
}

/// A histogram's sum (seconds), count, and per bucket its upper bound
/// (seconds, `f64::MAX` for +Inf) and samples (not cumulative).
type Counts = (f64, u64, Vec<(f64, u64)>);

/// A histogram counted elsewhere (the core's heartbeat round trips per
/// link), encoded as it stands at the scrape.
#[derive(Debug, Default)]
struct CountedHistogram {
    inner: Mutex<Counts>,
}

impl CountedHistogram {
    fn set_rtt(&self, r: &tandem_core::link_rtt::RttStats) {
        let bounds = tandem_core::link_rtt::BUCKETS_MS
            .iter()
            .map(|ms| *ms as f64 / 1000.0)
            .chain([f64::MAX]);
        let buckets = bounds
            .zip(r.buckets.iter().copied().chain(std::iter::repeat(0)))
            .collect();
        if let Ok(mut g) = self.inner.lock() {
            *g = (r.sum_ms as f64 / 1000.0, r.count, buckets);
        }
    }
}

impl prometheus_client::metrics::TypedMetric for CountedHistogram {
    const TYPE: prometheus_client::metrics::MetricType =
        prometheus_client::metrics::MetricType::Histogram;
}

impl prometheus_client::encoding::EncodeMetric for CountedHistogram {
    fn encode(
        &self,
        mut encoder: prometheus_client::encoding::MetricEncoder,
    ) -> Result<(), std::fmt::Error> {
        let g = self.inner.lock().map_err(|_| std::fmt::Error)?;
        encoder.encode_histogram::<prometheus_client::encoding::NoLabelSet>(g.0, g.1, &g.2, None)
    }

    fn metric_type(&self) -> prometheus_client::metrics::MetricType {
        <Self as prometheus_client::metrics::TypedMetric>::TYPE
    }
}

fn labels(pairs: &[(&str, &str)]) -> Labels {
    pairs
        .iter()
        .map(|(k, v)| (k.to_string(), label_safe(v)))
        .collect()
}

/// A label value the text format carries as written: the encoder does not
/// escape quotes, backslashes or newlines, and an alert's recipient (free
/// text) may hold any.
fn label_safe(v: &str) -> String {
    v.chars()
        .map(|c| match c {
            '"' => '\'',
            '\\' => '/',
            c if c.is_control() => ' ',
            c => c,
        })
        .collect()
}

/// A state's word as status writes it in JSON (`"online"`).
fn word<T: serde::Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        Ok(other) => other.to_string(),
        Err(_) => "unknown".into(),
    }
}

fn set(f: &Family<Labels, Gauge>, l: &[(&str, &str)], v: i64) {
    f.get_or_create(&labels(l)).set(v);
}

/// The metrics of `status` (None: the agent's loop did not answer) and
/// `tally`, in Prometheus' text format.
pub fn render(status: Option<&Status>, tally: &Tally) -> String {
    let mut reg = Registry::with_prefix("tandem");
    let answered = Gauge::<i64>::default();
    answered.set(i64::from(status.is_some()));
    reg.register(
        "status_answered",
        "1 when the agent's loop answered this scrape's status request (0: only the tally below)",
        answered,
    );
    if let Some(status) = status {
        register_status(&mut reg, status);
    }
    if let Ok(t) = tally.inner.lock() {
        reg.register(
            "fence_attempts",
            "Fencing by this node, by target, action and result",
            t.fence_attempts.clone(),
        );
        reg.register_with_unit(
            "failover",
            "Failovers taken over by this node: the deadtime plus the time from declaring the holder dead to the group's last resource started here",
            Unit::Seconds,
            t.failover.clone(),
        );
    }
    let mut out = String::new();
    // Writing to a String cannot fail.
    let _ = encode(&mut out, &reg);
    to_classic(&out)
}

/// Prometheus' classic text format (0.0.4) from the OpenMetrics text the
/// encoder writes: what every scraper and `promtool check metrics` read.
/// A counter's family is named with its `_total`, as its samples are;
/// `# UNIT` and `# EOF`, which the classic format lacks, are dropped.
fn to_classic(openmetrics: &str) -> String {
    let counters: std::collections::BTreeSet<&str> = openmetrics
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE ")?.strip_suffix(" counter"))
        .collect();
    let mut out = String::with_capacity(openmetrics.len());
    for line in openmetrics.lines() {
        if line.starts_with("# UNIT ") || line == "# EOF" {
            continue;
        }
        let renamed = ["# HELP ", "# TYPE "].iter().find_map(|p| {
            let rest = line.strip_prefix(p)?;
            let (name, tail) = rest.split_once(' ')?;
            counters
                .contains(name)
                .then(|| format!("{p}{name}_total {tail}"))
        });
        out.push_str(renamed.as_deref().unwrap_or(line));
        out.push('\n');
    }
    out
}

fn register_status(reg: &mut Registry, status: &Status) {
    let reg = &mut *reg;
    let me = status.node.as_str();

    let node_state = gauges(
        reg,
        "node_state",
        "1 for each node's state as this node sees it (this node: online)",
    );
    let nodes = gauges(
        reg,
        "nodes",
        "Nodes by state as this node sees them, itself included",
    );
    let mut by_state: BTreeMap<String, i64> = [
        PeerState::Online,
        PeerState::Offline,
        PeerState::Standby,
        PeerState::Fenced,
        PeerState::Left,
        PeerState::Unknown,
    ]
    .iter()
    .map(|s| (word(s), 0))
    .collect();
    let mine = if status.standby.iter().any(|n| n == me) {
        PeerState::Standby
    } else {
        PeerState::Online
    };
    *by_state.entry(word(&mine)).or_default() += 1;
    set(&node_state, &[("node", me), ("state", &word(&mine))], 1);
    let link_up = gauges(
        reg,
        "link_up",
        "1 while heartbeats arrive from the peer on the link",
    );
    let rtt = Family::<Labels, CountedHistogram>::default();
    reg.register_with_unit(
        "link_heartbeat_rtt",
        "Heartbeat round trips to the peer on the link, out and back on that link (1 ms resolution: the protocol's clock)",
        Unit::Seconds,
        rtt.clone(),
    );
    for p in &status.peers {
        let s = word(&p.state);
        *by_state.entry(s.clone()).or_default() += 1;
        set(&node_state, &[("node", &p.name), ("state", &s)], 1);
        for l in &p.links {
            let up = i64::from(l.state == LinkWord::Up);
            set(&link_up, &[("peer", &p.name), ("link", &l.link)], up);
            if let Some(r) = &l.rtt {
                rtt.get_or_create(&labels(&[("peer", &p.name), ("link", &l.link)]))
                    .set_rtt(r);
            }
        }
    }
    for (s, n) in &by_state {
        set(&nodes, &[("state", s)], *n);
    }

    let quorate = Gauge::<i64>::default();
    quorate.set(i64::from(status.quorum.quorate));
    reg.register(
        "quorate",
        "1 while this node's partition has quorum",
        quorate,
    );
    let votes = Gauge::<i64>::default();
    votes.set(i64::try_from(status.quorum.votes).unwrap_or(i64::MAX));
    reg.register(
        "quorum_votes",
        "Votes present in this node's partition",
        votes,
    );
    let expected = Gauge::<i64>::default();
    expected.set(i64::try_from(status.quorum.expected).unwrap_or(i64::MAX));
    reg.register(
        "quorum_expected_votes",
        "Votes of the whole cluster",
        expected,
    );
    let leader = gauges(reg, "leader", "1 for the leader this node knows");
    if let Some(l) = &status.agreement.leader {
        set(&leader, &[("node", l)], 1);
    }
    let term = Gauge::<i64>::default();
    term.set(i64::try_from(status.agreement.term).unwrap_or(i64::MAX));
    reg.register("term", "The agreement's current term", term);
    let uptime = Gauge::<f64, std::sync::atomic::AtomicU64>::default();
    uptime.set(status.uptime_ms as f64 / 1000.0);
    reg.register_with_unit(
        "uptime",
        "Time since this agent started",
        Unit::Seconds,
        uptime,
    );

    let group_state = gauges(
        reg,
        "group_state",
        "1 for each group's state as this node sees it",
    );
    let group_active = gauges(
        reg,
        "group_active",
        "1 for each node a group's resources may be active on",
    );
    let fail_count = gauges(
        reg,
        "fail_count",
        "A group's failures counted against its migration_threshold, by node",
    );
    let resource_state = gauges(
        reg,
        "resource_state",
        "1 for each of this node's resources' state",
    );
    for g in &status.groups {
        let state = g.state.to_string();
        let state = state.split(':').next().unwrap_or_default();
        set(&group_state, &[("group", &g.name), ("state", state)], 1);
        for n in &g.active_on {
            set(&group_active, &[("group", &g.name), ("node", n)], 1);
        }
        for (n, c) in &g.fail_counts {
            set(
                &fail_count,
                &[("group", &g.name), ("node", n)],
                i64::from(*c),
            );
        }
        for r in &g.resources {
            let s = r.state.to_string();
            let s = s.split(':').next().unwrap_or_default();
            set(
                &resource_state,
                &[
                    ("group", &g.name),
                    ("resource", &r.name),
                    ("kind", &r.kind),
                    ("node", me),
                    ("state", s),
                ],
                1,
            );
        }
    }

    let dropped = counters(
        reg,
        "dropped_packets",
        "Packets dropped on receipt, by reason",
        None,
    );
    for (why, n) in &status.dropped {
        dropped
            .get_or_create(&labels(&[("reason", why)]))
            .inc_by(*n);
    }

    let v_role = gauges(reg, "volume_role", "1 for this node's copy's role");
    let v_disk = gauges(
        reg,
        "volume_disk_state",
        "1 for this node's copy's disk state",
    );
    let v_conn = gauges(
        reg,
        "volume_connected",
        "1 while the replication link to the peer copy is connected",
    );
    let v_sync = Family::<Labels, Gauge<f64, std::sync::atomic::AtomicU64>>::default();
    reg.register(
        "volume_sync_ratio",
        "Share of a running sync done (1 when none runs)",
        v_sync.clone(),
    );
    let v_dirty = Family::<Labels, Gauge>::default();
    reg.register_with_unit(
        "volume_out_of_sync",
        "Data marked out of sync with the peer copy",
        Unit::Bytes,
        v_dirty.clone(),
    );
    let v_sent = counters(
        reg,
        "volume_resync_sent",
        "Data sent as sync source",
        Some(Unit::Bytes),
    );
    let v_recv = counters(
        reg,
        "volume_resync_received",
        "Data received as sync target",
        Some(Unit::Bytes),
    );
    let v_repl = counters(
        reg,
        "volume_writes_replicated",
        "Writes replicated to the peer copy",
        None,
    );
    let v_alone = counters(
        reg,
        "volume_writes_alone",
        "Writes done while not connected (marked for the next sync)",
        None,
    );
    for v in &status.volumes {
        let l = labels(&[("volume", &v.name)]);
        set(&v_role, &[("volume", &v.name), ("role", &v.role)], 1);
        set(
            &v_disk,
            &[("volume", &v.name), ("state", &word(&v.disk))],
            1,
        );
        let connected = word(&v.link).eq_ignore_ascii_case("connected");
        v_conn.get_or_create(&l).set(i64::from(connected));
        let ratio = v.sync.as_ref().map_or(1.0, |s| {
            if s.total_bytes == 0 {
                1.0
            } else {
                s.done_bytes as f64 / s.total_bytes as f64
            }
        });
        v_sync.get_or_create(&l).set(ratio);
        v_dirty
            .get_or_create(&l)
            .set(i64::try_from(v.dirty_bytes).unwrap_or(i64::MAX));
        v_sent
            .get_or_create(&l)
            .inc_by(v.counters.resync_bytes_sent);
        v_recv
            .get_or_create(&l)
            .inc_by(v.counters.resync_bytes_received);
        v_repl
            .get_or_create(&l)
            .inc_by(v.counters.writes_replicated);
        v_alone.get_or_create(&l).inc_by(v.counters.writes_alone);
    }

    let alerts = counters(
        reg,
        "alerts",
        "Alert deliveries by alert, recipient and result (sent, failed, dropped)",
        None,
    );
    for a in &status.alerts {
        for (result, n) in [
            ("sent", a.sent),
            ("failed", a.failed),
            ("dropped", a.dropped),
        ] {
            alerts
                .get_or_create(&labels(&[
                    ("alert", &a.alert),
                    ("recipient", &a.recipient),
                    ("result", result),
                ]))
                .inc_by(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::event::Action;

    fn started(group: &str, resource: &str) -> AgentEvent {
        AgentEvent::Started {
            group: group.into(),
            resource: resource.into(),
        }
    }

    fn begun(group: &str) -> AgentEvent {
        AgentEvent::ActionBegun {
            group: group.into(),
            resource: "ip".into(),
            action: Action::Start,
        }
    }

    fn histogram(t: &Tally) -> (u64, f64) {
        let text = render(None, t);
        let get = |name: &str| {
            text.lines()
                .find(|l| l.starts_with(name))
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|v| v.parse::<f64>().ok())
                .unwrap_or(f64::NAN)
        };
        (
            get("tandem_failover_seconds_count") as u64,
            get("tandem_failover_seconds_sum"),
        )
    }

    /// A failover is counted when a group's start follows a death and its
    /// last resource starts; a start with no death before it, or one that
    /// failed, is not.
    #[test]
    fn a_failover_is_the_deadtime_plus_the_takeover() {
        let groups = [("web".to_string(), "apache".to_string())].into();
        let t = Tally::new(300, groups);
        // A start with no death before it: the cluster's first start.
        t.observe(1_000, &begun("web"));
        t.observe(1_500, &started("web", "apache"));
        assert_eq!(histogram(&t).0, 0);
        // A death, then the takeover: 300 + 450 ms.
        t.observe(
            10_000,
            &AgentEvent::NodeDead {
                node: "n1".into(),
                never_seen: false,
            },
        );
        t.observe(10_100, &begun("web"));
        t.observe(10_300, &started("web", "ip"));
        assert_eq!(histogram(&t).0, 0, "not the last resource");
        t.observe(10_450, &started("web", "apache"));
        assert_eq!(histogram(&t), (1, 0.75));
        // A failed start ends the count: its later restart is recovery.
        t.observe(
            20_000,
            &AgentEvent::NodeDead {
                node: "n3".into(),
                never_seen: false,
            },
        );
        t.observe(20_100, &begun("web"));
        t.observe(
            20_200,
            &AgentEvent::GroupFailed {
                group: "web".into(),
                reason: "x".into(),
            },
        );
        t.observe(20_900, &started("web", "apache"));
        assert_eq!(histogram(&t).0, 1);
        // Past the window, a start is not a failover.
        t.observe(20_000 + FAILOVER_WINDOW_MS + 1, &begun("web"));
        t.observe(20_000 + FAILOVER_WINDOW_MS + 2, &started("web", "apache"));
        assert_eq!(histogram(&t).0, 1);
    }

    #[test]
    fn label_values_never_break_the_text_format() {
        assert_eq!(label_safe("a\"b\\c\nd"), "a'b/c d");
        assert_eq!(label_safe("/var/log/x.log"), "/var/log/x.log");
    }

    #[test]
    fn fence_attempts_are_counted_by_result() {
        let t = Tally::new(300, BTreeMap::new());
        for ok in [true, false, true] {
            t.observe(
                1,
                &AgentEvent::FenceDone {
                    node: "n2".into(),
                    power_on: false,
                    ok,
                    attempts: vec![],
                },
            );
        }
        let text = render(None, &t);
        assert!(
            text.contains(
                "tandem_fence_attempts_total{node=\"n2\",action=\"off\",result=\"ok\"} 2"
            ),
            "{text}"
        );
        assert!(
            text.contains(
                "tandem_fence_attempts_total{node=\"n2\",action=\"off\",result=\"failed\"} 1"
            ),
            "{text}"
        );
        assert!(
            text.contains("# TYPE tandem_fence_attempts_total counter\n"),
            "{text}"
        );
        assert!(
            !text.contains("# EOF") && !text.contains("# UNIT"),
            "{text}"
        );
    }
}
