//! Rebalancing: start positions of assigned partitions (committed offsets, the legacy group,
//! watermarks), retrying them while the broker cannot tell, and revoking partitions.

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use messaging_core::StartFrom;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::{Offset, TopicPartitionList};

use super::poller::Ctx;
use super::state::{
    Budget, Commit, HANDED, Part, Start, State, Status, Sub, add_position, commit_settled,
};
use super::{CALL_TIMEOUT, FETCH_RETRY_MAX, FETCH_RETRY_MIN};
use messaging_core::sync::lock;

impl Sub {
    /// A new assignment: each partition starts at its committed offset. A partition without
    /// one starts at its earliest offset when the group has committed on the topic before (a
    /// partition added to the topic, whose messages must not be skipped) and on retry topics;
    /// only a group with no commit on the topic at all is new and starts where
    /// [`StartFrom`] says. A new group's start positions are committed at once, for every
    /// partition of the topic, so the group exists from then on and members assigned the other
    /// partitions in the same rebalance start there too.
    ///
    /// When the committed offsets cannot be read, the partitions are assigned paused and
    /// pending; the poller fetches again with a growing delay (see [`Sub::retry_pending`]).
    pub(super) fn on_assign(
        self: &Arc<Self>,
        consumer: &BaseConsumer<Ctx>,
        tpl: &TopicPartitionList,
    ) {
        let wanted: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let resolved = self.resolve(consumer, &wanted, CommitMode::Sync);
        let mut assignment = TopicPartitionList::new();
        let mut pending = TopicPartitionList::new();
        {
            let mut st = self.lock();
            st.epoch += 1;
            let epoch = st.epoch;
            match &resolved {
                Ok(starts) => {
                    for start in starts {
                        let _ = assignment.add_partition_offset(
                            &start.topic,
                            start.partition,
                            Offset::Offset(start.position),
                        );
                        let part = Part::new(epoch, Some(start));
                        st.parts
                            .entry(Arc::from(start.topic.as_str()))
                            .or_default()
                            .insert(start.partition, part);
                    }
                }
                Err(e) => {
                    self.fetch_failed(&mut st, e, wanted.len());
                    for (topic, partition) in &wanted {
                        // Fetching from the end reads least before the pause takes hold;
                        // the start position, once known, is sought before resuming.
                        let _ = assignment.add_partition_offset(topic, *partition, Offset::End);
                        pending.add_partition(topic, *partition);
                        st.parts
                            .entry(Arc::from(topic.as_str()))
                            .or_default()
                            .insert(*partition, Part::new(epoch, None));
                    }
                }
            }
        }
        self.assign(consumer, &assignment);
        if pending.count() > 0 {
            if let Err(e) = consumer.pause(&pending) {
                tracing::warn!(error = %e, "cannot pause partitions waiting for their committed offsets");
            }
        } else {
            self.running();
        }
    }

    /// The subscription is running once its first assignment has start positions.
    pub(super) fn running(&self) {
        self.status.send_if_modified(|s| {
            if matches!(s, Status::Starting) {
                *s = Status::Running;
                true
            } else {
                false
            }
        });
    }

    /// Records a failure to fetch committed offsets: logged, counted, retried later.
    pub(super) fn fetch_failed(&self, st: &mut State, e: &KafkaError, partitions: usize) {
        let delay = if st.retry_delay.is_zero() {
            FETCH_RETRY_MIN
        } else {
            (st.retry_delay * 2).min(FETCH_RETRY_MAX)
        };
        st.retry_delay = delay;
        st.retry_at = Some(Instant::now() + delay);
        st.fetch_error = Some(e.to_string());
        metrics::counter!(
            "messaging_kafka_offset_fetch_failures_total",
            "topic" => self.topic.to_string(),
            "group" => self.group.clone(),
        )
        .increment(1);
        tracing::warn!(
            error = %e,
            topic = %self.topic,
            group = %self.group,
            partitions,
            retry_in = ?delay,
            "cannot read the committed offsets of assigned partitions; they stay paused until the fetch succeeds"
        );
    }

