//! The ipvs backend against a kernel with IP_VS: `kube-ipvs0` holds exactly the Service
//! addresses of the last sync, bound and unbound over rtnetlink in bulk; the IPVS table
//! holds exactly its virtual and real servers; a refused operation of a bulk step is named;
//! the jumps into our chains are there once, also after a restart.
//!
//! On a kernel without IP_VS (CI's) the test boots a QEMU guest with Debian's stock kernel
//! through `cargo xtask vm` and runs itself there, as the ipvs e2e does.

use std::{collections::BTreeSet, net::IpAddr, process::Command};

use rudder_proxy::{
    bench::synthetic,
    dataplane::{
        Dataplane, SyncKind, iptables,
        ipvs::{
            self, Destination, IpvsHandle, Op, ServiceKey,
            apply::{HelperRules, cleanup_helpers, set_sysctls},
            helpers::JUMPS,
            netlink::NetlinkIpvs,
            seam::Ipvs,
        },
    },
    model::{
        DesiredState, IpFamily, ModelConfig, NodeInfo, Protocol, ServicePortMap, endpoints::endpoints_map,
        service::service_ports,
    },
};
use rudder_tests::{Cluster, InNetns, e2e::workspace_binary};

/// Set inside the guest, so a guest without IP_VS fails instead of booting another.
const IN_GUEST_ENV: &str = "RUDDER_IPVS_KERNEL_IN_GUEST";

/// Services 0..n of the sync bench's synthetic cluster, with `e` endpoints each.
fn state(n: usize, e: usize) -> DesiredState {
    let mut ports = ServicePortMap::new();
    let mut slices = Vec::new();
    for i in 0..n {
        ports.extend(service_ports(&synthetic::service(i)).expect("a synthetic Service"));
        slices.push(synthetic::slice(i, e, 0));
    }
    let endpoints = endpoints_map(&slices, "bench-node").expect("synthetic slices");
    let node = NodeInfo {
        name: "bench-node".into(),
        ..Default::default()
    };
    let config = ModelConfig {
        cluster_cidrs: vec!["10.128.0.0/10".parse().expect("a CIDR")],
        service_cidrs: vec!["10.96.0.0/16".parse().expect("a CIDR")],
        ..Default::default()
    };
    DesiredState::build(&ports, &endpoints, &node, &config)
}

fn cluster_ips(range: std::ops::Range<usize>) -> BTreeSet<IpAddr> {
    range.map(|i| IpAddr::V4(synthetic::cluster_ip(i))).collect()
}

/// What `ip` (not our code) reports bound to kube-ipvs0.
fn bound(node: &impl InNetns) -> BTreeSet<IpAddr> {
    let out = node
        .run(Command::new("ip").args(["-o", "-4", "addr", "show", "dev", "kube-ipvs0"]))
        .expect("ip addr show");
    out.lines()
        .filter_map(|l| l.split_whitespace().skip_while(|w| *w != "inet").nth(1))
        .map(|a| a.strip_suffix("/32").expect("a /32").parse().expect("an address"))
        .collect()
}

/// Virtual and real servers as the kernel lists them in /proc/net/ip_vs.
fn table(node: &impl InNetns) -> (usize, usize) {
    let out = node
        .run(Command::new("cat").arg("/proc/net/ip_vs"))
        .expect("read /proc/net/ip_vs");
    let services = out
        .lines()
        .filter(|l| l.starts_with("TCP") || l.starts_with("UDP"))
        .count();
    let reals = out
        .lines()
        .filter(|l| l.trim_start().starts_with("->") && !l.contains("RemoteAddress"))
        .count();
    (services, reals)
}

fn iptables_save(node: &impl InNetns) -> String {
    let bin = iptables::apply::detect().binary(IpFamily::V4, "-save");
    node.run(&Command::new(bin)).expect("iptables-save")
}

fn jump_counts(node: &impl InNetns) -> Vec<usize> {
    let saved = iptables_save(node);
    JUMPS
        .iter()
        .map(|(_, chain, rule)| saved.lines().filter(|l| *l == format!("-A {chain} {rule}")).count())
        .collect()
}

fn backend() -> Ipvs<NetlinkIpvs> {
    Ipvs {
        handle: NetlinkIpvs::open().expect("the IPVS family (IP_VS is loaded)"),
        scheduler: ipvs::Scheduler::RoundRobin,
        helpers: Some(HelperRules::new()),
        timings: Default::default(),
    }
}

