//! Who is who: every member's address per link from the configuration,
//! which member this machine is, and the core's specs (the member's and
//! the groups' placement policy) built from the model.

use super::*;

/// Every member's address per link, in configuration order; the witness
/// (if any) after the nodes, on the one link whose subnet holds its
/// address; a node added while running (`tandem node add NAME --address`)
/// after those.
#[derive(Clone)]
pub(super) struct Topology {
    pub(super) names: Vec<String>,
    pub(super) ids: Vec<NodeId>,
    pub(super) voters: Vec<bool>,
    pub(super) links: Vec<String>,
    pub(super) addrs: Vec<Vec<Option<SocketAddr>>>,
}

impl Topology {
    pub(super) fn from_config(cfg: &Config) -> Topology {
        let links: Vec<String> = cfg.links.iter().map(|l| l.name.clone()).collect();
        let mut names = Vec::new();
        let mut addrs = Vec::new();
        for n in &cfg.nodes {
            names.push(n.name.clone());
            addrs.push(node_addrs(cfg, n));
        }
        let mut voters: Vec<bool> = (0..names.len()).map(|i| i < MAX_VOTERS).collect();
        if let Some(w) = cfg.quorum.witness {
            let on = cfg
                .links
                .iter()
                .position(|l| l.subnet.is_some_and(|s| s.contains(w.ip())))
                .unwrap_or(0);
            names.push(WITNESS_NAME.into());
            addrs.push((0..links.len()).map(|l| (l == on).then_some(w)).collect());
            voters.push(true);
        }
        Topology {
            ids: names.iter().map(|n| NodeId::from_name(n)).collect(),
            names,
            voters,
            links,
            addrs,
        }
    }

    /// This topology with node `name` of `cfg` added at the end, not
    /// voting (the log's voters say who votes); None when `cfg` has no
    /// such node. Unchanged when it is a member already.
    pub(super) fn with_node(&self, cfg: &Config, name: &str) -> Option<Topology> {
        let node = cfg.node(name)?;
        let mut t = self.clone();
        if t.names.iter().any(|n| n == name) {
            return Some(t);
        }
        t.addrs.push(node_addrs(cfg, node));
        t.names.push(name.to_string());
        t.ids.push(NodeId::from_name(name));
        t.voters.push(false);
        Some(t)
    }

    /// This topology without node `name` and the index `me` has in it
    /// (unchanged when `name` is no member; None when it is `me`).
    pub(super) fn without_node(&self, name: &str, me: usize) -> Option<(Topology, usize)> {
        let Some(j) = self.names.iter().position(|n| n == name) else {
            return Some((self.clone(), me));
        };
        if j == me {
            return None;
        }
        let mut t = self.clone();
        t.names.remove(j);
        t.ids.remove(j);
        t.voters.remove(j);
        t.addrs.remove(j);
        Some((t, if j < me { me - 1 } else { me }))
    }

    /// Per link: whether member `j` and member `me` are both on it.
    pub(super) fn shared_links(&self, me: usize, j: usize) -> Vec<bool> {
        (0..self.links.len())
            .map(|l| self.addrs[me][l].is_some() && self.addrs[j][l].is_some())
            .collect()
    }

    pub(super) fn name_of(&self, id: NodeId) -> &str {
        self.ids
            .iter()
            .position(|i| *i == id)
            .map_or("?", |i| &self.names[i])
    }

    /// The nodes that may host groups (every member but the witness).
    pub(super) fn hosts(&self) -> impl Iterator<Item = &String> {
        self.names.iter().filter(|n| *n != WITNESS_NAME)
    }

    pub(super) fn index_of(&self, id: NodeId) -> Option<usize> {
        self.ids.iter().position(|i| *i == id)
    }
}

/// Node `n`'s heartbeat address on each link of `cfg`, in link order.
fn node_addrs(cfg: &Config, n: &tandem_core::config::NodeSpec) -> Vec<Option<SocketAddr>> {
    cfg.links
        .iter()
        .map(|l| {
            n.addresses
                .get(&l.name)
                .map(|ip| SocketAddr::new(*ip, l.port))
        })
        .collect()
}

