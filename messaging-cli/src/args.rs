//! The command line's clap types and their value parsers.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

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
