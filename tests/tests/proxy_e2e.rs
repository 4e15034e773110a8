//! End to end, per mode: a three-node netns cluster, Rudder's API server with its
//! EndpointSlice controller, `rudder-proxy run --mode <mode>` on every node, real pods
//! answering with their names, and real clients on nodes and in pods.
//!
//! One scenario list ([`SCENARIOS`]) runs for every mode, so a new scenario covers them
//! all. Each scenario runs even when an earlier one failed; the test then fails listing
//! every failed scenario, with the proxies' logs.

use std::{
    collections::BTreeSet,
    net::{IpAddr, SocketAddr, UdpSocket},
    panic::{AssertUnwindSafe, catch_unwind},
    time::{Duration, Instant},
};

use rudder_proxy::dataplane::ebpf::testrun::{XdpPassGuard, attach_xdp_pass};
use rudder_tests::{
    AskErrorKind, Cluster, InNetns, Pod, ServerGuard,
    e2e::{
        Api, ControlPlane, NodeCgroup, PinDir, Proxy, cluster_ip, health_check_node_port, http_get, node_port,
        workspace_binary,
    },
    slow,
};
use serde_json::{Value, json};

const PORT: u16 = 8080;
/// How long a client waits for an answer (times [`slow`]: see `ask()`).
const ASK: Duration = Duration::from_millis(800);
/// How long a change may take to reach every node's dataplane in these tests.
const PROGRAMMED: Duration = Duration::from_secs(15);

fn ask() -> Duration {
    slow(ASK)
}

fn programmed() -> Duration {
    slow(PROGRAMMED)
}

struct Env {
    mode: String,
    cluster: Cluster,
    control_plane: ControlPlane,
    api: Api,
    proxies: Vec<Proxy>,
    /// Backends: web-1 on n1, web-2 on n2, web-3 on n3 (labels app=web, half=a|b).
    web: Vec<Pod>,
    /// Clients with no labels: client-1 on n1, client-2 on n2.
    clients: Vec<Pod>,
    _servers: Vec<ServerGuard>,
    /// One cgroup per node: in ebpf mode, socket LB applies to the processes in it.
    cgroups: Vec<NodeCgroup>,
    /// ebpf mode: each proxy's pinned maps and links (dropped last, after the processes).
    pins: Vec<PinDir>,
    _xdp_peers: Option<XdpPassGuard>,
}

/// Frontend entries the ebpf mode's service map holds in these tests, so one scenario can
/// fill it up.
const EBPF_LB_MAP_MAX: u32 = 256;

impl Env {
    fn start(mode: &str) -> Self {
        bridged_traffic_meets_netfilter();
        let cluster = Cluster::new(3).expect("a three-node netns cluster");
        let control_plane = ControlPlane::start(&cluster);
        let api = control_plane.api();
        for node in cluster.nodes() {
            api.register_node(node);
        }
        let mut web = Vec::new();
        let mut servers = Vec::new();
        for (k, half) in [(1, "a"), (2, "a"), (3, "b")] {
            let pod = cluster.add_pod(k, &format!("web-{k}")).expect("a web pod");
            servers.push(pod.serve(pod.name(), PORT).expect("rudder-echo in the web pod"));
            api.register_pod(&pod, cluster.node(k), json!({"app": "web", "half": half}));
            web.push(pod);
        }
        let clients: Vec<Pod> = (1..=2)
            .map(|k| cluster.add_pod(k, &format!("client-{k}")).expect("a client pod"))
            .collect();
        let cgroups: Vec<NodeCgroup> = cluster.nodes().iter().map(|n| NodeCgroup::create(n.netns())).collect();
        let pins: Vec<PinDir> = cluster.nodes().iter().map(|n| PinDir::for_node(n.netns())).collect();
        let xdp_peers = (mode == "ebpf").then(|| underlay_takes_xdp_frames(&cluster));
        let proxies = cluster
            .nodes()
            .iter()
            .zip(cgroups.iter().zip(&pins))
            .map(|(node, (cgroup, pins))| {
                Proxy::start(node, mode, &control_plane.kubeconfig, &ebpf_flags(mode, cgroup, pins))
            })
            .collect::<Vec<_>>();
        let mut env = Self {
            mode: mode.to_owned(),
            cluster,
            control_plane,
            api,
            proxies,
            web,
            clients,
            _servers: servers,
            cgroups,
            pins,
            _xdp_peers: xdp_peers,
        };
        for proxy in &mut env.proxies {
            proxy.wait_healthy(Duration::from_secs(30));
        }
        env
    }

    fn web_names(&self, which: &[usize]) -> BTreeSet<String> {
        which.iter().map(|i| self.web[i - 1].name().to_owned()).collect()
    }

    fn logs(&self) -> String {
        let mut out = String::new();
        for (i, p) in self.proxies.iter().enumerate() {
            out += &format!("\n--- rudder-proxy on n{} ---\n{}", i + 1, tail(&p.log(), 40));
        }
        out += &format!("\n--- rudder server ---\n{}", tail(&self.control_plane.log(), 20));
        if self.mode == "ipvs" {
            // What the kernel holds, to tell a sync that did not happen from traffic that
            // missed what it wrote.
            for node in self.cluster.nodes() {
                for cmd in [
                    &["ipvsadm", "-Ln"][..],
                    &["ip", "-4", "addr", "show", "dev", "kube-ipvs0"],
                    &["ip", "-4", "route", "show", "table", "local"],
                ] {
                    let shown = std::process::Command::new("ip")
                        .args(["netns", "exec", node.netns()])
                        .args(cmd)
                        .output()
                        .map(|o| {
                            format!(
                                "{}{}",
                                String::from_utf8_lossy(&o.stdout),
                                String::from_utf8_lossy(&o.stderr)
                            )
                        })
                        .unwrap_or_else(|e| e.to_string());
                    out += &format!("\n--- {} in {} ---\n{}", cmd.join(" "), node.netns(), tail(&shown, 30));
                }
            }
        }
        out
    }
}

/// A pod reaching a Service backed by a pod on its own node gets the reply over the node's
/// bridge, which NAT must see to undo (kubeadm requires `br_netfilter` for this reason).
/// CI's kernel has it built in; a stock kernel (the ipvs guest's) has it as a module.
fn bridged_traffic_meets_netfilter() {
    let present = || std::path::Path::new("/proc/sys/net/bridge/bridge-nf-call-iptables").exists();
    if !present() {
        let out = std::process::Command::new("modprobe").arg("br_netfilter").output();
        assert!(
            present(),
            "this kernel has no br_netfilter (modprobe br_netfilter: {out:?}); same-node Service traffic needs it"
        );
    }
}

