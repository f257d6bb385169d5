//! The client's view: a UDP probe (and optionally a TCP connect) to a target
//! address every few milliseconds for a bounded time, each logged with its
//! send time and who answered, or a timeout.
//!
//! The prober runs on a thread of its own that enters the client's network
//! namespace; a single-threaded tokio runtime drives the probes there, so
//! every socket it opens belongs to that namespace.
//!
//! Log format (text, one record per line, `#` header):
//!
//! ```text
//! # tandem-testbed probe log v1 target=10.77.1.100:7000 interval_ms=5 timeout_ms=100 started_unix_ms=1700000000000
//! <t_us> <udp|tcp> <seq> <responder|-> <rtt_us|->
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::{bail, Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpStream, UdpSocket};
use tokio::sync::mpsc;
use tokio::time::MissedTickBehavior;

use crate::checker::{ProbeKind, ProbeRecord};
use crate::sys::enter_netns;

/// Longest run a prober accepts (bounds memory: one record per probe).
pub const MAX_DURATION_MS: u64 = 3_600_000;
/// Largest answer read from a responder.
const MAX_ANSWER: usize = 128;
/// Longest HTTP answer read (headers and the first line of the body).
const MAX_HTTP_ANSWER: usize = 4096;

/// What to probe and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ProbeSpec {
    /// Address and port of the service (the floating IP).
    pub target: SocketAddr,
    /// Time between probes.
    pub interval_ms: u64,
    /// An answer later than this counts as a timeout.
    pub timeout_ms: u64,
    /// Stop after this long (or earlier, with [`Prober::stop`]).
    pub duration_ms: u64,
    /// Also open a TCP connection per interval.
    pub tcp: bool,
    /// Make each TCP probe an HTTP GET of `/` to this port instead, whose
    /// body's first line is the responder's name (a web server serving a
    /// page per node).
    pub http_port: Option<u16>,
}

impl ProbeSpec {
    /// UDP+TCP every 5 ms, 100 ms timeout.
    pub fn new(target: SocketAddr, duration_ms: u64) -> Self {
        ProbeSpec {
            target,
            interval_ms: 5,
            timeout_ms: 100,
            duration_ms,
            tcp: true,
            http_port: None,
        }
    }
}

/// A finished probe run.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeLog {
    /// What was probed.
    pub spec: ProbeSpec,
    /// Wall clock at the prober's t = 0, to line up with agents' events.
    pub started_unix_ms: u64,
    /// Every record, in send order per kind.
    pub records: Vec<ProbeRecord>,
}

impl ProbeLog {
    /// The log as text (see the module docs).
    pub fn to_text(&self) -> String {
        let s = &self.spec;
        let mut out = format!(
            "# tandem-testbed probe log v1 target={} interval_ms={} timeout_ms={} started_unix_ms={}\n",
            s.target, s.interval_ms, s.timeout_ms, self.started_unix_ms
        );
        for r in &self.records {
            let who = r.responder.as_deref().unwrap_or("-");
            let rtt = r.rtt_us.map_or("-".to_string(), |v| v.to_string());
            let _ = writeln!(out, "{} {} {} {who} {rtt}", r.t_us, r.kind.as_str(), r.seq);
        }
        out
    }

    /// Parses [`ProbeLog::to_text`]'s output; errors name the line.
    pub fn parse(text: &str) -> Result<ProbeLog> {
        let mut lines = text.lines().enumerate();
        let (_, header) = lines.next().context("empty probe log")?;
        let fields: BTreeMap<&str, &str> = header
            .strip_prefix("# tandem-testbed probe log v1 ")
            .context("line 1: not a tandem-testbed probe log v1 header")?
            .split_whitespace()
            .filter_map(|kv| kv.split_once('='))
            .collect();
        let get = |k: &str| {
            fields
                .get(k)
                .copied()
                .with_context(|| format!("line 1: header lacks `{k}=`"))
        };
        let spec = ProbeSpec {
            target: get("target")?.parse().context("line 1: bad target")?,
            interval_ms: get("interval_ms")?
                .parse()
                .context("line 1: bad interval_ms")?,
            timeout_ms: get("timeout_ms")?
                .parse()
                .context("line 1: bad timeout_ms")?,
            duration_ms: 0,
            tcp: false,
            http_port: None,
        };
        let started_unix_ms = get("started_unix_ms")?
            .parse()
            .context("line 1: bad started_unix_ms")?;
        let mut records = Vec::new();
        for (i, line) in lines {
            let n = i + 1;
            if line.trim().is_empty() || line.starts_with('#') {
                continue;
            }
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() != 5 {
                bail!(
                    "line {n}: expected 5 fields `t_us kind seq responder rtt_us`, found {}",
                    f.len()
                );
            }
            let kind = match f[1] {
                "udp" => ProbeKind::Udp,
                "tcp" => ProbeKind::Tcp,
                k => bail!("line {n}: unknown probe kind `{k}`"),
            };
            let opt = |s: &str| (s != "-").then(|| s.to_string());
            records.push(ProbeRecord {
                t_us: f[0]
                    .parse()
                    .with_context(|| format!("line {n}: bad time"))?,
                kind,
                seq: f[2].parse().with_context(|| format!("line {n}: bad seq"))?,
                responder: opt(f[3]),
                rtt_us: opt(f[4])
                    .map(|s| s.parse())
                    .transpose()
                    .with_context(|| format!("line {n}: bad rtt"))?,
            });
        }
        let tcp = records.iter().any(|r| r.kind == ProbeKind::Tcp);
        Ok(ProbeLog {
            spec: ProbeSpec { tcp, ..spec },
            started_unix_ms,
            records,
        })
    }
}

