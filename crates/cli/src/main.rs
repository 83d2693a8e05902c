//! `fluent-ai-candle`: tokenize, generate and (later) serve from the command line.
//!
//! ```text
//! fluent-ai-candle tokenize [--model M] (--file F | TEXT)
//! fluent-ai-candle generate [--model M] (--file F | PROMPT) [--max-tokens N] [--temperature T]
//!                           [--seed S] [--raw] [--json] [--quant Q]
//!                           [--json-schema FILE [--json-schema-mode generation|spec]
//!                            | --grammar FILE | --regex R] [--device auto|cpu|cuda[:N]|metal[:N]]
//! fluent-ai-candle pull hf:ORG/REPO[:FILE]
//! fluent-ai-candle serve [--model M]... [--host 127.0.0.1] [--port 8080] [--api-key KEY]
//!                        [--max-concurrent N] [--max-queued N] [--models-dir DIR]
//!                        [--max-models N] [--max-connections N] [--header-timeout S]
//!                        [--body-timeout S] [--idle-timeout S] [--shutdown-timeout S]
//!                        [--cors-origin ORIGIN]... [--metrics-open]
//!                        [--tls-cert FILE --tls-key FILE | --self-signed] [--http3]
//!                        [--device auto|cpu|cuda[:N]|metal[:N]]
//! ```
//!
//! `--device auto` (the default) runs on CUDA when the binary was built with `--features cuda`
//! and a GPU answers, then on Metal likewise, else on the CPU; the device chosen is printed on
//! stderr at start. An explicit `cuda` or `metal` never falls back to the CPU: a build without
//! the feature, or a machine without the device, is an error naming which.
#![forbid(unsafe_code)]

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{bail, Context, Result};
use clap::{Args, Parser, Subcommand};
use fluent_ai_candle::engine::{
    cache, generate, load_model, CandleCompletionRequest, ConstraintSpec, Device, DeviceError,
    DeviceType, FinishReason, LoadProgress, LoadedModel, ModelError, Prompt, QuantizationType,
};

/// Run large language models locally on Candle.
#[derive(Parser)]
#[command(name = "fluent-ai-candle", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Print the token ids of a text as a JSON array (no BOS/EOS; special tokens matched).
    Tokenize(TokenizeArgs),
    /// Stream a completion of a prompt to stdout.
    Generate(GenerateArgs),
    /// Download hf:ORG/REPO[:FILE] from the Hugging Face hub (HF_ENDPOINT, default
    /// https://huggingface.co) into the Hugging Face cache (HF_HUB_CACHE, else HF_HOME/hub,
    /// else ~/.cache/huggingface/hub), where `--model hf:…` finds it. Without FILE: the
    /// repository's only GGUF, else its only Q4_K_M GGUF, else (no GGUF) its safetensors
    /// model. Prints the local path on stdout.
    Pull(PullArgs),
    /// Serve the OpenAI-compatible HTTP API (chat/completions, completions, embeddings, models,
    /// tokenize/detokenize, WebSocket).
    Serve(ServeArgs),
}

#[derive(Args)]
struct PullArgs {
    /// hf:ORG/REPO or hf:ORG/REPO:FILE (the hf: prefix may be left out).
    model: String,
}

