//! `ip`: a floating address added and removed with netlink on the first
//! interface of its preference list that has carrier (default: the
//! interface already holding an address in the same subnet), announced
//! with gratuitous ARP / unsolicited NA on takeover and again a few times
//! after, and moved to the next interface when its own loses carrier.
//! Its actions run inline: netlink answers at once, and a node whose lease
//! ended must drop its addresses before it does anything else.

use std::net::IpAddr;

use tandem_core::config::values::Cidr;
use tandem_core::group::{ActionKind, Outcome};
use tandem_core::kinds::ip::Ip;

use super::{Act, BindError, Bind, Driver, Health};
use crate::guard::Leaving;
use super::Resource;
use crate::child::Owner;
use crate::{announce, netlink};

/// Announcements after a takeover (ms after the address is added).
pub const ANNOUNCE_AT_MS: [u64; 5] = [0, 50, 250, 1_000, 3_000];

/// A floating address on this node.
#[derive(Debug, Clone)]
pub struct IpDriver {
    /// Address and prefix.
    pub address: Cidr,
    /// Interfaces in order of preference (empty: by subnet).
    pub interfaces: Vec<String>,
}

/// The agent's side of an `ip` resource.
pub fn bind(p: &Ip, _cx: &Bind<'_>) -> Result<Box<dyn Driver>, BindError> {
    Ok(Box::new(IpDriver {
        address: p.address,
        interfaces: p.interfaces.clone(),
    }))
}

impl Driver for IpDriver {
    fn kind(&self) -> &'static str {
        "ip"
    }

    fn action<'a>(&'a self, _r: &'a Resource, action: ActionKind) -> Act<'a> {
        let outcome = ip_action(self, action);
        Box::pin(async move { outcome })
    }

    fn inline_action(&self, action: ActionKind) -> Option<Outcome> {
        Some(ip_action(self, action))
    }

    fn check_inline(&self) -> Option<Health> {
        Some(match ip_check(self) {
            IpCheck::Fine => Health::Fine,
            IpCheck::Moved(from, to) => Health::Note(format!(
                "moved {} from {from} to {to} (interface preference)",
                self.address.addr
            )),
            IpCheck::Failed(why) => Health::Failed(why),
        })
    }

    fn guard(&self, _owner: &Owner, part: &mut Leaving) {
        part.addresses
            .push((self.address.addr, self.address.prefix_len));
    }

    fn announce(&self) {
        ip_announce(self);
    }
}

fn same_subnet(a: IpAddr, b: IpAddr, prefix: u8) -> bool {
    match (a, b) {
        (IpAddr::V4(a), IpAddr::V4(b)) => {
            let m = if prefix == 0 {
                0
            } else {
                u32::MAX << (32 - u32::from(prefix.min(32)))
            };
            u32::from(a) & m == u32::from(b) & m
        }
        (IpAddr::V6(a), IpAddr::V6(b)) => {
            let m = if prefix == 0 {
                0
            } else {
                u128::MAX << (128 - u32::from(prefix.min(128)))
            };
            u128::from(a) & m == u128::from(b) & m
        }
        _ => false,
    }
}

