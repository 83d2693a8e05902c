//! Downloading `hf:ORG/REPO[:FILE]` from a Hugging Face hub into the Hugging Face cache, where
//! [`cache::resolve`](crate::cache::resolve) (and so `generate`/`serve --model hf:…`) finds it
//! (the `pull` feature; the CLI's `fluent-ai-candle pull`).
//!
//! The transfer is hf-hub's (its blocking `ureq` client): `GET {endpoint}/api/models/{repo}/
//! revision/main?blobs=true` lists the repository, then for each file a `Range: bytes=0-0`
//! request reads its `etag`, `x-repo-commit` and `Content-Range` size, and the body goes to
//! `blobs/{etag}.part`, renamed to `blobs/{etag}` when whole and linked from
//! `snapshots/{commit}/{file}`, with `refs/main` pointing at the commit. An interrupted
//! transfer leaves only the `.part` file (the next pull resumes it with a `Range` request),
//! never a snapshot entry. After hf-hub links the file, its size is checked against the
//! listing, and its SHA-256 too when the listing gives one (the hub does for LFS files): a
//! server that closed early without a `Content-Length`, or sent other bytes, leaves no file
//! `resolve` would take as complete (the link and the blob are removed).
//!
//! Without `FILE` the repository's GGUF is [`choose_gguf`]'s pick (the only `.gguf`, else the
//! only Q4_K_M); a repository without GGUF files but with a safetensors model gets
//! `config.json`, the tokenizer files and the weights (every shard the index lists).

use std::io::Read;
use std::panic::AssertUnwindSafe;
use std::path::{Path, PathBuf};

use hf_hub::api::sync::{ApiBuilder, ApiError, ApiRepo};
use serde::Deserialize;
use sha2::Digest;

use crate::cache::{self, choose_gguf, GgufChoice};

/// The hub `pull` talks to when `HF_ENDPOINT` is not set.
pub const DEFAULT_ENDPOINT: &str = "https://huggingface.co";

/// The files of a safetensors model `pull` fetches besides the weights, when the repository
/// has them (`config.json` and `tokenizer.json` are required).
const SAFETENSORS_COMPANIONS: &[&str] = &[
    "config.json",
    "tokenizer.json",
    "tokenizer_config.json",
    "generation_config.json",
    "special_tokens_map.json",
    "chat_template.jinja",
];

