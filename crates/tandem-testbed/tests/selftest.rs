//! The testbed tested on itself, in real network namespaces (needs root; CI
//! runs as root). Timing bounds here are generous safety limits only.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};

use tandem_testbed::checker::{analyze, CheckOptions, DualReason, ProbeKind};
use tandem_testbed::prober::{ProbeSpec, Prober};
use tandem_testbed::sweep;
use tandem_testbed::sys::enter_netns;
use tandem_testbed::{bed::Impairment, require_root, Testbed, TestbedSpec};

const PORT: u16 = 7000;
const RESPONDER: &str = env!("CARGO_BIN_EXE_tandem-testbed");

fn two_nodes() -> Testbed {
    Testbed::new(TestbedSpec {
        nodes: 2,
        links: vec!["lan".into(), "sync".into()],
    })
    .unwrap()
}

fn start_responders(bed: &Testbed) {
    for n in 1..=bed.nodes() {
        bed.spawn(
            n,
            RESPONDER,
            &[
                "respond",
                "--name",
                &format!("n{n}"),
                "--port",
                &PORT.to_string(),
            ],
        )
        .unwrap();
    }
}

/// Sends UDP probes from the client until `expect` answers (bounded).
fn wait_for_answer(bed: &Testbed, target: SocketAddr, expect: &str) {
    let ns = bed.client_ns();
    let expect = expect.to_string();
    std::thread::spawn(move || {
        enter_netns(&ns).unwrap();
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        s.set_read_timeout(Some(Duration::from_millis(50))).unwrap();
        let start = Instant::now();
        let mut buf = [0u8; 128];
        while start.elapsed() < Duration::from_secs(5) {
            let _ = s.send_to(b"tprobe 0\n", target);
            if let Ok((n, _)) = s.recv_from(&mut buf) {
                if String::from_utf8_lossy(&buf[..n]).starts_with(&expect) {
                    return;
                }
            }
        }
        panic!("{expect} never answered on {target}");
    })
    .join()
    .unwrap();
}

/// The floating address on `lan` and the responder's socket on it.
fn vip_target(bed: &Testbed) -> (String, SocketAddr) {
    let vip = bed.vip("lan").to_string();
    let target = format!("{vip}:{PORT}").parse().unwrap();
    (vip, target)
}

fn add_vip(bed: &Testbed, node: usize, vip: &str) {
    bed.exec(
        node,
        "ip",
        &["addr", "add", &format!("{vip}/24"), "dev", "lan"],
    )
    .unwrap();
}

fn announce(bed: &Testbed, node: usize, vip: &str) {
    // Unsolicited ARP so the client's cache learns the new owner.
    bed.exec(node, "arping", &["-U", "-c", "1", "-I", "lan", vip])
        .unwrap();
}

#[test]
fn address_moved_by_hand_gives_one_gap_and_no_dual_active() {
    if !require_root("address_moved_by_hand_gives_one_gap_and_no_dual_active") {
        return;
    }
    let bed = two_nodes();
    start_responders(&bed);
    let (vip, target) = vip_target(&bed);
    add_vip(&bed, 1, &vip);
    announce(&bed, 1, &vip);
    wait_for_answer(&bed, target, "n1");

    let prober = Prober::start(
        &bed.client_ns(),
        ProbeSpec {
            // Gaps are measured from send times; a longer answer timeout
            // only keeps a CPU-starved answer from counting as a loss.
            timeout_ms: 300,
            ..ProbeSpec::new(target, 2_500)
        },
    )
    .unwrap();
    std::thread::sleep(Duration::from_millis(800));
    bed.exec(
        1,
        "ip",
        &["addr", "del", &format!("{vip}/24"), "dev", "lan"],
    )
    .unwrap();
    let moved = Instant::now();
    std::thread::sleep(Duration::from_millis(200));
    add_vip(&bed, 2, &vip);
    let by_hand_ms = moved.elapsed().as_millis() as f64;
    announce(&bed, 2, &vip);
    let log = prober.join().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    println!("{report}");

    for kind in [ProbeKind::Udp, ProbeKind::Tcp] {
        let k = report.kind(kind);
        assert!(k.probes > 300, "{kind:?}: only {} probes", k.probes);
        assert_eq!(
            k.gaps.len(),
            1,
            "{kind:?}: expected exactly one gap:\n{report}"
        );
        let g = &k.gaps[0];
        assert_eq!(
            (g.before.as_deref(), g.after.as_deref()),
            (Some("n1"), Some("n2")),
            "{kind:?}"
        );
        // The address was missing for `by_hand_ms`; the gap must be about that
        // (give or take a probe interval, plus scheduling slack).
        let d = g.duration_ms();
        assert!(
            d >= by_hand_ms - 20.0 && d <= by_hand_ms + 300.0,
            "{kind:?}: gap {d} ms for a {by_hand_ms} ms move"
        );
        assert!(k.dual_active.is_empty(), "{kind:?}: {report}");
    }
}

