//! Routing, with no I/O: what a Metadata response says of the cluster (brokers, controller,
//! topics, leaders), which broker each request of a poll goes to (ListOffsets to each
//! partition's leader, DescribeGroups and OffsetFetch to each group's coordinator), and which
//! connections a new Metadata makes stale.

use std::collections::BTreeMap;

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::MetadataResponse;

use super::super::model::{Broker, PartitionState, TopicState};

/// What one Metadata response says of the cluster.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Layout {
    pub(crate) cluster_id: Option<String>,
    /// `None` when the broker reports none (-1).
    pub(crate) controller: Option<i32>,
    /// By id.
    pub(crate) brokers: BTreeMap<i32, Broker>,
    /// By name; partitions by id, offsets and sizes unknown.
    pub(crate) topics: BTreeMap<String, TopicState>,
    /// Topics and partitions the broker reported an error for, with the error (they are still
    /// listed in `topics` when the broker gave their partitions).
    pub(crate) errors: Vec<(String, Option<i32>, ResponseError)>,
}

impl Layout {
    /// Reads a Metadata response (any version from 1).
    pub(crate) fn from_metadata(resp: &MetadataResponse) -> Self {
        let brokers = resp
            .brokers
            .iter()
            .filter_map(|b| {
                Some((
                    b.node_id.0,
                    Broker {
                        id: b.node_id.0,
                        host: b.host.to_string(),
                        port: u16::try_from(b.port).ok()?,
                        rack: b.rack.as_ref().map(ToString::to_string),
                    },
                ))
            })
            .collect();
        let mut errors = Vec::new();
        let mut topics = BTreeMap::new();
        for t in &resp.topics {
            let Some(name) = t.name.as_ref().map(|n| n.0.to_string()) else {
                continue; // a topic known by id only: not asked for
            };
            if let Some(e) = ResponseError::try_from_code(t.error_code) {
                errors.push((name.clone(), None, e));
                // Not a topic (any other error, such as LEADER_NOT_AVAILABLE while it is
                // created, leaves it listed).
                if matches!(
                    e,
                    ResponseError::UnknownTopicOrPartition
                        | ResponseError::UnknownTopicId
                        | ResponseError::InvalidTopicException
                ) {
                    continue;
                }
            }
            let mut partitions: Vec<PartitionState> = t
                .partitions
                .iter()
                .map(|p| {
                    if let Some(e) = ResponseError::try_from_code(p.error_code) {
                        errors.push((name.clone(), Some(p.partition_index), e));
                    }
                    PartitionState {
                        id: p.partition_index,
                        leader: p.leader_id.0,
                        replicas: p.replica_nodes.iter().map(|b| b.0).collect(),
                        isr: p.isr_nodes.iter().map(|b| b.0).collect(),
                        ..PartitionState::default()
                    }
                })
                .collect();
            partitions.sort_by_key(|p| p.id);
            partitions.dedup_by_key(|p| p.id);
            topics.insert(
                name,
                TopicState {
                    internal: t.is_internal,
                    partitions,
                },
            );
        }
        Self {
            cluster_id: resp.cluster_id.as_ref().map(ToString::to_string),
            controller: (resp.controller_id.0 >= 0).then_some(resp.controller_id.0),
            brokers,
            topics,
            errors,
        }
    }
}

/// Requests of one kind grouped by the broker they go to, and what has no broker to go to.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Plan<T> {
    /// By broker id.
    pub(crate) by_broker: BTreeMap<i32, Vec<T>>,
    /// No broker to ask: no leader (-1), a leader or coordinator Metadata does not list, or a
    /// group whose coordinator is unknown.
    pub(crate) unrouted: Vec<T>,
}

impl<T> Plan<T> {
    fn push(&mut self, broker: Option<i32>, item: T) {
        match broker {
            Some(b) => self.by_broker.entry(b).or_default().push(item),
            None => self.unrouted.push(item),
        }
    }
}

/// The partitions of `topics` for which `wanted(topic, partition)` holds, by leader: each
/// broker's list holds each of its topics once, with its partitions in order.
pub(crate) fn by_leader<'a>(
    topics: &'a BTreeMap<String, TopicState>,
    brokers: &BTreeMap<i32, Broker>,
    mut wanted: impl FnMut(&str, i32) -> bool,
) -> Plan<(&'a str, Vec<i32>)> {
    let mut plan = Plan::default();
    for (name, topic) in topics {
        let mut here: BTreeMap<Option<i32>, Vec<i32>> = BTreeMap::new();
        for p in topic.partitions.iter().filter(|p| wanted(name, p.id)) {
            let leader = Some(p.leader).filter(|l| brokers.contains_key(l));
            here.entry(leader).or_default().push(p.id);
        }
        for (leader, partitions) in here {
            match leader {
                Some(_) => plan.push(leader, (name.as_str(), partitions)),
                None => plan
                    .unrouted
                    .extend(partitions.into_iter().map(|p| (name.as_str(), vec![p]))),
            }
        }
    }
    plan
}

