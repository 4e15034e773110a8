//! The EndpointSlice controller, with the legacy Endpoints controller folded in: for every
//! Service with a selector it keeps EndpointSlices and an Endpoints object listing the
//! Pods the selector matches, as upstream's `endpointslice` and `endpoint` controllers do.
//!
//! Layers, as kube-runtime's: watchers (kube-runtime's, which list, watch, relist on
//! 410 and back off on errors) → [`cache`] (stores, and which Service keys an event
//! affects) → a [`WorkQueue`] of Service keys → a reconcile per key: [`desired`] (pure)
//! then [`apply`] (plan the fewest writes, do them). One event loop owns the cache and the
//! queue; reconciles run concurrently (never two for one key) as futures it polls.
//!
//! Our own writes come back as watch events. Those are not news (the loop recognises them
//! once the reconcile that made them has finished), and a key is not reconciled again
//! until the cache shows them (it waits, up to [`PARK_LIMIT`], then reads live), so the
//! controller never plans from a cache older than its own last write.
//!
//! It is an ordinary API client: everything it reads comes from watches, everything it
//! writes goes through the API, so it runs against any Kubernetes API server.

pub mod apply;
pub mod cache;
pub mod desired;

use std::{collections::HashMap, future::Future, pin::pin, time::Duration};

use futures::{
    FutureExt, StreamExt,
    future::BoxFuture,
    stream::{BoxStream, FuturesUnordered, SelectAll},
};
use jiff::Timestamp;
use k8s_openapi::api::{
    core::v1::{Endpoints, Node, Pod, Service},
    discovery::v1::EndpointSlice,
};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::time::Instant;
use tracing::Instrument;

use self::{
    apply::{ApplyError, Counts, Existing, Written},
    cache::{Affected, Cache, Echo, ServiceKey, Snapshot},
    desired::{CONTROLLER_NAME, MANAGED_BY_LABEL},
};
use super::queue::{Backoff, WorkQueue};

/// How the controller runs.
#[derive(Debug, Clone)]
pub struct Config {
    /// Reconciles in flight at once (upstream's `--concurrent-service-endpoint-syncs`,
    /// default 5).
    pub workers: usize,
    /// Upstream's `--max-endpoints-per-slice`.
    pub max_endpoints_per_slice: usize,
    /// Retry delays of a failing Service: doubling from `base` up to `max`.
    pub backoff: Backoff,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            workers: 5,
            max_endpoints_per_slice: desired::MAX_ENDPOINTS_PER_SLICE,
            backoff: Backoff {
                base: Duration::from_millis(500),
                max: Duration::from_secs(300),
            },
        }
    }
}

/// One watch event, of any watched kind: everything that makes work for the loop.
/// (Boxed: the objects are kilobytes.)
enum Input {
    Service(Box<watcher::Result<watcher::Event<Service>>>),
    Pod(Box<watcher::Result<watcher::Event<Pod>>>),
    Slice(Box<watcher::Result<watcher::Event<EndpointSlice>>>),
    Endpoints(Box<watcher::Result<watcher::Event<Endpoints>>>),
    Node(Box<watcher::Result<watcher::Event<Node>>>),
}

/// The result of one reconcile.
struct Done {
    key: ServiceKey,
    observed_change: Option<Timestamp>,
    written: Vec<Written>,
    result: Result<Counts, ApplyError>,
    elapsed: Duration,
}

/// How long a key whose cache is behind our own writes waits for their watch events
/// before it reads live state instead.
const PARK_LIMIT: Duration = Duration::from_secs(1);

/// Runs the controller until `shutdown` completes. Watch failures are retried by the
/// watchers with backoff; a failing Service is retried with [`Config::backoff`]; nothing
/// here ends the loop but `shutdown`.
pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()>) {
    let mut inputs = watches(&client);
    let mut state = State {
        cache: Cache::default(),
        queue: WorkQueue::new(config.backoff),
        running: FuturesUnordered::new(),
        in_flight: HashMap::new(),
        parked: HashMap::new(),
        client,
        config,
    };
    let mut shutdown = pin!(shutdown.fuse());
    let mut was_synced = false;
    tracing::info!(workers = state.config.workers, "EndpointSlice controller starting");

    loop {
        if state.cache.synced() {
            if !was_synced {
                was_synced = true;
                let (services, pods, slices) = state.cache.sizes();
                tracing::info!(services, pods, slices, "EndpointSlice controller caches synced");
            }
            state.start_work();
        }
        let deadline = state.next_deadline();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(done) = state.running.next(), if !state.running.is_empty() => state.finish(done),
            Some(input) = inputs.next() => {
                let affected = handle(&mut state.cache, input);
                state.absorb(affected);
            }
            () = crate::controllers::queue::sleep_until(deadline), if deadline.is_some() => state.on_timer(),
        }
    }
    tracing::info!("EndpointSlice controller stopped");
}

