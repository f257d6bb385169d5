//! The dirty bitmap: one bit per 4 KiB block that may differ from the peer.

/// Bytes per bitmap bit.
pub const BLOCK: u64 = 4096;

/// A set of 4 KiB blocks, with its population kept current.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Bitmap {
    words: Vec<u64>,
    blocks: u64,
    set: u64,
}

impl Bitmap {
    /// An empty bitmap for a volume of `size_bytes`.
    pub fn new(size_bytes: u64) -> Bitmap {
        let blocks = size_bytes.div_ceil(BLOCK);
        Bitmap {
            // Sizes are validated; a 64-bit usize holds every u64.
            words: vec![0; usize::try_from(blocks.div_ceil(64)).unwrap_or(usize::MAX)],
            blocks,
            set: 0,
        }
    }

    /// Blocks covered.
    pub fn blocks(&self) -> u64 {
        self.blocks
    }

    /// Blocks marked.
    pub fn count(&self) -> u64 {
        self.set
    }

    /// The blocks `[first, last]` touched by a byte range, if any.
    fn span(&self, offset: u64, len: u64) -> Option<(u64, u64)> {
        if len == 0 || self.blocks == 0 {
            return None;
        }
        let first = offset / BLOCK;
        let last = (offset.saturating_add(len) - 1) / BLOCK;
        (first < self.blocks).then_some((first, last.min(self.blocks - 1)))
    }

    /// Marks every block a byte range touches; returns how many were new.
    pub fn set_range(&mut self, offset: u64, len: u64) -> u64 {
        let Some((first, last)) = self.span(offset, len) else {
            return 0;
        };
        let mut added = 0;
        for b in first..=last {
            let (w, m) = ((b / 64) as usize, 1u64 << (b % 64));
            if self.words[w] & m == 0 {
                self.words[w] |= m;
                added += 1;
            }
        }
        self.set += added;
        added
    }

    /// Clears the blocks wholly or partly inside a byte range.
    pub fn clear_range(&mut self, offset: u64, len: u64) {
        let Some((first, last)) = self.span(offset, len) else {
            return;
        };
        for b in first..=last {
            let (w, m) = ((b / 64) as usize, 1u64 << (b % 64));
            if self.words[w] & m != 0 {
                self.words[w] &= !m;
                self.set -= 1;
            }
        }
    }

    /// Marks every block.
    pub fn set_all(&mut self) {
        for b in 0..self.blocks {
            self.words[(b / 64) as usize] |= 1 << (b % 64);
        }
        self.set = self.blocks;
    }

    /// Clears every block.
    pub fn clear_all(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
        self.set = 0;
    }

    /// Whether block `b` is marked.
    pub fn is_set(&self, b: u64) -> bool {
        b < self.blocks && self.words[(b / 64) as usize] & (1 << (b % 64)) != 0
    }

    /// Adds every block marked in `other` (same size) to this one.
    pub fn union(&mut self, other: &Bitmap) {
        for (a, b) in self.words.iter_mut().zip(&other.words) {
            *a |= *b;
        }
        self.set = self.words.iter().map(|w| u64::from(w.count_ones())).sum();
    }

    /// The next run of marked blocks at or after block `from`, at most
    /// `max_blocks` long: `(first block, block count)`.
    pub fn next_run(&self, from: u64, max_blocks: u64) -> Option<(u64, u64)> {
        let mut b = from;
        while b < self.blocks {
            let w = self.words[(b / 64) as usize] >> (b % 64);
            if w == 0 {
                b = (b / 64 + 1) * 64;
                continue;
            }
            b += u64::from(w.trailing_zeros());
            break;
        }
        if b >= self.blocks {
            return None;
        }
        let mut n = 0;
        while n < max_blocks && b + n < self.blocks && self.is_set(b + n) {
            n += 1;
        }
        Some((b, n))
    }

    /// The little-endian words, for persisting and sending.
    pub fn to_bytes(&self) -> Vec<u8> {
        self.words.iter().flat_map(|w| w.to_le_bytes()).collect()
    }

    /// A bitmap for `size_bytes` from [`Bitmap::to_bytes`]; None when the
    /// length does not match (a bitmap of another volume, or damaged).
    pub fn from_bytes(size_bytes: u64, bytes: &[u8]) -> Option<Bitmap> {
        let mut b = Bitmap::new(size_bytes);
        if bytes.len() != b.words.len() * 8 {
            return None;
        }
        for (w, c) in b.words.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut x = [0u8; 8];
            x.copy_from_slice(c);
            *w = u64::from_le_bytes(x);
        }
        // Bits past the end would count blocks that do not exist.
        if b.blocks % 64 != 0 {
            if let Some(last) = b.words.last_mut() {
                *last &= (1u64 << (b.blocks % 64)) - 1;
            }
        }
        b.set = b.words.iter().map(|w| u64::from(w.count_ones())).sum();
        Some(b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn ranges_round_to_blocks() {
        let mut b = Bitmap::new(10 * BLOCK + 1);
        assert_eq!(b.blocks(), 11);
        assert_eq!(b.set_range(4095, 2), 2);
        assert_eq!(b.set_range(0, 4096), 0);
        assert_eq!(b.next_run(0, 100), Some((0, 2)));
        assert_eq!(b.set_range(10 * BLOCK, 100 * BLOCK), 1);
        assert_eq!(b.count(), 3);
        assert_eq!(b.next_run(2, 100), Some((10, 1)));
        b.clear_range(0, 1);
        assert_eq!(b.next_run(0, 100), Some((1, 1)));
        assert_eq!(b.set_range(0, 0), 0);
        assert_eq!(b.set_range(u64::MAX - 5, 100), 0);
    }

    proptest! {
        #[test]
        fn count_and_bytes_agree_with_a_set(ops in proptest::collection::vec((0u64..300_000, 0u64..50_000, any::<bool>()), 0..40)) {
            let size = 300_000;
            let mut b = Bitmap::new(size);
            let mut model = std::collections::BTreeSet::new();
            for (off, len, set) in ops {
                if let Some((f, l)) = b.span(off, len) {
                    for x in f..=l { if set { model.insert(x); } else { model.remove(&x); } }
                }
                if set { b.set_range(off, len); } else { b.clear_range(off, len); }
                prop_assert_eq!(b.count(), model.len() as u64);
            }
            let again = Bitmap::from_bytes(size, &b.to_bytes());
            prop_assert_eq!(again.as_ref(), Some(&b));
            let mut runs = vec![];
            let mut at = 0;
            while let Some((f, n)) = b.next_run(at, 7) { runs.extend(f..f + n); at = f + n; }
            prop_assert_eq!(runs, model.into_iter().collect::<Vec<_>>());
        }
    }
}
