//! kube-rs, a real client, against `rudder server`: CRUD, optimistic concurrency, paging,
//! watches and authentication.

mod common;

use std::time::Duration;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use kube::{
    Api,
    api::{ListParams, PostParams, WatchEvent, WatchParams},
};
use serde_json::json;

fn service(name: &str) -> Service {
    serde_json::from_value(json!({
        "metadata": {"name": name},
        "spec": {"selector": {"app": name}, "ports": [{"port": 80, "targetPort": 8080}]}
    }))
    .expect("service")
}

/// The suite runs on both store backends: the embedded store and a real etcd.
enum Backend {
    Embedded,
    Etcd,
}

struct Harness {
    server: common::TestServer,
    label: &'static str,
}

async fn start(backend: Backend) -> Harness {
    match backend {
        Backend::Embedded => Harness {
            server: common::TestServer::start().await,
            label: "embedded",
        },
        Backend::Etcd => Harness {
            server: common::TestServer::start_on_etcd().await,
            label: "etcd",
        },
    }
}

#[tokio::test]
async fn crud_conflict_and_allocation_embedded() {
    crud_conflict_and_allocation(start(Backend::Embedded).await).await;
}

#[tokio::test]
async fn crud_conflict_and_allocation_etcd() {
    crud_conflict_and_allocation(start(Backend::Etcd).await).await;
}

#[tokio::test]
async fn paging_and_watch_embedded() {
    paging_and_watch(start(Backend::Embedded).await).await;
}

#[tokio::test]
async fn paging_and_watch_etcd() {
    paging_and_watch(start(Backend::Etcd).await).await;
}

async fn crud_conflict_and_allocation(h: Harness) {
    let server = &h.server;
    let client = server.client().await;

    let namespaces: Api<Namespace> = Api::all(client.clone());
    let names: Vec<String> = namespaces
        .list(&ListParams::default())
        .await
        .expect("list namespaces")
        .into_iter()
        .filter_map(|n| n.metadata.name)
        .collect();
    for want in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        assert!(names.iter().any(|n| n == want), "{want} missing from {names:?}");
    }

    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let created = services
        .create(&PostParams::default(), &service("web"))
        .await
        .expect("create service");
    let ip: std::net::Ipv4Addr = created
        .spec
        .as_ref()
        .and_then(|s| s.cluster_ip.clone())
        .expect("clusterIP")
        .parse()
        .expect("an IPv4");
    assert_eq!(ip.octets()[..2], [10, 96], "ClusterIP {ip} outside 10.96.0.0/16");
    let dup = services
        .create(&PostParams::default(), &service("web"))
        .await
        .expect_err("duplicate");
    assert!(
        matches!(dup, kube::Error::Api(ref s) if s.code == 409 && s.reason == "AlreadyExists"),
        "{dup:?}"
    );
    // Another Service asking for the address `web` holds: refused, naming it and the field.
    let mut copy = service("web-copy");
    copy.spec.as_mut().expect("spec").cluster_ip = Some(ip.to_string());
    let taken = services.create(&PostParams::default(), &copy).await.expect_err("taken");
    let kube::Error::Api(status) = taken else {
        panic!("{taken:?}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.starts_with("Service \"web-copy\" is invalid")
            && status.message.contains("spec.clusterIP")
            && status.message.contains("provided IP is already allocated"),
        "{}",
        status.message
    );

    // A stale resourceVersion is a 409 Conflict.
    let mut first = services.get("web").await.expect("get");
    let mut second = first.clone();
    first.metadata.labels = Some([("v".to_owned(), "1".to_owned())].into());
    services
        .replace("web", &PostParams::default(), &first)
        .await
        .expect("first update wins");
    second.metadata.labels = Some([("v".to_owned(), "2".to_owned())].into());
    let err = services
        .replace("web", &PostParams::default(), &second)
        .await
        .expect_err("stale update");
    assert!(
        matches!(err, kube::Error::Api(ref s) if s.code == 409 && s.reason == "Conflict"),
        "{err:?}"
    );

    // Invalid objects: 422 naming the field.
    let mut bad = service("bad");
    bad.spec.as_mut().expect("spec").ports.as_mut().expect("ports")[0].port = 70000;
    let err = services
        .create(&PostParams::default(), &bad)
        .await
        .expect_err("invalid port");
    match err {
        kube::Error::Api(s) => {
            assert_eq!((s.code, s.reason.as_str()), (422, "Invalid"));
            assert!(s.message.contains("spec.ports[0].port"), "{}", s.message);
        }
        other => panic!("unexpected {other:?}"),
    }

    services.delete("web", &Default::default()).await.expect("delete");
    let gone = services.get("web").await.expect_err("deleted");
    assert!(matches!(gone, kube::Error::Api(ref s) if s.code == 404), "{gone:?}");
    // The freed ClusterIP can be requested again.
    let mut again = service("web2");
    again.spec.as_mut().expect("spec").cluster_ip = Some(ip.to_string());
    let again = services
        .create(&PostParams::default(), &again)
        .await
        .expect("reuse freed IP");
    assert_eq!(again.spec.and_then(|s| s.cluster_ip), Some(ip.to_string()));
    println!(
        "kube-rs on {}: create/get/replace/delete ok; ClusterIP {ip} allocated, freed and reused; 409 and 422 as upstream",
        h.label
    );
}

