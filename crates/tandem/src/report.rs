//! `tandem report`: one `.tar.gz` with every node's configuration
//! (secrets redacted), status, events, state and volume metadata and system
//! facts, gathered over the cluster's authenticated channel by the local
//! agent, node by node (progress on stderr), with a summary and an
//! analysis in the spirit of crm_report's `analysis.txt`: who lost quorum
//! when, which leaders were elected, which nodes died, which groups moved
//! where and why, fencing and failures.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tandem_agent::clock::format_utc;
use tandem_agent::control::Client;
use tandem_agent::event::AgentEvent;
use tandem_agent::node_report::NodeReport;
use tandem_agent::peer_service::NodeEvent;

/// What `analysis.txt` says of `events` (every node's, merged by time).
pub fn analysis(events: &[NodeEvent]) -> String {
    let mut o = String::new();
    let nodes: BTreeSet<&str> = events.iter().map(|e| e.node.as_str()).collect();
    let span = match (events.first(), events.last()) {
        (Some(a), Some(b)) => format!(
            " from {} to {}",
            format_utc(a.record.at_unix_ms),
            format_utc(b.record.at_unix_ms)
        ),
        _ => String::new(),
    };
    let _ = writeln!(
        o,
        "Analysis of {} events from {}{span}\n",
        events.len(),
        if nodes.is_empty() {
            "no node".to_string()
        } else {
            nodes.into_iter().collect::<Vec<_>>().join(", ")
        }
    );
    let line = |e: &NodeEvent, text: &str| {
        format!(
            "  {} {:<8} {text}\n",
            format_utc(e.record.at_unix_ms),
            e.node
        )
    };
    let mut quorum = String::new();
    let mut leaders = String::new();
    let mut deaths = String::new();
    let mut moves = String::new();
    let mut fencing = String::new();
    let mut failures = String::new();
    let mut seen_terms = BTreeSet::new();
    let mut seen_placements = BTreeSet::new();
    // (group, node) -> when its placement there was decided, to tell how
    // long its start took.
    let mut placed_at: BTreeMap<(String, String), u64> = BTreeMap::new();
    for e in events {
        let Some(ev) = &e.record.event else { continue };
        match ev {
            AgentEvent::Quorum {
                quorate,
                was,
                votes,
                expected,
                ..
            } if *was != Some(*quorate) && was.is_some() => {
                let what = if *quorate { "gained" } else { "LOST" };
                quorum.push_str(&line(
                    e,
                    &format!("quorum {what} ({votes} of {expected} votes)"),
                ));
            }
            AgentEvent::Leader { term, leader } if seen_terms.insert(*term) => {
                let who = leader.as_deref().unwrap_or("none");
                leaders.push_str(&line(e, &format!("term {term}: leader {who}")));
            }
            AgentEvent::NodeDead { node, .. } | AgentEvent::NodeLeft { node } => {
                deaths.push_str(&line(
                    e,
                    &format!(
                        "sees {node} {}",
                        if matches!(ev, AgentEvent::NodeLeft { .. }) {
                            "leave"
                        } else {
                            "dead"
                        }
                    ),
                ));
            }
            AgentEvent::NodeBack { node, .. } => {
                deaths.push_str(&line(e, &format!("sees {node} back (restarted)")))
            }
            AgentEvent::Placed {
                group, node, epoch, ..
            } if seen_placements.insert((group.clone(), *epoch)) => {
                moves.push_str(&line(e, &e.record.text));
                if let Some(n) = node {
                    placed_at.insert((group.clone(), n.clone()), e.record.at_unix_ms);
                }
            }
            AgentEvent::Started { group, resource } => {
                if let Some(at) = placed_at.remove(&(group.clone(), e.node.clone())) {
                    moves.push_str(&line(
                        e,
                        &format!(
                            "{group} starting here: {resource} started {:.3} s after the decision",
                            e.record.at_unix_ms.saturating_sub(at) as f64 / 1000.0
                        ),
                    ));
                }
            }
            AgentEvent::FenceBegun { .. }
            | AgentEvent::FenceDone { .. }
            | AgentEvent::FenceNotStarted { .. } => {
                fencing.push_str(&line(e, &e.record.text));
            }
            AgentEvent::ActionFailed { .. }
            | AgentEvent::GroupFailed { .. }
            | AgentEvent::StopCutShort { .. }
            | AgentEvent::StateDirFailed { .. }
            | AgentEvent::RecordDiverged { .. } => failures.push_str(&line(e, &e.record.text)),
            _ => {}
        }
    }
    for (title, body) in [
        ("Quorum changes", quorum),
        ("Leaders elected", leaders),
        ("Nodes lost and back", deaths),
        (
            "Placements (the leader's decisions, with its reasons) and starts",
            moves,
        ),
        ("Fencing", fencing),
        ("Failures", failures),
    ] {
        let _ = writeln!(o, "{title}:");
        if body.is_empty() {
            let _ = writeln!(o, "  none");
        } else {
            o.push_str(&body);
        }
        let _ = writeln!(o);
    }
    o
}

