//! Alerts (`[[alert]]`): a program run for each event it selects, once per
//! recipient, with Pacemaker's `CRM_alert_*` variables (so that
//! Pacemaker's own alert agents, such as `alert_file.sh.sample`, run
//! unchanged) and Tandem's `TANDEM_*` ones.
//!
//! Each node alerts what it sees: node events (joined, lost) on every node
//! that sees them, fencing on the node that fenced, resource events on the
//! node that ran the action, as Pacemaker's nodes do.
//!
//! Delivery is ordered per recipient: one worker per recipient runs the
//! program for one alert at a time, each run bounded by the alert's
//! `timeout_ms`, from a queue of at most [`QUEUE`] alerts. A full queue
//! drops the new alert; failures (an exit other than 0, a timeout, a
//! program that cannot start) and drops are counted and shown in `tandem
//! status` and the metrics, with the last failure's words: never silent.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tandem_core::config::{AlertKind, AlertSpec, Config};
use tokio::sync::mpsc;

use crate::event::{Action, AgentEvent};

/// Alerts waiting per recipient; more are dropped (and counted).
pub const QUEUE: usize = 64;
/// Output of an alert program kept (for the failure's words).
const KEEP_OUTPUT: usize = 2048;
/// What `CRM_alert_version` says: the Pacemaker version whose alert
/// interface this follows (agents check it is set).
pub const CRM_ALERT_VERSION: &str = "2.1.5";

/// One alert: its kind and its variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Alert {
    /// What it is about.
    pub kind: AlertKind,
    /// `CRM_alert_*` and `TANDEM_*` variables, but for those set per run
    /// (recipient, sequence, timestamp).
    pub vars: Vec<(String, String)>,
}

/// The alert an event on node `node` makes, if any (pure: the rule
/// Pacemaker's alert variables follow for each event).
pub fn from_event(node: &str, event: &AgentEvent) -> Option<Alert> {
    let v = |k: &str, x: &str| (k.to_string(), x.to_string());
    let (kind, mut vars) = match event {
        AgentEvent::NodeOnline { node: peer } | AgentEvent::NodeBack { node: peer, .. } => (
            AlertKind::Node,
            vec![v("CRM_alert_node", peer), v("CRM_alert_desc", "member")],
        ),
        AgentEvent::NodeDead { node: peer, .. } | AgentEvent::NodeLeft { node: peer } => (
            AlertKind::Node,
            vec![v("CRM_alert_node", peer), v("CRM_alert_desc", "lost")],
        ),
        AgentEvent::FenceDone {
            node: target,
            power_on,
            ok,
            ..
        } => {
            let task = if *power_on { "on" } else { "off" };
            let result = if *ok { "OK" } else { "Error" };
            (
                AlertKind::Fencing,
                vec![
                    v("CRM_alert_node", target),
                    v("CRM_alert_task", task),
                    v("CRM_alert_rc", if *ok { "0" } else { "1" }),
                    v(
                        "CRM_alert_desc",
                        &format!("Operation {task} of {target} by {node} for tandem: {result}"),
                    ),
                ],
            )
        }
        AgentEvent::Started { group, resource } => resource_vars(group, resource, "start", None),
        AgentEvent::Stopped { group, resource } => resource_vars(group, resource, "stop", None),
        AgentEvent::ActionFailed {
            group,
            resource,
            action,
            reason,
        } => {
            let task = match action {
                Action::Start => "start",
                Action::Stop => "stop",
                Action::Probe => "monitor",
            };
            resource_vars(group, resource, task, Some(reason))
        }
        _ => return None,
    };
    if kind == AlertKind::Resource {
        vars.push(v("CRM_alert_node", node));
    }
    vars.push(v("CRM_alert_kind", kind.word()));
    vars.push(v("CRM_alert_version", CRM_ALERT_VERSION));
    vars.push(v("TANDEM_NODE", node));
    vars.push(v("TANDEM_EVENT", &event.to_string()));
    if let Ok(json) = serde_json::to_string(event) {
        vars.push(v("TANDEM_EVENT_JSON", &json));
    }
    Some(Alert { kind, vars })
}

