//! Broker outages for tests on real brokers: a broker process the test owns (started, killed,
//! stopped and continued by its PID, never by name), and a workload that proves a running
//! consumer rides an outage out — every acknowledged publish handled, and how long after the
//! broker came back the consumer settled again.

use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use messaging_core::handler::{HandlerError, Incoming, handler_fn};
use messaging_core::runtime::{Consumer, ConsumerState};
use messaging_core::{
    AttributesReader, DynPublisher, EventBuilder, SubscribeOptions, Subscriber, Subscription,
};
use tokio::time::Instant;

/// Where `scripts/brokers/*.sh` keep the brokers they install:
/// `${XDG_CACHE_HOME:-$HOME/.cache}/messaging-brokers` (`moto-venv/bin/moto_server`,
/// `nisshi-0.8.1/bin/nisshi`).
pub fn broker_cache() -> PathBuf {
    std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(std::env::temp_dir)
        .join("messaging-brokers")
}

/// Runs `rabbitmqctl args`, bounded to 120 s (a node that does not come back fails the caller
/// instead of hanging it): how tests stop and start the RabbitMQ node the project's scripts
/// run — through its own control tool, never a signal sent by process name. Blocks; async
/// callers use [`rabbitmqctl_async`].
pub fn rabbitmqctl(args: &[&str]) -> io::Result<()> {
    let status = Command::new("timeout")
        .arg("120")
        .arg("rabbitmqctl")
        .args(args)
        .status()?;
    if status.success() {
        Ok(())
    } else {
        Err(io::Error::other(format!("rabbitmqctl {args:?}: {status}")))
    }
}

/// [`rabbitmqctl`] off the async workers.
pub async fn rabbitmqctl_async(args: &[&str]) -> io::Result<()> {
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    tokio::task::spawn_blocking(move || {
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        rabbitmqctl(&args)
    })
    .await
    .map_err(io::Error::other)?
}

/// A broker process started by the test, on a port of its own.
#[derive(Debug)]
pub struct BrokerProcess {
    program: PathBuf,
    args: Vec<String>,
    dir: PathBuf,
    port: u16,
    log: PathBuf,
    child: Option<Child>,
}

impl BrokerProcess {
    /// A free TCP port on 127.0.0.1 (bound, then released).
    pub fn free_port() -> io::Result<u16> {
        Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
    }

    /// Starts `program args` in `dir` (output appended to `dir/broker.log`) and waits until
    /// 127.0.0.1:`port` accepts connections (60 s at most).
    pub fn start(
        program: impl Into<PathBuf>,
        args: Vec<String>,
        dir: impl Into<PathBuf>,
        port: u16,
    ) -> io::Result<Self> {
        let dir = dir.into();
        std::fs::create_dir_all(&dir)?;
        let mut process = Self {
            program: program.into(),
            args,
            log: dir.join("broker.log"),
            dir,
            port,
            child: None,
        };
        process.spawn()?;
        Ok(process)
    }

    /// The port the broker listens on.
    pub fn port(&self) -> u16 {
        self.port
    }

