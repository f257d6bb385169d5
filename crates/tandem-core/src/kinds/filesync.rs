//! `filesync`: files and directories kept identical from the node that
//! runs the group to every other node that can host groups (seed 003: the
//! rarely changed files a standby needs, which xCAT kept in step with rsync
//! from cron). This file holds its fields and checks; the sync rules are
//! [`crate::filesync`].

use std::path::{Component, Path, PathBuf};

use super::{Field, Fields, Kind, Spec};

/// Port the receivers listen on unless `port` says.
pub const DEFAULT_FILESYNC_PORT: u16 = 5410;
/// Time between two full syncs (besides the ones a change triggers)
/// unless `interval_ms` says.
pub const DEFAULT_FILESYNC_INTERVAL_MS: u64 = 60_000;
/// Largest file synced unless `max_file_bytes` says.
pub const DEFAULT_MAX_FILE_BYTES: u64 = 16 << 20;
/// The most `max_file_bytes` may say (one file is one frame in memory).
pub const MAX_FILE_BYTES_LIMIT: u64 = 256 << 20;
/// Most paths one resource keeps in step.
pub const MAX_PATHS: usize = 64;
/// Shortest interval between full syncs.
pub const MIN_INTERVAL_MS: u64 = 1_000;
/// Trees the cluster must never overwrite on a peer.
const FORBIDDEN_ROOTS: &[&str] = &["/proc", "/sys", "/dev", "/run", "/boot", "/bin", "/sbin", "/lib", "/usr"];

/// Paths kept in step from the running node to the others.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Filesync {
    /// Absolute paths, each a file or a directory (synced whole).
    pub paths: Vec<PathBuf>,
    /// The cluster link the copies travel over (its node addresses).
    pub link: String,
    /// TCP port of the receivers on that link.
    pub port: u16,
    /// Time between full syncs besides those a change triggers.
    pub interval_ms: u64,
    /// Largest file synced; larger ones are reported, not sent.
    pub max_file_bytes: u64,
}

impl Kind for Filesync {
    const NAME: &'static str = "filesync";
    const SUMMARY: &'static str =
        "files and directories kept identical from the node running the group to the others, over the cluster's authenticated channel";
    const FIELDS: &'static [Field] = &[
        Field {
            name: "paths",
            doc: "absolute paths of files or directories to keep in step, e.g. [\"/etc/myapp\", \"/etc/hosts.allow\"]",
            default: None,
        },
        Field {
            name: "link",
            doc: "the cluster link the copies travel over",
            default: Some("the first link"),
        },
        Field {
            name: "port",
            doc: "TCP port every node listens on for copies, on its address of that link",
            default: Some("5410"),
        },
        Field {
            name: "interval_ms",
            doc: "time between full syncs, besides the one each change triggers",
            default: Some("60000"),
        },
        Field {
            name: "max_file_bytes",
            doc: "largest file synced; a larger one is listed in status as not synced",
            default: Some("16777216 (16 MiB)"),
        },
    ];

    fn check(f: &mut Fields<'_>) -> Option<Filesync> {
        let paths = f.require::<Vec<PathBuf>>("filesync", "paths", "paths = [\"/etc/myapp\"]");
        let link = f.take::<String>("link");
        let port = f.take::<u16>("port");
        let interval = f.take::<u64>("interval_ms");
        let max_file = f.take::<u64>("max_file_bytes");
        let links: Vec<String> = f
            .cx
            .file
            .links
            .iter()
            .map(|l| l.name.get_ref().clone())
            .collect();
        let link = match link {
            Some(l) => {
                let known = links.iter().cloned().collect();
                f.unknown_ref("link", &l, &known);
                l.into_inner()
            }
            None => links.first().cloned().unwrap_or_default(),
        };
        if let Some(p) = &port {
            if *p.get_ref() < 1024 {
                f.error(Some(p.span()), format!("port {} is a privileged port", p.get_ref()), "use a port of 1024 or more, e.g. 5410");
            }
        }
        if let Some(i) = &interval {
            if *i.get_ref() < MIN_INTERVAL_MS {
                f.error(Some(i.span()), format!("interval_ms {} is under {MIN_INTERVAL_MS}", i.get_ref()), "changes are synced at once anyway; the interval is the safety net, e.g. 60000");
            }
        }
        if let Some(m) = &max_file {
            if *m.get_ref() == 0 || *m.get_ref() > MAX_FILE_BYTES_LIMIT {
                f.error(Some(m.span()), format!("max_file_bytes {} is not between 1 and {MAX_FILE_BYTES_LIMIT}", m.get_ref()), "this kind keeps configuration in step; put data on a replicated volume");
            }
        }
        let paths = paths?;
        let at = Some(paths.span());
        let list = paths.into_inner();
        if list.is_empty() || list.len() > MAX_PATHS {
            f.error(at.clone(), format!("`paths` lists {} paths", list.len()), format!("list between 1 and {MAX_PATHS} absolute paths"));
            return None;
        }
        for (i, p) in list.iter().enumerate() {
            if let Some(why) = path_problem(p) {
                f.error(at.clone(), format!("path `{}` cannot be synced: {why}", p.display()), "write an absolute path without . or .., outside the system's own trees, e.g. \"/etc/myapp\"");
            }
            for q in &list[..i] {
                if p.starts_with(q) || q.starts_with(p) {
                    f.error(at.clone(), format!("paths `{}` and `{}` overlap", q.display(), p.display()), "list a directory once; it is synced whole");
                }
            }
        }
        if link.is_empty() {
            f.error(None, "a filesync resource needs a `[[link]]` to send its copies over", "add a [[link]] section");
            return None;
        }
        Some(Filesync {
            paths: list,
            link,
            port: port.map_or(DEFAULT_FILESYNC_PORT, |p| p.into_inner()),
            interval_ms: interval.map_or(DEFAULT_FILESYNC_INTERVAL_MS, |i| i.into_inner()),
            max_file_bytes: max_file.map_or(DEFAULT_MAX_FILE_BYTES, |m| m.into_inner()),
        })
    }
}

/// Why `p` may not be a synced root, if it may not.
fn path_problem(p: &Path) -> Option<&'static str> {
    if !p.is_absolute() {
        return Some("it is not absolute");
    }
    if p.components().any(|c| matches!(c, Component::CurDir | Component::ParentDir)) {
        return Some("it has . or ..");
    }
    if p == Path::new("/") || p == Path::new("/etc") || p == Path::new("/var") {
        return Some("it is a whole system tree");
    }
    if FORBIDDEN_ROOTS.iter().any(|r| p.starts_with(r)) {
        return Some("it is under a tree the system owns");
    }
    if p.starts_with("/var/lib/tandem") || p.starts_with("/etc/tandem") {
        return Some("it is Tandem's own state or configuration");
    }
    None
}

impl Spec for Filesync {
    fn describe(&self) -> String {
        let paths: Vec<String> = self.paths.iter().map(|p| p.display().to_string()).collect();
        format!("{} over link {} port {}", paths.join(", "), self.link, self.port)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn system_trees_and_tandems_own_files_are_never_synced() {
        for bad in ["/", "/etc", "/usr/lib/x", "/proc/1", "/run/x", "etc/x", "/etc/../root", "/var/lib/tandem/state", "/etc/tandem/cluster.toml"] {
            assert!(path_problem(Path::new(bad)).is_some(), "{bad}");
        }
        for ok in ["/etc/myapp", "/etc/hosts.allow", "/srv/www/conf", "/var/lib/myapp/keys"] {
            assert_eq!(path_problem(Path::new(ok)), None, "{ok}");
        }
    }
}
