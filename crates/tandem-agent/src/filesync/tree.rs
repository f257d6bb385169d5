//! The synced paths on disk: scanning roots into a manifest, and applying
//! what a peer sent, each write atomic (a temporary file in the same
//! directory, then `rename`) with mode, owner and mtime kept.
//!
//! A received path is first checked by the core
//! ([`tandem_core::filesync::relative_ok`]); here, every directory on the
//! way to it must be a real directory, not a symlink, so a symlink planted
//! under a root cannot send a write elsewhere.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use tandem_core::filesync::{Entry, EntryKind, Manifest, MAX_ENTRIES, MAX_LINK_BYTES};

/// A scan of this node's roots.
#[derive(Debug, Default)]
pub struct Scan {
    /// The manifest (entries, and what the receiver must keep).
    pub manifest: Manifest,
    /// What could not be listed or would not be sent, in words.
    pub problems: Vec<String>,
}

/// Lists every root (files hashed) as a manifest; `max_file_bytes`: a
/// larger file is kept, not sent.
///
/// The walk goes by descriptors: each directory is opened with
/// `O_NOFOLLOW` from its parent's descriptor and listed from its own, and
/// each file is read from a descriptor checked to be the very inode that
/// was listed. A directory swapped for a symlink while the scan runs (by
/// anyone who may write under a root) therefore ends that branch instead
/// of leading the agent, running as root, to read and send a file from
/// elsewhere (`/etc/shadow` to every peer).
pub fn scan(roots: &[PathBuf], max_file_bytes: u64) -> Scan {
    let mut s = Scan::default();
    s.manifest.roots = root_names(roots);
    for (i, root) in roots.iter().enumerate() {
        let Ok(r) = u16::try_from(i) else { break };
        // The root itself is followed if it is a symlink (the operator's
        // own path); nothing under it is.
        match stat_path(root) {
            Ok(st) => walk(&mut s, r, root, String::new(), At::Root(st), max_file_bytes),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                s.manifest.keep.push((r, String::new()));
                s.problems.push(format!(
                    "{}: missing here, left as it is on the others",
                    root.display()
                ));
            }
            Err(e) => {
                s.manifest.keep.push((r, String::new()));
                s.problems.push(format!("{}: {e}", root.display()));
            }
        }
    }
    s
}

/// The roots as the manifest names them.
pub fn root_names(roots: &[PathBuf]) -> Vec<String> {
    roots
        .iter()
        .map(|r| r.to_string_lossy().into_owned())
        .collect()
}

fn join(root: &Path, rel: &str) -> PathBuf {
    if rel.is_empty() {
        root.to_path_buf()
    } else {
        root.join(rel)
    }
}

/// Where the walk stands: at a root (stat'ed through its path) or at a
/// name in an open directory.
enum At<'a> {
    Root(libc::stat),
    In(&'a OwnedFd, CString),
}

