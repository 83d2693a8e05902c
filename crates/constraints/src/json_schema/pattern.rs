//! `pattern` (ECMA-style search) → a regex for the content of a JSON string.

use super::unsupported;
use crate::ConstraintError;

/// Converts an ECMA-style `pattern` (a search, unless anchored) into a regex for the content
/// of a JSON string: characters that JSON would escape are left out.
pub(super) fn pattern_to_content(p: &str, path: &str) -> Result<String, ConstraintError> {
    use regex_syntax::hir::{Class, ClassUnicode, ClassUnicodeRange, Hir, HirKind};
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
    let alts =
        anchored_alternatives(&hir).map_err(|m| unsupported(&format!("pattern ({m})"), path))?;
    let any = Hir::repetition(regex_syntax::hir::Repetition {
        min: 0,
        max: None,
        greedy: true,
        sub: Box::new(Hir::class(Class::Unicode(allowed.clone()))),
    });
    let mut branches = Vec::with_capacity(alts.len());
    for alt in alts {
        let core =
            map(&alt.core, &allowed).map_err(|m| unsupported(&format!("pattern ({m})"), path))?;
        let mut parts = Vec::new();
        if !alt.start {
            parts.push(any.clone());
        }
        parts.push(core);
        if !alt.end {
            parts.push(any.clone());
        }
        branches.push(Hir::concat(parts));
    }
    let parts = vec![Hir::alternation(branches)];
    Ok(Hir::concat(parts).to_string())
}

/// One alternative of a pattern with its anchors moved to its ends: it matches a text when
/// `core` matches a substring that starts at the text's start (if `start`) and ends at its
/// end (if `end`).
struct Anchored {
    start: bool,
    core: regex_syntax::hir::Hir,
    end: bool,
}

/// Most alternatives a pattern's anchors may be distributed into.
const MAX_ANCHORED_ALTERNATIVES: usize = 64;

/// The pattern as a union of [`Anchored`] alternatives: `^` and `$` inside groups and
/// alternations (`^A|B$`, `(^a|b)c`) are distributed outwards, so each alternative has its
/// anchors only at its ends. An anchor that could only hold part of the time (after text that
/// may or may not be empty, inside a repetition) or a word boundary is refused.
fn anchored_alternatives(h: &regex_syntax::hir::Hir) -> Result<Vec<Anchored>, String> {
    use regex_syntax::hir::{Hir, HirKind, Look};
    let plain = |h: &Hir| {
        vec![Anchored {
            start: false,
            core: h.clone(),
            end: false,
        }]
    };
    Ok(match h.kind() {
        HirKind::Look(Look::Start | Look::StartLF) => vec![Anchored {
            start: true,
            core: Hir::empty(),
            end: false,
        }],
        HirKind::Look(Look::End | Look::EndLF) => vec![Anchored {
            start: false,
            core: Hir::empty(),
            end: true,
        }],
        HirKind::Look(_) => return Err("word boundaries".into()),
        HirKind::Capture(c) => anchored_alternatives(&c.sub)?,
        HirKind::Alternation(xs) => {
            let mut out = Vec::new();
            for x in xs {
                out.extend(anchored_alternatives(x)?);
                if out.len() > MAX_ANCHORED_ALTERNATIVES {
                    return Err("too many anchored alternatives".into());
                }
            }
            out
        }
        HirKind::Concat(xs) => {
            let mut acc = vec![Anchored {
                start: false,
                core: Hir::empty(),
                end: false,
            }];
            for x in xs {
                let right = anchored_alternatives(x)?;
                let mut next = Vec::new();
                for l in &acc {
                    for r in &right {
                        if let Some(j) = join(l, r)? {
                            next.push(j);
                        }
                    }
                }
                if next.len() > MAX_ANCHORED_ALTERNATIVES {
                    return Err("too many anchored alternatives".into());
                }
                acc = next;
            }
            acc
        }
        HirKind::Repetition(r) => {
            if r.sub.properties().look_set().contains_anchor_haystack()
                || r.sub.properties().look_set().contains_anchor_line()
            {
                return Err("anchors inside a repetition".into());
            }
            plain(h)
        }
        HirKind::Empty | HirKind::Literal(_) | HirKind::Class(_) => plain(h),
    })
}

/// `l` followed by `r`; `None` when no text can match both (an anchor between non-empty
/// parts).
fn join(l: &Anchored, r: &Anchored) -> Result<Option<Anchored>, String> {
    use regex_syntax::hir::Hir;
    // text after an end anchor, or before a start anchor, must be empty
    let must_be_empty = |core: &Hir| -> Result<bool, String> {
        let p = core.properties();
        if p.maximum_len() == Some(0) {
            Ok(true)
        } else if p.minimum_len().is_none_or(|n| n > 0) {
            Ok(false)
        } else {
            Err("an anchor next to text that may be empty".into())
        }
    };
    if l.end && !must_be_empty(&r.core)? {
        return Ok(None);
    }
    if r.start && !must_be_empty(&l.core)? {
        return Ok(None);
    }
    Ok(Some(Anchored {
        start: l.start || r.start,
        core: Hir::concat(vec![l.core.clone(), r.core.clone()]),
        end: l.end || r.end,
    }))
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
