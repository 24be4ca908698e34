//! An echo server on the hub's own connection code, for the Autobahn|Testsuite
//! (`tests/autobahn/run.sh`): every text or binary message comes back to its sender unchanged.
//! The handshake, frame reader, writer, UTF-8 checks, limits and close handling are the hub's;
//! only the meaning of a message differs ([`HubConfig::echo`]).
//!
//! Run: `cargo run --release --example echo -- [ADDR] [MAX_MESSAGE_BYTES]`
//! (defaults: 127.0.0.1:9001 and the hub's own limit, 512 KiB). Stop it with a signal.

use takhin_monitor::defaults::DEFAULT_MAX_MESSAGE_SIZE;
use takhin_monitor::{Cores, Hub, HubConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let listen = args.next().unwrap_or_else(|| "127.0.0.1:9001".into());
    let max_message = match args.next() {
        Some(n) => n.parse()?,
        None => DEFAULT_MAX_MESSAGE_SIZE,
    };
    let config = HubConfig::default()
        .listen(listen.parse()?)
        .cores(Cores::Count(1))
        .max_message_size(max_message)
        // Echoes are replies: let a few whole messages wait unread (the hub's own 256 KiB
        // backlog is sized for pongs and acknowledgements).
        .max_reply_backlog(4 * max_message)
        .echo(true);
    let hub = Hub::start(config)?;
    println!("echo on ws://{}/api/monitoring/ws", hub.local_addr());
    hub.wait()?;
    Ok(())
}
