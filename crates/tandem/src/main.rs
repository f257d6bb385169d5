//! The `tandem` command: parse arguments, dispatch to the module that
//! holds each command, print.

mod admin;
mod cli;
mod config_change_cmd;
mod config_cmd;
#[cfg(feature = "demo")]
mod demo;
mod import_cmd;
mod init_cmd;
mod join_cmd;
mod man;
mod render;
mod report;
mod volume_cmd;

use tandem_agent::{agent, guard, keyfile, state_file};

use std::io::Write as _;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{CommandFactory, Parser};

use cli::{Cli, Command, ConfigCommand, ImportCommand};

/// Exit status of `config diff` when the two files differ (1 is kept for
/// errors, such as an invalid file).
const DIFFERENT: u8 = 3;

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<ExitCode> {
    match cli.command {
        Command::Agent {
            config,
            node,
            join,
            key,
            control_socket,
            state_dir,
            recovery,
            log,
        } => {
            tandem_agent::logging::init(&log.options(), tandem_agent::logging::Program::Agent)?;
            let node = match (join, key) {
                (Some(at), Some(key)) => Some(join_cmd::join(
                    &config,
                    &at,
                    &key,
                    node.as_deref(),
                    state_dir.as_deref(),
                )?),
                _ => node,
            };
            run_member(
                &config,
                agent::MemberRole::Node(node),
                control_socket,
                state_dir,
                recovery.recovery(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Witness {
            config,
            control_socket,
            state_dir,
            recovery,
            log,
        } => {
            tandem_agent::logging::init(&log.options(), tandem_agent::logging::Program::Agent)?;
            run_member(
                &config,
                agent::MemberRole::Witness,
                control_socket,
                state_dir,
                recovery.recovery(),
            )?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Events {
            since,
            follow,
            json,
            at,
        } => {
            admin::print_events(&at.socket()?, since, follow, json)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Report { since, out, at } => {
            let written = report::run(&at.socket()?, since, out)?;
            let size = std::fs::metadata(&written).map_or(0, |m| m.len());
            println!("wrote {} ({} KiB)", written.display(), size.div_ceil(1024));
            Ok(ExitCode::SUCCESS)
        }
        Command::Status {
            json,
            watch,
            interval,
            at,
        } => {
            if watch {
                admin::watch_status(&at.socket()?, std::time::Duration::from_secs(interval))?;
            } else {
                admin::print_status(&at.socket()?, json)?;
            }
            Ok(ExitCode::SUCCESS)
        }
        Command::Move {
            group,
            to,
            clear,
            admin,
        } => admin::move_group(&admin, &group, if clear { None } else { to }),
        Command::Failover { group, admin } => admin::failover(&admin, group.as_deref()),
        Command::Node {
            action,
            node,
            address,
            volume,
            fence,
            forget,
            admin,
        } => match action {
            _ if !(volume.is_empty() && fence.is_empty()) && address.is_empty() => {
                anyhow::bail!("--volume and --fence go with `tandem node add NAME --address ...` only (a new node's copies and fencing)")
            }
            _ if !address.is_empty() && action != cli::NodeAction::Add => {
                anyhow::bail!("--address goes with `tandem node add` only")
            }
            _ if forget && action != cli::NodeAction::Remove => {
                anyhow::bail!("--forget goes with `tandem node remove` only")
            }
            cli::NodeAction::Remove if forget => config_change_cmd::forget_node(&admin, &node),
            cli::NodeAction::Standby => admin::node(&admin, &node, true),
            cli::NodeAction::Online => admin::node(&admin, &node, false),
            cli::NodeAction::Add if !address.is_empty() => {
                config_change_cmd::add_node(&admin, &node, &address, &volume, &fence)
            }
            cli::NodeAction::Add => admin::node_vote(&admin, &node, true),
            cli::NodeAction::Remove => admin::node_vote(&admin, &node, false),
        },
        Command::Maintenance {
            action,
            group,
            admin,
        } => admin::maintenance(&admin, group.as_deref(), action == cli::OnOff::On),
        Command::Cleanup { group, admin } => admin::cleanup(&admin, &group),
        Command::Fence {
            node,
            yes,
            on,
            admin,
        } => admin::fence(&admin, &node, yes, on),
        Command::Volume(v) => volume_cmd::run(v),
        #[cfg(feature = "demo")]
        Command::Demo { fast } => demo::run(fast),
        #[cfg(feature = "demo")]
        Command::DemoService {
            port,
            probe_port,
            name,
        } => {
            // A service started through `su -` (OCF's `anything`) has a
            // fresh environment: then the host's name (the testbed gives
            // each node its own).
            let name = name
                .or_else(|| std::env::var("TANDEM_NODE").ok())
                .or_else(|| {
                    std::fs::read_to_string("/proc/sys/kernel/hostname")
                        .ok()
                        .map(|h| h.trim().to_string())
                        .filter(|h| !h.is_empty())
                })
                .context("no name: pass --name or set TANDEM_NODE")?;
            demo::serve(&name, port, probe_port)?;
            Ok(ExitCode::SUCCESS)
        }
        #[cfg(feature = "demo")]
        Command::TestbedFence => {
            let mut input = String::new();
            std::io::Read::read_to_string(
                &mut std::io::Read::take(std::io::stdin(), 64 << 10),
                &mut input,
            )
            .context("reading the fence agent's options from stdin")?;
            let (code, text) = tandem_testbed::fence::agent(&input);
            println!("{text}");
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
        Command::Guard {
            lease_file,
            agent_pid,
            label,
            log,
        } => {
            // The guard must run whatever becomes of its log: text on
            // stderr if the chosen destination fails.
            if let Err(e) =
                tandem_agent::logging::init(&log.options(), tandem_agent::logging::Program::Guard)
            {
                let text = tandem_agent::logging::LogOptions {
                    format: tandem_agent::logging::LogFormat::Text,
                    file: None,
                    ..log.options()
                };
                let _ = tandem_agent::logging::init(&text, tandem_agent::logging::Program::Guard);
                tandem_agent::logging::emit(
                    tandem_agent::logging::Program::Guard,
                    tandem_agent::logging::Severity::Warn,
                    &label,
                    "logging",
                    &format!("{e:#}: logging text to stderr"),
                );
            }
            guard::run(&lease_file, agent_pid, &label)?;
            Ok(ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Validate(args)) => Ok(if config_cmd::validate(&args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Config(ConfigCommand::Show { file, format }) => {
            config_cmd::show(&file, format).map(|()| ExitCode::SUCCESS)
        }
        Command::Config(ConfigCommand::Apply(args)) => config_change_cmd::apply(&args),
        Command::Config(ConfigCommand::History {
            state_dir,
            config,
            json,
        }) => config_change_cmd::history(state_dir.as_deref(), &config, json),
        Command::Config(ConfigCommand::Rollback {
            epoch,
            state_dir,
            apply,
        }) => config_change_cmd::rollback(epoch, state_dir.as_deref(), &apply),
        Command::Config(ConfigCommand::Diff {
            old,
            new,
            config,
            json,
        }) => {
            let (old, new) = match new {
                Some(n) => (old, n),
                None => (config, old),
            };
            config_cmd::diff(&old, &new, json).map(|differ| {
                if differ {
                    ExitCode::from(DIFFERENT)
                } else {
                    ExitCode::SUCCESS
                }
            })
        }
        Command::Init(args) => Ok(if init_cmd::run(&args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Import(ImportCommand::Pacemaker(args)) => Ok(if import_cmd::pacemaker(&args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Import(ImportCommand::Keepalived(args)) => Ok(if import_cmd::keepalived(&args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Import(ImportCommand::Heartbeat(args)) => Ok(if import_cmd::heartbeat(&args)? {
            ExitCode::SUCCESS
        } else {
            ExitCode::FAILURE
        }),
        Command::Keygen { file } => {
            keyfile::generate(&file)?;
            println!(
                "wrote a new 32-byte cluster key to {} (mode 0600); copy it to every node",
                file.display()
            );
            Ok(ExitCode::SUCCESS)
        }
        Command::Completions { shell } => {
            clap_complete::generate(shell, &mut Cli::command(), "tandem", &mut std::io::stdout());
            Ok(ExitCode::SUCCESS)
        }
        Command::Man { out_dir } => {
            let cmd = Cli::command();
            match out_dir {
                Some(dir) => {
                    std::fs::create_dir_all(&dir)
                        .with_context(|| format!("creating {}", dir.display()))?;
                    man::write_pages(cmd, &dir)
                        .with_context(|| format!("writing man pages to {}", dir.display()))?;
                    println!("wrote man pages to {}", dir.display());
                }
                None => {
                    let mut out = Vec::new();
                    clap_mangen::Man::new(cmd)
                        .section(man::SECTION)
                        .render(&mut out)
                        .context("rendering the man page")?;
                    std::io::stdout()
                        .write_all(&out)
                        .context("writing the man page")?;
                }
            }
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// Loads the configuration and runs an agent or a witness.
fn run_member(
    config: &std::path::Path,
    role: agent::MemberRole,
    control_socket: Option<std::path::PathBuf>,
    state_dir: Option<std::path::PathBuf>,
    recovery: state_file::Recovery,
) -> Result<()> {
    let cfg = config_cmd::load_valid(config)?;
    let identity = tandem_core::config::identity::of(&cfg);
    // Read again for its text: a configuration change rewrites the file
    // and keeps the text of each committed one.
    let text = std::fs::read_to_string(config)
        .with_context(|| format!("reading configuration file {}", config.display()))?;
    agent::run(
        cfg,
        agent::AgentOptions {
            role,
            control_socket,
            state_dir,
            config: identity,
            recovery,
            config_file: Some((config.to_path_buf(), text)),
        },
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cli_definition_is_consistent() {
        Cli::command().debug_assert();
    }
}
