//! One copy on disk: the backing file or device, and the metadata beside
//! it in the state directory (generations, flags, the activity log) and
//! the dirty bitmap.
//!
//! Metadata and bitmap are replaced atomically (write a temporary file,
//! fsync, rename, fsync the directory), so a crash leaves either the old
//! or the new version, never a mix.

use std::collections::VecDeque;
use std::fs::{File, OpenOptions};
use std::os::unix::fs::{FileExt, FileTypeExt, OpenOptionsExt};
use std::os::unix::io::AsRawFd;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use crate::atomic_file::{replace, Durability};
use crate::checksum;
use serde::{Deserialize, Serialize};
use tandem_core::volume::bitmap::Bitmap;
use tandem_core::volume::Generations;

/// Bytes per activity-log extent.
pub const EXTENT: u64 = 4 << 20;
/// Extents the activity log holds before the oldest is retired: 4 GiB of
/// hot area, so that steady random writes rarely rewrite the metadata.
pub const AL_EXTENTS: usize = 1024;
/// Metadata format written by this version.
const META_FORMAT: u32 = 1;

/// The persisted facts of one copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Meta {
    /// Format version.
    pub format: u32,
    /// Volume name (a metadata file of another volume is refused).
    pub volume: String,
    /// Volume size in bytes.
    pub size: u64,
    /// Generation identifiers.
    pub gens: Generations,
    /// No sync into this copy was cut short.
    pub consistent: bool,
    /// The copy was up to date when last known.
    pub up_to_date: bool,
    /// The agent stopped cleanly (false while it runs: a crash leaves it
    /// false, and the activity log's extents are then resynced).
    pub clean: bool,
    /// When this copy was last promoted, ms since the Unix epoch.
    pub promoted_at_unix_ms: u64,
    /// Extents that may hold writes not yet on both copies.
    pub activity_log: Vec<u64>,
}

impl Meta {
    /// Metadata for a new copy; `source` marks it as holding the data.
    pub fn new(volume: &str, size: u64, source: bool, fresh_gen: u64) -> Meta {
        Meta {
            format: META_FORMAT,
            volume: volume.into(),
            size,
            gens: Generations {
                current: if source { fresh_gen } else { 0 },
                ..Generations::default()
            },
            consistent: source,
            up_to_date: source,
            clean: true,
            promoted_at_unix_ms: 0,
            activity_log: Vec::new(),
        }
    }
}

/// Where a copy's metadata lives.
#[derive(Debug, Clone)]
pub struct MetaPaths {
    /// The JSON metadata.
    pub meta: PathBuf,
    /// The raw bitmap.
    pub bitmap: PathBuf,
}

impl MetaPaths {
    /// The paths for `volume` under `state_dir`.
    pub fn new(state_dir: &Path, volume: &str) -> MetaPaths {
        let dir = state_dir.join("volumes");
        MetaPaths {
            meta: dir.join(format!("{volume}.meta.json")),
            bitmap: dir.join(format!("{volume}.bitmap")),
        }
    }

    /// Loads metadata and bitmap, checked against the configuration.
    pub fn load(&self, volume: &str, size: u64) -> Result<(Meta, Bitmap)> {
        let text = std::fs::read(&self.meta).with_context(|| {
            format!(
                "reading volume metadata {} (create the copy with `tandem volume create {volume}`)",
                self.meta.display()
            )
        })?;
        let text = unseal(META_KIND, &text).with_context(|| {
            format!(
                "volume metadata {} is damaged; recreate this copy with `tandem volume create {volume} --force` (it then takes a full sync from the peer)",
                self.meta.display()
            )
        })?;
        let meta: Meta = serde_json::from_slice(text).with_context(|| {
            format!(
                "volume metadata {} is damaged; recreate this copy with `tandem volume create {volume} --force` (it then takes a full sync from the peer)",
                self.meta.display()
            )
        })?;
        if meta.volume != volume || meta.size != size || meta.format != META_FORMAT {
            bail!(
                "volume metadata {} belongs to volume `{}` of {} bytes (format {}), not `{volume}` of {size} bytes; recreate it with `tandem volume create {volume} --force`",
                self.meta.display(),
                meta.volume,
                meta.size,
                meta.format
            );
        }
        let bitmap = match std::fs::read(&self.bitmap) {
            Ok(b) => Bitmap::from_bytes(size, unseal(BITMAP_KIND, &b).with_context(|| {
                format!(
                    "bitmap {} is damaged; recreate the copy with `tandem volume create {volume} --force`",
                    self.bitmap.display()
                )
            })?)
            .with_context(|| {
                format!(
                    "bitmap {} does not match a {size}-byte volume; recreate the copy with `tandem volume create {volume} --force`",
                    self.bitmap.display()
                )
            })?,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Bitmap::new(size),
            Err(e) => return Err(e).with_context(|| format!("reading {}", self.bitmap.display())),
        };
        Ok((meta, bitmap))
    }

