//! The README's embedding example, compiled by `cargo test` so it stays true.
//! Run: `cargo run --example embed` (needs cores 2 and 3; edit the list on a smaller machine).

use takhin_monitor::{Channel, Cores, Hub, HubConfig};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The hub on cores 2 and 3; the broker keeps the others.
    let config = HubConfig::default()
        .listen("0.0.0.0:8080".parse()?)
        .cores(Cores::List(vec![2, 3]));
    let hub = Hub::start(config)?;

    // Clone + Send + Sync: hand one to every broker thread. Never blocks on the network.
    let broadcaster = hub.broadcaster();
    broadcaster.topic_created("orders", 12)?;
    broadcaster.group_updated("billing", "Stable", 3)?;
    broadcaster.publish(&Channel::topic("orders"), "topic_detail", &[1, 2, 3])?;

    println!("{} clients", hub.active_connections());
    hub.shutdown()?; // close 1001 to every client, drain, stop the executors
    Ok(())
}
