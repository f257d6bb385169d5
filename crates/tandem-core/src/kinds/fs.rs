//! `fs`: a filesystem mounted where the group runs: a block device, or a
//! replicated `[[volume]]` attached on the node that promoted it. This
//! file holds its fields and checks and the rule that reads the kernel's
//! mount table ([`mounted`]).

use std::path::{Path, PathBuf};

use super::{Field, Fields, Kind, Spec};

/// Longest mount option string.
pub const MAX_OPTIONS: usize = 1024;
/// Filesystem types `fsck` may be asked to check before mounting.
pub const FSCK_TYPES: &[&str] = &["ext2", "ext3", "ext4", "xfs", "vfat"];
/// Filesystems whose mount table entry shows an anonymous device number
/// (not the block device's), so that the mount could not be recognised.
pub const UNSUPPORTED_TYPES: &[&str] = &["btrfs", "zfs", "overlay", "tmpfs", "nfs", "nfs4"];

/// What the filesystem lives on.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Source {
    /// A block device.
    Device(PathBuf),
    /// A replicated volume, attached on this node.
    Volume(String),
}

/// A filesystem to mount.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Fs {
    /// What it lives on (`device = ...` or `volume = ...`).
    #[serde(flatten)]
    pub source: Source,
    /// The mount point.
    pub directory: PathBuf,
    /// Its type (`ext4`).
    pub fstype: String,
    /// Mount options (`-o`), empty for the defaults.
    pub options: String,
    /// Check it (`fsck -a`) before mounting.
    pub fsck: bool,
}

impl Fs {
    /// Whether it is mounted read-only (then the check does not write).
    pub fn read_only(&self) -> bool {
        self.options.split(',').any(|o| o == "ro")
    }
}

impl Kind for Fs {
    const NAME: &'static str = "fs";
    const SUMMARY: &'static str =
        "a filesystem on a block device or a replicated volume, mounted where the group runs";
    const FIELDS: &'static [Field] = &[
        Field {
            name: "device",
            doc: "the block device, e.g. \"/dev/vg0/data\" (or `volume`)",
            default: None,
        },
        Field {
            name: "volume",
            doc: "a `[[volume]]` to attach on this node and mount (or `device`); put the volume's resource before this one",
            default: None,
        },
        Field {
            name: "directory",
            doc: "the mount point, e.g. \"/srv/data\"",
            default: None,
        },
        Field {
            name: "fstype",
            doc: "the filesystem type, e.g. \"ext4\"",
            default: None,
        },
        Field {
            name: "options",
            doc: "mount options (`mount -o`), e.g. \"noatime\"",
            default: Some("the filesystem's defaults"),
        },
        Field {
            name: "fsck",
            doc: "check the filesystem (`fsck -a`) before mounting it",
            default: Some("false"),
        },
    ];

    fn check(f: &mut Fields<'_>) -> Option<Fs> {
        let device = f.take::<PathBuf>("device");
        let volume = f.take::<String>("volume");
        let directory = f.require::<PathBuf>("fs", "directory", "directory = \"/srv/data\"");
        let fstype = f.require::<String>("fs", "fstype", "fstype = \"ext4\"");
        let options = f.take::<String>("options");
        let fsck = f.take::<bool>("fsck");
        let source = match (device, volume) {
            (Some(d), None) => {
                if !d.get_ref().is_absolute() {
                    f.error(
                        Some(d.span()),
                        format!("device `{}` is not an absolute path", d.get_ref().display()),
                        "write the full path, e.g. \"/dev/vg0/data\"",
                    );
                }
                Source::Device(d.into_inner())
            }
            (None, Some(v)) => {
                let known = f.cx.volumes.clone();
                f.unknown_ref("volume", &v, &known);
                Source::Volume(v.into_inner())
            }
            (Some(d), Some(_)) => {
                f.error(
                    Some(d.span()),
                    "an `fs` resource has either `device` or `volume`, not both",
                    "keep `volume` for a replicated volume, `device` for a local block device",
                );
                return None;
            }
            (None, None) => {
                let name = f.name().to_string();
                f.error(
                    None,
                    format!("fs resource `{name}` needs `device` or `volume`"),
                    "add device = \"/dev/vg0/data\", or volume = \"NAME\" of a [[volume]]",
                );
                return None;
            }
        };
        let directory = directory?;
        let fstype = fstype?;
        let dotted = directory
            .get_ref()
            .components()
            .any(|c| matches!(c, std::path::Component::CurDir | std::path::Component::ParentDir));
        if !directory.get_ref().is_absolute() || directory.get_ref() == Path::new("/") || dotted {
            f.error(
                Some(directory.span()),
                format!("directory `{}` is not a mount point the cluster may use", directory.get_ref().display()),
                "write an absolute path other than /, without . or .., e.g. \"/srv/data\"",
            );
        }
        if fstype.get_ref().is_empty()
            || !fstype.get_ref().chars().all(|c| c.is_ascii_alphanumeric() || c == '.' || c == '_')
        {
            f.error(
                Some(fstype.span()),
                format!("`{}` is not a filesystem type", fstype.get_ref()),
                "write the type as mount -t takes it, e.g. \"ext4\"",
            );
        }
        if UNSUPPORTED_TYPES.contains(&fstype.get_ref().as_str()) {
            f.error(
                Some(fstype.span()),
                format!("a `{}` filesystem cannot be run by the `fs` kind in this version", fstype.get_ref()),
                "its mount table entry does not name its device, so the cluster could not tell where it is mounted: use ext4 or xfs",
            );
        }
        let opts = options.as_ref().map_or(String::new(), |o| o.get_ref().clone());
        if opts.len() > MAX_OPTIONS || opts.contains(char::is_whitespace) {
            f.error(
                options.as_ref().map(|o| o.span()),
                "mount options are one comma-separated list without spaces",
                "write them as mount -o takes them, e.g. \"noatime,nodiratime\"",
            );
        }
        let fsck_on = fsck.as_ref().is_some_and(|b| *b.get_ref());
        if fsck_on && !FSCK_TYPES.contains(&fstype.get_ref().as_str()) {
            f.error(
                fsck.as_ref().map(|b| b.span()),
                format!("fsck of a `{}` filesystem is not something the cluster runs", fstype.get_ref()),
                format!("remove `fsck`, or use one of: {}", FSCK_TYPES.join(", ")),
            );
        }
        Some(Fs {
            source,
            directory: directory.into_inner(),
            fstype: fstype.into_inner(),
            options: opts,
            fsck: fsck_on,
        })
    }
}

