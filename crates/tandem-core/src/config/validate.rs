//! Every rule a configuration must follow, checked in one pass so the operator
//! sees all problems at once. Each check pushes a located [`Diagnostic`] with a
//! fix; none stops the others.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::ops::Range;
use std::path::{Path, PathBuf};

use serde_spanned::Spanned;

use super::help::{closest, serde_diagnostic, unknown_ref};
use super::model::*;
use super::schema::{ConfigFile, Group, Monitor, Resource};
use super::{resolve_path, KeyFileFacts, Loaded, KEY_LEN};
use crate::diagnostic::Diagnostic;
use crate::kinds::{Context, Fields, Params, KINDS};
use crate::quorum::MAX_VOTERS;

/// Monitor kinds allowed inside a group.
pub const IMPLEMENTED_GROUP_MONITORS: &[&str] = &["process", "tcp", "http", "exec"];

/// Largest number of nodes a cluster may have.
const MAX_NODES: usize = 64;

/// What `file` says, as the model: every default applied. Called once
/// validation found no error (so every reference resolves).
fn model(file: ConfigFile, base_dir: &Path, checked: Checked) -> Config {
    let get = |v: &Option<Spanned<u64>>, d: u64| v.as_ref().map_or(d, |v| *v.get_ref());
    let cluster = ClusterSpec {
        name: file.cluster.name.get_ref().clone(),
        key_file: file.cluster.key_file.get_ref().clone(),
        previous_key_file: file.cluster.previous_key_file.map(Spanned::into_inner),
        state_dir: file
            .cluster
            .state_dir
            .map_or_else(|| PathBuf::from(DEFAULT_STATE_DIR), Spanned::into_inner),
        control_socket: file.cluster.control_socket.map_or_else(
            || PathBuf::from(DEFAULT_CONTROL_SOCKET),
            Spanned::into_inner,
        ),
        control_group: file.cluster.control_group.map(Spanned::into_inner),
    };
    let two_node = file.quorum.two_node.as_ref().is_some_and(|t| *t.get_ref());
    let quorum = QuorumSpec {
        witness: file.quorum.witness.as_ref().map(|w| *w.get_ref()),
        two_node,
        wait_for_all: file
            .quorum
            .wait_for_all
            .as_ref()
            .map_or(two_node, |w| *w.get_ref()),
    };
    let links = file
        .links
        .iter()
        .map(|l| LinkSpec {
            name: l.name.get_ref().clone(),
            subnet: l.subnet.as_ref().map(|s| *s.get_ref()),
            port: l
                .port
                .as_ref()
                .map_or(DEFAULT_HEARTBEAT_PORT, |p| *p.get_ref()),
        })
        .collect();
    let nodes = file
        .nodes
        .iter()
        .map(|n| NodeSpec {
            name: n.name.get_ref().clone(),
            addresses: n
                .addresses
                .get_ref()
                .iter()
                .map(|(l, a)| (l.get_ref().clone(), *a.get_ref()))
                .collect(),
        })
        .collect();
    let fence_devices = file
        .fence_devices
        .iter()
        .map(|d| FenceDeviceSpec {
            name: d.name.get_ref().clone(),
            agent: d.agent.get_ref().clone(),
            level: d.level.as_ref().map_or(1, |l| *l.get_ref()),
            timeout_ms: get(&d.timeout_ms, DEFAULT_FENCE_TIMEOUT_MS),
            retries: d
                .retries
                .as_ref()
                .map_or(DEFAULT_FENCE_RETRIES, |v| *v.get_ref()),
            delay_ms: get(&d.delay_ms, 0),
            hosts: d
                .hosts
                .get_ref()
                .iter()
                .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
                .collect(),
            options: d
                .options
                .iter()
                .map(|(k, v)| (k.get_ref().clone(), v.get_ref().clone()))
                .collect(),
        })
        .collect();
    let groups = file
        .groups
        .iter()
        .zip(checked.resources)
        .zip(checked.group_monitors)
        .map(|((g, resources), monitors)| GroupSpec {
            name: g.name.get_ref().clone(),
            preferred: g.preferred.iter().map(|p| p.get_ref().clone()).collect(),
            failback: g
                .failback
                .as_ref()
                .map_or(Failback::Manual, |f| *f.get_ref()),
            migration_threshold: g
                .migration_threshold
                .as_ref()
                .map_or(DEFAULT_MIGRATION_THRESHOLD, |t| *t.get_ref())
                .max(1),
            failure_expiry_ms: get(&g.failure_expiry_ms, DEFAULT_FAILURE_EXPIRY_MS),
            resources,
            monitors,
        })
        .collect();
    let volumes = file
        .volumes
        .iter()
        .map(|v| {
            let name = v.name.get_ref().clone();
            VolumeSpec {
                nodes: v
                    .nodes
                    .get_ref()
                    .iter()
                    .map(|n| n.get_ref().clone())
                    .collect(),
                size: *v.size.get_ref(),
                backing: v.backing.get_ref().clone(),
                protocol: v.protocol.as_ref().map_or(Protocol::C, |p| *p.get_ref()),
                link: v
                    .link
                    .as_ref()
                    .map_or_else(|| DEFAULT_VOLUME_LINK.to_string(), |l| l.get_ref().clone()),
                port: v
                    .port
                    .as_ref()
                    .map_or(DEFAULT_VOLUME_PORT, |p| *p.get_ref()),
                nbd_socket: v.nbd_socket.as_ref().map(|p| p.get_ref().clone()),
                nbd_tcp: v.nbd_tcp.as_ref().map(|a| *a.get_ref()),
                nbd_tls: v.nbd_tls.as_ref().map(|d| d.get_ref().clone()),
                nbd_insecure: v.nbd_insecure.as_ref().is_some_and(|i| *i.get_ref()),
                resync_rate_mib_s: v
                    .resync_rate_mib_s
                    .as_ref()
                    .map_or(DEFAULT_RESYNC_RATE_MIB_S, |r| *r.get_ref()),
                split_brain: v
                    .split_brain
                    .as_ref()
                    .map_or(SplitBrainPolicy::Disconnect, |p| *p.get_ref()),
                congestion_control: v.congestion_control.as_ref().map_or_else(
                    || DEFAULT_CONGESTION_CONTROL.to_string(),
                    |c| c.get_ref().clone(),
                ),
                name,
            }
        })
        .collect();
    Config {
        base_dir: base_dir.to_path_buf(),
        cluster,
        timing: checked.timing,
        quorum,
        links,
        nodes,
        fence_devices,
        groups,
        node_monitors: checked.node_monitors,
        volumes,
        watchdog: checked.watchdog,
        http: checked.http,
        alerts: checked.alerts,
    }
}

/// What the checks built on their way: the typed pieces of the model.
struct Checked {
    timing: Timing,
    resources: Vec<Vec<ResourceSpec>>,
    group_monitors: Vec<Vec<MonitorSpec>>,
    node_monitors: Vec<MonitorSpec>,
    watchdog: Option<WatchdogSpec>,
    http: Option<HttpSpec>,
    alerts: Vec<AlertSpec>,
}

/// Monitor `m` with its defaults applied, checking `check`.
fn monitor_spec(m: &Monitor, check: MonitorCheck) -> MonitorSpec {
    let default_interval = match check {
        MonitorCheck::Ping { .. } => DEFAULT_PING_INTERVAL_MS,
        _ => DEFAULT_MONITOR_INTERVAL_MS,
    };
    let get = |v: &Option<Spanned<u64>>, d: u64| v.as_ref().map_or(d, |v| *v.get_ref());
    MonitorSpec {
        name: m.name.get_ref().clone(),
        interval_ms: get(&m.interval_ms, default_interval),
        timeout_ms: get(&m.timeout_ms, DEFAULT_MONITOR_TIMEOUT_MS),
        failures: m
            .failures
            .as_ref()
            .map_or(DEFAULT_MONITOR_FAILURES, |v| *v.get_ref())
            .max(1),
        on_fail: m.on_fail.as_ref().map_or(OnFail::Restart, |v| *v.get_ref()),
        restarts: m
            .restarts
            .as_ref()
            .map_or(DEFAULT_RESTARTS, |v| *v.get_ref()),
        check,
    }
}

fn span<T>(s: &Spanned<T>) -> Option<Range<usize>> {
    Some(s.span())
}

/// Collects diagnostics; the helpers keep each rule to one or two lines.
struct Checker<'a> {
    diags: Vec<Diagnostic>,
    base_dir: &'a Path,
}