#[test]
fn address_on_two_nodes_with_client_arp_flipped_is_dual_active() {
    if !require_root("address_on_two_nodes_with_client_arp_flipped_is_dual_active") {
        return;
    }
    let bed = two_nodes();
    start_responders(&bed);
    let (vip, target) = vip_target(&bed);
    add_vip(&bed, 1, &vip);
    add_vip(&bed, 2, &vip);
    let pin = |node: usize| {
        let mac = bed.mac(node, "lan").unwrap();
        bed.exec_client(
            "ip",
            &[
                "neigh",
                "replace",
                &vip,
                "lladdr",
                &mac,
                "dev",
                "lan",
                "nud",
                "permanent",
            ],
        )
        .unwrap();
    };
    pin(1);
    wait_for_answer(&bed, target, "n1");
    let prober = Prober::start(&bed.client_ns(), ProbeSpec::new(target, 1_200)).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    pin(2);
    std::thread::sleep(Duration::from_millis(300));
    pin(1);
    let log = prober.join().unwrap();
    let report = analyze(&log.records, CheckOptions::default());
    println!("{report}");
    let udp = report.kind(ProbeKind::Udp);
    assert_eq!(
        udp.responders.len(),
        2,
        "both nodes must have answered: {report}"
    );
    assert!(
        !udp.dual_active.is_empty(),
        "dual-active not detected:\n{report}"
    );
    let d = &udp.dual_active[0];
    assert_eq!(d.reason, DualReason::Interleaved);
    let mut pair = [d.nodes.0.clone(), d.nodes.1.clone()];
    pair.sort();
    assert_eq!(pair, ["n1".to_string(), "n2".to_string()]);
}

/// True when a datagram sent from `from`'s namespace reaches `to`'s
/// address on `link`.
fn udp_reaches(bed: &Testbed, from: usize, to: usize, link: &str, port: u16) -> bool {
    let to_ns = bed.node_ns(to);
    let from_ns = bed.node_ns(from);
    let dst: SocketAddr = SocketAddr::new(bed.address(to, link).into(), port);
    let rx = std::thread::spawn(move || {
        enter_netns(&to_ns).unwrap();
        let s = UdpSocket::bind(("0.0.0.0", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_millis(400)))
            .unwrap();
        s
    })
    .join()
    .unwrap();
    std::thread::spawn(move || {
        enter_netns(&from_ns).unwrap();
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for _ in 0..3 {
            let _ = s.send_to(b"x", dst);
            std::thread::sleep(Duration::from_millis(20));
        }
    })
    .join()
    .unwrap();
    let mut buf = [0u8; 8];
    rx.recv_from(&mut buf).is_ok()
}

