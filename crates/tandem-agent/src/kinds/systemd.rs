//! `systemd`: the agent's side of a systemd unit. It talks to the manager
//! over D-Bus (`zbus`, with `zbus_systemd`'s generated proxies): a start
//! or stop is a job in mode `replace`, done when its `JobRemoved` says
//! `done`; a probe or check reads the unit's `ActiveState`. While the
//! cluster runs a unit it has a runtime drop-in (`Restart=no`, ordered
//! before the agent), so that systemd and the cluster never fight; the
//! stop removes it. The core reads what the manager says
//! ([`tandem_core::kinds::systemd`]).

use std::cell::RefCell;
use std::path::PathBuf;

use futures_util::StreamExt as _;
use tandem_core::config::Config;
use tandem_core::diagnostic::Severity;
use tandem_core::group::{ActionKind, Bar, Outcome};
use tandem_core::kinds::systemd::{
    dropin, job_outcome, probe_outcome, unit_state, Systemd, DROPIN_FILE,
};
use tandem_core::kinds::Params;
use zbus_systemd::systemd1::{ManagerProxy, UnitProxy};

use super::{Act, Bind, BindError, Driver, Resource};
use crate::atomic_file::Durability;
use crate::child::Owner;
use crate::guard::{Leaving, StopCommand};

/// A unit on this node's manager.
#[derive(Debug)]
pub struct SystemdDriver {
    spec: Systemd,
    /// The connection to the manager's bus, kept between actions (a check
    /// is then one property read); dropped after an error, so that the
    /// next action connects afresh (the bus may have restarted).
    bus: RefCell<Option<zbus::Connection>>,
}

/// The agent's side of a `systemd` resource.
pub fn bind(p: &Systemd, _cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
    Ok(Box::new(SystemdDriver {
        spec: p.clone(),
        bus: RefCell::new(None),
    }))
}

/// Why a call to the manager failed.
#[derive(Debug, thiserror::Error)]
enum BusError {
    #[error("connecting to {what}: {source}")]
    Connect {
        what: String,
        #[source]
        source: zbus::Error,
    },
    #[error("{what}: {source}")]
    Call {
        what: &'static str,
        #[source]
        source: zbus::Error,
    },
    #[error("the unit is not loaded: {0}")]
    NotFound(String),
    #[error("writing the drop-in {path}: {source}")]
    Dropin {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{0}")]
    Job(String),
    #[error("the manager went away before the job ended")]
    NoSignal,
}

fn call(what: &'static str) -> impl FnOnce(zbus::Error) -> BusError {
    move |source| BusError::Call { what, source }
}

/// Connects to the manager at `bus` (None: the system bus).
async fn connect(bus: Option<&str>) -> Result<zbus::Connection, BusError> {
    let what = bus.unwrap_or("the system bus").to_string();
    let built = match bus {
        None => zbus::Connection::system().await,
        Some(addr) => zbus::connection::Builder::address(addr).build().await,
    };
    built.map_err(|source| BusError::Connect { what, source })
}

impl SystemdDriver {
    async fn conn(&self) -> Result<zbus::Connection, BusError> {
        if let Some(c) = self.bus.borrow().as_ref() {
            return Ok(c.clone());
        }
        let c = connect(self.spec.bus.as_deref()).await?;
        *self.bus.borrow_mut() = Some(c.clone());
        Ok(c)
    }

    /// The unit's `ActiveState` and `LoadState`.
    async fn states(&self, conn: &zbus::Connection) -> Result<(String, String), BusError> {
        let manager = ManagerProxy::new(conn).await.map_err(call("the manager"))?;
        let path = manager
            .load_unit(self.spec.unit.clone())
            .await
            .map_err(call("LoadUnit"))?;
        let unit = UnitProxy::builder(conn)
            .path(path)
            .build()
            .await
            .map_err(call("the unit"))?;
        let active = unit.active_state().await.map_err(call("ActiveState"))?;
        let load = unit.load_state().await.map_err(call("LoadState"))?;
        Ok((active, load))
    }

    fn dropin_path(&self) -> PathBuf {
        self.spec
            .dropin_dir
            .join(format!("{}.d", self.spec.unit))
            .join(DROPIN_FILE)
    }