/// The event loop's state: cache, queue, and the keys being worked on.
struct State {
    cache: Cache,
    queue: WorkQueue<ServiceKey>,
    running: FuturesUnordered<BoxFuture<'static, Done>>,
    /// Keys with a reconcile running, and the slice/Endpoints events about them that
    /// arrived meanwhile: judged (our own write, or news) once it has finished.
    in_flight: HashMap<ServiceKey, Vec<Echo>>,
    /// Keys popped from the queue whose cache has not yet shown our last writes to
    /// them; they start when it has, or read live at the deadline.
    parked: HashMap<ServiceKey, Instant>,
    client: Client,
    config: Config,
}

impl State {
    fn busy(&self) -> usize {
        self.running.len() + self.parked.len()
    }

    fn start_work(&mut self) {
        while self.busy() < self.config.workers.max(1) {
            let Some(key) = self.queue.pop() else { break };
            let now = Instant::now();
            if self.cache.caught_up(&key, now) {
                self.start(key, now);
            } else {
                self.parked.insert(key, now + PARK_LIMIT);
            }
        }
    }

    fn start(&mut self, key: ServiceKey, now: Instant) {
        let snapshot = self.cache.snapshot(&key, now);
        self.in_flight.insert(key, Vec::new());
        self.running
            .push(reconcile(self.client.clone(), snapshot, self.config.max_endpoints_per_slice).boxed());
    }

    fn next_deadline(&self) -> Option<Instant> {
        self.queue
            .next_deadline()
            .into_iter()
            .chain(self.parked.values().copied())
            .min()
    }

    fn on_timer(&mut self) {
        let now = Instant::now();
        self.queue.promote_due(now);
        let due: Vec<ServiceKey> = self
            .parked
            .iter()
            .filter(|(_, at)| **at <= now)
            .map(|(k, _)| k.clone())
            .collect();
        for key in due {
            self.parked.remove(&key);
            self.start(key, now);
        }
    }

    fn absorb(&mut self, affected: Affected) {
        if affected.resync && self.cache.synced() {
            for key in self.cache.all_keys() {
                self.queue.add(key);
            }
        }
        for key in affected.keys {
            self.queue.add(key);
        }
        for echo in affected.echoes {
            if let Some(pending) = self.in_flight.get_mut(&echo.key) {
                pending.push(echo);
                continue;
            }
            if !self.cache.is_own_write(&echo) {
                self.queue.add(echo.key.clone());
            }
            // A parked key may now see all its writes.
            if self.parked.contains_key(&echo.key) {
                let now = Instant::now();
                if self.cache.caught_up(&echo.key, now) {
                    self.parked.remove(&echo.key);
                    self.start(echo.key, now);
                }
            }
        }
    }

    fn finish(&mut self, done: Done) {
        let now = Instant::now();
        self.cache.record_writes(&done.key, &done.written, now);
        self.queue.done(&done.key);
        for echo in self.in_flight.remove(&done.key).unwrap_or_default() {
            if !self.cache.is_own_write(&echo) {
                self.queue.add(echo.key);
            }
        }
        match done.result {
            Ok(counts) => {
                self.queue.forget(&done.key);
                if counts != Counts::default() {
                    tracing::debug!(service = %done.key, created = counts.created, updated = counts.updated,
                        deleted = counts.deleted, elapsed_ms = done.elapsed.as_millis() as u64, "synced endpoints");
                }
            }
            Err(e) => {
                self.cache.restore_observed(&done.key, done.observed_change);
                if e.is_conflict() {
                    // Our cache was behind the server: read live next time.
                    self.cache.force_live(&done.key);
                }
                let delay = self.queue.retry(done.key.clone(), now);
                tracing::warn!(service = %done.key, error = %crate::controllers::display_chain(&e), retry_in_ms = delay.as_millis() as u64,
                    "syncing endpoints failed");
            }
        }
    }
}

