//! The server's options: flags over `TAKHIN_*` environment variables over the TOML file.
//!
//! One struct, [`Options`], declares every option once: clap derives the flag and its
//! environment variable from a field, serde the file's key. The `--config` file is read into
//! the same struct, and [`Options::merge_file`] merges the two generically: both become TOML
//! tables, the command line's keys (a flag, or else its variable) are written over the file's,
//! and the result is read back. Adding an option is adding a field.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use serde::{Deserialize, Serialize};

use crate::broker::{valid_topic_name, MAX_TOPIC_NAME};
use crate::config::{Cores, HubConfig};
use crate::sources::kafka::client::{Hash, Mechanism, Password};
use crate::sources::{KafkaConfig, RelayConfig};
use crate::tls_config::TlsFiles;

/// What feeds the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A built-in simulated broker: topics, traffic, consumer groups, lag, events.
    Demo,
    /// Nothing built in: only what REST, the publish endpoint or an embedding broker send.
    None,
    /// No source of its own: fans out what the origin instance publishes through --relay.
    Relay,
    /// A Kafka-compatible cluster, polled over the Kafka protocol (--kafka-brokers).
    Kafka,
}

/// Whether permessage-deflate is negotiated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize)]
#[serde(rename_all = "lowercase")]
pub(crate) enum Switch {
    /// Negotiated with every client that offers it.
    On,
    /// Never negotiated: every frame goes plain.
    Off,
}

/// In the TOML file, `"on"`/`"off"` as on the command line, or a plain `true`/`false`.
impl<'de> Deserialize<'de> for Switch {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        #[derive(Deserialize)]
        #[serde(untagged)]
        enum Given {
            Bool(bool),
            Word(String),
        }
        match Given::deserialize(d)? {
            Given::Bool(true) => Ok(Self::On),
            Given::Bool(false) => Ok(Self::Off),
            Given::Word(w) if w == "on" => Ok(Self::On),
            Given::Word(w) if w == "off" => Ok(Self::Off),
            Given::Word(w) => Err(serde::de::Error::custom(format!(
                "expected on, off, true or false, not {w:?}"
            ))),
        }
    }
}

/// How the Kafka source reaches the brokers, in Kafka's own words (`security.protocol`): an
/// operator copies the value from the cluster's client properties, and TLS and SASL are each
/// asked for by name, so credentials are never sent in plain text by default. Upper case, as
/// Kafka writes it, is accepted too.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub(crate) enum SecurityProtocol {
    /// Plain text, no authentication.
    #[value(name = "plaintext")]
    #[serde(rename = "plaintext", alias = "PLAINTEXT")]
    Plaintext,
    /// TLS, no authentication.
    #[value(name = "ssl")]
    #[serde(rename = "ssl", alias = "SSL")]
    Ssl,
    /// SASL authentication over plain text.
    #[value(name = "sasl_plaintext")]
    #[serde(rename = "sasl_plaintext", alias = "SASL_PLAINTEXT")]
    SaslPlaintext,
    /// SASL authentication over TLS.
    #[value(name = "sasl_ssl")]
    #[serde(rename = "sasl_ssl", alias = "SASL_SSL")]
    SaslSsl,
}

/// The SASL mechanism, as Kafka's `sasl.mechanism` names it (upper case accepted too).
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Serialize, Deserialize)]
pub(crate) enum SaslMechanism {
    /// PLAIN: the password itself crosses the wire (use it with sasl_ssl).
    #[value(name = "plain")]
    #[serde(rename = "plain", alias = "PLAIN")]
    Plain,
    /// SCRAM-SHA-256.
    #[value(name = "scram-sha-256")]
    #[serde(rename = "scram-sha-256", alias = "SCRAM-SHA-256")]
    ScramSha256,
    /// SCRAM-SHA-512.
    #[value(name = "scram-sha-512")]
    #[serde(rename = "scram-sha-512", alias = "SCRAM-SHA-512")]
    ScramSha512,
}

