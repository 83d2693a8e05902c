//! The load tester refuses what it must not do before sending anything: a target that is not
//! on loopback, an unknown workload, zero-sized runs.

use std::process::Command;

fn loadtest(args: &[&str]) -> (bool, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_loadtest"))
        .args(args)
        .output()
        .expect("run loadtest");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn a_url_off_loopback_is_refused() {
    for url in [
        "http://10.1.2.3:8080",
        "http://192.168.0.10",
        "http://example.com",
        "https://127.0.0.1:8080",
        "http://127.0.0.1.example.com:80",
    ] {
        let (ok, err) = loadtest(&["--url", url, "--seconds", "1"]);
        assert!(!ok, "{url} was accepted");
        assert!(err.contains("loopback"), "{url}: {err}");
    }
}

#[test]
fn bad_arguments_are_refused() {
    let (ok, err) = loadtest(&["--workload", "nonsense"]);
    assert!(!ok && err.contains("unknown workload"), "{err}");
    let (ok, err) = loadtest(&["--groups", "0"]);
    assert!(!ok && err.contains("at least 1"), "{err}");
    let (ok, err) = loadtest(&["--clients"]);
    assert!(!ok && err.contains("needs a value"), "{err}");
}
