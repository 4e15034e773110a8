//! Leader election over a `coordination.k8s.io/v1` Lease, as client-go's `leaderelection`
//! does for kube-scheduler and kube-controller-manager: of several copies of a component,
//! only the one holding the Lease acts; the others stand by and take over once the holder
//! stops renewing.
//!
//! [`lead`] waits to acquire (retrying every retry period, jittered), runs the work while
//! renewing, and drops the work — stopping it at once — when a renewal has not succeeded
//! within the renew deadline. Writes carry the read's resourceVersion, so of two
//! candidates racing for an expired lease only one write wins. The timing rules live in
//! [`record`], without I/O.
//!
//! The holder identity is `<hostname>_<uuid>`, as upstream's, so a restarted process is a
//! new holder (and counts a transition).

pub mod record;

use std::{future::Future, pin::pin, time::Duration};

use k8s_openapi::{
    api::coordination::v1::{Lease, LeaseSpec},
    apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta},
};
use kube::{Api, Client, api::PostParams};
use tokio::time::Instant;

use self::record::{Attempt, Candidate, Record};

/// Upstream's defaults: 15 s, 10 s, 2 s.
#[derive(Debug, Clone)]
pub struct Config {
    pub namespace: String,
    pub name: String,
    pub identity: String,
    /// How long a standby waits, from when it saw the last change, before taking over.
    pub lease_duration: Duration,
    /// How long the leader keeps acting without a successful renewal.
    pub renew_deadline: Duration,
    /// How often to try to acquire or renew.
    pub retry_period: Duration,
}

impl Config {
    /// Defaults for the Lease `kube-system/<name>`, with a fresh identity.
    pub fn new(name: &str) -> Self {
        Self {
            namespace: "kube-system".into(),
            name: name.into(),
            identity: identity(),
            lease_duration: Duration::from_secs(15),
            renew_deadline: Duration::from_secs(10),
            retry_period: Duration::from_secs(2),
        }
    }

    /// The checks upstream makes (a renew deadline not shorter than the lease would let
    /// two leaders act at once).
    pub fn validate(&self) -> Result<(), String> {
        if self.lease_duration <= self.renew_deadline {
            return Err("--leader-elect-lease-duration must be greater than --leader-elect-renew-deadline".into());
        }
        if self.renew_deadline.as_secs_f64() <= 1.2 * self.retry_period.as_secs_f64() {
            return Err("--leader-elect-renew-deadline must be greater than 1.2 × --leader-elect-retry-period".into());
        }
        if self.retry_period.is_zero() {
            return Err("--leader-elect-retry-period must be greater than zero".into());
        }
        if self.name.is_empty() {
            return Err("--leader-elect-resource-name must not be empty".into());
        }
        Ok(())
    }
}

/// `<hostname>_<uuid>`, as kube-scheduler and kube-controller-manager name themselves.
pub fn identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "localhost".into());
    format!("{host}_{}", crate::apiserver::meta::new_uid())
}

/// Why [`lead`] returned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Ended {
    /// `shutdown` completed (the lease, if held, was released).
    Shutdown,
    /// We led and could not renew within the renew deadline; the work was stopped.
    /// Upstream's components exit here.
    LostLease,
    /// The work finished on its own while we led.
    WorkDone,
}

