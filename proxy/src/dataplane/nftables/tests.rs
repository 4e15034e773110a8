//! Packet-tracer tests in the spirit of upstream's nftables helpers_test.go: Services and
//! EndpointSlices in as the JSON a user would apply, then "where does this packet go?".

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use serde_json::{Value, json};

use super::{Packet, Ruleset, Verdict, render_full, render_incremental, ruleset::short_hash, trace};
use crate::model::{
    DesiredState, Diff, IpNet, ModelConfig, NodeInfo, Protocol, ServiceName, ServicePortMap, ServicePortName,
    endpoints::endpoints_map, service::service_ports,
};

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn cidr(s: &str) -> IpNet {
    s.parse().unwrap()
}

fn svc(name: &str, spec: Value, status: Value) -> Value {
    json!({"metadata": {"namespace": "ns", "name": name}, "spec": spec, "status": status})
}

/// One slice of `service` whose ports are (name, protocol, port) and whose endpoints are
/// (address, node, ready/serving/terminating).
fn eps(service: &str, ports: &[(&str, &str, u16)], endpoints: &[(&str, &str, bool)]) -> Value {
    let ports: Vec<_> = ports
        .iter()
        .map(|(n, p, port)| json!({"name": n, "protocol": p, "port": port}))
        .collect();
    let endpoints: Vec<_> = endpoints
        .iter()
        .map(|(addr, node, ready)| {
            let conditions = if *ready {
                json!({"ready": true})
            } else {
                json!({"ready": false, "serving": true, "terminating": true})
            };
            json!({"addresses": [addr], "nodeName": node, "conditions": conditions})
        })
        .collect();
    json!({
        "metadata": {"namespace": "ns", "name": format!("{service}-1"),
                     "labels": {"kubernetes.io/service-name": service}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    })
}

fn http(port: u16, node_port: Option<u16>) -> Value {
    let mut p = json!({"name": "http", "port": port});
    if let Some(np) = node_port {
        p["nodePort"] = json!(np);
    }
    json!([p])
}

fn cluster(ip: &str, ports: Value) -> Value {
    json!({"clusterIP": ip, "clusterIPs": [ip], "ports": ports})
}

fn with(mut base: Value, extra: Value) -> Value {
    if let (Some(m), Value::Object(e)) = (base.as_object_mut(), extra) {
        m.extend(e);
    }
    base
}

fn lb_status(ip: &str) -> Value {
    json!({"loadBalancer": {"ingress": [{"ip": ip}]}})
}

fn fixtures() -> (Vec<Value>, Vec<Value>) {
    let http_eps = |s: &str, e: &[(&str, &str, bool)]| eps(s, &[("http", "TCP", 8080)], e);
    let services = vec![
        svc(
            "web",
            with(
                cluster("10.96.0.10", http(80, Some(30080))),
                json!({"type": "NodePort", "externalIPs": ["192.0.2.10"]}),
            ),
            json!({}),
        ),
        svc(
            "lb",
            with(
                cluster("10.96.0.20", http(80, Some(30020))),
                json!({"type": "LoadBalancer", "loadBalancerSourceRanges": ["198.51.100.0/24"]}),
            ),
            lb_status("203.0.113.10"),
        ),
        svc(
            "lb-open",
            with(
                cluster("10.96.0.21", http(80, Some(30021))),
                json!({"type": "LoadBalancer"}),
            ),
            lb_status("203.0.113.11"),
        ),
        svc(
            "dns",
            cluster(
                "10.96.0.53",
                json!([
                {"name": "dns-tcp", "port": 53, "protocol": "TCP"},
                {"name": "dns-udp", "port": 53, "protocol": "UDP"},
                {"name": "dns-sctp", "port": 53, "protocol": "SCTP"}]),
            ),
            json!({}),
        ),
        svc(
            "local",
            with(
                cluster("10.96.0.30", http(80, Some(30030))),
                json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local",
                        "healthCheckNodePort": 32000}),
            ),
            lb_status("203.0.113.30"),
        ),
        svc(
            "local-none",
            with(
                cluster("10.96.0.31", http(80, Some(30031))),
                json!({"type": "NodePort", "externalTrafficPolicy": "Local"}),
            ),
            json!({}),
        ),
        svc(
            "itp",
            with(
                cluster("10.96.0.40", http(80, None)),
                json!({"internalTrafficPolicy": "Local"}),
            ),
            json!({}),
        ),
        svc("term", cluster("10.96.0.50", http(80, None)), json!({})),
        svc(
            "sticky",
            with(
                cluster("10.96.0.60", http(80, None)),
                json!({"sessionAffinity": "ClientIP"}),
            ),
            json!({}),
        ),
        svc("empty", cluster("10.96.0.70", http(80, None)), json!({})),
        svc(
            "dual",
            json!({"type": "NodePort", "clusterIPs": ["10.96.0.90", "fd00:96::90"],
                   "ports": [{"name": "http", "port": 80, "nodePort": 30090}]}),
            json!({}),
        ),
    ];
    let slices = vec![
        http_eps(
            "web",
            &[
                ("10.244.1.10", "node-1", true),
                ("10.244.2.10", "node-2", true),
                ("10.244.3.10", "node-3", true),
            ],
        ),
        http_eps("lb", &[("10.244.2.20", "node-2", true)]),
        http_eps("lb-open", &[("10.244.2.21", "node-2", true)]),
        eps(
            "dns",
            &[
                ("dns-tcp", "TCP", 5301),
                ("dns-udp", "UDP", 5302),
                ("dns-sctp", "SCTP", 5303),
            ],
            &[("10.244.1.53", "node-1", true)],
        ),
        http_eps(
            "local",
            &[("10.244.1.30", "node-1", true), ("10.244.2.30", "node-2", true)],
        ),
        http_eps("local-none", &[("10.244.2.31", "node-2", true)]),
        http_eps(
            "itp",
            &[("10.244.1.40", "node-1", true), ("10.244.2.40", "node-2", true)],
        ),
        http_eps("term", &[("10.244.2.50", "node-2", false)]),
        http_eps(
            "sticky",
            &[("10.244.1.60", "node-1", true), ("10.244.2.60", "node-2", true)],
        ),
        http_eps("dual", &[("10.244.1.90", "node-1", true)]),
        json!({
            "metadata": {"namespace": "ns", "name": "dual-6",
                         "labels": {"kubernetes.io/service-name": "dual"}},
            "addressType": "IPv6",
            "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": [{"addresses": ["fd00:244::a"], "nodeName": "node-1"},
                          {"addresses": ["fd00:244:0:2::b"], "nodeName": "node-2"}],
        }),
    ];
    (services, slices)
}