impl Checker<'_> {
    fn error(&mut self, at: Option<Range<usize>>, msg: impl Into<String>, help: impl Into<String>) {
        self.diags.push(Diagnostic::error(at, msg).with_help(help));
    }

    fn warn(&mut self, at: Option<Range<usize>>, msg: impl Into<String>, help: impl Into<String>) {
        self.diags
            .push(Diagnostic::warning(at, msg).with_help(help));
    }

    /// Names are used in packets, status and file names: keep them plain.
    fn check_name(&mut self, what: &str, name: &Spanned<String>) {
        let n = name.get_ref();
        let ok = !n.is_empty()
            && n.len() <= 63
            && n.chars()
                .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
            && n.starts_with(|c: char| c.is_ascii_alphanumeric());
        if !ok {
            self.error(
                span(name),
                format!("{what} name `{n}` is not allowed"),
                "use 1 to 63 letters, digits, '-', '_' or '.', starting with a letter or digit",
            );
        }
    }

    /// Reports every name seen twice; returns the set of names.
    fn unique_names<'n>(
        &mut self,
        what: &str,
        names: impl Iterator<Item = &'n Spanned<String>>,
    ) -> BTreeSet<String> {
        let mut seen: BTreeMap<String, Range<usize>> = BTreeMap::new();
        for n in names {
            self.check_name(what, n);
            if seen.contains_key(n.get_ref()) {
                self.error(
                    span(n),
                    format!("duplicate {what} name `{}`", n.get_ref()),
                    format!(
                        "{what} names must be unique; rename or remove one of the two `{}`",
                        n.get_ref()
                    ),
                );
            } else {
                seen.insert(n.get_ref().clone(), n.span());
            }
        }
        seen.into_keys().collect()
    }

    fn unknown_ref(
        &mut self,
        what: &str,
        name: &Spanned<String>,
        known: &BTreeSet<String>,
        context: &str,
    ) {
        if let Some(d) = unknown_ref(what, name, known, context) {
            self.diags.push(d);
        }
    }

    fn positive(&mut self, what: &str, v: &Option<Spanned<u64>>) {
        if let Some(v) = v {
            if *v.get_ref() == 0 {
                self.error(
                    span(v),
                    format!("`{what}` must be greater than 0"),
                    format!("write a positive number of milliseconds for `{what}`"),
                );
            }
        }
    }
}

pub(super) fn validate(
    file: ConfigFile,
    base_dir: &Path,
    key_facts: &dyn Fn(&Path) -> KeyFileFacts,
) -> Loaded {
    let mut c = Checker {
        diags: Vec::new(),
        base_dir,
    };

    c.check_name("cluster", &file.cluster.name);
    check_key_file(&mut c, &file.cluster.key_file, key_facts);
    if let Some(prev) = &file.cluster.previous_key_file {
        check_key_file(&mut c, prev, key_facts);
    }

    let timing = check_timing(&mut c, &file);
    let links = c.unique_names("link", file.links.iter().map(|l| &l.name));
    let nodes = c.unique_names("node", file.nodes.iter().map(|n| &n.name));
    for n in &file.nodes {
        if n.name.get_ref() == "witness" {
            c.error(
                span(&n.name),
                "node name `witness` is reserved for the quorum witness",
                "rename the node",
            );
        }
    }
    check_links_and_nodes(&mut c, &file);
    check_quorum(&mut c, &file);
    let volumes = c.unique_names("volume", file.volumes.iter().map(|v| &v.name));
    check_fence_devices(&mut c, &file, &nodes);
    check_volumes(&mut c, &file, &nodes, &links);
    let node_monitors = check_node_monitors(&mut c, &file, &links);
    let groups = c.unique_names("group", file.groups.iter().map(|g| &g.name));
    let mut resources = Vec::new();
    let mut group_monitors = Vec::new();
    for g in &file.groups {
        let (r, m) = check_group(&mut c, &file, g, &nodes, &groups, &volumes);
        resources.push(r);
        group_monitors.push(m);
    }
    check_hosting(&mut c, &file, &resources);
    let watchdog = check_watchdog(&mut c, &file);
    let http = file.http.as_ref().map(|h| check_http(&mut c, h, &links));
    let alerts = check_alerts(&mut c, &file);
    check_protection(&mut c, &file, &resources, watchdog.as_ref());
    check_on_fail_fence(&mut c, &file, &resources);

    // Errors first, each in file order, then warnings.
    c.diags
        .sort_by_key(|d| (d.severity, d.span.as_ref().map_or(0, |s| s.start)));
    let has_errors = c.diags.iter().any(Diagnostic::is_error);
    let config = (!has_errors).then(|| {
        let checked = Checked {
            timing,
            resources,
            group_monitors,
            node_monitors,
            watchdog,
            http,
            alerts,
        };
        model(file, base_dir, checked)
    });
    Loaded {
        config,
        diagnostics: c.diags,
    }
}

/// A floating address on a node that neither a fence device nor a
/// required watchdog protects stays there if the node's agent and guard
/// are both killed (or the node hangs), while the group also starts
/// elsewhere: warn once, naming the groups and the nodes that can run
/// them.
fn check_protection(
    c: &mut Checker<'_>,
    file: &ConfigFile,
    resources: &[Vec<ResourceSpec>],
    watchdog: Option<&WatchdogSpec>,
) {
    if watchdog.and_then(WatchdogSpec::resets_within_ms).is_some() {
        return;
    }
    let mut groups = Vec::new();
    let mut bare: BTreeSet<&str> = BTreeSet::new();
    let mut first = None;
    for (g, rs) in file.groups.iter().zip(resources) {
        if !rs
            .iter()
            .any(|r| r.params.spec().floating_address().is_some())
        {
            continue;
        }
        let exposed = unfenced_hosts(file, rs);
        if exposed.is_empty() {
            continue;
        }
        first.get_or_insert(span(&g.name));
        groups.push(format!("`{}`", g.name.get_ref()));
        bare.extend(exposed);
    }
    let Some(at) = first else {
        return;
    };
    let bare: Vec<&str> = bare.into_iter().collect();
    c.warn(
        at,
        format!(
            "group{} {} {} a floating address that can run on {}, which no fence device lists, and no watchdog is required: if a node's agent and guard are both killed (or the node hangs), the address stays on it while the group starts on another node",
            if groups.len() == 1 { "" } else { "s" },
            groups.join(", "),
            if groups.len() == 1 { "has" } else { "have" },
            bare.join(", ")
        ),
        "add a `[[fence_device]]` that lists those nodes, or give every node a watchdog device and set `[watchdog] required = true` (a silent node's groups then start elsewhere once its lease, stop_grace_ms and twice timeout_s have passed)",
    );
}

/// The nodes that can run the group of resources `rs` and that no fence
/// device lists, in file order.
fn unfenced_hosts<'a>(file: &'a ConfigFile, rs: &[ResourceSpec]) -> Vec<&'a str> {
    let fenced: BTreeSet<&str> = file
        .fence_devices
        .iter()
        .flat_map(|d| d.hosts.get_ref().keys().map(|k| k.get_ref().as_str()))
        .collect();
    let conf = confinement(file, rs);
    file.nodes
        .iter()
        .map(|n| n.name.get_ref().as_str())
        .filter(|n| !fenced.contains(n))
        .filter(|n| conf.as_ref().map_or(true, |c| c.why_not(n).is_none()))
        .collect()
}

/// `on_fail = fence` on a resource or monitor of a group needs a fence
/// device for every node that can run the group: a failure there would
/// otherwise leave the group frozen on a node nothing can fence.
fn check_on_fail_fence(c: &mut Checker<'_>, file: &ConfigFile, resources: &[Vec<ResourceSpec>]) {
    for (g, rs) in file.groups.iter().zip(resources) {
        let at = g
            .resources
            .iter()
            .filter_map(|r| r.on_fail.as_ref())
            .chain(g.monitors.iter().filter_map(|m| m.on_fail.as_ref()))
            .find(|p| *p.get_ref() == OnFail::Fence);
        let Some(at) = at else {
            continue;
        };
        // A node named `witness` is refused on its own.
        let bare = unfenced_hosts(file, rs);
        if !bare.is_empty() {
            c.error(
                span(at),
                format!(
                    "group `{}` has on_fail = \"fence\", but no fence device lists {}: a failure there would leave the group frozen on a node nothing can fence",
                    g.name.get_ref(),
                    bare.join(", ")
                ),
                "add a `[[fence_device]]` that lists those nodes, or use on_fail = \"move\"",
            );
        }
    }
}

