//! Body taps: the glue between a streaming request path and the ring.
//!
//! A [`Recording`] owns one [`ExchangeDraft`]. Wrap the request body the application sent with
//! [`Recording::tap_request`] and the response body going back to it with
//! [`Recording::tap_response`]: every chunk that streams through is copied into the draft (up
//! to the cap, see [`crate::capture::ring`]); nothing is buffered on the way and no chunk is
//! delayed. The exchange is committed when the response body ends, or when the last handle
//! is dropped (the application went away: `error = "client_closed"`; a response body that
//! failed: `"response_body_error"`).
//!
//! With capture off use [`TapBody::passthrough`]: the same type, one branch per frame, no lock
//! and no allocation, so the request path has one body type whether capture is on or not.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::ring::{CaptureRing, ExchangeDraft};

struct Shared {
    ring: Arc<CaptureRing>,
    draft: Mutex<Option<ExchangeDraft>>,
}

impl Shared {
    fn with(&self, f: impl FnOnce(&mut ExchangeDraft)) -> bool {
        let mut guard = match self.draft.lock() {
            Ok(g) => g,
            Err(p) => p.into_inner(),
        };
        match guard.as_mut() {
            Some(d) => {
                f(d);
                true
            }
            None => false,
        }
    }

    fn commit(&self, error: Option<&str>) -> Option<u64> {
        let draft = {
            let mut guard = match self.draft.lock() {
                Ok(g) => g,
                Err(p) => p.into_inner(),
            };
            guard.take()
        };
        draft.map(|mut d| {
            if let Some(e) = error {
                d.error_if_none(e);
            }
            self.ring.commit(d)
        })
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        // Last handle gone before the response body ended.
        let _ = self.commit(Some("client_closed"));
    }
}

/// One exchange being recorded; cheap to clone (all clones record into the same draft).
#[derive(Clone)]
pub struct Recording {
    shared: Arc<Shared>,
}

impl std::fmt::Debug for Recording {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recording").finish_non_exhaustive()
    }
}

impl Recording {
    /// Record `draft` into `ring`.
    pub fn new(ring: &Arc<CaptureRing>, draft: ExchangeDraft) -> Self {
        Recording {
            shared: Arc::new(Shared {
                ring: Arc::clone(ring),
                draft: Mutex::new(Some(draft)),
            }),
        }
    }

    /// Update the draft (attempts, limiter wait, response head, error …); `false` (and a
    /// no-op) once committed.
    pub fn with(&self, f: impl FnOnce(&mut ExchangeDraft)) -> bool {
        self.shared.with(f)
    }

    /// Commit now (idempotent); the id, or `None` if already committed.
    pub fn commit(&self) -> Option<u64> {
        self.shared.commit(None)
    }

    /// Tee the application's request body into the draft.
    pub fn tap_request<B>(&self, body: B) -> TapBody<B> {
        TapBody {
            inner: body,
            tap: Some(Tap {
                shared: Arc::clone(&self.shared),
                side: Side::Request,
            }),
        }
    }

    /// Tee the response body going back to the application; commits when it ends (at once when
    /// it is already over: such a body is never polled).
    pub fn tap_response<B: Body>(&self, body: B) -> TapBody<B> {
        if body.is_end_stream() {
            self.commit();
        }
        TapBody {
            inner: body,
            tap: Some(Tap {
                shared: Arc::clone(&self.shared),
                side: Side::Response,
            }),
        }
    }
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Side {
    Request,
    Response,
}

struct Tap {
    shared: Arc<Shared>,
    side: Side,
}

pin_project! {
    /// A body that copies its data frames into a [`Recording`] (or, passthrough, does nothing).
    pub struct TapBody<B> {
        #[pin]
        inner: B,
        tap: Option<Tap>,
    }
}

impl<B> TapBody<B> {
    /// Capture off: forwards frames untouched.
    pub fn passthrough(body: B) -> Self {
        TapBody {
            inner: body,
            tap: None,
        }
    }

