//! Backends that turn the [`crate::model::DesiredState`] into kernel objects.

pub mod command;
pub mod ebpf;
pub mod iptables;
pub mod ipvs;
pub mod nftables;
pub mod seam;

pub use seam::{Dataplane, DataplaneError, SyncKind};

/// The dataplane modes, named as kube-proxy's `--proxy-mode` names them where they exist.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Mode {
    /// XDP, tc and socket-level load balancing (aya).
    Ebpf,
    Nftables,
    Iptables,
    Ipvs,
}

impl Mode {
    pub const ALL: [Mode; 4] = [Mode::Ebpf, Mode::Nftables, Mode::Iptables, Mode::Ipvs];
}
