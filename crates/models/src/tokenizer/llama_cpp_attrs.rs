//! The token facts llama.cpp's vocabulary loader (`src/llama-vocab.cpp`, as in the llama.cpp
//! that llama-cpp-python 0.3.36 vendors) derives from token *texts* and the model name rather
//! than reading them from GGUF metadata, so that a tokenizer built here treats those tokens as
//! llama.cpp does:
//!
//! * End of generation: every token whose text is on llama.cpp's end-of-generation list ends a
//!   generation, and becomes a control token if it was not one — so its text is matched as one
//!   token in input (`</s>` is a normal token of Qwen2's vocabulary, and one token to llama.cpp).
//!   Two later exceptions: with `<|return|>` and `<|call|>`, or `<|call|>`/`<|calls|>` and
//!   `<|flush|>`, among the end-of-generation tokens (gpt-oss's harmony format, Solar Open),
//!   `<|end|>` does not end a generation and is user-defined; with `<|tool_response>` or
//!   `<|plamo:eos|>` among them, `</s>` does not, and is a normal token.
//! * Right-strip: when `general.name` contains `phi-3` or `phi3` (lowercased), every special
//!   token but `<unk>`, `<s>` and `<|endoftext|>` (and `</s>` in any case) drops the ASCII
//!   whitespace that follows it in input text, as Phi-3's `tokenizer.json` declares.
//!
//! llama.cpp's other text-based guesses (fill-in-the-middle markers, which it takes one per kind
//! in hash-map order when several match, and gpt-oss's `<|channel|>` family, rendered as
//! user-defined tokens) are not taken over.

use super::{TOKEN_TYPE_CONTROL, TOKEN_TYPE_NORMAL, TOKEN_TYPE_USER_DEFINED};

/// Texts of tokens that end a generation wherever the vocabulary has them (llama.cpp's
/// end-of-generation list).
pub(super) const EOG_TEXTS: &[&str] = &[
    "<|eot_id|>",
    "<|im_end|>",
    "<|end|>",
    "<|return|>",
    "<|call|>",
    "<|flush|>",
    "<|calls|>",
    "<end_of_turn>",
    "<|endoftext|>",
    "</s>",
    "<|eom_id|>",
    "<EOT>",
    "_<EOT>",
    "[EOT]",
    "[EOS]",
    "<|end_of_text|>",
    "<end_of_utterance>",
    "<eos>",
    "<turn|>",
    "<|tool_response>",
    "<｜end▁of▁sentence｜>",
    "[e~[",
];

/// The end-of-generation ids: `declared` (EOS, EOT, EOM and the like, in order) then every token
/// whose text is on [`EOG_TEXTS`] (by id), each once, less llama.cpp's two exceptions (see the
/// module documentation). Updates `token_types` as llama.cpp updates its token attributes.
pub(super) fn end_of_generation(
    tokens: &[String],
    token_types: &mut [i32],
    declared: &[u32],
) -> Vec<u32> {
    let mut eog: Vec<u32> = Vec::new();
    let mut push = |id: u32| {
        if !eog.contains(&id) {
            eog.push(id);
        }
    };
    for &id in declared {
        push(id);
    }
    for (i, (text, tt)) in tokens.iter().zip(token_types.iter_mut()).enumerate() {
        if EOG_TEXTS.contains(&text.as_str()) {
            *tt = TOKEN_TYPE_CONTROL;
            push(i as u32);
        }
    }
    let text_of = |id: u32| tokens.get(id as usize).map_or("", String::as_str);
    let has = |eog: &[u32], text: &str| eog.iter().any(|&id| text_of(id) == text);
    let find = |eog: &[u32], text: &str| eog.iter().position(|&id| text_of(id) == text);

    let has_call = has(&eog, "<|call|>") || has(&eog, "<|calls|>");
    let has_end = has(&eog, "<|end|>");
    if has_end && has_call && (has(&eog, "<|return|>") || has(&eog, "<|flush|>")) {
        if let Some(at) = find(&eog, "<|end|>") {
            let id = eog.remove(at);
            token_types[id as usize] = TOKEN_TYPE_USER_DEFINED;
        }
    }
    if has(&eog, "<|tool_response>") || has(&eog, "<|plamo:eos|>") {
        if let Some(at) = find(&eog, "</s>") {
            let id = eog.remove(at);
            token_types[id as usize] = TOKEN_TYPE_NORMAL;
        }
    }
    eog
}

