//! 1 000 slow readers of 1 MiB responses on the app listener (issue 14): memory per connection
//! is bounded by backpressure (a response body is pulled from the upstream only as fast as the
//! application reads it), and what the burst used is given back afterwards.
//!
//! Each reader asks for a 1 MiB body with a 4 KiB socket receive buffer (so the kernel cannot
//! absorb the body for it), reads the first bytes and then stops reading. The upstream streams
//! each body as fast as it is pulled. Measured on the real binary from `/proc/PID/status`:
//! the peak (VmHWM) must stay under [`PEAK_BOUND_KIB`] while all 1 000 are stalled, and once
//! they are gone the resident set (VmRSS) must come back under [`AFTER_BOUND_KIB`].

mod support;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http_body_util::BodyExt;
use support::streaming::StreamingUpstream;
use support::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};

const READERS: usize = 1000;
const MIB: u64 = 1024 * 1024;
/// The bound the README states for 1 000 stalled 1 MiB downloads.
const PEAK_BOUND_KIB: u64 = 128 * 1024;
/// Back under this once the readers are gone.
const AFTER_BOUND_KIB: u64 = 32 * 1024;

fn status_kib(pid: u32, field: &str) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
    status
        .lines()
        .find_map(|l| l.strip_prefix(field))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap()
}

async fn slow_reader(addr: std::net::SocketAddr) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    let mut stream = socket.connect(addr).await.unwrap();
    stream
        .write_all(b"GET /api/big HTTP/1.1\r\nHost: outpost\r\n\r\n")
        .await
        .unwrap();
    let mut first = [0u8; 512];
    let n = guard("the first bytes of the answer", stream.read(&mut first))
        .await
        .unwrap();
    assert!(
        first[..n].starts_with(b"HTTP/1.1 200"),
        "{}",
        String::from_utf8_lossy(&first[..n])
    );
    stream
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_slow_readers_stay_bounded_and_memory_comes_back() {
    let produced = Arc::new(AtomicU64::new(0));
    let counted = produced.clone();
    let upstream = StreamingUpstream::start(move |_req| {
        let counted = counted.clone();
        async move {
            http::Response::new(
                GeneratedBody::new(MIB, false)
                    .counting(counted)
                    .boxed_unsync(),
            )
        }
    })
    .await;
    let mut binary = Binary::start(
        &one_upstream(
            &upstream.url(""),
            "timeout: 10m\nattempt_timeout: 10m\nretry: { max_attempts: 1 }",
        ),
        &[],
    )
    .await;
    let addr: std::net::SocketAddr = binary
        .url("")
        .trim_start_matches("http://")
        .trim_end_matches('/')
        .parse()
        .unwrap();
    let idle = status_kib(binary.pid(), "VmRSS:");

    let mut readers = Vec::with_capacity(READERS);
    for _ in 0..READERS {
        readers.push(slow_reader(addr).await);
    }
    assert_eq!(upstream.requests(), READERS);
    // Let every connection fill whatever it buffers: poll until the upstream is held back
    // (no body byte produced over ten polls in a row: backpressure reached every reader).
    let pid = binary.pid();
    let (mut last, mut unchanged) = (u64::MAX, 0);
    poll_until("backpressure holds the upstream back", || {
        let now = produced.load(Ordering::Relaxed);
        unchanged = if now == last { unchanged + 1 } else { 0 };
        last = now;
        let held = unchanged >= 10;
        async move { held }
    })
    .await;
    let last = status_kib(pid, "VmRSS:");
    let peak = status_kib(pid, "VmHWM:");
    eprintln!("idle {idle} KiB; {READERS} stalled readers: RSS {last} KiB, peak {peak} KiB");
    assert!(
        peak <= PEAK_BOUND_KIB,
        "peak RSS {peak} KiB with {READERS} slow readers (bound {PEAK_BOUND_KIB} KiB)"
    );

    drop(readers);
    let admin = binary.admin_url("/metrics");
    poll_until("every abandoned download is over", || {
        let admin = admin.clone();
        async move {
            let Ok(response) = reqwest_get(&admin).await else {
                return false;
            };
            metric(
                &response,
                "outpost_in_flight_requests",
                &[("upstream", "api")],
            ) == Some(0.0)
        }
    })
    .await;
    // jemalloc's background thread returns the freed pages within seconds: poll for it.
    let _ = tokio::time::timeout(
        Duration::from_secs(30),
        poll_until("RSS is back under the bound", || async move {
            status_kib(pid, "VmRSS:") <= AFTER_BOUND_KIB
        }),
    )
    .await;
    let after = status_kib(pid, "VmRSS:");
    eprintln!("after the readers left: RSS {after} KiB");
    assert!(
        after <= AFTER_BOUND_KIB,
        "RSS {after} KiB after the burst (bound {AFTER_BOUND_KIB} KiB; peak was {peak} KiB)"
    );
    // Still serving.
    let client = http1_client();
    let response = client
        .request(
            http::Request::get(binary.url("/api/small"))
                .body(empty())
                .unwrap(),
        )
        .await
        .unwrap();
    assert_eq!(response.status(), 200);
    binary.stop_and_collect_stderr().await;
}

async fn reqwest_get(url: &str) -> Result<String, ()> {
    let client = http1_client();
    let response = client
        .request(http::Request::get(url).body(empty()).unwrap())
        .await
        .map_err(|_| ())?;
    let body = response.into_body().collect().await.map_err(|_| ())?;
    Ok(String::from_utf8_lossy(&body.to_bytes()).into_owned())
}
