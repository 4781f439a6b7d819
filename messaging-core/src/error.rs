//! Typed errors.
//!
//! Every fallible operation has its own error type, `Error<K>` with a small `Copy` kind enum `K`
//! that says what went wrong and, through [`ErrorKind::is_transient`], whether retrying the same
//! operation can help. The underlying client error is kept as the [`std::error::Error::source`].

use std::borrow::Cow;
use std::error::Error as StdError;
use std::fmt;

/// Boxed source error.
pub type BoxError = Box<dyn StdError + Send + Sync + 'static>;

/// A kind of failure for one operation.
pub trait ErrorKind: Copy + fmt::Debug + fmt::Display + PartialEq + Send + Sync + 'static {
    /// Whether retrying the same operation later can succeed.
    fn is_transient(&self) -> bool;
}

/// An error of kind `K` with an optional detail message and source.
pub struct Error<K> {
    kind: K,
    detail: Option<Cow<'static, str>>,
    source: Option<BoxError>,
}

impl<K: ErrorKind> Error<K> {
    /// An error of `kind` without detail or source.
    pub fn new(kind: K) -> Self {
        Self {
            kind,
            detail: None,
            source: None,
        }
    }

    /// Adds a human-readable detail (lowercase, no trailing period).
    #[must_use]
    pub fn with_detail(mut self, detail: impl Into<Cow<'static, str>>) -> Self {
        self.detail = Some(detail.into());
        self
    }

    /// Keeps `source` as the cause of this error.
    #[must_use]
    pub fn with_source(mut self, source: impl Into<BoxError>) -> Self {
        self.source = Some(source.into());
        self
    }

    /// What went wrong.
    pub fn kind(&self) -> K {
        self.kind
    }

    /// The detail message, if any.
    pub fn detail(&self) -> Option<&str> {
        self.detail.as_deref()
    }

    /// Whether retrying the same operation later can succeed.
    pub fn is_transient(&self) -> bool {
        self.kind.is_transient()
    }

    /// The same failure for another operation that it failed too — one batch call's error for
    /// each message the call carried: the kind and the detail, or the source's message where
    /// there is no detail (a source cannot be copied). Said as the original is said, once.
    #[must_use]
    pub fn repeated(&self) -> Self {
        let detail = match (&self.detail, &self.source) {
            (Some(d), _) => Some(d.clone()),
            (None, Some(source)) => Some(Cow::Owned(source.to_string())),
            (None, None) => None,
        };
        Self {
            kind: self.kind,
            detail,
            source: None,
        }
    }
}

impl<K: ErrorKind> From<K> for Error<K> {
    fn from(kind: K) -> Self {
        Self::new(kind)
    }
}

impl<K: ErrorKind> fmt::Debug for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut d = f.debug_struct("Error");
        d.field("kind", &self.kind);
        if let Some(detail) = &self.detail {
            d.field("detail", detail);
        }
        if let Some(source) = &self.source {
            d.field("source", source);
        }
        d.finish()
    }
}

impl<K: ErrorKind> fmt::Display for Error<K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind)?;
        if let Some(detail) = &self.detail {
            write!(f, ": {detail}")?;
        }
        Ok(())
    }
}

impl<K: ErrorKind> StdError for Error<K> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        self.source
            .as_deref()
            .map(|e| e as &(dyn StdError + 'static))
    }
}

