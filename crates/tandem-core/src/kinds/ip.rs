//! `ip`: a floating address, added to a local interface on start and
//! removed on stop, announced so that neighbours learn where it went.

use std::collections::BTreeSet;

use super::{Field, Fields, Kind, Spec};
use crate::config::values::Cidr;

/// A floating address.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Ip {
    /// Address and prefix length.
    pub address: Cidr,
    /// Interfaces in order of preference (empty: the one holding the
    /// link's subnet).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub interfaces: Vec<String>,
    /// The cluster link the address belongs to, when known.
    pub link: Option<String>,
}

impl Kind for Ip {
    const NAME: &'static str = "ip";
    const SUMMARY: &'static str = "a floating address on a local interface";
    const FIELDS: &'static [Field] = &[
        Field {
            name: "address",
            doc: "the address with its prefix length, e.g. \"10.0.0.100/24\"",
            default: None,
        },
        Field {
            name: "interfaces",
            doc: "local interfaces in order of preference",
            default: Some("the interface that holds the link's subnet"),
        },
        Field {
            name: "link",
            doc: "the cluster link the address belongs to",
            default: Some("the link whose subnet holds the address"),
        },
    ];

    fn check(f: &mut Fields<'_>) -> Option<Ip> {
        let address = f.require::<Cidr>("ip", "address", "address = \"10.0.0.100/24\"");
        let interfaces = f.take::<Vec<String>>("interfaces");
        let link_ref = f.take::<String>("link");
        let address_at = address.as_ref().map(|a| a.span());
        let address = *address?.get_ref();
        if let Some(i) = &interfaces {
            if i.get_ref().is_empty() {
                f.error(Some(i.span()), "`interfaces` is empty", "list the local interfaces in order of preference, or remove `interfaces` to use the one that holds the link's subnet");
            }
        }
        let interfaces = interfaces.map(|i| i.into_inner()).unwrap_or_default();
        let links = &f.cx.file.links;
        let link = match &link_ref {
            Some(l) => {
                let known: BTreeSet<String> =
                    links.iter().map(|l| l.name.get_ref().clone()).collect();
                f.unknown_ref("link", l, &known);
                Some(l.get_ref().clone())
            }
            None => links
                .iter()
                .find(|l| {
                    l.subnet
                        .as_ref()
                        .is_some_and(|s| s.get_ref().contains(address.addr))
                })
                .map(|l| l.name.get_ref().clone()),
        };
        if interfaces.is_empty() && link.is_none() {
            f.error(address_at.clone(), format!("no interface for address {address}: it is in no link's subnet and `interfaces` is not set"), "add `interfaces = [\"eth0\"]`, or `link = \"lan\"`, or a `subnet` to the link it belongs to");
        }
        // A node's own address cannot float: removing it on failover would
        // cut that node off its link.
        let owner = f.cx.file.nodes.iter().find(|n| {
            n.addresses
                .get_ref()
                .values()
                .any(|a| *a.get_ref() == address.addr)
        });
        if let Some(n) = owner {
            f.error(
                address_at.clone(),
                format!(
                    "address {} is node {}'s own address on a link: a floating address must be one no node has",
                    address.addr,
                    n.name.get_ref()
                ),
                "choose a free address in the subnet for the group",
            );
        }
        Some(Ip {
            address,
            interfaces,
            link,
        })
    }
}

impl Spec for Ip {
    fn describe(&self) -> String {
        let on = if self.interfaces.is_empty() {
            format!("link {}", self.link.as_deref().unwrap_or("?"))
        } else {
            self.interfaces.join(" > ")
        };
        format!("ip {} on {on}", self.address)
    }

    fn floating_address(&self) -> Option<Cidr> {
        Some(self.address)
    }

    fn link(&self) -> Option<&str> {
        self.link.as_deref()
    }
}
