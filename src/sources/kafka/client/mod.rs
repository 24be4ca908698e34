//! Speaks the Kafka protocol to the cluster: connections, version negotiation, routing and the
//! requests of one poll.
//!
//! kafka-protocol only encodes and decodes; the sockets are ours and blocking, and the
//! [`Client`] runs on a thread of its own (never a shard core). The parts:
//!
//! - `conn`: one broker connection (framing, headers, correlation ids, timeouts, the bound on
//!   a response, ApiVersions negotiation at connect);
//! - `security`, `sasl`, `scram`: TLS under a connection and SASL authentication on it (PLAIN,
//!   SCRAM-SHA-256, SCRAM-SHA-512), as configured;
//! - `route` (pure): what Metadata says of the cluster, and which broker each request goes to;
//! - `poll`: the requests of one [`Client::poll`], which fills a
//!   [`ClusterState`](super::model::ClusterState);
//! - `admin`: creating and deleting topics, producing a record and committing a group's
//!   offset, for the tests (and later REST);
//! - `canary`: the latency canary's round trip (produce one record, fetch it back).
//!
//! Connections stay open between polls, one per broker id (the bootstrap connection becomes
//! the broker's own when the broker advertises the address it was reached at). An I/O error,
//! a timeout or an undecodable answer closes the connection; the broker is not asked again
//! during the same poll and is connected again on the next. A new Metadata closes the
//! connections of brokers that left or moved. A connection whose authenticated session is
//! ending (the broker's SASL session lifetime) is replaced before its next request.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use kafka_protocol::error::ResponseError;
use kafka_protocol::messages::{ApiKey, MetadataRequest};
use tracing::debug;

pub(crate) use self::canary::Trip;
use self::conn::{Api, Conn};
use self::route::Layout;
pub(crate) use self::scram::Hash;
use self::security::Dial;
pub(crate) use self::security::{Mechanism, Password, Sasl, Security, Tls};
use super::model::Broker;

mod admin;
mod canary;
mod conn;
mod poll;
mod route;
mod sasl;
mod scram;
mod security;
#[cfg(test)]
mod tests;

/// The default client id sent to the brokers (they log it and quote it in quotas).
pub const DEFAULT_CLIENT_ID: &str = "takhin-monitor";

/// The default request timeout: connect, send and whole answer, per request.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(5);

