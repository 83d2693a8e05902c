//! `fluent-ai-candle pull` through the real binary against a local stand-in for the Hugging
//! Face hub (no network is reachable in CI): the same routes and headers the hub answers
//! hf-hub with, so the real download path runs (listing, `Range: bytes=0-0` metadata, the
//! body into `blobs/*.part`, the snapshot link). Then `generate --model hf:…` loads what
//! was pulled and answers as the cached model does; the failures are typed messages and leave
//! nothing `resolve` would take for a whole file.

use std::io::{BufRead, BufReader, Read, Seek, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::{Arc, Mutex};

use sha2::Digest;

/// How the stand-in sends a file's body (the metadata request is always answered well).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// As the hub does.
    Normal,
    /// Announces the whole length, sends bytes up to half the file, then closes.
    CutWithLength,
    /// No `Content-Length`; bytes up to half the file, then closes (the end of the body
    /// looks like the end of the file).
    CutWithoutLength,
    /// The whole length, but other bytes than the listing's SHA-256 describes.
    WrongBytes,
    /// Leaves out the `etag` header (not a hub).
    NoEtag,
    /// The listing answers HTTP 500.
    ListingFails,
}

enum Body {
    Bytes(Vec<u8>),
    File(PathBuf),
}

struct HubFile {
    name: String,
    size: u64,
    sha256: String,
    body: Body,
}

impl HubFile {
    fn bytes(name: &str, bytes: Vec<u8>) -> Self {
        Self {
            name: name.into(),
            size: bytes.len() as u64,
            sha256: format!("{:x}", sha2::Sha256::digest(&bytes)),
            body: Body::Bytes(bytes),
        }
    }

    /// Reads `len` bytes from `start`.
    fn read(&self, start: u64, len: u64) -> Vec<u8> {
        match &self.body {
            Body::Bytes(b) => b[start as usize..(start + len) as usize].to_vec(),
            Body::File(p) => {
                let mut f = std::fs::File::open(p).unwrap();
                f.seek(std::io::SeekFrom::Start(start)).unwrap();
                let mut out = vec![0; len as usize];
                f.read_exact(&mut out).unwrap();
                out
            }
        }
    }
}

struct HubRepo {
    id: String,
    commit: String,
    files: Vec<HubFile>,
    mode: Mutex<Mode>,
}

/// The stand-in: repositories, and a log of `(path, Range header)` per request.
struct Hub {
    repos: Vec<HubRepo>,
    log: Mutex<Vec<(String, Option<String>)>>,
    addr: SocketAddr,
}

impl Hub {
    fn start(repos: Vec<HubRepo>) -> Arc<Hub> {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let hub = Arc::new(Hub {
            repos,
            log: Mutex::new(Vec::new()),
            addr: listener.local_addr().unwrap(),
        });
        let serving = hub.clone();
        std::thread::spawn(move || {
            for stream in listener.incoming().flatten() {
                let hub = serving.clone();
                std::thread::spawn(move || {
                    // A client that goes away mid-answer is not the stand-in's problem.
                    let _ = hub.answer(stream);
                });
            }
        });
        hub
    }

    fn endpoint(&self) -> String {
        format!("http://{}", self.addr)
    }

    fn repo(&self, id: &str) -> &HubRepo {
        self.repos.iter().find(|r| r.id == id).unwrap()
    }

    fn set_mode(&self, id: &str, mode: Mode) {
        *self.repo(id).mode.lock().unwrap() = mode;
    }

    /// The Range headers of the requests for `path_end` so far.
    fn ranges(&self, path_end: &str) -> Vec<Option<String>> {
        let log = self.log.lock().unwrap();
        log.iter()
            .filter(|(p, _)| p.ends_with(path_end))
            .map(|(_, r)| r.clone())
            .collect()
    }

