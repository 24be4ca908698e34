//! What a poll gives, computed once per poll: each listed topic's stats and offsets, every
//! group's lag in offsets and in time, the cluster's throughput and health.

use std::collections::BTreeMap;

use super::history::{LagEstimate, OffsetHistory};
use super::{find_partition, partition_number, Derived, TopicView};
use crate::broker::{ConsumerLag, PartitionLag, TopicLag, TopicStats};
use crate::sources::kafka::model::{ClusterState, GroupState};

/// The growth of a counter between two polls; nothing when it went back.
fn growth(before: i64, after: i64) -> u64 {
    u64::try_from(after - before).unwrap_or(0)
}

/// Everything the snapshot, the details and the REST reads need from the latest poll (`next`)
/// and the one before (`prev`, for rates).
pub(super) fn derive(
    prev: Option<&ClusterState>,
    next: &ClusterState,
    history: &BTreeMap<String, BTreeMap<i32, OffsetHistory>>,
) -> Derived {
    let seconds = prev
        .filter(|p| next.at_ms > p.at_ms)
        .map(|p| (next.at_ms - p.at_ms) as f64 / 1000.0);
    let rate = |count: u64| seconds.map_or(0.0, |s| count as f64 / s);

    // Messages consumed per topic: the growth of every group's committed offsets.
    let mut consumed: BTreeMap<&str, u64> = BTreeMap::new();
    if let Some(prev) = prev {
        for (id, g) in &next.groups {
            let Some(old) = prev.groups.get(id) else {
                continue;
            };
            for ((topic, _), before, after) in matched(&old.committed, &g.committed) {
                *consumed.entry(topic).or_default() += growth(*before, *after);
            }
        }
    }

    let mut d = Derived::default();
    for (name, t) in &next.topics {
        d.health.disk_usage_bytes += t
            .partitions
            .iter()
            .filter_map(|p| p.size_bytes)
            .sum::<u64>();
        if t.internal {
            continue;
        }
        let old = prev.and_then(|p| p.topics.get(name));
        let mut view = TopicView {
            stats: TopicStats {
                name: name.clone(),
                partitions: t.partitions.len() as u32,
                ..TopicStats::default()
            },
            log_end: Vec::with_capacity(t.partitions.len()),
        };
        let mut produced = 0u64;
        // For bytes per message: one replica's bytes and the messages, of the partitions whose
        // size is known.
        let (mut sized_bytes, mut sized_messages) = (0.0f64, 0u64);
        for p in &t.partitions {
            let retained = match (p.start_offset, p.end_offset) {
                (Some(start), Some(end)) => growth(start, end),
                _ => 0,
            };
            view.stats.total_messages += retained;
            if let Some(size) = p.size_bytes {
                view.stats.total_bytes += size;
                if retained > 0 {
                    sized_bytes += size as f64 / p.replicas.len().max(1) as f64;
                    sized_messages += retained;
                }
            }
            let before = old.and_then(|o| find_partition(o, p.id)?.end_offset);
            if let (Some(before), Some(after)) = (before, p.end_offset) {
                produced += growth(before, after);
            }
            view.log_end.push((p.id, p.end_offset.unwrap_or(-1)));
        }
        let bytes_per_message = if sized_messages > 0 {
            sized_bytes / sized_messages as f64
        } else {
            0.0
        };
        view.stats.produce_rate = rate(produced);
        view.stats.fetch_rate = rate(consumed.get(name.as_str()).copied().unwrap_or(0));
        d.throughput.produce_rate += view.stats.produce_rate;
        d.throughput.fetch_rate += view.stats.fetch_rate;
        d.throughput.produce_bytes += view.stats.produce_rate * bytes_per_message;
        d.throughput.fetch_bytes += view.stats.fetch_rate * bytes_per_message;
        d.health.total_topics += 1;
        d.health.total_partitions += t.partitions.len() as u64;
        d.topics.insert(name.clone(), view);
    }

    for (id, g) in &next.groups {
        d.health.total_consumers += u64::from(g.members);
        let (lag, lag_time) = group_lag(id, g, next, history);
        if let Some(max) = lag_time.values().copied().reduce(LagEstimate::max) {
            d.lag_time.groups.insert(id.clone(), max);
        }
        d.lag_time.partitions.extend(lag_time);
        d.lags.insert(id.clone(), lag);
    }
    d
}

