//! Replaying a request on another server: a copy of an idempotent request's head, and the way back
//! to its teed body (`body.rs`), so that an attempt that failed before a response can be sent again
//! whole (CONTRACT.md "Retries"). Only RFC 9110 §9.2.2 idempotent methods qualify; a body that
//! outgrew the 64 KiB copy makes the request unreplayable once any of it was sent.

use std::time::Duration;

use http::{HeaderMap, Method, Request, Uri};
use http_body::Body as _;
use tokio::sync::oneshot;

use super::body::{Leftover, RequestBody, Tee};

/// How long a failed attempt's connection may take to hand a teed body back. The connection task
/// is aborted when its sender drops, so this is a ceiling, not a wait.
const LEFTOVER_WAIT: Duration = Duration::from_secs(1);

/// The head of an idempotent request, and the way back to its body, kept so that it can be sent
/// again.
pub struct Replay {
    method: Method,
    uri: Uri,
    headers: HeaderMap,
    /// Where the teed body comes back; `None` for a bodiless request.
    body: Option<BodyBack>,
}

/// A teed body on its way back from an attempt, or back.
enum BodyBack {
    Waiting(oneshot::Receiver<Leftover>),
    Back(Leftover),
}

/// Whether `method` may be sent twice (RFC 9110 §9.2.2).
pub fn is_idempotent(method: &Method) -> bool {
    matches!(
        *method,
        Method::GET | Method::HEAD | Method::OPTIONS | Method::PUT | Method::DELETE | Method::TRACE
    )
}

impl Replay {
    /// Readies `req` to be replayed when its method is idempotent: copies the head and, when it
    /// has a body, tees the body. `None` for any other method.
    pub fn prepare(req: &mut Request<RequestBody>) -> Option<Replay> {
        if !is_idempotent(req.method()) {
            return None;
        }
        let body = if req.body().is_end_stream() {
            None
        } else {
            match std::mem::replace(req.body_mut(), RequestBody::Empty) {
                RequestBody::Client(incoming) => {
                    let (tee, rx) = Tee::new(incoming);
                    *req.body_mut() = RequestBody::Teed(tee);
                    Some(BodyBack::Waiting(rx))
                }
                other => {
                    *req.body_mut() = other;
                    return None;
                }
            }
        };
        Some(Replay {
            method: req.method().clone(),
            uri: req.uri().clone(),
            headers: req.headers().clone(),
            body,
        })
    }

    /// Whether the request may still be sent again: bodiless, or its body has not outgrown the copy
    /// (so far: the body may still be streaming into the failed attempt's connection).
    pub fn may_replay(&mut self) -> bool {
        let Some(BodyBack::Waiting(rx)) = &mut self.body else {
            return true;
        };
        match rx.try_recv() {
            Ok(leftover) => self.body = Some(BodyBack::Back(leftover)),
            Err(oneshot::error::TryRecvError::Empty) => {}
            Err(oneshot::error::TryRecvError::Closed) => return false,
        }
        true
    }

    /// The request again, for another attempt, once the previous attempt has let go of it; `None`
    /// when its body outgrew the replay copy or did not come back.
    pub async fn request(&mut self) -> Option<Request<RequestBody>> {
        let body = match self.body.take() {
            None => RequestBody::Empty,
            Some(back) => {
                let leftover = match back {
                    BodyBack::Back(leftover) => leftover,
                    BodyBack::Waiting(rx) => {
                        tokio::time::timeout(LEFTOVER_WAIT, rx).await.ok()?.ok()?
                    }
                };
                let (tee, rx) = Tee::resume(leftover);
                self.body = Some(BodyBack::Waiting(rx));
                RequestBody::Teed(tee)
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = self.method.clone();
        *req.uri_mut() = self.uri.clone();
        *req.headers_mut() = self.headers.clone();
        Some(req)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_rfc_9110_idempotent_methods_may_be_replayed() {
        for m in ["GET", "HEAD", "OPTIONS", "PUT", "DELETE", "TRACE"] {
            assert!(is_idempotent(&m.parse().unwrap()), "{m}");
        }
        for m in ["POST", "PATCH", "CONNECT", "PURGE", "LOCK"] {
            assert!(!is_idempotent(&m.parse().unwrap()), "{m}");
        }
    }

    #[tokio::test]
    async fn a_bodiless_request_is_rebuilt_whole_and_more_than_once() {
        let mut req = Request::new(RequestBody::Empty);
        *req.method_mut() = Method::DELETE;
        *req.uri_mut() = "/item/7?x=1".parse().unwrap();
        req.headers_mut().insert("x-id", "42".parse().unwrap());
        let mut replay = Replay::prepare(&mut req).expect("DELETE may be replayed");
        for _ in 0..2 {
            let again = replay
                .request()
                .await
                .expect("a bodiless request always comes back");
            assert_eq!(again.method(), Method::DELETE);
            assert_eq!(again.uri(), "/item/7?x=1");
            assert_eq!(again.headers()["x-id"], "42");
            assert!(again.body().is_end_stream());
        }
    }

    #[test]
    fn a_post_is_never_prepared_for_replay() {
        let mut req = Request::new(RequestBody::Empty);
        *req.method_mut() = Method::POST;
        assert!(Replay::prepare(&mut req).is_none());
        *req.method_mut() = Method::PATCH;
        assert!(Replay::prepare(&mut req).is_none());
    }
}
