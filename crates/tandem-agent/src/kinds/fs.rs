//! `fs`: the agent's side of a filesystem. Start: check it (`fsck -a`)
//! if asked, then `mount`. Stop: `umount`; while the mount is busy, the
//! processes holding it (open files, working or root directory, mapped
//! files under it) get SIGTERM, then SIGKILL, bounded and logged, as
//! Filesystem's `force_unmount` does. Probe: the kernel's mount table,
//! read with the core's rule ([`tandem_core::kinds::fs::mounted`]); the
//! check also writes and removes a file there (not on a read-only mount).
//!
//! On a replicated volume, the filesystem's device is the volume's NBD
//! export on this node, attached without the kernel's `nbd` module (which
//! not every kernel has): `nbdfuse` shows the export as a file, and a loop
//! device over that file is what gets mounted. Stop undoes it in reverse.
//! The loop device's name is kept in the run directory, so that a
//! restarted agent (and the guard) finds it. `nbdfuse` reaches the export
//! through `nbdkit`'s `retry` filter, so that the filesystem outlives a
//! restart of the agent: its requests wait (about a second) for the
//! restarted agent instead of failing (see [`RETRY_DELAY_S`]).

use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _};
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use tandem_core::group::{ActionKind, Bar, Outcome};
use tandem_core::kinds::fs::{mounted, Fs, Mounted, Source};

use super::{Act, Bind, BindError, Driver, Resource};
use crate::child::{run_bounded, Owner};
use crate::guard::{Leaving, StopCommand};

/// Most processes signalled in one stop.
const MAX_HOLDERS: usize = 1024;
/// Holders get SIGKILL this long after SIGTERM (at most a third of the
/// stop's limit).
const HOLDERS_TERM_MS: u64 = 2_000;

/// The guard's unmount: `$1` the mount point, `$2` the device's
/// `major:minor`. Holders are killed (`fuser -M`: only on a mount point)
/// and the mount point unmounted only while that device is mounted there.
/// (The directory is absolute, so it cannot read as an option; `fuser`
/// takes no `--`.)
const GUARD_UNMOUNT: &str = r#"[ "$(findmnt -n -o MAJ:MIN --mountpoint "$1" | tr -d ' ' | grep -x -- "$2")" = "$2" ] || exit 0
fuser -k -M -m "$1"
umount -- "$1""#;

/// Longest wait for `nbdfuse` to show the export.
const ATTACH_WAIT_MS: u64 = 10_000;

/// Between `nbdfuse` and the agent's export sits `nbdkit`'s `nbd` plugin
/// with its `retry` filter: when the agent dies (its export with it), a
/// request that fails is not passed up to the loop device and the
/// filesystem (ext4 would abort its journal) but retried on a new
/// connection, every [`RETRY_DELAY_S`] (nbdkit's smallest step), at most
/// [`RETRIES`] times. A restarted agent promotes its copy again and the
/// request goes through; writes and flushes are idempotent, so repeating
/// one that the dead agent may have half done is safe. If no agent comes
/// back, the guard ends the wait first (see [`GUARD_CUT`]).
const RETRY_DELAY_S: u32 = 1;
/// See [`RETRY_DELAY_S`]: the longest a request waits for a restarted
/// agent is about this many seconds.
const RETRIES: u32 = 30;

/// The guard's first step for a group with a filesystem on a volume,
/// before it stops anything (`$1`: `nbdfuse`'s pid file, `$2`: the mount
/// point, `$3`: the device's `major:minor`, empty when not attached). The
/// agent is gone and its lease has ended; the volume died with it, so
/// whatever still holds the filesystem can neither write to the cluster's
/// copy nor stop cleanly: its writes wait for the dead agent. So the
/// holders are killed at once (only while this device is what is mounted
/// there), then `nbdfuse` and its `nbdkit` (a session of their own, led
/// by `nbdfuse`), so that the requests still waiting fail now: a
/// database stopping above would otherwise wait for them past the lease
/// (still running when the other node starts), and one replayed later
/// onto a copy promoted here again could overwrite newer data. The
/// services' own stop commands run after it, then the unmount.
const GUARD_CUT: &str = r#"if [ -n "$3" ] && [ "$(findmnt -n -o MAJ:MIN --mountpoint "$2" | tr -d ' ' | grep -x -- "$3")" = "$3" ]; then
  fuser -k -M -m "$2"
