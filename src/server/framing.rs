//! HTTP/1 message boundaries on the app listener, so that the request-smuggling guards of
//! DESIGN.md (a request with both `Content-Length` and `Transfer-Encoding`, or with differing
//! `Content-Length`s, is answered 400 and the connection closed) and the 431/408 header limits
//! hold for every request of a kept-alive connection, not only the first.
//!
//! [`Framed`] sits between the socket and hyper. Its [`Tracker`] follows the request stream the
//! way hyper's HTTP/1 parser will (a head; a `Content-Length` or chunked body; the next head …)
//! and lets a head through only once it is complete and has passed [`check_head`], so hyper
//! never parses a head that Outpost has not judged. Body bytes are read straight into hyper's
//! buffer and only counted. When a head is refused, hyper is shown the end of the stream as
//! soon as it has answered every earlier request ([`Exchange`] counts the answers), and the
//! socket comes back to `server.rs` through [`Shared`] to carry Outpost's JSON error.
//!
//! Tracking stops (everything passes) after an HTTP/2 prior-knowledge preface and after a
//! request that switched protocols (a `101` to `Upgrade`, a `2xx` to `CONNECT`): those bytes are
//! not HTTP/1 any more. Whether a request switches is known only from its answer, so the bytes
//! behind such a request are held until the answer is in.

use std::future::Future;
use std::io;
use std::mem::MaybeUninit;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, BytesMut};
use http_body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, ReadBuf};
use tokio::time::{Instant, Sleep};

/// The HTTP/2 prior-knowledge connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Header lines parsed on the stack; heads with more take the slow path.
const INLINE_HEADERS: usize = 64;

/// Most header lines in one head (hyper is configured with the same limit: 431 above).
pub(super) const MAX_HEADERS: usize = 1000;

/// Read size while gathering a head that did not arrive in one read.
const READ_CHUNK: usize = 4096;

