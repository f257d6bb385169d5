//! Just enough rtnetlink (NETLINK_ROUTE) for floating addresses: list
//! links (index, carrier, MAC) and addresses, add and delete an address.
//!
//! Synchronous and small on purpose: each call is one request on a fresh
//! socket in the caller's network namespace, answered in well under a
//! millisecond, bounded by a receive timeout. sysfs is not used because a
//! process that entered a namespace with `setns` still sees the sysfs of
//! the namespace that mounted it.

use std::io;
use std::net::IpAddr;
use std::time::Duration;

use thiserror::Error;

/// Receive timeout of one netlink request.
const RECV_TIMEOUT: Duration = Duration::from_secs(2);
/// Receive buffer (a dump of a few hundred links or addresses fits).
const RECV_BUF: usize = 64 * 1024;
/// Most datagrams read for one dump before giving up.
const MAX_DUMP_PARTS: usize = 1024;

const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const RTM_NEWLINK: u16 = 16;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const NLM_F_REQUEST: u16 = 1;
const NLM_F_ACK: u16 = 4;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const NLM_F_DUMP: u16 = 0x300;
const IFLA_ADDRESS: u16 = 1;
const IFLA_IFNAME: u16 = 3;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
const IFA_FLAGS: u16 = 8;
const IFA_F_NODAD: u32 = 0x02;
const IFF_UP: u32 = 0x1;
const IFF_LOWER_UP: u32 = 0x10000;

/// A netlink failure.
#[derive(Debug, Error)]
pub enum NetlinkError {
    /// The socket could not be opened, or send/receive failed.
    #[error("netlink socket: {0}")]
    Io(#[from] io::Error),
    /// The kernel refused the request.
    #[error("the kernel refused {what}: {err}")]
    Refused {
        /// What was asked.
        what: String,
        /// The kernel's error.
        err: io::Error,
    },
    /// An answer that does not parse.
    #[error("malformed netlink answer")]
    Malformed,
}

/// One network interface.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Link {
    /// Interface index.
    pub index: u32,
    /// Name.
    pub name: String,
    /// Administratively up and with carrier.
    pub carrier: bool,
    /// Hardware address (Ethernet: 6 bytes).
    pub mac: Vec<u8>,
}

/// One address on an interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Addr {
    /// Interface index.
    pub index: u32,
    /// The address.
    pub ip: IpAddr,
    /// Prefix length.
    pub prefix: u8,
}

struct Socket(libc::c_int);

impl Drop for Socket {
    fn drop(&mut self) {
        // SAFETY: the descriptor is owned by this value and closed once.
        unsafe {
            libc::close(self.0);
        }
    }
}

fn open() -> Result<Socket, NetlinkError> {
    // SAFETY: plain socket(2) call; the result is checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::NETLINK_ROUTE,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error().into());
    }
    let s = Socket(fd);
    let tv = libc::timeval {
        tv_sec: RECV_TIMEOUT.as_secs() as libc::time_t,
        tv_usec: 0,
    };
    // SAFETY: tv is a valid timeval of the size passed.
    let r = unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_RCVTIMEO,
            (&tv as *const libc::timeval).cast(),
            std::mem::size_of::<libc::timeval>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(s)
}

fn push_attr(buf: &mut Vec<u8>, kind: u16, data: &[u8]) {
    let len = 4 + data.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(data);
    while buf.len() % 4 != 0 {
        buf.push(0);
    }
}

