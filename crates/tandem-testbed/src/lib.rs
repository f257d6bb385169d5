//! The Tandem testbed: real Linux network namespaces standing in for cluster
//! nodes, with faults to inject and a prober that measures what a client sees.
//!
//! One [`Testbed`] is one run: uniquely prefixed namespaces for N nodes, a
//! client, and a switch namespace holding one bridge per link (`lan`, `sync`,
//! ...). Inside a node, each link is an interface named after the link, with
//! the address `10.77.<link index + 1>.<10 + node number>/24`. Everything the
//! run creates lives inside its own namespaces (nftables tables, bridges,
//! veths) or under its own cgroup, so tear-down is deleting them; it runs on
//! drop, also while unwinding from a panic, and [`sweep`] removes what a
//! crashed run left behind, touching only the testbed's prefix.
//!
//! Modules:
//! - [`agents`]: real tandem agents on a testbed, and reading their status.
//! - [`campaign`]: seeded schedules of faults against a real cluster, and
//!   their verdicts (dual-active, outages against the failover bound).
//! - [`bed`]: building and tearing down a run, and the fault primitives.
//! - [`nbd_client`]: a small blocking NBD client for exact acknowledgement
//!   logs and malformed requests.
//! - [`freezer`]: freezing every process of a node (cgroup v1 or v2).
//! - [`prober`]: UDP and TCP probes from the client namespace every few ms.
//! - [`checker`]: pure analysis of a probe log: outage gaps and dual-active.
//! - [`responder`]: the tiny UDP/TCP service that answers with its node name.
//! - [`sweep`]: removal of leftovers from crashed runs.
//! - [`sys`]: small helpers for running commands and entering namespaces.
//! - [`user_manager`]: a real `systemd --user` manager with its own bus,
//!   where PID 1 is not systemd.
//! - [`wire`]: user-space delay, jitter and loss between two interfaces
//!   (the testbed's `tc netem`, which not every kernel has).

pub mod agents;
pub mod bed;
pub mod campaign;
pub mod checker;
pub mod fence;
pub mod freezer;
pub mod nbd_client;
pub mod prober;
pub mod responder;
pub mod sweep;
pub mod sys;
pub mod user_manager;
pub mod wire;
pub mod x509;

pub use bed::{Testbed, TestbedSpec};

/// Every namespace, cgroup and lock file of the testbed starts with this.
pub const PREFIX: &str = "tbd-";

/// True when running as root; the testbed needs it for namespaces.
pub fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// For tests that need root: prints `skipped: needs root` and returns false
/// when not root, so such a test never passes silently.
pub fn require_root(test: &str) -> bool {
    if is_root() {
        true
    } else {
        println!("skipped: needs root ({test})");
        false
    }
}
