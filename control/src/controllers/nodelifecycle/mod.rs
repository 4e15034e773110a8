//! The node lifecycle controller, as kube-controller-manager's: every monitor period it
//! looks at each Node and its Lease in `kube-node-lease` (which the node agent renews).
//! A node not heard from for the grace period has its kubelet conditions set `Unknown`
//! ([`health`]); the node gets `node.kubernetes.io/unreachable` (or `not-ready` when it
//! reports Ready=False) as NoSchedule and NoExecute taints, removed once it is Ready
//! again. The pods of a node that is not Ready turn not Ready at once, so the EndpointSlice
//! controller drops them, and are evicted (deleted) when their tolerations of the NoExecute
//! taints run out ([`eviction`]).
//!
//! It works from reflector stores and a timer rather than a work queue: what changes a
//! node's health is time passing, not an event.

pub mod eviction;
pub mod health;

use std::{future::Future, time::Duration};

use futures::{FutureExt, StreamExt};
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::{
    coordination::v1::Lease,
    core::v1::{Node, Pod},
};
use kube::{
    Api, Client, ResourceExt,
    api::{DeleteParams, PostParams},
    runtime::{
        WatchStreamExt,
        reflector::{self, ObjectRef, Store},
        watcher,
    },
};

use crate::node::registration::LEASE_NAMESPACE;
use eviction::Eviction;

/// Upstream's `--node-monitor-grace-period` default.
pub const DEFAULT_GRACE_PERIOD: Duration = Duration::from_secs(40);
/// Upstream's `--node-monitor-period` default.
pub const DEFAULT_MONITOR_PERIOD: Duration = Duration::from_secs(5);

#[derive(Debug, Clone, Copy)]
pub struct Config {
    /// How long a node may stay silent before it is `Unknown`.
    pub grace_period: Duration,
    /// How often nodes are looked at.
    pub monitor_period: Duration,
}

impl Default for Config {
    fn default() -> Self {
        Self {
            grace_period: DEFAULT_GRACE_PERIOD,
            monitor_period: DEFAULT_MONITOR_PERIOD,
        }
    }
}

impl Config {
    /// The monitor period for a grace period: upstream's 5 s, shorter for a grace period
    /// so short that 5 s would be a large part of it.
    pub fn with_grace_period(grace_period: Duration) -> Self {
        Self {
            grace_period,
            monitor_period: DEFAULT_MONITOR_PERIOD
                .min(grace_period / 4)
                .max(Duration::from_millis(500)),
        }
    }
}

struct Stores {
    nodes: Store<Node>,
    leases: Store<Lease>,
    pods: Store<Pod>,
}

fn reflect<K>(api: Api<K>) -> (Store<K>, impl Future<Output = ()> + Send)
where
    K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned + Send + Sync + 'static,
{
    let (store, writer) = reflector::store();
    let stream = reflector::reflector(writer, watcher(api, watcher::Config::default()))
        .default_backoff()
        .for_each(|_| async {});
    (store, stream)
}

/// Runs the controller until `shutdown` completes.
pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()> + Send + 'static) {
    let (nodes, nodes_watch) = reflect(Api::<Node>::all(client.clone()));
    let (leases, leases_watch) = reflect(Api::<Lease>::namespaced(client.clone(), LEASE_NAMESPACE));
    let (pods, pods_watch) = reflect(Api::<Pod>::all(client.clone()));
    let stores = Stores { nodes, leases, pods };
    tracing::info!(grace_period = ?config.grace_period, "node lifecycle controller starting");
    let monitor = async {
        for store in [
            stores.nodes.wait_until_ready().boxed(),
            stores.leases.wait_until_ready().boxed(),
        ] {
            let _ = store.await;
        }
        let _ = stores.pods.wait_until_ready().await;
        let mut tick = tokio::time::interval(config.monitor_period);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            monitor_nodes(&client, &stores, config).await;
        }
    };
    tokio::select! {
        () = shutdown => {}
        () = monitor => {}
        () = nodes_watch => {}
        () = leases_watch => {}
        () = pods_watch => {}
    }
    tracing::info!("node lifecycle controller stopped");
}

