//! What a Service's EndpointSlices and legacy Endpoints should contain. Pure: from a Service,
//! the Pods in its namespace and the Nodes' zones, no IO.
//!
//! The rules are upstream's (pkg/controller/endpointslice and pkg/controller/endpoint):
//!
//! - Only Services with a non-empty `spec.selector` that are not `ExternalName` get
//!   endpoints from this controller ([`wants_endpoints`]). Headless Services do.
//! - A Pod is an endpoint when it matches the selector, has an IP of the slice's address
//!   family, and is not terminal (phase Succeeded or Failed). Terminating Pods stay in
//!   the slices (with `terminating: true`) but leave the legacy Endpoints unless the
//!   Service publishes not-ready addresses.
//! - Conditions: `serving` = the Pod's Ready condition is True; `terminating` = it has a
//!   `deletionTimestamp`; `ready` = serving and not terminating, or always when
//!   `publishNotReadyAddresses` is set.
//! - Ports: each Service port with its `targetPort` resolved per Pod: numbers as they
//!   are, names through the Pod's container ports with the same protocol (sidecar init
//!   containers included). A Pod that lacks a name is left out of that port. Endpoints are
//!   grouped by the resulting port list and each group goes in its own slices.
//! - One set of slices per address family in the Service's `ipFamilies`.
//!
//! Deliberate differences from upstream, both simplifications:
//!
//! - Pods bound to a Node that does not exist are kept (upstream drops them unless
//!   `publishNotReadyAddresses`); they only lack a zone.
//! - Topology: `trafficDistribution: PreferClose` (or `PreferSameZone`) and the
//!   `service.kubernetes.io/topology-mode: Auto` annotation all give each endpoint with a
//!   zone the hint `forZones: [its zone]`; upstream's `Auto` mode instead allocates zones
//!   in proportion to their CPUs. `PreferSameNode` adds `forNodes: [its node]`.
//!
//! The trigger time (`endpoints.kubernetes.io/last-change-trigger-time`) is the latest of
//! the Service's creation, the included Pods' creation, Ready transition and deletion
//! times, and any change the caller observed that left no trace on a remaining object (a
//! Pod deleted or relabelled away), passed as `observed_change`.

use std::{
    collections::{BTreeMap, HashMap},
    net::IpAddr,
    sync::Arc,
};

use jiff::Timestamp;
use k8s_openapi::{
    api::{
        core::v1::{
            EndpointAddress, EndpointPort as CorePort, EndpointSubset, Endpoints, ObjectReference, Pod, Service,
            ServicePort,
        },
        discovery::v1::{Endpoint, EndpointConditions, EndpointHints, EndpointPort, EndpointSlice, ForNode, ForZone},
    },
    apimachinery::pkg::{
        apis::meta::v1::{ObjectMeta, OwnerReference},
        util::intstr::IntOrString,
    },
};

/// Label naming the Service a slice belongs to.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label naming the controller that manages a slice.
pub const MANAGED_BY_LABEL: &str = "endpointslice.kubernetes.io/managed-by";
/// This controller's value of [`MANAGED_BY_LABEL`], upstream's, so tools recognise it.
pub const CONTROLLER_NAME: &str = "endpointslice-controller.k8s.io";
/// Set (empty) on the slices and Endpoints of headless Services.
pub const HEADLESS_LABEL: &str = "service.kubernetes.io/headless";
/// Tells the EndpointSlice mirroring controller to leave an Endpoints object alone.
pub const SKIP_MIRROR_LABEL: &str = "endpointslice.kubernetes.io/skip-mirror";
/// When the change that this write reflects happened; feeds kube-proxy's
/// network-programming-latency metric.
pub const TRIGGER_TIME_ANNOTATION: &str = "endpoints.kubernetes.io/last-change-trigger-time";
/// Set on legacy Endpoints that were cut to [`MAX_ENDPOINTS_ADDRESSES`].
pub const OVER_CAPACITY_ANNOTATION: &str = "endpoints.kubernetes.io/over-capacity";
pub const ZONE_LABEL: &str = "topology.kubernetes.io/zone";
pub const TOPOLOGY_MODE_ANNOTATION: &str = "service.kubernetes.io/topology-mode";
/// The annotation `topology-mode` replaced; still honoured upstream.
pub const TOPOLOGY_HINTS_ANNOTATION: &str = "service.kubernetes.io/topology-aware-hints";
/// Upstream's default `--max-endpoints-per-slice`.
pub const MAX_ENDPOINTS_PER_SLICE: usize = 100;
/// Upstream caps legacy Endpoints at this many addresses.
pub const MAX_ENDPOINTS_ADDRESSES: usize = 1000;

/// An EndpointSlice address family this controller fills.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AddressType {
    IPv4,
    IPv6,
}

impl AddressType {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IPv4 => "IPv4",
            Self::IPv6 => "IPv6",
        }
    }

    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "IPv4" => Some(Self::IPv4),
            "IPv6" => Some(Self::IPv6),
            _ => None,
        }
    }

    fn of(ip: &IpAddr) -> Self {
        if ip.is_ipv4() { Self::IPv4 } else { Self::IPv6 }
    }
}

/// A container port a named `targetPort` can resolve to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedPort {
    pub name: String,
    pub port: i32,
    pub protocol: String,
}

