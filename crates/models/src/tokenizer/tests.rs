//! Unit tests of the tokenizer module: GGUF parts, byte-level BPE, SPM, `tokenizer.json`.

use super::*;

fn byte_level_parts() -> TokenizerParts {
    // A byte-level vocabulary: all 256 byte symbols, a few merges, and
    // two control tokens.
    let map = bytes_to_unicode();
    let mut tokens = vec![
        "<|endoftext|>".to_string(),
        "<|im_start|>".to_string(),
        "<|im_end|>".to_string(),
    ];
    let mut types = vec![TOKEN_TYPE_CONTROL; 3];
    for c in map {
        tokens.push(c.to_string());
        types.push(TOKEN_TYPE_NORMAL);
    }
    let merges = [
        "h e", "l l", "he ll", "hell o", "Ġ w", "o r", "Ġw or", "l d", "Ġwor ld",
    ];
    for m in merges {
        tokens.push(m.replace(' ', ""));
        types.push(TOKEN_TYPE_NORMAL);
    }
    TokenizerParts {
        model: "gpt2".into(),
        pre: Some("smollm".into()),
        tokens,
        merges: merges.iter().map(|s| s.to_string()).collect(),
        token_types: types,
        bos_id: Some(1),
        eos_id: Some(2),
        ..Default::default()
    }
}

#[test]
fn byte_level_basic() {
    let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
    let ids = t.encode("hello world", false).unwrap();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| String::from_utf8(t.token_bytes_of(i).unwrap().to_vec()).unwrap())
        .collect();
    assert_eq!(pieces, vec!["hello", " world"]);
    assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
    // Special tokens are matched, BOS is added only on request.
    let ids = t.encode("<|im_start|>hello<|im_end|>", true).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(ids[1], 1);
    assert_eq!(*ids.last().unwrap(), 2);
    assert_eq!(t.decode(&ids, true).unwrap(), "hello");
    assert!(t.is_eog(2) && t.is_eog(0) && !t.is_eog(1));
    assert!(!t.add_bos());
    assert_eq!(t.vocab_size(), 3 + 256 + 9);
}

#[test]
fn byte_level_digits_split_individually() {
    let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
    let ids = t.encode("a123", false).unwrap();
    assert_eq!(ids.len(), 4);
}

#[test]
fn bad_metadata_is_an_error() {
    let mut p = byte_level_parts();
    p.pre = Some("no-such-pre".into());
    assert!(matches!(
        CandleTokenizer::from_parts(p),
        Err(ModelError::Tokenizer(_))
    ));
    let mut p = byte_level_parts();
    p.bos_id = Some(1_000_000);
    assert!(CandleTokenizer::from_parts(p).is_err());
    let mut p = byte_level_parts();
    p.token_types.pop();
    assert!(CandleTokenizer::from_parts(p).is_err());
    let mut p = byte_level_parts();
    p.model = "t5".into();
    assert!(CandleTokenizer::from_parts(p).is_err());
    let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
    assert!(t.decode(&[99_999], false).is_err());
}

fn spm_parts(add_space_prefix: bool) -> TokenizerParts {
    let mut tokens = vec!["<unk>".to_string(), "<s>".to_string(), "</s>".to_string()];
    let mut types = vec![TOKEN_TYPE_UNKNOWN, TOKEN_TYPE_CONTROL, TOKEN_TYPE_CONTROL];
    let mut scores = vec![0.0, 0.0, 0.0];
    for b in 0..=255u8 {
        tokens.push(format!("<0x{b:02X}>"));
        types.push(TOKEN_TYPE_BYTE);
        scores.push(0.0);
    }
    let pieces: &[(&str, f32)] = &[
        ("▁", -1.0),
        ("h", -2.0),
        ("e", -2.0),
        ("l", -2.0),
        ("o", -2.0),
        ("w", -2.0),
        ("r", -2.0),
        ("d", -2.0),
        ("he", -3.0),
        ("ll", -3.5),
        ("hell", -4.0),
        ("hello", -5.0),
        ("▁w", -6.0),
        ("or", -6.5),
        ("▁wor", -7.0),
        ("▁world", -7.5),
        ("ld", -8.0),
        ("<end_of_turn>", 0.0),
    ];
    for (p, s) in pieces {
        tokens.push((*p).to_string());
        types.push(if p.starts_with('<') {
            TOKEN_TYPE_CONTROL
        } else {
            TOKEN_TYPE_NORMAL
        });
        scores.push(*s);
    }
    TokenizerParts {
        model: "llama".into(),
        tokens,
        token_types: types,
        scores,
        bos_id: Some(1),
        eos_id: Some(2),
        unk_id: Some(0),
        add_space_prefix: Some(add_space_prefix),
        ..Default::default()
    }
}

