//! Worker processes: started, killed and terminated by the drill, only by their own PIDs.

use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use crate::record::{RecordWriter, now_ns};

/// How to start a worker (passed to `drill-worker` in its environment).
#[derive(Debug, Clone)]
pub struct WorkerSpec {
    /// The `drill-worker` executable.
    pub exe: PathBuf,
    /// Broker URL.
    pub url: String,
    /// Topic.
    pub topic: String,
    /// Group.
    pub group: String,
    /// Directory for records and logs.
    pub dir: PathBuf,
    /// Handlers at once.
    pub concurrency: usize,
    /// Ordered subscription (per-key order).
    pub ordered: bool,
    /// Time each handler takes.
    pub work: Duration,
    /// Drain timeout on shutdown.
    pub drain: Duration,
    /// Ack deadline (brokers with one).
    pub deadline: Duration,
    /// Redis URL: run the idempotent consumer over a Redis store.
    pub redis: Option<String>,
    /// Idempotency key prefix (one per drill) and claim lease.
    pub idempotency: (String, Duration),
    /// Run with the poison drill's retry policy: one retry after 100 ms, handler timeout
    /// 500 ms, so that poison events reach the dead-letter topic quickly.
    pub poison_policy: bool,
    /// Write the runtime's live task count every second to `<dir>/<name>.stats`.
    pub stats: bool,
}

/// A running worker process.
#[derive(Debug)]
pub struct Worker {
    /// Its name: the record's file stem.
    pub name: String,
    record: PathBuf,
    child: Option<Child>,
}

fn millis(d: Duration) -> String {
    d.as_millis().to_string()
}

impl Worker {
    /// Starts a worker named `name`: its record is `<dir>/<name>.rec`, its log `<name>.log`.
    pub fn spawn(spec: &WorkerSpec, name: &str) -> io::Result<Self> {
        let record = spec.dir.join(format!("{name}.rec"));
        let log = File::create(spec.dir.join(format!("{name}.log")))?;
        let mut cmd = Command::new(&spec.exe);
        // The default panic hook prints a symbolized backtrace under RUST_BACKTRACE=1 (this
        // machine's default), on the panicking handler's runtime thread, reading the debug
        // binary's 250 MiB of debug information: std's cost, not the runtime's, and one that
        // made the poison drill's throughput depend on the environment. Workers run without.
        cmd.env("RUST_BACKTRACE", "0")
            .env("DRILL_URL", &spec.url)
            .env("DRILL_TOPIC", &spec.topic)
            .env("DRILL_GROUP", &spec.group)
            .env("DRILL_RECORD", &record)
            .env("DRILL_CONCURRENCY", spec.concurrency.to_string())
            .env("DRILL_ORDERED", if spec.ordered { "1" } else { "0" })
            .env("DRILL_WORK_MS", millis(spec.work))
            .env("DRILL_DRAIN_MS", millis(spec.drain))
            .env("DRILL_DEADLINE_MS", millis(spec.deadline))
            .env("DRILL_IDEMPOTENCY_PREFIX", &spec.idempotency.0)
            .env("DRILL_LEASE_MS", millis(spec.idempotency.1))
            .env(
                "DRILL_POISON_POLICY",
                if spec.poison_policy { "1" } else { "0" },
            )
            .env_remove("DRILL_REDIS")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log);
        if let Some(redis) = &spec.redis {
            cmd.env("DRILL_REDIS", redis);
        }
        cmd.env_remove("DRILL_STATS");
        if spec.stats {
            cmd.env("DRILL_STATS", spec.dir.join(format!("{name}.stats")));
        }
        let child = cmd.spawn()?;
        Ok(Self {
            name: name.to_owned(),
            record,
            child: Some(child),
        })
    }

    /// The worker's PID, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// SIGKILLs the worker, reaps it and marks its record; returns when it was killed.
    pub fn kill(&mut self) -> io::Result<u64> {
        let at = now_ns();
        if let Some(mut child) = self.child.take() {
            child.kill()?;
            child.wait()?;
        }
        RecordWriter::open(&self.record)?.killed(at)?;
        Ok(at)
    }

    /// SIGTERMs the worker and waits up to `bound` for it to exit; returns when the signal
    /// was sent, how long the exit took, and the exit status. A worker still running after
    /// `bound` is killed and the call fails.
    pub fn terminate(&mut self, bound: Duration) -> io::Result<(u64, Duration, ExitStatus)> {
        let mut child = self
            .child
            .take()
            .ok_or_else(|| io::Error::other("the worker is not running"))?;
        let at = now_ns();
        let sent = Instant::now();
        let status = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status()?;
        if !status.success() {
            return Err(io::Error::other(format!(
                "kill -TERM {}: {status}",
                child.id()
            )));
        }
        loop {
            if let Some(status) = child.try_wait()? {
                return Ok((at, sent.elapsed(), status));
            }
            if sent.elapsed() > bound {
                child.kill()?;
                child.wait()?;
                RecordWriter::open(&self.record)?.killed(now_ns())?;
                return Err(io::Error::other(format!(
                    "worker {} still running {bound:?} after SIGTERM (killed)",
                    self.name
                )));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether the drill has neither killed nor terminated the worker.
    pub fn running(&self) -> bool {
        self.child.is_some()
    }

    /// Whether the process has exited by itself (a crash, or a startup failure).
    pub fn exited(&mut self) -> io::Result<Option<ExitStatus>> {
        match self.child.as_mut() {
            Some(child) => child.try_wait(),
            None => Ok(None),
        }
    }

    /// The worker's log (stdout and stderr).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.record.with_extension("log")).unwrap_or_default()
    }

    /// The worker's record file.
    pub fn record(&self) -> &Path {
        &self.record
    }
}

impl Drop for Worker {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