fn walk(s: &mut Scan, root: u16, base: &Path, rel: String, at: At<'_>, max_file_bytes: u64) {
    let path = join(base, &rel);
    if s.manifest.entries.len() >= MAX_ENTRIES {
        s.problems.push(format!(
            "{}: more than {MAX_ENTRIES} entries; the rest is not synced",
            path.display()
        ));
        s.manifest.keep.push((root, rel));
        return;
    }
    let listed = match &at {
        At::Root(st) => Ok(*st),
        At::In(dir, name) => stat_at(dir, name),
    };
    let listed = match listed {
        Ok(st) => st,
        Err(e) => return keep(s, root, rel, &path, &e.to_string()),
    };
    let ty = listed.st_mode & libc::S_IFMT;
    // What is sent is described by the descriptor that is read (`fstat`),
    // never by a path looked up again.
    let (kind, st, dir) = if ty == libc::S_IFLNK {
        let At::In(dir, name) = &at else {
            return keep(
                s,
                root,
                rel,
                &path,
                "a root that is a symlink after following it",
            );
        };
        match read_link_at(dir, name) {
            Ok(Some(target)) => (EntryKind::Symlink { target }, listed, None),
            Ok(None) => return keep(s, root, rel, &path, "its target is too long or not UTF-8"),
            Err(e) => return keep(s, root, rel, &path, &e.to_string()),
        }
    } else if ty == libc::S_IFREG {
        let size = u64::try_from(listed.st_size).unwrap_or(0);
        if size > max_file_bytes {
            return keep(
                s,
                root,
                rel,
                &path,
                &format!("{size} bytes, over max_file_bytes ({max_file_bytes})"),
            );
        }
        let opened = open_listed(&at, base, &listed).and_then(|fd| {
            let st = fstat(&fd)?;
            Ok((fd, st))
        });
        match opened {
            Ok((fd, st)) => match hash_read(File::from(fd), &path, max_file_bytes) {
                Ok((size, hash)) => (EntryKind::File { size, hash }, st, None),
                Err(e) => return keep(s, root, rel, &path, &format!("{e:#}")),
            },
            Err(e) => return keep(s, root, rel, &path, &e.to_string()),
        }
    } else if ty == libc::S_IFDIR {
        match open_listed(&at, base, &listed).and_then(|fd| {
            let st = fstat(&fd)?;
            Ok((fd, st))
        }) {
            Ok((fd, st)) => (EntryKind::Dir, st, Some(fd)),
            Err(e) => {
                // Listed, but its contents unknown: keep them on the others.
                s.problems.push(format!("{}: {e}", path.display()));
                s.manifest.keep.push((root, rel));
                return;
            }
        }
    } else {
        return keep(s, root, rel, &path, "not a file, directory or symlink");
    };
    s.manifest.entries.push(Entry {
        root,
        path: rel.clone(),
        kind,
        // Never setuid or setgid on another node (see `KEPT_MODE`).
        mode: st.st_mode & KEPT_MODE,
        uid: st.st_uid,
        gid: st.st_gid,
        mtime_ns: st
            .st_mtime
            .saturating_mul(1_000_000_000)
            .saturating_add(st.st_mtime_nsec),
    });
    let Some(dir) = dir else { return };
    let mut names: Vec<String> = match list_dir(&dir) {
        Ok((names, unreadable)) => {
            if unreadable {
                // Entries it could not read: keep the whole directory on
                // the others rather than remove what was not seen.
                s.problems.push(format!(
                    "{}: entries could not be read; kept as they are on the others",
                    path.display()
                ));
                s.manifest.keep.push((root, rel.clone()));
            }
            names
                .into_iter()
                .filter_map(|n| match String::from_utf8(n) {
                    Ok(n) => Some(n),
                    Err(n) => {
                        s.problems.push(format!(
                            "{}: a name that is not UTF-8 is not synced: {:?}",
                            path.display(),
                            String::from_utf8_lossy(n.as_bytes())
                        ));
                        None
                    }
                })
                .collect()
        }
        Err(e) => {
            s.problems.push(format!("{}: {e}", path.display()));
            s.manifest.keep.push((root, rel));
            return;
        }
    };
    // Sorted: the same tree gives the same manifest.
    names.sort();
    for n in names {
        let Ok(name) = CString::new(n.as_bytes()) else {
            continue;
        };
        let child = if rel.is_empty() {
            n
        } else {
            format!("{rel}/{n}")
        };
        walk(s, root, base, child, At::In(&dir, name), max_file_bytes);
    }
}

fn keep(s: &mut Scan, root: u16, rel: String, path: &Path, why: &str) {
    s.problems
        .push(format!("{}: not synced: {why}", path.display()));
    s.manifest.keep.push((root, rel));
}

