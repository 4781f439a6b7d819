//! `messaging`, the operations CLI: publish, tail, inspect and replay dead letters, read lag
//! and make requests — on every broker, chosen by URL like the library (`--url`, or
//! `MESSAGING_URL` / `MESSAGING_CONFIG`; the in-memory broker when unset).
//!
//! ```text
//! messaging --url kafka://127.0.0.1:9092 publish orders --type order.created --data '{"orderId":"ORD-1"}'
//! messaging --url kafka://127.0.0.1:9092 consume orders --group audit --max 10 --timeout 5s
//! messaging dlq depth orders.dlq --fail-above 0
//! messaging dlq inspect orders.dlq
//! messaging dlq replay orders.dlq --reason permanent-failure --limit 100 --dry-run
//! messaging lag orders --group billing
//! messaging request price-requests --type price.requested --data '"ORD-5678"'
//! ```
//!
//! Exit codes: 0 success; 1 the operation failed (a publish or receive error, a replay that
//! stopped); 2 bad usage, configuration or input (a bad URL, malformed JSON); 3 the broker is
//! unreachable or refused the connection; 4 timed out (no reply; fewer messages than `--max`
//! within `--timeout`); 5 `dlq depth` above `--fail-above`.

use std::io::{BufRead, Write};
use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use messaging::dead_letter::{self, DEAD_LETTER_GROUP, DeadLetterMetadata};
use messaging::request::Requester;
use messaging::{
    AttributesReader, Broker, ConnectError, Delivery, Event, EventBuilder, Inspect, Publisher,
    ReceiveErrorKind, Settings, StartFrom, SubscribeOptions, Subscriber, Subscription,
};

/// The command line.
#[derive(Debug, Parser)]
#[command(name = "messaging", version, about = "Publish, tail, inspect and replay on any broker by URL", long_about = None)]
pub struct Cli {
    /// Broker URL: memory://, kafka://HOST:PORT, amqp://USER:PASS@HOST:PORT/VHOST,
    /// sqs://?endpoint=URL&region=R. Default: MESSAGING_URL, the file's broker.url, else
    /// memory://.
    #[arg(long, global = true, value_name = "URL")]
    pub url: Option<String>,
    /// Configuration file (YAML; default: MESSAGING_CONFIG). MESSAGING_* variables override it.
    #[arg(long, global = true, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// A broker option, as in the URL's query (repeatable): -o partitions=8.
    #[arg(short = 'o', long = "option", global = true, value_name = "KEY=VALUE", value_parser = key_value)]
    pub options: Vec<(String, String)>,
    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The commands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Publish an event from flags, or JSON CloudEvents from stdin (one object, an array, or
    /// one per line).
    Publish(PublishArgs),
    /// Print each event of a subscription group as one line of CloudEvents JSON.
    Consume(ConsumeArgs),
    /// Dead-letter queues: depth, inspect, replay.
    #[command(subcommand)]
    Dlq(DlqCommand),
    /// Messages a group has not settled yet (Kafka: per partition).
    Lag(LagArgs),
    /// Send a request and print the reply as CloudEvents JSON.
    Request(RequestArgs),
}

/// How an event is laid out on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Attributes as headers/properties/attributes, data as the body.
    Binary,
    /// The whole event as `application/cloudevents+json`.
    Structured,
}

/// An event described by flags.
#[derive(Debug, Args)]
pub struct EventArgs {
    /// Event type (`type`); without it, events are read from stdin.
    #[arg(long = "type", value_name = "TYPE")]
    pub ty: Option<String>,
    /// Event source.
    #[arg(long, default_value = "messaging-cli")]
    pub source: String,
    /// Event id (default: a new UUID).
    #[arg(long)]
    pub id: Option<String>,
    /// Ordering key (`partitionkey`).
    #[arg(long)]
    pub key: Option<String>,
    /// Data as JSON (`application/json`).
    #[arg(long, conflicts_with = "text")]
    pub data: Option<String>,
    /// Data as text (`text/plain`).
    #[arg(long)]
    pub text: Option<String>,
    /// Subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// An extension attribute (repeatable): --extension tenant=acme.
    #[arg(long = "extension", value_name = "NAME=VALUE", value_parser = key_value)]
    pub extensions: Vec<(String, String)>,
}

