//! `tandem import ...`: reads another cluster manager's files, runs the
//! core's importer, writes the key and the configuration, prints the
//! report, and checks the result as `tandem config validate` does.

use std::net::Ipv4Addr;
use std::path::Path;

use anyhow::{bail, Context, Result};
use tandem_core::import::{heartbeat, keepalived, pacemaker, Imported};

use crate::cli::{ImportHeartbeatArgs, ImportKeepalivedArgs, ImportPacemakerArgs};

/// Largest input file read (heartbeat's files are a few KiB).
const MAX_INPUT_BYTES: u64 = 1 << 20;

fn read(path: &Path) -> Result<String> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    if meta.len() > MAX_INPUT_BYTES {
        bail!(
            "{} is {} bytes: not a configuration file (at most {MAX_INPUT_BYTES})",
            path.display(),
            meta.len()
        );
    }
    std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))
}

/// `NODE:IFACE=IP[/PREFIX]`.
fn parse_address(text: &str) -> Result<tandem_core::import::Address> {
    let bad = || {
        anyhow::anyhow!("--address {text}: write NODE:IFACE=IP or NODE:IFACE=IP/PREFIX, e.g. lnx31:eth0=192.168.1.31/24")
    };
    let (who, addr) = text.split_once('=').ok_or_else(bad)?;
    let (node, interface) = who.split_once(':').ok_or_else(bad)?;
    let (ip, prefix) = match addr.split_once('/') {
        Some((ip, p)) => (
            ip,
            Some(p.parse::<u8>().ok().filter(|p| *p <= 32).ok_or_else(bad)?),
        ),
        None => (addr, None),
    };
    let ip: Ipv4Addr = ip.parse().map_err(|_| bad())?;
    if node.is_empty() || interface.is_empty() {
        return Err(bad());
    }
    Ok(tandem_core::import::Address {
        node: node.into(),
        interface: interface.into(),
        ip,
        prefix,
    })
}

/// What every importer takes: the `--address` flags, and the key's
/// absolute path (the configuration names it so).
fn common(
    addresses: &[String],
    key: &Path,
) -> Result<(Vec<tandem_core::import::Address>, std::path::PathBuf)> {
    let addresses = addresses
        .iter()
        .map(|a| parse_address(a))
        .collect::<Result<Vec<_>>>()?;
    let key = std::path::absolute(key).with_context(|| format!("resolving {}", key.display()))?;
    Ok((addresses, key))
}

/// `tandem import heartbeat DIR`: whether the result passed validation.
pub fn heartbeat(args: &ImportHeartbeatArgs) -> Result<bool> {
    let dir = &args.dir;
    let ha_cf = read(&dir.join("ha.cf"))?;
    // Absent with `crm yes`; the importer says what to do either way.
    let haresources = dir
        .join("haresources")
        .exists()
        .then(|| read(&dir.join("haresources")))
        .transpose()?;
    let authkeys = read(&dir.join("authkeys")).ok();
    let resource_d: Vec<String> = std::fs::read_dir(dir.join("resource.d"))
        .map(|rd| {
            rd.flatten()
                .filter_map(|e| e.file_name().to_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let (addresses, key) = common(&args.addresses, &args.key)?;
    let facts = heartbeat::Facts {
        cluster: args.name.clone(),
        key_file: key.display().to_string(),
        dir: std::path::absolute(dir)
            .unwrap_or_else(|_| dir.clone())
            .display()
            .to_string(),
        resource_d,
        addresses,
    };
    let input = heartbeat::Input {
        ha_cf: &ha_cf,
        haresources: haresources.as_deref(),
        authkeys: authkeys.as_deref(),
    };
    let imported = heartbeat::import(&input, &facts).map_err(|e| anyhow::anyhow!("{e}"))?;
    finish(&imported, &key, args.out.as_deref())
}

/// `tandem import keepalived FILE...`: whether the result passed
/// validation.
pub fn keepalived(args: &ImportKeepalivedArgs) -> Result<bool> {
    let files = args
        .files
        .iter()
        .map(|p| Ok((p.display().to_string(), read(p)?)))
        .collect::<Result<Vec<_>>>()?;
    let (addresses, key) = common(&args.addresses, &args.key)?;
    let facts = keepalived::Facts {
        cluster: args.name.clone(),
        key_file: key.display().to_string(),
        addresses,
    };
    let imported = keepalived::import(&files, &facts).map_err(|e| anyhow::anyhow!("{e}"))?;
    finish(&imported, &key, args.out.as_deref())
}

/// `tandem import pacemaker CIB.xml`: whether the result passed
/// validation.
pub fn pacemaker(args: &ImportPacemakerArgs) -> Result<bool> {
    // A CIB may be larger than the other files (status sections).
    let cib = std::fs::read_to_string(&args.cib)
        .with_context(|| format!("reading {}", args.cib.display()))?;
    let corosync = args.corosync.as_deref().map(read).transpose()?;
    let (addresses, key) = common(&args.addresses, &args.key)?;
    let facts = pacemaker::Facts {
        cluster: args.name.clone(),
        key_file: key.display().to_string(),
        addresses,
    };
    let imported =
        pacemaker::import(&cib, corosync.as_deref(), &facts).map_err(|e| anyhow::anyhow!("{e}"))?;
    finish(&imported, &key, args.out.as_deref())
}

/// Prints the report, then writes the key (if missing) and the
/// configuration, checked; returns whether it passed.
fn finish(imported: &Imported, key: &Path, out: Option<&Path>) -> Result<bool> {
    for line in &imported.report {
        eprintln!("{line}");
    }
    crate::config_cmd::write_new(&with_open_items(imported), key, out)
}

/// The configuration with what was not mapped listed at its top, as
/// comments: the file itself says what it lacks.
fn with_open_items(imported: &Imported) -> String {
    use tandem_core::import::Verdict;
    let open: Vec<String> = imported
        .report
        .iter()
        .filter(|r| r.verdict == Verdict::NotMapped)
        .map(|r| format!("#   {}: {}", r.source, r.text.replace('\n', " ")))
        .collect();
    if open.is_empty() {
        return imported.config.clone();
    }
    format!(
        "# Not mapped (do these by hand before relying on this file):\n{}\n\n{}",
        open.join("\n"),
        imported.config
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_are_read_and_bad_ones_say_how_to_write_them() {
        let a = parse_address("lnx31:eth0=192.168.1.31/24").unwrap();
        assert_eq!((a.node.as_str(), a.interface.as_str()), ("lnx31", "eth0"));
        assert_eq!((a.ip, a.prefix), (Ipv4Addr::new(192, 168, 1, 31), Some(24)));
        assert_eq!(parse_address("n1:eth1=10.0.0.1").unwrap().prefix, None);
        for bad in [
            "n1=10.0.0.1",
            "n1:eth0",
            "n1:eth0=10.0.0.1/40",
            ":eth0=10.0.0.1",
            "n1:eth0=host",
        ] {
            let e = parse_address(bad).unwrap_err().to_string();
            assert!(e.contains("NODE:IFACE=IP"), "{bad}: {e}");
        }
    }
}
