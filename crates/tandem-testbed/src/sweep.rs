//! Run ids, their lock files, and removal of runs, live or crashed.
//!
//! A run holds an exclusive `flock` on `/run/tandem-testbed/<id>.lock` for its
//! whole life. The lock dies with the process, however it dies, so a run whose
//! lock can be taken (or whose lock file is gone) is a leftover. Only names
//! starting with [`crate::PREFIX`] are ever touched.

use std::collections::BTreeSet;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rand::Rng;

use crate::freezer::{Flavor, NodeCgroup};
use crate::sys::{netns_path, run};
use crate::PREFIX;

/// Where the lock files live.
pub const LOCK_DIR: &str = "/run/tandem-testbed";
/// How long killing a run's processes may take before tear-down gives up.
const KILL_LIMIT: Duration = Duration::from_secs(5);

fn lock_path(id: &str) -> PathBuf {
    Path::new(LOCK_DIR).join(format!("{id}.lock"))
}

fn try_flock(f: &File) -> bool {
    // SAFETY: valid fd; LOCK_NB never blocks.
    unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) == 0 }
}

/// Creates `<id>.lock` already holding its `flock`: a private temporary file
/// is locked first, then hard-linked into place (atomic, never overwrites).
/// A sweeper therefore never sees the lock file of a live run unlocked.
/// Returns None when `<id>.lock` exists already.
fn create_locked(id: &str) -> io::Result<Option<File>> {
    let tmp = Path::new(LOCK_DIR).join(format!(
        ".{id}.{}.{:08x}.tmp",
        std::process::id(),
        rand::thread_rng().gen::<u32>()
    ));
    let f = OpenOptions::new().write(true).create_new(true).open(&tmp)?;
    let locked = try_flock(&f); // a fresh private file: nobody else holds it
    let linked = if locked {
        fs::hard_link(&tmp, lock_path(id))
    } else {
        Ok(())
    };
    let _ = fs::remove_file(&tmp);
    match linked {
        Ok(()) if locked => Ok(Some(f)),
        Ok(()) => Ok(None),
        Err(e) if e.kind() == io::ErrorKind::AlreadyExists => Ok(None),
        Err(e) => Err(e),
    }
}

/// Picks a fresh run id and takes its lock; the file must stay open for the
/// life of the run.
pub fn new_run() -> Result<(String, File)> {
    fs::create_dir_all(LOCK_DIR).with_context(|| format!("creating {LOCK_DIR}"))?;
    for _ in 0..16 {
        let id = format!("{:06x}", rand::thread_rng().gen_range(0..0x100_0000u32));
        if let Some(mut f) = create_locked(&id).context("creating a testbed lock file")? {
            let _ = writeln!(f, "{}", std::process::id());
            return Ok((id, f));
        }
    }
    anyhow::bail!("no free testbed run id after 16 tries; run `tandem-testbed sweep`")
}

/// True when no live process holds run `id`'s lock (a look only: nothing
/// is claimed).
pub fn is_stale(id: &str) -> bool {
    match File::open(lock_path(id)) {
        Ok(f) => try_flock(&f), // released when `f` drops
        Err(_) => true,
    }
}

/// Takes run `id`'s lock when its owner is gone, so that exactly one sweeper
/// removes it; None while a live process (or another sweeper) holds it.
fn claim_stale(id: &str) -> io::Result<Option<File>> {
    match File::open(lock_path(id)) {
        Ok(f) => Ok(try_flock(&f).then_some(f)),
        // Leftovers without a lock file: claim them by creating it.
        Err(e) if e.kind() == io::ErrorKind::NotFound => create_locked(id),
        Err(e) => Err(e),
    }
}

