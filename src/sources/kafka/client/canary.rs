//! The latency canary's round trip, as Strimzi's canary makes it: produce one small record to a
//! partition's leader (acks = all), then fetch it back from there, timing the acknowledgement
//! and the whole trip.
//!
//! The leader comes from the poll that just ran, so a trip costs two requests and no Metadata;
//! a leader that moved answers NOT_LEADER_OR_FOLLOWER, and the next poll's metadata routes the
//! next trip right.

use std::time::{Duration, Instant};

use bytes::Bytes;
use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::fetch_request::{FetchPartition, FetchTopic};
use kafka_protocol::messages::{ApiKey, FetchRequest, FetchResponse};
use kafka_protocol::records::RecordBatchDecoder;

use super::admin::{one_record, produce_request, produced, topic_name};
use super::{Client, ClientError};

/// The most one fetch waits for the record before asking again (the trip as a whole is
/// bounded by the request timeout).
const FETCH_WAIT: Duration = Duration::from_millis(500);

/// The most bytes one canary fetch takes: the canary's records are a few dozen bytes, and its
/// topic holds nothing else.
const FETCH_BYTES: i32 = 64 << 10;

/// One canary round trip.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Trip {
    /// From sending the record to the leader's acknowledgement (every in-sync replica has it).
    pub(crate) produce: Duration,
    /// From sending the record to reading it back with a fetch.
    pub(crate) end_to_end: Duration,
    /// The record's offset.
    pub(crate) offset: i64,
}

impl Client {
    /// Produces `value` to `partition` of `topic` on broker `leader`, then fetches it back
    /// from there (waiting up to the request timeout in all), and says how long each took.
    pub(crate) fn canary_trip(
        &mut self,
        topic: &str,
        partition: i32,
        leader: i32,
        value: &[u8],
    ) -> Result<Trip, ClientError> {
        let what = format!(" for canary {topic}/{partition}");
        let req = produce_request(
            topic,
            partition,
            one_record(None, value)?,
            self.timeout_ms(),
        );
        let started = Instant::now();
        let resp = self.call(leader, |_| req)?;
        let (code, offset) = produced(&resp, topic, partition)
            .unwrap_or((ResponseError::UnknownServerError.code(), -1));
        if let Some(e) = ResponseError::try_from_code(code) {
            return Err(self.refused(leader, ApiKey::Produce, e, &what));
        }
        let produce = started.elapsed();
        let deadline = started + self.timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(ClientError::NotReadBack {
                    topic: topic.to_owned(),
                    partition,
                    offset,
                    timeout: self.timeout,
                });
            }
            let wait = left.min(FETCH_WAIT);
            let resp = self.call(leader, |_| fetch_request(topic, partition, offset, wait))?;
            let (code, records) = fetched(&resp, topic, partition);
            if let Some(e) = ResponseError::try_from_code(code) {
                return Err(self.refused(leader, ApiKey::Fetch, e, &what));
            }
            if let Some(records) = records {
                if holds(records, offset, value).map_err(|source| ClientError::Decode {
                    addr: self.addr_of(leader),
                    api: ApiKey::Fetch,
                    version: 2,
                    source,
                })? {
                    return Ok(Trip {
                        produce,
                        end_to_end: started.elapsed(),
                        offset,
                    });
                }
            }
        }
    }
}

/// Fetch `partition` of `topic` from `offset`, answered as soon as one byte is there or after
/// `wait`.
fn fetch_request(topic: &str, partition: i32, offset: i64, wait: Duration) -> FetchRequest {
    FetchRequest::default()
        .with_max_wait_ms(i32::try_from(wait.as_millis()).unwrap_or(i32::MAX))
        .with_min_bytes(1)
        .with_max_bytes(FETCH_BYTES)
        .with_isolation_level(0)
        .with_topics(vec![FetchTopic::default()
            .with_topic(topic_name(topic))
            .with_partitions(vec![FetchPartition::default()
                .with_partition(partition)
                .with_fetch_offset(offset)
                .with_partition_max_bytes(FETCH_BYTES)])])
}

