//! `tandem import heartbeat DIR`: heartbeat's `ha.cf`, `haresources`
//! and `authkeys` (the Linux-HA v1 files of seed 004) as a Tandem
//! configuration.
//!
//! | heartbeat | Tandem |
//! |---|---|
//! | `node` | `[[node]]` (two: `two_node = true`) |
//! | `bcast`/`udp`/`mcast`/`ucast IF ...` | a `[[link]]` per interface; addresses from `--address` |
//! | `keepalive`/`deadtime`/`warntime`/`initdead` | `[timing]` `heartbeat_ms`/`deadtime_ms`/`warntime_ms`/`startup_wait_ms` |
//! | `auto_failback on`/`legacy` (the default)/`off` | each group's `failback = "auto"`/`"auto"`/`"manual"` |
//! | `ping`/`ping_group`, with `respawn ... ipfail` | a `ping` `[[monitor]]` (without ipfail: reported) |
//! | `watchdog DEV` | `[watchdog] device` |
//! | `haresources` line | a `[[group]]` preferring its node |
//! | `10.0.0.1[/24[/eth0]]`, `IPaddr[2]::...` | an `ip` resource |
//! | `Filesystem::dev::dir[::type[::opts]]` | an `fs` resource |
//! | `script[::a1::a2]` | an `exec` resource, `script a1 a2 start`, status read from its words |
//!
//! Reported, not mapped: `serial`/`baud` (Tandem's links are UDP),
//! `stonith`/`stonith_host` (write a `[[fence_device]]`), `respawn`,
//! `drbddisk` (configure a `[[volume]]`), `MailTo` (an `[[alert]]`), and
//! `crm yes` (import the CIB instead). `authkeys`' secrets are never
//! reused: the configuration names a new 32-byte key.

use std::collections::BTreeMap;
use std::net::{IpAddr, Ipv4Addr};

use super::{quoted, quoted_list, safe_name, ImportError, Imported, ReportLine, Verdict};

/// The three files' text (`authkeys` may be absent).
#[derive(Debug, Clone, Copy)]
pub struct Input<'a> {
    /// `ha.cf`.
    pub ha_cf: &'a str,
    /// `haresources` (absent: an error, unless `crm yes`).
    pub haresources: Option<&'a str>,
    /// `authkeys`, if there is one.
    pub authkeys: Option<&'a str>,
}

pub use super::Address;

/// What the caller knows besides the files.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The cluster's name.
    pub cluster: String,
    /// The key file the configuration names.
    pub key_file: String,
    /// The directory the files came from (`/etc/ha.d`): `resource.d`
    /// scripts are run from there.
    pub dir: String,
    /// Scripts found in `DIR/resource.d` (heartbeat looked there first,
    /// then in `/etc/init.d`).
    pub resource_d: Vec<String>,
    /// Every node's address on every interface.
    pub addresses: Vec<Address>,
}

/// heartbeat's settings that have no meaning for Tandem.
const NOT_NEEDED: &[(&str, &str)] = &[
    (
        "logfile",
        "Tandem logs to the journal or stderr (--log-file FILE)",
    ),
    (
        "debugfile",
        "Tandem logs to the journal or stderr (--log-file FILE)",
    ),
    ("logfacility", "Tandem logs to the journal or stderr"),
    ("use_logd", "Tandem logs to the journal or stderr"),
    ("debug", "use --log-level"),
    (
        "udpport",
        "Tandem's links use their own port (5405 unless `port` is set)",
    ),
    (
        "apiauth",
        "heartbeat's client API; Tandem's control socket is root's (or `control_group`'s)",
    ),
    (
        "hopfudge",
        "heartbeat's ring topology; Tandem's links are direct",
    ),
    (
        "deadping",
        "Tandem's ping monitors count failures (`failures`)",
    ),
    ("hbgenmethod", "Tandem's incarnations need no setting"),
    ("realtime", "Tandem needs no real-time priority"),
    ("msgfmt", "Tandem has one wire format"),
    ("conn_logd_time", "Tandem logs to the journal or stderr"),
    ("compression", "Tandem's heartbeats are small"),
    ("compression_threshold", "Tandem's heartbeats are small"),
    ("traditional_compression", "Tandem's heartbeats are small"),
    ("coredumps", "systemd handles core dumps"),
    ("autojoin", "nodes are listed in the configuration"),
    ("uuidfrom", "nodes are known by name"),
    (
        "max_rexmit_delay",
        "Tandem has no retransmission protocol to tune",
    ),
    ("rtprio", "Tandem needs no real-time priority"),
    (
        "generation_file_save_interval",
        "Tandem's incarnations need no setting",
    ),
    (
        "hbaping",
        "Fibre Channel pings are not supported; use a ping or exec monitor",
    ),
];

