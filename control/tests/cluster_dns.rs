//! Cluster DNS end to end: a real API server, the real `rudder dns` process watching it, and
//! real DNS messages over UDP and TCP; names outside the cluster go to a small hickory
//! server this test runs as the upstream resolver.

mod common;

use std::{
    net::{IpAddr, SocketAddr, TcpListener as StdTcpListener, UdpSocket as StdUdpSocket},
    process::{Child, Command, Stdio},
    time::Duration,
};

use common::{TestServer, wait_for};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{Name, Record, RecordType},
};
use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use kube::{
    Api,
    api::{DeleteParams, PostParams},
};
use rudder_control::dns::forward::exchange;
use serde_json::json;

const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");

/// A port free for both UDP and TCP on loopback.
fn free_port() -> u16 {
    loop {
        let tcp = StdTcpListener::bind("127.0.0.1:0").expect("bind");
        let port = tcp.local_addr().expect("addr").port();
        if StdUdpSocket::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `rudder dns` as a child process, killed on drop.
struct Dns {
    child: Child,
    addr: SocketAddr,
}

impl Drop for Dns {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start_dns(server: &TestServer, upstream: &str) -> Dns {
    let port = free_port();
    let health = free_port();
    let child = Command::new(RUDDER)
        .args(["dns", "--listen", &format!("127.0.0.1:{port}")])
        .arg("--kubeconfig")
        .arg(server.kubeconfig())
        .args([
            "--upstream",
            upstream,
            "--health-listen",
            &format!("127.0.0.1:{health}"),
        ])
        .stdout(Stdio::null())
        .spawn()
        .expect("start rudder dns");
    let dns = Dns {
        child,
        addr: SocketAddr::from(([127, 0, 0, 1], port)),
    };
    wait_for("rudder dns to be ready", Duration::from_secs(60), || async move {
        ready(health).await.then_some(())
    })
    .await;
    dns
}

/// `GET /ready` is 200.
async fn ready(port: u16) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(("127.0.0.1", port)).await else {
        return false;
    };
    if s.write_all(b"GET /ready HTTP/1.0\r\n\r\n").await.is_err() {
        return false;
    }
    let mut out = String::new();
    let _ = s.read_to_string(&mut out).await;
    out.starts_with("HTTP/1.0 200") || out.starts_with("HTTP/1.1 200")
}

async fn ask(server: SocketAddr, name: &str, qtype: RecordType, tcp: bool) -> Message {
    let mut m = Message::new(rand_id(), MessageType::Query, OpCode::Query);
    m.metadata.recursion_desired = true;
    m.add_query(Query::query(Name::from_ascii(name).expect("name"), qtype));
    let bytes = m.to_vec().expect("encode");
    tokio::time::timeout(Duration::from_secs(10), exchange(server, &bytes, tcp))
        .await
        .unwrap_or_else(|_| panic!("{name} {qtype}: no answer within 10 s"))
        .unwrap_or_else(|e| panic!("{name} {qtype}: {e}"))
}

fn rand_id() -> u16 {
    (std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.subsec_nanos())
        & 0xffff) as u16
}

fn show(records: &[Record]) -> Vec<String> {
    records
        .iter()
        .map(|r| format!("{} {} {} {}", r.name, r.ttl, r.record_type(), r.data))
        .collect()
}

/// Asks over UDP and TCP until both answer `rcode` with the answer section `want` (the
/// watches take a moment to see a change); returns the TCP answer.
async fn expect(dns: SocketAddr, name: &str, qtype: RecordType, rcode: ResponseCode, want: &[&str]) -> Message {
    let want: Vec<String> = want.iter().map(|s| s.to_string()).collect();
    let mut attempts = 0;
    loop {
        let udp = ask(dns, name, qtype, false).await;
        let tcp = ask(dns, name, qtype, true).await;
        let ok = |m: &Message| m.metadata.response_code == rcode && show(&m.answers) == want;
        if ok(&udp) && ok(&tcp) {
            return tcp;
        }
        attempts += 1;
        assert!(
            attempts < 100,
            "{name} {qtype}: got {} {:?} over UDP and {} {:?} over TCP, want {rcode} {want:?}",
            udp.metadata.response_code,
            show(&udp.answers),
            tcp.metadata.response_code,
            show(&tcp.answers)
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn create<K>(api: &Api<K>, v: serde_json::Value) -> K
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + serde::Serialize + std::fmt::Debug,
{
    let obj: K = serde_json::from_value(v).expect("object");
    api.create(&PostParams::default(), &obj).await.expect("create")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn services_endpoints_and_upstream_names_resolve_over_udp_and_tcp() {
    let server = TestServer::start().await;
    let client = server.client().await;
    let (upstream, _upstream_task) = common::dns_upstream::start("127.0.0.1:0").await;
    let services: Api<Service> = Api::namespaced(client.clone(), "default");
    let slices: Api<EndpointSlice> = Api::namespaced(client.clone(), "default");
    let web = create(
        &services,
        json!({"metadata": {"name": "web"}, "spec": {"ports": [{"name": "http", "port": 80, "protocol": "TCP"}]}}),
    )
    .await;
    let web_ip: IpAddr = web
        .spec
        .and_then(|s| s.cluster_ip)
        .expect("ClusterIP")
        .parse()
        .expect("IP");
    create(
        &services,
        json!({"metadata": {"name": "db"}, "spec": {"clusterIP": "None", "ports": [{"name": "pg", "port": 5432}]}}),
    )
    .await;
    // A StatefulSet's pods as its endpointslice controller publishes them: hostnames, and
    // one not ready.
    create(
        &slices,
        json!({
            "metadata": {"name": "db-x1", "labels": {"kubernetes.io/service-name": "db"}},
            "addressType": "IPv4",
            "ports": [{"name": "pg", "port": 5432, "protocol": "TCP"}],
            "endpoints": [
                {"addresses": ["10.244.1.7"], "hostname": "db-0", "conditions": {"ready": true}},
                {"addresses": ["10.244.2.8"], "hostname": "db-1", "conditions": {"ready": true}},
                {"addresses": ["10.244.3.9"], "hostname": "db-2", "conditions": {"ready": false}},
            ],
        }),
    )
    .await;
    create(
        &services,
        json!({"metadata": {"name": "ext"}, "spec": {"type": "ExternalName", "externalName": "api.upstream.test"}}),
    )
    .await;

    let dns = start_dns(&server, &upstream.to_string()).await;
    let d = dns.addr;
    use RecordType::*;
    use ResponseCode::*;
    expect(
        d,
        "web.default.svc.cluster.local.",
        A,
        NoError,
        &[&format!("web.default.svc.cluster.local. 5 A {web_ip}")],
    )
    .await;
    // NODATA (the name exists) carries the SOA; NXDOMAIN too.
    let nodata = expect(d, "web.default.svc.cluster.local.", AAAA, NoError, &[]).await;
    assert_eq!(
        nodata.authorities.first().map(|r| r.record_type()),
        Some(SOA),
        "NODATA carries the SOA"
    );
    let nx = expect(d, "nope.default.svc.cluster.local.", A, NXDomain, &[]).await;
    assert_eq!(nx.authorities.first().map(|r| r.record_type()), Some(SOA));
    assert!(nx.metadata.authoritative, "the cluster zone is ours");
    expect(
        d,
        "db.default.svc.cluster.local.",
        A,
        NoError,
        &[
            "db.default.svc.cluster.local. 5 A 10.244.1.7",
            "db.default.svc.cluster.local. 5 A 10.244.2.8",
        ],
    )
    .await;
    expect(
        d,
        "db-1.db.default.svc.cluster.local.",
        A,
        NoError,
        &["db-1.db.default.svc.cluster.local. 5 A 10.244.2.8"],
    )
    .await;
    expect(d, "db-2.db.default.svc.cluster.local.", A, NXDomain, &[]).await;
    let srv = expect(
        d,
        "_pg._tcp.db.default.svc.cluster.local.",
        SRV,
        NoError,
        &[
            "_pg._tcp.db.default.svc.cluster.local. 5 SRV 0 50 5432 db-0.db.default.svc.cluster.local.",
            "_pg._tcp.db.default.svc.cluster.local. 5 SRV 0 50 5432 db-1.db.default.svc.cluster.local.",
        ],
    )
    .await;
    assert_eq!(
        show(&srv.additionals),
        [
            "db-0.db.default.svc.cluster.local. 5 A 10.244.1.7",
            "db-1.db.default.svc.cluster.local. 5 A 10.244.2.8"
        ]
    );
    expect(
        d,
        "_http._tcp.web.default.svc.cluster.local.",
        SRV,
        NoError,
        &["_http._tcp.web.default.svc.cluster.local. 5 SRV 0 100 80 web.default.svc.cluster.local."],
    )
    .await;
    // PTR: the ClusterIP and an endpoint.
    let arpa = |ip: IpAddr| Name::from(ip).to_string();
    expect(
        d,
        &arpa(web_ip),
        PTR,
        NoError,
        &[&format!("{} 5 PTR web.default.svc.cluster.local.", arpa(web_ip))],
    )
    .await;
    let ep: IpAddr = "10.244.1.7".parse().expect("ip");
    expect(
        d,
        &arpa(ep),
        PTR,
        NoError,
        &[&format!("{} 5 PTR db-0.db.default.svc.cluster.local.", arpa(ep))],
    )
    .await;
    // ExternalName: the CNAME, then the target's address from upstream.
    expect(
        d,
        "ext.default.svc.cluster.local.",
        A,
        NoError,
        &[
            "ext.default.svc.cluster.local. 5 CNAME api.upstream.test.",
            "api.upstream.test. 60 A 192.0.2.7",
        ],
    )
    .await;
    // Pods by address (`pods insecure`).
    expect(
        d,
        "10-244-5-5.default.pod.cluster.local.",
        A,
        NoError,
        &["10-244-5-5.default.pod.cluster.local. 5 A 10.244.5.5"],
    )
    .await;
    // Other names: the upstream's answers, NXDOMAIN included.
    expect(
        d,
        "www.upstream.test.",
        A,
        NoError,
        &["www.upstream.test. 60 A 192.0.2.7"],
    )
    .await;
    expect(d, "nowhere.example.", A, NXDomain, &[]).await;

    // Changes arrive through the watches: a new Service resolves, a deleted one stops.
    create(
        &services,
        json!({"metadata": {"name": "late"}, "spec": {"ports": [{"port": 81}]}}),
    )
    .await;
    let late = wait_for("late to resolve", Duration::from_secs(30), || async move {
        let m = ask(d, "late.default.svc.cluster.local.", A, false).await;
        (!m.answers.is_empty()).then_some(m)
    })
    .await;
    assert_eq!(late.answers.len(), 1);
    services
        .delete("web", &DeleteParams::default())
        .await
        .expect("delete web");
    wait_for("web to stop resolving", Duration::from_secs(30), || async move {
        let m = ask(d, "web.default.svc.cluster.local.", A, false).await;
        (m.metadata.response_code == NXDomain).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_upstreams_other_names_are_refused_and_a_dead_one_fails() {
    let server = TestServer::start().await;
    let refused = start_dns(&server, "none").await;
    let m = ask(refused.addr, "example.com.", RecordType::A, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::Refused);
    // The cluster zone is still answered.
    let m = ask(
        refused.addr,
        "kubernetes.default.svc.cluster.local.",
        RecordType::A,
        false,
    )
    .await;
    assert_eq!(m.metadata.response_code, ResponseCode::NoError);
    assert_eq!(m.answers.len(), 1, "{:?}", m.answers);
    drop(refused);

    // A resolver that never answers: SERVFAIL once it times out.
    let silent = StdUdpSocket::bind("127.0.0.1:0").expect("bind");
    let dead = start_dns(&server, &silent.local_addr().expect("addr").to_string()).await;
    let m = ask(dead.addr, "example.com.", RecordType::A, false).await;
    assert_eq!(m.metadata.response_code, ResponseCode::ServFail);
}
