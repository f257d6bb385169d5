//! The x509 credentials of an NBD export served over TLS.
//!
//! One directory per node, laid out as qemu's `tls-creds-x509` and
//! libnbd's `tls-certificates` expect, so one CA serves the cluster and
//! its clients alike:
//!
//! - `ca-cert.pem`: the CA that signed this node's certificate and every
//!   client's; a client must present a certificate it signed;
//! - `server-cert.pem`: this node's certificate (with the addresses
//!   clients connect to, the floating one included, as IP SANs);
//! - `server-key.pem`: its private key (kept 0600).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use anyhow::{bail, Context, Result};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// The CA file in the credentials directory.
pub const CA_CERT: &str = "ca-cert.pem";
/// This node's certificate.
pub const SERVER_CERT: &str = "server-cert.pem";
/// This node's private key.
pub const SERVER_KEY: &str = "server-key.pem";

/// Loaded credentials: what the TCP export needs to run TLS.
#[derive(Clone)]
pub struct NbdTls {
    /// Where they were read from (for messages).
    pub dir: PathBuf,
    /// Accepts TLS connections; requires and verifies client certificates.
    pub acceptor: tokio_rustls::TlsAcceptor,
}

/// Written by hand: the acceptor holds the private key.
impl std::fmt::Debug for NbdTls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("NbdTls")
            .field("dir", &self.dir)
            .finish_non_exhaustive()
    }
}

impl NbdTls {
    /// Reads the credentials in `dir`. Every failure names the file and
    /// what to do.
    pub fn load(dir: &Path) -> Result<NbdTls> {
        let hint = "create the CA, server and client certificates as CONFIG.md says under \"NBD over TLS\"";
        let file = |name: &str| dir.join(name);
        let ca = CertificateDer::pem_file_iter(file(CA_CERT))
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading {}; {hint}", file(CA_CERT).display()))?;
        let mut roots = rustls::RootCertStore::empty();
        for c in ca {
            roots.add(c).with_context(|| {
                format!(
                    "{} holds an unusable CA certificate",
                    file(CA_CERT).display()
                )
            })?;
        }
        if roots.is_empty() {
            bail!("{} holds no certificate; {hint}", file(CA_CERT).display());
        }
        let chain = CertificateDer::pem_file_iter(file(SERVER_CERT))
            .and_then(|i| i.collect::<Result<Vec<_>, _>>())
            .with_context(|| format!("reading {}; {hint}", file(SERVER_CERT).display()))?;
        if chain.is_empty() {
            bail!(
                "{} holds no certificate; {hint}",
                file(SERVER_CERT).display()
            );
        }
        let key_path = file(SERVER_KEY);
        refuse_readable_key(&key_path)?;
        let key = PrivateKeyDer::from_pem_file(&key_path)
            .with_context(|| format!("reading the private key {}; {hint}", key_path.display()))?;
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
            Arc::new(roots),
            provider.clone(),
        )
        .build()
        .with_context(|| format!("using {} to verify clients", file(CA_CERT).display()))?;
        let config = rustls::ServerConfig::builder_with_provider(provider)
            .with_safe_default_protocol_versions()
            .context("choosing TLS versions")?
            .with_client_cert_verifier(verifier)
            .with_single_cert(chain, key)
            .with_context(|| {
                format!(
                    "{} and {} do not make a usable server identity (does the key match the certificate?)",
                    file(SERVER_CERT).display(),
                    key_path.display()
                )
            })?;
        Ok(NbdTls {
            dir: dir.to_path_buf(),
            acceptor: tokio_rustls::TlsAcceptor::from(Arc::new(config)),
        })
    }
}

/// A private key others can read is no longer private: refuse it rather
/// than serve with it.
fn refuse_readable_key(path: &Path) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    crate::keyfile::refuse_readable(&meta, path, "the private key")
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_testbed::x509::Ca;

    fn credentials() -> (tempfile::TempDir, PathBuf) {
        let dir = tempfile::tempdir().unwrap_or_else(|e| panic!("{e}"));
        let ca = Ca::create(&dir.path().join("ca"), "test-ca").unwrap_or_else(|e| panic!("{e:#}"));
        let server = ca
            .issue(&dir.path().join("server"), "server", &["127.0.0.1"])
            .unwrap_or_else(|e| panic!("{e:#}"));
        (dir, server)
    }

    #[test]
    fn credentials_in_the_qemu_layout_load() {
        let (_dir, server) = credentials();
        let tls = NbdTls::load(&server).unwrap_or_else(|e| panic!("{e:#}"));
        assert!(!format!("{tls:?}").contains("BEGIN"));
    }

    #[test]
    fn a_key_other_users_can_read_is_refused() {
        use std::os::unix::fs::PermissionsExt;
        let (_dir, server) = credentials();
        let key = server.join(SERVER_KEY);
        std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644))
            .unwrap_or_else(|e| panic!("{e}"));
        let e = format!(
            "{:#}",
            NbdTls::load(&server)
                .err()
                .unwrap_or_else(|| panic!("loaded"))
        );
        assert!(e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn a_missing_file_is_named_with_what_to_do() {
        let (_dir, server) = credentials();
        std::fs::remove_file(server.join(CA_CERT)).unwrap_or_else(|e| panic!("{e}"));
        let e = format!(
            "{:#}",
            NbdTls::load(&server)
                .err()
                .unwrap_or_else(|| panic!("loaded"))
        );
        assert!(e.contains(CA_CERT) && e.contains("CONFIG.md"), "{e}");
    }
}
