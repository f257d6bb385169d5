//! `exec`: an LSB-style script called with `start`, `stop` and `status`
//! (exit 0 running, 3 stopped), like an init script, or one of
//! heartbeat's `resource.d` scripts, called with its arguments first
//! (`Script::a1::a2` in `haresources` is `script a1 a2 start`), whose
//! status heartbeat judged by the words it printed ([`StatusFrom`]).

use std::path::PathBuf;

use super::{Field, Fields, Kind, Spec};

/// Most arguments a script is given.
pub const MAX_ARGS: usize = 32;

/// How a script's `status` is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StatusFrom {
    /// Its exit code, as LSB says: 0 running, 1-3 stopped, others failed.
    #[default]
    Exit,
    /// Its output, as heartbeat read `resource.d` scripts: running when it
    /// says "running" (not "not running") or "OK" ([`says_running`]).
    Output,
}

/// An LSB-style script.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Exec {
    /// Absolute path of the script.
    pub script: PathBuf,
    /// Arguments before the action (`script a1 a2 start`).
    pub args: Vec<String>,
    /// How its `status` is read.
    pub status_from: StatusFrom,
}

impl Kind for Exec {
    const NAME: &'static str = "exec";
    const SUMMARY: &'static str =
        "an LSB-style or heartbeat resource.d script called with start, stop and status";
    const FIELDS: &'static [Field] = &[
        Field {
            name: "script",
            doc: "absolute path of the script, e.g. \"/etc/init.d/apache2\"",
            default: None,
        },
        Field {
            name: "args",
            doc: "arguments given before the action, as heartbeat's `Script::a1::a2` (`script a1 a2 start`)",
            default: Some("none"),
        },
        Field {
            name: "status_from",
            doc: "how `status` is read: \"exit\" (LSB: 0 running, 1-3 stopped) or \"output\" (heartbeat: running when it prints \"running\" or \"OK\")",
            default: Some("exit"),
        },
    ];

    fn check(f: &mut Fields<'_>) -> Option<Exec> {
        let script = f.require::<PathBuf>("exec", "script", "script = \"/etc/init.d/apache2\"");
        let args = f.take::<Vec<String>>("args");
        let status_from = f.take::<StatusFrom>("status_from");
        let script = script?;
        if !script.get_ref().is_absolute() {
            f.error(
                Some(script.span()),
                format!("script `{}` is not an absolute path", script.get_ref().display()),
                "write the full path, e.g. \"/etc/init.d/apache2\"",
            );
        }
        if let Some(a) = &args {
            if a.get_ref().len() > MAX_ARGS {
                f.error(
                    Some(a.span()),
                    format!("{} arguments: at most {MAX_ARGS}", a.get_ref().len()),
                    "pass fewer arguments, or a file the script reads",
                );
            }
            if let Some(bad) = a.get_ref().iter().find(|x| {
                ["start", "stop", "status", "monitor"].contains(&x.as_str()) || x.contains('\0')
            }) {
                f.error(
                    Some(a.span()),
                    format!("argument `{bad}` would be read as an action"),
                    "the action (start, stop, status) comes after the arguments: remove it",
                );
            }
        }
        Some(Exec {
            script: script.into_inner(),
            args: args.map(|a| a.into_inner()).unwrap_or_default(),
            status_from: status_from.map(|s| s.into_inner()).unwrap_or_default(),
        })
    }
}

impl Spec for Exec {
    fn describe(&self) -> String {
        let mut s = format!("exec {}", self.script.display());
        for a in &self.args {
            s.push(' ');
            s.push_str(a);
        }
        if self.status_from == StatusFrom::Output {
            s.push_str(" (status from its output)");
        }
        s
    }
}

/// Whether a `status` output says running, as heartbeat read it: the word
/// "running" not preceded by "not", or the word "OK" (any case).
pub fn says_running(output: &str) -> bool {
    let words: Vec<String> = output
        .split(|c: char| !c.is_ascii_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_ascii_lowercase)
        .collect();
    words.iter().enumerate().any(|(i, w)| {
        let negated = i > 0 && ["not", "isn", "no"].contains(&words[i - 1].as_str());
        (w == "ok" || w == "running") && !negated
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn status_words_as_heartbeat_read_them() {
        for yes in ["running", "apache is running (pid 12)", "OK", "IPaddr: ok", "Running."] {
            assert!(says_running(yes), "{yes}");
        }
        for no in [
            "",
            "stopped",
            "apache is not running",
            "Not Running",
            "no running instance",
            "broken",
            "token expired",
            "NOT OK",
        ] {
            assert!(!says_running(no), "{no}");
        }
    }
}
