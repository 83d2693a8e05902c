//! The grammar intermediate form every constraint compiles to: a context-free grammar over
//! *lexemes* (regular expressions, each compiled to its own DFA).

use crate::{CompileOptions, ConstraintError};
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};
use std::collections::HashMap;
use std::sync::Arc;
use std::time::Instant;

/// A grammar symbol while building.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) enum Sym {
    /// A nonterminal (rule id).
    N(u32),
    /// A terminal (lexeme id).
    T(u32),
}

/// Builds a grammar: rules of alternatives of symbol sequences, and deduplicated lexemes.
#[derive(Debug, Default)]
pub(crate) struct GrammarBuilder {
    pub lexemes: Vec<String>,
    lexeme_ids: HashMap<String, u32>,
    pub rules: Vec<Vec<Vec<Sym>>>,
    pub rule_names: Vec<String>,
    /// Regex prepended to every lexeme (JSON whitespace).
    pub skip: Option<String>,
    /// Lexemes that are a boolean combination of regexes: (regex, must match) per part; the
    /// lexeme matches a text when every positive part matches it and no negative one does.
    pub combos: HashMap<u32, Vec<(String, bool)>>,
}

impl GrammarBuilder {
    /// A new lexeme from a regex (deduplicated).
    pub fn lexeme(&mut self, regex: &str) -> Sym {
        if let Some(&id) = self.lexeme_ids.get(regex) {
            return Sym::T(id);
        }
        let id = self.lexemes.len() as u32;
        self.lexemes.push(regex.to_string());
        self.lexeme_ids.insert(regex.to_string(), id);
        Sym::T(id)
    }

    /// A lexeme matching the texts every `pos` regex matches and no `neg` regex matches
    /// (`pos` must not be empty). Each part gets the skip prefix on its own, so the parts
    /// should start with a character the skip regex cannot match (a quote, for JSON strings).
    pub fn lexeme_combo(&mut self, pos: &[String], neg: &[String]) -> Sym {
        let mut pos: Vec<String> = pos.to_vec();
        pos.sort();
        pos.dedup();
        let mut neg: Vec<String> = neg.to_vec();
        neg.sort();
        neg.dedup();
        if pos.len() == 1 && neg.is_empty() {
            return self.lexeme(&pos[0]);
        }
        let parts: Vec<(String, bool)> = pos
            .into_iter()
            .map(|p| (p, true))
            .chain(neg.into_iter().map(|n| (n, false)))
            .collect();
        let key = format!("\u{1}{parts:?}");
        if let Some(&id) = self.lexeme_ids.get(&key) {
            return Sym::T(id);
        }
        let id = self.lexemes.len() as u32;
        self.lexemes.push(key.clone());
        self.lexeme_ids.insert(key, id);
        self.combos.insert(id, parts);
        Sym::T(id)
    }

    /// A lexeme matching exactly `text`.
    pub fn literal(&mut self, text: &str) -> Sym {
        self.lexeme(&regex_syntax::escape(text))
    }

    /// A new rule with no alternatives yet.
    pub fn new_rule(&mut self, name: &str) -> u32 {
        self.rules.push(Vec::new());
        self.rule_names.push(name.to_string());
        (self.rules.len() - 1) as u32
    }

    /// Sets the alternatives of rule `r`.
    pub fn set_rule(&mut self, r: u32, alts: Vec<Vec<Sym>>) {
        self.rules[r as usize] = alts;
    }

    /// A new rule with the given alternatives.
    pub fn rule(&mut self, name: &str, alts: Vec<Vec<Sym>>) -> Sym {
        let r = self.new_rule(name);
        self.set_rule(r, alts);
        Sym::N(r)
    }

    /// `x*` as a left-recursive rule.
    pub fn star(&mut self, x: Vec<Sym>) -> Sym {
        let r = self.new_rule("star");
        let mut rec = vec![Sym::N(r)];
        rec.extend(x);
        self.set_rule(r, vec![vec![], rec]);
        Sym::N(r)
    }

    /// `x{min,max}` (max `None` = unbounded). Errors when the unrolling is too large.
    pub fn repeat(
        &mut self,
        x: Vec<Sym>,
        min: u32,
        max: Option<u32>,
        budget: usize,
    ) -> Result<Sym, ConstraintError> {
        let unroll = max.unwrap_or(min) as usize;
        if unroll > budget {
            return Err(ConstraintError::Budget(format!(
                "repetition count {unroll} exceeds the limit of {budget}"
            )));
        }
        let mut seq = Vec::new();
        for _ in 0..min {
            seq.extend(x.iter().copied());
        }
        match max {
            None => seq.push(self.star(x)),
            Some(max) if max > min => {
                // (x (x (x)?)?)? nested, built from the inside out
                let mut inner: Option<Sym> = None;
                for _ in min..max {
                    let mut body = x.clone();
                    if let Some(i) = inner {
                        body.push(i);
                    }
                    inner = Some(self.rule("opt", vec![vec![], body]));
                }
                if let Some(i) = inner {
                    seq.push(i);
                }
            }
            Some(_) => {}
        }
        Ok(self.rule("repeat", vec![seq]))
    }
}

/// Symbol encoding in the compiled production table.
pub(crate) const KIND_MASK: u32 = 0xC000_0000;
pub(crate) const KIND_N: u32 = 0;
pub(crate) const KIND_T: u32 = 0x4000_0000;
pub(crate) const KIND_END: u32 = 0x8000_0000;
pub(crate) const VAL_MASK: u32 = 0x3FFF_FFFF;

