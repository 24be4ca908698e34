//! The Prometheus text format (version 0.0.4) of the hub's counters, and of whatever else
//! plugs in an [`Exporter`] (the relay's).

use std::fmt::Write as _;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::header::{self, HeaderValue};
use hyper::Response;

use super::Body;
use crate::hub::counters::DURATION_BUCKETS;
use crate::hub::HubProbe;
use crate::process::{open_fds, resident_memory};

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

/// `/metrics`: Prometheus text (version 0.0.4) with its content type.
pub(super) fn response(text: String) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(text)));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    resp
}

/// The hub's own counters, the process's memory and descriptors, and every exporter's
/// metrics, in the Prometheus text format.
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
    metric(
        "takhin_deflate_clients",
        "gauge",
        "Open WebSocket clients that negotiated permessage-deflate.",
        s.deflate_clients as f64,
    );
    let (frames, bytes) = probe.history();
    metric(
        "takhin_history_frames",
        "gauge",
        "Broadcasts held for clients that resume.",
        frames as f64,
    );
    metric(
        "takhin_history_bytes",
        "gauge",
        "Encoded bytes of the broadcasts held for clients that resume.",
        bytes as f64,
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
            "takhin_resumes_total",
            "Clients that connected with since and epoch to resume.",
            s.resumes_total,
        ),
        (
            "takhin_resumes_recovered_total",
            "Resumes that gave back every missed broadcast.",
            s.resumes_recovered_total,
        ),
        (
            "takhin_replayed_total",
            "Broadcasts replayed from the history to resuming clients.",
            s.replayed_total,
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
        (
            "takhin_deflate_frames_total",
            "Frames compressed for permessage-deflate clients (once per broadcast, not per client).",
            s.deflate_frames_total,
        ),
        (
            "takhin_deflate_in_bytes_total",
            "Payload bytes of the frames compressed.",
            s.deflate_in_bytes_total,
        ),
        (
            "takhin_deflate_out_bytes_total",
            "Bytes of the frames they became.",
            s.deflate_out_bytes_total,
        ),
        (
            "takhin_deflate_saved_bytes_total",
            "Bytes not written to sockets because clients took frames compressed.",
            s.deflate_saved_bytes_total,
        ),
        (
            "takhin_inflated_messages_total",
            "Compressed client messages inflated.",
            s.inflated_messages_total,
        ),
        (
            "takhin_tls_handshakes_total",
            "TLS handshakes completed.",
            s.tls_handshakes_total,
        ),
        (
            "takhin_tls_resumed_total",
            "TLS handshakes resumed with a session ticket.",
            s.tls_resumed_total,
        ),
        (
            "takhin_tls12_handshakes_total",
            "TLS handshakes completed with TLS 1.2 (the rest are TLS 1.3).",
            s.tls12_handshakes_total,
        ),
        (
            "takhin_tls_handshake_failures_total",
            "TLS handshakes that failed or were abandoned.",
            s.tls_handshake_failures_total,
        ),
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
        open_fds() as f64,
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

#[cfg(test)]
mod tests {
    use std::sync::atomic::Ordering::Relaxed;
    use std::time::Duration;

    use super::*;
    use crate::hub::{Broadcaster, HubShared};
    use crate::protocol::Channel;

    #[derive(Debug)]
    struct Extra;

    impl Exporter for Extra {
        fn export(&self, out: &mut Text) {
            out.metric("extra_up", "gauge", "An exporter's own line.", 1.0);
        }
    }

    /// The value of an unlabelled sample, and that its HELP and TYPE lines come first.
    fn sample(text: &str, name: &str, kind: &str) -> f64 {
        let at = text
            .find(&format!("# TYPE {name} {kind}\n"))
            .unwrap_or_else(|| panic!("no TYPE line for {name}:\n{text}"));
        assert!(text[..at].ends_with('\n') && text[..at].contains(&format!("# HELP {name} ")));
        let line = text[at..].lines().nth(1).unwrap();
        let (n, v) = line.split_once(' ').unwrap();
        assert_eq!(n, name);
        v.parse().unwrap()
    }

    #[test]
    fn counters_of_every_shard_add_up_in_the_text_format() {
        let shared = Arc::new(HubShared::new(2, 8));
        shared.stats[0].connections.fetch_add(3, Relaxed);
        shared.stats[1].connections.fetch_add(4, Relaxed);
        shared.stats[1].lagged_total.fetch_add(5, Relaxed);
        let b = Broadcaster::new(shared.clone());
        b.publish(&Channel::Events, "n", &1).unwrap();
        b.publish(&Channel::Events, "n", &2).unwrap();
        let exporters: Vec<Arc<dyn Exporter>> = vec![Arc::new(Extra)];
        let text = text(&HubProbe::new(shared), &exporters);
        assert_eq!(sample(&text, "takhin_connections", "gauge"), 7.0);
        assert_eq!(sample(&text, "takhin_lagged_total", "counter"), 5.0);
        assert_eq!(sample(&text, "takhin_broadcasts_total", "counter"), 2.0);
        assert!(sample(&text, "process_resident_memory_bytes", "gauge") > 0.0);
        assert_eq!(sample(&text, "extra_up", "gauge"), 1.0);
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let (name, value) = line.rsplit_once(' ').unwrap();
            assert!(value.parse::<f64>().is_ok(), "{line}");
            assert!(
                name.starts_with("takhin_") || name.starts_with("process_") || name == "extra_up"
            );
        }
    }

    #[test]
    fn histograms_are_cumulative_and_end_with_inf_sum_and_count() {
        let shared = Arc::new(HubShared::new(1, 8));
        let probe = HubProbe::new(shared);
        probe.record_tick(Duration::from_micros(3));
        probe.record_tick(Duration::from_millis(5));
        let text = text(&probe, &[]);
        let name = "takhin_tick_duration_seconds";
        assert!(text.contains(&format!("# TYPE {name} histogram\n")));
        let buckets: Vec<(String, u64)> = text
            .lines()
            .filter_map(|l| l.strip_prefix(&format!("{name}_bucket{{le=\"")))
            .map(|l| {
                let (le, n) = l.split_once("\"} ").unwrap();
                (le.to_owned(), n.parse().unwrap())
            })
            .collect();
        assert_eq!(buckets.len(), DURATION_BUCKETS.len() + 1);
        assert!(buckets.windows(2).all(|w| w[0].1 <= w[1].1), "{buckets:?}");
        assert_eq!(buckets[0], ("0.000001".to_owned(), 0));
        assert_eq!(buckets.last().unwrap(), &("+Inf".to_owned(), 2));
        let le = |b: &str| buckets.iter().find(|(l, _)| l == b).unwrap().1;
        assert_eq!((le("0.000005"), le("0.001"), le("0.01")), (1, 1, 2));
        assert!(text.contains(&format!("\n{name}_count 2\n")));
        let sum: f64 = text
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}_sum ")))
            .unwrap()
            .parse()
            .unwrap();
        assert!((sum - 0.005003).abs() < 1e-9, "{sum}");
    }
}
