//! Earley parser over lexemes plus the lexer state: the per-sequence machinery behind
//! [`crate::ConstraintState`]. Everything lives in flat, reused buffers so stepping (during the
//! token-trie walk) does not allocate once the buffers have grown.

use crate::complete::{shortest_match, Tables, INF};
use crate::grammar::{CompiledGrammar, KIND_END, KIND_MASK, KIND_N, KIND_T, VAL_MASK};
use regex_automata::util::primitives::StateID;
use std::sync::Arc;

/// Open-addressing set of `u64` keys with generation stamps (clearing is O(1)).
#[derive(Debug, Clone)]
struct Dedup {
    keys: Vec<u64>,
    stamps: Vec<u32>,
    gen: u32,
    count: usize,
}

impl Dedup {
    fn new() -> Self {
        Self {
            keys: vec![0; 64],
            stamps: vec![0; 64],
            gen: 1,
            count: 0,
        }
    }
    fn clear(&mut self) {
        self.gen = self.gen.wrapping_add(1);
        if self.gen == 0 {
            self.stamps.fill(0);
            self.gen = 1;
        }
        self.count = 0;
    }
    #[inline]
    fn hash(k: u64, mask: usize) -> usize {
        (k.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 29) as usize & mask
    }
    /// Inserts; true when new.
    fn insert(&mut self, k: u64) -> bool {
        if (self.count + 1) * 2 > self.keys.len() {
            self.grow();
        }
        let mask = self.keys.len() - 1;
        let mut i = Self::hash(k, mask);
        loop {
            if self.stamps[i] != self.gen {
                self.stamps[i] = self.gen;
                self.keys[i] = k;
                self.count += 1;
                return true;
            }
            if self.keys[i] == k {
                return false;
            }
            i = (i + 1) & mask;
        }
    }
    fn grow(&mut self) {
        let old: Vec<u64> = self
            .keys
            .iter()
            .zip(&self.stamps)
            .filter(|(_, &s)| s == self.gen)
            .map(|(&k, _)| k)
            .collect();
        let n = self.keys.len() * 2;
        self.keys = vec![0; n];
        self.stamps = vec![0; n];
        self.gen = 1;
        self.count = 0;
        for k in old {
            self.insert(k);
        }
    }
}

/// The cheapest way to finish rule `rule` begun at some Earley set: after it, the item at
/// `pos` (whose next symbol is the rule) with origin `origin` goes on; `cost` counts bytes.
#[derive(Debug, Clone, Copy)]
struct Up {
    rule: u32,
    cost: u32,
    pos: u32,
    origin: u32,
}

/// A saved position of the parser stacks.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Frame {
    pub live_start: u32,
    pub live_end: u32,
    pub nsets: u32,
    pub items_len: u32,
    pub expect_len: u32,
}

/// Parser + lexer state of one sequence.
#[derive(Debug, Clone)]
pub(crate) struct Parser {
    pub g: Arc<CompiledGrammar>,
    /// Earley items: (dotted position << 32) | origin set.
    items: Vec<u64>,
    set_start: Vec<u32>,
    expect: Vec<u32>,
    expect_start: Vec<u32>,
    /// Live lexemes: (lexeme id, DFA state).
    pub live: Vec<(u32, StateID)>,
    dedup: Dedup,
    matched_mark: Vec<u32>,
    expect_mark: Vec<u32>,
    mark_gen: u32,
    /// The committed state.
    pub root: Frame,
    /// True while no byte of the current lexeme has been consumed (only at the start).
    pub fresh: bool,
    /// Per committed Earley set: how each rule predicted there is finished most cheaply
    /// (sorted by rule). Committed sets never change, so entries stay valid as the chart grows.
    up: Vec<Vec<Up>>,
}

impl Parser {
    pub fn new(g: Arc<CompiledGrammar>) -> Self {
        let nl = g.lexemes.len();
        let mut p = Self {
            g,
            items: Vec::with_capacity(256),
            set_start: Vec::with_capacity(64),
            expect: Vec::with_capacity(64),
            expect_start: Vec::with_capacity(64),
            live: Vec::with_capacity(256),
            dedup: Dedup::new(),
            matched_mark: vec![0; nl],
            expect_mark: vec![0; nl],
            mark_gen: 0,
            root: Frame::default(),
            fresh: true,
            up: Vec::new(),
        };
        // set 0
        p.set_start.push(0);
        p.expect_start.push(0);
        p.dedup.clear();
        p.next_gen();
        let g = p.g.clone();
        for &pos in &g.rule_prods[g.start as usize] {
            p.add(pos, 0);
        }
        p.closure(0);
        let (a, b) = p.expect_range(0);
        for i in a..b {
            let l = p.expect[i] as usize;
            let lx = &g.lexemes[l];
            p.live.push((l as u32, lx.start));
        }
        p.root = p.frame_here(0, p.live.len() as u32);
        p
    }

