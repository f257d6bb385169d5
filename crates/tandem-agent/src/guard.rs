//! The lease guard: a small process beside the agent (`tandem guard`, in
//! its own session) that stops this node's resources when the agent can no
//! longer do it — killed with -9, crashed, or stuck — by the time its lease
//! ends. Without it, a dead agent would leave its floating addresses in the
//! kernel and its services running while the cluster starts them elsewhere.
//!
//! The agent writes the lease file (`<state>/run/lease.json`) whenever its
//! lease or the set of resources that may run here changes: the lease end
//! on `CLOCK_MONOTONIC` (shared by every process of the machine, and moving
//! on while a process is frozen), the boot id, and what to stop. The guard
//! polls it; once the lease end has passed and resources are still listed,
//! it removes the addresses and kills the process groups (SIGKILL: the
//! lease is over, there is no time for a graceful stop), then runs the
//! stop commands listed (a script's `stop`). A live agent stops its groups itself at the lease end,
//! so the guard only acts when it did not.
//!
//! A restarted agent reads the file first: while the previous agent's
//! lease still runs (same boot), it may keep what it finds running without
//! restarting it, until it holds a lease of its own.

use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use crate::netlink;

/// How often a script's `stop` run by the guard is checked for its end.
const POLL: Duration = Duration::from_millis(10);
/// Longest the guard sleeps without reading the lease file again (a safety
/// net: it wakes on the lease end, a new lease file while it holds nothing,
/// and the agent's exit).
const MAX_WAIT_MS: u64 = 5_000;
/// Largest lease file read.
const MAX_FILE: u64 = 1 << 20;
/// Longest a script's `stop` may run when the guard calls it.
const SCRIPT_STOP_LIMIT: Duration = Duration::from_secs(20);

/// What the agent hands the guard.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct LeaseFile {
    /// The agent that wrote it.
    pub agent_pid: u32,
    /// `/proc/sys/kernel/random/boot_id`: monotonic times are per boot.
    pub boot_id: String,
    /// End of the lease, CLOCK_MONOTONIC ms (0: none).
    pub until_mono_ms: u64,
    /// Floating addresses that may be configured here: (address, prefix).
    #[serde(default)]
    pub addresses: Vec<(IpAddr, u8)>,
    /// Pid files of processes that may run here.
    #[serde(default)]
    pub pidfiles: Vec<PathBuf>,
    /// Commands that stop resources that may run here (a script's `stop`).
    #[serde(default)]
    pub stop_commands: Vec<StopCommand>,
    /// Scripts, as agents before `stop_commands` wrote them: read (a new
    /// agent may take over from an old one), turned into stop commands by
    /// [`read`], never written.
    #[serde(default, skip_serializing)]
    pub scripts: Vec<(PathBuf, Vec<(String, String)>)>,
    /// Groups being stopped because the record moved them away, each with
    /// its own end (see `Member::group_until`).
    #[serde(default)]
    pub leaving: Vec<Leaving>,
}

/// What may still run of one group the record moved away, and until when.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leaving {
    /// End, CLOCK_MONOTONIC ms.
    pub until_mono_ms: u64,
    /// Its floating addresses: (address, prefix).
    #[serde(default)]
    pub addresses: Vec<(IpAddr, u8)>,
    /// Its processes' pid files.
    #[serde(default)]
    pub pidfiles: Vec<PathBuf>,
    /// Commands that stop its resources.
    #[serde(default)]
    pub stop_commands: Vec<StopCommand>,
    /// Scripts, as older agents wrote them (see [`LeaseFile::scripts`]).
    #[serde(default, skip_serializing)]
    pub scripts: Vec<(PathBuf, Vec<(String, String)>)>,
}

