//! Reads a probe log and tells what the client saw: every outage gap, and
//! every moment two different nodes answered for the same address
//! (dual-active). Pure: records in, report out.
//!
//! Rules:
//! - A **gap** is a maximal run of unanswered probes. It lasts from the last
//!   answered probe before it to the first answered probe after it (send
//!   times), which is what a client polling that often would experience. A
//!   gap at the very start or end of the log is marked open on that side.
//! - **Dual-active** is either
//!   1. one probe answered by two different responders, or
//!   2. a responder answering again after another responder took over, within
//!      `dual_window_ms` of its own previous answer (the pattern A, B, A). A
//!      clean handover is A then B only; coming back that fast means A never
//!      stopped — the client's ARP entry or a duplicate address flipped it.
//!      A genuine failback takes longer than the window (the old node has to
//!      be detected, restarted and the group moved), so it is not flagged.

use std::collections::BTreeMap;
use std::fmt;

/// Probe transport.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ProbeKind {
    /// One UDP datagram, answered with the responder's name.
    Udp,
    /// A TCP connect, after which the responder sends its name.
    Tcp,
}

impl ProbeKind {
    /// Name used in the log.
    pub fn as_str(self) -> &'static str {
        match self {
            ProbeKind::Udp => "udp",
            ProbeKind::Tcp => "tcp",
        }
    }
}

/// One line of the probe log: a reply, or a timeout when `responder` is None.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeRecord {
    /// When the probe was sent, in µs since the prober started.
    pub t_us: u64,
    /// UDP or TCP.
    pub kind: ProbeKind,
    /// Probe number (per kind).
    pub seq: u64,
    /// Who answered; None for a timeout.
    pub responder: Option<String>,
    /// Round-trip time of the answer.
    pub rtt_us: Option<u64>,
}

/// Tuning of the analysis.
#[derive(Debug, Clone, Copy)]
pub struct CheckOptions {
    /// A return to an earlier responder within this window is dual-active.
    pub dual_window_ms: u64,
}

impl Default for CheckOptions {
    fn default() -> Self {
        CheckOptions {
            dual_window_ms: 1_000,
        }
    }
}

/// An outage seen by the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Gap {
    /// Probe kind.
    pub kind: ProbeKind,
    /// Last answered probe before the gap (or the first probe, if open).
    pub from_us: u64,
    /// First answered probe after the gap (or the last probe, if open).
    pub to_us: u64,
    /// Unanswered probes in the gap.
    pub lost: usize,
    /// Who answered before.
    pub before: Option<String>,
    /// Who answered after.
    pub after: Option<String>,
}

impl Gap {
    /// Length in milliseconds.
    pub fn duration_ms(&self) -> f64 {
        (self.to_us - self.from_us) as f64 / 1000.0
    }

    /// True when the gap runs into the start or end of the log.
    pub fn is_open(&self) -> bool {
        self.before.is_none() || self.after.is_none()
    }
}

/// Why a dual-active instant was flagged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DualReason {
    /// One probe got answers from two responders.
    SameProbe,
    /// A, B, A within the window.
    Interleaved,
}

/// An interval during which two nodes were both answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DualActive {
    /// Probe kind.
    pub kind: ProbeKind,
    /// Start of the interval (µs).
    pub from_us: u64,
    /// End of the interval (µs).
    pub to_us: u64,
    /// The two responders.
    pub nodes: (String, String),
    /// How it was seen.
    pub reason: DualReason,
}

/// The analysis of one probe kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KindReport {
    /// Probes sent.
    pub probes: usize,
    /// Probes answered.
    pub answered: usize,
    /// Answers per responder.
    pub responders: BTreeMap<String, usize>,
    /// Every outage, in time order.
    pub gaps: Vec<Gap>,
    /// Every dual-active interval, in time order.
    pub dual_active: Vec<DualActive>,
}

impl KindReport {
    /// Longest gap in ms, 0 when none.
    pub fn max_gap_ms(&self) -> f64 {
        self.gaps.iter().map(Gap::duration_ms).fold(0.0, f64::max)
    }
}

/// The analysis of a whole log, per probe kind.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Report {
    /// Per kind; a kind with no probes is absent.
    pub kinds: BTreeMap<ProbeKind, KindReport>,
}

impl Report {
    /// All dual-active intervals of every kind.
    pub fn dual_active(&self) -> impl Iterator<Item = &DualActive> {
        self.kinds.values().flat_map(|k| k.dual_active.iter())
    }

