//! `tandem init`: a short, commented configuration from a few facts (the
//! nodes and their addresses, a witness, the floating address, the
//! services), with each link's subnet found from this machine's own
//! interfaces. Pure: the command line gathers the interfaces, writes the
//! key and validates what this returns.
//!
//! The file uses inline tables, one entry per line, so that a two-node
//! cluster with a witness, an address and a service is eight lines of
//! settings; `tandem config show` prints the same model table by table.

use std::net::{Ipv4Addr, SocketAddr};

use crate::import::{quoted, quoted_list, safe_name};

/// A service the group runs, as `--service` gave it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Service {
    /// `systemd:UNIT` (`.service` added when there is no suffix).
    Systemd(String),
    /// `ocf:PROVIDER:AGENT` (Debian's resource-agents).
    Ocf(String),
    /// `exec:/PATH` (an LSB init script).
    Exec(String),
    /// `process:PROGRAM ARGS...` (a program the agent supervises).
    Process(Vec<String>),
}

impl Service {
    /// Reads `--service`'s value.
    pub fn parse(text: &str) -> Result<Service, String> {
        let hint =
            "write systemd:UNIT, ocf:PROVIDER:AGENT, exec:/PATH/TO/SCRIPT or process:PROGRAM ARGS";
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| format!("--service {text}: {hint}"))?;
        if rest.trim().is_empty() {
            return Err(format!(
                "--service {text}: nothing after `{kind}:` ({hint})"
            ));
        }
        match kind {
            "systemd" => {
                let unit = if rest.contains('.') {
                    rest.to_string()
                } else {
                    format!("{rest}.service")
                };
                Ok(Service::Systemd(unit))
            }
            "ocf" => Ok(Service::Ocf(format!("ocf:{rest}"))),
            "exec" | "lsb" => Ok(Service::Exec(rest.to_string())),
            "process" => Ok(Service::Process(
                rest.split_whitespace().map(str::to_string).collect(),
            )),
            _ => Err(format!("--service {text}: unknown kind `{kind}` ({hint})")),
        }
    }

    /// A resource name for it.
    fn name(&self) -> String {
        let raw = match self {
            Service::Systemd(u) => u.split('.').next().unwrap_or(u).to_string(),
            Service::Ocf(a) => a.rsplit(':').next().unwrap_or(a).to_string(),
            Service::Exec(p) => p.rsplit('/').next().unwrap_or(p).to_string(),
            Service::Process(c) => c
                .first()
                .map(|p| p.rsplit('/').next().unwrap_or(p).to_string())
                .unwrap_or_default(),
        };
        safe_name(&raw.to_lowercase())
    }

    fn fields(&self) -> String {
        match self {
            Service::Systemd(u) => format!("kind = \"systemd\", unit = {}", quoted(u)),
            Service::Ocf(a) => format!("kind = \"ocf\", agent = {}", quoted(a)),
            Service::Exec(p) => format!("kind = \"exec\", script = {}", quoted(p)),
            Service::Process(c) => format!("kind = \"process\", command = {}", quoted_list(c)),
        }
    }
}

/// An address of this machine (`getifaddrs`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LocalAddress {
    /// Interface name.
    pub interface: String,
    /// The address.
    pub ip: Ipv4Addr,
    /// Its prefix length.
    pub prefix: u8,
}

/// What `tandem init` was told.
#[derive(Debug, Clone, Default)]
pub struct InitSpec {
    /// The cluster's name.
    pub cluster: String,
    /// The key file the configuration names.
    pub key_file: String,
    /// Link names, in the order of each node's addresses.
    pub links: Vec<String>,
    /// Each node and its address on each link.
    pub nodes: Vec<(String, Vec<Ipv4Addr>)>,
    /// A witness's address.
    pub witness: Option<SocketAddr>,
    /// The floating address and its prefix.
    pub vip: Option<(Ipv4Addr, u8)>,
    /// The group's services, in start order (after the address).
    pub services: Vec<Service>,
    /// The group's name (default: the first service's).
    pub group: Option<String>,
    /// This machine's addresses, for the links' subnets.
    pub local: Vec<LocalAddress>,
}

/// Why no configuration can be written.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what} ({fix})")]
pub struct InitError {
    /// What is wrong.
    pub what: String,
    /// What to do.
    pub fix: String,
}

fn err(what: impl Into<String>, fix: impl Into<String>) -> InitError {
    InitError {
        what: what.into(),
        fix: fix.into(),
    }
}

use crate::import::network;

fn within(ip: Ipv4Addr, net: Ipv4Addr, prefix: u8) -> bool {
    network(ip, prefix) == network(net, prefix)
}

