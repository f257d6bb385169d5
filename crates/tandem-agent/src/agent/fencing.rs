//! Fence orchestration: running a fence device's program for the plan the
//! core made (levels, delays, retries), and confirming the outcome.

use super::*;

/// Fences `node` through the configured devices (or powers it on, `on`),
/// following the core's plan (levels, delays, retries). An attempt counts
/// only once the device's `status` confirms the new state (exit 2 off, 0
/// on). Returns success and one line per attempt.
pub(super) async fn run_fence(
    devices: &[crate::fence_agent::FenceDevice],
    node: &str,
    on: bool,
    started: Instant,
) -> (bool, Vec<String>) {
    use tandem_core::fence::{Plan, Step};
    let now = || started.elapsed().as_millis() as u64;
    let plan_devices: Vec<tandem_core::fence::Device> =
        devices.iter().map(|d| d.plan.clone()).collect();
    let mut plan = match Plan::new(&plan_devices, node, now()) {
        Ok(p) => p,
        Err(e) => return (false, vec![e.to_string()]),
    };
    let ok = loop {
        match plan.next_step() {
            Step::Done(ok) => break ok,
            Step::Busy => break false,
            Step::Run {
                device,
                plug,
                at_ms,
            } => {
                let wait = at_ms.saturating_sub(now());
                tokio::time::sleep(Duration::from_millis(wait)).await;
                let dev = &devices[device];
                let action = if on { "on" } else { "off" };
                let r = crate::fence_agent::run(dev, action, Some(&plug), node).await;
                if r.code != Some(0) {
                    plan.on_result(now(), false, r.output);
                    continue;
                }
                let st = crate::fence_agent::run(dev, "status", Some(&plug), node).await;
                let confirmed = st.code == Some(if on { 0 } else { 2 });
                plan.on_result(now(), confirmed, format!("{}; {}", r.output, st.output));
            }
        }
    };
    let attempts = plan
        .history()
        .iter()
        .map(|a| {
            format!(
                "attempt {} {}: {}",
                a.attempt,
                if a.ok { "ok" } else { "failed" },
                a.output
            )
        })
        .collect();
    (ok, attempts)
}