    /// Whether this body records.
    pub fn is_tapped(&self) -> bool {
        self.tap.is_some()
    }
}

impl<B> Body for TapBody<B>
where
    B: Body,
    B::Data: AsRef<[u8]>,
{
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let mut this = self.project();
        let polled = this.inner.as_mut().poll_frame(cx);
        let Some(tap) = this.tap.as_ref() else {
            return polled;
        };
        // hyper stops polling a body that says it has ended: that is its end too.
        let ended = matches!(&polled, Poll::Ready(Some(Ok(_)))) && this.inner.is_end_stream();
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref() {
                    let chunk = data.as_ref();
                    tap.shared.with(|d| {
                        match tap.side {
                            Side::Request => d.request_chunk(chunk),
                            Side::Response => d.response_chunk(chunk),
                        };
                    });
                }
            }
            Poll::Ready(Some(Err(_))) => {
                if tap.side == Side::Response {
                    tap.shared.commit(Some("response_body_error"));
                } else {
                    tap.shared.with(|d| {
                        d.error_if_none("request_body_error");
                    });
                }
            }
            Poll::Ready(None) => {
                if tap.side == Side::Response {
                    tap.shared.commit(None);
                }
            }
            Poll::Pending => {}
        }
        if ended && tap.side == Side::Response {
            tap.shared.commit(None);
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::capture::CaptureConfig;
    use bytes::Bytes;
    use http::{HeaderMap, Method};
    use http_body_util::{BodyExt, Full, StreamBody};

    fn ring() -> Arc<CaptureRing> {
        CaptureRing::new(CaptureConfig::default())
    }

    fn start(ring: &Arc<CaptureRing>) -> Recording {
        let draft = ring.start_upstream(
            "s",
            &Method::POST,
            &"/x".parse().unwrap(),
            &HeaderMap::new(),
        );
        Recording::new(ring, draft)
    }

    #[tokio::test]
    async fn tees_both_bodies_and_commits_at_the_end_of_the_response() {
        let ring = ring();
        let rec = start(&ring);
        let req = rec.tap_request(Full::new(Bytes::from_static(b"hello")));
        assert_eq!(&req.collect().await.unwrap().to_bytes()[..], b"hello");
        rec.with(|d| {
            d.response_head(200, &HeaderMap::new());
        });
        let chunks = futures_util::stream::iter(vec![
            Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from_static(b"wor"))),
            Ok(Frame::data(Bytes::from_static(b"ld"))),
        ]);
        let resp = rec.tap_response(StreamBody::new(chunks));
        assert!(
            ring.snapshot().is_empty(),
            "not committed before the body ends"
        );
        assert_eq!(&resp.collect().await.unwrap().to_bytes()[..], b"world");
        let ex = ring.get(1).expect("committed at end of stream");
        assert_eq!(&ex.request_body.bytes[..], b"hello");
        assert_eq!(&ex.response_body.bytes[..], b"world");
        assert_eq!(ex.error, None);
        assert_eq!(rec.commit(), None, "committed once");
        drop(rec);
        assert_eq!(ring.usage().0, 1);
    }

    #[tokio::test]
    async fn dropped_before_the_end_is_client_closed() {
        let ring = ring();
        let rec = start(&ring);
        rec.with(|d| {
            d.response_head(200, &HeaderMap::new());
        });
        let resp = rec.tap_response(Full::new(Bytes::from_static(b"never read")));
        drop(rec);
        assert!(
            ring.snapshot().is_empty(),
            "a body still held keeps the draft open"
        );
        drop(resp);
        let ex = ring.get(1).unwrap();
        assert_eq!(ex.error.as_deref(), Some("client_closed"));
        assert_eq!(ex.status, Some(200));
    }

    #[tokio::test]
    async fn failing_response_body_is_recorded() {
        let ring = ring();
        let rec = start(&ring);
        let chunks = futures_util::stream::iter(vec![
            Ok(Frame::data(Bytes::from_static(b"par"))),
            Err("upstream reset"),
        ]);
        let resp = rec.tap_response(StreamBody::new(chunks));
        assert!(resp.collect().await.is_err());
        let ex = ring.get(1).unwrap();
        assert_eq!(ex.error.as_deref(), Some("response_body_error"));
        assert_eq!(&ex.response_body.bytes[..], b"par");
    }

    #[tokio::test]
    async fn passthrough_records_nothing() {
        let body = TapBody::passthrough(Full::new(Bytes::from_static(b"x")));
        assert!(!body.is_tapped());
        assert_eq!(body.size_hint().exact(), Some(1));
        assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"x");
    }
}