/// What the controller needs of a Pod; the cache keeps only this, not whole Pods.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodInfo {
    pub namespace: String,
    pub name: String,
    pub uid: String,
    pub labels: BTreeMap<String, String>,
    /// `status.podIPs` (or `status.podIP`), the unparseable ones dropped.
    pub ips: Vec<IpAddr>,
    pub node_name: Option<String>,
    pub hostname: Option<String>,
    pub subdomain: Option<String>,
    /// Phase Succeeded or Failed: never an endpoint again.
    pub terminal: bool,
    /// The Ready condition is True.
    pub ready: bool,
    pub ready_changed: Option<Timestamp>,
    pub created: Option<Timestamp>,
    pub deleting: Option<Timestamp>,
    /// Named container ports (containers and sidecar init containers).
    pub named_ports: Vec<NamedPort>,
}

impl PodInfo {
    /// `None` for a Pod without a name, which the API never serves.
    pub fn from_pod(pod: &Pod) -> Option<Self> {
        let meta = &pod.metadata;
        let name = meta.name.clone().filter(|n| !n.is_empty())?;
        let status = pod.status.as_ref();
        let spec = pod.spec.as_ref();
        let mut ip_strings: Vec<&str> = status
            .and_then(|s| s.pod_ips.as_ref())
            .into_iter()
            .flatten()
            .map(|p| p.ip.as_str())
            .collect();
        if ip_strings.is_empty() {
            ip_strings.extend(status.and_then(|s| s.pod_ip.as_deref()));
        }
        let ips = ip_strings.into_iter().filter_map(|s| s.parse().ok()).collect();
        let ready_condition = status
            .and_then(|s| s.conditions.as_ref())
            .and_then(|cs| cs.iter().find(|c| c.type_ == "Ready"));
        let phase = status.and_then(|s| s.phase.as_deref()).unwrap_or_default();
        let mut named_ports = Vec::new();
        if let Some(spec) = spec {
            let sidecars = spec
                .init_containers
                .iter()
                .flatten()
                .filter(|c| c.restart_policy.as_deref() == Some("Always"));
            for c in spec.containers.iter().chain(sidecars) {
                for p in c.ports.iter().flatten() {
                    if let Some(n) = p.name.as_deref().filter(|n| !n.is_empty()) {
                        named_ports.push(NamedPort {
                            name: n.to_owned(),
                            port: p.container_port,
                            protocol: p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
                        });
                    }
                }
            }
        }
        Some(Self {
            namespace: meta.namespace.clone().unwrap_or_default(),
            name,
            uid: meta.uid.clone().unwrap_or_default(),
            labels: meta.labels.clone().unwrap_or_default(),
            ips,
            node_name: spec.and_then(|s| s.node_name.clone()).filter(|n| !n.is_empty()),
            hostname: spec.and_then(|s| s.hostname.clone()).filter(|n| !n.is_empty()),
            subdomain: spec.and_then(|s| s.subdomain.clone()).filter(|n| !n.is_empty()),
            terminal: phase == "Succeeded" || phase == "Failed",
            ready: ready_condition.is_some_and(|c| c.status == "True"),
            ready_changed: ready_condition
                .and_then(|c| c.last_transition_time.as_ref())
                .map(|t| t.0),
            created: meta.creation_timestamp.as_ref().map(|t| t.0),
            deleting: meta.deletion_timestamp.as_ref().map(|t| t.0),
            named_ports,
        })
    }

    fn ip_of(&self, family: AddressType) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| AddressType::of(ip) == family)
    }

    /// The latest change to this Pod that an endpoint reflects.
    fn trigger_time(&self) -> Option<Timestamp> {
        [self.created, self.ready_changed, self.deleting]
            .into_iter()
            .flatten()
            .max()
    }

    /// The Service port's target on this Pod, or `None` when a named target is not
    /// defined by the Pod (upstream's `FindPort`).
    fn resolve(&self, port: &ServicePort) -> Option<i32> {
        let protocol = port.protocol.as_deref().unwrap_or("TCP");
        match &port.target_port {
            None => Some(port.port),
            Some(IntOrString::Int(n)) => Some(*n),
            Some(IntOrString::String(name)) => self
                .named_ports
                .iter()
                .find(|p| p.name == *name && p.protocol == protocol)
                .map(|p| p.port),
        }
    }
}

/// The Service's selector, when this controller manages its endpoints: non-empty, and
/// the Service is not `ExternalName`.
pub fn managed_selector(svc: &Service) -> Option<&BTreeMap<String, String>> {
    let spec = svc.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return None;
    }
    spec.selector.as_ref().filter(|s| !s.is_empty())
}

pub fn wants_endpoints(svc: &Service) -> bool {
    managed_selector(svc).is_some()
}

/// A map selector matches labels that hold every key with the same value.
pub fn selects(selector: &BTreeMap<String, String>, labels: &BTreeMap<String, String>) -> bool {
    selector.iter().all(|(k, v)| labels.get(k) == Some(v))
}

/// The address families the Service's slices use: its `ipFamilies`, else its ClusterIP's,
/// else (headless without families) both, as upstream does.
pub fn address_types(svc: &Service) -> Vec<AddressType> {
    let Some(spec) = svc.spec.as_ref() else {
        return vec![AddressType::IPv4];
    };
    let mut out: Vec<AddressType> = spec
        .ip_families
        .iter()
        .flatten()
        .filter_map(|f| AddressType::parse(f))
        .collect();
    out.dedup();
    if !out.is_empty() {
        return out;
    }
    match spec.cluster_ip.as_deref().and_then(|ip| ip.parse::<IpAddr>().ok()) {
        Some(ip) => vec![AddressType::of(&ip)],
        None => vec![AddressType::IPv4, AddressType::IPv6],
    }
}

