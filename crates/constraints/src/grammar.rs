//! The grammar intermediate form every constraint compiles to: a context-free grammar over
//! *lexemes* (regular expressions, each compiled to its own DFA).

use crate::{CompileOptions, ConstraintError};
use regex_automata::dfa::{dense, Automaton, StartKind};
use regex_automata::util::primitives::StateID;
use regex_automata::util::start;
use regex_automata::{Anchored, MatchKind};
use std::collections::HashMap;
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

/// One compiled lexeme.
#[derive(Debug)]
pub(crate) struct Lexeme {
    pub dfa: dense::DFA<Vec<u32>>,
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
            dfa,
            start,
            alive,
            stride2,
        }
    }
    #[inline]
    pub fn next(&self, s: StateID, b: u8) -> StateID {
        self.dfa.next_state(s, b)
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
        self.dfa.is_match_state(self.dfa.next_eoi_state(s))
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
    pub lexemes: Vec<Lexeme>,
    /// The synthetic start rule.
    pub start: u32,
    /// Mask parts that depend only on the live lexer states (see `engine::MaskEntry`).
    pub mask_cache: MaskCache,
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
        for re in &lexemes {
            if started.elapsed() > opts.max_compile_time {
                return Err(ConstraintError::Budget(format!(
                    "compile time over {:?}",
                    opts.max_compile_time
                )));
            }
            let full = match &skip {
                Some(s) => format!("(?:{s})(?:{re})"),
                None => re.clone(),
            };
            let dfa = compile_dfa(&full, opts)?;
            total += dfa.memory_usage();
            if total > opts.max_total_dfa_bytes {
                return Err(ConstraintError::Budget(format!(
                    "lexer automata use over {} bytes",
                    opts.max_total_dfa_bytes
                )));
            }
            let st = dfa
                .start_state(&start::Config::new().anchored(Anchored::Yes))
                .map_err(|e| ConstraintError::Regex {
                    pattern: re.clone(),
                    offset: 0,
                    message: e.to_string(),
                })?;
            lex.push(Lexeme::new(dfa, st));
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