fn resource_vars(
    group: &str,
    resource: &str,
    task: &str,
    failed: Option<&str>,
) -> (AlertKind, Vec<(String, String)>) {
    let v = |k: &str, x: &str| (k.to_string(), x.to_string());
    let (rc, desc, status) = match failed {
        None => ("0", "OK".to_string(), "0"),
        // PCMK_OCF_UNKNOWN_ERROR, and the status of an action that ran
        // to a result other than the one expected.
        Some(why) => ("1", why.to_string(), "0"),
    };
    (
        AlertKind::Resource,
        vec![
            // Unique on the node, as OCF_RESOURCE_INSTANCE is.
            v("CRM_alert_rsc", &format!("{group}-{resource}")),
            v("CRM_alert_task", task),
            v("CRM_alert_interval", "0"),
            v("CRM_alert_target_rc", "0"),
            v("CRM_alert_rc", rc),
            v("CRM_alert_status", status),
            v("CRM_alert_desc", &desc),
            v("TANDEM_GROUP", group),
            v("TANDEM_RESOURCE", resource),
        ],
    )
}

/// `unix_us` formatted by `format`, as Pacemaker formats
/// `CRM_alert_timestamp`: strftime's `%Y %m %d %H %M %S %s %%` (UTC), and
/// `%N` for the fraction of the second, `%3N`/`%03N`, `%6N`/`%06N`,
/// `%9N`/`%09N` for that many digits (`%N`: 9).
pub fn timestamp(format: &str, unix_us: u64) -> String {
    let secs = unix_us / 1_000_000;
    let (y, mo, d, h, mi, s) = crate::clock::civil(secs);
    let mut out = String::new();
    let mut chars = format.chars().peekable();
    while let Some(c) = chars.next() {
        if c != '%' {
            out.push(c);
            continue;
        }
        // An optional width before N: %3N, %03N, %6N...
        let mut width = String::new();
        while let Some(d) = chars.peek().filter(|d| d.is_ascii_digit()) {
            width.push(*d);
            chars.next();
        }
        match chars.next() {
            Some('Y') => out.push_str(&format!("{y:04}")),
            Some('m') => out.push_str(&format!("{mo:02}")),
            Some('d') => out.push_str(&format!("{d:02}")),
            Some('H') => out.push_str(&format!("{h:02}")),
            Some('M') => out.push_str(&format!("{mi:02}")),
            Some('S') => out.push_str(&format!("{s:02}")),
            Some('s') => out.push_str(&secs.to_string()),
            Some('%') => out.push('%'),
            Some('N') => {
                let digits: usize = width
                    .trim_start_matches('0')
                    .parse()
                    .unwrap_or(9)
                    .clamp(1, 9);
                let ns = format!("{:09}", (unix_us % 1_000_000) * 1_000);
                out.push_str(&ns[..digits]);
            }
            Some(other) => {
                out.push('%');
                out.push_str(&width);
                out.push(other);
            }
            None => out.push('%'),
        }
    }
    out
}

/// What one recipient's deliveries came to.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct AlertStatus {
    /// The alert's name.
    pub alert: String,
    /// The recipient (empty: none configured).
    pub recipient: String,
    /// Runs that exited 0.
    pub sent: u64,
    /// Runs that failed (exit other than 0, timeout, no program).
    pub failed: u64,
    /// Alerts dropped because the queue was full.
    pub dropped: u64,
    /// The last failure, in words.
    pub last_error: Option<String>,
}

struct Recipient {
    spec: Arc<AlertSpec>,
    tx: mpsc::Sender<(Alert, u64, u64)>,
    status: Arc<Mutex<AlertStatus>>,
}

/// A worker not started yet: its alert, recipient, queue and counts.
type Pending = (
    Arc<AlertSpec>,
    String,
    mpsc::Receiver<(Alert, u64, u64)>,
    Arc<Mutex<AlertStatus>>,
);

