//! Shortest completions: the fewest bytes that turn the text so far into a complete sentence
//! of the grammar. The engine uses them to close a constrained output before `max_tokens`
//! runs out (see [`crate::ConstraintState::shortest_completion`]).
//!
//! Grammar-wide tables are built once per compiled grammar, on first use: for every lexeme
//! the shortest string it matches (a breadth-first search of its automaton), for every rule
//! the cheapest production (a fixpoint over the productions, cost in bytes), and for every
//! position of a production the cost of the rest of it. The per-sequence part walks the Earley
//! chart: see `Parser::shortest_completion`.

use crate::grammar::{CompiledGrammar, Lexeme, KIND_END, KIND_MASK, KIND_N, KIND_T, VAL_MASK};
use regex_automata::util::primitives::StateID;
use std::collections::{HashMap, VecDeque};

/// A cost that cannot be paid (the symbol derives nothing).
pub(crate) const INF: u32 = u32::MAX;

/// Most automaton states a shortest-match search visits before giving up.
const MAX_SEARCH_STATES: usize = 1 << 16;

/// Deepest rule nesting a completion is expanded through.
const MAX_EXPANSION_DEPTH: usize = 512;

/// Grammar-wide shortest-completion tables.
#[derive(Debug)]
pub(crate) struct Tables {
    /// Per lexeme: the shortest string it matches from its start state.
    pub lexeme_min: Vec<Option<Vec<u8>>>,
    /// Per rule: the first position of its cheapest production.
    rule_best: Vec<u32>,
    /// Per position in `syms`: the cost of the symbols from there to the production's end.
    pub suffix: Vec<u32>,
    /// Per position in `syms`: the rule whose production holds it.
    pub pos_lhs: Vec<u32>,
}

impl Tables {
    /// Builds the tables of `g`.
    pub fn new(g: &CompiledGrammar) -> Self {
        let lexeme_min: Vec<Option<Vec<u8>>> = g
            .lexemes
            .iter()
            .map(|l| shortest_match(l, l.start))
            .collect();
        let lex_cost = |l: usize| lexeme_min[l].as_ref().map_or(INF, |v| v.len() as u32);
        // the rule of every position: each production ends with END | production id
        let mut pos_lhs = vec![0u32; g.syms.len()];
        let mut from = 0;
        for (i, &s) in g.syms.iter().enumerate() {
            if s & KIND_MASK == KIND_END {
                let lhs = g.prod_lhs[(s & VAL_MASK) as usize];
                pos_lhs[from..=i].fill(lhs);
                from = i + 1;
            }
        }
        let n = g.rule_prods.len();
        let mut rule_cost = vec![INF; n];
        let mut rule_best = vec![u32::MAX; n];
        let prod_cost = |pos: u32, rule_cost: &[u32]| -> u32 {
            let mut c = 0u32;
            for &s in &g.syms[pos as usize..] {
                let v = s & VAL_MASK;
                c = c.saturating_add(match s & KIND_MASK {
                    KIND_END => return c,
                    KIND_T => lex_cost(v as usize),
                    _ => rule_cost[v as usize],
                });
            }
            c
        };
        // Only strict improvements are recorded, so every recorded production uses symbols
        // whose costs were already finite when it was chosen: the expansion terminates.
        loop {
            let mut changed = false;
            for r in 0..n {
                for &pos in &g.rule_prods[r] {
                    let c = prod_cost(pos, &rule_cost);
                    if c < rule_cost[r] {
                        rule_cost[r] = c;
                        rule_best[r] = pos;
                        changed = true;
                    }
                }
            }
            if !changed {
                break;
            }
        }
        let mut suffix = vec![0u32; g.syms.len()];
        let mut acc = 0u32;
        for i in (0..g.syms.len()).rev() {
            let s = g.syms[i];
            let v = s & VAL_MASK;
            acc = match s & KIND_MASK {
                KIND_END => 0,
                KIND_T => acc.saturating_add(lex_cost(v as usize)),
                _ => acc.saturating_add(rule_cost[v as usize]),
            };
            suffix[i] = acc;
        }
        Self {
            lexeme_min,
            rule_best,
            suffix,
            pos_lhs,
        }
    }

    /// Appends the cheapest expansion of the symbols from `pos` to the end of their
    /// production. False when some symbol derives nothing or the nesting is too deep.
    pub fn expand_suffix(&self, g: &CompiledGrammar, pos: u32, out: &mut Vec<u8>) -> bool {
        self.expand(g, pos, out, 0)
    }

    fn expand(&self, g: &CompiledGrammar, pos: u32, out: &mut Vec<u8>, depth: usize) -> bool {
        if depth > MAX_EXPANSION_DEPTH {
            return false;
        }
        for &s in &g.syms[pos as usize..] {
            let v = (s & VAL_MASK) as usize;
            match s & KIND_MASK {
                KIND_END => return true,
                KIND_T => match &self.lexeme_min[v] {
                    Some(b) => out.extend_from_slice(b),
                    None => return false,
                },
                KIND_N => {
                    let best = self.rule_best[v];
                    if best == u32::MAX || !self.expand(g, best, out, depth + 1) {
                        return false;
                    }
                }
                _ => return false,
            }
        }
        true
    }
}

