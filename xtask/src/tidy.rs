//! `cargo xtask tidy`: the architecture invariants of docs/ARCHITECTURE.md, checked.
//!
//! 1. **Crate arrows.** From `cargo metadata`, each workspace crate's normal dependency tree
//!    (its declared non-dev, non-build dependencies, optional ones only when its `default`
//!    features turn them on, then everything those pull in) must not reach a forbidden crate:
//!    the sampling and constraint crates stay free of candle, tokenizers and tokio; the server
//!    does not name the models crate, candle or tokenizers among its own dependencies (it
//!    reaches them only through the engine); the KV cache knows nothing of the engine; the models crate
//!    nothing of the engine or the server.
//! 2. **`unsafe`.** An `unsafe` block, function or impl appears only in the kernels crate and
//!    the sampling crate's SIMD module (and in test code that must implement an unsafe trait,
//!    such as a counting `GlobalAlloc`), and every `unsafe` block has a `// SAFETY:` comment
//!    on the lines just above it (or on its own line).
//!
//! Every violation is printed with its place; the task fails when there is any.

use std::collections::{BTreeSet, HashMap};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};
use serde_json::Value;

use crate::util;

/// `(crate, forbidden dependency, why)`: no path of normal dependencies may lead from the
/// first to the second.
const FORBIDDEN: &[(&str, &str, &str)] = &[
    (
        "fluent-ai-candle-sampling",
        "candle-core",
        "the sampler works on any &mut [f32]",
    ),
    (
        "fluent-ai-candle-sampling",
        "tokenizers",
        "the sampler works on any &mut [f32]",
    ),
    (
        "fluent-ai-candle-sampling",
        "tokio",
        "the sampler works on any &mut [f32]",
    ),
    (
        "fluent-ai-candle-constraints",
        "candle-core",
        "the constraint engine never sees a tensor",
    ),
    (
        "fluent-ai-candle-constraints",
        "tokenizers",
        "the constraint engine takes token bytes",
    ),
    (
        "fluent-ai-candle-constraints",
        "tokio",
        "the constraint engine is synchronous",
    ),
    (
        "fluent-ai-candle-kv-cache",
        "fluent-ai-candle-engine",
        "the cache sits below the engine",
    ),
    (
        "fluent-ai-candle-models",
        "fluent-ai-candle-engine",
        "models sit below the engine",
    ),
    (
        "fluent-ai-candle-models",
        "fluent-ai-candle-server",
        "models sit below the server",
    ),
    (
        "fluent-ai-candle-kernels",
        "candle-core",
        "kernels work on plain slices",
    ),
];

/// `(crate, forbidden direct dependency, why)`: the first may reach the second through the
/// layers between them (the server reaches the models crate through the engine), but must not
/// name it in its own `Cargo.toml`.
const FORBIDDEN_DIRECT: &[(&str, &str, &str)] = &[
    (
        "fluent-ai-candle-server",
        "fluent-ai-candle-models",
        "the server is a protocol layer: it reaches models only through the engine",
    ),
    (
        "fluent-ai-candle-server",
        "candle-core",
        "the server is a protocol layer: no tensors",
    ),
    (
        "fluent-ai-candle-server",
        "tokenizers",
        "the server is a protocol layer: the engine tokenizes",
    ),
];

/// Forbidden arrows that still exist, each with the issue that removes it. They are printed
/// on every run; an arrow listed here that is gone fails tidy (remove it from the list), so
/// the list can only shrink.
const KNOWN_OPEN: &[(&str, &str, &str)] = &[];

/// Source folders where `unsafe` may appear (relative to the workspace root).
const UNSAFE_ALLOWED: &[&str] = &["crates/kernels/src/", "crates/sampling/src/simd"];

/// Runs both checks and fails when either finds a violation.
pub fn run() -> Result<()> {
    let root = util::root();
    let mut problems = crate_arrows(&root)?;
    problems.extend(unsafe_blocks(&root)?);
    if problems.is_empty() {
        eprintln!("xtask tidy: crate arrows and unsafe blocks are as ARCHITECTURE.md says");
        return Ok(());
    }
    for p in &problems {
        eprintln!("tidy: {p}");
    }
    bail!("tidy found {} problem(s)", problems.len())
}

