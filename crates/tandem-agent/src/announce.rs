//! Telling the segment that a floating address moved: gratuitous ARP for
//! IPv4 (an ARP request for the address from the address, broadcast from
//! an AF_PACKET socket) and an unsolicited neighbour advertisement with the
//! override flag for IPv6 (to all-nodes, hop limit 255).

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

const ETH_P_ARP: u16 = 0x0806;

struct Fd(libc::c_int);

impl Drop for Fd {
    fn drop(&mut self) {
        // SAFETY: owned descriptor, closed once.
        unsafe {
            libc::close(self.0);
        }
    }
}

/// The 28-byte ARP request announcing `ip` at `mac`.
pub fn garp_frame(mac: [u8; 6], ip: Ipv4Addr) -> [u8; 28] {
    let mut f = [0u8; 28];
    f[0..2].copy_from_slice(&1u16.to_be_bytes()); // Ethernet
    f[2..4].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    f[4] = 6;
    f[5] = 4;
    f[6..8].copy_from_slice(&1u16.to_be_bytes()); // request
    f[8..14].copy_from_slice(&mac);
    f[14..18].copy_from_slice(&ip.octets());
    // Target hardware address zero, target protocol address = ours.
    f[24..28].copy_from_slice(&ip.octets());
    f
}

/// Sends one gratuitous ARP for `ip` out of interface `index` with `mac`.
pub fn send_garp(index: u32, mac: [u8; 6], ip: Ipv4Addr) -> io::Result<()> {
    // SAFETY: socket(2); result checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_PACKET,
            libc::SOCK_DGRAM | libc::SOCK_CLOEXEC,
            i32::from(ETH_P_ARP.to_be()),
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = Fd(fd);
    // SAFETY: zeroed sockaddr_ll is valid; fields set below.
    let mut sll: libc::sockaddr_ll = unsafe { std::mem::zeroed() };
    sll.sll_family = libc::AF_PACKET as u16;
    sll.sll_protocol = ETH_P_ARP.to_be();
    sll.sll_ifindex = index as i32;
    sll.sll_halen = 6;
    sll.sll_addr[..6].copy_from_slice(&[0xff; 6]);
    let frame = garp_frame(mac, ip);
    // SAFETY: frame and sll are valid for the lengths passed.
    let r = unsafe {
        libc::sendto(
            fd.0,
            frame.as_ptr().cast(),
            frame.len(),
            0,
            (&sll as *const libc::sockaddr_ll).cast(),
            std::mem::size_of::<libc::sockaddr_ll>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// The ICMPv6 neighbour advertisement announcing `ip` at `mac` (the kernel
/// fills in the checksum on raw ICMPv6 sockets).
pub fn na_message(mac: [u8; 6], ip: Ipv6Addr) -> [u8; 32] {
    let mut m = [0u8; 32];
    m[0] = 136; // neighbour advertisement
    m[4] = 0x20; // override
    m[8..24].copy_from_slice(&ip.octets());
    m[24] = 2; // option: target link-layer address
    m[25] = 1; // 8 bytes
    m[26..32].copy_from_slice(&mac);
    m
}

/// Sends one unsolicited neighbour advertisement for `ip` out of
/// interface `index`.
pub fn send_na(index: u32, mac: [u8; 6], ip: Ipv6Addr) -> io::Result<()> {
    // SAFETY: socket(2); result checked.
    let fd = unsafe {
        libc::socket(
            libc::AF_INET6,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            libc::IPPROTO_ICMPV6,
        )
    };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    let fd = Fd(fd);
    let hops: libc::c_int = 255;
    let ifindex = index as libc::c_int;
    for (opt, val) in [
        (libc::IPV6_MULTICAST_HOPS, &hops),
        (libc::IPV6_MULTICAST_IF, &ifindex),
    ] {
        // SAFETY: val points to a c_int of the size passed.
        let r = unsafe {
            libc::setsockopt(
                fd.0,
                libc::IPPROTO_IPV6,
                opt,
                (val as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if r < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    // SAFETY: zeroed sockaddr_in6 is valid; fields set below.
    let mut src: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    src.sin6_family = libc::AF_INET6 as u16;
    src.sin6_addr.s6_addr = ip.octets();
    // SAFETY: src valid for its size. Binding to the address makes it the
    // source; it was added without duplicate detection, so it is usable.
    let r = unsafe {
        libc::bind(
            fd.0,
            (&src as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: as above.
    let mut dst: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
    dst.sin6_family = libc::AF_INET6 as u16;
    dst.sin6_addr.s6_addr = Ipv6Addr::new(0xff02, 0, 0, 0, 0, 0, 0, 1).octets();
    dst.sin6_scope_id = index;
    let msg = na_message(mac, ip);
    // SAFETY: msg and dst valid for the lengths passed.
    let r = unsafe {
        libc::sendto(
            fd.0,
            msg.as_ptr().cast(),
            msg.len(),
            0,
            (&dst as *const libc::sockaddr_in6).cast(),
            std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// Announces `ip` on interface `index` (ARP or NA by family).
pub fn announce(index: u32, mac: &[u8], ip: IpAddr) -> io::Result<()> {
    let mac: [u8; 6] = mac.try_into().map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            "the interface has no Ethernet address; it cannot announce an address",
        )
    })?;
    match ip {
        IpAddr::V4(a) => send_garp(index, mac, a),
        IpAddr::V6(a) => send_na(index, mac, a),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn garp_frame_is_a_request_from_and_for_the_address() {
        let f = garp_frame([2, 0, 0, 0, 0, 1], Ipv4Addr::new(10, 0, 0, 100));
        assert_eq!(&f[6..8], &[0, 1]);
        assert_eq!(&f[14..18], &[10, 0, 0, 100]);
        assert_eq!(&f[24..28], &[10, 0, 0, 100]);
        assert_eq!(&f[18..24], &[0; 6]);
    }

    #[test]
    fn na_sets_override_and_target() {
        let ip: Ipv6Addr = "fd00::100".parse().unwrap();
        let m = na_message([2, 0, 0, 0, 0, 1], ip);
        assert_eq!(m[0], 136);
        assert_eq!(m[4] & 0x20, 0x20);
        assert_eq!(&m[8..24], &ip.octets());
        assert_eq!(&m[26..32], &[2, 0, 0, 0, 0, 1]);
    }
}
