//! The load balancer's programs, packet in and packet out (BPF_PROG_TEST_RUN, in the style
//! of Katran's fixtures). Each test loads the real object, has the real reconciler write
//! the desired state of real Service and EndpointSlice objects into its maps, and runs
//! the tc ingress program inside a node namespace whose routes it consults.

use std::{
    collections::BTreeSet,
    net::{Ipv4Addr, Ipv6Addr},
    process::Command,
    time::Duration,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use rudder_abi::names;
use rudder_proxy::{
    dataplane::ebpf::{
        BpfLogLevel,
        packet::{self, PROTO_ICMP, PROTO_TCP, PROTO_UDP, Seen, Seen6, TCP_SYN},
        reconcile::MaglevConf,
        testrun::{Outcome, TestLb},
    },
    model::{DesiredState, ModelConfig, NodeInfo, ServicePortMap, endpoints::endpoints_map, service::service_ports},
};
use rudder_tests::{Cluster, InNetns, netns::with_netns};
use serde_json::{Value, json};

const TC_ACT_OK: u32 = 0;
const TC_ACT_SHOT: u32 = 2;
const TC_ACT_REDIRECT: u32 = 7;
/// The next hop towards 10.244.2.0/24 (node 2), with a fixed MAC the tests look for.
const NODE2_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x12];
const CLIENT: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 244, 1, 50), 40000);
const VIP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 10);

fn backends() -> BTreeSet<Ipv4Addr> {
    (10..13).map(|i| Ipv4Addr::new(10, 244, 2, i)).collect()
}

fn service(name: &str, ip: &str, extra: Value) -> Value {
    let mut spec = json!({"clusterIP": ip, "ports": [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
        {"name": "dns", "port": 80, "protocol": "UDP", "targetPort": 8080}]});
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    json!({"metadata": {"namespace": "ns", "name": name}, "spec": spec})
}

fn slice(service: &str, ips: &BTreeSet<Ipv4Addr>) -> Value {
    let eps: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "nodeName": "n2", "conditions": {"ready": true}}))
        .collect();
    json!({"metadata": {"namespace": "ns", "name": format!("{service}-1"),
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": "IPv4",
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 8080, "protocol": "UDP"}],
           "endpoints": eps})
}

fn state(services: &[Value], slices: &[Value]) -> DesiredState {
    state_in(services, slices, "10.250.0.11", "10.244.0.0/16", "10.96.0.0/16")
}

/// The desired state for a node with address `node_ip` in a cluster with these ranges.
fn state_in(
    services: &[Value],
    slices: &[Value],
    node_ip: &str,
    cluster_cidr: &str,
    service_cidr: &str,
) -> DesiredState {
    let mut ports = ServicePortMap::new();
    for s in services {
        let s: Service = serde_json::from_value(s.clone()).expect("a valid Service");
        ports.extend(service_ports(&s).expect("valid ports"));
    }
    let slices: Vec<EndpointSlice> = slices
        .iter()
        .map(|s| serde_json::from_value(s.clone()).expect("a valid slice"))
        .collect();
    let node = NodeInfo {
        name: "n1".into(),
        addresses: vec![node_ip.parse().unwrap()],
        labels: Default::default(),
    };
    let config = ModelConfig {
        cluster_cidrs: vec![cluster_cidr.parse().unwrap()],
        service_cidrs: vec![service_cidr.parse().unwrap()],
        ..Default::default()
    };
    DesiredState::build(
        &ports,
        &endpoints_map(&slices, "n1").expect("valid slices"),
        &node,
        &config,
    )
}

/// A node namespace with a route to node 2's pods through a neighbour with a known MAC.
fn node() -> Cluster {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "BPF_PROG_TEST_RUN needs root: run the tests as root (CI does)"
    );
    let cluster = Cluster::new(1).expect("a one-node netns cluster");
    let n1 = cluster.node(1);
    for args in [
        // First: a new address flushes the device's neighbours.
        "link set eth0 address 02:00:00:00:00:11",
        "route add 10.244.2.0/24 via 10.250.0.12",
        "neigh replace 10.250.0.12 lladdr 02:00:00:00:00:12 dev eth0 nud permanent",
        // A client outside the cluster, on the node's external network.
        "neigh replace 10.250.0.50 lladdr 02:00:00:00:00:50 dev eth0 nud permanent",
    ] {
        n1.run(Command::new("ip").args(args.split(' '))).expect(args);
    }
    cluster
}

/// Runs `f` with a loaded load balancer inside the node's namespace (the programs' route
/// lookups read that namespace's tables).
fn in_node<T: Send>(cluster: &Cluster, f: impl FnOnce(&mut TestLb) -> T + Send) -> T {
    with_netns(cluster.node(1).netns(), || {
        let mut lb = TestLb::load(
            "10.96.0.0/16".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            1024,
            None,
        )
        .expect("the kernel accepts the load balancer");
        f(&mut lb)
    })
    .expect("enter the node namespace")
}

const MAGLEV: MaglevConf = MaglevConf { m: 16381, rows: 8 };

#[test]
fn a_maglev_pick_is_the_same_on_every_node_and_spread_evenly() {
    let cluster = node();
    let many: BTreeSet<Ipv4Addr> = (10..20).map(|i| Ipv4Addr::new(10, 244, 2, i)).collect();
    let svc = service("web", "10.96.0.10", json!({}));
    // Two nodes: separate programs and maps, the same Service; one node learned the
    // endpoints in another order (two slices), which must not matter.
    let (one, two): (BTreeSet<_>, BTreeSet<_>) = many.iter().partition(|ip| ip.octets()[3] % 2 == 0);
    let mut slice_a = slice("web", &two);
    slice_a["metadata"]["name"] = json!("web-a");
    let picks = |slices: Vec<Value>| {
        let svc = svc.clone();
        with_netns(cluster.node(1).netns(), move || {
            let mut lb = TestLb::load(
                "10.96.0.0/16".parse().unwrap(),
                "10.244.0.0/16".parse().unwrap(),
                1024,
                Some(MAGLEV),
            )
            .expect("the kernel accepts the load balancer");
            lb.sync(&state(&[svc], &slices)).unwrap();
            (0..3000u16)
                .map(|i| {
                    let syn = packet::frame(PROTO_TCP, (CLIENT.0, 20000 + i), (VIP, 80), TCP_SYN, b"");
                    packet::read(&lb.run(names::TC_INGRESS, &syn, 1).unwrap().packet)
                        .unwrap()
                        .dst
                })
                .collect::<Vec<_>>()
        })
        .expect("enter the node namespace")
    };
    let node_a = picks(vec![slice("web", &many)]);
    let node_b = picks(vec![slice_a, slice("web", &one)]);
    assert_eq!(node_a, node_b, "every node picks the same backend for a flow");
    let mut counts = std::collections::BTreeMap::new();
    for ip in &node_a {
        *counts.entry(*ip).or_insert(0u32) += 1;
    }
    assert_eq!(counts.len(), many.len(), "every backend gets flows: {counts:?}");
    // 3000 flows over 10 backends: 300 each; ±25% is over 4 standard deviations.
    for (ip, n) in &counts {
        assert!((225..=375).contains(n), "{ip} got {n} of 3000 flows: {counts:?}");
    }
    println!(
        "maglev M=16381: 3000 flows over 10 backends, identical on two nodes; per backend {:?}",
        counts.values().collect::<Vec<_>>()
    );
}

