//! Resource agents: the shell side of each resource kind. Every action is
//! idempotent (starting what runs or stopping what is stopped succeeds at
//! once), reports an [`Outcome`], and is bounded by the resource's timeout
//! (applied by the caller, [`run_action`]).
//!
//! - `ip`: a floating address added and removed with netlink on the first
//!   interface of its preference list that has carrier (default: the
//!   interface already holding an address in the same subnet), announced
//!   with gratuitous ARP / unsolicited NA on takeover and again a few times
//!   after, and moved to the next interface when its own loses carrier.
//! - `process`: a long-running command in its own session (so its whole
//!   process group is signalled); a pid file with the process's start time
//!   lets a restarted agent find it again and never confuse a reused PID.
//! - `exec`: an LSB-style script called with `start`, `stop`, `status`
//!   (status 0 = running, 1-3 = stopped), so `/etc/init.d` scripts work.
//!
//! Every child gets `TANDEM_CLUSTER`, `TANDEM_NODE`, `TANDEM_GROUP` and
//! `TANDEM_RESOURCE` in its environment.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::{Duration, Instant};

use tandem_core::config::values::Cidr;
use tandem_core::config::ResourceSpec;
use tandem_core::group::{ActionKind, Outcome};
use tokio::io::AsyncReadExt as _;

use crate::{announce, netlink};

/// Default limit on one action.
pub const DEFAULT_TIMEOUT_MS: u64 = tandem_core::config::DEFAULT_RESOURCE_TIMEOUT_MS;
/// Most output of a script kept for an error message.
const MAX_OUTPUT: usize = 2048;
/// A process that exits within this time of its start failed to start.
const START_SETTLE_MS: u64 = 20;
/// After a stop signal's timeout, how long to wait for SIGKILL to work.
const KILL_WAIT_MS: u64 = tandem_core::config::KILL_WAIT_MS;
/// Announcements after a takeover (ms after the address is added).
pub const ANNOUNCE_AT_MS: [u64; 5] = [0, 50, 250, 1_000, 3_000];

/// Who a resource belongs to (for the environment and file names).
#[derive(Debug, Clone)]
pub struct Owner {
    /// Cluster name.
    pub cluster: String,
    /// This node.
    pub node: String,
    /// Group name.
    pub group: String,
    /// Resource name.
    pub resource: String,
    /// Directory for pid files and logs.
    pub run_dir: PathBuf,
}

impl Owner {
    fn env(&self) -> [(&'static str, &str); 4] {
        [
            ("TANDEM_CLUSTER", &self.cluster),
            ("TANDEM_NODE", &self.node),
            ("TANDEM_GROUP", &self.group),
            ("TANDEM_RESOURCE", &self.resource),
        ]
    }

    /// The environment as owned pairs (for the guard).
    pub fn env_vec(&self) -> Vec<(String, String)> {
        self.env()
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    /// The pid file of a `process` resource.
    pub fn pidfile(&self) -> PathBuf {
        self.file("pid")
    }

    fn file(&self, ext: &str) -> PathBuf {
        self.run_dir
            .join(format!("{}.{}.{ext}", self.group, self.resource))
    }
}

/// A floating address.
#[derive(Debug, Clone)]
pub struct IpResource {
    /// Address and prefix.
    pub address: Cidr,
    /// Interfaces in order of preference (empty: by subnet).
    pub interfaces: Vec<String>,
}

/// A supervised command.
#[derive(Debug, Clone)]
pub struct ProcessResource {
    command: Vec<String>,
    stop_signal: i32,
    /// SIGKILL this long after the stop signal.
    kill_after_ms: u64,
    working_dir: Option<PathBuf>,
    env: BTreeMap<String, String>,
}

/// An LSB script.
#[derive(Debug, Clone)]
pub struct ExecResource {
    script: PathBuf,
}

impl ExecResource {
    /// The script's path.
    pub fn script(&self) -> &Path {
        &self.script
    }
}

/// One resource of this node.
#[derive(Debug, Clone)]
pub enum Kind {
    /// `ip`.
    Ip(IpResource),
    /// `process`.
    Process(ProcessResource),
    /// `exec`.
    Exec(ExecResource),
    /// `volume`: promote on start, demote on stop.
    Volume(VolumeResource),
}

/// A `volume` resource: this node's copy of a replicated volume.
#[derive(Clone)]
pub struct VolumeResource {
    /// The volume's name.
    pub volume: String,
    /// The node's volumes (None: this node holds no copy of it).
    pub hub: Option<std::sync::Arc<crate::volume::Hub>>,
}

impl std::fmt::Debug for VolumeResource {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "VolumeResource({})", self.volume)
    }
}

