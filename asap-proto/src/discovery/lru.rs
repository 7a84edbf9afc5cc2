//! A small bounded map with least-recently-used eviction, keyed by `String`.

use std::collections::{BTreeMap, HashMap};

/// Bounded map: inserting into a full map evicts the entry used least recently.
#[derive(Debug, Clone)]
pub(crate) struct LruMap<V> {
    map: HashMap<String, (u64, V)>,
    order: BTreeMap<u64, String>,
    tick: u64,
    capacity: usize,
}

impl<V> LruMap<V> {
    /// An empty map holding at most `capacity` entries (at least 1).
    pub(crate) fn new(capacity: usize) -> Self {
        Self {
            map: HashMap::new(),
            order: BTreeMap::new(),
            tick: 0,
            capacity: capacity.max(1),
        }
    }

    pub(crate) fn len(&self) -> usize {
        self.map.len()
    }

    fn next_tick(&mut self) -> u64 {
        self.tick = self.tick.wrapping_add(1);
        self.tick
    }

    /// Looks up without changing recency.
    pub(crate) fn peek(&self, key: &str) -> Option<&V> {
        self.map.get(key).map(|(_, v)| v)
    }

    /// Looks up and marks the entry most recently used.
    pub(crate) fn get_mut(&mut self, key: &str) -> Option<&mut V> {
        let tick = self.next_tick();
        let (old, v) = self.map.get_mut(key)?;
        if let Some(k) = self.order.remove(old) {
            self.order.insert(tick, k);
        }
        *old = tick;
        Some(v)
    }

    /// Inserts or replaces `key` (most recently used); returns the entry
    /// evicted to make room, if any.
    pub(crate) fn insert(&mut self, key: String, value: V) -> Option<(String, V)> {
        let tick = self.next_tick();
        if let Some((old, v)) = self.map.get_mut(&key) {
            self.order.remove(old);
            self.order.insert(tick, key);
            *old = tick;
            *v = value;
            return None;
        }
        let evicted = if self.map.len() >= self.capacity {
            self.pop_oldest()
        } else {
            None
        };
        self.order.insert(tick, key.clone());
        self.map.insert(key, (tick, value));
        evicted
    }

    /// Removes `key`.
    pub(crate) fn remove(&mut self, key: &str) -> Option<V> {
        let (tick, v) = self.map.remove(key)?;
        self.order.remove(&tick);
        Some(v)
    }

    /// Removes and returns the least recently used entry.
    pub(crate) fn pop_oldest(&mut self) -> Option<(String, V)> {
        let (_, key) = self.order.pop_first()?;
        let (_, v) = self.map.remove(&key)?;
        Some((key, v))
    }

    /// Keeps only the entries for which `keep` returns true.
    pub(crate) fn retain(&mut self, mut keep: impl FnMut(&str, &mut V) -> bool) {
        let order = &mut self.order;
        self.map.retain(|k, (tick, v)| {
            let ok = keep(k, v);
            if !ok {
                order.remove(tick);
            }
            ok
        });
    }

    pub(crate) fn clear(&mut self) {
        self.map.clear();
        self.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn evicts_least_recently_used() {
        let mut m = LruMap::new(2);
        assert!(m.insert("a".into(), 1).is_none());
        assert!(m.insert("b".into(), 2).is_none());
        assert_eq!(m.get_mut("a"), Some(&mut 1));
        assert_eq!(m.insert("c".into(), 3), Some(("b".into(), 2)));
        assert_eq!(m.len(), 2);
        assert_eq!(m.peek("a"), Some(&1));
        assert!(m.insert("a".into(), 10).is_none());
        assert_eq!(m.remove("a"), Some(10));
        m.retain(|_, v| *v != 3);
        assert_eq!(m.len(), 0);
        assert_eq!(m.pop_oldest(), None);
        m.insert("x".into(), 1);
        m.clear();
        assert_eq!(m.len(), 0);
    }

    #[test]
    fn retained_entries_keep_their_place_in_the_eviction_order() {
        let mut m = LruMap::new(3);
        for (k, v) in [("a", 1), ("b", 2), ("c", 3)] {
            assert!(m.insert(k.into(), v).is_none());
        }
        m.retain(|_, v| *v != 2);
        assert_eq!(m.len(), 2);
        assert_eq!(m.pop_oldest(), Some(("a".into(), 1)));
        assert_eq!(m.pop_oldest(), Some(("c".into(), 3)));
        assert_eq!(m.pop_oldest(), None);
    }
}
