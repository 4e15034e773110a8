//! The ebpf mode: socket-level load balancing for the node's own connections, per-packet
//! load balancing on tc for the rest, all from maps a reconciler keeps equal to the
//! desired state.
//!
//! - `tables`: the desired state in BPF terms (pure).
//! - `reconcile`: diffs and writes the maps in an order no packet can observe half-done.
//! - `maps`: the pinned kernel maps behind the reconciler.
//! - `attach`: bpffs and cgroup2 mounts, loading, and pinned links that outlive a restart.
//! - `testrun`: the programs loaded unattached and run with BPF_PROG_TEST_RUN (fixture
//!   tests and the per-packet benchmark).
//! - `maglev`: the consistent-hash tables user space computes and the programs read.
//! - `terminate`: ends socket-LB'd connected UDP sockets whose backend left.
//! - `stats`, `inspect`, `flows`: counters on `/metrics`, `rudder-proxy inspect` and
//!   `rudder-proxy flows`.
//! - `bpf_log`: the programs' records of their rare paths (`--bpf-log-level`) into `tracing`.
//!
//! The programs (in `ebpf/programs/src/lb`): `sock` (cgroup hooks), `tc` (every device),
//! `xdp` (external devices with `--bpf-lb-acceleration`; it takes only what it can finish
//! alone and passes the rest to tc).

pub mod attach;
pub mod bpf_log;
mod error;
pub mod flows;
pub mod inspect;
pub mod maglev;
pub mod maps;
pub mod packet;
pub mod reconcile;
pub mod stats;
pub mod tables;
pub mod terminate;
pub mod testrun;

use std::collections::BTreeSet;

use super::{Dataplane, DataplaneError, Mode, SyncKind};
use crate::model::DesiredState;

pub use attach::{EbpfOptions, LoadedLb};
pub use bpf_log::BpfLogLevel;
pub use error::{EbpfError, chain};

/// The ebpf mode's [`Backend`].
pub struct Ebpf {
    lb: LoadedLb,
    reconciler: reconcile::Reconciler,
    stats: Option<std::sync::Arc<stats::ServiceStats>>,
}

impl Ebpf {
    pub fn open(options: &EbpfOptions) -> Result<Self, EbpfError> {
        let reconciler = match options.maglev {
            Some(m) => reconcile::Reconciler::with_maglev(m),
            None => reconcile::Reconciler::new(),
        }
        .with_service_ids(options.lb_map_max);
        let mut lb = LoadedLb::start(options)?;
        let xdp = (options.acceleration != attach::Acceleration::Disabled)
            .then(|| lb.take_xdp_stats())
            .flatten();
        let stats = lb
            .take_stats()
            .map(|map| std::sync::Arc::new(stats::ServiceStats::new(map, reconciler.names(), xdp)));
        Ok(Self { lb, reconciler, stats })
    }
}

impl Dataplane for Ebpf {
    fn mode(&self) -> Mode {
        Mode::Ebpf
    }

    fn extra_metrics(&self) -> Option<super::seam::MetricsSource> {
        let stats = self.stats.clone()?;
        Some(std::sync::Arc::new(move || stats.render()))
    }

    fn sync(&mut self, new: &DesiredState, kind: SyncKind<'_>) -> Result<(), DataplaneError> {
        self.lb.refresh_devices()?;
        let touched: Option<BTreeSet<_>> = match kind {
            SyncKind::Full => None,
            SyncKind::Partial { diff, .. } => Some(
                diff.added
                    .iter()
                    .chain(&diff.removed)
                    .chain(diff.changed.keys())
                    .cloned()
                    .collect(),
            ),
        };
        let stats = self
            .reconciler
            .sync(&mut self.lb.maps, new, touched.as_ref())
            .map_err(|e| DataplaneError::Ebpf(EbpfError::from(e)))?;
        if !self.reconciler.unsupported.is_empty() {
            for (port, what) in std::mem::take(&mut self.reconciler.unsupported) {
                tracing::warn!(port = ?port, what, "not served by --mode ebpf yet");
            }
        }
        tracing::debug!(?stats, "ebpf maps reconciled");
        // The maps are right whatever happens here; a socket left connected is logged.
        match terminate::end_udp_sockets(&self.lb.cgroup, &self.reconciler.departed, &self.lb.sock_reverse) {
            Ok(0) => {}
            Ok(n) => tracing::info!(sockets = n, "ended connected UDP sockets to departed backends"),
            Err(error) => tracing::warn!(%error, "could not end connected UDP sockets to departed backends"),
        }
        Ok(())
    }
}