    /// Replaces the metadata atomically.
    pub fn save_meta(&self, meta: &Meta) -> Result<()> {
        let bytes = serde_json::to_vec_pretty(meta).context("encoding volume metadata")?;
        replace(
            &self.meta,
            &checksum::seal(META_KIND, &bytes),
            Durability::Synced,
        )
    }

    /// Replaces the bitmap atomically.
    pub fn save_bitmap(&self, bitmap: &Bitmap) -> Result<()> {
        replace(
            &self.bitmap,
            &checksum::seal(BITMAP_KIND, &bitmap.to_bytes()),
            Durability::Synced,
        )
    }
}

/// Checksum header kinds of the metadata and the bitmap.
const META_KIND: &str = "tandem-volume-meta 1";
const BITMAP_KIND: &str = "tandem-volume-bitmap 1";

/// The payload of a sealed volume file. A file written before checksums
/// (no header) is taken as it is: volumes made by earlier versions keep
/// working, and their next save adds the header.
fn unseal<'a>(kind: &str, bytes: &'a [u8]) -> Result<&'a [u8], checksum::Damage> {
    match checksum::open(kind, bytes) {
        Err(checksum::Damage::NoChecksum) => Ok(bytes),
        r => r,
    }
}

/// The backing file or block device.
#[derive(Debug)]
pub struct Backing {
    file: File,
    path: PathBuf,
    block_device: bool,
}

/// Largest piece of one write call to the backing store (64 KiB: 16
/// buffers per folio at most; measured here, 4 KiB writes into such
/// folios run at 250 000/s against 37 000/s in 1 MiB ones, while large
/// writes lose under 10%).
pub const WRITE_PIECE: u64 = 64 << 10;

impl Backing {
    /// Opens the backing store; it must hold at least `size` bytes.
    pub fn open(path: &Path, size: u64) -> Result<Backing> {
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(path)
            .with_context(|| {
                format!(
                    "opening the backing store {} (create it with `tandem volume create`, or check the `backing` path)",
                    path.display()
                )
            })?;
        let meta = file
            .metadata()
            .with_context(|| format!("reading {}", path.display()))?;
        let block_device = meta.file_type().is_block_device();
        let have = if block_device {
            device_size(&file).with_context(|| format!("reading the size of {}", path.display()))?
        } else {
            meta.len()
        };
        if have < size {
            bail!(
                "backing store {} holds {have} bytes, less than the volume's {size}; grow it or fix `size`",
                path.display()
            );
        }
        // Random access, as a block device's clients do: no readahead,
        // so reads fill the page cache with one-page folios. With large
        // folios (ext4 on recent kernels), a 4 KiB write walks every
        // buffer of the folio it lands in, up to 2 MiB: measured 10x
        // slower (35 000 vs 420 000 writes/s on this kind of machine),
        // and readahead (8 MiB on this disk) behind the sync's 1 MiB
        // reads would leave the whole copy like that. Writes are cut into
        // pieces for the same reason (`write_at`). Advice only: a failure
        // costs speed, not correctness.
        // SAFETY: posix_fadvise on an fd we own, plain integer arguments.
        let _ = unsafe { libc::posix_fadvise(file.as_raw_fd(), 0, 0, libc::POSIX_FADV_RANDOM) };
        Ok(Backing {
            file,
            path: path.to_path_buf(),
            block_device,
        })
    }