/// Why a request head is answered by Outpost instead of being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Refusal {
    /// The head did not arrive within `limits.header_read_timeout`.
    Timeout,
    /// The head is larger than `limits.max_header_bytes`, or has more than [`MAX_HEADERS`] lines.
    TooLarge,
    /// Malformed, or framed ambiguously (RFC 9112 §6.3).
    Bad(&'static str),
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum BodyLength {
    None,
    Length(u64),
    Chunked,
}

/// What a complete, acceptable head says about its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Message {
    /// Bytes of the head, blank lines before it and the empty line after it included.
    pub len: usize,
    pub body: BodyLength,
    /// `Upgrade` or `CONNECT`: the connection may stop being HTTP/1 after this message.
    pub switching: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Parsed {
    /// More bytes are needed.
    Partial,
    Message(Message),
    Refused(Refusal),
}

/// Parse and judge a request head (the bytes from a message boundary on). Partial heads are
/// `Partial` unless they are already malformed.
pub(super) fn check_head(data: &[u8], max: usize) -> Parsed {
    let mut slots = [const { MaybeUninit::<httparse::Header<'_>>::uninit() }; INLINE_HEADERS];
    let mut req = httparse::Request::new(&mut []);
    match req.parse_with_uninit_headers(data, &mut slots) {
        Ok(httparse::Status::Complete(len)) => judge(&req, len, max),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => check_head_slow(data, max),
        // obs-fold, bad names, HTTP/0.9 …: what hyper would refuse with its own plain 400.
        Err(_) => Parsed::Refused(Refusal::Bad("malformed request head")),
    }
}

/// [`check_head`] for heads with more than [`INLINE_HEADERS`] lines.
#[cold]
fn check_head_slow(data: &[u8], max: usize) -> Parsed {
    let mut headers = vec![httparse::EMPTY_HEADER; MAX_HEADERS];
    let mut req = httparse::Request::new(&mut headers);
    match req.parse(data) {
        Ok(httparse::Status::Complete(len)) => judge(&req, len, max),
        Ok(httparse::Status::Partial) => Parsed::Partial,
        Err(httparse::Error::TooManyHeaders) => Parsed::Refused(Refusal::TooLarge),
        Err(_) => Parsed::Refused(Refusal::Bad("malformed request head")),
    }
}

/// Request smuggling guards (RFC 9112 §6.3) and the body length, read the way hyper's server
/// reads them (`proto/h1/role.rs`), so that both agree on where every message ends.
fn judge(req: &httparse::Request<'_, '_>, len: usize, max: usize) -> Parsed {
    if len > max {
        return Parsed::Refused(Refusal::TooLarge);
    }
    let http10 = req.version == Some(0);
    let mut switching = req.method == Some("CONNECT");
    let mut content_length: Option<u64> = None;
    let mut listed = false;
    // Whether the last Transfer-Encoding line ends with `chunked` (hyper looks at the last).
    let mut chunked: Option<bool> = None;
    let mut hosts = 0usize;
    for h in req.headers.iter() {
        if h.name.eq_ignore_ascii_case("host") {
            hosts += 1;
        } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
            chunked = Some(ends_with_chunked(h.value));
        } else if h.name.eq_ignore_ascii_case("content-length") {
            let list = h.value.contains(&b',');
            listed |= list;
            for value in h.value.split(|b| *b == b',') {
                let value = if list { value.trim_ascii() } else { value };
                let Some(n) = digits(value) else {
                    return Parsed::Refused(Refusal::Bad("invalid Content-Length"));
                };
                match content_length {
                    Some(prev) if prev != n => {
                        return Parsed::Refused(Refusal::Bad("conflicting Content-Length headers"))
                    }
                    _ => content_length = Some(n),
                }
            }
        } else if h.name.eq_ignore_ascii_case("upgrade") {
            switching = true;
        }
    }
    let body = match (chunked, content_length) {
        (Some(_), Some(_)) => {
            return Parsed::Refused(Refusal::Bad(
                "request has both Transfer-Encoding and Content-Length",
            ))
        }
        (Some(_), None) if http10 => {
            return Parsed::Refused(Refusal::Bad(
                "HTTP/1.0 requests cannot use Transfer-Encoding",
            ))
        }
        (Some(false), None) => {
            return Parsed::Refused(Refusal::Bad("Transfer-Encoding must end with chunked"))
        }
        (Some(true), None) => BodyLength::Chunked,
        // hyper takes a Content-Length line as one number: `3, 3` is refused there too.
        (None, Some(_)) if listed => {
            return Parsed::Refused(Refusal::Bad("invalid Content-Length"))
        }
        // hyper's largest length is u64::MAX - 2 (the two above are its markers).
        (None, Some(n)) if n > u64::MAX - 2 => {
            return Parsed::Refused(Refusal::Bad("invalid Content-Length"))
        }
        (None, Some(0)) | (None, None) => BodyLength::None,
        (None, Some(n)) => BodyLength::Length(n),
    };
    // RFC 9112 §3.2: an HTTP/1.1 request without a Host header, or any request with more
    // than one, is answered 400 (checked after framing, so smuggling keeps its own reason).
    if hosts > 1 {
        return Parsed::Refused(Refusal::Bad("more than one Host header"));
    }
    if hosts == 0 && !http10 {
        return Parsed::Refused(Refusal::Bad("HTTP/1.1 request without a Host header"));
    }
    Parsed::Message(Message {
        len,
        body,
        switching,
    })
}

/// hyper's `is_chunked_`: visible ASCII, and the last comma-separated coding is `chunked`.
fn ends_with_chunked(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        && value
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// hyper's `from_digits`: one or more ASCII digits, no sign, no overflow.
fn digits(value: &[u8]) -> Option<u64> {
    if value.is_empty() {
        return None;
    }
    value.iter().try_fold(0u64, |n, &b| {
        if b.is_ascii_digit() {
            n.checked_mul(10)?.checked_add(u64::from(b - b'0'))
        } else {
            None
        }
    })
}

/// Where the next line feed that starts a blank line (`\n\n` or `\n\r\n`) at or after `from`
/// is, or (as `Err`) where to resume the search once more bytes have arrived. Every complete
/// head ends this way, with CRLF or bare LF line endings alike.
fn blank_line(data: &[u8], from: usize) -> Result<usize, usize> {
    let mut at = from.min(data.len());
    while let Some(p) = data[at..].iter().position(|&b| b == b'\n') {
        let lf = at + p;
        match (data.get(lf + 1), data.get(lf + 2)) {
            (Some(b'\n'), _) | (Some(b'\r'), Some(b'\n')) => return Ok(lf),
            (None, _) | (Some(b'\r'), None) => return Err(lf),
            _ => at = lf + 1,
        }
    }
    Err(data.len())
}

/// What to expect after the current message's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    Head,
    SwitchAnswer,
}

/// Position in a chunked body; the states of hyper's `ChunkedState` (`proto/h1/decode.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Chunk {
    Start,
    Size,
    SizeLws,
    Extension,
    SizeLf,
    Data,
    DataCr,
    DataLf,
    EndCr,
    Trailer,
    TrailerLf,
    EndLf,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Start of the connection: an HTTP/2 preface or a first head.
    Preface,
    /// At a message boundary. `None` until the bytes held here were looked at once; then
    /// where the search for the head's blank line resumes.
    Head(Option<usize>),
    Length {
        remaining: u64,
        then: After,
    },
    Chunked {
        at: Chunk,
        size: u64,
        then: After,
    },
    /// The last request may switch protocols: hold what follows until its answer is in.
    SwitchAnswer,
    /// Not HTTP/1 (any more): everything passes.
    Tunnel,
    /// Nothing more passes (a refused head, an invalid chunked body).
    Closed,
}

/// The outcome of [`Tracker::scan`]: `data[..pass]` may go to hyper, and then …
#[derive(Debug, PartialEq, Eq)]
pub(super) struct Scan {
    pub pass: usize,
    pub stop: Stop,
}

#[derive(Debug, PartialEq, Eq)]
pub(super) enum Stop {
    /// … that was all of it.
    All,
    /// … `data[pass..]` is kept, and offered again (with what follows) to the next scan.
    Hold,
    /// … `data[pass..]` never reaches hyper, and the client gets this answer.
    Refuse(Refusal),
    /// … `data[pass..]` never reaches hyper, which has been given the invalid body byte
    /// (the last one passed) and fails the request itself.
    Cut,
}

/// Follows HTTP/1 request framing over the bytes of a connection. Pure: no I/O, no clock.
#[derive(Debug)]
pub(super) struct Tracker {
    state: State,
    max_head: usize,
    heads: u64,
}

impl Tracker {
    pub fn new(max_head: usize) -> Self {
        Tracker {
            state: State::Preface,
            max_head,
            heads: 0,
        }
    }

    /// Request heads let through so far.
    pub fn heads(&self) -> u64 {
        self.heads
    }

    pub fn is_tunnel(&self) -> bool {
        self.state == State::Tunnel
    }

    pub fn is_closed(&self) -> bool {
        self.state == State::Closed
    }

    pub fn awaits_switch_answer(&self) -> bool {
        self.state == State::SwitchAnswer
    }

    /// The answer to the switching request is in: a tunnel now, or HTTP/1 as before.
    pub fn switch_answered(&mut self, switched: bool) {
        if self.state == State::SwitchAnswer {
            self.state = if switched {
                State::Tunnel
            } else {
                State::Head(None)
            };
        }
    }

    /// Stop here (a head that took too long).
    pub fn close(&mut self) {
        self.state = State::Closed;
    }

    /// Walk `data`: the bytes after everything passed so far (held bytes first).
    pub fn scan(&mut self, data: &[u8]) -> Scan {
        let mut at = 0;
        loop {
            let rest = &data[at..];
            if rest.is_empty() && self.state != State::Closed {
                return Scan {
                    pass: at,
                    stop: Stop::All,
                };
            }
            match self.state {
                State::Preface => {
                    let n = rest.len().min(H2_PREFACE.len());
                    if rest[..n] != H2_PREFACE[..n] {
                        self.state = State::Head(None);
                    } else if n == H2_PREFACE.len() {
                        self.state = State::Tunnel;
                    } else {
                        return hold(at);
                    }
                }
                State::Head(searched) => match self.head(rest, searched) {
                    Parsed::Message(message) => {
                        at += message.len;
                        self.heads += 1;
                        let then = if message.switching {
                            After::SwitchAnswer
                        } else {
                            After::Head
                        };
                        self.state = match message.body {
                            BodyLength::None => after(then),
                            BodyLength::Length(remaining) => State::Length { remaining, then },
                            BodyLength::Chunked => State::Chunked {
                                at: Chunk::Start,
                                size: 0,
                                then,
                            },
                        };
                    }
                    Parsed::Refused(refusal) => {
                        self.state = State::Closed;
                        return Scan {
                            pass: at,
                            stop: Stop::Refuse(refusal),
                        };
                    }
                    Parsed::Partial => return hold(at),
                },
                State::Length { remaining, then } => {
                    let take = usize::try_from(remaining).map_or(rest.len(), |r| r.min(rest.len()));
                    at += take;
                    let remaining = remaining - take as u64;
                    self.state = if remaining == 0 {
                        after(then)
                    } else {
                        State::Length { remaining, then }
                    };
                }
                State::Chunked {
                    at: mut chunk,
                    mut size,
                    then,
                } => {
                    let (used, step) = chunked(&mut chunk, &mut size, rest);
                    at += used;
                    match step {
                        ChunkStep::More => {
                            self.state = State::Chunked {
                                at: chunk,
                                size,
                                then,
                            }
                        }
                        ChunkStep::End => self.state = after(then),
                        ChunkStep::Invalid => {
                            self.state = State::Closed;
                            return Scan {
                                pass: at,
                                stop: Stop::Cut,
                            };
                        }
                    }
                }
                State::SwitchAnswer => return hold(at),
                State::Tunnel => {
                    return Scan {
                        pass: data.len(),
                        stop: Stop::All,
                    }
                }
                State::Closed => {
                    return Scan {
                        pass: at,
                        stop: Stop::Cut,
                    }
                }
            }
        }
    }

    /// The head starting at `rest[0]`. When it is `Partial`, where to resume the search is
    /// kept in the state.
    fn head(&mut self, rest: &[u8], searched: Option<usize>) -> Parsed {
        // The common case, a head that arrived whole: one parse, no separate search.
        let mut from = match searched {
            None => match check_head(rest, self.max_head) {
                Parsed::Partial => 0,
                done => return done,
            },
            Some(from) => from,
        };
        // A head gathered over several reads: parse again only once a blank line arrived.
        // httparse decides; a blank line it calls partial was one of the empty lines allowed
        // before a request line. (On the first look `rest` was just parsed whole.)
        let resume = loop {
            match blank_line(rest, from) {
                Ok(lf) if searched.is_none() => from = lf + 1,
                Ok(lf) => match check_head(rest, self.max_head) {
                    Parsed::Partial => from = lf + 1,
                    done => return done,
                },
                Err(resume) => break resume,
            }
        };
        if rest.len() > self.max_head {
            return Parsed::Refused(Refusal::TooLarge);
        }
        self.state = State::Head(Some(resume));
        Parsed::Partial
    }
}

fn after(then: After) -> State {
    match then {
        After::Head => State::Head(None),
        After::SwitchAnswer => State::SwitchAnswer,
    }
}

fn hold(at: usize) -> Scan {
    Scan {
        pass: at,
        stop: Stop::Hold,
    }
}

enum ChunkStep {
    More,
    End,
    Invalid,
}

/// Follow a chunked body over `data` exactly as hyper's decoder accepts it: the bytes used,
/// and whether the body ended or went wrong (hyper then fails the request and stops reading).
/// Chunk data is skipped, not looked at.
fn chunked(at: &mut Chunk, size: &mut u64, data: &[u8]) -> (usize, ChunkStep) {
    use Chunk::*;
    let mut i = 0;
    while i < data.len() {
        if *at == Data {
            let take = usize::try_from(*size).map_or(data.len() - i, |s| s.min(data.len() - i));
            i += take;
            *size -= take as u64;
            if *size == 0 {
                *at = DataCr;
            }
            continue;
        }
        let b = data[i];
        i += 1;
        if let (Start | Size, Some(digit)) = (*at, hex(b)) {
            // `size` is 0 at each chunk's start.
            match size.checked_mul(16).and_then(|s| s.checked_add(digit)) {
                Some(s) => *size = s,
                None => return (i, ChunkStep::Invalid),
            }
            *at = Size;
            continue;
        }
        *at = match (*at, b) {
            (Size | SizeLws, b' ' | b'\t') => SizeLws,
            (Size | SizeLws, b';') => Extension,
            (Size | SizeLws | Extension, b'\r') => SizeLf,
            (Extension, b'\n') => return (i, ChunkStep::Invalid),
            (Extension, _) => Extension,
            (SizeLf, b'\n') if *size == 0 => EndCr,
            (SizeLf, b'\n') => Data,
            (DataCr, b'\r') => DataLf,
            (DataLf, b'\n') => Start,
            (EndCr, b'\r') => EndLf,
            (EndCr | Trailer, _) if b != b'\r' => Trailer,
            (Trailer, b'\r') => TrailerLf,
            (TrailerLf, b'\n') => EndCr,
            (EndLf, b'\n') => return (i, ChunkStep::End),
            _ => return (i, ChunkStep::Invalid),
        };
    }
    (i, ChunkStep::More)
}

fn hex(b: u8) -> Option<u64> {
    (b as char).to_digit(16).map(u64::from)
}

/// What [`Framed`] shares with the connection's service and with `server.rs`.
pub(super) struct Shared<S> {
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

    /// The socket and the refusal to answer on it, once hyper has let go of the connection.
    pub fn take_handback(&self) -> Option<(S, Refusal)> {
        self.handback.lock().ok()?.take()
    }
}

/// One request in hyper's hands: made when the service is called, dropped with the response
/// body, which hyper drops once the response is written (or the connection is gone).
pub(super) struct Exchange<S> {
    shared: Arc<Shared<S>>,
}

impl<S> Exchange<S> {
    pub fn new(shared: &Arc<Shared<S>>) -> Self {
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
    pub(super) struct Answer<B, S> {
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
pub(super) enum First {
    /// Hand the connection to hyper.
    Serve,
    /// The peer closed before a whole head.
    Closed,
    /// Answer this and close; nothing reaches hyper.
    Refuse(Refusal),
}

/// The socket as hyper sees it: only whole, checked request heads, and the end of the stream
/// where a refused head was. See the module documentation.
pub(super) struct Framed<S> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};

    const MAX: usize = 8 * 1024;

    fn refused(head: &[u8]) -> Refusal {
        match check_head(head, MAX) {
            Parsed::Refused(refusal) => refusal,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(head)),
        }
    }

    fn message(head: &[u8]) -> Message {
        match check_head(head, MAX) {
            Parsed::Message(message) => message,
            other => panic!("{:?}: {other:?}", String::from_utf8_lossy(head)),
        }
    }

    #[test]
    fn framing_checks() {
        let post = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(
            message(post),
            Message {
                len: post.len(),
                body: BodyLength::Length(3),
                switching: false
            }
        );
        let same = b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 3\r\n\r\n";
        assert_eq!(message(same).body, BodyLength::Length(3));
        for (head, reason) in [
            (
                &b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nContent-Length: 4\r\n\r\n"[..],
                "conflicting Content-Length headers",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 4\r\n\r\n",
                "conflicting Content-Length headers",
            ),
            // hyper refuses a list even when the values agree.
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3, 3\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: +3\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 99999999999999999999\r\n\r\n",
                "invalid Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 3\r\n\r\n",
                "request has both Transfer-Encoding and Content-Length",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n",
                "request has both Transfer-Encoding and Content-Length",
            ),
            (b"garbage\r\n\r\n", "malformed request head"),
            (
                b"GET / HTTP/1.1\r\nHost: x\r\nX-A: b\r\n c\r\n\r\n",
                "malformed request head",
            ),
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
                "Transfer-Encoding must end with chunked",
            ),
            // hyper looks at the last Transfer-Encoding line only.
            (
                b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: gzip\r\n\r\n",
                "Transfer-Encoding must end with chunked",
            ),
            (
                b"POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
                "HTTP/1.0 requests cannot use Transfer-Encoding",
            ),
        ] {
            assert_eq!(
                refused(head),
                Refusal::Bad(reason),
                "{:?}",
                String::from_utf8_lossy(head)
            );
        }
        let gzip = b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, Chunked\r\n\r\n";
        assert_eq!(message(gzip).body, BodyLength::Chunked);
        assert_eq!(
            message(b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n\r\n").body,
            BodyLength::None
        );
    }

    #[test]
    fn http11_needs_exactly_one_host() {
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\n\r\n"),
            Refusal::Bad("HTTP/1.1 request without a Host header")
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n"),
            Refusal::Bad("more than one Host header")
        );
        assert_eq!(
            refused(b"GET / HTTP/1.1\r\nHost: a\r\nhost: a\r\n\r\n"),
            Refusal::Bad("more than one Host header")
        );
        assert_eq!(
            refused(b"GET / HTTP/1.0\r\nHost: a\r\nHost: b\r\n\r\n"),
            Refusal::Bad("more than one Host header")
        );
        // HTTP/1.0 has no Host requirement.
        assert_eq!(message(b"GET / HTTP/1.0\r\n\r\n").body, BodyLength::None);
        // Smuggling keeps its own reason.
        assert_eq!(
            refused(b"POST / HTTP/1.1\r\nContent-Length: 1\r\nTransfer-Encoding: chunked\r\n\r\n"),
            Refusal::Bad("request has both Transfer-Encoding and Content-Length")
        );
    }

    #[test]
    fn line_endings_blank_lines_and_switching() {
        // Bare LF line endings, and the blank lines allowed before a request line, as hyper.
        assert_eq!(message(b"GET / HTTP/1.1\nHost: x\n\n").len, 24);
        assert_eq!(message(b"GET / HTTP/1.1\nHost: x\n\r\n").len, 25);
        assert_eq!(
            message(b"\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\nrest").len,
            31
        );
        assert_eq!(
            check_head(b"GET / HTTP/1.1\r\nHost: x\r\n", MAX),
            Parsed::Partial
        );
        assert_eq!(check_head(b"\r\n\r\n", MAX), Parsed::Partial);
        assert!(message(b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n\r\n").switching);
        assert!(message(b"CONNECT a:443 HTTP/1.1\r\nHost: x\r\n\r\n").switching);
        assert!(!message(b"GET / HTTP/1.1\r\nHost: x\r\nConnection: upgrade\r\n\r\n").switching);
    }

    #[test]
    fn size_limits() {
        let many: String = (0..100).map(|i| format!("X-H{i}: v\r\n")).collect();
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n");
        assert_eq!(
            message(head.as_bytes()).len,
            head.len(),
            "more than the inline headers"
        );
        let too_many: String = (0..MAX_HEADERS + 1).map(|_| "A: b\r\n").collect();
        let head = format!("GET / HTTP/1.1\r\nHost: x\r\n{too_many}\r\n");
        assert_eq!(
            check_head(head.as_bytes(), 1 << 20),
            Parsed::Refused(Refusal::TooLarge)
        );
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX-Big: {}\r\n\r\n",
            "a".repeat(MAX)
        );
        assert_eq!(refused(big.as_bytes()), Refusal::TooLarge);
    }

    #[test]
    fn blank_lines_are_found_across_reads() {
        assert_eq!(blank_line(b"GET / HTTP/1.1\r\n\r\nbody", 0), Ok(15));
        assert_eq!(blank_line(b"GET / HTTP/1.1\n\n", 0), Ok(14));
        assert_eq!(blank_line(b"GET / HTTP/1.1\r\nHost: x\r\n", 0), Err(24));
        assert_eq!(blank_line(b"GET / HTTP/1.1\r\nHost: x\r\n\r", 0), Err(24));
        assert_eq!(blank_line(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n", 24), Ok(24));
        assert_eq!(blank_line(b"a\r\nb", 99), Err(4));
    }

    /// Feed `chunks` as reads arrive, keeping held bytes as [`Framed`] does: what passed, and
    /// how the last scan stopped.
    fn feed(tracker: &mut Tracker, chunks: &[&[u8]]) -> (Vec<u8>, Stop) {
        let mut held = Vec::new();
        let mut passed = Vec::new();
        let mut stop = Stop::All;
        for chunk in chunks {
            held.extend_from_slice(chunk);
            let scan = tracker.scan(&held);
            passed.extend_from_slice(&held[..scan.pass]);
            held.drain(..scan.pass);
            stop = scan.stop;
            if !matches!(stop, Stop::All | Stop::Hold) {
                break;
            }
        }
        (passed, stop)
    }

    const GET: &[u8] = b"GET /a HTTP/1.1\r\nHost: x\r\n\r\n";
    const CHUNKED: &[u8] = b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n\
        5;ext=1\r\nhello\r\n1A \r\nabcdefghijklmnopqrstuvwxyz\r\n0\r\nX-Trailer: t\r\n\r\n";
    const SMUGGLE: &[u8] = b"POST /s HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\n\
        Transfer-Encoding: chunked\r\n\r\n0\r\n\r\n";

    #[test]
    fn pipelined_messages_pass_and_a_bad_one_stops_them() {
        let length = b"POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: 54\r\n\r\n\
            GET /x HTTP/1.1\r\nContent-Length: 1\r\nContent-Length: 2\r\n\r\n";
        let stream = [GET, CHUNKED, &length[..], GET].concat();
        let mut tracker = Tracker::new(MAX);
        assert_eq!(
            tracker.scan(&stream),
            Scan {
                pass: stream.len(),
                stop: Stop::All
            }
        );
        assert_eq!(
            tracker.heads(),
            4,
            "the head-like Content-Length body is not a head"
        );

        let stream = [GET, CHUNKED, SMUGGLE, GET].concat();
        let mut tracker = Tracker::new(MAX);
        let scan = tracker.scan(&stream);
        assert_eq!(scan.pass, GET.len() + CHUNKED.len());
        assert!(matches!(scan.stop, Stop::Refuse(Refusal::Bad(_))));
        assert_eq!(tracker.heads(), 2);
        assert!(tracker.is_closed());
    }

    #[test]
    fn split_heads_are_held_until_whole() {
        let stream = [GET, GET].concat();
        for cut in 1..stream.len() {
            let mut tracker = Tracker::new(MAX);
            let (passed, stop) = feed(&mut tracker, &[&stream[..cut], &stream[cut..]]);
            assert_eq!(
                (passed.len(), stop),
                (stream.len(), Stop::All),
                "cut at {cut}"
            );
            assert_eq!(tracker.heads(), 2);
            let mut tracker = Tracker::new(MAX);
            let scan = tracker.scan(&stream[..cut]);
            let whole = if cut < GET.len() { 0 } else { GET.len() };
            assert_eq!(
                scan.pass,
                if cut == GET.len() { cut } else { whole },
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn oversized_partial_heads_are_refused() {
        let mut tracker = Tracker::new(64);
        let (passed, stop) = feed(
            &mut tracker,
            &[GET, b"GET / HTTP/1.1\r\nHost: x\r\n", &[b'x'; 64]],
        );
        assert_eq!(passed, GET);
        assert_eq!(stop, Stop::Refuse(Refusal::TooLarge));
    }

    #[test]
    fn invalid_chunked_bodies_are_cut_after_the_bad_byte() {
        let stream =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhelloXX\r\n";
        let mut tracker = Tracker::new(MAX);
        let scan = tracker.scan(stream);
        assert_eq!(
            scan,
            Scan {
                pass: stream.len() - 3,
                stop: Stop::Cut
            }
        );
        let mut tracker = Tracker::new(MAX);
        let overflow =
            b"POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n1ffffffffffffffff\r\n";
        assert_eq!(tracker.scan(overflow).stop, Stop::Cut);
    }

    #[test]
    fn http2_preface_and_switches_stop_tracking() {
        let mut tracker = Tracker::new(MAX);
        assert_eq!(
            tracker.scan(&H2_PREFACE[..10]),
            Scan {
                pass: 0,
                stop: Stop::Hold
            }
        );
        let h2 = [H2_PREFACE, SMUGGLE].concat();
        assert_eq!(
            tracker.scan(&h2),
            Scan {
                pass: h2.len(),
                stop: Stop::All
            }
        );
        assert!(tracker.is_tunnel());

        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        let stream = [&upgrade[..], SMUGGLE].concat();
        let mut tracker = Tracker::new(MAX);
        assert_eq!(
            tracker.scan(&stream),
            Scan {
                pass: upgrade.len(),
                stop: Stop::Hold
            }
        );
        assert!(tracker.awaits_switch_answer());
        tracker.switch_answered(true);
        assert_eq!(
            tracker.scan(SMUGGLE),
            Scan {
                pass: SMUGGLE.len(),
                stop: Stop::All
            }
        );

        let mut tracker = Tracker::new(MAX);
        tracker.scan(&stream);
        tracker.switch_answered(false);
        assert!(matches!(tracker.scan(SMUGGLE).stop, Stop::Refuse(_)));
    }

    /// One request of a generated stream.
    #[derive(Clone, Debug)]
    enum Request {
        Get {
            lf: bool,
            blank_line_before: bool,
        },
        Length(Vec<u8>),
        Chunked {
            chunks: Vec<Vec<u8>>,
            ext: bool,
            trailer: bool,
        },
    }

    fn body() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0..64),
            Just(SMUGGLE.to_vec()),
            Just(b"\r\n\r\n0\r\n\r\nGET / HTTP/1.1\r\nHost: x\r\n\r\n".to_vec()),
        ]
    }

    fn request() -> impl Strategy<Value = Request> {
        prop_oneof![
            (any::<bool>(), any::<bool>()).prop_map(|(lf, blank_line_before)| Request::Get {
                lf,
                blank_line_before
            }),
            body().prop_map(Request::Length),
            (
                proptest::collection::vec(body().prop_filter("not last", |b| !b.is_empty()), 0..4),
                any::<bool>(),
                any::<bool>()
            )
                .prop_map(|(chunks, ext, trailer)| Request::Chunked {
                    chunks,
                    ext,
                    trailer
                }),
        ]
    }

    /// The bytes of `requests`, and where each head ends and each message ends.
    fn encode(requests: &[Request]) -> (Vec<u8>, Vec<(usize, usize, usize)>) {
        let mut out = Vec::new();
        let mut spans = Vec::new();
        for request in requests {
            let start = out.len();
            match request {
                Request::Get {
                    lf,
                    blank_line_before,
                } => {
                    if *blank_line_before {
                        out.extend_from_slice(b"\r\n");
                    }
                    let nl: &[u8] = if *lf { b"\n" } else { b"\r\n" };
                    out.extend_from_slice(&[b"GET /g HTTP/1.1", nl, b"Host: x", nl, nl].concat());
                    spans.push((start, out.len(), out.len()));
                }
                Request::Length(body) => {
                    out.extend_from_slice(
                        format!(
                            "POST /l HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
                            body.len()
                        )
                        .as_bytes(),
                    );
                    let head = out.len();
                    out.extend_from_slice(body);
                    spans.push((start, head, out.len()));
                }
                Request::Chunked {
                    chunks,
                    ext,
                    trailer,
                } => {
                    out.extend_from_slice(
                        b"POST /c HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n",
                    );
                    let head = out.len();
                    for chunk in chunks {
                        let ext = if *ext { ";name=\"v\"" } else { "" };
                        out.extend_from_slice(format!("{:X}{ext}\r\n", chunk.len()).as_bytes());
                        out.extend_from_slice(chunk);
                        out.extend_from_slice(b"\r\n");
                    }
                    out.extend_from_slice(b"0\r\n");
                    if *trailer {
                        out.extend_from_slice(b"X-Checksum: abc\r\n");
                    }
                    out.extend_from_slice(b"\r\n");
                    spans.push((start, head, out.len()));
                }
            }
        }
        (out, spans)
    }

    proptest! {
        #[test]
        fn arbitrary_bytes_split_anywhere_never_panic(
            bytes in proptest::collection::vec(any::<u8>(), 0..1024),
            cuts in proptest::collection::vec(0usize..1024, 0..8),
            max in 16usize..2048,
        ) {
            let mut cuts: Vec<usize> = cuts.into_iter().map(|c| c.min(bytes.len())).collect();
            cuts.sort_unstable();
            let mut chunks = Vec::new();
            let mut from = 0;
            for cut in cuts.into_iter().chain([bytes.len()]) {
                chunks.push(&bytes[from..cut]);
                from = cut;
            }
            let mut tracker = Tracker::new(max);
            let (passed, _) = feed(&mut tracker, &chunks);
            prop_assert!(bytes.starts_with(&passed));
        }

        #[test]
        fn valid_requests_split_anywhere_keep_their_boundaries(
            requests in proptest::collection::vec(request(), 1..8),
            cuts in proptest::collection::vec(any::<proptest::sample::Index>(), 0..12),
        ) {
            let (stream, spans) = encode(&requests);
            let mut cuts: Vec<usize> = cuts.iter().map(|i| i.index(stream.len() + 1)).collect();
            cuts.sort_unstable();
            let mut tracker = Tracker::new(MAX);
            let mut held = Vec::new();
            let mut passed = 0;
            let mut from = 0;
            for cut in cuts.into_iter().chain([stream.len()]) {
                held.extend_from_slice(&stream[from..cut]);
                from = cut;
                let scan = tracker.scan(&held);
                prop_assert!(matches!(scan.stop, Stop::All | Stop::Hold), "{:?} at {cut}", scan.stop);
                passed += scan.pass;
                held.drain(..scan.pass);
                // What a reader who knows the messages expects after `cut` bytes: whole heads
                // counted, and a head not yet whole held from the message boundary on.
                let heads = spans.iter().filter(|s| s.1 <= cut).count() as u64;
                let expected = spans
                    .iter()
                    .find(|s| s.0 < cut && cut < s.1)
                    .map_or(cut, |s| s.0);
                prop_assert_eq!(tracker.heads(), heads, "heads after {}", cut);
                prop_assert_eq!(passed, expected, "passed after {}", cut);
            }
            prop_assert_eq!(passed, stream.len());
        }
    }

    fn over(server: tokio::io::DuplexStream) -> Framed<tokio::io::DuplexStream> {
        Framed::new(server, MAX, Duration::from_secs(5))
    }

    async fn read_some(framed: &mut Framed<tokio::io::DuplexStream>) -> Vec<u8> {
        let mut buf = vec![0; 4096];
        let n = framed.read(&mut buf).await.expect("read");
        buf.truncate(n);
        buf
    }

    #[tokio::test]
    async fn hyper_never_sees_part_of_a_head() {
        let (mut client, server) = duplex(1 << 16);
        let mut framed = over(server);
        client.write_all(&GET[..10]).await.unwrap();
        {
            let mut first = tokio_test::task::spawn(framed.first_head());
            assert!(first.poll().is_pending());
            client.write_all(&GET[10..]).await.unwrap();
            assert_eq!(first.await.unwrap(), First::Serve);
        }
        assert_eq!(read_some(&mut framed).await, GET);

        client.write_all(&CHUNKED[..7]).await.unwrap();
        {
            let mut buf = [0u8; 64];
            let mut read = tokio_test::task::spawn(framed.read(&mut buf));
            assert!(read.poll().is_pending());
        }
        client.write_all(&CHUNKED[7..]).await.unwrap();
        let mut seen = Vec::new();
        while seen.len() < CHUNKED.len() {
            seen.extend(read_some(&mut framed).await);
        }
        assert_eq!(seen, CHUNKED);
    }

    #[tokio::test]
    async fn a_refused_head_ends_the_stream_once_earlier_requests_are_answered() {
        let (mut client, server) = duplex(1 << 16);
        let mut framed = over(server);
        let shared = framed.shared();
        client
            .write_all(&[GET, SMUGGLE, GET].concat())
            .await
            .unwrap();
        assert_eq!(framed.first_head().await.unwrap(), First::Serve);
        assert_eq!(read_some(&mut framed).await, GET);

        // hyper is answering the first request: no end of stream yet.
        let exchange = Exchange::new(&shared);
        {
            let mut buf = [0u8; 64];
            let mut read = tokio_test::task::spawn(framed.read(&mut buf));
            assert!(read.poll().is_pending());
        }
        drop(exchange);
        assert_eq!(read_some(&mut framed).await, b"");
        // hyper's shutdown leaves the socket open for the answer, which `server.rs` writes.
        framed.shutdown().await.unwrap();
        drop(framed);
        let (_io, refusal) = shared.take_handback().expect("handed back");
        assert_eq!(
            refusal,
            Refusal::Bad("request has both Transfer-Encoding and Content-Length")
        );
        client.write_all(b"still open").await.unwrap();
    }

    #[tokio::test]
    async fn a_refused_first_head_is_answered_before_hyper() {
        let (mut client, server) = duplex(1 << 16);
        let mut framed = over(server);
        client.write_all(SMUGGLE).await.unwrap();
        assert!(matches!(
            framed.first_head().await.unwrap(),
            First::Refuse(Refusal::Bad(_))
        ));
        assert!(framed.take_io().is_some());

        let (client, server) = duplex(1 << 16);
        let mut framed = over(server);
        drop(client);
        assert_eq!(framed.first_head().await.unwrap(), First::Closed);
        assert!(framed.is_idle());
    }

    #[tokio::test]
    async fn bytes_after_a_switching_request_wait_for_its_answer() {
        let upgrade =
            b"GET /ws HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\nConnection: upgrade\r\n\r\n";
        // Switched: what follows is the tunnel's, whatever it looks like.
        let (mut client, server) = duplex(1 << 16);
        let mut framed = over(server);
        let shared = framed.shared();
        client
            .write_all(&[&upgrade[..], SMUGGLE].concat())
            .await
            .unwrap();
        assert_eq!(framed.first_head().await.unwrap(), First::Serve);
        assert_eq!(read_some(&mut framed).await, upgrade);
        let exchange = Exchange::new(&shared);
        {
            let mut buf = [0u8; 64];
            let mut read = tokio_test::task::spawn(framed.read(&mut buf));
            assert!(read.poll().is_pending());
        }
        exchange.switching();
        assert_eq!(read_some(&mut framed).await, SMUGGLE);
        drop(exchange);

        // Declined: HTTP/1 goes on, with its checks.
        let (mut client, server) = duplex(1 << 16);
        let mut framed = over(server);
        let shared = framed.shared();
        client
            .write_all(&[&upgrade[..], GET, SMUGGLE].concat())
            .await
            .unwrap();
        assert_eq!(framed.first_head().await.unwrap(), First::Serve);
        assert_eq!(read_some(&mut framed).await, upgrade);
        drop(Exchange::new(&shared));
        assert_eq!(read_some(&mut framed).await, GET);
        drop(Exchange::new(&shared));
        assert_eq!(read_some(&mut framed).await, b"");
    }

    #[tokio::test(start_paused = true)]
    async fn a_slow_later_head_is_refused_with_a_timeout() {
        let (mut client, server) = duplex(1 << 16);
        let mut framed = over(server);
        let shared = framed.shared();
        client.write_all(GET).await.unwrap();
        client
            .write_all(b"GET /slow HTTP/1.1\r\nHost: x\r\nX-Partial: ")
            .await
            .unwrap();
        assert_eq!(framed.first_head().await.unwrap(), First::Serve);
        assert_eq!(read_some(&mut framed).await, GET);
        drop(Exchange::new(&shared));
        let started = Instant::now();
        assert_eq!(read_some(&mut framed).await, b"");
        assert_eq!(started.elapsed(), Duration::from_secs(5));
        drop(framed);
        assert_eq!(shared.take_handback().map(|h| h.1), Some(Refusal::Timeout));

        // Blank lines between requests are not a slow head: no timeout, no answer.
        let (mut client, server) = duplex(1 << 16);
        let mut framed = over(server);
        client.write_all(&[GET, b"\r\n"].concat()).await.unwrap();
        assert_eq!(framed.first_head().await.unwrap(), First::Serve);
        assert_eq!(read_some(&mut framed).await, GET);
        drop(Exchange::new(&framed.shared()));
        let mut buf = [0u8; 64];
        let read = tokio::time::timeout(Duration::from_secs(60), framed.read(&mut buf)).await;
        assert!(read.is_err(), "still waiting for the next request");
    }
}
