//! Request heads: parse one with httparse and judge it the way hyper's server will
//! (`proto/h1/role.rs`): the smuggling guards of RFC 9112 §6.3, the Host rules of §3.2, the
//! size limit, and where the message's body ends.

use std::mem::MaybeUninit;

use super::MAX_HEADERS;

/// Header lines parsed on the stack; heads with more take the slow path.
pub(super) const INLINE_HEADERS: usize = 64;

/// Why a request head is answered by Outpost instead of being served.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// The head did not arrive within `limits.header_read_timeout`.
    Timeout,
    /// The head is larger than `limits.max_header_bytes`, or has more than [`MAX_HEADERS`] lines.
    TooLarge,
    /// Malformed, or framed ambiguously (RFC 9112 §6.3).
    Bad(&'static str),
}

/// How the body after a head is delimited.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum BodyLength {
    None,
    Length(u64),
    Chunked,
}

/// What a complete, acceptable head says about its message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct Message {
    /// Bytes of the head, blank lines before it and the empty line after it included.
    pub len: usize,
    pub body: BodyLength,
    /// `Upgrade` or `CONNECT`: the connection may stop being HTTP/1 after this message.
    pub switching: bool,
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Parsed {
    /// More bytes are needed.
    Partial,
    Message(Message),
    Refused(Refusal),
}

/// Parse and judge a request head (the bytes from a message boundary on). Partial heads are
/// `Partial` unless they are already malformed.
pub(crate) fn check_head(data: &[u8], max: usize) -> Parsed {
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
pub(crate) fn check_head_slow(data: &[u8], max: usize) -> Parsed {
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
pub(crate) fn judge(req: &httparse::Request<'_, '_>, len: usize, max: usize) -> Parsed {
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
pub(crate) fn ends_with_chunked(value: &[u8]) -> bool {
    value
        .iter()
        .all(|&b| b == b'\t' || (0x20..0x7f).contains(&b))
        && value
            .rsplit(|b| *b == b',')
            .next()
            .is_some_and(|last| last.trim_ascii().eq_ignore_ascii_case(b"chunked"))
}

/// hyper's `from_digits`: one or more ASCII digits, no sign, no overflow.
pub(crate) fn digits(value: &[u8]) -> Option<u64> {
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
pub(crate) fn blank_line(data: &[u8], from: usize) -> Result<usize, usize> {
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