/// Sort and identity key of an EndpointSlice port.
pub type PortKey = (String, String, i32, String);

pub fn port_key(p: &EndpointPort) -> PortKey {
    (
        p.name.clone().unwrap_or_default(),
        p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
        p.port.unwrap_or_default(),
        p.app_protocol.clone().unwrap_or_default(),
    )
}

/// Which slices an endpoint may go in: same address family and the same ports, in any
/// order.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GroupKey {
    pub address_type: String,
    pub ports: Vec<PortKey>,
}

impl GroupKey {
    pub fn of_slice(slice: &EndpointSlice) -> Self {
        let mut ports: Vec<PortKey> = slice.ports.iter().flatten().map(port_key).collect();
        ports.sort();
        Self {
            address_type: slice.address_type.clone(),
            ports,
        }
    }
}

/// Endpoints sharing an address family and a port list.
#[derive(Debug, Clone, PartialEq)]
pub struct Group {
    pub address_type: AddressType,
    /// In the Service's port order.
    pub ports: Vec<EndpointPort>,
    /// Sorted by address.
    pub endpoints: Vec<Endpoint>,
}

impl Group {
    pub fn key(&self) -> GroupKey {
        let mut ports: Vec<PortKey> = self.ports.iter().map(port_key).collect();
        ports.sort();
        GroupKey {
            address_type: self.address_type.as_str().to_owned(),
            ports,
        }
    }
}

/// Everything the Service's endpoints should be.
#[derive(Debug, Clone, PartialEq)]
pub struct Desired {
    pub namespace: String,
    pub service_name: String,
    pub address_types: Vec<AddressType>,
    /// Non-empty groups, ordered by key. Empty when the Service has no endpoints: then it
    /// gets one placeholder slice ([`Desired::placeholder`]), as upstream.
    pub groups: Vec<Group>,
    /// Labels of every slice.
    pub slice_labels: BTreeMap<String, String>,
    /// The controller reference to the Service.
    pub owner: OwnerReference,
    /// The legacy Endpoints object, without resourceVersion or trigger time.
    pub endpoints: Endpoints,
    pub trigger_time: Option<Timestamp>,
}

/// Computes the desired state, or `None` when this controller does not manage the
/// Service's endpoints (see [`wants_endpoints`]) or the Service lacks a name or UID.
/// `pods` may hold Pods the selector does not match; they are ignored. `zones` maps Node
/// names to their `topology.kubernetes.io/zone`.
pub fn desired(
    svc: &Service,
    pods: &[Arc<PodInfo>],
    zones: &HashMap<String, String>,
    observed_change: Option<Timestamp>,
) -> Option<Desired> {
    let selector = managed_selector(svc)?;
    let spec = svc.spec.as_ref()?;
    let name = svc.metadata.name.clone().filter(|n| !n.is_empty())?;
    let uid = svc.metadata.uid.clone().filter(|u| !u.is_empty())?;
    let namespace = svc.metadata.namespace.clone().unwrap_or_default();
    let publish_not_ready = spec.publish_not_ready_addresses.unwrap_or(false);
    let headless = spec.cluster_ip.as_deref() == Some("None");
    let address_types = address_types(svc);
    let hints = hint_mode(svc);
    let service_ports: &[ServicePort] = spec.ports.as_deref().unwrap_or_default();

    let mut pods: Vec<&PodInfo> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| p.namespace == namespace && selects(selector, &p.labels) && !p.terminal && !p.ips.is_empty())
        .collect();
    pods.sort_by(|a, b| a.name.cmp(&b.name));

    let mut trigger_time = svc.metadata.creation_timestamp.as_ref().map(|t| t.0);
    trigger_time = trigger_time.max(observed_change);

    let mut groups: BTreeMap<GroupKey, Group> = BTreeMap::new();
    for pod in &pods {
        let resolved: Vec<(&ServicePort, i32)> = service_ports
            .iter()
            .filter_map(|sp| pod.resolve(sp).map(|n| (sp, n)))
            .collect();
        let ports: Vec<EndpointPort> = resolved
            .iter()
            .map(|(sp, n)| EndpointPort {
                name: Some(sp.name.clone().unwrap_or_default()),
                port: Some(*n),
                protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                app_protocol: sp.app_protocol.clone(),
            })
            .collect();
        let mut included = false;
        for &family in &address_types {
            let Some(ip) = pod.ip_of(family) else { continue };
            let group = Group {
                address_type: family,
                ports: ports.clone(),
                endpoints: vec![],
            };
            let zone = pod
                .node_name
                .as_ref()
                .and_then(|n| zones.get(n))
                .filter(|z| !z.is_empty());
            let endpoint = to_endpoint(pod, ip, zone, &name, &namespace, publish_not_ready, hints);
            groups.entry(group.key()).or_insert(group).endpoints.push(endpoint);
            included = true;
        }
        if included {
            trigger_time = trigger_time.max(pod.trigger_time());
        }
    }
    let mut groups: Vec<Group> = groups.into_values().collect();
    for g in &mut groups {
        g.endpoints.sort_by(|a, b| a.addresses.cmp(&b.addresses));
    }

    let owner = OwnerReference {
        api_version: "v1".to_owned(),
        kind: "Service".to_owned(),
        name: name.clone(),
        uid,
        controller: Some(true),
        block_owner_deletion: Some(true),
    };
    let primary = address_types.first().copied().unwrap_or(AddressType::IPv4);
    let mut endpoints_labels = svc.metadata.labels.clone().unwrap_or_default();
    endpoints_labels.insert(SKIP_MIRROR_LABEL.to_owned(), "true".to_owned());
    let mut slice_labels = svc.metadata.labels.clone().unwrap_or_default();
    slice_labels.remove(HEADLESS_LABEL);
    endpoints_labels.remove(HEADLESS_LABEL);
    if headless {
        slice_labels.insert(HEADLESS_LABEL.to_owned(), String::new());
        endpoints_labels.insert(HEADLESS_LABEL.to_owned(), String::new());
    }
    slice_labels.insert(SERVICE_NAME_LABEL.to_owned(), name.clone());
    slice_labels.insert(MANAGED_BY_LABEL.to_owned(), CONTROLLER_NAME.to_owned());

    let (subsets, truncated) = legacy_subsets(&pods, service_ports, primary, &name, &namespace, publish_not_ready);
    let endpoints = Endpoints {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            namespace: Some(namespace.clone()),
            labels: Some(endpoints_labels),
            annotations: truncated.then(|| [(OVER_CAPACITY_ANNOTATION.to_owned(), "truncated".to_owned())].into()),
            owner_references: Some(vec![owner.clone()]),
            ..Default::default()
        },
        subsets: (!subsets.is_empty()).then_some(subsets),
    };

    Some(Desired {
        namespace,
        service_name: name,
        address_types,
        groups,
        slice_labels,
        owner,
        endpoints,
        trigger_time,
    })
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Hints {
    None,
    Zone,
    ZoneAndNode,
}

