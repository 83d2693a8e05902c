//! `cargo xtask cluster-test`: N server replicas behind Debian's nginx, all on loopback, driven
//! by the load tester, with one replica killed and restarted mid-run.
//!
//! 1. Builds the release server (`fluent-ai-candle`) and load tester (`loadtest`)
//!    (`--profile dev` for the dev profile's).
//! 2. Installs nginx with apt-get when it is missing.
//! 3. Starts `--replicas` servers on free 127.0.0.1 ports and one nginx with two front ports:
//!    one hashing on the `X-Routing-Key` header (`hash … consistent`, prefix affinity), one
//!    round-robin. Both retry on another replica a request that had not started
//!    (`proxy_next_upstream error timeout http_503 non_idempotent`: nginx never retries once
//!    it has sent response bytes to the client) and name the replica that answered in an
//!    `X-Upstream` header.
//! 4. Affinity phase (`--duration` seconds): the shared-prefix workload through the hashing
//!    port; a third of the way in, one replica is killed (SIGKILL, or SIGTERM with
//!    `--signal term`) and restarted at once.
//! 5. Round-robin phase (`--rr-duration`, default `--duration`): the same workload, with texts
//!    of its own (so the first phase's cache does not help), through the round-robin port.
//! 6. Prints one JSON line: requests, failures, failures on the killed replica's streams that
//!    were in flight, p50/p99 latency, and the prefix-cache hit rate of each phase (summed
//!    over the replicas' `/metrics`, counting the killed replica's counters from before the
//!    kill too). It fails when a request failed other than those streams, or when affinity
//!    did not raise the hit rate.
//!
//! Only loopback addresses are used; every process started is stopped at the end.

use std::fmt::Write as _;
use std::fs;
use std::io::Read as _;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{anyhow, bail, Context, Result};
use serde_json::{json, Value};

use crate::util;

/// Arguments of `cluster-test`.
#[derive(clap::Args)]
pub struct ClusterArgs {
    /// Server replicas behind nginx.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// Concurrent streaming clients.
    #[arg(long, default_value_t = 32)]
    pub clients: usize,
    /// Seconds of the affinity phase (the one with the kill).
    #[arg(long, default_value_t = 180)]
    pub duration: u64,
    /// Seconds of the round-robin phase (default: --duration).
    #[arg(long)]
    pub rr_duration: Option<u64>,
    /// Print only the JSON line on stdout (progress goes to stderr either way).
    #[arg(long)]
    pub json: bool,
    /// Shared prefixes in the workload.
    #[arg(long, default_value_t = 24)]
    pub groups: u64,
    /// Tokens generated per request.
    #[arg(long, default_value_t = 16)]
    pub max_tokens: usize,
    /// Sequences each replica decodes together.
    #[arg(long, default_value_t = 8)]
    pub max_concurrent: usize,
    /// CPU threads per replica (RAYON_NUM_THREADS).
    #[arg(long, default_value_t = 1)]
    pub threads: usize,
    /// The model each replica serves.
    #[arg(long, default_value = "smollm2-135m-instruct")]
    pub model: String,
    /// How the replica is stopped mid-run: `kill` (SIGKILL, a crash) or `term` (SIGTERM, a
    /// graceful drain).
    #[arg(long, default_value = "kill")]
    pub signal: String,
    /// Use the binaries already built.
    #[arg(long)]
    pub no_build: bool,
    /// Cargo profile of the binaries: `release`, or `dev` where a release build of the
    /// workspace is out of reach (the dev profile optimises dependencies and the model code at
    /// opt-level 3; the JSON line says which ran).
    #[arg(long, default_value = "release")]
    pub profile: String,
}

/// Starts processes and stops every one of them when dropped (also on errors).
#[derive(Default)]
pub(crate) struct Procs {
    children: Vec<(String, Child)>,
}

impl Procs {
    pub(crate) fn add(&mut self, name: &str, child: Child) {
        self.children.push((name.to_string(), child));
    }

    fn take(&mut self, name: &str) -> Option<Child> {
        let i = self.children.iter().position(|(n, _)| n == name)?;
        Some(self.children.swap_remove(i).1)
    }
}

