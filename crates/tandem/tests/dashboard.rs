//! The web dashboard in a real browser (needs root; CI runs as root):
//! Debian's Chromium, headless, driven over WebDriver by Debian's
//! chromedriver, both in the testbed's client namespace (a browser on the
//! LAN), loading the page over TLS from a node of a 3-node cluster. It
//! checks that nodes and groups are shown, moves a group through the page
//! (accepting its confirmation) and sees it arrive, then powers a node off
//! and sees it go offline on the page within 2 s. Screenshots go to
//! `docs/`.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tandem_testbed::agents::{
    all_online, running_on, web_group_config, AgentCluster, ClusterShape,
};
use tandem_testbed::require_root;
use tandem_testbed::x509::Ca;

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");
const GENEROUS: Duration = Duration::from_secs(30);
const PORT: u16 = 9640;
const OPERATOR: &str = "operator-0123456789abcdef0123456789ab";
const DRIVER_PORT: u16 = 9515;

/// A WebDriver session in the client namespace; ends it and the driver
/// when dropped.
struct Browser<'a> {
    c: &'a AgentCluster,
    driver: Child,
    session: String,
}

impl Browser<'_> {
    /// One WebDriver command (through curl in the client namespace).
    fn call(&self, method: &str, path: &str, body: Option<Value>) -> Value {
        call(
            self.c,
            method,
            &format!("/session/{}{path}", self.session),
            body,
        )
    }

    /// The WebDriver id of the element `css` selects.
    fn element(&self, css: &str) -> String {
        let e = self.call(
            "POST",
            "/element",
            Some(json!({ "using": "css selector", "value": css })),
        );
        e["value"]
            .as_object()
            .and_then(|o| o.values().next())
            .and_then(Value::as_str)
            .unwrap_or_else(|| panic!("no element {css}: {e}"))
            .to_string()
    }

    fn script(&self, js: &str) -> Value {
        self.call(
            "POST",
            "/execute/sync",
            Some(json!({ "script": js, "args": [] })),
        )["value"]
            .clone()
    }

    /// Polls `js` until it returns `want`, for at most `limit`; the time
    /// it took.
    fn until(&self, js: &str, want: &Value, limit: Duration, what: &str) -> Duration {
        let t0 = Instant::now();
        let mut last = Value::Null;
        while t0.elapsed() < limit {
            last = self.script(js);
            if &last == want {
                println!("{what}: {:?}", t0.elapsed());
                return t0.elapsed();
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let page = self.script("return document.getElementById('conn').textContent + ' | ' + document.getElementById('outcome').textContent + ' | ' + document.body.innerText.slice(0, 400)");
        panic!("{what}: {js} gave {last} (not {want}) within {limit:?}; the page says: {page}");
    }

    fn screenshot(&self, name: &str) {
        let b64 = self.call("GET", "/screenshot", None)["value"]
            .as_str()
            .unwrap()
            .to_string();
        let docs = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../docs");
        let path = docs.join(name);
        let png = base64_decode(&b64);
        assert!(png.starts_with(b"\x89PNG"), "not a PNG");
        std::fs::write(&path, png).unwrap();
    }
}

impl Drop for Browser<'_> {
    fn drop(&mut self) {
        let _ = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            call(
                self.c,
                "DELETE",
                &format!("/session/{}", self.session),
                None,
            )
        }));
        // SAFETY: kill(2) of the process group this test started.
        unsafe { libc::kill(-(self.driver.id() as i32), libc::SIGKILL) };
        let _ = self.driver.wait();
    }
}

/// Standard base64 (WebDriver's screenshots), padding and all.
fn base64_decode(text: &str) -> Vec<u8> {
    let value = |c: u8| -> u32 {
        match c {
            b'A'..=b'Z' => u32::from(c - b'A'),
            b'a'..=b'z' => u32::from(c - b'a') + 26,
            b'0'..=b'9' => u32::from(c - b'0') + 52,
            b'+' => 62,
            b'/' => 63,
            _ => panic!("not base64: {c}"),
        }
    };
    let clean: Vec<u8> = text.bytes().filter(|c| !c.is_ascii_whitespace()).collect();
    let mut out = Vec::with_capacity(clean.len() / 4 * 3);
    for chunk in clean.chunks(4) {
        let pad = chunk.iter().filter(|c| **c == b'=').count();
        let n = chunk
            .iter()
            .map(|c| if *c == b'=' { 0 } else { value(*c) })
            .fold(0u32, |acc, v| (acc << 6) | v);
        let bytes = [(n >> 16) as u8, (n >> 8) as u8, n as u8];
        out.extend_from_slice(&bytes[..3 - pad]);
    }
    out
}

