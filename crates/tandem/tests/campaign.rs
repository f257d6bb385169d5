//! The short fault campaign CI runs (needs root): seeded schedules of
//! faults against a 3-node cluster and a 2-node cluster with fencing, the
//! client probing the floating IP (`tandem_testbed::campaign`). Every
//! schedule must show zero dual-active instants and no unexplained outage.
//! The full campaign is `bench/run campaign` (figures in
//! docs/BENCHMARKS.md); a failing schedule replays with the command this
//! test prints.
//!
//! `TANDEM_CAMPAIGN_SCHEDULES` (per shape, default 10) and
//! `TANDEM_CAMPAIGN_SEED` (first seed, default 1) choose the schedules.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::path::Path;

use tandem_testbed::campaign::{run_schedule, schedule, summary, Shape};
use tandem_testbed::require_root;

fn env(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn fault_campaign_never_dual_active_and_every_outage_explained() {
    if !require_root("fault_campaign_never_dual_active_and_every_outage_explained") {
        return;
    }
    let per_shape = env("TANDEM_CAMPAIGN_SCHEDULES", 10);
    let first = env("TANDEM_CAMPAIGN_SEED", 1);
    let tandem = Path::new(env!("CARGO_BIN_EXE_tandem"));
    let mut outcomes = Vec::new();
    let mut bad = Vec::new();
    for shape in [Shape::Three, Shape::TwoFenced] {
        for seed in first..first + per_shape {
            let o = run_schedule(tandem, &schedule(shape, seed), None).unwrap();
            println!("{}", o.line());
            if !o.dual_active.is_empty() || !o.unexplained().is_empty() {
                bad.push(format!(
                    "{}\n    dual-active: {:?}\n    unexplained: {:?}\n    replay: bench/run campaign --shape {} --seed {seed} --schedules 1",
                    o.line(),
                    o.dual_active,
                    o.unexplained(),
                    shape.as_str()
                ));
            }
            outcomes.push(o);
        }
    }
    println!("\n{}", summary(&outcomes));
    assert!(outcomes.len() >= 20);
    assert!(bad.is_empty(), "failing schedules:\n{}", bad.join("\n"));
}
