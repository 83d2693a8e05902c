//! The MaskBench protocol (JSONSchemaBench's mask benchmark plus an end-state check), as a
//! library so the `maskbench` binary (benches crate) and tests share it.
//!
//! For each schema: compile it (timed). For each test instance: tokenize its `text` without
//! special tokens; for each token compute the mask (timed), check the token is allowed, commit
//! it; stop at the first disallowed token. An instance is accepted when every token was allowed
//! and the final state is accepting. A schema passes when it compiled, every valid instance was
//! accepted and every invalid one rejected.

use crate::{CompileOptions, Constraint, ConstraintSpec, JsonSchemaMode, TokenMask, Vocabulary};
use std::collections::BTreeMap;
use std::io::Read;
use std::sync::Arc;
use std::time::Instant;

/// Outcome of one schema.
#[derive(Debug, Clone)]
pub struct CaseResult {
    /// The case's name.
    pub name: String,
    /// `None` when compiled, else the compile error.
    pub compile_error: Option<String>,
    /// Compile time in microseconds.
    pub compile_us: f64,
    /// Valid instances rejected.
    pub valid_rejected: usize,
    /// Invalid instances accepted.
    pub invalid_accepted: usize,
    /// Whether the schema passes.
    pub passing: bool,
    /// For the first rejected valid instance: the text up to the rejected token, and it.
    pub first_rejection: Option<String>,
}

/// Aggregate figures.
#[derive(Debug, Clone, Default)]
pub struct Summary {
    /// Schemas read.
    pub schemas: usize,
    /// Schemas compiled.
    pub compiled: usize,
    /// Schemas passing.
    pub passing: usize,
    /// Masks computed.
    pub tokens: usize,
    /// Mask time percentiles and mean (µs).
    pub mask_us_p50: f64,
    /// 99th percentile mask time (µs).
    pub mask_us_p99: f64,
    /// Mean mask time (µs).
    pub mask_us_mean: f64,
    /// Median compile time of compiled schemas (µs).
    pub compile_us_p50: f64,
    /// Per-case outcomes.
    pub cases: Vec<CaseResult>,
}

impl Summary {
    /// The one-line JSON object the protocol prints last.
    pub fn json_line(&self) -> String {
        serde_json::json!({
            "schemas": self.schemas,
            "compiled": self.compiled,
            "passing": self.passing,
            "tokens": self.tokens,
            "mask_us_p50": round2(self.mask_us_p50),
            "mask_us_p99": round2(self.mask_us_p99),
            "mask_us_mean": round2(self.mask_us_mean),
            "compile_us_p50": round2(self.compile_us_p50),
        })
        .to_string()
    }

