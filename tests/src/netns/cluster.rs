//! The cluster: an underlay bridge joining node namespaces, each node routing for its pods.

use std::{
    net::Ipv4Addr,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicUsize, Ordering},
    },
};

use super::{
    HarnessError, InNetns, Ipv4Cidr, Pod,
    cleanup::{destroy_namespaces, reap_stale_namespaces},
    client::with_netns,
    cmd::{ip, ip_n, preflight},
    names::new_cluster_prefix,
};

/// Bounded so every node's underlay address (10.250.0.(10+k)) and pod CIDR (10.244.k.0/24)
/// stay valid.
const MAX_NODES: usize = 200;

/// A set of nodes on one L2 underlay, each with a pod bridge; see the [module docs](super)
/// for the topology and address plan.
///
/// Dropping it kills every process in its namespaces and deletes them all, including those of
/// pods whose [`Pod`] handles are still alive.
pub struct Cluster {
    registry: Arc<Registry>,
    underlay: String,
    nodes: Vec<Node>,
}

impl Cluster {
    /// Builds a cluster of `nodes` nodes (1 to 200), numbered from 1.
    ///
    /// Fails with a message naming what is missing if not root, if `ip` is missing, or if the
    /// kernel refuses namespaces, veth pairs or bridges. Whatever was built before a failure
    /// is torn down again.
    pub fn new(nodes: usize) -> Result<Self, HarnessError> {
        if !(1..=MAX_NODES).contains(&nodes) {
            return Err(HarnessError::OutOfRange(format!(
                "a cluster has 1 to {MAX_NODES} nodes, not {nodes}"
            )));
        }
        preflight()?;
        reap_stale_namespaces();

        let registry = Arc::new(Registry::new(new_cluster_prefix()));
        // From here on, an early return drops `cluster`, which tears down what exists so far.
        let mut cluster = Self {
            underlay: String::new(),
            nodes: Vec::with_capacity(nodes),
            registry,
        };
        cluster.underlay = cluster.registry.add_netns("net").map_err(HarnessError::setup(
            "create a network namespace (is CONFIG_NET_NS enabled?)",
        ))?;
        let underlay = cluster.underlay.as_str();
        ip_n(underlay, "link set lo up").map_err(HarnessError::setup("bring up lo in the underlay netns"))?;
        ip_n(underlay, "link add br0 type bridge")
            .and_then(|_| ip_n(underlay, "link set br0 up"))
            .map_err(HarnessError::setup(
                "create bridge br0 in the underlay netns (is the bridge module available?)",
            ))?;

        for number in 1..=nodes {
            let node = Node::create(&cluster.registry, &cluster.underlay, number, nodes)?;
            cluster.nodes.push(node);
        }
        Ok(cluster)
    }

    /// `rdr-<pid>-<counter>`, the start of every namespace name in this cluster.
    pub fn prefix(&self) -> &str {
        &self.registry.prefix
    }

    /// The namespace holding the underlay bridge `br0`.
    pub fn underlay_netns(&self) -> &str {
        &self.underlay
    }

    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// Node number `number`, counting from 1 like the names and addresses do.
    ///
    /// # Panics
    /// If there is no such node, which is a bug in the calling test.
    pub fn node(&self, number: usize) -> &Node {
        match self.find_node(number) {
            Some(node) => node,
            None => panic!(
                "cluster {} has nodes 1 to {}, not {number}",
                self.prefix(),
                self.nodes.len()
            ),
        }
    }

    /// Adds pod `name` to node `node` (counting from 1). Pod names are unique per cluster.
    pub fn add_pod(&self, node: usize, name: &str) -> Result<Pod, HarnessError> {
        match self.find_node(node) {
            Some(node) => node.add_pod(name),
            None => Err(HarnessError::OutOfRange(format!(
                "cluster {} has no node {node}",
                self.prefix()
            ))),
        }
    }

    fn find_node(&self, number: usize) -> Option<&Node> {
        number.checked_sub(1).and_then(|index| self.nodes.get(index))
    }

    /// Every namespace currently alive in this cluster (underlay, nodes and pods).
    pub fn namespaces(&self) -> Vec<String> {
        self.registry.lock().namespaces.clone()
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.registry.teardown();
    }
}

/// A node: a namespace on the underlay with a pod bridge, forwarding for its pods.
pub struct Node {
    number: usize,
    name: String,
    netns: String,
    ip: Ipv4Addr,
    pod_cidr: Ipv4Cidr,
    next_pod: AtomicUsize,
    registry: Arc<Registry>,
}

