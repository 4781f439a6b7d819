//! What a publish and a consume emit, on the in-memory broker, by OpenTelemetry's messaging
//! conventions (v1.44.0): span names, kinds, attributes, links and events, and the metrics'
//! names and units. Names are spelled out here, not taken from `semconv`, so a drift there
//! fails these tests.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::middleware::retry::RetryPolicy;
use messaging_core::runtime::{Consumer, ConsumerBuilder, Correlated, RunError, RunReport};
use messaging_core::{
    AttributesReader as _, Delivery as _, DynPublisher, EventBuilder, EventExt as _, Publisher,
    RawMessage, SubscribeOptions, Subscriber as _, Subscription as _,
};
use messaging_testkit::support::{unique, until};
use messaging_testkit::telemetry::{SpanRecord, capture};
use messaging_testkit::{MemoryBroker, MemorySubscriber};

fn one<'a>(spans: &'a [SpanRecord], name: &str) -> &'a SpanRecord {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name:?} span in {spans:#?}");
    found[0]
}

/// A consumer of `topic` on `broker` for group `billing`, dead letters to the same broker.
fn consumer(broker: &MemoryBroker, topic: &str) -> ConsumerBuilder<MemorySubscriber> {
    let dlq: Arc<dyn DynPublisher> = Arc::new(broker.publisher());
    Consumer::builder(
        broker.subscriber(),
        dlq,
        topic,
        SubscribeOptions::new("billing"),
    )
}

/// A consumer run in the background, stopped by [`Running::stop`].
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    run: tokio::task::JoinHandle<Result<RunReport, RunError>>,
}

fn spawn<F, Fut>(run: F) -> Running
where
    F: FnOnce(Pin<Box<dyn Future<Output = ()> + Send>>) -> Fut,
    Fut: Future<Output = Result<RunReport, RunError>> + Send + 'static,
{
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(run(Box::pin(async {
        let _ = stopped.await;
    })));
    Running { stop, run }
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        self.run.await.unwrap().unwrap();
    }
}