/// Runs `work` only while holding the Lease. Returns when `shutdown` completes, the
/// lease is lost, or the work ends; the work future is dropped (not polled again) the
/// moment leadership is lost.
pub async fn lead<W>(client: Client, config: &Config, shutdown: impl Future<Output = ()>, work: W) -> Ended
where
    W: Future<Output = ()>,
{
    let api: Api<Lease> = Api::namespaced(client, &config.namespace);
    let mut candidate = Candidate::new(config.identity.clone(), config.lease_duration);
    let mut shutdown = pin!(shutdown);
    tracing::info!(lease = %lease_name(config), identity = %config.identity, "attempting to acquire leader lease");
    // Standing by.
    let mut renewed_at = loop {
        let started = Instant::now();
        let attempt = tokio::time::timeout(
            config.renew_deadline,
            try_acquire_or_renew(&api, config, &mut candidate),
        );
        tokio::select! {
            () = &mut shutdown => return Ended::Shutdown,
            outcome = attempt => match outcome {
                Ok(Ok(true)) => break started,
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(lease = %lease_name(config), "error acquiring the lease: {e}"),
                Err(_) => tracing::warn!(lease = %lease_name(config), "acquiring the lease timed out"),
            },
        }
        let wait = record::jittered(config.retry_period, rand::random::<f64>());
        tokio::select! {
            () = &mut shutdown => return Ended::Shutdown,
            () = tokio::time::sleep(wait) => {}
        }
    };
    tracing::info!(lease = %lease_name(config), identity = %config.identity, "successfully acquired lease");
    // Leading.
    // Boxed, so that dropping it below really ends the work before the release.
    let mut work = Box::pin(work);
    let mut next_try = renewed_at + config.retry_period;
    let ended = loop {
        let deadline = renewed_at + config.renew_deadline;
        tokio::select! {
            () = &mut shutdown => break Ended::Shutdown,
            () = &mut work => break Ended::WorkDone,
            () = tokio::time::sleep_until(next_try.min(deadline)) => {}
        }
        let now = Instant::now();
        if record::must_stop(renewed_at, config.renew_deadline, now) {
            tracing::error!(lease = %lease_name(config), "failed to renew the lease within the renew deadline: leaderelection lost");
            return Ended::LostLease;
        }
        let attempt = tokio::time::timeout(deadline - now, try_acquire_or_renew(&api, config, &mut candidate));
        tokio::select! {
            () = &mut shutdown => break Ended::Shutdown,
            () = &mut work => break Ended::WorkDone,
            outcome = attempt => match outcome {
                Ok(Ok(true)) => renewed_at = now,
                Ok(Ok(false)) if !candidate.is_leader() => {
                    // Someone else holds it now (our renewals were too late): stop at once.
                    tracing::error!(lease = %lease_name(config), holder = ?candidate.observed_holder(), "the lease is held by another: leaderelection lost");
                    return Ended::LostLease;
                }
                // A conflicting write that still names us: read again next round.
                Ok(Ok(false)) => {}
                Ok(Err(e)) => tracing::warn!(lease = %lease_name(config), "error renewing the lease: {e}"),
                Err(_) => {}
            },
        }
        next_try = now + config.retry_period;
    };
    drop(work);
    release(&api, config, &candidate).await;
    ended
}

/// For components embedded in a process that keeps serving (`rudder server`): after
/// losing the lease, the work stops and the process stands by again; each term's work is
/// built afresh by `make_work`, so its state is rebuilt from the API.
pub async fn lead_repeatedly<F, W>(
    client: Client,
    config: &Config,
    shutdown: impl Future<Output = ()>,
    mut make_work: F,
) where
    F: FnMut() -> W,
    W: Future<Output = ()>,
{
    let mut shutdown = pin!(shutdown);
    loop {
        match lead(client.clone(), config, &mut shutdown, make_work()).await {
            Ended::LostLease => tracing::warn!(lease = %lease_name(config), "stopped acting; standing by again"),
            Ended::Shutdown | Ended::WorkDone => return,
        }
    }
}

/// A duration in Go's syntax, as upstream's flags take it (`15s`, `1m30s`, `500ms`,
/// `1.5s`); a bare number is seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if let Ok(secs) = s.parse::<f64>() {
        return Duration::try_from_secs_f64(secs).map_err(|_| format!("{s:?}: not a valid duration"));
    }
    let bad = || format!("{s:?}: not a duration (want e.g. 15s, 500ms, 1m30s)");
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err(bad());
    }
    while !rest.is_empty() {
        let digits = rest.find(|c: char| !(c.is_ascii_digit() || c == '.')).ok_or_else(bad)?;
        let value: f64 = rest[..digits].parse().map_err(|_| bad())?;
        rest = &rest[digits..];
        let unit_len = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return Err(bad()),
        };
        rest = &rest[unit_len..];
        total += Duration::try_from_secs_f64(value * scale).map_err(|_| bad())?;
    }
    Ok(total)
}

fn lease_name(config: &Config) -> String {
    format!("{}/{}", config.namespace, config.name)
}

