//! `rudder-proxy`: the node dataplane binary.

use anyhow::{Context, Result};
use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};
use rudder_abi::names;
use rudder_proxy::{
    agent::{self, RunArgs},
    ebpf::counter::{self, Counter},
};

/// Measured with `bench::memory` at 10k Services × 10 endpoints: glibc's malloc kept the
/// cold sync's freed pages resident between the long-lived objects (RSS 169 MiB in
/// nftables mode for ~70 MiB live, `malloc_trim` notwithstanding); jemalloc, returning
/// freed pages at once, holds 105 MiB.
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

/// jemalloc's options, read at its start (its `malloc_conf` symbol, prefixed by the crate):
/// freed pages go back to the kernel at once instead of after the default 10 s decay (and
/// with `MADV_DONTNEED`, which RSS sees, not `MADV_FREE`).
#[unsafe(export_name = "_rjem_malloc_conf")]
#[used]
static JEMALLOC_CONF: ConfString = ConfString(c"dirty_decay_ms:0,muzzy_decay_ms:0".as_ptr());

/// A C `const char *` (a `&CStr` is a fat pointer, which C cannot read).
#[repr(transparent)]
struct ConfString(*const std::ffi::c_char);

// SAFETY: points at an immutable static string.
unsafe impl Sync for ConfString {}

#[derive(Parser)]
#[command(
    name = "rudder-proxy",
    version,
    about = "Rudder's node dataplane (a kube-proxy replacement)"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Program this node's kernel for Services (kube-proxy's job).
    Run(Box<RunArgs>),
    /// Load the embedded eBPF programs into this kernel, push test packets through them
    /// with BPF_PROG_TEST_RUN, and report what happened. Needs root.
    Selftest {
        /// How many packets to push through the counter.
        #[arg(long, default_value_t = 10)]
        packets: u32,
    },
    /// Print which backend each new flow was sent to, as the ebpf mode's per-packet path
    /// balances them (the proxy must run with --flow-events).
    Flows {
        /// The `--bpf-root` of the proxy to follow.
        #[arg(long, default_value = "/sys/fs/bpf/rudder")]
        bpf_root: std::path::PathBuf,
        /// Stop after this many flows (default: follow until interrupted).
        #[arg(long)]
        count: Option<usize>,
    },
    /// Show the ebpf mode's load balancer from its pinned maps: frontends, backends,
    /// counters, Maglev occupancy and conntrack entries; or, with `--mode nftables`, the
    /// nftables mode's tables as the kernel holds them: chains, rules, sets and maps.
    /// Benchmark this node: per-packet cost, sync times per mode (and kube-proxy's
    /// layouts), in network namespaces it creates and removes. Needs root; writes
    /// report.json, report.md and SVG plots to --out.
    Bench(Box<rudder_proxy::bench::cli::BenchArgs>),
    /// One measurement inside a fresh namespace (what `bench` runs; not for direct use).
    #[command(hide = true)]
    BenchWorker(rudder_proxy::bench::worker::WorkerArgs),
    Inspect {
        /// Which mode's kernel state to show: ebpf or nftables.
        #[arg(long, value_enum, default_value = "ebpf")]
        mode: rudder_proxy::dataplane::Mode,
        /// The `--bpf-root` of the proxy to inspect.
        #[arg(long, default_value = "/sys/fs/bpf/rudder")]
        bpf_root: std::path::PathBuf,
        /// How many conntrack entries to list.
        #[arg(long, default_value_t = 50)]
        flows: usize,
    },
}

fn main() -> Result<()> {
    // Logs go to stderr, as kube-proxy's do; stdout carries command output.
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .init();
    // Parsed by hand so `run` can tell flags given on the command line (which override
    // --config) from defaults.
    let matches = Cli::command().get_matches();
    let cli = Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit());
    match cli.command {
        Command::Selftest { packets } => selftest(packets),
        Command::Bench(args) => {
            let code = rudder_proxy::bench::cli::main(*args)?;
            std::process::exit(code)
        }
        Command::BenchWorker(args) => rudder_proxy::bench::worker::main(args),
        Command::Run(mut args) => {
            let run_matches = matches
                .subcommand_matches("run")
                .context("the run subcommand's flags")?;
            let ignored = args.merge_config_file(run_matches).map_err(|e| {
                let path = args.config.as_deref().unwrap_or(std::path::Path::new("")).display();
                anyhow::anyhow!("--config {path}: {e}")
            })?;
            if !ignored.is_empty() {
                tracing::warn!(
                    fields = %ignored.join(", "),
                    "the --config file sets fields rudder-proxy does not implement; they are ignored"
                );
            }
            run(*args)
        }
        Command::Flows { bpf_root, count } => {
            rudder_proxy::dataplane::ebpf::flows::follow(&bpf_root, count, |line| println!("{line}"))
                .with_context(|| format!("reading flow events under {}", bpf_root.display()))?;
            Ok(())
        }
        Command::Inspect {
            mode: rudder_proxy::dataplane::Mode::Nftables,
            ..
        } => {
            let text = rudder_proxy::dataplane::nftables::readback::report().context("reading the nftables ruleset")?;
            print!("{text}");
            Ok(())
        }
        Command::Inspect {
            mode: rudder_proxy::dataplane::Mode::Ebpf,
            bpf_root,
            flows,
        } => {
            let text = rudder_proxy::dataplane::ebpf::inspect::report(&bpf_root, flows)
                .with_context(|| format!("reading the pinned maps under {}", bpf_root.display()))?;
            print!("{text}");
            Ok(())
        }
        Command::Inspect { mode, .. } => {
            anyhow::bail!(
                "--mode {}: inspect shows the ebpf and nftables modes only",
                format!("{mode:?}").to_lowercase()
            )
        }
    }
}

fn selftest(packets: u32) -> Result<()> {
    let counter = Counter::load().context("loading the eBPF programs")?;
    println!("loaded eBPF programs: {}", counter.program_names().join(", "));
    let frame = counter::sample_frame();
    let run = counter
        .test_run(names::XDP_COUNTER, &frame, packets)
        .context("BPF_PROG_TEST_RUN")?;
    let totals = counter.totals()?;
    println!(
        "{}: {packets} packets of {} bytes -> verdict {} (XDP_PASS=2), counters: packets={} bytes={}, {} ns/packet",
        names::XDP_COUNTER,
        frame.len(),
        run.verdict,
        totals.packets,
        totals.bytes,
        run.ns_per_run
    );
    anyhow::ensure!(
        run.verdict == 2 && totals.packets == u64::from(packets),
        "the counter did not count what it was given"
    );
    Ok(())
}

fn run(args: RunArgs) -> Result<()> {
    if let Some(adj) = args.oom_score_adj {
        std::fs::write("/proc/self/oom_score_adj", adj.to_string())
            .with_context(|| format!("--oom-score-adj {adj}: writing /proc/self/oom_score_adj"))?;
    }
    if args.cleanup {
        agent::cleanup(&args)?;
        println!("removed the rules of every mode");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async {
        // SIGTERM is how the kubelet stops a pod; SIGINT a terminal.
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("listening for SIGTERM")?;
        let stop = async move {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        };
        agent::run(args, stop).await.map_err(anyhow::Error::from)
    })
}