/// Groups by coordinator (`coordinators`: group id -> broker id, as FindCoordinator answered).
pub(crate) fn by_coordinator<'a>(
    groups: impl IntoIterator<Item = &'a str>,
    coordinators: &BTreeMap<String, i32>,
    brokers: &BTreeMap<i32, Broker>,
) -> Plan<&'a str> {
    let mut plan = Plan::default();
    for g in groups {
        let at = coordinators
            .get(g)
            .copied()
            .filter(|b| brokers.contains_key(b));
        plan.push(at, g);
    }
    plan
}

/// The brokers whose connection a new Metadata makes stale: gone from the cluster, or now
/// advertised at another address.
pub(crate) fn stale(old: &BTreeMap<i32, Broker>, new: &BTreeMap<i32, Broker>) -> Vec<i32> {
    old.iter()
        .filter(|(id, b)| {
            new.get(id)
                .map_or(true, |n| n.host != b.host || n.port != b.port)
        })
        .map(|(&id, _)| id)
        .collect()
}

/// Errors that mean the partition's leader is elsewhere now (or the topic changed).
pub(super) fn leader_moved(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::NotLeaderOrFollower
            | ResponseError::UnknownTopicOrPartition
            | ResponseError::LeaderNotAvailable
            | ResponseError::FencedLeaderEpoch
    )
}