    /// One request, one answer, then the connection closes.
    fn answer(&self, stream: TcpStream) -> std::io::Result<()> {
        let mut reader = BufReader::new(stream.try_clone()?);
        let mut line = String::new();
        reader.read_line(&mut line)?;
        let target = line.split(' ').nth(1).unwrap_or("").to_string();
        let mut range = None;
        loop {
            let mut header = String::new();
            if reader.read_line(&mut header)? == 0 || header.trim().is_empty() {
                break;
            }
            if let Some((k, v)) = header.split_once(':') {
                if k.eq_ignore_ascii_case("range") {
                    range = Some(v.trim().to_string());
                }
            }
        }
        let path = target.split('?').next().unwrap_or("").to_string();
        self.log.lock().unwrap().push((path.clone(), range.clone()));
        let mut out = stream;
        let respond =
            |out: &mut TcpStream, status: &str, headers: &[(&str, String)], body: &[u8]| {
                let mut head = format!("HTTP/1.1 {status}\r\nConnection: close\r\n");
                for (k, v) in headers {
                    head.push_str(&format!("{k}: {v}\r\n"));
                }
                head.push_str("\r\n");
                out.write_all(head.as_bytes())?;
                out.write_all(body)?;
                out.flush()
            };
        let not_found = |out: &mut TcpStream, code: &str, msg: &str| {
            let body = format!("{{\"error\":\"{msg}\"}}");
            respond(
                out,
                "404 Not Found",
                &[
                    ("X-Error-Code", code.to_string()),
                    ("Content-Length", body.len().to_string()),
                    ("Content-Type", "application/json".into()),
                ],
                body.as_bytes(),
            )
        };

        // GET /api/models/{org}/{name}/revision/{rev}
        if let Some(rest) = path.strip_prefix("/api/models/") {
            let id = rest.split("/revision/").next().unwrap_or("");
            let Some(repo) = self.repos.iter().find(|r| r.id == id) else {
                return not_found(&mut out, "RepoNotFound", "Repository not found");
            };
            if *repo.mode.lock().unwrap() == Mode::ListingFails {
                let body = b"Internal Error - We're working hard to fix this as soon as possible!";
                return respond(
                    &mut out,
                    "500 Internal Server Error",
                    &[("Content-Length", body.len().to_string())],
                    body,
                );
            }
            let siblings: Vec<serde_json::Value> = repo
                .files
                .iter()
                .map(|f| {
                    serde_json::json!({
                        "rfilename": f.name,
                        "size": f.size,
                        "blobId": &f.sha256[..40],
                        "lfs": {"sha256": f.sha256, "size": f.size, "pointerSize": 135},
                    })
                })
                .collect();
            let body = serde_json::json!({
                "_id": "0123", "id": repo.id, "modelId": repo.id, "sha": repo.commit,
                "private": false, "gated": false, "siblings": siblings,
            })
            .to_string();
            return respond(
                &mut out,
                "200 OK",
                &[
                    ("Content-Length", body.len().to_string()),
                    ("Content-Type", "application/json".into()),
                ],
                body.as_bytes(),
            );
        }

        // GET /{org}/{name}/resolve/{rev}/{file}
        let Some((id, file)) = path
            .strip_prefix('/')
            .and_then(|p| p.split_once("/resolve/"))
            .and_then(|(id, rest)| Some((id, rest.split_once('/')?.1)))
        else {
            return not_found(&mut out, "RepoNotFound", "Repository not found");
        };
        let Some(repo) = self.repos.iter().find(|r| r.id == id) else {
            return not_found(&mut out, "RepoNotFound", "Repository not found");
        };
        let Some(f) = repo.files.iter().find(|f| f.name == file) else {
            return not_found(&mut out, "EntryNotFound", "Entry not found");
        };
        let mode = *repo.mode.lock().unwrap();
        let start: u64 = range
            .as_deref()
            .and_then(|r| r.strip_prefix("bytes="))
            .and_then(|r| r.split('-').next())
            .and_then(|s| s.parse().ok())
            .unwrap_or(0);
        let metadata = range.as_deref() == Some("bytes=0-0");
        let end = if metadata { 1.min(f.size) } else { f.size };
        let mut headers = vec![
            ("x-repo-commit", repo.commit.clone()),
            ("Accept-Ranges", "bytes".to_string()),
            (
                "Content-Range",
                format!("bytes {start}-{}/{}", end.max(start + 1) - 1, f.size),
            ),
        ];
        if mode != Mode::NoEtag {
            headers.push(("ETag", format!("\"{}\"", f.sha256)));
        }
        let mut body = f.read(start.min(end), end.saturating_sub(start));
        let half = f.size / 2;
        match mode {
            _ if metadata => {}
            Mode::CutWithLength => {
                headers.push(("Content-Length", body.len().to_string()));
                body.truncate(half.saturating_sub(start) as usize);
            }
            Mode::CutWithoutLength => body.truncate(half.saturating_sub(start) as usize),
            Mode::WrongBytes => {
                body.iter_mut().for_each(|b| *b ^= 0x5a);
                headers.push(("Content-Length", body.len().to_string()));
            }
            _ => headers.push(("Content-Length", body.len().to_string())),
        }
        if metadata {
            headers.push(("Content-Length", body.len().to_string()));
        }
        respond(&mut out, "206 Partial Content", &headers, &body)
    }
}

