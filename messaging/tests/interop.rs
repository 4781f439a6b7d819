//! CloudEvents interoperability with another language's official SDK, on the real brokers.
//!
//! `tests/interop/peer.py` runs the official CloudEvents Python SDK (`cloudevents` 2.2) with
//! ordinary clients (confluent-kafka, pika, boto3), from the venv `scripts/brokers/
//! python-interop.sh` makes. It publishes the same events in every form the bindings allow —
//! binary and structured mode, the AMQP binding's native types, the `ce-` RabbitMQ binding,
//! structured JSON with no content type at all — and our consumers must read each exactly:
//! every attribute, extension type and data kind (JSON, text, binary). The other way, it reads
//! what our publishers send in both modes with the SDK's decoders, and must see the same.
//!
//! Extension types survive where the form carries them (structured mode, native AMQP types);
//! string-only headers (Kafka, `ce-` headers, SQS attributes) carry their string form, which
//! is what both sides must then read. The Python SDK writes booleans there as `True`/`False`.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Duration;

use messaging::{
    AttributesReader, Broker, ContentMode, Data, Delivery, Event, EventBuilder, ExtensionValue,
    Publisher, StartFrom, SubscribeOptions, Subscriber, Subscription,
};
use messaging_testkit::support::TestBroker;
use serde_json::{Value, json};

fn python() -> PathBuf {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(std::env::var_os("HOME").expect("HOME")).join(".cache"));
    let python = base.join("messaging-brokers/interop-venv/bin/python");
    assert!(
        python.exists(),
        "the interop venv is missing ({}): run scripts/brokers/python-interop.sh",
        python.display()
    );
    python
}

