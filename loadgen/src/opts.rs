//! The command line, and the targets it names: where subscribers connect and where the
//! publisher sends.

use std::net::{IpAddr, SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};

use crate::payload::Wrap;
use crate::tls::{TlsClient, TlsOptions};

/// Benchmark harness for WebSocket fan-out servers (takhin-monitor and its peers).
#[derive(Debug, Parser)]
#[command(name = "loadgen", version)]
pub struct Cli {
    /// What to measure.
    #[command(subcommand)]
    pub command: Command,
}

/// The scenarios.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// N subscribers; a publisher sends S-byte messages at R/s: delivery latency, rate, loss.
    Fanout(Opts),
    /// N passive subscribers of our server's `metrics` channel: frame sizes, tick jitter, latency.
    Metrics(Opts),
    /// Hold N idle connections for the duration: the server's memory per connection.
    Idle(Opts),
    /// Connect and disconnect at --rate per second: handshake latency, failures by cause.
    Churn(Opts),
    /// N subscribers drop, miss --missed messages, resume at once: time to `recovered`, replays.
    ///
    /// Our server only. Each reconnects with `?since=<last seq>&epoch=`; the report gives the
    /// time from reconnect to `recovered`, the verdicts, what was replayed, duplicates, and the
    /// server's CPU during the storm.
    Resume(Opts),
    /// Merge the `--json` reports of several loadgen processes into one report.
    Merge {
        /// Files holding a report each (the last JSON line of `loadgen ... --json`).
        files: Vec<PathBuf>,
        /// Print the merged report as JSON.
        #[arg(long)]
        json: bool,
    },
}