/// A fresh HF_HOME under the temp directory.
fn hf_home(tag: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("fac-pull-{tag}-{}", std::process::id()));
    std::fs::remove_dir_all(&dir).ok();
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The binary with the hub at `endpoint` and the cache under `home` (the other variables
/// that could point elsewhere removed).
fn cli(endpoint: &str, home: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_fluent-ai-candle"))
        .args(args)
        .env("HF_ENDPOINT", endpoint)
        .env("HF_HOME", home)
        .env_remove("HF_HUB_CACHE")
        .env_remove("HF_TOKEN")
        .output()
        .unwrap()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// The pull failed with a message containing `want`, and nothing panicked.
#[track_caller]
fn fails_with(out: &Output, want: &str) -> String {
    let err = text(&out.stderr);
    assert!(!out.status.success(), "expected a failure: {err}");
    assert!(err.contains(want), "expected {want:?} in: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

const SMOL_REPO: &str = "HuggingFaceTB/SmolLM2-135M-Instruct-GGUF";
const SMOL_FILE: &str = "smollm2-135m-instruct-q4_1.gguf";

#[test]
fn pull_downloads_the_real_model_and_generate_loads_it_from_the_hub_cache() {
    let known = fluent_ai_candle_models::cache::known_model("smollm2-135m-instruct").unwrap();
    let model = fluent_ai_candle_models::cache::model_path(known.name).unwrap();
    assert!(
        model.is_file(),
        "{} is missing: run `cargo xtask fetch-models` first",
        model.display()
    );
    let readme = b"---\nlicense: apache-2.0\n---\n# SmolLM2\n".to_vec();
    let hub = Hub::start(vec![HubRepo {
        id: SMOL_REPO.into(),
        commit: "6e8b3c5e2b4c0c1a9f1e4c3b2a1908f7e6d5c4b3".into(),
        files: vec![
            HubFile {
                name: SMOL_FILE.into(),
                size: known.size,
                sha256: known.sha256.into(),
                body: Body::File(model.clone()),
            },
            HubFile::bytes("README.md", readme),
        ],
        mode: Mutex::new(Mode::Normal),
    }]);
    let home = hf_home("real");
    let spec = format!("hf:{SMOL_REPO}:{SMOL_FILE}");
    let out = cli(&hub.endpoint(), &home, &["pull", &spec]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    // The progress bar counted every byte.
    assert!(
        err.contains(&format!("{SMOL_FILE}: {0}/{0} bytes", known.size)),
        "{err}"
    );
    let path = PathBuf::from(text(&out.stdout).trim());
    assert!(path.starts_with(home.join("hub")), "{path:?}");
    assert_eq!(std::fs::metadata(&path).unwrap().len(), known.size);
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&model).unwrap()
    );

    // `generate` finds it through the same reference and answers as the cached model does.
    let ask = |model: &str| {
        let out = cli(
            "http://127.0.0.1:9",
            &home,
            &[
                "generate",
                "--model",
                model,
                "--max-tokens",
                "12",
                "--temperature",
                "0",
                "What is the capital of France?",
            ],
        );
        assert!(out.status.success(), "{model}: {}", text(&out.stderr));
        text(&out.stdout)
    };
    let pulled = ask(&spec);
    assert!(!pulled.trim().is_empty());
    assert_eq!(pulled, ask(known.name));
    // So does `hf:ORG/REPO` alone: the snapshot's only GGUF.
    assert_eq!(pulled, ask(&format!("hf:{SMOL_REPO}")));

    // A second pull, without the file name, finds it in the cache: no body is transferred.
    let bodies = |hub: &Hub| {
        hub.ranges(SMOL_FILE)
            .iter()
            .filter(|r| r.as_deref() != Some("bytes=0-0"))
            .count()
    };
    assert_eq!(bodies(&hub), 1);
    let again = cli(
        &hub.endpoint(),
        &home,
        &["pull", &format!("hf:{SMOL_REPO}")],
    );
    assert!(again.status.success(), "{}", text(&again.stderr));
    assert!(text(&again.stderr).contains("already in the cache"));
    assert_eq!(PathBuf::from(text(&again.stdout).trim()), path);
    assert_eq!(bodies(&hub), 1);
    std::fs::remove_dir_all(home).ok();
}

/// A synthetic file of `len` bytes.
fn blob(len: usize, seed: u8) -> Vec<u8> {
    (0..len)
        .map(|i| (i as u32).wrapping_mul(2_654_435_761).to_le_bytes()[3] ^ seed)
        .collect()
}

fn repo(id: &str, files: &[(&str, usize)]) -> HubRepo {
    HubRepo {
        id: id.into(),
        commit: format!("{:0>40}", id.len()),
        files: files
            .iter()
            .enumerate()
            .map(|(i, (name, len))| HubFile::bytes(name, blob(*len, i as u8)))
            .collect(),
        mode: Mutex::new(Mode::Normal),
    }
}

/// The snapshot entries of a repository in the cache under `home`.
fn snapshot_files(home: &Path, repo: &str) -> Vec<PathBuf> {
    let snaps = home
        .join("hub")
        .join(format!("models--{}", repo.replace('/', "--")))
        .join("snapshots");
    let mut out = Vec::new();
    for snap in std::fs::read_dir(snaps).into_iter().flatten().flatten() {
        for f in std::fs::read_dir(snap.path())
            .into_iter()
            .flatten()
            .flatten()
        {
            out.push(f.path());
        }
    }
    out
}

#[test]
fn pull_picks_the_gguf_and_fails_with_typed_errors() {
    const MB: usize = 1 << 20;
    let hub = Hub::start(vec![
        repo(
            "Org/Quants-GGUF",
            &[
                ("README.md", 100),
                ("m.Q8_0.gguf", MB),
                ("m.Q4_K_M.gguf", MB / 2),
                ("mmproj-m-f16.gguf", 1000),
            ],
        ),
        repo(
            "Org/Two-GGUF",
            &[("m.Q8_0.gguf", 100), ("m.Q5_K_M.gguf", 100)],
        ),
        repo("Org/Text", &[("README.md", 100), ("notes.txt", 10)]),
        repo("Org/Broken", &[("m.gguf", 100)]),
        repo("Org/NotAHub", &[("m.gguf", 100)]),
    ]);
    hub.set_mode("Org/Broken", Mode::ListingFails);
    hub.set_mode("Org/NotAHub", Mode::NoEtag);
    let home = hf_home("picks");
    let pull = |spec: &str| cli(&hub.endpoint(), &home, &["pull", spec]);

    // Without a file: the Q4_K_M (projectors are never picked on their own).
    let out = pull("hf:Org/Quants-GGUF");
    assert!(out.status.success(), "{}", text(&out.stderr));
    let path = PathBuf::from(text(&out.stdout).trim());
    assert!(path.ends_with("m.Q4_K_M.gguf"), "{path:?}");
    assert_eq!(std::fs::read(&path).unwrap(), blob(MB / 2, 2));
    assert!(text(&out.stderr).contains("--model hf:Org/Quants-GGUF:m.Q4_K_M.gguf"));
    // `hf:` may be left out; the other file lands in the same snapshot.
    let out = pull("Org/Quants-GGUF:m.Q8_0.gguf");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(snapshot_files(&home, "Org/Quants-GGUF").len(), 2);

    let err = fails_with(&pull("hf:Org/Two-GGUF"), "holds several GGUF files");
    assert!(err.contains("m.Q5_K_M.gguf, m.Q8_0.gguf"), "{err}");
    fails_with(
        &pull("hf:Nobody/Nothing"),
        "repository Nobody/Nothing not found",
    );
    let err = fails_with(
        &pull("hf:Org/Quants-GGUF:m.Q2_K.gguf"),
        "has no file m.Q2_K.gguf",
    );
    assert!(err.contains("m.Q8_0.gguf"), "the choices are listed: {err}");
    fails_with(
        &pull("hf:Org/Text"),
        "holds no GGUF file and no safetensors",
    );
    fails_with(&pull("hf:Org/Broken"), "HTTP 500");
    fails_with(
        &pull("hf:Org/NotAHub:m.gguf"),
        "not a Hugging Face hub answer",
    );
    fails_with(&pull("hf:not-a-reference"), "expected hf:ORG/REPO");
    // Nothing listens on port 9 (discard) of the loopback.
    fails_with(
        &cli("http://127.0.0.1:9", &home, &["pull", "hf:Org/Text"]),
        "cannot reach http://127.0.0.1:9",
    );
    std::fs::remove_dir_all(home).ok();
}

#[test]
fn an_interrupted_pull_leaves_nothing_resolvable_and_the_next_one_resumes() {
    const LEN: usize = 3 << 20;
    let id = "Org/Flaky-GGUF";
    let hub = Hub::start(vec![repo(id, &[("m.Q4_0.gguf", LEN)])]);
    let home = hf_home("resume");
    let spec = format!("hf:{id}:m.Q4_0.gguf");
    let pull = || cli(&hub.endpoint(), &home, &["pull", &spec]);
    let tokenize = |home: &Path| {
        cli(
            "http://127.0.0.1:9",
            home,
            &["tokenize", "--model", &spec, "Hello"],
        )
    };
    // The files in the repository's blobs/ (hf-hub's lock files aside).
    let blobs = |home: &Path| -> Vec<(PathBuf, u64)> {
        std::fs::read_dir(home.join("hub/models--Org--Flaky-GGUF/blobs"))
            .into_iter()
            .flatten()
            .flatten()
            .filter(|e| e.path().extension().is_none_or(|x| x != "lock"))
            .map(|e| (e.path(), e.metadata().unwrap().len()))
            .collect()
    };

    // The server closes half way through a body it announced whole: the retries resume and
    // are cut at the same place, the pull fails, and only the `.part` file holds the bytes.
    hub.set_mode(id, Mode::CutWithLength);
    fails_with(&pull(), "was interrupted");
    assert!(snapshot_files(&home, id).is_empty());
    let part = blobs(&home);
    assert_eq!(part.len(), 1, "{part:?}");
    assert!(part[0].0.extension().is_some_and(|x| x == "part"));
    assert_eq!(part[0].1, (LEN / 2) as u64);
    fails_with(&tokenize(&home), "not in the Hugging Face cache");

    // Healthy again: the next pull asks only for the rest and completes the file.
    hub.set_mode(id, Mode::Normal);
    let out = pull();
    assert!(out.status.success(), "{}", text(&out.stderr));
    let resumed = format!("bytes={}-", LEN / 2);
    assert_eq!(
        hub.ranges("m.Q4_0.gguf").last().unwrap().as_deref(),
        Some(resumed.as_str())
    );
    let path = PathBuf::from(text(&out.stdout).trim());
    assert_eq!(std::fs::read(&path).unwrap(), blob(LEN, 0));
    assert!(blobs(&home).iter().all(|(p, _)| p.extension().is_none()));
    std::fs::remove_dir_all(&home).ok();

    // Without a Content-Length the cut looks like the end of the file to the client: the
    // listing's size catches it, and the short file is removed, not linked.
    for (mode, want) in [
        (Mode::CutWithoutLength, "bytes arrived, the listing says"),
        (Mode::WrongBytes, "SHA-256"),
    ] {
        let home = hf_home("corrupt");
        hub.set_mode(id, mode);
        let out = cli(&hub.endpoint(), &home, &["pull", &spec]);
        fails_with(&out, want);
        assert!(snapshot_files(&home, id).is_empty(), "{mode:?}");
        let left = blobs(&home);
        assert!(left.is_empty(), "{mode:?}: {left:?}");
        fails_with(&tokenize(&home), "not in the Hugging Face cache");
        std::fs::remove_dir_all(home).ok();
    }
}