async fn monitor_nodes(client: &Client, stores: &Stores, config: Config) {
    let grace = SignedDuration::try_from(config.grace_period).unwrap_or(SignedDuration::from_secs(40));
    for node in stores.nodes.state() {
        let name = node.name_any();
        let lease = stores.leases.get(&ObjectRef::new(&name).within(LEASE_NAMESPACE));
        let now = Timestamp::now();
        let node = match update_node(client, &node, lease.as_deref(), now, grace).await {
            Ok(node) => node,
            Err(e) => {
                tracing::warn!(node = %name, error = %crate::controllers::display_chain(&e), "updating node health; retrying next period");
                continue;
            }
        };
        let conditions = node
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_deref())
            .unwrap_or_default();
        let not_ready = health::ready_status(conditions).is_some_and(|s| s != "True");
        let taints = node.spec.as_ref().and_then(|s| s.taints.clone()).unwrap_or_default();
        let on_node = stores
            .pods
            .state()
            .into_iter()
            .filter(|p| p.spec.as_ref().and_then(|s| s.node_name.as_deref()) == Some(name.as_str()));
        for pod in on_node {
            if not_ready {
                mark_not_ready(client, &pod, now).await;
            }
            if pod.metadata.deletion_timestamp.is_none()
                && let Eviction::At(at) = eviction::eviction(&pod, &taints, now)
                && at <= now
            {
                evict(client, &pod, &name).await;
            }
        }
    }
}

/// Writes what [`health::assess`] asks for; returns the node as it now is.
async fn update_node(
    client: &Client,
    node: &Node,
    lease: Option<&Lease>,
    now: Timestamp,
    grace: SignedDuration,
) -> Result<Node, kube::Error> {
    let update = health::assess(node, lease, now, grace);
    let api: Api<Node> = Api::all(client.clone());
    let name = node.name_any();
    let mut node = node.clone();
    if let Some(conditions) = update.conditions {
        let ready = health::ready_status(&conditions).unwrap_or_default().to_owned();
        node.status.get_or_insert_with(Default::default).conditions = Some(conditions);
        node = api.replace_status(&name, &PostParams::default(), &node).await?;
        tracing::info!(node = %name, ready, "node stopped posting its status");
    }
    if let Some(taints) = update.taints {
        let keys: Vec<String> = taints.iter().map(|t| format!("{}:{}", t.key, t.effect)).collect();
        node.spec.get_or_insert_with(Default::default).taints = Some(taints);
        node = api.replace(&name, &PostParams::default(), &node).await?;
        tracing::info!(node = %name, taints = ?keys, "node taints updated");
    }
    Ok(node)
}

async fn mark_not_ready(client: &Client, pod: &Pod, now: Timestamp) {
    let Some(conditions) = eviction::not_ready_conditions(pod, now) else {
        return;
    };
    let mut pod = pod.clone();
    if let Some(status) = pod.status.as_mut() {
        status.conditions = Some(conditions);
    }
    let api: Api<Pod> = Api::namespaced(client.clone(), &pod.namespace().unwrap_or_default());
    match api.replace_status(&pod.name_any(), &PostParams::default(), &pod).await {
        Ok(_) => {
            tracing::info!(pod = %format!("{}/{}", pod.namespace().unwrap_or_default(), pod.name_any()), "marked not ready: its node is not ready")
        }
        // A newer pod (or none): the next period looks again.
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
        Err(e) => tracing::warn!(pod = %pod.name_any(), error = %e, "marking the pod not ready"),
    }
}

async fn evict(client: &Client, pod: &Pod, node: &str) {
    let (ns, name) = (pod.namespace().unwrap_or_default(), pod.name_any());
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    // Only the pod that was judged: a replacement with the same name stays.
    let params = DeleteParams {
        preconditions: Some(kube::api::Preconditions {
            uid: pod.metadata.uid.clone(),
            resource_version: None,
        }),
        ..Default::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => {
            tracing::info!(pod = %format!("{ns}/{name}"), node, "evicted: its node's NoExecute taint is no longer tolerated")
        }
        Err(kube::Error::Api(e)) if e.code == 409 || e.code == 404 => {}
        Err(e) => tracing::warn!(pod = %format!("{ns}/{name}"), error = %e, "evicting the pod"),
    }
}
