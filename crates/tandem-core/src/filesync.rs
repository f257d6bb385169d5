//! File sync between nodes (the `filesync` kind): the manifest the node
//! running the group sends, what a receiving node does with it, and which
//! received paths it may write at all. Pure: the shell scans directories
//! into [`Entry`]s, moves the messages and applies the [`Plan`].
//!
//! Rules, each tested here:
//!
//! - **Paths.** A received path is relative to one of the receiver's own
//!   configured roots (by index, never a path from the wire), made of
//!   plain components: no `.`, `..`, empty component, NUL, or leading `/`
//!   ([`relative_ok`]). So a peer holding the key still cannot write
//!   outside the synced paths.
//! - **Identity.** A file is the same when its kind, size and content hash
//!   are; then only its metadata (mode, owner, mtime) may need setting.
//!   A symlink is the same when it points to the same text.
//! - **Removal.** What the receiver has under a root that the source does
//!   not is removed, deepest first, so that a directory is empty when its
//!   turn comes. What the source could not list or send (a root missing
//!   there, as an unmounted filesystem; a file too large or unreadable; a
//!   tree past [`MAX_ENTRIES`]) is in its `keep` list and left alone on the
//!   receiver, never emptied.
//! - **Order.** Directories are created before what they hold (the scan
//!   lists a directory before its contents); directory metadata is set
//!   last, since writing into a directory changes its mtime.

use serde::{Deserialize, Serialize};

/// Most entries one manifest may hold (a larger tree is refused, and
/// status says so: this kind keeps configuration in step, not data).
pub const MAX_ENTRIES: usize = 10_000;
/// Longest relative path, in bytes.
pub const MAX_PATH_BYTES: usize = 4_096;
/// Longest symlink target, in bytes.
pub const MAX_LINK_BYTES: usize = 4_096;

/// What an entry is.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EntryKind {
    /// A regular file: its size and content hash (BLAKE3, hex).
    File {
        /// Bytes.
        size: u64,
        /// BLAKE3 of the content, hex.
        hash: String,
    },
    /// A directory.
    Dir,
    /// A symbolic link and what it points to.
    Symlink {
        /// Its target, as written.
        target: String,
    },
}

/// One file, directory or symlink under a synced root.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Entry {
    /// Which configured root (index into the resource's `paths`).
    pub root: u16,
    /// Relative to that root, `/`-separated; empty for the root itself.
    pub path: String,
    /// What it is.
    pub kind: EntryKind,
    /// Permission bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner, by number.
    pub uid: u32,
    /// Group, by number.
    pub gid: u32,
    /// Modification time, ns since the Unix epoch.
    pub mtime_ns: i64,
}

impl Entry {
    fn key(&self) -> (u16, &str) {
        (self.root, self.path.as_str())
    }

    fn same_content(&self, other: &Entry) -> bool {
        self.kind == other.kind
    }

    fn same_meta(&self, other: &Entry) -> bool {
        // A symlink's own mode and times are not kept (Linux ignores the
        // mode; its times are the link's, not the target's).
        matches!(self.kind, EntryKind::Symlink { .. })
            || (self.mode, self.uid, self.gid, self.mtime_ns)
                == (other.mode, other.uid, other.gid, other.mtime_ns)
    }

    fn depth(&self) -> usize {
        if self.path.is_empty() {
            0
        } else {
            self.path.split('/').count()
        }
    }
}

/// What the source sends first.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    /// Every entry under every root present on the source, each directory
    /// before its contents.
    pub entries: Vec<Entry>,
    /// What the receiver leaves as it is, with everything under it: the
    /// source could not list or send it (`(root, "")`: a whole root).
    pub keep: Vec<(u16, String)>,
    /// The source's configured paths, in order: entries name roots by
    /// index, so a receiver whose list differs (a configuration change
    /// under way) must refuse rather than write one path's files into
    /// another ([`refusal`]).
    #[serde(default)]
    pub roots: Vec<String>,
}

