//! Fencing: the plan for powering a node off through its fence devices,
//! as a sans-IO state machine (the shell runs the fence-agents programs).
//!
//! Rules (Pacemaker's fencing topology, simplified):
//!
//! - Only devices whose `hosts` map names the target take part; the map's
//!   value is the plug (port) to pass to the agent.
//! - Levels are tried in ascending order. A level succeeds when *every* one
//!   of its devices succeeded (e.g. both power supplies of one machine); a
//!   level fails as soon as one of its devices has failed all its attempts,
//!   and the next level is tried.
//! - A device waits its `delay_ms` before its first attempt (in two-node
//!   clusters the non-preferred node's delay lets the preferred one win a
//!   fence race), and is tried `1 + retries` times, each attempt bounded by
//!   its `timeout_ms` in the shell.
//! - Every attempt is kept in the history with the agent's (redacted)
//!   output, for status.

/// A fence device as the plan needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Device name.
    pub name: String,
    /// Level (1 first).
    pub level: u8,
    /// Wait before the first attempt.
    pub delay_ms: u64,
    /// Extra attempts after a failure.
    pub retries: u32,
    /// Node name -> plug on this device.
    pub hosts: Vec<(String, String)>,
}

/// One attempt, for the history.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Attempt {
    /// Device name.
    pub device: String,
    /// 1 for the first attempt on this device.
    pub attempt: u32,
    /// Whether the agent reported success.
    pub ok: bool,
    /// What it said (exit status and output, secrets redacted).
    pub output: String,
}

/// What to do next.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    /// Run `device` (index into the devices given to [`Plan::new`]) with
    /// action `off` on `plug`, not before `at_ms`.
    Run {
        /// Device index.
        device: usize,
        /// The target's plug on that device.
        plug: String,
        /// Earliest time to start.
        at_ms: u64,
    },
    /// An attempt is running: wait for [`Plan::on_result`].
    Busy,
    /// Finished: fenced (true) or every level failed (false).
    Done(bool),
}

/// Why a node cannot be fenced at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PlanError {
    /// No device names the node in its `hosts`.
    #[error("no fence device lists node {0} in its `hosts`; add it to a [[fence_device]]")]
    NoDevice(String),
}

/// Fencing one node.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Per level (ascending), the devices (index, plug) that take part.
    levels: Vec<Vec<(usize, String)>>,
    devices: Vec<Device>,
    level: usize,
    /// Position in the current level.
    pos: usize,
    attempt: u32,
    not_before_ms: u64,
    busy: bool,
    done: Option<bool>,
    history: Vec<Attempt>,
}

impl Plan {
    /// A plan to fence `target` at `now_ms` with `devices`.
    pub fn new(devices: &[Device], target: &str, now_ms: u64) -> Result<Plan, PlanError> {
        let mut by_level: std::collections::BTreeMap<u8, Vec<(usize, String)>> =
            std::collections::BTreeMap::new();
        for (i, d) in devices.iter().enumerate() {
            if let Some((_, plug)) = d.hosts.iter().find(|(n, _)| n == target) {
                by_level.entry(d.level).or_default().push((i, plug.clone()));
            }
        }
        if by_level.is_empty() {
            return Err(PlanError::NoDevice(target.to_string()));
        }
        let levels: Vec<Vec<(usize, String)>> = by_level.into_values().collect();
        let first = levels[0][0].0;
        Ok(Plan {
            not_before_ms: now_ms + devices[first].delay_ms,
            levels,
            devices: devices.to_vec(),
            level: 0,
            pos: 0,
            attempt: 1,
            busy: false,
            done: None,
            history: Vec::new(),
        })
    }

    /// The next step.
    pub fn next_step(&mut self) -> Step {
        if let Some(d) = self.done {
            return Step::Done(d);
        }
        if self.busy {
            return Step::Busy;
        }
        let (device, plug) = self.levels[self.level][self.pos].clone();
        self.busy = true;
        Step::Run {
            device,
            plug,
            at_ms: self.not_before_ms,
        }
    }

