//! A request body that streams to the first attempt while keeping a copy for a retry.
//!
//! Modelled on linkerd2-proxy's `http/retry/src/replay.rs`: nothing waits for the whole body
//! before the first byte goes out. The first attempt reads from the application and forwards
//! each chunk at once, keeping a reference-counted copy (`Bytes`, no memcpy) while the total
//! stays within the cap (`retry.max_body_bytes`). A retry replays the copy, then goes on
//! reading the application's body where the previous attempt stopped (an upstream may answer
//! before it has read everything). Once the cap is passed the copy is dropped and the request
//! is no longer retryable ([`ReplayBody::is_capped`]). With a cap of 0 nothing is copied: the
//! body may still go again while no byte of it has been read (a refused connection).
//!
//! Only one clone reads at a time: the reading state (the application's body and the copy)
//! moves into the clone that polls it and back into the shared slot when that clone is dropped;
//! a retry that polls before the previous attempt's body was dropped waits for it.
//!
//! The body also says whose fault a stall or an error is: an error from the application's body
//! comes out wrapped in [`ClientBodyError`] (a client fault: `400`, `413` or `499`, never an
//! upstream failure), and [`BodyWatch::stalled_on_client`] tells a timeout that fires while
//! Outpost waits for the application's next bytes from one that fires while it waits for the
//! upstream.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};

use bytes::Bytes;
use http::HeaderMap;
use http_body::{Body, Frame, SizeHint};

use crate::body::{BoxBody, BoxError};
use crate::error::ProxyError;

/// An error of the application's request body (it broke off, was malformed, or went over a
/// limit). Never an upstream failure.
#[derive(Debug, thiserror::Error)]
#[error("request body from the application failed")]
pub struct ClientBodyError {
    /// The application closed the connection before the body was complete.
    pub gone: bool,
    #[source]
    pub source: BoxError,
}