/// A resource with its owner and limits.
#[derive(Debug, Clone)]
pub struct Resource {
    /// Who it belongs to.
    pub owner: Owner,
    /// Limit on one action.
    pub timeout_ms: u64,
    /// What it is.
    pub kind: Kind,
    /// What its last actions did that the log should say (a SIGKILL...);
    /// taken by the caller ([`Resource::take_notes`]).
    notes: std::cell::RefCell<Vec<String>>,
}

impl Resource {
    /// Lines for the log from the actions run so far.
    pub fn take_notes(&self) -> Vec<String> {
        std::mem::take(&mut *self.notes.borrow_mut())
    }

    fn note(&self, line: String) {
        let mut n = self.notes.borrow_mut();
        // Bounded: the caller takes them after every action.
        if n.len() < 16 {
            n.push(line);
        }
    }
}

/// Makes the child of `cmd` lead a session (and process group) of its own:
/// signals reach it and everything it starts, and it survives whatever
/// happens to the process group of its parent.
pub fn own_session(cmd: &mut std::process::Command) {
    use std::os::unix::process::CommandExt as _;
    // SAFETY: setsid is async-signal-safe, the only call made between fork
    // and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::setsid() < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Kills a process group when dropped (unless disarmed with `None`).
struct GroupKill(Option<i32>);

impl Drop for GroupKill {
    fn drop(&mut self) {
        if let Some(pid) = self.0.filter(|p| *p > 1) {
            // SAFETY: plain kill(2) of the group our child leads.
            unsafe {
                libc::kill(-pid, libc::SIGKILL);
            }
        }
    }
}

/// A single-threaded runtime for the unit tests of the shell's modules.
#[cfg(test)]
pub(crate) fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a test runtime")
}

/// The number of a signal name (`TERM`, `SIGINT`, `KILL`, ...).
pub fn signal_number(name: &str) -> Option<i32> {
    let n = name.trim_start_matches("SIG");
    Some(match n {
        "TERM" => libc::SIGTERM,
        "INT" => libc::SIGINT,
        "QUIT" => libc::SIGQUIT,
        "KILL" => libc::SIGKILL,
        "HUP" => libc::SIGHUP,
        "USR1" => libc::SIGUSR1,
        "USR2" => libc::SIGUSR2,
        _ => return None,
    })
}

impl Resource {
    /// The shell's resource for a configured one, or why this version
    /// cannot run it.
    pub fn new(
        spec: &ResourceSpec,
        owner: Owner,
        timeout_ms: u64,
        hub: Option<&std::sync::Arc<crate::volume::Hub>>,
    ) -> Result<Resource, String> {
        let kind = match spec {
            ResourceSpec::Ip {
                address,
                interfaces,
                ..
            } => Kind::Ip(IpResource {
                address: *address,
                interfaces: interfaces.clone(),
            }),
            ResourceSpec::Process {
                command,
                stop_signal,
                kill_after_ms,
                working_dir,
                env,
            } => Kind::Process(ProcessResource {
                command: command.clone(),
                kill_after_ms: *kill_after_ms,
                stop_signal: signal_number(stop_signal).ok_or_else(|| {
                    format!("stop_signal {stop_signal}: not a signal this agent knows (TERM, INT, QUIT, HUP, USR1, USR2, KILL)")
                })?,
                working_dir: working_dir.clone(),
                env: env.clone(),
            }),
            ResourceSpec::Exec { script } => Kind::Exec(ExecResource {
                script: script.clone(),
            }),
            ResourceSpec::Volume { volume } => Kind::Volume(VolumeResource {
                volume: volume.clone(),
                hub: hub.filter(|h| h.has(volume)).cloned(),
            }),
        };
        Ok(Resource {
            owner,
            timeout_ms,
            kind,
            notes: std::cell::RefCell::new(Vec::new()),
        })
    }
}

/// How long past its timeout an action's own bounds get before the outer
/// bound gives up on it.
const ACTION_GRACE_MS: u64 = 1_000;