/// The server's options. Each field is at once a flag (`--cpu-list`, unless `long` renames
/// it), a `TAKHIN_*` environment variable (`TAKHIN_CPU_LIST`) and a key of the `--config` TOML
/// file (the field's name, `cpu_list`); its doc comment is its `--help` text. A field is `None`
/// when none of them gave it.
#[derive(Debug, Default, Parser, Serialize, Deserialize)]
#[command(
    version,
    about,
    long_about = "Streams a broker's live metrics and events to WebSocket dashboards.\n\n\
                  Every option can also come from a TAKHIN_* environment variable or the \
                  --config file; a flag wins over the environment, which wins over the file."
)]
#[serde(default, deny_unknown_fields)]
pub struct Options {
    /// TOML file with any of the options below (names with underscores).
    #[arg(long, env = "TAKHIN_CONFIG")]
    #[serde(skip)]
    pub(crate) config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8080].
    #[arg(long, env = "TAKHIN_LISTEN")]
    pub(crate) listen: Option<SocketAddr>,
    /// Number of cores to run a shard on [default: all].
    #[arg(long, env = "TAKHIN_CORES")]
    pub(crate) cores: Option<usize>,
    /// Exact core ids to run a shard on, comma separated.
    #[arg(long, env = "TAKHIN_CPU_LIST", value_delimiter = ',')]
    pub(crate) cpu_list: Option<Vec<usize>>,
    /// What feeds the hub [default: none].
    #[arg(long, env = "TAKHIN_SOURCE", value_enum)]
    pub(crate) source: Option<SourceKind>,
    /// Viewer token for WebSocket clients and REST reads.
    #[arg(long, env = "TAKHIN_TOKEN", hide_env_values = true)]
    pub(crate) token: Option<String>,
    /// Admin token for REST mutations and publish.
    #[arg(long, env = "TAKHIN_ADMIN_TOKEN", hide_env_values = true)]
    pub(crate) admin_token: Option<String>,
    /// An origin allowed to connect (repeatable); none: every origin is accepted.
    #[arg(
        long = "allowed-origin",
        env = "TAKHIN_ALLOWED_ORIGINS",
        value_delimiter = ','
    )]
    pub(crate) allowed_origins: Option<Vec<String>>,
    /// Interval between metrics snapshots, in seconds [default: 2].
    #[arg(long, env = "TAKHIN_METRICS_INTERVAL")]
    pub(crate) metrics_interval: Option<f64>,
    /// WebSocket clients across all cores before 503 [default: 100000].
    #[arg(long, env = "TAKHIN_MAX_CONNECTIONS")]
    pub(crate) max_connections: Option<usize>,
    /// Per-client outbound queue, in frames [default: 256].
    #[arg(long, env = "TAKHIN_CLIENT_QUEUE")]
    pub(crate) client_queue: Option<usize>,
    /// Broadcasts kept for clients that resume with ?since=&epoch= (events and published
    /// messages; 0 keeps none) [default: 32768].
    #[arg(long, env = "TAKHIN_HISTORY_FRAMES")]
    pub(crate) history_frames: Option<usize>,
    /// How long a broadcast stays in that history, in seconds [default: 300].
    #[arg(long, env = "TAKHIN_HISTORY_SECONDS")]
    pub(crate) history_seconds: Option<f64>,
    /// permessage-deflate with clients that offer it (every browser does): each broadcast is
    /// compressed once for all of them [default: on].
    #[arg(long, env = "TAKHIN_COMPRESSION", value_enum)]
    pub(crate) compression: Option<Switch>,
    /// Deflate level, 1 (fastest) to 9 (smallest) [default: 6].
    #[arg(long, env = "TAKHIN_COMPRESSION_LEVEL")]
    pub(crate) compression_level: Option<u32>,
    /// Smallest payload compressed, in bytes; smaller frames go plain [default: 1024].
    #[arg(long, env = "TAKHIN_COMPRESSION_THRESHOLD")]
    pub(crate) compression_threshold: Option<usize>,
    /// The port's certificate chain, a PEM file (leaf first). With --tls-key the port speaks
    /// TLS only: wss:// and https://. Read at start and again on SIGHUP [default: plain text].
    #[arg(long, env = "TAKHIN_TLS_CERT")]
    pub(crate) tls_cert: Option<PathBuf>,
    /// The private key of --tls-cert, an unencrypted PEM file (PKCS#8, PKCS#1 or SEC1). Never
    /// logged.
    #[arg(long, env = "TAKHIN_TLS_KEY")]
    pub(crate) tls_key: Option<PathBuf>,
    /// Kernel send buffer per WebSocket client, in bytes (SO_SNDBUF) [default: the kernel's
    /// autotuning, up to 4 MiB for a client that reads slowly].
    #[arg(long, env = "TAKHIN_SEND_BUFFER")]
    pub(crate) send_buffer: Option<usize>,
    /// Server ping interval, in seconds [default: 54].
    #[arg(long, env = "TAKHIN_PING_INTERVAL")]
    pub(crate) ping_interval: Option<f64>,
    /// Silence allowed before a client is closed, in seconds [default: 60].
    #[arg(long, env = "TAKHIN_PONG_WAIT")]
    pub(crate) pong_wait: Option<f64>,
    /// Drain deadline on SIGTERM, in seconds [default: 5].
    #[arg(long, env = "TAKHIN_SHUTDOWN_TIMEOUT")]
    pub(crate) shutdown_timeout: Option<f64>,
    /// Directory whose disk usage is reported as `diskUsageBytes`.
    #[arg(long, env = "TAKHIN_DATA_DIR")]
    pub(crate) data_dir: Option<PathBuf>,
    /// Redis relay shared by several instances: redis://HOST:PORT[/prefix]. An instance with a
    /// source publishes every broadcast there; with --source relay it only fans out. With a
    /// password: redis://USER:PASSWORD@HOST:PORT/prefix (ACL user) or redis://:PASSWORD@...,
    /// percent-encoded (better in TAKHIN_RELAY or the file than on the command line);
    /// rediss:// for TLS, ?ca=PATH to trust a private CA instead of the system's roots.
    #[arg(long, env = "TAKHIN_RELAY")]
    pub(crate) relay: Option<RelayUrl>,
    /// With --source kafka: the cluster's bootstrap brokers, HOST:PORT, comma separated.
    #[arg(long, env = "TAKHIN_KAFKA_BROKERS", value_delimiter = ',')]
    pub(crate) kafka_brokers: Option<Vec<String>>,
    /// The client id the Kafka brokers see [default: takhin-monitor].
    #[arg(long, env = "TAKHIN_KAFKA_CLIENT_ID")]
    pub(crate) kafka_client_id: Option<String>,
    /// Bound on each request to a Kafka broker, in seconds [default: 5].
    #[arg(long, env = "TAKHIN_KAFKA_REQUEST_TIMEOUT")]
    pub(crate) kafka_request_timeout: Option<f64>,
    /// Seconds between polls of the Kafka cluster, one snapshot each [default: the metrics
    /// interval].
    #[arg(long, env = "TAKHIN_KAFKA_POLL_INTERVAL")]
    pub(crate) kafka_poll_interval: Option<f64>,
    /// With --source kafka: a topic for the latency canary (created if missing), which gets one
    /// record per partition per poll, fetched back, for the latency percentiles [default: no
    /// canary, latency 0].
    #[arg(long, env = "TAKHIN_KAFKA_CANARY_TOPIC")]
    pub(crate) kafka_canary_topic: Option<String>,
    /// How to reach the Kafka brokers, as Kafka's security.protocol: plaintext, ssl (TLS),
    /// sasl_plaintext or sasl_ssl (SASL over TLS) [default: plaintext].
    #[arg(
        long,
        env = "TAKHIN_KAFKA_SECURITY_PROTOCOL",
        value_enum,
        ignore_case = true
    )]
    pub(crate) kafka_security_protocol: Option<SecurityProtocol>,
    /// With sasl_plaintext or sasl_ssl: plain, scram-sha-256 or scram-sha-512.
    #[arg(
        long,
        env = "TAKHIN_KAFKA_SASL_MECHANISM",
        value_enum,
        ignore_case = true
    )]
    pub(crate) kafka_sasl_mechanism: Option<SaslMechanism>,
    /// With sasl_plaintext or sasl_ssl: the user to authenticate as.
    #[arg(long, env = "TAKHIN_KAFKA_USERNAME")]
    pub(crate) kafka_username: Option<String>,
    /// With sasl_plaintext or sasl_ssl: the user's password. Prefer the variable or the file:
    /// a flag shows in the process list. Never logged.
    #[arg(long, env = "TAKHIN_KAFKA_PASSWORD", hide_env_values = true)]
    pub(crate) kafka_password: Option<Password>,
    /// With ssl or sasl_ssl: a PEM file of the CA certificates to trust for the brokers' (a
    /// private CA) [default: the system's CA certificates].
    #[arg(long, env = "TAKHIN_KAFKA_TLS_CA")]
    pub(crate) kafka_tls_ca: Option<PathBuf>,
    /// With ssl or sasl_ssl: the name the brokers' certificates must carry [default: each
    /// broker's host, as given or advertised].
    #[arg(long, env = "TAKHIN_KAFKA_TLS_SERVER_NAME")]
    pub(crate) kafka_tls_server_name: Option<String>,
}