fi
pid=$(cat -- "$1" 2>/dev/null) || exit 0
case "$pid" in ''|*[!0-9]*) exit 0 ;; esac
[ "$(cat "/proc/$pid/comm" 2>/dev/null)" = nbdfuse ] || exit 0
kill -s KILL -- "-$pid" 2>/dev/null || kill -s KILL -- "$pid""#;

/// A filesystem on this node.
#[derive(Debug, Clone)]
pub struct FsDriver {
    spec: Fs,
    /// A write check is still under way (a hung device): the next check
    /// fails at once instead of leaving one more thread blocked.
    writing: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The volume's NBD socket here (for `volume = ...`; None otherwise,
    /// or when this node holds no copy of it).
    nbd_socket: Option<PathBuf>,
}

/// The agent's side of an `fs` resource.
pub fn bind(p: &Fs, cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
    let nbd_socket = match &p.source {
        Source::Volume(v) => cx.hub.and_then(|h| h.nbd_socket(v)),
        Source::Device(_) => None,
    };
    Ok(Box::new(FsDriver {
        spec: p.clone(),
        writing: std::sync::Arc::default(),
        nbd_socket,
    }))
}

/// Where an attached volume's pieces are, in the run directory.
struct Attach {
    /// The FUSE mount point of `nbdfuse`, holding the file `nbd`.
    fuse_dir: PathBuf,
    /// `nbdfuse`'s pid file.
    pidfile: PathBuf,
    /// The file naming the loop device.
    loop_file: PathBuf,
}

impl Attach {
    fn of(owner: &Owner) -> Attach {
        Attach {
            fuse_dir: owner.file("fuse"),
            pidfile: owner.file("nbdfuse.pid"),
            loop_file: owner.file("loop"),
        }
    }

    /// The loop device recorded, if it is still ours: its backing file is
    /// this resource's FUSE file (a name left from before a reboot may
    /// since have been given to another loop device).
    fn loop_dev(&self) -> Option<PathBuf> {
        let text = std::fs::read_to_string(&self.loop_file).ok()?;
        let dev = PathBuf::from(text.trim());
        let name = dev.strip_prefix("/dev/").ok()?.to_str()?.to_string();
        if !name.starts_with("loop") || name.contains('/') {
            return None;
        }
        let backing = std::fs::read_to_string(format!("/sys/block/{name}/loop/backing_file")).ok()?;
        (Path::new(backing.trim()) == self.fuse_dir.join("nbd")).then_some(dev)
    }
}

impl FsDriver {
    /// The device to mount: the configured one, or the loop device over
    /// the attached volume (None: not attached).
    fn device(&self, owner: &Owner) -> Option<PathBuf> {
        match &self.spec.source {
            Source::Device(d) => Some(d.clone()),
            Source::Volume(_) => Attach::of(owner).loop_dev(),
        }
    }

    /// The device's number, or why this node cannot mount it.
    fn devno(&self, owner: &Owner) -> Result<(u32, u32), String> {
        let Some(dev) = self.device(owner) else {
            return Err("the volume is not attached here".into());
        };
        let dev = dev.as_path();
        let md = std::fs::metadata(dev).map_err(|e| format!("{}: {e}", dev.display()))?;
        if !md.file_type().is_block_device() {
            return Err(format!("{} is not a block device", dev.display()));
        }
        let rdev = md.rdev();
        Ok((libc::major(rdev), libc::minor(rdev)))
    }

    fn state(&self, devno: (u32, u32)) -> Result<Mounted, String> {
        let table = std::fs::read_to_string("/proc/self/mountinfo")
            .map_err(|e| format!("reading /proc/self/mountinfo: {e}"))?;
        Ok(mounted(&table, &self.spec.directory, devno))
    }

