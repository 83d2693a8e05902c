//! Helpers shared by the CLI's integration tests.
#![allow(dead_code)]

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::process::{Child, Command, Stdio};

/// The model the tests serve (from the model cache).
pub const MODEL: &str = "smollm2-135m-instruct";

/// Starts the real binary's `serve` on `MODEL` with `args` (which must include `--port 0`)
/// and returns the child and the address it printed on stderr; stderr is drained from then
/// on so the child never blocks on it.
pub fn spawn_serve(args: &[&str]) -> (Child, SocketAddr) {
    if let Err(e) = fluent_ai_candle_models::cache::resolve(MODEL) {
        panic!("needs {MODEL}: {e}. Run `cargo xtask fetch-models` first.");
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_fluent-ai-candle"))
        .args(["serve", "--model", MODEL])
        .args(args)
        .stderr(Stdio::piped())
        .stdout(Stdio::null())
        .spawn()
        .expect("start the CLI");
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    while !line.contains("listening on http://") {
        line.clear();
        assert!(
            stderr.read_line(&mut line).unwrap() > 0,
            "the CLI ended early"
        );
    }
    let addr: SocketAddr = line
        .split("http://")
        .nth(1)
        .and_then(|rest| rest.split([',', ' ', '\n']).next())
        .and_then(|a| a.parse().ok())
        .unwrap_or_else(|| panic!("no address in {line:?}"));
    std::thread::spawn(move || {
        let mut rest = String::new();
        let _ = stderr.read_to_string(&mut rest);
    });
    (child, addr)
}
