//! Every example runs to completion and checks its own outcome (exit code 0).

use std::process::Command;

fn run(exe: &str) {
    let out = Command::new(exe).output().expect("example starts");
    assert!(
        out.status.success(),
        "{exe} failed:\n{}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn quickstart() {
    run(env!("CARGO_BIN_EXE_quickstart"));
}

#[test]
fn competing_consumers() {
    run(env!("CARGO_BIN_EXE_competing_consumers"));
}

#[test]
fn fan_out() {
    run(env!("CARGO_BIN_EXE_fan_out"));
}

#[test]
fn request_reply() {
    run(env!("CARGO_BIN_EXE_request_reply"));
}

#[test]
fn retry_dlq_replay() {
    run(env!("CARGO_BIN_EXE_retry_dlq_replay"));
}
