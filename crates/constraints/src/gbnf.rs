//! GBNF (llama.cpp's grammar format) → grammar. Every terminal is one character, so each
//! character class is a lexeme and string literals are sequences of one-character lexemes.

use crate::error::Position;
use crate::grammar::{GrammarBuilder, Sym};
use crate::{CompileOptions, ConstraintError};
use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Hir};
use std::collections::HashMap;

#[derive(Debug, Clone)]
enum Atom {
    Literal(Vec<char>),
    Class(ClassUnicode),
    Ref(String, usize),
    Group(Vec<Vec<Term>>),
}

#[derive(Debug, Clone)]
struct Term {
    atom: Atom,
    min: u32,
    max: Option<u32>,
}

struct P<'a> {
    src: &'a str,
    pos: usize,
}

fn is_name_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || c == '-' || c == '_'
}

impl<'a> P<'a> {
    fn err(&self, at: usize, msg: impl Into<String>) -> ConstraintError {
        ConstraintError::GrammarSyntax {
            position: Position::in_text(self.src, at),
            message: msg.into(),
        }
    }
    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }
    fn bump(&mut self) -> Option<char> {
        let c = self.peek()?;
        self.pos += c.len_utf8();
        Some(c)
    }
    /// Skips spaces, tabs, comments and (when `nl`) newlines.
    fn ws(&mut self, nl: bool) {
        while let Some(c) = self.peek() {
            if c == ' ' || c == '\t' || (nl && (c == '\n' || c == '\r')) {
                self.bump();
            } else if c == '#' {
                while let Some(c) = self.peek() {
                    if c == '\n' {
                        break;
                    }
                    self.bump();
                }
            } else {
                break;
            }
        }
    }
    fn name(&mut self) -> Option<String> {
        let start = self.pos;
        while self.peek().is_some_and(is_name_char) {
            self.bump();
        }
        (self.pos > start).then(|| self.src[start..self.pos].to_string())
    }
    /// True when the text at the cursor starts a new rule (`name ::=`), or is the end.
    fn at_rule_start(&self) -> bool {
        let mut q = P {
            src: self.src,
            pos: self.pos,
        };
        q.ws(true);
        if q.peek().is_none() {
            return true;
        }
        if q.name().is_none() {
            return false;
        }
        q.ws(false);
        q.src[q.pos..].starts_with("::=")
    }
    fn escape(&mut self) -> Result<char, ConstraintError> {
        let at = self.pos;
        let c = self
            .bump()
            .ok_or_else(|| self.err(at, "unfinished escape"))?;
        let hex = |p: &mut Self, n: usize| -> Result<char, ConstraintError> {
            let s = p.pos;
            for _ in 0..n {
                if !p.peek().is_some_and(|c| c.is_ascii_hexdigit()) {
                    return Err(p.err(p.pos, format!("expected {n} hex digits")));
                }
                p.bump();
            }
            let v = u32::from_str_radix(&p.src[s..p.pos], 16).unwrap_or(0);
            char::from_u32(v).ok_or_else(|| p.err(s, "invalid code point"))
        };
        Ok(match c {
            'n' => '\n',
            't' => '\t',
            'r' => '\r',
            '0' => '\0',
            'x' => hex(self, 2)?,
            'u' => hex(self, 4)?,
            'U' => hex(self, 8)?,
            '\\' | '"' | '[' | ']' | '-' | '^' | '\'' | '/' | '.' | '*' | '+' | '?' | '(' | ')'
            | '{' | '}' | '|' => c,
            _ => return Err(self.err(at - 1, format!("unknown escape \\{c}"))),
        })
    }
    fn class(&mut self) -> Result<ClassUnicode, ConstraintError> {
        let open = self.pos - 1;
        let neg = if self.peek() == Some('^') {
            self.bump();
            true
        } else {
            false
        };
        let mut ranges = Vec::new();
        loop {
            let at = self.pos;
            let c = match self.bump() {
                None => return Err(self.err(open, "unterminated character class")),
                Some(']') => break,
                Some('\\') => self.escape()?,
                Some(c) => c,
            };
            let hi = if self.peek() == Some('-') && !self.src[self.pos + 1..].starts_with(']') {
                self.bump();
                match self.bump() {
                    None => return Err(self.err(open, "unterminated character class")),
                    Some('\\') => self.escape()?,
                    Some(h) => h,
                }
            } else {
                c
            };
            if hi < c {
                return Err(self.err(at, "character range out of order"));
            }
            ranges.push(ClassUnicodeRange::new(c, hi));
        }
        let mut cls = ClassUnicode::new(ranges);
        if neg {
            cls.negate();
        }
        Ok(cls)
    }
    fn number(&mut self) -> Option<u32> {
        let s = self.pos;
        while self.peek().is_some_and(|c| c.is_ascii_digit()) {
            self.bump();
        }
        self.src[s..self.pos].parse().ok()
    }
    fn alternatives(&mut self, depth: usize) -> Result<Vec<Vec<Term>>, ConstraintError> {
        if depth > 200 {
            return Err(self.err(self.pos, "groups nested too deeply"));
        }
        let mut alts = vec![self.sequence(depth)?];
        loop {
            let save = self.pos;
            self.ws(true);
            if self.peek() == Some('|') {
                self.bump();
                self.ws(true);
                alts.push(self.sequence(depth)?);
            } else {
                self.pos = save;
                return Ok(alts);
            }
        }
    }
    fn sequence(&mut self, depth: usize) -> Result<Vec<Term>, ConstraintError> {
        let mut seq = Vec::new();
        loop {
            self.ws(depth > 0);
            if depth == 0 && matches!(self.peek(), Some('\n') | Some('\r')) {
                if self.at_rule_start() {
                    return Ok(seq);
                }
                // continuation line: is the next thing `|`? then let alternatives handle it
                let save = self.pos;
                self.ws(true);
                if self.peek() == Some('|') {
                    return Ok(seq);
                }
                self.pos = save;
                self.ws(true);
                continue;
            }
            let at = self.pos;
            let atom = match self.peek() {
                None | Some('|') | Some(')') => return Ok(seq),
                Some('"') => {
                    self.bump();
                    let mut s = Vec::new();
                    loop {
                        match self.bump() {
                            None => return Err(self.err(at, "unterminated string literal")),
                            Some('"') => break,
                            Some('\\') => s.push(self.escape()?),
                            Some(c) => s.push(c),
                        }
                    }
                    Atom::Literal(s)
                }
                Some('[') => {
                    self.bump();
                    Atom::Class(self.class()?)
                }
                Some('.') => {
                    self.bump();
                    Atom::Class(ClassUnicode::new([ClassUnicodeRange::new(
                        '\0',
                        '\u{10FFFF}',
                    )]))
                }
                Some('(') => {
                    self.bump();
                    let alts = self.alternatives(depth + 1)?;
                    self.ws(true);
                    if self.bump() != Some(')') {
                        return Err(self.err(at, "unclosed `(`"));
                    }
                    Atom::Group(alts)
                }
                Some('<') | Some('!') => {
                    return Err(ConstraintError::Unsupported {
                        keyword: "token reference (<...>)".into(),
                        path: Position::in_text(self.src, at).to_string(),
                    })
                }
                Some(c) if is_name_char(c) => {
                    let n = self.name().unwrap_or_default();
                    let mut q = P {
                        src: self.src,
                        pos: self.pos,
                    };
                    q.ws(false);
                    if q.src[q.pos..].starts_with("::=") {
                        return Err(self.err(at, "missing newline before a new rule"));
                    }
                    Atom::Ref(n, at)
                }
                Some(c) => return Err(self.err(at, format!("unexpected character {c:?}"))),
            };
            let mut term = Term {
                atom,
                min: 1,
                max: Some(1),
            };
            self.ws(false);
            match self.peek() {
                Some('*') => {
                    self.bump();
                    term.min = 0;
                    term.max = None;
                }
                Some('+') => {
                    self.bump();
                    term.max = None;
                }
                Some('?') => {
                    self.bump();
                    term.min = 0;
                }
                Some('{') => {
                    let b = self.pos;
                    self.bump();
                    self.ws(false);
                    let m = self
                        .number()
                        .ok_or_else(|| self.err(b, "expected a number after `{`"))?;
                    self.ws(false);
                    let mx = if self.peek() == Some(',') {
                        self.bump();
                        self.ws(false);
                        if self.peek() == Some('}') {
                            None
                        } else {
                            Some(
                                self.number()
                                    .ok_or_else(|| self.err(b, "expected a number"))?,
                            )
                        }
                    } else {
                        Some(m)
                    };
                    self.ws(false);
                    if self.bump() != Some('}') {
                        return Err(self.err(b, "unclosed `{`"));
                    }
                    if mx.is_some_and(|x| x < m) {
                        return Err(self.err(b, "repetition max below min"));
                    }
                    term.min = m;
                    term.max = mx;
                }
                _ => {}
            }
            seq.push(term);
        }
    }
}