impl Options {
    /// Fills what neither a flag nor the environment gave from the file.
    pub fn merge_file(self) -> anyhow::Result<Self> {
        let Some(path) = self.config.clone() else {
            return Ok(self);
        };
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let file: Self =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        self.or(file)
            .with_context(|| format!("merging the command line with {}", path.display()))
    }

    /// Every option `self` has, the others from `below`: both as TOML tables, `self`'s keys
    /// written over `below`'s. `config` is not a key: it stays `self`'s.
    fn or(self, below: Self) -> anyhow::Result<Self> {
        let mut table = toml::Table::try_from(&below)?;
        table.extend(toml::Table::try_from(&self)?);
        let merged: Self = table.try_into()?;
        Ok(Self {
            config: self.config,
            ..merged
        })
    }

    /// The Redis relay, parsed; an error names the URL with its credentials hidden.
    pub(crate) fn relay(&self) -> anyhow::Result<Option<RelayConfig>> {
        let Some(RelayUrl(url)) = &self.relay else {
            return Ok(None);
        };
        match url.parse::<RelayConfig>() {
            Ok(config) => Ok(Some(config)),
            Err(e) => bail!("--relay {}: {e}", redact_url(url)),
        }
    }

    /// The Kafka cluster to watch, with `--source kafka`.
    pub(crate) fn kafka(&self) -> anyhow::Result<KafkaConfig> {
        let brokers = self
            .kafka_brokers
            .clone()
            .filter(|b| !b.is_empty())
            .context("--source kafka needs --kafka-brokers HOST:PORT[,HOST:PORT...]")?;
        let mut k = KafkaConfig::new(brokers);
        if let Some(id) = &self.kafka_client_id {
            k = k.client_id(id.clone());
        }
        if let Some(s) = self.kafka_request_timeout {
            k = k.request_timeout(secs(s, "Kafka request timeout")?);
        }
        if let Some(topic) = &self.kafka_canary_topic {
            if !valid_topic_name(topic) {
                bail!(
                    "--kafka-canary-topic {topic:?} is not a Kafka topic name: 1 to \
                     {MAX_TOPIC_NAME} of a-z A-Z 0-9 . _ -"
                );
            }
            k = k.canary_topic(topic.clone());
        }
        self.kafka_security(k)
    }