fn build(services: &[Value], slices: &[Value]) -> DesiredState {
    let mut ports = ServicePortMap::new();
    for s in services {
        let s: Service = serde_json::from_value(s.clone()).expect("valid Service");
        ports.extend(service_ports(&s).unwrap());
    }
    let slices: Vec<EndpointSlice> = slices
        .iter()
        .map(|s| serde_json::from_value(s.clone()).expect("valid slice"))
        .collect();
    let node = NodeInfo {
        name: "node-1".into(),
        addresses: vec![ip("10.250.0.11"), ip("192.168.1.11"), ip("fd00:250::11")],
        labels: BTreeMap::new(),
    };
    let config = ModelConfig {
        cluster_cidrs: vec![cidr("10.244.0.0/16"), cidr("fd00:244::/56")],
        nodeport_addresses: vec![],
        masquerade_all: false,
        service_cidrs: vec![cidr("10.96.0.0/16"), cidr("fd00:96::/112")],
    };
    let eps = endpoints_map(&slices, &node.name).unwrap();
    DesiredState::build(&ports, &eps, &node, &config)
}

fn state() -> DesiredState {
    let (services, slices) = fixtures();
    build(&services, &slices)
}

fn dnat(backends: &[&str], masquerade: bool) -> Verdict {
    let backends = backends
        .iter()
        .map(|b| {
            let (a, p) = b.rsplit_once(':').unwrap();
            (ip(a), p.parse().unwrap())
        })
        .collect();
    Verdict::Dnat { backends, masquerade }
}

const POD: &str = "10.244.9.9";
const OUTSIDE: &str = "203.0.113.200";
const NODE: &str = "10.250.0.11";

