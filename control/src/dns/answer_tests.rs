//! A table of questions and the answers CoreDNS's kubernetes plugin gives for them, against
//! an index built from real API objects.

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, Record, RecordType},
};
use k8s_openapi::api::{
    core::v1::{Pod, Service},
    discovery::v1::EndpointSlice,
};
use serde_json::json;

use super::{
    answer::{Outcome, answer},
    index::{Index, dashed, undashed},
};

fn service(name: &str, spec: serde_json::Value) -> Service {
    serde_json::from_value(json!({"metadata": {"name": name, "namespace": "default"}, "spec": spec})).unwrap()
}

fn slice(svc: &str, name: &str, ports: serde_json::Value, endpoints: serde_json::Value) -> EndpointSlice {
    serde_json::from_value(json!({
        "metadata": {"name": name, "namespace": "default", "labels": {"kubernetes.io/service-name": svc}},
        "addressType": "IPv4", "ports": ports, "endpoints": endpoints,
    }))
    .unwrap()
}

fn index() -> Index {
    let services = [
        service(
            "web",
            json!({"clusterIP": "10.96.0.20", "clusterIPs": ["10.96.0.20"], "ports": [
                {"name": "http", "port": 80, "protocol": "TCP"}, {"name": "dns", "port": 53, "protocol": "UDP"}]}),
        ),
        service(
            "db",
            json!({"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}),
        ),
        service("lonely", json!({"clusterIP": "None", "ports": [{"port": 1}]})),
        service("ext", json!({"type": "ExternalName", "externalName": "example.org"})),
        service(
            "dual",
            json!({"clusterIP": "10.96.0.30", "clusterIPs": ["10.96.0.30", "fd00::30"], "ports": [{"port": 80}]}),
        ),
        service("six", json!({"clusterIP": "fd00::40", "ports": [{"port": 80}]})),
    ];
    let slices = [
        slice(
            "web",
            "web-a",
            json!([{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 5353, "protocol": "UDP"}]),
            json!([
                {"addresses": ["10.244.1.5"], "conditions": {"ready": true}},
                {"addresses": ["10.244.2.6"], "conditions": {"ready": false}},
            ]),
        ),
        slice(
            "db",
            "db-a",
            json!([{"name": "pg", "port": 5432, "protocol": "TCP"}]),
            json!([
                {"addresses": ["10.244.2.8"], "hostname": "db-1", "conditions": {"ready": true}},
                {"addresses": ["10.244.1.7"], "hostname": "db-0"},
            ]),
        ),
    ];
    let pod: Pod = serde_json::from_value(json!({
        "metadata": {"name": "loner", "namespace": "default"},
        "status": {"podIP": "10.244.3.9", "podIPs": [{"ip": "10.244.3.9"}]},
    }))
    .unwrap();
    Index::build(
        Name::from_ascii("cluster.local.").unwrap(),
        42,
        &services,
        &slices,
        [&pod],
    )
}

fn show(r: &Record) -> String {
    format!("{} {} {}", r.name, r.record_type(), r.data)
}

/// What a question should get: the rcode and the answer section (owner, type, data).
enum Want {
    Records(&'static [&'static str]),
    NoData,
    NxDomain,
    Forward,
}

#[test]
fn table_of_questions_and_answers() {
    use Want::*;
    let cases: &[(&str, RecordType, Want)] = &[
        // ClusterIP Services: their address of the asked family, else NODATA.
        (
            "web.default.svc.cluster.local.",
            RecordType::A,
            Records(&["web.default.svc.cluster.local. A 10.96.0.20"]),
        ),
        (
            "WEB.Default.svc.Cluster.Local.",
            RecordType::A,
            Records(&["WEB.Default.svc.Cluster.Local. A 10.96.0.20"]),
        ),
        ("web.default.svc.cluster.local.", RecordType::AAAA, NoData),
        ("web.default.svc.cluster.local.", RecordType::TXT, NoData),
        (
            "dual.default.svc.cluster.local.",
            RecordType::A,
            Records(&["dual.default.svc.cluster.local. A 10.96.0.30"]),
        ),
        (
            "dual.default.svc.cluster.local.",
            RecordType::AAAA,
            Records(&["dual.default.svc.cluster.local. AAAA fd00::30"]),
        ),
        ("six.default.svc.cluster.local.", RecordType::A, NoData),
        ("nope.default.svc.cluster.local.", RecordType::A, NxDomain),
        ("web.other.svc.cluster.local.", RecordType::A, NxDomain),
        // Headless: the ready endpoints; none ready means the name does not exist.
        (
            "db.default.svc.cluster.local.",
            RecordType::A,
            Records(&[
                "db.default.svc.cluster.local. A 10.244.1.7",
                "db.default.svc.cluster.local. A 10.244.2.8",
            ]),
        ),
        ("lonely.default.svc.cluster.local.", RecordType::A, NxDomain),
        // Endpoints by hostname (StatefulSet pods) or dashed address; not-ready ones do not exist.
        (
            "db-0.db.default.svc.cluster.local.",
            RecordType::A,
            Records(&["db-0.db.default.svc.cluster.local. A 10.244.1.7"]),
        ),
        ("db-2.db.default.svc.cluster.local.", RecordType::A, NxDomain),
        (
            "10-244-1-5.web.default.svc.cluster.local.",
            RecordType::A,
            Records(&["10-244-1-5.web.default.svc.cluster.local. A 10.244.1.5"]),
        ),
        ("10-244-2-6.web.default.svc.cluster.local.", RecordType::A, NxDomain),
        // SRV: named ports, to the Service name or each endpoint's name.
        (
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            Records(&["_http._tcp.web.default.svc.cluster.local. SRV 0 100 80 web.default.svc.cluster.local."]),
        ),
        (
            "_dns._udp.web.default.svc.cluster.local.",
            RecordType::SRV,
            Records(&["_dns._udp.web.default.svc.cluster.local. SRV 0 100 53 web.default.svc.cluster.local."]),
        ),
        ("_http._udp.web.default.svc.cluster.local.", RecordType::SRV, NxDomain),
        ("_none._tcp.web.default.svc.cluster.local.", RecordType::SRV, NxDomain),
        (
            "web.default.svc.cluster.local.",
            RecordType::SRV,
            Records(&[
                "web.default.svc.cluster.local. SRV 0 50 80 web.default.svc.cluster.local.",
                "web.default.svc.cluster.local. SRV 0 50 53 web.default.svc.cluster.local.",
            ]),
        ),
        (
            "_pg._tcp.db.default.svc.cluster.local.",
            RecordType::SRV,
            Records(&[
                "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 db-0.db.default.svc.cluster.local.",
                "_pg._tcp.db.default.svc.cluster.local. SRV 0 50 5432 db-1.db.default.svc.cluster.local.",
            ]),
        ),
        ("http.tcp.web.default.svc.cluster.local.", RecordType::SRV, NxDomain),
        // ExternalName: a CNAME, whatever the type.
        (
            "ext.default.svc.cluster.local.",
            RecordType::A,
            Records(&["ext.default.svc.cluster.local. CNAME example.org."]),
        ),
        (
            "ext.default.svc.cluster.local.",
            RecordType::TXT,
            Records(&["ext.default.svc.cluster.local. CNAME example.org."]),
        ),
        ("_x._tcp.ext.default.svc.cluster.local.", RecordType::SRV, NxDomain),
        // Pods, `pods insecure`: the address in the name.
        (
            "10-244-3-9.default.pod.cluster.local.",
            RecordType::A,
            Records(&["10-244-3-9.default.pod.cluster.local. A 10.244.3.9"]),
        ),
        ("10-244-3-9.default.pod.cluster.local.", RecordType::AAAA, NoData),
        (
            "fd00--1.default.pod.cluster.local.",
            RecordType::AAAA,
            Records(&["fd00--1.default.pod.cluster.local. AAAA fd00::1"]),
        ),
        ("not-an-ip.default.pod.cluster.local.", RecordType::A, NxDomain),
        // The zone's structure: NODATA; anything else under it: NXDOMAIN.
        ("default.svc.cluster.local.", RecordType::A, NoData),
        ("svc.cluster.local.", RecordType::A, NoData),
        ("default.pod.cluster.local.", RecordType::A, NoData),
        ("cluster.local.", RecordType::A, NoData),
        (
            "cluster.local.",
            RecordType::SOA,
            Records(&["cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5"]),
        ),
        (
            "cluster.local.",
            RecordType::NS,
            Records(&["cluster.local. NS ns.dns.cluster.local."]),
        ),
        ("foo.cluster.local.", RecordType::A, NxDomain),
        ("a.b.c.d.e.svc.cluster.local.", RecordType::A, NxDomain),
        // PTR: ClusterIPs, then endpoints, then pods; unknown addresses go upstream.
        (
            "20.0.96.10.in-addr.arpa.",
            RecordType::PTR,
            Records(&["20.0.96.10.in-addr.arpa. PTR web.default.svc.cluster.local."]),
        ),
        (
            "7.1.244.10.in-addr.arpa.",
            RecordType::PTR,
            Records(&["7.1.244.10.in-addr.arpa. PTR db-0.db.default.svc.cluster.local."]),
        ),
        (
            "5.1.244.10.in-addr.arpa.",
            RecordType::PTR,
            Records(&["5.1.244.10.in-addr.arpa. PTR 10-244-1-5.web.default.svc.cluster.local."]),
        ),
        (
            "9.3.244.10.in-addr.arpa.",
            RecordType::PTR,
            Records(&["9.3.244.10.in-addr.arpa. PTR 10-244-3-9.default.pod.cluster.local."]),
        ),
        (
            "0.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa.",
            RecordType::PTR,
            Records(&[
                "0.3.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.0.d.f.ip6.arpa. PTR dual.default.svc.cluster.local.",
            ]),
        ),
        ("20.0.96.10.in-addr.arpa.", RecordType::A, NoData),
        ("1.1.1.1.in-addr.arpa.", RecordType::PTR, Forward),
        ("96.10.in-addr.arpa.", RecordType::PTR, Forward),
        // Everything else is upstream's.
        ("example.com.", RecordType::A, Forward),
        ("cluster.local.example.com.", RecordType::A, Forward),
    ];
    let index = index();
    let soa = "cluster.local. SOA ns.dns.cluster.local. hostmaster.cluster.local. 42 7200 1800 86400 5";
    for (name, qtype, want) in cases {
        let got = answer(&index, &Name::from_ascii(name).unwrap(), *qtype);
        let what = format!("{name} {qtype}");
        match (want, got) {
            (Forward, Outcome::Forward) => {}
            (Forward, Outcome::Reply(r)) => panic!("{what}: answered {r:?}, want forwarded"),
            (_, Outcome::Forward) => panic!("{what}: forwarded"),
            (Records(records), Outcome::Reply(r)) => {
                assert_eq!(r.rcode, ResponseCode::NoError, "{what}");
                let got: Vec<String> = r.answers.iter().map(show).collect();
                assert_eq!(got, *records, "{what}");
                assert!(r.answers.iter().all(|a| a.ttl == 5), "{what}: TTL 5");
                assert_eq!(r.soa, None, "{what}");
            }
            (NoData | NxDomain, Outcome::Reply(r)) => {
                let rcode = if matches!(want, NoData) {
                    ResponseCode::NoError
                } else {
                    ResponseCode::NXDomain
                };
                assert_eq!(r.rcode, rcode, "{what}");
                assert!(r.answers.is_empty(), "{what}: {:?}", r.answers);
                assert_eq!(r.soa.as_ref().map(show).as_deref(), Some(soa), "{what}");
            }
        }
    }
}

#[test]
fn srv_answers_carry_the_targets_addresses() {
    let index = index();
    let name = Name::from_ascii("_pg._tcp.db.default.svc.cluster.local.").unwrap();
    let Outcome::Reply(r) = answer(&index, &name, RecordType::SRV) else {
        panic!("forwarded")
    };
    let extra: Vec<String> = r.additionals.iter().map(show).collect();
    assert_eq!(
        extra,
        [
            "db-0.db.default.svc.cluster.local. A 10.244.1.7",
            "db-1.db.default.svc.cluster.local. A 10.244.2.8"
        ]
    );
}

#[test]
fn external_names_are_chased_for_addresses_only() {
    let index = index();
    let name = Name::from_ascii("ext.default.svc.cluster.local.").unwrap();
    let chase = |t| match answer(&index, &name, t) {
        Outcome::Reply(r) => r.chase.map(|n| n.to_string()),
        Outcome::Forward => panic!("forwarded"),
    };
    assert_eq!(chase(RecordType::A).as_deref(), Some("example.org."));
    assert_eq!(chase(RecordType::AAAA).as_deref(), Some("example.org."));
    assert_eq!(chase(RecordType::TXT), None);
}

#[test]
fn dashed_addresses_round_trip() {
    for ip in ["10.244.1.5", "fd00::1", "::1", "2001:db8::a:b"] {
        let ip = ip.parse().unwrap();
        assert_eq!(undashed(&dashed(ip)), Some(ip), "{ip}");
    }
    assert_eq!(undashed("1-2-3"), None);
    assert_eq!(undashed("db-0"), None);
}

#[test]
fn a_cluster_domain_other_than_cluster_local() {
    let index = Index::build(
        Name::from_ascii("Corp.Example.").unwrap(),
        1,
        &[service(
            "web",
            json!({"clusterIP": "10.96.0.20", "ports": [{"port": 80}]}),
        )],
        &[],
        &[],
    );
    let name = Name::from_ascii("web.default.svc.corp.example.").unwrap();
    let Outcome::Reply(r) = answer(&index, &name, RecordType::A) else {
        panic!("forwarded")
    };
    assert_eq!(
        r.answers.iter().map(show).collect::<Vec<_>>(),
        ["web.default.svc.corp.example. A 10.96.0.20"]
    );
    let outside = Name::from_ascii("web.default.svc.cluster.local.").unwrap();
    assert_eq!(answer(&index, &outside, RecordType::A), Outcome::Forward);
}