fn scenarios() {
    ipvs::load_modules();
    let cluster = Cluster::new(1).expect("a netns node (needs root)");
    let node = cluster.node(1);
    node.with_netns(set_sysctls).expect("enter").expect("sysctls");

    // 1000 Services: every ClusterIP bound, nothing else; 1000 virtual services, 2 real
    // servers each.
    let mut proxy = node.with_netns(backend).expect("enter");
    let full = state(1000, 2);
    node.with_netns(|| proxy.sync(&full, SyncKind::Full))
        .expect("enter")
        .expect("sync of 1000 Services");
    assert_eq!(bound(node), cluster_ips(0..1000), "kube-ipvs0 after the first sync");
    assert_eq!(table(node), (1000, 2000));
    let took: Vec<_> = proxy.timings.0.iter().map(|(p, _)| *p).collect();
    assert!(took.contains(&"bind addresses"), "{took:?}");

    // A restart (a new backend, nothing known) with half of them: the other half unbound
    // and their virtual services gone, and the jumps still there once each.
    let mut restarted = node.with_netns(backend).expect("enter");
    let half = state(500, 2);
    node.with_netns(|| restarted.sync(&half, SyncKind::Full))
        .expect("enter")
        .expect("sync of 500 Services");
    assert_eq!(bound(node), cluster_ips(0..500), "kube-ipvs0 after removing half");
    assert_eq!(table(node), (500, 1000));
    assert_eq!(jump_counts(node), vec![1; JUMPS.len()], "each jump once");

    // The kernel's view through our handle agrees with `ip`'s.
    let handle = &mut restarted.handle;
    let state = node
        .with_netns(move || handle.state())
        .expect("enter")
        .expect("read back");
    assert_eq!(state.bound, cluster_ips(0..500));

    // A bulk step the kernel partly refuses: real servers for a virtual service that does
    // not exist. The error names the first, counts the others; the valid one went in.
    let missing = ServiceKey {
        address: "10.99.0.1".parse().expect("ip"),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let existing = ServiceKey {
        address: IpAddr::V4(synthetic::cluster_ip(0)),
        port: 80,
        protocol: Protocol::Tcp,
    };
    let dest = |a: &str| Destination {
        address: a.parse().expect("ip"),
        port: 8080,
        weight: 1,
    };
    let ops = [
        Op::AddDestination(missing, dest("10.200.0.1")),
        Op::AddDestination(existing, dest("10.200.0.2")),
        Op::AddDestination(missing, dest("10.200.0.3")),
    ];
    let err = node
        .with_netns(|| restarted.handle.apply_stage(&ops))
        .expect("enter")
        .expect_err("no such virtual service")
        .to_string();
    assert!(
        err.contains("adding real server 10.200.0.1:8080 to Tcp 10.99.0.1:80") && err.contains("and 1 more"),
        "{err}"
    );
    assert_eq!(table(node), (500, 1001), "the valid operation of the step applied");

    // Unbinding an address that is not bound is refused and named (the bindings changed
    // behind the plan's back; the next sync plans from the kernel); the rest of the step
    // applies. Binding a bound address again is no error.
    let handle = &mut restarted.handle;
    let err = node
        .with_netns(move || {
            handle.apply_stage(&[Op::BindAddress(IpAddr::V4(synthetic::cluster_ip(0)))])?;
            handle.apply_stage(&[
                Op::UnbindAddress("10.99.0.9".parse().expect("ip")),
                Op::UnbindAddress(IpAddr::V4(synthetic::cluster_ip(499))),
            ])
        })
        .expect("enter")
        .expect_err("10.99.0.9 is not bound")
        .to_string();
    assert!(err.contains("unbinding 10.99.0.9 from kube-ipvs0"), "{err}");
    assert_eq!(bound(node), cluster_ips(0..499));

    // Cleanup: no virtual service, no kube-ipvs0, no chain of ours.
    node.with_netns(|| {
        ipvs::netlink::cleanup()?;
        cleanup_helpers()
    })
    .expect("enter")
    .expect("cleanup");
    assert_eq!(table(node), (0, 0));
    assert!(
        node.run(Command::new("ip").args(["link", "show", "kube-ipvs0"]))
            .is_err()
    );
    assert!(!iptables_save(node).contains("KUBE-IPVS"));
}

#[test]
fn kube_ipvs0_and_the_ipvs_table_hold_exactly_what_the_last_sync_asked_for() {
    if ipvs::kernel_has_ip_vs() {
        scenarios();
        return;
    }
    assert!(
        std::env::var_os(IN_GUEST_ENV).is_none(),
        "the guest's kernel has no IP_VS either (modprobe ip_vs failed)"
    );
    let exe = std::env::current_exe().expect("this test's executable");
    let mut vm = Command::new(workspace_binary("xtask"));
    vm.args(["vm", "--mem", "2048", "--timeout", "900", "--"])
        .arg(&exe)
        .args([
            "kube_ipvs0_and_the_ipvs_table_hold_exactly_what_the_last_sync_asked_for",
            "--exact",
            "--nocapture",
        ])
        .env(IN_GUEST_ENV, "1")
        .stdout(std::process::Stdio::piped());
    let mut child = vm.spawn().expect("run `xtask vm` (cargo xtask builds it)");
    let stdout = std::io::BufRead::lines(std::io::BufReader::new(child.stdout.take().expect("piped")));
    let mut passed = false;
    for line in stdout.map_while(Result::ok) {
        passed |= line.starts_with("test result: ok. 1 passed");
        println!("[guest] {line}");
    }
    let status = child.wait().expect("wait for `xtask vm`");
    assert!(
        status.success() && passed,
        "the test failed in the guest ({status}); its output is above"
    );
}
