//! Where snapshots come from: the `MetricsSource` trait the ticker calls, and the standard
//! source over the Recorder, the TopicManager, the GroupCoordinator and the process itself.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use hdrhistogram::Histogram;

use crate::broker::groups::GroupCoordinator;
use crate::broker::recorder::{Recorder, Totals};
use crate::broker::snapshot::{
    ClusterHealth, GroupDetail, Latency, MonitoringMetrics, PartitionOffset, Throughput,
    TopicDetail, TopicStats,
};
use crate::broker::topics::TopicManager;
use crate::hub::HubProbe;
use crate::process::{resident_memory, threads as process_threads};
use crate::protocol::Channel;

/// What the ticker asks for, once per interval. An embedding broker may implement it itself.
///
/// Called from the ticker's own thread, never from a shard.
pub trait MetricsSource: Send {
    /// The snapshot for the interval that just ended (`elapsed` long).
    fn snapshot(&mut self, elapsed: Duration) -> MonitoringMetrics;

    /// The detail frame of a topic whose `topic:<name>` channel has subscribers, if it exists.
    fn topic_detail(&mut self, _name: &str) -> Option<TopicDetail> {
        None
    }

    /// The detail frame of a group whose `group:<id>` channel has subscribers, if it exists.
    fn group_detail(&mut self, _group_id: &str) -> Option<GroupDetail> {
        None
    }

    /// Every `topic:` and `group:` channel this source has details for, if it can list them:
    /// asked instead of the subscribed ones when subscribers on other instances may want any
    /// of them (a relay origin). `None`, the default: the ticker sends the details of the
    /// channels this instance's clients subscribe to.
    fn detail_channels(&mut self) -> Option<Vec<Channel>> {
        None
    }
}

/// The standard source: rates from counter deltas, latency percentiles of the interval,
/// topics, lag, and process facts.
pub struct StandardSource {
    recorder: Recorder,
    topics: TopicManager,
    groups: GroupCoordinator,
    hub: Option<HubProbe>,
    data_dir: Option<PathBuf>,
    /// Each topic's totals at the previous snapshot.
    previous: HashMap<Arc<str>, Totals>,
    /// Each topic's rates computed by the last snapshot, for its detail frame.
    rates: HashMap<Arc<str>, (f64, f64)>,
}

impl fmt::Debug for StandardSource {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("StandardSource")
            .field("topics", &self.topics)
            .field("groups", &self.groups)
            .field("data_dir", &self.data_dir)
            .finish()
    }
}

impl StandardSource {
    /// A source over these services. `hub` supplies `activeConnections` and the task count.
    pub fn new(topics: TopicManager, groups: GroupCoordinator, hub: Option<HubProbe>) -> Self {
        Self {
            recorder: topics.recorder().clone(),
            topics,
            groups,
            hub,
            data_dir: None,
            previous: HashMap::new(),
            rates: HashMap::new(),
        }
    }

    /// Reports the disk usage of this directory as `diskUsageBytes`.
    #[must_use]
    pub fn data_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.data_dir = Some(dir.into());
        self
    }

    fn cluster_health(&self, topic_stats: &[TopicStats]) -> ClusterHealth {
        let (connections, shards) = self
            .hub
            .as_ref()
            .map_or((0, 0), |h| (h.active_connections(), h.shards() as u64));
        ClusterHealth {
            active_connections: connections,
            total_topics: topic_stats.len() as u64,
            total_partitions: topic_stats.iter().map(|t| u64::from(t.partitions)).sum(),
            total_consumers: self.groups.total_members(),
            disk_usage_bytes: self.data_dir.as_deref().map_or(0, disk_usage),
            memory_usage_bytes: resident_memory(),
            // Live tasks: a reader and a writer per connection, accept + distributor + sweep
            // per shard, plus the process's threads.
            goroutine_count: process_threads() + 2 * connections + 3 * shards,
        }
    }
}

impl MetricsSource for StandardSource {
    fn snapshot(&mut self, elapsed: Duration) -> MonitoringMetrics {
        let secs = elapsed.as_secs_f64().max(1e-3);
        let mut throughput = Throughput::default();
        let mut topic_stats = Vec::new();
        let mut previous = HashMap::with_capacity(self.previous.len());
        self.rates.clear();
        for state in self.topics.states() {
            let now = state.totals();
            let before = self.previous.get(&state.name).copied().unwrap_or_default();
            let rate = |a: u64, b: u64| a.saturating_sub(b) as f64 / secs;
            let produce_rate = rate(now.produced_messages, before.produced_messages);
            let fetch_rate = rate(now.fetched_messages, before.fetched_messages);
            throughput.produce_rate += produce_rate;
            throughput.fetch_rate += fetch_rate;
            throughput.produce_bytes += rate(now.produced_bytes, before.produced_bytes);
            throughput.fetch_bytes += rate(now.fetched_bytes, before.fetched_bytes);
            topic_stats.push(TopicStats {
                name: state.name.to_string(),
                partitions: state.log_end.len() as u32,
                total_messages: now.produced_messages,
                total_bytes: now.produced_bytes,
                produce_rate,
                fetch_rate,
            });
            self.rates
                .insert(state.name.clone(), (produce_rate, fetch_rate));
            previous.insert(state.name.clone(), now);
        }
        self.previous = previous;
        let latency = self.recorder.take_latency();
        MonitoringMetrics {
            throughput,
            latency: Latency {
                produce_p50: ms(&latency.produce, 0.50),
                produce_p95: ms(&latency.produce, 0.95),
                produce_p99: ms(&latency.produce, 0.99),
                fetch_p50: ms(&latency.fetch, 0.50),
                fetch_p95: ms(&latency.fetch, 0.95),
                fetch_p99: ms(&latency.fetch, 0.99),
            },
            cluster_health: self.cluster_health(&topic_stats),
            consumer_lags: self.groups.lags(&self.topics),
            topic_stats,
            timestamp: unix_seconds(),
            source: None,
        }
    }

