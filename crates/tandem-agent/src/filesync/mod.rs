//! `filesync` in the shell: every node listens for copies of each
//! `filesync` resource's paths; the node that runs the resource sends
//! them, on a change (inotify) and every `interval_ms`, to every other
//! node that hosts groups.
//!
//! - [`tree`]: scanning the paths and applying what was received.
//! - [`wire`]: the authenticated, sealed connection (the replication
//!   link's handshake and AES-256-GCM frames, under the name
//!   `filesync/GROUP/RESOURCE`), and the sync's messages.
//!
//! Rules the shell keeps (the sync's own are `tandem_core::filesync`):
//! a node that runs the resource refuses to receive it (the source is
//! never overwritten by a stale peer); a connection must come from the
//! address the named peer has on the link; one sync per resource is
//! received at a time. Everything runs on a thread and runtime of its own,
//! so hashing a tree never delays a heartbeat.

pub mod tree;
mod wire;

use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use tandem_core::config::Config;
use tandem_core::filesync::{plan, EntryKind};
use tandem_core::kinds::filesync::Filesync;
use tandem_core::kinds::Params;
use tokio::net::{TcpListener, TcpSocket, TcpStream};
use tokio::sync::Notify;

use wire::{Frame, Sealed};

/// Changes are gathered this long before a sync starts (an editor writes
/// a file in several steps).
const DEBOUNCE: Duration = Duration::from_millis(200);
/// Limit on connecting and on the handshake.
const CONNECT_LIMIT: Duration = Duration::from_secs(5);
/// Limit on one whole sync to one peer.
const SYNC_LIMIT: Duration = Duration::from_secs(120);
/// Connections in authentication at once, per listener.
const MAX_UNAUTHENTICATED: usize = 4;
/// Directories watched for changes, per resource.
const MAX_WATCHES: usize = 4_096;
/// Problems kept for status, per peer.
const MAX_SHOWN_PROBLEMS: usize = 8;

/// The last sync to one peer, for status.
#[derive(Debug, Clone, Default)]
pub struct PeerSync {
    /// When the last sync that reached it ended (ms since the Unix epoch).
    pub ok_at_unix_ms: Option<u64>,
    /// Files written and entries removed there by that sync.
    pub written: u64,
    /// Entries removed there by that sync.
    pub removed: u64,
    /// Why the last attempt failed, if it did.
    pub error: Option<String>,
    /// Differences that could not be resolved (on either side).
    pub unresolved: Vec<String>,
}

/// One `filesync` resource on this node.
#[derive(Debug)]
pub struct Sync {
    /// `filesync/GROUP/RESOURCE`: its name in the handshake.
    name: String,
    spec: Filesync,
    my_ip: IpAddr,
    /// Every other host with an address on the link.
    peers: Vec<(String, IpAddr)>,
    /// It runs here: this node is the source.
    running: AtomicBool,
    kick: Notify,
    status: Mutex<BTreeMap<String, PeerSync>>,
    /// One received sync at a time.
    receiving: tokio::sync::Mutex<()>,
}

impl Sync {
    /// Resource `name` (`filesync/GROUP/RESOURCE`) with its `spec`, this
    /// node's address on the link, and the peers to send to; not running.
    pub(crate) fn new(
        name: String,
        spec: Filesync,
        my_ip: IpAddr,
        peers: Vec<(String, IpAddr)>,
    ) -> Sync {
        Sync {
            name,
            spec,
            my_ip,
            peers,
            running: AtomicBool::new(false),
            kick: Notify::new(),
            status: Mutex::new(BTreeMap::new()),
            receiving: tokio::sync::Mutex::new(()),
        }
    }

    /// Starts or stops sending (the resource's start and stop).
    pub fn set_running(&self, on: bool) {
        self.running.store(on, Ordering::SeqCst);
        if on {
            self.kick.notify_one();
        }
    }

    /// Whether it sends from here.
    pub fn running(&self) -> bool {
        self.running.load(Ordering::SeqCst)
    }

    /// The last sync per peer, for status.
    pub fn status(&self) -> BTreeMap<String, PeerSync> {
        self.status.lock().map(|s| s.clone()).unwrap_or_default()
    }

