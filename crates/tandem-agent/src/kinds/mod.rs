//! A resource on this node ([`Resource`]: its owner, limit and its kind's
//! driver, and [`run_action`], every action bounded by its timeout), and
//! the agent's side of each resource kind, one file each: probe, start and
//! stop, its periodic check, what the guard must undo if the agent dies,
//! and whether its actions run inline. The core's side (fields, defaults,
//! checks) is `tandem_core::kinds`; the [`registry!`] at the end joins the
//! two, one line per kind.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use std::time::Duration;

use tandem_core::config::ResourceSpec;
use tandem_core::group::{ActionKind, Outcome};
use tandem_core::kinds::Params;

use crate::child::Owner;
use crate::guard::Leaving;
use crate::volume::Hub;

/// An action under way (it borrows the resource it acts on).
pub type Act<'a> = Pin<Box<dyn Future<Output = Outcome> + 'a>>;

/// What binding a configured resource to this node can use.
pub struct Bind<'a> {
    /// This node's volumes, if it holds any.
    pub hub: Option<&'a Arc<Hub>>,
    /// This node's filesync service, if any resource is a `filesync`.
    pub filesync: Option<&'a Arc<crate::filesync::Service>>,
    /// The resource's group.
    pub group: &'a str,
    /// The resource's name.
    pub resource: &'a str,
    /// The agent's run directory (for a kind that keeps state there).
    pub run_dir: &'a std::path::Path,
}

/// What an inline periodic check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Health {
    /// As it should be.
    Fine,
    /// Fine, after a change worth a log line (an address moved).
    Note(String),
    /// Gone or broken: a failure to recover from.
    Failed(String),
}

/// The agent's side of one resource kind.
pub trait Driver: std::fmt::Debug {
    /// The kind's name (as in the configuration).
    fn kind(&self) -> &'static str;

    /// Runs a probe, start or stop to its outcome. Every action is
    /// idempotent (starting what runs or stopping what is stopped succeeds
    /// at once) and keeps to `r.timeout_ms` (the caller also bounds it).
    fn action<'a>(&'a self, r: &'a Resource, action: ActionKind) -> Act<'a>;

    /// The periodic check of a running resource, run as a task (its
    /// outcome: running, or why not). By default the probe; a kind whose
    /// check differs from its probe (an OCF agent's `monitor` with its
    /// interval and depth) says so here.
    fn check<'a>(&'a self, r: &'a Resource) -> Act<'a> {
        self.action(r, ActionKind::Probe)
    }

    /// How often a running resource is checked (for kinds that do not
    /// check inline). Each check of a script costs a fork and whatever the
    /// script runs, so kinds that run scripts check less often.
    fn check_interval_ms(&self) -> u64 {
        DEFAULT_CHECK_INTERVAL_MS
    }

    /// The action's outcome at once, for a kind whose actions take well
    /// under a millisecond and must not wait behind others (None: run
    /// [`Driver::action`] as a task).
    fn inline_action(&self, _action: ActionKind) -> Option<Outcome> {
        None
    }

    /// The periodic check of a running resource, when the kind checks
    /// inline (None: a probe runs as a task, and "stopped" is a failure).
    fn check_inline(&self) -> Option<Health> {
        None
    }

    /// Adds what the guard must undo if the agent dies while this may run.
    fn guard(&self, _owner: &Owner, _part: &mut Leaving) {}

    /// Tells the neighbours again where it is (after a takeover, and every
    /// refresh); most kinds have nothing to say.
    fn announce(&self) {}

    /// A line for status beside its state (a filesync's last sync per
    /// node); most kinds have none.
    fn detail(&self) -> Option<String> {
        None
    }
}

/// A resource with its owner and limits.
#[derive(Debug)]
pub struct Resource {
    /// Who it belongs to.
    pub owner: Owner,
    /// Limit on one action.
    pub timeout_ms: u64,
    /// Its kind's side in the agent.
    pub kind: Box<dyn Driver>,
    /// What its last actions did that the log should say (a SIGKILL...);
    /// taken by the caller ([`Resource::take_notes`]).
    notes: std::cell::RefCell<Vec<String>>,
}

