//! A configuration's identity: a hash of what it says, not of how it is
//! written. Whitespace, comments, key order within a table and quoting do
//! not count; every value does. Each top-level section (`cluster`, `link`,
//! `node`, `group`, ...) has a hash of its own, so that two nodes can tell
//! which sections differ without exchanging the files.

use serde::Serialize;

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

/// The identity of a configuration file's text (its TOML syntax must be
/// valid; nothing else is checked here).
pub fn identity(source: &str) -> Result<Identity, String> {
    let table: toml::Table = toml::from_str(source).map_err(|e| e.to_string())?;
    let mut sections: Vec<(String, String)> = table
        .iter()
        .map(|(name, value)| {
            // serde_json writes maps in their (sorted) key order: a
            // canonical form of the parsed values.
            let canonical = serde_json::to_vec(value).unwrap_or_default();
            let mut h = blake3::Hasher::new();
            h.update(name.as_bytes());
            h.update(b"\0");
            h.update(&canonical);
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
    Ok(Identity {
        hash: short(h.finalize()),
        sections,
    })
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

[[node]]
name = "n1"
addresses = { lan = "10.0.0.1" }

[[group]]
name = "web"
"#;

    #[test]
    fn whitespace_comments_and_key_order_do_not_count() {
        let b = "[cluster]\nkey_file='k.key'\nname =    \"web\"\n\n[[node]]\naddresses={lan=\"10.0.0.1\"}\nname=\"n1\"\n[[group]]\nname = \"web\"\n";
        assert_eq!(identity(A).unwrap(), identity(b).unwrap());
    }

    #[test]
    fn a_changed_value_changes_the_hash_and_names_its_section() {
        let extra = format!("{A}\n[[group]]\nname = \"db\"\n");
        let (a, b) = (identity(A).unwrap(), identity(&extra).unwrap());
        assert_ne!(a.hash, b.hash);
        assert_eq!(a.differing(&b.sections), vec!["group".to_string()]);
        let c = identity(&A.replace("10.0.0.1", "10.0.0.9")).unwrap();
        assert_eq!(a.differing(&c.sections), vec!["node".to_string()]);
        let d = identity(&format!("{A}\n[timing]\nprofile = \"relaxed\"\n")).unwrap();
        assert_eq!(a.differing(&d.sections), vec!["timing".to_string()]);
    }

    #[test]
    fn key_fingerprints_differ_by_key_and_do_not_show_it() {
        let (k1, k2) = ([1u8; 32], [2u8; 32]);
        assert_ne!(key_fingerprint(&k1), key_fingerprint(&k2));
        assert_eq!(key_fingerprint(&k1), key_fingerprint(&k1));
        assert_eq!(key_fingerprint(&k1).len(), 16);
    }
}