    async fn act(&self, r: &Resource, action: ActionKind) -> Outcome {
        let dir = &self.spec.directory;
        let mut devno = self.devno(&r.owner);
        if let (Source::Volume(v), Err(_)) = (&self.spec.source, &devno) {
            match action {
                ActionKind::Start => {
                    if let Err(why) = self.attach(r, v).await {
                        if let Err(left) = self.detach(r).await {
                            r.note(format!("undoing the failed attach: {left}"));
                        }
                        return Outcome::Failed(why);
                    }
                    devno = self.devno(&r.owner);
                }
                // Not attached: what is left of an attach goes (a probe
                // leaves it).
                ActionKind::Stop => {
                    return match self.detach(r).await {
                        Ok(()) => Outcome::Stopped,
                        Err(why) => Outcome::Failed(why),
                    };
                }
                ActionKind::Probe => {}
            }
        }
        let devno = match devno {
            Ok(d) => d,
            // What is not here is not mounted here; starting it here
            // cannot work (another node may have the device).
            Err(why) => {
                return match action {
                    ActionKind::Probe | ActionKind::Stop => Outcome::Stopped,
                    ActionKind::Start => Outcome::Barred { bar: Bar::Node, why },
                }
            }
        };
        let state = match self.state(devno) {
            Ok(s) => s,
            Err(e) => return Outcome::Failed(e),
        };
        let limit = Duration::from_millis(r.timeout_ms);
        match (action, state) {
            (ActionKind::Probe, Mounted::Yes) | (ActionKind::Start, Mounted::Yes) => {
                Outcome::Running
            }
            // Mounted, at another place: it may be in use, so it counts as
            // running, and neither a start nor a stop here can settle it.
            (ActionKind::Probe, Mounted::Elsewhere(_)) => Outcome::Running,
            (ActionKind::Start | ActionKind::Stop, Mounted::Elsewhere(at)) => Outcome::Failed(format!(
                "{} is mounted at {at}, not at {}: unmount it by hand",
                self.device(&r.owner).map_or_else(String::new, |d| d.display().to_string()),
                dir.display()
            )),
            (ActionKind::Probe, _) | (ActionKind::Stop, Mounted::No | Mounted::Other(_)) => {
                Outcome::Stopped
            }
            (ActionKind::Start, Mounted::Other(src)) => Outcome::Failed(format!(
                "{} is already mounted from {src}: unmount it first",
                dir.display()
            )),
            (ActionKind::Start, Mounted::No) => self.mount(r, limit).await,
            (ActionKind::Stop, Mounted::Yes) => match self.unmount(r, devno, limit).await {
                Outcome::Stopped => match self.detach(r).await {
                    Ok(()) => Outcome::Stopped,
                    Err(why) => Outcome::Failed(why),
                },
                other => other,
            },
        }
    }

