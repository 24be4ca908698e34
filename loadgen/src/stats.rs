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
    /// Loadgen messages received (one per subscriber per message), metrics ticks, and
    /// compressed messages counted unread (`opaque`).
    pub deliveries: u64,
    /// Payload bytes of every frame received, as they came on the wire (compressed or not).
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
    /// Compression: see [`DeflateWindow`].
    #[serde(default)]
    pub deflate: DeflateWindow,
    /// Connections closed (churn) or lost (hold), by cause; failures to connect by cause.
    pub errors: BTreeMap<String, u64>,
    /// Delivery latency in µs (publish to arrival), or the server's `tsUs` to arrival.
    #[serde(with = "hist_b64")]
    pub latency: Histogram<u64>,
    /// Connect-to-101 latency in µs.
    #[serde(with = "hist_b64")]
    pub handshake: Histogram<u64>,
    /// Metrics: frame sizes in bytes (the message as read: inflated, if it was compressed).
    #[serde(with = "hist_b64")]
    pub frame_size: Histogram<u64>,
    /// Metrics runs and with --deflate: bytes of each data message on the wire (its frames'
    /// payloads, compressed or not).
    #[serde(with = "hist_b64", default = "histogram")]
    pub wire_size: Histogram<u64>,
    /// Metrics: |interval between two frames on a connection − the tick interval|, in µs.
    #[serde(with = "hist_b64")]
    pub jitter: Histogram<u64>,
    /// Metrics: per tick (`seq`), its `tsUs` and the latest arrival seen, in Unix µs.
    pub ticks: BTreeMap<u64, (u64, u64)>,
    /// Resume: what the reconnections saw (absent in other scenarios).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resume: Option<ResumeWindow>,
    /// `wss://`: how the TLS handshakes went (absent over plain connections).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tls: Option<TlsWindow>,
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
            deflate: DeflateWindow::default(),
            errors: BTreeMap::new(),
            latency: histogram(),
            handshake: histogram(),
            frame_size: histogram(),
            wire_size: histogram(),
            jitter: histogram(),
            ticks: BTreeMap::new(),
            resume: None,
            tls: None,
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
        self.deflate.add(&other.deflate);
        for (k, v) in &other.errors {
            *self.errors.entry(k.clone()).or_default() += v;
        }
        self.latency.add(&other.latency).expect("same bounds");
        self.handshake.add(&other.handshake).expect("same bounds");
        self.frame_size.add(&other.frame_size).expect("same bounds");
        self.wire_size.add(&other.wire_size).expect("same bounds");
        self.jitter.add(&other.jitter).expect("same bounds");
        for (seq, (ts, last)) in &other.ticks {
            let e = self.ticks.entry(*seq).or_insert((*ts, *last));
            e.1 = e.1.max(*last);
        }
        if let Some(r) = &other.resume {
            self.resume_mut().add(r);
        }
        if let Some(t) = &other.tls {
            self.tls_mut().add(t);
        }
    }

    /// The TLS counts, created on first use.
    pub fn tls_mut(&mut self) -> &mut TlsWindow {
        self.tls.get_or_insert_with(TlsWindow::default)
    }

    /// The resume counts, created on first use.
    pub fn resume_mut(&mut self) -> &mut ResumeWindow {
        self.resume.get_or_insert_with(ResumeWindow::default)
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
        let (mut a, mut b, mut c, mut d, mut e) = (
            std::mem::replace(&mut self.latency, histogram()),
            std::mem::replace(&mut self.handshake, histogram()),
            std::mem::replace(&mut self.frame_size, histogram()),
            std::mem::replace(&mut self.wire_size, histogram()),
            std::mem::replace(&mut self.jitter, histogram()),
        );
        for h in [&mut a, &mut b, &mut c, &mut d, &mut e] {
            h.reset();
        }
        *self = Self {
            latency: a,
            handshake: b,
            frame_size: c,
            wire_size: d,
            jitter: e,
            ..Self::default()
        };
    }
}