/// The ebpf mode's flags for one node: its own cgroup, pin directory and a small map.
fn ebpf_flags(mode: &str, cgroup: &NodeCgroup, pins: &PinDir) -> Vec<String> {
    if mode != "ebpf" {
        return Vec::new();
    }
    vec![
        "--cgroup-path".into(),
        cgroup.relative.to_string_lossy().into_owned(),
        "--bpf-root".into(),
        pins.0.to_string_lossy().into_owned(),
        "--bpf-lb-map-max".into(),
        EBPF_LB_MAP_MAX.to_string(),
        "--flow-events".into(),
        // XDP on each node's eth0 (the default device choice: an address, not a bridge).
        "--bpf-lb-acceleration".into(),
        "native".into(),
    ]
}

/// XDP_TX on a node's eth0 (a veth) hands the frame to its peer on the underlay, which
/// takes such frames only while it runs XDP itself. (A physical NIC needs nothing.)
fn underlay_takes_xdp_frames(cluster: &Cluster) -> XdpPassGuard {
    let peers: Vec<&str> = cluster.nodes().iter().map(|n| n.name()).collect();
    rudder_tests::netns::with_netns(cluster.underlay_netns(), || attach_xdp_pass(&peers))
        .expect("enter the underlay namespace")
        .expect("XDP_PASS on the nodes' underlay peers")
}

/// While it lives, `eth0` in each of these namespaces puts complete L4 checksums on what
/// it sends, as packets on a physical wire have them (veth's offload leaves partial ones).
struct WireChecksums(Vec<String>);

impl WireChecksums {
    fn on(namespaces: Vec<String>) -> Self {
        for ns in &namespaces {
            tx_offload(ns, false);
        }
        Self(namespaces)
    }
}

impl Drop for WireChecksums {
    fn drop(&mut self) {
        for ns in &self.0 {
            tx_offload(ns, true);
        }
    }
}

fn tx_offload(netns: &str, on: bool) {
    let mut cmd = std::process::Command::new("ethtool");
    cmd.args(["-K", "eth0", "tx", if on { "on" } else { "off" }]);
    rudder_tests::netns::run_in(netns, &cmd).unwrap_or_else(|e| panic!("ethtool -K eth0 tx in {netns}: {e}"));
}

fn xdp_sent(node: &impl InNetns) -> f64 {
    metric(node, "rudder_xdp_packets_total{verdict=\"tx\"} ")
}

fn tail(text: &str, lines: usize) -> String {
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

fn service(name: &str, spec: Value) -> Value {
    json!({"metadata": {"name": name}, "spec": spec})
}

/// TCP port `http` and UDP port `dns`, both 80, to the pods' named port / number 8080.
fn web_ports() -> Value {
    json!([
        {"name": "http", "port": 80, "protocol": "TCP", "targetPort": "http"},
        {"name": "dns", "port": 80, "protocol": "UDP", "targetPort": 8080}
    ])
}

/// Who answered `count` requests (errors are reported by kind).
fn answers(from: &impl InNetns, ip: IpAddr, port: u16, udp: bool, count: usize) -> BTreeSet<String> {
    (0..count)
        .map(|_| {
            let r = if udp {
                from.ask_udp(ip, port, ask())
            } else {
                from.ask_tcp(ip, port, ask())
            };
            r.unwrap_or_else(|e| format!("error: {}", e.kind))
        })
        .collect()
}

/// Retries `check` until it passes or `timeout` ends; then fails with its last complaint.
fn eventually(what: &str, timeout: Duration, mut check: impl FnMut() -> Result<(), String>) {
    let deadline = Instant::now() + timeout;
    loop {
        match check() {
            Ok(()) => return,
            Err(complaint) if Instant::now() >= deadline => {
                panic!("{what}: still {complaint} after {timeout:?}")
            }
            Err(_) => std::thread::sleep(slow(Duration::from_millis(200))),
        }
    }
}

fn expect_answers(from: &impl InNetns, ip: IpAddr, port: u16, udp: bool, want: &BTreeSet<String>) {
    let proto = if udp { "UDP" } else { "TCP" };
    eventually(
        &format!("{proto} {ip}:{port} from {}", from.netns()),
        programmed(),
        || {
            let got = answers(from, ip, port, udp, 30);
            if got == *want {
                Ok(())
            } else {
                Err(format!("answered by {got:?}, want {want:?}"))
            }
        },
    );
}

type Scenario = fn(&mut Env);

const SCENARIOS: &[(&str, Scenario)] = &[
    // First: it needs a node that has not yet talked to the backend's node.
    (
        "a_nodes_first_connection_to_a_new_service_is_answered_at_once",
        first_connection_at_once,
    ),
    (
        "cluster_ip_reaches_all_backends_from_nodes_and_pods",
        cluster_ip_reaches_all_backends,
    ),
    (
        "node_processes_in_the_node_cgroup_reach_cluster_ips",
        node_processes_reach_cluster_ips,
    ),
    ("client_ip_affinity_pins_one_backend", client_ip_affinity),
    ("scaling_endpoints_down_and_up_takes_effect", scaling_down_and_up),
    ("node_port_is_reachable_from_another_node", node_port_from_another_node),
    ("node_port_is_reachable_from_outside_over_a_wire", node_port_over_a_wire),
    (
        "external_traffic_policy_local_uses_only_local_endpoints",
        external_policy_local,
    ),
    (
        "load_balancer_source_ranges_admit_only_their_sources",
        load_balancer_source_ranges,
    ),
    ("service_without_endpoints_is_rejected_at_once", no_endpoints_rejected),
    ("udp_flow_moves_when_its_endpoint_goes_away", udp_flow_moves),
    (
        "a_connected_udp_socket_leaves_a_departed_endpoint",
        connected_udp_socket_moves,
    ),
    ("healthz_and_metrics_follow_kube_proxy", healthz_and_metrics),
    (
        "a_failed_sync_is_counted_and_retried_until_it_applies",
        failed_sync_recovers,
    ),
];

/// A node's very first connection to a backend on another node (its next hop not yet
/// resolved) is answered without waiting for a retransmit.
fn first_connection_at_once(env: &mut Env) {
    let created = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64());
    let svc = env.api.create_service(service(
        "first",
        json!({"selector": {"app": "web", "half": "b"}, "ports": web_ports()}),
    ));
    let ip = cluster_ip(&svc);
    // Programmed on n2 (asked from there), and n1 has synced since the Service was created.
    expect_answers(env.cluster.node(2), ip, 80, false, &env.web_names(&[3]));
    eventually("n1 synced the new Service", programmed(), || {
        let n1 = metric(
            env.cluster.node(1),
            "kubeproxy_sync_proxy_rules_last_timestamp_seconds ",
        );
        if n1 >= created {
            Ok(())
        } else {
            Err(format!("last sync at {n1}, want >= {created}"))
        }
    });
    let n1 = env.cluster.node(1);
    let neigh = shell(n1, "ip neigh show 10.250.0.13");
    let started = Instant::now();
    let got = n1.ask_tcp(ip, 80, ask());
    assert!(
        got.as_deref().is_ok_and(|name| name == "web-3"),
        "first connection from n1: {got:?} after {:?} (n1's neighbour entry for n3 before: {neigh:?})",
        started.elapsed()
    );
    env.api.delete_service("first");
}