#[test]
fn packets_reach_what_the_services_say() {
    use Protocol::{Sctp, Tcp, Udp};
    let web = ["10.244.1.10:8080", "10.244.2.10:8080", "10.244.3.10:8080"];
    let local_all = ["10.244.1.30:8080", "10.244.2.30:8080"];
    let v6 = ["fd00:244::a:8080", "fd00:244:0:2::b:8080"];
    #[rustfmt::skip]
    let cases: Vec<(&str, &str, Protocol, &str, u16, bool, Verdict)> = vec![
        ("clusterIP from a pod: 3 backends, source kept", POD, Tcp, "10.96.0.10", 80, false, dnat(&web, false)),
        ("clusterIP from outside the pod CIDR: masqueraded", OUTSIDE, Tcp, "10.96.0.10", 80, false, dnat(&web, true)),
        ("clusterIP from the host", NODE, Tcp, "10.96.0.10", 80, true, dnat(&web, true)),
        ("hairpin: a backend reaching itself is masqueraded", "10.244.1.10", Tcp, "10.96.0.10", 80, false, dnat(&web, true)),
        ("nodePort on a node address", OUTSIDE, Tcp, NODE, 30080, false, dnat(&web, true)),
        ("nodePort on the other node address", OUTSIDE, Tcp, "192.168.1.11", 30080, false, dnat(&web, true)),
        ("nodePort on a foreign address is not ours", OUTSIDE, Tcp, "10.250.0.99", 30080, false, Verdict::Accept),
        ("nodePort with the wrong protocol", OUTSIDE, Udp, NODE, 30080, false, Verdict::Accept),
        ("externalIP", OUTSIDE, Tcp, "192.0.2.10", 80, false, dnat(&web, true)),
        ("LB IP from an allowed range", "198.51.100.7", Tcp, "203.0.113.10", 80, false, dnat(&["10.244.2.20:8080"], true)),
        ("LB IP from outside the ranges", OUTSIDE, Tcp, "203.0.113.10", 80, false, Verdict::Drop),
        ("ranges guard the LB IP only, not the nodePort", OUTSIDE, Tcp, NODE, 30020, false, dnat(&["10.244.2.20:8080"], true)),
        ("LB IP without ranges", OUTSIDE, Tcp, "203.0.113.11", 80, false, dnat(&["10.244.2.21:8080"], true)),
        ("TCP on a shared port", POD, Tcp, "10.96.0.53", 53, false, dnat(&["10.244.1.53:5301"], false)),
        ("UDP on a shared port", POD, Udp, "10.96.0.53", 53, false, dnat(&["10.244.1.53:5302"], false)),
        ("SCTP on a shared port", POD, Sctp, "10.96.0.53", 53, false, dnat(&["10.244.1.53:5303"], false)),
        ("eTP=Local: local backends only, client source kept", OUTSIDE, Tcp, "203.0.113.30", 80, false, dnat(&["10.244.1.30:8080"], false)),
        ("eTP=Local nodePort", OUTSIDE, Tcp, NODE, 30030, false, dnat(&["10.244.1.30:8080"], false)),
        ("eTP=Local: pods short-circuit to all backends", POD, Tcp, "203.0.113.30", 80, false, dnat(&local_all, false)),
        ("eTP=Local: the host short-circuits, masqueraded", NODE, Tcp, "203.0.113.30", 80, true, dnat(&local_all, true)),
        ("eTP=Local leaves the clusterIP cluster-wide", POD, Tcp, "10.96.0.30", 80, false, dnat(&local_all, false)),
        ("eTP=Local without local endpoints drops", OUTSIDE, Tcp, NODE, 30031, false, Verdict::Drop),
        ("eTP=Local without local endpoints: pods still reach the remote one", POD, Tcp, NODE, 30031, false, dnat(&["10.244.2.31:8080"], false)),
        ("eTP=Local without local endpoints: so does the host, masqueraded", NODE, Tcp, NODE, 30031, true, dnat(&["10.244.2.31:8080"], true)),
        ("...but its clusterIP still works", POD, Tcp, "10.96.0.31", 80, false, dnat(&["10.244.2.31:8080"], false)),
        ("iTP=Local: local backend only", POD, Tcp, "10.96.0.40", 80, false, dnat(&["10.244.1.40:8080"], false)),
        ("terminating endpoints serve when none is ready", POD, Tcp, "10.96.0.50", 80, false, dnat(&["10.244.2.50:8080"], false)),
        ("affinity: a first packet may reach any backend", POD, Tcp, "10.96.0.60", 80, false, dnat(&["10.244.1.60:8080", "10.244.2.60:8080"], false)),
        ("affinity hairpin", "10.244.2.60", Tcp, "10.96.0.60", 80, false, dnat(&["10.244.1.60:8080", "10.244.2.60:8080"], true)),
        ("no endpoints: TCP rejected", POD, Tcp, "10.96.0.70", 80, false, Verdict::Reject),
        ("no endpoints: from the host too", NODE, Tcp, "10.96.0.70", 80, true, Verdict::Reject),
        ("allocated clusterIP, undefined port: rejected", POD, Tcp, "10.96.0.10", 81, false, Verdict::Reject),
        ("unallocated address in the service CIDR: dropped", POD, Tcp, "10.96.5.5", 80, false, Verdict::Drop),
        ("unallocated, from the host", NODE, Udp, "10.96.5.5", 53, true, Verdict::Drop),
        ("not a service address: untouched", POD, Udp, "8.8.8.8", 53, false, Verdict::Accept),
        ("a backend addressed directly: untouched", POD, Tcp, "10.244.1.10", 8080, false, Verdict::Accept),
        ("dual-stack: IPv4 clusterIP reaches IPv4 backends", POD, Tcp, "10.96.0.90", 80, false, dnat(&["10.244.1.90:8080"], false)),
        ("dual-stack: IPv6 clusterIP reaches IPv6 backends", "fd00:244::5", Tcp, "fd00:96::90", 80, false, dnat(&v6, false)),
        ("IPv6 from outside the pod CIDR", "2001:db8::1", Tcp, "fd00:96::90", 80, false, dnat(&v6, true)),
        ("IPv6 nodePort", "2001:db8::1", Tcp, "fd00:250::11", 30090, false, dnat(&v6, true)),
        ("IPv6 hairpin", "fd00:244::a", Tcp, "fd00:96::90", 80, false, dnat(&v6, true)),
        ("IPv6 unallocated service address", "fd00:244::5", Tcp, "fd00:96::99", 80, false, Verdict::Drop),
        ("IPv6 non-service address", "fd00:244::5", Tcp, "2001:db8::99", 80, false, Verdict::Accept),
    ];
    let ruleset = Ruleset::build(&state());
    let mut failures = Vec::new();
    for (name, src, protocol, dst, port, local, want) in cases {
        let packet = Packet {
            source: ip(src),
            protocol,
            dest: ip(dst),
            dest_port: port,
            from_local_host: local,
        };
        let got = trace(&ruleset, packet);
        if got != want {
            failures.push(format!("{name}: got {got:?}, want {want:?}"));
        }
    }
    assert!(failures.is_empty(), "{}", failures.join("\n"));
}

