//! What changed between two configurations, name-keyed: entries of a list
//! are paired by name (never by position), so that inserting a group
//! before another changes nothing about the other, and a renamed entry is
//! one removal and one addition. Each change names its section, its entry
//! and which fields differ; a live change applies exactly these and leaves
//! every other resource alone.

use std::fmt;

use serde::Serialize;

use super::model::{Config, FenceDeviceSpec, GroupSpec};

/// The part of a configuration a change is in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Section {
    /// `[cluster]`.
    Cluster,
    /// `[timing]`.
    Timing,
    /// `[quorum]`.
    Quorum,
    /// A `[[link]]`.
    Link,
    /// A `[[node]]`.
    Node,
    /// A `[[fence_device]]`.
    FenceDevice,
    /// A `[[group]]`'s own settings (not its resources or monitors).
    Group,
    /// A group's `[[group.resource]]`, named `group/resource`.
    Resource,
    /// A group's `[[group.monitor]]` (named `group/monitor`) or a node
    /// monitor (named `monitor`).
    Monitor,
    /// A `[[volume]]`.
    Volume,
    /// `[watchdog]`.
    Watchdog,
    /// `[http]`.
    Http,
    /// An `[[alert]]`.
    Alert,
}

impl Section {
    /// The section's word in messages.
    pub fn word(self) -> &'static str {
        match self {
            Section::Cluster => "cluster",
            Section::Timing => "timing",
            Section::Quorum => "quorum",
            Section::Link => "link",
            Section::Node => "node",
            Section::FenceDevice => "fence device",
            Section::Group => "group",
            Section::Resource => "resource",
            Section::Monitor => "monitor",
            Section::Volume => "volume",
            Section::Watchdog => "watchdog",
            Section::Http => "http",
            Section::Alert => "alert",
        }
    }
}

/// How an entry changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "change", rename_all = "snake_case")]
pub enum ChangeKind {
    /// Only the new configuration has it.
    Added,
    /// Only the old configuration has it.
    Removed,
    /// Both have it; these fields differ (as the file names them).
    Changed {
        /// The differing fields, sorted.
        fields: Vec<String>,
    },
    /// The entries both configurations have are in another order (nodes:
    /// who votes; resources: start order). `name` is the list's owner.
    Reordered {
        /// The list (`node`, `resource`, `monitor`...).
        list: Section,
    },
}

/// One field's value before and after a change, as the file says it
/// (TOML-like, shortened past [`MAX_VALUE_CHARS`]). Secrets never appear:
/// the model never serializes them (a fence device's options are
/// compared apart and shown by name only).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FieldChange {
    /// The field, as the file names it.
    pub field: String,
    /// Its value before (None: not set).
    pub old: Option<String>,
    /// Its value after (None: not set).
    pub new: Option<String>,
}

/// Longest value shown in a [`FieldChange`]; longer ones are cut.
pub const MAX_VALUE_CHARS: usize = 60;

impl fmt::Display for FieldChange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = |v: &Option<String>| v.clone().unwrap_or_else(|| "unset".to_string());
        write!(
            f,
            "{} {} -> {}",
            self.field,
            show(&self.old),
            show(&self.new)
        )
    }
}

/// One change between two configurations.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Change {
    /// Where.
    pub section: Section,
    /// The entry's name (`group/resource` inside a group; empty for a
    /// section that is one table, and for a reordering of a top-level
    /// list).
    pub name: String,
    /// What happened to it.
    #[serde(flatten)]
    pub kind: ChangeKind,
    /// For a change of fields, each field's value before and after (the
    /// fields holding nested lists, diffed on their own, are left out).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub values: Vec<FieldChange>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let what = if self.name.is_empty() {
            format!("[{}]", self.section.word())
        } else {
            format!("{} `{}`", self.section.word(), self.name)
        };
        match &self.kind {
            ChangeKind::Added => write!(f, "{what} added"),
            ChangeKind::Removed => write!(f, "{what} removed"),
            ChangeKind::Changed { fields } => {
                // Each field with its values where known, else its name.
                let shown: Vec<String> = fields
                    .iter()
                    .map(|name| {
                        self.values
                            .iter()
                            .find(|v| v.field == *name)
                            .map_or_else(|| name.clone(), ToString::to_string)
                    })
                    .collect();
                write!(f, "{what} changed: {}", shown.join(", "))
            }
            ChangeKind::Reordered { list } if self.name.is_empty() => {
                write!(f, "{}s reordered", list.word())
            }
            ChangeKind::Reordered { list } => write!(f, "{what}: {}s reordered", list.word()),
        }
    }
}

