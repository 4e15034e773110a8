//! Which nightly builds the eBPF programs, and where bpf-linker lives.
//!
//! bpf-linker links the LLVM bitcode rustc emits, so its LLVM must be the one inside the
//! nightly toolchain. We never install an unpinned nightly: a newer one brings LLVM 23.

use std::{path::PathBuf, process::Command};

/// The dated nightly we install when the machine has none with the right LLVM.
/// Kept in sync with proxy/build.rs.
pub const PINNED_NIGHTLY: &str = "nightly-2026-05-19";
pub const LLVM_MAJOR: &str = "22";
pub const BPF_LINKER_VERSION: &str = "0.13.0";

/// The LLVM version (e.g. "22.1.4") of `toolchain`, or None when it is not installed.
pub fn llvm_version(toolchain: &str) -> Option<String> {
    let out = Command::new("rustup")
        .args(["run", toolchain, "rustc", "-vV"])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| l.strip_prefix("LLVM version: ").map(str::to_owned))
}

/// Prefer the machine's `nightly` when its LLVM matches; otherwise the pinned one.
pub fn ebpf_toolchain() -> (&'static str, Option<String>) {
    match llvm_version("nightly") {
        Some(v) if v.split('.').next() == Some(LLVM_MAJOR) => ("nightly", Some(v)),
        _ => (PINNED_NIGHTLY, llvm_version(PINNED_NIGHTLY)),
    }
}

/// Everything Rudder installs outside the repo lives under here (kept across clones).
pub fn data_dir() -> PathBuf {
    std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"))
        .join(".local/share/rudder")
}

pub fn bpf_linker_root() -> PathBuf {
    data_dir().join("bpf-linker")
}
