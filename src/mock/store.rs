//! A bounded, insertion-ordered map: the only kind of memory the mock keeps.
//!
//! Customers, charges, idempotency results and fault counters all live in one of these, so a
//! long-running mock (or a hostile client) cannot grow it past a fixed number of entries and a
//! fixed number of bytes. When either bound is exceeded the oldest entries are evicted, as a
//! real provider's test-mode data would eventually expire.

use std::borrow::Borrow;
use std::collections::{BTreeMap, HashMap};
use std::hash::Hash;

/// Map with a count and byte budget; iteration is by insertion order (updates keep their slot).
#[derive(Debug)]
pub(crate) struct Bounded<K, V> {
    entries: HashMap<K, Entry<V>>,
    order: BTreeMap<u64, K>,
    next_seq: u64,
    bytes: usize,
    max_len: usize,
    max_bytes: usize,
}

#[derive(Debug)]
struct Entry<V> {
    seq: u64,
    weight: usize,
    value: V,
}

impl<K: Hash + Eq + Clone, V> Bounded<K, V> {
    /// `max_len` entries and `max_bytes` of caller-declared weight at most (the newest entry is
    /// always kept, even when it alone exceeds `max_bytes`).
    pub(crate) fn new(max_len: usize, max_bytes: usize) -> Self {
        Self {
            entries: HashMap::new(),
            order: BTreeMap::new(),
            next_seq: 0,
            bytes: 0,
            max_len: max_len.max(1),
            max_bytes,
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    pub(crate) fn get<Q>(&self, key: &Q) -> Option<&V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get(key).map(|e| &e.value)
    }

    pub(crate) fn get_mut<Q>(&mut self, key: &Q) -> Option<&mut V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        self.entries.get_mut(key).map(|e| &mut e.value)
    }

    /// Insert or replace. A replaced entry keeps its position in the order, so an update does
    /// not make an object look newer in a list.
    pub(crate) fn insert(&mut self, key: K, value: V, weight: usize) {
        let seq = match self.entries.get(&key) {
            Some(old) => {
                self.bytes -= old.weight;
                old.seq
            }
            None => {
                let seq = self.next_seq;
                self.next_seq += 1;
                self.order.insert(seq, key.clone());
                seq
            }
        };
        self.bytes += weight;
        self.entries.insert(key, Entry { seq, weight, value });
        self.evict();
    }

    pub(crate) fn remove<Q>(&mut self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let entry = self.entries.remove(key)?;
        self.order.remove(&entry.seq);
        self.bytes -= entry.weight;
        Some(entry.value)
    }

    /// Entries newest first, optionally starting strictly after (older than) `after`.
    /// Returns `None` when `after` is given but not present.
    pub(crate) fn newest_first<'a, Q>(
        &'a self,
        after: Option<&Q>,
    ) -> Option<impl Iterator<Item = (&'a K, &'a V)> + 'a>
    where
        K: Borrow<Q>,
        Q: Hash + Eq + ?Sized,
    {
        let end = match after {
            Some(key) => self.entries.get(key)?.seq,
            None => u64::MAX,
        };
        Some(self.order.range(..end).rev().filter_map(move |(_, key)| {
            self.entries.get::<K>(key).map(|entry| (key, &entry.value))
        }))
    }

    fn evict(&mut self) {
        while self.entries.len() > self.max_len
            || (self.bytes > self.max_bytes && self.entries.len() > 1)
        {
            let Some((_, key)) = self.order.pop_first() else {
                break;
            };
            if let Some(entry) = self.entries.remove(&key) {
                self.bytes -= entry.weight;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(map: &Bounded<String, u32>) -> Vec<String> {
        map.newest_first::<str>(None)
            .map(|it| it.map(|(k, _)| k.clone()).collect())
            .unwrap_or_default()
    }

    #[test]
    fn evicts_oldest_past_count() {
        let mut map = Bounded::new(2, usize::MAX);
        map.insert("a".to_string(), 1, 1);
        map.insert("b".to_string(), 2, 1);
        map.insert("c".to_string(), 3, 1);
        assert_eq!(keys(&map), ["c", "b"]);
        assert_eq!(map.get("a"), None);
    }

    #[test]
    fn evicts_oldest_past_bytes_but_keeps_newest() {
        let mut map = Bounded::new(100, 10);
        map.insert("a".to_string(), 1, 6);
        map.insert("b".to_string(), 2, 6);
        assert_eq!(keys(&map), ["b"]);
        map.insert("c".to_string(), 3, 50);
        assert_eq!(keys(&map), ["c"]);
    }

    #[test]
    fn update_keeps_position_and_remove_frees() {
        let mut map = Bounded::new(10, 100);
        map.insert("a".to_string(), 1, 10);
        map.insert("b".to_string(), 2, 10);
        map.insert("a".to_string(), 9, 20);
        assert_eq!(keys(&map), ["b", "a"]);
        assert_eq!(map.get("a"), Some(&9));
        assert_eq!(map.remove("b"), Some(2));
        assert_eq!(map.len(), 1);
        assert_eq!(map.bytes, 20);
    }

    #[test]
    fn pages_after_a_key() {
        let mut map = Bounded::new(10, 100);
        for (i, k) in ["a", "b", "c", "d"].into_iter().enumerate() {
            map.insert(k.to_string(), i as u32, 1);
        }
        let after: Vec<_> = map
            .newest_first(Some("c"))
            .map(|it| it.map(|(k, _)| k.clone()).collect())
            .unwrap_or_default();
        assert_eq!(after, ["b", "a"]);
        assert!(map.newest_first(Some("zz")).is_none());
    }
}
