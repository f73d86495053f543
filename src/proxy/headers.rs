//! Which headers cross the proxy: end-to-end headers go on, hop-by-hop ones (RFC 9110 §7.6.1)
//! and those the proxy rewrites itself (framing, encoding, credentials) do not.

use http::header::{self, HeaderName};
use pingora::proxy::Session;

/// The fixed hop-by-hop headers (RFC 9110 §7.6.1, and the unofficial `keep-alive` and
/// `proxy-connection`). A `match` rather than a list: every header of every request and
/// response is tested, three times per request.
fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
            | "upgrade"
    )
}

/// The end-to-end headers of `headers`: hop-by-hop ones (fixed, and those the `Connection`
/// header names) and the framing/encoding headers the proxy rewrites itself are left out.
pub(super) fn end_to_end_headers<'h>(
    headers: &'h http::HeaderMap,
    rewritten: &'h [HeaderName],
) -> impl Iterator<Item = (&'h HeaderName, &'h http::HeaderValue)> + 'h {
    let listed = connection_listed(headers);
    headers.iter().filter(move |(name, _)| {
        !is_hop_by_hop(name)
            && !listed.iter().any(|l| l == name.as_str())
            && !rewritten.contains(name)
    })
}

/// `headers` copied into a map of their own with room for `room`: the proxy builds the headers
/// it writes this way, not through Pingora's `append_header`, which turns each name back into
/// bytes and parses it again.
pub(super) fn copied_headers<'h>(
    headers: impl Iterator<Item = (&'h HeaderName, &'h http::HeaderValue)>,
    room: usize,
) -> Result<http::HeaderMap, http::header::MaxSizeReached> {
    let mut map = http::HeaderMap::try_with_capacity(room)?;
    for (name, value) in headers {
        map.try_append(name.clone(), value.clone())?;
    }
    Ok(map)
}

/// Header names a `Connection` header declares hop-by-hop.
fn connection_listed(headers: &http::HeaderMap) -> Vec<String> {
    headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|token| token.trim().to_ascii_lowercase())
        .filter(|token| !token.is_empty())
        .collect()
}

/// A request header as text, when it is present and readable.
pub(super) fn header_str<'a>(session: &'a Session, name: &str) -> Option<&'a str> {
    session
        .req_header()
        .headers
        .get(name)
        .and_then(|v| v.to_str().ok())
}

/// Whether a `Content-Type` names JSON (`application/json`, `application/…+json`).
pub(super) fn is_json_content_type(value: Option<&str>) -> bool {
    value.is_some_and(|v| {
        let v = v.to_ascii_lowercase();
        let essence = v.split(';').next().unwrap_or("").trim();
        essence == "application/json" || essence.ends_with("+json")
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hop_by_hop_and_connection_listed_headers_stay_behind() {
        let mut headers = http::HeaderMap::new();
        for (name, value) in [
            ("connection", "keep-alive, X-Trace"),
            ("keep-alive", "timeout=5"),
            ("x-trace", "1"),
            ("transfer-encoding", "chunked"),
            ("content-length", "12"),
            ("anthropic-beta", "a,b"),
            ("x-api-key", "k"),
        ] {
            headers.append(
                HeaderName::from_static(name),
                http::HeaderValue::from_static(value),
            );
        }
        let rewritten = [header::CONTENT_LENGTH];
        let kept: Vec<&str> = end_to_end_headers(&headers, &rewritten)
            .map(|(name, _)| name.as_str())
            .collect();
        assert_eq!(kept, ["anthropic-beta", "x-api-key"]);
    }

    #[test]
    fn json_content_types() {
        assert!(is_json_content_type(Some("application/json")));
        assert!(is_json_content_type(Some(
            "Application/JSON; charset=utf-8"
        )));
        assert!(is_json_content_type(Some("application/vnd.api+json")));
        assert!(!is_json_content_type(Some("text/plain")));
        assert!(!is_json_content_type(Some("application/jsonl")));
        assert!(!is_json_content_type(None));
    }
}
