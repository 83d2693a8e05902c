//! Satisfiability of a compiled grammar before any generation: every constraint must have at
//! least one finite derivation from its start symbol.

use crate::grammar::{GrammarBuilder, Sym};
use crate::ConstraintError;

/// Errors with [`ConstraintError::Unsatisfiable`] when `root` derives no finite text: a rule
/// with no alternatives (`false`, `enum: []`) or rules that only recurse (`"$ref": "#"`,
/// `root ::= root "a"`). Lexemes count as non-empty. The message names `what` (the
/// constraint kind) and the first rule reachable from `root` with no finite derivation.
pub(crate) fn check_productive(
    b: &GrammarBuilder,
    root: Sym,
    what: &str,
) -> Result<(), ConstraintError> {
    let root = match root {
        Sym::T(_) => return Ok(()),
        Sym::N(r) => r as usize,
    };
    let n = b.rules.len();
    let mut productive = vec![false; n];
    // per (rule, alternative): how many nonterminals in it are not yet known productive
    let mut pending: Vec<Vec<usize>> = Vec::with_capacity(n);
    // rule -> (rule, alternative) pairs that mention it
    let mut users: Vec<Vec<(u32, u32)>> = vec![Vec::new(); n];
    let mut work = Vec::new();
    for (r, alts) in b.rules.iter().enumerate() {
        let mut counts = Vec::with_capacity(alts.len());
        for (a, alt) in alts.iter().enumerate() {
            let mut c = 0;
            for s in alt {
                if let Sym::N(x) = s {
                    c += 1;
                    users[*x as usize].push((r as u32, a as u32));
                }
            }
            if c == 0 && !productive[r] {
                productive[r] = true;
                work.push(r);
            }
            counts.push(c);
        }
        pending.push(counts);
    }
    while let Some(x) = work.pop() {
        for &(r, a) in &users[x] {
            let c = &mut pending[r as usize][a as usize];
            *c -= 1;
            if *c == 0 && !productive[r as usize] {
                productive[r as usize] = true;
                work.push(r as usize);
            }
        }
    }
    if productive[root] {
        return Ok(());
    }
    let name = |r: usize| b.rule_names.get(r).map_or("?", |s| s.as_str()).to_string();
    let detail = if b.rules[root].is_empty() {
        format!("rule `{}` has no alternative", name(root))
    } else {
        format!(
            "rule `{}` has no finite derivation (every alternative recurses or needs an \
             unsatisfiable part)",
            name(root)
        )
    };
    Err(ConstraintError::Unsatisfiable(format!(
        "no {what} satisfies it: {detail}"
    )))
}
