//! The one table of what the port serves over HTTP: [`Route::parse`] names the route from the
//! method and path, [`Endpoint::request`] completes a REST endpoint with its body into an
//! [`ApiRequest`]. The HTTP handlers use it, and so do the requests a relay-only instance
//! forwards to the origin (sent as the serialized [`ApiRequest`], checked again there).

use hyper::Method;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use crate::protocol::Channel;

/// Longest message type a publish may name.
const MAX_TYPE_LEN: usize = 256;

/// What a request's method and path name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Route {
    /// `GET /`: the dashboard page.
    Dashboard,
    /// `GET /healthz`.
    Healthz,
    /// `GET /readyz`.
    Readyz,
    /// `GET /metrics`: Prometheus text.
    Metrics,
    /// One of the REST endpoints.
    Api(Endpoint),
}

/// The REST endpoints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Endpoint {
    /// `GET /api/topics`.
    ListTopics,
    /// `POST /api/topics` with `{"name", "partitions"}`.
    CreateTopic,
    /// `GET /api/topics/<name>`.
    GetTopic(String),
    /// `DELETE /api/topics/<name>`.
    DeleteTopic(String),
    /// `GET /api/groups`.
    ListGroups,
    /// `GET /api/groups/<id>`.
    GetGroup(String),
    /// `PUT /api/groups/<id>` with `{"state", "members"}`.
    UpdateGroup(String),
    /// `DELETE /api/groups/<id>`.
    DeleteGroup(String),
    /// `POST /api/monitoring/publish` with `{"type", "data"?, "channel"?}`.
    Publish,
}

/// Why a request names no route.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Unrouted {
    /// No such path: 404.
    NotFound,
    /// The path exists with other methods, listed for the `Allow` header: 405.
    MethodNotAllowed(&'static str),
}

impl Route {
    /// Names the route of `method` on `path`.
    pub(crate) fn parse(method: &Method, path: &str) -> Result<Self, Unrouted> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let get = *method == Method::GET;
        let (post, put, delete) = (
            *method == Method::POST,
            *method == Method::PUT,
            *method == Method::DELETE,
        );
        let owned = |s: &str| s.to_owned();
        let found = match segments.as_slice() {
            [""] if get => Some(Self::Dashboard),
            ["healthz"] if get => Some(Self::Healthz),
            ["readyz"] if get => Some(Self::Readyz),
            ["metrics"] if get => Some(Self::Metrics),
            ["api", "topics"] if get => Some(Self::Api(Endpoint::ListTopics)),
            ["api", "topics"] if post => Some(Self::Api(Endpoint::CreateTopic)),
            ["api", "topics", name] if get => Some(Self::Api(Endpoint::GetTopic(owned(name)))),
            ["api", "topics", name] if delete => {
                Some(Self::Api(Endpoint::DeleteTopic(owned(name))))
            }
            ["api", "groups"] if get => Some(Self::Api(Endpoint::ListGroups)),
            ["api", "groups", id] if get => Some(Self::Api(Endpoint::GetGroup(owned(id)))),
            ["api", "groups", id] if put => Some(Self::Api(Endpoint::UpdateGroup(owned(id)))),
            ["api", "groups", id] if delete => Some(Self::Api(Endpoint::DeleteGroup(owned(id)))),
            ["api", "monitoring", "publish"] if post => Some(Self::Api(Endpoint::Publish)),
            _ => None,
        };
        found.ok_or_else(|| match allowed(&segments) {
            Some(allow) => Unrouted::MethodNotAllowed(allow),
            None => Unrouted::NotFound,
        })
    }
}

/// The methods a known path takes, for `Allow`.
fn allowed(segments: &[&str]) -> Option<&'static str> {
    Some(match segments {
        [""] | ["healthz"] | ["readyz"] | ["metrics"] => "GET",
        ["api", "topics"] => "GET, POST",
        ["api", "topics", _] => "GET, DELETE",
        ["api", "groups"] => "GET",
        ["api", "groups", _] => "GET, PUT, DELETE",
        ["api", "monitoring", "publish"] => "POST",
        _ => return None,
    })
}

impl Endpoint {
    /// Whether the endpoint reads a JSON body.
    pub(crate) fn has_body(&self) -> bool {
        matches!(
            self,
            Self::CreateTopic | Self::UpdateGroup(_) | Self::Publish
        )
    }

