//! A map of shared objects that live only while someone holds them: one quota tracker per account, one storage
//! handle per home, shared by all sessions that need it.

use std::borrow::Borrow;
use std::collections::HashMap;
use std::future::Future;
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

/// [`SharedByKey`] for values that take an asynchronous step to make (a read on the blocking pool): simultaneous
/// first requests for a key wait for one `make` rather than each running their own, so that a herd of logins into
/// one account opens its home once, not once per login (and does not grow the blocking pool by a thread each).
pub struct MadeOnce<K, V> {
    values: SharedByKey<K, V>,
    making: SharedByKey<K, tokio::sync::Mutex<()>>,
}

impl<K: Eq + Hash, V> Default for MadeOnce<K, V> {
    fn default() -> Self {
        MadeOnce {
            values: SharedByKey::default(),
            making: SharedByKey::default(),
        }
    }
}

impl<K: Eq + Hash, V> MadeOnce<K, V> {
    /// The live value for `key`, if anyone holds it.
    pub fn get<Q>(&self, key: &Q) -> Option<Arc<V>>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        self.values.get(key)
    }

    /// The live value for `key`, or one made by `make`, shared under `key` from now on. Callers that arrive while
    /// another one makes the value wait for it; if making fails, the next waiter tries again.
    pub async fn get_or_try_make<Q, F, Fut, E>(&self, key: &Q, make: F) -> Result<Arc<V>, E>
    where
        K: Borrow<Q>,
        Q: Eq + Hash + ToOwned<Owned = K> + ?Sized,
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<V, E>>,
    {
        if let Some(value) = self.values.get(key) {
            return Ok(value);
        }
        let turn = self.making.get_or_insert_with(key, Default::default);
        let _turn = turn.lock().await;
        if let Some(value) = self.values.get(key) {
            return Ok(value);
        }
        let value = Arc::new(make().await?);
        Ok(self.values.insert(key.to_owned(), value))
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

    #[tokio::test]
    async fn simultaneous_first_requests_make_the_value_once() {
        use std::sync::atomic::{AtomicUsize, Ordering};
        let reg: Arc<MadeOnce<String, usize>> = Arc::default();
        let made = Arc::new(AtomicUsize::new(0));
        let mut requests = tokio::task::JoinSet::new();
        for _ in 0..20 {
            let (reg, made) = (Arc::clone(&reg), Arc::clone(&made));
            requests.spawn(async move {
                reg.get_or_try_make("home", || async {
                    // Long enough for the other requests to arrive meanwhile.
                    tokio::task::yield_now().await;
                    Ok::<_, ()>(made.fetch_add(1, Ordering::SeqCst))
                })
                .await
                .unwrap()
            });
        }
        let values: Vec<Arc<usize>> = requests.join_all().await;
        assert_eq!(made.load(Ordering::SeqCst), 1);
        assert!(values.iter().all(|v| **v == 0));
        drop(values);
        assert!(reg.get("home").is_none(), "dropped with its last holder");
    }

    #[tokio::test]
    async fn a_failed_make_is_tried_again() {
        let reg: MadeOnce<String, u32> = MadeOnce::default();
        let failed = reg
            .get_or_try_make("k", || async { Err::<u32, _>("busy") })
            .await;
        assert_eq!(failed.unwrap_err(), "busy");
        let value = reg
            .get_or_try_make("k", || async { Ok::<_, &str>(7) })
            .await;
        assert_eq!(*value.unwrap(), 7);
    }
}
