//! `rudder-packet-bench`: the ebpf mode's per-packet cost with N Services loaded, in the
//! current (fresh) network namespace, printed as one JSON line. `cargo xtask bench` runs it
//! per size and builds the table.

use anyhow::Result;
use clap::Parser;
use rudder_proxy::bench::packet;

#[derive(Parser)]
struct Args {
    #[arg(long)]
    services: usize,
    /// Runs per case (the repeat count, and the number of single runs).
    #[arg(long, default_value_t = 1_000_000)]
    runs: u32,
}

fn main() -> Result<()> {
    let a = Args::parse();
    packet::set_up_routes()?;
    let result = packet::run(a.services.max(1), a.runs)?;
    println!("{}", serde_json::to_string(&result)?);
    Ok(())
}
