//! What feeds a hub besides an embedding broker: the simulated [`demo`] broker and the Redis
//! [`relay`], which fans out what other instances broadcast.

pub(crate) mod demo;
pub(crate) mod kafka;
pub(crate) mod relay;

pub use self::demo::{DemoBroker, DemoConfig};
pub use self::kafka::{KafkaConfig, KafkaError, WatchError};
pub use self::relay::{Relay, RelayConfig, RelayRole, RelayStats};