/// This node's alert recipients and their workers.
pub struct Alerts {
    recipients: Vec<Recipient>,
    /// Workers [`Alerts::spawn_workers`] starts.
    pending: Vec<Pending>,
    /// `CRM_alert_node_sequence`: one per alert made on this node.
    sequence: u64,
    node: String,
}

impl Alerts {
    /// One queue per recipient of every `[[alert]]`; alerts sent before
    /// [`Alerts::spawn_workers`] wait in them.
    pub fn new(cfg: &Config, node: &str) -> Alerts {
        let mut recipients = Vec::new();
        let mut pending = Vec::new();
        for a in &cfg.alerts {
            let spec = Arc::new(a.clone());
            let names: Vec<String> = if a.recipients.is_empty() {
                vec![String::new()]
            } else {
                a.recipients.clone()
            };
            for r in names {
                let (tx, rx) = mpsc::channel(QUEUE);
                let status = Arc::new(Mutex::new(AlertStatus {
                    alert: a.name.clone(),
                    recipient: r.clone(),
                    ..AlertStatus::default()
                }));
                pending.push((spec.clone(), r, rx, status.clone()));
                recipients.push(Recipient {
                    spec: spec.clone(),
                    tx,
                    status,
                });
            }
        }
        Alerts {
            recipients,
            pending,
            sequence: 0,
            node: node.to_string(),
        }
    }

    /// Starts the workers, as local tasks (inside the agent's `LocalSet`:
    /// they run programs through [`crate::child::run`]).
    pub fn spawn_workers(&mut self) {
        for (spec, recipient, rx, status) in self.pending.drain(..) {
            tokio::task::spawn_local(deliver(spec, recipient, rx, status));
        }
    }

    /// Queues the alert `event` makes (if any) for every recipient whose
    /// alert selects its kind; a full queue drops it there (counted).
    pub fn send(&mut self, at_unix_us: u64, event: &AgentEvent) {
        if self.recipients.is_empty() {
            return;
        }
        let Some(alert) = from_event(&self.node, event) else {
            return;
        };
        self.sequence += 1;
        for r in &self.recipients {
            if !r.spec.kinds.contains(&alert.kind) {
                continue;
            }
            if r.tx
                .try_send((alert.clone(), self.sequence, at_unix_us))
                .is_err()
            {
                if let Ok(mut s) = r.status.lock() {
                    s.dropped += 1;
                }
            }
        }
    }

    /// Every recipient's counts.
    pub fn status(&self) -> Vec<AlertStatus> {
        self.recipients
            .iter()
            .filter_map(|r| r.status.lock().ok().map(|s| s.clone()))
            .collect()
    }
}

