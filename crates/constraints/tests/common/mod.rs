//! What the byte-level integration tests share: a vocabulary of single bytes and a check that
//! feeds a text byte by byte through the mask.

use std::sync::Arc;

use fluent_ai_candle_constraints::{CompiledConstraint, TokenMask, Vocabulary};

/// Single bytes (ids 0..256) and EOS = 256, built once per test binary.
#[allow(dead_code)] // each test binary uses what it needs
pub fn byte_vocab() -> Arc<Vocabulary> {
    static V: std::sync::OnceLock<Arc<Vocabulary>> = std::sync::OnceLock::new();
    V.get_or_init(|| {
        let mut t: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        t.push(Vec::new());
        Arc::new(Vocabulary::new(t, &[256], &[]))
    })
    .clone()
}

/// Whether `c` accepts `text` whole (each byte checked against the mask).
#[allow(dead_code)] // each test binary uses what it needs
pub fn accepts(c: &Arc<CompiledConstraint>, text: &str) -> bool {
    let mut st = c.start();
    let mut mask = TokenMask::forbid_all(c.vocabulary().len());
    for &b in text.as_bytes() {
        st.compute_mask(&mut mask).unwrap();
        if !mask.is_allowed(b as u32) {
            return false;
        }
        st.commit_token(b as u32).unwrap();
    }
    st.is_accepting()
}