#[test]
fn spm_merges_by_score_with_byte_fallback() {
    let t = CandleTokenizer::from_parts(spm_parts(false)).unwrap();
    let ids = t.encode("hello world", false).unwrap();
    let pieces: Vec<String> = ids
        .iter()
        .map(|&i| String::from_utf8_lossy(t.token_bytes_of(i).unwrap()).into_owned())
        .collect();
    assert_eq!(pieces, vec!["hello", " world"]);
    assert_eq!(t.decode(&ids, false).unwrap(), "hello world");
    // Unknown characters fall back to bytes and decode back.
    let ids = t.encode("hé!<end_of_turn>", true).unwrap();
    assert_eq!(ids[0], 1);
    assert_eq!(t.decode(&ids, true).unwrap(), "hé!");
    assert!(t.is_eog(
        t.special_tokens()
            .iter()
            .find(|s| s.text == "<end_of_turn>")
            .unwrap()
            .id
    ));
    assert!(t.add_bos());
    // The HF equivalent agrees on simple text.
    let hf = t.inner().encode("hello world", false).unwrap();
    assert_eq!(
        hf.get_ids(),
        t.encode("hello world", false).unwrap().as_slice()
    );
}

#[test]
fn spm_space_prefix() {
    let t = CandleTokenizer::from_parts(spm_parts(true)).unwrap();
    let ids = t.encode("world", false).unwrap();
    assert_eq!(t.decode(&ids, false).unwrap(), " world");
    assert_eq!(t.decode(&ids, true).unwrap(), "world");
}

/// A fresh directory under the system temp dir, removed when dropped.
struct TempDir(std::path::PathBuf);

