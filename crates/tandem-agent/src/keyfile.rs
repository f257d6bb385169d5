//! The cluster key on disk: creating it (`tandem keygen`) and describing what
//! is at a key path for configuration validation.

use std::fs::OpenOptions;
use std::io::{ErrorKind, Write};
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;

use anyhow::{bail, Context, Result};
use rand::RngCore;
use tandem_core::config::{KeyFileFacts, KEY_LEN};

/// Writes a new random key to `path` with mode 0600. Refuses to replace an
/// existing file: overwriting a key by accident splits a running cluster.
pub fn generate(path: &Path) -> Result<()> {
    let mut key = [0u8; KEY_LEN];
    rand::rngs::OsRng
        .try_fill_bytes(&mut key)
        .context("reading random bytes from the operating system for the key")?;
    let mut file = match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(f) => f,
        Err(e) if e.kind() == ErrorKind::AlreadyExists => bail!(
            "{} already exists; refusing to overwrite a key. Move it away first if you really want a new one",
            path.display()
        ),
        Err(e) => {
            return Err(e).with_context(|| {
                format!("creating key file {} (does its directory exist and is it writable?)", path.display())
            })
        }
    };
    file.write_all(&key)
        .and_then(|()| file.sync_all())
        .with_context(|| format!("writing key file {}", path.display()))?;
    Ok(())
}

/// A secret (`what`, at `path` with metadata `meta`) that group or others
/// can read is no longer secret: refused, with the `chmod` that fixes it.
pub fn refuse_readable(meta: &std::fs::Metadata, path: &Path, what: &str) -> Result<()> {
    if meta.mode() & 0o077 != 0 {
        bail!(
            "{what} {} is readable by other users (mode {:04o}); run `chmod 600 {}`",
            path.display(),
            meta.mode() & 0o777,
            path.display()
        );
    }
    Ok(())
}

/// Reads the cluster key; refuses a file others can read (anyone with it
/// can forge heartbeats and cluster decisions).
pub fn load(path: &Path) -> Result<tandem_core::wire::Key> {
    let meta = std::fs::metadata(path).with_context(|| {
        format!(
            "reading key file {} (create it with `tandem keygen`)",
            path.display()
        )
    })?;
    refuse_readable(&meta, path, "key file")?;
    let bytes =
        std::fs::read(path).with_context(|| format!("reading key file {}", path.display()))?;
    bytes.as_slice().try_into().map_err(|_| {
        anyhow::anyhow!(
            "key file {} holds {} bytes, not {KEY_LEN}; write a new one with `tandem keygen`",
            path.display(),
            bytes.len()
        )
    })
}

/// What is at `path`, for [`tandem_core::config::load`].
pub fn facts(path: &Path) -> KeyFileFacts {
    match std::fs::metadata(path) {
        Err(e) if e.kind() == ErrorKind::NotFound => KeyFileFacts::Missing,
        Err(e) => KeyFileFacts::Unreadable(e.to_string()),
        Ok(m) if !m.is_file() => KeyFileFacts::Unreadable("not a regular file".into()),
        Ok(m) => match std::fs::File::open(path) {
            Ok(_) => KeyFileFacts::Present {
                len: m.len(),
                mode: m.mode() & 0o777,
            },
            Err(e) => KeyFileFacts::Unreadable(e.to_string()),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keygen_writes_32_private_bytes_and_never_overwrites() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        generate(&p).unwrap();
        let m = std::fs::metadata(&p).unwrap();
        assert_eq!(m.len(), KEY_LEN as u64);
        assert_eq!(m.mode() & 0o777, 0o600);
        let before = std::fs::read(&p).unwrap();
        let err = generate(&p).unwrap_err().to_string();
        assert!(err.contains("refusing to overwrite"), "{err}");
        assert_eq!(std::fs::read(&p).unwrap(), before);
        assert_eq!(
            facts(&p),
            KeyFileFacts::Present {
                len: 32,
                mode: 0o600
            }
        );
        assert_eq!(facts(&dir.path().join("nope")), KeyFileFacts::Missing);
    }

    #[test]
    fn load_refuses_readable_or_short_keys() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("k");
        generate(&p).unwrap();
        assert_eq!(load(&p).unwrap().to_vec(), std::fs::read(&p).unwrap());
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o644)).unwrap();
        assert!(load(&p).unwrap_err().to_string().contains("chmod 600"));
        let short = dir.path().join("short");
        std::fs::write(&short, [1u8; 16]).unwrap();
        std::fs::set_permissions(&short, std::fs::Permissions::from_mode(0o600)).unwrap();
        assert!(load(&short).unwrap_err().to_string().contains("16 bytes"));
    }

    #[test]
    fn two_keys_differ() {
        let dir = tempfile::tempdir().unwrap();
        generate(&dir.path().join("a")).unwrap();
        generate(&dir.path().join("b")).unwrap();
        assert_ne!(
            std::fs::read(dir.path().join("a")).unwrap(),
            std::fs::read(dir.path().join("b")).unwrap()
        );
    }
}
