//! Services as the dataplane sees them: one [`ServicePort`] per port of a proxied Service.
//!
//! Everything the backends need is read here, once, into plain typed values; nothing after
//! this module looks at a k8s-openapi `Service` again. That keeps the change trackers'
//! "did anything we care about change?" question a plain `==`.

use std::{collections::BTreeMap, fmt, net::IpAddr};

use k8s_openapi::{
    api::core::v1::{Service, ServicePort as ApiServicePort, ServiceSpec},
    apimachinery::pkg::{apis::meta::v1::ObjectMeta, util::intstr::IntOrString},
};

use super::net::{AddrError, IpFamily, IpNet, parse_cidr, parse_ip};

/// Label naming the proxy that owns a Service. Any value, even empty, means "not us", as
/// kube-proxy's `!service.kubernetes.io/service-proxy-name` watch selector does.
pub const LABEL_SERVICE_PROXY_NAME: &str = "service.kubernetes.io/service-proxy-name";
/// Label the control plane puts on headless Services and their slices; kube-proxy's watch
/// selector excludes it too.
pub const LABEL_HEADLESS: &str = "service.kubernetes.io/headless";
/// Opts a Service into topology-aware routing (the EndpointSlice controller writes hints).
pub const ANNOTATION_TOPOLOGY_MODE: &str = "service.kubernetes.io/topology-mode";
/// The pre-1.27 name of [`ANNOTATION_TOPOLOGY_MODE`], still honoured by the controller.
pub const ANNOTATION_TOPOLOGY_AWARE_HINTS: &str = "service.kubernetes.io/topology-aware-hints";
/// The API's default for `sessionAffinityConfig.clientIP.timeoutSeconds` (3 hours).
pub const DEFAULT_AFFINITY_TIMEOUT_SECONDS: u32 = 10_800;

/// A Service's identity. Ordered by namespace, then name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceName {
    pub namespace: String,
    pub name: String,
}

impl ServiceName {
    pub fn new(namespace: impl Into<String>, name: impl Into<String>) -> Self {
        Self {
            namespace: namespace.into(),
            name: name.into(),
        }
    }
}

impl fmt::Display for ServiceName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

/// One port of one Service: the key of every per-port table in the model.
///
/// The field order makes the derived ordering group a Service's ports together, so the
/// desired state iterates Service by Service.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServicePortName {
    pub namespace: String,
    pub name: String,
    /// `spec.ports[].name`; empty for the single unnamed port a Service may have.
    pub port_name: String,
    /// Part of the key because one port name may not repeat, but TCP 53 and UDP 53 under
    /// different names must stay distinct when slices name them alike.
    pub protocol: Protocol,
}

impl ServicePortName {
    pub fn new(service: &ServiceName, port_name: impl Into<String>, protocol: Protocol) -> Self {
        Self {
            namespace: service.namespace.clone(),
            name: service.name.clone(),
            port_name: port_name.into(),
            protocol,
        }
    }

    pub fn service(&self) -> ServiceName {
        ServiceName::new(&self.namespace, &self.name)
    }

    /// Whether this port belongs to `service`, without allocating.
    pub fn is_of(&self, service: &ServiceName) -> bool {
        self.namespace == service.namespace && self.name == service.name
    }
}

impl fmt::Display for ServicePortName {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{}/{}:{}/{}",
            self.namespace, self.name, self.port_name, self.protocol
        )
    }
}

/// The L4 protocols a Service port may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    /// Reads an API protocol string; absent means TCP, the API default.
    pub fn from_api(value: Option<&str>) -> Option<Self> {
        match value {
            None | Some("TCP") => Some(Self::Tcp),
            Some("UDP") => Some(Self::Udp),
            Some("SCTP") => Some(Self::Sctp),
            Some(_) => None,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Self::Tcp => "TCP",
            Self::Udp => "UDP",
            Self::Sctp => "SCTP",
        })
    }
}

/// `spec.ports[].targetPort`. Kept for display and debugging only: EndpointSlices already
/// carry the resolved port of every endpoint, so the dataplane never resolves names itself.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum TargetPort {
    Number(u16),
    Name(String),
}