fn cluster_ip_reaches_all_backends(env: &mut Env) {
    let svc = env.api.create_service(service(
        "web",
        json!({"selector": {"app": "web"}, "ports": web_ports()}),
    ));
    let ip = cluster_ip(&svc);
    let all = env.web_names(&[1, 2, 3]);
    for node in env.cluster.nodes() {
        expect_answers(node, ip, 80, false, &all);
        expect_answers(node, ip, 80, true, &all);
    }
    for client in &env.clients {
        expect_answers(client, ip, 80, false, &all);
        expect_answers(client, ip, 80, true, &all);
    }
}

/// Processes of the node itself (in its cgroup, where the ebpf mode balances at connect()
/// time) reach every backend over TCP and UDP, and a Service without endpoints is refused.
fn node_processes_reach_cluster_ips(env: &mut Env) {
    let svc = env.api.create_service(service(
        "local-procs",
        json!({"selector": {"app": "web"}, "ports": web_ports()}),
    ));
    let ip = cluster_ip(&svc).to_string();
    let ask = |k: usize, proto: &str, ip: &str| -> Result<String, String> {
        let node = env.cluster.node(k);
        let mut cmd = std::process::Command::new(workspace_binary("rudder-echo"));
        cmd.args(["ask", proto, ip, "80", "--timeout-ms", &ask().as_millis().to_string()]);
        let mut cmd = env.cgroups[k - 1].command(rudder_tests::netns::netns_exec(node.netns(), &cmd));
        let out = cmd.output().map_err(|e| format!("spawn rudder-echo: {e}"))?;
        let text = String::from_utf8_lossy(&out.stdout).trim().to_owned();
        if out.status.success() {
            Ok(text)
        } else {
            // rudder-echo exits 3 for "connection refused".
            Err(format!(
                "exit {:?}: {}",
                out.status.code(),
                String::from_utf8_lossy(&out.stderr).trim()
            ))
        }
    };
    let all = env.web_names(&[1, 2, 3]);
    for proto in ["tcp", "udp"] {
        eventually(&format!("{proto} from a process in n1's cgroup"), programmed(), || {
            let got: BTreeSet<String> = (0..24)
                .map(|_| ask(1, proto, &ip).unwrap_or_else(|e| format!("error: {e}")))
                .collect();
            if got == all {
                Ok(())
            } else {
                Err(format!("answered by {got:?}, want {all:?}"))
            }
        });
    }
    let empty = env.api.create_service(service(
        "local-procs-empty",
        json!({"selector": {"app": "nothing"}, "ports": web_ports()}),
    ));
    let empty_ip = cluster_ip(&empty).to_string();
    eventually(
        "TCP to a Service without endpoints from n1's cgroup",
        programmed(),
        || {
            let started = Instant::now();
            match ask(1, "tcp", &empty_ip) {
                Err(e) if e.starts_with("exit Some(3)") && started.elapsed() < slow(Duration::from_secs(1)) => Ok(()),
                other => Err(format!(
                    "got {other:?} after {:?}, want refused at once",
                    started.elapsed()
                )),
            }
        },
    );
    env.api.delete_service("local-procs");
    env.api.delete_service("local-procs-empty");
}

fn client_ip_affinity(env: &mut Env) {
    let svc = env.api.create_service(service(
        "sticky",
        json!({"selector": {"app": "web"}, "ports": web_ports(), "sessionAffinity": "ClientIP",
               "sessionAffinityConfig": {"clientIP": {"timeoutSeconds": 60}}}),
    ));
    let ip = cluster_ip(&svc);
    let client = &env.clients[0];
    eventually("ClientIP affinity from client-1", programmed(), || {
        let got = answers(client, ip, 80, false, 30);
        match got.len() {
            1 if !got.iter().any(|a| a.starts_with("error")) => Ok(()),
            _ => Err(format!("answered by {got:?}, want exactly one backend")),
        }
    });
}

fn scaling_down_and_up(env: &mut Env) {
    let svc = env.api.create_service(service(
        "scale",
        json!({"selector": {"app": "web"}, "ports": web_ports()}),
    ));
    let ip = cluster_ip(&svc);
    let client = &env.clients[1];
    expect_answers(client, ip, 80, false, &env.web_names(&[1, 2, 3]));
    let web3 = &env.web[2];
    env.api.set_pod_ready(web3.name(), &web3.ip().to_string(), false);
    expect_answers(client, ip, 80, false, &env.web_names(&[1, 2]));
    env.api.set_pod_ready(web3.name(), &web3.ip().to_string(), true);
    expect_answers(client, ip, 80, false, &env.web_names(&[1, 2, 3]));
}

fn node_port_from_another_node(env: &mut Env) {
    let svc = env.api.create_service(service(
        "np",
        json!({"type": "NodePort", "selector": {"app": "web"}, "ports": web_ports()}),
    ));
    let (tcp, udp) = (node_port(&svc, "http"), node_port(&svc, "dns"));
    let n1 = IpAddr::from(env.cluster.node(1).ip());
    let all = env.web_names(&[1, 2, 3]);
    expect_answers(env.cluster.node(2), n1, tcp, false, &all);
    expect_answers(env.cluster.node(2), n1, udp, true, &all);
    expect_answers(&env.clients[1], n1, tcp, false, &all);
}

/// A client whose packets carry complete checksums, as from a physical network (in ebpf
/// mode, what XDP can accelerate: n1 sends the connection to the backends on n2 and n3
/// straight back out of eth0, and their replies too).
fn node_port_over_a_wire(env: &mut Env) {
    let svc = env.api.create_service(service(
        "wire",
        json!({"type": "NodePort", "selector": {"app": "web"}, "ports": web_ports()}),
    ));
    let (tcp, udp) = (node_port(&svc, "http"), node_port(&svc, "dns"));
    let n1 = env.cluster.node(1);
    let outside = env.cluster.node(3);
    let mut namespaces: Vec<String> = env.web.iter().map(|p| p.netns().to_owned()).collect();
    namespaces.push(outside.netns().to_owned());
    let _wire = WireChecksums::on(namespaces);
    let before = if env.mode == "ebpf" { xdp_sent(n1) } else { 0.0 };
    let all = env.web_names(&[1, 2, 3]);
    let ip = IpAddr::from(n1.ip());
    expect_answers(outside, ip, tcp, false, &all);
    expect_answers(outside, ip, udp, true, &all);
    if env.mode == "ebpf" {
        let sent = xdp_sent(n1) - before;
        // 60 exchanges at least, two thirds of them with a backend on another node, each
        // two packets (UDP) or several (TCP) both ways.
        assert!(sent >= 80.0, "XDP sent only {sent} packets back out on n1 (want >= 80)");
        println!("XDP on n1 sent {sent} packets back out for NodePort traffic from outside");
    }
}

