//! `tandem import pacemaker CIB.xml [--corosync corosync.conf]`: a
//! Pacemaker CIB (from `cibadmin -Q`, `pcs cluster cib` or `crm`) and
//! Corosync's node list as a Tandem configuration.
//!
//! | Pacemaker / Corosync | Tandem |
//! |---|---|
//! | `nodes`, Corosync's `nodelist` (`ringN_addr`) | `[[node]]` with an address per `[[link]]` `ringN` |
//! | `quorum { two_node: 1 }` | `[quorum] two_node = true` |
//! | `cluster-name` property, `totem { cluster_name }` | `[cluster] name` |
//! | `group` | `[[group]]`, its primitives in order |
//! | a primitive outside any group | a `[[group]]` of its own |
//! | `ocf:P:T` with its instance attributes | an `ocf` resource running the same agent with the same `params` (`IPaddr2`/`IPaddr`: Tandem's own `ip` kind) |
//! | `systemd:UNIT`, `lsb:NAME` | `systemd` (unit `UNIT.service`), `exec` (`/etc/init.d/NAME`) |
//! | `op monitor interval timeout on-fail`, `op start/stop timeout` | `check_interval_ms`, `timeout_ms` (the longest), `on_fail` |
//! | meta `migration-threshold`, `failure-timeout` | the group's `migration_threshold`, `failure_expiry_ms` |
//! | `resource-stickiness` (and `rsc_defaults`) | `failback = "manual"` when above 0, else `"auto"` |
//! | `rsc_location` node scores | the group's `preferred` order; `-INFINITY`: left out |
//! | `stonith:AGENT`, `pcmk_host_list`/`pcmk_host_map`, `fencing-topology` | `[[fence_device]]` `/usr/sbin/AGENT` with `hosts`, `options` and `level` |
//!
//! Reported, not mapped: clones and promotable clones (until clones
//! exist), `rsc_colocation` and `rsc_order` between groups (Tandem places
//! groups one by one: put them in one group), rules, `target-role`/`is-managed`, templates, tags, bundles,
//! most cluster properties.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use quick_xml::events::Event;
use quick_xml::Reader;

use super::blocks::{parse, Item};
use super::{quoted, quoted_list, safe_name, Address, ImportError, Imported, Verdict};
use crate::kinds::ocf::metadata::{attributes, duration_ms};

/// Largest CIB read.
const MAX_CIB_BYTES: usize = 8 << 20;
/// Deepest element nesting read.
const MAX_DEPTH: usize = 64;
/// Most elements read.
const MAX_ELEMENTS: usize = 200_000;
/// Pacemaker's INFINITY.
const INFINITY: i64 = 1_000_000;

/// What the caller knows besides the files.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The cluster's name (None: the CIB's or Corosync's).
    pub cluster: Option<String>,
    /// The key file the configuration names.
    pub key_file: String,
    /// Addresses that Corosync's node list does not give
    /// (`NODE:ringN=IP`).
    pub addresses: Vec<Address>,
}

/// An XML element.
#[derive(Debug, Clone, Default)]
struct Elem {
    name: String,
    attrs: BTreeMap<String, String>,
    children: Vec<Elem>,
}

impl Elem {
    fn attr(&self, k: &str) -> Option<&str> {
        self.attrs.get(k).map(String::as_str)
    }

    fn child(&self, name: &str) -> Option<&Elem> {
        self.children.iter().find(|c| c.name == name)
    }

    fn all<'a>(&'a self, name: &'a str) -> impl Iterator<Item = &'a Elem> + 'a {
        self.children.iter().filter(move |c| c.name == name)
    }

    /// The `nvpair`s of its child sets named `set` (`instance_attributes`,
    /// `meta_attributes`...), in order.
    fn nvpairs(&self, set: &str) -> Vec<(String, String)> {
        self.all(set)
            .flat_map(|s| s.all("nvpair"))
            .filter_map(|p| Some((p.attr("name")?.to_string(), p.attr("value")?.to_string())))
            .collect()
    }
}

