//! UTF-8-safe incremental detokenization: a character split across tokens is never emitted in
//! halves.

/// Turns a stream of token byte strings into text, holding back an incomplete UTF-8 sequence
/// until the bytes that complete it arrive.
#[derive(Debug, Default, Clone)]
pub struct Detokenizer {
    pending: Vec<u8>,
}

impl Detokenizer {
    /// A detokenizer with nothing pending.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a token's bytes; appends to `out` all text that is now complete.
    /// Bytes that can never become valid UTF-8 are emitted as U+FFFD.
    pub fn push(&mut self, bytes: &[u8], out: &mut String) {
        self.pending.extend_from_slice(bytes);
        let mut start = 0;
        loop {
            match std::str::from_utf8(&self.pending[start..]) {
                Ok(s) => {
                    out.push_str(s);
                    start = self.pending.len();
                    break;
                }
                Err(e) => {
                    let valid = e.valid_up_to();
                    // The prefix is valid UTF-8 by construction.
                    out.push_str(
                        std::str::from_utf8(&self.pending[start..start + valid]).unwrap_or(""),
                    );
                    start += valid;
                    match e.error_len() {
                        // An invalid sequence: replace it and go on.
                        Some(len) => {
                            out.push(char::REPLACEMENT_CHARACTER);
                            start += len;
                        }
                        // An incomplete sequence at the end: wait for more bytes.
                        None => break,
                    }
                }
            }
        }
        self.pending.drain(..start);
    }

    /// Emits whatever is still pending (an incomplete sequence becomes U+FFFD).
    pub fn finish(&mut self, out: &mut String) {
        if !self.pending.is_empty() {
            out.push_str(&String::from_utf8_lossy(&self.pending));
            self.pending.clear();
        }
    }

    /// True when bytes are held back.
    pub fn has_pending(&self) -> bool {
        !self.pending.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emoji_split_across_tokens_is_whole() {
        let bytes = "a😀b日本".as_bytes();
        let mut d = Detokenizer::new();
        let mut chunks = Vec::new();
        for b in bytes {
            let mut s = String::new();
            d.push(&[*b], &mut s);
            chunks.push(s);
        }
        for c in &chunks {
            assert!(!c.contains(char::REPLACEMENT_CHARACTER));
        }
        assert_eq!(chunks.concat(), "a😀b日本");
        assert!(!d.has_pending());
    }

    #[test]
    fn invalid_bytes_become_replacement() {
        let mut d = Detokenizer::new();
        let mut s = String::new();
        d.push(&[b'x', 0xff, b'y'], &mut s);
        assert_eq!(s, "x\u{FFFD}y");
        d.push(&[0xe6, 0x97], &mut s);
        d.finish(&mut s);
        assert_eq!(s, "x\u{FFFD}y\u{FFFD}");
    }
}
