//! What the event loops count, how windows of counts travel (between threads and from child
//! processes, as JSON lines) and the final report.

use std::collections::BTreeMap;

use base64::Engine as _;
use hdrhistogram::serialization::{Deserializer, Serializer, V2Serializer};
use hdrhistogram::Histogram;
use serde::{Deserialize, Serialize};

/// A latency (or size) histogram: 1 to 1 hour in the unit it records, 3 significant digits.
pub fn histogram() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000, 3).expect("valid bounds")
}

/// What one or more event loops saw during a window of time. Windows add up.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Window {
    /// Loadgen messages received (one per subscriber per message).
    pub deliveries: u64,
    /// Payload bytes of every frame received.
    pub bytes: u64,
    /// Messages skipped in a subscriber's sequence, less those that arrived late (signed: a
    /// late arrival may fill a gap counted in an earlier window).
    pub gaps: i64,
    /// Messages that arrived after a later one (several publishers race; not a loss).
    pub reordered: u64,
    /// Our server's `lagged` notices.
    pub lagged: u64,
    /// Messages those notices said were dropped.
    pub lagged_dropped: u64,
    /// Frames that were neither loadgen messages nor `lagged` (snapshots, replies).
    pub other_frames: u64,
    /// Upgrades completed.
    pub handshakes: u64,
    /// Connections closed (churn) or lost (hold), by cause; failures to connect by cause.
    pub errors: BTreeMap<String, u64>,
    /// Delivery latency in µs (publish to arrival), or the server's `tsUs` to arrival.
    #[serde(with = "hist_b64")]
    pub latency: Histogram<u64>,
    /// Connect-to-101 latency in µs.
    #[serde(with = "hist_b64")]
    pub handshake: Histogram<u64>,
    /// Metrics: frame sizes in bytes.
    #[serde(with = "hist_b64")]
    pub frame_size: Histogram<u64>,
    /// Metrics: |interval between two frames on a connection − the tick interval|, in µs.
    #[serde(with = "hist_b64")]
    pub jitter: Histogram<u64>,
    /// Metrics: per tick (`seq`), its `tsUs` and the latest arrival seen, in Unix µs.
    pub ticks: BTreeMap<u64, (u64, u64)>,
}

impl Default for Window {
    fn default() -> Self {
        Self {
            deliveries: 0,
            bytes: 0,
            gaps: 0,
            reordered: 0,
            lagged: 0,
            lagged_dropped: 0,
            other_frames: 0,
            handshakes: 0,
            errors: BTreeMap::new(),
            latency: histogram(),
            handshake: histogram(),
            frame_size: histogram(),
            jitter: histogram(),
            ticks: BTreeMap::new(),
        }
    }
}

impl Window {
    /// Adds `other` into this window.
    pub fn add(&mut self, other: &Self) {
        self.deliveries += other.deliveries;
        self.bytes += other.bytes;
        self.gaps += other.gaps;
        self.reordered += other.reordered;
        self.lagged += other.lagged;
        self.lagged_dropped += other.lagged_dropped;
        self.other_frames += other.other_frames;
        self.handshakes += other.handshakes;
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.latency.add(&other.latency).expect("same bounds");
        self.handshake.add(&other.handshake).expect("same bounds");
        self.frame_size.add(&other.frame_size).expect("same bounds");
        self.jitter.add(&other.jitter).expect("same bounds");
        for (seq, (ts, last)) in &other.ticks {
            let e = self.ticks.entry(*seq).or_insert((*ts, *last));
            e.1 = e.1.max(*last);
        }
    }

    /// Counts one failure or loss of a connection.
    pub fn error(&mut self, cause: impl Into<String>) {
        *self.errors.entry(cause.into()).or_default() += 1;
    }

    /// Takes the counts, leaving an empty window (histograms keep their allocation).
    pub fn take(&mut self) -> Self {
        let mut out = Self::default();
        out.add(self);
        self.reset();
        out
    }

    /// Empties the window.
    pub fn reset(&mut self) {
        let (mut a, mut b, mut c, mut d) = (
            std::mem::replace(&mut self.latency, histogram()),
            std::mem::replace(&mut self.handshake, histogram()),
            std::mem::replace(&mut self.frame_size, histogram()),
            std::mem::replace(&mut self.jitter, histogram()),
        );
        for h in [&mut a, &mut b, &mut c, &mut d] {
            h.reset();
        }
        *self = Self {
            latency: a,
            handshake: b,
            frame_size: c,
            jitter: d,
            ..Self::default()
        };
    }
}