    /// Writes (or removes) the drop-in and has the manager read it, when
    /// that changes anything.
    async fn set_dropin(&self, conn: &zbus::Connection, on: bool) -> Result<(), BusError> {
        let path = self.dropin_path();
        let text = dropin(&self.spec.unit);
        let now = std::fs::read_to_string(&path).ok();
        let changed = if on {
            if now.as_deref() == Some(text.as_str()) {
                false
            } else {
                // A runtime file: it must not outlive this boot anyway.
                crate::atomic_file::replace(&path, text.as_bytes(), Durability::ThisBoot)
                    .map_err(|e| BusError::Dropin {
                        path: path.clone(),
                        source: std::io::Error::other(format!("{e:#}")),
                    })?;
                true
            }
        } else if now.is_some() {
            std::fs::remove_file(&path).map_err(|source| BusError::Dropin {
                path: path.clone(),
                source,
            })?;
            if let Some(d) = path.parent() {
                // Only if empty: the operator's own drop-ins stay.
                let _ = std::fs::remove_dir(d);
            }
            true
        } else {
            false
        };
        if changed {
            let manager = ManagerProxy::new(conn).await.map_err(call("the manager"))?;
            manager.reload().await.map_err(call("Reload"))?;
        }
        Ok(())
    }

    /// Runs a start or stop job to its end.
    async fn job(&self, conn: &zbus::Connection, verb: &'static str) -> Result<(), BusError> {
        let manager = ManagerProxy::new(conn).await.map_err(call("the manager"))?;
        // Listen before asking: the job may end before the call returns.
        let mut removed = manager
            .receive_job_removed()
            .await
            .map_err(call("JobRemoved"))?;
        manager.subscribe().await.map_err(call("Subscribe"))?;
        let unit = self.spec.unit.clone();
        let job = match verb {
            "start" => manager.start_unit(unit, "replace".into()).await,
            _ => manager.stop_unit(unit, "replace".into()).await,
        }
        .map_err(call(if verb == "start" { "StartUnit" } else { "StopUnit" }))?;
        while let Some(signal) = removed.next().await {
            let Ok(args) = signal.args() else { continue };
            if args.job == job {
                return job_outcome(verb, &self.spec.unit, &args.result).map_err(BusError::Job);
            }
        }
        Err(BusError::NoSignal)
    }

    async fn act(&self, action: ActionKind) -> Outcome {
        let cached = self.bus.borrow().is_some();
        let mut result = self.try_act(action).await;
        if result.is_err() {
            *self.bus.borrow_mut() = None;
        }
        // A kept connection may have been closed under it (the bus
        // restarted, or dropped a quiet client): once more on a new one.
        // Every action is idempotent, so a second try is safe.
        if cached && matches!(result, Err(BusError::Call { .. })) {
            result = self.try_act(action).await;
            if result.is_err() {
                *self.bus.borrow_mut() = None;
            }
        }
        match result {
            Ok(o) => o,
            // What is not there cannot run here; a start of it bars the
            // node (another may have the unit).
            Err(BusError::NotFound(why)) => match action {
                ActionKind::Probe | ActionKind::Stop => Outcome::Stopped,
                ActionKind::Start => Outcome::Barred {
                    bar: Bar::Node,
                    why: format!("{}: {why}", self.spec.unit),
                },
            },
            Err(e) => Outcome::Failed(format!("{}: {e}", self.spec.unit)),
        }
    }

