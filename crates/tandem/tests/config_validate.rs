//! `tandem config validate` end to end: every example passes, every broken
//! configuration fails with a located message and a fix (insta snapshots of
//! exactly what the operator sees).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;

fn tandem() -> Command {
    Command::new(env!("CARGO_BIN_EXE_tandem"))
}

/// Git does not keep file modes: make the test keys private so the snapshots
/// do not depend on the checkout's umask.
fn private_keys(dir: &Path) {
    for key in ["test.key", "short.key"] {
        std::fs::set_permissions(dir.join(key), std::fs::Permissions::from_mode(0o600)).unwrap();
    }
}

/// The first node named in a configuration file.
fn first_node(text: &str) -> String {
    let after = text.split("[[node]]").nth(1).unwrap();
    let line = after
        .lines()
        .find(|l| l.trim_start().starts_with("name"))
        .unwrap();
    line.split('"').nth(1).unwrap().to_string()
}

/// Issue "keep the promises", defect 7: the examples as a fresh clone has
/// them (the key checked out 0644), validated and started. `config
/// validate` and the agent apply one rule: validate refuses exactly what
/// the agent refuses (here, the readable key), and once the key is private
/// every example validates, the fence devices accept their options (their
/// own `validate-all`), and the agent gets past every configuration check
/// to the facts of this machine (its addresses, a volume's backing store).
#[test]
fn examples_work_as_shipped_in_a_fresh_clone() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let clone = tempfile::tempdir().unwrap();
    let mut files = Vec::new();
    for e in std::fs::read_dir(&examples).unwrap() {
        let p = e.unwrap().path();
        let to = clone.path().join(p.file_name().unwrap());
        std::fs::copy(&p, &to).unwrap();
        if to.extension().is_some_and(|e| e == "toml") {
            files.push(to);
        }
    }
    files.sort();
    assert!(files.len() >= 6, "one example per scenario: {files:?}");
    let key = clone.path().join("EXAMPLE-ONLY.key");
    // What git gives: 0644 (it keeps no other modes).
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o644)).unwrap();
    let validate = || {
        let out = tandem()
            .arg("config")
            .arg("validate")
            .args(&files)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
        let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
        (out.status.success(), stdout, stderr)
    };
    let (ok, stdout, stderr) = validate();
    assert!(!ok, "a readable key must not validate:\n{stderr}");
    assert_eq!(
        stdout.matches("INVALID (1 error(s)").count(),
        files.len(),
        "exactly one error each, the key:\n{stdout}\n{stderr}"
    );
    assert_eq!(
        stderr
            .matches("is readable by other users (mode 0644)")
            .count(),
        files.len(),
        "{stderr}"
    );
    assert!(stderr.contains("chmod 600"), "{stderr}");
    // The agent refuses the same key, for the same reason.
    let node = first_node(&std::fs::read_to_string(&files[0]).unwrap());
    let state = tempfile::tempdir().unwrap();
    let agent = |file: &Path, node: &str| {
        let out = tandem()
            .args(["agent", "--config"])
            .arg(file)
            .args(["--node", node, "--state-dir"])
            .arg(state.path())
            .arg("--control-socket")
            .arg(state.path().join("control.sock"))
            .output()
            .unwrap();
        assert!(!out.status.success(), "{file:?}: the agent started here");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let refused = agent(&files[0], &node);
    assert!(refused.contains("readable by other users"), "{refused}");

    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, stdout, stderr) = validate();
    assert!(ok, "examples failed validation:\n{stderr}");
    assert_eq!(stdout.matches(": ok (").count(), files.len(), "{stdout}");
    // A device whose program refuses its options would fail at the first
    // fence; only files this machine lacks may be missing.
    for line in stderr.lines().filter(|l| l.contains("refuses its options")) {
        assert!(
            stderr.contains("does not exist"),
            "a fence device lacks what its agent needs: {line}\n{stderr}"
        );
    }
    assert!(!stderr.contains("You have to enter"), "{stderr}");
    for file in &files {
        let node = first_node(&std::fs::read_to_string(file).unwrap());
        let said = agent(file, &node);
        assert!(
            said.contains("binding heartbeat socket") || said.contains("opening the backing store"),
            "{file:?}: the agent refused the configuration itself:\n{said}"
        );
    }
}

fn without_watchdog_note(stderr: &str) -> String {
    stderr
        .lines()
        .filter(|l| !(l.starts_with("note: ") && l.contains("watchdog")))
        .map(|l| format!("{l}\n"))
        .collect()
}

