//! This node's side of a configuration change: switching in place to the
//! configuration the record names as the next one (`tandem config apply`)
//! or, for a node whose configuration is an older one of the cluster's,
//! to the committed one, fetched from a peer.
//!
//! A switch stops the groups the change removes or whose resources change
//! ([`tandem_core::config::change::Plan::restart`]), waits until no action
//! runs, then installs the new file and replaces the runner: every other
//! group is probed, found running and kept, while the membership, the
//! lease and the guard carry on untouched. The rules (when a change
//! begins, when it commits, what is stale) are the core's; this file only
//! moves files and runners.

use std::path::PathBuf;
use std::sync::Arc;

use tandem_core::config::change;
use tandem_core::config::Config;
use tokio::sync::mpsc;

use super::Agent;
use crate::config_change::Accepted;
use crate::config_store::Store;
use crate::event::AgentEvent;
use crate::runner::{Done, Runner};

/// How long after a failed fetch of the cluster's configuration the next
/// one begins.
const FETCH_RETRY_MS: u64 = 5_000;
/// How long after a failed switch the next attempt begins.
const SWITCH_RETRY_MS: u64 = 30_000;

/// A switch under way: the groups it restarts are stopping.
pub(super) struct Switching {
    accepted: Accepted,
    text: String,
    /// To the committed configuration (catching up, or back from an
    /// abandoned change), not to a change's next one.
    catching_up: bool,
    /// The new configuration's groups, for the core.
    groups: tandem_core::member::GroupsSpec,
    /// The members with the node the change adds, or without the one it
    /// drops, and this node's index there.
    topo: Option<(super::Topology, usize)>,
    /// The new configuration's fence devices (a change may say how to
    /// fence the node it adds, or forget the one it removes).
    fence_devices: Vec<crate::fence_agent::FenceDevice>,
    /// The runner of the new configuration, built before anything stopped
    /// (a configuration this node cannot run stops nothing), and its
    /// outcomes' channel.
    runner: Runner,
    done_rx: mpsc::Receiver<Done>,
}

/// This node's configuration, its files, and a switch under way.
pub(super) struct ConfigState {
    /// The file this agent runs (None: unknown, nothing is written).
    pub path: Option<PathBuf>,
    /// Its text (None: unknown; not remembered in the history).
    pub text: Option<String>,
    /// The configuration this agent runs.
    pub cfg: Config,
    /// Staged and committed configurations in the state directory.
    pub store: Store,
    /// (epoch, hash) of every configuration this node saw committed
    /// (kept in memory: read once at start, grown as it remembers).
    pub seen: Vec<(u64, String)>,
    /// The latest epoch remembered (or given up on).
    pub remembered_epoch: u64,
    /// A switch under way.
    pub switching: Option<Switching>,
    /// The configuration being fetched from a peer.
    pub fetching: Option<String>,
    /// No fetch begins before this (this agent's clock).
    pub fetch_after_ms: u64,
    /// The configuration this node could not switch to (said once), and
    /// when it tries again (this agent's clock).
    pub failed: Option<(String, u64)>,
    /// The configuration this node switched to because a change began,
    /// until that change commits (read once at start, kept on disk).
    pub switched: Option<String>,
    /// The configuration no peer sent yet (said once).
    pub unfetched: Option<String>,
    /// Fetched texts come back here.
    pub fetched_tx: mpsc::Sender<(String, Option<String>)>,
}

impl ConfigState {
    /// The state of an agent running `cfg` from `file` (path and text).
    pub fn new(
        cfg: Config,
        file: Option<(PathBuf, String)>,
        state_dir: &std::path::Path,
        fetched_tx: mpsc::Sender<(String, Option<String>)>,
    ) -> ConfigState {
        let store = Store::new(state_dir);
        let (path, text) = match file {
            Some((p, t)) => (Some(p), Some(t)),
            None => (None, None),
        };
        ConfigState {
            path,
            text,
            cfg,
            seen: store.seen(),
            switched: store.switched(),
            store,
            remembered_epoch: 0,
            switching: None,
            fetching: None,
            fetch_after_ms: 0,
            failed: None,
            unfetched: None,
            fetched_tx,
        }
    }
}

impl ConfigState {
    /// Where relative paths of this node's configuration resolve: its
    /// file's directory.
    fn dir(&self) -> PathBuf {
        self.path
            .as_ref()
            .and_then(|p| p.parent())
            .map(std::path::Path::to_path_buf)
            .unwrap_or_default()
    }
}

