//! The one body deadline of every route (`BODY_READ_TIMEOUT_SECS`).

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderValue, header};
use axum::middleware::Next;
use axum::response::Response;

/// Middleware: the request's body must arrive within `limit` of its
/// headers; past it, reading the body fails and the connection is closed
/// after the answer.
pub(crate) async fn body_deadline(
    State(limit): State<Duration>,
    request: Request,
    next: Next,
) -> Response {
    // Most requests (GETs, Engine.IO polls, upgrades) have no body: nothing
    // to time, nothing to allocate.
    if http_body::Body::is_end_stream(request.body()) {
        return next.run(request).await;
    }
    let (parts, body) = request.into_parts();
    let late = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let body = Body::new(Deadline {
        inner: body,
        sleep: Box::pin(tokio::time::sleep(limit)),
        late: late.clone(),
    });
    let mut response = next.run(Request::from_parts(parts, body)).await;
    if late.load(std::sync::atomic::Ordering::Relaxed) {
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// The error a request body's stream ends with once `BODY_READ_TIMEOUT_SECS`
/// passed before it all arrived (the one body deadline every route has).
#[derive(Debug, Clone, Copy, thiserror::Error)]
#[error("the request body did not arrive in time")]
pub struct BodyDeadlinePassed;

impl BodyDeadlinePassed {
    /// Whether a body read failed for this.
    pub fn caused(error: &axum::Error) -> bool {
        let mut cause: Option<&(dyn std::error::Error + 'static)> = Some(error);
        while let Some(e) = cause {
            if e.is::<Self>() {
                return true;
            }
            cause = e.source();
        }
        false
    }
}

/// A request body that fails once its deadline passes.
struct Deadline {
    inner: Body,
    sleep: std::pin::Pin<Box<tokio::time::Sleep>>,
    late: Arc<std::sync::atomic::AtomicBool>,
}

impl http_body::Body for Deadline {
    type Data = bytes::Bytes;
    type Error = axum::Error;

    fn poll_frame(
        mut self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        if self.inner.is_end_stream() {
            return std::task::Poll::Ready(None);
        }
        if self.sleep.as_mut().poll(cx).is_ready() {
            self.late.store(true, std::sync::atomic::Ordering::Relaxed);
            return std::task::Poll::Ready(Some(Err(axum::Error::new(BodyDeadlinePassed))));
        }
        std::pin::Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.inner.size_hint()
    }
}
