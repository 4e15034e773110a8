//! `cargo xtask test`: the README's test command and exactly what CI runs.

use std::{process::Command, time::Instant};

use anyhow::Result;

use crate::{cmd, setup};

pub fn run(extra: &[String]) -> Result<()> {
    cmd::require_root("the test suite")?;
    let start = Instant::now();
    setup::run()?;
    // --show-output: the kernel tests print what they loaded and measured; that output is
    // the evidence a reader of the CI log wants.
    cmd::run(
        Command::new(env!("CARGO"))
            .args(["test", "--workspace", "--no-fail-fast", "--", "--show-output"])
            .args(extra),
    )?;
    println!("xtask test: all tests passed in {:.0}s", start.elapsed().as_secs_f64());
    Ok(())
}
