//! Kubernetes probes over HTTP (feature `http-probes`): `/livez`, `/readyz` and `/consumers`
//! for a set of consumers, served with axum.
//!
//! | path | 200 when | otherwise |
//! |---|---|---|
//! | `/livez` | every consumer [is live](super::ConsumerStatus::is_live): not stalled, not stopped by an error | 503, naming the failing consumers |
//! | `/readyz` | every consumer [is ready](super::ConsumerStatus::is_ready): running or paused on purpose | 503, naming the consumers that are not |
//! | `/consumers` | always | the consumers' [statuses](super::ConsumerStatus) as a JSON array |
//!
//! Readiness follows the consumers' state as the runtime publishes it: it fails as soon as a
//! receive fails or the subscription is lost (`reconnecting`), and within a second of a
//! consumer counting as stalled.
//!
//! ```no_run
//! # async fn demo(handles: Vec<messaging_core::runtime::ConsumerHandle>) -> std::io::Result<()> {
//! use messaging_core::runtime::probes;
//!
//! let listener = tokio::net::TcpListener::bind("0.0.0.0:8080").await?;
//! probes::serve(listener, handles, std::future::pending()).await?;
//! # Ok(()) }
//! ```

use std::future::Future;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Json, Response};
use axum::routing::get;

use super::{ConsumerHandle, ConsumerStatus};

/// The probe routes for `consumers`, to merge into an application's own axum router.
pub fn router(consumers: Vec<ConsumerHandle>) -> Router {
    Router::new()
        .route("/livez", get(livez))
        .route("/readyz", get(readyz))
        .route("/consumers", get(list))
        .with_state(consumers)
}

/// Serves [`router`] on `listener` until `shutdown` completes.
pub async fn serve(
    listener: tokio::net::TcpListener,
    consumers: Vec<ConsumerHandle>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(consumers))
        .with_graceful_shutdown(shutdown)
        .await
}

fn verdict(consumers: &[ConsumerHandle], ok: fn(&ConsumerStatus) -> bool) -> Response {
    let failing: Vec<String> = consumers
        .iter()
        .map(ConsumerHandle::status)
        .filter(|s| !ok(s))
        .map(|s| {
            let state = serde_json::to_value(s.state).unwrap_or_default();
            let state = state.as_str().unwrap_or("unknown").to_owned();
            match &s.error {
                Some(e) => format!("{} ({}): {state}: {e}", s.topic, s.group),
                None => format!("{} ({}): {state}", s.topic, s.group),
            }
        })
        .collect();
    if failing.is_empty() {
        (StatusCode::OK, "ok\n").into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", failing.join("\n")),
        )
            .into_response()
    }
}

async fn livez(State(consumers): State<Vec<ConsumerHandle>>) -> Response {
    verdict(&consumers, ConsumerStatus::is_live)
}

async fn readyz(State(consumers): State<Vec<ConsumerHandle>>) -> Response {
    verdict(&consumers, ConsumerStatus::is_ready)
}

async fn list(State(consumers): State<Vec<ConsumerHandle>>) -> Json<Vec<ConsumerStatus>> {
    Json(consumers.iter().map(ConsumerHandle::status).collect())
}
