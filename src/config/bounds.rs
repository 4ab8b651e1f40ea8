//! A linear pre-scan of the config text that bounds what the YAML parser is given: nesting
//! depth and alias count.
//!
//! The YAML parser behind `serde_yaml` takes time quadratic in the nesting depth (a 200 KB
//! file of 100 000 nested `[` took over 20 s), and every alias replays the node it names, so
//! nested aliases ("billion laughs") multiply work. Outpost's schema nests about six levels
//! and has no use for many aliases, so the text is refused before parsing when it goes beyond
//! [`MAX_DEPTH`] levels or [`MAX_ALIASES`] aliases, with the position where the limit was
//! crossed. The scan is one pass over the bytes and follows just enough YAML to find node
//! starts: indentation, `- `/`? ` indicators, flow brackets, quoted scalars, comments and
//! block scalars. It may over-count for exotic but valid YAML; it never panics.

/// Deepest nesting of collections accepted.
pub const MAX_DEPTH: usize = 64;
/// Most aliases (`*name`) accepted in one file.
pub const MAX_ALIASES: usize = 256;

/// Where and why the text was refused (1-based line and column).
#[derive(Debug, PartialEq, Eq)]
pub struct Refused {
    pub line: usize,
    pub column: usize,
    pub message: String,
}

#[derive(Clone, Copy, PartialEq, Eq)]
enum Quote {
    None,
    Single,
    Double,
}

/// Check `source` against [`MAX_DEPTH`] and [`MAX_ALIASES`].
pub fn check(source: &str) -> Result<(), Refused> {
    let mut indents: Vec<usize> = Vec::new();
    let mut flow = 0usize;
    let mut quote = Quote::None;
    let mut aliases = 0usize;
    // Lines more indented than this belong to a block scalar (`|` or `>`).
    let mut block_scalar: Option<usize> = None;
    for (index, line) in source.split('\n').enumerate() {
        let bytes = line.as_bytes();
        let indent = bytes.iter().take_while(|b| **b == b' ').count();
        let blank = bytes[indent..]
            .iter()
            .all(|b| matches!(b, b' ' | b'\t' | b'\r'));
        if let Some(parent) = block_scalar {
            if blank || indent > parent {
                continue;
            }
            block_scalar = None;
        }
        let refuse = |at: usize, message: String| Refused {
            line: index + 1,
            column: 1 + line.get(..at).map_or(at, |s| s.chars().count()),
            message,
        };
        let mut depth_here = 0usize;
        if flow == 0 && quote == Quote::None && !blank && bytes.get(indent) != Some(&b'#') {
            while indents.last().is_some_and(|top| *top >= indent) {
                indents.pop();
            }
            indents.push(indent);
        }
        let mut at_node = true;
        let mut i = indent;
        while i < bytes.len() {
            let b = bytes[i];
            match quote {
                Quote::Single => {
                    if b == b'\'' {
                        if bytes.get(i + 1) == Some(&b'\'') {
                            i += 1;
                        } else {
                            quote = Quote::None;
                        }
                    }
                    i += 1;
                    continue;
                }
                Quote::Double => {
                    if b == b'\\' {
                        i += 1;
                    } else if b == b'"' {
                        quote = Quote::None;
                    }
                    i += 1;
                    continue;
                }
                Quote::None => {}
            }
            let next = bytes.get(i + 1).copied();
            let separated = |n: Option<u8>| matches!(n, None | Some(b' ' | b'\t' | b'\r'));
            match b {
                b' ' | b'\t' | b'\r' => {}
                b'#' if i == 0 || matches!(bytes[i - 1], b' ' | b'\t') => break,
                b'-' | b'?' if at_node && separated(next) => {
                    if flow == 0 {
                        depth_here += 1;
                    }
                }
                b':' if separated(next)
                    || (flow > 0 && matches!(next, Some(b',' | b']' | b'}'))) =>
                {
                    at_node = true;
                }
                b'[' | b'{' if at_node => {
                    flow += 1;
                    at_node = true;
                }
                b']' | b'}' if flow > 0 => {
                    flow -= 1;
                    at_node = false;
                }
                b',' if flow > 0 => at_node = true,
                b'\'' if at_node => {
                    quote = Quote::Single;
                    at_node = false;
                }
                b'"' if at_node => {
                    quote = Quote::Double;
                    at_node = false;
                }
                b'*' if at_node => {
                    aliases += 1;
                    if aliases > MAX_ALIASES {
                        return Err(refuse(
                            i,
                            format!("more than {MAX_ALIASES} aliases (`*name`) in one file"),
                        ));
                    }
                    at_node = false;
                }
                // Anchors and tags come before a node: what follows still starts it.
                b'&' | b'!' if at_node => {
                    while i + 1 < bytes.len() && !matches!(bytes[i + 1], b' ' | b'\t' | b'\r') {
                        i += 1;
                    }
                }
                b'|' | b'>' if at_node && flow == 0 => {
                    block_scalar = Some(indent);
                    break;
                }
                _ => at_node = false,
            }
            let depth = indents.len() + depth_here + flow;
            if depth > MAX_DEPTH {
                return Err(refuse(i, format!("nesting deeper than {MAX_DEPTH} levels")));
            }
            i += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_configs_pass() {
        let yaml = "version: 1\nupstreams:\n  a:\n    base_url: \"http://x#[[[\"\n    headers: {A: '[[[', B: \"{{{\"}\n    retry: { on_status: [429, 503] }\n    hosts: [a.b, c]\n  # [[[[[[[[[[[[\nwebhooks:\n  h:\n    path: /h\n    note: |\n      [[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[\n    secrets: [\"x\"]\n    x: it's [fine]\n";
        assert_eq!(check(yaml), Ok(()));
        let proxy = include_str!("../../proxy.yaml");
        assert_eq!(check(proxy), Ok(()));
    }

    #[test]
    fn deep_nesting_is_refused_where_it_crosses_the_limit() {
        let flow = format!(
            "version: 1\nupstreams: {}{}\n",
            "[".repeat(100_000),
            "]".repeat(100_000)
        );
        let e = check(&flow).unwrap_err();
        assert_eq!(
            (e.line, e.message.as_str()),
            (2, "nesting deeper than 64 levels")
        );
        assert_eq!(e.column, 75, "the 64th `[` after `upstreams: `");
        let dashes = format!("version: 1\nupstreams:\n  a: {}x\n", "- ".repeat(100_000));
        assert_eq!(check(&dashes).unwrap_err().line, 3);
        let block: String = (0..100)
            .map(|i| format!("{}k{i}:\n", " ".repeat(i)))
            .collect();
        assert_eq!(check(&block).unwrap_err().line, 65);
    }

    #[test]
    fn alias_bombs_are_refused() {
        let mut yaml = String::from("a0: &a0 [x, x, x, x, x, x, x, x, x]\n");
        for i in 1..40 {
            let refs = vec![format!("*a{}", i - 1); 9].join(", ");
            yaml.push_str(&format!("a{i}: &a{i} [{refs}]\n"));
        }
        let e = check(&yaml).unwrap_err();
        assert!(e.message.contains("aliases"), "{e:?}");
    }

    proptest::proptest! {
        #[test]
        fn never_panics(s in "\\PC{0,512}|[\\[\\]{}'\"#:&*!|> \\n-]{0,512}") {
            let _ = check(&s);
        }
    }
}
