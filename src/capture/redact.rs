//! Redaction shared by the ring, the cassettes and everything built from them (HAR, the page).
//!
//! Three rules, applied in this order when an exchange is stored:
//! 1. header values: `authorization` and `proxy-authorization` always, plus the configured
//!    names (case-insensitive), become `[redacted]`;
//! 2. JSON body fields by key at any depth (and form fields / query parameters of the same
//!    name) become `"[redacted]"`; the scan is textual, so the rest of the body keeps the bytes
//!    the application sent, and it also works on a body cut at the capture cap;
//! 3. every known secret string (the credentials Outpost injects, set with
//!    [`Redactor::set_secrets`]) is replaced wherever it appears: header values, path, query and
//!    bodies, raw and in its percent-encoded and JSON-escaped forms. When a body was cut at the
//!    cap, a tail that is the beginning of a secret is scrubbed too.

use http::HeaderName;
use memchr::memmem;

use super::config::is_never_stored;

/// What a redacted value is replaced with.
pub const REDACTED: &str = "[redacted]";

/// The redaction rules of one ring or cassette. Cheap to clone; rebuilt when secrets rotate.
/// Its `Debug` shows how many secrets it knows, never them.
#[derive(Clone, Default)]
pub struct Redactor {
    headers: Vec<HeaderName>,
    json_fields: Vec<String>,
    /// Each secret with its encoded variants, longest first; never empty strings.
    secrets: Vec<Vec<u8>>,
    /// One SIMD substring searcher per entry of `secrets` (memchr's memmem).
    finders: Vec<memmem::Finder<'static>>,
}

impl std::fmt::Debug for Redactor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Redactor")
            .field("headers", &self.headers)
            .field("json_fields", &self.json_fields)
            .field(
                "secrets",
                &format_args!("[{} redacted]", self.secrets.len()),
            )
            .finish()
    }
}

impl Redactor {
    pub fn new(headers: Vec<HeaderName>, json_fields: Vec<String>) -> Self {
        Redactor {
            headers,
            json_fields,
            secrets: Vec::new(),
            finders: Vec::new(),
        }
    }

    /// Replace the known secrets (call again after a reload or a file-secret rotation).
    /// Empty strings are ignored: they would match everywhere.
    pub fn set_secrets(&mut self, secrets: &[&str]) {
        let mut all: Vec<Vec<u8>> = Vec::new();
        for secret in secrets.iter().filter(|s| !s.is_empty()) {
            let raw = secret.as_bytes().to_vec();
            let pct =
                percent_encoding::utf8_percent_encode(secret, percent_encoding::NON_ALPHANUMERIC)
                    .to_string()
                    .into_bytes();
            let plus = pct_form(secret);
            let json = serde_json::to_string(secret).unwrap_or_default();
            let json = json.trim_matches('"').as_bytes().to_vec();
            let slash = secret.replace('/', "\\/").into_bytes();
            for v in [raw, pct, plus, json, slash] {
                if !v.is_empty() && !all.contains(&v) {
                    all.push(v);
                }
            }
        }
        all.sort_by_key(|v| std::cmp::Reverse(v.len()));
        self.finders = all
            .iter()
            .map(|v| memmem::Finder::new(v).into_owned())
            .collect();
        self.secrets = all;
    }

    /// Whether any secret is known.
    pub fn has_secrets(&self) -> bool {
        !self.secrets.is_empty()
    }

    /// Whether a header's value is replaced entirely.
    pub fn hides_header(&self, name: &HeaderName) -> bool {
        is_never_stored(name) || self.headers.contains(name)
    }

    /// The stored form of one header value.
    pub fn header_value(&self, name: &HeaderName, value: &[u8]) -> String {
        if self.hides_header(name) {
            return REDACTED.to_string();
        }
        let scrubbed = self.scrub(value);
        String::from_utf8_lossy(&scrubbed).into_owned()
    }

    /// Header pairs in their stored form.
    pub fn headers(&self, headers: &http::HeaderMap) -> Vec<(String, String)> {
        headers
            .iter()
            .map(|(name, value)| {
                (
                    name.as_str().to_string(),
                    self.header_value(name, value.as_bytes()),
                )
            })
            .collect()
    }

    /// A path or query string with secrets scrubbed and redacted parameters hidden.
    pub fn query(&self, query: &str) -> String {
        let q = redact_form(query.as_bytes(), &self.json_fields);
        String::from_utf8_lossy(&self.scrub(&q)).into_owned()
    }

    /// A path with secrets scrubbed.
    pub fn text(&self, text: &str) -> String {
        String::from_utf8_lossy(&self.scrub(text.as_bytes())).into_owned()
    }