fn chains_declared(script: &str) -> Vec<(String, String)> {
    script
        .lines()
        .filter_map(|l| l.strip_prefix("add chain "))
        .map(|l| {
            let mut w = l.split_whitespace();
            let family = w.next().unwrap().to_owned();
            let _table = w.next();
            (family, w.next().unwrap().to_owned())
        })
        .collect()
}

fn hash_of(service: &str, port: &str, protocol: Protocol) -> String {
    short_hash(&ServicePortName::new(&ServiceName::new("ns", service), port, protocol).to_string())
}

#[test]
fn full_render_is_stable_and_declares_each_chain_once() {
    let state = state();
    let script = render_full(&state);
    assert_eq!(script, render_full(&state.clone()));
    let chains = chains_declared(&script);
    let unique: BTreeSet<_> = chains.iter().collect();
    assert_eq!(unique.len(), chains.len(), "duplicate chains in\n{script}");
    let starts: Vec<_> = script.lines().take(3).collect();
    assert_eq!(
        starts,
        ["add table ip rudder", "delete table ip rudder", "add table ip rudder"]
    );

    let count = |service, port, protocol| {
        let h = hash_of(service, port, protocol);
        chains.iter().filter(|(f, c)| f == "ip" && c.contains(&h)).count()
    };
    assert_eq!(count("dns", "dns-udp", Protocol::Udp), 1, "ClusterIP only: svc");
    assert_eq!(
        count("web", "http", Protocol::Tcp),
        2,
        "svc + ext, no per-endpoint chains"
    );
    assert_eq!(count("lb", "http", Protocol::Tcp), 3, "svc + ext + fw");
    assert_eq!(
        count("sticky", "http", Protocol::Tcp),
        4,
        "svc + sel + one per endpoint"
    );
    let web = hash_of("web", "http", Protocol::Tcp);
    assert!(script.contains(&format!(
        "add rule ip rudder svc-{web} ip saddr != {{ 10.244.0.0/16 }} meta mark set meta mark | 0x4000"
    )));
    let shard = web_shard();
    assert!(script.contains(&format!(
        "add rule ip rudder svc-{web} meta l4proto tcp dnat ip addr . port to ip daddr . meta l4proto . th dport . numgen random mod 3 map @endpoints-tcp-{shard}"
    )));
    for (slot, backend) in ["10.244.1.10", "10.244.2.10", "10.244.3.10"].iter().enumerate() {
        assert!(
            script.contains(&format!("10.96.0.10 . tcp . 80 . {slot} : {backend} . 8080")),
            "slot {slot} of the ClusterIP is {backend}"
        );
    }
    assert!(script.contains(&format!("10.96.0.10 . tcp . 80 : goto svc-{web}")));
    assert!(script.contains(&format!("tcp . 30080 : goto ext-{web}")));
    assert!(script.contains("10.96.0.70 . tcp . 80 : goto reject-chain"));
}

