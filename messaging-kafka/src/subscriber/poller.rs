//! The poller thread and the consumer context that routes rebalance callbacks to the state.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaRespErr;
use rdkafka::{ClientContext, TopicPartitionList};

use super::state::{Status, Sub};
use super::{HOUSEKEEPING, POLL, READ_BATCH};

pub(super) struct Ctx {
    pub(super) sub: Arc<Sub>,
}

impl ClientContext for Ctx {}

impl ConsumerContext for Ctx {
    fn rebalance(
        &self,
        consumer: &BaseConsumer<Self>,
        err: RDKafkaRespErr,
        tpl: &mut TopicPartitionList,
    ) {
        match err {
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS => {
                self.sub.on_assign(consumer, tpl)
            }
            RDKafkaRespErr::RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS => {
                self.sub.on_revoke(consumer, tpl)
            }
            other => {
                tracing::warn!(error = ?other, "rebalance failed; releasing partitions");
                self.sub.on_revoke(consumer, tpl);
            }
        }
    }
}

pub(super) fn poll_loop(consumer: BaseConsumer<Ctx>, sub: Arc<Sub>) {
    let mut last = Instant::now();
    let mut reads = Vec::with_capacity(READ_BATCH);
    while !sub.stop.load(Ordering::Acquire) {
        // Block for the first message, then take what is already fetched, up to a batch.
        let mut timeout = POLL;
        while reads.len() < READ_BATCH {
            match consumer.poll(timeout) {
                Some(Ok(m)) => reads.extend(sub.read(&m)),
                Some(Err(KafkaError::MessageConsumptionFatal(code))) => {
                    sub.status.send_replace(Status::Failed {
                        detail: format!("fatal consumer error: {code}"),
                        transient: false,
                    });
                    sub.stop.store(true, Ordering::Release);
                    break;
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "consumer error (librdkafka retries)");
                    break;
                }
                None => break,
            }
            timeout = Duration::ZERO;
        }
        if !reads.is_empty() {
            sub.accept(&mut reads);
        }
        if last.elapsed() >= HOUSEKEEPING {
            sub.retry_pending(&consumer);
            sub.housekeeping(&consumer);
            last = Instant::now();
        }
    }
    sub.housekeeping(&consumer);
    sub.commit_all(&consumer);
    sub.lock().closed = true;
    sub.settled.notify_all();
    // Leaves the group: the revoke callback commits again and releases the partitions.
    drop(consumer);
    sub.status.send_if_modified(|s| {
        if matches!(s, Status::Failed { .. }) {
            false
        } else {
            *s = Status::Stopped;
            true
        }
    });
}
