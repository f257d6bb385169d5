//! `ocf`: an OCF resource agent (Resource Agent API 1.1), such as Debian's
//! `resource-agents` (`ocf:heartbeat:IPaddr2`), run unchanged. This file
//! holds its fields and checks, and the one rule that reads an agent's
//! exit code ([`outcome`]), exactly as the API and Pacemaker read it;
//! [`metadata`] reads what an agent says of itself.

pub mod metadata;

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Field, Fields, Kind, Spec};
use crate::config::values::Cidr;
use crate::group::{Bar, Outcome};

/// Where OCF agents live unless `ocf_root` says otherwise
/// (`$OCF_ROOT/resource.d/PROVIDER/TYPE`).
pub const DEFAULT_OCF_ROOT: &str = "/usr/lib/ocf";
/// Time between checks of a running agent (its `monitor`) unless
/// `check_interval_ms` says otherwise: the interval Debian's agents
/// advertise. Each check forks a shell script, so it is not the 500 ms of
/// the agent's own kinds.
pub const DEFAULT_OCF_CHECK_INTERVAL_MS: u64 = 10_000;
/// Shortest allowed time between checks.
pub const MIN_OCF_CHECK_INTERVAL_MS: u64 = 200;
/// Longest a parameter's value may be (the environment has limits).
pub const MAX_PARAM_BYTES: usize = 4096;

/// An OCF resource agent with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ocf {
    /// The agent, as written: `ocf:PROVIDER:TYPE`.
    pub agent: String,
    /// Its parameters, passed as `OCF_RESKEY_<name>` (a value whose name
    /// says it is a credential is written redacted).
    #[serde(serialize_with = "super::redacted_map")]
    pub params: BTreeMap<String, String>,
    /// `OCF_ROOT`.
    pub ocf_root: PathBuf,
    /// Time between checks (`monitor`) while it runs.
    pub check_interval_ms: u64,
    /// `OCF_CHECK_LEVEL` of those checks (None: the agent's default, 0).
    pub check_level: Option<u32>,
    /// Runs promoted where its group runs: `promote` after `start`,
    /// `demote` before `stop`, and running means running promoted (exit
    /// 8). One instance, on the group's node: a promotable clone with a
    /// promoted and unpromoted copies needs clones, which Tandem has not.
    pub promotable: bool,
    /// Calls the agent's `notify` around its own start, promote, demote
    /// and stop, with Pacemaker's `OCF_RESKEY_CRM_meta_notify_*`
    /// variables (the only instance is this one).
    pub notify: bool,
    /// The floating address it holds, for the address agents
    /// ([`ADDRESS_AGENTS`] with an `ip` parameter); not written back.
    #[serde(skip)]
    pub floating: Option<Cidr>,
    /// The link whose subnet holds that address; not written back.
    #[serde(skip)]
    pub link: Option<String>,
}

/// Agents whose `ip` parameter is a floating address, which the group then
/// needs a link for (its ping monitor moves the group when the link
/// fails), as for a resource of kind `ip`.
pub const ADDRESS_AGENTS: &[&str] = &["ocf:heartbeat:IPaddr2", "ocf:heartbeat:IPaddr"];

impl Ocf {
    /// The provider (`heartbeat` in `ocf:heartbeat:IPaddr2`).
    pub fn provider(&self) -> &str {
        self.agent.split(':').nth(1).unwrap_or_default()
    }

    /// The agent's type (`IPaddr2`).
    pub fn agent_type(&self) -> &str {
        self.agent.split(':').nth(2).unwrap_or_default()
    }

    /// The agent's program: `OCF_ROOT/resource.d/PROVIDER/TYPE`.
    pub fn program(&self) -> PathBuf {
        self.ocf_root
            .join("resource.d")
            .join(self.provider())
            .join(self.agent_type())
    }
}

/// Whether `part` may name a provider or an agent: no path separators and
/// no `..`, since it becomes part of a path the agent executes.
fn is_name(part: &str) -> bool {
    !part.is_empty()
        && part != "."
        && part != ".."
        && part
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_-.+".contains(c))
}