#[test]
fn fault_primitives_cut_drop_delay_freeze_and_kill() {
    if !require_root("fault_primitives_cut_drop_delay_freeze_and_kill") {
        return;
    }
    let bed = two_nodes();
    // Prime ARP so later checks measure the fault, not resolution.
    assert!(udp_reaches(&bed, 1, 2, "lan", 9001));
    assert!(udp_reaches(&bed, 1, 2, "sync", 9002));

    // Cut one link: only that link stops; the node sees carrier loss.
    bed.cut_link(1, "sync").unwrap();
    assert!(!udp_reaches(&bed, 1, 2, "sync", 9003));
    assert!(udp_reaches(&bed, 1, 2, "lan", 9004));
    let carrier = bed
        .exec(1, "cat", &["/sys/class/net/sync/carrier"])
        .unwrap_or_default();
    assert_ne!(
        carrier.trim(),
        "1",
        "n1/sync still has carrier after the cut"
    );
    bed.restore_link(1, "sync").unwrap();
    let start = Instant::now();
    while !udp_reaches(&bed, 1, 2, "sync", 9005) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "sync did not come back"
        );
    }

    // Cut a whole node.
    bed.cut_node(2).unwrap();
    assert!(!udp_reaches(&bed, 1, 2, "lan", 9006));
    assert!(!udp_reaches(&bed, 1, 2, "sync", 9007));
    bed.restore_node(2).unwrap();
    let start = Instant::now();
    while !udp_reaches(&bed, 1, 2, "lan", 9008) {
        assert!(
            start.elapsed() < Duration::from_secs(5),
            "lan did not come back"
        );
    }

    // One-way drop: n1 -> n2 lost on every link, n2 -> n1 still flows.
    bed.drop_one_way(1, 2).unwrap();
    assert!(!udp_reaches(&bed, 1, 2, "lan", 9009));
    assert!(!udp_reaches(&bed, 1, 2, "sync", 9010));
    assert!(udp_reaches(&bed, 2, 1, "lan", 9011));
    bed.heal_one_way(1, 2).unwrap();
    assert!(udp_reaches(&bed, 1, 2, "lan", 9012));

    // Delay on n1's lan, both directions: a client ping takes >= 2 x 40 ms.
    bed.impair_link(
        1,
        "lan",
        Impairment {
            delay_ms: 40,
            jitter_ms: 0,
            loss_pct: 0.0,
        },
    )
    .unwrap();
    let out = bed
        .exec_client(
            "ping",
            &[
                "-c",
                "2",
                "-i",
                "0.2",
                "-W",
                "2",
                &bed.address(1, "lan").to_string(),
            ],
        )
        .unwrap();
    let rtt: f64 = out
        .lines()
        .find_map(|l| l.split("time=").nth(1))
        .and_then(|t| t.split_whitespace().next())
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(|| panic!("no rtt in ping output: {out}"));
    assert!(rtt >= 75.0, "rtt {rtt} ms with 40 ms each way");
    bed.clear_impairment(1, "lan").unwrap();
    bed.clear_impairment(1, "lan").unwrap(); // idempotent
    let out = bed
        .exec_client(
            "ping",
            &["-c", "1", "-W", "2", &bed.address(1, "lan").to_string()],
        )
        .unwrap();
    assert!(
        out.contains("1 received"),
        "lan not back after clearing: {out}"
    );

    // 100% loss is a cut that keeps the carrier; 30% loses about 30%.
    bed.impair_link(
        2,
        "sync",
        Impairment {
            delay_ms: 0,
            jitter_ms: 0,
            loss_pct: 100.0,
        },
    )
    .unwrap();
    assert!(!udp_reaches(&bed, 1, 2, "sync", 9013));
    bed.impair_link(
        2,
        "sync",
        Impairment {
            delay_ms: 0,
            jitter_ms: 0,
            loss_pct: 30.0,
        },
    )
    .unwrap();
    // Measure the wire's loss only: static neighbour entries, so that no
    // packet waits on an ARP exchange the loss itself keeps failing.
    for (node, peer) in [(1, 2), (2, 1)] {
        let (ip, mac) = (
            bed.address(peer, "sync").to_string(),
            bed.mac(peer, "sync").unwrap(),
        );
        bed.exec(
            node,
            "ip",
            &[
                "neigh",
                "replace",
                &ip,
                "lladdr",
                &mac,
                "dev",
                "sync",
                "nud",
                "permanent",
            ],
        )
        .unwrap();
    }
    // ping exits 1 when no reply came back: read its summary whatever the status.
    let ping = std::process::Command::new("ip")
        .args([
            "netns",
            "exec",
            &bed.node_ns(1),
            "ping",
            "-c",
            "100",
            "-i",
            "0.002",
            "-W",
            "1",
            "-q",
        ])
        .arg(bed.address(2, "sync").to_string())
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&ping.stdout).into_owned();
    let loss: f64 = out
        .lines()
        .find(|l| l.contains("packet loss"))
        .and_then(|l| l.split('%').next())
        .and_then(|s| s.rsplit(' ').next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no loss figure in {out}"));
    // A ping crosses the wire twice: expect 1 - 0.7^2 = 51% lost, give or take.
    assert!(
        (25.0..=80.0).contains(&loss),
        "{loss}% lost with 30% each way: {out}"
    );
    bed.clear_impairment(2, "sync").unwrap();
    assert!(udp_reaches(&bed, 1, 2, "sync", 9014));

    // Freeze: a frozen responder stops answering, and answers again on thaw.
    let pid = bed
        .spawn(1, RESPONDER, &["respond", "--name", "n1", "--port", "7000"])
        .unwrap();
    let target: SocketAddr = format!("{}:7000", bed.address(1, "lan")).parse().unwrap();
    wait_for_answer(&bed, target, "n1");
    assert!(
        bed.node_pids(1).unwrap().contains(&(pid as i32)),
        "spawned process not in the node's cgroup"
    );
    bed.freeze(1).unwrap();
    let frozen = Prober::start(
        &bed.client_ns(),
        ProbeSpec {
            tcp: false,
            http_port: None,
            ..ProbeSpec::new(target, 300)
        },
    )
    .unwrap()
    .join()
    .unwrap();
    assert_eq!(
        analyze(&frozen.records, CheckOptions::default())
            .kind(ProbeKind::Udp)
            .answered,
        0,
        "a frozen responder answered"
    );
    bed.thaw(1).unwrap();
    wait_for_answer(&bed, target, "n1");

    // kill -9 and graceful stop.
    let status = bed.kill9(pid).unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(9)
    );
    assert!(!bed.is_running(pid));
    let sleeper = bed.spawn(2, "sleep", &["1000"]).unwrap();
    assert!(bed.is_running(sleeper));
    let status = bed
        .stop_gracefully(sleeper, Duration::from_secs(3))
        .unwrap();
    assert_eq!(
        std::os::unix::process::ExitStatusExt::signal(&status),
        Some(15)
    );
}