/// Longest time read (a day): heartbeat's values are seconds or minutes.
const MAX_TIME_MS: u64 = 86_400_000;

/// A timing value: seconds (`2`, `0.5`) or milliseconds (`500ms`).
fn duration_ms(v: &str) -> Option<u64> {
    let ms = if let Some(ms) = v.strip_suffix("ms") {
        ms.parse().ok()?
    } else {
        let s = v.strip_suffix('s').unwrap_or(v);
        let (whole, frac) = s.split_once('.').unwrap_or((s, ""));
        if frac.len() > 3 || !frac.chars().all(|c| c.is_ascii_digit()) {
            return None;
        }
        let whole: u64 = whole.parse().ok()?;
        let frac_ms: u64 = format!("{frac:0<3}").parse().ok()?;
        whole.checked_mul(1000)?.checked_add(frac_ms)?
    };
    (ms <= MAX_TIME_MS).then_some(ms)
}

/// `text` without comments, as (1-based line number, words).
fn lines(text: &str) -> Vec<(usize, Vec<String>)> {
    let mut out = Vec::new();
    let mut pending: Option<(usize, String)> = None;
    for (i, raw) in text.lines().enumerate() {
        let line = raw.split('#').next().unwrap_or("");
        let (start, mut joined) = pending.take().unwrap_or((i + 1, String::new()));
        let t = line.trim_end();
        if let Some(cont) = t.strip_suffix('\\') {
            joined.push_str(cont);
            joined.push(' ');
            pending = Some((start, joined));
            continue;
        }
        joined.push_str(t);
        let words: Vec<String> = joined.split_whitespace().map(str::to_string).collect();
        if !words.is_empty() {
            out.push((start, words));
        }
    }
    if let Some((start, joined)) = pending {
        let words: Vec<String> = joined.split_whitespace().map(str::to_string).collect();
        if !words.is_empty() {
            out.push((start, words));
        }
    }
    out
}

/// What `ha.cf` says.
#[derive(Debug, Default)]
struct HaCf {
    nodes: Vec<String>,
    /// Interfaces in order of first mention.
    interfaces: Vec<String>,
    /// `ucast` addresses per interface (hints for `--address`).
    ucast: Vec<(String, Ipv4Addr)>,
    heartbeat_ms: Option<(u64, usize)>,
    deadtime_ms: Option<(u64, usize)>,
    warntime_ms: Option<(u64, usize)>,
    initdead_ms: Option<(u64, usize)>,
    failback_auto: Option<bool>,
    /// Ping nodes: monitor name, targets, line, the line's text.
    pings: Vec<(String, Vec<IpAddr>, usize, String)>,
    /// `respawn ... ipfail`: ping nodes decide where groups run.
    ipfail: bool,
    watchdog: Option<String>,
    crm: bool,
}

struct Importer<'f> {
    facts: &'f Facts,
    report: super::Report,
}

