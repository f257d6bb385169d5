//! Importers: another cluster manager's configuration in, a Tandem
//! configuration and a line-by-line report out.
//!
//! Pure functions of the files' text and the facts the caller gathered
//! (addresses the old files do not hold, which scripts exist): the command
//! line reads the files, writes the key, prints the report and checks the
//! result with `config validate`.

mod blocks;
pub mod heartbeat;
pub mod keepalived;
pub mod pacemaker;

use std::fmt;
use std::net::Ipv4Addr;

/// A node's address on an interface, which the old files do not always
/// hold (`--address NODE:IFACE=IP[/PREFIX]`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Address {
    /// The node.
    pub node: String,
    /// The interface.
    pub interface: String,
    /// Its address there.
    pub ip: Ipv4Addr,
    /// The subnet's prefix length, if known.
    pub prefix: Option<u8>,
}

/// What became of one input line.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Mapped onto the configuration.
    Mapped,
    /// Mapped, with a difference the operator should know.
    Changed,
    /// Not mapped: why, and what to do instead.
    NotMapped,
    /// Not needed with Tandem (logging, heartbeat's own helpers).
    NotNeeded,
}

impl Verdict {
    /// The report's word for it.
    pub fn as_str(self) -> &'static str {
        match self {
            Verdict::Mapped => "mapped",
            Verdict::Changed => "changed",
            Verdict::NotMapped => "not mapped",
            Verdict::NotNeeded => "not needed",
        }
    }
}

/// One line of the report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReportLine {
    /// Where it came from: `ha.cf:12`.
    pub source: String,
    /// What became of it.
    pub verdict: Verdict,
    /// The input, then what it became or why not.
    pub text: String,
}

impl fmt::Display for ReportLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:<10} {:<16} {}",
            self.verdict.as_str(),
            self.source,
            self.text
        )
    }
}

/// An importer's result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Imported {
    /// The Tandem configuration (TOML, commented with where each part came
    /// from).
    pub config: String,
    /// What became of every line that said something.
    pub report: Vec<ReportLine>,
}

impl Imported {
    /// The result: `config` ending in one newline, and the report.
    pub(crate) fn new(config: &str, report: Report) -> Imported {
        Imported {
            config: config.trim_end().to_string() + "\n",
            report: report.report,
        }
    }
}

/// The report an importer writes as it goes.
#[derive(Debug, Default)]
pub(crate) struct Report {
    /// Its lines, in the order said.
    pub(crate) report: Vec<ReportLine>,
}

impl Report {
    /// A line about `source` (`primitive web`, `corosync.conf:3`).
    pub(crate) fn say(&mut self, source: &str, verdict: Verdict, text: String) {
        self.report.push(ReportLine {
            source: source.to_string(),
            verdict,
            text,
        });
    }

    /// A line about line `line` of `file`.
    pub(crate) fn say_at(&mut self, file: &str, line: usize, verdict: Verdict, text: String) {
        self.say(&format!("{file}:{line}"), verdict, text);
    }
}

/// Why an import cannot produce a configuration.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ImportError {
    /// The input lacks something a configuration needs, or says something
    /// that cannot be read: what, where, and what to do.
    #[error("{source_at}: {what} ({fix})")]
    Input {
        /// `ha.cf:3`, or the file.
        source_at: String,
        /// What is wrong.
        what: String,
        /// What to do.
        fix: String,
    },
}

/// `s` as a TOML basic string.
pub(crate) fn quoted(s: &str) -> String {
    toml::Value::String(s.to_string()).to_string()
}

/// `items` as a TOML array of strings.
pub(crate) fn quoted_list<S: AsRef<str>>(items: &[S]) -> String {
    let q: Vec<String> = items.iter().map(|s| quoted(s.as_ref())).collect();
    format!("[{}]", q.join(", "))
}

/// `base`, else `base-2`, `base-3`, ...: the first not in `used`, which
/// it joins.
pub(crate) fn unique(base: &str, used: &mut Vec<String>) -> String {
    let mut name = base.to_string();
    let mut k = 2;
    while used.contains(&name) {
        name = format!("{base}-{k}");
        k += 1;
    }
    used.push(name.clone());
    name
}

/// The network of `ip` with a prefix of `prefix` bits (above 32: 32).
pub(crate) fn network(ip: Ipv4Addr, prefix: u8) -> Ipv4Addr {
    let p = u32::from(prefix.min(32));
    let mask = if p == 0 { 0 } else { u32::MAX << (32 - p) };
    Ipv4Addr::from(u32::from(ip) & mask)
}

/// The head of a written configuration: what made it, and its cluster.
pub(crate) fn head(made_by: &str, cluster: &str, key_file: &str) -> String {
    format!(
        "# {made_by}; its report says what became of every line.\n\n[cluster]\nname = {}\nkey_file = {}\n\n",
        quoted(&safe_name(cluster)),
        quoted(key_file)
    )
}

/// A name Tandem accepts (letters, digits, `-`, `_`, `.`; a letter or
/// digit first; at most 63) made from `s`.
pub(crate) fn safe_name(s: &str) -> String {
    let mut n: String = s
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '-'
            }
        })
        .collect();
    while n.starts_with(|c: char| !c.is_ascii_alphanumeric()) {
        n.remove(0);
    }
    n.truncate(63);
    if n.is_empty() {
        "x".into()
    } else {
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_made_safe() {
        assert_eq!(safe_name("eth0"), "eth0");
        assert_eq!(safe_name("/data1"), "data1");
        assert_eq!(safe_name("my service"), "my-service");
        assert_eq!(safe_name("///"), "x");
        let mut used = Vec::new();
        assert_eq!(unique("vip", &mut used), "vip");
        assert_eq!(unique("vip", &mut used), "vip-2");
        assert_eq!(
            network(Ipv4Addr::new(10, 1, 2, 3), 24),
            Ipv4Addr::new(10, 1, 2, 0)
        );
        assert_eq!(
            network(Ipv4Addr::new(10, 1, 2, 3), 40),
            Ipv4Addr::new(10, 1, 2, 3)
        );
        assert_eq!(
            network(Ipv4Addr::new(10, 1, 2, 3), 0),
            Ipv4Addr::new(0, 0, 0, 0)
        );
        for s in ["a\"b", "it's", "plain", "back\\slash"] {
            let v: toml::Table = toml::from_str(&format!("x = {}", quoted(s))).unwrap();
            assert_eq!(v["x"].as_str(), Some(s));
        }
    }
}
