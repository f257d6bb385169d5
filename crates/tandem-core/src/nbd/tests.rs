use super::*;
use proptest::prelude::*;

fn export() -> ExportInfo {
    ExportInfo {
        name: "data".into(),
        description: "test".into(),
        size: 1 << 20,
        read_only: false,
        refusal: None,
    }
}

fn option(opt: u32, data: &[u8]) -> (Vec<u8>, Vec<u8>) {
    let mut h = OPT_MAGIC.to_be_bytes().to_vec();
    h.extend_from_slice(&opt.to_be_bytes());
    h.extend_from_slice(&(data.len() as u32).to_be_bytes());
    (h, data.to_vec())
}

fn info_data(name: &str, reqs: &[u16]) -> Vec<u8> {
    let mut d = (name.len() as u32).to_be_bytes().to_vec();
    d.extend_from_slice(name.as_bytes());
    d.extend_from_slice(&(reqs.len() as u16).to_be_bytes());
    for r in reqs {
        d.extend_from_slice(&r.to_be_bytes());
    }
    d
}

/// Splits a run of option replies into (option, type, data).
fn replies(mut b: &[u8]) -> Vec<(u32, u32, Vec<u8>)> {
    let mut out = vec![];
    while !b.is_empty() {
        assert_eq!(be_u64(b, 0), REP_MAGIC);
        let len = be_u32(b, 16) as usize;
        out.push((be_u32(b, 8), be_u32(b, 12), b[20..20 + len].to_vec()));
        b = &b[20 + len..];
    }
    out
}

fn started() -> Handshake {
    let mut h = Handshake::new(export());
    assert_eq!(h.on_bytes(&3u32.to_be_bytes()), Ok(Next::Read(16)));
    h
}

#[test]
fn greeting_is_fixed_newstyle_without_zeroes() {
    let g = greeting();
    assert_eq!(&g[..8], b"NBDMAGIC");
    assert_eq!(&g[8..16], b"IHAVEOPT");
    assert_eq!(be_u16(&g, 16), 3);
}

#[test]
fn old_style_clients_are_refused() {
    let mut h = Handshake::new(export());
    assert_eq!(
        h.on_bytes(&0u32.to_be_bytes()),
        Err(HandshakeError::NotFixedNewstyle(0))
    );
}

#[test]
fn list_then_info_then_go() {
    let mut h = started();
    let (hd, _) = option(OPT_LIST, &[]);
    let Ok(Next::SendThenRead(out, 16)) = h.on_bytes(&hd) else {
        panic!("list")
    };
    let r = replies(&out);
    assert_eq!(r[0].1, REP_SERVER);
    assert_eq!(&r[0].2[4..], b"data");
    assert_eq!(r[1].1, REP_ACK);

    let d = info_data("data", &[INFO_NAME, INFO_DESCRIPTION]);
    let (hd, d) = option(OPT_INFO, &d);
    assert_eq!(h.on_bytes(&hd), Ok(Next::Read(d.len())));
    let Ok(Next::SendThenRead(out, 16)) = h.on_bytes(&d) else {
        panic!("info")
    };
    let r = replies(&out);
    assert_eq!(r.len(), 5);
    assert_eq!(be_u16(&r[0].2, 0), INFO_EXPORT);
    assert_eq!(be_u64(&r[0].2, 2), 1 << 20);
    let fl = be_u16(&r[0].2, 10);
    assert_eq!(fl, export().transmission_flags());
    assert!(fl & flags::READ_ONLY == 0);
    assert_eq!(be_u16(&r[1].2, 0), INFO_BLOCK_SIZE);
    assert_eq!(be_u32(&r[1].2, 6), 4096);
    assert_eq!(be_u32(&r[1].2, 10), MAX_PAYLOAD);
    assert_eq!(&r[2].2[2..], b"data");
    assert_eq!(r[4].1, REP_ACK);

    let d = info_data("", &[]);
    let (hd, d) = option(OPT_GO, &d);
    h.on_bytes(&hd).unwrap_or_else(|e| panic!("{e}"));
    let Ok(Next::Transmit(out)) = h.on_bytes(&d) else {
        panic!("go")
    };
    assert_eq!(replies(&out).last().map(|r| r.1), Some(REP_ACK));
}

