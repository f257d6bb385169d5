//! `systemd`: a unit of a systemd manager (the system's by default, or
//! one at a configured bus address), started and stopped over D-Bus. This
//! file holds its fields and checks and the two rules that read what the
//! manager says: a unit's `ActiveState` ([`unit_state`]) and a job's
//! result ([`job_outcome`]).

use std::path::PathBuf;

use super::{Field, Fields, Kind, Spec};
use crate::group::Outcome;

/// Where the drop-ins for the system manager go: its runtime units
/// directory, forgotten at reboot.
pub const DEFAULT_DROPIN_DIR: &str = "/run/systemd/system";
/// Unit types a cluster may start and stop.
pub const UNIT_SUFFIXES: &[&str] = &[".service", ".socket", ".mount", ".target", ".timer", ".path"];
/// Longest unit name systemd accepts.
pub const MAX_UNIT_NAME: usize = 255;

/// A systemd unit.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Systemd {
    /// The unit's full name (`postgresql@15-main.service`).
    pub unit: String,
    /// The manager's bus address (None: the system bus).
    pub bus: Option<String>,
    /// The manager's runtime unit directory, where the drop-in goes.
    pub dropin_dir: PathBuf,
}

/// Whether systemd would take `name` as a unit name: `prefix[@inst].type`,
/// with the characters systemd allows, and no path.
pub fn is_unit_name(name: &str) -> bool {
    name.len() <= MAX_UNIT_NAME
        && UNIT_SUFFIXES
            .iter()
            .any(|s| name.len() > s.len() && name.ends_with(s))
        && !name.starts_with('@')
        && !name.starts_with('.')
        && !name.starts_with('-')
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || ":-_.\\@".contains(c))
}

impl Kind for Systemd {
    const NAME: &'static str = "systemd";
    const SUMMARY: &'static str = "a systemd unit, started and stopped over D-Bus";
    const FIELDS: &'static [Field] = &[
        Field {
            name: "unit",
            doc: "the unit's full name, e.g. \"postgresql@15-main.service\"",
            default: None,
        },
        Field {
            name: "bus",
            doc: "the D-Bus address of the manager, e.g. \"unix:path=/run/user/0/bus\" for a user manager",
            default: Some("the system bus"),
        },
        Field {
            name: "dropin_dir",
            doc: "the manager's runtime unit directory, where the cluster's drop-in goes (a user manager's is $XDG_RUNTIME_DIR/systemd/user)",
            default: Some(DEFAULT_DROPIN_DIR),
        },
    ];

    fn check(f: &mut Fields<'_>) -> Option<Systemd> {
        let unit = f.require::<String>("systemd", "unit", "unit = \"apache2.service\"");
        let bus = f.take::<String>("bus");
        let dir = f.take::<PathBuf>("dropin_dir");
        let unit = unit?;
        if !is_unit_name(unit.get_ref()) {
            let help = if UNIT_SUFFIXES.iter().any(|s| unit.get_ref().ends_with(s)) {
                "a unit name has letters, digits and :-_.\\@ only, e.g. \"postgresql@15-main.service\"".to_string()
            } else {
                format!("write the full name with its type, e.g. \"{}.service\"", unit.get_ref())
            };
            f.error(
                Some(unit.span()),
                format!("`{}` is not a unit name", unit.get_ref()),
                help,
            );
        }
        if let Some(b) = &bus {
            if !b.get_ref().contains(':') {
                f.error(
                    Some(b.span()),
                    format!("bus `{}` is not a D-Bus address", b.get_ref()),
                    "write it as D-Bus does, e.g. \"unix:path=/run/user/0/bus\"",
                );
            }
        }
        let dropin_dir = dir.map_or_else(|| PathBuf::from(DEFAULT_DROPIN_DIR), |d| d.into_inner());
        if !dropin_dir.is_absolute() {
            f.error(
                None,
                format!("dropin_dir `{}` is not an absolute path", dropin_dir.display()),
                format!("write the full path, e.g. \"{DEFAULT_DROPIN_DIR}\""),
            );
        }
        Some(Systemd {
            unit: unit.into_inner(),
            bus: bus.map(|b| b.into_inner()),
            dropin_dir,
        })
    }
}

