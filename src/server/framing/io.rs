//! The I/O side: [`Framed`], the socket as hyper reads it (whole checked heads only, the end
//! of the stream at a refused head), and what it shares with the connection's service
//! ([`Shared`], [`Exchange`], [`Answer`]).

use std::future::Future;
use std::io;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

use super::{Refusal, Stop, Tracker};

/// Read size while gathering a head that did not arrive in one read.
const READ_CHUNK: usize = 4096;

/// What [`Framed`] shares with the connection's service and with `server.rs`.
pub(crate) struct Shared<S> {
    /// Requests handed to the service ([`Exchange`]s made).
    started: AtomicU64,
    /// Requests whose answer hyper is done with ([`Exchange`]s dropped).
    answered: AtomicU64,
    /// An answer switched protocols.
    switched: AtomicBool,
    /// The socket, left here by a dropped [`Framed`] whose refusal is still to be answered.
    handback: Mutex<Option<(S, Refusal)>>,
}

impl<S> Shared<S> {
    fn answered(&self) -> u64 {
        self.answered.load(Ordering::Acquire)
    }

    /// `Some(answered)`: no request is in hyper's hands, `answered` have been answered so far;
    /// `None`: a request is in flight, or the connection switched protocols (no longer HTTP).
    /// Two equal `Some`s one idle period apart mean the connection was idle all that time.
    pub fn quiet(&self) -> Option<u64> {
        let answered = self.answered();
        let idle = self.started.load(Ordering::Acquire) == answered
            && !self.switched.load(Ordering::Acquire);
        idle.then_some(answered)
    }

    /// The socket and the refusal to answer on it, once hyper has let go of the connection.
    pub fn take_handback(&self) -> Option<(S, Refusal)> {
        self.handback.lock().ok()?.take()
    }
}

/// One request in hyper's hands: made when the service is called, dropped with the response
/// body, which hyper drops once the response is written (or the connection is gone).
pub(crate) struct Exchange<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Exchange<S> {
    pub fn new(shared: &Arc<Shared<S>>) -> Self {
        shared.started.fetch_add(1, Ordering::AcqRel);
        Exchange {
            shared: shared.clone(),
        }
    }

    /// The answer switches protocols (`101`, or `2xx` to `CONNECT`).
    pub fn switching(&self) {
        self.shared.switched.store(true, Ordering::Release);
    }
}

impl<S> Drop for Exchange<S> {
    fn drop(&mut self) {
        self.shared.answered.fetch_add(1, Ordering::Release);
    }
}

pin_project_lite::pin_project! {
    /// A response body that holds its request's [`Exchange`].
    pub(crate) struct Answer<B, S> {
        #[pin]
        body: B,
        exchange: Exchange<S>,
    }
}

impl<B, S> Answer<B, S> {
    pub fn new(body: B, exchange: Exchange<S>) -> Self {
        Answer { body, exchange }
    }
}

impl<B: Body, S> Body for Answer<B, S> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// How the first head of a connection went.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum First {
    /// Hand the connection to hyper.
    Serve,
    /// The peer closed before a whole head.
    Closed,
    /// Answer this and close; nothing reaches hyper.
    Refuse(Refusal),
}

/// The socket as hyper sees it: only whole, checked request heads, and the end of the stream
/// where a refused head was. See the module documentation.
pub(crate) struct Framed<S> {
    /// `None` once handed back.
    io: Option<S>,
    tracker: Tracker,
    /// Bytes read and not yet given to hyper: `buf[..ready]` have passed the tracker, the
    /// rest is held (a head not complete yet, or what follows a switching request).
    buf: BytesMut,
    ready: usize,
    refusal: Option<Refusal>,
    /// hyper was shown the end of the stream for `refusal`, with every earlier request
    /// answered: the answer is Outpost's to write.
    answer_due: bool,
    header_timeout: Duration,
    /// Times a later head that hyper is waiting for (the first is timed by `server.rs`).
    timer: Option<Pin<Box<Sleep>>>,
    /// Which head `timer` was set for (heads passed at that time).
    timer_for: Option<u64>,
    shared: Arc<Shared<S>>,
}

