//! lapin errors mapped onto the core's error kinds, keeping the source.

use messaging_core::connect::ConnectError;
use messaging_core::{
    AckError, AckErrorKind, Cause, InspectError, PublishError, ReceiveError, SubscribeError,
};

/// A failed connection attempt, by what went wrong: the TLS handshake, the credentials
/// (`ACCESS_REFUSED`, 403, in answer to the login), the virtual host (`NOT_ALLOWED`, 530: no
/// permission, or no such virtual host), or the transport (transient when it is I/O).
pub(crate) fn connect(url: String, e: lapin::Error) -> ConnectError {
    #[cfg(feature = "tls")]
    if messaging_core::connect::caused_by::<rustls::Error>(&e) {
        return ConnectError::tls("rabbitmq", url, e);
    }
    if let lapin::ErrorKind::ProtocolError(amqp) = e.kind() {
        match amqp.get_id() {
            403 => return ConnectError::authentication("rabbitmq", url, e),
            530 => return ConnectError::forbidden("rabbitmq", url, e),
            _ => {}
        }
    }
    let transient = e.is_io_error();
    ConnectError::unreachable("rabbitmq", url, transient, e)
}

/// Whether the connection or channel failing is the cause (a retry, after recovery, can help)
/// rather than the broker refusing the operation.
fn is_transport(e: &lapin::Error) -> bool {
    // CONNECTION_FORCED (an operator or a node shutting down), RESOURCE_ERROR, INTERNAL_ERROR:
    // the connection is gone or the broker is struggling; the adapter reconnects.
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

/// A transport failure is [`Unavailable`](Cause::Unavailable); anything else is the broker
/// refusing the operation, [`Rejected`](Cause::Rejected) unless it is a missing permission.
///
/// `ACCESS_REFUSED` (403) is [`Forbidden`](Cause::Forbidden): the user lacks the configure,
/// write or read permission on the exchange or queue.
fn cause_of(e: &lapin::Error) -> Cause {
    if is_transport(e) {
        Cause::Unavailable
    } else if matches!(e.kind(), lapin::ErrorKind::ProtocolError(amqp) if amqp.get_id() == 403) {
        Cause::Forbidden
    } else {
        Cause::Rejected
    }
}

pub(crate) fn publish(e: lapin::Error) -> PublishError {
    PublishError::new(cause_of(&e).publish_kind())
        .with_detail(e.to_string())
        .with_source(e)
}

pub(crate) fn subscribe(e: lapin::Error) -> SubscribeError {
    SubscribeError::new(cause_of(&e).subscribe_kind())
        .with_detail(e.to_string())
        .with_source(e)
}

/// Receiving while the connection recovers is transient: the consumer resumes afterwards.
pub(crate) fn receive(e: lapin::Error) -> ReceiveError {
    ReceiveError::new(cause_of(&e).receive_kind())
        .with_detail(e.to_string())
        .with_source(e)
}

/// A failed `basic.ack` / `basic.nack`. lapin marks a delivery's acker used before it sends
/// the frame, so whatever the cause — the channel gone, the delivery tag unknown to the broker
/// — settling the same delivery again can never succeed: [`Closed`](AckErrorKind::Closed),
/// never transient (a transient kind would make callers retry, and a retried delayed nack
/// would publish another delay copy). The broker requeues the message when the channel closes.
pub(crate) fn ack(e: lapin::Error) -> AckError {
    AckError::new(AckErrorKind::Closed)
        .with_detail(e.to_string())
        .with_source(e)
}

/// A delayed redelivery that failed before anything was published (the delay queue could not
/// be declared, the re-publish could not be sent): the delivery is untouched, so trying again
/// can succeed.
pub(crate) fn delay_unpublished(e: lapin::Error) -> AckError {
    AckError::new(AckErrorKind::Unavailable)
        .with_detail(e.to_string())
        .with_source(e)
}

pub(crate) fn inspect(e: lapin::Error) -> InspectError {
    InspectError::new(cause_of(&e).inspect_kind())
        .with_detail(e.to_string())
        .with_source(e)
}

#[cfg(test)]
mod tests {
    use lapin::protocol::{AMQPError, AMQPErrorKind, AMQPSoftError};
    use lapin::{ChannelState, ErrorKind};

    use super::*;

    #[test]
    fn ack_errors_are_closed_and_not_transient() {
        let unknown_tag = lapin::Error::from(ErrorKind::ProtocolError(AMQPError::new(
            AMQPErrorKind::Soft(AMQPSoftError::PRECONDITIONFAILED),
            "PRECONDITION_FAILED - unknown delivery tag 1".into(),
        )));
        let dead_channel =
            lapin::Error::from(ErrorKind::InvalidChannelState(ChannelState::Closed, "ack"));
        for e in [unknown_tag, dead_channel] {
            let mapped = ack(e);
            assert_eq!(mapped.kind(), AckErrorKind::Closed, "{mapped}");
            assert!(!mapped.is_transient(), "{mapped}");
        }
    }

    #[test]
    fn unpublished_delays_stay_transient() {
        let e = lapin::Error::from(ErrorKind::InvalidChannelState(ChannelState::Closed, "x"));
        assert!(delay_unpublished(e).is_transient());
    }
}
