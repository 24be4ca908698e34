//! Successive polls of the cluster turned into snapshots, events and lag. Pure: no I/O, no
//! clock (every time comes from [`ClusterState::at_ms`]), so it is tested on recorded states.
//!
//! [`View::update`] takes each poll's [`ClusterState`] and returns the [`Event`]s since the
//! previous one; [`View::snapshot`], the detail and the REST reads answer from the latest poll.
//! How each field of `MonitoringMetrics` is obtained:
//!
//! - `topicStats[].partitions`: Metadata, the topic's partitions.
//! - `topicStats[].totalMessages`: ListOffsets, Σ over partitions of log-end − log-start: the
//!   messages the log *retains*, not those produced since the topic was created (retention
//!   removes records; a compacted topic counts the offsets in between, so it over-counts).
//! - `topicStats[].totalBytes`: DescribeLogDirs, Σ of the partition sizes the brokers report
//!   (every replica's log); 0 when none is known.
//! - `topicStats[].produceRate`: Σ over partitions of the log-end offset's growth between the
//!   last two polls ÷ the time between them (messages/s).
//! - `topicStats[].fetchRate`: Σ over groups and partitions of the committed offset's growth
//!   between the last two polls ÷ the time between them: what the groups consumed and
//!   committed (messages/s).
//! - `throughput.produceRate` / `fetchRate`: Σ over topics.
//! - `throughput.produceBytes` / `fetchBytes`: estimated, each topic's rate × its bytes per
//!   message (the retained bytes of one replica, size ÷ replicas, ÷ the retained messages, over
//!   the partitions whose size is known); a topic with no known size adds 0.
//! - `consumerLags`: per group, every partition of each topic it has committed on; lag =
//!   log-end − committed, never below 0; `null` where it has no commit (or the log end is
//!   unknown: `logEndOffset` -1), and left out of the totals.
//! - `clusterHealth.totalTopics` / `totalPartitions`: Metadata, the listed topics.
//! - `clusterHealth.totalConsumers`: DescribeGroups, Σ of members over all groups.
//! - `clusterHealth.diskUsageBytes`: DescribeLogDirs, Σ of every known partition size, internal
//!   topics included (they take disk too).
//! - `clusterHealth.activeConnections`, `memoryUsageBytes`, `goroutineCount`: the hub's own;
//!   the caller passes them in ([`HubFacts`]).
//! - `latency.*`: 0 here; the source fills them from its canary when one runs (`canary.rs`).
//! - `timestamp`: the poll's start, Unix seconds.
//!
//! Internal topics (`__consumer_offsets`, ...) are not listed, counted in the topic totals, nor
//! announced, and lag on them is not shown. Rates need two polls: the first gives 0, and a
//! topic, partition or commit that the previous poll did not see adds nothing; an offset that
//! went back (a topic recreated) adds nothing either. After an outage the rates are averages
//! over the whole gap between the two successful polls.
//!
//! Lag in time ([`LagTime`]) is read off each partition's log-end history ([`history`]).
//!
//! Events and the first poll: the first poll announces nothing. Its topics were not created
//! now, and a dashboard gets them from the `metrics` snapshot (and `GET /api/topics`); saying
//! `topic_created` for each would be false news, repeated at every restart of the hub. Groups'
//! current states are offered apart ([`View::group_states`]) for a caller that wants to give
//! them to new connections as retained state without broadcasting them as changes. From the
//! second poll on, [`events::diff`] gives what changed.

mod derive;
mod events;
mod history;
mod source;

use std::collections::BTreeMap;

use self::derive::derive;
#[cfg(test)]
use self::derive::matched;
pub(crate) use self::events::Event;
pub(crate) use self::history::{HistoryLimits, LagEstimate};
use self::history::{OffsetHistory, Point};
// For the poll loop, which is not wired in yet (like the rest of the module, see `kafka`).
#[allow(unused_imports)]
pub(crate) use self::source::{SourceState, SourceStatus};
use crate::broker::{
    ClusterHealth, ConsumerLag, GroupDetail, GroupInfo, Latency, MonitoringMetrics,
    PartitionOffset, Throughput, TopicDetail, TopicInfo, TopicStats,
};
use crate::sources::kafka::model::{ClusterState, GroupState, PartitionState, TopicState};

/// The settings of a [`View`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct ViewConfig {
    /// How much log-end history each partition keeps, for lag in time.
    pub(crate) history: HistoryLimits,
}

/// What the snapshot reports of the hub itself, which the cluster cannot tell: the caller
/// fills it (from its `HubProbe` and the process) at each snapshot.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(crate) struct HubFacts {
    /// `clusterHealth.activeConnections`: open WebSocket clients.
    pub(crate) active_connections: u64,
    /// `clusterHealth.memoryUsageBytes`: the hub's resident memory.
    pub(crate) memory_usage_bytes: u64,
    /// `clusterHealth.goroutineCount`: the hub's live tasks and threads.
    pub(crate) goroutine_count: u64,
}