/// Parses GBNF text into a grammar builder and its root symbol.
pub(crate) fn compile(
    text: &str,
    opts: &CompileOptions,
) -> Result<(GrammarBuilder, Sym), ConstraintError> {
    let mut p = P { src: text, pos: 0 };
    let mut defs: Vec<(String, usize, Vec<Vec<Term>>)> = Vec::new();
    loop {
        p.ws(true);
        if p.peek().is_none() {
            break;
        }
        let at = p.pos;
        let name = p.name().ok_or_else(|| p.err(at, "expected a rule name"))?;
        p.ws(false);
        if !p.src[p.pos..].starts_with("::=") {
            return Err(p.err(p.pos, "expected `::=`"));
        }
        p.pos += 3;
        p.ws(true);
        let alts = p.alternatives(0)?;
        p.ws(false);
        match p.peek() {
            None | Some('\n') | Some('\r') => {}
            Some(c) => return Err(p.err(p.pos, format!("unexpected {c:?}"))),
        }
        defs.push((name, at, alts));
    }
    let mut b = GrammarBuilder::default();
    let mut ids: HashMap<String, u32> = HashMap::new();
    for (name, at, _) in &defs {
        if ids.contains_key(name) {
            return Err(p.err(*at, format!("rule `{name}` defined twice")));
        }
        let id = b.new_rule(name);
        ids.insert(name.clone(), id);
    }
    let Some(&root) = ids.get("root") else {
        return Err(ConstraintError::InvalidGrammar("no `root` rule".into()));
    };
    let mut cx = Cx {
        b: &mut b,
        ids: &ids,
        src: text,
        max_repeat: opts.max_repeat,
    };
    for (name, _, alts) in &defs {
        let id = ids[name];
        let a = cx.alts(alts)?;
        cx.b.set_rule(id, a);
    }
    crate::satisfiable::check_productive(&b, Sym::N(root), "text")?;
    Ok((b, Sym::N(root)))
}

