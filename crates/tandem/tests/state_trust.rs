//! State you can trust (needs root; CI runs as root): a node whose state
//! file was edited while it was stopped refuses to start and says what to
//! do; started with `--discard-damaged-state`, it rejoins empty, follows the
//! leader and fetches the record, and the group is never on two nodes.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::Value;
use tandem_testbed::agents::{self, all_online, AgentCluster, ClusterShape};
use tandem_testbed::checker::{analyze, CheckOptions, ProbeKind};
use tandem_testbed::prober::{ProbeSpec, Prober};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(30);

fn running_on(s: &Value) -> Option<usize> {
    s["groups"]
        .as_array()?
        .iter()
        .find(|g| g["name"] == "web")
        .filter(|g| g["state"] == "running")
        .and_then(|g| g["placed_on"].as_str())
        .and_then(|n| n.strip_prefix('n'))
        .and_then(|n| n.parse().ok())
}

/// Issue 15, defect 1: one committed `Place` of the group edited in a
/// stopped node's `state.json` (the JSON stayed valid) made the node start
/// the group on restart: 2 dual-active instants, the address on two nodes.
#[test]
fn restart_from_an_edited_state_file_is_refused_then_recovers_without_dual_active() {
    if !require_root(
        "restart_from_an_edited_state_file_is_refused_then_recovers_without_dual_active",
    ) {
        return;
    }
    let shape = ClusterShape {
        extra: agents::web_group_config(Path::new(TANDEM), "manual", 3, 8080, 7000),
        ..ClusterShape::nodes(3)
    };
    let mut c = AgentCluster::start(TANDEM, &shape).unwrap();
    for n in 1..=3 {
        c.wait(n, GENEROUS, "settled, web running", |s| {
            all_online(s) && s["quorum"]["quorate"] == true && running_on(s).is_some()
        })
        .unwrap();
    }
    let holder = running_on(&c.status(1).unwrap()).unwrap();
    let victim = holder % 3 + 1;
    let target = SocketAddr::new(c.bed.vip("lan").into(), 7000);
    let prober = Prober::start(&c.bed.client_ns(), ProbeSpec::new(target, 120_000)).unwrap();
    std::thread::sleep(Duration::from_millis(300));

    // Stop the victim cleanly and edit its state: every placement of web
    // now names the victim (valid JSON, the checksum line left as it was).
    c.bed
        .stop_gracefully(c.pids[victim - 1], Duration::from_secs(20))
        .unwrap();
    let path = c.state_dir(victim).join("state.json");
    let text = std::fs::read_to_string(&path).unwrap();
    let me = format!("\"n{victim}\"");
    let edited = text
        .replace(&format!("\"n{holder}\""), &me)
        .replace("\"node\":null", &format!("\"node\":{me}"));
    assert_ne!(edited, text, "nothing to edit in {text}");
    std::fs::write(&path, &edited).unwrap();

    // Refused, with what to do.
    let pid = c.spawn_agent(victim).unwrap();
    let t0 = Instant::now();
    while c.bed.is_running(pid) {
        assert!(
            t0.elapsed() < GENEROUS,
            "the agent started on a damaged state file"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let logs = c.logs();
    let refusal = logs
        .lines()
        .find(|l| l.contains("is damaged"))
        .unwrap_or_else(|| panic!("no refusal in the logs:\n{logs}"));
    println!("refused: {refusal}");
    assert!(refusal.contains("checksum does not match"), "{refusal}");
    assert!(logs.contains("Do not delete it") && logs.contains("--discard-damaged-state"));

    // Started with the documented way out: it rejoins and follows.
    c.pids[victim - 1] = c
        .spawn_agent_args(victim, &c.config_path(), &["--discard-damaged-state"])
        .unwrap();
    c.wait(
        victim,
        GENEROUS,
        "rejoined: online, following, recovered",
        |s| {
            all_online(s)
                && agents::leader(s).is_some()
                && s["events"]
                    .as_array()
                    .is_some_and(|e| e.iter().any(|e| e["event"]["kind"] == "recovered"))
        },
    )
    .unwrap();
    c.wait(
        victim,
        GENEROUS,
        "its record shows web on the holder",
        |s| running_on(s) == Some(holder),
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(500));
    let log = prober.stop().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    let dual = report.dual_active().count();
    let gap = report.kind(ProbeKind::Udp).max_gap_ms();
    let answered_by: std::collections::BTreeSet<_> = log
        .records
        .iter()
        .filter_map(|r| r.responder.clone())
        .collect();
    println!(
        "damaged state restart: {dual} dual-active, longest gap {gap:.0} ms, answers from {answered_by:?}"
    );
    assert_eq!(dual, 0);
    assert_eq!(answered_by, [format!("n{holder}")].into_iter().collect());
    let aside: Vec<_> = std::fs::read_dir(c.state_dir(victim))
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().contains("damaged"))
        .collect();
    assert_eq!(aside.len(), 1, "the damaged file is kept aside");
}