impl Importer<'_> {
    fn say(&mut self, file: &str, line: usize, verdict: Verdict, text: String) {
        self.report.say_at(file, line, verdict, text);
    }

    fn ha_cf(&mut self, text: &str) -> Result<HaCf, ImportError> {
        let mut cf = HaCf::default();
        for (n, w) in lines(text) {
            let all = w.join(" ");
            let args = &w[1..];
            let bad = |what: &str| ImportError::Input {
                source_at: format!("ha.cf:{n}"),
                what: format!("`{all}`: {what}"),
                fix: "correct the line as ha.cf(5) describes it".into(),
            };
            match w[0].as_str() {
                "node" => {
                    if args.is_empty() {
                        return Err(bad("no node name"));
                    }
                    for a in args {
                        if !cf.nodes.contains(a) {
                            cf.nodes.push(a.clone());
                        }
                    }
                    self.say("ha.cf", n, Verdict::Mapped, format!("{all} -> [[node]] {}", args.join(", ")));
                }
                d @ ("keepalive" | "deadtime" | "warntime" | "initdead") => {
                    let ms = args.first().and_then(|v| duration_ms(v)).ok_or_else(|| bad("not a time (seconds, or NNNms)"))?;
                    let (slot, field) = match d {
                        "keepalive" => (&mut cf.heartbeat_ms, "heartbeat_ms"),
                        "deadtime" => (&mut cf.deadtime_ms, "deadtime_ms"),
                        "warntime" => (&mut cf.warntime_ms, "warntime_ms"),
                        _ => (&mut cf.initdead_ms, "startup_wait_ms"),
                    };
                    *slot = Some((ms, n));
                    let slow = match d {
                        "deadtime" if ms > 1_000 => Some(format!(
                            "; a failover waits {} s for this: Tandem's default profile declares a node dead after 200 ms of silence on every link (delete [timing] to use it)",
                            ms / 1000
                        )),
                        "keepalive" if ms > 500 => Some(
                            "; Tandem's default is 50 ms (heartbeats are cheap and authenticated)".to_string(),
                        ),
                        _ => None,
                    };
                    match slow {
                        Some(s) => self.say("ha.cf", n, Verdict::Changed, format!("{all} -> [timing] {field} = {ms}{s}")),
                        None => self.say("ha.cf", n, Verdict::Mapped, format!("{all} -> [timing] {field} = {ms}")),
                    }
                }
                "bcast" | "udp" | "mcast" | "ucast" => {
                    let ifaces: Vec<String> = match w[0].as_str() {
                        "bcast" | "udp" => args.to_vec(),
                        _ => args.first().cloned().into_iter().collect(),
                    };
                    if ifaces.is_empty() {
                        return Err(bad("no interface"));
                    }
                    if w[0] == "ucast" {
                        let a = args.get(1).and_then(|a| a.parse().ok()).ok_or_else(|| bad("no IPv4 address after the interface"))?;
                        cf.ucast.push((args[0].clone(), a));
                    }
                    for i in &ifaces {
                        if !cf.interfaces.contains(i) {
                            cf.interfaces.push(i.clone());
                        }
                    }
                    let names: Vec<String> = ifaces.iter().map(|i| safe_name(i)).collect();
                    let how = if w[0] == "ucast" || w[0] == "mcast" {
                        "; Tandem sends to each peer's address on it (unicast, authenticated)"
                    } else {
                        "; Tandem sends to each peer's address on it (unicast, authenticated), never broadcast"
                    };
                    self.say("ha.cf", n, Verdict::Changed, format!("{all} -> [[link]] {}{how}", names.join(", ")));
                }
                "serial" | "baud" => self.say(
                    "ha.cf",
                    n,
                    Verdict::NotMapped,
                    format!("{all}: a serial heartbeat line; Tandem's links are UDP: give the second path addresses (a crossover cable or a VLAN), add `bcast IF` for it and an --address for each node"),
                ),
                "auto_failback" => {
                    let v = args.first().map(String::as_str).unwrap_or("");
                    let auto = match v {
                        "on" | "yes" | "true" | "1" => true,
                        "off" | "no" | "false" | "0" => false,
                        "legacy" => {
                            self.say("ha.cf", n, Verdict::Changed, format!("{all} -> failback = \"auto\" in every group (legacy failed back, as heartbeat's default)"));
                            cf.failback_auto = Some(true);
                            continue;
                        }
                        _ => return Err(bad("on, off or legacy")),
                    };
                    cf.failback_auto = Some(auto);
                    let word = if auto { "auto" } else { "manual" };
                    self.say("ha.cf", n, Verdict::Mapped, format!("{all} -> failback = \"{word}\" in every group"));
                }
                "nice_failback" => {
                    let on = matches!(args.first().map(String::as_str), Some("on" | "yes"));
                    cf.failback_auto = Some(!on);
                    let word = if on { "manual" } else { "auto" };
                    self.say("ha.cf", n, Verdict::Mapped, format!("{all} -> failback = \"{word}\" in every group"));
                }
                "ping" | "ping_group" => {
                    let (name, targets) = if w[0] == "ping_group" {
                        let name = args.first().cloned().ok_or_else(|| bad("no group name"))?;
                        (name, &args[1..])
                    } else {
                        (format!("ping{}", cf.pings.len() + 1), args)
                    };
                    let targets: Vec<IpAddr> = targets
                        .iter()
                        .map(|t| t.parse().map_err(|_| bad(&format!("`{t}` is not an IP address (ping nodes are addresses)"))))
                        .collect::<Result<_, _>>()?;
                    if targets.is_empty() {
                        return Err(bad("no address to ping"));
                    }
                    cf.pings.push((safe_name(&name), targets, n, all.clone()));
                }
                "watchdog" => {
                    let dev = args.first().cloned().ok_or_else(|| bad("no device"))?;
                    self.say("ha.cf", n, Verdict::Mapped, format!("{all} -> [watchdog] device = \"{dev}\""));
                    cf.watchdog = Some(dev);
                }
                "respawn" => {
                    let prog = args.get(1).map(String::as_str).unwrap_or("");
                    let why = if prog.ends_with("ipfail") {
                        "heartbeat's ipfail: Tandem's ping monitors do its job".to_string()
                    } else {
                        format!("`{prog}` ran on every node, restarted when it exits: Tandem runs resources in groups on one node; run it as a systemd service (Restart=always) on each node")
                    };
                    if prog.ends_with("ipfail") {
                        cf.ipfail = true;
                    }
                    let verdict = if prog.ends_with("ipfail") { Verdict::NotNeeded } else { Verdict::NotMapped };
                    self.say("ha.cf", n, verdict, format!("{all}: {why}"));
                }
                "stonith" | "stonith_host" => self.say(
                    "ha.cf",
                    n,
                    Verdict::NotMapped,
                    format!("{}: write a [[fence_device]] with the fence agent for this device (fence-agents: `fence_ipmilan`, `fence_virsh`, ...) and its options; its secrets never go into the report", w[0]),
                ),
                "crm" | "pacemaker" => {
                    let on = matches!(args.first().map(String::as_str), Some("yes" | "on" | "true" | "respawn"));
                    if on {
                        cf.crm = true;
                        self.say("ha.cf", n, Verdict::NotMapped, format!("{all}: the resources are in Pacemaker's CIB, not haresources: import it with `tandem import pacemaker CIB.xml`"));
                    } else {
                        self.say("ha.cf", n, Verdict::NotNeeded, all.clone());
                    }
                }
                d => match NOT_NEEDED.iter().find(|(k, _)| *k == d) {
                    Some((_, why)) => self.say("ha.cf", n, Verdict::NotNeeded, format!("{all}: {why}")),
                    None => self.say("ha.cf", n, Verdict::NotMapped, format!("{all}: a directive this importer does not know")),
                },
            }
        }
        // Ping nodes decided nothing without ipfail: heartbeat only
        // reported them.
        let pings = std::mem::take(&mut cf.pings);
        for (name, targets, n, all) in pings {
            if cf.ipfail {
                self.say("ha.cf", n, Verdict::Changed, format!("{all} -> ping [[monitor]] `{name}`: a node that reaches none of them counts its link failed and its groups go where the link works (ipfail compared the nodes' counts of reachable ping nodes)"));
                cf.pings.push((name, targets, n, all));
            } else {
                self.say("ha.cf", n, Verdict::NotMapped, format!("{all}: without `respawn ... ipfail` heartbeat only watched ping nodes; add a ping [[monitor]] to act on them"));
            }
        }
        // In the file's order (ping lines were judged at the end).
        self.report.report.sort_by_key(|r| {
            r.source
                .strip_prefix("ha.cf:")
                .and_then(|l| l.parse::<usize>().ok())
                .unwrap_or(0)
        });
        if cf.nodes.len() < 2 {
            return Err(ImportError::Input {
                source_at: "ha.cf".into(),
                what: format!(
                    "{} `node` line(s): a cluster needs two or more nodes",
                    cf.nodes.len()
                ),
                fix: "list every node with `node NAME` (their `uname -n`)".into(),
            });
        }
        if cf.interfaces.is_empty() {
            return Err(ImportError::Input {
                source_at: "ha.cf".into(),
                what: "no network heartbeat (bcast, mcast, ucast or udp)".into(),
                fix: "add `bcast IF` for each network the nodes share".into(),
            });
        }
        Ok(cf)
    }

    /// Each node's address on each interface, or one error naming every
    /// missing one.
    fn addresses(&self, cf: &HaCf) -> Result<BTreeMap<(String, String), Address>, ImportError> {
        let mut out = BTreeMap::new();
        let mut missing = Vec::new();
        for node in &cf.nodes {
            for i in &cf.interfaces {
                match self
                    .facts
                    .addresses
                    .iter()
                    .find(|a| &a.node == node && &a.interface == i)
                {
                    Some(a) => {
                        out.insert((node.clone(), i.clone()), a.clone());
                    }
                    None => missing.push(format!("{node}:{i}")),
                }
            }
        }
        if let Some(a) = self
            .facts
            .addresses
            .iter()
            .find(|a| !cf.nodes.contains(&a.node) || !cf.interfaces.contains(&a.interface))
        {
            return Err(ImportError::Input {
                source_at: "--address".into(),
                what: format!(
                    "{}:{} is not a node and interface of ha.cf",
                    a.node, a.interface
                ),
                fix: format!(
                    "nodes: {}; interfaces: {}",
                    cf.nodes.join(", "),
                    cf.interfaces.join(", ")
                ),
            });
        }
        if missing.is_empty() {
            return Ok(out);
        }
        let hint = if cf.ucast.is_empty() {
            String::new()
        } else {
            let u: Vec<String> = cf
                .ucast
                .iter()
                .map(|(i, a)| format!("{a} on {i}"))
                .collect();
            format!("; ucast lines name {} without saying whose", u.join(", "))
        };
        Err(ImportError::Input {
            source_at: "ha.cf".into(),
            what: format!(
                "no address for {}: ha.cf names interfaces, not addresses{hint}",
                missing.join(", ")
            ),
            fix: format!(
                "add --address NODE:IFACE=IP[/PREFIX] for each, e.g. --address {}=192.0.2.1/24",
                missing[0]
            ),
        })
    }

    fn authkeys(&mut self, text: &str) {
        let mut method = None;
        for (n, w) in lines(text) {
            if w[0] == "auth" {
                method = w.get(1).cloned();
                continue;
            }
            if method.as_deref() == Some(w[0].as_str()) {
                let m = w.get(1).map(String::as_str).unwrap_or("?");
                let what = match m {
                    "crc" => "crc authenticated nothing",
                    _ => "its secret is not reused",
                };
                self.say(
                    "authkeys",
                    n,
                    Verdict::Changed,
                    format!("method {} ({m}): {what}; every Tandem packet carries a BLAKE3 MAC under the new 32-byte key {}", w[0], self.facts.key_file),
                );
            }
        }
    }
}