/// What went wrong in a pull. Every failure is one of these (never a panic); the messages
/// say what to do.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum PullError {
    /// The reference is not `hf:ORG/REPO[:FILE]`.
    #[error("hugging face reference '{spec}': {reason}")]
    InvalidReference {
        /// The reference as given.
        spec: String,
        /// What is wrong with it.
        reason: String,
    },
    /// The hub has no such repository (or it is private and no token was given).
    #[error(
        "repository {repo} not found at {endpoint} (check the name; a private or gated \
         repository needs a token in HF_TOKEN)"
    )]
    RepoNotFound {
        /// `ORG/REPO`.
        repo: String,
        /// The hub asked.
        endpoint: String,
    },
    /// The repository has no file of that name.
    #[error("{repo} has no file {file}{}", if available.is_empty() { String::new() } else { format!("; its files: {}", available.join(", ")) })]
    FileNotFound {
        /// `ORG/REPO`.
        repo: String,
        /// The file asked for.
        file: String,
        /// The repository's files (its GGUF files when it has any, else all).
        available: Vec<String>,
    },
    /// `hf:ORG/REPO` without a file, and several GGUF files with no rule to pick one.
    #[error("{repo} holds several GGUF files; name one as hf:{repo}:FILE: {}", choices.join(", "))]
    AmbiguousGguf {
        /// `ORG/REPO`.
        repo: String,
        /// The candidates.
        choices: Vec<String>,
    },
    /// `hf:ORG/REPO` without a file, and the repository holds neither a GGUF file nor a
    /// safetensors model (`config.json`, `tokenizer.json`, `model.safetensors` or an index).
    #[error(
        "{repo} holds no GGUF file and no safetensors model (config.json, tokenizer.json, \
         model.safetensors); its files: {}", files.join(", ")
    )]
    NoModel {
        /// `ORG/REPO`.
        repo: String,
        /// The repository's files.
        files: Vec<String>,
    },
    /// The hub refused access (HTTP 401/403): a gated or private repository.
    #[error(
        "{url}: access denied (HTTP {status}); a gated or private repository needs a token in \
         HF_TOKEN (and, for a gated one, its terms accepted on the hub)"
    )]
    AccessDenied {
        /// The URL asked.
        url: String,
        /// The status.
        status: u16,
    },
    /// The hub could not be reached (DNS, connection refused, TLS, proxy).
    #[error("cannot reach {endpoint} (set HF_ENDPOINT for a mirror): {reason}")]
    Unreachable {
        /// The hub asked.
        endpoint: String,
        /// The transport's error.
        reason: String,
    },
    /// The hub answered with an HTTP error status.
    #[error("{url}: HTTP {status}{}", if message.is_empty() { String::new() } else { format!(": {message}") })]
    Http {
        /// The URL asked.
        url: String,
        /// The status.
        status: u16,
        /// The start of the body (the hub's error text), possibly empty.
        message: String,
    },
    /// The transfer stopped before the whole file arrived. Nothing was linked into the
    /// snapshot; the bytes received wait in `blobs/*.part` and the next pull resumes them.
    #[error("downloading {file} was interrupted ({reason}); run the pull again to resume")]
    Interrupted {
        /// The repository file.
        file: String,
        /// What stopped it.
        reason: String,
    },
    /// The file arrived with another size or SHA-256 than the repository lists; it was
    /// removed from the cache.
    #[error("{file}: the download does not match the repository's listing ({reason}); it was removed, run the pull again")]
    Corrupt {
        /// The repository file.
        file: String,
        /// Expected and received size or hash.
        reason: String,
    },
    /// The server's answer is not what a Hugging Face hub sends (a missing `etag`,
    /// `x-repo-commit` or `Content-Range` header, an unreadable listing).
    #[error("{url}: not a Hugging Face hub answer ({reason}); is HF_ENDPOINT right?")]
    Protocol {
        /// The URL asked.
        url: String,
        /// What was wrong.
        reason: String,
    },
    /// Another process is downloading the same file (hf-hub's lock file is held).
    #[error("another pull is downloading into {}; wait for it or remove the lock file", path.display())]
    Busy {
        /// The lock file.
        path: PathBuf,
    },
    /// Reading or writing the cache failed.
    #[error("{}: {source}", path.display())]
    Io {
        /// The path.
        path: PathBuf,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
}

/// Where and how to pull.
#[derive(Debug, Clone)]
pub struct PullOptions {
    /// The hub's base URL (no trailing `/`).
    pub endpoint: String,
    /// The Hugging Face hub cache directory (`models--ORG--REPO/…` lives under it).
    pub cache: PathBuf,
    /// A hub token sent as `Authorization: Bearer`, for private and gated repositories.
    pub token: Option<String>,
    /// Times an interrupted transfer is resumed within one pull before it fails.
    pub retries: usize,
}

impl PullOptions {
    /// The options the environment gives, as `huggingface-cli` reads them: `HF_ENDPOINT`
    /// (else [`DEFAULT_ENDPOINT`]), the cache directory [`cache::resolve`] reads
    /// ([`cache::hub_cache_dir`]: `HF_HUB_CACHE`, else `HF_HOME/hub`, else
    /// `~/.cache/huggingface/hub`), the token in `HF_TOKEN` or else in the `token` file beside
    /// the cache (where `huggingface-cli login` writes it); three retries.
    pub fn from_env() -> Self {
        let var = |k: &str| std::env::var(k).ok().filter(|v| !v.trim().is_empty());
        let cache = cache::hub_cache_dir();
        let token = var("HF_TOKEN").or_else(|| hf_hub::Cache::new(cache.clone()).token());
        Self {
            endpoint: var("HF_ENDPOINT").unwrap_or_else(|| DEFAULT_ENDPOINT.to_string()),
            cache,
            token,
            retries: 3,
        }
        .normalized()
    }