    /// The report of one kind (empty when it was not probed).
    pub fn kind(&self, kind: ProbeKind) -> KindReport {
        self.kinds.get(&kind).cloned().unwrap_or_default()
    }
}

/// One probe with all its answers.
struct Probe {
    t_us: u64,
    responders: Vec<String>,
}

/// Analyses a probe log.
pub fn analyze(records: &[ProbeRecord], opts: CheckOptions) -> Report {
    let mut by_kind: BTreeMap<ProbeKind, BTreeMap<u64, Probe>> = BTreeMap::new();
    for r in records {
        let p = by_kind
            .entry(r.kind)
            .or_default()
            .entry(r.seq)
            .or_insert(Probe {
                t_us: r.t_us,
                responders: Vec::new(),
            });
        if let Some(who) = &r.responder {
            if !p.responders.contains(who) {
                p.responders.push(who.clone());
            }
        }
    }
    let kinds = by_kind
        .into_iter()
        .map(|(kind, probes)| {
            let mut probes: Vec<Probe> = probes.into_values().collect();
            probes.sort_by_key(|p| p.t_us);
            (kind, analyze_kind(kind, &probes, opts))
        })
        .collect();
    Report { kinds }
}

fn analyze_kind(kind: ProbeKind, probes: &[Probe], opts: CheckOptions) -> KindReport {
    let mut rep = KindReport {
        probes: probes.len(),
        ..Default::default()
    };
    // Gaps.
    let mut last_ok: Option<(u64, String)> = None;
    let mut lost = 0usize;
    let mut gap_start = probes.first().map_or(0, |p| p.t_us);
    for p in probes {
        match p.responders.first() {
            None => {
                if lost == 0 {
                    gap_start = last_ok.as_ref().map_or(p.t_us, |(t, _)| *t);
                }
                lost += 1;
            }
            Some(who) => {
                rep.answered += 1;
                for r in &p.responders {
                    *rep.responders.entry(r.clone()).or_default() += 1;
                }
                if lost > 0 {
                    rep.gaps.push(Gap {
                        kind,
                        from_us: gap_start,
                        to_us: p.t_us,
                        lost,
                        before: last_ok.as_ref().map(|(_, w)| w.clone()),
                        after: Some(who.clone()),
                    });
                    lost = 0;
                }
                last_ok = Some((p.t_us, who.clone()));
            }
        }
    }
    if lost > 0 {
        let end = probes.last().map_or(gap_start, |p| p.t_us);
        rep.gaps.push(Gap {
            kind,
            from_us: gap_start,
            to_us: end,
            lost,
            before: last_ok.map(|(_, w)| w),
            after: None,
        });
    }
    // Dual-active, rule 1: one probe, two responders.
    for p in probes {
        if p.responders.len() > 1 {
            rep.dual_active.push(DualActive {
                kind,
                from_us: p.t_us,
                to_us: p.t_us,
                nodes: (p.responders[0].clone(), p.responders[1].clone()),
                reason: DualReason::SameProbe,
            });
        }
    }
    // Rule 2: runs of the same responder; A, ..., A again within the window.
    struct Run {
        who: String,
        first_us: u64,
        last_us: u64,
    }
    let mut runs: Vec<Run> = Vec::new();
    for p in probes {
        let Some(who) = p.responders.first() else {
            continue;
        };
        match runs.last_mut() {
            Some(r) if &r.who == who => r.last_us = p.t_us,
            _ => runs.push(Run {
                who: who.clone(),
                first_us: p.t_us,
                last_us: p.t_us,
            }),
        }
    }
    let window_us = opts.dual_window_ms * 1000;
    for j in 2..runs.len() {
        for i in (0..j - 1).rev() {
            if runs[j].first_us - runs[i].last_us > window_us {
                break;
            }
            if runs[i].who == runs[j].who {
                rep.dual_active.push(DualActive {
                    kind,
                    from_us: runs[i + 1].first_us,
                    to_us: runs[j].first_us,
                    nodes: (runs[j].who.clone(), runs[i + 1].who.clone()),
                    reason: DualReason::Interleaved,
                });
                break;
            }
        }
    }
    rep.dual_active.sort_by_key(|d| d.from_us);
    rep
}

