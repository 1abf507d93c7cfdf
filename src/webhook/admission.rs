//! Admission control for `POST /webhook`, built so that unauthenticated clients cannot starve
//! verified traffic. While a body is being read, it holds only the bytes it has actually sent
//! (from a shared byte budget), and it must keep up a minimum rate: after a one-second grace,
//! `min_body_rate` bytes per second, or it gets 408. A declared `Content-Length` reserves
//! nothing; one over the limit is refused at once with 413. Only a fully received body takes
//! one of the `max_in_flight` delivery slots, which it keeps until it is answered. Past either
//! budget a delivery gets an immediate 503, which Meta retries.

use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

#[derive(Debug)]
pub struct Admission {
    deliveries: Arc<Semaphore>,
    bytes: Arc<Semaphore>,
    max_body: usize,
    min_rate: usize,
}

/// Why a body was not received.
#[derive(Debug, PartialEq, Eq)]
pub enum BodyError {
    /// Over `server.max_body_bytes` (declared or actually sent).
    TooLarge,
    /// The byte budget or the delivery slots are spent.
    Overloaded,
    /// Slower than `server.min_body_rate`.
    TooSlow,
    /// The connection failed mid-body.
    Broken,
}

/// Held while a delivery is in flight: its bytes, then also its delivery slot.
#[derive(Debug)]
pub struct Ticket {
    /// None for an empty body.
    _bytes: Option<OwnedSemaphorePermit>,
    _delivery: OwnedSemaphorePermit,
}

/// The most a body's buffer starts with, whatever its `Content-Length` says; it grows as
/// bytes actually arrive.
const FIRST_BUFFER: usize = 64 * 1024;

/// Time allowed before the rate applies: a connection's first bytes may take a moment.
const GRACE: Duration = Duration::from_secs(1);

impl Admission {
    /// `max_bytes` must be at least `max_body` (the config check ensures it).
    pub fn new(max_deliveries: usize, max_bytes: usize, max_body: usize, min_rate: usize) -> Self {
        let to_permits = |n: usize| n.min(Semaphore::MAX_PERMITS);
        Self {
            deliveries: Arc::new(Semaphore::new(to_permits(max_deliveries))),
            bytes: Arc::new(Semaphore::new(to_permits(max_bytes))),
            max_body,
            min_rate: min_rate.max(1),
        }
    }

    /// Reads `body`, charging the byte budget as bytes arrive, then takes a delivery slot.
    pub async fn receive(
        &self,
        body: Body,
        declared: Option<usize>,
    ) -> Result<(Bytes, Ticket), BodyError> {
        if declared.is_some_and(|n| n > self.max_body) {
            return Err(BodyError::TooLarge);
        }
        let start = Instant::now();
        let mut held: Option<OwnedSemaphorePermit> = None;
        // The declared length only sizes a small first buffer: an unauthenticated client's
        // claim commits no memory beyond that.
        let mut buf = Received::new(declared.unwrap_or(0).min(FIRST_BUFFER));
        let mut stream = body.into_data_stream();
        loop {
            // The next bytes are due when the rate would fall behind what has arrived so far.
            let due = start + GRACE + rate_time(buf.len(), self.min_rate);
            let chunk = match tokio::time::timeout_at(due, stream.next()).await {
                Err(_) => return Err(BodyError::TooSlow),
                Ok(None) => break,
                Ok(Some(Err(_))) => return Err(BodyError::Broken),
                Ok(Some(Ok(chunk))) => chunk,
            };
            if buf.len() + chunk.len() > self.max_body {
                return Err(BodyError::TooLarge);
            }
            if !chunk.is_empty() {
                let n = u32::try_from(chunk.len()).map_err(|_| BodyError::TooLarge)?;
                let permit = self
                    .bytes
                    .clone()
                    .try_acquire_many_owned(n)
                    .map_err(|_| BodyError::Overloaded)?;
                match held.as_mut() {
                    Some(h) => h.merge(permit),
                    None => held = Some(permit),
                }
            }
            buf.push(chunk);
        }
        let delivery = self
            .deliveries
            .clone()
            .try_acquire_owned()
            .map_err(|_| BodyError::Overloaded)?;
        Ok((
            buf.into_bytes(),
            Ticket {
                _bytes: held,
                _delivery: delivery,
            },
        ))
    }
}

/// A body as it arrives. Most arrive in one chunk, which is kept as it is (a slice of the
/// connection's read buffer, which the request's headers hold anyway): no copy, and no
/// buffer of the body's size to allocate. A second chunk starts a buffer of their own, sized
/// for the declared length up to [`FIRST_BUFFER`].
struct Received {
    first_buffer: usize,
    body: Chunks,
}

enum Chunks {
    Nothing,
    One(Bytes),
    Many(BytesMut),
}

