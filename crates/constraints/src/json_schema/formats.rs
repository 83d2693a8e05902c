//! `format` keywords as regexes for the content of a JSON string.
//!
//! Each format is a list of regexes a string must all match (a product lexeme where there is
//! more than one: a structure and a length window). Every string they accept is one the
//! `jsonschema` crate's format check accepts (a property test draws strings from each
//! format's automaton and validates them); where exactness would cost too much, the regexes
//! leave out rare valid forms instead (leap seconds, bracketed IP hosts, quoted e-mail local
//! parts, non-ASCII characters, `xn--` labels).

use super::unsupported;
use crate::ConstraintError;

const DATE: &str = concat!(
    "(?:[0-9]{4}-(?:(?:0[13578]|1[02])-(?:0[1-9]|[12][0-9]|3[01])",
    "|(?:0[469]|11)-(?:0[1-9]|[12][0-9]|30)",
    "|02-(?:0[1-9]|1[0-9]|2[0-8]))",
    // 29 February of a leap year: divisible by 4 but not 100, or by 400
    "|(?:[0-9]{2}(?:0[48]|[2468][048]|[13579][26])|(?:0[48]|[2468][048]|[13579][26])00)-02-29)"
);
/// `HH:MM:SS[.frac](Z|±HH:MM)`; no leap second (the validator takes `:60` only at 23:59 UTC).
const TIME: &str = concat!(
    r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:[0-5][0-9](?:\.[0-9]+)?",
    r"(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])"
);
/// A host name label: 1 to 63 letters, digits and inner hyphens, never `--` as its third and
/// fourth characters (reserved for IDNA `xn--` labels, which the validator decodes).
const LABEL: &str = concat!(
    "(?:[a-zA-Z0-9]",
    "|[a-zA-Z0-9][a-zA-Z0-9]",
    "|[a-zA-Z0-9][a-zA-Z0-9-][a-zA-Z0-9]",
    "|[a-zA-Z0-9][a-zA-Z0-9-][a-zA-Z0-9-][a-zA-Z0-9]",
    "|[a-zA-Z0-9][a-zA-Z0-9-](?:[a-zA-Z0-9][a-zA-Z0-9-]|-[a-zA-Z0-9])[a-zA-Z0-9-]{0,58}[a-zA-Z0-9])"
);
/// `atext` of RFC 5322 (ASCII): an e-mail local part is a dot-separated run of these.
const ATEXT: &str = r"[a-zA-Z0-9!#$%&'*+/=?^_`{|}~-]";
const OCTET: &str = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
const H16: &str = "[0-9a-fA-F]{1,4}";
/// unreserved / sub-delims of RFC 3986, and a percent-encoding.
const URI_REG: &str = r"(?:[A-Za-z0-9\-._~!$&'()*+,;=]|%[0-9a-fA-F]{2})";

fn hostname() -> String {
    format!(r"{LABEL}(?:\.{LABEL})*")
}

fn ipv4() -> String {
    format!(r"(?:{OCTET}\.){{3}}{OCTET}")
}

/// RFC 3986 `IPv6address`.
fn ipv6() -> String {
    let ls32 = format!("(?:{H16}:{H16}|{})", ipv4());
    let h = |n: usize| format!("(?:{H16}:){{{n}}}");
    // up to `n` groups then one more, before `::`
    let head = |n: usize| format!("(?:(?:{H16}:){{0,{n}}}{H16})?");
    [
        format!("{}{ls32}", h(6)),
        format!("::{}{ls32}", h(5)),
        format!("{}::{}{ls32}", head(0), h(4)),
        format!("{}::{}{ls32}", head(1), h(3)),
        format!("{}::{}{ls32}", head(2), h(2)),
        format!("{}::{}{ls32}", head(3), h(1)),
        format!("{}::{ls32}", head(4)),
        format!("{}::{H16}", head(5)),
        format!("{}::", head(6)),
    ]
    .iter()
    .map(|x| format!("(?:{x})"))
    .collect::<Vec<_>>()
    .join("|")
}

/// RFC 3339 `duration` (ISO 8601 as the validator reads it: each unit once, in order).
fn duration() -> String {
    let d = "[0-9]+";
    let date = format!("(?:{d}Y(?:{d}M(?:{d}D)?)?|{d}M(?:{d}D)?|{d}D)");
    let time = format!("T(?:{d}H(?:{d}M(?:{d}S)?)?|{d}M(?:{d}S)?|{d}S)");
    format!("P(?:{date}(?:{time})?|{time}|{d}W)")
}