/// Percentiles of a histogram, in its unit.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct Percentiles {
    /// Values recorded.
    pub count: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// 99.9th percentile.
    pub p999: u64,
    /// Largest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

impl Percentiles {
    /// Summarises `h`.
    pub fn of(h: &Histogram<u64>) -> Self {
        if h.is_empty() {
            return Self::default();
        }
        Self {
            count: h.len(),
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            mean: (h.mean() * 10.0).round() / 10.0,
        }
    }
}

/// Serde for histograms: HdrHistogram's V2 encoding in base64, so reports merge exactly.
pub mod hist_b64 {
    use super::*;

    /// Serializes `h`.
    pub fn serialize<S: serde::Serializer>(h: &Histogram<u64>, s: S) -> Result<S::Ok, S::Error> {
        let mut bytes = Vec::new();
        V2Serializer::new()
            .serialize(h, &mut bytes)
            .map_err(|e| serde::ser::Error::custom(format!("{e:?}")))?;
        s.serialize_str(&base64::engine::general_purpose::STANDARD.encode(bytes))
    }

    /// Deserializes a histogram.
    pub fn deserialize<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Histogram<u64>, D::Error> {
        let text = String::deserialize(d)?;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(text)
            .map_err(serde::de::Error::custom)?;
        let h: Histogram<u64> = Deserializer::new()
            .deserialize(&mut &bytes[..])
            .map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        let mut out = histogram();
        out.add(&h)
            .map_err(|e| serde::de::Error::custom(format!("{e:?}")))?;
        Ok(out)
    }
}

/// One step of a ramp.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    /// Rate asked for, messages per second.
    pub rate: f64,
    /// Rate the publisher achieved.
    pub achieved: f64,
    /// Messages published in the step.
    pub published: u64,
    /// Deliveries in the step.
    pub deliveries: u64,
    /// Fraction of expected deliveries missing.
    pub loss: f64,
    /// Delivery latency in µs.
    pub latency_us: Percentiles,
    /// Whether p99 and loss stayed within the targets.
    pub held: bool,
}