/// What permessage-deflate brought: connections that negotiated it, and the compressed
/// messages, read (inflated) or not.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct DeflateWindow {
    /// Upgrades whose answer accepted permessage-deflate.
    pub upgrades: u64,
    /// Of those, connections that inflate (`--deflate-sample`).
    pub sampled: u64,
    /// Compressed messages received (RSV1), complete: `inflated` + `opaque`, plus in metrics
    /// runs the snapshots of the connections that do not inflate.
    pub compressed: u64,
    /// Compressed messages inflated and read (on sampled connections).
    pub inflated: u64,
    /// Compressed messages counted as deliveries unread (on the other connections).
    pub opaque: u64,
    /// Bytes on the wire of the inflated messages (their compressed payloads).
    pub inflated_wire_bytes: u64,
    /// Bytes of the inflated messages once inflated.
    pub inflated_bytes: u64,
}

impl DeflateWindow {
    /// Adds `other` into this window.
    pub fn add(&mut self, other: &Self) {
        self.upgrades += other.upgrades;
        self.sampled += other.sampled;
        self.compressed += other.compressed;
        self.inflated += other.inflated;
        self.opaque += other.opaque;
        self.inflated_wire_bytes += other.inflated_wire_bytes;
        self.inflated_bytes += other.inflated_bytes;
    }
}

/// The TLS handshakes of upgraded `wss://` connections.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TlsWindow {
    /// Full handshakes.
    pub full: u64,
    /// Resumed handshakes (a session the server remembered).
    pub resumed: u64,
    /// Handshakes by protocol version and cipher suite, e.g. `TLSv1_3 TLS13_AES_256_GCM_SHA384`.
    pub params: BTreeMap<String, u64>,
}

impl TlsWindow {
    /// Counts one handshake.
    pub fn count(&mut self, resumed: bool, params: String) {
        if resumed {
            self.resumed += 1;
        } else {
            self.full += 1;
        }
        *self.params.entry(params).or_default() += 1;
    }

    /// Adds `other` into this window.
    pub fn add(&mut self, other: &Self) {
        self.full += other.full;
        self.resumed += other.resumed;
        for (k, v) in &other.params {
            *self.params.entry(k.clone()).or_default() += v;
        }
    }
}

/// What TLS did in a `wss://` run.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct TlsReport {
    /// Session resumption was offered (not `--tls-no-resume`).
    pub resumption: bool,
    /// The server's certificate was not checked (`--tls-insecure`).
    pub insecure: bool,
    /// Full handshakes of upgraded connections.
    pub full: u64,
    /// Resumed handshakes of upgraded connections.
    pub resumed: u64,
    /// Handshakes by protocol version and cipher suite.
    pub params: BTreeMap<String, u64>,
}

/// What the connections of a resume run counted: one `recovered` notice (or its absence) per
/// client that reconnected.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ResumeWindow {
    /// Connections dropped for the storm, each to reconnect with its `since` and `epoch`.
    pub away: u64,
    /// Resumes answered `recovered: true`.
    pub recovered: u64,
    /// Resumes answered `recovered: false`.
    pub not_recovered: u64,
    /// Reconnections that failed, or ended, before their `recovered` notice.
    pub unanswered: u64,
    /// Frames sent twice or out of order: after `recovered`, a `seq` not above the highest one
    /// the client had (its `since`, then the replayed frames); in a replay that recovered, a
    /// `seq` not above the previous one.
    pub duplicates: u64,
    /// The server's `replayed` count, smallest and largest (exact; the histogram rounds).
    pub replayed_min: Option<u64>,
    /// See `replayed_min`.
    pub replayed_max: Option<u64>,
    /// Loadgen messages a client received before its `recovered`, smallest and largest.
    pub messages_min: Option<u64>,
    /// See `messages_min`.
    pub messages_max: Option<u64>,
    /// The server's `replayed` counts added up.
    pub replayed_total: u64,
    /// Latest arrival of a `recovered` notice, `CLOCK_MONOTONIC` ns.
    pub last_ns: u64,
    /// From a client's reconnect (its connect call) to its `recovered` notice, µs.
    #[serde(with = "hist_b64")]
    pub recover_us: Histogram<u64>,
    /// The server's `replayed` count per client.
    #[serde(with = "hist_b64")]
    pub replayed: Histogram<u64>,
    /// Loadgen messages per client before its `recovered`.
    #[serde(with = "hist_b64")]
    pub messages: Histogram<u64>,
}

