//! The seam between the sync loop and the per-mode dataplanes (kube-proxy's per-mode
//! "proxiers"): the loop computes one [`DesiredState`] and its [`Diff`]; a backend only
//! turns that into kernel objects.

use super::{Mode, command::CommandError, ipvs::IpvsError, nftables};
use crate::model::{DesiredState, Diff};

/// What the kernel is known to hold when a sync starts.
#[derive(Debug, Clone, Copy)]
pub enum SyncKind<'a> {
    /// Unknown (first sync, a failed sync, or the periodic resync): write everything.
    Full,
    /// Exactly `old`, as the previous successful sync wrote it; `diff` is `old` → new.
    Partial { old: &'a DesiredState, diff: &'a Diff },
}

/// One dataplane mode.
///
/// A `sync` either programs all of `new` or returns an error and leaves the kernel as the
/// previous successful sync left it: backends apply each sync as one kernel transaction (or,
/// where the kernel has none, in an order that keeps every intermediate state valid).
pub trait Dataplane: Send {
    fn mode(&self) -> Mode;
    fn sync(&mut self, new: &DesiredState, kind: SyncKind<'_>) -> Result<(), DataplaneError>;
    /// More Prometheus text for `/metrics` (the ebpf mode's per-Service counters).
    fn extra_metrics(&self) -> Option<MetricsSource> {
        None
    }
}

/// Renders Prometheus text on demand, from the metrics server's thread.
pub type MetricsSource = std::sync::Arc<dyn Fn() -> String + Send + Sync>;

#[derive(Debug, thiserror::Error)]
pub enum DataplaneError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error(transparent)]
    Ipvs(#[from] IpvsError),
    #[error("{what}: {source}")]
    Netlink {
        what: &'static str,
        source: crate::netlink::NetlinkError,
    },
    #[error("{what}: {source}")]
    Readback {
        what: &'static str,
        #[source]
        source: nftables::readback::ReadbackError,
    },
    /// The ebpf mode's error and its causes in one message: this is what the sync loop
    /// and the CLI log.
    #[error("--mode ebpf: {}", super::ebpf::chain(.0))]
    Ebpf(super::ebpf::EbpfError),
}

impl From<super::ebpf::EbpfError> for DataplaneError {
    fn from(e: super::ebpf::EbpfError) -> Self {
        Self::Ebpf(e)
    }
}

/// Opens the backend for `mode`, checking first that the kernel can run it.
pub fn open(
    mode: Mode,
    ebpf: &super::ebpf::EbpfOptions,
    ipvs_scheduler: super::ipvs::Scheduler,
) -> Result<Box<dyn Dataplane>, DataplaneError> {
    match mode {
        Mode::Nftables => Ok(Box::new(nftables::Nftables)),
        Mode::Ipvs => {
            super::ipvs::load_modules();
            super::ipvs::preflight(std::path::Path::new("/proc"))?;
            let handle = super::ipvs::netlink::NetlinkIpvs::open()?;
            super::ipvs::apply::set_sysctls()?;
            Ok(Box::new(super::ipvs::seam::Ipvs {
                handle,
                scheduler: ipvs_scheduler,
                helpers: Some(super::ipvs::apply::HelperRules::new()),
                timings: Default::default(),
            }))
        }
        Mode::Iptables => Ok(Box::new(super::iptables::Iptables::new(
            super::iptables::apply::detect(),
        ))),
        Mode::Ebpf => Ok(Box::new(super::ebpf::Ebpf::open(ebpf)?)),
    }
}

/// Removes what `mode` installs (the ebpf mode's pins under `ebpf.bpf_root`). Succeeds when
/// nothing is installed.
pub fn cleanup(mode: Mode, ebpf: &super::ebpf::EbpfOptions) -> Result<(), DataplaneError> {
    match mode {
        Mode::Nftables => nftables::apply::cleanup(),
        Mode::Ipvs => Ok(super::ipvs::netlink::cleanup()?),
        Mode::Iptables => super::iptables::apply::cleanup(),
        Mode::Ebpf => Ok(super::ebpf::attach::cleanup(&ebpf.bpf_root)?),
    }
}

/// Removes the leftovers of every mode but `keep` (all of them for `None`), as kube-proxy
/// does on start, so switching modes never leaves two dataplanes fighting over a packet.
/// Best effort: returns what could not be removed.
pub fn cleanup_others(keep: Option<Mode>, ebpf: &super::ebpf::EbpfOptions) -> Vec<(Mode, DataplaneError)> {
    Mode::ALL
        .into_iter()
        .filter(|m| Some(*m) != keep)
        .filter_map(|m| cleanup(m, ebpf).err().map(|e| (m, e)))
        .collect()
}
