//! The Kafka source: watch any Kafka-compatible cluster over the Kafka protocol. One thread of
//! its own polls the cluster (never a shard core); [`model`] is what a poll learns, [`client`]
//! speaks the protocol (kafka-protocol's codec over our own sockets), [`view`] turns successive
//! polls into snapshots, events and lag, and `canary` measures latency (opt-in).

mod canary;
pub(crate) mod client;
pub(crate) mod model;
mod source;
pub(crate) mod view;

pub use self::client::ClientError as KafkaError;
pub(crate) use self::source::KafkaSource;
pub use self::source::{KafkaConfig, WatchError};