/// What went wrong talking to the cluster, and what to do about it.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum ClientError {
    /// No bootstrap address was given.
    #[error("no Kafka broker given: pass at least one HOST:PORT")]
    NoBootstrap,
    /// A bootstrap address is not HOST:PORT.
    #[error("{addr:?} is not a Kafka broker address: expected HOST:PORT (a port from 1 to 65535)")]
    BadAddress {
        /// The address as given.
        addr: String,
    },
    /// The TLS configuration cannot be used: the CA file cannot be read or holds no
    /// certificate, the system has none, or the server name is not one.
    #[error("Kafka TLS: {reason}")]
    TlsConfig {
        /// Why.
        reason: String,
    },
    /// The TLS handshake failed: the broker's certificate is not trusted or not for this
    /// name, or the port does not speak TLS.
    #[error(
        "TLS with Kafka broker {addr} failed: {source} (is this port the broker's TLS \
         listener? Is its certificate signed by a CA of --kafka-tls-ca, or of the system's \
         store without it, and made out to {name:?}, or to --kafka-tls-server-name?)"
    )]
    Tls {
        /// HOST:PORT.
        addr: String,
        /// The name the certificate was checked for.
        name: String,
        /// rustls's or the socket's error.
        source: io::Error,
    },
    /// The broker does not enable the SASL mechanism configured (or SASL at all).
    #[error(
        "Kafka broker {addr} does not enable SASL mechanism {mechanism} ({others}): choose one \
         it enables with --kafka-sasl-mechanism, or no SASL if it requires none"
    )]
    SaslMechanism {
        /// HOST:PORT.
        addr: String,
        /// The mechanism asked for.
        mechanism: &'static str,
        /// "it enables: ..." with the mechanisms the broker names, or what it did instead.
        others: String,
    },
    /// SASL authentication failed: wrong user or password, a user without a credential for
    /// this mechanism, or a server whose SCRAM proof is wrong. The password is never shown.
    #[error(
        "Kafka broker {addr} refused SASL {mechanism} authentication as {user:?}: {reason} \
         (check --kafka-username and --kafka-password, and that the user has a credential for \
         {mechanism})"
    )]
    Authentication {
        /// HOST:PORT.
        addr: String,
        /// The mechanism.
        mechanism: &'static str,
        /// The user.
        user: String,
        /// The broker's message, or what was wrong with its answer.
        reason: String,
    },
    /// The broker could not be reached.
    #[error(
        "cannot connect to Kafka broker {addr}: {source} (is it running, and is this address, \
         as given or as the cluster advertises it, reachable from here?)"
    )]
    Connect {
        /// HOST:PORT.
        addr: String,
        /// The socket's error.
        source: io::Error,
    },
    /// The connection failed during a request; it is closed, and opened again when the broker
    /// is next needed.
    #[error("Kafka broker {addr}: {doing} {api:?} failed: {source}; the connection is closed and opened again on the next poll")]
    Io {
        /// HOST:PORT.
        addr: String,
        /// The request.
        api: ApiKey,
        /// "sending" or "reading".
        doing: &'static str,
        /// The socket's error.
        source: io::Error,
    },
    /// No complete answer within the request timeout.
    #[error(
        "Kafka broker {addr} did not answer {api:?} within the request timeout ({timeout:?}): \
         is it overloaded or stopped? Raise the timeout if the cluster is just slow"
    )]
    Timeout {
        /// HOST:PORT.
        addr: String,
        /// The request.
        api: ApiKey,
        /// The request timeout.
        timeout: Duration,
    },
    /// The peer announced an answer larger than the bound (64 MiB), or negative.
    #[error(
        "Kafka broker {addr} announced a {size}-byte answer to {api:?}, outside 4..={limit}: \
         is this port a Kafka broker's?"
    )]
    BadResponseSize {
        /// HOST:PORT.
        addr: String,
        /// The request.
        api: ApiKey,
        /// The size announced.
        size: i64,
        /// The largest accepted.
        limit: usize,
    },
    /// The broker answered in TLS to a request in plain text.
    #[error(
        "Kafka broker {addr} answered in TLS: this port is a TLS listener (use \
         --kafka-security-protocol ssl, or sasl_ssl)"
    )]
    TlsListener {
        /// HOST:PORT.
        addr: String,
    },
    /// The answer carried another request's correlation id.
    #[error(
        "Kafka broker {addr} answered {api:?} with correlation id {got}, not {expected}: the \
         connection is out of step and is closed"
    )]
    OutOfStep {
        /// HOST:PORT.
        addr: String,
        /// The request.
        api: ApiKey,
        /// The id sent.
        expected: i32,
        /// The id received.
        got: i32,
    },
    /// A request could not be encoded: a bug in this client.
    #[error("cannot encode {api:?} v{version} (a bug in this client, please report it): {source}")]
    Encode {
        /// The request.
        api: ApiKey,
        /// Its version.
        version: i16,
        /// kafka-protocol's error.
        source: anyhow::Error,
    },
    /// An answer could not be decoded.
    #[error(
        "cannot decode Kafka broker {addr}'s answer to {api:?} v{version}: {source} (is this a \
         Kafka-compatible broker? Its answer does not follow the version it said it speaks)"
    )]
    Decode {
        /// HOST:PORT.
        addr: String,
        /// The request.
        api: ApiKey,
        /// The version asked for.
        version: i16,
        /// kafka-protocol's error.
        source: anyhow::Error,
    },
    /// The broker speaks no version of an API that this client implements.
    #[error(
        "Kafka broker {addr} speaks {api:?} {}, this client versions {}-{}: \
         use a broker of Kafka 2.4 or later (or a compatible one)",
        broker_range(.broker), .ours.0, .ours.1
    )]
    Unsupported {
        /// HOST:PORT.
        addr: String,
        /// The API.
        api: ApiKey,
        /// The broker's (lowest, highest) version, `None` when it does not list the API.
        broker: Option<(i16, i16)>,
        /// Ours.
        ours: (i16, i16),
    },
    /// The broker answered with an error code.
    #[error("Kafka broker {addr} refused {api:?}{what}: {error} (error code {})", .error.code())]
    Refused {
        /// HOST:PORT.
        addr: String,
        /// The request.
        api: ApiKey,
        /// The error.
        error: ResponseError,
        /// What was refused and the broker's message, if any (" for topic \"t\": ...").
        what: String,
    },
    /// A broker failed earlier in the same poll or operation and is not asked again before
    /// the next.
    #[error("Kafka broker {id} failed earlier in this poll; it is asked again on the next")]
    Down {
        /// The broker's id.
        id: i32,
    },
    /// Metadata names no broker with this id.
    #[error("Kafka broker {id} is not in the cluster's metadata")]
    UnknownBroker {
        /// The broker's id.
        id: i32,
    },
    /// No broker answered Metadata: the whole cluster is unreachable from here.
    #[error("no Kafka broker answered ({tried} tried): {last}")]
    NoBroker {
        /// How many brokers and bootstrap addresses were tried.
        tried: usize,
        /// The last one's error.
        last: Box<Self>,
    },
    /// The topic or partition does not exist.
    #[error("the cluster has no partition {partition} of topic {topic:?}: create it first")]
    UnknownPartition {
        /// The topic.
        topic: String,
        /// The partition.
        partition: i32,
    },
    /// The canary's record was acknowledged but not read back in time.
    #[error(
        "the canary record at offset {offset} of {topic}/{partition} was acknowledged but not \
         fetched back within the request timeout ({timeout:?}): is the partition's leader \
         overloaded, or its replication stuck?"
    )]
    NotReadBack {
        /// The canary topic.
        topic: String,
        /// The partition.
        partition: i32,
        /// The record's offset.
        offset: i64,
        /// The request timeout.
        timeout: Duration,
    },
    /// The partition has no leader now, or the group no coordinator.
    #[error("{what} has no {role} now (an election is under way, or its brokers are down): try again later")]
    Leaderless {
        /// "topic/partition" or "group \"g\"".
        what: String,
        /// "leader" or "coordinator".
        role: &'static str,
    },
}

