//! The scheduler: binds each pending Pod to a node, as kube-scheduler does.
//!
//! Layers: kube-runtime watchers of Nodes and Pods (all Pods, for accounting) → [`cache`]
//! → a [`WorkQueue`] of pending Pods (unbound, naming our scheduler, not being deleted) →
//! one decision at a time in the event loop ([`decide`]: [`filter`], [`score`],
//! [`message`]; pure) → the writes ([`api`]) as futures the loop polls, so a slow API
//! call never holds up the next decision.
//!
//! A Pod is counted on its node from the moment it is decided ("assumed"), not from when
//! the watch shows the binding, so Pods decided in quick succession do not overcommit a
//! node. A Pod that fits nowhere gets PodScheduled=False and one FailedScheduling Event per
//! distinct message; it is tried again whenever a Node or a bound Pod changes, and at the
//! latest after its backoff (at most [`Config::backoff`]'s `max`).
//!
//! It is an ordinary API client: it needs to list and watch Pods and Nodes, create
//! `pods/binding` and Events, and patch `pods/status`.

pub mod api;
pub mod cache;
pub mod decide;
pub mod filter;
pub mod message;
pub mod node_info;
pub mod quantity;
pub mod resources;
pub mod score;
pub mod volume_binding;

use std::{
    collections::{HashMap, HashSet},
    future::Future,
    pin::pin,
    time::Duration,
};

use futures::{
    FutureExt, StreamExt,
    future::BoxFuture,
    stream::{BoxStream, FuturesUnordered, SelectAll},
};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::{
    Api, Client,
    runtime::{WatchStreamExt, watcher},
};
use tokio::time::Instant;

use self::{
    api::{EventInfo, WriteError},
    cache::{Cache, Changed, PodKey},
    decide::Decision,
};
use crate::controllers::queue::{Backoff, WorkQueue};

pub const DEFAULT_SCHEDULER_NAME: &str = "default-scheduler";

#[derive(Debug, Clone)]
pub struct Config {
    /// Pods whose `spec.schedulerName` is this are ours; the name also signs our Events.
    pub scheduler_name: String,
    /// Retry delays of a Pod that did not fit or whose writes failed: doubling from `base`
    /// up to `max`.
    pub backoff: Backoff,
    /// How long a decided Pod counts on its node without the watch showing it bound.
    pub assume_for: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            scheduler_name: DEFAULT_SCHEDULER_NAME.into(),
            backoff: Backoff {
                base: Duration::from_secs(1),
                max: Duration::from_secs(30),
            },
            assume_for: Duration::from_secs(30),
        }
    }
}

enum Input {
    Node(Box<watcher::Result<watcher::Event<Node>>>),
    Pod(Box<watcher::Result<watcher::Event<Pod>>>),
    /// A claim, volume or class changed.
    Volumes,
}

/// What a finished write tells the loop.
enum Outcome {
    Bound {
        key: PodKey,
        node: String,
        result: Result<(), WriteError>,
    },
    Reported {
        key: PodKey,
        message: String,
        result: Result<(), WriteError>,
    },
}

/// Runs the scheduler until `shutdown` completes. Watch failures are retried by the
/// watchers with backoff, failed writes with [`Config::backoff`]; nothing else ends it.
pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()>) {
    let mut inputs = watches(&client);
    let (volumes, volume_changes) = volume_binding::Volumes::start(&client);
    inputs.push(volume_changes.map(|()| Input::Volumes).boxed());
    let mut state = State {
        cache: Cache::default(),
        queue: WorkQueue::new(config.backoff),
        writes: FuturesUnordered::new(),
        reported: HashMap::new(),
        unschedulable: HashSet::new(),
        turn: 0,
        volumes,
        client,
        config,
    };
    let mut shutdown = pin!(shutdown.fuse());
    let mut was_synced = false;
    tracing::info!(scheduler = %state.config.scheduler_name, "scheduler starting");
    loop {
        if state.cache.synced() {
            if !was_synced {
                was_synced = true;
                let (nodes, pods) = state.cache.sizes();
                tracing::info!(nodes, pods, "scheduler caches synced");
            }
            state.schedule_ready();
        }
        let deadline = state.queue.next_deadline();
        tokio::select! {
            biased;
            () = &mut shutdown => break,
            Some(outcome) = state.writes.next(), if !state.writes.is_empty() => state.finish(outcome),
            Some(input) = inputs.next() => state.absorb(input),
            () = crate::controllers::queue::sleep_until(deadline), if deadline.is_some() => state.queue.promote_due(Instant::now()),
        }
    }
    tracing::info!("scheduler stopped");
}

struct State {
    cache: Cache,
    queue: WorkQueue<PodKey>,
    writes: FuturesUnordered<BoxFuture<'static, Outcome>>,
    /// The last FailedScheduling message recorded per Pod: the same one is not repeated.
    reported: HashMap<PodKey, String>,
    /// Pods that fit nowhere at their last try, to try again when the cluster changes.
    unschedulable: HashSet<PodKey>,
    /// Tie breaker between equal nodes (see [`score::pick`]).
    turn: u64,
    volumes: volume_binding::Volumes,
    client: Client,
    config: Config,
}

impl State {
    fn absorb(&mut self, input: Input) {
        let now = Instant::now();
        let changed = match input {
            Input::Node(r) => match *r {
                Ok(ev) => self.cache.on_node(ev),
                Err(e) => return tracing::warn!(kind = "Node", error = %e, "watch failed; retrying with backoff"),
            },
            Input::Pod(r) => match *r {
                Ok(ev) => self.cache.on_pod(ev, &self.config.scheduler_name, now),
                Err(e) => return tracing::warn!(kind = "Pod", error = %e, "watch failed; retrying with backoff"),
            },
            Input::Volumes => Changed {
                cluster: true,
                ..Default::default()
            },
        };
        self.queue_changes(changed);
    }

