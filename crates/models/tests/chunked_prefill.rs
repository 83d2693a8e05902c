//! A long prompt prefilled in chunks (as the engine's scheduler runs it, 512 tokens by
//! default, llama.cpp's `n_ubatch`) gives the logits of one forward over the whole prompt, to
//! the bit, when every chunk has at least 64 rows (llama.cpp's tiled attention and matmul
//! orders apply per chunk, as they do in llama.cpp's own micro-batches).

mod common;

use candle_core::Device;
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{decoder, GgufFile};

/// `n` ids: the model's long-prompt fixtures, one after another, repeated.
fn prompt(model: &str, n: usize) -> Vec<u32> {
    let lines = common::jsonl("reference/long-prompts.jsonl");
    let all: Vec<u32> = lines
        .iter()
        .filter(|l| l["model"] == model)
        .flat_map(|l| common::ids(&l["ids"]))
        .collect();
    all.iter().copied().cycle().take(n).collect()
}

fn check(name: &str, path: std::path::PathBuf, n: usize, chunks: &[usize]) {
    let mut gguf = GgufFile::open(path).unwrap();
    let model = decoder::load(&mut gguf, &Device::Cpu, &mut |_| {}).unwrap();
    let ids = prompt(name, n);
    let cache = || {
        model
            .new_cache(&KvCacheConfig::default().max_entries(n + 1))
            .unwrap()
    };
    let whole = common::row(&model.forward(&ids, &mut cache(), false).unwrap());
    let mut c = cache();
    let mut start = 0;
    let mut last = Vec::new();
    for &len in chunks {
        last = common::row(
            &model
                .forward(&ids[start..start + len], &mut c, false)
                .unwrap(),
        );
        start += len;
    }
    assert_eq!(start, n);
    let differ = whole
        .iter()
        .zip(&last)
        .filter(|(a, b)| a.to_bits() != b.to_bits())
        .count();
    assert_eq!(
        differ, 0,
        "{name}: {n} tokens in chunks {chunks:?}: {differ} logits differ from one forward"
    );
    assert_eq!(common::argmax(&whole), common::argmax(&last));
}

#[test]
fn smollm2_chunked_prefill_matches_one_forward() {
    check("smollm2", common::smollm2_path(), 600, &[512, 88]);
    check("smollm2", common::smollm2_path(), 1100, &[512, 512, 76]);
}

#[test]
fn gemma3_chunked_prefill_matches_one_forward() {
    // Gemma's local layers see 512 tokens back: the second chunk's rows reach into the first.
    check("gemma3", common::gemma3_path(), 700, &[512, 188]);
}
