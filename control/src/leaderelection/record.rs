//! The timing rules of leader election, without I/O: what a candidate writes after reading
//! the Lease, and when a leader must give up. Clocks come in as arguments, so the rules are
//! tested with made-up instants.
//!
//! Expiry is judged by the candidate's own monotonic clock, from the moment it first saw
//! the current record (client-go's `observedTime`), never by comparing the `renewTime`
//! another machine wrote with ours: clocks of different machines disagree, but durations
//! measured on one machine do not.

use std::time::Duration;

use jiff::Timestamp;
use tokio::time::Instant;

/// The part of a Lease's spec that election reads and writes.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Record {
    /// Empty when nobody holds the lease (released on a clean shutdown).
    pub holder: String,
    pub lease_duration_seconds: i32,
    pub acquire_time: Option<Timestamp>,
    pub renew_time: Option<Timestamp>,
    pub transitions: i32,
}

/// What to do after reading the Lease.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Attempt {
    /// There is no Lease: create it with this record.
    Create(Record),
    /// Write this record over the one read (with the read's resourceVersion, so a rival's
    /// write in between makes ours fail).
    Update(Record),
    /// Someone else holds the lease and it has not expired by our clock.
    HeldBy(String),
}

/// One candidate's view: who it is and the last record it saw change, with when.
#[derive(Debug, Clone)]
pub struct Candidate {
    pub identity: String,
    pub lease_duration: Duration,
    observed: Option<(Record, Instant)>,
}

impl Candidate {
    pub fn new(identity: String, lease_duration: Duration) -> Self {
        Self {
            identity,
            lease_duration,
            observed: None,
        }
    }

    /// Whether the last record we saw or wrote names us.
    pub fn is_leader(&self) -> bool {
        self.observed.as_ref().is_some_and(|(r, _)| r.holder == self.identity)
    }

    /// The holder of the last record seen (empty: nobody).
    pub fn observed_holder(&self) -> Option<&str> {
        self.observed.as_ref().map(|(r, _)| r.holder.as_str())
    }

    /// Decides from the record just read (`None`: no Lease exists) at local instant `now`
    /// and wall time `wall` (only written into the record, never compared).
    pub fn attempt(&mut self, current: Option<&Record>, now: Instant, wall: Timestamp) -> Attempt {
        let seconds = i32::try_from(self.lease_duration.as_secs()).unwrap_or(i32::MAX);
        let Some(current) = current else {
            return Attempt::Create(Record {
                holder: self.identity.clone(),
                lease_duration_seconds: seconds,
                acquire_time: Some(wall),
                renew_time: Some(wall),
                transitions: 0,
            });
        };
        // A change restarts the expiry clock; the same record seen again does not.
        if self.observed.as_ref().is_none_or(|(seen, _)| seen != current) {
            self.observed = Some((current.clone(), now));
        }
        let observed_at = self.observed.as_ref().map_or(now, |(_, at)| *at);
        // The holder's own duration counts (a released lease says 1 s), as upstream.
        let duration = Duration::from_secs(u64::try_from(current.lease_duration_seconds).unwrap_or(0));
        if !current.holder.is_empty() && current.holder != self.identity && now < observed_at + duration {
            return Attempt::HeldBy(current.holder.clone());
        }
        let renewing = current.holder == self.identity;
        Attempt::Update(Record {
            holder: self.identity.clone(),
            lease_duration_seconds: seconds,
            acquire_time: if renewing { current.acquire_time } else { Some(wall) },
            renew_time: Some(wall),
            transitions: if renewing {
                current.transitions
            } else {
                current.transitions.saturating_add(1)
            },
        })
    }

    /// Our write of `written` succeeded; `now` is when it started (not when it returned,
    /// so the time a rival waits is never shorter than we think).
    pub fn wrote(&mut self, written: Record, now: Instant) {
        self.observed = Some((written, now));
    }

    /// The record for giving the lease up on a clean shutdown: no holder and a 1 s
    /// duration, so a standby takes over at once (client-go's release).
    pub fn release(&self, wall: Timestamp) -> Option<Record> {
        let (seen, _) = self.observed.as_ref().filter(|(r, _)| r.holder == self.identity)?;
        Some(Record {
            holder: String::new(),
            lease_duration_seconds: 1,
            acquire_time: Some(wall),
            renew_time: Some(wall),
            transitions: seen.transitions,
        })
    }
}

/// A leader whose last successful renewal started at `renewed_at` must stop acting at
/// `renewed_at + renew_deadline`: rivals wait at least the lease duration (longer) from
/// when they saw that renewal, so we stop before anyone else may start.
pub fn must_stop(renewed_at: Instant, renew_deadline: Duration, now: Instant) -> bool {
    now >= renewed_at + renew_deadline
}