#[derive(Args)]
struct ServeArgs {
    /// A GGUF path, a Hugging Face model directory, a cached model name or hf:ORG/REPO[:FILE]
    /// (Hugging Face cache, offline); repeat to serve several (the first is the default).
    #[arg(long = "model")]
    models: Vec<String>,
    /// Address to listen on (loopback by default).
    #[arg(long, default_value = "127.0.0.1")]
    host: std::net::IpAddr,
    /// Port to listen on.
    #[arg(long, default_value_t = 8080)]
    port: u16,
    /// Require `Authorization: Bearer KEY` on /v1/*, /tokenize and /detokenize. A key on the
    /// command line is visible to every local user in the process list: prefer --api-key-file
    /// or the FLUENT_AI_CANDLE_API_KEY environment variable (used when neither flag is given).
    #[arg(long, conflicts_with = "api_key_file")]
    api_key: Option<String>,
    /// Read the API key from this file (its first line; surrounding whitespace is trimmed).
    #[arg(long)]
    api_key_file: Option<PathBuf>,
    /// Sequences decoded together per model.
    #[arg(long, default_value_t = 16)]
    max_concurrent: usize,
    /// The only directory POST /v1/models/load reads from (default: the model cache).
    #[arg(long)]
    models_dir: Option<PathBuf>,
    /// Requests waiting per model; one more gets 429.
    #[arg(long, default_value_t = 64)]
    max_queued: usize,
    /// Models loaded at once (start-up models included); a hot load past it gets 409.
    #[arg(long, default_value_t = 4)]
    max_models: usize,
    /// Open connections at most; one more is answered 503 and closed (lowered to fit the
    /// open-file limit, which is raised to its hard limit at start).
    #[arg(long, default_value_t = 1024)]
    max_connections: usize,
    /// Seconds a connection may take to send a whole request head.
    #[arg(long, default_value_t = 10.0, value_parser = parse_seconds)]
    header_timeout: f64,
    /// Seconds a request body may take to arrive (408 after).
    #[arg(long, default_value_t = 30.0, value_parser = parse_seconds)]
    body_timeout: f64,
    /// Seconds an idle keep-alive connection (or a client that stopped reading) is kept.
    #[arg(long, default_value_t = 60.0, value_parser = parse_seconds)]
    idle_timeout: f64,
    /// Seconds a shutdown (SIGTERM, Ctrl-C) lets requests in flight finish before cutting them.
    #[arg(long, default_value_t = 30.0, value_parser = parse_seconds)]
    shutdown_timeout: f64,
    /// A browser origin allowed to call the API (CORS) and open WebSockets, e.g.
    /// https://app.example.com; repeat for several. None by default: browsers are refused.
    #[arg(long = "cors-origin")]
    cors_origins: Vec<String>,
    /// Serve /metrics without the API key.
    #[arg(long)]
    metrics_open: bool,
    /// Do not serve the built-in chat page at / (it is then 404).
    #[arg(long)]
    no_chat_page: bool,
    /// Request log lines on stderr (one per request: id, route, status, model, tokens, time to
    /// first token, duration): `text` or `json` (one JSON object per line). Filtered by
    /// RUST_LOG (default `info`; `RUST_LOG=warn` silences them).
    #[arg(long, default_value = "text", value_parser = ["text", "json"])]
    log_format: String,
    /// Serve TLS (HTTPS, HTTP/2 or HTTP/1.1 by ALPN) with this PEM certificate chain; needs
    /// --tls-key. Without TLS the port serves HTTP/1.1 and HTTP/2 with prior knowledge (h2c).
    #[arg(long, requires = "tls_key", conflicts_with = "self_signed")]
    tls_cert: Option<PathBuf>,
    /// The PEM private key of --tls-cert.
    #[arg(long, requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve TLS with a certificate made at start for localhost (development only); its PEM
    /// is written to a file named on stderr, for `curl --cacert FILE`.
    #[arg(long)]
    self_signed: bool,
    /// Also serve HTTP/3 (QUIC) on the UDP port of the same number; needs --tls-cert/--tls-key
    /// or --self-signed.
    #[arg(long)]
    http3: bool,
    /// Tokens per streamed chunk (a request may set `stream_chunk_size`).
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=4096))]
    stream_chunk_size: u32,
    /// Milliseconds a partial chunk may wait before it is sent anyway (a request may set
    /// `stream_buffer_timeout_ms`).
    #[arg(long, default_value_t = 50)]
    stream_buffer_timeout_ms: u64,
    /// Chunks buffered per stream; a client that falls this far behind pauses its own
    /// sequence (the others go on).
    #[arg(long, default_value_t = 64, value_parser = clap::value_parser!(u32).range(1..=65536))]
    stream_buffer_size: u32,
    #[command(flatten)]
    device: DeviceArg,
}

#[derive(Args)]
struct DeviceArg {
    /// Where to run: auto (CUDA if built with it and a GPU is present, then Metal, else the
    /// CPU), cpu, cuda, cuda:N, metal or metal:N.
    #[arg(long, default_value = "auto", value_parser = parse_device)]
    device: DeviceType,
}

impl DeviceArg {
    /// Opens the device and says on stderr which one runs.
    fn open(&self) -> Result<Device> {
        let device = self.device.select()?;
        eprintln!(
            "fluent-ai-candle: device {} (--device {})",
            fluent_ai_candle::engine::device_name(&device),
            self.device
        );
        Ok(device)
    }
}

fn parse_device(s: &str) -> std::result::Result<DeviceType, String> {
    s.parse().map_err(|e: DeviceError| e.to_string())
}

fn parse_seconds(s: &str) -> std::result::Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v.is_finite() && v > 0.0 && v <= 86_400.0 => Ok(v),
        _ => Err(format!("'{s}' is not a number of seconds in (0, 86400]")),
    }
}

