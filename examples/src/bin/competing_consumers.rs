//! Competing consumers (a task queue): three workers in one group share the work; each task
//! is done once. `cargo run -p messaging-examples --bin competing_consumers`

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::runtime::Consumer;
use messaging_core::{DynPublisher, EventBuilder, Publisher, SubscribeOptions};
use messaging_testkit::MemoryBroker;

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = MemoryBroker::new();
    let dlq: Arc<dyn DynPublisher> = Arc::new(broker.publisher());
    let done: Arc<Mutex<HashMap<u32, &'static str>>> = Arc::default();
    let stop = Arc::new(tokio::sync::Notify::new());
    let mut workers = Vec::new();
    for name in ["worker-a", "worker-b", "worker-c"] {
        let done = done.clone();
        let handler = handler_fn(move |msg: Incoming| {
            let done = done.clone();
            async move {
                let task: u32 = msg.data()?;
                tokio::time::sleep(Duration::from_millis(5)).await; // the work
                done.lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .insert(task, name);
                Ok::<(), HandlerError>(())
            }
        });
        let consumer = Consumer::builder(
            broker.subscriber(),
            dlq.clone(),
            "tasks",
            SubscribeOptions::new("workers"),
        )
        .concurrency(2)
        .build(handler);
        let stop = stop.clone();
        workers.push(tokio::spawn(
            consumer.run(async move { stop.notified().await }),
        ));
    }
    tokio::time::sleep(Duration::from_millis(20)).await; // let the workers subscribe
    let publisher = broker.publisher();
    for task in 0..30u32 {
        publisher
            .publish(
                "tasks",
                EventBuilder::new("scheduler", "task.created")
                    .json(&task)
                    .build()?,
            )
            .await?;
    }
    while done.lock().unwrap_or_else(|e| e.into_inner()).len() < 30 {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    stop.notify_waiters();
    let mut acked = 0;
    for w in workers {
        acked += w.await??.acked;
    }
    let done = done.lock().unwrap_or_else(|e| e.into_inner()).clone();
    let mut per_worker: HashMap<&str, usize> = HashMap::new();
    for worker in done.values() {
        *per_worker.entry(worker).or_default() += 1;
    }
    let mut shares: Vec<_> = per_worker.into_iter().collect();
    shares.sort();
    for (worker, n) in &shares {
        println!("{worker} did {n} tasks");
    }
    println!("30 tasks published, {} done, {acked} acked", done.len());
    if acked != 30 || shares.len() < 2 {
        return Err("tasks were not shared exactly once among the workers".into());
    }
    Ok(())
}
