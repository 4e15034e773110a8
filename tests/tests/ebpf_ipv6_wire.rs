//! IPv6 through the ebpf mode with real packets on real veths: two nodes of the netns
//! cluster given IPv6 addresses and routes, pods with IPv6 addresses running `rudder-echo`,
//! and on each node the ebpf mode itself (`Ebpf::open`, tc on every device, maps pinned)
//! synced with the desired state of real Service and EndpointSlice objects, with XDP on
//! each node's eth0. The clients are outside the socket-LB cgroup, so every packet takes
//! the per-packet path; the outside client and the backends put complete checksums on the
//! wire, so XDP takes the NodePort flows whose backend is on the other node.
//!
//! The control plane allocates IPv4 ClusterIPs only, which is why IPv6 is driven here from
//! the objects rather than through `rudder server` as `proxy_e2e.rs` does for IPv4.

use std::{collections::BTreeSet, net::Ipv6Addr, process::Command, time::Duration};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use rudder_proxy::{
    dataplane::{
        Dataplane as _, SyncKind,
        ebpf::{Ebpf, EbpfOptions, attach::Acceleration, inspect, testrun::attach_xdp_pass},
    },
    model::{DesiredState, ModelConfig, NodeInfo, ServicePortMap, endpoints::endpoints_map, service::service_ports},
};
use rudder_tests::{
    AskErrorKind, Cluster, InNetns, Pod,
    e2e::{NodeCgroup, PinDir},
    netns::{EchoConfig, with_netns},
};
use serde_json::{Value, json};

const VIP: &str = "fd00:10:96::10";
const EMPTY_VIP: &str = "fd00:10:96::20";
const TIMEOUT: Duration = Duration::from_secs(3);

fn node_ip(k: usize) -> Ipv6Addr {
    format!("fd00:10:250::1{k}").parse().expect("an IPv6 address")
}

/// A pod's IPv6 address: its IPv4 host number in its node's IPv6 pod range.
fn pod_ip(pod: &Pod) -> Ipv6Addr {
    format!("fd00:10:244:{}::{}", pod.node(), pod.ip().octets()[3])
        .parse()
        .expect("an IPv6 address")
}

fn ip(netns: &impl InNetns, args: &str) {
    netns
        .run(Command::new("ip").args(args.split(' ')))
        .unwrap_or_else(|e| panic!("ip {args}: {e}"));
}

fn services() -> Vec<Value> {
    let svc = |name: &str, ip: &str, kind: &str| {
        json!({"metadata": {"namespace": "ns", "name": name},
               "spec": {"type": kind, "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv6"], "ports": [
                   {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080},
                   {"name": "dns", "port": 80, "protocol": "UDP", "targetPort": 8080, "nodePort": 30080}]}})
    };
    let mut empty = svc("empty", EMPTY_VIP, "ClusterIP");
    for p in empty["spec"]["ports"].as_array_mut().into_iter().flatten() {
        p.as_object_mut().map(|o| o.remove("nodePort"));
    }
    vec![svc("web", VIP, "NodePort"), empty]
}

fn slice(backends: &[&Pod]) -> Value {
    let eps: Vec<Value> = backends
        .iter()
        .map(|p| {
            json!({"addresses": [pod_ip(p).to_string()], "nodeName": format!("n{}", p.node()),
                        "conditions": {"ready": true}})
        })
        .collect();
    json!({"metadata": {"namespace": "ns", "name": "web-1", "labels": {"kubernetes.io/service-name": "web"}},
           "addressType": "IPv6",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 8080, "protocol": "UDP"}],
           "endpoints": eps})
}

fn state(node: usize, backends: &[&Pod]) -> DesiredState {
    let mut ports = ServicePortMap::new();
    for s in services() {
        let s: Service = serde_json::from_value(s).expect("a valid Service");
        ports.extend(service_ports(&s).expect("valid ports"));
    }
    let slices: Vec<EndpointSlice> = vec![serde_json::from_value(slice(backends)).expect("a valid slice")];
    let name = format!("n{node}");
    let info = NodeInfo {
        name: name.clone(),
        addresses: vec![node_ip(node).into()],
        labels: Default::default(),
    };
    let config = ModelConfig {
        cluster_cidrs: vec!["fd00:10:244::/56".parse().unwrap()],
        service_cidrs: vec!["fd00:10:96::/112".parse().unwrap()],
        ..Default::default()
    };
    DesiredState::build(
        &ports,
        &endpoints_map(&slices, &name).expect("valid slices"),
        &info,
        &config,
    )
}