async fn paging_and_watch(h: Harness) {
    let server = &h.server;
    let client = server.client().await;
    let cms: Api<ConfigMap> = Api::namespaced(client.clone(), "default");
    for i in 0..7 {
        let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": format!("cm{i}"), "labels": {"parity": if i % 2 == 0 { "even" } else { "odd" }}}, "data": {"i": i.to_string()}})).expect("cm");
        cms.create(&PostParams::default(), &cm).await.expect("create");
    }
    let page = cms.list(&ListParams::default().limit(3)).await.expect("page 1");
    assert_eq!(page.items.len(), 3);
    let token = page.metadata.continue_.clone().expect("a continue token");
    let page2 = cms
        .list(&ListParams::default().limit(3).continue_token(&token))
        .await
        .expect("page 2");
    assert_eq!(page2.items.len(), 3);
    let even = cms
        .list(&ListParams::default().labels("parity=even"))
        .await
        .expect("selector");
    assert_eq!(even.items.len(), 4);

    let rv = page.metadata.resource_version.clone().expect("rv");
    let mut stream = cms
        .watch(&WatchParams::default().timeout(10), &rv)
        .await
        .expect("watch")
        .boxed();
    let cm: ConfigMap = serde_json::from_value(json!({"metadata": {"name": "late"}, "data": {"a": "b"}})).expect("cm");
    cms.create(&PostParams::default(), &cm).await.expect("create late");
    cms.delete("late", &Default::default()).await.expect("delete late");
    let mut seen = Vec::new();
    while seen.len() < 2 {
        let ev = tokio::time::timeout(Duration::from_secs(10), stream.try_next())
            .await
            .expect("event in time")
            .expect("stream ok")
            .expect("stream open");
        match ev {
            WatchEvent::Added(o) => seen.push(format!("ADDED {}", o.metadata.name.unwrap_or_default())),
            WatchEvent::Deleted(o) => seen.push(format!("DELETED {}", o.metadata.name.unwrap_or_default())),
            WatchEvent::Modified(o) => seen.push(format!("MODIFIED {}", o.metadata.name.unwrap_or_default())),
            WatchEvent::Bookmark(_) => {}
            WatchEvent::Error(e) => panic!("watch error {e:?}"),
        }
    }
    assert_eq!(seen, ["ADDED late", "DELETED late"]);
    // An idle watch that asked for bookmarks gets one (the test server sends them every second).
    let bookmark = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match stream.try_next().await {
                Ok(Some(WatchEvent::Bookmark(b))) => return b.metadata.resource_version,
                Ok(Some(_)) => continue,
                other => panic!("watch ended before a bookmark: {other:?}"),
            }
        }
    })
    .await
    .expect("a bookmark within 5 s");
    assert!(!bookmark.is_empty());
    println!(
        "kube-rs on {}: paging 3+3 of 7, label selector 4 of 7, watch from RV {rv} saw {seen:?}",
        h.label
    );
}

