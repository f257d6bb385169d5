//! `tandem status` for people: the agent's typed status as text.

use std::fmt::Write as _;

use tandem_agent::status::{format_utc, LinkWord, Status};

/// The human-readable form of a node's status.
pub fn status(st: &Status) -> String {
    let mut o = String::new();
    let q = &st.quorum;
    let _ = writeln!(
        o,
        "cluster {}, node {} (incarnation {}, up {:.1} s)",
        st.cluster,
        st.node,
        st.incarnation,
        st.uptime_ms as f64 / 1000.0
    );
    let _ = writeln!(
        o,
        "quorum: {} ({} of {} votes, {} mode)",
        if q.quorate {
            "yes"
        } else {
            "NO — this node will not act"
        },
        q.votes,
        q.expected,
        q.mode.as_str()
    );
    if q.waiting_for_all {
        let _ = writeln!(
            o,
            "        (waiting to see every node once since start: wait_for_all)"
        );
    }
    let a = &st.agreement;
    let _ = writeln!(
        o,
        "record: leader {}, term {}, this node {}{}, commit index {}, config epoch {}{}",
        a.leader.as_deref().unwrap_or("none"),
        a.term,
        a.role.as_str(),
        if a.voter { "" } else { " (non-voter)" },
        a.commit_index,
        a.config_epoch,
        if a.voters_changing {
            " (a change of voters is being committed)"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "timing: heartbeat {} ms, deadtime {} ms",
        st.heartbeat_ms, st.deadtime_ms
    );
    let _ = writeln!(o, "nodes:");
    let _ = writeln!(o, "  {:<12} {:<8} links", st.node, "self");
    for p in &st.peers {
        let links: Vec<String> = p
            .links
            .iter()
            .map(|l| {
                let one_way = if l.state == LinkWord::Up && !l.hears_us {
                    "(one-way: it does not hear us)"
                } else {
                    ""
                };
                let rtt = match (&l.rtt, l.state) {
                    (Some(r), LinkWord::Up) if r.count > 0 => format!("({}ms)", r.last_ms),
                    _ => String::new(),
                };
                format!("{}={}{rtt}{one_way}", l.link, l.state.as_str())
            })
            .collect();
        let role = if p.voter { "" } else { " (non-voter)" };
        let _ = writeln!(
            o,
            "  {:<12} {:<8} {}{role}",
            p.name,
            p.state.as_str(),
            links.join(" ")
        );
    }
    for p in &st.protection {
        let _ = writeln!(o, "protection of {}: {}", p.node, p.note);
    }
    let dropped: Vec<String> = st
        .dropped
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(k, n)| format!("{k}={n}"))
        .collect();
    let _ = writeln!(
        o,
        "dropped packets: {}",
        if dropped.is_empty() {
            "none".to_string()
        } else {
            dropped.join(" ")
        }
    );
    if !st.recovery.is_empty() && !st.groups.is_empty() {
        let _ = writeln!(o, "recovery: {}", st.recovery);
    }
    if let Some(l) = &st.lease {
        let _ = writeln!(
            o,
            "lease: {}",
            if l.held {
                format!("held ({} ms left)", l.remaining_ms)
            } else {
                "none — this node runs no group".to_string()
            }
        );
    }
    if let Some(w) = &st.watchdog {
        let _ = match w.state.as_str() {
            "armed" | "starving" | "failed" => writeln!(
                o,
                "watchdog: {} {}{}: {}",
                w.device,
                w.state,
                w.last_fed_ms_ago
                    .map_or(String::new(), |t| format!(" (fed {t} ms ago)")),
                w.note
            ),
            _ => writeln!(o, "watchdog: {}", w.note),
        };
    }
    if !st.failed_links.is_empty() {
        let _ = writeln!(
            o,
            "ping monitor fails on links: {} (groups needing them leave this node)",
            st.failed_links.join(", ")
        );
    }
    if !st.volumes.is_empty() {
        let _ = writeln!(o, "volumes:");
        for line in crate::volume_cmd::render(&st.volumes, false).lines() {
            let _ = writeln!(o, "  {line}");
        }
    }
    if !st.alerts.is_empty() {
        let _ = writeln!(o, "alerts:");
        for a in &st.alerts {
            let to = if a.recipient.is_empty() {
                String::new()
            } else {
                format!(" -> {}", a.recipient)
            };
            let _ = write!(
                o,
                "  {}{to}: {} sent, {} failed, {} dropped",
                a.alert, a.sent, a.failed, a.dropped
            );
            match &a.last_error {
                Some(e) if a.failed > 0 => {
                    let _ = writeln!(o, " (last failure: {e})");
                }
                _ => {
                    let _ = writeln!(o);
                }
            }
        }
    }
    if !st.groups.is_empty() {
        let _ = writeln!(o, "groups:");
    }
    for g in &st.groups {
        let place = match (&g.placed_on, g.state) {
            (Some(n), st) => format!("{st} on {n}"),
            (None, _) => "stopped".to_string(),
        };
        let since = g
            .since_unix_ms
            .map(|t| format!(" since {}", format_utc(t)))
            .unwrap_or_default();
        let mut notes = Vec::new();
        if g.maintenance {
            notes.push("MAINTENANCE (unmanaged)".to_string());
        }
        if g.blocked {
            notes.push(format!(
                "BLOCKED after a failure (on_fail = block): nothing is started, stopped or moved until `tandem cleanup {}`",
                g.name
            ));
        }
        if let Some(p) = &g.pinned {
            notes.push(format!(
                "pinned to {p} by `tandem move` (`tandem move {} --clear` removes it)",
                g.name
            ));
        }
        if let Some(m) = &g.moving_to {
            notes.push(format!("failing over to {m}"));
        }
        let others: Vec<&String> = g
            .active_on
            .iter()
            .filter(|n| Some(*n) != g.placed_on.as_ref())
            .collect();
        if !others.is_empty() {
            notes.push(format!(
                "still active on {}",
                others
                    .iter()
                    .map(|s| s.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ));
        }
        if let Some(w) = &g.waiting {
            notes.push(w.clone());
        }
        let _ = writeln!(
            o,
            "  {:<12} {place}{since}{}",
            g.name,
            if notes.is_empty() {
                String::new()
            } else {
                format!(" ({})", notes.join("; "))
            }
        );
        for r in &g.resources {
            let _ = writeln!(o, "    {:<10} {:<8} {} here", r.name, r.kind, r.state);
            if let Some(d) = &r.detail {
                let _ = writeln!(o, "      {d}");
            }
        }
        for m in &g.monitors {
            let when = m
                .at_unix_ms
                .map(|t| format!(" at {}", format_utc(t)))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                "    monitor {:<10} {:<7} every {} ms: {}{when}",
                m.name, m.kind, m.interval_ms, m.last
            );
        }
        for (node, at, why) in &g.failures {
            let count = g.fail_counts.get(node).copied().unwrap_or(0);
            let _ = writeln!(
                o,
                "    failed on {node} ({count}x), last {}: {why}",
                format_utc(*at)
            );
        }
    }
    let c = &st.config;
    let _ = writeln!(
        o,
        "configuration: this node runs {}{}; key fingerprint {}",
        c.identity,
        if c.committed.is_empty() || c.committed == c.identity {
            " (the committed one)".to_string()
        } else {
            format!(", the cluster committed {}", c.committed)
        },
        c.key_fingerprint
    );
    if let Some(next) = &c.next {
        let _ = writeln!(
            o,
            "  config next: {next}: a change (`tandem config apply`) is under way; nothing moves until every node runs it"
        );
    }
    for d in &c.differing {
        if c.next.as_deref() == Some(d.identity.as_str()) {
            let _ = writeln!(o, "  {} switched to {}", d.node, d.identity);
            continue;
        }
        let which = if d.sections.is_empty() {
            String::new()
        } else {
            format!(" (differs in: {})", d.sections.join(", "))
        };
        let _ = writeln!(
            o,
            "  {} runs configuration {}, not the committed one{which}: it starts nothing new until the files agree",
            d.node, d.identity
        );
    }
    for u in &c.unauthenticated {
        let _ = writeln!(o, "  {u}");
    }
    if !st.fences.is_empty() {
        let _ = writeln!(o, "fence history:");
        for f in &st.fences {
            let what = match (f.action.as_str(), f.ok) {
                ("on", true) => "powered on",
                ("on", false) => "POWER ON FAILED",
                (_, true) => "fenced",
                (_, false) => "FENCING FAILED",
            };
            let _ = writeln!(o, "  {}  {} {what}", format_utc(f.at_unix_ms), f.node);
            for a in &f.attempts {
                // An attempt's first line, then the agent's output one
                // line per line beneath it.
                let mut lines = a.lines();
                if let Some(first) = lines.next() {
                    let _ = writeln!(o, "    {first}");
                }
                for l in lines {
                    let _ = writeln!(o, "      | {l}");
                }
            }
        }
    }
    if !st.events.is_empty() {
        let _ = writeln!(o, "recent events:");
        for e in &st.events {
            let _ = writeln!(o, "  {}  {}", format_utc(e.at_unix_ms), e.text);
        }
    }
    o
}