/// A command that stops a resource the agent can no longer stop itself:
/// any kind whose stop is a program to run (a script, a unit manager, a
/// resource agent) hands one to the guard, with no change here.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct StopCommand {
    /// The program.
    pub program: PathBuf,
    /// Its arguments (`["stop"]` for a script).
    pub args: Vec<String>,
    /// Its environment.
    pub env: Vec<(String, String)>,
    /// Run before every other stop command of the lease, whatever group
    /// it belongs to (cutting a dead agent's data path: what stops above
    /// it would otherwise wait for it).
    #[serde(default)]
    pub first: bool,
}

impl Leaving {
    /// The same, as a lease file of its own (for [`enforce`]).
    pub fn as_lease(&self) -> LeaseFile {
        LeaseFile {
            until_mono_ms: self.until_mono_ms,
            addresses: self.addresses.clone(),
            pidfiles: self.pidfiles.clone(),
            stop_commands: self.stop_commands.clone(),
            ..LeaseFile::default()
        }
    }
}

impl LeaseFile {
    /// Whether anything is listed.
    pub fn holds_anything(&self) -> bool {
        !(self.addresses.is_empty()
            && self.pidfiles.is_empty()
            && self.stop_commands.is_empty()
            && self.leaving.is_empty())
    }

    /// The earliest end of anything listed (None: nothing listed).
    fn next_end(&self) -> Option<u64> {
        let main = (!(self.addresses.is_empty()
            && self.pidfiles.is_empty()
            && self.stop_commands.is_empty()))
        .then_some(self.until_mono_ms);
        main.into_iter()
            .chain(self.leaving.iter().map(|l| l.until_mono_ms))
            .min()
    }
}

/// CLOCK_MONOTONIC in ms.
pub fn mono_ms() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: ts is a valid timespec; CLOCK_MONOTONIC always exists.
    unsafe {
        libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts);
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// This boot's id (read once per process: it cannot change under it).
pub fn boot_id() -> String {
    static BOOT_ID: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    BOOT_ID
        .get_or_init(|| {
            std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
                .map(|s| s.trim().to_string())
                .unwrap_or_default()
        })
        .clone()
}

/// Reads a lease file (None: absent or unreadable).
pub fn read(path: &Path) -> Option<LeaseFile> {
    let f = std::fs::File::open(path).ok()?;
    let mut bytes = Vec::new();
    std::io::Read::read_to_end(&mut std::io::Read::take(f, MAX_FILE), &mut bytes).ok()?;
    let mut lease: LeaseFile = serde_json::from_slice(&bytes).ok()?;
    lease.upgrade();
    Some(lease)
}

/// A script's `stop`, as a stop command.
fn script_stop((program, env): (PathBuf, Vec<(String, String)>)) -> StopCommand {
    StopCommand {
        program,
        args: vec!["stop".into()],
        env,
        first: false,
    }
}

impl LeaseFile {
    /// Turns what an older agent wrote as `scripts` into stop commands.
    fn upgrade(&mut self) {
        let old = std::mem::take(&mut self.scripts);
        self.stop_commands.extend(old.into_iter().map(script_stop));
        for l in &mut self.leaving {
            let old = std::mem::take(&mut l.scripts);
            l.stop_commands.extend(old.into_iter().map(script_stop));
        }
    }
}

/// Writes a lease file atomically (temporary file, rename; mode 0600). No
/// fsync: the file matters to processes of this boot only.
pub fn write(path: &Path, lease: &LeaseFile) -> Result<()> {
    let bytes = serde_json::to_vec(lease).context("encoding the lease file")?;
    crate::atomic_file::replace(path, &bytes, crate::atomic_file::Durability::ThisBoot)
}

/// Whether process `pid` still runs: it exists and is not a zombie (an
/// agent that exited but was not reaped yet, as under a parent that waits
/// late, is gone: `kill(pid, 0)` alone still finds it).
fn alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks existence and permission.
    if pid == 0 || unsafe { libc::kill(pid as i32, 0) } != 0 {
        return false;
    }
    !matches!(
        crate::child::proc_stat(pid as i32),
        Some((_, 'Z' | 'X')) | None
    )
}