    /// Failure categories, largest first: compile errors by kind, then wrong answers.
    pub fn failure_categories(&self) -> Vec<(String, usize)> {
        let mut m: BTreeMap<String, usize> = BTreeMap::new();
        for c in &self.cases {
            if c.passing {
                continue;
            }
            let key = match &c.compile_error {
                Some(e) => format!("compile: {}", error_kind(e)),
                None if c.valid_rejected > 0 && c.invalid_accepted > 0 => {
                    "valid rejected + invalid accepted".into()
                }
                None if c.valid_rejected > 0 => "valid instance rejected".into(),
                None => "invalid instance accepted".into(),
            };
            *m.entry(key).or_default() += 1;
        }
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

fn round2(x: f64) -> f64 {
    (x * 100.0).round() / 100.0
}

fn error_kind(e: &str) -> String {
    if let Some(i) = e.find("unsupported keyword `") {
        let rest = &e[i + 21..];
        return format!("unsupported {}", rest.split('`').next().unwrap_or(""));
    }
    if e.starts_with("compile budget") {
        return "budget".into();
    }
    if e.starts_with("regex error") {
        return "regex".into();
    }
    e.split(':').next().unwrap_or(e).to_string()
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let i = ((sorted.len() - 1) as f64 * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

/// Reads a MaskBench file (plain or gzip, by content), one JSON object per line.
pub fn read_cases(path: &str) -> Result<Vec<serde_json::Value>, String> {
    let raw = std::fs::read(path).map_err(|e| format!("{path}: {e}"))?;
    let text = if raw.starts_with(&[0x1f, 0x8b]) {
        let mut child = std::process::Command::new("gzip")
            .args(["-dc", path])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("gzip: {e}"))?;
        let mut s = String::new();
        child
            .stdout
            .take()
            .ok_or("gzip: no output")?
            .read_to_string(&mut s)
            .map_err(|e| format!("gzip: {e}"))?;
        child.wait().map_err(|e| format!("gzip: {e}"))?;
        s
    } else {
        String::from_utf8(raw).map_err(|e| format!("{path}: {e}"))?
    };
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).map_err(|e| format!("{path}: {e}")))
        .collect()
}

/// Runs the protocol on `cases` (at most `limit`) with `tokenizer`; `progress` is called after
/// each schema.
pub fn run(
    cases: &[serde_json::Value],
    tokenizer: &tokenizers::Tokenizer,
    vocab: Arc<Vocabulary>,
    limit: Option<usize>,
    progress: impl FnMut(usize, &CaseResult),
) -> Summary {
    run_with(
        cases,
        tokenizer,
        vocab,
        limit,
        &CompileOptions::default(),
        progress,
    )
}

/// [`run`] with the given compile options (e.g. `share_lexemes: false` for cold compiles).
pub fn run_with(
    cases: &[serde_json::Value],
    tokenizer: &tokenizers::Tokenizer,
    vocab: Arc<Vocabulary>,
    limit: Option<usize>,
    opts: &CompileOptions,
    mut progress: impl FnMut(usize, &CaseResult),
) -> Summary {
    let mut mask = TokenMask::forbid_all(vocab.len());
    let mut mask_us: Vec<f64> = Vec::new();
    let mut compile_us: Vec<f64> = Vec::new();
    let mut out = Summary::default();
    for (i, case) in cases.iter().take(limit.unwrap_or(usize::MAX)).enumerate() {
        let name = case["name"].as_str().unwrap_or("").to_string();
        let schema = case["schema"].clone();
        let t0 = Instant::now();
        let compiled =
            // MaskBench tests the spec-faithful reading (every JSON text the schema accepts)
            Constraint::compile(
                &ConstraintSpec::JsonSchemaWithMode(schema, JsonSchemaMode::Spec),
                vocab.clone(),
                opts,
            );
        let cus = t0.elapsed().as_secs_f64() * 1e6;
        let mut res = CaseResult {
            name,
            compile_error: None,
            compile_us: cus,
            valid_rejected: 0,
            invalid_accepted: 0,
            passing: false,
            first_rejection: None,
        };
        match compiled {
            Err(e) => res.compile_error = Some(e.to_string()),
            Ok(c) => {
                compile_us.push(cus);
                out.compiled += 1;
                for t in case["tests"].as_array().into_iter().flatten() {
                    let valid = t["valid"].as_bool().unwrap_or(false);
                    let text = t["text"].as_str().unwrap_or("");
                    let ids = tokenizer
                        .encode(text, false)
                        .map(|e| e.get_ids().to_vec())
                        .unwrap_or_default();
                    let mut st = c.start();
                    let mut ok = true;
                    let mut done = 0usize;
                    for &id in &ids {
                        let t1 = Instant::now();
                        let r = st.compute_mask(&mut mask);
                        mask_us.push(t1.elapsed().as_secs_f64() * 1e6);
                        if r.is_err() || !mask.is_allowed(id) || st.commit_token(id).is_err() {
                            ok = false;
                            break;
                        }
                        done += 1;
                    }
                    let accepted = ok && st.is_accepting();
                    if valid && !accepted {
                        if res.first_rejection.is_none() {
                            let head = tokenizer.decode(&ids[..done], false).unwrap_or_default();
                            let tok = ids
                                .get(done)
                                .and_then(|&t| tokenizer.decode(&[t], false).ok())
                                .unwrap_or_else(|| "<end>".into());
                            res.first_rejection = Some(format!("{head} >>>{tok}<<<"));
                        }
                        res.valid_rejected += 1;
                    }
                    if !valid && accepted {
                        res.invalid_accepted += 1;
                    }
                }
                res.passing = res.valid_rejected == 0 && res.invalid_accepted == 0;
                if res.passing {
                    out.passing += 1;
                }
            }
        }
        out.schemas += 1;
        progress(i, &res);
        out.cases.push(res);
    }
    out.tokens = mask_us.len();
    mask_us.sort_by(|a, b| a.total_cmp(b));
    compile_us.sort_by(|a, b| a.total_cmp(b));
    out.mask_us_p50 = percentile(&mask_us, 0.5);
    out.mask_us_p99 = percentile(&mask_us, 0.99);
    out.mask_us_mean = if mask_us.is_empty() {
        0.0
    } else {
        mask_us.iter().sum::<f64>() / mask_us.len() as f64
    };
    out.compile_us_p50 = percentile(&compile_us, 0.5);
    out
}

/// The command line: `--data FILE [--limit N] [--every K] [--json] [--tokenizer FILE]`
/// (`--every K`: only every K-th schema, from the first — a fixed subset for quick runs). Prints a table
/// (unless `--json`) and, last, the JSON summary line. Returns the process exit code.
pub fn main_with_args(args: &[String]) -> i32 {
    let mut data = None;
    let mut limit = None;
    let mut every = 1usize;
    let mut json = false;
    let mut errors = false;
    let mut opts = CompileOptions::default();
    let mut tok_path = String::from("fixtures/reference/smollm2-tokenizer.json");
    let mut it = args.iter();
    while let Some(a) = it.next() {
        match a.as_str() {
            "--data" => data = it.next().cloned(),
            "--limit" => limit = it.next().and_then(|s| s.parse().ok()),
            "--every" => every = it.next().and_then(|s| s.parse().ok()).unwrap_or(1).max(1),
            "--json" => json = true,
            "--errors" => errors = true,
            "--no-shared-lexemes" => opts.share_lexemes = false,
            "--tokenizer" => {
                if let Some(t) = it.next() {
                    tok_path = t.clone();
                }
            }
            "-h" | "--help" => {
                eprintln!("usage: maskbench --data FILE [--limit N] [--every K] [--json] [--errors] [--no-shared-lexemes] [--tokenizer FILE]");
                return 0;
            }
            other => {
                eprintln!("maskbench: unknown argument {other:?}");
                return 2;
            }
        }
    }
    let Some(data) = data else {
        eprintln!(
            "usage: maskbench --data FILE [--limit N] [--every K] [--json] [--errors] [--no-shared-lexemes] [--tokenizer FILE]"
        );
        return 2;
    };
    let tokenizer = match tokenizers::Tokenizer::from_file(&tok_path) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("maskbench: tokenizer {tok_path}: {e}");
            return 1;
        }
    };
    let mut eos: Vec<u32> = ["<|im_end|>", "<|endoftext|>", "</s>", "<|eot_id|>"]
        .iter()
        .filter_map(|t| tokenizer.token_to_id(t))
        .collect();
    eos.sort_unstable();
    let vocab = match Vocabulary::from_tokenizer(&tokenizer, &eos) {
        Ok(v) => Arc::new(v),
        Err(e) => {
            eprintln!("maskbench: {e}");
            return 1;
        }
    };
    let cases = match read_cases(&data) {
        Ok(c) => c.into_iter().step_by(every).collect::<Vec<_>>(),
        Err(e) => {
            eprintln!("maskbench: {e}");
            return 1;
        }
    };
    let total = limit.unwrap_or(cases.len()).min(cases.len());
    let started = Instant::now();
    let s = run_with(&cases, &tokenizer, vocab, limit, &opts, |i, r| {
        if errors && !r.passing {
            eprintln!(
                "FAIL {}: {}",
                r.name,
                r.compile_error.clone().unwrap_or_else(|| format!(
                    "{} valid rejected, {} invalid accepted",
                    r.valid_rejected, r.invalid_accepted
                ))
            );
            if let Some(f) = &r.first_rejection {
                eprintln!(
                    "    at: {}",
                    f.chars()
                        .rev()
                        .take(120)
                        .collect::<Vec<_>>()
                        .into_iter()
                        .rev()
                        .collect::<String>()
                );
            }
        }
        if !json && (i + 1) % 500 == 0 {
            eprintln!(
                "  {}/{} schemas, {:.0} s",
                i + 1,
                total,
                started.elapsed().as_secs_f64()
            );
        }
    });
    if !json {
        println!("| | schemas | compiled | passing | tokens | mask p50 | mask p99 | mask mean | compile p50 |");
        println!("|---|---|---|---|---|---|---|---|---|");
        println!(
            "| fluent-ai-candle-constraints | {} | {} | {} | {} | {:.1} µs | {:.1} µs | {:.1} µs | {:.2} ms |",
            s.schemas,
            s.compiled,
            s.passing,
            s.tokens,
            s.mask_us_p50,
            s.mask_us_p99,
            s.mask_us_mean,
            s.compile_us_p50 / 1000.0
        );
        println!();
        println!("Largest failure categories:");
        for (k, n) in s.failure_categories().iter().take(15) {
            println!("  {n:6}  {k}");
        }
        let mut by_cat: BTreeMap<String, (usize, usize)> = BTreeMap::new();
        for c in &s.cases {
            let cat = c
                .name
                .rsplit_once('_')
                .map_or(c.name.as_str(), |x| x.0)
                .to_string();
            let e = by_cat.entry(cat).or_default();
            e.0 += 1;
            e.1 += c.passing as usize;
        }
        let mut cats: Vec<_> = by_cat.into_iter().filter(|(_, (n, p))| n > p).collect();
        cats.sort_by_key(|c| std::cmp::Reverse(c.1 .0 - c.1 .1));
        println!("Name categories with the most failures (failing / total):");
        for (k, (n, p)) in cats.iter().take(10) {
            println!("  {:6} / {:6}  {k}", n - p, n);
        }
    }
    println!("{}", s.json_line());
    0
}