/// One round of client-go's `tryAcquireOrRenew`: read, decide, write with the read's
/// resourceVersion. `Ok(true)`: we hold the lease now.
async fn try_acquire_or_renew(
    api: &Api<Lease>,
    config: &Config,
    candidate: &mut Candidate,
) -> Result<bool, kube::Error> {
    let started = Instant::now();
    let wall = now_micros();
    let Some(mut lease) = api.get_opt(&config.name).await? else {
        let Attempt::Create(rec) = candidate.attempt(None, started, wall) else {
            return Ok(false);
        };
        let lease = Lease {
            metadata: ObjectMeta {
                name: Some(config.name.clone()),
                namespace: Some(config.namespace.clone()),
                ..Default::default()
            },
            spec: Some(to_spec(&rec)),
        };
        return match api.create(&PostParams::default(), &lease).await {
            Ok(_) => {
                candidate.wrote(rec, started);
                Ok(true)
            }
            // A rival created it first: its record is what we read next round.
            Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
            Err(e) => Err(e),
        };
    };
    let current = from_spec(lease.spec.as_ref());
    let Attempt::Update(rec) = candidate.attempt(Some(&current), started, wall) else {
        return Ok(false);
    };
    lease.spec = Some(to_spec(&rec));
    match api.replace(&config.name, &PostParams::default(), &lease).await {
        Ok(_) => {
            candidate.wrote(rec, started);
            Ok(true)
        }
        // A rival wrote since our read (the resourceVersion no longer matches).
        Err(kube::Error::Api(s)) if s.code == 409 => Ok(false),
        Err(e) => Err(e),
    }
}

/// Lease times have microsecond precision; writing exactly what the server keeps makes
/// our record compare equal to what we read back.
fn now_micros() -> jiff::Timestamp {
    let now = jiff::Timestamp::now();
    jiff::Timestamp::from_microsecond(now.as_microsecond()).unwrap_or(now)
}

/// Gives the lease up on a clean shutdown, so a standby need not wait for it to expire.
async fn release(api: &Api<Lease>, config: &Config, candidate: &Candidate) {
    let Some(rec) = candidate.release(now_micros()) else {
        return;
    };
    let write = async {
        let Some(mut lease) = api.get_opt(&config.name).await? else {
            return Ok(());
        };
        if from_spec(lease.spec.as_ref()).holder != config.identity {
            return Ok(());
        }
        lease.spec = Some(to_spec(&rec));
        api.replace(&config.name, &PostParams::default(), &lease)
            .await
            .map(|_| ())
    };
    match tokio::time::timeout(config.renew_deadline, write).await {
        Ok(Ok(())) => tracing::info!(lease = %lease_name(config), "released the lease"),
        Ok(Err::<(), kube::Error>(e)) => tracing::warn!(lease = %lease_name(config), "releasing the lease: {e}"),
        Err(_) => tracing::warn!(lease = %lease_name(config), "releasing the lease timed out"),
    }
}

fn to_spec(r: &Record) -> LeaseSpec {
    LeaseSpec {
        holder_identity: Some(r.holder.clone()),
        lease_duration_seconds: Some(r.lease_duration_seconds),
        acquire_time: r.acquire_time.map(MicroTime),
        renew_time: r.renew_time.map(MicroTime),
        lease_transitions: Some(r.transitions),
        ..Default::default()
    }
}

fn from_spec(spec: Option<&LeaseSpec>) -> Record {
    let Some(s) = spec else { return Record::default() };
    Record {
        holder: s.holder_identity.clone().unwrap_or_default(),
        lease_duration_seconds: s.lease_duration_seconds.unwrap_or(0),
        acquire_time: s.acquire_time.as_ref().map(|t| t.0),
        renew_time: s.renew_time.as_ref().map(|t| t.0),
        transitions: s.lease_transitions.unwrap_or(0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_as_go_writes_them() {
        assert_eq!(parse_duration("15s"), Ok(Duration::from_secs(15)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("1.5s"), Ok(Duration::from_millis(1500)));
        assert_eq!(parse_duration("4"), Ok(Duration::from_secs(4)));
        for bad in ["", "s", "15x", "-1s", "1s2"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should not parse");
        }
    }

    #[test]
    fn upstream_defaults_validate_and_unsafe_ones_do_not() {
        let mut c = Config::new("kube-scheduler");
        assert_eq!(c.validate(), Ok(()));
        assert!(
            c.identity.contains('_'),
            "identity is <hostname>_<uuid>: {}",
            c.identity
        );
        c.renew_deadline = c.lease_duration;
        assert!(c.validate().unwrap_err().contains("lease-duration"));
        c = Config::new("x");
        c.retry_period = Duration::from_secs(9);
        assert!(c.validate().unwrap_err().contains("retry-period"));
    }
}
