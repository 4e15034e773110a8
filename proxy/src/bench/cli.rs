//! `rudder-proxy bench`: the flags, the suites, what this node can run, and the run:
//! suites in order, each one's refusals recorded, the report, table and plots written to
//! `--out`.

use std::{collections::BTreeMap, path::PathBuf, time::Duration};

use anyhow::{Context, Result};

use crate::dataplane::Mode;

use super::{
    Opts, Progress, churn, cleanup, first_packet,
    machine::{Capabilities, Machine},
    memory, packet_suite,
    report::{self, Failure, Refusal},
    sync_suite, worker,
};

/// The suites `--suite` picks from. A new suite is a variant here, its row in
/// [`Suite::needs`] and its arm in [`Suite::run`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Suite {
    /// The ebpf programs' per-packet cost by case and Service count (BPF_PROG_TEST_RUN).
    Packet,
    /// Cold, one-change and scale-up syncs per mode, with kube-proxy's layouts.
    Sync,
    /// Network programming latency under a steady rate of EndpointSlice changes: from each
    /// change to its new endpoint answering a real connection, per mode.
    Churn,
    /// Connection setup through a ClusterIP vs the pod IP directly as Services grow.
    FirstPacket,
    /// The real agent's resident memory after its first full sync from a real API server
    /// (`rudder server`, found with --rudder), per mode and Service count.
    Memory,
}

/// The agent modes the churn and first-packet suites run (ipvs is not among them yet).
const AGENT_MODES: [Mode; 3] = [Mode::Ebpf, Mode::Nftables, Mode::Iptables];

fn agent_mode_needs(mode: Mode, caps: &Capabilities) -> Vec<(&'static str, &super::machine::Capability)> {
    match mode {
        Mode::Ebpf => vec![("bpf", &caps.bpf), ("bpffs", &caps.bpffs)],
        Mode::Nftables => vec![("nft", &caps.nft)],
        Mode::Iptables => vec![("iptables-legacy", &caps.iptables_legacy)],
        Mode::Ipvs => vec![("ipvs", &caps.ip_vs)],
    }
}

fn mode_name(mode: Mode) -> String {
    clap::ValueEnum::to_possible_value(&mode).map_or_else(|| format!("{mode:?}"), |v| v.get_name().to_owned())
}

fn agent_modes(names: &[String]) -> Result<Vec<Mode>> {
    names
        .iter()
        .map(|n| {
            <Mode as clap::ValueEnum>::from_str(n, true)
                .map_err(|_| anyhow::anyhow!("--modes {n:?}: want ebpf, nftables or iptables for this suite"))
        })
        .collect()
}

/// What a suite produced, in the shapes the framework writes.
pub struct SuiteOutput {
    pub report: serde_json::Value,
    pub table: String,
    /// (file name, SVG document).
    pub plots: Vec<(String, String)>,
}

impl Suite {
    pub fn name(self) -> String {
        clap::ValueEnum::to_possible_value(&self).map_or_else(|| format!("{self:?}"), |v| v.get_name().to_owned())
    }

    /// What the whole suite needs of the node (per-mode needs are the suite's own).
    fn needs(self, caps: &Capabilities) -> Vec<(&'static str, &super::machine::Capability)> {
        match self {
            Self::Packet => vec![("bpf", &caps.bpf)],
            Self::Sync | Self::Churn | Self::FirstPacket | Self::Memory => vec![],
        }
    }

    /// Modes this node cannot run, with the reason; the rest are what the suite gets.
    fn plan_modes(self, wanted: &[String], caps: &Capabilities) -> (Vec<String>, Vec<Refusal>) {
        match self {
            Self::Sync => {
                let modes: Vec<_> = sync_suite::MODES
                    .into_iter()
                    .filter(|m| wanted.is_empty() || wanted.contains(&worker::mode_name(*m)))
                    .collect();
                let (mut run, mut refused) = (Vec::new(), Vec::new());
                for m in modes {
                    match caps.refusal(&sync_suite::needs(m, caps)) {
                        None => run.push(worker::mode_name(m)),
                        Some(reason) => refused.push(Refusal {
                            suite: self.name(),
                            mode: Some(worker::mode_name(m)),
                            reason,
                        }),
                    }
                }
                (run, refused)
            }
            Self::Packet => (Vec::new(), Vec::new()),
            Self::Churn | Self::FirstPacket | Self::Memory => {
                let (mut run, mut refused) = (Vec::new(), Vec::new());
                for m in AGENT_MODES {
                    let name = mode_name(m);
                    if !wanted.is_empty() && !wanted.contains(&name) {
                        continue;
                    }
                    match caps.refusal(&agent_mode_needs(m, caps)) {
                        None => run.push(name),
                        Some(reason) => refused.push(Refusal {
                            suite: self.name(),
                            mode: Some(name),
                            reason,
                        }),
                    }
                }
                (run, refused)
            }
        }
    }