/// `stat` of the operator's own path (a root), following a symlink.
fn stat_path(p: &Path) -> std::io::Result<libc::stat> {
    let c = CString::new(p.as_os_str().as_bytes())
        .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `c` and `st` are valid for the call.
    if unsafe { libc::stat(c.as_ptr(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn fstat(fd: &OwnedFd) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `fd` is open and `st` valid for the call.
    if unsafe { libc::fstat(fd.as_raw_fd(), &mut st) } == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Opens what the walk listed (a directory or a regular file), never
/// through a symlink below the root, never blocking (a FIFO swapped in),
/// and only if it is still the inode that was listed: anything swapped in
/// between the listing and the open is refused.
fn open_listed(at: &At<'_>, root: &Path, listed: &libc::stat) -> std::io::Result<OwnedFd> {
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let fd = match at {
        At::Root(_) => {
            let c = CString::new(root.as_os_str().as_bytes())
                .map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
            // SAFETY: `c` is valid for the call.
            unsafe { libc::open(c.as_ptr(), flags) }
        }
        // SAFETY: `dir` is open and `name` valid for the call.
        At::In(dir, name) => unsafe {
            libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW)
        },
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let fd = unsafe { OwnedFd::from_raw_fd(fd) };
    let now = fstat(&fd)?;
    if (now.st_dev, now.st_ino, now.st_mode & libc::S_IFMT)
        != (listed.st_dev, listed.st_ino, listed.st_mode & libc::S_IFMT)
    {
        return Err(std::io::Error::other(
            "changed while it was scanned (replaced by something else); the next sync looks again",
        ));
    }
    Ok(fd)
}

/// A symlink's target, read from its directory's descriptor; None if it
/// is too long or not UTF-8.
fn read_link_at(dir: &OwnedFd, name: &CString) -> std::io::Result<Option<String>> {
    let mut buf = vec![0u8; MAX_LINK_BYTES + 1];
    // SAFETY: `dir` is open, `name` valid, `buf` writable for its length.
    let n = unsafe {
        libc::readlinkat(
            dir.as_raw_fd(),
            name.as_ptr(),
            buf.as_mut_ptr().cast(),
            buf.len(),
        )
    };
    let Ok(n) = usize::try_from(n) else {
        return Err(std::io::Error::last_os_error());
    };
    if n > MAX_LINK_BYTES {
        return Ok(None);
    }
    buf.truncate(n);
    Ok(String::from_utf8(buf).ok())
}

/// The names in an open directory (not `.` or `..`), and whether reading
/// it stopped on an error. Read from a duplicate of the descriptor, so
/// the walk keeps its own for the `openat`s below.
fn list_dir(dir: &OwnedFd) -> std::io::Result<(Vec<Vec<u8>>, bool)> {
    // SAFETY: `dir` is open for the call.
    let dup = unsafe { libc::fcntl(dir.as_raw_fd(), libc::F_DUPFD_CLOEXEC, 0) };
    if dup < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `dup` is a directory descriptor we own; on success the
    // stream owns it and `closedir` closes it.
    let d = unsafe { libc::fdopendir(dup) };
    if d.is_null() {
        let e = std::io::Error::last_os_error();
        // SAFETY: `dup` is still ours when fdopendir failed.
        unsafe { libc::close(dup) };
        return Err(e);
    }
    let mut names = Vec::new();
    let mut unreadable = false;
    // Bounded: the scan stops at MAX_ENTRIES entries in all.
    for _ in 0..=MAX_ENTRIES {
        // SAFETY: errno is thread-local; cleared to tell an error from
        // the end of the stream.
        unsafe { *libc::__errno_location() = 0 };
        // SAFETY: `d` is an open stream.
        let ent = unsafe { libc::readdir64(d) };
        if ent.is_null() {
            unreadable = std::io::Error::last_os_error().raw_os_error() != Some(0);
            break;
        }
        // SAFETY: `ent` points to an entry valid until the next readdir,
        // and its name is NUL-terminated.
        let name = unsafe { std::ffi::CStr::from_ptr((*ent).d_name.as_ptr()) }.to_bytes();
        if name != b"." && name != b".." {
            names.push(name.to_vec());
        }
    }
    // SAFETY: `d` is open and closed once.
    unsafe { libc::closedir(d) };
    Ok((names, unreadable))
}

/// A file's size and BLAKE3, reading at most `limit` bytes from `f`.
fn hash_read(f: File, path: &Path, limit: u64) -> Result<(u64, String)> {
    let mut h = blake3::Hasher::new();
    let mut n = 0u64;
    let mut buf = vec![0u8; 64 * 1024];
    let mut r = f.take(limit.saturating_add(1));
    loop {
        let k = r
            .read(&mut buf)
            .with_context(|| format!("reading {}", path.display()))?;
        if k == 0 {
            break;
        }
        n += k as u64;
        h.update(&buf[..k]);
    }
    if n > limit {
        bail!(
            "{} grew past {limit} bytes while it was read",
            path.display()
        );
    }
    Ok((n, h.finalize().to_hex().to_string()))
}

/// A file's content as listed in `e`, or why not (changed since the scan:
/// the next sync sends it). Opened as the scan opens it: from its
/// directory's descriptor, reached from the root without following a
/// symlink, and only if it is a regular file.
pub fn read_listed(root: &Path, e: &Entry, limit: u64) -> Result<Vec<u8>> {
    let path = join(root, &e.path);
    let EntryKind::File { hash, .. } = &e.kind else {
        bail!("{} is not a file", path.display());
    };
    let flags = libc::O_RDONLY | libc::O_NONBLOCK | libc::O_CLOEXEC;
    let fd = if e.path.is_empty() {
        // The root: the operator's own path, followed.
        let c = cstr(root.as_os_str().as_bytes())?;
        // SAFETY: `c` is valid for the call.
        unsafe { libc::open(c.as_ptr(), flags) }
    } else {
        let (dir, name) = parent_of(root, &e.path)?;
        let Some(name) = name else {
            bail!("{} has no name", path.display());
        };
        // SAFETY: `dir` is open and `name` valid for the call.
        unsafe { libc::openat(dir.as_raw_fd(), name.as_ptr(), flags | libc::O_NOFOLLOW) }
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("reading {}", path.display()));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    let f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
    let m = f
        .metadata()
        .with_context(|| format!("reading {}", path.display()))?;
    if !m.file_type().is_file() {
        bail!("{} is not a regular file", path.display());
    }
    let mut data = Vec::new();
    f.take(limit.saturating_add(1))
        .read_to_end(&mut data)
        .with_context(|| format!("reading {}", path.display()))?;
    if data.len() as u64 > limit || blake3::hash(&data).to_hex().as_str() != hash {
        bail!(
            "{} changed while it was synced; the next sync sends it",
            path.display()
        );
    }
    Ok(data)
}

/// Mode bits a receiver sets: never setuid or setgid (owners travel by
/// number, and a number may be another user on another node).
const KEPT_MODE: u32 = 0o1777;

/// The directory that holds `rel` under `root`, opened by walking from
/// the root one component at a time with `O_NOFOLLOW`: a symlink planted
/// (or swapped in) on the way ends the walk, so a write can never land
/// outside the root. Returns it and the last component's name (None for
/// the root itself, whose parent is opened by path: the root is the
/// operator's own configured path).
fn parent_of(root: &Path, rel: &str) -> Result<(OwnedFd, Option<CString>)> {
    if rel.is_empty() {
        let parent = root.parent().context("a synced root has a parent")?;
        let name = root.file_name().context("a synced root has a name")?;
        let fd = open_dir_path(parent)?;
        return Ok((fd, Some(cstr(name.as_bytes())?)));
    }
    let mut fd = open_dir_path(root)?;
    let parts: Vec<&str> = rel.split('/').collect();
    let Some((last, dirs)) = parts.split_last() else {
        bail!("an empty path");
    };
    for d in dirs {
        fd = open_dir_at(&fd, d).with_context(|| {
            format!(
                "{}/{d} is not a directory here (a symlink is never followed)",
                root.display()
            )
        })?;
    }
    Ok((fd, Some(cstr(last.as_bytes())?)))
}

fn cstr(b: &[u8]) -> Result<CString> {
    CString::new(b).context("a name with a NUL byte")
}

fn open_dir_path(p: &Path) -> Result<OwnedFd> {
    let c = cstr(p.as_os_str().as_bytes())?;
    // SAFETY: `c` is a valid NUL-terminated string for the call.
    let fd = unsafe {
        libc::open(
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error())
            .with_context(|| format!("opening {}", p.display()));
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn open_dir_at(dir: &OwnedFd, name: &str) -> std::io::Result<OwnedFd> {
    let c =
        CString::new(name).map_err(|_| std::io::Error::from(std::io::ErrorKind::InvalidInput))?;
    // SAFETY: `dir` is open and `c` valid for the call.
    let fd = unsafe {
        libc::openat(
            dir.as_raw_fd(),
            c.as_ptr(),
            libc::O_RDONLY | libc::O_DIRECTORY | libc::O_NOFOLLOW | libc::O_CLOEXEC,
        )
    };
    if fd < 0 {
        return Err(std::io::Error::last_os_error());
    }
    // SAFETY: `fd` was just opened and is owned by nobody else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn check(rc: libc::c_int, what: impl FnOnce() -> String) -> Result<()> {
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error()).with_context(what)
    }
}

/// `fstatat` of `name` in `dir`, not following a symlink.
fn stat_at(dir: &OwnedFd, name: &CString) -> std::io::Result<libc::stat> {
    // SAFETY: an all-zero `stat` is a valid value to be overwritten.
    let mut st: libc::stat = unsafe { std::mem::zeroed() };
    // SAFETY: `dir` is open, `name` and `st` valid for the call.
    let rc = unsafe {
        libc::fstatat(
            dir.as_raw_fd(),
            name.as_ptr(),
            &mut st,
            libc::AT_SYMLINK_NOFOLLOW,
        )
    };
    if rc == 0 {
        Ok(st)
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn is_dir(st: &libc::stat) -> bool {
    st.st_mode & libc::S_IFMT == libc::S_IFDIR
}

/// Creates directory `e` (its metadata is set later).
pub fn make_dir(root: &Path, e: &Entry) -> Result<()> {
    let path = join(root, &e.path);
    if e.path.is_empty() {
        // The root: the operator's own path, followed.
        return match fs::metadata(root) {
            Ok(m) if m.is_dir() => Ok(()),
            Ok(_) => bail!("{} is in the way of a directory", root.display()),
            Err(_) => fs::create_dir(root).with_context(|| format!("creating {}", root.display())),
        };
    }
    let (dir, name) = parent_of(root, &e.path)?;
    let Some(name) = name else { return Ok(()) };
    match stat_at(&dir, &name) {
        Ok(st) if is_dir(&st) => Ok(()),
        Ok(_) => bail!("{} is in the way of a directory", path.display()),
        Err(_) => {
            // SAFETY: `dir` is open and `name` valid for the call.
            let rc = unsafe { libc::mkdirat(dir.as_raw_fd(), name.as_ptr(), 0o700) };
            check(rc, || format!("creating {}", path.display()))
        }
    }
}

/// Writes file `e` with `data` atomically (a temporary file in the same
/// directory, renamed over the old one), with its mode, owner and mtime;
/// or makes symlink `e` the same way.
pub fn write_entry(root: &Path, e: &Entry, data: &[u8]) -> Result<()> {
    let path = join(root, &e.path);
    let (dir, name) = parent_of(root, &e.path)?;
    let Some(name) = name else {
        bail!("{} has no name", path.display());
    };
    // Short, so that a long name still fits the 255-byte limit.
    let tmp = cstr(format!(".tandem-sync-{:016x}", rand::random::<u64>()).as_bytes())?;
    let d = dir.as_raw_fd();
    match &e.kind {
        EntryKind::File { .. } => {
            // SAFETY: `dir` is open and `tmp` valid for the call.
            let fd = unsafe {
                libc::openat(
                    d,
                    tmp.as_ptr(),
                    libc::O_WRONLY
                        | libc::O_CREAT
                        | libc::O_EXCL
                        | libc::O_NOFOLLOW
                        | libc::O_CLOEXEC,
                    0o600 as libc::c_uint,
                )
            };
            if fd < 0 {
                return Err(std::io::Error::last_os_error()).with_context(|| {
                    format!("creating a temporary file beside {}", path.display())
                });
            }
            // SAFETY: `fd` was just opened and is owned by nobody else.
            let mut f = File::from(unsafe { OwnedFd::from_raw_fd(fd) });
            let done = (|| -> std::io::Result<()> {
                f.write_all(data)?;
                std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid))?;
                f.set_permissions(fs::Permissions::from_mode(e.mode & KEPT_MODE))?;
                set_mtime_fd(&f, e.mtime_ns)?;
                f.sync_all()
            })();
            if let Err(err) = done {
                // SAFETY: `dir` is open and `tmp` valid for the call.
                unsafe { libc::unlinkat(d, tmp.as_ptr(), 0) };
                return Err(err).with_context(|| format!("writing {}", path.display()));
            }
        }
        EntryKind::Symlink { target } => {
            let t = cstr(target.as_bytes())?;
            // SAFETY: `dir` is open, `t` and `tmp` valid for the call.
            let rc = unsafe { libc::symlinkat(t.as_ptr(), d, tmp.as_ptr()) };
            check(rc, || {
                format!("creating a symlink beside {}", path.display())
            })?;
            // SAFETY: as above; the link itself is changed, never its target.
            let rc =
                unsafe { libc::fchownat(d, tmp.as_ptr(), e.uid, e.gid, libc::AT_SYMLINK_NOFOLLOW) };
            if let Err(err) = check(rc, || format!("chown of the symlink {}", path.display())) {
                // SAFETY: as above.
                unsafe { libc::unlinkat(d, tmp.as_ptr(), 0) };
                return Err(err);
            }
        }
        EntryKind::Dir => bail!("{} is a directory, not written", path.display()),
    }
    // SAFETY: `dir` is open, both names valid for the call.
    let rc = unsafe { libc::renameat(d, tmp.as_ptr(), d, name.as_ptr()) };
    if let Err(err) = check(rc, || format!("replacing {}", path.display())) {
        // SAFETY: as above.
        unsafe { libc::unlinkat(d, tmp.as_ptr(), 0) };
        return Err(err);
    }
    // The rename is durable once the directory is.
    let _ = File::from(dir).sync_all();
    Ok(())
}

/// Removes `rel` (a file, a symlink or an empty directory).
pub fn remove(root: &Path, rel: &str) -> Result<()> {
    let path = join(root, rel);
    let (dir, name) = parent_of(root, rel)?;
    let Some(name) = name else { return Ok(()) };
    let st = match stat_at(&dir, &name) {
        Ok(st) => st,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
        Err(e) => return Err(e).with_context(|| format!("{}", path.display())),
    };
    let flags = if is_dir(&st) { libc::AT_REMOVEDIR } else { 0 };
    // SAFETY: `dir` is open and `name` valid for the call.
    let rc = unsafe { libc::unlinkat(dir.as_raw_fd(), name.as_ptr(), flags) };
    check(rc, || format!("removing {}", path.display()))
}

/// Sets `e`'s mode, owner and mtime (a directory's, or a file's whose
/// content was already the same), on what is there only if it is a
/// directory or a regular file, opened without following a symlink.
pub fn set_meta(root: &Path, e: &Entry) -> Result<()> {
    if matches!(e.kind, EntryKind::Symlink { .. }) {
        return Ok(());
    }
    let path = join(root, &e.path);
    let f = if e.path.is_empty() {
        // The root: the operator's own path, followed.
        OpenOptions::new()
            .read(true)
            .custom_flags(libc::O_NONBLOCK)
            .open(root)
            .with_context(|| format!("opening {}", root.display()))?
    } else {
        let (dir, name) = parent_of(root, &e.path)?;
        let Some(name) = name else { return Ok(()) };
        // SAFETY: `dir` is open and `name` valid for the call.
        let fd = unsafe {
            libc::openat(
                dir.as_raw_fd(),
                name.as_ptr(),
                libc::O_RDONLY | libc::O_NOFOLLOW | libc::O_NONBLOCK | libc::O_CLOEXEC,
            )
        };
        if fd < 0 {
            return Err(std::io::Error::last_os_error())
                .with_context(|| format!("opening {}", path.display()));
        }
        // SAFETY: `fd` was just opened and is owned by nobody else.
        File::from(unsafe { OwnedFd::from_raw_fd(fd) })
    };
    let m = f
        .metadata()
        .with_context(|| format!("{}", path.display()))?;
    let fits = match e.kind {
        EntryKind::Dir => m.file_type().is_dir(),
        _ => m.file_type().is_file(),
    };
    if !fits {
        bail!(
            "{} is not what the source has there; the next sync replaces it",
            path.display()
        );
    }
    std::os::unix::fs::fchown(&f, Some(e.uid), Some(e.gid))
        .with_context(|| format!("chown {}", path.display()))?;
    f.set_permissions(fs::Permissions::from_mode(e.mode & KEPT_MODE))
        .with_context(|| format!("chmod {}", path.display()))?;
    set_mtime_fd(&f, e.mtime_ns).with_context(|| format!("setting the mtime of {}", path.display()))
}

fn set_mtime_fd(f: &File, mtime_ns: i64) -> std::io::Result<()> {
    let t = libc::timespec {
        tv_sec: mtime_ns.div_euclid(1_000_000_000),
        tv_nsec: mtime_ns.rem_euclid(1_000_000_000),
    };
    let times = [t, t];
    // SAFETY: the descriptor is open for the call, `times` outlives it.
    let rc = unsafe { libc::futimens(f.as_raw_fd(), times.as_ptr()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::MetadataExt;
    use tandem_core::filesync::plan;

    fn apply(src_root: &Path, dst_root: &Path) -> Vec<String> {
        let src = scan(&[src_root.to_path_buf()], 1 << 20);
        let local = scan(&[dst_root.to_path_buf()], 1 << 20);
        let p = plan(&src.manifest, &local.manifest.entries, 1);
        let mut problems = p.refused.clone();
        for r in &p.remove {
            if let Err(e) = remove(dst_root, &r.1) {
                problems.push(format!("{e:#}"));
            }
        }
        for &i in &p.mkdir {
            make_dir(dst_root, &src.manifest.entries[i]).unwrap();
        }
        for &i in &p.fetch {
            let e = &src.manifest.entries[i];
            let data = match e.kind {
                EntryKind::File { .. } => read_listed(src_root, e, 1 << 20).unwrap(),
                _ => vec![],
            };
            write_entry(dst_root, e, &data).unwrap();
        }
        for &i in &p.set_meta {
            set_meta(dst_root, &src.manifest.entries[i]).unwrap();
        }
        problems
    }

    #[test]
    fn a_tree_is_copied_with_mode_and_mtime_and_extra_files_removed() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir_all(a.join("sub")).unwrap();
        fs::write(a.join("one.conf"), b"one").unwrap();
        fs::write(a.join("sub/two"), b"two").unwrap();
        fs::set_permissions(a.join("sub/two"), fs::Permissions::from_mode(0o640)).unwrap();
        fs::write(a.join("suid"), b"#!/bin/sh\n").unwrap();
        fs::set_permissions(a.join("suid"), fs::Permissions::from_mode(0o4755)).unwrap();
        std::os::unix::fs::symlink("one.conf", a.join("link")).unwrap();
        fs::create_dir_all(b.join("stale/deeper")).unwrap();
        fs::write(b.join("stale/deeper/x"), b"x").unwrap();
        fs::write(b.join("one.conf"), b"old").unwrap();
        let problems = apply(&a, &b);
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(fs::read(b.join("one.conf")).unwrap(), b"one");
        assert_eq!(fs::read(b.join("sub/two")).unwrap(), b"two");
        assert_eq!(
            fs::read_link(b.join("link")).unwrap(),
            PathBuf::from("one.conf")
        );
        assert!(!b.join("stale").exists());
        let (ma, mb) = (
            fs::metadata(a.join("sub/two")).unwrap(),
            fs::metadata(b.join("sub/two")).unwrap(),
        );
        assert_eq!(mb.mode() & 0o7777, 0o640);
        assert_eq!(
            fs::metadata(b.join("suid")).unwrap().mode() & 0o7777,
            0o755,
            "setuid is never copied"
        );
        assert_eq!((ma.mtime(), ma.mtime_nsec()), (mb.mtime(), mb.mtime_nsec()));
        let (da, db) = (
            fs::metadata(a.join("sub")).unwrap(),
            fs::metadata(b.join("sub")).unwrap(),
        );
        assert_eq!(
            (da.mtime(), da.mtime_nsec()),
            (db.mtime(), db.mtime_nsec()),
            "directory mtime set last"
        );
        // In step now: a second pass has nothing to do.
        let src = scan(std::slice::from_ref(&a), 1 << 20);
        let dst = scan(std::slice::from_ref(&b), 1 << 20);
        assert_eq!(
            plan(&src.manifest, &dst.manifest.entries, 1),
            Default::default(),
            "{:?}\n{:?}",
            src.manifest.entries[0],
            dst.manifest.entries[0]
        );
    }

    #[test]
    fn a_symlink_under_a_root_never_sends_a_write_elsewhere() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        fs::create_dir_all(&root).unwrap();
        fs::create_dir_all(&outside).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("evil")).unwrap();
        let e = Entry {
            root: 0,
            path: "evil/planted".into(),
            kind: EntryKind::File {
                size: 1,
                hash: blake3::hash(b"x").to_hex().to_string(),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns: 0,
        };
        let err = write_entry(&root, &e, b"x").unwrap_err();
        assert!(format!("{err:#}").contains("never followed"), "{err:#}");
        assert!(!outside.join("planted").exists());
        fs::write(outside.join("x"), b"keep").unwrap();
        assert!(remove(&root, "evil/x").is_err());
        assert!(outside.join("x").exists());
        // Nor a chown or chmod (the hostile review's escalation: a
        // directory swapped for a symlink to `/`, then `set_meta`).
        let before = fs::metadata(&outside).unwrap().mode();
        let dir = Entry {
            path: "evil/x".into(),
            kind: EntryKind::Dir,
            mode: 0o777,
            ..e.clone()
        };
        assert!(set_meta(&root, &dir).is_err());
        assert!(set_meta(
            &root,
            &Entry {
                path: "evil".into(),
                ..dir
            }
        )
        .is_err());
        assert_eq!(fs::metadata(&outside).unwrap().mode(), before);
        // A FIFO never blocks a scan or a read.
        let fifo = root.join("fifo");
        let c = CString::new(fifo.as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        let as_file = Entry {
            path: "fifo".into(),
            ..e.clone()
        };
        assert!(read_listed(&root, &as_file, 1024).is_err());
        let s = scan(std::slice::from_ref(&root), 1024);
        assert!(
            s.manifest.keep.contains(&(0, "fifo".to_string())),
            "{:?}",
            s.manifest.keep
        );
    }

    #[test]
    fn a_missing_root_or_a_large_file_is_kept_not_emptied() {
        let t = tempfile::tempdir().unwrap();
        let big = t.path().join("big");
        fs::create_dir_all(&big).unwrap();
        fs::write(big.join("large"), vec![0u8; 2048]).unwrap();
        let s = scan(&[t.path().join("nothing"), big.clone()], 1024);
        assert_eq!(
            s.manifest.keep,
            vec![(0, String::new()), (1, "large".to_string())]
        );
        assert_eq!(s.problems.len(), 2, "{:?}", s.problems);
    }

    /// Regression (hostile review of issue 17): the source's read went by
    /// path, so a directory under a root swapped for a symlink after the
    /// scan led the agent to read (and send) the file behind the symlink.
    #[test]
    fn a_listed_file_is_never_read_through_a_directory_swapped_for_a_symlink() {
        let t = tempfile::tempdir().unwrap();
        let (root, outside) = (t.path().join("root"), t.path().join("outside"));
        fs::create_dir_all(root.join("d")).unwrap();
        fs::create_dir_all(&outside).unwrap();
        fs::write(root.join("d/f"), b"same").unwrap();
        fs::write(outside.join("f"), b"same").unwrap();
        let s = scan(std::slice::from_ref(&root), 1024);
        let e = s
            .manifest
            .entries
            .iter()
            .find(|e| e.path == "d/f")
            .unwrap()
            .clone();
        assert_eq!(read_listed(&root, &e, 1024).unwrap(), b"same");
        fs::rename(root.join("d"), t.path().join("moved")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("d")).unwrap();
        // Even with the same content (so that the hash check cannot be
        // what refuses it), the file behind the symlink is not read.
        let err = read_listed(&root, &e, 1024).unwrap_err();
        assert!(format!("{err:#}").contains("never followed"), "{err:#}");
    }

    /// The scan's half of the same race: what was listed is opened only
    /// if it is still the same inode; a directory swapped (for a symlink,
    /// another directory, or a FIFO) between the listing and the open is
    /// refused, and nothing blocks.
    #[test]
    fn what_is_swapped_between_listing_and_opening_is_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("root");
        fs::create_dir_all(root.join("d")).unwrap();
        fs::create_dir_all(t.path().join("outside")).unwrap();
        fs::write(root.join("f"), b"x").unwrap();
        let rootfd = open_dir_path(&root).unwrap();
        let name = |n: &str| CString::new(n).unwrap();
        let listed_d = stat_at(&rootfd, &name("d")).unwrap();
        let listed_f = stat_at(&rootfd, &name("f")).unwrap();
        // Unchanged: opened.
        assert!(open_listed(&At::In(&rootfd, name("d")), &root, &listed_d).is_ok());
        // d swapped for a symlink to a directory outside.
        fs::rename(root.join("d"), t.path().join("d-moved")).unwrap();
        std::os::unix::fs::symlink(t.path().join("outside"), root.join("d")).unwrap();
        assert!(open_listed(&At::In(&rootfd, name("d")), &root, &listed_d).is_err());
        // d swapped for another real directory.
        fs::remove_file(root.join("d")).unwrap();
        fs::create_dir(root.join("d")).unwrap();
        let err = open_listed(&At::In(&rootfd, name("d")), &root, &listed_d).unwrap_err();
        assert!(
            err.to_string().contains("changed while it was scanned"),
            "{err}"
        );
        // f swapped for a FIFO: refused at once, never a blocked scan.
        fs::remove_file(root.join("f")).unwrap();
        let c = CString::new(root.join("f").as_os_str().as_bytes()).unwrap();
        // SAFETY: a valid path for the call.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        assert!(open_listed(&At::In(&rootfd, name("f")), &root, &listed_f).is_err());
    }
}
