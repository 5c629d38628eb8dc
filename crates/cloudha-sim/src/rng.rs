//! The simulator's one source of randomness: splitmix64 from a seed.

use std::time::Duration;

/// splitmix64: the simulator's only randomness (runs and explore alike), from a seed.
#[derive(Debug, Clone)]
pub(crate) struct Rng(pub(crate) u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..d`, to the millisecond.
    pub(crate) fn below(&mut self, d: Duration) -> Duration {
        let ms = d.as_millis().max(1) as u64;
        Duration::from_millis(self.next() % ms)
    }

    /// Uniform in `lo..=hi`.
    pub(crate) fn range(&mut self, lo: usize, hi: usize) -> usize {
        lo + (self.next() % (hi.saturating_sub(lo) as u64 + 1)) as usize
    }

    /// Uniform in `lo..=hi` in whole seconds from `lo`.
    pub(crate) fn duration(&mut self, lo: Duration, hi: Duration) -> Duration {
        let steps = hi.saturating_sub(lo).as_secs() as usize;
        lo + Duration::from_secs(self.range(0, steps) as u64)
    }

    pub(crate) fn chance(&mut self, p: f64) -> bool {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64 <= p && p > 0.0
    }

    /// `k` distinct items of `pool`, in the pool's order.
    pub(crate) fn pick(&mut self, pool: &[String], k: usize) -> Vec<String> {
        let mut idx: Vec<usize> = (0..pool.len()).collect();
        let k = k.min(pool.len());
        for i in 0..k {
            let j = self.range(i, pool.len() - 1);
            idx.swap(i, j);
        }
        let mut chosen = idx[..k].to_vec();
        chosen.sort_unstable();
        chosen.into_iter().map(|i| pool[i].clone()).collect()
    }
}