    /// Status in one line: the last sync per peer, or what failed.
    pub fn summary(&self) -> String {
        let st = self.status();
        let mut parts = Vec::new();
        for (peer, _) in &self.peers {
            let Some(p) = st.get(peer) else {
                parts.push(format!("{peer}: not synced yet"));
                continue;
            };
            let mut s = match (p.ok_at_unix_ms, &p.error) {
                (_, Some(e)) => format!("{peer}: failed: {e}"),
                (Some(at), None) => format!(
                    "{peer}: synced at {} ({} written, {} removed)",
                    crate::clock::format_utc(at),
                    p.written,
                    p.removed
                ),
                (None, None) => format!("{peer}: not synced yet"),
            };
            if !p.unresolved.is_empty() {
                s += &format!("; unresolved: {}", p.unresolved.join("; "));
            }
            parts.push(s);
        }
        // This node's own trouble (its listener, its watch).
        for (what, p) in st.iter().filter(|(k, _)| k.starts_with('(')) {
            if let Some(e) = &p.error {
                parts.push(format!("{what}: {e}"));
            }
        }
        parts.join(" | ")
    }

    /// Records a sync with `peer` that ended: what it did there, and what
    /// could not be resolved (on either side).
    fn synced(&self, peer: &str, done: &wire::Done, more_problems: &[String]) {
        self.set_status(peer, |p| {
            p.ok_at_unix_ms = Some(crate::clock::unix_ms());
            p.written = done.written;
            p.removed = done.removed;
            p.error = None;
            p.unresolved = more_problems
                .iter()
                .chain(done.problems.iter())
                .take(MAX_SHOWN_PROBLEMS)
                .cloned()
                .collect();
        });
    }

    fn set_status(&self, peer: &str, f: impl FnOnce(&mut PeerSync)) {
        if let Ok(mut st) = self.status.lock() {
            f(st.entry(peer.to_string()).or_default());
        }
    }
}

/// Every `filesync` resource of this node, and the runtime they run on.
#[derive(Debug)]
pub struct Service {
    syncs: BTreeMap<String, Arc<Sync>>,
}

impl Service {
    /// Starts the listeners and senders of every `filesync` resource in
    /// `cfg` for node `me`; None when there is none.
    pub fn start(cfg: &Config, me: &str, key: [u8; 32]) -> Result<Option<Arc<Service>>> {
        let mut syncs = BTreeMap::new();
        for g in &cfg.groups {
            for r in &g.resources {
                let Params::Filesync(spec) = &r.params else {
                    continue;
                };
                // A node without an address on the link can neither send
                // nor receive: its driver says so if the group comes here.
                let Some(my_ip) = cfg
                    .node(me)
                    .and_then(|n| n.addresses.get(&spec.link))
                    .copied()
                else {
                    continue;
                };
                let peers = cfg
                    .nodes
                    .iter()
                    .filter(|n| n.name != me)
                    .filter_map(|n| Some((n.name.clone(), *n.addresses.get(&spec.link)?)))
                    .collect();
                let name = format!("filesync/{}/{}", g.name, r.name);
                syncs.insert(
                    name.clone(),
                    Arc::new(Sync::new(name, spec.clone(), my_ip, peers)),
                );
            }
        }
        if syncs.is_empty() {
            return Ok(None);
        }
        let svc = Arc::new(Service { syncs });
        let me = me.to_string();
        let run = svc.clone();
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .context("starting the filesync runtime")?;
        std::thread::Builder::new()
            .name("tandem-filesync".into())
            .spawn(move || rt.block_on(run.run(me, key)))
            .context("starting the filesync thread")?;
        for s in svc.syncs.values() {
            // Without inotify, changes still go out every `interval_ms`.
            if let Err(e) = watch(s.clone()) {
                s.set_status("(watch)", |p| {
                    p.error = Some(format!("{e:#}; changes are synced every interval_ms only"))
                });
            }
        }
        Ok(Some(svc))
    }

    /// The resource `group/resource`, if it is a `filesync` one.
    pub fn get(&self, group: &str, resource: &str) -> Option<Arc<Sync>> {
        self.syncs
            .get(&format!("filesync/{group}/{resource}"))
            .cloned()
    }

