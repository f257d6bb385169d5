//! Freezing every process of a node: one cgroup per node, under cgroup v1's
//! freezer controller or cgroup v2's `cgroup.freeze`, whichever the host has.
//! A frozen process gets no CPU and cannot notice it is frozen — exactly the
//! "node stalled for seconds, then resumes" fault.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};
use std::thread::sleep;
use std::time::{Duration, Instant};

/// How long a freeze or thaw may take before it is reported as failed.
const SETTLE_LIMIT: Duration = Duration::from_secs(5);

/// Which cgroup interface freezes processes on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Flavor {
    /// cgroup v1: `<root>/<name>/freezer.state` takes FROZEN / THAWED.
    V1 {
        /// Mount point of the freezer hierarchy.
        root: PathBuf,
    },
    /// cgroup v2: `<root>/<name>/cgroup.freeze` takes 1 / 0.
    V2 {
        /// Mount point of the unified hierarchy.
        root: PathBuf,
    },
}

impl Flavor {
    /// Finds the freezer from `/proc/mounts`: v1 freezer first, else v2.
    pub fn detect() -> io::Result<Flavor> {
        let mounts = fs::read_to_string("/proc/mounts")?;
        let mut v2 = None;
        for line in mounts.lines() {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 4 {
                continue;
            }
            if f[2] == "cgroup" && f[3].split(',').any(|o| o == "freezer") {
                return Ok(Flavor::V1 {
                    root: PathBuf::from(f[1]),
                });
            }
            if f[2] == "cgroup2" && v2.is_none() {
                v2 = Some(PathBuf::from(f[1]));
            }
        }
        v2.map(|root| Flavor::V2 { root }).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::NotFound,
                "no cgroup freezer: neither a v1 freezer nor a cgroup2 mount in /proc/mounts",
            )
        })
    }

    /// The directory holding the testbed's cgroups.
    pub fn root(&self) -> &Path {
        match self {
            Flavor::V1 { root } | Flavor::V2 { root } => root,
        }
    }
}

/// One node's cgroup.
#[derive(Debug, Clone)]
pub struct NodeCgroup {
    flavor: Flavor,
    dir: PathBuf,
}

impl NodeCgroup {
    /// Creates (or reuses) the cgroup `name`.
    pub fn create(flavor: &Flavor, name: &str) -> io::Result<NodeCgroup> {
        let dir = flavor.root().join(name);
        match fs::create_dir(&dir) {
            Ok(()) => {}
            Err(e) if e.kind() == io::ErrorKind::AlreadyExists => {}
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("creating cgroup {}: {e}", dir.display()),
                ))
            }
        }
        Ok(NodeCgroup {
            flavor: flavor.clone(),
            dir,
        })
    }

    /// Every existing cgroup whose name starts with `prefix`.
    pub fn with_prefix(flavor: &Flavor, prefix: &str) -> Vec<NodeCgroup> {
        fs::read_dir(flavor.root())
            .map(|rd| {
                rd.flatten()
                    .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
                    .map(|e| NodeCgroup {
                        flavor: flavor.clone(),
                        dir: e.path(),
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The `cgroup.procs` file: writing a PID (or 0 for "myself") moves it in.
    pub fn procs_file(&self) -> PathBuf {
        self.dir.join("cgroup.procs")
    }

    /// PIDs in the cgroup.
    pub fn pids(&self) -> Vec<i32> {
        fs::read_to_string(self.procs_file())
            .unwrap_or_default()
            .lines()
            .filter_map(|l| l.trim().parse().ok())
            .collect()
    }

    /// Freezes every process in the cgroup and waits until it is frozen.
    pub fn freeze(&self) -> io::Result<()> {
        self.set(true)
    }

    /// Thaws the cgroup and waits until it runs again.
    pub fn thaw(&self) -> io::Result<()> {
        self.set(false)
    }

    /// True when the cgroup is frozen.
    pub fn is_frozen(&self) -> io::Result<bool> {
        match &self.flavor {
            Flavor::V1 { .. } => {
                Ok(fs::read_to_string(self.dir.join("freezer.state"))?.trim() == "FROZEN")
            }
            Flavor::V2 { .. } => Ok(fs::read_to_string(self.dir.join("cgroup.events"))?
                .lines()
                .any(|l| l.trim() == "frozen 1")),
        }
    }

    fn set(&self, frozen: bool) -> io::Result<()> {
        match &self.flavor {
            Flavor::V1 { .. } => fs::write(
                self.dir.join("freezer.state"),
                if frozen { "FROZEN" } else { "THAWED" },
            )?,
            Flavor::V2 { .. } => fs::write(
                self.dir.join("cgroup.freeze"),
                if frozen { "1" } else { "0" },
            )?,
        }
        let start = Instant::now();
        while self.is_frozen()? != frozen {
            if start.elapsed() > SETTLE_LIMIT {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    format!(
                        "cgroup {} did not {} within {SETTLE_LIMIT:?}",
                        self.dir.display(),
                        if frozen { "freeze" } else { "thaw" }
                    ),
                ));
            }
            sleep(Duration::from_millis(2));
        }
        Ok(())
    }

    /// Thaws, then removes the cgroup, retrying briefly while its last tasks
    /// finish exiting. Its processes must have been killed already.
    pub fn remove(&self) -> io::Result<()> {
        let _ = self.thaw();
        let start = Instant::now();
        loop {
            match fs::remove_dir(&self.dir) {
                Ok(()) => return Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(()),
                Err(e) if start.elapsed() > SETTLE_LIMIT => {
                    return Err(io::Error::new(
                        e.kind(),
                        format!("removing cgroup {}: {e}", self.dir.display()),
                    ))
                }
                Err(_) => sleep(Duration::from_millis(10)),
            }
        }
    }

    /// The cgroup's directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}
