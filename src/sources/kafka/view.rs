//! Successive polls of the cluster turned into snapshots, events and lag.
