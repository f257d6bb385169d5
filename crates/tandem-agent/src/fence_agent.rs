//! Running fence-agents compatible programs: the options as `key=value`
//! lines on stdin (`action`, `plug`, `nodename`, then the device's
//! `options`), exit status 0 for success and, for `status`, 2 for "off".
//! Every run is bounded by the device's timeout; secrets never leave this
//! module unredacted.

use std::path::PathBuf;
use std::time::Duration;

use tandem_core::config::Config;
use tandem_core::fence::{self, Device};

use crate::child::run_bounded;

/// A configured fence device.
#[derive(Clone)]
pub struct FenceDevice {
    /// The plan's view of it (name, level, delay, retries, hosts).
    pub plan: Device,
    /// The agent program.
    pub agent: PathBuf,
    /// Limit on one run.
    pub timeout_ms: u64,
    /// Further `key=value` lines.
    pub options: Vec<(String, String)>,
}

/// Written by hand: option values are redacted unless safe to show.
impl std::fmt::Debug for FenceDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let options =
            fence::shown_options(self.options.iter().map(|(k, v)| (k.as_str(), v.as_str())));
        f.debug_struct("FenceDevice")
            .field("plan", &self.plan)
            .field("agent", &self.agent)
            .field("timeout_ms", &self.timeout_ms)
            .field("options", &options)
            .finish()
    }
}

/// What a run of an agent gave.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RunResult {
    /// Exit code (None: killed, timed out or not started).
    pub code: Option<i32>,
    /// Exit status and output, secrets redacted.
    pub output: String,
}

/// The configuration's fence devices.
pub fn devices(cfg: &Config) -> Vec<FenceDevice> {
    cfg.fence_devices
        .iter()
        .map(|d| FenceDevice {
            plan: Device {
                name: d.name.clone(),
                level: d.level,
                delay_ms: d.delay_ms,
                retries: d.retries,
                hosts: d.hosts.clone(),
            },
            agent: d.agent.clone(),
            timeout_ms: d.timeout_ms,
            options: d.options.clone(),
        })
        .collect()
}

/// Whether any of `devices` lists `node` in its hosts.
pub fn covers(devices: &[FenceDevice], node: &str) -> bool {
    devices
        .iter()
        .any(|d| d.plan.hosts.iter().any(|(n, _)| n == node))
}

/// The stdin of one run.
fn input(dev: &FenceDevice, action: &str, plug: Option<&str>, target: &str) -> Vec<u8> {
    let mut text = format!("action={action}\nnodename={target}\n");
    if let Some(p) = plug {
        text += &format!("plug={p}\n");
    }
    for (k, v) in &dev.options {
        text += &format!("{k}={v}\n");
    }
    text.into_bytes()
}

/// Runs `action` (`off`, `on`, `reboot`, `status`, `monitor`, ...) of
/// `dev` against `target`'s plug.
pub async fn run(dev: &FenceDevice, action: &str, plug: Option<&str>, target: &str) -> RunResult {
    let stdin = input(dev, action, plug, target);
    let limit = Duration::from_millis(dev.timeout_ms);
    let (code, text) = match run_bounded(&dev.agent, &[], None, Some(&stdin), limit).await {
        Ok((code, text)) => {
            let status =
                code.map_or_else(|| "killed by a signal".to_string(), |c| format!("exit {c}"));
            // Redacted before tidying: trimming could split a value.
            let text = tidy(&fence::redact(&text, &dev.options));
            let said = if text.is_empty() {
                String::new()
            } else if text.contains('\n') {
                format!(":\n{text}")
            } else {
                format!(": {text}")
            };
            (code, format!("{} {action}: {status}{said}", dev.plan.name))
        }
        Err(e) => (None, format!("{} {action}: {e}", dev.plan.name)),
    };
    RunResult {
        code,
        output: fence::redact(&text, &dev.options),
    }
}

/// What `config validate` learns from each device's own program, run with
/// `action=validate-all` for every host it fences (the program checks its
/// options, such as a device address, without touching the device):
/// warnings for a refusal, a note-like warning when the program is not
/// installed here.
pub fn check_devices(cfg: &Config) -> Vec<(tandem_core::diagnostic::Severity, String)> {
    use tandem_core::diagnostic::Severity;
    let devices = devices(cfg);
    if devices.is_empty() {
        return Vec::new();
    }
    let Ok(rt) = crate::child::checks_runtime() else {
        return Vec::new();
    };
    let mut out = Vec::new();
    for dev in &devices {
        if !dev.agent.exists() {
            out.push((
                Severity::Warning,
                format!(
                    "fence device `{}`: {} is not installed on this machine (Debian: `apt install fence-agents`); its options were not checked",
                    dev.plan.name,
                    dev.agent.display()
                ),
            ));
            continue;
        }
        for (node, plug) in &dev.plan.hosts {
            // Bounded: a few seconds for a program that only reads options.
            let mut d = dev.clone();
            d.timeout_ms = d.timeout_ms.min(CHECK_TIMEOUT_MS);
            let r = rt.block_on(run(&d, "validate-all", Some(plug), node));
            if r.code != Some(0) {
                out.push((
                    Severity::Warning,
                    format!(
                        "fence device `{}` for node {node}: {} refuses its options: {}",
                        dev.plan.name,
                        dev.agent.display(),
                        r.output
                    ),
                ));
            }
        }
    }
    out
}