/// Who may reach a volume's TCP export: loopback, TLS with client
/// certificates, or (explicitly) anyone on the network.
fn check_nbd_export(c: &mut Checker<'_>, v: &super::schema::Volume) {
    let name = v.name.get_ref();
    let insecure = v.nbd_insecure.as_ref().filter(|i| *i.get_ref());
    if let Some(t) = &v.nbd_tls {
        if !t.get_ref().is_absolute() {
            c.error(
                span(t),
                format!(
                    "volume `{name}`: `nbd_tls` directory `{}` is not an absolute path",
                    t.get_ref().display()
                ),
                "write the full path, e.g. `nbd_tls = \"/etc/tandem/nbd-tls\"`",
            );
        }
        if v.nbd_tcp.is_none() {
            c.warn(
                span(t),
                format!("volume `{name}`: `nbd_tls` has no effect without `nbd_tcp`"),
                "add `nbd_tcp = \"ADDRESS:10809\"`, or remove `nbd_tls` (the Unix socket is root-only and needs no TLS)",
            );
        }
        if let Some(i) = insecure {
            c.error(
                span(i),
                format!(
                    "volume `{name}`: `nbd_insecure = true` and `nbd_tls` contradict each other"
                ),
                "remove `nbd_insecure`: with `nbd_tls`, the export is served only over TLS",
            );
        }
        return;
    }
    let Some(a) = &v.nbd_tcp else {
        return;
    };
    let addr = a.get_ref();
    if addr.ip().is_loopback() {
        return;
    }
    if insecure.is_none() {
        c.error(
            span(a),
            format!(
                "volume `{name}`: `nbd_tcp = \"{addr}\"` would export the volume to the network without authentication or encryption: anyone who can reach it could read and write it"
            ),
            "serve it over TLS with client certificates (`nbd_tls = \"/etc/tandem/nbd-tls\"`), bind a loopback address (`127.0.0.1:10809`), use `nbd_socket` (root only), or, on a network only trusted hosts reach, add `nbd_insecure = true`",
        );
    } else {
        c.warn(
            span(a),
            format!(
                "volume `{name}` is exported on {addr} without authentication or encryption (`nbd_insecure = true`): anyone who can reach it can read and write the volume"
            ),
            "serve it over TLS (`nbd_tls`), restrict who can reach that address (a dedicated VLAN, a firewall), or export on loopback or `nbd_socket` only",
        );
    }
}

fn check_watchdog(c: &mut Checker<'_>, file: &ConfigFile) -> Option<WatchdogSpec> {
    let w = &file.watchdog;
    let enabled = w.enabled.as_ref().map_or(true, |e| *e.get_ref());
    let required = w.required.as_ref().is_some_and(|r| *r.get_ref());
    if required && !enabled {
        c.error(
            w.required.as_ref().and_then(span),
            "the watchdog is both required and disabled",
            "remove `enabled = false`, or set `required = false`",
        );
    }
    if let Some(d) = &w.device {
        if !d.get_ref().is_absolute() {
            c.error(
                span(d),
                format!(
                    "watchdog device `{}` is not an absolute path",
                    d.get_ref().display()
                ),
                "write the full path, e.g. `device = \"/dev/watchdog\"`",
            );
        }
    }
    let timeout_s = w
        .timeout_s
        .as_ref()
        .map_or(DEFAULT_WATCHDOG_TIMEOUT_S, |t| *t.get_ref());
    if let Some(t) = &w.timeout_s {
        if !(1..=600).contains(t.get_ref()) {
            c.error(
                span(t),
                format!("watchdog timeout_s {} is out of range", t.get_ref()),
                "use 1 to 600 seconds; 5 (the default) resets a hung node quickly without false resets",
            );
        }
    }
    let stop_grace_ms = w
        .stop_grace_ms
        .as_ref()
        .map_or(DEFAULT_WATCHDOG_STOP_GRACE_MS, |g| *g.get_ref());
    enabled.then(|| WatchdogSpec {
        device: w.device.as_ref().map_or_else(
            || PathBuf::from(DEFAULT_WATCHDOG_DEVICE),
            |d| d.get_ref().clone(),
        ),
        timeout_s,
        stop_grace_ms,
        required,
    })
}

/// `[[alert]]`: names, programs, kinds and limits.
fn check_alerts(c: &mut Checker<'_>, file: &ConfigFile) -> Vec<AlertSpec> {
    c.unique_names("alert", file.alerts.iter().map(|a| &a.name));
    let mut out = Vec::new();
    for a in &file.alerts {
        let name = a.name.get_ref();
        if !a.path.get_ref().is_absolute() {
            c.error(
                span(&a.path),
                format!("alert `{name}`: path `{}` is not absolute", a.path.get_ref().display()),
                "write the program's full path, e.g. \"/usr/share/pacemaker/alerts/alert_file.sh.sample\"",
            );
        }
        let recipients: Vec<String> = a
            .recipients
            .as_ref()
            .map(|r| r.get_ref().iter().map(|x| x.get_ref().clone()).collect())
            .unwrap_or_default();
        if recipients.len() > MAX_ALERT_RECIPIENTS {
            c.error(
                a.recipients.as_ref().and_then(span),
                format!(
                    "alert `{name}` has {} recipients; at most {MAX_ALERT_RECIPIENTS}",
                    recipients.len()
                ),
                "let one recipient (a list, an address) fan out, or add another [[alert]]",
            );
        }
        if recipients.iter().any(|r| r.contains('\0')) {
            c.error(
                a.recipients.as_ref().and_then(span),
                format!("alert `{name}`: a recipient holds a NUL"),
                "remove it",
            );
        }
        let mut kinds = Vec::new();
        match &a.kinds {
            None => kinds.extend(AlertKind::ALL),
            Some(list) => {
                for k in list.get_ref() {
                    match AlertKind::ALL.iter().find(|x| x.word() == k.get_ref()) {
                        Some(x) if !kinds.contains(x) => kinds.push(*x),
                        Some(_) => {}
                        None => c.error(
                            span(k),
                            format!("alert `{name}`: no alert kind `{}`", k.get_ref()),
                            "the kinds are node, fencing and resource",
                        ),
                    }
                }
                kinds.sort();
            }
        }
        let timeout_ms = a
            .timeout_ms
            .as_ref()
            .map_or(DEFAULT_ALERT_TIMEOUT_MS, |t| *t.get_ref());
        if !(100..=600_000).contains(&timeout_ms) {
            c.error(
                a.timeout_ms.as_ref().and_then(span),
                format!("alert `{name}`: timeout_ms {timeout_ms} is out of range"),
                "use 100 to 600000 ms (default 30000)",
            );
        }
        let timestamp_format = a.timestamp_format.as_ref().map_or_else(
            || DEFAULT_ALERT_TIMESTAMP_FORMAT.to_string(),
            |f| f.get_ref().clone(),
        );
        if timestamp_format.len() > 256 {
            c.error(
                a.timestamp_format.as_ref().and_then(span),
                format!("alert `{name}`: timestamp_format is longer than 256 bytes"),
                "shorten it",
            );
        }
        out.push(AlertSpec {
            name: name.clone(),
            path: a.path.get_ref().clone(),
            recipients,
            kinds,
            timeout_ms,
            timestamp_format,
        });
    }
    out
}

/// `[http]`: where it listens, and off loopback TLS and a token, never
/// an open port on the network.
fn check_http(c: &mut Checker<'_>, h: &super::schema::Http, links: &BTreeSet<String>) -> HttpSpec {
    let listen = match &h.listen {
        None => HttpListen::Address(IpAddr::from([127, 0, 0, 1])),
        Some(l) => match l.get_ref().parse::<IpAddr>() {
            Ok(a) if a.is_loopback() || a.is_unspecified() => HttpListen::Address(a),
            Ok(a) => {
                c.error(
                    span(l),
                    format!("[http] listen = \"{a}\" is one machine's address, but the file is the same on every node"),
                    "write a link's name (listen = \"lan\": each node listens on its own address on that link), or 127.0.0.1",
                );
                HttpListen::Address(a)
            }
            Err(_) => {
                if let Some(mut d) = unknown_ref("link", l, links, "[http] listen") {
                    d.message = format!(
                        "[http] listen = \"{}\" is neither an address (127.0.0.1, ::1, 0.0.0.0) nor a link",
                        l.get_ref()
                    );
                    c.diags.push(d);
                }
                HttpListen::Link(l.get_ref().clone())
            }
        },
    };
    let port = h.port.as_ref().map_or(DEFAULT_HTTP_PORT, |p| *p.get_ref());
    if port == 0 {
        c.error(
            h.port.as_ref().and_then(span),
            "[http] port 0 is not a port",
            format!("write a port, e.g. {DEFAULT_HTTP_PORT}"),
        );
    }
    let path = |p: &Option<Spanned<PathBuf>>| p.as_ref().map(|p| p.get_ref().clone());
    let spec = HttpSpec {
        listen,
        port,
        tls_cert: path(&h.tls_cert),
        tls_key: path(&h.tls_key),
        read_token_file: path(&h.read_token_file),
        operator_token_file: path(&h.operator_token_file),
    };
    let at = h.listen.as_ref().and_then(span);
    if spec.tls_cert.is_some() != spec.tls_key.is_some() {
        c.error(
            h.tls_cert.as_ref().or(h.tls_key.as_ref()).and_then(span),
            "[http] has one of tls_cert and tls_key without the other",
            "give both: the certificate chain and its private key, as PEM files",
        );
    }
    if !spec.is_loopback() {
        if spec.tls_cert.is_none() {
            c.error(
                at.clone(),
                format!("[http] listens on {} without TLS: tokens and the cluster's state would cross the network in the clear", spec.listen),
                "give tls_cert and tls_key (PEM), or listen on 127.0.0.1",
            );
        }
        if spec.read_token_file.is_none() && spec.operator_token_file.is_none() {
            c.error(
                at,
                format!("[http] listens on {} with no token: anyone who reaches it could read the cluster's state", spec.listen),
                "give read_token_file (status and metrics) and/or operator_token_file (also move, failover...): files holding a long random token, mode 0600",
            );
        }
    }
    spec
}