fn call(c: &AgentCluster, method: &str, path: &str, body: Option<Value>) -> Value {
    let url = format!("http://127.0.0.1:{DRIVER_PORT}{path}");
    let mut args = vec![
        "-sS",
        "--max-time",
        "60",
        "-X",
        method,
        "-H",
        "Content-Type: application/json",
    ];
    let text = body.map(|b| b.to_string());
    if let Some(t) = &text {
        args.extend(["--data", t.as_str()]);
    }
    args.push(&url);
    let out = c.bed.exec_client("curl", &args).unwrap();
    serde_json::from_str(&out).unwrap_or_else(|e| panic!("{method} {path}: {e}: {out}"))
}

fn start_browser(c: &AgentCluster) -> Browser<'_> {
    use std::os::unix::process::CommandExt as _;
    let driver = Command::new("ip")
        .args([
            "netns",
            "exec",
            &c.bed.client_ns(),
            "chromedriver",
            &format!("--port={DRIVER_PORT}"),
        ])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .process_group(0)
        .spawn()
        .expect("chromedriver: scripts/install-deps installs Debian's chromium-driver");
    let t0 = Instant::now();
    loop {
        let up = c
            .bed
            .exec_client(
                "curl",
                &["-s", &format!("http://127.0.0.1:{DRIVER_PORT}/status")],
            )
            .is_ok_and(|o| o.contains("\"ready\":true"));
        if up {
            break;
        }
        assert!(t0.elapsed() < GENEROUS, "chromedriver did not start");
        std::thread::sleep(Duration::from_millis(100));
    }
    let caps = json!({ "capabilities": { "alwaysMatch": {
        "browserName": "chrome",
        "goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            // The test's own CA is not in the browser's store: this
            // browser trusts the page's certificate by flag alone.
            "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--ignore-certificate-errors", "--window-size=1400,1000"]
        }
    }}});
    let s = call(c, "POST", "/session", Some(caps));
    let session = s["value"]["sessionId"]
        .as_str()
        .unwrap_or_else(|| panic!("{s}"))
        .to_string();
    Browser { c, driver, session }
}

