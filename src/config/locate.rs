//! Maps a field path such as `upstreams.stripe.auth.token` to its line and column in the YAML
//! source, so errors found after deserialization (stage two) still point at the file.

use std::collections::hash_map::Entry;
use std::collections::HashMap;

use yaml_rust2::parser::{Event, MarkedEventReceiver, Parser};
use yaml_rust2::scanner::Marker;

/// 1-based line and column.
pub type Position = (usize, usize);

#[derive(Default)]
pub struct Locator {
    keys: HashMap<String, Position>,
    /// Second occurrences of a key in the same mapping.
    duplicates: HashMap<String, Position>,
    values: HashMap<String, Position>,
}

enum Frame {
    Mapping { path: String, key: Option<String> },
    Sequence { path: String, index: usize },
}

#[derive(Default)]
struct Recorder {
    stack: Vec<Frame>,
    locator: Locator,
}

fn child(path: &str, key: &str) -> String {
    if path.is_empty() {
        key.to_string()
    } else {
        format!("{path}.{key}")
    }
}

impl Recorder {
    /// Called for every node; returns the path of the node when it is a value.
    fn node(&mut self, scalar_key: Option<&str>, mark: Marker) -> Option<String> {
        // yaml-rust2 lines are 1-based, columns 0-based.
        let pos = (mark.line(), mark.col() + 1);
        match self.stack.last_mut() {
            None => Some(String::new()),
            Some(Frame::Mapping { path, key }) => match key.take() {
                None => {
                    let name = scalar_key.unwrap_or("?").to_string();
                    let full = child(path, &name);
                    match self.locator.keys.entry(full) {
                        Entry::Occupied(seen) => {
                            self.locator
                                .duplicates
                                .entry(seen.key().clone())
                                .or_insert(pos);
                        }
                        Entry::Vacant(slot) => {
                            slot.insert(pos);
                        }
                    }
                    *key = Some(name);
                    None
                }
                Some(name) => {
                    let full = child(path, &name);
                    self.locator.values.entry(full.clone()).or_insert(pos);
                    Some(full)
                }
            },
            Some(Frame::Sequence { path, index }) => {
                let full = format!("{path}[{index}]");
                *index += 1;
                self.locator.keys.entry(full.clone()).or_insert(pos);
                self.locator.values.entry(full.clone()).or_insert(pos);
                Some(full)
            }
        }
    }
}

impl MarkedEventReceiver for Recorder {
    fn on_event(&mut self, ev: Event, mark: Marker) {
        match ev {
            Event::Scalar(value, ..) => {
                self.node(Some(&value), mark);
            }
            Event::Alias(_) => {
                self.node(None, mark);
            }
            Event::MappingStart(..) => {
                if let Some(path) = self.node(None, mark) {
                    self.stack.push(Frame::Mapping { path, key: None });
                }
            }
            Event::SequenceStart(..) => {
                if let Some(path) = self.node(None, mark) {
                    self.stack.push(Frame::Sequence { path, index: 0 });
                }
            }
            Event::MappingEnd | Event::SequenceEnd => {
                self.stack.pop();
            }
            _ => {}
        }
    }
}

impl Locator {
    pub fn new(source: &str) -> Self {
        let mut recorder = Recorder::default();
        // A source that does not parse was already reported by serde; positions are best effort.
        let _ = Parser::new_from_str(source).load(&mut recorder, false);
        recorder.locator
    }

    /// Where the key of `path` is written; falls back to the nearest enclosing key.
    pub fn key(&self, path: &str) -> Position {
        self.find(path, &self.keys)
    }

    /// Where a key written twice in one mapping appears the second time.
    pub fn duplicate(&self, path: &str) -> Option<Position> {
        self.duplicates.get(path).copied()
    }

    /// Where the value of `path` is written; falls back to its key, then the nearest parent.
    pub fn value(&self, path: &str) -> Position {
        self.values
            .get(path)
            .copied()
            .unwrap_or_else(|| self.key(path))
    }

    fn find(&self, path: &str, map: &HashMap<String, Position>) -> Position {
        let mut current = path;
        loop {
            if let Some(pos) = map.get(current) {
                return *pos;
            }
            match current.rfind(['.', '[']) {
                Some(cut) => current = &current[..cut],
                None => return (1, 1),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_keys_and_values() {
        let src = "version: 1\nupstreams:\n  stripe:\n    base_url: https://x\n    hosts: [a, b]\n    auth: { type: bearer, token: t }\n";
        let loc = Locator::new(src);
        assert_eq!(loc.key("version"), (1, 1));
        assert_eq!(loc.key("upstreams.stripe"), (3, 3));
        assert_eq!(loc.key("upstreams.stripe.base_url"), (4, 5));
        assert_eq!(loc.value("upstreams.stripe.base_url"), (4, 15));
        assert_eq!(loc.value("upstreams.stripe.hosts[1]"), (5, 16));
        assert_eq!(loc.key("upstreams.stripe.auth.token"), (6, 27));
        // Missing paths fall back to the closest parent.
        assert_eq!(loc.key("upstreams.stripe.retry.max_attempts"), (3, 3));
        assert_eq!(loc.key("nothing"), (1, 1));
    }
}
