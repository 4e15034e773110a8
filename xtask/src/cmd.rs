//! Running external commands with the command line in every error.

use std::process::{Command, Output};

use anyhow::{Context, Result, bail};

/// Runs `cmd` with inherited stdio and fails, naming the command, unless it succeeds.
pub fn run(cmd: &mut Command) -> Result<()> {
    let status = cmd.status().with_context(|| format!("starting {cmd:?}"))?;
    if !status.success() {
        bail!("{cmd:?} failed with {status}");
    }
    Ok(())
}

/// Runs `cmd`, capturing its output; fails unless it succeeds.
pub fn output(cmd: &mut Command) -> Result<Output> {
    let out = cmd.output().with_context(|| format!("starting {cmd:?}"))?;
    if !out.status.success() {
        bail!(
            "{cmd:?} failed with {}: {}",
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(out)
}

/// Runs `cmd` and returns its stdout as text.
pub fn stdout(cmd: &mut Command) -> Result<String> {
    Ok(String::from_utf8_lossy(&output(cmd)?.stdout).into_owned())
}

/// Fails loudly unless we are root: the kernel tests and the local cluster need it.
pub fn require_root(what: &str) -> Result<()> {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let euid = unsafe { geteuid() };
    if euid != 0 {
        bail!("{what} needs root (it loads eBPF programs and creates network namespaces); run it as root, as CI does");
    }
    Ok(())
}

unsafe extern "C" {
    fn geteuid() -> u32;
}