/// A product automaton of several DFAs (see [`GrammarBuilder::lexeme_combo`]); state 0 is dead.
#[derive(Debug)]
pub(crate) struct Table {
    classes: [u8; 256],
    ncls: usize,
    trans: Vec<u32>,
    matching: Vec<bool>,
}

impl Table {
    /// The state after byte `b` from `s` (0 is dead).
    #[inline]
    fn next(&self, s: StateID, b: u8) -> StateID {
        StateID::new_unchecked(
            self.trans[s.as_usize() * self.ncls + self.classes[b as usize] as usize] as usize,
        )
    }
}

/// How a lexeme steps: a regex-automata DFA, or a product table.
// few per grammar, stepped in the hot loop: no boxing
#[allow(clippy::large_enum_variant)]
#[derive(Debug)]
pub(crate) enum LexAuto {
    Dfa(dense::DFA<Vec<u32>>),
    Table(Table),
}

/// Which states of a table automaton (`trans`: `ncls` entries per state, 0 dead) can reach a
/// matching state.
fn alive_states(trans: &[u32], ncls: usize, matching: &[bool]) -> Vec<bool> {
    let n = matching.len();
    let mut rev: Vec<Vec<u32>> = vec![Vec::new(); n];
    for s in 1..n {
        for c in 0..ncls {
            let t = trans[s * ncls + c] as usize;
            if t != 0 {
                rev[t].push(s as u32);
            }
        }
    }
    let mut alive = matching.to_vec();
    let mut stack: Vec<usize> = (0..n).filter(|&s| alive[s]).collect();
    while let Some(s) = stack.pop() {
        for &p in &rev[s] {
            if !alive[p as usize] {
                alive[p as usize] = true;
                stack.push(p as usize);
            }
        }
    }
    alive
}

/// A fast non-cryptographic hasher (FxHash's multiply-rotate) for the product construction's
/// state tuples.
#[derive(Default, Clone, Copy)]
struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(b as u64);
        }
    }
    fn write_u32(&mut self, x: u32) {
        self.write_u64(x as u64);
    }
    fn write_usize(&mut self, x: usize) {
        self.write_u64(x as u64);
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = (self.0.rotate_left(5) ^ x).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
}

type FxBuild = std::hash::BuildHasherDefault<FxHasher>;

/// Source of [`Lexeme::uid`]s.
static NEXT_LEXEME_UID: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

