//! Endpoints as the dataplane sees them: EndpointSlices merged per Service into one sorted,
//! de-duplicated list of [`Endpoint`]s per [`ServicePortName`].

use std::{
    collections::{BTreeMap, BTreeSet, btree_map::Entry},
    net::IpAddr,
};

use k8s_openapi::api::discovery::v1::{Endpoint as ApiEndpoint, EndpointSlice};

use super::{
    net::{AddrError, IpFamily, parse_ip},
    service::{
        LABEL_HEADLESS, LABEL_SERVICE_PROXY_NAME, Protocol, ServiceError, ServiceName, ServicePortName, object_name,
    },
};

/// Label tying an EndpointSlice to its Service.
pub const LABEL_SERVICE_NAME: &str = "kubernetes.io/service-name";

/// One address and port that serves one Service port.
///
/// Ordered by address, then port: lists sort IPv4 before IPv6 and render reproducibly.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Endpoint {
    pub address: IpAddr,
    /// The port on the endpoint (the Service's targetPort, already resolved by the slice).
    pub port: u16,
    /// Passes its readiness probe and is not terminating: receives new traffic.
    pub ready: bool,
    /// Passes its readiness probe, terminating or not.
    pub serving: bool,
    pub terminating: bool,
    pub node_name: Option<String>,
    pub zone: Option<String>,
    /// `hints.forZones`: the zones whose nodes should prefer this endpoint.
    pub zone_hints: BTreeSet<String>,
    /// `hints.forNodes`: the nodes that should prefer this endpoint.
    pub node_hints: BTreeSet<String>,
    /// Runs on the node this proxy programs.
    pub is_local: bool,
}

impl Endpoint {
    /// Usable only when nothing ready is left, to drain connections gracefully.
    pub fn is_serving_terminating(&self) -> bool {
        self.serving && self.terminating
    }

    /// Which copy of one address:port to keep when slices disagree: a ready copy beats a
    /// stale unready one (slices are updated one at a time, so during a move both exist).
    fn preference(&self) -> (bool, bool, bool) {
        (self.ready, self.serving, self.is_local)
    }
}

/// Every Service port's endpoints.
pub type EndpointsMap = BTreeMap<ServicePortName, Vec<Endpoint>>;

/// One port an EndpointSlice serves.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SlicePort {
    pub name: String,
    pub protocol: Protocol,
    pub port: u16,
}

/// The parts of one EndpointSlice the dataplane reads. Two slices that differ only in
/// fields not read here (resourceVersion, managedFields, targetRef, …) compare equal.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SliceInfo {
    pub service: ServiceName,
    /// The slice's own name, unique within its namespace.
    pub name: String,
    pub ports: Vec<SlicePort>,
    /// Sorted. `port` is 0 here: every endpoint of a slice serves every port it lists.
    pub endpoints: Vec<Endpoint>,
}

/// An EndpointSlice the API server should not have accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SliceError {
    #[error(transparent)]
    Metadata(#[from] ServiceError),
    #[error("endpointslice {namespace}/{slice} has no {LABEL_SERVICE_NAME} label")]
    MissingServiceName { namespace: String, slice: String },
    #[error("endpointslice {namespace}/{slice}: invalid endpoint address")]
    InvalidAddress {
        namespace: String,
        slice: String,
        #[source]
        source: AddrError,
    },
    #[error("endpointslice {namespace}/{slice}: {address} is not an {family} address")]
    WrongFamily {
        namespace: String,
        slice: String,
        address: IpAddr,
        family: IpFamily,
    },
    #[error("endpointslice {namespace}/{slice}: invalid {field} {value:?}")]
    InvalidField {
        namespace: String,
        slice: String,
        field: &'static str,
        value: String,
    },
}

