//! Regexes for the decimal spellings of the integers and numbers within bounds.

fn digits(x: u128) -> usize {
    x.to_string().len()
}

fn same_len(lo: &[u8], hi: &[u8], out: &mut String) {
    if lo.is_empty() {
        return;
    }
    if lo == hi {
        out.push_str(std::str::from_utf8(lo).unwrap_or(""));
        return;
    }
    if lo[0] == hi[0] {
        out.push(lo[0] as char);
        same_len(&lo[1..], &hi[1..], out);
        return;
    }
    let rest = lo.len() - 1;
    if lo[1..].iter().all(|&c| c == b'0') && hi[1..].iter().all(|&c| c == b'9') {
        out.push_str(&format!("[{}-{}]", lo[0] as char, hi[0] as char));
        if rest > 0 {
            out.push_str(&format!("[0-9]{{{rest}}}"));
        }
        return;
    }
    out.push_str("(?:");
    out.push(lo[0] as char);
    same_len(&lo[1..], &vec![b'9'; rest], out);
    if lo[0] + 1 < hi[0] {
        out.push_str(&format!(
            "|[{}-{}]",
            (lo[0] + 1) as char,
            (hi[0] - 1) as char
        ));
        if rest > 0 {
            out.push_str(&format!("[0-9]{{{rest}}}"));
        }
    }
    out.push('|');
    out.push(hi[0] as char);
    same_len(&vec![b'0'; rest], &hi[1..], out);
    out.push(')');
}

/// Regex for the decimal spellings (no leading zeros) of the integers in `[lo, hi]`.
fn nonneg_range(lo: u128, hi: Option<u128>) -> Option<String> {
    if hi.is_some_and(|h| h < lo) {
        return None;
    }
    let mut parts = Vec::new();
    let dl = digits(lo);
    let dh = hi.map_or(dl, digits);
    for len in dl..=dh {
        let a = if len == 1 {
            0
        } else {
            10u128.pow(len as u32 - 1)
        }
        .max(lo);
        let b = (10u128.pow(len as u32) - 1).min(hi.unwrap_or(u128::MAX));
        if a <= b {
            let mut s = String::new();
            same_len(a.to_string().as_bytes(), b.to_string().as_bytes(), &mut s);
            parts.push(s);
        }
    }
    if hi.is_none() {
        parts.push(format!("[1-9][0-9]{{{dl},}}"));
    }
    Some(format!("(?:{})", parts.join("|")))
}

