//! `bench-membw --json` prints the one object its docs name, with real figures, and refuses a
//! buffer of no bytes.

use std::process::Command;

fn membw(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_bench-membw"))
        .args(args)
        .output()
        .expect("run bench-membw")
}

#[test]
fn json_names_both_page_sizes_figures() {
    let out = membw(&["--json", "--mb", "8", "--threads", "2"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let line = String::from_utf8(out.stdout).expect("utf-8");
    let v: serde_json::Value = serde_json::from_str(line.trim()).expect("one JSON object");
    assert_eq!(v["bench"], "membw");
    assert_eq!(v["mib"], 8);
    assert_eq!(v["threads"], 2);
    assert_eq!(v["passes"], 5);
    assert!(v["huge_pages"].is_boolean(), "{v}");
    for key in ["read_gb_s", "read_gb_s_4k"] {
        let gb_s = v[key].as_f64().unwrap_or(f64::NAN);
        assert!(gb_s.is_finite() && gb_s > 0.0, "{key}: {v}");
    }
}

#[test]
fn an_empty_buffer_is_refused() {
    let out = membw(&["--mb", "0"]);
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("--mb"));
}