impl Agent {
    /// One pass of the configuration rules (every loop pass; without a
    /// change under way it compares a few strings).
    pub(super) fn config_step(&mut self, now: u64) {
        if self.runner.is_none() || self.shutting_down {
            return;
        }
        let record = self.member.agreement().record();
        // The common case, on every pass: nothing to do, nothing copied.
        if self.cs.switching.is_none()
            && self.cs.switched.is_none()
            && record.config_next.is_none()
            && record.config_hash == self.config.hash
            && record.config_epoch <= self.cs.remembered_epoch
        {
            return;
        }
        let (committed, epoch, next) = (
            record.config_hash.clone(),
            record.config_epoch,
            record.config_next.clone(),
        );
        let mine = self.config.hash.clone();
        if !committed.is_empty() && committed == mine && epoch > self.cs.remembered_epoch {
            self.cs.remembered_epoch = epoch;
            if let Some(text) = &self.cs.text {
                match self.cs.store.remember(epoch, &mine, text) {
                    Ok(true) => {
                        self.cs.seen.push((epoch, mine.clone()));
                        let keep = crate::config_store::MAX_HISTORY;
                        if self.cs.seen.len() > keep {
                            let extra = self.cs.seen.len() - keep;
                            self.cs.seen.drain(..extra);
                        }
                    }
                    Ok(false) => {}
                    Err(e) => self.log(AgentEvent::ServiceUnavailable {
                        what: format!("the configuration history cannot be written ({e:#}); `tandem config history` and rollback miss epoch {epoch}"),
                    }),
                }
            }
        }
        let word = change::Committed {
            hash: &committed,
            epoch,
            next: next.as_deref(),
        };
        if let Some(hash) = self
            .cs
            .switching
            .as_ref()
            .map(|s| s.accepted.identity.hash.clone())
        {
            if change::still_wanted(&hash, word) {
                self.finish_switch(now);
            } else {
                // The change was abandoned: what stopped for it starts again.
                self.cancel_switch();
            }
            return;
        }
        if next.is_none() && committed == mine {
            // The change this node switched for committed.
            if self.cs.switched.is_some() {
                self.cs.switched = None;
                if let Err(e) = self.cs.store.set_switched(None) {
                    self.log(AgentEvent::ServiceUnavailable {
                        what: format!("{e:#}"),
                    });
                }
            }
            return;
        }
        if self.cs.failed.as_ref().is_some_and(|(h, retry_ms)| {
            now < *retry_ms && (Some(h) == next.as_ref() || *h == committed)
        }) {
            return;
        }
        let Some(target) = change::target(&mine, word, &self.cs.seen, self.cs.switched.as_deref())
        else {
            return;
        };
        if self.cs.fetching.is_some() || now < self.cs.fetch_after_ms {
            return;
        }
        match self.cs.store.text(&target.hash) {
            Some(text) => self.begin_switch(now, target.hash, text, target.catching_up),
            None => self.fetch_config(target.hash, now),
        }
    }

