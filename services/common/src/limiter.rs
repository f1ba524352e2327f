//! Rate limits keyed by strings an attacker chooses (usernames, addresses), in fixed memory.
//!
//! Each key gets a GCRA bucket (the generic cell rate algorithm: one "theoretical arrival time"
//! per key, equivalent to a token bucket of `burst` tokens refilled at `rate`). Buckets live in
//! a fixed table of 16-byte slots, split into shards under their own locks; a key hashes
//! (SipHash with a per-process random key, so nobody can aim keys at one slot) to a set of
//! [`WAYS`] slots. A new key takes a slot that has fully refilled (it holds nothing worth
//! remembering) or else the one nearest to it, so the buckets that matter (keys charged many
//! times: an account under attack) are the last to go. Every call looks at [`WAYS`] slots: no
//! scan, no allocation, whatever the number of distinct keys (1 M usernames use the same
//! memory as ten).

use std::{
    hash::{BuildHasher, Hash, RandomState},
    sync::Mutex,
    time::{Duration, Instant},
};

/// Slots looked at per key.
pub const WAYS: usize = 8;
const SHARDS: usize = 64;

#[derive(Clone, Copy, Default)]
struct Slot {
    /// The key's hash; 0 is an empty slot.
    key: u64,
    /// Theoretical arrival time, in µs since the limiter was made: the bucket is full again then.
    tat: u64,
}

/// A fixed-memory family of token buckets: `burst` tokens each, refilled at `rate` per second.
pub struct Limiter {
    shards: Box<[Mutex<Box<[Slot]>>]>,
    sets_per_shard: usize,
    hasher: RandomState,
    epoch: Instant,
    /// µs per token.
    interval: u64,
    /// µs of credit a bucket holds when full (`burst` tokens).
    tolerance: u64,
}

impl std::fmt::Debug for Limiter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Limiter")
            .field("slots", &self.slots())
            .field("interval_us", &self.interval)
            .field("tolerance_us", &self.tolerance)
            .finish_non_exhaustive()
    }
}

impl Limiter {
    /// `burst` events at once, then one per `per` (`burst` per `burst * per` on average);
    /// about `slots` keys remembered (rounded up to whole sets), 16 bytes each.
    pub fn new(burst: u32, per: Duration, slots: usize) -> Self {
        let sets_per_shard = slots.div_ceil(SHARDS * WAYS).max(1);
        let interval = u64::try_from(per.as_micros()).unwrap_or(u64::MAX).max(1);
        Self {
            shards: (0..SHARDS)
                .map(|_| Mutex::new(vec![Slot::default(); sets_per_shard * WAYS].into()))
                .collect(),
            sets_per_shard,
            hasher: RandomState::new(),
            epoch: Instant::now(),
            interval,
            tolerance: interval.saturating_mul(u64::from(burst.max(1))),
        }
    }

    /// `count` events per `window` with bursts of all of them: `count` failures, then one more
    /// each `window / count`.
    pub fn per_window(count: u32, window: Duration, slots: usize) -> Self {
        Self::new(count, window / count.max(1), slots)
    }

    /// Keys the table can hold.
    pub fn slots(&self) -> usize {
        SHARDS * self.sets_per_shard * WAYS
    }

    /// Bytes the table holds (fixed).
    pub fn memory_bytes(&self) -> usize {
        self.slots() * std::mem::size_of::<Slot>()
    }