#[derive(Args)]
struct ModelArg {
    /// A GGUF path, a Hugging Face model directory (config.json, tokenizer.json, safetensors),
    /// a cached model name (smollm2-135m-instruct, gemma3-270m) or hf:ORG/REPO[:FILE] (a GGUF
    /// or a safetensors model in the Hugging Face cache, resolved offline).
    #[arg(long, default_value = cache::DEFAULT_MODEL)]
    model: String,
}

#[derive(Args)]
struct TokenizeArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Read the text from this file.
    #[arg(long, conflicts_with = "text")]
    file: Option<PathBuf>,
    /// The text to tokenize.
    text: Option<String>,
}

#[derive(Args)]
struct GenerateArgs {
    #[command(flatten)]
    model: ModelArg,
    /// Read the prompt from this file.
    #[arg(long, conflicts_with = "prompt")]
    file: Option<PathBuf>,
    /// The prompt: a user message in the chat template, or verbatim text with --raw.
    prompt: Option<String>,
    /// Most tokens to generate.
    #[arg(long, default_value_t = 256)]
    max_tokens: usize,
    /// Sampling temperature; 0 is greedy.
    #[arg(long, default_value_t = 0.7)]
    temperature: f32,
    /// Nucleus sampling threshold.
    #[arg(long)]
    top_p: Option<f32>,
    /// Keep only the k most likely tokens.
    #[arg(long)]
    top_k: Option<usize>,
    /// Random seed (sampling is reproducible for a given seed).
    #[arg(long, default_value_t = 299_792_458)]
    seed: u64,
    /// Use the prompt verbatim (BOS only if the model's add_bos_token says so).
    #[arg(long)]
    raw: bool,
    /// Print, as the last line, a JSON object with text, token_ids, finish_reason and usage.
    #[arg(long)]
    json: bool,
    /// Constrain the output to this JSON Schema (a file).
    #[arg(long, group = "constraint")]
    json_schema: Option<PathBuf>,
    /// How the JSON Schema is read: `generation` (the default: undeclared properties only
    /// where the schema allows them explicitly, one whitespace style) or `spec` (every JSON
    /// text the schema accepts).
    #[arg(long, requires = "json_schema", default_value = "generation")]
    json_schema_mode: fluent_ai_candle::engine::JsonSchemaMode,
    /// Constrain the output to this GBNF grammar (a file).
    #[arg(long, group = "constraint")]
    grammar: Option<PathBuf>,
    /// Constrain the output to this regular expression.
    #[arg(long, group = "constraint")]
    regex: Option<String>,
    /// The format the weights are quantized to on load: q4_0, q4_k, q8_0, f16, bf16 or f32.
    /// A safetensors model's matrices (q8_0 by default); a GGUF file's f32, f16, bf16 and
    /// q8_0 matrices re-quantized to fewer bits (as stored by default; asking for more bits
    /// than the file stores is an error).
    #[arg(long, value_parser = parse_quant)]
    quant: Option<QuantizationType>,
    #[command(flatten)]
    device: DeviceArg,
}

fn parse_quant(s: &str) -> std::result::Result<QuantizationType, String> {
    s.parse().map_err(|e: ModelError| e.to_string())
}