    /// Creates a regular backing file of `size` bytes if none exists.
    pub fn create_file(path: &Path, size: u64) -> Result<bool> {
        if path.exists() {
            return Ok(false);
        }
        if let Some(d) = path.parent() {
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
        }
        // Readable by root only: it holds the service's data.
        let f = OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(path)
            .with_context(|| format!("creating backing file {}", path.display()))?;
        f.set_len(size)
            .with_context(|| format!("sizing backing file {} to {size} bytes", path.display()))?;
        Ok(true)
    }

    /// The descriptor, for splicing to and from the page cache.
    pub fn raw_fd(&self) -> std::os::fd::RawFd {
        self.file.as_raw_fd()
    }

    /// The path, for messages.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Reads exactly `buf.len()` bytes at `offset`.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> std::io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// Writes all of `data` at `offset`, in pieces that end on
    /// [`WRITE_PIECE`] boundaries: the page cache sizes a new folio after
    /// the write that creates it, and a folio larger than that makes every
    /// later small write into it slow (see [`Backing::open`]).
    pub fn write_at(&self, data: &[u8], offset: u64) -> std::io::Result<()> {
        let mut done = 0;
        while done < data.len() {
            let at = offset + done as u64;
            let room = (WRITE_PIECE - at % WRITE_PIECE) as usize;
            let n = room.min(data.len() - done);
            self.file.write_all_at(&data[done..done + n], at)?;
            done += n;
        }
        Ok(())
    }

    /// Zeroes a range: a hole in a file (reads back zeroes, frees space),
    /// zero bytes on a device.
    pub fn zero(&self, offset: u64, len: u64) -> std::io::Result<()> {
        if !self.block_device && len > 0 {
            // SAFETY: fallocate on an fd we own, with plain integer
            // arguments; it touches no memory of ours.
            let r = unsafe {
                libc::fallocate(
                    self.file.as_raw_fd(),
                    libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                    offset as libc::off_t,
                    len as libc::off_t,
                )
            };
            if r == 0 {
                return Ok(());
            }
        }
        let zeroes = vec![0u8; (len.min(1 << 20)) as usize];
        let mut at = offset;
        let end = offset + len;
        while at < end {
            let n = (end - at).min(zeroes.len() as u64) as usize;
            self.file.write_all_at(&zeroes[..n], at)?;
            at += n as u64;
        }
        Ok(())
    }

    /// Makes every completed write durable.
    pub fn sync(&self) -> std::io::Result<()> {
        self.file.sync_data()
    }
}

fn device_size(f: &File) -> std::io::Result<u64> {
    let mut size: u64 = 0;
    // BLKGETSIZE64: _IOR(0x12, 114, size_t).
    const BLKGETSIZE64: libc::c_ulong = 0x8008_1272;
    // SAFETY: the ioctl writes one u64 into `size`, which outlives the call.
    let r = unsafe { libc::ioctl(f.as_raw_fd(), BLKGETSIZE64, &mut size as *mut u64) };
    if r != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(size)
}

/// The activity log: extents written recently, most recent last. Before a
/// write lands in an extent not in the log, the log is persisted with it;
/// after a crash, every logged extent is resynced.
#[derive(Debug, Clone, Default)]
pub struct ActivityLog {
    extents: VecDeque<u64>,
}

impl ActivityLog {
    /// From the persisted list.
    pub fn from_list(list: &[u64]) -> ActivityLog {
        ActivityLog {
            extents: list.iter().copied().collect(),
        }
    }

    /// The list to persist.
    pub fn to_list(&self) -> Vec<u64> {
        self.extents.iter().copied().collect()
    }