/// `(authority, path after an authority, path without one, relative path, query/fragment)`
/// of RFC 3986, ASCII only, no bracketed IP literal.
fn uri_parts() -> (String, String, String, String, String) {
    let pchar = format!("(?:{URI_REG}|[:@])");
    let pchar_nc = format!("(?:{URI_REG}|@)");
    let authority = format!("(?:(?:{URI_REG}|:)*@)?{URI_REG}*(?::[0-9]*)?");
    let path_abempty = format!("(?:/(?:{pchar}|/)*)?");
    // never `//` at the start (that would read as an authority)
    let path_noauth = format!("(?:/(?:{pchar}(?:{pchar}|/)*)?|{pchar}(?:{pchar}|/)*)?");
    // the first segment of a relative reference has no `:` (it would read as a scheme)
    let path_rel = format!("(?:/(?:{pchar}(?:{pchar}|/)*)?|{pchar_nc}+(?:/(?:{pchar}|/)*)?)?");
    let query = format!(r"(?:\?(?:{pchar}|[/?])*)?(?:#(?:{pchar}|[/?])*)?");
    (authority, path_abempty, path_noauth, path_rel, query)
}

fn uri() -> String {
    let (auth, abempty, noauth, _, query) = uri_parts();
    format!("[a-zA-Z][a-zA-Z0-9+.-]*:(?://{auth}{abempty}|{noauth}){query}")
}

fn uri_reference() -> String {
    let (auth, abempty, _, rel, query) = uri_parts();
    format!("(?:{}|(?://{auth}{abempty}|{rel}){query})", uri())
}

fn email() -> Vec<String> {
    vec![
        format!(r"{ATEXT}+(?:\.{ATEXT}+)*@{}", hostname()),
        // local part at most 64 octets, domain at most 253
        "[^@]{1,64}@[^@]{1,253}".to_string(),
    ]
}

/// The regexes (all must match) for the *content* of a JSON string (between the quotes) in a
/// known `format`; `Ok(None)` for formats that are only annotations here (unknown names).
/// Formats the validator checks but that are not compiled are [`ConstraintError::Unsupported`].
pub(super) fn format_regex(f: &str, path: &str) -> Result<Option<Vec<String>>, ConstraintError> {
    Ok(Some(match f {
        "date" => vec![DATE.to_string()],
        "time" => vec![TIME.to_string()],
        "date-time" => vec![format!("{DATE}[Tt]{TIME}")],
        // ASCII addresses and names are valid IDN ones too
        "email" | "idn-email" => email(),
        "hostname" | "idn-hostname" => vec![hostname(), "[a-zA-Z0-9.-]{1,253}".to_string()],
        "uuid" => vec![
            "[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
                .to_string(),
        ],
        "ipv4" => vec![ipv4()],
        "ipv6" => vec![ipv6()],
        "duration" => vec![duration()],
        // ASCII URIs are IRIs
        "uri" | "iri" => vec![uri()],
        "uri-reference" | "iri-reference" => vec![uri_reference()],
        "uri-template" | "json-pointer" | "relative-json-pointer" | "regex" => {
            return Err(unsupported(&format!("format: {f}"), path))
        }
        _ => return Ok(None),
    }))
}

