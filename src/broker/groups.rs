//! The group coordinator: consumer groups, their state and members, and committed offsets;
//! lag against the topics' log-end offsets.

use std::collections::BTreeMap;
use std::fmt;
use std::sync::{Arc, RwLock};

use crate::broker::snapshot::{ConsumerLag, PartitionLag, TopicLag};
use crate::broker::topics::TopicManager;
use crate::hub::Broadcaster;

/// The state a group gets when it first appears through a commit.
pub const INITIAL_STATE: &str = "Empty";
pub use crate::protocol::DEAD_STATE;

/// A group as listed: `GET /api/groups` answers with these.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct GroupInfo {
    /// The group id.
    pub group_id: String,
    /// Its state (`Stable`, `PreparingRebalance`, `Empty`, ...).
    pub state: String,
    /// Number of members.
    pub members: u32,
}

#[derive(Debug, Clone, Default)]
struct Group {
    state: String,
    members: u32,
    /// Committed offset per topic and partition.
    committed: BTreeMap<Arc<str>, BTreeMap<u32, i64>>,
}

/// Consumer groups, shared by the broker, the REST API and the metrics source. Cheap to clone.
#[derive(Clone)]
pub struct GroupCoordinator {
    groups: Arc<RwLock<BTreeMap<String, Group>>>,
    broadcaster: Option<Broadcaster>,
}

impl fmt::Debug for GroupCoordinator {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("GroupCoordinator")
            .field("groups", &self.list().len())
            .finish()
    }
}

