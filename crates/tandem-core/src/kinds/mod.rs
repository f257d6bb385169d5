//! Resource kinds: each one is a file here that defines its fields (with
//! their defaults and descriptions), its checks and what the rest of the
//! configuration may ask of it; the agent's side of each kind is one file
//! in the agent's `kinds` module. The [`registry!`] at the end lists them.
//!
//! A `[[group.resource]]` table is read as `name`, `kind`, `timeout_ms`
//! and a map of the other fields ([`crate::config::schema::Resource`]).
//! Validation hands those to the kind named by `kind` through [`Fields`]:
//! the kind takes the fields it knows, typed and located; whatever is left
//! is refused, as "belongs to another kind" or as unknown (with a "did you
//! mean"). So a typo'd field or a pasted one never goes unnoticed, and no
//! other file lists a kind's fields.

use std::collections::{BTreeMap, BTreeSet};
use std::ops::Range;

use serde::de::DeserializeOwned;
use serde_spanned::Spanned;

use crate::config::schema::ConfigFile;
use crate::config::values::Cidr;
use crate::diagnostic::Diagnostic;

/// Limit on one resource action (start, stop, check) unless `timeout_ms`
/// says otherwise.
pub const DEFAULT_RESOURCE_TIMEOUT_MS: u64 = 20_000;

/// One field of a kind, for checks, messages and documentation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Field {
    /// Its key in the resource's table.
    pub name: &'static str,
    /// What it means, in one sentence.
    pub doc: &'static str,
    /// Its default in words (None: required, or absent means "none").
    pub default: Option<&'static str>,
}

/// A kind's definition: its name, fields and checks. Static: one type per
/// kind, listed in the [`registry!`].
pub trait Kind: Spec + Sized {
    /// Its name in `kind = "..."`.
    const NAME: &'static str;
    /// What it runs, in one line.
    const SUMMARY: &'static str;
    /// The fields it takes (besides `name`, `kind` and `timeout_ms`).
    const FIELDS: &'static [Field];
    /// Reads and checks its fields: None when something is wrong (each
    /// problem is reported through `f`).
    fn check(f: &mut Fields<'_>) -> Option<Self>;
}

/// What the rest of the configuration may ask of a resource of any kind.
/// Every question has a default answer, so a kind answers only those that
/// concern it.
pub trait Spec: std::fmt::Debug {
    /// The resource in one line for `config show` (what it runs).
    fn describe(&self) -> String;
    /// The floating address it holds, if it is one.
    fn floating_address(&self) -> Option<Cidr> {
        None
    }
    /// The cluster link it belongs to, when known.
    fn link(&self) -> Option<&str> {
        None
    }
    /// The `[[volume]]` it promotes, if any: its group can run only where
    /// that volume has a copy.
    fn volume(&self) -> Option<&str> {
        None
    }
    /// The secrets among its fields (credentials in an environment or a
    /// parameter), so that what is shown can be checked to hold none.
    fn secrets(&self) -> Vec<&str> {
        Vec::new()
    }
}

/// A map of names to values with credentials masked (names that
/// [`crate::fence::is_secret`] calls a credential): how a kind's `env` or
/// `params` is written by `config show`.
pub(crate) fn redacted_map<S: serde::Serializer>(
    map: &BTreeMap<String, String>,
    s: S,
) -> Result<S::Ok, S::Error> {
    s.collect_map(map.iter().map(|(k, v)| {
        let shown = if crate::fence::is_secret(k) {
            crate::config::REDACTED
        } else {
            v.as_str()
        };
        (k, shown)
    }))
}

/// What a kind's check can see besides its own fields.
pub struct Context<'a> {
    /// The whole file (links, for example).
    pub file: &'a ConfigFile,
    /// The names of the `[[volume]]`s.
    pub volumes: &'a BTreeSet<String>,
}

