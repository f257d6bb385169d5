//! Child processes, which every kind that runs programs shares: who a
//! resource belongs to ([`Owner`]: its environment and file names),
//! children in sessions of their own whose whole process group is killed
//! on a timeout ([`run_bounded`]), pid files checked against the process's
//! start time, and signal names.
//!
//! Every child gets `TANDEM_CLUSTER`, `TANDEM_NODE`, `TANDEM_GROUP` and
//! `TANDEM_RESOURCE` in its environment.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use tokio::io::AsyncReadExt as _;

/// Most output of a script kept for an error message.
pub const MAX_OUTPUT: usize = 2048;

/// Who a resource belongs to (for the environment and file names).
#[derive(Debug, Clone)]
pub struct Owner {
    /// Cluster name.
    pub cluster: String,
    /// This node.
    pub node: String,
    /// Group name.
    pub group: String,
    /// Resource name.
    pub resource: String,
    /// Directory for pid files and logs.
    pub run_dir: PathBuf,
}

impl Owner {
    /// The environment every child of this resource gets.
    pub(crate) fn env(&self) -> [(&'static str, &str); 4] {
        [
            ("TANDEM_CLUSTER", &self.cluster),
            ("TANDEM_NODE", &self.node),
            ("TANDEM_GROUP", &self.group),
            ("TANDEM_RESOURCE", &self.resource),
        ]
    }

    /// The environment as owned pairs (for the guard).
    pub fn env_vec(&self) -> Vec<(String, String)> {
        self.env()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The pid file of a `process` resource.
    pub fn pidfile(&self) -> PathBuf {
        self.file("pid")
    }

    /// A file of this resource in the run directory.
    pub(crate) fn file(&self, ext: &str) -> PathBuf {
        run_file(&self.run_dir, &self.group, &self.resource, ext)
    }
}

/// File `ext` of resource `group/resource` in the run directory (see
/// [`Owner::file`]).
pub(crate) fn run_file(run_dir: &Path, group: &str, resource: &str, ext: &str) -> PathBuf {
    run_dir.join(format!("{group}.{resource}.{ext}"))
}

/// systemd's notification variables: the agent's own, never a child's (a
/// daemon started as a resource would otherwise tell systemd, in the
/// agent's name, that it is ready or alive).
pub const NOTIFY_VARIABLES: [&str; 3] = ["NOTIFY_SOCKET", "WATCHDOG_USEC", "WATCHDOG_PID"];

/// Makes the child of `cmd` lead a session (and process group) of its own:
/// signals reach it and everything it starts, and it survives whatever
/// happens to the process group of its parent. It does not inherit
/// systemd's notification socket ([`NOTIFY_VARIABLES`]).
pub fn own_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    for v in NOTIFY_VARIABLES {
        cmd.env_remove(v);
    }
    // SAFETY: setsid is async-signal-safe, the only call made between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Kills a process group when dropped (unless disarmed with `None`).
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0.filter(|p| *p > 1) {
            // SAFETY: plain kill(2) of the group our child leads.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

/// A single-threaded runtime for the unit tests of the shell's modules.
/// A single-threaded runtime for running a few bounded children outside
/// the agent's loop (`config validate`'s checks of agents and devices).
pub fn checks_runtime() -> std::io::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
}

#[cfg(test)]
pub(crate) fn test_runtime() -> tokio::runtime::Runtime {
    checks_runtime().expect("a test runtime")
}

/// The number of a signal name (`TERM`, `SIGINT`, `KILL`, ...): the
/// names are the core's `STOP_SIGNALS` (a test keeps the two in step).
pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim_start_matches("SIG");
    Some(match n {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return None,
    })
}

// ---- process ----------------------------------------------------------------

/// Start time (clock ticks since boot) and state of `pid`, from /proc.
pub(crate) fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    // Field 22 (starttime) is the 20th after the command.
    let start = f.get(19)?.parse().ok()?;
    Some((start, state))
}

