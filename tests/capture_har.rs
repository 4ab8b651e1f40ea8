//! The HAR export of the capture ring validates against the HAR 1.2 JSON schema
//! (`tests/fixtures/capture/har-1.2.schema.json`, from the W3C draft), checked with Python's
//! `jsonschema` (installed by `.ci/run`). A broken document must fail, so the check is real.

mod support;

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use http::{HeaderMap, HeaderName, Method};
use outpost::capture::config::RawCapture;
use outpost::capture::har;
use outpost::capture::ring::Attempt;
use outpost::capture::CaptureRing;
use serde_json::Value;
use support::TempDir;

fn headers(pairs: &[(&str, &str)]) -> HeaderMap {
    let mut h = HeaderMap::new();
    for (n, v) in pairs {
        h.append(
            HeaderName::from_bytes(n.as_bytes()).unwrap(),
            v.parse().unwrap(),
        );
    }
    h
}

fn populated() -> std::sync::Arc<CaptureRing> {
    let ring = CaptureRing::new(
        RawCapture {
            max_body_bytes: Some(outpost::config::units::Size(64)),
            redact_json_fields: vec!["email".into()],
            ..RawCapture::default()
        }
        .validate()
        .unwrap(),
    );
    ring.set_secrets(&["sk_test_HARSECRET"]);
    // A form POST with a retry, a JSON answer and a cookie.
    let mut d = ring.start_upstream(
        "stripe",
        &Method::POST,
        &"/v1/charges?expand[]=customer&key=sk_test_HARSECRET"
            .parse()
            .unwrap(),
        &headers(&[
            ("content-type", "application/x-www-form-urlencoded"),
            ("authorization", "Bearer sk_test_HARSECRET"),
        ]),
    );
    d.base_url("https://api.stripe.com")
        .request_chunk(b"amount=100&currency=usd")
        .limiter_wait(Duration::from_millis(3))
        .attempt(Attempt {
            duration: Duration::from_millis(12),
            outcome: "response".into(),
            status: Some(503),
            retry_reason: Some("status".into()),
        })
        .attempt(Attempt {
            duration: Duration::from_millis(8),
            outcome: "response".into(),
            status: Some(200),
            retry_reason: None,
        })
        .response_head(
            200,
            &headers(&[("content-type", "application/json"), ("set-cookie", "a=b")]),
        )
        .response_chunk(br#"{"id":"ch_1","email":"x@y.z"}"#);
    ring.commit(d);
    // A binary download cut at the cap.
    let mut d = ring.start_upstream(
        "s3",
        &Method::GET,
        &"/bucket/key".parse().unwrap(),
        &HeaderMap::new(),
    );
    d.base_url("https://s3.amazonaws.com")
        .response_head(
            200,
            &headers(&[("content-type", "application/octet-stream")]),
        )
        .response_chunk(&[0xffu8; 100]);
    ring.commit(d);
    // A binary upload.
    let mut d = ring.start_upstream(
        "s3",
        &Method::PUT,
        &"/bucket/up".parse().unwrap(),
        &HeaderMap::new(),
    );
    d.request_chunk(&[0u8, 0xfe, 0xff])
        .response_head(200, &HeaderMap::new());
    ring.commit(d);
    // Outpost answered itself; no upstream response at all.
    let mut d = ring.start_upstream(
        "stripe",
        &Method::GET,
        &"/v1/x".parse().unwrap(),
        &HeaderMap::new(),
    );
    d.error("upstream_unreachable").attempt(Attempt {
        duration: Duration::from_millis(1),
        outcome: "connect_error".into(),
        status: None,
        retry_reason: None,
    });
    ring.commit(d);
    // A webhook delivery and a redirect.
    let mut d = ring.start_webhook(
        "stripe",
        &Method::POST,
        &"/stripe".parse().unwrap(),
        &headers(&[
            ("stripe-signature", "t=1,v1=ab"),
            ("content-type", "application/json"),
        ]),
    );
    d.base_url("http://0.0.0.0:8081")
        .request_chunk(br#"{"type":"charge.succeeded"}"#)
        .webhook("verified", "http://127.0.0.1:3000/webhooks/stripe")
        .response_head(302, &headers(&[("location", "/elsewhere")]));
    ring.commit(d);
    ring
}

fn validate(har: &Value, dir: &TempDir) -> Result<(), String> {
    let doc = dir.write("export.har", serde_json::to_vec_pretty(har).unwrap());
    let schema =
        Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/capture/har-1.2.schema.json");
    let script = r#"
import json, sys, jsonschema
schema = json.load(open(sys.argv[1]))
doc = json.load(open(sys.argv[2]))
jsonschema.Draft7Validator.check_schema(schema)
errors = sorted(jsonschema.Draft7Validator(schema).iter_errors(doc), key=lambda e: list(e.path))
for e in errors:
    print("/".join(str(p) for p in e.path) + ": " + e.message)
sys.exit(1 if errors else 0)
"#;
    let out = Command::new("python3")
        .arg("-c")
        .arg(script)
        .arg(&schema)
        .arg(&doc)
        .output()
        .expect("python3 is installed (.ci/run)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("ModuleNotFoundError"),
        "python jsonschema is missing (installed by .ci/run): {stderr}"
    );
    if out.status.success() {
        Ok(())
    } else {
        Err(format!("{}{stderr}", String::from_utf8_lossy(&out.stdout)))
    }
}

#[test]
fn har_export_validates_against_the_har_1_2_schema() {
    let ring = populated();
    let har = har::export(&ring.snapshot());
    let dir = TempDir::new("har");
    validate(&har, &dir).unwrap_or_else(|e| panic!("HAR export does not validate:\n{e}"));

    let entries = har["log"]["entries"].as_array().unwrap();
    assert_eq!(entries.len(), 5);
    let text = har.to_string();
    assert!(
        !text.contains("sk_test_HARSECRET"),
        "a known secret reached the HAR"
    );
    assert!(
        !text.contains("x@y.z"),
        "a redacted JSON field reached the HAR"
    );
    assert_eq!(
        entries[1]["comment"],
        "response body truncated at the capture cap"
    );
    assert_eq!(entries[4]["response"]["redirectURL"], "/elsewhere");
    assert_eq!(
        entries[4]["_outpost"]["webhook"]["verification"],
        "verified"
    );
    assert_eq!(
        entries[0]["_outpost"]["attempts"][0]["retry_reason"],
        "status"
    );
}

#[test]
fn the_schema_check_rejects_a_broken_document() {
    let ring = populated();
    let mut har = har::export(&ring.snapshot());
    har["log"]["entries"][0]["request"]
        .as_object_mut()
        .unwrap()
        .remove("queryString");
    har["log"]["entries"][1]["startedDateTime"] = "yesterday".into();
    har["log"]["entries"][2]["timings"]["wait"] = (-1).into();
    let dir = TempDir::new("har-broken");
    let err = validate(&har, &dir).expect_err("a broken HAR must not validate");
    assert!(
        err.contains("'queryString' is a required property"),
        "{err}"
    );
    assert!(err.contains("startedDateTime"), "{err}");
    assert!(err.contains("timings/wait"), "{err}");
}