/// Why an address could not be placed, found or moved.
#[derive(Debug, thiserror::Error)]
pub enum IpError {
    /// Asking the kernel failed.
    #[error(transparent)]
    Netlink(#[from] netlink::NetlinkError),
    /// No interface of the preference list has carrier.
    #[error("none of the interfaces {} has carrier", interfaces.join(", "))]
    NoCarrier {
        /// The preference list.
        interfaces: Vec<String>,
    },
    /// No interface holds an address in the floating address's subnet.
    #[error("no interface has an address in {address}'s subnet; set `interfaces` on the resource")]
    NoSubnet {
        /// The floating address.
        address: Cidr,
    },
    /// The interface went away while it was chosen.
    #[error("the interface vanished")]
    Vanished,
    /// The interface holding the subnet has no carrier.
    #[error("interface {name} has no carrier")]
    Down {
        /// The interface.
        name: String,
    },
    /// Adding the address failed.
    #[error("on {interface}: {source}")]
    Add {
        /// The interface.
        interface: String,
        /// The kernel's answer.
        source: netlink::NetlinkError,
    },
}

/// The interface the address should be on now: the first preferred one
/// with carrier, or (no list) the one with an address in its subnet.
pub fn ip_choose(ip: &IpDriver) -> Result<netlink::Link, IpError> {
    let links = netlink::links()?;
    if !ip.interfaces.is_empty() {
        return ip
            .interfaces
            .iter()
            .filter_map(|name| links.iter().find(|l| &l.name == name))
            .find(|l| l.carrier)
            .cloned()
            .ok_or_else(|| IpError::NoCarrier {
                interfaces: ip.interfaces.clone(),
            });
    }
    let addrs = netlink::addresses()?;
    let (vip, prefix) = (ip.address.addr, ip.address.prefix_len);
    let index = addrs
        .iter()
        .find(|a| a.ip != vip && same_subnet(a.ip, vip, prefix))
        .map(|a| a.index)
        .ok_or(IpError::NoSubnet {
            address: ip.address,
        })?;
    let l = links
        .into_iter()
        .find(|l| l.index == index)
        .ok_or(IpError::Vanished)?;
    if l.carrier {
        Ok(l)
    } else {
        Err(IpError::Down { name: l.name })
    }
}

/// Interfaces that hold the address now.
fn ip_holders(ip: &IpDriver) -> Result<Vec<netlink::Addr>, IpError> {
    Ok(netlink::addresses()?
        .into_iter()
        .filter(|a| a.ip == ip.address.addr)
        .collect())
}

/// Runs an action on an address, synchronously (netlink answers at once).
pub fn ip_action(ip: &IpDriver, kind: ActionKind) -> Outcome {
    match kind {
        ActionKind::Probe => ip_probe(ip),
        ActionKind::Start => ip_start(ip),
        ActionKind::Stop => ip_stop(ip),
    }
}

fn ip_probe(ip: &IpDriver) -> Outcome {
    match ip_holders(ip) {
        Ok(h) if h.is_empty() => Outcome::Stopped,
        Ok(_) => Outcome::Running,
        Err(e) => Outcome::Failed(e.to_string()),
    }
}

fn ip_start(ip: &IpDriver) -> Outcome {
    let link = match ip_choose(ip) {
        Ok(l) => l,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    match netlink::add_address(ip.address.addr, ip.address.prefix_len, link.index) {
        Ok(_) => {
            // The first announcement now; the agent repeats them.
            let _ = announce::announce(link.index, &link.mac, ip.address.addr);
            Outcome::Running
        }
        Err(source) => Outcome::Failed(
            IpError::Add {
                interface: link.name,
                source,
            }
            .to_string(),
        ),
    }
}

fn ip_stop(ip: &IpDriver) -> Outcome {
    let holders = match ip_holders(ip) {
        Ok(h) => h,
        Err(e) => return Outcome::Failed(e.to_string()),
    };
    for h in holders {
        if let Err(e) = netlink::delete_address(h.ip, h.prefix, h.index) {
            return Outcome::Failed(e.to_string());
        }
    }
    Outcome::Stopped
}

/// Sends one announcement of the address from where it is now.
pub fn ip_announce(ip: &IpDriver) {
    let Ok(holders) = ip_holders(ip) else { return };
    let Ok(links) = netlink::links() else { return };
    for h in holders {
        if let Some(l) = links.iter().find(|l| l.index == h.index) {
            let _ = announce::announce(l.index, &l.mac, ip.address.addr);
        }
    }
}

/// What a running address's check found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IpCheck {
    /// Where it should be.
    Fine,
    /// Moved from one interface to another (names).
    Moved(String, String),
    /// Gone, or cannot be placed anywhere.
    Failed(String),
}

/// Checks a running address: present, and on the interface its preference
/// list wants now (moved there if not).
pub fn ip_check(ip: &IpDriver) -> IpCheck {
    let holders = match ip_holders(ip) {
        Ok(h) => h,
        Err(e) => return IpCheck::Failed(e.to_string()),
    };
    let Some(current) = holders.first().copied() else {
        return IpCheck::Failed(format!("address {} is gone", ip.address.addr));
    };
    if ip.interfaces.is_empty() {
        return IpCheck::Fine;
    }
    let want = match ip_choose(ip) {
        Ok(l) => l,
        Err(e) => return IpCheck::Failed(e.to_string()),
    };
    if want.index == current.index {
        return IpCheck::Fine;
    }
    let from = netlink::links()
        .ok()
        .and_then(|ls| ls.into_iter().find(|l| l.index == current.index))
        .map_or_else(|| format!("#{}", current.index), |l| l.name);
    if let Err(e) = netlink::add_address(ip.address.addr, ip.address.prefix_len, want.index) {
        return IpCheck::Failed(format!("moving to {}: {e}", want.name));
    }
    let _ = announce::announce(want.index, &want.mac, ip.address.addr);
    let _ = netlink::delete_address(current.ip, current.prefix, current.index);
    IpCheck::Moved(from, want.name)
}


#[cfg(test)]
mod tests {
    use std::net::IpAddr;

    use super::same_subnet;

    #[test]
    fn subnets_compare_by_prefix() {
        let a: IpAddr = "10.0.0.5".parse().unwrap();
        let b: IpAddr = "10.0.0.100".parse().unwrap();
        let c: IpAddr = "10.0.1.5".parse().unwrap();
        assert!(same_subnet(a, b, 24));
        assert!(!same_subnet(a, c, 24));
        assert!(same_subnet(a, c, 16));
        assert!(same_subnet(a, c, 0));
    }

}
