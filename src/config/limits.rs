//! A listener's limits on what a client may send, and its client-side timeouts (CONTRACT.md,
//! "Timeouts on the client side" and the `max_*` keys): what an edge proxy bounds so that one slow
//! or hostile client cannot hold memory or a connection slot for long.

use std::time::Duration;

use toml::Spanned;

use super::raw;
use super::validate::Validator;
use super::{Error, Mode};

/// The largest `max_request_headers`: the parser's header slots live on the stack.
pub const MOST_REQUEST_HEADERS: usize = 1000;
/// The largest `max_request_head_bytes` (1 MiB): a head is held whole in memory while it is read.
pub const MOST_REQUEST_HEAD_BYTES: usize = 1 << 20;

/// What one HTTP request may be, and how long its head may take (`mode = "http"` only).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct HttpLimits {
    /// From a head's first byte to its final CRLF; over it: 408 and close.
    pub client_header_timeout: Duration,
    /// Request line and headers together, in bytes; over it: 431.
    pub max_request_head_bytes: usize,
    /// Header lines; over it: 431.
    pub max_request_headers: usize,
    /// The request target, in bytes; over it: 414.
    pub max_uri_bytes: usize,
    /// The request body, in bytes (0 = no limit); over it: 413.
    pub max_body_bytes: u64,
    /// Whether a header name may contain `_` (false: 400, since `X_User` and `X-User` look alike
    /// to many servers, which lets a client smuggle a header past a filter).
    pub allow_underscore_headers: bool,
}

impl Default for HttpLimits {
    fn default() -> Self {
        HttpLimits {
            client_header_timeout: Duration::from_secs(10),
            max_request_head_bytes: 32 * 1024,
            max_request_headers: 100,
            max_uri_bytes: 8 * 1024,
            max_body_bytes: 0,
            allow_underscore_headers: false,
        }
    }
}

/// The default `idle_timeout`.
pub const DEFAULT_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

