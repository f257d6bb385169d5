//! `tandem config apply`, `config history` and `config rollback`: change
//! the running cluster's configuration through the local agent, which
//! offers it to every node ([`tandem_agent::config_change`]), then watch
//! the local agent's status until every node runs it.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use tandem_agent::config_change::ApplyOutcome;
use tandem_agent::config_store::{Store, MAX_CONFIG_BYTES};
use tandem_agent::control::{Client, ControlRequest, ControlResponse};
use tandem_agent::status::Status;

use crate::cli::{ApplyArgs, ApplyOptions};

/// Poll interval while waiting for the switch.
const POLL: Duration = Duration::from_millis(100);
/// How long the leader may take to begin a change it was asked for.
const NOT_BEGUN: Duration = Duration::from_secs(5);

/// `tandem config apply FILE`.
pub fn apply(args: &ApplyArgs) -> Result<ExitCode> {
    let text = std::fs::read_to_string(&args.file)
        .with_context(|| format!("reading configuration file {}", args.file.display()))?;
    // This machine's checks first, with file positions: the agent says
    // the same in fewer words.
    let label = args.file.display().to_string();
    // Where the agents resolve relative paths: their configuration's
    // directory (`--config`), else the file's own.
    let base = args
        .apply
        .at
        .config
        .as_deref()
        .or(Some(args.file.as_path()))
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    if !checked_here(&text, &label, &base) {
        eprintln!("nothing was changed: fix {label} first");
        return Ok(ExitCode::FAILURE);
    }
    run(&text, &label, &args.apply)
}

/// This machine's checks of `text` (relative paths resolved in `base`),
/// said on stderr with positions; whether it passed.
fn checked_here(text: &str, label: &str, base: &Path) -> bool {
    let loaded = tandem_core::config::load(text, base, &tandem_agent::keyfile::facts);
    crate::config_cmd::check_to_stderr(label, text, &loaded)
}

/// `tandem config rollback EPOCH`.
pub fn rollback(epoch: u64, state_dir: Option<&Path>, opts: &ApplyOptions) -> Result<ExitCode> {
    let dir = state_dir_of(state_dir, opts.at.config.as_deref())?;
    let store = Store::new(&dir);
    let history = store.history();
    let Some(entry) = history.iter().rev().find(|e| e.epoch == epoch) else {
        let known: Vec<String> = history.iter().map(|e| e.epoch.to_string()).collect();
        bail!(
            "no configuration of epoch {epoch} in {} (kept: {}); `tandem config history` lists them",
            dir.display(),
            if known.is_empty() {
                "none".to_string()
            } else {
                known.join(", ")
            }
        );
    };
    let text = std::fs::read_to_string(&entry.path)
        .with_context(|| format!("reading {}", entry.path.display()))?;
    let label = format!("the configuration of epoch {epoch} ({})", entry.hash);
    // Checked here first, as `apply` does: a key file or binary gone
    // since that epoch is said with its position before any node is asked.
    // Relative paths resolve in the directory of the node's configuration:
    // `--config`'s, or /etc/tandem's when the state directory is its
    // default one. With only `--state-dir` that directory is unknown here,
    // and the nodes' own checks (each in its configuration's directory)
    // are the only ones.
    let base = match (opts.at.config.as_deref(), state_dir) {
        (Some(cfg), _) => cfg.parent().map(Path::to_path_buf),
        (None, None) => Some(PathBuf::from("/etc/tandem")),
        (None, Some(_)) => None,
    };
    if let Some(base) = base {
        if !checked_here(&text, &label, &base) {
            eprintln!(
                "nothing was changed: {label} no longer passes this node's checks; fix what they name, or apply a corrected copy with `tandem config apply FILE`"
            );
            return Ok(ExitCode::FAILURE);
        }
    }
    run(&text, &label, opts)
}

/// `tandem config history`.
pub fn history(state_dir: Option<&Path>, config: &Path, json: bool) -> Result<ExitCode> {
    let dir = state_dir_of(state_dir, Some(config))?;
    // A state directory that is not there is a wrong path (or a node that
    // never ran), not an empty history.
    if !dir.is_dir() {
        bail!(
            "no state directory at {}: give this node's (`--state-dir`, or `-c` its configuration, whose `state_dir` it is)",
            dir.display()
        );
    }
    // A history that cannot be read is said, not shown as empty.
    if let Err(e) = std::fs::read_dir(dir.join("config-history")) {
        if e.kind() != std::io::ErrorKind::NotFound {
            bail!(
                "cannot read {} ({e}): the history is root's, like the configuration",
                dir.join("config-history").display()
            );
        }
    }
    let entries = Store::new(&dir).history();
    if json {
        println!("{}", serde_json::to_string_pretty(&entries)?);
        return Ok(ExitCode::SUCCESS);
    }
    if entries.is_empty() {
        println!(
            "no configuration recorded in {} yet (a node records each one it sees committed)",
            dir.display()
        );
        return Ok(ExitCode::SUCCESS);
    }
    println!("{:>6}  {:<16}  recorded (UTC)", "epoch", "configuration");
    for e in &entries {
        println!(
            "{:>6}  {:<16}  {}",
            e.epoch,
            e.hash,
            tandem_agent::clock::format_utc(e.at_unix_ms)
        );
    }
    println!("`tandem config rollback EPOCH` applies one of them again");
    Ok(ExitCode::SUCCESS)
}

