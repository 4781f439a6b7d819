//! AWS SDK errors mapped onto the core's error kinds, keeping the source.

use aws_sdk_sqs::error::{DisplayErrorContext, ProvideErrorMetadata, SdkError};
use messaging_core::{
    AckError, AckErrorKind, Cause, InspectError, PublishError, ReceiveError, SubscribeError,
};

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

/// The credentials are valid but lack the IAM permission (or a queue or topic policy denies).
const FORBIDDEN: &[&str] = &[
    "AccessDenied",
    "AccessDeniedException",
    "AuthorizationError",
    "AWS.SimpleQueueService.AccessDenied",
    "KMS.AccessDeniedException",
];

/// The keys were refused: unknown, wrongly signed, expired.
const UNAUTHENTICATED: &[&str] = &[
    "InvalidClientTokenId",
    "SignatureDoesNotMatch",
    "UnrecognizedClientException",
    "IncompleteSignature",
    "MissingAuthenticationToken",
    "InvalidAccessKeyId",
    "ExpiredToken",
    "ExpiredTokenException",
    "AuthFailure",
];

/// A failed connect check (`ListQueues`), by what went wrong: the TLS handshake, the keys,
/// their permissions, or the endpoint (transient when it did not answer).
///
/// moto answers a refused signature or permission on the JSON protocol with an XML body the
/// SDK cannot read, leaving only the status: a 403 without a code is taken as refused keys
/// (a real endpoint names the code).
pub(crate) fn connect<E>(shown: String, e: SdkError<E>) -> messaging_core::connect::ConnectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    use messaging_core::connect::ConnectError;
    let detail = detail(&e);
    if messaging_core::connect::caused_by::<rustls::Error>(&e) {
        return ConnectError::tls("sqs", shown, detail);
    }
    let status = e.raw_response().map(|r| r.status().as_u16());
    match e.code() {
        Some(code) if UNAUTHENTICATED.contains(&code) => {
            return ConnectError::authentication("sqs", shown, detail);
        }
        Some(code) if FORBIDDEN.contains(&code) => {
            return ConnectError::forbidden("sqs", shown, detail);
        }
        None if status == Some(403) => return ConnectError::authentication("sqs", shown, detail),
        _ => {}
    }
    let transient = matches!(e, SdkError::TimeoutError(_) | SdkError::DispatchFailure(_));
    ConnectError::unreachable("sqs", shown, transient, detail)
}

/// Classifies a service error code (from a call or a batch entry).
pub(crate) fn class_of_code(code: &str, sender_fault: bool) -> Cause {
    if THROTTLING.contains(&code) {
        Cause::Throttled
    } else if NOT_FOUND.contains(&code) {
        Cause::NotFound
    } else if FORBIDDEN.contains(&code) {
        Cause::Forbidden
    } else if sender_fault {
        Cause::Rejected
    } else {
        Cause::Unavailable
    }
}

pub(crate) fn classify<E>(e: &SdkError<E>) -> Cause
where
    E: ProvideErrorMetadata,
{
    match e {
        SdkError::TimeoutError(_) => Cause::Timeout,
        SdkError::DispatchFailure(d) if d.is_timeout() => Cause::Timeout,
        SdkError::DispatchFailure(d) if d.is_user() => Cause::Rejected,
        SdkError::DispatchFailure(_) | SdkError::ResponseError(_) => Cause::Unavailable,
        SdkError::ConstructionFailure(_) => Cause::Rejected,
        SdkError::ServiceError(_) => {
            let status = e.raw_response().map_or(400, |r| r.status().as_u16());
            match e.code() {
                Some(code) => class_of_code(code, status < 500),
                None if status >= 500 => Cause::Unavailable,
                None if status == 404 => Cause::NotFound,
                // No code to read (moto's XML error bodies on the JSON protocol): 403 is
                // "not allowed", whichever key or permission is missing.
                None if status == 403 => Cause::Forbidden,
                None => Cause::Rejected,
            }
        }
        _ => Cause::Unavailable,
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
    let kind = classify(&e).publish_kind();
    PublishError::new(kind)
        .with_detail(detail(&e))
        .with_source(e)
}

pub(crate) fn subscribe<E>(e: SdkError<E>) -> SubscribeError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = classify(&e).subscribe_kind();
    SubscribeError::new(kind)
        .with_detail(detail(&e))
        .with_source(e)
}

/// A queue that is gone ends the subscription; anything else is worth retrying.
pub(crate) fn receive<E>(e: SdkError<E>) -> ReceiveError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = classify(&e).receive_kind();
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
pub(crate) fn ack_kind(class: Cause, code: &str) -> AckErrorKind {
    if code.contains("ReceiptHandleIsInvalid") || code.contains("MessageNotInflight") {
        return AckErrorKind::Expired;
    }
    match class {
        Cause::Unavailable | Cause::Throttled => AckErrorKind::Unavailable,
        Cause::Timeout => AckErrorKind::Timeout,
        Cause::NotFound | Cause::Closed => AckErrorKind::Closed,
        Cause::Rejected | Cause::Forbidden | Cause::TooLarge => AckErrorKind::Unsupported,
    }
}

pub(crate) fn inspect<E>(e: SdkError<E>) -> InspectError
where
    E: ProvideErrorMetadata + std::error::Error + Send + Sync + 'static,
{
    let kind = classify(&e).inspect_kind();
    InspectError::new(kind)
        .with_detail(detail(&e))
        .with_source(e)
}

/// Whether `e` says the topic or queue does not exist.
pub(crate) fn is_not_found<E>(e: &SdkError<E>) -> bool
where
    E: ProvideErrorMetadata,
{
    classify(e) == Cause::NotFound
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_classify_transience() {
        assert_eq!(class_of_code("Throttling", true), Cause::Throttled);
        assert_eq!(class_of_code("QueueDoesNotExist", true), Cause::NotFound);
        assert_eq!(class_of_code("InvalidParameter", true), Cause::Rejected);
        assert_eq!(class_of_code("InternalError", false), Cause::Unavailable);
        assert_eq!(class_of_code("AccessDenied", true), Cause::Forbidden);
        assert_eq!(class_of_code("AuthorizationError", true), Cause::Forbidden);
        assert!(!ack_kind(Cause::Forbidden, "AccessDenied").is_transient_kind());
        assert_eq!(
            ack_kind(Cause::Rejected, "ReceiptHandleIsInvalid"),
            AckErrorKind::Expired
        );
        assert!(!ack_kind(Cause::Rejected, "InvalidParameterValue").is_transient_kind());
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