fn broker_range(r: &Option<(i16, i16)>) -> String {
    match r {
        Some((lo, hi)) => format!("versions {lo}-{hi}"),
        None => "no version (it does not list the API)".to_owned(),
    }
}

impl ClientError {
    /// Whether the connection is unusable after this error (and is closed). An answer that
    /// cannot be decoded was read whole and carried the right correlation id: the connection
    /// is still in step.
    fn breaks_connection(&self) -> bool {
        matches!(
            self,
            Self::Connect { .. }
                | Self::Io { .. }
                | Self::Timeout { .. }
                | Self::BadResponseSize { .. }
                | Self::TlsListener { .. }
                | Self::OutOfStep { .. }
        )
    }
}

/// A Kafka-protocol client of one cluster: polls it whole into a `ClusterState` (see
/// `poll.rs`), and creates and deletes
/// topics, produces records and commits offsets (see `admin.rs`). Blocking: run it on a thread
/// of its own.
#[derive(Debug)]
pub struct Client {
    bootstrap: Vec<String>,
    /// The client id, timeout and security every connection is made with.
    dial: Dial,
    timeout: Duration,
    /// The brokers, as the last Metadata listed them.
    brokers: BTreeMap<i32, Broker>,
    /// Open connections, by broker id.
    conns: BTreeMap<i32, Conn>,
    /// Brokers that failed during the current poll or operation, not asked again before the
    /// next.
    down: BTreeSet<i32>,
    /// Group id -> its coordinator's broker id, as FindCoordinator last answered.
    coordinators: BTreeMap<String, i32>,
    /// Requests sent to the brokers so far (after each connection's ApiVersions).
    requests: u64,
}