/// A group's lag: every partition of each listed topic it has committed on (topics that are
/// gone are skipped), with the partitions' lag in time.
fn group_lag(
    group_id: &str,
    g: &GroupState,
    next: &ClusterState,
    history: &BTreeMap<String, BTreeMap<i32, OffsetHistory>>,
) -> (ConsumerLag, BTreeMap<(String, String, i32), LagEstimate>) {
    // The commits by topic (they are sorted by topic, then partition). A negative offset is
    // Kafka's "none".
    let mut by_topic: Vec<(&str, Vec<(i32, i64)>)> = Vec::new();
    for ((topic, p), &c) in g.committed.iter().filter(|(_, &c)| c >= 0) {
        match by_topic.last_mut() {
            Some((t, commits)) if *t == topic.as_str() => commits.push((*p, c)),
            _ => by_topic.push((topic, vec![(*p, c)])),
        }
    }
    let mut lag_time = BTreeMap::new();
    // Some partition is behind by an unknown time: the group's time is unknown too.
    let mut unknown_time = false;
    let mut shown_seconds: Option<f64> = None;
    let mut topic_lags = Vec::with_capacity(by_topic.len());
    for (topic, commits) in by_topic {
        let Some(t) = next.topics.get(topic).filter(|t| !t.internal) else {
            continue;
        };
        let histories = history.get(topic);
        let mut total = 0u64;
        let mut partition_lags = Vec::with_capacity(t.partitions.len());
        for p in &t.partitions {
            let current = commits
                .binary_search_by_key(&p.id, |&(id, _)| id)
                .ok()
                .map(|i| commits[i].1);
            let mut seconds = None;
            let lag = match (current, p.end_offset) {
                (Some(c), Some(end)) => {
                    let since = histories
                        .and_then(|h| h.get(&p.id))
                        .and_then(|h| h.lag(c, next.at_ms));
                    if let Some(since) = since {
                        // A lower bound of 0 (the history does not reach back yet) says
                        // nothing: left out of the frame.
                        seconds =
                            (!since.lower_bound || since.seconds > 0.0).then_some(since.seconds);
                        lag_time.insert((group_id.to_owned(), topic.to_owned(), p.id), since);
                    }
                    if seconds.is_none() && end > c {
                        unknown_time = true;
                    }
                    Some((end - c).max(0))
                }
                _ => None,
            };
            total += lag.map_or(0, |l| l as u64);
            partition_lags.push(PartitionLag {
                partition: partition_number(p.id),
                current_offset: current,
                log_end_offset: p.end_offset.unwrap_or(-1),
                lag,
                lag_seconds: seconds,
            });
            shown_seconds = match (shown_seconds, seconds) {
                (Some(a), Some(b)) => Some(a.max(b)),
                (a, b) => a.or(b),
            };
        }
        topic_lags.push(TopicLag {
            topic: topic.to_owned(),
            total_lag: total,
            partition_lags,
        });
    }
    let lag = ConsumerLag {
        group_id: group_id.to_owned(),
        total_lag: topic_lags.iter().map(|t| t.total_lag).sum(),
        topic_lags,
        lag_seconds: shown_seconds.filter(|_| !unknown_time),
    };
    (lag, lag_time)
}

/// The entries of two sorted maps that have the same key: (key, value in `a`, value in `b`).
pub(super) fn matched<'a, K: Ord, V>(
    a: &'a BTreeMap<K, V>,
    b: &'a BTreeMap<K, V>,
) -> impl Iterator<Item = (&'a K, &'a V, &'a V)> {
    let mut a = a.iter().peekable();
    let mut b = b.iter().peekable();
    std::iter::from_fn(move || loop {
        let (ka, kb) = (a.peek()?.0, b.peek()?.0);
        match ka.cmp(kb) {
            std::cmp::Ordering::Less => {
                a.next();
            }
            std::cmp::Ordering::Greater => {
                b.next();
            }
            std::cmp::Ordering::Equal => {
                let (k, va) = a.next()?;
                let (_, vb) = b.next()?;
                return Some((k, va, vb));
            }
        }
    })
}
