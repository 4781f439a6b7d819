//! The drills: a workload, workers, a fault, a check.

use std::future::Future;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use messaging::{Broker, Delivery as _, SubscribeOptions, Subscription as _};

use crate::check::{Recovery, Verdict, check, recovery};
use crate::process::{Worker, WorkerSpec};
use crate::record::read_dir;
use crate::report::{Row, secs};
use crate::workload::{Published, WARM_UP, Workload, publish, warm_up_event};

/// Where and how a broker's drills run.
#[derive(Debug, Clone)]
pub struct Env {
    /// The broker's name in the report (`kafka`, `rabbitmq`, `sqs`).
    pub name: &'static str,
    /// Broker URL (the workers connect with it too).
    pub url: String,
    /// The `drill-worker` executable.
    pub exe: PathBuf,
    /// Redis URL for the idempotent drills.
    pub redis: String,
    /// A directory of its own for each drill's records.
    pub dir: PathBuf,
    /// Events per drill.
    pub messages: usize,
    /// Ack deadline (brokers with one: the time a killed worker's messages stay invisible).
    pub deadline: Duration,
    /// Longest wait for the whole stream to be handled after the last fault.
    pub settle: Duration,
    /// Why the broker itself may break two promises the drills check, which are then reported
    /// but not asserted (`None`: they are asserted): per-key order once messages come back after
    /// their ack deadline, and one message handed to one consumer at a time. moto's
    /// `ReceiveMessage` is neither: its FIFO queues hand a group's later message out first when
    /// several of the group's messages time out together, and two concurrent receives can take
    /// the same message (its check-and-mark runs without a lock on a threaded server). Real SQS
    /// does neither.
    pub emulator_gaps: Option<&'static str>,
    /// Events a second the broker serves here with room to spare: the poison drill's stream
    /// goes at this rate, so that a clean run and a poisoned one are paced alike and what the
    /// ratio of their throughputs shows is the poison's effect on the rest of the stream.
    pub rate: usize,
}

/// A drill that ran to its check; `problems` is empty when every promise held.
#[derive(Debug)]
pub struct Outcome {
    /// The report row.
    pub row: Row,
    /// Broken promises, in words.
    pub problems: Vec<String>,
    /// Clean events handled per second in the steady part of the run (between the 10th and
    /// the 90th percentile of the times their handlings ended).
    pub throughput: f64,
    /// The poison events that were published (the poison drill).
    pub poison: Vec<Published>,
}

struct Run {
    env: Env,
    broker: Broker,
    spec: WorkerSpec,
    workers: Vec<Worker>,
    published: Arc<Mutex<Vec<Published>>>,
    publisher: Option<tokio::task::JoinHandle<Result<u64, String>>>,
    /// Publish calls that failed and were made again, once the publisher is done.
    publish_failures: u64,
    started: Instant,
    spawned: usize,
    /// Why order is reported but not asserted in this drill, if it is not.
    order_caveat: Option<&'static str>,
    /// Why handling by two workers at once is reported but not asserted, if it is not.
    overlap_caveat: Option<&'static str>,
}

const KEYS: usize = 8;