fn ingress(lb: &TestLb, frame: &[u8]) -> (Outcome, Result<Seen, String>) {
    let out = lb.run(names::TC_INGRESS, frame, 1).expect("test run");
    let seen = packet::read(&out.packet);
    (out, seen)
}

#[test]
fn a_vip_hit_is_rewritten_to_a_backend_with_valid_checksums_and_its_reply_back() {
    let cluster = node();
    in_node(&cluster, |lb| {
        lb.sync(&state(
            &[service("web", "10.96.0.10", json!({}))],
            &[slice("web", &backends())],
        ))
        .unwrap();
        for proto in [PROTO_TCP, PROTO_UDP] {
            let syn = packet::frame(proto, CLIENT, (VIP, 80), TCP_SYN, b"rudder-echo?\n");
            let (out, seen) = ingress(lb, &syn);
            let seen = seen.unwrap_or_else(|e| panic!("proto {proto}: the rewritten packet is broken: {e}"));
            assert_eq!(out.verdict, TC_ACT_REDIRECT, "forwarded straight to the next hop");
            assert!(backends().contains(&seen.dst), "sent to {}, not a backend", seen.dst);
            assert_eq!(seen.dport, 8080);
            assert_eq!((seen.src, seen.sport), CLIENT, "a pod's source is kept");
            assert_eq!(seen.dst_mac, NODE2_MAC, "addressed to the next hop");
            println!(
                "proto {proto}: {}:{} -> {VIP}:80 became -> {}:{} (valid IP and L4 checksums)",
                CLIENT.0, CLIENT.1, seen.dst, seen.dport
            );
            // The backend's reply is translated back to the ClusterIP.
            let reply = packet::frame(proto, (seen.dst, 8080), CLIENT, packet::TCP_ACK, b"web-x\n");
            let (out, back) = ingress(lb, &reply);
            let back = back.unwrap_or_else(|e| panic!("proto {proto}: the translated reply is broken: {e}"));
            assert_eq!((back.src, back.sport), (VIP, 80), "replies come from the ClusterIP");
            assert_eq!((back.dst, back.dport), CLIENT);
            assert_eq!(out.verdict, TC_ACT_REDIRECT);
            // The same flow again: the same backend (conntrack), not a new pick.
            for _ in 0..10 {
                let again = packet::read(&ingress(lb, &syn).0.packet).unwrap();
                assert_eq!(again.dst, seen.dst, "one flow, one backend");
            }
        }
    });
}

/// The node's own address in [`node`], as a client outside socket LB.
const NODE: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);

fn egress(lb: &TestLb, frame: &[u8]) -> (Outcome, Result<Seen, String>) {
    let out = lb.run(names::TC_EGRESS, frame, 1).expect("test run");
    let seen = packet::read(&out.packet);
    (out, seen)
}

/// The clash that lost connections in a 3-node cluster: a node process (outside socket LB)
/// talks to a Service and, at the same time and from the same source port, straight to the
/// backend the Service picked. Were the Service flow to keep the port, both would be one
/// tuple on the wire and the backend's answer to the direct connection would be taken for a
/// Service reply. Translated flows get ports above the kernel's ephemeral range instead;
/// here the range is one port, to show how a port is held while its flow lives and freed
/// after it closes.
#[test]
fn a_node_process_s_service_flow_never_shares_a_tuple_with_its_direct_connections() {
    let cluster = node();
    let backend = Ipv4Addr::new(10, 244, 2, 10);
    let one: BTreeSet<Ipv4Addr> = [backend].into();
    in_node(&cluster, |lb| {
        lb.sync(&state(
            &[service("web", "10.96.0.10", json!({}))],
            &[slice("web", &one)],
        ))
        .unwrap();
        lb.set_snat_ports(62000, 1).unwrap();
        let a = (NODE, 40000);
        let (out, seen) = egress(lb, &packet::frame(PROTO_TCP, a, (VIP, 80), TCP_SYN, b""));
        let seen = seen.expect("a valid translated SYN");
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        assert_eq!((seen.dst, seen.dport), (backend, 8080));
        assert_eq!(
            (seen.src, seen.sport),
            (NODE, 62000),
            "the node's address, a port no local socket holds"
        );

        // The same process, the same source port, straight to the backend: untouched, and so
        // is the backend's answer to it.
        let direct = packet::frame(PROTO_TCP, a, (backend, 8080), TCP_SYN, b"");
        let (out, _) = egress(lb, &direct);
        assert_eq!(out.verdict, TC_ACT_OK);
        assert_eq!(out.packet, direct, "a direct connection passes unchanged");
        let answer = packet::frame(PROTO_TCP, (backend, 8080), a, TCP_SYN | packet::TCP_ACK, b"");
        let (out, _) = ingress(lb, &answer);
        assert_eq!(
            out.packet, answer,
            "the backend's answer to the direct connection is not taken for a Service reply"
        );

        // The Service flow's reply is.
        let reply = packet::frame(
            PROTO_TCP,
            (backend, 8080),
            (NODE, 62000),
            TCP_SYN | packet::TCP_ACK,
            b"",
        );
        let back = ingress(lb, &reply).1.expect("a valid translated reply");
        assert_eq!(((back.src, back.sport), (back.dst, back.dport)), ((VIP, 80), a));

        // A second flow finds the only port held by a live flow: its SYN is dropped (the
        // client retries) rather than sharing it.
        let b = (NODE, 40001);
        let syn_b = packet::frame(PROTO_TCP, b, (VIP, 80), TCP_SYN, b"");
        assert_eq!(
            egress(lb, &syn_b).0.verdict,
            TC_ACT_SHOT,
            "no free port while the first flow lives"
        );

        // The first flow closes (FIN both ways, the last ACK); its port is held for the
        // close timeout, then the second flow gets it.
        let fin_ack = packet::TCP_FIN | packet::TCP_ACK;
        let fin = egress(lb, &packet::frame(PROTO_TCP, a, (VIP, 80), fin_ack, b""))
            .1
            .expect("a valid FIN");
        assert_eq!((fin.dst, fin.sport), (backend, 62000));
        let fin = ingress(
            lb,
            &packet::frame(PROTO_TCP, (backend, 8080), (NODE, 62000), fin_ack, b""),
        )
        .1
        .expect("a valid FIN");
        assert_eq!(((fin.src, fin.sport), (fin.dst, fin.dport)), ((VIP, 80), a));
        let ack = egress(lb, &packet::frame(PROTO_TCP, a, (VIP, 80), packet::TCP_ACK, b""))
            .1
            .expect("a valid ACK");
        assert_eq!((ack.dst, ack.sport), (backend, 62000));
        assert_eq!(
            egress(lb, &syn_b).0.verdict,
            TC_ACT_SHOT,
            "a closed flow's port is held for the close timeout"
        );
        // CLOSE_TIMEOUT units of 2^30 ns, and one more for the unit the flow closed in.
        let timeout = Duration::from_nanos((u64::from(rudder_abi::lb::CLOSE_TIMEOUT) + 1) << 30);
        std::thread::sleep(timeout + Duration::from_millis(200));
        let (out, seen) = egress(lb, &syn_b);
        let seen = seen.expect("a valid translated SYN");
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        assert_eq!(
            (seen.src, seen.sport),
            (NODE, 62000),
            "the closed flow's port, reclaimed"
        );
        let back = ingress(lb, &reply).1.expect("a valid translated reply");
        assert_eq!(
            (back.dst, back.dport),
            b,
            "replies on the port now go to the second flow"
        );

        // A new connection on the first flow's old tuple is balanced afresh (the port went
        // to the second flow), and finds no port; once the backend leaves, the second flow's
        // own retried SYN is balanced afresh too, onto the new backend, on its own port.
        assert_eq!(
            egress(lb, &packet::frame(PROTO_TCP, a, (VIP, 80), TCP_SYN, b""))
                .0
                .verdict,
            TC_ACT_SHOT
        );
        let other: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 244, 2, 11)].into();
        lb.sync(&state(
            &[service("web", "10.96.0.10", json!({}))],
            &[slice("web", &other)],
        ))
        .unwrap();
        let seen = egress(lb, &syn_b).1.expect("a valid translated SYN");
        assert_eq!(
            ((seen.src, seen.sport), (seen.dst, seen.dport)),
            ((NODE, 62000), (Ipv4Addr::new(10, 244, 2, 11), 8080))
        );
        println!(
            "a node process's Service flow left as {NODE}:62000 beside its direct connection from :40000; \
             the port was held while the flow lived and for the close timeout ({timeout:?}), then reclaimed"
        );
    });
}