    /// TLS and SASL. Each option must go with a protocol that uses it: a password given with
    /// plaintext is refused rather than ignored (or sent in clear), and SASL needs all three of
    /// mechanism, user and password.
    fn kafka_security(&self, mut k: KafkaConfig) -> anyhow::Result<KafkaConfig> {
        let protocol = self
            .kafka_security_protocol
            .unwrap_or(SecurityProtocol::Plaintext);
        let (tls, sasl) = match protocol {
            SecurityProtocol::Plaintext => (false, false),
            SecurityProtocol::Ssl => (true, false),
            SecurityProtocol::SaslPlaintext => (false, true),
            SecurityProtocol::SaslSsl => (true, true),
        };
        let name = match protocol {
            SecurityProtocol::Plaintext => "plaintext",
            SecurityProtocol::Ssl => "ssl",
            SecurityProtocol::SaslPlaintext => "sasl_plaintext",
            SecurityProtocol::SaslSsl => "sasl_ssl",
        };
        if !tls && (self.kafka_tls_ca.is_some() || self.kafka_tls_server_name.is_some()) {
            bail!(
                "--kafka-tls-ca and --kafka-tls-server-name are for TLS: with \
                 --kafka-security-protocol ssl or sasl_ssl (it is {name})"
            );
        }
        let credentials = (
            self.kafka_sasl_mechanism,
            self.kafka_username.as_ref(),
            self.kafka_password.as_ref(),
        );
        if !sasl && credentials != (None, None, None) {
            bail!(
                "--kafka-sasl-mechanism, --kafka-username and --kafka-password are for SASL: \
                 with --kafka-security-protocol sasl_ssl or sasl_plaintext (it is {name})"
            );
        }
        if tls {
            k = k.tls();
            if let Some(ca) = &self.kafka_tls_ca {
                k = k.tls_ca_file(ca.clone());
            }
            if let Some(server) = &self.kafka_tls_server_name {
                k = k.tls_server_name(server.clone());
            }
        }
        if sasl {
            let (Some(mechanism), Some(user), Some(password)) = credentials else {
                bail!(
                    "--kafka-security-protocol {name} needs --kafka-sasl-mechanism (plain, \
                     scram-sha-256 or scram-sha-512), --kafka-username and --kafka-password"
                );
            };
            let mechanism = match mechanism {
                SaslMechanism::Plain => Mechanism::Plain,
                SaslMechanism::ScramSha256 => Mechanism::Scram(Hash::Sha256),
                SaslMechanism::ScramSha512 => Mechanism::Scram(Hash::Sha512),
            };
            k = k.sasl(mechanism, user.clone(), password.clone());
        }
        Ok(k)
    }

    /// The port's certificate and key: both, or neither (plain text). They may come from
    /// different layers (the certificate from the file, the key from `TAKHIN_TLS_KEY`); a path
    /// is used as given, a relative one from the working directory, like every path option.
    pub(crate) fn tls(&self) -> anyhow::Result<Option<TlsFiles>> {
        match (&self.tls_cert, &self.tls_key) {
            (Some(cert), Some(key)) => Ok(Some(TlsFiles::new(cert.clone(), key.clone()))),
            (None, None) => Ok(None),
            (cert, _) => {
                let (given, missing) = match cert {
                    Some(_) => ("--tls-cert", "--tls-key (its private key)"),
                    None => ("--tls-key", "--tls-cert (its certificate chain)"),
                };
                bail!("{given} needs {missing}: give both for TLS, or neither for plain text")
            }
        }
    }

    pub(crate) fn build_config(&self) -> anyhow::Result<HubConfig> {
        // A malformed relay URL stops the start before anything listens, and so does half of
        // the TLS pair.
        self.relay()?;
        let mut c = HubConfig::default();
        if let Some(listen) = self.listen {
            c = c.listen(listen);
        }
        c = match (&self.cores, &self.cpu_list) {
            (Some(_), Some(_)) => bail!("give --cores or --cpu-list, not both"),
            (Some(n), None) => c.cores(Cores::Count(*n)),
            (None, Some(list)) => c.cores(Cores::List(list.clone())),
            (None, None) => c,
        };
        c = c
            .viewer_token(self.token.clone())
            .admin_token(self.admin_token.clone())
            .allowed_origins(self.allowed_origins.clone().unwrap_or_default());
        if let Some(n) = self.max_connections {
            c = c.max_connections(n);
        }
        if let Some(q) = self.client_queue {
            c = c.client_queue(q);
        }
        if self.send_buffer.is_some() {
            c = c.send_buffer(self.send_buffer);
        }
        if let Some(n) = self.history_frames {
            c = c.history_frames(n);
        }
        if let Some(s) = self.history_seconds {
            c = c.history_age(secs(s, "history age")?);
        }
        if let Some(s) = self.ping_interval {
            c = c.ping_interval(secs(s, "ping interval")?);
        }
        if let Some(s) = self.pong_wait {
            c = c.pong_wait(secs(s, "pong wait")?);
        }
        if let Some(s) = self.shutdown_timeout {
            c = c.shutdown_timeout(secs(s, "shutdown timeout")?);
        }
        if let Some(switch) = self.compression {
            c = c.compression(switch == Switch::On);
        }
        if let Some(level) = self.compression_level {
            c = c.compression_level(level);
        }
        if let Some(bytes) = self.compression_threshold {
            c = c.compression_threshold(bytes);
        }
        c = c.tls(self.tls()?);
        c.assert_valid()?;
        Ok(c)
    }
}

pub(crate) fn secs(s: f64, what: &str) -> anyhow::Result<Duration> {
    if !(s.is_finite() && s > 0.0 && s < 1e9) {
        bail!("the {what} must be a positive number of seconds");
    }
    Ok(Duration::from_secs_f64(s))
}

