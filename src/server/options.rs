//! The server's options: flags over `TAKHIN_*` environment variables over the TOML file.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context as _};
use clap::{Parser, ValueEnum};
use serde::Deserialize;

use crate::config::{Cores, HubConfig};
use crate::sources::RelayConfig;

/// What feeds the hub.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A built-in simulated broker: topics, traffic, consumer groups, lag, events.
    Demo,
    /// Nothing built in: only what REST, the publish endpoint or an embedding broker send.
    None,
    /// No source of its own: fans out what the origin instance publishes through --relay.
    Relay,
}

/// Streams a broker's live metrics and events to WebSocket dashboards.
///
/// Every option can also come from a TAKHIN_* environment variable or the --config file;
/// a flag wins over the environment, which wins over the file.
#[derive(Debug, Default, Parser)]
#[command(version, about)]
pub struct Options {
    /// TOML file with any of the options below (names with underscores).
    #[arg(long, env = "TAKHIN_CONFIG")]
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
    /// source publishes every broadcast there; with --source relay it only fans out.
    #[arg(long, env = "TAKHIN_RELAY")]
    pub(crate) relay: Option<RelayConfig>,
}

/// The same options, read from the --config file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileOpt {
    listen: Option<SocketAddr>,
    cores: Option<usize>,
    cpu_list: Option<Vec<usize>>,
    source: Option<SourceKind>,
    token: Option<String>,
    admin_token: Option<String>,
    allowed_origins: Option<Vec<String>>,
    metrics_interval: Option<f64>,
    max_connections: Option<usize>,
    client_queue: Option<usize>,
    send_buffer: Option<usize>,
    ping_interval: Option<f64>,
    pong_wait: Option<f64>,
    shutdown_timeout: Option<f64>,
    data_dir: Option<PathBuf>,
    relay: Option<String>,
}

impl Options {
    /// Fills what neither a flag nor the environment gave from the file.
    pub fn merge_file(mut self) -> anyhow::Result<Self> {
        let Some(path) = &self.config else {
            return Ok(self);
        };
        let text =
            std::fs::read_to_string(path).with_context(|| format!("reading {}", path.display()))?;
        let f: FileOpt =
            toml::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        macro_rules! fill {
            ($($field:ident),*) => { $( self.$field = self.$field.take().or(f.$field); )* };
        }
        fill!(
            listen,
            cores,
            cpu_list,
            source,
            token,
            admin_token,
            allowed_origins,
            metrics_interval,
            max_connections,
            client_queue,
            send_buffer,
            ping_interval,
            pong_wait,
            shutdown_timeout,
            data_dir
        );
        if self.relay.is_none() {
            if let Some(url) = f.relay {
                self.relay = Some(url.parse().with_context(|| format!("relay {url}"))?);
            }
        }
        Ok(self)
    }

    pub(crate) fn build_config(&self) -> anyhow::Result<HubConfig> {
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
        if let Some(s) = self.ping_interval {
            c = c.ping_interval(secs(s, "ping interval")?);
        }
        if let Some(s) = self.pong_wait {
            c = c.pong_wait(secs(s, "pong wait")?);
        }
        if let Some(s) = self.shutdown_timeout {
            c = c.shutdown_timeout(secs(s, "shutdown timeout")?);
        }
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