    /// Completes the endpoint with its body; the error is the 400 answer's message.
    pub(crate) fn request(self, body: &[u8]) -> Result<ApiRequest, String> {
        let invalid = |e: serde_json::Error| format!("invalid body: {e}");
        let request = match self {
            Self::ListTopics => ApiRequest::ListTopics,
            Self::CreateTopic => {
                let b: CreateTopic = serde_json::from_slice(body).map_err(invalid)?;
                ApiRequest::CreateTopic {
                    name: b.name,
                    partitions: b.partitions,
                }
            }
            Self::GetTopic(name) => ApiRequest::GetTopic(name),
            Self::DeleteTopic(name) => ApiRequest::DeleteTopic(name),
            Self::ListGroups => ApiRequest::ListGroups,
            Self::GetGroup(id) => ApiRequest::GetGroup(id),
            Self::UpdateGroup(id) => {
                let b: UpdateGroup = serde_json::from_slice(body).map_err(invalid)?;
                ApiRequest::UpdateGroup {
                    id,
                    state: b.state,
                    members: b.members,
                }
            }
            Self::DeleteGroup(id) => ApiRequest::DeleteGroup(id),
            Self::Publish => ApiRequest::Publish(PublishMessage::parse(body)?),
        };
        request.check()?;
        Ok(request)
    }
}

/// A REST request, complete and checked: what an [`Api`](super::Api) answers.
///
/// Serialized externally tagged (`{"create_topic":{..}}`), so a publish's raw data is read
/// back without buffering.
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum ApiRequest {
    ListTopics,
    GetTopic(String),
    CreateTopic {
        name: String,
        partitions: u32,
    },
    DeleteTopic(String),
    ListGroups,
    GetGroup(String),
    UpdateGroup {
        id: String,
        state: String,
        members: u32,
    },
    DeleteGroup(String),
    Publish(PublishMessage),
}

impl ApiRequest {
    /// Whether the request changes state (or publishes): what a relay-only instance forwards.
    pub(crate) fn mutates(&self) -> bool {
        !matches!(
            self,
            Self::ListTopics | Self::GetTopic(_) | Self::ListGroups | Self::GetGroup(_)
        )
    }

    /// The limits the protocol sets on a request's values (the topic manager checks topic
    /// names and partition counts itself). Checked where a request is parsed and again where
    /// a forwarded one is run.
    pub(crate) fn check(&self) -> Result<(), String> {
        match self {
            Self::UpdateGroup { id, state, .. } => {
                if (1..=255).contains(&id.len()) && (1..=64).contains(&state.len()) {
                    Ok(())
                } else {
                    Err("group id or state out of range".into())
                }
            }
            Self::Publish(msg) if msg.kind.is_empty() || msg.kind.len() > MAX_TYPE_LEN => {
                Err("type must be 1 to 256 bytes".into())
            }
            _ => Ok(()),
        }
    }
}

#[derive(Deserialize)]
struct CreateTopic {
    name: String,
    partitions: u32,
}

#[derive(Deserialize)]
struct UpdateGroup {
    state: String,
    members: u32,
}

/// A message to broadcast as given: its data is passed through, not re-encoded.
#[derive(Debug, Serialize, Deserialize)]
pub(crate) struct PublishMessage {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    pub(crate) data: Option<Box<RawValue>>,
    #[serde(with = "channel_text")]
    pub(crate) channel: Channel,
}

impl PublishMessage {
    /// Parses `{"type", "data"?, "channel"?}`; the channel defaults to `events`.
    fn parse(body: &[u8]) -> Result<Self, String> {
        #[derive(Deserialize)]
        struct Wire {
            #[serde(rename = "type")]
            kind: String,
            data: Option<Box<RawValue>>,
            channel: Option<String>,
        }
        let wire: Wire =
            serde_json::from_slice(body).map_err(|e| format!("invalid message: {e}"))?;
        let channel = match wire.channel.as_deref().map(Channel::parse) {
            None => Channel::Events,
            Some(Ok(c)) => c,
            Some(Err(_)) => return Err("no such channel".into()),
        };
        Ok(Self {
            kind: wire.kind,
            data: wire.data,
            channel,
        })
    }
}

/// A [`Channel`] as its protocol name.
mod channel_text {
    use serde::{de::Error as _, Deserialize, Deserializer, Serializer};

    use crate::protocol::Channel;