impl TempDir {
    fn new(tag: &str) -> Self {
        let dir =
            std::env::temp_dir().join(format!("fluent-ai-candle-tok-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).unwrap();
        Self(dir)
    }

    fn write(&self, name: &str, text: &str) -> std::path::PathBuf {
        let path = self.0.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// The byte-level test vocabulary as a `tokenizer.json` (as `tokenizers` saves it).
fn byte_level_json() -> serde_json::Value {
    let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
    serde_json::from_str(&t.inner().to_string(false).unwrap()).unwrap()
}

#[test]
fn tokenizer_json_builds_the_same_tokenizer() {
    let dir = TempDir::new("same");
    dir.write(TOKENIZER_JSON, &byte_level_json().to_string());
    dir.write(
        TOKENIZER_CONFIG_JSON,
        r#"{"bos_token": "<|im_start|>", "eos_token": {"content": "<|im_end|>"}}"#,
    );
    dir.write(
        "config.json",
        r#"{"vocab_size": 270, "eos_token_id": [2, 0]}"#,
    );
    let gguf = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
    let hf = CandleTokenizer::from_hf_dir(&dir.0).unwrap();
    for text in [
        "hello world",
        "<|im_start|>hello<|im_end|>",
        "a123 héllo\n\n  x",
    ] {
        assert_eq!(
            hf.encode(text, true).unwrap(),
            gguf.encode(text, true).unwrap(),
            "{text}"
        );
    }
    assert_eq!((hf.bos_id(), hf.eos_id()), (Some(1), Some(2)));
    assert_eq!(hf.eot_ids(), &[2, 0]);
    assert!(!hf.add_bos() && hf.is_control(1) && !hf.is_control(5));
    // Padded to config.json's vocab_size with unused tokens.
    assert_eq!(hf.vocab_size(), 270);
    assert_eq!(hf.token_type(269), Some(TOKEN_TYPE_UNUSED));
    assert_eq!(hf.token_bytes(), {
        let mut b = gguf.token_bytes();
        b.push(b"[PAD268]".to_vec());
        b.push(b"[PAD269]".to_vec());
        b
    });
    // A template that starts with a special token adds BOS (Llama 3's post-processor).
    let mut json = byte_level_json();
    json["post_processor"] = serde_json::json!({
        "type": "TemplateProcessing",
        "single": [{"SpecialToken": {"id": "<|im_start|>", "type_id": 0}},
                   {"Sequence": {"id": "A", "type_id": 0}}],
        "pair": [{"Sequence": {"id": "A", "type_id": 0}}],
        "special_tokens": {"<|im_start|>": {"id": "<|im_start|>", "ids": [1],
                                            "tokens": ["<|im_start|>"]}}
    });
    dir.write(TOKENIZER_JSON, &json.to_string());
    let hf = CandleTokenizer::from_hf_dir(&dir.0).unwrap();
    assert!(hf.add_bos() && !hf.add_eos());
    // ... unless tokenizer_config.json says otherwise.
    dir.write(TOKENIZER_CONFIG_JSON, r#"{"add_bos_token": false}"#);
    assert!(!CandleTokenizer::from_hf_dir(&dir.0).unwrap().add_bos());
}

#[test]
fn bad_tokenizer_json_is_a_typed_error_naming_the_file() {
    let dir = TempDir::new("bad");
    let names_file = |e: &ModelError, file: &str| e.to_string().contains(file);
    let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
    assert!(
        matches!(&err, ModelError::NotFound { path } if path.ends_with(TOKENIZER_JSON)),
        "{err}"
    );
    let path = dir.write(TOKENIZER_JSON, "{\"model\": ");
    let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidModelFile { path: p, .. } if *p == path),
        "{err}"
    );
    for (model, what) in [
        (
            serde_json::json!({"type": "WordPiece", "vocab": {}}),
            "WordPiece",
        ),
        (
            serde_json::json!({"type": "Unigram", "vocab": []}),
            "Unigram",
        ),
    ] {
        let mut json = byte_level_json();
        json["model"] = model;
        dir.write(TOKENIZER_JSON, &json.to_string());
        let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
        assert!(
            matches!(&err, ModelError::UnsupportedTokenizer { path: p, reason }
                if *p == path && reason.contains(what)),
            "{err}"
        );
    }
    // A sentencepiece-style BPE (Llama 2, Mistral): no ByteLevel pre-tokenizer.
    let mut json = byte_level_json();
    json["pre_tokenizer"] = serde_json::json!({"type": "Metaspace", "replacement": "▁",
        "prepend_scheme": "first", "split": false});
    dir.write(TOKENIZER_JSON, &json.to_string());
    let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
    assert!(
        matches!(err, ModelError::UnsupportedTokenizer { .. }),
        "{err}"
    );
    // A model `tokenizers` rejects (a merge of unknown tokens).
    let mut json = byte_level_json();
    json["model"]["merges"] = serde_json::json!(["zz qq"]);
    dir.write(TOKENIZER_JSON, &json.to_string());
    let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidModelFile { .. }) && names_file(&err, TOKENIZER_JSON),
        "{err}"
    );
    // tokenizer_config.json: malformed, or naming a token the vocabulary lacks.
    dir.write(TOKENIZER_JSON, &byte_level_json().to_string());
    dir.write(TOKENIZER_CONFIG_JSON, "not json");
    let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidModelFile { .. })
            && names_file(&err, TOKENIZER_CONFIG_JSON),
        "{err}"
    );
    dir.write(TOKENIZER_CONFIG_JSON, r#"{"eos_token": "</s>"}"#);
    let err = CandleTokenizer::from_hf_dir(&dir.0).unwrap_err();
    assert!(
        matches!(&err, ModelError::InvalidModelFile { reason, .. } if reason.contains("</s>"))
            && names_file(&err, TOKENIZER_CONFIG_JSON),
        "{err}"
    );
}

