//! `rudder-proxy run --mode ipvs` on a kernel without IPVS stops at once with the cause and
//! the alternative, as kube-proxy does.

use std::process::Command;

#[test]
fn ipvs_mode_without_ip_vs_fails_clearly() {
    assert!(
        !std::path::Path::new("/proc/net/ip_vs").exists(),
        "this machine has IPVS; the test expects the CI kernel, which has none"
    );
    // Cargo builds the binary for this package's integration tests and names it here.
    let out = Command::new(env!("CARGO_BIN_EXE_rudder-proxy"))
        .args(["run", "--mode", "ipvs"])
        .output()
        .expect("run rudder-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ipvs mode must refuse to start");
    assert!(
        stderr.contains("/proc/net/ip_vs does not exist") && stderr.contains("--mode nftables"),
        "{stderr}"
    );
    println!(
        "rudder-proxy --mode ipvs: exit {:?}, {}",
        out.status.code(),
        stderr.trim()
    );
}
