//! The requests of one poll: Metadata, ListOffsets (earliest and latest) to each leader,
//! ListGroups on every broker, FindCoordinator for the groups, DescribeGroups and OffsetFetch
//! to each coordinator, DescribeLogDirs on every broker that answers it.
//!
//! What a broker does not answer stays unknown (`None` offsets and sizes, groups it lists or
//! coordinates missing or without details) instead of failing the poll; only a cluster of
//! which no broker answers Metadata fails it. An answer saying a leader or coordinator moved
//! (NOT_LEADER_OR_FOLLOWER, UNKNOWN_TOPIC_OR_PARTITION, NOT_COORDINATOR, ...) refreshes the
//! metadata (or the coordinators) and asks again, once per poll.

use std::collections::{BTreeMap, BTreeSet};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::list_offsets_request::{ListOffsetsPartition, ListOffsetsTopic};
use kafka_protocol::messages::offset_fetch_request::{
    OffsetFetchRequestGroup, OffsetFetchRequestTopic,
};
use kafka_protocol::messages::offset_fetch_response::OffsetFetchResponsePartition;
use kafka_protocol::messages::{
    BrokerId, DescribeGroupsRequest, DescribeLogDirsRequest, FindCoordinatorRequest, GroupId,
    ListGroupsRequest, ListOffsetsRequest, OffsetFetchRequest, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use tracing::debug;

use super::super::model::{ClusterState, GroupState, PartitionState, TopicState};
use super::route::{self, coordinator_moved, leader_moved, Layout};
use super::{now_ms, Client, ClientError};

/// ListOffsets' timestamp for the log-start offset.
const EARLIEST: i64 = -2;
/// ListOffsets' timestamp for the log-end offset.
const LATEST: i64 = -1;

/// Partitions to ask again after a metadata refresh, by topic.
type Retry = BTreeMap<String, BTreeSet<i32>>;

/// Partitions by topic, as one request names them.
type Partitions = Vec<(String, Vec<i32>)>;

impl Client {
    /// Polls the whole cluster once (see the module's documentation). Fails only when no
    /// broker answers Metadata, with [`ClientError::NoBroker`].
    pub(crate) fn poll(&mut self) -> Result<ClusterState, ClientError> {
        let at_ms = now_ms();
        self.down.clear();
        let mut state = ClusterState {
            at_ms,
            ..ClusterState::default()
        };
        set_layout(&mut state, self.metadata()?);
        let retry = self.offsets(&mut state.topics, |_, _| true);
        if !retry.is_empty() {
            debug!(partitions = ?retry, "kafka: leaders moved, refreshing metadata");
            match self.metadata() {
                Ok(layout) => {
                    let old = std::mem::take(&mut state.topics);
                    set_layout(&mut state, layout);
                    carry_offsets(&old, &mut state.topics);
                    self.offsets(&mut state.topics, |t, p| {
                        retry.get(t).is_some_and(|ps| ps.contains(&p))
                    });
                }
                Err(e) => debug!(error = %e, "kafka: metadata refresh failed"),
            }
        }
        (state.groups, state.groups_complete) = self.groups(&state.topics);
        self.log_dirs(&mut state.topics);
        Ok(state)
    }

    /// Fills the start and end offsets of the wanted partitions from their leaders; returns
    /// those whose leader said it no longer leads them.
    fn offsets(
        &mut self,
        topics: &mut BTreeMap<String, TopicState>,
        wanted: impl FnMut(&str, i32) -> bool,
    ) -> Retry {
        let plan: Vec<(i32, Partitions)> = route::by_leader(topics, &self.brokers, wanted)
            .by_broker
            .into_iter()
            .map(|(b, ts)| {
                (
                    b,
                    ts.into_iter().map(|(t, ps)| (t.to_owned(), ps)).collect(),
                )
            })
            .collect();
        let timeout_ms = self.timeout_ms();
        let mut retry = Retry::new();
        for (broker, wanted) in plan {
            for timestamp in [EARLIEST, LATEST] {
                let resp = match self.call(broker, |_| list_offsets(&wanted, timestamp, timeout_ms))
                {
                    Ok(resp) => resp,
                    Err(e) => {
                        debug!(broker, error = %e, "kafka: ListOffsets failed");
                        break;
                    }
                };
                for t in &resp.topics {
                    for p in &t.partitions {
                        match ResponseError::try_from_code(p.error_code) {
                            None => {
                                let Some(part) = partition_mut(topics, &t.name, p.partition_index)
                                else {
                                    continue;
                                };
                                let offset = Some(p.offset).filter(|&o| o >= 0);
                                if timestamp == EARLIEST {
                                    part.start_offset = offset;
                                } else {
                                    part.end_offset = offset;
                                }
                            }
                            Some(e) if leader_moved(e) => {
                                retry
                                    .entry(t.name.0.to_string())
                                    .or_default()
                                    .insert(p.partition_index);
                            }
                            Some(e) => debug!(
                                broker, topic = %t.name.0, partition = p.partition_index, error = %e,
                                "kafka: ListOffsets refused"
                            ),
                        }
                    }
                }
            }
        }
        retry
    }

    /// Every broker's groups, with their state, members and committed offsets from their
    /// coordinators.
    /// Every group the brokers list, described, with its committed offsets; and whether
    /// every broker answered ListGroups.
    fn groups(
        &mut self,
        topics: &BTreeMap<String, TopicState>,
    ) -> (BTreeMap<String, GroupState>, bool) {
        let mut groups = BTreeMap::new();
        let mut complete = true;
        for id in self.candidates() {
            match self.call(id, |_| ListGroupsRequest::default()) {
                Ok(resp) => {
                    if let Some(e) = ResponseError::try_from_code(resp.error_code) {
                        debug!(broker = id, error = %e, "kafka: ListGroups refused");
                    }
                    for g in resp.groups {
                        groups
                            .entry(g.group_id.0.to_string())
                            .or_insert_with(|| GroupState {
                                // ListGroups v4+ gives the state; DescribeGroups replaces it.
                                state: g.group_state.to_string(),
                                protocol_type: g.protocol_type.to_string(),
                                ..GroupState::default()
                            });
                    }
                }
                Err(e) => {
                    complete = false;
                    debug!(broker = id, error = %e, "kafka: ListGroups failed");
                }
            }
        }
        self.coordinators.retain(|g, _| groups.contains_key(g));
        let mut todo: Vec<String> = groups.keys().cloned().collect();
        for _ in 0..2 {
            if todo.is_empty() {
                break;
            }
            self.find_coordinators(&todo);
            let plan: Vec<(i32, Vec<String>)> = route::by_coordinator(
                todo.iter().map(String::as_str),
                &self.coordinators,
                &self.brokers,
            )
            .by_broker
            .into_iter()
            .map(|(b, gs)| (b, gs.into_iter().map(str::to_owned).collect()))
            .collect();
            let mut moved = BTreeSet::new();
            for (broker, ids) in plan {
                self.describe_groups(broker, &ids, &mut groups, &mut moved);
                self.committed(broker, &ids, topics, &mut groups, &mut moved);
            }
            for g in &moved {
                self.coordinators.remove(g);
            }
            todo = moved.into_iter().collect();
        }
        (groups, complete)
    }

    /// Asks for the coordinators of the groups not known yet: in one request where the
    /// broker speaks FindCoordinator v4+ (`coordinator_keys`), else one request per group.
    pub(super) fn find_coordinators(&mut self, groups: &[String]) {
        let mut missing: Vec<&String> = groups
            .iter()
            .filter(|g| !self.coordinators.contains_key(*g))
            .collect();
        for id in self.candidates() {
            if missing.is_empty() {
                return;
            }
            let Ok(version) = self.version::<FindCoordinatorRequest>(id) else {
                continue;
            };
            if version >= 4 {
                let keys = missing
                    .iter()
                    .map(|g| StrBytes::from_string((*g).clone()))
                    .collect();
                match self.call(id, |_| {
                    FindCoordinatorRequest::default().with_coordinator_keys(keys)
                }) {
                    Ok(resp) => {
                        for c in resp.coordinators {
                            match ResponseError::try_from_code(c.error_code) {
                                None => {
                                    self.coordinators.insert(c.key.to_string(), c.node_id.0);
                                }
                                Some(e) => {
                                    debug!(group = %c.key, error = %e, "kafka: no coordinator")
                                }
                            }
                        }
                        return;
                    }
                    Err(e) => debug!(broker = id, error = %e, "kafka: FindCoordinator failed"),
                }
            } else {
                while let Some(&g) = missing.last() {
                    let req = FindCoordinatorRequest::default()
                        .with_key(StrBytes::from_string(g.clone()));
                    match self.call(id, |_| req) {
                        Ok(resp) => {
                            match ResponseError::try_from_code(resp.error_code) {
                                None => {
                                    self.coordinators.insert(g.clone(), resp.node_id.0);
                                }
                                Some(e) => debug!(group = %g, error = %e, "kafka: no coordinator"),
                            }
                            missing.pop();
                        }
                        Err(e) => {
                            debug!(broker = id, error = %e, "kafka: FindCoordinator failed");
                            break;
                        }
                    }
                }
            }
        }
    }

    /// DescribeGroups of `ids` on their coordinator `broker`: state, members, protocol type.
    fn describe_groups(
        &mut self,
        broker: i32,
        ids: &[String],
        groups: &mut BTreeMap<String, GroupState>,
        moved: &mut BTreeSet<String>,
    ) {
        let req =
            DescribeGroupsRequest::default().with_groups(ids.iter().map(|g| group_id(g)).collect());
        let resp = match self.call(broker, |_| req) {
            Ok(resp) => resp,
            Err(e) => return debug!(broker, error = %e, "kafka: DescribeGroups failed"),
        };
        for d in resp.groups {
            let id = d.group_id.0.as_str();
            match ResponseError::try_from_code(d.error_code) {
                None => {
                    let Some(g) = groups.get_mut(id) else {
                        continue;
                    };
                    g.state = d.group_state.to_string();
                    g.members = u32::try_from(d.members.len()).unwrap_or(u32::MAX);
                    g.described = true;
                    if !d.protocol_type.is_empty() {
                        g.protocol_type = d.protocol_type.to_string();
                    }
                }
                Some(e) if coordinator_moved(e) => {
                    moved.insert(id.to_owned());
                }
                Some(e) => debug!(broker, group = id, error = %e, "kafka: DescribeGroups refused"),
            }
        }
    }

    /// OffsetFetch of every committed partition of `ids` on their coordinator `broker`: all
    /// groups in one request where it speaks v8+, else one request per group (naming every
    /// partition of `topics` where the broker cannot answer "all partitions").
    fn committed(
        &mut self,
        broker: i32,
        ids: &[String],
        topics: &BTreeMap<String, TopicState>,
        groups: &mut BTreeMap<String, GroupState>,
        moved: &mut BTreeSet<String>,
    ) {
        let Ok(version) = self.version::<OffsetFetchRequest>(broker) else {
            return;
        };
        let mut answer =
            |id: &str,
             error: i16,
             offsets: &mut dyn Iterator<Item = (&TopicName, i32, i64, i16)>| {
                match ResponseError::try_from_code(error) {
                    None => {
                        let Some(g) = groups.get_mut(id) else { return };
                        for (topic, partition, offset, error) in offsets {
                            if error == 0 && offset >= 0 {
                                g.committed.insert((topic.0.to_string(), partition), offset);
                            }
                        }
                    }
                    Some(e) if coordinator_moved(e) => {
                        moved.insert(id.to_owned());
                    }
                    Some(e) => debug!(broker, group = id, error = %e, "kafka: OffsetFetch refused"),
                }
            };
        if version >= 8 {
            let req = OffsetFetchRequest::default().with_groups(
                ids.iter()
                    .map(|g| {
                        OffsetFetchRequestGroup::default()
                            .with_group_id(group_id(g))
                            .with_topics(None)
                    })
                    .collect(),
            );
            match self.call(broker, |_| req) {
                Ok(resp) => {
                    for g in &resp.groups {
                        let mut offsets = g.topics.iter().flat_map(|t| {
                            t.partitions.iter().map(move |p| {
                                (&t.name, p.partition_index, p.committed_offset, p.error_code)
                            })
                        });
                        answer(&g.group_id.0, g.error_code, &mut offsets);
                    }
                }
                Err(e) => debug!(broker, error = %e, "kafka: OffsetFetch failed"),
            }
        } else {
            let mut every_partition = None;
            for id in ids {
                let req = OffsetFetchRequest::default().with_group_id(group_id(id));
                let resp = match self.call(broker, |_| req.clone().with_topics(None)) {
                    // tansu 0.6.0 answers "all partitions" (null) before v8 with a null
                    // array, which the protocol does not allow: name them all instead.
                    Err(ClientError::Decode { .. }) => {
                        let all = every_partition.get_or_insert_with(|| {
                            topics
                                .iter()
                                .map(|(name, t)| {
                                    OffsetFetchRequestTopic::default()
                                        .with_name(TopicName(StrBytes::from_string(name.clone())))
                                        .with_partition_indexes(
                                            t.partitions.iter().map(|p| p.id).collect(),
                                        )
                                })
                                .collect::<Vec<_>>()
                        });
                        self.call(broker, |_| req.with_topics(Some(all.clone())))
                    }
                    other => other,
                };
                match resp {
                    Ok(resp) => {
                        let mut offsets = resp.topics.iter().flat_map(|t| {
                            t.partitions
                                .iter()
                                .map(move |p: &OffsetFetchResponsePartition| {
                                    (&t.name, p.partition_index, p.committed_offset, p.error_code)
                                })
                        });
                        answer(id, resp.error_code, &mut offsets);
                    }
                    Err(e) => {
                        debug!(broker, error = %e, "kafka: OffsetFetch failed");
                        if e.breaks_connection() {
                            return;
                        }
                    }
                }
            }
        }
    }

    /// Partition sizes from every broker that answers DescribeLogDirs, summed over the
    /// replicas that reported (future replicas, copies being moved, left out).
    fn log_dirs(&mut self, topics: &mut BTreeMap<String, TopicState>) {
        for id in self.candidates() {
            let resp = match self.call(id, |_| DescribeLogDirsRequest::default().with_topics(None))
            {
                Ok(resp) => resp,
                Err(e) => {
                    debug!(broker = id, error = %e, "kafka: DescribeLogDirs failed");
                    continue;
                }
            };
            if let Some(e) = ResponseError::try_from_code(resp.error_code) {
                debug!(broker = id, error = %e, "kafka: DescribeLogDirs refused");
                continue;
            }
            for dir in resp.results.iter().filter(|d| d.error_code == 0) {
                for t in &dir.topics {
                    for p in t.partitions.iter().filter(|p| !p.is_future_key) {
                        let (Some(part), Ok(size)) = (
                            partition_mut(topics, &t.name, p.partition_index),
                            u64::try_from(p.partition_size),
                        ) else {
                            continue;
                        };
                        *part.size_bytes.get_or_insert(0) += size;
                    }
                }
            }
        }
    }
}

/// ListOffsets of `wanted` at `timestamp`, as a consumer (replica -1, read uncommitted: the
/// log-end offset, not the last stable one).
fn list_offsets(
    wanted: &[(String, Vec<i32>)],
    timestamp: i64,
    timeout_ms: i32,
) -> ListOffsetsRequest {
    let topics = wanted
        .iter()
        .map(|(t, ps)| {
            ListOffsetsTopic::default()
                .with_name(TopicName(StrBytes::from_string(t.clone())))
                .with_partitions(
                    ps.iter()
                        .map(|&p| {
                            ListOffsetsPartition::default()
                                .with_partition_index(p)
                                .with_timestamp(timestamp)
                        })
                        .collect(),
                )
        })
        .collect();
    ListOffsetsRequest::default()
        .with_replica_id(BrokerId(-1))
        .with_topics(topics)
        .with_timeout_ms(timeout_ms)
}

fn group_id(g: &str) -> GroupId {
    GroupId(StrBytes::from_string(g.to_owned()))
}

fn partition_mut<'a>(
    topics: &'a mut BTreeMap<String, TopicState>,
    topic: &str,
    partition: i32,
) -> Option<&'a mut PartitionState> {
    let parts = &mut topics.get_mut(topic)?.partitions;
    let i = parts.binary_search_by_key(&partition, |p| p.id).ok()?;
    parts.get_mut(i)
}

fn set_layout(state: &mut ClusterState, layout: Layout) {
    for (topic, partition, error) in &layout.errors {
        debug!(topic, ?partition, %error, "kafka: metadata error");
    }
    state.cluster_id = layout.cluster_id;
    state.controller = layout.controller;
    state.brokers = layout.brokers.into_values().collect();
    state.topics = layout.topics;
}

/// Keeps the offsets a first round obtained across a metadata refresh.
fn carry_offsets(old: &BTreeMap<String, TopicState>, new: &mut BTreeMap<String, TopicState>) {
    for (name, topic) in old {
        for p in &topic.partitions {
            if let Some(n) = partition_mut(new, name, p.id) {
                n.start_offset = n.start_offset.or(p.start_offset);
                n.end_offset = n.end_offset.or(p.end_offset);
            }
        }
    }
}
