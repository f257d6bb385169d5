//! Real `tandem agent` (and `tandem witness`) processes on a [`Testbed`]:
//! the configuration, key and per-member state directories they need, and
//! polling of their status. Shared by the testbed tests, the benchmarks and
//! `tandem demo`.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::{Testbed, TestbedSpec};

/// Poll interval of [`AgentCluster::wait`].
const POLL_MS: u64 = 20;

/// What cluster to start.
#[derive(Debug, Clone)]
pub struct ClusterShape {
    /// Agents (nodes n1..nN).
    pub nodes: usize,
    /// Add a witness, run in testbed node N+1, on the `lan` link, port 5406.
    pub witness: bool,
    /// Timing profile name (`default`, `relaxed`, `wan`).
    pub profile: String,
    /// Extra TOML appended to the configuration (resources, groups, ...);
    /// `@TESTBED_ID@` is replaced by the run's id (for the testbed fence
    /// device).
    pub extra: String,
}

impl ClusterShape {
    /// `nodes` agents, default profile, two-node mode for two nodes.
    pub fn nodes(nodes: usize) -> Self {
        ClusterShape {
            nodes,
            witness: false,
            profile: "default".into(),
            extra: String::new(),
        }
    }
}

/// A running cluster of agents on its own testbed.
pub struct AgentCluster {
    /// The testbed (dropped last: tears everything down).
    pub bed: Testbed,
    dir: tempfile::TempDir,
    binary: PathBuf,
    /// The cluster key.
    pub key: [u8; 32],
    /// Agent process ids by member (index 0 is n1).
    pub pids: Vec<u32>,
    /// Member number of the witness, if any.
    pub witness: Option<usize>,
}

impl AgentCluster {
    /// Builds a testbed with links `lan` and `sync`, writes the
    /// configuration and starts every member with `binary`.
    pub fn start(binary: impl Into<PathBuf>, shape: &ClusterShape) -> Result<AgentCluster> {
        let mut c = AgentCluster::prepare(binary, shape)?;
        c.start_members()?;
        Ok(c)
    }

    /// Starts every member not started yet (after [`AgentCluster::prepare`]).
    pub fn start_members(&mut self) -> Result<()> {
        let members = self.bed.nodes();
        for n in self.pids.len() + 1..=members {
            let pid = self.spawn_agent(n)?;
            self.pids.push(pid);
        }
        Ok(())
    }

    /// Creates both copies of `volume` with `tandem volume create` (before
    /// [`AgentCluster::start_members`]); member `source` holds the data.
    pub fn create_volume_copies(&self, volume: &str, source: usize) -> Result<()> {
        for n in [1, 2] {
            let mut cmd = Command::new(&self.binary);
            cmd.args(["volume", "create", volume, "--config"])
                .arg(self.config_path())
                .args(["--node", &format!("n{n}"), "--state-dir"])
                .arg(self.state_dir(n));
            if n == source {
                cmd.arg("--source");
            }
            let out = cmd.output().context("running tandem volume create")?;
            if !out.status.success() {
                bail!(
                    "tandem volume create {volume} on n{n}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
            }
        }
        Ok(())
    }

    /// Member `n`'s state directory.
    pub fn state_dir(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("state-n{n}"))
    }