/// The document's root element.
fn xml_tree(text: &str) -> Result<Elem, ImportError> {
    let bad = |why: String| ImportError::Input {
        source_at: "CIB".into(),
        what: why,
        fix: "give the output of `cibadmin -Q` (or `pcs cluster cib`)".into(),
    };
    if text.len() > MAX_CIB_BYTES {
        return Err(bad(format!(
            "{} bytes: larger than any CIB ({MAX_CIB_BYTES})",
            text.len()
        )));
    }
    let mut r = Reader::from_str(text);
    let mut stack: Vec<Elem> = vec![Elem::default()];
    let mut count = 0usize;
    loop {
        let ev = r
            .read_event()
            .map_err(|e| bad(format!("not XML at byte {}: {e}", r.buffer_position())))?;
        match ev {
            Event::Eof => break,
            Event::Start(e) | Event::Empty(e) if stack.len() > MAX_DEPTH => {
                return Err(bad(format!(
                    "elements nested deeper than {MAX_DEPTH} ({:?})",
                    e.name()
                )));
            }
            Event::Start(e) => {
                count += 1;
                stack.push(Elem {
                    name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
                    attrs: attributes(&e),
                    children: Vec::new(),
                });
            }
            Event::Empty(e) => {
                count += 1;
                let el = Elem {
                    name: String::from_utf8_lossy(e.name().as_ref()).into_owned(),
                    attrs: attributes(&e),
                    children: Vec::new(),
                };
                if let Some(top) = stack.last_mut() {
                    top.children.push(el);
                }
            }
            Event::End(_) => {
                if stack.len() < 2 {
                    return Err(bad("a closing tag that closes nothing".into()));
                }
                let el = stack.pop().unwrap_or_default();
                if let Some(top) = stack.last_mut() {
                    top.children.push(el);
                }
            }
            _ => {}
        }
        if count > MAX_ELEMENTS {
            return Err(bad(format!("more than {MAX_ELEMENTS} elements")));
        }
    }
    if stack.len() != 1 {
        return Err(bad(format!(
            "it ends with {} element(s) open (cut short?)",
            stack.len() - 1
        )));
    }
    stack
        .pop()
        .and_then(|root| root.children.into_iter().find(|c| c.name == "cib"))
        .ok_or_else(|| bad("no <cib> element".into()))
}

/// A Pacemaker score: an integer, `INFINITY`, `+INFINITY`, `-INFINITY`.
fn score(s: &str) -> Option<i64> {
    match s.trim() {
        "INFINITY" | "+INFINITY" | "inf" | "+inf" => Some(INFINITY),
        "-INFINITY" | "-inf" => Some(-INFINITY),
        n => n.parse::<i64>().ok().map(|v| v.clamp(-INFINITY, INFINITY)),
    }
}

type Importer = super::Report;

/// What Corosync's configuration says.
#[derive(Debug, Default)]
struct Corosync {
    name: Option<String>,
    /// Node name -> address per ring.
    nodes: Vec<(String, Vec<Option<Ipv4Addr>>)>,
    two_node: bool,
}

fn corosync(im: &mut Importer, text: &str) -> Result<Corosync, ImportError> {
    let items = parse("corosync.conf", text)?;
    let mut c = Corosync::default();
    for it in &items {
        let at = format!("corosync.conf:{}", it.line);
        match it.key.as_str() {
            "totem" => {
                for t in &it.block {
                    let at = format!("corosync.conf:{}", t.line);
                    match t.key.as_str() {
                        "cluster_name" => {
                            c.name = t.arg().map(str::to_string);
                            im.say(&at, Verdict::Mapped, format!("{} -> [cluster] name", t.all()));
                        }
                        "token" => im.say(&at, Verdict::Changed, format!("{}: Tandem's default profile declares a node dead after 200 ms of silence on every link; to keep Corosync's pace write [timing] deadtime_ms", t.all())),
                        "crypto_cipher" | "crypto_hash" | "secauth" => im.say(&at, Verdict::Changed, format!("{}: every Tandem packet carries a BLAKE3 MAC under the new key", t.all())),
                        _ => im.say(&at, Verdict::NotNeeded, format!("{}: Corosync's own setting", t.all())),
                    }
                }
            }
            "nodelist" => {
                for n in it.all_named("node") {
                    let at = format!("corosync.conf:{}", n.line);
                    let Some(name) = n.child("name").and_then(Item::arg) else {
                        im.say(
                            &at,
                            Verdict::NotMapped,
                            "a node without `name`: its uname cannot be matched to the CIB".into(),
                        );
                        continue;
                    };
                    let mut rings: Vec<Option<Ipv4Addr>> = Vec::new();
                    for r in 0..8 {
                        let key = format!("ring{r}_addr");
                        match n.child(&key).and_then(Item::arg) {
                            None => break,
                            Some(a) => match a.parse::<Ipv4Addr>() {
                                Ok(ip) => rings.push(Some(ip)),
                                Err(_) => {
                                    im.say(&at, Verdict::NotMapped, format!("{key}: {a} is a name, not an IPv4 address: give --address {name}:ring{r}=IP"));
                                    rings.push(None);
                                }
                            },
                        }
                    }
                    im.say(
                        &at,
                        Verdict::Mapped,
                        format!(
                            "node {name} -> [[node]] with {} ring address(es)",
                            rings.len()
                        ),
                    );
                    c.nodes.push((name.to_string(), rings));
                }
            }
            "quorum" => {
                for q in &it.block {
                    let at = format!("corosync.conf:{}", q.line);
                    match q.key.as_str() {
                        "two_node" => {
                            c.two_node = q.arg() == Some("1");
                            im.say(
                                &at,
                                Verdict::Mapped,
                                format!("{} -> [quorum] two_node", q.all()),
                            );
                        }
                        _ => im.say(
                            &at,
                            Verdict::NotNeeded,
                            format!("{}: Tandem counts votes itself", q.all()),
                        ),
                    }
                }
            }
            _ => im.say(
                &at,
                Verdict::NotNeeded,
                format!("{}: Corosync's own section", it.key),
            ),
        }
    }
    Ok(c)
}

