//! A user-space wire between two interfaces that adds delay, jitter and loss:
//! the testbed's stand-in for `tc netem`, which many kernels (this project's
//! CI machine among them) are built without.
//!
//! Two threads per direction: one receives every frame on one interface
//! (AF_PACKET, promiscuous, its own transmissions skipped), drops it with the
//! configured probability or queues it with a due time; the other sends due
//! frames out of the other interface. The queue is bounded; overflow drops.
//! Everything runs inside the namespace given at start.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use rand::Rng;

use crate::sys::enter_netns;

/// Frames waiting in one direction before new ones are dropped.
const QUEUE_LIMIT: usize = 10_000;
/// Largest frame forwarded (offloads are off, so frames stay under the MTU).
const MAX_FRAME: usize = 9_216;
/// How often blocked threads look at the stop flag.
const POLL: Duration = Duration::from_millis(50);

/// Impairment applied by a wire, in both directions.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Impairment {
    /// Added one-way delay.
    pub delay_ms: u32,
    /// Uniform random variation of the delay, +/-.
    pub jitter_ms: u32,
    /// Loss in percent (0 to 100).
    pub loss_pct: f32,
}

/// Counters of a running wire.
#[derive(Debug, Default)]
pub struct WireStats {
    /// Frames forwarded.
    pub forwarded: AtomicU64,
    /// Frames dropped by the loss setting.
    pub lost: AtomicU64,
    /// Frames dropped because the queue was full.
    pub overflowed: AtomicU64,
}

/// A running wire; stops when dropped.
#[derive(Debug)]
pub struct Wire {
    stop: Arc<AtomicBool>,
    threads: Vec<JoinHandle<()>>,
    /// Counters, shared with the threads.
    pub stats: Arc<WireStats>,
}

/// A frame waiting to be sent: due time, arrival order (ties), bytes.
type Pending = Reverse<(Instant, u64, Vec<u8>)>;

struct Queue {
    heap: Mutex<BinaryHeap<Pending>>,
    ready: Condvar,
}

fn packet_socket(ifname: &str) -> io::Result<(OwnedFd, i32)> {
    let name = std::ffi::CString::new(ifname)
        .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "interface name"))?;
    // SAFETY: plain syscalls; every returned fd is owned right away.
    unsafe {
        let ifindex = libc::if_nametoindex(name.as_ptr()) as i32;
        if ifindex == 0 {
            return Err(io::Error::last_os_error());
        }
        let proto = (libc::ETH_P_ALL as u16).to_be() as i32;
        let fd = libc::socket(libc::AF_PACKET, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto);
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        let fd = OwnedFd::from_raw_fd(fd);
        let mut sll: libc::sockaddr_ll = std::mem::zeroed();
        sll.sll_family = libc::AF_PACKET as u16;
        sll.sll_protocol = proto as u16;
        sll.sll_ifindex = ifindex;
        if libc::bind(
            fd.as_raw_fd(),
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as u32,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let mut mreq: libc::packet_mreq = std::mem::zeroed();
        mreq.mr_ifindex = ifindex;
        mreq.mr_type = libc::PACKET_MR_PROMISC as u16;
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_PACKET,
            libc::PACKET_ADD_MEMBERSHIP,
            (&mreq as *const libc::packet_mreq).cast(),
            std::mem::size_of::<libc::packet_mreq>() as u32,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        let tv = libc::timeval {
            tv_sec: 0,
            tv_usec: POLL.as_micros() as libc::suseconds_t,
        };
        if libc::setsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as u32,
        ) != 0
        {
            return Err(io::Error::last_os_error());
        }
        Ok((fd, ifindex))
    }
}

