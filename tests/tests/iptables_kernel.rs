//! The iptables renderer against the kernel, for both flavors (legacy and nft): a full
//! load followed by a partial sync leaves exactly the rules a fresh full load gives; a
//! refused input changes nothing; cleanup removes every chain we own.

use std::{collections::BTreeMap, process::Command};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use rudder_proxy::{
    dataplane::{
        Dataplane, SyncKind,
        iptables::{Flavor, Iptables, apply::cleanup},
    },
    model::{
        DesiredState, Diff, IpFamily, ModelConfig, NodeInfo, ServicePortMap, endpoints::endpoints_map,
        service::service_ports,
    },
};
use rudder_tests::{Cluster, InNetns};
use serde_json::json;

fn state(web: &[&str]) -> DesiredState {
    let svc = |name: &str, ip: &str, extra: serde_json::Value| -> Service {
        let mut spec = json!({"clusterIP": ip, "clusterIPs": [ip], "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]});
        if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
            s.extend(e.clone());
        }
        serde_json::from_value(json!({"metadata": {"namespace": "ns", "name": name}, "spec": spec})).expect("service")
    };
    let services = [
        svc("web", "10.96.0.10", json!({})),
        svc(
            "np",
            "10.96.0.11",
            json!({"type": "NodePort", "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080, "nodePort": 30080}]}),
        ),
        svc(
            "sticky",
            "10.96.0.12",
            json!({"sessionAffinity": "ClientIP", "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
        ),
        svc("empty", "10.96.0.13", json!({})),
    ];
    let mut ports = ServicePortMap::new();
    for s in &services {
        ports.extend(service_ports(s).expect("ports"));
    }
    let slice = |service: &str, ips: &[&str]| -> EndpointSlice {
        serde_json::from_value(json!({
            "metadata": {"namespace": "ns", "name": format!("{service}-1"), "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "http", "protocol": "TCP", "port": 8080}],
            "endpoints": ips.iter().map(|ip| json!({"addresses": [ip], "nodeName": "n1", "conditions": {"ready": true}})).collect::<Vec<_>>(),
        }))
        .expect("slice")
    };
    let slices = [
        slice("web", web),
        slice("np", &["10.244.1.20"]),
        slice("sticky", &["10.244.1.30", "10.244.2.30"]),
    ];
    let endpoints = endpoints_map(&slices, "n1").expect("endpoints");
    let node = NodeInfo {
        name: "n1".into(),
        addresses: vec!["10.250.0.11".parse().expect("ip")],
        labels: BTreeMap::new(),
    };
    let config = ModelConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("cidr")],
        service_cidrs: vec!["10.96.0.0/16".parse().expect("cidr")],
        ..Default::default()
    };
    DesiredState::build(&ports, &endpoints, &node, &config)
}

/// `-save` output of nat and filter without comments and counters, so two loads compare.
fn saved(node: &impl InNetns, flavor: Flavor) -> String {
    let mut out = String::new();
    for table in ["nat", "filter"] {
        let text = node
            .run(Command::new(flavor.binary(IpFamily::V4, "-save")).args(["-t", table]))
            .expect("save");
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            out += line.split(" [").next().unwrap_or(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn partial_syncs_equal_a_fresh_full_load_refusals_change_nothing_and_cleanup_removes_all() {
    let cluster = Cluster::new(2).expect("netns cluster (needs root)");
    let (n1, n2) = (cluster.node(1), cluster.node(2));
    let before = state(&["10.244.1.10", "10.244.1.11", "10.244.2.10"]);
    let after = state(&["10.244.1.10", "10.244.2.10", "10.244.2.12"]);
    for flavor in Flavor::ALL {
        let mut a = Iptables::new(flavor);
        let mut b = Iptables::new(flavor);
        n1.with_netns(|| a.sync(&before, SyncKind::Full))
            .expect("enter")
            .expect("full load");
        let diff = Diff::between(&before, &after);
        n1.with_netns(|| {
            a.sync(
                &after,
                SyncKind::Partial {
                    old: &before,
                    diff: &diff,
                },
            )
        })
        .expect("enter")
        .expect("partial");
        n2.with_netns(|| b.sync(&after, SyncKind::Full))
            .expect("enter")
            .expect("fresh full load");
        let (updated, fresh) = (saved(n1, flavor), saved(n2, flavor));
        assert_eq!(
            updated, fresh,
            "{flavor:?}: partial syncs drifted from a fresh full load"
        );
        assert!(fresh.contains("KUBE-SVC-") && fresh.contains("-j DNAT"), "{fresh}");

        // A foreign rule jumping into a chain the next sync deletes makes the restore fail.
        let svc = fresh
            .lines()
            .find_map(|l| l.strip_prefix(":KUBE-SVC-"))
            .map(|c| format!("KUBE-SVC-{}", c.split_whitespace().next().unwrap_or("")))
            .expect("a service chain");
        let bin = flavor.binary(IpFamily::V4, "");
        n1.run(Command::new(&bin).args(["-w", "-t", "nat", "-N", "HOLD"]))
            .expect("add HOLD");
        n1.run(Command::new(&bin).args(["-w", "-t", "nat", "-A", "HOLD", "-j", &svc]))
            .expect("jump into ours");
        let held = saved(n1, flavor);
        let gone = DesiredState::default();
        let diff = Diff::between(&after, &gone);
        let refused = n1
            .with_netns(|| {
                a.sync(
                    &gone,
                    SyncKind::Partial {
                        old: &after,
                        diff: &diff,
                    },
                )
            })
            .expect("enter");
        let error = refused.expect_err("deleting a chain that is still jumped to must fail");
        assert_eq!(
            saved(n1, flavor),
            held,
            "{flavor:?}: a refused restore changed the rules ({error})"
        );
        n1.run(Command::new(&bin).args(["-w", "-t", "nat", "-F", "HOLD"]))
            .expect("flush HOLD");
        n1.run(Command::new(&bin).args(["-w", "-t", "nat", "-X", "HOLD"]))
            .expect("delete HOLD");

        for node in [n1, n2] {
            node.with_netns(cleanup).expect("enter").expect("cleanup");
            let left = saved(node, flavor);
            assert!(!left.contains("KUBE-"), "{flavor:?}: cleanup left\n{left}");
        }
        println!(
            "iptables ({flavor:?}): partial == fresh full ({} lines); refused restore left the rules: {error}",
            fresh.lines().count()
        );
    }
}