fn check_key_file(
    c: &mut Checker<'_>,
    key: &Spanned<PathBuf>,
    facts: &dyn Fn(&Path) -> KeyFileFacts,
) {
    let path = resolve_path(c.base_dir, key.get_ref());
    let shown = path.display();
    match facts(&path) {
        KeyFileFacts::Missing => c.error(
            span(key),
            format!("key file `{shown}` does not exist"),
            format!("create it with `tandem keygen {shown}` and copy the same file to every node"),
        ),
        KeyFileFacts::Unreadable(why) => c.error(
            span(key),
            format!("key file `{shown}` cannot be read: {why}"),
            "run as root, or give the agent's user read access to the key file",
        ),
        KeyFileFacts::Present { len, mode } => {
            if len != KEY_LEN as u64 {
                c.error(
                    span(key),
                    format!("key file `{shown}` holds {len} bytes; a cluster key is exactly {KEY_LEN} bytes"),
                    format!("write a new key with `tandem keygen {shown}` (move the old file away first) and copy it to every node"),
                );
            }
            // The agent refuses such a key: so does validation (one rule).
            if mode & 0o077 != 0 {
                c.error(
                    span(key),
                    format!("key file `{shown}` is readable by other users (mode {mode:04o}): anyone who reads it can forge cluster traffic"),
                    format!("run `chmod 600 {shown}` on every node (git checks files out 0644)"),
                );
            }
        }
    }
}

fn check_timing(c: &mut Checker<'_>, file: &ConfigFile) -> Timing {
    let t = &file.timing;
    let base = Timing::of_profile(
        t.profile
            .as_ref()
            .map_or(Profile::Default, |p| *p.get_ref()),
    );
    for (name, v) in [
        ("heartbeat_ms", &t.heartbeat_ms),
        ("deadtime_ms", &t.deadtime_ms),
        ("warntime_ms", &t.warntime_ms),
        ("startup_wait_ms", &t.startup_wait_ms),
    ] {
        c.positive(name, v);
    }
    let pick = |v: &Option<Spanned<u64>>, d: u64| v.as_ref().map_or(d, |s| *s.get_ref());
    let timing = Timing {
        heartbeat_ms: pick(&t.heartbeat_ms, base.heartbeat_ms),
        deadtime_ms: pick(&t.deadtime_ms, base.deadtime_ms),
        warntime_ms: pick(&t.warntime_ms, base.warntime_ms),
        startup_wait_ms: pick(&t.startup_wait_ms, base.startup_wait_ms),
    };
    let dead_at = t
        .deadtime_ms
        .as_ref()
        .map(|s| s.span())
        .or(t.heartbeat_ms.as_ref().map(|s| s.span()));
    if timing.heartbeat_ms > 0 && timing.deadtime_ms <= timing.heartbeat_ms {
        c.error(
            dead_at.clone(),
            format!(
                "deadtime_ms ({}) must be longer than heartbeat_ms ({})",
                timing.deadtime_ms, timing.heartbeat_ms
            ),
            format!(
                "set deadtime_ms to at least {} (4 heartbeats)",
                timing.heartbeat_ms * 4
            ),
        );
    } else if timing.deadtime_ms < timing.heartbeat_ms.saturating_mul(3) {
        c.warn(
            dead_at,
            format!("deadtime_ms ({}) is under 3 heartbeats ({} ms each): one or two lost packets declare a node dead", timing.deadtime_ms, timing.heartbeat_ms),
            format!("set deadtime_ms to at least {}", timing.heartbeat_ms * 4),
        );
    }
    if let Some(w) = &t.warntime_ms {
        if timing.warntime_ms >= timing.deadtime_ms {
            c.error(
                span(w),
                format!(
                    "warntime_ms ({}) must be shorter than deadtime_ms ({})",
                    timing.warntime_ms, timing.deadtime_ms
                ),
                format!(
                    "set warntime_ms to about {} (60% of deadtime)",
                    timing.deadtime_ms * 6 / 10
                ),
            );
        }
    }
    timing
}

fn check_links_and_nodes(c: &mut Checker<'_>, file: &ConfigFile) {
    // Problems of the whole file point at the cluster name, so every
    // diagnostic has a line and column.
    let whole_file = span(&file.cluster.name);
    if file.links.is_empty() {
        c.error(
            whole_file.clone(),
            "no [[link]] is defined",
            "add at least one link, e.g.\n[[link]]\nname = \"lan\"\nsubnet = \"10.0.0.0/24\"",
        );
    } else if file.links.len() == 1 {
        c.warn(
            span(&file.links[0].name),
            "only one link: a single failed switch or cable makes the nodes declare each other dead",
            "add a second [[link]] (e.g. a dedicated `sync` network) and an address for it on every node",
        );
    }
    if file.nodes.is_empty() {
        c.error(
            whole_file,
            "no [[node]] is defined",
            "add one [[node]] per cluster member with its name and addresses",
        );
    }
    if file.nodes.len() > MAX_NODES {
        c.error(
            span(&file.nodes[MAX_NODES].name),
            format!(
                "{} nodes; Tandem supports at most {MAX_NODES}",
                file.nodes.len()
            ),
            "split the nodes into several clusters",
        );
    }
    let link_names: Vec<String> = file
        .links
        .iter()
        .map(|l| l.name.get_ref().clone())
        .collect();
    let mut seen_addr: BTreeMap<IpAddr, String> = BTreeMap::new();
    for node in &file.nodes {
        for (link_name, addr) in node.addresses.get_ref() {
            let Some(link) = file
                .links
                .iter()
                .find(|l| l.name.get_ref() == link_name.get_ref())
            else {
                let help = match closest(link_name.get_ref(), &link_names) {
                    Some(best) => format!(
                        "did you mean `{best}`? The links are: {}",
                        link_names.join(", ")
                    ),
                    None => format!(
                        "the links are: {}; add a [[link]] named `{}` or remove this address",
                        link_names.join(", "),
                        link_name.get_ref()
                    ),
                };
                c.error(
                    span(link_name),
                    format!(
                        "node `{}` has an address on `{}`, which is not a link",
                        node.name.get_ref(),
                        link_name.get_ref()
                    ),
                    help,
                );
                continue;
            };
            if let Some(subnet) = &link.subnet {
                if !subnet.get_ref().contains(*addr.get_ref()) {
                    c.error(
                        span(addr),
                        format!(
                            "address {} of node `{}` is not in link `{}`'s subnet {}",
                            addr.get_ref(),
                            node.name.get_ref(),
                            link_name.get_ref(),
                            subnet.get_ref()
                        ),
                        format!(
                            "use an address inside {} or fix the link's subnet",
                            subnet.get_ref()
                        ),
                    );
                }
            }
            if let Some(other) = seen_addr.insert(*addr.get_ref(), node.name.get_ref().clone()) {
                c.error(
                    span(addr),
                    format!(
                        "address {} is given to node `{}` and to node `{other}`",
                        addr.get_ref(),
                        node.name.get_ref()
                    ),
                    "every node needs its own address on each link",
                );
            }
        }
        for link in &file.links {
            if !node
                .addresses
                .get_ref()
                .keys()
                .any(|k| k.get_ref() == link.name.get_ref())
            {
                c.warn(span(&node.addresses), format!("node `{}` has no address on link `{}`: that link cannot carry its heartbeats", node.name.get_ref(), link.name.get_ref()), format!("add `{} = \"ADDRESS\"` to its addresses", link.name.get_ref()));
            }
        }
        if node.addresses.get_ref().is_empty() {
            c.error(
                span(&node.addresses),
                format!("node `{}` has no address", node.name.get_ref()),
                "give it one address per link: addresses = { lan = \"10.0.0.1\" }",
            );
        }
    }
}

fn check_quorum(c: &mut Checker<'_>, file: &ConfigFile) {
    let q = &file.quorum;
    let two_node = q.two_node.as_ref().is_some_and(|t| *t.get_ref());
    if let (Some(w), true) = (&q.witness, two_node) {
        c.error(
            span(w),
            "both `witness` and `two_node = true` are set",
            "choose one: a witness gives a third vote; two_node decides by fencing",
        );
    }
    let n = file.nodes.len();
    // One node with `two_node` stands alone (a majority of one) until
    // `tandem node add` gives it its peer.
    if two_node && n > 2 {
        c.error(
            q.two_node.as_ref().and_then(span),
            format!("`two_node = true` but the cluster has {n} nodes"),
            "two_node mode is for two nodes (or one that a second joins later); remove it to use majority quorum",
        );
    }
    if n == 2 && !two_node && q.witness.is_none() {
        c.error(span(&file.nodes[1].name), "two nodes with neither a witness nor `two_node = true`: when one node fails the other has no quorum and nothing fails over", "add `witness = \"ADDRESS:PORT\"` (a `tandem witness` on a third machine) or `two_node = true` with fencing under [quorum]");
    }
    if two_node && n == 2 && q.witness.is_none() && file.fence_devices.is_empty() {
        c.warn(q.two_node.as_ref().and_then(span), "two nodes with neither a witness nor fencing: a partition can only be resolved by waiting for leases, and a hung node is never reset (a required watchdog does not replace fencing here: the survivor keeps quorum only by fencing its peer)", "add a [[fence_device]] for each node, or a witness");
    }
    if n > MAX_VOTERS {
        c.warn(
            span(&file.nodes[MAX_VOTERS].name),
            format!("{n} nodes: the first {MAX_VOTERS} vote, the others join as non-voters"),
            "this is normal; order the [[node]] entries so the most reliable nodes come first",
        );
    }
}

