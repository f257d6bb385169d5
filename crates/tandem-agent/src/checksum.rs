//! A checksum header for files the agent writes and trusts on the next
//! start (state file, volume metadata and bitmap): one line,
//! `<kind> blake3=<64 hex digits>`, the BLAKE3 hash of the bytes after it.
//! Bit rot, a torn copy or a hand edit is then refused with a clear error
//! instead of being acted on.

/// Why sealed bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Damage {
    /// No header line: written by a version without checksums (or not
    /// this kind of file).
    #[error(
        "it has no checksum (written by a version before checksums, or not this kind of file)"
    )]
    NoChecksum,
    /// The checksum does not match the contents.
    #[error("its checksum does not match its contents (edited or corrupted on disk)")]
    Mismatch,
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// `payload` behind a header of `kind` (a short name without newlines).
pub fn seal(kind: &str, payload: &[u8]) -> Vec<u8> {
    let mut out = format!("{kind} blake3={}\n", hex(blake3::hash(payload).as_bytes())).into_bytes();
    out.extend_from_slice(payload);
    out
}

/// The payload of `bytes` sealed as `kind`, if its hash matches.
pub fn open<'a>(kind: &str, bytes: &'a [u8]) -> Result<&'a [u8], Damage> {
    let prefix = format!("{kind} blake3=");
    let Some(rest) = bytes.strip_prefix(prefix.as_bytes()) else {
        return Err(Damage::NoChecksum);
    };
    let nl = rest
        .iter()
        .position(|b| *b == b'\n')
        .ok_or(Damage::Mismatch)?;
    let (want, payload) = (&rest[..nl], &rest[nl + 1..]);
    // Not a secret: a plain comparison is fine.
    if want != hex(blake3::hash(payload).as_bytes()).as_bytes() {
        return Err(Damage::Mismatch);
    }
    Ok(payload)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sealed_bytes_open_and_any_flipped_bit_is_refused() {
        let sealed = seal("tandem-test 1", b"{\"a\":1}");
        assert_eq!(open("tandem-test 1", &sealed), Ok(&b"{\"a\":1}"[..]));
        for i in 0..sealed.len() {
            let mut b = sealed.clone();
            b[i] ^= 0x01;
            assert!(open("tandem-test 1", &b).is_err(), "byte {i}");
        }
        assert_eq!(open("tandem-other 1", &sealed), Err(Damage::NoChecksum));
        assert_eq!(open("tandem-test 1", b"{\"a\":1}"), Err(Damage::NoChecksum));
        assert_eq!(
            open("tandem-test 1", b"tandem-test 1 blake3="),
            Err(Damage::Mismatch)
        );
    }
}