impl ClientBodyError {
    fn new(source: BoxError) -> Self {
        let gone = {
            let mut current: Option<&(dyn std::error::Error + 'static)> = Some(&*source);
            let mut gone = false;
            while let Some(e) = current {
                if let Some(h) = e.downcast_ref::<hyper::Error>() {
                    gone |= h.is_incomplete_message() || h.is_canceled();
                }
                if let Some(io) = e.downcast_ref::<std::io::Error>() {
                    // hyper reports a body cut short by the connection closing as an
                    // `UnexpectedEof` (its `IncompleteBody`).
                    gone |= matches!(
                        io.kind(),
                        std::io::ErrorKind::UnexpectedEof
                            | std::io::ErrorKind::ConnectionReset
                            | std::io::ErrorKind::ConnectionAborted
                            | std::io::ErrorKind::BrokenPipe
                    );
                    if let Some(inner) = io.get_ref() {
                        current = Some(inner as &(dyn std::error::Error + 'static));
                        continue;
                    }
                }
                current = e.source();
            }
            gone
        };
        ClientBodyError { gone, source }
    }

    /// The client body error in `err`'s cause chain, if any.
    pub fn find<'a>(err: &'a (dyn std::error::Error + 'static)) -> Option<&'a ClientBodyError> {
        let mut current: Option<&(dyn std::error::Error + 'static)> = Some(err);
        while let Some(e) = current {
            if let Some(found) = e.downcast_ref::<ClientBodyError>() {
                return Some(found);
            }
            // `io::Error::source` skips the wrapped error itself.
            if let Some(inner) = e
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
            {
                current = Some(inner as &(dyn std::error::Error + 'static));
                continue;
            }
            current = e.source();
        }
        None
    }
}

/// The error for the application when its request body failed: over a limit (`413`), the
/// application gone (`499`, logged only), or unreadable (`400`). Never an upstream failure.
pub fn client_fault(err: &(dyn std::error::Error + 'static), limit: Option<u64>) -> ProxyError {
    if let (Some(limit), true) = (limit, crate::body::is_length_limit(err)) {
        return ProxyError::PayloadTooLarge { limit };
    }
    if ClientBodyError::find(err).is_some_and(|e| e.gone) {
        return ProxyError::ClientClosed;
    }
    ProxyError::BadRequest("request body could not be read")
}

/// A retry's body asked for bytes the copy no longer holds (never happens when the stack checks
/// [`ReplayBody::is_capped`] first).
#[derive(Debug, thiserror::Error)]
#[error("request body cannot be sent again: it was larger than the replay buffer")]
pub struct NotReplayable;

/// The reading state: owned by the clone that reads, else parked in [`Shared::slot`].
struct State {
    inner: BoxBody,
    /// The copy, chunk by chunk, while it fits in the cap.
    copy: Vec<Bytes>,
    copied: u64,
    /// Bytes read from the application so far.
    read: u64,
    cap: u64,
    capped: bool,
    /// The application's body ended (its trailers, if any, are in `trailers`).
    done: bool,
    trailers: Option<HeaderMap>,
}

struct Slot {
    state: Option<State>,
    /// A clone waiting for the state to come back.
    waiting: Option<Waker>,
}

struct Shared {
    slot: Mutex<Slot>,
    /// The last poll of the application's body found no bytes ready.
    stalled: AtomicBool,
    /// The application's body has been read to its end.
    complete: AtomicBool,
    /// Set once the copy was dropped (cap passed, or the application's body failed).
    capped: AtomicBool,
    /// The application's body size, when it was declared exactly.
    exact: Option<u64>,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Slot> {
        self.slot.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// A handle on a request body's progress, kept by the stack after the body was handed on.
#[derive(Clone)]
pub struct BodyWatch(Option<Arc<Shared>>);

impl BodyWatch {
    /// A body with nothing to wait for (no body, or one already read into memory).
    pub fn none() -> Self {
        BodyWatch(None)
    }

    /// True while Outpost is waiting for the application's next bytes: a timeout now is the
    /// application's slowness, not the upstream's.
    pub fn stalled_on_client(&self) -> bool {
        self.0.as_ref().is_some_and(|s| {
            s.stalled.load(Ordering::Relaxed) && !s.complete.load(Ordering::Relaxed)
        })
    }
}

/// One attempt's view of the request body. See the module docs.
pub struct ReplayBody {
    shared: Arc<Shared>,
    state: Option<State>,
    /// Bytes this clone has produced.
    sent: u64,
    /// Chunks of the copy this clone has replayed.
    replayed: usize,
    trailers_sent: bool,
}

impl ReplayBody {
    /// Wrap the application's body, keeping a copy of up to `cap` bytes.
    pub fn new(inner: BoxBody, cap: u64) -> Self {
        let hint = inner.size_hint();
        let exact = hint.exact();
        let done = inner.is_end_stream();
        let shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                state: None,
                waiting: None,
            }),
            stalled: AtomicBool::new(false),
            complete: AtomicBool::new(done),
            capped: AtomicBool::new(false),
            exact,
        });
        ReplayBody {
            shared,
            state: Some(State {
                inner,
                copy: Vec::new(),
                copied: 0,
                read: 0,
                cap,
                capped: false,
                done,
                trailers: None,
            }),
            sent: 0,
            replayed: 0,
            trailers_sent: false,
        }
    }

    /// A body already in memory (read first to sign it): every attempt replays it.
    pub fn buffered(chunks: Vec<Bytes>) -> Self {
        let len: u64 = chunks.iter().map(|c| c.len() as u64).sum();
        let mut body = Self::new(crate::body::empty(), len);
        body.shared = Arc::new(Shared {
            slot: Mutex::new(Slot {
                state: None,
                waiting: None,
            }),
            stalled: AtomicBool::new(false),
            complete: AtomicBool::new(true),
            capped: AtomicBool::new(false),
            exact: Some(len),
        });
        if let Some(state) = &mut body.state {
            state.copy = chunks;
            state.copied = len;
            state.read = len;
        }
        body
    }

    /// The body for another attempt: the copy, then whatever the application still sends.
    pub fn replay(&self) -> Self {
        ReplayBody {
            shared: self.shared.clone(),
            state: None,
            sent: 0,
            replayed: 0,
            trailers_sent: false,
        }
    }

    /// True once the copy was given up: the request cannot be sent again.
    pub fn is_capped(&self) -> bool {
        self.shared.capped.load(Ordering::Relaxed) || self.state.as_ref().is_some_and(|s| s.capped)
    }

    pub fn watch(&self) -> BodyWatch {
        BodyWatch(Some(self.shared.clone()))
    }

    /// Take the reading state, or register to be woken when the clone holding it is dropped.
    fn acquire(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.state.is_some() {
            return Poll::Ready(());
        }
        let mut slot = self.shared.lock();
        match slot.state.take() {
            Some(state) => {
                drop(slot);
                self.state = Some(state);
                Poll::Ready(())
            }
            None => {
                slot.waiting = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

impl Drop for ReplayBody {
    fn drop(&mut self) {
        if let Some(state) = self.state.take() {
            let mut slot = self.shared.lock();
            slot.state = Some(state);
            if let Some(waker) = slot.waiting.take() {
                drop(slot);
                waker.wake();
            }
        }
    }
}

impl Body for ReplayBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        if this.acquire(cx).is_pending() {
            return Poll::Pending;
        }
        let Some(state) = this.state.as_mut() else {
            return Poll::Pending;
        };
        // Replay what an earlier attempt read.
        if this.sent < state.read {
            if state.capped {
                return Poll::Ready(Some(Err(NotReplayable.into())));
            }
            if let Some(chunk) = state.copy.get(this.replayed) {
                this.replayed += 1;
                this.sent += chunk.len() as u64;
                return Poll::Ready(Some(Ok(Frame::data(chunk.clone()))));
            }
        }
        if state.done {
            if !this.trailers_sent {
                this.trailers_sent = true;
                if let Some(trailers) = &state.trailers {
                    return Poll::Ready(Some(Ok(Frame::trailers(trailers.clone()))));
                }
            }
            return Poll::Ready(None);
        }
        match Pin::new(&mut state.inner).poll_frame(cx) {
            Poll::Pending => {
                this.shared.stalled.store(true, Ordering::Relaxed);
                Poll::Pending
            }
            Poll::Ready(frame) => {
                this.shared.stalled.store(false, Ordering::Relaxed);
                match frame {
                    None => {
                        state.done = true;
                        this.shared.complete.store(true, Ordering::Relaxed);
                        Poll::Ready(None)
                    }
                    Some(Err(e)) => {
                        // Whatever was read cannot be completed: no attempt may replay it.
                        state.capped = true;
                        state.copy = Vec::new();
                        this.shared.capped.store(true, Ordering::Relaxed);
                        Poll::Ready(Some(Err(ClientBodyError::new(e).into())))
                    }
                    Some(Ok(frame)) => match frame.into_data() {
                        Ok(data) => {
                            let len = data.len() as u64;
                            state.read = state.read.saturating_add(len);
                            this.sent = state.read;
                            if !state.capped {
                                if state.copied.saturating_add(len) > state.cap {
                                    state.capped = true;
                                    state.copy = Vec::new();
                                    this.shared.capped.store(true, Ordering::Relaxed);
                                } else if len > 0 {
                                    state.copied += len;
                                    state.copy.push(data.clone());
                                    this.replayed = state.copy.len();
                                }
                            }
                            if state.inner.is_end_stream() {
                                state.done = true;
                                this.trailers_sent = true;
                                this.shared.complete.store(true, Ordering::Relaxed);
                            }
                            Poll::Ready(Some(Ok(Frame::data(data))))
                        }
                        Err(frame) => {
                            state.done = true;
                            this.shared.complete.store(true, Ordering::Relaxed);
                            this.trailers_sent = true;
                            state.trailers = frame.trailers_ref().cloned();
                            Poll::Ready(Some(Ok(frame)))
                        }
                    },
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match &self.state {
            Some(state) => state.done && self.sent >= state.read && self.trailers_sent,
            None => self.shared.exact == Some(0),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self.shared.exact {
            Some(exact) => SizeHint::with_exact(exact.saturating_sub(self.sent)),
            None => SizeHint::default(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures_util::FutureExt;
    use http_body_util::{BodyExt, StreamBody};
    use tokio::sync::mpsc;

    /// A body fed by the test, chunk by chunk.
    fn channel() -> (mpsc::Sender<Result<Frame<Bytes>, BoxError>>, BoxBody) {
        let (tx, rx) = mpsc::channel(8);
        let stream = futures_util::stream::unfold(rx, |mut rx| async move {
            rx.recv().await.map(|item| (item, rx))
        });
        (tx, StreamBody::new(stream).boxed_unsync())
    }

    async fn next_data(body: &mut ReplayBody) -> Option<Bytes> {
        body.frame().await.map(|f| f.unwrap().into_data().unwrap())
    }

    #[tokio::test]
    async fn first_attempt_streams_before_the_body_ends_and_a_retry_replays_it() {
        let (tx, inner) = channel();
        let mut first = ReplayBody::new(inner, 1024);
        let watch = first.watch();
        tx.send(Ok(Frame::data(Bytes::from_static(b"hello "))))
            .await
            .unwrap();
        // The chunk comes out while the application has not finished.
        assert_eq!(next_data(&mut first).await.unwrap(), "hello ");
        // Nothing more yet: the body waits on the application.
        assert!(first.frame().now_or_never().is_none());
        assert!(watch.stalled_on_client());
        tx.send(Ok(Frame::data(Bytes::from_static(b"world"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(next_data(&mut first).await.unwrap(), "world");
        assert!(first.frame().await.is_none());
        assert!(!watch.stalled_on_client());
        let second = first.replay();
        drop(first);
        assert!(!second.is_capped());
        let bytes = second.collect().await.unwrap().to_bytes();
        assert_eq!(bytes, "hello world");
    }

    #[tokio::test]
    async fn a_retry_continues_where_the_first_attempt_stopped() {
        let (tx, inner) = channel();
        let mut first = ReplayBody::new(inner, 1024);
        tx.send(Ok(Frame::data(Bytes::from_static(b"a"))))
            .await
            .unwrap();
        assert_eq!(next_data(&mut first).await.unwrap(), "a");
        let second = first.replay();
        drop(first);
        tx.send(Ok(Frame::data(Bytes::from_static(b"b"))))
            .await
            .unwrap();
        drop(tx);
        assert_eq!(second.collect().await.unwrap().to_bytes(), "ab");
    }

    #[tokio::test]
    async fn past_the_cap_the_copy_stops_and_the_body_is_not_replayable() {
        let chunks: Vec<Result<Frame<Bytes>, BoxError>> = (0..4)
            .map(|i| Ok(Frame::data(Bytes::from(vec![b'a' + i; 8]))))
            .collect();
        let inner = StreamBody::new(futures_util::stream::iter(chunks)).boxed_unsync();
        let first = ReplayBody::new(inner, 16);
        let retry = first.replay();
        let bytes = first.collect().await.unwrap().to_bytes();
        assert_eq!(bytes.len(), 32, "the first attempt gets every byte");
        assert!(retry.is_capped());
        let err = retry.collect().await.unwrap_err();
        assert!(err.is::<NotReplayable>());
    }

    #[tokio::test]
    async fn cap_zero_copies_nothing_but_an_unread_body_can_still_go_again() {
        let first = ReplayBody::new(crate::body::full("data"), 0);
        let second = first.replay();
        drop(first);
        assert!(!second.is_capped(), "nothing was read");
        let third = second.replay();
        assert_eq!(second.collect().await.unwrap().to_bytes(), "data");
        assert!(third.is_capped());
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_previous_attempt_to_let_go() {
        let (tx, inner) = channel();
        let mut first = ReplayBody::new(inner, 64);
        tx.send(Ok(Frame::data(Bytes::from_static(b"x"))))
            .await
            .unwrap();
        assert_eq!(next_data(&mut first).await.unwrap(), "x");
        let mut second = first.replay();
        assert!(second.frame().now_or_never().is_none());
        drop(first);
        drop(tx);
        assert_eq!(next_data(&mut second).await.unwrap(), "x");
        assert!(second.frame().await.is_none());
    }

    #[tokio::test]
    async fn trailers_are_replayed() {
        let mut trailers = HeaderMap::new();
        trailers.insert("grpc-status", "0".parse().unwrap());
        let frames: Vec<Result<Frame<Bytes>, BoxError>> = vec![
            Ok(Frame::data(Bytes::from_static(b"m"))),
            Ok(Frame::trailers(trailers.clone())),
        ];
        let inner = StreamBody::new(futures_util::stream::iter(frames)).boxed_unsync();
        let first = ReplayBody::new(inner, 64);
        let second = first.replay();
        let got = first.collect().await.unwrap();
        assert_eq!(got.trailers(), Some(&trailers));
        let again = second.collect().await.unwrap();
        assert_eq!(again.trailers(), Some(&trailers));
        assert_eq!(again.to_bytes(), "m");
    }

    #[tokio::test]
    async fn application_errors_are_marked_as_client_faults() {
        let (tx, inner) = channel();
        let first = ReplayBody::new(inner, 64);
        let retry = first.replay();
        tx.send(Err("broken chunk".into())).await.unwrap();
        let err = first.collect().await.unwrap_err();
        assert!(ClientBodyError::find(&*err).is_some());
        assert!(retry.is_capped(), "a failed body is never replayed");
    }

    #[tokio::test]
    async fn exact_size_is_kept_for_every_attempt() {
        let first = ReplayBody::new(crate::body::full("12345"), 64);
        assert_eq!(first.size_hint().exact(), Some(5));
        let second = first.replay();
        assert_eq!(second.size_hint().exact(), Some(5));
        drop(first);
        assert_eq!(second.collect().await.unwrap().to_bytes(), "12345");
        let buffered =
            ReplayBody::buffered(vec![Bytes::from_static(b"ab"), Bytes::from_static(b"c")]);
        assert_eq!(buffered.size_hint().exact(), Some(3));
        let again = buffered.replay();
        assert_eq!(buffered.collect().await.unwrap().to_bytes(), "abc");
        assert_eq!(again.collect().await.unwrap().to_bytes(), "abc");
    }
}
