//! The shell of a configuration change (`tandem config apply`): what a
//! node checks before it accepts a new configuration, and the steps the
//! node the operator asked takes across the cluster.
//!
//! 1. This node checks the new file as every node will: it parses and
//!    validates, this machine's checks pass ([`crate::machine_checks`]),
//!    and the change can be made while running
//!    ([`tandem_core::config::change::plan`]).
//! 2. It offers the file to every peer ([`PeerService::stage_everywhere`]);
//!    each checks it the same way on its own machine and stages it.
//! 3. When every node accepted (or `--force`, and every node that answered
//!    accepted), it asks the leader to begin the change: the record's next
//!    configuration ([`tandem_core::agreement::Command::ConfigNext`]). Each
//!    node then switches in place, and the leader commits the new
//!    configuration once they all run it (the rule is the core's).
//!
//! Nothing is begun when a node refuses: the staged copies stay, unused.

use std::path::Path;

use serde::{Deserialize, Serialize};
use tandem_core::config::change::{self, Plan};
use tandem_core::config::identity::{self, Identity};
use tandem_core::config::{self, Config};
use tandem_core::diagnostic::{render, Severity};

use crate::control::{ControlError, ControlRequest, ControlResponse, Handler};
use crate::peer_service::{PeerService, StageAnswer};

/// A configuration this node accepts.
#[derive(Debug, Clone)]
pub struct Accepted {
    /// The configuration.
    pub cfg: Config,
    /// Its identity.
    pub identity: Identity,
    /// What switching to it from the running one does.
    pub plan: Plan,
}

/// Checks configuration `text` on this machine, as a change from
/// `running` (relative paths resolve in `config_dir`): every reason it
/// cannot be accepted, one line each. Runs the fence and resource agents'
/// own checks (seconds): never on the agent's loop.
pub fn accept(text: &str, config_dir: &Path, running: &Config) -> Result<Accepted, Vec<String>> {
    let accepted = prepare(text, config_dir, running)?;
    let machine: Vec<String> = crate::machine_checks::of(&accepted.cfg)
        .into_iter()
        .filter(|(sev, _)| *sev == Severity::Error)
        .map(|(_, text)| text)
        .collect();
    if !machine.is_empty() {
        return Err(machine);
    }
    Ok(accepted)
}

/// The quick part of [`accept`], for the agent's loop when it switches to
/// a configuration it accepted before: parse, validate, and plan the
/// change from `running`.
pub fn prepare(text: &str, config_dir: &Path, running: &Config) -> Result<Accepted, Vec<String>> {
    if text.len() > crate::config_store::MAX_CONFIG_BYTES {
        return Err(vec![format!(
            "the configuration is {} bytes; at most {} are accepted",
            text.len(),
            crate::config_store::MAX_CONFIG_BYTES
        )]);
    }
    let loaded = config::load(text, config_dir, &crate::keyfile::facts);
    let Some(cfg) = loaded.config else {
        let errors: Vec<_> = loaded
            .diagnostics
            .into_iter()
            .filter(|d| d.severity == Severity::Error)
            .collect();
        return Err(render("the new configuration", text, &errors)
            .lines()
            .filter(|l| l.starts_with("error"))
            .map(String::from)
            .collect());
    };
    let plan = change::plan(running, &cfg).map_err(|e| vec![e.to_string()])?;
    Ok(Accepted {
        identity: identity::of(&cfg),
        cfg,
        plan,
    })
}

/// One node's part in a change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeVerdict {
    /// The node.
    pub node: String,
    /// `accepted`, `refused` or `unreachable`.
    pub verdict: String,
    /// Why (refused: every reason; unreachable: the last error).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub why: Vec<String>,
}

/// What `tandem config apply` got.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ApplyOutcome {
    /// The new configuration's identity hash.
    pub hash: String,
    /// Whether the change began (false: it says the same as the running
    /// configuration, or a node refused it).
    pub begun: bool,
    /// Every change, in words.
    pub changes: Vec<String>,
    /// Groups stopped by the switch (removed ones, and those that start
    /// again).
    pub restart: Vec<String>,
    /// What the switch does to groups, in words
    /// ([`tandem_core::config::change::Plan::summary`]); empty from an
    /// older agent.
    #[serde(default)]
    pub summary: String,
    /// Every node's verdict, this one first.
    pub nodes: Vec<NodeVerdict>,
}

