//! Teacher-forced argmax of our decoder against llama.cpp's on the real SmolLM2 file
//! (`fixtures/reference/smollm2-teacher.jsonl`).

mod common;

use candle_core::Device;
use fluent_ai_candle_kv_cache::KvCacheConfig;
use fluent_ai_candle_models::{Decoder, GgufFile, Llama};

#[test]
fn teacher_forced_argmax_matches_llama_cpp() {
    let mut gguf = GgufFile::open(common::smollm2_path()).unwrap();
    let model = Llama::load(&mut gguf, &Device::Cpu, &mut |_| {}).unwrap();
    let common::TeacherScore {
        total,
        agree,
        confident,
        confident_agree,
        worst,
    } = common::teacher_forced("reference/smollm2-teacher.jsonl", |ids| {
        let mut cache = model
            .new_cache(&KvCacheConfig::default().max_entries(ids.len()))
            .unwrap();
        model.forward(ids, &mut cache, true).unwrap()
    });
    eprintln!(
        "teacher-forced argmax: {agree}/{total} positions agree ({:.1}%), {confident_agree}/{confident} with margin >= 0.5",
        100.0 * agree as f64 / total as f64
    );
    assert!(
        worst.is_empty(),
        "confident positions that disagree: {worst:?}"
    );
    // Our decoder computes as llama.cpp does: every position, near-ties included.
    assert_eq!(agree, total, "{agree}/{total} positions agree");
}