#[test]
fn a_packet_for_no_service_passes_unchanged() {
    let cluster = node();
    in_node(&cluster, |lb| {
        lb.sync(&state(
            &[service("web", "10.96.0.10", json!({}))],
            &[slice("web", &backends())],
        ))
        .unwrap();
        for (dst, why) in [
            ((Ipv4Addr::new(10, 244, 2, 99), 80), "a pod"),
            ((VIP, 81), "a ClusterIP's undefined port: rejected, not passed"),
        ] {
            let frame = packet::frame(PROTO_TCP, CLIENT, dst, TCP_SYN, b"");
            let (out, _) = ingress(lb, &frame);
            if dst.1 == 81 {
                assert_eq!(out.verdict, TC_ACT_REDIRECT, "{why}");
                assert_eq!(packet::read(&out.packet).unwrap().proto, PROTO_ICMP, "{why}");
            } else {
                assert_eq!(out.verdict, TC_ACT_OK, "{why}");
                assert_eq!(out.packet, frame, "{why}: the packet must not change");
            }
        }
        let frame = packet::frame(PROTO_TCP, CLIENT, (Ipv4Addr::new(10, 96, 0, 99), 80), TCP_SYN, b"");
        assert_eq!(
            ingress(lb, &frame).0.verdict,
            TC_ACT_SHOT,
            "an unallocated ClusterIP is dropped"
        );
    });
}

#[test]
fn a_service_without_endpoints_is_refused_with_port_unreachable() {
    let cluster = node();
    in_node(&cluster, |lb| {
        lb.sync(&state(&[service("empty", "10.96.0.20", json!({}))], &[]))
            .unwrap();
        for proto in [PROTO_TCP, PROTO_UDP] {
            let frame = packet::frame(proto, CLIENT, (Ipv4Addr::new(10, 96, 0, 20), 80), TCP_SYN, b"x");
            let (out, seen) = ingress(lb, &frame);
            let seen = seen.unwrap_or_else(|e| panic!("the ICMP reply is broken: {e}"));
            assert_eq!(out.verdict, TC_ACT_REDIRECT, "sent back out where it came from");
            assert_eq!(
                (seen.proto, seen.sport, seen.dport),
                (PROTO_ICMP, 3, 3),
                "destination unreachable, port unreachable"
            );
            assert_eq!((seen.src, seen.dst), (Ipv4Addr::new(10, 96, 0, 20), CLIENT.0));
            assert_eq!(
                seen.quoted,
                Some((CLIENT, (Ipv4Addr::new(10, 96, 0, 20), 80))),
                "quotes the refused packet"
            );
            assert_eq!(
                (seen.dst_mac, seen.src_mac),
                (packet::SRC_MAC, packet::DST_MAC),
                "back to the sender"
            );
        }
    });
}

#[test]
fn client_ip_affinity_holds_within_its_timeout_and_lapses_after_it() {
    let cluster = node();
    in_node(&cluster, |lb| {
        let sticky = service(
            "sticky",
            "10.96.0.10",
            json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 1}}}),
        );
        lb.sync(&state(&[sticky], &[slice("sticky", &backends())])).unwrap();
        let mut port = 30000;
        let mut pick = || {
            port += 1;
            let syn = packet::frame(PROTO_TCP, (CLIENT.0, port), (VIP, 80), TCP_SYN, b"");
            packet::read(&lb.run(names::TC_INGRESS, &syn, 1).unwrap().packet)
                .unwrap()
                .dst
        };
        let mut firsts = BTreeSet::new();
        for round in 0..12 {
            let first = pick();
            for _ in 0..10 {
                assert_eq!(
                    pick(),
                    first,
                    "round {round}: new connections within the timeout keep the backend"
                );
            }
            firsts.insert(first);
            std::thread::sleep(Duration::from_millis(1100));
        }
        // After each lapse the pick is random again: 12 lapses all landing on one of three
        // backends would happen once in 177,000 runs.
        assert!(firsts.len() > 1, "the affinity never lapsed: always {firsts:?}");
        println!(
            "affinity: 12 rounds of 11 connections, each round on one backend; {} distinct after lapses",
            firsts.len()
        );
    });
}