fn external_policy_local(env: &mut Env) {
    let svc = env.api.create_service(service(
        "local",
        // LoadBalancer (with no load balancer controller): NodePorts plus the
        // healthCheckNodePort an external load balancer would probe.
        json!({"type": "LoadBalancer", "externalTrafficPolicy": "Local", "selector": {"app": "web", "half": "a"},
               "ports": web_ports()}),
    ));
    let port = node_port(&svc, "http");
    let hc = health_check_node_port(&svc);
    let outside = env.cluster.node(3);
    for k in [1, 2] {
        let node_ip = IpAddr::from(env.cluster.node(k).ip());
        expect_answers(outside, node_ip, port, false, &env.web_names(&[k]));
    }
    // n3 has no local endpoint: its NodePort drops (the LB's health check steers away).
    let n3 = IpAddr::from(env.cluster.node(3).ip());
    let from_n1 = env.cluster.node(1);
    eventually(
        "NodePort on a node without local endpoints",
        programmed(),
        || match from_n1.ask_tcp(n3, port, ask()) {
            Err(e) if e.kind == AskErrorKind::Timeout => Ok(()),
            other => Err(format!("got {other:?}, want a silent drop (timeout)")),
        },
    );
    // ... but only for traffic from outside: as with kube-proxy, the node itself and its
    // pods (web-3 lives on n3) still reach the Service's endpoints elsewhere.
    expect_answers(env.cluster.node(3), n3, port, false, &env.web_names(&[1, 2]));
    expect_answers(&env.web[2], n3, port, false, &env.web_names(&[1, 2]));
    for (k, status, local) in [(1, 200, 1), (3, 503, 0)] {
        let addr = SocketAddr::from((env.cluster.node(k).ip(), hc));
        eventually(
            &format!("healthCheckNodePort on n{k}"),
            programmed(),
            || match http_get(outside.netns(), addr, "/") {
                Some((s, body)) if s == status && body.contains(&format!("\"localEndpoints\":{local}")) => Ok(()),
                other => Err(format!("got {other:?}, want {status} with localEndpoints {local}")),
            },
        );
    }
}

fn load_balancer_source_ranges(env: &mut Env) {
    let lb_ip: IpAddr = "192.0.2.77".parse().expect("an address");
    let n1_ip = env.cluster.node(1).ip();
    env.api.create_service(service(
        "fenced",
        json!({"type": "LoadBalancer", "selector": {"app": "web"}, "ports": web_ports(),
               "loadBalancerSourceRanges": [format!("{n1_ip}/32")]}),
    ));
    env.api.patch_service_status(
        "fenced",
        json!({"status": {"loadBalancer": {"ingress": [{"ip": lb_ip.to_string()}]}}}),
    );
    // The load balancer would deliver to a node; here n1 and n2 route its address to n3.
    let n3_ip = env.cluster.node(3).ip().to_string();
    for k in [1, 2] {
        env.cluster
            .node(k)
            .run(std::process::Command::new("ip").args(["route", "replace", &format!("{lb_ip}/32"), "via", &n3_ip]))
            .expect("a route to the load balancer IP");
    }
    expect_answers(env.cluster.node(1), lb_ip, 80, false, &env.web_names(&[1, 2, 3]));
    let from_n2 = env.cluster.node(2);
    eventually(
        "a source outside loadBalancerSourceRanges",
        programmed(),
        || match from_n2.ask_tcp(lb_ip, 80, ask()) {
            Err(e) if e.kind == AskErrorKind::Timeout => Ok(()),
            other => Err(format!("got {other:?}, want a silent drop (timeout)")),
        },
    );
    env.api.delete_service("fenced");
}

fn no_endpoints_rejected(env: &mut Env) {
    let svc = env.api.create_service(service(
        "empty",
        json!({"selector": {"app": "nothing"}, "ports": web_ports()}),
    ));
    let ip = cluster_ip(&svc);
    for (from, label) in [
        (env.clients[0].netns().to_owned(), "pod"),
        (env.cluster.node(2).netns().to_owned(), "node"),
    ] {
        for udp in [false, true] {
            eventually(
                &format!("no-endpoint Service from a {label} (udp={udp})"),
                programmed(),
                || {
                    let started = Instant::now();
                    let r = if udp {
                        rudder_tests::netns::ask_udp(&from, ip, 80, slow(Duration::from_secs(3)))
                    } else {
                        rudder_tests::netns::ask_tcp(&from, ip, 80, slow(Duration::from_secs(3)))
                    };
                    // A UDP socket on the node itself learns of the reject as EPERM from
                    // sendto (the REJECT's drop in the output hook), also at once.
                    let at_once = started.elapsed() < slow(Duration::from_secs(1));
                    let local_udp_eperm = |e: &rudder_tests::AskError| {
                        udp && label == "node" && e.detail.contains("Operation not permitted")
                    };
                    match r {
                        Err(e) if at_once && (e.kind == AskErrorKind::Refused || local_udp_eperm(&e)) => Ok(()),
                        other => Err(format!(
                            "got {other:?} after {:?}, want refused at once",
                            started.elapsed()
                        )),
                    }
                },
            );
        }
    }
}

/// One UDP socket (one 5-tuple) asking the same ClusterIP again and again.
fn ask_on(socket: &UdpSocket, to: SocketAddr) -> Option<String> {
    let mut buf = [0u8; 256];
    socket.send_to(b"rudder-echo?\n", to).ok()?;
    let (n, _) = socket.recv_from(&mut buf).ok()?;
    Some(String::from_utf8_lossy(&buf[..n]).trim().to_owned())
}