impl Spec for Systemd {
    fn describe(&self) -> String {
        match &self.bus {
            Some(b) => format!("systemd {} (manager at {b})", self.unit),
            None => format!("systemd {}", self.unit),
        }
    }
}

/// What a unit's `ActiveState` says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UnitState {
    /// `active` or `reloading`.
    Running,
    /// `activating` or `deactivating`: on its way; it may run.
    Pending,
    /// `inactive`, `failed`, `maintenance` or anything else.
    Stopped,
}

/// Reads a unit's `ActiveState`.
pub fn unit_state(active_state: &str) -> UnitState {
    match active_state {
        "active" | "reloading" => UnitState::Running,
        "activating" | "deactivating" => UnitState::Pending,
        _ => UnitState::Stopped,
    }
}

/// What a probe or a check makes of a unit's state: a pending unit may
/// run, so it counts as running (a probe then stops it where it must not
/// run; a check sees it again next time).
pub fn probe_outcome(state: UnitState) -> Outcome {
    match state {
        UnitState::Running | UnitState::Pending => Outcome::Running,
        UnitState::Stopped => Outcome::Stopped,
    }
}

/// What a start or stop job's result (`JobRemoved`'s last argument) means:
/// `done` is success; `canceled`, `timeout`, `failed`, `dependency`,
/// `skipped` and anything else are failures, with the result shown.
pub fn job_outcome(verb: &str, unit: &str, result: &str) -> Result<(), String> {
    if result == "done" {
        Ok(())
    } else {
        Err(format!("systemd's {verb} job for {unit} ended `{result}`"))
    }
}

/// The drop-in that a managed unit gets while the cluster runs it, as
/// Pacemaker writes one: systemd must not restart it behind the cluster's
/// back (`Restart=no`), and it is ordered before the agent's own unit, so
/// that at shutdown systemd stops the agent first (which hands the group
/// over cleanly) and only then this unit.
pub fn dropin(unit: &str) -> String {
    format!(
        "# Written by Tandem while the cluster manages {unit}; removed when it stops it.\n\
         [Unit]\n\
         Description=Cluster-controlled {unit}\n\
         Before=tandem-agent.service\n\
         \n\
         [Service]\n\
         Restart=no\n"
    )
}

/// The drop-in's file name in `<dropin_dir>/<unit>.d/`.
pub const DROPIN_FILE: &str = "50-tandem.conf";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unit_states_and_job_results_read_as_systemd_means_them() {
        assert_eq!(unit_state("active"), UnitState::Running);
        assert_eq!(unit_state("reloading"), UnitState::Running);
        assert_eq!(unit_state("activating"), UnitState::Pending);
        assert_eq!(unit_state("deactivating"), UnitState::Pending);
        for s in ["inactive", "failed", "maintenance", "something-new"] {
            assert_eq!(unit_state(s), UnitState::Stopped, "{s}");
        }
        assert_eq!(probe_outcome(UnitState::Pending), Outcome::Running);
        assert_eq!(probe_outcome(UnitState::Stopped), Outcome::Stopped);
        assert_eq!(job_outcome("start", "a.service", "done"), Ok(()));
        for r in ["canceled", "timeout", "failed", "dependency", "skipped"] {
            let e = job_outcome("start", "a.service", r).unwrap_err();
            assert!(e.contains(r) && e.contains("a.service"), "{e}");
        }
    }

    #[test]
    fn unit_names_as_systemd_takes_them() {
        for ok in ["apache2.service", "postgresql@15-main.service", "data.mount", "x\\x2dy.socket"] {
            assert!(is_unit_name(ok), "{ok}");
        }
        for bad in ["apache2", ".service", "@x.service", "-x.service", "../x.service", "a b.service", "a/b.service"] {
            assert!(!is_unit_name(bad), "{bad}");
        }
    }

    #[test]
    fn the_dropin_says_restart_no_and_orders_the_unit_before_the_agent() {
        let d = dropin("pg.service");
        assert!(d.contains("[Service]\nRestart=no\n"), "{d}");
        assert!(d.contains("Before=tandem-agent.service"), "{d}");
    }
}