#[test]
fn flow_events_say_which_backend_each_new_flow_went_to() {
    let cluster = node();
    in_node(&cluster, |lb| {
        lb.sync(&state(
            &[service("web", "10.96.0.10", json!({}))],
            &[slice("web", &backends())],
        ))
        .unwrap();
        // Off by default: nothing is recorded.
        let syn = packet::frame(PROTO_TCP, (CLIENT.0, 40999), (VIP, 80), TCP_SYN, b"");
        lb.run(names::TC_INGRESS, &syn, 1).unwrap();
        assert!(
            lb.flow_events().unwrap().is_empty(),
            "flow events are off unless asked for"
        );
        lb.enable_flow_events().unwrap();
        let mut sent = Vec::new();
        for port in 41000..41005u16 {
            let syn = packet::frame(PROTO_TCP, (CLIENT.0, port), (VIP, 80), TCP_SYN, b"");
            let seen = packet::read(&lb.run(names::TC_INGRESS, &syn, 1).unwrap().packet).unwrap();
            // The flow's second packet is established: no new event.
            lb.run(names::TC_INGRESS, &syn, 1).unwrap();
            sent.push(format!(
                "TCP {}:{port} -> {VIP}:80 => {}:{}",
                CLIENT.0, seen.dst, seen.dport
            ));
        }
        let events = flow_lines(lb);
        assert_eq!(
            events, sent,
            "one event per new flow, naming the backend its packets went to"
        );
    });
}

/// The flow events so far, as `rudder-proxy flows` prints them without the service id.
fn flow_lines(lb: &mut TestLb) -> Vec<String> {
    lb.flow_events()
        .expect("read the flow events")
        .iter()
        .map(|e| {
            let line = rudder_proxy::dataplane::ebpf::flows::line(e);
            line.split(" (service id").next().unwrap_or_default().to_owned()
        })
        .collect()
}

const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
const NODE_IP: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 11);
const OUTSIDE: (Ipv4Addr, u16) = (Ipv4Addr::new(10, 250, 0, 50), 50000);
const OUTSIDE_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x50];
const ETH0_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0x11];

fn node_port(name: &str, ip: &str) -> Value {
    service(
        name,
        ip,
        json!({"type": "NodePort", "ports": [
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080},
        {"name": "dns", "port": 80, "protocol": "UDP", "targetPort": 8080, "nodePort": 30080}]}),
    )
}

#[test]
fn xdp_sends_a_nodeport_flow_to_a_remote_backend_back_out_and_leaves_the_rest_to_tc() {
    let cluster = node();
    in_node(&cluster, |lb| {
        let mut local = slice("local", &BTreeSet::from([Ipv4Addr::new(10, 244, 1, 20)]));
        local["endpoints"][0]["nodeName"] = json!("n1");
        lb.sync(&state(
            &[
                node_port("web", "10.96.0.10"),
                node_port_at("local", "10.96.0.30", 30090),
            ],
            &[slice("web", &backends()), local],
        ))
        .unwrap();
        let eth0 = ifindex("eth0");
        let xdp = |frame: &[u8]| {
            let out = lb.run_on(names::XDP_LB, frame, 1, eth0).expect("test run");
            let seen = packet::read(&out.packet);
            (out, seen)
        };
        for proto in [PROTO_TCP, PROTO_UDP] {
            let syn = packet::frame(proto, OUTSIDE, (NODE_IP, 30080), TCP_SYN, b"rudder-echo?\n");
            let (out, seen) = xdp(&syn);
            let seen = seen.unwrap_or_else(|e| panic!("proto {proto}: the translated packet is broken: {e}"));
            assert_eq!(
                out.verdict, XDP_TX,
                "proto {proto}: a remote backend behind eth0: sent straight back out"
            );
            assert!(backends().contains(&seen.dst), "sent to {}, not a backend", seen.dst);
            assert_eq!(seen.dport, 8080);
            assert_eq!(
                seen.src, NODE_IP,
                "masqueraded (externalTrafficPolicy: Cluster), so the reply returns here"
            );
            assert_eq!(
                (seen.dst_mac, seen.src_mac),
                (NODE2_MAC, ETH0_MAC),
                "addressed to node 2 from eth0"
            );
            for _ in 0..5 {
                let (out, again) = xdp(&syn);
                let again = again.expect("valid checksums");
                assert_eq!(out.verdict, XDP_TX);
                assert_eq!(
                    (again.dst, again.sport),
                    (seen.dst, seen.sport),
                    "one flow, one backend, one source port"
                );
            }
            let reply = packet::frame(
                proto,
                (seen.dst, 8080),
                (NODE_IP, seen.sport),
                packet::TCP_ACK,
                b"web-x\n",
            );
            let (out, back) = xdp(&reply);
            let back = back.unwrap_or_else(|e| panic!("proto {proto}: the translated reply is broken: {e}"));
            assert_eq!(out.verdict, XDP_TX, "the reply goes back out too");
            assert_eq!(
                ((back.src, back.sport), (back.dst, back.dport)),
                ((NODE_IP, 30080), OUTSIDE)
            );
            assert_eq!((back.dst_mac, back.src_mac), (OUTSIDE_MAC, ETH0_MAC));
            println!(
                "proto {proto}: {OUTSIDE:?} -> {NODE_IP}:30080 became {}:{} -> {}:8080 and back, both by XDP_TX",
                seen.src, seen.sport, seen.dst
            );

            // A sender with checksum offload (a local veth) leaves a partial checksum,
            // which XDP cannot complete: tc gets the packet as it was.
            let partial = packet::with_partial_checksum(&packet::frame(
                proto,
                (OUTSIDE.0, 50001),
                (NODE_IP, 30080),
                TCP_SYN,
                b"x",
            ));
            let (out, _) = xdp(&partial);
            assert_eq!(
                (out.verdict, &out.packet),
                (XDP_PASS, &partial),
                "proto {proto}: a partial checksum passes to tc untouched"
            );
        }
        for (frame, why) in [
            (
                packet::frame(PROTO_TCP, OUTSIDE, (NODE_IP, 30090), TCP_SYN, b""),
                "a backend on this node (tc delivers it)",
            ),
            (
                packet::frame(PROTO_TCP, OUTSIDE, (Ipv4Addr::new(10, 244, 2, 99), 80), TCP_SYN, b""),
                "no Service",
            ),
            (
                packet::frame(PROTO_TCP, OUTSIDE, (VIP, 81), TCP_SYN, b""),
                "a ClusterIP's undefined port (tc rejects it)",
            ),
        ] {
            let (out, _) = xdp(&frame);
            assert_eq!(
                (out.verdict, &out.packet),
                (XDP_PASS, &frame),
                "{why}: passed to tc unchanged"
            );
        }
        // Nothing was recorded for the local backend, so tc picks it up from the start.
        let frame = packet::frame(PROTO_TCP, OUTSIDE, (NODE_IP, 30090), TCP_SYN, b"");
        let (out, seen) = ingress(lb, &frame);
        assert_eq!(out.verdict, TC_ACT_REDIRECT);
        assert_eq!(
            seen.expect("valid").dst,
            Ipv4Addr::new(10, 244, 1, 20),
            "tc sends it to the local backend"
        );
    });
}

fn node_port_at(name: &str, ip: &str, port: u16) -> Value {
    let mut s = node_port(name, ip);
    s["spec"]["ports"][0]["nodePort"] = json!(port);
    s["spec"]["ports"][1]["nodePort"] = json!(port);
    s
}