impl Manifest {
    /// Whether `(root, path)` is under something the receiver keeps.
    pub fn keeps(&self, root: u16, path: &str) -> bool {
        self.keep.iter().any(|(r, k)| {
            *r == root
                && (k.is_empty()
                    || k == path
                    || path
                        .strip_prefix(k.as_str())
                        .is_some_and(|rest| rest.starts_with('/')))
        })
    }
}

/// Why a receiver refuses a whole sync, if it does: it runs the resource
/// itself (it is the source, never overwritten by a stale peer), or the
/// source's paths are not `mine` in the same order (entries name roots by
/// position: a configuration change under way would write one path's
/// files into another).
pub fn refusal(running_here: bool, source: &Manifest, mine: &[String]) -> Option<String> {
    if running_here {
        return Some(
            "the group runs here, so this node is the source; it is never overwritten".into(),
        );
    }
    (source.roots != mine).then(|| {
        format!(
            "the sender's paths {:?} are not this node's {:?} (a configuration change under way?)",
            source.roots, mine
        )
    })
}

/// Why a received path is refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PathError {
    /// Longer than [`MAX_PATH_BYTES`].
    #[error("the path is longer than {MAX_PATH_BYTES} bytes")]
    TooLong,
    /// Absolute, or with an empty, `.` or `..` component, or a NUL.
    #[error("`{0}` is not a plain relative path")]
    NotPlain(String),
    /// Names a root this node does not have.
    #[error("root {0} is not one of the synced paths here")]
    UnknownRoot(u16),
}

/// Whether `path` may be written under one of `roots` roots.
pub fn relative_ok(root: u16, path: &str, roots: usize) -> Result<(), PathError> {
    if usize::from(root) >= roots {
        return Err(PathError::UnknownRoot(root));
    }
    if path.len() > MAX_PATH_BYTES {
        return Err(PathError::TooLong);
    }
    if path.is_empty() {
        return Ok(());
    }
    let plain = !path.contains('\0')
        && path
            .split('/')
            .all(|c| !c.is_empty() && c != "." && c != "..");
    if plain {
        Ok(())
    } else {
        Err(PathError::NotPlain(path.chars().take(200).collect()))
    }
}

/// What the receiver does to match the source.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Plan {
    /// Indices into the manifest of directories to create (in order).
    pub mkdir: Vec<usize>,
    /// Indices into the manifest of files and symlinks whose content the
    /// receiver needs (files are sent; symlinks are made from the entry).
    pub fetch: Vec<usize>,
    /// Receiver's entries to remove first (deepest first): gone on the
    /// source, or of another kind there.
    pub remove: Vec<(u16, String)>,
    /// Indices into the manifest whose metadata to set last (directories
    /// after everything written into them).
    pub set_meta: Vec<usize>,
    /// Entries refused (bad path), with why.
    pub refused: Vec<String>,
}