/// `publish`.
#[derive(Debug, Args)]
pub struct PublishArgs {
    /// Topic.
    pub topic: String,
    /// The event.
    #[command(flatten)]
    pub event: EventArgs,
    /// CloudEvents content mode (default: the broker's).
    #[arg(long, value_enum)]
    pub mode: Option<Mode>,
}

/// `consume`.
#[derive(Debug, Args)]
pub struct ConsumeArgs {
    /// Topic.
    pub topic: String,
    /// Subscription group.
    #[arg(long)]
    pub group: String,
    /// Stop after this many events.
    #[arg(long)]
    pub max: Option<usize>,
    /// Stop when no event arrives for this long (e.g. 5s).
    #[arg(long, value_parser = duration)]
    pub timeout: Option<Duration>,
    /// Where a new group starts: `new` messages only, or `earliest` (brokers with replay).
    #[arg(long, value_enum, default_value_t = StartAt::New)]
    pub from: StartAt,
    /// Leave the events in the group (nack) instead of acking them.
    #[arg(long)]
    pub peek: bool,
    /// Move messages that are not CloudEvents to the group's dead-letter topic (`<topic>.dlq`),
    /// as a consumer runtime would, instead of returning them to the group.
    #[arg(long)]
    pub dead_letter: bool,
}

/// Where a new group starts.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StartAt {
    /// Only messages published from now on.
    New,
    /// Everything the broker still has.
    Earliest,
}

/// `dlq …`.
#[derive(Debug, Subcommand)]
pub enum DlqCommand {
    /// Print how many dead letters wait (for alerting).
    Depth {
        /// Dead-letter topic.
        topic: String,
        /// Exit with code 5 if the depth is above this.
        #[arg(long)]
        fail_above: Option<u64>,
    },
    /// Show dead letters with their failure metadata, leaving them in place.
    Inspect {
        /// Dead-letter topic.
        topic: String,
        /// Show at most this many.
        #[arg(long, default_value_t = 100)]
        max: usize,
        /// Stop when none arrives for this long.
        #[arg(long, value_parser = duration, default_value = "5s")]
        timeout: Duration,
        /// One CloudEvents JSON line per dead letter instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// Publish dead letters back to their origin topic (or --target), keeping their history.
    Replay(ReplayArgs),
}

/// `dlq replay`.
#[derive(Debug, Args)]
pub struct ReplayArgs {
    /// Dead-letter topic.
    pub topic: String,
    /// Only events of this type (repeatable).
    #[arg(long = "type", value_name = "TYPE")]
    pub types: Vec<String>,
    /// Only events dead-lettered for this reason (`retries-exhausted`, `permanent-failure`…).
    #[arg(long)]
    pub reason: Option<String>,
    /// Only these event ids (repeatable).
    #[arg(long = "id")]
    pub ids: Vec<String>,
    /// Only events from this origin topic.
    #[arg(long)]
    pub origin: Option<String>,
    /// Replay at most this many.
    #[arg(long)]
    pub limit: Option<usize>,
    /// Publish to this topic instead of each event's origin.
    #[arg(long)]
    pub target: Option<String>,
    /// Count what would be replayed; move nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Also replay dead letters marked `dlqtruncated` (their data was dropped because the
    /// broker refused the full dead letter); they are left alone otherwise.
    #[arg(long)]
    pub include_truncated: bool,
    /// Stop when no dead letter arrives for this long.
    #[arg(long, value_parser = duration, default_value = "5s")]
    pub idle: Duration,
}

/// `lag`.
#[derive(Debug, Args)]
pub struct LagArgs {
    /// Topic.
    pub topic: String,
    /// Subscription group.
    #[arg(long)]
    pub group: String,
}

/// `request`.
#[derive(Debug, Args)]
pub struct RequestArgs {
    /// Topic the responder consumes.
    pub topic: String,
    /// The request.
    #[command(flatten)]
    pub event: EventArgs,
    /// How long to wait for the reply.
    #[arg(long, value_parser = duration, default_value = "30s")]
    pub timeout: Duration,
}

fn key_value(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.trim().to_owned(), v.to_owned()))
        .filter(|(k, _)| !k.is_empty())
        .ok_or_else(|| format!("expected KEY=VALUE, got {s:?}"))
}