/// Whether the special token `text` drops the whitespace after it, for a model of `name`
/// (`general.name`; see the module documentation).
pub(super) fn strips_right(name: Option<&str>, text: &str) -> bool {
    let Some(name) = name else {
        return false;
    };
    let name = name.to_ascii_lowercase();
    (name.contains("phi-3") || name.contains("phi3"))
        && !matches!(text, "<unk>" | "<s>" | "<|endoftext|>")
}

/// llama.cpp's `isspace` on the byte after a right-stripping token: the ASCII whitespace.
pub(super) fn is_stripped_space(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r')
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tokenizer::TOKEN_TYPE_UNKNOWN;

    fn texts(t: &[&str]) -> Vec<String> {
        t.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn end_of_generation_texts_become_control_after_the_declared_ids() {
        let tokens = texts(&["a", "</s>", "<|im_end|>", "b", "<eos>"]);
        let mut types = vec![
            TOKEN_TYPE_NORMAL,
            TOKEN_TYPE_NORMAL,
            TOKEN_TYPE_CONTROL,
            TOKEN_TYPE_NORMAL,
            TOKEN_TYPE_USER_DEFINED,
        ];
        assert_eq!(
            end_of_generation(&tokens, &mut types, &[3, 2]),
            [3, 2, 1, 4]
        );
        assert_eq!(
            types,
            [
                TOKEN_TYPE_NORMAL,
                TOKEN_TYPE_CONTROL,
                TOKEN_TYPE_CONTROL,
                TOKEN_TYPE_NORMAL,
                TOKEN_TYPE_CONTROL
            ]
        );
    }

    #[test]
    fn harmony_end_is_not_an_end_of_generation() {
        let tokens = texts(&["<|end|>", "<|return|>", "<|call|>"]);
        let mut types = vec![TOKEN_TYPE_CONTROL; 3];
        assert_eq!(end_of_generation(&tokens, &mut types, &[]), [1, 2]);
        assert_eq!(types[0], TOKEN_TYPE_USER_DEFINED);
        // Solar Open's pair, and with `<|end|>` declared as EOS.
        let tokens = texts(&["<|end|>", "<|flush|>", "<|calls|>"]);
        let mut types = vec![TOKEN_TYPE_CONTROL; 3];
        assert_eq!(end_of_generation(&tokens, &mut types, &[0]), [1, 2]);
        // Either marker alone leaves `<|end|>` alone.
        let tokens = texts(&["<|end|>", "<|call|>"]);
        let mut types = vec![TOKEN_TYPE_CONTROL; 2];
        assert_eq!(end_of_generation(&tokens, &mut types, &[]), [0, 1]);
        assert_eq!(types[0], TOKEN_TYPE_CONTROL);
    }

    #[test]
    fn end_of_sentence_is_normal_beside_a_tool_response_marker() {
        let tokens = texts(&["</s>", "<|tool_response>", "<unk>"]);
        let mut types = vec![
            TOKEN_TYPE_USER_DEFINED,
            TOKEN_TYPE_CONTROL,
            TOKEN_TYPE_UNKNOWN,
        ];
        assert_eq!(end_of_generation(&tokens, &mut types, &[]), [1]);
        assert_eq!(types[0], TOKEN_TYPE_NORMAL);
        // PLaMo's marker counts when it ends generation (as EOS here).
        let tokens = texts(&["</s>", "<|plamo:eos|>"]);
        let mut types = vec![TOKEN_TYPE_CONTROL; 2];
        assert_eq!(end_of_generation(&tokens, &mut types, &[1]), [1]);
    }

    #[test]
    fn phi3_special_tokens_strip_the_whitespace_after_them() {
        for name in ["Phi3", "phi-3-mini-4k-instruct", "Microsoft PHI3.5"] {
            assert!(strips_right(Some(name), "<|end|>"), "{name}");
            assert!(strips_right(Some(name), "</s>"), "{name}");
            for text in ["<unk>", "<s>", "<|endoftext|>"] {
                assert!(!strips_right(Some(name), text), "{name} {text}");
            }
        }
        for name in [None, Some("Phi 3"), Some("Phi-4"), Some("llama")] {
            assert!(!strips_right(name, "<|end|>"), "{name:?}");
        }
        let stripped: Vec<u8> = (0..=255u8).filter(|&b| is_stripped_space(b)).collect();
        assert_eq!(stripped, b"\t\n\x0b\x0c\r ");
    }
}
