//! The IPVS table a `DesiredState` asks for, and the operations to get there.
//!
//! Frontends whose target is Reject or Drop get no virtual service: IPVS cannot refuse a
//! packet, so kube-proxy's ipvs mode leaves those to its iptables helpers, and so would we
//! (the nftables filter chains); they are listed in [`IpvsState::refused`] for that helper.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::model::{DesiredState, FrontendKind, Protocol, Target};

/// The IPVS scheduler (`--ipvs-scheduler` in kube-proxy).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default)]
pub enum Scheduler {
    #[default]
    RoundRobin,
    LeastConnection,
    SourceHashing,
    MaglevHashing,
}

impl Scheduler {
    /// The kernel's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Self::RoundRobin => "rr",
            Self::LeastConnection => "lc",
            Self::SourceHashing => "sh",
            Self::MaglevHashing => "mh",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ServiceKey {
    pub address: IpAddr,
    pub port: u16,
    pub protocol: Protocol,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VirtualService {
    pub key: ServiceKey,
    pub scheduler: Scheduler,
    /// ClientIP affinity: IPVS persistence with this timeout in seconds.
    pub persistence_timeout: Option<u32>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Destination {
    pub address: IpAddr,
    pub port: u16,
    pub weight: u32,
}

/// An IPVS table plus the addresses bound to `kube-ipvs0`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct IpvsState {
    pub services: BTreeMap<ServiceKey, (VirtualService, BTreeSet<Destination>)>,
    pub bound: BTreeSet<IpAddr>,
    /// Frontends that must be refused (REJECT) or dropped by the helper rules.
    pub refused: BTreeMap<ServiceKey, Target>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    BindAddress(IpAddr),
    AddService(VirtualService),
    UpdateService(VirtualService),
    AddDestination(ServiceKey, Destination),
    DeleteDestination(ServiceKey, Destination),
    DeleteService(ServiceKey),
    UnbindAddress(IpAddr),
}

/// The table for `state`: a virtual service per forwarding frontend, with the endpoint set
/// its rule forwards to as destinations (weight 1).
pub fn desired_table(state: &DesiredState, scheduler: Scheduler) -> IpvsState {
    let mut out = IpvsState::default();
    for (name, port) in &state.ports {
        for (frontend, rule) in &port.frontends {
            let key = ServiceKey {
                address: frontend.address,
                port: frontend.port,
                protocol: name.protocol,
            };
            let Target::Forward(set) = rule.target else {
                out.refused.insert(key, rule.target.clone());
                continue;
            };
            let destinations = port
                .endpoint_sets
                .get(&set)
                .into_iter()
                .flatten()
                .map(|b| Destination {
                    address: b.address,
                    port: b.port,
                    weight: 1,
                })
                .collect();
            let service = VirtualService {
                key,
                scheduler,
                persistence_timeout: port.affinity.map(|a| a.timeout_seconds),
            };
            out.services.insert(key, (service, destinations));
            // NodePorts arrive on the node's own addresses; everything else must be made
            // local for the kernel to accept it.
            if frontend.kind != FrontendKind::NodePort {
                out.bound.insert(frontend.address);
            }
        }
    }
    out
}

/// Operations that turn `current` into `desired`, in an order that never leaves a
/// forwarding service without destinations: bind, add/update services, add destinations,
/// then delete destinations, services and bindings.
pub fn plan(current: &IpvsState, desired: &IpvsState) -> Vec<Op> {
    let mut ops = Vec::new();
    ops.extend(desired.bound.difference(&current.bound).map(|a| Op::BindAddress(*a)));
    let empty = BTreeSet::new();
    for (key, (service, _)) in &desired.services {
        match current.services.get(key) {
            None => ops.push(Op::AddService(service.clone())),
            Some((old, _)) if old != service => ops.push(Op::UpdateService(service.clone())),
            Some(_) => {}
        }
    }
    for (key, (_, dests)) in &desired.services {
        let old = current.services.get(key).map_or(&empty, |(_, d)| d);
        ops.extend(dests.difference(old).map(|d| Op::AddDestination(*key, *d)));
    }
    for (key, (_, dests)) in &desired.services {
        let old = current.services.get(key).map_or(&empty, |(_, d)| d);
        ops.extend(old.difference(dests).map(|d| Op::DeleteDestination(*key, *d)));
    }
    ops.extend(
        current
            .services
            .keys()
            .filter(|k| !desired.services.contains_key(*k))
            .map(|k| Op::DeleteService(*k)),
    );
    ops.extend(current.bound.difference(&desired.bound).map(|a| Op::UnbindAddress(*a)));
    ops
}
