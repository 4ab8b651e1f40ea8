//! `application/x-www-form-urlencoded` decoding for the Stripe profile (bodies and query
//! strings), with Stripe's bracket keys such as `metadata[order_id]`.
//!
//! Decoding follows the WHATWG URL standard's form parser: `&` separates pairs, the first `=`
//! splits name from value, `+` is a space, `%XX` is a byte, a malformed `%` stays literal and
//! invalid UTF-8 becomes U+FFFD. It never fails, so hostile input cannot make it panic.

/// Decode `input` into `(name, value)` pairs in order; empty pairs (`a=1&&b=2`) are skipped.
pub(crate) fn decode(input: &[u8]) -> Vec<(String, String)> {
    input
        .split(|&b| b == b'&')
        .filter(|pair| !pair.is_empty())
        .map(|pair| {
            let (name, value) = match pair.iter().position(|&b| b == b'=') {
                Some(eq) => (&pair[..eq], &pair[eq + 1..]),
                None => (pair, &[][..]),
            };
            (decode_component(name), decode_component(value))
        })
        .collect()
}

/// The inner name of a bracket key: `bracketed("metadata[foo]", "metadata") == Some("foo")`.
pub(crate) fn bracketed<'a>(key: &'a str, prefix: &str) -> Option<&'a str> {
    key.strip_prefix(prefix)?
        .strip_prefix('[')?
        .strip_suffix(']')
}

fn decode_component(input: &[u8]) -> String {
    let mut out = Vec::with_capacity(input.len());
    let mut i = 0;
    while i < input.len() {
        match input[i] {
            b'+' => out.push(b' '),
            b'%' => {
                let hex = input.get(i + 1..i + 3).and_then(|h| {
                    let hi = hex_value(h[0])?;
                    let lo = hex_value(h[1])?;
                    Some(hi << 4 | lo)
                });
                match hex {
                    Some(byte) => {
                        out.push(byte);
                        i += 2;
                    }
                    None => out.push(b'%'),
                }
            }
            other => out.push(other),
        }
        i += 1;
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

fn hex_value(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(input: &str) -> Vec<(String, String)> {
        decode(input.as_bytes())
    }

    fn owned(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn plus_and_percent() {
        assert_eq!(
            pairs("name=Jenny+Rosen&email=jenny%40example.com&note=a%2Bb%20c"),
            owned(&[
                ("name", "Jenny Rosen"),
                ("email", "jenny@example.com"),
                ("note", "a+b c")
            ])
        );
    }

    #[test]
    fn bracket_keys_are_decoded_then_split() {
        let decoded = pairs("metadata%5Border_id%5D=6735&metadata[x]=1");
        assert_eq!(decoded[0].0, "metadata[order_id]");
        assert_eq!(bracketed(&decoded[0].0, "metadata"), Some("order_id"));
        assert_eq!(bracketed(&decoded[1].0, "metadata"), Some("x"));
        assert_eq!(bracketed("metadata", "metadata"), None);
        assert_eq!(bracketed("metadatax[a]", "metadata"), None);
        assert_eq!(bracketed("metadata[a", "metadata"), None);
        assert_eq!(bracketed("metadata[]", "metadata"), Some(""));
    }

    #[test]
    fn missing_values_and_empty_pairs() {
        assert_eq!(
            pairs("a&&b=&=c&d=e=f"),
            owned(&[("a", ""), ("b", ""), ("", "c"), ("d", "e=f")])
        );
        assert!(pairs("").is_empty());
    }

    #[test]
    fn malformed_percent_stays_literal() {
        assert_eq!(pairs("a=%&b=%4&c=%zz&d=100%"), {
            owned(&[("a", "%"), ("b", "%4"), ("c", "%zz"), ("d", "100%")])
        });
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(pairs("a=%FF%FEok"), owned(&[("a", "\u{FFFD}\u{FFFD}ok")]));
        assert_eq!(
            decode(b"k=\xff"),
            vec![("k".to_string(), "\u{FFFD}".to_string())]
        );
        assert_eq!(pairs("e=%C3%A9"), owned(&[("e", "é")]));
    }
}
