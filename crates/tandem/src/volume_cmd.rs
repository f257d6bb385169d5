//! `tandem volume ...`: create a copy offline; everything else asks the
//! local agent, which runs the copies.

use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::cli::VolumeCommandArgs;
use tandem_agent::volume::engine::{LinkState, VolumeStatus};
use tandem_agent::volume::{VolumeAnswer, VolumeCommand};

/// Longest `verify` waits for its result.
const VERIFY_LIMIT: Duration = Duration::from_secs(24 * 3600);

fn ask(socket: &Path, cmd: VolumeCommand) -> Result<VolumeAnswer> {
    Ok(tandem_agent::control::Client::new(socket).volume(cmd)?)
}

/// Runs one `tandem volume` subcommand.
pub fn run(args: VolumeCommandArgs) -> Result<ExitCode> {
    match args {
        VolumeCommandArgs::Create {
            name,
            config,
            node,
            state_dir,
            source,
            force,
        } => {
            let cfg = crate::config_cmd::load_valid(&config)?;
            let node = match node {
                Some(n) => n,
                None => local_node(&cfg, &name)?,
            };
            let state_dir = state_dir.unwrap_or_else(|| cfg.cluster.state_dir.clone());
            println!(
                "{}",
                tandem_agent::volume::create(&cfg, &node, &state_dir, &name, source, force)?
            );
            Ok(ExitCode::SUCCESS)
        }
        VolumeCommandArgs::Status {
            name,
            json,
            watch,
            at,
        } => {
            let s = at.socket()?;
            loop {
                let a = ask(&s, VolumeCommand::Status { name: name.clone() })?;
                if json {
                    println!("{}", serde_json::to_string_pretty(&a)?);
                    return Ok(ExitCode::SUCCESS);
                }
                if let Some(e) = &a.error {
                    eprintln!("error: {e}");
                    return Ok(ExitCode::FAILURE);
                }
                if watch {
                    // Clear the screen and redraw.
                    print!("\x1b[2J\x1b[H");
                }
                print!("{}", render(&a.volumes, true));
                if !watch {
                    return Ok(ExitCode::SUCCESS);
                }
                std::thread::sleep(Duration::from_secs(1));
            }
        }
        VolumeCommandArgs::Promote { name, force, at } => {
            simple(&at.socket()?, VolumeCommand::Promote { name, force })
        }
        VolumeCommandArgs::Demote { name, at } => {
            simple(&at.socket()?, VolumeCommand::Demote { name })
        }
        VolumeCommandArgs::Disconnect { name, at } => {
            simple(&at.socket()?, VolumeCommand::Disconnect { name })
        }
        VolumeCommandArgs::Connect {
            name,
            discard_my_data,
            at,
        } => simple(
            &at.socket()?,
            VolumeCommand::Connect {
                name,
                discard_my_data,
            },
        ),
        VolumeCommandArgs::Verify { name, at } => verify(&at.socket()?, &name),
    }
}

