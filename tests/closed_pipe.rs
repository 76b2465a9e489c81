//! The command line's printers when whoever reads stdout has gone (`vitalgate status | head
//! -1`): the command ends quietly, with nothing on stderr and no panic, and a probe keeps the
//! exit code that is its answer. stdout is a connected socket whose other end is closed
//! before the command starts, so every write fails with EPIPE exactly as it would on a pipe
//! whose reader exited (a pipe closed after spawning would race the command's first write).

mod live_support;

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixStream;
use std::process::{Command, Output, Stdio};

use live_support::*;

/// Runs the CLI with a stdout that nobody reads any more.
fn run_into_closed_stdout(args: &[&str]) -> Output {
    let (ours, theirs) = UnixStream::pair().unwrap();
    drop(ours);
    Command::new(BIN)
        .args(args)
        .env("RUST_LOG", "warn")
        .stdout(Stdio::from(OwnedFd::from(theirs)))
        .stderr(Stdio::piped())
        .output()
        .unwrap()
}

#[test]
fn status_into_a_closed_pipe_exits_with_its_verdict_and_prints_no_panic() {
    // No daemon running: the verdict is "unreachable", exit 2, whether or not anyone reads it.
    let g = Gateway::new(&sim_device("ox-1", "stable", 500));
    let out = run_into_closed_stdout(&["status", "--config", g.config_arg()]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "stderr");
}

#[test]
fn decode_list_into_a_closed_pipe_exits_0_and_prints_no_panic() {
    let out = run_into_closed_stdout(&["decode", "--list"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "stderr");
}

#[test]
fn check_config_into_a_closed_pipe_exits_0_and_prints_no_panic() {
    let g = Gateway::new(&sim_device("ox-1", "stable", 500));
    let out = run_into_closed_stdout(&["check-config", "--config", g.config_arg()]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stderr));
    assert_eq!(text(&out.stderr), "", "stderr");
}
