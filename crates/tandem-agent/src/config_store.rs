//! This node's configurations beyond the file it runs, in its state
//! directory: the ones staged by `tandem config apply` (accepted here,
//! waiting for the cluster to switch), and the history of every
//! configuration this node saw committed, with its epoch (for `tandem
//! config history` and `rollback`, for a peer catching up, and to tell an
//! older configuration of the cluster's from an operator's edit).
//!
//! Files are named by the configuration's identity hash
//! ([`tandem_core::config::identity`]), written atomically, mode 0600 (a
//! configuration holds secrets), and bounded in number.

use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde::Serialize;

use crate::atomic_file::{self, Durability};

/// Largest configuration accepted for a change (the largest example is
/// under 10 KiB).
pub const MAX_CONFIG_BYTES: usize = 512 << 10;
/// Staged configurations kept (the oldest go first).
const MAX_STAGED: usize = 8;
/// Committed configurations kept in the history (the oldest go first).
pub const MAX_HISTORY: usize = 64;
const STAGED: &str = "config-staged";
/// Names the configuration this node switched to because a change began
/// (until it commits): a node left on it by an abandoned change switches
/// back.
const SWITCHED: &str = "config-switched";
const HISTORY: &str = "config-history";

/// One configuration this node saw committed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct HistoryEntry {
    /// The cluster's configuration epoch it was committed at.
    pub epoch: u64,
    /// Its identity hash.
    pub hash: String,
    /// When this node recorded it, ms since the Unix epoch.
    pub at_unix_ms: u64,
    /// Where its text is.
    pub path: PathBuf,
}

/// The files of one node's state directory.
#[derive(Debug, Clone)]
pub struct Store {
    dir: PathBuf,
}

/// A hash is a file name here: only what an identity hash holds.
fn checked(hash: &str) -> Result<&str> {
    if hash.is_empty() || hash.len() > 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
        bail!("`{hash}` is not a configuration hash");
    }
    Ok(hash)
}

impl Store {
    /// The store of the node whose state directory is `state_dir`.
    pub fn new(state_dir: &Path) -> Store {
        Store {
            dir: state_dir.to_path_buf(),
        }
    }

    fn staged_path(&self, hash: &str) -> PathBuf {
        self.dir.join(STAGED).join(format!("{hash}.toml"))
    }

    /// Keeps `text` (of identity `hash`) until the cluster switches to it.
    pub fn stage(&self, hash: &str, text: &str) -> Result<()> {
        let hash = checked(hash)?;
        if text.len() > MAX_CONFIG_BYTES {
            bail!(
                "the configuration is {} bytes; at most {MAX_CONFIG_BYTES} are accepted",
                text.len()
            );
        }
        atomic_file::replace(&self.staged_path(hash), text.as_bytes(), Durability::Synced)?;
        prune(&self.dir.join(STAGED), MAX_STAGED);
        Ok(())
    }