/// `config validate` says when this machine has no watchdog device, and
/// is silent when it has one or the configuration disables it.
#[test]
fn validate_says_when_the_machine_has_no_watchdog() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let file = examples.join("interface-preference.toml");
    let dir = tempfile::tempdir().unwrap();
    let source = std::fs::read_to_string(&file).unwrap();
    let key = examples.join(
        source
            .lines()
            .find_map(|l| l.strip_prefix("key_file = \""))
            .and_then(|l| l.strip_suffix('"'))
            .unwrap(),
    );
    // A private copy of the example key (git checks it out 0644).
    let private = dir.path().join("cluster.key");
    std::fs::copy(&key, &private).unwrap();
    std::fs::set_permissions(&private, std::fs::Permissions::from_mode(0o600)).unwrap();
    let write = |name: &str, extra: &str| {
        let text = source.replace(
            "key_file = \"EXAMPLE-ONLY.key\"",
            &format!("key_file = \"{}\"", private.display()),
        ) + extra;
        let p = dir.path().join(name);
        std::fs::write(&p, text).unwrap();
        p
    };
    assert!(key.exists(), "{}", key.display());
    let run = |p: &Path| {
        let out = tandem()
            .args(["config", "validate"])
            .arg(p)
            .output()
            .unwrap();
        assert!(out.status.success(), "{out:?}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    let default = run(&write("default.toml", ""));
    let has_device = Path::new("/dev/watchdog").exists();
    assert_eq!(
        default.contains("note: ") && default.contains("/dev/watchdog does not exist"),
        !has_device,
        "{default}"
    );
    let missing = run(&write(
        "missing.toml",
        "\n[watchdog]\ndevice = \"/nonexistent/watchdog\"\n",
    ));
    assert!(
        missing.contains("/nonexistent/watchdog does not exist on this node")
            && missing.contains("softdog"),
        "{missing}"
    );
    let off = run(&write("off.toml", "\n[watchdog]\nenabled = false\n"));
    assert!(
        !off.contains("/dev/watchdog") && !off.contains("note: "),
        "{off}"
    );
}

#[test]
fn broken_configs_fail_with_location_and_fix() {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/broken");
    private_keys(&dir);
    let mut failing = 0;
    insta::glob!("broken/*.toml", |path| {
        let name = path.file_name().unwrap();
        let out = tandem()
            .current_dir(&dir)
            .args(["config", "validate"])
            .arg(name)
            .output()
            .unwrap();
        let stderr = String::from_utf8_lossy(&out.stderr);
        // The watchdog note depends on this machine, not the file.
        let stderr = without_watchdog_note(&stderr);
        let stdout = String::from_utf8_lossy(&out.stdout);
        let expect_ok = name.to_string_lossy().ends_with("-warn.toml");
        assert_eq!(out.status.success(), expect_ok, "{name:?}:\n{stderr}");
        let label = if expect_ok { "warning: " } else { "error: " };
        // Every diagnostic names file:line:column and carries a fix.
        let first = stderr
            .lines()
            .find(|l| l.starts_with(label))
            .unwrap_or_else(|| panic!("no {label} in {stderr}"));
        let loc = first.split(": ").nth(1).unwrap();
        assert_eq!(loc.split(':').count(), 3, "no line:column in {first:?}");
        assert!(stderr.contains("= help: "), "no fix in {stderr}");
        failing += usize::from(!expect_ok);
        insta::assert_snapshot!(format!(
            "exit: {}\n--- stderr\n{stderr}--- stdout\n{stdout}",
            out.status.code().unwrap_or(-1)
        ));
    });
    assert!(failing >= 15, "only {failing} broken configs");
}

/// An OCF resource is checked against its agent's own meta-data on this
/// machine (Debian's resource-agents): a missing required parameter and a
/// typo'd one (with a "did you mean") are errors, an agent that is not
/// installed is an error that says what to install, and a correct one
/// passes (its `validate-all` has its say).
#[test]
fn ocf_parameters_and_timeouts_are_checked_against_the_agents_meta_data() {
    if !Path::new("/usr/lib/ocf/resource.d/heartbeat/IPaddr2").exists() {
        println!(
            "skipped: needs Debian's resource-agents (scripts/install-deps installs it as root)"
        );
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("test.key");
    std::fs::write(&key, [7u8; 32]).unwrap();
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    let base = r#"
[cluster]
name = "t"
key_file = "test.key"

[[link]]
name = "lan"
subnet = "10.0.0.0/24"

[[node]]
name = "n1"
addresses = { lan = "10.0.0.1" }

[[node]]
name = "n2"
addresses = { lan = "10.0.0.2" }

[[node]]
name = "n3"
addresses = { lan = "10.0.0.3" }

[[group]]
name = "web"
"#;
    let validate = |resources: &str| {
        let file = dir.path().join("c.toml");
        std::fs::write(&file, format!("{base}{resources}")).unwrap();
        let out = tandem()
            .args(["config", "validate"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, said) = validate(
        r#"
[[group.resource]]
name = "vip"
kind = "ocf"
agent = "ocf:heartbeat:IPaddr2"
params = { cidr_netmsk = 24 }
"#,
    );
    assert!(!ok, "{said}");
    assert!(said.contains("the agent requires parameter `ip`"), "{said}");
    assert!(
        said.contains("no parameter `cidr_netmsk`: did you mean `cidr_netmask`?"),
        "{said}"
    );
    assert!(said.contains("group `web` resource `vip`"), "{said}");
    let (ok, said) = validate(
        r#"
[[group.resource]]
name = "db"
kind = "ocf"
agent = "ocf:heartbeat:NoSuchAgent"
"#,
    );
    assert!(!ok, "{said}");
    assert!(said.contains("resource-agents"), "{said}");
    let (ok, said) = validate(
        r#"
[[group.resource]]
name = "dummy"
kind = "ocf"
agent = "ocf:heartbeat:Dummy"
params = { fake = "x" }
"#,
    );
    assert!(ok, "{said}");

    // `promotable` and `notify` need the actions they call: Dummy has
    // neither promote nor demote; Stateful has both, but no notify.
    let (ok, said) = validate(
        r#"
[[group.resource]]
name = "dummy"
kind = "ocf"
agent = "ocf:heartbeat:Dummy"
promotable = true

[[group.resource]]
name = "roles"
kind = "ocf"
agent = "ocf:heartbeat:Stateful"
promotable = true
notify = true
"#,
    );
    assert!(!ok, "{said}");
    let missing: Vec<&str> = said.lines().filter(|l| l.contains("lists no `")).collect();
    assert_eq!(missing.len(), 3, "{said}");
    assert!(
        missing[0].contains("resource `dummy`") && missing[0].contains("no `promote` action"),
        "{said}"
    );
    assert!(missing[1].contains("no `demote` action"), "{said}");
    assert!(
        missing[2].contains("resource `roles`") && missing[2].contains("no `notify` action"),
        "{said}"
    );

    // A limit shorter than the agent advertises is warned about, with
    // what to write: apache's longest is its stop, 60 s.
    let (ok, said) = validate(
        r#"
[[group.resource]]
name = "site"
kind = "ocf"
agent = "ocf:heartbeat:apache"

[[group.resource]]
name = "site2"
kind = "ocf"
agent = "ocf:heartbeat:apache"
timeout_ms = 60000

[[group.resource]]
name = "state"
kind = "ocf"
agent = "ocf:heartbeat:Dummy"
"#,
    );
    assert!(ok, "{said}");
    let advice: Vec<&str> = said
        .lines()
        .filter(|l| l.contains("the agent advertises up to"))
        .collect();
    assert_eq!(advice.len(), 1, "{said}");
    assert!(
        advice[0].contains("resource `site` ")
            && advice[0].contains("timeout_ms is 20000")
            && advice[0].contains("write timeout_ms = 60000"),
        "{said}"
    );
}

/// `[http]`'s token files are checked on the machine as the agent reads
/// them: missing, short or readable by other users, `config validate`
/// says so before an agent refuses to start.
#[test]
fn http_token_files_are_checked_as_the_agent_reads_them() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("test.key"), [7u8; 32]).unwrap();
    std::fs::set_permissions(
        dir.path().join("test.key"),
        std::fs::Permissions::from_mode(0o600),
    )
    .unwrap();
    let token = dir.path().join("op.token");
    let file = dir.path().join("c.toml");
    std::fs::write(
        &file,
        "[cluster]\nname = \"t\"\nkey_file = \"test.key\"\n\n[quorum]\ntwo_node = true\n\n[[link]]\nname = \"lan\"\nsubnet = \"10.0.0.0/24\"\n\n[[node]]\nname = \"n1\"\naddresses = { lan = \"10.0.0.1\" }\n\n[[node]]\nname = \"n2\"\naddresses = { lan = \"10.0.0.2\" }\n\n[http]\noperator_token_file = \"op.token\"\n",
    )
    .unwrap();
    let validate = || {
        let out = tandem()
            .args(["config", "validate"])
            .arg(&file)
            .output()
            .unwrap();
        (
            out.status.success(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (ok, said) = validate();
    assert!(!ok && said.contains("op.token"), "{said}");
    std::fs::write(&token, "0123456789abcdef0123456789abcdef\n").unwrap();
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o644)).unwrap();
    let (ok, said) = validate();
    assert!(!ok && said.contains("readable by other users"), "{said}");
    std::fs::set_permissions(&token, std::fs::Permissions::from_mode(0o600)).unwrap();
    let (ok, said) = validate();
    assert!(ok, "{said}");
    std::fs::write(&token, "short\n").unwrap();
    let (ok, said) = validate();
    assert!(!ok && said.contains("at least 32"), "{said}");
}