/// Reads one EndpointSlice. `Ok(None)` means the proxy does not use it: an FQDN slice, or
/// one labelled for another proxy or for a headless Service (kube-proxy's watch selector
/// excludes those), which the caller should treat like a deleted slice.
pub fn parse_slice(slice: &EndpointSlice, node_name: &str) -> Result<Option<SliceInfo>, SliceError> {
    let family = match slice.address_type.as_str() {
        "IPv4" => IpFamily::V4,
        "IPv6" => IpFamily::V6,
        _ => return Ok(None),
    };
    let labels = slice.metadata.labels.as_ref();
    if labels.is_some_and(|l| l.contains_key(LABEL_SERVICE_PROXY_NAME) || l.contains_key(LABEL_HEADLESS)) {
        return Ok(None);
    }
    let id = object_name(&slice.metadata)?;
    let p = SliceParser {
        namespace: &id.namespace,
        slice: &id.name,
    };
    let service = labels
        .and_then(|l| l.get(LABEL_SERVICE_NAME))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| SliceError::MissingServiceName {
            namespace: id.namespace.clone(),
            slice: id.name.clone(),
        })?;

    let mut ports = Vec::new();
    for api in slice.ports.iter().flatten() {
        // An absent port means "all ports" in the API; like kube-proxy we do not support it.
        let Some(number) = api.port.filter(|p| *p != 0) else {
            continue;
        };
        let port = u16::try_from(number).map_err(|_| p.invalid("ports[].port", number))?;
        let protocol = Protocol::from_api(api.protocol.as_deref())
            .ok_or_else(|| p.invalid("ports[].protocol", api.protocol.as_deref().unwrap_or("")))?;
        // kube-proxy skips unnamed ports; the EndpointSlice controller always writes "" for
        // an unnamed Service port, so we read absent as "" and also serve hand-made slices.
        ports.push(SlicePort {
            name: api.name.clone().unwrap_or_default(),
            protocol,
            port,
        });
    }
    ports.sort();
    ports.dedup();

    let mut endpoints = slice
        .endpoints
        .iter()
        .map(|ep| p.endpoint(ep, family, node_name))
        .collect::<Result<Vec<_>, _>>()?;
    endpoints.sort();

    Ok(Some(SliceInfo {
        service: ServiceName::new(&id.namespace, service),
        name: id.name,
        ports,
        endpoints,
    }))
}

struct SliceParser<'a> {
    namespace: &'a str,
    slice: &'a str,
}

impl SliceParser<'_> {
    fn invalid(&self, field: &'static str, value: impl ToString) -> SliceError {
        SliceError::InvalidField {
            namespace: self.namespace.to_owned(),
            slice: self.slice.to_owned(),
            field,
            value: value.to_string(),
        }
    }

    fn endpoint(&self, ep: &ApiEndpoint, family: IpFamily, node_name: &str) -> Result<Endpoint, SliceError> {
        // The API says consumers use the first address; the others are reserved.
        let first = ep
            .addresses
            .first()
            .ok_or_else(|| self.invalid("endpoints[].addresses", "[]"))?;
        let address = parse_ip(first).map_err(|source| SliceError::InvalidAddress {
            namespace: self.namespace.to_owned(),
            slice: self.slice.to_owned(),
            source,
        })?;
        if IpFamily::of(address) != family {
            return Err(SliceError::WrongFamily {
                namespace: self.namespace.to_owned(),
                slice: self.slice.to_owned(),
                address,
                family,
            });
        }
        // Absent conditions mean "unknown", which the API says to read as: ready, serving
        // as ready, not terminating.
        let conditions = ep.conditions.clone().unwrap_or_default();
        let ready = conditions.ready.unwrap_or(true);
        let serving = conditions.serving.unwrap_or(ready);
        let terminating = conditions.terminating.unwrap_or(false);
        let hints = ep.hints.as_ref();
        let zone_hints = hints
            .and_then(|h| h.for_zones.as_ref())
            .into_iter()
            .flatten()
            .map(|z| z.name.clone())
            .collect();
        let node_hints = hints
            .and_then(|h| h.for_nodes.as_ref())
            .into_iter()
            .flatten()
            .map(|n| n.name.clone())
            .collect();
        let is_local = !node_name.is_empty() && ep.node_name.as_deref() == Some(node_name);
        Ok(Endpoint {
            address,
            port: 0,
            ready,
            serving,
            terminating,
            node_name: ep.node_name.clone(),
            zone: ep.zone.clone(),
            zone_hints,
            node_hints,
            is_local,
        })
    }
}

