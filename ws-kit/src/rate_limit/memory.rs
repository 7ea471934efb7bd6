//! [`MemoryStore`]: the buckets of one process, in 64 locked shards.

use super::bucket::{Bucket, Decision, State};
use super::{LimitStore, Take};
use std::collections::HashMap;
use std::fmt;
use std::sync::{Arc, Mutex, MutexGuard};
use tokio::time::Instant;

/// Shards: takes of different keys rarely wait for one another. A power of two.
const SHARDS: usize = 64;

/// A shard is swept once it holds this many buckets at least (and twice what it held after its
/// last sweep).
const MIN_SWEEP: usize = 32;

/// Buckets in this process's memory: each instance of a server has its own.
///
/// A cheap handle (`Clone` shares the buckets): give clones to several [`RateLimit`]s and those
/// with the same name and key share a bucket.
///
/// **Time** is tokio's clock ([`tokio::time::Instant`]), in whole microseconds since the store was
/// made: under a paused clock (tests, the `ws_kit::testing` harness) buckets refill as
/// virtual time advances, without sleeping.
///
/// **Memory.** A bucket that has refilled to full is the same as no bucket, so it is dropped: each
/// shard sweeps such buckets out when it has doubled in size since its last sweep (and holds at
/// least 32). Each sweep is paid for by the insertions before it, so a take costs O(1) amortised,
/// and a shard never holds more than about twice the buckets that are not yet full again (or 32).
/// Keys seen once, say one per connection, therefore cost memory only until their bucket refills.
///
/// [`RateLimit`]: super::RateLimit
#[derive(Clone)]
pub struct MemoryStore {
    inner: Arc<Inner>,
}

struct Inner {
    shards: Box<[Mutex<Shard>]>,
    epoch: Instant,
}

#[derive(Default)]
struct Shard {
    buckets: HashMap<Box<str>, Entry>,
    /// How many buckets the shard held after its last sweep.
    swept_len: usize,
}

#[derive(Clone, Copy)]
struct Entry {
    state: State,
    /// From this time on (store clock, µs) the bucket is full again: the same as no entry.
    full_at_us: u64,
}

impl fmt::Debug for MemoryStore {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("MemoryStore")
            .field("buckets", &self.len())
            .finish_non_exhaustive()
    }
}

impl Default for MemoryStore {
    fn default() -> Self {
        MemoryStore::new()
    }
}

impl MemoryStore {
    /// An empty store.
    pub fn new() -> Self {
        MemoryStore {
            inner: Arc::new(Inner {
                shards: (0..SHARDS).map(|_| Mutex::default()).collect(),
                epoch: Instant::now(),
            }),
        }
    }

    /// Takes `cost` tokens from the bucket under `key` (no namespacing: the key as given), at
    /// once. Its answer is the one [`LimitStore::take`] gives, already ready.
    pub fn take_now(&self, key: &str, cost: u32, bucket: Bucket) -> Decision {
        let now = self.now_us();
        let mut shard = self.shard(key);
        match shard.buckets.get_mut(key) {
            Some(entry) => {
                let (decision, next) = bucket.take(Some(entry.state), now, cost);
                if let Some(state) = next {
                    *entry = Entry::new(state, bucket);
                }
                decision
            }
            None => {
                let (decision, next) = bucket.take(None, now, cost);
                if let Some(state) = next {
                    shard.buckets.insert(key.into(), Entry::new(state, bucket));
                    shard.sweep_if_grown(now);
                }
                decision
            }
        }
    }

    /// How many buckets the store holds (full ones not yet swept out included).
    pub fn len(&self) -> usize {
        self.inner
            .shards
            .iter()
            .map(|s| lock(s).buckets.len())
            .sum()
    }

    /// Whether the store holds no bucket.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Drops every bucket that has refilled to full now, in every shard (the store also does
    /// this on its own, as it grows).
    pub fn sweep(&self) {
        let now = self.now_us();
        for shard in self.inner.shards.iter() {
            lock(shard).sweep(now);
        }
    }

    /// Microseconds on tokio's clock since the store was made.
    fn now_us(&self) -> u64 {
        Instant::now()
            .saturating_duration_since(self.inner.epoch)
            .as_micros() as u64
    }

    fn shard(&self, key: &str) -> MutexGuard<'_, Shard> {
        lock(&self.inner.shards[shard_of(key)])
    }
}

impl LimitStore for MemoryStore {
    fn take(&self, key: &str, cost: u32, bucket: Bucket) -> Take {
        Take::Ready(self.take_now(key, cost, bucket))
    }
}

impl Entry {
    fn new(state: State, bucket: Bucket) -> Self {
        Entry {
            state,
            full_at_us: state
                .at_us
                .saturating_add(bucket.full_after_us(state.tokens)),
        }
    }
}

impl Shard {
    fn sweep_if_grown(&mut self, now: u64) {
        if self.buckets.len() >= (2 * self.swept_len).max(MIN_SWEEP) {
            self.sweep(now);
        }
    }

    fn sweep(&mut self, now: u64) {
        self.buckets.retain(|_, entry| entry.full_at_us > now);
        self.swept_len = self.buckets.len();
        // A burst of keys leaves a large table behind: give most of it back.
        if self.buckets.capacity() > 4 * self.swept_len.max(MIN_SWEEP) {
            self.buckets.shrink_to(2 * self.swept_len);
        }
    }
}

