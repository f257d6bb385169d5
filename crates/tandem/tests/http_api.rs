//! The HTTP API and its metrics on a real 3-node testbed cluster (needs
//! root; CI runs as root): TLS on the `lan` link with a read and an
//! operator token, reached with `curl` from the client namespace (a
//! stranger's place on the LAN), and `/metrics` checked by Prometheus' own
//! `promtool check metrics`, then watched as nodes die.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::io::Write as _;
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::Value;
use tandem_testbed::agents::{
    all_online, running_on, web_group_config, AgentCluster, ClusterShape,
};
use tandem_testbed::require_root;
use tandem_testbed::x509::Ca;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(30);
const PORT: u16 = 9640;
const READ: &str = "read-0123456789abcdef0123456789abcdef";
const OPERATOR: &str = "operator-0123456789abcdef0123456789ab";

/// `curl` from the client namespace: the HTTP code and the body.
fn curl(
    c: &AgentCluster,
    ca: &Path,
    node: usize,
    method: &str,
    path: &str,
    token: Option<&str>,
    body: Option<&str>,
) -> (u16, String) {
    let url = format!("https://{}:{PORT}{path}", c.bed.address(node, "lan"));
    let ca = ca.display().to_string();
    let auth = token.map(|t| format!("Authorization: Bearer {t}"));
    let mut args = vec![
        "-sS",
        "--max-time",
        "10",
        "--cacert",
        &ca,
        "-X",
        method,
        "-w",
        "\n%{http_code}",
    ];
    if let Some(a) = &auth {
        args.extend(["-H", a]);
    }
    if let Some(b) = body {
        args.extend(["-H", "Content-Type: application/json", "--data", b]);
    }
    args.push(&url);
    let out = c.bed.exec_client("curl", &args).unwrap();
    let (body, code) = out.trim_end().rsplit_once('\n').unwrap_or(("", out.trim()));
    (code.parse().unwrap_or(0), body.to_string())
}

/// The value of the series `series` (name and labels, as written) in a
/// scrape, if present.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines().find_map(|l| {
        l.strip_prefix(series)?
            .strip_prefix(' ')?
            .trim()
            .parse()
            .ok()
    })
}