/// A pid file's process id and start time (see [`proc_stat`]).
pub(crate) fn read_pidfile(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut f = text.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

// ---- exec -------------------------------------------------------------------

/// Why a bounded child run did not come to an exit status.
#[derive(Debug, thiserror::Error)]
pub enum RunError {
    /// The program could not be started.
    #[error("cannot run {}: {source}", program.display())]
    Spawn {
        /// The program.
        program: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// Waiting for it failed.
    #[error("waiting for {}: {source}", program.display())]
    Wait {
        /// The program.
        program: PathBuf,
        /// What the OS said.
        source: std::io::Error,
    },
    /// It ran past its limit; its whole process group was killed.
    #[error("{} timed out after {limit_ms} ms", program.display())]
    TimedOut {
        /// The program.
        program: PathBuf,
        /// The limit.
        limit_ms: u64,
    },
}

/// Runs `program args` in its own process group with the owner's
/// environment and `input` on stdin; returns the exit code (None: killed)
/// and the first bytes of its output (stdout, then stderr). The whole group
/// is killed when `limit` passes.
pub async fn run_bounded(
    program: &Path,
    args: &[&str],
    owner: Option<&Owner>,
    input: Option<&[u8]>,
    limit: Duration,
) -> Result<(Option<i32>, String), RunError> {
    let env = owner.map(Owner::env_vec).unwrap_or_default();
    let ran = run(program, args, &env, input, limit, MAX_OUTPUT).await?;
    let mut text = ran.stdout;
    if text.len() < MAX_OUTPUT {
        text.extend_from_slice(&ran.stderr[..ran.stderr.len().min(MAX_OUTPUT - text.len())]);
    }
    Ok((ran.code, String::from_utf8_lossy(&text).trim().to_string()))
}

/// How long output is still read after the program exited: a daemon it
/// started may hold its pipes open for ever.
const AFTER_EXIT_READ_MS: u64 = 200;

/// What a bounded run of a program gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ran {
    /// Its exit code (None: killed by a signal).
    pub code: Option<i32>,
    /// The first bytes of its stdout (as many as the caller keeps).
    pub stdout: Vec<u8>,
    /// The first bytes of its stderr.
    pub stderr: Vec<u8>,
}

/// Runs `program args` in its own process group with `env` added to the
/// agent's environment and `input` on stdin, to its exit or `limit`
/// (then the whole group is killed), keeping the first `keep_bytes` of
/// each of its outputs. Output is read until the program
/// exits and a moment after, not until every pipe closes: a daemon that a
/// start script left running with the pipes open does not hold it up.
pub async fn run(
    program: &Path,
    args: &[&str],
    env: &[(String, String)],
    input: Option<&[u8]>,
    limit: Duration,
    keep_bytes: usize,
) -> Result<Ran, RunError> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .envs(env.iter().map(|(k, v)| (k.as_str(), v.as_str())));
    own_session(cmd.as_std_mut());
    let mut child = cmd.spawn().map_err(|source| RunError::Spawn {
        program: program.to_path_buf(),
        source,
    })?;
    let pid = child.id().map(|p| p as i32);
    // Until the child has exited, dropping this future (an outer timeout,
    // a shutdown) kills its whole process group: `kill_on_drop` alone
    // kills the child and orphans what it started (a hung start's
    // `sleep 3600` survived that way).
    let mut group = GroupKill(pid);
    let stdin = child.stdin.take();
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let kept_out = std::cell::RefCell::new(Vec::new());
    let kept_err = std::cell::RefCell::new(Vec::new());
    let run = async {
        let feed = async {
            if let (Some(mut w), Some(bytes)) = (stdin, input) {
                // A child that does not read its input is its own business.
                let _ = tokio::io::AsyncWriteExt::write_all(&mut w, bytes).await;
            }
        };
        // Both pipes at once, so the child never blocks on a full one.
        let reading = async {
            tokio::join!(
                feed,
                drain_into(out, &kept_out, keep_bytes),
                drain_into(err, &kept_err, keep_bytes)
            );
        };
        tokio::pin!(reading);
        let status = tokio::select! {
            status = child.wait() => {
                let grace = Duration::from_millis(AFTER_EXIT_READ_MS);
                let _ = tokio::time::timeout(grace, &mut reading).await;
                status
            }
            () = &mut reading => child.wait().await,
        };
        status
    };
    let outcome = tokio::time::timeout(limit, run).await;
    if matches!(outcome, Ok(Ok(_))) {
        // It exited by itself: what it left running in its group (a
        // daemon a start script launched) is the service, not debris.
        group.0 = None;
    }
    match outcome {
        Ok(Ok(status)) => Ok(Ran {
            code: status.code(),
            stdout: kept_out.into_inner(),
            stderr: kept_err.into_inner(),
        }),
        Ok(Err(source)) => Err(RunError::Wait {
            program: program.to_path_buf(),
            source,
        }),
        Err(_) => {
            // `group` kills the whole group as it drops.
            Err(RunError::TimedOut {
                program: program.to_path_buf(),
                limit_ms: u64::try_from(limit.as_millis()).unwrap_or(u64::MAX),
            })
        }
    }
}