/// The state directory: as given, else the configuration's.
fn state_dir_of(given: Option<&Path>, config: Option<&Path>) -> Result<PathBuf> {
    if let Some(d) = given {
        return Ok(d.to_path_buf());
    }
    let config = config.unwrap_or(Path::new("/etc/tandem/tandem.toml"));
    let cfg = crate::config_cmd::load_valid(config).with_context(|| {
        format!(
            "finding this node's state directory from {} (or give --state-dir)",
            config.display()
        )
    })?;
    Ok(cfg.cluster.state_dir)
}

/// Offers `text` to the cluster through the local agent and waits for
/// every node to run it.
fn run(text: &str, label: &str, opts: &ApplyOptions) -> Result<ExitCode> {
    if text.len() > MAX_CONFIG_BYTES {
        bail!(
            "{label} is {} bytes; at most {MAX_CONFIG_BYTES} are accepted",
            text.len()
        );
    }
    let sock = opts.at.socket()?;
    let client = Client::new(&sock);
    eprintln!("offering {label} to every node (each checks it on its own machine)...");
    let answer = client.call(&ControlRequest::ConfigApply {
        text: text.to_string(),
        force: opts.force,
    })?;
    let outcome = match answer {
        ControlResponse::ConfigApply { outcome } => outcome,
        ControlResponse::Error { error } => {
            eprintln!("error: {error}");
            eprintln!("nothing was changed");
            return Ok(ExitCode::FAILURE);
        }
        other => bail!("the agent answered `config apply` with {other:?}"),
    };
    print_outcome(&outcome);
    if outcome.changes.is_empty() {
        println!(
            "no change: the cluster already runs configuration {}",
            outcome.hash
        );
        return Ok(ExitCode::SUCCESS);
    }
    if !outcome.begun {
        if outcome.nodes.iter().any(|n| n.verdict == "refused") {
            eprintln!("nothing was changed: fix what the nodes above refused, then apply again");
        } else {
            eprintln!(
                "nothing was changed: some nodes did not answer; bring them up, or `--force` to change without them (they catch up when they return)"
            );
        }
        return Ok(ExitCode::FAILURE);
    }
    wait(&client, &outcome, Duration::from_secs(opts.timeout))
}

fn print_outcome(o: &ApplyOutcome) {
    for c in &o.changes {
        println!("  {c}");
    }
    if !o.summary.is_empty() {
        println!("  {}", o.summary);
    } else if !o.restart.is_empty() {
        println!(
            "  stopped by the change: {} (every other group keeps running)",
            o.restart.join(", ")
        );
    }
    for n in &o.nodes {
        match n.why.as_slice() {
            [] => println!("  {:<12} {}", n.node, n.verdict),
            why => {
                println!("  {:<12} {}:", n.node, n.verdict);
                for w in why {
                    println!("      {w}");
                }
            }
        }
    }
}