/// A name safe as one path component.
fn component(s: &str) -> String {
    let c: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if c.is_empty() || c == "." || c == ".." {
        "_".into()
    } else {
        c
    }
}

fn write(path: &Path, text: &str) -> Result<()> {
    if let Some(d) = path.parent() {
        std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
    }
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))
}

/// Writes one node's part under `dir`.
fn write_node(dir: &Path, r: &NodeReport) -> Result<()> {
    let d = dir.join(component(&r.node));
    write(&d.join("version.txt"), &format!("tandem {}\n", r.version))?;
    write(&d.join("config.toml"), &r.config)?;
    if let Some(s) = &r.status {
        write(&d.join("status.json"), &serde_json::to_string_pretty(s)?)?;
    }
    let mut jsonl = String::new();
    let mut log = String::new();
    for e in &r.events {
        jsonl.push_str(&serde_json::to_string(e)?);
        jsonl.push('\n');
        let _ = writeln!(log, "{} {}", format_utc(e.at_unix_ms), e.text);
    }
    write(&d.join("events.jsonl"), &jsonl)?;
    write(&d.join("events.log"), &log)?;
    let mut listing = String::new();
    for (p, len, mode) in &r.listing {
        let _ = writeln!(listing, "{mode:04o} {len:>12} {p}");
    }
    write(&d.join("state-dir-listing.txt"), &listing)?;
    for (rel, text) in &r.files {
        let safe: PathBuf = rel.split('/').map(component).collect();
        write(&d.join("state").join(safe), text)?;
    }
    for (name, text) in &r.facts {
        write(
            &d.join("facts").join(format!("{}.txt", component(name))),
            text,
        )?;
    }
    Ok(())
}