fn leftovers_of(id: &str) -> Vec<String> {
    let mut found = Vec::new();
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        found.extend(
            rd.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .filter(|n| n.contains(id)),
        );
    }
    for root in [
        "/sys/fs/cgroup/freezer",
        "/sys/fs/cgroup",
        "/sys/fs/cgroup/unified",
    ] {
        if let Ok(rd) = std::fs::read_dir(root) {
            found.extend(
                rd.flatten()
                    .map(|e| e.path().display().to_string())
                    .filter(|n| n.contains(id)),
            );
        }
    }
    if Path::new(&format!("{}/{id}.lock", sweep::LOCK_DIR)).exists() {
        found.push(format!("{id}.lock"));
    }
    found
}

#[test]
fn drop_removes_everything_even_after_a_panic() {
    if !require_root("drop_removes_everything_even_after_a_panic") {
        return;
    }
    let (id, pid) = std::panic::catch_unwind(|| {
        let bed = two_nodes();
        let pid = bed.spawn(1, "sleep", &["1000"]).unwrap();
        bed.freeze(1).unwrap(); // tear-down must cope with frozen processes
        let id = bed.id().to_string();
        assert!(!leftovers_of(&id).is_empty());
        std::panic::panic_any((id, pid));
    })
    .unwrap_err()
    .downcast::<(String, u32)>()
    .map(|b| *b)
    .unwrap();
    assert!(
        leftovers_of(&id).is_empty(),
        "left behind: {:?}",
        leftovers_of(&id)
    );
    assert!(
        !Path::new(&format!("/proc/{pid}")).exists(),
        "process {pid} survived tear-down"
    );
}

