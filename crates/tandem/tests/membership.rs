//! Real `tandem agent` processes on the testbed (needs root; CI runs as
//! root): heartbeats over two links, link and node failure, quorum view,
//! graceful leave, and hostile packets. Time bounds here are generous safety
//! limits; the detection-time figures belong to the benchmark.

#![allow(
    clippy::unwrap_used,
    clippy::expect_used,
    reason = "a panic is how a test reports failure"
)]

use std::net::{SocketAddr, UdpSocket};
use std::time::Duration;

use serde_json::Value;
use tandem_core::wire::{self, Body, ClusterId, Header, NodeId, Packet};
use tandem_testbed::agents::{all_online, leader, link_state, peer, AgentCluster, ClusterShape};
use tandem_testbed::sys::enter_netns;
use tandem_testbed::{require_root, Testbed};

const TANDEM: &str = env!("CARGO_BIN_EXE_tandem");

/// The harness, failing the test on any error.
struct Cluster(AgentCluster);

impl std::ops::Deref for Cluster {
    type Target = AgentCluster;
    fn deref(&self) -> &AgentCluster {
        &self.0
    }
}

impl Cluster {
    fn start(nodes: usize) -> Cluster {
        Cluster(AgentCluster::start(TANDEM, &ClusterShape::nodes(nodes)).unwrap())
    }

    fn start_with_witness(nodes: usize) -> Cluster {
        let shape = ClusterShape {
            witness: true,
            ..ClusterShape::nodes(nodes)
        };
        Cluster(AgentCluster::start(TANDEM, &shape).unwrap())
    }

    fn wait(
        &self,
        n: usize,
        limit: Duration,
        what: &str,
        pred: impl Fn(&Value) -> bool,
    ) -> Duration {
        self.0.wait(n, limit, what, pred).unwrap()
    }
}

const GENEROUS: Duration = Duration::from_secs(10);

#[test]
fn three_nodes_two_links_cut_sync_cut_node_restore() {
    if !require_root("three_nodes_two_links_cut_sync_cut_node_restore") {
        return;
    }
    let c = Cluster::start(3);
    for n in 1..=3 {
        c.wait(n, GENEROUS, "all peers online on both links", all_online);
    }
    let n3_incarnation = peer(&c.status(1).unwrap(), "n3")["incarnation"].clone();

    // The sync network fails: every node stays online over lan, and every
    // node reports sync down to each peer.
    for n in 1..=3 {
        c.bed.cut_link(n, "sync").unwrap();
    }
    for n in 1..=3 {
        c.wait(n, GENEROUS, "sync down, lan up, peers online", |s| {
            s["peers"].as_array().unwrap().iter().all(|p| {
                let name = p["name"].as_str().unwrap();
                p["state"] == "online"
                    && link_state(s, name, "sync") == "down"
                    && link_state(s, name, "lan") == "up"
            }) && s["quorum"]["quorate"] == true
        });
    }
    for n in 1..=3 {
        c.bed.restore_link(n, "sync").unwrap();
    }
    for n in 1..=3 {
        c.wait(n, GENEROUS, "all links back", all_online);
    }

    // n3 loses every link: n1 and n2 declare it dead and keep quorum; n3
    // loses quorum.
    c.bed.cut_node(3).unwrap();
    for n in 1..=2 {
        let took = c.wait(n, Duration::from_secs(3), "n3 offline", |s| {
            peer(s, "n3")["state"] == "offline"
        });
        println!("n{n} saw n3 offline {took:?} after the cut (status polled every 20 ms)");
        let s = c.status(n).unwrap();
        assert_eq!(s["quorum"]["quorate"], true, "{s:#}");
        assert_eq!(s["quorum"]["votes"], 2);
        assert!(
            s["events"]
                .as_array()
                .unwrap()
                .iter()
                .any(|e| e["text"] == "node n3 dead"),
            "{s:#}"
        );
    }
    c.wait(3, Duration::from_secs(3), "n3 without quorum", |s| {
        s["quorum"]["quorate"] == false && s["quorum"]["votes"] == 1
    });

    // Restore: everyone converges, n3 without a restart.
    c.bed.restore_node(3).unwrap();
    for n in 1..=3 {
        c.wait(n, GENEROUS, "all online after restore", all_online);
    }
    assert_eq!(
        peer(&c.status(1).unwrap(), "n3")["incarnation"],
        n3_incarnation,
        "n3 restarted"
    );
    assert!(c.bed.is_running(c.pids[2]));

    // A graceful stop tells the peers at once (no deadtime wait).
    c.bed
        .stop_gracefully(c.pids[1], Duration::from_secs(5))
        .unwrap();
    c.wait(1, Duration::from_secs(2), "n2 left", |s| {
        peer(s, "n2")["state"] == "left"
    });
}

/// Sends `bytes` from the client namespace to `dst`.
fn send_from_client(bed: &Testbed, dst: SocketAddr, packets: Vec<Vec<u8>>) {
    let ns = bed.client_ns();
    std::thread::spawn(move || {
        enter_netns(&ns).unwrap();
        let s = UdpSocket::bind("0.0.0.0:0").unwrap();
        for p in packets {
            s.send_to(&p, dst).unwrap();
        }
    })
    .join()
    .unwrap();
}