#[test]
fn unknown_export_and_bad_options_are_errors_not_closes() {
    let mut h = started();
    let d = info_data("other", &[]);
    let (hd, d) = option(OPT_GO, &d);
    h.on_bytes(&hd).unwrap_or_else(|e| panic!("{e}"));
    let Ok(Next::SendThenRead(out, 16)) = h.on_bytes(&d) else {
        panic!("go")
    };
    assert_eq!(replies(&out)[0].1, REP_ERR_UNKNOWN);
    // A truncated GO payload.
    let (hd, d) = option(OPT_GO, &[0, 0, 0, 9, b'x']);
    h.on_bytes(&hd).unwrap_or_else(|e| panic!("{e}"));
    let Ok(Next::SendThenRead(out, 16)) = h.on_bytes(&d) else {
        panic!("go")
    };
    assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
    // Structured replies are refused; the client goes on.
    let (hd, _) = option(8, &[]);
    let Ok(Next::SendThenRead(out, 16)) = h.on_bytes(&hd) else {
        panic!("sr")
    };
    assert_eq!(replies(&out)[0].1, REP_ERR_UNSUP);
    let (hd, _) = option(OPT_ABORT, &[]);
    assert!(matches!(h.on_bytes(&hd), Ok(Next::Close(_))));
}

fn started_requiring_tls() -> Handshake {
    let mut h = Handshake::requiring_tls(export());
    assert_eq!(h.on_bytes(&3u32.to_be_bytes()), Ok(Next::Read(16)));
    h
}

/// Issue 15, defect 3: the export was served to any client on the LAN,
/// and STARTTLS was "not supported". On an export that requires TLS,
/// nothing about the export is told, and nothing is served, before TLS.
#[test]
fn nbd_export_open_to_the_lan_refuses_every_option_before_tls() {
    let mut h = started_requiring_tls();
    for opt in [OPT_LIST, OPT_INFO, OPT_GO, 8] {
        let d = if opt == OPT_LIST {
            Vec::new()
        } else {
            info_data("data", &[])
        };
        let (hd, d) = option(opt, &d);
        let out = if d.is_empty() {
            h.on_bytes(&hd)
        } else {
            assert_eq!(h.on_bytes(&hd), Ok(Next::Read(d.len())));
            h.on_bytes(&d)
        };
        let Ok(Next::SendThenRead(out, 16)) = out else {
            panic!("option {opt}: {out:?}")
        };
        let r = replies(&out);
        assert_eq!(r.len(), 1, "option {opt}");
        assert_eq!(r[0].1, REP_ERR_TLS_REQD, "option {opt}");
    }
    // The old-style export choice cannot be refused with a reply: close.
    let (hd, d) = option(OPT_EXPORT_NAME, b"data");
    assert_eq!(h.on_bytes(&hd), Ok(Next::Read(4)));
    assert_eq!(h.on_bytes(&d), Err(HandshakeError::TlsRequired));
}

#[test]
fn starttls_then_the_export_is_served() {
    let mut h = started_requiring_tls();
    // STARTTLS with data is invalid, and TLS does not start.
    let (hd, d) = option(OPT_STARTTLS, b"x");
    assert_eq!(h.on_bytes(&hd), Ok(Next::Read(1)));
    let Ok(Next::SendThenRead(out, 16)) = h.on_bytes(&d) else {
        panic!("starttls with data")
    };
    assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
    let (hd, _) = option(OPT_STARTTLS, &[]);
    let Ok(Next::StartTls(out)) = h.on_bytes(&hd) else {
        panic!("starttls")
    };
    assert_eq!(replies(&out), vec![(OPT_STARTTLS, REP_ACK, vec![])]);
    h.tls_started();
    // A second STARTTLS is invalid; the client goes on.
    let Ok(Next::SendThenRead(out, 16)) = h.on_bytes(&hd) else {
        panic!("second starttls")
    };
    assert_eq!(replies(&out)[0].1, REP_ERR_INVALID);
    let d = info_data("data", &[]);
    let (hd, d) = option(OPT_GO, &d);
    assert_eq!(h.on_bytes(&hd), Ok(Next::Read(d.len())));
    let Ok(Next::Transmit(out)) = h.on_bytes(&d) else {
        panic!("go")
    };
    assert_eq!(replies(&out).last().map(|r| r.1), Some(REP_ACK));
}