    /// A body in its stored form. `truncated` says the bytes stop at the capture cap.
    pub fn body(&self, body: &[u8], content_type: Option<&str>, truncated: bool) -> Vec<u8> {
        self.body_owned(body.to_vec(), content_type, truncated)
    }

    /// [`Redactor::body`] without copying a body that needs no change.
    pub fn body_owned(
        &self,
        body: Vec<u8>,
        content_type: Option<&str>,
        truncated: bool,
    ) -> Vec<u8> {
        let ct = content_type.unwrap_or("").to_ascii_lowercase();
        let out = if self.json_fields.is_empty() {
            body
        } else if ct.contains("json") || looks_like_json(&body) {
            redact_json_text(&body, &self.json_fields)
        } else if ct.starts_with("application/x-www-form-urlencoded") {
            redact_form(&body, &self.json_fields)
        } else {
            body
        };
        let mut out = self.scrub_owned(out);
        if truncated {
            self.scrub_tail(&mut out);
        }
        out
    }

    /// Secrets only (the cassette rule, which must keep bodies byte-exact otherwise).
    pub fn scrub(&self, bytes: &[u8]) -> Vec<u8> {
        self.scrub_owned(bytes.to_vec())
    }

    fn scrub_owned(&self, mut out: Vec<u8>) -> Vec<u8> {
        for finder in &self.finders {
            if finder.find(&out).is_some() {
                out = replace_all(&out, finder, REDACTED.as_bytes());
            }
        }
        out
    }

    /// A body cut at the cap may end inside a secret: drop such a tail (4 bytes or more).
    fn scrub_tail(&self, out: &mut Vec<u8>) {
        for secret in &self.secrets {
            let max = secret.len().saturating_sub(1).min(out.len());
            for k in (4..=max).rev() {
                if out[out.len() - k..] == secret[..k] {
                    out.truncate(out.len() - k);
                    out.extend_from_slice(REDACTED.as_bytes());
                    break;
                }
            }
        }
    }
}

fn pct_form(s: &str) -> Vec<u8> {
    form_urlencoded::byte_serialize(s.as_bytes())
        .collect::<String>()
        .into_bytes()
}

fn looks_like_json(body: &[u8]) -> bool {
    matches!(
        body.iter().find(|b| !b.is_ascii_whitespace()),
        Some(b'{') | Some(b'[')
    )
}

fn replace_all(haystack: &[u8], finder: &memmem::Finder<'_>, with: &[u8]) -> Vec<u8> {
    let len = finder.needle().len();
    let mut out = Vec::with_capacity(haystack.len());
    let mut rest = haystack;
    while let Some(pos) = finder.find(rest) {
        out.extend_from_slice(&rest[..pos]);
        out.extend_from_slice(with);
        rest = &rest[pos + len..];
    }
    out.extend_from_slice(rest);
    out
}

/// `a=1&email=x&b=2` with `email` listed → `a=1&email=%5Bredacted%5D&b=2`.
fn redact_form(input: &[u8], fields: &[String]) -> Vec<u8> {
    if fields.is_empty() {
        return input.to_vec();
    }
    let mut out = Vec::with_capacity(input.len());
    for (i, pair) in input.split(|b| *b == b'&').enumerate() {
        if i > 0 {
            out.push(b'&');
        }
        let key_end = pair.iter().position(|b| *b == b'=').unwrap_or(pair.len());
        let key: String = form_urlencoded::parse(&pair[..key_end])
            .next()
            .map(|(k, _)| k.into_owned())
            .unwrap_or_default();
        // `user[email]` (Stripe-style nesting) counts as `email`.
        let leaf = key.rsplit('[').next().unwrap_or(&key).trim_end_matches(']');
        if key_end < pair.len() && fields.iter().any(|f| f == &key || f == leaf) {
            out.extend_from_slice(&pair[..=key_end]);
            out.extend_from_slice(b"%5Bredacted%5D");
        } else {
            out.extend_from_slice(pair);
        }
    }
    out
}

/// Replace the values of the listed keys in JSON text, at any depth, keeping every other byte.
/// Works on invalid or truncated JSON (a value cut short is redacted up to the end).
fn redact_json_text(input: &[u8], fields: &[String]) -> Vec<u8> {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        if input[i] != b'"' {
            out.push(input[i]);
            i += 1;
            continue;
        }
        let end = string_end(input, i);
        let token = &input[i..end];
        out.extend_from_slice(token);
        i = end;
        // A string followed by `:` is a key.
        let mut j = i;
        while j < input.len() && input[j].is_ascii_whitespace() {
            j += 1;
        }
        if j >= input.len() || input[j] != b':' {
            continue;
        }
        let key: Option<String> = serde_json::from_slice(token).ok();
        let listed = key.is_some_and(|k| fields.contains(&k));
        if !listed {
            continue;
        }
        j += 1;
        while j < input.len() && input[j].is_ascii_whitespace() {
            j += 1;
        }
        out.extend_from_slice(&input[i..j]);
        let value_end = value_end(input, j);
        out.extend_from_slice(b"\"[redacted]\"");
        i = value_end;
    }
    out
}

