//! Health checks run by the agent: the node-level `ping` monitor (a node
//! that reaches none of its targets over a link gives up the groups that
//! need that link) and group monitors (`tcp`, `http`, `exec`; a `process`
//! monitor is the resource's own liveness check).
//!
//! Each check is one bounded async call; the agent counts consecutive
//! failures against the monitor's threshold.

use std::net::{IpAddr, SocketAddr};
use std::path::Path;
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

use crate::child::run_bounded;

/// Most bytes of an HTTP answer read (the status line is all we need).
const MAX_HTTP_HEAD: usize = 1024;

/// One check.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Check {
    /// Any of the targets answers an ICMP echo (from `source`, if set).
    Ping {
        /// Addresses.
        targets: Vec<IpAddr>,
        /// Source address on the link, so the ping leaves over it.
        source: Option<IpAddr>,
    },
    /// A TCP connection opens.
    Tcp(SocketAddr),
    /// An HTTP GET answers 2xx or 3xx.
    Http(String),
    /// A command exits 0.
    Exec(Vec<String>),
}

/// Why a check failed.
#[derive(Debug, thiserror::Error)]
pub enum CheckError {
    /// No ping target answered.
    #[error("no answer from {}", targets.iter().map(ToString::to_string).collect::<Vec<_>>().join(", "))]
    NoAnswer {
        /// The targets.
        targets: Vec<IpAddr>,
    },
    /// A TCP connection (or an HTTP request) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was tried (`connecting to ADDRESS`, `GET URL`).
        what: String,
        /// The OS error.
        source: std::io::Error,
    },
    /// The check did not finish in time.
    #[error("{what}: timed out")]
    TimedOut {
        /// What was tried.
        what: String,
    },
    /// The URL is not one the HTTP check can get.
    #[error("{url}: {why}")]
    Url {
        /// The URL.
        url: String,
        /// What is wrong with it.
        why: &'static str,
    },
    /// The server's answer is not HTTP.
    #[error("GET {url}: not an HTTP answer")]
    NotHttp {
        /// The URL.
        url: String,
    },
    /// The server answered with a status outside 2xx and 3xx.
    #[error("GET {url}: status {status}")]
    Status {
        /// The URL.
        url: String,
        /// The HTTP status.
        status: u16,
    },
    /// An `exec` monitor with no program.
    #[error("empty command")]
    EmptyCommand,
    /// The command could not run.
    #[error(transparent)]
    Run(#[from] crate::child::RunError),
    /// The command failed.
    #[error("{program} exited {}{}", code.map_or_else(|| "by a signal".to_string(), |c| c.to_string()), if output.is_empty() { String::new() } else { format!(": {output}") })]
    Exited {
        /// The program.
        program: String,
        /// Its exit code (None: killed by a signal).
        code: Option<i32>,
        /// What it printed.
        output: String,
    },
}

/// Runs one check within `timeout`; Err says what failed.
pub async fn check(c: &Check, timeout: Duration) -> Result<(), CheckError> {
    match c {
        Check::Ping { targets, source } => {
            let mut tasks = Vec::new();
            for t in targets {
                tasks.push(ping(*t, *source, timeout));
            }
            let results = futures_join(tasks).await;
            if results.iter().any(|r| *r) {
                Ok(())
            } else {
                Err(CheckError::NoAnswer {
                    targets: targets.clone(),
                })
            }
        }
        Check::Tcp(addr) => {
            let what = || format!("connecting to {addr}");
            match tokio::time::timeout(timeout, tokio::net::TcpStream::connect(addr)).await {
                Ok(Ok(_)) => Ok(()),
                Ok(Err(source)) => Err(CheckError::Io {
                    what: what(),
                    source,
                }),
                Err(_) => Err(CheckError::TimedOut { what: what() }),
            }
        }
        Check::Http(url) => match tokio::time::timeout(timeout, http_get(url)).await {
            Ok(r) => r,
            Err(_) => Err(CheckError::TimedOut {
                what: format!("GET {url}"),
            }),
        },
        Check::Exec(cmd) => {
            let Some((program, args)) = cmd.split_first() else {
                return Err(CheckError::EmptyCommand);
            };
            let args: Vec<&str> = args.iter().map(String::as_str).collect();
            match run_bounded(Path::new(program), &args, None, None, timeout).await? {
                (Some(0), _) => Ok(()),
                (code, output) => Err(CheckError::Exited {
                    program: program.clone(),
                    code,
                    output,
                }),
            }
        }
    }
}

/// Runs futures one after another on this thread (they are each bounded;
/// pings to a handful of targets).
async fn futures_join<F: std::future::Future<Output = bool>>(fs: Vec<F>) -> Vec<bool> {
    let mut out = Vec::with_capacity(fs.len());
    for f in fs {
        let ok = f.await;
        out.push(ok);
        if ok {
            break;
        }
    }
    out
}

