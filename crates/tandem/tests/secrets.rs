//! Secrets stay secret (needs root; CI runs as root): a fence device's
//! credential, whatever its option is called, never appears in the logs,
//! status (text and JSON), `config show`, `config validate` or any file
//! in the state directories (the replicated record included).

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use tandem_testbed::agents::{all_online, AgentCluster, ClusterShape};
use tandem_testbed::require_root;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(30);
const TOKEN: &str = "PLANTED-TOKEN-7f3a9c";
const APIKEY: &str = "PLANTED-APIKEY-2b8e41";

fn run(args: &[&str]) -> String {
    let out = Command::new(TANDEM).args(args).output().unwrap();
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

fn files_under(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let p = e.path();
        if p.is_dir() {
            files_under(&p, out);
        } else {
            out.push(p);
        }
    }
}

/// Issue 15, defect 9: fence options `api_token` and `apikey` appeared in
/// logs, status, the `validate` snippet and the replicated `state.json` on
/// every node (redaction went by option name). Here a fence agent that
/// echoes everything it is given (its credentials included) fails a fence
/// and its validation; the planted values show up nowhere.
#[test]
fn planted_fence_credentials_appear_nowhere() {
    if !require_root("planted_fence_credentials_appear_nowhere") {
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    let agent = dir.path().join("fence_echo");
    // Echoes its input (credentials included) on both streams, then fails.
    std::fs::write(
        &agent,
        "#!/bin/sh\ninput=$(cat)\necho \"got: $input\"\necho \"error: $input\" >&2\nexit 1\n",
    )
    .unwrap();
    std::fs::set_permissions(&agent, std::fs::Permissions::from_mode(0o755)).unwrap();
    let extra = format!(
        "[[fence_device]]\nname = \"echo\"\nagent = \"{}\"\nhosts = {{ n3 = \"n3\" }}\nretries = 0\n\
         options = {{ ip = \"192.0.2.1\", api_token = \"{TOKEN}\", \"apikey\" = \"{APIKEY}\" }}\n",
        agent.display()
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(3)
    };
    let c = AgentCluster::start(TANDEM, &shape).unwrap();
    for n in 1..=3 {
        c.wait(n, GENEROUS, "settled", |s| {
            all_online(s) && s["quorum"]["quorate"] == true
        })
        .unwrap();
    }
    let sock = c.socket(1);
    let sock = sock.to_str().unwrap();
    let fenced = run(&["fence", "n3", "--yes", "--socket", sock]);
    assert!(
        fenced.contains("FENCING n3 FAILED") && fenced.contains("****"),
        "{fenced}"
    );
    c.wait(2, GENEROUS, "the failed fence is in the record", |s| {
        s["fences"].as_array().is_some_and(|f| !f.is_empty())
    })
    .unwrap();
    let cfg = c.config_path();
    let cfg = cfg.to_str().unwrap();
    let mut seen = vec![
        ("fence command", fenced),
        ("config show", run(&["config", "show", cfg])),
        (
            "config show --format toml",
            run(&["config", "show", "--format", "toml", cfg]),
        ),
        (
            "config show --format json",
            run(&["config", "show", "--format", "json", cfg]),
        ),
        ("config validate", run(&["config", "validate", cfg])),
        ("logs", c.logs()),
    ];
    for n in 1..=3 {
        seen.push(("status", c.status_text(n).unwrap()));
        seen.push(("status --json", c.status(n).unwrap().to_string()));
        let mut files = Vec::new();
        files_under(&c.state_dir(n), &mut files);
        let config = std::fs::read(c.config_path()).unwrap();
        for f in files {
            let bytes = std::fs::read(&f).unwrap_or_default();
            // The history of committed configurations (for `config
            // rollback` and a peer catching up) is the configuration file
            // itself, kept as privately: byte for byte, mode 0600.
            if f.parent()
                .is_some_and(|d| d.ends_with("config-history") || d.ends_with("config-staged"))
            {
                assert_eq!(
                    bytes,
                    config,
                    "{} is a copy of the configuration",
                    f.display()
                );
                let mode = std::fs::metadata(&f).unwrap().permissions().mode() & 0o777;
                assert_eq!(mode, 0o600, "{}", f.display());
                continue;
            }
            seen.push(("state file", String::from_utf8_lossy(&bytes).into_owned()));
        }
    }
    let mut checked = 0;
    for (what, text) in &seen {
        for secret in [TOKEN, APIKEY] {
            assert!(!text.contains(secret), "{secret} in {what}:\n{text}");
        }
        checked += text.len();
    }
    let validate = &seen[2].1;
    assert!(
        validate.contains("api_token"),
        "the credential warning names the option: {validate}"
    );
    println!(
        "planted credentials: 0 occurrences in {} outputs and files ({checked} bytes)",
        seen.len()
    );
}
