//! `cargo xtask up`: the main job. Builds the proxy (with its eBPF programs) and the
//! control plane, then runs `rudder up`: a local cluster of three nodes with rudder-proxy
//! on each, a demo Service answering from every node, until Ctrl-C.

use std::process::Command;

use anyhow::Result;

use crate::{cmd, setup};

pub fn run(extra: &[String]) -> Result<()> {
    cmd::require_root("cargo xtask up")?;
    setup::run()?;
    cmd::run(Command::new(env!("CARGO")).args(["build", "--package", "rudder-proxy", "--package", "rudder-control"]))?;
    cmd::run(Command::new("target/debug/rudder").arg("up").args(extra))
}