impl Node {
    fn create(registry: &Arc<Registry>, underlay: &str, number: usize, nodes: usize) -> Result<Self, HarnessError> {
        let name = format!("n{number}");
        let netns = registry
            .add_netns(&name)
            .map_err(HarnessError::setup(format!("create the netns of node {name}")))?;
        let node = Self {
            ip: node_ip(number),
            pod_cidr: pod_cidr(number),
            next_pod: AtomicUsize::new(0),
            registry: Arc::clone(registry),
            number,
            name,
            netns,
        };
        let (ns, addr, gateway) = (node.netns.as_str(), node.ip, node.gateway());
        let peer = &node.name;
        ip([
            "link", "add", "eth0", "netns", ns, "type", "veth", "peer", "name", peer, "netns", underlay,
        ])
        .map_err(HarnessError::setup(format!(
            "create veth pair eth0 <-> {peer} for node {peer} (is the veth module available?)"
        )))?;
        ip_n(ns, "link add cbr0 type bridge").map_err(HarnessError::setup(format!(
            "create bridge cbr0 on node {peer} (is the bridge module available?)"
        )))?;
        let steps = [
            (underlay, format!("link set {peer} master br0 up")),
            (ns, "link set lo up".to_owned()),
            (ns, format!("addr add {addr}/24 dev eth0")),
            (ns, "link set eth0 up".to_owned()),
            (ns, format!("addr add {gateway}/24 dev cbr0")),
            (ns, "link set cbr0 up".to_owned()),
        ];
        let setup = || HarnessError::setup(format!("set up node {peer}"));
        for (netns, args) in &steps {
            ip_n(netns, args).map_err(setup())?;
        }
        for other in (1..=nodes).filter(|&other| other != number) {
            ip_n(ns, &format!("route add {} via {}", pod_cidr(other), node_ip(other))).map_err(setup())?;
        }
        with_netns(ns, || std::fs::write("/proc/sys/net/ipv4/ip_forward", "1"))
            .and_then(|written| {
                written.map_err(|error| HarnessError::Io {
                    context: "writing /proc/sys/net/ipv4/ip_forward".into(),
                    error,
                })
            })
            .map_err(setup())?;
        Ok(node)
    }

    /// 1-based, as in the name `n<number>` and the addresses.
    pub fn number(&self) -> usize {
        self.number
    }

    /// `n<number>`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The node's underlay address on `eth0`, 10.250.0.(10+number).
    pub fn ip(&self) -> Ipv4Addr {
        self.ip
    }

    /// 10.244.(number).0/24.
    pub fn pod_cidr(&self) -> Ipv4Cidr {
        self.pod_cidr
    }

    /// The pods' default gateway, on the node's `cbr0`: 10.244.(number).1.
    pub fn gateway(&self) -> Ipv4Addr {
        host(self.pod_cidr, 1)
    }

    /// Adds pod `name` on this node; see [`Cluster::add_pod`].
    pub fn add_pod(&self, name: &str) -> Result<Pod, HarnessError> {
        let index = self.next_pod.fetch_add(1, Ordering::Relaxed);
        Pod::create(self, name, index)
    }

    pub(crate) fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("name", &self.name)
            .field("ip", &self.ip)
            .field("pod_cidr", &self.pod_cidr)
            .field("netns", &self.netns)
            .finish()
    }
}

impl std::fmt::Debug for Cluster {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Cluster")
            .field("prefix", &self.registry.prefix)
            .field("nodes", &self.nodes)
            .finish()
    }
}

impl InNetns for Node {
    fn netns(&self) -> &str {
        &self.netns
    }
}

fn node_ip(number: usize) -> Ipv4Addr {
    host(super::UNDERLAY_CIDR, 10 + number)
}

fn pod_cidr(number: usize) -> Ipv4Cidr {
    // Callers keep number <= MAX_NODES, so it fits an octet.
    Ipv4Cidr::new(Ipv4Addr::new(10, 244, number as u8, 0), 24)
}

/// Host number `n` within `cidr`.
pub(crate) fn host(cidr: Ipv4Cidr, n: usize) -> Ipv4Addr {
    Ipv4Addr::from_bits(cidr.network().to_bits() + n as u32)
}

/// What a cluster has created, shared with its pods so either can tear things down.
pub(crate) struct Registry {
    prefix: String,
    state: Mutex<State>,
}

struct State {
    /// In creation order, so teardown can go in reverse (pods before their nodes).
    namespaces: Vec<String>,
    /// Set once the cluster is torn down; pods created or dropped afterwards do nothing.
    torn_down: bool,
}

impl Registry {
    fn new(prefix: String) -> Self {
        Self {
            prefix,
            state: Mutex::new(State {
                namespaces: Vec::new(),
                torn_down: false,
            }),
        }
    }

    /// A panic elsewhere must not stop teardown, so a poisoned lock is used anyway.
    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Creates netns `<prefix>-<short>` and records it for teardown.
    pub(crate) fn add_netns(&self, short: &str) -> Result<String, HarnessError> {
        // The first `ip netns add` on a machine turns /run/netns into a shared mount;
        // concurrent first calls can race and stack mounts, so never run two at once.
        static NETNS_ADD: Mutex<()> = Mutex::new(());
        let name = format!("{}-{short}", self.prefix);
        let mut state = self.lock();
        if state.torn_down {
            return Err(HarnessError::ClusterGone(name));
        }
        if state.namespaces.contains(&name) {
            return Err(HarnessError::InvalidName {
                what: "namespace",
                name,
                reason: "already exists in this cluster (pod names must be unique and must not \
                         be a node name or \"net\")"
                    .into(),
            });
        }
        {
            let _serialized = NETNS_ADD.lock().unwrap_or_else(PoisonError::into_inner);
            ip(["netns", "add", name.as_str()])?;
        }
        state.namespaces.push(name.clone());
        Ok(name)
    }

    /// Tears down one namespace early (a pod being dropped), unless the cluster already did.
    pub(crate) fn remove_netns(&self, name: &str) {
        let mut state = self.lock();
        if let Some(index) = state.namespaces.iter().position(|ns| ns == name) {
            state.namespaces.remove(index);
            destroy_namespaces(&[name.to_owned()]);
        }
    }

    fn teardown(&self) {
        let mut state = self.lock();
        state.torn_down = true;
        let mut namespaces = std::mem::take(&mut state.namespaces);
        namespaces.reverse();
        destroy_namespaces(&namespaces);
    }
}