    /// Attaches volume `v`'s export here: `nbdfuse` (in a session of its
    /// own, so that it outlives a restart of the agent), then a loop
    /// device over its file.
    async fn attach(&self, r: &Resource, v: &str) -> Result<(), String> {
        let Some(socket) = &self.nbd_socket else {
            return Err(format!("volume `{v}` has no copy on this node"));
        };
        let a = Attach::of(&r.owner);
        std::fs::create_dir_all(&a.fuse_dir)
            .map_err(|e| format!("creating {}: {e}", a.fuse_dir.display()))?;
        let _ = std::fs::remove_file(&a.pidfile);
        let mut cmd = tokio::process::Command::new("nbdfuse");
        cmd.arg("-P")
            .arg(&a.pidfile)
            .arg(&a.fuse_dir)
            .args(["[", "nbdkit", "--exit-with-parent", "--filter=retry", "nbd"])
            .arg(format!("socket={}", socket.display()))
            .arg(format!("retries={RETRIES}"))
            .arg(format!("retry-delay={RETRY_DELAY_S}"))
            .args(["retry-exponential=no", "]"])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null());
        crate::child::own_session(cmd.as_std_mut());
        let mut child = cmd
            .spawn()
            .map_err(|e| format!("cannot run nbdfuse (package libnbd-bin): {e}"))?;
        let file = a.fuse_dir.join("nbd");
        let t0 = Instant::now();
        while !a.pidfile.exists() {
            if let Ok(Some(status)) = child.try_wait() {
                return Err(format!(
                    "nbdfuse exited ({status}) before showing volume `{v}` from {} (it runs nbdkit's nbd plugin: package nbdkit)",
                    socket.display()
                ));
            }
            if t0.elapsed() > Duration::from_millis(ATTACH_WAIT_MS) {
                return Err(format!("nbdfuse did not show volume `{v}` within {ATTACH_WAIT_MS} ms"));
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let limit = Duration::from_millis(r.timeout_ms);
        let file_s = file.to_string_lossy().into_owned();
        let dev = match run_bounded(
            Path::new("losetup"),
            &["--find", "--show", &file_s],
            Some(&r.owner),
            None,
            limit,
        )
        .await
        {
            Ok((Some(0), dev)) if dev.starts_with("/dev/") => dev,
            Ok((code, said)) => return Err(format!("losetup --find {file_s} exited {code:?}: {said}")),
            Err(e) => return Err(e.to_string()),
        };
        std::fs::write(&a.loop_file, format!("{dev}\n"))
            .map_err(|e| format!("writing {}: {e}", a.loop_file.display()))?;
        Ok(())
    }

    /// Undoes [`FsDriver::attach`]: the loop device, then the FUSE mount
    /// (whose `nbdfuse` then exits); each step only if it is there.
    async fn detach(&self, r: &Resource) -> Result<(), String> {
        if !matches!(self.spec.source, Source::Volume(_)) {
            return Ok(());
        }
        let a = Attach::of(&r.owner);
        let limit = Duration::from_millis(r.timeout_ms);
        if let Some(dev) = a.loop_dev() {
            let dev_s = dev.to_string_lossy().into_owned();
            if dev.exists() {
                match run_bounded(Path::new("losetup"), &["-d", &dev_s], Some(&r.owner), None, limit).await {
                    Ok((Some(0), _)) => {}
                    Ok((code, said)) => return Err(format!("losetup -d {dev_s} exited {code:?}: {said}")),
                    Err(e) => return Err(e.to_string()),
                }
            }
            let _ = std::fs::remove_file(&a.loop_file);
        }
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
        let fuse = a.fuse_dir.to_string_lossy().into_owned();
        if table.lines().any(|l| l.split(' ').nth(4) == Some(fuse.as_str())) {
            match run_bounded(Path::new("fusermount3"), &["-u", &fuse], Some(&r.owner), None, limit).await {
                Ok((Some(0), _)) => {}
                Ok((code, said)) => return Err(format!("fusermount3 -u {fuse} exited {code:?}: {said}")),
                Err(e) => return Err(e.to_string()),
            }
        }
        let _ = std::fs::remove_file(&a.pidfile);
        Ok(())
    }

    async fn mount(&self, r: &Resource, limit: Duration) -> Outcome {
        let dir = &self.spec.directory;
        let Some(dev) = self.device(&r.owner) else {
            return Outcome::Failed("the volume is not attached here".into());
        };
        let dev = dev.to_string_lossy().into_owned();
        if let Err(e) = std::fs::create_dir_all(dir) {
            return Outcome::Failed(format!("creating {}: {e}", dir.display()));
        }
        if self.spec.fsck {
            let fsck = Path::new("fsck");
            // 0 clean, 1 errors corrected: mountable; more is not.
            match run_bounded(fsck, &["-a", "-t", &self.spec.fstype, &dev], Some(&r.owner), None, limit).await {
                Ok((Some(0), _)) => {}
                Ok((Some(1), _)) => r.note(format!("fsck corrected errors on {dev}")),
                Ok((code, said)) => {
                    return Outcome::Failed(format!(
                        "fsck -a {dev} exited {}: {said}; check it by hand before mounting",
                        code.map_or("by a signal".into(), |c| c.to_string())
                    ))
                }
                Err(e) => return Outcome::Failed(e.to_string()),
            }
        }
        let dir_s = dir.to_string_lossy().into_owned();
        let mut args = vec!["-t", self.spec.fstype.as_str()];
        if !self.spec.options.is_empty() {
            args.extend(["-o", self.spec.options.as_str()]);
        }
        args.extend([dev.as_str(), dir_s.as_str()]);
        match run_bounded(Path::new("mount"), &args, Some(&r.owner), None, limit).await {
            Ok((Some(0), _)) => Outcome::Running,
            Ok((code, said)) => Outcome::Failed(format!(
                "mount {dev} {dir_s} exited {}: {said}",
                code.map_or("by a signal".into(), |c| c.to_string())
            )),
            Err(e) => Outcome::Failed(e.to_string()),
        }
    }

    async fn unmount(&self, r: &Resource, devno: (u32, u32), limit: Duration) -> Outcome {
        let dir = &self.spec.directory;
        let dir_s = dir.to_string_lossy().into_owned();
        let t0 = Instant::now();
        let term_ms = HOLDERS_TERM_MS.min(r.timeout_ms / 3);
        let mut signalled = 0;
        for round in 0..3 {
            let left = limit.saturating_sub(t0.elapsed());
            // Done only when the device is mounted nowhere (an umount may
            // have taken off something mounted over it).
            let result = run_bounded(Path::new("umount"), &[&dir_s], Some(&r.owner), None, left).await;
            match self.state(devno) {
                Ok(Mounted::No | Mounted::Other(_)) => return Outcome::Stopped,
                Ok(Mounted::Elsewhere(at)) => {
                    return Outcome::Failed(format!("the device is still mounted at {at}"))
                }
                Ok(Mounted::Yes) => {}
                Err(e) => return Outcome::Failed(e),
            }
            if let Err(e) = result {
                return Outcome::Failed(e.to_string());
            }
            // Busy: its holders go, TERM first, then KILL.
            let signal = if round == 0 { libc::SIGTERM } else { libc::SIGKILL };
            let pids = holders(devno);
            if pids.is_empty() && round > 0 {
                break;
            }
            for pid in &pids {
                // SAFETY: kill(2) of a process found holding the mount.
                unsafe { libc::kill(*pid, signal) };
            }
            signalled += pids.len();
            if !pids.is_empty() {
                r.note(format!(
                    "{} held {dir_s}: sent {} to {}",
                    pids.len(),
                    if signal == libc::SIGTERM { "SIGTERM" } else { "SIGKILL" },
                    pids.iter().map(i32::to_string).collect::<Vec<_>>().join(" ")
                ));
            }
            let wait = Duration::from_millis(if round == 0 { term_ms } else { 200 });
            let until = Instant::now() + wait;
            while Instant::now() < until && pids.iter().any(|p| holders_alive(*p)) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
        Outcome::Failed(format!(
            "{dir_s} stays busy after signalling {signalled} holder(s)"
        ))
    }

    /// Mounted where expected, and (unless read-only) writable.
    async fn check(&self, r: &Resource) -> Outcome {
        let o = self.act(r, ActionKind::Probe).await;
        if o != Outcome::Running || self.spec.read_only() {
            return o;
        }
        // A name no one can guess, created only if absent and never
        // through a link: the directory may be writable by local users,
        // and a planted `.tandem-check-PID` symlink would otherwise have
        // root write to (and delete) whatever it names.
        let probe = self.spec.directory.join(format!(
            ".tandem-check-{}-{:016x}",
            std::process::id(),
            rand::random::<u64>()
        ));
        // In a thread: a write to a dead device can block for ever, and
        // the caller's bound must still hold. One at a time.
        use std::sync::atomic::Ordering;
        if self.writing.swap(true, Ordering::SeqCst) {
            return Outcome::Failed(format!(
                "the previous write check on {} has not finished: the device hangs",
                self.spec.directory.display()
            ));
        }
        let writing = self.writing.clone();
        let written = tokio::task::spawn_blocking(move || {
            let r = write_new(&probe).and_then(|()| std::fs::remove_file(&probe));
            writing.store(false, Ordering::SeqCst);
            r
        })
        .await;
        match written {
            Ok(Ok(())) => Outcome::Running,
            Ok(Err(e)) => Outcome::Failed(format!(
                "{} is mounted but not writable: {e}",
                self.spec.directory.display()
            )),
            Err(e) => Outcome::Failed(format!("the write check did not finish: {e}")),
        }
    }
}

/// Writes a small file that must not exist yet (`O_EXCL`, no symlink
/// followed).
fn write_new(path: &Path) -> std::io::Result<()> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .custom_flags(libc::O_NOFOLLOW)
        .mode(0o600)
        .open(path)?;
    f.write_all(b"tandem\n")
}

fn holders_alive(pid: i32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// Processes with a file, working directory, root or mapping on the
/// filesystem of device `dev` (not this process, not PID 1), at most
/// [`MAX_HOLDERS`]. By device number, not by path: the same path in
/// another mount namespace, or the directory under the mount, is someone
/// else's.
pub fn holders(dev: (u32, u32)) -> Vec<i32> {
    let me = std::process::id() as i32;
    let on_dev = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| (libc::major(m.dev()), libc::minor(m.dev())) == dev)
    };
    let mut out = Vec::new();
    let Ok(procs) = std::fs::read_dir("/proc") else {
        return out;
    };
    for e in procs.flatten() {
        let Some(pid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        if pid == me || pid == 1 || out.len() >= MAX_HOLDERS {
            continue;
        }
        let base = e.path();
        let mut held = ["cwd", "root"].iter().any(|n| on_dev(&base.join(n)));
        if !held {
            held = std::fs::read_dir(base.join("fd"))
                .map(|fds| fds.flatten().take(65_536).any(|f| on_dev(&f.path())))
                .unwrap_or(false);
        }
        if !held {
            // maps: address perms offset dev(hex maj:min) inode path
            held = std::fs::read_to_string(base.join("maps"))
                .map(|m| {
                    m.lines().any(|l| {
                        l.split_whitespace()
                            .nth(3)
                            .and_then(|d| d.split_once(':'))
                            .and_then(|(a, b)| {
                                Some((u32::from_str_radix(a, 16).ok()?, u32::from_str_radix(b, 16).ok()?))
                            })
                            == Some(dev)
                    })
                })
                .unwrap_or(false);
        }
        if held {
            out.push(pid);
        }
    }
    out
}

impl Driver for FsDriver {
    fn kind(&self) -> &'static str {
        "fs"
    }

