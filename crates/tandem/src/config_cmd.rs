//! `tandem config validate` and `tandem config show`.

use std::fmt::Write as _;
use std::path::Path;

use anyhow::{Context, Result};
use tandem_core::config::{self, Config, Loaded, MonitorCheck};
use tandem_core::diagnostic::{render, Severity};

use crate::cli::{ShowFormat, ValidateArgs};
use tandem_agent::keyfile;

/// Reads and validates one file; the label in messages is the path as given.
fn load_file(path: &Path) -> Result<(String, Loaded)> {
    let source = std::fs::read_to_string(path)
        .with_context(|| format!("reading configuration file {}", path.display()))?;
    // An empty base keeps relative key paths relative to the working
    // directory, as the user wrote them.
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let loaded = config::load(&source, &base, &keyfile::facts);
    Ok((source, loaded))
}

/// Validates every file; returns whether all passed.
pub fn validate(args: &ValidateArgs) -> Result<bool> {
    let mut all_ok = true;
    for path in &args.files {
        let label = path.display().to_string();
        let (source, loaded) = match load_file(path) {
            Ok(x) => x,
            Err(e) => {
                eprintln!("error: {e:#}");
                all_ok = false;
                continue;
            }
        };
        all_ok &= check(&label, &source, &loaded, args.deny_warnings, args.quiet);
    }
    Ok(all_ok)
}

/// Prints the diagnostics of one loaded file (and this machine's checks of
/// it) and its verdict; returns whether it passed.
pub fn check(label: &str, source: &str, loaded: &Loaded, deny_warnings: bool, quiet: bool) -> bool {
    check_into(
        label,
        source,
        loaded,
        deny_warnings,
        quiet,
        &mut std::io::stdout(),
    )
}

/// [`check`] with the verdict on stderr too (where stdout holds the
/// configuration itself, as `tandem import` prints it).
pub fn check_to_stderr(label: &str, source: &str, loaded: &Loaded) -> bool {
    check_into(label, source, loaded, false, false, &mut std::io::stderr())
}

fn check_into(
    label: &str,
    source: &str,
    loaded: &Loaded,
    deny_warnings: bool,
    quiet: bool,
    verdict: &mut dyn std::io::Write,
) -> bool {
    // What the agent would refuse on this machine is an error here too;
    // what a fence agent says of its own options, a warning.
    let machine = loaded
        .config
        .as_ref()
        .map(tandem_agent::machine_checks::of)
        .unwrap_or_default();
    let errors = loaded
        .diagnostics
        .iter()
        .filter(|d| d.severity == Severity::Error)
        .count()
        + machine.iter().filter(|m| m.0 == Severity::Error).count();
    let warnings = loaded.diagnostics.len() + machine.len() - errors;
    eprint!("{}", render(label, source, &loaded.diagnostics));
    for (sev, text) in &machine {
        let word = if *sev == Severity::Error {
            "error"
        } else {
            "warning"
        };
        eprintln!("{word}: {label}: {text}");
    }
    let failed = errors > 0 || (deny_warnings && warnings > 0);
    if failed {
        let _ = writeln!(
            verdict,
            "{label}: INVALID ({errors} error(s), {warnings} warning(s))"
        );
    } else if !quiet || warnings > 0 {
        let _ = writeln!(verdict, "{label}: ok ({warnings} warning(s))");
    }
    // A fact about this machine rather than the file: a note, not a
    // warning, so the same file validates the same everywhere.
    if let Some(note) = loaded
        .config
        .as_ref()
        .and_then(|c| tandem_agent::watchdog::machine_note(c.watchdog.as_ref()))
    {
        eprintln!("note: {label}: {note}");
    }
    !failed
}

/// Loads a configuration that must be valid; prints its diagnostics (errors
/// and warnings) to stderr either way.
pub fn load_valid(path: &Path) -> Result<Config> {
    let (source, loaded) = load_file(path)?;
    let label = path.display().to_string();
    eprint!("{}", render(&label, &source, &loaded.diagnostics));
    loaded
        .config
        .with_context(|| format!("{label} has errors; fix them (see above) or check with `tandem config validate {label}`"))
}

