//! The chat page at `GET /`: one self-contained HTML file (inline script and style, no
//! external fetches) compiled into the binary, served with a strict Content-Security-Policy.
//!
//! The page lists `GET /v1/models`, streams `POST /v1/chat/completions` (`stream: true`,
//! `stream_options.include_usage`) through `fetch` and a stream reader, keeps the
//! conversation, and shows time to first token and tokens/s for each answer. It sends the API
//! key typed into it (kept in `sessionStorage`) as `Authorization: Bearer`; the page itself
//! needs no key, the API calls it makes do. `ServerConfig::chat_page = false`
//! (`serve --no-chat-page`) leaves `/` unrouted (404).
//!
//! The policy allows exactly the page's own inline `<script>` and `<style>` by their SHA-256
//! (no `'unsafe-inline'`), connections to its own origin only, and no framing.

use std::sync::LazyLock;

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use base64::Engine as _;
use sha2::{Digest, Sha256};

/// The page, as compiled in.
pub(crate) const HTML: &str = include_str!("../assets/chat.html");

/// The text between the first `<{tag}>` and the `</{tag}>` after it.
fn inline_block<'a>(html: &'a str, tag: &str) -> &'a str {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let start = html.find(&open).map(|i| i + open.len()).unwrap_or(0);
    let end = html[start..]
        .find(&close)
        .map(|i| start + i)
        .unwrap_or(start);
    &html[start..end]
}

/// `'sha256-…'` of a text, as CSP writes a hash source.
fn hash_source(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    format!(
        "'sha256-{}'",
        base64::engine::general_purpose::STANDARD.encode(digest)
    )
}

/// The Content-Security-Policy sent with the page.
pub(crate) fn csp() -> &'static str {
    static CSP: LazyLock<String> = LazyLock::new(|| {
        format!(
            "default-src 'self'; script-src {}; style-src {}; connect-src 'self'; \
             img-src 'self' data:; object-src 'none'; base-uri 'none'; form-action 'none'; \
             frame-ancestors 'none'",
            hash_source(inline_block(HTML, "script")),
            hash_source(inline_block(HTML, "style")),
        )
    });
    &CSP
}

/// `GET /`.
pub(crate) async fn chat_page() -> Response {
    let mut response = HTML.into_response();
    let h = response.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/html; charset=utf-8"),
    );
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(csp()),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_policy_hashes_exactly_the_inline_script_and_style() {
        let script = inline_block(HTML, "script");
        let style = inline_block(HTML, "style");
        assert!(script.contains("/v1/chat/completions"));
        assert!(style.contains("body"));
        // One inline script and one inline style: a second block would be refused by the
        // browser, since only these two hashes are allowed.
        assert_eq!(HTML.matches("<script").count(), 1);
        assert_eq!(HTML.matches("<style").count(), 1);
        assert!(
            !HTML.contains(" style=\""),
            "inline style attributes are refused by the CSP"
        );
        assert!(!HTML.contains("http://") && !HTML.contains("https://"));
        let policy = csp();
        assert!(policy.starts_with("default-src 'self';"));
        assert!(policy.contains(&format!("script-src {};", hash_source(script))));
        assert!(policy.contains(&format!("style-src {};", hash_source(style))));
        assert!(!policy.contains("unsafe"));
        assert_eq!(
            hash_source("alert(1)"),
            "'sha256-bhHHL3z2vDgxUt0W3dWQOrprscmda2Y5pLsLg4GF+pI='"
        );
    }
}
