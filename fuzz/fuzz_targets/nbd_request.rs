//! Any bytes as an NBD transmission stream, and any bytes as handshake
//! steps: never a panic; every request the parser accepts lies inside the
//! export; feeding the stream whole or in pieces, or taking every write
//! payload apart as the server does with large ones, gives the same
//! events.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::nbd::{Event, ExportInfo, Handshake, Next, Op, RequestParser};

const SIZE: u64 = 1 << 20;

/// The events of `input` fed in pieces of `chunk` bytes; with `apart`,
/// every write payload is taken apart (`take_payload_apart`, as the
/// server does with large ones) and its bytes put back into the event.
fn events(input: &[u8], chunk: usize, apart: bool) -> Vec<Event> {
    let mut p = RequestParser::new(SIZE, false);
    let mut buf = Vec::new();
    let mut out = Vec::new();
    for piece in input.chunks(chunk.max(1)) {
        buf.extend_from_slice(piece);
        while step(&mut p, &mut buf, &mut out, apart) {}
    }
    out
}

/// One parse step over the front of `buf`; false once more input is
/// needed.
fn step(p: &mut RequestParser, buf: &mut Vec<u8>, out: &mut Vec<Event>, apart: bool) -> bool {
    if let Some(len) = p.payload_wanted().filter(|l| apart && *l <= buf.len()) {
        let bytes: Vec<u8> = buf.drain(..len).collect();
        match p.take_payload_apart() {
            Some(Event::Request {
                cookie,
                op: Op::Write { offset, data, fua },
            }) => {
                assert!(data.is_empty(), "a payload taken apart came with data");
                out.push(Event::Request {
                    cookie,
                    op: Op::Write {
                        offset,
                        data: bytes,
                        fua,
                    },
                });
            }
            Some(e) => out.push(e),
            None => panic!("an awaited payload could not be taken apart"),
        }
        return true;
    }
    let (n, ev) = p.next(buf);
    buf.drain(..n);
    match ev {
        Some(e) => out.push(e),
        None if n == 0 => return false,
        None => {}
    }
    true
}

fuzz_target!(|data: &[u8]| {
    let chunk = data.first().map_or(1, |b| *b as usize + 1);
    let whole = events(data, data.len(), false);
    assert_eq!(whole, events(data, chunk, false), "chunking changed the events");
    assert_eq!(
        whole,
        events(data, chunk, true),
        "taking payloads apart changed the events"
    );
    for ev in &whole {
        if let Event::Request { op, .. } = ev {
            let (off, len) = match op {
                Op::Write { offset, data, .. } => (*offset, data.len() as u64),
                Op::Read { offset, length }
                | Op::Trim { offset, length, .. }
                | Op::WriteZeroes { offset, length, .. } => (*offset, u64::from(*length)),
                Op::Flush => (0, 0),
            };
            assert!(off + len <= SIZE, "accepted a request past the end");
        }
    }
    let export = ExportInfo {
        name: "data".into(),
        description: String::new(),
        size: SIZE,
        read_only: false,
        refusal: None,
    };
    // The first byte picks the mode: plain, or TLS required (where the
    // fuzzer's STARTTLS stands for a completed TLS handshake).
    let (mode, data) = data.split_first().map_or((0, data), |(m, d)| (*m, d));
    let mut h = if mode & 1 == 0 {
        Handshake::new(export)
    } else {
        Handshake::requiring_tls(export)
    };
    let mut want = Handshake::first_read();
    let mut rest = data;
    while rest.len() >= want {
        let (step, tail) = rest.split_at(want);
        rest = tail;
        match h.on_bytes(step) {
            Ok(Next::Read(n)) | Ok(Next::SendThenRead(_, n)) => want = n,
            Ok(Next::StartTls(_)) => {
                h.tls_started();
                want = 16;
            }
            Ok(Next::Transmit(_)) | Ok(Next::Close(_)) | Err(_) => break,
        }
    }
});