impl<S> Framed<S> {
    pub fn new(io: S, max_head: usize, header_timeout: Duration) -> Self {
        Framed {
            io: Some(io),
            tracker: Tracker::new(max_head),
            buf: BytesMut::new(),
            ready: 0,
            refusal: None,
            answer_due: false,
            header_timeout,
            timer: None,
            timer_for: None,
            shared: Arc::new(Shared {
                started: AtomicU64::new(0),
                answered: AtomicU64::new(0),
                switched: AtomicBool::new(false),
                handback: Mutex::new(None),
            }),
        }
    }

    pub fn shared(&self) -> Arc<Shared<S>> {
        self.shared.clone()
    }

    /// Nothing has been received (an idle pre-connection, when the first head times out).
    pub fn is_idle(&self) -> bool {
        self.buf.is_empty() && self.tracker.heads() == 0
    }

    /// The socket, for answering a refused first head.
    pub fn take_io(&mut self) -> Option<S> {
        self.io.take()
    }

    fn io(&mut self) -> io::Result<&mut S> {
        self.io
            .as_mut()
            .ok_or_else(|| io::Error::from(io::ErrorKind::NotConnected))
    }

    fn refuse(&mut self, refusal: Refusal) {
        self.tracker.close();
        self.refusal = Some(refusal);
        self.buf.truncate(self.ready);
    }

    /// Scan the held bytes again (after more arrived, or the switch answer came).
    fn rescan(&mut self) {
        let scan = self.tracker.scan(&self.buf[self.ready..]);
        self.ready += scan.pass;
        match scan.stop {
            Stop::All | Stop::Hold => {}
            Stop::Refuse(refusal) => self.refuse(refusal),
            Stop::Cut => self.buf.truncate(self.ready),
        }
    }

    /// Give hyper what has passed.
    fn give(&mut self, out: &mut ReadBuf<'_>) {
        let n = self.ready.min(out.remaining());
        out.put_slice(&self.buf[..n]);
        self.buf.advance(n);
        self.ready -= n;
        if self.buf.is_empty() {
            // Most connections never need the buffer again: don't keep it for their lifetime.
            self.buf = BytesMut::new();
        }
    }
}

impl<S: AsyncRead + Unpin> Framed<S> {
    /// Read until the first request head is complete and checked (or an HTTP/2 preface).
    /// Cancel-safe: `server.rs` runs it under `limits.header_read_timeout`.
    pub async fn first_head(&mut self) -> io::Result<First> {
        loop {
            if self.tracker.heads() > 0 || self.tracker.is_tunnel() {
                return Ok(First::Serve);
            }
            if let Some(refusal) = self.refusal {
                return Ok(First::Refuse(refusal));
            }
            if std::future::poll_fn(|cx| self.poll_fill(cx)).await? == 0 {
                return Ok(First::Closed);
            }
        }
    }

    /// Read into `buf` behind the held bytes and scan them; `0` at the end of the stream.
    fn poll_fill(&mut self, cx: &mut Context<'_>) -> Poll<io::Result<usize>> {
        let Some(io) = self.io.as_mut() else {
            return Poll::Ready(Err(io::ErrorKind::NotConnected.into()));
        };
        self.buf.reserve(READ_CHUNK);
        let n = ready!(pin!(io.read_buf(&mut self.buf)).poll(cx))?;
        if n > 0 {
            self.rescan();
        }
        Poll::Ready(Ok(n))
    }

    /// A later head is partly here and hyper waits for it: time it. `Ready` once refused.
    fn poll_head_timer(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        let heads = self.tracker.heads();
        let begun = self.buf.iter().any(|b| !matches!(b, b'\r' | b'\n'));
        if !begun || self.shared.answered() < heads {
            // Blank lines only (an idle connection), or hyper is still busy with earlier
            // requests and will not read this head yet.
            return Poll::Pending;
        }
        let deadline = Instant::now() + self.header_timeout;
        let timer = match &mut self.timer {
            Some(timer) => {
                if self.timer_for != Some(heads) {
                    timer.as_mut().reset(deadline);
                }
                timer
            }
            None => self
                .timer
                .insert(Box::pin(tokio::time::sleep_until(deadline))),
        };
        self.timer_for = Some(heads);
        ready!(timer.as_mut().poll(cx));
        self.refuse(Refusal::Timeout);
        Poll::Ready(())
    }

