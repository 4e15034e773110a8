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
    assert!(r.contains("--rcheck --seconds 60 --reap -j KUBE-SVC-"), "{r}");
    assert!(r.contains("--set -m tcp -j DNAT"), "{r}");
    assert!(
        r.lines().any(|l| l
            .starts_with("-A KUBE-NODEPORTS -d 10.250.0.11/32 -p tcp -m tcp --dport 30080 -j KUBE-SVC-")
            && l.ends_with("-EXT")),
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
        partial.matches("\n-X KUBE-SVC-").count(),
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

/// What iptables-nft-restore (1.8.9) spends on the chain names of a `--noflush` input: it
/// keeps them in a sorted linked list and walks it from the smallest for every declared
/// chain, rule's chain and jump target (`cache_chain_list_insert`). Counted here: the
/// names smaller than the one looked up, for each lookup.
fn nft_restore_name_walk(input: &str) -> (usize, usize) {
    let mut listed = std::collections::BTreeSet::new();
    let (mut lookups, mut steps) = (0, 0);
    let mut look = |name: &str, listed: &mut std::collections::BTreeSet<String>| {
        lookups += 1;
        steps += listed
            .range::<str, _>((std::ops::Bound::Unbounded, std::ops::Bound::Excluded(name)))
            .count();
        listed.insert(name.to_owned());
    };
    for line in input.lines() {
        if line.starts_with('*') {
            listed.clear();
        } else if let Some(rest) = line.strip_prefix(':') {
            look(rest.split_whitespace().next().unwrap(), &mut listed);
        } else if let Some(rest) = line.strip_prefix("-A ").or_else(|| line.strip_prefix("-X ")) {
            look(rest.split_whitespace().next().unwrap(), &mut listed);
            if let Some((_, target)) = rest.split_once(" -j ") {
                let target = target.split_whitespace().next().unwrap();
                // Extensions (DNAT, MARK, ...) are targets, not jumps: only chains count.
                if target.starts_with("KUBE-") {
                    look(target, &mut listed);
                }
            }
        }
    }
    (lookups, steps)
}

fn many(services: usize, endpoints: usize) -> DesiredState {
    let mut ports = ServicePortMap::new();
    let mut slices = Vec::new();
    for i in 0..services {
        let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
        let name = format!("svc-{i}");
        let svc = fixtures::service(json!({"metadata": {"namespace": "ns", "name": name},
            "spec": {"clusterIP": ip, "clusterIPs": [ip], "type": "NodePort",
                     "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30000 + i % 2000}]}}));
        ports.extend(service_ports(&svc).unwrap());
        let eps = (0..endpoints)
            .map(|k| {
                let j = i * endpoints + k;
                fixtures::ready(&format!("10.{}.{}.{}", 128 + (j >> 16), (j >> 8) & 255, j & 255), "n1")
            })
            .collect();
        slices.push(fixtures::simple_slice(&name, &format!("{name}-1"), "http", 8080, eps));
    }
    let endpoints = endpoints_map(&slices, "n1").unwrap();
    let node = NodeInfo {
        name: "n1".into(),
        addresses: vec!["10.250.0.11".parse().unwrap()],
        ..Default::default()
    };
    let config = ModelConfig {
        cluster_cidrs: vec!["10.128.0.0/10".parse().unwrap()],
        service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    DesiredState::build(&ports, &endpoints, &node, &config)
}

#[test]
fn a_full_load_costs_iptables_nft_restore_a_short_walk_per_chain_name() {
    let v4 = render_full(&many(1000, 10)).v4;
    let (lookups, steps) = nft_restore_name_walk(&v4);
    assert!(lookups > 40_000, "{lookups} lookups");
    // kube-proxy's order and names cost about half the list per lookup (over 10^9 steps
    // here); ours the fixed chains and a port's own few.
    assert!(
        steps < 8 * lookups,
        "{steps} steps for {lookups} lookups: the walk grows with the number of chains"
    );
    // The count tells the layouts apart: kube-proxy's, at a third of the size already.
    let (lookups, steps) = nft_restore_name_walk(&crate::bench::kube_proxy::iptables_full(&many(300, 10)));
    assert!(
        steps > 500 * lookups,
        "kube-proxy's layout: {steps} steps for {lookups} lookups"
    );
}

#[test]
fn every_chain_is_declared_before_a_rule_names_it() {
    let r = render_full(&many(50, 3));
    for text in [&r.v4, &r.v6] {
        let mut declared = std::collections::BTreeSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix(':') {
                declared.insert(rest.split_whitespace().next().unwrap().to_owned());
            } else if let Some(rest) = line.strip_prefix("-A ") {
                let chain = rest.split_whitespace().next().unwrap();
                assert!(declared.contains(chain), "{line}");
                if let Some((_, target)) = rest.split_once(" -j ") {
                    let target = target.split_whitespace().next().unwrap();
                    assert!(!target.starts_with("KUBE-") || declared.contains(target), "{line}");
                }
            } else if line.starts_with('*') {
                declared.clear();
            }
        }
    }
    // The fixed chains' catch-alls stay last.
    let nat = r.v4.split("*filter").next().unwrap_or_default();
    let last = nat.lines().rfind(|l| l.starts_with("-A KUBE-SERVICES"));
    assert_eq!(last, Some("-A KUBE-SERVICES -j KUBE-NODEPORTS"));
}
