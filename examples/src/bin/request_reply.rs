//! Request-reply: a pricing service answers quotes; a request nobody answers times out.
//! `cargo run -p messaging-examples --bin request_reply` (any broker: `MESSAGING_URL`)

use std::time::Duration;

use messaging::handler::{HandlerError, Incoming, handler_fn};
use messaging::request::{RequestError, Requester, reply};
use messaging::{AttributesReader, EventBuilder, EventExt, SubscribeOptions, Subscriber};
use messaging_examples::{Shutdown, broker, fresh};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let broker = broker().await?;
    let publisher = broker.publisher();
    let requests = fresh("price-requests");

    // The responder: a consumer whose handler replies.
    let out = publisher.clone();
    let pricing = handler_fn(move |msg: Incoming| {
        let out = out.clone();
        async move {
            let sku: String = msg.data()?;
            let price = if sku == "ORD-5678" { 99.99 } else { 10.0 };
            reply(
                &*out,
                msg.event(),
                EventBuilder::new("pricing", "price.quoted").json(&price),
            )
            .await
            .map_err(HandlerError::transient)?;
            Ok::<(), HandlerError>(())
        }
    });
    // The pricing group exists before the first request, so none is published into the void.
    broker
        .subscriber()
        .declare(&requests, SubscribeOptions::new("pricing"))
        .await?;
    let server = broker
        .consumer(&requests, SubscribeOptions::new("pricing"))
        .build(pricing);
    let stop = Shutdown::new();
    let server = tokio::spawn(server.run(stop.signal()));

    let requester = Requester::start(&broker.subscriber(), publisher.clone()).await?;
    let question = EventBuilder::new("shop", "price.requested")
        .json(&"ORD-5678")
        .build()?;
    let id = question.id().to_owned();
    let answer = requester
        .request(&requests, question, Duration::from_secs(30))
        .await?;
    println!(
        "request {id} answered: {} (causation {})",
        answer.data_json::<f64>()?,
        answer.causation_id().unwrap_or("-")
    );

    let unanswered = EventBuilder::new("shop", "stock.requested")
        .json(&"ORD-1")
        .build()?;
    match requester
        .request(
            &fresh("stock-requests"),
            unanswered,
            Duration::from_millis(500),
        )
        .await
    {
        Err(RequestError::Timeout(after)) => {
            println!("stock request timed out after {after:?}, as nobody serves it")
        }
        other => return Err(format!("expected a timeout, got {other:?}").into()),
    }
    stop.stop();
    server.await??;
    Ok(())
}