/// A resource's own fields, handed to its kind's check: take what the
/// kind knows, typed and with its place in the file.
pub struct Fields<'a> {
    /// The resource's name (errors about a missing field point here).
    name: &'a Spanned<String>,
    /// Its `timeout_ms`, with the default applied.
    timeout_ms: u64,
    /// Where `timeout_ms` was written, if it was.
    timeout_at: Option<Range<usize>>,
    /// What is left to take.
    left: BTreeMap<String, Spanned<toml::Value>>,
    /// Problems found.
    diags: &'a mut Vec<Diagnostic>,
    /// The rest of the configuration.
    pub cx: Context<'a>,
}

impl<'a> Fields<'a> {
    /// The fields of resource `name`, for its kind's check.
    pub(crate) fn new(
        name: &'a Spanned<String>,
        timeout: Option<&Spanned<u64>>,
        fields: BTreeMap<String, Spanned<toml::Value>>,
        diags: &'a mut Vec<Diagnostic>,
        cx: Context<'a>,
    ) -> Fields<'a> {
        Fields {
            name,
            timeout_ms: timeout.map_or(DEFAULT_RESOURCE_TIMEOUT_MS, |t| *t.get_ref()),
            timeout_at: timeout.map(Spanned::span),
            left: fields,
            diags,
            cx,
        }
    }

    /// The resource's name.
    pub fn name(&self) -> &str {
        self.name.get_ref()
    }

    /// Its limit on start and stop, default applied.
    pub fn timeout_ms(&self) -> u64 {
        self.timeout_ms
    }

    /// Where `timeout_ms` was written, if it was.
    pub fn timeout_at(&self) -> Option<Range<usize>> {
        self.timeout_at.clone()
    }

    /// Takes field `key` if present, typed; a value of the wrong type is
    /// reported (as the file's other type errors are) and gives None.
    pub fn take<T: DeserializeOwned>(&mut self, key: &str) -> Option<Spanned<T>> {
        let v = self.left.remove(key)?;
        let at = v.span();
        match T::deserialize(v.into_inner()) {
            Ok(t) => Some(Spanned::new(at, t)),
            Err(e) => {
                let d = crate::config::help::serde_diagnostic(Some(at), &e.to_string());
                self.diags.push(d);
                None
            }
        }
    }

    /// Takes a field the kind cannot do without; its absence is reported
    /// with an example of what to write.
    pub fn require<T: DeserializeOwned>(
        &mut self,
        kind: &str,
        key: &str,
        example: &str,
    ) -> Option<Spanned<T>> {
        if !self.left.contains_key(key) {
            self.error(
                Some(self.name.span()),
                format!("{kind} resource `{}` needs `{key}`", self.name.get_ref()),
                format!("add {example}"),
            );
            return None;
        }
        self.take(key)
    }

    /// Reports a problem.
    pub fn error(
        &mut self,
        at: Option<Range<usize>>,
        msg: impl Into<String>,
        help: impl Into<String>,
    ) {
        self.diags.push(Diagnostic::error(at, msg).with_help(help));
    }

    /// Reports `name` if it is not among `known` (`what`: a volume, a link).
    pub fn unknown_ref(&mut self, what: &str, name: &Spanned<String>, known: &BTreeSet<String>) {
        let context = format!("resource `{}`", self.name.get_ref());
        if let Some(d) = crate::config::help::unknown_ref(what, name, known, &context) {
            self.diags.push(d);
        }
    }

    /// Refuses every field the kind did not take: one that belongs to
    /// another kind says so and lists this kind's fields; an unknown one
    /// gets a "did you mean".
    fn refuse_the_rest(&mut self, kind: &str, own: &[Field]) {
        let own_names: Vec<&str> = own.iter().map(|f| f.name).collect();
        for (key, v) in std::mem::take(&mut self.left) {
            let at = Some(v.span());
            if own_names.contains(&key.as_str()) {
                // The kind's own field, not taken because its check had
                // already failed on another (which it reported).
                continue;
            }
            if KINDS.iter().any(|k| k.fields.iter().any(|f| f.name == key)) {
                let help = if own_names.is_empty() {
                    format!("remove `{key}`")
                } else {
                    format!(
                        "remove `{key}`; a `{kind}` resource takes: {}",
                        own_names.join(", ")
                    )
                };
                self.error(
                    at,
                    format!("field `{key}` does not apply to a resource of kind `{kind}`"),
                    help,
                );
                continue;
            }
            let mut choices: Vec<String> = ["name", "kind", "timeout_ms"]
                .iter()
                .chain(own_names.iter())
                .map(|s| s.to_string())
                .collect();
            choices.dedup();
            let help = match crate::config::help::closest(&key, &choices) {
                Some(best) => format!(
                    "did you mean `{best}`? A `{kind}` resource takes: {}",
                    choices.join(", ")
                ),
                None => format!(
                    "remove `{key}`; a `{kind}` resource takes: {}",
                    choices.join(", ")
                ),
            };
            self.error(
                at,
                format!(
                    "unknown field `{key}` in resource `{}`",
                    self.name.get_ref()
                ),
                help,
            );
        }
    }
}