macro_rules! error_kind {
    (
        $(#[$meta:meta])*
        $name:ident {
            $( $(#[$vmeta:meta])* $variant:ident => ($text:literal, $transient:literal), )+
        }
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
        #[non_exhaustive]
        pub enum $name {
            $( $(#[$vmeta])* $variant, )+
        }

        impl ::std::fmt::Display for $name {
            fn fmt(&self, f: &mut ::std::fmt::Formatter<'_>) -> ::std::fmt::Result {
                f.write_str(match self { $( Self::$variant => $text, )+ })
            }
        }

        impl $crate::error::ErrorKind for $name {
            fn is_transient(&self) -> bool {
                match self { $( Self::$variant => $transient, )+ }
            }
        }
    };
}

pub(crate) use error_kind as error_kind_pub;

error_kind! {
    /// Why a publish failed.
    PublishErrorKind {
        /// The publisher was closed; nothing more can be published through it.
        Closed => ("publisher is closed", false),
        /// The encoded message is larger than the broker accepts.
        PayloadTooLarge => ("payload exceeds the broker's maximum message size", false),
        /// The event cannot be represented on this transport (invalid extension name, too many attributes...).
        Encode => ("event cannot be encoded for this transport", false),
        /// The broker could not route the message anywhere (e.g. a mandatory AMQP publish).
        Unroutable => ("message is unroutable", false),
        /// The credentials in use may not publish to this topic (no write permission); retrying
        /// will not help until an operator grants it.
        Forbidden => ("not authorised to publish to this topic", false),
        /// The broker refused the message for a reason retrying will not fix (invalid topic).
        Rejected => ("broker rejected the message", false),
        /// The broker or the connection is unavailable for now.
        Unavailable => ("broker is unavailable", true),
        /// The broker did not confirm in time; the message may or may not have been accepted.
        Timeout => ("publish timed out", true),
        /// The broker asked the client to slow down.
        Throttled => ("publish was throttled", true),
    }
}

error_kind! {
    /// Why a subscribe failed.
    SubscribeErrorKind {
        /// The subscriber was closed.
        Closed => ("subscriber is closed", false),
        /// The broker cannot provide what the subscription options ask for.
        Unsupported => ("subscription options are not supported by this broker", false),
        /// The options are invalid (empty group name, zero prefetch...).
        InvalidOptions => ("invalid subscription options", false),
        /// The topic or queue does not exist and could not be created.
        NotFound => ("topic or queue not found", false),
        /// The credentials in use may not consume from this topic or group, or declare what the
        /// subscription needs; retrying will not help until an operator grants it.
        Forbidden => ("not authorised to subscribe to this topic", false),
        /// The broker refused (conflicting topology).
        Rejected => ("broker rejected the subscription", false),
        /// The broker or the connection is unavailable for now.
        Unavailable => ("broker is unavailable", true),
        /// The broker did not answer in time.
        Timeout => ("subscribe timed out", true),
    }
}

error_kind! {
    /// Why receiving the next delivery failed.
    ReceiveErrorKind {
        /// The subscription is closed, by the application or by the broker.
        Closed => ("subscription is closed", false),
        /// The broker or the connection is unavailable for now.
        Unavailable => ("broker is unavailable", true),
        /// The broker did not answer in time.
        Timeout => ("receive timed out", true),
    }
}

error_kind! {
    /// Why settling a delivery (ack, nack, extending its deadline) failed.
    AckErrorKind {
        /// The subscription or channel the delivery came from is gone. The broker will redeliver
        /// the message; settling this delivery is no longer possible.
        Closed => ("delivery's subscription is closed", false),
        /// The ack deadline passed and the broker has handed the message out again.
        Expired => ("delivery's ack deadline expired", false),
        /// The operation is not supported by this broker (e.g. extending a deadline on a broker
        /// without deadlines).
        Unsupported => ("operation is not supported by this broker", false),
        /// The broker or the connection is unavailable for now; the same delivery can be settled again.
        Unavailable => ("broker is unavailable", true),
        /// The broker did not answer in time; the same delivery can be settled again.
        Timeout => ("settle timed out", true),
    }
}

/// Why a broker call failed, in broker-neutral terms: an adapter classifies its client's
/// error into a `Cause` once, and the kinds of each operation's error follow from it here,
/// the same for every adapter.
///
/// | cause | publish | subscribe | receive | inspect |
/// |---|---|---|---|---|
/// | `Unavailable` | `Unavailable` | `Unavailable` | `Unavailable` | `Unavailable` |
/// | `Timeout` | `Timeout` | `Timeout` | `Timeout` | `Unavailable` |
/// | `Throttled` | `Throttled` | `Unavailable` | `Unavailable` | `Unavailable` |
/// | `Closed` | `Closed` | `Closed` | `Closed` | `Unavailable` |
/// | `TooLarge` | `PayloadTooLarge` | `Rejected` | `Closed` | `Rejected` |
/// | `NotFound` | `Rejected` | `NotFound` | `Closed` | `Rejected` |
/// | `Forbidden` | `Forbidden` | `Forbidden` | `Closed` | `Rejected` |
/// | `Rejected` | `Rejected` | `Rejected` | `Closed` | `Rejected` |
///
/// A receive that fails for a reason other than the transport ends the subscription
/// (`Closed`); settling is left to each adapter, whose brokers differ most there.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Cause {
    /// The broker or the network is unavailable for now (connection failures, 5xx).
    Unavailable,
    /// No answer in time; the call may have taken effect.
    Timeout,
    /// The broker asked the client to slow down, or a local queue is full.
    Throttled,
    /// The client or the channel is shutting down.
    Closed,
    /// The message is larger than the broker accepts.
    TooLarge,
    /// The topic or queue does not exist.
    NotFound,
    /// The credentials in use lack a permission (authorisation, not authentication).
    Forbidden,
    /// The broker refused for a reason retrying will not fix (invalid name, conflicting
    /// settings).
    Rejected,
}

impl Cause {
    /// Whether retrying later can succeed.
    pub fn is_transient(self) -> bool {
        matches!(self, Self::Unavailable | Self::Timeout | Self::Throttled)
    }

    /// The kind of a failed publish.
    pub fn publish_kind(self) -> PublishErrorKind {
        match self {
            Self::Unavailable => PublishErrorKind::Unavailable,
            Self::Timeout => PublishErrorKind::Timeout,
            Self::Throttled => PublishErrorKind::Throttled,
            Self::Closed => PublishErrorKind::Closed,
            Self::TooLarge => PublishErrorKind::PayloadTooLarge,
            Self::Forbidden => PublishErrorKind::Forbidden,
            Self::NotFound | Self::Rejected => PublishErrorKind::Rejected,
        }
    }

    /// The kind of a failed subscribe.
    pub fn subscribe_kind(self) -> SubscribeErrorKind {
        match self {
            Self::Unavailable | Self::Throttled => SubscribeErrorKind::Unavailable,
            Self::Timeout => SubscribeErrorKind::Timeout,
            Self::Closed => SubscribeErrorKind::Closed,
            Self::NotFound => SubscribeErrorKind::NotFound,
            Self::Forbidden => SubscribeErrorKind::Forbidden,
            Self::TooLarge | Self::Rejected => SubscribeErrorKind::Rejected,
        }
    }

    /// The kind of a failed receive: anything but the transport ends the subscription.
    pub fn receive_kind(self) -> ReceiveErrorKind {
        match self {
            Self::Unavailable | Self::Throttled => ReceiveErrorKind::Unavailable,
            Self::Timeout => ReceiveErrorKind::Timeout,
            Self::Closed | Self::TooLarge | Self::NotFound | Self::Forbidden | Self::Rejected => {
                ReceiveErrorKind::Closed
            }
        }
    }

    /// The kind of a failed inspection.
    pub fn inspect_kind(self) -> crate::inspect::InspectErrorKind {
        use crate::inspect::InspectErrorKind;
        match self {
            Self::Unavailable | Self::Timeout | Self::Throttled | Self::Closed => {
                InspectErrorKind::Unavailable
            }
            Self::TooLarge | Self::NotFound | Self::Forbidden | Self::Rejected => {
                InspectErrorKind::Rejected
            }
        }
    }
}

/// Failure to publish one event.
pub type PublishError = Error<PublishErrorKind>;
/// Failure to subscribe.
pub type SubscribeError = Error<SubscribeErrorKind>;
/// Failure to receive.
pub type ReceiveError = Error<ReceiveErrorKind>;
/// Failure to settle a delivery.
pub type AckError = Error<AckErrorKind>;

/// A failed ack or nack: the error, and the delivery handed back so it can be settled again
/// or dropped (which leaves the message to the broker's redelivery).
pub struct SettleError<D> {
    /// Why settling failed.
    pub error: AckError,
    /// The delivery, still unsettled.
    pub delivery: D,
}

impl<D> SettleError<D> {
    /// Whether settling the same delivery again can succeed.
    pub fn is_transient(&self) -> bool {
        self.error.is_transient()
    }

    /// Splits into the error and the delivery.
    pub fn into_parts(self) -> (AckError, D) {
        (self.error, self.delivery)
    }
}

impl<D> fmt::Debug for SettleError<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("SettleError")
            .field("error", &self.error)
            .finish_non_exhaustive()
    }
}

impl<D> fmt::Display for SettleError<D> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.error, f)
    }
}