/// Watches the local agent until configuration `o.hash` is committed and
/// every node heard runs it.
fn wait(client: &Client, o: &ApplyOutcome, limit: Duration) -> Result<ExitCode> {
    let t0 = Instant::now();
    let mut said = String::new();
    let mut last: Option<Status> = None;
    let mut begun = false;
    while t0.elapsed() < limit {
        std::thread::sleep(POLL);
        let Ok(s) = client.status() else { continue };
        let c = &s.config;
        begun |= c.next.as_deref() == Some(o.hash.as_str());
        if c.committed == o.hash && c.next.is_none() {
            // The witness keeps its own file (it runs nothing).
            let behind: Vec<&str> = c
                .differing
                .iter()
                .filter(|d| d.identity != o.hash && d.node != tandem_agent::agent::WITNESS_NAME)
                .map(|d| d.node.as_str())
                .collect();
            println!(
                "configuration {} committed as epoch {} in {} ms{}",
                o.hash,
                s.agreement.config_epoch,
                t0.elapsed().as_millis(),
                if behind.is_empty() {
                    "; every node heard runs it".to_string()
                } else {
                    format!(
                        "; not running it yet: {} (a node offline now catches up when it returns)",
                        behind.join(", ")
                    )
                }
            );
            return Ok(ExitCode::SUCCESS);
        }
        if begun && c.next.is_none() && c.committed != o.hash {
            eprintln!(
                "the change to {} was abandoned: no majority of voters switched to it in time (the nodes that did switch back); `tandem events` says why on each node",
                o.hash
            );
            return Ok(ExitCode::FAILURE);
        }
        if !begun && c.next.as_ref().is_some_and(|n| *n != o.hash) {
            eprintln!(
                "another change (to {}) began first; this one was not begun: wait for it, then apply again",
                c.next.as_deref().unwrap_or_default()
            );
            return Ok(ExitCode::FAILURE);
        }
        if !begun && t0.elapsed() > NOT_BEGUN {
            eprintln!(
                "the leader did not begin the change within {} s: fewer than a majority of voters may be online (`tandem status`), or the leader changed; apply again",
                NOT_BEGUN.as_secs()
            );
            return Ok(ExitCode::FAILURE);
        }
        let switched: Vec<&str> = c
            .differing
            .iter()
            .filter(|d| d.identity == o.hash)
            .map(|d| d.node.as_str())
            .collect();
        let note = format!("switched so far: {}", list(&switched));
        if note != said {
            println!("  {note}");
            said = note;
        }
        last = Some(s);
    }
    eprintln!(
        "configuration {} not committed after {} s (the change goes on; `tandem status` shows it){}",
        o.hash,
        limit.as_secs(),
        last.map_or(String::new(), |s| format!(
            "; committed now: {}",
            s.config.committed
        ))
    );
    Ok(ExitCode::FAILURE)
}

fn list(v: &[&str]) -> String {
    if v.is_empty() {
        "none".into()
    } else {
        v.join(", ")
    }
}

/// How often the wait for a new node to join looks at the status.
const JOIN_POLL: Duration = Duration::from_millis(200);

/// `tandem node add NAME --address LINK=IP...` for a node the
/// configuration does not list: the configuration (read from --config)
/// gains it at the end of its nodes, applied through the cluster as
/// `tandem config apply` does; then, unless --no-wait, this waits for the
/// node to join (`tandem agent --join` on it) and gives it a vote.
pub fn add_node(
    a: &crate::cli::AdminArgs,
    node: &str,
    addresses: &[String],
    volumes: &[String],
    fence: &[String],
) -> Result<ExitCode> {
    let Committed {
        label,
        text,
        base,
        cfg,
        me,
    } = committed_file(a)?;
    let sock = a.at.socket()?;
    let added = with_node(&text, &cfg, node, addresses)?;
    let added = with_fencing(
        &with_copies(&added, &cfg, node, volumes)?,
        &cfg,
        node,
        fence,
    )?;
    let applied = apply_nodes(
        a,
        &added,
        &format!("{label} with node {node}"),
        &base,
        "nothing was changed",
    )?;
    if applied != ExitCode::SUCCESS {
        return Ok(applied);
    }
    let hint = join_hint(&cfg, &me, &label);
    if a.no_wait {
        println!("{node} is in the configuration; start it with:\n  {hint}\nthen `tandem node add {node}` gives it a vote");
        return Ok(ExitCode::SUCCESS);
    }
    println!("{node} is in the configuration; start it now with:\n  {hint}");
    eprintln!("waiting up to {} s for {node} to join...", a.timeout);
    let t0 = Instant::now();
    let limit = Duration::from_secs(a.timeout);
    while t0.elapsed() < limit {
        let heard = crate::admin::status(&sock).ok().is_some_and(|st| {
            st.peers
                .iter()
                .any(|p| p.name == node && p.state == tandem_agent::status::PeerState::Online)
        });
        if heard && volumes.is_empty() {
            eprintln!(
                "{node} joined after {} s; giving it a vote",
                t0.elapsed().as_secs()
            );
            return crate::admin::node_vote(a, node, true);
        }
        if heard {
            // The vote only once its copies hold the data: a pair member
            // whose copy is still a sync target could win a fence race
            // and leave the only good copy powered off.
            eprintln!(
                "{node} joined after {} s; its copies sync first (as long as it takes: Ctrl-C stops following, the sync goes on), then it gets its vote",
                t0.elapsed().as_secs()
            );
            if follow_full_sync(&sock, node, volumes, FULL_SYNC_LIMIT)? != ExitCode::SUCCESS {
                eprintln!("once they are in sync, `tandem node add {node}` gives {node} its vote");
                return Ok(ExitCode::FAILURE);
            }
            return crate::admin::node_vote(a, node, true);
        }
        std::thread::sleep(JOIN_POLL);
    }
    eprintln!(
        "{node} is in the configuration but was not heard within {} s: start it with `{hint}`, then `tandem node add {node}` gives it a vote",
        a.timeout
    );
    Ok(ExitCode::FAILURE)
}