/// Options shared by every scenario.
#[derive(Debug, Clone, Args)]
pub struct Opts {
    /// Our server's address; the subscribe and publish URLs default to its endpoints.
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub server: String,
    /// WebSocket URL subscribers connect to (a peer's, or ours on another path).
    #[arg(long)]
    pub subscribe_url: Option<String>,
    /// Where the publisher sends: `http://…` (POST, body = the message) or `ws://…` (a text
    /// frame the server broadcasts to all).
    #[arg(long)]
    pub publish_url: Option<String>,
    /// Wrap each message in our publish API's `{"type","data"}` (hub), or send it as is (raw).
    /// Default: hub for our publish path, raw otherwise.
    #[arg(long, value_enum)]
    pub publish_format: Option<WrapArg>,
    /// Viewer token, sent by subscribers as `Authorization: Bearer`.
    #[arg(long, env = "TAKHIN_TOKEN")]
    pub token: Option<String>,
    /// Admin token, sent by the publisher as `Authorization: Bearer`.
    #[arg(long, env = "TAKHIN_ADMIN_TOKEN")]
    pub admin_token: Option<String>,
    /// Subscriber connections (in all processes together).
    #[arg(long, default_value_t = 100)]
    pub subscribers: usize,
    /// Messages per second (fanout), connections per second (churn); 0 = as fast as the server
    /// takes them.
    #[arg(long, default_value_t = 100.0)]
    pub rate: f64,
    /// Message size in bytes (the JSON object loadgen publishes; at least 56).
    #[arg(long, default_value_t = 256)]
    pub size: usize,
    /// How long to measure (publishing, holding, churning), e.g. 10s, 500ms, 2m. Resume: how
    /// long the reconnections may take to be answered (after --handshake-timeout).
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub duration: Duration,
    /// Event-loop threads in this process (default: one per usable CPU).
    #[arg(long)]
    pub threads: Option<usize>,
    /// The server's PID, for its CPU time and resident memory from /proc.
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// Largest fraction of expected deliveries that may be lost before the run fails.
    #[arg(long, default_value_t = 0.0)]
    pub max_loss: f64,
    /// Print the report as one JSON object, the last line of output.
    #[arg(long)]
    pub json: bool,
    /// Publishing connections (HTTP keep-alive), each sending its share of the rate.
    #[arg(long, default_value_t = 1)]
    pub publishers: usize,
    /// Messages per publish request: over 1, each request is one JSON array of that many
    /// messages, each stamped and counted on its own (our publish API only). --rate stays
    /// messages per second: requests per second are rate / batch.
    #[arg(long, default_value_t = 1)]
    pub batch: usize,
    /// Publish requests in flight on each publishing connection: written without waiting for
    /// the previous answer, the answers read in order, each checked (http:// only).
    #[arg(long, default_value_t = 1)]
    pub pipeline: usize,
    /// New subscriber connections per second while connecting (all processes together).
    #[arg(long, default_value_t = 5000.0)]
    pub connect_rate: f64,
    /// Raise the rate step by step until p99 or loss breaks; report the highest rate that held.
    #[arg(long)]
    pub ramp: bool,
    /// Ramp: the rate's factor from one step to the next.
    #[arg(long, default_value_t = 1.5)]
    pub ramp_factor: f64,
    /// Ramp: how long each step publishes.
    #[arg(long, default_value = "3s", value_parser = parse_duration)]
    pub step: Duration,
    /// Ramp: stop at this rate even if it holds (0 = no cap).
    #[arg(long, default_value_t = 0.0)]
    pub ramp_max: f64,
    /// Ramp: the p99 delivery latency a step must stay under, e.g. 50ms.
    #[arg(long, default_value = "50ms", value_parser = parse_duration)]
    pub max_p99: Duration,
    /// fanout: publish nothing; the subscribers count what another loadgen publishes (its
    /// stamped messages) for --duration. For one stream read on several servers at once.
    #[arg(long)]
    pub listen_only: bool,
    /// Subscribers (of --subscribers) that read slowly, with a small receive buffer.
    #[arg(long, default_value_t = 0)]
    pub slow_subscribers: usize,
    /// Bytes per second a slow subscriber reads.
    #[arg(long, default_value_t = 4096)]
    pub slow_read_rate: usize,
    /// Split the subscribers over this many loadgen processes (this one coordinates).
    #[arg(long, default_value_t = 1)]
    pub processes: usize,
    /// Loopback source addresses to spread connections over, e.g. 127.0.0.2-127.0.0.9 or a
    /// comma list (needed past ~28,000 connections to one port). Default: the kernel's choice,
    /// or 127.0.0.1-127.0.0.N when more than 25,000 subscribers target a loopback address.
    #[arg(long)]
    pub source_addrs: Option<String>,
    /// After publishing, wait at most this long for messages still in flight (resume: for the
    /// messages that mark the stream before the drop and after the storm).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub drain: Duration,
    /// A text message each subscriber sends once connected (e.g. a subscribe).
    #[arg(long)]
    pub subscribe_message: Option<String>,
    /// Give up on a connection that is not upgraded within this time.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub handshake_timeout: Duration,
    /// Metrics: the server's tick interval, the reference for jitter.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    pub metrics_interval: Duration,
    /// Resume: messages published while the subscribers are away (all on `events`, which every
    /// subscriber receives, so each should get exactly this many replayed).
    #[arg(long, default_value_t = 1000)]
    pub missed: u64,
    /// Resume: reconnections per second (all processes together); 0 = all at once (at most 256
    /// upgrades in flight per thread).
    #[arg(long, default_value_t = 0.0)]
    pub reconnect_rate: f64,
    /// Largest message accepted from the server (inflated, with --deflate).
    #[arg(long, default_value_t = 16 << 20)]
    pub max_message: usize,
    /// Offer permessage-deflate (RFC 7692) as Chrome does: `Sec-WebSocket-Extensions:
    /// permessage-deflate; client_max_window_bits`. Connections the server accepts it on take
    /// compressed (RSV1) messages; the report counts them and their bytes.
    #[arg(long)]
    pub deflate: bool,
    /// With --deflate: only every Nth connection of each thread inflates (and reads) compressed
    /// messages; on the others a compressed message counts as an "opaque" delivery, unread.
    /// 1 = every connection. Resume runs read every frame: 1 only.
    #[arg(long, default_value_t = 1, requires = "deflate",
          value_parser = clap::value_parser!(u32).range(1..))]
    pub deflate_sample: u32,
    /// wss://: trust the certificates of this PEM file (a CA, or the server's self-signed
    /// certificate) instead of the system's roots.
    #[arg(long, value_name = "FILE")]
    pub tls_ca: Option<PathBuf>,
    /// wss://: accept any server certificate (the handshake's signature is still checked).
    /// For benchmarks only: anyone on the path could be answering.
    #[arg(long, conflicts_with = "tls_ca")]
    pub tls_insecure: bool,
    /// wss://: no TLS session resumption, every handshake is full (by default the connections
    /// share one session cache, so reconnections resume).
    #[arg(long)]
    pub tls_no_resume: bool,
    /// wss://: the name to check the certificate for and send as SNI, instead of the URL's host.
    #[arg(long, value_name = "NAME")]
    pub tls_server_name: Option<String>,
    /// No live progress line.
    #[arg(long)]
    pub quiet: bool,
    /// Internal: run as a child of a coordinating loadgen (index of the child).
    #[arg(long, hide = true)]
    pub child: Option<usize>,
}