impl<D> StdError for SettleError<D> {
    fn source(&self) -> Option<&(dyn StdError + 'static)> {
        Some(&self.error)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cause_is_transient_for_every_operation_or_for_none() {
        let all = [
            Cause::Unavailable,
            Cause::Timeout,
            Cause::Throttled,
            Cause::Closed,
            Cause::TooLarge,
            Cause::NotFound,
            Cause::Rejected,
        ];
        for cause in all {
            let t = cause.is_transient();
            assert_eq!(cause.publish_kind().is_transient(), t, "{cause:?}");
            assert_eq!(cause.subscribe_kind().is_transient(), t, "{cause:?}");
            assert_eq!(cause.receive_kind().is_transient(), t, "{cause:?}");
        }
        assert_eq!(
            Cause::TooLarge.publish_kind(),
            PublishErrorKind::PayloadTooLarge
        );
        assert_eq!(
            Cause::NotFound.subscribe_kind(),
            SubscribeErrorKind::NotFound
        );
    }

    #[test]
    fn kinds_classify_transience() {
        assert!(PublishError::new(PublishErrorKind::Unavailable).is_transient());
        assert!(!PublishError::new(PublishErrorKind::PayloadTooLarge).is_transient());
        assert!(AckError::new(AckErrorKind::Timeout).is_transient());
        assert!(!AckError::new(AckErrorKind::Expired).is_transient());
    }

    #[test]
    fn display_and_source() {
        let io = std::io::Error::other("connection reset");
        let e = PublishError::new(PublishErrorKind::Unavailable)
            .with_detail("broker 127.0.0.1:9092")
            .with_source(io);
        assert_eq!(
            e.to_string(),
            "broker is unavailable: broker 127.0.0.1:9092"
        );
        assert_eq!(e.source().unwrap().to_string(), "connection reset");
        assert_eq!(e.kind(), PublishErrorKind::Unavailable);
    }
}