/// A prober running in the background.
#[derive(Debug)]
pub struct Prober {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<Result<ProbeLog>>,
}

impl Prober {
    /// Starts probing from network namespace `ns`.
    pub fn start(ns: &str, spec: ProbeSpec) -> Result<Prober> {
        if spec.interval_ms == 0 || spec.timeout_ms == 0 {
            bail!("probe interval and timeout must be positive");
        }
        if spec.duration_ms > MAX_DURATION_MS {
            bail!(
                "probe duration {} ms is over the limit of {MAX_DURATION_MS} ms",
                spec.duration_ms
            );
        }
        let stop = Arc::new(AtomicBool::new(false));
        let ns = ns.to_string();
        let flag = stop.clone();
        let (ready_tx, ready_rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name("tandem-prober".into())
            .spawn(move || -> Result<ProbeLog> {
                enter_netns(&ns)?;
                let rt = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()?;
                rt.block_on(probe(spec, flag, ready_tx))
            })
            .context("starting the prober thread")?;
        // Wait until the first probe is about to go out, so a caller that
        // injects a fault right after start() has the prober running.
        let _ = ready_rx.recv_timeout(Duration::from_secs(5));
        Ok(Prober { stop, thread })
    }

    /// Stops early and returns the log.
    pub fn stop(self) -> Result<ProbeLog> {
        self.stop.store(true, Ordering::Relaxed);
        self.join()
    }

    /// Waits for the configured duration to end and returns the log.
    pub fn join(self) -> Result<ProbeLog> {
        match self.thread.join() {
            Ok(r) => r,
            Err(_) => bail!("the prober thread panicked"),
        }
    }
}

/// What the TCP tasks report back.
struct TcpResult {
    seq: u64,
    t_us: u64,
    answer: Option<(String, u64)>,
}

/// Wall-clock milliseconds since the Unix epoch (0 before 1970): the
/// testbed's one reading, to line probe logs up with agents' logs.
pub fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

async fn probe(
    spec: ProbeSpec,
    stop: Arc<AtomicBool>,
    ready: std::sync::mpsc::Sender<()>,
) -> Result<ProbeLog> {
    let started_unix_ms = unix_ms();
    let t0 = Instant::now();
    let now_us = move || t0.elapsed().as_micros() as u64;
    let sock = UdpSocket::bind("0.0.0.0:0")
        .await
        .context("binding the UDP probe socket")?;
    let timeout = Duration::from_millis(spec.timeout_ms);
    let end = t0 + Duration::from_millis(spec.duration_ms);
    let mut ticker = tokio::time::interval(Duration::from_millis(spec.interval_ms));
    ticker.set_missed_tick_behavior(MissedTickBehavior::Delay);
    // In flight at most timeout/interval TCP probes; room for all of them.
    let cap = (spec.timeout_ms / spec.interval_ms + 16) as usize;
    let (tcp_tx, mut tcp_rx) = mpsc::channel::<TcpResult>(cap);
    let mut udp_sent: Vec<(u64, Vec<(String, u64)>)> = Vec::new();
    let mut tcp_results: Vec<TcpResult> = Vec::new();
    let mut buf = [0u8; MAX_ANSWER];
    let mut seq = 0u64;
    let _ = ready.send(());
    let mut draining_until: Option<Instant> = None;
    loop {
        let stopping = stop.load(Ordering::Relaxed) || Instant::now() >= end;
        if stopping && draining_until.is_none() {
            draining_until = Some(Instant::now() + timeout + Duration::from_millis(20));
        }
        if let Some(d) = draining_until {
            if Instant::now() >= d {
                break;
            }
        }
        tokio::select! {
            _ = ticker.tick(), if draining_until.is_none() => {
                let t_us = now_us();
                // A send error (e.g. no route while the address moves) is a lost probe.
                let _ = sock.send_to(format!("tprobe {seq}\n").as_bytes(), spec.target).await;
                udp_sent.push((t_us, Vec::new()));
                if spec.tcp {
                    let tx = tcp_tx.clone();
                    let http = spec.http_port;
                    let target = match http {
                        Some(port) => SocketAddr::new(spec.target.ip(), port),
                        None => spec.target,
                    };
                    tokio::spawn(async move {
                        let start = Instant::now();
                        let answer = tokio::time::timeout(timeout, async {
                            let mut s = TcpStream::connect(target).await.ok()?;
                            if http.is_some() {
                                s.write_all(b"GET / HTTP/1.0\r\nHost: probe\r\n\r\n").await.ok()?;
                            }
                            let mut b = [0u8; MAX_HTTP_ANSWER];
                            let mut n = 0;
                            while n < b.len() {
                                match s.read(&mut b[n..]).await.ok()? {
                                    0 => break,
                                    k => n += k,
                                }
                                if http.is_none() && b[..n].contains(&b'\n') { break; }
                            }
                            let text = String::from_utf8_lossy(&b[..n]).into_owned();
                            let name = match http {
                                // The body's first line, after a 200.
                                Some(_) => {
                                    let (head, body) = text.split_once("\r\n\r\n")?;
                                    if !head.starts_with("HTTP/1.") || !head.contains(" 200 ") { return None; }
                                    body.lines().next()?.trim().to_string()
                                }
                                None => text.trim().to_string(),
                            };
                            (!name.is_empty() && !name.contains(char::is_whitespace)).then_some(name)
                        }).await.ok().flatten();
                        let rtt = start.elapsed().as_micros() as u64;
                        let _ = tx.send(TcpResult { seq, t_us, answer: answer.map(|a| (a, rtt)) }).await;
                    });
                }
                seq += 1;
            }
            r = sock.recv_from(&mut buf) => {
                let Ok((n, _)) = r else { continue };
                let t = now_us();
                let text = String::from_utf8_lossy(&buf[..n]);
                let mut f = text.split_whitespace();
                let (Some(who), Some(s)) = (f.next(), f.next().and_then(|s| s.parse::<usize>().ok())) else { continue };
                if let Some((sent, answers)) = udp_sent.get_mut(s) {
                    let rtt = t.saturating_sub(*sent);
                    if rtt <= spec.timeout_ms * 1000 && !answers.iter().any(|(w, _)| w == who) {
                        answers.push((who.to_string(), rtt));
                    }
                }
            }
            Some(r) = tcp_rx.recv() => tcp_results.push(r),
            _ = tokio::time::sleep(Duration::from_millis(5)), if draining_until.is_some() => {}
        }
    }
    while let Ok(r) = tcp_rx.try_recv() {
        tcp_results.push(r);
    }
    let mut records = Vec::with_capacity(udp_sent.len() + tcp_results.len());
    for (seq, (t_us, answers)) in udp_sent.into_iter().enumerate() {
        if answers.is_empty() {
            records.push(ProbeRecord {
                t_us,
                kind: ProbeKind::Udp,
                seq: seq as u64,
                responder: None,
                rtt_us: None,
            });
        }
        for (who, rtt) in answers {
            records.push(ProbeRecord {
                t_us,
                kind: ProbeKind::Udp,
                seq: seq as u64,
                responder: Some(who),
                rtt_us: Some(rtt),
            });
        }
    }
    tcp_results.sort_by_key(|r| r.seq);
    for r in tcp_results {
        let (responder, rtt_us) = match r.answer {
            Some((w, rtt)) => (Some(w), Some(rtt)),
            None => (None, None),
        };
        records.push(ProbeRecord {
            t_us: r.t_us,
            kind: ProbeKind::Tcp,
            seq: r.seq,
            responder,
            rtt_us,
        });
    }
    Ok(ProbeLog {
        spec,
        started_unix_ms,
        records,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_text_round_trips() {
        let log = ProbeLog {
            spec: ProbeSpec {
                target: "10.77.1.100:7000".parse().unwrap(),
                interval_ms: 5,
                timeout_ms: 100,
                duration_ms: 0,
                tcp: true,
                http_port: None,
            },
            started_unix_ms: 1_700_000_000_000,
            records: vec![
                ProbeRecord {
                    t_us: 0,
                    kind: ProbeKind::Udp,
                    seq: 0,
                    responder: Some("n1".into()),
                    rtt_us: Some(250),
                },
                ProbeRecord {
                    t_us: 5_000,
                    kind: ProbeKind::Udp,
                    seq: 1,
                    responder: None,
                    rtt_us: None,
                },
                ProbeRecord {
                    t_us: 5_000,
                    kind: ProbeKind::Tcp,
                    seq: 1,
                    responder: Some("n2".into()),
                    rtt_us: Some(900),
                },
            ],
        };
        assert_eq!(ProbeLog::parse(&log.to_text()).unwrap(), log);
    }

    #[test]
    fn parse_errors_name_the_line() {
        let head = "# tandem-testbed probe log v1 target=10.0.0.1:1 interval_ms=5 timeout_ms=100 started_unix_ms=0\n";
        let e = ProbeLog::parse(&format!("{head}0 udp 0 n1 5\n1 sctp 1 - -\n")).unwrap_err();
        assert!(e.to_string().contains("line 3"), "{e}");
        assert!(ProbeLog::parse("hello\n").is_err());
        assert!(ProbeLog::parse("").is_err());
    }
}
