//! One simulated topic, [`SimTopic`]: its partitions' log ends and the producers that feed it.

use tracing::debug;

use super::random::{Rng, Wave};
use crate::broker::{TopicManager, TopicMeter};

/// Most produce calls recorded per topic per step.
const PRODUCE_CALLS: usize = 4;
/// A step's messages of one topic are split into another produce call per this many.
const BATCH: f64 = 64.0;
/// Correlation time of the rate noise, in seconds.
const NOISE_TAU: f64 = 8.0;
/// Strength of the rate noise (its logarithm's stationary deviation is about 0.12).
const NOISE_SIGMA: f64 = 0.06;

/// One simulated topic and its producers.
#[derive(Debug)]
pub(super) struct SimTopic {
    pub(super) name: String,
    pub(super) meter: TopicMeter,
    /// Log-end offset per partition, as this simulation produced it (it is the only producer).
    pub(super) log_end: Vec<i64>,
    /// Messages/s at load 1.
    pub(super) base_rate: f64,
    /// Mean bytes per message.
    pub(super) msg_size: f64,
    slow: Wave,
    fast: Wave,
    /// Log of a slowly varying multiplicative noise (Ornstein-Uhlenbeck).
    noise: f64,
    /// Fractional messages carried to the next step.
    carry: f64,
    /// Next partition to produce to.
    cursor: usize,
    /// Median produce latency at load 1, in ms.
    produce_ms: f64,
    /// Median fetch latency at load 1, in ms.
    pub(super) fetch_ms: f64,
    /// Current rate / base rate.
    pub(super) load: f64,
}

impl SimTopic {
    /// Creates a topic in `topics`; with `adopt`, takes over one that exists already.
    pub(super) fn open(
        topics: &TopicManager,
        rng: &mut Rng,
        (name, partitions, adopt): (String, u32, bool),
        rate: (f64, f64),
        size: (f64, f64),
    ) -> Option<Self> {
        let (meter, log_end) = match topics.create(&name, partitions) {
            Ok(meter) => (meter, vec![0; partitions as usize]),
            Err(e) if !adopt => {
                debug!(topic = %name, error = %e, "demo topic not created");
                return None;
            }
            Err(e) => {
                // Already there (a restarted demo over the same services): carry on from it.
                let (Some(meter), Some(info)) = (topics.meter(&name), topics.get(&name)) else {
                    debug!(topic = %name, error = %e, "demo topic not created");
                    return None;
                };
                (meter, info.log_end_offsets)
            }
        };
        Some(Self {
            name,
            meter,
            log_end,
            base_rate: rng.log_range(rate),
            msg_size: rng.range(size),
            slow: Wave::random(rng, (0.25, 0.5), (60.0, 120.0)),
            fast: Wave::random(rng, (0.05, 0.15), (12.0, 30.0)),
            noise: 0.0,
            carry: 0.0,
            cursor: rng.below(partitions as usize),
            produce_ms: rng.range((0.8, 2.0)),
            fetch_ms: rng.range((0.4, 1.0)),
            load: 1.0,
        })
    }

    /// Produces this step's messages: a few batched calls spread over the partitions.
    pub(super) fn produce(&mut self, rng: &mut Rng, now: f64, dt: f64, scale: f64) {
        self.noise += -self.noise * dt / NOISE_TAU + NOISE_SIGMA * dt.sqrt() * rng.normal();
        self.load = (1.0 + self.slow.at(now) + self.fast.at(now)).max(0.05) * self.noise.exp();
        let want = self.base_rate * scale * self.load * dt + self.carry;
        let total = want.floor();
        self.carry = want - total;
        let mut left = total as u64;
        if left == 0 {
            return;
        }
        let calls = ((left as f64 / BATCH).ceil() as usize).clamp(1, PRODUCE_CALLS);
        let median = self.produce_ms * self.load.sqrt();
        let partitions = self.log_end.len();
        for i in 0..calls {
            let remaining = calls - i;
            let n = if remaining == 1 {
                left
            } else {
                let even = left as f64 / remaining as f64;
                ((even * rng.range((0.75, 1.25))).round() as u64).min(left)
            };
            left -= n;
            if n == 0 {
                continue;
            }
            let p = self.cursor % partitions;
            // Mostly round-robin, sometimes skipping one: partitions drift apart a little.
            self.cursor = self.cursor.wrapping_add(1 + usize::from(rng.chance(0.3)));
            let bytes = (n as f64 * self.msg_size * rng.range((0.85, 1.15))).round() as u64;
            self.meter.produce(p as u32, n, bytes, rng.latency(median));
            self.log_end[p] += n as i64;
        }
    }
}
