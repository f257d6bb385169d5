//! `exec`: an LSB-style script called with `start`, `stop`, `status`
//! (status 0 = running, 1-3 = stopped), so `/etc/init.d` scripts work.

use std::path::PathBuf;
use std::time::Duration;

use tandem_core::group::{ActionKind, Outcome};
use tandem_core::kinds::exec::Exec;

use super::{Act, BindError, Bind, Driver};
use crate::guard::{Leaving, StopCommand};
use super::Resource;
use crate::child::{run_bounded, Owner};

/// An LSB script on this node.
#[derive(Debug, Clone)]
pub struct ExecDriver {
    script: PathBuf,
}

/// The agent's side of an `exec` resource.
pub fn bind(p: &Exec, _cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
    Ok(Box::new(ExecDriver {
        script: p.script.clone(),
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
            args: vec!["stop".into()],
            env: owner.env_vec(),
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
    let (code, text) = match run_bounded(&e.script, &[arg], Some(owner), None, limit).await {
        Ok(r) => r,
        Err(err) => return Outcome::Failed(err.to_string()),
    };
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
            "{} {arg} exited {}{said}",
            e.script.display(),
            c.map_or_else(|| "by a signal".to_string(), |c| c.to_string())
        )),
    }
}


#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use tandem_core::group::{ActionKind, Outcome};
    use tandem_core::kinds::exec::Exec;
    use tandem_core::kinds::Params;

    use crate::kinds::tests::resource;
    use crate::child::{run_bounded, test_runtime as rt, RunError};
    use crate::kinds::run_action;

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
            }),
            5_000,
            dir.path(),
        );
        rt().block_on(async {
            // Another test's fork may hold the script's write descriptor for
            // a moment (ETXTBSY); wait until it can run.
            for _ in 0..100 {
                match run_bounded(&script, &["status"], None, None, Duration::from_secs(5)).await {
                    Err(RunError::Spawn { source, .. })
                        if source.raw_os_error() == Some(libc::ETXTBSY) =>
                    {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    _ => break,
                }
            }
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

}