/// Merges the slices of one Service into its endpoints per port.
///
/// An address:port listed by several slices appears once; the most useful copy wins (see
/// [`Endpoint`]'s `preference`), and among equals the first slice given. Ports without any
/// endpoint are left out.
pub fn merge_slices<'a>(slices: impl IntoIterator<Item = &'a SliceInfo>) -> EndpointsMap {
    let mut merged: BTreeMap<ServicePortName, BTreeMap<(IpAddr, u16), Endpoint>> = BTreeMap::new();
    for slice in slices {
        for port in &slice.ports {
            let key = ServicePortName::new(&slice.service, &port.name, port.protocol);
            let by_addr = merged.entry(key).or_default();
            for ep in &slice.endpoints {
                let candidate = Endpoint {
                    port: port.port,
                    ..ep.clone()
                };
                let slot = by_addr.entry((candidate.address, candidate.port));
                match slot {
                    Entry::Vacant(v) => {
                        v.insert(candidate);
                    }
                    Entry::Occupied(mut o) => {
                        if candidate.preference() > o.get().preference() {
                            o.insert(candidate);
                        }
                    }
                }
            }
        }
    }
    merged
        .into_iter()
        .filter(|(_, eps)| !eps.is_empty())
        .map(|(key, eps)| (key, eps.into_values().collect()))
        .collect()
}

