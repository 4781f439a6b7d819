//! `consume`: tail a subscription group as CloudEvents JSON lines.

use std::io::Write;
use std::time::Duration;

use messaging::dead_letter::{self, DEAD_LETTER_GROUP};
use messaging::{
    Broker, Delivery, Publisher, ReceiveErrorKind, StartFrom, SubscribeOptions, Subscriber,
    Subscription,
};

use super::{give_back, to_json_line};
use crate::args::{ConsumeArgs, StartAt};
use crate::error::{CliError, failed};

pub(crate) async fn consume(
    broker: &Broker,
    c: &ConsumeArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let start = match c.from {
        StartAt::New => StartFrom::New,
        StartAt::Earliest => StartFrom::Earliest,
    };
    let mut options = SubscribeOptions::new(c.group.clone()).start_from(start);
    if let Some(max) = c.max {
        // Room for `max` events plus skipped messages not yet given back (Kafka keeps a
        // returned message in flight until its delay passes).
        options = options.prefetch(max.max(1) + SKIP_ROOM);
    }
    let mut skipped = 0usize;
    let subscriber = broker.subscriber();
    let mut sub = subscriber
        .subscribe(&c.topic, options.clone())
        .await
        .map_err(|e| CliError::Failed(format!("cannot subscribe to {}: {e}", c.topic)))?;
    let mut printed = 0;
    let mut held = Vec::new();
    // Tailing rides out a broker restart: failed receives are retried and a lost subscription
    // is opened again, until `--timeout` passes without an event.
    let mut idle_since = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let idle_too_long = |since: tokio::time::Instant, printed: usize| {
        let t = c.timeout?;
        (since.elapsed() >= t).then(|| match c.max {
            Some(max) => Err(CliError::Timeout(format!(
                "{printed} of {max} events within {}",
                humantime::format_duration(t)
            ))),
            None => Ok(()),
        })
    };
    let result = loop {
        if c.max.is_some_and(|m| printed >= m) {
            break Ok(());
        }
        let next = match c.timeout {
            Some(t) => match tokio::time::timeout_at(idle_since + t, sub.recv()).await {
                Ok(r) => r,
                Err(_) => {
                    break match c.max {
                        Some(max) => Err(CliError::Timeout(format!(
                            "{printed} of {max} events within {}",
                            humantime::format_duration(t)
                        ))),
                        None => Ok(()),
                    };
                }
            },
            None => sub.recv().await,
        };
        let d = match next {
            Ok(d) => {
                idle_since = tokio::time::Instant::now();
                backoff = Duration::from_millis(100);
                d
            }
            Err(e) if e.kind() == ReceiveErrorKind::Closed => {
                let _ = writeln!(err, "messaging: subscription lost ({e}); subscribing again");
                let _ = sub.close().await;
                let stop = async {
                    match c.timeout {
                        Some(t) => tokio::time::sleep_until(idle_since + t).await,
                        None => std::future::pending().await,
                    }
                };
                match messaging::resubscribe(&subscriber, &c.topic, &options, stop).await {
                    Ok(Some(again)) => {
                        sub = again;
                        continue;
                    }
                    Ok(None) => {
                        break idle_too_long(idle_since, printed).unwrap_or(Ok(()));
                    }
                    Err(e) => {
                        break Err(CliError::Failed(format!(
                            "cannot subscribe to {} again: {e}",
                            c.topic
                        )));
                    }
                }
            }
            Err(e) if e.is_transient() => {
                if let Some(end) = idle_too_long(idle_since, printed) {
                    break end;
                }
                let _ = writeln!(err, "messaging: receive failed ({e}); retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => break Err(CliError::Failed(format!("receive failed: {e}"))),
        };
        match d.payload() {
            Ok(event) => {
                let line = to_json_line(event).map_err(failed)?;
                if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                    // The reader went away (a closed pipe): this one was not delivered.
                    held.push(d);
                    break Err(failed(e));
                }
                printed += 1;
                if c.peek {
                    held.push(d);
                } else if let Err(e) = d.ack().await {
                    break Err(CliError::Failed(format!("ack failed: {}", e.error)));
                }
            }
            Err(e) => {
                // Not a CloudEvent. Never held: a window full of them would hide every event
                // behind them.
                skipped += 1;
                let e = e.clone();
                if c.dead_letter {
                    let dlq = options.dead_letter_topic_for(&c.topic);
                    if let Err(failure) =
                        dead_letter_undecodable(broker, &c.topic, &c.group, &dlq, d, &e).await
                    {
                        break Err(failure);
                    }
                    let _ = writeln!(err, "messaging: moved an undecodable message to {dlq}: {e}");
                } else {
                    let _ = writeln!(
                        err,
                        "messaging: skipped an undecodable message (returned to the group for {}s; --dead-letter moves it to the dead-letter topic): {e}",
                        SKIP_RETURN.as_secs()
                    );
                    if let Err(e) = d.nack(Some(SKIP_RETURN)).await {
                        held.push(e.delivery);
                    }
                }
            }
        }
    };
    if skipped > 0 {
        let _ = writeln!(
            err,
            "messaging: {skipped} undecodable message(s) {}",
            if c.dead_letter {
                "moved to the dead-letter topic"
            } else {
                "skipped"
            }
        );
    }
    give_back(held, &mut *err).await;
    let _ = sub.close().await;
    result
}

/// How long a skipped undecodable message stays away before the broker hands it out again.
const SKIP_RETURN: Duration = Duration::from_secs(30);
/// Window room for skipped messages not yet given back.
const SKIP_ROOM: usize = 64;

/// Dead-letters a message that is not a CloudEvent the way the consumer runtime does (an event
/// of type `messaging.undecodable` carrying the raw message and the failure metadata, made
/// smaller if the broker refuses its size), then acks it. Nothing is acked unpublished.
async fn dead_letter_undecodable(
    broker: &Broker,
    topic: &str,
    group: &str,
    dlq: &str,
    delivery: messaging::BoxDelivery,
    error: &messaging::DecodeError,
) -> Result<(), CliError> {
    let origin = messaging::handler::Origin {
        topic: topic.to_owned(),
        group: group.to_owned(),
    };
    let mut event = dead_letter::undecodable_event(error, &origin, messaging::chrono::Utc::now());
    // Kept from the start, as the consumer runtime does: where a topic keeps messages only for
    // existing groups (RabbitMQ, SQS, memory), the dead-letter group must exist first.
    if let Err(e) = broker
        .subscriber()
        .declare(dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
    {
        let _ = delivery.nack(None).await;
        return Err(CliError::Failed(format!("cannot declare {dlq}: {e}")));
    }
    let publisher = broker.publisher();
    let mut tries = 0;
    loop {
        match publisher.publish(dlq, event.clone()).await {
            Ok(_) => break,
            Err(e) if e.is_transient() && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200) * tries).await;
            }
            Err(e) if !e.is_transient() => match dead_letter::shrink(&event) {
                Some(smaller) => event = smaller,
                None => {
                    let _ = delivery.nack(None).await;
                    return Err(CliError::Failed(format!(
                        "cannot dead-letter to {dlq}: {e}"
                    )));
                }
            },
            Err(e) => {
                let _ = delivery.nack(None).await;
                return Err(CliError::Failed(format!(
                    "cannot dead-letter to {dlq}: {e}"
                )));
            }
        }
    }
    delivery
        .ack()
        .await
        .map_err(|e| CliError::Failed(format!("ack failed after dead-lettering: {}", e.error)))
}