    fn run(self, opts: &Opts, progress: &Progress) -> Result<SuiteOutput> {
        match self {
            Self::Packet => {
                let r = packet_suite::run(opts, progress)?;
                Ok(SuiteOutput {
                    table: r.table(),
                    plots: r.plots()?,
                    report: serde_json::to_value(&r)?,
                })
            }
            Self::Sync => {
                let r = sync_suite::run(opts, progress)?;
                Ok(SuiteOutput {
                    table: r.table(),
                    plots: r.plots()?,
                    report: serde_json::to_value(&r)?,
                })
            }
            Self::Churn => {
                let defaults = churn::Opts::default();
                let o = churn::Opts {
                    modes: agent_modes(&opts.modes)?,
                    services: opts.sizes_or(&defaults.services),
                    changes: opts.changes.unwrap_or(defaults.changes),
                    ..defaults
                };
                let r = churn::run(&o, &|line| progress.status(line))?;
                Ok(SuiteOutput {
                    table: r.table(),
                    plots: Vec::new(),
                    report: serde_json::to_value(&r)?,
                })
            }
            Self::FirstPacket => {
                let defaults = first_packet::Opts::default();
                let o = first_packet::Opts {
                    modes: agent_modes(&opts.modes)?,
                    services: opts.sizes_or(&defaults.services),
                    connections: opts.connections.unwrap_or(defaults.connections),
                    rounds: opts.rounds.max(1),
                    ..defaults
                };
                let r = first_packet::run(&o, &|line| progress.status(line))?;
                Ok(SuiteOutput {
                    table: r.table(),
                    plots: Vec::new(),
                    report: serde_json::to_value(&r)?,
                })
            }
            Self::Memory => {
                let defaults = memory::Opts::default();
                let o = memory::Opts {
                    rudder: opts.rudder.clone(),
                    modes: opts.modes.clone(),
                    sizes: opts.sizes_or(&defaults.sizes),
                    rounds: opts.rounds.max(1),
                    ..defaults
                };
                let r = memory::run(&o, &|line| progress.status(line))?;
                Ok(SuiteOutput {
                    table: r.table(),
                    plots: Vec::new(),
                    report: serde_json::to_value(&r)?,
                })
            }
        }
    }
}

/// `rudder-proxy bench` flags.
#[derive(Debug, Clone, clap::Args)]
pub struct BenchArgs {
    /// Suites to run, in order.
    #[arg(long, value_enum, value_delimiter = ',', default_value = "packet,sync")]
    pub suite: Vec<Suite>,
    /// Service counts (default: each suite's own; packet 1000,10000,100000; sync
    /// 1000,5000,10000).
    #[arg(long, value_delimiter = ',')]
    pub sizes: Vec<usize>,
    /// Modes to run (default: all the node can run). sync: rudder-ebpf, rudder-nftables,
    /// kube-proxy-nftables, rudder-iptables-legacy, kube-proxy-iptables-legacy,
    /// rudder-iptables-nft, kube-proxy-iptables-nft, rudder-ipvs, kube-proxy-ipvs.
    #[arg(long, value_delimiter = ',')]
    pub modes: Vec<String>,
    /// Rounds over every (size, mode), interleaved; figures are min/median/max over them.
    #[arg(long, default_value_t = 3)]
    pub rounds: usize,
    /// Skip the untimed warm-up run each suite starts with.
    #[arg(long)]
    pub no_warmup: bool,
    /// packet: runs per case (the `repeat` count and the number of single runs).
    #[arg(long, default_value_t = 1_000_000)]
    pub runs: u32,
    /// sync: one-change and scale-up syncs per run.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// churn: EndpointSlice changes per mode and size (default 1000, at 50 per second).
    #[arg(long)]
    pub changes: Option<usize>,
    /// first-packet: connections per path per round (default 1000).
    #[arg(long)]
    pub connections: Option<usize>,
    /// memory: the `rudder` binary that serves the API (default: beside this binary, then
    /// PATH).
    #[arg(long)]
    pub rudder: Option<PathBuf>,
    /// Wait at most this long (seconds) before each measurement for the CPUs to go idle
    /// (the kernel tears the previous namespace down in the background).
    #[arg(long, default_value_t = 10.0)]
    pub settle: f64,
    /// The CPU to pin measured work to (default: the last one this process may use).
    #[arg(long, conflicts_with = "no_pin")]
    pub cpu: Option<usize>,
    /// Do not pin measured work to a CPU.
    #[arg(long)]
    pub no_pin: bool,
    /// Where to write report.json, report.md and the plots (default:
    /// ./rudder-bench-<UTC timestamp>).
    #[arg(long)]
    pub out: Option<PathBuf>,
}

