//! `ocf`: the agent's side of an OCF resource agent. It calls the agent
//! program with the API 1.1 environment (`OCF_ROOT`, `OCF_RA_VERSION_*`,
//! `OCF_RESOURCE_*`, `OCF_RESKEY_*`, and Pacemaker's
//! `OCF_RESKEY_CRM_meta_timeout`/`_interval` in milliseconds), and reads
//! its exit code with the core's rule ([`tandem_core::kinds::ocf::outcome`]).
//! It also reads and checks an agent's meta-data for `config validate`
//! ([`check_resources`]), including the timeouts it advertises.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_core::config::Config;
use tandem_core::diagnostic::Severity;
use tandem_core::group::{ActionKind, Outcome};
use tandem_core::kinds::ocf::metadata::{check_params, Metadata};
use tandem_core::kinds::ocf::{
    calls, exit_reason, next, outcome, outcome_as, Next, Ocf, OcfAction,
};
use tandem_core::kinds::Params;

use super::{Act, Bind, BindError, Driver, Resource};
use crate::child::{run, Owner, RunError, MAX_OUTPUT};
use tandem_core::kinds::ocf::metadata::MAX_METADATA_BYTES;
use crate::guard::{Leaving, StopCommand};

/// Where agents keep their state (`HA_RSCTMP`, as `ocf-directories` sets
/// it). On a systemd system tmpfiles creates it; elsewhere nothing does,
/// and agents such as Dummy then fail, so the agent makes it.
pub const HA_RSCTMP: &str = "/run/resource-agents";
/// Limit on `meta-data` and `validate-all` during `config validate`.
const VALIDATE_LIMIT_MS: u64 = 10_000;

/// An OCF agent on this node.
#[derive(Debug, Clone)]
pub struct OcfDriver {
    spec: Ocf,
}

/// The agent's side of an `ocf` resource.
pub fn bind(p: &Ocf, _cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
    Ok(Box::new(OcfDriver { spec: p.clone() }))
}

/// The environment of one call of `action`, as Pacemaker gives it: the
/// check's interval and depth, and for a `promotable` or `notify`
/// resource the clone meta variables of a single promoted instance.
fn environment(
    spec: &Ocf,
    owner: &Owner,
    timeout_ms: u64,
    action: OcfAction,
) -> Vec<(String, String)> {
    let (interval_ms, check_level) = match action {
        OcfAction::Check => (spec.check_interval_ms, spec.check_level),
        _ => (0, None),
    };
    let instance = format!("{}-{}", owner.group, owner.resource);
    let mut env = owner.env_vec();
    let pairs = [
        ("OCF_ROOT", spec.ocf_root.display().to_string()),
        ("OCF_RA_VERSION_MAJOR", "1".to_string()),
        ("OCF_RA_VERSION_MINOR", "1".to_string()),
        // Unique on the node: resource names are unique only in a group.
        ("OCF_RESOURCE_INSTANCE", instance.clone()),
        ("OCF_RESOURCE_TYPE", spec.agent_type().to_string()),
        ("OCF_RESOURCE_PROVIDER", spec.provider().to_string()),
        ("OCF_RESKEY_CRM_meta_timeout", timeout_ms.to_string()),
        ("OCF_RESKEY_CRM_meta_interval", interval_ms.to_string()),
    ];
    env.extend(pairs.into_iter().map(|(k, v)| (k.to_string(), v)));
    if let Some(l) = check_level {
        env.push(("OCF_CHECK_LEVEL".into(), l.to_string()));
    }
    let meta = |k: &str| format!("OCF_RESKEY_CRM_meta_{k}");
    if spec.promotable {
        // `ocf_is_ms` reads `promotable` (and, in older agents,
        // `master_max`): one instance, promoted.
        for (k, v) in [
            ("promotable", "true"),
            ("promoted_max", "1"),
            ("promoted_node_max", "1"),
            ("master_max", "1"),
            ("master_node_max", "1"),
            ("clone_max", "1"),
            ("clone_node_max", "1"),
        ] {
            env.push((meta(k), v.into()));
        }
        if action == OcfAction::Check {
            env.push((meta("role"), "Promoted".into()));
        }
    }
    if spec.notify {
        env.push((meta("notify"), "true".into()));
    }
    if let OcfAction::Notify(when, op) = action {
        env.push((meta("notify_type"), when.word().into()));
        env.push((meta("notify_operation"), op.word().into()));
        // The lists name the one instance: in the operation's own list,
        // among the active ones (only active instances are notified),
        // and among the promoted ones while it is promoted.
        let mut lists = vec![op.word(), "active"];
        if op.promoted_at(when) {
            lists.extend(["promoted", "master"]);
        } else if spec.promotable {
            lists.extend(["unpromoted", "slave"]);
        }
        for l in lists {
            env.push((meta(&format!("notify_{l}_resource")), instance.clone()));
            env.push((meta(&format!("notify_{l}_uname")), owner.node.clone()));
        }
    }
    env.extend(
        spec.params
            .iter()
            .map(|(k, v)| (format!("OCF_RESKEY_{k}"), v.clone())),
    );
    env
}

