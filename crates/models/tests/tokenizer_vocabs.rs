//! llama.cpp's own tokenizer test cases against our tokenizer.
//!
//! llama.cpp ships vocabulary-only GGUF files (`models/ggml-vocab-NAME.gguf`) with test strings
//! (`.gguf.inp`) and the token ids its tokenizer gives them (`.gguf.out`); its
//! `tests/test-tokenizer-0.cpp` asserts it reproduces them. `cargo xtask fetch-models` takes four
//! of those vocabularies (and their cases) from the llama-cpp-python 0.3.36 source distribution
//! into `<model cache>/vocab/`: `llama-bpe` (Llama 3, byte-level BPE), `qwen2` (byte-level BPE),
//! `llama-spm` (Llama 2, SentencePiece-style) and `phi-3` (SentencePiece-style with added
//! tokens). Here we build [`CandleTokenizer::from_gguf`] from each file's metadata, encode every
//! case the way `test-tokenizer-0` does, and require the same ids, case by case.
//!
//! How `test-tokenizer-0` reads and encodes the cases (facts from its source):
//! * `.inp` is split on `"\n__ggml_vocab_test__\n"`; whatever follows the last separator is one
//!   more case only when it is not empty. A case may be empty or consist of newlines only.
//! * `.out` has one line per case: the ids separated by spaces, the line stripped of leading and
//!   trailing whitespace first (an empty line is an empty case).
//! * Encoding is `common_tokenize(ctx, text, add_special = false, parse_special = false)`: no
//!   BOS/EOS, and control or unknown token texts are not matched as special tokens (user-defined
//!   tokens still are). [`CandleTokenizer::encode`] always matches special-token texts, so each
//!   test first checks that no case contains the text of a control or unknown token, which makes
//!   the two the same.
//!
//! Each case is also encoded with the BOS llama.cpp's `add_special = true` would add (the
//! vocabulary's `add_bos`, whose default llama.cpp takes from the vocabulary kind and
//! pre-tokenizer), and must decode back to its text (`decode(encode(text), true)`, which drops
//! the space a SentencePiece vocabulary prepends).
//!
//! The round-trip tests are llama.cpp's `test-tokenizer-1-spm` and `-bpe`: every token, rendered
//! alone as llama.cpp detokenizes it, must encode (special tokens parsed) to ids that detokenize
//! back to the same text, and so must every code point but those llama.cpp leaves out: the
//! surrogates, U+40000 to U+E0000 (unassigned) and U+2581 (`▁`, a space to SentencePiece). For `llama-bpe`, whose pre-tokenizer
//! ignores merges when a whole word is a token, every token's text must also encode to that one
//! token. llama.cpp runs the SPM test on `llama-spm` and has the BPE ones switched off; ours pass
//! on all four vocabularies. A token whose text is not valid UTF-8 on its own (a lone byte) is
//! skipped, as the BPE test skips it: `encode` takes `&str`.
//!
//! [`SPECIAL_CASES`] adds texts with special-token texts in them, with llama.cpp's ids for
//! `parse_special = true`, which `test-tokenizer-0` does not exercise.
//!
//! One difference from llama.cpp is known, and none of these cases has it: llama.cpp classifies
//! code points with its own tables (`src/unicode-data.cpp`, which predate Unicode 16), the
//! byte-level pre-tokenizer regexes here with Oniguruma's (through `tokenizers`), which know
//! Unicode 16. For a code point Unicode 16 assigned, e.g. the Egyptian hieroglyphs U+13460 to
//! U+143FA, the two split `llama-bpe` and `qwen2` text differently: `\u{13D26}'S` is
//! `\u{13D26}'` + `S` to llama.cpp, which sees no letter there and puts the apostrophe in the
//! same run of other characters, and `\u{13D26}` + `'S` here. A comparison of 15,000 random
//! texts (whitespace of every kind, digits, contractions, scripts, emoji, special-token texts)
//! with that llama.cpp build found no other difference.

use std::path::PathBuf;