    async fn run(self: Arc<Self>, me: String, key: [u8; 32]) {
        // One listener per address and port, shared by the resources on it.
        let mut by_addr: BTreeMap<SocketAddr, Vec<Arc<Sync>>> = BTreeMap::new();
        for s in self.syncs.values() {
            by_addr
                .entry(SocketAddr::new(s.my_ip, s.spec.port))
                .or_default()
                .push(s.clone());
            tokio::spawn(send_loop(s.clone(), me.clone(), key));
        }
        let mut tasks = Vec::new();
        for (addr, syncs) in by_addr {
            tasks.push(tokio::spawn(accept_loop(addr, syncs, key)));
        }
        for t in tasks {
            let _ = t.await;
        }
    }
}

/// Watches the resource's paths and kicks a sync on a change while it
/// runs here. Directories are watched (a file root, or a root that does
/// not exist yet, through its parent), so a file replaced by rename is
/// still seen; a new directory is watched once it appears.
fn watch(sync: Arc<Sync>) -> Result<()> {
    use inotify::{EventMask, Inotify};
    let ino = Inotify::init().context("starting inotify for filesync")?;
    add_watches(&mut ino.watches(), &sync.spec.paths);
    std::thread::Builder::new()
        .name("tandem-filesync-watch".into())
        .spawn(move || {
            let mut ino = ino;
            let mut buf = vec![0u8; 16 * 1024];
            loop {
                let (any, new_dir) = match ino.read_events_blocking(&mut buf) {
                    Ok(events) => events.fold((false, false), |(_, d), e| {
                        (
                            true,
                            d || (e.mask.contains(EventMask::ISDIR)
                                && e.mask.intersects(EventMask::CREATE | EventMask::MOVED_TO)),
                        )
                    }),
                    Err(_) => {
                        std::thread::sleep(Duration::from_secs(1));
                        continue;
                    }
                };
                if new_dir {
                    add_watches(&mut ino.watches(), &sync.spec.paths);
                }
                if any && sync.running() {
                    sync.kick.notify_one();
                }
            }
        })
        .context("starting the filesync watcher")?;
    Ok(())
}

/// Watches every directory under `roots` (at most [`MAX_WATCHES`]); a root
/// that is not a directory is watched through its parent.
fn add_watches(w: &mut inotify::Watches, roots: &[PathBuf]) {
    use inotify::WatchMask;
    let mask = WatchMask::CLOSE_WRITE
        | WatchMask::MOVED_TO
        | WatchMask::MOVED_FROM
        | WatchMask::CREATE
        | WatchMask::DELETE
        | WatchMask::ATTRIB;
    let mut added = 0usize;
    for root in roots {
        let mut stack = match std::fs::symlink_metadata(root) {
            Ok(m) if m.is_dir() => vec![root.clone()],
            _ => root
                .parent()
                .map(|p| vec![p.to_path_buf()])
                .unwrap_or_default(),
        };
        let is_dir = stack.first() == Some(root);
        while let Some(d) = stack.pop() {
            if added >= MAX_WATCHES {
                return;
            }
            // Watching a directory twice returns the same watch.
            if w.add(&d, mask).is_ok() {
                added += 1;
            }
            if !is_dir {
                continue;
            }
            if let Ok(rd) = std::fs::read_dir(&d) {
                stack.extend(
                    rd.flatten()
                        .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                        .map(|e| e.path()),
                );
            }
        }
    }
}