fn ifindex(name: &str) -> u32 {
    let c = std::ffi::CString::new(name).expect("a device name");
    // SAFETY: a valid C string; the lookup happens in the calling thread's namespace.
    let index = unsafe { libc::if_nametoindex(c.as_ptr()) };
    assert_ne!(index, 0, "{name} exists in the node namespace");
    index
}

// --- IPv6: the same fixtures over an IPv6 node, Service range and pods. ---

const CLIENT6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, 0x32), 40000);
const VIP6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x96, 0, 0, 0, 0, 0xa);
const NODE6: Ipv6Addr = Ipv6Addr::new(0xfd00, 0x10, 0x250, 0, 0, 0, 0, 0x11);
const OUTSIDE6: (Ipv6Addr, u16) = (Ipv6Addr::new(0xfd00, 0x10, 0x250, 0, 0, 0, 0, 0x50), 50000);

fn backends6() -> BTreeSet<Ipv6Addr> {
    (10..13)
        .map(|i| Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, i))
        .collect()
}

fn service6(name: &str, ip: &str, extra: Value) -> Value {
    let mut s = service(name, ip, extra);
    s["spec"]["ipFamilies"] = json!(["IPv6"]);
    s
}

fn slice6(service: &str, ips: &BTreeSet<Ipv6Addr>) -> Value {
    let mut s = slice(service, &BTreeSet::new());
    s["addressType"] = json!("IPv6");
    s["endpoints"] = ips
        .iter()
        .map(|ip| json!({"addresses": [ip.to_string()], "nodeName": "n2", "conditions": {"ready": true}}))
        .collect();
    s
}

/// [`node_port`] with an IPv6 ClusterIP.
fn node_port6(name: &str, ip: &str) -> Value {
    let mut s = node_port(name, ip);
    s["spec"]["ipFamilies"] = json!(["IPv6"]);
    s
}

fn state6(services: &[Value], slices: &[Value]) -> DesiredState {
    state_in(
        services,
        slices,
        &NODE6.to_string(),
        "fd00:10:244::/56",
        "fd00:10:96::/112",
    )
}

/// [`node`] with IPv6: node 2's pods behind a neighbour with a known MAC, forwarding on (as
/// on any node that routes pods; the FIB lookup refuses otherwise).
fn node6() -> Cluster {
    let cluster = node();
    let n1 = cluster.node(1);
    for args in [
        "-6 addr add fd00:10:250::11/64 dev eth0 nodad",
        // Node 1's own pods (the clients), on its pod bridge.
        "-6 addr add fd00:10:244:1::1/64 dev cbr0 nodad",
        "-6 route add fd00:10:244:2::/64 via fd00:10:250::12",
        "-6 neigh replace fd00:10:250::12 lladdr 02:00:00:00:00:12 dev eth0 nud permanent",
        "-6 neigh replace fd00:10:250::50 lladdr 02:00:00:00:00:50 dev eth0 nud permanent",
    ] {
        n1.run(Command::new("ip").args(args.split(' '))).expect(args);
    }
    n1.run(Command::new("sysctl").args(["-qw", "net.ipv6.conf.all.forwarding=1"]))
        .expect("IPv6 forwarding");
    cluster
}

fn in_node6<T: Send>(cluster: &Cluster, f: impl FnOnce(&mut TestLb) -> T + Send) -> T {
    with_netns(cluster.node(1).netns(), || {
        let mut lb = TestLb::load(
            "fd00:10:96::/112".parse().unwrap(),
            "fd00:10:244::/56".parse().unwrap(),
            1024,
            None,
        )
        .expect("the kernel accepts the load balancer");
        f(&mut lb)
    })
    .expect("enter the node namespace")
}

fn ingress6(lb: &TestLb, frame: &[u8]) -> (Outcome, Result<Seen6, String>) {
    let out = lb.run(names::TC_INGRESS, frame, 1).expect("test run");
    let seen = packet::read6(&out.packet);
    (out, seen)
}

#[test]
fn an_ipv6_vip_hit_is_rewritten_to_a_backend_with_a_valid_checksum_and_its_reply_back() {
    let cluster = node6();
    in_node6(&cluster, |lb| {
        lb.sync(&state6(
            &[service6("web", &VIP6.to_string(), json!({}))],
            &[slice6("web", &backends6())],
        ))
        .unwrap();
        for proto in [PROTO_TCP, PROTO_UDP] {
            let syn = packet::frame6(proto, CLIENT6, (VIP6, 80), TCP_SYN, b"rudder-echo?\n");
            let (out, seen) = ingress6(lb, &syn);
            let seen = seen.unwrap_or_else(|e| panic!("proto {proto}: the rewritten packet is broken: {e}"));
            assert_eq!(out.verdict, TC_ACT_REDIRECT, "forwarded straight to the next hop");
            assert!(backends6().contains(&seen.dst), "sent to {}, not a backend", seen.dst);
            assert_eq!(seen.dport, 8080);
            assert_eq!((seen.src, seen.sport), CLIENT6, "a pod's source is kept");
            assert_eq!(seen.dst_mac, NODE2_MAC, "addressed to the next hop");
            let reply = packet::frame6(proto, (seen.dst, 8080), CLIENT6, packet::TCP_ACK, b"web-x\n");
            let (out, back) = ingress6(lb, &reply);
            let back = back.unwrap_or_else(|e| panic!("proto {proto}: the translated reply is broken: {e}"));
            assert_eq!(out.verdict, TC_ACT_REDIRECT);
            assert_eq!(
                ((back.src, back.sport), (back.dst, back.dport)),
                ((VIP6, 80), CLIENT6),
                "replies come from the ClusterIP"
            );
            for _ in 0..10 {
                let again = packet::read6(&ingress6(lb, &syn).0.packet).unwrap();
                assert_eq!(again.dst, seen.dst, "one flow, one backend");
            }
            println!(
                "IPv6 proto {proto}: [{}]:{} -> [{VIP6}]:80 became -> [{}]:{} and back (valid checksums)",
                CLIENT6.0, CLIENT6.1, seen.dst, seen.dport
            );
        }
    });
}