/// The changes that turn `old` into `new`, section by section in file
/// order; empty when they say the same.
pub fn diff(old: &Config, new: &Config) -> Vec<Change> {
    let mut d = Differ::default();
    d.single(Section::Cluster, &old.cluster, &new.cluster);
    d.single(Section::Timing, &old.timing, &new.timing);
    d.single(Section::Quorum, &old.quorum, &new.quorum);
    d.list(Section::Link, "", &old.links, &new.links, |l| &l.name, &[]);
    d.list(Section::Node, "", &old.nodes, &new.nodes, |n| &n.name, &[]);
    d.fence_devices(&old.fence_devices, &new.fence_devices);
    d.groups(&old.groups, &new.groups);
    d.list(
        Section::Monitor,
        "",
        &old.node_monitors,
        &new.node_monitors,
        |m| &m.name,
        &[],
    );
    d.list(
        Section::Volume,
        "",
        &old.volumes,
        &new.volumes,
        |v| &v.name,
        &[],
    );
    match (&old.watchdog, &new.watchdog) {
        (Some(a), Some(b)) => d.single(Section::Watchdog, a, b),
        (None, Some(_)) => d.push(Section::Watchdog, "", ChangeKind::Added),
        (Some(_), None) => d.push(Section::Watchdog, "", ChangeKind::Removed),
        (None, None) => {}
    }
    d.list(
        Section::Alert,
        "",
        &old.alerts,
        &new.alerts,
        |a| &a.name,
        &[],
    );
    match (&old.http, &new.http) {
        (Some(a), Some(b)) => d.single(Section::Http, a, b),
        (None, Some(_)) => d.push(Section::Http, "", ChangeKind::Added),
        (Some(_), None) => d.push(Section::Http, "", ChangeKind::Removed),
        (None, None) => {}
    }
    d.out
}

#[derive(Default)]
struct Differ {
    out: Vec<Change>,
}

impl Differ {
    fn push(&mut self, section: Section, name: &str, kind: ChangeKind) {
        self.out.push(Change {
            section,
            name: name.to_string(),
            kind,
            values: Vec::new(),
        });
    }

    /// A change of the fields in `values` (at least one).
    fn push_changed(&mut self, section: Section, name: &str, values: Vec<FieldChange>) {
        let fields = values.iter().map(|v| v.field.clone()).collect();
        self.out.push(Change {
            section,
            name: name.to_string(),
            kind: ChangeKind::Changed { fields },
            values,
        });
    }

    /// A section that is one table.
    fn single<T: Serialize>(&mut self, section: Section, a: &T, b: &T) {
        let values = differing_fields(a, b, &[]);
        if !values.is_empty() {
            self.push_changed(section, "", values);
        }
    }