impl Run {
    /// A drill's run; `ordered` asks for per-key order where the broker has it.
    async fn new(
        env: &Env,
        drill: &str,
        ordered: bool,
        idempotent: bool,
        work: Duration,
    ) -> Result<Self, String> {
        let broker = Broker::connect(&env.url)
            .await
            .map_err(|e| format!("{}: {e}", env.name))?;
        let ordered = ordered && broker.features().ordering;
        let unique = format!(
            "{drill}-{}-{}",
            std::process::id(),
            crate::record::now_ns() % 1_000_000_000
        );
        let dir = env.dir.join(&unique);
        std::fs::create_dir_all(&dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        let spec = WorkerSpec {
            exe: env.exe.clone(),
            url: env.url.clone(),
            topic: format!("drill-{unique}"),
            group: "workers".into(),
            dir,
            concurrency: 8,
            ordered,
            work,
            drain: Duration::from_secs(5),
            deadline: env.deadline,
            redis: idempotent.then(|| env.redis.clone()),
            idempotency: (format!("drill:{unique}:"), Duration::from_secs(3)),
            poison_policy: false,
            stats: false,
        };
        // The group exists, with the workers' options, before anything is published.
        broker
            .subscriber()
            .declare_dyn(&spec.topic, subscribe_options(&spec))
            .await
            .map_err(|e| format!("declare {}: {e}", spec.topic))?;
        Ok(Self {
            env: env.clone(),
            broker,
            spec,
            workers: Vec::new(),
            published: Arc::default(),
            publisher: None,
            publish_failures: 0,
            started: Instant::now(),
            spawned: 0,
            order_caveat: None,
            overlap_caveat: env.emulator_gaps,
        })
    }

    /// Logs a step of the drill (shown with a failing test's output: where a drill that
    /// timed out was).
    fn phase(&self, what: impl std::fmt::Display) {
        eprintln!(
            "[{:>6.1} s {} {}] {what}",
            self.started.elapsed().as_secs_f64(),
            self.env.name,
            self.spec.topic
        );
    }

    fn spawn(&mut self) -> Result<usize, String> {
        self.spawned += 1;
        let name = format!("w{:02}", self.spawned);
        self.phase(format_args!("spawn {name}"));
        let w = Worker::spawn(&self.spec, &name).map_err(|e| format!("spawn {name}: {e}"))?;
        self.workers.push(w);
        Ok(self.workers.len() - 1)
    }

    fn start_publishing(&mut self) {
        self.publish_with(Workload {
            messages: self.env.messages,
            keys: KEYS,
            batch: 50,
            pace: Duration::from_millis(20),
            poison_every: 0,
            pad: 0,
        });
    }

    fn publish_with(&mut self, workload: Workload) {
        let broker = self.broker.clone();
        let topic = self.spec.topic.clone();
        let out = self.published.clone();
        self.publisher = Some(tokio::spawn(async move {
            publish(broker, &topic, &workload, out, 20).await
        }));
    }

    /// Distinct events handled to the end so far.
    fn handled(&self) -> Result<usize, String> {
        let records = read_dir(&self.spec.dir).map_err(|e| e.to_string())?;
        let mut ids = std::collections::HashSet::new();
        for r in &records {
            for l in &r.lines {
                if let crate::record::Line::End(m) = l
                    && !m.id.starts_with(WARM_UP)
                {
                    ids.insert(m.id.clone());
                }
            }
        }
        Ok(ids.len())
    }

    fn crashed(&mut self) -> Result<(), String> {
        for w in &mut self.workers {
            if let Some(status) = w.exited().map_err(|e| e.to_string())? {
                return Err(format!(
                    "worker {} exited by itself ({status}): {}",
                    w.name,
                    w.log()
                ));
            }
        }
        Ok(())
    }

    /// Waits until `n` events were handled, bounded.
    async fn until_handled(&mut self, n: usize, bound: Duration) -> Result<(), String> {
        self.phase(format_args!("waiting for {n} handled"));
        let deadline = Instant::now() + bound;
        loop {
            self.crashed()?;
            let handled = self.handled()?;
            if handled >= n {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{handled} of {n} events handled after {bound:?} ({} published)",
                    self.published
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .len()
                ));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Publishes warm-up events until every worker has handled one, bounded: then every
    /// worker is subscribed, owns its share (a Kafka group has settled its assignment) and
    /// has its connections warm, so a stream published next is read from its first event.
    async fn warm_up(&mut self, bound: Duration) -> Result<(), String> {
        self.phase("warming up");
        let publisher = self.broker.publisher();
        let deadline = Instant::now() + bound;
        let mut n = 0;
        loop {
            self.crashed()?;
            let records = read_dir(&self.spec.dir).map_err(|e| e.to_string())?;
            let warm = records
                .iter()
                .filter(|r| {
                    r.lines.iter().any(
                        |l| matches!(l, crate::record::Line::End(m) if m.id.starts_with(WARM_UP)),
                    )
                })
                .count();
            if warm >= self.workers.len() {
                self.phase(format_args!("warm after {n} warm-up events"));
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(format!(
                    "{warm} of {} workers handled a warm-up event within {bound:?}",
                    self.workers.len()
                ));
            }
            let batch: Vec<_> = (n..n + 16).map(warm_up_event).collect();
            n += 16;
            publisher
                .publish_batch_dyn(&self.spec.topic, batch)
                .await
                .map_err(|e| format!("warm-up publish: {e:?}"))?;
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// Waits for the publisher to be done (if it is not yet).
    async fn published_all(&mut self) -> Result<(), String> {
        if let Some(p) = self.publisher.take() {
            self.phase("waiting for the publisher");
            self.publish_failures = p.await.map_err(|e| e.to_string())??;
        }
        Ok(())
    }

    /// Waits for the publisher, then for every accepted event to be handled; stops the
    /// workers with SIGTERM and checks the record.
    async fn finish(
        mut self,
        drill: &str,
        faults: String,
        recovery_of: &[(String, u64)],
    ) -> Result<Outcome, String> {
        self.published_all().await?;
        let mut faults = faults;
        // A failed publish may have reached the broker all the same: publishing it again can
        // put a duplicate in the stream (same event id).
        if self.publish_failures > 0 {
            faults = format!(
                "{faults}; {} publish calls failed and were made again",
                self.publish_failures
            );
        }
        let (poison, published): (Vec<Published>, Vec<Published>) = self
            .published
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .iter()
            .cloned()
            .partition(|p| p.poison.is_some());
        let total = published
            .iter()
            .map(|p| p.id.as_str())
            .collect::<std::collections::HashSet<_>>()
            .len();
        let waited = self.until_handled(total, self.env.settle).await;
        let bound = self.spec.drain + Duration::from_secs(20);
        let mut problems = Vec::new();
        if let Err(e) = waited {
            problems.push(e);
        }
        self.phase("stopping the workers");
        for w in self.workers.iter_mut().filter(|w| w.running()) {
            match w.terminate(bound) {
                Ok((_, _, status)) if status.success() => {}
                Ok((_, _, status)) => problems.push(format!(
                    "{} exited with {status} on SIGTERM: {}",
                    w.name,
                    w.log()
                )),
                Err(e) => problems.push(format!("{}: {e}: {}", w.name, w.log())),
            }
        }
        self.phase("checking");
        let records = read_dir(&self.spec.dir).map_err(|e| e.to_string())?;
        let verdict: Verdict = check(&published, &records);
        problems.extend(verdict.problems(
            self.spec.ordered && self.order_caveat.is_none(),
            self.overlap_caveat.is_none(),
        ));
        let mut ends: Vec<u64> = records
            .iter()
            .flat_map(|r| &r.lines)
            .filter_map(|l| match l {
                crate::record::Line::End(m) if !m.id.starts_with(WARM_UP) => Some(m.at),
                _ => None,
            })
            .collect();
        ends.sort_unstable();
        let throughput = steady_rate(&ends);
        let recoveries: Vec<Recovery> = recovery_of
            .iter()
            .map(|(victim, at)| recovery(&records, victim, *at))
            .collect();
        if recoveries.contains(&Recovery::Never) {
            problems.push("work a fault cut off was never done again".into());
        }
        let recovery = recoveries.iter().filter_map(|r| r.time()).max();
        Ok(Outcome {
            row: Row {
                drill: drill.into(),
                guarantee: if self.spec.redis.is_some() {
                    "effectively-once (Redis idempotency)".into()
                } else {
                    "at-least-once".into()
                },
                faults,
                verdict,
                ordered: self.spec.ordered,
                order_caveat: self.order_caveat.map(str::to_owned),
                overlap_caveat: self.overlap_caveat.map(str::to_owned),
                duplicates_caveat: None,
                recovery,
                elapsed: self.started.elapsed(),
            },
            problems,
            throughput,
            poison,
        })
    }
}

/// Handlings per second in the steady part of a run, from the sorted times at which
/// handlings ended: between the 10th and the 90th percentile, so that neither the start (the
/// workers joining, connections warming up) nor the tail (the last events, waiting for a
/// retry or a slow handler) weighs in.
fn steady_rate(ends: &[u64]) -> f64 {
    let (from, to) = if ends.len() >= 20 {
        (ends.len() / 10, ends.len() * 9 / 10)
    } else {
        (0, ends.len().saturating_sub(1))
    };
    let (Some(first), Some(last)) = (ends.get(from), ends.get(to)) else {
        return 0.0;
    };
    let span = Duration::from_nanos(last - first);
    (to - from) as f64 / span.as_secs_f64().max(0.001)
}

impl Drop for Run {
    fn drop(&mut self) {
        // A drill cut short (its bound, an error) stops publishing; the workers kill
        // themselves on drop.
        if let Some(p) = self.publisher.take() {
            p.abort();
        }
    }
}

fn subscribe_options(spec: &WorkerSpec) -> SubscribeOptions {
    SubscribeOptions::new(spec.group.clone())
        .ordered(spec.ordered)
        .ack_deadline(spec.deadline)
}

/// Whether the worker whose record is at `path` has a handler running.
fn busy(path: &std::path::Path) -> Result<bool, String> {
    let record = crate::record::read(path).map_err(|e| e.to_string())?;
    let mut open = std::collections::HashSet::new();
    for line in &record.lines {
        match line {
            crate::record::Line::Start(m) => {
                open.insert(m.id.as_str());
            }
            crate::record::Line::End(m) => {
                open.remove(m.id.as_str());
            }
            _ => {}
        }
    }
    Ok(!open.is_empty())
}

fn fraction(messages: usize, f: f64) -> usize {
    ((messages as f64) * f) as usize
}

/// Two workers; three times, one inside a handler is SIGKILLed and replaced at once.
/// The at-least-once drill asks for per-key order (where the broker has it); with
/// `idempotent`, the workers run the idempotent consumer over Redis, unordered, and a duplicate
/// side effect needs a kill between a handler's end and its claim's completion.
pub async fn kill(env: &Env, idempotent: bool) -> Result<Outcome, String> {
    let drill = if idempotent {
        "kill -9 (idempotent)"
    } else {
        "kill -9"
    };
    let mut run = Run::new(
        env,
        "kill",
        !idempotent,
        idempotent,
        Duration::from_millis(5),
    )
    .await?;
    // A killed worker's messages come back after their ack deadline (SQS).
    run.order_caveat = env.emulator_gaps;
    let mut current = [run.spawn()?, run.spawn()?];
    run.start_publishing();
    let bound = env.settle;
    let mut faults = Vec::new();
    for (n, f) in [0.2, 0.45, 0.7].into_iter().enumerate() {
        run.until_handled(fraction(env.messages, f), bound).await?;
        // Mid-batch: the victim is a worker inside a handler (the one whose turn it is if
        // both are), waiting briefly for one to be; else the one whose turn it is.
        let mut slot = n % 2;
        let busy_by = Instant::now() + Duration::from_secs(2);
        while Instant::now() < busy_by {
            if busy(run.workers[current[slot]].record())? {
                break;
            }
            if busy(run.workers[current[1 - slot]].record())? {
                slot = 1 - slot;
                break;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        run.phase(format_args!("SIGKILL {}", run.workers[current[slot]].name));
        let victim = &mut run.workers[current[slot]];
        let at = victim
            .kill()
            .map_err(|e| format!("kill {}: {e}", victim.name))?;
        faults.push((victim.name.clone(), at));
        current[slot] = run.spawn()?;
    }
    let kills = faults.len();
    let concurrency = run.spec.concurrency;
    let mut outcome = run
        .finish(
            drill,
            format!("{kills} × SIGKILL of a worker of 2"),
            &faults,
        )
        .await?;
    let dup = outcome.row.verdict.duplicates;
    if idempotent && dup > kills * concurrency {
        outcome.problems.push(format!(
            "{dup} duplicate side effects with the idempotency layer: more than the {} handlers \
             the kills could catch between their end and their claim's completion",
            kills * concurrency
        ));
    }
    Ok(outcome)
}

/// One worker, then three (two added under load), then one again (two SIGTERMed); ordered
/// where the broker has it. Nothing is handled twice: every hand-over is graceful.
pub async fn scale(env: &Env) -> Result<Outcome, String> {
    let mut run = Run::new(env, "scale", true, false, Duration::from_millis(2)).await?;
    run.spawn()?;
    run.start_publishing();
    let bound = env.settle;
    run.until_handled(fraction(env.messages, 0.2), bound)
        .await?;
    let added = [run.spawn()?, run.spawn()?];
    run.until_handled(fraction(env.messages, 0.55), bound)
        .await?;
    let mut faults = Vec::new();
    let drain_bound = run.spec.drain + Duration::from_secs(20);
    for i in added {
        run.phase(format_args!("SIGTERM {}", run.workers[i].name));
        let w = &mut run.workers[i];
        let (at, _, status) = w
            .terminate(drain_bound)
            .map_err(|e| format!("SIGTERM {}: {e}", w.name))?;
        if !status.success() {
            return Err(format!(
                "{} exited with {status} on SIGTERM: {}",
                w.name,
                w.log()
            ));
        }
        faults.push((w.name.clone(), at));
    }
    let mut outcome = run
        .finish(
            "scale 1 → 3 → 1",
            "2 workers added, then 2 SIGTERMed".into(),
            &faults,
        )
        .await?;
    // Joining and leaving gracefully hands work over without handling anything twice (on
    // moto, two receives can take one message: reported, not asserted).
    outcome.row.duplicates_caveat = env.emulator_gaps.map(str::to_owned);
    if outcome.row.verdict.duplicates > 0 && env.emulator_gaps.is_none() {
        outcome.problems.push(format!(
            "{} events handled twice while workers joined and left gracefully",
            outcome.row.verdict.duplicates
        ));
    }
    Ok(outcome)
}

/// One worker with slow handlers SIGTERMed mid-stream: it drains within the drain timeout and
/// exits 0; a new worker finishes the stream. Unordered, so eight handlers are in flight when
/// the signal comes. With individual acks nothing is handled twice.
pub async fn terminate(env: &Env) -> Result<Outcome, String> {
    let mut run = Run::new(env, "term", false, false, Duration::from_millis(20)).await?;
    let first = run.spawn()?;
    run.start_publishing();
    run.until_handled(fraction(env.messages, 0.4), env.settle)
        .await?;
    let drain = run.spec.drain;
    run.phase("SIGTERM the worker");
    let w = &mut run.workers[first];
    let (at, took, status) = w
        .terminate(drain + Duration::from_secs(20))
        .map_err(|e| format!("SIGTERM {}: {e}", w.name))?;
    let name = w.name.clone();
    let log = w.log();
    run.spawn()?;
    let individual = run.broker.features().individual_acks;
    let mut outcome = run
        .finish(
            "SIGTERM mid-stream",
            format!(
                "SIGTERM of the only worker (exit after {:.1} s)",
                took.as_secs_f64()
            ),
            &[(name.clone(), at)],
        )
        .await?;
    if !status.success() {
        outcome
            .problems
            .push(format!("{name} exited with {status} on SIGTERM: {log}"));
    }
    // The drain timeout bounds the handlers; closing the subscription and the connection
    // come on top of it.
    if took > drain + Duration::from_secs(10) {
        outcome.problems.push(format!(
            "{name} took {took:?} to exit after SIGTERM (drain timeout {drain:?})"
        ));
    }
    // (On moto, two receives can take one message: reported, not asserted.)
    if individual {
        outcome.row.duplicates_caveat = env.emulator_gaps.map(str::to_owned);
    }
    if individual && outcome.row.verdict.duplicates > 0 && env.emulator_gaps.is_none() {
        outcome.problems.push(format!(
            "{} events handled twice after a graceful shutdown on a broker with individual acks",
            outcome.row.verdict.duplicates
        ));
    }
    Ok(outcome)
}

/// Two workers under a live publisher that spreads the stream over `spread`; at 30 % of the
/// stream the broker goes away: `outage` injects the fault and returns, with its description,
/// once the broker is back. The publisher publishes again what failed (up to 20 times, with a
/// growing pause); nothing it was told was accepted is lost, and the group settles again after
/// the broker is back (the recovery).
pub async fn restart<F, Fut>(env: &Env, spread: Duration, outage: F) -> Result<Outcome, String>
where
    F: FnOnce() -> Fut,
    Fut: Future<Output = Result<String, String>>,
{
    let mut run = Run::new(env, "restart", false, false, Duration::from_millis(5)).await?;
    run.spawn()?;
    run.spawn()?;
    let batch = 10;
    let calls = env.messages.div_ceil(batch).max(1) as u32;
    run.publish_with(Workload {
        messages: env.messages,
        keys: KEYS,
        batch,
        pace: spread / calls,
        poison_every: 0,
        pad: 0,
    });
    run.until_handled(fraction(env.messages, 0.3), env.settle)
        .await?;
    run.phase("outage");
    let faults = outage().await?;
    run.phase(format_args!("broker back: {faults}"));
    let back = crate::record::now_ns();
    // Nobody is cut off by a broker outage: the recovery is the first event handled after
    // the broker is back.
    run.finish("broker restart", faults, &[(String::new(), back)])
        .await
}

/// Poison events mixed into the stream: one in `every` events panics, hangs past the handler
/// timeout, or fails permanently (in turn), under a policy of one retry and a 500 ms handler
/// timeout. Every poison event must end in the dead-letter topic with its reason
/// (`handler-panicked`, `retries-exhausted`, `permanent-failure`), nothing clean may be lost,
/// and the clean events' throughput is compared with a clean run of the same stream at the
/// same pace, at the same time (the ratio goes in the table; `min_ratio` is asserted).
pub async fn poison(env: &Env, every: usize, min_ratio: f64) -> Result<Outcome, String> {
    let batch = (env.rate / 50).clamp(1, 50);
    let workload = |poison_every, pad| Workload {
        messages: env.messages,
        keys: KEYS,
        batch,
        pace: Duration::from_secs_f64(batch as f64 / env.rate.max(1) as f64),
        poison_every,
        pad,
    };
    // The clean run goes at the same time as the poisoned one, on a topic of its own with
    // workers of its own: both see the same machine (two shared cores, the other brokers'
    // drills), so the ratio of their throughputs is the poison's effect, not the noise
    // between two runs made one after the other.
    let mut clean = Run::new(env, "clean", false, false, Duration::from_millis(5)).await?;
    clean.spec.poison_policy = true;
    let mut run = Run::new(env, "poison", false, false, Duration::from_millis(5)).await?;
    run.spec.poison_policy = true;
    // The dead-letter topic's audit group exists before anything is dead-lettered.
    let dlq = format!("{}.dlq", run.spec.topic);
    let audit = SubscribeOptions::new("audit");
    run.broker
        .subscriber()
        .declare_dyn(&dlq, audit.clone())
        .await
        .map_err(|e| format!("declare {dlq}: {e}"))?;
    let subscriber = run.broker.subscriber();
    let pad = largest_pad(&run.broker, &format!("{}.probe", run.spec.topic)).await?;
    run.phase(format_args!("oversize events carry {pad} bytes of padding"));
    clean.spawn()?;
    clean.spawn()?;
    run.spawn()?;
    run.spawn()?;
    // Both streams start once every worker of both runs is reading: otherwise a run whose
    // group joined later reads a backlog at full speed, and the ratio shows the join times.
    clean.warm_up(Duration::from_secs(60)).await?;
    run.warm_up(Duration::from_secs(60)).await?;
    clean.publish_with(workload(0, 0));
    run.publish_with(workload(every, pad));
    run.published_all().await?;
    let poison: Vec<Published> = run
        .published
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|p| p.poison.is_some())
        .cloned()
        .collect();

    // Every poison event reaches the dead-letter topic, with the reason its kind calls for:
    // read before the workers stop (the last events may be large and slow).
    let want: std::collections::HashMap<String, &str> = poison
        .iter()
        .map(|p| {
            let reason = match p.poison.as_deref() {
                Some("panic") => "handler-panicked",
                Some("hang") => "retries-exhausted",
                Some("undecodable") => "undecodable",
                _ => "permanent-failure",
            };
            (p.id.clone(), reason)
        })
        .collect();
    let mut found: std::collections::HashMap<String, String> = Default::default();
    let mut truncated = std::collections::HashSet::new();
    run.phase("reading the dead letters");
    let mut sub = subscriber
        .subscribe_dyn(&dlq, audit)
        .await
        .map_err(|e| format!("subscribe {dlq}: {e}"))?;
    let deadline = Instant::now() + env.settle;
    while want.keys().any(|id| !found.contains_key(id)) && Instant::now() < deadline {
        run.crashed()?;
        let Ok(next) = tokio::time::timeout(Duration::from_secs(1), sub.recv()).await else {
            continue;
        };
        let d = next.map_err(|e| format!("reading {dlq}: {e}"))?;
        if let Ok(event) = d.event() {
            use messaging::{AttributesReader as _, EventExt as _};
            let reason = event
                .extension(messaging::dead_letter::REASON)
                .map(|r| r.to_string())
                .unwrap_or_default();
            // Undecodable input has no id of its own: its dead letter carries the raw body,
            // which names the event it stands for.
            let id = if event.ty() == messaging::dead_letter::UNDECODABLE_TYPE {
                let body = event.data_bytes().unwrap_or_default();
                String::from_utf8_lossy(&body)
                    .strip_prefix(crate::workload::UNDECODABLE_PREFIX)
                    .map(str::to_owned)
                    .unwrap_or_else(|| format!("unexpected undecodable body {body:?}"))
            } else {
                event.id().to_owned()
            };
            if event.extension(messaging::dead_letter::TRUNCATED).is_some() {
                truncated.insert(id.clone());
            }
            found.insert(id, reason);
        }
        d.ack().await.map_err(|e| format!("ack on {dlq}: {e}"))?;
    }
    let _ = sub.close().await;
    let baseline = clean.finish("clean", String::new(), &[]).await?;
    if !baseline.problems.is_empty() {
        return Err(format!("the clean run failed: {:?}", baseline.problems));
    }
    let mut outcome = run.finish("poison mix", String::new(), &[]).await?;
    let ratio = outcome.throughput / baseline.throughput.max(f64::MIN_POSITIVE);
    let mut kinds = std::collections::BTreeMap::<&str, usize>::new();
    for p in &outcome.poison {
        *kinds.entry(p.poison.as_deref().unwrap_or("?")).or_default() += 1;
        match found.get(&p.id) {
            None => outcome.problems.push(format!(
                "poison event {} ({:?}) never dead-lettered",
                p.id, p.poison
            )),
            Some(reason) if reason != want[&p.id] => outcome.problems.push(format!(
                "poison event {} ({:?}) dead-lettered as {reason:?}, not {:?}",
                p.id, p.poison, want[&p.id]
            )),
            Some(_) if p.poison.as_deref() == Some("oversize") && !truncated.contains(&p.id) => {
                outcome.problems.push(format!(
                    "oversize poison event {} dead-lettered without dlqtruncated: its dead letter fitted, so the drill did not test what it meant to",
                    p.id
                ));
            }
            Some(_) => {}
        }
    }
    let kinds: Vec<String> = kinds.iter().map(|(k, n)| format!("{n} {k}")).collect();
    outcome.row.faults = format!(
        "{} poison ({}), {}/{} dead-lettered with their reason; clean throughput {ratio:.2} × a clean run",
        outcome.poison.len(),
        kinds.join(", "),
        outcome
            .poison
            .iter()
            .filter(|p| found.get(&p.id).map(String::as_str) == Some(want[&p.id]))
            .count(),
        outcome.poison.len(),
    );
    if ratio < min_ratio {
        outcome.problems.push(format!(
            "clean events went at {:.0}/s among poison, {:.0}/s in a clean run: {ratio:.2} < {min_ratio}",
            outcome.throughput, baseline.throughput
        ));
    }
    Ok(outcome)
}

/// The padding of `oversize` poison events: the largest (to within 16 bytes) the broker takes
/// in an event of their shape with the longest id a drill uses, found by publishing such
/// events to `probe` (a topic of their own), less 64 bytes for shorter ids; 0 when the broker
/// states no limit. Their dead letters, with the dead-letter metadata added (well over 64
/// bytes), are then over the limit.
async fn largest_pad(broker: &Broker, probe: &str) -> Result<usize, String> {
    let Some(max) = broker.features().max_payload else {
        return Ok(0);
    };
    let publisher = broker.publisher();
    let fits = |pad: usize| {
        let publisher = publisher.clone();
        async move {
            let tick = crate::workload::Tick {
                key: "k0".into(),
                seq: 999_999,
                poison: Some("oversize".into()),
                pad: Some("x".repeat(pad)),
            };
            let event =
                messaging::EventBuilder::new(crate::workload::SOURCE, crate::workload::TYPE)
                    .id("k0-999999")
                    .ordering_key("k0")
                    .json(&tick)
                    .build()
                    .map_err(|e| e.to_string())?;
            match publisher.publish_dyn(probe, event).await {
                Ok(_) => Ok(true),
                Err(e) if e.kind() == messaging::PublishErrorKind::PayloadTooLarge => Ok(false),
                Err(e) => Err(format!("probing the size limit on {probe}: {e}")),
            }
        }
    };
    let (mut lo, mut hi) = (max.saturating_sub(16 * 1024), max);
    if !fits(lo).await? {
        return Err(format!(
            "an event with {lo} bytes of data is refused, though the broker's limit is {max}"
        ));
    }
    while hi - lo > 16 {
        let mid = lo + (hi - lo) / 2;
        if fits(mid).await? {
            lo = mid;
        } else {
            hi = mid;
        }
    }
    Ok(lo - 64)
}

/// Two workers reach the broker through `proxy` (at `worker_url`); the test's publisher
/// publishes the stream directly (at `env.url`, unless that goes through the proxy too). Up to
/// 30 % of the stream every byte takes `latency` each way; then the link stalls for `stall` — connections stay open, nothing gets
/// through, as in a partition that drops packets — long enough for heartbeats, sessions and
/// ack deadlines to run out; at 60 % it is cut for `cut` — every connection reset, new ones
/// refused. Nothing may be lost, both workers must still be running at the end (they
/// reconnect by themselves), and the recovery is the longest time from a heal to the next
/// event handled.
pub async fn partition(
    env: &Env,
    proxy: &messaging::testkit::netfault::TcpProxy,
    worker_url: String,
    latency: Duration,
    stall: Duration,
    cut: Duration,
) -> Result<Outcome, String> {
    let mut run = Run::new(env, "partition", false, false, Duration::from_millis(5)).await?;
    run.spec.url = worker_url;
    let connections = proxy.accepted();
    proxy.set_latency(latency);
    run.spawn()?;
    run.spawn()?;
    run.start_publishing();
    let mut heals = Vec::new();
    run.until_handled(fraction(env.messages, 0.3), env.settle)
        .await?;
    proxy.set_latency(Duration::ZERO);
    run.phase(format_args!("link stalled for {}", secs(stall)));
    proxy.stall();
    tokio::time::sleep(stall).await;
    proxy.heal();
    heals.push((String::new(), crate::record::now_ns()));
    run.phase("link healed");
    run.until_handled(fraction(env.messages, 0.6), env.settle)
        .await?;
    run.phase(format_args!("link cut for {}", secs(cut)));
    proxy.cut();
    tokio::time::sleep(cut).await;
    proxy.heal();
    heals.push((String::new(), crate::record::now_ns()));
    run.phase("link healed");
    let reconnections = proxy.accepted() - connections;
    let mut outcome = run
        .finish(
            "network partition",
            format!(
                "workers' link slowed by {} each way, then stalled {} (nothing through), later cut {} (reset, refused); {reconnections} connections through the proxy",
                secs(latency),
                secs(stall),
                secs(cut)
            ),
            &heals,
        )
        .await?;
    // Both faults must have been noticed and ridden out by reconnecting.
    if reconnections < 4 {
        outcome.problems.push(format!(
            "only {reconnections} connections through the proxy: the workers did not reconnect after the cut"
        ));
    }
    Ok(outcome)
}

/// What the soak drill samples of a worker, once a second.
#[derive(Debug, Clone, Copy, Default)]
struct Sample {
    rss_kib: u64,
    threads: u64,
    fds: u64,
    tasks: u64,
}

/// `/proc/<pid>`'s resident memory and threads, its open file descriptors, and the last task
/// count the worker wrote to `stats`.
fn sample(pid: u32, stats: &std::path::Path) -> Option<Sample> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse::<u64>().ok())
    };
    let fds = std::fs::read_dir(format!("/proc/{pid}/fd")).ok()?.count() as u64;
    let tasks = std::fs::read_to_string(stats)
        .ok()
        .and_then(|s| {
            s.lines()
                .last()
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0);
    Some(Sample {
        rss_kib: field("VmRSS:")?,
        threads: field("Threads:")?,
        fds,
        tasks,
    })
}

/// A sampled quantity: its name, how to read it, and its limit given its warm value and the
/// concurrency.
type Growth = (&'static str, fn(&Sample) -> u64, fn(u64, u64) -> u64);

/// The median of `f` over `samples`.
fn median(samples: &[Sample], f: impl Fn(&Sample) -> u64) -> u64 {
    let mut v: Vec<u64> = samples.iter().map(f).collect();
    v.sort_unstable();
    v.get(v.len() / 2).copied().unwrap_or(0)
}

/// One worker, reaching the broker through `proxy` (at `worker_url`), under a steady mixed
/// stream of `rate` events a second for `duration` — one event in 100 poison (panicking,
/// hanging past the handler timeout, failing permanently: retried once, then dead-lettered)
/// — with the link cut for 2 s every 30 s, so that the worker reconnects again and again.
/// Sampled every second: resident memory, threads, open file descriptors (its connections
/// among them) and the runtime's live tasks. The medians over the last quarter of the run
/// are compared with those over the second quarter (after the warm-up): a leak grows them.
/// Allowed: memory +25 % + 16 MiB (allocator and buffer growth), 4 more threads or
/// descriptors, tasks + 2 × the concurrency + 16.
pub async fn soak(
    env: &Env,
    proxy: &messaging::testkit::netfault::TcpProxy,
    worker_url: String,
    duration: Duration,
    rate: usize,
) -> Result<Outcome, String> {
    let mut run = Run::new(env, "soak", false, false, Duration::from_millis(2)).await?;
    run.spec.stats = true;
    run.spec.poison_policy = true;
    run.spec.url = worker_url;
    let w = run.spawn()?;
    let pid = run.workers[w]
        .pid()
        .ok_or("the soak worker is not running")?;
    let stats = run.spec.dir.join(format!("{}.stats", run.workers[w].name));
    let batch = (rate / 10).clamp(1, 50);
    let messages = rate * duration.as_secs() as usize;
    run.publish_with(Workload {
        messages,
        keys: KEYS,
        batch,
        pace: Duration::from_secs_f64(batch as f64 / rate as f64),
        poison_every: 100,
        pad: 0,
    });
    let mut samples = Vec::new();
    let started = Instant::now();
    let every = Duration::from_secs(30);
    let mut cuts = 0;
    while run.publisher.as_ref().is_some_and(|p| !p.is_finished()) {
        run.crashed()?;
        let since = started.elapsed();
        if since > every * (cuts + 1) {
            cuts += 1;
            proxy.cut();
        } else if proxy.link() != messaging::testkit::netfault::Link::Up
            && since > every * cuts + Duration::from_secs(2)
        {
            proxy.heal();
        }
        if let Some(s) = sample(pid, &stats) {
            samples.push(s);
        }
        if started.elapsed() > duration * 3 {
            return Err(format!(
                "publishing {messages} events took over {:?}",
                duration * 3
            ));
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
    proxy.heal();
    let published_for = started.elapsed();
    run.phase(format_args!("{} samples", samples.len()));
    let quarter = samples.len() / 4;
    if quarter < 2 {
        return Err(format!("only {} samples", samples.len()));
    }
    let warm = &samples[quarter..2 * quarter];
    let late = &samples[samples.len() - quarter..];
    let concurrency = run.spec.concurrency as u64;
    let checks: [Growth; 4] = [
        (
            "resident memory (KiB)",
            |s| s.rss_kib,
            |warm, _| warm + warm / 4 + 16 * 1024,
        ),
        ("threads", |s| s.threads, |warm, _| warm + 4),
        ("file descriptors", |s| s.fds, |warm, _| warm + 4),
        ("live tasks", |s| s.tasks, |warm, c| warm + 2 * c + 16),
    ];
    let mut growth = Vec::new();
    let mut problems = Vec::new();
    for (what, f, limit) in checks {
        let (a, b) = (median(warm, f), median(late, f));
        growth.push(if what.starts_with("resident") {
            format!(
                "RSS {:.1} → {:.1} MiB",
                a as f64 / 1024.0,
                b as f64 / 1024.0
            )
        } else {
            format!("{what} {a} → {b}")
        });
        if b > limit(a, concurrency) {
            problems.push(format!(
                "{what} grew from {a} to {b} under a steady load (limit {})",
                limit(a, concurrency)
            ));
        }
    }
    let mut outcome = run
        .finish(
            "soak",
            format!(
                "one worker, a steady {:.0} events/s for {} (1 % poison), its link cut 2 s every 30 s ({cuts} cuts): {}",
                messages as f64 / published_for.as_secs_f64(),
                secs(published_for),
                growth.join(", ")
            ),
            &[],
        )
        .await?;
    outcome.problems.extend(problems);
    Ok(outcome)
}
