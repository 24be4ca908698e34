//! The topic manager: topics, their partitions' log-end offsets and traffic totals.
//!
//! Control-path operations (create, delete, list) take a lock; the hot path records through a
//! [`TopicMeter`] that holds the topic's state directly and never touches that lock.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, RwLock};

use crate::broker::recorder::{Recorder, TopicMeter, TopicState, Totals};
use crate::hub::Broadcaster;

/// Longest topic name (Kafka's limit).
pub const MAX_TOPIC_NAME: usize = 249;
/// Most partitions a topic may have.
pub const MAX_PARTITIONS: u32 = 100_000;

/// Why a topic operation was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopicError {
    /// A topic of that name exists.
    #[error("topic {0} already exists")]
    AlreadyExists(String),
    /// No topic of that name.
    #[error("topic {0} does not exist")]
    NotFound(String),
    /// The name is empty, too long, or has characters other than `a-z A-Z 0-9 . _ -`.
    #[error("invalid topic name: {0}")]
    InvalidName(String),
    /// Partitions must be between 1 and [`MAX_PARTITIONS`].
    #[error("partitions must be between 1 and {MAX_PARTITIONS}")]
    InvalidPartitions,
}

/// A topic as listed: `GET /api/topics` answers with these.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct TopicInfo {
    /// The topic's name.
    pub name: String,
    /// Number of partitions.
    pub partitions: u32,
    /// Messages produced since the topic was created.
    pub total_messages: u64,
    /// Bytes produced since the topic was created.
    pub total_bytes: u64,
    /// Log-end offset of each partition, by partition number.
    pub log_end_offsets: Vec<i64>,
}

#[derive(Default)]
struct Inner {
    topics: RwLock<BTreeMap<Arc<str>, Arc<TopicState>>>,
}

/// Topics, shared by the broker's threads, the REST API and the metrics source. Cheap to clone.
#[derive(Clone)]
pub struct TopicManager {
    inner: Arc<Inner>,
    recorder: Recorder,
    broadcaster: Option<Broadcaster>,
}

impl fmt::Debug for TopicManager {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TopicManager")
            .field("topics", &self.len())
            .finish()
    }
}

/// Checks a topic name against Kafka's rules.
pub fn valid_topic_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_TOPIC_NAME
        && name != "."
        && name != ".."
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'))
}

impl TopicManager {
    /// A manager whose topics record into `recorder` and whose changes are announced through
    /// `broadcaster` (none: changes are silent).
    pub fn new(recorder: Recorder, broadcaster: Option<Broadcaster>) -> Self {
        Self {
            inner: Arc::default(),
            recorder,
            broadcaster,
        }
    }

    /// Creates a topic and announces `topic_created`. Returns its meter.
    pub fn create(&self, name: &str, partitions: u32) -> Result<TopicMeter, TopicError> {
        if !valid_topic_name(name) {
            return Err(TopicError::InvalidName(name.chars().take(64).collect()));
        }
        if partitions == 0 || partitions > MAX_PARTITIONS {
            return Err(TopicError::InvalidPartitions);
        }
        let state = {
            let mut topics = self.inner.topics.write().unwrap_or_else(|e| e.into_inner());
            if topics.contains_key(name) {
                return Err(TopicError::AlreadyExists(name.to_owned()));
            }
            let state = Arc::new(TopicState::new(name.into(), partitions));
            topics.insert(state.name.clone(), state.clone());
            state
        };
        if let Some(b) = &self.broadcaster {
            // The event is built from our own types; it cannot fail to encode.
            let _ = b.topic_created(name, partitions);
        }
        Ok(self.recorder.meter_for(state))
    }

    /// Deletes a topic and announces `topic_deleted`.
    pub fn delete(&self, name: &str) -> Result<(), TopicError> {
        let removed = self
            .inner
            .topics
            .write()
            .unwrap_or_else(|e| e.into_inner())
            .remove(name);
        if removed.is_none() {
            return Err(TopicError::NotFound(name.chars().take(64).collect()));
        }
        if let Some(b) = &self.broadcaster {
            let _ = b.topic_deleted(name);
        }
        Ok(())
    }

