//! `rudder-proxy run --cleanup` removes what every mode installed, and succeeds on a node
//! where nothing is installed, as kube-proxy's `--cleanup` does.

use std::process::Command;

use rudder_proxy::{
    dataplane::{Backend, SyncKind, nftables::Nftables},
    model::DesiredState,
};
use rudder_tests::{Cluster, InNetns, e2e::workspace_binary};

fn tables(node: &impl InNetns) -> String {
    node.run(Command::new("nft").args(["list", "tables"])).expect("nft list tables")
}

fn cleanup(node: &impl InNetns) {
    let out = node.exec(Command::new(workspace_binary("rudder-proxy")).args(["run", "--cleanup"])).expect("run");
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