fn duration(s: &str) -> Result<Duration, String> {
    humantime::parse_duration(s).map_err(|e| format!("{e} (expected e.g. 500ms, 5s, 1m)"))
}

/// Why a command failed; the variant decides the exit code.
#[derive(Debug)]
pub enum CliError {
    /// The operation failed (1).
    Failed(String),
    /// Bad usage, configuration or input (2).
    Input(String),
    /// The broker is unreachable or refused the connection (3).
    Unreachable(String),
    /// Timed out (4).
    Timeout(String),
    /// `dlq depth` above the threshold (5).
    Alert(String),
}

impl CliError {
    /// The process exit code.
    pub fn code(&self) -> u8 {
        match self {
            Self::Failed(_) => 1,
            Self::Input(_) => 2,
            Self::Unreachable(_) => 3,
            Self::Timeout(_) => 4,
            Self::Alert(_) => 5,
        }
    }

    fn message(&self) -> &str {
        match self {
            Self::Failed(m)
            | Self::Input(m)
            | Self::Unreachable(m)
            | Self::Timeout(m)
            | Self::Alert(m) => m,
        }
    }
}

fn failed(e: impl std::fmt::Display) -> CliError {
    CliError::Failed(e.to_string())
}

/// Parses `args` (the program name first), runs the command, and returns the exit code;
/// output goes to `out`, diagnostics to `err`, events to publish come from `input`.
pub async fn main_with(
    args: impl IntoIterator<Item = std::ffi::OsString>,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> u8 {
    let cli = match Cli::try_parse_from(args) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version go to stdout with 0; usage errors to stderr with 2.
            let target: &mut dyn Write = if e.use_stderr() { err } else { out };
            let _ = write!(target, "{}", e.render());
            let _ = target.flush();
            return if e.use_stderr() { 2 } else { 0 };
        }
    };
    let code = match run(cli, input, out, err).await {
        Ok(()) => 0,
        Err(e) => {
            let _ = writeln!(err, "messaging: {}", e.message());
            e.code()
        }
    };
    let _ = out.flush();
    let _ = err.flush();
    code
}

/// `event` as one line of the CloudEvents JSON format. Data that arrived as bytes with a JSON
/// content type (binary mode) is written as JSON `data`, as a structured-mode event would
/// carry it, rather than as `data_base64`.
pub fn to_json_line(event: &Event) -> Result<String, serde_json::Error> {
    let is_json = event
        .datacontenttype()
        .is_none_or(|ct| ct.starts_with("application/json") || ct.contains("+json"));
    if let (true, Some(messaging::Data::Binary(bytes))) = (is_json, event.data()) {
        if let Ok(value) = serde_json::from_slice::<serde_json::Value>(bytes) {
            let mut event = event.clone();
            event.set_data_unchecked(value);
            return serde_json::to_string(&event);
        }
    }
    serde_json::to_string(event)
}

/// The broker the flags, the configuration file and the environment name.
pub async fn connect(cli: &Cli, mode: Option<Mode>) -> Result<Broker, CliError> {
    let mut settings = match &cli.config {
        Some(path) => Settings::load(path),
        None => Settings::from_env(),
    }
    .map_err(|e| CliError::Input(e.to_string()))?;
    if let Some(url) = &cli.url {
        settings.broker.url = Some(url.clone());
    }
    settings.broker.options.extend(cli.options.iter().cloned());
    if let Some(mode) = mode {
        let scheme = settings
            .broker
            .url()
            .map_err(|e| CliError::Input(e.to_string()))?;
        // The in-memory broker keeps events as they are: there is no wire to lay out.
        if scheme.scheme() != "memory" {
            let mode = match mode {
                Mode::Binary => "binary",
                Mode::Structured => "structured",
            };
            settings
                .broker
                .options
                .insert("content_mode".into(), mode.into());
        }
    }
    Broker::from_settings(settings).await.map_err(|e| match e {
        ConnectError::Unreachable { .. } => CliError::Unreachable(e.to_string()),
        ConnectError::Unsupported { .. } => CliError::Failed(e.to_string()),
        _ => CliError::Input(e.to_string()),
    })
}

