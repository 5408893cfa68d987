//! Shared by the head targets: heads built from a recipe, for their structured mode (random bytes
//! rarely spell a valid head with the headers whose combinations matter: framing, `Connection`
//! nominations, hop-by-hop fields, `Host`; here each byte picks one of them), and the checks of a
//! head Fulcrum wrote, made with names spelled here rather than the codec's own classification.

/// The hop-by-hop names no written head may carry (RFC 9110 §7.6.1, and the `Proxy-*` pair and
/// `Trailer` of RFC 2616); `Connection`, `Upgrade` and `Transfer-Encoding` only as Fulcrum writes
/// them for the next leg.
const HOP_BY_HOP: &[&str] = &[
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "proxy-authenticate",
    "proxy-authorization",
];

/// The header lines of a head Fulcrum wrote (`name: value` each), without the first line.
pub fn header_lines(head: &[u8]) -> Vec<(&[u8], &[u8])> {
    let text = head
        .strip_suffix(b"\r\n\r\n")
        .expect("a head ends in CRLF CRLF");
    let mut lines = text
        .split(|&b| b == b'\n')
        .map(|l| l.strip_suffix(b"\r").unwrap_or(l));
    let _first = lines.next();
    lines
        .map(|line| {
            let colon = line.iter().position(|&b| b == b':').expect("name: value");
            let value = &line[colon + 1..];
            (&line[..colon], value.strip_prefix(b" ").unwrap_or(value))
        })
        .collect()
}

/// Values of the lines called `name` (any case).
pub fn values<'h>(lines: &[(&[u8], &'h [u8])], name: &str) -> Vec<&'h [u8]> {
    lines
        .iter()
        .filter(|(n, _)| n.eq_ignore_ascii_case(name.as_bytes()))
        .map(|&(_, v)| v)
        .collect()
}

/// Checks that a written head has no hop-by-hop line and no line `nominated` by the received
/// head's `Connection`, and that its `Connection`, `Upgrade` and `Transfer-Encoding` lines are the
/// ones given (what Fulcrum writes for the next leg).
pub fn check_hop_by_hop<'t>(
    lines: &[(&[u8], &[u8])],
    nominated: impl Iterator<Item = &'t [u8]>,
    connection: Option<&str>,
    upgrade: Option<&str>,
    transfer_encoding: Option<&str>,
    shown: &str,
) {
    for &(name, _) in lines {
        let hop = HOP_BY_HOP
            .iter()
            .any(|h| name.eq_ignore_ascii_case(h.as_bytes()));
        assert!(
            !hop,
            "hop-by-hop {:?} left: {shown}",
            String::from_utf8_lossy(name)
        );
    }
    fn as_given(value: Option<&str>) -> Vec<&[u8]> {
        value.map(str::as_bytes).into_iter().collect()
    }
    assert_eq!(values(lines, "connection"), as_given(connection), "{shown}");
    assert_eq!(values(lines, "upgrade"), as_given(upgrade), "{shown}");
    let te = values(lines, "transfer-encoding");
    assert_eq!(te, as_given(transfer_encoding), "{shown}");
    for token in nominated {
        // Content-Length (the framing), Host and X-Forwarded-* cannot be nominated; the leg's
        // own fields are checked above.
        let lower = token.to_ascii_lowercase();
        let kept = lower == b"host"
            || lower == b"content-length"
            || (lower.len() > 12 && lower.starts_with(b"x-forwarded-"))
            || [&b"connection"[..], b"upgrade", b"transfer-encoding"].contains(&&lower[..]);
        if kept {
            continue;
        }
        let left = lines.iter().any(|(n, _)| n.eq_ignore_ascii_case(token));
        assert!(
            !left,
            "nominated {:?} left: {shown}",
            String::from_utf8_lossy(token)
        );
    }
}

/// Header names the codec classifies, and a few it passes on.
const NAMES: &[&str] = &[
    "Host",
    "Content-Length",
    "Transfer-Encoding",
    "Connection",
    "Upgrade",
    "Keep-Alive",
    "TE",
    "Trailer",
    "Proxy-Connection",
    "Proxy-Authorization",
    "Proxy-Authenticate",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Forwarded-Host",
    "Content-Type",
    "X-Secret",
    "Accept",
    "X_Under",
    "Sec-WebSocket-Key",
];

/// What `Connection` may list: one bit of a 16-bit mask each.
const TOKENS: [&str; 16] = [
    "close",
    "keep-alive",
    "Upgrade",
    "Content-Length",
    "Transfer-Encoding",
    "Host",
    "X-Forwarded-For",
    "X-Forwarded-Proto",
    "X-Secret",
    "Content-Type",
    "TE",
    "Trailer",
    "Keep-Alive",
    "Proxy-Authorization",
    "x-forwarded-host",
    "Accept",
];

