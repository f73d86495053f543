//! Percent-encoding in the three flavours the cloud endpoints need: decoding a path segment,
//! parsing an `application/x-www-form-urlencoded` body (STS, the OAuth token endpoint), and the
//! SigV4 "URI-encode" (every byte outside `A-Za-z0-9-_.~` becomes `%XX` with uppercase hex).
//!
//! Decoding is lenient: a `%` not followed by two hex digits is kept as is, and bytes that are
//! not UTF-8 are replaced, so a malformed request still gets a readable answer.

/// Decodes `%XX` escapes. With `plus_as_space`, `+` is a space (form bodies); in a path it is
/// a plain `+`.
pub(crate) fn percent_decode(s: &str, plus_as_space: bool) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => match (hex_val(b[i + 1]), hex_val(b[i + 2])) {
                (Some(h), Some(l)) => {
                    out.push(h << 4 | l);
                    i += 3;
                    continue;
                }
                _ => out.push(b'%'),
            },
            b'+' if plus_as_space => out.push(b' '),
            c => out.push(c),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        b'A'..=b'F' => Some(c - b'A' + 10),
        _ => None,
    }
}

/// `name=value` pairs of a form body, decoded, in order.
pub(crate) fn parse_form(body: &[u8]) -> Vec<(String, String)> {
    String::from_utf8_lossy(body)
        .split('&')
        .filter(|p| !p.is_empty())
        .map(|p| {
            let (k, v) = p.split_once('=').unwrap_or((p, ""));
            (percent_decode(k, true), percent_decode(v, true))
        })
        .collect()
}

/// The first value of `name` in a parsed form.
pub(crate) fn form_value<'a>(form: &'a [(String, String)], name: &str) -> Option<&'a str> {
    form.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
}

/// SigV4 URI-encoding: bytes in `A-Za-z0-9-_.~` (and `/` when `keep_slash`) are kept, every
/// other byte becomes `%XX` with uppercase hex.
pub(crate) fn uri_encode(s: &[u8], keep_slash: bool) -> String {
    let mut out = String::with_capacity(s.len() * 3 / 2);
    for &c in s {
        if c.is_ascii_alphanumeric()
            || matches!(c, b'-' | b'_' | b'.' | b'~')
            || (keep_slash && c == b'/')
        {
            out.push(c as char);
        } else {
            out.push('%');
            out.push(char::from(b"0123456789ABCDEF"[usize::from(c >> 4)]));
            out.push(char::from(b"0123456789ABCDEF"[usize::from(c & 15)]));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decode_encode_and_forms() {
        assert_eq!(percent_decode("a%3Ab%2fc+d", false), "a:b/c+d");
        assert_eq!(percent_decode("a+b%20c", true), "a b c");
        assert_eq!(percent_decode("bad%zz%4", false), "bad%zz%4");
        assert_eq!(
            uri_encode(b"/model/x-1:0/invoke", true),
            "/model/x-1%3A0/invoke"
        );
        assert_eq!(uri_encode(b"/a%3A b", true), "/a%253A%20b");
        assert_eq!(uri_encode(b"a/b~", false), "a%2Fb~");
        let form = parse_form(
            b"Action=AssumeRoleWithWebIdentity&RoleArn=arn%3Aaws%3Aiam%3A%3A1%3Arole%2Fr&x&t=a+b",
        );
        assert_eq!(
            form_value(&form, "Action"),
            Some("AssumeRoleWithWebIdentity")
        );
        assert_eq!(form_value(&form, "RoleArn"), Some("arn:aws:iam::1:role/r"));
        assert_eq!(form_value(&form, "x"), Some(""));
        assert_eq!(form_value(&form, "t"), Some("a b"));
    }
}