    /// Checks the staged text, builds its runner and retires the groups it
    /// restarts.
    fn begin_switch(&mut self, now: u64, target: String, text: String, catching_up: bool) {
        let dir = self.cs.dir();
        let accepted = match crate::config_change::prepare(&text, &dir, &self.cs.cfg) {
            Ok(a) if a.identity.hash == target => a,
            Ok(a) => {
                return self.switch_failed(
                    now,
                    target,
                    format!(
                        "the text kept for it is configuration {}; apply the change again",
                        a.identity.hash
                    ),
                )
            }
            // Catching up across a change made by hand (nodes, links...):
            // the operator rolls it out by restarting this agent, as the
            // warning that this node runs another configuration says.
            Err(why) if catching_up => {
                if self.cs.failed.as_ref().map(|f| &f.0) != Some(&target) {
                    self.log(AgentEvent::ConfigNotCaughtUp {
                        identity: target.clone(),
                        why: why.join("; "),
                    });
                }
                self.cs.failed = Some((target, now + SWITCH_RETRY_MS));
                return;
            }
            Err(why) => return self.switch_failed(now, target, why.join("; ")),
        };
        let (done_tx, done_rx) = mpsc::channel::<Done>(super::DONE_QUEUE);
        let runner = match Runner::new(
            &accepted.cfg,
            &self.topo.names[self.me],
            self.state_dir.join("run"),
            self.unix_at_zero_ms,
            done_tx,
            self.hub.as_ref(),
            self.filesync.as_ref(),
        ) {
            Ok(r) => r,
            Err(e) => return self.switch_failed(now, target, format!("{e:#}")),
        };
        let topo = match (&accepted.plan.added_node, &accepted.plan.removed_node) {
            (Some(name), _) => match self.topo.with_node(&accepted.cfg, name) {
                Some(t) => Some((t, self.me)),
                None => {
                    return self.switch_failed(
                        now,
                        target,
                        format!("the node it adds, {name}, is not in it"),
                    )
                }
            },
            (None, Some(name)) => {
                let id = tandem_core::wire::NodeId::from_name(name);
                let refusal = self.member.peer_removal_refusal(id, name);
                match (refusal, self.topo.without_node(name, self.me)) {
                    (None, Some(t)) => Some(t),
                    (Some(why), _) => return self.switch_failed(now, target, why),
                    (None, None) => {
                        return self.switch_failed(
                            now,
                            target,
                            format!("it drops this node, {name}: stop this agent instead"),
                        )
                    }
                }
            }
            (None, None) => None,
        };
        let members = topo.as_ref().map_or(&self.topo, |(t, _)| t);
        let fence_devices = crate::fence_agent::devices(&accepted.cfg);
        let groups = match super::groups_spec(&accepted.cfg, members, &fence_devices) {
            Ok(g) => g,
            Err(e) => return self.switch_failed(now, target, format!("{e:#}")),
        };
        if let Some(r) = self.runner.as_mut() {
            r.retire(accepted.plan.restart.clone());
        }
        self.log(AgentEvent::ConfigSwitching {
            identity: target,
            restart: accepted.plan.restart.clone(),
        });
        self.cs.switching = Some(Switching {
            accepted,
            text,
            catching_up,
            groups,
            topo,
            fence_devices,
            runner,
            done_rx,
        });
    }

    /// The copies a change gives this node's volumes or takes from them:
    /// each running copy here starts its link to the new one, or ends the
    /// link to the one whose node is forgotten; the exports run on.
    fn switch_volume_copies(&mut self, plan: &change::Plan, cfg: &Config) {
        let Some(hub) = self.hub.clone() else {
            return;
        };
        let me = self.topo.names[self.me].clone();
        let mine = |c: &&change::VolumeCopy| c.node != me && hub.holds(&c.volume);
        for c in plan.copies_added.iter().filter(mine) {
            let added = crate::volume::peer_copy(cfg, &c.volume, &me)
                .and_then(|p| anyhow::Context::context(p, "the volume lists no other copy"))
                .and_then(|p| Ok(hub.add_peer(&c.volume, p)?));
            if let Err(e) = added {
                self.log(AgentEvent::ServiceUnavailable {
                    what: format!(
                        "volume `{}` could not start its link to {}'s new copy: {e:#}",
                        c.volume, c.node
                    ),
                });
            }
        }
        for c in plan.copies_dropped.iter().filter(mine) {
            let _ = hub.drop_peer(&c.volume);
        }
    }