/// The longest a group's stop may take on a node before the runner calls
/// it failed: an action already under way (a start or probe) finishes
/// first, then each resource's stop, in turn, each within its timeout and
/// the grace the outer bound gives it.
pub fn group_stop_bound_ms(timeouts_ms: impl Iterator<Item = u64>) -> u64 {
    let each: Vec<u64> = timeouts_ms
        .map(|t| t.saturating_add(ACTION_GRACE_MS))
        .collect();
    let in_flight = each.iter().copied().max().unwrap_or(0);
    each.into_iter().fold(in_flight, u64::saturating_add)
}

/// Runs one action to its outcome, bounded by the resource's timeout.
pub async fn run_action(r: &Resource, kind: ActionKind) -> Outcome {
    let limit = Duration::from_millis(r.timeout_ms);
    let fut = async {
        match (&r.kind, kind) {
            (Kind::Ip(ip), a) => ip_action(ip, a),
            (Kind::Process(_), ActionKind::Probe) => process_probe(&r.owner),
            (Kind::Process(p), ActionKind::Start) => process_start(p, &r.owner).await,
            (Kind::Process(p), ActionKind::Stop) => process_stop(p, r, limit).await,
            (Kind::Exec(e), a) => exec_action(e, &r.owner, a, limit).await,
            (Kind::Volume(v), a) => volume_action(v, a).await,
        }
    };
    // A little past the limit: the inner bounds (which kill the action's
    // whole process group and say what timed out) go first.
    match tokio::time::timeout(limit + Duration::from_millis(ACTION_GRACE_MS), fut).await {
        Ok(o) => o,
        Err(_) => Outcome::Failed(format!("timed out after {} ms", r.timeout_ms)),
    }
}

// ---- volume ---------------------------------------------------------------

async fn volume_action(v: &VolumeResource, kind: ActionKind) -> Outcome {
    let Some(hub) = &v.hub else {
        return match kind {
            ActionKind::Probe | ActionKind::Stop => Outcome::Stopped,
            ActionKind::Start => Outcome::Failed(format!(
                "volume `{}` has no copy on this node: list only the volume's two nodes in the group's `nodes`",
                v.volume
            )),
        };
    };
    match kind {
        ActionKind::Probe => match hub.trouble(&v.volume) {
            None => Outcome::Running,
            Some(_) if !hub.is_primary(&v.volume) => Outcome::Stopped,
            Some(why) => Outcome::Failed(why),
        },
        ActionKind::Start => match hub.promote(&v.volume, false, true).await {
            Ok(_) => Outcome::Running,
            Err(e) => Outcome::Failed(e),
        },
        ActionKind::Stop => match hub.demote(&v.volume).await {
            Ok(()) => Outcome::Stopped,
            Err(e) => Outcome::Failed(e),
        },
    }
}

// ---- ip -------------------------------------------------------------------

fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

/// The interface the address should be on now: the first preferred one
/// with carrier, or (no list) the one with an address in its subnet.
pub fn ip_choose(ip: &IpResource) -> Result<netlink::Link, String> {
    let links = netlink::links().map_err(|e| e.to_string())?;
    if !ip.interfaces.is_empty() {
        return ip
            .interfaces
            .iter()
            .filter_map(|name| links.iter().find(|l| &l.name == name))
            .find(|l| l.carrier)
            .cloned()
            .ok_or_else(|| {
                format!(
                    "none of the interfaces {} has carrier",
                    ip.interfaces.join(", ")
                )
            });
    }
    let addrs = netlink::addresses().map_err(|e| e.to_string())?;
    let (vip, prefix) = (ip.address.addr, ip.address.prefix_len);
    let index = addrs
        .iter()
        .find(|a| a.ip != vip && same_subnet(a.ip, vip, prefix))
        .map(|a| a.index)
        .ok_or_else(|| format!("no interface has an address in {vip}/{prefix}'s subnet; set `interfaces` on the resource"))?;
    let l = links
        .into_iter()
        .find(|l| l.index == index)
        .ok_or_else(|| "the interface vanished".to_string())?;
    if l.carrier {
        Ok(l)
    } else {
        Err(format!("interface {} has no carrier", l.name))
    }
}

