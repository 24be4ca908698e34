//! The broker side of the hub: what a broker records on its hot path ([`Recorder`],
//! [`TopicMeter`]), its topics ([`TopicManager`]) and consumer groups ([`GroupCoordinator`]),
//! the snapshot model of PROTOCOL.md ([`MonitoringMetrics`]), where snapshots come from
//! ([`MetricsSource`], [`StandardSource`]) and the [`Ticker`] that broadcasts one per interval.
//!
//! It feeds the hub through a [`crate::Broadcaster`] and reads it through a
//! [`crate::HubProbe`]; it knows nothing of HTTP or of the connections.

mod groups;
pub(crate) mod periodic;
mod recorder;
mod snapshot;
mod source;
mod ticker;
mod topics;

pub use self::groups::{GroupCoordinator, GroupInfo, DEAD_STATE, INITIAL_STATE};
pub use self::recorder::{Recorder, TopicMeter};
pub use self::snapshot::{
    CanaryInfo, ClusterHealth, ConsumerLag, GroupDetail, Latency, MonitoringMetrics, PartitionLag,
    PartitionOffset, SourceInfo, Throughput, TopicDetail, TopicLag, TopicStats,
};
pub use self::source::{MetricsSource, StandardSource};
pub use self::ticker::{Ticker, DEFAULT_METRICS_INTERVAL};
pub use self::topics::{
    valid_topic_name, TopicError, TopicInfo, TopicManager, MAX_PARTITIONS, MAX_TOPIC_NAME,
};
