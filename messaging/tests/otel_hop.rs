//! One trace across a real hop, on every real broker: a producer process publishes, this
//! process consumes, and both collect what they emit with OpenTelemetry's in-memory
//! exporters. The producer is this test binary run again (`child_producer`, ignored unless a
//! parent starts it), which prints its spans and metrics as JSON. The attribute and metric
//! names are spelled out as OpenTelemetry's messaging conventions v1.44.0 give them, so a
//! drift fails here. Needs the brokers of `scripts/brokers/*.sh`.

use std::process::Command;
use std::sync::Arc;
use std::time::Duration;

use messaging::handler::{HandlerError, Incoming, handler_fn};
use messaging::{Broker, EventBuilder, SubscribeOptions, Subscriber as _};
use messaging_testkit::support::{TestBroker, unique, until};
use messaging_testkit::telemetry::{MetricRecord, SpanRecord, capture};
use tokio::sync::Notify;

const URL_VAR: &str = "MESSAGING_OTEL_HOP_URL";
const TOPIC_VAR: &str = "MESSAGING_OTEL_HOP_TOPIC";
const SPANS: &str = "OTEL-HOP-SPANS ";
const METRICS: &str = "OTEL-HOP-METRICS ";
const GROUP: &str = "hop";

/// The producer process: publishes one event to `$MESSAGING_OTEL_HOP_TOPIC` on
/// `$MESSAGING_OTEL_HOP_URL` and prints its spans and metrics.
#[tokio::test]
#[ignore = "the producer process of the cross-process tests below, which start it"]
async fn child_producer() {
    let url = std::env::var(URL_VAR).expect("started by a cross-process test");
    let topic = std::env::var(TOPIC_VAR).expect("started by a cross-process test");
    let capture = capture();
    let broker = Broker::connect(&url)
        .await
        .expect("the broker is reachable");
    let event = EventBuilder::new("shop", "order.created")
        .ordering_key("ORD-1")
        .correlation_id("conv-1")
        .json(&serde_json::json!({"orderId": "ORD-1"}))
        .build()
        .unwrap();
    broker.publisher().publish_dyn(&topic, event).await.unwrap();
    let spans: Vec<SpanRecord> = capture
        .spans()
        .into_iter()
        .filter(|s| s.name.ends_with(&topic))
        .collect();
    println!("{SPANS}{}", serde_json::to_string(&spans).unwrap());
    println!(
        "{METRICS}{}",
        serde_json::to_string(&capture.metrics()).unwrap()
    );
}

/// What the producer process printed.
fn run_producer(url: &str, topic: &str) -> (Vec<SpanRecord>, Vec<MetricRecord>) {
    let out = Command::new(std::env::current_exe().unwrap())
        .args(["child_producer", "--exact", "--ignored", "--nocapture"])
        .env(URL_VAR, url)
        .env(TOPIC_VAR, topic)
        .output()
        .expect("the test binary runs again");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "the producer process failed: {}\n{stdout}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    let line = |prefix: &str| {
        stdout
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .unwrap_or_else(|| panic!("no {prefix:?} line in {stdout}"))
            .to_owned()
    };
    (
        serde_json::from_str(&line(SPANS)).unwrap(),
        serde_json::from_str(&line(METRICS)).unwrap(),
    )
}

fn one<'a>(spans: &'a [SpanRecord], name: &str) -> &'a SpanRecord {
    let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
    assert_eq!(found.len(), 1, "one {name:?} span in {spans:#?}");
    found[0]
}

fn metric<'a>(metrics: &'a [MetricRecord], name: &str) -> &'a MetricRecord {
    metrics
        .iter()
        .find(|m| m.name == name)
        .unwrap_or_else(|| panic!("metric {name} in {metrics:#?}"))
}

/// What differs per broker.
struct Expect {
    broker: TestBroker,
    /// `messaging.system` of the producer and of the consumer (SNS in, SQS out).
    send_system: &'static str,
    receive_system: &'static str,
}