/// Errors that mean the group's coordinator is elsewhere now.
pub(super) fn coordinator_moved(e: ResponseError) -> bool {
    matches!(
        e,
        ResponseError::NotCoordinator | ResponseError::CoordinatorNotAvailable
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::messages::metadata_response::{
        MetadataResponseBroker, MetadataResponsePartition, MetadataResponseTopic,
    };
    use kafka_protocol::messages::{BrokerId, TopicName};
    use kafka_protocol::protocol::StrBytes;

    fn broker(id: i32, port: i32) -> MetadataResponseBroker {
        MetadataResponseBroker::default()
            .with_node_id(BrokerId(id))
            .with_host(StrBytes::from_static_str("10.0.0.1"))
            .with_port(port)
            .with_rack(Some(StrBytes::from_string(format!("rack-{id}"))))
    }

    fn partition(id: i32, leader: i32, replicas: &[i32]) -> MetadataResponsePartition {
        MetadataResponsePartition::default()
            .with_partition_index(id)
            .with_leader_id(BrokerId(leader))
            .with_replica_nodes(replicas.iter().map(|&b| BrokerId(b)).collect())
            .with_isr_nodes(replicas.iter().map(|&b| BrokerId(b)).collect())
            .with_error_code(if leader < 0 {
                ResponseError::LeaderNotAvailable.code()
            } else {
                0
            })
    }

    fn topic(
        name: &'static str,
        internal: bool,
        partitions: Vec<MetadataResponsePartition>,
    ) -> MetadataResponseTopic {
        MetadataResponseTopic::default()
            .with_name(Some(TopicName(StrBytes::from_static_str(name))))
            .with_is_internal(internal)
            .with_partitions(partitions)
    }

    /// A 3-broker cluster as Metadata v12 describes it: "orders" with 4 partitions over the
    /// three brokers, partition 3 offline (no leader); "payments" on brokers 2 and 3; the
    /// internal `__consumer_offsets` led by broker 1.
    fn three_brokers() -> MetadataResponse {
        MetadataResponse::default()
            .with_brokers(vec![broker(1, 9092), broker(2, 9093), broker(3, 9094)])
            .with_cluster_id(Some(StrBytes::from_static_str("lkc-3b")))
            .with_controller_id(BrokerId(2))
            .with_topics(vec![
                // Listed out of order, as brokers do.
                topic(
                    "orders",
                    false,
                    vec![
                        partition(2, 3, &[3, 1, 2]),
                        partition(0, 1, &[1, 2, 3]),
                        partition(1, 2, &[2, 3, 1]),
                        partition(3, -1, &[1, 2, 3]),
                    ],
                ),
                topic(
                    "payments",
                    false,
                    vec![partition(0, 2, &[2, 3]), partition(1, 3, &[3, 2])],
                ),
                topic(
                    "__consumer_offsets",
                    true,
                    vec![partition(0, 1, &[1, 2, 3])],
                ),
            ])
    }

    #[test]
    fn metadata_of_three_brokers() {
        let l = Layout::from_metadata(&three_brokers());
        assert_eq!(l.cluster_id.as_deref(), Some("lkc-3b"));
        assert_eq!(l.controller, Some(2));
        assert_eq!(l.brokers.keys().copied().collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(
            l.brokers[&2],
            Broker {
                id: 2,
                host: "10.0.0.1".into(),
                port: 9093,
                rack: Some("rack-2".into())
            }
        );
        let orders = &l.topics["orders"];
        assert!(!orders.internal);
        assert_eq!(
            orders.partitions.iter().map(|p| p.id).collect::<Vec<_>>(),
            [0, 1, 2, 3]
        );
        assert_eq!(orders.partitions[2].leader, 3);
        assert_eq!(orders.partitions[2].replicas, [3, 1, 2]);
        assert_eq!(orders.partitions[3].leader, -1);
        assert_eq!(orders.partitions[3].start_offset, None);
        assert!(l.topics["__consumer_offsets"].internal);
        assert_eq!(
            l.errors,
            [(
                "orders".to_owned(),
                Some(3),
                ResponseError::LeaderNotAvailable
            )]
        );
    }

    #[test]
    fn partitions_go_to_their_leaders() {
        let l = Layout::from_metadata(&three_brokers());
        let plan = by_leader(&l.topics, &l.brokers, |_, _| true);
        assert_eq!(
            plan.by_broker,
            BTreeMap::from([
                (
                    1,
                    vec![("__consumer_offsets", vec![0]), ("orders", vec![0])]
                ),
                (2, vec![("orders", vec![1]), ("payments", vec![0])]),
                (3, vec![("orders", vec![2]), ("payments", vec![1])]),
            ])
        );
        // The offline partition has no broker to ask.
        assert_eq!(plan.unrouted, [("orders", vec![3])]);

        // A retry asks only for what failed, of the same leaders.
        let plan = by_leader(&l.topics, &l.brokers, |t, p| t == "orders" && p != 0);
        assert_eq!(plan.by_broker.keys().copied().collect::<Vec<_>>(), [2, 3]);
        assert_eq!(plan.by_broker[&2], [("orders", vec![1])]);
    }

    /// Broker 3 disappears: its connection is stale, the partitions Metadata still says it
    /// leads are unrouted, and those it led that moved go to their new leader.
    #[test]
    fn a_broker_disappears() {
        let before = Layout::from_metadata(&three_brokers());
        let mut resp = three_brokers();
        resp.brokers.retain(|b| b.node_id.0 != 3);
        // orders/2 moved to broker 1; payments/1 not yet (stale metadata names broker 3).
        resp.topics[0].partitions[0] = partition(2, 1, &[1, 2]);
        let after = Layout::from_metadata(&resp);
        assert_eq!(stale(&before.brokers, &after.brokers), [3]);

        let plan = by_leader(&after.topics, &after.brokers, |_, _| true);
        assert_eq!(
            plan.by_broker[&1],
            [("__consumer_offsets", vec![0]), ("orders", vec![0, 2])]
        );
        assert_eq!(plan.unrouted, [("orders", vec![3]), ("payments", vec![1])]);

        // Groups coordinated by broker 3 have no coordinator until FindCoordinator is asked
        // again; an unknown group neither.
        let coordinators = BTreeMap::from([("billing".to_owned(), 3), ("audit".to_owned(), 1)]);
        let plan = by_coordinator(["audit", "billing", "new"], &coordinators, &after.brokers);
        assert_eq!(plan.by_broker, BTreeMap::from([(1, vec!["audit"])]));
        assert_eq!(plan.unrouted, ["billing", "new"]);
        let plan = by_coordinator(["audit", "billing"], &coordinators, &before.brokers);
        assert_eq!(
            plan.by_broker,
            BTreeMap::from([(1, vec!["audit"]), (3, vec!["billing"])])
        );
    }

    #[test]
    fn a_broker_moves() {
        let before = Layout::from_metadata(&three_brokers());
        let mut resp = three_brokers();
        resp.brokers[1].port = 19093;
        resp.brokers.push(broker(4, 9095));
        let after = Layout::from_metadata(&resp);
        // Broker 2 moved; broker 4 is new (connected when first needed); 1 and 3 stay.
        assert_eq!(stale(&before.brokers, &after.brokers), [2]);
        assert_eq!(stale(&after.brokers, &after.brokers), Vec::<i32>::new());
    }

    #[test]
    fn topic_errors_are_kept() {
        let mut resp = three_brokers();
        resp.topics.push(
            topic("creating", false, vec![])
                .with_error_code(ResponseError::LeaderNotAvailable.code()),
        );
        resp.topics.push(
            topic("gone", false, vec![])
                .with_error_code(ResponseError::UnknownTopicOrPartition.code()),
        );
        resp.topics
            .push(MetadataResponseTopic::default().with_name(None));
        let l = Layout::from_metadata(&resp);
        // Being created: listed, with no partitions yet.
        assert_eq!(l.topics["creating"].partitions, []);
        assert!(l.errors.contains(&(
            "creating".to_owned(),
            None,
            ResponseError::LeaderNotAvailable
        )));
        assert!(!l.topics.contains_key("gone"));
        assert_eq!(l.topics.len(), 4);
        // No controller known.
        let l = Layout::from_metadata(&three_brokers().with_controller_id(BrokerId(-1)));
        assert_eq!(l.controller, None);
    }
}
