//! `tandem-testbed`: the testbed for people. Build a cluster of network
//! namespaces to poke at by hand, probe an address, check a probe log, or
//! sweep leftovers of crashed runs.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tandem_testbed::checker::{analyze, CheckOptions};
use tandem_testbed::prober::{ProbeLog, ProbeSpec, Prober};
use tandem_testbed::{responder, sweep, Testbed, TestbedSpec};

/// Network-namespace testbed for Tandem.
#[derive(Debug, Parser)]
#[command(name = "tandem-testbed", version, max_term_width = 100)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Build a testbed and keep it until Ctrl-C (or SIGTERM), then tear it down.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Comma-separated link names; the client sits on the first.
        #[arg(long, default_value = "lan,sync", value_delimiter = ',')]
        links: Vec<String>,
    },
    /// Remove namespaces, cgroups and processes left by crashed runs.
    Sweep,
    /// Answer UDP probes and TCP connections with NAME (run inside a node).
    Respond {
        /// Name to answer with.
        #[arg(long)]
        name: String,
        /// UDP and TCP port.
        #[arg(long, default_value_t = 7000)]
        port: u16,
    },
    /// Probe TARGET from network namespace NS and write the log.
    Probe {
        /// Namespace to probe from (e.g. the testbed's client).
        #[arg(long)]
        ns: String,
        /// Address and port, e.g. 10.77.1.100:7000.
        #[arg(long)]
        target: SocketAddr,
        /// How long to probe.
        #[arg(long, default_value_t = 10_000)]
        duration_ms: u64,
        /// Time between probes.
        #[arg(long, default_value_t = 5)]
        interval_ms: u64,
        /// An answer later than this is a timeout.
        #[arg(long, default_value_t = 100)]
        timeout_ms: u64,
        /// UDP only (no TCP connects).
        #[arg(long)]
        no_tcp: bool,
        /// Where to write the log.
        #[arg(long)]
        out: PathBuf,
    },
    /// Report gaps and dual-active instants of a probe log.
    Check {
        /// The probe log.
        log: PathBuf,
        /// A return to an earlier responder within this window is dual-active.
        #[arg(long, default_value_t = 1_000)]
        dual_window_ms: u64,
    },
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Cmd::Up { nodes, links } => {
            let bed = Testbed::new(TestbedSpec { nodes, links })?;
            println!("testbed {} is up:", bed.id());
            for n in 1..=bed.nodes() {
                let addrs: Vec<String> = bed
                    .links()
                    .iter()
                    .map(|l| format!("{l}={}", bed.address(n, l)))
                    .collect();
                println!(
                    "  n{n}: ip netns exec {} bash   ({})",
                    bed.node_ns(n),
                    addrs.join(" ")
                );
            }
            println!(
                "  client: ip netns exec {} bash   (lan={})",
                bed.client_ns(),
                bed.client_address()
            );
            println!("press Ctrl-C to tear it down");
            wait_for_termination()?;
            bed.teardown()?;
            println!("torn down");
        }
        Cmd::Sweep => {
            let removed = sweep::sweep()?;
            println!(
                "removed {} leftover run(s){}",
                removed.len(),
                if removed.is_empty() {
                    String::new()
                } else {
                    format!(": {}", removed.join(", "))
                }
            );
        }
        Cmd::Respond { name, port } => responder::serve(&name, port)?,
        Cmd::Probe {
            ns,
            target,
            duration_ms,
            interval_ms,
            timeout_ms,
            no_tcp,
            out,
        } => {
            let spec = ProbeSpec {
                target,
                interval_ms,
                timeout_ms,
                duration_ms,
                tcp: !no_tcp,
                http_port: None,
            };
            let log = Prober::start(&ns, spec)?.join()?;
            std::fs::write(&out, log.to_text())
                .with_context(|| format!("writing {}", out.display()))?;
            print!("{}", analyze(&log.records, CheckOptions::default()));
        }
        Cmd::Check {
            log,
            dual_window_ms,
        } => {
            let text = std::fs::read_to_string(&log)
                .with_context(|| format!("reading {}", log.display()))?;
            let parsed =
                ProbeLog::parse(&text).with_context(|| format!("parsing {}", log.display()))?;
            let report = analyze(&parsed.records, CheckOptions { dual_window_ms });
            print!("{report}");
            if report.dual_active().next().is_some() {
                return Ok(ExitCode::from(2));
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Blocks until SIGINT or SIGTERM.
fn wait_for_termination() -> Result<()> {
    // SAFETY: sigset manipulation on a local set, then sigwait; the signals are
    // blocked first so they are queued for sigwait instead of killing us.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGINT);
        libc::sigaddset(&mut set, libc::SIGTERM);
        if libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) != 0 {
            anyhow::bail!("cannot block SIGINT/SIGTERM");
        }
        let mut sig = 0;
        libc::sigwait(&set, &mut sig);
    }
    Ok(())
}