/// Runs the Python peer; its stdout.
fn peer(args: &[&str], stdin: &str) -> String {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/interop/peer.py");
    let mut child = Command::new(python())
        .arg(script)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("python starts");
    child
        .stdin
        .take()
        .expect("piped")
        .write_all(stdin.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "peer.py {args:?} failed: {}\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

fn topic() -> String {
    // No `-` or `_`: the SQS queue is then plainly `<topic>-<group>`, which the peer uses.
    format!("interop{}", uuid::Uuid::new_v4().simple())
}

/// The events both sides exchange, in canonical form: JSON, text, binary and no data, with
/// integer and boolean extensions, a subject, a schema and a millisecond time.
fn base_cases(binary_data: bool) -> Vec<Value> {
    let ext = json!({"count": ["integer", 42], "flag": ["boolean", true]});
    let mut cases = vec![
        json!({"id": "json", "source": "urn:python:interop", "type": "order.created",
               "subject": "order-42", "time_ms": 1_764_000_000_123_i64,
               "datacontenttype": "application/json",
               "dataschema": "https://example.com/schemas/order.json",
               "ext": ext, "data": ["json", {"order": 42, "items": ["a", "b"], "note": "ünï"}]}),
        json!({"id": "text", "source": "urn:python:interop", "type": "note.written",
               "subject": null, "time_ms": 1_764_000_001_000_i64,
               "datacontenttype": "text/plain", "dataschema": null,
               "ext": ext, "data": ["text", "héllo wörld <b/>"]}),
        json!({"id": "none", "source": "urn:python:interop", "type": "ping",
               "subject": null, "time_ms": 1_764_000_002_500_i64,
               "datacontenttype": null, "dataschema": null,
               "ext": ext, "data": ["none", null]}),
    ];
    if binary_data {
        cases.push(
            json!({"id": "binary", "source": "urn:python:interop", "type": "blob.stored",
               "subject": null, "time_ms": 1_764_000_003_000_i64,
               "datacontenttype": "application/octet-stream", "dataschema": null,
               "ext": ext, "data": ["binary", "AAEC/v8="]}),
        );
    }
    cases
}

/// Each base case once per form, its id prefixed with the form.
fn cases(forms: &[(&str, bool)]) -> Vec<Value> {
    let mut out = Vec::new();
    for (form, binary_data) in forms {
        for mut case in base_cases(*binary_data) {
            case["id"] = json!(format!("{form}/{}", case["id"].as_str().unwrap()));
            case["form"] = json!(form);
            out.push(case);
        }
    }
    out
}

/// How string-only headers carry the extensions: `python` booleans as `True`/`False`.
fn stringly(case: &Value, python: bool) -> Value {
    let mut case = case.clone();
    let ext: BTreeMap<String, Value> = serde_json::from_value(case["ext"].clone()).unwrap();
    let ext: BTreeMap<String, Value> = ext
        .into_iter()
        .map(|(k, v)| {
            let s = match &v[1] {
                Value::Bool(b) if python => if *b { "True" } else { "False" }.to_owned(),
                Value::String(s) => s.clone(),
                other => other.to_string(),
            };
            (k, json!(["string", s]))
        })
        .collect();
    case["ext"] = json!(ext);
    case
}

/// The canonical form of an event we decoded.
fn canonical(e: &Event) -> Value {
    let ext: BTreeMap<String, Value> = e
        .iter_extensions()
        .map(|(k, v)| {
            let v = match v {
                ExtensionValue::String(s) => json!(["string", s]),
                ExtensionValue::Integer(i) => json!(["integer", i]),
                ExtensionValue::Boolean(b) => json!(["boolean", b]),
            };
            (k.to_owned(), v)
        })
        .collect();
    let json_ct = e.datacontenttype().is_none_or(|ct| {
        let ct = ct.split(';').next().unwrap_or_default().trim();
        ct == "application/json" || ct == "text/json" || ct.ends_with("+json")
    });
    let data = match e.data() {
        None => json!(["none", null]),
        Some(Data::Json(v)) => json!(["json", v]),
        Some(Data::String(s)) if json_ct => {
            json!(["json", serde_json::from_str::<Value>(s).unwrap()])
        }
        Some(Data::String(s)) => json!(["text", s]),
        Some(Data::Binary(b)) => match serde_json::from_slice::<Value>(b) {
            Ok(v) if json_ct => json!(["json", v]),
            _ => {
                use base64::Engine as _;
                json!([
                    "binary",
                    base64::engine::general_purpose::STANDARD.encode(b)
                ])
            }
        },
    };
    json!({
        "id": e.id(), "source": e.source().to_string(), "type": e.ty(), "subject": e.subject(),
        "time_ms": e.time().map(|t| t.timestamp_millis()),
        "datacontenttype": e.datacontenttype(),
        "dataschema": e.dataschema().map(|s| s.to_string()),
        "ext": ext, "data": data,
    })
}

fn without_form(case: &Value) -> Value {
    let mut c = case.clone();
    c.as_object_mut().unwrap().remove("form");
    c
}

async fn broker(url: &str) -> Broker {
    Broker::connect(url)
        .await
        .unwrap_or_else(|e| panic!("broker must be running (scripts/brokers): {e}"))
}

/// Python publishes `forms` to `topic`; our consumer in group `rust` reads each event exactly.
async fn python_to_rust(url: &str, name: &str, forms: &[(&str, bool, bool)]) {
    let b = broker(url).await;
    let topic = topic();
    let mut options = SubscribeOptions::new("rust");
    if name == "kafka" {
        // The group's partitions may not be assigned yet when the peer publishes.
        options = options.start_from(StartFrom::Earliest);
    }
    let mut sub = b.subscriber().subscribe(&topic, options).await.unwrap();
    let plain: Vec<(&str, bool)> = forms.iter().map(|(f, d, _)| (*f, *d)).collect();
    let cases = cases(&plain);
    let sent = peer(
        &["publish", name, &topic, "rust"],
        &serde_json::to_string(&cases).unwrap(),
    );
    assert_eq!(sent.trim(), cases.len().to_string());
    let mut got: BTreeMap<String, Value> = BTreeMap::new();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    while got.len() < cases.len() {
        let d = tokio::time::timeout_at(deadline, sub.recv())
            .await
            .unwrap_or_else(|_| panic!("{name}: only {:?} of {} arrived", got.keys(), cases.len()))
            .unwrap();
        let e = d
            .event()
            .unwrap_or_else(|err| panic!("{name}: a Python event did not decode: {err}"));
        got.insert(e.id().to_owned(), canonical(e));
        d.ack().await.unwrap();
    }
    for case in &cases {
        let form = case["form"].as_str().unwrap();
        let (_, _, string_only) = forms.iter().find(|(f, _, _)| *f == form).unwrap();
        let want = if *string_only {
            stringly(&without_form(case), form != "sns-binary")
        } else {
            without_form(case)
        };
        let id = case["id"].as_str().unwrap();
        assert_eq!(got.get(id), Some(&want), "{name} {id}");
    }
    sub.close().await.ok();
}

/// We publish in both modes; Python's SDK decoders read each event exactly.
async fn rust_to_python(url: &str, name: &str, binary_data_in_binary_mode: bool) {
    for mode in [ContentMode::Binary, ContentMode::Structured] {
        let mode_name = format!("{mode:?}").to_lowercase();
        let sep = if url.contains('?') { '&' } else { '?' };
        let b = broker(&format!("{url}{sep}content_mode={mode_name}")).await;
        let topic = topic();
        // The peer's group exists before anything is published (queues keep messages only for
        // existing groups).
        b.subscriber()
            .declare(&topic, SubscribeOptions::new("py"))
            .await
            .unwrap();
        let binary_data = mode == ContentMode::Structured || binary_data_in_binary_mode;
        let cases = cases(&[(mode_name.as_str(), binary_data)]);
        for case in &cases {
            b.publisher().publish(&topic, event_of(case)).await.unwrap();
        }
        let out = peer(
            &["consume", name, &topic, "py", &cases.len().to_string()],
            "",
        );
        let got: BTreeMap<String, Value> = out
            .lines()
            .map(|l| {
                let v: Value = serde_json::from_str(l).unwrap();
                (v["id"].as_str().unwrap().to_owned(), v)
            })
            .collect();
        for case in &cases {
            let id = case["id"].as_str().unwrap();
            // Binary-mode headers are strings on Kafka and SQS; AMQP's Python decoder keeps
            // the string forms we send too.
            let want = if mode == ContentMode::Binary {
                stringly(&without_form(case), false)
            } else {
                without_form(case)
            };
            assert_eq!(got.get(id), Some(&want), "{name} {mode_name} {id}: {out}");
        }
    }
}

/// Our event of a canonical case.
fn event_of(case: &Value) -> Event {
    let mut b = EventBuilder::new(
        case["source"].as_str().unwrap(),
        case["type"].as_str().unwrap(),
    )
    .id(case["id"].as_str().unwrap())
    .time(
        messaging::chrono::DateTime::from_timestamp_millis(case["time_ms"].as_i64().unwrap())
            .unwrap(),
    );
    if let Some(s) = case["subject"].as_str() {
        b = b.subject(s);
    }
    for (k, v) in case["ext"].as_object().unwrap() {
        b = match &v[1] {
            Value::Bool(x) => b.extension(k, *x),
            Value::Number(n) => b.extension(k, n.as_i64().unwrap()),
            other => b.extension(k, other.as_str().unwrap()),
        };
    }
    let ct = case["datacontenttype"].as_str();
    b = match case["data"][0].as_str().unwrap() {
        "json" => b.json(&case["data"][1]),
        "text" => b.data(ct.unwrap(), case["data"][1].as_str().unwrap().to_owned()),
        "binary" => {
            use base64::Engine as _;
            b.bytes(
                ct,
                base64::engine::general_purpose::STANDARD
                    .decode(case["data"][1].as_str().unwrap())
                    .unwrap(),
            )
        }
        _ => b,
    };
    if let Some(s) = case["dataschema"].as_str() {
        b = b.dataschema(s);
    }
    b.build().unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_reads_the_python_sdk() {
    python_to_rust(
        &TestBroker::Kafka.url(),
        "kafka",
        &[
            ("binary", true, true),
            ("structured", true, false),
            ("plain", true, false),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_reads_the_python_sdk() {
    python_to_rust(
        &TestBroker::RabbitMq.url(),
        "rabbitmq",
        &[
            ("amqp-binary", true, false),
            ("amqp-structured", true, false),
            ("rabbitmq-binary", true, true),
            ("plain", true, false),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_reads_the_python_sdk() {
    python_to_rust(
        &TestBroker::Sqs.url(),
        "sqs",
        &[
            ("sns-structured", true, false),
            ("sns-plain", true, false),
            ("sqs-plain", true, false),
            ("sns-binary", false, true),
        ],
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_kafka() {
    rust_to_python(&TestBroker::Kafka.url(), "kafka", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_rabbitmq() {
    rust_to_python(&TestBroker::RabbitMq.url(), "rabbitmq", true).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_sdk_reads_sqs() {
    rust_to_python(&TestBroker::Sqs.url(), "sqs", true).await;
}