    /// The cluster's scratch directory (removed with the cluster).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Like [`AgentCluster::start`] but starts no member: the caller can
    /// prepare state first (volume metadata), then call
    /// [`AgentCluster::start_members`].
    pub fn prepare(binary: impl Into<PathBuf>, shape: &ClusterShape) -> Result<AgentCluster> {
        let members = shape.nodes + usize::from(shape.witness);
        let bed = Testbed::new(TestbedSpec {
            nodes: members,
            links: vec!["lan".into(), "sync".into()],
        })?;
        // State, configuration and logs on tmpfs where there is one: the
        // agents' own small writes then never queue behind the journal of
        // a filesystem that a test's volume fills with writeback (that is
        // the deployment CONFIG.md recommends: state directory and volume
        // backing stores on different filesystems).
        let shm = Path::new("/dev/shm");
        let dir = if shm.is_dir() {
            tempfile::tempdir_in(shm)
        } else {
            tempfile::tempdir()
        }
        .context("creating the cluster's directory")?;
        let key = [0x42u8; 32];
        let key_path = dir.path().join("cluster.key");
        std::fs::write(&key_path, key).context("writing the key")?;
        std::fs::set_permissions(&key_path, std::fs::Permissions::from_mode(0o600))?;
        let mut cfg = format!(
            "[cluster]\nname = \"tb\"\nkey_file = \"cluster.key\"\n\n[timing]\nprofile = \"{}\"\n\n",
            shape.profile
        );
        if shape.witness {
            cfg += &format!(
                "[quorum]\nwitness = \"{}:5406\"\n\n",
                bed.address(members, "lan")
            );
        } else if shape.nodes == 2 {
            cfg += "[quorum]\ntwo_node = true\n\n";
        }
        for (i, l) in ["lan", "sync"].iter().enumerate() {
            cfg += &format!(
                "[[link]]\nname = \"{l}\"\nsubnet = \"10.77.{}.0/24\"\n\n",
                i + 1
            );
        }
        for n in 1..=shape.nodes {
            cfg += &format!(
                "[[node]]\nname = \"n{n}\"\naddresses = {{ lan = \"{}\", sync = \"{}\" }}\n\n",
                bed.address(n, "lan"),
                bed.address(n, "sync")
            );
        }
        cfg += &shape.extra.replace("@TESTBED_ID@", bed.id());
        std::fs::write(dir.path().join("cluster.toml"), cfg).context("writing the config")?;
        Ok(AgentCluster {
            bed,
            dir,
            binary: binary.into(),
            key,
            pids: Vec::new(),
            witness: shape.witness.then_some(members),
        })
    }

    /// The configuration file.
    pub fn config_path(&self) -> PathBuf {
        self.dir.path().join("cluster.toml")
    }

    /// Member `n`'s control socket.
    pub fn socket(&self, n: usize) -> PathBuf {
        self.dir.path().join(format!("n{n}.sock"))
    }

    /// Starts member `n`'s agent (or the witness), with its own state
    /// directory that survives restarts.
    pub fn spawn_agent(&self, n: usize) -> Result<u32> {
        self.spawn_agent_with(n, &self.config_path())
    }

    /// Starts member `n`'s agent with another configuration file (a node
    /// whose file differs from the others').
    pub fn spawn_agent_with(&self, n: usize, cfg: &Path) -> Result<u32> {
        self.spawn_agent_args(n, cfg, &[])
    }

