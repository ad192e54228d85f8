//! The decision cache: one verification per image digest, repository, policy and credentials,
//! shared by every caller with the same key (`enforce::gate::CacheKey`).
//!
//! Keys carry the policy and trust-root generations, so a policy or trust-root change makes old
//! decisions unreachable at once (and [`DecisionCache::clear`] frees them). Concurrent requests
//! for the same key share one computation (single flight): 100 pods pulling one image at once
//! cause one discovery and one verification. Allowed decisions live for `allow_ttl`, refusals
//! only for `deny_ttl`, so a signature pushed a moment after a refusal is picked up soon. A
//! decision that holds only until a known moment (an attestation's `notOlderThan` condition
//! turning false, see [`DecisionCache::with_deadline`]) lives no longer than that.

use std::collections::{HashMap, VecDeque};
use std::hash::Hash;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::OnceCell;
use tokio::time::Instant;

/// How a lookup was answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lookup {
    /// A fresh decision was in the cache.
    Hit,
    /// This caller computed the decision.
    Miss,
    /// Another caller was computing it; this one waited for that result.
    Joined,
}

struct Slot<V> {
    cell: Arc<OnceCell<Entry<V>>>,
    /// Insertion number, to find the oldest entry when the cache is full.
    seq: u64,
}

/// A decision, when it was stored, and how long it stays fresh from then.
type Entry<V> = (Arc<V>, Instant, Duration);

struct Inner<K, V> {
    map: HashMap<K, Slot<V>>,
    /// Keys in insertion order (with their insertion number; stale pairs are skipped).
    order: VecDeque<(K, u64)>,
    next_seq: u64,
}

/// A bounded, expiring, single-flight map from keys to decisions.
pub struct DecisionCache<K, V> {
    /// Bounds memory: past `capacity` entries the oldest is evicted (expired ones first).
    inner: Mutex<Inner<K, V>>,
    capacity: usize,
    allow_ttl: Duration,
    deny_ttl: Duration,
    /// Tells allowed decisions (long TTL) from refusals (short TTL).
    is_allowed: fn(&V) -> bool,
    /// The wall-clock moment a decision stops holding, if it has one.
    deadline: fn(&V) -> Option<jiff::Timestamp>,
}

impl<K: Hash + Eq + Clone, V> DecisionCache<K, V> {
    pub fn new(capacity: usize, allow_ttl: Duration, deny_ttl: Duration, is_allowed: fn(&V) -> bool) -> Self {
        DecisionCache {
            inner: Mutex::new(Inner { map: HashMap::new(), order: VecDeque::new(), next_seq: 0 }),
            capacity: capacity.max(1),
            allow_ttl,
            deny_ttl,
            is_allowed,
            deadline: |_| None,
        }
    }