impl Spec for Fs {
    fn describe(&self) -> String {
        let from = match &self.source {
            Source::Device(d) => d.display().to_string(),
            Source::Volume(v) => format!("volume {v}"),
        };
        format!("fs {from} on {} ({})", self.directory.display(), self.fstype)
    }

    fn volume(&self) -> Option<&str> {
        match &self.source {
            Source::Volume(v) => Some(v),
            Source::Device(_) => None,
        }
    }
}

/// What the mount table says of a mount point and the device.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Mounted {
    /// Nothing is mounted there, and the device is mounted nowhere.
    No,
    /// The device is mounted there (something may be mounted over it:
    /// it is still mounted, and in use).
    Yes,
    /// Something else is mounted there (its source as the table names
    /// it), and the device is mounted nowhere.
    Other(String),
    /// The device is mounted, but not there: at this mount point.
    Elsewhere(String),
}

/// Reads `/proc/self/mountinfo` for device number `dev` (major, minor)
/// and `directory`. Mount points with spaces are written `\040` by the
/// kernel. The device mounted anywhere counts: a device hidden under
/// another mount, or mounted at another place, is still mounted, and a
/// second node must not mount it too.
pub fn mounted(mountinfo: &str, directory: &Path, dev: (u32, u32)) -> Mounted {
    let want = directory.to_string_lossy();
    let mut here: Option<String> = None;
    let mut elsewhere: Option<String> = None;
    for line in mountinfo.lines() {
        let fields: Vec<&str> = line.split(' ').collect();
        // id parent major:minor root mount-point options ... - type source
        let (Some(devno), Some(point)) = (fields.get(2), fields.get(4)) else {
            continue;
        };
        let point = unescape(point);
        let same = devno
            .split_once(':')
            .and_then(|(a, b)| Some((a.parse::<u32>().ok()?, b.parse::<u32>().ok()?)))
            == Some(dev);
        if same {
            if point == want {
                return Mounted::Yes;
            }
            elsewhere.get_or_insert(point);
            continue;
        }
        if point == want {
            let source = fields
                .iter()
                .position(|f| *f == "-")
                .and_then(|i| fields.get(i + 2))
                .map_or_else(|| devno.to_string(), |s| unescape(s));
            here = Some(source);
        }
    }
    match (elsewhere, here) {
        (Some(at), _) => Mounted::Elsewhere(at),
        (None, Some(other)) => Mounted::Other(other),
        (None, None) => Mounted::No,
    }
}

/// Undoes the kernel's octal escapes (`\040` for a space).
fn unescape(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Some(v) = s.get(i + 1..i + 4).and_then(|o| u8::from_str_radix(o, 8).ok()) {
                out.push(v);
                i += 4;
                continue;
            }
        }
        out.push(b[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

#[cfg(test)]
mod tests {
    use super::*;

    const TABLE: &str = "\
22 1 8:1 / / rw,relatime shared:1 - ext4 /dev/sda1 rw
40 22 7:3 / /srv/data rw,relatime shared:20 - ext4 /dev/loop3 rw
41 22 7:4 / /srv/my\\040data rw - ext4 /dev/loop4 rw
42 40 0:50 / /srv/data rw - tmpfs tmpfs rw
";

    /// Regression (review): only the topmost mount counted, so a device
    /// hidden under another mount read as not mounted, and another node
    /// could mount it too.
    #[test]
    fn the_mount_table_is_read_by_device_number_and_a_hidden_or_moved_mount_still_counts() {
        assert_eq!(mounted(TABLE, Path::new("/srv/nothing"), (7, 9)), Mounted::No);
        assert_eq!(mounted(TABLE, Path::new("/srv/my data"), (7, 4)), Mounted::Yes);
        // A tmpfs mounted over it hides it: still mounted.
        assert_eq!(mounted(TABLE, Path::new("/srv/data"), (7, 3)), Mounted::Yes);
        assert_eq!(
            mounted(TABLE, Path::new("/srv/data"), (7, 9)),
            Mounted::Other("tmpfs".into())
        );
        // Mounted, but at another place.
        assert_eq!(
            mounted(TABLE, Path::new("/srv/nothing"), (7, 4)),
            Mounted::Elsewhere("/srv/my data".into())
        );
    }
}
