//! `messaging consume` keeps tailing across a broker outage: a moto server of the test's own is
//! frozen with SIGSTOP (longer than a receive may take) between two publishes, then
//! continued; the CLI reports the failed receives, retries, and prints both events.

use std::process::Stdio;
use std::time::Duration;

use messaging::{Broker, EventBuilder, Publisher, SubscribeOptions, Subscriber};
use messaging_testkit::outage::{BrokerProcess, broker_cache};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn consume_keeps_tailing_across_a_frozen_broker() {
    let port = BrokerProcess::free_port().expect("a free port");
    let moto = BrokerProcess::start(
        broker_cache().join("moto-venv/bin/moto_server"),
        vec![
            "-H".into(),
            "127.0.0.1".into(),
            "-p".into(),
            port.to_string(),
        ],
        std::env::temp_dir().join(format!("moto-cli-{port}")),
        port,
    )
    .unwrap_or_else(|e| {
        panic!("cannot start moto (run scripts/brokers/moto.sh to install it): {e}")
    });
    let url = format!(
        "sqs://?endpoint=http://127.0.0.1:{port}&region=us-east-1&wait_time=1s&call_timeout=3s&retention=60s"
    );
    let broker = Broker::connect(&url).await.expect("moto answers");
    let topic = format!("tail-{}", uuid::Uuid::new_v4().simple());
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new("tail"))
        .await
        .expect("declare");
    let cli = tokio::process::Command::new(env!("CARGO_BIN_EXE_messaging"))
        .args([
            "--url", &url, "consume", &topic, "--group", "tail", "--max", "2",
        ])
        .args(["--timeout", "90s"])
        .env_remove("MESSAGING_URL")
        .env_remove("MESSAGING_CONFIG")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .expect("the CLI starts");
    let event = |id: &str| EventBuilder::new("urn:test", "t").id(id).build().unwrap();
    broker
        .publisher()
        .publish(&topic, event("before"))
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    moto.stop().expect("SIGSTOP");
    // Longer than a receive's bound (the 1 s wait plus 10 s), so the CLI sees it fail.
    tokio::time::sleep(Duration::from_secs(16)).await;
    moto.cont().expect("SIGCONT");
    broker
        .publisher()
        .publish(&topic, event("after"))
        .await
        .unwrap();
    let out = tokio::time::timeout(Duration::from_secs(120), cli.wait_with_output())
        .await
        .expect("the CLI finished")
        .expect("its output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "exit {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert!(
        stdout.contains("\"before\"") && stdout.contains("\"after\""),
        "{stdout}"
    );
    assert!(
        stderr.contains("retrying"),
        "the outage was seen and ridden out:\n{stderr}"
    );
}