    /// Starts member `n`'s agent with configuration `cfg` and `extra`
    /// command-line arguments.
    pub fn spawn_agent_args(&self, n: usize, cfg: &Path, extra: &[&str]) -> Result<u32> {
        let cfg = cfg.to_path_buf();
        let sock = self.socket(n);
        let state = self.state_dir(n);
        let node = format!("n{n}");
        let mut args: Vec<String> = if self.witness == Some(n) {
            vec!["witness".into()]
        } else {
            vec!["agent".into(), "--node".into(), node]
        };
        for (flag, path) in [
            ("--config", &cfg),
            ("--control-socket", &sock),
            ("--state-dir", &state),
        ] {
            args.push(flag.into());
            args.push(path.to_string_lossy().into_owned());
        }
        args.extend(extra.iter().map(|a| a.to_string()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        self.bed.spawn(n, &self.binary.to_string_lossy(), &args)
    }

    /// Member `n`'s status as JSON, if its agent answers.
    pub fn status(&self, n: usize) -> Option<Value> {
        let out = Command::new(&self.binary)
            .args(["status", "--json", "--socket"])
            .arg(self.socket(n))
            .output()
            .ok()?;
        serde_json::from_slice(&out.stdout).ok()
    }

    /// Member `n`'s status for people (`tandem status`).
    pub fn status_text(&self, n: usize) -> Result<String> {
        let out = Command::new(&self.binary)
            .args(["status", "--socket"])
            .arg(self.socket(n))
            .output()
            .context("running tandem status")?;
        if !out.status.success() {
            bail!("tandem status: {}", String::from_utf8_lossy(&out.stderr));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    /// Every agent's log so far.
    pub fn logs(&self) -> String {
        std::fs::read_dir(self.bed.run_dir())
            .map(|rd| {
                rd.flatten()
                    .map(|e| std::fs::read_to_string(e.path()).unwrap_or_default())
                    .collect::<Vec<_>>()
                    .join("\n")
            })
            .unwrap_or_default()
    }

    /// Polls member `n`'s status until `pred` holds and returns how long it
    /// took; fails with the last status and every log after `limit`.
    pub fn wait(
        &self,
        n: usize,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Result<Duration> {
        let start = Instant::now();
        let mut last = None;
        while start.elapsed() < limit {
            if let Some(s) = self.status(n) {
                if pred(&s) {
                    return Ok(start.elapsed());
                }
                last = Some(s);
            }
            std::thread::sleep(Duration::from_millis(POLL_MS));
        }
        bail!(
            "n{n}: {what} not reached within {limit:?}; last status: {last:#?}\nagent logs:\n{}",
            self.logs()
        )
    }
}

/// Volume `data` (copies on n1 and n2, backing files in `dir`, NBD on TCP
/// port 10809 on every node, `extra` keys added) and group `db` = the
/// volume, then (with `vip`) the floating IP 10.77.1.100/24.
pub fn volume_config(dir: &Path, size: &str, extra: &str, vip: bool) -> String {
    let mut cfg = format!(
        r#"
[[volume]]
name = "data"
nodes = ["n1", "n2"]
size = "{size}"
backing = {{ n1 = "{}", n2 = "{}" }}
nbd_tcp = "0.0.0.0:10809"
# The testbed's client network is its own namespace.
nbd_insecure = true
resync_rate_mib_s = 4000
{extra}

[[group]]
name = "db"
preferred = ["n1", "n2"]
failback = "manual"

[[group.resource]]
name = "disk"
kind = "volume"
volume = "data"
"#,
        dir.join("n1.img").display(),
        dir.join("n2.img").display()
    );
    if vip {
        cfg +=
            "\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"10.77.1.100/24\"\n";
    }
    cfg
}

/// A node ping monitor of the client (10.77.1.250) over `lan`: 200 ms
/// interval and timeout, 3 failures.
pub fn ping_monitor_config() -> String {
    r#"
[[monitor]]
name = "gateway"
kind = "ping"
link = "lan"
targets = ["10.77.1.250"]
interval_ms = 200
timeout_ms = 200
failures = 3
"#
    .to_string()
}

/// Group `web` of brief scenario 3 on Debian's OCF agents: the address
/// `vip`/24 by `ocf:heartbeat:IPaddr2` (checked every second), then apache
/// by `ocf:heartbeat:apache` with configuration file `conf` (see
/// [`APACHE_CONF`]; checked every 2 s, limited to `apache_timeout_ms` when
/// given), preferred on n1 then n2, failing back by hand.
pub fn ocf_web_group_config(vip: &str, conf: &Path, apache_timeout_ms: Option<u64>) -> String {
    let timeout = apache_timeout_ms.map_or_else(String::new, |t| format!("timeout_ms = {t}\n"));
    format!(
        r#"
[[group]]
name = "web"
preferred = ["n1", "n2"]
failback = "manual"

[[group.resource]]
name = "vip"
kind = "ocf"
agent = "ocf:heartbeat:IPaddr2"
params = {{ ip = "{vip}", cidr_netmask = 24 }}
check_interval_ms = 1000

[[group.resource]]
name = "apache"
kind = "ocf"
agent = "ocf:heartbeat:apache"
params = {{ configfile = "{conf}", httpd = "/usr/sbin/apache2", statusurl = "http://127.0.0.1/server-status" }}
{timeout}check_interval_ms = 2000
"#,
        conf = conf.display()
    )
}

/// Group `web`: `tandem demo-service` (HTTP on `http_port`, the probe
/// responder on `probe_port`) then the floating IP 10.77.1.100/24, preferred
/// on n1 .. n`nodes` in order, with the given failback (`auto`, `manual`).
pub fn web_group_config(
    tandem: &Path,
    failback: &str,
    nodes: usize,
    http_port: u16,
    probe_port: u16,
) -> String {
    let preferred: Vec<String> = (1..=nodes).map(|n| format!("\"n{n}\"")).collect();
    format!(
        r#"
[[group]]
name = "web"
preferred = [{}]
failback = "{failback}"

[[group.resource]]
name = "service"
kind = "process"
command = ["{}", "demo-service", "--port", "{http_port}", "--probe-port", "{probe_port}"]

[[group.resource]]
name = "vip"
kind = "ip"
address = "10.77.1.100/24"
"#,
        preferred.join(", "),
        tandem.display()
    )
}

/// The status entry of peer `name`.
pub fn peer<'a>(s: &'a Value, name: &str) -> &'a Value {
    s["peers"]
        .as_array()
        .and_then(|ps| ps.iter().find(|p| p["name"] == name))
        .unwrap_or(&Value::Null)
}

/// The state of the link `link` to peer `name` (`up`, `down`, ...).
pub fn link_state<'a>(s: &'a Value, name: &str, link: &str) -> &'a str {
    peer(s, name)["links"]
        .as_array()
        .and_then(|ls| ls.iter().find(|l| l["link"] == link))
        .and_then(|l| l["state"].as_str())
        .unwrap_or("absent")
}

/// The node (its number) that status `s` says runs group `group`, while
/// the group's state is `running`.
pub fn running_on(s: &Value, group: &str) -> Option<usize> {
    let g = s["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == group)?;
    if g["state"] != "running" {
        return None;
    }
    g["placed_on"].as_str()?.strip_prefix('n')?.parse().ok()
}

/// Every peer online with every link up.
pub fn all_online(s: &Value) -> bool {
    s["peers"].as_array().is_some_and(|ps| {
        ps.iter().all(|p| {
            p["state"] == "online"
                && p["links"]
                    .as_array()
                    .is_some_and(|ls| ls.iter().all(|l| l["state"] == "up"))
        })
    })
}

/// The leader named in a status, if any.
pub fn leader(s: &Value) -> Option<String> {
    s["agreement"]["leader"].as_str().map(String::from)
}

/// The time (ms since the epoch) of the first typed event (the agent's
/// `"event"` in `tandem status --json`: `{"kind": ..., fields}`) that
/// `matches`, at or after `since_unix_ms`.
pub fn event_time(s: &Value, since_unix_ms: u64, matches: impl Fn(&Value) -> bool) -> Option<u64> {
    s["events"].as_array()?.iter().find_map(|e| {
        let at = e["at_unix_ms"].as_u64()?;
        (at >= since_unix_ms && matches(&e["event"])).then_some(at)
    })
}

/// Whether typed event `e` is `node_dead` of node `node`.
pub fn is_node_dead(e: &Value, node: &str) -> bool {
    e["kind"] == "node_dead" && e["node"] == node
}

/// `HH:MM:SS.mmm` (UTC) of a time in ms since the epoch, as agents log it.
pub fn format_ms(unix_ms: u64) -> String {
    let s = unix_ms / 1_000 % 86_400;
    format!(
        "{:02}:{:02}:{:02}.{:03}",
        s / 3_600,
        s % 3_600 / 60,
        s % 60,
        unix_ms % 1_000
    )
}

/// Apache's configuration for a testbed node: port 80 on every address of
/// the node, its page and its files in the node's own
/// `/run/resource-agents` (so each node serves its own name). For
/// Debian's `ocf:heartbeat:apache` (`configfile`), in tests and benchmarks.
pub const APACHE_CONF: &str = r#"ServerRoot "/etc/apache2"
ServerName localhost
LoadModule mpm_event_module /usr/lib/apache2/modules/mod_mpm_event.so
LoadModule authz_core_module /usr/lib/apache2/modules/mod_authz_core.so
LoadModule authz_host_module /usr/lib/apache2/modules/mod_authz_host.so
LoadModule status_module /usr/lib/apache2/modules/mod_status.so
LoadModule dir_module /usr/lib/apache2/modules/mod_dir.so
Listen 80
PidFile /run/resource-agents/apache.pid
ErrorLog /run/resource-agents/apache-error.log
DocumentRoot /run/resource-agents/www
DirectoryIndex index.html
<Directory /run/resource-agents/www>
  Require all granted
</Directory>
<Location /server-status>
  SetHandler server-status
  Require local
</Location>
"#;

/// The testbed's fence device as a program a `[[fence_device]]` can name:
/// `tandem testbed-fence` behind a one-line script, written in `dir`.
pub fn testbed_fence_script(dir: &Path, tandem: &Path) -> Result<PathBuf> {
    let p = dir.join("fence_testbed");
    std::fs::write(
        &p,
        format!("#!/bin/sh\nexec {} testbed-fence\n", tandem.display()),
    )
    .context("writing the testbed fence agent")?;
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755))
        .context("making the testbed fence agent executable")?;
    Ok(p)
}

/// Two fence devices through `agent` (the testbed device), one per node of
/// a two-node cluster; fencing n1, the preferred node, waits 1 s so that
/// n1 wins a fence race. `retries` extra attempts each.
pub fn two_node_fence_config(agent: &Path, retries: u32) -> String {
    format!(
        r#"
[[fence_device]]
name = "power-n1"
agent = "{a}"
hosts = {{ n1 = "n1" }}
delay_ms = 1000
retries = {retries}
options = {{ testbed = "@TESTBED_ID@" }}

[[fence_device]]
name = "power-n2"
agent = "{a}"
hosts = {{ n2 = "n2" }}
retries = {retries}
options = {{ testbed = "@TESTBED_ID@" }}
"#,
        a = agent.display()
    )
}
