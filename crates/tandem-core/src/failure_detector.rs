//! Who is alive, over which links: a sans-IO state machine fed with
//! authenticated heartbeats and the time, producing timestamped events.
//!
//! Rules:
//! - Per peer and link: `up` after a heartbeat; `late` when silent for
//!   `warntime_ms`; `down` when silent for `deadtime_ms`.
//! - Per peer: `dead` only when **every** link has been silent for
//!   `deadtime_ms` (one link failing is a link event, not a node event).
//! - A peer never heard since start is `unknown` until `startup_wait_ms` has
//!   passed, then `dead` (heartbeat's `initdead`).
//! - A heartbeat with a new incarnation from a peer thought alive means it
//!   restarted faster than deadtime: reported as `back (new incarnation)`.
//! - A `leave` announcement marks the peer `left` at once, without waiting.
//!
//! Time is milliseconds on a monotonic clock the caller owns. The caller
//! calls [`FailureDetector::on_tick`] no later than
//! [`FailureDetector::next_deadline`]; events are stamped with the deadline
//! that caused them, so the reported time does not depend on tick jitter.

use std::collections::BTreeMap;
use std::fmt;

use crate::config::Timing;
use crate::wire::NodeId;

/// State of one link to one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LinkState {
    /// Never heard on this link.
    Unknown,
    /// Heard within warntime.
    Up,
    /// Silent for warntime, not yet deadtime.
    Late,
    /// Silent for deadtime.
    Down,
}

/// State of one peer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeState {
    /// Not heard yet, still within the start-up wait.
    Unknown,
    /// Heard on at least one link within deadtime.
    Alive,
    /// Silent on every link for deadtime (or never heard by the end of the
    /// start-up wait).
    Dead,
    /// Announced it was leaving.
    Left,
}

/// What changed, and when.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    /// When it happened (ms, caller's clock).
    pub at_ms: u64,
    /// What happened.
    pub kind: EventKind,
}

/// The kinds of change the detector reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventKind {
    /// A link to `peer` carries heartbeats (again).
    LinkUp {
        /// The peer.
        peer: NodeId,
        /// Link index.
        link: usize,
    },
    /// A link to `peer` has been silent for warntime.
    LinkLate {
        /// The peer.
        peer: NodeId,
        /// Link index.
        link: usize,
    },
    /// A link to `peer` has been silent for deadtime.
    LinkDown {
        /// The peer.
        peer: NodeId,
        /// Link index.
        link: usize,
    },
    /// `peer` is heard (first time, or after being dead or gone).
    NodeAlive {
        /// The peer.
        peer: NodeId,
        /// Its incarnation.
        incarnation: u64,
    },
    /// `peer` restarted (new incarnation) without ever being declared dead.
    NodeBack {
        /// The peer.
        peer: NodeId,
        /// Its new incarnation.
        incarnation: u64,
    },
    /// `peer` is dead: every link silent for deadtime.
    NodeDead {
        /// The peer.
        peer: NodeId,
        /// True when it was never heard since this node started.
        never_seen: bool,
    },
    /// `peer` announced that it is leaving.
    NodeLeft {
        /// The peer.
        peer: NodeId,
    },
}

impl fmt::Display for EventKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            EventKind::LinkUp { peer, link } => write!(f, "link {peer}/{link} up"),
            EventKind::LinkLate { peer, link } => write!(f, "link {peer}/{link} late"),
            EventKind::LinkDown { peer, link } => write!(f, "link {peer}/{link} down"),
            EventKind::NodeAlive { peer, incarnation } => {
                write!(f, "node {peer} alive (incarnation {incarnation})")
            }
            EventKind::NodeBack { peer, incarnation } => {
                write!(f, "node {peer} back (new incarnation {incarnation})")
            }
            EventKind::NodeDead {
                peer,
                never_seen: false,
            } => write!(f, "node {peer} dead"),
            EventKind::NodeDead {
                peer,
                never_seen: true,
            } => write!(f, "node {peer} dead (never seen since start)"),
            EventKind::NodeLeft { peer } => write!(f, "node {peer} left"),
        }
    }
}

#[derive(Debug, Clone)]
struct Peer {
    state: NodeState,
    incarnation: Option<u64>,
    links: Vec<(LinkState, Option<u64>)>,
    /// Per link: whether the peer's last heartbeat listed this node as heard.
    hears_me: Vec<bool>,
}

