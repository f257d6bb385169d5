//! `tandem events` on a real 3-node testbed cluster (needs root; CI runs
//! as root): after the holder's agent is killed and restarted, every node
//! tells the whole story of the failover, merged from all three journals,
//! with the leader's reasons.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;
use tandem_testbed::agents::{
    all_online, running_on, web_group_config, AgentCluster, ClusterShape,
};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(30);

fn events(c: &AgentCluster, n: usize, extra: &[&str]) -> String {
    let out = Command::new(TANDEM)
        .args(["events", "--socket"])
        .arg(c.socket(n))
        .args(extra)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// The index of the first line at or after `from` that holds every one
/// of `words`, or a failure showing the story.
fn find(lines: &[&str], from: usize, words: &[&str], story: &str) -> usize {
    lines
        .iter()
        .enumerate()
        .skip(from)
        .find(|(_, l)| words.iter().all(|w| l.contains(w)))
        .map(|(i, _)| i)
        .unwrap_or_else(|| panic!("no line with {words:?} after line {from}:\n{story}"))
}

#[test]
fn every_node_tells_the_whole_story_of_a_failover_with_reasons() {
    if !require_root("every_node_tells_the_whole_story_of_a_failover_with_reasons") {
        return;
    }
    let shape = ClusterShape {
        extra: web_group_config(Path::new(TANDEM), "manual", 3, 8080, 8081),
        ..ClusterShape::nodes(3)
    };
    // The agents log JSON lines to files (the structured log's test).
    let mut c = AgentCluster::prepare(TANDEM, &shape).unwrap();
    let logs = c.dir().to_path_buf();
    let log = |n: usize| logs.join(format!("n{n}.log.jsonl"));
    for n in 1..=3 {
        let file = log(n).to_string_lossy().into_owned();
        let args = ["--log-format", "json", "--log-file", &file];
        let pid = c.spawn_agent_args(n, &c.config_path(), &args).unwrap();
        c.pids.push(pid);
    }
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
    // The killed node's agent comes back: its journal kept what it did.
    c.pids[holder - 1] = c.spawn_agent(holder).unwrap();
    for n in 1..=3 {
        c.wait(n, GENEROUS, "all online again", all_online).unwrap();
    }

    let (h, t) = (format!("n{holder}"), format!("n{taker}"));
    for n in 1..=3 {
        let story = events(&c, n, &["--since", "10m"]);
        if n == 1 {
            // For the record (`--nocapture`).
            println!("tandem events --since 10m on n1:\n{story}");
        }
        let lines: Vec<&str> = story.lines().collect();
        // Before: the holder started web (its own journal, from before
        // its agent was killed).
        let started = find(&lines, 0, &[&format!(" {h} "), "started web/vip"], &story);
        // A survivor saw it die; the leader's decisions follow, with why.
        let dead = find(&lines, started, &[&format!("node {h} dead")], &story);
        let stopped = find(
            &lines,
            dead,
            &[
                "web stopped everywhere",
                &format!("{h} cannot keep it (offline)"),
                &format!("{t} is next in preference"),
            ],
            &story,
        );
        let placed = find(
            &lines,
            stopped,
            &[&format!("web placed on {t}"), "can host it"],
            &story,
        );
        // Then the taker started it.
        find(
            &lines,
            placed,
            &[&format!(" {t} "), "started web/vip"],
            &story,
        );
        // And the holder came back.
        find(
            &lines,
            placed,
            &[&format!(" {h} "), "started (incarnation"],
            &story,
        );
        for node in 1..=3 {
            assert!(
                lines.iter().any(|l| l.contains(&format!(" n{node} "))),
                "n{node}'s events missing on n{n}:\n{story}"
            );
        }
    }

    // JSON: one typed event per line, with its node.
    let json = events(&c, survivor, &["--since", "10m", "--json"]);
    let placed: Vec<Value> = json
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap())
        .filter(|v| v["event"]["kind"] == "placed" && v["event"]["node"] == t.as_str())
        .collect();
    assert!(!placed.is_empty(), "{json}");
    assert!(placed[0]["event"]["reason"]
        .as_str()
        .unwrap()
        .contains("can host it"));
    assert!(placed[0]["at_unix_ms"].as_u64().is_some() && placed[0]["node"].is_string());

    // The survivor's log: one JSON object per line, with level, program,
    // node, kind and text; the death a warning, the placement info.
    let text = std::fs::read_to_string(log(survivor)).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str::<Value>(l).unwrap_or_else(|e| panic!("{e}: {l}")))
        .collect();
    let me = format!("n{survivor}");
    assert!(lines.iter().all(|v| v["node"] == me.as_str()
        && v["target"] == "tandem"
        && v["timestamp"].is_string()
        && v["message"].is_string()));
    let dead = lines
        .iter()
        .find(|v| v["kind"] == "node_dead")
        .unwrap_or_else(|| panic!("no node_dead line:\n{text}"));
    assert_eq!(dead["level"], "WARN", "{dead}");
    assert!(dead["message"].as_str().unwrap().contains(&h), "{dead}");
    assert!(
        lines
            .iter()
            .any(|v| v["kind"] == "placed" && v["level"] == "INFO"),
        "{text}"
    );

    // An agent that is down is named, and the rest is shown.
    // SAFETY: as above.
    unsafe { libc::kill(c.pids[taker - 1] as i32, libc::SIGKILL) };
    let asker = (1..=3).find(|n| *n != taker).unwrap();
    let out = Command::new(TANDEM)
        .args(["events", "--since", "10m", "--socket"])
        .arg(c.socket(asker))
        .output()
        .unwrap();
    assert!(out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("{t} did not answer")), "{err}");
    assert!(String::from_utf8_lossy(&out.stdout).contains("started web/vip"));
}
