//! A consumer service as it runs in production: Kubernetes probes over HTTP (`/livez`,
//! `/readyz`, `/consumers`), Prometheus metrics (`/metrics` on `METRICS_ADDR`, by
//! OpenTelemetry's messaging conventions), a circuit breaker, pause/resume, graceful shutdown.
//! `cargo run -p messaging-examples --bin service` (any broker: `MESSAGING_URL`).
//!
//! By default it runs a short demonstration and exits: it publishes orders, reads its own
//! probes while the consumer starts, works and is paused, and checks what they say. With
//! `--serve` it keeps running (probes on `PROBE_ADDR`, default `127.0.0.1:8080`) until
//! Ctrl-C, then drains and exits — what a Deployment with
//! `livenessProbe.httpGet.path: /livez` and `readinessProbe.httpGet.path: /readyz` runs.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging::handler::{HandlerError, Incoming, handler_fn};
use messaging::runtime::{CircuitBreaker, ConsumerState, probes};
use messaging::{EventBuilder, Publisher, SubscribeOptions, Subscriber};
use messaging_examples::{OrderCreated, Shutdown, broker, fresh, wait_until};
use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const ORDERS: usize = 20;

/// `GET path` on the probe server: the status code and the body.
async fn get(addr: SocketAddr, path: &str) -> Result<(u16, String), std::io::Error> {
    let mut stream = tokio::net::TcpStream::connect(addr).await?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: localhost\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    let mut response = String::new();
    stream.read_to_string(&mut response).await?;
    let code = response
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.trim().to_owned())
        .unwrap_or_default();
    Ok((code, body))
}