/// One package of `cargo metadata`: its normal dependencies by name, and for workspace members
/// the declared ones filtered by default features.
struct Graph {
    /// Package id → names of the normal dependencies it reaches directly.
    resolved: HashMap<String, Vec<(String, String)>>,
    /// Workspace member name → package id.
    members: HashMap<String, String>,
    /// Package id → its declared normal dependencies that are on by default.
    default_deps: HashMap<String, BTreeSet<String>>,
}

fn metadata(root: &Path) -> Result<Value> {
    let out = util::cargo()
        .current_dir(root)
        .args(["metadata", "--format-version", "1", "--locked"])
        .output()
        .context("could not run cargo metadata")?;
    if !out.status.success() {
        bail!(
            "cargo metadata failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    serde_json::from_slice(&out.stdout).context("cargo metadata printed no JSON")
}

fn graph(meta: &Value) -> Result<Graph> {
    let members: BTreeSet<&str> = meta["workspace_members"]
        .as_array()
        .context("no workspace_members")?
        .iter()
        .filter_map(Value::as_str)
        .collect();
    let mut names = HashMap::new();
    let mut default_deps = HashMap::new();
    for p in meta["packages"].as_array().context("no packages")? {
        let id = p["id"].as_str().unwrap_or_default().to_string();
        let name = p["name"].as_str().unwrap_or_default().to_string();
        if !members.contains(id.as_str()) {
            continue;
        }
        // Optional dependencies count only when the default features enable them.
        let defaults: BTreeSet<String> = p["features"]["default"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_str).collect::<Vec<_>>())
            .unwrap_or_default()
            .iter()
            .flat_map(|f| enabled_deps(p, f))
            .collect();
        let mut deps = BTreeSet::new();
        for d in p["dependencies"].as_array().into_iter().flatten() {
            let normal = d["kind"].is_null();
            let optional = d["optional"].as_bool().unwrap_or(false);
            let dep_name = d["rename"]
                .as_str()
                .or(d["name"].as_str())
                .unwrap_or_default();
            if normal && (!optional || defaults.contains(dep_name)) {
                deps.insert(d["name"].as_str().unwrap_or_default().to_string());
            }
        }
        default_deps.insert(id.clone(), deps);
        names.insert(name, id);
    }
    let mut resolved = HashMap::new();
    for node in meta["resolve"]["nodes"].as_array().context("no resolve")? {
        let id = node["id"].as_str().unwrap_or_default().to_string();
        let deps = node["deps"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|d| {
                d["dep_kinds"]
                    .as_array()
                    .is_some_and(|k| k.iter().any(|k| k["kind"].is_null()))
            })
            .filter_map(|d| {
                let pkg = d["pkg"].as_str()?.to_string();
                Some((crate_name(&pkg, meta), pkg))
            })
            .collect();
        resolved.insert(id, deps);
    }
    Ok(Graph {
        resolved,
        members: names,
        default_deps,
    })
}

/// The dependencies a feature of package `p` turns on, following its other features.
fn enabled_deps(p: &Value, feature: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut todo = vec![feature.to_string()];
    let mut seen = BTreeSet::new();
    while let Some(f) = todo.pop() {
        if !seen.insert(f.clone()) {
            continue;
        }
        if let Some(dep) = f.strip_prefix("dep:") {
            out.push(dep.to_string());
            continue;
        }
        if let Some((dep, _)) = f.split_once('/') {
            out.push(dep.trim_end_matches('?').to_string());
            continue;
        }
        match p["features"][&f].as_array() {
            Some(list) => todo.extend(list.iter().filter_map(Value::as_str).map(String::from)),
            // A feature name that is not a feature is an optional dependency's implicit one.
            None => out.push(f),
        }
    }
    out
}

fn crate_name(id: &str, meta: &Value) -> String {
    meta["packages"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|p| p["id"].as_str() == Some(id))
        .and_then(|p| p["name"].as_str())
        .unwrap_or(id)
        .to_string()
}

/// Every forbidden arrow that the normal dependency trees contain, with the path that leads
/// there.
fn crate_arrows(root: &Path) -> Result<Vec<String>> {
    let meta = metadata(root)?;
    let g = graph(&meta)?;
    let mut problems = Vec::new();
    for &(from, to, why) in FORBIDDEN {
        let Some(start) = g.members.get(from) else {
            continue;
        };
        let open = KNOWN_OPEN.iter().find(|(f, t, _)| *f == from && *t == to);
        match (find_path(&g, start, to), open) {
            (Some(path), Some((_, _, issue))) => {
                eprintln!("tidy: known open arrow {} ({issue})", path.join(" → "))
            }
            (Some(path), None) => problems.push(format!(
                "{from} must not depend on {to} ({why}): {}",
                path.join(" → ")
            )),
            (None, Some(_)) => problems.push(format!(
                "{from} → {to} is gone: remove it from KNOWN_OPEN in xtask/src/tidy.rs"
            )),
            (None, None) => {}
        }
    }
    for &(from, to, why) in FORBIDDEN_DIRECT {
        let Some(start) = g.members.get(from) else {
            continue;
        };
        let declared = g.default_deps.get(start);
        let direct = g
            .resolved
            .get(start)
            .into_iter()
            .flatten()
            .any(|(name, _)| name == to && declared.is_none_or(|d| d.contains(name)));
        if direct {
            problems.push(format!("{from} must not depend directly on {to} ({why})"));
        }
    }
    Ok(problems)
}

/// A path of crate names from `start` to a crate named `target`, breadth-first. Workspace
/// members contribute only their default-on declared dependencies; other packages their
/// resolved normal ones.
fn find_path(g: &Graph, start: &str, target: &str) -> Option<Vec<String>> {
    let mut parent: HashMap<String, String> = HashMap::new();
    let mut names: HashMap<String, String> = g
        .members
        .iter()
        .map(|(n, id)| (id.clone(), n.clone()))
        .collect();
    let mut queue = std::collections::VecDeque::from([start.to_string()]);
    while let Some(id) = queue.pop_front() {
        let declared = g.default_deps.get(&id);
        for (name, dep) in g.resolved.get(&id).into_iter().flatten() {
            if declared.is_some_and(|d| !d.contains(name)) || dep == start {
                continue;
            }
            if parent.contains_key(dep) {
                continue;
            }
            parent.insert(dep.clone(), id.clone());
            names.insert(dep.clone(), name.clone());
            if name == target {
                let mut path = vec![name.clone()];
                let mut at = dep.clone();
                while let Some(p) = parent.get(&at) {
                    path.push(names.get(p).cloned().unwrap_or_else(|| p.clone()));
                    at = p.clone();
                }
                path.reverse();
                return Some(path);
            }
            queue.push_back(dep.clone());
        }
    }
    None
}

/// Every `unsafe` outside the allowed modules, and every `unsafe` block without a
/// `// SAFETY:` line.
fn unsafe_blocks(root: &Path) -> Result<Vec<String>> {
    let mut files = Vec::new();
    for dir in ["crates", "benches", "xtask"] {
        rust_files(&root.join(dir), &mut files)?;
    }
    let mut problems = Vec::new();
    for file in files {
        let rel = file
            .strip_prefix(root)
            .unwrap_or(&file)
            .to_string_lossy()
            .replace('\\', "/");
        if rel == "xtask/src/tidy.rs" {
            continue;
        }
        let text = std::fs::read_to_string(&file).with_context(|| format!("reading {rel}"))?;
        problems.extend(check_file(&rel, &text));
    }
    Ok(problems)
}

/// The problems of one file's `unsafe` uses (pure: tested below).
/// `text` with the contents of comments, string literals (raw ones included) and character
/// literals replaced by blanks, line breaks kept: what is left is code, line for line.
fn code_only(text: &str) -> String {
    let chars: Vec<char> = text.chars().collect();
    let mut out = String::with_capacity(text.len());
    let blank = |c: char| if c == '\n' { '\n' } else { ' ' };
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let next = chars.get(i + 1).copied();
        if c == '/' && next == Some('/') {
            while i < chars.len() && chars[i] != '\n' {
                out.push(' ');
                i += 1;
            }
        } else if c == '/' && next == Some('*') {
            let mut depth = 0;
            while i < chars.len() {
                if chars[i] == '/' && chars.get(i + 1) == Some(&'*') {
                    depth += 1;
                    out.push_str("  ");
                    i += 2;
                } else if chars[i] == '*' && chars.get(i + 1) == Some(&'/') {
                    depth -= 1;
                    out.push_str("  ");
                    i += 2;
                    if depth == 0 {
                        break;
                    }
                } else {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
        } else if c == 'r' && matches!(next, Some('"') | Some('#')) && !ident_before(&chars, i) {
            // A raw string: r"…" or r#"…"# (any number of #).
            let mut j = i + 1;
            while chars.get(j) == Some(&'#') {
                j += 1;
            }
            if chars.get(j) != Some(&'"') {
                out.push(c);
                i += 1;
                continue;
            }
            let hashes = j - i - 1;
            out.extend(std::iter::repeat_n(' ', j - i + 1));
            i = j + 1;
            while i < chars.len() {
                if chars[i] == '"' && (0..hashes).all(|h| chars.get(i + 1 + h) == Some(&'#')) {
                    out.extend(std::iter::repeat_n(' ', hashes + 1));
                    i += hashes + 1;
                    break;
                }
                out.push(blank(chars[i]));
                i += 1;
            }
        } else if c == '"' {
            out.push(' ');
            i += 1;
            while i < chars.len() {
                match chars[i] {
                    '\\' => {
                        out.push(' ');
                        if let Some(&e) = chars.get(i + 1) {
                            out.push(blank(e));
                        }
                        i += 2;
                    }
                    '"' => {
                        out.push(' ');
                        i += 1;
                        break;
                    }
                    other => {
                        out.push(blank(other));
                        i += 1;
                    }
                }
            }
        } else if c == '\'' && (next == Some('\\') || chars.get(i + 2) == Some(&'\'')) {
            // A character literal ('x', '\n', '\u{..}'); a lifetime has no closing quote.
            out.push(' ');
            i += 1;
            while i < chars.len() && chars[i] != '\'' {
                if chars[i] == '\\' {
                    out.push(' ');
                    i += 1;
                }
                if i < chars.len() {
                    out.push(blank(chars[i]));
                    i += 1;
                }
            }
            if i < chars.len() {
                out.push(' ');
                i += 1;
            }
        } else {
            out.push(c);
            i += 1;
        }
    }
    out
}

/// Whether the character before `i` continues an identifier (so `r` is not a raw-string prefix).
fn ident_before(chars: &[char], i: usize) -> bool {
    i > 0 && (chars[i - 1].is_alphanumeric() || chars[i - 1] == '_')
}

fn check_file(rel: &str, text: &str) -> Vec<String> {
    let allowed = UNSAFE_ALLOWED.iter().any(|p| rel.starts_with(p));
    let test_code = rel.contains("/tests/");
    let lines: Vec<&str> = text.lines().collect();
    let masked = code_only(text);
    let mut problems = Vec::new();
    for (i, code) in masked.lines().enumerate() {
        let Some(pos) = find_unsafe(code) else {
            continue;
        };
        let after = code[pos + "unsafe".len()..].trim_start();
        let is_block = after.starts_with('{') || after.is_empty();
        let is_impl = after.starts_with("impl");
        if !allowed && !(test_code && (is_impl || is_block || after.starts_with("fn"))) {
            problems.push(format!(
                "{rel}:{}: `unsafe` outside the kernels crate and sampling's SIMD module",
                i + 1
            ));
            continue;
        }
        if is_block && !has_safety_comment(&lines, i) {
            problems.push(format!(
                "{rel}:{}: `unsafe` block without a `// SAFETY:` line above it",
                i + 1
            ));
        }
    }
    problems
}

/// The byte offset of the keyword `unsafe` in a line of code (not inside an identifier such as
/// `unsafe_code`, nor in a string).
fn find_unsafe(code: &str) -> Option<usize> {
    let mut in_str = false;
    let bytes = code.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'"' if i == 0 || bytes[i - 1] != b'\\' => in_str = !in_str,
            b'u' if !in_str && code[i..].starts_with("unsafe") => {
                let before_ok = i == 0 || !is_ident(bytes[i - 1]);
                let end = i + "unsafe".len();
                let after_ok = end >= bytes.len() || !is_ident(bytes[end]);
                if before_ok && after_ok {
                    return Some(i);
                }
            }
            _ => {}
        }
        i += 1;
    }
    None
}