/// The error code and records the answer gives `partition` of `topic` (UNKNOWN_SERVER_ERROR
/// when it does not name it).
fn fetched<'a>(resp: &'a FetchResponse, topic: &str, partition: i32) -> (i16, Option<&'a Bytes>) {
    if let Some(e) = ResponseError::try_from_code(resp.error_code) {
        return (e.code(), None);
    }
    resp.responses
        .iter()
        .filter(|t| t.topic.0.as_str() == topic)
        .flat_map(|t| &t.partitions)
        .find(|p| p.partition_index == partition)
        .map_or((ResponseError::UnknownServerError.code(), None), |p| {
            (p.error_code, p.records.as_ref())
        })
}

/// Whether the record batches hold the record at `offset` with `value`. A fetch may end in a
/// partial batch (cut at the byte limit), which is not an error.
fn holds(records: &Bytes, offset: i64, value: &[u8]) -> anyhow::Result<bool> {
    let mut buf = records.clone();
    while buf.len() >= 12 {
        let batch_len = i32::from_be_bytes([buf[8], buf[9], buf[10], buf[11]]);
        let whole = usize::try_from(batch_len).map_or(usize::MAX, |n| n.saturating_add(12));
        if whole > buf.len() {
            break; // the last batch, cut short
        }
        let mut batch = buf.split_to(whole);
        let set = RecordBatchDecoder::decode(&mut batch)?;
        if set
            .records
            .iter()
            .any(|r| r.offset == offset && r.value.as_deref() == Some(value))
        {
            return Ok(true);
        }
    }
    Ok(false)
}

#[cfg(test)]
mod tests {
    use super::*;
    use kafka_protocol::records::{
        Compression, Record, RecordBatchEncoder, RecordEncodeOptions, TimestampType,
    };

    fn batch(base: i64, values: &[&[u8]]) -> Bytes {
        let records: Vec<Record> = values
            .iter()
            .enumerate()
            .map(|(i, v)| Record {
                transactional: false,
                control: false,
                delete_horizon: false,
                partition_leader_epoch: 0,
                producer_id: -1,
                producer_epoch: -1,
                timestamp_type: TimestampType::Creation,
                offset: base + i as i64,
                sequence: -1,
                timestamp: 0,
                key: None,
                value: Some(Bytes::copy_from_slice(v)),
                headers: Default::default(),
            })
            .collect();
        let mut out = bytes::BytesMut::new();
        let options = RecordEncodeOptions {
            version: 2,
            compression: Compression::None,
        };
        RecordBatchEncoder::encode(&mut out, records.iter(), &options).unwrap();
        out.freeze()
    }

    #[test]
    fn finds_the_record_by_offset_and_value() {
        let mut all = bytes::BytesMut::new();
        all.extend_from_slice(&batch(10, &[b"a", b"b"]));
        all.extend_from_slice(&batch(12, &[b"canary 7"]));
        let all = all.freeze();
        assert!(holds(&all, 12, b"canary 7").unwrap());
        assert!(!holds(&all, 12, b"canary 8").unwrap(), "another value");
        assert!(!holds(&all, 11, b"canary 7").unwrap(), "another offset");
        assert!(holds(&all, 11, b"b").unwrap());
    }

    #[test]
    fn a_batch_cut_at_the_byte_limit_is_not_an_error() {
        let whole = batch(5, &[b"x"]);
        let mut cut = bytes::BytesMut::new();
        cut.extend_from_slice(&whole);
        cut.extend_from_slice(&whole[..whole.len() - 3]);
        assert!(holds(&cut.freeze(), 5, b"x").unwrap());
        assert!(!holds(&whole.slice(..whole.len() - 1), 5, b"x").unwrap());
        assert!(!holds(&Bytes::new(), 5, b"x").unwrap());
    }
}