impl fmt::Display for Report {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (kind, k) in &self.kinds {
            let who: Vec<String> = k
                .responders
                .iter()
                .map(|(w, n)| format!("{w}={n}"))
                .collect();
            writeln!(
                f,
                "{}: {} probes, {} answered ({}), {} gap(s), longest {:.1} ms, {} dual-active",
                kind.as_str(),
                k.probes,
                k.answered,
                who.join(" "),
                k.gaps.len(),
                k.max_gap_ms(),
                k.dual_active.len()
            )?;
            for g in &k.gaps {
                let side = |s: &Option<String>| s.clone().unwrap_or_else(|| "(log edge)".into());
                writeln!(
                    f,
                    "  gap {:>9.1} ms at {:.3} s: {} probes lost, {} -> {}",
                    g.duration_ms(),
                    g.from_us as f64 / 1e6,
                    g.lost,
                    side(&g.before),
                    side(&g.after)
                )?;
            }
            for d in &k.dual_active {
                writeln!(
                    f,
                    "  DUAL-ACTIVE {} and {} from {:.3} s to {:.3} s ({:?})",
                    d.nodes.0,
                    d.nodes.1,
                    d.from_us as f64 / 1e6,
                    d.to_us as f64 / 1e6,
                    d.reason
                )?;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A UDP log from a compact script: one char per 5 ms probe; `.` is a
    /// timeout, a letter the responder (`a` = n1, `b` = n2, `c` = n3), and
    /// `x` a probe answered by both n1 and n2.
    fn log(script: &str) -> Vec<ProbeRecord> {
        let mut out = Vec::new();
        for (i, ch) in script.chars().enumerate() {
            let t_us = i as u64 * 5_000;
            let rec = |who: Option<&str>| ProbeRecord {
                t_us,
                kind: ProbeKind::Udp,
                seq: i as u64,
                responder: who.map(String::from),
                rtt_us: who.map(|_| 300),
            };
            match ch {
                '.' => out.push(rec(None)),
                'a' => out.push(rec(Some("n1"))),
                'b' => out.push(rec(Some("n2"))),
                'c' => out.push(rec(Some("n3"))),
                'x' => {
                    out.push(rec(Some("n1")));
                    out.push(rec(Some("n2")));
                }
                _ => unreachable!(),
            }
        }
        out
    }

    fn udp(script: &str) -> KindReport {
        analyze(&log(script), CheckOptions::default()).kind(ProbeKind::Udp)
    }

    #[test]
    fn no_outage_no_gap() {
        let r = udp("aaaaaaaaaa");
        assert_eq!((r.probes, r.answered), (10, 10));
        assert!(r.gaps.is_empty());
        assert!(r.dual_active.is_empty());
    }

    #[test]
    fn clean_failover_is_one_gap_measured_between_answers() {
        let r = udp("aaaa......bbbb");
        assert_eq!(r.gaps.len(), 1);
        let g = &r.gaps[0];
        // last answer at probe 3 (15 ms), first new answer at probe 10 (50 ms)
        assert_eq!((g.from_us, g.to_us, g.lost), (15_000, 50_000, 6));
        assert_eq!(g.duration_ms(), 35.0);
        assert_eq!(
            (g.before.as_deref(), g.after.as_deref()),
            (Some("n1"), Some("n2"))
        );
        assert!(!g.is_open());
        assert!(r.dual_active.is_empty());
    }

    #[test]
    fn handover_without_any_loss_is_not_dual_active() {
        let r = udp("aaaaabbbbb");
        assert!(r.gaps.is_empty());
        assert!(r.dual_active.is_empty());
    }

    #[test]
    fn open_gaps_at_both_edges() {
        let r = udp("...aaa...");
        assert_eq!(r.gaps.len(), 2);
        assert!(r.gaps[0].before.is_none() && r.gaps[0].after.as_deref() == Some("n1"));
        assert_eq!((r.gaps[0].from_us, r.gaps[0].to_us), (0, 15_000));
        assert!(r.gaps[1].after.is_none());
        assert_eq!((r.gaps[1].from_us, r.gaps[1].to_us), (25_000, 40_000));
        assert!(r.gaps.iter().all(Gap::is_open));
    }

    #[test]
    fn all_timeouts_is_one_open_gap() {
        let r = udp(".....");
        assert_eq!(r.answered, 0);
        assert_eq!(r.gaps.len(), 1);
        assert_eq!(r.gaps[0].lost, 5);
    }

    #[test]
    fn empty_log_is_empty_report() {
        assert!(analyze(&[], CheckOptions::default()).kinds.is_empty());
    }

    #[test]
    fn single_lost_probes_are_separate_gaps() {
        let r = udp("aa.aa.aa");
        assert_eq!(r.gaps.len(), 2);
        assert!(r
            .gaps
            .iter()
            .all(|g| g.lost == 1 && g.duration_ms() == 10.0));
    }

    #[test]
    fn two_answers_to_one_probe_is_dual_active() {
        let r = udp("aaaxaaa");
        assert_eq!(r.dual_active.len(), 1);
        assert_eq!(r.dual_active[0].reason, DualReason::SameProbe);
        assert_eq!(r.dual_active[0].from_us, 15_000);
    }

    #[test]
    fn flip_back_within_window_is_dual_active() {
        let r = udp("aaaabbbbaaaa");
        assert_eq!(r.dual_active.len(), 1);
        let d = &r.dual_active[0];
        assert_eq!(d.reason, DualReason::Interleaved);
        assert_eq!(d.nodes, ("n1".to_string(), "n2".to_string()));
        assert_eq!((d.from_us, d.to_us), (20_000, 40_000));
    }

    #[test]
    fn flip_back_with_a_gap_inside_window_is_still_dual_active() {
        let r = udp("aaaa..bbbb..aaaa");
        assert_eq!(r.dual_active.len(), 1);
        assert_eq!(r.gaps.len(), 2);
    }

    #[test]
    fn failback_after_the_window_is_not_dual_active() {
        // n1, then n2 for 1.5 s (300 probes), then n1 again: a real failback.
        let script = format!("aaaa{}aaaa", "b".repeat(300));
        let r = udp(&script);
        assert!(r.dual_active.is_empty(), "{:?}", r.dual_active);
    }

    #[test]
    fn window_is_measured_from_the_returning_nodes_last_answer() {
        // n1's last answer at probe 3; n2 for 199 probes; n1 back at probe 203
        // = 1000 ms later: exactly the window, still flagged; one more probe
        // and it is not.
        let inside = udp(&format!("aaaa{}a", "b".repeat(199)));
        assert_eq!(inside.dual_active.len(), 1);
        let outside = udp(&format!("aaaa{}a", "b".repeat(200)));
        assert!(outside.dual_active.is_empty());
    }

    #[test]
    fn three_nodes_a_b_c_a_is_dual_active_between_a_and_b() {
        let r = udp("aaabbbcccaaa");
        assert_eq!(r.dual_active.len(), 1);
        assert_eq!(r.dual_active[0].nodes, ("n1".into(), "n2".into()));
    }

    #[test]
    fn failover_chain_a_b_c_is_clean() {
        let r = udp("aaa..bbb..ccc");
        assert!(r.dual_active.is_empty());
        assert_eq!(r.gaps.len(), 2);
    }

    #[test]
    fn kinds_are_analysed_separately() {
        let mut recs = log("aaaa");
        recs.push(ProbeRecord {
            t_us: 0,
            kind: ProbeKind::Tcp,
            seq: 0,
            responder: None,
            rtt_us: None,
        });
        recs.push(ProbeRecord {
            t_us: 5_000,
            kind: ProbeKind::Tcp,
            seq: 1,
            responder: Some("n2".into()),
            rtt_us: Some(1),
        });
        let rep = analyze(&recs, CheckOptions::default());
        assert!(rep.kind(ProbeKind::Udp).gaps.is_empty());
        assert_eq!(rep.kind(ProbeKind::Tcp).gaps.len(), 1);
        assert_eq!(rep.dual_active().count(), 0);
    }

    #[test]
    fn records_out_of_order_are_sorted_by_send_time() {
        let mut recs = log("aa..bb");
        recs.reverse();
        let r = analyze(&recs, CheckOptions::default()).kind(ProbeKind::Udp);
        assert_eq!(r.gaps.len(), 1);
        assert_eq!(r.gaps[0].lost, 2);
    }

    proptest! {
        #[test]
        fn gaps_account_for_every_lost_probe(script in "[.ab]{0,200}") {
            let r = udp(&script);
            let lost: usize = r.gaps.iter().map(|g| g.lost).sum();
            prop_assert_eq!(lost, script.matches('.').count());
            prop_assert_eq!(r.answered + lost, r.probes);
            for g in &r.gaps {
                prop_assert!(g.from_us <= g.to_us);
            }
        }

        #[test]
        fn one_responder_is_never_dual_active(script in "[.a]{0,200}") {
            prop_assert!(udp(&script).dual_active.is_empty());
        }
    }
}
