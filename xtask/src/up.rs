//! `cargo xtask up`: the main job.
//!
//! The finished command starts a whole local cluster: the API server, scheduler,
//! controllers and node agents, with rudder-proxy on every simulated node. Until those
//! land, it builds the proxy and proves its eBPF programs load and run on this kernel.

use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

pub fn run() -> Result<()> {
    cmd::require_root("cargo xtask up")?;
    setup::run()?;
    cmd::run(Command::new(env!("CARGO")).args(["build", "--package", "rudder-proxy", "--package", "rudder-control"]))?;
    println!("up: the local cluster is not built yet; loading the proxy's eBPF programs instead");
    cmd::run(Command::new("target/debug/rudder-proxy").args(["selftest", "--packets", "1000"]))
}
