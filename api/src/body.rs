//! Reads each request body before the handler does, with a size limit; its
//! time limit is the server's (`BODY_READ_TIMEOUT_SECS`,
//! [`common::edge::deadline::BodyDeadlinePassed`]), answered here with 408. A body
//! over [`BODY_LIMIT`] is still read to its end (up to
//! [`DRAIN_LIMIT`]) before the 413: a reverse proxy that is still sending it
//! would otherwise meet a closed connection and answer 502 instead of
//! passing the 413 on.

use axum::body::Body;
use axum::extract::Request;
use axum::http::HeaderValue;
use axum::http::header::{CONNECTION, CONTENT_LENGTH};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;

use crate::error::ApiError;

/// Request bodies above this size are refused with 413.
pub const BODY_LIMIT: usize = common::domain::PAYLOAD_MAX;

/// Most bytes of an over-limit body read (and dropped) before answering. A
/// body declared larger is refused at once, and its connection closed.
const DRAIN_LIMIT: usize = 8 * 1024 * 1024;

enum Read {
    Complete(Bytes),
    TooLarge,
}

/// Middleware: buffers the body (at most [`BODY_LIMIT`]) for the handler.
pub async fn buffer(request: Request, next: Next) -> Response {
    let (parts, body) = request.into_parts();
    let declared = parts
        .headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok()?.parse::<usize>().ok());
    if declared.is_some_and(|n| n > DRAIN_LIMIT) {
        let mut response = ApiError::TooLarge.into_response();
        response
            .headers_mut()
            .insert(CONNECTION, HeaderValue::from_static("close"));
        return response;
    }
    match read(body).await {
        Ok(Read::Complete(bytes)) => {
            next.run(Request::from_parts(parts, Body::from(bytes)))
                .await
        }
        Ok(Read::TooLarge) => ApiError::TooLarge.into_response(),
        Err(e) if common::edge::deadline::BodyDeadlinePassed::caused(&e) => {
            ApiError::SlowBody.into_response()
        }
        Err(_) => ApiError::invalid("Cannot read the request body").into_response(),
    }
}

async fn read(body: Body) -> Result<Read, axum::Error> {
    let mut stream = body.into_data_stream();
    let mut kept = BytesMut::new();
    let mut seen = 0;
    while let Some(chunk) = stream.next().await {
        let chunk = chunk?;
        seen += chunk.len();
        if seen > DRAIN_LIMIT {
            return Ok(Read::TooLarge);
        }
        if seen <= BODY_LIMIT {
            kept.extend_from_slice(&chunk);
        }
    }
    Ok(if seen > BODY_LIMIT {
        Read::TooLarge
    } else {
        Read::Complete(kept.freeze())
    })
}