/// A primitive, mapped.
struct Prim {
    id: String,
    /// The resource's TOML (without the table header).
    fields: Vec<String>,
    /// Longest start/stop timeout.
    timeout_ms: Option<u64>,
    on_fail: Option<&'static str>,
    migration_threshold: Option<u32>,
    failure_expiry_ms: Option<u64>,
    stickiness: Option<i64>,
}

fn on_fail(v: &str) -> Option<&'static str> {
    Some(match v {
        "ignore" => "ignore",
        "block" | "stop" => "block",
        "restart" => "restart",
        "standby" => "standby",
        "fence" => "fence",
        _ => return None,
    })
}

fn toml_value(v: &str) -> String {
    if v.parse::<i64>().is_ok() && !v.starts_with('0') || v == "0" {
        v.to_string()
    } else {
        quoted(v)
    }
}

fn primitive(im: &mut Importer, p: &Elem) -> Option<Prim> {
    let id = p.attr("id").unwrap_or("").to_string();
    let at = format!("primitive {id}");
    let class = p.attr("class").unwrap_or("");
    let provider = p.attr("provider").unwrap_or("heartbeat");
    let ty = p.attr("type").unwrap_or("");
    let params = p.nvpairs("instance_attributes");
    let mut fields = Vec::new();
    match (class, ty) {
        ("ocf", "IPaddr2" | "IPaddr") => {
            let ip = params
                .iter()
                .find(|(k, _)| k == "ip")
                .map(|(_, v)| v.clone());
            let prefix = params
                .iter()
                .find(|(k, _)| k == "cidr_netmask")
                .and_then(|(_, v)| v.parse::<u8>().ok())
                .unwrap_or(32);
            let Some(ip) = ip else {
                im.say(
                    &at,
                    Verdict::NotMapped,
                    format!("ocf:{provider}:{ty} without `ip`"),
                );
                return None;
            };
            fields.push("kind = \"ip\"".into());
            fields.push(format!("address = {}", quoted(&format!("{ip}/{prefix}"))));
            if let Some((_, nic)) = params.iter().find(|(k, _)| k == "nic") {
                fields.push(format!("interfaces = {}", quoted_list(&[nic.as_str()])));
            }
            let rest: Vec<&str> = params
                .iter()
                .map(|(k, _)| k.as_str())
                .filter(|k| !["ip", "cidr_netmask", "nic"].contains(k))
                .collect();
            let also = if rest.is_empty() {
                String::new()
            } else {
                format!(" ({} not kept)", rest.join(", "))
            };
            im.say(&at, Verdict::Changed, format!("ocf:{provider}:{ty} -> Tandem's own ip kind, {ip}/{prefix}: the lease guard removes it directly{also}"));
        }
        ("ocf", _) => {
            fields.push("kind = \"ocf\"".into());
            fields.push(format!(
                "agent = {}",
                quoted(&format!("ocf:{provider}:{ty}"))
            ));
            if !params.is_empty() {
                let kv: Vec<String> = params
                    .iter()
                    .map(|(k, v)| format!("{} = {}", quoted(k), quoted(v)))
                    .collect();
                fields.push(format!("params = {{ {} }}", kv.join(", ")));
            }
            let names: Vec<&str> = params.iter().map(|(k, _)| k.as_str()).collect();
            im.say(
                &at,
                Verdict::Mapped,
                format!(
                    "ocf:{provider}:{ty} -> ocf resource, the same agent unchanged, params {}",
                    names.join(", ")
                ),
            );
        }
        ("systemd", _) => {
            let unit = if ty.contains('.') {
                ty.to_string()
            } else {
                format!("{ty}.service")
            };
            fields.push("kind = \"systemd\"".into());
            fields.push(format!("unit = {}", quoted(&unit)));
            im.say(
                &at,
                Verdict::Mapped,
                format!("systemd:{ty} -> systemd resource {unit}"),
            );
        }
        ("lsb", _) => {
            let script = if ty.starts_with('/') {
                ty.to_string()
            } else {
                format!("/etc/init.d/{ty}")
            };
            fields.push("kind = \"exec\"".into());
            fields.push(format!("script = {}", quoted(&script)));
            im.say(
                &at,
                Verdict::Mapped,
                format!("lsb:{ty} -> exec resource {script}"),
            );
        }
        _ => {
            im.say(
                &at,
                Verdict::NotMapped,
                format!("class {class}: not supported (ocf, systemd, lsb and stonith are)"),
            );
            return None;
        }
    }
    let mut timeout_ms: Option<u64> = None;
    let mut on_fail_v: Option<&'static str> = None;
    if let Some(ops) = p.child("operations") {
        for op in ops.all("op") {
            let name = op.attr("name").unwrap_or("");
            let t = op.attr("timeout").and_then(duration_ms);
            match name {
                "monitor" => {
                    if op.attr("role").is_some_and(|r| r != "Started") {
                        im.say(
                            &at,
                            Verdict::NotMapped,
                            format!(
                                "op monitor role={}: promotable resources are not imported",
                                op.attr("role").unwrap_or("")
                            ),
                        );
                        continue;
                    }
                    if let Some(i) = op.attr("interval").and_then(duration_ms).filter(|i| *i > 0) {
                        if class == "ocf" && ty != "IPaddr2" && ty != "IPaddr" {
                            fields.push(format!("check_interval_ms = {i}"));
                        } else {
                            im.say(&at, Verdict::Changed, format!("op monitor interval={}: this kind is checked every 500 ms (its interval is not kept)", op.attr("interval").unwrap_or("")));
                        }
                    }
                    if let Some(d) = op
                        .nvpairs("instance_attributes")
                        .iter()
                        .find(|(k, _)| k == "OCF_CHECK_LEVEL")
                    {
                        if class == "ocf" {
                            fields.push(format!("check_level = {}", toml_value(&d.1)));
                        }
                    }
                    if let Some(f) = op.attr("on-fail") {
                        match on_fail(f) {
                            Some(v) => {
                                on_fail_v = Some(v);
                                let how = if f == "stop" {
                                    " (stop: the group is blocked until `tandem cleanup`)"
                                } else {
                                    ""
                                };
                                im.say(
                                    &at,
                                    Verdict::Mapped,
                                    format!("op monitor on-fail={f} -> on_fail = \"{v}\"{how}"),
                                );
                            }
                            None => im.say(
                                &at,
                                Verdict::NotMapped,
                                format!("op monitor on-fail={f}: not supported"),
                            ),
                        }
                    }
                    im.say(
                        &at,
                        Verdict::Mapped,
                        format!(
                            "op monitor interval={} timeout={}",
                            op.attr("interval").unwrap_or("?"),
                            op.attr("timeout").unwrap_or("(default)")
                        ),
                    );
                }
                "start" | "stop" => {
                    if let Some(t) = t {
                        timeout_ms = Some(timeout_ms.map_or(t, |x| x.max(t)));
                        im.say(&at, Verdict::Mapped, format!("op {name} timeout={} -> timeout_ms (the longest of start and stop)", op.attr("timeout").unwrap_or("")));
                    }
                }
                other => im.say(&at, Verdict::NotMapped, format!("op {other}: not imported")),
            }
        }
    }
    let meta = p.nvpairs("meta_attributes");
    let mut prim = Prim {
        id,
        fields,
        timeout_ms,
        on_fail: on_fail_v,
        migration_threshold: None,
        failure_expiry_ms: None,
        stickiness: None,
    };
    meta_attributes(im, &at, &meta, &mut prim);
    Some(prim)
}