#[test]
fn abort_is_allowed_before_tls() {
    let mut h = started_requiring_tls();
    let (hd, _) = option(OPT_ABORT, &[]);
    let Ok(Next::Close(out)) = h.on_bytes(&hd) else {
        panic!("abort")
    };
    assert_eq!(replies(&out)[0].1, REP_ACK);
}

#[test]
fn a_refusing_export_says_why() {
    let mut h = Handshake::new(ExportInfo {
        refusal: Some("secondary copy".into()),
        ..export()
    });
    h.on_bytes(&3u32.to_be_bytes())
        .unwrap_or_else(|e| panic!("{e}"));
    let d = info_data("data", &[]);
    let (hd, d) = option(OPT_GO, &d);
    h.on_bytes(&hd).unwrap_or_else(|e| panic!("{e}"));
    let Ok(Next::SendThenRead(out, 16)) = h.on_bytes(&d) else {
        panic!("go")
    };
    let r = replies(&out);
    assert_eq!(r[0].1, REP_ERR_POLICY);
    assert_eq!(r[0].2, b"secondary copy");
}

#[test]
fn export_name_option_and_limits() {
    let mut h = started();
    let (hd, d) = option(OPT_EXPORT_NAME, b"data");
    h.on_bytes(&hd).unwrap_or_else(|e| panic!("{e}"));
    let Ok(Next::Transmit(out)) = h.on_bytes(&d) else {
        panic!("export name")
    };
    assert_eq!(out.len(), 10, "no zero padding after NO_ZEROES");
    let mut h = started();
    let (hd, d) = option(OPT_EXPORT_NAME, b"nope");
    h.on_bytes(&hd).unwrap_or_else(|e| panic!("{e}"));
    assert!(matches!(
        h.on_bytes(&d),
        Err(HandshakeError::UnknownExport(_))
    ));
    let mut h = started();
    let mut hd = option(OPT_LIST, &[]).0;
    hd[0] = 0;
    assert!(matches!(
        h.on_bytes(&hd),
        Err(HandshakeError::BadOptionMagic(_))
    ));
    let mut h = started();
    let (hd, _) = option(OPT_LIST, &vec![0; MAX_OPTION_LEN as usize + 1]);
    assert!(matches!(
        h.on_bytes(&hd),
        Err(HandshakeError::OptionTooLong(_))
    ));
    let mut h = started();
    for _ in 0..MAX_OPTIONS {
        let (hd, _) = option(99, &[]);
        assert!(matches!(h.on_bytes(&hd), Ok(Next::SendThenRead(..))));
    }
    let (hd, _) = option(99, &[]);
    assert_eq!(h.on_bytes(&hd), Err(HandshakeError::TooManyOptions));
}

fn req(kind: u16, fl: u16, cookie: u64, offset: u64, length: u32) -> Vec<u8> {
    let mut b = REQUEST_MAGIC.to_be_bytes().to_vec();
    b.extend_from_slice(&fl.to_be_bytes());
    b.extend_from_slice(&kind.to_be_bytes());
    b.extend_from_slice(&cookie.to_be_bytes());
    b.extend_from_slice(&offset.to_be_bytes());
    b.extend_from_slice(&length.to_be_bytes());
    b
}

/// Every event in `input`, fed in pieces of `chunk` bytes.
fn events(p: &mut RequestParser, input: &[u8], chunk: usize) -> Vec<Event> {
    events_fed(p, input, chunk, false)
}

