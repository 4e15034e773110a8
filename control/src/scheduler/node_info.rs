//! One node as a scheduling decision sees it: the Node and the Pods on it.

use k8s_openapi::api::core::v1::{Node, Pod};

use super::resources::{self, Counting, Resources};

#[derive(Debug, Clone)]
pub struct NodeInfo<'a> {
    pub node: &'a Node,
    /// Pods bound, or just bound by us and not yet seen so, to this node; terminated Pods
    /// are left out by the caller.
    pub pods: Vec<&'a Pod>,
}

impl<'a> NodeInfo<'a> {
    pub fn new(node: &'a Node, pods: Vec<&'a Pod>) -> Self {
        Self { node, pods }
    }

    pub fn name(&self) -> &str {
        self.node.metadata.name.as_deref().unwrap_or_default()
    }

    pub fn label(&self, key: &str) -> Option<&str> {
        self.node.metadata.labels.as_ref()?.get(key).map(String::as_str)
    }

    /// The sum of the Pods' requests, counted as `counting` says.
    pub fn requested(&self, counting: Counting) -> Resources {
        self.pods
            .iter()
            .map(|p| resources::pod_requests(p, counting))
            .fold(Resources::default(), |a, r| Resources {
                milli_cpu: a.milli_cpu + r.milli_cpu,
                memory: a.memory + r.memory,
            })
    }
}