/// The plan that makes the receiver's `local` entries (same roots) match
/// `source`; `roots`: how many roots the receiver has.
pub fn plan(source: &Manifest, local: &[Entry], roots: usize) -> Plan {
    use std::collections::BTreeMap;
    let mut p = Plan::default();
    let mine: BTreeMap<(u16, &str), &Entry> = local.iter().map(|e| (e.key(), e)).collect();
    let mut wanted: std::collections::BTreeSet<(u16, &str)> = Default::default();
    for (i, e) in source.entries.iter().enumerate() {
        if let Err(why) = relative_ok(e.root, &e.path, roots) {
            p.refused.push(why.to_string());
            continue;
        }
        wanted.insert(e.key());
        match mine.get(&e.key()) {
            Some(have) if have.same_content(e) => {
                if !have.same_meta(e) {
                    p.set_meta.push(i);
                }
                continue;
            }
            // Another kind: a directory in the way of a file (or the
            // reverse) goes first, with what it holds. A file of other
            // content is simply replaced.
            Some(have)
                if matches!(have.kind, EntryKind::Dir) || matches!(e.kind, EntryKind::Dir) =>
            {
                p.remove.push((have.root, have.path.clone()));
            }
            Some(_) | None => {}
        }
        match e.kind {
            EntryKind::Dir => {
                p.mkdir.push(i);
                p.set_meta.push(i);
            }
            EntryKind::File { .. } => {
                p.fetch.push(i);
            }
            EntryKind::Symlink { .. } => p.fetch.push(i),
        }
    }
    let mut gone: Vec<&Entry> = local
        .iter()
        .filter(|e| !wanted.contains(&e.key()))
        .filter(|e| !source.keeps(e.root, &e.path))
        .collect();
    // Deepest first, so a directory is emptied before it is removed.
    gone.sort_by_key(|e| std::cmp::Reverse(e.depth()));
    let mut removed: Vec<(u16, String)> =
        gone.into_iter().map(|e| (e.root, e.path.clone())).collect();
    // What is replaced by another kind goes after the gone entries it may
    // hold (they are deeper), before anything is created.
    removed.append(&mut p.remove);
    removed.dedup();
    p.remove = removed;
    // Writing into a directory changes its mtime, even one whose times
    // matched before: once anything changes, every directory's metadata
    // is set again at the end.
    if !(p.mkdir.is_empty() && p.fetch.is_empty() && p.remove.is_empty()) {
        for (i, e) in source.entries.iter().enumerate() {
            if matches!(e.kind, EntryKind::Dir)
                && relative_ok(e.root, &e.path, roots).is_ok()
                && !p.set_meta.contains(&i)
            {
                p.set_meta.push(i);
            }
        }
    }
    // Directory metadata last, deepest first (setting a child's mtime does
    // not touch its parent's, but creating it did).
    p.set_meta.sort_by_key(|&i| {
        let e = &source.entries[i];
        (
            matches!(e.kind, EntryKind::Dir),
            std::cmp::Reverse(e.depth()),
        )
    });
    p
}

#[cfg(test)]
mod tests {
    use super::*;

    fn file(root: u16, path: &str, hash: &str, mtime_ns: i64) -> Entry {
        Entry {
            root,
            path: path.into(),
            kind: EntryKind::File {
                size: hash.len() as u64,
                hash: hash.into(),
            },
            mode: 0o644,
            uid: 0,
            gid: 0,
            mtime_ns,
        }
    }

    fn dir(root: u16, path: &str) -> Entry {
        Entry {
            root,
            path: path.into(),
            kind: EntryKind::Dir,
            mode: 0o755,
            uid: 0,
            gid: 0,
            mtime_ns: 1,
        }
    }

    fn manifest(entries: Vec<Entry>) -> Manifest {
        Manifest {
            entries,
            keep: vec![],
            roots: vec![],
        }
    }

    #[test]
    fn a_receiver_refuses_while_it_is_the_source_or_when_the_paths_differ() {
        let mine = vec!["/etc/app".to_string()];
        let m = |roots: Vec<String>| Manifest {
            roots,
            ..Manifest::default()
        };
        assert_eq!(refusal(false, &m(mine.clone()), &mine), None);
        assert!(refusal(true, &m(mine.clone()), &mine).is_some_and(|w| w.contains("source")));
        assert!(refusal(false, &m(vec!["/etc/other".into()]), &mine)
            .is_some_and(|w| w.contains("not this node's")));
        let two = vec!["/a".to_string(), "/b".to_string()];
        let swapped = vec!["/b".to_string(), "/a".to_string()];
        assert!(
            refusal(false, &m(swapped), &two).is_some(),
            "same paths, other order"
        );
    }

    #[test]
    fn only_plain_relative_paths_under_a_known_root_are_written() {
        for ok in ["", "a", "a/b.conf", "x/.hidden", "a..b"] {
            assert_eq!(relative_ok(0, ok, 1), Ok(()), "{ok}");
        }
        for bad in [
            "/etc/passwd",
            "../x",
            "a/../../x",
            "a//b",
            "./a",
            "a/.",
            "a/",
            "a\0b",
        ] {
            assert!(
                matches!(relative_ok(0, bad, 1), Err(PathError::NotPlain(_))),
                "{bad:?}"
            );
        }
        assert_eq!(relative_ok(1, "a", 1), Err(PathError::UnknownRoot(1)));
        assert_eq!(
            relative_ok(0, &"a".repeat(MAX_PATH_BYTES + 1), 1),
            Err(PathError::TooLong)
        );
    }