/// The endpoint map shard of `web`'s port: the one line of `endpoints-N` in its chain.
fn web_shard() -> String {
    let script = render_full(&state());
    let web = hash_of("web", "http", Protocol::Tcp);
    let rule = script
        .lines()
        .find(|l| l.starts_with(&format!("add rule ip rudder svc-{web}")) && l.contains("numgen"))
        .expect("web's DNAT rule");
    rule.rsplit("@endpoints-tcp-").next().expect("a shard").to_owned()
}

#[test]
fn replacing_an_endpoint_changes_map_elements_only() {
    let old = state();
    let (services, mut slices) = fixtures();
    slices[0] = eps(
        "web",
        &[("http", "TCP", 8080)],
        &[
            ("10.244.1.10", "node-1", true),
            ("10.244.2.10", "node-2", true),
            ("10.244.3.11", "node-3", true),
        ],
    );
    let new = build(&services, &slices);
    let diff = Diff::between(&old, &new);
    let delta = super::render::incremental(&old, &new, &diff);
    let script = delta.script();
    let shard = web_shard();
    // The sorted backends keep their slots but the third: 10.244.3.10 → .11, for the
    // ClusterIP, the LB IP and the NodePort on both node addresses.
    let expected = [
        format!(
            "delete element ip rudder endpoints-tcp-{shard} {{ 10.96.0.10 . tcp . 80 . 2, 10.250.0.11 . tcp . 30080 . 2, 192.0.2.10 . tcp . 80 . 2, 192.168.1.11 . tcp . 30080 . 2 }}"
        ),
        "delete element ip rudder hairpin-endpoints { 10.244.3.10 . 10.244.3.10 }".into(),
        format!(
            "add element ip rudder endpoints-tcp-{shard} {{ 10.96.0.10 . tcp . 80 . 2 : 10.244.3.11 . 8080, 10.250.0.11 . tcp . 30080 . 2 : 10.244.3.11 . 8080, 192.0.2.10 . tcp . 80 . 2 : 10.244.3.11 . 8080, 192.168.1.11 . tcp . 30080 . 2 : 10.244.3.11 . 8080 }}"
        ),
        "add element ip rudder hairpin-endpoints { 10.244.3.11 . 10.244.3.11 }".into(),
    ];
    assert_eq!(script.lines().collect::<Vec<_>>(), expected, "{script}");
    assert!(
        delta.element_only().is_some(),
        "no rule changes, so netlink can apply it"
    );
    assert_eq!(render_incremental(&new, &new, &Diff::between(&new, &new)), "");
}