fn check_fence_devices(c: &mut Checker<'_>, file: &ConfigFile, nodes: &BTreeSet<String>) {
    c.unique_names("fence device", file.fence_devices.iter().map(|d| &d.name));
    for d in &file.fence_devices {
        if !d.agent.get_ref().is_absolute() {
            c.error(
                span(&d.agent),
                format!(
                    "fence agent `{}` is not an absolute path",
                    d.agent.get_ref().display()
                ),
                "write the full path, e.g. \"/usr/sbin/fence_ipmilan\"",
            );
        }
        if let Some(l) = &d.level {
            if *l.get_ref() == 0 {
                c.error(
                    span(l),
                    "fence level 0 does not exist",
                    "levels start at 1; devices of level 1 are tried first",
                );
            }
        }
        c.positive("timeout_ms", &d.timeout_ms);
        if d.hosts.get_ref().is_empty() {
            c.error(
                span(&d.hosts),
                format!("fence device `{}` fences no node", d.name.get_ref()),
                "map each node to its plug: hosts = { n1 = \"1\", n2 = \"2\" }",
            );
        }
        for node in d.hosts.get_ref().keys() {
            c.unknown_ref(
                "node",
                node,
                nodes,
                &format!("fence device `{}`", d.name.get_ref()),
            );
        }
        for (key, value) in &d.options {
            if value.get_ref() == REDACTED {
                c.error(
                    span(value),
                    format!(
                        "option `{}` of fence device `{}` is `{REDACTED}`, the mark `tandem config show` writes in place of a secret",
                        key.get_ref(),
                        d.name.get_ref()
                    ),
                    "write the real value (or use `password_script`): a file made from `config show` output has its secrets masked",
                );
            }
            match key.get_ref().as_str() {
                "action" | "plug" | "port" | "nodename" => c.error(span(key), format!("option `{}` is set by Tandem for each fence", key.get_ref()), "remove it; map nodes to plugs in `hosts`"),
                k if crate::fence::is_secret(k) => c.warn(span(key), "a credential written in the configuration is visible to anyone who can read it", "store it in a root-only file and use `password_script = \"/etc/tandem/fence-pass.sh\"` (a script that prints it)"),
                _ => {}
            }
        }
    }
}

fn check_volumes(
    c: &mut Checker<'_>,
    file: &ConfigFile,
    nodes: &BTreeSet<String>,
    links: &BTreeSet<String>,
) {
    for v in &file.volumes {
        let vol_nodes = v.nodes.get_ref();
        if vol_nodes.is_empty() || vol_nodes.len() > 2 {
            c.error(
                span(&v.nodes),
                format!(
                    "volume `{}` lists {} nodes; a volume has two copies (one while it waits for its second)",
                    v.name.get_ref(),
                    vol_nodes.len()
                ),
                "list the primary's and the secondary's node: nodes = [\"n1\", \"n2\"]",
            );
        } else if vol_nodes.len() == 1 {
            c.warn(
                span(&v.nodes),
                format!(
                    "volume `{}` has one copy, on {}: nothing replicates it, and its group cannot fail over",
                    v.name.get_ref(),
                    vol_nodes[0].get_ref()
                ),
                "a new node takes its second copy while running (`tandem node add NAME --address LINK=IP --volume VOLUME=PATH`, then a full sync); a node already listed takes it by this file on every node and a restart of each agent",
            );
        } else if vol_nodes[0].get_ref() == vol_nodes[1].get_ref() {
            c.error(
                span(&vol_nodes[1]),
                format!(
                    "volume `{}` names node `{}` twice",
                    v.name.get_ref(),
                    vol_nodes[1].get_ref()
                ),
                "the two copies must live on different nodes",
            );
        }
        for n in vol_nodes {
            c.unknown_ref("node", n, nodes, &format!("volume `{}`", v.name.get_ref()));
        }
        if v.size.get_ref().bytes == 0 || v.size.get_ref().bytes % 4096 != 0 {
            c.error(
                span(&v.size),
                format!(
                    "volume size {} bytes is not a positive multiple of 4 KiB",
                    v.size.get_ref().bytes
                ),
                "write a size such as \"4GiB\" or \"512MiB\"",
            );
        }
        let link = v.link.as_ref().map_or("sync", |l| l.get_ref().as_str());
        for n in vol_nodes {
            let has = file.nodes.iter().any(|node| {
                node.name.get_ref() == n.get_ref()
                    && node
                        .addresses
                        .get_ref()
                        .iter()
                        .any(|(l, _)| l.get_ref() == link)
            });
            if nodes.contains(n.get_ref()) && links.contains(link) && !has {
                c.error(
                    span(n),
                    format!(
                        "volume `{}`: node `{}` has no address on link `{link}`, which the volume replicates over",
                        v.name.get_ref(),
                        n.get_ref()
                    ),
                    format!("add `{link} = \"ADDRESS\"` to the node's `addresses`, or set the volume's `link`"),
                );
            }
        }
        if let Some(l) = &v.link {
            c.unknown_ref("link", l, links, &format!("volume `{}`", v.name.get_ref()));
        } else if !links.contains("sync") {
            c.error(
                span(&v.name),
                format!(
                    "volume `{}` replicates over link `sync` by default, and there is no such link",
                    v.name.get_ref()
                ),
                "add `link = \"NAME\"` naming the link to replicate over",
            );
        }
        if let Some(cc) = &v.congestion_control {
            // The kernel's names: at most 15 bytes (TCP_CA_NAME_MAX 16).
            let name = cc.get_ref();
            let ok = !name.is_empty()
                && name.len() <= 15
                && name
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'_');
            if !ok {
                c.error(
                    span(cc),
                    format!(
                        "volume `{}`: `{name}` is not a TCP congestion control name",
                        v.name.get_ref()
                    ),
                    "use `cubic` (the default), `system` for the kernel's default, or a name from /proc/sys/net/ipv4/tcp_available_congestion_control",
                );
            }
        }
        check_nbd_export(c, v);
        if let super::schema::Backing::PerNode(map) = v.backing.get_ref() {
            for n in vol_nodes {
                if !map.contains_key(n.get_ref()) {
                    c.error(
                        span(&v.backing),
                        format!(
                            "volume `{}` has no backing path for node `{}`",
                            v.name.get_ref(),
                            n.get_ref()
                        ),
                        format!(
                            "add `{} = \"/path\"` to `backing`, or give one path for all nodes",
                            n.get_ref()
                        ),
                    );
                }
            }
        }
    }
}

fn check_node_monitors(
    c: &mut Checker<'_>,
    file: &ConfigFile,
    links: &BTreeSet<String>,
) -> Vec<MonitorSpec> {
    c.unique_names("monitor", file.monitors.iter().map(|m| &m.name));
    let mut out = Vec::new();
    for m in &file.monitors {
        if m.kind.get_ref() != "ping" {
            let help = if IMPLEMENTED_GROUP_MONITORS.contains(&m.kind.get_ref().as_str()) {
                format!("a `{}` monitor watches a group's resource: move it into that group as [[group.monitor]]", m.kind.get_ref())
            } else {
                "top-level monitors are node monitors of kind \"ping\"".to_string()
            };
            c.error(
                span(&m.kind),
                format!("node monitor kind `{}` is not supported", m.kind.get_ref()),
                help,
            );
            continue;
        }
        check_monitor_common(c, m);
        check_fields_apply(
            c,
            "monitor",
            &m.kind,
            &monitor_fields(m),
            &["targets", "link"],
        );
        let targets: Vec<IpAddr> = m
            .targets
            .as_ref()
            .map(|t| t.get_ref().iter().map(|s| *s.get_ref()).collect())
            .unwrap_or_default();
        if targets.is_empty() {
            c.error(
                m.targets
                    .as_ref()
                    .map_or(Some(m.name.span()), |t| Some(t.span())),
                format!("ping monitor `{}` has no targets", m.name.get_ref()),
                "add targets = [\"GATEWAY_ADDRESS\"], e.g. the default gateway of that link",
            );
        }
        match &m.link {
            None => c.error(
                span(&m.name),
                format!(
                    "ping monitor `{}` does not say which link it checks",
                    m.name.get_ref()
                ),
                "add `link = \"lan\"` (groups that need this link leave a node whose pings fail)",
            ),
            Some(l) => c.unknown_ref("link", l, links, &format!("monitor `{}`", m.name.get_ref())),
        }
        out.push(monitor_spec(
            m,
            MonitorCheck::Ping {
                targets,
                link: m
                    .link
                    .as_ref()
                    .map(|l| l.get_ref().clone())
                    .unwrap_or_default(),
            },
        ));
    }
    out
}

