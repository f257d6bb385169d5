//! `bench/run web`: brief scenario 3, the classic web cluster, under
//! Tandem and under Pacemaker 2.1.5 + Corosync 3.1.7 (Debian's), side by
//! side in one run and on the same parts: two testbed nodes, Debian's
//! `ocf:heartbeat:IPaddr2` holding the floating address and
//! `ocf:heartbeat:apache` serving each node's own page, with the same
//! check intervals (address 1 s, apache 2 s), and the same fence agent
//! (Debian's `fence_dummy`: the node is already off when the cluster
//! fences it) with the same 1 s head start for the preferred node n1.
//! Corosync runs with token 300 ms and `udpu`, as the issue asks
//! (`../shared/ANCHORS.md`: with knet and token 300 it re-formed every
//! ~9 s here); each Pacemaker node has its own mount namespace with
//! private `/etc/corosync`, `/var/lib/{corosync,pacemaker}`,
//! `/var/log/pacemaker`, `/run` and `/dev/shm`.
//!
//! A client in the client namespace GETs the page every 5 ms. Faults,
//! `runs` of each: a *crash* (the holder powered off by the testbed's
//! switch: ports down, every process killed, nothing told to either
//! cluster) and a *planned move* (`tandem failover web`;
//! `crm_resource --move` then `--clear`). The figure is the longest gap
//! the client saw, from the fault to the page answering from the other
//! node. After a crash the node is powered on and its stack started
//! again before the next run. Idle cost: CPU (own and reaped children's,
//! so the checks' scripts count) and RSS of every process of both nodes,
//! apache included, over a window after settling.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tandem_testbed::agents::{all_online, AgentCluster, ClusterShape, APACHE_CONF};
use tandem_testbed::checker::{analyze, CheckOptions, ProbeKind};
use tandem_testbed::prober::{ProbeSpec, Prober};
use tandem_testbed::{Testbed, TestbedSpec};

/// Where the page is served.
const HTTP_PORT: u16 = 80;
/// Longest wait for a failover, a settle or a stack's start.
const LIMIT: Duration = Duration::from_secs(90);
/// After a crashed node's stack is started again, before the next run.
/// A testbed artifact happens meanwhile: the nodes share the machine's
/// PID namespace, and apache's agent stops apache by pattern (`pkill -f
/// "$HTTPD.*$CONFIGFILE"`, the same on both nodes), so the start-up
/// cleanup of a restarted Tandem agent (its guard stops what may have run)
/// kills the holder's apache too; Tandem's check restarts it within
/// seconds, and the bench then clears the fail count it left (on separate
/// machines neither happens). Pacemaker probes instead of stopping.
const SETTLE_AFTER_RESTART: Duration = Duration::from_secs(5);
/// Fencing the preferred node waits this long (both stacks), so that it
/// wins a fence race.
const N1_FENCE_DELAY_MS: u64 = 1_000;

/// What is done to the holder.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Powered off by the testbed's switch.
    Crash,
    /// Moved by the operator's command.
    Planned,
}

/// What one stack measured.
#[derive(Debug, Default)]
pub struct Figures {
    /// Client-seen outage of each crash, ms.
    pub crash_ms: Vec<u64>,
    /// Client-seen outage of each planned move, ms.
    pub planned_ms: Vec<u64>,
    /// Dual-active instants over all runs.
    pub dual: usize,
    /// Idle CPU of both nodes together, % of one core.
    pub idle_cpu_pct: f64,
    /// Idle RSS of both nodes together, MiB.
    pub idle_rss_mib: f64,
    /// Processes on both nodes when idle.
    pub idle_processes: usize,
    /// Runs that failed, each with why.
    pub failed: Vec<String>,
}

/// One stack as the measuring loop drives it.
trait Stack {
    fn name(&self) -> &'static str;
    fn bed(&self) -> &Testbed;
    /// The node running the group, as the stack says (None: none, or
    /// it cannot tell right now).
    fn holder(&self) -> Option<usize>;
    /// Both nodes are members and the group runs.
    fn settled(&self) -> bool;
    /// The operator moves the group from `from` to `to`.
    fn planned_move(&self, from: usize, to: usize) -> Result<()>;
    /// After a planned move has landed (Pacemaker: drop the constraint).
    fn after_move(&self) -> Result<()>;
    /// Starts node `n`'s stack again after a power-off.
    fn restart(&mut self, n: usize) -> Result<()>;
    /// What the stack logged, for a run that failed.
    fn logs(&self) -> String;
    /// After a restarted node settled: Tandem clears the group's fail
    /// counts (see [`SETTLE_AFTER_RESTART`]); Pacemaker has nothing to do.
    fn after_restart(&self) -> Result<()> {
        Ok(())
    }
}