/// Prints the effective configuration of a valid file.
pub fn show(path: &Path, format: ShowFormat) -> Result<()> {
    let cfg = load_valid(path)?;
    match format {
        ShowFormat::Summary => print!("{}", describe(&cfg)),
        ShowFormat::Toml => {
            print!(
                "{}",
                cfg.to_toml()
                    .context("writing the configuration model as TOML")?
            );
        }
        ShowFormat::Json => println!(
            "{}",
            serde_json::to_string_pretty(&cfg).context("writing the model as JSON")?
        ),
    }
    Ok(())
}

/// Prints what changes from one valid file to another, one change per
/// line (name-keyed: an entry is paired by name wherever it stands).
/// Returns whether they differ.
pub fn diff(old: &Path, new: &Path, json: bool) -> Result<bool> {
    let a = load_valid(old)?;
    let b = load_valid(new)?;
    let changes = config::diff(&a, &b);
    if json {
        println!(
            "{}",
            serde_json::to_string_pretty(&changes).context("writing the changes as JSON")?
        );
    } else if changes.is_empty() {
        println!("no change: both files say the same");
    } else {
        for c in &changes {
            println!("{c}");
        }
        // What `config apply` would do with it on a running cluster.
        match config::change::plan(&a, &b) {
            Ok(p) => println!("`tandem config apply` makes it live: {}", p.summary()),
            Err(e) => println!("`tandem config apply` refuses it: {e}"),
        }
    }
    Ok(!changes.is_empty())
}

fn describe(cfg: &Config) -> String {
    let t = &cfg.timing;
    let mut o = String::new();
    let _ = writeln!(o, "cluster {}", cfg.cluster.name);
    let _ = writeln!(o, "  key file        {}", cfg.key_path().display());
    let _ = writeln!(o, "  state dir       {}", cfg.cluster.state_dir.display());
    let _ = writeln!(
        o,
        "  control socket  {}",
        cfg.cluster.control_socket.display()
    );
    let _ = writeln!(
        o,
        "  timing          heartbeat {} ms, deadtime {} ms, warntime {} ms, start-up wait {} ms",
        t.heartbeat_ms, t.deadtime_ms, t.warntime_ms, t.startup_wait_ms
    );
    let quorum = match (cfg.quorum.witness, cfg.quorum.two_node) {
        (Some(w), _) => format!("majority with witness at {w}"),
        (None, true) => "two_node (decided by fencing)".to_string(),
        (None, false) => format!(
            "majority of {} voter(s)",
            cfg.nodes.len().min(tandem_core::quorum::MAX_VOTERS)
        ),
    };
    let _ = writeln!(o, "  quorum          {quorum}");
    for l in &cfg.links {
        let subnet = l.subnet.map_or("any subnet".to_string(), |s| s.to_string());
        let _ = writeln!(
            o,
            "  link {:<10} {subnet}, heartbeat port {}",
            l.name, l.port
        );
    }
    for n in &cfg.nodes {
        let addrs: Vec<String> = n
            .addresses
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect();
        let _ = writeln!(o, "  node {:<10} {}", n.name, addrs.join(" "));
    }
    for d in &cfg.fence_devices {
        let hosts: Vec<&str> = d.hosts.iter().map(|(n, _)| n.as_str()).collect();
        let _ = writeln!(
            o,
            "  fence device {} (level {}, {}) for {}",
            d.name,
            d.level,
            d.agent.display(),
            hosts.join(", ")
        );
    }
    for m in &cfg.node_monitors {
        if let MonitorCheck::Ping { targets, link } = &m.check {
            let t: Vec<String> = targets.iter().map(ToString::to_string).collect();
            let _ = writeln!(o, "  ping monitor on {link}: {}", t.join(", "));
        }
    }
    for (gi, g) in cfg.groups.iter().enumerate() {
        let failback = match g.failback {
            config::Failback::Auto => "auto",
            config::Failback::Manual => "manual",
        };
        let pref = if g.preferred.is_empty() {
            "any node".to_string()
        } else {
            g.preferred.join(" > ")
        };
        let only = cfg.confinement(gi).map_or(String::new(), |c| {
            let on: Vec<&str> = cfg
                .nodes
                .iter()
                .map(|n| n.name.as_str())
                .filter(|n| c.why_not(n).is_none())
                .collect();
            format!(
                ", runs only where its volumes have copies: {}",
                on.join(", ")
            )
        });
        let _ = writeln!(
            o,
            "  group {} (exclusive, prefers {pref}, failback {failback}{only})",
            g.name
        );
        for spec in &g.resources {
            let _ = writeln!(o, "    {:<12} {}", spec.name, spec.params.spec().describe());
        }
    }
    for v in &cfg.volumes {
        let _ = writeln!(
            o,
            "  volume {} ({} bytes) on {}",
            v.name,
            v.size.bytes,
            v.nodes.join(" + ")
        );
        let socket = v.nbd_socket.as_ref().map_or_else(
            || format!("<state_dir>/run/{}.nbd", v.name),
            |p| p.display().to_string(),
        );
        let tcp = match (&v.nbd_tcp, &v.nbd_tls) {
            (None, _) => String::new(),
            (Some(a), Some(dir)) => {
                format!(", TCP {a} over TLS only (credentials {})", dir.display())
            }
            (Some(a), None) if a.ip().is_loopback() => format!(", TCP {a}"),
            (Some(a), None) => format!(", TCP {a} WITHOUT TLS (nbd_insecure)"),
        };
        let _ = writeln!(o, "    NBD export  socket {socket} (root only){tcp}");
    }
    let watchdog = match &cfg.watchdog {
        None => "disabled".to_string(),
        Some(w) => format!(
            "{}, timeout {} s, stop grace {} ms, {}",
            w.device.display(),
            w.timeout_s,
            w.stop_grace_ms,
            match w.resets_within_ms() {
                Some(ms) => format!(
                    "required: counts as a fence (a silent node's groups start elsewhere {ms} ms after its lease)"
                ),
                None => "not required (armed where the device exists)".to_string(),
            }
        ),
    };
    let _ = writeln!(o, "  watchdog        {watchdog}");
    o
}