    /// Once the retired groups stopped and no action runs: the new file,
    /// runner, groups and identity.
    fn finish_switch(&mut self, now: u64) {
        let settled = match (&self.runner, &self.cs.switching) {
            (Some(r), Some(s)) => r.settled(&s.accepted.plan.restart),
            _ => false,
        };
        if !settled {
            return;
        }
        let Some(sw) = self.cs.switching.take() else {
            return;
        };
        let Switching {
            accepted,
            text,
            catching_up,
            groups,
            topo,
            fence_devices,
            runner,
            done_rx,
        } = sw;
        // Said before anything changes: a node that restarts midway must
        // still know its file came from a change that may not commit (and
        // one that cannot say so does not switch: it could be left on a
        // change that is abandoned).
        let switched = (!catching_up).then(|| accepted.identity.hash.clone());
        if let Err(e) = self.cs.store.set_switched(switched.as_deref()) {
            let hash = accepted.identity.hash.clone();
            self.cancel_switch();
            return self.switch_failed(now, hash, format!("{e:#}"));
        }
        self.cs.switched = switched;
        let file = match &self.cs.path {
            Some(p) => match crate::config_store::install(p, &text) {
                Ok(()) => Some(p.display().to_string()),
                Err(e) => {
                    self.log(AgentEvent::ServiceUnavailable {
                        what: format!("{e:#}"),
                    });
                    None
                }
            },
            None => None,
        };
        self.runner = Some(runner);
        self.done_rx = done_rx;
        self.fence_devices = std::rc::Rc::new(fence_devices);
        if let Some((topo, me)) = topo {
            // The node the change adds: heard, sent to, given the log.
            for j in self.topo.names.len()..topo.names.len() {
                let links = topo.shared_links(self.me, j);
                if self.member.add_peer(topo.ids[j], &topo.names[j], links) {
                    self.log(AgentEvent::NodeAdded {
                        node: topo.names[j].clone(),
                    });
                }
            }
            // The node it drops (checked when the switch began; a vote
            // given meanwhile keeps it a member, and says so).
            let dropped: Vec<(tandem_core::wire::NodeId, String)> = self
                .topo
                .ids
                .iter()
                .zip(&self.topo.names)
                .filter(|(id, _)| !topo.ids.contains(id))
                .map(|(id, n)| (*id, n.clone()))
                .collect();
            for (id, name) in dropped {
                match self.member.remove_peer(id, &name) {
                    Ok(true) => self.log(AgentEvent::NodeForgotten { node: name }),
                    Ok(false) => {}
                    Err(why) => self.log(AgentEvent::ServiceUnavailable {
                        what: format!("{name} stays a member here: {why}"),
                    }),
                }
            }
            self.topo = topo;
            self.me = me;
        }
        self.switch_volume_copies(&accepted.plan, &accepted.cfg);
        self.member.set_groups(groups, self.unix_at_zero_ms);
        self.member.set_config_identity(
            accepted.identity.hash.clone(),
            accepted.identity.sections.clone(),
        );
        self.tally
            .set_groups(crate::metrics::last_resources(&accepted.cfg));
        // The new configuration's secrets are scrubbed from events and
        // reports from now on (the old ones still are).
        for (_, v) in accepted.cfg.secrets() {
            if !self.secrets.iter().any(|s| s == v) {
                self.secrets.push(v.to_string());
            }
        }
        self.peer_service.set_running(&accepted.cfg, &self.secrets);
        self.config = accepted.identity.clone();
        self.cs.cfg = accepted.cfg;
        self.cs.text = Some(text);
        self.cs.failed = None;
        self.log(AgentEvent::ConfigSwitched {
            identity: accepted.identity.hash,
            changes: accepted
                .plan
                .changes
                .iter()
                .map(ToString::to_string)
                .collect(),
            file,
        });
    }

    /// Gives a switch up: the groups it retired are managed again.
    fn cancel_switch(&mut self) {
        self.cs.switching = None;
        if let Some(r) = self.runner.as_mut() {
            r.retire(Vec::new());
        }
    }

    fn switch_failed(&mut self, now: u64, identity: String, why: String) {
        self.cs.failed = Some((identity.clone(), now + SWITCH_RETRY_MS));
        self.log(AgentEvent::ConfigSwitchFailed {
            identity,
            why: format!(
                "{why}; this node starts nothing new until it runs the cluster's configuration: fix that (it tries again every {} s), or apply a configuration this node accepts",
                SWITCH_RETRY_MS / 1000
            ),
        });
    }

    /// Asks the peers for configuration `hash` (one fetch at a time, at
    /// most every [`FETCH_RETRY_MS`]).
    fn fetch_config(&mut self, hash: String, now: u64) {
        if self.cs.fetching.is_some() || now < self.cs.fetch_after_ms {
            return;
        }
        self.cs.fetching = Some(hash.clone());
        self.cs.fetch_after_ms = now + FETCH_RETRY_MS;
        let (svc, tx) = (Arc::clone(&self.peer_service), self.cs.fetched_tx.clone());
        tokio::task::spawn_local(async move {
            let text = svc.fetch_config(&hash).await;
            let _ = tx.send((hash, text)).await;
        });
    }

    /// A fetch came back: its text is staged once it is what was asked
    /// for.
    pub(super) fn on_fetched(&mut self, hash: String, text: Option<String>) {
        self.cs.fetching = None;
        let now = self.now_ms();
        let dir = self.cs.dir();
        let text = text.filter(|t| {
            tandem_core::config::load(t, &dir, &crate::keyfile::facts)
                .config
                .is_some_and(|c| tandem_core::config::identity::of(&c).hash == hash)
        });
        match text {
            Some(t) => {
                if let Err(e) = self.cs.store.stage(&hash, &t) {
                    self.switch_failed(now, hash, format!("cannot keep it: {e:#}"));
                }
            }
            None if self.cs.unfetched.as_deref() != Some(hash.as_str()) => {
                self.cs.unfetched = Some(hash.clone());
                self.log(AgentEvent::ConfigSwitchFailed {
                    identity: hash,
                    why: format!(
                        "no peer sent it yet, or not as that configuration (asking again every {} s)",
                        FETCH_RETRY_MS / 1000
                    ),
                });
            }
            None => {}
        }
    }
}