/// Runs the bench; the exit code is 0 when every suite that was not refused ran.
pub fn main(args: BenchArgs) -> Result<i32> {
    let started = jiff::Timestamp::now();
    let clock = std::time::Instant::now();
    let machine = Machine::probe();
    let capabilities = Capabilities::probe();
    if let Some(why) = capabilities.refusal(&[("root", &capabilities.root)]) {
        anyhow::bail!("rudder-proxy bench: {why}");
    }
    cleanup::install_signal_handler().context("installing the SIGINT/SIGTERM handler")?;
    // Leftovers of an earlier run that was killed outright (SIGKILL, a crash).
    let stale = cleanup::sweep();
    if !stale.is_empty() {
        tracing::info!(removed = %stale.join(", "), "removed leftovers of an earlier bench run");
    }
    for m in &args.modes {
        anyhow::ensure!(
            sync_suite::parse_mode(m).is_some(),
            "--modes {m:?}: not a mode; want one of {}",
            sync_suite::MODES.map(worker::mode_name).join(", ")
        );
    }
    anyhow::ensure!(!args.sizes.contains(&0), "--sizes: a Service count must be at least 1");
    let out = args
        .out
        .clone()
        .unwrap_or_else(|| PathBuf::from(format!("rudder-bench-{}", started.strftime("%Y%m%dT%H%M%SZ"))));
    std::fs::create_dir_all(&out).with_context(|| format!("--out {}", out.display()))?;
    let cpu = if args.no_pin {
        None
    } else {
        args.cpu.or_else(worker::default_cpu)
    };
    let progress = Progress::new();
    let (mut refused, mut failed) = (Vec::new(), Vec::new());
    let mut suites = BTreeMap::new();
    let mut tables = Vec::new();
    let mut files = Vec::new();
    for &suite in &args.suite {
        if let Some(reason) = capabilities.refusal(&suite.needs(&capabilities)) {
            let r = Refusal {
                suite: suite.name(),
                mode: None,
                reason,
            };
            progress.println(&r.to_string());
            refused.push(r);
            continue;
        }
        let (modes, mode_refusals) = suite.plan_modes(&args.modes, &capabilities);
        for r in &mode_refusals {
            progress.println(&r.to_string());
        }
        refused.extend(mode_refusals);
        let opts = Opts {
            sizes: args.sizes.clone(),
            modes,
            rounds: args.rounds.max(1),
            warmup: !args.no_warmup,
            cpu,
            runs: args.runs.max(1),
            reps: args.reps.max(1),
            changes: args.changes,
            connections: args.connections,
            rudder: args.rudder.clone(),
            settle: Duration::from_secs_f64(args.settle.max(0.0)),
            capabilities: capabilities.clone(),
        };
        match suite.run(&opts, &progress) {
            Ok(output) => {
                for (name, svg) in &output.plots {
                    std::fs::write(out.join(name), svg).with_context(|| format!("writing {name}"))?;
                    files.push(name.clone());
                }
                tables.push(format!("## {}\n\n{}", suite.name(), output.table));
                suites.insert(suite.name(), output.report);
            }
            Err(e) => {
                progress.println(&format!("{} FAILED: {e:#}", suite.name()));
                failed.push(Failure {
                    suite: suite.name(),
                    error: format!("{e:#}"),
                });
            }
        }
    }
    cleanup::park_if_interrupted();
    progress.finish();
    files.insert(0, "report.md".into());
    let report = report::Report {
        schema_version: report::SCHEMA_VERSION,
        rudder_version: env!("CARGO_PKG_VERSION").to_owned(),
        command: std::env::args().collect(),
        started_at: started.to_string(),
        finished_at: jiff::Timestamp::now().to_string(),
        duration_s: clock.elapsed().as_secs_f64(),
        machine,
        capabilities,
        options: report::Options {
            suites: args.suite.iter().map(|s| s.name()).collect(),
            sizes: args.sizes.clone(),
            modes: args.modes.clone(),
            rounds: args.rounds.max(1),
            warmup: !args.no_warmup,
            cpu,
            runs: args.runs,
            reps: args.reps,
            settle_s: args.settle,
        },
        refused,
        failed,
        suites,
        files,
    };
    let markdown = format!("{}\n{}", report.header(), tables.join("\n"));
    std::fs::write(out.join("report.md"), &markdown).context("writing report.md")?;
    std::fs::write(out.join("report.json"), serde_json::to_string_pretty(&report)?).context("writing report.json")?;
    println!("{markdown}");
    println!("wrote {}", out.join("report.json").display());
    Ok(if report.failed.is_empty() { 0 } else { 1 })
}
