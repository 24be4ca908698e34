//! The simulation's randomness: the seedable [`Rng`] (SplitMix64), with the log-normal
//! latencies it draws, and the [`Wave`]s that make rates and speeds rise and fall.

use std::f64::consts::TAU;
use std::time::Duration;

/// Longest simulated latency, in milliseconds.
const MAX_LATENCY_MS: f64 = 50.0;
/// Shortest simulated latency, in milliseconds.
const MIN_LATENCY_MS: f64 = 0.05;
/// Spread of the log-normal latency (sigma of its logarithm).
const LATENCY_SIGMA: f64 = 0.55;
/// Chance that a call lands in the slow tail (a GC pause, a slow disk, a retried request).
const LATENCY_TAIL: f64 = 0.01;

/// A small, fast, seedable generator (SplitMix64); plenty for a simulation.
#[derive(Debug, Clone)]
pub(super) struct Rng(u64);

impl Rng {
    /// A generator whose every draw follows from `seed`.
    pub(super) const fn new(seed: u64) -> Self {
        Self(seed)
    }

    fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    /// Uniform in [lo, hi).
    pub(super) fn range(&mut self, (lo, hi): (f64, f64)) -> f64 {
        lo + (hi - lo) * self.unit()
    }

    /// Log-uniform in [lo, hi): as many values between 100 and 200 as between 1000 and 2000.
    pub(super) fn log_range(&mut self, (lo, hi): (f64, f64)) -> f64 {
        (lo.ln() + (hi.ln() - lo.ln()) * self.unit()).exp()
    }

    /// Uniform in [lo, hi], both included.
    pub(super) fn between(&mut self, lo: u32, hi: u32) -> u32 {
        lo + (self.next_u64() % u64::from(hi - lo + 1)) as u32
    }

    /// Uniform in [0, n); `n` must not be 0.
    pub(super) fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }

    pub(super) fn chance(&mut self, p: f64) -> bool {
        self.unit() < p
    }

    /// Standard normal (Box-Muller).
    pub(super) fn normal(&mut self) -> f64 {
        let u = 1.0 - self.unit(); // (0, 1]: ln is finite
        (-2.0 * u.ln()).sqrt() * (TAU * self.unit()).cos()
    }

    pub(super) fn shuffle<T>(&mut self, items: &mut [T]) {
        for i in (1..items.len()).rev() {
            items.swap(i, self.below(i + 1));
        }
    }

    /// A latency around `median_ms`: log-normal, with a rare tail up to [`MAX_LATENCY_MS`].
    pub(super) fn latency(&mut self, median_ms: f64) -> Duration {
        let mut ms = median_ms * (LATENCY_SIGMA * self.normal()).exp();
        if self.chance(LATENCY_TAIL) {
            ms *= self.range((3.0, 12.0));
        }
        Duration::from_secs_f64(ms.clamp(MIN_LATENCY_MS, MAX_LATENCY_MS) / 1000.0)
    }
}

/// A sine wave: `amplitude * sin(2π t / period + phase)`.
#[derive(Debug, Clone, Copy)]
pub(super) struct Wave {
    amplitude: f64,
    period: f64,
    phase: f64,
}

impl Wave {
    /// A wave with an amplitude and a period drawn from the ranges, and a random phase.
    pub(super) fn random(rng: &mut Rng, amplitude: (f64, f64), period: (f64, f64)) -> Self {
        Self {
            amplitude: rng.range(amplitude),
            period: rng.range(period),
            phase: rng.range((0.0, TAU)),
        }
    }

    /// The wave's value at `t` seconds.
    pub(super) fn at(&self, t: f64) -> f64 {
        self.amplitude * (TAU * t / self.period + self.phase).sin()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn latencies_are_skewed_and_bounded() {
        let mut rng = Rng(1);
        let mut ms: Vec<f64> = (0..20_000)
            .map(|_| rng.latency(1.5).as_secs_f64() * 1000.0)
            .collect();
        ms.sort_by(f64::total_cmp);
        let q = |f: f64| ms[(f * (ms.len() - 1) as f64) as usize];
        assert!((1.3..1.7).contains(&q(0.5)), "{}", q(0.5));
        assert!((3.0..12.0).contains(&q(0.99)), "{}", q(0.99));
        assert!(ms[0] >= MIN_LATENCY_MS && ms[ms.len() - 1] <= MAX_LATENCY_MS);
        assert!(q(0.999) > 10.0, "a tail: {}", q(0.999));
        for _ in 0..1000 {
            assert!((3..=5).contains(&rng.between(3, 5)));
            assert!((0.0..1.0).contains(&rng.unit()));
        }
    }
}
