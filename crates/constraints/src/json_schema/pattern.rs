//! `pattern` (ECMA-style search) → a regex for the content of a JSON string.

use super::unsupported;
use crate::ConstraintError;

/// Converts an ECMA-style `pattern` (a search, unless anchored) into a regex for the content
/// of a JSON string: characters that JSON would escape are left out.
pub(super) fn pattern_to_content(p: &str, path: &str) -> Result<String, ConstraintError> {
    use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Hir, HirKind, Look};
    let hir = regex_syntax::ParserBuilder::new()
        .build()
        .parse(p)
        .map_err(|e| {
            let offset = match &e {
                regex_syntax::Error::Parse(x) => x.span().start.offset,
                regex_syntax::Error::Translate(x) => x.span().start.offset,
                _ => 0,
            };
            ConstraintError::Regex {
                pattern: p.to_string(),
                offset,
                message: format!("{e} (in `pattern` at {path})"),
            }
        })?;
    // characters allowed unescaped in a JSON string
    let mut allowed = ClassUnicode::new([ClassUnicodeRange::new('\u{20}', '\u{10FFFF}')]);
    allowed.difference(&ClassUnicode::new([
        ClassUnicodeRange::new('"', '"'),
        ClassUnicodeRange::new('\\', '\\'),
    ]));
    fn strip(h: &Hir) -> (Hir, bool, bool) {
        match h.kind() {
            HirKind::Concat(xs) => {
                let mut v: Vec<Hir> = xs.clone();
                let mut s = false;
                let mut e = false;
                if let Some(HirKind::Look(Look::Start | Look::StartLF)) =
                    v.first().map(|x| x.kind())
                {
                    v.remove(0);
                    s = true;
                }
                if let Some(HirKind::Look(Look::End | Look::EndLF)) = v.last().map(|x| x.kind()) {
                    v.pop();
                    e = true;
                }
                (Hir::concat(v), s, e)
            }
            HirKind::Capture(c) => strip(&c.sub),
            HirKind::Look(Look::Start | Look::StartLF) => (Hir::empty(), true, false),
            HirKind::Look(Look::End | Look::EndLF) => (Hir::empty(), false, true),
            HirKind::Alternation(xs) => {
                let parts: Vec<(Hir, bool, bool)> = xs.iter().map(strip).collect();
                let all_s = parts.iter().all(|p| p.1);
                let all_e = parts.iter().all(|p| p.2);
                if (all_s || parts.iter().all(|p| !p.1)) && (all_e || parts.iter().all(|p| !p.2)) {
                    (
                        Hir::alternation(parts.into_iter().map(|p| p.0).collect()),
                        all_s,
                        all_e,
                    )
                } else {
                    (h.clone(), false, false)
                }
            }
            _ => (h.clone(), false, false),
        }
    }
    fn map(h: &Hir, allowed: &ClassUnicode) -> Result<Hir, String> {
        Ok(match h.kind() {
            HirKind::Empty => Hir::empty(),
            HirKind::Literal(l) => {
                let s = String::from_utf8_lossy(&l.0).into_owned();
                if s.chars()
                    .any(|c| c == '"' || c == '\\' || (c as u32) < 0x20)
                {
                    return Ok(Hir::fail());
                }
                h.clone()
            }
            HirKind::Class(Class::Unicode(c)) => {
                let mut c = c.clone();
                c.intersect(allowed);
                Hir::class(Class::Unicode(c))
            }
            HirKind::Class(Class::Bytes(_)) => return Err("byte classes".into()),
            HirKind::Look(_) => return Err("anchors or word boundaries inside".into()),
            HirKind::Repetition(r) => {
                let mut r = r.clone();
                let sub = map(&r.sub, allowed)?;
                // group the operand so that printing cannot fuse operators (`+` `?` → `+?`)
                r.sub = Box::new(Hir::capture(regex_syntax::hir::Capture {
                    index: 1,
                    name: None,
                    sub: Box::new(sub),
                }));
                Hir::repetition(r)
            }
            HirKind::Capture(c) => map(&c.sub, allowed)?,
            HirKind::Concat(xs) => Hir::concat(
                xs.iter()
                    .map(|x| map(x, allowed))
                    .collect::<Result<_, _>>()?,
            ),
            HirKind::Alternation(xs) => Hir::alternation(
                xs.iter()
                    .map(|x| map(x, allowed))
                    .collect::<Result<_, _>>()?,
            ),
        })
    }
    let (core, s, e) = strip(&hir);
    let core = map(&core, &allowed).map_err(|m| unsupported(&format!("pattern ({m})"), path))?;
    let any = Hir::repetition(regex_syntax::hir::Repetition {
        min: 0,
        max: None,
        greedy: true,
        sub: Box::new(Hir::class(Class::Unicode(allowed.clone()))),
    });
    let mut parts = Vec::new();
    if !s {
        parts.push(any.clone());
    }
    parts.push(core);
    if !e {
        parts.push(any);
    }
    Ok(Hir::concat(parts).to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_like_search() {
        for (p, s, want) in [
            (
                r"^pbj:([a-z0-9-]+):([a-z0-9\.-]+):([a-z0-9-]+)?:([a-z0-9-]+):([0-9]+-[0-9]+-[0-9]+)$",
                "pbj:gdbots:contexts::app:1-0-0",
                true,
            ),
            ("^[a-z]+$", "abc", true),
            ("^[a-z]+$", "abc1", false),
            ("[0-9]", "x1y", true),
        ] {
            let c = pattern_to_content(p, "#").unwrap();
            let re = regex_automata::meta::Regex::new(&format!("^(?:{c})$")).unwrap();
            assert_eq!(re.is_match(s), want, "{p} on {s}: {c}");
        }
    }
}