/// A run's figures; printed for people and, with `--json`, as one JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// fanout, metrics, idle or churn.
    pub scenario: String,
    /// Subscribe URL.
    pub target: String,
    /// Publish URL (fanout).
    pub publish_url: Option<String>,
    /// Subscriber connections asked for.
    pub subscribers: usize,
    /// Subscriber connections that were open when measuring began.
    pub connected: usize,
    /// Loadgen processes that took part.
    pub processes: usize,
    /// Message size, bytes.
    pub size: usize,
    /// Rate asked for (messages or connections per second; 0 = as fast as possible).
    pub rate: f64,
    /// Seconds measured.
    pub duration_s: f64,
    /// Messages the publisher sent and the server accepted.
    pub published: u64,
    /// Publish requests that failed.
    pub publish_errors: u64,
    /// Messages received by subscribers (one per subscriber per message).
    pub deliveries: u64,
    /// Deliveries per second over the measured time.
    pub deliveries_per_sec: f64,
    /// Bytes received per second.
    pub bytes_per_sec: f64,
    /// Bytes received.
    pub bytes: u64,
    /// Expected deliveries that never arrived (published × connected − deliveries).
    pub lost: u64,
    /// `lost` over expected deliveries.
    pub lost_fraction: f64,
    /// Messages missing from subscribers' sequences at the end (skipped and never arrived).
    pub gaps: u64,
    /// Messages out of order.
    pub reordered: u64,
    /// `lagged` notices received.
    pub lagged: u64,
    /// Messages the `lagged` notices said were dropped.
    pub lagged_dropped: u64,
    /// Other frames received (snapshots, replies, metrics).
    pub other_frames: u64,
    /// Upgrades completed.
    pub handshakes: u64,
    /// Upgrades per second (churn).
    pub handshakes_per_sec: f64,
    /// Failures and lost connections, by cause.
    pub errors: BTreeMap<String, u64>,
    /// Delivery latency in µs (metrics: from the server's `tsUs`; churn: the handshake).
    pub latency_us: Percentiles,
    /// Connect-to-101 latency, µs.
    pub handshake_us: Percentiles,
    /// Metrics: frame sizes, bytes.
    pub frame_bytes: Option<Percentiles>,
    /// Metrics: tick jitter, µs.
    pub jitter_us: Option<Percentiles>,
    /// Metrics: per tick, from the server's `tsUs` to the last subscriber's arrival, µs.
    pub tick_to_last_us: Option<Percentiles>,
    /// Ramp steps.
    pub steps: Vec<Step>,
    /// Ramp: the highest rate that held.
    pub max_rate_held: Option<f64>,
    /// Loadgen's own CPU time, seconds (all its processes).
    pub loadgen_cpu_s: f64,
    /// Server CPU time during the measured time (with --server-pid).
    pub server_cpu_s: Option<f64>,
    /// Server CPU busy fraction of one core during the measured time.
    pub server_cpu_pct: Option<f64>,
    /// Server CPU seconds per million deliveries.
    pub server_cpu_s_per_million: Option<f64>,
    /// Server resident memory before connecting, bytes.
    pub server_rss_before: Option<u64>,
    /// Server resident memory with all connections held, bytes.
    pub server_rss_loaded: Option<u64>,
    /// Server resident memory after disconnecting, bytes.
    pub server_rss_after: Option<u64>,
    /// (loaded − before) / connected.
    pub server_rss_per_conn: Option<f64>,
    /// Server open file descriptors before and after (with --server-pid).
    pub server_fds: Option<(usize, usize)>,
    /// Histograms for `loadgen merge`.
    pub window: Option<Window>,
    /// What makes the figures doubtful (loadgen near 100% CPU).
    pub warnings: Vec<String>,
    /// Why the run failed, if it did.
    pub failures: Vec<String>,
}

impl Report {
    /// Copies a run's counts into the report; rates are over `elapsed` seconds.
    pub fn set_totals(&mut self, t: &Window, elapsed: f64) {
        let per_sec = |n: u64| (n as f64 / elapsed.max(1e-9)).round();
        self.duration_s = (elapsed * 1000.0).round() / 1000.0;
        self.deliveries = t.deliveries;
        self.deliveries_per_sec = per_sec(t.deliveries);
        self.bytes = t.bytes;
        self.bytes_per_sec = per_sec(t.bytes);
        self.gaps = t.gaps.max(0) as u64;
        self.reordered = t.reordered;
        self.lagged = t.lagged;
        self.lagged_dropped = t.lagged_dropped;
        self.other_frames = t.other_frames;
        self.handshakes = t.handshakes;
        self.errors = t.errors.clone();
        self.latency_us = Percentiles::of(&t.latency);
        self.handshake_us = Percentiles::of(&t.handshake);
        self.window = Some(t.clone());
    }

    /// Loss of a fan-out: every connected subscriber should have received every message
    /// published once; what did not arrive (in order or not) is lost.
    pub fn set_loss(&mut self) {
        let expected = self.published * self.connected as u64;
        self.lost = expected.saturating_sub(self.deliveries);
        self.lost_fraction = if expected > 0 {
            self.lost as f64 / expected as f64
        } else {
            0.0
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn windows_survive_json_and_add_up() {
        let mut w = Window {
            deliveries: 3,
            ..Window::default()
        };
        w.latency.record(120).unwrap();
        w.latency.record(5000).unwrap();
        w.error("refused");
        w.ticks.insert(7, (100, 250));
        let text = serde_json::to_string(&w).unwrap();
        let back: Window = serde_json::from_str(&text).unwrap();
        let mut sum = back.clone();
        sum.add(&w);
        assert_eq!(sum.deliveries, 6);
        assert_eq!(sum.latency.len(), 4);
        assert_eq!(sum.errors["refused"], 2);
        assert_eq!(Percentiles::of(&sum.latency).max, w.latency.max());
        assert_eq!(sum.ticks[&7], (100, 250));
        let taken = sum.take();
        assert_eq!(
            (taken.deliveries, sum.deliveries, sum.latency.len()),
            (6, 0, 0)
        );
    }
}