impl GroupCoordinator {
    /// A coordinator announcing changes through `broadcaster` (none: changes are silent).
    pub fn new(broadcaster: Option<Broadcaster>) -> Self {
        Self {
            groups: Arc::default(),
            broadcaster,
        }
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Group>> {
        self.groups.write().unwrap_or_else(|e| e.into_inner())
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Group>> {
        self.groups.read().unwrap_or_else(|e| e.into_inner())
    }

    fn announce(&self, group_id: &str, state: &str, members: u32) {
        if let Some(b) = &self.broadcaster {
            // Built from our own types; it cannot fail to encode.
            let _ = b.group_updated(group_id, state, members);
        }
    }

    /// Sets a group's state and membership, creating it if needed. Announces `group_updated`
    /// and returns true only if something changed.
    pub fn update(&self, group_id: &str, state: &str, members: u32) -> bool {
        {
            let mut groups = self.write();
            let group = groups.entry(group_id.to_owned()).or_insert_with(|| Group {
                state: String::new(),
                ..Group::default()
            });
            if group.state == state && group.members == members {
                return false;
            }
            group.state = state.to_owned();
            group.members = members;
        }
        self.announce(group_id, state, members);
        true
    }

    /// Records a committed offset. A group seen for the first time is created in state
    /// `Empty` and announced.
    pub fn commit(&self, group_id: &str, topic: &str, partition: u32, offset: i64) {
        let created = {
            let mut groups = self.write();
            let created = !groups.contains_key(group_id);
            if created {
                let group = Group {
                    state: INITIAL_STATE.to_owned(),
                    ..Group::default()
                };
                groups.insert(group_id.to_owned(), group);
            }
            // No allocation for a group and topic already known.
            let Some(group) = groups.get_mut(group_id) else {
                return;
            };
            let per_topic = match group.committed.get_mut(topic) {
                Some(p) => p,
                None => group.committed.entry(topic.into()).or_default(),
            };
            per_topic.insert(partition, offset);
            created
        };
        if created {
            self.announce(group_id, INITIAL_STATE, 0);
        }
    }

    /// Removes a group; announces it as `Dead`. Returns whether it existed.
    pub fn remove(&self, group_id: &str) -> bool {
        let existed = self.write().remove(group_id).is_some();
        if existed {
            self.announce(group_id, DEAD_STATE, 0);
        }
        existed
    }

    /// One group.
    pub fn get(&self, group_id: &str) -> Option<GroupInfo> {
        self.read().get(group_id).map(|g| info(group_id, g))
    }

    /// Every group, sorted by id.
    pub fn list(&self) -> Vec<GroupInfo> {
        self.read().iter().map(|(id, g)| info(id, g)).collect()
    }

    /// The total of members over all groups.
    pub fn total_members(&self) -> u64 {
        self.read().values().map(|g| u64::from(g.members)).sum()
    }

    /// Lag of every group.
    pub fn lags(&self, topics: &TopicManager) -> Vec<ConsumerLag> {
        self.read()
            .iter()
            .map(|(id, g)| lag_of(id, g, topics))
            .collect()
    }

    /// Lag of one group.
    pub fn lag(&self, group_id: &str, topics: &TopicManager) -> Option<ConsumerLag> {
        self.read()
            .get(group_id)
            .map(|g| lag_of(group_id, g, topics))
    }
}

fn info(id: &str, g: &Group) -> GroupInfo {
    GroupInfo {
        group_id: id.to_owned(),
        state: g.state.clone(),
        members: g.members,
    }
}

/// Lag per partition = log-end offset - committed offset (never below zero). Every partition
/// of a topic the group commits to is listed; one with no committed offset has
/// `currentOffset` and `lag` null and is left out of the sums. Topics that no longer exist are
/// skipped.
fn lag_of(group_id: &str, g: &Group, topics: &TopicManager) -> ConsumerLag {
    let mut topic_lags = Vec::with_capacity(g.committed.len());
    for (topic, committed) in &g.committed {
        let Some(state) = topics.state(topic) else {
            continue;
        };
        let mut partition_lags = Vec::with_capacity(state.log_end.len());
        let mut total = 0u64;
        for (p, leo) in state.log_end.iter().enumerate() {
            let leo = leo.load(std::sync::atomic::Ordering::Relaxed);
            let current = committed.get(&(p as u32)).copied();
            let lag = current.map(|c| (leo - c).max(0));
            total += lag.unwrap_or(0) as u64;
            partition_lags.push(PartitionLag {
                partition: p as u32,
                current_offset: current,
                log_end_offset: leo,
                lag,
                lag_seconds: None,
            });
        }
        topic_lags.push(TopicLag {
            topic: topic.to_string(),
            total_lag: total,
            partition_lags,
        });
    }
    ConsumerLag {
        group_id: group_id.to_owned(),
        total_lag: topic_lags.iter().map(|t| t.total_lag).sum(),
        topic_lags,
        lag_seconds: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::broker::recorder::Recorder;
    use crate::hub::HubShared;
    use std::time::Duration;

    fn rig() -> (Arc<HubShared>, TopicManager, GroupCoordinator) {
        let shared = Arc::new(HubShared::new(1, 64));
        let b = Broadcaster::new(shared.clone());
        let topics = TopicManager::new(Recorder::new(), None);
        (shared, topics, GroupCoordinator::new(Some(b)))
    }

    fn kinds(shared: &HubShared) -> Vec<serde_json::Value> {
        std::iter::from_fn(|| shared.links[0].ring.pop())
            .map(|f| {
                serde_json::from_slice::<serde_json::Value>(f.payload()).unwrap()["data"].clone()
            })
            .collect()
    }

    #[test]
    fn updates_announce_only_real_changes() {
        let (shared, _, groups) = rig();
        assert!(groups.update("g", "Stable", 3));
        assert!(!groups.update("g", "Stable", 3));
        assert!(groups.update("g", "PreparingRebalance", 3));
        assert!(groups.update("g", "PreparingRebalance", 4));
        groups.commit("g", "t", 0, 10); // existing group: no event
        groups.commit("h", "t", 0, 10); // new group: announced as Empty
        groups.commit("h", "t", 1, 11);
        assert!(groups.remove("h"));
        assert!(!groups.remove("h"));
        let data = kinds(&shared);
        let states: Vec<(&str, &str, u64)> = data
            .iter()
            .map(|d| {
                (
                    d["groupId"].as_str().unwrap(),
                    d["state"].as_str().unwrap(),
                    d["members"].as_u64().unwrap(),
                )
            })
            .collect();
        assert_eq!(
            states,
            [
                ("g", "Stable", 3),
                ("g", "PreparingRebalance", 3),
                ("g", "PreparingRebalance", 4),
                ("h", "Empty", 0),
                ("h", "Dead", 0),
            ]
        );
    }

    #[test]
    fn lag_math_with_uncommitted_partitions() {
        let (_, topics, groups) = rig();
        let orders = topics.create("orders", 3).unwrap();
        let clicks = topics.create("clicks", 1).unwrap();
        for (p, n) in [(0, 100), (1, 50), (2, 7)] {
            orders.produce(p, n, n * 10, Duration::from_millis(1));
        }
        clicks.set_log_end_offset(0, 5);
        groups.commit("g", "orders", 0, 40);
        groups.commit("g", "orders", 1, 60); // ahead of the log end: lag 0, not negative
        groups.commit("g", "clicks", 0, 5);
        groups.commit("g", "gone", 0, 1); // a topic that does not exist: skipped

        let lag = groups.lag("g", &topics).unwrap();
        assert_eq!(lag.total_lag, 60);
        let t: Vec<&str> = lag.topic_lags.iter().map(|t| t.topic.as_str()).collect();
        assert_eq!(t, ["clicks", "orders"]);
        let orders_lag = &lag.topic_lags[1];
        assert_eq!(orders_lag.total_lag, 60);
        let p: Vec<(Option<i64>, i64, Option<i64>)> = orders_lag
            .partition_lags
            .iter()
            .map(|p| (p.current_offset, p.log_end_offset, p.lag))
            .collect();
        assert_eq!(
            p,
            [
                (Some(40), 100, Some(60)),
                (Some(60), 50, Some(0)),
                (None, 7, None)
            ]
        );
        assert_eq!(lag.topic_lags[0].total_lag, 0);

        let json = serde_json::to_value(&orders_lag.partition_lags[2]).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"partition": 2, "currentOffset": null, "logEndOffset": 7, "lag": null})
        );
    }
}
