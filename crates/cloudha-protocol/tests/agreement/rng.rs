//! Randomness of the agreement test: a small seedable generator, one stream per case.

/// splitmix64: small, seedable, good enough to drive a generator.
pub(super) struct Rng(u64);

impl Rng {
    fn new(seed: u64) -> Self {
        Self(seed)
    }
    pub(super) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    /// True with probability `pct` percent.
    pub(super) fn chance(&mut self, pct: u64) -> bool {
        self.next() % 100 < pct
    }
    pub(super) fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    pub(super) fn u64(&mut self) -> u64 {
        match self.below(6) {
            0 => 0,
            1 => u64::MAX,
            2 => self.next() % 10,
            3 => self.next() % 100_000,
            _ => self.next(),
        }
    }
    pub(super) fn string(&mut self) -> String {
        const ALPHABET: &[char] = &[
            'a', 'Z', '0', ' ', '_', '"', '\\', '/', '\n', '\t', '\u{0}', '\u{1f}', '\u{7f}', 'é',
            '\u{2028}', '😀', '=', ',', '{', '}', '[', ']', ':',
        ];
        let n = self.below(12);
        (0..n).map(|_| *self.pick(ALPHABET)).collect()
    }
    pub(super) fn option<T>(&mut self, f: impl FnOnce(&mut Self) -> T) -> Option<T> {
        self.chance(50).then(|| f(self))
    }
}

pub(super) fn case_rng(seed: u64, stream: u64, case: u64) -> Rng {
    let mut r = Rng::new(seed ^ stream.wrapping_mul(0xa076_1d64_78bd_642f));
    r.0 ^= case.wrapping_mul(0xe703_7ed1_a0b4_28db);
    r.next();
    r
}
