//! `filesync` in the agent: starting the resource makes this node the
//! source of its paths (the sync itself runs in [`crate::filesync`]);
//! stopping it makes it a receiver again. Nothing runs outside the agent,
//! so its actions are inline. That this node is the source is also kept
//! in a marker in the run directory (naming this boot), so that a
//! restarted agent's probe finds the resource running and, once its first
//! check shows the group kept here, it is the source again without a new
//! start; the guard removes the marker when the lease ends with the agent
//! gone.

use std::path::PathBuf;
use std::sync::Arc;

use tandem_core::group::{ActionKind, Outcome};
use tandem_core::kinds::filesync::Filesync;

use super::{Act, Bind, BindError, Driver, Health, Resource};
use crate::filesync::Sync;

/// The agent's side of a `filesync` resource.
#[derive(Debug)]
pub struct FilesyncDriver {
    /// Its sync (None: this node has no address on the resource's link).
    sync: Option<Arc<Sync>>,
    link: String,
    /// The marker: present (holding this boot's id) while this node is
    /// the source.
    marker: PathBuf,
}

/// Binds a configured `filesync` resource to this node's sync service.
pub fn bind(p: &Filesync, cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
    Ok(Box::new(FilesyncDriver {
        sync: cx
            .filesync
            .and_then(|s| s.get(cx.group, cx.resource)),
        link: p.link.clone(),
        marker: crate::child::run_file(cx.run_dir, cx.group, cx.resource, "source"),
    }))
}

impl Driver for FilesyncDriver {
    fn kind(&self) -> &'static str {
        "filesync"
    }

    fn action<'a>(&'a self, _r: &'a Resource, action: ActionKind) -> Act<'a> {
        let o = self.act(action);
        Box::pin(async move { o })
    }

    fn inline_action(&self, action: ActionKind) -> Option<Outcome> {
        Some(self.act(action))
    }

    fn check_inline(&self) -> Option<Health> {
        // A restarted agent kept the resource (found running by its
        // marker, and still wanted here, or it would have been stopped):
        // this node sends again from now. The probe only reports, so that
        // a node whose group went elsewhere never sends an old tree.
        if let Some(sync) = &self.sync {
            if !sync.running() {
                if !self.marked() {
                    // Found running by a marker the guard removed since
                    // (it stopped what an ended lease left): start again.
                    return Some(Health::Failed(
                        "this node is not the source any more (its marker is gone): starting it again".into(),
                    ));
                }
                sync.set_running(true);
            }
        }
        // A peer that cannot be reached is shown in status, not a failure
        // of the group: the service runs whatever the copies do.
        Some(Health::Fine)
    }

    fn detail(&self) -> Option<String> {
        self.sync.as_ref().map(|s| s.summary())
    }

    fn guard(&self, _owner: &crate::child::Owner, part: &mut crate::guard::Leaving) {
        part.stop_commands.push(crate::guard::StopCommand {
            program: PathBuf::from("rm"),
            args: vec![
                "-f".into(),
                "--".into(),
                self.marker.to_string_lossy().into_owned(),
            ],
            env: vec![],
            first: false,
        });
    }
}

impl FilesyncDriver {
    fn act(&self, action: ActionKind) -> Outcome {
        let Some(sync) = &self.sync else {
            return match action {
                ActionKind::Probe | ActionKind::Stop => Outcome::Stopped,
                ActionKind::Start => Outcome::Failed(format!(
                    "this node has no address on link `{}`, so it cannot send copies",
                    self.link
                )),
            };
        };
        match action {
            // A restarted agent: this node was the source (its first check
            // turns the sending on again if the group stays here).
            ActionKind::Probe if sync.running() || self.marked() => Outcome::Running,
            ActionKind::Probe => Outcome::Stopped,
            ActionKind::Start => {
                let boot = crate::guard::boot_id();
                if let Err(e) = crate::atomic_file::replace(
                    &self.marker,
                    boot.as_bytes(),
                    crate::atomic_file::Durability::ThisBoot,
                ) {
                    return Outcome::Failed(format!(
                        "writing {}: {e:#}",
                        self.marker.display()
                    ));
                }
                sync.set_running(true);
                Outcome::Running
            }
            ActionKind::Stop => {
                sync.set_running(false);
                match std::fs::remove_file(&self.marker) {
                    Ok(()) => Outcome::Stopped,
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => Outcome::Stopped,
                    Err(e) => Outcome::Failed(format!(
                        "removing {}: {e}",
                        self.marker.display()
                    )),
                }
            }
        }
    }

    /// Whether the marker says this node is the source, in this boot (a
    /// marker from before a reboot is stale: the group may run elsewhere
    /// since).
    fn marked(&self) -> bool {
        std::fs::read_to_string(&self.marker)
            .is_ok_and(|b| !b.is_empty() && b.trim() == crate::guard::boot_id())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn driver(dir: &std::path::Path) -> FilesyncDriver {
        FilesyncDriver {
            sync: Some(Arc::new(Sync::new(
                "filesync/g/files".into(),
                Filesync {
                    paths: vec![dir.join("tree")],
                    link: "sync".into(),
                    port: 5410,
                    interval_ms: 60_000,
                    max_file_bytes: 1 << 20,
                },
                std::net::Ipv4Addr::LOCALHOST.into(),
                vec![],
            ))),
            link: "sync".into(),
            marker: dir.join("g.files.source"),
        }
    }

    #[test]
    fn a_restarted_agent_finds_this_node_still_the_source_but_not_after_a_reboot() {
        let dir = tempfile::tempdir().unwrap();
        let d = driver(dir.path());
        assert_eq!(d.act(ActionKind::Probe), Outcome::Stopped);
        assert_eq!(d.act(ActionKind::Start), Outcome::Running);
        // The agent restarts: a new driver, the same run directory.
        let again = driver(dir.path());
        assert_eq!(again.act(ActionKind::Probe), Outcome::Running);
        // The probe only reports; the first check (the group kept here)
        // sends again.
        assert!(again.sync.as_ref().is_some_and(|s| !s.running()));
        assert_eq!(again.check_inline(), Some(Health::Fine));
        assert!(again.sync.as_ref().is_some_and(|s| s.running()));
        // A marker removed between the probe and the check (the guard
        // ending an old lease): the check fails, so it is started again.
        let raced = driver(dir.path());
        assert_eq!(raced.act(ActionKind::Probe), Outcome::Running);
        std::fs::remove_file(&raced.marker).unwrap();
        assert!(matches!(raced.check_inline(), Some(Health::Failed(_))));
        assert_eq!(raced.act(ActionKind::Start), Outcome::Running);
        assert_eq!(again.act(ActionKind::Stop), Outcome::Stopped);
        assert!(!d.marker.exists());
        assert_eq!(driver(dir.path()).act(ActionKind::Probe), Outcome::Stopped);
        // A marker from another boot is stale.
        std::fs::write(&d.marker, "another-boot").unwrap();
        assert_eq!(driver(dir.path()).act(ActionKind::Probe), Outcome::Stopped);
    }
}
