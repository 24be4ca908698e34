//! loadgen: the benchmark harness for WebSocket fan-out servers, ours and its peers.
//!
//! # Layout
//! - [`opts`]: the command line and the targets it names.
//! - [`client`]: the WebSocket client side, sans-IO (upgrade, frame parsing, masking).
//! - [`deflate`]: permessage-deflate's receiving side, sans-IO (the offer, the answer's check,
//!   inflating).
//! - [`payload`]: the stamped message and the scan that reads it back without a JSON parse.
//! - `worker`: one mio event loop per thread over its share of the connections.
//! - `fleet`: the threads of this process plus child loadgen processes, as one.
//! - `publisher`: blocking publishing connections on a fixed schedule.
//! - [`stats`]: windows of counts and histograms, and the report.
//! - [`tls`]: `wss://`: the shared rustls configuration and the per-connection TLS state's I/O.
//! - `run`: the scenarios (fanout, metrics, idle, churn, ramp, resume) and `merge`.
//!
//! Every subscriber thread reads with one receive buffer, parses frames in place and reads the
//! clock once per `read`, so a loadgen thread costs far less per delivery than a server: the
//! server, not loadgen, must be the side at 100% CPU for a figure to count (the report gives
//! both CPU times).

pub mod client;
pub mod deflate;
mod fleet;
pub mod opts;
pub mod payload;
mod publisher;
mod run;
pub mod stats;
mod sys;
pub mod tls;
mod worker;

pub use sys::{clock_ns, mono_ns};

pub use crate::opts::{Cli, Command, Opts};
pub use crate::run::run;
pub use crate::stats::{Percentiles, Report};
