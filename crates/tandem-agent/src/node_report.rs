//! What one node puts in `tandem report`: its configuration with secrets
//! redacted, its status, its events, its state and volume metadata, a
//! listing of its state directory, and system facts (kernel, addresses,
//! routes, versions). Gathered by the node itself, for the asking node,
//! over the cluster's authenticated channel ([`crate::peer_service`]).
//!
//! Only files known to hold no secret are copied (`state.json`, volume
//! metadata); the lease file (whose stop commands carry agents'
//! parameters), keys and tokens never are. Every piece is bounded.

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::status::EventRecord;

/// Largest file or command output kept.
pub const MAX_PIECE_BYTES: usize = 1 << 20;
/// Most events one node sends for a report.
pub const MAX_REPORT_EVENTS: usize = 5_000;
/// Limit on each fact's command.
const FACT_LIMIT: Duration = Duration::from_secs(3);

/// One node's part of a report.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct NodeReport {
    /// The node.
    pub node: String,
    /// Its `tandem` version.
    pub version: String,
    /// Its configuration as the agent runs it (`config show`: every
    /// default written, secrets redacted).
    pub config: String,
    /// Its status (`tandem status --json`), if its loop answered.
    pub status: Option<serde_json::Value>,
    /// Its kept events since the report's start.
    pub events: Vec<EventRecord>,
    /// Files of its state directory: (relative path, content).
    pub files: Vec<(String, String)>,
    /// Every file of its state directory: (relative path, bytes, mode).
    pub listing: Vec<(String, u64, u32)>,
    /// System facts: (name, what the command printed).
    pub facts: Vec<(String, String)>,
}

/// The commands whose output is a node's facts: (name, program, args).
const FACTS: &[(&str, &str, &[&str])] = &[
    ("uname", "uname", &["-a"]),
    ("os-release", "cat", &["/etc/os-release"]),
    ("uptime", "cat", &["/proc/uptime"]),
    ("ip-addr", "ip", &["-d", "address"]),
    ("ip-route", "ip", &["route", "show", "table", "all"]),
    ("ip-rule", "ip", &["rule"]),
    ("mounts", "cat", &["/proc/self/mounts"]),
    ("date", "date", &["-u", "+%Y-%m-%d %H:%M:%S.%N UTC"]),
    (
        "resource-agents",
        "dpkg-query",
        &["-W", "resource-agents", "fence-agents", "pacemaker-common"],
    ),
];

/// Whether `rel` (a path in the state directory) is copied: the state
/// file and volume metadata, nothing else.
pub fn copied(rel: &str) -> bool {
    rel == "state.json"
        || (rel.starts_with("volumes/") && rel.ends_with(".meta.json") && !rel[8..].contains('/'))
}

/// Gathers this node's part: `config` already redacted, `status` as the
/// loop answered, events of `state_dir` since `since_unix_ms`.
pub async fn gather(
    node: &str,
    config: String,
    status: Option<serde_json::Value>,
    state_dir: &Path,
    since_unix_ms: u64,
) -> NodeReport {
    let dir = state_dir.to_path_buf();
    let files = tokio::task::spawn_blocking(move || read_state_dir(&dir, since_unix_ms))
        .await
        .unwrap_or_default();
    let (events, files, listing) = files;
    let mut facts = Vec::new();
    // At once, each within FACT_LIMIT: the whole stays within it.
    let runs = FACTS
        .iter()
        .map(|(name, program, args)| async move { (name.to_string(), fact(program, args).await) });
    facts.extend(futures_util::future::join_all(runs).await);
    NodeReport {
        node: node.to_string(),
        version: env!("CARGO_PKG_VERSION").to_string(),
        config,
        status,
        events,
        files,
        listing,
        facts,
    }
}

/// `r` with every one of `secrets` replaced by the redaction mark,
/// wherever it appears (defence in depth: what is gathered is already
/// redacted where Tandem knows it).
pub fn scrub(r: NodeReport, secrets: &[String]) -> NodeReport {
    let (node, version) = (r.node.clone(), r.version.clone());
    crate::event::scrubbed(r, secrets).unwrap_or_else(|| NodeReport {
        node,
        version,
        config: "# withheld: the report could not be scrubbed of secrets\n".into(),
        ..NodeReport::default()
    })
}

