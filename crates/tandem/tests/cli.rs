//! The `tandem` command's surface: version, help on every subcommand,
//! completions and man page from the same definitions, keygen's refusal to
//! overwrite.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Output};

fn tandem(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(args)
        .output()
        .unwrap()
}

/// The examples with a private copy of their key, as an operator who
/// followed their comment has them (git checks the key out 0644).
fn examples() -> tempfile::TempDir {
    use std::os::unix::fs::PermissionsExt;
    let from = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let dir = tempfile::tempdir().unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let p = e.unwrap().path();
        std::fs::copy(&p, dir.path().join(p.file_name().unwrap())).unwrap();
    }
    let key = dir.path().join("EXAMPLE-ONLY.key");
    std::fs::set_permissions(key, std::fs::Permissions::from_mode(0o600)).unwrap();
    dir
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[test]
fn version_names_the_release() {
    let o = tandem(&["--version"]);
    assert!(o.status.success());
    assert_eq!(
        text(&o).trim(),
        format!("tandem {}", env!("CARGO_PKG_VERSION"))
    );
}

/// Every subcommand path, read from the top-level help recursively, so a
/// new subcommand is covered without editing this test.
fn subcommand_paths(prefix: Vec<String>, out: &mut Vec<Vec<String>>) {
    let mut args: Vec<&str> = prefix.iter().map(String::as_str).collect();
    args.push("--help");
    let o = tandem(&args);
    assert!(
        o.status.success(),
        "`tandem {}` failed: {}",
        args.join(" "),
        text(&o)
    );
    let help = text(&o);
    assert!(help.contains("Usage: tandem"), "{help}");
    let mut in_commands = false;
    for line in help.lines() {
        if line.starts_with("Commands:") {
            in_commands = true;
            continue;
        }
        if in_commands {
            if line.trim().is_empty() || !line.starts_with("  ") {
                break;
            }
            if line.starts_with("   ") {
                continue; // a wrapped description, not a subcommand
            }
            let name = line.split_whitespace().next().unwrap().to_string();
            if name != "help" {
                let mut p = prefix.clone();
                p.push(name);
                out.push(p.clone());
                subcommand_paths(p, out);
            }
        }
    }
}

#[test]
fn help_works_on_every_subcommand() {
    let mut paths = Vec::new();
    subcommand_paths(Vec::new(), &mut paths);
    let names: Vec<String> = paths.iter().map(|p| p.join(" ")).collect();
    for expected in [
        "config",
        "config validate",
        "config show",
        "keygen",
        "completions",
        "man",
    ] {
        assert!(
            names.iter().any(|n| n == expected),
            "no `{expected}` in {names:?}"
        );
    }
}