#[test]
fn chat_templates_of_a_directory() {
    use crate::chat_template::{ChatMessage, ChatTemplate};
    let dir = TempDir::new("chat");
    dir.write(TOKENIZER_JSON, &byte_level_json().to_string());
    let tok = CandleTokenizer::from_hf_dir(&dir.0).unwrap();
    let user = [ChatMessage::new("user", "Hi")];
    // No template anywhere: ChatML.
    let chatml = ChatTemplate::chatml().render(&user, true).unwrap();
    let t = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap();
    assert_eq!(t.render(&user, true).unwrap(), chatml);
    // A string; BOS/EOS from tokenizer_config.json.
    dir.write(
        TOKENIZER_CONFIG_JSON,
        r#"{"chat_template": "{{ bos_token }}{{ messages[0].content }}{{ eos_token }}",
                "bos_token": "<|im_start|>", "eos_token": "<|im_end|>"}"#,
    );
    let t = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap();
    assert_eq!(t.render(&user, false).unwrap(), "<|im_start|>Hi<|im_end|>");
    // A list of named templates: `default`.
    dir.write(
        TOKENIZER_CONFIG_JSON,
        r#"{"chat_template": [{"name": "tool_use", "template": "tools"},
                                  {"name": "default", "template": "plain {{ messages[0].content }}"}]}"#,
    );
    let t = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap();
    assert_eq!(t.render(&user, false).unwrap(), "plain Hi");
    // chat_template.jinja when tokenizer_config.json has none.
    dir.write(TOKENIZER_CONFIG_JSON, "{}");
    dir.write("chat_template.jinja", "jinja {{ messages[0].content }}");
    let t = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap();
    assert_eq!(t.render(&user, false).unwrap(), "jinja Hi");
    // A template that does not compile, a template of the wrong type.
    dir.write(TOKENIZER_CONFIG_JSON, r#"{"chat_template": "{% for %}"}"#);
    let err = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap_err();
    assert!(
        matches!(&err, ModelError::ChatTemplate(m) if m.contains(TOKENIZER_CONFIG_JSON)),
        "{err}"
    );
    dir.write(TOKENIZER_CONFIG_JSON, r#"{"chat_template": 7}"#);
    let err = ChatTemplate::from_hf_dir(&dir.0, &tok).unwrap_err();
    assert!(matches!(err, ModelError::InvalidModelFile { .. }), "{err}");
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn byte_level_round_trips(s in any::<String>()) {
            let t = CandleTokenizer::from_parts(byte_level_parts()).unwrap();
            // Skip inputs that contain special-token text.
            prop_assume!(!s.contains("<|"));
            let ids = t.encode(&s, false).unwrap();
            prop_assert_eq!(t.decode(&ids, false).unwrap(), s);
        }

        #[test]
        fn spm_round_trips(s in any::<String>()) {
            let t = CandleTokenizer::from_parts(spm_parts(false)).unwrap();
            prop_assume!(!s.contains('<'));
            let ids = t.encode(&s, false).unwrap();
            prop_assert_eq!(t.decode(&ids, false).unwrap(), s);
        }
    }
}

/// `byte_level_parts` with a normal token `</s>` (id 268), as Qwen2's vocabulary has one.
fn byte_level_parts_with_normal_eos_text() -> TokenizerParts {
    let mut p = byte_level_parts();
    p.tokens.push("</s>".into());
    p.token_types.push(TOKEN_TYPE_NORMAL);
    p
}

