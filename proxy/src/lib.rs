//! Rudder's node dataplane.
//!
//! - [`model`]: the pure shared layer (change trackers, topology, desired state, diff).
//! - [`dataplane`]: one backend per mode, turning the desired state into kernel objects.
//! - [`agent`]: `rudder-proxy run`: watches, the sync loop, health and metrics.
//! - [`ebpf`]: the eBPF object loader.
//!
//! See ARCHITECTURE.md.

pub mod agent;
pub mod bench;
pub mod conntrack;
pub mod dataplane;
pub mod ebpf;
pub mod exposition;
pub mod model;
pub mod netlink;