/// Regex for integers in `[lo, hi]` (either side open).
pub(super) fn int_range_regex(lo: Option<i128>, hi: Option<i128>) -> Option<String> {
    if let (Some(l), Some(h)) = (lo, hi) {
        if l > h {
            return None;
        }
    }
    let mut parts = Vec::new();
    // non-negative side
    if hi.is_none_or(|h| h >= 0) {
        let a = lo.map_or(0, |l| l.max(0)) as u128;
        if let Some(r) = nonneg_range(a, hi.map(|h| h as u128)) {
            parts.push(r);
        }
    }
    // negative side: -v with v in [max(1, -hi), -lo]
    if lo.is_none_or(|l| l < 0) {
        let a = hi.map_or(1, |h| (-h).max(1)) as u128;
        if let Some(r) = nonneg_range(a, lo.map(|l| (-l) as u128)) {
            parts.push(format!("-{r}"));
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!("(?:{})", parts.join("|")))
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Frac {
    Any,
    Zero,
    NonZero,
}

type Piece = (u128, Option<u128>, Frac);

fn lower_pieces(a: i128, excl: bool) -> Vec<Piece> {
    if a < 0 || (a == 0 && !excl) {
        return vec![(0, None, Frac::Any)];
    }
    let a = a as u128;
    if excl {
        vec![(a + 1, None, Frac::Any), (a, Some(a), Frac::NonZero)]
    } else {
        vec![(a, None, Frac::Any)]
    }
}

fn upper_pieces(c: i128, excl: bool) -> Vec<Piece> {
    if c < 0 || (c == 0 && excl) {
        return vec![];
    }
    let c = c as u128;
    let mut v = Vec::new();
    if c >= 1 {
        v.push((0, Some(c - 1), Frac::Any));
    }
    if !excl {
        v.push((c, Some(c), Frac::Zero));
    }
    v
}

fn intersect(a: &[Piece], b: &[Piece]) -> Vec<Piece> {
    let mut out = Vec::new();
    for x in a {
        for y in b {
            let lo = x.0.max(y.0);
            let hi = match (x.1, y.1) {
                (Some(p), Some(q)) => Some(p.min(q)),
                (p, None) => p,
                (None, q) => q,
            };
            if hi.is_some_and(|h| h < lo) {
                continue;
            }
            let f = match (x.2, y.2) {
                (Frac::Any, f) | (f, Frac::Any) => f,
                (p, q) if p == q => p,
                _ => continue,
            };
            out.push((lo, hi, f));
        }
    }
    out
}

/// Regex for decimal numbers (no exponent) in the range given by integer bounds.
pub(super) fn number_range_regex(
    lo: Option<(i128, bool)>,
    hi: Option<(i128, bool)>,
) -> Option<String> {
    let all = vec![(0u128, None, Frac::Any)];
    let frac = |f: Frac| match f {
        Frac::Any => r"(?:\.[0-9]+)?",
        Frac::Zero => r"(?:\.0+)?",
        Frac::NonZero => r"\.[0-9]*[1-9][0-9]*",
    };
    let mut parts = Vec::new();
    // x >= 0
    let pos = intersect(
        &lo.map_or(all.clone(), |(a, e)| lower_pieces(a, e)),
        &hi.map_or(all.clone(), |(c, e)| upper_pieces(c, e)),
    );
    for (a, b, f) in pos {
        if let Some(r) = nonneg_range(a, b) {
            parts.push(format!("{r}{}", frac(f)));
        }
    }
    // x < 0: x = -v, v > 0
    let nonzero = vec![(1u128, None, Frac::Any), (0, Some(0), Frac::NonZero)];
    let neg = intersect(
        &intersect(
            &hi.map_or(all.clone(), |(c, e)| lower_pieces(-c, e)),
            &lo.map_or(all.clone(), |(a, e)| upper_pieces(-a, e)),
        ),
        &nonzero,
    );
    for (a, b, f) in neg {
        if let Some(r) = nonneg_range(a, b) {
            parts.push(format!("-{r}{}", frac(f)));
        }
    }
    if parts.is_empty() {
        None
    } else {
        Some(format!("(?:{})", parts.join("|")))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn full(re: &str, s: &str) -> bool {
        regex_automata::meta::Regex::new(&format!("^(?:{re})$"))
            .unwrap()
            .is_match(s)
    }

    #[test]
    fn integer_ranges_are_exact() {
        for (lo, hi) in [
            (Some(0), Some(100)),
            (Some(-15), Some(7)),
            (Some(3), None),
            (None, Some(-4)),
            (Some(18), Some(18)),
        ] {
            let re = int_range_regex(lo, hi).unwrap();
            for x in -250i128..250 {
                let want = lo.is_none_or(|l| x >= l) && hi.is_none_or(|h| x <= h);
                assert_eq!(
                    full(&re, &x.to_string()),
                    want,
                    "{x} in {lo:?}..{hi:?}: {re}"
                );
            }
        }
    }

    #[test]
    fn number_ranges_are_exact() {
        let cases = [
            (Some((0, false)), Some((10, false))),
            (Some((0, true)), None),
            (Some((-3, true)), Some((2, true))),
            (None, Some((-1, false))),
        ];
        for (lo, hi) in cases {
            let re = number_range_regex(lo, hi).unwrap();
            for s in [
                "0", "0.0", "0.5", "1", "2", "2.0", "2.5", "-1", "-1.0", "-0.5", "-3", "-3.5",
                "10", "10.0", "10.01", "11", "-2.99",
            ] {
                let x: f64 = s.parse().unwrap();
                let want = lo.is_none_or(|(l, e)| if e { x > l as f64 } else { x >= l as f64 })
                    && hi.is_none_or(|(h, e)| if e { x < h as f64 } else { x <= h as f64 });
                assert_eq!(full(&re, s), want, "{s} in {lo:?}..{hi:?}: {re}");
            }
        }
    }
}
