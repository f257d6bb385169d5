//! x509 credentials for TLS tests, made with the `openssl` command in
//! the layout qemu (`tls-creds-x509`) and libnbd (`tls-certificates`)
//! read, which is also the layout Tandem's NBD export reads:
//!
//! - server directory: `ca-cert.pem`, `server-cert.pem`, `server-key.pem`;
//! - client directory: `ca-cert.pem`, `client-cert.pem`, `client-key.pem`.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

/// A certificate authority on disk.
#[derive(Debug, Clone)]
pub struct Ca {
    /// `ca-cert.pem`.
    pub cert: PathBuf,
    /// Its key.
    pub key: PathBuf,
}

fn openssl(args: &[&str], extensions: Option<(&Path, &str)>) -> Result<()> {
    if let Some((path, text)) = extensions {
        std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    }
    let out = Command::new("openssl")
        .args(args)
        .output()
        .context("running openssl (Debian package `openssl`)")?;
    if !out.status.success() {
        bail!(
            "openssl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn private(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("chmod 600 {}", path.display()))
}

impl Ca {
    /// A new self-signed CA in `dir` (created), named `name`.
    pub fn create(dir: &Path, name: &str) -> Result<Ca> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let cert = dir.join("ca-cert.pem");
        let key = dir.join("ca-key.pem");
        let (c, k) = (cert.display().to_string(), key.display().to_string());
        openssl(
            &[
                "req",
                "-x509",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-days",
                "2",
                "-subj",
                &format!("/CN={name}"),
                "-keyout",
                &k,
                "-out",
                &c,
                "-addext",
                "basicConstraints=critical,CA:TRUE",
                "-addext",
                "keyUsage=critical,keyCertSign,cRLSign",
            ],
            None,
        )?;
        private(&key)?;
        Ok(Ca { cert, key })
    }

    /// Issues a certificate for `role` (`server` or `client`) into `dir`
    /// (created) as `ROLE-cert.pem` and `ROLE-key.pem`, with the CA's
    /// certificate beside them as `ca-cert.pem`. A server certificate
    /// names `ips` as its IP addresses (the ones clients dial).
    pub fn issue(&self, dir: &Path, role: &str, ips: &[&str]) -> Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let key = dir.join(format!("{role}-key.pem"));
        let cert = dir.join(format!("{role}-cert.pem"));
        let csr = dir.join(format!("{role}.csr"));
        let ext = dir.join(format!("{role}.ext"));
        let usage = if role == "server" {
            "serverAuth"
        } else {
            "clientAuth"
        };
        let mut text = format!(
            "basicConstraints=critical,CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\nextendedKeyUsage={usage}\n"
        );
        if !ips.is_empty() {
            let sans: Vec<String> = ips.iter().map(|i| format!("IP:{i}")).collect();
            text.push_str(&format!("subjectAltName={}\n", sans.join(",")));
        }
        let s = |p: &Path| p.display().to_string();
        openssl(
            &[
                "req",
                "-newkey",
                "rsa:2048",
                "-nodes",
                "-subj",
                &format!("/CN=tandem-{role}"),
                "-keyout",
                &s(&key),
                "-out",
                &s(&csr),
            ],
            None,
        )?;
        private(&key)?;
        openssl(
            &[
                "x509",
                "-req",
                "-in",
                &s(&csr),
                "-CA",
                &s(&self.cert),
                "-CAkey",
                &s(&self.key),
                "-CAcreateserial",
                "-days",
                "2",
                "-out",
                &s(&cert),
                "-extfile",
                &s(&ext),
            ],
            Some((&ext, &text)),
        )?;
        let ca_here = dir.join("ca-cert.pem");
        if ca_here != self.cert {
            std::fs::copy(&self.cert, &ca_here)
                .with_context(|| format!("copying the CA certificate into {}", dir.display()))?;
        }
        Ok(dir.to_path_buf())
    }
}