/// While the resource runs here: a sync to every peer at start, on every
/// change, and every `interval_ms`.
async fn send_loop(sync: Arc<Sync>, me: String, key: [u8; 32]) {
    let interval = Duration::from_millis(sync.spec.interval_ms);
    loop {
        if sync.running() {
            tokio::select! {
                _ = sync.kick.notified() => {}
                _ = tokio::time::sleep(interval) => {}
            }
        } else {
            sync.kick.notified().await;
        }
        if !sync.running() {
            continue;
        }
        tokio::time::sleep(DEBOUNCE).await;
        let roots = sync.spec.paths.clone();
        let max = sync.spec.max_file_bytes;
        let scan = match tokio::task::spawn_blocking(move || tree::scan(&roots, max)).await {
            Ok(s) => Arc::new(s),
            Err(_) => continue,
        };
        for (peer, ip) in sync.peers.clone() {
            if !sync.running() {
                break;
            }
            let r = tokio::time::timeout(
                SYNC_LIMIT,
                send_to(&sync, &me, &key, &peer, ip, scan.clone()),
            )
            .await
            .unwrap_or_else(|_| {
                Err(anyhow::anyhow!(
                    "no answer within {} s",
                    SYNC_LIMIT.as_secs()
                ))
            });
            match r {
                Ok(done) => sync.synced(&peer, &done, &scan.problems),
                Err(e) => sync.set_status(&peer, |p| p.error = Some(format!("{e:#}"))),
            }
        }
    }
}

/// One sync of `scan` to `peer`: what it did there.
async fn send_to(
    sync: &Sync,
    me: &str,
    key: &[u8; 32],
    peer: &str,
    ip: IpAddr,
    scan: Arc<tree::Scan>,
) -> Result<wire::Done> {
    let to = SocketAddr::new(ip, sync.spec.port);
    let sock = if ip.is_ipv4() {
        TcpSocket::new_v4()
    } else {
        TcpSocket::new_v6()
    }
    .context("creating a socket")?;
    sock.bind(SocketAddr::new(sync.my_ip, 0))
        .with_context(|| format!("binding {}", sync.my_ip))?;
    let mut stream = tokio::time::timeout(CONNECT_LIMIT, sock.connect(to))
        .await
        .map_err(|_| anyhow::anyhow!("connecting to {peer} at {to}: no answer"))?
        .with_context(|| format!("connecting to {peer} at {to}"))?;
    let session = tokio::time::timeout(CONNECT_LIMIT, wire::dial(&mut stream, key, &sync.name, me))
        .await
        .map_err(|_| anyhow::anyhow!("{peer} did not finish the handshake"))??;
    let mut link = Sealed::new(stream, session, wire::frame_limit(sync.spec.max_file_bytes));
    link.send(&Frame::Manifest(scan.manifest.clone())).await?;
    let need = match link.recv().await? {
        Frame::Need(need) => need,
        Frame::Refused(why) => bail!("{peer} refused: {why}"),
        other => bail!("{peer} answered {} to the manifest", other.name()),
    };
    let mut skipped = Vec::new();
    for i in need {
        let e = scan
            .manifest
            .entries
            .get(i as usize)
            .with_context(|| format!("{peer} asked for entry {i}, which the manifest lacks"))?;
        let root = sync
            .spec
            .paths
            .get(usize::from(e.root))
            .with_context(|| format!("{peer} asked for root {}", e.root))?
            .clone();
        let (e2, max) = (e.clone(), sync.spec.max_file_bytes);
        let data = tokio::task::spawn_blocking(move || tree::read_listed(&root, &e2, max)).await;
        match data {
            Ok(Ok(data)) => link.send(&Frame::File(i, data)).await?,
            Ok(Err(err)) => skipped.push(format!("{err:#}")),
            Err(_) => skipped.push(format!("{}: not read", e.path)),
        }
    }
    link.send(&Frame::Done(wire::Done {
        problems: skipped,
        ..Default::default()
    }))
    .await?;
    match link.recv().await? {
        Frame::Done(d) => Ok(d),
        other => bail!("{peer} answered {} at the end", other.name()),
    }
}

