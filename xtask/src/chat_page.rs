//! `cargo xtask chat-page-test`: the built-in chat page (`GET /`) in a real headless
//! Chromium, driven over the Chrome DevTools Protocol (a WebSocket; no browser-automation
//! library).
//!
//! 1. Builds the server the way `cargo xtask ci` does (`cargo test --workspace --exclude
//!    fluent-ai-candle-benches --no-run`, which links `target/debug/fluent-ai-candle`;
//!    nothing is rebuilt after CI's test run), unless `--no-build`.
//! 2. Starts it on a free loopback port with SmolLM2, an API key and a CORS origin of another
//!    site (so the page's same-origin calls are shown not to depend on CORS).
//! 3. Starts `chromium --headless=new` on a blank page, attaches to it, then opens the chat
//!    page, and checks like a user would:
//!    - without the key, the page says the model list needs it (401);
//!    - with the key typed in, the loaded model is listed;
//!    - a JSON Schema that is not JSON shows an error and sends nothing;
//!    - a typed prompt and a click on Send stream an answer with non-empty text and a
//!      TTFT and tokens/s figure;
//!    - a second turn with a JSON Schema streams an answer that parses as JSON, and the
//!      conversation holds both turns;
//!    - no script error and no Content-Security-Policy violation was reported.
//! 4. Saves a screenshot to `target/chat-page-test/chat.png` and prints one JSON line of
//!    timings. Every process started is stopped at the end.

use std::fs;
use std::net::TcpStream;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use base64::Engine as _;
use serde_json::{json, Value};
use tungstenite::{Message, WebSocket};

use crate::cluster::{free_ports, wait_ready, Procs};
use crate::util;

/// The API key the test server requires.
const KEY: &str = "chat-page-test-key";

/// Arguments of `chat-page-test`.
#[derive(clap::Args)]
pub struct ChatPageArgs {
    /// Use the server binary already built (`target/debug/fluent-ai-candle`).
    #[arg(long)]
    pub no_build: bool,
    /// The browser to drive.
    #[arg(long, default_value = "chromium")]
    pub browser: String,
    /// The model the server loads.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    pub model: String,
}

