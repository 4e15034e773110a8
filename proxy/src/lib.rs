//! Rudder's node dataplane.
//!
//! Today this holds the eBPF loader and the shared service model (`model`: change
//! trackers, topology, desired state and its diff); the per-mode backends (nftables,
//! iptables, ipvs, ebpf) land here next. See ARCHITECTURE.md.

pub mod dataplane;
pub mod ebpf;
pub mod model;
