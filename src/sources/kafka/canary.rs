//! The opt-in latency canary (`--kafka-canary-topic`), after Strimzi's: after each poll that
//! succeeded, one small record is produced to every partition of the canary topic and fetched
//! back from the partition's leader. The produce acknowledgement's time gives
//! `latency.produceP*`, the whole trip's (record sent to record read back) `latency.fetchP*`,
//! as percentiles over the last minute's trips.
//!
//! The topic is created when the cluster lacks it: one partition per broker (so that, spread
//! by the cluster, every broker leads one), up to three replicas, records kept ten minutes.
//! A trip that fails is counted, logged once per change between failing and succeeding, and
//! shown in the snapshot's `source.canary.error`; the percentiles then cover the trips that
//! succeeded in the last minute, and are 0 when none did.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

use tracing::{info, warn};

use super::client::{Client, ClientError, Trip};
use super::model::ClusterState;
use crate::broker::{CanaryInfo, Latency};

/// How far back the percentiles look.
const WINDOW: Duration = Duration::from_secs(60);

/// The most trips kept (a minute of trips to a few hundred partitions at one poll a second,
/// which no canary topic has).
const MAX_SAMPLES: usize = 16_384;

/// The canary topic's configs when the hub creates it: records kept ten minutes, in small
/// segments so that they can go (Strimzi's canary uses the same).
const TOPIC_CONFIGS: &[(&str, &str)] = &[("retention.ms", "600000"), ("segment.bytes", "16384")];

/// The canary's state on the ticker's thread.
#[derive(Debug)]
pub(crate) struct Canary {
    topic: String,
    /// (when, produce, end to end) of the trips of the last [`WINDOW`].
    samples: VecDeque<(Instant, Duration, Duration)>,
    /// Records sent so far (numbers each record's value).
    sent: u64,
    status: CanaryStatus,
}

/// What the snapshot and `/metrics` say of the canary.
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct CanaryStatus {
    pub(crate) topic: String,
    pub(crate) round_trips: u64,
    pub(crate) errors: u64,
    /// While trips fail: the last failure.
    pub(crate) error: Option<String>,
    /// The last trip that succeeded.
    pub(crate) last: Option<Trip>,
}

impl CanaryStatus {
    pub(crate) fn info(&self) -> CanaryInfo {
        CanaryInfo {
            topic: self.topic.clone(),
            round_trips: self.round_trips,
            errors: self.errors,
            error: self.error.clone(),
        }
    }
}

impl Canary {
    pub(crate) fn new(topic: String) -> Self {
        Self {
            status: CanaryStatus {
                topic: topic.clone(),
                ..CanaryStatus::default()
            },
            topic,
            samples: VecDeque::new(),
            sent: 0,
        }
    }

    pub(crate) fn status(&self) -> &CanaryStatus {
        &self.status
    }

    /// One round of trips, routed by the poll that just ran (`state`); creates the topic
    /// instead when the cluster lacks it.
    pub(crate) fn run(&mut self, client: &mut Client, state: &ClusterState) {
        let Some(topic) = state.topics.get(&self.topic) else {
            self.create(client, state.brokers.len());
            return;
        };
        for p in &topic.partitions {
            if p.leader < 0 {
                self.failed(&ClientError::Leaderless {
                    what: format!("{}/{}", self.topic, p.id),
                    role: "leader",
                });
                continue;
            }
            self.sent += 1;
            let value = format!("takhin canary {}", self.sent);
            match client.canary_trip(&self.topic, p.id, p.leader, value.as_bytes()) {
                Ok(trip) => self.succeeded(trip, Instant::now()),
                Err(e) => self.failed(&e),
            }
        }
    }

    fn create(&mut self, client: &mut Client, brokers: usize) {
        let partitions = i32::try_from(brokers.max(1)).unwrap_or(1);
        let replicas = i16::try_from(brokers.clamp(1, 3)).unwrap_or(1);
        match client.create_topic_with(&self.topic, partitions, replicas, TOPIC_CONFIGS) {
            Ok(()) => info!(
                topic = %self.topic, partitions, replicas,
                "kafka canary: topic created"
            ),
            Err(e) => self.failed(&e),
        }
    }

