//! The IPVS table a `DesiredState` asks for, and the operations to get there.
//!
//! Frontends whose target is Reject or Drop get no virtual service (their addresses are
//! still bound): the helper rules ([`super::helpers`]) refuse them before IPVS would see
//! them; they are listed in [`IpvsState::refused`].

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use crate::model::{DesiredState, FrontendKind, Protocol, Target};

/// The IPVS scheduler (`--ipvs-scheduler`, named as the kernel and kube-proxy name them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, clap::ValueEnum)]
pub enum Scheduler {
    #[default]
    #[value(name = "rr")]
    RoundRobin,
    #[value(name = "lc")]
    LeastConnection,
    #[value(name = "sh")]
    SourceHashing,
    #[value(name = "mh")]
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
    /// What the kernel reports: active plus inactive connections per real server (absent
    /// means none), which decides when a drained one may go.
    pub connections: BTreeMap<(ServiceKey, IpAddr, u16), u32>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    BindAddress(IpAddr),
    AddService(VirtualService),
    UpdateService(VirtualService),
    AddDestination(ServiceKey, Destination),
    /// A new weight for an existing real server: 0 drains it, 1 takes it back.
    UpdateDestination(ServiceKey, Destination),
    DeleteDestination(ServiceKey, Destination),
    DeleteService(ServiceKey),
    UnbindAddress(IpAddr),
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{:?} {}",
            self.protocol,
            std::net::SocketAddr::new(self.address, self.port)
        )
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let dest = |d: &Destination| std::net::SocketAddr::new(d.address, d.port);
        match self {
            Self::BindAddress(a) => write!(f, "binding {a} to kube-ipvs0"),
            Self::UnbindAddress(a) => write!(f, "unbinding {a} from kube-ipvs0"),
            Self::AddService(s) => write!(f, "adding virtual service {}", s.key),
            Self::UpdateService(s) => write!(f, "updating virtual service {}", s.key),
            Self::DeleteService(k) => write!(f, "deleting virtual service {k}"),
            Self::AddDestination(k, d) => write!(f, "adding real server {} to {k}", dest(d)),
            Self::UpdateDestination(k, d) => {
                write!(f, "setting real server {} of {k} to weight {}", dest(d), d.weight)
            }
            Self::DeleteDestination(k, d) => write!(f, "deleting real server {} of {k}", dest(d)),
        }
    }
}

/// The steps of a [`plan`], in its order. A handle may send one step's operations
/// together (each still answered on its own), but starts a step only when every earlier
/// one succeeded: removals never run after a failed addition, so a failed sync never
/// leaves a forwarding service without the real servers meant to replace the old ones.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Stage {
    Bind,
    Services,
    Destinations,
    /// Draining (weight 0) and deleting departing real servers.
    Departures,
    ServiceRemovals,
    Unbind,
}

impl Stage {
    pub fn name(self) -> &'static str {
        match self {
            Self::Bind => "bind addresses",
            Self::Services => "add/update virtual services",
            Self::Destinations => "add/reweigh real servers",
            Self::Departures => "drain/delete real servers",
            Self::ServiceRemovals => "delete virtual services",
            Self::Unbind => "unbind addresses",
        }
    }
}

impl Op {
    pub fn stage(&self) -> Stage {
        match self {
            Self::BindAddress(_) => Stage::Bind,
            Self::AddService(_) | Self::UpdateService(_) => Stage::Services,
            Self::AddDestination(..) => Stage::Destinations,
            Self::UpdateDestination(_, d) if d.weight > 0 => Stage::Destinations,
            Self::UpdateDestination(..) | Self::DeleteDestination(..) => Stage::Departures,
            Self::DeleteService(_) => Stage::ServiceRemovals,
            Self::UnbindAddress(_) => Stage::Unbind,
        }
    }
}

/// A plan cut into its steps: runs of operations of one [`Stage`].
pub fn stages(ops: &[Op]) -> impl Iterator<Item = (Stage, &[Op])> {
    ops.chunk_by(|a, b| a.stage() == b.stage())
        .map(|run| (run[0].stage(), run))
}

/// The table for `state`: a virtual service per forwarding frontend, with the endpoint set
/// its rule forwards to as destinations (weight 1).
pub fn desired_table(state: &DesiredState, scheduler: Scheduler) -> IpvsState {
    table_of(state.ports.iter(), scheduler)
}

/// The table for some ports only (a partial sync's touched ones).
pub fn table_of<'a>(
    ports: impl Iterator<Item = (&'a crate::model::ServicePortName, &'a crate::model::DesiredPort)>,
    scheduler: Scheduler,
) -> IpvsState {
    let mut out = IpvsState::default();
    for (name, port) in ports {
        for (frontend, rule) in &port.frontends {
            let key = ServiceKey {
                address: frontend.address,
                port: frontend.port,
                protocol: name.protocol,
            };
            // NodePorts arrive on the node's own addresses; everything else must be made
            // local for the kernel to accept it (refused ones too: the filter rules that
            // refuse them see only packets that route to this node).
            if frontend.kind != FrontendKind::NodePort {
                out.bound.insert(frontend.address);
            }
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
        }
    }
    out
}

/// Operations that turn `current` into `desired`, in an order that never leaves a
/// forwarding service without destinations: bind, add/update services, add or reweigh
/// destinations, then remove destinations, services and bindings.
///
/// A real server that leaves is removed gracefully, as kube-proxy's graceful termination
/// does: a TCP one that still has connections first gets weight 0 (no new connections;
/// established ones finish) and is deleted by a later sync once the kernel counts none;
/// UDP and SCTP ones, and TCP ones without connections, go at once (with
/// `net.ipv4.vs.expire_nodest_conn` their flows move on their next packet).
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
    let by_addr = |d: &BTreeSet<Destination>| -> BTreeMap<(IpAddr, u16), Destination> {
        d.iter().map(|d| ((d.address, d.port), *d)).collect()
    };
    for (key, (_, dests)) in &desired.services {
        let old = by_addr(current.services.get(key).map_or(&empty, |(_, d)| d));
        for d in dests {
            match old.get(&(d.address, d.port)) {
                None => ops.push(Op::AddDestination(*key, *d)),
                Some(o) if o.weight != d.weight => ops.push(Op::UpdateDestination(*key, *d)),
                Some(_) => {}
            }
        }
    }
    for (key, (_, dests)) in &desired.services {
        let want = by_addr(dests);
        for d in current.services.get(key).map_or(&empty, |(_, d)| d) {
            if want.contains_key(&(d.address, d.port)) {
                continue;
            }
            let busy = current
                .connections
                .get(&(*key, d.address, d.port))
                .is_some_and(|n| *n > 0);
            if key.protocol == Protocol::Tcp && busy {
                if d.weight != 0 {
                    ops.push(Op::UpdateDestination(*key, Destination { weight: 0, ..*d }));
                }
            } else {
                ops.push(Op::DeleteDestination(*key, *d));
            }
        }
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

/// Whether `current` still holds real servers that are draining (so another sync must
/// come to delete them).
pub fn draining(current: &IpvsState, desired: &IpvsState) -> bool {
    desired.services.iter().any(|(key, (_, dests))| {
        current.services.get(key).is_some_and(|(_, have)| {
            have.iter()
                .any(|d| !dests.iter().any(|w| w.address == d.address && w.port == d.port))
        })
    })
}