/// Whether `browser` runs here (`cargo xtask ci` skips the test otherwise).
pub fn browser_present(browser: &str) -> bool {
    Command::new(browser)
        .arg("--version")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// A DevTools Protocol session over one page's WebSocket.
struct Cdp {
    ws: WebSocket<TcpStream>,
    next_id: u64,
    /// Script exceptions and console/log errors seen so far.
    problems: Vec<String>,
}

impl Cdp {
    fn connect(ws_url: &str) -> Result<Self> {
        let host = ws_url
            .strip_prefix("ws://")
            .and_then(|r| r.split('/').next())
            .ok_or_else(|| anyhow!("unexpected DevTools URL {ws_url}"))?;
        let stream = TcpStream::connect(host)?;
        stream.set_read_timeout(Some(Duration::from_millis(200)))?;
        let (ws, _) = tungstenite::client(ws_url, stream)
            .map_err(|e| anyhow!("DevTools WebSocket handshake: {e}"))?;
        Ok(Self {
            ws,
            next_id: 0,
            problems: Vec::new(),
        })
    }

    /// Sends a command and waits (at most `limit`) for its result, noting events on the way.
    fn call(&mut self, method: &str, params: Value, limit: Duration) -> Result<Value> {
        self.next_id += 1;
        let id = self.next_id;
        let msg = json!({"id": id, "method": method, "params": params});
        self.ws.send(Message::text(msg.to_string()))?;
        let deadline = Instant::now() + limit;
        loop {
            if Instant::now() > deadline {
                bail!("DevTools: no answer to {method} within {limit:?}");
            }
            let text = match self.ws.read() {
                Ok(Message::Text(t)) => t.to_string(),
                Ok(_) => continue,
                Err(tungstenite::Error::Io(e))
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    continue
                }
                Err(e) => bail!("DevTools connection: {e}"),
            };
            let v: Value = serde_json::from_str(&text)?;
            if v["id"].as_u64() == Some(id) {
                if let Some(err) = v.get("error") {
                    bail!("DevTools {method}: {err}");
                }
                return Ok(v["result"].clone());
            }
            self.note_event(&v);
        }
    }

    fn note_event(&mut self, v: &Value) {
        let p = &v["params"];
        match v["method"].as_str() {
            Some("Runtime.exceptionThrown") => {
                let d = &p["exceptionDetails"];
                let text = d["exception"]["description"]
                    .as_str()
                    .or(d["text"].as_str())
                    .unwrap_or("?");
                self.problems.push(format!("script exception: {text}"));
            }
            Some("Log.entryAdded") => {
                let e = &p["entry"];
                let text = e["text"].as_str().unwrap_or("");
                // A failed fetch (the 401 checked on purpose) is logged by the network
                // source; anything else at error level, and every policy violation, counts.
                if text.contains("Content Security Policy")
                    || (e["level"] == "error" && e["source"] != "network")
                {
                    self.problems.push(format!("console: {text}"));
                }
            }
            _ => {}
        }
    }

    /// Evaluates `expr` in the page (awaiting a promise) and returns its value.
    fn eval(&mut self, expr: &str, limit: Duration) -> Result<Value> {
        let r = self.call(
            "Runtime.evaluate",
            json!({"expression": expr, "awaitPromise": true, "returnByValue": true}),
            limit + Duration::from_secs(5),
        )?;
        if let Some(d) = r.get("exceptionDetails") {
            bail!("evaluating `{expr}`: {d}");
        }
        Ok(r["result"]["value"].clone())
    }

    /// Waits until the JavaScript condition `cond` is truthy in the page.
    fn wait_for(&mut self, what: &str, cond: &str, limit: Duration) -> Result<()> {
        let ms = limit.as_millis();
        let expr = format!(
            "new Promise((resolve) => {{ const end = Date.now() + {ms}; \
             const tick = () => {{ let ok = false; try {{ ok = !!({cond}); }} catch (_) {{}} \
             if (ok || Date.now() > end) resolve(ok); else setTimeout(tick, 50); }}; tick(); }})"
        );
        if self.eval(&expr, limit)? != json!(true) {
            let error = self
                .eval("document.getElementById('error').textContent", limit)
                .unwrap_or_default();
            bail!("the page did not show {what} within {limit:?} (its error line: {error})");
        }
        Ok(())
    }

    /// Focuses the element `id` and types `text` into it as keyboard input.
    fn type_into(&mut self, id: &str, text: &str) -> Result<()> {
        self.eval(
            &format!("document.getElementById('{id}').focus()"),
            Duration::from_secs(5),
        )?;
        self.call(
            "Input.insertText",
            json!({"text": text}),
            Duration::from_secs(5),
        )?;
        Ok(())
    }

    /// Clicks the middle of the element `id` with the mouse.
    fn click(&mut self, id: &str) -> Result<()> {
        let r = self.eval(
            &format!(
                "(() => {{ const r = document.getElementById('{id}').getBoundingClientRect(); \
                 return [r.x + r.width / 2, r.y + r.height / 2]; }})()"
            ),
            Duration::from_secs(5),
        )?;
        let (x, y) = (r[0].as_f64().unwrap_or(0.0), r[1].as_f64().unwrap_or(0.0));
        for kind in ["mousePressed", "mouseReleased"] {
            self.call(
                "Input.dispatchMouseEvent",
                json!({"type": kind, "x": x, "y": y, "button": "left", "clickCount": 1}),
                Duration::from_secs(5),
            )?;
        }
        Ok(())
    }

    /// Sets a form field's value from script (settings a user would edit).
    fn set_value(&mut self, id: &str, value: &str) -> Result<()> {
        self.eval(
            &format!(
                "document.getElementById('{id}').value = {}",
                serde_json::to_string(value)?
            ),
            Duration::from_secs(5),
        )?;
        Ok(())
    }
}

/// A GET on the browser's DevTools HTTP endpoint, returning the body of a 200 (read by its
/// `Content-Length`: the browser keeps the connection open whatever the request asks).
fn devtools_get(port: u16, path: &str) -> Result<String> {
    use std::io::{Read as _, Write as _};
    let mut s = TcpStream::connect(("127.0.0.1", port))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    write!(
        s,
        "GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nConnection: close\r\n\r\n"
    )?;
    let mut raw = Vec::new();
    let mut buf = [0u8; 16384];
    loop {
        let n = s.read(&mut buf)?;
        if n == 0 {
            bail!("the browser closed the connection early");
        }
        raw.extend_from_slice(&buf[..n]);
        let text = String::from_utf8_lossy(&raw);
        let Some((head, body)) = text.split_once("\r\n\r\n") else {
            continue;
        };
        if head.split_whitespace().nth(1) != Some("200") {
            bail!("the browser answered {path} with {head}");
        }
        let length = head
            .lines()
            .filter_map(|l| l.split_once(':'))
            .find(|(k, _)| k.trim().eq_ignore_ascii_case("content-length"))
            .and_then(|(_, v)| v.trim().parse::<usize>().ok())
            .ok_or_else(|| anyhow!("no Content-Length from the browser"))?;
        if body.len() >= length {
            return Ok(body.get(..length).unwrap_or(body).to_string());
        }
    }
}