    /// The outcome of the attempt [`Plan::next_step`] asked for.
    pub fn on_result(&mut self, now_ms: u64, ok: bool, output: String) {
        if !self.busy || self.done.is_some() {
            return;
        }
        self.busy = false;
        let (device, _) = self.levels[self.level][self.pos].clone();
        let d = &self.devices[device];
        self.history.push(Attempt {
            device: d.name.clone(),
            attempt: self.attempt,
            ok,
            output,
        });
        if ok {
            self.pos += 1;
            self.attempt = 1;
            if self.pos == self.levels[self.level].len() {
                self.done = Some(true);
                return;
            }
            let (next, _) = self.levels[self.level][self.pos];
            self.not_before_ms = now_ms + self.devices[next].delay_ms;
            return;
        }
        if self.attempt <= d.retries {
            self.attempt += 1;
            self.not_before_ms = now_ms;
            return;
        }
        // This level failed: the next one, from its first device.
        self.level += 1;
        self.pos = 0;
        self.attempt = 1;
        if self.level == self.levels.len() {
            self.done = Some(false);
            return;
        }
        let (next, _) = self.levels[self.level][0];
        self.not_before_ms = now_ms + self.devices[next].delay_ms;
    }

    /// Every attempt so far.
    pub fn history(&self) -> &[Attempt] {
        &self.history
    }
}

/// Replaces the value of every option not known to be safe to show
/// ([`is_shown`]) wherever it appears in `text` (trimmed), so no
/// secret reaches a log, the status, the replicated record or a report,
/// whatever the option is called (`api_token`, `apikey`...: redaction by
/// name of secret let those through). Values shorter than 3 characters are
/// left: replacing a "1" everywhere would garble the text and hide nothing.
pub fn redact(text: &str, options: &[(String, String)]) -> String {
    let mut out = text.to_string();
    let mut values: Vec<&str> = options
        .iter()
        .filter(|(k, _)| !is_shown(k))
        // Trimmed: the text around it may be trimmed too.
        .map(|(_, v)| v.trim())
        .filter(|v| v.len() >= 3)
        .collect();
    // Longest first: a value containing another is replaced whole.
    values.sort_by_key(|v| std::cmp::Reverse(v.len()));
    for v in values {
        out = out.replace(v, "****");
    }
    out
}

/// Options whose values are shown in logs and status: where and what to
/// fence, never how to log in. Every other option's value is redacted.
pub const SHOWN_OPTIONS: &[&str] = &[
    "action",
    "plug",
    "port",
    "nodename",
    "ip",
    "ipaddr",
    "ipport",
    "host",
    "hostname",
    "login",
    "username",
    "ssl",
    "ssl_secure",
    "ssl_insecure",
    "notls",
    "method",
    "delay",
    "power_timeout",
    "power_wait",
    "shell_timeout",
    "login_timeout",
    "retry_on",
    "verbose",
    "inet4_only",
    "inet6_only",
    "cmd_prompt",
    "secure",
    "identity_file",
    "password_script",
    "use_sudo",
    "sudo_path",
];

/// Options as `Debug` may print them: each value `****` unless its
/// option is known to be safe to show.
pub fn shown_options<'a>(
    options: impl Iterator<Item = (&'a str, &'a str)>,
) -> Vec<(&'a str, &'a str)> {
    options
        .map(|(k, v)| (k, if is_shown(k) { v } else { "****" }))
        .collect()
}

/// Whether an option's value may be shown (see [`SHOWN_OPTIONS`]).
pub fn is_shown(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    SHOWN_OPTIONS.contains(&k.as_str())
}

/// What became of a [`Slots::request`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Request {
    /// Waiting for a slot (or started by the next [`Slots::start_next`]).
    Queued,
    /// The same fencing is already running or waiting.
    AlreadyUnderWay,
    /// Too many are waiting: the caller must report a failed fence, so
    /// that it is retried later.
    QueueFull,
}

/// Fencings in progress and waiting: at most `max_running` at once (each
/// runs agents that talk to power switches and management boards, which
/// serve few clients at a time), each node at most once in either list,
/// and at most `max_queued` waiting.
#[derive(Debug, Clone)]
pub struct Slots<T> {
    max_running: usize,
    max_queued: usize,
    running: Vec<T>,
    queued: std::collections::VecDeque<T>,
}

impl<T: Clone + PartialEq> Slots<T> {
    /// Empty slots with the given bounds.
    pub fn new(max_running: usize, max_queued: usize) -> Slots<T> {
        Slots {
            max_running: max_running.max(1),
            max_queued,
            running: Vec::new(),
            queued: std::collections::VecDeque::new(),
        }
    }