/// How far behind, in time, each group is ([`history`] says how it is estimated).
#[derive(Debug, Clone, Default, PartialEq)]
pub(crate) struct LagTime {
    /// By (group, topic, partition), for each partition where the group has a commit and the
    /// log end is known.
    pub(crate) partitions: BTreeMap<(String, String, i32), LagEstimate>,
    /// By group: the largest of its partitions' (a lower bound when any of them is). A group
    /// with no such partition is absent.
    pub(crate) groups: BTreeMap<String, LagEstimate>,
}

impl LagTime {
    #[cfg(test)]
    /// One group's largest lag in time.
    pub(crate) fn group(&self, group_id: &str) -> Option<LagEstimate> {
        self.groups.get(group_id).copied()
    }

    #[cfg(test)]
    /// One partition's lag in time for a group.
    pub(crate) fn partition(
        &self,
        group_id: &str,
        topic: &str,
        partition: i32,
    ) -> Option<LagEstimate> {
        self.partitions
            .get(&(group_id.to_owned(), topic.to_owned(), partition))
            .copied()
    }
}

/// One snapshot: the `metrics` frame's data, and the lag in time that goes with it (added to
/// the frame as extra fields by the caller).
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Snapshot<'a> {
    /// Every field of `MonitoringMetrics`.
    pub(crate) metrics: MonitoringMetrics,
    /// Lag in time, per partition and per group.
    pub(crate) lag_time: &'a LagTime,
}

/// One listed topic, derived from the latest poll.
#[derive(Debug, Clone, Default, PartialEq)]
struct TopicView {
    stats: TopicStats,
    /// (partition, log-end offset), -1 where unknown.
    log_end: Vec<(i32, i64)>,
}

/// What the latest poll (and the one before) give, computed once per poll.
#[derive(Debug, Clone, Default, PartialEq)]
struct Derived {
    /// Listed topics, by name.
    topics: BTreeMap<String, TopicView>,
    /// Every group's lag, by id.
    lags: BTreeMap<String, ConsumerLag>,
    lag_time: LagTime,
    throughput: Throughput,
    /// The cluster's part; the hub's fields are 0 here.
    health: ClusterHealth,
}

/// The cluster as successive polls show it. See the module's documentation.
#[derive(Debug, Default)]
pub(crate) struct View {
    config: ViewConfig,
    state: Option<ClusterState>,
    /// Log-end history of every listed topic's partitions, by topic and partition.
    history: BTreeMap<String, BTreeMap<i32, OffsetHistory>>,
    derived: Derived,
}

impl View {
    /// An empty view: no poll yet.
    pub(crate) fn new(config: ViewConfig) -> Self {
        Self {
            config,
            ..Self::default()
        }
    }

    /// Takes the next poll's state. Returns what changed since the previous poll; nothing for
    /// the first one (see the module's documentation).
    pub(crate) fn update(&mut self, mut next: ClusterState) -> Vec<Event> {
        if let Some(prev) = &self.state {
            if !next.groups_complete {
                // A broker did not list its groups: they still exist, as last seen.
                for (id, g) in &prev.groups {
                    next.groups.entry(id.clone()).or_insert_with(|| g.clone());
                }
            }
            // A group its coordinator did not describe this time keeps the state and members
            // last described, rather than ListGroups' stand-in (no change is announced).
            for (id, g) in next.groups.iter_mut().filter(|(_, g)| !g.described) {
                if let Some(old) = prev.groups.get(id) {
                    g.state.clone_from(&old.state);
                    g.members = old.members;
                }
            }
        }
        let events = match &self.state {
            Some(prev) => events::diff(prev, &next),
            None => Vec::new(),
        };
        self.record_history(&next);
        self.derived = derive(self.state.as_ref(), &next, &self.history);
        self.state = Some(next);
        events
    }

    /// The latest poll's state.
    pub(crate) fn state(&self) -> Option<&ClusterState> {
        self.state.as_ref()
    }

