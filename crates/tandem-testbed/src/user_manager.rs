//! A real systemd manager where PID 1 is not systemd (this machine, CI): a
//! `systemd --user` in a mount namespace of its own (a private `/run`
//! holding `/run/systemd/system`, so that it believes it was booted with
//! systemd), with its own session bus at `$XDG_RUNTIME_DIR/bus`: the one
//! it starts itself from `dbus-user-session`'s `dbus.socket`. (A bus
//! started beside it loses that socket path to `dbus.socket` under the
//! connections already made; the manager also connects to its API bus
//! only once `dbus.socket` runs, so the two cannot simply be swapped.) Units go in [`UserManager::unit_dir`]; the
//! bus address is [`UserManager::bus`]. Dropping it stops the manager
//! (which stops its units) and then its bus.

use std::os::unix::process::CommandExt as _;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

/// Longest wait for the manager to own its name on the bus.
const READY_LIMIT: Duration = Duration::from_secs(15);
/// Longest wait for the manager to stop its units and exit.
const STOP_LIMIT: Duration = Duration::from_secs(10);

/// A running `systemd --user` with its own bus.
pub struct UserManager {
    child: Child,
    dir: tempfile::TempDir,
}

impl UserManager {
    /// Starts one and waits until `org.freedesktop.systemd1` is on its
    /// bus (needs root, `systemd`, `dbus-user-session` and `dbus-bin`).
    pub fn start() -> Result<UserManager> {
        let dir = tempfile::Builder::new()
            .prefix("tandem-user-manager-")
            .tempdir()
            .context("creating the manager's directory")?;
        let runtime = dir.path().join("runtime");
        let units = dir.path().join("config/systemd/user");
        std::fs::create_dir_all(&units).context("creating the unit directory")?;
        if !Path::new("/usr/lib/systemd/user/dbus.socket").exists() {
            bail!("no /usr/lib/systemd/user/dbus.socket: install dbus-user-session (scripts/install-deps does)");
        }
        std::fs::create_dir_all(&runtime).context("creating XDG_RUNTIME_DIR")?;
        std::fs::set_permissions(
            &runtime,
            std::os::unix::fs::PermissionsExt::from_mode(0o700),
        )?;
        let bus = format!("unix:path={}", runtime.join("bus").display());
        let log = std::fs::File::create(dir.path().join("manager.log"))?;
        // The manager in place of the shell, so that its PID is the child's.
        let script = "mount -t tmpfs tmpfs /run && mkdir -p /run/systemd/system || exit 1
exec /lib/systemd/systemd --user";
        let child = Command::new("unshare")
            .args(["--mount", "--propagation", "private", "sh", "-c", script])
            .env("XDG_RUNTIME_DIR", &runtime)
            .env("XDG_CONFIG_HOME", dir.path().join("config"))
            .env("DBUS_SESSION_BUS_ADDRESS", &bus)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .process_group(0)
            .spawn()
            .context("starting unshare (util-linux) for the user manager")?;
        let m = UserManager { child, dir };
        let t0 = Instant::now();
        loop {
            if m.owned()? {
                return Ok(m);
            }
            if t0.elapsed() > READY_LIMIT {
                bail!(
                    "systemd --user did not appear on its bus within {READY_LIMIT:?}: {}",
                    std::fs::read_to_string(m.dir.path().join("manager.log")).unwrap_or_default()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Whether the manager owns its name on the bus.
    fn owned(&self) -> Result<bool> {
        let out = Command::new("dbus-send")
            .arg(format!("--bus={}", self.bus()))
            .args([
                "--print-reply",
                "--dest=org.freedesktop.DBus",
                "/",
                "org.freedesktop.DBus.NameHasOwner",
                "string:org.freedesktop.systemd1",
            ])
            .stderr(Stdio::null())
            .output()
            .context("running dbus-send (package dbus-bin)")?;
        Ok(String::from_utf8_lossy(&out.stdout).contains("boolean true"))
    }

    /// The manager's bus address.
    pub fn bus(&self) -> String {
        format!("unix:path={}", self.runtime_dir().join("bus").display())
    }

    /// `$XDG_RUNTIME_DIR` of the manager.
    pub fn runtime_dir(&self) -> PathBuf {
        self.dir.path().join("runtime")
    }

    /// Its runtime unit directory (`$XDG_RUNTIME_DIR/systemd/user`), where
    /// drop-ins go.
    pub fn dropin_dir(&self) -> PathBuf {
        self.runtime_dir().join("systemd/user")
    }

    /// Where unit files go.
    pub fn unit_dir(&self) -> PathBuf {
        self.dir.path().join("config/systemd/user")
    }

    /// Writes unit `name` and has the manager read it.
    pub fn add_unit(&self, name: &str, text: &str) -> Result<()> {
        std::fs::write(self.unit_dir().join(name), text)
            .with_context(|| format!("writing unit {name}"))?;
        self.systemctl(&["daemon-reload"])?;
        Ok(())
    }

    /// Runs `systemctl --user ARGS` against this manager; its output.
    pub fn systemctl(&self, args: &[&str]) -> Result<String> {
        let out = Command::new("systemctl")
            .arg("--user")
            .args(args)
            .env("DBUS_SESSION_BUS_ADDRESS", self.bus())
            .env("XDG_RUNTIME_DIR", self.runtime_dir())
            .output()
            .context("running systemctl")?;
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// What `systemctl --user show -p PROP --value UNIT` says.
    pub fn property(&self, unit: &str, prop: &str) -> Result<String> {
        self.systemctl(&["show", "-p", prop, "--value", unit])
    }

    /// The directory of this manager (for a test's own files).
    pub fn path(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for UserManager {
    fn drop(&mut self) {
        let pid = self.child.id() as i32;
        // SAFETY: kill(2) of the manager this value started.
        unsafe { libc::kill(pid, libc::SIGTERM) };
        let t0 = Instant::now();
        while t0.elapsed() < STOP_LIMIT {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        // SAFETY: kill(2) of the process group this value started (the
        // manager, if still there, and its bus).
        unsafe { libc::kill(-pid, libc::SIGKILL) };
        let _ = self.child.wait();
    }
}
