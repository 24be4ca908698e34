//! The one table of what the port serves over HTTP: [`Route::parse`] names the route from the
//! method and path, [`Endpoint::request`] completes a REST endpoint with its body into an
//! [`ApiRequest`]. The HTTP handlers use it, and so do the requests a relay-only instance
//! forwards to the origin: checked there before they go, sent as method, path and body
//! ([`ApiRequest::forwarded`]), and parsed and checked again by the origin through this same
//! table ([`ApiRequest::from_forwarded`]).

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
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Unrouted {
    /// No such path: 404.
    NotFound,
    /// The path exists with other methods, listed for the `Allow` header: 405.
    MethodNotAllowed(String),
}

impl Route {
    /// Whether the route is answered without a token: the page and the health checks.
    pub(crate) fn is_public(&self) -> bool {
        matches!(self, Self::Dashboard | Self::Healthz | Self::Readyz)
    }

    /// Names the route of `method` on `path`, from [`TABLE`].
    pub(crate) fn parse(method: &Method, path: &str) -> Result<Self, Unrouted> {
        let segments: Vec<&str> = path.trim_matches('/').split('/').collect();
        let mut allow: Vec<&str> = Vec::new();
        for (pattern, verb, name) in TABLE {
            let Some(arg) = matches(pattern, &segments) else {
                continue;
            };
            if verb.is(method) {
                return Ok(name.route(arg));
            }
            allow.push(verb.as_str());
        }
        if allow.is_empty() {
            Err(Unrouted::NotFound)
        } else {
            Err(Unrouted::MethodNotAllowed(allow.join(", ")))
        }
    }
}

/// A method the table knows.
#[derive(Debug, Clone, Copy)]
enum Verb {
    Get,
    Post,
    Put,
    Delete,
}

impl Verb {
    fn as_str(self) -> &'static str {
        match self {
            Self::Get => "GET",
            Self::Post => "POST",
            Self::Put => "PUT",
            Self::Delete => "DELETE",
        }
    }

    fn is(self, method: &Method) -> bool {
        method.as_str() == self.as_str()
    }
}

/// What a table entry names; `*` in its pattern is the topic name or group id it carries.
#[derive(Debug, Clone, Copy)]
enum Name {
    Dashboard,
    Healthz,
    Readyz,
    Metrics,
    ListTopics,
    CreateTopic,
    GetTopic,
    DeleteTopic,
    ListGroups,
    GetGroup,
    UpdateGroup,
    DeleteGroup,
    Publish,
}

impl Name {
    fn route(self, arg: &str) -> Route {
        let arg = arg.to_owned();
        match self {
            Self::Dashboard => Route::Dashboard,
            Self::Healthz => Route::Healthz,
            Self::Readyz => Route::Readyz,
            Self::Metrics => Route::Metrics,
            Self::ListTopics => Route::Api(Endpoint::ListTopics),
            Self::CreateTopic => Route::Api(Endpoint::CreateTopic),
            Self::GetTopic => Route::Api(Endpoint::GetTopic(arg)),
            Self::DeleteTopic => Route::Api(Endpoint::DeleteTopic(arg)),
            Self::ListGroups => Route::Api(Endpoint::ListGroups),
            Self::GetGroup => Route::Api(Endpoint::GetGroup(arg)),
            Self::UpdateGroup => Route::Api(Endpoint::UpdateGroup(arg)),
            Self::DeleteGroup => Route::Api(Endpoint::DeleteGroup(arg)),
            Self::Publish => Route::Api(Endpoint::Publish),
        }
    }
}

/// Every route the port serves: path pattern, method, name. A path's other methods make its
/// `Allow` header, in this order.
const TABLE: [(&[&str], Verb, Name); 13] = [
    (&[""], Verb::Get, Name::Dashboard),
    (&["healthz"], Verb::Get, Name::Healthz),
    (&["readyz"], Verb::Get, Name::Readyz),
    (&["metrics"], Verb::Get, Name::Metrics),
    (&["api", "topics"], Verb::Get, Name::ListTopics),
    (&["api", "topics"], Verb::Post, Name::CreateTopic),
    (&["api", "topics", "*"], Verb::Get, Name::GetTopic),
    (&["api", "topics", "*"], Verb::Delete, Name::DeleteTopic),
    (&["api", "groups"], Verb::Get, Name::ListGroups),
    (&["api", "groups", "*"], Verb::Get, Name::GetGroup),
    (&["api", "groups", "*"], Verb::Put, Name::UpdateGroup),
    (&["api", "groups", "*"], Verb::Delete, Name::DeleteGroup),
    (&["api", "monitoring", "publish"], Verb::Post, Name::Publish),
];

