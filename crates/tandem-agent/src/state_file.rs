//! The node's durable state (`state.json`): its incarnation and the
//! agreement's term, vote and record, behind a checksum.
//!
//! The file starts with a header line, `tandem-state 1 blake3=<hex>`, the
//! BLAKE3 hash of the JSON that follows. A file whose hash does not match
//! (edited, or corrupted on disk) is refused: one committed entry edited
//! in place kept valid JSON and made a node start a group the cluster had
//! placed elsewhere (issue 15). The error does not tell the operator to
//! delete the file, which would silently drop the node's Raft vote; it
//! names the two safe ways out (restore a backup, or start once with
//! `--discard-damaged-state`, which starts the node empty and out of
//! elections until it has followed a leader).

use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tandem_core::agreement::Durable;
use tandem_core::member::Persisted;

use crate::atomic_file::{self, Durability};
use crate::checksum;

/// Space set aside in the state directory for a clean exit when its
/// filesystem is full: several state files and lease files.
pub const RESERVE_BYTES: u64 = 4 << 20;

/// Largest state file read (a record far larger than any cluster's).
const MAX_STATE_FILE: u64 = 64 << 20;
/// The checksum header's kind.
const KIND: &str = "tandem-state 1";

/// What to do with a state file that fails its check.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Recovery {
    /// Refuse to start (the default).
    #[default]
    Refuse,
    /// Keep it aside and start empty, recovering
    /// ([`Durable::recovering`]).
    DiscardDamaged,
    /// Accept a file without a checksum (written before checksums),
    /// once; a file whose checksum does not match is still refused.
    AcceptUnchecksummed,
}

/// The state file in a state directory.
#[derive(Debug)]
pub struct StateFile {
    path: PathBuf,
}

/// How a load went, for the log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Loaded {
    /// No file: a first start.
    Fresh,
    /// The file checked out.
    Checked,
    /// The file was damaged and kept aside here; the node recovers.
    Discarded(PathBuf),
    /// A file without a checksum, accepted on request.
    Unchecksummed,
}

/// Encodes `p` as the file's bytes: header line, then JSON.
pub fn encode(p: &Persisted) -> Result<Vec<u8>> {
    let json = serde_json::to_vec(p).context("encoding the state")?;
    Ok(checksum::seal(KIND, &json))
}

/// Why a file's bytes are not a state.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// The checksum is missing or wrong.
    #[error("{0}")]
    Checksum(#[from] checksum::Damage),
    /// It checks out but does not parse.
    #[error("it does not parse: {0}")]
    Unreadable(String),
}

/// Decodes a file's bytes; never trusts contents whose hash differs.
pub fn decode(bytes: &[u8]) -> Result<Persisted, Damage> {
    let json = checksum::open(KIND, bytes)?;
    serde_json::from_slice(json).map_err(|e| Damage::Unreadable(e.to_string()))
}

impl StateFile {
    /// The state file of `dir`, created 0700 where missing.
    pub fn open(dir: &Path) -> Result<StateFile> {
        atomic_file::private_dir(dir)?;
        std::fs::set_permissions(dir, std::os::unix::fs::PermissionsExt::from_mode(0o700))
            .with_context(|| format!("restricting {} to root", dir.display()))?;
        Ok(StateFile {
            path: dir.join("state.json"),
        })
    }