#[tokio::test]
async fn anonymous_requests_get_401_but_health_answers() {
    let server = common::TestServer::start().await;
    let ca = std::fs::read(server.dir.path().join("pki/ca.crt")).expect("CA written");
    let url = server.running.url.clone();
    let out = tokio::task::spawn_blocking(move || {
        let ca_path = std::env::temp_dir().join(format!("rudder-ca-{}.crt", std::process::id()));
        std::fs::write(&ca_path, ca).expect("write CA");
        let get = |path: &str| {
            let o = std::process::Command::new("curl")
                .args(["-s", "-o", "/dev/null", "-w", "%{http_code}", "--cacert"])
                .arg(&ca_path)
                .arg(format!("{url}{path}"))
                .output()
                .expect("curl runs (cargo xtask setup installs it)");
            String::from_utf8_lossy(&o.stdout).into_owned()
        };
        (get("/api/v1/namespaces"), get("/healthz"), get("/version"))
    })
    .await
    .expect("curl");
    assert_eq!(out, ("401".to_owned(), "200".to_owned(), "200".to_owned()));
    println!("anonymous: /api/v1/namespaces -> 401, /healthz -> 200, /version -> 200");
    server.running.stop().await;
}

/// An IPv6 `--service-cluster-ip-range`: the `kubernetes` Service takes its first address,
/// others get addresses inside it with `ipFamilies: [IPv6]`, and a requested IPv4 address
/// is refused naming `spec.clusterIP`.
#[tokio::test]
async fn ipv6_service_range_allocates_ipv6_cluster_ips() {
    let (dir, store) = common::TestServer::embedded_store().await;
    let range = rudder_control::apiserver::allocator::parse_service_cidr("fd00:10:96::/112").expect("range");
    let server = common::TestServer::start_with_config(dir, store, |c| c.service_cidr = range).await;
    let services: Api<Service> = Api::namespaced(server.client().await, "default");
    let kubernetes = services.get("kubernetes").await.expect("the kubernetes Service");
    let spec = kubernetes.spec.expect("spec");
    assert_eq!(spec.cluster_ip.as_deref(), Some("fd00:10:96::1"));

    let created = services
        .create(&PostParams::default(), &service("web6"))
        .await
        .expect("create service");
    let spec = created.spec.expect("spec");
    let ip: std::net::IpAddr = spec.cluster_ip.as_deref().expect("clusterIP").parse().expect("an IP");
    assert!(range.contains(&ip), "ClusterIP {ip} outside {range}");
    assert_eq!(spec.ip_families, Some(vec!["IPv6".to_owned()]));

    let mut v4 = service("web4");
    v4.spec.as_mut().expect("spec").cluster_ip = Some("10.96.0.20".into());
    let refused = services.create(&PostParams::default(), &v4).await.expect_err("refused");
    let kube::Error::Api(status) = refused else {
        panic!("{refused:?}")
    };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(
        status.message.contains("spec.clusterIP") && status.message.contains("fd00:10:96::/112"),
        "{}",
        status.message
    );
}

fn cluster_ips(svc: &Service) -> Vec<String> {
    svc.spec
        .as_ref()
        .and_then(|s| s.cluster_ips.clone())
        .unwrap_or_default()
}

fn invalid_field(e: kube::Error) -> String {
    let kube::Error::Api(status) = e else { panic!("{e:?}") };
    assert_eq!(status.code, 422, "{status:?}");
    status.message
}

