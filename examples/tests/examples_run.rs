//! Every example runs to completion and checks its own outcome (exit code 0), unchanged, on
//! every broker: only `MESSAGING_URL` differs. The real brokers are the ones the project's
//! scripts start (`scripts/brokers/*.sh`); a broker that is down fails its tests with the
//! example's connection error.

use std::process::Command;

use messaging_testkit::support::TestBroker;

/// `MESSAGING_URL` per broker; `None` is the in-memory default (the variable unset).
fn url(broker: &str) -> Option<String> {
    let broker = match broker {
        "memory" => return None,
        "kafka" => TestBroker::Kafka,
        "rabbitmq" => TestBroker::RabbitMq,
        "sqs" => TestBroker::Sqs,
        other => panic!("unknown broker {other}"),
    };
    Some(broker.url())
}

/// Longest an example may run.
const LIMIT: std::time::Duration = std::time::Duration::from_secs(180);

fn run(exe: &str, broker: &str) {
    let mut cmd = Command::new(exe);
    cmd.env_remove("MESSAGING_URL")
        .env_remove("MESSAGING_CONFIG");
    if let Some(url) = url(broker) {
        cmd.env("MESSAGING_URL", url);
    }
    // Bounded: an example that hangs is killed and fails, with what it printed.
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("example starts");
    let started = std::time::Instant::now();
    while child.try_wait().expect("wait").is_none() {
        if started.elapsed() > LIMIT {
            let _ = child.kill();
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    let out = child.wait_with_output().expect("output");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        started.elapsed() <= LIMIT,
        "{exe} on {broker} still running after {LIMIT:?}, killed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        out.status.success(),
        "{exe} on {broker} failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(
        stdout.starts_with(&format!("broker: {broker} (")),
        "{exe} did not run on {broker}:\n{stdout}"
    );
}

macro_rules! on_every_broker {
    ($($example:ident),* $(,)?) => {
        $(
            mod $example {
                use super::run;
                const EXE: &str = env!(concat!("CARGO_BIN_EXE_", stringify!($example)));

                #[test]
                fn memory() {
                    run(EXE, "memory");
                }

                #[test]
                fn kafka() {
                    run(EXE, "kafka");
                }

                #[test]
                fn rabbitmq() {
                    run(EXE, "rabbitmq");
                }

                #[test]
                fn sqs() {
                    run(EXE, "sqs");
                }
            }
        )*
    };
}

on_every_broker!(
    quickstart,
    competing_consumers,
    fan_out,
    request_reply,
    retry_dlq_replay,
    service
);