    /// A list of named entries: paired by name; `nested` fields are lists
    /// diffed on their own (left out here). Returns the pairs found in both.
    fn list<'a, T: Serialize>(
        &mut self,
        section: Section,
        owner: &str,
        old: &'a [T],
        new: &'a [T],
        name: impl Fn(&T) -> &String,
        nested: &[&str],
    ) -> Vec<(&'a T, &'a T)> {
        let full = |n: &str| {
            if owner.is_empty() {
                n.to_string()
            } else {
                format!("{owner}/{n}")
            }
        };
        let mut both = Vec::new();
        for a in old {
            match new.iter().find(|b| name(b) == name(a)) {
                None => self.push(section, &full(name(a)), ChangeKind::Removed),
                Some(b) => {
                    let values = differing_fields(a, b, nested);
                    if !values.is_empty() {
                        self.push_changed(section, &full(name(a)), values);
                    }
                    both.push((a, b));
                }
            }
        }
        for b in new {
            if !old.iter().any(|a| name(a) == name(b)) {
                self.push(section, &full(name(b)), ChangeKind::Added);
            }
        }
        let order_old: Vec<&String> = both.iter().map(|(a, _)| name(a)).collect();
        let mut order_new: Vec<&String> = new.iter().map(&name).collect();
        order_new.retain(|n| order_old.contains(n));
        if order_old != order_new {
            let (owner_section, name) = if owner.is_empty() {
                (section, String::new())
            } else {
                (Section::Group, owner.to_string())
            };
            self.push(
                owner_section,
                &name,
                ChangeKind::Reordered { list: section },
            );
        }
        both
    }

    /// Fence devices: options are compared as they are, since their
    /// serialized form hides secrets (a new password is a change).
    fn fence_devices(&mut self, old: &[FenceDeviceSpec], new: &[FenceDeviceSpec]) {
        let both = self.list(Section::FenceDevice, "", old, new, |d| &d.name, &[]);
        for (a, b) in both.into_iter().filter(|(a, b)| a.options != b.options) {
            let found = self.out.iter_mut().find_map(|c| match &mut c.kind {
                ChangeKind::Changed { fields }
                    if c.section == Section::FenceDevice && c.name == a.name =>
                {
                    Some(fields)
                }
                _ => None,
            });
            match found {
                Some(fields) if fields.iter().any(|f| f == "options") => {}
                Some(fields) => {
                    fields.push("options".into());
                    fields.sort();
                }
                None => self.push(
                    Section::FenceDevice,
                    &b.name,
                    ChangeKind::Changed {
                        fields: vec!["options".into()],
                    },
                ),
            }
        }
    }

    /// Groups: their own settings, then their resources and monitors,
    /// each paired by name within the group.
    fn groups(&mut self, old: &[GroupSpec], new: &[GroupSpec]) {
        let both = self.list(
            Section::Group,
            "",
            old,
            new,
            |g| &g.name,
            &["resource", "monitor"],
        );
        for (a, b) in both {
            self.list(
                Section::Resource,
                &a.name,
                &a.resources,
                &b.resources,
                |r| &r.name,
                &[],
            );
            self.list(
                Section::Monitor,
                &a.name,
                &a.monitors,
                &b.monitors,
                |m| &m.name,
                &[],
            );
        }
    }
}

/// The top-level fields of `a` and `b` (serialized as the file writes
/// them) whose values differ, sorted; `skip` fields are not compared.
fn differing_fields<T: Serialize>(a: &T, b: &T, skip: &[&str]) -> Vec<FieldChange> {
    use serde_json::Value;
    let (Ok(Value::Object(a)), Ok(Value::Object(b))) =
        (serde_json::to_value(a), serde_json::to_value(b))
    else {
        // Every model type serializes to an object; should one not, call
        // the whole entry changed rather than miss a change.
        return vec![FieldChange {
            field: "*".into(),
            old: None,
            new: None,
        }];
    };
    let mut keys: Vec<&String> = a.keys().chain(b.keys()).collect();
    keys.sort();
    keys.dedup();
    keys.into_iter()
        .filter(|k| !skip.contains(&k.as_str()))
        .filter(|k| a.get(*k) != b.get(*k))
        .map(|k| FieldChange {
            field: k.clone(),
            old: a.get(k).and_then(show_value),
            new: b.get(k).and_then(show_value),
        })
        .collect()
}