/// Interfaces that hold the address now.
fn ip_holders(ip: &IpResource) -> Result<Vec<netlink::Addr>, String> {
    Ok(netlink::addresses()
        .map_err(|e| e.to_string())?
        .into_iter()
        .filter(|a| a.ip == ip.address.addr)
        .collect())
}

/// Runs an action on an address, synchronously (netlink answers at once).
pub fn ip_action(ip: &IpResource, kind: ActionKind) -> Outcome {
    match kind {
        ActionKind::Probe => ip_probe(ip),
        ActionKind::Start => ip_start(ip),
        ActionKind::Stop => ip_stop(ip),
    }
}

fn ip_probe(ip: &IpResource) -> Outcome {
    match ip_holders(ip) {
        Ok(h) if h.is_empty() => Outcome::Stopped,
        Ok(_) => Outcome::Running,
        Err(e) => Outcome::Failed(e),
    }
}

fn ip_start(ip: &IpResource) -> Outcome {
    let link = match ip_choose(ip) {
        Ok(l) => l,
        Err(e) => return Outcome::Failed(e),
    };
    match netlink::add_address(ip.address.addr, ip.address.prefix_len, link.index) {
        Ok(_) => {
            // The first announcement now; the agent repeats them.
            let _ = announce::announce(link.index, &link.mac, ip.address.addr);
            Outcome::Running
        }
        Err(e) => Outcome::Failed(format!("on {}: {e}", link.name)),
    }
}

fn ip_stop(ip: &IpResource) -> Outcome {
    let holders = match ip_holders(ip) {
        Ok(h) => h,
        Err(e) => return Outcome::Failed(e),
    };
    for h in holders {
        if let Err(e) = netlink::delete_address(h.ip, h.prefix, h.index) {
            return Outcome::Failed(e.to_string());
        }
    }
    Outcome::Stopped
}

/// Sends one announcement of the address from where it is now.
pub fn ip_announce(ip: &IpResource) {
    let Ok(holders) = ip_holders(ip) else { return };
    let Ok(links) = netlink::links() else { return };
    for h in holders {
        if let Some(l) = links.iter().find(|l| l.index == h.index) {
            let _ = announce::announce(l.index, &l.mac, ip.address.addr);
        }
    }
}

/// What a running address's check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpCheck {
    /// Where it should be.
    Fine,
    /// Moved from one interface to another (names).
    Moved(String, String),
    /// Gone, or cannot be placed anywhere.
    Failed(String),
}

/// Checks a running address: present, and on the interface its preference
/// list wants now (moved there if not).
pub fn ip_check(ip: &IpResource) -> IpCheck {
    let holders = match ip_holders(ip) {
        Ok(h) => h,
        Err(e) => return IpCheck::Failed(e),
    };
    let Some(current) = holders.first().copied() else {
        return IpCheck::Failed(format!("address {} is gone", ip.address.addr));
    };
    if ip.interfaces.is_empty() {
        return IpCheck::Fine;
    }
    let want = match ip_choose(ip) {
        Ok(l) => l,
        Err(e) => return IpCheck::Failed(e),
    };
    if want.index == current.index {
        return IpCheck::Fine;
    }
    let from = netlink::links()
        .ok()
        .and_then(|ls| ls.into_iter().find(|l| l.index == current.index))
        .map_or_else(|| format!("#{}", current.index), |l| l.name);
    if let Err(e) = netlink::add_address(ip.address.addr, ip.address.prefix_len, want.index) {
        return IpCheck::Failed(format!("moving to {}: {e}", want.name));
    }
    let _ = announce::announce(want.index, &want.mac, ip.address.addr);
    let _ = netlink::delete_address(current.ip, current.prefix, current.index);
    IpCheck::Moved(from, want.name)
}

// ---- process ----------------------------------------------------------------

/// Start time (clock ticks since boot) and state of `pid`, from /proc.
pub(crate) fn proc_stat(pid: i32) -> Option<(u64, char)> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = stat.rsplit_once(')')?.1;
    let f: Vec<&str> = rest.split_whitespace().collect();
    let state = f.first()?.chars().next()?;
    // Field 22 (starttime) is the 20th after the command.
    let start = f.get(19)?.parse().ok()?;
    Some((start, state))
}

/// A pid file's process id and start time (see [`proc_stat`]).
pub(crate) fn read_pidfile(path: &Path) -> Option<(i32, u64)> {
    let text = std::fs::read_to_string(path).ok()?;
    let mut f = text.split_whitespace();
    Some((f.next()?.parse().ok()?, f.next()?.parse().ok()?))
}

