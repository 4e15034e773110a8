//! The per-packet benchmark: the tc load balancer under BPF_PROG_TEST_RUN with N Services
//! loaded, beside a bare `return XDP_PASS` program timed the same way.
//!
//! The kernel's `repeat` reuses one buffer, so a program that rewrites the packet sees its
//! own output from the second repetition on (a VIP hit would turn into a pass-through).
//! Rewriting cases are therefore timed as many single runs, each on a fresh copy of the
//! input, with the kernel's own per-run time; the floor is timed both ways, and each case
//! is divided by the floor timed the same way.

use std::{net::Ipv4Addr, process::Command, time::SystemTime};

use super::synthetic;
use crate::{
    dataplane::ebpf::{
        EbpfError,
        packet::{self, PROTO_TCP, TCP_ACK, TCP_SYN},
        testrun::TestLb,
    },
    model::{DesiredState, EndpointsChangeTracker, EndpointsMap, ModelConfig, NodeInfo, ServiceChangeTracker, ServicePortMap},
};

/// Endpoints per Service here (100k Services × 4 = 400k backends).
pub const ENDPOINTS: usize = 4;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_OK: u32 = 0;
const XDP_PASS: u32 = 2;

#[derive(Debug, Clone, serde::Serialize)]
pub struct PacketMeasurement {
    pub services: usize,
    pub runs: u32,
    /// ns per packet, one `repeat` of `runs` (programs that do not rewrite).
    pub xdp_pass_repeat_ns: f64,
    pub non_service_repeat_ns: f64,
    /// ns per packet, mean over `runs` single runs (the kernel's time for each).
    pub xdp_pass_ns: f64,
    pub non_service_ns: f64,
    pub vip_new_flow_ns: f64,
    pub vip_established_ns: f64,
}

/// A node namespace's routing: the backends (10.128.0.0/10) behind a next hop with a
/// known MAC, so route lookups succeed as they would on a node.
pub fn set_up_routes() -> Result<(), EbpfError> {
    let steps: &[&[&str]] = &[
        &["link", "add", "b0", "type", "veth", "peer", "name", "b1"],
        &["addr", "add", "10.250.0.11/24", "dev", "b0"],
        &["link", "set", "b0", "up"],
        &["link", "set", "b1", "up"],
        &["link", "set", "lo", "up"],
        &["route", "add", "10.128.0.0/10", "via", "10.250.0.12"],
        &["neigh", "replace", "10.250.0.12", "lladdr", "02:00:00:00:00:12", "dev", "b0", "nud", "permanent"],
    ];
    for args in steps {
        let out = Command::new("ip").args(*args).output().map_err(|e| EbpfError::Setup(format!("ip: {e}")))?;
        if !out.status.success() {
            return Err(EbpfError::Setup(format!("ip {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr))));
        }
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|e| EbpfError::Setup(format!("ip_forward: {e}")))
}

fn state(n: usize) -> DesiredState {
    let mut services = ServiceChangeTracker::new();
    let mut endpoints = EndpointsChangeTracker::new("bench-node", SystemTime::now());
    for i in 0..n {
        let _ = services.apply(&synthetic::service(i));
        let _ = endpoints.apply(&synthetic::slice(i, ENDPOINTS, 0));
    }
    let (mut sm, mut em) = (ServicePortMap::new(), EndpointsMap::new());
    services.take_changes().apply_to(&mut sm);
    endpoints.take_changes().apply_to(&mut em);
    let node = NodeInfo { name: "bench-node".into(), ..Default::default() };
    let config = ModelConfig {
        cluster_cidrs: vec!["10.128.0.0/10".parse().expect("a CIDR")],
        service_cidrs: vec!["10.96.0.0/16".parse().expect("a CIDR")],
        ..Default::default()
    };
    DesiredState::build(&sm, &em, &node, &config)
}

fn check(what: &str, got: u32, want: u32) -> Result<(), EbpfError> {
    if got == want {
        Ok(())
    } else {
        Err(EbpfError::Setup(format!("{what}: verdict {got}, want {want}")))
    }
}

/// Mean kernel time of `runs` single runs of `program`, each over `frame(i)`.
fn single_runs(
    lb: &TestLb,
    program: &'static str,
    runs: u32,
    want: u32,
    frame: impl Fn(u32) -> Vec<u8>,
) -> Result<f64, EbpfError> {
    let mut total = 0u64;
    for i in 0..runs {
        let out = lb.run(program, &frame(i), 1)?;
        if i == 0 {
            check(program, out.verdict, want)?;
        }
        total += out.ns_per_run;
    }
    Ok(total as f64 / f64::from(runs))
}

pub fn run(n: usize, runs: u32) -> Result<PacketMeasurement, EbpfError> {
    use rudder_abi::names::{TC_INGRESS, XDP_PASS as PASS};
    let max = u32::try_from(n * 2 + n * ENDPOINTS + 4096).unwrap_or(u32::MAX);
    let mut lb = TestLb::load("10.96.0.0/16".parse().expect("a CIDR"), "10.128.0.0/10".parse().expect("a CIDR"), max, None)?;
    lb.sync(&state(n))?;
    // A pod on this node (no masquerade); the last Service, so nothing favours early keys.
    let client = Ipv4Addr::new(10, 200, 0, 7);
    let vip = synthetic::cluster_ip(n - 1);
    let other = packet::frame(PROTO_TCP, (client, 40000), (Ipv4Addr::new(10, 250, 0, 99), 80), TCP_ACK, &[0; 16]);
    let est = packet::frame(PROTO_TCP, (client, 999), (vip, 80), TCP_ACK, &[0; 16]);
    check("VIP SYN", lb.run(TC_INGRESS, &est, 1)?.verdict, TC_ACT_REDIRECT)?;

    let pass_rep = lb.run(PASS, &other, runs)?;
    check("xdp pass", pass_rep.verdict, XDP_PASS)?;
    let other_rep = lb.run(TC_INGRESS, &other, runs)?;
    check("non-service", other_rep.verdict, TC_ACT_OK)?;
    Ok(PacketMeasurement {
        services: n,
        runs,
        xdp_pass_repeat_ns: pass_rep.ns_per_run as f64,
        non_service_repeat_ns: other_rep.ns_per_run as f64,
        xdp_pass_ns: single_runs(&lb, PASS, runs, XDP_PASS, |_| other.clone())?,
        non_service_ns: single_runs(&lb, TC_INGRESS, runs, TC_ACT_OK, |_| other.clone())?,
        // New flows: every run a new (client, port) pair, so each is a conntrack miss.
        vip_new_flow_ns: {
            let mut port = 0u32;
            let mut total = 0u64;
            for i in 0..runs {
                let c = Ipv4Addr::from(u32::from(client) + (i / 60000));
                port = (port + 1) % 60000;
                let f = packet::frame(PROTO_TCP, (c, 1024 + port as u16), (vip, 80), TCP_SYN, &[]);
                let out = lb.run(TC_INGRESS, &f, 1)?;
                if i == 0 {
                    check("VIP new flow", out.verdict, TC_ACT_REDIRECT)?;
                }
                total += out.ns_per_run;
            }
            total as f64 / f64::from(runs)
        },
        vip_established_ns: single_runs(&lb, TC_INGRESS, runs, TC_ACT_REDIRECT, |_| est.clone())?,
    })
}
