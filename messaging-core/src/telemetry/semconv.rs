//! The OpenTelemetry semantic conventions this crate emits, pinned to one version.
//!
//! Names follow [the messaging conventions] of [`VERSION`] (status: Development) and the
//! CloudEvents span attributes of the same version. A test outside this module spells every
//! name out, so a change here that drifts from the conventions fails it.
//!
//! [the messaging conventions]: https://github.com/open-telemetry/semantic-conventions/blob/v1.44.0/docs/messaging/messaging-spans.md

/// The semantic-conventions release the names below are taken from.
pub const VERSION: &str = "1.44.0";
/// The schema URL of [`VERSION`], for a tracer's or meter's instrumentation scope.
pub const SCHEMA_URL: &str = "https://opentelemetry.io/schemas/1.44.0";

/// `messaging.system`: `kafka`, `rabbitmq`, `aws_sqs` or `aws.sns`.
pub const MESSAGING_SYSTEM: &str = "messaging.system";
/// `messaging.operation.name`: the system's name for the operation (`send`, `process`, `ack`).
pub const MESSAGING_OPERATION_NAME: &str = "messaging.operation.name";
/// `messaging.operation.type`: `send`, `receive`, `process` or `settle`.
pub const MESSAGING_OPERATION_TYPE: &str = "messaging.operation.type";
/// `messaging.destination.name`: the topic, exchange or queue.
pub const MESSAGING_DESTINATION_NAME: &str = "messaging.destination.name";
/// `messaging.destination.partition.id`: the Kafka partition.
pub const MESSAGING_DESTINATION_PARTITION_ID: &str = "messaging.destination.partition.id";
/// `messaging.consumer.group.name`: the subscription group.
pub const MESSAGING_CONSUMER_GROUP_NAME: &str = "messaging.consumer.group.name";
/// `messaging.message.id`: the broker's message ID where it assigns one, else the event's `id`.
pub const MESSAGING_MESSAGE_ID: &str = "messaging.message.id";
/// `messaging.message.conversation_id`: the event's correlation ID.
pub const MESSAGING_MESSAGE_CONVERSATION_ID: &str = "messaging.message.conversation_id";
/// `messaging.batch.message_count`: set on batch operations only.
pub const MESSAGING_BATCH_MESSAGE_COUNT: &str = "messaging.batch.message_count";
/// `messaging.kafka.offset`.
pub const MESSAGING_KAFKA_OFFSET: &str = "messaging.kafka.offset";
/// `messaging.kafka.message.key`: the ordering key.
pub const MESSAGING_KAFKA_MESSAGE_KEY: &str = "messaging.kafka.message.key";
/// `messaging.rabbitmq.message.delivery_tag`.
pub const MESSAGING_RABBITMQ_DELIVERY_TAG: &str = "messaging.rabbitmq.message.delivery_tag";
/// `error.type`: set if and only if the operation failed.
pub const ERROR_TYPE: &str = "error.type";
/// `server.address`.
pub const SERVER_ADDRESS: &str = "server.address";
/// `server.port`.
pub const SERVER_PORT: &str = "server.port";
/// `cloudevents.event_id`.
pub const CLOUDEVENTS_EVENT_ID: &str = "cloudevents.event_id";
/// `cloudevents.event_source`.
pub const CLOUDEVENTS_EVENT_SOURCE: &str = "cloudevents.event_source";
/// `cloudevents.event_type`.
pub const CLOUDEVENTS_EVENT_TYPE: &str = "cloudevents.event_type";

/// Counter `messaging.client.sent.messages` (`{message}`): messages handed to the broker.
pub const METRIC_SENT_MESSAGES: &str = "messaging.client.sent.messages";
/// Counter `messaging.client.consumed.messages` (`{message}`): deliveries handed to the
/// consumer runtime.
pub const METRIC_CONSUMED_MESSAGES: &str = "messaging.client.consumed.messages";
/// Histogram `messaging.client.operation.duration` (`s`): send, receive and settle calls.
pub const METRIC_OPERATION_DURATION: &str = "messaging.client.operation.duration";
/// Histogram `messaging.process.duration` (`s`): the handler.
pub const METRIC_PROCESS_DURATION: &str = "messaging.process.duration";

/// The conventions' bucket boundaries for both duration histograms, in seconds.
pub const DURATION_BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// `messaging.system` for a broker named as in [`Features::broker`](crate::Features::broker):
/// `sqs` is `aws_sqs`; the in-memory broker, which the conventions do not know, is `memory`.
pub fn system_for(broker: &str) -> &'static str {
    match broker {
        "kafka" => "kafka",
        "rabbitmq" => "rabbitmq",
        "sqs" => "aws_sqs",
        "sns" => "aws.sns",
        "memory" => "memory",
        _ => "_OTHER",
    }
}