fn udp_flow_moves(env: &mut Env) {
    let svc = env.api.create_service(service(
        "flow",
        json!({"selector": {"app": "web", "half": "a"}, "ports": web_ports()}),
    ));
    let to = SocketAddr::new(cluster_ip(&svc), 80);
    let client = &env.clients[1];
    let socket = client
        .with_netns(|| {
            let s = UdpSocket::bind("0.0.0.0:0")?;
            s.set_read_timeout(Some(ask()))?;
            Ok::<_, std::io::Error>(s)
        })
        .expect("enter the client pod")
        .expect("a UDP socket in the client pod");
    let mut first = None;
    eventually("the UDP flow's first answer", programmed(), || {
        first = ask_on(&socket, to).filter(|a| a.starts_with("web-"));
        first.as_ref().map(|_| ()).ok_or_else(|| "no answer".to_owned())
    });
    let first = first.unwrap_or_default();
    assert_eq!(
        ask_on(&socket, to).as_deref(),
        Some(first.as_str()),
        "one flow sticks to one endpoint"
    );
    // The endpoint leaves the Service but keeps running, so a stale conntrack entry would
    // show: the flow would keep reaching it.
    let gone = env.web.iter().find(|p| p.name() == first).expect("the answering pod");
    let _back = Unready::new(&env.api, gone);
    let other: BTreeSet<String> = env.web_names(&[1, 2]).into_iter().filter(|n| *n != first).collect();
    eventually(
        "the same UDP flow after its endpoint went away",
        programmed(),
        || match ask_on(&socket, to) {
            Some(a) if other.contains(&a) => Ok(()),
            got => Err(format!("answered by {got:?}, want one of {other:?}")),
        },
    );
}

/// A client that connects its UDP socket to the ClusterIP once, asks until answered,
/// then (on a line on stdin) asks again until another endpoint answers; on an error it
/// reconnects, as applications do. Prints `first NAME`, `error ERRNO`, `moved NAME` or
/// `stuck`.
const CONNECTED_UDP_CLIENT: &str = r#"
import errno, socket, sys, time
ip, port, scale = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
def conn():
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.settimeout(0.4 * scale)
    s.connect((ip, port))
    return s
def ask(s):
    s.send(b"x")
    return s.recv(200).decode().strip()
s, first, deadline = conn(), None, time.time() + 15 * scale
while first is None and time.time() < deadline:
    try:
        first = ask(s)
    except OSError:
        time.sleep(0.1)
print("first", first, flush=True)
sys.stdin.readline()
deadline = time.time() + 15 * scale
while time.time() < deadline:
    try:
        a = ask(s)
        if a != first:
            print("moved", a, flush=True)
            sys.exit(0)
    except socket.timeout:
        pass
    except OSError as e:
        print("error", errno.errorcode.get(e.errno, e.errno), flush=True)
        s = conn()
    time.sleep(0.1)
print("stuck", flush=True)
"#;

/// A process in the node's cgroup (socket LB applies in ebpf mode) keeps one connected UDP
/// socket to a ClusterIP; its endpoint leaves. In ebpf mode the socket, connected straight
/// to the backend, is ended by the proxy and connecting again reaches a live endpoint;
/// in the other modes the same socket's next datagram is sent to a live endpoint.
fn connected_udp_socket_moves(env: &mut Env) {
    use std::io::{BufRead, BufReader, Write};
    let svc = env.api.create_service(service(
        "connected",
        json!({"selector": {"app": "web", "half": "a"}, "ports": web_ports()}),
    ));
    let to = cluster_ip(&svc);
    let port = 80;
    let client = &env.clients[0];
    // Programmed on n1 first, so the connect() goes through socket LB.
    expect_answers(client, to, port, true, &env.web_names(&[1, 2]));
    let mut py = std::process::Command::new("python3");
    let scale = slow(Duration::from_secs(1)).as_secs().to_string();
    py.args(["-c", CONNECTED_UDP_CLIENT, &to.to_string(), &port.to_string(), &scale]);
    let mut child = env.cgroups[0]
        .command(rudder_tests::netns::netns_exec(client.netns(), &py))
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 in the client pod");
    let mut lines = BufReader::new(child.stdout.take().expect("piped")).lines();
    let first_line = lines.next().and_then(Result::ok).unwrap_or_default();
    let first = first_line.strip_prefix("first ").unwrap_or_default().to_owned();
    assert!(
        first.starts_with("web-"),
        "the connected socket was never answered: {first_line:?}"
    );
    let gone = env.web.iter().find(|p| p.name() == first).expect("the answering pod");
    let _back = Unready::new(&env.api, gone);
    // Once every proxy dropped it, let the client go on.
    let other: BTreeSet<String> = env.web_names(&[1, 2]).into_iter().filter(|n| *n != first).collect();
    expect_answers(&env.clients[1], to, port, true, &other);
    let _ = child.stdin.as_mut().map(|i| i.write_all(b"go\n"));
    let rest: Vec<String> = lines.map_while(Result::ok).collect();
    let _ = child.wait();
    let last = rest.last().cloned().unwrap_or_default();
    assert!(
        last.strip_prefix("moved ").is_some_and(|n| other.contains(n)),
        "the connected socket stayed with {first}: {rest:?}"
    );
    if env.mode == "ebpf" {
        // Ended by the proxy: disconnected with ECONNABORTED pending (a send reports
        // EDESTADDRREQ, a receive ECONNABORTED).
        assert!(
            rest.iter()
                .any(|l| l == "error ECONNABORTED" || l == "error EDESTADDRREQ"),
            "the socket was not ended: {rest:?}"
        );
    }
    println!("[{}] connected UDP socket: {first} left; then {rest:?}", env.mode);
}

/// Marks a pod not ready, and ready again when dropped (also when the scenario fails), so
/// later scenarios start from the same cluster.
struct Unready<'a> {
    api: &'a Api,
    pod: &'a Pod,
}

impl<'a> Unready<'a> {
    fn new(api: &'a Api, pod: &'a Pod) -> Self {
        api.set_pod_ready(pod.name(), &pod.ip().to_string(), false);
        Self { api, pod }
    }
}

impl Drop for Unready<'_> {
    fn drop(&mut self) {
        self.api
            .set_pod_ready(self.pod.name(), &self.pod.ip().to_string(), true);
    }
}

fn healthz_and_metrics(env: &mut Env) {
    let node = env.cluster.node(1);
    let (status, body) = http_get(node.netns(), SocketAddr::from(([127, 0, 0, 1], 10256)), "/healthz")
        .expect("healthz answers on :10256");
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("lastUpdated"), "{body}");
    let (status, metrics) = http_get(node.netns(), SocketAddr::from(([127, 0, 0, 1], 10249)), "/metrics")
        .expect("metrics answer on 127.0.0.1:10249");
    assert_eq!(status, 200);
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
    };
    assert!(value("kubeproxy_sync_proxy_rules_last_timestamp_seconds ") > 1.7e9);
    assert!(value("kubeproxy_sync_proxy_rules_duration_seconds_count ") >= 1.0);
    assert!(value("kubeproxy_sync_proxy_rules_endpoint_changes_total ") >= 1.0);
    assert!(
        value("kubeproxy_network_programming_duration_seconds_count ") >= 1.0,
        "EndpointSlice trigger times become programming latencies"
    );
    if env.mode == "ebpf" {
        // Per-Service counters, and the maps as `rudder-proxy inspect` shows them.
        let served: f64 = metrics
            .lines()
            .filter(|l| l.starts_with("rudder_service_packets_total{namespace=\"default\""))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum();
        assert!(served > 0.0, "no Service counted any packet:\n{metrics}");
        let out = node
            .exec(
                std::process::Command::new(workspace_binary("rudder-proxy"))
                    .arg("inspect")
                    .arg("--bpf-root")
                    .arg(&env.pins[0].0),
            )
            .expect("rudder-proxy inspect");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "inspect failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(
            text.contains("FRONTEND") && text.contains(":8080") && text.contains("Conntrack:"),
            "inspect shows:\n{text}"
        );
        // Earlier scenarios' flows are waiting in the ring buffer.
        let out = node
            .exec(
                std::process::Command::new(workspace_binary("rudder-proxy"))
                    .args(["flows", "--count", "3", "--bpf-root"])
                    .arg(&env.pins[0].0),
            )
            .expect("rudder-proxy flows");
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success() && text.lines().count() == 3 && text.contains(":8080 (service id"),
            "flows shows:\n{text}"
        );
    }
}