/// The recorded process if it still runs (same PID *and* start time).
fn running_pid(owner: &Owner) -> Option<i32> {
    let (pid, start) = read_pidfile(&owner.file("pid"))?;
    match proc_stat(pid) {
        Some((s, state)) if s == start && state != 'Z' && state != 'X' => Some(pid),
        _ => None,
    }
}

fn process_probe(owner: &Owner) -> Outcome {
    match running_pid(owner) {
        Some(_) => Outcome::Running,
        None => Outcome::Stopped,
    }
}

async fn process_start(p: &ProcessResource, owner: &Owner) -> Outcome {
    if running_pid(owner).is_some() {
        return Outcome::Running;
    }
    let Some((program, args)) = p.command.split_first() else {
        return Outcome::Failed("empty command".into());
    };
    let log_path = owner.file("log");
    let log = match std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&log_path)
    {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("opening {}: {e}", log_path.display())),
    };
    let err_log = match log.try_clone() {
        Ok(f) => f,
        Err(e) => return Outcome::Failed(format!("opening {}: {e}", log_path.display())),
    };
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(err_log)
        .envs(owner.env())
        .envs(&p.env);
    if let Some(d) = &p.working_dir {
        cmd.current_dir(d);
    }
    // Its own process group, which stop signals as a whole; it outlives an
    // agent killed with -9 (a restarted agent finds it by its pid file).
    own_session(cmd.as_std_mut());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return Outcome::Failed(format!("cannot run {program}: {e}")),
    };
    let Some(pid) = child.id() else {
        return Outcome::Failed(format!("{program} exited at once"));
    };
    let Some((start, _)) = proc_stat(pid as i32) else {
        return Outcome::Failed(format!("{program} exited at once"));
    };
    let pidfile = owner.file("pid");
    let write = std::fs::File::create(&pidfile).and_then(|mut f| {
        writeln!(f, "{pid} {start}")?;
        f.sync_all()
    });
    if let Err(e) = write {
        let _ = child.start_kill();
        return Outcome::Failed(format!("writing {}: {e}", pidfile.display()));
    }
    match tokio::time::timeout(Duration::from_millis(START_SETTLE_MS), child.wait()).await {
        Ok(Ok(status)) => {
            let _ = std::fs::remove_file(&pidfile);
            Outcome::Failed(format!(
                "{program} exited at once ({status}); see {}",
                log_path.display()
            ))
        }
        // Still running: tokio reaps the child in the background once it
        // exits, after the handle is dropped.
        _ => Outcome::Running,
    }
}

fn gone(pid: i32, start: u64) -> bool {
    !matches!(proc_stat(pid), Some((s, st)) if s == start && st != 'Z' && st != 'X')
}