fn check_monitor_common(c: &mut Checker<'_>, m: &Monitor) {
    c.positive("interval_ms", &m.interval_ms);
    c.positive("timeout_ms", &m.timeout_ms);
    if let (Some(i), Some(t)) = (&m.interval_ms, &m.timeout_ms) {
        if t.get_ref() > i.get_ref() {
            c.error(span(t), format!("monitor `{}`: timeout_ms ({}) is longer than interval_ms ({})", m.name.get_ref(), t.get_ref(), i.get_ref()), "a check must end before the next one starts; lower timeout_ms or raise interval_ms");
        }
    }
    if let Some(f) = &m.failures {
        if *f.get_ref() == 0 {
            c.error(
                span(f),
                "`failures` must be at least 1",
                "write how many consecutive failed checks trigger on_fail, e.g. 3",
            );
        }
    }
}

type FieldList = Vec<(&'static str, Option<Range<usize>>)>;

fn monitor_fields(m: &Monitor) -> FieldList {
    vec![
        ("resource", m.resource.as_ref().map(Spanned::span)),
        ("address", m.address.as_ref().map(Spanned::span)),
        ("url", m.url.as_ref().map(Spanned::span)),
        ("command", m.command.as_ref().map(Spanned::span)),
        ("targets", m.targets.as_ref().map(Spanned::span)),
        ("link", m.link.as_ref().map(Spanned::span)),
    ]
}

/// Refuses fields that belong to another kind, so a typo'd kind or a pasted
/// field never goes unnoticed.
fn check_fields_apply(
    c: &mut Checker<'_>,
    what: &str,
    kind: &Spanned<String>,
    present: &FieldList,
    allowed: &[&str],
) {
    for (field, at) in present {
        if at.is_some() && !allowed.contains(field) {
            let help = if allowed.is_empty() {
                format!("remove `{field}`")
            } else {
                format!(
                    "remove `{field}`; a `{}` {what} takes: {}",
                    kind.get_ref(),
                    allowed.join(", ")
                )
            };
            c.error(
                at.clone(),
                format!(
                    "field `{field}` does not apply to a {what} of kind `{}`",
                    kind.get_ref()
                ),
                help,
            );
        }
    }
}

fn require<'a, T>(
    c: &mut Checker<'_>,
    v: &'a Option<Spanned<T>>,
    name: &Spanned<String>,
    kind: &str,
    field: &str,
    example: &str,
) -> Option<&'a T> {
    if v.is_none() {
        c.error(
            span(name),
            format!("{kind} `{}` needs `{field}`", name.get_ref()),
            format!("add {example}"),
        );
    }
    v.as_ref().map(Spanned::get_ref)
}

fn check_group(
    c: &mut Checker<'_>,
    file: &ConfigFile,
    g: &Group,
    nodes: &BTreeSet<String>,
    groups: &BTreeSet<String>,
    volumes: &BTreeSet<String>,
) -> (Vec<ResourceSpec>, Vec<MonitorSpec>) {
    let gname = g.name.get_ref();
    let mut seen_pref = BTreeSet::new();
    for p in &g.preferred {
        c.unknown_ref("node", p, nodes, &format!("`preferred` of group `{gname}`"));
        if !seen_pref.insert(p.get_ref().clone()) {
            c.error(
                span(p),
                format!(
                    "node `{}` is listed twice in `preferred` of group `{gname}`",
                    p.get_ref()
                ),
                "list each node once, most preferred first",
            );
        }
    }
    if let Some(other) = &g.colocate_with {
        c.unknown_ref(
            "group",
            other,
            groups,
            &format!("`colocate_with` of group `{gname}`"),
        );
        if other.get_ref() == gname {
            c.error(
                span(other),
                format!("group `{gname}` is colocated with itself"),
                "name another group, or remove `colocate_with`",
            );
        }
    }
    // Well-formed, but this version cannot run it: an error, as the agent
    // refuses it (one rule for both).
    if let Some(cl) = g.clone.as_ref().filter(|c| *c.get_ref()) {
        c.error(
            span(cl),
            format!("clone groups (active on every node) are not implemented in this version (group `{gname}`)"),
            "remove `clone = true` to run the group on one node at a time",
        );
    }
    if let Some(other) = &g.colocate_with {
        c.error(
            span(other),
            format!("`colocate_with` is not implemented in this version (group `{gname}`)"),
            "put the resources in one group instead",
        );
    }
    c.positive("failure_expiry_ms", &g.failure_expiry_ms);
    if g.resources.is_empty() {
        c.error(
            span(&g.name),
            format!("group `{gname}` has no resources"),
            "add [[group.resource]] entries in start order",
        );
    }
    let resource_names = c.unique_names("resource", g.resources.iter().map(|r| &r.name));
    let mut specs = Vec::new();
    for r in &g.resources {
        if let Some(spec) = check_resource(c, file, r, volumes) {
            specs.push(spec);
        }
    }
    c.unique_names("monitor", g.monitors.iter().map(|m| &m.name));
    let mut monitors = Vec::new();
    for m in &g.monitors {
        if let Some(spec) = check_group_monitor(c, gname, m, &resource_names, &g.resources) {
            monitors.push(spec);
        }
    }
    (specs, monitors)
}

fn check_resource(
    c: &mut Checker<'_>,
    file: &ConfigFile,
    r: &Resource,
    volumes: &BTreeSet<String>,
) -> Option<ResourceSpec> {
    c.positive("timeout_ms", &r.timeout_ms);
    let mut own = r.fields.clone();
    if let Some(bad) = own.remove("timeout_ms") {
        // Not a whole number (see `Resource`'s deserializer): say so here.
        let e = <u64 as serde::Deserialize>::deserialize(bad.get_ref().clone()).err();
        let msg = e.map_or_else(
            || "`timeout_ms` is out of range".to_string(),
            |e| e.to_string(),
        );
        c.diags.push(serde_diagnostic(Some(bad.span()), &msg));
    }
    if let Some(bad) = own.remove("on_fail") {
        // Not one of the words (see `Resource`'s deserializer).
        c.error(
            Some(bad.span()),
            format!("resource `{}`: `on_fail` is not one of restart, move, fence, block, standby, ignore", r.name.get_ref()),
            "write on_fail = \"restart\" (the default), \"move\", \"fence\", \"block\", \"standby\" or \"ignore\"",
        );
    }
    let kind = r.kind.get_ref().as_str();
    let cx = Context { file, volumes };
    let mut fields = Fields::new(&r.name, r.timeout_ms.as_ref(), own, &mut c.diags, cx);
    let timeout_ms = fields.timeout_ms();
    match Params::check(kind, &mut fields) {
        Some(params) => Some(ResourceSpec {
            name: r.name.get_ref().clone(),
            timeout_ms,
            on_fail: r.on_fail.as_ref().map_or(OnFail::Restart, |v| *v.get_ref()),
            params: params?,
        }),
        None => {
            unknown_kind(c, r);
            None
        }
    }
}

/// A `kind` no registered kind has: say which one was meant.
fn unknown_kind(c: &mut Checker<'_>, r: &Resource) {
    let other = r.kind.get_ref().as_str();
    let known: Vec<String> = KINDS.iter().map(|k| k.name.to_string()).collect();
    let help = match closest(other, &known) {
        Some(best) => format!("did you mean \"{best}\"? Kinds: {}", known.join(", ")),
        None => format!("write one of: {}", known.join(", ")),
    };
    c.error(
        span(&r.kind),
        format!("unknown resource kind `{other}`"),
        help,
    );
}