/// One resource of a `haresources` line.
enum Res {
    Ip {
        address: String,
        interface: Option<String>,
    },
    Fs {
        device: String,
        directory: String,
        fstype: String,
        options: Option<String>,
    },
    Exec {
        name: String,
        script: String,
        args: Vec<String>,
    },
}

impl Res {
    fn base_name(&self) -> String {
        match self {
            Res::Ip { .. } => "ip".into(),
            Res::Fs { directory, .. } => format!(
                "fs-{}",
                safe_name(
                    directory
                        .rsplit('/')
                        .find(|s| !s.is_empty())
                        .unwrap_or("root")
                )
            ),
            Res::Exec { name, .. } => safe_name(name),
        }
    }

    fn toml(&self, name: &str) -> String {
        let mut t = format!("[[group.resource]]\nname = {}\n", quoted(name));
        match self {
            Res::Ip { address, interface } => {
                t.push_str(&format!("kind = \"ip\"\naddress = {}\n", quoted(address)));
                if let Some(i) = interface {
                    t.push_str(&format!("interfaces = {}\n", quoted_list(&[i])));
                }
            }
            Res::Fs {
                device,
                directory,
                fstype,
                options,
            } => {
                t.push_str(&format!(
                    "kind = \"fs\"\ndevice = {}\ndirectory = {}\nfstype = {}\n",
                    quoted(device),
                    quoted(directory),
                    quoted(fstype)
                ));
                if let Some(o) = options {
                    t.push_str(&format!("options = {}\n", quoted(o)));
                }
            }
            Res::Exec { script, args, .. } => {
                t.push_str(&format!("kind = \"exec\"\nscript = {}\n", quoted(script)));
                if !args.is_empty() {
                    t.push_str(&format!("args = {}\n", quoted_list(args)));
                }
                t.push_str("status_from = \"output\"\n");
            }
        }
        t
    }
}

