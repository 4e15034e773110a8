//! `rudder-proxy run --mode ipvs` checks the kernel before anything else: without IPVS it
//! stops at once with the cause and the alternative, as kube-proxy does; with it, it gets
//! past that check. Which kernel this is gets detected, not assumed.

use std::process::Command;

#[test]
fn ipvs_mode_checks_the_kernel_first() {
    // In a network namespace of its own: on a kernel with IPVS the proxy sets sysctls
    // and cleans up other modes, which must not touch the host's namespace.
    let out = Command::new("unshare")
        .arg("--net")
        // Cargo builds the binary for this package's integration tests and names it here.
        .arg(env!("CARGO_BIN_EXE_rudder-proxy"))
        .args(["run", "--mode", "ipvs", "--kubeconfig", "/nonexistent/kubeconfig"])
        .output()
        .expect("run rudder-proxy");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "without a kubeconfig it cannot run: {stderr}");
    if rudder_proxy::dataplane::ipvs::kernel_has_ip_vs() {
        assert!(
            !stderr.contains("/proc/net/ip_vs does not exist") && stderr.contains("/nonexistent/kubeconfig"),
            "this kernel has IPVS: the proxy must pass the kernel check and stop at the kubeconfig:\n{stderr}"
        );
        println!("rudder-proxy --mode ipvs on a kernel with IPVS: past the kernel check");
    } else {
        assert!(
            stderr.contains("/proc/net/ip_vs does not exist") && stderr.contains("--mode nftables"),
            "{stderr}"
        );
        println!(
            "rudder-proxy --mode ipvs without IPVS: exit {:?}, {}",
            out.status.code(),
            stderr.trim()
        );
    }
}