/// `--publish-format`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum WrapArg {
    /// `{"type":"loadgen","data":MESSAGE}` for our publish API.
    Hub,
    /// The message as the body.
    Raw,
}

/// Parses `10s`, `500ms`, `2m`, `1h` or a plain number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, unit) = match s.find(|c: char| !c.is_ascii_digit() && c != '.') {
        Some(i) => s.split_at(i),
        None => (s, "s"),
    };
    let n: f64 = num.parse().map_err(|_| format!("not a duration: {s}"))?;
    let secs = match unit {
        "ms" => n / 1e3,
        "us" | "µs" => n / 1e6,
        "s" => n,
        "m" => n * 60.0,
        "h" => n * 3600.0,
        _ => return Err(format!("unknown unit in {s} (use ms, s, m, h)")),
    };
    Ok(Duration::from_secs_f64(secs))
}

/// A WebSocket endpoint.
#[derive(Debug, Clone)]
pub struct WsTarget {
    /// The URL as given.
    pub url: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Path with query.
    pub path: String,
    /// Extra request headers (the token, the extension offer).
    pub headers: Vec<(String, String)>,
    /// The headers offer permessage-deflate.
    pub deflate: bool,
    /// `wss://`: the TLS configuration every connection shares.
    pub tls: Option<TlsClient>,
}

/// Where and how the publisher sends.
#[derive(Debug, Clone)]
pub struct PublishTarget {
    /// The URL as given.
    pub url: String,
    /// Resolved address.
    pub addr: SocketAddr,
    /// `Host` header value.
    pub host: String,
    /// Path with query.
    pub path: String,
    /// HTTP POST or a WebSocket connection.
    pub websocket: bool,
    /// How the body carries the message.
    pub wrap: Wrap,
    /// Extra request headers (the admin token).
    pub headers: Vec<(String, String)>,
}

/// Our server's endpoints.
pub const OUR_WS_PATH: &str = "/api/monitoring/ws";
/// Our server's publish endpoint.
pub const OUR_PUBLISH_PATH: &str = "/api/monitoring/publish";

impl Opts {
    /// The subscribers' URL.
    pub fn subscribe_url(&self) -> String {
        match &self.subscribe_url {
            Some(u) => u.clone(),
            None => format!("ws://{}{OUR_WS_PATH}", self.server),
        }
    }

    /// The subscribers' URL is `wss://`.
    pub fn subscribes_over_tls(&self) -> bool {
        self.subscribe_url()
            .get(..6)
            .is_some_and(|s| s.eq_ignore_ascii_case("wss://"))
    }

    /// The subscribers' endpoint (for `wss://`, its TLS configuration: the CA file is read and
    /// checked here).
    pub fn ws_target(&self) -> Result<WsTarget> {
        let url = self.subscribe_url();
        let (scheme, addr, host, path) = split_url(&url)?;
        let tls = match scheme.as_str() {
            "ws" => {
                if self.tls_ca.is_some()
                    || self.tls_insecure
                    || self.tls_no_resume
                    || self.tls_server_name.is_some()
                {
                    bail!("the --tls-* options are for a wss:// --subscribe-url (got {url})");
                }
                None
            }
            "wss" => {
                let name = match host.rsplit_once(':') {
                    Some((name, port)) if port.parse::<u16>().is_ok() => name,
                    _ => &host,
                };
                let opts = TlsOptions {
                    ca: self.tls_ca.as_deref(),
                    insecure: self.tls_insecure,
                    no_resume: self.tls_no_resume,
                    server_name: self.tls_server_name.as_deref(),
                };
                Some(TlsClient::new(name, &opts)?)
            }
            _ => bail!("--subscribe-url must be ws:// or wss:// (got {url})"),
        };
        let mut headers = bearer(&self.token);
        if self.deflate {
            headers.push((
                "Sec-WebSocket-Extensions".to_owned(),
                crate::deflate::OFFER.to_owned(),
            ));
        }
        Ok(WsTarget {
            url,
            addr,
            host,
            path,
            headers,
            deflate: self.deflate,
            tls,
        })
    }