/// Stops everything a lease file lists; returns what it did.
pub fn enforce(lease: &LeaseFile) -> Vec<String> {
    let mut did = Vec::new();
    if let Ok(addrs) = netlink::addresses() {
        for (ip, prefix) in &lease.addresses {
            for a in addrs.iter().filter(|a| a.ip == *ip) {
                if netlink::delete_address(a.ip, *prefix, a.index).unwrap_or(false) {
                    did.push(format!("removed {ip}/{prefix}"));
                }
            }
        }
    }
    for p in &lease.pidfiles {
        let Some((pid, start)) = crate::child::read_pidfile(p) else {
            continue;
        };
        // The same process the agent started, not a stranger that got its
        // PID after it exited: PID *and* start time must match.
        let same = matches!(
            crate::child::proc_stat(pid),
            Some((s, st)) if s == start && st != 'Z' && st != 'X'
        );
        if pid > 1 && same {
            // SAFETY: kill(2) on the process group the resource leads.
            if unsafe { libc::kill(-pid, libc::SIGKILL) } == 0 {
                did.push(format!("killed process group {pid} ({})", p.display()));
            }
        }
    }
    did
}

/// Runs a lease's stop commands, each bounded; what each did (for the
/// kinds' tests of what their guard commands do).
#[cfg(test)]
pub(crate) fn run_stop_commands(lease: &LeaseFile) -> Vec<String> {
    let mut did = stop_commands(marked_first(std::slice::from_ref(lease)));
    did.extend(stop_commands(not_first(lease)));
    did
}

/// The stop commands of every one of `leases` marked first.
fn marked_first(leases: &[LeaseFile]) -> impl Iterator<Item = &StopCommand> {
    leases
        .iter()
        .flat_map(|l| l.stop_commands.iter().filter(|c| c.first))
}

/// The other stop commands of `lease`, in the order listed (stop order
/// within a group).
fn not_first(lease: &LeaseFile) -> impl Iterator<Item = &StopCommand> {
    lease.stop_commands.iter().filter(|c| !c.first)
}

/// Runs `commands` one after another, each bounded; what each did.
fn stop_commands<'a>(commands: impl Iterator<Item = &'a StopCommand>) -> Vec<String> {
    use std::os::unix::process::CommandExt as _;
    let mut did = Vec::new();
    for c in commands {
        let mut cmd = std::process::Command::new(&c.program);
        // A group of its own: a stop that times out is killed with
        // whatever it started (a `sh -c`'s fuser, an agent's pg_ctl), so
        // nothing of it runs on after the guard lets the agent start.
        cmd.args(&c.args)
            .process_group(0)
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        for (k, v) in &c.env {
            cmd.env(k, v);
        }
        let what = std::iter::once(c.program.display().to_string())
            .chain(c.args.iter().cloned())
            .collect::<Vec<_>>()
            .join(" ");
        let Ok(mut child) = cmd.spawn() else { continue };
        let t0 = std::time::Instant::now();
        loop {
            match child.try_wait() {
                Ok(Some(st)) => {
                    did.push(format!("{what}: {st}"));
                    break;
                }
                Ok(None) if t0.elapsed() < SCRIPT_STOP_LIMIT => std::thread::sleep(POLL),
                _ => {
                    if let Ok(pgid) = i32::try_from(child.id()) {
                        // SAFETY: kill(2) of the process group this
                        // function created (its leader is our child, not
                        // yet reaped, so the id is not reused).
                        unsafe {
                            libc::kill(-pgid, libc::SIGKILL);
                        }
                    }
                    let _ = child.kill();
                    let _ = child.wait();
                    did.push(format!("{what}: timed out"));
                    break;
                }
            }
        }
    }
    did
}

/// The lock the guard holds while it enforces an ended lease (beside the
/// lease file): nothing starts on the agent's side while it is held, so that a
/// stop the guard runs never lands after the agent's start of the same
/// resource (at an agent's start, the guard stops what the previous one
/// may have run while the new one already holds a lease).
pub fn lock_path(lease_path: &Path) -> PathBuf {
    lease_path.with_extension("guard-lock")
}

