//! `rudder-sync-bench`: one sync-benchmark measurement (one mode, one size) in the current
//! network namespace, printed as one JSON line. `cargo xtask bench` runs it per mode and
//! size in fresh namespaces and builds the table.

use anyhow::Result;
use clap::Parser;
use rudder_proxy::bench::run::{BenchMode, run};

#[derive(Parser)]
struct Args {
    #[arg(long, value_enum)]
    mode: BenchMode,
    #[arg(long)]
    services: usize,
    #[arg(long, default_value_t = 10)]
    endpoints: usize,
    /// One-change syncs to time after the cold one.
    #[arg(long, default_value_t = 5)]
    reps: usize,
}

fn main() -> Result<()> {
    let a = Args::parse();
    let result = run(a.mode, a.services, a.endpoints, a.reps)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