/// Runs a parsed command.
pub async fn run(
    cli: Cli,
    input: &mut dyn BufRead,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let mode = match &cli.command {
        Command::Publish(p) => p.mode,
        _ => None,
    };
    // Flags and stdin are checked before connecting: bad input fails fast, with code 2.
    if let Command::Publish(p) = &cli.command {
        let events = publish_events(&p.event, input)?;
        let broker = connect(&cli, mode).await?;
        return publish(&broker, &p.topic, events, out, err).await;
    }
    if let Command::Request(r) = &cli.command {
        if r.event.ty.is_none() {
            return Err(CliError::Input("request needs --type".into()));
        }
    }
    let broker = connect(&cli, mode).await?;
    match cli.command {
        Command::Publish(_) => unreachable!("handled above"),
        Command::Consume(c) => consume(&broker, &c, out, err).await,
        Command::Dlq(DlqCommand::Depth { topic, fail_above }) => {
            let depth = dead_letter::depth(&broker, &topic).await.map_err(failed)?;
            writeln!(out, "{depth}").map_err(failed)?;
            match fail_above {
                Some(limit) if depth > limit => Err(CliError::Alert(format!(
                    "{depth} dead letters in {topic} (more than {limit})"
                ))),
                _ => Ok(()),
            }
        }
        Command::Dlq(DlqCommand::Inspect {
            topic,
            max,
            timeout,
            json,
        }) => inspect(&broker, &topic, max, timeout, json, out, err).await,
        Command::Dlq(DlqCommand::Replay(r)) => replay(&broker, r, out, err).await,
        Command::Lag(l) => lag(&broker, &l, out).await,
        Command::Request(r) => request(&broker, r, out).await,
    }
}

fn build_event(e: &EventArgs) -> Result<Event, CliError> {
    let ty = e.ty.as_deref().unwrap_or_default();
    let mut b = EventBuilder::new(e.source.clone(), ty);
    if let Some(id) = &e.id {
        b = b.id(id.clone());
    }
    if let Some(key) = &e.key {
        b = b.ordering_key(key.clone());
    }
    if let Some(subject) = &e.subject {
        b = b.subject(subject.clone());
    }
    if let Some(data) = &e.data {
        let value: serde_json::Value = serde_json::from_str(data)
            .map_err(|err| CliError::Input(format!("--data is not valid JSON: {err}")))?;
        b = b.json(&value);
    }
    if let Some(text) = &e.text {
        b = b.text(text.clone());
    }
    for (name, value) in &e.extensions {
        b = b.extension(name, value.clone());
    }
    b.build()
        .map_err(|err| CliError::Input(format!("invalid event: {err}")))
}

/// The events to publish: from the flags, or JSON CloudEvents from `input`.
fn publish_events(e: &EventArgs, input: &mut dyn BufRead) -> Result<Vec<Event>, CliError> {
    if e.ty.is_some() {
        return Ok(vec![build_event(e)?]);
    }
    let mut text = String::new();
    input
        .read_to_string(&mut text)
        .map_err(|err| CliError::Input(format!("cannot read stdin: {err}")))?;
    let events = parse_events(&text)?;
    if events.is_empty() {
        return Err(CliError::Input(
            "nothing to publish: give --type (and --data), or CloudEvents JSON on stdin".into(),
        ));
    }
    Ok(events)
}

/// One JSON event, a JSON array of events, or one event per line.
fn parse_events(text: &str) -> Result<Vec<Event>, CliError> {
    let trimmed = text.trim();
    if trimmed.is_empty() {
        return Ok(Vec::new());
    }
    let bad = |what: String, e: serde_json::Error| {
        CliError::Input(format!("{what} is not a CloudEvent in JSON format: {e}"))
    };
    if trimmed.starts_with('[') {
        return serde_json::from_str(trimmed).map_err(|e| bad("stdin".into(), e));
    }
    // A single (possibly pretty-printed) event, else JSON lines.
    if let Ok(event) = serde_json::from_str::<Event>(trimmed) {
        return Ok(vec![event]);
    }
    text.lines()
        .enumerate()
        .filter(|(_, l)| !l.trim().is_empty())
        .map(|(i, line)| {
            serde_json::from_str(line).map_err(|e| bad(format!("stdin line {}", i + 1), e))
        })
        .collect()
}