impl Drop for Procs {
    fn drop(&mut self) {
        for (name, child) in &mut self.children {
            if matches!(child.try_wait(), Ok(None)) {
                let _ = signal(child.id(), "TERM");
            }
            let deadline = Instant::now() + Duration::from_secs(10);
            while matches!(child.try_wait(), Ok(None)) && Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(100));
            }
            if matches!(child.try_wait(), Ok(None)) {
                eprintln!("cluster-test: {name} did not stop on SIGTERM; killing it");
                let _ = child.kill();
            }
            let _ = child.wait();
        }
    }
}

fn signal(pid: u32, sig: &str) -> Result<()> {
    let ok = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .status()?
        .success();
    if !ok {
        bail!("kill -{sig} {pid} failed");
    }
    Ok(())
}

/// Runs the cluster test.
pub fn run(args: &ClusterArgs) -> Result<()> {
    if args.replicas < 2 {
        bail!("--replicas must be at least 2 (one is killed mid-run)");
    }
    if args.clients == 0 || args.duration < 6 || args.groups == 0 {
        bail!("--clients and --groups must be at least 1, --duration at least 6 seconds");
    }
    if args.signal != "kill" && args.signal != "term" {
        bail!("--signal is kill or term, not {}", args.signal);
    }
    let out_dir = match args.profile.as_str() {
        "release" => "release",
        "dev" => "debug",
        p => bail!("--profile is release or dev, not {p}"),
    };
    if !args.no_build {
        let mut build = util::cargo();
        if args.profile == "release" {
            build.args([
                "build",
                "--release",
                "-p",
                "fluent-ai-candle-cli",
                "-p",
                "fluent-ai-candle-benches",
                "--bin",
                "fluent-ai-candle",
                "--bin",
                "loadtest",
            ]);
        } else {
            // CI's own build (`cargo test --no-run` over the workspace: the CLI's and the
            // benches' integration tests make it link both binaries), so nothing is rebuilt
            // with other features (`cargo build -p` would rebuild candle and tokenizers).
            build.args(["test", "--workspace", "--no-run"]);
        }
        util::run(&mut build)?;
    }
    let target = util::target_dir();
    let server_bin = target.join(out_dir).join("fluent-ai-candle");
    let loadtest_bin = target.join(out_dir).join("loadtest");
    for b in [&server_bin, &loadtest_bin] {
        if !b.is_file() {
            bail!("{} is missing (run without --no-build)", b.display());
        }
    }
    let nginx = ensure_nginx()?;
    let dir = target.join("cluster-test");
    let _ = fs::remove_dir_all(&dir);
    for sub in ["tmp", "logs"] {
        fs::create_dir_all(dir.join(sub))?;
    }
    // nginx's workers may run as another user: let them write their temporary files.
    set_mode(&dir.join("tmp"), 0o777)?;

    let ports = free_ports(args.replicas + 2)?;
    let (replica_ports, front) = ports.split_at(args.replicas);
    let (affinity_port, rr_port) = (front[0], front[1]);
    let mut procs = Procs::default();
    let start_replica = |procs: &mut Procs, i: usize, generation: u32| -> Result<()> {
        let port = replica_ports[i];
        let log = fs::File::create(dir.join(format!("logs/replica-{i}-{generation}.log")))?;
        let child = Command::new(&server_bin)
            .args(["serve", "--model", &args.model, "--host", "127.0.0.1"])
            .args(["--port", &port.to_string()])
            .args(["--max-concurrent", &args.max_concurrent.to_string()])
            .args(["--device", "cpu"])
            .env("RAYON_NUM_THREADS", args.threads.to_string())
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting {}", server_bin.display()))?;
        procs.add(&format!("replica-{i}"), child);
        Ok(())
    };
    for i in 0..args.replicas {
        start_replica(&mut procs, i, 0)?;
    }
    for &p in replica_ports {
        wait_ready(p, Duration::from_secs(180))?;
    }
    eprintln!(
        "cluster-test: {} replicas ready on {replica_ports:?}",
        args.replicas
    );

    let conf = nginx_conf(&dir, replica_ports, affinity_port, rr_port);
    fs::write(dir.join("nginx.conf"), &conf)?;
    let child = Command::new(&nginx)
        .arg("-p")
        .arg(&dir)
        .arg("-c")
        .arg(dir.join("nginx.conf"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(fs::File::create(dir.join("logs/nginx.stderr"))?)
        .spawn()
        .with_context(|| format!("starting {}", nginx.display()))?;
    procs.add("nginx", child);
    wait_ready(affinity_port, Duration::from_secs(30))?;
    eprintln!(
        "cluster-test: nginx on 127.0.0.1:{affinity_port} (affinity) and :{rr_port} (round-robin)"
    );

    let loadtest = |port: u16, secs: u64, tag: &str| -> Result<Child> {
        Command::new(&loadtest_bin)
            .args(["--url", &format!("http://127.0.0.1:{port}")])
            .args(["--workload", "shared-prefix", "--tag", tag])
            .args(["--groups", &args.groups.to_string()])
            .args(["--clients", &args.clients.to_string()])
            .args(["--seconds", &secs.to_string()])
            .args(["--max-tokens", &args.max_tokens.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(fs::File::create(
                dir.join(format!("logs/loadtest-{tag}.stderr")),
            )?)
            .spawn()
            .context("starting the load tester")
    };

    // Phase 1: affinity, with one replica killed and restarted.
    let victim = 1 % args.replicas;
    let victim_addr = format!("127.0.0.1:{}", replica_ports[victim]);
    let base = scrape_all(replica_ports)?;
    let started = Instant::now();
    let mut lt = loadtest(affinity_port, args.duration, "affinity")?;
    std::thread::sleep(Duration::from_secs(args.duration / 3));
    let before_kill = scrape(replica_ports[victim])?;
    let mut old = procs
        .take(&format!("replica-{victim}"))
        .context("the victim replica is not running")?;
    let kill_at = started.elapsed().as_secs_f64();
    let sig = if args.signal == "kill" {
        "KILL"
    } else {
        "TERM"
    };
    eprintln!("cluster-test: SIG{sig} to replica {victim} ({victim_addr}) at {kill_at:.1}s");
    signal(old.id(), sig)?;
    let deadline = Instant::now() + Duration::from_secs(60);
    while old.try_wait()?.is_none() {
        if Instant::now() > deadline {
            old.kill()?;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    start_replica(&mut procs, victim, 1)?;
    wait_ready(replica_ports[victim], Duration::from_secs(180))?;
    let back_at = started.elapsed().as_secs_f64();
    eprintln!("cluster-test: replica {victim} back at {back_at:.1}s");
    let affinity = finish_loadtest(&mut lt)?;
    let after = scrape_all(replica_ports)?;
    // The victim's counters restarted from zero: count what it had done before the kill too.
    let mut aff_cache = Counters::default();
    for (i, a) in after.iter().enumerate() {
        if i == victim {
            aff_cache.add(&before_kill.minus(&base[i]));
            aff_cache.add(a);
        } else {
            aff_cache.add(&a.minus(&base[i]));
        }
    }

    // Phase 2: round-robin, texts of its own.
    let base = scrape_all(replica_ports)?;
    let mut lt = loadtest(
        rr_port,
        args.rr_duration.unwrap_or(args.duration),
        "round-robin",
    )?;
    let rr = finish_loadtest(&mut lt)?;
    let after = scrape_all(replica_ports)?;
    let mut rr_cache = Counters::default();
    for (a, b) in after.iter().zip(&base) {
        rr_cache.add(&a.minus(b));
    }
    drop(procs);

    let report = summarize(
        args,
        &victim_addr,
        kill_at,
        back_at,
        &affinity,
        &rr,
        &aff_cache,
        &rr_cache,
    );
    if !args.json {
        eprintln!("cluster-test: logs and nginx.conf in {}", dir.display());
    }
    println!("{report}");
    let other = report["failures_other"].as_u64().unwrap_or(u64::MAX);
    if other > 0 {
        bail!("{other} requests failed other than the killed replica's streams in flight");
    }
    if aff_cache.hit_rate() <= rr_cache.hit_rate() {
        bail!(
            "prefix-cache hit rate with affinity ({:.3}) is not above round-robin's ({:.3})",
            aff_cache.hit_rate(),
            rr_cache.hit_rate()
        );
    }
    Ok(())
}

/// The JSON line.
#[allow(clippy::too_many_arguments)]
fn summarize(
    args: &ClusterArgs,
    victim: &str,
    kill_at: f64,
    back_at: f64,
    affinity: &Value,
    rr: &Value,
    aff_cache: &Counters,
    rr_cache: &Counters,
) -> Value {
    let failed = affinity["failed"].as_u64().unwrap_or(0);
    let cut_on_victim = affinity["cut_by_upstream"][victim].as_u64().unwrap_or(0);
    let round3 = |x: f64| (x * 1000.0).round() / 1000.0;
    json!({
        "replicas": args.replicas,
        "clients": args.clients,
        "duration_s": args.duration,
        "model": args.model,
        "profile": args.profile,
        "requests": affinity["requests"],
        "failures": failed,
        "failures_killed_in_flight": cut_on_victim,
        "failures_other": failed - cut_on_victim.min(failed),
        "latency_ms_p50": affinity["latency_ms_p50"],
        "latency_ms_p99": affinity["latency_ms_p99"],
        "ttft_ms_p50": affinity["ttft_ms_p50"],
        "ttft_ms_p99": affinity["ttft_ms_p99"],
        "tokens_per_s": affinity["tokens_per_s"],
        "killed": {"replica": victim, "signal": args.signal, "at_s": round3(kill_at),
                   "ready_again_at_s": round3(back_at)},
        "prefix_hit_rate_affinity": round3(aff_cache.hit_rate()),
        "prefix_hit_rate_round_robin": round3(rr_cache.hit_rate()),
        "prefix_lookups_affinity": aff_cache.hits + aff_cache.misses,
        "prefix_lookups_round_robin": rr_cache.hits + rr_cache.misses,
        "prefix_tokens_reused_affinity": aff_cache.tokens_reused,
        "prefix_tokens_reused_round_robin": rr_cache.tokens_reused,
        "round_robin": {
            "duration_s": args.rr_duration.unwrap_or(args.duration),
            "requests": rr["requests"],
            "failures": rr["failed"],
            "latency_ms_p50": rr["latency_ms_p50"],
            "latency_ms_p99": rr["latency_ms_p99"],
        },
    })
}

/// Waits for the load tester and parses its JSON line (it exits non-zero when any request
/// failed, which the caller judges).
fn finish_loadtest(child: &mut Child) -> Result<Value> {
    let mut out = String::new();
    child
        .stdout
        .take()
        .context("load tester stdout")?
        .read_to_string(&mut out)?;
    let status = child.wait()?;
    let line = out
        .lines()
        .rev()
        .find(|l| l.starts_with('{'))
        .ok_or_else(|| anyhow!("the load tester ({status}) printed no JSON line: {out}"))?;
    serde_json::from_str(line).context("parsing the load tester's JSON line")
}

/// Prefix-cache counters of one replica.
#[derive(Debug, Default, Clone, PartialEq)]
struct Counters {
    hits: u64,
    misses: u64,
    tokens_reused: u64,
}

impl Counters {
    fn add(&mut self, o: &Counters) {
        self.hits += o.hits;
        self.misses += o.misses;
        self.tokens_reused += o.tokens_reused;
    }

    fn minus(&self, o: &Counters) -> Counters {
        Counters {
            hits: self.hits.saturating_sub(o.hits),
            misses: self.misses.saturating_sub(o.misses),
            tokens_reused: self.tokens_reused.saturating_sub(o.tokens_reused),
        }
    }

    fn hit_rate(&self) -> f64 {
        let n = self.hits + self.misses;
        if n == 0 {
            0.0
        } else {
            self.hits as f64 / n as f64
        }
    }
}

/// Sums the prefix-cache counters of a Prometheus text (every model's).
fn parse_metrics(text: &str) -> Counters {
    let mut c = Counters::default();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let Some((name, value)) = line.rsplit_once(' ') else {
            continue;
        };
        let name = name.split('{').next().unwrap_or(name);
        let v = value.trim().parse::<f64>().unwrap_or(0.0) as u64;
        match name {
            "fluent_ai_candle_engine_prefix_cache_hits_total" => c.hits += v,
            "fluent_ai_candle_engine_prefix_cache_misses_total" => c.misses += v,
            "fluent_ai_candle_engine_prefix_tokens_reused_total" => c.tokens_reused += v,
            _ => {}
        }
    }
    c
}

fn scrape(port: u16) -> Result<Counters> {
    let (status, body) = http_get(port, "/metrics")?;
    if status != 200 {
        bail!("GET /metrics on port {port}: status {status}");
    }
    Ok(parse_metrics(&body))
}

fn scrape_all(ports: &[u16]) -> Result<Vec<Counters>> {
    ports.iter().map(|&p| scrape(p)).collect()
}

/// A bare HTTP/1.0 GET on 127.0.0.1 (no client library needed here): (status, body).
pub(crate) fn http_get(port: u16, path: &str) -> Result<(u16, String)> {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(2))?;
    s.set_read_timeout(Some(Duration::from_secs(10)))?;
    use std::io::Write as _;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n")?;
    let mut raw = String::new();
    s.read_to_string(&mut raw)?;
    let status = raw
        .split_whitespace()
        .nth(1)
        .and_then(|c| c.parse().ok())
        .ok_or_else(|| anyhow!("no HTTP status from port {port}"))?;
    let body = raw.split_once("\r\n\r\n").map(|(_, b)| b).unwrap_or("");
    Ok((status, body.to_string()))
}

/// Waits until `GET /health` answers 200 on the port.
pub(crate) fn wait_ready(port: u16, limit: Duration) -> Result<()> {
    let deadline = Instant::now() + limit;
    loop {
        if let Ok((200, _)) = http_get(port, "/health") {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!("nothing ready on 127.0.0.1:{port} after {limit:?}");
        }
        std::thread::sleep(Duration::from_millis(200));
    }
}

/// `n` distinct free loopback ports.
pub(crate) fn free_ports(n: usize) -> Result<Vec<u16>> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0"))
        .collect::<std::io::Result<_>>()?;
    listeners
        .iter()
        .map(|l| Ok(l.local_addr()?.port()))
        .collect()
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode))?;
    Ok(())
}

/// nginx's path, installed with apt-get when missing.
fn ensure_nginx() -> Result<PathBuf> {
    let find = || {
        ["/usr/sbin/nginx", "/usr/local/sbin/nginx", "/usr/bin/nginx"]
            .iter()
            .map(PathBuf::from)
            .find(|p| p.is_file())
    };
    if let Some(p) = find() {
        return Ok(p);
    }
    eprintln!("cluster-test: nginx is missing; installing Debian's nginx with apt-get");
    // apt's progress goes to stderr: stdout carries only the JSON line.
    util::run(
        Command::new("apt-get")
            .args(["update", "-qq"])
            .stdout(std::io::stderr()),
    )?;
    util::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends", "nginx"])
            .env("DEBIAN_FRONTEND", "noninteractive")
            .stdout(std::io::stderr()),
    )
    .context("apt-get install nginx failed (root is needed)")?;
    find().ok_or_else(|| anyhow!("nginx still not found after apt-get install"))
}