    /// Fetches the start positions of pending partitions again when due; seeks them there
    /// and lets housekeeping resume them.
    pub(super) fn retry_pending(self: &Arc<Self>, consumer: &BaseConsumer<Ctx>) {
        let wanted: Vec<(String, i32)> = {
            let mut st = self.lock();
            if st.retry_at.is_none_or(|at| Instant::now() < at) {
                return;
            }
            let wanted: Vec<_> = st
                .parts
                .iter()
                .flat_map(|(t, ps)| {
                    ps.iter()
                        .filter(|(_, p)| p.pending)
                        .map(|(p, _)| (t.to_string(), *p))
                })
                .collect();
            if wanted.is_empty() {
                st.retry_at = None;
                return;
            }
            wanted
        };
        // Committed without waiting: the poller thread keeps polling the healthy partitions
        // (until it lands, the next offset store commits the positions too).
        let starts = match self.resolve(consumer, &wanted, CommitMode::Async) {
            Ok(starts) => starts,
            Err(e) => {
                self.fetch_failed(&mut self.lock(), &e, wanted.len());
                return;
            }
        };
        let mut seek = TopicPartitionList::new();
        for start in &starts {
            let _ = seek.add_partition_offset(
                &start.topic,
                start.partition,
                Offset::Offset(start.position),
            );
        }
        let sought = match consumer.seek_partitions(seek, CALL_TIMEOUT) {
            Ok(sought) => sought,
            Err(e) => {
                self.fetch_failed(&mut self.lock(), &e, wanted.len());
                return;
            }
        };
        let failed: Vec<(String, i32)> = sought
            .elements()
            .iter()
            .filter(|e| e.error().is_err())
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut st = self.lock();
        for start in &starts {
            if failed.contains(&(start.topic.clone(), start.partition)) {
                continue;
            }
            if let Some(part) = st.part(&start.topic, start.partition) {
                if part.pending {
                    *part = Part {
                        paused: true,
                        ..Part::new(part.epoch, Some(start))
                    };
                }
            }
        }
        if failed.is_empty() {
            tracing::info!(
                topic = %self.topic,
                group = %self.group,
                partitions = starts.len(),
                "committed offsets fetched; the partitions resume"
            );
            st.retry_delay = Duration::ZERO;
            st.retry_at = None;
            st.fetch_error = None;
            drop(st);
            self.running();
        } else {
            let e = KafkaError::Seek(format!("cannot seek {failed:?} to their start positions"));
            self.fetch_failed(&mut st, &e, failed.len());
        }
    }

