//! Settings of the RabbitMQ adapter.

use std::fmt;
use std::time::Duration;

use messaging_core::ContentMode;

/// Queue type of subscription groups.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum QueueType {
    /// Replicated, with delivery counts, delivery limits and dead-lettering (default).
    #[default]
    Quorum,
    /// Classic queues: no delivery count (attempts after the first are counted from the
    /// `redelivered` flag only, so 2 at most) and no delivery limit.
    Classic,
}

/// How to reach RabbitMQ and how to lay messages out.
#[derive(Clone)]
pub struct RabbitConfig {
    /// AMQP URI, e.g. `amqp://guest:guest@127.0.0.1:5672/%2f` (`amqps://` with feature `tls`).
    pub uri: String,
    /// Queue type of groups (default quorum).
    pub queue_type: QueueType,
    /// CloudEvents content mode (default binary: attributes as `cloudEvents:` application
    /// properties).
    pub content_mode: ContentMode,
    /// Largest message accepted, checked before sending (default 16 MiB; the server's own
    /// `max_message_size` is 128 MiB on 3.x).
    pub max_payload: usize,
    /// Publish as `mandatory`: a message no queue is bound to comes back as
    /// [`Unroutable`](messaging_core::PublishErrorKind::Unroutable) instead of being dropped
    /// (default false: a topic without groups drops, as pub/sub expects).
    pub mandatory: bool,
    /// How long a publish waits for the broker's confirm (default 30 s). In a batch each
    /// message gets this long from the end of sending, and only the unconfirmed ones fail; a
    /// nack with a delay waits this long for its delay copy's confirm, then requeues instead.
    pub confirm_timeout: Duration,
    /// Connection name shown by `rabbitmqctl list_connections` (default `messaging-rabbitmq`).
    pub connection_name: String,
    /// Deletes group queues unused (no consumer, not redeclared) for this long (`x-expires`);
    /// `None` (default) keeps them, as production groups must. For tests and ephemeral groups.
    pub queue_expires: Option<Duration>,
}

impl RabbitConfig {
    /// Defaults for `uri`.
    pub fn new(uri: impl Into<String>) -> Self {
        Self {
            uri: uri.into(),
            queue_type: QueueType::Quorum,
            content_mode: ContentMode::Binary,
            max_payload: 16 * 1024 * 1024,
            mandatory: false,
            confirm_timeout: Duration::from_secs(30),
            connection_name: "messaging-rabbitmq".into(),
            queue_expires: None,
        }
    }
}

/// The URI without its password.
pub(crate) fn redact(uri: &str) -> String {
    match (uri.find("://"), uri.rfind('@')) {
        (Some(scheme), Some(at)) if at > scheme => {
            let userinfo = &uri[scheme + 3..at];
            let user = userinfo.split(':').next().unwrap_or_default();
            format!("{}{user}:***{}", &uri[..scheme + 3], &uri[at..])
        }
        _ => uri.to_owned(),
    }
}

impl fmt::Debug for RabbitConfig {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("RabbitConfig")
            .field("uri", &redact(&self.uri))
            .field("queue_type", &self.queue_type)
            .field("content_mode", &self.content_mode)
            .field("max_payload", &self.max_payload)
            .field("mandatory", &self.mandatory)
            .field("confirm_timeout", &self.confirm_timeout)
            .field("connection_name", &self.connection_name)
            .field("queue_expires", &self.queue_expires)
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn debug_never_shows_the_password() {
        let c = RabbitConfig::new("amqp://guest:s3cret@127.0.0.1:5672/%2f");
        let shown = format!("{c:?}");
        assert!(!shown.contains("s3cret"), "{shown}");
        assert!(shown.contains("guest:***@127.0.0.1"), "{shown}");
    }
}