/// Reads and merges any number of slices of any number of Services. Unused slices are
/// skipped; the first invalid one is an error.
pub fn endpoints_map(slices: &[EndpointSlice], node_name: &str) -> Result<EndpointsMap, SliceError> {
    let mut by_service: BTreeMap<ServiceName, BTreeMap<String, SliceInfo>> = BTreeMap::new();
    for slice in slices {
        if let Some(info) = parse_slice(slice, node_name)? {
            by_service
                .entry(info.service.clone())
                .or_default()
                .insert(info.name.clone(), info);
        }
    }
    Ok(by_service
        .values()
        .flat_map(|slices| merge_slices(slices.values()))
        .collect())
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::fixtures::{ready, simple_slice, slice};

    fn web(port_name: &str) -> ServicePortName {
        ServicePortName::new(&ServiceName::new("ns", "web"), port_name, Protocol::Tcp)
    }

    fn addrs(eps: &[Endpoint]) -> Vec<String> {
        eps.iter().map(|e| format!("{}:{}", e.address, e.port)).collect()
    }

    #[test]
    fn conditions_default_like_the_api_says() {
        let s = slice(json!({
            "metadata": {"namespace": "ns", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}],
            "endpoints": [
                {"addresses": ["10.244.1.10"]},
                {"addresses": ["10.244.1.11"], "conditions": {"ready": false}},
                {"addresses": ["10.244.1.12"],
                 "conditions": {"ready": false, "serving": true, "terminating": true}},
            ],
        }));
        let info = parse_slice(&s, "node-1").unwrap().unwrap();
        let flags: Vec<_> = info
            .endpoints
            .iter()
            .map(|e| (e.ready, e.serving, e.terminating))
            .collect();
        assert_eq!(
            flags,
            [(true, true, false), (false, false, false), (false, true, true)],
            "nil ready = true, nil serving = ready, nil terminating = false"
        );
    }

    #[test]
    fn reads_node_zone_hints_and_locality() {
        let s = slice(json!({
            "metadata": {"namespace": "ns", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["fd00::a"], "nodeName": "node-1", "zone": "z1",
                 "hints": {"forZones": [{"name": "z1"}], "forNodes": [{"name": "node-1"}]}},
                {"addresses": ["fd00::b"], "nodeName": "node-2", "zone": "z2"},
            ],
        }));
        let map = endpoints_map(&[s], "node-1").unwrap();
        let eps = &map[&web("http")];
        assert_eq!(addrs(eps), ["fd00::a:8080", "fd00::b:8080"]);
        assert!(eps[0].is_local && !eps[1].is_local);
        assert_eq!(eps[0].zone.as_deref(), Some("z1"));
        assert_eq!(eps[0].zone_hints, BTreeSet::from(["z1".to_owned()]));
        assert_eq!(eps[0].node_hints, BTreeSet::from(["node-1".to_owned()]));
        assert!(eps[1].zone_hints.is_empty());
    }

    #[test]
    fn slices_merge_per_port_and_duplicates_prefer_ready() {
        // Mid-move: 10.244.1.11 is still unready in the old slice, ready in the new one.
        let old = simple_slice(
            "web",
            "web-a",
            "http",
            8080,
            vec![
                ready("10.244.1.10", "node-1"),
                json!({"addresses": ["10.244.1.11"], "nodeName": "node-1",
                       "conditions": {"ready": false}}),
            ],
        );
        let new = simple_slice("web", "web-b", "http", 8080, vec![ready("10.244.1.11", "node-1")]);
        let other_port = simple_slice("web", "web-c", "metrics", 9090, vec![ready("10.244.2.10", "node-2")]);
        let map = endpoints_map(&[old, new, other_port], "node-1").unwrap();
        assert_eq!(map.len(), 2);
        let http = &map[&web("http")];
        assert_eq!(addrs(http), ["10.244.1.10:8080", "10.244.1.11:8080"]);
        assert!(http.iter().all(|e| e.ready));
        assert_eq!(addrs(&map[&web("metrics")]), ["10.244.2.10:9090"]);
    }

    #[test]
    fn same_address_on_two_ports_is_two_endpoints() {
        let s = slice(json!({
            "metadata": {"namespace": "ns", "name": "web-1",
                         "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "IPv4",
            "ports": [{"name": "http", "port": 8080}, {"name": "https", "port": 8443},
                      {"name": "all"}],
            "endpoints": [{"addresses": ["10.244.1.10"]}],
        }));
        let map = endpoints_map(&[s], "").unwrap();
        assert_eq!(
            map.keys().map(|k| k.port_name.as_str()).collect::<Vec<_>>(),
            ["http", "https"]
        );
        assert!(!map[&web("http")][0].is_local, "an empty node name matches nothing");
    }

    #[test]
    fn unused_slices_are_skipped() {
        let fqdn = slice(json!({
            "metadata": {"namespace": "ns", "name": "f", "labels": {"kubernetes.io/service-name": "web"}},
            "addressType": "FQDN", "endpoints": [{"addresses": ["example.com"]}]
        }));
        let other = slice(json!({
            "metadata": {"namespace": "ns", "name": "o", "labels": {
                "kubernetes.io/service-name": "web",
                "service.kubernetes.io/service-proxy-name": "someone-else"}},
            "addressType": "IPv4", "endpoints": []
        }));
        assert_eq!(parse_slice(&fqdn, "n"), Ok(None));
        assert_eq!(parse_slice(&other, "n"), Ok(None));
    }

    #[test]
    fn invalid_slices_are_errors() {
        let unlabelled = slice(json!({
            "metadata": {"namespace": "ns", "name": "x"}, "addressType": "IPv4", "endpoints": []
        }));
        assert!(matches!(
            parse_slice(&unlabelled, "n"),
            Err(SliceError::MissingServiceName { .. })
        ));
        let wrong_family = simple_slice("web", "w", "http", 80, vec![ready("fd00::1", "n")]);
        assert!(matches!(
            parse_slice(&wrong_family, "n"),
            Err(SliceError::WrongFamily { .. })
        ));
        let bad_address = simple_slice("web", "w", "http", 80, vec![ready("10.0.0.300", "n")]);
        assert!(matches!(
            parse_slice(&bad_address, "n"),
            Err(SliceError::InvalidAddress { .. })
        ));
    }
}
