//! A small admin API, for the tests (and later REST): create and delete a topic, produce one
//! record, commit a group's offset without joining the group.
//!
//! Each operation refreshes the metadata first, and asks again once, after another refresh,
//! when the answer says the controller, leader or coordinator is elsewhere now.

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::create_topics_request::{CreatableTopic, CreatableTopicConfig};
use kafka_protocol::messages::delete_topics_request::DeleteTopicState;
use kafka_protocol::messages::offset_commit_request::{
    OffsetCommitRequestPartition, OffsetCommitRequestTopic,
};
use kafka_protocol::messages::produce_request::{PartitionProduceData, TopicProduceData};
use kafka_protocol::messages::{
    ApiKey, CreateTopicsRequest, DeleteTopicsRequest, OffsetCommitRequest, ProduceRequest,
    ProduceResponse, TopicName,
};
use kafka_protocol::protocol::StrBytes;
use kafka_protocol::records::{
    Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    NO_PARTITION_LEADER_EPOCH, NO_PRODUCER_EPOCH, NO_PRODUCER_ID, NO_SEQUENCE,
};

use super::route::Layout;
use super::route::{coordinator_moved, leader_moved};
use super::{now_ms, Client, ClientError};

impl Client {
    /// Creates `topic` with `partitions` partitions of `replication_factor` replicas each (on
    /// the controller, which Kafka before 2.8 requires).
    pub fn create_topic(
        &mut self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
    ) -> Result<(), ClientError> {
        self.create_topic_with(topic, partitions, replication_factor, &[])
    }

    /// Creates `topic` as [`create_topic`](Self::create_topic) does, with topic configs
    /// (`retention.ms`, ...) other than the broker's defaults.
    pub fn create_topic_with(
        &mut self,
        topic: &str,
        partitions: i32,
        replication_factor: i16,
        configs: &[(&str, &str)],
    ) -> Result<(), ClientError> {
        let configs = configs
            .iter()
            .map(|(name, value)| {
                CreatableTopicConfig::default()
                    .with_name(StrBytes::from_string((*name).to_owned()))
                    .with_value(Some(StrBytes::from_string((*value).to_owned())))
            })
            .collect();
        let req = CreateTopicsRequest::default()
            .with_topics(vec![CreatableTopic::default()
                .with_name(topic_name(topic))
                .with_num_partitions(partitions)
                .with_replication_factor(replication_factor)
                .with_configs(configs)])
            .with_timeout_ms(self.timeout_ms());
        self.on_controller(|client, id| {
            let resp = client.call(id, |_| req.clone())?;
            let r = resp.topics.iter().find(|r| r.name.0.as_str() == topic);
            let (code, message) = r.map_or((0, None), |r| (r.error_code, r.error_message.as_ref()));
            client.check(
                id,
                ApiKey::CreateTopics,
                code,
                format_what("topic", topic, message),
            )
        })
    }

    /// Deletes `topic` (on the controller).
    pub fn delete_topic(&mut self, topic: &str) -> Result<(), ClientError> {
        let timeout_ms = self.timeout_ms();
        self.on_controller(|client, id| {
            let resp = client.call(id, |version| {
                let req = DeleteTopicsRequest::default().with_timeout_ms(timeout_ms);
                if version >= 6 {
                    req.with_topics(vec![
                        DeleteTopicState::default().with_name(Some(topic_name(topic)))
                    ])
                } else {
                    req.with_topic_names(vec![topic_name(topic)])
                }
            })?;
            let r = resp
                .responses
                .iter()
                .find(|r| r.name.as_ref().is_some_and(|n| n.0.as_str() == topic));
            let (code, message) = r.map_or((0, None), |r| (r.error_code, r.error_message.as_ref()));
            client.check(
                id,
                ApiKey::DeleteTopics,
                code,
                format_what("topic", topic, message),
            )
        })
    }