    pub(super) fn serialize<S: Serializer>(c: &Channel, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(c)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Channel, D::Error> {
        let name = String::deserialize(d)?;
        Channel::parse(&name).map_err(|_| D::Error::custom("no such channel"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(method: Method, path: &str) -> Endpoint {
        match Route::parse(&method, path) {
            Ok(Route::Api(e)) => e,
            other => panic!("{method} {path}: {other:?}"),
        }
    }

    #[test]
    fn every_path_names_its_route() {
        assert_eq!(Route::parse(&Method::GET, "/"), Ok(Route::Dashboard));
        assert_eq!(Route::parse(&Method::GET, "/healthz"), Ok(Route::Healthz));
        assert_eq!(Route::parse(&Method::GET, "/readyz/"), Ok(Route::Readyz));
        assert_eq!(Route::parse(&Method::GET, "/metrics"), Ok(Route::Metrics));
        assert_eq!(api(Method::GET, "/api/topics"), Endpoint::ListTopics);
        assert_eq!(api(Method::POST, "/api/topics"), Endpoint::CreateTopic);
        assert_eq!(
            api(Method::DELETE, "/api/topics/orders"),
            Endpoint::DeleteTopic("orders".into())
        );
        assert_eq!(
            api(Method::PUT, "/api/groups/g1"),
            Endpoint::UpdateGroup("g1".into())
        );
        assert_eq!(
            api(Method::POST, "/api/monitoring/publish"),
            Endpoint::Publish
        );
    }

    #[test]
    fn unknown_paths_are_404_and_wrong_methods_405_with_allow() {
        assert_eq!(Route::parse(&Method::GET, "/nope"), Err(Unrouted::NotFound));
        assert_eq!(
            Route::parse(&Method::GET, "/api/topics/a/b"),
            Err(Unrouted::NotFound)
        );
        assert_eq!(
            Route::parse(&Method::POST, "/healthz"),
            Err(Unrouted::MethodNotAllowed("GET"))
        );
        assert_eq!(
            Route::parse(&Method::PUT, "/api/topics/x"),
            Err(Unrouted::MethodNotAllowed("GET, DELETE"))
        );
        assert_eq!(
            Route::parse(&Method::HEAD, "/api/groups"),
            Err(Unrouted::MethodNotAllowed("GET"))
        );
    }

    #[test]
    fn bodies_are_parsed_and_checked_once() {
        let create = Endpoint::CreateTopic.request(br#"{"name":"o","partitions":3}"#);
        assert!(matches!(
            create,
            Ok(ApiRequest::CreateTopic { ref name, partitions: 3 }) if name == "o"
        ));
        let bad = Endpoint::CreateTopic.request(b"{").unwrap_err();
        assert!(bad.starts_with("invalid body"), "{bad}");
        let long_state = format!(r#"{{"state":"{}","members":1}}"#, "s".repeat(65));
        assert_eq!(
            Endpoint::UpdateGroup("g".into())
                .request(long_state.as_bytes())
                .unwrap_err(),
            "group id or state out of range"
        );
        let publish = Endpoint::Publish.request(br#"{"type":"t","data":{"a": 1}}"#);
        let Ok(ApiRequest::Publish(msg)) = publish else {
            panic!("{publish:?}")
        };
        assert_eq!(msg.channel, Channel::Events);
        assert_eq!(
            msg.data.unwrap().get(),
            r#"{"a": 1}"#,
            "data passed through"
        );
        assert_eq!(
            Endpoint::Publish
                .request(br#"{"type":"t","channel":"nope"}"#)
                .unwrap_err(),
            "no such channel"
        );
        assert_eq!(
            Endpoint::Publish.request(br#"{"type":""}"#).unwrap_err(),
            "type must be 1 to 256 bytes"
        );
    }

    #[test]
    fn a_forwarded_request_reads_back_as_it_was_sent() {
        let sent = Endpoint::Publish
            .request(br#"{"type":"t","data":[1, 2],"channel":"topic:a"}"#)
            .unwrap();
        let wire = serde_json::to_string(&sent).unwrap();
        let ApiRequest::Publish(back) = serde_json::from_str(&wire).unwrap() else {
            panic!("{wire}")
        };
        assert_eq!(back.channel, Channel::topic("a"));
        assert_eq!(back.data.unwrap().get(), "[1, 2]");
        let group = serde_json::to_string(&ApiRequest::UpdateGroup {
            id: "g".into(),
            state: "Stable".into(),
            members: 2,
        })
        .unwrap();
        let back: ApiRequest = serde_json::from_str(&group).unwrap();
        assert!(back.mutates() && back.check().is_ok());
    }
}