    /// The meter of an existing topic, for the hot path.
    pub fn meter(&self, name: &str) -> Option<TopicMeter> {
        self.state(name).map(|s| self.recorder.meter_for(s))
    }

    /// One topic, if it exists.
    pub fn get(&self, name: &str) -> Option<TopicInfo> {
        self.state(name).map(|s| info(&s))
    }

    /// Every topic, sorted by name.
    pub fn list(&self) -> Vec<TopicInfo> {
        self.states().iter().map(|s| info(s)).collect()
    }

    /// Number of topics.
    pub fn len(&self) -> usize {
        self.inner.topics.read().map_or(0, |t| t.len())
    }

    /// Whether there are no topics.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The log-end offset of one partition.
    pub fn log_end_offset(&self, topic: &str, partition: u32) -> Option<i64> {
        let s = self.state(topic)?;
        let leo = s.log_end.get(partition as usize)?;
        Some(leo.load(Relaxed))
    }

    /// The recorder the topics' meters record into.
    pub fn recorder(&self) -> &Recorder {
        &self.recorder
    }

    pub(crate) fn state(&self, name: &str) -> Option<Arc<TopicState>> {
        self.inner.topics.read().ok()?.get(name).cloned()
    }

    pub(crate) fn states(&self) -> Vec<Arc<TopicState>> {
        self.inner
            .topics
            .read()
            .map(|t| t.values().cloned().collect())
            .unwrap_or_default()
    }
}

fn info(s: &TopicState) -> TopicInfo {
    let Totals {
        produced_messages,
        produced_bytes,
        ..
    } = s.totals();
    TopicInfo {
        name: s.name.to_string(),
        partitions: s.log_end.len() as u32,
        total_messages: produced_messages,
        total_bytes: produced_bytes,
        log_end_offsets: s.log_end.iter().map(|o| o.load(Relaxed)).collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hub::HubShared;
    use std::time::Duration;

    pub(crate) fn events(shared: &HubShared) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| shared.links[0].ring.pop())
            .map(|f| serde_json::from_slice(f.payload()).unwrap())
            .collect()
    }

    #[test]
    fn create_and_delete_announce_only_real_changes() {
        let shared = Arc::new(HubShared::new(1, 64));
        let topics = TopicManager::new(Recorder::new(), Some(Broadcaster::new(shared.clone())));
        let meter = topics.create("orders", 3).unwrap();
        assert_eq!(
            topics.create("orders", 3).unwrap_err(),
            TopicError::AlreadyExists("orders".into())
        );
        assert!(matches!(
            topics.create("bad name", 1),
            Err(TopicError::InvalidName(_))
        ));
        assert_eq!(
            topics.create("x", 0).unwrap_err(),
            TopicError::InvalidPartitions
        );
        meter.produce(1, 5, 500, Duration::from_millis(1));
        assert_eq!(topics.log_end_offset("orders", 1), Some(5));
        let info = topics.get("orders").unwrap();
        assert_eq!(info.total_messages, 5);
        assert_eq!(info.log_end_offsets, [0, 5, 0]);
        topics.delete("orders").unwrap();
        assert!(matches!(
            topics.delete("orders"),
            Err(TopicError::NotFound(_))
        ));
        let ev = events(&shared);
        let kinds: Vec<&str> = ev.iter().map(|e| e["type"].as_str().unwrap()).collect();
        assert_eq!(kinds, ["topic_created", "topic_deleted"]);
        assert_eq!(
            ev[0]["data"],
            serde_json::json!({"name": "orders", "partitions": 3})
        );
        assert!(topics.is_empty());
    }

    #[test]
    fn kafka_name_rules() {
        assert!(valid_topic_name("a.b_c-1"));
        assert!(!valid_topic_name(""));
        assert!(!valid_topic_name(".."));
        assert!(!valid_topic_name("a/b"));
        assert!(!valid_topic_name(&"x".repeat(250)));
    }
}