/// The proxy settings both front ports share.
const PROXY_COMMON: &str = "\
            proxy_http_version 1.1;
            proxy_set_header Connection \"\";
            proxy_set_header Host $host;
            # Server-sent events: pass each chunk on as it comes.
            proxy_buffering off;
            proxy_read_timeout 300s;
            proxy_connect_timeout 2s;
            # Read the whole body first, so a request can be sent again to another replica.
            proxy_request_buffering on;
            # Retry elsewhere a request that got no response: the replica refused or dropped
            # the connection, timed out connecting, or is draining (503). POST is retried too
            # (non_idempotent): nginx never retries once it has sent response bytes on.
            proxy_next_upstream error timeout http_503 non_idempotent;
            proxy_next_upstream_tries 3;
            proxy_next_upstream_timeout 15s;
            add_header X-Upstream $upstream_addr always;
";

/// A standalone nginx configuration for the test: `affinity_port` hashes on the routing key,
/// `rr_port` balances round-robin, both over `replicas`.
fn nginx_conf(dir: &Path, replicas: &[u16], affinity_port: u16, rr_port: u16) -> String {
    let d = dir.display();
    let mut servers = String::new();
    for p in replicas {
        let _ = writeln!(
            servers,
            "        server 127.0.0.1:{p} max_fails=1 fail_timeout=3s;"
        );
    }
    format!(
        "# Written by `cargo xtask cluster-test`.
daemon off;
worker_processes 1;
pid {d}/nginx.pid;
error_log {d}/logs/nginx-error.log warn;
events {{
    worker_connections 1024;
}}
http {{
    log_format upstream '$remote_addr [$time_local] \"$request\" $status '
                        'upstream=$upstream_addr upstream_status=$upstream_status '
                        'key=$http_x_routing_key time=$request_time';
    access_log {d}/logs/nginx-access.log upstream;
    client_body_temp_path {d}/tmp/body;
    proxy_temp_path {d}/tmp/proxy;
    fastcgi_temp_path {d}/tmp/fastcgi;
    uwsgi_temp_path {d}/tmp/uwsgi;
    scgi_temp_path {d}/tmp/scgi;

    # Requests without a routing key are spread by their request id.
    map $http_x_routing_key $route_key {{
        \"\"      $request_id;
        default $http_x_routing_key;
    }}
    upstream fluent_affinity {{
        hash $route_key consistent;
{servers}        keepalive 32;
    }}
    upstream fluent_round_robin {{
{servers}        keepalive 32;
    }}
    server {{
        listen 127.0.0.1:{affinity_port};
        location / {{
            proxy_pass http://fluent_affinity;
{PROXY_COMMON}        }}
    }}
    server {{
        listen 127.0.0.1:{rr_port};
        location / {{
            proxy_pass http://fluent_round_robin;
{PROXY_COMMON}        }}
    }}
}}
"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metrics_sum_every_model() {
        let text = "# HELP fluent_ai_candle_engine_prefix_cache_hits_total x\n\
                    # TYPE fluent_ai_candle_engine_prefix_cache_hits_total counter\n\
                    fluent_ai_candle_engine_prefix_cache_hits_total{model=\"a\"} 7\n\
                    fluent_ai_candle_engine_prefix_cache_hits_total{model=\"b\"} 3\n\
                    fluent_ai_candle_engine_prefix_cache_misses_total{model=\"a\"} 5\n\
                    fluent_ai_candle_engine_prefix_tokens_reused_total{model=\"a\"} 1200\n\
                    fluent_ai_candle_http_requests_total 99\n";
        let c = parse_metrics(text);
        assert_eq!(
            c,
            Counters {
                hits: 10,
                misses: 5,
                tokens_reused: 1200
            }
        );
        assert!((c.hit_rate() - 10.0 / 15.0).abs() < 1e-12);
        assert_eq!(Counters::default().hit_rate(), 0.0);
        let later = Counters {
            hits: 12,
            misses: 5,
            tokens_reused: 1500,
        };
        assert_eq!(
            later.minus(&c),
            Counters {
                hits: 2,
                misses: 0,
                tokens_reused: 300
            }
        );
    }

    #[test]
    fn nginx_config_hashes_retries_and_stays_on_loopback() {
        let conf = nginx_conf(Path::new("/run/x"), &[9001, 9002, 9003], 9100, 9101);
        assert!(conf.contains("hash $route_key consistent;"));
        assert!(conf.contains("proxy_next_upstream error timeout http_503 non_idempotent;"));
        assert!(conf.contains("proxy_buffering off;"));
        assert_eq!(conf.matches("server 127.0.0.1:9002 ").count(), 2);
        assert!(conf.contains("listen 127.0.0.1:9100;") && conf.contains("listen 127.0.0.1:9101;"));
        // Every address is a loopback one.
        for word in conf.split_whitespace().filter(|w| w.contains(':')) {
            if let Some(host) = word.split(':').next().filter(|h| h.contains('.')) {
                assert_eq!(host, "127.0.0.1", "{word}");
            }
        }
        // Balanced braces.
        assert_eq!(conf.matches('{').count(), conf.matches('}').count());
    }

    #[test]
    fn summary_counts_only_the_victims_cut_streams_as_expected() {
        let args = ClusterArgs {
            replicas: 3,
            clients: 4,
            duration: 60,
            rr_duration: None,
            json: true,
            groups: 24,
            max_tokens: 16,
            max_concurrent: 8,
            threads: 1,
            model: "m".into(),
            signal: "kill".into(),
            no_build: true,
            profile: "release".into(),
        };
        let affinity = json!({"requests": 100, "failed": 5,
            "cut_by_upstream": {"127.0.0.1:9002": 4, "127.0.0.1:9001": 1},
            "latency_ms_p50": 10.0, "latency_ms_p99": 20.0});
        let rr = json!({"requests": 90, "failed": 0});
        let hits = |h, m| Counters {
            hits: h,
            misses: m,
            tokens_reused: 0,
        };
        let s = summarize(
            &args,
            "127.0.0.1:9002",
            20.0,
            22.0,
            &affinity,
            &rr,
            &hits(9, 1),
            &hits(1, 1),
        );
        assert_eq!(s["failures"], 5);
        assert_eq!(s["failures_killed_in_flight"], 4);
        assert_eq!(s["failures_other"], 1);
        assert_eq!(s["prefix_hit_rate_affinity"], 0.9);
        assert_eq!(s["prefix_hit_rate_round_robin"], 0.5);
    }
}
