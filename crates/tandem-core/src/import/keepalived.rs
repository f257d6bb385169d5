//! `tandem import keepalived FILE...`: every node's `keepalived.conf`
//! (its VRRP side) as one Tandem configuration.
//!
//! | keepalived | Tandem |
//! |---|---|
//! | one file per node, `router_id` | a `[[node]]` named by it (else `node1`, ...) |
//! | `unicast_src_ip` (or `--address`) on the instance's `interface` | the node's address on the `[[link]]` named for the interface |
//! | `vrrp_instance` (or a `vrrp_sync_group` of them) | a `[[group]]` |
//! | `virtual_ipaddress` entries | `ip` resources on the instance's interface (or `dev`); no prefix: /32, as keepalived |
//! | `priority` in each file | the group's `preferred` order, highest first |
//! | `nopreempt` / preemption (default), `preempt_delay` | `failback = "manual"` / `"auto"` |
//! | `track_script` (`vrrp_script`: `script`, `interval`, `timeout`, `fall`) | an `exec` group monitor, `on_fail = "move"` |
//! | `track_interface` | an `exec` group monitor on the interface's operstate, `on_fail = "move"` |
//! | `notify_master`/`_backup`/`_fault`/`notify` | an `[[alert]]` running the script (with Pacemaker's variables, not keepalived's arguments) |
//!
//! Reported, not mapped: `virtual_server` (load balancing does not exist
//! yet), `static_*`/`virtual_routes`/`virtual_rules`, `include`, the SMTP
//! settings (an `[[alert]]` with `alert_smtp.sh.sample`). `auth_pass` is
//! never reused; `advert_int` gives way to Tandem's heartbeats.

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use super::blocks::{parse, Item};
use super::{quoted, quoted_list, safe_name, Address, ImportError, Imported, ReportLine, Verdict};

/// What the caller knows besides the files.
#[derive(Debug, Clone, Default)]
pub struct Facts {
    /// The cluster's name.
    pub cluster: String,
    /// The key file the configuration names.
    pub key_file: String,
    /// Addresses the files do not hold (no `unicast_src_ip`).
    pub addresses: Vec<Address>,
}

/// One node's file, read.
struct NodeFile {
    file: String,
    router_id: Option<String>,
    items: Vec<Item>,
}

/// A VRRP instance as one node's file has it.
struct Instance<'a> {
    node: usize,
    item: &'a Item,
}

type Importer = super::Report;

/// What the top level of a file says that is not an instance.
fn top_level(im: &mut Importer, f: &NodeFile) {
    for it in &f.items {
        let (file, n) = (f.file.as_str(), it.line);
        match it.key.as_str() {
            "global_defs" => {
                for g in &it.block {
                    match g.key.as_str() {
                        "router_id" => im.say_at(file, g.line, Verdict::Mapped, format!("{} -> the node's name", g.all())),
                        "notification_email" | "notification_email_from" | "smtp_server" | "smtp_connect_timeout" => im.say_at(
                            file,
                            g.line,
                            Verdict::NotMapped,
                            format!("{}: mail on changes: add an [[alert]] running Pacemaker's alert_smtp.sh.sample", g.key),
                        ),
                        _ => im.say_at(file, g.line, Verdict::NotNeeded, format!("{}: keepalived's own setting", g.all())),
                    }
                }
            }
            "vrrp_instance" | "vrrp_sync_group" => {}
            "vrrp_script" => {
                for c in &it.block {
                    let (verdict, why) = match c.key.as_str() {
                        "script" | "interval" | "timeout" | "fall" => (Verdict::Mapped, "the exec monitor where it is tracked".to_string()),
                        "rise" => (Verdict::NotNeeded, "Tandem counts a check healthy again at its first success".to_string()),
                        "weight" => (Verdict::Changed, "a failing check moves the group; priorities are not weighed".to_string()),
                        "user" => (Verdict::NotMapped, "the check runs as the agent's user (root): wrap it in `runuser -u USER --`".to_string()),
                        _ => (Verdict::NotMapped, "not imported".to_string()),
                    };
                    im.say_at(file, c.line, verdict, format!("vrrp_script {}: {}: {why}", it.arg().unwrap_or(""), c.all()));
                }
            }
            "virtual_server" | "virtual_server_group" => im.say_at(
                file,
                n,
                Verdict::NotMapped,
                format!("{}: load balancing (LVS) does not exist in Tandem yet; keep running it beside Tandem, or use haproxy as a group's service", it.all()),
            ),
            "static_ipaddress" | "static_routes" | "static_rules" => im.say_at(
                file,
                n,
                Verdict::NotMapped,
                format!("{}: configure these with the system's network configuration", it.key),
            ),
            "include" => im.say_at(
                file,
                n,
                Verdict::NotMapped,
                format!("{}: give the included file's content to the importer too (it does not follow includes)", it.all()),
            ),
            _ => im.say_at(file, n, Verdict::NotMapped, format!("{}: a keyword this importer does not know", it.all())),
        }
    }
}