impl Default for ResumeWindow {
    fn default() -> Self {
        Self {
            away: 0,
            recovered: 0,
            not_recovered: 0,
            unanswered: 0,
            duplicates: 0,
            replayed_min: None,
            replayed_max: None,
            messages_min: None,
            messages_max: None,
            replayed_total: 0,
            last_ns: 0,
            recover_us: histogram(),
            replayed: histogram(),
            messages: histogram(),
        }
    }
}

impl ResumeWindow {
    /// Adds `other` into this window.
    pub fn add(&mut self, other: &Self) {
        self.away += other.away;
        self.recovered += other.recovered;
        self.not_recovered += other.not_recovered;
        self.unanswered += other.unanswered;
        self.duplicates += other.duplicates;
        self.replayed_min = min_of(self.replayed_min, other.replayed_min);
        self.replayed_max = self.replayed_max.max(other.replayed_max);
        self.messages_min = min_of(self.messages_min, other.messages_min);
        self.messages_max = self.messages_max.max(other.messages_max);
        self.replayed_total += other.replayed_total;
        self.last_ns = self.last_ns.max(other.last_ns);
        self.recover_us.add(&other.recover_us).expect("same bounds");
        self.replayed.add(&other.replayed).expect("same bounds");
        self.messages.add(&other.messages).expect("same bounds");
    }

    /// One client's `recovered` notice, `latency_us` after its reconnect began; `messages`
    /// loadgen messages came before it.
    pub fn notice(&mut self, recovered: bool, replayed: u64, messages: u64, latency_us: u64) {
        if recovered {
            self.recovered += 1;
        } else {
            self.not_recovered += 1;
        }
        self.replayed_total += replayed;
        let _ = self.recover_us.record(latency_us.max(1));
        let _ = self.replayed.record(replayed);
        let _ = self.messages.record(messages);
        self.replayed_min = min_of(self.replayed_min, Some(replayed));
        self.replayed_max = self.replayed_max.max(Some(replayed));
        self.messages_min = min_of(self.messages_min, Some(messages));
        self.messages_max = self.messages_max.max(Some(messages));
    }

    /// Reconnections that ended one way or the other.
    pub fn ended(&self) -> u64 {
        self.recovered + self.not_recovered + self.unanswered
    }
}

/// The smaller of two optional values (`None` counts as no value, not as the smallest).
fn min_of(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// Smallest, median and largest of a count per client.
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq, Eq)]
pub struct Spread {
    /// Smallest.
    pub min: u64,
    /// Median (within 0.1 %).
    pub median: u64,
    /// Largest.
    pub max: u64,
}

impl Spread {
    fn of(min: Option<u64>, h: &Histogram<u64>, max: Option<u64>) -> Self {
        Self {
            min: min.unwrap_or(0),
            median: if h.is_empty() {
                0
            } else {
                h.value_at_quantile(0.5)
            },
            max: max.unwrap_or(0),
        }
    }
}

/// What a resume storm measured.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct ResumeReport {
    /// Messages published (and accepted) while the subscribers were away.
    pub missed: u64,
    /// Subscribers that disconnected and reconnected with `since` and `epoch`.
    pub reconnected: u64,
    /// Resumes answered `recovered: true`.
    pub recovered: u64,
    /// Resumes answered `recovered: false`.
    pub not_recovered: u64,
    /// Reconnections that failed or ended before their `recovered` notice.
    pub unanswered: u64,
    /// From a client's reconnect to its `recovered` notice, µs.
    pub recover_us: Percentiles,
    /// The server's `replayed` count per client.
    pub replayed: Spread,
    /// Loadgen messages each client received before its `recovered` (should be `missed`).
    pub replayed_messages: Spread,
    /// Frames sent twice or out of order (must be 0).
    pub duplicates: u64,
    /// Resumed clients that received the message published after the storm.
    pub live_after: u64,
    /// Seconds from the reconnections' start to the last `recovered` notice.
    pub storm_s: f64,
}