fn next_lexeme_uid() -> u64 {
    NEXT_LEXEME_UID.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// One compiled lexeme.
#[derive(Debug)]
pub(crate) struct Lexeme {
    /// Unique in the process: identifies this automaton in mask caches shared by every
    /// grammar that holds it (see `engine::MaskCache`).
    pub uid: u64,
    pub auto: LexAuto,
    pub start: StateID,
    /// A state from which nothing matches (the automaton's dead state).
    pub dead: StateID,
    /// Per state (index = id >> stride2): can some continuation still reach a match?
    alive: Vec<bool>,
    stride2: usize,
    /// Per state (index as for `alive`): the byte set (see `vocab::byte_bit`) on which it
    /// steps to itself; built on the first trie walk.
    loops: std::sync::OnceLock<Vec<u128>>,
}

impl Lexeme {
    /// A lexeme over a byte-class transition table (state 0 dead, 1 the start).
    fn from_table(classes: [u8; 256], ncls: usize, trans: Vec<u32>, matching: Vec<bool>) -> Self {
        let alive = alive_states(&trans, ncls, &matching);
        Self {
            uid: next_lexeme_uid(),
            auto: LexAuto::Table(Table {
                classes,
                ncls,
                trans,
                matching,
            }),
            start: StateID::new_unchecked(1),
            dead: StateID::ZERO,
            alive,
            stride2: 0,
            loops: Default::default(),
        }
    }

    fn new(dfa: dense::DFA<Vec<u32>>, start: StateID) -> Self {
        let stride2 = dfa.stride2();
        let reps: Vec<u8> = dfa
            .byte_classes()
            .representatives(0..=255)
            .filter_map(|u| u.as_u8())
            .collect();
        // forward exploration
        let idx = |s: StateID| s.as_usize() >> stride2;
        let mut order = vec![start];
        let mut seen = std::collections::HashMap::new();
        seen.insert(start, 0usize);
        let mut edges: Vec<Vec<usize>> = vec![Vec::new()];
        let mut i = 0;
        while i < order.len() {
            let s = order[i];
            for &b in &reps {
                let t = dfa.next_state(s, b);
                if dfa.is_dead_state(t) || dfa.is_quit_state(t) {
                    continue;
                }
                let j = match seen.get(&t) {
                    Some(&j) => j,
                    None => {
                        order.push(t);
                        edges.push(Vec::new());
                        seen.insert(t, order.len() - 1);
                        order.len() - 1
                    }
                };
                edges[j].push(i); // reverse edge t -> s
            }
            i += 1;
        }
        let mut ok = vec![false; order.len()];
        let mut stack: Vec<usize> = Vec::new();
        for (k, &s) in order.iter().enumerate() {
            if dfa.is_match_state(dfa.next_eoi_state(s)) {
                ok[k] = true;
                stack.push(k);
            }
        }
        while let Some(k) = stack.pop() {
            for &p in &edges[k] {
                if !ok[p] {
                    ok[p] = true;
                    stack.push(p);
                }
            }
        }
        let max = order.iter().map(|&s| idx(s)).max().unwrap_or(0);
        let mut alive = vec![false; max + 1];
        for (k, &s) in order.iter().enumerate() {
            alive[idx(s)] = ok[k];
        }
        Self {
            uid: next_lexeme_uid(),
            auto: LexAuto::Dfa(dfa),
            start,
            dead: StateID::ZERO,
            alive,
            stride2,
            loops: Default::default(),
        }
    }

    /// The product of `parts` (automaton, must match): a text matches when every positive
    /// part matches and no negative part does. States where a positive part can no longer
    /// reach a match are dead; a negative part that can no longer match is folded into one
    /// state, so it stops multiplying the product.
    fn product(parts: &[(Arc<Lexeme>, bool)], max_bytes: usize) -> Result<Self, ConstraintError> {
        // combined byte classes
        let mut classes = [0u8; 256];
        let mut keys: HashMap<Vec<u16>, u8> = HashMap::new();
        let mut reps: Vec<u8> = Vec::new();
        for b in 0..=255u8 {
            let key: Vec<u16> = parts.iter().map(|p| p.0.byte_class(b)).collect();
            let n = keys.len();
            let c = *keys.entry(key).or_insert_with(|| {
                reps.push(b);
                n as u8
            });
            classes[b as usize] = c;
        }
        let ncls = reps.len();
        let start: Vec<StateID> = parts.iter().map(|p| p.0.start).collect();
        let mut ids: HashMap<Vec<StateID>, u32, FxBuild> = HashMap::default();
        let mut order: Vec<Vec<StateID>> = vec![Vec::new(), start.clone()];
        ids.insert(start, 1);
        let mut trans: Vec<u32> = vec![0; 2 * ncls];
        let mut next: Vec<StateID> = Vec::with_capacity(parts.len());
        let mut i = 1;
        while i < order.len() {
            if trans.len() * 4 > max_bytes {
                return Err(ConstraintError::Budget(format!(
                    "lexeme automaton too large: product over {max_bytes} bytes"
                )));
            }
            for (c, &b) in reps.iter().enumerate() {
                next.clear();
                let mut dead = false;
                for (k, (l, pos)) in parts.iter().enumerate() {
                    let t = l.next(order[i][k], b);
                    if l.is_dead(t) {
                        if *pos {
                            dead = true;
                            break;
                        }
                        // a negative part that can never match again: one canonical state
                        next.push(l.dead);
                    } else {
                        next.push(t);
                    }
                }
                let id = if dead {
                    0
                } else if let Some(&id) = ids.get(&next) {
                    id
                } else {
                    let id = order.len() as u32;
                    ids.insert(next.clone(), id);
                    order.push(next.clone());
                    trans.extend(std::iter::repeat_n(0, ncls));
                    id
                };
                trans[i * ncls + c] = id;
            }
            i += 1;
        }
        let matching: Vec<bool> = order
            .iter()
            .enumerate()
            .map(|(i, st)| {
                i > 0
                    && parts
                        .iter()
                        .zip(st)
                        .all(|((l, pos), &s)| l.is_match(s) == *pos)
            })
            .collect();
        Ok(Self::from_table(classes, ncls, trans, matching))
    }

    /// An automaton matching any of `lits` after any run of the bytes `skip` marks (every
    /// literal must begin with a byte outside `skip`), built directly as a trie: for the
    /// negative part of a product, where only the literal set matters and the positive part
    /// bounds the prefix.
    fn literals(lits: &[Vec<u8>], skip: &[bool; 256]) -> Self {
        // byte classes: one per byte used by a literal, one for skip bytes, 0 for the rest
        let mut classes = [0u8; 256];
        let mut ncls = 1usize;
        for l in lits {
            for &b in l {
                if classes[b as usize] == 0 {
                    classes[b as usize] = ncls as u8;
                    ncls += 1;
                }
            }
        }
        let skip_cls = ncls as u8;
        ncls += 1;
        for b in 0..256 {
            if skip[b] && classes[b] == 0 {
                classes[b] = skip_cls;
            }
        }
        // states: 0 dead, 1 start (loops on skip bytes), then trie nodes
        let mut trans: Vec<u32> = vec![0; 2 * ncls];
        trans[ncls + skip_cls as usize] = 1;
        let mut matching = vec![false, false];
        for l in lits {
            let mut s = 1usize;
            for &b in l {
                let c = classes[b as usize] as usize;
                let t = trans[s * ncls + c] as usize;
                s = if t != 0 && !(s == 1 && c == skip_cls as usize) {
                    t
                } else {
                    let id = matching.len();
                    matching.push(false);
                    trans.extend(std::iter::repeat_n(0, ncls));
                    trans[s * ncls + c] = id as u32;
                    id
                };
            }
            matching[s] = true;
        }
        Self::from_table(classes, ncls, trans, matching)
    }

    /// The automaton of `skip` followed by the literal `lit`, built directly (no regex
    /// determinization): the skip automaton's states, then one state per literal byte. `None`
    /// when `lit` is empty or begins with a byte `skip` can consume (the phases would overlap).
    fn skip_then_literal(skip: Option<&Lexeme>, lit: &[u8]) -> Option<Self> {
        let used = skip.map_or([false; 256], |k| k.bytes_used());
        if lit.is_empty() || used[lit[0] as usize] {
            return None;
        }
        // skip states, numbered from 1 in discovery order
        let mut skip_states: Vec<StateID> = Vec::new();
        let mut skip_ids: HashMap<StateID, u32> = HashMap::new();
        if let Some(k) = skip {
            skip_states.push(k.start);
            skip_ids.insert(k.start, 1);
            let mut i = 0;
            while i < skip_states.len() {
                let q = skip_states[i];
                for b in 0..=255u8 {
                    if !used[b as usize] {
                        continue;
                    }
                    let t = k.next(q, b);
                    if !k.is_dead(t) && !skip_ids.contains_key(&t) {
                        skip_states.push(t);
                        skip_ids.insert(t, skip_states.len() as u32);
                    }
                }
                i += 1;
            }
        }
        let nskip = skip_states.len().max(1);
        // byte classes: one per skip class (among skip bytes), one per literal byte
        let mut classes = [0u8; 256];
        let mut keys: HashMap<(u16, i32), u8> = HashMap::new();
        let mut reps: Vec<u8> = vec![0];
        for b in 0..=255u8 {
            let sc = if used[b as usize] {
                skip.map_or(0, |k| k.byte_class(b) + 1)
            } else {
                0
            };
            let lc = lit.iter().position(|&x| x == b).map_or(-1, |p| p as i32);
            if sc == 0 && lc < 0 {
                continue;
            }
            let n = keys.len() + 1;
            let c = *keys.entry((sc, lc)).or_insert_with(|| {
                reps.push(b);
                n as u8
            });
            classes[b as usize] = c;
        }
        let ncls = reps.len();
        let n = 1 + nskip + lit.len();
        let mut trans = vec![0u32; n * ncls];
        let mut matching = vec![false; n];
        let lit_state = |i: usize| (1 + nskip + i) as u32; // after i + 1 literal bytes
        for qi in 0..nskip {
            let s = qi + 1;
            let q = skip_states.get(qi).copied();
            let q_match = match (skip, q) {
                (Some(k), Some(q)) => k.is_match(q),
                _ => true,
            };
            for (c, &b) in reps.iter().enumerate().skip(1) {
                if let (Some(k), Some(q)) = (skip, q) {
                    if used[b as usize] {
                        let t = k.next(q, b);
                        if !k.is_dead(t) {
                            trans[s * ncls + c] = skip_ids[&t];
                            continue;
                        }
                    }
                }
                if q_match && b == lit[0] {
                    trans[s * ncls + c] = lit_state(0);
                }
            }
        }
        for i in 0..lit.len() {
            let s = lit_state(i) as usize;
            match lit.get(i + 1) {
                Some(&b) => trans[s * ncls + classes[b as usize] as usize] = lit_state(i + 1),
                None => matching[s] = true,
            }
        }
        Some(Self::from_table(classes, ncls, trans, matching))
    }

    /// Every byte some state reachable from the start can consume without dying.
    fn bytes_used(&self) -> [bool; 256] {
        let mut used = [false; 256];
        let mut seen = std::collections::HashSet::new();
        let mut stack = vec![self.start];
        seen.insert(self.start);
        while let Some(s) = stack.pop() {
            for b in 0..=255u8 {
                let t = self.next(s, b);
                if !self.is_dead(t) {
                    used[b as usize] = true;
                    if seen.insert(t) {
                        stack.push(t);
                    }
                }
            }
        }
        used
    }

    /// Bytes of automaton memory.
    pub fn memory_usage(&self) -> usize {
        match &self.auto {
            LexAuto::Dfa(d) => d.memory_usage(),
            LexAuto::Table(t) => t.trans.len() * 4 + t.matching.len(),
        }
    }

    /// Walks the vocabulary trie's nodes `first..end` (a run of whole subtrees whose parent,
    /// at depth `base`, is in state `s0`) with this lexeme alone live: sets the bit of every
    /// token whose bytes keep the lexeme alive, and calls `on_end(node, state)` for each node
    /// where the lexeme dies after its parent reached a match (a lexeme boundary there needs
    /// the parser). The step function is resolved once, not per byte: this is the inner loop
    /// of a mask-cache miss. `states` is scratch.
    #[allow(clippy::too_many_arguments)]
    pub fn walk_trie(
        &self,
        trie: &crate::vocab::Trie,
        first: usize,
        end: usize,
        base: usize,
        s0: StateID,
        states: &mut Vec<StateID>,
        words: &mut [u64],
        on_end: &mut dyn FnMut(usize, StateID),
    ) {
        match &self.auto {
            LexAuto::Dfa(d) => self.walk_with(
                |s, b| d.next_state(s, b),
                trie,
                (first, end, base),
                s0,
                states,
                words,
                on_end,
            ),
            LexAuto::Table(t) => self.walk_with(
                |s, b| t.next(s, b),
                trie,
                (first, end, base),
                s0,
                states,
                words,
                on_end,
            ),
        }
    }

    #[inline(always)]
    #[allow(clippy::too_many_arguments)]
    fn walk_with(
        &self,
        step: impl Fn(StateID, u8) -> StateID,
        trie: &crate::vocab::Trie,
        (first, end, base): (usize, usize, usize),
        s0: StateID,
        states: &mut Vec<StateID>,
        words: &mut [u64],
        on_end: &mut dyn FnMut(usize, StateID),
    ) {
        let nodes = &trie.nodes;
        let tokens = &trie.tokens;
        let loops = self.loops();
        states.clear();
        states.resize(trie.max_depth + 1, s0);
        let mut i = first;
        while i < end {
            let n = nodes[i];
            let d = n.depth as usize;
            debug_assert!(d > base);
            let parent = states[d - 1];
            let t = step(parent, n.byte);
            // A state that steps to itself on every byte of this subtree allows all of it
            // (it never dies there, so no lexeme ends there either): no walk below.
            if t == parent
                && trie.sub_bytes[i]
                    & !loops
                        .get(parent.as_usize() >> self.stride2)
                        .copied()
                        .unwrap_or(0)
                    == 0
                && !self.is_dead(t)
            {
                for &tok in &tokens[n.tok_start as usize..trie.sub_tok_end[i] as usize] {
                    words[tok as usize / 64] |= 1u64 << (tok % 64);
                }
                i = n.end as usize;
                continue;
            }
            if !self.is_dead(t) {
                for &tok in &tokens[n.tok_start as usize..n.tok_end as usize] {
                    words[tok as usize / 64] |= 1u64 << (tok % 64);
                }
                states[d] = t;
                i += 1;
            } else {
                if self.is_match(parent) {
                    on_end(i, parent);
                }
                i = n.end as usize;
            }
        }
    }

    /// The self-loop byte sets of every state (see the `loops` field).
    fn loops(&self) -> &[u128] {
        self.loops.get_or_init(|| {
            // bytes per class, as byte bits; whether the class holds NUL or a byte >= 128
            let mut class_bits: HashMap<u16, (u128, bool, u8)> = HashMap::new();
            for b in 0..=255u8 {
                let e = class_bits
                    .entry(self.byte_class(b))
                    .or_insert((0, false, b));
                if (1..128).contains(&b) {
                    e.0 |= 1u128 << b;
                } else {
                    e.1 = true;
                }
            }
            let classes: Vec<(u128, bool, u8)> = class_bits.into_values().collect();
            (0..self.alive.len())
                .map(|i| {
                    let s = StateID::new_unchecked(i << self.stride2);
                    if !self.alive[i] {
                        return 0;
                    }
                    let mut bits = 0u128;
                    let mut high = true;
                    for &(cb, has_high, rep) in &classes {
                        let loops = self.next(s, rep) == s;
                        if loops {
                            bits |= cb;
                        } else if has_high {
                            high = false;
                        }
                    }
                    if high {
                        bits |= 1;
                    } else {
                        bits &= !1;
                    }
                    bits
                })
                .collect()
        })
    }

    /// The byte class of `b` (bytes of one class step alike from every state).
    pub fn byte_class(&self, b: u8) -> u16 {
        match &self.auto {
            LexAuto::Dfa(d) => d.byte_classes().get(b) as u16,
            LexAuto::Table(t) => t.classes[b as usize] as u16,
        }
    }

    #[inline]
    pub fn next(&self, s: StateID, b: u8) -> StateID {
        match &self.auto {
            LexAuto::Dfa(d) => d.next_state(s, b),
            LexAuto::Table(t) => t.next(s, b),
        }
    }
    /// True when no continuation from `s` can match.
    #[inline]
    pub fn is_dead(&self, s: StateID) -> bool {
        !self
            .alive
            .get(s.as_usize() >> self.stride2)
            .copied()
            .unwrap_or(false)
    }
    #[inline]
    pub fn is_match(&self, s: StateID) -> bool {
        match &self.auto {
            LexAuto::Dfa(d) => d.is_match_state(d.next_eoi_state(s)),
            LexAuto::Table(t) => t.matching[s.as_usize()],
        }
    }
}

/// Lexeme automata by regex (with the skip prefix and the DFA budget in the key), shared by
/// every grammar the process compiles: determinizing is most of a compile, and the same
/// lexemes (strings, numbers, punctuation, common keys) recur across schemas. Bounded by the
/// automata's bytes; cleared whole when full (grammars keep their own `Arc`s).
struct LexemeCache {
    map: HashMap<String, Arc<Lexeme>>,
    bytes: usize,
}

/// Most automaton bytes [`LexemeCache`] holds.
const LEXEME_CACHE_BYTES: usize = 64 << 20;

impl LexemeCache {
    fn cell() -> &'static std::sync::Mutex<LexemeCache> {
        static CACHE: std::sync::OnceLock<std::sync::Mutex<LexemeCache>> =
            std::sync::OnceLock::new();
        CACHE.get_or_init(|| {
            std::sync::Mutex::new(LexemeCache {
                map: HashMap::new(),
                bytes: 0,
            })
        })
    }

    fn get(key: &str) -> Option<Arc<Lexeme>> {
        Self::cell().lock().ok()?.map.get(key).cloned()
    }

    /// Stores `l` under `key` (unless it alone exceeds a quarter of the bound).
    fn insert(key: String, l: Arc<Lexeme>) {
        let size = l.memory_usage() + key.len();
        if let Ok(mut c) = Self::cell().lock() {
            if size <= LEXEME_CACHE_BYTES / 4 {
                if c.bytes + size > LEXEME_CACHE_BYTES {
                    c.map.clear();
                    c.bytes = 0;
                }
                if c.map.insert(key, l).is_none() {
                    c.bytes += size;
                }
            }
        }
    }
}