impl Kind for Ocf {
    const NAME: &'static str = "ocf";
    const SUMMARY: &'static str =
        "an OCF resource agent (Resource Agent API 1.1), e.g. Debian's resource-agents";
    const FIELDS: &'static [Field] = &[
        Field {
            name: "agent",
            doc: "the agent as `ocf:PROVIDER:TYPE`, e.g. \"ocf:heartbeat:IPaddr2\"",
            default: None,
        },
        Field {
            name: "params",
            doc: "the agent's parameters, e.g. { ip = \"192.0.2.10\", cidr_netmask = 24 }; `config validate` checks them against the agent's meta-data",
            default: Some("none"),
        },
        Field {
            name: "ocf_root",
            doc: "OCF_ROOT: the agents are in OCF_ROOT/resource.d/PROVIDER/TYPE",
            default: Some(DEFAULT_OCF_ROOT),
        },
        Field {
            name: "check_interval_ms",
            doc: "time between checks (`monitor`) while it runs",
            default: Some("10000"),
        },
        Field {
            name: "check_level",
            doc: "OCF_CHECK_LEVEL of those checks (the agent's depth: 0, 10, 20...)",
            default: Some("the agent's default (0)"),
        },
        Field {
            name: "promotable",
            doc: "run it promoted where the group runs: `promote` after `start`, `demote` before `stop`; running means exit 8 (one instance: no unpromoted copy elsewhere)",
            default: Some("false"),
        },
        Field {
            name: "notify",
            doc: "call the agent's `notify` before and after its own start, promote, demote and stop, with Pacemaker's OCF_RESKEY_CRM_meta_notify_* variables",
            default: Some("false"),
        },
    ];

    fn check(f: &mut Fields<'_>) -> Option<Ocf> {
        let agent = f.require::<String>("ocf", "agent", "agent = \"ocf:heartbeat:IPaddr2\"");
        let params = f.take::<BTreeMap<String, toml::Value>>("params");
        let root = f.take::<PathBuf>("ocf_root");
        let interval = f.take::<u64>("check_interval_ms");
        let level = f.take::<u32>("check_level");
        let promotable = f.take::<bool>("promotable").is_some_and(|b| *b.get_ref());
        let notify = f.take::<bool>("notify").is_some_and(|b| *b.get_ref());
        let agent = agent?;
        let parts: Vec<&str> = agent.get_ref().split(':').collect();
        match parts.as_slice() {
            ["ocf", provider, ty] if is_name(provider) && is_name(ty) => {}
            [provider, ty] if is_name(provider) && is_name(ty) => f.error(
                Some(agent.span()),
                format!("agent `{}` lacks its class", agent.get_ref()),
                format!("write agent = \"ocf:{provider}:{ty}\""),
            ),
            _ => f.error(
                Some(agent.span()),
                format!("agent `{}` is not `ocf:PROVIDER:TYPE`", agent.get_ref()),
                "write it as Pacemaker does, e.g. agent = \"ocf:heartbeat:IPaddr2\" (for a systemd unit or an init script use kind `systemd` or `exec`)",
            ),
        }
        let mut values = BTreeMap::new();
        if let Some(p) = &params {
            for (k, v) in p.get_ref() {
                let text = match v {
                    toml::Value::String(s) => s.clone(),
                    toml::Value::Integer(i) => i.to_string(),
                    toml::Value::Boolean(b) => b.to_string(),
                    toml::Value::Float(x) => x.to_string(),
                    _ => {
                        f.error(
                            Some(p.span()),
                            format!("parameter `{k}` is a {}: an OCF parameter is one value", v.type_str()),
                            format!("write it as text, e.g. {k} = \"...\""),
                        );
                        continue;
                    }
                };
                // The name becomes an environment variable's name.
                if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                    f.error(
                        Some(p.span()),
                        format!("parameter name `{k}` cannot be passed as OCF_RESKEY_{k}"),
                        "use the name from the agent's meta-data (letters, digits and _)",
                    );
                    continue;
                }
                if text.len() > MAX_PARAM_BYTES || text.contains('\0') {
                    f.error(
                        Some(p.span()),
                        format!("parameter `{k}` is longer than {MAX_PARAM_BYTES} bytes or holds a NUL"),
                        "shorten it: it is passed in the agent's environment",
                    );
                    continue;
                }
                if text == crate::config::REDACTED && crate::fence::is_secret(k) {
                    f.error(
                        Some(p.span()),
                        format!(
                            "parameter `{k}` is `{}`, the mark `tandem config show` writes in place of a secret",
                            crate::config::REDACTED
                        ),
                        "write the real value: a file made from `config show` output has its secrets masked",
                    );
                }
                values.insert(k.clone(), text);
            }
        }
        let ocf_root = root
            .map(|r| r.into_inner())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_OCF_ROOT));
        if !ocf_root.is_absolute() {
            f.error(
                None,
                format!("ocf_root `{}` is not an absolute path", ocf_root.display()),
                format!("write the full path, e.g. \"{DEFAULT_OCF_ROOT}\""),
            );
        }
        let check_interval_ms = interval
            .as_ref()
            .map_or(DEFAULT_OCF_CHECK_INTERVAL_MS, |i| *i.get_ref());
        if check_interval_ms < MIN_OCF_CHECK_INTERVAL_MS {
            f.error(
                interval.as_ref().map(|i| i.span()),
                format!("check_interval_ms {check_interval_ms} is below {MIN_OCF_CHECK_INTERVAL_MS}"),
                "each check forks the agent's script: check at most every 200 ms",
            );
        }
        let floating = ADDRESS_AGENTS
            .contains(&agent.get_ref().as_str())
            .then(|| values.get("ip"))
            .flatten()
            .and_then(|ip| {
                let mask = values.get("cidr_netmask").map_or("32", String::as_str);
                format!("{ip}/{mask}").parse::<Cidr>().ok()
            });
        let link = floating.and_then(|a| {
            f.cx.file
                .links
                .iter()
                .find(|l| l.subnet.as_ref().is_some_and(|s| s.get_ref().contains(a.addr)))
                .map(|l| l.name.get_ref().clone())
        });
        Some(Ocf {
            agent: agent.into_inner(),
            params: values,
            ocf_root,
            check_interval_ms,
            check_level: level.map(|l| l.into_inner()),
            promotable,
            notify,
            floating,
            link,
        })
    }
}