fn is_ident(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b == b'_'
}

/// True when line `i` itself, or the comment lines right above it (through attributes and the
/// start of the statement the block belongs to, at most six lines), say `SAFETY:`.
fn has_safety_comment(lines: &[&str], i: usize) -> bool {
    // `// SAFETY: …`, or `// SAFETY (what it covers): …`.
    let says_safety = |l: &str| {
        l.split_once("//")
            .is_some_and(|(_, c)| c.trim_start().starts_with("SAFETY"))
    };
    if says_safety(lines[i]) {
        return true;
    }
    for j in (i.saturating_sub(6)..i).rev() {
        let l = lines[j].trim();
        if says_safety(l) {
            return true;
        }
        // A blank line or the end of another statement ends the block's preamble.
        if l.is_empty() || (l.ends_with(';') && !l.starts_with("//")) || l.ends_with('}') {
            return false;
        }
    }
    false
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) -> Result<()> {
    if !dir.exists() {
        return Ok(());
    }
    for entry in std::fs::read_dir(dir).with_context(|| format!("listing {}", dir.display()))? {
        let path = entry?.path();
        let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
        if path.is_dir() {
            if name != "target" && !name.starts_with('.') {
                rust_files(&path, out)?;
            }
        } else if name.ends_with(".rs") {
            out.push(path);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsafe_outside_the_kernels_is_reported() {
        let p = check_file(
            "crates/models/src/x.rs",
            "fn f() {\n    // SAFETY: fine\n    unsafe { g() }\n}\n",
        );
        assert_eq!(p.len(), 1);
        assert!(p[0].contains("crates/models/src/x.rs:3"), "{p:?}");
    }

    #[test]
    fn a_block_needs_a_safety_line() {
        let missing = check_file(
            "crates/kernels/src/arch/x86_64/avx2.rs",
            "fn f() {\n    let a = 1;\n    let v = unsafe { load(p) };\n}\n",
        );
        assert_eq!(missing.len(), 1, "{missing:?}");
        let present = check_file(
            "crates/kernels/src/arch/x86_64/avx2.rs",
            "fn f() {\n    // SAFETY: `p` holds 8 floats.\n    let v = unsafe { load(p) };\n}\n",
        );
        assert!(present.is_empty(), "{present:?}");
    }

    #[test]
    fn identifiers_strings_and_comments_are_not_unsafe() {
        let text = "#![forbid(unsafe_code)]\n// unsafe here\nlet s = \"unsafe\";\n";
        assert!(check_file("crates/models/src/lib.rs", text).is_empty());
    }

    #[test]
    fn multi_line_raw_and_char_literals_are_not_code() {
        let text = "let s = \"one\\\n    pub unsafe fn f() {}\\\n\";\nlet r = r#\"\nunsafe {\n\"#;\nlet c = '\"'; fn g<'a>(x: &'a str) {}\n/* unsafe\n unsafe { */\n";
        assert!(check_file("xtask/src/x.rs", text).is_empty(), "{text}");
        let code = code_only(text);
        assert_eq!(code.lines().count(), text.lines().count());
        assert!(code.contains("fn g<'a>(x: &'a str)"), "{code}");
        let real = "let s = \"x\";\nunsafe { f() }\n";
        assert_eq!(check_file("xtask/src/x.rs", real).len(), 1);
    }

    #[test]
    fn test_code_may_implement_an_unsafe_trait() {
        let text = "unsafe impl GlobalAlloc for C {\n    unsafe fn alloc(&self) {\n        // SAFETY: forwards.\n        unsafe { System.alloc() }\n    }\n}\n";
        assert!(check_file("crates/sampling/tests/alloc.rs", text).is_empty());
    }

    #[test]
    fn optional_dependencies_follow_default_features() {
        let p: Value = serde_json::json!({
            "features": {"default": ["tok"], "tok": ["dep:tokenizers"], "extra": ["serde/std"]}
        });
        assert_eq!(enabled_deps(&p, "default"), vec!["tokenizers".to_string()]);
        assert_eq!(enabled_deps(&p, "extra"), vec!["serde".to_string()]);
    }
}