fn metric(node: &impl InNetns, name: &str) -> f64 {
    let (_, metrics) = http_get(node.netns(), SocketAddr::from(([127, 0, 0, 1], 10249)), "/metrics")
        .expect("metrics answer on 127.0.0.1:10249");
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name).and_then(|v| v.trim().parse().ok()))
        .unwrap_or(f64::NAN)
}

fn shell(node: &impl InNetns, script: &str) -> String {
    let out = node
        .exec(std::process::Command::new("sh").args(["-c", script]))
        .expect("run sh");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Makes the next syncs fail the way real life does: for nftables and iptables a foreign
/// rule that jumps into the new Service's chains (so removing them fails); for ebpf a
/// service map filled to its `--bpf-lb-map-max` (so adding a frontend fails); for ipvs the
/// Service's address removed from `kube-ipvs0` (so unbinding it fails). Returns how to undo
/// it.
fn hold<'a, N: InNetns>(env: &Env, node: &'a N, before: &BTreeSet<String>) -> Box<dyn FnOnce() + 'a> {
    let chains = |s: &str| -> BTreeSet<String> { s.split_whitespace().map(str::to_owned).collect() };
    match env.mode.as_str() {
        "nftables" => {
            let now = chains(&shell(
                node,
                "nft list table ip rudder | grep -o 'chain svc-[0-9a-f]*' | cut -d' ' -f2",
            ));
            let new = now.difference(before).next().expect("the new Service's chain").clone();
            shell(
                node,
                &format!("nft add chain ip rudder hold && nft add rule ip rudder hold jump {new}"),
            );
            Box::new(move || {
                shell(node, "nft delete chain ip rudder hold 2>/dev/null; true");
            })
        }
        "iptables" => {
            let now = chains_now(env, node);
            let new = now.difference(before).next().expect("the new Service's chain").clone();
            shell(
                node,
                &format!("iptables-nft -w -t nat -N HOLD && iptables-nft -w -t nat -A HOLD -j {new}"),
            );
            Box::new(move || {
                shell(
                    node,
                    "iptables-nft -w -t nat -F HOLD; iptables-nft -w -t nat -X HOLD; true",
                );
            })
        }
        "ebpf" => {
            use rudder_abi::lb::{Service, ServiceKey};
            let path = env.pins[0].0.join(rudder_abi::names::SERVICES);
            let data = aya::maps::MapData::from_pin(&path).expect("n1's pinned service map");
            let mut map: aya::maps::HashMap<_, ServiceKey, Service> =
                aya::maps::HashMap::try_from(aya::maps::Map::HashMap(data)).expect("a hash map");
            let mut filler = Vec::new();
            for i in 0..EBPF_LB_MAP_MAX {
                // 203.0.113.0/24 (TEST-NET-3), never a frontend here.
                let key = ServiceKey {
                    addr: u32::from_be_bytes([203, 0, 113, 1]).to_be(),
                    port: (i as u16).to_be(),
                    proto: 6,
                    pad: 0,
                };
                if map.insert(key, Service::default(), 0).is_err() {
                    break;
                }
                filler.push(key);
            }
            assert!(!filler.is_empty(), "n1's service map had no room to fill");
            Box::new(move || {
                for key in &filler {
                    let _ = map.remove(key);
                }
            })
        }
        "ipvs" => {
            // The new Service's address taken off `kube-ipvs0` behind the proxy's back:
            // the sync that removes the Service cannot unbind it, so it fails (after the
            // addition); the retry reads the kernel's bindings and succeeds.
            let now = chains_now(env, node);
            let new = now
                .difference(before)
                .next()
                .expect("the new Service's address")
                .clone();
            // The periodic full resync reads the kernel's bindings and binds the address
            // again: one in flight between this removal and the Service's deletion (it
            // takes 2 s in the QEMU guest) repaired the fault before the sync it was for.
            // So the removal follows a full resync at once: the next is a whole sync
            // period (30 s) away, and the deletion comes within a few seconds.
            let full = |n: &_| metric(n, "rudder_syncs_total{kind=\"full\"} ");
            let seen = full(node);
            eventually("a periodic full resync", slow(Duration::from_secs(45)), || {
                if full(node) > seen {
                    Ok(())
                } else {
                    Err(format!("still {seen} full syncs"))
                }
            });
            shell(node, &format!("ip addr del {new}/32 dev kube-ipvs0"));
            Box::new(|| {})
        }
        mode => panic!("no failure injection for --mode {mode}"),
    }
}

fn chains_now(env: &Env, node: &impl InNetns) -> BTreeSet<String> {
    match env.mode.as_str() {
        "nftables" => shell(
            node,
            "nft list table ip rudder | grep -o 'chain svc-[0-9a-f]*' | cut -d' ' -f2",
        ),
        // A fresh node has no legacy rules, so the proxy chose iptables-nft.
        "iptables" => shell(
            node,
            "iptables-nft-save -t nat | grep -o '^:KUBE-SVC-[0-9A-F]*' | cut -c2-",
        ),
        // The addresses bound for Services.
        "ipvs" => shell(
            node,
            "ip -o -4 addr show dev kube-ipvs0 | awk '{print $4}' | cut -d/ -f1",
        ),
        _ => String::new(),
    }
    .split_whitespace()
    .map(str::to_owned)
    .collect()
}

