//! librdkafka errors mapped onto the core's error kinds, keeping the source.

use messaging_core::{
    InspectError, InspectErrorKind, PublishError, PublishErrorKind, SubscribeError,
    SubscribeErrorKind,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaErrorCode as Code;

/// What kind of failure a librdkafka error code is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// The broker refused for a reason a retry does not fix (authorization, invalid topic).
    Refused,
    /// The message is too large.
    TooLarge,
    /// Not acknowledged in time; it may or may not have been written.
    Timeout,
    /// The broker asked to slow down, or the local queue is full.
    Throttled,
    /// The client is shutting down.
    Closed,
    /// The broker or the network is unavailable for now.
    Unavailable,
}

pub(crate) fn classify(code: RDKafkaErrorCode) -> Class {
    match code {
        Code::MessageSizeTooLarge | Code::InvalidMessageSize => Class::TooLarge,
        Code::MessageTimedOut
        | Code::RequestTimedOut
        | Code::OperationTimedOut
        | Code::TimedOutQueue => Class::Timeout,
        Code::QueueFull | Code::ThrottlingQuotaExceeded => Class::Throttled,
        Code::PurgeQueue | Code::PurgeInflight | Code::BrokerDestroy | Code::Fatal => Class::Closed,
        Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::SaslAuthenticationFailed
        | Code::Authentication
        | Code::InvalidTopic
        | Code::PolicyViolation
        | Code::InvalidArgument
        | Code::UnknownTopic => Class::Refused,
        _ => Class::Unavailable,
    }
}

fn class_of(e: &KafkaError) -> Class {
    match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Nul(_) => {
            Class::Refused
        }
        KafkaError::Canceled => Class::Closed,
        other => other
            .rdkafka_error_code()
            .map_or(Class::Unavailable, classify),
    }
}

pub(crate) fn publish(e: KafkaError) -> PublishError {
    let kind = match class_of(&e) {
        Class::Refused => PublishErrorKind::Rejected,
        Class::TooLarge => PublishErrorKind::PayloadTooLarge,
        Class::Timeout => PublishErrorKind::Timeout,
        Class::Throttled => PublishErrorKind::Throttled,
        Class::Closed => PublishErrorKind::Closed,
        Class::Unavailable => PublishErrorKind::Unavailable,
    };
    PublishError::new(kind)
        .with_detail(e.to_string())
        .with_source(e)
}

pub(crate) fn subscribe(e: KafkaError) -> SubscribeError {
    let kind = match class_of(&e) {
        Class::Refused | Class::TooLarge => SubscribeErrorKind::Rejected,
        Class::Timeout => SubscribeErrorKind::Timeout,
        Class::Closed => SubscribeErrorKind::Closed,
        Class::Throttled | Class::Unavailable => SubscribeErrorKind::Unavailable,
    };
    SubscribeError::new(kind)
        .with_detail(e.to_string())
        .with_source(e)
}

pub(crate) fn inspect(e: KafkaError) -> InspectError {
    let kind = match class_of(&e) {
        Class::Refused => InspectErrorKind::Rejected,
        _ => InspectErrorKind::Unavailable,
    };
    InspectError::new(kind)
        .with_detail(e.to_string())
        .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging_core::ErrorKind as _;

    #[test]
    fn retryable_failures_are_transient_and_refusals_are_not() {
        let full = publish(KafkaError::MessageProduction(Code::QueueFull));
        assert_eq!(full.kind(), PublishErrorKind::Throttled);
        assert!(full.is_transient());
        let down = publish(KafkaError::MessageProduction(Code::AllBrokersDown));
        assert!(down.kind().is_transient());
        let large = publish(KafkaError::MessageProduction(Code::MessageSizeTooLarge));
        assert_eq!(large.kind(), PublishErrorKind::PayloadTooLarge);
        assert!(!large.is_transient());
        let denied = publish(KafkaError::MessageProduction(
            Code::TopicAuthorizationFailed,
        ));
        assert_eq!(denied.kind(), PublishErrorKind::Rejected);
        let timeout = publish(KafkaError::MessageProduction(Code::MessageTimedOut));
        assert_eq!(timeout.kind(), PublishErrorKind::Timeout);
        assert!(timeout.is_transient());
    }
}