#[test]
fn ipv6_packets_for_no_service_pass_and_the_service_range_is_refused_or_dropped() {
    let cluster = node6();
    in_node6(&cluster, |lb| {
        lb.sync(&state6(
            &[
                service6("web", &VIP6.to_string(), json!({})),
                service6("empty", "fd00:10:96::14", json!({})),
            ],
            &[slice6("web", &backends6())],
        ))
        .unwrap();
        let pod = (Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x99), 80);
        let frame = packet::frame6(PROTO_TCP, CLIENT6, pod, TCP_SYN, b"");
        let (out, _) = ingress6(lb, &frame);
        assert_eq!(
            (out.verdict, &out.packet),
            (TC_ACT_OK, &frame),
            "a pod: passed unchanged"
        );
        let unallocated = packet::frame6(
            PROTO_TCP,
            CLIENT6,
            ("fd00:10:96::99".parse().unwrap(), 80),
            TCP_SYN,
            b"",
        );
        assert_eq!(
            ingress6(lb, &unallocated).0.verdict,
            TC_ACT_SHOT,
            "an unallocated ClusterIP is dropped"
        );
        let empty: Ipv6Addr = "fd00:10:96::14".parse().unwrap();
        for (dst, why) in [
            ((empty, 80), "no endpoints"),
            ((VIP6, 81), "a ClusterIP's undefined port"),
        ] {
            for proto in [PROTO_TCP, PROTO_UDP] {
                let frame = packet::frame6(proto, CLIENT6, dst, TCP_SYN, b"x");
                let (out, seen) = ingress6(lb, &frame);
                let seen = seen.unwrap_or_else(|e| panic!("{why}: the ICMPv6 reply is broken: {e}"));
                assert_eq!(out.verdict, TC_ACT_REDIRECT, "{why}: sent back out where it came from");
                assert_eq!(
                    (seen.proto, seen.sport, seen.dport),
                    (packet::PROTO_ICMPV6, 1, 4),
                    "{why}: port unreachable"
                );
                assert_eq!((seen.src, seen.dst), (dst.0, CLIENT6.0), "{why}");
                assert_eq!(seen.quoted, Some((CLIENT6, dst)), "{why}: quotes the refused packet");
                assert_eq!(
                    (seen.dst_mac, seen.src_mac),
                    (packet::SRC_MAC, packet::DST_MAC),
                    "{why}: back to the sender"
                );
            }
        }
    });
}

#[test]
fn an_ipv6_nodeport_from_outside_is_masqueraded_and_its_reply_returns_through_the_node() {
    let cluster = node6();
    in_node6(&cluster, |lb| {
        let np = node_port6("web", &VIP6.to_string());
        lb.sync(&state6(&[np], &[slice6("web", &backends6())])).unwrap();
        for proto in [PROTO_TCP, PROTO_UDP] {
            let syn = packet::frame6(proto, OUTSIDE6, (NODE6, 30080), TCP_SYN, b"rudder-echo?\n");
            let (out, seen) = ingress6(lb, &syn);
            let seen = seen.unwrap_or_else(|e| panic!("proto {proto}: the translated packet is broken: {e}"));
            assert_eq!(out.verdict, TC_ACT_REDIRECT);
            assert!(backends6().contains(&seen.dst), "sent to {}, not a backend", seen.dst);
            assert_eq!(
                seen.src, NODE6,
                "masqueraded to the node (externalTrafficPolicy: Cluster)"
            );
            let reply = packet::frame6(
                proto,
                (seen.dst, 8080),
                (NODE6, seen.sport),
                packet::TCP_ACK,
                b"web-x\n",
            );
            let (out, back) = ingress6(lb, &reply);
            let back = back.unwrap_or_else(|e| panic!("proto {proto}: the translated reply is broken: {e}"));
            assert_eq!(out.verdict, TC_ACT_REDIRECT);
            assert_eq!(
                ((back.src, back.sport), (back.dst, back.dport)),
                ((NODE6, 30080), OUTSIDE6)
            );
            assert_eq!(back.dst_mac, OUTSIDE_MAC, "back to the outside client");
            println!(
                "IPv6 proto {proto}: {OUTSIDE6:?} -> [{NODE6}]:30080 became [{}]:{} -> [{}]:8080 and back",
                seen.src, seen.sport, seen.dst
            );
        }
    });
}