/// A compiled grammar: productions flattened into `syms` (each production's right-hand side
/// followed by an END marker holding the production id), rule → production start positions,
/// nullability, and the lexeme DFAs.
#[derive(Debug)]
pub(crate) struct CompiledGrammar {
    pub syms: Vec<u32>,
    pub prod_lhs: Vec<u32>,
    pub rule_prods: Vec<Vec<u32>>,
    pub nullable: Vec<bool>,
    pub lexemes: Vec<Arc<Lexeme>>,
    /// The synthetic start rule.
    pub start: u32,
    /// Shortest-completion tables, built on first use (see `complete`).
    pub completion: std::sync::OnceLock<crate::complete::Tables>,
}

pub(crate) fn compile_dfa(
    regex: &str,
    opts: &CompileOptions,
) -> Result<dense::DFA<Vec<u32>>, ConstraintError> {
    let mut syntax = regex_automata::util::syntax::Config::new()
        .unicode(true)
        .utf8(true);
    syntax = syntax.dot_matches_new_line(false);
    dense::Builder::new()
        .syntax(syntax)
        .thompson(
            regex_automata::nfa::thompson::Config::new().nfa_size_limit(Some(opts.max_dfa_bytes)),
        )
        .configure(
            dense::Config::new()
                .start_kind(StartKind::Anchored)
                .match_kind(MatchKind::All)
                .minimize(false)
                .dfa_size_limit(Some(opts.max_dfa_bytes))
                .determinize_size_limit(Some(opts.max_dfa_bytes)),
        )
        .build(regex)
        .map_err(|e| {
            let mut msg = e.to_string();
            let mut src: Option<&dyn std::error::Error> = std::error::Error::source(&e);
            while let Some(x) = src {
                msg.push_str(": ");
                msg.push_str(&x.to_string());
                src = x.source();
            }
            if msg.contains("exceeded") || msg.contains("limit") || msg.contains("too big") {
                ConstraintError::Budget(format!("lexeme automaton too large: {msg}"))
            } else {
                let offset = regex_syntax::ParserBuilder::new()
                    .build()
                    .parse(regex)
                    .err()
                    .and_then(|e| match e {
                        regex_syntax::Error::Parse(p) => Some(p.span().start.offset),
                        regex_syntax::Error::Translate(t) => Some(t.span().start.offset),
                        _ => None,
                    })
                    .unwrap_or(0);
                ConstraintError::Regex {
                    pattern: regex.to_string(),
                    offset,
                    message: msg,
                }
            }
        })
}

