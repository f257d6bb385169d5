//! Small value types written as strings in the configuration: an address with
//! prefix length (`10.0.0.100/24`) and a byte size (`4GiB`).

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize};

/// Why a value string was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ValueError {
    /// Not `ADDRESS/PREFIX`.
    #[error("`{0}` is not an address with prefix length")]
    Cidr(String),
    /// Not a number with an optional unit.
    #[error("`{0}` is not a size")]
    Size(String),
}

/// An IP address with a prefix length, e.g. `10.0.0.100/24`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Cidr {
    /// The address.
    pub addr: IpAddr,
    /// Prefix length in bits.
    pub prefix_len: u8,
}

impl Cidr {
    /// True when `ip` is inside this network (same family, same prefix bits).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.addr, ip) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                let mask = u32::MAX
                    .checked_shl(32 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u32::from(net) & mask == u32::from(ip) & mask
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                let mask = u128::MAX
                    .checked_shl(128 - u32::from(self.prefix_len))
                    .unwrap_or(0);
                u128::from(net) & mask == u128::from(ip) & mask
            }
            _ => false,
        }
    }
}

impl FromStr for Cidr {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ValueError::Cidr(s.to_string());
        let (addr, len) = s.split_once('/').ok_or_else(err)?;
        let addr: IpAddr = addr.parse().map_err(|_| err())?;
        let prefix_len: u8 = len.parse().map_err(|_| err())?;
        let max = if addr.is_ipv4() { 32 } else { 128 };
        if prefix_len > max {
            return Err(err());
        }
        Ok(Cidr { addr, prefix_len })
    }
}

impl fmt::Display for Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.addr, self.prefix_len)
    }
}

impl serde::Serialize for Cidr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Cidr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// A size in bytes, written with a binary unit.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Size {
    /// Bytes.
    pub bytes: u64,
}

impl FromStr for Size {
    type Err = ValueError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || ValueError::Size(s.to_string());
        let t = s.trim();
        let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
        let (num, unit) = t.split_at(split);
        let n: u64 = num.parse().map_err(|_| err())?;
        let mult: u64 = match unit.trim() {
            "" | "B" => 1,
            "KiB" => 1 << 10,
            "MiB" => 1 << 20,
            "GiB" => 1 << 30,
            "TiB" => 1 << 40,
            _ => return Err(err()),
        };
        n.checked_mul(mult)
            .map(|bytes| Size { bytes })
            .ok_or_else(err)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Timing profiles: named sets of [`Timing`] values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Profile {
    /// Sub-second failover on a LAN.
    Default,
    /// Slower, for busy or virtualized machines.
    Relaxed,
    /// For links across sites.
    Wan,
}

/// Whether a group comes back to its preferred node.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Failback {
    /// When the preferred node returns, the group moves back.
    Auto,
    /// It stays where it is until the operator moves it.
    Manual,
}

/// What a failure of a resource (a start or its check), or `failures`
/// failed checks of a monitor in a row, lead to ([`crate::on_fail`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnFail {
    /// Restart the group in place (a monitor: up to `restarts` times; a
    /// resource: until the group's `migration_threshold`), then move it.
    #[default]
    Restart,
    /// Move the group to another node at once.
    Move,
    /// Fence this node; the group starts elsewhere once it is off.
    Fence,
    /// Touch the group nowhere until `tandem cleanup`.
    Block,
    /// Put this node in standby: every group leaves it.
    Standby,
    /// Record the failure only (a failed start is still recovered).
    Ignore,
}

/// Replication protocol of a volume.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum Protocol {
    /// A write completes once both copies have it.
    C,
    /// A write completes once the local copy has it.
    A,
}

/// What a volume does when both copies were written apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum SplitBrainPolicy {
    /// Stay disconnected until the operator chooses.
    Disconnect,
    /// Discard the copy that was not written to, if only one was.
    DiscardZeroChanges,
    /// Discard the copy that became primary last.
    DiscardYoungerPrimary,
    /// Discard the copy with fewer changed blocks.
    DiscardLeastChanges,
}

/// Where a volume's copy lives on each node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Backing {
    /// The same path on every node.
    Same(PathBuf),
    /// Node name -> path.
    PerNode(BTreeMap<String, PathBuf>),
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn cidr_parses_and_contains() {
        let c: Cidr = "10.0.0.0/24".parse().unwrap();
        assert!(c.contains("10.0.0.77".parse().unwrap()));
        assert!(!c.contains("10.0.1.1".parse().unwrap()));
        assert!(!c.contains("::1".parse().unwrap()));
        let all: Cidr = "0.0.0.0/0".parse().unwrap();
        assert!(all.contains("192.0.2.1".parse().unwrap()));
        let v6: Cidr = "fd00::/64".parse().unwrap();
        assert!(v6.contains("fd00::10".parse().unwrap()));
        assert!(!v6.contains("fd01::10".parse().unwrap()));
    }

    #[test]
    fn cidr_refuses_bad_input() {
        for bad in ["10.0.0.1", "10.0.0.1/33", "x/24", "10.0.0.1/", "::/129"] {
            assert!(bad.parse::<Cidr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn size_units() {
        assert_eq!("4GiB".parse::<Size>().unwrap().bytes, 4 << 30);
        assert_eq!("512 MiB".parse::<Size>().unwrap().bytes, 512 << 20);
        assert_eq!("4096".parse::<Size>().unwrap().bytes, 4096);
        assert!("4GB".parse::<Size>().is_err());
        assert!("99999999999TiB".parse::<Size>().is_err());
    }

    proptest! {
        #[test]
        fn cidr_and_size_parsing_never_panics(s in ".{0,40}") {
            let _ = s.parse::<Cidr>();
            let _ = s.parse::<Size>();
        }

        #[test]
        fn v4_network_contains_its_own_address(a in any::<u32>(), len in 0u8..=32) {
            let c = Cidr { addr: IpAddr::V4(a.into()), prefix_len: len };
            prop_assert!(c.contains(IpAddr::V4(a.into())));
        }
    }
}
