//! Operator commands (`move`, `failover`, `node`, `maintenance`,
//! `cleanup`): send the request to the local agent, which passes it to the
//! leader, then watch the local agent's status until the outcome shows (or
//! `--timeout`), and say what happened.

use std::io::Write as _;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

use anyhow::{bail, Result};

use crate::cli::AdminArgs;
use tandem_agent::control::{Client, ControlRequest};
use tandem_agent::event::{AgentEvent, VoterStep};
use tandem_agent::status::{GroupStatus, Status};

/// Poll interval while waiting for an outcome.
const POLL: Duration = Duration::from_millis(50);

fn socket(a: &AdminArgs) -> Result<PathBuf> {
    a.at.socket()
}

/// The local agent's status.
pub fn status(socket: &Path) -> Result<Status> {
    Ok(Client::new(socket).status()?)
}

/// `tandem status`: asks the agent behind `socket` and prints its view
/// (as the agent wrote it with `json`).
pub fn print_status(socket: &Path, json: bool) -> Result<()> {
    let client = Client::new(socket);
    if json {
        println!("{}", client.status_json()?);
    } else {
        print!("{}", crate::render::status(&client.status()?));
    }
    Ok(())
}

/// The lines of `now`, each marked `*` if `before` (the previous view)
/// did not have it and `before` existed, else with two spaces.
pub fn mark_changes(before: Option<&str>, now: &str) -> String {
    let old: std::collections::HashSet<&str> =
        before.map(|b| b.lines().collect()).unwrap_or_default();
    let mut out = String::with_capacity(now.len() + 2 * now.lines().count());
    for line in now.lines() {
        let changed = before.is_some() && !old.contains(line);
        out.push_str(if changed { "* " } else { "  " });
        out.push_str(line);
        out.push('\n');
    }
    out
}

/// `tandem status --watch`: the status every `every`, changed lines
/// marked, until interrupted. An agent that stops answering is said so,
/// and watched for until it answers again.
pub fn watch_status(socket: &Path, every: std::time::Duration) -> Result<()> {
    use std::io::{IsTerminal as _, Write as _};
    let client = Client::new(socket);
    let tty = std::io::stdout().is_terminal();
    let mut before: Option<String> = None;
    loop {
        let now = match client.status() {
            Ok(s) => crate::render::status(&s),
            Err(e) => format!("the agent at {} does not answer: {e}\n", socket.display()),
        };
        let shown = mark_changes(before.as_deref(), &now);
        let mut out = std::io::stdout().lock();
        if tty {
            // Clear the screen and go home, as watch(1) does.
            let _ = write!(out, "\x1b[2J\x1b[H");
        }
        let _ = writeln!(
            out,
            "every {}s: {} (* changed)\n",
            every.as_secs(),
            tandem_agent::clock::format_utc(tandem_agent::clock::unix_ms())
        );
        let _ = write!(out, "{shown}");
        if !tty {
            let _ = writeln!(out, "---");
        }
        let _ = out.flush();
        before = Some(now);
        std::thread::sleep(every);
    }
}

/// `tandem events`: every node's events since `since_ms` ago, merged;
/// with `follow`, new ones every second until interrupted.
pub fn print_events(socket: &Path, since_ms: Option<u64>, follow: bool, json: bool) -> Result<()> {
    let client = Client::new(socket);
    let now = tandem_agent::clock::unix_ms();
    let mut from = since_ms.map(|s| now.saturating_sub(s));
    // What was printed at the latest time seen, so that a poll that asks
    // from that time again does not print it twice.
    let mut printed_at: (u64, Vec<(String, String)>) = (0, Vec::new());
    let mut warned = std::collections::BTreeSet::new();
    loop {
        let g = client.events(from)?;
        for (node, why) in &g.unreachable {
            if warned.insert(node.clone()) {
                eprintln!("tandem: {node} did not answer, its events are missing: {why}");
            }
        }
        for e in &g.events {
            let at = e.record.at_unix_ms;
            let key = (e.node.clone(), e.record.text.clone());
            if at < printed_at.0 || (at == printed_at.0 && printed_at.1.contains(&key)) {
                continue;
            }
            if at > printed_at.0 {
                printed_at = (at, Vec::new());
            }
            printed_at.1.push(key);
            if json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                println!(
                    "{} {:<8} {}",
                    tandem_agent::clock::format_utc(at),
                    e.node,
                    e.record.text
                );
            }
        }
        if !follow {
            return Ok(());
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        from = Some(printed_at.0.max(from.unwrap_or(0)));
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

fn send(socket: &Path, r: &ControlRequest) -> Result<()> {
    Ok(Client::new(socket).request(r)?)
}

fn group<'a>(s: &'a Status, name: &str) -> Option<&'a GroupStatus> {
    s.groups.iter().find(|g| g.name == name)
}