/// The acquire loop's wait: the retry period stretched by up to 1.2 times itself at
/// random (client-go's JitterFactor), so standbys do not ask in lockstep.
pub fn jittered(retry_period: Duration, random: f64) -> Duration {
    retry_period.mul_f64(1.0 + 1.2 * random.clamp(0.0, 1.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    const LEASE: Duration = Duration::from_secs(15);

    fn wall(s: i64) -> Timestamp {
        Timestamp::from_second(1_700_000_000 + s).expect("timestamp")
    }

    fn held(holder: &str, renewed: i64, transitions: i32) -> Record {
        Record {
            holder: holder.into(),
            lease_duration_seconds: 15,
            acquire_time: Some(wall(0)),
            renew_time: Some(wall(renewed)),
            transitions,
        }
    }

    #[test]
    fn the_first_candidate_creates_the_lease_with_no_transitions() {
        let t0 = Instant::now();
        let mut a = Candidate::new("a".into(), LEASE);
        let Attempt::Create(r) = a.attempt(None, t0, wall(0)) else {
            panic!("want a create")
        };
        assert_eq!(
            (r.holder.as_str(), r.transitions, r.lease_duration_seconds),
            ("a", 0, 15)
        );
        assert_eq!((r.acquire_time, r.renew_time), (Some(wall(0)), Some(wall(0))));
        assert!(!a.is_leader(), "not leader before the write succeeds");
        a.wrote(r, t0);
        assert!(a.is_leader());
    }

    #[test]
    fn a_standby_waits_the_lease_duration_from_when_it_saw_the_last_change() {
        let t0 = Instant::now();
        let mut b = Candidate::new("b".into(), LEASE);
        let rec = held("a", 0, 0);
        assert_eq!(b.attempt(Some(&rec), t0, wall(0)), Attempt::HeldBy("a".into()));
        // The same record seen again later: the clock keeps running from t0.
        assert_eq!(
            b.attempt(Some(&rec), t0 + Duration::from_secs(14), wall(14)),
            Attempt::HeldBy("a".into())
        );
        let Attempt::Update(r) = b.attempt(Some(&rec), t0 + LEASE, wall(15)) else {
            panic!("expired by b's clock: want a takeover")
        };
        assert_eq!((r.holder.as_str(), r.transitions), ("b", 1));
        assert_eq!(r.acquire_time, Some(wall(15)), "a new holder's acquireTime is now");
    }

    #[test]
    fn a_renewal_seen_restarts_the_standbys_clock() {
        let t0 = Instant::now();
        let mut b = Candidate::new("b".into(), LEASE);
        b.attempt(Some(&held("a", 0, 0)), t0, wall(0));
        let renewed = held("a", 10, 0);
        let t10 = t0 + Duration::from_secs(10);
        assert_eq!(b.attempt(Some(&renewed), t10, wall(10)), Attempt::HeldBy("a".into()));
        // 15 s after the first sighting, but only 5 s after the renewal.
        assert_eq!(
            b.attempt(Some(&renewed), t0 + LEASE, wall(15)),
            Attempt::HeldBy("a".into())
        );
        assert!(matches!(
            b.attempt(Some(&renewed), t10 + LEASE, wall(25)),
            Attempt::Update(_)
        ));
    }

    #[test]
    fn the_holders_wall_clock_is_never_compared_with_ours() {
        // The holder's clock is an hour behind: its renewTime looks long expired, yet the
        // record is fresh to us, so we wait.
        let t0 = Instant::now();
        let mut b = Candidate::new("b".into(), LEASE);
        let skewed = held("a", -3600, 0);
        assert_eq!(b.attempt(Some(&skewed), t0, wall(0)), Attempt::HeldBy("a".into()));
    }

    #[test]
    fn the_leader_renews_keeping_acquire_time_and_transitions() {
        let t0 = Instant::now();
        let mut a = Candidate::new("a".into(), LEASE);
        let mut rec = held("a", 0, 3);
        rec.acquire_time = Some(wall(-100));
        let Attempt::Update(r) = a.attempt(Some(&rec), t0, wall(2)) else {
            panic!("want a renewal")
        };
        assert_eq!(
            (r.acquire_time, r.renew_time, r.transitions),
            (Some(wall(-100)), Some(wall(2)), 3)
        );
    }

    #[test]
    fn a_released_lease_is_taken_at_once_and_counts_a_transition() {
        let t0 = Instant::now();
        let mut a = Candidate::new("a".into(), LEASE);
        a.wrote(held("a", 0, 2), t0);
        let released = a.release(wall(5)).expect("a leads, so it can release");
        assert_eq!((released.holder.as_str(), released.lease_duration_seconds), ("", 1));
        assert_eq!(released.transitions, 2);
        let mut b = Candidate::new("b".into(), LEASE);
        let Attempt::Update(r) = b.attempt(Some(&released), t0, wall(5)) else {
            panic!("nobody holds it: want a takeover")
        };
        assert_eq!((r.holder.as_str(), r.transitions), ("b", 3));
        assert!(b.release(wall(6)).is_none(), "b has not written yet");
    }

    #[test]
    fn a_leader_stops_at_the_renew_deadline_before_rivals_may_start() {
        let t0 = Instant::now();
        let deadline = Duration::from_secs(10);
        assert!(!must_stop(t0, deadline, t0 + Duration::from_millis(9_999)));
        assert!(must_stop(t0, deadline, t0 + deadline));
        // A rival that saw our last renewal no earlier than t0 waits until t0 + 15 s.
        let mut b = Candidate::new("b".into(), LEASE);
        b.attempt(Some(&held("a", 0, 0)), t0, wall(0));
        assert_eq!(
            b.attempt(Some(&held("a", 0, 0)), t0 + deadline, wall(10)),
            Attempt::HeldBy("a".into())
        );
    }

    #[test]
    fn jitter_stretches_the_retry_period_up_to_2_2_times() {
        let p = Duration::from_secs(2);
        assert_eq!(jittered(p, 0.0), p);
        assert_eq!(jittered(p, 1.0), Duration::from_millis(4400));
        assert_eq!(jittered(p, 7.0), Duration::from_millis(4400));
    }
}