    /// Produces one record (`value`, optionally `key`) to `partition` of `topic`, waiting for
    /// every in-sync replica (acks = -1). Returns the record's offset.
    ///
    /// One record per request: tansu 0.6.0 reports a wrong log-end offset after a request
    /// carrying several (the last batch's base offset + 1).
    pub fn produce(
        &mut self,
        topic: &str,
        partition: i32,
        key: Option<&[u8]>,
        value: &[u8],
    ) -> Result<i64, ClientError> {
        let req = produce_request(topic, partition, one_record(key, value)?, self.timeout_ms());
        let what = format!(" for {topic}/{partition}");
        self.twice(|client, layout, retry| {
            let id = leader(layout, topic, partition)?;
            let resp = client.call(id, |_| req.clone())?;
            let Some((code, base_offset)) = produced(&resp, topic, partition) else {
                return Err(client.refused(
                    id,
                    ApiKey::Produce,
                    ResponseError::UnknownServerError,
                    &what,
                ));
            };
            match ResponseError::try_from_code(code) {
                None => Ok(Ok(base_offset)),
                Some(e) if retry && leader_moved(e) => Ok(Err(())),
                Some(e) => Err(client.refused(id, ApiKey::Produce, e, &what)),
            }
        })
    }

    /// Commits `offset` for `partition` of `topic` in `group`, as a "simple consumer" that
    /// never joins it (generation -1, no member id): the group needs no member, and the broker
    /// refuses the commit while the group has members.
    pub fn commit_offset(
        &mut self,
        group: &str,
        topic: &str,
        partition: i32,
        offset: i64,
    ) -> Result<(), ClientError> {
        let req = OffsetCommitRequest::default()
            .with_group_id(kafka_protocol::messages::GroupId(StrBytes::from_string(
                group.to_owned(),
            )))
            .with_generation_id_or_member_epoch(-1)
            .with_member_id(StrBytes::default())
            .with_topics(vec![OffsetCommitRequestTopic::default()
                .with_name(topic_name(topic))
                .with_partitions(vec![OffsetCommitRequestPartition::default()
                    .with_partition_index(partition)
                    .with_committed_offset(offset)])]);
        let what = format!(" of group {group:?} for {topic}/{partition}");
        self.twice(|client, _, retry| {
            client.find_coordinators(&[group.to_owned()]);
            let Some(id) = client.coordinators.get(group).copied() else {
                return Err(ClientError::Leaderless {
                    what: format!("group {group:?}"),
                    role: "coordinator",
                });
            };
            let resp = client.call(id, |_| req.clone())?;
            let code = resp
                .topics
                .iter()
                .filter(|t| t.name.0.as_str() == topic)
                .flat_map(|t| &t.partitions)
                .find(|p| p.partition_index == partition)
                .map_or(0, |p| p.error_code);
            match ResponseError::try_from_code(code) {
                None => Ok(Ok(())),
                Some(e) if retry && coordinator_moved(e) => {
                    client.coordinators.remove(group);
                    Ok(Err(()))
                }
                Some(e) => Err(client.refused(id, ApiKey::OffsetCommit, e, &what)),
            }
        })
    }

    /// Runs `op` after a metadata refresh; again, after another, when it returns `Ok(Err(()))`
    /// (the answer said to ask elsewhere). `op`'s flag says whether a retry is still possible.
    fn twice<T>(
        &mut self,
        mut op: impl FnMut(&mut Self, &Layout, bool) -> Result<Result<T, ()>, ClientError>,
    ) -> Result<T, ClientError> {
        for retry in [true, false] {
            self.down.clear();
            let layout = self.metadata()?;
            if let Ok(done) = op(self, &layout, retry)? {
                return Ok(done);
            }
        }
        unreachable!("the last attempt does not ask for a retry")
    }

    /// Runs `op` on the controller (any broker when none is known); again, after a metadata
    /// refresh, when the broker answers NOT_CONTROLLER.
    fn on_controller(
        &mut self,
        mut op: impl FnMut(&mut Self, i32) -> Result<(), ClientError>,
    ) -> Result<(), ClientError> {
        self.twice(|client, layout, retry| {
            let id = layout
                .controller
                .filter(|c| layout.brokers.contains_key(c))
                .or_else(|| client.candidates().first().copied())
                .ok_or(ClientError::UnknownBroker { id: -1 })?;
            match op(client, id) {
                Err(ClientError::Refused {
                    error: ResponseError::NotController,
                    ..
                }) if retry => Ok(Err(())),
                other => other.map(Ok),
            }
        })
    }