fn watches(client: &Client) -> SelectAll<BoxStream<'static, Input>> {
    let cfg = watcher::Config::default;
    let managed = format!("{MANAGED_BY_LABEL}={CONTROLLER_NAME}");
    let mut all = SelectAll::new();
    all.push(
        watcher(Api::<Service>::all(client.clone()), cfg())
            .default_backoff()
            .map(|r| Input::Service(Box::new(r)))
            .boxed(),
    );
    all.push(
        watcher(Api::<Pod>::all(client.clone()), cfg())
            .default_backoff()
            .map(|r| Input::Pod(Box::new(r)))
            .boxed(),
    );
    all.push(
        watcher(Api::<EndpointSlice>::all(client.clone()), cfg().labels(&managed))
            .default_backoff()
            .map(|r| Input::Slice(Box::new(r)))
            .boxed(),
    );
    all.push(
        watcher(Api::<Endpoints>::all(client.clone()), cfg())
            .default_backoff()
            .map(|r| Input::Endpoints(Box::new(r)))
            .boxed(),
    );
    all.push(
        watcher(Api::<Node>::all(client.clone()), cfg())
            .default_backoff()
            .map(|r| Input::Node(Box::new(r)))
            .boxed(),
    );
    all
}

fn handle(cache: &mut Cache, input: Input) -> Affected {
    let now = Timestamp::now();
    fn log(kind: &str, e: &watcher::Error) {
        tracing::warn!(kind, error = %e, "watch failed; retrying with backoff");
    }
    match input {
        Input::Service(r) => match *r {
            Ok(ev) => cache.on_service(ev, now),
            Err(e) => {
                log("Service", &e);
                Affected::default()
            }
        },
        Input::Pod(r) => match *r {
            Ok(ev) => cache.on_pod(ev, now),
            Err(e) => {
                log("Pod", &e);
                Affected::default()
            }
        },
        Input::Slice(r) => match *r {
            Ok(ev) => cache.on_slice(ev),
            Err(e) => {
                log("EndpointSlice", &e);
                Affected::default()
            }
        },
        Input::Endpoints(r) => match *r {
            Ok(ev) => cache.on_endpoints(ev),
            Err(e) => {
                log("Endpoints", &e);
                Affected::default()
            }
        },
        Input::Node(r) => match *r {
            Ok(ev) => cache.on_node(ev),
            Err(e) => {
                log("Node", &e);
                Affected::default()
            }
        },
    }
}

/// Reconciles one Service key: desired state from the snapshot, existing state from the
/// snapshot (or live when the cache is behind), then the writes.
async fn reconcile(client: Client, snapshot: Snapshot, max_per_slice: usize) -> Done {
    let span = tracing::debug_span!("reconciling endpoints", service = %snapshot.key);
    let started = Instant::now();
    let key = snapshot.key.clone();
    let observed_change = snapshot.observed_change;
    let (written, result) = reconcile_inner(&client, snapshot, max_per_slice).instrument(span).await;
    Done {
        key,
        observed_change,
        written,
        result,
        elapsed: started.elapsed(),
    }
}

async fn reconcile_inner(
    client: &Client,
    s: Snapshot,
    max_per_slice: usize,
) -> (Vec<Written>, Result<Counts, ApplyError>) {
    let (slices, endpoints) = match (s.slices, s.endpoints) {
        (Some(slices), Some(endpoints)) => (slices, endpoints),
        _ => {
            tracing::debug!("reading slices and Endpoints live");
            match apply::read_live(client, &s.key.namespace, &s.key.name).await {
                Ok(live) => live,
                Err(e) => return (Vec::new(), Err(e)),
            }
        }
    };
    let desired = s
        .service
        .as_deref()
        .and_then(|svc| desired::desired(svc, &s.pods, &s.zones, s.observed_change));
    let existing = Existing {
        service_exists: s.service.is_some(),
        slices: &slices,
        endpoints: endpoints.as_ref(),
    };
    let plan = apply::plan(desired.as_ref(), existing, max_per_slice);
    if plan.is_empty() {
        return (Vec::new(), Ok(Counts::default()));
    }
    apply::execute(client, &s.key.namespace, plan).await
}
