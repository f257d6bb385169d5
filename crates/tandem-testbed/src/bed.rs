//! One testbed run: namespaces, bridges, addresses, processes and faults.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::CString;
use std::fs::{File, OpenOptions};
use std::net::Ipv4Addr;
use std::os::fd::AsRawFd;
use std::os::unix::ffi::OsStrExt as _;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::freezer::{Flavor, NodeCgroup};
use crate::sweep;
use crate::sys::{self, netns_path, run};
pub use crate::wire::Impairment;
use crate::wire::Wire;
use crate::PREFIX;

/// Most nodes one testbed holds (addresses are `.11` to `.74`).
pub const MAX_NODES: usize = 64;
/// Most links one testbed holds.
pub const MAX_LINKS: usize = 8;
/// The client's host number on the first link.
const CLIENT_HOST: u8 = 250;
/// Where OCF resource agents keep their state (`HA_RSCTMP`); each node
/// spawned by the testbed has its own.
const RESOURCE_AGENTS_TMP: &str = "/run/resource-agents";

/// What to build.
#[derive(Debug, Clone)]
pub struct TestbedSpec {
    /// Number of nodes, named `n1`, `n2`, ...
    pub nodes: usize,
    /// Link names; the client is attached to the first one.
    pub links: Vec<String>,
}

impl Default for TestbedSpec {
    fn default() -> Self {
        TestbedSpec {
            nodes: 3,
            links: vec!["lan".into(), "sync".into()],
        }
    }
}

/// A running testbed. Dropping it tears everything down.
#[derive(Debug)]
pub struct Testbed {
    id: String,
    spec: TestbedSpec,
    cgroups: Vec<NodeCgroup>,
    children: Mutex<BTreeMap<u32, Child>>,
    /// Directories each node has its own of (bind-mounted from
    /// `<run_dir>/n<node>-<name>` in its mount namespace).
    own_dirs: Mutex<Vec<PathBuf>>,
    /// Per node, the process that holds its mount and UTS namespaces (a
    /// `sleep infinity` in the node's cgroup): everything spawned in the
    /// node joins them, so that a mount outlives the agent that made it,
    /// as on a real machine, and is gone once the node is powered off.
    holders: Mutex<BTreeMap<usize, u32>>,
    one_way: Mutex<BTreeSet<(usize, usize)>>,
    wires: Mutex<BTreeMap<(usize, String), Wire>>,
    run_dir: PathBuf,
    _lock: File,
    torn_down: bool,
}

