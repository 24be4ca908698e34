//! The Kafka source at work: each tick of the [`Ticker`](crate::Ticker) (its own thread, never
//! a shard core) polls the cluster once, turns the poll into the `metrics` snapshot and the
//! events since the previous one, and keeps the latest view for REST reads, detail frames and
//! `/metrics`. However many dashboards watch, the cluster is asked once per tick.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use hyper::StatusCode;
use tracing::{info, warn};

use super::canary::{Canary, CanaryStatus};
use super::client::{
    Client, ClientError, Hash, Mechanism, Password, Sasl, Security, Tls, DEFAULT_CLIENT_ID,
    DEFAULT_REQUEST_TIMEOUT,
};
use super::view::{HubFacts, SourceState, SourceStatus, View, ViewConfig};
use crate::broker::{GroupDetail, MetricsSource, MonitoringMetrics, SourceInfo, TopicDetail};
use crate::http::prometheus::{Exporter, Text};
use crate::http::rest::{self, Api, Reply};
use crate::http::routes::{ApiRequest, Endpoint};
use crate::hub::{Broadcaster, HubProbe};
use crate::process;
use crate::protocol::Channel;

/// Where the cluster is and how to ask it.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct KafkaConfig {
    /// Bootstrap brokers, `HOST:PORT` each; any one that answers is enough.
    pub brokers: Vec<String>,
    /// The client id the brokers see (in their logs and quotas). The default is
    /// `takhin-monitor`.
    pub client_id: String,
    /// Bound on each connect and on each request's whole answer. The default is 5 s.
    pub request_timeout: Duration,
    /// The latency canary's topic, created when missing; `None` (the default): no canary,
    /// and the snapshot's latency percentiles are 0.
    pub canary_topic: Option<String>,
    /// TLS and SASL, set with [`tls`](Self::tls), [`sasl_scram_sha_512`](Self::sasl_scram_sha_512)
    /// and the like. The default: plain text, no authentication.
    pub(crate) security: Security,
}

impl KafkaConfig {
    /// The cluster reachable at `brokers`, with the default client id and timeout.
    pub fn new(brokers: Vec<String>) -> Self {
        Self {
            brokers,
            client_id: DEFAULT_CLIENT_ID.to_owned(),
            request_timeout: DEFAULT_REQUEST_TIMEOUT,
            canary_topic: None,
            security: Security::default(),
        }
    }

    /// Sets the client id.
    #[must_use]
    pub fn client_id(mut self, id: impl Into<String>) -> Self {
        self.client_id = id.into();
        self
    }

    /// Sets the request timeout.
    #[must_use]
    pub fn request_timeout(mut self, timeout: Duration) -> Self {
        self.request_timeout = timeout;
        self
    }

    /// Runs the latency canary on `topic`: one record produced to each of its partitions and
    /// fetched back per poll, for the snapshot's latency percentiles.
    #[must_use]
    pub fn canary_topic(mut self, topic: impl Into<String>) -> Self {
        self.canary_topic = Some(topic.into());
        self
    }

    /// Connects to the brokers over TLS, trusting the system's CA certificates unless
    /// [`tls_ca_file`](Self::tls_ca_file) names others.
    #[must_use]
    pub fn tls(mut self) -> Self {
        self.security.tls.get_or_insert_with(Tls::default);
        self
    }

    /// TLS, trusting only the CA certificates of this PEM file (a private CA). Read when the
    /// source starts: a file that cannot be read or holds no certificate stops it.
    #[must_use]
    pub fn tls_ca_file(mut self, path: impl Into<std::path::PathBuf>) -> Self {
        self.security.tls.get_or_insert_with(Tls::default).ca_file = Some(path.into());
        self
    }

    /// TLS, checking every broker's certificate for `name` instead of the broker's host (for
    /// brokers reached by IP address or through a tunnel).
    #[must_use]
    pub fn tls_server_name(mut self, name: impl Into<String>) -> Self {
        self.security
            .tls
            .get_or_insert_with(Tls::default)
            .server_name = Some(name.into());
        self
    }

    /// SASL/PLAIN as `username`: the password crosses the wire as is, so use it with TLS.
    #[must_use]
    pub fn sasl_plain(self, username: impl Into<String>, password: impl Into<String>) -> Self {
        self.sasl(
            Mechanism::Plain,
            username.into(),
            Password::from(password.into()),
        )
    }

