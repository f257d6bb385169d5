//! A small blocking NBD client (fixed newstyle, OPT_GO, simple replies)
//! for tests that must log every acknowledgement exactly (the torture
//! writer) or send malformed requests on purpose. Bulk interoperability
//! is tested with the real clients (nbdcopy, qemu-img, qemu-io, fio).

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use anyhow::{bail, Context, Result};

const NBD_MAGIC: u64 = 0x4e42_444d_4147_4943;
const OPT_MAGIC: u64 = 0x4948_4156_454f_5054;
const REP_MAGIC: u64 = 0x0003_e889_0455_65a9;
const REQUEST_MAGIC: u32 = 0x2560_9513;
const REPLY_MAGIC: u32 = 0x6744_6698;
const OPT_GO: u32 = 7;
const REP_ACK: u32 = 1;
const REP_INFO: u32 = 3;

/// A connected client in transmission phase.
pub struct NbdClient {
    s: TcpStream,
    /// Export size in bytes.
    pub size: u64,
    /// Transmission flags.
    pub flags: u16,
    cookie: u64,
}

/// What one request got back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// Success (with data for a read).
    Ok(Vec<u8>),
    /// The server's error number.
    Error(u32),
}

impl NbdClient {
    /// Connects and negotiates export `name` with OPT_GO.
    pub fn connect(addr: SocketAddr, name: &str, timeout: Duration) -> Result<NbdClient> {
        let mut s = TcpStream::connect_timeout(&addr, timeout)
            .with_context(|| format!("connecting to {addr}"))?;
        s.set_read_timeout(Some(timeout))?;
        s.set_write_timeout(Some(timeout))?;
        s.set_nodelay(true)?;
        let mut g = [0u8; 18];
        s.read_exact(&mut g).context("reading the greeting")?;
        if u64::from_be_bytes(g[..8].try_into()?) != NBD_MAGIC
            || u64::from_be_bytes(g[8..16].try_into()?) != OPT_MAGIC
        {
            bail!("not a newstyle NBD server");
        }
        s.write_all(&3u32.to_be_bytes())?;
        let mut data = (name.len() as u32).to_be_bytes().to_vec();
        data.extend_from_slice(name.as_bytes());
        data.extend_from_slice(&0u16.to_be_bytes());
        let mut opt = OPT_MAGIC.to_be_bytes().to_vec();
        opt.extend_from_slice(&OPT_GO.to_be_bytes());
        opt.extend_from_slice(&(data.len() as u32).to_be_bytes());
        opt.extend_from_slice(&data);
        s.write_all(&opt)?;
        let (mut size, mut flags) = (0, 0);
        loop {
            let mut h = [0u8; 20];
            s.read_exact(&mut h).context("reading an option reply")?;
            if u64::from_be_bytes(h[..8].try_into()?) != REP_MAGIC {
                bail!("bad option reply magic");
            }
            let kind = u32::from_be_bytes(h[12..16].try_into()?);
            let len = u32::from_be_bytes(h[16..20].try_into()?) as usize;
            if len > 1 << 16 {
                bail!("option reply of {len} bytes");
            }
            let mut body = vec![0u8; len];
            s.read_exact(&mut body)?;
            match kind {
                REP_ACK => break,
                REP_INFO if body.len() >= 12 && body[..2] == [0, 0] => {
                    size = u64::from_be_bytes(body[2..10].try_into()?);
                    flags = u16::from_be_bytes(body[10..12].try_into()?);
                }
                REP_INFO => {}
                e if e & 0x8000_0000 != 0 => bail!(
                    "server refused export `{name}` ({e:#x}): {}",
                    String::from_utf8_lossy(&body)
                ),
                _ => {}
            }
        }
        Ok(NbdClient {
            s,
            size,
            flags,
            cookie: 0,
        })
    }

    /// Sends raw bytes (for malformed-request tests).
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<()> {
        self.s.write_all(bytes).context("sending")
    }

    /// A request header.
    pub fn header(kind: u16, flags: u16, cookie: u64, offset: u64, len: u32) -> Vec<u8> {
        let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&kind.to_be_bytes());
        b.extend_from_slice(&cookie.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b
    }

    /// Reads one simple reply with `data_len` bytes of data on success.
    pub fn read_reply(&mut self, data_len: usize) -> Result<(u64, Reply)> {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).context("reading a reply")?;
        if u32::from_be_bytes(h[..4].try_into()?) != REPLY_MAGIC {
            bail!("bad reply magic");
        }
        let err = u32::from_be_bytes(h[4..8].try_into()?);
        let cookie = u64::from_be_bytes(h[8..16].try_into()?);
        if err != 0 {
            return Ok((cookie, Reply::Error(err)));
        }
        let mut data = vec![0u8; data_len];
        self.s.read_exact(&mut data)?;
        Ok((cookie, Reply::Ok(data)))
    }

    fn request(
        &mut self,
        kind: u16,
        flags: u16,
        offset: u64,
        payload: &[u8],
        len: u32,
        data_len: usize,
    ) -> Result<Reply> {
        self.cookie += 1;
        let mut b = Self::header(kind, flags, self.cookie, offset, len);
        b.extend_from_slice(payload);
        self.s.write_all(&b).context("sending a request")?;
        let (cookie, r) = self.read_reply(data_len)?;
        if cookie != self.cookie {
            bail!("reply for cookie {cookie}, expected {}", self.cookie);
        }
        Ok(r)
    }

    /// Writes `data` at `offset` (FUA if asked) and waits for the reply.
    pub fn write(&mut self, offset: u64, data: &[u8], fua: bool) -> Result<Reply> {
        self.request(1, u16::from(fua), offset, data, data.len() as u32, 0)
    }

    /// Reads `len` bytes at `offset`.
    pub fn read(&mut self, offset: u64, len: u32) -> Result<Reply> {
        self.request(0, 0, offset, &[], len, len as usize)
    }

    /// FLUSH.
    pub fn flush(&mut self) -> Result<Reply> {
        self.request(3, 0, 0, &[], 0, 0)
    }

    /// Sends DISC.
    pub fn disconnect(mut self) {
        let b = Self::header(2, 0, 0, 0, 0);
        let _ = self.s.write_all(&b);
    }

    /// Whether the server closed the connection (reads EOF within `wait`).
    pub fn closed_within(&mut self, wait: Duration) -> bool {
        let _ = self.s.set_read_timeout(Some(wait));
        let mut b = [0u8; 1];
        match self.s.read(&mut b) {
            Ok(0) => true,
            Err(e) => e.kind() == std::io::ErrorKind::ConnectionReset,
            Ok(_) => false,
        }
    }
}