/// Which configured node is this machine: the one whose addresses can be
/// bound here (a non-local address cannot be bound).
pub(super) fn find_self(cfg: &Config, topo: &Topology, role: &MemberRole) -> Result<usize> {
    let nodes = &cfg.nodes;
    match role {
        MemberRole::Witness => {
            return topo
                .names
                .iter()
                .position(|n| n == WITNESS_NAME)
                .context("the configuration has no `witness = \"ADDRESS:PORT\"` under [quorum]; add one to run a witness")
        }
        MemberRole::Node(Some(name)) => {
            return nodes
                .iter()
                .position(|n| n.name == *name)
                .with_context(|| {
                    let all: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
                    format!(
                        "--node {name}: no such node in the configuration (nodes: {})",
                        all.join(", ")
                    )
                })
        }
        MemberRole::Node(None) => {}
    }
    let local: Vec<usize> = (0..nodes.len())
        .filter(|&i| {
            topo.addrs[i]
                .iter()
                .flatten()
                .any(|a| std::net::UdpSocket::bind(SocketAddr::new(a.ip(), 0)).is_ok())
        })
        .collect();
    match local.as_slice() {
        [one] => Ok(*one),
        [] => bail!("none of the configured node addresses is on this machine; pass --node NAME or fix the addresses"),
        many => bail!(
            "several nodes' addresses are on this machine ({}); pass --node NAME",
            many.iter().map(|&i| nodes[i].name.as_str()).collect::<Vec<_>>().join(", ")
        ),
    }
}

pub(super) fn spec(
    cfg: &Config,
    topo: &Topology,
    me: usize,
    keys: Vec<wire::Key>,
    identity: &tandem_core::config::identity::Identity,
) -> MemberSpec {
    let key_fingerprint = keys
        .first()
        .map(tandem_core::config::identity::key_fingerprint)
        .unwrap_or_default();
    let two_node = cfg.quorum.two_node;
    let peers = (0..topo.names.len())
        .filter(|&j| j != me)
        .map(|j| PeerSpec {
            id: topo.ids[j],
            links: topo.shared_links(me, j),
            voter: topo.voters[j],
        })
        .collect();
    MemberSpec {
        cluster: ClusterId::from_name(&cfg.cluster.name),
        me: topo.ids[me],
        voter: topo.voters[me],
        peers,
        links: topo.links.len(),
        mode: if two_node {
            quorum::Mode::TwoNode
        } else {
            quorum::Mode::Majority {
                voters: topo.voters.iter().filter(|v| **v).count(),
            }
        },
        wait_for_all: cfg.quorum.wait_for_all,
        timing: cfg.timing,
        keys,
        key_fingerprint,
        config_hash: identity.hash.clone(),
        config_sections: identity.sections.clone(),
        member_names: topo.names.clone(),
    }
}

/// The groups as the placement policy sees them. (What this version cannot
/// run, clone and colocated groups, never gets here: validation refuses
/// it, for `tandem config validate` and the agent alike.)
pub(super) fn groups_spec(
    cfg: &Config,
    topo: &Topology,
    fence_devices: &[crate::fence_agent::FenceDevice],
) -> Result<GroupsSpec> {
    use tandem_core::config::Failback as F;
    let mut groups = Vec::new();
    let mut expiry = Vec::new();
    for (gi, g) in cfg.groups.iter().enumerate() {
        let needs_links = g
            .resources
            .iter()
            .filter_map(|r| r.params.spec().link().map(String::from))
            .collect();
        groups.push(GroupPolicy {
            name: g.name.clone(),
            preferred: g.preferred.clone(),
            failback: match g.failback {
                F::Auto => policy::Failback::Auto,
                F::Manual => policy::Failback::Manual,
            },
            migration_threshold: g.migration_threshold,
            needs_links,
            confined_to: cfg.confinement(gi),
        });
        expiry.push(g.failure_expiry_ms);
    }
    Ok(GroupsSpec {
        groups,
        failure_expiry_ms: expiry,
        hosts: topo.hosts().cloned().collect(),
        host_ids: topo
            .names
            .iter()
            .zip(&topo.ids)
            .filter(|(n, _)| *n != WITNESS_NAME)
            .map(|(_, id)| *id)
            .collect(),
        lease_ms: cfg.timing.deadtime_ms,
        fence_hosts: topo
            .hosts()
            .filter(|h| crate::fence_agent::covers(fence_devices, h))
            .cloned()
            .collect(),
        stop_bound_ms: cfg
            .groups
            .iter()
            .map(|g| tandem_core::group::stop_bound_ms(g.resources.iter().map(|r| r.timeout_ms)))
            .collect(),
    })
}