/// The prefix of the link subnet holding `ip`, if any.
fn prefix_for(ip: Ipv4Addr, subnets: &[(String, Ipv4Addr, u8)]) -> Option<(u8, String)> {
    subnets
        .iter()
        .find(|(_, net, p)| super::network(ip, *p) == super::network(*net, *p))
        .map(|(l, _, p)| (*p, l.clone()))
}

/// Imports heartbeat's files.
pub fn import(input: &Input<'_>, facts: &Facts) -> Result<Imported, ImportError> {
    let mut im = Importer {
        facts,
        report: super::Report::default(),
    };
    let cf = im.ha_cf(input.ha_cf)?;
    let addrs = im.addresses(&cf)?;
    match input.authkeys {
        Some(a) => im.authkeys(a),
        None => im.report.report.push(ReportLine {
            source: "authkeys".into(),
            verdict: Verdict::Changed,
            text: format!(
                "absent; every Tandem packet carries a BLAKE3 MAC under the key {}",
                facts.key_file
            ),
        }),
    }
    // Each link's subnet, where an --address gave a prefix.
    let subnets: Vec<(String, Ipv4Addr, u8)> = cf
        .interfaces
        .iter()
        .filter_map(|i| {
            let a = addrs
                .iter()
                .find(|((_, ai), a)| ai == i && a.prefix.is_some())?
                .1;
            Some((i.clone(), a.ip, a.prefix.filter(|p| *p <= 32)?))
        })
        .collect();

    let mut t = super::head(
        "Imported from heartbeat's ha.cf, haresources and authkeys by\n# `tandem import heartbeat`",
        &facts.cluster,
        &facts.key_file,
    );
    let timing: Vec<String> = [
        ("heartbeat_ms", cf.heartbeat_ms),
        ("deadtime_ms", cf.deadtime_ms),
        ("warntime_ms", cf.warntime_ms),
        ("startup_wait_ms", cf.initdead_ms),
    ]
    .iter()
    .filter_map(|(k, v)| v.map(|(ms, line)| format!("{k} = {ms}   # ha.cf:{line}")))
    .collect();
    if !timing.is_empty() {
        t.push_str(&format!("[timing]\n{}\n\n", timing.join("\n")));
    }
    if cf.nodes.len() == 2 {
        t.push_str("# Two nodes, as heartbeat ran them: the survivor acts alone (add a\n");
        t.push_str("# [[fence_device]] per node, or a witness instead, against split brain).\n");
        t.push_str("[quorum]\ntwo_node = true\n\n");
    }
    if let Some(dev) = &cf.watchdog {
        t.push_str(&format!("[watchdog]\ndevice = {}\n\n", quoted(dev)));
    }
    for i in &cf.interfaces {
        t.push_str(&format!("[[link]]\nname = {}\n", quoted(&safe_name(i))));
        if let Some((_, net, p)) = subnets.iter().find(|(l, _, _)| l == i) {
            t.push_str(&format!("subnet = \"{}/{p}\"\n", super::network(*net, *p)));
        }
        t.push('\n');
    }
    for node in &cf.nodes {
        let a: Vec<String> = cf
            .interfaces
            .iter()
            .filter_map(|i| {
                addrs
                    .get(&(node.clone(), i.clone()))
                    .map(|a| format!("{} = \"{}\"", quoted(&safe_name(i)), a.ip))
            })
            .collect();
        t.push_str(&format!(
            "[[node]]\nname = {}\naddresses = {{ {} }}\n\n",
            quoted(&safe_name(node)),
            a.join(", ")
        ));
    }
    for (name, targets, line, _) in &cf.pings {
        let targets: Vec<String> = targets.iter().map(ToString::to_string).collect();
        let found = targets
            .first()
            .and_then(|t| t.parse::<Ipv4Addr>().ok())
            .and_then(|ip| prefix_for(ip, &subnets))
            .map(|(_, l)| l);
        let link = match found {
            Some(l) => l,
            None => {
                // A guess, said as one: the link whose failure the ping
                // node stands for is not in ha.cf.
                let first = cf.interfaces[0].clone();
                im.say("ha.cf", *line, Verdict::Changed, format!("ping monitor `{name}`: {} is in no link's subnet: put on link {first}, the first (set `link` to the one whose failure it stands for)", targets.join(", ")));
                first
            }
        };
        t.push_str(&format!(
            "[[monitor]]\nname = {}\nkind = \"ping\"\nlink = {}\ntargets = {}\n\n",
            quoted(name),
            quoted(&safe_name(&link)),
            quoted_list(&targets)
        ));
    }
    match (cf.crm, input.haresources) {
        (true, _) => {}
        (false, Some(h)) => t.push_str(&groups(&mut im, h, &cf, &subnets)?),
        (false, None) => {
            return Err(ImportError::Input {
                source_at: "haresources".into(),
                what: "missing, and ha.cf does not say `crm yes`".into(),
                fix: "give the directory that holds haresources beside ha.cf".into(),
            })
        }
    }
    Ok(Imported::new(&t, im.report))
}

