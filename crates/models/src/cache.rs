//! The local model cache: where `cargo xtask fetch-models` puts the real GGUF files, and how
//! a `--model` argument (a path or a known name) resolves to a file.

use std::path::{Path, PathBuf};

use crate::{ModelError, Result};

/// Environment variable that overrides the model cache directory.
pub const CACHE_ENV: &str = "FLUENT_AI_CANDLE_MODELS";

/// A model the project knows how to fetch into its cache.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KnownModel {
    /// The name users pass to `--model`.
    pub name: &'static str,
    /// File name inside the cache directory.
    pub file: &'static str,
    /// SHA-256 of the file, lowercase hex.
    pub sha256: &'static str,
    /// Size of the file in bytes.
    pub size: u64,
}

/// The models `cargo xtask fetch-models` installs. The first is the default.
pub const KNOWN_MODELS: &[KnownModel] = &[
    KnownModel {
        name: "smollm2-135m-instruct",
        file: "SmolLM2-135M-Instruct.Q4_1.gguf",
        sha256: "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        size: 98_362_432,
    },
    KnownModel {
        name: "gemma3-270m",
        file: "gemma-3-270m-q4_k_m.gguf",
        sha256: "a5fd3b62230aa5ec60212297dc9d20eaa70578ac519e00d93a17e44c087a6818",
        size: 253_113_024,
    },
];

/// The name of the default model.
pub const DEFAULT_MODEL: &str = "smollm2-135m-instruct";

/// The model cache directory: `$FLUENT_AI_CANDLE_MODELS`, else
/// `$XDG_CACHE_HOME/fluent-ai-candle/models`, else `$HOME/.cache/fluent-ai-candle/models`.
pub fn cache_dir() -> PathBuf {
    if let Some(dir) = std::env::var_os(CACHE_ENV).filter(|v| !v.is_empty()) {
        return PathBuf::from(dir);
    }
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from(".cache"));
    base.join("fluent-ai-candle").join("models")
}

/// Looks up a known model by name.
pub fn known_model(name: &str) -> Option<&'static KnownModel> {
    KNOWN_MODELS.iter().find(|m| m.name == name)
}

/// The cache path of a known model (whether or not it is there).
pub fn model_path(name: &str) -> Result<PathBuf> {
    let model = known_model(name).ok_or_else(|| unknown(name))?;
    Ok(cache_dir().join(model.file))
}

fn unknown(name: &str) -> ModelError {
    ModelError::UnknownModel {
        name: name.to_string(),
        known: KNOWN_MODELS
            .iter()
            .map(|m| m.name)
            .collect::<Vec<_>>()
            .join(", "),
    }
}

/// Resolves a `--model` argument: an existing file, a path-like argument (contains a path
/// separator or ends in `.gguf`), or a known model name in the cache.
pub fn resolve(spec: &str) -> Result<PathBuf> {
    let path = Path::new(spec);
    if path.is_file() {
        return Ok(path.to_path_buf());
    }
    if let Some(model) = known_model(spec) {
        let path = cache_dir().join(model.file);
        if path.is_file() {
            return Ok(path);
        }
        return Err(ModelError::NotCached {
            name: spec.to_string(),
            path,
        });
    }
    if spec.contains(std::path::MAIN_SEPARATOR) || spec.contains('/') || spec.ends_with(".gguf") {
        return Err(ModelError::NotFound {
            path: path.to_path_buf(),
        });
    }
    Err(unknown(spec))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_names_and_missing_paths_are_typed() {
        assert!(matches!(
            resolve("no-such-model"),
            Err(ModelError::UnknownModel { .. })
        ));
        assert!(matches!(
            resolve("/nonexistent/file.gguf"),
            Err(ModelError::NotFound { .. })
        ));
        assert!(model_path("gemma3-270m")
            .unwrap()
            .ends_with("gemma-3-270m-q4_k_m.gguf"));
    }
}