/// Whether `segments` fit `pattern`; if so, the segment `*` stood for (or `""`).
fn matches<'a>(pattern: &[&str], segments: &[&'a str]) -> Option<&'a str> {
    if pattern.len() != segments.len() {
        return None;
    }
    let mut arg = "";
    for (p, s) in pattern.iter().zip(segments) {
        match *p {
            "*" => arg = s,
            literal if literal == *s => {}
            _ => return None,
        }
    }
    Some(arg)
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
    pub(crate) fn request(self, body: &[u8]) -> Result<ApiRequest, BadRequest> {
        let invalid = BadRequest::Body;
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
            Self::Publish => ApiRequest::Publish(Publish::parse(body)?),
        };
        request.check()?;
        Ok(request)
    }
}

/// Why a request is refused with 400; its text is the answer's `error`.
#[derive(Debug, thiserror::Error)]
pub(crate) enum BadRequest {
    /// A topic or group body that does not parse.
    #[error("invalid body: {0}")]
    Body(serde_json::Error),
    /// A publish body that does not parse.
    #[error("invalid message: {0}")]
    Message(serde_json::Error),
    /// A publish to a channel that does not exist.
    #[error("no such channel")]
    Channel,
    /// A group id (1-255 bytes) or state (1-64) out of range.
    #[error("group id or state out of range")]
    GroupLimits,
    /// A publish whose type is empty or over 256 bytes.
    #[error("type must be 1 to 256 bytes")]
    TypeLength,
    /// A publish of an empty array.
    #[error("an array of messages must hold at least one")]
    EmptyBatch,
    /// A forwarded request whose envelope does not parse.
    #[error("unreadable forwarded request: {0}")]
    Forwarded(serde_json::Error),
    /// A forwarded request for no REST endpoint (its method and path).
    #[error("cannot run {0}")]
    NoEndpoint(String),
}

/// A REST request, complete and checked: what an [`Api`](super::rest::Api) answers.
#[derive(Debug)]
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
    Publish(Publish),
}

/// What `POST /api/monitoring/publish` takes: one message, or an array of them (broadcast in
/// order with consecutive `seq`s).
#[derive(Debug, Serialize)]
#[serde(untagged)]
pub(crate) enum Publish {
    One(PublishMessage),
    Many(Vec<PublishMessage>),
}

impl Publish {
    /// Every message, in order.
    pub(crate) fn messages(&self) -> &[PublishMessage] {
        match self {
            Self::One(m) => std::slice::from_ref(m),
            Self::Many(ms) => ms,
        }
    }

    /// Parses one `{"type", "data"?, "channel"?}` or an array of them.
    fn parse(body: &[u8]) -> Result<Self, BadRequest> {
        let array = body
            .iter()
            .find(|b| !b.is_ascii_whitespace())
            .is_some_and(|&b| b == b'[');
        if !array {
            return PublishMessage::parse(body).map(Self::One);
        }
        let wires: Vec<Wire> = serde_json::from_slice(body).map_err(BadRequest::Message)?;
        if wires.is_empty() {
            return Err(BadRequest::EmptyBatch);
        }
        wires
            .into_iter()
            .map(PublishMessage::from_wire)
            .collect::<Result<_, _>>()
            .map(Self::Many)
    }
}

/// A request forwarded through the relay, as every version of the relay reads it.
#[derive(Serialize, Deserialize)]
struct Forwarded<'a> {
    method: &'a str,
    path: String,
    body: String,
}

impl ApiRequest {
    /// The request as a relay-only instance forwards it to the origin:
    /// `{"method", "path", "body"}`.
    pub(crate) fn forwarded(&self) -> String {
        let json = |v: serde_json::Value| v.to_string();
        let (method, path, body) = match self {
            Self::ListTopics => ("GET", "/api/topics".to_owned(), String::new()),
            Self::GetTopic(name) => ("GET", format!("/api/topics/{name}"), String::new()),
            Self::CreateTopic { name, partitions } => (
                "POST",
                "/api/topics".to_owned(),
                json(serde_json::json!({ "name": name, "partitions": partitions })),
            ),
            Self::DeleteTopic(name) => ("DELETE", format!("/api/topics/{name}"), String::new()),
            Self::ListGroups => ("GET", "/api/groups".to_owned(), String::new()),
            Self::GetGroup(id) => ("GET", format!("/api/groups/{id}"), String::new()),
            Self::UpdateGroup { id, state, members } => (
                "PUT",
                format!("/api/groups/{id}"),
                json(serde_json::json!({ "state": state, "members": members })),
            ),
            Self::DeleteGroup(id) => ("DELETE", format!("/api/groups/{id}"), String::new()),
            Self::Publish(publish) => (
                "POST",
                "/api/monitoring/publish".to_owned(),
                serde_json::to_string(publish).unwrap_or_default(),
            ),
        };
        let envelope = Forwarded { method, path, body };
        serde_json::to_string(&envelope).unwrap_or_default()
    }

