//! `rudder-proxy run --cleanup` removes what every mode installed, and succeeds on a node
//! where nothing is installed, as kube-proxy's `--cleanup` does.

use std::process::Command;

use rudder_proxy::{
    dataplane::{Dataplane, SyncKind, nftables::Nftables},
    model::DesiredState,
};
use rudder_tests::{Cluster, InNetns, e2e::workspace_binary};

fn tables(node: &impl InNetns) -> String {
    node.run(Command::new("nft").args(["list", "tables"]))
        .expect("nft list tables")
}

fn cleanup(node: &impl InNetns) {
    let out = node
        .exec(Command::new(workspace_binary("rudder-proxy")).args(["run", "--cleanup"]))
        .expect("run");
    assert!(
        out.status.success(),
        "rudder-proxy run --cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn cleanup_removes_every_modes_rules_and_is_idempotent() {
    let cluster = Cluster::new(1).expect("netns cluster (needs root)");
    let node = cluster.node(1);
    node.with_netns(|| Nftables.sync(&DesiredState::default(), SyncKind::Full))
        .expect("enter the node")
        .expect("install the nftables mode's tables");
    assert!(tables(node).contains("table ip rudder"), "installed: {}", tables(node));
    cleanup(node);
    assert!(!tables(node).contains("rudder"), "left behind: {}", tables(node));
    cleanup(node);
}

fn kube_chains(node: &impl InNetns) -> usize {
    ["iptables-nft-save", "iptables-legacy-save"]
        .iter()
        .map(|bin| {
            node.run(&Command::new(bin))
                .unwrap_or_default()
                .lines()
                .filter(|l| l.contains("KUBE-"))
                .count()
        })
        .sum()
}

#[test]
fn starting_in_one_mode_removes_the_other_modes_rules() {
    use rudder_proxy::dataplane::iptables::{Flavor, Iptables};
    let cluster = Cluster::new(1).expect("netns cluster (needs root)");
    let node = cluster.node(1);
    node.with_netns(|| Iptables::new(Flavor::Nft).sync(&DesiredState::default(), SyncKind::Full))
        .expect("enter the node")
        .expect("install the iptables mode's chains");
    assert!(kube_chains(node) > 0);
    // Switching to nftables: the other modes' leftovers go before the proxy even reaches the
    // API (this kubeconfig does not exist, so it stops right after).
    let out = node
        .exec(Command::new(workspace_binary("rudder-proxy")).args([
            "run",
            "--mode",
            "nftables",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--healthz-bind-address",
            "",
            "--metrics-bind-address",
            "",
        ]))
        .expect("run");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && stderr.contains("kubeconfig"), "{stderr}");
    assert_eq!(
        kube_chains(node),
        0,
        "the iptables mode's chains survived a switch to nftables"
    );

    node.with_netns(|| Nftables.sync(&DesiredState::default(), SyncKind::Full))
        .expect("enter")
        .expect("nft tables");
    let out = node
        .exec(Command::new(workspace_binary("rudder-proxy")).args([
            "run",
            "--mode",
            "iptables",
            "--kubeconfig",
            "/nonexistent/kubeconfig",
        ]))
        .expect("run");
    assert!(!out.status.success());
    assert!(
        !tables(node).contains("rudder"),
        "the nftables mode's tables survived a switch to iptables"
    );
}

/// The ebpf mode's pins: a proxy that stopped leaves its programs attached (on purpose: a
/// restart must not open a gap); `--cleanup` with the same `--bpf-root` detaches them and
/// removes the maps.
#[test]
fn cleanup_removes_the_ebpf_modes_pinned_programs_and_maps() {
    use rudder_tests::e2e::PinDir;
    let cluster = Cluster::new(1).expect("netns cluster (needs root)");
    let node = cluster.node(1);
    let pins = PinDir::for_node(node.netns());
    let root = pins.0.to_string_lossy().into_owned();
    // The kubeconfig does not exist: the proxy attaches, then stops at the API.
    let out = node
        .exec(Command::new(workspace_binary("rudder-proxy")).args([
            "run",
            "--mode",
            "ebpf",
            "--bpf-root",
            &root,
            "--kubeconfig",
            "/nonexistent/kubeconfig",
            "--bpf-lb-acceleration",
            "native",
        ]))
        .expect("run");
    assert!(!out.status.success(), "the proxy cannot reach an API here");
    let links: Vec<String> = std::fs::read_dir(pins.0.join("links"))
        .expect("the links were pinned")
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    assert!(
        links.iter().any(|l| l == "rudder_tc_ingress@eth0"),
        "pinned links: {links:?}"
    );
    assert!(
        links.iter().any(|l| l == "rudder_xdp_lb@eth0"),
        "pinned links: {links:?}"
    );
    let xdp_on_eth0 = || {
        node.run(Command::new("ip").args(["link", "show", "eth0"]))
            .expect("ip link")
            .contains("xdp")
    };
    assert!(xdp_on_eth0(), "the XDP program stays attached after the proxy stopped");
    assert!(
        pins.0.join(rudder_abi::names::SERVICES).exists(),
        "the service map is pinned"
    );
    let out = node
        .exec(Command::new(workspace_binary("rudder-proxy")).args(["run", "--cleanup", "--bpf-root", &root]))
        .expect("run --cleanup");
    assert!(
        out.status.success(),
        "--cleanup failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!pins.0.exists(), "{} is still there", pins.0.display());
    assert!(!xdp_on_eth0(), "--cleanup detached the XDP program");
}