    fn action<'a>(&'a self, r: &'a Resource, action: ActionKind) -> Act<'a> {
        Box::pin(self.act(r, action))
    }

    fn check<'a>(&'a self, r: &'a Resource) -> Act<'a> {
        Box::pin(FsDriver::check(self, r))
    }

    /// The guard kills what holds the mount and unmounts it when the agent
    /// is gone. `fuser -M` acts only if the directory *is* a mount point:
    /// plain `fuser -km` on a directory that is not mounted names the
    /// filesystem it lies on, the root, and kills every process using it
    /// (the guard runs these commands whenever the lease ends while the
    /// resource may run, mounted or not).
    fn guard(&self, owner: &Owner, part: &mut Leaving) {
        let dir = self.spec.directory.to_string_lossy().into_owned();
        let cmd = |program: &str, args: &[&str]| StopCommand {
            program: PathBuf::from(program),
            args: args.iter().map(|a| a.to_string()).collect(),
            env: vec![],
            first: false,
        };
        if matches!(self.spec.source, Source::Volume(_)) {
            // Before every other stop of the lease, whatever its group
            // (see GUARD_CUT). Even half attached (no loop device yet): it
            // checks the pid file.
            let a = Attach::of(owner);
            let devno = self
                .devno(owner)
                .map_or_else(|_| String::new(), |(major, minor)| format!("{major}:{minor}"));
            part.stop_commands.push(StopCommand {
                first: true,
                ..cmd(
                    "sh",
                    &[
                        "-c",
                        GUARD_CUT,
                        "tandem-guard-fs",
                        &a.pidfile.to_string_lossy(),
                        &dir,
                        &devno,
                    ],
                )
            });
        }
        // Only when this resource's device is what is mounted there: the
        // guard runs these whenever the resource may run, mounted or not,
        // and whatever else is mounted there is someone else's.
        let Ok((major, minor)) = self.devno(owner) else {
            return;
        };
        part.stop_commands.push(cmd(
            "sh",
            &[
                "-c",
                GUARD_UNMOUNT,
                "tandem-guard-fs",
                &dir,
                &format!("{major}:{minor}"),
            ],
        ));
        if matches!(self.spec.source, Source::Volume(_)) {
            let a = Attach::of(owner);
            if let Some(dev) = a.loop_dev() {
                part.stop_commands
                    .push(cmd("losetup", &["-d", &dev.to_string_lossy()]));
            }
            part.stop_commands
                .push(cmd("fusermount3", &["-u", &a.fuse_dir.to_string_lossy()]));
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::process::Command;

    use tandem_core::group::{ActionKind, Bar, Outcome};
    use tandem_core::kinds::fs::{Fs, Source};
    use tandem_core::kinds::Params;

    use crate::child::test_runtime as rt;
    use crate::kinds::tests::resource;
    use crate::kinds::{run_action, run_check};

    /// An ext4 filesystem on a loop device, detached on drop.
    struct Loop {
        dev: PathBuf,
    }

    impl Loop {
        fn new(dir: &Path) -> Loop {
            let img = dir.join("disk.img");
            let f = std::fs::File::create(&img).unwrap();
            f.set_len(32 << 20).unwrap();
            let ok = Command::new("mkfs.ext4")
                .args(["-q", "-F"])
                .arg(&img)
                .status()
                .unwrap();
            assert!(ok.success());
            let out = Command::new("losetup")
                .args(["--find", "--show"])
                .arg(&img)
                .output()
                .unwrap();
            assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
            Loop {
                dev: PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()),
            }
        }
    }

    impl Drop for Loop {
        fn drop(&mut self) {
            let _ = Command::new("losetup").arg("-d").arg(&self.dev).status();
        }
    }

    fn fs(dev: &Path, dir: &Path) -> Params {
        Params::Fs(Fs {
            source: Source::Device(dev.to_path_buf()),
            directory: dir.to_path_buf(),
            fstype: "ext4".into(),
            options: "noatime".into(),
            fsck: true,
        })
    }

    /// Mount, probe, write check, then a stop while processes hold the
    /// mount (a working directory, an open file): they are signalled, the
    /// stop says so, and the filesystem is unmounted.
    #[test]
    fn an_ext4_on_a_loop_device_mounts_is_checked_and_unmounts_past_its_holders() {
        if !tandem_testbed::require_root("an_ext4_on_a_loop_device_mounts_is_checked_and_unmounts_past_its_holders") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = Loop::new(dir.path());
        let mnt = dir.path().join("mnt");
        let r = resource(fs(&disk.dev, &mnt), 20_000, dir.path());
        let mut holders = Vec::new();
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Running);
            assert_eq!(run_check(&r).await, Outcome::Running);
            // Idempotent start.
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            std::fs::write(mnt.join("data"), b"x").unwrap();
            holders.push(
                Command::new("sleep")
                    .arg("3600")
                    .current_dir(&mnt)
                    .spawn()
                    .unwrap(),
            );
            holders.push(
                Command::new("sh")
                    .args(["-c", "exec 3<data; trap '' TERM; while :; do sleep 1; done"])
                    .current_dir(&mnt)
                    .spawn()
                    .unwrap(),
            );
            tokio::time::sleep(std::time::Duration::from_millis(100)).await;
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
            let notes = r.take_notes().join("\n");
            assert!(notes.contains("SIGTERM"), "{notes}");
            assert!(notes.contains("SIGKILL"), "the one ignoring TERM: {notes}");
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
        });
        for mut h in holders {
            let _ = h.kill();
            let _ = h.wait();
        }
        // Unmounted behind the cluster's back: the check finds it gone.
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert!(Command::new("umount").arg(&mnt).status().unwrap().success());
            assert_eq!(run_check(&r).await, Outcome::Stopped);
        });
    }

    /// Regression (the ordered-takeover scenario at 10 repetitions): after
    /// kill -9 of the holder's agent, the guard called pgsql's stop first,
    /// whose shutdown checkpoint waited on the volume's data path, retried
    /// for the dead agent, until the stop timed out 20 s later; the old
    /// PostgreSQL ran on past the lease (the other node's, seeing its PID
    /// alive on this one machine, would not start). Killing what holds the
    /// filesystem and cutting the data path now come first of the lease,
    /// before any group's stops.
    #[test]
    fn the_guard_cuts_a_volumes_data_path_before_anything_in_the_group_stops() {
        let dir = tempfile::tempdir().unwrap();
        let r = resource(
            Params::Fs(Fs {
                source: Source::Volume("data".into()),
                directory: dir.path().join("mnt"),
                fstype: "ext4".into(),
                options: String::new(),
                fsck: false,
            }),
            5_000,
            dir.path(),
        );
        // Another group's stop, and the database above it (stop order),
        // were listed first; `true` stands for each.
        let mut part = crate::guard::Leaving::default();
        for group in ["other", "db"] {
            part.stop_commands.push(crate::guard::StopCommand {
                program: PathBuf::from("true"),
                args: vec![group.into()],
                env: vec![],
                first: false,
            });
        }
        r.kind.guard(&r.owner, &mut part);
        let cut = part.stop_commands.iter().find(|c| c.first).expect("a cut");
        assert!(
            cut.args.iter().any(|a| a.contains("nbdfuse") && a.contains("fuser -k -M -m"))
                && cut.args.iter().any(|a| a.ends_with("nbdfuse.pid")),
            "{:?}",
            part.stop_commands
        );
        // The guard runs it before both. Nothing runs under that pid
        // file: it does nothing.
        let did = crate::guard::run_stop_commands(&part.as_lease());
        assert!(did[0].starts_with("sh -c") && did[0].ends_with("exit status: 0"), "{did:?}");
        assert!(did[1].starts_with("true other") && did[2].starts_with("true db"), "{did:?}");
    }

    /// Regression: the guard's commands for a filesystem that is not
    /// mounted (as at every agent start, when the guard stops what may run
    /// before a lease) were `fuser -km DIR`, which on a directory that is
    /// no mount point kills every process on the filesystem holding it: the
    /// root. It killed the test harness's own shell. Now they leave a
    /// process working in a directory beside it alone.
    #[test]
    fn the_guards_commands_for_an_unmounted_filesystem_kill_nothing() {
        if !tandem_testbed::require_root("the_guards_commands_for_an_unmounted_filesystem_kill_nothing") {
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        let disk = Loop::new(dir.path());
        let mnt = dir.path().join("mnt");
        std::fs::create_dir_all(&mnt).unwrap();
        let r = resource(fs(&disk.dev, &mnt), 5_000, dir.path());
        let mut part = crate::guard::Leaving::default();
        r.kind.guard(&r.owner, &mut part);
        assert!(!part.stop_commands.is_empty());
        // Not mounted; then someone else's filesystem mounted there.
        for other in [false, true] {
            if other {
                assert!(Command::new("mount")
                    .args(["-t", "tmpfs", "other", mnt.to_str().unwrap()])
                    .status()
                    .unwrap()
                    .success());
            }
            let mut canary = Command::new("sleep")
                .arg("60")
                .current_dir(if other { &mnt } else { dir.path() })
                .spawn()
                .unwrap();
            let did = crate::guard::run_stop_commands(&part.as_lease());
            std::thread::sleep(std::time::Duration::from_millis(100));
            let alive = canary.try_wait().unwrap().is_none();
            let _ = canary.kill();
            let _ = canary.wait();
            assert!(alive, "the guard killed a bystander (other mount: {other}): {did:?}");
        }
        let table = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
        let still = table.contains(&format!(" {} ", mnt.display()));
        let _ = Command::new("umount").arg(&mnt).status();
        assert!(still, "the guard unmounted someone else's filesystem");
        // Its own filesystem mounted there: unmounted, holders killed.
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
        });
        let mut holder = Command::new("sleep").arg("60").current_dir(&mnt).spawn().unwrap();
        let did = crate::guard::run_stop_commands(&part.as_lease());
        let t0 = std::time::Instant::now();
        while holder.try_wait().unwrap().is_none() && t0.elapsed() < std::time::Duration::from_secs(5) {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        assert!(holder.try_wait().unwrap().is_some(), "{did:?}");
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped, "{did:?}");
        });
    }

    /// A device this node does not have: not mounted here, and a start
    /// bars the node.
    #[test]
    fn a_missing_device_is_stopped_and_a_start_bars_the_node() {
        let dir = tempfile::tempdir().unwrap();
        let r = resource(
            fs(Path::new("/dev/tandem-no-such-disk"), &dir.path().join("m")),
            5_000,
            dir.path(),
        );
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            let o = run_action(&r, ActionKind::Start).await;
            assert!(matches!(o, Outcome::Barred { bar: Bar::Node, .. }), "{o:?}");
        });
    }
}
