//! Node IPAM, as kube-controller-manager's range allocator (`--allocate-node-cidrs`): every
//! Node without `spec.podCIDR` gets the next free block of `--cluster-cidr`, of size
//! `--node-cidr-mask-size`.
//!
//! What is taken is never remembered on its own: it is read from the Nodes (the reflector's
//! store) plus the blocks this process has written but not yet seen come back. So a restart
//! rebuilds it from the Node list, and a deleted Node's block is free as soon as the Node
//! is gone from the store. IPv4 only (no dual-stack `podCIDRs`).

use std::{
    collections::{BTreeSet, HashMap},
    net::Ipv4Addr,
    sync::Arc,
    time::Duration,
};

use futures::{Future, StreamExt};
use k8s_openapi::api::core::v1::Node;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        Controller,
        controller::Action,
        events::{Event, EventType, Recorder, Reporter},
        reflector::Store,
        watcher,
    },
};
use serde_json::json;
use tokio::sync::Mutex;

use ipnet::Ipv4Net;

/// The blocks of a cluster CIDR, and which one to hand out next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RangeAllocator {
    cluster: Ipv4Net,
    mask: u8,
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum RangeError {
    #[error("--node-cidr-mask-size {mask} must be at least the cluster CIDR's prefix {prefix} and at most 30")]
    BadMask { mask: u8, prefix: u8 },
}

impl RangeAllocator {
    pub fn new(cluster: Ipv4Net, mask: u8) -> Result<Self, RangeError> {
        let cluster = cluster.trunc();
        if mask < cluster.prefix_len() || mask > 30 {
            return Err(RangeError::BadMask {
                mask,
                prefix: cluster.prefix_len(),
            });
        }
        Ok(Self { cluster, mask })
    }

    pub fn blocks(&self) -> u32 {
        1u32 << (self.mask - self.cluster.prefix_len())
    }

    /// Which block `cidr` is, if it is exactly one of ours (others are not ours to track).
    pub fn index_of(&self, cidr: &str) -> Option<u32> {
        let parsed: Ipv4Net = cidr.parse().ok()?;
        if parsed.prefix_len() != self.mask || !self.cluster.contains(&parsed.network()) {
            return None;
        }
        Some((u32::from(parsed.network()) - u32::from(self.cluster.network())) >> (32 - self.mask))
    }

    pub fn block(&self, index: u32) -> String {
        let base = Ipv4Addr::from(u32::from(self.cluster.network()) + (index << (32 - self.mask)));
        format!("{base}/{}", self.mask)
    }

    /// The lowest block not in `used`, as upstream's bitmap hands them out.
    pub fn next_free<'a>(&self, used: impl IntoIterator<Item = &'a str>) -> Option<String> {
        let taken: BTreeSet<u32> = used.into_iter().filter_map(|c| self.index_of(c)).collect();
        (0..self.blocks()).find(|i| !taken.contains(i)).map(|i| self.block(i))
    }
}

/// How Node IPAM runs.
#[derive(Debug, Clone, Copy)]
pub struct Config {
    pub range: RangeAllocator,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("patching Node {node}: {source}")]
    Patch { node: String, source: kube::Error },
    #[error("no free /{mask} left in the cluster CIDR for Node {node}")]
    Full { node: String, mask: u8 },
}

struct Context {
    client: Client,
    range: RangeAllocator,
    nodes: Store<Node>,
    nodes_ready: super::ready::Ready,
    /// Blocks written to Nodes whose watch events have not come back yet. Allocation
    /// holds this lock from choosing a block to writing it, so two Nodes never get one.
    pending: Mutex<HashMap<String, String>>,
    recorder: Recorder,
}

/// Runs Node IPAM until `shutdown` completes.
pub async fn run(client: Client, config: Config, shutdown: impl Future<Output = ()> + Send + Sync + 'static) {
    let nodes: Api<Node> = Api::all(client.clone());
    let controller = Controller::new(nodes, watcher::Config::default()).graceful_shutdown_on(shutdown);
    let reporter = Reporter {
        controller: "node-ipam-controller".into(),
        instance: None,
    };
    let nodes = controller.store();
    let ctx = Arc::new(Context {
        recorder: Recorder::new(client.clone(), reporter),
        client,
        range: config.range,
        nodes_ready: super::ready::Ready::of(&nodes),
        nodes,
        pending: Mutex::new(HashMap::new()),
    });
    tracing::info!(blocks = config.range.blocks(), "node IPAM controller starting");
    controller
        .run(reconcile, error_policy, ctx)
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::debug!(error = %e, "node IPAM reconcile");
            }
        })
        .await;
    tracing::info!("node IPAM controller stopped");
}