impl Spec for Ocf {
    fn describe(&self) -> String {
        let shown: Vec<String> = self
            .params
            .iter()
            .map(|(k, v)| {
                if crate::fence::is_secret(k) {
                    format!("{k}={}", crate::config::REDACTED)
                } else {
                    format!("{k}={v}")
                }
            })
            .collect();
        if shown.is_empty() {
            self.agent.clone()
        } else {
            format!("{} {}", self.agent, shown.join(" "))
        }
    }

    fn floating_address(&self) -> Option<Cidr> {
        self.floating
    }

    fn link(&self) -> Option<&str> {
        self.link.as_deref()
    }

    fn secrets(&self) -> Vec<&str> {
        self.params
            .iter()
            .filter(|(k, _)| crate::fence::is_secret(k))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}

/// The OCF actions Tandem calls.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OcfAction {
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `monitor` with interval 0: is it running here at all?
    Probe,
    /// `monitor` of a resource that should run (its periodic check).
    Check,
    /// `promote` (a `promotable` resource, after its start).
    Promote,
    /// `demote` (a `promotable` resource, before its stop).
    Demote,
    /// `notify`, before or after one of the others.
    Notify(NotifyWhen, NotifyOp),
}

impl OcfAction {
    /// The action's name as the agent takes it.
    pub fn verb(self) -> &'static str {
        match self {
            OcfAction::Start => "start",
            OcfAction::Stop => "stop",
            OcfAction::Probe | OcfAction::Check => "monitor",
            OcfAction::Promote => "promote",
            OcfAction::Demote => "demote",
            OcfAction::Notify(..) => "notify",
        }
    }
}

/// Whether a notification comes before or after its operation
/// (`OCF_RESKEY_CRM_meta_notify_type`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyWhen {
    /// `pre`.
    Pre,
    /// `post`.
    Post,
}

impl NotifyWhen {
    /// As the agent reads it.
    pub fn word(self) -> &'static str {
        match self {
            NotifyWhen::Pre => "pre",
            NotifyWhen::Post => "post",
        }
    }
}

/// The operation a notification is about
/// (`OCF_RESKEY_CRM_meta_notify_operation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NotifyOp {
    /// `start`.
    Start,
    /// `stop`.
    Stop,
    /// `promote`.
    Promote,
    /// `demote`.
    Demote,
}