#[test]
fn ipv6_client_ip_affinity_keeps_a_client_on_one_backend() {
    let cluster = node6();
    in_node6(&cluster, |lb| {
        let sticky = service6(
            "sticky",
            &VIP6.to_string(),
            json!({"sessionAffinity": "ClientIP",
            "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        );
        lb.sync(&state6(&[sticky], &[slice6("sticky", &backends6())])).unwrap();
        let pick = |client: Ipv6Addr, port: u16| {
            let syn = packet::frame6(PROTO_TCP, (client, port), (VIP6, 80), TCP_SYN, b"");
            packet::read6(&lb.run(names::TC_INGRESS, &syn, 1).unwrap().packet)
                .unwrap()
                .dst
        };
        let mut firsts = BTreeSet::new();
        for c in 1..=12u16 {
            let client = Ipv6Addr::new(0xfd00, 0x10, 0x244, 1, 0, 0, 0, c);
            let first = pick(client, 30000);
            for port in 30001..30011 {
                assert_eq!(
                    pick(client, port),
                    first,
                    "client {client}: new connections keep the backend"
                );
            }
            firsts.insert(first);
        }
        // Twelve clients all on one of three backends would happen once in 177,000 runs.
        assert!(
            firsts.len() > 1,
            "every client got {firsts:?}: affinity is per client, not per Service"
        );
    });
}

#[test]
fn ipv6_load_balancer_source_ranges_admit_only_their_sources() {
    let cluster = node6();
    in_node6(&cluster, |lb| {
        let lb_ip: Ipv6Addr = "fd00:10:250::100".parse().unwrap();
        let mut svc = node_port6("web", &VIP6.to_string());
        svc["spec"]["type"] = json!("LoadBalancer");
        svc["spec"]["loadBalancerSourceRanges"] = json!([format!("{}/128", OUTSIDE6.0), "10.0.0.0/8"]);
        svc["status"] = json!({"loadBalancer": {"ingress": [{"ip": lb_ip.to_string()}]}});
        lb.sync(&state6(&[svc], &[slice6("web", &backends6())])).unwrap();
        let admitted = packet::frame6(PROTO_TCP, OUTSIDE6, (lb_ip, 80), TCP_SYN, b"");
        let (out, seen) = ingress6(lb, &admitted);
        assert_eq!(out.verdict, TC_ACT_REDIRECT, "a source inside the ranges is served");
        assert!(backends6().contains(&seen.expect("valid checksum").dst));
        let stranger = (Ipv6Addr::new(0xfd00, 0x10, 0x250, 0, 0, 0, 0, 0x51), 50000);
        let refused = packet::frame6(PROTO_TCP, stranger, (lb_ip, 80), TCP_SYN, b"");
        assert_eq!(
            ingress6(lb, &refused).0.verdict,
            TC_ACT_SHOT,
            "a source outside the ranges is dropped"
        );
    });
}

#[test]
fn xdp_sends_an_ipv6_nodeport_flow_to_a_remote_backend_back_out_and_leaves_the_rest_to_tc() {
    let cluster = node6();
    in_node6(&cluster, |lb| {
        let np = node_port6("web", &VIP6.to_string());
        lb.sync(&state6(&[np], &[slice6("web", &backends6())])).unwrap();
        let eth0 = ifindex("eth0");
        let xdp = |frame: &[u8]| {
            let out = lb.run_on(names::XDP_LB, frame, 1, eth0).expect("test run");
            let seen = packet::read6(&out.packet);
            (out, seen)
        };
        for proto in [PROTO_TCP, PROTO_UDP] {
            let syn = packet::frame6(proto, OUTSIDE6, (NODE6, 30080), TCP_SYN, b"rudder-echo?\n");
            let (out, seen) = xdp(&syn);
            let seen = seen.unwrap_or_else(|e| panic!("proto {proto}: the translated packet is broken: {e}"));
            assert_eq!(
                out.verdict, XDP_TX,
                "proto {proto}: a remote backend behind eth0: sent straight back out"
            );
            assert!(backends6().contains(&seen.dst), "sent to {}, not a backend", seen.dst);
            assert_eq!((seen.src, seen.dport), (NODE6, 8080), "masqueraded to the node");
            assert_eq!(
                (seen.dst_mac, seen.src_mac),
                (NODE2_MAC, ETH0_MAC),
                "addressed to node 2 from eth0"
            );
            for _ in 0..5 {
                let (out, again) = xdp(&syn);
                assert_eq!(out.verdict, XDP_TX);
                let again = again.expect("a valid checksum");
                assert_eq!(
                    (again.dst, again.sport),
                    (seen.dst, seen.sport),
                    "one flow, one backend, one source port"
                );
            }
            let reply = packet::frame6(
                proto,
                (seen.dst, 8080),
                (NODE6, seen.sport),
                packet::TCP_ACK,
                b"web-x\n",
            );
            let (out, back) = xdp(&reply);
            let back = back.unwrap_or_else(|e| panic!("proto {proto}: the translated reply is broken: {e}"));
            assert_eq!(out.verdict, XDP_TX, "the reply goes back out too");
            assert_eq!(
                ((back.src, back.sport), (back.dst, back.dport)),
                ((NODE6, 30080), OUTSIDE6)
            );
            assert_eq!((back.dst_mac, back.src_mac), (OUTSIDE_MAC, ETH0_MAC));
            // A partial checksum (a local sender with offload) passes to tc as it was.
            let mut partial = packet::frame6(proto, (OUTSIDE6.0, 50001), (NODE6, 30080), TCP_SYN, b"x");
            let at = 54 + if proto == PROTO_TCP { 16 } else { 6 };
            let sum = packet::pseudo_sum6(&partial);
            partial[at..at + 2].copy_from_slice(&sum.to_be_bytes());
            let (out, _) = xdp(&partial);
            assert_eq!(
                (out.verdict, &out.packet),
                (XDP_PASS, &partial),
                "proto {proto}: a partial checksum passes to tc untouched"
            );
        }
        let stranger = packet::frame6(
            PROTO_TCP,
            OUTSIDE6,
            (Ipv6Addr::new(0xfd00, 0x10, 0x244, 2, 0, 0, 0, 0x99), 80),
            TCP_SYN,
            b"",
        );
        let (out, _) = xdp(&stranger);
        assert_eq!(
            (out.verdict, &out.packet),
            (XDP_PASS, &stranger),
            "no Service: passed to tc unchanged"
        );
    });
}

#[test]
fn ipv6_flow_events_say_which_backend_each_new_flow_went_to() {
    let cluster = node6();
    in_node6(&cluster, |lb| {
        lb.sync(&state6(
            &[service6("web", &VIP6.to_string(), json!({}))],
            &[slice6("web", &backends6())],
        ))
        .unwrap();
        lb.enable_flow_events().unwrap();
        let mut sent = Vec::new();
        for port in 41000..41003u16 {
            let syn = packet::frame6(PROTO_TCP, (CLIENT6.0, port), (VIP6, 80), TCP_SYN, b"");
            let seen = packet::read6(&lb.run(names::TC_INGRESS, &syn, 1).unwrap().packet).unwrap();
            lb.run(names::TC_INGRESS, &syn, 1).unwrap();
            sent.push(format!(
                "TCP [{}]:{port} -> [{VIP6}]:80 => [{}]:{}",
                CLIENT6.0, seen.dst, seen.dport
            ));
        }
        let events = flow_lines(lb);
        assert_eq!(events, sent, "one event per new IPv6 flow, naming its backend");
    });
}

/// Creates a hash map with these sizes and pins it at `path` (raw `bpf(2)`: the point is a
/// map this build's object would not make).
fn pin_hash_map(path: &std::path::Path, key_size: u32, value_size: u32) {
    use std::os::unix::ffi::OsStrExt;
    const BPF_MAP_CREATE: libc::c_long = 0;
    const BPF_OBJ_PIN: libc::c_long = 6;
    const BPF_MAP_TYPE_HASH: u32 = 1;
    let mut attr = [0u32; 32];
    attr[..4].copy_from_slice(&[BPF_MAP_TYPE_HASH, key_size, value_size, 16]);
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            BPF_MAP_CREATE,
            attr.as_ptr(),
            std::mem::size_of_val(&attr),
        )
    };
    assert!(fd >= 0, "BPF_MAP_CREATE: {}", std::io::Error::last_os_error());
    let name = std::ffi::CString::new(path.as_os_str().as_bytes()).expect("a path without NUL");
    let mut attr = [0u64; 16];
    attr[0] = name.as_ptr() as u64;
    attr[1] = fd as u64;
    let rc = unsafe { libc::syscall(libc::SYS_bpf, BPF_OBJ_PIN, attr.as_ptr(), std::mem::size_of_val(&attr)) };
    assert_eq!(
        rc,
        0,
        "BPF_OBJ_PIN {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
    unsafe { libc::close(fd as i32) };
}

/// An upgrade whose flow entries changed shape: the pins the previous proxy left are
/// replaced (aya would reuse them as they are), the ones that still fit are kept.
#[test]
fn pinned_maps_of_another_layout_are_replaced_and_the_rest_kept() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "pinning BPF maps needs root: run the tests as root (CI does)"
    );
    let root = std::path::PathBuf::from(format!("/run/rudder-stale-pins-{}", std::process::id()));
    std::fs::create_dir_all(&root).expect("mount point");
    let mounted = Command::new("mount")
        .args(["-t", "bpf", "bpf"])
        .arg(&root)
        .status()
        .expect("mount");
    assert!(mounted.success(), "mount a bpffs at {}", root.display());
    struct Unmount(std::path::PathBuf);
    impl Drop for Unmount {
        fn drop(&mut self) {
            let _ = Command::new("umount").arg(&self.0).status();
            let _ = std::fs::remove_dir(&self.0);
        }
    }
    let _guard = Unmount(root.clone());
    use rudder_abi::lb::{Conntrack, FlowKey, Reverse};
    let size = |n: usize| u32::try_from(n).expect("small");
    // The layout of an older build (conntrack entries 4 bytes shorter), and today's.
    pin_hash_map(
        &root.join(names::CONNTRACK),
        size(std::mem::size_of::<FlowKey>()),
        size(std::mem::size_of::<Conntrack>() - 4),
    );
    pin_hash_map(
        &root.join(names::REVERSE),
        size(std::mem::size_of::<FlowKey>()),
        size(std::mem::size_of::<Reverse>()),
    );
    let stale = rudder_proxy::dataplane::ebpf::attach::unpin_stale_maps(&root).expect("checked");
    assert_eq!(stale, vec![names::CONNTRACK]);
    assert!(!root.join(names::CONNTRACK).exists(), "the stale pin is gone");
    assert!(root.join(names::REVERSE).exists(), "a pin that fits is kept");
}

