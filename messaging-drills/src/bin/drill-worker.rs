//! A drill's consumer process: one consumer runtime on `DRILL_URL`, recording every handling
//! in `DRILL_RECORD` (see `messaging_drills::record`). It runs until SIGTERM or SIGINT, drains
//! (`DRILL_DRAIN_MS`), writes its run report and exits 0; the drill may SIGKILL it instead.

use std::sync::Arc;
use std::time::Duration;

use messaging::handler::{HandlerError, Incoming, handler_fn};
use messaging::middleware::idempotency::{IdempotencyLayer, RedisStore};
use messaging::middleware::retry::RetryPolicy;
use messaging::{AttributesReader, Broker, SubscribeOptions};
use messaging_drills::record::RecordWriter;
use messaging_drills::workload::Tick;
use tokio::signal::unix::{SignalKind, signal};

fn var(name: &str) -> Result<String, String> {
    std::env::var(name).map_err(|_| format!("{name} is not set"))
}

fn millis(name: &str) -> Result<Duration, String> {
    let v = var(name)?;
    v.parse()
        .map(Duration::from_millis)
        .map_err(|_| format!("{name}={v:?} is not a number of milliseconds"))
}

#[tokio::main]
async fn main() {
    if let Err(e) = run().await {
        eprintln!("drill-worker: {e}");
        std::process::exit(1);
    }
}

async fn run() -> Result<(), String> {
    let url = var("DRILL_URL")?;
    let topic = var("DRILL_TOPIC")?;
    let group = var("DRILL_GROUP")?;
    let record = Arc::new(
        RecordWriter::open(var("DRILL_RECORD")?.as_ref()).map_err(|e| format!("record: {e}"))?,
    );
    let concurrency: usize = var("DRILL_CONCURRENCY")?
        .parse()
        .map_err(|_| "DRILL_CONCURRENCY is not a number")?;
    let ordered = var("DRILL_ORDERED")? == "1";
    let work = millis("DRILL_WORK_MS")?;
    let drain = millis("DRILL_DRAIN_MS")?;
    let deadline = millis("DRILL_DEADLINE_MS")?;

    let broker = Broker::connect(&url).await.map_err(|e| e.to_string())?;
    if let Ok(path) = std::env::var("DRILL_STATS") {
        // The soak drill reads the runtime's live tasks from here (the rest from /proc).
        let mut stats = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&path)
            .map_err(|e| format!("{path}: {e}"))?;
        tokio::spawn(async move {
            use std::io::Write as _;
            let metrics = tokio::runtime::Handle::current().metrics();
            let mut tick = tokio::time::interval(Duration::from_secs(1));
            loop {
                tick.tick().await;
                let line = format!(
                    "{} {}\n",
                    messaging_drills::record::now_ns(),
                    metrics.num_alive_tasks()
                );
                if stats.write_all(line.as_bytes()).is_err() {
                    return;
                }
            }
        });
    }
    let mut terminate = signal(SignalKind::terminate()).map_err(|e| e.to_string())?;
    let mut interrupt = signal(SignalKind::interrupt()).map_err(|e| e.to_string())?;
    let shutdown = async move {
        tokio::select! {
            _ = terminate.recv() => {}
            _ = interrupt.recv() => {}
        }
    };

    let rec = record.clone();
    let handler = handler_fn(move |msg: Incoming| {
        let rec = rec.clone();
        async move {
            let tick: Tick = msg.data()?;
            match tick.poison.as_deref() {
                Some("panic") => panic!("poison event {}", msg.event().id()),
                Some("hang") => {
                    // Far past the handler timeout, which cuts it off.
                    tokio::time::sleep(Duration::from_secs(600)).await;
                }
                Some(_) => return Err(HandlerError::permanent("poison event")),
                None => {}
            }
            let id = msg.event().id().to_owned();
            rec.start(&id, &tick.key, tick.seq)
                .map_err(|e| HandlerError::transient(format!("record: {e}")))?;
            tokio::time::sleep(work).await;
            rec.end(&id, &tick.key, tick.seq)
                .map_err(|e| HandlerError::transient(format!("record: {e}")))?;
            Ok::<(), HandlerError>(())
        }
    });
    let options = SubscribeOptions::new(group)
        .ordered(ordered)
        .ack_deadline(deadline);
    let mut builder = broker
        .consumer(&topic, options)
        .concurrency(concurrency)
        .drain_timeout(drain);
    if var("DRILL_POISON_POLICY")? == "1" {
        builder = builder.retry(RetryPolicy {
            max_retries: 1,
            initial_delay: Duration::from_millis(100),
            max_delay: Duration::from_millis(100),
            jitter: false,
            handler_timeout: Some(Duration::from_millis(500)),
            ..RetryPolicy::default()
        });
    }
    let report = match std::env::var("DRILL_REDIS") {
        Ok(redis) => {
            let store = RedisStore::connect(&redis)
                .await
                .map_err(|e| format!("redis: {e}"))?;
            let layer = IdempotencyLayer::new(Arc::new(store))
                .prefix(var("DRILL_IDEMPOTENCY_PREFIX")?)
                .lease(millis("DRILL_LEASE_MS")?);
            builder.build_idempotent(layer, handler).run(shutdown).await
        }
        Err(_) => builder.build(handler).run(shutdown).await,
    }
    .map_err(|e| e.to_string())?;
    record
        .exit(
            report.received,
            report.acked,
            report.abandoned,
            report.redelivered,
        )
        .map_err(|e| format!("record: {e}"))?;
    Ok(())
}
