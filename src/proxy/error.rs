//! Failures on the request path and the one place they become status codes.

use bytes::Bytes;
use http::{header, HeaderValue, Response, StatusCode};

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
    /// A request whose framing is ambiguous (see `has_ambiguous_framing`).
    #[error("bad request")]
    BadRequest,
    /// A request method the proxy does not relay (CONNECT).
    #[error("method not allowed")]
    MethodNotAllowed,
}

impl ProxyError {
    /// The status code the client gets.
    pub fn status(self) -> StatusCode {
        match self {
            ProxyError::NoServer => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::ConnectFailed | ProxyError::BadResponse => StatusCode::BAD_GATEWAY,
            ProxyError::Timeout => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::BadRequest => StatusCode::BAD_REQUEST,
            ProxyError::MethodNotAllowed => StatusCode::METHOD_NOT_ALLOWED,
        }
    }

    fn body(self) -> &'static str {
        match self {
            ProxyError::NoServer => "503 Service Unavailable: no server available\n",
            ProxyError::ConnectFailed => "502 Bad Gateway: no server could be reached\n",
            ProxyError::BadResponse => "502 Bad Gateway: bad response from server\n",
            ProxyError::Timeout => "504 Gateway Timeout: server response timed out\n",
            ProxyError::BadRequest => "400 Bad Request: ambiguous message framing\n",
            ProxyError::MethodNotAllowed => "405 Method Not Allowed\n",
        }
    }

    /// The short plain-text response for this error (`Retry-After: 1` on 503, `Connection: close`
    /// on 4xx), with any body type that can be built from static bytes.
    pub fn response<B: From<Bytes>>(self) -> Response<B> {
        let mut response = Response::new(B::from(Bytes::from_static(self.body().as_bytes())));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("text/plain; charset=utf-8"),
        );
        if self == ProxyError::NoServer {
            headers.insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        if self.status().is_client_error() {
            headers.insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        response
    }
}
