//! The poller side of a subscription: reading, matching to partitions, handing out under
//! the prefetch limit, and housekeeping (due retries, pauses, offset stores).

use std::collections::HashMap;
use std::sync::{Arc, MutexGuard};

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{BorrowedMessage, Message as _};
use tokio::sync::mpsc;

use super::delivery::KafkaDelivery;
use super::poller::Ctx;
use super::state::{Msg, Read, State, Sub, add_position, now_ms};
use crate::codec::{self, ATTEMPT_HEADER, GROUP_HEADER, NOT_BEFORE_HEADER, ORIGIN_HEADER};
use messaging_core::sync::lock;

impl Sub {
    pub(super) fn lock(&self) -> MutexGuard<'_, State> {
        lock(&self.state)
    }

    pub(super) fn is_retry_topic(&self, topic: &str) -> bool {
        self.drained.iter().any(|t| &**t == topic)
    }

    /// The subscription's own name for a topic it reads, and whether it is a retry topic.
    pub(super) fn known_topic(&self, topic: &str) -> Option<(Arc<str>, bool)> {
        if *self.topic == *topic {
            return Some((self.topic.clone(), false));
        }
        self.drained
            .iter()
            .find(|t| &***t == topic)
            .map(|t| (t.clone(), true))
    }

    /// Hands a message to the subscription; a closed channel drops it without requeueing.
    pub(super) fn send(self: &Arc<Self>, msg: Msg) {
        let delivery = KafkaDelivery {
            msg: Some(msg),
            sub: self.clone(),
        };
        if let Err(mpsc::error::SendError(mut d)) = self.tx.send(delivery) {
            d.msg = None;
        }
    }

    /// Hands out waiting messages while the prefetch limit allows.
    pub(super) fn dispatch(self: &Arc<Self>, st: &mut State) {
        if self.ordered {
            let mut ready = Vec::new();
            for part in st.parts.values_mut().flat_map(HashMap::values_mut) {
                if st.unsettled + ready.len() >= self.prefetch {
                    break;
                }
                if !part.busy && !part.revoking {
                    if let Some(m) = part.backlog.pop_front() {
                        part.busy = true;
                        ready.push(part.hand_out(m));
                    }
                }
            }
            st.unsettled += ready.len();
            for m in ready {
                self.send(m);
            }
        } else {
            while st.unsettled < self.prefetch {
                let Some(m) = st.backlog.pop_front() else {
                    break;
                };
                let Some(part) = st.part(&m.topic, m.partition) else {
                    continue;
                };
                let m = part.hand_out(m);
                st.unsettled += 1;
                self.send(m);
            }
        }
    }

    /// A message the poller read.
    pub(super) fn read(&self, m: &BorrowedMessage<'_>) -> Option<Read> {
        let (topic, retry) = self.known_topic(m.topic())?;
        let foreign = retry
            && (codec::header(m, ORIGIN_HEADER)
                .is_some_and(|origin| origin != self.topic.as_bytes())
                || match codec::header(m, GROUP_HEADER) {
                    Some(group) => group != self.group.as_bytes(),
                    None => !self.headerless.contains(&topic),
                });
        let payload = codec::decode(&self.broker.binding, m).map(Arc::new);
        let (attempt, due) = if retry {
            let before = codec::int_header(m, ATTEMPT_HEADER).unwrap_or(0);
            (
                u32::try_from(before).unwrap_or(0).saturating_add(1),
                codec::int_header(m, NOT_BEFORE_HEADER),
            )
        } else {
            (1, None)
        };
        Some(Read {
            payload,
            topic,
            partition: m.partition(),
            offset: m.offset(),
            attempt,
            due,
            foreign,
        })
    }

    /// Messages the poller read, under one lock.
    pub(super) fn accept(self: &Arc<Self>, reads: &mut Vec<Read>) {
        let now = now_ms();
        let mut st = self.lock();
        for r in reads.drain(..) {
            let Some(part) = st.part(&r.topic, r.partition) else {
                continue;
            };
            if part.revoking || part.pending || !part.tracker.read(r.offset) {
                continue;
            }
            if r.foreign {
                part.tracker.settle(r.offset);
                continue;
            }
            let msg = Msg {
                payload: r.payload,
                topic: r.topic,
                partition: r.partition,
                offset: r.offset,
                attempt: r.attempt,
                epoch: part.epoch,
            };
            match r.due {
                Some(due) if due > now || !part.delayed.is_empty() => {
                    part.delayed.push_back((due, msg));
                }
                _ if self.ordered => part.backlog.push_back(msg),
                _ => st.backlog.push_back(msg),
            }
        }
        self.dispatch(&mut st);
    }

    /// Releases due retries, pauses and resumes partitions, stores commit positions.
    pub(super) fn housekeeping(self: &Arc<Self>, consumer: &BaseConsumer<Ctx>) {
        let mut pause = TopicPartitionList::new();
        let mut resume = TopicPartitionList::new();
        let mut store = TopicPartitionList::new();
        {
            let mut st = self.lock();
            let now = now_ms();
            let mut released = Vec::new();
            for part in st.parts.values_mut().flat_map(HashMap::values_mut) {
                while part.delayed.front().is_some_and(|(due, _)| *due <= now) {
                    if let Some((_, m)) = part.delayed.pop_front() {
                        // Ordered subscriptions read retry topics only to drain what an
                        // unordered one parked there; their messages wait in their lane.
                        if self.ordered {
                            part.backlog.push_back(m);
                        } else {
                            released.push(m);
                        }
                    }
                }
            }
            st.backlog.extend(released);
            self.dispatch(&mut st);
            let waiting = st.backlog.len()
                + st.parts
                    .values()
                    .flat_map(HashMap::values)
                    .map(|p| p.backlog.len())
                    .sum::<usize>();
            let high = (self.prefetch * 4).max(1024);
            if waiting >= high {
                st.backpressure = true;
            } else if waiting <= high / 2 {
                st.backpressure = false;
            }
            let backpressure = st.backpressure;
            for (topic, parts) in &mut st.parts {
                for (partition, part) in parts.iter_mut() {
                    let want = part.pending || backpressure || !part.delayed.is_empty();
                    if want != part.paused {
                        part.paused = want;
                        let list = if want { &mut pause } else { &mut resume };
                        list.add_partition(topic, *partition);
                    }
                    let mark = (part.tracker.position(), part.handed);
                    if mark.0 >= 0 && mark != part.stored {
                        part.stored = mark;
                        add_position(&mut store, topic, *partition, mark);
                    }
                }
            }
        }
        if pause.count() > 0 {
            if let Err(e) = consumer.pause(&pause) {
                tracing::warn!(error = %e, "cannot pause partitions");
            }
        }
        if resume.count() > 0 {
            if let Err(e) = consumer.resume(&resume) {
                tracing::warn!(error = %e, "cannot resume partitions");
            }
        }
        if store.count() > 0 {
            if let Err(e) = consumer.store_offsets(&store) {
                tracing::warn!(error = %e, "cannot store offsets");
            }
        }
    }
}