fn main() -> ExitCode {
    // Before any thread starts: see `init_cpu_threads`.
    fluent_ai_candle::init_cpu_threads();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Tokenize(a) => tokenize(a),
        Command::Generate(a) => run_generate(a),
        Command::Serve(a) => run_serve(a),
        Command::Pull(a) => run_pull(a),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn input_text(file: &Option<PathBuf>, text: &Option<String>, what: &str) -> Result<String> {
    match (file, text) {
        (Some(f), _) => {
            std::fs::read_to_string(f).with_context(|| format!("cannot read {}", f.display()))
        }
        (None, Some(t)) => Ok(t.clone()),
        (None, None) => bail!("give the {what} as an argument or with --file"),
    }
}

/// Loads a model spec (the engine resolves it) onto `device` with a progress bar.
fn load(model: &str, quant: Option<QuantizationType>, device: &Device) -> Result<LoadedModel> {
    let path = fluent_ai_candle::engine::resolve_model(model)?;
    let bar = indicatif::ProgressBar::new(0);
    bar.set_style(
        indicatif::ProgressStyle::with_template("loading {msg} [{bar:30}] {pos}/{len} tensors")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
            .progress_chars("=> "),
    );
    bar.set_message(
        path.file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default(),
    );
    let mut progress = |p: LoadProgress| {
        bar.set_length(p.total as u64);
        bar.set_position(p.loaded as u64);
    };
    let loaded = load_model(&path, quant, device, &mut progress);
    bar.finish_and_clear();
    Ok(loaded?)
}

fn tokenize(a: TokenizeArgs) -> Result<()> {
    let text = input_text(&a.file, &a.text, "text")?;
    let path = cache::resolve(&a.model.model)?;
    let tokenizer = fluent_ai_candle::models::CandleTokenizer::from_path(&path)?;
    let ids = tokenizer.encode(&text, false)?;
    println!("{}", serde_json::to_string(&ids)?);
    Ok(())
}

fn run_generate(a: GenerateArgs) -> Result<()> {
    let prompt = input_text(&a.file, &a.prompt, "prompt")?;
    let device = a.device.open()?;
    let loaded = load(&a.model.model, a.quant, &device)?;
    // The engine renders the chat template (or, with --raw, tokenizes the text as is).
    let prompt = if a.raw {
        Prompt::Text(prompt)
    } else {
        Prompt::user(prompt)
    };
    let request = CandleCompletionRequest {
        max_tokens: Some(a.max_tokens),
        temperature: Some(a.temperature),
        top_p: a.top_p,
        top_k: a.top_k,
        seed: Some(a.seed),
        constraints: constraint_spec(&a)?.map(|c| vec![c]),
        ..CandleCompletionRequest::new(prompt)
    };
    let mut stdout = std::io::stdout().lock();
    let mut write_err = None;
    let out = generate(&loaded, &request, &mut |chunk: &str| {
        if write_err.is_none() {
            if let Err(e) = stdout
                .write_all(chunk.as_bytes())
                .and_then(|_| stdout.flush())
            {
                write_err = Some(e);
            }
        }
    });
    let out = out?;
    if let Some(e) = write_err {
        return Err(e).context("writing to stdout");
    }
    writeln!(stdout)?;
    if a.json {
        let finish = match out.finish_reason {
            FinishReason::Error => "error",
            other => other.as_str(),
        };
        let obj = serde_json::json!({
            "text": out.text,
            "token_ids": out.token_ids,
            "finish_reason": finish,
            "usage": {
                "prompt_tokens": out.usage.prompt_tokens,
                "completion_tokens": out.usage.completion_tokens,
                "total_tokens": out.usage.total_tokens,
            },
        });
        writeln!(stdout, "{obj}")?;
    }
    if let Some(err) = out.error {
        bail!("generation stopped early: {err}");
    }
    Ok(())
}

/// Downloads a hub reference with one progress bar per file on stderr (hidden when stderr
/// is not a terminal); then, per file, a line with the bytes the bar counted, and the local
/// path on stdout.
fn run_pull(a: PullArgs) -> Result<()> {
    use fluent_ai_candle::models::pull::{pull, PullOptions, PullProgress};
    let options = PullOptions::from_env();
    eprintln!(
        "fluent-ai-candle: pulling {} from {} into {}",
        a.model,
        options.endpoint,
        options.cache.display()
    );
    let style = indicatif::ProgressStyle::with_template(
        "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} ({eta})",
    )
    .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar())
    .progress_chars("=> ");
    let mut bar: Option<(String, indicatif::ProgressBar)> = None;
    let finish = |(file, bar): (String, indicatif::ProgressBar)| {
        bar.finish_and_clear();
        eprintln!(
            "fluent-ai-candle: {file}: {}/{} bytes",
            bar.position(),
            bar.length().unwrap_or(0)
        );
    };
    let result = pull(&a.model, &options, &mut |p: PullProgress<'_>| {
        if bar.as_ref().is_none_or(|(file, _)| file != p.file) {
            if let Some(done) = bar.take() {
                finish(done);
            }
            let b = indicatif::ProgressBar::new(p.total).with_style(style.clone());
            b.set_message(p.file.to_string());
            bar = Some((p.file.to_string(), b));
        }
        if let Some((_, b)) = &bar {
            b.set_length(p.total);
            b.set_position(p.downloaded);
        }
    });
    if let Some(done) = bar.take() {
        finish(done);
    }
    let pulled = result?;
    for f in &pulled.files {
        if !f.downloaded {
            eprintln!("fluent-ai-candle: {} was already in the cache", f.name);
        }
    }
    eprintln!(
        "fluent-ai-candle: pulled {}; use it with --model {}",
        pulled.spec, pulled.spec
    );
    println!("{}", pulled.path.display());
    Ok(())
}