impl Client {
    /// A client of the cluster reachable at one of `bootstrap` (HOST:PORT each; every one is
    /// tried in turn until one answers). `request_timeout` bounds each connect and each
    /// request's whole answer. Nothing is connected before the first request.
    pub fn new(
        bootstrap: Vec<String>,
        client_id: impl Into<String>,
        request_timeout: Duration,
    ) -> Result<Self, ClientError> {
        if bootstrap.is_empty() {
            return Err(ClientError::NoBootstrap);
        }
        for addr in &bootstrap {
            let valid = addr.rsplit_once(':').is_some_and(|(host, port)| {
                !host.is_empty() && port.parse::<u16>().is_ok_and(|p| p > 0)
            });
            if !valid {
                return Err(ClientError::BadAddress { addr: addr.clone() });
            }
        }
        Ok(Self {
            bootstrap,
            dial: Dial::plain(client_id, request_timeout),
            timeout: request_timeout,
            brokers: BTreeMap::new(),
            conns: BTreeMap::new(),
            down: BTreeSet::new(),
            coordinators: BTreeMap::new(),
            requests: 0,
        })
    }

    /// Connects with `security` (TLS, SASL) from now on. Its CA certificates are read now: a
    /// file that cannot be read or holds none is an error here, not at each connect.
    pub(crate) fn secured(mut self, security: &Security) -> Result<Self, ClientError> {
        self.dial = self.dial.secured(security)?;
        Ok(self)
    }

    /// The bootstrap addresses.
    pub fn bootstrap(&self) -> &[String] {
        &self.bootstrap
    }

    /// Requests sent to the brokers so far (not counting each connection's ApiVersions).
    pub fn requests(&self) -> u64 {
        self.requests
    }

    /// How many broker connections are open.
    pub fn connections(&self) -> usize {
        self.conns.len()
    }

    /// The request timeout in milliseconds, as requests carry it.
    fn timeout_ms(&self) -> i32 {
        i32::try_from(self.timeout.as_millis()).unwrap_or(i32::MAX)
    }

    /// The connection to broker `id`, opened if needed.
    fn conn(&mut self, id: i32) -> Result<&mut Conn, ClientError> {
        if self.down.contains(&id) {
            return Err(ClientError::Down { id });
        }
        if self
            .conns
            .get(&id)
            .is_some_and(|c| c.session_ended(Instant::now()))
        {
            debug!(broker = id, "kafka: SASL session ending, connecting again");
            self.conns.remove(&id);
        }
        if !self.conns.contains_key(&id) {
            let b = self
                .brokers
                .get(&id)
                .ok_or(ClientError::UnknownBroker { id })?;
            let addr = broker_addr(b);
            match Conn::connect(&addr, &self.dial) {
                Ok(c) => {
                    self.conns.insert(id, c);
                }
                Err(e) => {
                    debug!(broker = id, error = %e, "kafka: connect failed");
                    self.down.insert(id);
                    return Err(e);
                }
            }
        }
        Ok(self.conns.get_mut(&id).expect("inserted above"))
    }

    /// The version broker `id` speaks `R` in (connecting to it if needed).
    fn version<R: Api>(&mut self, id: i32) -> Result<i16, ClientError> {
        self.conn(id)?.version::<R>()
    }

    /// Sends broker `id` the request `build` makes for the negotiated version. A broken
    /// connection is closed and the broker marked down until the next poll.
    fn call<R: Api>(
        &mut self,
        id: i32,
        build: impl FnOnce(i16) -> R,
    ) -> Result<R::Response, ClientError> {
        let conn = self.conn(id)?;
        let req = build(conn.version::<R>()?);
        let result = conn.send(&req);
        self.requests += 1;
        if let Err(e) = &result {
            if e.breaks_connection() {
                debug!(broker = id, error = %e, "kafka: connection closed");
                self.conns.remove(&id);
                self.down.insert(id);
            }
        }
        result
    }

    /// HOST:PORT of broker `id` (empty if unknown), for errors.
    fn addr_of(&self, id: i32) -> String {
        self.brokers.get(&id).map_or_else(String::new, broker_addr)
    }