/// The groups of `haresources`, as TOML.
fn groups(
    im: &mut Importer<'_>,
    text: &str,
    cf: &HaCf,
    subnets: &[(String, Ipv4Addr, u8)],
) -> Result<String, ImportError> {
    let mut t = String::new();
    let mut group_names: Vec<String> = Vec::new();
    let failback = match cf.failback_auto {
        Some(false) => "manual",
        // heartbeat's default was auto_failback legacy, which failed back.
        Some(true) | None => "auto",
    };
    for (n, w) in lines(text) {
        let node = &w[0];
        if !cf.nodes.contains(node) {
            return Err(ImportError::Input {
                source_at: format!("haresources:{n}"),
                what: format!("`{node}` is not a node of ha.cf"),
                fix: format!(
                    "the first word of each line is the node that normally runs it: one of {}",
                    cf.nodes.join(", ")
                ),
            });
        }
        let mut res: Vec<Res> = Vec::new();
        for token in &w[1..] {
            let mut parts = token.split("::");
            let head = parts.next().unwrap_or("");
            let args: Vec<String> = parts.map(str::to_string).collect();
            let ip_spec = if head.parse::<Ipv4Addr>().is_ok()
                || head
                    .split('/')
                    .next()
                    .is_some_and(|h| h.parse::<Ipv4Addr>().is_ok())
            {
                Some(head.to_string())
            } else if matches!(head, "IPaddr" | "IPaddr2") {
                args.first().cloned()
            } else {
                None
            };
            if let Some(spec) = ip_spec {
                let f: Vec<&str> = spec.split('/').collect();
                let ip: Ipv4Addr = f[0].parse().map_err(|_| ImportError::Input {
                    source_at: format!("haresources:{n}"),
                    what: format!("`{token}`: `{}` is not an IPv4 address", f[0]),
                    fix: "write IPaddr::ADDRESS[/PREFIX[/IFACE]]".into(),
                })?;
                let prefix = match f
                    .get(1)
                    .and_then(|p| p.parse::<u8>().ok())
                    .filter(|p| *p <= 32)
                {
                    Some(p) => p,
                    None => match prefix_for(ip, subnets) {
                        Some((p, _)) => p,
                        None => {
                            im.say("haresources", n, Verdict::Changed, format!("{token}: no prefix length and no link subnet holds it: /24 assumed (write ADDRESS/PREFIX, or give --address with a prefix)"));
                            24
                        }
                    },
                };
                let mut interface = f.get(2).filter(|i| !i.is_empty()).map(|i| i.to_string());
                if interface.is_none() && prefix_for(ip, subnets).is_none() {
                    // heartbeat's IPaddr found the interface by the routing
                    // table; the first network link is where such a route
                    // usually went (seed 004 added one on eth0).
                    let first = cf.interfaces[0].clone();
                    im.say("haresources", n, Verdict::Changed, format!("{token}: in no link's subnet: on {first}, the first network link (heartbeat found the interface by the routing table; set `interfaces` if it is another)"));
                    interface = Some(first);
                }
                if f.get(3).is_some() {
                    im.say(
                        "haresources",
                        n,
                        Verdict::NotNeeded,
                        format!("{token}: the broadcast address is computed from the prefix"),
                    );
                }
                im.say(
                    "haresources",
                    n,
                    Verdict::Mapped,
                    format!("{token} -> ip resource {ip}/{prefix}"),
                );
                res.push(Res::Ip {
                    address: format!("{ip}/{prefix}"),
                    interface,
                });
                continue;
            }
            match head {
                "Filesystem" => {
                    let (Some(device), Some(directory)) = (args.first(), args.get(1)) else {
                        return Err(ImportError::Input {
                            source_at: format!("haresources:{n}"),
                            what: format!("`{token}`: Filesystem needs a device and a mount point"),
                            fix: "write Filesystem::DEVICE::DIRECTORY::TYPE".into(),
                        });
                    };
                    let fstype = match args.get(2).filter(|s| !s.is_empty()) {
                        Some(f) => f.clone(),
                        None => {
                            im.say("haresources", n, Verdict::Changed, format!("{token}: no filesystem type: \"auto\" (mount guesses it; better write it)"));
                            "auto".into()
                        }
                    };
                    im.say("haresources", n, Verdict::Mapped, format!("{token} -> fs resource {device} on {directory} ({fstype}), its holders killed on stop"));
                    res.push(Res::Fs {
                        device: device.clone(),
                        directory: directory.clone(),
                        fstype,
                        options: args.get(3).filter(|s| !s.is_empty()).cloned(),
                    });
                }
                "drbddisk" => im.say(
                    "haresources",
                    n,
                    Verdict::NotMapped,
                    format!("{token}: DRBD resource {}: configure it as a Tandem [[volume]] (its devices and size are in /etc/drbd.d), add a `volume` resource here, and give the fs resource `volume = NAME` instead of its /dev/drbd device", args.first().map(String::as_str).unwrap_or("r0")),
                ),
                "MailTo" => im.say(
                    "haresources",
                    n,
                    Verdict::NotMapped,
                    format!("{token}: mail on takeover: add an [[alert]] running Pacemaker's alert_smtp.sh.sample (its recipient {})", args.first().map(String::as_str).unwrap_or("?")),
                ),
                "IPsrcaddr" | "IPv6addr" | "LVM" | "LVSSyncDaemonSwap" | "AudibleAlarm" | "SendArp" | "ServeRAID" | "WAS" | "WinPopup" | "Xinetd" | "db2" | "portblock" | "ids" | "hto-mapfuncs" | "OCF" => {
                    im.say("haresources", n, Verdict::NotMapped, format!("{token}: heartbeat's {head} script: run the OCF agent ocf:heartbeat:{head} (kind = \"ocf\") with its parameters"));
                }
                _ => {
                    let script = if im.facts.resource_d.iter().any(|s| s == head) {
                        format!("{}/resource.d/{head}", im.facts.dir.trim_end_matches('/'))
                    } else {
                        format!("/etc/init.d/{head}")
                    };
                    let shown = if args.is_empty() { String::new() } else { format!(" {}", args.join(" ")) };
                    im.say("haresources", n, Verdict::Changed, format!("{token} -> exec resource `{script}{shown} start|stop|status`, status read from its words (running, OK); Tandem calls status every 500 ms (heartbeat only at takeover): check that it prints running or OK while the service runs"));
                    res.push(Res::Exec {
                        name: head.to_string(),
                        script,
                        args,
                    });
                }
            }
        }
        if res.is_empty() {
            im.say(
                "haresources",
                n,
                Verdict::NotMapped,
                format!("{}: nothing Tandem can run on this line", w.join(" ")),
            );
            continue;
        }
        // The group is named for its service (the first script), else its
        // filesystem, else its address.
        let base = res
            .iter()
            .find(|r| matches!(r, Res::Exec { .. }))
            .or_else(|| res.iter().find(|r| matches!(r, Res::Fs { .. })))
            .or(res.first())
            .map(|r| r.base_name())
            .unwrap_or_else(|| "group".into());
        let mut gname = base.clone();
        let mut k = 2;
        while group_names.contains(&gname) {
            gname = format!("{base}-{k}");
            k += 1;
        }
        group_names.push(gname.clone());
        let mut preferred = vec![safe_name(node)];
        preferred.extend(cf.nodes.iter().filter(|x| *x != node).map(|x| safe_name(x)));
        t.push_str(&format!(
            "# haresources:{n}: {}\n[[group]]\nname = {}\npreferred = {}\nfailback = \"{failback}\"\n\n",
            w.join(" "),
            quoted(&gname),
            quoted_list(&preferred)
        ));
        let mut used: Vec<String> = Vec::new();
        for r in &res {
            let name = super::unique(&r.base_name(), &mut used);
            t.push_str(&r.toml(&name));
            t.push('\n');
        }
    }
    if cf.failback_auto.is_none() && !group_names.is_empty() {
        im.report.report.push(ReportLine {
            source: "ha.cf".into(),
            verdict: Verdict::Changed,
            text: "no auto_failback: heartbeat's default (legacy) failed back: failback = \"auto\""
                .into(),
        });
    }
    Ok(t)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_are_seconds_or_milliseconds() {
        assert_eq!(duration_ms("2"), Some(2000));
        assert_eq!(duration_ms("0.5"), Some(500));
        assert_eq!(duration_ms("500ms"), Some(500));
        assert_eq!(duration_ms("10s"), Some(10_000));
        assert_eq!(duration_ms("soon"), None);
        assert_eq!(duration_ms("-1"), None);
        assert_eq!(duration_ms("1.25"), Some(1250));
        assert_eq!(duration_ms("1.2345"), None);
        assert_eq!(duration_ms("99999999"), None, "a limit");
    }

    #[test]
    fn comments_and_continuations_are_read_as_heartbeat_did() {
        let l = lines("# a comment\nnode a   # trailing\n\nn1 10.0.0.1 \\\n  apache\n");
        assert_eq!(l[0], (2, vec!["node".to_string(), "a".to_string()]));
        assert_eq!(l[1].0, 4);
        assert_eq!(l[1].1, ["n1", "10.0.0.1", "apache"]);
    }

    fn facts() -> Facts {
        Facts {
            cluster: "web".into(),
            key_file: "/etc/tandem/web.key".into(),
            dir: "/etc/ha.d".into(),
            resource_d: vec!["IPaddr".into()],
            addresses: ["n1", "n2"]
                .iter()
                .enumerate()
                .map(|(i, n)| Address {
                    node: n.to_string(),
                    interface: "eth0".into(),
                    ip: Ipv4Addr::new(10, 0, 0, 11 + i as u8),
                    prefix: Some(24),
                })
                .collect(),
        }
    }

    #[test]
    fn a_missing_address_is_named_with_the_flag_that_gives_it() {
        let mut f = facts();
        f.addresses.pop();
        let e = import(
            &Input {
                ha_cf: "node n1 n2\nucast eth0 10.0.0.12\n",
                haresources: Some(""),
                authkeys: None,
            },
            &f,
        )
        .unwrap_err();
        let s = e.to_string();
        assert!(s.contains("no address for n2:eth0"), "{s}");
        assert!(s.contains("10.0.0.12 on eth0"), "{s}");
        assert!(s.contains("--address n2:eth0="), "{s}");
    }

    #[test]
    fn a_node_that_ha_cf_does_not_list_is_refused() {
        let e = import(
            &Input {
                ha_cf: "node n1 n2\nbcast eth0\n",
                haresources: Some("n3 10.0.0.100 apache\n"),
                authkeys: None,
            },
            &facts(),
        )
        .unwrap_err();
        assert!(e.to_string().contains("`n3` is not a node of ha.cf"), "{e}");
    }

    #[test]
    fn an_address_without_a_prefix_takes_its_links() {
        let i = import(
            &Input {
                ha_cf: "node n1 n2\nbcast eth0\n",
                haresources: Some("n1 10.0.0.100 192.168.9.9 apache\n"),
                authkeys: None,
            },
            &facts(),
        )
        .unwrap();
        assert!(
            i.config.contains("address = \"10.0.0.100/24\""),
            "{}",
            i.config
        );
        assert!(i.config.contains("address = \"192.168.9.9/24\""));
        assert!(i
            .report
            .iter()
            .any(|r| r.verdict == Verdict::Changed && r.text.contains("192.168.9.9: no prefix")));
    }
}
