//! Rudder's node dataplane.
//!
//! Today this holds the eBPF loader; the service model, the change trackers and the
//! per-mode backends (nftables, iptables, ipvs, ebpf) land here next. See ARCHITECTURE.md.

pub mod ebpf;
