//! `fluent-ai-candle serve` as an operator runs it: it listens at once and is not ready while
//! the model loads; on SIGTERM it turns not ready, refuses new work with 503, lets the stream
//! in flight finish and exits 0. Real SmolLM2, raw HTTP over loopback.

#![cfg(unix)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Command;
use std::time::{Duration, Instant};

mod common;

use common::{spawn_serve, MODEL};

/// One request on a fresh connection; the whole answer (the server closes after it).
fn http(addr: SocketAddr, request: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
    s.write_all(request.as_bytes()).unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn get(addr: SocketAddr, path: &str) -> String {
    http(
        addr,
        &format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"),
    )
}

fn post(addr: SocketAddr, path: &str, body: &str) -> String {
    http(
        addr,
        &format!(
            "POST {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\
             Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
            body.len()
        ),
    )
}

#[test]
fn sigterm_drains_the_stream_in_flight_then_exits() {
    let (mut child, addr) = spawn_serve(&["--port", "0", "--shutdown-timeout", "60"]);

    // Not ready until the model is loaded, then ready.
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let answer = get(addr, "/health");
        if answer.starts_with("HTTP/1.1 200") {
            break;
        }
        assert!(answer.starts_with("HTTP/1.1 503"), "{answer}");
        assert!(answer.contains("\"loading\""), "{answer}");
        assert!(Instant::now() < deadline, "never ready");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A stream in flight when SIGTERM arrives.
    let body = format!(
        r#"{{"model":"{MODEL}","messages":[{{"role":"user","content":"Count."}}],"max_tokens":48,"ignore_eos":true,"temperature":0,"stream":true}}"#
    );
    let mut stream = TcpStream::connect(addr).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(60)))
        .unwrap();
    write!(
        stream,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut first = [0u8; 64];
    let n = stream.read(&mut first).unwrap();
    assert!(
        String::from_utf8_lossy(&first[..n]).starts_with("HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    let status = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());

    // Draining: not ready, new work refused, each answer closes its connection.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let answer = get(addr, "/health");
        if answer.starts_with("HTTP/1.1 503") {
            assert!(answer.contains("\"draining\""), "{answer}");
            assert!(answer.to_ascii_lowercase().contains("connection: close"));
            break;
        }
        assert!(Instant::now() < deadline, "never draining: {answer}");
        std::thread::sleep(Duration::from_millis(10));
    }
    let refused = post(addr, "/v1/completions", r#"{"prompt":"Hi","max_tokens":2}"#);
    assert!(refused.starts_with("HTTP/1.1 503"), "{refused}");

    // The stream in flight runs to its end, then the process exits cleanly.
    let mut rest = String::new();
    let _ = stream.read_to_string(&mut rest);
    assert!(rest.contains("data: [DONE]"), "{rest}");
    let deadline = Instant::now() + Duration::from_secs(15);
    let code = loop {
        if let Some(code) = child.try_wait().unwrap() {
            break code;
        }
        assert!(Instant::now() < deadline, "did not exit after draining");
        std::thread::sleep(Duration::from_millis(20));
    };
    assert!(code.success(), "{code:?}");
}