#[test]
fn the_dashboard_shows_the_cluster_moves_a_group_and_sees_a_node_die() {
    if !require_root("the_dashboard_shows_the_cluster_moves_a_group_and_sees_a_node_die") {
        return;
    }
    assert!(
        Path::new("/usr/bin/chromium").exists(),
        "Debian's chromium is missing: scripts/install-deps installs it"
    );
    let files = tempfile::tempdir_in("/dev/shm").unwrap();
    let f = |name: &str| files.path().join(name);
    let extra = format!(
        "{}\n[http]\nlisten = \"lan\"\nport = {PORT}\ntls_cert = \"{}\"\ntls_key = \"{}\"\noperator_token_file = \"{}\"\n",
        web_group_config(Path::new(TANDEM), "manual", 3, 8080, 8081),
        f("server-cert.pem").display(),
        f("server-key.pem").display(),
        f("operator.token").display(),
    );
    let shape = ClusterShape {
        extra,
        ..ClusterShape::nodes(3)
    };
    let mut c = AgentCluster::prepare(TANDEM, &shape).unwrap();
    let ca = Ca::create(&f("ca"), "tandem-dashboard-test").unwrap();
    let ips: Vec<String> = (1..=3)
        .map(|n| c.bed.address(n, "lan").to_string())
        .collect();
    let ips: Vec<&str> = ips.iter().map(String::as_str).collect();
    ca.issue(files.path(), "server", &ips).unwrap();
    std::fs::write(f("operator.token"), format!("{OPERATOR}\n")).unwrap();
    std::fs::set_permissions(
        f("operator.token"),
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .unwrap();
    c.start_members().unwrap();
    c.wait(1, GENEROUS, "all online, web running", |s| {
        all_online(s) && running_on(s, "web").is_some()
    })
    .unwrap();

    println!("cluster up; starting the browser");
    let b = start_browser(&c);
    println!("browser session {}", b.session);
    let page = format!("https://{}:{PORT}/", c.bed.address(1, "lan"));
    // The cluster being up does not mean n1's HTTPS listener already
    // answers: a refused first load leaves Chromium on its error page for
    // good (seen once in CI), so load again until the dashboard is there.
    let t0 = Instant::now();
    loop {
        b.call("POST", "/url", Some(json!({ "url": page })));
        if b.script("return document.getElementById('conn') !== null") == json!(true) {
            break;
        }
        assert!(
            t0.elapsed() < GENEROUS,
            "the dashboard at {page} did not load within {GENEROUS:?}"
        );
        std::thread::sleep(Duration::from_millis(500));
    }
    println!("page loaded after {:?}", t0.elapsed());
    // Without a token the page says so; the operator types it in.
    b.until(
        "return document.getElementById('conn').textContent",
        &json!("enter a token"),
        GENEROUS,
        "asks for a token",
    );
    let input = b.element("#token");
    b.call(
        "POST",
        &format!("/element/{input}/value"),
        Some(json!({ "text": OPERATOR })),
    );
    b.script("document.getElementById('token').dispatchEvent(new Event('change')); return true");
    // Nodes and groups are shown, live.
    b.until(
        "return document.querySelectorAll('#nodes tr').length",
        &json!(3),
        GENEROUS,
        "three nodes",
    );
    b.until(
        "return document.getElementById('conn').textContent",
        &json!("live"),
        GENEROUS,
        "live",
    );
    let online = "return [...document.querySelectorAll('#nodes td[data-state]')].filter(t => t.dataset.state === 'online').length";
    b.until(online, &json!(3), GENEROUS, "three online");
    let holder = running_on(&c.status(1).unwrap(), "web").unwrap();
    let on_page = "return document.querySelector('tr[data-group=web] td[data-state]').dataset.node";
    b.until(
        on_page,
        &json!(format!("n{holder}")),
        GENEROUS,
        "web where it runs",
    );
    b.screenshot("dashboard-running.png");

    // A move through the page: choose the node, click, confirm.
    let target = (1..=3).find(|n| *n != holder && *n != 3).unwrap_or(3);
    // The row is built again when what it shows changes (a monitor's
    // result): an element found just before may be gone by the click.
    for attempt in 0..5 {
        b.script(&format!(
            "document.querySelector('tr[data-group=web] select').value = 'n{target}'; return true"
        ));
        let id = b.element("tr[data-group=web] button.move");
        let clicked = b.call("POST", &format!("/element/{id}/click"), Some(json!({})));
        if clicked["value"]["error"] != "stale element reference" {
            break;
        }
        println!("the row was built again before the click (attempt {attempt}); again");
    }
    let asked = b.call("GET", "/alert/text", None)["value"]
        .as_str()
        .unwrap_or_default()
        .to_string();
    assert_eq!(asked, format!("move web to n{target}?"));
    b.call("POST", "/alert/accept", Some(json!({})));
    b.until(
        "return document.getElementById('outcome').className",
        &json!("ok"),
        GENEROUS,
        "the move accepted",
    );
    let state = "return document.querySelector('tr[data-group=web] td[data-state]').dataset.state";
    b.until(
        on_page,
        &json!(format!("n{target}")),
        GENEROUS,
        "web arrived on the page",
    );
    b.until(
        state,
        &json!("running"),
        GENEROUS,
        "web running on the page",
    );
    assert_eq!(running_on(&c.status(target).unwrap(), "web"), Some(target));

    // A node crashes (powered off by the testbed's switch): offline on
    // the page within 2 s.
    let victim = (1..=3).find(|n| *n != 1 && *n != target).unwrap();
    let (code, out) = tandem_testbed::fence::agent(&format!(
        "action=off\ntestbed={}\nplug=n{victim}\n",
        c.bed.id()
    ));
    assert_eq!(code, 0, "{out}");
    let took = b.until(
        &format!("return document.querySelector('#nodes tr[data-node=n{victim}] td[data-state]').dataset.state"),
        &json!("offline"),
        GENEROUS,
        "the powered-off node offline on the page",
    );
    println!(
        "n{victim} offline on the page {} ms after its power-off",
        took.as_millis()
    );
    assert!(took < Duration::from_secs(2), "{took:?}");
    b.screenshot("dashboard-node-offline.png");
    drop(b);
}
