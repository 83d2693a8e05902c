//! Stop sequences that are cut from the output, even when split across chunks.

/// Holds back text that could be the start of a stop sequence, releases it once it can't be,
/// and reports a stop when one appears (the stop sequence itself is never emitted).
#[derive(Debug, Clone, Default)]
pub struct StopMatcher {
    stops: Vec<String>,
    held: String,
}

/// What [`StopMatcher::push`] found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StopOutcome {
    /// No stop; this text is safe to emit (possibly empty while text is held back).
    Continue(String),
    /// A stop sequence was found; emit this text (everything before it) and finish.
    Stopped(String),
}

impl StopMatcher {
    /// A matcher for these stop sequences (empty strings are ignored).
    pub fn new(stops: &[String]) -> Self {
        Self {
            stops: stops.iter().filter(|s| !s.is_empty()).cloned().collect(),
            held: String::new(),
        }
    }

    /// Adds generated text; returns what may be emitted now.
    pub fn push(&mut self, text: &str) -> StopOutcome {
        self.held.push_str(text);
        if self.stops.is_empty() {
            return StopOutcome::Continue(std::mem::take(&mut self.held));
        }
        // The earliest complete stop sequence wins.
        let found = self
            .stops
            .iter()
            .filter_map(|s| self.held.find(s.as_str()))
            .min();
        if let Some(at) = found {
            let out = self.held[..at].to_string();
            self.held.clear();
            return StopOutcome::Stopped(out);
        }
        // Hold back the longest suffix that is a prefix of some stop sequence.
        let mut keep = 0;
        for s in &self.stops {
            for (i, _) in self.held.char_indices() {
                let suffix = &self.held[i..];
                if s.starts_with(suffix) {
                    keep = keep.max(suffix.len());
                    break;
                }
            }
        }
        let cut = self.held.len() - keep;
        let out = self.held[..cut].to_string();
        self.held.drain(..cut);
        StopOutcome::Continue(out)
    }

    /// Releases held-back text at the end of generation.
    pub fn finish(&mut self) -> String {
        std::mem::take(&mut self.held)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stop_split_across_chunks_is_cut() {
        let mut m = StopMatcher::new(&["</end>".to_string()]);
        let mut out = String::new();
        let mut stopped = false;
        for chunk in ["Hello </", "en", "d> more"] {
            match m.push(chunk) {
                StopOutcome::Continue(s) => out.push_str(&s),
                StopOutcome::Stopped(s) => {
                    out.push_str(&s);
                    stopped = true;
                    break;
                }
            }
        }
        assert!(stopped);
        assert_eq!(out, "Hello ");
    }

    #[test]
    fn false_alarm_is_released() {
        let mut m = StopMatcher::new(&["STOP".to_string()]);
        assert_eq!(m.push("ab ST"), StopOutcome::Continue("ab ".into()));
        assert_eq!(m.push("x"), StopOutcome::Continue("STx".into()));
        assert_eq!(m.push("S"), StopOutcome::Continue(String::new()));
        assert_eq!(m.finish(), "S");
    }
}