impl Received {
    fn new(first_buffer: usize) -> Self {
        Self {
            first_buffer,
            body: Chunks::Nothing,
        }
    }

    fn len(&self) -> usize {
        match &self.body {
            Chunks::Nothing => 0,
            Chunks::One(one) => one.len(),
            Chunks::Many(many) => many.len(),
        }
    }

    fn push(&mut self, chunk: Bytes) {
        if chunk.is_empty() {
            return;
        }
        match &mut self.body {
            Chunks::Nothing => self.body = Chunks::One(chunk),
            Chunks::One(one) => {
                let both = one.len() + chunk.len();
                let mut many = BytesMut::with_capacity(both.max(self.first_buffer));
                many.extend_from_slice(one);
                many.extend_from_slice(&chunk);
                self.body = Chunks::Many(many);
            }
            Chunks::Many(many) => many.extend_from_slice(&chunk),
        }
    }

    fn into_bytes(self) -> Bytes {
        match self.body {
            Chunks::Nothing => Bytes::new(),
            Chunks::One(one) => one,
            Chunks::Many(many) => many.freeze(),
        }
    }
}

fn rate_time(bytes: usize, rate: usize) -> Duration {
    Duration::from_secs_f64(bytes as f64 / rate as f64)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn body(bytes: &'static [u8]) -> Body {
        Body::from(Bytes::from_static(bytes))
    }

    #[tokio::test]
    async fn bytes_and_deliveries_are_bounded_and_released() {
        let a = Admission::new(2, 100, 60, 1024);
        let (b1, t1) = a.receive(body(&[1; 50]), Some(50)).await.expect("room");
        assert_eq!(b1.len(), 50);
        assert_eq!(
            a.receive(body(&[1; 60]), None).await.unwrap_err(),
            BodyError::Overloaded,
            "only 50 bytes left"
        );
        let (_, t2) = a.receive(body(&[1; 10]), None).await.expect("room for 10");
        assert_eq!(
            a.receive(body(b"x"), None).await.unwrap_err(),
            BodyError::Overloaded,
            "two deliveries in flight"
        );
        drop(t1);
        drop(t2);
        assert!(a.receive(body(&[1; 60]), None).await.is_ok());
    }

    #[tokio::test]
    async fn a_declared_length_reserves_nothing_and_a_large_one_is_refused() {
        let a = Admission::new(10, 100, 60, 1024);
        assert_eq!(
            a.receive(body(b"x"), Some(61)).await.unwrap_err(),
            BodyError::TooLarge
        );
        // Declaring the maximum while sending little costs only what was sent.
        let (_, _t) = a.receive(body(&[1; 5]), Some(60)).await.unwrap();
        let (_, _t2) = a.receive(body(&[1; 60]), Some(60)).await.unwrap();
    }

    #[tokio::test]
    async fn a_body_in_one_chunk_is_kept_as_it_came_and_chunks_are_joined_in_order() {
        let a = Admission::new(10, 1000, 1000, 1024);
        let whole = Bytes::from_static(b"{\"object\":\"whatsapp_business_account\"}");
        let (one, _t) = a.receive(Body::from(whole.clone()), None).await.unwrap();
        assert_eq!(one, whole);
        assert_eq!(one.as_ptr(), whole.as_ptr(), "one chunk is not copied");

        let chunks: Vec<Result<Bytes, std::io::Error>> = ["{\"a\":", "", "[1,", "2]}"]
            .into_iter()
            .map(|c| Ok(Bytes::from_static(c.as_bytes())))
            .collect();
        let streamed = Body::from_stream(futures_util::stream::iter(chunks));
        let (joined, _t2) = a.receive(streamed, Some(12)).await.unwrap();
        assert_eq!(&joined[..], b"{\"a\":[1,2]}");
        let (empty, _t3) = a.receive(body(&[]), None).await.unwrap();
        assert!(empty.is_empty());
    }

    #[tokio::test]
    async fn a_trickling_sender_is_cut_off() {
        let a = Admission::new(10, 1000, 1000, 100);
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(4);
        let stream = tokio_stream_from(rx);
        let feeder = tokio::spawn(async move {
            loop {
                if tx.send(Ok(Bytes::from_static(b"x"))).await.is_err() {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
        });
        let started = Instant::now();
        let err = a
            .receive(Body::from_stream(stream), Some(1000))
            .await
            .unwrap_err();
        assert_eq!(err, BodyError::TooSlow);
        assert!(started.elapsed() < Duration::from_secs(3));
        feeder.abort();
    }

    fn tokio_stream_from(
        mut rx: tokio::sync::mpsc::Receiver<Result<Bytes, std::io::Error>>,
    ) -> impl futures_util::Stream<Item = Result<Bytes, std::io::Error>> + Send + 'static {
        futures_util::stream::poll_fn(move |cx| rx.poll_recv(cx))
    }
}
