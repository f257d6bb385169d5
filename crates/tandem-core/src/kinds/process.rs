//! `process`: a long-running command the agent starts in its own session,
//! watches through its pid file and stops with a signal, then SIGKILL to
//! its whole process group.

use std::collections::BTreeMap;
use std::path::PathBuf;

use super::{Field, Fields, Kind, Spec};

/// A `process` resource that has not exited this long after its stop
/// signal gets SIGKILL (with the default timeout; at most half of a
/// shorter one).
pub const DEFAULT_KILL_AFTER_MS: u64 = 5_000;
/// How long a stop waits for SIGKILL to take effect.
pub const KILL_WAIT_MS: u64 = 2_000;

/// Stop signals a `process` may name (with or without `SIG`).
pub const STOP_SIGNALS: &[&str] = &["TERM", "INT", "QUIT", "HUP", "KILL", "USR1", "USR2"];

/// A supervised long-running command.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Process {
    /// Program and arguments.
    pub command: Vec<String>,
    /// Signal name used to stop it (without `SIG`).
    pub stop_signal: String,
    /// After the stop signal, SIGKILL to its process group this much later.
    pub kill_after_ms: u64,
    /// Working directory.
    pub working_dir: Option<PathBuf>,
    /// Extra environment (a value whose name says it is a credential is
    /// written redacted, as everything shown is).
    #[serde(serialize_with = "super::redacted_map")]
    pub env: BTreeMap<String, String>,
}

impl Kind for Process {
    const NAME: &'static str = "process";
    const SUMMARY: &'static str = "a long-running command, supervised by the agent";
    const FIELDS: &'static [Field] = &[
        Field {
            name: "command",
            doc: "program and arguments, e.g. [\"/usr/sbin/nginx\", \"-g\", \"daemon off;\"]",
            default: None,
        },
        Field {
            name: "stop_signal",
            doc: "signal that asks the process to stop",
            default: Some("TERM"),
        },
        Field {
            name: "kill_after_ms",
            doc: "how long after the stop signal the process group gets SIGKILL",
            default: Some("5000, or half of timeout_ms if that is less"),
        },
        Field {
            name: "working_dir",
            doc: "working directory",
            default: Some("the agent's working directory"),
        },
        Field {
            name: "env",
            doc: "extra environment variables",
            default: Some("none"),
        },
    ];

    fn check(f: &mut Fields<'_>) -> Option<Process> {
        let command = f.require::<Vec<String>>(
            "process",
            "command",
            "command = [\"/usr/bin/program\", \"--arg\"]",
        );
        let stop = f.take::<String>("stop_signal");
        let kill_after = f.take::<u64>("kill_after_ms");
        let working_dir = f.take::<PathBuf>("working_dir");
        let env = f.take::<BTreeMap<String, String>>("env");
        let command = command?;
        if command.get_ref().first().map_or(true, String::is_empty) {
            f.error(Some(command.span()), "`command` is empty", "write the program and its arguments: command = [\"/usr/bin/program\", \"--arg\"]");
        }
        let stop_signal = stop.as_ref().map_or("TERM".to_string(), |s| {
            s.get_ref().trim_start_matches("SIG").to_string()
        });
        if !STOP_SIGNALS.contains(&stop_signal.as_str()) {
            f.error(
                stop.as_ref().map(|s| s.span()),
                format!("unknown stop signal `{stop_signal}`"),
                format!("write one of: {}", STOP_SIGNALS.join(", ")),
            );
        }
        let timeout = f.timeout_ms();
        let kill_after_ms = kill_after
            .as_ref()
            .map_or(DEFAULT_KILL_AFTER_MS.min(timeout / 2), |k| *k.get_ref());
        // SIGKILL must come, and have time to work, within the stop's
        // limit: otherwise a hung process outlives its stop.
        if kill_after_ms == 0 || kill_after_ms.saturating_add(KILL_WAIT_MS) > timeout {
            f.error(
                kill_after.as_ref().map(|k| k.span()).or_else(|| f.timeout_at()),
                format!(
                    "kill_after_ms ({kill_after_ms}) leaves no time for SIGKILL within timeout_ms ({timeout}): the stop needs {KILL_WAIT_MS} ms after it"
                ),
                format!(
                    "set kill_after_ms between 1 and {} or raise timeout_ms",
                    timeout.saturating_sub(KILL_WAIT_MS).max(1)
                ),
            );
        }
        if let Some((k, _)) = env
            .as_ref()
            .and_then(|e| e.get_ref().iter().find(|(_, v)| *v == crate::config::REDACTED))
        {
            f.error(
                env.as_ref().map(|e| e.span()),
                format!(
                    "`env` {k} is `{}`, the mark `tandem config show` writes in place of a secret",
                    crate::config::REDACTED
                ),
                "write the real value: a file made from `config show` output has its secrets masked",
            );
        }
        Some(Process {
            command: command.into_inner(),
            stop_signal,
            kill_after_ms,
            working_dir: working_dir.map(|w| w.into_inner()),
            env: env.map(|e| e.into_inner()).unwrap_or_default(),
        })
    }
}

impl Spec for Process {
    fn describe(&self) -> String {
        format!("process {}", self.command.join(" "))
    }

    fn secrets(&self) -> Vec<&str> {
        self.env
            .iter()
            .filter(|(k, _)| crate::fence::is_secret(k))
            .map(|(_, v)| v.as_str())
            .collect()
    }
}