/// One kind as the registry lists it.
#[derive(Debug, Clone, Copy)]
pub struct KindInfo {
    /// Its name in `kind = "..."`.
    pub name: &'static str,
    /// What it runs, in one line.
    pub summary: &'static str,
    /// Its fields.
    pub fields: &'static [Field],
}

/// Declares the kinds: one module and type per line. Generates [`Params`]
/// (a resource's typed fields, one variant per kind), [`KINDS`] and the
/// dispatch from a kind's name to its check.
macro_rules! registry {
    ($($module:ident :: $ty:ident),* $(,)?) => {
        $(pub mod $module;)*

        /// A resource's kind with its typed fields, defaults applied. It
        /// serializes as the file writes it: `kind` and the kind's fields
        /// (each variant's name in lower case is the kind's name, which a
        /// test checks).
        #[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
        #[serde(tag = "kind", rename_all = "lowercase")]
        pub enum Params {
            $(
                #[doc = concat!("A `", stringify!($module), "` resource.")]
                $ty($module::$ty),
            )*
        }

        /// Every kind this version runs, in the registry's order.
        pub const KINDS: &[KindInfo] = &[$(KindInfo {
            name: <$module::$ty as Kind>::NAME,
            summary: <$module::$ty as Kind>::SUMMARY,
            fields: <$module::$ty as Kind>::FIELDS,
        }),*];

        impl Params {
            /// The kind's name.
            pub fn kind(&self) -> &'static str {
                match self {
                    $(Params::$ty(_) => <$module::$ty as Kind>::NAME,)*
                }
            }

            /// What the rest of the configuration may ask of it.
            pub fn spec(&self) -> &dyn Spec {
                match self {
                    $(Params::$ty(p) => p,)*
                }
            }

            /// Runs kind `kind`'s check over `f` and refuses what it left;
            /// None when no kind has that name.
            pub(crate) fn check(kind: &str, f: &mut Fields<'_>) -> Option<Option<Params>> {
                $(
                    if kind == <$module::$ty as Kind>::NAME {
                        let before = f.diags.len();
                        let p = <$module::$ty as Kind>::check(f).map(Params::$ty);
                        f.refuse_the_rest(kind, <$module::$ty as Kind>::FIELDS);
                        if p.is_none() && f.diags.len() == before {
                            // A resource must never vanish from a valid
                            // configuration: a check that refuses says why.
                            let at = Some(f.name.span());
                            let name = f.name().to_string();
                            f.error(
                                at,
                                format!("resource `{name}` of kind `{kind}` was refused without a reason"),
                                "this is a bug in Tandem's check of this kind: please report it with this configuration",
                            );
                        }
                        return Some(p);
                    }
                )*
                None
            }
        }
    };
}