fn simple(socket: &Path, cmd: VolumeCommand) -> Result<ExitCode> {
    let a = ask(socket, cmd)?;
    if let Some(m) = &a.message {
        eprintln!("{m}");
    }
    if let Some(e) = &a.error {
        eprintln!("error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    print!("{}", render(&a.volumes, false));
    Ok(ExitCode::SUCCESS)
}

fn verify(socket: &Path, name: &str) -> Result<ExitCode> {
    let started = Instant::now();
    let a = ask(socket, VolumeCommand::Verify { name: name.into() })?;
    if let Some(e) = &a.error {
        eprintln!("error: {e}");
        return Ok(ExitCode::FAILURE);
    }
    // The verify runs in the agent; follow its progress.
    std::thread::sleep(Duration::from_millis(200));
    loop {
        let a = ask(
            socket,
            VolumeCommand::Status {
                name: Some(name.into()),
            },
        )?;
        let Some(v) = a.volumes.first().and_then(|s| s.verify.clone()) else {
            anyhow::bail!("the agent shows no verify for `{name}`");
        };
        if !v.running {
            if let Some(e) = &v.error {
                eprintln!(
                    "error: verify stopped after {} MiB: {e}",
                    v.done_bytes >> 20
                );
                return Ok(ExitCode::FAILURE);
            }
            println!(
                "verify of `{name}`: {} MiB compared in {:.1} s, {} blocks differ{}",
                v.done_bytes >> 20,
                started.elapsed().as_secs_f64(),
                v.differing_blocks,
                if v.differing_blocks == 0 {
                    " (both copies identical)".to_string()
                } else {
                    format!(
                        "; first at byte offsets {:?}; they are marked and copied from this copy at the next reconnect",
                        v.first_differing
                    )
                }
            );
            return Ok(if v.differing_blocks == 0 {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(3)
            });
        }
        eprint!(
            "\rverify: {} {:>3}%",
            bar(v.done_bytes, v.total_bytes),
            v.done_bytes * 100 / v.total_bytes.max(1)
        );
        if started.elapsed() > VERIFY_LIMIT {
            anyhow::bail!("verify did not finish within {} s", VERIFY_LIMIT.as_secs());
        }
        std::thread::sleep(Duration::from_millis(500));
    }
}

/// The volume's node whose sync address is on this machine.
fn local_node(cfg: &tandem_core::config::Config, name: &str) -> Result<String> {
    let v = cfg
        .volume(name)
        .with_context(|| format!("no volume `{name}` in the configuration"))?;
    for n in &v.nodes {
        if let Ok(c) = tandem_agent::volume::configs(cfg, n, [0; 32], Path::new("/")) {
            if let Some(c) = c.iter().find(|c| c.name == name) {
                if std::net::UdpSocket::bind((c.my_addr.ip(), 0)).is_ok() {
                    return Ok(n.clone());
                }
            }
        }
    }
    anyhow::bail!("neither of volume `{name}`'s nodes has its sync address on this machine; say which with `--node`")
}

fn bar(done: u64, total: u64) -> String {
    const W: u64 = 30;
    let n = (done * W / total.max(1)).min(W) as usize;
    format!("[{}{}]", "#".repeat(n), ".".repeat(W as usize - n))
}

fn mib(b: u64) -> String {
    if b >= 10 << 30 {
        format!("{} GiB", b >> 30)
    } else {
        format!("{} MiB", b >> 20)
    }
}

/// Volumes as text; `detail` adds counters, generations and events.
pub fn render(vols: &[VolumeStatus], detail: bool) -> String {
    let mut o = String::new();
    for v in vols {
        let link = match &v.link {
            LinkState::Connected => format!(
                "connected to {} ({}{})",
                v.peer,
                v.peer_role.as_deref().unwrap_or("?"),
                match v.sync_role {
                    Some(tandem_agent::volume::engine::SyncRole::Source) => ", sync source",
                    Some(tandem_agent::volume::engine::SyncRole::Target) => ", sync target",
                    _ => "",
                }
            ),
            LinkState::Connecting if v.peer.is_empty() => {
                "one copy, not replicated (`tandem node add NAME --address LINK=IP --volume VOLUME=PATH` gives it a second)".into()
            }
            LinkState::Connecting => format!("not connected to {} (trying)", v.peer),
            LinkState::SplitBrain(t) | LinkState::Refused(t) => format!("STOPPED: {t}"),
            LinkState::AdminDown => {
                "disconnected by the operator (`tandem volume connect` restores it)".into()
            }
        };
        let _ = writeln!(
            o,
            "volume {} on {}: {} {}/{}, protocol {}, {}",
            v.name,
            v.node,
            v.role,
            v.disk,
            v.peer_disk,
            v.protocol,
            mib(v.size)
        );
        let _ = writeln!(o, "  link: {link}");
        if let Some(s) = &v.sync {
            let _ = writeln!(
                o,
                "  sync ({}{}): {} {:>3}%  {} of {}, {:.1} MiB/s, ETA {}",
                s.direction,
                if s.full { ", full" } else { "" },
                bar(s.done_bytes, s.total_bytes),
                s.done_bytes * 100 / s.total_bytes.max(1),
                mib(s.done_bytes),
                mib(s.total_bytes),
                s.rate_bytes_s / (1 << 20) as f64,
                s.eta_s.map_or("unknown".into(), |e| format!("{e} s"))
            );
        }
        if v.dirty_bytes > 0 {
            let _ = writeln!(
                o,
                "  out of sync: {} ({} bytes)",
                mib(v.dirty_bytes),
                v.dirty_bytes
            );
        }
        if let Some(vr) = &v.verify {
            let _ = writeln!(
                o,
                "  verify: {}{} of {} compared, {} blocks differ{}",
                if vr.running { "running, " } else { "" },
                mib(vr.done_bytes),
                mib(vr.total_bytes),
                vr.differing_blocks,
                vr.error
                    .as_ref()
                    .map_or(String::new(), |e| format!(" (stopped: {e})"))
            );
        }
        if let Some(r) = &v.record_up_to_date {
            let _ = writeln!(
                o,
                "  cluster record: up to date on {}",
                if r.is_empty() {
                    "no copy".into()
                } else {
                    r.join(", ")
                }
            );
        }
        if v.nbd_clients > 0 {
            let _ = writeln!(o, "  NBD clients: {}", v.nbd_clients);
        }
        if detail {
            let c = &v.counters;
            let _ = writeln!(
                o,
                "  generations {}; resync sent {} B, received {} B, syncs finished {}; writes replicated {}, alone {}; large payloads spliced {}, buffered {}",
                v.generations,
                c.resync_bytes_sent,
                c.resync_bytes_received,
                c.syncs_finished,
                c.writes_replicated,
                c.writes_alone,
                c.payloads_spliced,
                c.payloads_buffered
            );
            for e in &v.events {
                let _ = writeln!(o, "  - {e}");
            }
        }
    }
    o
}