    /// SASL/SCRAM-SHA-256 as `username`.
    #[must_use]
    pub fn sasl_scram_sha_256(
        self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        let password = Password::from(password.into());
        self.sasl(Mechanism::Scram(Hash::Sha256), username.into(), password)
    }

    /// SASL/SCRAM-SHA-512 as `username`.
    #[must_use]
    pub fn sasl_scram_sha_512(
        self,
        username: impl Into<String>,
        password: impl Into<String>,
    ) -> Self {
        let password = Password::from(password.into());
        self.sasl(Mechanism::Scram(Hash::Sha512), username.into(), password)
    }

    pub(crate) fn sasl(
        mut self,
        mechanism: Mechanism,
        username: String,
        password: Password,
    ) -> Self {
        self.security.sasl = Some(Sasl {
            mechanism,
            username,
            password,
        });
        self
    }

    /// A client of the cluster as this configuration reaches it: the source's, and the
    /// integration tests' (`kafka_support`). Not a stable API.
    #[doc(hidden)]
    pub fn client(&self) -> Result<Client, ClientError> {
        Client::new(
            self.brokers.clone(),
            self.client_id.clone(),
            self.request_timeout,
        )?
        .secured(&self.security)
    }

    /// The bootstrap list as one label (`/metrics`, logs).
    fn label(&self) -> String {
        self.brokers.join(",")
    }
}

