//! `POST /upstreams/{upstream}/servers/{address}/{drain|disable|enable}`: the operator's way to take
//! a server out of service and back. The change goes to the upstream's writer as an event, like a
//! health check's; the answer is the server as the snapshot published after the change has it.

use std::time::Duration;

use bytes::Bytes;
use http::{header, HeaderValue, Method, Request, Response, StatusCode};
use http_body_util::Full;
use tokio::sync::oneshot;

use super::{error, guard, json_response, server_status, State, Transport};
use crate::server::{Admin, Event};

/// How long an action waits for the writer to publish; the writer handles events in microseconds,
/// so only a wedged control thread reaches it.
const REPLY_WITHIN: Duration = Duration::from_secs(5);

/// The three segments of a mutation path, still percent-encoded.
pub(super) struct Target<'a> {
    upstream: &'a str,
    address: &'a str,
    action: &'a str,
}

impl<'a> Target<'a> {
    /// Splits `{upstream}/servers/{address}/{action}` (the path after `/upstreams/`).
    pub(super) fn parse(rest: &'a str) -> Option<Target<'a>> {
        let mut parts = rest.split('/');
        let upstream = parts.next()?;
        let servers = parts.next()?;
        let address = parts.next()?;
        let action = parts.next()?;
        (servers == "servers" && parts.next().is_none()).then_some(Target {
            upstream,
            address,
            action,
        })
    }
}

/// Answers one request on a mutation path.
pub(super) async fn handle<B>(
    state: &State,
    req: &Request<B>,
    target: Target<'_>,
    transport: Transport,
) -> Response<Full<Bytes>> {
    let Some(admin) = Admin::from_action(target.action) else {
        return error(
            StatusCode::NOT_FOUND,
            format!(
                "no action `{}`; the actions are drain, disable and enable",
                target.action
            ),
        );
    };
    if req.method() != Method::POST {
        let mut response = error(
            StatusCode::METHOD_NOT_ALLOWED,
            format!("{} takes POST", req.uri().path()),
        );
        response
            .headers_mut()
            .insert(header::ALLOW, HeaderValue::from_static("POST"));
        return response;
    }
    if let Some(refused) = guard::refusal(state.token.as_deref(), req.headers(), transport) {
        return refused;
    }
    let (Some(name), Some(address)) = (decode(target.upstream), decode(target.address)) else {
        return error(
            StatusCode::BAD_REQUEST,
            "the upstream or the address is not valid percent-encoded UTF-8".into(),
        );
    };
    let Some(upstream) = state.upstreams.find(&name) else {
        return error(StatusCode::NOT_FOUND, format!("no upstream `{name}`"));
    };
    let no_server = || {
        error(
            StatusCode::NOT_FOUND,
            format!("upstream `{name}` has no server `{address}`"),
        )
    };
    if !upstream
        .load()
        .servers
        .iter()
        .any(|s| s.config.address == address)
    {
        return no_server();
    }
    let (reply, answer) = oneshot::channel();
    let event = Event::Admin {
        address: address.clone(),
        admin,
        reply,
    };
    let unanswered = || {
        error(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("upstream `{name}`'s writer did not answer; the change may not apply"),
        )
    };
    if upstream.events().send(event).is_err() {
        return unanswered();
    }
    match tokio::time::timeout(REPLY_WITHIN, answer).await {
        Ok(Ok(Some(server))) => json_response(StatusCode::OK, &server_status(&server)),
        // Removed by a reload between the look-up and the writer's turn.
        Ok(Ok(None)) => no_server(),
        Ok(Err(_)) | Err(_) => unanswered(),
    }
}

/// Percent-decodes one path segment (`%5B%3A%3A1%5D%3A80` is `[::1]:80`); `None` when an escape is
/// broken or the bytes are not UTF-8.
fn decode(segment: &str) -> Option<String> {
    let bytes = segment.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hex = bytes.get(i + 1..i + 3)?;
            if !hex.iter().all(u8::is_ascii_hexdigit) {
                return None;
            }
            out.push(u8::from_str_radix(std::str::from_utf8(hex).ok()?, 16).ok()?);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segments_are_percent_decoded() {
        assert_eq!(decode("127.0.0.1:8081").as_deref(), Some("127.0.0.1:8081"));
        assert_eq!(decode("%5B%3A%3A1%5D%3A80").as_deref(), Some("[::1]:80"));
        assert_eq!(decode("a%2fb").as_deref(), Some("a/b"));
        for broken in ["%", "%4", "%zz", "%+1", "%ff"] {
            assert_eq!(decode(broken), None, "{broken}");
        }
    }

    #[test]
    fn only_the_four_segment_shape_is_a_mutation_path() {
        let t = Target::parse("app/servers/127.0.0.1:1/drain").unwrap();
        assert_eq!(
            (t.upstream, t.address, t.action),
            ("app", "127.0.0.1:1", "drain")
        );
        for other in [
            "app",
            "app/servers",
            "app/servers/x",
            "app/server/x/drain",
            "app/servers/x/drain/more",
        ] {
            assert!(Target::parse(other).is_none(), "{other}");
        }
    }
}
