//! `cargo xtask test`: the README's test command and exactly what CI runs.

use std::{
    io::{BufRead, BufReader},
    process::{Command, Stdio},
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::{cmd, setup};

pub fn run(extra: &[String]) -> Result<()> {
    cmd::require_root("the test suite")?;
    let start = Instant::now();
    setup::run()?;
    // --show-output: the kernel and API tests print what they loaded and measured; that
    // output is the evidence a reader of the CI log wants. Doc tests are skipped: there are
    // none, and their empty summaries would close the log.
    let mut child = Command::new(env!("CARGO"))
        .args([
            "test",
            "--workspace",
            "--lib",
            "--bins",
            "--tests",
            "--no-fail-fast",
            "--",
            "--show-output",
        ])
        .args(extra)
        .stdout(Stdio::piped())
        .spawn()
        .context("starting cargo test")?;
    let stdout = child.stdout.take().context("cargo test stdout")?;
    let (mut passed, mut failed, mut ignored) = (0u64, 0u64, 0u64);
    for line in BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(summary) = line.strip_prefix("test result: ") {
            let count = |word: &str| {
                summary
                    .split(';')
                    .find_map(|part| {
                        part.trim().strip_suffix(word).map(|n| {
                            n.trim()
                                .trim_start_matches("ok.")
                                .trim_start_matches("FAILED.")
                                .trim()
                                .parse::<u64>()
                                .unwrap_or(0)
                        })
                    })
                    .unwrap_or(0)
            };
            passed += count("passed");
            failed += count("failed");
            ignored += count("ignored");
        }
    }
    let status = child.wait()?;
    println!("xtask test: finished in {:.0}s", start.elapsed().as_secs_f64());
    // The one closing line CI reads, summed over every test binary.
    println!("{passed} passed, {failed} failed, {ignored} skipped");
    if !status.success() || failed > 0 {
        bail!("cargo test failed ({status})");
    }
    Ok(())
}