    async fn try_act(&self, action: ActionKind) -> Result<Outcome, BusError> {
        let conn = self.conn().await?;
        let (active, load) = self.states(&conn).await?;
        // A unit whose file is gone may still run (deleted, then a
        // daemon-reload): only a stopped one is "not here".
        if load == "not-found" && probe_outcome(unit_state(&active)) == Outcome::Stopped {
            return Err(BusError::NotFound(format!("LoadState {load}")));
        }
        match action {
            ActionKind::Probe => Ok(probe_outcome(unit_state(&active))),
            ActionKind::Start => {
                self.set_dropin(&conn, true).await?;
                self.job(&conn, "start").await?;
                let (active, _) = self.states(&conn).await?;
                Ok(match probe_outcome(unit_state(&active)) {
                    Outcome::Running => Outcome::Running,
                    _ => Outcome::Failed(format!(
                        "{}: the start job ended but the unit is {active}",
                        self.spec.unit
                    )),
                })
            }
            ActionKind::Stop => {
                self.job(&conn, "stop").await?;
                let (active, _) = self.states(&conn).await?;
                if probe_outcome(unit_state(&active)) != Outcome::Stopped {
                    return Ok(Outcome::Failed(format!(
                        "{}: the stop job ended but the unit is {active}",
                        self.spec.unit
                    )));
                }
                self.set_dropin(&conn, false).await?;
                Ok(Outcome::Stopped)
            }
        }
    }
}

impl Driver for SystemdDriver {
    fn kind(&self) -> &'static str {
        "systemd"
    }

    fn action<'a>(&'a self, _r: &'a Resource, action: ActionKind) -> Act<'a> {
        Box::pin(self.act(action))
    }

    /// The guard asks systemctl to stop the unit when the agent is gone.
    fn guard(&self, _owner: &Owner, part: &mut Leaving) {
        let (args, env) = match &self.spec.bus {
            None => (vec!["stop".into(), "--".into(), self.spec.unit.clone()], vec![]),
            Some(addr) => (
                vec!["--user".into(), "stop".into(), "--".into(), self.spec.unit.clone()],
                vec![("DBUS_SESSION_BUS_ADDRESS".to_string(), addr.clone())],
            ),
        };
        part.stop_commands.push(StopCommand {
            program: PathBuf::from("systemctl"),
            args,
            env,
            first: false,
        });
    }
}

