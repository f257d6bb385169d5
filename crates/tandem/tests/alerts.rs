//! Alerts on a real 3-node testbed cluster (needs root; CI runs as root):
//! Pacemaker's own sample file agent (`alert_file.sh.sample`, from
//! Debian's `pacemaker-common`), unchanged, writes what happened when the
//! holder's agent dies; a failing and a hanging agent are counted and
//! shown, never silent.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::path::Path;
use std::time::Duration;

use tandem_testbed::agents::{
    all_online, running_on, web_group_config, AgentCluster, ClusterShape,
};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(30);
const SAMPLE: &str = "/usr/share/pacemaker/alerts/alert_file.sh.sample";

#[test]
fn pacemakers_sample_file_agent_records_a_failover_and_failures_are_counted() {
    if !require_root("pacemakers_sample_file_agent_records_a_failover_and_failures_are_counted") {
        return;
    }
    assert!(
        Path::new(SAMPLE).exists(),
        "{SAMPLE} missing: scripts/install-deps installs Debian's pacemaker-common"
    );
    let files = tempfile::tempdir_in("/dev/shm").unwrap();
    let log = files.path().join("alerts.log");
    let broken = files.path().join("broken.sh");
    let slow = files.path().join("slow.sh");
    std::fs::write(&broken, "#!/bin/sh\necho 'no mail server' >&2\nexit 3\n").unwrap();
    std::fs::write(&slow, "#!/bin/sh\nsleep 30\n").unwrap();
    for p in [&broken, &slow] {
        std::fs::set_permissions(p, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    }
    let extra = format!(
        "{}\n[[alert]]\nname = \"file\"\npath = \"{SAMPLE}\"\nrecipients = [\"{}\"]\n\n[[alert]]\nname = \"broken\"\npath = \"{}\"\nkinds = [\"node\"]\n\n[[alert]]\nname = \"slow\"\npath = \"{}\"\nkinds = [\"fencing\", \"node\"]\ntimeout_ms = 200\n",
        web_group_config(Path::new(TANDEM), "manual", 3, 8080, 8081),
        log.display(),
        broken.display(),
        slow.display(),
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(3)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    c.wait(1, GENEROUS, "all online, web running", |s| {
        all_online(s) && running_on(s, "web").is_some()
    })
    .unwrap();
    let holder = running_on(&c.status(1).unwrap(), "web").unwrap();
    // SAFETY: kill(2) of an agent this test started.
    unsafe { libc::kill(c.pids[holder - 1] as i32, libc::SIGKILL) };
    let survivor = (1..=3).find(|n| *n != holder).unwrap();
    c.wait(survivor, GENEROUS, "web running on a survivor", |s| {
        running_on(s, "web").is_some_and(|n| n != holder)
    })
    .unwrap();
    let taker = running_on(&c.status(survivor).unwrap(), "web").unwrap();

    // The sample agent's lines, as Pacemaker's users know them.
    let lost = format!("Node 'n{holder}' is now 'lost'");
    let started = format!("Resource operation 'start' for 'web-vip' on 'n{taker}': OK");
    let mut text = String::new();
    for _ in 0..200 {
        text = std::fs::read_to_string(&log).unwrap_or_default();
        if text.contains(&lost) && text.contains(&started) {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(
        text.contains(&lost) && text.contains(&started),
        "{text}\n{}",
        c.logs()
    );
    // Each line starts with the default timestamp, HH:MM:SS.uuuuuu.
    let first = text.lines().next().unwrap();
    let stamp = first.split(": ").next().unwrap();
    assert!(
        stamp.len() == 15 && stamp.as_bytes()[2] == b':' && stamp.as_bytes()[8] == b'.',
        "{first}"
    );
    assert!(!text.contains("Unhandled"), "{text}");

    // The failing and the hanging agents: counted, with their words.
    let s = c
        .wait(taker, GENEROUS, "failed alerts counted", |s| {
            let a = &s["alerts"];
            let by = |name: &str| {
                a.as_array()
                    .unwrap()
                    .iter()
                    .find(|x| x["alert"] == name)
                    .cloned()
                    .unwrap()
            };
            by("broken")["failed"].as_u64() >= Some(1) && by("slow")["failed"].as_u64() >= Some(1)
        })
        .map(|_| c.status(taker).unwrap())
        .unwrap();
    let alerts = s["alerts"].as_array().unwrap();
    let by = |name: &str| alerts.iter().find(|x| x["alert"] == name).unwrap();
    assert!(by("file")["sent"].as_u64().unwrap() >= 2, "{alerts:?}");
    assert_eq!(by("file")["failed"], 0, "{alerts:?}");
    assert_eq!(by("file")["recipient"], log.display().to_string());
    let e = by("broken")["last_error"].as_str().unwrap();
    assert!(
        e.contains("exited 3") && e.contains("no mail server"),
        "{e}"
    );
    let e = by("slow")["last_error"].as_str().unwrap();
    assert!(
        e.contains("200 ms") || e.contains("limit") || e.contains("signal"),
        "{e}"
    );
    let shown = c.status_text(taker).unwrap();
    assert!(
        shown.contains("alerts:") && shown.contains("broken: 0 sent,"),
        "{shown}"
    );
}