#[test]
fn an_end_of_generation_text_is_a_control_token_as_in_llama_cpp() {
    // llama.cpp's loader makes every token on its end-of-generation list a control token that
    // ends generation, whatever its GGUF type; `a</s>b` is then three tokens (Qwen2: 64 128247 65).
    let t = CandleTokenizer::from_parts(byte_level_parts_with_normal_eos_text()).unwrap();
    let a = t.encode("a", false).unwrap()[0];
    let b = t.encode("b", false).unwrap()[0];
    assert_eq!(t.encode("a</s>b", false).unwrap(), [a, 268, b]);
    assert!(t.is_eog(268) && t.is_control(268));
    assert_eq!(t.eot_ids(), &[2, 0, 268]);
    assert_eq!(t.decode(&[a, 268, b], true).unwrap(), "ab");
    // The same in an SPM vocabulary: `</s>` is control there already; a user-defined
    // `<end_of_turn>` would be made control too.
    let mut p = spm_parts(true);
    let eot = p.tokens.iter().position(|s| s == "<end_of_turn>").unwrap();
    p.token_types[eot] = TOKEN_TYPE_USER_DEFINED;
    let t = CandleTokenizer::from_parts(p).unwrap();
    assert_eq!(t.token_type(eot as u32), Some(TOKEN_TYPE_CONTROL));
    assert!(t.is_eog(eot as u32));
}

#[test]
fn tokenizer_json_matches_end_of_generation_texts_too() {
    // A `tokenizer.json` whose `</s>` is an ordinary vocabulary entry builds the tokenizer the
    // GGUF parts build: `</s>` matched as one control token.
    let dir = TempDir::new("eogtext");
    let mut json = byte_level_json();
    json["model"]["vocab"]["</s>"] = serde_json::json!(268);
    dir.write(TOKENIZER_JSON, &json.to_string());
    let hf = CandleTokenizer::from_hf_dir(&dir.0).unwrap();
    let gguf = CandleTokenizer::from_parts(byte_level_parts_with_normal_eos_text()).unwrap();
    for text in ["a</s>b", "</s></s>", "hello </s> world"] {
        assert_eq!(
            hf.encode(text, false).unwrap(),
            gguf.encode(text, false).unwrap(),
            "{text}"
        );
    }
    assert!(hf.is_eog(268) && hf.is_control(268));
}

#[test]
fn phi3_special_tokens_drop_the_whitespace_after_them() {
    // llama.cpp (and Phi-3's tokenizer.json) strip the whitespace after Phi-3's special tokens
    // but `<unk>`, `<s>` and `<|endoftext|>`: `<|user|>\nHello<|end|>\n` is
    // `<|user|> ▁Hello <|end|>`.
    let mut p = spm_parts(true);
    p.name = Some("Phi3".into());
    let phi = CandleTokenizer::from_parts(p).unwrap();
    let plain = CandleTokenizer::from_parts(spm_parts(true)).unwrap();
    let eot = phi
        .special_tokens()
        .iter()
        .find(|s| s.text == "<end_of_turn>")
        .unwrap();
    assert!(eot.rstrip);
    let eot = eot.id;
    let hello = phi.encode("hello", false).unwrap();
    let world = phi.encode("world", false).unwrap();
    let ids = phi.encode("hello<end_of_turn>\n\t world", false).unwrap();
    assert_eq!(ids, [hello.as_slice(), &[eot], world.as_slice()].concat());
    let ids = plain.encode("hello<end_of_turn>\n\t world", false).unwrap();
    assert!(ids.len() > hello.len() + 1 + world.len(), "{ids:?}");
    // `<s>` keeps the whitespace after it; only ASCII whitespace is dropped.
    let bos = phi.encode("<s>\nhello", false).unwrap();
    assert_eq!(bos[0], 1);
    assert!(bos.len() > 1 + hello.len(), "{bos:?}");
    let nbsp = phi.encode("<end_of_turn>\u{a0}hello", false).unwrap();
    assert!(nbsp.len() > 1 + hello.len(), "{nbsp:?}");
    // A byte-level vocabulary strips through its `tokenizers` added tokens.
    let mut p = byte_level_parts();
    p.name = Some("phi-3-test".into());
    let t = CandleTokenizer::from_parts(p).unwrap();
    let hello = t.encode("hello", false).unwrap();
    assert_eq!(
        t.encode("<|im_start|>\n \nhello", false).unwrap(),
        [&[1], hello.as_slice()].concat()
    );
    assert_eq!(
        t.encode("<|endoftext|>\nhello", false).unwrap().len(),
        2 + hello.len()
    );
}