/// Why the hub could not start watching a cluster.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum WatchError {
    /// The configuration was refused (no broker, a bad address); fix the addresses.
    #[error("kafka source: {0}")]
    Kafka(#[from] ClientError),
    /// REST services (or a relay-only instance's API) are attached already: a hub serves one
    /// source's topics and groups.
    #[error("REST services are attached already")]
    ApiAttached,
    /// The ticker's thread could not start.
    #[error("starting the ticker: {0}")]
    Io(#[from] std::io::Error),
}

/// What the ticker's thread, REST handlers on the shards and `/metrics` share: the latest
/// view of the cluster and the source's state.
#[derive(Debug)]
pub(crate) struct Watch {
    cluster: String,
    /// Requests sent to the cluster so far: one poll's worth per tick, whatever the number of
    /// dashboards.
    requests: AtomicU64,
    view: Mutex<View>,
    state: Mutex<SourceState>,
    /// The canary's status after its last round, when one runs.
    canary: Mutex<Option<CanaryStatus>>,
    broadcaster: Broadcaster,
}

impl Watch {
    fn view(&self) -> MutexGuard<'_, View> {
        self.view.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn state(&self) -> MutexGuard<'_, SourceState> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    fn canary(&self) -> MutexGuard<'_, Option<CanaryStatus>> {
        self.canary.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The `source` field of the snapshot: which cluster, and whether it answers.
    fn info(&self, cluster_id: Option<String>) -> SourceInfo {
        let s = self.state();
        let cluster = match cluster_id {
            Some(id) => format!("{} ({id})", self.cluster),
            None => self.cluster.clone(),
        };
        SourceInfo {
            kind: "kafka".to_owned(),
            cluster,
            state: s.status().as_str().to_owned(),
            since: s.since_ms() / 1000,
            error: (!s.is_up())
                .then(|| s.last_error().map(str::to_owned))
                .flatten(),
            canary: self.canary().as_ref().map(CanaryStatus::info),
        }
    }
}

/// First wait before asking a cluster that did not answer again; doubled at each failure.
const BACKOFF_FIRST: Duration = Duration::from_millis(500);
/// Longest wait between two attempts while the cluster does not answer.
const BACKOFF_MAX: Duration = Duration::from_secs(5);

/// The [`MetricsSource`] that polls the cluster.
#[derive(Debug)]
pub(crate) struct KafkaSource {
    client: Client,
    watch: Arc<Watch>,
    probe: HubProbe,
    /// While the cluster does not answer: when to try again, and the wait after that.
    retry: Option<(Instant, Duration)>,
    canary: Option<Canary>,
}

impl KafkaSource {
    /// A source for the cluster of `config`, broadcasting its events through `broadcaster`.
    /// Nothing is connected until the first tick, so a cluster that does not answer never
    /// stops the hub from starting.
    pub(crate) fn new(
        config: &KafkaConfig,
        broadcaster: Broadcaster,
        probe: HubProbe,
    ) -> Result<Self, ClientError> {
        let client = config.client()?;
        let sasl = config.security.sasl.as_ref();
        info!(
            cluster = %config.label(),
            security = config.security.protocol(),
            mechanism = sasl.map(|s| s.mechanism.name()),
            user = sasl.map(|s| s.username.as_str()),
            ca = config.security.tls.as_ref().map(|t| t.ca_file.as_ref().map_or_else(
                || "the system's".to_owned(),
                |f| f.display().to_string(),
            )),
            "kafka: how the brokers are reached"
        );
        let watch = Arc::new(Watch {
            cluster: config.label(),
            requests: AtomicU64::new(0),
            view: Mutex::new(View::new(ViewConfig::default())),
            state: Mutex::new(SourceState::new(unix_ms())),
            canary: Mutex::new(None),
            broadcaster,
        });
        let canary = config.canary_topic.clone().map(Canary::new);
        *watch.canary() = canary.as_ref().map(|c| c.status().clone());
        Ok(Self {
            client,
            watch,
            probe,
            retry: None,
            canary,
        })
    }

    /// What REST and `/metrics` read.
    pub(crate) fn watch(&self) -> Arc<Watch> {
        self.watch.clone()
    }

    /// One poll: the view updated and its events broadcast, or the failure recorded. While
    /// the cluster does not answer, ticks skip the poll with a backoff (0.5 s doubling to 5 s)
    /// and the snapshot repeats the last good one.
    fn poll(&mut self) {
        let at = unix_ms();
        let started = Instant::now();
        if self.retry.is_some_and(|(when, _)| started < when) {
            return;
        }
        let polled = self.client.poll();
        let took = started.elapsed();
        if let (Ok(state), Some(canary)) = (&polled, &mut self.canary) {
            canary.run(&mut self.client, state);
            *self.watch.canary() = Some(canary.status().clone());
        }
        self.watch.requests.store(self.client.requests(), Relaxed);
        let change = match polled {
            Ok(state) => {
                self.retry = None;
                let mut view = self.watch.view();
                let first = view.state().is_none();
                let mut events = view.update(state);
                if first {
                    // No topic is news on the first poll, but the groups' states are unknown
                    // to dashboards until said: each existing group once.
                    events.extend(view.group_states());
                }
                drop(view);
                for event in events {
                    if let Err(e) = event.publish(&self.watch.broadcaster) {
                        warn!(error = %e, "a cluster event was not sent");
                    }
                }
                self.watch.state().poll_succeeded(at, took)
            }
            Err(e) => {
                let wait = self
                    .retry
                    .map_or(BACKOFF_FIRST, |(_, w)| (w * 2).min(BACKOFF_MAX));
                self.retry = Some((Instant::now() + wait, wait));
                let change = self.watch.state().poll_failed(at, took, e.to_string());
                if change.is_some() {
                    warn!(cluster = %self.watch.cluster, error = %e, "kafka source down");
                }
                change
            }
        };
        if change == Some(SourceStatus::Up) {
            info!(cluster = %self.watch.cluster, took_ms = took.as_millis() as u64, "kafka source up");
        }
    }

    fn hub_facts(&self) -> HubFacts {
        let connections = self.probe.active_connections();
        let shards = self.probe.shards() as u64;
        HubFacts {
            active_connections: connections,
            memory_usage_bytes: process::resident_memory(),
            // As the standard source counts them: a reader and a writer per connection,
            // accept + distributor + sweep per shard, and the process's threads.
            goroutine_count: process::threads() + 2 * connections + 3 * shards,
        }
    }
}

impl MetricsSource for KafkaSource {
    fn snapshot(&mut self, _elapsed: Duration) -> MonitoringMetrics {
        self.poll();
        let facts = self.hub_facts();
        let view = self.watch.view();
        let mut m = match view.snapshot(facts) {
            Some(s) => s.metrics,
            // Never answered yet: an empty cluster, with the hub's own facts.
            None => {
                let mut m = MonitoringMetrics::default();
                m.cluster_health.active_connections = facts.active_connections;
                m.cluster_health.memory_usage_bytes = facts.memory_usage_bytes;
                m.cluster_health.goroutine_count = facts.goroutine_count;
                m.timestamp = unix_ms() / 1000;
                m
            }
        };
        let cluster_id = view.state().and_then(|s| s.cluster_id.clone());
        drop(view);
        if let Some(canary) = &mut self.canary {
            m.latency = canary.latency(Instant::now());
        }
        m.source = Some(self.watch.info(cluster_id));
        m
    }

    fn topic_detail(&mut self, name: &str) -> Option<TopicDetail> {
        self.watch.view().topic_detail(name)
    }

    fn group_detail(&mut self, group_id: &str) -> Option<GroupDetail> {
        self.watch.view().group_detail(group_id)
    }

    fn detail_channels(&mut self) -> Option<Vec<Channel>> {
        let view = self.watch.view();
        let topics = view.topics().into_iter().map(|t| Channel::topic(&t.name));
        let groups = view
            .groups()
            .into_iter()
            .map(|g| Channel::group(&g.group_id));
        Some(topics.chain(groups).collect())
    }
}

/// REST with the Kafka source: reads from the latest poll; topics and groups change on the
/// cluster, not here (501); publishing works as always.
impl Api for Watch {
    fn refuses(&self, endpoint: &Endpoint) -> Option<Reply> {
        let mutates = matches!(
            endpoint,
            Endpoint::CreateTopic
                | Endpoint::DeleteTopic(_)
                | Endpoint::UpdateGroup(_)
                | Endpoint::DeleteGroup(_)
        );
        mutates.then(read_only)
    }

    fn call(&self, request: ApiRequest) -> Reply {
        let view = || self.view();
        match request {
            ApiRequest::ListTopics => Reply::json(StatusCode::OK, &view().topics()),
            ApiRequest::GetTopic(name) => match view().topic(&name) {
                Some(t) => Reply::json(StatusCode::OK, &t),
                None => Reply::error(StatusCode::NOT_FOUND, "no such topic"),
            },
            ApiRequest::ListGroups => Reply::json(StatusCode::OK, &view().groups()),
            ApiRequest::GetGroup(id) => match view().group(&id) {
                Some(g) => Reply::json(StatusCode::OK, &g),
                None => Reply::error(StatusCode::NOT_FOUND, "no such group"),
            },
            ApiRequest::Publish(msg) => rest::publish(&self.broadcaster, &msg),
            ApiRequest::CreateTopic { .. }
            | ApiRequest::DeleteTopic(_)
            | ApiRequest::UpdateGroup { .. }
            | ApiRequest::DeleteGroup(_) => read_only(),
        }
    }
}

fn read_only() -> Reply {
    Reply::error(
        StatusCode::NOT_IMPLEMENTED,
        "the Kafka source is read-only: change topics and groups on the cluster",
    )
}

/// `takhin_source_*` in `/metrics`.
impl Exporter for Watch {
    fn export(&self, out: &mut Text) {
        let s = self.state();
        let up = f64::from(u8::from(s.is_up()));
        out.metric(
            "takhin_source_up",
            "gauge",
            "1 while the last poll of the Kafka cluster succeeded.",
            up,
        );
        let since = s.since_ms() as f64 / 1000.0;
        out.metric(
            "takhin_source_state_since_seconds",
            "gauge",
            "Unix time when the source last went up or down.",
            since,
        );
        let last = s.last_poll_duration().map_or(0.0, |d| d.as_secs_f64());
        out.metric(
            "takhin_source_poll_duration_seconds",
            "gauge",
            "How long the last poll of the cluster took.",
            last,
        );
        out.metric(
            "takhin_source_polls_total",
            "counter",
            "Polls of the cluster.",
            s.polls_total() as f64,
        );
        out.metric(
            "takhin_source_requests_total",
            "counter",
            "Requests sent to the cluster's brokers.",
            self.requests.load(Relaxed) as f64,
        );
        out.metric(
            "takhin_source_errors_total",
            "counter",
            "Polls of the cluster that failed.",
            s.errors_total() as f64,
        );
        drop(s);
        if let Some(c) = self.canary().as_ref() {
            out.metric(
                "takhin_source_canary_round_trips_total",
                "counter",
                "Canary records produced and fetched back.",
                c.round_trips as f64,
            );
            out.metric(
                "takhin_source_canary_errors_total",
                "counter",
                "Canary round trips (or creations of its topic) that failed.",
                c.errors as f64,
            );
            let (produce, trip) = c.last.map_or((0.0, 0.0), |t| {
                (t.produce.as_secs_f64(), t.end_to_end.as_secs_f64())
            });
            out.metric(
                "takhin_source_canary_produce_seconds",
                "gauge",
                "The last canary record's produce acknowledgement time.",
                produce,
            );
            out.metric(
                "takhin_source_canary_end_to_end_seconds",
                "gauge",
                "The last canary record's time from produce to fetched back.",
                trip,
            );
        }
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
