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
//!
//! Files: `head.rs` judges one request head, `chunked.rs` follows a chunked body, this file's
//! [`Tracker`] walks the message stream with both, `io.rs` is the socket side, `tests.rs`
//! the unit and property tests.

mod chunked;
mod head;
mod io;
#[cfg(test)]
mod tests;

use self::chunked::{chunked, Chunk, ChunkStep};
use self::head::blank_line;
pub(crate) use self::head::{check_head, BodyLength, Parsed, Refusal};
pub(crate) use self::io::{Answer, Exchange, First, Framed};

/// The HTTP/2 prior-knowledge connection preface (RFC 9113 §3.4).
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Most header lines in one head (hyper is configured with the same limit: 431 above).
pub(crate) const MAX_HEADERS: usize = 1000;

/// What to expect after the current message's body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum After {
    Head,
    SwitchAnswer,
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
pub(crate) struct Scan {
    pub pass: usize,
    pub stop: Stop,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Stop {
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
pub(crate) struct Tracker {
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