async fn publish(
    broker: &Broker,
    topic: &str,
    events: Vec<Event>,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let ids: Vec<String> = events.iter().map(|e| e.id().to_owned()).collect();
    let publisher = broker.publisher();
    let result = if events.len() == 1 {
        let event = events.into_iter().next().expect("one");
        publisher
            .publish(topic, event)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    } else {
        publisher
            .publish_batch(topic, events)
            .await
            .map(|_| ())
            .map_err(|e| e.to_string())
    };
    result.map_err(|e| CliError::Failed(format!("publish to {topic} failed: {e}")))?;
    for id in &ids {
        writeln!(out, "{id}").map_err(failed)?;
    }
    writeln!(
        err,
        "published {} event(s) to {topic} on {}",
        ids.len(),
        broker.features().broker
    )
    .map_err(failed)?;
    Ok(())
}

async fn consume(
    broker: &Broker,
    c: &ConsumeArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let start = match c.from {
        StartAt::New => StartFrom::New,
        StartAt::Earliest => StartFrom::Earliest,
    };
    let mut options = SubscribeOptions::new(c.group.clone()).start_from(start);
    if let Some(max) = c.max {
        // Room for `max` events plus skipped messages not yet given back (Kafka keeps a
        // returned message in flight until its delay passes).
        options = options.prefetch(max.max(1) + SKIP_ROOM);
    }
    let mut skipped = 0usize;
    let subscriber = broker.subscriber();
    let mut sub = subscriber
        .subscribe(&c.topic, options.clone())
        .await
        .map_err(|e| CliError::Failed(format!("cannot subscribe to {}: {e}", c.topic)))?;
    let mut printed = 0;
    let mut held = Vec::new();
    // Tailing rides out a broker restart: failed receives are retried and a lost subscription
    // is opened again, until `--timeout` passes without an event.
    let mut idle_since = tokio::time::Instant::now();
    let mut backoff = Duration::from_millis(100);
    let idle_too_long = |since: tokio::time::Instant, printed: usize| {
        let t = c.timeout?;
        (since.elapsed() >= t).then(|| match c.max {
            Some(max) => Err(CliError::Timeout(format!(
                "{printed} of {max} events within {}",
                humantime::format_duration(t)
            ))),
            None => Ok(()),
        })
    };
    let result = loop {
        if c.max.is_some_and(|m| printed >= m) {
            break Ok(());
        }
        let next = match c.timeout {
            Some(t) => match tokio::time::timeout_at(idle_since + t, sub.recv()).await {
                Ok(r) => r,
                Err(_) => {
                    break match c.max {
                        Some(max) => Err(CliError::Timeout(format!(
                            "{printed} of {max} events within {}",
                            humantime::format_duration(t)
                        ))),
                        None => Ok(()),
                    };
                }
            },
            None => sub.recv().await,
        };
        let d = match next {
            Ok(d) => {
                idle_since = tokio::time::Instant::now();
                backoff = Duration::from_millis(100);
                d
            }
            Err(e) if e.kind() == ReceiveErrorKind::Closed => {
                let _ = writeln!(err, "messaging: subscription lost ({e}); subscribing again");
                let _ = sub.close().await;
                let stop = async {
                    match c.timeout {
                        Some(t) => tokio::time::sleep_until(idle_since + t).await,
                        None => std::future::pending().await,
                    }
                };
                match messaging::resubscribe(&subscriber, &c.topic, &options, stop).await {
                    Ok(Some(again)) => {
                        sub = again;
                        continue;
                    }
                    Ok(None) => {
                        break idle_too_long(idle_since, printed).unwrap_or(Ok(()));
                    }
                    Err(e) => {
                        break Err(CliError::Failed(format!(
                            "cannot subscribe to {} again: {e}",
                            c.topic
                        )));
                    }
                }
            }
            Err(e) if e.is_transient() => {
                if let Some(end) = idle_too_long(idle_since, printed) {
                    break end;
                }
                let _ = writeln!(err, "messaging: receive failed ({e}); retrying");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(Duration::from_secs(5));
                continue;
            }
            Err(e) => break Err(CliError::Failed(format!("receive failed: {e}"))),
        };
        match d.payload() {
            Ok(event) => {
                let line = to_json_line(event).map_err(failed)?;
                if let Err(e) = writeln!(out, "{line}").and_then(|()| out.flush()) {
                    // The reader went away (a closed pipe): this one was not delivered.
                    held.push(d);
                    break Err(failed(e));
                }
                printed += 1;
                if c.peek {
                    held.push(d);
                } else if let Err(e) = d.ack().await {
                    break Err(CliError::Failed(format!("ack failed: {}", e.error)));
                }
            }
            Err(e) => {
                // Not a CloudEvent. Never held: a window full of them would hide every event
                // behind them.
                skipped += 1;
                let e = e.clone();
                if c.dead_letter {
                    let dlq = options.dead_letter_topic_for(&c.topic);
                    if let Err(failure) =
                        dead_letter_undecodable(broker, &c.topic, &c.group, &dlq, d, &e).await
                    {
                        break Err(failure);
                    }
                    let _ = writeln!(err, "messaging: moved an undecodable message to {dlq}: {e}");
                } else {
                    let _ = writeln!(
                        err,
                        "messaging: skipped an undecodable message (returned to the group for {}s; --dead-letter moves it to the dead-letter topic): {e}",
                        SKIP_RETURN.as_secs()
                    );
                    if let Err(e) = d.nack(Some(SKIP_RETURN)).await {
                        held.push(e.delivery);
                    }
                }
            }
        }
    };
    if skipped > 0 {
        let _ = writeln!(
            err,
            "messaging: {skipped} undecodable message(s) {}",
            if c.dead_letter {
                "moved to the dead-letter topic"
            } else {
                "skipped"
            }
        );
    }
    give_back(held, &mut *err).await;
    let _ = sub.close().await;
    result
}

