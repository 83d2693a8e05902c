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

/// Cached lexer-only mask parts, keyed by the live lexer states.
pub(crate) type MaskCache =
    std::sync::Mutex<HashMap<Vec<(u32, StateID)>, std::sync::Arc<crate::engine::MaskEntry>>>;

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

/// One compiled lexeme.
#[derive(Debug)]
pub(crate) struct Lexeme {
    pub auto: LexAuto,
    pub start: StateID,
    /// Per state (index = id >> stride2): can some continuation still reach a match?
    alive: Vec<bool>,
    stride2: usize,
}

impl Lexeme {
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
            auto: LexAuto::Dfa(dfa),
            start,
            alive,
            stride2,
        }
    }

    /// The product of `parts` (DFA, anchored start, must match): a text matches when every
    /// positive part matches and no negative part does.
    fn product(
        parts: &[(dense::DFA<Vec<u32>>, StateID, bool)],
        max_bytes: usize,
    ) -> Result<Self, ConstraintError> {
        // combined byte classes
        let mut classes = [0u8; 256];
        let mut keys: HashMap<Vec<u8>, u8> = HashMap::new();
        let mut reps: Vec<u8> = Vec::new();
        for b in 0..=255u8 {
            let key: Vec<u8> = parts.iter().map(|p| p.0.byte_classes().get(b)).collect();
            let n = keys.len();
            let c = *keys.entry(key).or_insert_with(|| {
                reps.push(b);
                n as u8
            });
            classes[b as usize] = c;
        }
        let ncls = reps.len();
        let dead_part =
            |i: usize, s: StateID| parts[i].0.is_dead_state(s) || parts[i].0.is_quit_state(s);
        let start: Vec<StateID> = parts.iter().map(|p| p.1).collect();
        let mut ids: HashMap<Vec<StateID>, u32> = HashMap::new();
        let mut order: Vec<Vec<StateID>> = vec![Vec::new(), start.clone()];
        ids.insert(start, 1);
        let mut trans: Vec<u32> = vec![0; 2 * ncls];
        let mut i = 1;
        while i < order.len() {
            if trans.len() * 4 > max_bytes {
                return Err(ConstraintError::Budget(format!(
                    "lexeme automaton too large: product over {max_bytes} bytes"
                )));
            }
            for (c, &b) in reps.iter().enumerate() {
                let mut next = Vec::with_capacity(parts.len());
                let mut dead = false;
                for (k, p) in parts.iter().enumerate() {
                    let t = p.0.next_state(order[i][k], b);
                    if p.2 && dead_part(k, t) {
                        dead = true;
                        break;
                    }
                    next.push(t);
                }
                let id = if dead {
                    0
                } else if let Some(&id) = ids.get(&next) {
                    id
                } else {
                    let id = order.len() as u32;
                    ids.insert(next.clone(), id);
                    order.push(next);
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
                    && parts.iter().zip(st).all(|(p, &s)| {
                        let m = p.0.is_match_state(p.0.next_eoi_state(s));
                        m == p.2
                    })
            })
            .collect();
        // alive: can reach a matching state
        let n = order.len();
        let mut rev: Vec<Vec<u32>> = vec![Vec::new(); n];
        for s in 1..n {
            for c in 0..ncls {
                let t = trans[s * ncls + c] as usize;
                if t != 0 {
                    rev[t].push(s as u32);
                }
            }
        }
        let mut alive = matching.clone();
        let mut stack: Vec<usize> = (0..n).filter(|&s| alive[s]).collect();
        while let Some(s) = stack.pop() {
            for &p in &rev[s] {
                if !alive[p as usize] {
                    alive[p as usize] = true;
                    stack.push(p as usize);
                }
            }
        }
        Ok(Self {
            auto: LexAuto::Table(Table {
                classes,
                ncls,
                trans,
                matching,
            }),
            start: StateID::new_unchecked(1),
            alive,
            stride2: 0,
        })
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
        states.clear();
        states.resize(trie.max_depth + 1, s0);
        let mut i = first;
        while i < end {
            let n = nodes[i];
            let d = n.depth as usize;
            debug_assert!(d > base);
            let parent = states[d - 1];
            let t = step(parent, n.byte);
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
    /// Mask parts that depend only on the live lexer states (see `engine::MaskEntry`).
    pub mask_cache: MaskCache,
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
        for (id, re) in lexemes.iter().enumerate() {
            if started.elapsed() > opts.max_compile_time {
                return Err(ConstraintError::Budget(format!(
                    "compile time over {:?}",
                    opts.max_compile_time
                )));
            }
            // The same lexeme (a JSON string, a number, a common key, with the same skip
            // prefix) recurs across grammars: its automaton is built once per process.
            let key = format!("{skip:?}\u{0}{re}\u{0}{}", opts.max_dfa_bytes);
            let cached = if opts.share_lexemes {
                LexemeCache::get(&key)
            } else {
                None
            };
            let lexeme = match cached {
                Some(l) => l,
                None => {
                    let built = match combos.get(&(id as u32)) {
                        Some(parts) => {
                            let mut built = Vec::with_capacity(parts.len());
                            for (re, pos) in parts {
                                let (dfa, st) = build(re)?;
                                built.push((dfa, st, *pos));
                            }
                            Lexeme::product(&built, opts.max_dfa_bytes)?
                        }
                        None => {
                            let (dfa, st) = build(re)?;
                            Lexeme::new(dfa, st)
                        }
                    };
                    let built = Arc::new(built);
                    if opts.share_lexemes {
                        LexemeCache::insert(key, built.clone());
                    }
                    built
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
            mask_cache: std::sync::Mutex::new(HashMap::new()),
            completion: std::sync::OnceLock::new(),
        })
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
}