/// The configuration, and notes on what was found (for the operator).
pub fn init(spec: &InitSpec) -> Result<(String, Vec<String>), InitError> {
    if spec.nodes.len() < 2 {
        return Err(err(
            format!("{} node(s): a cluster needs two or more", spec.nodes.len()),
            "give --node NAME=ADDRESS for each, e.g. --node n1=10.0.0.11 --node n2=10.0.0.12",
        ));
    }
    let nlinks = spec.nodes[0].1.len();
    if nlinks == 0 || spec.nodes.iter().any(|(_, a)| a.len() != nlinks) {
        return Err(err(
            "every node needs the same number of addresses, one per link",
            "write --node NAME=LAN_ADDRESS[,SYNC_ADDRESS] alike for every node",
        ));
    }
    if spec.links.len() < nlinks {
        return Err(err(
            format!(
                "{nlinks} addresses per node but {} link name(s)",
                spec.links.len()
            ),
            "name each link with --links, e.g. --links lan,sync",
        ));
    }
    if spec.services.is_empty() && spec.vip.is_none() {
        return Err(err(
            "nothing to keep available",
            "give --vip ADDRESS/PREFIX and --service KIND:WHAT (e.g. --service systemd:apache2)",
        ));
    }
    let mut notes = Vec::new();
    // Each link's subnet: from the interface here that holds every node's
    // address on it, else (the first link) from the floating address.
    let mut subnets: Vec<Option<(Ipv4Addr, u8)>> = Vec::new();
    for l in 0..nlinks {
        let addrs: Vec<Ipv4Addr> = spec.nodes.iter().map(|(_, a)| a[l]).collect();
        let here = spec
            .local
            .iter()
            .find(|a| addrs.iter().all(|x| within(*x, a.ip, a.prefix)));
        let subnet = match (here, spec.vip) {
            (Some(a), _) => {
                let net = network(a.ip, a.prefix);
                notes.push(format!(
                    "link {}: {net}/{} (found on {} here)",
                    spec.links[l], a.prefix, a.interface
                ));
                Some((net, a.prefix))
            }
            (None, Some((vip, p))) if l == 0 && addrs.iter().all(|x| within(*x, vip, p)) => {
                let net = network(vip, p);
                notes.push(format!(
                    "link {}: {net}/{p} (from the floating address; no interface here holds it)",
                    spec.links[l]
                ));
                Some((net, p))
            }
            _ => {
                notes.push(format!(
                    "link {}: no subnet (no interface here holds {}; run init on a node to find it)",
                    spec.links[l],
                    addrs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(", ")
                ));
                None
            }
        };
        subnets.push(subnet);
    }

    let mut t = String::new();
    t.push_str(&format!(
        "# Cluster {} written by `tandem init`: `tandem config show` prints it table by\n",
        safe_name(&spec.cluster)
    ));
    t.push_str("# table, docs/CONFIG.md (or `man tandem.toml`) explains every setting.\n");
    t.push_str(&format!(
        "cluster = {{ name = {}, key_file = {} }}\n",
        quoted(&safe_name(&spec.cluster)),
        quoted(&spec.key_file)
    ));
    match (spec.witness, spec.nodes.len()) {
        (Some(w), _) => {
            t.push_str(&format!("# The witness (`tandem witness` on a third machine) gives the third vote.\nquorum = {{ witness = \"{w}\" }}\n"));
        }
        (None, 2) => {
            t.push_str("# Two nodes and no witness: a partition is decided by fencing (add a\n# [[fence_device]] per node) or a witness (--witness).\nquorum = { two_node = true }\n");
        }
        _ => {}
    }
    let links: Vec<String> = (0..nlinks)
        .map(|l| match subnets[l] {
            Some((net, p)) => format!(
                "{{ name = {}, subnet = \"{net}/{p}\" }}",
                quoted(&safe_name(&spec.links[l]))
            ),
            None => format!("{{ name = {} }}", quoted(&safe_name(&spec.links[l]))),
        })
        .collect();
    t.push_str(&format!("link = [{}]\n", links.join(", ")));
    let nodes: Vec<String> = spec
        .nodes
        .iter()
        .map(|(n, a)| {
            let addrs: Vec<String> = a
                .iter()
                .enumerate()
                .map(|(l, ip)| format!("{} = \"{ip}\"", safe_name(&spec.links[l])))
                .collect();
            format!(
                "{{ name = {}, addresses = {{ {} }} }}",
                quoted(&safe_name(n)),
                addrs.join(", ")
            )
        })
        .collect();
    t.push_str(&format!("node = [{}]\n", nodes.join(",\n        ")));
    let mut resources: Vec<String> = Vec::new();
    if let Some((ip, p)) = spec.vip {
        resources.push(format!(
            "{{ name = \"vip\", kind = \"ip\", address = \"{ip}/{p}\" }}"
        ));
    }
    let mut used = vec!["vip".to_string()];
    for s in &spec.services {
        let name = crate::import::unique(&s.name(), &mut used);
        resources.push(format!("{{ name = {}, {} }}", quoted(&name), s.fields()));
    }
    let group = spec.group.clone().unwrap_or_else(|| {
        spec.services
            .first()
            .map(Service::name)
            .unwrap_or_else(|| "vip".into())
    });
    let preferred: Vec<String> = spec.nodes.iter().map(|(n, _)| safe_name(n)).collect();
    t.push_str("# Started in this order where the group runs, stopped in reverse.\n");
    t.push_str(&format!(
        "group = [{{ name = {}, preferred = {}, resource = [\n  {} ] }}]\n",
        quoted(&safe_name(&group)),
        quoted_list(&preferred),
        resources.join(",\n  ")
    ));
    Ok((t, notes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> InitSpec {
        InitSpec {
            cluster: "web".into(),
            key_file: "/etc/tandem/web.key".into(),
            links: vec!["lan".into(), "sync".into()],
            nodes: vec![
                ("n1".into(), vec![Ipv4Addr::new(10, 0, 0, 11)]),
                ("n2".into(), vec![Ipv4Addr::new(10, 0, 0, 12)]),
            ],
            witness: Some("10.0.0.5:5405".parse().unwrap()),
            vip: Some((Ipv4Addr::new(10, 0, 0, 100), 24)),
            services: vec![Service::parse("systemd:apache2").unwrap()],
            group: None,
            local: vec![LocalAddress {
                interface: "eth0".into(),
                ip: Ipv4Addr::new(10, 0, 0, 11),
                prefix: 24,
            }],
        }
    }

    #[test]
    fn two_nodes_a_witness_an_address_and_a_service_in_under_ten_lines() {
        let (t, notes) = init(&spec()).unwrap();
        let settings = t
            .lines()
            .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
            .count();
        assert!(settings < 10, "{settings} lines:\n{t}");
        assert!(t.contains("subnet = \"10.0.0.0/24\""), "{t}");
        assert!(t.contains("unit = \"apache2.service\""), "{t}");
        assert!(t.contains("witness = \"10.0.0.5:5405\""), "{t}");
        assert_eq!(notes, ["link lan: 10.0.0.0/24 (found on eth0 here)"]);
        // It is TOML, of the configuration's shape.
        let v: toml::Table = toml::from_str(&t).unwrap();
        assert_eq!(
            v["group"][0]["resource"][1]["name"].as_str(),
            Some("apache2")
        );
    }

    #[test]
    fn services_are_read_from_their_kind_and_bad_ones_say_how() {
        assert_eq!(
            Service::parse("ocf:heartbeat:apache").unwrap(),
            Service::Ocf("ocf:heartbeat:apache".into())
        );
        assert_eq!(
            Service::parse("process:/usr/bin/app --port 80").unwrap(),
            Service::Process(vec!["/usr/bin/app".into(), "--port".into(), "80".into()])
        );
        assert_eq!(
            Service::parse("systemd:x.socket").unwrap(),
            Service::Systemd("x.socket".into())
        );
        for bad in ["apache2", "rpm:x", "systemd:"] {
            assert!(
                Service::parse(bad).unwrap_err().contains("systemd:UNIT"),
                "{bad}"
            );
        }
    }

    #[test]
    fn what_is_missing_is_named_with_the_flag() {
        let mut s = spec();
        s.nodes.pop();
        assert!(init(&s).unwrap_err().fix.contains("--node"));
        let mut s = spec();
        s.nodes[1].1.push(Ipv4Addr::new(10, 1, 0, 12));
        assert!(init(&s).unwrap_err().what.contains("same number"));
        let mut s = spec();
        s.services.clear();
        s.vip = None;
        assert!(init(&s).unwrap_err().fix.contains("--vip"));
    }

    #[test]
    fn without_a_local_interface_the_first_links_subnet_comes_from_the_address() {
        let mut s = spec();
        s.local.clear();
        s.witness = None;
        let (t, notes) = init(&s).unwrap();
        assert!(t.contains("two_node = true"), "{t}");
        assert!(t.contains("subnet = \"10.0.0.0/24\""), "{t}");
        assert!(notes[0].contains("from the floating address"), "{notes:?}");
    }
}