/// The WebSocket URL of the browser's first page, read from its DevTools HTTP endpoint.
fn page_ws_url(profile: &std::path::Path, limit: Duration) -> Result<String> {
    let deadline = Instant::now() + limit;
    let port_file = profile.join("DevToolsActivePort");
    loop {
        if let Ok(text) = fs::read_to_string(&port_file) {
            if let Some(port) = text.lines().next().and_then(|l| l.trim().parse().ok()) {
                if let Ok(body) = devtools_get(port, "/json/list") {
                    let list: Value = serde_json::from_str(&body)?;
                    if let Some(url) = list
                        .as_array()
                        .into_iter()
                        .flatten()
                        .find(|t| t["type"] == "page")
                        .and_then(|t| t["webSocketDebuggerUrl"].as_str())
                    {
                        return Ok(url.to_string());
                    }
                }
            }
        }
        if Instant::now() > deadline {
            bail!("the browser opened no DevTools page within {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// Runs the browser test.
pub fn run(args: &ChatPageArgs) -> Result<()> {
    let started = Instant::now();
    if !browser_present(&args.browser) {
        bail!(
            "{} is not installed (Debian: apt-get install chromium)",
            args.browser
        );
    }
    if !args.no_build {
        util::run(util::cargo().args([
            "test",
            "--workspace",
            "--exclude",
            "fluent-ai-candle-benches",
            "--no-run",
        ]))?;
    }
    let target = util::target_dir();
    let server_bin = target.join("debug/fluent-ai-candle");
    if !server_bin.is_file() {
        bail!(
            "{} is missing (run without --no-build)",
            server_bin.display()
        );
    }
    let dir = target.join("chat-page-test");
    let _ = fs::remove_dir_all(&dir);
    fs::create_dir_all(&dir)?;
    let profile = dir.join("profile");
    let ports = free_ports(1)?;
    let port = ports[0];
    let mut procs = Procs::default();

    let log = fs::File::create(dir.join("server.log"))?;
    let server = Command::new(&server_bin)
        .args(["serve", "--model", &args.model, "--host", "127.0.0.1"])
        .args(["--port", &port.to_string(), "--api-key", KEY])
        .args(["--max-concurrent", "2"])
        .args(["--cors-origin", "https://elsewhere.example"])
        .stdout(Stdio::null())
        .stderr(log)
        .spawn()
        .with_context(|| format!("starting {}", server_bin.display()))?;
    procs.add("server", server);

    let browser_log = fs::File::create(dir.join("browser.log"))?;
    let browser = Command::new(&args.browser)
        .args([
            "--headless=new",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-dev-shm-usage",
            "--no-first-run",
            "--no-default-browser-check",
            "--disable-extensions",
            "--disable-background-networking",
            "--remote-debugging-port=0",
            "--window-size=1100,760",
        ])
        .arg(format!("--user-data-dir={}", profile.display()))
        .arg("about:blank")
        .stdout(Stdio::null())
        .stderr(browser_log)
        .spawn()
        .with_context(|| format!("starting {}", args.browser))?;
    procs.add("browser", browser);

    let ws_url = page_ws_url(&profile, Duration::from_secs(30))?;
    let mut cdp = Cdp::connect(&ws_url)?;
    let short = Duration::from_secs(10);
    for domain in ["Runtime.enable", "Log.enable", "Page.enable"] {
        cdp.call(domain, json!({}), short)?;
    }
    wait_ready(port, Duration::from_secs(60)).context("the server did not become ready")?;
    let ready_at = started.elapsed();
    let page_url = format!("http://127.0.0.1:{port}/");
    cdp.call("Page.navigate", json!({"url": page_url}), short)?;

    // Without the key the model list is refused, and the page says so.
    cdp.wait_for(
        "the 401 from /v1/models",
        "document.getElementById('error').textContent.includes('401')",
        short,
    )?;
    cdp.type_into("apikey", KEY)?;
    cdp.eval("document.getElementById('apikey').blur()", short)?;
    cdp.wait_for(
        "the model list",
        &format!(
            "[...document.querySelectorAll('#model option')].some(o => o.value === {})",
            serde_json::to_string(&args.model)?
        ),
        short,
    )?;
    let stored = cdp.eval("sessionStorage.getItem('fluent-ai-candle.api-key')", short)?;
    if stored != json!(KEY) {
        bail!("the API key was not kept in sessionStorage (got {stored})");
    }

    // A schema that is not JSON: an error, and no request (no message is added).
    cdp.set_value("schema", "{\"type\": ")?;
    cdp.type_into("prompt", "Hello")?;
    cdp.click("send")?;
    cdp.wait_for(
        "the invalid-schema error",
        "document.getElementById('error').textContent.includes('not valid JSON') \
         && document.querySelectorAll('.msg').length === 0",
        short,
    )?;
    cdp.set_value("schema", "")?;
    cdp.set_value("prompt", "")?;

    // First turn: a typed prompt, a click on Send, a streamed answer with its figures.
    cdp.set_value("temperature", "0")?;
    cdp.set_value("max_tokens", "24")?;
    cdp.type_into(
        "prompt",
        "What is the capital of France? Answer in one sentence.",
    )?;
    let sent = Instant::now();
    cdp.click("send")?;
    let answer_limit = Duration::from_secs(60);
    cdp.wait_for(
        "a finished answer",
        "document.querySelector('.msg.assistant[data-done]')",
        answer_limit,
    )?;
    let first_turn = sent.elapsed();
    let first = cdp.eval(
        "(() => { const m = document.querySelector('.msg.assistant'); return { \
         text: m.querySelector('.text').textContent, failed: m.classList.contains('failed'), \
         stats: (m.querySelector('.stats') || {}).textContent || '', \
         ttft: m.dataset.ttftMs, tps: m.dataset.tps, \
         error: document.getElementById('error').textContent }; })()",
        short,
    )?;
    let text = first["text"].as_str().unwrap_or("");
    let stats = first["stats"].as_str().unwrap_or("");
    if first["failed"] == json!(true) || text.trim().is_empty() {
        bail!("no answer streamed: {first}");
    }
    if !stats.contains("TTFT") || !stats.contains("tok/s") || first["tps"].is_null() {
        bail!("the answer shows no TTFT / tok/s figure: {first}");
    }

    // Second turn under a JSON Schema: the answer is JSON, the conversation has both turns.
    cdp.set_value(
        "schema",
        r#"{"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}"#,
    )?;
    cdp.type_into("prompt", "And of Italy? Answer as JSON.")?;
    cdp.click("send")?;
    cdp.wait_for(
        "a second finished answer",
        "document.querySelectorAll('.msg.assistant[data-done]').length === 2",
        answer_limit,
    )?;
    let second = cdp.eval(
        "(() => { const m = document.querySelectorAll('.msg.assistant')[1]; return { \
         text: m.querySelector('.text').textContent, \
         stats: (m.querySelector('.stats') || {}).textContent || '', \
         turns: document.getElementById('log').dataset.turns, \
         error: document.getElementById('error').textContent }; })()",
        short,
    )?;
    let json_text = second["text"].as_str().unwrap_or("");
    let parsed: Value = serde_json::from_str(json_text)
        .with_context(|| format!("the schema-constrained answer is not JSON: {second}"))?;
    if !parsed["city"].is_string() {
        bail!("the schema-constrained answer lacks `city`: {json_text}");
    }
    if second["turns"] != json!("2") {
        bail!("the conversation does not hold both turns: {second}");
    }

    let shot = cdp.call(
        "Page.captureScreenshot",
        json!({"format": "png"}),
        Duration::from_secs(20),
    )?;
    let png = base64::engine::general_purpose::STANDARD
        .decode(shot["data"].as_str().unwrap_or(""))
        .context("decoding the screenshot")?;
    let shot_path = dir.join("chat.png");
    fs::write(&shot_path, &png)?;
    // Events that arrived after the last command.
    cdp.eval("0", short)?;
    if !cdp.problems.is_empty() {
        bail!("the page reported problems: {:?}", cdp.problems);
    }
    drop(cdp);
    drop(procs);
    println!(
        "{}",
        json!({
            "test": "chat-page",
            "ok": true,
            "server_ready_s": ready_at.as_secs_f64(),
            "first_turn_s": first_turn.as_secs_f64(),
            "first_answer": text,
            "first_stats": stats,
            "second_answer": json_text,
            "second_stats": second["stats"],
            "screenshot": shot_path.display().to_string(),
            "screenshot_bytes": png.len(),
            "total_s": started.elapsed().as_secs_f64(),
        })
    );
    Ok(())
}
