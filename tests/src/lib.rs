//! Test support for Rudder's privileged end-to-end tests.
//!
//! The heart of it is [`netns`]: a throwaway "cluster" built from network namespaces, veth
//! pairs and Linux bridges, so tests can push real packets between nodes and pods on one
//! machine without touching the host's own network. The `rudder-echo` binary in this crate is
//! the server the tests talk to.
//!
//! Everything here needs root (network namespaces, links and routes); it refuses loudly
//! rather than skipping when it is not root.

pub mod e2e;
pub mod netns;

/// Environment variable: how much slower than the host this machine runs (a QEMU guest
/// under TCG: about 8). Every timeout of the harness and the e2e scenarios is multiplied
/// by it, so "within N seconds" means the same amount of work everywhere.
pub const TIME_SCALE_ENV: &str = "RUDDER_E2E_TIME_SCALE";

/// `d` on this machine's clock (see [`TIME_SCALE_ENV`]).
pub fn slow(d: std::time::Duration) -> std::time::Duration {
    let scale = std::env::var(TIME_SCALE_ENV)
        .ok()
        .and_then(|s| s.parse::<u32>().ok())
        .filter(|s| *s >= 1)
        .unwrap_or(1);
    d * scale
}

pub use netns::{
    AskError, AskErrorKind, Cluster, EchoConfig, HarnessError, InNetns, Ipv4Cidr, Node, Pod, Process, Proto,
    ServerGuard,
};

/// Where a workspace binary may be, in order: `$CARGO_TARGET_DIR/debug`, the workspace's
/// `target/debug`, then beside the running executable and in its parent directory (cargo
/// puts test executables in `<profile>/deps/`). With a separate build directory
/// (`build.build-dir`), test executables live there and binaries in the target directory,
/// and the executable's neighbours may be binaries of an older build: the target directory
/// comes first.
pub fn binary_candidates(name: &str) -> Vec<std::path::PathBuf> {
    use std::path::{Path, PathBuf};
    let target = std::env::var_os("CARGO_TARGET_DIR").map(|d| PathBuf::from(d).join("debug").join(name));
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug").join(name);
    let beside = std::env::current_exe()
        .map(|exe| {
            exe.ancestors()
                .skip(1)
                .take(2)
                .map(|d| d.join(name))
                .collect::<Vec<_>>()
        })
        .unwrap_or_default();
    target.into_iter().chain([workspace]).chain(beside).collect()
}