    /// The start positions of `wanted`, committing those of partitions without a commit (see
    /// [`Sub::on_assign`]). Fails if committed offsets, metadata or watermarks cannot be read
    /// within one [`Budget`] (each request bounded by [`CALL_TIMEOUT`]).
    pub(super) fn resolve(
        &self,
        consumer: &BaseConsumer<Ctx>,
        wanted: &[(String, i32)],
        mode: CommitMode,
    ) -> KafkaResult<Vec<Start>> {
        let budget = Budget::new();
        let mut commits = self.committed(consumer, wanted, &budget)?;
        let group_id = self.broker.config.group_id(&self.topic, &self.group);
        {
            // A start chosen earlier for the new group, whose commit failed (say, refused while
            // the group rebalanced), still holds: the group is not new again.
            let mut chosen = lock(&self.broker.uncommitted_starts);
            for k in wanted {
                let key = (group_id.clone(), k.0.clone(), k.1);
                if commits.contains_key(k) {
                    chosen.remove(&key);
                } else if let Some(&offset) = chosen.get(&key) {
                    let carried = Commit {
                        offset,
                        seen_before: -1,
                        carried: true,
                    };
                    commits.insert(k.clone(), carried);
                }
            }
        }
        let mut fresh = TopicPartitionList::new();
        // Carried positions (the legacy id's, earlier uncommitted starts) are committed now.
        for ((topic, partition), c) in &commits {
            if c.carried {
                let _ = fresh.add_partition_offset(topic, *partition, Offset::Offset(c.offset));
            }
        }
        let mut topics: Vec<&str> = wanted
            .iter()
            .filter(|k| !commits.contains_key(*k))
            .map(|(t, _)| t.as_str())
            .collect();
        topics.sort_unstable();
        topics.dedup();
        let mut starts: HashMap<(String, i32), i64> = HashMap::new();
        for topic in topics {
            let mut missing: Vec<(String, i32)> = wanted
                .iter()
                .filter(|k| k.0 == topic && !commits.contains_key(*k))
                .cloned()
                .collect();
            let mut existing =
                self.is_retry_topic(topic) || commits.keys().any(|(t, _)| t == topic);
            let mut others_missing = Vec::new();
            if !existing {
                // Does the group have commits on the topic's other partitions?
                let md = consumer.fetch_metadata(Some(topic), budget.next()?)?;
                let others: Vec<(String, i32)> = md
                    .topics()
                    .iter()
                    .filter(|t| t.name() == topic)
                    .flat_map(|t| t.partitions().iter().map(|p| (topic.to_owned(), p.id())))
                    .filter(|k| !wanted.contains(k))
                    .collect();
                if !others.is_empty() {
                    let theirs = self.committed(consumer, &others, &budget)?;
                    existing = !theirs.is_empty();
                    others_missing = others;
                    for ((t, p), c) in theirs {
                        if c.carried {
                            let _ = fresh.add_partition_offset(&t, p, Offset::Offset(c.offset));
                        }
                        commits.insert((t, p), c);
                    }
                }
            }
            let from_start = existing || self.start == StartFrom::Earliest;
            if !existing {
                // A new group: the other members' partitions start here too.
                missing.append(&mut others_missing);
            }
            for ((t, p), position) in watermarks(consumer, &missing, from_start, &budget)? {
                let _ = fresh.add_partition_offset(&t, p, Offset::Offset(position));
                starts.insert((t, p), position);
            }
        }
        let committed_now = fresh.count() == 0
            || match consumer.commit(&fresh, mode) {
                // An asynchronous commit is not known to have landed: stored again.
                Ok(()) => matches!(mode, CommitMode::Sync),
                Err(e) => {
                    tracing::warn!(error = %e, "cannot commit start positions; they are committed with the next offsets");
                    false
                }
            };
        {
            let mut chosen = lock(&self.broker.uncommitted_starts);
            if committed_now {
                for ((t, p), c) in &commits {
                    if c.carried {
                        chosen.remove(&(group_id.clone(), t.clone(), *p));
                    }
                }
            } else {
                for ((t, p), position) in &starts {
                    chosen.insert((group_id.clone(), t.clone(), *p), *position);
                }
            }
        }
        wanted
            .iter()
            .map(|k| {
                let (topic, partition) = k.clone();
                match (commits.get(k), starts.get(k)) {
                    (Some(c), _) => Ok(Start {
                        topic,
                        partition,
                        position: c.offset,
                        seen_before: c.seen_before,
                        committed: committed_now || !c.carried,
                    }),
                    (None, Some(&position)) => Ok(Start {
                        topic,
                        partition,
                        position,
                        seen_before: -1,
                        committed: committed_now,
                    }),
                    // Every wanted partition is committed or given a start above.
                    (None, None) => Err(KafkaError::OffsetFetch(
                        rdkafka::types::RDKafkaErrorCode::UnknownPartition,
                    )),
                }
            })
            .collect()
    }

    /// The group's commits on `partitions`, falling back to its legacy `group.id`.
    pub(super) fn committed(
        &self,
        consumer: &BaseConsumer<Ctx>,
        partitions: &[(String, i32)],
        budget: &Budget,
    ) -> KafkaResult<HashMap<(String, i32), Commit>> {
        let mut tpl = TopicPartitionList::new();
        for (t, p) in partitions {
            tpl.add_partition(t, *p);
        }
        let mut out = HashMap::new();
        for e in consumer.committed_offsets(tpl, budget.next()?)?.elements() {
            // An error of one partition is no answer: it is not "no commit".
            e.error()?;
            if let Offset::Offset(offset) = e.offset() {
                let seen_before = e
                    .metadata()
                    .strip_prefix(HANDED)
                    .and_then(|n| n.parse::<i64>().ok())
                    .unwrap_or(-1);
                out.insert(
                    (e.topic().to_owned(), e.partition()),
                    Commit {
                        offset,
                        seen_before,
                        carried: false,
                    },
                );
            }
        }
        if let Some(legacy) = &self.legacy {
            let mut tpl = TopicPartitionList::new();
            for k in partitions.iter().filter(|k| !out.contains_key(*k)) {
                tpl.add_partition(&k.0, k.1);
            }
            if tpl.count() > 0 {
                for e in legacy.committed_offsets(tpl, budget.next()?)?.elements() {
                    e.error()?;
                    if let Offset::Offset(offset) = e.offset() {
                        out.insert(
                            (e.topic().to_owned(), e.partition()),
                            Commit {
                                offset,
                                seen_before: -1,
                                carried: true,
                            },
                        );
                    }
                }
            }
        }
        Ok(out)
    }

    pub(super) fn assign(&self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let result = match consumer.rebalance_protocol() {
            rdkafka::consumer::RebalanceProtocol::Cooperative => consumer.incremental_assign(tpl),
            _ => consumer.assign(tpl),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot assign partitions");
        }
    }

