//! `exec`: an LSB-style script called with `start`, `stop`, `status`
//! (status 0 = running, 1-3 = stopped), so `/etc/init.d` scripts work;
//! or a heartbeat `resource.d` script, its arguments first and its status
//! read from its words.

use std::path::PathBuf;
use std::time::Duration;

use tandem_core::group::{ActionKind, Outcome};
use tandem_core::kinds::exec::{says_running, Exec, StatusFrom};

use super::{Act, BindError, Bind, Driver};
use crate::guard::{Leaving, StopCommand};
use super::Resource;
use crate::child::{run_bounded, Owner};

/// An LSB script on this node.
#[derive(Debug, Clone)]
pub struct ExecDriver {
    script: PathBuf,
    args: Vec<String>,
    status_from: StatusFrom,
}

/// The agent's side of an `exec` resource.
pub fn bind(p: &Exec, _cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
    Ok(Box::new(ExecDriver {
        script: p.script.clone(),
        args: p.args.clone(),
        status_from: p.status_from,
    }))
}

impl Driver for ExecDriver {
    fn kind(&self) -> &'static str {
        "exec"
    }

    fn action<'a>(&'a self, r: &'a Resource, action: ActionKind) -> Act<'a> {
        let limit = Duration::from_millis(r.timeout_ms);
        Box::pin(exec_action(self, &r.owner, action, limit))
    }

    /// The guard runs the script's `stop` when the agent is gone.
    fn guard(&self, owner: &Owner, part: &mut Leaving) {
        part.stop_commands.push(StopCommand {
            program: self.script.clone(),
            args: self.args.iter().cloned().chain(["stop".to_string()]).collect(),
            env: owner.env_vec(),
            first: false,
        });
    }
}

async fn exec_action(
    e: &ExecDriver,
    owner: &Owner,
    kind: ActionKind,
    limit: Duration,
) -> Outcome {
    let arg = match kind {
        ActionKind::Probe => "status",
        ActionKind::Start => "start",
        ActionKind::Stop => "stop",
    };
    let mut args: Vec<&str> = e.args.iter().map(String::as_str).collect();
    args.push(arg);
    let (code, text) = match run_bounded(&e.script, &args, Some(owner), None, limit).await {
        Ok(r) => r,
        Err(err) => return Outcome::Failed(err.to_string()),
    };
    if kind == ActionKind::Probe && e.status_from == StatusFrom::Output {
        // Heartbeat read only the words: the exit code says nothing.
        return if says_running(&text) {
            Outcome::Running
        } else {
            Outcome::Stopped
        };
    }
    let said = if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    };
    match (kind, code) {
        (ActionKind::Probe, Some(0)) => Outcome::Running,
        // LSB status: 1 dead with pid file, 2 dead with lock file, 3 not running.
        (ActionKind::Probe, Some(1..=3)) => Outcome::Stopped,
        (ActionKind::Start, Some(0)) => Outcome::Running,
        (ActionKind::Stop, Some(0)) => Outcome::Stopped,
        (_, c) => Outcome::Failed(format!(
            "{} {} exited {}{said}",
            e.script.display(),
            args.join(" "),
            c.map_or_else(|| "by a signal".to_string(), |c| c.to_string())
        )),
    }
}


#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tandem_core::group::{ActionKind, Outcome};
    use tandem_core::kinds::exec::{Exec, StatusFrom};
    use tandem_core::kinds::Params;

    use crate::kinds::tests::resource;
    use crate::child::{run_bounded, test_runtime as rt, RunError};
    use crate::kinds::run_action;

    /// Another test's fork may hold a just-written script's write
    /// descriptor for a moment (ETXTBSY): waits until it can run.
    async fn until_runnable(script: &std::path::Path, args: &[&str]) {
        for _ in 0..100 {
            match run_bounded(script, args, None, None, Duration::from_secs(5)).await {
                Err(RunError::Spawn { source, .. }) if source.raw_os_error() == Some(libc::ETXTBSY) => {
                    tokio::time::sleep(Duration::from_millis(10)).await
                }
                _ => return,
            }
        }
    }

    #[test]
    fn exec_follows_lsb_exit_codes_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("svc");
        let state = dir.path().join("state");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n start) touch {s}; echo started;;\n stop) rm -f {s};;\n status) [ -e {s} ] && exit 0; exit 3;;\n hang) sleep 60;;\nesac\n",
                s = state.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let r = resource(
            Params::Exec(Exec {
                script: script.clone(),
                args: vec![],
                status_from: StatusFrom::Exit,
            }),
            5_000,
            dir.path(),
        );
        rt().block_on(async {
            until_runnable(&script, &["status"]).await;
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
            let t0 = Instant::now();
            let e = run_bounded(&script, &["hang"], None, None, Duration::from_millis(200)).await;
            assert!(matches!(e, Err(RunError::TimedOut { limit_ms: 200, .. })), "{e:?}");
            assert!(t0.elapsed() < Duration::from_secs(5));
        });
    }


    /// Heartbeat's `resource.d` convention: `Script::a1::a2` is called as
    /// `script a1 a2 start|stop|status`, and its status is read from its
    /// words (this script exits 0 whatever it says).
    #[test]
    fn a_heartbeat_script_gets_its_arguments_first_and_its_status_from_its_words() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("hb");
        let state = dir.path().join("state");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\necho \"$@\" >> {s}.calls\n[ \"$1 $2\" = 'drbd0 /data' ] || exit 9\ncase \"$3\" in\n start) touch {s};;\n stop) rm -f {s};;\n status) [ -e {s} ] && echo 'hb: running' || echo 'hb: not running';;\nesac\nexit 0\n",
                s = state.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let r = resource(
            Params::Exec(Exec {
                script: script.clone(),
                args: vec!["drbd0".into(), "/data".into()],
                status_from: StatusFrom::Output,
            }),
            5_000,
            dir.path(),
        );
        rt().block_on(async {
            until_runnable(&script, &["drbd0", "/data", "x"]).await;
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
        });
        let calls = std::fs::read_to_string(format!("{}.calls", state.display())).unwrap();
        assert!(calls.lines().any(|l| l == "drbd0 /data start"), "{calls}");
        assert!(calls.lines().any(|l| l == "drbd0 /data status"), "{calls}");
    }
}