/// Meta attributes of a primitive or group, into `prim` (a group's go to
/// its members' group settings).
fn meta_attributes(im: &mut Importer, at: &str, meta: &[(String, String)], prim: &mut Prim) {
    for (k, v) in meta {
        match k.as_str() {
            "migration-threshold" => {
                prim.migration_threshold = v
                    .parse()
                    .ok()
                    .or_else(|| (v == "INFINITY").then_some(u32::MAX));
                im.say(
                    at,
                    Verdict::Mapped,
                    format!("{k}={v} -> the group's migration_threshold"),
                );
            }
            "failure-timeout" => {
                prim.failure_expiry_ms = duration_ms(v);
                im.say(
                    at,
                    Verdict::Mapped,
                    format!("{k}={v} -> the group's failure_expiry_ms"),
                );
            }
            "resource-stickiness" | "stickiness" => {
                prim.stickiness = score(v);
                im.say(
                    at,
                    Verdict::Mapped,
                    format!("{k}={v} -> failback: auto when the preferred node's lead in location score beats the stickiness of the group's resources, else manual"),
                );
            }
            "target-role" | "is-managed" => im.say(
                at,
                Verdict::NotMapped,
                format!("{k}={v}: use `tandem stop`/`start` or maintenance after the import"),
            ),
            _ => im.say(at, Verdict::NotMapped, format!("{k}={v}: not imported")),
        }
    }
}