    pub fn frame_here(&self, live_start: u32, live_end: u32) -> Frame {
        Frame {
            live_start,
            live_end,
            nsets: self.set_start.len() as u32,
            items_len: self.items.len() as u32,
            expect_len: self.expect.len() as u32,
        }
    }

    #[inline]
    fn next_gen(&mut self) {
        self.mark_gen = self.mark_gen.wrapping_add(1);
        if self.mark_gen == 0 {
            self.matched_mark.fill(0);
            self.expect_mark.fill(0);
            self.mark_gen = 1;
        }
    }

    #[inline]
    fn add(&mut self, pos: u32, origin: u32) {
        let k = ((pos as u64) << 32) | origin as u64;
        if self.dedup.insert(k) {
            self.items.push(k);
        }
    }

    fn set_range(&self, k: usize) -> (usize, usize) {
        let a = self.set_start[k] as usize;
        let b = self
            .set_start
            .get(k + 1)
            .map_or(self.items.len(), |&x| x as usize);
        (a, b)
    }

    fn expect_range(&self, k: usize) -> (usize, usize) {
        let a = self.expect_start[k] as usize;
        let b = self
            .expect_start
            .get(k + 1)
            .map_or(self.expect.len(), |&x| x as usize);
        (a, b)
    }

    /// Predict/complete closure of the last set (index `cur`), recording expected lexemes.
    fn closure(&mut self, cur: u32) {
        let g = self.g.clone();
        let mut j = self.set_start[cur as usize] as usize;
        while j < self.items.len() {
            let it = self.items[j];
            let pos = (it >> 32) as u32;
            let origin = it as u32;
            let s = g.syms[pos as usize];
            match s & KIND_MASK {
                KIND_END if origin != cur => {
                    let lhs = g.prod_lhs[(s & VAL_MASK) as usize];
                    let want = KIND_N | lhs;
                    let (a, b) = self.set_range(origin as usize);
                    for i in a..b {
                        let it2 = self.items[i];
                        let p2 = (it2 >> 32) as u32;
                        if g.syms[p2 as usize] == want {
                            self.add(p2 + 1, it2 as u32);
                        }
                    }
                }
                KIND_N => {
                    let r = (s & VAL_MASK) as usize;
                    for &p in &g.rule_prods[r] {
                        self.add(p, cur);
                    }
                    if g.nullable[r] {
                        self.add(pos + 1, origin);
                    }
                }
                KIND_T => {
                    let l = (s & VAL_MASK) as usize;
                    if self.expect_mark[l] != self.mark_gen {
                        self.expect_mark[l] = self.mark_gen;
                        self.expect.push(l as u32);
                    }
                }
                _ => {}
            }
            j += 1;
        }
    }

    /// Scans the lexemes marked in `matched_mark` (current generation) from the last set into
    /// a new set. False (and nothing pushed) when no item advances.
    fn push_set(&mut self) -> bool {
        let g = self.g.clone();
        let last = self.set_start.len() - 1;
        let (a, b) = self.set_range(last);
        let cur = self.set_start.len() as u32;
        self.set_start.push(self.items.len() as u32);
        self.expect_start.push(self.expect.len() as u32);
        self.dedup.clear();
        for i in a..b {
            let it = self.items[i];
            let pos = (it >> 32) as u32;
            let s = g.syms[pos as usize];
            if s & KIND_MASK == KIND_T
                && self.matched_mark[(s & VAL_MASK) as usize] == self.mark_gen
            {
                self.add(pos + 1, it as u32);
            }
        }
        if self.items.len() == self.set_start[cur as usize] as usize {
            self.set_start.pop();
            self.expect_start.pop();
            return false;
        }
        self.closure(cur);
        true
    }

    fn set_accepts(&self, k: usize) -> bool {
        let (a, b) = self.set_range(k);
        let g = &self.g;
        self.items[a..b].iter().any(|&it| {
            let s = g.syms[(it >> 32) as usize];
            s & KIND_MASK == KIND_END
                && it as u32 == 0
                && g.prod_lhs[(s & VAL_MASK) as usize] == g.start
        })
    }

    /// Restores the stacks to `f` (which must be on the current stack path).
    #[inline]
    pub fn restore(&mut self, f: Frame) {
        self.live.truncate(f.live_end as usize);
        self.set_start.truncate(f.nsets as usize);
        self.expect_start.truncate(f.nsets as usize);
        self.items.truncate(f.items_len as usize);
        self.expect.truncate(f.expect_len as usize);
    }

