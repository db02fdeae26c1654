//! A map of shared objects that live only while someone holds them: one quota tracker per account, one storage
//! handle per home, shared by all sessions that need it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::hash::Hash;
use std::sync::{Arc, Mutex, Weak};

/// Values shared by key and dropped with their last holder. Dead entries are swept when the map has doubled.
pub struct SharedByKey<K, V> {
    inner: Mutex<Entries<K, V>>,
}

struct Entries<K, V> {
    map: HashMap<K, Weak<V>>,
    sweep_at: usize,
}

const FIRST_SWEEP: usize = 64;

impl<K: Eq + Hash, V> Default for SharedByKey<K, V> {
    fn default() -> Self {
        SharedByKey {
            inner: Mutex::new(Entries {
                map: HashMap::new(),
                sweep_at: FIRST_SWEEP,
            }),
        }
    }
}

impl<K: Eq + Hash, V> SharedByKey<K, V> {
    fn entries(&self) -> std::sync::MutexGuard<'_, Entries<K, V>> {
        // Every update is a single map operation: a poisoned lock still holds a consistent map.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The live value for `key`, if anyone holds it.
    pub fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.entries().map.get(key).and_then(Weak::upgrade)
    }

    /// The live value for `key`, or a new one from `make`, shared under `key` from now on.
    pub fn get_or_insert_with<Q>(&self, key: &Q, make: impl FnOnce() -> V) -> Arc<V>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
    {
        let mut entries = self.entries();
        if let Some(existing) = entries.map.get(key).and_then(Weak::upgrade) {
            return existing;
        }
        let value = Arc::new(make());
        entries.insert(key.to_owned(), &value);
        value
    }

    /// Shares `value` under `key`, unless another live value got there first: then that one is returned.
    pub fn insert(&self, key: K, value: Arc<V>) -> Arc<V> {
        let mut entries = self.entries();
        if let Some(existing) = entries.map.get(&key).and_then(Weak::upgrade) {
            return existing;
        }
        entries.insert(key, &value);
        value
    }
}

impl<K: Eq + Hash, V> Entries<K, V> {
    fn insert(&mut self, key: K, value: &Arc<V>) {
        if self.map.len() >= self.sweep_at {
            self.map.retain(|_, v| v.strong_count() > 0);
            self.sweep_at = (self.map.len() * 2).max(FIRST_SWEEP);
        }
        self.map.insert(key, Arc::downgrade(value));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_shared_while_held_and_dropped_after() {
        let reg: SharedByKey<String, u32> = SharedByKey::default();
        let a = reg.insert("a".into(), Arc::new(1));
        assert_eq!(*reg.insert("a".into(), Arc::new(2)), 1);
        assert_eq!(reg.get("a").as_deref(), Some(&1));
        drop(a);
        assert!(reg.get("a").is_none());
        for i in 0..1000 {
            reg.insert(i.to_string(), Arc::new(i));
        }
        assert!(reg.entries().map.len() < 200, "dead entries are swept");
    }
}
