//! `request`: send a request and print the reply as CloudEvents JSON.

use std::io::Write;

use messaging::Broker;
use messaging::request::Requester;

use super::{build_event, to_json_line};
use crate::args::RequestArgs;
use crate::error::{CliError, failed};

pub(crate) async fn request(
    broker: &Broker,
    r: RequestArgs,
    out: &mut dyn Write,
) -> Result<(), CliError> {
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
