//! Per-shard counters, written only by their own shard (or by broadcasters for ring drops)
//! and summed on demand.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

macro_rules! counters {
    ($($(#[$doc:meta])* $name:ident),* $(,)?) => {
        /// One shard's counters: relaxed atomics on the shard's own cache lines.
        #[derive(Debug, Default)]
        pub(crate) struct ShardStats {
            $(pub(crate) $name: AtomicU64,)*
        }

        /// A snapshot of the hub's counters, summed over shards (or of one shard).
        #[derive(Debug, Clone, Default, PartialEq, Eq)]
        #[non_exhaustive]
        pub struct HubStats {
            $($(#[$doc])* pub $name: u64,)*
        }

        impl ShardStats {
            pub(crate) fn snapshot(&self) -> HubStats {
                HubStats { $($name: self.$name.load(Relaxed),)* }
            }
        }

        impl HubStats {
            pub(crate) fn add(&mut self, other: &Self) {
                $(self.$name += other.$name;)*
            }
        }
    };
}

counters! {
    /// Open WebSocket clients (after the handshake), the `activeConnections` figure.
    connections,
    /// TCP connections accepted.
    accepted_total,
    /// WebSocket handshakes completed.
    handshakes_total,
    /// Requests refused before or during the upgrade (bad head, wrong path, timeout).
    handshake_failures_total,
    /// Frames queued to clients by the distributor (one per subscribed client per broadcast).
    deliveries_total,
    /// Frames (broadcast and replies) completely written to sockets.
    frames_sent_total,
    /// Bytes written to client sockets.
    bytes_sent_total,
    /// Write calls (`sendmsg`) that carried at least one byte.
    writes_total,
    /// Frames dropped from this core's ring because it was full.
    ring_dropped_total,
    /// Frames dropped from client queues (drop-oldest).
    queue_dropped_total,
    /// `lagged` notices sent.
    lagged_total,
    /// Connections closed for breaking RFC 6455 or our limits (1002, 1007, 1009, 1008).
    protocol_errors_total,
    /// Text messages that were not JSON objects (logged, rate-limited, and ignored).
    invalid_messages_total,
    /// Clients closed for not answering within the pong wait.
    pong_timeouts_total,
    /// Clients dropped because their writes made no progress within the write wait.
    write_timeouts_total,
    /// Connection tasks that panicked (only that connection was closed).
    panics_total,
    /// Clients that connected with `?since=&epoch=` to resume.
    resumes_total,
    /// Resumes that ended `recovered: true` (every missed broadcast given back).
    resumes_recovered_total,
    /// Broadcasts replayed from the history to resuming clients.
    replayed_total,
    /// Broadcasts taken from the ring by this shard's distributor.
    broadcasts_total,
    /// Metrics ticks run (counted on shard 0's counters).
    ticks_total,
    /// Open WebSocket clients that negotiated permessage-deflate.
    deflate_clients,
    /// Frames compressed (a broadcast at most once for the whole hub, whatever the number of
    /// clients that take it compressed).
    deflate_frames_total,
    /// Payload bytes of the frames compressed.
    deflate_in_bytes_total,
    /// Bytes of the frames they became (header included; the plain payload when deflate did
    /// not make one smaller, which then goes plain).
    deflate_out_bytes_total,
    /// Bytes not written to sockets because a client took a frame compressed: for every
    /// compressed frame completely written, the plain frame's length minus its own.
    deflate_saved_bytes_total,
    /// Compressed client messages inflated.
    inflated_messages_total,
    /// TLS handshakes completed (WebSocket and HTTP connections alike).
    tls_handshakes_total,
    /// Of them, resumed with a session ticket (no certificate sent, no signature made).
    tls_resumed_total,
    /// Of them, TLS 1.2 (the rest are TLS 1.3).
    tls12_handshakes_total,
    /// TLS handshakes that failed or were abandoned: plain text or garbage on the TLS port,
    /// an untrusted or refused certificate on the client's side, a deadline passed.
    tls_handshake_failures_total,
}

/// Upper bounds of the duration histograms' buckets, in seconds (Prometheus `le`).
pub(crate) const DURATION_BUCKETS: [f64; 12] = [
    1e-6, 2.5e-6, 5e-6, 1e-5, 2.5e-5, 5e-5, 1e-4, 2.5e-4, 1e-3, 1e-2, 1e-1, 1.0,
];

/// A fixed-bucket histogram of durations for Prometheus: relaxed atomic counts.
#[derive(Debug, Default)]
pub(crate) struct DurationHistogram {
    buckets: [AtomicU64; DURATION_BUCKETS.len()],
    count: AtomicU64,
    sum_nanos: AtomicU64,
}

impl DurationHistogram {
    pub(crate) fn observe(&self, d: std::time::Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = DURATION_BUCKETS.iter().position(|&le| secs <= le) {
            self.buckets[i].fetch_add(1, Relaxed);
        }
        self.count.fetch_add(1, Relaxed);
        self.sum_nanos
            .fetch_add(u64::try_from(d.as_nanos()).unwrap_or(u64::MAX), Relaxed);
    }

    /// Cumulative bucket counts (as Prometheus wants them), the count and the sum in seconds.
    pub(crate) fn read(&self) -> ([u64; DURATION_BUCKETS.len()], u64, f64) {
        let mut cumulative = [0u64; DURATION_BUCKETS.len()];
        let mut total = 0;
        for (c, b) in cumulative.iter_mut().zip(&self.buckets) {
            total += b.load(Relaxed);
            *c = total;
        }
        let sum = self.sum_nanos.load(Relaxed) as f64 / 1e9;
        (cumulative, self.count.load(Relaxed), sum)
    }
}
