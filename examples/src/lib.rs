//! Runnable examples for `messaging`; see `src/bin/`. Run one with
//! `cargo run -p messaging-examples --bin <name>`.

use serde::{Deserialize, Serialize};

/// The seed's `order.created` payload.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct OrderCreated {
    /// Order number.
    pub order_id: String,
    /// Amount in `currency`.
    pub amount: f64,
    /// ISO 4217 currency code.
    pub currency: String,
}