    fn queue_changes(&mut self, changed: Changed) {
        for key in changed.gone {
            self.reported.remove(&key);
            self.unschedulable.remove(&key);
        }
        for key in changed.pending {
            self.queue.add(key);
        }
        if changed.cluster {
            for key in &self.unschedulable {
                self.queue.add(key.clone());
            }
        }
    }

    /// Decides every Pod the queue hands out.
    fn schedule_ready(&mut self) {
        while let Some(key) = self.queue.pop() {
            self.schedule(&key);
            self.queue.done(&key);
        }
    }

    fn schedule(&mut self, key: &PodKey) {
        let now = Instant::now();
        let Some(pod) = self
            .cache
            .pod(key)
            .filter(|p| self.cache.is_pending(p, &self.config.scheduler_name, now))
        else {
            self.queue.forget(key);
            return;
        };
        let pod = pod.clone();
        let claims = self.volumes.for_pod(&pod);
        let decision = match &claims {
            Ok(claims) => decide::decide_with(&pod, &self.cache.node_infos(now), &mut self.turn, &|n| {
                claims.reasons(n.node)
            }),
            Err(message) => Decision::Unschedulable(message.clone()),
        };
        match decision {
            Decision::Bind(node) => {
                let select = claims.map(|c| c.to_select(&node)).unwrap_or_default();
                tracing::debug!(pod = %key, node, "binding");
                self.unschedulable.remove(key);
                self.cache
                    .assume(key.clone(), node.clone(), now + self.config.assume_for);
                let (client, key, component) = (self.client.clone(), key.clone(), self.config.scheduler_name.clone());
                self.writes.push(
                    async move {
                        let result = match volume_binding::select_node(&client, &select, &node).await {
                            Ok(()) => api::bind(&client, &key, &node).await,
                            Err(source) => Err(WriteError::Bind { node: node.clone(), source }),
                        };
                        if result.is_ok() {
                            let message = format!("Successfully assigned {key} to {node}");
                            let info = EventInfo { reason: "Scheduled", type_: "Normal", action: "Binding", message: &message };
                            if let Err(e) = api::record(&client, &pod, &component, info).await {
                                tracing::warn!(pod = %key, error = %crate::controllers::display_chain(&e), "recording the Scheduled event failed");
                            }
                        }
                        Outcome::Bound { key, node, result }
                    }
                    .boxed(),
                );
            }
            Decision::Unschedulable(message) => {
                tracing::debug!(pod = %key, message, "unschedulable");
                self.unschedulable.insert(key.clone());
                let delay = self.queue.retry(key.clone(), now);
                let patch_status = !api::already_unschedulable(&pod, &message);
                let new_event = self.reported.get(key) != Some(&message);
                if !patch_status && !new_event {
                    return;
                }
                tracing::info!(pod = %key, message, retry_in_ms = delay.as_millis() as u64, "pod does not fit any node");
                self.reported.insert(key.clone(), message.clone());
                let (client, key, component) = (self.client.clone(), key.clone(), self.config.scheduler_name.clone());
                self.writes.push(
                    async move {
                        let mut result = Ok(());
                        if patch_status {
                            result = api::mark_unschedulable(&client, &key, &message).await;
                        }
                        if result.is_ok() && new_event {
                            let info = EventInfo {
                                reason: "FailedScheduling",
                                type_: "Warning",
                                action: "Scheduling",
                                message: &message,
                            };
                            result = api::record(&client, &pod, &component, info).await;
                        }
                        Outcome::Reported { key, message, result }
                    }
                    .boxed(),
                );
            }
        }
    }

    fn finish(&mut self, outcome: Outcome) {
        let now = Instant::now();
        match outcome {
            Outcome::Bound {
                key,
                node,
                result: Ok(()),
            } => {
                tracing::info!(pod = %key, node, "bound");
                self.queue.forget(&key);
                self.reported.remove(&key);
            }
            Outcome::Bound {
                key,
                node,
                result: Err(e),
            } => {
                self.cache.forget(&key);
                // The node's resources are free again for the others.
                self.queue_changes(Changed {
                    cluster: true,
                    ..Default::default()
                });
                if e.is_final() {
                    tracing::info!(pod = %key, node, error = %crate::controllers::display_chain(&e), "not binding: the pod is gone or already bound");
                    return;
                }
                let delay = self.queue.retry(key.clone(), now);
                tracing::warn!(pod = %key, node, error = %crate::controllers::display_chain(&e), retry_in_ms = delay.as_millis() as u64, "binding failed");
            }
            Outcome::Reported { result: Ok(()), .. } => {}
            Outcome::Reported {
                key,
                message,
                result: Err(e),
            } => {
                if self.reported.get(&key) == Some(&message) {
                    // Not said after all: say it on the next try.
                    self.reported.remove(&key);
                }
                if !e.is_final() {
                    let delay = self.queue.retry(key.clone(), now);
                    tracing::warn!(pod = %key, error = %crate::controllers::display_chain(&e), retry_in_ms = delay.as_millis() as u64,
                        "reporting an unschedulable pod failed");
                }
            }
        }
    }
}

fn watches(client: &Client) -> SelectAll<BoxStream<'static, Input>> {
    let cfg = watcher::Config::default;
    let mut all = SelectAll::new();
    all.push(
        watcher(Api::<Node>::all(client.clone()), cfg())
            .default_backoff()
            .map(|r| Input::Node(Box::new(r)))
            .boxed(),
    );
    all.push(
        watcher(Api::<Pod>::all(client.clone()), cfg())
            .default_backoff()
            .map(|r| Input::Pod(Box::new(r)))
            .boxed(),
    );
    all
}