/// Calls `verb` of the agent and returns its exit code and exit reason.
async fn call(
    program: &Path,
    verb: &str,
    env: &[(String, String)],
    limit: Duration,
) -> Result<(Option<i32>, Option<String>), RunError> {
    // Agents keep state there; without systemd nothing creates it.
    let _ = std::fs::create_dir_all(HA_RSCTMP);
    let ran = run(program, &[verb], env, None, limit, MAX_OUTPUT).await?;
    let text = format!(
        "{}\n{}",
        String::from_utf8_lossy(&ran.stdout),
        String::from_utf8_lossy(&ran.stderr)
    );
    Ok((ran.code, exit_reason(&text).map(str::to_string)))
}

impl OcfDriver {
    /// Runs one of the group's actions: its [`calls`] in order, within
    /// the resource's one timeout, each call's outcome read by the core
    /// ([`next`]).
    async fn act(&self, r: &Resource, action: ActionKind) -> Outcome {
        let deadline = tokio::time::Instant::now() + Duration::from_millis(r.timeout_ms);
        let mut counted = Outcome::Stopped;
        let mut aside: Vec<String> = Vec::new();
        for call in calls(&self.spec, action) {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match next(call, self.call_one(r, call, left).await) {
                Next::Counted(o) => counted = o,
                Next::Aside(None) => {}
                // Reported with the action's outcome, never silent.
                Next::Aside(Some(w)) => aside.push(w),
                Next::Done(o) => return o,
            }
        }
        if !aside.is_empty() {
            // Into the agent's log and event history with the action's
            // outcome (a failed demote or notify never decides it).
            r.note(format!(
                "{action:?} ({}): {}",
                self.spec.agent,
                aside.join("; ")
            ));
        }
        match counted {
            Outcome::Failed(w) if !aside.is_empty() => {
                Outcome::Failed(format!("{w} (before it: {})", aside.join("; ")))
            }
            o => o,
        }
    }

    /// One call of the agent, within `limit`.
    async fn call_one(&self, r: &Resource, action: OcfAction, limit: Duration) -> Outcome {
        // The configured timeout, as Pacemaker passes it; the call is
        // bounded by what is left of the action's.
        let env = environment(&self.spec, &r.owner, r.timeout_ms, action);
        match call(&self.spec.program(), action.verb(), &env, limit).await {
            Ok((code, reason)) => outcome_as(action, self.spec.promotable, code, reason.as_deref()),
            // No agent program here (resource-agents not installed): it
            // cannot run here, as an agent's own "not installed" (5) says
            // for a probe; a stop has nothing to stop, a start bars the
            // node.
            Err(RunError::Spawn { source, .. })
                if matches!(source.kind(), std::io::ErrorKind::NotFound | std::io::ErrorKind::PermissionDenied) =>
            {
                let why = format!("{}: {} cannot run here: {source}", self.spec.agent, self.spec.program().display());
                match action {
                    OcfAction::Probe | OcfAction::Stop | OcfAction::Demote => Outcome::Stopped,
                    OcfAction::Notify(..) => Outcome::Failed(why),
                    OcfAction::Start | OcfAction::Check | OcfAction::Promote => {
                        Outcome::Barred { bar: tandem_core::group::Bar::Node, why }
                    }
                }
            }
            Err(e) => Outcome::Failed(format!("{}: {} {e}", self.spec.agent, action.verb())),
        }
    }
}

