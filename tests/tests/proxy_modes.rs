//! `rudder-proxy run --mode ipvs` on a kernel without IPVS stops at once with the cause and
//! the alternative, as kube-proxy does.

use std::process::Command;

#[test]
fn ipvs_mode_without_ip_vs_fails_clearly() {
    assert!(
        !std::path::Path::new("/proc/net/ip_vs").exists(),
        "this machine has IPVS; the test expects the CI kernel, which has none"
    );
    let bin = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../target/debug/rudder-proxy");
    let out = Command::new(&bin)
        .args(["run", "--mode", "ipvs"])
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", bin.display()));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "ipvs mode must refuse to start");
    assert!(stderr.contains("/proc/net/ip_vs does not exist") && stderr.contains("--mode nftables"), "{stderr}");
    println!("rudder-proxy --mode ipvs: exit {:?}, {}", out.status.code(), stderr.trim());
}
