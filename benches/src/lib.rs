//! Shared helpers for the fluent-ai-candle benchmarks (this crate is not published).

use std::path::Path;

use fluent_ai_candle_models::{CandleTokenizer, GgufFile};

/// Prefill and decode speed of one run.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Speed {
    /// Prompt tokens per second.
    pub prefill_tok_s: f64,
    /// Generated tokens per second.
    pub decode_tok_s: f64,
}

impl Speed {
    /// Speeds from token counts and seconds.
    pub fn new(prompt: usize, prefill_s: f64, new: usize, decode_s: f64) -> Self {
        Self {
            prefill_tok_s: prompt as f64 / prefill_s,
            decode_tok_s: new as f64 / decode_s,
        }
    }

    /// The per-field median of several runs.
    pub fn median_of(runs: &[Speed]) -> Speed {
        let mut p: Vec<f64> = runs.iter().map(|r| r.prefill_tok_s).collect();
        let mut d: Vec<f64> = runs.iter().map(|r| r.decode_tok_s).collect();
        Speed {
            prefill_tok_s: median(&mut p),
            decode_tok_s: median(&mut d),
        }
    }
}

/// The median of a non-empty slice (sorts it); 0 for an empty one.
pub fn median(xs: &mut [f64]) -> f64 {
    if xs.is_empty() {
        return 0.0;
    }
    xs.sort_by(|a, b| a.total_cmp(b));
    xs[xs.len() / 2]
}

/// English text tokenized with the model's own tokenizer, cut or repeated to exactly `n` tokens.
pub fn prompt_ids(model: &Path, n: usize) -> anyhow::Result<Vec<u32>> {
    let gguf = GgufFile::open(model)?;
    let tok = CandleTokenizer::from_gguf(gguf.content())?;
    let text = "The history of natural language processing generally started in the 1950s, \
        although work can be found from earlier periods. In 1950, Alan Turing published an \
        article titled Computing Machinery and Intelligence which proposed what is now called \
        the Turing test as a criterion of intelligence. ";
    let one = tok.encode(text, false)?;
    anyhow::ensure!(!one.is_empty(), "the prompt text encodes to no tokens");
    Ok(one.iter().copied().cycle().take(n).collect())
}