/// Imports a CIB (and Corosync's configuration, for the nodes' addresses).
pub fn import(
    cib: &str,
    corosync_conf: Option<&str>,
    facts: &Facts,
) -> Result<Imported, ImportError> {
    let mut im = Importer::default();
    let root = xml_tree(cib)?;
    let conf = root
        .child("configuration")
        .ok_or_else(|| ImportError::Input {
            source_at: "CIB".into(),
            what: "no <configuration>".into(),
            fix: "give the output of `cibadmin -Q`".into(),
        })?;
    let cs = match corosync_conf {
        Some(t) => corosync(&mut im, t)?,
        None => Corosync::default(),
    };
    // Properties.
    let mut cluster_name = cs.name.clone();
    let mut default_stickiness: Option<i64> = None;
    if let Some(cc) = conf.child("crm_config") {
        for (k, v) in cc.nvpairs("cluster_property_set") {
            let at = format!("property {k}");
            match k.as_str() {
                "cluster-name" => {
                    cluster_name = Some(v.clone());
                    im.say(&at, Verdict::Mapped, format!("{v} -> [cluster] name"));
                }
                "stonith-enabled" => im.say(
                    &at,
                    Verdict::Changed,
                    format!(
                        "{v}: Tandem fences a silent node whenever a [[fence_device]] lists it"
                    ),
                ),
                "no-quorum-policy" => im.say(
                    &at,
                    Verdict::Changed,
                    format!("{v}: without quorum Tandem stops everything (leases end)"),
                ),
                "dc-version" | "cluster-infrastructure" | "have-watchdog" | "last-lrm-refresh" => {
                    im.say(
                        &at,
                        Verdict::NotNeeded,
                        format!("{v}: Pacemaker's own record"),
                    )
                }
                "default-resource-stickiness" => default_stickiness = score(&v),
                _ => im.say(&at, Verdict::NotMapped, format!("{v}: not imported")),
            }
        }
    }
    if let Some(d) = conf.child("rsc_defaults") {
        for (k, v) in d.nvpairs("meta_attributes") {
            if k == "resource-stickiness" {
                default_stickiness = score(&v);
                im.say(
                    "rsc_defaults",
                    Verdict::Mapped,
                    format!("{k}={v} -> failback of every group without its own"),
                );
            } else {
                im.say(
                    "rsc_defaults",
                    Verdict::NotMapped,
                    format!("{k}={v}: not imported"),
                );
            }
        }
    }
    // Nodes: the CIB's, with Corosync's addresses.
    let mut nodes: Vec<String> = conf
        .child("nodes")
        .map(|n| {
            n.all("node")
                .filter_map(|x| x.attr("uname").map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    for (n, _) in &cs.nodes {
        if !nodes.contains(n) {
            nodes.push(n.clone());
        }
    }
    if nodes.len() < 2 {
        return Err(ImportError::Input {
            source_at: "CIB".into(),
            what: format!("{} node(s) in <nodes> and Corosync's nodelist", nodes.len()),
            fix: "give a CIB of a running cluster (`cibadmin -Q`) and --corosync /etc/corosync/corosync.conf".into(),
        });
    }
    let rings = cs
        .nodes
        .iter()
        .map(|(_, r)| r.len())
        .max()
        .unwrap_or(0)
        .max(
            facts
                .addresses
                .iter()
                .filter_map(|a| a.interface.strip_prefix("ring")?.parse::<usize>().ok())
                .map(|r| r + 1)
                .max()
                .unwrap_or(0),
        );
    if rings == 0 {
        return Err(ImportError::Input {
            source_at: "corosync.conf".into(),
            what: "no node addresses: the CIB has none".into(),
            fix: "give --corosync /etc/corosync/corosync.conf, or --address NODE:ring0=IP for each node".into(),
        });
    }
    let mut addr: BTreeMap<(String, usize), (Ipv4Addr, Option<u8>)> = BTreeMap::new();
    for (n, r) in &cs.nodes {
        for (i, a) in r.iter().enumerate() {
            if let Some(ip) = a {
                addr.insert((n.clone(), i), (*ip, None));
            }
        }
    }
    for a in &facts.addresses {
        let Some(r) = a
            .interface
            .strip_prefix("ring")
            .and_then(|r| r.parse::<usize>().ok())
        else {
            return Err(ImportError::Input {
                source_at: "--address".into(),
                what: format!(
                    "{}:{}: the links are ring0, ring1, ...",
                    a.node, a.interface
                ),
                fix: "write --address NODE:ring0=IP".into(),
            });
        };
        addr.insert((a.node.clone(), r), (a.ip, a.prefix));
    }
    let mut missing = Vec::new();
    for n in &nodes {
        for r in 0..rings {
            if !addr.contains_key(&(n.clone(), r)) {
                missing.push(format!("{n}:ring{r}"));
            }
        }
    }
    if !missing.is_empty() {
        return Err(ImportError::Input {
            source_at: "nodes".into(),
            what: format!("no address for {}", missing.join(", ")),
            fix: format!(
                "give --corosync corosync.conf, or --address {}=IP",
                missing[0]
            ),
        });
    }

    let mut t = String::new();
    t.push_str("# Imported from a Pacemaker CIB (and Corosync's node list) by\n");
    t.push_str("# `tandem import pacemaker`; its report says what became of every part.\n\n");
    let name = facts
        .cluster
        .clone()
        .or(cluster_name)
        .unwrap_or_else(|| "ha".into());
    t.push_str(&format!(
        "[cluster]\nname = {}\nkey_file = {}\n\n",
        quoted(&safe_name(&name)),
        quoted(&facts.key_file)
    ));
    if nodes.len() == 2 {
        t.push_str("[quorum]\ntwo_node = true\n\n");
    }
    // The floating addresses' subnets (IPaddr2's ip and cidr_netmask):
    // a ring whose every node address lies in one is on that subnet.
    let vip_nets: Vec<(Ipv4Addr, u8)> = conf
        .child("resources")
        .map(|r| {
            r.children
                .iter()
                .flat_map(|c| std::iter::once(c).chain(c.children.iter()))
                .filter(|p| {
                    p.name == "primitive" && matches!(p.attr("type"), Some("IPaddr2" | "IPaddr"))
                })
                .filter_map(|p| {
                    let params = p.nvpairs("instance_attributes");
                    let ip = params.iter().find(|(k, _)| k == "ip")?.1.parse().ok()?;
                    let pre = params
                        .iter()
                        .find(|(k, _)| k == "cidr_netmask")?
                        .1
                        .parse()
                        .ok()
                        .filter(|p: &u8| *p <= 32)?;
                    Some((ip, pre))
                })
                .collect()
        })
        .unwrap_or_default();
    for r in 0..rings {
        t.push_str(&format!("[[link]]\nname = \"ring{r}\"\n"));
        let given = nodes.iter().find_map(|n| {
            let (ip, p) = addr.get(&(n.clone(), r))?;
            Some((*ip, (*p).filter(|p| *p <= 32)?))
        });
        let from_vip = || {
            vip_nets.iter().copied().find(|(vip, p)| {
                nodes.iter().all(|n| {
                    addr.get(&(n.clone(), r))
                        .is_some_and(|(ip, _)| super::network(*ip, *p) == super::network(*vip, *p))
                })
            })
        };
        if let Some((ip, p)) = given.or_else(from_vip) {
            t.push_str(&format!("subnet = \"{}/{p}\"\n", super::network(ip, p)));
        }
        t.push('\n');
    }
    for n in &nodes {
        let a: Vec<String> = (0..rings)
            .filter_map(|r| {
                addr.get(&(n.clone(), r))
                    .map(|(ip, _)| format!("ring{r} = \"{ip}\""))
            })
            .collect();
        t.push_str(&format!(
            "[[node]]\nname = {}\naddresses = {{ {} }}\n\n",
            quoted(&safe_name(n)),
            a.join(", ")
        ));
    }

    // Fencing: stonith primitives and the topology's levels.
    let empty = Elem::default();
    let resources = conf.child("resources").unwrap_or(&empty);
    let mut levels: BTreeMap<String, u8> = BTreeMap::new();
    if let Some(top) = conf.child("fencing-topology") {
        for l in top.all("fencing-level") {
            let index = l
                .attr("index")
                .and_then(|i| i.parse::<u8>().ok())
                .unwrap_or(1);
            for d in l.attr("devices").unwrap_or("").split(',') {
                let e = levels.entry(d.to_string()).or_insert(index);
                *e = (*e).min(index);
            }
            im.say(
                &format!("fencing-level {}", l.attr("id").unwrap_or("")),
                Verdict::Changed,
                format!("target {} index {index}: devices {} -> their level (Tandem's levels are per device)", l.attr("target").unwrap_or("?"), l.attr("devices").unwrap_or("")),
            );
        }
    }
    for p in resources
        .all("primitive")
        .filter(|p| p.attr("class") == Some("stonith"))
    {
        let id = p.attr("id").unwrap_or("");
        let ty = p.attr("type").unwrap_or("");
        let at = format!("primitive {id}");
        let params = p.nvpairs("instance_attributes");
        let mut hosts: Vec<(String, String)> = Vec::new();
        let mut options: Vec<(String, String)> = Vec::new();
        for (k, v) in &params {
            match k.as_str() {
                "pcmk_host_list" => hosts.extend(
                    v.split([' ', ','])
                        .filter(|h| !h.is_empty())
                        .map(|h| (h.to_string(), h.to_string())),
                ),
                "pcmk_host_map" => hosts.extend(v.split([';', ' ']).filter_map(|m| {
                    let (h, port) = m.split_once(':')?;
                    Some((h.to_string(), port.to_string()))
                })),
                k if k.starts_with("pcmk_") => im.say(
                    &at,
                    Verdict::NotMapped,
                    format!("{k}: Pacemaker's own fencing setting"),
                ),
                "action" | "plug" | "port" | "nodename" => {
                    im.say(&at, Verdict::NotNeeded, format!("{k}: Tandem sets it"))
                }
                _ => options.push((k.clone(), v.clone())),
            }
        }
        if hosts.is_empty() {
            im.say(&at, Verdict::NotMapped, format!("stonith:{ty} lists no host (pcmk_host_list or pcmk_host_map): write its `hosts` by hand"));
            continue;
        }
        let hosts_toml: Vec<String> = hosts
            .iter()
            .map(|(h, p)| format!("{} = {}", quoted(&safe_name(h)), quoted(p)))
            .collect();
        let opts: Vec<String> = options
            .iter()
            .map(|(k, v)| format!("{} = {}", quoted(k), quoted(v)))
            .collect();
        t.push_str(&format!(
            "[[fence_device]]\nname = {}\nagent = {}\n",
            quoted(&safe_name(id)),
            quoted(&format!("/usr/sbin/{ty}"))
        ));
        if let Some(l) = levels.get(id) {
            t.push_str(&format!("level = {l}\n"));
        }
        t.push_str(&format!("hosts = {{ {} }}\n", hosts_toml.join(", ")));
        if !opts.is_empty() {
            t.push_str(&format!("options = {{ {} }}\n", opts.join(", ")));
        }
        t.push('\n');
        let keys: Vec<&str> = options.iter().map(|(k, _)| k.as_str()).collect();
        if keys.iter().any(|k| k.contains("passw")) {
            im.say(&at, Verdict::Changed, "its password is written into the configuration as the CIB held it: keep the file 0600, or use `password_script`".into());
        }
        im.say(
            &at,
            Verdict::Mapped,
            format!(
                "stonith:{ty} -> [[fence_device]] /usr/sbin/{ty} for {}, options {}",
                hosts
                    .iter()
                    .map(|h| h.0.as_str())
                    .collect::<Vec<_>>()
                    .join(", "),
                keys.join(", ")
            ),
        );
    }

    // Groups: Pacemaker's groups, and each other primitive alone.
    let mut groups: Vec<(String, Vec<Prim>, Prim)> = Vec::new();
    for el in &resources.children {
        match el.name.as_str() {
            "group" => {
                let gid = el.attr("id").unwrap_or("").to_string();
                let mut members = Vec::new();
                for p in el.all("primitive") {
                    if let Some(pr) = primitive(&mut im, p) {
                        members.push(pr);
                    }
                }
                let mut gmeta = Prim { id: gid.clone(), fields: Vec::new(), timeout_ms: None, on_fail: None, migration_threshold: None, failure_expiry_ms: None, stickiness: None };
                meta_attributes(&mut im, &format!("group {gid}"), &el.nvpairs("meta_attributes"), &mut gmeta);
                im.say(&format!("group {gid}"), Verdict::Mapped, format!("-> [[group]] {} of {} resource(s), in order", safe_name(&gid), members.len()));
                groups.push((gid, members, gmeta));
            }
            "primitive" if el.attr("class") != Some("stonith") => {
                if let Some(pr) = primitive(&mut im, el) {
                    let gid = pr.id.clone();
                    let gmeta = Prim { id: gid.clone(), fields: Vec::new(), timeout_ms: None, on_fail: None, migration_threshold: None, failure_expiry_ms: None, stickiness: None };
                    im.say(&format!("primitive {gid}"), Verdict::Mapped, format!("-> [[group]] {} of its own", safe_name(&gid)));
                    groups.push((gid, vec![pr], gmeta));
                }
            }
            "primitive" => {}
            "clone" | "master" | "bundle" => im.say(
                &format!("{} {}", el.name, el.attr("id").unwrap_or("")),
                Verdict::NotMapped,
                format!("{}: copies on several nodes (clones, promotable clones, bundles) do not exist in Tandem yet", el.name),
            ),
            "template" | "tag" => im.say(&format!("{} {}", el.name, el.attr("id").unwrap_or("")), Verdict::NotMapped, "not imported".into()),
            _ => {}
        }
    }
    // Constraints.
    let mut prefs: BTreeMap<String, Vec<(String, i64)>> = BTreeMap::new();
    let group_of = |id: &str| -> Option<String> {
        groups
            .iter()
            .find(|(g, m, _)| g == id || (m.len() == 1 && m[0].id == id))
            .map(|(g, _, _)| g.clone())
    };
    if let Some(cons) = conf.child("constraints") {
        for c in &cons.children {
            let cid = c.attr("id").unwrap_or("");
            let at = format!("{} {cid}", c.name);
            match c.name.as_str() {
                "rsc_location" => {
                    let rsc = c.attr("rsc").unwrap_or("");
                    let (Some(node), Some(sc)) = (c.attr("node"), c.attr("score").and_then(score)) else {
                        im.say(&at, Verdict::NotMapped, "a location with rules or a pattern: write `preferred` by hand".into());
                        continue;
                    };
                    if resources.all("primitive").any(|p| p.attr("id") == Some(rsc) && p.attr("class") == Some("stonith")) {
                        im.say(&at, Verdict::NotNeeded, format!("{rsc} on {node} ({sc}): Tandem's leader runs fence devices"));
                        continue;
                    }
                    match group_of(rsc) {
                        Some(g) => {
                            prefs.entry(g.clone()).or_default().push((node.to_string(), sc));
                            let how = if sc <= -INFINITY { "left out of its preferred nodes" } else { "its place in the preferred order" };
                            im.say(&at, Verdict::Mapped, format!("{rsc} on {node} score {} -> {g}: {node} {how}", c.attr("score").unwrap_or("")));
                        }
                        None => im.say(&at, Verdict::NotMapped, format!("{rsc} is inside a group: Tandem places whole groups")),
                    }
                }
                "rsc_colocation" => {
                    let (rsc, with) = (c.attr("rsc").unwrap_or(""), c.attr("with-rsc").unwrap_or(""));
                    let sc = c.attr("score").and_then(score).unwrap_or(0);
                    match (group_of(rsc), group_of(with)) {
                        (Some(a), Some(b)) if sc >= INFINITY => im.say(
                            &at,
                            Verdict::NotMapped,
                            format!("{rsc} with {with} INFINITY: Tandem places whole groups one by one in this version: move {a}'s resources to the end of {b} to keep them together"),
                        ),
                        _ => im.say(&at, Verdict::NotMapped, format!("{rsc} with {with} score {}: Tandem places groups one by one: put them in one group", c.attr("score").unwrap_or(""))),
                    }
                }
                "rsc_order" => im.say(
                    &at,
                    Verdict::NotMapped,
                    format!("{} then {}: Tandem orders resources within a group: put both in one group, in this order", c.attr("first").unwrap_or(""), c.attr("then").unwrap_or("")),
                ),
                other => im.say(&at, Verdict::NotMapped, format!("{other}: not imported")),
            }
        }
    }
    for (gid, members, gmeta) in &groups {
        if members.is_empty() {
            continue;
        }
        // Preferred: by score, highest first; -INFINITY left out; nodes
        // without a score after those with one, in node order.
        let scores = prefs.get(gid).cloned().unwrap_or_default();
        let mut order: Vec<(String, i64)> = nodes
            .iter()
            .map(|n| {
                (
                    n.clone(),
                    scores
                        .iter()
                        .filter(|(m, _)| m == n)
                        .map(|(_, s)| *s)
                        .sum::<i64>(),
                )
            })
            .filter(|(_, s)| *s > -INFINITY)
            .collect();
        order.sort_by_key(|b| std::cmp::Reverse(b.1));
        let preferred: Vec<String> = order.iter().map(|(n, _)| safe_name(n)).collect();
        let stickiness = gmeta
            .stickiness
            .or_else(|| members.iter().find_map(|m| m.stickiness))
            .or(default_stickiness)
            .unwrap_or(0);
        // Pacemaker fails back when the preferred node's score beats the
        // stickiness the group's members add up to where they run.
        let lead = match (order.first(), order.get(1)) {
            (Some(a), Some(b)) => a.1.saturating_sub(b.1),
            _ => 0,
        };
        let held = stickiness.saturating_mul(i64::try_from(members.len()).unwrap_or(1));
        let failback = if lead > held { "auto" } else { "manual" };
        t.push_str(&format!(
            "[[group]]\nname = {}\npreferred = {}\nfailback = \"{failback}\"\n",
            quoted(&safe_name(gid)),
            quoted_list(&preferred)
        ));
        let mt = gmeta
            .migration_threshold
            .or_else(|| members.iter().filter_map(|m| m.migration_threshold).min());
        if let Some(m) = mt {
            t.push_str(&format!("migration_threshold = {m}\n"));
        }
        let fe = gmeta
            .failure_expiry_ms
            .or_else(|| members.iter().filter_map(|m| m.failure_expiry_ms).min());
        if let Some(f) = fe {
            t.push_str(&format!("failure_expiry_ms = {f}\n"));
        }
        t.push('\n');
        for m in members {
            t.push_str(&format!(
                "[[group.resource]]\nname = {}\n",
                quoted(&safe_name(&m.id))
            ));
            for f in &m.fields {
                t.push_str(f);
                t.push('\n');
            }
            if let Some(to) = m.timeout_ms {
                t.push_str(&format!("timeout_ms = {to}\n"));
            }
            if let Some(of) = m.on_fail {
                t.push_str(&format!("on_fail = \"{of}\"\n"));
            }
            t.push('\n');
        }
    }
    if cs.two_node && nodes.len() != 2 {
        im.say(
            "corosync.conf",
            Verdict::NotMapped,
            "two_node with other than two nodes".into(),
        );
    }
    Ok(Imported::new(&t, im))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scores_read_as_pacemaker_writes_them() {
        assert_eq!(score("INFINITY"), Some(INFINITY));
        assert_eq!(score("-INFINITY"), Some(-INFINITY));
        assert_eq!(score("100"), Some(100));
        assert_eq!(score("99999999999"), Some(INFINITY));
        assert_eq!(score("x"), None);
    }

    #[test]
    fn what_is_not_a_cib_is_refused() {
        let f = Facts::default();
        assert!(import("<html/>", None, &f)
            .unwrap_err()
            .to_string()
            .contains("no <cib>"));
        let e = import("<cib><configuration>", None, &f)
            .unwrap_err()
            .to_string();
        assert!(e.contains("cut short"), "{e}");
        let deep = format!("<cib>{}", "<a>".repeat(100));
        assert!(import(&deep, None, &f)
            .unwrap_err()
            .to_string()
            .contains("deeper"));
        let e = import(
            "<cib><configuration><nodes/></configuration></cib>",
            None,
            &f,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("--corosync"), "{e}");
    }
}