impl Resource {
    /// Lines for the log from the actions run so far.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.borrow_mut())
    }

    /// Keeps a line for the log (a SIGKILL sent...).
    pub(crate) fn note(&self, line: String) {
        let mut n = self.notes.borrow_mut();
        // Bounded: the caller takes them after every action.
        if n.len() < 16 {
            n.push(line);
        }
    }
}

impl Resource {
    /// The shell's resource for a configured one, or why this node cannot
    /// run it.
    pub fn new(spec: &ResourceSpec, owner: Owner, cx: &Bind<'_>) -> Result<Resource, BindError> {
        Ok(Resource {
            owner,
            timeout_ms: spec.timeout_ms,
            kind: bind(&spec.params, cx)?,
            notes: std::cell::RefCell::new(Vec::new()),
        })
    }
}

/// How often a running resource is checked unless its kind says
/// otherwise ([`Driver::check_interval_ms`]).
pub const DEFAULT_CHECK_INTERVAL_MS: u64 = 500;

/// Runs one action to its outcome, bounded by the resource's timeout.
pub async fn run_action(r: &Resource, kind: ActionKind) -> Outcome {
    bounded(r, r.kind.action(r, kind)).await
}

/// Runs the periodic check of a running resource, bounded by its timeout.
pub async fn run_check(r: &Resource) -> Outcome {
    bounded(r, r.kind.check(r)).await
}

async fn bounded(r: &Resource, fut: Act<'_>) -> Outcome {
    let limit = Duration::from_millis(r.timeout_ms);
    // A little past the limit: the inner bounds (which kill the action's
    // whole process group and say what timed out) go first.
    match tokio::time::timeout(
        limit + Duration::from_millis(tandem_core::group::ACTION_GRACE_MS),
        fut,
    )
    .await
    {
        Ok(o) => o,
        Err(_) => Outcome::Failed(format!("timed out after {} ms", r.timeout_ms)),
    }
}

/// Why this node cannot run a configured resource.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    /// A stop signal this agent does not know (validation refuses it; a
    /// file another version checked might name one).
    #[error("stop_signal {signal}: not a signal this agent knows (TERM, INT, QUIT, HUP, USR1, USR2, KILL)")]
    UnknownSignal {
        /// The signal as written.
        signal: String,
    },
    /// Something this version of the agent cannot run yet.
    #[error("{what} cannot run in this version: {instead}")]
    Unsupported {
        /// What.
        what: String,
        /// What to do instead.
        instead: String,
    },
}

/// Declares the agent's side of the kinds: one module per line, named as
/// the core's kind. Generates [`bind`].
macro_rules! registry {
    ($($module:ident :: $ty:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// The agent's side of a configured resource, or why this node
        /// cannot run it.
        pub fn bind(params: &Params, cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
            match params {
                $(Params::$ty(p) => $module::bind(p, cx),)*
            }
        }
    };
}

registry! {
    ip::Ip,
    process::Process,
    exec::Exec,
    volume::Volume,
    ocf::Ocf,
    systemd::Systemd,
    fs::Fs,
    filesync::Filesync,
}

#[cfg(test)]
pub(crate) mod tests {
    use std::path::Path;

    use super::*;
    use crate::child::tests::owner;

    /// Resource `r` of group `g` with these fields, its files in `dir`.
    pub(crate) fn resource(
        params: tandem_core::kinds::Params,
        timeout_ms: u64,
        dir: &Path,
    ) -> Resource {
        let spec = ResourceSpec {
            name: "r".into(),
            timeout_ms,
            on_fail: Default::default(),
            params,
        };
        let bind = crate::kinds::Bind {
            hub: None,
            filesync: None,
            group: "g",
            resource: "r",
            run_dir: dir,
        };
        Resource::new(&spec, owner(dir), &bind).unwrap()
    }
}