    fn now(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    fn locate(&self, key: &impl Hash) -> (usize, usize, u64) {
        let hash = self.hasher.hash_one(key).max(1);
        // High bits choose the shard, the rest the set: independent parts of one hash.
        let shard = usize::try_from(hash >> 58).unwrap_or(0) % SHARDS;
        let set = usize::try_from(hash % self.sets_per_shard as u64).unwrap_or(0);
        (shard, set * WAYS, hash)
    }

    fn with_slot<T>(&self, key: &impl Hash, f: impl FnOnce(&mut Slot, u64) -> T) -> T {
        let (shard, start, hash) = self.locate(key);
        let now = self.now();
        let mut set = self.shards[shard]
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let set = &mut set[start..start + WAYS];
        let index = set.iter().position(|s| s.key == hash).unwrap_or_else(|| {
            // A newcomer replaces the bucket that is (or will soonest be) full again.
            let (i, _) = set
                .iter()
                .enumerate()
                .min_by_key(|(_, s)| if s.key == 0 { 0 } else { s.tat.max(now) })
                .expect("a set has slots");
            set[i] = Slot { key: hash, tat: 0 };
            i
        });
        f(&mut set[index], now)
    }

    /// Takes one token for `key`: `Err(wait)` when its bucket is empty for `wait` more.
    pub fn check(&self, key: &impl Hash) -> Result<(), Duration> {
        let (interval, tolerance) = (self.interval, self.tolerance);
        self.with_slot(key, |slot, now| {
            let tat = slot.tat.max(now);
            let next = tat + interval;
            if next > now + tolerance {
                return Err(Duration::from_micros(next - now - tolerance));
            }
            slot.tat = next;
            Ok(())
        })
    }

    /// `Err(wait)` when `key` has no token left, without taking one.
    pub fn peek(&self, key: &impl Hash) -> Result<(), Duration> {
        let (interval, tolerance) = (self.interval, self.tolerance);
        self.with_slot(key, |slot, now| {
            let next = slot.tat.max(now) + interval;
            if next > now + tolerance {
                return Err(Duration::from_micros(next - now - tolerance));
            }
            Ok(())
        })
    }

    /// Gives back one token taken from `key`.
    pub fn refund(&self, key: &impl Hash) {
        let interval = self.interval;
        self.with_slot(key, |slot, _| slot.tat = slot.tat.saturating_sub(interval));
    }

    /// Fills `key`'s bucket again (forgets it).
    pub fn reset(&self, key: &impl Hash) {
        self.with_slot(key, |slot, _| *slot = Slot::default());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_then_the_rate() {
        let l = Limiter::new(3, Duration::from_millis(50), 1024);
        for _ in 0..3 {
            assert!(l.check(&"alice").is_ok());
        }
        let wait = l.check(&"alice").unwrap_err();
        assert!(wait <= Duration::from_millis(50), "{wait:?}");
        assert!(l.check(&"bob").is_ok(), "keys are independent");
        std::thread::sleep(Duration::from_millis(60));
        assert!(
            l.check(&"alice").is_ok(),
            "one token back after one interval"
        );
        assert!(l.check(&"alice").is_err());
    }

    #[test]
    fn refund_and_reset() {
        let l = Limiter::per_window(2, Duration::from_secs(60), 1024);
        assert!(l.check(&"k").is_ok());
        assert!(l.check(&"k").is_ok());
        assert!(l.peek(&"k").is_err());
        l.refund(&"k");
        assert!(l.check(&"k").is_ok());
        assert!(l.check(&"k").is_err());
        l.reset(&"k");
        assert!(l.check(&"k").is_ok());
    }

    #[test]
    fn memory_is_fixed_and_a_charged_key_outlives_a_flood_of_new_ones() {
        let l = Limiter::per_window(5, Duration::from_secs(3600), 65_536);
        let bytes = l.memory_bytes();
        assert_eq!(bytes, l.slots() * 16);
        // The victim's bucket is emptied...
        for _ in 0..5 {
            l.check(&"victim").unwrap();
        }
        assert!(l.check(&"victim").is_err());
        // ...then a million distinct keys go through, one failure each.
        for i in 0..1_000_000u32 {
            let _ = l.check(&i);
        }
        assert_eq!(l.memory_bytes(), bytes, "no growth");
        assert!(
            l.check(&"victim").is_err(),
            "the emptied bucket was kept: newcomers evict each other first"
        );
    }
}