    /// The `metrics` snapshot of the latest poll with the hub's own facts, and its lag in
    /// time; `None` before the first poll. After a failed poll it still describes the last
    /// successful one (its `timestamp` says when that was).
    pub(crate) fn snapshot(&self, hub: HubFacts) -> Option<Snapshot<'_>> {
        let state = self.state.as_ref()?;
        let d = &self.derived;
        let metrics = MonitoringMetrics {
            throughput: d.throughput.clone(),
            latency: Latency::default(),
            topic_stats: d.topics.values().map(|t| t.stats.clone()).collect(),
            consumer_lags: d.lags.values().cloned().collect(),
            cluster_health: ClusterHealth {
                active_connections: hub.active_connections,
                memory_usage_bytes: hub.memory_usage_bytes,
                goroutine_count: hub.goroutine_count,
                ..d.health.clone()
            },
            timestamp: state.at_ms / 1000,
            source: None,
        };
        Some(Snapshot {
            metrics,
            lag_time: &d.lag_time,
        })
    }

    #[cfg(test)]
    /// Lag in time as of the latest poll.
    pub(crate) fn lag_time(&self) -> &LagTime {
        &self.derived.lag_time
    }

    /// The `topic_detail` frame of a listed topic (`logEndOffset` -1 where unknown).
    pub(crate) fn topic_detail(&self, name: &str) -> Option<TopicDetail> {
        let t = self.derived.topics.get(name)?;
        let s = &t.stats;
        Some(TopicDetail {
            name: s.name.clone(),
            partitions: s.partitions,
            total_messages: s.total_messages,
            total_bytes: s.total_bytes,
            produce_rate: s.produce_rate,
            fetch_rate: s.fetch_rate,
            partition_offsets: t
                .log_end
                .iter()
                .map(|&(p, log_end_offset)| PartitionOffset {
                    partition: partition_number(p),
                    log_end_offset,
                })
                .collect(),
            timestamp: self.timestamp(),
        })
    }

    /// The `group_detail` frame of a group.
    pub(crate) fn group_detail(&self, group_id: &str) -> Option<GroupDetail> {
        let g = self.state.as_ref()?.groups.get(group_id)?;
        let lag = self.derived.lags.get(group_id);
        Some(GroupDetail {
            group_id: group_id.to_owned(),
            state: g.state.clone(),
            members: g.members,
            total_lag: lag.map_or(0, |l| l.total_lag),
            topic_lags: lag.map(|l| l.topic_lags.clone()).unwrap_or_default(),
            timestamp: self.timestamp(),
        })
    }

    /// `GET /api/topics`: every listed topic, by name. `totalMessages` and `totalBytes` are
    /// as in `topicStats` (retained), `logEndOffsets` by partition (-1 where unknown).
    pub(crate) fn topics(&self) -> Vec<TopicInfo> {
        self.derived.topics.values().map(topic_info).collect()
    }

    /// `GET /api/topics/{name}`.
    pub(crate) fn topic(&self, name: &str) -> Option<TopicInfo> {
        self.derived.topics.get(name).map(topic_info)
    }

    /// `GET /api/groups`: every group, by id.
    pub(crate) fn groups(&self) -> Vec<GroupInfo> {
        self.state.as_ref().map_or_else(Vec::new, |s| {
            s.groups.iter().map(|(id, g)| group_info(id, g)).collect()
        })
    }

    /// `GET /api/groups/{id}`.
    pub(crate) fn group(&self, group_id: &str) -> Option<GroupInfo> {
        let g = self.state.as_ref()?.groups.get(group_id)?;
        Some(group_info(group_id, g))
    }

    /// Every group's current state as a `group_updated` event, by id: for the retained state
    /// a new connection receives, not for broadcasting as news.
    pub(crate) fn group_states(&self) -> Vec<Event> {
        self.state.as_ref().map_or_else(Vec::new, |s| {
            s.groups
                .iter()
                .map(|(id, g)| Event::group_updated(id, g))
                .collect()
        })
    }

    fn timestamp(&self) -> u64 {
        self.state.as_ref().map_or(0, |s| s.at_ms / 1000)
    }

    /// Adds the poll's log-end offsets to the partitions' histories; forgets the histories of
    /// topics and partitions that are gone.
    fn record_history(&mut self, next: &ClusterState) {
        let limits = self.config.history;
        self.history
            .retain(|name, _| next.topics.get(name).is_some_and(|t| !t.internal));
        for (name, t) in next.topics.iter().filter(|(_, t)| !t.internal) {
            let per_partition = match self.history.get_mut(name) {
                Some(h) => h,
                None => self.history.entry(name.clone()).or_default(),
            };
            per_partition.retain(|&id, _| find_partition(t, id).is_some());
            for p in &t.partitions {
                if let Some(offset) = p.end_offset {
                    let point = Point {
                        at_ms: next.at_ms,
                        offset,
                    };
                    per_partition.entry(p.id).or_default().push(point, &limits);
                }
            }
        }
    }
}

fn topic_info(t: &TopicView) -> TopicInfo {
    TopicInfo {
        name: t.stats.name.clone(),
        partitions: t.stats.partitions,
        total_messages: t.stats.total_messages,
        total_bytes: t.stats.total_bytes,
        log_end_offsets: t.log_end.iter().map(|&(_, o)| o).collect(),
    }
}

fn group_info(id: &str, g: &GroupState) -> GroupInfo {
    GroupInfo {
        group_id: id.to_owned(),
        state: g.state.clone(),
        members: g.members,
    }
}

/// A Kafka partition id as the snapshot's partition number (ids are never negative).
fn partition_number(id: i32) -> u32 {
    u32::try_from(id).unwrap_or(0)
}

/// One partition of a topic by id (partitions are listed by id, so usually at that index).
fn find_partition(t: &TopicState, id: i32) -> Option<&PartitionState> {
    match usize::try_from(id).ok().and_then(|i| t.partitions.get(i)) {
        Some(p) if p.id == id => Some(p),
        _ => t.partitions.iter().find(|p| p.id == id),
    }
}

#[cfg(test)]
mod tests;