/// `--relay` as given: parsed only by [`Options::relay`], so that a malformed URL's error (clap's
/// and the TOML parser's would quote it whole) never shows the password it may carry; its
/// `Debug` hides the password too.
#[derive(Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(transparent)]
pub(crate) struct RelayUrl(String);

impl FromStr for RelayUrl {
    type Err = std::convert::Infallible;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Self(s.to_owned()))
    }
}

impl std::fmt::Debug for RelayUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&redact_url(&self.0))
    }
}

/// `url` with whatever stands between `://` and the host's `@` replaced by `***`.
fn redact_url(url: &str) -> String {
    let Some((scheme, rest)) = url.split_once("://") else {
        return url.to_owned();
    };
    let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
    match rest[..authority_end].rfind('@') {
        Some(at) => format!("{scheme}://***{}", &rest[at..]),
        None => url.to_owned(),
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;
    use std::process::Command;

    use clap::{CommandFactory, FromArgMatches};

    use super::*;

    /// A `--config` file, removed when dropped.
    struct File(PathBuf);

    impl File {
        fn new(name: &str, text: &str) -> Self {
            let path = std::env::temp_dir()
                .join(format!("takhin-options-{}-{name}.toml", std::process::id()));
            std::fs::write(&path, text).unwrap();
            Self(path)
        }

        fn arg(&self) -> &str {
            self.0.to_str().unwrap()
        }
    }

    impl Drop for File {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.0);
        }
    }

    /// The flags alone, as `Options::try_parse_from` reads them but without the variables: the
    /// environment of whoever runs the tests plays no part (see `the_environment_...` for it).
    fn flags(args: &[&str]) -> Options {
        let matches = Options::command()
            .mut_args(|a| a.env(None))
            .try_get_matches_from(std::iter::once("takhin-monitor").chain(args.iter().copied()))
            .unwrap();
        Options::from_arg_matches(&matches).unwrap()
    }

    /// The flags, then `--config` with `text`, merged.
    fn load(name: &str, args: &[&str], text: &str) -> anyhow::Result<Options> {
        let file = File::new(name, text);
        let mut args = args.to_vec();
        args.extend(["--config", file.arg()]);
        flags(&args).merge_file()
    }

    fn addr(s: &str) -> Option<SocketAddr> {
        Some(s.parse().unwrap())
    }

    fn relay(s: &str) -> Option<RelayConfig> {
        Some(s.parse().unwrap())
    }

    const FILE: &str = r#"
        listen = "127.0.0.1:1"
        cpu_list = [1, 3]
        source = "demo"
        token = "file-t"
        admin_token = "file-a"
        allowed_origins = ["https://file"]
        metrics_interval = 9
        max_connections = 7
        pong_wait = 30.5
        data_dir = "/var/file"
        relay = "redis://file:6379"
    "#;

    #[test]
    fn a_flag_wins_over_the_file_for_every_kind_of_value() {
        let o = load(
            "flags",
            &[
                "--listen=127.0.0.1:2",
                "--cpu-list=0,2",
                "--source=relay",
                "--allowed-origin=https://a",
                "--allowed-origin=https://b",
                "--metrics-interval=0.25",
                "--relay=redis://flag:6380/f",
            ],
            FILE,
        )
        .unwrap();
        assert_eq!(o.listen, addr("127.0.0.1:2"));
        assert_eq!(o.cpu_list, Some(vec![0, 2]));
        assert_eq!(o.source, Some(SourceKind::Relay));
        let origins = ["https://a", "https://b"].map(String::from).to_vec();
        assert_eq!(o.allowed_origins, Some(origins), "replaced, not added to");
        assert_eq!(o.metrics_interval, Some(0.25));
        assert_eq!(o.relay().unwrap(), relay("redis://flag:6380/f"));
        // What no flag gave still comes from the file.
        assert_eq!(o.token.as_deref(), Some("file-t"));
        assert_eq!(o.pong_wait, Some(30.5));
    }

    #[test]
    fn a_value_only_in_the_file_is_used() {
        let o = load("file", &["--cores=2"], FILE).unwrap();
        assert_eq!(o.cores, Some(2));
        assert_eq!(o.listen, addr("127.0.0.1:1"));
        assert_eq!(o.cpu_list, Some(vec![1, 3]));
        assert_eq!(o.source, Some(SourceKind::Demo));
        assert_eq!(o.token.as_deref(), Some("file-t"));
        assert_eq!(o.admin_token.as_deref(), Some("file-a"));
        assert_eq!(o.allowed_origins, Some(vec!["https://file".to_owned()]));
        assert_eq!(
            o.metrics_interval,
            Some(9.0),
            "an integer is a number of seconds"
        );
        assert_eq!(o.max_connections, Some(7));
        assert_eq!(o.pong_wait, Some(30.5));
        assert_eq!(o.data_dir.as_deref(), Some(Path::new("/var/file")));
        assert_eq!(
            o.relay().unwrap(),
            relay("redis://file:6379/takhin"),
            "the default prefix"
        );
        assert_eq!((o.client_queue, o.send_buffer), (None, None));
        let file = format!("takhin-options-{}-file.toml", std::process::id());
        assert!(o.config.unwrap().ends_with(file), "--config itself is kept");
    }

    #[test]
    fn compression_comes_from_every_layer_and_is_checked() {
        let file = "compression = \"off\"\ncompression_level = 3\ncompression_threshold = 200\n";
        let c = load("deflate-file", &[], file)
            .unwrap()
            .build_config()
            .unwrap();
        assert_eq!(
            (c.compression, c.compression_level, c.compression_threshold),
            (false, 3, 200)
        );
        let c = load(
            "deflate-flag",
            &["--compression=on", "--compression-level=9"],
            file,
        )
        .unwrap()
        .build_config()
        .unwrap();
        assert_eq!(
            (c.compression, c.compression_level, c.compression_threshold),
            (true, 9, 200)
        );
        let c = flags(&[]).build_config().unwrap();
        assert_eq!(
            (c.compression, c.compression_level, c.compression_threshold),
            (true, 6, 1024),
            "on by default"
        );
        for (value, on) in [("true", true), ("false", false), ("\"off\"", false)] {
            let o = load("deflate-bool", &[], &format!("compression = {value}\n")).unwrap();
            assert_eq!(o.build_config().unwrap().compression, on, "{value}");
        }
        let err = load("deflate-bad", &[], "compression = \"maybe\"\n").unwrap_err();
        assert!(format!("{err:#}").contains("expected on, off"), "{err:#}");
        let err = flags(&["--compression-level=0"])
            .build_config()
            .unwrap_err()
            .to_string();
        assert!(err.contains("compression_level must be 1 to 9"), "{err}");
    }

    #[test]
    fn tls_comes_from_every_layer_and_needs_both_files() {
        let tls = |cert: &str, key: &str| Some(TlsFiles::new(cert, key));
        let file = "tls_cert = \"/etc/takhin/cert.pem\"\ntls_key = \"/etc/takhin/key.pem\"\n";
        let c = load("tls-file", &[], file).unwrap().build_config().unwrap();
        assert_eq!(c.tls, tls("/etc/takhin/cert.pem", "/etc/takhin/key.pem"));
        let c = load("tls-flag", &["--tls-cert=/flag/cert.pem"], file)
            .unwrap()
            .build_config()
            .unwrap();
        assert_eq!(
            c.tls,
            tls("/flag/cert.pem", "/etc/takhin/key.pem"),
            "the flag over the file, the key still from the file"
        );
        let c = load(
            "tls-halves",
            &["--tls-key=key.pem"],
            "tls_cert = \"certs/cert.pem\"\n",
        )
        .unwrap()
        .build_config()
        .unwrap();
        assert_eq!(
            c.tls,
            tls("certs/cert.pem", "key.pem"),
            "one from each layer; relative paths as given (from the working directory, like \
             --kafka-tls-ca and --data-dir), not from the file's directory"
        );
        let c = flags(&["--tls-cert", "/c.pem", "--tls-key", "/k.pem"])
            .build_config()
            .unwrap();
        assert_eq!(c.tls, tls("/c.pem", "/k.pem"));
        assert_eq!(flags(&[]).build_config().unwrap().tls, None, "plain text");

        // One without the other stops the start, whichever layer gave it.
        let says_cert = "--tls-cert needs --tls-key";
        let says_key = "--tls-key needs --tls-cert";
        for (o, says) in [
            (flags(&["--tls-cert=/c.pem"]), says_cert),
            (flags(&["--tls-key=/k.pem"]), says_key),
            (
                load("tls-cert", &[], "tls_cert = \"/c.pem\"").unwrap(),
                says_cert,
            ),
            (
                load("tls-key", &[], "tls_key = \"/k.pem\"").unwrap(),
                says_key,
            ),
        ] {
            let err = o.build_config().unwrap_err().to_string();
            assert!(err.contains(says), "{o:?}: {err}");
            assert!(err.contains("or neither for plain text"), "{err}");
        }
        let err = load("tls-number", &[], "tls_key = 1").unwrap_err();
        assert!(format!("{err:#}").contains("tls_key"), "{err:#}");
    }

    #[test]
    fn without_a_file_the_flags_are_all() {
        let o = flags(&["--listen=127.0.0.1:2", "--relay=redis://r:1/p"])
            .merge_file()
            .unwrap();
        assert_eq!(o.listen, addr("127.0.0.1:2"));
        assert_eq!(o.relay().unwrap(), relay("redis://r:1/p"));
        assert_eq!((o.config, o.token, o.source), (None, None, None));
    }

    #[test]
    fn an_unknown_key_is_refused_naming_the_file() {
        for (name, text, key) in [
            (
                "typo",
                "listen = \"127.0.0.1:1\"\nlisten_port = 9\n",
                "listen_port",
            ),
            ("dash", "max-connections = 9\n", "max-connections"),
            (
                "flag",
                "allowed_origin = [\"https://a\"]\n",
                "allowed_origin",
            ),
            ("config", "config = \"other.toml\"\n", "config"),
        ] {
            let file = File::new(name, text);
            let err = flags(&["--config", file.arg()]).merge_file().unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains(file.arg()), "{err}");
            assert!(err.contains(&format!("unknown field `{key}`")), "{err}");
        }
    }

    #[test]
    fn a_wrong_type_is_refused_naming_the_file() {
        for (name, text) in [
            ("cores", "cores = \"four\""),
            ("cores-negative", "cores = -1"),
            ("listen-number", "listen = 8080"),
            ("listen-string", "listen = \"localhost\""),
            ("cpu-list-string", "cpu_list = \"0,2\""),
            ("source", "source = \"nats\""),
            ("interval", "metrics_interval = \"fast\""),
            ("origins", "allowed_origins = \"https://a\""),
            ("relay-number", "relay = 6379"),
        ] {
            let file = File::new(name, text);
            let err = flags(&["--config", file.arg()]).merge_file().unwrap_err();
            assert!(format!("{err:#}").contains(file.arg()), "{text}: {err:#}");
        }
        // A malformed relay URL is refused when read, never quoted with its password (clap
        // and the TOML parser would quote the value whole).
        for given in [
            "http://r:6379",
            "redis://u:s3cret@host",
            "redis://:s3cret@h:1/?x=1",
        ] {
            let o = load("relay", &[], &format!("relay = \"{given}\"")).unwrap();
            let err = o.relay().unwrap_err().to_string();
            assert!(err.starts_with("--relay "), "{err}");
            assert!(!err.contains("s3cret"), "{err}");
            assert!(!format!("{o:?}").contains("s3cret"), "{o:?}");
        }
        assert_eq!(redact_url("redis://u:p@w@h:1/x@y"), "redis://***@h:1/x@y");
        assert_eq!(redact_url("redis://h:1"), "redis://h:1");
        // Even where the command line gives the option: the whole file is checked.
        let err = load("shadowed", &["--cores=2"], "cores = \"four\"").unwrap_err();
        assert!(format!("{err:#}").contains("cores"), "{err:#}");
    }

    #[test]
    fn a_missing_file_is_an_error_naming_it() {
        let path = std::env::temp_dir().join("takhin-options-no-such-file.toml");
        let err = flags(&["--config", path.to_str().unwrap()])
            .merge_file()
            .unwrap_err();
        assert!(
            format!("{err:#}").contains(path.to_str().unwrap()),
            "{err:#}"
        );
    }

    #[test]
    fn the_kafka_options_make_the_sources_configuration() {
        let o = Options::try_parse_from([
            "takhin-monitor",
            "--source=kafka",
            "--kafka-brokers=a:9092,b:9093",
            "--kafka-client-id=ops",
            "--kafka-request-timeout=2.5",
            "--kafka-canary-topic=takhin-canary",
        ])
        .unwrap();
        let expected = KafkaConfig::new(vec!["a:9092".into(), "b:9093".into()])
            .client_id("ops")
            .request_timeout(Duration::from_millis(2500))
            .canary_topic("takhin-canary");
        assert_eq!(o.kafka().unwrap(), expected);

        let o = Options::try_parse_from(["takhin-monitor", "--kafka-brokers=a:9092"]).unwrap();
        assert_eq!(
            o.kafka().unwrap().canary_topic,
            None,
            "no canary by default"
        );

        let o = Options::try_parse_from(["takhin-monitor", "--source=kafka"]).unwrap();
        let err = o.kafka().unwrap_err().to_string();
        assert!(err.contains("--kafka-brokers"), "{err}");

        for bad in ["", "a b", "..", "x/y"] {
            let o = Options::try_parse_from([
                "takhin-monitor",
                "--kafka-brokers=a:9092",
                &format!("--kafka-canary-topic={bad}"),
            ])
            .unwrap();
            let err = o.kafka().unwrap_err().to_string();
            assert!(err.contains("not a Kafka topic name"), "{bad:?}: {err}");
        }
    }

    #[test]
    fn the_kafka_security_options_make_tls_and_sasl() {
        let o = flags(&[
            "--kafka-brokers=a:9093",
            "--kafka-security-protocol=SASL_SSL",
            "--kafka-sasl-mechanism=SCRAM-SHA-512",
            "--kafka-username=monitor",
            "--kafka-password=s3cret",
            "--kafka-tls-ca=/etc/kafka/ca.pem",
            "--kafka-tls-server-name=kafka.internal",
        ]);
        let expected = KafkaConfig::new(vec!["a:9093".into()])
            .tls_ca_file("/etc/kafka/ca.pem")
            .tls_server_name("kafka.internal")
            .sasl_scram_sha_512("monitor", "s3cret");
        assert_eq!(o.kafka().unwrap(), expected, "Kafka's upper case is taken");
        // The password is in no Debug output.
        let shown = format!("{o:?} {:?}", o.kafka().unwrap());
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("monitor"), "{shown}");

        let file = "kafka_brokers = [\"a:9092\"]\nkafka_security_protocol = \"sasl_plaintext\"\n\
                    kafka_sasl_mechanism = \"plain\"\nkafka_username = \"u\"\n\
                    kafka_password = \"file-secret\"\n";
        let o = load(
            "kafka-sasl",
            &["--kafka-sasl-mechanism=scram-sha-256"],
            file,
        )
        .unwrap();
        let expected =
            KafkaConfig::new(vec!["a:9092".into()]).sasl_scram_sha_256("u", "file-secret");
        assert_eq!(o.kafka().unwrap(), expected, "the flag over the file");
        let o = load(
            "kafka-ssl",
            &[],
            "kafka_brokers = [\"a:9093\"]\nkafka_security_protocol = \"SSL\"\n",
        )
        .unwrap();
        assert_eq!(
            o.kafka().unwrap(),
            KafkaConfig::new(vec!["a:9093".into()]).tls(),
            "TLS with the system's CA certificates"
        );
        assert_eq!(
            flags(&["--kafka-brokers=a:9092"]).kafka().unwrap(),
            KafkaConfig::new(vec!["a:9092".into()]),
            "plain text by default"
        );

        for (args, says) in [
            (
                &["--kafka-security-protocol=sasl_ssl", "--kafka-username=u"][..],
                "needs --kafka-sasl-mechanism",
            ),
            (
                &["--kafka-password=p"][..],
                "are for SASL: with --kafka-security-protocol sasl_ssl or sasl_plaintext (it is plaintext)",
            ),
            (
                &["--kafka-security-protocol=ssl", "--kafka-sasl-mechanism=plain"][..],
                "(it is ssl)",
            ),
            (
                &["--kafka-security-protocol=sasl_plaintext", "--kafka-tls-ca=/ca.pem"][..],
                "are for TLS",
            ),
        ] {
            let mut all = vec!["--kafka-brokers=a:9092"];
            all.extend_from_slice(args);
            let err = flags(&all).kafka().unwrap_err().to_string();
            assert!(err.contains(says), "{args:?}: {err}");
        }
        let file = File::new("kafka-bad", "kafka_security_protocol = \"tls\"\n");
        let err = flags(&["--config", file.arg()]).merge_file().unwrap_err();
        assert!(
            format!("{err:#}").contains("kafka_security_protocol"),
            "{err:#}"
        );
    }

    #[test]
    fn every_option_has_its_takhin_variable() {
        for arg in Options::command().get_arguments() {
            let id = arg.get_id().as_str();
            if id == "help" || id == "version" {
                continue;
            }
            let env = format!("TAKHIN_{}", id.to_uppercase());
            assert_eq!(arg.get_env(), Some(env.as_ref()), "--{id}");
        }
    }

    /// Marks the child process of `the_environment_is_between_the_flags_and_the_file`.
    const CHILD: &str = "OPTIONS_TEST_ENV_CHILD";

    /// Sets variables in a child process (this test binary again, running only this test)
    /// rather than in this one, whose other tests run in parallel.
    #[test]
    fn the_environment_is_between_the_flags_and_the_file() {
        if std::env::var_os(CHILD).is_none() {
            let file = File::new("env", FILE);
            let me = module_path!().split_once("::").unwrap().1;
            let me = format!("{me}::the_environment_is_between_the_flags_and_the_file");
            let mut child = Command::new(std::env::current_exe().unwrap());
            child.args([me.as_str(), "--exact", "--nocapture", "--test-threads=1"]);
            for (k, _) in std::env::vars_os() {
                if k.to_string_lossy().starts_with("TAKHIN_") {
                    child.env_remove(k);
                }
            }
            let out = child
                .env(CHILD, "1")
                .env("TAKHIN_CONFIG", file.arg())
                .env("TAKHIN_LISTEN", "127.0.0.1:3")
                .env("TAKHIN_CPU_LIST", "0,2")
                .env("TAKHIN_SOURCE", "none")
                .env("TAKHIN_TOKEN", "env-t")
                .env("TAKHIN_ALLOWED_ORIGINS", "https://a,https://b")
                .env("TAKHIN_METRICS_INTERVAL", "0.5")
                .env("TAKHIN_RELAY", "redis://env:6379/e")
                .env("TAKHIN_COMPRESSION", "off")
                .env("TAKHIN_KAFKA_PASSWORD", "env-secret")
                .env("TAKHIN_TLS_CERT", "/env/cert.pem")
                .env("TAKHIN_TLS_KEY", "/env/key.pem")
                .output()
                .unwrap();
            let stdout = String::from_utf8_lossy(&out.stdout);
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(out.status.success(), "{stdout}\n{stderr}");
            assert!(stdout.contains("1 passed"), "{stdout}\n{stderr}");
            return;
        }
        let cli = Options::try_parse_from([
            "takhin-monitor",
            "--listen=127.0.0.1:2",
            "--source=relay",
            "--metrics-interval=0.25",
            "--tls-key=/flag/key.pem",
        ])
        .unwrap();
        let o = cli.merge_file().unwrap();
        // Flag over environment over file.
        assert_eq!(o.listen, addr("127.0.0.1:2"));
        assert_eq!(o.source, Some(SourceKind::Relay));
        assert_eq!(o.metrics_interval, Some(0.25));
        // Environment over file.
        let config = o.config.clone().unwrap();
        assert!(
            config.to_str().unwrap().ends_with("-env.toml"),
            "{config:?}"
        );
        assert_eq!(o.cpu_list, Some(vec![0, 2]));
        assert_eq!(o.token.as_deref(), Some("env-t"));
        assert_eq!(o.compression, Some(Switch::Off));
        assert_eq!(
            o.tls().unwrap(),
            Some(TlsFiles::new("/env/cert.pem", "/flag/key.pem")),
            "the certificate from the environment, the key's flag over its variable"
        );
        assert_eq!(
            o.kafka_password,
            Some(Password::from("env-secret".to_owned()))
        );
        let origins = ["https://a", "https://b"].map(String::from).to_vec();
        assert_eq!(o.allowed_origins, Some(origins));
        assert_eq!(o.relay().unwrap(), relay("redis://env:6379/e"));
        // The file.
        assert_eq!(o.admin_token.as_deref(), Some("file-a"));
        assert_eq!(o.pong_wait, Some(30.5));
    }
}