/// `promtool check metrics` on a scrape: Prometheus' own linter.
fn promtool(text: &str) {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        panic!("promtool not found: scripts/install-deps installs Debian's prometheus package");
    };
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool check metrics failed:\n{}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A real Prometheus (Debian's) in member `node`'s namespace scrapes
/// every node over TLS with the read token, once a second; returns its
/// answer to `query` once it covers `series` series (bounded wait).
fn prometheus_query(
    c: &AgentCluster,
    dir: &Path,
    ca: &Path,
    token_file: &Path,
    node: usize,
    query: &str,
    series: usize,
) -> Value {
    let targets: Vec<String> = (1..=3)
        .map(|n| format!("\"{}:{PORT}\"", c.bed.address(n, "lan")))
        .collect();
    let config = dir.join("prometheus.yml");
    std::fs::write(
        &config,
        format!(
            "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: tandem\n    scheme: https\n    tls_config:\n      ca_file: {}\n    authorization:\n      credentials_file: {}\n    static_configs:\n      - targets: [{}]\n",
            ca.display(),
            token_file.display(),
            targets.join(", ")
        ),
    )
    .unwrap();
    let (cfg, data) = (config.display().to_string(), dir.join("tsdb"));
    let data = data.display().to_string();
    let pid = c
        .bed
        .spawn(
            node,
            "prometheus",
            &[
                "--config.file",
                &cfg,
                "--storage.tsdb.path",
                &data,
                "--web.listen-address",
                "127.0.0.1:9090",
            ],
        )
        .unwrap();
    let url = format!("http://127.0.0.1:9090/api/v1/query?query={query}");
    let deadline = std::time::Instant::now() + GENEROUS;
    let answer = loop {
        let out = c
            .bed
            .exec(node, "curl", &["-sS", "--max-time", "5", &url])
            .unwrap_or_default();
        let v: Value = serde_json::from_str(&out).unwrap_or(Value::Null);
        let n = v["data"]["result"].as_array().map_or(0, Vec::len);
        if n >= series || std::time::Instant::now() > deadline {
            break v;
        }
        std::thread::sleep(Duration::from_millis(500));
    };
    c.bed.kill9(pid).unwrap();
    answer
}

fn metrics(c: &AgentCluster, ca: &Path, node: usize) -> String {
    let (code, text) = curl(c, ca, node, "GET", "/metrics", Some(READ), None);
    assert_eq!(code, 200, "{text}");
    text
}

#[test]
fn the_api_serves_status_actions_and_metrics_over_tls_to_token_holders_only() {
    if !require_root("the_api_serves_status_actions_and_metrics_over_tls_to_token_holders_only") {
        return;
    }
    let files = tempfile::tempdir_in("/dev/shm").unwrap();
    let f = |name: &str| files.path().join(name);
    let extra = format!(
        "{}\n[http]\nlisten = \"lan\"\nport = {PORT}\ntls_cert = \"{}\"\ntls_key = \"{}\"\nread_token_file = \"{}\"\noperator_token_file = \"{}\"\n",
        web_group_config(Path::new(TANDEM), "manual", 3, 8080, 8081),
        f("server-cert.pem").display(),
        f("server-key.pem").display(),
        f("read.token").display(),
        f("operator.token").display(),
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(3)
    };
    let mut c = AgentCluster::prepare(TANDEM, &shape).unwrap();
    let ca = Ca::create(&f("ca"), "tandem-http-test").unwrap();
    let ips: Vec<String> = (1..=3)
        .map(|n| c.bed.address(n, "lan").to_string())
        .collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    ca.issue(files.path(), "server", &ips).unwrap();
    for (name, token) in [("read.token", READ), ("operator.token", OPERATOR)] {
        std::fs::write(f(name), format!("{token}\n")).unwrap();
        std::fs::set_permissions(f(name), std::os::unix::fs::PermissionsExt::from_mode(0o600))
            .unwrap();
    }
    let ca_cert = f("ca/ca-cert.pem");
    c.start_members().unwrap();
    c.wait(1, GENEROUS, "all online, web running", |s| {
        all_online(s) && running_on(s, "web").is_some()
    })
    .unwrap();

    // Without a token, or with a wrong one: 401, and nothing of the state.
    let (code, body) = curl(&c, &ca_cert, 1, "GET", "/v1/status", None, None);
    assert_eq!(code, 401, "{body}");
    assert!(!body.contains("\"groups\""), "{body}");
    let (code, _) = curl(
        &c,
        &ca_cert,
        1,
        "GET",
        "/metrics",
        Some("not-the-token-0123456789abcdef0123"),
        None,
    );
    assert_eq!(code, 401);
    // Plain HTTP to the TLS port gets no answer.
    let plain = format!("http://{}:{PORT}/v1/status", c.bed.address(1, "lan"));
    let out = c.bed.exec_client(
        "curl",
        &[
            "-s",
            "--max-time",
            "5",
            "-o",
            "/dev/null",
            "-w",
            "%{http_code}",
            &plain,
        ],
    );
    assert!(
        out.map_or(true, |o| o.trim() != "200"),
        "plain HTTP answered"
    );

    // The read token reads: the same status as `tandem status --json`.
    let (code, body) = curl(&c, &ca_cert, 2, "GET", "/v1/status", Some(READ), None);
    assert_eq!(code, 200, "{body}");
    let v: Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["answer"], "status");
    assert!(all_online(&v["status"]), "{body}");
    let holder = running_on(&v["status"], "web").unwrap();
    let other = (1..=3).find(|n| *n != holder).unwrap();

    // ... but cannot act; the operator token can.
    let move_to =
        format!("{{\"v\":1,\"request\":\"move\",\"group\":\"web\",\"node\":\"n{other}\"}}");
    let (code, body) = curl(
        &c,
        &ca_cert,
        1,
        "POST",
        "/v1/control",
        Some(READ),
        Some(&move_to),
    );
    assert_eq!(code, 403, "{body}");
    assert!(body.contains("operator token"), "{body}");
    let (code, body) = curl(
        &c,
        &ca_cert,
        1,
        "POST",
        "/v1/control",
        Some(OPERATOR),
        Some("{\"v\":1,\"request\":\"move\",\"group\":\"wbe\",\"node\":\"n1\"}"),
    );
    assert_eq!(code, 404, "{body}");
    assert!(body.contains("unknown_group"), "{body}");
    let (code, body) = curl(
        &c,
        &ca_cert,
        1,
        "POST",
        "/v1/control",
        Some(OPERATOR),
        Some(&move_to),
    );
    assert_eq!(code, 200, "{body}");
    assert!(body.contains("accepted"), "{body}");
    c.wait(other, GENEROUS, "web moved by the API", |s| {
        running_on(s, "web") == Some(other)
    })
    .unwrap();

    // Metrics: Prometheus' linter accepts them; they tell the truth.
    let m = metrics(&c, &ca_cert, other);
    promtool(&m);
    assert_eq!(sample(&m, "tandem_quorate"), Some(1.0), "{m}");
    // A real Prometheus scrapes the three nodes and answers a query.
    let answer = prometheus_query(
        &c,
        files.path(),
        &ca_cert,
        &f("read.token"),
        holder,
        "tandem_quorate",
        3,
    );
    println!("Prometheus: tandem_quorate -> {answer}");
    let result = answer["data"]["result"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    assert_eq!(result.len(), 3, "{answer}");
    for r in &result {
        assert_eq!(r["metric"]["job"], "tandem", "{answer}");
        assert_eq!(r["value"][1], "1", "{answer}");
    }
    // Heartbeat round trips, per peer and link: every link to both peers
    // has samples.
    let rtt_counts: Vec<f64> = m
        .lines()
        .filter(|l| l.starts_with("tandem_link_heartbeat_rtt_seconds_count{"))
        .filter_map(|l| l.rsplit(' ').next()?.parse().ok())
        .collect();
    assert!(
        rtt_counts.len() >= 2 && rtt_counts.iter().all(|n| *n > 0.0),
        "round trips per peer and link: {rtt_counts:?}\n{m}"
    );
    assert_eq!(
        sample(&m, "tandem_nodes{state=\"online\"}"),
        Some(3.0),
        "{m}"
    );
    assert_eq!(
        sample(&m, "tandem_failover_seconds_count"),
        Some(0.0),
        "{m}"
    );
    assert_eq!(
        sample(
            &m,
            &format!("tandem_group_active{{group=\"web\",node=\"n{other}\"}}")
        ),
        Some(1.0),
        "{m}"
    );

    // The holder's agent dies (kill -9): the survivors' metrics say so,
    // and the node that takes web over counts one failover.
    let holder = other;
    // SAFETY: kill(2) of an agent this test started.
    unsafe { libc::kill(c.pids[holder - 1] as i32, libc::SIGKILL) };
    let survivors: Vec<usize> = (1..=3).filter(|n| *n != holder).collect();
    let mut taker = 0;
    c.wait(survivors[0], GENEROUS, "web running on a survivor", |s| {
        running_on(s, "web").is_some_and(|n| n != holder)
    })
    .unwrap();
    for n in &survivors {
        let m = metrics(&c, &ca_cert, *n);
        promtool(&m);
        assert_eq!(
            sample(&m, "tandem_nodes{state=\"offline\"}"),
            Some(1.0),
            "n{n}: {m}"
        );
        assert_eq!(
            sample(&m, "tandem_nodes{state=\"online\"}"),
            Some(2.0),
            "n{n}: {m}"
        );
        assert_eq!(sample(&m, "tandem_quorate"), Some(1.0), "n{n}: {m}");
        assert_eq!(
            sample(
                &m,
                &format!("tandem_node_state{{node=\"n{holder}\",state=\"offline\"}}")
            ),
            Some(1.0),
            "n{n}: {m}"
        );
        if sample(&m, "tandem_failover_seconds_count") == Some(1.0) {
            taker = *n;
            let secs = sample(&m, "tandem_failover_seconds_sum").unwrap();
            println!("n{n} took web over: tandem_failover_seconds_sum {secs}");
            // At least the deadtime; a generous bound above.
            assert!(secs > 0.1 && secs < 20.0, "n{n}: {secs} s\n{m}");
        }
    }
    let s = c.status(survivors[0]).unwrap();
    assert_eq!(
        Some(taker),
        running_on(&s, "web"),
        "the node running web counted its failover"
    );

    // A second death: the last node has no quorum, and says so.
    let last = if taker == survivors[0] {
        survivors[1]
    } else {
        survivors[0]
    };
    // SAFETY: as above.
    unsafe { libc::kill(c.pids[taker - 1] as i32, libc::SIGKILL) };
    c.wait(last, GENEROUS, "quorum lost", |s| {
        s["quorum"]["quorate"] == false
    })
    .unwrap();
    let m = metrics(&c, &ca_cert, last);
    promtool(&m);
    assert_eq!(sample(&m, "tandem_quorate"), Some(0.0), "{m}");
    assert_eq!(
        sample(&m, "tandem_nodes{state=\"offline\"}"),
        Some(2.0),
        "{m}"
    );
    assert_eq!(sample(&m, "tandem_status_answered"), Some(1.0), "{m}");
}