/// Writes a new configuration (`tandem import`, `tandem init`). It is
/// checked first, as `config validate` checks it, with `key` as it will
/// be (created as `tandem keygen` does when missing): when invalid,
/// nothing is written (no key, no file, nothing on stdout) and the
/// diagnostics say why. Otherwise the key is created if missing and the
/// configuration goes to `out` (mode 0600, since it may hold fence
/// credentials; never over an existing file) or stdout. The verdict goes
/// to stderr. Returns whether it passed.
pub fn write_new(config: &str, key: &Path, out: Option<&Path>) -> Result<bool> {
    use std::io::Write as _;
    use std::os::unix::fs::OpenOptionsExt as _;
    if let Some(path) = out {
        if path.exists() {
            anyhow::bail!(
                "{} exists: an existing file is never replaced (write elsewhere, or remove it)",
                path.display()
            );
        }
    }
    let label = out.map_or_else(
        || "(configuration)".to_string(),
        |p| p.display().to_string(),
    );
    let base = out
        .and_then(Path::parent)
        .map(Path::to_path_buf)
        .unwrap_or_default();
    let will_exist = !key.exists();
    let facts = |p: &Path| {
        if will_exist && p == key {
            // As `tandem keygen` will write it.
            config::KeyFileFacts::Present {
                len: 32,
                mode: 0o600,
            }
        } else {
            keyfile::facts(p)
        }
    };
    let loaded = config::load(config, &base, &facts);
    if !check_to_stderr(&label, config, &loaded) {
        eprintln!(
            "nothing written: the configuration above is not valid (the report and the errors say what to change)"
        );
        return Ok(false);
    }
    if will_exist {
        keyfile::generate(key)?;
        eprintln!(
            "created    {:<16} a new 32-byte cluster key (mode 0600): copy it to every node",
            key.display()
        );
    }
    match out {
        Some(path) => {
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(path)
                .with_context(|| {
                    format!(
                        "writing {} (an existing file is never replaced)",
                        path.display()
                    )
                })?;
            f.write_all(config.as_bytes())
                .with_context(|| format!("writing {}", path.display()))?;
            eprintln!("wrote      {} (mode 0600)", path.display());
        }
        None => print!("{config}"),
    }
    Ok(true)
}