/// A value as the file would say it (a string quoted), cut past
/// [`MAX_VALUE_CHARS`]; None for null (not set).
fn show_value(v: &serde_json::Value) -> Option<String> {
    let text = match v {
        serde_json::Value::Null => return None,
        other => other.to_string(),
    };
    if text.chars().count() <= MAX_VALUE_CHARS {
        return Some(text);
    }
    let cut: String = text.chars().take(MAX_VALUE_CHARS).collect();
    Some(format!("{cut}..."))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::{load, KeyFileFacts};
    use std::path::Path;

    const BASE: &str = r#"
[cluster]
name = "web"
key_file = "/k.key"

[[link]]
name = "lan"
subnet = "10.0.0.0/24"

[[link]]
name = "sync"

[[node]]
name = "n1"
addresses = { lan = "10.0.0.1", sync = "192.168.9.1" }

[[node]]
name = "n2"
addresses = { lan = "10.0.0.2", sync = "192.168.9.2" }

[[node]]
name = "n3"
addresses = { lan = "10.0.0.3", sync = "192.168.9.3" }

[[fence_device]]
name = "ipmi"
agent = "/usr/sbin/fence_ipmilan"
hosts = { n1 = "1", n2 = "2", n3 = "3" }
options = { ip = "10.0.0.250", password = "s3cret" }

[[group]]
name = "web"
preferred = ["n1"]

[[group.resource]]
name = "ip"
kind = "ip"
address = "10.0.0.100/24"

[[group.resource]]
name = "daemon"
kind = "process"
command = ["/usr/sbin/thttpd"]

[[group.monitor]]
name = "alive"
kind = "process"
resource = "daemon"

[[group]]
name = "db"

[[group.resource]]
name = "db"
kind = "process"
command = ["/usr/bin/db"]
"#;

    fn cfg(text: &str) -> Config {
        let facts = |_: &Path| KeyFileFacts::Present {
            len: 32,
            mode: 0o600,
        };
        let l = load(text, Path::new("/"), &facts);
        match l.config {
            Some(c) => c,
            None => panic!("{:?}", l.diagnostics),
        }
    }

    fn shown(changes: &[Change]) -> Vec<String> {
        changes.iter().map(ToString::to_string).collect()
    }

    #[test]
    fn the_same_configuration_written_otherwise_has_no_change() {
        let a = cfg(BASE);
        // A default written out, a comment, another key order.
        let b = cfg(&BASE
            .replace(
                "name = \"sync\"\n",
                "name = \"sync\"\nport = 5405 # the default\n",
            )
            .replace(
                "[[group]]\nname = \"db\"\n",
                "[[group]]\nfailback = \"manual\"\nname = \"db\"\n",
            ));
        assert_eq!(diff(&a, &b), vec![]);
    }

    #[test]
    fn entries_pair_by_name_not_position() {
        let a = cfg(BASE);
        // A new group before the others: only it is added.
        let extra = "[[group]]\nname = \"cache\"\n\n[[group.resource]]\nname = \"c\"\nkind = \"process\"\ncommand = [\"/usr/bin/c\"]\n\n";
        let b = cfg(&BASE.replacen(
            "[[group]]\nname = \"web\"",
            &format!("{extra}[[group]]\nname = \"web\""),
            1,
        ));
        assert_eq!(shown(&diff(&a, &b)), vec!["group `cache` added"]);
    }

    #[test]
    fn a_resource_change_names_its_group_resource_and_fields() {
        let a = cfg(BASE);
        let b = cfg(&BASE.replace("10.0.0.100/24", "10.0.0.101/24"));
        assert_eq!(
            diff(&a, &b),
            vec![Change {
                section: Section::Resource,
                name: "web/ip".into(),
                kind: ChangeKind::Changed {
                    fields: vec!["address".into()]
                },
                values: vec![FieldChange {
                    field: "address".into(),
                    old: Some("\"10.0.0.100/24\"".into()),
                    new: Some("\"10.0.0.101/24\"".into()),
                }],
            }]
        );
        let c = cfg(&BASE.replace(
            "name = \"daemon\"\nkind = \"process\"\n",
            "name = \"daemon\"\nkind = \"process\"\ntimeout_ms = 5000\n",
        ));
        assert_eq!(
            shown(&diff(&a, &c)),
            // The kill delay follows a shorter timeout: effective values
            // are compared, not what was written.
            vec!["resource `web/daemon` changed: kill_after_ms 5000 -> 2500, timeout_ms 20000 -> 5000"]
        );
    }

    #[test]
    fn start_order_and_voter_order_are_changes() {
        let a = cfg(BASE);
        let swapped = BASE.replace(
            "[[group.resource]]\nname = \"ip\"\nkind = \"ip\"\naddress = \"10.0.0.100/24\"\n\n[[group.resource]]\nname = \"daemon\"\nkind = \"process\"\ncommand = [\"/usr/sbin/thttpd\"]\n",
            "[[group.resource]]\nname = \"daemon\"\nkind = \"process\"\ncommand = [\"/usr/sbin/thttpd\"]\n\n[[group.resource]]\nname = \"ip\"\nkind = \"ip\"\naddress = \"10.0.0.100/24\"\n",
        );
        assert_eq!(
            shown(&diff(&a, &cfg(&swapped))),
            vec!["group `web`: resources reordered"]
        );
        let nodes = BASE.replace(
            "name = \"n1\"\naddresses = { lan = \"10.0.0.1\", sync = \"192.168.9.1\" }",
            "name = \"n0\"\naddresses = { lan = \"10.0.0.1\", sync = \"192.168.9.1\" }",
        );
        let b = cfg(&nodes
            .replace("preferred = [\"n1\"]", "preferred = [\"n0\"]")
            .replace("n1 = \"1\"", "n0 = \"1\""));
        assert_eq!(
            shown(&diff(&a, &b)),
            vec![
                "node `n1` removed",
                "node `n0` added",
                r#"fence device `ipmi` changed: hosts {"n1":"1","n2":"2","n3":"3"} -> {"n0":"1","n2":"2","n3":"3"}"#,
                r#"group `web` changed: preferred ["n1"] -> ["n0"]"#
            ]
        );
    }

    #[test]
    fn a_reordering_names_the_list() {
        let a = cfg(BASE);
        let two = "[[group.monitor]]\nname = \"alive\"\nkind = \"process\"\nresource = \"daemon\"\n\n[[group.monitor]]\nname = \"port\"\nkind = \"tcp\"\naddress = \"127.0.0.1:80\"\n";
        let swapped = "[[group.monitor]]\nname = \"port\"\nkind = \"tcp\"\naddress = \"127.0.0.1:80\"\n\n[[group.monitor]]\nname = \"alive\"\nkind = \"process\"\nresource = \"daemon\"\n";
        let one =
            "[[group.monitor]]\nname = \"alive\"\nkind = \"process\"\nresource = \"daemon\"\n";
        let b = cfg(&BASE.replace(one, two));
        let c = cfg(&BASE.replace(one, swapped));
        let changes = diff(&b, &c);
        assert_eq!(shown(&changes), vec!["group `web`: monitors reordered"]);
        assert_eq!(
            changes[0].kind,
            ChangeKind::Reordered {
                list: Section::Monitor
            }
        );
        assert_eq!(shown(&diff(&a, &b)), vec!["monitor `web/port` added"]);
    }

    #[test]
    fn a_new_fence_password_is_a_change_that_shows_no_secret() {
        let a = cfg(BASE);
        let b = cfg(&BASE.replace("s3cret", "n3wer"));
        let changes = diff(&a, &b);
        assert_eq!(
            shown(&changes),
            vec!["fence device `ipmi` changed: options"]
        );
        let json = serde_json::to_string(&changes).unwrap();
        assert!(
            !json.contains("n3wer") && !json.contains("s3cret"),
            "{json}"
        );
    }

    #[test]
    fn singletons_and_defaults_changed() {
        let a = cfg(BASE);
        let b = cfg(&format!(
            "{BASE}\n[timing]\nprofile = \"relaxed\"\n\n[watchdog]\nenabled = false\n"
        ));
        assert_eq!(
            shown(&diff(&a, &b)),
            vec![
                "[timing] changed: deadtime_ms 200 -> 1000, heartbeat_ms 50 -> 200, startup_wait_ms 5000 -> 10000, warntime_ms 150 -> 600",
                "[watchdog] removed"
            ]
        );
        // The profile's own values written out: no change.
        let c = cfg(&format!("{BASE}\n[timing]\nprofile = \"relaxed\"\n"));
        let d = cfg(&format!("{BASE}\n[timing]\nheartbeat_ms = 200\ndeadtime_ms = 1000\nwarntime_ms = 600\nstartup_wait_ms = 10000\n"));
        assert_eq!(diff(&c, &d), vec![]);
    }
}
