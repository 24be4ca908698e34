//! The Prometheus text format (version 0.0.4) of the hub's counters, and of whatever else
//! plugs in an [`Exporter`] (the relay's).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::Response;

use super::Body;
use crate::broker::resident_memory;
use crate::hub::counters::DURATION_BUCKETS;
use crate::hub::HubProbe;

/// Adds its own metrics to `/metrics`.
pub(crate) trait Exporter: Send + Sync + std::fmt::Debug {
    /// Writes its metrics.
    fn export(&self, out: &mut Text);
}

/// Prometheus text being written.
#[derive(Debug, Default)]
pub(crate) struct Text(String);

impl Text {
    /// One metric with its help and type lines.
    pub(crate) fn metric(&mut self, name: &str, kind: &str, help: &str, value: f64) {
        let _ = writeln!(
            self.0,
            "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {value}"
        );
    }
}

/// The hub's own counters in the Prometheus text format (version 0.0.4).
pub(super) fn response(text: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

pub(crate) fn text(probe: &HubProbe, exporters: &[Arc<dyn Exporter>]) -> String {
    let s = probe.stats();
    let mut out = Text(String::with_capacity(4096));
    let mut metric = |name: &str, kind: &str, help: &str, value: f64| {
        out.metric(name, kind, help, value);
    };
    metric(
        "takhin_connections",
        "gauge",
        "Open WebSocket clients.",
        s.connections as f64,
    );
    let counters = [
        (
            "takhin_connections_accepted_total",
            "TCP connections accepted.",
            s.accepted_total,
        ),
        (
            "takhin_handshakes_total",
            "WebSocket handshakes completed.",
            s.handshakes_total,
        ),
        (
            "takhin_handshake_failures_total",
            "Requests refused before or during the upgrade.",
            s.handshake_failures_total,
        ),
        (
            "takhin_broadcasts_total",
            "Messages broadcast (the last seq).",
            probe.broadcasts(),
        ),
        (
            "takhin_deliveries_total",
            "Frames queued to clients.",
            s.deliveries_total,
        ),
        (
            "takhin_frames_sent_total",
            "Frames completely written to clients.",
            s.frames_sent_total,
        ),
        (
            "takhin_sent_bytes_total",
            "Bytes written to client sockets.",
            s.bytes_sent_total,
        ),
        (
            "takhin_writes_total",
            "Write calls that carried bytes.",
            s.writes_total,
        ),
        (
            "takhin_ring_dropped_total",
            "Frames dropped from full per-core rings.",
            s.ring_dropped_total,
        ),
        (
            "takhin_queue_dropped_total",
            "Frames dropped from full client queues.",
            s.queue_dropped_total,
        ),
        (
            "takhin_lagged_total",
            "lagged notices sent.",
            s.lagged_total,
        ),
        (
            "takhin_protocol_errors_total",
            "Clients closed for protocol or limit violations.",
            s.protocol_errors_total,
        ),
        (
            "takhin_invalid_messages_total",
            "Client text messages that were not JSON objects.",
            s.invalid_messages_total,
        ),
        (
            "takhin_pong_timeouts_total",
            "Clients closed after the pong wait.",
            s.pong_timeouts_total,
        ),
        (
            "takhin_write_timeouts_total",
            "Clients dropped after the write wait.",
            s.write_timeouts_total,
        ),
        (
            "takhin_panics_total",
            "Connection tasks that panicked.",
            s.panics_total,
        ),
        ("takhin_ticks_total", "Metrics ticks run.", s.ticks_total),
    ];
    for (name, help, value) in counters {
        metric(name, "counter", help, value as f64);
    }
    metric(
        "process_resident_memory_bytes",
        "gauge",
        "Resident memory size in bytes.",
        resident_memory() as f64,
    );
    metric(
        "process_open_fds",
        "gauge",
        "Number of open file descriptors.",
        std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count()) as f64,
    );
    for exporter in exporters {
        exporter.export(&mut out);
    }
    let histograms = [
        (
            "takhin_broadcast_duration_seconds",
            "Time to encode a broadcast and hand it to every core.",
            probe.broadcast_histogram(),
        ),
        (
            "takhin_tick_duration_seconds",
            "Time to build, encode and send one metrics tick.",
            probe.tick_histogram(),
        ),
    ];
    for (name, help, (buckets, count, sum)) in histograms {
        let out = &mut out.0;
        let _ = writeln!(out, "# HELP {name} {help}\n# TYPE {name} histogram");
        for (le, c) in DURATION_BUCKETS.iter().zip(buckets) {
            let _ = writeln!(out, "{name}_bucket{{le=\"{le}\"}} {c}");
        }
        let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\"}} {count}");
        let _ = writeln!(out, "{name}_sum {sum}\n{name}_count {count}");
    }
    out.0
}