impl Driver for OcfDriver {
    fn kind(&self) -> &'static str {
        "ocf"
    }

    fn action<'a>(&'a self, r: &'a Resource, action: ActionKind) -> Act<'a> {
        Box::pin(self.act(r, action))
    }

    fn check<'a>(&'a self, r: &'a Resource) -> Act<'a> {
        let limit = Duration::from_millis(r.timeout_ms);
        Box::pin(self.call_one(r, OcfAction::Check, limit))
    }

    fn check_interval_ms(&self) -> u64 {
        self.spec.check_interval_ms
    }

    /// The guard makes the stop's calls (a promotable resource's `demote`
    /// and any notifications, then `stop`) when the agent is gone.
    fn guard(&self, owner: &Owner, part: &mut Leaving) {
        let timeout_ms = tandem_core::kinds::DEFAULT_RESOURCE_TIMEOUT_MS;
        for c in calls(&self.spec, ActionKind::Stop) {
            part.stop_commands.push(StopCommand {
                program: self.spec.program(),
                args: vec![c.verb().into()],
                env: environment(&self.spec, owner, timeout_ms, c),
                first: false,
            });
        }
    }
}

/// What `config validate` finds of the configuration's OCF resources on
/// this machine: an agent that is not installed (an error: this node
/// could not run it), parameters its meta-data says are missing or
/// unknown (errors), a `timeout_ms` shorter than the timeouts it
/// advertises (a warning), and what its `validate-all` says (a warning:
/// it may check things of this node that differ on the other).
pub fn check_resources(cfg: &Config) -> Vec<(Severity, String)> {
    let mut out = Vec::new();
    let Ok(rt) = crate::child::checks_runtime() else {
        return vec![(
            Severity::Warning,
            "cannot check the OCF agents: no runtime for their programs".into(),
        )];
    };
    for g in &cfg.groups {
        for r in &g.resources {
            let Params::Ocf(spec) = &r.params else {
                continue;
            };
            let at = format!("group `{}` resource `{}` ({})", g.name, r.name, spec.agent);
            out.extend(
                rt.block_on(check_one(spec, r.timeout_ms, &cfg.cluster.name, &g.name, &r.name))
                    .into_iter()
                    .map(|(sev, text)| (sev, format!("{at}: {text}"))),
            );
        }
    }
    out
}

async fn check_one(
    spec: &Ocf,
    timeout_ms: u64,
    cluster: &str,
    group: &str,
    resource: &str,
) -> Vec<(Severity, String)> {
    let program = spec.program();
    if !is_executable(&program) {
        return vec![(
            Severity::Error,
            format!(
                "{} is not an executable agent on this machine: install it (Debian: `apt install resource-agents`) or correct `agent`/`ocf_root`",
                program.display()
            ),
        )];
    }
    let env = validate_env(spec, cluster, group, resource);
    let limit = Duration::from_millis(VALIDATE_LIMIT_MS);
    let md = match read_metadata(&program, &env).await {
        Ok(md) => md,
        Err(e) => return vec![(Severity::Warning, format!("{e}: parameters not checked"))],
    };
    let mut out: Vec<(Severity, String)> = check_params(&md, &spec.params)
        .into_iter()
        .map(|p| (Severity::Error, p.to_string()))
        .collect();
    // What the configuration asks the agent to do, it must have.
    let wanted = [
        (spec.promotable, "promote", "promotable"),
        (spec.promotable, "demote", "promotable"),
        (spec.notify, "notify", "notify"),
    ];
    for (asked, action, field) in wanted {
        if asked && !md.has_action(action) {
            out.push((
                Severity::Error,
                format!(
                    "{field} = true, but the agent's meta-data lists no `{action}` action: remove `{field}` or use an agent that has it"
                ),
            ));
        }
    }
    // One limit covers start, stop and monitor: shorter than what the
    // agent says it may need, a slow stop counts as failed (and the node
    // is fenced). Advice, not a silent default: every node, the witness
    // included, must compute the same limits from the same file.
    if let Some(advertised) = md.advertised_timeout_ms().filter(|a| *a > timeout_ms) {
        out.push((
            Severity::Warning,
            format!(
                "timeout_ms is {timeout_ms} but the agent advertises up to {advertised} ms for start, stop or monitor: a stop that takes as long would count as failed (and its node be fenced); write timeout_ms = {advertised}"
            ),
        ));
    }
    // The agent's own check runs unless a parameter is wrong (it would
    // only say so again); the timeout advice does not stop it.
    if !out.iter().any(|(sev, _)| *sev == Severity::Error) && md.has_action("validate-all") {
        match call(&program, "validate-all", &env, limit).await {
            Ok((Some(0), _)) => {}
            Ok((code, reason)) => out.push((
                Severity::Warning,
                format!(
                    "its validate-all on this machine says: {}",
                    match outcome(OcfAction::Start, code, reason.as_deref()) {
                        Outcome::Failed(w) | Outcome::Barred { why: w, .. } =>
                            w.replacen("start", "validate-all", 1),
                        _ => format!("exit {code:?}"),
                    }
                ),
            )),
            Err(e) => out.push((Severity::Warning, format!("validate-all: {e}"))),
        }
    }
    out
}