struct Cx<'a> {
    b: &'a mut GrammarBuilder,
    ids: &'a HashMap<String, u32>,
    src: &'a str,
    max_repeat: usize,
}

impl Cx<'_> {
    fn alts(&mut self, alts: &[Vec<Term>]) -> Result<Vec<Vec<Sym>>, ConstraintError> {
        alts.iter().map(|s| self.seq(s)).collect()
    }
    fn seq(&mut self, seq: &[Term]) -> Result<Vec<Sym>, ConstraintError> {
        let mut out = Vec::new();
        for t in seq {
            let body = self.atom(&t.atom)?;
            if t.min == 1 && t.max == Some(1) {
                out.extend(body);
            } else {
                out.push(self.b.repeat(body, t.min, t.max, self.max_repeat)?);
            }
        }
        Ok(out)
    }
    fn atom(&mut self, a: &Atom) -> Result<Vec<Sym>, ConstraintError> {
        Ok(match a {
            Atom::Literal(cs) => cs.iter().map(|c| self.b.literal(&c.to_string())).collect(),
            Atom::Class(c) => {
                if c.ranges().is_empty() {
                    vec![self.b.rule("empty-class", vec![])]
                } else {
                    let re = Hir::class(Class::Unicode(c.clone())).to_string();
                    vec![self.b.lexeme(&re)]
                }
            }
            Atom::Ref(n, at) => match self.ids.get(n) {
                Some(&id) => vec![Sym::N(id)],
                None => {
                    return Err(ConstraintError::GrammarSyntax {
                        position: Position::in_text(self.src, *at),
                        message: format!("undefined rule `{n}`"),
                    })
                }
            },
            Atom::Group(alts) => {
                let a = self.alts(alts)?;
                vec![self.b.rule("group", a)]
            }
        })
    }
}
