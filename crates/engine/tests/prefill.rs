//! Chunked prefill on the real SmolLM2: a long prompt is prefilled in chunks interleaved with
//! the other sequences' work, gives the tokens of the single-sequence path, lets a short
//! request overtake it, and is dropped between two chunks when its client leaves.

mod common;

use std::time::{Duration, Instant};

use common::{chat, generator, smollm2};
use fluent_ai_candle_engine::{generate, CandleCompletionRequest, GenerationConfig, Prompt};

/// `n` tokens of a long, varied text.
fn long_ids(n: usize) -> Vec<u32> {
    let model = smollm2();
    let text = (0..n)
        .map(|i| {
            format!(
                "Item {i}: the {} fox sees {} birds. ",
                ["red", "quick", "old"][i % 3],
                i * 7 % 13
            )
        })
        .collect::<String>();
    let ids = model.tokenizer.encode(&text, true).unwrap();
    assert!(ids.len() >= n, "{}", ids.len());
    ids[..n].to_vec()
}

fn greedy(ids: Vec<u32>, max_tokens: usize) -> CandleCompletionRequest {
    CandleCompletionRequest {
        input: Some(Prompt::Tokens(ids)),
        max_tokens: Some(max_tokens),
        temperature: Some(0.0),
        ignore_eos: true,
        ..Default::default()
    }
}

/// A 600-token prompt in chunks of 512 (the default) through the scheduler gives the tokens
/// the single-sequence path gives (which chunks the same way), and with a prefix-cache hit
/// the same again.
#[test]
fn chunked_prefill_gives_the_single_sequence_tokens() {
    let ids = long_ids(600);
    let single = generate(&smollm2(), &greedy(ids.clone(), 8), &mut |_| {}).unwrap();
    let g = generator(GenerationConfig::default());
    for _ in 0..2 {
        let r = g
            .generate(&greedy(ids.clone(), 8))
            .blocking_collect()
            .unwrap();
        assert_eq!(r.choices[0].token_ids, single.token_ids);
    }
    assert_eq!(g.metrics().prefix_cache_hits, 1);
}

/// A short request sent while a long prompt is being prefilled gets its first token before the
/// long prompt does: it is prefilled between two of the long prompt's chunks.
#[test]
fn a_short_request_overtakes_a_long_prefill() {
    let g = generator(
        GenerationConfig::default()
            .prefill_chunk(64)
            .prefix_cache(None),
    );
    let t0 = Instant::now();
    let mut long = g.generate_stream(&greedy(long_ids(1200), 1)).unwrap();
    while g.metrics().active_sequences == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    let short = g
        .generate(&greedy(
            smollm2()
                .tokenizer
                .encode(&chat("Name a colour."), true)
                .unwrap(),
            1,
        ))
        .blocking_collect()
        .unwrap();
    let short_done = t0.elapsed();
    assert_eq!(short.choices[0].token_ids.len(), 1);
    assert!(long.blocking_next().is_some());
    let long_done = t0.elapsed();
    assert!(
        short_done < long_done,
        "short request done at {short_done:?}, long prompt's first token at {long_done:?}"
    );
}

/// A client that leaves during a long prefill frees the model at the next chunk boundary: the
/// next request does not wait for the rest of the prompt.
#[test]
fn a_client_leaving_mid_prefill_frees_the_model_within_one_chunk() {
    let g = generator(
        GenerationConfig::default()
            .prefill_chunk(64)
            .prefix_cache(None)
            .max_concurrent_requests(1),
    );
    let ids = long_ids(4000);
    // How long one chunk takes here (a short prompt of one chunk, twice: warm).
    let chunk = {
        let mut best = Duration::MAX;
        for _ in 0..2 {
            let t = Instant::now();
            g.generate(&greedy(ids[..64].to_vec(), 1))
                .blocking_collect()
                .unwrap();
            best = best.min(t.elapsed());
        }
        best
    };
    let long = g.generate_stream(&greedy(ids, 4)).unwrap();
    while g.metrics().active_sequences == 0 {
        std::thread::sleep(Duration::from_millis(2));
    }
    std::thread::sleep(chunk * 2);
    let t = Instant::now();
    drop(long);
    // One slot: this request starts only once the long one is gone.
    let r = g
        .generate(&greedy(ids_short(), 1))
        .blocking_collect()
        .unwrap();
    let freed = t.elapsed();
    assert_eq!(r.choices[0].token_ids.len(), 1);
    assert_eq!(g.metrics().cancelled, 1);
    // The rest of the 4,000-token prefill would take ~60 chunks; allow a few for a busy
    // machine (the chunk in flight, the short request's own prefill, scheduling noise).
    assert!(
        freed < chunk * 8,
        "freed after {freed:?}; one chunk takes {chunk:?}"
    );
}

fn ids_short() -> Vec<u32> {
    smollm2().tokenizer.encode(&chat("Say hi."), true).unwrap()
}