    /// After a refusal: hyper sees the end of the stream once it has answered every request
    /// before the refused one. Until then what the client sends is read and dropped, so that
    /// its going away is still noticed.
    fn poll_refused(
        &mut self,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if self.refusal.is_none() || self.answer_due {
            return Poll::Ready(Ok(()));
        }
        loop {
            if self.shared.answered() >= self.tracker.heads() {
                self.answer_due = true;
                return Poll::Ready(Ok(()));
            }
            let before = out.filled().len();
            ready!(Pin::new(self.io()?).poll_read(cx, out))?;
            let got = out.filled().len() - before;
            out.set_filled(before);
            if got == 0 {
                // The client is gone: nobody to answer.
                self.refusal = None;
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncRead + Unpin> AsyncRead for Framed<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        out: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if out.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.ready > 0 {
                this.give(out);
                return Poll::Ready(Ok(()));
            }
            if this.tracker.is_closed() {
                return this.poll_refused(cx, out);
            }
            if this.tracker.is_tunnel() {
                return Pin::new(this.io()?).poll_read(cx, out);
            }
            if this.tracker.awaits_switch_answer() {
                // Set before hyper writes the answer's head, so known when the tunnel reads.
                if this.shared.switched.load(Ordering::Acquire) {
                    this.tracker.switch_answered(true);
                } else if this.shared.answered() >= this.tracker.heads() {
                    this.tracker.switch_answered(false);
                } else if this.buf.len() < this.tracker.max_head {
                    // Meanwhile, keep reading (held) so that the client's going away is seen.
                    if ready!(this.poll_fill(cx))? == 0 {
                        this.buf.clear();
                        return Poll::Ready(Ok(()));
                    }
                    continue;
                } else {
                    // Enough held: wait for the answer, which wakes this task.
                    return Poll::Pending;
                }
                this.rescan();
                continue;
            }
            if !this.buf.is_empty() {
                // A head split over reads: gather it here, where hyper does not see it.
                match this.poll_fill(cx) {
                    Poll::Ready(Ok(0)) => {
                        // Gone mid-head: hyper sees a clean end between requests.
                        this.buf.clear();
                        return Poll::Ready(Ok(()));
                    }
                    Poll::Ready(Ok(_)) => continue,
                    Poll::Ready(Err(e)) => return Poll::Ready(Err(e)),
                    Poll::Pending => {
                        ready!(this.poll_head_timer(cx));
                        continue;
                    }
                }
            }
            // The common case: read straight into hyper's buffer and only look at the bytes.
            let before = out.filled().len();
            ready!(Pin::new(this.io()?).poll_read(cx, out))?;
            if out.filled().len() == before {
                return Poll::Ready(Ok(()));
            }
            let scan = this.tracker.scan(&out.filled()[before..]);
            match scan.stop {
                Stop::All => {}
                Stop::Hold => this
                    .buf
                    .extend_from_slice(&out.filled()[before + scan.pass..]),
                Stop::Refuse(refusal) => this.refuse(refusal),
                Stop::Cut => {}
            }
            out.set_filled(before + scan.pass);
            if scan.pass > 0 {
                return Poll::Ready(Ok(()));
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for Framed<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io()?).poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.get_mut().io()?).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.io.as_ref().is_some_and(|io| io.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.get_mut().io()?).poll_flush(cx)
    }

    /// While Outpost's answer to a refused head is due, the socket stays open for it.
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let answer_due = this.answer_due;
        let io = Pin::new(this.io()?);
        if answer_due {
            io.poll_flush(cx)
        } else {
            io.poll_shutdown(cx)
        }
    }
}

impl<S> Drop for Framed<S> {
    fn drop(&mut self) {
        if !self.answer_due {
            return;
        }
        if let (Some(io), Some(refusal)) = (self.io.take(), self.refusal) {
            if let Ok(mut slot) = self.shared.handback.lock() {
                *slot = Some((io, refusal));
            }
        }
    }
}
