//! A work queue of keys, as client-go's: a key waits at most once however often it is
//! added, is never handed to two workers at once (added while in progress, it runs again
//! after), and failed keys come back after an exponential backoff.
//!
//! It does no IO and keeps no timers: the owner's event loop asks for
//! [`WorkQueue::next_deadline`] and calls [`WorkQueue::promote_due`] when it passes.

use std::{
    collections::{BTreeMap, HashMap, HashSet, VecDeque},
    hash::Hash,
    time::Duration,
};

use tokio::time::Instant;

/// Backoff of a key's `n`th consecutive failure: `base * 2^(n-1)`, at most `max`.
#[derive(Debug, Clone, Copy)]
pub struct Backoff {
    pub base: Duration,
    pub max: Duration,
}

impl Backoff {
    pub fn delay(&self, failures: u32) -> Duration {
        let factor = 2u32.saturating_pow(failures.saturating_sub(1).min(31));
        self.base.saturating_mul(factor).min(self.max)
    }
}

#[derive(Debug)]
pub struct WorkQueue<K> {
    /// Keys ready to be handed out, oldest first.
    ready: VecDeque<K>,
    /// Keys waiting to run (in `ready`, or to be requeued when their run ends).
    dirty: HashSet<K>,
    /// Keys a worker holds.
    processing: HashSet<K>,
    /// Keys to add at a time; `scheduled` indexes it by key.
    delayed: BTreeMap<(Instant, u64), K>,
    scheduled: HashMap<K, (Instant, u64)>,
    sequence: u64,
    failures: HashMap<K, u32>,
    backoff: Backoff,
}

impl<K: Clone + Eq + Hash> WorkQueue<K> {
    pub fn new(backoff: Backoff) -> Self {
        Self {
            ready: VecDeque::new(),
            dirty: HashSet::new(),
            processing: HashSet::new(),
            delayed: BTreeMap::new(),
            scheduled: HashMap::new(),
            sequence: 0,
            failures: HashMap::new(),
            backoff,
        }
    }

    /// Queues the key now (cancelling a pending delayed add).
    pub fn add(&mut self, key: K) {
        if let Some(at) = self.scheduled.remove(&key) {
            self.delayed.remove(&at);
        }
        if !self.dirty.insert(key.clone()) {
            return;
        }
        if !self.processing.contains(&key) {
            self.ready.push_back(key);
        }
    }

    /// Queues the key after `delay`, unless it is already due sooner.
    pub fn add_after(&mut self, key: K, delay: Duration, now: Instant) {
        if delay.is_zero() {
            return self.add(key);
        }
        if self.dirty.contains(&key) {
            return;
        }
        let at = now + delay;
        if let Some(&(existing, seq)) = self.scheduled.get(&key) {
            if existing <= at {
                return;
            }
            self.delayed.remove(&(existing, seq));
        }
        self.sequence += 1;
        self.delayed.insert((at, self.sequence), key.clone());
        self.scheduled.insert(key, (at, self.sequence));
    }

    /// Hands out the next key; the caller must call [`WorkQueue::done`] with it.
    pub fn pop(&mut self) -> Option<K> {
        let key = self.ready.pop_front()?;
        self.dirty.remove(&key);
        self.processing.insert(key.clone());
        Some(key)
    }

    /// Ends a run: requeues the key if it was added meanwhile.
    pub fn done(&mut self, key: &K) {
        self.processing.remove(key);
        if self.dirty.contains(key) {
            self.ready.push_back(key.clone());
        }
    }

    /// Records a failure and schedules the key after its backoff; returns the delay.
    pub fn retry(&mut self, key: K, now: Instant) -> Duration {
        let n = self.failures.entry(key.clone()).or_default();
        *n = n.saturating_add(1);
        let delay = self.backoff.delay(*n);
        self.add_after(key, delay, now);
        delay
    }

    /// Forgets the key's failures after a success.
    pub fn forget(&mut self, key: &K) {
        self.failures.remove(key);
    }

    pub fn failures(&self, key: &K) -> u32 {
        self.failures.get(key).copied().unwrap_or(0)
    }

    /// When the next delayed key falls due.
    pub fn next_deadline(&self) -> Option<Instant> {
        self.delayed.keys().next().map(|(at, _)| *at)
    }

    /// Adds every delayed key that is due.
    pub fn promote_due(&mut self, now: Instant) {
        while let Some(entry) = self.delayed.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let key = entry.remove();
            self.scheduled.remove(&key);
            self.add(key);
        }
    }

    /// Keys ready or running (not the delayed ones).
    pub fn len(&self) -> usize {
        self.ready.len() + self.processing.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// Sleeps until the queue's next deadline; forever when it has none (a `select!` branch
/// that never fires).
pub async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => futures::future::pending().await,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn queue() -> WorkQueue<&'static str> {
        WorkQueue::new(Backoff {
            base: Duration::from_millis(100),
            max: Duration::from_secs(1),
        })
    }

    #[test]
    fn keys_are_deduplicated_and_never_run_twice_at_once() {
        let mut q = queue();
        q.add("a");
        q.add("b");
        q.add("a");
        assert_eq!(q.pop(), Some("a"));
        q.add("a"); // while running
        assert_eq!(q.pop(), Some("b"));
        assert_eq!(q.pop(), None, "a is running; it waits");
        q.done(&"a");
        assert_eq!(q.pop(), Some("a"));
        q.done(&"a");
        q.done(&"b");
        assert_eq!(q.pop(), None);
    }

    #[test]
    fn failures_back_off_exponentially_and_an_add_wins() {
        let mut q = queue();
        let now = Instant::now();
        q.add("a");
        let k = q.pop().expect("a");
        q.done(&k);
        assert_eq!(q.retry("a", now), Duration::from_millis(100));
        assert_eq!(q.pop(), None);
        q.promote_due(now + Duration::from_millis(50));
        assert_eq!(q.pop(), None);
        q.promote_due(now + Duration::from_millis(100));
        let k = q.pop().expect("due");
        q.done(&k);
        assert_eq!(q.retry("a", now), Duration::from_millis(200));
        for _ in 0..10 {
            q.retry("a", now);
        }
        assert_eq!(q.backoff.delay(q.failures(&"a")), Duration::from_secs(1));
        q.add("a");
        assert_eq!(q.next_deadline(), None, "an add cancels the delayed one");
        q.forget(&"a");
        assert_eq!(q.failures(&"a"), 0);
    }
}