/// Holds the guard's lock until dropped (None: it could not be taken;
/// the guard acts anyway: a lease must never outlive its end). It waits
/// while another guard (of an agent that replaced this one's) holds it:
/// at most that guard's stops, each bounded by [`SCRIPT_STOP_LIMIT`].
fn hold_lock(lock: &Path) -> Option<std::fs::File> {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let f = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .mode(0o600)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(lock)
        .ok()?;
    // SAFETY: flock on a descriptor this function owns.
    (unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_EX) } == 0).then_some(f)
}

/// Whether the guard holds its lock now (it is enforcing an ended lease).
pub fn busy(lock: &Path) -> bool {
    use std::os::fd::AsRawFd as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let Ok(f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_CLOEXEC | libc::O_NOFOLLOW)
        .open(lock)
    else {
        return false;
    };
    // SAFETY: flock on a descriptor this function owns; closing it drops
    // the shared lock taken.
    let r = unsafe { libc::flock(f.as_raw_fd(), libc::LOCK_SH | libc::LOCK_NB) };
    r != 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::EWOULDBLOCK)
}

/// What the guard waits on between readings of the lease file: the lease
/// file's directory (inotify: a new file while nothing is held) and the
/// agent's exit (a pidfd). Either may be missing (old kernels): the guard
/// then falls back to waking every few milliseconds.
struct Waker {
    inotify: Option<std::os::fd::OwnedFd>,
    pidfd: Option<std::os::fd::OwnedFd>,
}