/// Accepts copies on `addr` for `syncs`.
async fn accept_loop(addr: SocketAddr, syncs: Vec<Arc<Sync>>, key: [u8; 32]) {
    let listener = loop {
        match TcpListener::bind(addr).await {
            Ok(l) => break l,
            Err(e) => {
                for s in &syncs {
                    s.set_status("(listener)", |p| {
                        p.error = Some(format!("cannot listen on {addr}: {e}; retrying"))
                    });
                }
                tokio::time::sleep(Duration::from_secs(2)).await;
            }
        }
    };
    for s in &syncs {
        if let Ok(mut st) = s.status.lock() {
            st.remove("(listener)");
        }
    }
    let syncs: Arc<BTreeMap<String, Arc<Sync>>> =
        Arc::new(syncs.into_iter().map(|s| (s.name.clone(), s)).collect());
    let unauthenticated = Arc::new(AtomicUsize::new(0));
    loop {
        let Ok((stream, from)) = listener.accept().await else {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        };
        // Only the resources' peers, from their addresses on the link,
        // may take an authentication slot: a stranger is closed at once.
        if !syncs
            .values()
            .any(|s| s.peers.iter().any(|(_, ip)| *ip == from.ip()))
        {
            continue;
        }
        if unauthenticated.fetch_add(1, Ordering::AcqRel) >= MAX_UNAUTHENTICATED {
            unauthenticated.fetch_sub(1, Ordering::AcqRel);
            continue;
        }
        let (syncs, count) = (syncs.clone(), unauthenticated.clone());
        tokio::spawn(async move {
            let _ = receive(stream, from, &syncs, &key, &count).await;
        });
    }
}

/// One received sync: authenticate, then apply the peer's manifest.
async fn receive(
    mut stream: TcpStream,
    from: SocketAddr,
    syncs: &BTreeMap<String, Arc<Sync>>,
    key: &[u8; 32],
    unauthenticated: &AtomicUsize,
) -> Result<()> {
    let authed = tokio::time::timeout(
        wire::PREAUTH_LIMIT,
        wire::accept(&mut stream, key, |name, node| {
            let s = syncs.get(name)?;
            // Only a host of this resource, from its address on the link.
            s.peers
                .iter()
                .any(|(n, ip)| n == node && *ip == from.ip())
                .then(|| s.clone())
        }),
    )
    .await;
    unauthenticated.fetch_sub(1, Ordering::AcqRel);
    let (sync, session, peer) = authed.map_err(|_| anyhow::anyhow!("handshake timed out"))??;
    let mut link = Sealed::new(stream, session, wire::frame_limit(sync.spec.max_file_bytes));
    let result = tokio::time::timeout(SYNC_LIMIT, apply(&sync, &mut link)).await;
    let done = match result {
        Ok(Ok(done)) => done,
        Ok(Err(e)) => {
            sync.set_status(&peer, |p| p.error = Some(format!("receiving: {e:#}")));
            return Err(e);
        }
        Err(_) => bail!("the sync from {peer} took over {} s", SYNC_LIMIT.as_secs()),
    };
    sync.synced(&peer, &done, &[]);
    Ok(())
}

/// Ends a received sync once this node runs the resource: from then on
/// it is the source, and what a peer sends must not change it.
fn became_source(sync: &Sync) -> Result<()> {
    if sync.running() {
        bail!("this node became the source during the sync; the rest was not applied");
    }
    Ok(())
}

