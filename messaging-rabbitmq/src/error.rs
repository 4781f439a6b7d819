//! lapin errors mapped onto the core's error kinds, keeping the source.

use messaging_core::{
    AckError, AckErrorKind, InspectError, InspectErrorKind, PublishError, PublishErrorKind,
    ReceiveError, ReceiveErrorKind, SubscribeError, SubscribeErrorKind,
};

/// Whether the connection or channel failing is the cause (a retry, after recovery, can help)
/// rather than the broker refusing the operation.
fn is_transport(e: &lapin::Error) -> bool {
    // CONNECTION_FORCED (an operator or a node shutting down), RESOURCE_ERROR, INTERNAL_ERROR:
    // the connection is gone or the broker is struggling; automatic recovery reconnects.
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        return matches!(amqp.get_id(), 320 | 506 | 541);
    }
    e.is_io_error()
        || e.is_runtime_shutdown_error()
        || matches!(
            e.kind(),
            lapin::ErrorKind::InvalidChannelState(..)
                | lapin::ErrorKind::InvalidConnectionState(_)
                | lapin::ErrorKind::MissingHeartbeatError
                | lapin::ErrorKind::InvalidChannel(_)
        )
}

pub(crate) fn publish(e: lapin::Error) -> PublishError {
    let kind = if is_transport(&e) {
        PublishErrorKind::Unavailable
    } else {
        PublishErrorKind::Rejected
    };
    PublishError::new(kind)
        .with_detail(e.to_string())
        .with_source(e)
}

pub(crate) fn subscribe(e: lapin::Error) -> SubscribeError {
    let kind = if is_transport(&e) {
        SubscribeErrorKind::Unavailable
    } else {
        SubscribeErrorKind::Rejected
    };
    SubscribeError::new(kind)
        .with_detail(e.to_string())
        .with_source(e)
}

/// Receiving while the connection recovers is transient: the consumer resumes afterwards.
pub(crate) fn receive(e: lapin::Error) -> ReceiveError {
    let kind = if is_transport(&e) {
        ReceiveErrorKind::Unavailable
    } else {
        ReceiveErrorKind::Closed
    };
    ReceiveError::new(kind)
        .with_detail(e.to_string())
        .with_source(e)
}

/// A settle on a dead channel can never succeed: the broker has requeued the message.
pub(crate) fn ack(e: lapin::Error) -> AckError {
    let kind = if is_transport(&e) {
        AckErrorKind::Closed
    } else {
        AckErrorKind::Unavailable
    };
    AckError::new(kind)
        .with_detail(e.to_string())
        .with_source(e)
}

pub(crate) fn inspect(e: lapin::Error) -> InspectError {
    let kind = if is_transport(&e) {
        InspectErrorKind::Unavailable
    } else {
        InspectErrorKind::Rejected
    };
    InspectError::new(kind)
        .with_detail(e.to_string())
        .with_source(e)
}