    /// The publisher's endpoint.
    pub fn publish_target(&self) -> Result<PublishTarget> {
        let url = match &self.publish_url {
            Some(u) => u.clone(),
            None => format!("http://{}{OUR_PUBLISH_PATH}", self.server),
        };
        let (scheme, addr, host, path) = split_url(&url)?;
        let websocket = match scheme.as_str() {
            "http" => false,
            "ws" => true,
            _ => bail!("--publish-url must be http:// or ws:// (got {url})"),
        };
        let wrap = match self.publish_format {
            Some(WrapArg::Hub) => Wrap::Hub,
            Some(WrapArg::Raw) => Wrap::Raw,
            None if !websocket && path.starts_with(OUR_PUBLISH_PATH) => Wrap::Hub,
            None => Wrap::Raw,
        };
        Ok(PublishTarget {
            url,
            addr,
            host,
            path,
            websocket,
            wrap,
            headers: bearer(&self.admin_token),
        })
    }

    /// The URL of our server's Prometheus endpoint (for memory when no --server-pid is given).
    pub fn our_metrics_addr(&self) -> Option<SocketAddr> {
        if self.subscribe_url.is_some() {
            return None;
        }
        self.server.to_socket_addrs().ok()?.next()
    }

    /// Threads to run (at least one, at most one per subscriber).
    pub fn thread_count(&self) -> usize {
        let n = self.threads.unwrap_or_else(crate::sys::usable_cpus).max(1);
        n.min(self.subscribers.max(1))
    }

    /// The loopback source addresses to spread connections over (empty: the kernel picks).
    pub fn source_addrs(&self, target: &WsTarget) -> Result<Vec<IpAddr>> {
        match &self.source_addrs {
            Some(spec) => parse_addrs(spec),
            None if self.subscribers > 25_000
                && target.addr.ip().is_loopback()
                && target.addr.is_ipv4() =>
            {
                let n = self.subscribers.div_ceil(25_000);
                parse_addrs(&format!("127.0.0.1-127.0.0.{n}"))
            }
            None => Ok(Vec::new()),
        }
    }
}

fn bearer(token: &Option<String>) -> Vec<(String, String)> {
    token
        .iter()
        .map(|t| ("Authorization".to_owned(), format!("Bearer {t}")))
        .collect()
}

/// Splits `scheme://host:port/path?query` and resolves the host.
fn split_url(url: &str) -> Result<(String, SocketAddr, String, String)> {
    let (scheme, rest) = url
        .split_once("://")
        .with_context(|| format!("not a URL: {url}"))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => rest.split_at(i),
        None => (rest, "/"),
    };
    let default_port = if scheme == "ws" || scheme == "http" {
        80
    } else {
        443
    };
    let with_port = if authority
        .rsplit_once(':')
        .is_some_and(|(_, p)| p.parse::<u16>().is_ok())
    {
        authority.to_owned()
    } else {
        format!("{authority}:{default_port}")
    };
    let addr = with_port
        .to_socket_addrs()
        .with_context(|| format!("cannot resolve {authority}"))?
        .next()
        .with_context(|| format!("no address for {authority}"))?;
    Ok((
        scheme.to_ascii_lowercase(),
        addr,
        authority.to_owned(),
        path.to_owned(),
    ))
}