fn check_group_monitor(
    c: &mut Checker<'_>,
    group: &str,
    m: &Monitor,
    resource_names: &BTreeSet<String>,
    resources: &[Resource],
) -> Option<MonitorSpec> {
    check_monitor_common(c, m);
    let fields = monitor_fields(m);
    let kind = m.kind.get_ref().as_str();
    let check = match kind {
        "process" => {
            check_fields_apply(c, "monitor", &m.kind, &fields, &["resource"]);
            let res = m.resource.as_ref();
            require(
                c,
                &m.resource,
                &m.name,
                "process monitor",
                "resource",
                "resource = \"NAME\" naming a `process` resource of this group",
            )?;
            let res = res?;
            c.unknown_ref(
                "resource",
                res,
                resource_names,
                &format!("monitor `{}` of group `{group}`", m.name.get_ref()),
            );
            if let Some(r) = resources.iter().find(|r| r.name.get_ref() == res.get_ref()) {
                if r.kind.get_ref() != "process" {
                    c.error(
                        span(res),
                        format!(
                            "a `process` monitor watches `process` resources; `{}` is `{}`",
                            res.get_ref(),
                            r.kind.get_ref()
                        ),
                        "use a `tcp`, `http` or `exec` monitor for it",
                    );
                }
            }
            MonitorCheck::Process {
                resource: res.get_ref().clone(),
            }
        }
        "tcp" => {
            check_fields_apply(c, "monitor", &m.kind, &fields, &["address"]);
            MonitorCheck::Tcp {
                address: *require(
                    c,
                    &m.address,
                    &m.name,
                    "tcp monitor",
                    "address",
                    "address = \"127.0.0.1:80\"",
                )?,
            }
        }
        "http" => {
            check_fields_apply(c, "monitor", &m.kind, &fields, &["url"]);
            let url = require(
                c,
                &m.url,
                &m.name,
                "http monitor",
                "url",
                "url = \"http://127.0.0.1/health\"",
            )?
            .clone();
            if !url.starts_with("http://") {
                c.error(m.url.as_ref().and_then(span), format!("url `{url}` does not start with http://"), "write a plain-HTTP URL on the local node, e.g. \"http://127.0.0.1:8080/health\"");
            }
            MonitorCheck::Http { url }
        }
        "exec" => {
            check_fields_apply(c, "monitor", &m.kind, &fields, &["command", "resource"]);
            let command = require(
                c,
                &m.command,
                &m.name,
                "exec monitor",
                "command",
                "command = [\"/usr/local/bin/check\"]",
            )?
            .clone();
            if command.is_empty() {
                c.error(
                    m.command.as_ref().and_then(span),
                    "`command` is empty",
                    "write the program and its arguments",
                );
            }
            MonitorCheck::Exec { command }
        }
        "ping" => {
            c.error(span(&m.kind), "`ping` is a node monitor, not a group monitor", "move it to a top-level [[monitor]]; groups whose addresses need that link leave a node whose pings fail");
            return None;
        }
        other => {
            c.error(
                span(&m.kind),
                format!("unknown group monitor kind `{other}`"),
                format!("write one of: {}", IMPLEMENTED_GROUP_MONITORS.join(", ")),
            );
            return None;
        }
    };
    Some(monitor_spec(m, check))
}

/// [`Confinement::of`] the raw file's volumes (validation runs before the
/// model exists).
fn confinement(file: &ConfigFile, specs: &[ResourceSpec]) -> Option<Confinement> {
    Confinement::of(specs, |volume| {
        let v = file.volumes.iter().find(|v| v.name.get_ref() == volume)?;
        Some(
            v.nodes
                .get_ref()
                .iter()
                .map(|n| n.get_ref().clone())
                .collect(),
        )
    })
}

