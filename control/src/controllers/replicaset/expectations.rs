//! Upstream's "expectations": the pods a ReplicaSet created or deleted that its pod cache
//! has not shown yet. Until it has, the controller would count too few (or too many) pods
//! and create (or delete) again, so it does no creates or deletes for that ReplicaSet.
//!
//! We remember the names we created and the uids we deleted rather than counts: the cache
//! either holds a name or not, so there is nothing to decrement on events and nothing to
//! get wrong when an event is missed. An expectation older than [`EXPIRY`] is dropped, as
//! upstream's are, so a lost event cannot stall a ReplicaSet forever.

use std::{
    collections::{HashMap, HashSet},
    time::Duration,
};

use tokio::time::Instant;

pub const EXPIRY: Duration = Duration::from_secs(60);

#[derive(Debug)]
struct Pending {
    /// Names of pods we created that the cache does not hold yet.
    creates: HashSet<String>,
    /// Uids of pods we deleted that the cache still holds without a deletionTimestamp.
    deletes: HashSet<String>,
    since: Instant,
}

/// What the cache shows of one pod, for [`Expectations::satisfied`].
pub trait Seen {
    /// The cache holds a pod with this name.
    fn has_name(&self, name: &str) -> bool;
    /// The cache holds a pod with this uid that is not being deleted.
    fn has_live_uid(&self, uid: &str) -> bool;
}

/// Expectations per ReplicaSet key (`namespace/name`).
#[derive(Debug, Default)]
pub struct Expectations {
    pending: HashMap<String, Pending>,
}

impl Expectations {
    fn entry(&mut self, key: &str, now: Instant) -> &mut Pending {
        self.pending.entry(key.to_owned()).or_insert_with(|| Pending {
            creates: HashSet::new(),
            deletes: HashSet::new(),
            since: now,
        })
    }

    pub fn created(&mut self, key: &str, name: String, now: Instant) {
        self.entry(key, now).creates.insert(name);
    }

    pub fn deleted(&mut self, key: &str, uid: String, now: Instant) {
        self.entry(key, now).deletes.insert(uid);
    }

    /// Whether the cache shows everything we did to `key`'s pods; forgets what it shows.
    pub fn satisfied(&mut self, key: &str, seen: &impl Seen, now: Instant) -> bool {
        let Some(p) = self.pending.get_mut(key) else {
            return true;
        };
        p.creates.retain(|name| !seen.has_name(name));
        p.deletes.retain(|uid| seen.has_live_uid(uid));
        let done = p.creates.is_empty() && p.deletes.is_empty();
        if done || now.duration_since(p.since) >= EXPIRY {
            if !done {
                tracing::warn!(
                    replicaset = key,
                    creates = p.creates.len(),
                    deletes = p.deletes.len(),
                    "pod changes never showed in the cache; resyncing anyway"
                );
            }
            self.pending.remove(key);
            return true;
        }
        false
    }

    /// Drops a ReplicaSet's expectations (it is gone).
    pub fn forget(&mut self, key: &str) {
        self.pending.remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Cache {
        names: Vec<&'static str>,
        live_uids: Vec<&'static str>,
    }

    impl Seen for Cache {
        fn has_name(&self, name: &str) -> bool {
            self.names.contains(&name)
        }
        fn has_live_uid(&self, uid: &str) -> bool {
            self.live_uids.contains(&uid)
        }
    }

    #[test]
    fn waits_for_creates_and_deletes_to_show_then_forgets_them() {
        let mut e = Expectations::default();
        let now = Instant::now();
        assert!(e.satisfied(
            "ns/rs",
            &Cache {
                names: vec![],
                live_uids: vec![]
            },
            now
        ));
        e.created("ns/rs", "rs-a".into(), now);
        e.created("ns/rs", "rs-b".into(), now);
        e.deleted("ns/rs", "u1".into(), now);
        assert!(!e.satisfied(
            "ns/rs",
            &Cache {
                names: vec!["rs-a"],
                live_uids: vec!["u1"]
            },
            now
        ));
        assert!(!e.satisfied(
            "ns/rs",
            &Cache {
                names: vec!["rs-b"],
                live_uids: vec!["u1"]
            },
            now
        ));
        assert!(
            e.satisfied(
                "ns/rs",
                &Cache {
                    names: vec![],
                    live_uids: vec![]
                },
                now
            ),
            "a was seen before; b and u1 now"
        );
        assert!(e.pending.is_empty());
    }

    #[test]
    fn expectations_expire() {
        let mut e = Expectations::default();
        let now = Instant::now();
        e.created("ns/rs", "rs-a".into(), now);
        let nothing = Cache {
            names: vec![],
            live_uids: vec![],
        };
        assert!(!e.satisfied("ns/rs", &nothing, now + Duration::from_secs(1)));
        assert!(e.satisfied("ns/rs", &nothing, now + EXPIRY));
    }
}