    /// Consumes byte `b` from the state `parent` (the top of the stacks). Returns the new
    /// frame, or `None` (stacks unchanged) when `b` is not allowed.
    #[inline]
    pub fn step(&mut self, parent: Frame, b: u8) -> Option<Frame> {
        if let Some(f) = self.lex_step(parent, b) {
            return Some(f);
        }
        self.step_boundary(parent, b)
    }

    /// The lexer-only part of a step: `b` continues one of the live lexemes.
    #[inline]
    pub fn lex_step(&mut self, parent: Frame, b: u8) -> Option<Frame> {
        let g = &*self.g;
        let ls = self.live.len();
        for i in parent.live_start as usize..parent.live_end as usize {
            let (l, s) = self.live[i];
            let lx = &g.lexemes[l as usize];
            let t = lx.next(s, b);
            if !lx.is_dead(t) {
                self.live.push((l, t));
            }
        }
        if self.live.len() > ls {
            Some(Frame {
                live_start: ls as u32,
                live_end: self.live.len() as u32,
                ..parent
            })
        } else {
            None
        }
    }

    #[cold]
    fn step_boundary(&mut self, parent: Frame, b: u8) -> Option<Frame> {
        if !self.boundary_push(parent) {
            return None;
        }
        match self.start_step(b) {
            Some(f) => Some(f),
            None => {
                self.restore(parent);
                None
            }
        }
    }

    /// Ends the current lexeme of `parent` (scanning every live lexeme in a match state) and
    /// pushes the resulting Earley set. False (nothing pushed) when impossible.
    pub fn boundary_push(&mut self, parent: Frame) -> bool {
        self.mark_matched(parent) && self.push_set()
    }

    /// After [`boundary_push`](Self::boundary_push): starts the expected lexemes with byte
    /// `b`. `None` (live stack unchanged) when none accepts it.
    #[inline]
    pub fn start_step(&mut self, b: u8) -> Option<Frame> {
        let g = &*self.g;
        let ls = self.live.len();
        let k = self.set_start.len() - 1;
        let a = self.expect_start[k] as usize;
        for i in a..self.expect.len() {
            let l = self.expect[i];
            let lx = &g.lexemes[l as usize];
            let t = lx.next(lx.start, b);
            if !lx.is_dead(t) {
                self.live.push((l, t));
            }
        }
        if self.live.len() == ls {
            return None;
        }
        Some(self.frame_here(ls as u32, self.live.len() as u32))
    }

    /// True when some live lexeme of `f` is in a match state.
    pub fn any_matched(&self, f: Frame) -> bool {
        let g = &*self.g;
        self.live[f.live_start as usize..f.live_end as usize]
            .iter()
            .any(|&(l, s)| g.lexemes[l as usize].is_match(s))
    }

    /// Pushes `entries` as the live set of a new frame over the chart of `base` (the top).
    pub fn push_live(&mut self, base: Frame, entries: &[(u32, StateID)]) -> Frame {
        let ls = self.live.len();
        self.live.extend_from_slice(entries);
        Frame {
            live_start: ls as u32,
            live_end: self.live.len() as u32,
            ..base
        }
    }

    /// The live entries of `f`.
    pub fn live_of(&self, f: Frame) -> &[(u32, StateID)] {
        &self.live[f.live_start as usize..f.live_end as usize]
    }

    /// Marks the live lexemes of `f` that are in a match state; true when any is.
    fn mark_matched(&mut self, f: Frame) -> bool {
        self.next_gen();
        let g = &*self.g;
        let mut any = false;
        for i in f.live_start as usize..f.live_end as usize {
            let (l, s) = self.live[i];
            if g.lexemes[l as usize].is_match(s) {
                self.matched_mark[l as usize] = self.mark_gen;
                any = true;
            }
        }
        any
    }

    /// True when the text so far is a complete sentence of the grammar.
    pub fn accepting(&mut self, f: Frame, fresh: bool) -> bool {
        if fresh && self.set_accepts(f.nsets as usize - 1) {
            return true;
        }
        if !self.mark_matched(f) {
            return false;
        }
        if !self.push_set() {
            return false;
        }
        let acc = self.set_accepts(self.set_start.len() - 1);
        self.restore(f);
        acc
    }

    /// Makes `f` (reached by steps from the root) the new committed root.
    pub fn commit_frame(&mut self, f: Frame) {
        let (a, b) = (f.live_start as usize, f.live_end as usize);
        self.live.copy_within(a..b, 0);
        self.live.truncate(b - a);
        self.root = Frame {
            live_start: 0,
            live_end: (b - a) as u32,
            ..f
        };
        self.fresh = false;
    }