/// The steps of `tandem config apply` on the node asked (see the module
/// documentation): the answer for the operator.
pub async fn apply(
    svc: &PeerService,
    handler: &Handler,
    text: String,
    force: bool,
) -> ControlResponse {
    let Some(running) = svc.running() else {
        return ControlError::ConfigRefused {
            why: vec!["this agent lost its own configuration".into()],
        }
        .into();
    };
    // A change under way is finished (or abandoned) first.
    let status = match handler.ask_loop(ControlRequest::Status).await {
        ControlResponse::Status { status } => Some(status),
        _ => None,
    };
    if let Some(next) = status.as_ref().and_then(|s| s.config.next.as_ref()) {
        return ControlError::ConfigRefused {
            why: vec![format!(
                "a change to configuration {next} is under way; wait for it (`tandem status`) and apply again"
            )],
        }
        .into();
    }
    let (dir, t) = (svc.config_dir().to_path_buf(), text.clone());
    let checked =
        tokio::task::spawn_blocking(move || accept(&t, &dir, &running).map_err(|w| (w, running)))
            .await;
    let accepted = match checked {
        Ok(Ok(a)) => a,
        Ok(Err((why, _))) => return ControlError::ConfigRefused { why }.into(),
        Err(e) => {
            return ControlError::ConfigRefused {
                why: vec![format!("the check failed: {e}")],
            }
            .into()
        }
    };
    let mut outcome = ApplyOutcome {
        hash: accepted.identity.hash.clone(),
        begun: false,
        changes: accepted
            .plan
            .changes
            .iter()
            .map(ToString::to_string)
            .collect(),
        restart: accepted.plan.restart.clone(),
        summary: accepted.plan.summary(),
        nodes: Vec::new(),
    };
    if accepted.plan.is_empty() {
        return ControlResponse::ConfigApply { outcome };
    }
    if let Some(why) = status
        .as_ref()
        .and_then(|s| membership_refusal(&accepted.plan, s))
    {
        return ControlError::ConfigRefused { why: vec![why] }.into();
    }
    let verdict = |node: &str, a: Result<StageAnswer, String>| match a {
        Ok(StageAnswer::Accepted) => NodeVerdict {
            node: node.to_string(),
            verdict: "accepted".into(),
            why: vec![],
        },
        Ok(StageAnswer::Refused { why }) => NodeVerdict {
            node: node.to_string(),
            verdict: "refused".into(),
            why,
        },
        Err(e) => NodeVerdict {
            node: node.to_string(),
            verdict: "unreachable".into(),
            why: vec![e],
        },
    };
    let own = svc.stage_here(text.clone()).await;
    outcome.nodes.push(verdict(svc.me(), Ok(own)));
    for (node, answer) in svc.stage_everywhere(&text).await {
        outcome.nodes.push(verdict(&node, answer));
    }
    let refused = outcome.nodes.iter().any(|n| n.verdict == "refused");
    let unreachable = outcome.nodes.iter().any(|n| n.verdict == "unreachable");
    if refused || (unreachable && !force) {
        return ControlResponse::ConfigApply { outcome };
    }
    match handler
        .ask_loop(ControlRequest::ConfigBegin {
            hash: outcome.hash.clone(),
        })
        .await
    {
        ControlResponse::Accepted => {
            outcome.begun = true;
            ControlResponse::ConfigApply { outcome }
        }
        other => other,
    }
}

/// Why a change of the nodes cannot begin as this node's status says
/// (None: it may): the core's rule ([`Plan::membership_refusal`]) over
/// what the status says of the voters and the groups.
fn membership_refusal(plan: &Plan, s: &crate::status::Status) -> Option<String> {
    let votes = |n: &str| {
        s.peers.iter().any(|p| p.name == n && p.voter) || (s.node == n && s.agreement.voter)
    };
    let hosts = |n: &str| {
        s.groups
            .iter()
            .any(|g| g.placed_on.as_deref() == Some(n) || g.active_on.iter().any(|a| a == n))
    };
    let up_to_date = |volume: &str, node: &str| s.agreement.copy_up_to_date(volume, node);
    plan.membership_refusal(s.agreement.voters_written, votes, hosts, up_to_date)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn base() -> String {
        let key = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(key.path(), [7u8; 32]).unwrap();
        let path = key.into_temp_path().keep().unwrap();
        std::fs::set_permissions(&path, std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
        format!(
            r#"
[cluster]
name = "c"
key_file = "{}"

[[link]]
name = "lan"
subnet = "10.9.0.0/24"

[[node]]
name = "n1"
addresses = {{ lan = "10.9.0.1" }}

[[node]]
name = "n2"
addresses = {{ lan = "10.9.0.2" }}

[[node]]
name = "n3"
addresses = {{ lan = "10.9.0.3" }}

[[group]]
name = "web"
[[group.resource]]
name = "vip"
kind = "ip"
address = "10.9.0.100/24"
"#,
            path.display()
        )
    }

    #[test]
    fn a_group_change_is_accepted_with_its_plan_and_bad_files_are_refused_with_reasons() {
        let text = base();
        let running = config::load(&text, Path::new("/"), &crate::keyfile::facts)
            .config
            .expect("valid");
        let added = format!(
            "{text}\n[[group]]\nname = \"extra\"\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"10.9.0.101/24\"\n"
        );
        let a = accept(&added, Path::new("/"), &running).expect("accepted");
        assert_eq!(a.plan.changes.len(), 1);
        assert!(a.plan.restart.is_empty());
        let why = accept("[cluster]\nname = 3\n", Path::new("/"), &running).unwrap_err();
        assert!(why.iter().all(|l| l.starts_with("error")), "{why:?}");
        assert!(!why.is_empty());
        let moved = text.replace("10.9.0.3\"", "10.9.0.9\"");
        let why = accept(&moved, Path::new("/"), &running).unwrap_err();
        assert!(why[0].contains("node `n3` changed"), "{why:?}");
    }
}