/// What "done" means for a group that runs on `node`: with monitors, it
/// answers (they passed since it started); without, only that it runs.
fn arrived(g: &GroupStatus, node: &str) -> String {
    let checked: Vec<&str> = g
        .monitors
        .iter()
        .filter(|m| m.kind != "process")
        .map(|m| m.name.as_str())
        .collect();
    if checked.is_empty() {
        format!(
            "{} runs on {node} (no monitor checks that it answers)",
            g.name
        )
    } else {
        format!(
            "{} answers on {node} (monitor {} passed)",
            g.name,
            checked.join(", ")
        )
    }
}

fn where_is(g: &GroupStatus) -> String {
    match &g.placed_on {
        Some(n) => format!("{} on {n}", g.state),
        None => "stopped".into(),
    }
}

/// Sends `r`, then polls until `done` says the outcome is there. Prints
/// why it waits whenever that changes.
fn request_and_wait(
    a: &AdminArgs,
    r: &ControlRequest,
    what: &str,
    done: impl Fn(&Status) -> Option<String>,
) -> Result<ExitCode> {
    let sock = socket(a)?;
    let before = status(&sock)?;
    if let Some(msg) = done(&before) {
        println!("{what}: already so ({msg})");
        // Still send it: a pin, an intent, must be recorded all the same.
        send(&sock, r)?;
        return Ok(ExitCode::SUCCESS);
    }
    send(&sock, r)?;
    if a.no_wait {
        println!("{what}: requested (not waiting; `tandem status` shows the outcome)");
        return Ok(ExitCode::SUCCESS);
    }
    let t0 = Instant::now();
    let limit = Duration::from_secs(a.timeout);
    let mut last_note = String::new();
    let mut last = before;
    while t0.elapsed() < limit {
        std::thread::sleep(POLL);
        let Ok(s) = status(&sock) else { continue };
        if let Some(msg) = done(&s) {
            println!("{what}: done in {} ms — {msg}", t0.elapsed().as_millis());
            return Ok(ExitCode::SUCCESS);
        }
        let note: Vec<String> = s
            .groups
            .iter()
            .filter_map(|g| g.waiting.as_ref().map(|w| format!("{}: {w}", g.name)))
            .collect();
        let note = note.join("; ");
        if !note.is_empty() && note != last_note {
            println!("  waiting: {note}");
            last_note = note;
        }
        last = s;
    }
    eprintln!(
        "{what}: not done after {} s; the request stays in force. Now: {}",
        a.timeout,
        last.groups
            .iter()
            .map(|g| format!("{} {}", g.name, where_is(g)))
            .collect::<Vec<_>>()
            .join(", ")
    );
    if !last.quorum.quorate {
        eprintln!("this node has no quorum: the cluster cannot act until it does");
    }
    Ok(ExitCode::FAILURE)
}

