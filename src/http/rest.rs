//! Who answers REST requests: an [`Api`]. This instance's own topics and groups
//! ([`LocalApi`]), or, on a relay-only instance, the relay (reads from the origin's relayed
//! state, mutations forwarded).

use std::fmt;

use bytes::Bytes;
use hyper::StatusCode;
use serde::Serialize;

use crate::broker::{GroupCoordinator, TopicError, TopicManager};
use crate::http::routes::{ApiRequest, Endpoint, Publish, PublishMessage};
use crate::hub::Broadcaster;
use serde_json::value::RawValue;

/// Answers [`ApiRequest`]s. Called on a shard (HTTP) or on the relay's thread (forwarded
/// requests): it must not block for long.
pub(crate) trait Api: Send + Sync + fmt::Debug {
    /// The answer to every request for `endpoint`, if it is known before the request's body
    /// is read (a service that is not there).
    fn refuses(&self, _endpoint: &Endpoint) -> Option<Reply> {
        None
    }

    /// Answers one request.
    fn call(&self, request: ApiRequest) -> Reply;
}

/// A REST answer: status and JSON body (empty for 204).
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Reply {
    pub(crate) status: StatusCode,
    pub(crate) body: Bytes,
    /// Sends `Retry-After` (a 503 that will pass).
    pub(crate) retry_later: bool,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
}

#[derive(Serialize)]
struct Status {
    status: &'static str,
}

#[derive(Serialize)]
struct Published {
    seq: u64,
}

/// The answer to an array publish: the `seq` range, first to last, and the count.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct PublishedBatch {
    seq: u64,
    last_seq: u64,
    count: usize,
}

impl Reply {
    /// `value` as JSON.
    pub(crate) fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Self {
        let body = simd_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
        Self::raw_json(status, body)
    }

    /// A body that is JSON text already.
    pub(crate) fn raw_json(status: StatusCode, body: impl Into<Bytes>) -> Self {
        Self {
            status,
            body: body.into(),
            retry_later: false,
        }
    }

    /// `{"error": message}`.
    pub(crate) fn error(status: StatusCode, message: &str) -> Self {
        Self::json(status, &ErrorBody { error: message })
    }

    /// `{"status": status}`.
    pub(crate) fn status(code: StatusCode, status: &'static str) -> Self {
        Self::json(code, &Status { status })
    }

    /// No body.
    pub(crate) fn empty(status: StatusCode) -> Self {
        Self::raw_json(status, Bytes::new())
    }

    /// With `Retry-After`.
    pub(crate) fn retry_later(self) -> Self {
        Self {
            retry_later: true,
            ..self
        }
    }

    /// Whether the request succeeded.
    pub(crate) fn ok(&self) -> bool {
        self.status.is_success()
    }
}

/// This instance's own services: topics and groups once attached, and publishing, which
/// needs nothing but the broadcaster.
#[derive(Debug, Clone)]
pub(crate) struct LocalApi {
    broadcaster: Broadcaster,
    services: Option<(TopicManager, GroupCoordinator)>,
}

impl LocalApi {
    /// Publishing only; topic and group requests answer 503.
    pub(crate) fn publish_only(broadcaster: Broadcaster) -> Self {
        Self {
            broadcaster,
            services: None,
        }
    }

    /// Topics, groups and publishing.
    pub(crate) fn new(
        broadcaster: Broadcaster,
        topics: TopicManager,
        groups: GroupCoordinator,
    ) -> Self {
        Self {
            broadcaster,
            services: Some((topics, groups)),
        }
    }
}

fn no_services() -> Reply {
    Reply::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no topic and group services",
    )
}

impl Api for LocalApi {
    fn refuses(&self, endpoint: &Endpoint) -> Option<Reply> {
        (self.services.is_none() && *endpoint != Endpoint::Publish).then(no_services)
    }

    fn call(&self, request: ApiRequest) -> Reply {
        let (topics, groups) = match (&request, &self.services) {
            (ApiRequest::Publish(msg), _) => return publish(&self.broadcaster, msg),
            (_, Some((topics, groups))) => (topics, groups),
            (_, None) => return no_services(),
        };
        match request {
            ApiRequest::ListTopics => Reply::json(StatusCode::OK, &topics.list()),
            ApiRequest::CreateTopic { name, partitions } => {
                match topics.create(&name, partitions) {
                    Ok(_) => Reply::json(StatusCode::CREATED, &topics.get(&name)),
                    Err(e @ TopicError::AlreadyExists(_)) => {
                        Reply::error(StatusCode::CONFLICT, &e.to_string())
                    }
                    Err(e) => Reply::error(StatusCode::BAD_REQUEST, &e.to_string()),
                }
            }
            ApiRequest::GetTopic(name) => match topics.get(&name) {
                Some(t) => Reply::json(StatusCode::OK, &t),
                None => Reply::error(StatusCode::NOT_FOUND, "no such topic"),
            },
            ApiRequest::DeleteTopic(name) => match topics.delete(&name) {
                Ok(()) => Reply::empty(StatusCode::NO_CONTENT),
                Err(e) => Reply::error(StatusCode::NOT_FOUND, &e.to_string()),
            },
            ApiRequest::ListGroups => Reply::json(StatusCode::OK, &groups.list()),
            ApiRequest::GetGroup(id) => match groups.get(&id) {
                Some(g) => Reply::json(StatusCode::OK, &g),
                None => Reply::error(StatusCode::NOT_FOUND, "no such group"),
            },
            ApiRequest::UpdateGroup { id, state, members } => {
                groups.update(&id, &state, members);
                Reply::json(StatusCode::OK, &groups.get(&id))
            }
            ApiRequest::DeleteGroup(id) => match groups.remove(&id) {
                true => Reply::empty(StatusCode::NO_CONTENT),
                false => Reply::error(StatusCode::NOT_FOUND, "no such group"),
            },
            // Answered above, whether services are attached or not.
            ApiRequest::Publish(msg) => publish(&self.broadcaster, &msg),
        }
    }
}

/// Broadcasts a publish as given (the data is passed through, not re-encoded): 202 with its
/// `seq`.
/// The message's `data` as JSON text.
fn data(m: &PublishMessage) -> Option<&str> {
    m.data.as_deref().map(RawValue::get)
}

pub(crate) fn publish(broadcaster: &Broadcaster, publish: &Publish) -> Reply {
    let sent = match publish {
        Publish::One(m) => broadcaster
            .publish_raw(&m.channel, &m.kind, data(m))
            .map(|seq| Reply::json(StatusCode::ACCEPTED, &Published { seq })),
        Publish::Many(ms) => {
            let batch: Vec<_> = ms
                .iter()
                .map(|m| (&m.channel, m.kind.as_str(), data(m)))
                .collect();
            broadcaster
                .publish_raw_batch(&batch)
                .map(|(seq, last_seq)| {
                    let reply = PublishedBatch {
                        seq,
                        last_seq,
                        count: ms.len(),
                    };
                    Reply::json(StatusCode::ACCEPTED, &reply)
                })
        }
    };
    sent.unwrap_or_else(|e| Reply::error(StatusCode::BAD_REQUEST, &e.to_string()))
}
