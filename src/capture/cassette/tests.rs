use super::*;

struct Dir(PathBuf);
impl Dir {
    fn new(tag: &str) -> Dir {
        static N: AtomicU64 = AtomicU64::new(0);
        let p = std::env::temp_dir().join(format!(
            "outpost-cassette-{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::Relaxed)
        ));
        let _ = fs::remove_dir_all(&p);
        fs::create_dir_all(&p).unwrap();
        Dir(p)
    }
}
impl Drop for Dir {
    fn drop(&mut self) {
        let _ = fs::remove_dir_all(&self.0);
    }
}

fn opts(match_headers: &[&str], ignore: &[&str]) -> CassetteOptions {
    CassetteOptions {
        match_headers: match_headers
            .iter()
            .map(|h| HeaderName::from_bytes(h.as_bytes()).unwrap())
            .collect(),
        ignore_fields: ignore.iter().map(|s| s.to_string()).collect(),
    }
}

fn redactor(secrets: &[&str]) -> Arc<Redactor> {
    let mut r = Redactor::new(vec![HeaderName::from_static("set-cookie")], vec![]);
    r.set_secrets(secrets);
    Arc::new(r)
}

fn req(method: &str, uri: &str, headers: &[(&str, &str)], body: &str) -> CassetteRequest {
    let mut h = HeaderMap::new();
    for (n, v) in headers {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    CassetteRequest::new(
        method.parse().unwrap(),
        &uri.parse().unwrap(),
        h,
        Bytes::from(body.to_string()),
    )
}

fn json_ct() -> (&'static str, &'static str) {
    ("content-type", "application/json")
}

fn resp_headers() -> HeaderMap {
    let mut h = HeaderMap::new();
    h.insert("content-type", "application/json".parse().unwrap());
    h.insert("content-length", "99".parse().unwrap());
    h.insert("set-cookie", "session=abc".parse().unwrap());
    h
}

fn open(dir: &Dir, o: CassetteOptions) -> Cassette {
    Cassette::open(&dir.0, "stripe", o, redactor(&["sk_test_SECRET"])).unwrap()
}

#[test]
fn record_then_replay_from_disk() {
    let dir = Dir::new("roundtrip");
    let c = open(&dir, opts(&[], &[]));
    assert!(c.is_empty());
    let r = req(
        "POST",
        "/v1/charges?b=2&a=1",
        &[json_ct()],
        r#"{"amount":100,"currency":"usd"}"#,
    );
    c.record(&r, 200, &resp_headers(), br#"{"id":"ch_1"}"#)
        .unwrap();
    let bin = req("GET", "/v1/files/f1/contents", &[], "");
    c.record(&bin, 200, &HeaderMap::new(), &[0, 159, 146, 150])
        .unwrap();

    let text = fs::read_to_string(dir.0.join("stripe.yaml")).unwrap();
    assert!(text.contains("body_base64: AJ+Slg=="), "{text}");
    assert!(text.contains(r#"'{"id":"ch_1"}'"#), "{text}");
    assert!(
        !text.contains("content-length"),
        "framing headers are not recorded"
    );
    assert!(!text.contains("session=abc"), "redact_headers apply");

    let again = open(&dir, opts(&[], &[]));
    assert_eq!(again.len(), 2);
    // Query order, key order and whitespace do not matter.
    let asked = req(
        "POST",
        "/v1/charges?a=1&b=2",
        &[json_ct()],
        r#"{ "currency": "usd", "amount": 100 }"#,
    );
    let got = again.lookup(&asked).unwrap();
    assert_eq!(got.status, 200);
    assert_eq!(&got.body[..], br#"{"id":"ch_1"}"#);
    assert_eq!(got.headers["content-type"], "application/json");
    assert!(got.headers.get("content-length").is_none());
    let got = again.lookup(&bin).unwrap();
    assert_eq!(&got.body[..], &[0, 159, 146, 150]);
    // No temporary file is left behind.
    let names: Vec<_> = fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, vec![std::ffi::OsString::from("stripe.yaml")]);
}

#[test]
fn json_is_structural_but_values_matter() {
    let dir = Dir::new("json");
    let c = open(&dir, opts(&[], &[]));
    c.record(
        &req(
            "POST",
            "/v1/x",
            &[json_ct()],
            r#"{"a":{"b":[1,2]},"c":true}"#,
        ),
        200,
        &HeaderMap::new(),
        b"ok",
    )
    .unwrap();
    assert!(c
        .lookup(&req(
            "POST",
            "/v1/x",
            &[json_ct()],
            "{\"c\":true,\n \"a\":{\"b\":[1,2]}}"
        ))
        .is_ok());
    assert!(c
        .lookup(&req(
            "POST",
            "/v1/x",
            &[json_ct()],
            r#"{"a":{"b":[2,1]},"c":true}"#
        ))
        .is_err());
    assert!(c
        .lookup(&req(
            "POST",
            "/v1/x",
            &[json_ct()],
            r#"{"a":{"b":[1,2]},"c":false}"#
        ))
        .is_err());
    assert!(c
        .lookup(&req(
            "PUT",
            "/v1/x",
            &[json_ct()],
            r#"{"a":{"b":[1,2]},"c":true}"#
        ))
        .is_err());
    // Non-JSON bodies compare byte-wise.
    c.record(
        &req("POST", "/raw", &[("content-type", "text/plain")], "a b"),
        200,
        &HeaderMap::new(),
        b"",
    )
    .unwrap();
    assert!(c
        .lookup(&req(
            "POST",
            "/raw",
            &[("content-type", "text/plain")],
            "a b"
        ))
        .is_ok());
    assert!(c
        .lookup(&req(
            "POST",
            "/raw",
            &[("content-type", "text/plain")],
            "a  b"
        ))
        .is_err());
    // Form bodies: field order does not matter.
    let form = ("content-type", "application/x-www-form-urlencoded");
    c.record(
        &req("POST", "/v1/charges", &[form], "amount=100&currency=usd"),
        200,
        &HeaderMap::new(),
        b"f",
    )
    .unwrap();
    assert!(c
        .lookup(&req(
            "POST",
            "/v1/charges",
            &[form],
            "currency=usd&amount=100"
        ))
        .is_ok());
}

#[test]
fn repeated_requests_replay_as_a_sequence() {
    let dir = Dir::new("seq");
    let c = open(&dir, opts(&[], &[]));
    let poll = req("GET", "/v1/payment_intents/pi_1", &[], "");
    for status in ["processing", "succeeded"] {
        c.record(&poll, 200, &HeaderMap::new(), status.as_bytes())
            .unwrap();
    }
    c.record(
        &req("GET", "/other", &[], ""),
        200,
        &HeaderMap::new(),
        b"other",
    )
    .unwrap();
    let c = open(&dir, opts(&[], &[]));
    let bodies: Vec<Bytes> = (0..4).map(|_| c.lookup(&poll).unwrap().body).collect();
    assert_eq!(
        bodies,
        vec!["processing", "succeeded", "succeeded", "succeeded"]
    );
    assert_eq!(
        &c.lookup(&req("GET", "/other", &[], "")).unwrap().body[..],
        b"other"
    );
}

#[test]
fn chosen_headers_match_others_do_not() {
    let dir = Dir::new("headers");
    let c = open(&dir, opts(&["stripe-version", "idempotency-key"], &[]));
    let recorded = req(
        "POST",
        "/v1/x",
        &[
            ("stripe-version", "2024-06-20"),
            ("user-agent", "a"),
            ("idempotency-key", "app-key-1"),
        ],
        "",
    );
    c.record(&recorded, 200, &HeaderMap::new(), b"").unwrap();
    assert!(c
        .lookup(&req(
            "POST",
            "/v1/x",
            &[
                ("stripe-version", "2024-06-20"),
                ("user-agent", "b"),
                ("idempotency-key", "app-key-1")
            ],
            ""
        ))
        .is_ok());
    let miss = c
        .lookup(&req(
            "POST",
            "/v1/x",
            &[
                ("stripe-version", "2023-10-16"),
                ("idempotency-key", "app-key-1"),
            ],
            "",
        ))
        .unwrap_err();
    assert_eq!(
        miss.nearest.unwrap().differences,
        vec![r#"header `stripe-version`: asked "2023-10-16", recorded "2024-06-20""#]
    );
    // The app chose its key: a different one does not match.
    assert!(c
        .lookup(&req(
            "POST",
            "/v1/x",
            &[
                ("stripe-version", "2024-06-20"),
                ("idempotency-key", "app-key-2")
            ],
            ""
        ))
        .is_err());
}

#[test]
fn generated_idempotency_key_is_ignored() {
    let dir = Dir::new("idem");
    let c = open(&dir, opts(&["idempotency-key"], &[]));
    let mut first = req(
        "POST",
        "/v1/charges",
        &[("idempotency-key", "6f1c…uuid-1")],
        "amount=1",
    );
    first.generated_idempotency_key = true;
    c.record(&first, 200, &HeaderMap::new(), b"ok").unwrap();
    let text = fs::read_to_string(c.path()).unwrap();
    assert!(
        !text.contains("uuid-1"),
        "a generated key is not recorded: {text}"
    );
    let mut second = req(
        "POST",
        "/v1/charges",
        &[("idempotency-key", "0a9b…uuid-2")],
        "amount=1",
    );
    second.generated_idempotency_key = true;
    assert!(c.lookup(&second).is_ok());
}

#[test]
fn timestamps_and_ignored_fields_do_not_break_a_match() {
    let dir = Dir::new("dynamic");
    let c = open(&dir, opts(&[], &["client_nonce"]));
    let body = |ts: &str, at: u64, nonce: &str, amount: u64| {
        format!(
            r#"{{"sent":"{ts}","meta":{{"created_at":{at},"client_nonce":"{nonce}"}},"amount":{amount}}}"#
        )
    };
    c.record(
        &req(
            "POST",
            "/v1/events?since=2026-01-01T00:00:00Z&timestamp=1764800000",
            &[json_ct()],
            &body("2026-12-04T02:10:00.123Z", 1_764_800_000, "n1", 5),
        ),
        200,
        &HeaderMap::new(),
        b"ok",
    )
    .unwrap();
    let asked = req(
        "POST",
        "/v1/events?timestamp=1764899999&since=2026-12-31T23:59:59+01:00",
        &[json_ct()],
        &body("2027-01-01 00:00:00", 1_764_899_999_000, "n2", 5),
    );
    assert!(c.lookup(&asked).is_ok());
    // A number under a non-time key still matters.
    let other = req(
        "POST",
        "/v1/events?timestamp=1764800000&since=2026-01-01T00:00:00Z",
        &[json_ct()],
        &body("2026-12-04T02:10:00Z", 1_764_800_000, "n1", 6),
    );
    let miss = c.lookup(&other).unwrap_err();
    assert_eq!(
        miss.nearest.unwrap().differences,
        vec!["body $.amount: asked 6, recorded 5"]
    );
}

#[test]
fn miss_names_the_request_and_the_nearest_recording() {
    let dir = Dir::new("miss");
    let c = open(&dir, opts(&[], &[]));
    let empty_miss = c.lookup(&req("GET", "/v1/customers", &[], "")).unwrap_err();
    assert_eq!(empty_miss.recorded, 0);
    assert!(empty_miss.nearest.is_none());

    c.record(
        &req("GET", "/v1/customers?limit=10", &[], ""),
        200,
        &HeaderMap::new(),
        b"a",
    )
    .unwrap();
    c.record(
        &req("POST", "/v1/customers", &[json_ct()], r#"{"name":"a"}"#),
        200,
        &HeaderMap::new(),
        b"b",
    )
    .unwrap();
    c.record(
        &req("GET", "/v1/charges?limit=3", &[], ""),
        200,
        &HeaderMap::new(),
        b"c",
    )
    .unwrap();
    let miss = c
        .lookup(&req("GET", "/v1/customers?limit=3", &[], ""))
        .unwrap_err();
    assert_eq!(miss.upstream, "stripe");
    assert_eq!(miss.recorded, 3);
    assert_eq!(miss.asked.path, "/v1/customers");
    assert_eq!(miss.asked.query.as_deref(), Some("limit=3"));
    let nearest = miss.nearest.clone().unwrap();
    assert_eq!(nearest.index, 0);
    assert_eq!(
        nearest.differences,
        vec![r#"query `limit`: asked "3", recorded "10""#]
    );
    assert_eq!(
        miss.message(),
        "stripe: no recording matches GET /v1/customers"
    );
    let body = miss.error_json("req-1");
    assert_eq!(body["error"]["type"], "replay_miss");
    assert_eq!(body["error"]["status"], 502);
    assert_eq!(body["error"]["retryable"], false);
    assert_eq!(body["error"]["upstream"], "stripe");
    assert_eq!(body["error"]["request_id"], "req-1");
    assert_eq!(body["error"]["replay_miss"]["recorded"], 3);
    let details = miss.details();
    assert_eq!(details["nearest"]["request"]["query"], "limit=10");
    assert_eq!(details["asked"]["method"], "GET");

    let miss = c
        .lookup(&req(
            "POST",
            "/v1/customers",
            &[json_ct()],
            r#"{"name":"b","x":1}"#,
        ))
        .unwrap_err();
    let nearest = miss.nearest.unwrap();
    assert_eq!(nearest.index, 1);
    assert_eq!(
        nearest.differences,
        vec![
            r#"body $.name: asked "b", recorded "a""#,
            "body $.x: asked 1, recorded none"
        ]
    );
}

#[test]
fn secrets_never_reach_the_file() {
    let dir = Dir::new("secret");
    let c = open(&dir, opts(&[], &[]));
    let r = req(
        "POST",
        "/v1/echo?key=sk_test_SECRET",
        &[
            ("authorization", "Bearer sk_test_SECRET"),
            ("proxy-authorization", "Basic x"),
            ("x-echo", "sk_test_SECRET"),
        ],
        "token=sk_test_SECRET",
    );
    let mut h = HeaderMap::new();
    h.insert("x-seen", "sk_test_SECRET".parse().unwrap());
    c.record(&r, 200, &h, br#"{"echo":"sk_test_SECRET"}"#)
        .unwrap();
    let text = fs::read_to_string(c.path()).unwrap();
    assert!(!text.contains("sk_test_SECRET"), "{text}");
    assert!(!text.contains("authorization"), "{text}");
    // The live request (which carries the secret) still matches the scrubbed recording.
    assert!(c.lookup(&r).is_ok());
}

#[test]
fn garbage_files_are_clear_errors() {
    let cases: &[(&str, &str)] = &[
        ("version: 1\nupstream: stripe\ninteractions: [", "stripe.yaml:"),
        ("version: 2\nupstream: stripe\n", "version: 2 is not supported"),
        ("version: 1\nupstream: sendgrid\n", "this cassette is for `sendgrid`"),
        ("version: 1\nupstream: stripe\nextra: 1\n", "unknown field `extra`"),
        ("version: 1\nupstream: stripe\ninteractions:\n- request: {method: 'G T', path: /}\n  response: {status: 200}\n", "interactions[0].request.method"),
        ("version: 1\nupstream: stripe\ninteractions:\n- request: {method: GET, path: x}\n  response: {status: 200}\n", "interactions[0].request.path"),
        ("version: 1\nupstream: stripe\ninteractions:\n- request: {method: GET, path: /}\n  response: {status: 42}\n", "interactions[0].response.status"),
        ("version: 1\nupstream: stripe\ninteractions:\n- request: {method: GET, path: /, body_base64: '!!'}\n  response: {status: 200}\n", "request.body_base64"),
        ("version: 1\nupstream: stripe\ninteractions:\n- request: {method: GET, path: /}\n  response: {status: 200, body: a, body_base64: YQ==}\n", "not both"),
        ("version: 1\nupstream: stripe\ninteractions:\n- request: {method: GET, path: /, headers: ['bad name: x']}\n  response: {status: 200}\n", "request.headers[0]"),
        ("version: 1\nupstream: stripe\ninteractions:\n- request: {method: GET, path: /, headers: [no-colon]}\n  response: {status: 200}\n", "request.headers[0]: expected `name: value`"),
        ("\u{0}\u{1}garbage", "stripe.yaml"),
        ("", "stripe.yaml"),
    ];
    for (text, want) in cases {
        let dir = Dir::new("garbage");
        fs::write(dir.0.join("stripe.yaml"), text).unwrap();
        let err = Cassette::open(&dir.0, "stripe", opts(&[], &[]), redactor(&[]))
            .unwrap_err()
            .to_string();
        assert!(err.contains(want), "{text:?}: {err}");
    }
}

#[test]
fn hostile_upstream_names_and_unwritable_dirs() {
    let dir = Dir::new("names");
    for bad in ["../x", "a/b", ".hidden", "", "a\\b"] {
        assert!(
            Cassette::open(&dir.0, bad, opts(&[], &[]), redactor(&[])).is_err(),
            "{bad}"
        );
    }
    // A file where the directory should be: an I/O error, not a panic.
    let blocker = dir.0.join("file");
    fs::write(&blocker, "x").unwrap();
    let err = Cassette::open(&blocker, "stripe", opts(&[], &[]), redactor(&[])).unwrap_err();
    assert!(matches!(err, CassetteError::Io { .. }), "{err}");
    // The directory turns into a file after opening: recording fails cleanly.
    let later = dir.0.join("later");
    let c = Cassette::open(&later, "stripe", opts(&[], &[]), redactor(&[])).unwrap();
    fs::write(&later, "x").unwrap();
    let err = c
        .record(&req("GET", "/", &[], ""), 200, &HeaderMap::new(), b"")
        .unwrap_err();
    assert!(matches!(err, CassetteError::Io { .. }), "{err}");
    assert!(c.is_empty(), "a failed write is not kept in memory");
}

#[test]
fn datetime_detection() {
    for yes in [
        "2026-12-04T02:10",
        "2026-12-04 02:10:00Z",
        "1999-01-01t00:00:00.5+02:00",
    ] {
        assert!(looks_like_datetime(yes), "{yes}");
    }
    for no in [
        "2026-12-04",
        "20261204T021000",
        "abcd-ef-ghTij:kl",
        "2026-12-04T02",
        "é2026-12-04T02:10",
    ] {
        assert!(!looks_like_datetime(no), "{no}");
    }
}

#[tokio::test]
async fn record_async_and_concurrent_writers_keep_every_recording() {
    let dir = Dir::new("async");
    let c = Arc::new(open(&dir, opts(&[], &[])));
    let mut tasks = Vec::new();
    for i in 0..8 {
        let c = Arc::clone(&c);
        tasks.push(tokio::spawn(async move {
            c.record_async(
                req("GET", &format!("/v1/{i}"), &[], ""),
                200,
                HeaderMap::new(),
                Bytes::from(format!("r{i}")),
            )
            .await
        }));
    }
    for t in tasks {
        t.await.unwrap().unwrap();
    }
    let reloaded = open(&dir, opts(&[], &[]));
    assert_eq!(reloaded.len(), 8);
    for i in 0..8 {
        let got = reloaded
            .lookup(&req("GET", &format!("/v1/{i}"), &[], ""))
            .unwrap();
        assert_eq!(got.body, format!("r{i}"));
    }
}

#[tokio::test]
async fn record_body_records_when_the_stream_ends() {
    use http_body_util::{BodyExt, Full, StreamBody};
    let dir = Dir::new("recbody");
    let c = Arc::new(open(&dir, opts(&[], &[])));
    let body = c.record_body(
        req("GET", "/v1/a", &[], ""),
        200,
        HeaderMap::new(),
        Full::new(Bytes::from_static(b"streamed")),
        1024,
    );
    assert_eq!(&body.collect().await.unwrap().to_bytes()[..], b"streamed");
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
    while c.is_empty() {
        assert!(tokio::time::Instant::now() < deadline, "recorded in time");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await; // poll
    }
    assert_eq!(
        &c.lookup(&req("GET", "/v1/a", &[], "")).unwrap().body[..],
        b"streamed"
    );

    // Too large, or failing: streamed to the app all the same, not recorded.
    let big = c.record_body(
        req("GET", "/v1/big", &[], ""),
        200,
        HeaderMap::new(),
        Full::new(Bytes::from(vec![b'x'; 2048])),
        1024,
    );
    assert_eq!(big.collect().await.unwrap().to_bytes().len(), 2048);
    let chunks = futures_util::stream::iter(vec![
        Ok(http_body::Frame::data(Bytes::from_static(b"x"))),
        Err("reset"),
    ]);
    let failing = c.record_body(
        req("GET", "/v1/fail", &[], ""),
        200,
        HeaderMap::new(),
        StreamBody::new(chunks),
        1024,
    );
    assert!(failing.collect().await.is_err());
    // A third, small recording proves the writer ran after the two that were skipped.
    let last = c.record_body(
        req("GET", "/v1/c", &[], ""),
        200,
        HeaderMap::new(),
        Full::new(Bytes::from_static(b"c")),
        1024,
    );
    last.collect().await.unwrap();
    while c.len() < 2 {
        assert!(tokio::time::Instant::now() < deadline, "recorded in time");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await; // poll
    }
    assert_eq!(c.len(), 2);
    assert!(c.lookup(&req("GET", "/v1/big", &[], "")).is_err());
    assert!(c.lookup(&req("GET", "/v1/fail", &[], "")).is_err());
}

mod prop {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(128))]

        /// Hand-edited garbage never panics the loader: it loads or is an error.
        #[test]
        fn any_file_loads_or_errors(text in "(version: 1\nupstream: stripe\n)?[ -~\n\t]{0,200}") {
            let dir = Dir::new("prop");
            fs::write(dir.0.join("stripe.yaml"), &text).unwrap();
            let _ = Cassette::open(&dir.0, "stripe", opts(&[], &[]), redactor(&[]));
        }

        /// Plausible interactions with hostile field values: load or error, then lookups never panic.
        #[test]
        fn hostile_interactions(
            method in "[A-Z!-/]{0,6}",
            path in "/?[ -~]{0,20}",
            query in proptest::option::of("[ -~]{0,20}"),
            header in "[ -~]{0,20}",
            body in "[ -~]{0,30}",
            b64 in proptest::option::of("[A-Za-z0-9+/=!]{0,12}"),
            status in 0u16..1200,
        ) {
            let file = CassetteFile {
                version: 1,
                upstream: "stripe".into(),
                interactions: vec![Interaction {
                    request: RecordedRequest { method: method.clone(), path: path.clone(), query: query.clone(),
                        headers: vec![header.clone()], body: Some(body.clone()), body_base64: None },
                    response: RecordedResponse { status, headers: vec![header], body: None, body_base64: b64 },
                }],
            };
            let dir = Dir::new("prop2");
            fs::write(dir.0.join("stripe.yaml"), serde_yaml::to_string(&file).unwrap()).unwrap();
            if let Ok(c) = Cassette::open(&dir.0, "stripe", opts(&["x"], &[]), redactor(&["s"])) {
                let uri = format!("{path}?{}", query.unwrap_or_default());
                if let (Ok(m), Ok(u)) = (method.parse::<Method>(), uri.parse::<http::Uri>()) {
                    let r = CassetteRequest::new(m, &u, HeaderMap::new(), Bytes::from(body));
                    let _ = c.lookup(&r);
                }
                let _ = c.lookup(&req("GET", "/", &[], "{\"a\":[1,{\"b\":null}]}"));
            }
        }
    }
}