/// `tandem report`: gathers every node's part through the agent at
/// `socket` (its events since `since_ms` ago) and writes `out` (default:
/// `tandem-report-CLUSTER-TIME.tar.gz` here).
pub fn run(socket: &Path, since_ms: Option<u64>, out: Option<PathBuf>) -> Result<PathBuf> {
    let client = Client::new(socket);
    let status = client
        .status()
        .with_context(|| format!("asking the agent at {} for its status", socket.display()))?;
    let now = tandem_agent::clock::unix_ms();
    let since = since_ms.map(|s| now.saturating_sub(s));
    let stamp = format_utc(now).replace([' ', ':'], "-").replace('.', "-");
    let name = format!("tandem-report-{}-{stamp}", component(&status.cluster));
    let out = out.unwrap_or_else(|| PathBuf::from(format!("{name}.tar.gz")));
    let parent = match out.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    };
    let staging = parent.join(format!(".{name}.partial"));
    if staging.exists() {
        bail!(
            "{} exists: remove it, or wait for the report writing it",
            staging.display()
        );
    }
    let result = (|| -> Result<()> {
        let dir = staging.join(&name);
        std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
        let mut nodes: Vec<String> = vec![status.node.clone()];
        nodes.extend(
            status
                .peers
                .iter()
                .map(|p| p.name.clone())
                .filter(|n| n != "witness"),
        );
        let mut reports = Vec::new();
        let mut missing = Vec::new();
        for (i, node) in nodes.iter().enumerate() {
            eprint!(
                "tandem report: [{}/{}] {node}: collecting... ",
                i + 1,
                nodes.len()
            );
            match client.report(node, since) {
                Ok(r) => {
                    eprintln!(
                        "{} events, {} files, {} facts",
                        r.events.len(),
                        r.files.len(),
                        r.facts.len()
                    );
                    write_node(&dir, &r)?;
                    reports.push(r);
                }
                Err(e) => {
                    eprintln!("missing: {e}");
                    missing.push(format!("{node}: {e}"));
                }
            }
        }
        let mut merged: Vec<NodeEvent> = reports
            .iter()
            .flat_map(|r| {
                r.events.iter().map(|e| NodeEvent {
                    node: r.node.clone(),
                    record: e.clone(),
                })
            })
            .collect();
        merged.sort_by_key(|e| e.record.at_unix_ms);
        let mut all = String::new();
        for e in &merged {
            let _ = writeln!(
                all,
                "{} {:<8} {}",
                format_utc(e.record.at_unix_ms),
                e.node,
                e.record.text
            );
        }
        write(&dir.join("events.log"), &all)?;
        write(&dir.join("analysis.txt"), &analysis(&merged))?;
        let mut summary = String::new();
        let _ = writeln!(summary, "tandem report of cluster {}", status.cluster);
        let _ = writeln!(
            summary,
            "made {} UTC from node {} (tandem {})",
            format_utc(now),
            status.node,
            env!("CARGO_PKG_VERSION")
        );
        let _ = writeln!(
            summary,
            "events since: {}",
            since.map_or("all kept".to_string(), |s| format!("{} UTC", format_utc(s)))
        );
        let _ = writeln!(summary, "\nnodes collected:");
        for r in &reports {
            let _ = writeln!(
                summary,
                "  {} (tandem {}): {} events, {} state files, {} facts",
                r.node,
                r.version,
                r.events.len(),
                r.files.len(),
                r.facts.len()
            );
        }
        let _ = writeln!(summary, "\nnodes missing:");
        if missing.is_empty() {
            let _ = writeln!(summary, "  none");
        }
        for m in &missing {
            let _ = writeln!(summary, "  {m}");
        }
        let _ = writeln!(
            summary,
            "\nleader: {}, quorum: {} ({} of {} votes)",
            status.agreement.leader.as_deref().unwrap_or("none known"),
            if status.quorum.quorate { "yes" } else { "NO" },
            status.quorum.votes,
            status.quorum.expected
        );
        let _ = writeln!(summary, "\nSecrets are redacted: configurations as `tandem config show` writes them, and every node's own secrets scrubbed from what it sent. Keys, tokens and lease files are never collected.");
        let _ = writeln!(summary, "Files: analysis.txt, events.log (every node, merged), NODE/{{config.toml, status.json, events.log, events.jsonl, state/, state-dir-listing.txt, facts/}}");
        write(&dir.join("summary.txt"), &summary)?;
        let st = std::process::Command::new("tar")
            .arg("-czf")
            .arg(&out)
            .arg("-C")
            .arg(&staging)
            .arg(&name)
            .status()
            .context("running tar")?;
        if !st.success() {
            bail!("tar -czf {} failed ({st})", out.display());
        }
        // Every node's status, events and facts: for its maker alone.
        use std::os::unix::fs::PermissionsExt as _;
        std::fs::set_permissions(&out, std::fs::Permissions::from_mode(0o600))
            .with_context(|| format!("making {} private", out.display()))?;
        Ok(())
    })();
    let _ = std::fs::remove_dir_all(&staging);
    result?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_agent::status::EventRecord;

    fn ev(node: &str, at: u64, e: AgentEvent) -> NodeEvent {
        NodeEvent {
            node: node.into(),
            record: EventRecord {
                at_unix_ms: at,
                text: e.to_string(),
                event: Some(e),
            },
        }
    }

    #[test]
    fn the_analysis_tells_quorum_leaders_deaths_moves_and_starts() {
        let placed = |node: Option<&str>, epoch| AgentEvent::Placed {
            group: "web".into(),
            node: node.map(String::from),
            epoch,
            reason: Some("n1 cannot keep it (offline); n2 is next in preference".into()),
        };
        let events = vec![
            ev(
                "n2",
                1_000,
                AgentEvent::Leader {
                    term: 1,
                    leader: Some("n3".into()),
                },
            ),
            ev(
                "n3",
                1_001,
                AgentEvent::Leader {
                    term: 1,
                    leader: Some("n3".into()),
                },
            ),
            ev(
                "n2",
                2_000,
                AgentEvent::NodeDead {
                    node: "n1".into(),
                    never_seen: false,
                },
            ),
            ev(
                "n2",
                2_000,
                AgentEvent::Quorum {
                    quorate: true,
                    was: Some(true),
                    votes: 2,
                    expected: 3,
                    waiting_for_all: false,
                },
            ),
            ev("n2", 2_001, placed(None, 2)),
            ev("n3", 2_002, placed(None, 2)),
            ev("n3", 2_050, placed(Some("n2"), 3)),
            ev("n2", 2_051, placed(Some("n2"), 3)),
            ev(
                "n2",
                2_150,
                AgentEvent::Started {
                    group: "web".into(),
                    resource: "vip".into(),
                },
            ),
            ev(
                "n3",
                3_000,
                AgentEvent::Quorum {
                    quorate: false,
                    was: Some(true),
                    votes: 1,
                    expected: 3,
                    waiting_for_all: false,
                },
            ),
        ];
        let a = analysis(&events);
        assert!(a.starts_with("Analysis of 10 events from n2, n3"), "{a}");
        assert_eq!(a.matches("term 1: leader n3").count(), 1, "{a}");
        assert!(a.contains("n2       sees n1 dead"), "{a}");
        assert_eq!(
            a.matches("web stopped everywhere (epoch 2)").count(),
            1,
            "one line per decision: {a}"
        );
        assert!(
            a.contains("web placed on n2 (epoch 3): n1 cannot keep it (offline)"),
            "{a}"
        );
        assert!(
            a.contains("web starting here: vip started 0.100 s after the decision"),
            "{a}"
        );
        assert!(a.contains("n3       quorum LOST (1 of 3 votes)"), "{a}");
        assert!(
            !a.contains("quorum gained (2 of 3"),
            "a kept quorum is no change: {a}"
        );
        assert!(a.contains("Fencing:\n  none"), "{a}");
    }

    #[test]
    fn names_become_safe_path_components() {
        assert_eq!(component("n1"), "n1");
        assert_eq!(component("../x"), ".._x");
        assert_eq!(component(".."), "_");
        assert_eq!(component("a/b c"), "a_b_c");
    }
}