/// The receiving side of one sync, after the handshake.
async fn apply(sync: &Arc<Sync>, link: &mut Sealed) -> Result<wire::Done> {
    let manifest = match link.recv().await? {
        Frame::Manifest(m) => m,
        other => bail!("expected a manifest, got {}", other.name()),
    };
    let mine = tree::root_names(&sync.spec.paths);
    if let Some(why) = tandem_core::filesync::refusal(sync.running(), &manifest, &mine) {
        link.send(&Frame::Refused(why.clone())).await?;
        bail!("{why}");
    }
    let _one = sync.receiving.lock().await;
    let roots = sync.spec.paths.clone();
    let max = sync.spec.max_file_bytes;
    let (manifest, roots, local) = tokio::task::spawn_blocking(move || {
        let local = tree::scan(&roots, max);
        (manifest, roots, local)
    })
    .await
    .context("scanning here")?;
    let p = plan(&manifest, &local.manifest.entries, roots.len());
    let mut done = wire::Done {
        problems: p.refused.clone(),
        ..Default::default()
    };
    let root_of = |r: u16| roots.get(usize::from(r)).cloned();
    // Removals, directories and symlinks first: they need nothing sent.
    let (pre_remove, pre_mkdir, links) = {
        let links: Vec<usize> = p
            .fetch
            .iter()
            .copied()
            .filter(|&i| matches!(manifest.entries[i].kind, EntryKind::Symlink { .. }))
            .collect();
        (p.remove.clone(), p.mkdir.clone(), links)
    };
    let entries = manifest.entries.clone();
    let roots2 = roots.clone();
    became_source(sync)?;
    let pre = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        let mut removed = 0u64;
        let root = |r: u16| roots2.get(usize::from(r)).cloned();
        for (r, rel) in &pre_remove {
            match root(*r).map(|root| tree::remove(&root, rel)) {
                Some(Ok(())) => removed += 1,
                Some(Err(e)) => problems.push(format!("{e:#}")),
                None => {}
            }
        }
        for &i in pre_mkdir.iter().chain(links.iter()) {
            let e = &entries[i];
            let Some(root) = root(e.root) else { continue };
            let r = if matches!(e.kind, EntryKind::Dir) {
                tree::make_dir(&root, e)
            } else {
                tree::write_entry(&root, e, &[])
            };
            if let Err(err) = r {
                problems.push(format!("{err:#}"));
            }
        }
        (removed, problems)
    })
    .await
    .context("applying removals here")?;
    done.removed = pre.0;
    done.problems.extend(pre.1);
    let files: Vec<u32> = p
        .fetch
        .iter()
        .copied()
        .filter(|&i| matches!(manifest.entries[i].kind, EntryKind::File { .. }))
        .filter_map(|i| u32::try_from(i).ok())
        .collect();
    link.send(&Frame::Need(files.clone())).await?;
    let mut waiting: std::collections::BTreeSet<u32> = files.into_iter().collect();
    loop {
        match link.recv().await? {
            Frame::File(i, data) => {
                if !waiting.remove(&i) {
                    bail!("the peer sent entry {i}, which was not asked for");
                }
                let e = manifest.entries[i as usize].clone();
                let Some(root) = root_of(e.root) else {
                    continue;
                };
                let ok = match &e.kind {
                    EntryKind::File { size, hash } => {
                        data.len() as u64 == *size && blake3::hash(&data).to_hex().as_str() == hash
                    }
                    _ => false,
                };
                if !ok {
                    done.problems.push(format!(
                        "{}: the content sent does not match its listing",
                        e.path
                    ));
                    continue;
                }
                became_source(sync)?;
                let r =
                    tokio::task::spawn_blocking(move || tree::write_entry(&root, &e, &data)).await;
                match r {
                    Ok(Ok(())) => done.written += 1,
                    Ok(Err(err)) => done.problems.push(format!("{err:#}")),
                    Err(_) => done.problems.push("a write did not finish".into()),
                }
            }
            Frame::Done(d) => {
                done.problems.extend(d.problems);
                break;
            }
            other => bail!("expected a file, got {}", other.name()),
        }
    }
    became_source(sync)?;
    let meta: Vec<usize> = p.set_meta.clone();
    let entries = manifest.entries.clone();
    let roots3 = roots.clone();
    let problems = tokio::task::spawn_blocking(move || {
        let mut problems = Vec::new();
        for i in meta {
            let e = &entries[i];
            if let Some(root) = roots3.get(usize::from(e.root)) {
                if let Err(err) = tree::set_meta(root, e) {
                    problems.push(format!("{err:#}"));
                }
            }
        }
        problems
    })
    .await
    .unwrap_or_default();
    done.problems.extend(problems);
    if !waiting.is_empty() {
        done.problems.push(format!(
            "{} files were not sent (changed on the source?); the next sync sends them",
            waiting.len()
        ));
    }
    link.send(&Frame::Done(done.clone())).await?;
    Ok(done)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs;
    use std::os::unix::fs::MetadataExt;

    fn sync(root: PathBuf, me: IpAddr, peer: (&str, IpAddr), port: u16) -> Arc<Sync> {
        Arc::new(Sync::new(
            "filesync/g/r".into(),
            Filesync {
                paths: vec![root],
                link: "lan".into(),
                port,
                interval_ms: 60_000,
                max_file_bytes: 1 << 20,
            },
            me,
            vec![(peer.0.to_string(), peer.1)],
        ))
    }

    fn free_port(ip: IpAddr) -> u16 {
        std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    /// A real sync over loopback: authenticated, sealed, applied; then a
    /// target that runs the resource refuses, and a stranger's key is
    /// refused before anything is read.
    #[tokio::test]
    async fn a_sync_travels_sealed_and_only_to_a_node_that_does_not_run_it() {
        let t = tempfile::tempdir().unwrap();
        let (a, b) = (t.path().join("a"), t.path().join("b"));
        fs::create_dir_all(a.join("d")).unwrap();
        fs::write(a.join("d/app.conf"), b"listen 80\n").unwrap();
        fs::create_dir_all(&b).unwrap();
        fs::write(b.join("stale"), b"x").unwrap();
        let (ip1, ip2): (IpAddr, IpAddr) =
            ("127.0.0.1".parse().unwrap(), "127.0.0.2".parse().unwrap());
        let port = free_port(ip2);
        let key = [9u8; 32];
        let src = sync(a.clone(), ip1, ("n2", ip2), port);
        let dst = sync(b.clone(), ip2, ("n1", ip1), port);
        tokio::spawn(accept_loop(
            SocketAddr::new(ip2, port),
            vec![dst.clone()],
            key,
        ));
        // Both nodes' paths are one configuration's in a cluster; here the
        // two "nodes" share a machine, so the source names the target's.
        let scan = || {
            let mut s = tree::scan(std::slice::from_ref(&a), 1 << 20);
            s.manifest.roots = tree::root_names(std::slice::from_ref(&b));
            Arc::new(s)
        };
        let mut done = None;
        for _ in 0..50 {
            match send_to(&src, "n1", &key, "n2", ip2, scan()).await {
                Ok(d) => {
                    done = Some(d);
                    break;
                }
                // The listener may not be up yet.
                Err(_) => tokio::time::sleep(Duration::from_millis(50)).await,
            }
        }
        let done = done.expect("a sync within 2.5 s");
        assert_eq!((done.written, done.removed), (1, 1), "{done:?}");
        assert_eq!(fs::read(b.join("d/app.conf")).unwrap(), b"listen 80\n");
        assert!(!b.join("stale").exists());
        let (ma, mb) = (
            fs::metadata(a.join("d/app.conf")).unwrap(),
            fs::metadata(b.join("d/app.conf")).unwrap(),
        );
        assert_eq!(
            (ma.mtime(), ma.mtime_nsec(), ma.mode()),
            (mb.mtime(), mb.mtime_nsec(), mb.mode())
        );
        assert!(dst
            .status()
            .get("n1")
            .and_then(|p| p.ok_at_unix_ms)
            .is_some());

        // The target runs it now: it is a source, never overwritten.
        dst.set_running(true);
        fs::write(a.join("d/app.conf"), b"listen 8080\n").unwrap();
        let err = send_to(&src, "n1", &key, "n2", ip2, scan())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("refused"), "{err:#}");
        assert_eq!(fs::read(b.join("d/app.conf")).unwrap(), b"listen 80\n");
        dst.set_running(false);

        // Another key: refused at the handshake.
        let err = send_to(&src, "n1", &[1u8; 32], "n2", ip2, scan())
            .await
            .unwrap_err();
        assert!(
            format!("{err:#}").contains("authentication") || format!("{err:#}").contains("reading"),
            "{err:#}"
        );
        assert_eq!(fs::read(b.join("d/app.conf")).unwrap(), b"listen 80\n");
        // A source whose paths differ (a configuration change under way)
        // is refused: entries name roots by position.
        let other = || Arc::new(tree::scan(std::slice::from_ref(&a), 1 << 20));
        let err = send_to(&src, "n1", &key, "n2", ip2, other())
            .await
            .unwrap_err();
        assert!(format!("{err:#}").contains("not this node's"), "{err:#}");
        // And a node that is not a peer of the resource (n3) is refused.
        let err = send_to(&src, "n3", &key, "n2", ip2, scan())
            .await
            .unwrap_err();
        assert!(!format!("{err:#}").is_empty());
        assert_eq!(fs::read(b.join("d/app.conf")).unwrap(), b"listen 80\n");
    }
}