/// `tandem move GROUP --to NODE` / `--clear`.
pub fn move_group(a: &AdminArgs, name: &str, to: Option<String>) -> Result<ExitCode> {
    let r = ControlRequest::Move {
        group: name.to_string(),
        node: to.clone(),
    };
    match to {
        Some(node) => request_and_wait(a, &r, &format!("move {name} to {node}"), |s| {
            let g = group(s, name)?;
            (g.placed_on.as_deref() == Some(node.as_str()) && g.state.is_running())
                .then(|| arrived(g, &node))
        }),
        None => request_and_wait(a, &r, &format!("clear the move of {name}"), |s| {
            let g = group(s, name)?;
            g.pinned
                .is_none()
                .then(|| format!("{name} is {}", where_is(g)))
        }),
    }
}

/// `tandem failover [GROUP]`.
pub fn failover(a: &AdminArgs, name: Option<&str>) -> Result<ExitCode> {
    let s = status(&socket(a)?)?;
    let names: Vec<String> = match name {
        Some(n) => {
            if group(&s, n).is_none() {
                bail!(
                    "no group named {n} (groups: {})",
                    s.groups
                        .iter()
                        .map(|g| g.name.as_str())
                        .collect::<Vec<_>>()
                        .join(", ")
                );
            }
            vec![n.to_string()]
        }
        None => s
            .groups
            .iter()
            .filter(|g| g.placed_on.as_deref() == Some(s.node.as_str()))
            .map(|g| g.name.clone())
            .collect(),
    };
    if names.is_empty() {
        bail!(
            "no group is placed on {}; name the group to fail over",
            s.node
        );
    }
    // Fail fast when nobody could take over (the leader would just wait).
    let others: Vec<&str> = s
        .peers
        .iter()
        .filter(|p| {
            p.state == tandem_agent::status::PeerState::Online
                && !s.standby.contains(&p.name)
                && p.name != "witness"
        })
        .map(|p| p.name.as_str())
        .collect();
    if others.is_empty() && !s.standby.contains(&s.node) {
        let states: Vec<String> = s
            .peers
            .iter()
            .map(|p| format!("{} {}", p.name, p.state.as_str()))
            .collect();
        bail!(
            "no other node is online to take over ({}); nothing was changed",
            states.join(", ")
        );
    }
    let mut code = ExitCode::SUCCESS;
    for n in names {
        let Some(from) = group(&s, &n).and_then(|g| g.placed_on.clone()) else {
            bail!("group {n} runs nowhere: use `tandem move {n} --to NODE` to start it somewhere");
        };
        let r = ControlRequest::Failover { group: n.clone() };
        // The node's newest fence before the request: a newer one after it
        // means the node was fenced (entries are compared, not clocks: the
        // leader's stamp and this node's clock may differ).
        let last_fence = |st: &Status| {
            st.fences
                .iter()
                .rfind(|f| f.node == from && f.ok && f.action != "on")
                .cloned()
        };
        let before = last_fence(&s);
        let c = request_and_wait(a, &r, &format!("failover {n} from {from}"), |st| {
            let g = group(st, &n)?;
            // Say how it left: a node whose stop failed is fenced first.
            let fenced = last_fence(st).is_some_and(|f| Some(&f) != before.as_ref());
            let how = if fenced {
                format!("{from} was fenced first (its stop failed)")
            } else {
                format!("stopped cleanly on {from} first")
            };
            match &g.placed_on {
                Some(to) if *to != from && g.state.is_running() => {
                    Some(format!("{}; {how}", arrived(g, to)))
                }
                _ => None,
            }
        })?;
        if c != ExitCode::SUCCESS {
            code = c;
        }
    }
    Ok(code)
}

/// `tandem node standby|online NODE`.
pub fn node(a: &AdminArgs, node: &str, standby: bool) -> Result<ExitCode> {
    let r = ControlRequest::Standby {
        node: node.to_string(),
        on: standby,
    };
    if standby {
        request_and_wait(a, &r, &format!("node {node} standby"), |s| {
            let busy = s.groups.iter().any(|g| {
                g.placed_on.as_deref() == Some(node) || g.active_on.iter().any(|n| n == node)
            });
            (s.standby.iter().any(|n| n == node) && !busy)
                .then(|| format!("{node} is in standby and runs no group"))
        })
    } else {
        request_and_wait(a, &r, &format!("node {node} online"), |s| {
            (!s.standby.iter().any(|n| n == node)).then(|| format!("{node} may host groups again"))
        })
    }
}