fn message(kind: u16, flags: u16, payload: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(16 + payload.len());
    m.extend_from_slice(&((16 + payload.len()) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel fills it
    m.extend_from_slice(payload);
    m
}

fn send(s: &Socket, msg: &[u8]) -> Result<(), NetlinkError> {
    // SAFETY: zeroed sockaddr_nl is a valid "to the kernel" address.
    let mut addr: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
    addr.nl_family = libc::AF_NETLINK as libc::sa_family_t;
    // SAFETY: msg and addr are valid for the lengths passed.
    let r = unsafe {
        libc::sendto(
            s.0,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&addr as *const libc::sockaddr_nl).cast(),
            std::mem::size_of::<libc::sockaddr_nl>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(())
}

fn recv(s: &Socket, buf: &mut [u8]) -> Result<usize, NetlinkError> {
    // SAFETY: buf is valid for writes of its length.
    let n = unsafe { libc::recv(s.0, buf.as_mut_ptr().cast(), buf.len(), 0) };
    if n < 0 {
        return Err(io::Error::last_os_error().into());
    }
    Ok(n as usize)
}

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes([
        *b.get(at)?,
        *b.get(at + 1)?,
        *b.get(at + 2)?,
        *b.get(at + 3)?,
    ]))
}

/// Splits a datagram into (type, payload) messages.
fn messages(buf: &[u8]) -> Result<Vec<(u16, &[u8])>, NetlinkError> {
    let mut out = Vec::new();
    let mut at = 0;
    while at + 16 <= buf.len() {
        let len = u32_at(buf, at).ok_or(NetlinkError::Malformed)? as usize;
        let kind = u16_at(buf, at + 4).ok_or(NetlinkError::Malformed)?;
        if len < 16 || at + len > buf.len() {
            return Err(NetlinkError::Malformed);
        }
        out.push((kind, &buf[at + 16..at + len]));
        at += (len + 3) & !3;
    }
    Ok(out)
}

/// Attributes after a fixed header of `skip` bytes.
fn attrs(payload: &[u8], skip: usize) -> Vec<(u16, &[u8])> {
    let mut out = Vec::new();
    let mut at = skip;
    while at + 4 <= payload.len() {
        let (Some(len), Some(kind)) = (u16_at(payload, at), u16_at(payload, at + 2)) else {
            break;
        };
        let len = len as usize;
        if len < 4 || at + len > payload.len() {
            break;
        }
        out.push((kind & 0x3fff, &payload[at + 4..at + len]));
        at += (len + 3) & !3;
    }
    out
}

fn error_code(payload: &[u8]) -> Result<i32, NetlinkError> {
    u32_at(payload, 0)
        .map(|e| e as i32)
        .ok_or(NetlinkError::Malformed)
}

/// Sends a dump request and collects every message of type `want`.
fn dump(kind: u16, header: &[u8], want: u16) -> Result<Vec<Vec<u8>>, NetlinkError> {
    let s = open()?;
    send(&s, &message(kind, NLM_F_REQUEST | NLM_F_DUMP, header))?;
    let mut buf = vec![0u8; RECV_BUF];
    let mut out = Vec::new();
    for _ in 0..MAX_DUMP_PARTS {
        let n = recv(&s, &mut buf)?;
        for (t, payload) in messages(&buf[..n])? {
            match t {
                NLMSG_DONE => return Ok(out),
                NLMSG_ERROR => {
                    let e = error_code(payload)?;
                    if e != 0 {
                        return Err(NetlinkError::Refused {
                            what: "a dump".into(),
                            err: io::Error::from_raw_os_error(-e),
                        });
                    }
                }
                t if t == want => out.push(payload.to_vec()),
                _ => {}
            }
        }
    }
    Err(NetlinkError::Malformed)
}

/// Every interface in this network namespace.
pub fn links() -> Result<Vec<Link>, NetlinkError> {
    let header = [0u8; 16]; // ifinfomsg, AF_UNSPEC
    let mut out = Vec::new();
    for p in dump(RTM_GETLINK, &header, RTM_NEWLINK)? {
        let index = u32_at(&p, 4).ok_or(NetlinkError::Malformed)?;
        let flags = u32_at(&p, 8).ok_or(NetlinkError::Malformed)?;
        let mut name = String::new();
        let mut mac = Vec::new();
        for (k, v) in attrs(&p, 16) {
            match k {
                IFLA_IFNAME => {
                    name = String::from_utf8_lossy(v.split(|b| *b == 0).next().unwrap_or(&[]))
                        .into_owned();
                }
                IFLA_ADDRESS => mac = v.to_vec(),
                _ => {}
            }
        }
        out.push(Link {
            index,
            name,
            carrier: flags & IFF_UP != 0 && flags & IFF_LOWER_UP != 0,
            mac,
        });
    }
    Ok(out)
}

/// Every address in this network namespace.
pub fn addresses() -> Result<Vec<Addr>, NetlinkError> {
    let header = [0u8; 8]; // ifaddrmsg, AF_UNSPEC
    let mut out = Vec::new();
    for p in dump(RTM_GETADDR, &header, RTM_NEWADDR)? {
        let (Some(&family), Some(&prefix)) = (p.first(), p.get(1)) else {
            return Err(NetlinkError::Malformed);
        };
        let index = u32_at(&p, 4).ok_or(NetlinkError::Malformed)?;
        let mut local = None;
        let mut address = None;
        for (k, v) in attrs(&p, 8) {
            let ip = match (family as i32, v.len()) {
                (libc::AF_INET, 4) => Some(IpAddr::from([v[0], v[1], v[2], v[3]])),
                (libc::AF_INET6, 16) => {
                    let mut a = [0u8; 16];
                    a.copy_from_slice(v);
                    Some(IpAddr::from(a))
                }
                _ => None,
            };
            match k {
                IFA_LOCAL => local = ip,
                IFA_ADDRESS => address = ip,
                _ => {}
            }
        }
        if let Some(ip) = local.or(address) {
            out.push(Addr { index, ip, prefix });
        }
    }
    Ok(out)
}

fn addr_request(kind: u16, flags: u16, ip: IpAddr, prefix: u8, index: u32) -> Vec<u8> {
    let (family, bytes): (u8, Vec<u8>) = match ip {
        IpAddr::V4(a) => (libc::AF_INET as u8, a.octets().to_vec()),
        IpAddr::V6(a) => (libc::AF_INET6 as u8, a.octets().to_vec()),
    };
    let mut p = vec![family, prefix, 0, 0];
    p.extend_from_slice(&index.to_ne_bytes());
    push_attr(&mut p, IFA_LOCAL, &bytes);
    push_attr(&mut p, IFA_ADDRESS, &bytes);
    if ip.is_ipv6() {
        // A floating address must answer at once: no duplicate detection
        // (the cluster guarantees it is nowhere else).
        push_attr(&mut p, IFA_FLAGS, &IFA_F_NODAD.to_ne_bytes());
    }
    message(kind, flags, &p)
}

fn request_ack(msg: &[u8], what: &str, ok_errnos: &[i32]) -> Result<bool, NetlinkError> {
    let s = open()?;
    send(&s, msg)?;
    let mut buf = vec![0u8; 8192];
    let n = recv(&s, &mut buf)?;
    for (t, payload) in messages(&buf[..n])? {
        if t == NLMSG_ERROR {
            let e = -error_code(payload)?;
            if e == 0 {
                return Ok(true);
            }
            if ok_errnos.contains(&e) {
                return Ok(false);
            }
            return Err(NetlinkError::Refused {
                what: what.to_string(),
                err: io::Error::from_raw_os_error(e),
            });
        }
    }
    Err(NetlinkError::Malformed)
}

/// Adds `ip/prefix` to interface `index`. Ok(false) when it was there.
pub fn add_address(ip: IpAddr, prefix: u8, index: u32) -> Result<bool, NetlinkError> {
    let msg = addr_request(
        RTM_NEWADDR,
        NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
        ip,
        prefix,
        index,
    );
    request_ack(&msg, &format!("adding {ip}/{prefix}"), &[libc::EEXIST])
}

/// Removes `ip/prefix` from interface `index`. Ok(false) when it was not
/// there.
pub fn delete_address(ip: IpAddr, prefix: u8, index: u32) -> Result<bool, NetlinkError> {
    let msg = addr_request(RTM_DELADDR, NLM_F_REQUEST | NLM_F_ACK, ip, prefix, index);
    request_ack(
        &msg,
        &format!("removing {ip}/{prefix}"),
        &[libc::EADDRNOTAVAIL, libc::ENOENT, libc::ENODEV],
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loopback_is_listed_with_its_address() {
        let lo = links()
            .unwrap()
            .into_iter()
            .find(|l| l.name == "lo")
            .expect("every namespace has lo");
        assert_eq!(lo.name, "lo");
        let addrs = addresses().unwrap();
        assert!(addrs
            .iter()
            .any(|a| a.index == lo.index && a.ip == IpAddr::from([127, 0, 0, 1])));
    }

    #[test]
    fn truncated_messages_are_malformed_not_a_panic() {
        assert!(messages(&[1, 2, 3]).unwrap().is_empty());
        let mut m = message(RTM_NEWLINK, 0, &[0; 4]);
        m[0] = 200; // length past the end
        assert!(matches!(messages(&m), Err(NetlinkError::Malformed)));
        assert!(attrs(&[8, 0, 1, 0, 1, 2], 0).is_empty());
    }
}