    fn succeeded(&mut self, trip: Trip, now: Instant) {
        if self.status.error.take().is_some() {
            info!(topic = %self.topic, "kafka canary: round trips succeed again");
        }
        self.status.round_trips += 1;
        self.status.last = Some(trip);
        if self.samples.len() == MAX_SAMPLES {
            self.samples.pop_front();
        }
        self.samples.push_back((now, trip.produce, trip.end_to_end));
    }

    fn failed(&mut self, e: &ClientError) {
        self.status.errors += 1;
        if self.status.error.is_none() {
            warn!(topic = %self.topic, error = %e, "kafka canary: round trips fail");
        }
        self.status.error = Some(e.to_string());
    }

    /// Percentiles of the last minute's trips, in milliseconds (0 when there were none).
    pub(crate) fn latency(&mut self, now: Instant) -> Latency {
        while self
            .samples
            .front()
            .is_some_and(|(at, ..)| now.saturating_duration_since(*at) > WINDOW)
        {
            self.samples.pop_front();
        }
        let mut produce: Vec<Duration> = self.samples.iter().map(|s| s.1).collect();
        let mut trip: Vec<Duration> = self.samples.iter().map(|s| s.2).collect();
        produce.sort_unstable();
        trip.sort_unstable();
        Latency {
            produce_p50: percentile(&produce, 50),
            produce_p95: percentile(&produce, 95),
            produce_p99: percentile(&produce, 99),
            fetch_p50: percentile(&trip, 50),
            fetch_p95: percentile(&trip, 95),
            fetch_p99: percentile(&trip, 99),
        }
    }
}

/// The nearest-rank percentile of sorted durations, in milliseconds (0 for none).
fn percentile(sorted: &[Duration], p: usize) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = (p * sorted.len()).div_ceil(100).max(1);
    sorted[rank - 1].as_secs_f64() * 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn trip(produce: u64, end_to_end: u64) -> Trip {
        Trip {
            produce: ms(produce),
            end_to_end: ms(end_to_end),
            offset: 0,
        }
    }

    #[test]
    fn nearest_rank_percentiles() {
        let sorted: Vec<Duration> = (1..=100).map(ms).collect();
        assert_eq!(percentile(&sorted, 50), 50.0);
        assert_eq!(percentile(&sorted, 95), 95.0);
        assert_eq!(percentile(&sorted, 99), 99.0);
        assert_eq!(percentile(&[ms(7)], 50), 7.0);
        assert_eq!(percentile(&[ms(7)], 99), 7.0);
        assert_eq!(percentile(&[], 99), 0.0);
    }

    #[test]
    fn percentiles_cover_the_last_minute_of_trips() {
        let mut c = Canary::new("canary".into());
        let t0 = Instant::now();
        assert_eq!(c.latency(t0), Latency::default(), "no trip yet: 0");
        c.succeeded(trip(100, 200), t0);
        for i in 1..=10 {
            c.succeeded(trip(i, 2 * i), t0 + WINDOW / 2);
        }
        let l = c.latency(t0 + WINDOW / 2);
        assert_eq!((l.produce_p50, l.produce_p99), (6.0, 100.0));
        assert_eq!((l.fetch_p50, l.fetch_p99), (12.0, 200.0));
        let l = c.latency(t0 + WINDOW + ms(1));
        assert_eq!(
            (l.produce_p50, l.produce_p99),
            (5.0, 10.0),
            "the old trip left"
        );
        assert_eq!(c.status().round_trips, 11);
        assert_eq!(c.latency(t0 + 3 * WINDOW), Latency::default(), "all old: 0");
    }

    #[test]
    fn failures_are_counted_and_shown_until_a_trip_succeeds() {
        let mut c = Canary::new("canary".into());
        let e = ClientError::Leaderless {
            what: "canary/0".into(),
            role: "leader",
        };
        c.failed(&e);
        c.failed(&e);
        let s = c.status().info();
        assert_eq!((s.errors, s.round_trips), (2, 0));
        assert!(s.error.unwrap().contains("canary/0 has no leader"));
        c.succeeded(trip(1, 2), Instant::now());
        let s = c.status().info();
        assert_eq!((s.errors, s.round_trips, s.error), (2, 1, None));
    }
}
