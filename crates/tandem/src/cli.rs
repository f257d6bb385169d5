//! The command-line interface definition. `--help`, shell completions and the
//! man page are all generated from these types, so they cannot disagree.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

/// Tandem: a high-availability cluster manager. One agent per node keeps your
/// services, floating IPs and replicated volumes running on a healthy node.
#[derive(Debug, Parser)]
#[command(
    name = "tandem",
    version,
    propagate_version = true,
    max_term_width = 100
)]
pub struct Cli {
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// Top-level subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the node agent in the foreground (heartbeats, failure detection,
    /// quorum, the replicated cluster record, control socket). Stops cleanly
    /// on SIGTERM or Ctrl-C: hands leadership over and tells the peers it
    /// leaves, so they need not wait for deadtime.
    Agent {
        /// The cluster configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// This node's name (default: the node whose address is on this machine).
        #[arg(long)]
        node: Option<String>,
        /// A new machine's first start: ask the running node at ADDRESS
        /// (IP or IP:PORT, port 5411 by default) for the configuration that
        /// lists this machine (`tandem node add NAME --address ...` there
        /// first), write it to --config and the key where it names one,
        /// then run as that node. Needs --key.
        #[arg(long, value_name = "ADDRESS", requires = "key")]
        join: Option<String>,
        /// With --join: the cluster's key file (copied from a member).
        #[arg(long, value_name = "FILE", requires = "join")]
        key: Option<PathBuf>,
        /// Control socket path (default: the configuration's, else /run/tandem/control.sock).
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
        /// State directory (default: the configuration's, else /var/lib/tandem).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        recovery: StateRecovery,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Run the quorum witness in the foreground: a voter that hosts no
    /// resources, for two-node sites. Run it on a third machine reachable
    /// at the configuration's `[quorum] witness` address.
    Witness {
        /// The cluster configuration file (the same as the nodes').
        #[arg(long, short)]
        config: PathBuf,
        /// Control socket path (default /run/tandem/witness.sock).
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
        /// State directory (default: the configuration's, else /var/lib/tandem/witness).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        recovery: StateRecovery,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Show nodes, links, quorum, the record's leader and epoch, what
    /// protects each node when it goes silent (fence device, watchdog or
    /// leases alone), dropped packets and recent events, as the local agent
    /// sees them.
    Status {
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
        /// Refresh every `--interval` seconds until interrupted, marking
        /// with `*` the lines that changed since the previous view.
        #[arg(long, short, conflicts_with = "json")]
        watch: bool,
        /// Seconds between refreshes with `--watch` (at least 1).
        #[arg(long, value_name = "SECS", default_value_t = 2, value_parser = clap::value_parser!(u64).range(1..=3600))]
        interval: u64,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Every node's events, merged by time: what happened, where, and why
    /// each group was placed where it is (each agent keeps its own on
    /// disk; the local agent asks its peers over the cluster's
    /// authenticated channel and names any that do not answer).
    Events {
        /// Only events this recent: `30s`, `10m`, `2h`, `1d` (default: all
        /// kept, up to 20 000 per node).
        #[arg(long, value_name = "AGE", value_parser = parse_age_ms)]
        since: Option<u64>,
        /// Keep printing new events as they happen (every second), until
        /// interrupted.
        #[arg(long, short = 'f')]
        follow: bool,
        /// One JSON object per event (`node`, `at_unix_ms`, `text`,
        /// `event` with its `kind` and fields).
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Collect a diagnostic bundle from every node (over the cluster's
    /// authenticated channel, not ssh): configurations with secrets
    /// redacted, status, events, state and volume metadata, system facts,
    /// plus a summary and an analysis (quorum, leaders, deaths, moves and
    /// why, fencing, failures), as one .tar.gz.
    Report {
        /// Only events this recent: `30s`, `10m`, `2h`, `1d` (default: all
        /// kept).
        #[arg(long, value_name = "AGE", value_parser = parse_age_ms)]
        since: Option<u64>,
        /// Where to write it (default: tandem-report-CLUSTER-TIME.tar.gz
        /// here).
        #[arg(long, short, value_name = "FILE")]
        out: Option<PathBuf>,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Pin a group to a node and wait until it runs there (`--clear` removes
    /// the pin; the placement policy decides again).
    Move {
        /// The group.
        group: String,
        /// The node to move it to.
        #[arg(long, required_unless_present = "clear", conflicts_with = "clear")]
        to: Option<String>,
        /// Remove an earlier move instead.
        #[arg(long)]
        clear: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Planned failover: stop the group cleanly here and start it on the
    /// next eligible node (no fencing). Without GROUP: every group placed
    /// on the node of the agent asked.
    Failover {
        /// The group (default: every group on this node).
        group: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Put a node in standby (it hosts nothing; its groups move away) or
    /// back online; or take a configured node's vote away (`remove`: its
    /// groups move away and it follows as a non-voter) or give it back
    /// (`add`).
    Node {
        /// `standby`, `online`, `add` or `remove`.
        action: NodeAction,
        /// The node.
        node: String,
        /// With `add`, for a node the configuration does not list yet: its
        /// address on each link, `LINK=IP` (repeat, or separate with
        /// commas). The cluster's configuration gains the node first
        /// (as `tandem config apply` would, every node checking it), then
        /// waits for it to join (`tandem agent --join` on it) and gives it
        /// a vote; with --no-wait it returns once the configuration is
        /// committed. Reads the committed configuration from --config
        /// (default /etc/tandem/tandem.toml) and changes it. Root only.
        #[arg(long, value_name = "LINK=IP", value_delimiter = ',')]
        address: Vec<String>,
        /// With `add --address`: the new node holds the second copy of
        /// VOLUME, a volume that has one copy, in its backing store PATH
        /// (repeat, or separate with commas). `tandem agent --join` creates
        /// the copy; it then takes a full sync from the running one while
        /// the volume's clients run on. `node add` shows its progress
        /// (`tandem volume status` too) and gives the vote only once both
        /// copies are up to date, however long that takes (not bounded by
        /// --timeout; Ctrl-C stops following, the sync goes on, and
        /// `tandem node add NAME` gives the vote later).
        #[arg(long, value_name = "VOLUME=PATH", value_delimiter = ',')]
        volume: Vec<String>,
        /// With `add --address`: fence device DEVICE (a `[[fence_device]]`
        /// of the configuration) fences the new node as PLUG, its name for
        /// it (repeat for more devices). A pair in two-node mode needs
        /// each node fenceable: the survivor of a crash fences its peer.
        #[arg(long, value_name = "DEVICE=PLUG", value_delimiter = ',')]
        fence: Vec<String>,
        /// With `remove`: once the node votes no more and runs nothing,
        /// drop it from the cluster's configuration too (the last node of
        /// the list only, as `node add --address` added it), with its
        /// volume copies and fence plugs, applied as `tandem config apply`
        /// does; then stop its agent. Reads the
        /// configuration from --config (default /etc/tandem/tandem.toml).
        #[arg(long)]
        forget: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Maintenance: the cluster neither starts, stops nor monitors the
    /// group (all groups without GROUP) until it is turned off again.
    Maintenance {
        /// `on` or `off`.
        action: OnOff,
        /// The group (default: every group).
        group: Option<String>,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Forget a group's failures (fail counts) on every node, so nodes it
    /// failed on become eligible again.
    Cleanup {
        /// The group.
        group: String,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Fence a node now through its fence devices (power it off), run by
    /// the leader; the outcome and each device's output go to the fence
    /// history in `tandem status`. Asks for confirmation unless --yes (not
    /// for --on). A fence counts once the device's `status` confirms it.
    Fence {
        /// The node to fence.
        node: String,
        /// Do not ask for confirmation.
        #[arg(long)]
        yes: bool,
        /// Power the node back on instead (unfence).
        #[arg(long)]
        on: bool,
        #[command(flatten)]
        admin: AdminArgs,
    },
    /// Replicated volumes: create a copy, show state and sync progress,
    /// promote or demote by hand, verify both copies, drop or restore the
    /// replication link.
    #[command(subcommand)]
    Volume(VolumeCommandArgs),
    /// A local cluster in network namespaces that fails over, with the
    /// outage measured: 3 nodes, a floating IP and a small HTTP service;
    /// crashes the active node, then restores it (needs root).
    #[cfg(feature = "demo")]
    Demo {
        /// Keep going without pauses between the steps.
        #[arg(long)]
        fast: bool,
    },
    /// The demo's service: answers HTTP GET on --port, and the testbed's
    /// probes on --probe-port, with this node's name (--name, else
    /// $TANDEM_NODE, else the host's name).
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    DemoService {
        /// HTTP port.
        #[arg(long, default_value_t = 8080)]
        port: u16,
        /// Probe port (UDP `tprobe N`, TCP name line).
        #[arg(long, default_value_t = 7000)]
        probe_port: u16,
        /// Name to answer with (default $TANDEM_NODE, else the host's name).
        #[arg(long)]
        name: Option<String>,
    },
    /// The testbed's fence device (fence-agents conventions: options as
    /// key=value lines on stdin): cuts a testbed node's ports and kills
    /// its processes.
    #[cfg(feature = "demo")]
    #[command(hide = true)]
    TestbedFence,
    /// The lease guard the agent starts beside itself: stops this node's
    /// resources if the agent dies or hangs past its lease.
    #[command(hide = true)]
    Guard {
        /// The agent's lease file.
        #[arg(long)]
        lease_file: PathBuf,
        /// The agent's process id.
        #[arg(long)]
        agent_pid: u32,
        /// Name for log lines.
        #[arg(long, default_value = "")]
        label: String,
        #[command(flatten)]
        log: LogArgs,
    },
    /// Check, show or compare configuration files, and change the running
    /// cluster's configuration (apply, history, rollback).
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a new cluster's key and a short, commented configuration from
    /// a few facts; each link's subnet is found from this machine's
    /// interfaces. The result is checked as `config validate` checks it.
    ///
    /// Example (two nodes, a witness, an address and apache):
    /// tandem init --name web --node n1=10.0.0.11 --node n2=10.0.0.12
    /// --witness 10.0.0.5:5405 --vip 10.0.0.100/24 --service systemd:apache2
    /// --out /etc/tandem/tandem.toml
    Init(InitArgs),
    /// Write a Tandem configuration from another cluster manager's files,
    /// with a report on standard error of what became of every line.
    #[command(subcommand)]
    Import(ImportCommand),
    /// Write a new random 32-byte cluster key (mode 0600); never overwrites.
    ///
    /// Copy the same key file to every node. To rotate a key, write the new
    /// one elsewhere and restart the agents one at a time three times
    /// (docs/CONFIG.md): first with the new key as `previous_key_file`
    /// (accepted, never used to send), then with the two swapped, then
    /// without `previous_key_file`.
    Keygen {
        /// Where to write the key, e.g. /etc/tandem/cluster.key.
        file: PathBuf,
    },
    /// Print a shell completion script to standard output.
    ///
    /// Example: tandem completions bash > /etc/bash_completion.d/tandem
    Completions {
        /// The shell to generate for.
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff) to standard output, or write one page per
    /// subcommand into a directory.
    ///
    /// Example: tandem man | man -l -
    Man {
        /// Write tandem.8, tandem-config.8, ... and tandem.toml.5 (the
        /// configuration's format) into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
}

/// `tandem init`.
#[derive(Debug, Clone, Args)]
pub struct InitArgs {
    /// The cluster's name.
    #[arg(long, default_value = "ha")]
    pub name: String,
    /// A node: NAME=ADDRESS, or NAME=LAN_ADDRESS,SYNC_ADDRESS for two
    /// links (repeat for every node, in order of preference).
    #[arg(long = "node", value_name = "NAME=IP[,IP]", required = true)]
    pub nodes: Vec<String>,
    /// The links' names, in the order of each node's addresses.
    #[arg(long, value_delimiter = ',', default_value = "lan,sync")]
    pub links: Vec<String>,
    /// A witness's address (a `tandem witness` on a third machine); two
    /// nodes without one decide a partition by fencing.
    #[arg(long, value_name = "ADDR:PORT", value_parser = parse_witness)]
    pub witness: Option<std::net::SocketAddr>,
    /// The floating address clients use, with its prefix.
    #[arg(long, value_name = "IP/PREFIX")]
    pub vip: Option<String>,
    /// A service, started after the address in the order given:
    /// systemd:UNIT, ocf:PROVIDER:AGENT, exec:/PATH or process:PROGRAM ARGS.
    #[arg(long = "service", value_name = "KIND:WHAT")]
    pub services: Vec<String>,
    /// The group's name (default: the first service's).
    #[arg(long)]
    pub group: Option<String>,
    /// The cluster key, created (mode 0600) when missing
    /// (default /etc/tandem/NAME.key).
    #[arg(long, value_name = "FILE")]
    pub key: Option<PathBuf>,
    /// Write the configuration here (never over an existing file) instead
    /// of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `--witness`: an address and port, e.g. 10.0.0.5:5405.
fn parse_witness(text: &str) -> Result<std::net::SocketAddr, String> {
    text.parse().map_err(|_| {
        format!("`{text}` is not ADDRESS:PORT: the witness listens on a port too, e.g. {text}:5405")
    })
}

/// `tandem import ...`.
#[derive(Debug, Subcommand)]
pub enum ImportCommand {
    /// heartbeat (Linux-HA v1): the directory holding `ha.cf`,
    /// `haresources` and `authkeys` (usually /etc/ha.d).
    ///
    /// ha.cf names interfaces, not addresses: give each node's address on
    /// each interface with --address. The configuration is checked as
    /// `tandem config validate` checks it before it is written.
    ///
    /// Example: tandem import heartbeat /etc/ha.d --key /etc/tandem/web.key
    /// --address lnx31:eth0=192.168.1.31/24 --address lnx41:eth0=192.168.1.41/24
    /// --out /etc/tandem/tandem.toml
    Heartbeat(ImportHeartbeatArgs),
    /// keepalived: every node's keepalived.conf (its VRRP instances).
    ///
    /// Node names come from each file's router_id, addresses from
    /// unicast_src_ip (or --address where a file has none).
    ///
    /// Example: tandem import keepalived lb1/keepalived.conf
    /// lb2/keepalived.conf --key /etc/tandem/lb.key --out /etc/tandem/tandem.toml
    Keepalived(ImportKeepalivedArgs),
    /// Pacemaker: a CIB (`cibadmin -Q`, `pcs cluster cib`) and Corosync's
    /// node list for the addresses.
    ///
    /// Example: cibadmin -Q > cib.xml; tandem import pacemaker cib.xml
    /// --corosync /etc/corosync/corosync.conf --key /etc/tandem/ha.key
    /// --out /etc/tandem/tandem.toml
    Pacemaker(ImportPacemakerArgs),
}

/// `tandem import pacemaker`.
#[derive(Debug, Clone, Args)]
pub struct ImportPacemakerArgs {
    /// The CIB, as `cibadmin -Q` prints it.
    pub cib: PathBuf,
    /// Corosync's configuration: the nodes' addresses (ringN_addr) and
    /// the cluster's name.
    #[arg(long, value_name = "FILE")]
    pub corosync: Option<PathBuf>,
    /// The cluster key the configuration names; created (as `tandem
    /// keygen` does, mode 0600) when it does not exist.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// A node's address on a ring, where Corosync's file does not give it:
    /// NODE:ringN=IP[/PREFIX] (repeat).
    #[arg(long = "address", value_name = "NODE:ringN=IP[/PREFIX]")]
    pub addresses: Vec<String>,
    /// The cluster's name (default: the CIB's cluster-name, else
    /// Corosync's, else ha).
    #[arg(long)]
    pub name: Option<String>,
    /// Write the configuration here (never over an existing file) instead
    /// of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `tandem import keepalived`.
#[derive(Debug, Clone, Args)]
pub struct ImportKeepalivedArgs {
    /// Every node's keepalived.conf, one per node.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// The cluster key the configuration names; created (as `tandem
    /// keygen` does, mode 0600) when it does not exist. VRRP passwords are
    /// never reused.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// A node's address on an interface, where its file has no
    /// unicast_src_ip: NODE:IFACE=IP[/PREFIX] (repeat).
    #[arg(long = "address", value_name = "NODE:IFACE=IP[/PREFIX]")]
    pub addresses: Vec<String>,
    /// The cluster's name.
    #[arg(long, default_value = "ha")]
    pub name: String,
    /// Write the configuration here (never over an existing file) instead
    /// of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// `tandem import heartbeat`.
#[derive(Debug, Clone, Args)]
pub struct ImportHeartbeatArgs {
    /// The directory holding ha.cf, haresources and authkeys.
    pub dir: PathBuf,
    /// The cluster key the configuration names; created (as `tandem
    /// keygen` does, mode 0600) when it does not exist. heartbeat's
    /// authkeys secrets are never reused.
    #[arg(long, value_name = "FILE")]
    pub key: PathBuf,
    /// A node's address on an interface of ha.cf's media lines:
    /// NODE:IFACE=IP, or IP/PREFIX to give the link's subnet (repeat for
    /// every node and interface).
    #[arg(long = "address", value_name = "NODE:IFACE=IP[/PREFIX]")]
    pub addresses: Vec<String>,
    /// The cluster's name.
    #[arg(long, default_value = "ha")]
    pub name: String,
    /// Write the configuration here (never over an existing file) instead
    /// of standard output.
    #[arg(long, value_name = "FILE")]
    pub out: Option<PathBuf>,
}

/// Where log lines go and in which shape.
#[derive(Debug, Clone, Args)]
pub struct LogArgs {
    /// Log lines as `text`, `json` (one object per line: timestamp,
    /// level, target, node, kind, message), `journald` (systemd's journal,
    /// with priorities: `journalctl -u tandem-agent -p warning`), or
    /// `auto`: journald when systemd sends standard error to the journal,
    /// text otherwise.
    #[arg(long, value_enum, default_value_t = LogFormatArg::Auto, value_name = "FORMAT")]
    pub log_format: LogFormatArg,
    /// Append log lines to this file instead of standard error (text or
    /// json; reopen-free, so rotate with logrotate's copytruncate).
    #[arg(long, value_name = "PATH")]
    pub log_file: Option<PathBuf>,
    /// The least severe lines logged: `error`, `warn` or `info`.
    #[arg(long, value_enum, default_value_t = LogLevelArg::Info, value_name = "LEVEL")]
    pub log_level: LogLevelArg,
}

/// `--log-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogFormatArg {
    /// journald under systemd, text otherwise.
    Auto,
    /// Text lines.
    Text,
    /// One JSON object per line.
    Json,
    /// systemd's journal.
    Journald,
}

/// `--log-level`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LogLevelArg {
    /// Errors only.
    Error,
    /// Errors and warnings.
    Warn,
    /// Everything the agent says.
    Info,
}

impl LogArgs {
    /// The agent's logging options.
    pub fn options(&self) -> tandem_agent::logging::LogOptions {
        use tandem_agent::logging::{LogFormat, LogOptions, Severity};
        LogOptions {
            format: match self.log_format {
                LogFormatArg::Auto => LogFormat::Auto,
                LogFormatArg::Text => LogFormat::Text,
                LogFormatArg::Json => LogFormat::Json,
                LogFormatArg::Journald => LogFormat::Journald,
            },
            file: self.log_file.clone(),
            level: match self.log_level {
                LogLevelArg::Error => Severity::Error,
                LogLevelArg::Warn => Severity::Warn,
                LogLevelArg::Info => Severity::Info,
            },
        }
    }
}

/// What to do when the state file fails its checksum (the default: refuse
/// to start and say why).
#[derive(Debug, Clone, Copy, Args)]
pub struct StateRecovery {
    /// If the state file is damaged, keep it aside and start empty. This
    /// node then takes no part in elections until it has followed the
    /// current leader, and fetches the record from it (the other voters
    /// must be up and have a leader).
    #[arg(long, conflicts_with = "accept_unchecksummed_state")]
    pub discard_damaged_state: bool,
    /// Accept a state file that has no checksum (written by a version
    /// before checksums). A file whose checksum does not match is still
    /// refused.
    #[arg(long)]
    pub accept_unchecksummed_state: bool,
}

impl StateRecovery {
    /// The agent's setting.
    pub fn recovery(self) -> tandem_agent::state_file::Recovery {
        use tandem_agent::state_file::Recovery;
        if self.discard_damaged_state {
            Recovery::DiscardDamaged
        } else if self.accept_unchecksummed_state {
            Recovery::AcceptUnchecksummed
        } else {
            Recovery::Refuse
        }
    }
}

/// How a command finds the local agent.
#[derive(Debug, Clone, Args)]
pub struct AgentAt {
    /// The local agent's control socket (default: the configuration's
    /// `control_socket` with --config, else /run/tandem/control.sock).
    #[arg(long, value_name = "PATH")]
    pub socket: Option<PathBuf>,
    /// The cluster configuration file, to find the agent's control socket.
    #[arg(short = 'c', long, value_name = "FILE")]
    pub config: Option<PathBuf>,
}

impl AgentAt {
    /// The control socket: `--socket`, else the configuration's
    /// `control_socket` (with `--config`), else the default.
    pub fn socket(&self) -> anyhow::Result<PathBuf> {
        use anyhow::Context as _;
        if let Some(s) = &self.socket {
            return Ok(s.clone());
        }
        if let Some(c) = &self.config {
            let text = std::fs::read_to_string(c)
                .with_context(|| format!("reading configuration file {}", c.display()))?;
            let found = tandem_core::config::control_socket_of(&text).map_err(|e| {
                anyhow::anyhow!(
                    "{}: {e}; check it with `tandem config validate {}`",
                    c.display(),
                    c.display()
                )
            })?;
            if let Some(s) = found {
                return Ok(s);
            }
        }
        Ok(PathBuf::from(tandem_agent::agent::DEFAULT_CONTROL_SOCKET))
    }
}

/// What every admin command takes.
#[derive(Debug, Clone, Args)]
pub struct AdminArgs {
    #[command(flatten)]
    pub at: AgentAt,
    /// Return once the leader has the request, without waiting for the outcome.
    #[arg(long)]
    pub no_wait: bool,
    /// Give up waiting after this many seconds (the request stays in force).
    #[arg(long, value_name = "SECS", default_value_t = 60)]
    pub timeout: u64,
}

/// `tandem volume` subcommands.
#[derive(Debug, Subcommand)]
pub enum VolumeCommandArgs {
    /// Create this node's copy of a configured volume: the backing file
    /// (sparse, if it does not exist) and the metadata. Run it on both
    /// nodes, with `--source` on the one whose data is kept (a new, empty
    /// volume: either); the other copy takes a full sync from it.
    Create {
        /// The volume (its `[[volume]]` name).
        name: String,
        /// The cluster configuration file.
        #[arg(long, short)]
        config: PathBuf,
        /// This node (default: the volume's node whose sync address is on this machine).
        #[arg(long)]
        node: Option<String>,
        /// State directory (default: the configuration's, else /var/lib/tandem).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// This copy holds the data: it starts UpToDate.
        #[arg(long)]
        source: bool,
        /// Replace existing metadata (the copy then syncs in full).
        #[arg(long)]
        force: bool,
    },
    /// Role, disk states, link, sync progress with ETA, verify results and
    /// recent events of this node's copies.
    Status {
        /// One volume (default: all).
        name: Option<String>,
        /// Print JSON.
        #[arg(long)]
        json: bool,
        /// Redraw every second with a progress bar while a sync runs (Ctrl-C stops).
        #[arg(long)]
        watch: bool,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Make this node's copy primary (serves NBD). Refused unless the copy
    /// is UpToDate; `--force` overrides and says what may be lost.
    Promote {
        /// The volume.
        name: String,
        /// Promote an Outdated, Inconsistent or unknown copy anyway.
        #[arg(long)]
        force: bool,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Make this node's copy secondary (NBD clients are disconnected).
    Demote {
        /// The volume.
        name: String,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Compare both copies by checksums while in use and report differing
    /// blocks (they are marked and resynced from this copy).
    Verify {
        /// The volume.
        name: String,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Drop the replication link and stay disconnected (writes are then
    /// tracked in the bitmap).
    Disconnect {
        /// The volume.
        name: String,
        #[command(flatten)]
        at: AgentAt,
    },
    /// Connect again after `disconnect` or split brain.
    Connect {
        /// The volume.
        name: String,
        /// After split brain: this copy gives up the changes it made alone
        /// and takes the peer's.
        #[arg(long)]
        discard_my_data: bool,
        #[command(flatten)]
        at: AgentAt,
    },
}

/// `tandem node` actions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum NodeAction {
    /// The node hosts nothing; its groups move away.
    Standby,
    /// The node may host groups again.
    Online,
    /// The node votes (one change of voters) and may host groups.
    Add,
    /// The node's groups move away and it stops voting (one change of
    /// voters); its agent keeps following the cluster as a non-voter.
    Remove,
}

/// On or off.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum OnOff {
    /// Turn it on.
    On,
    /// Turn it off.
    Off,
}

/// `tandem config ...`
#[derive(Debug, Subcommand)]
pub enum ConfigCommand {
    /// Check configuration files; every problem is reported with file, line,
    /// column and what to write instead. Exits 1 if any file has an error.
    Validate(ValidateArgs),
    /// Print the effective configuration: profile values and defaults applied.
    Show {
        /// The configuration file.
        file: PathBuf,
        /// `summary`: one line per entry; `toml` or `json`: every setting
        /// with its default filled in (secrets redacted).
        #[arg(long, value_enum, default_value = "summary")]
        format: ShowFormat,
    },
    /// Print what changes from one configuration file to another, entry by
    /// entry (paired by name, not position). With one file: from this
    /// node's configuration (`--config`) to it. Exits 0 when they say the
    /// same, 3 when they differ, 1 when either file is invalid.
    Diff {
        /// The configuration as it is (or, alone, as it would be).
        old: PathBuf,
        /// The configuration as it would be.
        new: Option<PathBuf>,
        /// This node's configuration, compared with a single file.
        #[arg(
            short = 'c',
            long,
            value_name = "FILE",
            default_value = "/etc/tandem/tandem.toml"
        )]
        config: PathBuf,
        /// Print the changes as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Change the running cluster's configuration. Every node checks FILE
    /// on its own machine (as `config validate` does, and whether the
    /// change can be made while running); once all accept, each switches in
    /// place: the groups the change removes, or whose resources change,
    /// stop and start again; every other group keeps running untouched.
    /// Each node writes the new file over its own, and a node that was
    /// offline catches up when it returns. Changes to `[cluster]`, nodes,
    /// links, timing, quorum, keys, fence devices, volumes, `filesync`
    /// resources, the watchdog, the HTTP API or alerts are refused: they
    /// need the agents restarted one at a time (docs/CONFIG.md).
    /// Only root may apply, on a node's control socket (never over HTTP).
    /// Exits 0 once the cluster committed it (naming any node that does not
    /// run it yet), 1 when refused, abandoned or not done in time.
    Apply(ApplyArgs),
    /// The configurations this node saw committed, oldest first, with
    /// their epochs (`config rollback EPOCH` applies one again).
    History {
        /// This node's state directory (default: the configuration's).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        /// This node's configuration (for its state directory).
        #[arg(
            short = 'c',
            long,
            value_name = "FILE",
            default_value = "/etc/tandem/tandem.toml"
        )]
        config: PathBuf,
        /// Print the history as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Apply the configuration of an earlier epoch again, as `config
    /// apply` would (its text as this node kept it; see `config history`).
    Rollback {
        /// The epoch to return to.
        epoch: u64,
        /// This node's state directory (default: the configuration's, as
        /// `--config` names it, else /etc/tandem/tandem.toml's).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
        #[command(flatten)]
        apply: ApplyOptions,
    },
}

/// Arguments of `tandem config apply`.
#[derive(Debug, Clone, Args)]
pub struct ApplyArgs {
    /// The new configuration file. Relative paths in it (the key file)
    /// resolve on each node in the directory of that node's configuration;
    /// this machine's check uses `--config`'s directory, else FILE's.
    pub file: PathBuf,
    #[command(flatten)]
    pub apply: ApplyOptions,
}

/// How `config apply` and `config rollback` proceed.
#[derive(Debug, Clone, Args)]
pub struct ApplyOptions {
    #[command(flatten)]
    pub at: AgentAt,
    /// Begin even though some nodes do not answer (they catch up when they
    /// return); every node that answers must still accept it.
    #[arg(long)]
    pub force: bool,
    /// Give up waiting for every node to switch after this many seconds
    /// (the change goes on).
    #[arg(long, value_name = "SECS", default_value_t = 120)]
    pub timeout: u64,
}

/// How `config show` prints the model.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ShowFormat {
    /// A summary, one line per entry.
    Summary,
    /// Every setting with its default filled in, as TOML (secrets
    /// redacted).
    Toml,
    /// Every setting with its default filled in, as JSON (secrets
    /// redacted).
    Json,
}

/// Arguments of `tandem config validate`.
#[derive(Debug, Args)]
pub struct ValidateArgs {
    /// Configuration files to check.
    #[arg(required = true)]
    pub files: Vec<PathBuf>,
    /// Treat warnings as errors (exit 1 when there is any warning).
    #[arg(long)]
    pub deny_warnings: bool,
    /// Print nothing for files without any diagnostic.
    #[arg(short, long)]
    pub quiet: bool,
}

/// An age such as `30s`, `10m`, `2h` or `1d`, in milliseconds.
pub fn parse_age_ms(text: &str) -> Result<u64, String> {
    let t = text.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (n, unit) = t.split_at(split);
    let n: u64 = n
        .parse()
        .map_err(|_| format!("`{text}` is not an age: write a number and a unit, e.g. 10m"))?;
    let per = match unit {
        "ms" => 1,
        "s" => 1_000,
        "m" => 60_000,
        "h" => 3_600_000,
        "d" => 86_400_000,
        _ => {
            return Err(format!(
                "`{text}`: the unit is one of ms, s, m, h, d (e.g. 10m)"
            ))
        }
    };
    n.checked_mul(per)
        .ok_or_else(|| format!("`{text}` is too long an age"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_with_their_units() {
        assert_eq!(parse_age_ms("30s"), Ok(30_000));
        assert_eq!(parse_age_ms("10m"), Ok(600_000));
        assert_eq!(parse_age_ms("2h"), Ok(7_200_000));
        assert_eq!(parse_age_ms("1d"), Ok(86_400_000));
        assert_eq!(parse_age_ms("250ms"), Ok(250));
        assert!(parse_age_ms("10").unwrap_err().contains("unit"));
        assert!(parse_age_ms("m").unwrap_err().contains("not an age"));
        assert!(parse_age_ms("99999999999999999d")
            .unwrap_err()
            .contains("too long"));
    }
}
