//! Prompts of 64 to 200 tokens against llama.cpp (`fixtures/reference/long-prompts.jsonl`):
//! llama.cpp computes prompts of 64 rows or more with its tiled flash attention and its
//! tiled `Q6_K` matmul, which our decoders follow. Every position's argmax must agree, and the
//! last position's five best logits must be llama.cpp's to the bit.

mod common;

use candle_core::Device;
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{decoder, GgufFile};

#[test]
fn long_prompts_match_llama_cpp_exactly() {
    let lines = common::jsonl("reference/long-prompts.jsonl");
    assert_eq!(lines.len(), 6);
    for name in ["smollm2", "gemma3"] {
        let path = match name {
            "smollm2" => common::smollm2_path(),
            _ => common::gemma3_path(),
        };
        let mut gguf = GgufFile::open(path).unwrap();
        let model = decoder::load(&mut gguf, &Device::Cpu, &mut |_| {}).unwrap();
        for line in lines.iter().filter(|l| l["model"] == name) {
            let ids = common::ids(&line["ids"]);
            assert!(ids.len() >= 64, "a long prompt: {}", ids.len());
            let cache = || {
                model
                    .new_cache(&KvCacheConfig::default().max_entries(ids.len()))
                    .unwrap()
            };
            let all = model.forward(&ids, &mut cache(), true).unwrap();
            let got: Vec<u32> = (0..ids.len())
                .map(|i| common::argmax(&common::row(&all.get(i).unwrap())))
                .collect();
            assert_eq!(
                got,
                common::ids(&line["argmax"]),
                "{name}, {} tokens",
                ids.len()
            );
            let last = common::row(&model.forward(&ids, &mut cache(), false).unwrap());
            for pair in line["last_top5"].as_array().unwrap() {
                let id = pair[0].as_u64().unwrap() as usize;
                let want = pair[1].as_f64().unwrap() as f32;
                assert_eq!(
                    last[id].to_bits(),
                    want.to_bits(),
                    "{name}, {} tokens: logit of {id} is {} (llama.cpp {want})",
                    ids.len(),
                    last[id]
                );
            }
        }
    }
}