/// `addr[/prefix] [dev IF] [label L] [brd B] ...` of `virtual_ipaddress`.
fn vip(it: &Item, default_if: &str) -> Option<(Ipv4Addr, u8, String)> {
    let (ip, p) = match it.key.split_once('/') {
        Some((ip, p)) => (ip.parse().ok()?, p.parse().ok().filter(|p| *p <= 32)?),
        None => (it.key.parse().ok()?, 32),
    };
    let dev = it
        .args
        .iter()
        .position(|a| a == "dev")
        .and_then(|i| it.args.get(i + 1))
        .cloned()
        .unwrap_or_else(|| default_if.to_string());
    Some((ip, p, dev))
}

/// Imports every node's `keepalived.conf` (`files`: name, text).
pub fn import(files: &[(String, String)], facts: &Facts) -> Result<Imported, ImportError> {
    let mut im = Importer::default();
    let mut nodes: Vec<NodeFile> = Vec::new();
    for (name, text) in files {
        let items = parse(name, text)?;
        let router_id = items
            .iter()
            .find(|i| i.key == "global_defs")
            .and_then(|g| g.child("router_id"))
            .and_then(|r| r.arg().map(str::to_string));
        nodes.push(NodeFile {
            file: name.clone(),
            router_id,
            items,
        });
    }
    if nodes.len() < 2 {
        return Err(ImportError::Input {
            source_at: files.first().map_or_else(String::new, |f| f.0.clone()),
            what: format!("{} file(s): each node has its own keepalived.conf, and a cluster needs two or more", nodes.len()),
            fix: "give every node's file, e.g. tandem import keepalived lb1/keepalived.conf lb2/keepalived.conf".into(),
        });
    }
    // Node names: router_id where every file has its own.
    let ids: Vec<Option<String>> = nodes.iter().map(|n| n.router_id.clone()).collect();
    let unique = ids.iter().all(Option::is_some)
        && ids.iter().collect::<std::collections::BTreeSet<_>>().len() == ids.len();
    let names: Vec<String> = if unique {
        ids.iter()
            .map(|i| safe_name(i.as_deref().unwrap_or("")))
            .collect()
    } else {
        im.report.push(ReportLine {
            source: "router_id".into(),
            verdict: Verdict::Changed,
            text: format!("not one per file ({ids:?}): the nodes are node1, node2, ... in the order of the files"),
        });
        (1..=nodes.len()).map(|i| format!("node{i}")).collect()
    };
    for f in &nodes {
        top_level(&mut im, f);
    }
    // Instances by name, per node.
    let mut instances: BTreeMap<String, Vec<Instance<'_>>> = BTreeMap::new();
    let mut order: Vec<String> = Vec::new();
    let mut scripts: BTreeMap<(usize, String), &Item> = BTreeMap::new();
    let mut sync: Vec<(String, Vec<String>, &Item)> = Vec::new();
    for (k, f) in nodes.iter().enumerate() {
        for it in &f.items {
            match it.key.as_str() {
                "vrrp_instance" => {
                    let name = it.arg().unwrap_or("").to_string();
                    if !order.contains(&name) {
                        order.push(name.clone());
                    }
                    instances
                        .entry(name)
                        .or_default()
                        .push(Instance { node: k, item: it });
                }
                "vrrp_script" => {
                    scripts.insert((k, it.arg().unwrap_or("").to_string()), it);
                }
                "vrrp_sync_group" if k == 0 => {
                    let members = it
                        .child("group")
                        .map(|g| g.block.iter().map(|m| m.key.clone()).collect())
                        .unwrap_or_default();
                    sync.push((it.arg().unwrap_or("").to_string(), members, it));
                }
                _ => {}
            }
        }
    }
    if order.is_empty() {
        return Err(ImportError::Input {
            source_at: nodes[0].file.clone(),
            what: "no vrrp_instance: nothing for Tandem to keep available".into(),
            fix: "give the files with the vrrp_instance blocks".into(),
        });
    }
    // Links: the instances' interfaces, in order of first use.
    let mut links: Vec<String> = Vec::new();
    for name in &order {
        for inst in &instances[name] {
            if let Some(i) = inst.item.child("interface").and_then(Item::arg) {
                if !links.iter().any(|l| l == i) {
                    links.push(i.to_string());
                }
            }
        }
    }
    if links.is_empty() {
        return Err(ImportError::Input {
            source_at: nodes[0].file.clone(),
            what: "no vrrp_instance names an `interface`".into(),
            fix: "every vrrp_instance has `interface IF`".into(),
        });
    }
    // Each node's address on each link: unicast_src_ip of an instance on
    // it, else --address.
    let mut addr: BTreeMap<(usize, String), (Ipv4Addr, Option<u8>)> = BTreeMap::new();
    for name in &order {
        for inst in &instances[name] {
            let iface = inst
                .item
                .child("interface")
                .and_then(Item::arg)
                .unwrap_or("");
            if let Some(src) = inst
                .item
                .child("unicast_src_ip")
                .and_then(Item::arg)
                .and_then(|a| a.parse().ok())
            {
                addr.entry((inst.node, iface.to_string()))
                    .or_insert((src, None));
            }
        }
    }
    for a in &facts.addresses {
        let Some(k) = names.iter().position(|n| *n == a.node) else {
            return Err(ImportError::Input {
                source_at: "--address".into(),
                what: format!(
                    "`{}` is not a node (the nodes are {})",
                    a.node,
                    names.join(", ")
                ),
                fix: "name nodes by their router_id".into(),
            });
        };
        addr.insert((k, a.interface.clone()), (a.ip, a.prefix));
    }
    let mut missing = Vec::new();
    for (k, n) in names.iter().enumerate() {
        for l in &links {
            if !addr.contains_key(&(k, l.clone())) {
                missing.push(format!("{n}:{l}"));
            }
        }
    }
    if !missing.is_empty() {
        return Err(ImportError::Input {
            source_at: "keepalived.conf".into(),
            what: format!(
                "no address for {}: the files have no unicast_src_ip there",
                missing.join(", ")
            ),
            fix: format!(
                "add --address NODE:IFACE=IP[/PREFIX] for each, e.g. --address {}=192.0.2.1/24",
                missing[0]
            ),
        });
    }

    let mut t = super::head(
        "Imported from every node's keepalived.conf by `tandem import keepalived`",
        &facts.cluster,
        &facts.key_file,
    );
    if names.len() == 2 {
        t.push_str("# Two nodes, as VRRP ran them: the survivor acts alone (add a\n");
        t.push_str("# [[fence_device]] per node, or a witness instead, against split brain).\n");
        t.push_str("[quorum]\ntwo_node = true\n\n");
    }
    for l in &links {
        t.push_str(&format!("[[link]]\nname = {}\n", quoted(&safe_name(l))));
        let prefixed = (0..names.len()).find_map(|k| {
            let (ip, p) = addr.get(&(k, l.clone()))?;
            Some((*ip, (*p)?))
        });
        if let Some((ip, p)) = prefixed {
            t.push_str(&format!("subnet = \"{}/{p}\"\n", super::network(ip, p)));
        }
        t.push('\n');
    }
    for (k, n) in names.iter().enumerate() {
        let a: Vec<String> = links
            .iter()
            .filter_map(|l| {
                addr.get(&(k, l.clone()))
                    .map(|(ip, _)| format!("{} = \"{ip}\"", safe_name(l)))
            })
            .collect();
        t.push_str(&format!(
            "[[node]]\nname = {}\naddresses = {{ {} }}\n\n",
            quoted(n),
            a.join(", ")
        ));
    }

    // Groups: a sync group's instances together, every other instance
    // alone.
    let mut groups: Vec<(String, Vec<String>)> = Vec::new();
    for (name, members, it) in &sync {
        im.say_at(
            &nodes[0].file,
            it.line,
            Verdict::Mapped,
            format!(
                "vrrp_sync_group {name} -> one group of {}",
                members.join(", ")
            ),
        );
        groups.push((name.clone(), members.clone()));
    }
    for name in &order {
        if !groups.iter().any(|(_, m)| m.contains(name)) {
            groups.push((name.clone(), vec![name.clone()]));
        }
    }
    let mut alerts: Vec<(String, String)> = Vec::new();
    for (gname, members) in &groups {
        let mut prio: BTreeMap<usize, i64> = BTreeMap::new();
        let mut failback = "auto";
        let mut resources: Vec<String> = Vec::new();
        let mut monitors: Vec<String> = Vec::new();
        let mut used: Vec<String> = Vec::new();
        let mut seen_vips: Vec<(Ipv4Addr, u8)> = Vec::new();
        let unique = |base: String, used: &mut Vec<String>| super::unique(&base, used);
        for m in members {
            let Some(insts) = instances.get(m) else {
                continue;
            };
            for inst in insts {
                let file = nodes[inst.node].file.clone();
                let it = inst.item;
                let first = inst.node == insts[0].node;
                let p = it
                    .child("priority")
                    .and_then(Item::arg)
                    .and_then(|p| p.parse().ok())
                    .unwrap_or(100);
                *prio.entry(inst.node).or_default() += p;
                let iface = it
                    .child("interface")
                    .and_then(Item::arg)
                    .unwrap_or("")
                    .to_string();
                for c in &it.block {
                    let (n, all) = (c.line, c.all());
                    match c.key.as_str() {
                        "priority" => im.say_at(&file, n, Verdict::Mapped, format!("{all} -> {}'s place in {gname}'s preferred order", names[inst.node])),
                        "interface" | "unicast_src_ip" => im.say_at(&file, n, Verdict::Mapped, format!("{all} -> the link {} and the node's address on it", safe_name(&iface))),
                        "virtual_router_id" => im.say_at(&file, n, Verdict::NotNeeded, format!("{all}: VRRP's router id; Tandem's groups are known by name")),
                        "state" => im.say_at(&file, n, Verdict::Changed, format!("{all}: the first holder is the most preferred node that is up")),
                        "nopreempt" => {
                            failback = "manual";
                            im.say_at(&file, n, Verdict::Mapped, format!("{all} -> failback = \"manual\""));
                        }
                        "preempt_delay" => im.say_at(&file, n, Verdict::Changed, format!("{all}: the delay is not kept (failback happens at once when it is auto)")),
                        "advert_int" => im.say_at(&file, n, Verdict::Changed, format!("{all}: Tandem's heartbeats replace VRRP adverts (every 50 ms on every link by default)")),
                        "authentication" => im.say_at(&file, n, Verdict::Changed, format!("authentication: its password is not reused; every Tandem packet carries a BLAKE3 MAC under {}", facts.key_file)),
                        "unicast_peer" => im.say_at(&file, n, Verdict::Mapped, "unicast_peer -> the other nodes (heartbeats go to each peer's address)".into()),
                        "virtual_ipaddress" if first => {
                            for v in &c.block {
                                match vip(v, &iface) {
                                    Some((ip, p, _)) if seen_vips.contains(&(ip, p)) => {
                                        im.say_at(&file, v.line, Verdict::NotNeeded, format!("{}: {ip}/{p} is already listed", v.all()));
                                    }
                                    Some((ip, p, dev)) => {
                                        seen_vips.push((ip, p));
                                        let name = unique("vip".into(), &mut used);
                                        resources.push(format!(
                                            "[[group.resource]]\nname = {}\nkind = \"ip\"\naddress = \"{ip}/{p}\"\ninterfaces = {}\n",
                                            quoted(&name),
                                            quoted_list(&[dev.as_str()])
                                        ));
                                        let dropped = if v.args.iter().any(|a| a == "label") { " (its label is not kept)" } else { "" };
                                        im.say_at(&file, v.line, Verdict::Mapped, format!("{} -> ip resource {ip}/{p} on {dev}{dropped}", v.all()));
                                    }
                                    None => im.say_at(&file, v.line, Verdict::NotMapped, format!("{}: not an IPv4 address (IPv6 is not supported yet)", v.all())),
                                }
                            }
                        }
                        "track_script" if first => {
                            for s in &c.block {
                                let Some(script) = scripts.get(&(inst.node, s.key.clone())) else {
                                    im.say_at(&file, s.line, Verdict::NotMapped, format!("{}: no vrrp_script of that name", s.key));
                                    continue;
                                };
                                let cmd = script.child("script").and_then(Item::arg).unwrap_or("true").to_string();
                                let interval = script.child("interval").and_then(Item::arg).and_then(|v| v.parse::<u64>().ok()).unwrap_or(1).max(1);
                                let mut timeout = script.child("timeout").and_then(Item::arg).and_then(|v| v.parse::<u64>().ok());
                                if timeout.is_some_and(|to| to > interval) {
                                    im.say_at(&file, s.line, Verdict::Changed, format!("vrrp_script {}: timeout {} s is longer than its interval {interval} s: the check's timeout is the interval", s.key, timeout.unwrap_or(0)));
                                    timeout = Some(interval);
                                }
                                let fall = script.child("fall").and_then(Item::arg).and_then(|v| v.parse::<u32>().ok()).unwrap_or(1).max(1);
                                let name = unique(safe_name(&s.key), &mut used);
                                let mut m = format!(
                                    "[[group.monitor]]\nname = {}\nkind = \"exec\"\ncommand = {}\ninterval_ms = {}\nfailures = {fall}\non_fail = \"move\"\n",
                                    quoted(&name),
                                    quoted_list(&["/bin/sh", "-c", cmd.as_str()]),
                                    interval * 1000
                                );
                                if let Some(to) = timeout {
                                    m.push_str(&format!("timeout_ms = {}\n", to.max(1) * 1000));
                                }
                                monitors.push(m);
                                let weight = if s.args.is_empty() { script.child("weight").map(Item::all) } else { Some(s.all()) };
                                let how = match weight {
                                    Some(w) if !w.contains("weight 0") => format!(" ({w}: Tandem moves the group when the check fails, rather than weighing priorities)"),
                                    _ => String::new(),
                                };
                                im.say_at(&file, s.line, Verdict::Changed, format!("track_script {} -> exec monitor `{cmd}` every {interval} s, {fall} failure(s) then move{how}", s.key));
                            }
                        }
                        "track_interface" if first => {
                            for i in &c.block {
                                let name = unique(format!("if-{}", safe_name(&i.key)), &mut used);
                                let check = format!("grep -qx up /sys/class/net/{}/operstate", i.key);
                                monitors.push(format!(
                                    "[[group.monitor]]\nname = {}\nkind = \"exec\"\ncommand = {}\ninterval_ms = 1000\non_fail = \"move\"\n",
                                    quoted(&name),
                                    quoted_list(&["/bin/sh", "-c", check.as_str()])
                                ));
                                im.say_at(&file, i.line, Verdict::Changed, format!("track_interface {} -> exec monitor of its operstate, then move (weights are not kept)", i.all()));
                            }
                        }
                        "notify_master" | "notify_backup" | "notify_fault" | "notify_stop" | "notify" if first => {
                            let prog = c.arg().and_then(|a| a.split_whitespace().next()).unwrap_or("").to_string();
                            if !alerts.iter().any(|(_, p)| *p == prog) {
                                alerts.push((format!("{}-notify", safe_name(gname)), prog.clone()));
                            }
                            im.say_at(&file, n, Verdict::Changed, format!("{all} -> [[alert]] running {prog} with Pacemaker's CRM_alert_* variables (not keepalived's arguments: adapt the script)"));
                        }
                        "virtual_ipaddress" | "track_script" | "track_interface" | "notify_master" | "notify_backup" | "notify_fault" | "notify_stop" | "notify" => {
                            im.say_at(&file, n, Verdict::Mapped, format!("{}: as on {}", c.key, names[insts[0].node]));
                        }
                        "virtual_ipaddress_excluded" | "virtual_routes" | "virtual_rules" => im.say_at(&file, n, Verdict::NotMapped, format!("{}: not supported; configure them in the group's service", c.key)),
                        "smtp_alert" => im.say_at(&file, n, Verdict::NotMapped, "smtp_alert: add an [[alert]] running Pacemaker's alert_smtp.sh.sample".into()),
                        _ => im.say_at(&file, n, Verdict::NotNeeded, format!("{all}: VRRP's own setting")),
                    }
                }
            }
        }
        // The nodes' files must agree on what the group is: every
        // difference is said (the first file's addresses and checks are
        // used; any nopreempt makes failback manual).
        for m in members {
            let Some(insts) = instances.get(m) else {
                continue;
            };
            let set = |it: &Item, key: &str| -> Vec<String> {
                let mut v: Vec<String> = it
                    .child(key)
                    .map(|c| c.block.iter().map(|x| x.key.clone()).collect())
                    .unwrap_or_default();
                v.sort();
                v
            };
            let first = &insts[0];
            for other in &insts[1..] {
                for key in ["virtual_ipaddress", "track_script", "track_interface"] {
                    let (a, b) = (set(first.item, key), set(other.item, key));
                    if a != b {
                        im.say_at(
                            &nodes[other.node].file,
                            other.item.line,
                            Verdict::NotMapped,
                            format!("{m}: {key} differs from {}'s ({} here, {} there): only {}'s is used; make the files agree", names[first.node], b.join(" "), a.join(" "), names[first.node]),
                        );
                    }
                }
                let np = |it: &Item| it.child("nopreempt").is_some();
                if np(first.item) != np(other.item) {
                    im.say_at(
                        &nodes[other.node].file,
                        other.item.line,
                        Verdict::Changed,
                        format!("{m}: nopreempt on {} but not on {}: failback = \"manual\" for the group", if np(first.item) { &names[first.node] } else { &names[other.node] }, if np(first.item) { &names[other.node] } else { &names[first.node] }),
                    );
                }
            }
        }
        if resources.is_empty() {
            im.report.push(ReportLine {
                source: gname.clone(),
                verdict: Verdict::NotMapped,
                text: "no IPv4 virtual address: no group".into(),
            });
            continue;
        }
        let mut preferred: Vec<(usize, i64)> = prio.into_iter().collect();
        preferred.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        let mut pref: Vec<String> = preferred.iter().map(|(k, _)| names[*k].clone()).collect();
        for n in &names {
            if !pref.contains(n) {
                pref.push(n.clone());
            }
        }
        t.push_str(&format!(
            "[[group]]\nname = {}\npreferred = {}\nfailback = \"{failback}\"\n\n",
            quoted(&safe_name(gname)),
            quoted_list(&pref)
        ));
        for r in &resources {
            t.push_str(r);
            t.push('\n');
        }
        for m in &monitors {
            t.push_str(m);
            t.push('\n');
        }
    }
    for (name, prog) in &alerts {
        if prog.starts_with('/') {
            t.push_str(&format!(
                "[[alert]]\nname = {}\npath = {}\nkinds = [\"resource\"]\n\n",
                quoted(name),
                quoted(prog)
            ));
        } else {
            im.report.push(ReportLine {
                source: name.clone(),
                verdict: Verdict::NotMapped,
                text: format!("`{prog}` is not an absolute path: write the [[alert]] by hand"),
            });
        }
    }
    Ok(Imported::new(&t, im))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// From a new user's trial: lb2's different address was dropped
    /// without a word, and a timeout longer than the interval made an
    /// invalid configuration.
    #[test]
    fn files_that_disagree_are_reported_and_a_long_timeout_is_the_interval() {
        let file = |id: &str, src: &str, vip: &str, extra: &str| {
            format!(
                "global_defs {{\n router_id {id}\n}}\nvrrp_script chk {{\n script \"true\"\n interval 2\n timeout 3\n}}\nvrrp_instance V {{\n interface eth0\n priority 100\n unicast_src_ip {src}\n {extra}\n virtual_ipaddress {{\n  {vip}/24\n }}\n track_script {{\n  chk\n }}\n}}\n"
            )
        };
        let files = vec![
            (
                "a.conf".to_string(),
                file("a", "10.0.0.1", "10.0.0.100", "nopreempt"),
            ),
            (
                "b.conf".to_string(),
                file("b", "10.0.0.2", "10.0.0.101", ""),
            ),
        ];
        let i = import(&files, &Facts::default()).unwrap();
        let said = |verdict: Verdict, words: &[&str]| {
            i.report
                .iter()
                .any(|r| r.verdict == verdict && words.iter().all(|w| r.text.contains(w)))
        };
        assert!(
            said(
                Verdict::NotMapped,
                &["virtual_ipaddress differs", "10.0.0.101"]
            ),
            "{:#?}",
            i.report
        );
        assert!(
            said(Verdict::Changed, &["nopreempt on a but not on b"]),
            "{:#?}",
            i.report
        );
        assert!(said(
            Verdict::Changed,
            &["timeout 3 s is longer than its interval 2 s"]
        ));
        assert!(
            i.config.contains("timeout_ms = 2000") && i.config.contains("failback = \"manual\""),
            "{}",
            i.config
        );
        assert!(!i.config.contains("10.0.0.101"));
    }

    #[test]
    fn one_file_is_not_a_cluster() {
        let e = import(
            &[("k.conf".into(), "vrrp_instance V { }\n".into())],
            &Facts::default(),
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("every node's file"), "{e}");
    }
}