    fn topic_detail(&mut self, name: &str) -> Option<TopicDetail> {
        let info = self.topics.get(name)?;
        let (produce_rate, fetch_rate) = self.rates.get(name).copied().unwrap_or_default();
        Some(TopicDetail {
            partitions: info.partitions,
            total_messages: info.total_messages,
            total_bytes: info.total_bytes,
            produce_rate,
            fetch_rate,
            partition_offsets: info
                .log_end_offsets
                .iter()
                .enumerate()
                .map(|(p, &o)| PartitionOffset {
                    partition: p as u32,
                    log_end_offset: o,
                })
                .collect(),
            timestamp: unix_seconds(),
            name: info.name,
        })
    }

    fn detail_channels(&mut self) -> Option<Vec<Channel>> {
        let topics = self
            .topics
            .list()
            .into_iter()
            .map(|t| Channel::topic(&t.name));
        let groups = self
            .groups
            .list()
            .into_iter()
            .map(|g| Channel::group(&g.group_id));
        Some(topics.chain(groups).collect())
    }

    fn group_detail(&mut self, group_id: &str) -> Option<GroupDetail> {
        let info = self.groups.get(group_id)?;
        let lag = self.groups.lag(group_id, &self.topics)?;
        Some(GroupDetail {
            group_id: info.group_id,
            state: info.state,
            members: info.members,
            total_lag: lag.total_lag,
            topic_lags: lag.topic_lags,
            timestamp: unix_seconds(),
        })
    }
}

/// A percentile of the interval in milliseconds (0 when nothing was recorded).
fn ms(h: &Histogram<u32>, q: f64) -> f64 {
    if h.is_empty() {
        0.0
    } else {
        h.value_at_quantile(q) as f64 / 1000.0
    }
}

pub(crate) fn unix_seconds() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

/// Bytes allocated on disk under `dir`, as `du` counts them (symlinks not followed).
fn disk_usage(dir: &Path) -> u64 {
    use std::os::unix::fs::MetadataExt;
    let mut total = 0;
    let mut stack = vec![dir.to_path_buf()];
    while let Some(path) = stack.pop() {
        let Ok(meta) = std::fs::symlink_metadata(&path) else {
            continue;
        };
        total += meta.blocks() * 512;
        if meta.is_dir() {
            if let Ok(entries) = std::fs::read_dir(&path) {
                stack.extend(entries.flatten().map(|e| e.path()));
            }
        }
    }
    total
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rates_come_from_deltas_and_percentiles_from_the_interval() {
        let topics = TopicManager::new(Recorder::new(), None);
        let groups = GroupCoordinator::new(None);
        let meter = topics.create("orders", 2).unwrap();
        let mut source = StandardSource::new(topics.clone(), groups.clone(), None);
        for _ in 0..100 {
            meter.produce(0, 10, 1000, Duration::from_millis(2));
        }
        meter.fetch(50, 5000, Duration::from_millis(20));
        groups.update("g", "Stable", 4);
        groups.commit("g", "orders", 0, 900);

        let m = source.snapshot(Duration::from_secs(2));
        assert_eq!(m.throughput.produce_rate, 500.0);
        assert_eq!(m.throughput.produce_bytes, 50_000.0);
        assert_eq!(m.throughput.fetch_rate, 25.0);
        assert!(
            (m.latency.produce_p99 - 2.0).abs() < 0.01,
            "{}",
            m.latency.produce_p99
        );
        assert!((m.latency.fetch_p50 - 20.0).abs() < 0.05);
        assert_eq!(m.topic_stats[0].total_messages, 1000);
        assert_eq!(m.cluster_health.total_topics, 1);
        assert_eq!(m.cluster_health.total_partitions, 2);
        assert_eq!(m.cluster_health.total_consumers, 4);
        assert_eq!(m.consumer_lags[0].total_lag, 100);
        assert!(m.cluster_health.memory_usage_bytes > 0);
        assert!(m.cluster_health.goroutine_count >= 1);

        // Nothing happened in the next interval: rates and percentiles drop to zero.
        let m = source.snapshot(Duration::from_secs(2));
        assert_eq!(m.throughput.produce_rate, 0.0);
        assert_eq!(m.latency.produce_p50, 0.0);
        assert_eq!(m.topic_stats[0].total_messages, 1000);

        let d = source.topic_detail("orders").unwrap();
        assert_eq!(d.partition_offsets[0].log_end_offset, 1000);
        assert!(source.topic_detail("nope").is_none());
        let g = source.group_detail("g").unwrap();
        assert_eq!(
            (g.state.as_str(), g.members, g.total_lag),
            ("Stable", 4, 100)
        );
    }

    #[test]
    fn disk_usage_counts_files_under_the_directory() {
        let dir = std::env::temp_dir().join(format!("takhin-du-{}", std::process::id()));
        std::fs::create_dir_all(dir.join("sub")).unwrap();
        std::fs::write(dir.join("sub/a"), vec![1u8; 64 * 1024]).unwrap();
        assert!(disk_usage(&dir) >= 64 * 1024);
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