    /// The brokers worth asking a cluster-wide question, connected ones first.
    fn candidates(&self) -> Vec<i32> {
        let open = self.conns.keys().copied();
        let others = self
            .brokers
            .keys()
            .filter(|id| !self.conns.contains_key(id))
            .copied();
        open.chain(others)
            .filter(|id| !self.down.contains(id))
            .collect()
    }

    /// Asks for the metadata of every topic: of a known broker (connected ones first), else
    /// of each bootstrap address in turn. Updates the brokers and drops the connections of
    /// those that left or moved.
    fn metadata(&mut self) -> Result<Layout, ClientError> {
        let mut tried = 0;
        let mut last = None;
        for id in self.candidates() {
            tried += 1;
            match self.call(id, metadata_request) {
                Ok(resp) => match self.learn(&resp, self.addr_of(id), None) {
                    Ok(layout) => return Ok(layout),
                    Err(e) => last = Some(e),
                },
                Err(e) => last = Some(e),
            }
        }
        let failed: BTreeSet<String> = self.down.iter().map(|&id| self.addr_of(id)).collect();
        // A broker that failed already is not asked again under its bootstrap address (a hung
        // one would take another timeout).
        for addr in self
            .bootstrap
            .clone()
            .into_iter()
            .filter(|a| !failed.contains(a))
        {
            tried += 1;
            self.requests += 1;
            let answer = Conn::connect(&addr, &self.dial).and_then(|mut c| {
                let v = c.version::<MetadataRequest>()?;
                c.send(&metadata_request(v)).map(|resp| (c, resp))
            });
            match answer {
                Ok((conn, resp)) => match self.learn(&resp, addr.clone(), Some(conn)) {
                    Ok(layout) => return Ok(layout),
                    Err(e) => last = Some(e),
                },
                Err(e) => {
                    debug!(%addr, error = %e, "kafka: bootstrap broker failed");
                    last = Some(e);
                }
            }
        }
        Err(ClientError::NoBroker {
            tried,
            last: Box::new(last.unwrap_or(ClientError::NoBootstrap)),
        })
    }

    /// Takes in a Metadata answer (`via`: the bootstrap connection it came on, kept as its
    /// broker's connection when the broker advertises the same address).
    fn learn(
        &mut self,
        resp: &kafka_protocol::messages::MetadataResponse,
        addr: String,
        via: Option<Conn>,
    ) -> Result<Layout, ClientError> {
        if let Some(error) = ResponseError::try_from_code(resp.error_code) {
            return Err(ClientError::Refused {
                addr,
                api: ApiKey::Metadata,
                error,
                what: String::new(),
            });
        }
        let layout = Layout::from_metadata(resp);
        for id in route::stale(&self.brokers, &layout.brokers) {
            self.conns.remove(&id);
        }
        self.brokers.clone_from(&layout.brokers);
        self.conns.retain(|id, _| layout.brokers.contains_key(id));
        let brokers = &self.brokers;
        self.coordinators.retain(|_, id| brokers.contains_key(id));
        if let Some(conn) = via {
            let same = self
                .brokers
                .values()
                .find(|b| broker_addr(b) == conn.addr())
                .map(|b| b.id);
            if let Some(id) = same.filter(|id| !self.conns.contains_key(id)) {
                self.down.remove(&id);
                self.conns.insert(id, conn);
            }
        }
        Ok(layout)
    }
}

/// HOST:PORT of a broker as Metadata advertises it (an IPv6 address in brackets).
fn broker_addr(b: &Broker) -> String {
    if b.host.contains(':') && !b.host.starts_with('[') {
        format!("[{}]:{}", b.host, b.port)
    } else {
        format!("{}:{}", b.host, b.port)
    }
}

/// Metadata of every topic, creating none.
fn metadata_request(version: i16) -> MetadataRequest {
    let req = MetadataRequest::default().with_topics(None);
    if version >= 4 {
        req.with_allow_auto_topic_creation(false)
    } else {
        req
    }
}

/// Milliseconds since the Unix epoch.
fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}
