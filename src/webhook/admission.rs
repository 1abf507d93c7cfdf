//! Admission control for `POST /webhook`: a bound on deliveries in flight and on the body bytes
//! they may hold, reserved before the body is read (its `Content-Length`, or the body limit
//! when chunked) and released once the delivery is answered. Past either bound a delivery gets
//! an immediate 503, which Meta retries, instead of queueing until Meta's 20 s time-out or
//! growing memory.

use std::sync::Arc;

use axum::extract::{Request, State};
use axum::http::{header, Method};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::app::AppState;
use crate::http::error::ApiError;

#[derive(Debug)]
pub struct Admission {
    deliveries: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_body: usize,
}

/// Held while a delivery is in flight.
#[derive(Debug)]
pub struct Ticket {
    _delivery: OwnedSemaphorePermit,
    _bytes: OwnedSemaphorePermit,
}

impl Admission {
    /// `max_bytes` must be at least `max_body` (the config check ensures it).
    pub fn new(max_deliveries: usize, max_bytes: usize, max_body: usize) -> Self {
        let to_permits = |n: usize| n.min(Semaphore::MAX_PERMITS);
        Self {
            deliveries: Arc::new(Semaphore::new(to_permits(max_deliveries))),
            bytes: Arc::new(Semaphore::new(to_permits(max_bytes))),
            max_body,
        }
    }

    /// A ticket for a body of `declared` bytes (unknown: the largest allowed), or `None` when
    /// either budget is spent.
    pub fn try_admit(&self, declared: Option<usize>) -> Option<Ticket> {
        let reserve = declared.unwrap_or(self.max_body).min(self.max_body).max(1);
        let delivery = self.deliveries.clone().try_acquire_owned().ok()?;
        let bytes = self
            .bytes
            .clone()
            .try_acquire_many_owned(u32::try_from(reserve).ok()?)
            .ok()?;
        Some(Ticket {
            _delivery: delivery,
            _bytes: bytes,
        })
    }
}

pub async fn admit(State(state): State<AppState>, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let declared = request
        .headers()
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    let Some(ticket) = state.admission().try_admit(declared) else {
        return ApiError::client(
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            "overloaded",
            "too many deliveries in flight, retry later",
        )
        .into_response();
    };
    let response = next.run(request).await;
    drop(ticket);
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deliveries_and_bytes_are_both_bounded_and_released() {
        let a = Admission::new(2, 100, 60);
        let t1 = a.try_admit(Some(50)).expect("room");
        assert!(a.try_admit(Some(60)).is_none(), "only 50 bytes left");
        let t2 = a.try_admit(Some(10)).expect("room for 10");
        assert!(a.try_admit(Some(1)).is_none(), "two deliveries in flight");
        drop(t1);
        drop(t2);
        // An unknown length reserves the largest body; a lie above it is capped to it.
        let t3 = a.try_admit(None).expect("room");
        assert!(a.try_admit(Some(41)).is_none());
        assert!(a.try_admit(Some(40)).is_some());
        drop(t3);
        assert!(a.try_admit(Some(10_000)).is_some());
    }
}
