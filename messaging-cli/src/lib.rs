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

use clap::Parser;
use messaging::{Broker, ConnectError, Settings, dead_letter};

mod args;
mod commands;
mod error;

pub use args::{
    Cli, Command, ConsumeArgs, DlqCommand, EventArgs, LagArgs, Mode, PublishArgs, ReplayArgs,
    RequestArgs, StartAt,
};
pub use commands::to_json_line;
pub use error::CliError;

use commands::{consume, inspect, lag, publish, replay, request};
use error::failed;

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
        // Refused credentials, access or TLS are "unreachable or refused" too: the message
        // names the broker and URL, never the secret.
        ConnectError::Unreachable { .. }
        | ConnectError::Authentication { .. }
        | ConnectError::Forbidden { .. }
        | ConnectError::Tls { .. } => CliError::Unreachable(e.to_string()),
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
        let events = publish::publish_events(&p.event, input)?;
        let broker = connect(&cli, mode).await?;
        return publish::publish(&broker, &p.topic, events, out, err).await;
    }
    if let Command::Request(r) = &cli.command {
        if r.event.ty.is_none() {
            return Err(CliError::Input("request needs --type".into()));
        }
    }
    let broker = connect(&cli, mode).await?;
    match cli.command {
        Command::Publish(_) => unreachable!("handled above"),
        Command::Consume(c) => consume::consume(&broker, &c, out, err).await,
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
        }) => inspect::inspect(&broker, &topic, max, timeout, json, out, err).await,
        Command::Dlq(DlqCommand::Replay(r)) => replay::replay(&broker, r, out, err).await,
        Command::Lag(l) => lag::lag(&broker, &l, out).await,
        Command::Request(r) => request::request(&broker, r, out).await,
    }
}