/// `tandem node add|remove NODE`: one change of voters, carried out by the
/// leader (it waits, up to `VOTER_WISH_MS`, until the change may be made).
/// Done once this node's log holds the change committed; a refusal the
/// leader logs here (this node leads) ends the wait at once with its reason.
pub fn node_vote(a: &AdminArgs, node: &str, vote: bool) -> Result<ExitCode> {
    let sock = socket(a)?;
    let s = status(&sock)?;
    let what = format!("node {} {node}", if vote { "add" } else { "remove" });
    let votes = |st: &Status| {
        if st.node == node {
            Some(st.agreement.voter)
        } else {
            st.peers.iter().find(|p| p.name == node).map(|p| p.voter)
        }
    };
    // A pair in two-node mode gives a vote up (one node then stands
    // alone), never takes a third.
    if vote
        && votes(&s) == Some(false)
        && s.quorum.mode == tandem_agent::status::QuorumMode::TwoNode
    {
        bail!(
            "this is a two-node cluster with fencing: it does not take a third voter while running \
             (a fence-backed node holds its groups with no lease end to wait out); install the new \
             configuration on every node and restart the agents one at a time; nothing was changed"
        );
    }
    let done = |st: &Status| {
        let busy = st
            .groups
            .iter()
            .any(|g| g.placed_on.as_deref() == Some(node) || g.active_on.iter().any(|n| n == node));
        let voters = st.peers.iter().filter(|p| p.voter).count() + usize::from(st.agreement.voter);
        if st.agreement.voters_changing {
            return None;
        }
        match (votes(st), vote) {
            (Some(true), true) if !st.standby.iter().any(|n| n == node) => Some(format!(
                "{node} votes and may host groups ({voters} voters)"
            )),
            (Some(false), false) if !busy => Some(format!(
                "{node} runs no group and follows as a non-voter ({voters} voters)"
            )),
            _ => None,
        }
    };
    if let Some(msg) = done(&s) {
        println!("{what}: already so ({msg})");
        return Ok(ExitCode::SUCCESS);
    }
    let since_ms = s.events.last().map_or(0, |e| e.at_unix_ms);
    send(
        &sock,
        &ControlRequest::Voter {
            node: node.to_string(),
            vote,
        },
    )?;
    if a.no_wait {
        println!("{what}: requested (not waiting; `tandem status` shows the voters)");
        return Ok(ExitCode::SUCCESS);
    }
    let t0 = Instant::now();
    let limit = Duration::from_secs(a.timeout);
    let mut last = s;
    while t0.elapsed() < limit {
        std::thread::sleep(POLL);
        let Ok(st) = status(&sock) else { continue };
        if let Some(msg) = done(&st) {
            println!("{what}: done in {} ms — {msg}", t0.elapsed().as_millis());
            return Ok(ExitCode::SUCCESS);
        }
        // The leader's own word, when this node leads.
        let refused = st.events.iter().rev().find_map(|e| match &e.event {
            Some(AgentEvent::VoterChange {
                node: n,
                vote: v,
                outcome: VoterStep::Refused { reason },
            }) if e.at_unix_ms >= since_ms && n == node && *v == vote => Some(reason.clone()),
            _ => None,
        });
        if let Some(reason) = refused {
            bail!("{what}: refused by the leader: {reason}");
        }
        last = st;
    }
    eprintln!(
        "{what}: not done after {} s (now {node} {}); the leader gives up after {} s and logs why: \
         `tandem events --since 5m` on any node shows it. A change waits for the previous one to \
         settle (a lease), for an added node to catch up with the log, and for a majority of the \
         new voters to answer",
        a.timeout,
        match votes(&last) {
            Some(true) => "votes",
            Some(false) => "does not vote",
            None => "is unknown here",
        },
        tandem_core::member::VOTER_WISH_MS / 1000
    );
    if !last.quorum.quorate {
        eprintln!("this node has no quorum: the cluster cannot act until it does");
    }
    Ok(ExitCode::FAILURE)
}

