//! The `messaging` CLI publishes, tails, inspects, replays, reads lag and makes requests on
//! every broker. Real brokers run the built binary (`scripts/brokers/*.sh` start them; a
//! broker that is down fails its test with the CLI's connection error); the in-memory broker,
//! which lives in one process, runs the same scenario through `main_with` on a named
//! `memory://` broker shared with the test.

use std::collections::HashSet;
use std::process::Stdio;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use messaging::dead_letter::DeadLetterMetadata;
use messaging::handler::{HandlerError, Incoming, handler_fn};
use messaging::middleware::retry::RetryPolicy;
use messaging::request::reply;
use messaging::{
    AttributesReader, Broker, Delivery, Event, EventBuilder, EventExt, Publisher, SubscribeOptions,
    Subscriber, Subscription,
};
use messaging_testkit::support::{TestBroker, unique};

struct Output {
    code: u8,
    stdout: String,
    stderr: String,
}

impl std::fmt::Debug for Output {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "exit {}\n--- stdout\n{}--- stderr\n{}",
            self.code, self.stdout, self.stderr
        )
    }
}

/// How the scenario runs the CLI: the binary, or in-process for the in-memory broker.
#[derive(Clone)]
enum Cli {
    Binary(String),
    InProcess(String),
}

impl Cli {
    async fn run(&self, args: &[&str], stdin: &str) -> Output {
        match self {
            Cli::Binary(url) => {
                let mut cmd = std::process::Command::new(env!("CARGO_BIN_EXE_messaging"));
                cmd.arg("--url")
                    .arg(url)
                    .args(args)
                    .env_remove("MESSAGING_URL")
                    .env_remove("MESSAGING_CONFIG")
                    .stdin(Stdio::piped())
                    .stdout(Stdio::piped())
                    .stderr(Stdio::piped());
                let stdin = stdin.to_owned();
                tokio::task::spawn_blocking(move || {
                    let mut child = cmd.spawn().expect("the CLI starts");
                    let mut input = child.stdin.take().expect("piped");
                    std::io::Write::write_all(&mut input, stdin.as_bytes()).unwrap();
                    drop(input);
                    let out = child.wait_with_output().unwrap();
                    Output {
                        code: out.status.code().map_or(255, |c| c as u8),
                        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
                        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
                    }
                })
                .await
                .unwrap()
            }
            Cli::InProcess(url) => {
                let mut argv = vec!["messaging", "--url", url.as_str()];
                argv.extend_from_slice(args);
                let (mut out, mut err) = (Vec::new(), Vec::new());
                let code = messaging_cli::main_with(
                    argv.into_iter().map(Into::into),
                    &mut stdin.as_bytes(),
                    &mut out,
                    &mut err,
                )
                .await;
                Output {
                    code,
                    stdout: String::from_utf8_lossy(&out).into_owned(),
                    stderr: String::from_utf8_lossy(&err).into_owned(),
                }
            }
        }
    }

    async fn ok(&self, args: &[&str], stdin: &str) -> Output {
        let out = self.run(args, stdin).await;
        assert_eq!(out.code, 0, "messaging {args:?}: {out:?}");
        out
    }
}

/// A stop switch and the shutdown future it ends (also when first polled after the stop, as
/// by a consumer still joining its group; `Notify::notify_waiters` would miss that one).
fn shutdown() -> (
    tokio::sync::watch::Sender<bool>,
    impl Future<Output = ()> + Send + 'static,
) {
    let (tx, mut rx) = tokio::sync::watch::channel(false);
    (tx, async move {
        let _ = rx.wait_for(|stopped| *stopped).await;
    })
}

fn events(stdout: &str) -> Vec<Event> {
    stdout
        .lines()
        .map(|l| {
            serde_json::from_str::<Event>(l)
                .unwrap_or_else(|e| panic!("not CloudEvents JSON ({e}): {l}"))
        })
        .collect()
}

