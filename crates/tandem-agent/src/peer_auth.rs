//! The replication link's handshake, shared by the services between
//! agents that do not carry a volume (filesync, the event journal): hello,
//! challenge, proof. Both ends prove they hold the cluster key, bound to
//! the service's name (`filesync/GROUP/RESOURCE`, `events`), and derive
//! the connection's keys ([`tandem_core::volume::seal::Session`]).

use std::time::Duration;

use anyhow::Context as _;
use anyhow::{bail, Result};
use rand::RngCore;
use tandem_core::volume::link::{self, auth_mac, mac_ok, Msg, FRAME_HEADER, PREAUTH_MAX_FRAME};
use tandem_core::volume::seal::{End, Session};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// Limit on a connection's authentication (three small frames).
pub const PREAUTH_LIMIT: Duration = Duration::from_secs(3);

async fn write_msg(s: &mut TcpStream, m: &Msg) -> Result<()> {
    s.write_all(&m.to_bytes())
        .await
        .context("sending to the peer")
}

async fn read_preauth(s: &mut TcpStream) -> Result<Msg> {
    let mut h = [0u8; FRAME_HEADER];
    s.read_exact(&mut h)
        .await
        .context("reading from the peer")?;
    let len = u32::from_be_bytes([h[1], h[2], h[3], h[4]]);
    if len > PREAUTH_MAX_FRAME {
        bail!("a {len}-byte frame before authentication");
    }
    let mut body = vec![0u8; len as usize];
    s.read_exact(&mut body)
        .await
        .context("reading from the peer")?;
    Ok(link::decode(h[0], &body)?)
}

/// The dialer's handshake as node `me` for `name`.
pub async fn dial(s: &mut TcpStream, key: &[u8; 32], name: &str, me: &str) -> Result<Session> {
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    write_msg(
        s,
        &Msg::Hello {
            volume: name.to_string(),
            node: me.to_string(),
            nonce,
        },
    )
    .await?;
    let Msg::Challenge { nonce: theirs, mac } = read_preauth(s).await? else {
        bail!("the peer did not answer with a challenge");
    };
    if !mac_ok(key, "acceptor", name, &nonce, &theirs, &mac) {
        bail!("the peer failed authentication (the same cluster key?)");
    }
    let proof = auth_mac(key, "dialer", name, &nonce, &theirs);
    write_msg(s, &Msg::Proof { mac: proof }).await?;
    Ok(Session::derive(key, name, &nonce, &theirs, End::Dialer))
}

/// The acceptor's handshake: `admit(name, node)` says whether (and for
/// what) this node serves `name` to `node` (a filesync resource, the
/// event journal). Returns what
/// `admit` gave, the session and the peer's name.
pub async fn accept<T>(
    s: &mut TcpStream,
    key: &[u8; 32],
    admit: impl FnOnce(&str, &str) -> Option<T>,
) -> Result<(T, Session, String)> {
    let Msg::Hello {
        volume: name,
        node,
        nonce: theirs,
    } = read_preauth(s).await?
    else {
        bail!("the first frame was not a hello");
    };
    let Some(admitted) = admit(&name, &node) else {
        bail!("nothing here serves `{name}` to `{node}` at this address");
    };
    let mut nonce = [0u8; 16];
    rand::rngs::OsRng.fill_bytes(&mut nonce);
    let mac = auth_mac(key, "acceptor", &name, &theirs, &nonce);
    write_msg(s, &Msg::Challenge { nonce, mac }).await?;
    let Msg::Proof { mac } = read_preauth(s).await? else {
        bail!("no proof after the challenge");
    };
    if !mac_ok(key, "dialer", &name, &theirs, &nonce, &mac) {
        bail!("`{node}` failed authentication (another cluster key?)");
    }
    Ok((
        admitted,
        Session::derive(key, &name, &theirs, &nonce, End::Acceptor),
        node,
    ))
}
