//! The ctnetlink client against the kernel: in a node namespace with our nftables rules, a
//! UDP flow to a ClusterIP creates an entry; our dump reads it field by field as the
//! `conntrack` tool does, and deleting it by its original tuple removes it.

use std::{net::UdpSocket, process::Command, time::Duration};

use rudder_proxy::conntrack::{Conntrack, stale_entries};
use rudder_tests::{Cluster, InNetns};

#[test]
fn dump_matches_the_conntrack_tool_and_delete_removes_the_entry() {
    let cluster = Cluster::new(1).expect("netns cluster (needs root)");
    let node = cluster.node(1);
    let pod = node.add_pod("backend").expect("a pod");
    let _server = pod.serve("backend", 8080).expect("rudder-echo");
    // A plain DNAT, as any mode writes one, so the entry has distinct orig and reply sides.
    let rules = format!(
        "add table ip t\nadd chain ip t out {{ type nat hook output priority -100 ; }}\n\
         add rule ip t out ip daddr 10.96.0.10 udp dport 53 dnat to {}:8080\n",
        pod.ip()
    );
    // The route check runs before the output hook's DNAT, so the ClusterIP needs a route.
    node.run(Command::new("ip").args(["route", "add", "10.96.0.0/16", "dev", "eth0"]))
        .expect("a Service route");
    let out = node
        .exec(Command::new("sh").args(["-c", &format!("printf '{rules}' | nft -f -")]))
        .expect("run nft");
    assert!(out.status.success(), "nft: {}", String::from_utf8_lossy(&out.stderr));
    let (local_port, answer) = node
        .with_netns(|| {
            let s = UdpSocket::bind("0.0.0.0:0").expect("bind");
            s.set_read_timeout(Some(Duration::from_secs(2))).expect("timeout");
            s.send_to(b"rudder-echo?\n", "10.96.0.10:53").expect("send");
            let mut buf = [0u8; 64];
            let n = s.recv(&mut buf).expect("an answer through the DNAT");
            (
                s.local_addr().expect("addr").port(),
                String::from_utf8_lossy(&buf[..n]).trim().to_owned(),
            )
        })
        .expect("enter the node");
    assert_eq!(answer, "backend");

    let entries = node
        .with_netns(|| Conntrack::open().and_then(|c| c.udp_entries()))
        .expect("enter")
        .expect("dump");
    let ours = entries
        .iter()
        .find(|e| e.orig.src_port == local_port && e.orig.dst_port == 53)
        .unwrap_or_else(|| panic!("our flow in {entries:?}"));
    assert_eq!(ours.orig.dst.to_string(), "10.96.0.10");
    assert_eq!(ours.reply.src, std::net::IpAddr::from(pod.ip()));
    assert_eq!(ours.reply.src_port, 8080);
    assert_eq!(ours.reply.dst_port, local_port);
    let tool = node
        .run(Command::new("conntrack").args(["-L", "-p", "udp"]))
        .unwrap_or_default();
    let line = tool
        .lines()
        .find(|l| l.contains(&format!("sport={local_port} ")))
        .unwrap_or_else(|| {
            panic!("conntrack -L does not show the flow (cargo xtask setup installs conntrack):\n{tool}")
        });
    for field in [
        format!("src={}", ours.orig.src),
        format!("dst={}", ours.orig.dst),
        format!("src={}", ours.reply.src),
        format!("sport={}", ours.reply.src_port),
    ] {
        assert!(line.contains(&field), "{field} not in {line}");
    }
    // Nothing in an empty desired state claims the flow, so the reconciler leaves it.
    assert!(stale_entries(&entries, &Default::default()).is_empty());

    let deleted = node
        .with_netns(|| Conntrack::open().and_then(|c| c.delete(&ours.orig)))
        .expect("enter")
        .expect("delete");
    assert!(deleted, "the entry was there to delete");
    let again = node
        .with_netns(|| Conntrack::open().and_then(|c| c.delete(&ours.orig)))
        .expect("enter")
        .expect("delete");
    assert!(!again, "deleting a gone entry reports it gone, not an error");
    let after = node
        .run(Command::new("conntrack").args(["-L", "-p", "udp"]))
        .unwrap_or_default();
    assert!(
        !after.contains(&format!("sport={local_port} ")),
        "still listed:\n{after}"
    );
    println!("conntrack: dumped {} UDP entries, deleted {line}", entries.len());
}