    /// The file's path.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Loads the state, applying `recovery` to a damaged file.
    pub fn load(&self, recovery: Recovery) -> Result<(Persisted, Loaded)> {
        let file = match std::fs::File::open(&self.path) {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok((Persisted::default(), Loaded::Fresh))
            }
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.path.display())),
        };
        let mut bytes = Vec::new();
        file.take(MAX_STATE_FILE)
            .read_to_end(&mut bytes)
            .with_context(|| format!("reading {}", self.path.display()))?;
        let damage = match decode(&bytes) {
            Ok(p) => return Ok((p, Loaded::Checked)),
            Err(d) => d,
        };
        if damage == Damage::Checksum(checksum::Damage::NoChecksum)
            && recovery == Recovery::AcceptUnchecksummed
        {
            if let Ok(p) = serde_json::from_slice::<Persisted>(&bytes) {
                return Ok((p, Loaded::Unchecksummed));
            }
        }
        if recovery == Recovery::DiscardDamaged {
            let stamp = crate::clock::unix_ms() / 1_000;
            let aside = self.path.with_extension(format!("json.damaged-{stamp}"));
            std::fs::rename(&self.path, &aside).with_context(|| {
                format!(
                    "keeping {} aside as {}",
                    self.path.display(),
                    aside.display()
                )
            })?;
            // The incarnation only grows: keep it if it can still be read.
            let incarnation = serde_json::from_slice::<serde_json::Value>(
                bytes.splitn(2, |b| *b == b'\n').last().unwrap_or_default(),
            )
            .ok()
            .and_then(|v| v["incarnation"].as_u64())
            .unwrap_or(0);
            let p = Persisted {
                incarnation,
                agreement: Durable {
                    recovering: true,
                    ..Durable::default()
                },
            };
            self.save(&p)?;
            return Ok((p, Loaded::Discarded(aside)));
        }
        let older = if damage == Damage::Checksum(checksum::Damage::NoChecksum) {
            "\n  - if this node was just upgraded from a version without checksums, start it once \
             with `--accept-unchecksummed-state`;"
        } else {
            ""
        };
        bail!(
            "{} is damaged: {damage}. Do not delete it: it holds this node's vote, and a node that \
             forgets its vote can elect a second leader. Either:{older}\n  - restore it from a copy \
             taken while the agent was stopped; or\n  - start once with `tandem agent \
             --discard-damaged-state`: the file is kept aside, this node starts empty, takes no part \
             in elections until it has followed the current leader (the other voters must be up and \
             have a leader), and fetches the record from it",
            self.path.display()
        )
    }

    /// Sets space aside in the state directory ([`RESERVE_BYTES`]), if it
    /// is not there yet: when the filesystem fills up, releasing it lets
    /// this node persist what it must while it stops its groups and leaves
    /// cleanly, instead of dying mid-way.
    pub fn reserve(&self) -> Result<()> {
        let path = self.reserve_path();
        if std::fs::metadata(&path).is_ok_and(|m| m.len() == RESERVE_BYTES) {
            return Ok(());
        }
        let zeros = vec![0u8; RESERVE_BYTES as usize];
        atomic_file::replace(&path, &zeros, Durability::Synced)
    }

    /// Releases the reserve; whether there was one.
    pub fn release_reserve(&self) -> bool {
        std::fs::remove_file(self.reserve_path()).is_ok()
    }

    fn reserve_path(&self) -> PathBuf {
        self.path.with_file_name("reserve")
    }

    /// Writes the state durably (mode 0600).
    pub fn save(&self, p: &Persisted) -> Result<()> {
        atomic_file::replace(&self.path, &encode(p)?, Durability::Synced)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    fn saved(incarnation: u64) -> (tempfile::TempDir, StateFile, Persisted) {
        let dir = tempfile::tempdir().unwrap();
        let sf = StateFile::open(dir.path()).unwrap();
        let p = Persisted {
            incarnation,
            ..Persisted::default()
        };
        sf.save(&p).unwrap();
        (dir, sf, p)
    }

    #[test]
    fn state_file_round_trips_with_mode_0600() {
        let dir = tempfile::tempdir().unwrap();
        let sf = StateFile::open(dir.path()).unwrap();
        assert_eq!(
            sf.load(Recovery::Refuse).unwrap(),
            (Persisted::default(), Loaded::Fresh)
        );
        let (_d, sf, p) = saved(7);
        assert_eq!(sf.load(Recovery::Refuse).unwrap(), (p, Loaded::Checked));
        let mode = std::fs::metadata(sf.path()).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
    }

    /// Issue 15, defect 1: one committed entry edited in a stopped node's
    /// state file (the JSON stayed valid) was loaded as if nothing had
    /// happened. Any edit is now refused, with what to do.
    #[test]
    fn an_edited_state_file_is_refused_without_inviting_deletion() {
        let (_d, sf, _) = saved(7);
        let bytes = std::fs::read(sf.path()).unwrap();
        let edited = String::from_utf8(bytes)
            .unwrap()
            .replace("\"incarnation\":7", "\"incarnation\":8");
        std::fs::write(sf.path(), edited).unwrap();
        let err = format!("{:#}", sf.load(Recovery::Refuse).unwrap_err());
        assert!(err.contains("checksum does not match"), "{err}");
        assert!(err.contains("Do not delete it"), "{err}");
        assert!(err.contains("--discard-damaged-state"), "{err}");
        assert!(!err.contains("--accept-unchecksummed-state"), "{err}");
        // Accepting a file without a checksum does not accept this one.
        assert!(sf.load(Recovery::AcceptUnchecksummed).is_err());
    }

    #[test]
    fn a_damaged_file_is_kept_aside_and_the_node_recovers() {
        let (dir, sf, _) = saved(7);
        std::fs::write(sf.path(), b"tandem-state 1 blake3=00\n{}").unwrap();
        let (p, how) = sf.load(Recovery::DiscardDamaged).unwrap();
        assert!(p.agreement.recovering);
        let Loaded::Discarded(aside) = how else {
            panic!("{how:?}")
        };
        assert!(aside.exists() && aside.starts_with(dir.path()));
        // The fresh state is saved: a restart keeps recovering.
        let (again, how) = sf.load(Recovery::Refuse).unwrap();
        assert!(again.agreement.recovering && how == Loaded::Checked);
    }

    #[test]
    fn a_file_from_before_checksums_is_accepted_only_on_request() {
        let (_d, sf, p) = saved(7);
        std::fs::write(sf.path(), serde_json::to_vec(&p).unwrap()).unwrap();
        let err = format!("{:#}", sf.load(Recovery::Refuse).unwrap_err());
        assert!(err.contains("--accept-unchecksummed-state"), "{err}");
        assert_eq!(
            sf.load(Recovery::AcceptUnchecksummed).unwrap(),
            (p, Loaded::Unchecksummed)
        );
    }

    #[test]
    fn decode_never_panics_on_garbage() {
        for b in [
            &b""[..],
            b"tandem-state 1 blake3=",
            b"tandem-state 1 blake3=zz\n",
            b"\xff\xfe",
        ] {
            assert!(decode(b).is_err());
        }
    }
}