impl Validator<'_> {
    /// The listener's `idle_timeout` and HTTP limits; the HTTP-only keys are an error on a tcp
    /// listener (they would silently do nothing there).
    pub(super) fn limits(
        &self,
        name: &str,
        mode: Mode,
        l: &mut raw::Listener,
    ) -> Result<(Duration, HttpLimits), Error> {
        let key = |k: &str| format!("listeners.{name}.{k}");
        let idle_timeout = self.positive_duration(
            &key("idle_timeout"),
            l.idle_timeout.take(),
            DEFAULT_IDLE_TIMEOUT,
        )?;
        let defaults = HttpLimits::default();
        if mode == Mode::Tcp {
            let http_only = [
                (
                    "client_header_timeout",
                    l.client_header_timeout.as_ref().map(Spanned::span),
                ),
                (
                    "max_request_head_bytes",
                    l.max_request_head_bytes.as_ref().map(Spanned::span),
                ),
                (
                    "max_request_headers",
                    l.max_request_headers.as_ref().map(Spanned::span),
                ),
                ("max_uri_bytes", l.max_uri_bytes.as_ref().map(Spanned::span)),
                (
                    "max_body_bytes",
                    l.max_body_bytes.as_ref().map(Spanned::span),
                ),
                (
                    "allow_underscore_headers",
                    l.allow_underscore_headers.as_ref().map(Spanned::span),
                ),
            ];
            if let Some((k, Some(span))) = http_only.into_iter().find(|(_, s)| s.is_some()) {
                return Err(self.err(span, key(k), "applies to mode = \"http\" only"));
            }
            return Ok((idle_timeout, defaults));
        }
        let limits = HttpLimits {
            client_header_timeout: self.positive_duration(
                &key("client_header_timeout"),
                l.client_header_timeout.take(),
                defaults.client_header_timeout,
            )?,
            max_request_head_bytes: self.size(
                &key("max_request_head_bytes"),
                l.max_request_head_bytes.take(),
                defaults.max_request_head_bytes,
                1024..=MOST_REQUEST_HEAD_BYTES,
            )?,
            max_request_headers: self.size(
                &key("max_request_headers"),
                l.max_request_headers.take(),
                defaults.max_request_headers,
                1..=MOST_REQUEST_HEADERS,
            )?,
            max_uri_bytes: self.size(
                &key("max_uri_bytes"),
                l.max_uri_bytes.take(),
                defaults.max_uri_bytes,
                16..=MOST_REQUEST_HEAD_BYTES,
            )?,
            max_body_bytes: l.max_body_bytes.take().map_or(0, Spanned::into_inner),
            allow_underscore_headers: l
                .allow_underscore_headers
                .take()
                .is_some_and(Spanned::into_inner),
        };
        Ok((idle_timeout, limits))
    }

    fn size(
        &self,
        key: &str,
        value: Option<Spanned<u64>>,
        default: usize,
        range: std::ops::RangeInclusive<usize>,
    ) -> Result<usize, Error> {
        let Some(value) = value else {
            return Ok(default);
        };
        match usize::try_from(*value.get_ref()) {
            Ok(n) if range.contains(&n) => Ok(n),
            _ => Err(self.err(
                value.span(),
                key,
                format!("must be within {}..={}", range.start(), range.end()),
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use super::*;
    use crate::config::Config;

    const BASE: &str = "[upstreams.app]\nservers = [{ address = \"127.0.0.1:1\" }]\n\n[listeners.web]\nbind = \"127.0.0.1:0\"\nupstream = \"app\"\n";

    fn parse(mode: &str, keys: &str) -> Result<Config, Error> {
        let text = format!("{BASE}mode = \"{mode}\"\n{keys}");
        Config::parse(Path::new("t.toml"), &text)
    }

    fn error_of(mode: &str, keys: &str) -> (usize, String, String) {
        match parse(mode, keys) {
            Err(Error::Invalid {
                line, key, message, ..
            }) => (line, key, message),
            other => panic!("expected an invalid-config error, got {other:?}"),
        }
    }

    #[test]
    fn defaults_are_the_contracts() {
        let config = parse("http", "").unwrap();
        let web = &config.listeners[0];
        assert_eq!(web.idle_timeout, Duration::from_secs(60));
        assert_eq!(web.http.client_header_timeout, Duration::from_secs(10));
        assert_eq!(web.http.max_request_head_bytes, 32768);
        assert_eq!(web.http.max_request_headers, 100);
        assert_eq!(web.http.max_uri_bytes, 8192);
        assert_eq!(web.http.max_body_bytes, 0);
        assert!(!web.http.allow_underscore_headers);
    }

    #[test]
    fn every_key_is_read() {
        let config = parse(
            "http",
            "client_header_timeout = \"3s\"\nidle_timeout = \"7s\"\nmax_request_head_bytes = 4096\nmax_request_headers = 20\nmax_uri_bytes = 100\nmax_body_bytes = 1000\nallow_underscore_headers = true\n",
        )
        .unwrap();
        let web = &config.listeners[0];
        assert_eq!(web.idle_timeout, Duration::from_secs(7));
        assert_eq!(
            web.http,
            HttpLimits {
                client_header_timeout: Duration::from_secs(3),
                max_request_head_bytes: 4096,
                max_request_headers: 20,
                max_uri_bytes: 100,
                max_body_bytes: 1000,
                allow_underscore_headers: true,
            }
        );
    }

    #[test]
    fn tcp_listeners_take_idle_timeout_but_no_http_limit() {
        let config = parse("tcp", "idle_timeout = \"2s\"\n").unwrap();
        assert_eq!(config.listeners[0].idle_timeout, Duration::from_secs(2));
        let (line, key, message) = error_of("tcp", "idle_timeout = \"2s\"\nmax_uri_bytes = 100\n");
        assert_eq!((line, key.as_str()), (9, "listeners.web.max_uri_bytes"));
        assert!(message.contains("mode = \"http\""), "{message}");
    }

    #[test]
    fn out_of_range_values_are_located() {
        for (keys, key, line) in [
            (
                "max_request_head_bytes = 100\n",
                "listeners.web.max_request_head_bytes",
                8,
            ),
            (
                "max_request_headers = 0\n",
                "listeners.web.max_request_headers",
                8,
            ),
            (
                "max_request_headers = 1001\n",
                "listeners.web.max_request_headers",
                8,
            ),
            ("max_uri_bytes = 15\n", "listeners.web.max_uri_bytes", 8),
            (
                "\nclient_header_timeout = \"0s\"\n",
                "listeners.web.client_header_timeout",
                9,
            ),
            ("idle_timeout = \"soon\"\n", "listeners.web.idle_timeout", 8),
        ] {
            let (l, k, _) = error_of("http", keys);
            assert_eq!((l, k.as_str()), (line, key), "{keys}");
        }
    }
}