#[test]
fn sweep_removes_a_crashed_run_and_spares_live_ones() {
    if !require_root("sweep_removes_a_crashed_run_and_spares_live_ones") {
        return;
    }
    let live = two_nodes();
    // A separate process builds a testbed and is killed with SIGKILL: no
    // destructor runs, as in a real crash.
    let mut child = std::process::Command::new(RESPONDER)
        .args(["up", "--nodes", "2"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut out = std::io::BufReader::new(child.stdout.take().unwrap());
    let mut first = String::new();
    std::io::BufRead::read_line(&mut out, &mut first).unwrap();
    let id = first
        .split_whitespace()
        .nth(1)
        .unwrap_or_else(|| panic!("unexpected output {first:?}"))
        .to_string();
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(
        !leftovers_of(&id).is_empty(),
        "the crashed run left nothing to sweep"
    );
    assert!(sweep::is_stale(&id));
    assert!(!sweep::is_stale(live.id()));
    let removed = sweep::sweep().unwrap();
    assert!(removed.contains(&id), "{removed:?}");
    assert!(!removed.contains(&live.id().to_string()));
    assert!(
        leftovers_of(&id).is_empty(),
        "left behind: {:?}",
        leftovers_of(&id)
    );
    assert!(
        !leftovers_of(live.id()).is_empty(),
        "sweep removed a live run"
    );
}

/// Regression: a sweep running while another test created its run could find
/// the new lock file before its owner had locked it, declare the run stale
/// and delete the lock; later sweeps then removed the live run's namespaces
/// (seen in CI as "Cannot open network namespace" mid-test). Lock files now
/// appear already locked, and a sweeper claims a run before removing it.
#[test]
fn regression_sweep_never_claims_a_run_being_created() {
    if !require_root("regression_sweep_never_claims_a_run_being_created") {
        return;
    }
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let sweepers: Vec<_> = (0..2)
        .map(|_| {
            let stop = stop.clone();
            std::thread::spawn(move || {
                let mut sweeps = 0u32;
                while !stop.load(std::sync::atomic::Ordering::Relaxed) && sweeps < 100_000 {
                    sweep::sweep().unwrap();
                    sweeps += 1;
                }
            })
        })
        .collect();
    let creators: Vec<_> = (0..4)
        .map(|_| {
            std::thread::spawn(|| {
                for _ in 0..300 {
                    let (id, lock) = sweep::new_run().unwrap();
                    let path = format!("{}/{id}.lock", sweep::LOCK_DIR);
                    assert!(
                        Path::new(&path).exists(),
                        "a sweep removed live run {id}'s lock"
                    );
                    assert!(!sweep::is_stale(&id), "live run {id} looks stale");
                    drop(lock);
                    let _ = std::fs::remove_file(&path);
                }
            })
        })
        .collect();
    for c in creators {
        c.join().unwrap();
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for s in sweepers {
        s.join().unwrap();
    }
}

/// The testbed's power switch as its fence device drives it: a node
/// powered off loses its processes, the addresses added at run time (a
/// floating address must not come back with the node) and its mounts
/// (one mount namespace per node, shared by everything spawned there and
/// outliving any one process); its own addresses stay.
#[test]
fn power_off_takes_processes_runtime_addresses_and_mounts_but_not_the_nodes_own_address() {
    if !require_root(
        "power_off_takes_processes_runtime_addresses_and_mounts_but_not_the_nodes_own_address",
    ) {
        return;
    }
    let bed = two_nodes();
    let own = bed.address(1, "lan").to_string();
    add_vip(&bed, 1, "10.77.1.100");
    // A mount made by one process of the node is seen by the next one,
    // after the first has gone.
    let dir = tempfile::tempdir().unwrap();
    let mnt = dir.path().join("m");
    std::fs::create_dir_all(&mnt).unwrap();
    let script = format!(
        "mount -t tmpfs powertest {} && exec sleep 600",
        mnt.display()
    );
    let mounter = bed.spawn(1, "sh", &["-c", &script]).unwrap();
    let mounted_in_node = |bed: &Testbed| {
        let probe = bed.spawn(1, "sh", &["-c", "sleep 600"]).unwrap();
        let table = std::fs::read_to_string(format!("/proc/{probe}/mountinfo")).unwrap_or_default();
        bed.kill9(probe).unwrap();
        table.contains(" powertest ") || table.contains(&format!(" {} ", mnt.display()))
    };
    let t0 = Instant::now();
    while !mounted_in_node(&bed) {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the mount never showed in the node"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    bed.kill9(mounter).unwrap();
    assert!(
        mounted_in_node(&bed),
        "the node's mount went with the process that made it"
    );
    let host = std::fs::read_to_string("/proc/self/mountinfo").unwrap();
    assert!(
        !host.contains(" powertest "),
        "a node's mount leaked to the machine"
    );

    let sleeper = bed.spawn(1, "sleep", &["600"]).unwrap();
    let (code, said) =
        tandem_testbed::fence::agent(&format!("action=off\nplug=n1\ntestbed={}\n", bed.id()));
    assert_eq!(code, 0, "{said}");
    assert!(!bed.is_running(sleeper), "a process outlived the power-off");
    let addrs = bed
        .exec(1, "ip", &["-o", "-4", "addr", "show", "dev", "lan"])
        .unwrap();
    assert!(
        !addrs.contains("10.77.1.100"),
        "the floating address came through: {addrs}"
    );
    assert!(addrs.contains(&own), "the node's own address went: {addrs}");
    let (code, said) =
        tandem_testbed::fence::agent(&format!("action=on\nplug=n1\ntestbed={}\n", bed.id()));
    assert_eq!(code, 0, "{said}");
    assert!(
        !mounted_in_node(&bed),
        "the node came back with its old mounts"
    );
}