fn hint_mode(svc: &Service) -> Hints {
    let annotations = svc.metadata.annotations.as_ref();
    let auto = |key: &str| {
        annotations
            .and_then(|a| a.get(key))
            .is_some_and(|v| v.eq_ignore_ascii_case("auto"))
    };
    if auto(TOPOLOGY_MODE_ANNOTATION) || auto(TOPOLOGY_HINTS_ANNOTATION) {
        return Hints::Zone;
    }
    match svc.spec.as_ref().and_then(|s| s.traffic_distribution.as_deref()) {
        Some("PreferClose" | "PreferSameZone") => Hints::Zone,
        Some("PreferSameNode") => Hints::ZoneAndNode,
        _ => Hints::None,
    }
}

fn target_ref(pod: &PodInfo) -> ObjectReference {
    ObjectReference {
        kind: Some("Pod".to_owned()),
        namespace: Some(pod.namespace.clone()),
        name: Some(pod.name.clone()),
        uid: Some(pod.uid.clone()),
        ..Default::default()
    }
}

/// Upstream sets an endpoint's hostname only for Pods that name this Service as their
/// subdomain.
fn hostname(pod: &PodInfo, svc_name: &str, svc_namespace: &str) -> Option<String> {
    (pod.subdomain.as_deref() == Some(svc_name) && pod.namespace == svc_namespace)
        .then(|| pod.hostname.clone())
        .flatten()
}

fn to_endpoint(
    pod: &PodInfo,
    ip: IpAddr,
    zone: Option<&String>,
    svc_name: &str,
    svc_namespace: &str,
    publish_not_ready: bool,
    hints: Hints,
) -> Endpoint {
    let serving = pod.ready;
    let terminating = pod.deleting.is_some();
    let ready = publish_not_ready || (serving && !terminating);
    let hints = match (hints, zone) {
        (Hints::None, _) | (_, None) => None,
        (mode, Some(zone)) => Some(EndpointHints {
            for_zones: Some(vec![ForZone { name: zone.clone() }]),
            for_nodes: (mode == Hints::ZoneAndNode)
                .then(|| pod.node_name.clone().map(|name| vec![ForNode { name }]))
                .flatten(),
        }),
    };
    Endpoint {
        addresses: vec![ip.to_string()],
        conditions: Some(EndpointConditions {
            ready: Some(ready),
            serving: Some(serving),
            terminating: Some(terminating),
        }),
        hostname: hostname(pod, svc_name, svc_namespace),
        node_name: pod.node_name.clone(),
        zone: zone.cloned(),
        target_ref: Some(target_ref(pod)),
        hints,
        deprecated_topology: None,
    }
}