/// A masqueraded flow keeps its client's source port when that port lies outside the
/// node's ephemeral range and is free (as NAT keeps ports where it can), and otherwise
/// gets one outside that range.
#[test]
fn a_masqueraded_flow_keeps_its_client_s_port_where_it_can() {
    let cluster = node();
    in_node(&cluster, |lb| {
        lb.sync(&state(&[node_port("web", "10.96.0.10")], &[slice("web", &backends())]))
            .unwrap();
        let (low, high) = ephemeral_range();
        for (sport, keeps) in [(63000, true), (2000, true), (low, false), (high, false)] {
            let syn = packet::frame(PROTO_TCP, (OUTSIDE.0, sport), (NODE_IP, 30080), TCP_SYN, b"");
            let seen = ingress(lb, &syn).1.expect("a valid translated SYN");
            assert_eq!(seen.src, NODE_IP, "masqueraded");
            if keeps {
                assert_eq!(seen.sport, sport, "a free port outside {low}-{high} is kept");
            } else {
                assert!(
                    !(low..=high).contains(&seen.sport),
                    "port {sport} became {}, inside {low}-{high}",
                    seen.sport
                );
            }
        }
    });
}

fn ephemeral_range() -> (u16, u16) {
    let text = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range").expect("the ephemeral range");
    let mut ports = text.split_whitespace().map(|p| p.parse::<u16>().expect("a port"));
    (ports.next().expect("low"), ports.next().expect("high"))
}

/// What the programs log (`--bpf-log-level`), as the proxy's forwarder hands it to
/// `tracing`: one formatted line per record.
#[derive(Clone, Default)]
struct Captured(std::sync::Arc<std::sync::Mutex<Vec<u8>>>);

impl std::io::Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// Loads the programs with their log records at `level`, drives two rare paths through
/// tc ingress — a SYN to a Service without endpoints (refused) and a masqueraded new flow
/// whose backend's route is a blackhole (dropped) — and returns the verdicts and the
/// log lines that reached `tracing`.
fn rare_paths_logged(cluster: &Cluster, level: BpfLogLevel) -> ([u32; 2], Vec<String>) {
    let n1 = cluster.node(1);
    let blackhole = "route replace blackhole 10.99.0.0/24";
    n1.run(Command::new("ip").args(blackhole.split(' '))).expect(blackhole);
    let unroutable: BTreeSet<Ipv4Addr> = [Ipv4Addr::new(10, 99, 0, 5)].into();
    with_netns(n1.netns(), move || {
        let mut lb = TestLb::load_with_logs(
            "10.96.0.0/16".parse().unwrap(),
            "10.244.0.0/16".parse().unwrap(),
            1024,
            None,
            level,
        )
        .expect("the kernel accepts the load balancer with its log records at this level");
        lb.sync(&state(
            &[
                service("empty", "10.96.0.20", json!({})),
                node_port("web", "10.96.0.10"),
            ],
            &[slice("web", &unroutable)],
        ))
        .unwrap();
        let refused = packet::frame(PROTO_TCP, CLIENT, (Ipv4Addr::new(10, 96, 0, 20), 80), TCP_SYN, b"");
        let no_route = packet::frame(PROTO_TCP, OUTSIDE, (NODE_IP, 30080), TCP_SYN, b"");
        let verdicts = [
            lb.run(names::TC_INGRESS, &refused, 1).expect("test run").verdict,
            lb.run(names::TC_INGRESS, &no_route, 1).expect("test run").verdict,
        ];
        let captured = Captured::default();
        let writer = captured.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .without_time()
            .with_max_level(tracing::Level::TRACE)
            .finish();
        tracing::subscriber::with_default(subscriber, || lb.forward_logs());
        let text = String::from_utf8(captured.0.lock().unwrap().clone()).expect("UTF-8 log lines");
        (verdicts, text.lines().map(|l| l.trim().to_owned()).collect())
    })
    .expect("enter the node namespace")
}

const REFUSED_LINE: &str =
    "INFO rudder_ebpf: refused 10.244.1.50:40000 -> 10.96.0.20:80 proto 6: the Service has no endpoints";
const NO_ROUTE_LINE: &str =
    "WARN rudder_ebpf: new flow dropped: FIB lookup towards backend 10.99.0.5:8080 failed (BPF_FIB_LKUP_RET 1)";

#[test]
fn with_bpf_logs_on_a_refusal_and_a_flow_without_a_route_are_logged() {
    let cluster = node();
    let (verdicts, lines) = rare_paths_logged(&cluster, BpfLogLevel::Info);
    assert_eq!(
        verdicts,
        [TC_ACT_REDIRECT, TC_ACT_SHOT],
        "ICMP back to the client; the flow dropped"
    );
    // BPF_FIB_LKUP_RET_BLACKHOLE is 1.
    assert_eq!(
        lines,
        [REFUSED_LINE, NO_ROUTE_LINE],
        "one record per rare path, with its content"
    );
    println!("bpf log records:\n{}", lines.join("\n"));
}

#[test]
fn every_program_passes_the_verifier_at_every_bpf_log_level() {
    let cluster = node();
    with_netns(cluster.node(1).netns(), || {
        for level in [
            BpfLogLevel::Off,
            BpfLogLevel::Warn,
            BpfLogLevel::Info,
            BpfLogLevel::Debug,
        ] {
            // The per-packet programs load in `load_with_logs`; the socket hooks here.
            let mut lb = TestLb::load_with_logs(
                "10.96.0.0/16".parse().unwrap(),
                "10.244.0.0/16".parse().unwrap(),
                1024,
                None,
                level,
            )
            .unwrap_or_else(|e| panic!("{level:?}: the kernel refuses the per-packet programs: {e:?}"));
            lb.load_socket_lb()
                .unwrap_or_else(|e| panic!("{level:?}: the kernel refuses the socket hooks: {e:?}"));
        }
    })
    .expect("enter the node namespace");
}

#[test]
fn bpf_logs_are_off_by_default_and_a_level_keeps_only_what_it_names() {
    let cluster = node();
    let (verdicts, lines) = rare_paths_logged(&cluster, BpfLogLevel::default());
    assert_eq!(
        verdicts,
        [TC_ACT_REDIRECT, TC_ACT_SHOT],
        "the same packets, the same verdicts"
    );
    assert_eq!(lines, Vec::<String>::new(), "off by default: no record at all");
    let (_, lines) = rare_paths_logged(&cluster, BpfLogLevel::Warn);
    assert_eq!(lines, [NO_ROUTE_LINE], "warn: the dropped flow, not the refusal");
}
