//! Competing consumers (a task queue): three workers in one group share the work; every task
//! is done. `cargo run -p messaging-examples --bin competing_consumers` (any broker:
//! `MESSAGING_URL`)
//!
//! At-least-once: a task whose worker loses it (on Kafka, a rebalance while the workers join)
//! is done again by another; the example counts such repeats, and fails only if a task is
//! never done.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging::handler::{HandlerError, Incoming, handler_fn};
use messaging::{EventBuilder, Publisher, SubscribeOptions, Subscriber};
use messaging_examples::{Shutdown, broker, fresh, wait_until};

const TASKS: u32 = 30;

type Done = Arc<Mutex<HashMap<u32, Vec<&'static str>>>>;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = broker().await?;
    let topic = fresh("tasks");
    // The group exists (and keeps what is published) before any worker has joined.
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new("workers"))
        .await?;
    let done: Done = Arc::default();
    let stop = Shutdown::new();
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b", "worker-c"] {
        let done = done.clone();
        let handler = handler_fn(move |msg: Incoming| {
            let done = done.clone();
            async move {
                let task: u32 = msg.data()?;
                tokio::time::sleep(Duration::from_millis(20)).await; // the work
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .entry(task)
                    .or_default()
                    .push(name);
                Ok::<(), HandlerError>(())
            }
        });
        let consumer = broker
            .consumer(&topic, SubscribeOptions::new("workers"))
            .concurrency(2)
            .build(handler);
        let stop = stop.clone();
        workers.push(tokio::spawn(consumer.run(stop.signal())));
    }
    println!("3 workers started in group `workers` of {topic}");
    let publisher = broker.publisher();
    for task in 0..TASKS {
        publisher
            .publish(
                &topic,
                EventBuilder::new("scheduler", "task.created")
                    .json(&task)
                    .build()?,
            )
            .await?;
    }
    println!("{TASKS} tasks published");
    wait_until("every task done", Duration::from_secs(60), async || {
        done.lock().unwrap_or_else(|e| e.into_inner()).len() == TASKS as usize
    })
    .await?;
    stop.stop();
    let mut acked = 0;
    for w in workers {
        acked += w.await??.acked;
    }
    let done = done.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut per_worker: HashMap<&str, usize> = HashMap::new();
    for workers in done.values() {
        for worker in workers {
            *per_worker.entry(worker).or_default() += 1;
        }
    }
    let mut shares: Vec<_> = per_worker.into_iter().collect();
    shares.sort();
    for (worker, n) in &shares {
        println!("{worker} did {n} tasks");
    }
    let repeats: usize = done.values().map(|w| w.len() - 1).sum();
    println!(
        "{TASKS} tasks published, {} done, {repeats} done again after a hand-over, {acked} acked",
        done.len()
    );
    if done.len() != TASKS as usize || acked < u64::from(TASKS) {
        return Err("a task was not done".into());
    }
    Ok(())
}