    fn normalized(mut self) -> Self {
        self.endpoint = self.endpoint.trim().trim_end_matches('/').to_string();
        self
    }
}

/// Progress of one file's transfer, reported as bytes arrive.
#[derive(Debug, Clone, Copy)]
pub struct PullProgress<'a> {
    /// The repository file.
    pub file: &'a str,
    /// Bytes in the cache so far (a resumed transfer starts past 0).
    pub downloaded: u64,
    /// The file's size.
    pub total: u64,
}

/// One file of a pull.
#[derive(Debug, Clone)]
pub struct PulledFile {
    /// The path inside the repository.
    pub name: String,
    /// Its snapshot entry in the cache.
    pub path: PathBuf,
    /// Its size in bytes.
    pub size: u64,
    /// False when the cache already held it (nothing was transferred).
    pub downloaded: bool,
}

/// What a pull fetched.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The reference that names exactly this model: `hf:ORG/REPO:FILE` for a GGUF,
    /// `hf:ORG/REPO` for a safetensors model.
    pub spec: String,
    /// What [`cache::resolve`] returns for [`Pulled::spec`]: the GGUF file, or the snapshot
    /// directory of a safetensors model.
    pub path: PathBuf,
    /// The files, in the order fetched.
    pub files: Vec<PulledFile>,
}

/// The repository listing (`/api/models/{repo}/revision/main?blobs=true`), the fields used.
#[derive(Debug, Deserialize)]
struct Listing {
    sha: String,
    #[serde(default)]
    siblings: Vec<Sibling>,
}

#[derive(Debug, Deserialize)]
struct Sibling {
    rfilename: String,
    #[serde(default)]
    size: Option<u64>,
    #[serde(default)]
    lfs: Option<Lfs>,
}

#[derive(Debug, Deserialize)]
struct Lfs {
    sha256: String,
    size: u64,
}

impl Sibling {
    fn size(&self) -> Option<u64> {
        self.lfs.as_ref().map(|l| l.size).or(self.size)
    }
}

