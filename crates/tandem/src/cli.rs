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
        /// Control socket path (default: the configuration's, else /run/tandem/control.sock).
        #[arg(long, value_name = "PATH")]
        control_socket: Option<PathBuf>,
        /// State directory (default: the configuration's, else /var/lib/tandem).
        #[arg(long, value_name = "DIR")]
        state_dir: Option<PathBuf>,
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
    },
    /// Show nodes, links, quorum, the record's leader and epoch, dropped
    /// packets and recent events, as the local agent sees them.
    Status {
        /// Print the agent's answer as JSON.
        #[arg(long)]
        json: bool,
        /// The agent's control socket (default /run/tandem/control.sock).
        #[arg(long, value_name = "PATH")]
        socket: Option<PathBuf>,
    },
    /// Check, or show, a cluster configuration file.
    #[command(subcommand)]
    Config(ConfigCommand),
    /// Write a new random 32-byte cluster key (mode 0600); never overwrites.
    ///
    /// Copy the same key file to every node. To rotate a key, write the new
    /// one elsewhere, set it as `key_file` and the old one as
    /// `previous_key_file` on every node, then drop `previous_key_file`.
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
        /// Write tandem.1, tandem-config.1, ... into this directory instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<PathBuf>,
    },
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
    },
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
