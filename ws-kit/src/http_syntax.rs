//! Small pieces of HTTP and URL syntax shared by the server's handshake and the client:
//! percent-encoding, query parameters, RFC 7230 tokens.

/// Decodes `%XX` escapes and `+` (a space, in a query); invalid escapes stay as they are.
pub(crate) fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'+' => out.push(b' '),
            b'%' if i + 2 < bytes.len() => {
                let hex = std::str::from_utf8(&bytes[i + 1..i + 3])
                    .ok()
                    .and_then(|h| u8::from_str_radix(h, 16).ok());
                match hex {
                    Some(b) => {
                        out.push(b);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            b => out.push(b),
        }
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Percent-encodes everything but RFC 3986 unreserved characters.
#[cfg_attr(not(feature = "client"), allow(dead_code))]
pub(crate) fn percent_encode(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~') {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// `url` with `name=value` appended to its query; `ws://host` gets the path `/` first.
#[cfg_attr(not(feature = "client"), allow(dead_code))]
pub(crate) fn with_query_param(url: &str, name: &str, value: &str) -> String {
    let mut url = url.to_string();
    if let Some(scheme_end) = url.find("://").map(|i| i + 3) {
        let rest = &url[scheme_end..];
        let authority_end = rest.find(['/', '?']).unwrap_or(rest.len());
        if !rest[authority_end..].starts_with('/') {
            url.insert(scheme_end + authority_end, '/');
        }
    }
    let sep = if url.contains('?') { '&' } else { '?' };
    format!(
        "{url}{sep}{}={}",
        percent_encode(name),
        percent_encode(value)
    )
}

/// RFC 7230 `tchar`, what a token (a subprotocol name, say) is made of.
fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// Whether `s` is an RFC 7230 token: one or more `tchar`s.
#[cfg_attr(not(feature = "client"), allow(dead_code))]
pub(crate) fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_values_are_percent_encoded_and_decoded() {
        assert_eq!(percent_encode("a b&c=d/é~"), "a%20b%26c%3Dd%2F%C3%A9~");
        assert_eq!(percent_decode("a%20b%26c%3Dd%2F%C3%A9~"), "a b&c=d/é~");
        assert_eq!(percent_decode("a+b%zz%4"), "a b%zz%4");
        assert!(is_token_char(b'.') && !is_token_char(b' ') && !is_token_char(b','));
        assert!(is_token("bearer.abc") && !is_token("") && !is_token("a b"));
        assert_eq!(
            with_query_param("ws://h:1", "access_token", "t 1"),
            "ws://h:1/?access_token=t%201"
        );
        assert_eq!(
            with_query_param("ws://h:1?x=/", "t", "v"),
            "ws://h:1/?x=/&t=v"
        );
        assert_eq!(
            with_query_param("ws://h/ws?x=1", "t", "v"),
            "ws://h/ws?x=1&t=v"
        );
    }
}