/// Downloads `spec` (`hf:ORG/REPO[:FILE]`; the `hf:` prefix is optional) into
/// `options.cache`, calling `progress` as bytes arrive. Files the cache already holds for
/// the repository's current commit (with the listed size) are not transferred again.
pub fn pull(
    spec: &str,
    options: &PullOptions,
    progress: &mut dyn FnMut(PullProgress<'_>),
) -> Result<Pulled, PullError> {
    let options = options.clone().normalized();
    let reference = spec.strip_prefix("hf:").unwrap_or(spec);
    let (repo, file) =
        cache::parse_hub_reference(reference).map_err(|reason| PullError::InvalidReference {
            spec: format!("hf:{reference}"),
            reason,
        })?;
    let api = ApiBuilder::from_cache(hf_hub::Cache::new(options.cache.clone()))
        .with_endpoint(options.endpoint.clone())
        .with_token(options.token.clone())
        .with_progress(false)
        .with_retries(options.retries)
        .with_user_agent("fluent-ai-candle", env!("CARGO_PKG_VERSION"))
        .build()
        .map_err(|e| {
            let at = Target {
                repo,
                file: "",
                endpoint: &options.endpoint,
                url: &options.endpoint,
            };
            api_error(e, &at)
        })?;
    let hub = api.model(repo.to_string());
    let listing = list(&hub, repo, &options.endpoint)?;
    let names: Vec<&str> = listing
        .siblings
        .iter()
        .map(|s| s.rfilename.as_str())
        .collect();

    let (wanted, spec) = match file {
        Some(file) if names.contains(&file) => {
            (vec![file.to_string()], format!("hf:{repo}:{file}"))
        }
        Some(file) => {
            let ggufs: Vec<String> = names
                .iter()
                .filter(|n| n.to_ascii_lowercase().ends_with(".gguf"))
                .map(|n| n.to_string())
                .collect();
            return Err(PullError::FileNotFound {
                repo: repo.into(),
                file: file.into(),
                available: if ggufs.is_empty() {
                    names.iter().map(|n| n.to_string()).collect()
                } else {
                    ggufs
                },
            });
        }
        None => match choose_gguf(&names) {
            GgufChoice::One(gguf) => (vec![gguf.to_string()], format!("hf:{repo}:{gguf}")),
            GgufChoice::Several(choices) => {
                return Err(PullError::AmbiguousGguf {
                    repo: repo.into(),
                    choices: choices.into_iter().map(String::from).collect(),
                })
            }
            GgufChoice::None => {
                let has = |f: &str| names.contains(&f);
                let weights = has("model.safetensors") || has("model.safetensors.index.json");
                if !(has("config.json") && has("tokenizer.json") && weights) {
                    return Err(PullError::NoModel {
                        repo: repo.into(),
                        files: names.iter().map(|n| n.to_string()).collect(),
                    });
                }
                let wanted: Vec<String> = SAFETENSORS_COMPANIONS
                    .iter()
                    .chain(&["model.safetensors.index.json", "model.safetensors"])
                    .filter(|f| has(f))
                    .map(|f| f.to_string())
                    .collect();
                // The shards the index lists come after it (read once it is downloaded).
                (wanted, format!("hf:{repo}"))
            }
        },
    };

    let mut files = Vec::new();
    let mut queue: std::collections::VecDeque<String> = wanted.into();
    while let Some(name) = queue.pop_front() {
        let sibling = listing.siblings.iter().find(|s| s.rfilename == name);
        let Some(sibling) = sibling else {
            return Err(PullError::FileNotFound {
                repo: repo.into(),
                file: name,
                available: names.iter().map(|n| n.to_string()).collect(),
            });
        };
        let pulled = fetch(&hub, repo, &options, &listing.sha, sibling, progress)?;
        if name == "model.safetensors.index.json" {
            for shard in index_shards(&pulled.path)? {
                if !queue.contains(&shard) && files.iter().all(|f: &PulledFile| f.name != shard) {
                    queue.push_back(shard);
                }
            }
        }
        files.push(pulled);
    }

    let path = cache::resolve_hub(spec.trim_start_matches("hf:"), &options.cache).map_err(|e| {
        PullError::Protocol {
            url: options.endpoint.clone(),
            reason: format!("the files arrived but do not resolve: {e}"),
        }
    })?;
    Ok(Pulled { spec, path, files })
}

/// The repository listing, or why there is none.
fn list(hub: &ApiRepo, repo: &str, endpoint: &str) -> Result<Listing, PullError> {
    let request = hub.info_request().query("blobs", "true");
    let url = request.url().to_string();
    let response = match request.call() {
        Ok(response) => response,
        Err(ureq::Error::Status(status, response))
            if status == 404
                || (status == 401 && response.header("x-error-code") == Some("RepoNotFound")) =>
        {
            return Err(PullError::RepoNotFound {
                repo: repo.into(),
                endpoint: endpoint.into(),
            })
        }
        Err(e) => return Err(ureq_error(e, endpoint, &url)),
    };
    let mut body = Vec::new();
    response
        .into_reader()
        .take(64 << 20)
        .read_to_end(&mut body)
        .map_err(|e| PullError::Unreachable {
            endpoint: endpoint.into(),
            reason: format!("reading the repository listing: {e}"),
        })?;
    serde_json::from_slice(&body).map_err(|e| PullError::Protocol {
        url,
        reason: format!("the repository listing is not the hub's JSON: {e}"),
    })
}

/// One file into the cache (unless it is there already), checked against the listing.
fn fetch(
    hub: &ApiRepo,
    repo: &str,
    options: &PullOptions,
    commit: &str,
    sibling: &Sibling,
    progress: &mut dyn FnMut(PullProgress<'_>),
) -> Result<PulledFile, PullError> {
    let name = sibling.rfilename.as_str();
    let expected = sibling.size();
    let cached = options
        .cache
        .join(hf_hub::Repo::model(repo.to_string()).folder_name())
        .join("snapshots")
        .join(commit)
        .join(name);
    if let (Ok(meta), Some(size)) = (std::fs::metadata(&cached), expected) {
        if meta.is_file() && meta.len() == size {
            // The snapshot entry names the commit: a file linked there is that commit's.
            hf_hub::Cache::new(options.cache.clone())
                .model(repo.to_string())
                .create_ref(commit)
                .map_err(|source| PullError::Io {
                    path: options.cache.clone(),
                    source,
                })?;
            progress(PullProgress {
                file: name,
                downloaded: size,
                total: size,
            });
            return Ok(PulledFile {
                name: name.into(),
                path: cached,
                size,
                downloaded: false,
            });
        }
    }
    let url = hub.url(name);
    let adapter = ProgressAdapter {
        file: name,
        downloaded: 0,
        total: 0,
        callback: progress,
    };
    // hf-hub asserts on a few things a hostile or broken server controls (a redirect without
    // a Location header); its panics become a typed error here rather than an abort.
    let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
        hub.download_with_progress(name, adapter)
    }));
    let at = Target {
        repo,
        file: name,
        endpoint: &options.endpoint,
        url: &url,
    };
    let path = match result {
        Ok(Ok(path)) => path,
        Ok(Err(e)) => return Err(api_error(e, &at)),
        Err(_) => {
            return Err(PullError::Protocol {
                url,
                reason: "hf-hub stopped on an answer it did not expect".into(),
            })
        }
    };
    let size = verify(&path, sibling)?;
    Ok(PulledFile {
        name: name.into(),
        path,
        size,
        downloaded: true,
    })
}

