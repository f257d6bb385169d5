//! Any bytes: decoding never panics; an accepted packet re-encodes to the
//! same bytes (one encoding per packet); it is accepted by its recipient
//! only; the replay guard never panics.
#![no_main]

use libfuzzer_sys::fuzz_target;
use tandem_core::wire::{self, replay::ReplayGuard, ClusterId, DropReason, NodeId};

const KEY: wire::Key = [0x5a; 32];

fuzz_target!(|data: &[u8]| {
    let cluster = ClusterId(u64::from_be_bytes(*b"fuzzclst"));
    let me = NodeId(u64::from_be_bytes(*b"fuzz-me!"));
    if let Ok(p) = wire::decode(data, cluster, me, &[&KEY]) {
        let other = NodeId(me.0 ^ 1);
        assert_eq!(
            wire::decode(data, cluster, other, &[&KEY]),
            Err(DropReason::Misdirected),
            "a packet for one node was accepted by another"
        );
        let again = wire::encode(&p, &KEY).expect("a decoded packet encodes");
        assert_eq!(again, data, "decode/encode is not canonical");
        let mut g = ReplayGuard::default();
        let _ = g.check(&p.header);
        assert!(g.check(&p.header).is_err(), "the same packet was accepted twice");
    }
});