    /// The cost of finishing `rule` begun at set `o` (0 for the start rule at set 0: the
    /// text is then complete), with the parent item that continues.
    fn up_cost(&self, rule: u32, o: u32) -> (u32, Option<Up>) {
        if rule == self.g.start && o == 0 {
            return (0, None);
        }
        let v = &self.up[o as usize];
        match v.binary_search_by_key(&rule, |u| u.rule) {
            Ok(i) => (v[i].cost, Some(v[i])),
            Err(_) => (INF, None),
        }
    }

    /// Fills [`Up`] entries for the committed sets not yet covered (`nsets` of them in all).
    fn fill_up(&mut self, t: &Tables, nsets: usize) {
        let g = self.g.clone();
        while self.up.len() < nsets {
            let o = self.up.len();
            let (a, b) = self.set_range(o);
            let mut entries: Vec<Up> = self.items[a..b]
                .iter()
                .map(|&it| g.syms[(it >> 32) as usize])
                .filter(|&s| s & KIND_MASK == KIND_N)
                .map(|s| Up {
                    rule: s & VAL_MASK,
                    cost: INF,
                    pos: 0,
                    origin: 0,
                })
                .collect();
            entries.sort_by_key(|u| u.rule);
            entries.dedup_by_key(|u| u.rule);
            self.up.push(entries);
            // Items of this set whose origin is this set refer to its own entries:
            // relax until nothing improves (only strict improvements, so it ends).
            loop {
                let mut changed = false;
                for i in a..b {
                    let it = self.items[i];
                    let pos = (it >> 32) as u32;
                    let origin = it as u32;
                    let s = g.syms[pos as usize];
                    if s & KIND_MASK != KIND_N {
                        continue;
                    }
                    let (parent, _) = self.up_cost(t.pos_lhs[pos as usize], origin);
                    let c = t.suffix[pos as usize + 1].saturating_add(parent);
                    let v = &mut self.up[o];
                    if let Ok(j) = v.binary_search_by_key(&(s & VAL_MASK), |u| u.rule) {
                        if c < v[j].cost {
                            v[j].cost = c;
                            v[j].pos = pos;
                            v[j].origin = origin;
                            changed = true;
                        }
                    }
                }
                if !changed {
                    break;
                }
            }
        }
    }

    /// The fewest bytes that complete the committed text (empty when `accepting`); `None`
    /// when no completion is found. Finishes one live lexeme along its automaton's shortest
    /// path, then the rest of every enclosing production, cheapest parent first.
    pub fn shortest_completion(&mut self, accepting: bool) -> Option<Vec<u8>> {
        if accepting {
            return Some(Vec::new());
        }
        let g = self.g.clone();
        let t = g.completion.get_or_init(|| Tables::new(&g));
        let root = self.root;
        self.restore(root);
        self.fill_up(t, root.nsets as usize);
        let (a, b) = self.set_range(root.nsets as usize - 1);
        // (cost, lexeme path, item position, item origin)
        let mut best: Option<(u32, Vec<u8>, u32, u32)> = None;
        for li in root.live_start as usize..root.live_end as usize {
            let (l, st) = self.live[li];
            let want = KIND_T | l;
            let mut path: Option<Option<Vec<u8>>> = None;
            for i in a..b {
                let it = self.items[i];
                let pos = (it >> 32) as u32;
                if g.syms[pos as usize] != want {
                    continue;
                }
                let origin = it as u32;
                let p = path.get_or_insert_with(|| shortest_match(&g.lexemes[l as usize], st));
                let Some(p) = p else { break };
                let (parent, _) = self.up_cost(t.pos_lhs[pos as usize], origin);
                let c = (p.len() as u32)
                    .saturating_add(t.suffix[pos as usize + 1])
                    .saturating_add(parent);
                if c < INF && best.as_ref().is_none_or(|x| c < x.0) {
                    best = Some((c, p.clone(), pos, origin));
                }
            }
        }
        let (_, mut out, mut pos, mut origin) = best?;
        // Each step moves to a parent item; more steps than items would mean a cycle.
        for _ in 0..=self.items.len() {
            if !t.expand_suffix(&g, pos + 1, &mut out) {
                return None;
            }
            match self.up_cost(t.pos_lhs[pos as usize], origin) {
                (0, None) => return Some(out),
                (_, Some(u)) if u.cost < INF => {
                    pos = u.pos;
                    origin = u.origin;
                }
                _ => return None,
            }
        }
        None
    }
}