/// The bytes to try at each automaton step, one per byte class, preferring readable ASCII
/// (letters and digits, then other printable characters) so that fillers look like text.
fn preferred_bytes(l: &Lexeme) -> Vec<u8> {
    let order = (b'a'..=b'z')
        .chain(b'A'..=b'Z')
        .chain(b'0'..=b'9')
        .chain(0x20..=0x7e)
        .chain(0..=255u8);
    let mut seen_class = [false; 256];
    let mut out = Vec::new();
    for b in order {
        let c = l.byte_class(b) as usize;
        if !seen_class[c] {
            seen_class[c] = true;
            out.push(b);
        }
    }
    out
}

/// The shortest bytes that take lexeme `l` from state `s` to a match (empty when `s`
/// matches); `None` when no match is reachable within the search budget.
pub(crate) fn shortest_match(l: &Lexeme, s: StateID) -> Option<Vec<u8>> {
    if l.is_dead(s) {
        return None;
    }
    if l.is_match(s) {
        return Some(Vec::new());
    }
    let bytes = preferred_bytes(l);
    // breadth-first, remembering how each state was first reached
    let mut prev: HashMap<StateID, (StateID, u8)> = HashMap::new();
    let mut queue = VecDeque::from([s]);
    prev.insert(s, (s, 0));
    while let Some(x) = queue.pop_front() {
        for &b in &bytes {
            let t = l.next(x, b);
            if l.is_dead(t) || prev.contains_key(&t) {
                continue;
            }
            prev.insert(t, (x, b));
            if l.is_match(t) {
                let mut path = vec![b];
                let mut cur = x;
                while cur != s {
                    let (p, pb) = prev[&cur];
                    path.push(pb);
                    cur = p;
                }
                path.reverse();
                return Some(path);
            }
            if prev.len() > MAX_SEARCH_STATES {
                return None;
            }
            queue.push_back(t);
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use crate::{CompileOptions, Constraint, ConstraintSpec, Vocabulary};
    use std::sync::Arc;

    /// A byte-level vocabulary: token `b` is byte `b`, token 256 is EOS.
    fn bytes_vocab() -> Arc<Vocabulary> {
        let mut toks: Vec<Vec<u8>> = (0..=255u8).map(|b| vec![b]).collect();
        toks.push(Vec::new());
        Arc::new(Vocabulary::new(toks, &[256], &[]))
    }

    fn completion_after(spec: ConstraintSpec, prefix: &str) -> Option<String> {
        let c = Constraint::compile(&spec, bytes_vocab(), &CompileOptions::default()).unwrap();
        let mut st = c.start();
        st.commit_bytes(prefix.as_bytes()).unwrap();
        st.shortest_completion()
            .map(|b| String::from_utf8(b).unwrap())
    }

    #[test]
    fn closes_a_json_object_with_its_required_properties() {
        let schema = serde_json::json!({
            "type": "object",
            "properties": {
                "name": {"type": "string"},
                "age": {"type": "integer"},
                "tags": {"type": "array", "items": {"type": "string"}, "minItems": 1}
            },
            "required": ["name", "age", "tags"],
            "additionalProperties": false
        });
        let spec = ConstraintSpec::JsonSchema(schema.clone());
        let c = Constraint::compile(&spec, bytes_vocab(), &CompileOptions::default()).unwrap();
        for prefix in [
            "",
            "{",
            "{\"na",
            "{\"name\": \"Jo",
            "{\"name\": \"Jo\\",
            "{\"name\": \"Jo\", \"age\": 4",
            "{\"name\": \"Jo\", \"age\": 42, \"tags\": [",
            "{\"name\": \"Jo\", \"age\": 42, \"tags\": [\"a\", ",
        ] {
            let done = completion_after(spec.clone(), prefix).expect(prefix);
            let text = format!("{prefix}{done}");
            c.validate(&text)
                .unwrap_or_else(|e| panic!("{prefix:?} + {done:?}: {e}"));
        }
        // already complete: nothing to add
        let full = "{\"name\": \"Jo\", \"age\": 42, \"tags\": [\"a\"]}";
        assert_eq!(completion_after(spec, full).as_deref(), Some(""));
    }

    #[test]
    fn completion_is_shortest_and_accepted_byte_by_byte() {
        let spec = ConstraintSpec::Regex("ab(cd|e)+f".into());
        assert_eq!(completion_after(spec.clone(), "").as_deref(), Some("abef"));
        assert_eq!(completion_after(spec.clone(), "abc").as_deref(), Some("df"));
        let c = Constraint::compile(&spec, bytes_vocab(), &CompileOptions::default()).unwrap();
        let mut st = c.start();
        st.commit_bytes(b"abcde").unwrap();
        let rest = st.shortest_completion().unwrap();
        for b in rest {
            assert!(st.is_token_allowed(b as u32));
            st.commit_token(b as u32).unwrap();
        }
        assert!(st.is_accepting());
    }

    #[test]
    fn grammar_completion_respects_repetition_minimums() {
        let gbnf = r#"root ::= "[" item ("," item){2,} "]"
item ::= [0-9]+"#;
        let spec = ConstraintSpec::Grammar(gbnf.into());
        assert_eq!(
            completion_after(spec.clone(), "[7").as_deref(),
            Some(",0,0]")
        );
        assert_eq!(completion_after(spec, "[7,1,2,3").as_deref(), Some("]"));
    }
}
