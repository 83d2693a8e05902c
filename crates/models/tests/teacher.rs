//! Teacher-forced argmax of our decoder against llama.cpp's on the real SmolLM2 file
//! (`fixtures/reference/smollm2-teacher.jsonl`).

mod common;

use candle_core::{Device, D};
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{GgufFile, Llama};

#[test]
fn teacher_forced_argmax_matches_llama_cpp() {
    let mut gguf = GgufFile::open(common::smollm2_path()).unwrap();
    let model = Llama::load(&mut gguf, &Device::Cpu, &mut |_| {}).unwrap();
    let (mut total, mut agree, mut confident, mut confident_agree) = (0, 0, 0, 0);
    let mut worst = Vec::new();
    for line in common::jsonl("reference/smollm2-teacher.jsonl") {
        let ids = common::ids(&line["ids"]);
        let argmax = common::ids(&line["argmax"]);
        let margins: Vec<f64> = line["margin"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| m.as_f64().unwrap())
            .collect();
        let mut cache = model
            .new_cache(&KvCacheConfig::default().max_entries(ids.len()))
            .unwrap();
        let logits = model.forward(&ids, &mut cache, true).unwrap();
        let ours: Vec<u32> = logits.argmax(D::Minus1).unwrap().to_vec1().unwrap();
        for i in 0..ids.len() {
            total += 1;
            let ok = ours[i] == argmax[i];
            agree += ok as usize;
            if margins[i] >= 0.5 {
                confident += 1;
                confident_agree += ok as usize;
                if !ok {
                    worst.push((line["text"].to_string(), i, margins[i]));
                }
            }
        }
    }
    eprintln!(
        "teacher-forced argmax: {agree}/{total} positions agree ({:.1}%), {confident_agree}/{confident} with margin >= 0.5",
        100.0 * agree as f64 / total as f64
    );
    assert!(
        worst.is_empty(),
        "confident positions that disagree: {worst:?}"
    );
    assert!(agree * 100 >= total * 95, "{agree}/{total} < 95%");
}