fn error_policy(node: Arc<Node>, e: &Error, _: Arc<Context>) -> Action {
    tracing::warn!(node = %node.name_any(), error = %e, "allocating a pod CIDR failed; retrying");
    Action::requeue(Duration::from_secs(10))
}

async fn reconcile(node: Arc<Node>, ctx: Arc<Context>) -> Result<Action, Error> {
    let name = node.name_any();
    if node
        .spec
        .as_ref()
        .and_then(|s| s.pod_cidr.as_deref())
        .is_some_and(|c| !c.is_empty())
    {
        ctx.pending.lock().await.remove(&name);
        return Ok(Action::await_change());
    }
    // The store must hold every Node before it can say which blocks are free.
    let _ = ctx.nodes_ready.wait().await;
    let mut pending = ctx.pending.lock().await;
    let all = ctx.nodes.state();
    let live: BTreeSet<String> = all.iter().map(|n| n.name_any()).collect();
    // Blocks of Nodes deleted before their write came back are free again.
    pending.retain(|n, _| live.contains(n));
    if let Some(cidr) = pending.get(&name) {
        // Written already; the store is just behind.
        tracing::debug!(node = %name, cidr, "pod CIDR written, waiting for the watch");
        return Ok(Action::requeue(Duration::from_secs(1)));
    }
    let used = all
        .iter()
        .filter_map(|n| n.spec.as_ref()?.pod_cidr.clone())
        .chain(pending.values().cloned())
        .collect::<Vec<_>>();
    let Some(cidr) = ctx.range.next_free(used.iter().map(String::as_str)) else {
        drop(pending);
        report_full(&ctx, &node).await;
        return Err(Error::Full {
            node: name,
            mask: ctx.range.mask,
        });
    };
    let patch = json!({"spec": {"podCIDR": cidr, "podCIDRs": [cidr]}});
    Api::<Node>::all(ctx.client.clone())
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|source| Error::Patch {
            node: name.clone(),
            source,
        })?;
    tracing::info!(node = %name, cidr, "allocated pod CIDR");
    pending.insert(name, cidr);
    Ok(Action::await_change())
}

async fn report_full(ctx: &Context, node: &Node) {
    let event = Event {
        type_: EventType::Normal,
        reason: "CIDRNotAvailable".into(),
        note: Some(format!("Node {} status is now: CIDRNotAvailable", node.name_any())),
        action: "AllocatePodCIDR".into(),
        secondary: None,
    };
    if let Err(e) = ctx.recorder.publish(&event, &node.object_ref(&())).await {
        tracing::warn!(error = %e, "could not record the CIDRNotAvailable event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn range(cidr: &str, mask: u8) -> RangeAllocator {
        RangeAllocator::new(cidr.parse().unwrap(), mask).unwrap()
    }

    #[test]
    fn hands_out_the_lowest_free_block_and_never_one_in_use() {
        let r = range("10.244.0.0/16", 24);
        assert_eq!(r.blocks(), 256);
        assert_eq!(r.next_free([]).as_deref(), Some("10.244.0.0/24"));
        assert_eq!(
            r.next_free(["10.244.0.0/24", "10.244.2.0/24"]).as_deref(),
            Some("10.244.1.0/24")
        );
        // A restart rebuilds from the Nodes: whatever they hold stays theirs.
        assert_eq!(
            r.next_free(["10.244.1.0/24", "10.244.0.0/24"]).as_deref(),
            Some("10.244.2.0/24")
        );
    }

    #[test]
    fn blocks_outside_the_range_or_of_another_size_are_ignored() {
        let r = range("10.244.0.0/16", 24);
        assert_eq!(r.index_of("10.245.0.0/24"), None);
        assert_eq!(r.index_of("10.244.0.0/25"), None);
        assert_eq!(r.index_of("garbage"), None);
        assert_eq!(r.index_of("10.244.255.0/24"), Some(255));
        assert_eq!(r.next_free(["10.245.0.0/24", "junk"]).as_deref(), Some("10.244.0.0/24"));
    }

    #[test]
    fn a_full_range_has_nothing_and_a_freed_block_comes_back() {
        let r = range("10.0.0.0/30", 30);
        assert_eq!(r.next_free(["10.0.0.0/30"]), None);
        let r = range("10.0.0.0/23", 24);
        assert_eq!(r.next_free(["10.0.0.0/24", "10.0.1.0/24"]), None);
        assert_eq!(r.next_free(["10.0.1.0/24"]).as_deref(), Some("10.0.0.0/24"));
    }

    #[test]
    fn a_mask_shorter_than_the_range_is_refused() {
        let cidr: Ipv4Net = "10.244.0.0/16".parse().unwrap();
        assert_eq!(
            RangeAllocator::new(cidr, 8),
            Err(RangeError::BadMask { mask: 8, prefix: 16 })
        );
        assert!(RangeAllocator::new(cidr, 31).is_err());
    }
}