/// Checks a linked file against the listing (size, and SHA-256 where listed); on a mismatch
/// removes the snapshot link and the blob so that nothing half-written resolves.
fn verify(path: &Path, sibling: &Sibling) -> Result<u64, PullError> {
    let io = |source| PullError::Io {
        path: path.to_path_buf(),
        source,
    };
    let size = std::fs::metadata(path).map_err(io)?.len();
    let mismatch = if sibling.size().is_some_and(|want| want != size) {
        Some(format!(
            "{size} bytes arrived, the listing says {}",
            sibling.size().unwrap_or_default()
        ))
    } else if let Some(lfs) = &sibling.lfs {
        let mut hasher = sha2::Sha256::new();
        let mut file = std::fs::File::open(path).map_err(io)?;
        std::io::copy(&mut file, &mut hasher).map_err(io)?;
        let actual = format!("{:x}", hasher.finalize());
        (!actual.eq_ignore_ascii_case(&lfs.sha256))
            .then(|| format!("SHA-256 {actual}, the listing says {}", lfs.sha256))
    } else {
        None
    };
    match mismatch {
        None => Ok(size),
        Some(reason) => {
            let blob = std::fs::canonicalize(path).ok();
            std::fs::remove_file(path).map_err(io)?;
            if let Some(blob) = blob.filter(|b| b != path) {
                std::fs::remove_file(&blob).ok();
            }
            Err(PullError::Corrupt {
                file: sibling.rfilename.clone(),
                reason,
            })
        }
    }
}

/// The shard files a downloaded `model.safetensors.index.json` lists.
fn index_shards(index: &Path) -> Result<Vec<String>, PullError> {
    let dir = index.parent().unwrap_or(Path::new("."));
    let shards = crate::safetensors::weight_files(dir).map_err(|e| PullError::Corrupt {
        file: "model.safetensors.index.json".into(),
        reason: e.to_string(),
    })?;
    Ok(shards
        .iter()
        .filter_map(|p| p.strip_prefix(dir).ok())
        .map(|p| p.to_string_lossy().replace('\\', "/"))
        .collect())
}

/// hf-hub's progress calls forwarded to the caller's callback.
struct ProgressAdapter<'a, 'b> {
    file: &'a str,
    downloaded: u64,
    total: u64,
    callback: &'b mut dyn FnMut(PullProgress<'_>),
}

