//! librdkafka errors mapped onto the core's error kinds, keeping the source.

use messaging_core::{Cause, InspectError, PublishError, SubscribeError};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::types::RDKafkaErrorCode as Code;

/// What kind of failure a librdkafka error code is.
pub(crate) fn classify(code: RDKafkaErrorCode) -> Cause {
    match code {
        Code::MessageSizeTooLarge | Code::InvalidMessageSize => Cause::TooLarge,
        Code::MessageTimedOut
        | Code::RequestTimedOut
        | Code::OperationTimedOut
        | Code::TimedOutQueue => Cause::Timeout,
        Code::QueueFull | Code::ThrottlingQuotaExceeded => Cause::Throttled,
        Code::PurgeQueue | Code::PurgeInflight | Code::BrokerDestroy | Code::Fatal => Cause::Closed,
        Code::TopicAuthorizationFailed
        | Code::GroupAuthorizationFailed
        | Code::ClusterAuthorizationFailed
        | Code::TransactionalIdAuthorizationFailed
        | Code::DelegationTokenAuthorizationFailed => Cause::Forbidden,
        Code::SaslAuthenticationFailed
        | Code::Authentication
        | Code::InvalidTopic
        | Code::PolicyViolation
        | Code::InvalidArgument
        | Code::UnknownTopic => Cause::Rejected,
        _ => Cause::Unavailable,
    }
}

fn cause_of(e: &KafkaError) -> Cause {
    match e {
        KafkaError::ClientConfig(..) | KafkaError::ClientCreation(_) | KafkaError::Nul(_) => {
            Cause::Rejected
        }
        KafkaError::Canceled => Cause::Closed,
        other => other
            .rdkafka_error_code()
            .map_or(Cause::Unavailable, classify),
    }
}

pub(crate) fn publish(e: KafkaError) -> PublishError {
    PublishError::new(cause_of(&e).publish_kind())
        .with_detail(e.to_string())
        .with_source(e)
}

pub(crate) fn subscribe(e: KafkaError) -> SubscribeError {
    SubscribeError::new(cause_of(&e).subscribe_kind())
        .with_detail(e.to_string())
        .with_source(e)
}

pub(crate) fn inspect(e: KafkaError) -> InspectError {
    InspectError::new(cause_of(&e).inspect_kind())
        .with_detail(e.to_string())
        .with_source(e)
}

#[cfg(test)]
mod tests {
    use super::*;
    use messaging_core::ErrorKind as _;
    use messaging_core::PublishErrorKind;

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
        assert_eq!(denied.kind(), PublishErrorKind::Forbidden);
        assert!(!denied.is_transient());
        assert_eq!(classify(Code::GroupAuthorizationFailed), Cause::Forbidden);
        assert_eq!(classify(Code::SaslAuthenticationFailed), Cause::Rejected);
        let timeout = publish(KafkaError::MessageProduction(Code::MessageTimedOut));
        assert_eq!(timeout.kind(), PublishErrorKind::Timeout);
        assert!(timeout.is_transient());
    }
}
