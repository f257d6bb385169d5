//! Running commands with clear errors, and entering a network namespace.

use std::fs::File;
use std::os::fd::AsRawFd;
use std::path::Path;
use std::process::{Command, Output, Stdio};

/// A command the testbed ran that failed.
#[derive(Debug, thiserror::Error)]
pub enum SysError {
    /// The program could not be started at all.
    #[error("cannot run `{cmd}`: {source} (is the package that provides it installed?)")]
    Spawn {
        /// The command line.
        cmd: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The program ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Failed {
        /// The command line.
        cmd: String,
        /// Exit status.
        status: std::process::ExitStatus,
        /// What it printed on stderr.
        stderr: String,
    },
    /// Entering a namespace failed.
    #[error("cannot enter network namespace {name}: {source}")]
    Setns {
        /// Namespace name.
        name: String,
        /// The OS error.
        source: std::io::Error,
    },
}

/// Runs `program args...`, returning its stdout; fails with its stderr.
pub fn run(program: &str, args: &[&str]) -> Result<String, SysError> {
    run_with_input(program, args, None)
}

/// Like [`run`], feeding `input` on stdin.
pub fn run_with_input(
    program: &str,
    args: &[&str],
    input: Option<&str>,
) -> Result<String, SysError> {
    use std::io::Write;
    let cmd = format!("{program} {}", args.join(" "));
    let mut child = Command::new(program)
        .args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| SysError::Spawn {
            cmd: cmd.clone(),
            source,
        })?;
    if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
        stdin
            .write_all(text.as_bytes())
            .map_err(|source| SysError::Spawn {
                cmd: cmd.clone(),
                source,
            })?;
    }
    let Output {
        status,
        stdout,
        stderr,
    } = child.wait_with_output().map_err(|source| SysError::Spawn {
        cmd: cmd.clone(),
        source,
    })?;
    if status.success() {
        Ok(String::from_utf8_lossy(&stdout).into_owned())
    } else {
        Err(SysError::Failed {
            cmd,
            status,
            stderr: String::from_utf8_lossy(&stderr).trim().to_string(),
        })
    }
}

/// Runs `program args...` inside network namespace `ns`.
pub fn run_in(ns: &str, program: &str, args: &[&str]) -> Result<String, SysError> {
    let mut full = vec!["netns", "exec", ns, program];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Runs `ip -n NS args...` (an `ip` command acting on namespace `ns`).
pub fn ip(ns: &str, args: &[&str]) -> Result<String, SysError> {
    let mut full = vec!["-n", ns];
    full.extend_from_slice(args);
    run("ip", &full)
}

/// Path of a named network namespace's handle.
pub fn netns_path(name: &str) -> std::path::PathBuf {
    Path::new("/run/netns").join(name)
}

/// Moves the calling thread into network namespace `name`. Only this thread
/// moves; sockets it creates afterwards belong to that namespace for life.
pub fn enter_netns(name: &str) -> Result<(), SysError> {
    let err = |source| SysError::Setns {
        name: name.to_string(),
        source,
    };
    let f = File::open(netns_path(name)).map_err(err)?;
    // SAFETY: the fd is valid for the call; CLONE_NEWNET only affects this thread.
    let rc = unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) };
    if rc != 0 {
        return Err(err(std::io::Error::last_os_error()));
    }
    Ok(())
}