impl NotifyOp {
    /// As the agent reads it.
    pub fn word(self) -> &'static str {
        match self {
            NotifyOp::Start => "start",
            NotifyOp::Stop => "stop",
            NotifyOp::Promote => "promote",
            NotifyOp::Demote => "demote",
        }
    }

    /// Whether the instance is promoted while this notification is sent
    /// (`notify_promoted_*` then names it).
    pub fn promoted_at(self, when: NotifyWhen) -> bool {
        matches!(
            (self, when),
            (NotifyOp::Promote, NotifyWhen::Post) | (NotifyOp::Demote, NotifyWhen::Pre)
        )
    }
}

/// The calls that make up one of the group's actions on `spec`, in order.
/// Pacemaker notifies only instances that are active, so a start is
/// notified after it (`post`), a stop before it (`pre`), and a promotion
/// or demotion on both sides.
pub fn calls(spec: &Ocf, action: crate::group::ActionKind) -> Vec<OcfAction> {
    use crate::group::ActionKind;
    use OcfAction::*;
    let n = |when, op| spec.notify.then_some(Notify(when, op));
    let promote = [
        n(NotifyWhen::Pre, NotifyOp::Promote),
        Some(Promote),
        n(NotifyWhen::Post, NotifyOp::Promote),
    ];
    let demote = [
        n(NotifyWhen::Pre, NotifyOp::Demote),
        Some(Demote),
        n(NotifyWhen::Post, NotifyOp::Demote),
    ];
    let seq: Vec<Option<OcfAction>> = match action {
        ActionKind::Probe => vec![Some(Probe)],
        ActionKind::Start => {
            let mut v = vec![Some(Start), n(NotifyWhen::Post, NotifyOp::Start)];
            if spec.promotable {
                v.extend(promote);
            }
            v
        }
        ActionKind::Stop => {
            let mut v = Vec::new();
            if spec.promotable {
                v.extend(demote);
            }
            v.extend([n(NotifyWhen::Pre, NotifyOp::Stop), Some(Stop)]);
            v
        }
    };
    seq.into_iter().flatten().collect()
}

/// Where a sequence of [`calls`] stands after one call's outcome.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Next {
    /// Go on; this is the action's outcome unless a later call says
    /// otherwise.
    Counted(Outcome),
    /// Go on; this call does not decide the action's outcome (its failure,
    /// if any, is reported with it).
    Aside(Option<String>),
    /// Stop here: this is the action's outcome.
    Done(Outcome),
}

/// What one call's outcome means for the sequence it is in:
///
/// - a `notify` is aside: its failure is reported but changes nothing
///   (as in Pacemaker, it is advice to the agent);
/// - so is a `demote`: its failure does not keep the `stop` that follows
///   from running (a stopped instance is not promoted either), and only
///   the stop's outcome counts;
/// - a failed `start` or `promote` ends the start: the group's recovery
///   stops it (demote, stop) and decides again.
pub fn next(action: OcfAction, outcome: Outcome) -> Next {
    match (action, outcome) {
        (OcfAction::Notify(..) | OcfAction::Demote, Outcome::Failed(w)) => Next::Aside(Some(w)),
        (OcfAction::Notify(..) | OcfAction::Demote, Outcome::Barred { why, .. }) => {
            Next::Aside(Some(why))
        }
        (OcfAction::Notify(..) | OcfAction::Demote, _) => Next::Aside(None),
        (_, o @ (Outcome::Running | Outcome::Stopped)) => Next::Counted(o),
        (_, o) => Next::Done(o),
    }
}

/// The OCF exit codes (Resource Agent API 1.1, and Pacemaker's 190/191).
pub mod code {
    /// Success; for `monitor`: running.
    pub const SUCCESS: i32 = 0;
    /// A generic error: soft, may be retried.
    pub const ERR_GENERIC: i32 = 1;
    /// Invalid parameters: hard (this node).
    pub const ERR_ARGS: i32 = 2;
    /// The action is not implemented: hard.
    pub const ERR_UNIMPLEMENTED: i32 = 3;
    /// Insufficient privileges: hard.
    pub const ERR_PERM: i32 = 4;
    /// Something the agent needs is not installed here: hard.
    pub const ERR_INSTALLED: i32 = 5;
    /// The configuration is wrong wherever it runs: fatal.
    pub const ERR_CONFIGURED: i32 = 6;
    /// Cleanly not running.
    pub const NOT_RUNNING: i32 = 7;
    /// Running, promoted.
    pub const RUNNING_PROMOTED: i32 = 8;
    /// Failed, promoted.
    pub const FAILED_PROMOTED: i32 = 9;
    /// Running, but degraded.
    pub const DEGRADED: i32 = 190;
    /// Running promoted, but degraded.
    pub const DEGRADED_PROMOTED: i32 = 191;
}