/// Limit on one `validate-all` run during `config validate`.
const CHECK_TIMEOUT_MS: u64 = 10_000;

/// A fence agent's output, as status and logs show it: trimmed lines, no
/// blank ones, no Python deprecation noise, at most [`MAX_OUTPUT_LINES`].
fn tidy(text: &str) -> String {
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty())
        .filter(|l| !l.contains("DeprecationWarning") && !l.starts_with("from pipes import"))
        .collect();
    let shown = lines.len().min(MAX_OUTPUT_LINES);
    let mut out = lines[..shown].join("\n");
    if lines.len() > shown {
        out += &format!("\n({} more lines)", lines.len() - shown);
    }
    out
}

/// Lines of an agent's output kept for status and logs.
const MAX_OUTPUT_LINES: usize = 8;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fence_output_is_trimmed_one_line_per_line() {
        let raw = "/usr/sbin/fence_x:5: DeprecationWarning: 'pipes' is deprecated\n  from pipes import quote\n2026-11-29 ERROR: Failed: You have to enter fence address\n\n2026-11-29 ERROR: Please use '-h' for usage\n\n";
        assert_eq!(
            tidy(raw),
            "2026-11-29 ERROR: Failed: You have to enter fence address\n2026-11-29 ERROR: Please use '-h' for usage"
        );
        let many: String = (0..20).map(|i| format!("line {i}\n")).collect();
        assert!(tidy(&many).ends_with("(12 more lines)"));
    }

    const FENCE_DUMMY: &str = "/usr/sbin/fence_dummy";

    use crate::child::test_runtime as rt;

    fn dummy(dir: &std::path::Path, kind: &str, secret: &str) -> FenceDevice {
        FenceDevice {
            plan: Device {
                name: "dummy".into(),
                level: 1,
                delay_ms: 0,
                retries: 0,
                hosts: vec![("n2".into(), "n2".into())],
            },
            agent: FENCE_DUMMY.into(),
            timeout_ms: 20_000,
            options: vec![
                ("type".into(), kind.into()),
                (
                    "status_file".into(),
                    dir.join("n2.status").display().to_string(),
                ),
                ("power_timeout".into(), "1".into()),
                ("password".into(), secret.into()),
            ],
        }
    }

    #[test]
    fn fence_dummy_is_driven_through_off_status_and_on() {
        if !std::path::Path::new(FENCE_DUMMY).exists() {
            println!("skipped: fence_dummy not installed (apt-get install -y fence-agents; scripts/install-deps does it as root)");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("n2.status"), "on").unwrap();
        let d = dummy(dir.path(), "file", "s3cret-value");
        rt().block_on(async {
            let st = run(&d, "status", Some("n2"), "n2").await;
            assert_eq!(st.code, Some(0), "on: {}", st.output);
            let off = run(&d, "off", Some("n2"), "n2").await;
            assert_eq!(off.code, Some(0), "{}", off.output);
            let st = run(&d, "status", Some("n2"), "n2").await;
            // fence-agents: status exit 2 means "off".
            assert_eq!(st.code, Some(2), "{}", st.output);
            let on = run(&d, "on", Some("n2"), "n2").await;
            assert_eq!(on.code, Some(0), "{}", on.output);
            assert_eq!(run(&d, "status", Some("n2"), "n2").await.code, Some(0));
        });
        assert_eq!(
            std::fs::read_to_string(dir.path().join("n2.status")).unwrap(),
            "on"
        );
    }

    #[test]
    fn a_failing_device_reports_its_output_without_secrets() {
        if !std::path::Path::new(FENCE_DUMMY).exists() {
            println!("skipped: fence_dummy not installed");
            return;
        }
        let dir = tempfile::tempdir().unwrap();
        // fence_dummy echoes nothing secret by itself: make it fail with an
        // unknown option whose name carries the password back in the error.
        let mut d = dummy(dir.path(), "fail", "s3cret-value");
        d.options.push(("s3cret-value".into(), "1".into()));
        let r = rt().block_on(run(&d, "off", Some("n2"), "n2"));
        assert_ne!(r.code, Some(0), "{}", r.output);
        assert!(r.output.starts_with("dummy off: exit"), "{}", r.output);
        assert!(!r.output.contains("s3cret-value"), "{}", r.output);
    }

    #[test]
    fn a_missing_agent_is_a_clear_failure() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = dummy(dir.path(), "file", "not-a-real-password");
        d.agent = "/nonexistent/fence_x".into();
        let r = rt().block_on(run(&d, "off", Some("n2"), "n2"));
        assert_eq!(r.code, None);
        assert!(
            r.output.contains("cannot run /nonexistent/fence_x"),
            "{}",
            r.output
        );
    }
}