async fn ping(target: IpAddr, source: Option<IpAddr>, timeout: Duration) -> bool {
    let secs = timeout.as_secs_f64().max(0.2);
    let mut args = vec![
        "-n".to_string(),
        "-q".to_string(),
        "-c".to_string(),
        "1".to_string(),
        "-W".to_string(),
        format!("{secs:.1}"),
    ];
    if let Some(s) = source {
        args.push("-I".into());
        args.push(s.to_string());
    }
    args.push(target.to_string());
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    matches!(
        run_bounded(
            Path::new("ping"),
            &args,
            None,
            None,
            timeout + Duration::from_millis(500)
        )
        .await,
        Ok((Some(0), _))
    )
}

/// Splits `http://host[:port]/path` into (host:port, host, path).
pub fn parse_http_url(url: &str) -> Result<(String, String, String), CheckError> {
    let bad = |why| CheckError::Url {
        url: url.to_string(),
        why,
    };
    let rest = url
        .strip_prefix("http://")
        .ok_or_else(|| bad("only http:// URLs are supported"))?;
    let (hostport, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    if hostport.is_empty() {
        return Err(bad("no host"));
    }
    let host = hostport
        .rsplit_once(':')
        .filter(|(_, p)| p.parse::<u16>().is_ok())
        .map_or(hostport, |(h, _)| h);
    let addr = if host.len() == hostport.len() {
        format!("{hostport}:80")
    } else {
        hostport.to_string()
    };
    Ok((addr, host.to_string(), path.to_string()))
}

async fn http_get(url: &str) -> Result<(), CheckError> {
    let (addr, host, path) = parse_http_url(url)?;
    let io = |source| CheckError::Io {
        what: format!("GET {url}"),
        source,
    };
    let mut s = tokio::net::TcpStream::connect(&addr).await.map_err(io)?;
    let req = format!("GET {path} HTTP/1.0\r\nHost: {host}\r\nUser-Agent: tandem-monitor\r\nConnection: close\r\n\r\n");
    s.write_all(req.as_bytes()).await.map_err(io)?;
    let mut head = Vec::new();
    let mut buf = [0u8; 256];
    while head.len() < MAX_HTTP_HEAD && !head.contains(&b'\n') {
        match s.read(&mut buf).await {
            Ok(0) => break,
            Ok(n) => head.extend_from_slice(&buf[..n]),
            Err(e) => return Err(io(e)),
        }
    }
    let line = String::from_utf8_lossy(&head);
    let status: u16 = line
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| CheckError::NotHttp {
            url: url.to_string(),
        })?;
    if (200..400).contains(&status) {
        Ok(())
    } else {
        Err(CheckError::Status {
            url: url.to_string(),
            status,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    use crate::child::test_runtime as rt;

    #[test]
    fn urls_split_into_address_host_and_path() {
        assert_eq!(
            parse_http_url("http://127.0.0.1:8080/health").unwrap(),
            (
                "127.0.0.1:8080".into(),
                "127.0.0.1".into(),
                "/health".into()
            )
        );
        assert_eq!(
            parse_http_url("http://example.invalid").unwrap(),
            (
                "example.invalid:80".into(),
                "example.invalid".into(),
                "/".into()
            )
        );
        assert!(parse_http_url("https://x/").is_err());
    }

    #[test]
    fn tcp_and_http_checks_against_a_real_listener() {
        rt().block_on(async {
            let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
            let addr = l.local_addr().unwrap();
            tokio::spawn(async move {
                while let Ok((mut s, _)) = l.accept().await {
                    let mut b = [0u8; 512];
                    let _ = s.read(&mut b).await;
                    let _ = s.write_all(b"HTTP/1.0 503 Busy\r\n\r\n").await;
                }
            });
            let t = Duration::from_secs(2);
            assert!(check(&Check::Tcp(addr), t).await.is_ok());
            let e = check(&Check::Http(format!("http://{addr}/")), t)
                .await
                .unwrap_err();
            assert!(matches!(e, CheckError::Status { status: 503, .. }), "{e}");
            assert!(e.to_string().contains("503"), "{e}");
            let closed = {
                let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
                l.local_addr().unwrap()
            };
            assert!(check(&Check::Tcp(closed), t).await.is_err());
            assert!(check(&Check::Exec(vec!["true".into()]), t).await.is_ok());
            assert!(check(&Check::Exec(vec!["false".into()]), t)
                .await
                .unwrap_err()
                .to_string()
                .contains("exited 1"));
        });
    }

    #[test]
    fn ping_of_loopback_answers() {
        if std::process::Command::new("ping")
            .arg("-V")
            .output()
            .is_err()
        {
            println!("skipped: ping (iputils-ping) not installed");
            return;
        }
        let ok = rt().block_on(check(
            &Check::Ping {
                targets: vec!["127.0.0.1".parse().unwrap()],
                source: None,
            },
            Duration::from_secs(2),
        ));
        assert!(ok.is_ok(), "{ok:?}");
    }
}