fn wait_for(what: &str, limit: Duration, mut ok: impl FnMut() -> bool) -> Result<Duration> {
    let t0 = Instant::now();
    while t0.elapsed() < limit {
        if ok() {
            return Ok(t0.elapsed());
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    bail!("{what}: not within {limit:?}")
}

/// The testbed's power switch, as its fence device drives it.
fn power(bed: &Testbed, n: usize, action: &str) -> Result<()> {
    let (code, said) = tandem_testbed::fence::agent(&format!(
        "action={action}\nplug=n{n}\ntestbed={}\n",
        bed.id()
    ));
    if code != 0 {
        bail!("power {action} n{n}: {said}");
    }
    Ok(())
}

/// Each node's page, naming it, under `www(n)`.
fn write_pages(www: impl Fn(usize) -> PathBuf) -> Result<()> {
    for n in 1..=2 {
        let d = www(n);
        std::fs::create_dir_all(&d).with_context(|| format!("creating {}", d.display()))?;
        std::fs::write(d.join("index.html"), format!("n{n}\n"))?;
    }
    Ok(())
}

/// Most runs of one fault that may fail (the group not moved, or the
/// page not answering from the new holder) before the benchmark stops.
const MAX_FAILED_RUNS: usize = 3;

/// Runs `runs` of `fault` against `stack`, adding to `fig`. A run that
/// fails is counted, its reason printed and the stack's logs saved under
/// `logs`; the node is restored and the next run goes on (at most
/// [`MAX_FAILED_RUNS`]).
fn measure(
    stack: &mut dyn Stack,
    fault: Fault,
    runs: usize,
    fig: &mut Figures,
    logs: &Path,
) -> Result<()> {
    let target = SocketAddr::new(stack.bed().vip("lan").into(), HTTP_PORT);
    let mut failed = 0;
    for run in 1..=runs {
        wait_for("settled", LIMIT, || stack.settled())
            .with_context(|| format!("{} before {fault:?} run {run}", stack.name()))?;
        let Some(old) = stack.holder() else {
            bail!("{}: no holder before run {run}", stack.name());
        };
        // Each run starts from a page answering from the holder, three
        // times in a row: a restarted node may still be cleaning up.
        let url = format!("http://{}:{HTTP_PORT}/", stack.bed().vip("lan"));
        let mut good = 0;
        wait_for("the page answering from the holder", LIMIT, || {
            let page = stack
                .bed()
                .exec_client("curl", &["-s", "-m", "1", &url])
                .unwrap_or_default();
            good = if page.trim() == format!("n{old}") {
                good + 1
            } else {
                0
            };
            good >= 3
        })
        .with_context(|| {
            let file = logs.join(format!("{}-{fault:?}-before-run{run}.log", stack.name()));
            let _ = std::fs::write(&file, stack.logs());
            format!(
                "{} before {fault:?} run {run} (logs in {})",
                stack.name(),
                file.display()
            )
        })?;
        let other = 3 - old;
        let prober = Prober::start(
            &stack.bed().client_ns(),
            ProbeSpec {
                http_port: Some(HTTP_PORT),
                ..ProbeSpec::new(target, 180_000)
            },
        )?;
        std::thread::sleep(Duration::from_millis(300 + (run as u64 * 17) % 50));
        match fault {
            Fault::Crash => power(stack.bed(), old, "off")?,
            Fault::Planned => stack.planned_move(old, other)?,
        }
        let moved = wait_for("the group on the other node", LIMIT, || {
            stack.holder() == Some(other)
        });
        // The page must answer again before the prober stops.
        std::thread::sleep(Duration::from_millis(1_500));
        let log = prober.stop()?;
        let report = analyze(&log.records, CheckOptions::default());
        let dual = report.dual_active().count();
        fig.dual += dual;
        let last = log.records.iter().rev().find_map(|r| r.responder.clone());
        let outcome = match moved {
            Err(e) => Err(format!("{e:#}")),
            Ok(_) if last.as_deref() != Some(format!("n{other}").as_str()) => Err(format!(
                "the page did not come from n{other} at the end ({last:?})"
            )),
            Ok(_) => Ok(report.kind(ProbeKind::Tcp).max_gap_ms().round() as u64),
        };
        match outcome {
            Ok(gap) => {
                eprintln!(
                    "{} {fault:?} run {run}: n{old} -> n{other}, outage {gap} ms, dual-active {dual}",
                    stack.name()
                );
                match fault {
                    Fault::Crash => fig.crash_ms.push(gap),
                    Fault::Planned => fig.planned_ms.push(gap),
                }
            }
            Err(why) => {
                failed += 1;
                fig.failed.push(format!("{fault:?} run {run}: {why}"));
                let file = logs.join(format!("{}-{fault:?}-run{run}.log", stack.name()));
                let _ = std::fs::write(&file, stack.logs());
                eprintln!(
                    "{} {fault:?} run {run}: FAILED: {why} (dual-active {dual}; logs in {})",
                    stack.name(),
                    file.display()
                );
            }
        }
        match fault {
            Fault::Crash => {
                power(stack.bed(), old, "on")?;
                stack.restart(old)?;
                // The restarted node settles (Tandem's guard stops what its
                // previous lease listed) before the next run.
                std::thread::sleep(SETTLE_AFTER_RESTART);
                stack.after_restart()?;
            }
            Fault::Planned => stack.after_move()?,
        }
        if failed > MAX_FAILED_RUNS {
            bail!(
                "{} {fault:?}: {failed} runs failed: {:?}",
                stack.name(),
                fig.failed
            );
        }
    }
    Ok(())
}

/// CPU (% of one core) and RSS (MiB) of every process of nodes 1 and 2
/// over `seconds`, and how many there are. Only processes that lived
/// through the window count: a check script that ran and was reaped is in
/// its parent's children's time.
fn idle(bed: &Testbed, seconds: u64) -> Result<(f64, f64, usize)> {
    let sample = || -> Result<std::collections::BTreeMap<u32, u64>> {
        let mut m = std::collections::BTreeMap::new();
        for n in 1..=2 {
            for p in bed.node_pids(n)? {
                if let Ok((own, children)) = crate::idle::ticks(p as u32) {
                    m.insert(p as u32, own + children);
                }
            }
        }
        Ok(m)
    };
    let before = sample()?;
    let w0 = Instant::now();
    std::thread::sleep(Duration::from_secs(seconds));
    let after = sample()?;
    let window_s = w0.elapsed().as_secs_f64();
    let ticks: u64 = after
        .iter()
        .filter_map(|(p, t1)| Some(t1.saturating_sub(*before.get(p)?)))
        .sum();
    let hz = crate::clock_ticks_per_second().max(1) as f64;
    let cpu = ticks as f64 / hz / window_s * 100.0;
    let rss_kib: u64 = after
        .keys()
        .filter_map(|p| crate::idle::rss_kib(*p).ok())
        .sum();
    Ok((cpu, rss_kib as f64 / 1024.0, after.len()))
}

// ---------------------------------------------------------------- Tandem

struct TandemStack {
    c: AgentCluster,
    tandem: PathBuf,
}

fn web_on(s: &serde_json::Value) -> Option<usize> {
    tandem_testbed::agents::running_on(s, "web")
}

impl TandemStack {
    fn start(tandem: &Path, dir: &Path) -> Result<TandemStack> {
        let conf = dir.join("apache-tandem.conf");
        std::fs::write(&conf, APACHE_CONF)?;
        let extra = format!(
            r#"
[[fence_device]]
name = "power-n1"
agent = "/usr/sbin/fence_dummy"
hosts = {{ n1 = "n1" }}
delay_ms = {N1_FENCE_DELAY_MS}
options = {{ type = "file", status_file = "{d}/fence-n1.status" }}

[[fence_device]]
name = "power-n2"
agent = "/usr/sbin/fence_dummy"
hosts = {{ n2 = "n2" }}
options = {{ type = "file", status_file = "{d}/fence-n2.status" }}

"#,
            d = dir.display(),
        ) + &tandem_testbed::agents::ocf_web_group_config("10.77.1.100", &conf, None);
        let shape = ClusterShape {
            extra,
            ..ClusterShape::nodes(2)
        };
        let mut c = AgentCluster::prepare(tandem, &shape)?;
        write_pages(|n| {
            c.bed
                .node_dir(n, Path::new("/run/resource-agents"))
                .join("www")
        })?;
        c.start_members()?;
        Ok(TandemStack {
            c,
            tandem: tandem.to_path_buf(),
        })
    }
}

impl Stack for TandemStack {
    fn name(&self) -> &'static str {
        "tandem"
    }

    fn bed(&self) -> &Testbed {
        &self.c.bed
    }

    fn holder(&self) -> Option<usize> {
        (1..=2).find_map(|n| self.c.status(n).and_then(|s| web_on(&s)))
    }

    fn settled(&self) -> bool {
        (1..=2).all(|n| {
            self.c
                .status(n)
                .is_some_and(|s| all_online(&s) && web_on(&s).is_some())
        })
    }

    fn planned_move(&self, from: usize, _to: usize) -> Result<()> {
        let out = Command::new(&self.tandem)
            .args(["failover", "web", "--socket"])
            .arg(self.c.socket(from))
            .output()
            .context("running tandem failover")?;
        if !out.status.success() {
            bail!(
                "tandem failover web: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }

    fn after_move(&self) -> Result<()> {
        Ok(())
    }

    fn restart(&mut self, n: usize) -> Result<()> {
        self.c.pids[n - 1] = self.c.spawn_agent(n)?;
        Ok(())
    }

    fn logs(&self) -> String {
        self.c.logs()
    }

    fn after_restart(&self) -> Result<()> {
        let live = (1..=2)
            .find(|n| self.c.status(*n).is_some())
            .context("no Tandem agent answers")?;
        let out = Command::new(&self.tandem)
            .args(["cleanup", "web", "--socket"])
            .arg(self.c.socket(live))
            .output()
            .context("running tandem cleanup")?;
        if !out.status.success() {
            bail!(
                "tandem cleanup web: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(())
    }
}

// ------------------------------------------------------------- Pacemaker

struct PacemakerStack {
    bed: Testbed,
    dir: tempfile::TempDir,
    /// Per node, the process whose namespaces the tools enter.
    pids: Vec<u32>,
}

fn corosync_conf(bed: &Testbed, token_ms: u64) -> String {
    let mut nodes = String::new();
    for n in 1..=2 {
        nodes += &format!(
            "  node {{\n    ring0_addr: {}\n    nodeid: {n}\n    name: n{n}\n  }}\n",
            bed.address(n, "lan")
        );
    }
    format!(
        "totem {{\n  version: 2\n  cluster_name: tbweb\n  transport: udpu\n  token: {token_ms}\n  crypto_cipher: none\n  crypto_hash: none\n}}\n\
nodelist {{\n{nodes}}}\n\
quorum {{\n  provider: corosync_votequorum\n  two_node: 1\n}}\n\
logging {{\n  to_stderr: yes\n  to_logfile: no\n  to_syslog: no\n  timestamp: hires\n}}\n"
    )
}

/// The resources, as `cibadmin` takes them: the two fence devices (n1's
/// with the same head start as Tandem's) and group `web`.
fn cib_resources(dir: &Path, conf: &Path) -> String {
    let d = dir.display();
    let c = conf.display();
    format!(
        r#"<resources>
  <primitive id="power-n1" class="stonith" type="fence_dummy">
    <instance_attributes id="power-n1-ia">
      <nvpair id="power-n1-hl" name="pcmk_host_list" value="n1"/>
      <nvpair id="power-n1-delay" name="pcmk_delay_base" value="{N1_FENCE_DELAY_MS}ms"/>
      <nvpair id="power-n1-type" name="type" value="file"/>
      <nvpair id="power-n1-sf" name="status_file" value="{d}/pcmk-fence-n1.status"/>
    </instance_attributes>
  </primitive>
  <primitive id="power-n2" class="stonith" type="fence_dummy">
    <instance_attributes id="power-n2-ia">
      <nvpair id="power-n2-hl" name="pcmk_host_list" value="n2"/>
      <nvpair id="power-n2-type" name="type" value="file"/>
      <nvpair id="power-n2-sf" name="status_file" value="{d}/pcmk-fence-n2.status"/>
    </instance_attributes>
  </primitive>
  <group id="web">
    <primitive id="vip" class="ocf" provider="heartbeat" type="IPaddr2">
      <instance_attributes id="vip-ia">
        <nvpair id="vip-ip" name="ip" value="10.77.1.100"/>
        <nvpair id="vip-nm" name="cidr_netmask" value="24"/>
      </instance_attributes>
      <operations>
        <op id="vip-mon" name="monitor" interval="1s" timeout="20s"/>
      </operations>
    </primitive>
    <primitive id="apache" class="ocf" provider="heartbeat" type="apache">
      <instance_attributes id="apache-ia">
        <nvpair id="apache-cf" name="configfile" value="{c}"/>
        <nvpair id="apache-httpd" name="httpd" value="/usr/sbin/apache2"/>
        <nvpair id="apache-su" name="statusurl" value="http://127.0.0.1/server-status"/>
      </instance_attributes>
      <operations>
        <op id="apache-mon" name="monitor" interval="2s" timeout="20s"/>
      </operations>
    </primitive>
  </group>
</resources>"#
    )
}

impl PacemakerStack {
    fn start(dir_base: &Path, token_ms: u64) -> Result<PacemakerStack> {
        for p in [
            "/usr/sbin/pacemakerd",
            "/usr/sbin/corosync",
            "/usr/sbin/fence_dummy",
        ] {
            if !Path::new(p).exists() {
                bail!("{p} is missing: apt-get install -y pacemaker corosync fence-agents (bench/run does)");
            }
        }
        let bed = Testbed::new(TestbedSpec {
            nodes: 2,
            links: vec!["lan".into(), "sync".into()],
        })?;
        let dir = tempfile::Builder::new()
            .prefix("pcmk-")
            .tempdir_in(dir_base)?;
        let conf = dir.path().join("apache-pcmk.conf");
        std::fs::write(&conf, APACHE_CONF)?;
        let corosync = corosync_conf(&bed, token_ms);
        for n in 1..=2 {
            let root = dir.path().join(format!("n{n}"));
            for sub in [
                "etc-corosync",
                "lib-corosync",
                "lib-pacemaker/cib",
                "lib-pacemaker/pengine",
                "lib-pacemaker/blackbox",
                "lib-pacemaker/cores",
                "log-pacemaker",
                "run/resource-agents",
            ] {
                std::fs::create_dir_all(root.join(sub))?;
            }
            std::fs::write(root.join("etc-corosync/corosync.conf"), &corosync)?;
            let r = root.display().to_string();
            let chown = Command::new("chown")
                .args(["-R", "hacluster:haclient"])
                .arg(format!("{r}/lib-pacemaker"))
                .arg(format!("{r}/log-pacemaker"))
                .status()?;
            if !chown.success() {
                bail!("chown hacluster:haclient failed (is pacemaker installed?)");
            }
        }
        write_pages(|n| dir.path().join(format!("n{n}/run/resource-agents/www")))?;
        let mut s = PacemakerStack {
            bed,
            dir,
            pids: vec![0, 0],
        };
        for n in 1..=2 {
            s.restart(n)?;
        }
        wait_for("both Pacemaker nodes online", LIMIT, || s.online() == 2)?;
        let resources = cib_resources(s.dir.path(), &conf);
        for (t, name, value) in [
            ("crm_config", "stonith-enabled", "true"),
            ("rsc_defaults", "resource-stickiness", "100"),
        ] {
            s.tool(
                1,
                "crm_attribute",
                &["--type", t, "--name", name, "--update", value],
            )?;
        }
        s.tool(
            1,
            "cibadmin",
            &[
                "--replace",
                "--scope",
                "resources",
                "--xml-text",
                &resources,
            ],
        )?;
        Ok(s)
    }

    /// Runs a Pacemaker tool in node `n`'s namespaces.
    fn tool(&self, n: usize, program: &str, args: &[&str]) -> Result<String> {
        let out = Command::new("nsenter")
            .args([
                "--target",
                &self.pids[n - 1].to_string(),
                "--mount",
                "--net",
                "--uts",
                "--",
            ])
            .arg(program)
            .args(args)
            .output()
            .with_context(|| format!("running {program} in n{n}"))?;
        if !out.status.success() {
            bail!(
                "{program} {args:?} in n{n} exited {}: {}",
                out.status,
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Nodes online as a live node's `crm_mon` says.
    fn online(&self) -> usize {
        (1..=2)
            .filter(|n| self.bed.is_running(self.pids[n - 1]))
            .find_map(|n| self.tool(n, "crm_mon", &["-1", "--output-as=xml"]).ok())
            .map_or(0, |xml| xml.matches(" online=\"true\"").count())
    }
}

impl Stack for PacemakerStack {
    fn name(&self) -> &'static str {
        "pacemaker"
    }

    fn bed(&self) -> &Testbed {
        &self.bed
    }

    fn holder(&self) -> Option<usize> {
        let said = (1..=2)
            .filter(|n| self.bed.is_running(self.pids[n - 1]))
            .find_map(|n| {
                self.tool(n, "crm_resource", &["--locate", "--resource", "web"])
                    .ok()
            })?;
        // "resource web is running on: n2"; two lines would be two nodes.
        let mut on = said
            .lines()
            .filter_map(|l| l.rsplit_once("running on: "))
            .filter_map(|(_, n)| n.trim().strip_prefix('n')?.parse().ok());
        let first = on.next()?;
        on.next().is_none().then_some(first)
    }

    fn settled(&self) -> bool {
        self.online() == 2 && self.holder().is_some()
    }

    fn planned_move(&self, from: usize, to: usize) -> Result<()> {
        self.tool(
            from,
            "crm_resource",
            &["--move", "--resource", "web", "--node", &format!("n{to}")],
        )?;
        Ok(())
    }

    fn after_move(&self) -> Result<()> {
        let live = (1..=2)
            .find(|n| self.bed.is_running(self.pids[n - 1]))
            .context("no Pacemaker node runs")?;
        self.tool(live, "crm_resource", &["--clear", "--resource", "web"])?;
        Ok(())
    }

    fn logs(&self) -> String {
        (1..=2)
            .map(|n| {
                let f = self
                    .dir
                    .path()
                    .join(format!("n{n}/log-pacemaker/pacemaker.log"));
                format!(
                    "== n{n}: {}\n{}\n",
                    f.display(),
                    std::fs::read_to_string(&f).unwrap_or_default()
                )
            })
            .collect()
    }

    fn restart(&mut self, n: usize) -> Result<()> {
        let r = self.dir.path().join(format!("n{n}")).display().to_string();
        // Corosync first; Pacemaker once corosync answers (both in one
        // private mount namespace: they meet in /dev/shm).
        let script = format!(
            "set -e; mkdir -p /var/log/pacemaker /var/lib/corosync /var/lib/pacemaker; mount --bind {r}/etc-corosync /etc/corosync; \
             mount --bind {r}/lib-corosync /var/lib/corosync; \
             mount --bind {r}/lib-pacemaker /var/lib/pacemaker; \
             mount --bind {r}/log-pacemaker /var/log/pacemaker; \
             mount --bind {r}/run /run; mount -t tmpfs -o mode=1777 tmpfs /dev/shm; \
             corosync -f & \
             i=0; until corosync-cfgtool -s >/dev/null 2>&1; do i=$((i+1)); [ $i -lt 200 ] || exit 1; sleep 0.05; done; \
             export PCMK_logfile=/var/log/pacemaker/pacemaker.log; exec pacemakerd"
        );
        self.pids[n - 1] = self.bed.spawn(
            n,
            "unshare",
            &["--mount", "--propagation", "private", "sh", "-c", &script],
        )?;
        Ok(())
    }
}

/// Both stacks, `runs` crashes and `runs` planned moves each, and
/// `idle_s` seconds of idle measurement each.
pub fn run(
    tandem: &Path,
    runs: usize,
    idle_s: u64,
    token_ms: u64,
    logs: &Path,
    only: Option<&str>,
) -> Result<Vec<(&'static str, Figures)>> {
    std::fs::create_dir_all(logs).with_context(|| format!("creating {}", logs.display()))?;
    let base = tempfile::tempdir()?;
    let mut out = Vec::new();
    if only.map_or(true, |o| o == "tandem") {
        let mut s = TandemStack::start(tandem, base.path())?;
        wait_for("tandem settled", LIMIT, || s.settled())?;
        let mut fig = Figures::default();
        let (cpu, rss, procs) = idle(s.bed(), idle_s)?;
        (fig.idle_cpu_pct, fig.idle_rss_mib, fig.idle_processes) = (cpu, rss, procs);
        measure(&mut s, Fault::Planned, runs, &mut fig, logs)?;
        measure(&mut s, Fault::Crash, runs, &mut fig, logs)?;
        out.push(("tandem", fig));
    }
    if only.map_or(true, |o| o == "pacemaker") {
        let mut s = PacemakerStack::start(base.path(), token_ms)?;
        wait_for("pacemaker settled", LIMIT, || s.settled())?;
        let mut fig = Figures::default();
        let (cpu, rss, procs) = idle(s.bed(), idle_s)?;
        (fig.idle_cpu_pct, fig.idle_rss_mib, fig.idle_processes) = (cpu, rss, procs);
        measure(&mut s, Fault::Planned, runs, &mut fig, logs)?;
        measure(&mut s, Fault::Crash, runs, &mut fig, logs)?;
        out.push(("pacemaker", fig));
    }
    Ok(out)
}