/// Longest `node add` follows a new copy's full sync (a week: a sync
/// takes as long as the data does).
const FULL_SYNC_LIMIT: Duration = Duration::from_secs(7 * 24 * 3600);

/// How often the full sync of a new copy is reported.
const SYNC_REPORT: Duration = Duration::from_secs(2);

/// Follows the full sync of each new copy of `copies` (`VOLUME=PATH`) on
/// `node` from this node's copy, a line of progress every
/// [`SYNC_REPORT`], until both copies are up to date or `limit` passes
/// (the sync goes on: `tandem volume status` shows it).
fn follow_full_sync(
    sock: &Path,
    node: &str,
    copies: &[String],
    limit: Duration,
) -> Result<ExitCode> {
    let names: Vec<&str> = copies
        .iter()
        .filter_map(|c| c.split_once('=').map(|(v, _)| v.trim()))
        .collect();
    let t0 = Instant::now();
    let mut last_report: Option<Instant> = None;
    loop {
        let st = crate::admin::status(sock)?;
        let mine: Vec<&tandem_agent::volume::engine::VolumeStatus> = st
            .volumes
            .iter()
            .filter(|v| names.contains(&v.name.as_str()) && v.peer == node)
            .collect();
        let done = |v: &&tandem_agent::volume::engine::VolumeStatus| {
            v.sync.is_none()
                && v.disk == tandem_core::volume::DiskState::UpToDate
                && v.peer_disk == tandem_core::volume::DiskState::UpToDate
        };
        if mine.len() == names.len() && mine.iter().all(done) {
            eprintln!(
                "{node}'s copies are in sync ({}) after {} s; giving it a vote",
                names.join(", "),
                t0.elapsed().as_secs()
            );
            return Ok(ExitCode::SUCCESS);
        }
        if last_report.map_or(true, |r| r.elapsed() >= SYNC_REPORT) {
            last_report = Some(Instant::now());
            for v in &mine {
                match &v.sync {
                    Some(s) => eprintln!(
                        "volume {} to {node}: {} sync {:>3}%, {} of {} MiB, {:.1} MiB/s, ETA {}",
                        v.name,
                        if s.full { "full" } else { "bitmap" },
                        s.done_bytes * 100 / s.total_bytes.max(1),
                        s.done_bytes >> 20,
                        s.total_bytes >> 20,
                        s.rate_bytes_s / f64::from(1u32 << 20),
                        s.eta_s.map_or("unknown".into(), |e| format!("{e} s"))
                    ),
                    None => eprintln!(
                        "volume {} to {node}: {}/{} (connecting)",
                        v.name, v.disk, v.peer_disk
                    ),
                }
            }
        }
        if t0.elapsed() >= limit {
            eprintln!(
                "the new copies are not in sync after {} s; the sync goes on (`tandem volume status` shows it)",
                limit.as_secs()
            );
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(JOIN_POLL);
    }
}

/// The configuration file a change of nodes starts from.
struct Committed {
    /// Its path, for messages.
    label: String,
    /// Its text.
    text: String,
    /// Where its relative paths resolve.
    base: PathBuf,
    /// What it says.
    cfg: tandem_core::config::Config,
    /// The node whose agent was asked.
    me: String,
}

/// Checks `text` here (as `config apply` does), then applies it through
/// the local agent, waiting as long as the command's --timeout; when the
/// check fails, `unchanged` says what was left as it was.
fn apply_nodes(
    a: &crate::cli::AdminArgs,
    text: &str,
    label: &str,
    base: &Path,
    unchanged: &str,
) -> Result<ExitCode> {
    if !checked_here(text, label, base) {
        eprintln!("{unchanged}: fix what is said above");
        return Ok(ExitCode::FAILURE);
    }
    let opts = ApplyOptions {
        at: a.at.clone(),
        force: false,
        timeout: a.timeout,
    };
    run(text, label, &opts)
}

/// Reads --config (default /etc/tandem/tandem.toml), which must be the
/// cluster's committed configuration: the change must be that one node
/// and nothing else of a local edit. Its own warnings are the running
/// cluster's, not said here.
fn committed_file(a: &crate::cli::AdminArgs) -> Result<Committed> {
    let path =
        a.at.config
            .clone()
            .unwrap_or_else(|| PathBuf::from("/etc/tandem/tandem.toml"));
    let label = path.display().to_string();
    let text = std::fs::read_to_string(&path).with_context(|| {
        format!("reading configuration file {label} (give this node's with --config)")
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let Some(cfg) = tandem_core::config::load(&text, &base, &tandem_agent::keyfile::facts).config
    else {
        bail!("{label} does not pass `tandem config validate {label}`: fix it first");
    };
    let status = crate::admin::status(&a.at.socket()?)?;
    let committed = status.config.committed;
    let mine = tandem_core::config::identity::of(&cfg).hash;
    if committed.is_empty() {
        bail!(
            "this node does not know the cluster's committed configuration yet (its agent has just started, or the cluster has no leader: see `tandem status`); try again in a few seconds; nothing was changed"
        );
    }
    if mine != committed {
        bail!(
            "{label} is configuration {mine}, not the cluster's committed one ({committed}): give this node's file with --config, or apply your edits first (`tandem config apply`); nothing was changed"
        );
    }
    Ok(Committed {
        label,
        text,
        base,
        cfg,
        me: status.node,
    })
}

/// `text` with node `node` added at the end of its nodes, its address on
/// each link from `LINK=IP` items; refused when the node is there already
/// or an item names no link of `cfg` or no address.
fn with_node(
    text: &str,
    cfg: &tandem_core::config::Config,
    node: &str,
    addresses: &[String],
) -> Result<String> {
    if cfg.node(node).is_some() {
        bail!(
            "{node} is in the configuration already: `tandem node add {node}` (without --address) gives it a vote"
        );
    }
    if node.is_empty()
        || !node
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_')
    {
        bail!("{node:?}: a node's name is letters, digits, `-` and `_`");
    }
    let mut pairs = Vec::new();
    for item in addresses {
        let Some((link, ip)) = item.split_once('=') else {
            bail!(
                "--address {item}: write LINK=IP (links: {})",
                link_names(cfg)
            );
        };
        let (link, ip) = (link.trim(), ip.trim());
        if !cfg.links.iter().any(|l| l.name == link) {
            bail!(
                "--address {item}: no link named {link} (links: {})",
                link_names(cfg)
            );
        }
        let ip: std::net::IpAddr = ip
            .parse()
            .with_context(|| format!("--address {item}: {ip} is not an IP address"))?;
        if pairs.iter().any(|(l, _)| *l == link) {
            bail!("--address {item}: link {link} given twice");
        }
        pairs.push((link, ip));
    }
    let list: Vec<String> = pairs
        .iter()
        .map(|(l, ip)| format!("{l} = \"{ip}\""))
        .collect();
    let mut out = text.to_string();
    if !out.ends_with('\n') {
        out.push('\n');
    }
    out.push_str(&format!(
        "\n# Added by `tandem node add {node} --address ...`.\n[[node]]\nname = \"{node}\"\naddresses = {{ {} }}\n",
        list.join(", ")
    ));
    Ok(out)
}

/// `text` with node `node` holding the second copy of each volume of
/// `copies` (`VOLUME=PATH`: its backing store there): added to the
/// volume's `nodes` and `backing`. Only a volume with one copy takes one.
fn with_copies(
    text: &str,
    cfg: &tandem_core::config::Config,
    node: &str,
    copies: &[String],
) -> Result<String> {
    if copies.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .context("the configuration is not TOML: check it with `tandem config validate`")?;
    let names: Vec<&str> = cfg.volumes.iter().map(|v| v.name.as_str()).collect();
    for item in copies {
        let Some((volume, path)) = item.split_once('=') else {
            bail!(
                "--volume {item}: write VOLUME=PATH (volumes: {})",
                list(&names)
            );
        };
        let (volume, path) = (volume.trim(), path.trim());
        let Some(v) = cfg.volume(volume) else {
            bail!(
                "--volume {item}: no volume named {volume} (volumes: {})",
                list(&names)
            );
        };
        if v.nodes.len() != 1 {
            bail!(
                "--volume {item}: volume {volume} has its two copies already (on {})",
                v.nodes.join(", ")
            );
        }
        if !path.starts_with('/') {
            bail!("--volume {item}: {path} is not an absolute path");
        }
        let table = named_table(&mut doc, "volume", volume).with_context(|| {
            format!("--volume {item}: no [[volume]] named {volume} in the file")
        })?;
        let nodes = table
            .get_mut("nodes")
            .and_then(toml_edit::Item::as_array_mut)
            .with_context(|| format!("volume {volume}: `nodes` is not a list"))?;
        if nodes.iter().any(|n| n.as_str() == Some(node)) {
            bail!("--volume {item}: {volume} given twice");
        }
        nodes.push(node);
        // The table as written keeps its form and comments; one path for
        // every node becomes a table (the new node's path differs).
        match table
            .get_mut("backing")
            .and_then(toml_edit::Item::as_table_like_mut)
        {
            Some(t) => {
                t.insert(node, toml_edit::value(path));
            }
            None => {
                let kept = &v.nodes[0];
                let mut backing = toml_edit::InlineTable::new();
                if let tandem_core::config::Backing::Same(p) = &v.backing {
                    backing.insert(kept, p.display().to_string().into());
                }
                backing.insert(node, path.into());
                table["backing"] = toml_edit::value(backing);
            }
        }
    }
    Ok(doc.to_string())
}

/// The `[[KIND]]` table of `doc` named `name`, if any.
fn named_table<'a>(
    doc: &'a mut toml_edit::DocumentMut,
    kind: &str,
    name: &str,
) -> Option<&'a mut toml_edit::Table> {
    doc.get_mut(kind)
        .and_then(toml_edit::Item::as_array_of_tables_mut)?
        .iter_mut()
        .find(|t| t.get("name").and_then(|n| n.as_str()) == Some(name))
}

/// `text` with node `node` fenced by each device of `plugs`
/// (`DEVICE=PLUG`: the device's name for the node), added to the device's
/// `hosts`.
fn with_fencing(
    text: &str,
    cfg: &tandem_core::config::Config,
    node: &str,
    plugs: &[String],
) -> Result<String> {
    if plugs.is_empty() {
        return Ok(text.to_string());
    }
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .context("the configuration is not TOML: check it with `tandem config validate`")?;
    let names: Vec<&str> = cfg.fence_devices.iter().map(|d| d.name.as_str()).collect();
    for item in plugs {
        let Some((device, plug)) = item.split_once('=') else {
            bail!(
                "--fence {item}: write DEVICE=PLUG (fence devices: {})",
                list(&names)
            );
        };
        let (device, plug) = (device.trim(), plug.trim());
        let Some(spec) = cfg
            .fence_devices
            .iter()
            .find(|d| d.name == device)
            .filter(|_| !plug.is_empty())
        else {
            bail!(
                "--fence {item}: no fence device named {device}, or no plug (fence devices: {}; add a [[fence_device]] by a restart of each agent first)",
                list(&names)
            );
        };
        if let Some((other, _)) = spec.hosts.iter().find(|(_, p)| p == plug) {
            bail!("--fence {item}: device {device} fences {other} as {plug} already: fencing {node} would power {other} off");
        }
        let hosts = named_table(&mut doc, "fence_device", device)
            .with_context(|| {
                format!("--fence {item}: no [[fence_device]] named {device} in the file")
            })?
            .get_mut("hosts")
            .and_then(toml_edit::Item::as_table_like_mut)
            .with_context(|| format!("--fence {item}: device {device}'s `hosts` is not a table"))?;
        hosts.insert(node, toml_edit::value(plug));
    }
    Ok(doc.to_string())
}

fn link_names(cfg: &tandem_core::config::Config) -> String {
    let names: Vec<&str> = cfg.links.iter().map(|l| l.name.as_str()).collect();
    names.join(", ")
}

/// The command a new node starts with: this node's address on the first
/// link they can share, the key file and the configuration's path.
fn join_hint(cfg: &tandem_core::config::Config, me: &str, config: &str) -> String {
    let at = cfg
        .node(me)
        .and_then(|n| cfg.links.iter().find_map(|l| n.addresses.get(&l.name)))
        .map_or_else(|| "ADDRESS".to_string(), ToString::to_string);
    format!(
        "tandem agent --join {at} --key {} --config {config}",
        cfg.key_path().display()
    )
}

/// `tandem node remove NAME --forget`: the node's vote goes and its groups
/// move away (as `tandem node remove NAME`), then the configuration read
/// from --config drops it (the last node of its list) and is applied
/// through the cluster as `tandem config apply` does.
pub fn forget_node(a: &crate::cli::AdminArgs, node: &str) -> Result<ExitCode> {
    // Checked before anything changes: the vote is not taken for nothing.
    let Committed {
        label,
        text,
        base,
        cfg,
        ..
    } = committed_file(a)?;
    let dropped = without_node(&text, node)?;
    let label_dropped = format!("{label} without node {node}");
    if !checked_here(&dropped, &label_dropped, &base) {
        bail!("{node} was left as it is (its vote too): fix what is said above");
    }
    // Its volume copies go only while the copies that stay hold every
    // write (the agent asked checks this again before anything switches).
    let new = tandem_core::config::load(&dropped, &base, &tandem_agent::keyfile::facts)
        .config
        .with_context(|| format!("{label_dropped} does not load"))?;
    let plan = tandem_core::config::change::plan(&cfg, &new).map_err(|e| anyhow::anyhow!("{e}"))?;
    let status = crate::admin::status(&a.at.socket()?)?;
    let up_to_date = |volume: &str, n: &str| status.agreement.copy_up_to_date(volume, n);
    if let Some(why) = plan.membership_refusal(true, |_| false, |_| false, up_to_date) {
        bail!("{why}; nothing was changed");
    }
    let removed = crate::admin::node_vote(a, node, false)?;
    if removed != ExitCode::SUCCESS {
        return Ok(removed);
    }
    let applied = apply_nodes(
        a,
        &dropped,
        &label_dropped,
        &base,
        &format!("{node} votes no more, but the configuration still lists it"),
    )?;
    if applied == ExitCode::SUCCESS {
        println!("{node} is no member any more: stop its agent now (it hears no one)");
    }
    Ok(applied)
}

/// `text` without node `node`, which must be the last of its nodes (the
/// one a running cluster can forget), keeping every other line as it is.
fn without_node(text: &str, node: &str) -> Result<String> {
    let mut doc: toml_edit::DocumentMut = text
        .parse()
        .context("the configuration is not TOML: check it with `tandem config validate`")?;
    let nodes = doc
        .get_mut("node")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
        .context("the configuration lists no [[node]]")?;
    let names: Vec<String> = nodes
        .iter()
        .map(|t| {
            t.get("name")
                .and_then(|v| v.as_str())
                .unwrap_or("")
                .to_string()
        })
        .collect();
    let Some(i) = names.iter().position(|n| n == node) else {
        bail!(
            "{node} is not in the configuration (nodes: {})",
            names.join(", ")
        );
    };
    if i + 1 != names.len() {
        bail!(
            "{node} is not the last node of the configuration: a running cluster forgets only the last one (as `node add --address` added it); `tandem node remove {node}` takes its vote and its groups, and the file's other nodes change by a restart of each agent"
        );
    }
    nodes.remove(i);
    // How to fence it goes with it: a device for it alone goes whole.
    if let Some(devices) = doc
        .get_mut("fence_device")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    {
        for d in devices.iter_mut() {
            if let Some(hosts) = d
                .get_mut("hosts")
                .and_then(toml_edit::Item::as_table_like_mut)
            {
                hosts.remove(node);
            }
        }
        devices.retain(|d| {
            d.get("hosts")
                .and_then(toml_edit::Item::as_table_like)
                .map_or(true, |t| !t.is_empty())
        });
    }
    // Its volume copies go with it: each volume it held runs on one copy.
    if let Some(volumes) = doc
        .get_mut("volume")
        .and_then(toml_edit::Item::as_array_of_tables_mut)
    {
        for v in volumes.iter_mut() {
            if let Some(list) = v.get_mut("nodes").and_then(toml_edit::Item::as_array_mut) {
                list.retain(|n| n.as_str() != Some(node));
            }
            if let Some(backing) = v
                .get_mut("backing")
                .and_then(toml_edit::Item::as_table_like_mut)
            {
                backing.remove(node);
            }
        }
    }
    Ok(doc.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "[cluster]\nname = \"c\"\nkey_file = \"/k\"\n\n[[link]]\nname = \"lan\"\nsubnet = \"10.0.0.0/24\"\n\n[[node]]\nname = \"n1\"\naddresses = { lan = \"10.0.0.1\" }\n\n[[node]]\nname = \"n2\"\naddresses = { lan = \"10.0.0.2\" }\n\n[[node]]\nname = \"n3\"\naddresses = { lan = \"10.0.0.3\" }\n";

    fn cfg(text: &str) -> tandem_core::config::Config {
        let facts = |_: &Path| tandem_core::config::KeyFileFacts::Present {
            len: 32,
            mode: 0o600,
        };
        let l = tandem_core::config::load(text, Path::new("/"), &facts);
        match l.config {
            Some(c) => c,
            None => panic!("invalid test configuration: {:?}", l.diagnostics),
        }
    }

    #[test]
    fn a_node_is_added_at_the_end_with_its_addresses_or_refused_with_why() {
        let c = cfg(BASE);
        let out = with_node(BASE, &c, "n4", &["lan=10.0.0.4".into()]).unwrap_or_default();
        let added = cfg(&out);
        let names: Vec<&str> = added.nodes.iter().map(|n| n.name.as_str()).collect();
        assert_eq!(names, ["n1", "n2", "n3", "n4"]);
        let lan = added.nodes[3].addresses.get("lan").map(ToString::to_string);
        assert_eq!(lan.as_deref(), Some("10.0.0.4"));
        let why = |node: &str, a: &[&str]| {
            let a: Vec<String> = a.iter().map(|s| s.to_string()).collect();
            with_node(BASE, &c, node, &a)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(why("n1", &["lan=10.0.0.4"]).contains("already"));
        assert!(why("n4", &["wan=10.0.0.4"]).contains("no link named wan (links: lan)"));
        assert!(why("n4", &["lan"]).contains("LINK=IP"));
        assert!(why("n4", &["lan=x"]).contains("not an IP address"));
        assert!(why("n4", &["lan=10.0.0.4", "lan=10.0.0.5"]).contains("given twice"));
        assert!(why("n 4", &["lan=10.0.0.4"]).contains("letters"));
    }

    #[test]
    fn a_node_standing_alone_takes_a_peer_with_its_volume_copy_and_gives_both_back() {
        let alone = "[cluster]\nname = \"c\"\nkey_file = \"/k\"\n\n[[link]]\nname = \"lan\"\nsubnet = \"10.0.0.0/24\"\n\n[[node]]\nname = \"n1\"\naddresses = { lan = \"10.0.0.1\" }\n\n[quorum]\ntwo_node = true\n\n# The data.\n[[volume]]\nname = \"data\"\nnodes = [\"n1\"]\nsize = \"16MiB\"\nlink = \"lan\"\nbacking = \"/srv/data.img\"\n\n[[fence_device]]\nname = \"power\"\nagent = \"/bin/true\"\nhosts = { n1 = \"1\" }\n";
        let c = cfg(alone);
        let node = with_node(alone, &c, "n2", &["lan=10.0.0.2".into()]).unwrap_or_default();
        let pair_text = with_copies(&node, &c, "n2", &["data=/srv/b.img".into()])
            .and_then(|t| with_fencing(&t, &c, "n2", &["power=2".into()]))
            .unwrap_or_else(|e| panic!("{e:#}"));
        let pair = cfg(&pair_text);
        let v = pair.volume("data").unwrap_or_else(|| panic!("{pair_text}"));
        assert_eq!(v.nodes, ["n1", "n2"]);
        assert_eq!(v.backing_of("n1"), Some(Path::new("/srv/data.img")));
        assert_eq!(v.backing_of("n2"), Some(Path::new("/srv/b.img")));
        assert!(pair_text.contains("# The data."), "{pair_text}");
        let hosts = |c: &tandem_core::config::Config| c.fence_devices[0].hosts.clone();
        assert_eq!(
            hosts(&pair),
            [
                ("n1".to_string(), "1".to_string()),
                ("n2".into(), "2".into())
            ]
        );
        let plan = tandem_core::config::change::plan(&c, &pair)
            .unwrap_or_else(|e| panic!("a live change: {e}"));
        assert_eq!(plan.copies_added.len(), 1, "{plan:?}");
        // --forget gives it back: one node, one copy, the same backing,
        // fenced as before; a live change too.
        let back_text = without_node(&pair_text, "n2").unwrap_or_default();
        let back = cfg(&back_text);
        assert_eq!(hosts(&back), [("n1".to_string(), "1".to_string())]);
        assert!(tandem_core::config::change::plan(&pair, &back).is_ok());
        let v = back.volume("data").unwrap_or_else(|| panic!("no volume"));
        assert_eq!(v.nodes, ["n1"]);
        assert_eq!(v.backing_of("n1"), Some(Path::new("/srv/data.img")));
        assert_eq!(back.nodes.len(), 1);
        let why = |copies: &[&str]| {
            let copies: Vec<String> = copies.iter().map(|s| s.to_string()).collect();
            with_copies(&node, &c, "n2", &copies)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(why(&["data"]).contains("VOLUME=PATH"));
        assert!(why(&["web=/x"]).contains("no volume named web (volumes: data)"));
        assert!(why(&["data=x.img"]).contains("not an absolute path"));
        assert!(why(&["data=/a"]).is_empty());
        assert!(with_fencing(&node, &c, "n2", &["power=1".into()])
            .err()
            .is_some_and(|e| e.to_string().contains("fences n1 as 1 already")));
        assert!(with_fencing(&node, &c, "n2", &["pdu=2".into()])
            .err()
            .is_some_and(|e| e.to_string().contains("no fence device named pdu")));
        let p = cfg(&pair_text);
        assert!(with_copies(&pair_text, &p, "n3", &["data=/c".into()])
            .err()
            .is_some_and(|e| e.to_string().contains("two copies already")));
    }

    #[test]
    fn only_the_last_node_is_forgotten_and_every_other_line_is_kept() {
        let c = cfg(BASE);
        let four = with_node(BASE, &c, "n4", &["lan=10.0.0.4".into()]).unwrap_or_default();
        let back = without_node(&four, "n4").unwrap_or_default();
        let names: Vec<String> = cfg(&back).nodes.iter().map(|n| n.name.clone()).collect();
        assert_eq!(names, ["n1", "n2", "n3"]);
        assert!(back.starts_with(BASE), "{back}");
        let e = |n: &str| {
            without_node(&four, n)
                .err()
                .map(|e| format!("{e:#}"))
                .unwrap_or_default()
        };
        assert!(e("n2").contains("not the last node"), "{}", e("n2"));
        assert!(e("n9").contains("not in the configuration"), "{}", e("n9"));
    }
}
