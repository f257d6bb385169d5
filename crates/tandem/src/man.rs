//! Man pages: `tandem(8)` and one page per subcommand, rendered from the
//! clap definitions (so they cannot disagree with `--help`), and
//! `tandem.toml(5)`, the configuration's format, with every resource kind
//! and field from the kinds' registry (the same source as `config
//! validate`'s checks and CONFIG.md's test).

use std::io::Write as _;
use std::path::Path;

use anyhow::{Context, Result};

/// The section of the command's pages: a system administration command.
pub const SECTION: &str = "8";

/// Writes `tandem.8`, `tandem-SUB.8`... and `tandem.toml.5` into `dir`.
pub fn write_pages(cmd: clap::Command, dir: &Path) -> Result<()> {
    fn each(cmd: &clap::Command, dir: &Path) -> Result<()> {
        for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
            each(sub, dir)?;
        }
        let man = clap_mangen::Man::new(cmd.clone()).section(SECTION);
        let path = dir.join(man.get_filename());
        let mut out = Vec::new();
        man.render(&mut out).context("rendering a man page")?;
        std::fs::write(&path, out).with_context(|| format!("writing {}", path.display()))
    }
    let mut cmd = cmd.disable_help_subcommand(true);
    // Names the subcommands `tandem-config`, `tandem-config-validate`...
    cmd.build();
    each(&cmd, dir)?;
    let path = dir.join("tandem.toml.5");
    std::fs::write(&path, config_page()).with_context(|| format!("writing {}", path.display()))
}

/// Escapes text for roff: backslashes, and a leading dot or quote.
fn roff(text: &str) -> String {
    let t = text.replace('\\', "\\e").replace('-', "\\-");
    if t.starts_with('.') || t.starts_with('\'') {
        format!("\\&{t}")
    } else {
        t
    }
}

/// The sections of the file, in the order CONFIG.md documents them.
const SECTIONS: &[(&str, &str)] = &[
    ("[cluster]", "name, key_file (the 32-byte cluster key, mode 0600), previous_key_file, state_dir, control_socket, control_group"),
    ("[timing]", "profile (default, relaxed, wan) and its overrides: heartbeat_ms, deadtime_ms, warntime_ms, startup_wait_ms"),
    ("[quorum]", "witness (address of a tandem witness), two_node, wait_for_all"),
    ("[[link]]", "name, subnet, port: the networks the nodes heartbeat over"),
    ("[[node]]", "name, addresses (one per link)"),
    ("[[fence_device]]", "name, agent (a fence-agents program), hosts, options (secrets redacted everywhere), level, delay_ms, timeout_ms, retries"),
    ("[watchdog]", "enabled, required, device, timeout_s, stop_grace_ms"),
    ("[http]", "listen (127.0.0.1 by default, or a link's name), port, tls_cert, tls_key, read_token_file, operator_token_file"),
    ("[[alert]]", "name, path (e.g. Pacemaker's alert_file.sh.sample), recipients, kinds, timeout_ms, timestamp_format"),
    ("[[group]]", "name, preferred, failback, migration_threshold, failure_expiry_ms; its [[group.resource]] (below) and [[group.monitor]]"),
    ("[[monitor]]", "node monitors: ping of a gateway over a link"),
    ("[[volume]]", "name, nodes, size, backing, protocol, link, port, NBD export settings, resync_rate_mib_s, split_brain"),
];

/// The text of `tandem.toml(5)`.
pub fn config_page() -> String {
    let mut o = Vec::new();
    let version = env!("CARGO_PKG_VERSION");
    let _ = writeln!(
        o,
        ".TH tandem.toml 5 \"\" \"tandem {version}\" \"File Formats\""
    );
    let _ = writeln!(o, ".SH NAME\ntandem.toml \\- Tandem cluster configuration");
    let _ = writeln!(o, ".SH SYNOPSIS\n/etc/tandem/tandem.toml");
    let _ = writeln!(
        o,
        ".SH DESCRIPTION\nOne TOML file, identical on every node of the cluster. Check it with\n.B tandem config validate\n(every problem at once, with what to write), show every value in force with\n.BR \"tandem config show\" ,\nand compare two with\n.BR \"tandem config diff\" .\nThe complete reference, with examples, is CONFIG.md (installed under /usr/share/doc/tandem)."
    );
    let _ = writeln!(o, ".SH SECTIONS");
    for (name, what) in SECTIONS {
        let _ = writeln!(o, ".TP\n.B {}\n{}", roff(name), roff(what));
    }
    let _ = writeln!(
        o,
        ".SH RESOURCE KINDS\nEach [[group.resource]] has a name, a kind, a timeout_ms and on_fail, and the fields of its kind:"
    );
    for k in tandem_core::kinds::KINDS {
        let _ = writeln!(o, ".SS {}\n{}", roff(k.name), roff(k.summary));
        for f in k.fields {
            let default = f
                .default
                .map(|d| format!(" (default: {d})"))
                .unwrap_or_default();
            let _ = writeln!(
                o,
                ".TP\n.B {}\n{}{}",
                roff(f.name),
                roff(f.doc),
                roff(&default)
            );
        }
    }
    let _ = writeln!(
        o,
        ".SH FILES\n.TP\n/etc/tandem/tandem.toml\nthe configuration (tandem\\-agent.service and tandem\\-witness.service read it)\n.TP\n/var/lib/tandem\nthe state directory\n.TP\n/run/tandem/control.sock\nthe control socket"
    );
    let _ = writeln!(o, ".SH SEE ALSO\n.BR tandem (8)");
    String::from_utf8_lossy(&o).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_format_page_lists_every_kind_and_field() {
        let page = config_page();
        assert!(page.starts_with(".TH tandem.toml 5"), "{page}");
        for k in tandem_core::kinds::KINDS {
            assert!(
                page.contains(&format!(".SS {}", roff(k.name))),
                "{}",
                k.name
            );
            for f in k.fields {
                assert!(
                    page.contains(&format!(".B {}", roff(f.name))),
                    "{}.{}",
                    k.name,
                    f.name
                );
            }
        }
        for (name, _) in SECTIONS {
            assert!(page.contains(&roff(name)), "{name}");
        }
        assert_eq!(roff(".x-y\\"), "\\&.x\\-y\\e");
    }
}
