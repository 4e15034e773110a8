//! Backends that turn the [`crate::model::DesiredState`] into kernel objects.

pub mod ipvs;
pub mod nftables;

/// The dataplane modes, named as kube-proxy's `--proxy-mode` names them where they exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// XDP, tc and socket-level load balancing (aya).
    Ebpf,
    Nftables,
    Iptables,
    Ipvs,
}