#[test]
fn completions_and_man_page_come_from_the_cli_definition() {
    let bash = tandem(&["completions", "bash"]);
    assert!(bash.status.success());
    let bash = String::from_utf8_lossy(&bash.stdout);
    assert!(bash.contains("_tandem") && bash.contains("validate") && bash.contains("keygen"));
    let zsh = tandem(&["completions", "zsh"]);
    assert!(String::from_utf8_lossy(&zsh.stdout).contains("#compdef tandem"));
    let man = tandem(&["man"]);
    assert!(man.status.success());
    let man = String::from_utf8_lossy(&man.stdout);
    assert!(
        man.contains(".TH tandem") && man.contains("keygen"),
        "{man}"
    );
    let dir = tempfile::tempdir().unwrap();
    let o = tandem(&["man", "--out-dir", dir.path().to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    for page in [
        "tandem.8",
        "tandem-config.8",
        "tandem-config-validate.8",
        "tandem-keygen.8",
        "tandem-events.8",
        "tandem.toml.5",
    ] {
        assert!(dir.path().join(page).exists(), "{page} missing");
    }
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("cluster.key");
    let k = key.to_str().unwrap();
    let o = tandem(&["keygen", k]);
    assert!(o.status.success(), "{}", text(&o));
    let meta = std::fs::metadata(&key).unwrap();
    assert_eq!((meta.len(), meta.permissions().mode() & 0o777), (32, 0o600));
    let before = std::fs::read(&key).unwrap();
    let o = tandem(&["keygen", k]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("refusing to overwrite"), "{}", text(&o));
    assert_eq!(std::fs::read(&key).unwrap(), before);
    let o = tandem(&["keygen", "/nonexistent-dir/x.key"]);
    assert_eq!(o.status.code(), Some(1));
    assert!(
        text(&o).contains("does its directory exist"),
        "{}",
        text(&o)
    );
}

#[test]
fn config_show_prints_effective_values_and_refuses_invalid_files() {
    let dir = examples();
    let example = dir.path().join("web-two-node.toml");
    let o = tandem(&["config", "show", example.to_str().unwrap()]);
    assert!(o.status.success(), "{}", text(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("heartbeat 200 ms, deadtime 1000 ms"), "{out}");
    assert!(out.contains("two_node"), "{out}");
    assert!(out.contains("apache"), "{out}");
    // The watchdog with its defaults, and what it means for failover.
    assert!(
        out.contains(
            "watchdog        /dev/watchdog, timeout 5 s, stop grace 10000 ms, not required"
        ),
        "{out}"
    );
    let ordered = dir.path().join("ordered-takeover.toml");
    let o = tandem(&["config", "show", ordered.to_str().unwrap()]);
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("NBD export  socket"), "{out}");
    let broken = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/broken/07-group-unknown-node.toml"
    );
    let o = tandem(&["config", "show", broken]);
    assert_eq!(o.status.code(), Some(1));
    assert!(text(&o).contains("unknown node `n4`"), "{}", text(&o));
}

#[test]
fn config_show_writes_the_full_model_and_config_diff_pairs_entries_by_name() {
    let dir = examples();
    let example = dir.path().join("web-two-node.toml");
    let o = tandem(&[
        "config",
        "show",
        "--format",
        "toml",
        example.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let full = String::from_utf8_lossy(&o.stdout).into_owned();
    // Defaults the file leaves out are written.
    for key in [
        "state_dir = ",
        "wait_for_all = ",
        "failure_expiry_ms = ",
        "stop_grace_ms = ",
    ] {
        assert!(full.contains(key), "{key} missing:\n{full}");
    }
    // It is a configuration that says the same as the file.
    let shown = dir.path().join("shown.toml");
    std::fs::write(&shown, &full).unwrap();
    let o = tandem(&[
        "config",
        "diff",
        example.to_str().unwrap(),
        shown.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0), "{}", text(&o));
    assert!(text(&o).contains("no change"), "{}", text(&o));
    // A secret is masked, and validation refuses the mark rather than let
    // a file made from the output fence with it.
    let ordered = dir.path().join("ordered-takeover.toml");
    let o = tandem(&[
        "config",
        "show",
        "--format",
        "toml",
        ordered.to_str().unwrap(),
    ]);
    let masked = String::from_utf8_lossy(&o.stdout).into_owned();
    assert!(masked.contains("community = \"****\""), "{masked}");
    assert!(!masked.contains("private"), "{masked}");
    std::fs::write(&shown, &masked).unwrap();
    let o = tandem(&["config", "validate", shown.to_str().unwrap()]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
    assert!(text(&o).contains("write the real value"), "{}", text(&o));
    // A changed failback, named with its group.
    let original = std::fs::read_to_string(&example).unwrap();
    let changed = original.replace("failback = \"auto\"", "failback = \"manual\"");
    assert_ne!(
        changed, original,
        "the example has no automatic failback any more"
    );
    let edited = dir.path().join("edited.toml");
    std::fs::write(&edited, changed).unwrap();
    let o = tandem(&[
        "config",
        "diff",
        example.to_str().unwrap(),
        edited.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(3), "{}", text(&o));
    // Each changed field with its values, as the file says them.
    assert!(
        text(&o).contains(r#"changed: failback "auto" -> "manual""#),
        "{}",
        text(&o)
    );
    let o = tandem(&[
        "config",
        "diff",
        "--json",
        example.to_str().unwrap(),
        edited.to_str().unwrap(),
    ]);
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v[0]["section"], "group", "{v}");
    assert_eq!(v[0]["values"][0]["field"], "failback", "{v}");
    assert_eq!(v[0]["values"][0]["old"], r#""auto""#, "{v}");
    assert_eq!(v[0]["values"][0]["new"], r#""manual""#, "{v}");
    assert_eq!(v[0]["change"], "changed", "{v}");
    // An invalid file is an error, not a difference.
    let broken = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/broken/07-group-unknown-node.toml"
    );
    let o = tandem(&["config", "diff", example.to_str().unwrap(), broken]);
    assert_eq!(o.status.code(), Some(1), "{}", text(&o));
}

#[test]
fn validate_reports_an_unreadable_file_and_continues() {
    let dir = examples();
    let example = dir.path().join("hot-standby.toml");
    let o = tandem(&[
        "config",
        "validate",
        "/nonexistent.toml",
        example.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(1));
    let t = text(&o);
    assert!(
        t.contains("reading configuration file /nonexistent.toml"),
        "{t}"
    );
    assert!(t.contains("hot-standby.toml: ok"), "{t}");
}

#[test]
fn admin_commands_without_an_agent_say_what_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let sock = dir.path().join("none.sock");
    let sock = sock.to_str().unwrap();
    // Each command fails, naming the socket it tried and what to check.
    let names_the_socket = |args: &[&str]| {
        let o = tandem(args);
        assert!(!o.status.success(), "{args:?}");
        let t = text(&o);
        assert!(
            t.contains("is `tandem agent` running") && t.contains(sock),
            "{args:?}: {t}"
        );
    };
    for args in [
        vec!["move", "web", "--to", "n2", "--socket", sock],
        vec!["failover", "web", "--socket", sock],
        vec!["node", "standby", "n1", "--socket", sock],
        vec!["node", "remove", "n1", "--socket", sock],
        vec!["node", "add", "n1", "--socket", sock],
        vec!["maintenance", "on", "--socket", sock],
        vec!["cleanup", "web", "--socket", sock],
        vec!["status", "--socket", sock],
    ] {
        names_the_socket(&args);
    }
    // Issue "keep the promises", defect 8: with --config, every command
    // finds the agent at the configuration's control_socket.
    let dir2 = examples();
    let cfg = dir2.path().join("mutual-takeover.toml");
    let text_of = std::fs::read_to_string(&cfg).unwrap().replacen(
        "[cluster]\n",
        &format!("[cluster]\ncontrol_socket = \"{sock}\"\n"),
        1,
    );
    std::fs::write(&cfg, text_of).unwrap();
    let cfg = cfg.to_str().unwrap();
    for args in [
        vec!["status", "--config", cfg],
        vec!["move", "alpha-db", "--to", "beta", "--config", cfg],
        vec!["node", "standby", "alpha", "-c", cfg],
        vec!["volume", "status", "--config", cfg],
    ] {
        names_the_socket(&args);
    }
    // `move` needs --to or --clear, not both.
    assert!(!tandem(&["move", "web"]).status.success());
    assert!(!tandem(&["move", "web", "--to", "n2", "--clear"])
        .status
        .success());
}

/// `status --watch` refreshes until interrupted, and says when no agent
/// answers rather than stopping.
#[test]
fn status_watch_refreshes_and_says_when_the_agent_is_gone() {
    let dir = tempfile::tempdir().unwrap();
    let mut child = Command::new(env!("CARGO_BIN_EXE_tandem"))
        .args(["status", "--watch", "--interval", "1", "--socket"])
        .arg(dir.path().join("none.sock"))
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(2_500));
    child.kill().unwrap();
    let out = child.wait_with_output().unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.matches("does not answer").count() >= 2, "{text}");
    assert!(text.contains("every 1s:") && text.contains("---"), "{text}");
}

#[test]
fn init_writes_a_valid_two_node_cluster_with_a_witness_in_under_ten_lines() {
    let dir = tempfile::tempdir().unwrap();
    let (key, out) = (dir.path().join("web.key"), dir.path().join("web.toml"));
    let o = tandem(&[
        "init",
        "--name",
        "web",
        "--node",
        "n1=10.0.0.11,10.1.0.11",
        "--node",
        "n2=10.0.0.12,10.1.0.12",
        "--witness",
        "10.0.0.5:5405",
        "--vip",
        "10.0.0.100/24",
        "--service",
        "process:/usr/bin/sleep infinity",
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(o.status.success(), "{}", text(&o));
    let written = std::fs::read_to_string(&out).unwrap();
    let settings = written
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.trim_start().starts_with('#'))
        .count();
    assert!(settings < 10, "{settings} lines:\n{written}");
    assert!(written.contains("witness = \"10.0.0.5:5405\""), "{written}");
    let v = tandem(&["config", "validate", out.to_str().unwrap()]);
    assert!(v.status.success(), "{}", text(&v));
    assert_eq!(std::fs::metadata(&key).unwrap().len(), 32);
    assert_eq!(
        std::fs::metadata(&out).unwrap().permissions().mode() & 0o777,
        0o600,
        "it may hold fence credentials"
    );
    // Never over an existing file, and what is missing is named.
    let again = tandem(&[
        "init",
        "--node",
        "n1=10.0.0.11",
        "--node",
        "n2=10.0.0.12",
        "--vip",
        "10.0.0.100/24",
        "--key",
        key.to_str().unwrap(),
        "--out",
        out.to_str().unwrap(),
    ]);
    assert!(!again.status.success());
    assert!(text(&again).contains("never replaced"), "{}", text(&again));
    // From a new user's trial: an invalid result wrote its file and key
    // anyway, and the corrected command then refused the existing file.
    // Now nothing is written.
    let (key2, out2) = (dir.path().join("new.key"), dir.path().join("bad.toml"));
    let bad = tandem(&[
        "init",
        "--node",
        "n1=10.0.0.11",
        "--node",
        "n2=10.0.0.12",
        "--vip",
        "192.168.5.1/24",
        "--key",
        key2.to_str().unwrap(),
        "--out",
        out2.to_str().unwrap(),
    ]);
    assert!(!bad.status.success());
    assert!(text(&bad).contains("nothing written"), "{}", text(&bad));
    assert!(!out2.exists() && !key2.exists());
    let w = tandem(&[
        "init",
        "--node",
        "n1=10.0.0.11",
        "--node",
        "n2=10.0.0.12",
        "--witness",
        "10.0.0.5",
    ]);
    assert!(text(&w).contains("10.0.0.5:5405"), "{}", text(&w));
    let one = tandem(&["init", "--node", "n1=10.0.0.11", "--vip", "10.0.0.100/24"]);
    assert!(!one.status.success());
    assert!(text(&one).contains("--node NAME=ADDRESS"), "{}", text(&one));
}

/// Found in a review: `config rollback` offered a recorded configuration
/// to the cluster without this node's checks, which `config apply` runs
/// first (a key file gone since that epoch reached the agents). Now it is
/// checked here and nothing is asked of any agent (none runs here).
#[test]
fn rollback_checks_the_recorded_configuration_here_first() {
    let dir = examples();
    let example = dir.path().join("web-two-node.toml");
    let recorded = std::fs::read_to_string(&example)
        .unwrap()
        .replace("key_file = \"EXAMPLE-ONLY.key\"", "key_file = \"gone.key\"");
    assert!(
        recorded.contains("gone.key"),
        "the example names no key file"
    );
    let history = dir.path().join("state/config-history");
    std::fs::create_dir_all(&history).unwrap();
    std::fs::write(history.join("0000000003-abcdef0123456789.toml"), recorded).unwrap();
    let o = tandem(&[
        "config",
        "rollback",
        "3",
        "--state-dir",
        dir.path().join("state").to_str().unwrap(),
        "-c",
        example.to_str().unwrap(),
        "--socket",
        dir.path().join("no-agent.sock").to_str().unwrap(),
    ]);
    let out = text(&o);
    assert_eq!(o.status.code(), Some(1), "{out}");
    assert!(out.contains("gone.key"), "{out}");
    assert!(out.contains("nothing was changed"), "{out}");
    assert!(!out.contains("no-agent.sock"), "it asked the agent: {out}");
}