    /// Adds the extents a range touches; true when the log changed (it
    /// must then be persisted before the write).
    pub fn touch(&mut self, offset: u64, len: u64) -> bool {
        if len == 0 {
            return false;
        }
        let first = offset / EXTENT;
        let last = (offset + len - 1) / EXTENT;
        let mut changed = false;
        for e in first..=last {
            if !self.extents.contains(&e) {
                if self.extents.len() == AL_EXTENTS {
                    self.extents.pop_front();
                }
                self.extents.push_back(e);
                changed = true;
            }
        }
        changed
    }

    /// Empties the log (nothing in flight, bitmap persisted).
    pub fn clear(&mut self) -> bool {
        let had = !self.extents.is_empty();
        self.extents.clear();
        had
    }

    /// Marks every logged extent in `bitmap`; returns the blocks marked.
    pub fn mark(&self, bitmap: &mut Bitmap, size: u64) -> u64 {
        self.extents
            .iter()
            .map(|e| {
                let at = e * EXTENT;
                bitmap.set_range(at, EXTENT.min(size.saturating_sub(at)))
            })
            .sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metadata_round_trips_and_refuses_another_volume() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let p = MetaPaths::new(dir.path(), "data");
        let m = Meta::new("data", 1 << 20, true, 42);
        p.save_meta(&m).unwrap_or_else(|e| panic!("{e:#}"));
        let mut b = Bitmap::new(1 << 20);
        b.set_range(8192, 1);
        p.save_bitmap(&b).unwrap_or_else(|e| panic!("{e:#}"));
        let (m2, b2) = p.load("data", 1 << 20).unwrap_or_else(|e| panic!("{e:#}"));
        assert_eq!((m2, b2), (m, b));
        let e = p.load("data", 2 << 20).map(|_| ()).unwrap_err();
        assert!(format!("{e:#}").contains("--force"), "{e:#}");
        let e = MetaPaths::new(dir.path(), "other")
            .load("other", 1)
            .map(|_| ())
            .unwrap_err();
        assert!(
            format!("{e:#}").contains("tandem volume create other"),
            "{e:#}"
        );
    }

    #[test]
    fn activity_log_is_bounded_and_marks_its_extents() {
        let mut al = ActivityLog::default();
        assert!(al.touch(0, 1));
        assert!(!al.touch(100, 1));
        assert!(al.touch(EXTENT - 1, 2));
        for e in 0..AL_EXTENTS as u64 + 5 {
            al.touch(e * EXTENT, 1);
        }
        assert_eq!(al.to_list().len(), AL_EXTENTS);
        let size = 3 * EXTENT;
        let mut al = ActivityLog::default();
        al.touch(2 * EXTENT + 5, 1);
        let mut b = Bitmap::new(size);
        assert_eq!(al.mark(&mut b, size), EXTENT / 4096);
    }

    #[test]
    fn backing_reads_writes_and_zeroes() {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let path = dir.path().join("disk");
        assert!(Backing::create_file(&path, 1 << 20).unwrap_or_else(|e| panic!("{e:#}")));
        let b = Backing::open(&path, 1 << 20).unwrap_or_else(|e| panic!("{e:#}"));
        b.write_at(&[7; 8192], 4096)
            .unwrap_or_else(|e| panic!("{e}"));
        b.zero(4096, 4096).unwrap_or_else(|e| panic!("{e}"));
        let mut buf = [1u8; 8192];
        b.read_at(&mut buf, 4096).unwrap_or_else(|e| panic!("{e}"));
        assert!(buf[..4096].iter().all(|&x| x == 0));
        assert!(buf[4096..].iter().all(|&x| x == 7));
        let e = Backing::open(&path, 2 << 20).unwrap_err();
        assert!(format!("{e:#}").contains("less than"), "{e:#}");
        // A write across several pieces, starting and ending mid-piece.
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let at = WRITE_PIECE - 1000;
        b.write_at(&data, at).unwrap_or_else(|e| panic!("{e}"));
        let mut back = vec![0u8; data.len() + 2];
        b.read_at(&mut back, at - 1)
            .unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(&back[1..=data.len()], &data[..]);
        assert_eq!((back[0], back[data.len() + 1]), (0, 0));
    }
}