/// `--service-cluster-ip-range 10.96.0.0/16,fd00:10:96::/112`: RequireDualStack gets one
/// address from each range (IPv4 first), an update to PreferDualStack adds the second family
/// and one back to SingleStack releases it, and a delete frees both for a later create.
#[tokio::test]
async fn dual_stack_services_get_one_cluster_ip_per_family() {
    let (dir, store) = common::TestServer::embedded_store().await;
    let cidrs =
        rudder_control::apiserver::allocator::parse_service_cidrs("10.96.0.0/16,fd00:10:96::/112").expect("ranges");
    let (v4, v6) = (cidrs[0], cidrs[1]);
    let server = common::TestServer::start_with_config(dir, store, |c| {
        c.service_cidr = v4;
        c.secondary_service_cidr = Some(v6);
    })
    .await;
    let services: Api<Service> = Api::namespaced(server.client().await, "default");
    let pp = PostParams::default();

    let mut dual = service("dual");
    dual.spec.as_mut().expect("spec").ip_family_policy = Some("RequireDualStack".into());
    let created = services.create(&pp, &dual).await.expect("create RequireDualStack");
    let ips = cluster_ips(&created);
    let spec = created.spec.as_ref().expect("spec");
    assert_eq!(ips.len(), 2, "{ips:?}");
    assert!(v4.contains(&ips[0].parse::<std::net::IpAddr>().expect("ip")), "{ips:?}");
    assert!(v6.contains(&ips[1].parse::<std::net::IpAddr>().expect("ip")), "{ips:?}");
    assert_eq!(spec.cluster_ip.as_deref(), Some(ips[0].as_str()));
    assert_eq!(spec.ip_families, Some(vec!["IPv4".to_owned(), "IPv6".to_owned()]));

    // Upgrade: SingleStack -> PreferDualStack adds an IPv6 address, keeping the IPv4 one.
    let single = services
        .create(&pp, &service("single"))
        .await
        .expect("create SingleStack");
    let first = cluster_ips(&single);
    assert_eq!(first.len(), 1, "{first:?}");
    let mut up = single.clone();
    up.spec.as_mut().expect("spec").ip_family_policy = Some("PreferDualStack".into());
    let up = services.replace("single", &pp, &up).await.expect("upgrade");
    let upgraded = cluster_ips(&up);
    assert_eq!(upgraded.len(), 2, "{upgraded:?}");
    assert_eq!(upgraded[0], first[0]);
    assert!(v6.contains(&upgraded[1].parse::<std::net::IpAddr>().expect("ip")));

    // Downgrade: back to SingleStack drops and releases the IPv6 address.
    let mut down = up.clone();
    down.spec.as_mut().expect("spec").ip_family_policy = Some("SingleStack".into());
    let down = services.replace("single", &pp, &down).await.expect("downgrade");
    assert_eq!(cluster_ips(&down), vec![first[0].clone()]);
    assert_eq!(
        down.spec.as_ref().expect("spec").ip_families,
        Some(vec!["IPv4".to_owned()])
    );
    let mut reuse6 = service("reuse6");
    let s = reuse6.spec.as_mut().expect("spec");
    s.ip_family_policy = Some("SingleStack".into());
    s.cluster_ips = Some(vec![upgraded[1].clone()]);
    let reused = services
        .create(&pp, &reuse6)
        .await
        .expect("the released IPv6 address is free again");
    assert_eq!(cluster_ips(&reused), vec![upgraded[1].clone()]);

    // Delete frees both families: the same pair can be asked for again.
    services.delete("dual", &Default::default()).await.expect("delete");
    let mut again = service("again");
    let s = again.spec.as_mut().expect("spec");
    s.ip_family_policy = Some("RequireDualStack".into());
    s.cluster_ips = Some(ips.clone());
    let again = services
        .create(&pp, &again)
        .await
        .expect("both addresses free after delete");
    assert_eq!(cluster_ips(&again), ips);

    // Duplicate families name spec.ipFamilies.
    let mut dup = service("dup");
    let s = dup.spec.as_mut().expect("spec");
    s.ip_family_policy = Some("RequireDualStack".into());
    s.ip_families = Some(vec!["IPv6".into(), "IPv6".into()]);
    let msg = invalid_field(services.create(&pp, &dup).await.expect_err("duplicate families"));
    assert!(msg.contains("spec.ipFamilies[1]"), "{msg}");
    server.running.stop().await;
}

/// On a single-stack server PreferDualStack gets one address and RequireDualStack is
/// refused naming spec.ipFamilyPolicy; a family the cluster lacks names spec.ipFamilies.
#[tokio::test]
async fn dual_stack_policies_on_a_single_stack_server() {
    let server = common::TestServer::start().await;
    let services: Api<Service> = Api::namespaced(server.client().await, "default");
    let pp = PostParams::default();
    let mut prefer = service("prefer");
    prefer.spec.as_mut().expect("spec").ip_family_policy = Some("PreferDualStack".into());
    let created = services.create(&pp, &prefer).await.expect("PreferDualStack");
    assert_eq!(cluster_ips(&created).len(), 1);
    assert_eq!(created.spec.expect("spec").ip_families, Some(vec!["IPv4".to_owned()]));

    let mut require = service("require");
    require.spec.as_mut().expect("spec").ip_family_policy = Some("RequireDualStack".into());
    let msg = invalid_field(services.create(&pp, &require).await.expect_err("RequireDualStack"));
    assert!(msg.contains("spec.ipFamilyPolicy"), "{msg}");

    let mut v6 = service("v6");
    v6.spec.as_mut().expect("spec").ip_families = Some(vec!["IPv6".into()]);
    let msg = invalid_field(services.create(&pp, &v6).await.expect_err("IPv6 on an IPv4 cluster"));
    assert!(msg.contains("spec.ipFamilies[0]"), "{msg}");
    server.running.stop().await;
}
