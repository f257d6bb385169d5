//! `volume`: this node's copy of a replicated volume, promoted on start
//! and demoted on stop. The copy lives in the agent's process: it stops
//! serving when the agent dies, with nothing for the guard to do. A
//! restarted agent finds its copy secondary and promotes it again, if the
//! cluster still wants the group here, without touching what runs above
//! it: a filesystem on the volume waits for it meanwhile (see
//! [`crate::kinds::fs`]).

use std::sync::Arc;

use tandem_core::group::{ActionKind, Outcome};
use tandem_core::kinds::volume::Volume;

use super::{Act, BindError, Bind, Driver};
use super::Resource;
use crate::volume::Hub;

/// A `volume` resource on this node.
#[derive(Clone)]
pub struct VolumeDriver {
    /// The volume's name.
    pub volume: String,
    /// The node's volumes (None: this node holds no copy of it).
    pub hub: Option<Arc<Hub>>,
}

impl std::fmt::Debug for VolumeDriver {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeDriver({})", self.volume)
    }
}

/// The agent's side of a `volume` resource.
pub fn bind(p: &Volume, cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
    Ok(Box::new(VolumeDriver {
        volume: p.volume.clone(),
        hub: cx.hub.filter(|h| h.has(&p.volume)).cloned(),
    }))
}

impl Driver for VolumeDriver {
    fn kind(&self) -> &'static str {
        "volume"
    }

    fn action<'a>(&'a self, _r: &'a Resource, action: ActionKind) -> Act<'a> {
        Box::pin(volume_action(self, action))
    }
}

async fn volume_action(v: &VolumeDriver, kind: ActionKind) -> Outcome {
    let Some(hub) = &v.hub else {
        return match kind {
            ActionKind::Probe | ActionKind::Stop => Outcome::Stopped,
            ActionKind::Start => Outcome::Failed(format!(
                "volume `{}` has no copy on this node: list only the volume's two nodes in the group's `nodes`",
                v.volume
            )),
        };
    };
    match kind {
        ActionKind::Probe => match hub.trouble(&v.volume) {
            None => Outcome::Running,
            Some(_) if !hub.is_primary(&v.volume) => Outcome::Stopped,
            Some(why) => Outcome::Failed(why),
        },
        ActionKind::Start => match hub.promote(&v.volume, false, true).await {
            Ok(_) => Outcome::Running,
            Err(e) => Outcome::Failed(e.to_string()),
        },
        ActionKind::Stop => match hub.demote(&v.volume).await {
            Ok(()) => Outcome::Stopped,
            Err(e) => Outcome::Failed(e.to_string()),
        },
    }
}


#[cfg(test)]
mod tests {
    use tandem_core::group::{ActionKind, Outcome};
    use tandem_core::kinds::volume::Volume;
    use tandem_core::kinds::Params;

    use crate::kinds::tests::resource;
    use crate::child::test_runtime as rt;
    use crate::kinds::run_action;

    #[test]
    fn a_volume_without_a_copy_here_is_stopped_and_will_not_start() {
        let r = resource(
            Params::Volume(Volume {
                volume: "data".into(),
            }),
            1_000,
            std::path::Path::new("/tmp"),
        );
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            let Outcome::Failed(e) = run_action(&r, ActionKind::Start).await else {
                panic!("started a volume with no copy here")
            };
            assert!(e.contains("no copy on this node"), "{e}");
        });
    }
}
