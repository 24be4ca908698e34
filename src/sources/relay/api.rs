//! REST through the relay. A relay-only instance answers reads from the state the origin
//! relays and forwards mutations and publishes to the origin (202: the outcome arrives as
//! events); the origin runs what it receives through its own API. Both ends use the one
//! request table, [`ApiRequest`].

use std::sync::Arc;

use hyper::StatusCode;
use tracing::warn;

use super::{RelayLink, RelayedState};
use crate::http::rest::{Api, Reply};
use crate::http::routes::ApiRequest;

/// The API of a relay-only instance.
#[derive(Debug)]
pub(super) struct RelayApi {
    link: Arc<RelayLink>,
}

impl RelayApi {
    pub(super) fn new(link: Arc<RelayLink>) -> Self {
        Self { link }
    }

    fn relayed(&self, pick: fn(&RelayedState) -> Option<String>) -> Option<String> {
        pick(&self.link.state.lock().unwrap_or_else(|e| e.into_inner()))
    }
}

impl Api for RelayApi {
    fn call(&self, request: ApiRequest) -> Reply {
        if request.mutates() {
            self.link.forward(request.forwarded());
            return Reply::status(StatusCode::ACCEPTED, "forwarded");
        }
        let topics = || self.relayed(|s| s.topics.clone());
        let groups = || self.relayed(|s| s.groups.clone());
        match request {
            ApiRequest::ListTopics => list(topics()),
            ApiRequest::ListGroups => list(groups()),
            ApiRequest::GetTopic(name) => one(topics(), "name", &name, "no such topic"),
            ApiRequest::GetGroup(id) => one(groups(), "groupId", &id, "no such group"),
            // Mutations are forwarded above.
            _ => Reply::status(StatusCode::ACCEPTED, "forwarded"),
        }
    }
}

fn no_state() -> Reply {
    Reply::error(
        StatusCode::SERVICE_UNAVAILABLE,
        "no state relayed from the source instance yet",
    )
    .retry_later()
}

fn list(relayed: Option<String>) -> Reply {
    relayed.map_or_else(no_state, |list| Reply::raw_json(StatusCode::OK, list))
}

/// The item of a relayed list whose `key` is `id`.
fn one(relayed: Option<String>, key: &str, id: &str, missing: &str) -> Reply {
    let Some(list) = relayed else {
        return no_state();
    };
    let items: Vec<serde_json::Value> = serde_json::from_str(&list).unwrap_or_default();
    match items.into_iter().find(|item| item[key] == id) {
        Some(item) => Reply::json(StatusCode::OK, &item),
        None => Reply::error(StatusCode::NOT_FOUND, missing),
    }
}

/// Runs a request a relay-only instance forwarded (on the origin's relay thread), checked as
/// if it came over HTTP. Failures are logged: the instance that took the request has
/// answered 202 already.
pub(super) fn run_forwarded(api: &dyn Api, msg: &[u8]) {
    let request = match ApiRequest::from_forwarded(msg) {
        Ok(r) if r.mutates() => r,
        Ok(r) => {
            warn!(request = ?r, "a forwarded request that changes nothing (ignored)");
            return;
        }
        Err(e) => {
            warn!(error = %e, "a forwarded request failed");
            return;
        }
    };
    let reply = api.call(request);
    if !reply.ok() {
        let body = String::from_utf8_lossy(&reply.body);
        warn!(status = %reply.status, %body, "a forwarded request failed");
    }
}