async fn one_trace_across_processes(expect: Expect) {
    let capture = capture();
    let url = expect.broker.url();
    let broker = Broker::connect(&url)
        .await
        .unwrap_or_else(|e| expect.broker.unreachable(e));
    let topic = unique("otel-hop");
    // The group exists before the producer publishes, so it keeps the event.
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new(GROUP))
        .await
        .unwrap();
    let (sent_spans, sent_metrics) = run_producer(&url, &topic);

    let handled = Arc::new(Notify::new());
    let signal = handled.clone();
    let consumer = broker
        .consumer(&topic, SubscribeOptions::new(GROUP))
        .build(handler_fn(move |_msg: Incoming| {
            let signal = signal.clone();
            async move {
                signal.notify_one();
                Ok::<(), HandlerError>(())
            }
        }));
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async {
        let _ = stopped.await;
    }));
    tokio::time::timeout(Duration::from_secs(60), handled.notified())
        .await
        .expect("the event is handled within 60 s");
    let ack = format!("ack {topic}");
    assert!(
        until(Duration::from_secs(10), || capture
            .spans()
            .iter()
            .any(|s| s.name == ack))
        .await,
        "the delivery is acked"
    );
    let _ = stop.send(());
    run.await.unwrap().unwrap();

    // The producer's side.
    let send = one(&sent_spans, &format!("send {topic}"));
    assert_eq!(send.kind, "producer");
    for (k, v) in [
        ("messaging.system", expect.send_system),
        ("messaging.operation.name", "send"),
        ("messaging.operation.type", "send"),
        ("messaging.destination.name", topic.as_str()),
        ("messaging.message.conversation_id", "conv-1"),
        ("cloudevents.event_type", "order.created"),
        ("cloudevents.event_source", "shop"),
        ("server.address", "127.0.0.1"),
    ] {
        assert_eq!(send.attr(k), Some(v), "send span {k}: {send:#?}");
    }
    assert!(send.attr("server.port").is_some(), "{send:#?}");
    let id = send.attr("messaging.message.id").expect("a message id");
    let sent = metric(&sent_metrics, "messaging.client.sent.messages");
    assert_eq!(
        (sent.unit.as_str(), sent.kind.as_str()),
        ("{message}", "counter")
    );
    let dest = ("messaging.destination.name", topic.as_str());
    assert_eq!(
        sent.total(&[dest, ("messaging.system", expect.send_system)]),
        1.0
    );
    let send_duration = metric(&sent_metrics, "messaging.client.operation.duration");
    assert_eq!(send_duration.unit, "s");
    assert_eq!(
        send_duration.total(&[dest, ("messaging.operation.name", "send")]),
        1.0
    );

    // The consumer's side: one trace, linked to the producer's span.
    let spans = capture.spans();
    let process = one(&spans, &format!("process {topic}"));
    assert_eq!(process.kind, "consumer");
    assert_eq!(process.trace_id, send.trace_id, "one trace across the hop");
    assert_eq!(process.parent_span_id, send.span_id);
    assert!(
        process.links.contains(&send.context()),
        "process links the send span: {process:#?}"
    );
    for (k, v) in [
        ("messaging.system", expect.receive_system),
        ("messaging.operation.name", "process"),
        ("messaging.operation.type", "process"),
        ("messaging.destination.name", topic.as_str()),
        ("messaging.consumer.group.name", GROUP),
        ("cloudevents.event_id", id),
        ("cloudevents.event_type", "order.created"),
    ] {
        assert_eq!(process.attr(k), Some(v), "process span {k}: {process:#?}");
    }
    match expect.broker {
        TestBroker::Kafka => {
            assert_eq!(send.attr("messaging.kafka.message.key"), Some("ORD-1"));
            for k in [
                "messaging.destination.partition.id",
                "messaging.kafka.offset",
            ] {
                assert!(send.attr(k).is_some(), "send span {k}: {send:#?}");
                assert_eq!(process.attr(k), send.attr(k), "process span {k}");
            }
        }
        TestBroker::RabbitMq => {
            assert!(
                process
                    .attr("messaging.rabbitmq.message.delivery_tag")
                    .is_some(),
                "{process:#?}"
            );
        }
        TestBroker::Sqs => {
            let receive: Vec<_> = spans
                .iter()
                .filter(|s| {
                    s.name == format!("receive {topic}") && s.links.contains(&send.context())
                })
                .collect();
            assert_eq!(
                receive.len(),
                1,
                "one receive span links the message: {spans:#?}"
            );
            assert_eq!(receive[0].kind, "client");
            assert_eq!(receive[0].attr("messaging.operation.type"), Some("receive"));
            assert_eq!(receive[0].attr("messaging.batch.message_count"), Some("1"));
        }
    }
    let settle = one(&spans, &ack);
    assert_eq!(settle.kind, "client");
    assert_eq!(settle.parent_span_id, process.span_id);
    assert_eq!(settle.attr("messaging.operation.type"), Some("settle"));

    let metrics = capture.metrics();
    let consumed = metric(&metrics, "messaging.client.consumed.messages");
    assert_eq!(consumed.unit, "{message}");
    assert_eq!(
        consumed.total(&[
            dest,
            ("messaging.consumer.group.name", GROUP),
            ("messaging.system", expect.receive_system)
        ]),
        1.0
    );
    let process = metric(&metrics, "messaging.process.duration");
    assert_eq!(
        (process.unit.as_str(), process.kind.as_str()),
        ("s", "histogram")
    );
    assert_eq!(
        process.total(&[dest, ("messaging.operation.name", "process")]),
        1.0
    );
    let settle = metric(&metrics, "messaging.client.operation.duration");
    assert_eq!(
        settle.total(&[
            dest,
            ("messaging.operation.name", "ack"),
            ("messaging.operation.type", "settle")
        ]),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_one_trace_across_processes() {
    one_trace_across_processes(Expect {
        broker: TestBroker::Kafka,
        send_system: "kafka",
        receive_system: "kafka",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_one_trace_across_processes() {
    one_trace_across_processes(Expect {
        broker: TestBroker::RabbitMq,
        send_system: "rabbitmq",
        receive_system: "rabbitmq",
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_one_trace_across_processes() {
    one_trace_across_processes(Expect {
        broker: TestBroker::Sqs,
        send_system: "aws.sns",
        receive_system: "aws_sqs",
    })
    .await;
}
