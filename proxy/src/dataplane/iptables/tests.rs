//! What the iptables renderer writes, checked as text a reader of `iptables-save` would
//! recognise. The kernel tests (tests/tests/iptables_kernel.rs) load it.

use serde_json::json;

use super::{render_full, render_partial};
use crate::model::{
    DesiredState, Diff, ModelConfig, NodeInfo, ServicePortMap, endpoints::endpoints_map, fixtures,
    service::service_ports,
};

fn state(endpoints: &[&str], affinity: bool, node_port: bool) -> DesiredState {
    let mut spec = json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
                          "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
    if affinity {
        spec["sessionAffinity"] = json!("ClientIP");
        spec["sessionAffinityConfig"] = json!({"clientIP": {"timeoutSeconds": 60}});
    }
    if node_port {
        spec["type"] = json!("NodePort");
        spec["ports"][0]["nodePort"] = json!(30080);
    }
    let web = fixtures::service(json!({"metadata": {"namespace": "ns", "name": "web"}, "spec": spec}));
    let empty = fixtures::service(json!({"metadata": {"namespace": "ns", "name": "empty"},
        "spec": {"clusterIP": "10.96.0.11", "clusterIPs": ["10.96.0.11"], "ports": [{"name": "http", "port": 80}]}}));
    let mut ports = ServicePortMap::new();
    ports.extend(service_ports(&web).unwrap());
    ports.extend(service_ports(&empty).unwrap());
    let eps = endpoints.iter().map(|a| fixtures::ready(a, "n1")).collect();
    let endpoints = endpoints_map(&[fixtures::simple_slice("web", "web-1", "http", 8080, eps)], "n1").unwrap();
    let node = NodeInfo {
        name: "n1".into(),
        addresses: vec!["10.250.0.11".parse().unwrap()],
        ..Default::default()
    };
    let config = ModelConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    DesiredState::build(&ports, &endpoints, &node, &config)
}

#[test]
fn a_cluster_ip_service_picks_endpoints_with_kube_proxy_probabilities() {
    let r = render_full(&state(&["10.244.1.10", "10.244.1.11", "10.244.1.12"], false, false));
    let v4 = &r.v4;
    assert!(
        v4.contains("-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j KUBE-SVC-"),
        "{v4}"
    );
    assert!(
        v4.contains("-d 10.96.0.10/32 -p tcp -m tcp --dport 80 ! -s 10.244.0.0/16 -j KUBE-MARK-MASQ"),
        "{v4}"
    );
    assert!(v4.contains("--probability 0.3333333333"), "{v4}");
    assert!(v4.contains("--probability 0.5000000000"), "{v4}");
    assert_eq!(v4.matches("-j DNAT --to-destination 10.244.1.").count(), 3);
    assert_eq!(
        v4.matches("-s 10.244.1.1").count(),
        3,
        "hairpin masquerade in every endpoint chain"
    );
    assert!(
        v4.contains("-A KUBE-SERVICES -m conntrack --ctstate NEW -d 10.96.0.11/32 -p tcp -m tcp --dport 80 -j REJECT")
    );
    assert!(
        v4.contains("-A KUBE-SERVICES -m conntrack --ctstate NEW -d 10.96.0.0/16 -j DROP"),
        "unallocated ClusterIPs"
    );
    assert!(
        r.v6.contains("*nat") && !r.v6.contains("KUBE-SVC-"),
        "no IPv6 service: only base chains\n{}",
        r.v6
    );
}

#[test]
fn affinity_and_node_ports_follow_kube_proxy() {
    let r = render_full(&state(&["10.244.1.10", "10.244.1.11"], true, true)).v4;
    assert!(r.contains("--rcheck --seconds 60 --reap -j KUBE-SEP-"), "{r}");
    assert!(r.contains("--set -m tcp -j DNAT"), "{r}");
    assert!(
        r.contains("-A KUBE-NODEPORTS -d 10.250.0.11/32 -p tcp -m tcp --dport 30080 -j KUBE-EXT-"),
        "{r}"
    );
    assert!(r.contains("-A KUBE-SERVICES -j KUBE-NODEPORTS"));
}

#[test]
fn a_one_endpoint_change_rewrites_only_that_services_chains() {
    let before = state(&["10.244.1.10", "10.244.1.11"], false, false);
    let after = state(&["10.244.1.10", "10.244.1.12"], false, false);
    let partial = render_partial(&before, &after, &Diff::between(&before, &after)).v4;
    assert_eq!(
        partial.matches("\n-X KUBE-SEP-").count(),
        1,
        "the removed endpoint's chain goes:\n{partial}"
    );
    assert!(partial.contains("--to-destination 10.244.1.12:8080"));
    assert!(
        !partial.contains("--to-destination 10.244.1.10:8080"),
        "unchanged endpoint chains are left alone"
    );
    assert!(
        !partial.contains("*filter"),
        "no refusal changed, so the filter table is left alone"
    );
    assert!(
        !partial.contains(":KUBE-SERVICES") && !partial.contains("-A KUBE-SERVICES"),
        "the Service's KUBE-SERVICES rule did not change, so the chain is neither flushed nor rewritten:\n{partial}"
    );

    // A new Service changes KUBE-SERVICES: then it is rewritten whole.
    let with_np = state(&["10.244.1.10", "10.244.1.12"], false, true);
    let partial = render_partial(&after, &with_np, &Diff::between(&after, &with_np)).v4;
    assert!(
        partial.contains(":KUBE-NODEPORTS") && partial.contains("-A KUBE-NODEPORTS"),
        "{partial}"
    );
}