/// The name of an exit code, for messages.
pub fn code_name(c: i32) -> &'static str {
    match c {
        code::SUCCESS => "OCF_SUCCESS",
        code::ERR_GENERIC => "OCF_ERR_GENERIC",
        code::ERR_ARGS => "OCF_ERR_ARGS",
        code::ERR_UNIMPLEMENTED => "OCF_ERR_UNIMPLEMENTED",
        code::ERR_PERM => "OCF_ERR_PERM",
        code::ERR_INSTALLED => "OCF_ERR_INSTALLED",
        code::ERR_CONFIGURED => "OCF_ERR_CONFIGURED",
        code::NOT_RUNNING => "OCF_NOT_RUNNING",
        code::RUNNING_PROMOTED => "OCF_RUNNING_PROMOTED",
        code::FAILED_PROMOTED => "OCF_FAILED_PROMOTED",
        code::DEGRADED => "OCF_DEGRADED",
        code::DEGRADED_PROMOTED => "OCF_DEGRADED_PROMOTED",
        _ => "an exit code outside the OCF API",
    }
}

/// What one call of an agent means: `exit` is its exit code (None: killed
/// by a signal), `reason` its `ocf-exit-reason:` line if it printed one.
///
/// - `monitor`: 0, 8, 190 and 191 are running; 7 is stopped (for a check
///   of a resource that should run, the caller counts that as a failure).
/// - `start`: 0, 8, 190 and 191 are running; 1, 7, 9 and unknown codes are
///   failures that recovery may retry here.
/// - `stop`: only 0 is stopped; anything else is a failed stop (7 too,
///   as the API says: the agent could not tell whether it stopped).
/// - Hard errors (2, 3, 4, 5) bar the node and the fatal one (6) every
///   node, from a start or a check (Pacemaker's `on-fail` of each).
/// - A probe that says 5 ("not installed") means it cannot run here, so
///   it does not run here: stopped, as Pacemaker reads it. A start there
///   then bars the node.
pub fn outcome(action: OcfAction, exit: Option<i32>, reason: Option<&str>) -> Outcome {
    outcome_as(action, false, exit, reason)
}

/// [`outcome`] of a call on a `promotable` resource: running means
/// running promoted (8 or 191). A probe or check that finds it running
/// but not promoted (0 or 190) is a failure: recovery stops it and
/// starts it again, promoted. A `demote` that says 7 (not running) has
/// nothing to demote.
pub fn outcome_as(
    action: OcfAction,
    promotable: bool,
    exit: Option<i32>,
    reason: Option<&str>,
) -> Outcome {
    let Some(c) = exit else {
        return Outcome::Failed(format!("{} was killed by a signal", action.verb()));
    };
    let why = || {
        let base = format!("{} exited {c} ({})", action.verb(), code_name(c));
        match reason {
            Some(r) if !r.is_empty() => format!("{base}: {r}"),
            _ => base,
        }
    };
    use code::*;
    let looked = matches!(action, OcfAction::Probe | OcfAction::Check);
    match (action, c) {
        (OcfAction::Stop, SUCCESS) => Outcome::Stopped,
        (OcfAction::Stop, _) => Outcome::Failed(why()),
        (OcfAction::Demote, SUCCESS | NOT_RUNNING) => Outcome::Stopped,
        (OcfAction::Demote, _) => Outcome::Failed(why()),
        (OcfAction::Notify(..), SUCCESS) => Outcome::Running,
        (OcfAction::Notify(..), _) => Outcome::Failed(why()),
        (_, SUCCESS | DEGRADED) if looked && promotable => {
            Outcome::Failed(format!("{}: running, but not promoted", why()))
        }
        (_, SUCCESS | RUNNING_PROMOTED | DEGRADED | DEGRADED_PROMOTED) => Outcome::Running,
        (OcfAction::Probe | OcfAction::Check, NOT_RUNNING) => Outcome::Stopped,
        (OcfAction::Probe, ERR_INSTALLED) => Outcome::Stopped,
        (_, ERR_ARGS | ERR_UNIMPLEMENTED | ERR_PERM | ERR_INSTALLED) => Outcome::Barred {
            bar: Bar::Node,
            why: why(),
        },
        (_, ERR_CONFIGURED) => Outcome::Barred {
            bar: Bar::Everywhere,
            why: why(),
        },
        _ => Outcome::Failed(why()),
    }
}