impl ResumeReport {
    /// Fills the counts of the clients' windows in (`missed`, `live_after`, `storm_s` are the
    /// controller's).
    pub fn set_counts(&mut self, w: &ResumeWindow) {
        self.reconnected = w.away;
        self.recovered = w.recovered;
        self.not_recovered = w.not_recovered;
        self.unanswered = w.unanswered;
        self.duplicates = w.duplicates;
        self.recover_us = Percentiles::of(&w.recover_us);
        self.replayed = Spread::of(w.replayed_min, &w.replayed, w.replayed_max);
        self.replayed_messages = Spread::of(w.messages_min, &w.messages, w.messages_max);
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
    /// Publish requests written in the step (each of up to `--batch` messages).
    #[serde(default)]
    pub requests: u64,
    /// Deliveries in the step.
    pub deliveries: u64,
    /// Fraction of expected deliveries missing.
    pub loss: f64,
    /// Delivery latency in µs.
    pub latency_us: Percentiles,
    /// Whether p99 and loss stayed within the targets.
    pub held: bool,
}

/// What permessage-deflate did in a run (`--deflate`).
#[derive(Debug, Clone, Default, Serialize, Deserialize, PartialEq)]
pub struct DeflateReport {
    /// `--deflate-sample`: every Nth connection of each thread inflates.
    pub sample: u32,
    /// Upgrades whose answer accepted permessage-deflate (compare `handshakes`).
    pub connections: u64,
    /// Of those, connections that inflated what they received.
    pub sampled: u64,
    /// Compressed messages received.
    pub compressed: u64,
    /// Compressed messages inflated and read like any other.
    pub inflated: u64,
    /// Compressed messages counted as deliveries unread (included in `deliveries`).
    pub opaque: u64,
    /// Bytes on the wire of the inflated messages (compressed payloads).
    pub inflated_wire_bytes: u64,
    /// The same messages' bytes once inflated.
    pub inflated_bytes: u64,
    /// Mean bytes on the wire per inflated message.
    pub wire_bytes_per_message: f64,
    /// Mean bytes per inflated message once inflated.
    pub inflated_bytes_per_message: f64,
    /// `inflated_bytes` / `inflated_wire_bytes` (0 when nothing was inflated).
    pub ratio: f64,
}

impl DeflateReport {
    /// Fills the counts in (`sample` is the option's).
    pub fn set_counts(&mut self, w: &DeflateWindow) {
        let per = |a: u64, b: u64| {
            if b == 0 {
                0.0
            } else {
                (a as f64 / b as f64 * 100.0).round() / 100.0
            }
        };
        self.connections = w.upgrades;
        self.sampled = w.sampled;
        self.compressed = w.compressed;
        self.inflated = w.inflated;
        self.opaque = w.opaque;
        self.inflated_wire_bytes = w.inflated_wire_bytes;
        self.inflated_bytes = w.inflated_bytes;
        self.wire_bytes_per_message = per(w.inflated_wire_bytes, w.inflated);
        self.inflated_bytes_per_message = per(w.inflated_bytes, w.inflated);
        self.ratio = per(w.inflated_bytes, w.inflated_wire_bytes);
    }
}

/// A run's figures; printed for people and, with `--json`, as one JSON line.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Report {
    /// fanout, metrics, idle, churn or resume.
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
    /// Rate asked for (messages or connections per second, resume: reconnections per second;
    /// 0 = as fast as possible).
    pub rate: f64,
    /// Seconds measured.
    pub duration_s: f64,
    /// Messages the publisher sent and the server accepted.
    pub published: u64,
    /// Publish requests that failed.
    pub publish_errors: u64,
    /// Failed publish requests by cause.
    #[serde(default)]
    pub publish_error_causes: BTreeMap<String, u64>,
    /// Publish requests written (each of up to `batch` messages), whatever their answer.
    #[serde(default)]
    pub requests: u64,
    /// Messages per publish request (`--batch`), when this process published.
    #[serde(default)]
    pub batch: Option<usize>,
    /// Publish requests in flight per publishing connection (`--pipeline`), when this process
    /// published.
    #[serde(default)]
    pub pipeline: Option<usize>,
    /// Messages received by subscribers (one per subscriber per message), `deflate.opaque`
    /// included.
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
    /// Metrics: frame sizes, bytes (as read: inflated, if compressed).
    pub frame_bytes: Option<Percentiles>,
    /// Metrics runs and with --deflate: bytes on the wire per data message (its frames'
    /// payloads, compressed or not).
    #[serde(default)]
    pub wire_bytes: Option<Percentiles>,
    /// With --deflate: what was negotiated and compressed.
    #[serde(default)]
    pub deflate: Option<DeflateReport>,
    /// `wss://`: the TLS handshakes (`handshake_us` includes them).
    #[serde(default)]
    pub tls: Option<TlsReport>,
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
    /// Resume: the storm's figures.
    pub resume: Option<ResumeReport>,
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
        if !t.wire_size.is_empty() {
            self.wire_bytes = Some(Percentiles::of(&t.wire_size));
        }
        if self.deflate.is_some() || t.deflate.upgrades > 0 {
            self.deflate
                .get_or_insert_with(DeflateReport::default)
                .set_counts(&t.deflate);
        }
        if self.tls.is_some() || t.tls.is_some() {
            let r = self.tls.get_or_insert_with(TlsReport::default);
            let w = t.tls.clone().unwrap_or_default();
            (r.full, r.resumed, r.params) = (w.full, w.resumed, w.params);
        }
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
        assert!(taken.resume.is_none() && !text.contains("resume"));
    }

    #[test]
    fn deflate_counts_add_up_and_make_a_ratio() {
        let mut w = Window {
            deflate: DeflateWindow {
                upgrades: 4,
                sampled: 2,
                compressed: 10,
                inflated: 4,
                opaque: 6,
                inflated_wire_bytes: 4 * 25_000,
                inflated_bytes: 4 * 185_000,
            },
            ..Window::default()
        };
        w.wire_size.record(25_000).unwrap();
        let back: Window = serde_json::from_str(&serde_json::to_string(&w).unwrap()).unwrap();
        let mut sum = back.clone();
        sum.add(&w);
        assert_eq!((sum.deflate.upgrades, sum.deflate.opaque), (8, 12));
        assert_eq!(sum.wire_size.len(), 2);
        let mut r = Report {
            deflate: Some(DeflateReport {
                sample: 2,
                ..DeflateReport::default()
            }),
            ..Report::default()
        };
        r.set_totals(&sum, 1.0);
        let d = r.deflate.as_ref().unwrap();
        assert_eq!(
            (d.sample, d.connections, d.inflated, d.opaque),
            (2, 8, 8, 12)
        );
        assert_eq!(
            (d.wire_bytes_per_message, d.inflated_bytes_per_message),
            (25_000.0, 185_000.0)
        );
        assert_eq!(d.ratio, 7.4);
        assert_eq!(r.wire_bytes.as_ref().unwrap().count, 2);
        // A window of an older loadgen (no deflate counts, no wire sizes) still reads.
        let mut old: serde_json::Value = serde_json::to_value(Window::default()).unwrap();
        old.as_object_mut().unwrap().remove("deflate");
        old.as_object_mut().unwrap().remove("wire_size");
        let old: Window = serde_json::from_value(old).unwrap();
        assert_eq!(old.deflate, DeflateWindow::default());
        let mut plain = Report::default();
        plain.set_totals(&old, 1.0);
        assert!(plain.deflate.is_none() && plain.wire_bytes.is_none());
    }

    #[test]
    fn resume_counts_survive_json_and_add_up() {
        let mut a = Window::default();
        a.resume_mut().away = 2;
        a.resume_mut().notice(true, 20, 20, 1500);
        a.resume_mut().notice(false, 0, 0, 900);
        let mut b = Window::default();
        b.resume_mut().away = 1;
        b.resume_mut().unanswered = 1;
        let back: Window = serde_json::from_str(&serde_json::to_string(&a).unwrap()).unwrap();
        b.add(&back);
        let r = b.resume.as_ref().unwrap();
        assert_eq!((r.away, r.ended(), r.recovered), (3, 3, 1));
        let mut report = ResumeReport::default();
        report.set_counts(r);
        assert_eq!(
            report.replayed,
            Spread {
                min: 0,
                median: 0,
                max: 20
            }
        );
        assert_eq!((report.recover_us.count, report.recover_us.max), (2, 1500));
    }
}