/// The node's network devices, as `ip -o link` lists them (`veth0@if2` → `veth0`).
fn devices(node: &impl InNetns) -> Vec<String> {
    let out = node
        .run(Command::new("ip").args(["-o", "link", "show"]))
        .expect("ip link");
    out.lines()
        .filter_map(|l| l.split(": ").nth(1))
        .map(|name| name.split('@').next().unwrap_or(name).to_owned())
        .collect()
}

/// Asks `n` times (a new socket, so a new flow, each time); the names that answered.
fn answers(from: &impl InNetns, udp: bool, to: Ipv6Addr, port: u16, n: usize) -> Vec<String> {
    (0..n)
        .map(|_| {
            let r = if udp {
                from.ask_udp(to, port, TIMEOUT)
            } else {
                from.ask_tcp(to, port, TIMEOUT)
            };
            r.unwrap_or_else(|e| panic!("{} [{to}]:{port}: {e}", if udp { "UDP" } else { "TCP" }))
        })
        .collect()
}

#[test]
fn ipv6_services_are_reached_over_the_wire_from_pods_and_from_outside() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the ebpf mode needs root: run the tests as root (CI does)"
    );
    let cluster = Cluster::new(2).expect("a two-node netns cluster");
    // IPv6 on the underlay, the nodes' external and pod networks, and routes between nodes.
    let outside = Underlay(cluster.underlay_netns().to_owned());
    ip(&outside, "-6 addr add fd00:10:250::1/64 dev br0 nodad");
    for k in 1..=2 {
        let n = cluster.node(k);
        let other = 3 - k;
        ip(n, &format!("-6 addr add {}/64 dev eth0 nodad", node_ip(k)));
        ip(n, &format!("-6 addr add fd00:10:244:{k}::1/64 dev cbr0 nodad"));
        ip(
            n,
            &format!("-6 route add fd00:10:244:{other}::/64 via {}", node_ip(other)),
        );
        n.run(Command::new("sysctl").args(["-qw", "net.ipv6.conf.all.forwarding=1"]))
            .expect("IPv6 forwarding");
    }
    let client = cluster.add_pod(1, "c6").expect("a client pod");
    let backends: Vec<Pod> = [(1, "b1"), (2, "b2"), (2, "b3")]
        .into_iter()
        .map(|(k, name)| cluster.add_pod(k, name).expect("a backend pod"))
        .collect();
    for pod in backends.iter().chain([&client]) {
        ip(pod, &format!("-6 addr add {}/64 dev eth0 nodad", pod_ip(pod)));
        ip(pod, &format!("-6 route add default via fd00:10:244:{}::1", pod.node()));
    }
    let _servers: Vec<_> = backends
        .iter()
        .map(|p| {
            let config = EchoConfig {
                address: Some(pod_ip(p).into()),
                ..EchoConfig::new(p.name(), 8080)
            };
            p.serve_with(&config).expect("a backend listening on its IPv6 address")
        })
        .collect();

    // The ebpf mode on both nodes; pinned, so it stays after the handles are dropped.
    let refs: Vec<&Pod> = backends.iter().collect();
    let mut keep = Vec::new();
    for k in 1..=2 {
        let n = cluster.node(k);
        let pins = PinDir::for_node(&format!("{}-v6", n.netns()));
        let cgroup = NodeCgroup::create(&format!("{}-v6", n.netns()));
        let options = EbpfOptions {
            bpf_root: pins.0.clone(),
            cgroup: cgroup.relative.clone(),
            service_cidrs: vec!["fd00:10:96::/112".parse().unwrap()],
            pod_cidrs: vec!["fd00:10:244::/56".parse().unwrap()],
            lb_map_max: 1024,
            // Named, every one (pod veths included, as the proxy's default has it): /sys
            // here is the test's, not the node's (`ip netns exec` would remount it).
            devices: devices(n),
            acceleration: Acceleration::Native,
            xdp_devices: vec!["eth0".into()],
            ..EbpfOptions::default()
        };
        let desired = state(k, &refs);
        with_netns(n.netns(), || {
            let mut lb = Ebpf::open(&options).expect("the ebpf mode starts");
            lb.sync(&desired, SyncKind::Full)
                .expect("the IPv6 Services are programmed");
        })
        .expect("enter the node namespace");
        keep.push((pins, cgroup));
    }
    let names: BTreeSet<String> = backends.iter().map(|p| p.name().to_owned()).collect();
    let vip: Ipv6Addr = VIP.parse().unwrap();
    // XDP_TX on a node's eth0 (a veth) reaches the underlay only while its peer runs XDP.
    let peers: Vec<&str> = cluster.nodes().iter().map(|n| n.name()).collect();
    let _xdp_pass = with_netns(&outside.0, || attach_xdp_pass(&peers))
        .expect("enter the underlay namespace")
        .expect("XDP_PASS on the nodes' underlay peers");

    // A pod to the ClusterIP: every backend, on both nodes.
    for udp in [false, true] {
        let got: BTreeSet<String> = answers(&client, udp, vip, 80, 24).into_iter().collect();
        assert!(
            got.is_subset(&names) && got.len() >= 2,
            "pod → [{VIP}]:80 (udp: {udp}) answered by {got:?}"
        );
        println!("IPv6 pod -> [{VIP}]:80 udp={udp}: {got:?}");
    }
    // Outside the cluster to node 1's NodePort: masqueraded, so node 2's backends answer too.
    // Complete checksums from the client and the backends, as from a physical wire.
    let mut wire: Vec<(String, &str)> = backends.iter().map(|p| (p.netns().to_owned(), "eth0")).collect();
    wire.push((outside.0.clone(), "br0"));
    let _wire = WireChecksums::on(wire);
    let xdp_before = xdp_sent(&keep[0].0.0);
    for udp in [false, true] {
        let got: BTreeSet<String> = answers(&outside, udp, node_ip(1), 30080, 24).into_iter().collect();
        assert!(
            got.is_subset(&names) && got.len() >= 2,
            "outside → NodePort (udp: {udp}) answered by {got:?}"
        );
        assert!(
            got.iter().any(|n| n != "b1"),
            "only the local backend answered: {got:?}"
        );
        println!("IPv6 outside -> [{}]:30080 udp={udp}: {got:?}", node_ip(1));
    }
    let xdp = xdp_sent(&keep[0].0.0) - xdp_before;
    assert!(
        xdp >= 20,
        "node 1's XDP sent {xdp} packets back out; its remote-backend flows should all be XDP's"
    );
    println!("IPv6 XDP on n1 sent {xdp} packets back out");
    // No endpoints: refused (ICMPv6 port unreachable), not left to time out.
    let empty: Ipv6Addr = EMPTY_VIP.parse().unwrap();
    for udp in [false, true] {
        let r = if udp {
            client.ask_udp(empty, 80, TIMEOUT)
        } else {
            client.ask_tcp(empty, 80, TIMEOUT)
        };
        let err = r.expect_err("a Service without endpoints must not answer");
        assert_eq!(err.kind, AskErrorKind::Refused, "udp: {udp}: {err}");
    }
}