/// Index just past the string starting at `start` (a `"`), or the input's end.
fn string_end(input: &[u8], start: usize) -> usize {
    let mut i = start + 1;
    while i < input.len() {
        match input[i] {
            b'\\' => i += 2,
            b'"' => return i + 1,
            _ => i += 1,
        }
    }
    input.len()
}

/// Index just past the JSON value starting at `start`, or the input's end.
fn value_end(input: &[u8], start: usize) -> usize {
    let Some(&first) = input.get(start) else {
        return input.len();
    };
    match first {
        b'"' => string_end(input, start),
        b'{' | b'[' => {
            let mut depth = 0usize;
            let mut i = start;
            while i < input.len() {
                match input[i] {
                    b'"' => {
                        i = string_end(input, i);
                        continue;
                    }
                    b'{' | b'[' => depth += 1,
                    b'}' | b']' => {
                        depth = depth.saturating_sub(1);
                        if depth == 0 {
                            return i + 1;
                        }
                    }
                    _ => {}
                }
                i += 1;
            }
            input.len()
        }
        _ => input[start..]
            .iter()
            .position(|b| matches!(b, b',' | b'}' | b']') || b.is_ascii_whitespace())
            .map_or(input.len(), |p| start + p),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fields(list: &[&str]) -> Vec<String> {
        list.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn json_fields_at_any_depth_keep_other_bytes() {
        let body = br#"{"email": "a@b.c", "n": 1, "user": {"email":"x\"y", "age": 3},
            "list": [{"email": null}], "note": "email", "secret_obj": {"email": {"deep": [1,2]}}}"#;
        let out = redact_json_text(body, &fields(&["email"]));
        let text = String::from_utf8(out).unwrap();
        assert!(!text.contains("a@b.c") && !text.contains("x\\\"y") && !text.contains("deep"));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["email"], "[redacted]");
        assert_eq!(v["user"]["email"], "[redacted]");
        assert_eq!(v["user"]["age"], 3);
        assert_eq!(v["list"][0]["email"], "[redacted]");
        assert_eq!(
            v["note"], "email",
            "a value equal to a field name is not a key"
        );
        assert_eq!(v["secret_obj"]["email"], "[redacted]");
        assert!(text.starts_with("{\"email\": \"[redacted]\", \"n\": 1,"));
    }

    #[test]
    fn json_redaction_survives_truncated_and_garbage_input() {
        let out = redact_json_text(br#"{"a":1,"email":"abc@exa"#, &fields(&["email"]));
        assert_eq!(out, br#"{"a":1,"email":"[redacted]""#);
        for garbage in [
            &b"\""[..],
            b"\"email\":",
            b"{\"email\"   ",
            b"\\\"\"",
            b"[{[{",
        ] {
            let _ = redact_json_text(garbage, &fields(&["email"]));
        }
    }

    #[test]
    fn form_and_query_fields() {
        let out = redact_form(b"a=1&email=x%40y&user[email]=z&b", &fields(&["email"]));
        assert_eq!(
            out,
            b"a=1&email=%5Bredacted%5D&user[email]=%5Bredacted%5D&b".to_vec()
        );
        let r = Redactor::new(vec![], fields(&["email"]));
        assert_eq!(r.query("email=x&q=1"), "email=%5Bredacted%5D&q=1");
    }

    #[test]
    fn headers_always_and_configured() {
        let r = Redactor::new(vec![HeaderName::from_static("set-cookie")], vec![]);
        let mut h = http::HeaderMap::new();
        h.insert("authorization", "Bearer sk_live".parse().unwrap());
        h.insert("proxy-authorization", "Basic x".parse().unwrap());
        h.insert("Set-Cookie", "sid=1".parse().unwrap());
        h.insert("x-ok", "fine".parse().unwrap());
        let stored = r.headers(&h);
        for (name, value) in &stored {
            if name == "x-ok" {
                assert_eq!(value, "fine");
            } else {
                assert_eq!(value, REDACTED, "{name}");
            }
        }
    }

    #[test]
    fn known_secrets_everywhere_and_encoded() {
        let mut r = Redactor::new(vec![], vec![]);
        r.set_secrets(&["sk_test_a/b+c", ""]);
        assert!(r.has_secrets());
        let h = HeaderName::from_static("x-echo");
        assert_eq!(r.header_value(&h, b"k=sk_test_a/b+c;"), "k=[redacted];");
        assert_eq!(r.query("key=sk_test_a%2Fb%2Bc&x=1"), "key=[redacted]&x=1");
        assert_eq!(r.text("/v1/sk_test_a/b+c"), "/v1/[redacted]");
        let body = br#"{"k":"sk_test_a\/b+c","form":"sk_test_a%2Fb%2Bc"}"#;
        let out = String::from_utf8(r.body(body, Some("application/json"), false)).unwrap();
        assert!(!out.contains("sk_test"), "{out}");
        // Cut at the cap in the middle of the secret.
        let out = r.body(b"token: sk_test_a/", None, true);
        assert_eq!(out, b"token: [redacted]".to_vec());
        // A short unrelated tail is kept.
        assert_eq!(r.body(b"abc sk", None, true), b"abc sk".to_vec());
    }

    #[test]
    fn debug_never_prints_a_secret() {
        let mut r = Redactor::new(vec![], vec![]);
        r.set_secrets(&["sk_live_DEBUGME"]);
        let shown = format!("{r:?}");
        assert!(!shown.contains("DEBUGME"), "{shown}");
        assert!(shown.contains("redacted"), "{shown}");
        let ring = crate::capture::CaptureRing::new(crate::capture::CaptureConfig::default());
        ring.set_secrets(&["sk_live_DEBUGME"]);
        assert!(!format!("{ring:?}").contains("DEBUGME"));
    }

    mod prop {
        use super::super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(256))]

            /// Any bytes: no panic, whatever the content type or truncation.
            #[test]
            fn never_panics(body in proptest::collection::vec(any::<u8>(), 0..300), truncated: bool) {
                let mut r = Redactor::new(vec![], vec!["email".into(), "a".into()]);
                r.set_secrets(&["s3cr3t"]);
                for ct in [Some("application/json"), Some("application/x-www-form-urlencoded"), None] {
                    let _ = r.body(&body, ct, truncated);
                }
                let _ = r.query(&String::from_utf8_lossy(&body));
            }

            /// A secret placed anywhere, cut anywhere: never stored, not even its first 4+ bytes at the end.
            #[test]
            fn secret_never_survives(prefix in "[a-z ]{0,40}", suffix in "[a-z ]{0,40}", cut in 0usize..120) {
                let secret = "sk_test_PROPxyz123";
                let mut r = Redactor::new(vec![], vec![]);
                r.set_secrets(&[secret]);
                let full = format!("{prefix}{secret}{suffix}");
                let end = cut.min(full.len());
                let stored = r.body(&full.as_bytes()[..end], None, end < full.len());
                let text = String::from_utf8_lossy(&stored).into_owned();
                prop_assert!(!text.contains(secret));
                for k in 4..secret.len() {
                    prop_assert!(!text.ends_with(&secret[..k]), "tail {} survives in {:?}", &secret[..k], text);
                }
            }

            /// Valid JSON stays valid JSON, with every listed key redacted and the rest unchanged.
            #[test]
            fn json_stays_json(v in json_value()) {
                let text = serde_json::to_string_pretty(&v).unwrap();
                let out = redact_json_text(text.as_bytes(), &["email".to_string()]);
                let parsed: serde_json::Value = serde_json::from_slice(&out).expect("still JSON");
                prop_assert_eq!(parsed, expected(&v));
            }
        }

        fn json_value() -> impl Strategy<Value = serde_json::Value> {
            let leaf = prop_oneof![
                Just(serde_json::Value::Null),
                any::<bool>().prop_map(serde_json::Value::from),
                any::<i32>().prop_map(serde_json::Value::from),
                "[a-z\\\"\\u{e9} :,{}\\[\\]]{0,8}".prop_map(serde_json::Value::from),
            ];
            leaf.prop_recursive(4, 32, 4, |inner| {
                prop_oneof![
                    proptest::collection::vec(inner.clone(), 0..4)
                        .prop_map(serde_json::Value::from),
                    proptest::collection::vec(
                        (prop_oneof![Just("email".to_string()), "[a-z]{1,5}"], inner),
                        0..4
                    )
                    .prop_map(|kv| serde_json::Value::Object(kv.into_iter().collect())),
                ]
            })
        }

        fn expected(v: &serde_json::Value) -> serde_json::Value {
            match v {
                serde_json::Value::Object(m) => serde_json::Value::Object(
                    m.iter()
                        .map(|(k, v)| {
                            let nv = if k == "email" {
                                serde_json::Value::from("[redacted]")
                            } else {
                                expected(v)
                            };
                            (k.clone(), nv)
                        })
                        .collect(),
                ),
                serde_json::Value::Array(a) => {
                    serde_json::Value::Array(a.iter().map(expected).collect())
                }
                other => other.clone(),
            }
        }
    }
}
