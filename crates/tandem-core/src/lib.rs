//! Tandem's sans-IO core.
//!
//! Everything in this crate is deterministic: it reads no clock, opens no socket
//! and touches no file. Callers pass in what the world looks like (file contents,
//! facts about key files, and later packets and `now`) and get back values or
//! actions. That is what makes every rule testable in memory.
//!
//! Modules:
//! - [`config`]: the cluster configuration file: typed schema, timing profiles
//!   and validation that reports every problem with line and column.
//! - [`diagnostic`]: located errors and warnings, and their rendering.
//! - [`wire`]: authenticated packet formats and replay protection.
//! - [`failure_detector`]: per-link and per-node liveness from heartbeats and time.
//! - [`quorum`]: the quorum rule over the membership view.
//! - [`agreement`]: the replicated cluster record (a sans-IO Raft engine).
//! - [`fence`]: the plan for fencing a node through its devices (levels,
//!   delays, retries) and redaction of secrets.
//! - [`filesync`]: the `filesync` kind's sync rules: manifests, plans and
//!   which received paths may be written.
//! - [`lease`]: how long a node may run its groups without fresh word, and
//!   how long the leader waits before starting a silent node's groups.
//! - [`policy`]: where each group should run (pure placement rules).
//! - [`kinds`]: resource kinds, one file each: fields, defaults, checks.
//! - [`handover`]: the leader's safe steps from the agreed placement to the
//!   policy's targets (always through "stopped everywhere").
//! - [`group`]: one node's groups: probe, ordered start, reverse stop,
//!   failures and restarts.
//! - [`member`]: one member's whole protocol state, joining the above.
//! - [`link_monitors`]: a node's ping monitors of its links: what is due
//!   when, and when failures mark a link failed here.
//! - [`monitors`]: group monitors on one node: what is due when, and what
//!   failures in a row lead to.
//! - [`on_fail`]: what a failure leads to, here and at the leader.
//! - [`nbd`]: the NBD protocol (handshake and request stream), server side.
//! - [`volume`]: replicated volumes: disk states, generations, the sync
//!   decision, the dirty bitmap and the replication link's messages.
//! - `testing` (tests, or the `testing` feature): an in-memory cluster
//!   for tests that read like stories.
//! - [`wants`]: what this node wants of each of its groups (run, stop,
//!   leave) and until when it may keep a group moved away.
//! - [`watchdog`]: when the agent feeds the node's watchdog and when it
//!   lets it reset the node.

// The core decides; it never needs to reach past the type system.
#![forbid(unsafe_code)]
// Lengths and counts go on the wire and into files: a silent truncation
// would be a protocol bug. (Tests build inputs freely.)
#![cfg_attr(not(test), warn(clippy::cast_possible_truncation))]

pub mod agreement;
pub mod config;
pub mod diagnostic;
pub mod failure_detector;
pub mod fence;
pub mod filesync;
pub mod group;
pub mod handover;
pub mod http_access;
pub mod import;
pub mod init;
pub mod kinds;
pub mod lease;
pub mod link_monitors;
pub mod link_rtt;
pub mod member;
pub mod monitors;
pub mod nbd;
pub mod on_fail;
pub mod policy;
pub mod quorum;
#[cfg(any(test, feature = "testing"))]
pub mod testing;
pub mod volume;
pub mod wants;
pub mod watchdog;
pub mod wire;
