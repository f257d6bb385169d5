//! What this machine says of a configuration, beyond the file itself:
//! the checks the agent makes at its start (errors: it would refuse to
//! start), what fence devices' and OCF agents' own programs say of their
//! options, and what systemd knows of the units. `tandem config validate`
//! runs them, and so does every node asked to accept a configuration
//! change (`tandem config apply`) before the change may begin.

use tandem_core::config::Config;
use tandem_core::diagnostic::Severity;

/// Checks of this machine that the agent makes at its start (errors: it
/// refuses to start), that the fence devices' own programs make of their
/// options (`validate-all`; warnings: fencing would fail), and of OCF
/// resources against their agents' meta-data.
pub fn of(cfg: &Config) -> Vec<(Severity, String)> {
    let mut out = Vec::new();
    if let Some(w) = cfg.watchdog.as_ref().filter(|w| w.required) {
        if !w.device.exists() {
            out.push((
                Severity::Error,
                format!(
                    "the watchdog is required but {} does not exist on this machine: the agent refuses to start; load a driver (`modprobe softdog`) or set `[watchdog] required = false`",
                    w.device.display()
                ),
            ));
        }
    }
    if let Some(g) = &cfg.cluster.control_group {
        if crate::agent::group_id(g).is_err() {
            out.push((
                Severity::Error,
                format!(
                    "control_group `{g}` does not exist on this machine: the agent refuses to start; create it (`groupadd {g}`) or remove `control_group`"
                ),
            ));
        }
    }
    for (sev, text) in crate::fence_agent::check_devices(cfg) {
        out.push((sev, text));
    }
    // OCF agents: installed here, parameters as their meta-data says,
    // and what their own validate-all says.
    out.extend(crate::kinds::ocf::check_resources(cfg));
    // systemd units: known to the manager, and not enabled at boot.
    out.extend(crate::kinds::systemd::check_resources(cfg));
    // The HTTP API's tokens and TLS identity, as the agent reads them.
    if let Some(spec) = &cfg.http {
        if let Err(e) = crate::http::load_files(cfg, spec) {
            out.push((
                Severity::Error,
                format!("[http] on this machine: {e:#}; the agent refuses to start"),
            ));
        }
    }
    // A TLS export's credentials, as the agent of a node with a copy
    // loads them at its start.
    for v in &cfg.volumes {
        let (Some(_), Some(dir)) = (&v.nbd_tcp, &v.nbd_tls) else {
            continue;
        };
        if let Err(e) = crate::volume::nbd_tls::NbdTls::load(dir) {
            out.push((
                Severity::Error,
                format!(
                    "volume `{}`: the NBD export's TLS credentials on this machine: {e:#}; the agent of a node with a copy refuses to start",
                    v.name
                ),
            ));
        }
    }
    out
}
