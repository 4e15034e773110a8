//! The shared layer under every backend: what the node's dataplane should look like,
//! computed from Services, EndpointSlices and the Node. Pure: no IO, no clocks, no
//! Kubernetes client; watchers feed it objects, backends read its output.
//!
//! The flow, in module order:
//!
//! - [`service`] reads a `Service` into one [`ServicePort`] per port, keyed by
//!   [`ServicePortName`]; [`endpoints`] reads `EndpointSlice`s and merges them into one
//!   sorted endpoint list per port.
//! - [`change_tracker`] sits between the watches and the sync loop: it accumulates
//!   updates, drops those that change nothing we read, and hands over per-Service changes
//!   (plus the trigger times for the network-programming-latency metric).
//! - [`topology`] decides, for one port, which endpoints this node may use under each
//!   traffic policy ([`categorize_endpoints`], the one place that policy lives).
//! - [`desired`] turns all of it into the [`DesiredState`]: frontends, what each does
//!   (forward to an endpoint set, reject, drop), masquerading, affinity, health checks.
//! - [`diff`] compares two desired states so a backend applies only what changed.
//!
//! This mirrors upstream kube-proxy's `pkg/proxy` (trackers, `CategorizeEndpoints`) and
//! Cilium's desired-state tables, in our own types.

pub mod change_tracker;
pub mod desired;
pub mod diff;
pub mod endpoints;
pub mod net;
pub mod service;
pub mod topology;

#[cfg(test)]
pub(crate) mod fixtures;

pub use change_tracker::{
    Change, Changes, EndpointsChangeTracker, EndpointsChanges, ServiceChangeTracker, ServiceChanges,
};
pub use desired::{
    Backend, DesiredPort, DesiredState, EndpointSetId, Frontend, FrontendKind, FrontendRule, HealthCheck, Masquerade,
    ModelConfig, NodeInfo, ShortCircuit, Target,
};
pub use diff::{Diff, PortChange};
pub use endpoints::{Endpoint, EndpointsMap, SliceError};
pub use net::{IpFamily, IpNet, parse_cidr};
pub use service::{Protocol, ServiceError, ServiceName, ServicePort, ServicePortMap, ServicePortName, TrafficPolicy};
pub use topology::{Categorized, categorize_endpoints};