    /// Records that this node switched to configuration `hash` because a
    /// change began (None: clears it, the change committed or this node
    /// switched for another reason).
    pub fn set_switched(&self, hash: Option<&str>) -> Result<()> {
        let path = self.dir.join(SWITCHED);
        match hash {
            Some(h) => atomic_file::replace(&path, checked(h)?.as_bytes(), Durability::Synced),
            None => match std::fs::remove_file(&path) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
                    Err(e).with_context(|| format!("removing {}", path.display()))
                }
                _ => Ok(()),
            },
        }
    }

    /// The configuration this node switched to because a change began,
    /// if that change has not committed yet.
    pub fn switched(&self) -> Option<String> {
        let text = std::fs::read_to_string(self.dir.join(SWITCHED)).ok()?;
        checked(text.trim()).ok().map(String::from)
    }

    /// The text of configuration `hash`, staged or in the history.
    pub fn text(&self, hash: &str) -> Option<String> {
        let hash = checked(hash).ok()?;
        if let Ok(t) = std::fs::read_to_string(self.staged_path(hash)) {
            return Some(t);
        }
        self.history()
            .into_iter()
            .rev()
            .find(|e| e.hash == hash)
            .and_then(|e| std::fs::read_to_string(e.path).ok())
    }

    /// Records that configuration `hash` (text `text`) was committed at
    /// `epoch`; returns whether this is new.
    pub fn remember(&self, epoch: u64, hash: &str, text: &str) -> Result<bool> {
        let hash = checked(hash)?;
        let path = self
            .dir
            .join(HISTORY)
            .join(format!("{epoch:010}-{hash}.toml"));
        if path.exists() {
            return Ok(false);
        }
        atomic_file::replace(&path, text.as_bytes(), Durability::Synced)?;
        prune(&self.dir.join(HISTORY), MAX_HISTORY);
        Ok(true)
    }

    /// Every configuration this node saw committed, oldest first.
    pub fn history(&self) -> Vec<HistoryEntry> {
        let Ok(dir) = std::fs::read_dir(self.dir.join(HISTORY)) else {
            return Vec::new();
        };
        let mut out: Vec<HistoryEntry> = dir
            .flatten()
            .filter_map(|e| {
                let name = e.file_name().to_string_lossy().into_owned();
                let (epoch, hash) = name.strip_suffix(".toml")?.split_once('-')?;
                let at_unix_ms = e
                    .metadata()
                    .ok()
                    .and_then(|m| m.modified().ok())
                    .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
                    .map_or(0, |d| d.as_millis() as u64);
                Some(HistoryEntry {
                    epoch: epoch.parse().ok()?,
                    hash: checked(hash).ok()?.to_string(),
                    at_unix_ms,
                    path: e.path(),
                })
            })
            .collect();
        out.sort_by_key(|e| e.epoch);
        out
    }

    /// (epoch, hash) of every configuration this node saw committed.
    pub fn seen(&self) -> Vec<(u64, String)> {
        self.history()
            .into_iter()
            .map(|e| (e.epoch, e.hash))
            .collect()
    }
}

/// Keeps the `keep` newest files of `dir` (by name, which sorts by epoch
/// in the history and is arbitrary but bounded among staged files: those
/// go by age).
fn prune(dir: &Path, keep: usize) {
    let Ok(rd) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, String, PathBuf)> = rd
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".toml"))
        .map(|e| {
            let t = e
                .metadata()
                .and_then(|m| m.modified())
                .unwrap_or(std::time::UNIX_EPOCH);
            (t, e.file_name().to_string_lossy().into_owned(), e.path())
        })
        .collect();
    if files.len() <= keep {
        return;
    }
    files.sort();
    let extra = files.len() - keep;
    for (_, _, p) in files.into_iter().take(extra) {
        let _ = std::fs::remove_file(p);
    }
}

/// Replaces the configuration file at `path` with `text`, atomically and
/// durably (mode 0600: it holds secrets), so that a restart runs it.
pub fn install(path: &Path, text: &str) -> Result<()> {
    atomic_file::replace(path, text.as_bytes(), Durability::Synced)
        .with_context(|| format!("installing the new configuration as {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staged_and_remembered_texts_are_found_by_hash_and_bounded() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        s.stage("ab12", "one").unwrap();
        assert_eq!(s.text("ab12").as_deref(), Some("one"));
        assert_eq!(s.switched(), None);
        s.set_switched(Some("ab12")).unwrap();
        assert_eq!(s.switched().as_deref(), Some("ab12"));
        s.set_switched(None).unwrap();
        s.set_switched(None).unwrap();
        assert_eq!(s.switched(), None);
        assert!(s.remember(1, "cd34", "two").unwrap());
        assert!(!s.remember(1, "cd34", "two").unwrap());
        assert_eq!(s.text("cd34").as_deref(), Some("two"));
        assert_eq!(s.text("ef56"), None);
        for e in 2..(MAX_HISTORY as u64 + 5) {
            s.remember(e, "ee", "x").unwrap();
        }
        let h = s.history();
        assert_eq!(h.len(), MAX_HISTORY);
        assert_eq!(h.last().map(|e| e.epoch), Some(MAX_HISTORY as u64 + 4));
        assert_eq!(s.seen().first().map(|e| e.0), Some(5));
        let mode = std::os::unix::fs::PermissionsExt::mode(
            &std::fs::metadata(&h[0].path).unwrap().permissions(),
        );
        assert_eq!(mode & 0o777, 0o600);
    }

    #[test]
    fn a_hash_that_is_not_one_names_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let s = Store::new(dir.path());
        assert!(s.stage("../../etc/passwd", "x").is_err());
        assert!(s.remember(1, "a/b", "x").is_err());
        assert_eq!(s.text("../x"), None);
        let big = "x".repeat(MAX_CONFIG_BYTES + 1);
        assert!(s.stage("ab", &big).is_err());
    }
}