#[test]
fn forged_replayed_and_garbage_packets_are_dropped_and_counted() {
    if !require_root("forged_replayed_and_garbage_packets_are_dropped_and_counted") {
        return;
    }
    let c = Cluster::start(2);
    for n in 1..=2 {
        c.wait(n, GENEROUS, "peer online", all_online);
    }
    let before = c.status(1).unwrap();
    let n2_inc = peer(&before, "n2")["incarnation"].as_u64().unwrap();
    let cluster = ClusterId::from_name("tb");
    let n2 = NodeId::from_name("n2");
    let hb = |cluster, sender, incarnation, seq| Packet {
        header: Header {
            cluster,
            sender,
            incarnation,
            seq,
        },
        body: Body::Heartbeat {
            link: 0,
            heard: vec![],
            report: vec![],
        },
    };
    let good_key = c.key;
    let packets: Vec<(&str, Vec<u8>)> = vec![
        ("malformed", b"hello, cluster".to_vec()),
        ("malformed", vec![0u8; 1]),
        (
            "bad_mac",
            wire::encode(&hb(cluster, n2, n2_inc, u64::MAX), &[7u8; 32]).unwrap(),
        ),
        // An old packet of n2's current incarnation, sent again.
        (
            "replay",
            wire::encode(&hb(cluster, n2, n2_inc, 1), &good_key).unwrap(),
        ),
        (
            "stale_incarnation",
            wire::encode(&hb(cluster, n2, n2_inc - 1, u64::MAX), &good_key).unwrap(),
        ),
        (
            "wrong_cluster",
            wire::encode(
                &hb(ClusterId::from_name("other"), n2, n2_inc, u64::MAX),
                &good_key,
            )
            .unwrap(),
        ),
        (
            "unknown_node",
            wire::encode(&hb(cluster, NodeId::from_name("n9"), 1, 1), &good_key).unwrap(),
        ),
    ];
    let dst = SocketAddr::new(c.bed.address(1, "lan").into(), 5405);
    send_from_client(
        &c.bed,
        dst,
        packets.iter().map(|(_, p)| p.clone()).collect(),
    );
    c.wait(1, GENEROUS, "every hostile packet counted", |s| {
        packets.iter().all(|(reason, _)| {
            let want = packets.iter().filter(|(r, _)| r == reason).count() as u64;
            s["dropped"][*reason].as_u64().unwrap() >= want
        })
    });
    let s = c.status(1).unwrap();
    println!("dropped: {}", s["dropped"]);
    // Nothing changed: n2 still online with the same incarnation; no n9.
    assert_eq!(peer(&s, "n2")["state"], "online");
    assert_eq!(peer(&s, "n2")["incarnation"].as_u64(), Some(n2_inc));
    assert_eq!(s["peers"].as_array().unwrap().len(), 1);
    assert!(
        !s["events"]
            .as_array()
            .unwrap()
            .iter()
            .any(|e| e["text"].as_str().unwrap().contains("back")),
        "{s:#}"
    );
    // Exactly the hostile packets: no genuine heartbeat was dropped.
    for (reason, _) in &packets {
        let want = packets.iter().filter(|(r, _)| r == reason).count() as u64;
        assert_eq!(
            s["dropped"][*reason].as_u64(),
            Some(want),
            "{reason}: {}",
            s["dropped"]
        );
    }
}

#[test]
fn two_nodes_and_witness_survive_kill_9_of_the_leader_and_rejoin() {
    if !require_root("two_nodes_and_witness_survive_kill_9_of_the_leader_and_rejoin") {
        return;
    }
    let mut c = Cluster::start_with_witness(2);
    for n in 1..=3 {
        c.wait(
            n,
            GENEROUS,
            "everyone online, a leader known, config epoch 1",
            |s| {
                all_online(s)
                    && s["quorum"]["quorate"] == true
                    && leader(s).is_some()
                    && s["agreement"]["config_epoch"] == 1
            },
        );
    }
    let s1 = c.status(1).unwrap();
    assert_eq!(s1["quorum"]["expected"], 3, "{s1:#}");
    let old = leader(&s1).unwrap();
    let (victim, survivor) = match old.as_str() {
        "n1" => (1, 2),
        "n2" => (2, 1),
        // The witness may lead too; then kill n1's agent.
        _ => (1, 2),
    };
    println!("leader {old}; killing n{victim}'s agent with SIGKILL");
    c.bed.kill9(c.pids[victim - 1]).unwrap();
    let victim_name = format!("n{victim}");
    c.wait(
        survivor,
        GENEROUS,
        "victim offline, quorum kept with the witness, a live leader",
        |s| {
            peer(s, &victim_name)["state"] == "offline"
                && s["quorum"]["quorate"] == true
                && s["quorum"]["votes"] == 2
                && leader(s).is_some_and(|l| l != victim_name)
        },
    );
    let w = c.witness.unwrap();
    let text = c.status_text(survivor).unwrap();
    println!("n{survivor} after the kill:\n{text}");
    assert!(text.contains("quorum: yes (2 of 3 votes"), "{text}");
    c.wait(w, GENEROUS, "the witness agrees", |s| {
        s["quorum"]["quorate"] == true && leader(s).is_some_and(|l| l != victim_name)
    });
    // Restart: it rejoins with a new incarnation and follows the leader.
    c.0.pids[victim - 1] = c.spawn_agent(victim).unwrap();
    for n in [victim, survivor, w] {
        c.wait(n, GENEROUS, "all online again with one leader", |s| {
            all_online(s) && s["quorum"]["quorate"] == true && leader(s).is_some()
        });
    }
    let a = c.status(victim).unwrap();
    let b = c.status(survivor).unwrap();
    assert_eq!(leader(&a), leader(&b), "{a:#}\n{b:#}");
    assert_eq!(a["agreement"]["config_epoch"], 1);
    let events = a["events"].as_array().unwrap();
    assert!(
        events
            .iter()
            .any(|e| e["text"].as_str().unwrap().starts_with("leader is")),
        "{a:#}"
    );
}