    /// Partitions taken away: hand out nothing more from them, wait (bounded) for their
    /// in-flight deliveries, commit what is settled, release them.
    pub(super) fn on_revoke(&self, consumer: &BaseConsumer<Ctx>, tpl: &TopicPartitionList) {
        let revoked: Vec<(String, i32)> = tpl
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition()))
            .collect();
        let mut commit = TopicPartitionList::new();
        {
            let mut st = self.lock();
            for (t, p) in &revoked {
                if let Some(part) = st.part(t, *p) {
                    part.revoking = true;
                }
            }
            let wait = if self.stop.load(Ordering::Acquire) || st.closed {
                Duration::ZERO
            } else {
                self.broker.config.revoke_timeout
            };
            let deadline = Instant::now() + wait;
            loop {
                let busy = revoked
                    .iter()
                    .any(|(t, p)| st.part(t, *p).is_some_and(|part| part.out > 0));
                let now = Instant::now();
                if !busy || now >= deadline || st.closed {
                    break;
                }
                st = self
                    .settled
                    .wait_timeout(st, deadline - now)
                    .unwrap_or_else(|p| p.into_inner())
                    .0;
            }
            for (t, p) in &revoked {
                let Some(part) = st.parts.get_mut(t.as_str()).and_then(|m| m.remove(p)) else {
                    continue;
                };
                st.unsettled -= part.out;
                let position = part.tracker.position();
                if position >= 0 {
                    add_position(&mut commit, t, *p, (position, part.handed));
                }
            }
            st.parts.retain(|_, m| !m.is_empty());
            let State { parts, backlog, .. } = &mut *st;
            backlog.retain(|m| {
                parts
                    .get(&m.topic)
                    .is_some_and(|ps| ps.contains_key(&m.partition))
            });
        }
        if commit.count() > 0 {
            commit_settled(consumer, &commit, "revoked partitions");
        }
        let result = match consumer.rebalance_protocol() {
            rdkafka::consumer::RebalanceProtocol::Cooperative => consumer.incremental_unassign(tpl),
            _ => consumer.unassign(),
        };
        if let Err(e) = result {
            tracing::error!(error = %e, "cannot release partitions");
        }
    }

    /// Commits every partition's settled position synchronously (closing).
    pub(super) fn commit_all(&self, consumer: &BaseConsumer<Ctx>) {
        let mut commit = TopicPartitionList::new();
        {
            let st = self.lock();
            for (topic, parts) in &st.parts {
                for (partition, part) in parts {
                    let position = part.tracker.position();
                    if position >= 0 {
                        add_position(&mut commit, topic, *partition, (position, part.handed));
                    }
                }
            }
        }
        if commit.count() > 0 {
            commit_settled(consumer, &commit, "on close");
        }
    }
}

/// The low (`from_start`) or high watermark of every partition of `partitions`, in one
/// ListOffsets round (`offsets_for_times` with the special timestamps -2, earliest, and -1,
/// latest) instead of one request per partition.
pub(super) fn watermarks(
    consumer: &BaseConsumer<Ctx>,
    partitions: &[(String, i32)],
    from_start: bool,
    budget: &Budget,
) -> KafkaResult<Vec<((String, i32), i64)>> {
    if partitions.is_empty() {
        return Ok(Vec::new());
    }
    let query = if from_start {
        Offset::Beginning
    } else {
        Offset::End
    };
    let mut tpl = TopicPartitionList::new();
    for (t, p) in partitions {
        tpl.add_partition_offset(t, *p, query)?;
    }
    let found = consumer.offsets_for_times(tpl, budget.next()?)?;
    let mut out = Vec::with_capacity(partitions.len());
    for e in found.elements() {
        e.error()?;
        match e.offset() {
            Offset::Offset(o) if o >= 0 => out.push(((e.topic().to_owned(), e.partition()), o)),
            other => {
                tracing::debug!(offset = ?other, topic = e.topic(), partition = e.partition(), "no watermark");
                return Err(KafkaError::OffsetFetch(
                    rdkafka::types::RDKafkaErrorCode::OffsetOutOfRange,
                ));
            }
        }
    }
    if out.len() != partitions.len() {
        return Err(KafkaError::OffsetFetch(
            rdkafka::types::RDKafkaErrorCode::UnknownPartition,
        ));
    }
    Ok(out)
}