/// Legacy Endpoints subsets: addresses grouped by the ports they serve, ready ones in
/// `addresses`, the others in `notReadyAddresses`; one address per Pod, of the primary
/// family. Returns whether it had to cut to [`MAX_ENDPOINTS_ADDRESSES`].
fn legacy_subsets(
    pods: &[&PodInfo],
    service_ports: &[ServicePort],
    family: AddressType,
    svc_name: &str,
    svc_namespace: &str,
    publish_not_ready: bool,
) -> (Vec<EndpointSubset>, bool) {
    type Ports = Vec<(String, i32, String, String)>;
    type Addresses = Vec<EndpointAddress>;
    let mut by_ports: BTreeMap<Ports, (Vec<CorePort>, Addresses, Addresses)> = BTreeMap::new();
    for pod in pods {
        if pod.deleting.is_some() && !publish_not_ready {
            continue;
        }
        let Some(ip) = pod.ip_of(family) else { continue };
        let ports: Vec<CorePort> = service_ports
            .iter()
            .filter_map(|sp| {
                pod.resolve(sp).map(|n| CorePort {
                    name: sp.name.clone().filter(|n| !n.is_empty()),
                    port: n,
                    protocol: Some(sp.protocol.clone().unwrap_or_else(|| "TCP".to_owned())),
                    app_protocol: sp.app_protocol.clone(),
                })
            })
            .collect();
        // Upstream adds a Pod once per resolved port; with none it is not listed at all
        // (a Service without ports, only valid when headless, lists every Pod).
        if ports.is_empty() && !service_ports.is_empty() {
            continue;
        }
        let address = EndpointAddress {
            ip: ip.to_string(),
            hostname: hostname(pod, svc_name, svc_namespace),
            node_name: pod.node_name.clone(),
            target_ref: Some(target_ref(pod)),
        };
        let mut key: Ports = ports.iter().map(core_port_key).collect();
        key.sort();
        let entry = by_ports.entry(key).or_insert_with(|| (ports, vec![], vec![]));
        if publish_not_ready || pod.ready {
            entry.1.push(address);
        } else {
            entry.2.push(address);
        }
    }
    let mut budget = MAX_ENDPOINTS_ADDRESSES;
    let mut truncated = false;
    let mut cut = |list: &mut Vec<EndpointAddress>| {
        if list.len() > budget {
            list.truncate(budget);
            truncated = true;
        }
        budget -= list.len();
    };
    let mut groups: Vec<_> = by_ports.into_values().collect();
    for (_, ready, _) in &mut groups {
        cut(ready);
    }
    for (_, _, not_ready) in &mut groups {
        cut(not_ready);
    }
    let subsets = groups
        .into_iter()
        .filter(|(_, r, n)| !r.is_empty() || !n.is_empty())
        .map(|(ports, ready, not_ready)| {
            let mut s = EndpointSubset {
                addresses: (!ready.is_empty()).then_some(ready),
                not_ready_addresses: (!not_ready.is_empty()).then_some(not_ready),
                ports: (!ports.is_empty()).then_some(ports),
            };
            normalize_subset(&mut s);
            s
        })
        .collect();
    (subsets, truncated)
}

fn core_port_key(p: &CorePort) -> (String, i32, String, String) {
    (
        p.name.clone().unwrap_or_default(),
        p.port,
        p.protocol.clone().unwrap_or_else(|| "TCP".to_owned()),
        p.app_protocol.clone().unwrap_or_default(),
    )
}

fn normalize_subset(s: &mut EndpointSubset) {
    for list in [&mut s.addresses, &mut s.not_ready_addresses] {
        if let Some(l) = list {
            l.sort_by(|a, b| a.ip.cmp(&b.ip));
        }
        if list.as_ref().is_some_and(Vec::is_empty) {
            *list = None;
        }
    }
    if let Some(p) = &mut s.ports {
        p.sort_by_key(core_port_key);
    }
    if s.ports.as_ref().is_some_and(Vec::is_empty) {
        s.ports = None;
    }
}

/// Subsets in a canonical order, so two that mean the same compare equal.
pub fn normalize_subsets(subsets: Option<&Vec<EndpointSubset>>) -> Vec<EndpointSubset> {
    let mut out: Vec<EndpointSubset> = subsets.cloned().unwrap_or_default();
    for s in &mut out {
        normalize_subset(s);
    }
    out.retain(|s| s.addresses.is_some() || s.not_ready_addresses.is_some());
    let key = |s: &EndpointSubset| {
        let ports: Vec<_> = s.ports.iter().flatten().map(core_port_key).collect();
        let first = s
            .addresses
            .iter()
            .chain(&s.not_ready_addresses)
            .flatten()
            .next()
            .map(|a| a.ip.clone());
        (ports, first)
    };
    out.sort_by_key(key);
    out
}

impl Desired {
    /// Total endpoints over all groups.
    pub fn endpoint_count(&self) -> usize {
        self.groups.iter().map(|g| g.endpoints.len()).sum()
    }

    /// A new slice (named by the server from `generateName`) for some of a group's
    /// endpoints.
    pub fn new_slice(
        &self,
        address_type: AddressType,
        ports: Vec<EndpointPort>,
        endpoints: Vec<Endpoint>,
    ) -> EndpointSlice {
        let mut annotations = BTreeMap::new();
        if let Some(t) = self.trigger_time {
            annotations.insert(TRIGGER_TIME_ANNOTATION.to_owned(), t.to_string());
        }
        EndpointSlice {
            metadata: ObjectMeta {
                generate_name: Some(format!("{}-", self.service_name)),
                namespace: Some(self.namespace.clone()),
                labels: Some(self.slice_labels.clone()),
                annotations: (!annotations.is_empty()).then_some(annotations),
                owner_references: Some(vec![self.owner.clone()]),
                ..Default::default()
            },
            address_type: address_type.as_str().to_owned(),
            endpoints,
            ports: Some(ports),
        }
    }

    /// The slice a Service without endpoints keeps: no endpoints, no ports, the first
    /// address family (upstream's placeholder).
    pub fn placeholder(&self) -> EndpointSlice {
        self.new_slice(
            self.address_types.first().copied().unwrap_or(AddressType::IPv4),
            vec![],
            vec![],
        )
    }