/// Every format [`format_regex`] compiles.
#[cfg(test)]
pub(super) const COMPILED_FORMATS: &[&str] = &[
    "date",
    "time",
    "date-time",
    "email",
    "idn-email",
    "hostname",
    "idn-hostname",
    "uuid",
    "ipv4",
    "ipv6",
    "duration",
    "uri",
    "iri",
    "uri-reference",
    "iri-reference",
];

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use regex_automata::dfa::{dense, Automaton, StartKind};
    use regex_automata::util::{primitives::StateID, start};
    use regex_automata::{Anchored, MatchKind};
    use std::collections::{HashMap, HashSet};

    /// A format's first regex as a DFA, with the states from which a full match is still
    /// reachable: random walks over them draw strings of the regex's language.
    struct Walker {
        dfa: dense::DFA<Vec<u32>>,
        start: StateID,
        live: HashSet<StateID>,
    }

    impl Walker {
        fn new(re: &str) -> Self {
            let dfa = dense::Builder::new()
                .configure(
                    dense::Config::new()
                        .match_kind(MatchKind::All)
                        .start_kind(StartKind::Anchored),
                )
                .build(re)
                .unwrap();
            let start = dfa
                .start_state(&start::Config::new().anchored(Anchored::Yes))
                .unwrap();
            let mut seen = HashSet::from([start]);
            let mut stack = vec![start];
            let mut rev: HashMap<StateID, Vec<StateID>> = HashMap::new();
            let mut accepting = Vec::new();
            while let Some(s) = stack.pop() {
                if dfa.is_match_state(dfa.next_eoi_state(s)) {
                    accepting.push(s);
                }
                for b in 0..=255u8 {
                    let t = dfa.next_state(s, b);
                    if dfa.is_dead_state(t) || dfa.is_quit_state(t) {
                        continue;
                    }
                    rev.entry(t).or_default().push(s);
                    if seen.insert(t) {
                        stack.push(t);
                    }
                }
            }
            let mut live: HashSet<StateID> = accepting.iter().copied().collect();
            let mut stack = accepting;
            while let Some(s) = stack.pop() {
                for &p in rev.get(&s).into_iter().flatten() {
                    if live.insert(p) {
                        stack.push(p);
                    }
                }
            }
            Self { dfa, start, live }
        }

        fn accepting(&self, s: StateID) -> bool {
            self.dfa.is_match_state(self.dfa.next_eoi_state(s))
        }

        /// A string of the language: `choices[0]` sets a length to walk at least (when the
        /// language allows), the rest pick the bytes.
        fn walk(&self, choices: &[u32]) -> Vec<u8> {
            let target = choices.first().map_or(0, |c| (c % 320) as usize);
            let mut s = self.start;
            let mut out = Vec::new();
            let mut i = 1;
            loop {
                let next: Vec<(u8, StateID)> = (0..=255u8)
                    .map(|b| (b, self.dfa.next_state(s, b)))
                    .filter(|(_, t)| self.live.contains(t))
                    .collect();
                let c = choices.get(i).copied().unwrap_or(0);
                i += 1;
                if self.accepting(s)
                    && (next.is_empty() || out.len() >= target || i > choices.len())
                {
                    return out;
                }
                if next.is_empty() || out.len() > 600 {
                    return out;
                }
                let (b, t) = next[c as usize % next.len()];
                out.push(b);
                s = t;
            }
        }
    }

    fn validator(format: &str) -> jsonschema::Validator {
        jsonschema::options()
            .should_validate_formats(true)
            .build(&serde_json::json!({"type": "string", "format": format}))
            .unwrap()
    }

    fn full(re: &str) -> regex_automata::meta::Regex {
        regex_automata::meta::Regex::new(&format!("^(?:{re})$")).unwrap()
    }

    struct Format {
        name: &'static str,
        walker: Walker,
        all: Vec<regex_automata::meta::Regex>,
        validator: jsonschema::Validator,
    }

    fn formats() -> &'static Vec<Format> {
        static F: std::sync::OnceLock<Vec<Format>> = std::sync::OnceLock::new();
        F.get_or_init(|| {
            COMPILED_FORMATS
                .iter()
                .map(|&name| {
                    let res = format_regex(name, "#").unwrap().unwrap();
                    Format {
                        name,
                        walker: Walker::new(&res[0]),
                        all: res.iter().map(|r| full(r)).collect(),
                        validator: validator(name),
                    }
                })
                .collect()
        })
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(256))]

        /// Strings drawn from each format's automaton (structure regex, then kept when the
        /// length windows match too: what the compiled lexeme accepts) pass the `jsonschema`
        /// crate's format check.
        #[test]
        fn every_format_string_validates(choices in prop::collection::vec(any::<u32>(), 1..400)) {
            for f in formats() {
                let bytes = f.walker.walk(&choices);
                let s = String::from_utf8(bytes).expect("format regexes are ASCII");
                if !f.all.iter().all(|r| r.is_match(&s)) {
                    continue;
                }
                prop_assert!(
                    f.validator.is_valid(&serde_json::Value::String(s.clone())),
                    "format {}: {s:?} is accepted by the grammar, rejected by jsonschema",
                    f.name
                );
            }
        }
    }

    #[test]
    fn long_parts_and_bad_dates_are_rejected() {
        let accepts = |name: &str, s: &str| {
            format_regex(name, "#")
                .unwrap()
                .unwrap()
                .iter()
                .all(|r| full(r).is_match(s))
        };
        let long_local = format!("{}@a.com", "x".repeat(65));
        assert!(!accepts("email", &long_local));
        assert!(accepts("email", &format!("{}@a.com", "x".repeat(64))));
        assert!(!accepts("email", "a..b@c.com"));
        assert!(!accepts("hostname", &"a".repeat(64)));
        assert!(!accepts("hostname", "ab--cd.com"));
        assert!(!accepts("date", "2023-02-29"));
        assert!(accepts("date", "2024-02-29"));
        assert!(accepts("date", "2000-02-29"));
        assert!(!accepts("date", "1900-02-29"));
        assert!(!accepts("date", "2024-04-31"));
        assert!(accepts("ipv6", "::1"));
        assert!(accepts("ipv6", "2001:db8::8a2e:370:7334"));
        assert!(!accepts("ipv6", "1::2::3"));
        assert!(accepts("duration", "P1Y2M3DT4H5M6S"));
        assert!(!accepts("duration", "P1Y3D"));
        assert!(!accepts("uri", "a:#x#y"));
        assert!(!accepts("uri", "http://x:y/"));
        assert!(accepts("uri", "https://example.com/a?b=c#d"));
        for f in formats() {
            for s in ["", "x", "\u{e9}"] {
                let ok = f.all.iter().all(|r| r.is_match(s));
                if ok {
                    assert!(
                        f.validator.is_valid(&serde_json::Value::String(s.into())),
                        "{}: {s:?}",
                        f.name
                    );
                }
            }
        }
    }
}
