//! The README's embedding example, compiled by `cargo test` so it stays true.
//! Run: `cargo run --example embed` (needs cores 2 and 3; edit the list on a smaller machine).

use std::time::Duration;

use takhin_monitor::{
    Channel, Cores, GroupCoordinator, Hub, HubConfig, Recorder, StandardSource, TopicManager,
    DEFAULT_METRICS_INTERVAL,
};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    // The hub on cores 2 and 3; the broker keeps the others.
    let config = HubConfig::default()
        .listen("0.0.0.0:8080".parse()?)
        .cores(Cores::List(vec![2, 3]));
    let hub = Hub::start(config)?;

    // Clone + Send + Sync: hand one to every broker thread. Never waits on the network.
    let broadcaster = hub.broadcaster();

    // Topics and groups announce their own changes (topic_created, group_updated, ...).
    let topics = TopicManager::new(Recorder::new(), Some(broadcaster.clone()));
    let groups = GroupCoordinator::new(Some(broadcaster.clone()));

    // The hot path: one meter per topic, kept by the broker; ~20 ns a call, no allocation.
    let orders = topics.create("orders", 12)?;
    orders.produce(3, 100, 51_200, Duration::from_micros(850)); // partition, messages, bytes
    orders.fetch(100, 51_200, Duration::from_micros(300));
    groups.update("billing", "Stable", 3);
    groups.commit("billing", "orders", 3, 40);

    // Every 2 s: one MonitoringMetrics snapshot, encoded once, to every `metrics` subscriber,
    // plus topic_detail / group_detail frames for subscribed topic: / group: channels.
    let source = StandardSource::new(topics.clone(), groups.clone(), Some(hub.probe()))
        .data_dir("/var/lib/broker");
    let ticker = hub.start_ticker(source, DEFAULT_METRICS_INTERVAL)?;

    // Anything else, on any channel.
    broadcaster.publish(&Channel::Events, "broker_restarted", &"node-1")?;

    println!("{} clients", hub.active_connections());
    ticker.stop();
    hub.shutdown()?; // close 1001 to every client, drain, stop the executors
    Ok(())
}