impl ProgressAdapter<'_, '_> {
    fn report(&mut self) {
        (self.callback)(PullProgress {
            file: self.file,
            downloaded: self.downloaded,
            total: self.total,
        });
    }
}

impl hf_hub::api::Progress for ProgressAdapter<'_, '_> {
    fn init(&mut self, size: usize, _filename: &str) {
        // hf-hub calls `init` again on every (re)start, then `update` with the bytes
        // already in the `.part` file.
        self.total = size as u64;
        self.downloaded = 0;
    }

    fn update(&mut self, size: usize) {
        self.downloaded += size as u64;
        self.report();
    }

    fn finish(&mut self) {
        self.report();
    }
}

/// What a request was for, to word its error.
struct Target<'a> {
    /// `ORG/REPO`.
    repo: &'a str,
    /// The repository file (empty for the listing).
    file: &'a str,
    endpoint: &'a str,
    url: &'a str,
}

/// An hf-hub error as a [`PullError`].
fn api_error(e: ApiError, at: &Target<'_>) -> PullError {
    let (file, url) = (at.file, at.url);
    match e {
        ApiError::RequestError(e) => match *e {
            ureq::Error::Status(404, _) => PullError::FileNotFound {
                repo: at.repo.into(),
                file: file.into(),
                available: Vec::new(),
            },
            e => ureq_error(e, at.endpoint, url),
        },
        ApiError::MissingHeader(h) => PullError::Protocol {
            url: url.into(),
            reason: format!("no {h} header"),
        },
        ApiError::InvalidHeader(h) => PullError::Protocol {
            url: url.into(),
            reason: format!("a malformed {h} header"),
        },
        ApiError::ParseIntError(e) => PullError::Protocol {
            url: url.into(),
            reason: format!("a malformed size in Content-Range: {e}"),
        },
        ApiError::InvalidResume => PullError::Protocol {
            url: url.into(),
            reason: "the partial download in the cache is larger than the file; remove \
                     blobs/*.part of this repository and pull again"
                .into(),
        },
        ApiError::LockAcquisition(path) => PullError::Busy { path },
        ApiError::TooManyRetries(last) => PullError::Interrupted {
            file: file.into(),
            reason: format!("gave up after retries: {}", flatten(&last)),
        },
        ApiError::IoError(e) if is_transfer_error(&e) => PullError::Interrupted {
            file: file.into(),
            reason: e.to_string(),
        },
        ApiError::IoError(source) => PullError::Io {
            path: PathBuf::from(file),
            source,
        },
        // Future hf-hub variants: the message, kept.
        #[allow(unreachable_patterns)]
        other => PullError::Protocol {
            url: url.into(),
            reason: other.to_string(),
        },
    }
}

/// An error's message with its sources.
fn flatten(e: &dyn std::error::Error) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

/// Whether an I/O error is the connection's (the body stopped) rather than the disk's.
fn is_transfer_error(e: &std::io::Error) -> bool {
    use std::io::ErrorKind::*;
    matches!(
        e.kind(),
        UnexpectedEof | ConnectionReset | ConnectionAborted | BrokenPipe | TimedOut | Interrupted
    ) || e
        .get_ref()
        .is_some_and(|inner| inner.is::<ureq::Transport>())
}

/// A `ureq` error (a status, or the transport's) as a [`PullError`].
fn ureq_error(e: ureq::Error, endpoint: &str, url: &str) -> PullError {
    match e {
        ureq::Error::Status(status @ (401 | 403), _) => PullError::AccessDenied {
            url: url.into(),
            status,
        },
        ureq::Error::Status(status, response) => {
            let mut message = String::new();
            let _ = response
                .into_reader()
                .take(300)
                .read_to_string(&mut message);
            PullError::Http {
                url: url.into(),
                status,
                message: message.trim().to_string(),
            }
        }
        ureq::Error::Transport(t) => PullError::Unreachable {
            endpoint: endpoint.into(),
            reason: t.to_string(),
        },
    }
}
