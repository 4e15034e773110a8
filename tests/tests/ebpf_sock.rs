//! Socket-level load balancing over IPv6, with real sockets: the socket hooks attached to a
//! cgroup of their own, the maps written by the real reconciler from real Service and
//! EndpointSlice objects, real `rudder-echo` backends and a real client process (python3)
//! in that cgroup, as a pod or node process would be.
//!
//! The IPv4 hooks are covered end to end by `proxy_e2e.rs`; its netns cluster and control
//! plane are IPv4 only, which is why IPv6 gets this test of its own. It also covers IPv6
//! sockets talking to an IPv4 Service through mapped addresses (`::ffff:10.96.0.10`), as
//! dual-stack runtimes do.

use std::{
    collections::BTreeSet,
    io::{BufRead, BufReader, Write},
    process::{Command, Stdio},
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use rudder_proxy::{
    dataplane::ebpf::testrun::TestLb,
    model::{DesiredState, ModelConfig, NodeInfo, ServicePortMap, endpoints::endpoints_map, service::service_ports},
};
use rudder_tests::{
    Cluster, InNetns,
    e2e::{NodeCgroup, cgroup2_root},
    netns::{EchoConfig, netns_exec, serve_in, with_netns},
};
use serde_json::{Value, json};

const VIP: &str = "fd00:10:96::10";
/// A Service without endpoints: connect() must be refused, not hang.
const EMPTY_VIP: &str = "fd00:10:96::20";
const BACKENDS: [&str; 3] = ["fd00:10:244::10", "fd00:10:244::11", "fd00:10:244::12"];
const VIP4: &str = "10.96.0.10";
const BACKENDS4: [&str; 3] = ["10.244.9.10", "10.244.9.11", "10.244.9.12"];

fn service(name: &str, ip: &str) -> Value {
    let family = if ip.contains(':') { "IPv6" } else { "IPv4" };
    json!({"metadata": {"namespace": "ns", "name": name},
           "spec": {"clusterIP": ip, "clusterIPs": [ip], "ipFamilies": [family], "ports": [
               {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080},
               {"name": "dns", "port": 80, "protocol": "UDP", "targetPort": 8080}]}})
}

fn slice(service: &str, ips: &[&str]) -> Value {
    let family = if ips.iter().any(|ip| ip.contains(':')) {
        "IPv6"
    } else {
        "IPv4"
    };
    let eps: Vec<Value> = ips
        .iter()
        .map(|ip| json!({"addresses": [ip], "nodeName": "n1", "conditions": {"ready": true}}))
        .collect();
    json!({"metadata": {"namespace": "ns", "name": format!("{service}-1"),
                        "labels": {"kubernetes.io/service-name": service}},
           "addressType": family,
           "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}, {"name": "dns", "port": 8080, "protocol": "UDP"}],
           "endpoints": eps})
}

fn state(backends: &[&str]) -> DesiredState {
    let mut ports = ServicePortMap::new();
    for s in [service("web", VIP), service("empty", EMPTY_VIP), service("web4", VIP4)] {
        let s: Service = serde_json::from_value(s).expect("a valid Service");
        ports.extend(service_ports(&s).expect("valid ports"));
    }
    let slices: Vec<EndpointSlice> = [slice("web", backends), slice("web4", &BACKENDS4)]
        .into_iter()
        .map(|s| serde_json::from_value(s).expect("a valid slice"))
        .collect();
    let node = NodeInfo {
        name: "n1".into(),
        addresses: vec!["fd00:10:250::11".parse().unwrap()],
        labels: Default::default(),
    };
    let config = ModelConfig {
        cluster_cidrs: vec!["fd00:10:244::/64".parse().unwrap(), "10.244.0.0/16".parse().unwrap()],
        service_cidrs: vec!["fd00:10:96::/112".parse().unwrap(), "10.96.0.0/16".parse().unwrap()],
        ..Default::default()
    };
    DesiredState::build(
        &ports,
        &endpoints_map(&slices, "n1").expect("valid slices"),
        &node,
        &config,
    )
}

/// Everything a socket-LB'd application sees, printed as one JSON line; then, after `go` on
/// stdin, what happens to its connected UDP socket once its backend has left.
const CLIENT: &str = r#"
import errno, json, socket, sys
vip, empty, mapped = sys.argv[1], sys.argv[2], "::ffff:" + sys.argv[3]
out = {"tcp_names": [], "tcp_peers": [], "udp_names": [], "udp_froms": [],
       "mapped_names": [], "mapped_peers": [], "mapped_udp_froms": []}
for _ in range(20):
    s = socket.socket(socket.AF_INET6, socket.SOCK_STREAM)
    s.settimeout(3)
    s.connect((mapped, 80))
    out["mapped_peers"].append("[%s]:%d" % s.getpeername()[:2])
    out["mapped_names"].append(s.makefile().readline().strip())
    s.close()
m = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
m.settimeout(3)
for _ in range(3):
    m.sendto(b"hi", (mapped, 80))
    out["mapped_udp_froms"].append("[%s]:%d" % m.recvfrom(100)[1][:2])
for _ in range(30):
    s = socket.create_connection((vip, 80), timeout=3)
    out["tcp_peers"].append("[%s]:%d" % s.getpeername()[:2])
    out["tcp_names"].append(s.makefile().readline().strip())
    s.close()
u = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
u.settimeout(3)
for _ in range(5):
    u.sendto(b"hi", (vip, 80))
    data, frm = u.recvfrom(100)
    out["udp_names"].append(data.decode().strip())
    out["udp_froms"].append("[%s]:%d" % frm[:2])
try:
    socket.create_connection((empty, 80), timeout=3)
    out["empty"] = "connected"
except OSError as e:
    out["empty"] = errno.errorcode.get(e.errno, str(e))
def conn():
    c = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    c.settimeout(1)
    c.connect((vip, 80))
    return c
c = conn()
c.send(b"hi")
out["connected"] = c.recv(100).decode().strip()
out["connected_peer"] = "[%s]:%d" % c.getpeername()[:2]
print(json.dumps(out), flush=True)
sys.stdin.readline()
for _ in range(20):
    try:
        c.send(b"hi")
        name = c.recv(100).decode().strip()
        if name != out["connected"]:
            print("moved", name, flush=True)
            sys.exit(0)
        print("same", name, flush=True)
    except OSError as e:
        print("error", errno.errorcode.get(e.errno, e.errno), flush=True)
        c = conn()
print("stuck", flush=True)
"#;

#[test]
fn ipv6_sockets_in_the_cgroup_reach_backends_and_see_the_service_address() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "attaching socket hooks needs root: run the tests as root (CI does)"
    );
    let cluster = Cluster::new(1).expect("a one-node netns cluster");
    let n1 = cluster.node(1);
    for ip in BACKENDS {
        let args = format!("-6 addr add {ip}/128 dev lo nodad");
        n1.run(Command::new("ip").args(args.split(' '))).expect(&args);
    }
    for ip in BACKENDS4 {
        let args = format!("addr add {ip}/32 dev lo");
        n1.run(Command::new("ip").args(args.split(' '))).expect(&args);
    }
    let _servers: Vec<_> = BACKENDS
        .iter()
        .chain(&BACKENDS4)
        .map(|ip| {
            let config = EchoConfig {
                address: Some(ip.parse().unwrap()),
                ..EchoConfig::new(ip, 8080)
            };
            serve_in(n1.netns(), &config).expect("a backend listening on its IPv6 address")
        })
        .collect();
    let cgroup = NodeCgroup::create(&format!("{}-sock6", n1.netns()));
    let cgroup_dir = cgroup2_root().expect("cgroup v2 is mounted").join(&cgroup.relative);

    with_netns(n1.netns(), || {
        let mut lb = TestLb::load("10.96.0.0/16".parse().unwrap(), "10.244.0.0/16".parse().unwrap(), 1024, None)
            .expect("the kernel accepts the load balancer");
        lb.sync(&state(&BACKENDS)).expect("the IPv6 Services are written");
        lb.attach_socket_lb(&cgroup_dir).expect("the socket hooks attach to the cgroup");

        let mut py = Command::new("python3");
        py.args(["-c", CLIENT, VIP, EMPTY_VIP, VIP4]);
        let mut child = cgroup
            .command(netns_exec(n1.netns(), &py))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("python3 in the cgroup");
        let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
        let first = lines.next().and_then(Result::ok).unwrap_or_default();
        let seen: Value = serde_json::from_str(&first)
            .unwrap_or_else(|e| panic!("the client failed before reporting ({e}): {first:?}"));
        let list = |k: &str| -> Vec<String> {
            seen[k].as_array().into_iter().flatten().filter_map(|v| v.as_str().map(str::to_owned)).collect()
        };
        let frontend = format!("[{VIP}]:80");
        let all: BTreeSet<String> = BACKENDS.iter().map(|s| s.to_string()).collect();

        // TCP: every connection answered by a backend, spread over them, and the socket's
        // peer is the Service, not the pod.
        let tcp: BTreeSet<String> = list("tcp_names").into_iter().collect();
        assert_eq!(list("tcp_names").len(), 30, "{seen}");
        assert!(tcp.is_subset(&all) && tcp.len() >= 2, "TCP answers {tcp:?} not spread over {all:?}");
        assert!(list("tcp_peers").iter().all(|p| *p == frontend), "getpeername showed a backend: {seen}");
        // Unconnected UDP: one socket is one flow (one backend), and replies come from the
        // Service's address (recvmsg6).
        let udp: BTreeSet<String> = list("udp_names").into_iter().collect();
        assert_eq!(udp.len(), 1, "one UDP socket went to several backends: {seen}");
        assert!(udp.is_subset(&all), "{seen}");
        assert!(list("udp_froms").iter().all(|p| *p == frontend), "a UDP reply came from a backend: {seen}");
        assert_eq!(seen["empty"], "ECONNREFUSED", "a Service without endpoints must refuse: {seen}");
        // IPv4 through IPv6 sockets: the IPv4 Service's backends, and its mapped address as
        // the peer.
        let mapped_frontend = format!("[::ffff:{VIP4}]:80");
        let all4: BTreeSet<String> = BACKENDS4.iter().map(|s| s.to_string()).collect();
        let mapped: BTreeSet<String> = list("mapped_names").into_iter().collect();
        assert_eq!(list("mapped_names").len(), 20, "{seen}");
        assert!(mapped.is_subset(&all4) && mapped.len() >= 2, "mapped answers {mapped:?} not spread over {all4:?}");
        assert!(list("mapped_peers").iter().all(|p| *p == mapped_frontend), "{seen}");
        assert!(list("mapped_udp_froms").iter().all(|p| *p == mapped_frontend), "{seen}");
        let connected = seen["connected"].as_str().unwrap_or_default().to_owned();
        assert!(all.contains(&connected), "{seen}");
        assert_eq!(seen["connected_peer"], frontend.as_str());

        // The connected socket's backend leaves: the socket is ended, and the application
        // reconnects to one that is still there.
        let rest: Vec<&str> = BACKENDS.iter().copied().filter(|b| *b != connected).collect();
        lb.sync(&state(&rest)).expect("the departure is written");
        let ended = lb.end_departed_udp_sockets(&cgroup_dir).expect("sock_diag ends the socket");
        assert_eq!(ended, 1, "exactly the client's connected UDP socket to {connected}");
        let _ = child.stdin.as_mut().map(|i| i.write_all(b"go\n"));
        let after: Vec<String> = lines.map_while(Result::ok).collect();
        let _ = child.wait();
        assert!(
            after.iter().any(|l| l == "error ECONNABORTED" || l == "error EDESTADDRREQ"),
            "the socket to {connected} was not ended: {after:?}"
        );
        let last = after.last().cloned().unwrap_or_default();
        assert!(
            last.strip_prefix("moved ").is_some_and(|n| rest.contains(&n)),
            "the application did not reach a remaining backend: {after:?}"
        );
        println!("IPv6 socket LB: TCP over {tcp:?}, UDP {udp:?}, mapped IPv4 over {mapped:?}, connected {connected} then {after:?}");
    })
    .expect("enter the node namespace");
}