/// The underlay namespace: the cluster's outside, where its external clients are.
struct Underlay(String);

impl InNetns for Underlay {
    fn netns(&self) -> &str {
        &self.0
    }
}

/// Packets XDP sent back out, as `rudder-proxy inspect` reads them from the pinned maps.
fn xdp_sent(pins: &std::path::Path) -> u64 {
    let report = inspect::report(pins, 0).expect("inspect the pinned maps");
    report
        .lines()
        .find_map(|l| l.strip_prefix("XDP: ")?.split(' ').next()?.parse().ok())
        .unwrap_or_else(|| panic!("no XDP line in:\n{report}"))
}

/// While it lives, these devices put complete L4 checksums on what they send, as packets
/// on a physical wire have them (veth's offload leaves partial ones, which XDP leaves to tc).
struct WireChecksums(Vec<(String, &'static str)>);

impl WireChecksums {
    fn on(devices: Vec<(String, &'static str)>) -> Self {
        for (ns, dev) in &devices {
            tx_offload(ns, dev, false);
        }
        Self(devices)
    }
}

impl Drop for WireChecksums {
    fn drop(&mut self) {
        for (ns, dev) in &self.0 {
            tx_offload(ns, dev, true);
        }
    }
}

fn tx_offload(netns: &str, dev: &str, on: bool) {
    let mut cmd = Command::new("ethtool");
    cmd.args(["-K", dev, "tx", if on { "on" } else { "off" }]);
    rudder_tests::netns::run_in(netns, &cmd).unwrap_or_else(|e| panic!("ethtool -K {dev} tx in {netns}: {e}"));
}
