//! Random inputs and random configurations: typed errors, never a panic.

use fluent_ai_candle_sampling::*;
use proptest::prelude::*;

fn any_logit() -> impl Strategy<Value = f32> {
    prop_oneof![
        20 => -50.0f32..50.0,
        1 => Just(f32::NAN),
        1 => Just(f32::INFINITY),
        1 => Just(f32::NEG_INFINITY),
        1 => Just(f32::MAX),
        1 => Just(-f32::MAX),
    ]
}

fn any_step(v: u32) -> impl Strategy<Value = ProcessorSpec> {
    let f = prop_oneof![1 => Just(f32::NAN), 2 => -0.5f32..0.0, 12 => 0.01f32..1.0, 3 => 1.0f32..3.0, 1 => Just(0.0f32), 2 => Just(1.0f32)];
    prop_oneof![
        f.clone().prop_map(ProcessorSpec::Temperature),
        (0usize..70).prop_map(ProcessorSpec::TopK),
        f.clone().prop_map(ProcessorSpec::TopP),
        f.clone().prop_map(ProcessorSpec::MinP),
        f.clone().prop_map(ProcessorSpec::TypicalP),
        f.clone().prop_map(ProcessorSpec::TopNSigma),
        (f.clone(), f.clone()).prop_map(|(probability, threshold)| ProcessorSpec::Xtc {
            probability,
            threshold
        }),
        (
            f.clone(),
            f.clone(),
            0usize..4,
            0usize..64,
            prop::collection::vec(0..v + 2, 0..3)
        )
            .prop_map(
                |(multiplier, base, allowed_length, last_n, sequence_breakers)| {
                    ProcessorSpec::Dry {
                        multiplier,
                        base,
                        allowed_length,
                        last_n,
                        sequence_breakers,
                    }
                }
            ),
        (
            prop::option::of(0usize..100),
            f.clone(),
            f.clone(),
            f.clone()
        )
            .prop_map(|(last_n, repeat, frequency, presence)| {
                ProcessorSpec::Penalties {
                    last_n,
                    repeat,
                    frequency,
                    presence,
                }
            }),
        prop::collection::vec((0..v + 2, f.clone()), 0..4).prop_map(ProcessorSpec::LogitBias),
        (f.clone(), f.clone(), 0usize..120).prop_map(|(tau, eta, m)| ProcessorSpec::MirostatV1 {
            tau,
            eta,
            m
        }),
        (f.clone(), f).prop_map(|(tau, eta)| ProcessorSpec::MirostatV2 { tau, eta }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(400))]

    #[test]
    fn never_panics(
        v in 1usize..200,
        chain in prop::collection::vec(any_step(200), 0..5),
        top in 0usize..23,
        model in any::<bool>(),
        seed in any::<u64>(),
        logits in prop::collection::vec(any_logit(), 0..210),
        history in prop::collection::vec(0u32..260, 0..100),
        mask_bits in prop::option::of(prop::collection::vec(any::<u64>(), 0..5)),
    ) {
        let cfg = SamplingConfig {
            chain,
            top_logprobs: top,
            logprob_source: if model { LogprobSource::Model } else { LogprobSource::Sampled },
        };
        let Ok(mut s) = Sampler::new(cfg, v, seed) else { return Ok(()); };
        let mask = mask_bits.map(|bits| {
            let mut m = TokenMask::forbid_all(v);
            for i in 0..v as u32 {
                if bits.get(i as usize / 64).is_some_and(|w| (w >> (i % 64)) & 1 == 1) || bits.is_empty() {
                    m.allow(i);
                }
            }
            m
        });
        let mut l = logits.clone();
        l.resize(if logits.len() % 3 == 0 { v } else { logits.len() }, 0.5);
        for _ in 0..3 {
            let mut step = l.clone();
            if let Ok(out) = s.sample(&mut step, mask.as_ref(), &history) {
                    prop_assert!((out.token as usize) < v);
                    if let Some(m) = &mask { prop_assert!(m.is_allowed(out.token)); }
                    prop_assert!(out.logprob <= 1e-4 && !out.logprob.is_nan());
                    prop_assert!(out.entropy >= 0.0);
                    prop_assert!(out.top_logprobs.len() <= top);
            }
        }
    }
}