/// The environment of `meta-data` and `validate-all` outside any node's
/// run (`config validate`, loading the configuration).
fn validate_env(spec: &Ocf, cluster: &str, group: &str, resource: &str) -> Vec<(String, String)> {
    let owner = Owner {
        cluster: cluster.into(),
        node: String::new(),
        group: group.into(),
        resource: resource.into(),
        run_dir: PathBuf::from(HA_RSCTMP),
    };
    environment(spec, &owner, VALIDATE_LIMIT_MS, OcfAction::Start)
}

/// What agent `program` says of itself (`meta-data`, bounded in time and
/// size), or why it could not be read.
async fn read_metadata(program: &Path, env: &[(String, String)]) -> Result<Metadata, String> {
    let limit = Duration::from_millis(VALIDATE_LIMIT_MS);
    match run(program, &["meta-data"], env, None, limit, MAX_METADATA_BYTES).await {
        Ok(ran) if ran.code == Some(0) => {
            Metadata::parse(&String::from_utf8_lossy(&ran.stdout)).map_err(|e| e.to_string())
        }
        Ok(ran) => Err(format!("its meta-data exited {:?}", ran.code)),
        Err(e) => Err(e.to_string()),
    }
}

fn is_executable(p: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;
    use std::path::Path;

    use tandem_core::group::{ActionKind, Bar, Outcome};
    use tandem_core::kinds::ocf::{Ocf, DEFAULT_OCF_ROOT};
    use tandem_core::kinds::Params;

    use crate::child::test_runtime as rt;
    use crate::kinds::tests::resource;
    use crate::kinds::{run_action, run_check};

    /// Debian's resource-agents, or why a test cannot use them.
    fn debian_agents() -> Option<&'static Path> {
        let root = Path::new(DEFAULT_OCF_ROOT);
        if !root.join("resource.d/heartbeat/Dummy").exists() {
            println!("skipped: needs Debian's resource-agents (scripts/install-deps installs it as root)");
            return None;
        }
        // Agents keep state in HA_RSCTMP, which only root may create.
        // SAFETY: geteuid(2) has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            println!("skipped: needs root");
            return None;
        }
        Some(root)
    }

    fn ocf(agent: &str, root: &Path, params: &[(&str, &str)]) -> Params {
        Params::Ocf(Ocf {
            agent: agent.into(),
            params: params
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>(),
            ocf_root: root.to_path_buf(),
            check_interval_ms: 1_000,
            check_level: Some(10),
            promotable: false,
            notify: false,
            floating: None,
            link: None,
        })
    }

    /// An agent of our own, `ocf:acme:NAME`, in a private OCF root under
    /// `dir` (returned): the shell `script`.
    fn acme_agent(dir: &Path, name: &str, script: &str) -> std::path::PathBuf {
        let root = dir.join("ocf");
        let agents = root.join("resource.d/acme");
        std::fs::create_dir_all(&agents).unwrap();
        std::fs::write(agents.join(name), script).unwrap();
        std::fs::set_permissions(
            agents.join(name),
            std::os::unix::fs::PermissionsExt::from_mode(0o755),
        )
        .unwrap();
        root
    }

    /// Probes `r` until its new script can run (ETXTBSY while another
    /// test's fork still holds the write descriptor), bounded.
    async fn first_probe(r: &crate::kinds::Resource) {
        for _ in 0..100 {
            if run_action(r, ActionKind::Probe).await == Outcome::Stopped {
                return;
            }
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
    }

    fn promotable(p: Params, notify: bool) -> Params {
        match p {
            Params::Ocf(o) => Params::Ocf(Ocf {
                promotable: true,
                notify,
                ..o
            }),
            other => other,
        }
    }

    /// Debian's Dummy, unchanged: probe, start, check, stop, probe.
    #[test]
    fn debians_dummy_starts_is_checked_and_stops() {
        let Some(root) = debian_agents() else { return };
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("dummy.state");
        let p = ocf("ocf:heartbeat:Dummy", root, &[("state", state.to_str().unwrap())]);
        let r = resource(p, 20_000, dir.path());
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert!(state.exists(), "Dummy keeps its state file");
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Running);
            assert_eq!(run_check(&r).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            // Idempotent, as the API requires.
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
        });
    }

    /// Debian's `anything` runs a daemon; the check finds it gone after it
    /// is killed behind the agent's back. Its daemon keeps no pipe of ours
    /// open, and the start does not wait for it.
    #[test]
    fn debians_anything_runs_a_daemon_and_notices_it_dying() {
        let Some(root) = debian_agents() else { return };
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("sleep.pid");
        let p = ocf(
            "ocf:heartbeat:anything",
            root,
            &[
                ("binfile", "/bin/sleep"),
                ("cmdline_options", "3600"),
                ("pidfile", pidfile.to_str().unwrap()),
            ],
        );
        let r = resource(p, 20_000, dir.path());
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(run_check(&r).await, Outcome::Running);
            let pid: i32 = std::fs::read_to_string(&pidfile).unwrap().trim().parse().unwrap();
            // SAFETY: kill(2) of the daemon this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            // Until its parent (init, here) reaps it, `kill -0` in the
            // agent still finds it: bounded wait.
            let mut found = Outcome::Running;
            for _ in 0..100 {
                found = run_check(&r).await;
                if found != Outcome::Running {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
            }
            // anything says "generic error" when its pid file outlives the
            // daemon: a failure either way.
            assert_ne!(found, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
        });
    }

    /// An agent of our own in a private OCF root: the environment of the
    /// API (and Pacemaker's meta variables, in milliseconds), the exit
    /// reason in the failure, and a fatal error barring every node.
    #[test]
    fn an_agent_gets_the_apis_environment_and_its_exit_reason_is_kept() {
        let dir = tempfile::tempdir().unwrap();
        let seen = dir.path().join("seen");
        let root = acme_agent(
            dir.path(),
            "Probe",
            &format!(
                "#!/bin/sh\nenv | grep -E '^(OCF_|TANDEM_)' | sort > {seen}.$1\ncase $1 in\n monitor) exit 7;;\n start) echo 'ocf-exit-reason:the colour is wrong' >&2; exit 6;;\n stop) exit 0;;\nesac\nexit 3\n",
                seen = seen.display()
            ),
        );
        let p = ocf("ocf:acme:Probe", &root, &[("colour", "blue")]);
        let r = resource(p, 7_000, dir.path());
        rt().block_on(async {
            first_probe(&r).await;
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_check(&r).await, Outcome::Stopped);
            let started = run_action(&r, ActionKind::Start).await;
            assert_eq!(
                started,
                Outcome::Barred {
                    bar: Bar::Everywhere,
                    why: "start exited 6 (OCF_ERR_CONFIGURED): the colour is wrong".into()
                }
            );
        });
        let env = std::fs::read_to_string(format!("{}.start", seen.display())).unwrap();
        for want in [
            format!("OCF_ROOT={}", root.display()),
            "OCF_RA_VERSION_MAJOR=1".into(),
            "OCF_RA_VERSION_MINOR=1".into(),
            "OCF_RESOURCE_INSTANCE=g-r".into(),
            "OCF_RESOURCE_TYPE=Probe".into(),
            "OCF_RESOURCE_PROVIDER=acme".into(),
            "OCF_RESKEY_colour=blue".into(),
            "OCF_RESKEY_CRM_meta_timeout=7000".into(),
            "OCF_RESKEY_CRM_meta_interval=0".into(),
            "TANDEM_GROUP=g".into(),
        ] {
            assert!(env.lines().any(|l| l == want), "{want} not in:\n{env}");
        }
        assert!(!env.contains("OCF_CHECK_LEVEL"), "a probe is depth 0:\n{env}");
        // The check is a monitor with its interval and depth.
        let checked = std::fs::read_to_string(format!("{}.monitor", seen.display())).unwrap();
        assert!(checked.contains("OCF_RESKEY_CRM_meta_interval=1000"), "{checked}");
        assert!(checked.contains("OCF_CHECK_LEVEL=10"), "{checked}");
    }

    /// Debian's Stateful, unchanged, as a promotable resource: the start
    /// promotes it, the check wants it promoted, and the stop demotes it
    /// first (Stateful refuses to stop a promoted instance: its stop
    /// says 8), both by the agent and by the guard.
    #[test]
    fn debians_stateful_is_promoted_on_start_and_demoted_before_its_stop() {
        let Some(root) = debian_agents() else { return };
        let dir = tempfile::tempdir().unwrap();
        let state = dir.path().join("stateful.state");
        let plain = ocf("ocf:heartbeat:Stateful", root, &[("state", state.to_str().unwrap())]);
        let r = resource(promotable(plain.clone(), false), 20_000, dir.path());
        let read = || std::fs::read_to_string(&state).unwrap_or_default();
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(read().trim(), "master", "promoted after the start");
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Running);
            assert_eq!(run_check(&r).await, Outcome::Running);
            // Demoted behind Tandem's back: running, but not as wanted.
            std::fs::write(&state, "slave\n").unwrap();
            let o = run_check(&r).await;
            assert!(
                matches!(&o, Outcome::Failed(w) if w.contains("not promoted")),
                "{o:?}"
            );
            std::fs::write(&state, "master\n").unwrap();
            // The same agent without `promotable`: its stop of a promoted
            // instance fails (what the demote is for).
            let unpromoting = resource(plain, 20_000, dir.path());
            let o = run_action(&unpromoting, ActionKind::Stop).await;
            assert!(matches!(&o, Outcome::Failed(w) if w.contains("exited 8")), "{o:?}");
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
            assert!(!state.exists());
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            // The guard's stop does the same when the agent is gone.
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
        });
        let mut part = crate::guard::Leaving::default();
        r.kind.guard(&r.owner, &mut part);
        let did = crate::guard::run_stop_commands(&part.as_lease());
        assert_eq!(did.len(), 2, "{did:?}");
        assert!(did[0].ends_with("demote: exit status: 0"), "{did:?}");
        assert!(did[1].ends_with("stop: exit status: 0"), "{did:?}");
        assert!(!state.exists(), "{did:?}");
    }

    /// `notify`: the agent is told before and after each of its own
    /// operations, with Pacemaker's variables; a failing notify is
    /// reported but does not fail the start.
    #[test]
    fn notifications_carry_pacemakers_variables_and_never_fail_an_action() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("log");
        let state = dir.path().join("state");
        let root = acme_agent(
            dir.path(),
            "Roles",
            &format!(
                "#!/bin/sh\nm=OCF_RESKEY_CRM_meta\necho \"$1 ${{OCF_RESKEY_CRM_meta_notify_type}} ${{OCF_RESKEY_CRM_meta_notify_operation}} [${{OCF_RESKEY_CRM_meta_notify_promoted_uname}}] [${{OCF_RESKEY_CRM_meta_notify_active_resource}}] ${{OCF_RESKEY_CRM_meta_promotable}}\" >> {log}\ncase $1 in\n start) echo up > {state}; exit 0;;\n promote) echo promoted > {state}; exit 0;;\n demote) echo up > {state}; exit 0;;\n stop) rm -f {state}; exit 0;;\n notify) exit 1;;\n monitor) test -f {state} || exit 7; grep -q promoted {state} && exit 8; exit 0;;\nesac\nexit 3\n",
                log = log.display(),
                state = state.display()
            ),
        );
        let p = promotable(ocf("ocf:acme:Roles", &root, &[]), true);
        let r = resource(p, 7_000, dir.path());
        rt().block_on(async {
            first_probe(&r).await;
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(run_check(&r).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
        });
        let calls: Vec<String> = std::fs::read_to_string(&log)
            .unwrap()
            .lines()
            .filter(|l| !l.starts_with("monitor"))
            .map(str::to_string)
            .collect();
        let node = "n1";
        assert_eq!(
            calls,
            vec![
                "start   [] [] true".to_string(),
                "notify post start [] [g-r] true".into(),
                "notify pre promote [] [g-r] true".into(),
                "promote   [] [] true".into(),
                format!("notify post promote [{node}] [g-r] true"),
                format!("notify pre demote [{node}] [g-r] true"),
                "demote   [] [] true".into(),
                "notify post demote [] [g-r] true".into(),
                "notify pre stop [] [g-r] true".into(),
                "stop   [] [] true".into(),
            ]
        );
    }
}
