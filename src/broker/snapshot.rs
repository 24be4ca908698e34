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
    /// Where the figures come from, when the hub watches a cluster (`--source kafka`); absent
    /// otherwise. An added field: clients that do not know it ignore it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub source: Option<SourceInfo>,
}

/// The cluster a snapshot describes and whether it answers.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct SourceInfo {
    /// `kafka`.
    pub kind: String,
    /// The cluster watched: its bootstrap brokers (and its cluster id once known).
    pub cluster: String,
    /// `starting` (not answered yet), `up`, or `down` (the last poll failed; the figures are
    /// the last good poll's).
    pub state: String,
    /// Unix seconds since the state holds.
    pub since: u64,
    /// Why the last poll failed, while `down`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The latency canary, when one runs (the source of `latency`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<CanaryInfo>,
}

/// The latency canary: the topic its records go to, and how its round trips fare.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct CanaryInfo {
    /// The canary topic.
    pub topic: String,
    /// Round trips that succeeded (record produced and fetched back).
    pub round_trips: u64,
    /// Round trips (or topic creations) that failed.
    pub errors: u64,
    /// While round trips fail: the last failure.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
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
    /// How far behind in time the group is: the largest of its partitions' `lagSeconds`
    /// (Kafka source only; absent otherwise). An added field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
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
pub struct PartitionLag {
    /// The partition number.
    pub partition: u32,
    /// The group's committed offset; `null` when it has committed none on this partition.
    pub current_offset: Option<i64>,
    /// The partition's log-end offset.
    pub log_end_offset: i64,
    /// Log-end minus committed, never below zero; `null` (and out of every sum) when nothing
    /// is committed.
    pub lag: Option<i64>,
    /// Seconds since the log end was at the committed offset, read off the log end's recent
    /// history (Kafka source only; absent otherwise). An added field.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lag_seconds: Option<f64>,
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

/// The detail frame of a `topic:<name>` channel (type `topic_detail`), once per tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicDetail {
    /// The topic's name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Messages produced since the topic was created.
    pub total_messages: u64,
    /// Bytes produced since the topic was created.
    pub total_bytes: u64,
    /// Messages produced per second over the last interval.
    pub produce_rate: f64,
    /// Messages fetched per second over the last interval.
    pub fetch_rate: f64,
    /// Each partition's log-end offset.
    pub partition_offsets: Vec<PartitionOffset>,
    /// Unix seconds.
    pub timestamp: u64,
}

/// One partition's log-end offset.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct PartitionOffset {
    /// The partition number.
    pub partition: u32,
    /// Its log-end offset.
    pub log_end_offset: i64,
}

/// The detail frame of a `group:<id>` channel (type `group_detail`), once per tick.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupDetail {
    /// The group id.
    pub group_id: String,
    /// The group's state.
    pub state: String,
    /// Number of members.
    pub members: u32,
    /// Sum of the partition lags.
    pub total_lag: u64,
    /// Lag per topic and partition, as in `consumerLags`.
    pub topic_lags: Vec<TopicLag>,
    /// Unix seconds.
    pub timestamp: u64,
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::Value;
    use std::collections::BTreeSet;

    fn keys(v: &Value) -> BTreeSet<&str> {
        v.as_object().unwrap().keys().map(String::as_str).collect()
    }

    fn set<'a>(names: &[&'a str]) -> BTreeSet<&'a str> {
        names.iter().copied().collect()
    }

    /// The field names are a contract with every client (PROTOCOL.md): a rename fails here.
    #[test]
    fn serialized_key_sets_match_the_protocol() {
        let m = MonitoringMetrics {
            topic_stats: vec![TopicStats::default()],
            consumer_lags: vec![ConsumerLag {
                topic_lags: vec![TopicLag {
                    partition_lags: vec![PartitionLag::default()],
                    ..Default::default()
                }],
                ..Default::default()
            }],
            ..Default::default()
        };
        let v = serde_json::to_value(&m).unwrap();
        assert_eq!(
            keys(&v),
            set(&[
                "throughput",
                "latency",
                "topicStats",
                "consumerLags",
                "clusterHealth",
                "timestamp"
            ])
        );
        assert_eq!(
            keys(&v["throughput"]),
            set(&["produceRate", "fetchRate", "produceBytes", "fetchBytes"])
        );
        assert_eq!(
            keys(&v["latency"]),
            set(&[
                "produceP50",
                "produceP95",
                "produceP99",
                "fetchP50",
                "fetchP95",
                "fetchP99"
            ])
        );
        assert_eq!(
            keys(&v["topicStats"][0]),
            set(&[
                "name",
                "partitions",
                "totalMessages",
                "totalBytes",
                "produceRate",
                "fetchRate"
            ])
        );
        let lag = &v["consumerLags"][0];
        assert_eq!(keys(lag), set(&["groupId", "totalLag", "topicLags"]));
        assert_eq!(
            keys(&lag["topicLags"][0]),
            set(&["topic", "totalLag", "partitionLags"])
        );
        assert_eq!(
            keys(&lag["topicLags"][0]["partitionLags"][0]),
            set(&["partition", "currentOffset", "logEndOffset", "lag"])
        );
        assert_eq!(
            keys(&v["clusterHealth"]),
            set(&[
                "activeConnections",
                "totalTopics",
                "totalPartitions",
                "totalConsumers",
                "diskUsageBytes",
                "memoryUsageBytes",
                "goroutineCount",
            ])
        );
    }
}