/// `internalTrafficPolicy` / `externalTrafficPolicy`: may traffic leave the node it
/// arrived on?
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TrafficPolicy {
    /// Any endpoint in the cluster.
    #[default]
    Cluster,
    /// Only endpoints on this node; dropped when there are none.
    Local,
}

/// How the Service asked to have its endpoints' topology taken into account.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum TopologyMode {
    /// No preference: every endpoint is equally good. Hints, if present, still apply.
    #[default]
    None,
    /// The topology-mode annotation: the EndpointSlice controller spreads zone hints by
    /// capacity, which the proxy cannot recompute, so only the hints count.
    Auto,
    /// `trafficDistribution: PreferClose` or `PreferSameZone`: stay in this zone when it has
    /// endpoints. Endpoints without hints count as hinted for their own zone.
    PreferSameZone,
    /// `trafficDistribution: PreferSameNode`: stay on this node when it has endpoints.
    PreferSameNode,
}

/// `sessionAffinity: ClientIP`: a client keeps reaching the endpoint it reached first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionAffinity {
    /// How long after its last packet a client's choice is forgotten.
    pub timeout_seconds: u32,
}

/// Everything the dataplane needs about one port of one Service.
///
/// Fields hold every family the Service has; the desired state splits them per family.
/// Lists are sorted and free of duplicates, so equal Services compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// `spec.clusterIPs`: one per family, primary first.
    pub cluster_ips: Vec<IpAddr>,
    pub port: u16,
    pub protocol: Protocol,
    /// Set for NodePort and LoadBalancer Services (unless node ports were not allocated).
    pub node_port: Option<u16>,
    pub target_port: TargetPort,
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip` in VIP mode. Ingresses in `Proxy` mode are left
    /// out: their load balancer sends traffic to the node, not to the VIP.
    pub load_balancer_ips: Vec<IpAddr>,
    /// Empty means every source may reach the load balancer IPs.
    pub load_balancer_source_ranges: Vec<IpNet>,
    pub session_affinity: Option<SessionAffinity>,
    pub internal_traffic_policy: TrafficPolicy,
    /// As written in the spec; see [`ServicePort::external_policy_local`] for what applies.
    pub external_traffic_policy: TrafficPolicy,
    /// Set for LoadBalancer Services with `externalTrafficPolicy: Local`: the port where
    /// this node tells load balancers whether it has local endpoints.
    pub health_check_node_port: Option<u16>,
    pub topology_mode: TopologyMode,
}

impl ServicePort {
    /// Whether anything but the ClusterIP reaches this port.
    pub fn externally_accessible(&self) -> bool {
        self.node_port.is_some() || !self.external_ips.is_empty() || !self.load_balancer_ips.is_empty()
    }

    pub fn internal_policy_local(&self) -> bool {
        self.internal_traffic_policy == TrafficPolicy::Local
    }

    /// `externalTrafficPolicy: Local` only means something when there is external traffic.
    pub fn external_policy_local(&self) -> bool {
        self.external_traffic_policy == TrafficPolicy::Local && self.externally_accessible()
    }

    /// Whether any traffic to this port may go to endpoints on other nodes. True even with
    /// `externalTrafficPolicy: Local`, because traffic from this node itself to an external
    /// address is short-circuited to the cluster-wide endpoints.
    pub fn uses_cluster_endpoints(&self) -> bool {
        !self.internal_policy_local() || self.externally_accessible()
    }

    /// Whether any traffic to this port is restricted to this node's endpoints.
    pub fn uses_local_endpoints(&self) -> bool {
        self.internal_policy_local() || self.external_policy_local()
    }

    /// The families this port is served in: those of its ClusterIPs.
    pub fn families(&self) -> impl Iterator<Item = IpFamily> + '_ {
        self.cluster_ips.iter().map(|ip| IpFamily::of(*ip))
    }

    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips.iter().copied().find(|ip| IpFamily::of(*ip) == family)
    }
}

/// Every proxied port of every Service.
pub type ServicePortMap = BTreeMap<ServicePortName, ServicePort>;

/// Why a Service gets no dataplane state at all.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IgnoreReason {
    /// Labelled for another proxy implementation.
    OtherProxy { proxy: String },
    /// Labelled headless by the control plane.
    HeadlessLabel,
    /// `type: ExternalName` is a DNS alias; there is no address to program.
    ExternalName,
    /// `clusterIP: None`: clients resolve endpoint addresses through DNS directly.
    Headless,
    /// No ClusterIP allocated (yet).
    NoClusterIp,
}

/// A Service field the API server should not have accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ServiceError {
    #[error("object has no metadata.{field}")]
    MissingMetadata { field: &'static str },
    #[error("service {service}: invalid {field}")]
    InvalidAddress {
        service: ServiceName,
        field: &'static str,
        #[source]
        source: AddrError,
    },
    #[error("service {service}: invalid {field} {value:?}")]
    InvalidField {
        service: ServiceName,
        field: &'static str,
        value: String,
    },
}

/// The `namespace/name` of any namespaced object.
pub fn object_name(meta: &ObjectMeta) -> Result<ServiceName, ServiceError> {
    let namespace = meta
        .namespace
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(ServiceError::MissingMetadata { field: "namespace" })?;
    let name = meta
        .name
        .as_deref()
        .filter(|s| !s.is_empty())
        .ok_or(ServiceError::MissingMetadata { field: "name" })?;
    Ok(ServiceName::new(namespace, name))
}

/// Whether (and why) the proxy leaves `service` alone, with kube-proxy's rules: the two
/// labels its watch selector excludes, then ExternalName, then no ClusterIP.
pub fn ignore_reason(service: &Service) -> Option<IgnoreReason> {
    let labels = service.metadata.labels.as_ref();
    if let Some(proxy) = labels.and_then(|l| l.get(LABEL_SERVICE_PROXY_NAME)) {
        return Some(IgnoreReason::OtherProxy { proxy: proxy.clone() });
    }
    if labels.is_some_and(|l| l.contains_key(LABEL_HEADLESS)) {
        return Some(IgnoreReason::HeadlessLabel);
    }
    let spec = service.spec.as_ref()?;
    if spec.type_.as_deref() == Some("ExternalName") {
        return Some(IgnoreReason::ExternalName);
    }
    match primary_cluster_ip(service) {
        None | Some("") => Some(IgnoreReason::NoClusterIp),
        Some("None") => Some(IgnoreReason::Headless),
        Some(_) => None,
    }
}

fn primary_cluster_ip(service: &Service) -> Option<&str> {
    let spec = service.spec.as_ref()?;
    match spec.cluster_ips.as_deref() {
        Some([first, ..]) => Some(first),
        _ => spec.cluster_ip.as_deref(),
    }
}

/// Reads every port of `service`. Ignored Services (see [`ignore_reason`]) have none.
pub fn service_ports(service: &Service) -> Result<ServicePortMap, ServiceError> {
    let name = object_name(&service.metadata)?;
    let (Some(spec), None) = (service.spec.as_ref(), ignore_reason(service)) else {
        return Ok(ServicePortMap::new());
    };
    let p = ServiceParser { name: &name };
    let shared = p.shared(service, spec)?;
    let mut ports = ServicePortMap::new();
    for api_port in spec.ports.iter().flatten() {
        let (key, port) = p.port(&shared, spec.type_.as_deref(), api_port)?;
        ports.insert(key, port);
    }
    Ok(ports)
}

/// Reads one Service, carrying its name into every error.
struct ServiceParser<'a> {
    name: &'a ServiceName,
}

/// The per-Service fields every port shares; `port`, `protocol`, `node_port` and
/// `target_port` are filled per port.
type SharedFields = ServicePort;

impl ServiceParser<'_> {
    fn invalid(&self, field: &'static str, value: impl fmt::Display) -> ServiceError {
        ServiceError::InvalidField {
            service: self.name.clone(),
            field,
            value: value.to_string(),
        }
    }

    fn ip(&self, field: &'static str, value: &str) -> Result<IpAddr, ServiceError> {
        parse_ip(value).map_err(|source| ServiceError::InvalidAddress {
            service: self.name.clone(),
            field,
            source,
        })
    }

    fn port_number(&self, field: &'static str, value: i32) -> Result<u16, ServiceError> {
        u16::try_from(value)
            .ok()
            .filter(|p| *p != 0)
            .ok_or_else(|| self.invalid(field, value))
    }

    fn policy(&self, field: &'static str, value: Option<&str>) -> Result<TrafficPolicy, ServiceError> {
        match value {
            None | Some("Cluster") => Ok(TrafficPolicy::Cluster),
            Some("Local") => Ok(TrafficPolicy::Local),
            Some(other) => Err(self.invalid(field, other)),
        }
    }

    fn shared(&self, service: &Service, spec: &ServiceSpec) -> Result<SharedFields, ServiceError> {
        let mut cluster_ips = Vec::new();
        let listed = match spec.cluster_ips.as_deref() {
            Some(ips) if !ips.is_empty() => ips,
            _ => spec.cluster_ip.as_slice(),
        };
        for ip in listed {
            let ip = self.ip("spec.clusterIPs", ip)?;
            if !cluster_ips.contains(&ip) {
                cluster_ips.push(ip);
            }
        }

        let mut external_ips = spec
            .external_ips
            .iter()
            .flatten()
            .map(|ip| self.ip("spec.externalIPs", ip))
            .collect::<Result<Vec<_>, _>>()?;
        sort_dedup(&mut external_ips);

        let ingress = service
            .status
            .as_ref()
            .and_then(|s| s.load_balancer.as_ref())
            .and_then(|lb| lb.ingress.as_ref());
        let mut load_balancer_ips = ingress
            .into_iter()
            .flatten()
            .filter(|ing| ing.ip_mode.as_deref() != Some("Proxy"))
            .filter_map(|ing| ing.ip.as_deref().filter(|ip| !ip.is_empty()))
            .map(|ip| self.ip("status.loadBalancer.ingress[].ip", ip))
            .collect::<Result<Vec<_>, _>>()?;
        sort_dedup(&mut load_balancer_ips);

        let mut load_balancer_source_ranges = spec
            .load_balancer_source_ranges
            .iter()
            .flatten()
            .map(|range| {
                parse_cidr(range).map_err(|source| ServiceError::InvalidAddress {
                    service: self.name.clone(),
                    field: "spec.loadBalancerSourceRanges",
                    source,
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        sort_dedup(&mut load_balancer_source_ranges);

        let session_affinity = match spec.session_affinity.as_deref() {
            None | Some("None") => None,
            Some("ClientIP") => {
                // The API server defaults the timeout; an absent config is still ClientIP.
                let timeout = spec
                    .session_affinity_config
                    .as_ref()
                    .and_then(|c| c.client_ip.as_ref())
                    .and_then(|c| c.timeout_seconds);
                let timeout_seconds = match timeout {
                    None => DEFAULT_AFFINITY_TIMEOUT_SECONDS,
                    Some(t) => u32::try_from(t)
                        .ok()
                        .filter(|t| *t > 0)
                        .ok_or_else(|| self.invalid("spec.sessionAffinityConfig.clientIP.timeoutSeconds", t))?,
                };
                Some(SessionAffinity { timeout_seconds })
            }
            Some(other) => return Err(self.invalid("spec.sessionAffinity", other)),
        };

        let internal_traffic_policy =
            self.policy("spec.internalTrafficPolicy", spec.internal_traffic_policy.as_deref())?;
        let external_traffic_policy =
            self.policy("spec.externalTrafficPolicy", spec.external_traffic_policy.as_deref())?;

        // Only a LoadBalancer Service with a Local policy has a health check; a stale value
        // left on a Service that changed type must not open a port.
        let health_check_node_port = match spec.health_check_node_port {
            Some(p)
                if p != 0
                    && spec.type_.as_deref() == Some("LoadBalancer")
                    && external_traffic_policy == TrafficPolicy::Local =>
            {
                Some(self.port_number("spec.healthCheckNodePort", p)?)
            }
            _ => None,
        };

        Ok(ServicePort {
            cluster_ips,
            port: 0,
            protocol: Protocol::Tcp,
            node_port: None,
            target_port: TargetPort::Number(0),
            external_ips,
            load_balancer_ips,
            load_balancer_source_ranges,
            session_affinity,
            internal_traffic_policy,
            external_traffic_policy,
            health_check_node_port,
            topology_mode: topology_mode(service),
        })
    }

    fn port(
        &self,
        shared: &SharedFields,
        service_type: Option<&str>,
        api: &ApiServicePort,
    ) -> Result<(ServicePortName, ServicePort), ServiceError> {
        let port = self.port_number("spec.ports[].port", api.port)?;
        let protocol = Protocol::from_api(api.protocol.as_deref())
            .ok_or_else(|| self.invalid("spec.ports[].protocol", api.protocol.as_deref().unwrap_or("")))?;
        // A node port left on a Service that became ClusterIP is not served, as upstream.
        let node_port = match api.node_port {
            Some(p) if p != 0 && matches!(service_type, Some("NodePort" | "LoadBalancer")) => {
                Some(self.port_number("spec.ports[].nodePort", p)?)
            }
            _ => None,
        };
        // Absent, zero or empty target ports default to the port, as the API server does.
        let target_port = match &api.target_port {
            Some(IntOrString::Int(n)) if *n != 0 => {
                TargetPort::Number(self.port_number("spec.ports[].targetPort", *n)?)
            }
            Some(IntOrString::String(name)) if !name.is_empty() => TargetPort::Name(name.clone()),
            _ => TargetPort::Number(port),
        };
        let key = ServicePortName::new(self.name, api.name.clone().unwrap_or_default(), protocol);
        Ok((
            key,
            ServicePort {
                port,
                protocol,
                node_port,
                target_port,
                ..shared.clone()
            },
        ))
    }
}

/// The topology-mode annotation wins over `trafficDistribution`, as in the EndpointSlice
/// controller. Unknown distributions fall back to no preference rather than failing: the
/// field only ever narrows the endpoint set, so ignoring it is always safe.
fn topology_mode(service: &Service) -> TopologyMode {
    let annotations = service.metadata.annotations.as_ref();
    let annotation = annotations.and_then(|a| {
        a.get(ANNOTATION_TOPOLOGY_MODE)
            .or_else(|| a.get(ANNOTATION_TOPOLOGY_AWARE_HINTS))
    });
    if annotation.is_some_and(|v| v.eq_ignore_ascii_case("auto")) {
        return TopologyMode::Auto;
    }
    let distribution = service.spec.as_ref().and_then(|s| s.traffic_distribution.as_deref());
    match distribution {
        Some("PreferClose" | "PreferSameZone") => TopologyMode::PreferSameZone,
        Some("PreferSameNode") => TopologyMode::PreferSameNode,
        _ => TopologyMode::None,
    }
}

fn sort_dedup<T: Ord>(v: &mut Vec<T>) {
    v.sort();
    v.dedup();
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::fixtures::service;

    fn port_named<'a>(ports: &'a ServicePortMap, name: &str, protocol: Protocol) -> &'a ServicePort {
        ports
            .iter()
            .find(|(k, _)| k.port_name == name && k.protocol == protocol)
            .map(|(_, v)| v)
            .unwrap_or_else(|| panic!("no port {name}/{protocol} in {ports:?}"))
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn cluster_ip_service_with_defaults() {
        let svc = service(json!({
            "metadata": {"namespace": "ns", "name": "web"},
            "spec": {"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                     "ports": [{"port": 80, "targetPort": 8080}]}
        }));
        let ports = service_ports(&svc).unwrap();
        assert_eq!(ports.len(), 1);
        let (key, port) = ports.iter().next().unwrap();
        assert_eq!(
            key,
            &ServicePortName::new(&ServiceName::new("ns", "web"), "", Protocol::Tcp)
        );
        assert_eq!(key.to_string(), "ns/web:/TCP");
        assert_eq!(port.cluster_ips, vec![ip("10.96.0.10")]);
        assert_eq!(port.port, 80);
        assert_eq!(port.target_port, TargetPort::Number(8080));
        assert_eq!(port.node_port, None);
        assert_eq!(port.session_affinity, None);
        assert_eq!(port.internal_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(port.external_traffic_policy, TrafficPolicy::Cluster);
        assert_eq!(port.topology_mode, TopologyMode::None);
        assert!(!port.externally_accessible());
        assert!(port.uses_cluster_endpoints());
        assert!(!port.uses_local_endpoints());
    }

    #[test]
    fn dual_stack_keeps_every_cluster_ip_primary_first() {
        let svc = service(json!({
            "metadata": {"namespace": "ns", "name": "dual"},
            "spec": {"clusterIP": "fd00::10", "clusterIPs": ["fd00::10", "10.96.0.10"],
                     "ipFamilies": ["IPv6", "IPv4"],
                     "ports": [{"name": "dns", "port": 53, "protocol": "UDP", "targetPort": "dns"},
                               {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]}
        }));
        let ports = service_ports(&svc).unwrap();
        let udp = port_named(&ports, "dns", Protocol::Udp);
        assert_eq!(udp.cluster_ips, vec![ip("fd00::10"), ip("10.96.0.10")]);
        assert_eq!(udp.cluster_ip(IpFamily::V4), Some(ip("10.96.0.10")));
        assert_eq!(udp.families().collect::<Vec<_>>(), vec![IpFamily::V6, IpFamily::V4]);
        assert_eq!(udp.target_port, TargetPort::Name("dns".into()));
        let tcp = port_named(&ports, "dns-tcp", Protocol::Tcp);
        assert_eq!(tcp.target_port, TargetPort::Number(53));
    }

    #[test]
    fn node_port_and_load_balancer_fields() {
        let svc = service(json!({
            "metadata": {"namespace": "ns", "name": "lb"},
            "spec": {"type": "LoadBalancer", "clusterIPs": ["10.96.0.20"],
                     "ports": [{"name": "http", "port": 80, "nodePort": 30080, "protocol": "TCP"},
                               {"name": "sctp", "port": 9, "nodePort": 30009, "protocol": "SCTP"}],
                     "externalIPs": ["192.0.2.9", "192.0.2.1", "192.0.2.9"],
                     "loadBalancerSourceRanges": ["198.51.100.0/24 ", "2001:db8::/32"],
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": 32000,
                     "internalTrafficPolicy": "Local",
                     "sessionAffinity": "ClientIP",
                     "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}},
            "status": {"loadBalancer": {"ingress": [
                {"ip": "203.0.113.7"},
                {"ip": "203.0.113.8", "ipMode": "Proxy"},
                {"hostname": "lb.example.com"},
                {"ip": "203.0.113.9", "ipMode": "VIP"}]}}
        }));
        let ports = service_ports(&svc).unwrap();
        let http = port_named(&ports, "http", Protocol::Tcp);
        assert_eq!(http.node_port, Some(30080));
        assert_eq!(http.external_ips, vec![ip("192.0.2.1"), ip("192.0.2.9")]);
        assert_eq!(http.load_balancer_ips, vec![ip("203.0.113.7"), ip("203.0.113.9")]);
        let ranges: Vec<String> = http
            .load_balancer_source_ranges
            .iter()
            .map(ToString::to_string)
            .collect();
        assert_eq!(ranges, ["198.51.100.0/24", "2001:db8::/32"]);
        assert_eq!(http.session_affinity, Some(SessionAffinity { timeout_seconds: 60 }));
        assert_eq!(http.health_check_node_port, Some(32000));
        assert!(http.external_policy_local() && http.internal_policy_local());
        assert!(http.uses_cluster_endpoints() && http.uses_local_endpoints());
        assert_eq!(port_named(&ports, "sctp", Protocol::Sctp).node_port, Some(30009));
    }

    #[test]
    fn affinity_timeout_defaults_to_three_hours() {
        let svc = service(json!({
            "metadata": {"namespace": "ns", "name": "sticky"},
            "spec": {"clusterIP": "10.96.0.30", "sessionAffinity": "ClientIP",
                     "ports": [{"port": 80}]}
        }));
        let ports = service_ports(&svc).unwrap();
        let port = ports.values().next().unwrap();
        assert_eq!(
            port.session_affinity,
            Some(SessionAffinity {
                timeout_seconds: 10_800
            })
        );
    }

    #[test]
    fn stale_node_port_and_health_check_are_not_served() {
        // A NodePort Service changed to ClusterIP may still carry its old values.
        let svc = service(json!({
            "metadata": {"namespace": "ns", "name": "was-np"},
            "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.31",
                     "externalTrafficPolicy": "Local", "healthCheckNodePort": 32001,
                     "ports": [{"port": 80, "nodePort": 30081}]}
        }));
        let port = service_ports(&svc).unwrap().into_values().next().unwrap();
        assert_eq!(port.node_port, None);
        assert_eq!(port.health_check_node_port, None);
        assert!(!port.external_policy_local(), "no external traffic, so Local is moot");
        assert!(!port.uses_local_endpoints());
    }

    #[test]
    fn ignored_services_have_no_ports() {
        let cases = [
            (
                json!({"metadata": {"namespace": "ns", "name": "h"},
                       "spec": {"clusterIP": "None", "clusterIPs": ["None"], "ports": [{"port": 80}]}}),
                IgnoreReason::Headless,
            ),
            (
                json!({"metadata": {"namespace": "ns", "name": "x"},
                       "spec": {"type": "ExternalName", "externalName": "example.com",
                                "ports": [{"port": 80}]}}),
                IgnoreReason::ExternalName,
            ),
            (
                json!({"metadata": {"namespace": "ns", "name": "o",
                                    "labels": {"service.kubernetes.io/service-proxy-name": ""}},
                       "spec": {"clusterIP": "10.96.0.40", "ports": [{"port": 80}]}}),
                IgnoreReason::OtherProxy { proxy: String::new() },
            ),
            (
                json!({"metadata": {"namespace": "ns", "name": "hl",
                                    "labels": {"service.kubernetes.io/headless": ""}},
                       "spec": {"clusterIP": "10.96.0.41", "ports": [{"port": 80}]}}),
                IgnoreReason::HeadlessLabel,
            ),
            (
                json!({"metadata": {"namespace": "ns", "name": "pending"},
                       "spec": {"ports": [{"port": 80}]}}),
                IgnoreReason::NoClusterIp,
            ),
        ];
        for (object, reason) in cases {
            let svc = service(object);
            assert_eq!(ignore_reason(&svc), Some(reason));
            assert_eq!(service_ports(&svc), Ok(ServicePortMap::new()));
        }
    }

    #[test]
    fn topology_mode_annotation_wins_over_traffic_distribution() {
        let mode = |annotations: serde_json::Value, distribution: serde_json::Value| {
            let svc = service(json!({
                "metadata": {"namespace": "ns", "name": "t", "annotations": annotations},
                "spec": {"clusterIP": "10.96.0.50", "trafficDistribution": distribution,
                         "ports": [{"port": 80}]}
            }));
            service_ports(&svc).unwrap().into_values().next().unwrap().topology_mode
        };
        assert_eq!(mode(json!({}), json!("PreferClose")), TopologyMode::PreferSameZone);
        assert_eq!(mode(json!({}), json!("PreferSameZone")), TopologyMode::PreferSameZone);
        assert_eq!(mode(json!({}), json!("PreferSameNode")), TopologyMode::PreferSameNode);
        assert_eq!(mode(json!({}), json!("SomethingNew")), TopologyMode::None);
        assert_eq!(
            mode(
                json!({"service.kubernetes.io/topology-mode": "Auto"}),
                json!("PreferClose")
            ),
            TopologyMode::Auto
        );
        assert_eq!(
            mode(
                json!({"service.kubernetes.io/topology-aware-hints": "auto"}),
                json!(null)
            ),
            TopologyMode::Auto
        );
    }

    #[test]
    fn invalid_fields_are_errors_not_panics() {
        let bad_ip = service(json!({
            "metadata": {"namespace": "ns", "name": "bad"},
            "spec": {"clusterIP": "10.96.0.60", "externalIPs": ["not-an-ip"], "ports": [{"port": 80}]}
        }));
        assert!(matches!(
            service_ports(&bad_ip),
            Err(ServiceError::InvalidAddress {
                field: "spec.externalIPs",
                ..
            })
        ));
        let bad_port = service(json!({
            "metadata": {"namespace": "ns", "name": "bad"},
            "spec": {"clusterIP": "10.96.0.60", "ports": [{"port": 70000}]}
        }));
        assert!(matches!(
            service_ports(&bad_port),
            Err(ServiceError::InvalidField {
                field: "spec.ports[].port",
                ..
            })
        ));
        let bad_protocol = service(json!({
            "metadata": {"namespace": "ns", "name": "bad"},
            "spec": {"clusterIP": "10.96.0.60", "ports": [{"port": 80, "protocol": "ICMP"}]}
        }));
        assert!(matches!(
            service_ports(&bad_protocol),
            Err(ServiceError::InvalidField { .. })
        ));
        let no_namespace = service(json!({"metadata": {"name": "bad"}, "spec": {}}));
        assert_eq!(
            service_ports(&no_namespace),
            Err(ServiceError::MissingMetadata { field: "namespace" })
        );
    }
}
