//! The tiny service the testbed probes: it answers every UDP probe
//! `tprobe <seq>` with `<name> <seq>`, and every TCP connection with
//! `<name>\n`, on all local addresses — so it answers on a floating IP
//! exactly while its node holds it.

use std::io::Write;
use std::net::{TcpListener, UdpSocket};

use anyhow::{Context, Result};

/// Serves until the process is killed; only returns on a socket error.
pub fn serve(name: &str, port: u16) -> Result<()> {
    if name.is_empty() || name.contains(char::is_whitespace) || name.len() > 64 {
        anyhow::bail!("responder name must be 1 to 64 characters without spaces");
    }
    let udp =
        UdpSocket::bind(("0.0.0.0", port)).with_context(|| format!("binding UDP port {port}"))?;
    let tcp =
        TcpListener::bind(("0.0.0.0", port)).with_context(|| format!("binding TCP port {port}"))?;
    let tcp_name = format!("{name}\n");
    std::thread::Builder::new()
        .name("tcp-responder".into())
        .spawn(move || {
            for mut stream in tcp.incoming().flatten() {
                let _ = stream.write_all(tcp_name.as_bytes());
            }
        })?;
    let mut buf = [0u8; 128];
    loop {
        let (n, peer) = udp.recv_from(&mut buf).context("receiving a probe")?;
        let text = String::from_utf8_lossy(&buf[..n]);
        if let Some(seq) = text.strip_prefix("tprobe ") {
            let _ = udp.send_to(format!("{name} {}", seq.trim()).as_bytes(), peer);
        }
    }
}
