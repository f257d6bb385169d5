//! `tandem agent --join ADDRESS --key FILE`: a new machine's first start.
//! It asks a running member (over the cluster's authenticated channel,
//! sealed with the key it was given) for the configuration that lists it:
//! `tandem node add NAME --address ...` committed that configuration
//! first, and the member knows the new node by the address it connects
//! from. The configuration is checked here, written where `--config`
//! says, the key installed where the configuration looks for it, and the
//! agent then starts as that node.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;

use anyhow::{bail, Context, Result};
use tandem_agent::atomic_file::{self, Durability};
use tandem_agent::peer_service::{self, JoinAnswer};

/// Where to ask: `IP`, `IP:PORT` or `[IPv6]:PORT` (the port defaults to
/// the members' service port).
fn member_address(at: &str) -> Result<SocketAddr> {
    if let Ok(a) = at.parse::<SocketAddr>() {
        return Ok(a);
    }
    match at.parse::<IpAddr>() {
        Ok(ip) => Ok(SocketAddr::new(ip, peer_service::EVENTS_PORT)),
        Err(_) => bail!(
            "--join {at}: not an address; give a running node's address on one of the cluster's links (IP or IP:PORT)"
        ),
    }
}

/// Fetches the configuration from the member at `at`, writes it to
/// `config` (refusing to replace a different file there), installs the
/// key from `key_file` where it names one, and creates this node's
/// volume copies that do not exist yet (in `state_dir`, default the
/// configuration's); returns the node's name.
pub fn join(
    config: &Path,
    at: &str,
    key_file: &Path,
    node_given: Option<&str>,
    state_dir: Option<&Path>,
) -> Result<String> {
    let at = member_address(at)?;
    let key = tandem_agent::keyfile::load(key_file)?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the I/O runtime")?;
    eprintln!("tandem agent --join: asking {at} for the configuration that lists this machine");
    let JoinAnswer { node, text } = runtime
        .block_on(peer_service::join(at, &key))
        .context("the cluster did not give this machine its configuration (run `tandem node add NAME --address LINK=IP` on a running node first, with this machine's addresses, and check --key is the cluster's key)")?;
    if node_given.is_some_and(|n| n != node) {
        bail!(
            "--node {}: the cluster knows this machine as {node} (by its address); nothing was written",
            node_given.unwrap_or_default()
        );
    }
    let dir = config
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    // The key first: checking the configuration looks at its key file.
    let wanted = tandem_core::config::load(&text, dir, &|_| {
        tandem_core::config::KeyFileFacts::Present {
            len: 32,
            mode: 0o600,
        }
    });
    let Some(cfg) = wanted.config else {
        bail!(
            "{at} sent a configuration this version cannot run ({} errors); upgrade this machine's tandem to the members' version",
            wanted.diagnostics.iter().filter(|d| d.is_error()).count()
        );
    };
    if cfg.node(&node).is_none() {
        bail!("{at} named this machine {node}, a node its configuration does not list");
    }
    install_key(&cfg.key_path(), key_file, &key)?;
    let loaded = tandem_core::config::load(&text, dir, &tandem_agent::keyfile::facts);
    let errors = loaded.has_errors();
    let Some(cfg) = loaded.config.filter(|_| !errors) else {
        let why: Vec<String> = loaded
            .diagnostics
            .iter()
            .filter(|d| d.is_error())
            .map(|d| match &d.help {
                Some(h) => format!("{} ({h})", d.message),
                None => d.message.clone(),
            })
            .collect();
        bail!(
            "the cluster's configuration does not pass its checks here: {}",
            why.join("; ")
        );
    };
    match std::fs::read_to_string(config) {
        Ok(old) if old == text => {}
        Ok(_) => bail!(
            "{} exists and is not the cluster's configuration; move it away (or start without --join to run it)",
            config.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            atomic_file::private_dir(dir)?;
            atomic_file::replace(config, text.as_bytes(), Durability::Synced)
                .with_context(|| format!("writing {}", config.display()))?;
        }
        Err(e) => return Err(e).with_context(|| format!("reading {}", config.display())),
    }
    eprintln!(
        "tandem agent --join: this machine is {node}; configuration written to {}",
        config.display()
    );
    create_copies(&cfg, &node, state_dir.unwrap_or(&cfg.cluster.state_dir))?;
    Ok(node)
}

/// Creates node `node`'s copies of the volumes that list it and have no
/// metadata here yet: each starts Inconsistent and takes a full sync from
/// the other copy once the agent runs. A copy that exists is kept.
fn create_copies(cfg: &tandem_core::config::Config, node: &str, state_dir: &Path) -> Result<()> {
    for v in cfg
        .volumes
        .iter()
        .filter(|v| v.nodes.iter().any(|n| n == node))
    {
        let paths = tandem_agent::volume::store::MetaPaths::new(state_dir, &v.name);
        if paths.meta.exists() {
            continue;
        }
        let said = tandem_agent::volume::create(cfg, node, state_dir, &v.name, false, false)
            .with_context(|| format!("creating this node's copy of volume `{}`", v.name))?;
        eprintln!("tandem agent --join: {said}");
    }
    Ok(())
}

/// Puts the cluster key at `path` (where the configuration names it),
/// private, unless the same key is there already; a different key there
/// is refused.
fn install_key(path: &Path, given: &Path, key: &tandem_core::wire::Key) -> Result<()> {
    match std::fs::read(path) {
        Ok(there) if there.as_slice() == key.as_slice() => Ok(()),
        Ok(_) => bail!(
            "{} holds another key than {}; the configuration's key file must hold the cluster's key",
            path.display(),
            given.display()
        ),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            if let Some(d) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
                atomic_file::private_dir(d)?;
            }
            atomic_file::replace(path, key.as_slice(), Durability::Synced)
                .with_context(|| format!("installing the cluster key at {}", path.display()))
        }
        Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_member_address_defaults_to_the_service_port() {
        let a = member_address("10.0.0.1").ok();
        assert_eq!(a, Some(SocketAddr::from(([10, 0, 0, 1], 5411))));
        let b = member_address("10.0.0.1:6000").ok();
        assert_eq!(b, Some(SocketAddr::from(([10, 0, 0, 1], 6000))));
        let e = member_address("n1")
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(e.contains("not an address"), "{e}");
    }
}