fn choices(name: &str) -> &'static [&'static str] {
    match name {
        "Host" => &["h", "h:8080", "[::1]:80", "", "a b", "10.0.0.1"],
        "Content-Length" => &["0", "5", "18446744073709551615", "+1", "5, 5"],
        "Transfer-Encoding" => &["chunked", "Chunked", "gzip", "gzip, chunked"],
        "Upgrade" => &["websocket", "WebSocket", "h2c", "websocket, h2c"],
        "X-Forwarded-For" => &["1.1.1.1", "", "1.1.1.1, 2.2.2.2", "unknown"],
        "X-Forwarded-Proto" => &["https", "http", ""],
        _ => &["v", "", "a, b", "\"quoted\""],
    }
}

/// Takes the next byte of the recipe.
fn next(recipe: &mut &[u8]) -> Option<u8> {
    let (&b, rest) = recipe.split_first()?;
    *recipe = rest;
    Some(b)
}

/// Appends header lines from the rest of the recipe, then the empty line. Each line takes a byte
/// (the name, and bit 7: in lower case) and a byte for its value (`Connection`: two, a mask over
/// [`TOKENS`]).
fn headers(mut recipe: &[u8], out: &mut Vec<u8>) {
    while let Some(pick) = next(&mut recipe) {
        let name = NAMES[usize::from(pick & 0x7f) % NAMES.len()];
        if pick & 0x80 != 0 {
            out.extend_from_slice(name.to_ascii_lowercase().as_bytes());
        } else {
            out.extend_from_slice(name.as_bytes());
        }
        out.extend_from_slice(b": ");
        if name == "Connection" {
            let mask = u16::from_le_bytes([
                next(&mut recipe).unwrap_or(1),
                next(&mut recipe).unwrap_or(0),
            ]);
            let listed: Vec<&str> = (0..16)
                .filter(|bit| mask & 1 << bit != 0)
                .map(|bit| TOKENS[bit])
                .collect();
            out.extend_from_slice(listed.join(", ").as_bytes());
        } else {
            let values = choices(name);
            let pick = next(&mut recipe).unwrap_or(0);
            out.extend_from_slice(values[usize::from(pick) % values.len()].as_bytes());
        }
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// A request head: the first byte picks the method (bits 0 to 2), HTTP/1.0 (bit 3) and the
/// target (bits 4 to 7), the rest the headers.
#[allow(dead_code)]
pub fn request(recipe: &[u8]) -> Vec<u8> {
    const METHODS: [&str; 8] = [
        "GET", "POST", "PUT", "HEAD", "OPTIONS", "CONNECT", "DELETE", "M-SEARCH",
    ];
    const TARGETS: [&str; 8] = [
        "/p?q=1",
        "http://svc:8080/x?y",
        "https://svc",
        "http://svc?q",
        "*",
        "svc:443",
        "//double",
        "/",
    ];
    let mut recipe = recipe;
    let line = next(&mut recipe).unwrap_or(0);
    let mut out = Vec::new();
    out.extend_from_slice(METHODS[usize::from(line & 7)].as_bytes());
    out.push(b' ');
    out.extend_from_slice(TARGETS[usize::from(line >> 4) % TARGETS.len()].as_bytes());
    if line & 8 != 0 {
        out.extend_from_slice(b" HTTP/1.0\r\n");
    } else {
        out.extend_from_slice(b" HTTP/1.1\r\n");
    }
    headers(recipe, &mut out);
    out
}

/// A response head: the first byte picks the status (bits 0 to 2), HTTP/1.0 (bit 3) and the
/// reason phrase (bits 4 and 5), the rest the headers.
#[allow(dead_code)]
pub fn response(recipe: &[u8]) -> Vec<u8> {
    const STATUSES: [&str; 8] = ["200", "204", "304", "101", "100", "404", "201", "999"];
    const REASONS: [&str; 4] = [" OK", " ", "", " Fine Thing"];
    let mut recipe = recipe;
    let line = next(&mut recipe).unwrap_or(0);
    let mut out = Vec::new();
    if line & 8 != 0 {
        out.extend_from_slice(b"HTTP/1.0 ");
    } else {
        out.extend_from_slice(b"HTTP/1.1 ");
    }
    out.extend_from_slice(STATUSES[usize::from(line & 7)].as_bytes());
    out.extend_from_slice(REASONS[usize::from(line >> 4 & 3)].as_bytes());
    out.extend_from_slice(b"\r\n");
    headers(recipe, &mut out);
    out
}