/// The failure detector of one node.
#[derive(Debug, Clone)]
pub struct FailureDetector {
    timing: Timing,
    started_ms: u64,
    peers: BTreeMap<NodeId, Peer>,
}

impl FailureDetector {
    /// A detector for `peers` over `links` links, started at `now_ms`.
    pub fn new(timing: Timing, peers: &[NodeId], links: usize, now_ms: u64) -> Self {
        let peers = peers
            .iter()
            .map(|p| {
                (
                    *p,
                    Peer {
                        state: NodeState::Unknown,
                        incarnation: None,
                        links: vec![(LinkState::Unknown, None); links],
                        hears_me: vec![false; links],
                    },
                )
            })
            .collect();
        FailureDetector {
            timing,
            started_ms: now_ms,
            peers,
        }
    }

    /// A peer the configuration gained while running, not heard yet: dead
    /// until its first heartbeat, without an event (it did not die: it has
    /// not started; an alert for it would be false). Returns false when it
    /// was a peer already.
    pub fn add_peer(&mut self, peer: NodeId, links: usize) -> bool {
        if self.peers.contains_key(&peer) {
            return false;
        }
        self.peers.insert(
            peer,
            Peer {
                state: NodeState::Dead,
                incarnation: None,
                links: vec![(LinkState::Unknown, None); links],
                hears_me: vec![false; links],
            },
        );
        true
    }

    /// A peer the configuration dropped while running: forgotten.
    pub fn remove_peer(&mut self, peer: NodeId) {
        self.peers.remove(&peer);
    }

    /// State of `peer` (None for a node that is not a peer).
    pub fn node_state(&self, peer: NodeId) -> Option<NodeState> {
        self.peers.get(&peer).map(|p| p.state)
    }

    /// The newest incarnation of `peer` heard (or that left).
    pub fn incarnation(&self, peer: NodeId) -> Option<u64> {
        self.peers.get(&peer).and_then(|p| p.incarnation)
    }

    /// State of `peer`'s `link`.
    pub fn link_state(&self, peer: NodeId, link: usize) -> Option<LinkState> {
        self.peers
            .get(&peer)
            .and_then(|p| p.links.get(link))
            .map(|l| l.0)
    }

    /// Whether `peer`'s last heartbeat on `link` said it hears this node.
    /// A link that is `up` but not heard back is one-way: our packets are
    /// lost on the way to the peer.
    pub fn peer_hears_me(&self, peer: NodeId, link: usize) -> bool {
        self.peers
            .get(&peer)
            .and_then(|p| p.hears_me.get(link))
            .copied()
            .unwrap_or(false)
    }

    /// Records the `heard` list of a heartbeat just passed to
    /// [`FailureDetector::on_heartbeat`]: whether it named this node.
    pub fn on_heard_list(&mut self, peer: NodeId, link: usize, hears_me: bool) {
        if let Some(h) = self
            .peers
            .get_mut(&peer)
            .and_then(|p| p.hears_me.get_mut(link))
        {
            *h = hears_me;
        }
    }

