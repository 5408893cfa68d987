//! Failures on the request path and the one place they become status codes, for both protocols:
//! an `http::Response` for h2 streams, raw bytes for HTTP/1 connections.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

use super::h1::request::Reject;
use super::h1::rewrite::Out;

/// Why Fulcrum answered a request itself instead of relaying the server's response.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProxyError {
    /// No server of the upstream may take traffic (all down), or all are at `max_connections`.
    #[error("no server available")]
    NoServer,
    /// Every server tried refused or timed out the connection.
    #[error("no server could be reached")]
    ConnectFailed,
    /// A connected server closed, reset or sent a response that could not be parsed.
    #[error("bad response from server")]
    BadResponse,
    /// The server did not send a response head within `response_timeout`.
    #[error("server response timed out")]
    Timeout,
    /// The request breaks a rule of the HTTP/1 codec; the text says which.
    #[error("bad request: {0}")]
    BadRequest(&'static str),
    /// A request method the proxy does not relay (CONNECT).
    #[error("method not allowed")]
    MethodNotAllowed,
    /// The request head did not arrive within `client_header_timeout`.
    #[error("request head timed out")]
    HeadTimeout,
    /// No byte of the request body for `idle_timeout`.
    #[error("request body timed out")]
    BodyTimeout,
    /// The body is longer than `max_body_bytes`.
    #[error("request body too large")]
    BodyTooLarge,
    /// The target is longer than `max_uri_bytes`.
    #[error("request target too long")]
    UriTooLong,
    /// The head is over `max_request_head_bytes` or `max_request_headers`.
    #[error("request head too large")]
    HeadTooLarge,
}

impl From<Reject> for ProxyError {
    fn from(reject: Reject) -> Self {
        match reject {
            Reject::Bad(why) => ProxyError::BadRequest(why),
            Reject::UriTooLong => ProxyError::UriTooLong,
            Reject::HeadTooLarge => ProxyError::HeadTooLarge,
            Reject::BodyTooLarge => ProxyError::BodyTooLarge,
        }
    }
}

impl ProxyError {
    /// The status code the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoServer => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed | ProxyError::BadResponse => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
            ProxyError::HeadTimeout | ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::UriTooLong => StatusCode::URI_TOO_LONG,
            ProxyError::HeadTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
        }
    }

    /// The first line of the body: the status and what happened.
    fn title(self) -> &'static str {
        match self {
            ProxyError::NoServer => "503 Service Unavailable: no server available",
            ProxyError::ConnectFailed => "502 Bad Gateway: no server could be reached",
            ProxyError::BadResponse => "502 Bad Gateway: bad response from server",
            ProxyError::Timeout => "504 Gateway Timeout: server response timed out",
            ProxyError::BadRequest(_) => "400 Bad Request",
            ProxyError::MethodNotAllowed => "405 Method Not Allowed",
            ProxyError::HeadTimeout => "408 Request Timeout: request head not received in time",
            ProxyError::BodyTimeout => "408 Request Timeout: request body stalled",
            ProxyError::BodyTooLarge => "413 Payload Too Large",
            ProxyError::UriTooLong => "414 URI Too Long",
            ProxyError::HeadTooLarge => "431 Request Header Fields Too Large",
        }
    }

    fn body(self) -> String {
        match self {
            ProxyError::BadRequest(why) => format!("{}: {why}\n", self.title()),
            _ => format!("{}\n", self.title()),
        }
    }

    /// Whether the connection closes after this answer: every 4xx Fulcrum generates
    /// (CONTRACT.md), since the rest of what the client sent cannot be trusted to be framed.
    pub fn closes(self) -> bool {
        self.status().is_client_error()
    }

    /// The short plain-text response for this error (`Retry-After: 1` on 503, `Connection: close`
    /// on 4xx), with any body type that can be built from bytes.
    pub fn response<B: From<Bytes>>(self) -> Response<B> {
        let mut response = Response::new(B::from(Bytes::from(self.body())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self == ProxyError::NoServer {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.closes() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }

    /// The same response as HTTP/1.1 bytes; `close` adds `Connection: close` also to a 5xx
    /// (when the client's connection ends with it anyway), `request_id` an `X-Request-Id`.
    /// Returns the body's length (for the access log).
    pub fn write_h1(self, close: bool, request_id: Option<&[u8]>, out: &mut Out) -> usize {
        let body = self.body();
        let status = self.status();
        out.put(b"HTTP/1.1 ");
        out.put(status.as_str().as_bytes());
        out.put(b" ");
        out.put(status.canonical_reason().unwrap_or("").as_bytes());
        out.put(b"\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: ");
        out.put(body.len().to_string().as_bytes());
        out.put(b"\r\n");
        if self == ProxyError::NoServer {
            out.put(b"Retry-After: 1\r\n");
        }
        if close || self.closes() {
            out.put(b"Connection: close\r\n");
        }
        if let Some(id) = request_id {
            super::h1::rewrite::put_request_id(out, id);
        }
        out.put(b"\r\n");
        out.put(body.as_bytes());
        body.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn h1_answers_are_complete_responses() {
        let mut out = Out::new();
        ProxyError::HeadTooLarge.write_h1(false, None, &mut out);
        assert_eq!(
            std::str::from_utf8(out.bytes()).unwrap(),
            "HTTP/1.1 431 Request Header Fields Too Large\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 36\r\nConnection: close\r\n\r\n431 Request Header Fields Too Large\n"
        );
        let mut out = Out::new();
        ProxyError::NoServer.write_h1(false, Some(b"rid"), &mut out);
        let text = std::str::from_utf8(out.bytes()).unwrap();
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        assert!(text.contains("\r\nRetry-After: 1\r\n"), "{text}");
        assert!(text.contains("\r\nX-Request-Id: rid\r\n\r\n"), "{text}");
        assert!(!text.contains("Connection"), "{text}");
    }

    #[test]
    fn every_4xx_closes_and_no_5xx_does() {
        for e in [
            ProxyError::BadRequest("x"),
            ProxyError::MethodNotAllowed,
            ProxyError::HeadTimeout,
            ProxyError::BodyTimeout,
            ProxyError::BodyTooLarge,
            ProxyError::UriTooLong,
            ProxyError::HeadTooLarge,
        ] {
            assert!(e.closes(), "{e:?}");
            assert_eq!(e.response::<Bytes>().headers()["connection"], "close");
        }
        for e in [
            ProxyError::NoServer,
            ProxyError::ConnectFailed,
            ProxyError::BadResponse,
            ProxyError::Timeout,
        ] {
            assert!(!e.closes(), "{e:?}");
        }
    }
}
