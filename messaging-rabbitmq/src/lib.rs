//! RabbitMQ adapter for `messaging` over lapin. Not implemented yet: see issue 5.