    /// The peers, in id order.
    pub fn peers(&self) -> impl Iterator<Item = NodeId> + '_ {
        self.peers.keys().copied()
    }

    /// Peers this node currently hears on `link` (for the `heard` list of
    /// its own heartbeats).
    pub fn heard_on(&self, link: usize) -> Vec<NodeId> {
        self.peers
            .iter()
            .filter(|(_, p)| {
                matches!(
                    p.links.get(link),
                    Some((LinkState::Up | LinkState::Late, _))
                )
            })
            .map(|(id, _)| *id)
            .collect()
    }

    /// An authenticated, non-replayed heartbeat from `peer` on `link`.
    /// Heartbeats from unknown peers or links are ignored (the caller counts
    /// them as drops before they get here).
    pub fn on_heartbeat(
        &mut self,
        now_ms: u64,
        peer: NodeId,
        link: usize,
        incarnation: u64,
    ) -> Vec<Event> {
        let mut events = self.on_tick(now_ms);
        let Some(p) = self.peers.get_mut(&peer) else {
            return events;
        };
        if link >= p.links.len() {
            return events;
        }
        let ev = |kind| Event {
            at_ms: now_ms,
            kind,
        };
        if p.state == NodeState::Left && p.incarnation.is_some_and(|left| incarnation <= left) {
            return events;
        }
        match (p.state, p.incarnation) {
            (NodeState::Alive, Some(old)) if incarnation > old => {
                events.push(ev(EventKind::NodeBack { peer, incarnation }));
            }
            (NodeState::Alive, _) => {}
            _ => events.push(ev(EventKind::NodeAlive { peer, incarnation })),
        }
        // An older incarnation (a delayed packet) never lowers what is known.
        if p.incarnation.map_or(true, |old| old < incarnation) {
            p.incarnation = Some(incarnation);
        }
        p.state = NodeState::Alive;
        let l = &mut p.links[link];
        if l.0 != LinkState::Up {
            l.0 = LinkState::Up;
            events.push(ev(EventKind::LinkUp { peer, link }));
        }
        l.1 = Some(now_ms);
        events
    }

    /// `peer`, in `incarnation`, announced it is leaving. That incarnation
    /// does not come back: a heartbeat of it that arrives later (delayed on
    /// another link) is ignored; a new incarnation is a return.
    pub fn on_leave(&mut self, now_ms: u64, peer: NodeId, incarnation: u64) -> Vec<Event> {
        let mut events = self.on_tick(now_ms);
        let Some(p) = self.peers.get_mut(&peer) else {
            return events;
        };
        if p.incarnation.is_some_and(|old| old > incarnation) {
            // A leave of an older incarnation, delayed: it says nothing
            // about the one running now.
            return events;
        }
        p.incarnation = Some(incarnation);
        if p.state != NodeState::Left {
            p.state = NodeState::Left;
            for l in &mut p.links {
                l.0 = LinkState::Down;
            }
            events.push(Event {
                at_ms: now_ms,
                kind: EventKind::NodeLeft { peer },
            });
        }
        events
    }

    /// Applies every deadline that has passed by `now_ms`.
    pub fn on_tick(&mut self, now_ms: u64) -> Vec<Event> {
        let t = self.timing;
        let startup_end = self.started_ms + t.startup_wait_ms;
        let mut events = Vec::new();
        for (&peer, p) in &mut self.peers {
            for (link, l) in p.links.iter_mut().enumerate() {
                let Some(last) = l.1 else { continue };
                if l.0 == LinkState::Up
                    && now_ms >= last + t.warntime_ms
                    && t.warntime_ms < t.deadtime_ms
                {
                    l.0 = LinkState::Late;
                    events.push(Event {
                        at_ms: last + t.warntime_ms,
                        kind: EventKind::LinkLate { peer, link },
                    });
                }
                if matches!(l.0, LinkState::Up | LinkState::Late) && now_ms >= last + t.deadtime_ms
                {
                    l.0 = LinkState::Down;
                    p.hears_me[link] = false;
                    events.push(Event {
                        at_ms: last + t.deadtime_ms,
                        kind: EventKind::LinkDown { peer, link },
                    });
                }
            }
            match p.state {
                NodeState::Alive => {
                    let newest = p
                        .links
                        .iter()
                        .filter_map(|l| l.1)
                        .max()
                        .unwrap_or(self.started_ms);
                    if now_ms >= newest + t.deadtime_ms {
                        p.state = NodeState::Dead;
                        events.push(Event {
                            at_ms: newest + t.deadtime_ms,
                            kind: EventKind::NodeDead {
                                peer,
                                never_seen: false,
                            },
                        });
                    }
                }
                NodeState::Unknown if now_ms >= startup_end => {
                    p.state = NodeState::Dead;
                    events.push(Event {
                        at_ms: startup_end,
                        kind: EventKind::NodeDead {
                            peer,
                            never_seen: true,
                        },
                    });
                }
                _ => {}
            }
        }
        events.sort_by_key(|e| e.at_ms);
        events
    }

    /// The earliest time at which [`FailureDetector::on_tick`] will report
    /// something, if anything is pending.
    pub fn next_deadline(&self) -> Option<u64> {
        let t = self.timing;
        let mut next: Option<u64> = None;
        let mut consider = |d: u64| next = Some(next.map_or(d, |n| n.min(d)));
        for p in self.peers.values() {
            for l in &p.links {
                match l {
                    (LinkState::Up, Some(last)) if t.warntime_ms < t.deadtime_ms => {
                        consider(last + t.warntime_ms)
                    }
                    (LinkState::Up | LinkState::Late, Some(last)) => consider(last + t.deadtime_ms),
                    _ => {}
                }
            }
            if p.state == NodeState::Unknown {
                consider(self.started_ms + t.startup_wait_ms);
            }
        }
        next
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const T: Timing = Timing {
        heartbeat_ms: 50,
        deadtime_ms: 250,
        warntime_ms: 150,
        startup_wait_ms: 5_000,
    };

    fn n(i: u64) -> NodeId {
        NodeId(i)
    }

    fn kinds(events: &[Event]) -> Vec<String> {
        events
            .iter()
            .map(|e| format!("{}@{}", e.kind, e.at_ms))
            .collect()
    }

    /// Feeds heartbeats from peer 2 on `links` every 50 ms in [from, to).
    fn beat(fd: &mut FailureDetector, from: u64, to: u64, links: &[usize], inc: u64) -> Vec<Event> {
        let mut ev = Vec::new();
        let mut t = from;
        while t < to {
            for &l in links {
                ev.extend(fd.on_heartbeat(t, n(2), l, inc));
            }
            t += 50;
        }
        ev
    }

    #[test]
    fn heard_list_marks_one_way_links_and_resets_when_down() {
        let mut fd = FailureDetector::new(T, &[n(2)], 2, 0);
        fd.on_heartbeat(10, n(2), 0, 1);
        fd.on_heard_list(n(2), 0, false);
        assert!(!fd.peer_hears_me(n(2), 0));
        fd.on_heard_list(n(2), 0, true);
        assert!(fd.peer_hears_me(n(2), 0));
        assert!(!fd.peer_hears_me(n(2), 1));
        fd.on_tick(10 + T.deadtime_ms);
        assert!(!fd.peer_hears_me(n(2), 0), "a dead link hears nothing");
    }

    #[test]
    fn steady_heartbeats_only_announce_the_peer_once() {
        let mut fd = FailureDetector::new(T, &[n(2)], 2, 0);
        let ev = beat(&mut fd, 10, 2_000, &[0, 1], 7);
        assert_eq!(
            kinds(&ev),
            [
                "node 0000000000000002 alive (incarnation 7)@10",
                "link 0000000000000002/0 up@10",
                "link 0000000000000002/1 up@10"
            ]
        );
        assert_eq!(fd.node_state(n(2)), Some(NodeState::Alive));
        assert_eq!(fd.heard_on(1), vec![n(2)]);
    }

    #[test]
    fn one_link_silent_is_a_link_event_not_a_node_event() {
        let mut fd = FailureDetector::new(T, &[n(2)], 2, 0);
        beat(&mut fd, 0, 1_000, &[0, 1], 1);
        // link 1 last heard at 950; link 0 continues.
        let ev = beat(&mut fd, 1_000, 2_000, &[0], 1);
        assert_eq!(
            kinds(&ev),
            [
                "link 0000000000000002/1 late@1100",
                "link 0000000000000002/1 down@1200"
            ]
        );
        assert_eq!(fd.node_state(n(2)), Some(NodeState::Alive));
        assert_eq!(fd.link_state(n(2), 1), Some(LinkState::Down));
        assert!(fd.heard_on(1).is_empty());
        // Link 1 returns.
        let ev = beat(&mut fd, 2_000, 2_050, &[0, 1], 1);
        assert_eq!(kinds(&ev), ["link 0000000000000002/1 up@2000"]);
    }

    #[test]
    fn all_links_silent_for_deadtime_is_dead_at_exactly_last_plus_deadtime() {
        let mut fd = FailureDetector::new(T, &[n(2)], 2, 0);
        beat(&mut fd, 0, 1_000, &[0, 1], 1); // last heartbeat at 950
        assert_eq!(fd.next_deadline(), Some(950 + 150));
        let ev = fd.on_tick(1_199);
        assert!(ev
            .iter()
            .all(|e| !matches!(e.kind, EventKind::NodeDead { .. })));
        // A late tick still stamps the event with the deadline itself.
        let ev = fd.on_tick(1_230);
        let dead: Vec<_> = ev
            .iter()
            .filter(|e| matches!(e.kind, EventKind::NodeDead { .. }))
            .collect();
        assert_eq!(dead.len(), 1);
        assert_eq!(dead[0].at_ms, 1_200);
        assert_eq!(fd.node_state(n(2)), Some(NodeState::Dead));
        assert_eq!(fd.next_deadline(), None);
        // It comes back with the same incarnation.
        let ev = fd.on_heartbeat(3_000, n(2), 1, 1);
        assert_eq!(
            kinds(&ev),
            [
                "node 0000000000000002 alive (incarnation 1)@3000",
                "link 0000000000000002/1 up@3000"
            ]
        );
    }

    #[test]
    fn restart_faster_than_deadtime_is_reported_as_back() {
        let mut fd = FailureDetector::new(T, &[n(2)], 1, 0);
        beat(&mut fd, 0, 500, &[0], 1);
        let ev = fd.on_heartbeat(520, n(2), 0, 2);
        assert_eq!(
            kinds(&ev),
            ["node 0000000000000002 back (new incarnation 2)@520"]
        );
        // An older incarnation never lowers what is known.
        fd.on_heartbeat(540, n(2), 0, 1);
        let ev = fd.on_heartbeat(560, n(2), 0, 2);
        assert!(ev.is_empty(), "{ev:?}");
    }

    #[test]
    fn never_seen_peer_is_dead_after_startup_wait() {
        let mut fd = FailureDetector::new(T, &[n(2), n(3)], 2, 1_000);
        beat(&mut fd, 1_000, 7_000, &[0, 1], 1);
        assert_eq!(fd.node_state(n(3)), Some(NodeState::Dead));
        let mut fd = FailureDetector::new(T, &[n(3)], 2, 1_000);
        assert_eq!(fd.next_deadline(), Some(6_000));
        assert!(fd.on_tick(5_999).is_empty());
        assert_eq!(
            kinds(&fd.on_tick(6_000)),
            ["node 0000000000000003 dead (never seen since start)@6000"]
        );
    }

    #[test]
    fn leave_is_immediate() {
        let mut fd = FailureDetector::new(T, &[n(2)], 2, 0);
        beat(&mut fd, 0, 500, &[0, 1], 1);
        let ev = fd.on_leave(510, n(2), 1);
        assert_eq!(kinds(&ev), ["node 0000000000000002 left@510"]);
        assert_eq!(fd.node_state(n(2)), Some(NodeState::Left));
        assert!(
            fd.on_tick(5_000).is_empty(),
            "a departed node must not also die"
        );
        // A heartbeat of the incarnation that left, delayed on the other
        // link, does not bring it back (it would then die and be fenced).
        assert!(fd.on_heartbeat(5_100, n(2), 1, 1).is_empty());
        assert_eq!(fd.node_state(n(2)), Some(NodeState::Left));
        let ev = fd.on_heartbeat(6_000, n(2), 0, 2);
        assert!(matches!(
            ev[0].kind,
            EventKind::NodeAlive { incarnation: 2, .. }
        ));
    }

    #[test]
    fn unknown_peers_and_links_are_ignored() {
        let mut fd = FailureDetector::new(T, &[n(2)], 1, 0);
        assert!(fd.on_heartbeat(10, n(9), 0, 1).is_empty());
        assert!(fd.on_heartbeat(10, n(2), 5, 1).is_empty());
        assert_eq!(fd.node_state(n(9)), None);
    }

    proptest! {
        /// Random heartbeat arrivals on two links, ticks at random times:
        /// after every step, the peer is dead exactly when both links have
        /// been silent for deadtime, and dead/alive events alternate.
        #[test]
        fn dead_iff_every_link_silent_for_deadtime(steps in proptest::collection::vec((0u64..120, 0usize..3), 1..300)) {
            let mut fd = FailureDetector::new(Timing { startup_wait_ms: 0, ..T }, &[n(2)], 2, 0);
            let mut now = 0u64;
            let mut last: [Option<u64>; 2] = [None, None];
            let mut alive_events = 0i64;
            for (dt, what) in steps {
                now += dt;
                let ev = if what < 2 {
                    last[what] = Some(now);
                    fd.on_heartbeat(now, n(2), what, 1)
                } else {
                    fd.on_tick(now)
                };
                for e in &ev {
                    prop_assert!(e.at_ms <= now);
                    match e.kind {
                        EventKind::NodeAlive { .. } => alive_events += 1,
                        EventKind::NodeDead { never_seen: false, .. } => alive_events -= 1,
                        _ => {}
                    }
                    prop_assert!((0..=1).contains(&alive_events), "{:?}", e);
                }
                let newest = last.iter().flatten().max().copied();
                let expect_dead = newest.is_some_and(|t| now >= t + T.deadtime_ms);
                if newest.is_some() {
                    prop_assert_eq!(fd.node_state(n(2)) == Some(NodeState::Dead), expect_dead, "now {} last {:?}", now, last);
                }
                // Every deadline due by `now` was applied in this step.
                if let Some(d) = fd.next_deadline() {
                    prop_assert!(d > now, "deadline {} not applied at {}", d, now);
                }
            }
        }
    }
}