/// Warns about a group that no preferred node can host: its addresses need a
/// link that none of those nodes has an address on. A group using volumes
/// that prefers a node without a copy, or whose volumes share no node, is
/// an error: it could never run there.
fn check_hosting(c: &mut Checker<'_>, file: &ConfigFile, resources: &[Vec<ResourceSpec>]) {
    for (g, specs) in file.groups.iter().zip(resources) {
        if let Some(conf) = confinement(file, specs) {
            if !file
                .nodes
                .iter()
                .any(|n| conf.why_not(n.name.get_ref()).is_none())
            {
                let list: Vec<String> = conf
                    .volumes
                    .iter()
                    .map(|(v, copies)| format!("{v} on {}", copies.join(", ")))
                    .collect();
                c.error(
                    span(&g.name),
                    format!(
                        "group `{}` can run on no node: its volumes have no node in common ({})",
                        g.name.get_ref(),
                        list.join("; ")
                    ),
                    "put the group's volumes on a common pair of nodes, or split the group",
                );
            }
            for p in &g.preferred {
                if let Some(why) = conf.why_not(p.get_ref()) {
                    c.error(
                        span(p),
                        format!(
                            "group `{}` prefers node `{}`, which {why}",
                            g.name.get_ref(),
                            p.get_ref()
                        ),
                        "remove it from `preferred`: the group runs only where its volumes have a copy",
                    );
                }
            }
        }
        let needed: BTreeSet<&str> = specs
            .iter()
            .filter_map(|r| r.params.spec().link())
            .collect();
        let candidates: Vec<&super::schema::Node> = if g.preferred.is_empty() {
            file.nodes.iter().collect()
        } else {
            file.nodes
                .iter()
                .filter(|n| g.preferred.iter().any(|p| p.get_ref() == n.name.get_ref()))
                .collect()
        };
        let can_host = |n: &&super::schema::Node| {
            needed
                .iter()
                .all(|l| n.addresses.get_ref().keys().any(|k| k.get_ref() == l))
        };
        if !candidates.is_empty() && !candidates.iter().any(can_host) {
            c.warn(
                span(&g.name),
                format!("no preferred node can host group `{}`: it needs link(s) {} and none of them has an address there", g.name.get_ref(), needed.iter().copied().collect::<Vec<_>>().join(", ")),
                "add an address on that link to a preferred node, or prefer a node that has one",
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn profiles_keep_deadtime_above_three_heartbeats() {
        for p in [Profile::Default, Profile::Relaxed, Profile::Wan] {
            let t = Timing::of_profile(p);
            assert!(t.deadtime_ms >= 3 * t.heartbeat_ms, "{p:?}");
            assert!(t.warntime_ms < t.deadtime_ms, "{p:?}");
        }
    }

    /// Defaults are applied once, here: the agent reads typed values.
    #[test]
    fn monitors_links_and_fence_devices_come_with_their_defaults() {
        let text = r#"
[cluster]
name = "c"
key_file = "k"

[[link]]
name = "lan"
subnet = "10.0.0.0/24"

[[link]]
name = "sync"
port = 6000

[[node]]
name = "n1"
addresses = { lan = "10.0.0.1", sync = "10.0.1.1" }

[[node]]
name = "n2"
addresses = { lan = "10.0.0.2", sync = "10.0.1.2" }

[[node]]
name = "n3"
addresses = { lan = "10.0.0.3", sync = "10.0.1.3" }

[[fence_device]]
name = "pdu"
agent = "/usr/sbin/fence_dummy"
hosts = { n1 = "1", n2 = "2", n3 = "3" }

[[monitor]]
name = "gw"
kind = "ping"
link = "lan"
targets = ["10.0.0.254"]

[[group]]
name = "web"

[[group.resource]]
name = "svc"
kind = "process"
command = ["/bin/sleep", "100"]

[[group.monitor]]
name = "alive"
kind = "process"
resource = "svc"
"#;
        let loaded = crate::config::load(text, Path::new("/"), &|_| {
            crate::config::KeyFileFacts::Present {
                mode: 0o600,
                len: KEY_LEN as u64,
            }
        });
        let cfg = loaded
            .config
            .unwrap_or_else(|| panic!("{:?}", loaded.diagnostics));
        let ping = &cfg.node_monitors[0];
        assert_eq!(
            (ping.interval_ms, ping.timeout_ms, ping.failures),
            (
                DEFAULT_PING_INTERVAL_MS,
                DEFAULT_MONITOR_TIMEOUT_MS,
                DEFAULT_MONITOR_FAILURES
            )
        );
        let m = &cfg.groups[0].monitors[0];
        assert_eq!(m.interval_ms, DEFAULT_MONITOR_INTERVAL_MS);
        assert_eq!((m.on_fail, m.restarts), (OnFail::Restart, DEFAULT_RESTARTS));
        assert_eq!(m.kind(), "process");
        let ports: Vec<u16> = cfg.links.iter().map(|l| l.port).collect();
        assert_eq!(ports, vec![DEFAULT_HEARTBEAT_PORT, 6000]);
        let d = &cfg.fence_devices[0];
        assert_eq!(
            (d.level, d.timeout_ms, d.retries, d.delay_ms),
            (1, DEFAULT_FENCE_TIMEOUT_MS, DEFAULT_FENCE_RETRIES, 0)
        );
        assert_eq!(d.hosts.len(), 3);
    }

    /// A resource's `on_fail` is read (default `restart`); a word that is
    /// not a policy is refused at its place; `fence` needs a fence device
    /// for every node that can run the group.
    #[test]
    fn a_resources_on_fail_is_read_checked_and_fence_needs_a_device_for_every_host() {
        let text = |on_fail: &str, hosts: &str| {
            format!(
                r#"
[cluster]
name = "c"
key_file = "k"

[[link]]
name = "lan"
subnet = "10.0.0.0/24"

[[node]]
name = "n1"
addresses = {{ lan = "10.0.0.1" }}

[[node]]
name = "n2"
addresses = {{ lan = "10.0.0.2" }}

[[node]]
name = "n3"
addresses = {{ lan = "10.0.0.3" }}

[[fence_device]]
name = "pdu"
agent = "/usr/sbin/fence_dummy"
hosts = {{ {hosts} }}

[[group]]
name = "web"

[[group.resource]]
name = "svc"
kind = "process"
command = ["/bin/sleep", "100"]
{on_fail}
"#
            )
        };
        let load = |t: String| {
            crate::config::load(&t, Path::new("/"), &|_| {
                crate::config::KeyFileFacts::Present {
                    mode: 0o600,
                    len: KEY_LEN as u64,
                }
            })
        };
        let all = r#"n1 = "1", n2 = "2", n3 = "3""#;
        let cfg = load(text("", all)).config.expect("valid");
        assert_eq!(cfg.groups[0].resources[0].on_fail, OnFail::Restart);
        for (word, want) in [
            ("restart", OnFail::Restart),
            ("move", OnFail::Move),
            ("fence", OnFail::Fence),
            ("block", OnFail::Block),
            ("standby", OnFail::Standby),
            ("ignore", OnFail::Ignore),
        ] {
            let loaded = load(text(&format!("on_fail = \"{word}\""), all));
            let cfg = loaded
                .config
                .unwrap_or_else(|| panic!("{word}: {:?}", loaded.diagnostics));
            assert_eq!(cfg.groups[0].resources[0].on_fail, want);
        }
        let refused_saying = |t: String, words: &str| {
            let loaded = load(t);
            assert!(loaded.config.is_none());
            let msg: Vec<&str> = loaded
                .diagnostics
                .iter()
                .map(|d| d.message.as_str())
                .collect();
            assert!(msg.iter().any(|m| m.contains(words)), "{msg:?}");
        };
        refused_saying(
            text("on_fail = \"reboot\"", all),
            "`on_fail` is not one of restart, move, fence",
        );
        refused_saying(
            text("on_fail = \"fence\"", r#"n1 = "1""#),
            "no fence device lists n2, n3",
        );
    }

    /// `[http]`: off unless present; loopback by default; a link's name
    /// gives each node its own address; off loopback TLS and a token are
    /// required, and one machine's address is refused.
    /// From a new user's trial: an haresources line whose address was a
    /// node's own validated, and a failover would have taken that node's
    /// address away.
    #[test]
    fn a_floating_address_that_is_a_nodes_own_is_refused() {
        let load = |vip: &str| {
            let text = format!(
                "[cluster]\nname = \"c\"\nkey_file = \"k\"\n\n[[link]]\nname = \"lan\"\nsubnet = \"10.0.0.0/24\"\n\n[[node]]\nname = \"n1\"\naddresses = {{ lan = \"10.0.0.1\" }}\n\n[[node]]\nname = \"n2\"\naddresses = {{ lan = \"10.0.0.2\" }}\n\n[quorum]\ntwo_node = true\n\n[[group]]\nname = \"g\"\n\n[[group.resource]]\nname = \"vip\"\nkind = \"ip\"\naddress = \"{vip}\"\n"
            );
            crate::config::load(&text, Path::new("/etc/tandem"), &|_| {
                crate::config::KeyFileFacts::Present {
                    mode: 0o600,
                    len: KEY_LEN as u64,
                }
            })
        };
        let errors = |vip: &str| -> Vec<String> {
            load(vip)
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.message.clone())
                .collect()
        };
        assert_eq!(errors("10.0.0.100/24"), Vec::<String>::new());
        let e = errors("10.0.0.2/24");
        assert!(
            e.iter().any(|m| m.contains("node n2's own address")),
            "{e:?}"
        );
    }

    #[test]
    fn the_http_api_is_private_unless_tls_and_a_token_guard_it() {
        let load = |http: &str| {
            let text = format!(
                "[cluster]\nname = \"c\"\nkey_file = \"k\"\n\n[[link]]\nname = \"lan\"\nsubnet = \"10.0.0.0/24\"\n\n[[node]]\nname = \"n1\"\naddresses = {{ lan = \"10.0.0.1\" }}\n\n[[node]]\nname = \"n2\"\naddresses = {{ lan = \"10.0.0.2\" }}\n\n[quorum]\ntwo_node = true\n{http}"
            );
            crate::config::load(&text, Path::new("/etc/tandem"), &|_| {
                crate::config::KeyFileFacts::Present {
                    mode: 0o600,
                    len: KEY_LEN as u64,
                }
            })
        };
        let errors = |http: &str| -> Vec<String> {
            load(http)
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| format!("{} ({})", d.message, d.help.clone().unwrap_or_default()))
                .collect()
        };
        assert_eq!(load("").config.unwrap().http, None);
        let cfg = load("\n[http]\n").config.unwrap();
        let h = cfg.http.as_ref().unwrap();
        assert!(h.is_loopback());
        assert_eq!(
            h.address_of(&cfg.nodes[1]),
            Some("127.0.0.1:9640".parse().unwrap())
        );
        // A link: each node its own address; TLS and a token required.
        let e = errors("\n[http]\nlisten = \"lan\"\n");
        assert_eq!(e.len(), 2, "{e:?}");
        assert!(
            e[0].contains("without TLS") && e[1].contains("no token"),
            "{e:?}"
        );
        let ok = "\n[http]\nlisten = \"lan\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\nread_token_file = \"r\"\n";
        let cfg = load(ok).config.unwrap();
        let h = cfg.http.as_ref().unwrap();
        assert!(!h.is_loopback());
        assert_eq!(
            h.address_of(&cfg.nodes[1]),
            Some("10.0.0.2:9640".parse().unwrap())
        );
        // All addresses: the same rule.
        assert_eq!(errors("\n[http]\nlisten = \"0.0.0.0\"\n").len(), 2);
        // One machine's address, a link that is not there, half of TLS.
        let e = errors("\n[http]\nlisten = \"10.0.0.1\"\ntls_cert = \"c.pem\"\ntls_key = \"k.pem\"\noperator_token_file = \"o\"\n");
        assert!(
            e.len() == 1 && e[0].contains("one machine's address"),
            "{e:?}"
        );
        let e = errors("\n[http]\nlisten = \"lna\"\n");
        assert!(
            e.iter()
                .any(|m| m.contains("neither an address") && m.contains("did you mean `lan`")),
            "{e:?}"
        );
        let e = errors("\n[http]\ntls_cert = \"c.pem\"\n");
        assert!(e.len() == 1 && e[0].contains("without the other"), "{e:?}");
        let e = errors("\n[http]\nport = 0\n");
        assert!(e.len() == 1 && e[0].contains("port 0"), "{e:?}");
        // Shown and diffed like any section.
        let a = load("").config.unwrap();
        let b = load(ok).config.unwrap();
        let shown: Vec<String> = crate::config::diff(&a, &b)
            .iter()
            .map(|c| c.to_string())
            .collect();
        assert_eq!(shown, vec!["[http] added"]);
        let toml = b.to_toml().unwrap();
        assert!(
            toml.contains("[http]") && toml.contains("listen = \"lan\""),
            "{toml}"
        );
    }

    /// `[[alert]]`: defaults as Pacemaker's, kinds checked by name,
    /// limits on recipients and the timeout.
    #[test]
    fn alerts_come_with_pacemakers_defaults_and_are_checked() {
        let load = |alerts: &str| {
            let text = format!(
                "[cluster]\nname = \"c\"\nkey_file = \"k\"\n\n[[link]]\nname = \"lan\"\n\n[[node]]\nname = \"n1\"\naddresses = {{ lan = \"10.0.0.1\" }}\n\n[[node]]\nname = \"n2\"\naddresses = {{ lan = \"10.0.0.2\" }}\n\n[quorum]\ntwo_node = true\n{alerts}"
            );
            crate::config::load(&text, Path::new("/etc/tandem"), &|_| {
                crate::config::KeyFileFacts::Present {
                    mode: 0o600,
                    len: KEY_LEN as u64,
                }
            })
        };
        let errors = |alerts: &str| -> Vec<String> {
            load(alerts)
                .diagnostics
                .iter()
                .filter(|d| d.is_error())
                .map(|d| d.message.clone())
                .collect()
        };
        let cfg = load("\n[[alert]]\nname = \"file\"\npath = \"/usr/share/pacemaker/alerts/alert_file.sh.sample\"\nrecipients = [\"/var/log/a.log\"]\n").config.unwrap();
        let a = &cfg.alerts[0];
        assert_eq!(a.kinds, AlertKind::ALL.to_vec());
        assert_eq!(
            (a.timeout_ms, a.timestamp_format.as_str()),
            (DEFAULT_ALERT_TIMEOUT_MS, DEFAULT_ALERT_TIMESTAMP_FORMAT)
        );
        assert_eq!(a.recipients, vec!["/var/log/a.log".to_string()]);
        let e = errors("\n[[alert]]\nname = \"a\"\npath = \"relative.sh\"\nkinds = [\"node\", \"resouce\"]\ntimeout_ms = 10\n\n[[alert]]\nname = \"a\"\npath = \"/x\"\n");
        assert!(e.iter().any(|m| m.contains("not absolute")), "{e:?}");
        assert!(
            e.iter().any(|m| m.contains("no alert kind `resouce`")),
            "{e:?}"
        );
        assert!(
            e.iter()
                .any(|m| m.contains("timeout_ms 10 is out of range")),
            "{e:?}"
        );
        assert!(
            e.iter().any(|m| m.contains("duplicate alert name")),
            "{e:?}"
        );
        let many: Vec<String> = (0..=MAX_ALERT_RECIPIENTS)
            .map(|i| format!("\"r{i}\""))
            .collect();
        let e = errors(&format!(
            "\n[[alert]]\nname = \"a\"\npath = \"/x\"\nrecipients = [{}]\n",
            many.join(", ")
        ));
        assert!(
            e.len() == 1 && e[0].contains("recipients; at most"),
            "{e:?}"
        );
    }
}
