//! Fault drills for messaging on the real brokers.
//!
//! A drill runs a real workload — a publisher in the test process and consumer-runtime
//! processes ([`drill-worker`](../src/bin/drill-worker.rs)) that record every handling — then
//! injects a fault (a worker SIGKILLed or SIGTERMed mid-stream, workers added and removed) and
//! checks the record the way Jepsen checks a history ([`check::check`]): every publish that
//! returned `Ok` was handled (0 lost), duplicates counted, no message handled by two workers
//! at once, per-key order kept where the subscription asked for it, and the time until the
//! work the fault interrupted was handled again.
//!
//! [`report`] renders the results as the tables of `docs/reliability.md`;
//! `MESSAGING_DRILL_REPORT=docs/reliability.md cargo test -p messaging-drills` regenerates them.

pub mod check;
pub mod drill;
pub mod process;
pub mod record;
pub mod report;
pub mod workload;