    /// The slices for a Service that has none yet: each group cut into slices of at most
    /// `max` endpoints, or the placeholder.
    pub fn fresh_slices(&self, max: usize) -> Vec<EndpointSlice> {
        if self.groups.is_empty() {
            return vec![self.placeholder()];
        }
        let mut out = Vec::new();
        for g in &self.groups {
            for chunk in g.endpoints.chunks(max.max(1)) {
                out.push(self.new_slice(g.address_type, g.ports.clone(), chunk.to_vec()));
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::{Value, json};

    fn service(extra_spec: Value) -> Service {
        let mut v = json!({
            "metadata": {"name": "web", "namespace": "ns", "uid": "svc-uid", "creationTimestamp": "2025-01-01T00:00:00Z"},
            "spec": {"selector": {"app": "web"}, "clusterIP": "10.96.0.10", "ipFamilies": ["IPv4"],
                     "ports": [{"port": 80, "targetPort": 8080, "protocol": "TCP"}]}
        });
        for (k, val) in extra_spec.as_object().cloned().unwrap_or_default() {
            v["spec"][k] = val;
        }
        serde_json::from_value(v).expect("service")
    }

    /// A Running Pod `name` with IP `ip` (or none), Ready as given, optionally terminating.
    fn pod(name: &str, ip: Option<&str>, ready: bool, deleting: bool) -> Pod {
        let mut v = json!({
            "metadata": {"name": name, "namespace": "ns", "uid": format!("uid-{name}"), "labels": {"app": "web"},
                         "creationTimestamp": "2025-01-01T00:01:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "image": "i",
                     "ports": [{"name": "http", "containerPort": 8080, "protocol": "TCP"}]}]},
            "status": {"phase": "Running", "conditions": [{"type": "Ready", "status": if ready { "True" } else { "False" },
                       "lastTransitionTime": "2025-01-01T00:02:00Z"}]}
        });
        if let Some(ip) = ip {
            v["status"]["podIP"] = json!(ip);
            v["status"]["podIPs"] = json!([{"ip": ip}]);
        }
        if deleting {
            v["metadata"]["deletionTimestamp"] = json!("2025-01-01T00:03:00Z");
        }
        serde_json::from_value(v).expect("pod")
    }

    fn infos(pods: &[Pod]) -> Vec<Arc<PodInfo>> {
        pods.iter()
            .map(|p| Arc::new(PodInfo::from_pod(p).expect("named")))
            .collect()
    }

    fn conditions(e: &Endpoint) -> (bool, bool, bool) {
        let c = e.conditions.clone().expect("conditions");
        (
            c.ready.expect("ready"),
            c.serving.expect("serving"),
            c.terminating.expect("terminating"),
        )
    }

    fn compute(svc: &Service, pods: &[Pod]) -> Desired {
        desired(svc, &infos(pods), &HashMap::new(), None).expect("managed")
    }

    #[test]
    fn ready_serving_terminating_matrix() {
        let pods = [
            pod("a-ready", Some("10.0.0.1"), true, false),
            pod("b-unready", Some("10.0.0.2"), false, false),
            pod("c-ready-terminating", Some("10.0.0.3"), true, true),
            pod("d-unready-terminating", Some("10.0.0.4"), false, true),
        ];
        let d = compute(&service(json!({})), &pods);
        assert_eq!(d.groups.len(), 1);
        let got: Vec<_> = d.groups[0]
            .endpoints
            .iter()
            .map(|e| (e.addresses[0].clone(), conditions(e)))
            .collect();
        assert_eq!(
            got,
            [
                ("10.0.0.1".to_owned(), (true, true, false)),
                ("10.0.0.2".to_owned(), (false, false, false)),
                ("10.0.0.3".to_owned(), (false, true, true)),
                ("10.0.0.4".to_owned(), (false, false, true)),
            ]
        );
        let e = &d.groups[0].endpoints[0];
        assert_eq!(e.node_name.as_deref(), Some("n1"));
        let r = e.target_ref.clone().expect("targetRef");
        assert_eq!(
            (
                r.kind.as_deref(),
                r.name.as_deref(),
                r.namespace.as_deref(),
                r.uid.as_deref()
            ),
            (Some("Pod"), Some("a-ready"), Some("ns"), Some("uid-a-ready"))
        );
        assert_eq!(
            d.groups[0].ports,
            [EndpointPort {
                name: Some(String::new()),
                port: Some(8080),
                protocol: Some("TCP".into()),
                app_protocol: None
            }]
        );

        // Legacy Endpoints: ready in addresses, unready in notReadyAddresses, terminating out.
        let subsets = d.endpoints.subsets.clone().expect("subsets");
        assert_eq!(subsets.len(), 1);
        let ips = |l: &Option<Vec<EndpointAddress>>| l.iter().flatten().map(|a| a.ip.clone()).collect::<Vec<_>>();
        assert_eq!(ips(&subsets[0].addresses), ["10.0.0.1"]);
        assert_eq!(ips(&subsets[0].not_ready_addresses), ["10.0.0.2"]);
        assert_eq!(subsets[0].ports.as_ref().expect("ports")[0].port, 8080);
    }

    #[test]
    fn publish_not_ready_addresses_makes_every_endpoint_ready() {
        let pods = [
            pod("a", Some("10.0.0.1"), false, false),
            pod("b", Some("10.0.0.2"), true, true),
        ];
        let d = compute(&service(json!({"publishNotReadyAddresses": true})), &pods);
        let got: Vec<_> = d.groups[0].endpoints.iter().map(conditions).collect();
        assert_eq!(got, [(true, false, false), (true, true, true)]);
        let subsets = d.endpoints.subsets.expect("subsets");
        assert_eq!(subsets[0].addresses.as_ref().map(Vec::len), Some(2));
        assert!(subsets[0].not_ready_addresses.is_none());
    }

    #[test]
    fn pods_without_ip_terminal_or_unselected_are_skipped() {
        let mut failed = pod("failed", Some("10.0.0.3"), false, false);
        failed.status.as_mut().expect("status").phase = Some("Succeeded".into());
        let mut other = pod("other", Some("10.0.0.4"), true, false);
        other.metadata.labels = Some([("app".to_owned(), "db".to_owned())].into());
        let pods = [
            pod("no-ip", None, true, false),
            failed,
            other,
            pod("ok", Some("10.0.0.1"), true, false),
        ];
        let d = compute(&service(json!({})), &pods);
        let addrs: Vec<_> = d
            .groups
            .iter()
            .flat_map(|g| &g.endpoints)
            .map(|e| e.addresses[0].clone())
            .collect();
        assert_eq!(addrs, ["10.0.0.1"]);
    }

    #[test]
    fn services_without_selector_or_external_name_are_not_managed() {
        let mut no_selector = service(json!({}));
        no_selector.spec.as_mut().expect("spec").selector = None;
        assert!(desired(&no_selector, &[], &HashMap::new(), None).is_none());
        let mut empty = service(json!({}));
        empty.spec.as_mut().expect("spec").selector = Some(BTreeMap::new());
        assert!(!wants_endpoints(&empty));
        assert!(!wants_endpoints(&service(
            json!({"type": "ExternalName", "externalName": "x.example"})
        )));
        let headless = compute(
            &service(json!({"clusterIP": "None"})),
            &[pod("a", Some("10.0.0.1"), true, false)],
        );
        assert_eq!(headless.slice_labels.get(HEADLESS_LABEL).map(String::as_str), Some(""));
        assert_eq!(headless.endpoint_count(), 1);
    }

    #[test]
    fn named_target_ports_resolve_per_pod_and_group() {
        let svc = service(json!({"ports": [
            {"name": "web", "port": 80, "targetPort": "http", "protocol": "TCP"},
            {"name": "metrics", "port": 9000, "targetPort": 9090, "protocol": "TCP", "appProtocol": "http"}
        ]}));
        let a = pod("a", Some("10.0.0.1"), true, false);
        let mut b = pod("b", Some("10.0.0.2"), true, false);
        b.spec.as_mut().expect("spec").containers[0]
            .ports
            .as_mut()
            .expect("ports")[0]
            .container_port = 8081;
        let mut c = pod("c", Some("10.0.0.3"), true, false);
        c.spec.as_mut().expect("spec").containers[0].ports = None;
        let mut d_udp = pod("d", Some("10.0.0.4"), true, false);
        d_udp.spec.as_mut().expect("spec").containers[0]
            .ports
            .as_mut()
            .expect("ports")[0]
            .protocol = Some("UDP".into());
        let d = compute(&svc, &[a, b, c, d_udp]);
        type Row = (Vec<(String, i32)>, Vec<String>);
        let mut got: Vec<Row> = d
            .groups
            .iter()
            .map(|g| {
                (
                    g.ports
                        .iter()
                        .map(|p| (p.name.clone().unwrap_or_default(), p.port.unwrap_or_default()))
                        .collect(),
                    g.endpoints.iter().map(|e| e.addresses[0].clone()).collect(),
                )
            })
            .collect();
        got.sort();
        assert_eq!(
            got,
            [
                (
                    vec![("metrics".to_owned(), 9090)],
                    vec!["10.0.0.3".to_owned(), "10.0.0.4".to_owned()]
                ),
                (
                    vec![("web".to_owned(), 8080), ("metrics".to_owned(), 9090)],
                    vec!["10.0.0.1".to_owned()]
                ),
                (
                    vec![("web".to_owned(), 8081), ("metrics".to_owned(), 9090)],
                    vec!["10.0.0.2".to_owned()]
                ),
            ]
        );
        let metrics = d
            .groups
            .iter()
            .flat_map(|g| &g.ports)
            .find(|p| p.name.as_deref() == Some("metrics"))
            .expect("metrics");
        assert_eq!(metrics.app_protocol.as_deref(), Some("http"));
        // Legacy Endpoints group the same way: three subsets.
        assert_eq!(d.endpoints.subsets.expect("subsets").len(), 3);
    }

    #[test]
    fn more_than_max_endpoints_are_split() {
        let pods: Vec<Pod> = (0..250)
            .map(|i| {
                pod(
                    &format!("p{i:03}"),
                    Some(&format!("10.0.{}.{}", i / 200, i % 200 + 1)),
                    true,
                    false,
                )
            })
            .collect();
        let d = compute(&service(json!({})), &pods);
        let slices = d.fresh_slices(MAX_ENDPOINTS_PER_SLICE);
        assert_eq!(
            slices.iter().map(|s| s.endpoints.len()).collect::<Vec<_>>(),
            [100, 100, 50]
        );
        for s in &slices {
            assert_eq!(s.metadata.generate_name.as_deref(), Some("web-"));
            let labels = s.metadata.labels.clone().expect("labels");
            assert_eq!(labels[SERVICE_NAME_LABEL], "web");
            assert_eq!(labels[MANAGED_BY_LABEL], CONTROLLER_NAME);
            let owner = &s.metadata.owner_references.as_ref().expect("owner")[0];
            assert_eq!(
                (
                    owner.kind.as_str(),
                    owner.uid.as_str(),
                    owner.controller,
                    owner.block_owner_deletion
                ),
                ("Service", "svc-uid", Some(true), Some(true))
            );
        }
        let mut all: Vec<_> = slices
            .iter()
            .flat_map(|s| &s.endpoints)
            .map(|e| e.addresses[0].clone())
            .collect();
        all.dedup();
        assert_eq!(all.len(), 250);
    }

    #[test]
    fn no_endpoints_gives_one_placeholder() {
        let d = compute(&service(json!({})), &[]);
        let slices = d.fresh_slices(100);
        assert_eq!(slices.len(), 1);
        assert!(slices[0].endpoints.is_empty());
        assert_eq!(slices[0].ports.as_deref(), Some(&[][..]));
        assert_eq!(slices[0].address_type, "IPv4");
        assert!(d.endpoints.subsets.is_none());
    }

    #[test]
    fn dual_stack_pods_get_a_slice_per_family_the_service_has() {
        let mut p = pod("a", Some("10.0.0.1"), true, false);
        p.status.as_mut().expect("status").pod_ips =
            Some(serde_json::from_value(json!([{"ip": "10.0.0.1"}, {"ip": "fd00::1"}])).expect("ips"));
        let single = compute(&service(json!({})), std::slice::from_ref(&p));
        assert_eq!(
            single.groups.iter().map(|g| g.address_type).collect::<Vec<_>>(),
            [AddressType::IPv4]
        );
        let dual = compute(&service(json!({"ipFamilies": ["IPv4", "IPv6"]})), &[p]);
        let got: Vec<_> = dual
            .groups
            .iter()
            .map(|g| (g.address_type, g.endpoints[0].addresses[0].clone()))
            .collect();
        assert_eq!(
            got,
            [
                (AddressType::IPv4, "10.0.0.1".to_owned()),
                (AddressType::IPv6, "fd00::1".to_owned())
            ]
        );
    }

    #[test]
    fn trigger_time_is_the_latest_relevant_change() {
        let ts = |s: &str| s.parse::<Timestamp>().expect("timestamp");
        let svc = service(json!({}));
        // Service created 00:00, Pod created 00:01, Ready at 00:02, deleted at 00:03.
        let d = compute(&svc, &[pod("a", Some("10.0.0.1"), true, false)]);
        assert_eq!(d.trigger_time, Some(ts("2025-01-01T00:02:00Z")));
        let d = compute(
            &svc,
            &[
                pod("a", Some("10.0.0.1"), true, false),
                pod("b", Some("10.0.0.2"), true, true),
            ],
        );
        assert_eq!(d.trigger_time, Some(ts("2025-01-01T00:03:00Z")));
        // A Pod that is no endpoint (no IP) does not count.
        let mut late = pod("late", None, false, false);
        late.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(ts(
            "2025-01-01T05:00:00Z",
        )));
        let d = compute(&svc, &[late.clone()]);
        assert_eq!(d.trigger_time, Some(ts("2025-01-01T00:00:00Z")));
        // A change observed by the caller (a Pod deleted) counts.
        let d = desired(&svc, &infos(&[late]), &HashMap::new(), Some(ts("2025-01-01T06:00:00Z"))).expect("managed");
        assert_eq!(d.trigger_time, Some(ts("2025-01-01T06:00:00Z")));
        let slice = d.placeholder();
        assert_eq!(
            slice.metadata.annotations.expect("annotations")[TRIGGER_TIME_ANNOTATION],
            "2025-01-01T06:00:00Z"
        );
    }