impl Wire {
    /// Starts forwarding between interfaces `a` and `b` of namespace `ns`.
    /// Both must have offloads disabled (see [`crate::bed`]).
    pub fn start(ns: &str, a: &str, b: &str, imp: Impairment) -> Result<Wire> {
        if !(0.0..=100.0).contains(&imp.loss_pct) {
            bail!("loss {}% is not between 0 and 100", imp.loss_pct);
        }
        let (tx, rx) = std::sync::mpsc::channel();
        let (ns_owned, a_owned, b_owned) = (ns.to_string(), a.to_string(), b.to_string());
        // Sockets are opened on a thread inside the namespace; they stay there.
        std::thread::spawn(move || {
            let r = enter_netns(&ns_owned)
                .map_err(anyhow::Error::from)
                .and_then(|()| Ok((packet_socket(&a_owned)?, packet_socket(&b_owned)?)));
            let _ = tx.send(r);
        });
        let ((fa, _), (fb, _)) = rx
            .recv()
            .context("wire setup thread died")?
            .with_context(|| format!("opening packet sockets on {a} and {b} in {ns}"))?;
        let (fa, fb) = (Arc::new(fa), Arc::new(fb));
        let stop = Arc::new(AtomicBool::new(false));
        let stats = Arc::new(WireStats::default());
        let mut threads = Vec::new();
        for (from, to) in [(fa.clone(), fb.clone()), (fb, fa)] {
            let q = Arc::new(Queue {
                heap: Mutex::new(BinaryHeap::new()),
                ready: Condvar::new(),
            });
            let (q2, stop2, stats2) = (q.clone(), stop.clone(), stats.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("wire-rx".into())
                    .spawn(move || receive(&from, &q2, imp, &stop2, &stats2))?,
            );
            let (stop3, stats3) = (stop.clone(), stats.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("wire-tx".into())
                    .spawn(move || transmit(&to, &q, &stop3, &stats3))?,
            );
        }
        Ok(Wire {
            stop,
            threads,
            stats,
        })
    }
}

impl Drop for Wire {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for t in self.threads.drain(..) {
            let _ = t.join();
        }
    }
}

fn receive(fd: &OwnedFd, q: &Queue, imp: Impairment, stop: &AtomicBool, stats: &WireStats) {
    let mut rng = rand::thread_rng();
    let mut buf = vec![0u8; MAX_FRAME];
    let mut seq = 0u64;
    while !stop.load(Ordering::Relaxed) {
        // SAFETY: an all-zero sockaddr_ll is a valid value of this C struct.
        let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
        let mut len = std::mem::size_of::<libc::sockaddr_ll>() as u32;
        // SAFETY: buf, sll and len outlive the call, and the lengths passed
        // are theirs.
        let n = unsafe {
            libc::recvfrom(
                fd.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                0,
                (&mut sll as *mut libc::sockaddr_ll).cast(),
                &mut len,
            )
        };
        if n <= 0 {
            continue; // timeout (stop check) or transient error
        }
        if sll.sll_pkttype == libc::PACKET_OUTGOING {
            continue; // our own transmission on this interface
        }
        if imp.loss_pct > 0.0 && rng.gen::<f32>() * 100.0 < imp.loss_pct {
            stats.lost.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        let jitter = if imp.jitter_ms > 0 {
            rng.gen_range(-(imp.jitter_ms as i64)..=imp.jitter_ms as i64)
        } else {
            0
        };
        let delay_ms = (imp.delay_ms as i64 + jitter).max(0) as u64;
        let due = Instant::now() + Duration::from_millis(delay_ms);
        let mut heap = q
            .heap
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if heap.len() >= QUEUE_LIMIT {
            stats.overflowed.fetch_add(1, Ordering::Relaxed);
            continue;
        }
        heap.push(Reverse((due, seq, buf[..n as usize].to_vec())));
        seq += 1;
        q.ready.notify_one();
    }
}

fn transmit(fd: &OwnedFd, q: &Queue, stop: &AtomicBool, stats: &WireStats) {
    let mut heap = q
        .heap
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    while !stop.load(Ordering::Relaxed) {
        let now = Instant::now();
        let wait = match heap.peek() {
            Some(Reverse((due, _, _))) if *due <= now => {
                if let Some(Reverse((_, _, frame))) = heap.pop() {
                    // SAFETY: frame outlives the call; the socket is bound to its interface.
                    let sent = unsafe {
                        libc::send(fd.as_raw_fd(), frame.as_ptr().cast(), frame.len(), 0)
                    };
                    if sent > 0 {
                        stats.forwarded.fetch_add(1, Ordering::Relaxed);
                    }
                }
                continue;
            }
            Some(Reverse((due, _, _))) => (*due - now).min(POLL),
            None => POLL,
        };
        heap = q
            .ready
            .wait_timeout(heap, wait)
            .map(|(g, _)| g)
            .unwrap_or_else(|e| e.into_inner().0);
    }
}