/// Ids of every run that left something on this host: namespaces, cgroups
/// or lock files.
pub fn known_runs() -> BTreeSet<String> {
    let mut ids = BTreeSet::new();
    let mut scan = |dir: &Path, suffix: &str| {
        if let Ok(rd) = fs::read_dir(dir) {
            for e in rd.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if let Some(rest) = name.strip_prefix(PREFIX) {
                    if let Some(id) = rest.split('-').next() {
                        ids.insert(id.to_string());
                    }
                } else if !suffix.is_empty() {
                    if let Some(id) = name.strip_suffix(suffix) {
                        ids.insert(id.to_string());
                    }
                }
            }
        }
    };
    scan(Path::new("/run/netns"), "");
    if let Ok(f) = Flavor::detect() {
        scan(f.root(), "");
    }
    scan(Path::new(LOCK_DIR), ".lock");
    ids.retain(|id| id.len() == 6 && id.chars().all(|c| c.is_ascii_hexdigit()));
    ids
}

/// Removes every run whose owner is gone. Returns the ids removed.
pub fn sweep() -> Result<Vec<String>> {
    let mut removed = Vec::new();
    for id in known_runs() {
        let claim = claim_stale(&id).with_context(|| format!("checking testbed run {id}"))?;
        if let Some(_held) = claim {
            // The lock is held until the run is gone; remove_run unlinks it.
            remove_run(&id).with_context(|| format!("removing leftover testbed run {id}"))?;
            removed.push(id);
        }
    }
    Ok(removed)
}

/// Names of run `id`'s namespaces that exist now.
fn run_namespaces(id: &str) -> Vec<String> {
    let prefix = format!("{PREFIX}{id}-");
    fs::read_dir("/run/netns")
        .map(|rd| {
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.starts_with(&prefix))
                .collect()
        })
        .unwrap_or_default()
}

/// PIDs whose network namespace is one of `inodes`.
fn pids_in_namespaces(inodes: &BTreeSet<u64>) -> Vec<i32> {
    let mut pids = Vec::new();
    let Ok(rd) = fs::read_dir("/proc") else {
        return pids;
    };
    for e in rd.flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else {
            continue;
        };
        if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) {
            if inodes.contains(&m.ino()) {
                pids.push(pid);
            }
        }
    }
    pids
}

/// Kills every process of run `id` (by PID: those in its cgroups and those in
/// its namespaces), then removes its cgroups, namespaces and lock file.
pub fn remove_run(id: &str) -> Result<()> {
    let prefix = format!("{PREFIX}{id}-");
    let namespaces = run_namespaces(id);
    let inodes: BTreeSet<u64> = namespaces
        .iter()
        .filter_map(|n| fs::metadata(netns_path(n)).ok().map(|m| m.ino()))
        .collect();
    let cgroups = Flavor::detect()
        .map(|f| NodeCgroup::with_prefix(&f, &prefix))
        .unwrap_or_default();
    // Frozen processes only die once thawed.
    for cg in &cgroups {
        let _ = cg.thaw();
    }
    let me = std::process::id() as i32;
    let start = Instant::now();
    loop {
        let mut pids: BTreeSet<i32> = pids_in_namespaces(&inodes).into_iter().collect();
        for cg in &cgroups {
            pids.extend(cg.pids());
        }
        pids.remove(&me);
        if pids.is_empty() {
            break;
        }
        if start.elapsed() > KILL_LIMIT {
            anyhow::bail!(
                "processes {pids:?} of testbed run {id} survived SIGKILL for {KILL_LIMIT:?}"
            );
        }
        for pid in &pids {
            // SAFETY: plain syscall on a PID found in this run's namespaces.
            unsafe { libc::kill(*pid, libc::SIGKILL) };
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    for cg in &cgroups {
        cg.remove().context("removing a cgroup of the run")?;
    }
    for ns in &namespaces {
        run("ip", &["netns", "del", ns]).with_context(|| format!("deleting namespace {ns}"))?;
    }
    match fs::remove_file(lock_path(id)) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e).context("removing the lock file"),
        _ => Ok(()),
    }
}