/// Installs the `tracing` subscriber that writes the server's request lines to stderr.
fn init_logs(format: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new("info"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(false);
    // A second subscriber (never installed here) would be an error, not worth stopping for.
    let _ = if format == "json" {
        builder.json().flatten_event(true).try_init()
    } else {
        builder.try_init()
    };
}

fn run_serve(a: ServeArgs) -> Result<()> {
    init_logs(&a.log_format);
    let mut config = fluent_ai_candle_server::ServerConfig::default()
        .host(a.host)
        .port(a.port)
        .max_concurrent(a.max_concurrent);
    config.models = a.models;
    config.api_key = api_key(
        a.api_key,
        a.api_key_file.as_deref(),
        std::env::var(API_KEY_ENV).ok(),
    )?;
    config.models_dir = a.models_dir;
    config.max_queued = a.max_queued;
    config.max_models = a.max_models;
    config.max_connections = a.max_connections;
    config.header_timeout = std::time::Duration::from_secs_f64(a.header_timeout);
    config.body_timeout = std::time::Duration::from_secs_f64(a.body_timeout);
    config.idle_timeout = std::time::Duration::from_secs_f64(a.idle_timeout);
    config.shutdown_timeout = std::time::Duration::from_secs_f64(a.shutdown_timeout);
    config.cors_origins = a.cors_origins;
    config.metrics_open = a.metrics_open;
    config.streaming = fluent_ai_candle::engine::StreamingConfig::default()
        .chunk_size(a.stream_chunk_size as usize)
        .buffer_timeout(std::time::Duration::from_millis(a.stream_buffer_timeout_ms))
        .buffer_size(a.stream_buffer_size as usize);
    config.chat_page = !a.no_chat_page;
    config.tls = match (a.tls_cert, a.tls_key, a.self_signed) {
        (Some(cert), Some(key), _) => Some(fluent_ai_candle_server::TlsSource::Files { cert, key }),
        (_, _, true) => Some(fluent_ai_candle_server::TlsSource::SelfSigned),
        _ => None,
    };
    config.http3 = a.http3;
    let device = a.device.open()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(fluent_ai_candle_server::serve_on(config, device))?;
    Ok(())
}

/// The environment variable holding the API key when no flag gives one.
const API_KEY_ENV: &str = "FLUENT_AI_CANDLE_API_KEY";

/// The server's API key: the file's first line, else the flag, else the environment variable;
/// an empty key (or an unreadable file) is an error rather than an open server.
fn api_key(
    flag: Option<String>,
    file: Option<&std::path::Path>,
    env: Option<String>,
) -> Result<Option<String>> {
    let (key, from) = if let Some(path) = file {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading --api-key-file {}", path.display()))?;
        let first = text.lines().next().unwrap_or("").trim().to_string();
        (Some(first), format!("--api-key-file {}", path.display()))
    } else if flag.is_some() {
        (flag, "--api-key".to_string())
    } else {
        (env, API_KEY_ENV.to_string())
    };
    match key {
        Some(k) if k.is_empty() => bail!("the API key from {from} is empty"),
        k => Ok(k),
    }
}

fn constraint_spec(a: &GenerateArgs) -> Result<Option<ConstraintSpec>> {
    let read = |p: &PathBuf| {
        std::fs::read_to_string(p).with_context(|| format!("cannot read {}", p.display()))
    };
    Ok(if let Some(p) = &a.json_schema {
        let schema: serde_json::Value = serde_json::from_str(&read(p)?)
            .with_context(|| format!("{} is not valid JSON", p.display()))?;
        Some(ConstraintSpec::JsonSchemaWithMode(
            schema,
            a.json_schema_mode,
        ))
    } else if let Some(p) = &a.grammar {
        Some(ConstraintSpec::Grammar(read(p)?))
    } else {
        a.regex.clone().map(ConstraintSpec::Regex)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn api_key_comes_from_the_file_then_the_flag_then_the_environment() {
        let dir = std::env::temp_dir().join(format!("fac-api-key-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("key");
        std::fs::write(&file, "  s3cret \nignored second line\n").unwrap();
        let env = Some("from-env".to_string());
        assert_eq!(
            api_key(None, Some(&file), env.clone()).unwrap().as_deref(),
            Some("s3cret")
        );
        assert_eq!(
            api_key(Some("flag".into()), None, env.clone())
                .unwrap()
                .as_deref(),
            Some("flag")
        );
        assert_eq!(
            api_key(None, None, env).unwrap().as_deref(),
            Some("from-env")
        );
        assert_eq!(api_key(None, None, None).unwrap(), None);
        // An empty key would leave the server open: refused, wherever it came from.
        std::fs::write(&file, "\n").unwrap();
        assert!(api_key(None, Some(&file), None).is_err());
        assert!(api_key(None, None, Some(String::new())).is_err());
        assert!(api_key(None, Some(&dir.join("missing")), None).is_err());
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