fn failed_sync_recovers(env: &mut Env) {
    let node = env.cluster.node(1);
    let before = chains_now(env, node);
    let svc = env.api.create_service(service(
        "doomed",
        json!({"selector": {"app": "web"}, "ports": web_ports()}),
    ));
    let ip = cluster_ip(&svc);
    let all = env.web_names(&[1, 2, 3]);
    expect_answers(node, ip, 80, false, &all);
    let failures = |n| metric(n, &format!("rudder_sync_failures_total{{mode=\"{}\"}} ", env.mode));
    let failed_before = failures(node);
    let undo = hold(env, node, &before);
    // One change every mode's hold refuses: an addition and a removal. The addition sorts
    // first, so a removal synced with it cannot make room for it in a full map.
    let late = env.api.create_service(service(
        "added",
        json!({"selector": {"app": "web"}, "ports": web_ports()}),
    ));
    env.api.delete_service("doomed");
    eventually("the failed sync is counted", programmed(), || {
        let now = failures(node);
        if now > failed_before {
            Ok(())
        } else {
            Err(format!("{now} failures"))
        }
    });
    undo();
    eventually("the retried sync removes the Service", programmed(), || {
        match node.ask_tcp(ip, 80, ask()) {
            Err(e) if e.kind == AskErrorKind::Timeout => Ok(()),
            other => Err(format!("{other:?}, want the deleted ClusterIP dropped")),
        }
    });
    expect_answers(node, cluster_ip(&late), 80, false, &all);
    env.api.delete_service("added");
}

fn run_scenarios(mode: &str) {
    let mut env = Env::start(mode);
    let mut failed = Vec::new();
    // RUDDER_E2E_ONLY=a,b runs only the scenarios whose names contain a or b (debugging).
    let only = std::env::var("RUDDER_E2E_ONLY").unwrap_or_default();
    let wanted = |n: &str| only.split(',').any(|part| n.contains(part));
    for (name, scenario) in SCENARIOS.iter().filter(|(n, _)| wanted(n)) {
        let started = Instant::now();
        match catch_unwind(AssertUnwindSafe(|| scenario(&mut env))) {
            Ok(()) => println!("[{mode}] {name}: ok ({:.1?})", started.elapsed()),
            Err(panic) => {
                let why = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_owned()))
                    .unwrap_or_default();
                println!("[{mode}] {name}: FAILED: {why}");
                if let Ok(secs) = std::env::var("RUDDER_E2E_PAUSE_ON_FAIL") {
                    // Keeps the cluster up for a look at its namespaces (debugging only).
                    std::thread::sleep(Duration::from_secs(secs.parse().unwrap_or(300)));
                }
                failed.push(*name);
            }
        }
    }
    for (i, proxy) in env.proxies.iter_mut().enumerate() {
        if let Some(status) = proxy.exited() {
            failed.push("proxy_keeps_running");
            println!("[{mode}] rudder-proxy on n{} exited with {status}", i + 1);
        }
    }
    assert!(failed.is_empty(), "[{mode}] failed scenarios: {failed:?}{}", env.logs());
}

/// The host's modes run side by side; the ipvs guest runs alone. QEMU without hardware
/// virtualisation runs the guest about 8x slower, and sharing two cores with three host
/// scenarios slowed it past its scaled timeouts on a loaded CI machine.
static MACHINE: std::sync::RwLock<()> = std::sync::RwLock::new(());

fn shared_machine() -> std::sync::RwLockReadGuard<'static, ()> {
    MACHINE.read().unwrap_or_else(|p| p.into_inner())
}

fn whole_machine() -> std::sync::RwLockWriteGuard<'static, ()> {
    MACHINE.write().unwrap_or_else(|p| p.into_inner())
}

#[test]
fn nftables_mode() {
    let _machine = shared_machine();
    run_scenarios("nftables");
}

#[test]
fn iptables_mode() {
    let _machine = shared_machine();
    run_scenarios("iptables");
}

#[test]
fn ebpf_mode() {
    let _machine = shared_machine();
    run_scenarios("ebpf");
}

/// Set inside the guest [`ipvs_mode`] boots, so a guest without IP_VS fails instead of
/// booting another.
const IN_GUEST_ENV: &str = "RUDDER_E2E_IN_GUEST";
/// How much slower the guest runs than the host (TCG: about 8x for this code).
const GUEST_TIME_SCALE: u32 = 8;

/// The ipvs mode needs IP_VS. Detected, not assumed: on a kernel that has it the scenarios
/// run here; on one without (CI's), this test boots a QEMU guest with Debian's stock kernel
/// through `cargo xtask vm` (the xtask binary beside ours) and runs itself there, on the
/// same binaries, failing with the guest's output if any scenario fails.
#[test]
fn ipvs_mode() {
    let _machine = whole_machine();
    if rudder_proxy::dataplane::ipvs::kernel_has_ip_vs() {
        run_scenarios("ipvs");
        return;
    }
    assert!(
        std::env::var_os(IN_GUEST_ENV).is_none(),
        "the guest's kernel has no IP_VS either (modprobe ip_vs failed)"
    );
    let started = Instant::now();
    let exe = std::env::current_exe().expect("this test's executable");
    let mut vm = std::process::Command::new(workspace_binary("xtask"));
    vm.args(["vm", "--cpus", "2", "--mem", "2048", "--timeout", "1200", "--"])
        .arg(&exe)
        .args(["ipvs_mode", "--exact", "--nocapture", "--test-threads", "1"])
        .env(IN_GUEST_ENV, "1")
        .env(rudder_tests::TIME_SCALE_ENV, GUEST_TIME_SCALE.to_string());
    // The guest's output, line by line as it comes (live with --nocapture).
    vm.stdout(std::process::Stdio::piped());
    let mut child = vm.spawn().expect("run `xtask vm` (cargo xtask builds it)");
    let stdout = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("piped")));
    let mut passed = false;
    for line in stdout.map_while(Result::ok) {
        // libtest's summary, not "test ipvs_mode ... ok": the scenarios' own lines land
        // between the test's name and its verdict.
        passed |= line.starts_with("test result: ok. 1 passed");
        println!("[guest] {line}");
    }
    let status = child.wait().expect("wait for `xtask vm`");
    println!("ipvs_mode in the guest took {:.0?} (boot included)", started.elapsed());
    assert!(
        status.success() && passed,
        "ipvs_mode failed in the guest ({status}); its output is above"
    );
}

/// Flows that must survive a restart of the proxy: what they sent and what failed.
#[derive(Default)]
struct Tally {
    ok: std::sync::atomic::AtomicU64,
    failed: std::sync::atomic::AtomicU64,
    first_failure: std::sync::Mutex<Option<String>>,
}

impl Tally {
    fn record(&self, r: Result<(), String>) {
        use std::sync::atomic::Ordering::Relaxed;
        match r {
            Ok(()) => {
                self.ok.fetch_add(1, Relaxed);
            }
            Err(e) => {
                self.failed.fetch_add(1, Relaxed);
                self.first_failure
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .get_or_insert(e);
            }
        }
    }
}