impl Waker {
    fn new(path: &Path, agent_pid: u32) -> Waker {
        use std::os::fd::FromRawFd;
        use std::os::unix::ffi::OsStrExt;
        let dir = path.parent().unwrap_or(Path::new("."));
        let inotify = (|| {
            // SAFETY: plain syscalls; the fd is owned from here on.
            let fd = unsafe { libc::inotify_init1(libc::IN_NONBLOCK | libc::IN_CLOEXEC) };
            if fd < 0 {
                return None;
            }
            // SAFETY: a new descriptor that nothing else owns or closes.
            let owned = unsafe { std::os::fd::OwnedFd::from_raw_fd(fd) };
            let cdir = std::ffi::CString::new(dir.as_os_str().as_bytes()).ok()?;
            let mask = libc::IN_MOVED_TO | libc::IN_CLOSE_WRITE | libc::IN_CREATE | libc::IN_DELETE;
            // SAFETY: valid fd and NUL-terminated path.
            let wd = unsafe { libc::inotify_add_watch(fd, cdir.as_ptr(), mask) };
            (wd >= 0).then_some(owned)
        })();
        // SAFETY: pidfd_open(2) returns a new fd or -1.
        let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, agent_pid as libc::c_int, 0) };
        let pidfd = (fd >= 0).then(|| {
            // SAFETY: a new descriptor that nothing else owns or closes.
            unsafe { std::os::fd::OwnedFd::from_raw_fd(fd as i32) }
        });
        Waker { inotify, pidfd }
    }

    /// Sleeps up to `ms`, or until the agent exits, or (with `files`)
    /// until the lease file's directory changes. Once the agent has exited
    /// (its pidfd readable), it wakes every 10 ms until the guard is done.
    fn wait(&mut self, ms: u64, files: bool) {
        use std::os::fd::AsRawFd;
        let mut fds: Vec<libc::pollfd> = Vec::new();
        if let Some(p) = &self.pidfd {
            fds.push(libc::pollfd {
                fd: p.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        if let (true, Some(i)) = (files, &self.inotify) {
            fds.push(libc::pollfd {
                fd: i.as_raw_fd(),
                events: libc::POLLIN,
                revents: 0,
            });
        }
        let fallback = self.inotify.is_none() || self.pidfd.is_none();
        let ms = if fallback { ms.min(10) } else { ms };
        // SAFETY: `fds` is a valid array of pollfd for its length.
        unsafe {
            libc::poll(
                fds.as_mut_ptr(),
                fds.len() as libc::nfds_t,
                ms as libc::c_int,
            );
        }
        if fds.first().is_some_and(|f| f.revents != 0) && self.pidfd.is_some() {
            // The agent exited: from now on, wait on time and files only.
            self.pidfd = None;
        }
        self.drain();
    }

    /// Reads and forgets queued directory events (the file is read anyway).
    fn drain(&self) {
        use std::os::fd::AsRawFd;
        let Some(i) = &self.inotify else { return };
        let mut buf = [0u8; 4096];
        for _ in 0..64 {
            // SAFETY: reading into a local buffer of its length.
            let n = unsafe { libc::read(i.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
            if n <= 0 {
                break;
            }
        }
    }
}

/// How long the guard may sleep before it must look again: until the lease
/// end while something is held (then it must act), else the safety net.
/// Pure, so the absence of a busy loop is tested without a clock.
fn sleep_ms(lease: Option<&LeaseFile>, now_mono_ms: u64) -> (u64, bool) {
    match lease.and_then(LeaseFile::next_end) {
        Some(end) => (end.saturating_sub(now_mono_ms).clamp(1, MAX_WAIT_MS), false),
        // Nothing held: a new lease file is what to wake for.
        _ => (MAX_WAIT_MS, true),
    }
}

/// `tandem guard`: watches `path` for the agent `agent_pid` until that
/// agent is gone and nothing is held, or another live agent took over.
/// It sleeps until the lease end (renewals do not wake it: it reads the
/// file again then), until a new lease file appears while nothing is held,
/// or until the agent exits.
pub fn run(path: &Path, agent_pid: u32, label: &str) -> Result<()> {
    let boot = boot_id();
    let say = |s: &str| {
        crate::logging::emit(
            crate::logging::Program::Guard,
            crate::logging::Severity::Warn,
            label,
            "guard",
            s,
        )
    };
    let mut waker = Waker::new(path, agent_pid);
    let mut first = true;
    // A lease already enforced whose cleared version could not be written
    // (a full state directory): acting on it again would kill what the
    // agent restarts, every few milliseconds. Wait for the file to change
    // or the agent to exit instead.
    let mut enforced: Option<LeaseFile> = None;
    loop {
        if !first {
            let lease = read(path);
            let (ms, files) = if lease.is_some() && lease == enforced {
                (MAX_WAIT_MS, true)
            } else {
                sleep_ms(lease.as_ref(), mono_ms())
            };
            waker.wait(ms, files);
        }
        first = false;
        let Some(lease) = read(path) else {
            if !alive(agent_pid) {
                return Ok(());
            }
            continue;
        };
        if lease.agent_pid != agent_pid && alive(lease.agent_pid) {
            // A newer agent with a guard of its own.
            return Ok(());
        }
        if lease.boot_id != boot {
            return Ok(());
        }
        if enforced.as_ref() == Some(&lease) {
            if !alive(agent_pid) {
                return Ok(());
            }
            continue;
        }
        enforced = None;
        let now = mono_ms();
        let expired = now >= lease.until_mono_ms;
        let mut due: Vec<LeaseFile> = lease
            .leaving
            .iter()
            .filter(|l| now >= l.until_mono_ms)
            .map(Leaving::as_lease)
            .collect();
        if expired {
            due.push(LeaseFile {
                leaving: Vec::new(),
                ..lease.clone()
            });
        }
        if due.iter().any(LeaseFile::holds_anything) {
            let held = hold_lock(&lock_path(path));
            // While we waited for the lock, another guard may have
            // enforced this and the agent written a new file: decide again
            // on what it says now, not on a stale copy.
            if read(path).as_ref() != Some(&lease) {
                drop(held);
                continue;
            }
            let mut did = Vec::new();
            // The commands marked first, of every due entry (a group being
            // moved away and the node's lease alike), before anything else.
            did.extend(stop_commands(marked_first(&due)));
            for d in &due {
                did.extend(enforce(d));
                did.extend(stop_commands(not_first(d)));
            }
            let cleared = LeaseFile {
                addresses: if expired {
                    Vec::new()
                } else {
                    lease.addresses.clone()
                },
                pidfiles: if expired {
                    Vec::new()
                } else {
                    lease.pidfiles.clone()
                },
                stop_commands: if expired {
                    Vec::new()
                } else {
                    lease.stop_commands.clone()
                },
                leaving: lease
                    .leaving
                    .iter()
                    .filter(|l| now < l.until_mono_ms)
                    .cloned()
                    .collect(),
                ..lease.clone()
            };
            // Only clear what we enforced if the agent did not rewrite it.
            if read(path).as_ref() == Some(&lease) {
                if let Err(e) = write(path, &cleared) {
                    say(&format!(
                        "cannot update the lease file ({e:#}); not acting on it again until it changes"
                    ));
                    enforced = Some(lease.clone());
                }
            }
            if !did.is_empty() {
                say(&format!(
                    "the agent's lease ended with resources still here ({}): {}",
                    if alive(lease.agent_pid) {
                        "agent stuck"
                    } else {
                        "agent gone"
                    },
                    did.join("; ")
                ));
            }
        }
        if !alive(agent_pid) && !lease.holds_anything() {
            return Ok(());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lease_file_round_trips_and_tells_what_it_holds() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("lease.json");
        assert_eq!(read(&p), None);
        let l = LeaseFile {
            agent_pid: 1,
            boot_id: boot_id(),
            until_mono_ms: mono_ms() + 200,
            addresses: vec![("10.0.0.1".parse().unwrap(), 24)],
            ..LeaseFile::default()
        };
        write(&p, &l).unwrap();
        assert_eq!(read(&p), Some(l.clone()));
        assert!(l.holds_anything());
        assert!(!LeaseFile::default().holds_anything());
    }

    #[test]
    fn enforce_kills_the_listed_process_group() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        crate::child::own_session(&mut cmd);
        let mut child = cmd.spawn().unwrap();
        let pidfile = dir.path().join("g.r.pid");
        let pid = child.id() as i32;
        let start = crate::child::proc_stat(pid).unwrap().0;
        std::fs::write(&pidfile, format!("{pid} {start}\n")).unwrap();
        let did = enforce(&LeaseFile {
            pidfiles: vec![pidfile],
            ..LeaseFile::default()
        });
        assert_eq!(did.len(), 1, "{did:?}");
        let st = child.wait().unwrap();
        assert!(!st.success());
    }

    /// Regression (issue "keep the promises", defect 1): the guard read
    /// its lease file every 10 ms whatever it held. It sleeps until the
    /// lease end while it holds something, and otherwise until a new file
    /// (or the safety net); never a zero wait.
    #[test]
    fn guard_sleeps_until_the_lease_end_not_in_a_poll_loop() {
        let held = LeaseFile {
            until_mono_ms: 10_200,
            addresses: vec![("10.0.0.1".parse().unwrap(), 24)],
            ..LeaseFile::default()
        };
        assert_eq!(sleep_ms(Some(&held), 10_000), (200, false));
        // Past the end (it acts, then looks again soon): never zero.
        assert_eq!(sleep_ms(Some(&held), 20_000), (1, false));
        let empty = LeaseFile::default();
        assert_eq!(sleep_ms(Some(&empty), 10_000), (MAX_WAIT_MS, true));
        assert_eq!(sleep_ms(None, 10_000), (MAX_WAIT_MS, true));
        // Over a simulated minute of renewals every 50 ms (lease 200 ms),
        // the guard wakes once per lease at most, not 100 times a second.
        let mut now = 0u64;
        let mut wakes = 0;
        while now < 60_000 {
            let renewed = LeaseFile {
                until_mono_ms: (now / 50) * 50 + 200,
                ..held.clone()
            };
            now += sleep_ms(Some(&renewed), now).0;
            wakes += 1;
        }
        assert!(wakes <= 60_000 / 150, "{wakes} wake-ups in a minute");
    }

    /// A group being stopped after a move has its own end, earlier than
    /// the node's lease: the guard wakes for it (found in review: a stop
    /// that outlived what the leader waits for).
    #[test]
    fn the_guard_wakes_for_the_earliest_end_of_a_leaving_group() {
        let l = LeaseFile {
            until_mono_ms: 10_500,
            addresses: vec![("10.0.0.1".parse().unwrap(), 24)],
            leaving: vec![Leaving {
                until_mono_ms: 10_120,
                pidfiles: vec!["/nonexistent/g.r.pid".into()],
                ..Leaving::default()
            }],
            ..LeaseFile::default()
        };
        assert_eq!(sleep_ms(Some(&l), 10_000), (120, false));
        // Only a leaving group: its end.
        let only = LeaseFile {
            addresses: vec![],
            ..l.clone()
        };
        assert!(only.holds_anything());
        assert_eq!(sleep_ms(Some(&only), 10_000), (120, false));
        assert_eq!(only.leaving[0].as_lease().pidfiles.len(), 1);
    }

    /// A guard run on `lease` (written to `path`, already ended, this boot)
    /// for an "agent" that stays alive while the guard acts, so that it
    /// reads as stuck: the agent to kill and the guard to join.
    fn guard_on_an_ended_lease(
        path: &Path,
        lease: LeaseFile,
    ) -> (std::process::Child, std::thread::JoinHandle<Result<()>>) {
        let agent = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let lease = LeaseFile {
            agent_pid: agent.id(),
            boot_id: boot_id(),
            until_mono_ms: 1,
            ..lease
        };
        write(path, &lease).unwrap();
        let (path, pid) = (path.to_path_buf(), agent.id());
        (agent, std::thread::spawn(move || run(&path, pid, "test")))
    }

    /// Regression (bench web, a restarted node): at an agent's start the
    /// guard ran the stops of an ended lease (apache's took a second)
    /// while the agent, already holding a new lease, started the group:
    /// the guard's IPaddr2 stop removed the address the agent had just
    /// added. The guard now holds its lock while it enforces, and the
    /// agent starts nothing while the lock is held.
    #[test]
    fn the_guard_holds_its_lock_while_it_runs_the_stops_of_an_ended_lease() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease.json");
        let lock = lock_path(&path);
        assert!(!busy(&lock), "no lock file: not busy");
        let marker = dir.path().join("stopped");
        let (mut agent, guard) = guard_on_an_ended_lease(
            &path,
            LeaseFile {
                stop_commands: vec![StopCommand {
                    program: "sh".into(),
                    args: vec![
                        "-c".into(),
                        format!("sleep 0.5; touch {}", marker.display()),
                    ],
                    env: vec![],
                    first: false,
                }],
                ..LeaseFile::default()
            },
        );
        let t0 = std::time::Instant::now();
        while !busy(&lock) {
            assert!(
                t0.elapsed() < Duration::from_secs(5),
                "the guard never took its lock"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!marker.exists(), "busy while its stop still runs");
        while busy(&lock) {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the guard kept its lock"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(
            marker.exists(),
            "the lock is released only after the stop ran"
        );
        agent.kill().unwrap();
        agent.wait().unwrap();
        guard.join().unwrap().unwrap();
    }

    /// Found in review: a command marked first (a volume's cut) ran first
    /// only within its own entry, so a group being moved away had its
    /// stops run before the node's lease's cut. It now runs before every
    /// due entry's stops.
    #[test]
    fn commands_marked_first_run_before_every_due_entrys_stops() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease.json");
        let order = dir.path().join("order");
        let say = |word: &str, first: bool| StopCommand {
            program: "sh".into(),
            args: vec!["-c".into(), format!("echo {word} >> {}", order.display())],
            env: vec![],
            first,
        };
        let (mut agent, guard) = guard_on_an_ended_lease(
            &path,
            LeaseFile {
                stop_commands: vec![say("db", false), say("cut", true)],
                leaving: vec![Leaving {
                    until_mono_ms: 1,
                    stop_commands: vec![say("moved", false)],
                    ..Leaving::default()
                }],
                ..LeaseFile::default()
            },
        );
        let t0 = std::time::Instant::now();
        while std::fs::read_to_string(&order).map_or(0, |o| o.lines().count()) < 3 {
            assert!(
                t0.elapsed() < Duration::from_secs(10),
                "the guard ran too little"
            );
            std::thread::sleep(Duration::from_millis(10));
        }
        agent.kill().unwrap();
        agent.wait().unwrap();
        guard.join().unwrap().unwrap();
        let ran = std::fs::read_to_string(&order).unwrap();
        assert_eq!(ran.lines().next(), Some("cut"), "{ran}");
    }

    /// An agent that exited but was not reaped yet (a zombie) is gone: the
    /// guard once waited for it forever (and held the agent's stderr open).
    #[test]
    fn a_zombie_agent_counts_as_gone() {
        let mut child = std::process::Command::new("true").spawn().unwrap();
        let pid = child.id();
        // Not reaped yet: a zombie once it has exited.
        let t0 = std::time::Instant::now();
        while crate::child::proc_stat(pid as i32).is_some_and(|(_, s)| s != 'Z') {
            assert!(t0.elapsed() < Duration::from_secs(5));
            std::thread::sleep(Duration::from_millis(5));
        }
        assert!(!alive(pid));
        assert!(alive(std::process::id()));
        child.wait().unwrap();
    }

    /// Regression (issue "keep the promises", defect 9): the guard killed
    /// `-pid` from a pid file without checking the start time, so a
    /// stranger that reused the PID of a resource that had exited was
    /// killed at the lease end.
    #[test]
    fn enforce_spares_a_process_that_reused_the_pid() {
        let dir = tempfile::tempdir().unwrap();
        let mut cmd = std::process::Command::new("sleep");
        cmd.arg("30");
        crate::child::own_session(&mut cmd);
        let mut stranger = cmd.spawn().unwrap();
        let pid = stranger.id() as i32;
        let start = crate::child::proc_stat(pid).unwrap().0;
        // The resource that wrote this pid file started at another time.
        let pidfile = dir.path().join("g.r.pid");
        std::fs::write(&pidfile, format!("{pid} {}\n", start + 1)).unwrap();
        let did = enforce(&LeaseFile {
            pidfiles: vec![pidfile],
            ..LeaseFile::default()
        });
        assert!(did.is_empty(), "{did:?}");
        assert!(
            stranger.try_wait().unwrap().is_none(),
            "the stranger was killed"
        );
        let _ = stranger.kill();
        let _ = stranger.wait();
    }

    /// An agent that takes over from an older one (binary replaced, then
    /// a crash) reads its lease file: the scripts it listed become stop
    /// commands, so the new agent inherits the lease instead of stopping
    /// what runs.
    #[test]
    fn a_lease_file_from_an_agent_before_stop_commands_is_read() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("lease.json");
        std::fs::write(
            &path,
            r#"{"agent_pid":1,"boot_id":"b","until_mono_ms":5,"addresses":[],"pidfiles":[],
               "scripts":[["/etc/init.d/web",[["TANDEM_GROUP","g"]]]],
               "leaving":[{"until_mono_ms":3,"addresses":[],"pidfiles":[],"scripts":[["/s",[]]]}]}"#,
        )
        .unwrap();
        let lease = read(&path).expect("an older lease file reads");
        assert_eq!(lease.stop_commands.len(), 1);
        assert_eq!(lease.stop_commands[0].args, vec!["stop".to_string()]);
        assert_eq!(
            lease.leaving[0].stop_commands[0].program,
            PathBuf::from("/s")
        );
        assert!(lease.scripts.is_empty());
        // Written again, only the new form.
        let text = serde_json::to_string(&lease).unwrap();
        assert!(!text.contains("\"scripts\""), "{text}");
    }
}