    #[test]
    fn zones_and_hints() {
        let zones: HashMap<String, String> = [("n1".to_owned(), "zone-a".to_owned())].into();
        let pods = infos(&[pod("a", Some("10.0.0.1"), true, false)]);
        let plain = desired(&service(json!({})), &pods, &zones, None).expect("managed");
        let e = &plain.groups[0].endpoints[0];
        assert_eq!(e.zone.as_deref(), Some("zone-a"));
        assert!(e.hints.is_none());
        let close = desired(
            &service(json!({"trafficDistribution": "PreferClose"})),
            &pods,
            &zones,
            None,
        )
        .expect("managed");
        let hints = close.groups[0].endpoints[0].hints.clone().expect("hints");
        assert_eq!(hints.for_zones, Some(vec![ForZone { name: "zone-a".into() }]));
        let mut auto = service(json!({}));
        auto.metadata.annotations = Some([(TOPOLOGY_MODE_ANNOTATION.to_owned(), "Auto".to_owned())].into());
        assert!(
            desired(&auto, &pods, &zones, None).expect("managed").groups[0].endpoints[0]
                .hints
                .is_some()
        );
        // Without a zone there is nothing to hint.
        let none = desired(
            &service(json!({"trafficDistribution": "PreferClose"})),
            &pods,
            &HashMap::new(),
            None,
        )
        .expect("managed");
        assert!(none.groups[0].endpoints[0].hints.is_none());
    }

    #[test]
    fn subsets_normalize_regardless_of_order() {
        let a = json!([{"addresses": [{"ip": "10.0.0.2"}, {"ip": "10.0.0.1"}], "ports": [{"port": 80}]}, {"notReadyAddresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 81}]}]);
        let b = json!([{"notReadyAddresses": [{"ip": "10.0.0.9"}], "ports": [{"port": 81}]}, {"addresses": [{"ip": "10.0.0.1"}, {"ip": "10.0.0.2"}], "ports": [{"port": 80}]}, {"addresses": []}]);
        let a: Vec<EndpointSubset> = serde_json::from_value(a).expect("a");
        let b: Vec<EndpointSubset> = serde_json::from_value(b).expect("b");
        assert_eq!(normalize_subsets(Some(&a)).len(), 2);
        assert_eq!(normalize_subsets(Some(&a)), normalize_subsets(Some(&b)));
    }
}