/// One keep-alive HTTP request on `conn`, or a fresh connection per request.
fn http_once(
    conn: &mut Option<(std::net::TcpStream, std::io::BufReader<std::net::TcpStream>)>,
    to: SocketAddr,
    keep: bool,
) -> Result<(), String> {
    use std::io::{BufRead, Read, Write};
    if conn.is_none() || !keep {
        let s = std::net::TcpStream::connect_timeout(&to, slow(Duration::from_secs(2)))
            .map_err(|e| format!("connect {to}: {e}"))?;
        s.set_read_timeout(Some(slow(Duration::from_secs(2))))
            .map_err(|e| e.to_string())?;
        let r = std::io::BufReader::new(s.try_clone().map_err(|e| e.to_string())?);
        *conn = Some((s, r));
    }
    let Some((w, r)) = conn.as_mut() else {
        return Err("no connection".into());
    };
    let close = if keep { "" } else { "Connection: close\r\n" };
    write!(w, "GET / HTTP/1.1\r\nHost: x\r\n{close}\r\n").map_err(|e| format!("write {to}: {e}"))?;
    let mut line = String::new();
    let mut len = 0;
    loop {
        line.clear();
        if r.read_line(&mut line).map_err(|e| format!("read {to}: {e}"))? == 0 {
            return Err(format!("{to} closed the connection"));
        }
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            len = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" {
            break;
        }
    }
    let mut body = vec![0u8; len];
    r.read_exact(&mut body).map_err(|e| format!("read body from {to}: {e}"))
}

/// Keeps `what` flowing from `netns` to `to` until `stop`, every 20 ms.
fn stream(
    netns: String,
    to: SocketAddr,
    what: &'static str,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    tally: std::sync::Arc<Tally>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let _ = rudder_tests::netns::with_netns(&netns, || {
            let mut conn = None;
            let udp = UdpSocket::bind("0.0.0.0:0").expect("a UDP socket");
            udp.set_read_timeout(Some(slow(Duration::from_millis(500))))
                .expect("a timeout");
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let r = match what {
                    "keepalive" => http_once(&mut conn, to, true),
                    "new" => http_once(&mut conn, to, false),
                    _ => {
                        let mut buf = [0u8; 64];
                        udp.send_to(b"ping", to)
                            .and_then(|_| udp.recv_from(&mut buf))
                            .map(|_| ())
                            .map_err(|e| format!("UDP {to}: {e}"))
                    }
                };
                tally.record(r.map_err(|e| format!("{what} from {netns}: {e}")));
                std::thread::sleep(slow(Duration::from_millis(20)));
            }
        });
    })
}

/// The ebpf mode's restart promise: pinned maps and links keep the dataplane running while
/// the proxy is down and while its successor takes over, so no established flow and no new
/// one fails.
#[test]
fn ebpf_proxy_restarts_drop_no_flow() {
    let _machine = shared_machine();
    use std::sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    };
    let mut env = Env::start("ebpf");
    // A keep-alive HTTP and UDP echo server on web-3 (the only `half: b` pod), port 9090.
    let mut serve = std::process::Command::new(workspace_binary("rudder-throughput-bench"));
    serve.args(["serve", "9090"]);
    let _steady = env.web[2].spawn(&serve).expect("the steady backend");
    let svc = env.api.create_service(service(
        "steady",
        json!({"type": "NodePort", "selector": {"app": "web", "half": "b"}, "ports": [
            {"name": "http", "port": 80, "protocol": "TCP", "targetPort": 9090},
            {"name": "udp", "port": 80, "protocol": "UDP", "targetPort": 9090}]}),
    ));
    let vip = SocketAddr::new(cluster_ip(&svc), 80);
    let n1 = IpAddr::from(env.cluster.node(1).ip());
    let np_tcp = SocketAddr::new(n1, node_port(&svc, "http"));
    let np_udp = SocketAddr::new(n1, node_port(&svc, "udp"));
    let client = env.clients[0].netns().to_owned();
    let n2 = env.cluster.node(2).netns().to_owned();
    // n2 and the backend put complete checksums on their packets, as across a physical
    // network: n1's XDP program carries the NodePort flows, and is replaced on restart.
    let _wire = WireChecksums::on(vec![n2.clone(), env.web[2].netns().to_owned()]);
    for (from, to) in [(&client, vip), (&n2, np_tcp)] {
        eventually(&format!("the steady Service answers {from}"), programmed(), || {
            rudder_tests::netns::with_netns(from, || http_once(&mut None, to, true))
                .map_err(|e| e.to_string())
                .and_then(|r| r)
        });
    }
    let stop = Arc::new(AtomicBool::new(false));
    let tally = Arc::new(Tally::default());
    let streams = vec![
        stream(client.clone(), vip, "keepalive", Arc::clone(&stop), Arc::clone(&tally)),
        stream(client.clone(), vip, "new", Arc::clone(&stop), Arc::clone(&tally)),
        stream(client, vip, "udp", Arc::clone(&stop), Arc::clone(&tally)),
        stream(n2.clone(), np_tcp, "keepalive", Arc::clone(&stop), Arc::clone(&tally)),
        stream(n2.clone(), np_tcp, "new", Arc::clone(&stop), Arc::clone(&tally)),
        stream(n2, np_udp, "udp", Arc::clone(&stop), Arc::clone(&tally)),
    ];
    std::thread::sleep(slow(Duration::from_secs(2)));
    let xdp_before = xdp_sent(env.cluster.node(1));
    for round in 1..=2 {
        // n1 holds the client pod and the NodePort address: its proxy is the one that matters.
        let started = Instant::now();
        let flags = ebpf_flags("ebpf", &env.cgroups[0], &env.pins[0]);
        env.proxies[0].stop();
        std::thread::sleep(slow(Duration::from_millis(500)));
        env.proxies[0] = Proxy::start(env.cluster.node(1), "ebpf", &env.control_plane.kubeconfig, &flags);
        env.proxies[0].wait_healthy(Duration::from_secs(30));
        println!(
            "restart {round}: n1's proxy replaced and healthy after {:?}",
            started.elapsed()
        );
        std::thread::sleep(slow(Duration::from_secs(2)));
    }
    // The counters live in a pinned map, so they carry across the restarts.
    let xdp = xdp_sent(env.cluster.node(1)) - xdp_before;
    stop.store(true, Ordering::Relaxed);
    for s in streams {
        let _ = s.join();
    }
    let (ok, failed) = (tally.ok.load(Ordering::Relaxed), tally.failed.load(Ordering::Relaxed));
    println!(
        "across two restarts: {ok} requests and datagrams answered, {failed} failed; XDP on n1 sent {xdp} packets back out"
    );
    assert!(xdp > 100.0, "the NodePort flows did not go through XDP: {xdp} packets");
    assert!(ok > 300, "too little traffic to judge: {ok}");
    assert_eq!(
        failed,
        0,
        "first failure: {:?}{}",
        tally.first_failure.lock().unwrap_or_else(|p| p.into_inner()),
        env.logs()
    );
}