/// Reads a pipe to its end into `kept`, keeping the first `keep_bytes`
/// (what was read so far stays there if the read is given up).
async fn drain_into(
    pipe: Option<impl tokio::io::AsyncRead + Unpin>,
    kept: &std::cell::RefCell<Vec<u8>>,
    keep_bytes: usize,
) {
    let Some(mut pipe) = pipe else {
        return;
    };
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => {
                let mut k = kept.borrow_mut();
                let room = keep_bytes.saturating_sub(k.len());
                k.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    /// An owner whose files go to `dir`.
    pub(crate) fn owner(dir: &Path) -> Owner {
        Owner {
            cluster: "c".into(),
            node: "n1".into(),
            group: "g".into(),
            resource: "r".into(),
            run_dir: dir.to_path_buf(),
        }
    }

    /// The pid a test script wrote to `path`.
    pub(crate) fn read_pid(path: &Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    pub(crate) fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks existence.
        let exists = unsafe { libc::kill(pid, 0) == 0 };
        exists
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
    }

    #[test]
    fn a_child_never_gets_systemds_notification_socket() {
        let mut cmd = std::process::Command::new("env");
        cmd.env("NOTIFY_SOCKET", "/run/systemd/notify")
            .env("WATCHDOG_USEC", "10000000")
            .env("KEPT", "1");
        own_session(&mut cmd);
        let out = String::from_utf8(cmd.output().unwrap().stdout).unwrap();
        assert!(out.lines().any(|l| l == "KEPT=1"), "{out}");
        for v in NOTIFY_VARIABLES {
            assert!(!out.contains(&format!("{v}=")), "{v} passed on:\n{out}");
        }
    }

    /// Issue 15, defect 7: a hanging start left its `sleep 3600` child as
    /// an orphan: the outer timeout dropped the action first, and dropping
    /// killed only the direct child. Now the whole group dies, whichever
    /// bound fires, and a start that exits by itself keeps what it started.
    #[test]
    fn no_child_of_a_timed_out_action_survives() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 3600 & echo $! > {}; wait", pidfile.display());
        let sh = Path::new("/bin/sh");
        let args = ["-c", script.as_str()];
        let rt = test_runtime();
        // The action's own limit fires.
        let r = rt.block_on(run_bounded(
            sh,
            &args,
            None,
            None,
            Duration::from_millis(300),
        ));
        assert!(matches!(r, Err(RunError::TimedOut { .. })), "{r:?}");
        let child = read_pid(&pidfile);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !alive(child),
            "the child {child} survived the action's timeout"
        );
        // An outer bound drops the action first.
        std::fs::remove_file(&pidfile).unwrap();
        let outer = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(300),
                run_bounded(sh, &args, None, None, Duration::from_secs(60)),
            )
            .await
        });
        assert!(outer.is_err());
        let child = read_pid(&pidfile);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!alive(child), "the child {child} survived an outer timeout");
        // A script that starts a daemon and exits keeps it.
        let daemon = format!(
            "sleep 3600 >/dev/null 2>&1 & echo $! > {}",
            pidfile.display()
        );
        let r = rt.block_on(run_bounded(
            sh,
            &["-c", daemon.as_str()],
            None,
            None,
            Duration::from_secs(5),
        ));
        assert!(matches!(r, Ok((Some(0), _))), "{r:?}");
        let child = read_pid(&pidfile);
        assert!(alive(child), "the daemon a start launched was killed");
        // SAFETY: our own test's child.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }

    /// Every stop signal validation accepts is one the agent can send.
    #[test]
    fn every_stop_signal_the_configuration_allows_has_a_number() {
        for name in tandem_core::kinds::process::STOP_SIGNALS {
            assert!(signal_number(name).is_some(), "{name}");
            assert_eq!(signal_number(&format!("SIG{name}")), signal_number(name));
        }
        assert_eq!(signal_number("WINCH"), None);
    }
}