use candle_core::quantized::gguf_file::Content;
use fluent_ai_candle_models::tokenizer::{
    CandleTokenizer, VocabKind, TOKEN_TYPE_CONTROL, TOKEN_TYPE_UNKNOWN,
};

/// The separator between two cases of a `.inp` file.
const SEPARATOR: &str = "\n__ggml_vocab_test__\n";

/// The folder of the model cache that `cargo xtask fetch-models` puts the vocabularies in.
fn vocab_dir() -> PathBuf {
    fluent_ai_candle_models::cache::cache_dir().join("vocab")
}

/// A fetched file of the vocabulary set; fails (never skips) when it is absent.
fn fetched(file: &str) -> PathBuf {
    let path = vocab_dir().join(file);
    assert!(
        path.is_file(),
        "{} is missing: run `cargo xtask fetch-models` (or `cargo xtask fetch-models --only \
         llama-cpp-vocabs`) first",
        path.display()
    );
    path
}

/// One test case: a text and the ids llama.cpp gives it.
struct Case {
    text: String,
    want: Vec<u32>,
}

/// Splits a `.inp` file's text into its cases, as `test-tokenizer-0` does.
fn split_inputs(raw: &str) -> Vec<String> {
    let mut cases = Vec::new();
    let mut rest = raw;
    while !rest.is_empty() {
        match rest.find(SEPARATOR) {
            Some(at) => {
                cases.push(rest[..at].to_string());
                rest = &rest[at + SEPARATOR.len()..];
            }
            None => {
                cases.push(rest.to_string());
                rest = "";
            }
        }
    }
    cases
}

/// Parses a `.out` file: one line of space-separated ids per case.
fn parse_outputs(raw: &str) -> Vec<Vec<u32>> {
    raw.lines()
        .map(|line| {
            line.split_whitespace()
                .map(|id| {
                    id.parse::<u32>()
                        .unwrap_or_else(|e| panic!("id {id:?}: {e}"))
                })
                .collect()
        })
        .collect()
}

#[test]
fn case_files_are_read_as_llama_cpp_reads_them() {
    let raw = format!("a b{SEPARATOR}{SEPARATOR}\n{SEPARATOR} x{SEPARATOR}");
    assert_eq!(split_inputs(&raw), ["a b", "", "\n", " x"]);
    assert_eq!(split_inputs("tail"), ["tail"]);
    assert_eq!(split_inputs(""), Vec::<String>::new());
    assert_eq!(
        parse_outputs(" 1 2\n\n 3 \n"),
        vec![vec![1, 2], vec![], vec![3]]
    );
}

/// The vocabulary's tokenizer and its cases.
fn load(vocab: &str) -> (CandleTokenizer, Vec<Case>) {
    let gguf = fetched(&format!("ggml-vocab-{vocab}.gguf"));
    let read = |ext: &str| {
        let path = fetched(&format!("ggml-vocab-{vocab}.gguf.{ext}"));
        std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
    };
    let inputs = split_inputs(&read("inp"));
    let outputs = parse_outputs(&read("out"));
    assert_eq!(
        inputs.len(),
        outputs.len(),
        "{vocab}: .inp and .out disagree on the number of cases"
    );
    assert!(!inputs.is_empty(), "{vocab}: no cases");
    let mut f = std::fs::File::open(&gguf).expect("open the vocabulary file");
    let content = Content::read(&mut f).expect("read the GGUF header");
    let tok = CandleTokenizer::from_gguf(&content).expect("tokenizer from GGUF metadata");
    let cases = inputs
        .into_iter()
        .zip(outputs)
        .map(|(text, want)| Case { text, want })
        .collect();
    (tok, cases)
}

