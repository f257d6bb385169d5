//! `filesync` in the agent: starting the resource makes this node the
//! source of its paths (the sync itself runs in [`crate::filesync`]);
//! stopping it makes it a receiver again. Nothing runs outside the agent,
//! so its actions are inline and a restarted agent simply starts it again
//! (no copy is lost: a receiver keeps what it has).

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
}

/// Binds a configured `filesync` resource to this node's sync service.
pub fn bind(p: &Filesync, cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
    Ok(Box::new(FilesyncDriver {
        sync: cx
            .filesync
            .and_then(|s| s.get(cx.group, cx.resource)),
        link: p.link.clone(),
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
        // A peer that cannot be reached is shown in status, not a failure
        // of the group: the service runs whatever the copies do.
        Some(Health::Fine)
    }

    fn detail(&self) -> Option<String> {
        self.sync.as_ref().map(|s| s.summary())
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
            ActionKind::Probe if sync.running() => Outcome::Running,
            ActionKind::Probe => Outcome::Stopped,
            ActionKind::Start => {
                sync.set_running(true);
                Outcome::Running
            }
            ActionKind::Stop => {
                sync.set_running(false);
                Outcome::Stopped
            }
        }
    }
}
