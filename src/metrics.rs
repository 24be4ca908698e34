//! The `MonitoringMetrics` snapshot, field for field as PROTOCOL.md names it.

use serde::{Deserialize, Serialize};

/// The periodic snapshot sent on the `metrics` channel.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct MonitoringMetrics {
    /// Messages and bytes per second.
    pub throughput: Throughput,
    /// Produce and fetch latency percentiles, in milliseconds.
    pub latency: Latency,
    /// One entry per topic.
    pub topic_stats: Vec<TopicStats>,
    /// One entry per consumer group.
    pub consumer_lags: Vec<ConsumerLag>,
    /// Process and cluster facts.
    pub cluster_health: ClusterHealth,
    /// Unix seconds.
    pub timestamp: u64,
}

/// Rates over the last interval.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Throughput {
    /// Messages produced per second.
    pub produce_rate: f64,
    /// Messages fetched per second.
    pub fetch_rate: f64,
    /// Bytes produced per second.
    pub produce_bytes: f64,
    /// Bytes fetched per second.
    pub fetch_bytes: f64,
}

/// Latency percentiles over the last interval, in milliseconds.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct Latency {
    pub produce_p50: f64,
    pub produce_p95: f64,
    pub produce_p99: f64,
    pub fetch_p50: f64,
    pub fetch_p95: f64,
    pub fetch_p99: f64,
}

/// One topic's totals and rates.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct TopicStats {
    pub name: String,
    pub partitions: u32,
    pub total_messages: u64,
    pub total_bytes: u64,
    pub produce_rate: f64,
    pub fetch_rate: f64,
}

/// One consumer group's lag.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ConsumerLag {
    pub group_id: String,
    pub total_lag: u64,
    pub topic_lags: Vec<TopicLag>,
}

/// A group's lag on one topic.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct TopicLag {
    pub topic: String,
    pub total_lag: u64,
    pub partition_lags: Vec<PartitionLag>,
}

/// A group's lag on one partition.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct PartitionLag {
    pub partition: u32,
    pub current_offset: i64,
    pub log_end_offset: i64,
    pub lag: i64,
}

/// Process and cluster facts.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
#[allow(missing_docs)]
pub struct ClusterHealth {
    pub active_connections: u64,
    pub total_topics: u64,
    pub total_partitions: u64,
    pub total_consumers: u64,
    pub disk_usage_bytes: u64,
    pub memory_usage_bytes: u64,
    /// The server's live tasks and threads (the name is kept for existing clients).
    pub goroutine_count: u64,
}