impl Testbed {
    /// Builds a testbed. Leftovers of crashed runs are swept first.
    pub fn new(spec: TestbedSpec) -> Result<Testbed> {
        if !crate::is_root() {
            bail!("the testbed needs root (network namespaces, bridges, cgroups); run as root");
        }
        if spec.nodes == 0 || spec.nodes > MAX_NODES {
            bail!("a testbed has 1 to {MAX_NODES} nodes, not {}", spec.nodes);
        }
        if spec.links.is_empty() || spec.links.len() > MAX_LINKS {
            bail!(
                "a testbed has 1 to {MAX_LINKS} links, not {}",
                spec.links.len()
            );
        }
        for l in &spec.links {
            // The switch-side port is `n64-<link>`: stay inside IFNAMSIZ (15).
            if l.is_empty()
                || l.len() > 8
                || !l
                    .chars()
                    .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit())
            {
                bail!("link name `{l}` must be 1 to 8 lowercase letters or digits");
            }
        }
        sweep::sweep().context("sweeping leftovers of earlier testbed runs")?;
        let (id, lock) = sweep::new_run().context("creating the run's lock file")?;
        let run_dir = std::env::temp_dir().join(format!("{PREFIX}{id}"));
        std::fs::create_dir_all(&run_dir)
            .with_context(|| format!("creating {}", run_dir.display()))?;
        let flavor = Flavor::detect().context("finding the cgroup freezer")?;
        let mut bed = Testbed {
            id,
            spec,
            cgroups: Vec::new(),
            children: Mutex::new(BTreeMap::new()),
            own_dirs: Mutex::new(vec![PathBuf::from(RESOURCE_AGENTS_TMP)]),
            holders: Mutex::new(BTreeMap::new()),
            one_way: Mutex::new(BTreeSet::new()),
            wires: Mutex::new(BTreeMap::new()),
            run_dir,
            _lock: lock,
            torn_down: false,
        };
        // On error `bed` drops here and removes whatever was built.
        bed.build(&flavor)?;
        Ok(bed)
    }

    fn build(&mut self, flavor: &Flavor) -> Result<()> {
        let sw = self.switch_ns();
        add_netns(&sw)?;
        // A switch, not a firewall: where br_netfilter is loaded, bridged
        // frames would otherwise each pass through the iptables hooks.
        // Only present (and per namespace) with that module.
        for t in ["iptables", "ip6tables", "arptables"] {
            let knob = format!("net.bridge.bridge-nf-call-{t}=0");
            let _ = sys::run_in(&sw, "sysctl", &["-q", "-w", &knob]);
        }
        for l in &self.spec.links {
            sys::ip(&sw, &["link", "add", &format!("br-{l}"), "type", "bridge"])?;
            sys::ip(&sw, &["link", "set", &format!("br-{l}"), "up"])?;
        }
        for node in 1..=self.spec.nodes {
            let ns = self.node_ns(node);
            add_netns(&ns)?;
            for (li, l) in self.spec.links.iter().enumerate() {
                let addr = format!("{}/24", self.address(node, l));
                self.plug(
                    &ns,
                    &format!("n{node}-{l}"),
                    l,
                    li,
                    &node_mac(li, node),
                    &addr,
                )?;
            }
            self.cgroups.push(NodeCgroup::create(
                flavor,
                &format!("{}n{node}", self.prefix()),
            )?);
        }
        let client = self.client_ns();
        add_netns(&client)?;
        let first = self.spec.links[0].clone();
        let addr = format!("{}/24", self.client_address());
        self.plug(
            &client,
            &format!("c-{first}"),
            &first,
            0,
            &client_mac(),
            &addr,
        )?;
        Ok(())
    }

    /// Creates a veth from the switch's bridge for link `li` into `ns`,
    /// named after the link inside `ns`.
    fn plug(
        &self,
        ns: &str,
        port: &str,
        link: &str,
        li: usize,
        mac: &str,
        addr: &str,
    ) -> Result<()> {
        let sw = self.switch_ns();
        sys::ip(
            &sw,
            &[
                "link", "add", port, "type", "veth", "peer", "name", link, "netns", ns,
            ],
        )?;
        sys::ip(
            &sw,
            &[
                "link",
                "set",
                port,
                "master",
                &format!("br-{}", self.spec.links[li]),
                "up",
            ],
        )?;
        sys::ip(ns, &["link", "set", link, "address", mac, "up"])?;
        sys::ip(ns, &["addr", "add", addr, "dev", link])?;
        Ok(())
    }

    /// This run's id (part of every name it creates).
    pub fn id(&self) -> &str {
        &self.id
    }

    /// `tbd-<id>-`: the prefix of this run's namespaces and cgroups.
    pub fn prefix(&self) -> String {
        format!("{PREFIX}{}-", self.id)
    }

    /// Number of nodes.
    pub fn nodes(&self) -> usize {
        self.spec.nodes
    }

    /// Link names.
    pub fn links(&self) -> &[String] {
        &self.spec.links
    }

    /// Namespace of node `node` (1-based).
    pub fn node_ns(&self, node: usize) -> String {
        format!("{}n{node}", self.prefix())
    }

    /// Namespace of the client.
    pub fn client_ns(&self) -> String {
        format!("{}client", self.prefix())
    }

    /// Namespace holding the bridges.
    pub fn switch_ns(&self) -> String {
        format!("{}sw", self.prefix())
    }

    /// Directory for this run's process logs (removed at tear-down unless
    /// `TANDEM_TESTBED_KEEP=1`).
    pub fn run_dir(&self) -> &Path {
        &self.run_dir
    }

    fn link_index(&self, link: &str) -> Result<usize> {
        self.spec
            .links
            .iter()
            .position(|l| l == link)
            .with_context(|| {
                format!(
                    "no link `{link}` in this testbed (links: {})",
                    self.spec.links.join(", ")
                )
            })
    }

    /// Third octet of `link`'s subnet (`10.77.<n>.0/24`); an unknown link
    /// name falls back to the first link, as documented on the callers.
    fn subnet_octet(&self, link: &str) -> u8 {
        self.spec
            .links
            .iter()
            .position(|l| l == link)
            .map_or(1, |i| i as u8 + 1)
    }

    /// Address of `node` on `link` (the first link's if `link` is unknown): `10.77.<link index + 1>.<10 + node>`.
    pub fn address(&self, node: usize, link: &str) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet_octet(link), 10 + node as u8)
    }

    /// The client's address on the first link.
    pub fn client_address(&self) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, 1, CLIENT_HOST)
    }

    /// A free address on `link` for a floating IP (`10.77.<n>.100`; the
    /// first link's if `link` is unknown).
    pub fn vip(&self, link: &str) -> Ipv4Addr {
        Ipv4Addr::new(10, 77, self.subnet_octet(link), 100)
    }

    /// MAC address of `node`'s interface on `link`.
    pub fn mac(&self, node: usize, link: &str) -> Result<String> {
        Ok(node_mac(self.link_index(link)?, node))
    }

    fn check_node(&self, node: usize) -> Result<()> {
        if node == 0 || node > self.spec.nodes {
            bail!(
                "no node n{node} in this testbed (n1 to n{})",
                self.spec.nodes
            );
        }
        Ok(())
    }

    /// Runs a short command inside `node` and returns its stdout.
    pub fn exec(&self, node: usize, program: &str, args: &[&str]) -> Result<String> {
        self.check_node(node)?;
        Ok(sys::run_in(&self.node_ns(node), program, args)?)
    }

    /// Runs a short command inside the client namespace.
    pub fn exec_client(&self, program: &str, args: &[&str]) -> Result<String> {
        Ok(sys::run_in(&self.client_ns(), program, args)?)
    }

    /// Starts a long-running process inside `node`: in its network namespace,
    /// its mount and UTS namespaces (one per node, made at its first spawn
    /// and again after a power-off), in its freezer cgroup, in a process
    /// group of its own, and killed if the test process dies. Output goes
    /// to `<run_dir>/n<node>-<program>.log`. Returns its PID.
    pub fn spawn(&self, node: usize, program: &str, args: &[&str]) -> Result<u32> {
        self.check_node(node)?;
        // One holder at a time per node: two spawns must not each make one.
        let mut holders = self
            .holders
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let alive = holders.get(&node).copied().filter(|&h| self.is_running(h));
        let holder = match alive {
            Some(h) => h,
            None => {
                let h = self.spawn_in(node, "sleep", &["infinity"], None)?;
                holders.insert(node, h);
                h
            }
        };
        drop(holders);
        let mnt = File::open(format!("/proc/{holder}/ns/mnt"))
            .with_context(|| format!("opening the mount namespace of n{node}"))?;
        let uts = File::open(format!("/proc/{holder}/ns/uts"))
            .with_context(|| format!("opening the UTS namespace of n{node}"))?;
        self.spawn_in(node, program, args, Some((&mnt, &uts)))
    }

    /// [`Testbed::spawn`], joining the node's mount and UTS namespaces
    /// `join` or, without them, making new ones: a hostname of the node's,
    /// and the machine's mounts (as a slave) with the node's own
    /// directories bound over them.
    fn spawn_in(
        &self,
        node: usize,
        program: &str,
        args: &[&str],
        join: Option<(&File, &File)>,
    ) -> Result<u32> {
        let join_fds = join.map(|(m, u)| (m.as_raw_fd(), u.as_raw_fd()));
        // Joining a mount namespace moves the process to its root: the
        // working directory is restored after, so that relative paths (a
        // program, a config) mean what they meant to the caller.
        let cwd = File::open(".").context("opening the working directory")?;
        let cwd_fd = cwd.as_raw_fd();
        let ns = File::open(netns_path(&self.node_ns(node)))
            .with_context(|| format!("opening namespace of n{node}"))?;
        let procs = OpenOptions::new()
            .write(true)
            .open(self.cgroups[node - 1].procs_file())
            .with_context(|| format!("opening the cgroup of n{node}"))?;
        let log_path = self
            .run_dir
            .join(format!("n{node}-{}.log", sanitize(program)));
        let log = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log_path)
            .with_context(|| format!("creating {}", log_path.display()))?;
        let (ns_fd, procs_fd) = (ns.as_raw_fd(), procs.as_raw_fd());
        // A node of its own: its hostname, and a mount namespace where the
        // resource agents' state directory is the node's (agents keep
        // their state in /run/resource-agents and ask `uname -n` who they
        // are; on one machine the nodes would otherwise share both), and
        // so is every directory a test asked for ([`Testbed::own_dir`]).
        let dirs: Vec<PathBuf> = self
            .own_dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone();
        let mut binds: Vec<(CString, CString)> = Vec::new();
        for d in &dirs {
            let own = self.node_dir(node, d);
            std::fs::create_dir_all(&own).with_context(|| format!("creating {}", own.display()))?;
            std::fs::create_dir_all(d).with_context(|| format!("creating {}", d.display()))?;
            binds.push((
                CString::new(own.as_os_str().as_bytes())?,
                CString::new(d.as_os_str().as_bytes())?,
            ));
        }
        let root = CString::new("/")?;
        let hostname = format!("n{node}");
        let mut cmd = Command::new(program);
        cmd.args(args)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0);
        // SAFETY: only async-signal-safe calls (setns, fchdir, unshare, mount,
        // sethostname, write, prctl) on fds and strings made before fork,
        // which stay alive until after this closure.
        unsafe {
            cmd.pre_exec(move || {
                if libc::setns(ns_fd, libc::CLONE_NEWNET) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if let Some((mnt_fd, uts_fd)) = join_fds {
                    if libc::setns(mnt_fd, libc::CLONE_NEWNS) != 0
                        || libc::setns(uts_fd, libc::CLONE_NEWUTS) != 0
                        || libc::fchdir(cwd_fd) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::write(procs_fd, b"0\n".as_ptr().cast(), 2) < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    return Ok(());
                }
                if libc::unshare(libc::CLONE_NEWNS | libc::CLONE_NEWUTS) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // Slave: the machine's mounts still reach the node, the
                // node's own do not leak out.
                if libc::mount(
                    std::ptr::null(),
                    root.as_ptr(),
                    std::ptr::null(),
                    libc::MS_REC | libc::MS_SLAVE,
                    std::ptr::null(),
                ) != 0
                {
                    return Err(std::io::Error::last_os_error());
                }
                for (own, at) in &binds {
                    if libc::mount(
                        own.as_ptr(),
                        at.as_ptr(),
                        std::ptr::null(),
                        libc::MS_BIND,
                        std::ptr::null(),
                    ) != 0
                    {
                        return Err(std::io::Error::last_os_error());
                    }
                }
                if libc::sethostname(hostname.as_ptr().cast(), hostname.len()) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                if libc::write(procs_fd, b"0\n".as_ptr().cast(), 2) < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                // The testbed must not outlive the test that built it.
                if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                    return Err(std::io::Error::last_os_error());
                }
                Ok(())
            });
        }
        let child = cmd
            .spawn()
            .with_context(|| format!("starting `{program}` in n{node}"))?;
        let pid = child.id();
        drop((ns, procs, cwd));
        self.lock_children().insert(pid, child);
        Ok(pid)
    }

    /// Gives every node its own `dir` (an absolute path; nodes on one
    /// machine would otherwise share it): a test can then keep files "on a
    /// node". Only in nodes whose mount namespace is made from now on: call
    /// it before the first spawn (or after a node's power-off).
    pub fn own_dir(&self, dir: &Path) {
        self.own_dirs
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(dir.to_path_buf());
    }

    /// Where node `node`'s own copy of `dir` is, seen from the machine.
    pub fn node_dir(&self, node: usize, dir: &Path) -> PathBuf {
        let name = dir
            .to_string_lossy()
            .trim_start_matches('/')
            .replace('/', "-");
        self.run_dir.join(format!("n{node}-{name}"))
    }

    fn lock_children(&self) -> std::sync::MutexGuard<'_, BTreeMap<u32, Child>> {
        // A panic elsewhere while holding the lock leaves the map usable.
        self.children
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// True while a process started with [`Testbed::spawn`] has not exited.
    pub fn is_running(&self, pid: u32) -> bool {
        let mut children = self.lock_children();
        match children.get_mut(&pid) {
            Some(c) => matches!(c.try_wait(), Ok(None)),
            None => false,
        }
    }

    /// Kills a spawned process (and its process group) with SIGKILL and
    /// reaps it.
    pub fn kill9(&self, pid: u32) -> Result<ExitStatus> {
        self.signal_group(pid, libc::SIGKILL)?;
        self.wait(pid, Duration::from_secs(5))
    }

    /// Sends SIGTERM to a spawned process's group and waits up to `limit`;
    /// then SIGKILL. Returns how it ended.
    pub fn stop_gracefully(&self, pid: u32, limit: Duration) -> Result<ExitStatus> {
        self.signal_group(pid, libc::SIGTERM)?;
        match self.wait(pid, limit) {
            Ok(s) => Ok(s),
            Err(_) => self.kill9(pid),
        }
    }

    fn signal_group(&self, pid: u32, sig: i32) -> Result<()> {
        if !self.lock_children().contains_key(&pid) {
            bail!("PID {pid} was not started by this testbed");
        }
        // SAFETY: plain syscall; the group id is our child's own PID.
        if unsafe { libc::kill(-(pid as i32), sig) } != 0 {
            let e = std::io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::ESRCH) {
                bail!("signalling process group {pid}: {e}");
            }
        }
        Ok(())
    }

    fn wait(&self, pid: u32, limit: Duration) -> Result<ExitStatus> {
        let start = Instant::now();
        loop {
            {
                let mut children = self.lock_children();
                let child = children
                    .get_mut(&pid)
                    .with_context(|| format!("PID {pid} was not started by this testbed"))?;
                if let Some(status) = child.try_wait()? {
                    children.remove(&pid);
                    return Ok(status);
                }
            }
            if start.elapsed() > limit {
                bail!("PID {pid} still running after {limit:?}");
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Cuts every link of `node` (its switch ports go down, as if its
    /// cables were pulled or it lost power).
    pub fn cut_node(&self, node: usize) -> Result<()> {
        for l in self.spec.links.clone() {
            self.cut_link(node, &l)?;
        }
        Ok(())
    }

    /// Restores every link of `node`.
    pub fn restore_node(&self, node: usize) -> Result<()> {
        for l in self.spec.links.clone() {
            self.restore_link(node, &l)?;
        }
        Ok(())
    }

    /// Cuts one link of `node` at the switch; the node sees carrier loss.
    pub fn cut_link(&self, node: usize, link: &str) -> Result<()> {
        self.set_port(node, link, "down")
    }

    /// Restores one link of `node`.
    pub fn restore_link(&self, node: usize, link: &str) -> Result<()> {
        self.set_port(node, link, "up")
    }

    fn set_port(&self, node: usize, link: &str, state: &str) -> Result<()> {
        self.check_node(node)?;
        self.link_index(link)?;
        sys::ip(
            &self.switch_ns(),
            &["link", "set", &format!("n{node}-{link}"), state],
        )?;
        Ok(())
    }

    /// Drops every IP packet from `from` to `to` on all links (nftables in
    /// `to`'s namespace); the other direction still flows.
    pub fn drop_one_way(&self, from: usize, to: usize) -> Result<()> {
        self.check_node(from)?;
        self.check_node(to)?;
        let mut set = self
            .one_way
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.insert((from, to));
        self.apply_one_way(to, &set)
    }

    /// Removes a drop set by [`Testbed::drop_one_way`].
    pub fn heal_one_way(&self, from: usize, to: usize) -> Result<()> {
        let mut set = self
            .one_way
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        set.remove(&(from, to));
        self.apply_one_way(to, &set)
    }

    /// Rewrites `to`'s nftables table from the set of drops, atomically.
    fn apply_one_way(&self, to: usize, set: &BTreeSet<(usize, usize)>) -> Result<()> {
        let sources: Vec<String> = set
            .iter()
            .filter(|(_, t)| *t == to)
            .flat_map(|(f, _)| self.spec.links.iter().map(move |l| (*f, l.clone())))
            .map(|(f, l)| self.address(f, &l).to_string())
            .collect();
        let mut script = String::from("table inet tandem_testbed\ndelete table inet tandem_testbed\ntable inet tandem_testbed {\n  chain input {\n    type filter hook input priority -10; policy accept;\n");
        if !sources.is_empty() {
            script.push_str(&format!("    ip saddr {{ {} }} drop\n", sources.join(", ")));
        }
        script.push_str("  }\n}\n");
        sys::run_with_input(
            "ip",
            &["netns", "exec", &self.node_ns(to), "nft", "-f", "-"],
            Some(&script),
        )?;
        Ok(())
    }

    /// Adds delay, jitter and loss to `node`'s `link`, both directions.
    ///
    /// The kernel's `tc netem` is not available everywhere (it is not on
    /// this project's CI machine), so the switch port is rewired through a
    /// user-space [`Wire`]: node -> port -> wire -> `<port>b` -> bridge. The
    /// first call rewires, later calls only change the impairment.
    pub fn impair_link(&self, node: usize, link: &str, imp: Impairment) -> Result<()> {
        self.check_node(node)?;
        self.link_index(link)?;
        let sw = self.switch_ns();
        let port = format!("n{node}-{link}");
        let (w, b) = (format!("{port}w"), format!("{port}b"));
        let mut wires = self
            .wires
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let key = (node, link.to_string());
        if wires.remove(&key).is_none() {
            sys::ip(
                &sw,
                &["link", "add", &w, "type", "veth", "peer", "name", &b],
            )?;
            // Packet sockets see frames as the stack built them: no
            // offloaded checksums or segmentation may cross the wire.
            for dev in [&port, &w, &b] {
                disable_offloads(&sw, dev)?;
            }
            disable_offloads(&self.node_ns(node), link)?;
            sys::ip(&sw, &["link", "set", &port, "nomaster"])?;
            sys::ip(
                &sw,
                &["link", "set", &b, "master", &format!("br-{link}"), "up"],
            )?;
            sys::ip(&sw, &["link", "set", &w, "up"])?;
        }
        wires.insert(key, Wire::start(&sw, &port, &w, imp)?);
        Ok(())
    }

    /// Removes the impairment of `node`'s `link` (no-op when there is none).
    pub fn clear_impairment(&self, node: usize, link: &str) -> Result<()> {
        self.check_node(node)?;
        self.link_index(link)?;
        let mut wires = self
            .wires
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if wires.remove(&(node, link.to_string())).is_none() {
            return Ok(());
        }
        let sw = self.switch_ns();
        let port = format!("n{node}-{link}");
        sys::ip(&sw, &["link", "del", &format!("{port}w")])?;
        sys::ip(
            &sw,
            &["link", "set", &port, "master", &format!("br-{link}")],
        )?;
        Ok(())
    }

    /// Freezes every process of `node` (cgroup freezer).
    pub fn freeze(&self, node: usize) -> Result<()> {
        self.check_node(node)?;
        self.cgroups[node - 1]
            .freeze()
            .with_context(|| format!("freezing n{node}"))
    }

    /// Thaws every process of `node`.
    pub fn thaw(&self, node: usize) -> Result<()> {
        self.check_node(node)?;
        self.cgroups[node - 1]
            .thaw()
            .with_context(|| format!("thawing n{node}"))
    }

    /// PIDs currently in `node`'s cgroup.
    pub fn node_pids(&self, node: usize) -> Result<Vec<i32>> {
        self.check_node(node)?;
        Ok(self.cgroups[node - 1].pids())
    }

    /// Tears everything down now, reporting the first problem.
    pub fn teardown(mut self) -> Result<()> {
        self.teardown_inner()
    }

    fn teardown_inner(&mut self) -> Result<()> {
        if self.torn_down {
            return Ok(());
        }
        self.torn_down = true;
        for cg in &self.cgroups {
            let _ = cg.thaw();
        }
        self.wires
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clear();
        let pids: Vec<u32> = self.lock_children().keys().copied().collect();
        for pid in pids {
            let _ = self.kill9(pid);
        }
        let result = sweep::remove_run(&self.id);
        if std::env::var_os("TANDEM_TESTBED_KEEP").is_none() {
            let _ = std::fs::remove_dir_all(&self.run_dir);
        }
        result
    }
}

impl Drop for Testbed {
    fn drop(&mut self) {
        if let Err(e) = self.teardown_inner() {
            eprintln!(
                "testbed {}: tear-down incomplete: {e:#}; `tandem-testbed sweep` removes the rest",
                self.id
            );
        }
    }
}

fn disable_offloads(ns: &str, dev: &str) -> Result<()> {
    let off = [
        "-K", dev, "tx", "off", "tso", "off", "gso", "off", "gro", "off",
    ];
    sys::run_in(ns, "ethtool", &off)?;
    Ok(())
}

fn add_netns(name: &str) -> Result<()> {
    run("ip", &["netns", "add", name])?;
    sys::ip(name, &["link", "set", "lo", "up"])?;
    Ok(())
}

/// Locally administered MACs that say which node and link they belong to.
fn node_mac(link_index: usize, node: usize) -> String {
    format!("02:74:62:{:02x}:{:02x}:01", link_index, node)
}

fn client_mac() -> String {
    "02:74:62:00:fe:01".to_string()
}

fn sanitize(program: &str) -> String {
    Path::new(program)
        .file_name()
        .map(|f| {
            f.to_string_lossy()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .collect()
        })
        .unwrap_or_else(|| "proc".into())
}