    fn spawn(&mut self) -> io::Result<()> {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)?;
        let child = Command::new(&self.program)
            .args(&self.args)
            .current_dir(&self.dir)
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .map_err(|e| {
                io::Error::new(
                    e.kind(),
                    format!("cannot start {}: {e}", self.program.display()),
                )
            })?;
        self.child = Some(child);
        self.wait_listening(Duration::from_secs(60))
    }

    fn wait_listening(&mut self, limit: Duration) -> io::Result<()> {
        let end = std::time::Instant::now() + limit;
        loop {
            if TcpStream::connect(("127.0.0.1", self.port)).is_ok() {
                return Ok(());
            }
            if let Some(child) = self.child.as_mut() {
                if let Some(status) = child.try_wait()? {
                    return Err(io::Error::other(format!(
                        "{} exited with {status} before listening on {} (see {})",
                        self.program.display(),
                        self.port,
                        self.log.display()
                    )));
                }
            }
            if std::time::Instant::now() > end {
                return Err(io::Error::other(format!(
                    "{} did not listen on {} within {limit:?} (see {})",
                    self.program.display(),
                    self.port,
                    self.log.display()
                )));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Kills the broker with SIGKILL (no shutdown of its own) and reaps it.
    pub fn kill(&mut self) -> io::Result<()> {
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        Ok(())
    }

    /// Starts the broker again with the same command, directory and port.
    pub fn restart(&mut self) -> io::Result<()> {
        self.kill()?;
        self.spawn()
    }

    fn signal(&self, signal: &str) -> io::Result<()> {
        let pid = self
            .child
            .as_ref()
            .ok_or_else(|| io::Error::other("the broker is not running"))?
            .id();
        let status = Command::new("kill")
            .arg(format!("-{signal}"))
            .arg(pid.to_string())
            .status()?;
        if status.success() {
            Ok(())
        } else {
            Err(io::Error::other(format!("kill -{signal} {pid}: {status}")))
        }
    }

    /// Freezes the broker (SIGSTOP): its sockets stay open and nothing answers.
    pub fn stop(&self) -> io::Result<()> {
        self.signal("STOP")
    }

    /// Lets a [stopped](Self::stop) broker run again (SIGCONT).
    pub fn cont(&self) -> io::Result<()> {
        self.signal("CONT")
    }
}

impl Drop for BrokerProcess {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_ref() {
            // A stopped process must be continued to die of SIGKILL promptly everywhere.
            let _ = Command::new("kill")
                .arg("-CONT")
                .arg(child.id().to_string())
                .status();
        }
        let _ = self.kill();
    }
}

/// What [`ride_out`] saw.
#[derive(Debug, Clone)]
pub struct OutageReport {
    /// Publishes that returned `Ok`.
    pub published: usize,
    /// Of those, how many were handled (at least once).
    pub handled: usize,
    /// Acknowledged publishes never handled.
    pub lost: Vec<String>,
    /// Handler runs beyond the first, per message, summed (at-least-once allows them).
    pub duplicates: usize,
    /// From the broker's recovery (the outage future's return) to the first handler run
    /// after it.
    pub recovery: Option<Duration>,
    /// Whether the consumer's status stopped being ready during the outage.
    pub went_unready: bool,
    /// Whether the consumer's status was ready again at the end.
    pub ready_at_end: bool,
    /// Times the consumer subscribed again.
    pub resubscribed: u64,
}

impl OutageReport {
    /// Fails unless the consumer rode the outage out: `published` acknowledged publishes,
    /// none lost, ready at the end, settling again within `recovery` of the broker's return,
    /// and — if `unready` — not ready while the broker was away.
    pub fn assert_rode_out(&self, published: usize, recovery: Duration, unready: bool) {
        assert!(self.lost.is_empty(), "lost: {:?} ({self:?})", self.lost);
        assert_eq!(self.published, published, "{self:?}");
        assert!(self.ready_at_end, "ready again at the end: {self:?}");
        if unready {
            assert!(
                self.went_unready,
                "readiness failed during the outage: {self:?}"
            );
        }
        let took = self.recovery.expect("a message handled after the outage");
        assert!(took < recovery, "settling again took {took:?}: {self:?}");
    }
}

/// Runs a consumer of `topic` (group from `options`) and a publisher that sends one event
/// every 20 ms — retrying each until the broker accepts it — for `before` events, then runs
/// `outage` (which breaks the broker and returns once it is back), then publishes `after`
/// more, and waits (up to `settle`) until every acknowledged publish was handled. The
/// consumer must not end meanwhile.
pub async fn ride_out<S, F>(
    subscriber: S,
    publisher: Arc<dyn DynPublisher>,
    topic: &str,
    options: SubscribeOptions,
    (before, after): (usize, usize),
    outage: F,
    settle: Duration,
) -> OutageReport
where
    S: Subscriber + 'static,
    S::Subscription: 'static,
    <S::Subscription as Subscription>::Delivery: 'static,
    F: Future<Output = ()>,
{
    let seen: Arc<Mutex<HashMap<String, (usize, Instant)>>> = Arc::default();
    let s = seen.clone();
    let consumer = Consumer::builder(subscriber, publisher.clone(), topic, options)
        .concurrency(4)
        .build(handler_fn(move |msg: Incoming| {
            let s = s.clone();
            async move {
                let mut seen = messaging_core::sync::lock(&s);
                let entry = seen
                    .entry(msg.event().id().to_owned())
                    .or_insert((0, Instant::now()));
                entry.0 += 1;
                Ok::<(), HandlerError>(())
            }
        }));
    let handle = consumer.handle();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let run = tokio::spawn(consumer.run(async move {
        let _ = stop_rx.await;
    }));
    let mut watch = handle.watch();
    let unready = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let u = unready.clone();
    let watcher = tokio::spawn(async move {
        while watch.changed().await.is_ok() {
            let status = watch.borrow_and_update().clone();
            if status.state != ConsumerState::Running && status.state != ConsumerState::Starting {
                u.store(true, std::sync::atomic::Ordering::SeqCst);
            }
        }
    });
    let start = Instant::now() + Duration::from_secs(30);
    while handle.status().state == ConsumerState::Starting && Instant::now() < start {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let acked: Arc<Mutex<Vec<String>>> = Arc::default();
    let publish = |range: std::ops::Range<usize>| {
        let (publisher, acked, topic) = (publisher.clone(), acked.clone(), topic.to_owned());
        async move {
            for n in range {
                let id = format!("m{n}");
                let event = EventBuilder::new("urn:outage", "outage.test")
                    .id(&id)
                    .json(&n)
                    .build()
                    .expect("event");
                let end = Instant::now() + Duration::from_secs(120);
                loop {
                    match publisher.publish_dyn(&topic, event.clone()).await {
                        Ok(_) => {
                            messaging_core::sync::lock(&acked).push(id);
                            break;
                        }
                        Err(e) if e.is_transient() && Instant::now() < end => {
                            tokio::time::sleep(Duration::from_millis(200)).await;
                        }
                        Err(e) => panic!("publish {id} failed for good: {e}"),
                    }
                }
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        }
    };
    publish(0..before).await;
    // Everything published before the outage is handled first, so the recovery is measured
    // from a quiet consumer.
    let quiet_end = Instant::now() + settle;
    while messaging_core::sync::lock(&seen).len() < before && Instant::now() < quiet_end {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    outage.await;
    let recovered_at = Instant::now();
    publish(before..before + after).await;
    let acked_ids: HashSet<String> = acked
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .cloned()
        .collect();
    let end = Instant::now() + settle;
    loop {
        let missing = {
            let seen = messaging_core::sync::lock(&seen);
            acked_ids.iter().any(|id| !seen.contains_key(id))
        };
        if !missing || Instant::now() > end {
            break;
        }
        assert!(
            !run.is_finished(),
            "the consumer's run ended during the outage"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let ready_at_end = handle.status().is_ready();
    let _ = stop_tx.send(());
    let report = tokio::time::timeout(Duration::from_secs(60), run)
        .await
        .expect("the consumer stops")
        .expect("the consumer's task")
        .expect("the consumer ran to its shutdown");
    watcher.abort();
    let seen = messaging_core::sync::lock(&seen).clone();
    let mut lost: Vec<String> = acked_ids
        .iter()
        .filter(|id| !seen.contains_key(*id))
        .cloned()
        .collect();
    lost.sort();
    OutageReport {
        published: acked_ids.len(),
        handled: acked_ids.len() - lost.len(),
        lost,
        duplicates: seen.values().map(|(n, _)| n - 1).sum(),
        recovery: seen
            .values()
            .map(|(_, at)| *at)
            .filter(|at| *at >= recovered_at)
            .min()
            .map(|at| at - recovered_at),
        went_unready: unready.load(std::sync::atomic::Ordering::SeqCst),
        ready_at_end,
        resubscribed: report.resubscribed,
    }
}
