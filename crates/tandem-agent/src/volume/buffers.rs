//! Reusable buffers for the bulk data of the volume data path (write
//! payloads, read replies, sync blocks).
//!
//! A fresh allocation of a megabyte is handed back to the kernel when it
//! is freed (the allocator trims its heap), so the next one faults in and
//! zeroes every page again: measured at about a tenth of this machine's
//! CPU during sequential protocol C writes. A small pool keeps a bounded
//! number of such buffers warm instead.

use std::sync::Mutex;

/// Buffers smaller than this are not pooled (the allocator keeps them).
const MIN_POOLED: usize = 64 << 10;
/// Buffers larger than this are not pooled (rare: writes up to 32 MiB).
const MAX_POOLED: usize = 4 << 20;
/// Bytes of capacity the pool holds at most.
const POOL_BYTES: usize = 64 << 20;

struct Pool {
    free: Vec<Vec<u8>>,
    bytes: usize,
}

static POOL: Mutex<Pool> = Mutex::new(Pool {
    free: Vec::new(),
    bytes: 0,
});

fn pool() -> std::sync::MutexGuard<'static, Pool> {
    POOL.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// An empty buffer with room for at least `len` bytes, warm from the pool
/// when one fits (at most four times as large, so small requests do not
/// hold large buffers).
pub fn take(len: usize) -> Vec<u8> {
    if (MIN_POOLED..=MAX_POOLED).contains(&len) {
        let mut p = pool();
        if let Some(i) = p
            .free
            .iter()
            .position(|b| b.capacity() >= len && b.capacity() <= len.saturating_mul(4))
        {
            let b = p.free.swap_remove(i);
            p.bytes -= b.capacity();
            return b;
        }
    }
    Vec::with_capacity(len)
}

/// Returns a buffer for reuse; kept only while the pool has room.
pub fn give(mut b: Vec<u8>) {
    let cap = b.capacity();
    if !(MIN_POOLED..=MAX_POOLED).contains(&cap) {
        return;
    }
    let mut p = pool();
    if p.bytes + cap <= POOL_BYTES {
        b.clear();
        p.bytes += cap;
        p.free.push(b);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buffers_are_reused_within_bounds() {
        let b = take(1 << 20);
        assert!(b.capacity() >= 1 << 20 && b.is_empty());
        let ptr = b.as_ptr();
        let mut b = b;
        b.extend_from_slice(&[7; 100]);
        give(b);
        // Too small a request for that buffer: a fresh one.
        let small = take(100 << 10);
        assert_ne!(small.as_ptr(), ptr);
        // The same size again: the warm one, emptied. (Tests run in
        // parallel; another test may have taken it, never a wrong one.)
        let again = take(1 << 20);
        assert!(again.is_empty() && again.capacity() >= 1 << 20);
        // Never more than the bound.
        for _ in 0..(2 * POOL_BYTES / MAX_POOLED) {
            give(Vec::with_capacity(MAX_POOLED));
        }
        assert!(pool().bytes <= POOL_BYTES);
        give(Vec::with_capacity(MAX_POOLED + 1));
        give(Vec::with_capacity(10));
        assert!(pool()
            .free
            .iter()
            .all(|b| (MIN_POOLED..=MAX_POOLED).contains(&b.capacity())));
    }
}
