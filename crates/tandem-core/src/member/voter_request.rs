//! `tandem node add|remove`: an operator's wish that a configured node vote
//! (or stop voting), carried out by the leader one change of voters at a
//! time ([`Member::change_voters`]).
//!
//! A change may not be proposable at once: the previous one may be too
//! recent (nodes that missed it may still hold a lease on the voters before
//! it), uncommitted, or the node to add may not have caught up yet. So the
//! leader keeps the wishes in order (at most [`MAX_VOTER_WISHES`]; a newer
//! one for the same node replaces an older one not yet proposed) and, on
//! every pass of its loop, tries the first until the log says what was
//! asked, a refusal that waiting cannot cure, or [`VOTER_WISH_MS`] pass
//! from when it came first. Each outcome is a [`MemberEvent::VoterChange`]:
//! no wish ends without one while this member leads. The operator's command
//! watches the status and says what happened.

use super::*;

/// How long the leader keeps trying to carry out one wish: long enough
/// for a node to catch up with the log and for a previous change to
/// settle (a lease), short enough that a wish nobody can meet ends with a
/// reason rather than surfacing much later.
pub const VOTER_WISH_MS: u64 = 30_000;

/// Wishes the leader keeps at once: operators add or remove a few nodes in
/// a row; more waiting than that is a script gone wrong.
pub const MAX_VOTER_WISHES: usize = 8;

/// An operator's wish for one node's vote, held by the leader.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct VoterWish {
    /// The node.
    pub node: NodeId,
    /// Its name, for events.
    pub name: String,
    /// Vote (true) or not.
    pub vote: bool,
    /// When the leader gives up (this member's clock), set when the wish
    /// comes first.
    pub until_ms: Option<u64>,
    /// The index of the change it proposed, once it did.
    pub proposed: Option<u64>,
    /// Why the latest try was refused, for the event at the deadline.
    pub last_refusal: Option<VoterChangeError>,
}

/// What became of a wish ([`MemberEvent::VoterChange`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum VoterOutcome {
    /// The change was proposed at this index.
    Proposed {
        /// Its log index.
        index: u64,
    },
    /// The log says what was asked, committed.
    Done,
    /// Not done, and the leader stopped trying.
    Refused {
        /// Why, in words that say what to do.
        reason: String,
    },
}

impl VoterChangeError {
    /// Whether waiting can cure it (the leader tries again).
    fn passes(&self) -> bool {
        matches!(
            self,
            VoterChangeError::Settling { .. }
                | VoterChangeError::Agreement(
                    ProposeError::VotersChanging | ProposeError::NotCaughtUp | ProposeError::Busy
                )
        )
    }
}

impl Member {
    /// Whether a wish that `node` vote (or not) can ever be met, as this
    /// member's log says: the node's id, or why not (an unknown node, no
    /// voter left, two-node mode, too many voters). The leader checks it
    /// when the request arrives; an agent checks it before passing the
    /// operator's request on, so the operator hears at once.
    pub fn voter_refusal(&self, node: &str, vote: bool) -> Result<NodeId, String> {
        let Some(id) = self.agreement_node(node) else {
            return Err(format!(
                "{node} is not a node of this cluster's configuration"
            ));
        };
        let voters = self.agreement.voters();
        let others = voters.iter().filter(|v| **v != id).count();
        let after = voters.len() + usize::from(vote) - usize::from(voters.contains(&id));
        if self.spec.mode == quorum::Mode::TwoNode
            && voters.contains(&id) != vote
            && !super::two_node_change_ok(voters.len(), after)
        {
            Err(VoterChangeError::TwoNode.to_string())
        } else if !vote && others == 0 {
            Err(format!(
                "{node} is the only voter: removing it would leave no voter"
            ))
        } else if vote && !voters.contains(&id) && others >= quorum::MAX_VOTERS {
            Err(VoterChangeError::TooMany.to_string())
        } else {
            Ok(id)
        }
    }

    /// On the leader: take on the wish that `node` vote (or not), after
    /// those already kept. A newer wish for the same node replaces an older
    /// one not yet proposed (the operator changed their mind; the older
    /// one ends as refused, saying so). Returns whether it was taken on: a
    /// wish that can never be met ([`Member::voter_refusal`]), or one past
    /// [`MAX_VOTER_WISHES`], is refused at once, and then nothing else of
    /// the request is done.
    pub(super) fn want_voter(&mut self, node: &str, vote: bool) -> bool {
        let refused = |reason| MemberEvent::VoterChange {
            node: node.to_string(),
            vote,
            outcome: VoterOutcome::Refused { reason },
        };
        let id = match self.voter_refusal(node, vote) {
            Ok(id) => id,
            Err(reason) => {
                self.out.events.push(refused(reason));
                return false;
            }
        };
        if let Some(k) = self
            .voter_wishes
            .iter()
            .position(|w| w.node == id && w.proposed.is_none())
        {
            if self.voter_wishes[k].vote == vote {
                return true;
            }
            if let Some(old) = self.voter_wishes.remove(k) {
                self.out.events.push(MemberEvent::VoterChange {
                    node: old.name,
                    vote: old.vote,
                    outcome: VoterOutcome::Refused {
                        reason: format!(
                            "replaced by a newer request: node {} {node}",
                            if vote { "add" } else { "remove" }
                        ),
                    },
                });
            }
        }
        if self.voter_wishes.len() >= MAX_VOTER_WISHES {
            self.out.events.push(refused(format!(
                "{MAX_VOTER_WISHES} node add/remove requests are waiting already; try again once they are done"
            )));
            return false;
        }
        self.voter_wishes.push_back(VoterWish {
            node: id,
            name: node.to_string(),
            vote,
            until_ms: None,
            proposed: None,
            last_refusal: None,
        });
        self.lead_dirty = true;
        true
    }