/// How long a skipped undecodable message stays away before the broker hands it out again.
const SKIP_RETURN: Duration = Duration::from_secs(30);
/// Window room for skipped messages not yet given back.
const SKIP_ROOM: usize = 64;

/// Dead-letters a message that is not a CloudEvent the way the consumer runtime does (an event
/// of type `messaging.undecodable` carrying the raw message and the failure metadata, made
/// smaller if the broker refuses its size), then acks it. Nothing is acked unpublished.
async fn dead_letter_undecodable(
    broker: &Broker,
    topic: &str,
    group: &str,
    dlq: &str,
    delivery: messaging::BoxDelivery,
    error: &messaging::DecodeError,
) -> Result<(), CliError> {
    let origin = messaging::handler::Origin {
        topic: topic.to_owned(),
        group: group.to_owned(),
    };
    let mut event = dead_letter::undecodable_event(error, &origin, messaging::chrono::Utc::now());
    // Kept from the start, as the consumer runtime does: where a topic keeps messages only for
    // existing groups (RabbitMQ, SQS, memory), the dead-letter group must exist first.
    if let Err(e) = broker
        .subscriber()
        .declare(dlq, SubscribeOptions::new(DEAD_LETTER_GROUP))
        .await
    {
        let _ = delivery.nack(None).await;
        return Err(CliError::Failed(format!("cannot declare {dlq}: {e}")));
    }
    let publisher = broker.publisher();
    let mut tries = 0;
    loop {
        match publisher.publish(dlq, event.clone()).await {
            Ok(_) => break,
            Err(e) if e.is_transient() && tries < 5 => {
                tries += 1;
                tokio::time::sleep(Duration::from_millis(200) * tries).await;
            }
            Err(e) if !e.is_transient() => match dead_letter::shrink(&event) {
                Some(smaller) => event = smaller,
                None => {
                    let _ = delivery.nack(None).await;
                    return Err(CliError::Failed(format!(
                        "cannot dead-letter to {dlq}: {e}"
                    )));
                }
            },
            Err(e) => {
                let _ = delivery.nack(None).await;
                return Err(CliError::Failed(format!(
                    "cannot dead-letter to {dlq}: {e}"
                )));
            }
        }
    }
    delivery
        .ack()
        .await
        .map_err(|e| CliError::Failed(format!("ack failed after dead-lettering: {}", e.error)))
}

