//! `cargo xtask`: the project's own tasks, one module each (matklad's xtask pattern).

mod bench;
mod cluster;
mod cmd;
mod dns_bench;
mod image;
mod setup;
mod test;
mod throughput;
mod tidy;
mod toolchain;
mod up;
mod vm;

use anyhow::Result;
use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Rudder's development tasks")]
struct Cli {
    #[command(subcommand)]
    task: Task,
}

#[derive(Subcommand)]
enum Task {
    /// Install what building and testing need: apt packages, rust-src for the eBPF
    /// toolchain, and bpf-linker built against that toolchain's LLVM. Idempotent and fast
    /// when everything is already there.
    Setup,
    /// Set up, then run every test in the workspace (unit, kernel and end-to-end). Needs root.
    Test {
        /// Extra arguments for `cargo test` (after `--`), e.g. a test name filter.
        #[arg(trailing_var_arg = true)]
        args: Vec<String>,
    },
    /// Exactly what CI runs (`.ci/run`): the same as `test`.
    Ci,
    /// Set up, build, and run the main job (`rudder up`: a local cluster). Needs root.
    Up {
        /// Extra arguments for `rudder up`, e.g. `--mode nftables --nodes 2`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// The benchmarks (--suite sync,packet,throughput,cluster; all by default): sync times per mode and size
    /// beside kube-proxy's layouts, the ebpf per-packet cost, ClusterIP vs pod IP end to
    /// end, `rudder up` (time to proof, pod startup, memory). Writes
    /// target/bench/<suite>.{json,md} (packet and sync: `rudder-proxy bench`'s report,
    /// table and plots in target/bench/<suite>/). Needs root.
    Bench(bench::BenchArgs),
    /// Build the rudder-proxy container image from Debian's packages, with no registry or
    /// container engine: an OCI layout and a tar for `docker load`, `podman load` and `ctr
    /// images import`, in <target dir>/image. Needs root.
    Image(image::ImageArgs),
    /// Run a command as root in a throw-away QEMU guest with Debian's stock kernel (it has
    /// IP_VS, which the ipvs mode needs), on this machine's root filesystem, with the
    /// current directory and CARGO_TARGET_DIR shared writable: `cargo xtask vm -- CMD...`.
    /// Exits with the command's status (124: timeout, 125: the guest failed).
    Vm(vm::VmArgs),
}

fn main() -> Result<()> {
    match Cli::parse().task {
        Task::Setup => setup::run(),
        Task::Test { args } => test::run(&args),
        Task::Ci => test::run(&[]),
        Task::Up { args } => up::run(&args),
        Task::Bench(args) => bench::run(args),
        Task::Image(args) => image::run(args),
        Task::Vm(args) => std::process::exit(vm::run(&args)?),
    }
}