/// What `program args` printed (its first [`MAX_PIECE_BYTES`]), with its
/// exit status if not 0, within [`FACT_LIMIT`]. Through tokio's process
/// API (its future is `Send`: a report may be asked over HTTP).
async fn fact(program: &str, args: &[&str]) -> String {
    let run = tokio::process::Command::new(program)
        .args(args)
        .stdin(std::process::Stdio::null())
        .kill_on_drop(true)
        .output();
    match tokio::time::timeout(FACT_LIMIT, run).await {
        Ok(Ok(out)) => {
            let mut t =
                String::from_utf8_lossy(&out.stdout[..out.stdout.len().min(MAX_PIECE_BYTES)])
                    .into_owned();
            if !out.status.success() {
                t.push_str(&format!(
                    "\n({}: {})",
                    out.status,
                    String::from_utf8_lossy(&out.stderr[..out.stderr.len().min(4096)]).trim()
                ));
            }
            t
        }
        Ok(Err(e)) => format!("({program} could not run: {e})"),
        Err(_) => format!(
            "({program} did not finish within {} s)",
            FACT_LIMIT.as_secs()
        ),
    }
}

type StateDirParts = (
    Vec<EventRecord>,
    Vec<(String, String)>,
    Vec<(String, u64, u32)>,
);

fn read_state_dir(dir: &Path, since_unix_ms: u64) -> StateDirParts {
    let events = crate::event_journal::read(dir, since_unix_ms, MAX_REPORT_EVENTS);
    let mut files = Vec::new();
    let mut listing = Vec::new();
    // Bounded: a state directory holds a few dozen files.
    let mut stack: Vec<PathBuf> = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(rd) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in rd.flatten().take(1_000) {
            let Ok(meta) = e.path().symlink_metadata() else {
                continue;
            };
            let Ok(rel) = e
                .path()
                .strip_prefix(dir)
                .map(|r| r.to_string_lossy().into_owned())
            else {
                continue;
            };
            if meta.is_dir() {
                if stack.len() < 64 {
                    stack.push(e.path());
                }
                continue;
            }
            use std::os::unix::fs::PermissionsExt as _;
            listing.push((rel.clone(), meta.len(), meta.permissions().mode() & 0o7777));
            if meta.is_file() && copied(&rel) && meta.len() <= MAX_PIECE_BYTES as u64 {
                if let Ok(text) = std::fs::read_to_string(e.path()) {
                    files.push((rel, text));
                }
            }
        }
    }
    listing.sort();
    files.sort();
    (events, files, listing)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_scrubbed_wherever_they_appear() {
        let r = NodeReport {
            node: "n1".into(),
            facts: vec![("x".into(), "login failed for pa\"ss-1234 on ipmi".into())],
            events: vec![EventRecord {
                at_unix_ms: 1,
                text: "stop failed: wrong password pa\"ss-1234".into(),
                event: None,
            }],
            ..NodeReport::default()
        };
        let s = scrub(r, &["pa\"ss-1234".to_string()]);
        let all = serde_json::to_string(&s).unwrap();
        assert!(!all.contains("ss-1234"), "{all}");
        assert!(s.facts[0].1.contains(tandem_core::config::REDACTED));
    }

    #[test]
    fn only_files_without_secrets_are_copied() {
        for yes in ["state.json", "volumes/data.meta.json"] {
            assert!(copied(yes), "{yes}");
        }
        for no in [
            "run/lease.json",
            "run/web.vip.pid",
            "volumes/data.bitmap",
            "volumes/x/y.meta.json",
            "events.jsonl",
            "cluster.key",
            "state.json.damaged",
        ] {
            assert!(!copied(no), "{no}");
        }
    }

    #[test]
    fn a_node_report_holds_its_state_events_listing_and_facts() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("state.json"), "{\"term\":3}").unwrap();
        std::fs::create_dir_all(dir.path().join("run")).unwrap();
        std::fs::write(
            dir.path().join("run/lease.json"),
            "OCF_RESKEY_passwd=hunter2",
        )
        .unwrap();
        let mut j = crate::event_journal::Journal::open(dir.path());
        let e = crate::event::AgentEvent::NodeOnline { node: "n2".into() };
        j.append(&EventRecord {
            at_unix_ms: 5,
            text: e.to_string(),
            event: Some(e),
        });
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        let r = rt.block_on(gather("n1", "[cluster]\n".into(), None, dir.path(), 0));
        assert_eq!(
            r.files,
            vec![("state.json".to_string(), "{\"term\":3}".to_string())]
        );
        assert!(r.listing.iter().any(|(p, _, _)| p == "run/lease.json"));
        assert_eq!(r.events.len(), 1);
        let uname = &r.facts.iter().find(|(n, _)| n == "uname").unwrap().1;
        assert!(uname.contains("Linux"), "{uname}");
        let all = serde_json::to_string(&r).unwrap();
        assert!(
            !all.contains("hunter2"),
            "the lease file's content is never copied"
        );
    }
}