#[test]
fn incremental_render_adds_and_removes_whole_services() {
    let full = state();
    let (services, slices) = fixtures();
    let without: Vec<_> = services
        .iter()
        .filter(|s| s["metadata"]["name"] != "sticky")
        .cloned()
        .collect();
    let less = build(&without, &slices);
    let sticky = hash_of("sticky", "http", Protocol::Tcp);

    let removal = render_incremental(&full, &less, &Diff::between(&full, &less));
    for prefix in ["svc", "sel"] {
        let chain = format!("{prefix}-{sticky}");
        assert!(
            removal.contains(&format!("delete chain ip rudder {chain}")),
            "{removal}"
        );
    }
    assert!(removal.contains("delete element ip rudder service-ips { 10.96.0.60 . tcp . 80 }"));
    assert!(removal.contains("delete element ip rudder cluster-ips { 10.96.0.60 }"));
    assert_eq!(removal.lines().filter(|l| l.starts_with("delete set")).count(), 2);
    // Map elements go before the chains they point at.
    let pos = |s: &str| removal.find(s).unwrap();
    assert!(pos("delete element ip rudder service-ips") < pos("delete chain"));

    let addition = render_incremental(&less, &full, &Diff::between(&less, &full));
    assert!(addition.contains(&format!("add chain ip rudder svc-{sticky}")));
    let pos = |s: &str| addition.find(s).unwrap();
    assert!(pos("add set") < pos("add rule"), "sets exist before rules use them");
    assert!(pos("add chain") < pos("add element ip rudder service-ips"));
    let delta = super::render::incremental(&less, &full, &Diff::between(&less, &full));
    assert!(delta.element_only().is_none(), "new chains need nft");
}

#[test]
fn scaling_up_rewrites_the_dnat_rule_and_adds_a_slot() {
    let old = state();
    let (services, mut slices) = fixtures();
    slices[0] = eps(
        "web",
        &[("http", "TCP", 8080)],
        &[
            ("10.244.1.10", "node-1", true),
            ("10.244.2.10", "node-2", true),
            ("10.244.3.10", "node-3", true),
            ("10.244.3.12", "node-3", true),
        ],
    );
    let new = build(&services, &slices);
    let script = render_incremental(&old, &new, &Diff::between(&old, &new));
    let (web, shard) = (hash_of("web", "http", Protocol::Tcp), web_shard());
    assert!(script.contains(&format!("flush chain ip rudder svc-{web}")), "{script}");
    assert!(
        script.contains(&format!("numgen random mod 4 map @endpoints-tcp-{shard}")),
        "{script}"
    );
    assert!(
        script.contains("10.96.0.10 . tcp . 80 . 3 : 10.244.3.12 . 8080"),
        "{script}"
    );
    assert!(
        !script.contains("delete element ip rudder endpoints"),
        "no slot moved:\n{script}"
    );
    let p = trace(
        &Ruleset::build(&new),
        Packet {
            source: ip("10.244.9.9"),
            protocol: Protocol::Tcp,
            dest: ip("10.96.0.10"),
            dest_port: 80,
            from_local_host: false,
        },
    );
    let Verdict::Dnat { backends, .. } = p else {
        panic!("{p:?}")
    };
    assert_eq!(backends.len(), 4);
}

/// A backend address two Services share stays in the hairpin set when one of them drops
/// it, and goes when the last one does: the incremental sync only looks at the touched
/// ports, so it must check the others before deleting a shared element.
#[test]
fn shared_set_elements_stay_while_another_service_holds_them() {
    let svc_on = |name: &str, ip: &str| svc(name, cluster(ip, http(80, None)), json!({}));
    let services = vec![svc_on("a", "10.96.0.201"), svc_on("b", "10.96.0.202")];
    let slice_of = |name: &str, ips: &[&str]| {
        let endpoints: Vec<_> = ips.iter().map(|ip| (*ip, "node-2", true)).collect();
        eps(name, &[("http", "TCP", 8080)], &endpoints)
    };
    let both = build(
        &services,
        &[slice_of("a", &["10.244.2.50"]), slice_of("b", &["10.244.2.50"])],
    );
    let one = build(
        &services,
        &[slice_of("a", &["10.244.2.51"]), slice_of("b", &["10.244.2.50"])],
    );
    let none = build(
        &services,
        &[slice_of("a", &["10.244.2.51"]), slice_of("b", &["10.244.2.52"])],
    );
    let step = |from: &DesiredState, to: &DesiredState| render_incremental(from, to, &Diff::between(from, to));
    let first = step(&both, &one);
    assert!(
        !first.contains("delete element ip rudder hairpin-endpoints"),
        "b still uses .50:\n{first}"
    );
    assert!(
        first.contains("add element ip rudder hairpin-endpoints { 10.244.2.51 . 10.244.2.51 }"),
        "{first}"
    );
    let second = step(&one, &none);
    assert!(
        second.contains("delete element ip rudder hairpin-endpoints { 10.244.2.50 . 10.244.2.50 }"),
        "{second}"
    );
}