    #[test]
    fn identical_trees_need_nothing_and_a_touched_file_needs_only_its_metadata() {
        let src = vec![dir(0, ""), file(0, "a", "h1", 5), file(0, "b", "h2", 5)];
        assert_eq!(plan(&manifest(src.clone()), &src, 1), Plan::default());
        let mut local = src.clone();
        local[1].mtime_ns = 4;
        local[2].mode = 0o600;
        let p = plan(&manifest(src), &local, 1);
        assert_eq!(p.fetch, Vec::<usize>::new());
        assert_eq!(p.set_meta, vec![1, 2]);
    }

    #[test]
    fn new_and_changed_files_are_fetched_and_directories_made_in_order() {
        let src = vec![
            dir(0, ""),
            dir(0, "d"),
            file(0, "d/new", "h1", 5),
            file(0, "old", "h3", 5),
        ];
        let local = vec![dir(0, ""), file(0, "old", "h2", 5)];
        let p = plan(&manifest(src), &local, 1);
        assert_eq!(p.mkdir, vec![1]);
        assert_eq!(p.fetch, vec![2, 3]);
        assert!(p.remove.is_empty());
        // Directory metadata comes after every file's, deepest first, and
        // every directory's is set again (writing changed their mtimes).
        assert_eq!(p.set_meta, vec![1, 0]);
    }

    #[test]
    fn what_the_source_lacks_is_removed_deepest_first_unless_it_is_kept() {
        let src = vec![dir(0, "")];
        let local = vec![
            dir(0, ""),
            dir(0, "d"),
            file(0, "d/x", "h", 1),
            dir(0, "d/e"),
            file(0, "d/e/y", "h", 1),
            file(0, "big", "h", 1),
            dir(0, "big2"),
            file(0, "big2/x", "h", 1),
            file(0, "big20", "h", 1),
            dir(1, ""),
            file(1, "z", "h", 1),
        ];
        let p = plan(
            &Manifest {
                entries: src,
                keep: vec![(1, String::new()), (0, "big".into()), (0, "big2".into())],
                roots: vec![],
            },
            &local,
            2,
        );
        assert_eq!(
            p.remove,
            vec![
                (0, "d/e/y".to_string()),
                (0, "d/x".to_string()),
                (0, "d/e".to_string()),
                (0, "d".to_string()),
                (0, "big20".to_string()),
            ]
        );
        assert!(
            !p.remove.iter().any(|(r, _)| *r == 1),
            "a missing root is never emptied"
        );
    }

    #[test]
    fn a_directory_where_a_file_should_be_is_removed_before_the_file_is_written() {
        let src = vec![dir(0, ""), file(0, "x", "h", 1)];
        let local = vec![dir(0, ""), dir(0, "x"), file(0, "x/inner", "h", 1)];
        let p = plan(&manifest(src), &local, 1);
        assert_eq!(
            p.remove,
            vec![(0, "x/inner".to_string()), (0, "x".to_string())]
        );
        assert_eq!(p.fetch, vec![1]);
    }

    #[test]
    fn a_hostile_manifest_cannot_name_a_path_outside_the_roots() {
        let src = vec![file(0, "../../etc/shadow", "h", 1), file(7, "x", "h", 1)];
        let p = plan(&manifest(src), &[], 1);
        assert!(p.fetch.is_empty() && p.mkdir.is_empty() && p.set_meta.is_empty());
        assert_eq!(p.refused.len(), 2, "{:?}", p.refused);
    }

    #[test]
    fn a_symlink_is_the_same_when_it_points_to_the_same_text() {
        let link = |t: &str| Entry {
            kind: EntryKind::Symlink { target: t.into() },
            mode: 0o777,
            mtime_ns: 9,
            ..file(0, "l", "", 0)
        };
        let src = vec![dir(0, ""), link("a")];
        assert!(plan(&manifest(src.clone()), &src, 1).fetch.is_empty());
        let mut local = src.clone();
        local[1].mtime_ns = 1;
        assert_eq!(plan(&manifest(src.clone()), &local, 1), Plan::default());
        let p = plan(&manifest(src), &[dir(0, ""), link("b")], 1);
        assert_eq!(p.fetch, vec![1]);
    }
}