/// `127.0.0.2-127.0.0.9`, or a comma list of addresses and ranges.
pub fn parse_addrs(spec: &str) -> Result<Vec<IpAddr>> {
    let mut out = Vec::new();
    for part in spec.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let a: std::net::Ipv4Addr =
                    a.parse().with_context(|| format!("bad address {a}"))?;
                let b: std::net::Ipv4Addr =
                    b.parse().with_context(|| format!("bad address {b}"))?;
                if u32::from(b) < u32::from(a) || u32::from(b) - u32::from(a) > 65_535 {
                    bail!("bad address range {part}");
                }
                out.extend(
                    (u32::from(a)..=u32::from(b))
                        .map(|n| IpAddr::from(std::net::Ipv4Addr::from(n))),
                );
            }
            None => out.push(
                part.parse()
                    .with_context(|| format!("bad address {part}"))?,
            ),
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_and_addresses() {
        assert_eq!(parse_duration("10s"), Ok(Duration::from_secs(10)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert_eq!(parse_duration("3"), Ok(Duration::from_secs(3)));
        assert!(parse_duration("3 weeks").is_err());
        let addrs = parse_addrs("127.0.0.2-127.0.0.4,127.0.0.9").unwrap();
        assert_eq!(addrs.len(), 4);
        assert_eq!(addrs[3], "127.0.0.9".parse::<IpAddr>().unwrap());
    }

    #[test]
    fn targets_default_to_our_server() {
        let cli = Cli::parse_from([
            "loadgen",
            "fanout",
            "--server",
            "127.0.0.1:9000",
            "--admin-token",
            "a",
        ]);
        let Command::Fanout(opts) = cli.command else {
            panic!()
        };
        let ws = opts.ws_target().unwrap();
        assert_eq!((ws.path.as_str(), ws.addr.port()), (OUR_WS_PATH, 9000));
        let publish = opts.publish_target().unwrap();
        assert_eq!((publish.wrap, publish.websocket), (Wrap::Hub, false));
        assert_eq!(publish.headers[0].1, "Bearer a");
        let cli = Cli::parse_from([
            "loadgen",
            "fanout",
            "--subscribe-url",
            "ws://127.0.0.1:18084/api/monitoring/ws",
            "--publish-url",
            "http://127.0.0.1:18084/publish",
        ]);
        let Command::Fanout(opts) = cli.command else {
            panic!()
        };
        assert_eq!(opts.publish_target().unwrap().wrap, Wrap::Raw);
        assert!(opts.our_metrics_addr().is_none());
        let ws = opts.ws_target().unwrap();
        assert!(!ws.deflate && ws.headers.is_empty());
        assert_eq!(opts.deflate_sample, 1);
    }

    #[test]
    fn tls_options_go_with_wss() {
        let parse = |args: &[&str]| {
            let cli = Cli::try_parse_from([&["loadgen", "idle"][..], args].concat())?;
            let Command::Idle(opts) = cli.command else {
                panic!()
            };
            Ok::<_, clap::Error>(opts)
        };
        let wss = ["--subscribe-url", "wss://127.0.0.1:8443/ws"];
        let opts = parse(&[&wss[..], &["--tls-insecure", "--tls-no-resume"]].concat()).unwrap();
        assert!(opts.subscribes_over_tls());
        let ws = opts.ws_target().unwrap();
        let tls = ws.tls.expect("a TLS configuration");
        assert_eq!(tls.name.to_str(), "127.0.0.1");
        assert_eq!(ws.addr.port(), 8443);
        // Over plain ws://, a TLS option is a mistake.
        let opts = parse(&["--tls-insecure"]).unwrap();
        assert!(opts.ws_target().is_err());
        // A CA file and no verification at once make no sense.
        assert!(parse(&[&wss[..], &["--tls-insecure", "--tls-ca", "x.pem"]].concat()).is_err());
        let opts = parse(&[&wss[..], &["--tls-ca", "/nonexistent.pem"]].concat()).unwrap();
        let err = opts.ws_target().unwrap_err().to_string();
        assert!(err.contains("--tls-ca /nonexistent.pem"), "{err}");
    }

    #[test]
    fn deflate_offers_the_extension() {
        let cli = Cli::parse_from(["loadgen", "metrics", "--deflate", "--deflate-sample", "10"]);
        let Command::Metrics(opts) = cli.command else {
            panic!()
        };
        let ws = opts.ws_target().unwrap();
        assert!(ws.deflate);
        assert_eq!(
            ws.headers,
            [(
                "Sec-WebSocket-Extensions".to_owned(),
                "permessage-deflate; client_max_window_bits".to_owned()
            )]
        );
        assert_eq!(opts.deflate_sample, 10);
        assert!(
            Cli::try_parse_from(["loadgen", "metrics", "--deflate", "--deflate-sample", "0"])
                .is_err()
        );
        assert!(Cli::try_parse_from(["loadgen", "metrics", "--deflate-sample", "2"]).is_err());
    }
}