    /// Decisions that stop holding at a known moment (`deadline`) expire then at the latest,
    /// even within their TTL.
    pub fn with_deadline(mut self, deadline: fn(&V) -> Option<jiff::Timestamp>) -> Self {
        self.deadline = deadline;
        self
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner<K, V>> {
        self.inner.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// How long `v`, stored now, stays fresh: its TTL, capped at its deadline.
    fn ttl(&self, v: &V) -> Duration {
        let ttl = if (self.is_allowed)(v) { self.allow_ttl } else { self.deny_ttl };
        match (self.deadline)(v) {
            Some(deadline) => {
                let left = jiff::Timestamp::now().duration_until(deadline);
                ttl.min(Duration::try_from(left).unwrap_or(Duration::ZERO))
            }
            None => ttl,
        }
    }

    fn entry(&self, value: Arc<V>) -> Entry<V> {
        let ttl = self.ttl(&value);
        (value, Instant::now(), ttl)
    }

    fn fresh(&self, entry: &Entry<V>, now: Instant) -> bool {
        now.duration_since(entry.1) < entry.2
    }

    /// A fresh cached decision, without computing one.
    pub fn peek(&self, key: &K) -> Option<Arc<V>> {
        let now = Instant::now();
        let inner = self.lock();
        let entry = inner.map.get(key)?.cell.get()?;
        self.fresh(entry, now).then(|| entry.0.clone())
    }

    /// The decision for `key`: cached if fresh, otherwise computed by `compute` (once, however
    /// many callers ask at the same time). If the computing caller is cancelled, a waiting
    /// caller takes over.
    pub async fn get_or_compute<F, Fut>(&self, key: K, compute: F) -> (Arc<V>, Lookup)
    where
        F: FnOnce() -> Fut,
        Fut: std::future::Future<Output = V>,
    {
        let cell = {
            let now = Instant::now();
            let mut inner = self.lock();
            let existing = inner.map.get(&key).map(|slot| slot.cell.clone());
            match existing {
                Some(cell) => match cell.get() {
                    Some(entry) if self.fresh(entry, now) => return (entry.0.clone(), Lookup::Hit),
                    Some(_) => self.insert(&mut inner, key.clone(), now),
                    None => cell,
                },
                None => self.insert(&mut inner, key.clone(), now),
            }
        };
        let mut computed = false;
        let entry = cell
            .get_or_init(|| async {
                computed = true;
                let value = compute().await;
                self.entry(Arc::new(value))
            })
            .await;
        (entry.0.clone(), if computed { Lookup::Miss } else { Lookup::Joined })
    }

    /// Stores a decision made elsewhere under `key` (replacing what was there), fresh from now.
    pub fn put(&self, key: K, value: Arc<V>) {
        let now = Instant::now();
        let mut inner = self.lock();
        let cell = self.insert(&mut inner, key, now);
        let _ = cell.set(self.entry(value));
    }

    /// Puts an empty slot for `key`, evicting to stay within capacity.
    fn insert(&self, inner: &mut Inner<K, V>, key: K, now: Instant) -> Arc<OnceCell<Entry<V>>> {
        if !inner.map.contains_key(&key) && inner.map.len() >= self.capacity {
            // Expired entries go first; then the oldest.
            let expired: Vec<K> =
                inner.map.iter().filter(|(_, s)| s.cell.get().is_some_and(|e| !self.fresh(e, now))).map(|(k, _)| k.clone()).collect();
            for k in expired {
                inner.map.remove(&k);
            }
            while inner.map.len() >= self.capacity {
                let Some((k, seq)) = inner.order.pop_front() else { break };
                if inner.map.get(&k).is_some_and(|s| s.seq == seq) {
                    inner.map.remove(&k);
                }
            }
        }
        let seq = inner.next_seq;
        inner.next_seq += 1;
        let cell = Arc::new(OnceCell::new());
        inner.map.insert(key.clone(), Slot { cell: cell.clone(), seq });
        inner.order.push_back((key, seq));
        // Keep the order queue from growing without bound through replaced keys.
        if inner.order.len() > 2 * self.capacity + 16 {
            let live: VecDeque<(K, u64)> =
                inner.order.drain(..).filter(|(k, seq)| inner.map.get(k).is_some_and(|s| s.seq == *seq)).collect();
            inner.order = live;
        }
        cell
    }

    /// Number of entries (fresh, expired or being computed).
    pub fn len(&self) -> usize {
        self.lock().map.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every entry (after a policy or trust-root change).
    pub fn clear(&self) {
        let mut inner = self.lock();
        inner.map.clear();
        inner.order.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    fn cache(capacity: usize) -> DecisionCache<String, bool> {
        DecisionCache::new(capacity, Duration::from_secs(600), Duration::from_secs(10), |v| *v)
    }

    #[tokio::test(start_paused = true)]
    async fn concurrent_callers_share_one_computation() {
        let c = Arc::new(cache(10));
        let runs = Arc::new(AtomicUsize::new(0));
        let mut tasks = Vec::new();
        for _ in 0..100 {
            let (c, runs) = (c.clone(), runs.clone());
            tasks.push(tokio::spawn(async move {
                c.get_or_compute("sha256:a".to_string(), || async {
                    runs.fetch_add(1, Ordering::SeqCst);
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    true
                })
                .await
            }));
        }
        let mut lookups = Vec::new();
        for t in tasks {
            let (v, l) = t.await.unwrap();
            assert!(*v);
            lookups.push(l);
        }
        assert_eq!(runs.load(Ordering::SeqCst), 1);
        assert_eq!(lookups.iter().filter(|l| **l == Lookup::Miss).count(), 1);
        assert_eq!(c.get_or_compute("sha256:a".into(), || async { unreachable!() }).await.1, Lookup::Hit);
    }

    #[tokio::test(start_paused = true)]
    async fn refusals_expire_sooner_than_approvals() {
        let c = cache(10);
        c.get_or_compute("ok".into(), || async { true }).await;
        c.get_or_compute("no".into(), || async { false }).await;
        tokio::time::advance(Duration::from_secs(11)).await;
        assert!(c.peek(&"ok".into()).is_some());
        assert!(c.peek(&"no".into()).is_none());
        let (v, l) = c.get_or_compute("no".into(), || async { true }).await;
        assert!(*v && l == Lookup::Miss, "a signature pushed after the refusal is picked up");
        tokio::time::advance(Duration::from_secs(600)).await;
        assert!(c.peek(&"ok".into()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn an_approval_expires_when_its_freshness_condition_turns_false() {
        // An image allowed under `notOlderThan`: the decision holds until the attested scan
        // gets too old, here 30 s from now, well within the 600 s allow TTL.
        type V = (bool, Option<jiff::Timestamp>);
        let c: DecisionCache<String, V> =
            DecisionCache::new(10, Duration::from_secs(600), Duration::from_secs(10), |v: &V| v.0).with_deadline(|v: &V| v.1);
        let soon = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(30);
        c.get_or_compute("scanned".into(), || async move { (true, Some(soon)) }).await;
        c.get_or_compute("plain".into(), || async { (true, None) }).await;
        // Past already: never served from the cache.
        let past = jiff::Timestamp::now() - jiff::SignedDuration::from_secs(1);
        c.put("stale".into(), Arc::new((true, Some(past))));
        assert!(c.peek(&"stale".into()).is_none());
        assert!(c.peek(&"scanned".into()).is_some());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(c.peek(&"scanned".into()).is_none(), "a cached allow outlived the freshness the policy demands");
        assert!(c.peek(&"plain".into()).is_some());
        let (_, l) = c.get_or_compute("scanned".into(), || async { (false, None) }).await;
        assert_eq!(l, Lookup::Miss);
        // A deadline later than the TTL leaves the TTL in charge.
        let later = jiff::Timestamp::now() + jiff::SignedDuration::from_secs(3600);
        c.put("fresh".into(), Arc::new((true, Some(later))));
        tokio::time::advance(Duration::from_secs(601)).await;
        assert!(c.peek(&"fresh".into()).is_none());
    }

    #[tokio::test(start_paused = true)]
    async fn size_is_bounded() {
        let c = cache(3);
        for i in 0..10 {
            c.get_or_compute(format!("k{i}"), || async { true }).await;
        }
        assert_eq!(c.len(), 3);
        assert!(c.peek(&"k9".into()).is_some());
        assert!(c.peek(&"k0".into()).is_none());
        c.clear();
        assert!(c.is_empty());
    }

    #[tokio::test(start_paused = true)]
    async fn a_cancelled_computation_is_taken_over() {
        let c = Arc::new(cache(10));
        let c2 = c.clone();
        let first = tokio::spawn(async move {
            c2.get_or_compute("k".into(), || async {
                tokio::time::sleep(Duration::from_secs(100)).await;
                true
            })
            .await
        });
        tokio::time::sleep(Duration::from_millis(10)).await;
        first.abort();
        let (v, l) = c.get_or_compute("k".into(), || async { false }).await;
        assert!(!*v);
        assert_eq!(l, Lookup::Miss);
    }
}