/// The agent's reason for its exit: the last `ocf-exit-reason:` line of
/// its output (what `ocf_exit_reason` in `ocf-shellfuncs` prints).
pub fn exit_reason(output: &str) -> Option<&str> {
    output
        .lines()
        .filter_map(|l| l.split_once("ocf-exit-reason:").map(|(_, r)| r.trim()))
        .next_back()
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every exit code of the API, for every action, as the API and
    /// Pacemaker read it.
    #[test]
    fn exit_codes_map_as_the_api_and_pacemaker_read_them() {
        use OcfAction::*;
        let running = |o: &Outcome| *o == Outcome::Running;
        let stopped = |o: &Outcome| *o == Outcome::Stopped;
        let soft = |o: &Outcome| matches!(o, Outcome::Failed(_));
        let node = |o: &Outcome| matches!(o, Outcome::Barred { bar: Bar::Node, .. });
        let all = |o: &Outcome| matches!(o, Outcome::Barred { bar: Bar::Everywhere, .. });
        type Is = fn(&Outcome) -> bool;
        // (code, start, stop, probe, check)
        let table: &[(i32, Is, Is, Is, Is)] = &[
            (0, running, stopped, running, running),
            (1, soft, soft, soft, soft),
            (2, node, soft, node, node),
            (3, node, soft, node, node),
            (4, node, soft, node, node),
            (5, node, soft, stopped, node),
            (6, all, soft, all, all),
            (7, soft, soft, stopped, stopped),
            (8, running, soft, running, running),
            (9, soft, soft, soft, soft),
            (190, running, soft, running, running),
            (191, running, soft, running, running),
            (42, soft, soft, soft, soft),
        ];
        for (c, start, stop, probe, check) in table {
            for (action, is) in [(Start, start), (Stop, stop), (Probe, probe), (Check, check)] {
                let o = outcome(action, Some(*c), None);
                assert!(is(&o), "{action:?} exit {c}: {o:?}");
            }
        }
        for action in [Start, Stop, Probe, Check] {
            assert!(soft(&outcome(action, None, None)), "{action:?} by a signal");
        }
    }

    #[test]
    fn the_exit_reason_is_in_the_failure() {
        let out = "INFO: trying\nocf-exit-reason:first\nocf-exit-reason: Unable to find nic\n";
        let r = exit_reason(out);
        assert_eq!(r, Some("Unable to find nic"));
        let o = outcome(OcfAction::Start, Some(6), r);
        assert_eq!(
            o,
            Outcome::Barred {
                bar: Bar::Everywhere,
                why: "start exited 6 (OCF_ERR_CONFIGURED): Unable to find nic".into()
            }
        );
        assert_eq!(exit_reason("nothing\n"), None);
    }

    #[test]
    fn agent_names_cannot_leave_the_ocf_root() {
        assert!(is_name("IPaddr2") && is_name("heartbeat") && is_name("pgsql"));
        for bad in ["", ".", "..", "../x", "a/b", "a b", "a;b"] {
            assert!(!is_name(bad), "{bad:?}");
        }
        let o = Ocf {
            agent: "ocf:heartbeat:IPaddr2".into(),
            params: BTreeMap::new(),
            ocf_root: DEFAULT_OCF_ROOT.into(),
            check_interval_ms: 1,
            check_level: None,
            promotable: false,
            notify: false,
            floating: None,
            link: None,
        };
        assert_eq!(
            o.program(),
            PathBuf::from("/usr/lib/ocf/resource.d/heartbeat/IPaddr2")
        );
    }

    fn spec(promotable: bool, notify: bool) -> Ocf {
        Ocf {
            agent: "ocf:heartbeat:Stateful".into(),
            params: BTreeMap::new(),
            ocf_root: DEFAULT_OCF_ROOT.into(),
            check_interval_ms: 1_000,
            check_level: None,
            promotable,
            notify,
            floating: None,
            link: None,
        }
    }

    /// The calls of each action: plain, promotable, with notifications.
    #[test]
    fn a_start_promotes_and_a_stop_demotes_with_notifications_around_each() {
        use crate::group::ActionKind as K;
        use NotifyOp as Op;
        use NotifyWhen::*;
        use OcfAction::*;
        let plain = spec(false, false);
        assert_eq!(calls(&plain, K::Start), vec![Start]);
        assert_eq!(calls(&plain, K::Stop), vec![Stop]);
        assert_eq!(calls(&plain, K::Probe), vec![Probe]);
        let p = spec(true, false);
        assert_eq!(calls(&p, K::Start), vec![Start, Promote]);
        assert_eq!(calls(&p, K::Stop), vec![Demote, Stop]);
        assert_eq!(calls(&p, K::Probe), vec![Probe]);
        let pn = spec(true, true);
        assert_eq!(
            calls(&pn, K::Start),
            vec![
                Start,
                Notify(Post, Op::Start),
                Notify(Pre, Op::Promote),
                Promote,
                Notify(Post, Op::Promote)
            ]
        );
        assert_eq!(
            calls(&pn, K::Stop),
            vec![
                Notify(Pre, Op::Demote),
                Demote,
                Notify(Post, Op::Demote),
                Notify(Pre, Op::Stop),
                Stop
            ]
        );
        assert_eq!(
            calls(&spec(false, true), K::Stop),
            vec![Notify(Pre, Op::Stop), Stop]
        );
        assert!(Op::Promote.promoted_at(Post) && Op::Demote.promoted_at(Pre));
        assert!(!Op::Promote.promoted_at(Pre) && !Op::Start.promoted_at(Post));
    }

    /// A failed start or promote ends the start; a failed notify or
    /// demote does not keep the stop from running.
    #[test]
    fn only_a_failed_start_or_promote_ends_the_sequence() {
        let failed = || Outcome::Failed("x".into());
        for a in [OcfAction::Start, OcfAction::Promote, OcfAction::Stop] {
            assert_eq!(next(a, failed()), Next::Done(failed()), "{a:?}");
            assert_eq!(next(a, Outcome::Running), Next::Counted(Outcome::Running));
        }
        let barred = Outcome::Barred {
            bar: Bar::Node,
            why: "x".into(),
        };
        assert_eq!(next(OcfAction::Promote, barred.clone()), Next::Done(barred));
        for a in [
            OcfAction::Demote,
            OcfAction::Notify(NotifyWhen::Pre, NotifyOp::Stop),
        ] {
            assert_eq!(next(a, failed()), Next::Aside(Some("x".into())), "{a:?}");
            assert_eq!(next(a, Outcome::Stopped), Next::Aside(None), "{a:?}");
        }
    }

    /// A promotable resource runs only promoted; demote and notify read
    /// their codes as the API says.
    #[test]
    fn a_promotable_resource_is_running_only_when_promoted() {
        use OcfAction::*;
        for look in [Probe, Check] {
            assert_eq!(outcome_as(look, true, Some(8), None), Outcome::Running);
            assert_eq!(outcome_as(look, true, Some(191), None), Outcome::Running);
            assert_eq!(outcome_as(look, true, Some(7), None), Outcome::Stopped);
            let o = outcome_as(look, true, Some(0), None);
            assert!(
                matches!(&o, Outcome::Failed(w) if w.contains("not promoted")),
                "{o:?}"
            );
            assert_eq!(outcome_as(look, false, Some(0), None), Outcome::Running);
        }
        // A start leaves it unpromoted (0): the promote follows.
        assert_eq!(outcome_as(Start, true, Some(0), None), Outcome::Running);
        assert_eq!(outcome_as(Promote, true, Some(0), None), Outcome::Running);
        assert!(matches!(
            outcome_as(Promote, true, Some(1), None),
            Outcome::Failed(_)
        ));
        assert!(matches!(
            outcome_as(Promote, true, Some(5), None),
            Outcome::Barred { bar: Bar::Node, .. }
        ));
        assert_eq!(outcome_as(Demote, true, Some(0), None), Outcome::Stopped);
        assert_eq!(outcome_as(Demote, true, Some(7), None), Outcome::Stopped);
        assert!(matches!(outcome_as(Demote, true, Some(1), None), Outcome::Failed(_)));
        let n = Notify(NotifyWhen::Post, NotifyOp::Start);
        assert_eq!(outcome_as(n, false, Some(0), None), Outcome::Running);
        assert!(matches!(outcome_as(n, false, Some(3), None), Outcome::Failed(_)));
    }
}
