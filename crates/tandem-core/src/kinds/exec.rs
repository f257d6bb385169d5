//! `exec`: an LSB-style script called with `start`, `stop` and `status`
//! (exit 0 running, 3 stopped), like an init script.

use std::path::PathBuf;

use super::{Field, Fields, Kind, Spec};

/// An LSB-style script.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Exec {
    /// Absolute path of the script.
    pub script: PathBuf,
}

impl Kind for Exec {
    const NAME: &'static str = "exec";
    const SUMMARY: &'static str = "an LSB-style script called with start, stop and status";
    const FIELDS: &'static [Field] = &[Field {
        name: "script",
        doc: "absolute path of the script, e.g. \"/etc/init.d/apache2\"",
        default: None,
    }];

    fn check(f: &mut Fields<'_>) -> Option<Exec> {
        let script =
            f.require::<PathBuf>("exec", "script", "script = \"/etc/init.d/apache2\"")?;
        if !script.get_ref().is_absolute() {
            f.error(
                Some(script.span()),
                format!("script `{}` is not an absolute path", script.get_ref().display()),
                "write the full path, e.g. \"/etc/init.d/apache2\"",
            );
        }
        Some(Exec {
            script: script.into_inner(),
        })
    }
}

impl Spec for Exec {
    fn describe(&self) -> String {
        format!("exec {}", self.script.display())
    }
}