/// Waits until a span named `name` has ended.
async fn ended(name: &str, what: &str) {
    assert!(
        until(Duration::from_secs(10), || {
            capture().spans().iter().any(|s| s.name == name)
        })
        .await,
        "{what}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_publish_and_its_processing_are_one_trace_by_the_conventions() {
    let capture = capture();
    let topic = unique("otel-orders");
    let broker = MemoryBroker::new();
    let consumer = consumer(&broker, &topic).build(handler_fn(|_msg: Incoming| async {
        Ok::<(), HandlerError>(())
    }));
    let running = spawn(|stop| consumer.run(stop));
    let event = EventBuilder::new("shop", "order.created")
        .correlation_id("conv-1")
        .json(&7)
        .build()
        .unwrap();
    let id = event.id().to_owned();
    broker.publisher().publish(&topic, event).await.unwrap();
    let ack = format!("ack {topic}");
    ended(&ack, "the delivery is acked").await;
    running.stop().await;

    let spans = capture.spans();
    let send = one(&spans, &format!("send {topic}"));
    assert_eq!(send.kind, "producer");
    for (k, v) in [
        ("messaging.system", "memory"),
        ("messaging.operation.name", "send"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", topic.as_str()),
        ("messaging.message.id", id.as_str()),
        ("messaging.message.conversation_id", "conv-1"),
        ("cloudevents.event_id", id.as_str()),
        ("cloudevents.event_type", "order.created"),
        ("cloudevents.event_source", "shop"),
    ] {
        assert_eq!(send.attr(k), Some(v), "send span {k}: {send:#?}");
    }
    assert_eq!(send.attr("messaging.batch.message_count"), None);

    let process = one(&spans, &format!("process {topic}"));
    assert_eq!(process.kind, "consumer");
    assert_eq!(process.trace_id, send.trace_id, "one trace");
    assert_eq!(
        process.parent_span_id, send.span_id,
        "continues the send span"
    );
    assert_eq!(
        process.links,
        vec![send.context()],
        "links the creation context"
    );
    for (k, v) in [
        ("messaging.system", "memory"),
        ("messaging.operation.name", "process"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", topic.as_str()),
        ("messaging.consumer.group.name", "billing"),
        ("messaging.message.id", id.as_str()),
        ("cloudevents.event_type", "order.created"),
    ] {
        assert_eq!(process.attr(k), Some(v), "process span {k}: {process:#?}");
    }
    assert_eq!(process.attr("error.type"), None);
    assert!(!process.error);

    let settle = one(&spans, &ack);
    assert_eq!(settle.kind, "client");
    assert_eq!(settle.parent_span_id, process.span_id);
    assert_eq!(settle.attr("messaging.operation.type"), Some("settle"));
    assert_eq!(settle.attr("messaging.operation.name"), Some("ack"));

    let metrics = capture.metrics();
    let metric = |name: &str| {
        metrics
            .iter()
            .find(|m| m.name == name)
            .unwrap_or_else(|| panic!("metric {name} in {metrics:#?}"))
    };
    let dest = ("messaging.destination.name", topic.as_str());
    let sent = metric("messaging.client.sent.messages");
    assert_eq!(
        (sent.unit.as_str(), sent.kind.as_str()),
        ("{message}", "counter")
    );
    assert_eq!(
        sent.total(&[
            dest,
            ("messaging.system", "memory"),
            ("messaging.operation.name", "send")
        ]),
        1.0
    );
    let consumed = metric("messaging.client.consumed.messages");
    assert_eq!(consumed.unit, "{message}");
    assert_eq!(
        consumed.total(&[dest, ("messaging.consumer.group.name", "billing")]),
        1.0
    );
    let process = metric("messaging.process.duration");
    assert_eq!(
        (process.unit.as_str(), process.kind.as_str()),
        ("s", "histogram")
    );
    assert_eq!(
        process.total(&[dest, ("messaging.operation.name", "process")]),
        1.0
    );
    let operation = metric("messaging.client.operation.duration");
    assert_eq!(operation.unit, "s");
    assert_eq!(
        operation.total(&[dest, ("messaging.operation.name", "send")]),
        1.0
    );
    assert_eq!(
        operation.total(&[
            dest,
            ("messaging.operation.name", "ack"),
            ("messaging.operation.type", "settle")
        ]),
        1.0
    );
    let latency = metric("messaging_end_to_end_latency_seconds");
    assert_eq!(latency.unit, "s");
    assert_eq!(latency.total(&[("topic", topic.as_str())]), 1.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_and_the_dead_letter_are_events_of_a_failed_process_span() {
    let capture = capture();
    let topic = unique("otel-poison");
    let broker = MemoryBroker::new();
    let consumer = consumer(&broker, &topic)
        .retry(RetryPolicy {
            max_retries: 1,
            initial_delay: Duration::from_millis(1),
            jitter: false,
            ..RetryPolicy::default()
        })
        .build(handler_fn(|_msg: Incoming| async {
            Err::<(), _>(HandlerError::transient("the database is down"))
        }));
    let running = spawn(|stop| consumer.run(stop));
    let event = EventBuilder::new("shop", "order.created")
        .json(&1)
        .build()
        .unwrap();
    broker.publisher().publish(&topic, event).await.unwrap();
    let name = format!("process {topic}");
    assert!(
        until(Duration::from_secs(10), || {
            capture
                .spans()
                .iter()
                .any(|s| s.name == name && s.events.iter().any(|e| e == "dead-lettered"))
        })
        .await,
        "a process span that dead-letters"
    );
    running.stop().await;

    let spans = capture.spans();
    let failed: Vec<_> = spans
        .iter()
        .filter(|s| s.name == name && s.events.iter().any(|e| e == "dead-lettered"))
        .collect();
    let failed = failed[0];
    assert!(failed.error, "status Error: {failed:#?}");
    assert_eq!(failed.attr("error.type"), Some("retries-exhausted"));
    assert!(
        failed.events.iter().any(|e| e == "retrying"),
        "a retry event: {failed:#?}"
    );
    let dlq_send = one(&spans, &format!("send {topic}.dlq"));
    assert_eq!(
        dlq_send.trace_id, failed.trace_id,
        "the dead letter stays in the trace"
    );
    let process = capture
        .metrics()
        .into_iter()
        .find(|m| m.name == "messaging.process.duration")
        .unwrap();
    assert_eq!(
        process.total(&[
            ("messaging.destination.name", topic.as_str()),
            ("error.type", "retries-exhausted")
        ]),
        1.0
    );
}

/// A handler that publishes (through `Correlated`, or with `follow_up`) hands on its own
/// context: the event's `traceparent` names the follow-up's send span, a child of the process
/// span, so the next consumer continues the same trace through this hop.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_a_handler_publishes_continues_the_trace_through_its_send_span() {
    let capture = capture();
    let topic = unique("otel-in");
    let out = format!("{topic}-out");
    let broker = MemoryBroker::new();
    let mut invoices = broker
        .subscriber()
        .subscribe(&out, SubscribeOptions::new("audit"))
        .await
        .unwrap();
    let publisher = Correlated(broker.publisher());
    let target = out.clone();
    let handler = handler_fn(move |msg: Incoming| {
        let (publisher, target) = (publisher.clone(), target.clone());
        async move {
            let correlated = EventBuilder::new("billing", "invoice.issued")
                .json(&1)
                .build()?;
            publisher.publish(&target, correlated).await?;
            let follow_up = msg.follow_up("billing", "invoice.sent").json(&2).build()?;
            publisher.publish(&target, follow_up).await?;
            Ok::<(), HandlerError>(())
        }
    });
    let consumer = consumer(&broker, &topic).build(handler);
    let running = spawn(|stop| consumer.run(stop));
    let order = EventBuilder::new("shop", "order.created")
        .json(&7)
        .build()
        .unwrap();
    broker.publisher().publish(&topic, order).await.unwrap();
    let mut received = Vec::new();
    for _ in 0..2 {
        let d = tokio::time::timeout(Duration::from_secs(10), invoices.recv())
            .await
            .expect("the handler publishes twice")
            .unwrap();
        received.push(d.event().unwrap().clone());
        d.ack().await.unwrap();
    }
    let ack = format!("ack {topic}");
    ended(&ack, "the order is acked").await;
    running.stop().await;

    let spans = capture.spans();
    let process = one(&spans, &format!("process {topic}"));
    let sends: Vec<_> = spans
        .iter()
        .filter(|s| s.name == format!("send {out}"))
        .collect();
    assert_eq!(sends.len(), 2, "{spans:#?}");
    for event in &received {
        let tp = event.traceparent().expect("a traceparent");
        let send = sends
            .iter()
            .find(|s| tp == format!("00-{}-{}-01", s.trace_id, s.span_id))
            .unwrap_or_else(|| panic!("{} names its send span: {tp} in {sends:#?}", event.ty()));
        assert_eq!(
            send.parent_span_id, process.span_id,
            "sent from the process span"
        );
        assert_eq!(send.trace_id, process.trace_id);
        assert!(
            send.links.is_empty(),
            "not linked to its own parent: {send:#?}"
        );
    }
}

/// A message the handler never sees still has its process span, failed as `undecodable`,
/// with the dead letter's send span under it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_undecodable_message_has_a_failed_process_span() {
    let capture = capture();
    let topic = unique("otel-garbled");
    let broker = MemoryBroker::new();
    let consumer = consumer(&broker, &topic).build(handler_fn(|_msg: Incoming| async {
        Ok::<(), HandlerError>(())
    }));
    let running = spawn(|stop| consumer.run(stop));
    tokio::time::sleep(Duration::from_millis(50)).await;
    broker.publish_raw(
        &topic,
        RawMessage {
            content_type: None,
            headers: vec![],
            body: b"not a cloudevent".to_vec(),
        },
    );
    let ack = format!("ack {topic}");
    ended(&ack, "the garbled message is dead-lettered and acked").await;
    running.stop().await;
    let spans = capture.spans();
    let process = one(&spans, &format!("process {topic}"));
    assert!(process.error);
    assert_eq!(process.attr("error.type"), Some("undecodable"));
    assert!(
        process.events.iter().any(|e| e == "dead-lettered"),
        "{process:#?}"
    );
    let dlq_send = one(&spans, &format!("send {topic}.dlq"));
    assert_eq!(dlq_send.parent_span_id, process.span_id);
    assert_eq!(one(&spans, &ack).parent_span_id, process.span_id);
}
