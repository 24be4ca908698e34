//! The demo cluster's templates: the topics it may create and the consumer groups it may run.

/// What a demo topic looks like: name, partitions, messages/s and bytes per message.
pub(super) struct TopicTemplate {
    pub(super) name: &'static str,
    pub(super) partitions: (u32, u32),
    pub(super) rate: (f64, f64),
    pub(super) size: (f64, f64),
}

const fn template(
    name: &'static str,
    partitions: (u32, u32),
    rate: (f64, f64),
    size: (f64, f64),
) -> TopicTemplate {
    TopicTemplate {
        name,
        partitions,
        rate,
        size,
    }
}

/// The demo's permanent topics: the first [`CORE_TOPICS`] always, then 0 to 3 of the rest.
pub(super) const TOPICS: [TopicTemplate; 10] = [
    template("orders", (6, 12), (400.0, 1500.0), (600.0, 1200.0)),
    template("payments", (3, 6), (200.0, 800.0), (400.0, 900.0)),
    template("clickstream", (8, 12), (1500.0, 4000.0), (200.0, 500.0)),
    template("inventory", (3, 8), (200.0, 900.0), (300.0, 800.0)),
    template("audit-log", (3, 6), (300.0, 1200.0), (800.0, 2048.0)),
    template("user-events", (6, 12), (600.0, 2000.0), (300.0, 700.0)),
    template("shipments", (3, 6), (150.0, 500.0), (500.0, 1500.0)),
    template("page-views", (6, 12), (1000.0, 3000.0), (200.0, 400.0)),
    template("notifications", (3, 8), (200.0, 900.0), (250.0, 600.0)),
    template("sessions", (4, 10), (300.0, 1200.0), (400.0, 1000.0)),
];
/// How many of the first [`TOPICS`] every demo cluster has.
pub(super) const CORE_TOPICS: usize = 5;

/// The demo's groups, each with the topics it would rather consume.
pub(super) const GROUPS: [(&str, &[&str]); 6] = [
    ("billing", &["orders", "payments"]),
    ("analytics", &["clickstream", "page-views", "user-events"]),
    ("search-indexer", &["inventory", "orders"]),
    ("fraud-detector", &["payments", "audit-log", "sessions"]),
    (
        "shipping-service",
        &["orders", "shipments", "notifications"],
    ),
    ("audit-archiver", &["audit-log"]),
];
