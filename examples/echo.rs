//! An echo server on the hub's own connection code, for the Autobahn|Testsuite
//! (`tests/autobahn/run.sh`): every text or binary message comes back to its sender unchanged.
//! The handshake, frame reader, writer, UTF-8 checks, limits and close handling are the hub's;
//! only the meaning of a message differs ([`HubConfig::echo`]).
//!
//! Run: `cargo run --release --example echo -- [ADDR] [MAX_MESSAGE_BYTES] [--tls-cert CERT
//! --tls-key KEY]` (defaults: 127.0.0.1:9001 and the hub's own limit, 512 KiB; with the PEM
//! certificate chain and key, the port speaks TLS, as the hub's does with [`HubConfig::tls`]).
//! It prints `echo on ws://ADDR/api/monitoring/ws` (`wss://` with TLS). Stop it with a signal.

use takhin_monitor::defaults::DEFAULT_MAX_MESSAGE_SIZE;
use takhin_monitor::{Cores, Hub, HubConfig, TlsFiles};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut positional = Vec::new();
    let (mut cert, mut key) = (None, None);
    let mut args = std::env::args().skip(1);
    while let Some(arg) = args.next() {
        match arg.as_str() {
            "--tls-cert" => cert = Some(args.next().ok_or("--tls-cert needs a file")?),
            "--tls-key" => key = Some(args.next().ok_or("--tls-key needs a file")?),
            _ if arg.starts_with("--") => return Err(format!("unknown option {arg}").into()),
            _ => positional.push(arg),
        }
    }
    let tls = match (cert, key) {
        (Some(cert), Some(key)) => Some(TlsFiles::new(cert, key)),
        (None, None) => None,
        _ => return Err("--tls-cert and --tls-key go together".into()),
    };
    let mut positional = positional.into_iter();
    let listen = positional.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let max_message = match positional.next() {
        Some(n) => n.parse()?,
        None => DEFAULT_MAX_MESSAGE_SIZE,
    };
    if let Some(extra) = positional.next() {
        return Err(format!("unexpected argument {extra}").into());
    }
    let scheme = if tls.is_some() { "wss" } else { "ws" };
    let config = HubConfig::default()
        .listen(listen.parse()?)
        .cores(Cores::Count(1))
        .max_message_size(max_message)
        // Echoes are replies: let a few whole messages wait unread (the hub's own 256 KiB
        // backlog is sized for pongs and acknowledgements).
        .max_reply_backlog(4 * max_message)
        .tls(tls)
        .echo(true);
    let hub = Hub::start(config)?;
    println!("echo on {scheme}://{}/api/monitoring/ws", hub.local_addr());
    hub.wait()?;
    Ok(())
}
