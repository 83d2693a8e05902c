//! `format` keywords as regexes for the content of a JSON string.

use super::unsupported;
use crate::ConstraintError;

/// One character of a URI (format `uri`, `uri-reference`).
const URI_CHAR: &str = r#"(?:[\x21-\x7E&&[^<>`{|}^\\"%]]|%[0-9a-fA-F]{2})"#;

/// Regex for the *content* of a JSON string (between the quotes) for a known `format`;
/// `Ok(None)` for formats that are only annotations here (not validated by the spec's
/// default vocabulary and unknown to us).
pub(super) fn format_regex(f: &str, path: &str) -> Result<Option<String>, ConstraintError> {
    const DATE: &str = r"[0-9]{4}-(?:0[1-9]|1[0-2])-(?:0[1-9]|[12][0-9]|3[01])";
    const TIME: &str = r"(?:[01][0-9]|2[0-3]):[0-5][0-9]:(?:[0-5][0-9]|60)(?:\.[0-9]+)?(?:[Zz]|[+-](?:[01][0-9]|2[0-3]):[0-5][0-9])";
    const LABEL: &str = r"[a-zA-Z0-9](?:[a-zA-Z0-9-]*[a-zA-Z0-9])?";
    const OCTET: &str = r"(?:25[0-5]|2[0-4][0-9]|1[0-9][0-9]|[1-9]?[0-9])";
    Ok(Some(match f {
        "date" => DATE.to_string(),
        "time" => TIME.to_string(),
        "date-time" => format!("{DATE}[Tt]{TIME}"),
        "email" => format!(r"[a-zA-Z0-9.!#$%&'*+/=?^_`{{|}}~-]+@{LABEL}(?:\.{LABEL})*"),
        "hostname" => format!(r"{LABEL}(?:\.{LABEL})*"),
        "uuid" => r"[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}"
            .to_string(),
        "ipv4" => format!(r"(?:{OCTET}\.){{3}}{OCTET}"),
        // RFC 3986: printable ASCII but for a few delimiters, `%` only before two hex digits
        // (non-ASCII characters make an IRI, which the `uri` validators reject).
        "uri" => format!("[a-zA-Z][a-zA-Z0-9+.\\-]*:{URI_CHAR}*"),
        "uri-reference" => format!("{URI_CHAR}*"),
        "ipv6"
        | "duration"
        | "idn-email"
        | "idn-hostname"
        | "iri"
        | "iri-reference"
        | "uri-template"
        | "json-pointer"
        | "relative-json-pointer"
        | "regex" => return Err(unsupported(&format!("format: {f}"), path)),
        _ => return Ok(None),
    }))
}
