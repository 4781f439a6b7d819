//! AWS SDK errors mapped onto the core's error kinds, keeping the source.

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use messaging_core::{
    AckError, AckErrorKind, InspectError, InspectErrorKind, PublishError, PublishErrorKind,
    ReceiveError, ReceiveErrorKind, SubscribeError, SubscribeErrorKind,
};

/// What a failed call means, whichever service made it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Class {
    /// Connection failures, 5xx: retrying later can help.
    Unavailable,
    /// No answer in time: retrying can help (the call may have taken effect).
    Timeout,
    /// The service asked to slow down.
    Throttled,
    /// The topic or queue does not exist.
    NotFound,
    /// The service refused the request (4xx): retrying the same request will not help.
    Rejected,
}

const THROTTLING: &[&str] = &[
    "Throttling",
    "ThrottlingException",
    "ThrottledException",
    "RequestThrottled",
    "RequestThrottledException",
    "TooManyRequestsException",
    "KMSThrottlingException",
    "OverLimit",
];

const NOT_FOUND: &[&str] = &[
    "NotFound",
    "NotFoundException",
    "QueueDoesNotExist",
    "AWS.SimpleQueueService.NonExistentQueue",
];

/// Classifies a service error code (from a call or a batch entry).
pub(crate) fn class_of_code(code: &str, sender_fault: bool) -> Class {
    if THROTTLING.contains(&code) {
        Class::Throttled
    } else if NOT_FOUND.contains(&code) {
        Class::NotFound
    } else if sender_fault {
        Class::Rejected
    } else {
        Class::Unavailable
    }
}

pub(crate) fn classify<E>(e: &SdkError<E>) -> Class
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::TimeoutError(_) => Class::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Class::Timeout,
        SdkError::DispatchFailure(d) if d.is_user() => Class::Rejected,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Class::Unavailable,
        SdkError::ConstructionFailure(_) => Class::Rejected,
        SdkError::ServiceError(_) => {
            let status = e.raw_response().map_or(400, |r| r.status().as_u16());
            match e.code() {
                Some(code) => class_of_code(code, status < 500),
                None if status >= 500 => Class::Unavailable,
                None if status == 404 => Class::NotFound,
                None => Class::Rejected,
            }
        }
        _ => Class::Unavailable,
    }
}

fn detail<E>(e: &SdkError<E>) -> String
where
    E: std::error::Error + 'static,
{
    DisplayErrorContext(e).to_string()
}

pub(crate) fn publish<E>(e: SdkError<E>) -> PublishError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match classify(&e) {
        Class::Unavailable => PublishErrorKind::Unavailable,
        Class::Timeout => PublishErrorKind::Timeout,
        Class::Throttled => PublishErrorKind::Throttled,
        Class::NotFound | Class::Rejected => PublishErrorKind::Rejected,
    };
    PublishError::new(kind)
        .with_detail(detail(&e))
        .with_source(e)
}

pub(crate) fn subscribe<E>(e: SdkError<E>) -> SubscribeError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match classify(&e) {
        Class::Unavailable | Class::Throttled => SubscribeErrorKind::Unavailable,
        Class::Timeout => SubscribeErrorKind::Timeout,
        Class::NotFound => SubscribeErrorKind::NotFound,
        Class::Rejected => SubscribeErrorKind::Rejected,
    };
    SubscribeError::new(kind)
        .with_detail(detail(&e))
        .with_source(e)
}

/// A queue that is gone ends the subscription; anything else is worth retrying.
pub(crate) fn receive<E>(e: SdkError<E>) -> ReceiveError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match classify(&e) {
        Class::Unavailable | Class::Throttled => ReceiveErrorKind::Unavailable,
        Class::Timeout => ReceiveErrorKind::Timeout,
        Class::NotFound | Class::Rejected => ReceiveErrorKind::Closed,
    };
    ReceiveError::new(kind)
        .with_detail(detail(&e))
        .with_source(e)
}

/// A whole settle call failing: the same deliveries can be settled again unless the request
/// itself was refused.
pub(crate) fn ack<E>(e: SdkError<E>) -> AckError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = ack_kind(classify(&e), e.code().unwrap_or_default());
    AckError::new(kind).with_detail(detail(&e)).with_source(e)
}

/// The kind of a failed settle of one receipt handle.
pub(crate) fn ack_kind(class: Class, code: &str) -> AckErrorKind {
    if code.contains("ReceiptHandleIsInvalid") || code.contains("MessageNotInflight") {
        return AckErrorKind::Expired;
    }
    match class {
        Class::Unavailable | Class::Throttled => AckErrorKind::Unavailable,
        Class::Timeout => AckErrorKind::Timeout,
        Class::NotFound => AckErrorKind::Closed,
        Class::Rejected => AckErrorKind::Unsupported,
    }
}

pub(crate) fn inspect<E>(e: SdkError<E>) -> InspectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = match classify(&e) {
        Class::Unavailable | Class::Throttled | Class::Timeout => InspectErrorKind::Unavailable,
        Class::NotFound | Class::Rejected => InspectErrorKind::Rejected,
    };
    InspectError::new(kind)
        .with_detail(detail(&e))
        .with_source(e)
}

/// Whether `e` says the topic or queue does not exist.
pub(crate) fn is_not_found<E>(e: &SdkError<E>) -> bool
where
    E: ProvideErrorMetadata,
{
    classify(e) == Class::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify_transience() {
        assert_eq!(class_of_code("Throttling", true), Class::Throttled);
        assert_eq!(class_of_code("QueueDoesNotExist", true), Class::NotFound);
        assert_eq!(class_of_code("InvalidParameter", true), Class::Rejected);
        assert_eq!(class_of_code("InternalError", false), Class::Unavailable);
        assert_eq!(
            ack_kind(Class::Rejected, "ReceiptHandleIsInvalid"),
            AckErrorKind::Expired
        );
        assert!(!ack_kind(Class::Rejected, "InvalidParameterValue").is_transient_kind());
    }

    trait Transient {
        fn is_transient_kind(&self) -> bool;
    }
    impl Transient for AckErrorKind {
        fn is_transient_kind(&self) -> bool {
            messaging_core::error::ErrorKind::is_transient(self)
        }
    }
}