/// Returns deliveries to their group; one that cannot be returned comes back by itself after
/// its ack deadline, which is said.
async fn give_back(held: Vec<messaging::BoxDelivery>, err: &mut dyn Write) {
    for d in held {
        if let Err(e) = d.nack(None).await {
            let _ = writeln!(
                err,
                "messaging: a message could not be returned at once ({}); the broker redelivers it after its ack deadline",
                e.error
            );
        }
    }
}

async fn inspect(
    broker: &Broker,
    topic: &str,
    max: usize,
    timeout: Duration,
    json: bool,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    let options = SubscribeOptions::new(DEAD_LETTER_GROUP).prefetch(max.max(1));
    let mut sub = broker
        .subscriber()
        .subscribe(topic, options)
        .await
        .map_err(|e| CliError::Failed(format!("cannot read {topic}: {e}")))?;
    let mut held = Vec::new();
    let mut rows = Vec::new();
    let mut seen = std::collections::HashSet::new();
    let mut result = Ok(());
    while held.len() < max {
        let d = match tokio::time::timeout(timeout, sub.recv()).await {
            Err(_) => break,
            Ok(Err(e)) => {
                result = Err(CliError::Failed(format!("receive failed: {e}")));
                break;
            }
            Ok(Ok(d)) => d,
        };
        let row = match d.payload() {
            Ok(event) => {
                if !seen.insert(event.id().to_owned()) {
                    held.push(d);
                    break; // came round again: everything was seen
                }
                if json {
                    to_json_line(event).map_err(failed)?
                } else {
                    table_row(event)
                }
            }
            Err(e) => format!("(undecodable: {e})"),
        };
        rows.push(row);
        held.push(d);
    }
    give_back(held, &mut *err).await;
    let _ = sub.close().await;
    result?;
    let write = |out: &mut dyn Write| -> std::io::Result<()> {
        if !json {
            writeln!(
                out,
                "{:<36}  {:<20}  {:<18}  {:>8}  {:<28}  {:<24}  {:<24}  {:>7}  ERROR",
                "ID",
                "TYPE",
                "REASON",
                "ATTEMPTS",
                "ORIGIN",
                "FIRST FAILURE",
                "LAST FAILURE",
                "REPLAYS"
            )?;
        }
        for row in &rows {
            writeln!(out, "{row}")?;
        }
        Ok(())
    };
    write(out).map_err(failed)
}

fn table_row(event: &Event) -> String {
    let m = DeadLetterMetadata::from_event(event);
    let time = |t: Option<messaging::chrono::DateTime<messaging::chrono::Utc>>| {
        t.map(|t| t.to_rfc3339_opts(messaging::chrono::SecondsFormat::Millis, true))
            .unwrap_or_else(|| "-".into())
    };
    match m {
        Some(m) => format!(
            "{:<36}  {:<20}  {:<18}  {:>8}  {:<28}  {:<24}  {:<24}  {:>7}  {}",
            event.id(),
            event.ty(),
            m.reason,
            m.attempts,
            format!("{}/{}", m.topic, m.group),
            time(m.first_failure),
            time(m.last_failure),
            m.replays,
            m.error.replace('\n', " ")
        ),
        None => format!(
            "{:<36}  {:<20}  {:<18}  {:>8}  {:<28}  {:<24}  {:<24}  {:>7}  (no dead-letter metadata)",
            event.id(),
            event.ty(),
            "-",
            "-",
            "-",
            "-",
            "-",
            "-"
        ),
    }
}

