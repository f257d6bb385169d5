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

#[test]
fn every_example_validates() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut files: Vec<_> = std::fs::read_dir(&examples)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "toml"))
        .collect();
    files.sort();
    assert!(
        files.len() >= 6,
        "expected one example per scenario, found {files:?}"
    );
    let out = tandem()
        .arg("config")
        .arg("validate")
        .args(&files)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "examples failed validation:\n{stderr}"
    );
    assert!(!stderr.contains("error:"), "{stderr}");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert_eq!(stdout.matches(": ok (").count(), files.len(), "{stdout}");
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
    let write = |name: &str, extra: &str| {
        let text = source.replace(
            "key_file = \"",
            &format!("key_file = \"{}/", examples.display()),
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
    assert!(!off.contains("watchdog"), "{off}");
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
