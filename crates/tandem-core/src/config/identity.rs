//! A configuration's identity: a hash of what it says, not of how it is
//! written. Whitespace, comments, key order within a table, quoting and
//! defaults written out do not count; every effective value does. Each top-level section (`cluster`, `link`,
//! `node`, `group`, ...) has a hash of its own, so that two nodes can tell
//! which sections differ without exchanging the files.

use serde::Serialize;

use super::model::Config;

/// Hex digits kept of each hash (64 bits: an identity, not a MAC).
const SHOWN: usize = 16;

/// The identity of one configuration file.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize)]
pub struct Identity {
    /// Hash of the whole configuration (its sections' hashes, in order).
    pub hash: String,
    /// Per top-level section, sorted by name: (section, hash).
    pub sections: Vec<(String, String)>,
}

impl Identity {
    /// The sections whose hashes differ between `self` and `other`
    /// (present in one only, or with another hash).
    pub fn differing(&self, other: &[(String, String)]) -> Vec<String> {
        let mut names: Vec<&String> = self
            .sections
            .iter()
            .map(|s| &s.0)
            .chain(other.iter().map(|s| &s.0))
            .collect();
        names.sort();
        names.dedup();
        names
            .into_iter()
            .filter(|n| {
                let mine = self.sections.iter().find(|s| &s.0 == *n).map(|s| &s.1);
                let theirs = other.iter().find(|s| &s.0 == *n).map(|s| &s.1);
                mine != theirs
            })
            .cloned()
            .collect()
    }
}

fn short(h: blake3::Hash) -> String {
    h.to_hex()[..SHOWN].to_string()
}

/// The identity of a configuration: a hash of its model (every default
/// applied, so writing a default out changes nothing), section by section
/// as the file names them. Secrets are hashed too, though the model's
/// serialized form hides them: a new fence password is a new identity.
pub fn of(cfg: &Config) -> Identity {
    let value = match serde_json::to_value(cfg) {
        Ok(serde_json::Value::Object(map)) => map,
        // The model always serializes to an object: a hash of nothing
        // would make every configuration look alike, so hash its debug
        // form instead.
        _ => {
            let mut m = serde_json::Map::new();
            m.insert("model".into(), format!("{cfg:?}").into());
            m
        }
    };
    let secrets = cfg.secrets();
    let mut sections: Vec<(String, String)> = value
        .iter()
        .map(|(name, v)| {
            // serde_json writes maps in their (sorted) key order: a
            // canonical form of the values.
            let canonical = serde_json::to_vec(v).unwrap_or_default();
            let mut h = blake3::Hasher::new();
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(&canonical);
            for (_, secret) in secrets.iter().filter(|(section, _)| section == name) {
                h.update(secret.as_bytes());
                h.update(b"\n");
            }
            (name.clone(), short(h.finalize()))
        })
        .collect();
    sections.sort();
    let mut h = blake3::Hasher::new();
    for (name, hash) in &sections {
        h.update(name.as_bytes());
        h.update(b"=");
        h.update(hash.as_bytes());
        h.update(b"\n");
    }
    Identity {
        hash: short(h.finalize()),
        sections,
    }
}

/// A key's fingerprint, safe to show: it names the key without revealing
/// it (a keyed hash with a fixed context, 64 bits).
pub fn key_fingerprint(key: &[u8; 32]) -> String {
    let h = blake3::derive_key("tandem cluster key fingerprint v1", key);
    blake3::Hash::from(h).to_hex()[..SHOWN].to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = r#"
[cluster]
name = "web"   # the cluster
key_file = "k.key"

[[link]]
name = "lan"

[[node]]
name = "n1"
addresses = { lan = "10.0.0.1" }

[[fence_device]]
name = "f"
agent = "/usr/sbin/fence_x"
hosts = { n1 = "1" }
options = { password = "one" }

[[group]]
name = "web"

[[group.resource]]
name = "d"
kind = "process"
command = ["/bin/d"]
"#;

    fn id(text: &str) -> Identity {
        let facts = |_: &std::path::Path| crate::config::KeyFileFacts::Present {
            len: 32,
            mode: 0o600,
        };
        let l = crate::config::load(text, std::path::Path::new("/etc/tandem"), &facts);
        of(l.config
            .as_ref()
            .unwrap_or_else(|| panic!("{:?}", l.diagnostics)))
    }

    #[test]
    fn whitespace_comments_key_order_and_written_defaults_do_not_count() {
        let b = "[cluster]\nkey_file='k.key'\nname =    \"web\"\n[[link]]\nport = 5405\nname=\"lan\"\n[[node]]\naddresses={lan=\"10.0.0.1\"}\nname=\"n1\"\n[[fence_device]]\nname = \"f\"\nagent = \"/usr/sbin/fence_x\"\nhosts = { n1 = \"1\" }\noptions = { password = \"one\" }\nlevel = 1\n[[group]]\nname = \"web\"\nfailback = \"manual\"\n[[group.resource]]\nkind = \"process\"\nname = \"d\"\ncommand = [\"/bin/d\"]\ntimeout_ms = 20000\n";
        assert_eq!(id(A), id(b));
    }

    #[test]
    fn a_changed_value_changes_the_hash_and_names_its_section() {
        let extra = format!("{A}\n[[group]]\nname = \"db\"\n[[group.resource]]\nname = \"x\"\nkind = \"process\"\ncommand = [\"/bin/x\"]\n");
        let (a, b) = (id(A), id(&extra));
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.differing(&b.sections), vec!["group".to_string()]);
        let c = id(&A.replace("10.0.0.1", "10.0.0.9"));
        assert_eq!(a.differing(&c.sections), vec!["node".to_string()]);
        let d = id(&format!("{A}\n[timing]\nprofile = \"relaxed\"\n"));
        assert_eq!(a.differing(&d.sections), vec!["timing".to_string()]);
        // A secret is hashed, though it is never shown.
        let e = id(&A.replace("\"one\"", "\"two\""));
        assert_eq!(a.differing(&e.sections), vec!["fence_device".to_string()]);
    }

    #[test]
    fn key_fingerprints_differ_by_key_and_do_not_show_it() {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        assert_ne!(key_fingerprint(&k1), key_fingerprint(&k2));
        assert_eq!(key_fingerprint(&k1), key_fingerprint(&k1));
        assert_eq!(key_fingerprint(&k1).len(), 16);
    }
}