/// One recipient's worker: its alerts in order, one run at a time.
async fn deliver(
    spec: Arc<AlertSpec>,
    recipient: String,
    mut rx: mpsc::Receiver<(Alert, u64, u64)>,
    status: Arc<Mutex<AlertStatus>>,
) {
    let program: PathBuf = spec.path.clone();
    let limit = Duration::from_millis(spec.timeout_ms);
    while let Some((alert, sequence, at_us)) = rx.recv().await {
        let mut env: BTreeMap<String, String> = alert.vars.into_iter().collect();
        env.insert("CRM_alert_recipient".into(), recipient.clone());
        env.insert("CRM_alert_node_sequence".into(), sequence.to_string());
        env.insert(
            "CRM_alert_timestamp".into(),
            timestamp(&spec.timestamp_format, at_us),
        );
        env.insert(
            "CRM_alert_timestamp_epoch".into(),
            (at_us / 1_000_000).to_string(),
        );
        env.insert(
            "CRM_alert_timestamp_usec".into(),
            (at_us % 1_000_000).to_string(),
        );
        let env: Vec<(String, String)> = env.into_iter().collect();
        let failure = match crate::child::run(&program, &[], &env, None, limit, KEEP_OUTPUT).await {
            Ok(ran) if ran.code == Some(0) => None,
            Ok(ran) => Some(format!(
                "{} exited {}: {}",
                program.display(),
                ran.code
                    .map_or("by a signal".to_string(), |c| c.to_string()),
                String::from_utf8_lossy(&ran.stderr).trim()
            )),
            Err(e) => Some(format!("{}: {e}", program.display())),
        };
        let Ok(mut s) = status.lock() else { continue };
        match failure {
            None => s.sent += 1,
            Some(why) => {
                s.failed += 1;
                s.last_error = Some(why);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn get<'a>(a: &'a Alert, k: &str) -> Option<&'a str> {
        a.vars.iter().find(|(x, _)| x == k).map(|(_, v)| v.as_str())
    }

    /// Each event that alerts, with the variables Pacemaker's agents read.
    #[test]
    fn events_become_pacemakers_alert_variables() {
        let a = from_event(
            "n1",
            &AgentEvent::NodeDead {
                node: "n2".into(),
                never_seen: false,
            },
        )
        .unwrap();
        assert_eq!(a.kind, AlertKind::Node);
        assert_eq!(get(&a, "CRM_alert_kind"), Some("node"));
        assert_eq!(get(&a, "CRM_alert_node"), Some("n2"));
        assert_eq!(get(&a, "CRM_alert_desc"), Some("lost"));
        assert_eq!(get(&a, "CRM_alert_version"), Some(CRM_ALERT_VERSION));
        assert_eq!(get(&a, "TANDEM_NODE"), Some("n1"));
        let a = from_event("n1", &AgentEvent::NodeOnline { node: "n3".into() }).unwrap();
        assert_eq!(get(&a, "CRM_alert_desc"), Some("member"));

        let a = from_event(
            "n1",
            &AgentEvent::FenceDone {
                node: "n2".into(),
                power_on: false,
                ok: true,
                attempts: vec![],
            },
        )
        .unwrap();
        assert_eq!(a.kind, AlertKind::Fencing);
        assert_eq!(
            get(&a, "CRM_alert_desc"),
            Some("Operation off of n2 by n1 for tandem: OK")
        );
        assert_eq!(
            (get(&a, "CRM_alert_task"), get(&a, "CRM_alert_rc")),
            (Some("off"), Some("0"))
        );

        let a = from_event(
            "n3",
            &AgentEvent::Started {
                group: "web".into(),
                resource: "vip".into(),
            },
        )
        .unwrap();
        assert_eq!(a.kind, AlertKind::Resource);
        for (k, want) in [
            ("CRM_alert_rsc", "web-vip"),
            ("CRM_alert_node", "n3"),
            ("CRM_alert_task", "start"),
            ("CRM_alert_interval", "0"),
            ("CRM_alert_target_rc", "0"),
            ("CRM_alert_rc", "0"),
            ("CRM_alert_desc", "OK"),
            ("TANDEM_GROUP", "web"),
        ] {
            assert_eq!(get(&a, k), Some(want), "{k}");
        }
        let a = from_event(
            "n3",
            &AgentEvent::ActionFailed {
                group: "web".into(),
                resource: "vip".into(),
                action: Action::Probe,
                reason: "probe exited 1".into(),
            },
        )
        .unwrap();
        assert_eq!(
            (get(&a, "CRM_alert_task"), get(&a, "CRM_alert_rc")),
            (Some("monitor"), Some("1"))
        );
        assert_eq!(get(&a, "CRM_alert_desc"), Some("probe exited 1"));
        let json = get(&a, "TANDEM_EVENT_JSON").unwrap();
        assert!(json.contains("\"kind\":\"action_failed\""), "{json}");
        // What does not alert.
        assert!(from_event("n1", &AgentEvent::AgentStopping).is_none());
    }

    #[test]
    fn timestamps_format_as_pacemakers() {
        // 2026-11-30 21:05:09.123456 UTC
        let us = 1_796_072_709_123_456;
        assert_eq!(timestamp("%H:%M:%S.%06N", us), "21:05:09.123456");
        assert_eq!(
            timestamp("%Y-%m-%d %H:%M:%S.%3N", us),
            "2026-11-30 21:05:09.123"
        );
        assert_eq!(timestamp("%s %N %% %q", us), "1796072709 123456000 % %q");
        assert_eq!(timestamp("trailing %", us), "trailing %");
    }
}
