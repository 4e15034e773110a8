//! `rudder`: the control plane and the local cluster.

use clap::Parser;

#[derive(Parser)]
#[command(
    name = "rudder",
    version,
    about = "Rudder's control plane and local cluster (the API server arrives with the \"Control plane I\" issue)"
)]
struct Cli {}

fn main() -> anyhow::Result<()> {
    let _cli = Cli::parse();
    Ok(())
}
