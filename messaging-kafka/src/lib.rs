//! Kafka adapter for `messaging` over rdkafka. Not implemented yet: see issue 4.
