//! `rudder-proxy bench`: the node's own benchmarks, run as root inside network namespaces
//! the bench creates and removes (no cluster needed). See `SCHEMA.md` for the report.
//!
//! The framework:
//! - [`cli`]: the flags, the suite list ([`cli::Suite`]: where a new suite is added), what
//!   the node can run, the run itself and the output directory.
//! - [`worker`]: one measurement in a fresh `rbench-<pid>-*` namespace (the binary
//!   re-executed as the hidden `bench-worker`), pinned to one CPU.
//! - [`stats`]: min/median/max over rounds, ratios with their range, the "within spread"
//!   flag. [`report`]: the versioned JSON report and its markdown. [`plot`]: SVG curves.
//! - [`machine`]: the node (kernel, CPU, memory) and its capabilities (BPF, nft, iptables,
//!   IP_VS), probed the way the suites use them. [`cleanup`]: guards, the sweep, the
//!   SIGINT/SIGTERM handler. [`progress`]: the bar.
//!
//! [`memory`]: the real agent's resident memory after its first full sync from a real API
//! server, per mode and size.
//!
//! Suites: [`packet_suite`] (the ebpf programs' per-packet cost, [`packet`] measures one
//! size) and [`sync_suite`] (sync times per mode beside kube-proxy's layouts, [`run`]
//! measures one mode and size; [`synthetic`] is the workload, [`kube_proxy`] the baselines).
//! A suite exposes `run(&Opts, &Progress) -> anyhow::Result<Report>` and
//! `Report::table()`. [`churn`] and [`first_packet`] send real packets through a mode's
//! dataplane, programmed by the agent's own sync loop ([`proxy_under_test`]) in namespaces of
//! their own ([`topology`]): the latency from an EndpointSlice change to its new endpoint
//! answering, and connection setup through a ClusterIP vs the pod IP as Services grow.

pub mod churn;
pub mod cleanup;
pub mod cli;
pub mod first_packet;
pub mod kube_proxy;
pub mod machine;
pub mod memory;
pub mod packet;
pub mod packet_suite;
pub mod plot;
pub mod progress;
pub mod proxy_under_test;
pub mod report;
pub mod run;
pub mod spread;
pub mod stats;
pub mod sync_suite;
pub mod synthetic;
pub mod topology;
pub mod worker;

use std::time::Duration;

pub use progress::Progress;
pub use stats::{Ratio, Stat};

/// What a suite is asked to do; the framework maps the flags onto it (clap-free).
#[derive(Debug, Clone)]
pub struct Opts {
    /// Service counts; empty: the suite's own defaults.
    pub sizes: Vec<usize>,
    /// The modes to run, already limited to what this node can run; empty: every mode the
    /// suite has that the node can run (see `cli::Plan`).
    pub modes: Vec<String>,
    /// Rounds over all (size, mode) pairs, interleaved; every figure is min/median/max
    /// over them.
    pub rounds: usize,
    /// One untimed run at the smallest size first.
    pub warmup: bool,
    /// The CPU measured work is pinned to (None: not pinned).
    pub cpu: Option<usize>,
    /// packet: runs per case (the `repeat` count and the number of single runs).
    pub runs: u32,
    /// sync: one-change and scale-up syncs per run.
    pub reps: usize,
    /// churn: changes per mode and size (None: the suite's default).
    pub changes: Option<usize>,
    /// first-packet: connections per path per round (None: the suite's default).
    pub connections: Option<usize>,
    /// memory: the `rudder` binary (None: beside this binary, then PATH).
    pub rudder: Option<std::path::PathBuf>,
    /// At most this long before each measurement, waiting for idle CPUs.
    pub settle: Duration,
    pub capabilities: machine::Capabilities,
}

impl Opts {
    pub fn sizes_or(&self, defaults: &[usize]) -> Vec<usize> {
        if self.sizes.is_empty() {
            defaults.to_vec()
        } else {
            self.sizes.clone()
        }
    }

    /// Round `round`'s order of `items`: every round visits all, each starting one further
    /// along, so no item always runs first (after a namespace teardown) or last.
    pub fn interleaved<T: Clone>(items: &[T], round: usize) -> Vec<T> {
        let mut v = items.to_vec();
        if !v.is_empty() {
            let k = round % v.len();
            v.rotate_left(k);
        }
        v
    }
}