    /// Reads a forwarded request back through the one table, checked as if it came over HTTP.
    pub(crate) fn from_forwarded(msg: &[u8]) -> Result<Self, BadRequest> {
        let f: Forwarded<'_> = serde_json::from_slice(msg).map_err(BadRequest::Forwarded)?;
        let cannot = || BadRequest::NoEndpoint(format!("{} {}", f.method, f.path));
        let method = Method::from_bytes(f.method.as_bytes()).map_err(|_| cannot())?;
        match Route::parse(&method, &f.path) {
            Ok(Route::Api(endpoint)) => endpoint.request(f.body.as_bytes()),
            _ => Err(cannot()),
        }
    }

    /// Whether the request changes state (or publishes): what a relay-only instance forwards.
    pub(crate) fn mutates(&self) -> bool {
        !matches!(
            self,
            Self::ListTopics | Self::GetTopic(_) | Self::ListGroups | Self::GetGroup(_)
        )
    }

    /// The limits the protocol sets on a request's values (the topic manager checks topic
    /// names and partition counts itself): checked wherever a request is parsed, which on a
    /// relay is on both ends.
    fn check(&self) -> Result<(), BadRequest> {
        match self {
            Self::UpdateGroup { id, state, .. } => {
                if (1..=255).contains(&id.len()) && (1..=64).contains(&state.len()) {
                    Ok(())
                } else {
                    Err(BadRequest::GroupLimits)
                }
            }
            Self::Publish(p)
                if p.messages()
                    .iter()
                    .any(|m| m.kind.is_empty() || m.kind.len() > MAX_TYPE_LEN) =>
            {
                Err(BadRequest::TypeLength)
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
#[derive(Debug, Serialize)]
pub(crate) struct PublishMessage {
    #[serde(rename = "type")]
    pub(crate) kind: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub(crate) data: Option<Box<RawValue>>,
    #[serde(serialize_with = "channel_name")]
    pub(crate) channel: Channel,
}

/// A [`Channel`] as its protocol name.
fn channel_name<S: serde::Serializer>(c: &Channel, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(c)
}

/// A publish message as it comes.
#[derive(Deserialize)]
#[serde(rename = "Publish")]
struct Wire {
    #[serde(rename = "type")]
    kind: String,
    data: Option<Box<RawValue>>,
    channel: Option<String>,
}

impl PublishMessage {
    /// Parses `{"type", "data"?, "channel"?}`; the channel defaults to `events`.
    fn parse(body: &[u8]) -> Result<Self, BadRequest> {
        let wire: Wire = serde_json::from_slice(body).map_err(BadRequest::Message)?;
        Self::from_wire(wire)
    }

    fn from_wire(wire: Wire) -> Result<Self, BadRequest> {
        let channel = match wire.channel.as_deref().map(Channel::parse) {
            None => Channel::Events,
            Some(Ok(c)) => c,
            Some(Err(_)) => return Err(BadRequest::Channel),
        };
        Ok(Self {
            kind: wire.kind,
            data: wire.data,
            channel,
        })
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
            Err(Unrouted::MethodNotAllowed("GET".into()))
        );
        assert_eq!(
            Route::parse(&Method::PUT, "/api/topics/x"),
            Err(Unrouted::MethodNotAllowed("GET, DELETE".into()))
        );
        assert_eq!(
            Route::parse(&Method::POST, "/api/groups/g"),
            Err(Unrouted::MethodNotAllowed("GET, PUT, DELETE".into()))
        );
        assert_eq!(
            Route::parse(&Method::GET, "/api/monitoring/publish"),
            Err(Unrouted::MethodNotAllowed("POST".into()))
        );
        assert_eq!(
            Route::parse(&Method::DELETE, "/api/topics"),
            Err(Unrouted::MethodNotAllowed("GET, POST".into()))
        );
        assert_eq!(
            Route::parse(&Method::HEAD, "/api/groups"),
            Err(Unrouted::MethodNotAllowed("GET".into()))
        );
    }

    #[test]
    fn bodies_are_parsed_and_checked_once() {
        let create = Endpoint::CreateTopic.request(br#"{"name":"o","partitions":3}"#);
        assert!(matches!(
            create,
            Ok(ApiRequest::CreateTopic { ref name, partitions: 3 }) if name == "o"
        ));
        let bad = Endpoint::CreateTopic.request(b"{").unwrap_err().to_string();
        assert!(bad.starts_with("invalid body"), "{bad}");
        let long_state = format!(r#"{{"state":"{}","members":1}}"#, "s".repeat(65));
        assert_eq!(
            Endpoint::UpdateGroup("g".into())
                .request(long_state.as_bytes())
                .unwrap_err()
                .to_string(),
            "group id or state out of range"
        );
        let publish = Endpoint::Publish.request(br#"{"type":"t","data":{"a": 1}}"#);
        let Ok(ApiRequest::Publish(Publish::One(msg))) = publish else {
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
                .unwrap_err()
                .to_string(),
            "no such channel"
        );
        assert_eq!(
            Endpoint::Publish
                .request(br#"{"type":""}"#)
                .unwrap_err()
                .to_string(),
            "type must be 1 to 256 bytes"
        );
    }

    #[test]
    fn a_forwarded_request_reads_back_as_it_was_sent() {
        let cases: [(Endpoint, &[u8]); 5] = [
            (Endpoint::CreateTopic, br#"{"name":"o","partitions":3}"#),
            (Endpoint::DeleteTopic("o".into()), b""),
            (
                Endpoint::UpdateGroup("g%201".into()),
                br#"{"state":"Stable","members":2}"#,
            ),
            (Endpoint::DeleteGroup("g".into()), b""),
            (
                Endpoint::Publish,
                br#"{"type":"t","data":[1, 2],"channel":"topic:a"}"#,
            ),
        ];
        for (endpoint, body) in cases {
            let sent = endpoint.request(body).unwrap();
            let wire = sent.forwarded();
            let back = ApiRequest::from_forwarded(wire.as_bytes()).unwrap();
            assert_eq!(format!("{back:?}"), format!("{sent:?}"), "{wire}");
            assert!(back.mutates());
        }
        // The envelope older instances send and read.
        let old = br#"{"method":"PUT","path":"/api/groups/g","body":"{\"state\":\"Empty\",\"members\":0}"}"#;
        let ApiRequest::UpdateGroup { id, state, members } =
            ApiRequest::from_forwarded(old).unwrap()
        else {
            panic!("not an update")
        };
        assert_eq!((id.as_str(), state.as_str(), members), ("g", "Empty", 0));
        let publish = Endpoint::Publish
            .request(br#"{"type":"t","data":[1, 2]}"#)
            .unwrap();
        let wire: serde_json::Value = serde_json::from_str(&publish.forwarded()).unwrap();
        assert_eq!(wire["method"], "POST");
        assert_eq!(wire["path"], "/api/monitoring/publish");
        assert_eq!(
            wire["body"], r#"{"type":"t","data":[1, 2],"channel":"events"}"#,
            "data passed through as given"
        );
        let bad =
            br#"{"method":"PUT","path":"/api/groups/g","body":"{\"state\":\"\",\"members\":0}"}"#;
        assert_eq!(
            ApiRequest::from_forwarded(bad).unwrap_err().to_string(),
            "group id or state out of range"
        );
        let nowhere = br#"{"method":"GET","path":"/healthz","body":""}"#;
        assert!(ApiRequest::from_forwarded(nowhere).is_err());
    }

    #[test]
    fn an_array_publish_parses_and_forwards_whole() {
        let body = br#" [{"type":"a","data":[1]},{"type":"b","channel":"topic:t"}]"#;
        let Ok(ApiRequest::Publish(Publish::Many(ms))) = Endpoint::Publish.request(body) else {
            panic!("not an array publish")
        };
        assert_eq!(ms.len(), 2);
        assert_eq!(
            (ms[1].kind.as_str(), &ms[1].channel),
            ("b", &Channel::topic("t"))
        );
        let forwarded = ApiRequest::Publish(Publish::Many(ms)).forwarded();
        let Ok(ApiRequest::Publish(Publish::Many(back))) =
            ApiRequest::from_forwarded(forwarded.as_bytes())
        else {
            panic!("{forwarded}")
        };
        let kinds: Vec<&str> = back.iter().map(|m| m.kind.as_str()).collect();
        assert_eq!(kinds, ["a", "b"]);
        assert_eq!(back[0].data.as_deref().map(RawValue::get), Some("[1]"));
        assert!(matches!(
            Endpoint::Publish.request(b"[]"),
            Err(BadRequest::EmptyBatch)
        ));
        assert!(matches!(
            Endpoint::Publish.request(br#"[{"type":""}]"#),
            Err(BadRequest::TypeLength)
        ));
    }
}