/// Encodes every case of `vocab` and compares with llama.cpp's ids, without and with BOS
/// (`add_bos`: whether llama.cpp adds one for this vocabulary); checks that each decodes back to
/// its text. Every case must match: there are no exceptions.
fn check(vocab: &str, add_bos: bool) {
    let (tok, cases) = load(vocab);
    assert_eq!(tok.add_bos(), add_bos, "{vocab}: add_bos");
    assert!(!tok.add_eos(), "{vocab}: add_eos");
    let bos = if add_bos {
        vec![tok.bos_id().expect("a vocabulary that adds BOS has one")]
    } else {
        Vec::new()
    };
    for case in &cases {
        for st in tok.special_tokens() {
            if matches!(st.token_type, TOKEN_TYPE_CONTROL | TOKEN_TYPE_UNKNOWN) {
                assert!(
                    !case.text.contains(&st.text),
                    "{vocab}: case {:?} holds the special token {:?}, which llama.cpp's test \
                     does not parse but `encode` would",
                    case.text,
                    st.text
                );
            }
        }
    }
    let mut failures = Vec::new();
    let mut matched = 0;
    for case in &cases {
        let got = tok.encode(&case.text, false).expect("encode");
        if got == case.want {
            matched += 1;
        } else {
            failures.push(format!(
                "{:?}\n  want {:?}\n  got  {:?}",
                case.text, case.want, got
            ));
        }
        let with_bos = tok.encode(&case.text, tok.add_bos()).expect("encode");
        if with_bos != [bos.as_slice(), got.as_slice()].concat() {
            failures.push(format!(
                "{:?} with BOS: {with_bos:?}, without: {got:?}",
                case.text
            ));
        }
        let back = tok.decode(&got, true).expect("decode");
        if back != case.text {
            failures.push(format!(
                "{:?} decodes back to {back:?} (ids {got:?})",
                case.text
            ));
        }
    }
    println!(
        "{vocab}: {matched} of {} cases match llama.cpp",
        cases.len()
    );
    assert!(
        failures.is_empty(),
        "{vocab}: {} failures ({matched} of {} cases match):\n{}",
        failures.len(),
        cases.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_bpe_matches_llama_cpp() {
    check("llama-bpe", true);
}

#[test]
fn qwen2_matches_llama_cpp() {
    check("qwen2", false);
}

#[test]
fn llama_spm_matches_llama_cpp() {
    check("llama-spm", true);
}

#[test]
fn phi_3_matches_llama_cpp() {
    check("phi-3", true);
}

/// llama.cpp's `common_detokenize(ctx, ids)` (special tokens rendered, nothing removed): the
/// tokens' bytes, less one leading space of the first token's for a SentencePiece vocabulary
/// (which prepends one when encoding; none of these sets `add_space_prefix` false).
fn llama_cpp_detokenize(tok: &CandleTokenizer, ids: &[u32]) -> Vec<u8> {
    let mut out = Vec::new();
    for (i, &id) in ids.iter().enumerate() {
        let mut piece = tok.token_bytes_of(id).expect("id in range");
        if i == 0 && tok.kind() == VocabKind::Spm {
            piece = piece.strip_prefix(b" ").unwrap_or(piece);
        }
        out.extend_from_slice(piece);
    }
    out
}

/// llama.cpp's `test-tokenizer-1-spm` / `-bpe` on `vocab` (see the module documentation);
/// `single_token`: every token's text must encode to that token alone (`--ignore-merges`).
fn round_trips(vocab: &str, single_token: bool) {
    let (tok, _) = load(vocab);
    let mut failures = Vec::new();
    let mut tokens = 0;
    for id in 0..u32::try_from(tok.vocab_size()).expect("vocabulary size fits u32") {
        let Ok(text) = String::from_utf8(llama_cpp_detokenize(&tok, &[id])) else {
            continue;
        };
        tokens += 1;
        let ids = tok.encode(&text, false).expect("encode");
        if single_token && ids.len() > 1 {
            failures.push(format!("token {id} {text:?} encodes to {ids:?}"));
        }
        let back = llama_cpp_detokenize(&tok, &ids);
        if back != text.as_bytes() {
            failures.push(format!(
                "token {id} {text:?} encodes to {ids:?}, which detokenizes to {:?}",
                String::from_utf8_lossy(&back)
            ));
        }
    }
    let mut code_points = 0;
    for cp in 0..=u32::from(char::MAX) {
        if (0xD800..=0xDFFF).contains(&cp) || (0x4_0000..=0xE_0000).contains(&cp) || cp == 0x2581 {
            continue;
        }
        let Some(c) = char::from_u32(cp) else {
            continue;
        };
        code_points += 1;
        let text = c.to_string();
        let ids = tok.encode(&text, false).expect("encode");
        let back = llama_cpp_detokenize(&tok, &ids);
        if back != text.as_bytes() {
            failures.push(format!(
                "U+{cp:04X} encodes to {ids:?}, which detokenizes to {:?}",
                String::from_utf8_lossy(&back)
            ));
        }
    }
    println!("{vocab}: {tokens} tokens and {code_points} code points round-trip");
    assert!(
        failures.is_empty(),
        "{vocab}: {} round trips fail:\n{}",
        failures.len(),
        failures.join("\n")
    );
}

#[test]
fn llama_bpe_round_trips_every_token_and_code_point() {
    round_trips("llama-bpe", true);
}

#[test]
fn qwen2_round_trips_every_token_and_code_point() {
    round_trips("qwen2", false);
}

#[test]
fn llama_spm_round_trips_every_token_and_code_point() {
    round_trips("llama-spm", false);
}

#[test]
fn phi_3_round_trips_every_token_and_code_point() {
    round_trips("phi-3", false);
}

/// A text and the ids llama.cpp gives it.
type Expected = (&'static str, &'static [u32]);

/// Texts holding special-token texts, and the ids llama.cpp gives them with `parse_special =
/// true` — the way [`CandleTokenizer::encode`] always parses, and llama.cpp tokenizes prompts.
/// The ids come from the llama.cpp that llama-cpp-python 0.3.36 vendors, built from that source
/// distribution (`llama_tokenize(vocab, text, add_special = false, parse_special = true)`). They
/// hold what llama.cpp's loader derives from token texts and the model name: Qwen2's `</s>`, a
/// normal token in the GGUF, is one control token (it is on llama.cpp's end-of-generation list),
/// and Phi-3's special tokens but `<unk>`, `<s>` and `<|endoftext|>` drop the whitespace after
/// them (`general.name` is `Phi3`).
const SPECIAL_CASES: &[(&str, &[Expected])] = &[
    (
        "llama-bpe",
        &[
            ("a</s>b", &[64, 524, 82, 52507]),
            (
                "<|im_start|>user\nHi</s><|im_end|>\n",
                &[
                    27, 91, 318, 5011, 91, 29, 882, 198, 13347, 524, 82, 1822, 91, 318, 6345, 91,
                    397,
                ],
            ),
            (
                "<|user|>\nHello<|end|>\n<|assistant|>\n",
                &[
                    27, 91, 882, 91, 397, 9906, 27, 91, 408, 91, 397, 27, 91, 78191, 91, 397,
                ],
            ),
            ("<s> x</s>  \n y", &[45147, 29, 865, 524, 82, 29, 2355, 379]),
            (
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
                &[128000, 128006, 882, 128007, 271, 13347, 128009],
            ),
            (
                "<s>[INST] Hi [/INST]</s> \n",
                &[
                    45147, 31868, 65562, 60, 21694, 66028, 65562, 32061, 82, 29, 720,
                ],
            ),
            (
                "<unk> <|endoftext|> \n<|end|>\t\tok",
                &[
                    27, 3200, 29, 83739, 8862, 728, 428, 91, 29, 720, 27, 91, 408, 91, 29, 197,
                    60368,
                ],
            ),
        ],
    ),
    (
        "qwen2",
        &[
            ("a</s>b", &[64, 128247, 65]),
            (
                "<|im_start|>user\nHi</s><|im_end|>\n",
                &[151644, 872, 198, 13048, 128247, 151645, 198],
            ),
            (
                "<|user|>\nHello<|end|>\n<|assistant|>\n",
                &[
                    27, 91, 872, 91, 397, 9707, 27, 91, 408, 91, 397, 27, 91, 77091, 91, 397,
                ],
            ),
            ("<s> x</s>  \n y", &[44047, 29, 856, 128247, 2303, 379]),
            (
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
                &[
                    27, 91, 7265, 3575, 4326, 91, 1784, 91, 2468, 8757, 842, 91, 29, 872, 27, 91,
                    408, 8757, 842, 91, 1339, 13048, 27, 91, 68, 354, 842, 91, 29,
                ],
            ),
            (
                "<s>[INST] Hi [/INST]</s> \n",
                &[
                    44047, 30768, 64462, 60, 21018, 64928, 64462, 60, 128247, 715,
                ],
            ),
            (
                "<unk> <|endoftext|> \n<|end|>\t\tok",
                &[
                    128243, 29, 220, 151643, 715, 27, 91, 408, 91, 29, 197, 59268,
                ],
            ),
        ],
    ),
    (
        "llama-spm",
        &[
            ("a</s>b", &[263, 2, 289]),
            (
                "<|im_start|>user\nHi</s><|im_end|>\n",
                &[
                    529, 29989, 326, 29918, 2962, 29989, 29958, 1792, 13, 18567, 2, 529, 29989,
                    326, 29918, 355, 29989, 29958, 13,
                ],
            ),
            (
                "<|user|>\nHello<|end|>\n<|assistant|>\n",
                &[
                    529, 29989, 1792, 29989, 29958, 13, 10994, 29966, 29989, 355, 29989, 29958, 13,
                    29966, 29989, 465, 22137, 29989, 29958, 13,
                ],
            ),
            ("<s> x</s>  \n y", &[1, 29871, 921, 2, 1678, 13, 343]),
            (
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
                &[
                    529, 29989, 463, 29918, 974, 29918, 726, 29989, 5299, 29989, 2962, 29918, 6672,
                    29918, 333, 29989, 29958, 1792, 29966, 29989, 355, 29918, 6672, 29918, 333,
                    29989, 29958, 13, 13, 18567, 29966, 29989, 29872, 327, 29918, 333, 29989,
                    29958,
                ],
            ),
            (
                "<s>[INST] Hi [/INST]</s> \n",
                &[
                    1, 518, 25580, 29962, 6324, 518, 29914, 25580, 29962, 2, 259, 13,
                ],
            ),
            (
                "<unk> <|endoftext|> \n<|end|>\t\tok",
                &[
                    0, 29871, 529, 29989, 355, 974, 726, 29989, 29958, 29871, 13, 29966, 29989,
                    355, 29989, 29958, 12, 12, 554,
                ],
            ),
        ],
    ),
    (
        "phi-3",
        &[
            ("a</s>b", &[263, 2, 289]),
            (
                "<|im_start|>user\nHi</s><|im_end|>\n",
                &[
                    529, 29989, 326, 29918, 2962, 29989, 29958, 1792, 13, 18567, 2, 529, 29989,
                    326, 29918, 355, 29989, 29958, 13,
                ],
            ),
            (
                "<|user|>\nHello<|end|>\n<|assistant|>\n",
                &[32010, 15043, 32007, 32001],
            ),
            ("<s> x</s>  \n y", &[1, 29871, 921, 2, 343]),
            (
                "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi<|eot_id|>",
                &[
                    529, 29989, 463, 29918, 974, 29918, 726, 29989, 5299, 29989, 2962, 29918, 6672,
                    29918, 333, 29989, 29958, 1792, 29966, 29989, 355, 29918, 6672, 29918, 333,
                    29989, 29958, 13, 13, 18567, 29966, 29989, 29872, 327, 29918, 333, 29989,
                    29958,
                ],
            ),
            (
                "<s>[INST] Hi [/INST]</s> \n",
                &[1, 518, 25580, 29962, 6324, 518, 29914, 25580, 29962, 2],
            ),
            (
                "<unk> <|endoftext|> \n<|end|>\t\tok",
                &[0, 259, 32000, 259, 13, 32007, 3431],
            ),
        ],
    ),
];

#[test]
fn special_token_texts_match_llama_cpp() {
    let mut failures = Vec::new();
    for (vocab, cases) in SPECIAL_CASES {
        let (tok, _) = load(vocab);
        for (text, want) in *cases {
            let got = tok.encode(text, false).expect("encode");
            if got != *want {
                failures.push(format!(
                    "{vocab}: {text:?}\n  want {want:?}\n  got  {got:?}"
                ));
            }
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}