registry! {
    ip::Ip,
    process::Process,
    exec::Exec,
    volume::Volume,
    ocf::Ocf,
    systemd::Systemd,
    fs::Fs,
    filesync::Filesync,
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The operator's reference names every kind and every field.
    #[test]
    fn config_reference_documents_every_kind_and_field() {
        let doc = include_str!(concat!(env!("CARGO_MANIFEST_DIR"), "/../../docs/CONFIG.md"));
        for k in KINDS {
            assert!(
                doc.contains(&format!("`{}`", k.name)),
                "CONFIG.md lacks kind {}",
                k.name
            );
            for f in k.fields {
                assert!(
                    doc.contains(&format!("`{}`", f.name)),
                    "CONFIG.md lacks field {} of kind {}",
                    f.name,
                    k.name
                );
            }
        }
    }

    /// `Params` serializes each kind under its name, as `kind = "..."`
    /// reads it.
    #[test]
    fn params_serialize_under_the_kinds_name() {
        let all = [
            Params::Ip(ip::Ip {
                address: "10.0.0.1/24".parse().unwrap(),
                interfaces: vec![],
                link: None,
            }),
            Params::Process(process::Process {
                command: vec!["/bin/x".into()],
                stop_signal: "TERM".into(),
                kill_after_ms: 1,
                working_dir: None,
                env: BTreeMap::new(),
            }),
            Params::Exec(exec::Exec {
                script: "/bin/x".into(),
                args: vec![],
                status_from: exec::StatusFrom::Exit,
            }),
            Params::Volume(volume::Volume { volume: "v".into() }),
            Params::Ocf(ocf::Ocf {
                agent: "ocf:heartbeat:Dummy".into(),
                params: BTreeMap::new(),
                ocf_root: ocf::DEFAULT_OCF_ROOT.into(),
                check_interval_ms: ocf::DEFAULT_OCF_CHECK_INTERVAL_MS,
                check_level: None,
                promotable: false,
                notify: false,
                floating: None,
                link: None,
            }),
            Params::Systemd(systemd::Systemd {
                unit: "a.service".into(),
                bus: None,
                dropin_dir: systemd::DEFAULT_DROPIN_DIR.into(),
            }),
            Params::Fs(fs::Fs {
                source: fs::Source::Device("/dev/sdb1".into()),
                directory: "/srv".into(),
                fstype: "ext4".into(),
                options: String::new(),
                fsck: false,
            }),
            Params::Filesync(filesync::Filesync {
                paths: vec!["/etc/app".into()],
                link: "lan".into(),
                port: filesync::DEFAULT_FILESYNC_PORT,
                interval_ms: filesync::DEFAULT_FILESYNC_INTERVAL_MS,
                max_file_bytes: filesync::DEFAULT_MAX_FILE_BYTES,
            }),
        ];
        assert_eq!(all.len(), KINDS.len(), "a kind is missing here");
        for p in all {
            let v = serde_json::to_value(&p).unwrap();
            assert_eq!(v["kind"], p.kind(), "{v}");
        }
    }

    #[test]
    fn kind_names_are_unique_and_fields_are_documented() {
        let mut names = BTreeSet::new();
        for k in KINDS {
            assert!(names.insert(k.name), "kind {} listed twice", k.name);
            assert!(!k.summary.is_empty(), "kind {} has no summary", k.name);
            let mut fields = BTreeSet::new();
            for f in k.fields {
                assert!(fields.insert(f.name), "{}: field {} twice", k.name, f.name);
                assert!(
                    !f.doc.is_empty(),
                    "{}: field {} undocumented",
                    k.name,
                    f.name
                );
                assert!(
                    !["name", "kind", "timeout_ms", "on_fail"].contains(&f.name),
                    "{}: `{}` is common to every kind",
                    k.name,
                    f.name
                );
            }
        }
    }
}