/// Waits (up to 60 s) until `cli dlq depth` reports `want`.
async fn depth_becomes(cli: &Cli, dlq: &str, want: u64) {
    let mut last = String::new();
    for _ in 0..120 {
        last = cli.ok(&["dlq", "depth", dlq], "").await.stdout;
        if last.trim() == want.to_string() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("dlq depth of {dlq} never became {want} (last {last:?})");
}

/// Waits until `cli lag` reports `want` for the group.
async fn lag_becomes(cli: &Cli, topic: &str, group: &str, want: u64) {
    let mut last = None;
    for _ in 0..60 {
        let out = cli.run(&["lag", topic, "--group", group], "").await;
        if out.code == 0 && out.stdout.lines().next() == Some(&format!("{topic}\t{group}\t{want}"))
        {
            return;
        }
        last = Some(out);
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    panic!("lag of {topic}/{group} never became {want}: {last:?}");
}

async fn scenario(broker: Broker, cli: Cli) {
    // --- publish (flags and stdin) and tail
    let topic = unique("cli");
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new("tail"))
        .await
        .unwrap();
    let out = cli
        .ok(
            &[
                "publish",
                &topic,
                "--type",
                "order.created",
                "--source",
                "shop",
                "--key",
                "ORD-1",
                "--data",
                r#"{"orderId":"ORD-1","amount":99.99}"#,
                "--extension",
                "tenant=acme",
            ],
            "",
        )
        .await;
    let first_id = out.stdout.trim().to_owned();
    assert!(!first_id.is_empty(), "{out:?}");
    let stdin = concat!(
        r#"{"specversion":"1.0","id":"in-1","source":"batch","type":"order.created","datacontenttype":"application/json","data":{"orderId":"ORD-2"}}"#,
        "\n",
        r#"{"specversion":"1.0","id":"in-2","source":"batch","type":"order.cancelled","data":{"orderId":"ORD-3"}}"#,
        "\n"
    );
    let out = cli
        .ok(&["publish", &topic, "--mode", "structured"], stdin)
        .await;
    assert_eq!(out.stdout.lines().collect::<Vec<_>>(), ["in-1", "in-2"]);

    let out = cli
        .ok(
            &[
                "consume",
                &topic,
                "--group",
                "tail",
                "--max",
                "3",
                "--timeout",
                "60s",
            ],
            "",
        )
        .await;
    let got = events(&out.stdout);
    let ids: HashSet<&str> = got.iter().map(|e| e.id()).collect();
    assert_eq!(ids, HashSet::from([first_id.as_str(), "in-1", "in-2"]));
    let first = got.iter().find(|e| e.id() == first_id).unwrap();
    assert_eq!(first.ty(), "order.created");
    assert_eq!(first.ordering_key(), Some("ORD-1"));
    assert_eq!(first.extension_str("tenant"), Some("acme"));
    let data: serde_json::Value = first.data_json().unwrap();
    assert_eq!(data["orderId"], "ORD-1");
    lag_becomes(&cli, &topic, "tail", 0).await;

    // --- dead letters: a consumer that rejects every order
    let orders = unique("cli-orders");
    let dlq = format!("{orders}.dlq");
    for group in ["billing", "audit"] {
        broker
            .subscriber()
            .declare(&orders, SubscribeOptions::new(group))
            .await
            .unwrap();
    }
    let (stop, s) = shutdown();
    let consumer = broker
        .consumer(&orders, SubscribeOptions::new("billing"))
        .retry(RetryPolicy {
            max_retries: 0,
            ..RetryPolicy::default()
        })
        .build(handler_fn(|_: Incoming| async {
            Err::<(), _>(HandlerError::permanent("unsupported currency XXX"))
        }));
    let run = tokio::spawn(consumer.run(s));
    for n in 1..=2 {
        cli.ok(
            &[
                "publish",
                &orders,
                "--type",
                "order.created",
                "--id",
                &format!("bad-{n}"),
                "--data",
                "{}",
            ],
            "",
        )
        .await;
    }
    depth_becomes(&cli, &dlq, 2).await;
    stop.send_replace(true);
    run.await.unwrap().unwrap();

    let alert = cli
        .run(&["dlq", "depth", &dlq, "--fail-above", "0"], "")
        .await;
    assert_eq!(alert.code, 5, "{alert:?}");
    assert!(alert.stderr.contains("2 dead letters"), "{alert:?}");

    let table = cli
        .ok(
            &["dlq", "inspect", &dlq, "--max", "2", "--timeout", "60s"],
            "",
        )
        .await
        .stdout;
    let rows: Vec<&str> = table.lines().collect();
    assert!(
        rows[0].starts_with("ID") && rows[0].contains("REASON"),
        "{table}"
    );
    assert_eq!(rows.len(), 3, "{table}");
    for row in &rows[1..] {
        assert!(row.starts_with("bad-"), "{table}");
        assert!(row.contains("permanent-failure"), "{table}");
        assert!(row.contains(&format!("{orders}/billing")), "{table}");
        assert!(row.contains("unsupported currency XXX"), "{table}");
    }
    let inspected = cli
        .ok(&["dlq", "inspect", &dlq, "--json", "--timeout", "5s"], "")
        .await;
    assert_eq!(events(&inspected.stdout).len(), 2, "{inspected:?}");
    for e in events(&inspected.stdout) {
        let m = DeadLetterMetadata::from_event(&e).expect("dead-letter metadata");
        assert_eq!(m.reason, "permanent-failure");
    }
    // What `inspect` gave back is ready again once the broker has applied the returns (a
    // RabbitMQ quorum queue applies them asynchronously, so an immediate count can miss them).
    depth_becomes(&cli, &dlq, 2).await;

    let dry = cli
        .ok(
            &[
                "dlq",
                "replay",
                &dlq,
                "--dry-run",
                "--limit",
                "2",
                "--idle",
                "60s",
            ],
            "",
        )
        .await;
    assert!(
        dry.stdout.starts_with("would replay 2, 0 skipped"),
        "{dry:?}"
    );
    let none = cli
        .ok(
            &[
                "dlq",
                "replay",
                &dlq,
                "--type",
                "order.shipped",
                "--idle",
                "5s",
            ],
            "",
        )
        .await;
    assert!(none.stdout.starts_with("replayed 0, 2 skipped"), "{none:?}");
    let one = cli
        .ok(
            &[
                "dlq", "replay", &dlq, "--id", "bad-2", "--limit", "1", "--idle", "60s",
            ],
            "",
        )
        .await;
    assert!(one.stdout.starts_with("replayed 1,"), "{one:?}");
    depth_becomes(&cli, &dlq, 1).await;
    // The replayed order is back on its topic, with its history.
    let mut audit = broker
        .subscriber()
        .subscribe(&orders, SubscribeOptions::new("audit"))
        .await
        .unwrap();
    let mut replayed = None;
    for _ in 0..3 {
        let d = tokio::time::timeout(Duration::from_secs(60), audit.recv())
            .await
            .expect("audit group gets the orders")
            .unwrap();
        let e = d.event().unwrap().clone();
        d.ack().await.unwrap();
        if let Some(m) = DeadLetterMetadata::from_event(&e) {
            replayed = Some((e.id().to_owned(), m.replays));
        }
    }
    assert_eq!(replayed, Some(("bad-2".to_owned(), 1)));
    audit.close().await.unwrap();

    // --- request-reply
    let prices = unique("cli-prices");
    broker
        .subscriber()
        .declare(&prices, SubscribeOptions::new("pricing"))
        .await
        .unwrap();
    let publisher = broker.publisher();
    let (stop, s) = shutdown();
    let answered = Arc::new(AtomicBool::new(false));
    let a = answered.clone();
    let server = broker
        .consumer(&prices, SubscribeOptions::new("pricing"))
        .build(handler_fn(move |msg: Incoming| {
            let (out, answered) = (publisher.clone(), a.clone());
            async move {
                let sku: String = msg.data()?;
                reply(
                    &*out,
                    msg.event(),
                    EventBuilder::new("pricing", "price.quoted")
                        .json(&serde_json::json!({"sku": sku, "price": 99.99})),
                )
                .await
                .map_err(HandlerError::transient)?;
                answered.store(true, Ordering::SeqCst);
                Ok::<(), HandlerError>(())
            }
        }));
    let server = tokio::spawn(server.run(s));
    let out = cli
        .ok(
            &[
                "request",
                &prices,
                "--type",
                "price.requested",
                "--data",
                r#""ORD-5678""#,
                "--timeout",
                "60s",
            ],
            "",
        )
        .await;
    let answer = &events(&out.stdout)[0];
    assert_eq!(answer.ty(), "price.quoted");
    let data: serde_json::Value = answer.data_json().unwrap();
    assert_eq!(data["sku"], "ORD-5678");
    assert!(answered.load(Ordering::SeqCst));
    stop.send_replace(true);
    server.await.unwrap().unwrap();

    let unanswered = cli
        .run(
            &[
                "request",
                &unique("cli-nobody"),
                "--type",
                "stock.requested",
                "--timeout",
                "1s",
            ],
            "",
        )
        .await;
    assert_eq!(unanswered.code, 4, "{unanswered:?}");
}

async fn on_real_broker(url: String) {
    let broker = Broker::connect(&url)
        .await
        .unwrap_or_else(|e| panic!("broker must be running (scripts/brokers): {e}"));
    scenario(broker, Cli::Binary(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory() {
    let url = unique("memory://cli");
    let broker = Broker::connect(&url).await.unwrap();
    scenario(broker, Cli::InProcess(url)).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka() {
    on_real_broker(TestBroker::Kafka.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq() {
    on_real_broker(TestBroker::RabbitMq.url()).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs() {
    on_real_broker(TestBroker::Sqs.url()).await;
}

#[tokio::test]
async fn bad_input_and_unreachable_brokers_have_clear_errors_and_exit_codes() {
    let cli = Cli::Binary("memory://".into());
    let malformed = cli
        .run(&["publish", "t"], "{\"specversion\": \"1.0\", oops}\n")
        .await;
    assert_eq!(malformed.code, 2, "{malformed:?}");
    assert!(
        malformed
            .stderr
            .contains("stdin line 1 is not a CloudEvent"),
        "{malformed:?}"
    );
    let nothing = cli.run(&["publish", "t"], "").await;
    assert_eq!(nothing.code, 2, "{nothing:?}");
    let bad_data = cli
        .run(&["publish", "t", "--type", "x", "--data", "{nope"], "")
        .await;
    assert_eq!(bad_data.code, 2, "{bad_data:?}");
    assert!(
        bad_data.stderr.contains("--data is not valid JSON"),
        "{bad_data:?}"
    );

    let bad_url = Cli::Binary("rabbit://localhost".into())
        .run(&["lag", "t", "--group", "g"], "")
        .await;
    assert_eq!(bad_url.code, 2, "{bad_url:?}");
    assert!(
        bad_url.stderr.contains("unknown broker scheme \"rabbit\""),
        "{bad_url:?}"
    );

    for url in [
        "amqp://guest:hunter2@127.0.0.1:1/%2f",
        "kafka://127.0.0.1:1",
        "sqs://?endpoint=http://127.0.0.1:1&call_timeout=3s",
    ] {
        let down = Cli::Binary(url.into())
            .run(&["dlq", "depth", "orders.dlq"], "")
            .await;
        assert_eq!(down.code, 3, "{url}: {down:?}");
        assert!(down.stderr.contains("cannot connect to"), "{url}: {down:?}");
        assert!(!down.stderr.contains("hunter2"), "{url}: {down:?}");
    }

    let usage = cli.run(&["consume", "t"], "").await;
    assert_eq!(usage.code, 2, "--group is required: {usage:?}");
}

/// Refused credentials, a virtual host without access and a certificate that does not verify
/// each exit 3 ("unreachable or refused") at once, on RabbitMQ, Kafka and SQS, with a message
/// that names the broker and what failed but never the password.
#[cfg(feature = "tls")]
#[tokio::test]
async fn refused_credentials_access_and_tls_exit_3_without_the_secret() {
    let secret = format!("cli-secret-{}", unique("pw").replace('-', ""));
    use messaging_testkit::support::{SECURE_SQS_ENDPOINT, secure_sqs_keys};
    let ca = messaging_testkit::support::tls_file("ca.pem");
    let ca = ca.display();
    let (key, _) = secure_sqs_keys("app");
    let cases = [
        (
            format!("amqp://guest:{secret}@127.0.0.1:5672/%2f"),
            "authentication to rabbitmq",
        ),
        (
            format!("amqps://guest:{secret}@localhost:5671/messaging-secure?tls_ca_file={ca}"),
            "authentication to rabbitmq",
        ),
        (
            "amqps://guest:guest@localhost:5671/messaging-secure?tls_ca_file=CA"
                .replace("CA", &ca.to_string()),
            "refused access: protocol error: AMQP hard error: NOT-ALLOWED",
        ),
        (
            format!("amqps://messaging-app:{secret}@localhost:5671/messaging-secure"),
            "TLS with rabbitmq",
        ),
        (
            format!(
                "kafkas://messaging-app:{secret}@localhost:9093?sasl.mechanism=SCRAM-SHA-512&tls_ca_file={ca}"
            ),
            "authentication to kafka at kafkas://messaging-app:***@localhost:9093",
        ),
        (
            format!("kafkas://messaging-app:{secret}@localhost:9093?sasl.mechanism=SCRAM-SHA-512"),
            "TLS with kafka at kafkas://messaging-app:***@localhost:9093",
        ),
        (
            format!(
                "sqs://{key}:{secret}@us-east-1?endpoint={SECURE_SQS_ENDPOINT}&tls_ca_file={ca}"
            ),
            "authentication to sqs",
        ),
        (
            format!("sqs://{key}:{secret}@us-east-1?endpoint={SECURE_SQS_ENDPOINT}"),
            "TLS with sqs",
        ),
    ];
    for (url, says) in cases {
        let started = std::time::Instant::now();
        let out = Cli::Binary(url.clone())
            .run(&["dlq", "depth", "orders.dlq"], "")
            .await;
        assert_eq!(out.code, 3, "{url}: {out:?}");
        assert!(out.stderr.contains(says), "{url}: {out:?}");
        assert!(
            !out.stderr.contains(&secret) && !out.stdout.contains(&secret),
            "{out:?}"
        );
        assert!(
            started.elapsed() < Duration::from_secs(15),
            "{url}: took {:?}",
            started.elapsed()
        );
    }
}

/// Messages that are not CloudEvents at the head of a group do not hide the events behind them:
/// `consume --max 1` skips them without holding them (they go back to the group), and
/// `--dead-letter` moves them to the dead-letter topic as the consumer runtime would.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn undecodable_messages_at_the_head_do_not_hide_events() {
    let url = unique("memory://cli-undecodable");
    let broker = Broker::connect(&url).await.unwrap();
    let memory = broker.as_memory().expect("memory broker").clone();
    let cli = Cli::InProcess(url);
    let topic = unique("cli-junk");
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new("g"))
        .await
        .unwrap();
    let junk = |i: usize| messaging::RawMessage {
        content_type: Some("text/plain".into()),
        headers: Vec::new(),
        body: format!("not an event {i}").into_bytes(),
    };
    for round in 0..2 {
        for i in 0..5 {
            memory.publish_raw(&topic, junk(i));
        }
        let event = EventBuilder::new("shop", "order.created")
            .id(format!("valid-{round}"))
            .json(&round)
            .build()
            .unwrap();
        broker.publisher().publish(&topic, event).await.unwrap();
        let mut args = vec![
            "consume",
            topic.as_str(),
            "--group",
            "g",
            "--max",
            "1",
            "--timeout",
            "5s",
        ];
        if round == 1 {
            args.push("--dead-letter");
        }
        let out = cli.ok(&args, "").await;
        let got = events(&out.stdout);
        assert_eq!(got.len(), 1, "{out:?}");
        assert_eq!(got[0].id(), format!("valid-{round}"));
        assert!(
            out.stderr.contains("5 undecodable message(s)"),
            "says how many were skipped: {out:?}"
        );
    }
    // Round 1 moved its five (and round 0's five, handed out again) to the dead-letter topic.
    let out = cli
        .ok(
            &[
                "dlq",
                "inspect",
                &format!("{topic}.dlq"),
                "--json",
                "--timeout",
                "2s",
            ],
            "",
        )
        .await;
    let dead = events(&out.stdout);
    assert!(
        dead.len() >= 5 && dead.iter().all(|e| e.ty() == "messaging.undecodable"),
        "{out:?}"
    );
}