/// The shard of a key: a multiply-rotate hash over 8-byte words (FxHash's), its top 6 bits. A
/// fraction of the cost of the maps' own (keyed) hash, which is what guards them against chosen
/// collisions; keys chosen to land in one shard only make takes of that shard wait for one
/// another.
fn shard_of(key: &str) -> usize {
    const K: u64 = 0x517c_c1b7_2722_0a95;
    let step = |h: u64, word: u64| (h.rotate_left(5) ^ word).wrapping_mul(K);
    let mut words = key.as_bytes().chunks_exact(8);
    let mut h = 0u64;
    for word in &mut words {
        h = step(h, u64::from_le_bytes(word.try_into().expect("8 bytes")));
    }
    for &byte in words.remainder() {
        h = step(h, u64::from(byte));
    }
    (h >> (64 - SHARDS.trailing_zeros())) as usize
}

/// A shard's lock; a panic elsewhere while it was held leaves plain numbers behind, still usable.
fn lock(shard: &Mutex<Shard>) -> MutexGuard<'_, Shard> {
    shard.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test(start_paused = true)]
    async fn refills_on_the_paused_clock() {
        let store = MemoryStore::new();
        let bucket = Bucket::new(2, 1.0);
        assert_eq!(
            store.take_now("k", 1, bucket),
            Decision::Allowed { remaining: 1 }
        );
        assert_eq!(
            store.take_now("k", 1, bucket),
            Decision::Allowed { remaining: 0 }
        );
        assert_eq!(
            store.take_now("k", 1, bucket),
            Decision::Limited {
                remaining: 0,
                retry_after_ms: 1000
            }
        );
        tokio::time::advance(Duration::from_millis(400)).await;
        assert_eq!(
            store.take_now("k", 1, bucket),
            Decision::Limited {
                remaining: 0,
                retry_after_ms: 600
            }
        );
        // Other keys have buckets of their own.
        assert!(store.take_now("other", 2, bucket).is_allowed());
        tokio::time::advance(Duration::from_millis(600)).await;
        assert_eq!(
            store.take_now("k", 1, bucket),
            Decision::Allowed { remaining: 0 }
        );
    }

    /// One-shot keys (a new one per take, as with a bucket per connection) do not grow memory
    /// without bound: buckets that have refilled are swept out as the shards grow.
    #[tokio::test(start_paused = true)]
    async fn sweeping_bounds_memory_under_one_shot_keys() {
        let store = MemoryStore::new();
        // Full again 10 ms after a take.
        let bucket = Bucket::new(10, 100.0);
        let mut peak = 0;
        for i in 0..100_000u32 {
            assert!(store.take_now(&format!("key-{i}"), 1, bucket).is_allowed());
            if i % 100 == 99 {
                // 100 keys a millisecond: about 1000 buckets are not full at any time.
                tokio::time::advance(Duration::from_millis(1)).await;
            }
            if i % 1000 == 0 {
                peak = peak.max(store.len());
            }
        }
        peak = peak.max(store.len());
        // Live: ~1000 (64 shards × ~16). Bound per shard: max(2 × live, 32) plus the doubling.
        assert!(
            peak <= SHARDS * 2 * MIN_SWEEP + 3 * 1000,
            "the store grew to {peak} buckets for ~1000 live ones"
        );
        tokio::time::advance(Duration::from_secs(1)).await;
        store.sweep();
        assert!(store.is_empty(), "{} buckets left", store.len());
    }

    /// Buckets that still hold a debt are kept by a sweep: dropping them would hand out tokens.
    #[tokio::test(start_paused = true)]
    async fn sweeping_keeps_buckets_that_are_not_full() {
        let store = MemoryStore::new();
        let bucket = Bucket::new(1, 1.0);
        for i in 0..10_000u32 {
            assert!(store.take_now(&format!("k{i}"), 1, bucket).is_allowed());
        }
        store.sweep();
        assert_eq!(store.len(), 10_000);
        for i in 0..10_000u32 {
            assert!(!store.take_now(&format!("k{i}"), 1, bucket).is_allowed());
        }
        tokio::time::advance(Duration::from_secs(1)).await;
        store.sweep();
        assert_eq!(store.len(), 0);
    }

    #[test]
    fn keys_spread_over_the_shards() {
        let mut counts = [0usize; SHARDS];
        for i in 0..64_000 {
            counts[shard_of(&format!("5:limit:c:{i:032x}"))] += 1;
        }
        let (min, max) = (counts.iter().min().unwrap(), counts.iter().max().unwrap());
        assert!(*min > 700 && *max < 1300, "shard sizes from {min} to {max}");
    }

    /// Many threads on one key never admit more than the capacity plus what refilled meanwhile.
    #[test]
    fn concurrent_takes_never_over_admit() {
        let store = MemoryStore::new();
        // 100 tokens, 1000 more a second.
        let bucket = Bucket::new(100, 1000.0);
        let started = std::time::Instant::now();
        let admitted: u64 = std::thread::scope(|scope| {
            let threads: Vec<_> = (0..8)
                .map(|_| {
                    let store = &store;
                    scope.spawn(move || {
                        (0..20_000)
                            .filter(|_| store.take_now("hot", 1, bucket).is_allowed())
                            .count() as u64
                    })
                })
                .collect();
            threads.into_iter().map(|t| t.join().unwrap()).sum()
        });
        let elapsed = started.elapsed().as_secs_f64();
        let bound = 100.0 + 1000.0 * elapsed;
        assert!(
            (admitted as f64) <= bound.floor() + 1.0,
            "admitted {admitted} in {elapsed:.3}s; at most {bound:.1} may pass"
        );
        assert!(admitted >= 100, "admitted only {admitted}");
    }
}