async fn replay(
    broker: &Broker,
    r: ReplayArgs,
    out: &mut dyn Write,
    err: &mut dyn Write,
) -> Result<(), CliError> {
    // The bar's length: what waits now (the depth), capped by the limit.
    let depth = dead_letter::depth(broker, &r.topic).await.unwrap_or(0);
    let total = r.limit.map_or(depth, |l| depth.min(l as u64));
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template(
            "{spinner} replaying [{bar:40}] {pos}/{len} {msg} ({per_sec}, eta {eta})",
        )
        .map_err(failed)?
        .progress_chars("=> "),
    );
    let progress = bar.clone();
    let (types, ids, reason, origin) = (r.types, r.ids, r.reason, r.origin);
    let mut options = dead_letter::ReplayOptions::new()
        .idle(r.idle)
        .dry_run(r.dry_run)
        .include_truncated(r.include_truncated)
        .filter(move |e| {
            let m = DeadLetterMetadata::from_event(e);
            (types.is_empty() || types.iter().any(|t| t == e.ty()))
                && (ids.is_empty() || ids.iter().any(|i| i == e.id()))
                && reason
                    .as_ref()
                    .is_none_or(|want| m.as_ref().is_some_and(|m| &m.reason == want))
                && origin
                    .as_ref()
                    .is_none_or(|want| m.as_ref().is_some_and(|m| &m.topic == want))
        })
        .on_progress(move |report| {
            progress.set_position(report.replayed as u64);
            progress.set_message(format!("{} skipped", report.skipped));
        });
    if let Some(limit) = r.limit {
        options = options.limit(limit);
    }
    if let Some(target) = r.target {
        options = options.target(target);
    }
    let result =
        dead_letter::replay(&broker.subscriber(), &broker.publisher(), &r.topic, options).await;
    bar.finish_and_clear();
    let report = result.map_err(failed)?;
    writeln!(
        out,
        "{} {}, {} skipped (left in {}){}",
        if r.dry_run {
            "would replay"
        } else {
            "replayed"
        },
        report.replayed,
        report.skipped,
        r.topic,
        if report.truncated > 0 {
            format!(
                "; {} of them truncated dead letters without their data (--include-truncated replays them)",
                report.truncated
            )
        } else {
            String::new()
        }
    )
    .map_err(failed)?;
    let _ = err.flush();
    Ok(())
}

async fn lag(broker: &Broker, l: &LagArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let depth = broker.depth(&l.topic, &l.group).await.map_err(failed)?;
    let Some(depth) = depth else {
        return Err(CliError::Failed(format!(
            "group {} of {} does not exist on {}",
            l.group,
            l.topic,
            broker.features().broker
        )));
    };
    writeln!(out, "{}\t{}\t{depth}", l.topic, l.group).map_err(failed)?;
    if let Some(kafka) = broker.as_kafka() {
        for p in kafka
            .lag(&l.topic, &l.group)
            .await
            .map_err(failed)?
            .unwrap_or_default()
        {
            let committed = p
                .committed
                .map_or_else(|| "-".to_owned(), |c| c.to_string());
            writeln!(
                out,
                "  {}[{}]\tcommitted {committed}\thigh {}\tlag {}",
                p.topic, p.partition, p.high_watermark, p.lag
            )
            .map_err(failed)?;
        }
    }
    Ok(())
}

async fn request(broker: &Broker, r: RequestArgs, out: &mut dyn Write) -> Result<(), CliError> {
    let event = build_event(&r.event)?;
    let listen_failed =
        |e: messaging::SubscribeError| CliError::Failed(format!("cannot listen for replies: {e}"));
    // RabbitMQ answers through direct reply-to (no reply queue); the others through a
    // reply topic of the requester's own.
    let answer = if let Some(rabbit) = broker.as_rabbitmq() {
        let requester = rabbit.requester().await.map_err(listen_failed)?;
        requester.request(&r.topic, event, r.timeout).await
    } else {
        let requester = Requester::start(&broker.subscriber(), broker.publisher())
            .await
            .map_err(listen_failed)?;
        requester.request(&r.topic, event, r.timeout).await
    };
    match answer {
        Ok(reply) => {
            let line = to_json_line(&reply).map_err(failed)?;
            writeln!(out, "{line}").map_err(failed)
        }
        Err(e @ messaging::request::RequestError::Timeout(_)) => {
            Err(CliError::Timeout(e.to_string()))
        }
        Err(e) => Err(failed(e)),
    }
}
