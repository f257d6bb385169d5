//! The state of a copy's replication link, and the rules that move it.
//!
//! - Only the operator ends `AdminDown` (`tandem volume connect`): no
//!   connection, handshake or teardown brings a disconnected link back.
//!   (CI once found writes replicating after a disconnect: a connection
//!   that was authenticating at that moment installed itself.)
//! - A session may install itself only while the link admits sessions.
//! - A handshake's outcome (connected, split brain, refused) is taken
//!   unless the link went down meanwhile.
//! - The end of a session turns `Connected` into `Connecting`; any other
//!   state stays (a split brain or a refusal waits for the operator).

use serde::{Deserialize, Serialize};

/// The state of the link to the peer copy.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum LinkState {
    /// Trying to reach the peer.
    Connecting,
    /// Connected: handshake done.
    Connected,
    /// Stopped after detecting split brain; an operator decides.
    SplitBrain(String),
    /// Stopped: the copies cannot be synced (unrelated data, size).
    Refused(String),
    /// `tandem volume disconnect`.
    AdminDown,
}

/// Why the link does not try to connect now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pause {
    /// The operator disconnected it: look again shortly for `connect`.
    Operator,
    /// Split brain or refused: retry rarely (the operator may fix it).
    Stopped,
}

impl LinkState {
    /// Whether a new session may install itself (and a connection be
    /// accepted at all).
    pub fn admits_session(&self) -> bool {
        !matches!(self, LinkState::AdminDown)
    }

    /// Takes a handshake's outcome, unless the operator disconnected the
    /// link meanwhile.
    pub fn settle(&mut self, to: LinkState) {
        if self.admits_session() {
            *self = to;
        }
    }

    /// A session ended.
    pub fn on_session_end(&mut self) {
        if *self == LinkState::Connected {
            *self = LinkState::Connecting;
        }
    }

    /// `tandem volume disconnect`.
    pub fn disconnect(&mut self) {
        *self = LinkState::AdminDown;
    }

    /// `tandem volume connect`: the one way out of `AdminDown` (and of a
    /// split brain or a refusal, once the operator decided).
    pub fn connect(&mut self) {
        *self = LinkState::Connecting;
    }

    /// Why the link should not dial now, if it should not.
    pub fn pause(&self) -> Option<Pause> {
        match self {
            LinkState::AdminDown => Some(Pause::Operator),
            LinkState::SplitBrain(_) | LinkState::Refused(_) => Some(Pause::Stopped),
            LinkState::Connecting | LinkState::Connected => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<LinkState> {
        vec![
            LinkState::Connecting,
            LinkState::Connected,
            LinkState::SplitBrain("x".into()),
            LinkState::Refused("y".into()),
            LinkState::AdminDown,
        ]
    }

    /// Regression: a connection authenticating during `volume disconnect`
    /// brought the link back (CI: writes made while disconnected were
    /// replicated, 0 bytes dirty). Nothing but `connect` ends AdminDown.
    #[test]
    fn regression_nothing_but_connect_ends_an_operators_disconnect() {
        for to in all() {
            let mut s = LinkState::Connected;
            s.disconnect();
            assert!(!s.admits_session());
            s.settle(to.clone());
            assert_eq!(s, LinkState::AdminDown, "settle({to:?})");
            s.on_session_end();
            assert_eq!(s, LinkState::AdminDown);
            assert_eq!(s.pause(), Some(Pause::Operator));
        }
        let mut s = LinkState::AdminDown;
        s.connect();
        assert!(s.admits_session());
        assert_eq!(s.pause(), None);
    }

    #[test]
    fn a_session_end_only_moves_a_connected_link() {
        for from in all() {
            let mut s = from.clone();
            s.on_session_end();
            let want = if from == LinkState::Connected {
                LinkState::Connecting
            } else {
                from
            };
            assert_eq!(s, want);
        }
    }

    #[test]
    fn outcomes_are_taken_while_the_link_admits_sessions() {
        for from in all().into_iter().filter(LinkState::admits_session) {
            for to in all() {
                let mut s = from.clone();
                s.settle(to.clone());
                assert_eq!(s, to);
            }
        }
    }

    #[test]
    fn split_brain_and_refusal_pause_until_the_operator_connects() {
        for mut s in [
            LinkState::SplitBrain("x".into()),
            LinkState::Refused("y".into()),
        ] {
            assert_eq!(s.pause(), Some(Pause::Stopped));
            s.on_session_end();
            assert_eq!(s.pause(), Some(Pause::Stopped));
            s.connect();
            assert_eq!(s.pause(), None);
        }
    }
}