impl CompiledGrammar {
    /// Compiles `b` with `root` as the start rule.
    pub fn compile(
        b: GrammarBuilder,
        root: Sym,
        opts: &CompileOptions,
        started: Instant,
    ) -> Result<Self, ConstraintError> {
        let GrammarBuilder {
            lexemes,
            mut rules,
            skip,
            combos,
            ..
        } = b;
        // synthetic start S' -> root
        rules.push(vec![vec![root]]);
        let start = (rules.len() - 1) as u32;
        if rules.len() > opts.max_rules {
            return Err(ConstraintError::Budget(format!(
                "{} grammar rules exceed the limit of {}",
                rules.len(),
                opts.max_rules
            )));
        }
        // compile lexemes
        let mut lex = Vec::with_capacity(lexemes.len());
        let mut total = 0usize;
        let anchored = start::Config::new().anchored(Anchored::Yes);
        let build = |re: &str| -> Result<(dense::DFA<Vec<u32>>, StateID), ConstraintError> {
            let full = match &skip {
                Some(s) => format!("(?:{s})(?:{re})"),
                None => re.to_string(),
            };
            let dfa = compile_dfa(&full, opts)?;
            let st = dfa
                .start_state(&anchored)
                .map_err(|e| ConstraintError::Regex {
                    pattern: re.to_string(),
                    offset: 0,
                    message: e.to_string(),
                })?;
            Ok((dfa, st))
        };
        // the skip automaton alone: the bytes it consumes (a literal part may not begin
        // with one), and the first phase of literal lexemes
        let mut skip_lexeme: Option<Arc<Lexeme>> = None;
        if let Some(sk) = &skip {
            let key = format!("skip\u{0}{sk}\u{0}{}", opts.max_dfa_bytes);
            let l = match LexemeCache::get(&key) {
                Some(l) => l,
                None => {
                    let dfa = compile_dfa(sk, opts)?;
                    let st = dfa
                        .start_state(&anchored)
                        .map_err(|e| ConstraintError::Regex {
                            pattern: sk.to_string(),
                            offset: 0,
                            message: e.to_string(),
                        })?;
                    let l = Arc::new(Lexeme::new(dfa, st));
                    LexemeCache::insert(key, l.clone());
                    l
                }
            };
            skip_lexeme = Some(l);
        }
        let skip_bytes = skip_lexeme
            .as_ref()
            .map_or([false; 256], |l| l.bytes_used());
        // One lexeme automaton per regex (with the skip prefix): the same lexeme (a JSON
        // string, a number, a common key) recurs across grammars, and the parts of product
        // lexemes recur too: each is determinized once per process.
        let single = |re: &str| -> Result<Arc<Lexeme>, ConstraintError> {
            let key = format!("{skip:?}\u{0}{re}\u{0}{}", opts.max_dfa_bytes);
            if opts.share_lexemes {
                if let Some(l) = LexemeCache::get(&key) {
                    return Ok(l);
                }
            }
            let direct = match (literal_bytes(re), &skip_lexeme) {
                (Some(lit), Some(k)) => Lexeme::skip_then_literal(Some(k), &lit),
                (Some(lit), None) if skip.is_none() => Lexeme::skip_then_literal(None, &lit),
                _ => None,
            };
            let l = Arc::new(match direct {
                Some(l) => l,
                None => {
                    let (dfa, st) = build(re)?;
                    Lexeme::new(dfa, st)
                }
            });
            if opts.share_lexemes {
                LexemeCache::insert(key, l.clone());
            }
            Ok(l)
        };
        for (id, re) in lexemes.iter().enumerate() {
            if started.elapsed() > opts.max_compile_time {
                return Err(ConstraintError::Budget(format!(
                    "compile time over {:?}",
                    opts.max_compile_time
                )));
            }
            let lexeme = match combos.get(&(id as u32)) {
                None => single(re)?,
                Some(parts) => {
                    let key = format!("{skip:?}\u{0}{re}\u{0}{}", opts.max_dfa_bytes);
                    let cached = if opts.share_lexemes {
                        LexemeCache::get(&key)
                    } else {
                        None
                    };
                    match cached {
                        Some(l) => l,
                        None => {
                            let mut built = Vec::with_capacity(parts.len());
                            // negative literals (excluded key names): one trie automaton
                            let mut lits: Vec<Vec<u8>> = Vec::new();
                            for (re, pos) in parts {
                                match literal_bytes(re) {
                                    Some(l) if !*pos && !skip_bytes[l[0] as usize] => lits.push(l),
                                    _ => built.push((single(re)?, *pos)),
                                }
                            }
                            if !lits.is_empty() {
                                built.push((Arc::new(Lexeme::literals(&lits, &skip_bytes)), false));
                            }
                            let l = Arc::new(Lexeme::product(&built, opts.max_dfa_bytes)?);
                            if opts.share_lexemes {
                                LexemeCache::insert(key, l.clone());
                            }
                            l
                        }
                    }
                }
            };
            total += lexeme.memory_usage();
            if total > opts.max_total_dfa_bytes {
                return Err(ConstraintError::Budget(format!(
                    "lexer automata use over {} bytes",
                    opts.max_total_dfa_bytes
                )));
            }
            lex.push(lexeme);
        }
        // lexeme productivity: a lexeme whose start is dead matches nothing
        let lex_ok: Vec<bool> = lex.iter().map(|l| !l.is_dead(l.start)).collect();
        // productive rules (fixpoint)
        let n = rules.len();
        let mut productive = vec![false; n];
        loop {
            let mut changed = false;
            for r in 0..n {
                if productive[r] {
                    continue;
                }
                if rules[r].iter().any(|alt| {
                    alt.iter().all(|s| match *s {
                        Sym::T(t) => lex_ok[t as usize],
                        Sym::N(x) => productive[x as usize],
                    })
                }) {
                    productive[r] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        // nullable (fixpoint)
        let mut nullable = vec![false; n];
        loop {
            let mut changed = false;
            for r in 0..n {
                if nullable[r] {
                    continue;
                }
                if rules[r].iter().any(|alt| {
                    alt.iter()
                        .all(|s| matches!(*s, Sym::N(x) if nullable[x as usize]))
                }) {
                    nullable[r] = true;
                    changed = true;
                }
            }
            if !changed {
                break;
            }
        }
        let mut syms = Vec::new();
        let mut prod_lhs = Vec::new();
        let mut rule_prods = vec![Vec::new(); n];
        for (r, alts) in rules.iter().enumerate() {
            for alt in alts {
                let ok = alt.iter().all(|s| match *s {
                    Sym::T(t) => lex_ok[t as usize],
                    Sym::N(x) => productive[x as usize],
                });
                if !ok {
                    continue;
                }
                let pid = prod_lhs.len() as u32;
                prod_lhs.push(r as u32);
                rule_prods[r].push(syms.len() as u32);
                for s in alt {
                    syms.push(match *s {
                        Sym::N(x) => KIND_N | x,
                        Sym::T(t) => KIND_T | t,
                    });
                }
                syms.push(KIND_END | pid);
            }
        }
        if syms.len() > opts.max_rules * 16 {
            return Err(ConstraintError::Budget(format!(
                "grammar has {} symbols",
                syms.len()
            )));
        }
        Ok(Self {
            syms,
            prod_lhs,
            rule_prods,
            nullable,
            lexemes: lex,
            start,
            completion: std::sync::OnceLock::new(),
        })
    }
}

/// The bytes `regex` matches when it is one literal (not empty), else `None`.
fn literal_bytes(regex: &str) -> Option<Vec<u8>> {
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(regex)
        .ok()?;
    match hir.kind() {
        regex_syntax::hir::HirKind::Literal(l) if !l.0.is_empty() => Some(l.0.to_vec()),
        _ => None,
    }
}

/// Parses `regex` to report syntax errors with their position.
pub(crate) fn check_regex(regex: &str) -> Result<(), ConstraintError> {
    regex_syntax::ParserBuilder::new()
        .build()
        .parse(regex)
        .map(|_| ())
        .map_err(|e| {
            let offset = match &e {
                regex_syntax::Error::Parse(x) => x.span().start.offset,
                regex_syntax::Error::Translate(x) => x.span().start.offset,
                _ => 0,
            };
            ConstraintError::Regex {
                pattern: regex.to_string(),
                offset,
                message: e.to_string(),
            }
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn compile(regex: &str, opts: &CompileOptions) -> CompiledGrammar {
        let mut b = GrammarBuilder::default();
        let t = b.lexeme(regex);
        let root = b.rule("root", vec![vec![t]]);
        CompiledGrammar::compile(b, root, opts, Instant::now()).unwrap()
    }

    #[test]
    fn lexeme_automata_are_shared_across_grammars_unless_asked_not_to() {
        let shared = CompileOptions::default();
        let re = "[a-z]{3}-shared-lexeme-test";
        let (a, b) = (compile(re, &shared), compile(re, &shared));
        assert!(Arc::ptr_eq(&a.lexemes[0], &b.lexemes[0]));
        let cold = CompileOptions {
            share_lexemes: false,
            ..CompileOptions::default()
        };
        let c = compile(re, &cold);
        assert!(!Arc::ptr_eq(&a.lexemes[0], &c.lexemes[0]));
        // a different budget is a different key
        let small = CompileOptions {
            max_dfa_bytes: 1 << 20,
            ..CompileOptions::default()
        };
        assert!(!Arc::ptr_eq(&a.lexemes[0], &compile(re, &small).lexemes[0]));
    }

    /// Runs `l` over `text`: for each prefix length, (matches, alive).
    fn trace(l: &Lexeme, text: &[u8]) -> Vec<(bool, bool)> {
        let mut s = l.start;
        let mut out = vec![(l.is_match(s), !l.is_dead(s))];
        for &b in text {
            if l.is_dead(s) {
                out.push((false, false));
                continue;
            }
            s = l.next(s, b);
            out.push((l.is_match(s), !l.is_dead(s)));
        }
        out
    }

    fn regex_lexeme(re: &str) -> Lexeme {
        let dfa = compile_dfa(re, &CompileOptions::default()).unwrap();
        let st = dfa
            .start_state(&start::Config::new().anchored(Anchored::Yes))
            .unwrap();
        Lexeme::new(dfa, st)
    }

    /// Every string over `alphabet` up to length `n`.
    fn strings(alphabet: &[u8], n: usize) -> Vec<Vec<u8>> {
        let mut all = vec![Vec::new()];
        let mut layer = vec![Vec::new()];
        for _ in 0..n {
            let mut next = Vec::new();
            for s in &layer {
                for &b in alphabet {
                    let mut t: Vec<u8> = s.clone();
                    t.push(b);
                    next.push(t);
                }
            }
            all.extend(next.iter().cloned());
            layer = next;
        }
        all
    }

    #[test]
    fn literal_lexemes_built_directly_step_like_their_regex() {
        let skip = r"[ \t\n\r]{0,3}";
        let k = regex_lexeme(skip);
        for lit in ["\"ab\"", "\"a a\"", "{", "true", "\"\u{e9}\""] {
            let re = format!("(?:{skip})(?:{})", regex_syntax::escape(lit));
            let want = regex_lexeme(&re);
            let got = Lexeme::skip_then_literal(Some(&k), lit.as_bytes()).unwrap();
            let bare = Lexeme::skip_then_literal(None, lit.as_bytes()).unwrap();
            let want_bare = regex_lexeme(&regex_syntax::escape(lit));
            let mut alphabet: Vec<u8> = b" \n\"x".to_vec();
            alphabet.extend(lit.bytes());
            alphabet.sort();
            alphabet.dedup();
            for t in strings(&alphabet, 6) {
                assert_eq!(trace(&got, &t), trace(&want, &t), "{lit:?} on {t:?}");
                assert_eq!(trace(&bare, &t), trace(&want_bare, &t), "{lit:?} on {t:?}");
            }
        }
        // a literal that begins with a skip byte is left to the regex compiler
        assert!(Lexeme::skip_then_literal(Some(&k), b" a").is_none());
    }

    #[test]
    fn excluding_literals_by_product_matches_the_regex_product() {
        let skip = r"[ \t\n\r]{0,3}";
        let k = regex_lexeme(skip);
        let pos = regex_lexeme(&format!("(?:{skip})(?:\"[a-c]*\")"));
        let names: Vec<Vec<u8>> = ["\"ab\"", "\"a\"", "\"abc\"", "\"\""]
            .iter()
            .map(|n| n.as_bytes().to_vec())
            .collect();
        let direct = Lexeme::product(
            &[
                (
                    Arc::new(regex_lexeme(&format!("(?:{skip})(?:\"[a-c]*\")"))),
                    true,
                ),
                (Arc::new(Lexeme::literals(&names, &k.bytes_used())), false),
            ],
            1 << 20,
        )
        .unwrap();
        for t in strings(b" \"abc", 7) {
            let text = std::str::from_utf8(&t).unwrap();
            let body = text.trim_start_matches([' ', '\t', '\n', '\r']);
            let want =
                trace(&pos, &t).last().unwrap().0 && !names.iter().any(|n| n == body.as_bytes());
            assert_eq!(trace(&direct, &t).last().unwrap().0, want, "{text:?}");
        }
    }
}
