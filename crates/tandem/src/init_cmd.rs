//! `tandem init`: reads the flags and this machine's addresses, runs the
//! core's `init`, then writes the key and the configuration, checked.

use std::net::Ipv4Addr;
use std::path::PathBuf;

use anyhow::{anyhow, bail, Context, Result};
use tandem_core::init::{init, InitSpec, LocalAddress, Service};

use crate::cli::InitArgs;

/// This machine's IPv4 addresses with their prefixes (`getifaddrs`).
fn local_addresses() -> Vec<LocalAddress> {
    let mut out = Vec::new();
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills `head` with a list freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        return out;
    }
    let mut p = head;
    // Bounded: an interface list, never more than this.
    for _ in 0..4096 {
        if p.is_null() {
            break;
        }
        // SAFETY: `p` is a node of the list getifaddrs returned.
        let ifa = unsafe { &*p };
        p = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_netmask.is_null() {
            continue;
        }
        // SAFETY: a non-null sockaddr of the list; its family says its type.
        let family = i32::from(unsafe { (*ifa.ifa_addr).sa_family });
        if family != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET addresses are sockaddr_in, as is their netmask.
        let (addr, mask) = unsafe {
            (
                *(ifa.ifa_addr as *const libc::sockaddr_in),
                *(ifa.ifa_netmask as *const libc::sockaddr_in),
            )
        };
        // SAFETY: ifa_name is a NUL-terminated string of the list.
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        let prefix = u32::from_be(mask.sin_addr.s_addr).count_ones();
        out.push(LocalAddress {
            interface: name,
            ip: Ipv4Addr::from(u32::from_be(addr.sin_addr.s_addr)),
            prefix: u8::try_from(prefix).unwrap_or(32),
        });
    }
    // SAFETY: the list getifaddrs returned, freed once.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// `NAME=IP[,IP]`.
fn parse_node(text: &str) -> Result<(String, Vec<Ipv4Addr>)> {
    let bad = || {
        anyhow!(
            "--node {text}: write NAME=ADDRESS or NAME=LAN_ADDRESS,SYNC_ADDRESS, e.g. n1=10.0.0.11"
        )
    };
    let (name, addrs) = text.split_once('=').ok_or_else(bad)?;
    if name.is_empty() {
        return Err(bad());
    }
    let addrs = addrs
        .split(',')
        .map(|a| a.trim().parse::<Ipv4Addr>().map_err(|_| bad()))
        .collect::<Result<Vec<_>>>()?;
    Ok((name.to_string(), addrs))
}

/// `tandem init`: whether the result passed validation.
pub fn run(args: &InitArgs) -> Result<bool> {
    let nodes = args
        .nodes
        .iter()
        .map(|n| parse_node(n))
        .collect::<Result<Vec<_>>>()?;
    let vip = match &args.vip {
        None => None,
        Some(v) => {
            let (ip, p) = v
                .split_once('/')
                .ok_or_else(|| anyhow!("--vip {v}: write IP/PREFIX, e.g. 10.0.0.100/24"))?;
            let ip: Ipv4Addr = ip
                .parse()
                .map_err(|_| anyhow!("--vip {v}: `{ip}` is not an IPv4 address"))?;
            let p: u8 = p
                .parse()
                .ok()
                .filter(|p| *p <= 32)
                .ok_or_else(|| anyhow!("--vip {v}: the prefix is 0 to 32"))?;
            Some((ip, p))
        }
    };
    let services = args
        .services
        .iter()
        .map(|s| Service::parse(s).map_err(|e| anyhow!(e)))
        .collect::<Result<Vec<_>>>()?;
    let key = args
        .key
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("/etc/tandem/{}.key", args.name)));
    let key = std::path::absolute(&key).with_context(|| format!("resolving {}", key.display()))?;
    let spec = InitSpec {
        cluster: args.name.clone(),
        key_file: key.display().to_string(),
        links: args.links.clone(),
        nodes,
        witness: args.witness,
        vip,
        services,
        group: args.group.clone(),
        local: local_addresses(),
    };
    let (config, notes) = init(&spec).map_err(|e| anyhow!("{e}"))?;
    if let Some(dir) = key.parent() {
        if !dir.exists() {
            bail!(
                "{} does not exist: create it (mode 0700) or give --key FILE elsewhere",
                dir.display()
            );
        }
    }
    for n in notes {
        eprintln!("found      {n}");
    }
    crate::config_cmd::write_new(&config, &key, args.out.as_deref())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nodes_are_read_and_bad_ones_say_how_to_write_them() {
        let (n, a) = parse_node("n1=10.0.0.11,10.1.0.11").unwrap();
        assert_eq!((n.as_str(), a.len()), ("n1", 2));
        for bad in ["n1", "=10.0.0.1", "n1=host", "n1=10.0.0.1,"] {
            assert!(
                parse_node(bad)
                    .unwrap_err()
                    .to_string()
                    .contains("NAME=ADDRESS"),
                "{bad}"
            );
        }
    }

    #[test]
    fn this_machine_has_its_loopback_address() {
        assert!(local_addresses()
            .iter()
            .any(|a| a.ip == Ipv4Addr::LOCALHOST && a.prefix == 8));
    }
}
