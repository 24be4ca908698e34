//! Speaks the Kafka protocol to the cluster: connections, version negotiation, routing and the requests of one poll.
