//! What a POST must pass before it changes anything: the bearer token, when `admin.token` is set
//! (compared in constant time), and no foreign `Origin` (a page on another site can make a browser
//! POST to a loopback admin port, but it cannot make the browser send its own origin).

use bytes::Bytes;
use http::{header, HeaderMap, HeaderValue, Response, StatusCode};
use http_body_util::Full;

use super::{error, Transport};

/// The 401 or 403 to send, or `None` when the request may change state.
pub(super) fn refusal(
    token: Option<&str>,
    headers: &HeaderMap,
    transport: Transport,
) -> Option<Response<Full<Bytes>>> {
    if let Some(token) = token {
        let presented = headers
            .get(header::AUTHORIZATION)
            .and_then(|v| bearer(v.as_bytes()));
        if !presented.is_some_and(|p| same_secret(p, token.as_bytes())) {
            let mut response = error(
                StatusCode::UNAUTHORIZED,
                "this endpoint needs `Authorization: Bearer <admin.token>`".into(),
            );
            response.headers_mut().insert(
                header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer realm=\"fulcrum admin\""),
            );
            return Some(response);
        }
    }
    if let Some(origin) = headers.get(header::ORIGIN) {
        let host = headers.get(header::HOST).map(HeaderValue::as_bytes);
        if transport == Transport::Unix || !same_origin(origin.as_bytes(), host) {
            return Some(error(
                StatusCode::FORBIDDEN,
                format!(
                    "a cross-origin request (Origin: {}) may not change state",
                    String::from_utf8_lossy(origin.as_bytes())
                ),
            ));
        }
    }
    None
}

/// The credentials of `Bearer <token>` (the scheme is case-insensitive, RFC 9110 §11.1).
fn bearer(value: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = value.split_at_checked(7)?;
    scheme
        .eq_ignore_ascii_case(b"bearer ")
        .then(|| rest.trim_ascii())
}

/// Whether `presented` is `secret`, in a time that does not depend on where they differ: every
/// presented byte is compared and the differences are OR-ed, with no early exit on a mismatch (the
/// secret's length is not hidden; its bytes are).
fn same_secret(presented: &[u8], secret: &[u8]) -> bool {
    let mut diff = u8::from(presented.len() != secret.len());
    for (i, &byte) in presented.iter().enumerate() {
        // Past the secret's end, compare with its first byte: the work per byte stays the same.
        let expected = secret.get(i).or(secret.first()).copied().unwrap_or(0);
        diff |= byte ^ expected;
    }
    std::hint::black_box(diff) == 0
}

/// Whether `origin` (`http://host[:port]`) names the endpoint the request was sent to (`Host`).
/// The admin endpoint speaks plain HTTP, so an `https://` or `null` origin is never its own.
fn same_origin(origin: &[u8], host: Option<&[u8]>) -> bool {
    let (Some(authority), Some(host)) = (origin.strip_prefix(b"http://"), host) else {
        return false;
    };
    with_port(authority).eq_ignore_ascii_case(&with_port(host))
}

/// `authority` with HTTP's default port made explicit (`localhost` is `localhost:80`).
fn with_port(authority: &[u8]) -> Vec<u8> {
    let has_port = authority
        .iter()
        .rposition(|&b| b == b':')
        .is_some_and(|colon| {
            let port = &authority[colon + 1..];
            !port.is_empty() && port.iter().all(u8::is_ascii_digit)
        });
    let mut out = authority.to_vec();
    if !has_port {
        out.extend_from_slice(b":80");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_secret_must_match_whole() {
        assert!(same_secret(b"s3cret", b"s3cret"));
        for wrong in [
            &b""[..],
            b"s3cre",
            b"s3cret!",
            b"S3cret",
            b"x3cret",
            b"s3cres",
        ] {
            assert!(!same_secret(wrong, b"s3cret"), "{wrong:?}");
        }
    }

    #[test]
    fn bearer_takes_the_scheme_in_any_case() {
        assert_eq!(bearer(b"Bearer abc"), Some(&b"abc"[..]));
        assert_eq!(bearer(b"bearer  abc "), Some(&b"abc"[..]));
        assert_eq!(bearer(b"Basic abc"), None);
        assert_eq!(bearer(b"Bearer"), None);
    }

    #[test]
    fn an_origin_is_own_only_with_the_same_host_and_port() {
        let own = |origin: &str, host: &str| same_origin(origin.as_bytes(), Some(host.as_bytes()));
        assert!(own("http://127.0.0.1:9900", "127.0.0.1:9900"));
        assert!(own("http://LOCALHOST", "localhost:80"));
        assert!(own("http://[::1]:9900", "[::1]:9900"));
        assert!(own("http://[::1]", "[::1]:80"));
        assert!(!own("http://127.0.0.1:9901", "127.0.0.1:9900"));
        assert!(!own("http://evil.example", "127.0.0.1:9900"));
        assert!(!own("https://127.0.0.1:9900", "127.0.0.1:9900"));
        assert!(!own("null", "127.0.0.1:9900"));
        assert!(!same_origin(b"http://127.0.0.1:9900", None));
    }
}
