//! The cluster configuration: one TOML file, identical on every node.
//!
//! [`load`] parses the text, checks every rule it can, and returns either a
//! [`Config`] (with warnings) or the full list of errors, each with a position
//! and a fix. It does no I/O: the caller reads the file and tells it what it
//! found at the key file's path ([`KeyFileFacts`]).
//!
//! The file format is documented in `docs/CONFIG.md`; `examples/` holds one
//! configuration per scenario in the product brief.

pub mod change;
mod diff;
pub(crate) mod help;
pub mod identity;
pub mod model;
pub mod schema;
mod validate;
pub mod values;

use std::path::{Path, PathBuf};

use crate::diagnostic::Diagnostic;

pub use diff::{diff, Change, ChangeKind, Section};
pub use model::*;
pub use validate::IMPLEMENTED_GROUP_MONITORS;

/// Length of a cluster key in bytes.
pub const KEY_LEN: usize = 32;

pub use crate::kinds::process::{DEFAULT_KILL_AFTER_MS, KILL_WAIT_MS};
pub use crate::kinds::DEFAULT_RESOURCE_TIMEOUT_MS;

/// What the caller found at a key file's path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyFileFacts {
    /// Nothing there.
    Missing,
    /// There, but could not be read (the OS error text).
    Unreadable(String),
    /// A regular file of `len` bytes with permission bits `mode`.
    Present {
        /// Size in bytes.
        len: u64,
        /// Permission bits (`st_mode & 0o777`).
        mode: u32,
    },
}

/// What [`load`] found: a configuration when there were no errors, and every
/// diagnostic (errors first, then warnings, each in file order).
#[derive(Debug)]
pub struct Loaded {
    /// The configuration, present only when no diagnostic is an error.
    pub config: Option<Config>,
    /// Errors and warnings.
    pub diagnostics: Vec<Diagnostic>,
}

impl Loaded {
    /// True when at least one diagnostic is an error.
    pub fn has_errors(&self) -> bool {
        self.diagnostics.iter().any(Diagnostic::is_error)
    }
}

/// Parses and validates a configuration.
///
/// `key_facts` is asked about each key file path exactly as written in the
/// file, resolved against `base_dir` when relative (the configuration's own
/// directory).
/// The `[cluster] control_socket` of a configuration file's text, for
/// commands that only need to find the agent (None: not set). Only the
/// file's syntax is checked here.
pub fn control_socket_of(source: &str) -> Result<Option<std::path::PathBuf>, String> {
    let file: schema::ConfigFile = toml::from_str(source).map_err(|e| e.to_string())?;
    Ok(file.cluster.control_socket.map(|s| s.into_inner()))
}

/// Parses and validates a configuration file's text.
pub fn load(source: &str, base_dir: &Path, key_facts: &dyn Fn(&Path) -> KeyFileFacts) -> Loaded {
    let file: schema::ConfigFile = match toml::from_str(source) {
        Ok(f) => f,
        Err(e) => {
            return Loaded {
                config: None,
                diagnostics: vec![help::from_toml_error(&e)],
            }
        }
    };
    validate::validate(file, base_dir, key_facts)
}

/// Resolves a path from the configuration against the configuration's directory.
pub fn resolve_path(base_dir: &Path, p: &Path) -> PathBuf {
    if p.is_absolute() {
        p.to_path_buf()
    } else {
        base_dir.join(p)
    }
}
