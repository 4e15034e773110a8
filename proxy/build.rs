//! Builds the eBPF programs (ebpf/programs) and leaves the object in OUT_DIR, so a plain
//! `cargo build` always embeds programs that match the source.
//!
//! We drive cargo ourselves instead of using aya-build: the eBPF side must use the nightly
//! toolchain whose LLVM matches bpf-linker's, and this makes that choice explicit.

use std::{
    env,
    path::{Path, PathBuf},
    process::Command,
};

/// The dated nightly whose LLVM (22) matches the bpf-linker that `cargo xtask setup` builds.
/// Kept in sync with xtask/src/toolchain.rs.
const PINNED_NIGHTLY: &str = "nightly-2026-05-19";
const LLVM_MAJOR: &str = "22";

fn main() {
    let manifest_dir = PathBuf::from(env::var_os("CARGO_MANIFEST_DIR").expect("set by cargo"));
    let root = manifest_dir.parent().expect("proxy/ has a parent").to_path_buf();
    let programs = root.join("ebpf/programs");
    let abi = root.join("ebpf/abi");
    for watched in [
        programs.join("src"),
        programs.join("Cargo.toml"),
        programs.join("Cargo.lock"),
        abi.join("src"),
        abi.join("Cargo.toml"),
    ] {
        println!("cargo:rerun-if-changed={}", watched.display());
    }
    for var in ["RUDDER_EBPF_TOOLCHAIN", "RUDDER_BPF_LINKER_DIR", "CARGO_TARGET_DIR"] {
        println!("cargo:rerun-if-env-changed={var}");
    }

    let toolchain = env::var("RUDDER_EBPF_TOOLCHAIN").unwrap_or_else(|_| pick_toolchain());
    let target_dir = env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"))
        .join("ebpf");
    let linker_dir = env::var_os("RUDDER_BPF_LINKER_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(default_linker_dir);
    let path = match env::var_os("PATH") {
        Some(p) => env::join_paths(std::iter::once(linker_dir.clone()).chain(env::split_paths(&p)))
            .expect("PATH entries are joinable"),
        None => linker_dir.clone().into_os_string(),
    };

    let mut cmd = Command::new("rustup");
    cmd.args(["run", &toolchain, "cargo", "build", "--release", "--bins"])
        .args(["-Z", "build-std=core", "--target", "bpfel-unknown-none"])
        .arg("--manifest-path")
        .arg(programs.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .env("PATH", path)
        // BTF (from debuginfo) lets the kernel check our map layouts and print readable
        // verifier logs.
        .env(
            "CARGO_ENCODED_RUSTFLAGS",
            "--cfg=bpf_target_arch=\"x86_64\"\x1f-Cdebuginfo=2\x1f-Clink-arg=--btf",
        );
    // The outer build's settings describe the host build and would leak into the BPF one.
    for key in [
        "RUSTC",
        "RUSTC_WRAPPER",
        "RUSTC_WORKSPACE_WRAPPER",
        "RUSTUP_TOOLCHAIN",
        "RUSTFLAGS",
        "CARGO_BUILD_TARGET",
        "CARGO_TARGET_DIR",
        "CARGO_MAKEFLAGS",
    ] {
        cmd.env_remove(key);
    }

    let output = cmd
        .output()
        .unwrap_or_else(|e| panic!("could not run rustup to build the eBPF programs ({e}); run `cargo xtask setup`"));
    if !output.status.success() {
        eprintln!("{}", String::from_utf8_lossy(&output.stdout));
        eprintln!("{}", String::from_utf8_lossy(&output.stderr));
        panic!(
            "building the eBPF programs with toolchain {toolchain} failed (bpf-linker looked up in {}). \
             Run `cargo xtask setup` to install rust-src and bpf-linker.",
            linker_dir.display()
        );
    }

    let built = target_dir.join("bpfel-unknown-none/release/rudder-ebpf");
    let out = PathBuf::from(env::var_os("OUT_DIR").expect("set by cargo")).join("rudder-ebpf.o");
    copy(&built, &out);
}

fn pick_toolchain() -> String {
    let llvm_major = Command::new("rustup")
        .args(["run", "nightly", "rustc", "-vV"])
        .output()
        .ok()
        .and_then(|o| String::from_utf8(o.stdout).ok())
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("LLVM version: "))
                .and_then(|v| v.split('.').next())
                .map(str::to_owned)
        });
    match llvm_major.as_deref() {
        Some(LLVM_MAJOR) => "nightly".to_owned(),
        _ => PINNED_NIGHTLY.to_owned(),
    }
}

fn default_linker_dir() -> PathBuf {
    let home = env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    home.join(".local/share/rudder/bpf-linker/bin")
}

fn copy(from: &Path, to: &Path) {
    std::fs::copy(from, to).unwrap_or_else(|e| panic!("copy {} -> {}: {e}", from.display(), to.display()));
}
