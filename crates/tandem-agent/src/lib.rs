//! The Tandem agent as a library: everything that runs on a node, with no
//! command line. The `tandem` command parses arguments, calls in here and
//! renders what comes back.
//!
//! - [`agent::run`] runs a node's (or the witness's) loop: it moves the
//!   core's ([`tandem_core`]) events and actions between the network, the
//!   clock, the [`runner`] and the [`control`] socket.
//! - [`runner`] drives this node's groups: what each resource is asked to
//!   do, by the core's decisions; [`kinds`] holds a resource, its bounded
//!   actions and one file per resource kind; [`child`] runs programs.
//! - [`guard`] is the lease guard that stops what runs when the agent is
//!   gone; [`watchdog`] feeds the hardware watchdog; [`fence_agent`] runs
//!   fence devices.
//! - [`volume`] holds the replicated volumes (engine, peer link, NBD
//!   export); [`filesync`] keeps the `filesync` resources' files in step
//!   between nodes; [`netlink`] and [`announce`] move floating addresses.
//! - [`control`] is the versioned request/response protocol, its one
//!   handler and its client; [`status`] and [`event`] are what the agent
//!   tells, typed.
//! - [`state_file`], [`atomic_file`], [`checksum`], [`keyfile`] and
//!   [`clock`] are its small shared pieces.
//!
//! The agent starts its lease guard by running the program it runs in with
//! the `guard` subcommand (`tandem guard ...`); a program embedding this
//! library must offer it and call [`guard::run`].

pub mod agent;
pub mod alerts;
pub mod announce;
pub mod atomic_file;
pub mod checksum;
pub mod child;
pub mod clock;
pub mod config_change;
pub mod config_store;
pub mod control;
pub mod event;
pub mod event_journal;
pub mod fence_agent;
pub mod filesync;
pub mod guard;
pub mod http;
pub mod keyfile;
pub mod kinds;
pub mod logging;
pub mod machine_checks;
pub mod metrics;
pub mod monitor;
pub mod netlink;
pub mod node_report;
pub mod peer_auth;
pub mod peer_service;
pub mod runner;
pub mod sd_notify;
pub mod state_file;
pub mod status;
pub mod volume;
pub mod watchdog;