async fn process_stop(p: &ProcessResource, r: &Resource, limit: Duration) -> Outcome {
    let owner = &r.owner;
    let pidfile = owner.file("pid");
    let Some((pid, start)) = read_pidfile(&pidfile) else {
        return Outcome::Stopped;
    };
    if gone(pid, start) {
        let _ = std::fs::remove_file(&pidfile);
        return Outcome::Stopped;
    }
    // SAFETY: kill(2) on the process group the child leads (setsid).
    unsafe {
        libc::kill(-pid, p.stop_signal);
    }
    // SIGKILL after `kill_after_ms`, and always with room for it to work
    // within the action's limit.
    let soft = limit
        .saturating_sub(Duration::from_millis(KILL_WAIT_MS))
        .min(Duration::from_millis(p.kill_after_ms));
    let t0 = Instant::now();
    while t0.elapsed() < soft {
        if gone(pid, start) {
            let _ = std::fs::remove_file(&pidfile);
            return Outcome::Stopped;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    // SAFETY: as above.
    unsafe {
        libc::kill(-pid, libc::SIGKILL);
    }
    r.note(format!(
        "{}/{}: still running {} ms after the stop signal: sent SIGKILL to process group {pid}",
        owner.group,
        owner.resource,
        soft.as_millis()
    ));
    let t1 = Instant::now();
    while t1.elapsed() < Duration::from_millis(KILL_WAIT_MS) {
        if gone(pid, start) {
            let _ = std::fs::remove_file(&pidfile);
            return Outcome::Stopped;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    Outcome::Failed(format!("process {pid} survived SIGKILL"))
}

// ---- exec -------------------------------------------------------------------

/// Reads a pipe to its end, keeping the first [`MAX_OUTPUT`] bytes.
async fn drain(pipe: Option<impl tokio::io::AsyncRead + Unpin>) -> Vec<u8> {
    let mut kept = Vec::new();
    let Some(mut pipe) = pipe else {
        return kept;
    };
    let mut buf = [0u8; 1024];
    loop {
        match pipe.read(&mut buf).await {
            Ok(0) | Err(_) => return kept,
            Ok(n) => {
                let room = MAX_OUTPUT.saturating_sub(kept.len());
                kept.extend_from_slice(&buf[..n.min(room)]);
            }
        }
    }
}

/// Runs `program args` in its own process group with the owner's
/// environment and `input` on stdin; returns the exit code (None: killed)
/// and the first bytes of its output (stdout, then stderr). The whole group
/// is killed when `limit` passes.
pub async fn run_bounded(
    program: &Path,
    args: &[&str],
    owner: Option<&Owner>,
    input: Option<&[u8]>,
    limit: Duration,
) -> Result<(Option<i32>, String), String> {
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if input.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true);
    if let Some(o) = owner {
        cmd.envs(o.env());
    }
    own_session(cmd.as_std_mut());
    let mut child = cmd
        .spawn()
        .map_err(|e| format!("cannot run {}: {e}", program.display()))?;
    let pid = child.id().map(|p| p as i32);
    // Until the child has exited, dropping this future (an outer timeout,
    // a shutdown) kills its whole process group: `kill_on_drop` alone
    // kills the child and orphans what it started (a hung start's
    // `sleep 3600` survived that way).
    let mut group = GroupKill(pid);
    let stdin = child.stdin.take();
    let (out, err) = (child.stdout.take(), child.stderr.take());
    let run = async {
        let feed = async {
            if let (Some(mut w), Some(bytes)) = (stdin, input) {
                // A child that does not read its input is its own business.
                let _ = tokio::io::AsyncWriteExt::write_all(&mut w, bytes).await;
            }
        };
        // Both pipes at once, so the child never blocks on a full one.
        let ((), mut text, err_text) = tokio::join!(feed, drain(out), drain(err));
        if text.len() < MAX_OUTPUT {
            text.extend_from_slice(&err_text[..err_text.len().min(MAX_OUTPUT - text.len())]);
        }
        (child.wait().await, text)
    };
    let outcome = tokio::time::timeout(limit, run).await;
    if matches!(outcome, Ok((Ok(_), _))) {
        // It exited by itself: what it left running in its group (a
        // daemon a start script launched) is the service, not debris.
        group.0 = None;
    }
    match outcome {
        Ok((Ok(status), text)) => Ok((
            status.code(),
            String::from_utf8_lossy(&text).trim().to_string(),
        )),
        Ok((Err(e), _)) => Err(format!("waiting for {}: {e}", program.display())),
        Err(_) => {
            // `group` kills the whole group as it drops.
            Err(format!(
                "{} timed out after {} ms",
                program.display(),
                limit.as_millis()
            ))
        }
    }
}

async fn exec_action(
    e: &ExecResource,
    owner: &Owner,
    kind: ActionKind,
    limit: Duration,
) -> Outcome {
    let arg = match kind {
        ActionKind::Probe => "status",
        ActionKind::Start => "start",
        ActionKind::Stop => "stop",
    };
    let (code, text) = match run_bounded(&e.script, &[arg], Some(owner), None, limit).await {
        Ok(r) => r,
        Err(err) => return Outcome::Failed(err),
    };
    let said = if text.is_empty() {
        String::new()
    } else {
        format!(": {text}")
    };
    match (kind, code) {
        (ActionKind::Probe, Some(0)) => Outcome::Running,
        // LSB status: 1 dead with pid file, 2 dead with lock file, 3 not running.
        (ActionKind::Probe, Some(1..=3)) => Outcome::Stopped,
        (ActionKind::Start, Some(0)) => Outcome::Running,
        (ActionKind::Stop, Some(0)) => Outcome::Stopped,
        (_, c) => Outcome::Failed(format!(
            "{} {arg} exited {}{said}",
            e.script.display(),
            c.map_or_else(|| "by a signal".to_string(), |c| c.to_string())
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn owner(dir: &Path) -> Owner {
        Owner {
            cluster: "c".into(),
            node: "n1".into(),
            group: "g".into(),
            resource: "r".into(),
            run_dir: dir.to_path_buf(),
        }
    }

    use crate::resources::test_runtime as rt;

    /// The pid a test script wrote to `path`.
    fn read_pid(path: &Path) -> i32 {
        std::fs::read_to_string(path)
            .unwrap()
            .trim()
            .parse()
            .unwrap()
    }

    fn alive(pid: i32) -> bool {
        // SAFETY: signal 0 only checks existence.
        let exists = unsafe { libc::kill(pid, 0) == 0 };
        exists
            && !std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
                s.rsplit(')')
                    .next()
                    .is_some_and(|r| r.trim_start().starts_with('Z'))
            })
    }

    /// Issue 15, defect 7: a hanging start left its `sleep 3600` child as
    /// an orphan: the outer timeout dropped the action first, and dropping
    /// killed only the direct child. Now the whole group dies, whichever
    /// bound fires, and a start that exits by itself keeps what it started.
    #[test]
    fn no_child_of_a_timed_out_action_survives() {
        let dir = tempfile::tempdir().unwrap();
        let pidfile = dir.path().join("child.pid");
        let script = format!("sleep 3600 & echo $! > {}; wait", pidfile.display());
        let sh = Path::new("/bin/sh");
        let args = ["-c", script.as_str()];
        let rt = rt();
        // The action's own limit fires.
        let r = rt.block_on(run_bounded(
            sh,
            &args,
            None,
            None,
            Duration::from_millis(300),
        ));
        assert!(r.is_err_and(|e| e.contains("timed out")));
        let child = read_pid(&pidfile);
        std::thread::sleep(Duration::from_millis(100));
        assert!(
            !alive(child),
            "the child {child} survived the action's timeout"
        );
        // An outer bound drops the action first.
        std::fs::remove_file(&pidfile).unwrap();
        let outer = rt.block_on(async {
            tokio::time::timeout(
                Duration::from_millis(300),
                run_bounded(sh, &args, None, None, Duration::from_secs(60)),
            )
            .await
        });
        assert!(outer.is_err());
        let child = read_pid(&pidfile);
        std::thread::sleep(Duration::from_millis(100));
        assert!(!alive(child), "the child {child} survived an outer timeout");
        // A script that starts a daemon and exits keeps it.
        let daemon = format!(
            "sleep 3600 >/dev/null 2>&1 & echo $! > {}",
            pidfile.display()
        );
        let r = rt.block_on(run_bounded(
            sh,
            &["-c", daemon.as_str()],
            None,
            None,
            Duration::from_secs(5),
        ));
        assert_eq!(r.map(|r| r.0), Ok(Some(0)));
        let child = read_pid(&pidfile);
        assert!(alive(child), "the daemon a start launched was killed");
        // SAFETY: our own test's child.
        unsafe { libc::kill(child, libc::SIGKILL) };
    }

    #[test]
    fn subnets_compare_by_prefix() {
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        let b: IpAddr = "10.0.0.100".parse().unwrap();
        let c: IpAddr = "10.0.1.5".parse().unwrap();
        assert!(same_subnet(a, b, 24));
        assert!(!same_subnet(a, c, 24));
        assert!(same_subnet(a, c, 16));
        assert!(same_subnet(a, c, 0));
    }

    /// Regression (issue "keep the promises", defect 6): a hung service
    /// took 18 s to stop, because SIGKILL came only 2 s before the 20 s
    /// timeout, and the log did not say SIGKILL was sent. Now it comes
    /// `kill_after_ms` after the stop signal and is logged.
    #[test]
    fn a_process_that_ignores_its_stop_signal_is_killed_after_kill_after_ms() {
        let dir = tempfile::tempdir().unwrap();
        let o = owner(dir.path());
        let spec = ResourceSpec::Process {
            command: vec![
                "sh".into(),
                "-c".into(),
                "trap '' TERM; while :; do sleep 1; done".into(),
            ],
            stop_signal: "TERM".into(),
            kill_after_ms: 300,
            working_dir: None,
            env: BTreeMap::new(),
        };
        let r = Resource::new(&spec, o, 20_000, None).unwrap();
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            let t0 = Instant::now();
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
            let took = t0.elapsed();
            // Generous safety bound: far below the old 18 s.
            assert!(took < Duration::from_secs(5), "stop took {took:?}");
            assert!(took >= Duration::from_millis(300), "stop took {took:?}");
            let notes = r.take_notes();
            assert!(
                notes.len() == 1 && notes[0].contains("sent SIGKILL"),
                "{notes:?}"
            );
        });
    }

    #[test]
    fn process_start_probe_stop_and_pid_reuse_guard() {
        let dir = tempfile::tempdir().unwrap();
        let o = owner(dir.path());
        let spec = ResourceSpec::Process {
            command: vec!["sleep".into(), "60".into()],
            stop_signal: "TERM".into(),
            kill_after_ms: 1_000,
            working_dir: None,
            env: BTreeMap::new(),
        };
        let r = Resource::new(&spec, o.clone(), 5_000, None).unwrap();
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Running);
            // Idempotent start: the same process.
            let before = std::fs::read_to_string(o.file("pid")).unwrap();
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(std::fs::read_to_string(o.file("pid")).unwrap(), before);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
        });
        // A pid file naming a live process with another start time is stale.
        std::fs::write(o.file("pid"), format!("{} 1\n", std::process::id())).unwrap();
        assert_eq!(process_probe(&o), Outcome::Stopped);
    }

    #[test]
    fn process_that_exits_at_once_fails_to_start() {
        let dir = tempfile::tempdir().unwrap();
        let spec = ResourceSpec::Process {
            command: vec!["false".into()],
            stop_signal: "TERM".into(),
            kill_after_ms: 1_000,
            working_dir: None,
            env: BTreeMap::new(),
        };
        let r = Resource::new(&spec, owner(dir.path()), 5_000, None).unwrap();
        let out = rt().block_on(run_action(&r, ActionKind::Start));
        assert!(
            matches!(&out, Outcome::Failed(m) if m.contains("exited at once")),
            "{out:?}"
        );
    }

    #[test]
    fn exec_follows_lsb_exit_codes_and_times_out() {
        let dir = tempfile::tempdir().unwrap();
        let script = dir.path().join("svc");
        let state = dir.path().join("state");
        std::fs::write(
            &script,
            format!(
                "#!/bin/sh\ncase \"$1\" in\n start) touch {s}; echo started;;\n stop) rm -f {s};;\n status) [ -e {s} ] && exit 0; exit 3;;\n hang) sleep 60;;\nesac\n",
                s = state.display()
            ),
        )
        .unwrap();
        std::fs::set_permissions(&script, std::os::unix::fs::PermissionsExt::from_mode(0o755))
            .unwrap();
        let r = Resource::new(
            &ResourceSpec::Exec {
                script: script.clone(),
            },
            owner(dir.path()),
            5_000,
            None,
        )
        .unwrap();
        rt().block_on(async {
            // Another test's fork may hold the script's write descriptor for
            // a moment (ETXTBSY); wait until it can run.
            for _ in 0..100 {
                match run_bounded(&script, &["status"], None, None, Duration::from_secs(5)).await {
                    Err(e) if e.contains("busy") => {
                        tokio::time::sleep(Duration::from_millis(10)).await
                    }
                    _ => break,
                }
            }
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            assert_eq!(run_action(&r, ActionKind::Start).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Running);
            assert_eq!(run_action(&r, ActionKind::Stop).await, Outcome::Stopped);
            let t0 = Instant::now();
            let e = run_bounded(&script, &["hang"], None, None, Duration::from_millis(200)).await;
            assert!(e.unwrap_err().contains("timed out"));
            assert!(t0.elapsed() < Duration::from_secs(5));
        });
    }

    #[test]
    fn a_volume_without_a_copy_here_is_stopped_and_will_not_start() {
        let r = Resource::new(
            &ResourceSpec::Volume {
                volume: "data".into(),
            },
            owner(Path::new("/tmp")),
            1_000,
            None,
        )
        .unwrap();
        rt().block_on(async {
            assert_eq!(run_action(&r, ActionKind::Probe).await, Outcome::Stopped);
            let Outcome::Failed(e) = run_action(&r, ActionKind::Start).await else {
                panic!("started a volume with no copy here")
            };
            assert!(e.contains("no copy on this node"), "{e}");
        });
    }
}