/// Every event in `input` fed in pieces of `chunk` bytes; with
/// `take_payloads`, each write payload is handed over as an owned buffer
/// the way the server reads large ones.
fn events_fed(
    p: &mut RequestParser,
    input: &[u8],
    chunk: usize,
    take_payloads: bool,
) -> Vec<Event> {
    let mut buf: Vec<u8> = vec![];
    let mut out = vec![];
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        loop {
            if let Some(len) = p.payload_wanted().filter(|_| take_payloads) {
                if buf.len() < len {
                    break;
                }
                if len > 0 {
                    assert_eq!(p.take_payload(buf[..len - 1].to_vec()), None);
                }
                let data: Vec<u8> = buf.drain(..len).collect();
                out.extend(p.take_payload(data));
                continue;
            }
            let (n, ev) = p.next(&buf);
            buf.drain(..n);
            if let Some(ev) = ev {
                out.push(ev);
            } else if n == 0 {
                break;
            }
        }
    }
    out
}

#[test]
fn a_payload_is_only_taken_when_awaited_and_whole() {
    let mut p = RequestParser::new(1 << 20, false);
    assert_eq!(p.payload_wanted(), None);
    assert_eq!(p.take_payload(vec![1; 4]), None);
    assert_eq!(p.next(&req(CMD_WRITE, 0, 5, 512, 4)), (REQUEST_LEN, None));
    assert_eq!(p.payload_wanted(), Some(4));
    assert_eq!(p.take_payload(vec![1; 3]), None);
    assert_eq!(
        p.take_payload(vec![1; 4]),
        Some(Event::Request {
            cookie: 5,
            op: Op::Write {
                offset: 512,
                data: vec![1; 4],
                fua: false
            }
        })
    );
    assert_eq!(p.payload_wanted(), None);
}

#[test]
fn a_payload_held_apart_gives_the_same_request_and_refusal() {
    let mut p = RequestParser::new(1 << 20, false);
    assert_eq!(p.take_payload_apart(), None);
    assert_eq!(
        p.next(&req(CMD_WRITE, CMD_FLAG_FUA, 5, 512, 4)),
        (REQUEST_LEN, None)
    );
    assert_eq!(
        p.take_payload_apart(),
        Some(Event::Request {
            cookie: 5,
            op: Op::Write {
                offset: 512,
                data: vec![],
                fua: true
            }
        })
    );
    assert_eq!(p.payload_wanted(), None);
    // Past the end: refused, and the stream goes on with the next header.
    assert_eq!(
        p.next(&req(CMD_WRITE, 0, 6, (1 << 20) - 2, 4)),
        (REQUEST_LEN, None)
    );
    assert!(matches!(
        p.take_payload_apart(),
        Some(Event::Refuse { cookie: 6, .. })
    ));
    assert_eq!(p.wanted(), REQUEST_LEN);
}

#[test]
fn requests_parse_and_bad_ones_are_refused_in_step() {
    let mut s = vec![];
    s.extend(req(CMD_WRITE, CMD_FLAG_FUA, 1, 4096, 4));
    s.extend(b"abcd");
    s.extend(req(CMD_READ, 0, 2, 0, 512));
    // Past the end: the payload is consumed and the stream stays in step.
    s.extend(req(CMD_WRITE, 0, 3, (1 << 20) - 2, 4));
    s.extend(b"wxyz");
    s.extend(req(CMD_READ, 0, 4, u64::MAX, 2));
    s.extend(req(CMD_FLUSH, 0, 5, 0, 0));
    s.extend(req(CMD_TRIM, 0, 6, 0, 8192));
    s.extend(req(CMD_WRITE_ZEROES, CMD_FLAG_NO_HOLE, 7, 0, 8192));
    s.extend(req(42, 0, 8, 0, 0));
    s.extend(req(CMD_READ, CMD_FLAG_FUA, 9, 0, 1));
    s.extend(req(CMD_DISC, 0, 10, 0, 0));
    s.extend(req(CMD_READ, 0, 11, 0, 1));
    for chunk in [1, 3, 28, 1000] {
        let mut p = RequestParser::new(1 << 20, false);
        let ev = events(&mut p, &s, chunk);
        assert_eq!(ev.len(), 10, "chunk {chunk}: {ev:?}");
        assert_eq!(
            ev[0],
            Event::Request {
                cookie: 1,
                op: Op::Write {
                    offset: 4096,
                    data: b"abcd".to_vec(),
                    fua: true
                }
            }
        );
        assert!(matches!(
            ev[2],
            Event::Refuse {
                cookie: 3,
                errno: errno::EINVAL,
                ..
            }
        ));
        assert!(matches!(
            ev[3],
            Event::Refuse {
                cookie: 4,
                errno: errno::EINVAL,
                ..
            }
        ));
        assert_eq!(
            ev[4],
            Event::Request {
                cookie: 5,
                op: Op::Flush
            }
        );
        assert!(matches!(
            ev[7],
            Event::Refuse {
                cookie: 8,
                errno: errno::EINVAL,
                ..
            }
        ));
        assert!(matches!(
            ev[8],
            Event::Refuse {
                cookie: 9,
                errno: errno::EINVAL,
                ..
            }
        ));
        assert_eq!(ev[9], Event::Disconnect);
        assert!(p.closed());
    }
}

