//! Unit and property tests of the framing guard.

use std::time::Duration;

use proptest::prelude::*;
use tokio::io::{duplex, AsyncReadExt, AsyncWriteExt};
use tokio::time::Instant;

use super::head::*;
use super::io::*;
use super::*;

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
        bytes in proptest::collection::vec(any::<u8>(), 0..8192),
        cuts in proptest::collection::vec(0usize..8192, 0..16),
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