    /// `Ok` for error code 0, else [`ClientError::Refused`].
    fn check(&self, id: i32, api: ApiKey, code: i16, what: String) -> Result<(), ClientError> {
        match ResponseError::try_from_code(code) {
            None => Ok(()),
            Some(error) => Err(ClientError::Refused {
                addr: self.addr_of(id),
                api,
                error,
                what,
            }),
        }
    }

    pub(super) fn refused(
        &self,
        id: i32,
        api: ApiKey,
        error: ResponseError,
        what: &str,
    ) -> ClientError {
        ClientError::Refused {
            addr: self.addr_of(id),
            api,
            error,
            what: what.to_owned(),
        }
    }
}

/// The leader of `partition` of `topic`, as `layout` says.
fn leader(layout: &Layout, topic: &str, partition: i32) -> Result<i32, ClientError> {
    let p = layout
        .topics
        .get(topic)
        .and_then(|t| t.partitions.iter().find(|p| p.id == partition))
        .ok_or_else(|| ClientError::UnknownPartition {
            topic: topic.to_owned(),
            partition,
        })?;
    Some(p.leader)
        .filter(|l| layout.brokers.contains_key(l))
        .ok_or_else(|| ClientError::Leaderless {
            what: format!("{topic}/{partition}"),
            role: "leader",
        })
}

/// A record batch (v2, uncompressed) of one record, stamped now.
pub(super) fn one_record(key: Option<&[u8]>, value: &[u8]) -> Result<bytes::Bytes, ClientError> {
    let record = Record {
        transactional: false,
        control: false,
        delete_horizon: false,
        partition_leader_epoch: NO_PARTITION_LEADER_EPOCH,
        producer_id: NO_PRODUCER_ID,
        producer_epoch: NO_PRODUCER_EPOCH,
        timestamp_type: TimestampType::Creation,
        offset: 0,
        sequence: NO_SEQUENCE,
        timestamp: i64::try_from(now_ms()).unwrap_or(i64::MAX),
        key: key.map(bytes::Bytes::copy_from_slice),
        value: Some(bytes::Bytes::copy_from_slice(value)),
        headers: Default::default(),
    };
    let mut batch = bytes::BytesMut::new();
    let options = RecordEncodeOptions {
        version: 2,
        compression: Compression::None,
    };
    RecordBatchEncoder::encode(&mut batch, std::iter::once(&record), &options).map_err(
        |source| ClientError::Encode {
            api: ApiKey::Produce,
            version: 2,
            source,
        },
    )?;
    Ok(batch.freeze())
}

/// Produce `batch` to `partition` of `topic`, acknowledged by every in-sync replica.
pub(super) fn produce_request(
    topic: &str,
    partition: i32,
    batch: bytes::Bytes,
    timeout_ms: i32,
) -> ProduceRequest {
    ProduceRequest::default()
        .with_acks(-1)
        .with_timeout_ms(timeout_ms)
        .with_topic_data(vec![TopicProduceData::default()
            .with_name(topic_name(topic))
            .with_partition_data(vec![PartitionProduceData::default()
                .with_index(partition)
                .with_records(Some(batch))])])
}

/// The error code and base offset the answer gives `partition` of `topic`, if it names it.
pub(super) fn produced(resp: &ProduceResponse, topic: &str, partition: i32) -> Option<(i16, i64)> {
    resp.responses
        .iter()
        .filter(|t| t.name.0.as_str() == topic)
        .flat_map(|t| &t.partition_responses)
        .find(|p| p.index == partition)
        .map(|p| (p.error_code, p.base_offset))
}

pub(super) fn topic_name(t: &str) -> TopicName {
    TopicName(StrBytes::from_string(t.to_owned()))
}

/// " for topic \"t\"" and the broker's message, if any.
fn format_what(kind: &str, name: &str, message: Option<&StrBytes>) -> String {
    match message.filter(|m| !m.is_empty()) {
        Some(m) => format!(" for {kind} {name:?} ({})", m.as_str()),
        None => format!(" for {kind} {name:?}"),
    }
}