    /// Asks for `item`.
    pub fn request(&mut self, item: T) -> Request {
        if self.running.contains(&item) || self.queued.contains(&item) {
            return Request::AlreadyUnderWay;
        }
        if self.queued.len() >= self.max_queued {
            return Request::QueueFull;
        }
        self.queued.push_back(item);
        Request::Queued
    }

    /// The next item to start now, if a slot is free; it counts as running.
    pub fn start_next(&mut self) -> Option<T> {
        if self.running.len() >= self.max_running {
            return None;
        }
        let item = self.queued.pop_front()?;
        self.running.push(item.clone());
        Some(item)
    }

    /// `item` finished (successfully or not): its slot is free.
    pub fn done(&mut self, item: &T) {
        self.running.retain(|r| r != item);
    }

    /// Items running now.
    pub fn running(&self) -> &[T] {
        &self.running
    }
}

/// Whether a key's name says it holds a credential (for warnings and for
/// masking configuration lines outside fence options; fence option values
/// are redacted unless shown, whatever their name).
pub fn is_secret(key: &str) -> bool {
    let k = key.to_ascii_lowercase();
    [
        "passw",
        "secret",
        "community",
        "token",
        "apikey",
        "api_key",
        "auth",
        "credential",
        "priv",
    ]
    .iter()
    .any(|s| k.contains(s))
        && !k.ends_with("_script")
        && !k.ends_with("_file")
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        /// Whatever the order of requests and completions: never more than
        /// the bound at once, never the same node twice at once, and every
        /// accepted request starts exactly once.
        #[test]
        fn fence_slots_bound_concurrency_and_start_each_request_once(
            ops in proptest::collection::vec((any::<bool>(), 0u8..8), 1..200),
        ) {
            let mut s = Slots::new(4, 6);
            let mut accepted = 0usize;
            let mut started = 0usize;
            for (is_request, node) in ops {
                if is_request {
                    accepted += usize::from(s.request(node) == Request::Queued);
                } else if let Some(&r) = s.running().first() {
                    s.done(&r);
                }
                while let Some(n) = s.start_next() {
                    started += 1;
                    prop_assert_eq!(s.running().iter().filter(|r| **r == n).count(), 1);
                }
                prop_assert!(s.running().len() <= 4);
            }
            // Finish everything: every accepted request has started.
            while let Some(&r) = s.running().first() {
                s.done(&r);
                while s.start_next().is_some() {
                    started += 1;
                }
            }
            prop_assert_eq!(accepted, started);
        }
    }

    fn dev(name: &str, level: u8, delay: u64, retries: u32, hosts: &[&str]) -> Device {
        Device {
            name: name.into(),
            level,
            delay_ms: delay,
            retries,
            hosts: hosts
                .iter()
                .map(|h| (h.to_string(), format!("{h}-plug")))
                .collect(),
        }
    }

    /// Drives a plan with `results` (one per attempt) until done.
    fn drive(p: &mut Plan, results: &[bool]) -> (bool, Vec<(usize, u64)>) {
        let mut runs = Vec::new();
        let mut now = 0;
        let mut it = results.iter();
        loop {
            match p.next_step() {
                Step::Done(d) => return (d, runs),
                Step::Busy => unreachable!(),
                Step::Run { device, at_ms, .. } => {
                    now = now.max(at_ms);
                    runs.push((device, now));
                    let ok = *it.next().expect("more results");
                    p.on_result(now, ok, String::new());
                }
            }
        }
    }

    #[test]
    fn a_node_no_device_lists_cannot_be_fenced() {
        let e = Plan::new(&[dev("ipmi", 1, 0, 0, &["n1"])], "n2", 0).unwrap_err();
        assert!(e.to_string().contains("n2"));
    }

    #[test]
    fn delay_then_success_on_the_first_level() {
        let devs = [dev("ipmi", 1, 500, 2, &["n1", "n2"])];
        let mut p = Plan::new(&devs, "n2", 100).unwrap();
        match p.next_step() {
            Step::Run {
                device,
                plug,
                at_ms,
            } => {
                assert_eq!((device, plug.as_str(), at_ms), (0, "n2-plug", 600));
            }
            s => panic!("{s:?}"),
        }
        assert_eq!(p.next_step(), Step::Busy);
        p.on_result(600, true, "ok".into());
        assert_eq!(p.next_step(), Step::Done(true));
        assert_eq!(p.history().len(), 1);
    }

    #[test]
    fn retries_then_the_next_level() {
        let devs = [dev("ipmi", 1, 0, 1, &["n2"]), dev("pdu", 2, 0, 0, &["n2"])];
        let mut p = Plan::new(&devs, "n2", 0).unwrap();
        let (ok, runs) = drive(&mut p, &[false, false, true]);
        assert!(ok);
        assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 0, 1]);
    }

    #[test]
    fn every_device_of_a_level_must_succeed() {
        // Two power supplies at level 1; the second fails: level 2 is used.
        let devs = [
            dev("psu-a", 1, 0, 0, &["n2"]),
            dev("psu-b", 1, 0, 0, &["n2"]),
            dev("switch", 2, 0, 0, &["n2"]),
        ];
        let mut p = Plan::new(&devs, "n2", 0).unwrap();
        let (ok, runs) = drive(&mut p, &[true, false, true]);
        assert!(ok);
        assert_eq!(runs.iter().map(|r| r.0).collect::<Vec<_>>(), vec![0, 1, 2]);
        let mut p = Plan::new(&devs, "n2", 0).unwrap();
        let (ok, _) = drive(&mut p, &[true, false, false]);
        assert!(!ok, "every level failed");
    }

    #[test]
    fn secrets_are_redacted() {
        let opts = vec![
            ("password".to_string(), "hunter2".to_string()),
            ("password_script".to_string(), "/etc/pw".to_string()),
            ("ip".to_string(), "10.0.0.1".to_string()),
        ];
        let t = redact("login with hunter2 to 10.0.0.1 using /etc/pw", &opts);
        assert_eq!(t, "login with **** to 10.0.0.1 using /etc/pw");
        assert!(
            is_secret("passwd") && is_secret("snmp_community") && !is_secret("password_script")
        );
    }

    /// Issue 15, defect 9: fence options `api_token` and `apikey` appeared
    /// in logs, status, the validate snippet and the replicated record:
    /// redaction went by option name. Every value not known to be safe is
    /// redacted now, however it is called, trimmed or not.
    #[test]
    fn every_option_value_is_redacted_unless_known_safe() {
        let opts = vec![
            ("api_token".to_string(), " tok-123456 ".to_string()),
            ("apikey".to_string(), "K3Y-abcdef".to_string()),
            ("whatever".to_string(), "s3cr3t-value".to_string()),
            ("ip".to_string(), "10.0.0.1".to_string()),
            ("login".to_string(), "admin".to_string()),
        ];
        let t = redact(
            "Unauthorized: token tok-123456 key K3Y-abcdef s3cr3t-value for admin@10.0.0.1",
            &opts,
        );
        assert_eq!(
            t,
            "Unauthorized: token **** key **** **** for admin@10.0.0.1"
        );
        assert!(is_secret("api_token") && is_secret("apikey") && !is_secret("ip"));
        assert!(!is_secret("identity_file"));
    }

    proptest! {
        /// Whatever the results, a plan ends, never runs more attempts than
        /// the devices allow, and succeeds only if some level had every
        /// device succeed.
        #[test]
        fn plans_end_within_their_attempts(
            levels in proptest::collection::vec((1u8..4, 0u32..3), 1..5),
            results in proptest::collection::vec(any::<bool>(), 0..40),
        ) {
            let devs: Vec<Device> = levels.iter().enumerate()
                .map(|(i, (l, r))| dev(&format!("d{i}"), *l, 0, *r, &["n2"]))
                .collect();
            let budget: u32 = devs.iter().map(|d| d.retries + 1).sum();
            let mut p = Plan::new(&devs, "n2", 0).unwrap();
            let mut it = results.iter().chain(std::iter::repeat(&false));
            let mut attempts = 0;
            loop {
                match p.next_step() {
                    Step::Done(ok) => {
                        if ok {
                            prop_assert!(p.history().last().is_some_and(|a| a.ok));
                        }
                        break;
                    }
                    Step::Run { .. } => {
                        attempts += 1;
                        prop_assert!(attempts <= budget);
                        p.on_result(0, *it.next().unwrap(), String::new());
                    }
                    Step::Busy => prop_assert!(false, "busy without a run"),
                }
            }
        }
    }
}