/// Serves `GET /metrics` in Prometheus' text format until `stop`.
async fn serve_metrics(
    listener: tokio::net::TcpListener,
    prometheus: PrometheusHandle,
    stop: impl std::future::Future<Output = ()>,
) {
    tokio::pin!(stop);
    loop {
        let (mut stream, _) = tokio::select! {
            () = &mut stop => return,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(_) => continue,
            },
        };
        let prometheus = prometheus.clone();
        tokio::spawn(async move {
            let mut request = [0u8; 1024];
            let n = stream.read(&mut request).await.unwrap_or(0);
            let (status, body) = if request[..n].starts_with(b"GET /metrics ") {
                ("200 OK", prometheus.render())
            } else {
                ("404 Not Found", String::new())
            };
            let response = format!(
                "HTTP/1.1 {status}\r\nContent-Type: text/plain; version=0.0.4\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = stream.write_all(response.as_bytes()).await;
        });
    }
}

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let serve = std::env::args().any(|a| a == "--serve");
    // Every metric of the framework, scraped by Prometheus: the conventions' dotted names
    // come out with underscores (`messaging_client_consumed_messages`).
    let prometheus = PrometheusBuilder::new()
        .set_buckets(&messaging::telemetry::semconv::DURATION_BUCKETS)?
        .install_recorder()?;
    messaging::telemetry::describe_metrics();
    let broker = broker().await?;
    let topic = fresh("orders");
    broker
        .subscriber()
        .declare(&topic, SubscribeOptions::new("billing"))
        .await?;

    let billed: Arc<Mutex<HashSet<String>>> = Arc::default();
    let b = billed.clone();
    let handler = handler_fn(move |msg: Incoming| {
        let b = b.clone();
        async move {
            let order: OrderCreated = msg.data()?;
            tokio::time::sleep(Duration::from_millis(10)).await; // the billing call
            b.lock()
                .unwrap_or_else(|e| e.into_inner())
                .insert(order.order_id);
            Ok::<(), HandlerError>(())
        }
    });
    // The configuration file's `consumer:` section gives these too; set here for the demo.
    let consumer = broker
        .consumer(&topic, SubscribeOptions::new("billing"))
        .concurrency(4)
        .circuit_breaker(CircuitBreaker::default())
        .build(handler);
    let handle = consumer.handle();
    let stop = Shutdown::new();

    let addr: SocketAddr = match std::env::var("PROBE_ADDR") {
        Ok(a) => a.parse()?,
        Err(_) if serve => "127.0.0.1:8080".parse()?,
        Err(_) => "127.0.0.1:0".parse()?,
    };
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let addr = listener.local_addr()?;
    let probe_server = tokio::spawn(probes::serve(listener, vec![handle.clone()], stop.signal()));
    println!("probes on http://{addr}/livez, /readyz, /consumers");
    let metrics_addr: SocketAddr = match std::env::var("METRICS_ADDR") {
        Ok(a) => a.parse()?,
        Err(_) if serve => "127.0.0.1:9464".parse()?,
        Err(_) => "127.0.0.1:0".parse()?,
    };
    let metrics_listener = tokio::net::TcpListener::bind(metrics_addr).await?;
    let metrics_addr = metrics_listener.local_addr()?;
    let metrics_server = tokio::spawn(serve_metrics(metrics_listener, prometheus, stop.signal()));
    println!("metrics on http://{metrics_addr}/metrics");
    let (code, _) = get(addr, "/readyz").await?;
    println!("before the consumer runs: /readyz {code}");
    if code != 503 {
        return Err("a consumer that has not started must not be ready".into());
    }

    let run = tokio::spawn(consumer.run(stop.signal()));
    wait_until("ready", Duration::from_secs(60), async || {
        get(addr, "/readyz").await.is_ok_and(|(c, _)| c == 200)
    })
    .await?;
    println!("consumer running: /readyz 200");

    let publisher = broker.publisher();
    let publish = async |range: std::ops::Range<usize>| -> Result<(), Box<dyn std::error::Error>> {
        for n in range {
            let order = OrderCreated {
                order_id: format!("ord-{n}"),
                amount: 10.0 + n as f64,
                currency: "EUR".into(),
            };
            let event = EventBuilder::new("/checkout", "order.created")
                .json(&order)
                .build()?;
            publisher.publish(&topic, event).await?;
        }
        Ok(())
    };
    publish(0..ORDERS / 2).await?;
    wait_until("first orders billed", Duration::from_secs(60), async || {
        billed.lock().unwrap_or_else(|e| e.into_inner()).len() == ORDERS / 2
    })
    .await?;

    // An operator pauses intake (a downstream maintenance window, say): nothing new is taken,
    // nothing is dead-lettered; the service stays ready.
    handle.pause();
    publish(ORDERS / 2..ORDERS).await?;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let (code, body) = get(addr, "/consumers").await?;
    println!("paused: /consumers {code} {body}");
    let during = billed.lock().unwrap_or_else(|e| e.into_inner()).len();
    if during != ORDERS / 2 || handle.status().state != ConsumerState::Paused {
        return Err(format!("paused consumer billed {during} orders").into());
    }
    handle.resume();
    wait_until("all orders billed", Duration::from_secs(60), async || {
        billed.lock().unwrap_or_else(|e| e.into_inner()).len() == ORDERS
    })
    .await?;
    println!("resumed: all {ORDERS} orders billed");
    let (code, body) = get(metrics_addr, "/metrics").await?;
    for name in [
        "messaging_client_sent_messages",
        "messaging_client_consumed_messages",
        "messaging_process_duration",
        "messaging_client_operation_duration",
    ] {
        if code != 200 || !body.contains(name) {
            return Err(format!("/metrics {code} has no {name}:\n{body}").into());
        }
    }
    println!(
        "/metrics: the conventions' metrics, e.g. {}",
        body.lines()
            .find(|l| l.starts_with("messaging_client_consumed_messages"))
            .unwrap_or_default()
    );

    if serve {
        println!("serving; Ctrl-C to stop");
        tokio::signal::ctrl_c().await?;
    }
    stop.stop();
    let report = run.await??;
    println!("stopped: {report:?}");
    probe_server.await??;
    metrics_server.await?;
    let state = handle.status().state;
    if state != ConsumerState::Stopped {
        return Err(format!("consumer ended in state {state:?}").into());
    }
    Ok(())
}