#[test]
fn bad_magic_and_huge_writes_abort() {
    let mut p = RequestParser::new(1 << 20, false);
    let mut b = req(CMD_READ, 0, 1, 0, 1);
    b[0] ^= 1;
    assert!(matches!(
        events(&mut p, &b, 28)[0],
        Event::Abort(FrameError::BadMagic(_))
    ));
    let mut p = RequestParser::new(1 << 20, false);
    let b = req(CMD_WRITE, 0, 1, 0, MAX_PAYLOAD + 1);
    assert!(matches!(
        events(&mut p, &b, 28)[0],
        Event::Abort(FrameError::PayloadTooLarge(_))
    ));
    // Read-only exports refuse writes with EPERM.
    let mut p = RequestParser::new(1 << 20, true);
    let mut b = req(CMD_WRITE, 0, 1, 0, 2);
    b.extend(b"xy");
    assert!(matches!(
        events(&mut p, &b, 28)[0],
        Event::Refuse {
            errno: errno::EPERM,
            ..
        }
    ));
}

proptest! {
    /// Any bytes: the parser never panics, never asks for more than a
    /// bounded amount, every accepted write lies inside the export, and
    /// how the bytes are split into reads changes nothing.
    #[test]
    fn arbitrary_streams_are_safe(
        frames in proptest::collection::vec(
            (0u16..10, 0u16..32, 0u64..(1 << 21), 0u32..9000, any::<bool>(), proptest::collection::vec(any::<u8>(), 0..64)),
            0..24),
        chunk in 1usize..200,
    ) {
        let size = 1u64 << 20;
        let mut s = vec![];
        for (kind, fl, offset, length, good_magic, junk) in frames {
            let mut r = req(kind, fl, 7, offset, length);
            if !good_magic { r[1] ^= 0x40; }
            s.extend(r);
            if kind == CMD_WRITE { s.extend(std::iter::repeat(0xab).take(length as usize)); }
            if !good_magic { s.extend(junk); }
        }
        let mut whole = RequestParser::new(size, false);
        let a = events(&mut whole, &s, s.len().max(1));
        let mut pieces = RequestParser::new(size, false);
        let b = events(&mut pieces, &s, chunk);
        prop_assert_eq!(&a, &b);
        let mut taking = RequestParser::new(size, false);
        let c = events_fed(&mut taking, &s, chunk, true);
        prop_assert_eq!(&a, &c);
        prop_assert!(whole.wanted() <= MAX_PAYLOAD as usize);
        for ev in &a {
            if let Event::Request { op, .. } = ev {
                let (off, len) = match op {
                    Op::Write { offset, data, .. } => (*offset, data.len() as u64),
                    Op::Read { offset, length } | Op::Trim { offset, length, .. } | Op::WriteZeroes { offset, length, .. } => (*offset, u64::from(*length)),
                    Op::Flush => (0, 0),
                };
                prop_assert!(off + len <= size);
            }
        }
    }
}