/// `tandem maintenance on|off [GROUP]`.
pub fn maintenance(a: &AdminArgs, name: Option<&str>, on: bool) -> Result<ExitCode> {
    let s = status(&socket(a)?)?;
    let names: Vec<String> = match name {
        Some(n) => vec![n.to_string()],
        None => s.groups.iter().map(|g| g.name.clone()).collect(),
    };
    if names.is_empty() {
        bail!("the cluster has no groups");
    }
    let mut code = ExitCode::SUCCESS;
    for n in names {
        let r = ControlRequest::Maintenance {
            group: n.clone(),
            on,
        };
        let word = if on { "on" } else { "off" };
        let c = request_and_wait(a, &r, &format!("maintenance {word} for {n}"), |st| {
            let g = group(st, &n)?;
            (g.maintenance == on).then(|| {
                if on {
                    format!("{n} is unmanaged: nothing is started, stopped or monitored")
                } else {
                    format!("{n} is managed again ({})", where_is(g))
                }
            })
        })?;
        if c != ExitCode::SUCCESS {
            code = c;
        }
    }
    Ok(code)
}

/// `tandem cleanup GROUP`.
pub fn cleanup(a: &AdminArgs, name: &str) -> Result<ExitCode> {
    let r = ControlRequest::Cleanup {
        group: name.to_string(),
    };
    request_and_wait(a, &r, &format!("cleanup {name}"), |s| {
        let g = group(s, name)?;
        g.fail_counts
            .is_empty()
            .then(|| format!("{name} has no failures recorded ({})", where_is(g)))
    })
}

/// `tandem fence NODE [--yes] [--on]`.
pub fn fence(a: &AdminArgs, node: &str, yes: bool, on: bool) -> Result<ExitCode> {
    use std::io::IsTerminal as _;
    if !yes && !on {
        if !std::io::stdin().is_terminal() {
            bail!("fencing powers {node} off: pass --yes to confirm when not at a terminal");
        }
        print!(
            "Fence {node}? Its fence devices will power it off. Type the node name to confirm: "
        );
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().read_line(&mut answer)?;
        if answer.trim() != node {
            println!("not fenced");
            return Ok(ExitCode::FAILURE);
        }
    }
    let started = tandem_agent::clock::unix_ms();
    let r = ControlRequest::Fence {
        node: node.to_string(),
        on,
    };
    let n = node.to_string();
    let action = if on { "on" } else { "off" };
    let done = move |s: &Status| {
        let f = s
            .fences
            .iter()
            .rev()
            .find(|f| f.node == n && f.at_unix_ms >= started && f.action == action)?;
        let lines = f.attempts.join("\n  ");
        Some(match (on, f.ok) {
            (false, true) => format!("{n} fenced\n  {lines}"),
            (true, true) => format!("{n} powered on\n  {lines}"),
            (false, false) => format!("FENCING {n} FAILED\n  {lines}"),
            (true, false) => format!("FAILED to power {n} on\n  {lines}"),
        })
    };
    let what = if on {
        format!("power {node} on")
    } else {
        format!("fence {node}")
    };
    let code = request_and_wait(a, &r, &what, done.clone())?;
    // request_and_wait reports "done" for a failed fence too: say it plainly.
    if let Ok(s) = status(&socket(a)?) {
        if done(&s).is_some_and(|m| m.starts_with("FENCING") || m.starts_with("FAILED")) {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changed_lines_are_marked_after_the_first_view() {
        assert_eq!(mark_changes(None, "a\nb\n"), "  a\n  b\n");
        assert_eq!(mark_changes(Some("a\nb\n"), "a\nc\n"), "  a\n* c\n");
    }
}