    /// The id of the configured node called `name`: a host by the groups'
    /// table, else (a witness) by its name's id.
    fn agreement_node(&self, name: &str) -> Option<NodeId> {
        let id = self
            .host_id(name)
            .unwrap_or_else(|| NodeId::from_name(name));
        (id == self.spec.me || self.spec.peers.iter().any(|p| p.id == id)).then_some(id)
    }

    /// On every pass of the leader's loop: one step towards the first
    /// wish, and on to the next while wishes end.
    pub(super) fn lead_voters(&mut self) {
        if self.voter_wishes.is_empty() {
            self.pin_voters();
        }
        for _ in 0..=MAX_VOTER_WISHES {
            let Some(wish) = self.voter_wishes.pop_front() else {
                return;
            };
            match self.lead_wish(wish) {
                Some(kept) => {
                    self.voter_wishes.push_front(kept);
                    return;
                }
                None => continue,
            }
        }
    }

    /// On the leader, while the log does not name the voters yet (a new
    /// cluster): write the voters in force into the log (the same ones: no
    /// quorum changes). From then on the log, not each node's
    /// configuration, says who votes: a node added while running (`tandem
    /// node add NAME --address`) is listed as a voter by the configuration
    /// every node switches to, and one started or restarted with it would
    /// otherwise count it as a voter while the others do not. (Until the
    /// first leader writes them, the nodes' voters can differ by the one
    /// node being added, which Raft's single-server change rule keeps
    /// safe; the first leader's are then everyone's.) Refusals pass (tried
    /// again on the next pass).
    fn pin_voters(&mut self) {
        if self.agreement.role() != Role::Leader
            || self.agreement.voters_written()
            || self.two_node()
        {
            return;
        }
        let voters = self.agreement.voters().to_vec();
        let _ = self.change_voters(self.now_ms, voters);
    }

    /// One step towards `wish`: it back while under way, None once it ended
    /// (its outcome pushed).
    fn lead_wish(&mut self, mut wish: VoterWish) -> Option<VoterWish> {
        let event = |w: &VoterWish, outcome| {
            let outcome = match outcome {
                // The removal's standby was recorded with the request.
                VoterOutcome::Refused { reason } if !w.vote => VoterOutcome::Refused {
                    reason: format!(
                        "{reason} ({} stays in standby: `tandem node online {}` lets it host again)",
                        w.name, w.name
                    ),
                },
                o => o,
            };
            MemberEvent::VoterChange {
                node: w.name.clone(),
                vote: w.vote,
                outcome,
            }
        };
        let until_ms = *wish.until_ms.get_or_insert(self.now_ms + VOTER_WISH_MS);
        let mut voters = self.agreement.voters().to_vec();
        let votes = voters.contains(&wish.node);
        // Done first: a leader that removed itself steps down once the
        // change committed, and that is success, not a lost wish.
        if votes == wish.vote && !self.agreement.voters_changing() {
            self.out.events.push(event(&wish, VoterOutcome::Done));
            return None;
        }
        if self.agreement.role() != Role::Leader {
            // Leadership moved: the wish goes with it unfulfilled (the
            // operator's command says so and may be run again).
            let reason = match wish.proposed {
                Some(index) => format!(
                    "this node stopped leading before the change at index {index} committed; it may still commit under the next leader (`tandem status` shows the voters): run the command again if it did not"
                ),
                None => "this node stopped leading before the change was proposed; run the command again".to_string(),
            };
            self.out
                .events
                .push(event(&wish, VoterOutcome::Refused { reason }));
            return None;
        }
        if self.now_ms >= until_ms {
            let why = match (&wish.last_refusal, wish.proposed) {
                (_, Some(index)) if votes == wish.vote => format!(
                    "the change proposed at index {index} has not committed; is a majority of the new voters reachable?"
                ),
                (Some(VoterChangeError::Agreement(ProposeError::NotCaughtUp)), _) if !wish.vote => {
                    "a majority of the remaining voters must hold the log and answer".to_string()
                }
                (Some(e), _) => e.to_string(),
                (None, _) => "no reason given".to_string(),
            };
            self.out.events.push(event(
                &wish,
                VoterOutcome::Refused {
                    reason: format!("not done in {} s: {why}", VOTER_WISH_MS / 1000),
                },
            ));
            return None;
        }
        if votes == wish.vote {
            // Proposed, not yet committed.
            return Some(wish);
        }
        if wish.vote {
            voters.push(wish.node);
            voters.sort();
        } else {
            voters.retain(|v| *v != wish.node);
        }
        match self.change_voters(self.now_ms, voters) {
            Ok(index) => {
                wish.proposed = Some(index);
                self.out
                    .events
                    .push(event(&wish, VoterOutcome::Proposed { index }));
                Some(wish)
            }
            Err(e) if e.passes() => {
                wish.last_refusal = Some(e);
                Some(wish)
            }
            Err(e) => {
                let reason = e.to_string();
                self.out
                    .events
                    .push(event(&wish, VoterOutcome::Refused { reason }));
                None
            }
        }
    }
}