/// What `config validate` finds of the configuration's systemd units on
/// this machine: a unit enabled at boot is a warning (the cluster starts
/// it where it should run; started at boot it would run on both nodes),
/// and a unit the manager does not know is an error. Without a manager to
/// ask (no system bus here) nothing is checked.
pub fn check_resources(cfg: &Config) -> Vec<(Severity, String)> {
    let units: Vec<(&str, &str, &Systemd)> = cfg
        .groups
        .iter()
        .flat_map(|g| {
            g.resources.iter().filter_map(move |r| match &r.params {
                Params::Systemd(s) => Some((g.name.as_str(), r.name.as_str(), s)),
                _ => None,
            })
        })
        .collect();
    if units.is_empty() {
        return Vec::new();
    }
    let Ok(rt) = crate::child::checks_runtime() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for (group, resource, s) in units {
        let at = format!("group `{group}` resource `{resource}` ({})", s.unit);
        let limit = std::time::Duration::from_secs(5);
        let asked = rt.block_on(async {
            tokio::time::timeout(limit, async {
                let conn = connect(s.bus.as_deref()).await?;
                let manager = ManagerProxy::new(&conn).await.map_err(call("the manager"))?;
                let path = manager
                    .load_unit(s.unit.clone())
                    .await
                    .map_err(call("LoadUnit"))?;
                let unit = UnitProxy::builder(&conn)
                    .path(path)
                    .build()
                    .await
                    .map_err(call("the unit"))?;
                let load = unit.load_state().await.map_err(call("LoadState"))?;
                let file = unit
                    .unit_file_state()
                    .await
                    .map_err(call("UnitFileState"))?;
                Ok::<_, BusError>((load, file))
            })
            .await
        });
        match asked {
            Ok(Ok((load, _))) if load == "not-found" => out.push((
                Severity::Error,
                format!("{at}: the manager has no such unit on this machine: install it or correct `unit`"),
            )),
            Ok(Ok((_, file))) if file == "enabled" || file == "enabled-runtime" => out.push((
                Severity::Warning,
                format!(
                    "{at}: the unit is enabled at boot, so it would start on every node before the cluster decides where it runs: `systemctl disable {}`",
                    s.unit
                ),
            )),
            Ok(Ok(_)) => {}
            Ok(Err(e)) => out.push((
                Severity::Warning,
                format!("{at}: not checked: {e}"),
            )),
            Err(_) => out.push((
                Severity::Warning,
                format!("{at}: not checked: the manager did not answer within 5 s"),
            )),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use tandem_core::group::{ActionKind, Bar, Outcome};
    use tandem_core::kinds::systemd::Systemd;
    use tandem_core::kinds::Params;
    use tandem_testbed::user_manager::UserManager;

    use crate::child::test_runtime as rt;
    use crate::kinds::tests::resource;
    use crate::kinds::{run_action, run_check};

    /// A real `systemd --user` manager, or why this test cannot have one.
    fn manager(test: &str) -> Option<UserManager> {
        if !tandem_testbed::require_root(test) {
            return None;
        }
        if !std::path::Path::new("/lib/systemd/systemd").exists() {
            println!("{test}: skipped: needs systemd (scripts/install-deps installs it)");
            return None;
        }
        Some(UserManager::start().unwrap())
    }

    fn unit(m: &UserManager, name: &str) -> Params {
        Params::Systemd(Systemd {
            unit: name.into(),
            bus: Some(m.bus()),
            dropin_dir: m.dropin_dir(),
        })
    }

    /// Start, probe, check and stop a real unit; while the cluster runs
    /// it, the drop-in makes `Restart=no` (the unit file says `always`),
    /// and after the stop it is gone. A unit that dies is found stopped
    /// and systemd does not restart it behind the cluster's back.
    #[test]
    fn a_real_unit_is_started_checked_and_stopped_and_systemd_does_not_restart_it() {
        let test = "a_real_unit_is_started_checked_and_stopped_and_systemd_does_not_restart_it";
        let Some(m) = manager(test) else { return };
        m.add_unit(
            "sleeper.service",
            "[Service]\nExecStart=/bin/sleep 3600\nRestart=always\nRestartSec=100ms\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let r = resource(unit(&m, "sleeper.service"), 20_000, dir.path());
        let dropin = m.dropin_dir().join("sleeper.service.d/50-tandem.conf");
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert!(dropin.exists(), "the drop-in is written while it runs");
            assert_eq!(m.property("sleeper.service", "Restart").unwrap(), "no");
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Running);
            assert_eq!(run_check(&r).await, Outcome::Running);
            // Killed behind everyone's back: found stopped, not restarted.
            let pid = m.property("sleeper.service", "MainPID").unwrap();
            let pid: i32 = pid.parse().unwrap();
            // SAFETY: kill(2) of the unit's main process, which this test started.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            let mut seen = Outcome::Running;
            for _ in 0..100 {
                seen = run_check(&r).await;
                if seen != Outcome::Running {
                    break;
                }
                tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            }
            assert_eq!(seen, Outcome::Stopped);
            tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            assert_eq!(run_check(&r).await, Outcome::Stopped, "systemd restarted it");
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
            assert!(!dropin.exists(), "the drop-in is removed on stop");
            assert_eq!(m.property("sleeper.service", "Restart").unwrap(), "always");
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
        });
    }

    /// A job that does not end `done` is a failure that says so; a unit
    /// the manager does not have is stopped to a probe and bars the node
    /// to a start.
    #[test]
    fn a_failed_job_says_its_result_and_a_missing_unit_bars_the_node() {
        let test = "a_failed_job_says_its_result_and_a_missing_unit_bars_the_node";
        let Some(m) = manager(test) else { return };
        m.add_unit(
            "broken.service",
            "[Service]\nType=oneshot\nExecStart=/bin/false\n",
        )
        .unwrap();
        let dir = tempfile::tempdir().unwrap();
        let broken = resource(unit(&m, "broken.service"), 20_000, dir.path());
        let missing = resource(unit(&m, "nothing-here.service"), 20_000, dir.path());
        rt().block_on(async {
            let o = run_action(&broken, ActionKind::Start).await;
            assert!(
                matches!(&o, Outcome::Failed(w) if w.contains("ended `failed`")),
                "{o:?}"
            );
            assert_eq!(run_action(&missing, ActionKind::Probe).await, Outcome::Stopped);
            let o = run_action(&missing, ActionKind::Start).await;
            assert!(
                matches!(&o, Outcome::Barred { bar: Bar::Node, .. }),
                "{o:?}"
            );
        });
    }
}
