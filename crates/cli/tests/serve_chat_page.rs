//! `fluent-ai-candle serve` serves the chat page at `/` (no key needed for the page, while the
//! API keeps needing it), and `--no-chat-page` turns it off (404). Real binary and SmolLM2,
//! raw HTTP over loopback.

#![cfg(unix)]

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::Child;
use std::time::Duration;

mod common;

use common::spawn_serve;

/// Starts `serve` with the key `k` and `extra` arguments on a free port.
fn serve(extra: &[&str]) -> (Child, SocketAddr) {
    let mut args = vec!["--port", "0", "--api-key", "k"];
    args.extend_from_slice(extra);
    spawn_serve(&args)
}

fn get(addr: SocketAddr, path: &str) -> String {
    let mut s = TcpStream::connect(addr).expect("connect");
    s.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut out = String::new();
    let _ = s.read_to_string(&mut out);
    out
}

fn stop(mut child: Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[test]
fn the_chat_page_is_on_by_default_and_off_with_the_flag() {
    let (child, addr) = serve(&[]);
    let page = get(addr, "/");
    assert!(page.starts_with("HTTP/1.1 200"), "{page}");
    let lower = page.to_ascii_lowercase();
    assert!(lower.contains("content-type: text/html; charset=utf-8"));
    assert!(lower.contains("content-security-policy: default-src 'self';"));
    assert!(page.contains("<!doctype html>"));
    // The API still needs the key (the page is public, its calls are not).
    assert!(get(addr, "/v1/models").starts_with("HTTP/1.1 401"));
    stop(child);

    let (child, addr) = serve(&["--no-chat-page"]);
    let page = get(addr, "/");
    assert!(page.starts_with("HTTP/1.1 404"), "{page}");
    assert!(!page
        .to_ascii_lowercase()
        .contains("content-security-policy"));
    stop(child);
}
