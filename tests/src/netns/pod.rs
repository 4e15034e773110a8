//! Pods: a namespace per pod, plugged into its node's `cbr0` like a simple bridge CNI would.

use std::{net::Ipv4Addr, sync::Arc};

use super::{
    HarnessError, InNetns, Node,
    cluster::{Registry, host},
    cmd::{ip, ip_n},
    names::check_pod_name,
};

/// Pod j gets host 10+j of the node's /24; .255 is broadcast.
const MAX_PODS_PER_NODE: usize = 245;

/// A pod: its own namespace with `eth0` on the node's pod bridge and a default route via the
/// node. Dropping it kills the processes inside and deletes the namespace (and with it the
/// veth pair); if the cluster is dropped first, the cluster has already done that.
pub struct Pod {
    name: String,
    netns: String,
    ip: Ipv4Addr,
    node: usize,
    gateway: Ipv4Addr,
    registry: Arc<Registry>,
}

impl Pod {
    pub(crate) fn create(node: &Node, name: &str, index: usize) -> Result<Self, HarnessError> {
        check_pod_name(name)?;
        if index >= MAX_PODS_PER_NODE {
            return Err(HarnessError::OutOfRange(format!(
                "node {} has handed out all {MAX_PODS_PER_NODE} pod addresses",
                node.name()
            )));
        }
        let registry = Arc::clone(node.registry());
        let netns = registry
            .add_netns(name)
            .map_err(HarnessError::setup(format!("create the netns of pod {name}")))?;
        // Built before configuring, so a failure below drops it and removes the namespace.
        let pod = Self {
            name: name.to_owned(),
            ip: host(node.pod_cidr(), 10 + index),
            node: node.number(),
            gateway: node.gateway(),
            registry,
            netns,
        };
        // Indexed, not named after the pod, so it always fits the 15-character limit.
        let host_side = format!("veth{index}");
        let setup = || HarnessError::setup(format!("set up pod {name} on node {}", node.name()));
        let (ns, node_ns) = (pod.netns.as_str(), node.netns());
        ip([
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", &host_side, "netns", node_ns,
        ])
        .map_err(setup())?;
        let steps = [
            (node_ns, format!("link set {host_side} master cbr0 up")),
            (ns, "link set lo up".to_owned()),
            (ns, format!("addr add {}/24 dev eth0", pod.ip)),
            (ns, "link set eth0 up".to_owned()),
            (ns, format!("route add default via {}", pod.gateway)),
        ];
        for (netns, args) in &steps {
            ip_n(netns, args).map_err(setup())?;
        }
        Ok(pod)
    }

    pub fn name(&self) -> &str {
        &self.name
    }

    /// 10.244.(node).(10+j) for the node's j-th pod, counting from 0.
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// Number of the node this pod runs on (from 1).
    pub fn node(&self) -> usize {
        self.node
    }

    /// The pod's default gateway, the node's `cbr0` address.
    pub fn gateway(&self) -> Ipv4Addr {
        self.gateway
    }
}

impl InNetns for Pod {
    fn netns(&self) -> &str {
        &self.netns
    }
}

impl Drop for Pod {
    fn drop(&mut self) {
        self.registry.remove_netns(&self.netns);
    }
}

impl std::fmt::Debug for Pod {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pod")
            .field("name", &self.name)
            .field("ip", &self.ip)
            .field("netns", &self.netns)
            .finish()
    }
}
