//! The ring's memory bound under load: 10 000 exchanges with 64 KiB request and response
//! bodies keep the ring within `max_total_bytes` (accounted) and the process RSS within that
//! bound plus slack. One test per binary, so no other test's allocations blur the RSS reading.

use http::{HeaderMap, Method};
use outpost::capture::{CaptureConfig, CaptureRing};

fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmRSS line");
    kib * 1024
}

#[test]
fn ten_thousand_64k_exchanges_stay_within_the_bound() {
    let config = CaptureConfig::default();
    let bound = config.max_total_bytes;
    let ring = CaptureRing::new(config);
    ring.set_secrets(&["sk_test_MEMORYSECRET"]);
    let body = vec![b'x'; 64 * 1024];
    let mut h = HeaderMap::new();
    h.insert("content-type", "text/plain".parse().unwrap());
    let before = rss_bytes();
    let mut peak = before;
    for i in 0..10_000u32 {
        let uri = format!("/v1/objects/{i}").parse().unwrap();
        let mut d = ring.start_upstream("bulk", &Method::PUT, &uri, &h);
        d.request_chunk(&body)
            .response_head(200, &h)
            .response_chunk(&body);
        ring.commit(d);
        if i % 500 == 0 {
            peak = peak.max(rss_bytes());
            let (_, bytes) = ring.usage();
            assert!(bytes <= bound, "accounted {bytes} > {bound}");
        }
    }
    let (count, bytes) = ring.usage();
    assert!(bytes <= bound, "accounted {bytes} > {bound}");
    assert!(count < 500, "evicted by bytes before by count: {count}");
    peak = peak.max(rss_bytes());
    let growth = peak.saturating_sub(before);
    // The bound plus allocator slack (freed pages are not always returned at once).
    let allowed = bound + bound / 2 + 16 * 1024 * 1024;
    assert!(
        growth <= allowed,
        "RSS grew by {} MiB, more than {} MiB",
        growth >> 20,
        allowed >> 20
    );
    println!(
        "ring: {count} exchanges, {} KiB accounted; RSS growth {} MiB",
        bytes >> 10,
        growth >> 20
    );
}
