//! The per-packet benchmark: the load balancer's tc and XDP programs under
//! BPF_PROG_TEST_RUN with N Services loaded, beside a bare `return XDP_PASS` program timed
//! the same way.
//!
//! The kernel's `repeat` reuses one buffer, so a program that rewrites the packet sees its
//! own output from the second repetition on. Two ways around it, both reported:
//! - single runs: many runs of one repetition, each on a fresh copy of the input, with the
//!   kernel's own time per run (which includes the test-run syscall's per-run setup, so
//!   the floor is timed the same way);
//! - mirrored flows (established flows only): beside the flow under test, a second
//!   conntrack entry keyed by its translated packet translates that packet back, so every
//!   repetition is an established-flow hit and the buffer alternates between the two.
//!   Both entries take the same path (lookup, rewrite, cached route); the second's route
//!   refresh (every 256 packets) finds a route as the first one's does.
//!
//! New flows cannot repeat (the first run creates the flow), so they are single runs only.

use std::{net::Ipv4Addr, process::Command, time::SystemTime};

use super::synthetic;
use crate::{
    dataplane::ebpf::{
        EbpfError,
        packet::{self, PROTO_TCP, TCP_ACK, TCP_SYN},
        testrun::{Outcome, TestLb},
    },
    model::{
        DesiredState, EndpointsChangeTracker, EndpointsMap, ModelConfig, NodeInfo, ServiceChangeTracker, ServicePortMap,
    },
};

/// Endpoints per Service here (100k Services × 4 = 400k backends).
pub const ENDPOINTS: usize = 4;
const TC_ACT_REDIRECT: u32 = 7;
const TC_ACT_OK: u32 = 0;
const XDP_PASS: u32 = 2;
const XDP_TX: u32 = 3;
/// New flows timed per program: two programs' worth stay under the conntrack map's
/// 262,144 entries.
pub const NEW_FLOWS: u32 = 100_000;

/// Why the benchmark could not measure: its setup failed, or a program did not do what the
/// timed case assumes (a figure for a dropped packet would time something else).
#[derive(Debug, thiserror::Error)]
pub enum PacketBenchError {
    #[error(transparent)]
    Ebpf(#[from] EbpfError),
    #[error("run `ip {args}`")]
    IpSpawn {
        args: String,
        #[source]
        source: std::io::Error,
    },
    #[error("`ip {args}` failed: {stderr}")]
    Ip { args: String, stderr: String },
    #[error("enable net.ipv4.ip_forward")]
    Forwarding {
        #[source]
        source: std::io::Error,
    },
    #[error("{what}: verdict {got}, want {want}")]
    Verdict { what: String, got: u32, want: u32 },
    #[error("{program} on {ifindex}: {other} of {runs} single runs were not verdict {want}")]
    StrayVerdicts {
        program: &'static str,
        ifindex: u32,
        other: u32,
        runs: u32,
        want: u32,
    },
    #[error("a benchmark packet does not parse: {reason}")]
    Packet { reason: String },
    #[error("{program}: mirrored flow did not return to itself: {sent} -> {got}")]
    NotMirrored {
        program: &'static str,
        sent: String,
        got: String,
    },
    #[error("no device {name:?}")]
    NoDevice { name: String },
}

/// ns per packet. `_repeat`: one `repeat` of `runs` (for established flows, mirrored);
/// otherwise the mean of `runs` single runs.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
pub struct PacketMeasurement {
    pub services: usize,
    pub runs: u32,
    /// New flows per program (at most [`NEW_FLOWS`]).
    pub new_flow_runs: u32,
    pub xdp_pass_repeat_ns: f64,
    pub xdp_pass_ns: f64,
    /// tc ingress: a packet for no Service; a pod's new connection to a ClusterIP; an
    /// established one.
    pub tc_non_service_repeat_ns: f64,
    pub tc_non_service_ns: f64,
    pub tc_new_flow_ns: f64,
    pub tc_established_ns: f64,
    pub tc_established_repeat_ns: f64,
    /// XDP on the external device: a packet for no Service; a client outside the cluster
    /// connecting to a frontend whose backend is on another node (masqueraded, sent back
    /// out with XDP_TX); an established one.
    pub xdp_non_service_repeat_ns: f64,
    pub xdp_new_flow_ns: f64,
    pub xdp_established_ns: f64,
    pub xdp_established_repeat_ns: f64,
}

/// A node namespace's routing: the backends (10.128.0.0/10) behind a next hop with a
/// known MAC, so route lookups succeed as they would on a node.
pub fn set_up_routes() -> Result<(), PacketBenchError> {
    let steps: &[&[&str]] = &[
        &["link", "add", "b0", "type", "veth", "peer", "name", "b1"],
        &["addr", "add", "10.250.0.11/24", "dev", "b0"],
        &["link", "set", "b0", "up"],
        &["link", "set", "b1", "up"],
        &["link", "set", "lo", "up"],
        &["route", "add", "10.128.0.0/10", "via", "10.250.0.12"],
        // For the mirrored flows' second entries, whose "backend" is the Service address.
        &["route", "add", "10.96.0.0/16", "via", "10.250.0.12"],
        &[
            "neigh",
            "replace",
            "10.250.0.12",
            "lladdr",
            "02:00:00:00:00:12",
            "dev",
            "b0",
            "nud",
            "permanent",
        ],
    ];
    for args in steps {
        let out = Command::new("ip")
            .args(*args)
            .output()
            .map_err(|source| PacketBenchError::IpSpawn {
                args: args.join(" "),
                source,
            })?;
        if !out.status.success() {
            return Err(PacketBenchError::Ip {
                args: args.join(" "),
                stderr: String::from_utf8_lossy(&out.stderr).trim().to_owned(),
            });
        }
    }
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").map_err(|source| PacketBenchError::Forwarding { source })
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
    let node = NodeInfo {
        name: "bench-node".into(),
        ..Default::default()
    };
    let config = ModelConfig {
        cluster_cidrs: vec!["10.128.0.0/10".parse().expect("a CIDR")],
        service_cidrs: vec!["10.96.0.0/16".parse().expect("a CIDR")],
        ..Default::default()
    };
    DesiredState::build(&sm, &em, &node, &config)
}

fn check(what: &str, got: u32, want: u32) -> Result<(), PacketBenchError> {
    if got == want {
        Ok(())
    } else {
        Err(PacketBenchError::Verdict {
            what: what.to_owned(),
            got,
            want,
        })
    }
}

/// Mean kernel time of `runs` single runs of `program` (on `ifindex`), each over `frame(i)`.
fn single_runs(
    lb: &TestLb,
    program: &'static str,
    ifindex: u32,
    runs: u32,
    want: u32,
    frame: impl Fn(u32) -> Vec<u8>,
) -> Result<f64, PacketBenchError> {
    let (mut total, mut other) = (0u64, 0u32);
    for i in 0..runs {
        let out = lb.run_on(program, &frame(i), 1, ifindex)?;
        if i == 0 {
            check(&format!("{program} on {ifindex}, first single run"), out.verdict, want)?;
        }
        other += u32::from(out.verdict != want);
        total += out.ns_per_run;
    }
    // Dropped or passed packets would be timed as something they are not. A few are
    // expected: XDP leaves to tc a packet whose complete checksum equals the pseudo-header
    // sum (1 in 65,536; see the xdp module).
    if other > runs / 10_000 {
        return Err(PacketBenchError::StrayVerdicts {
            program,
            ifindex,
            other,
            runs,
            want,
        });
    }
    Ok(total as f64 / f64::from(runs))
}

/// A new flow from `client` per run (a conntrack miss each time), to the `n` frontends in
/// turn: a masqueraded flow holds a source port of the node's per backend, and 100k of
/// them on one frontend's 4 backends would fill those ports (about 36,000 per backend), so
/// the figure would time the search for a free one, and then drops.
fn new_flows(
    lb: &TestLb,
    program: &'static str,
    ifindex: u32,
    runs: u32,
    want: u32,
    client: Ipv4Addr,
    n: usize,
) -> Result<f64, PacketBenchError> {
    single_runs(lb, program, ifindex, runs, want, |i| {
        let c = Ipv4Addr::from(u32::from(client) + 1 + i / 60000);
        let vip = synthetic::cluster_ip(i as usize % n);
        packet::frame(PROTO_TCP, (c, 1024 + (i % 60000) as u16), (vip, 80), TCP_SYN, &[])
    })
}

/// Makes `frame`'s flow (already established) mirrored: adds the conntrack entry that
/// translates its translated packet back into `frame`, so `repeat` alternates the two.
fn mirror(lb: &mut TestLb, frame: &[u8], translated: &Outcome) -> Result<(), PacketBenchError> {
    let key = |f: &[u8]| -> Result<rudder_abi::lb::FlowKey, PacketBenchError> {
        let seen = packet::read(f).map_err(|e| PacketBenchError::Packet { reason: e.to_string() })?;
        Ok(rudder_abi::lb::FlowKey {
            saddr: u32::from(seen.src).to_be(),
            daddr: u32::from(seen.dst).to_be(),
            sport: seen.sport.to_be(),
            dport: seen.dport.to_be(),
            proto: seen.proto,
            pad: [0; 3],
        })
    };
    let (original, out) = (key(frame)?, key(&translated.packet)?);
    let first = lb.maps.conntrack.get(&original, 0).map_err(|source| EbpfError::Map {
        name: "conntrack",
        source,
    })?;
    let back = rudder_abi::lb::Conntrack {
        backend: rudder_abi::lb::Backend {
            addr: original.daddr,
            port: original.dport,
            pad: 0,
        },
        snat_addr: original.saddr,
        snat_port: original.sport,
        packets: 0,
        ..first
    };
    lb.maps
        .conntrack
        .insert(out, back, 0)
        .map_err(|source| EbpfError::Map {
            name: "conntrack",
            source,
        })?;
    Ok(())
}

/// One `repeat` of `runs` over a mirrored flow; checks the buffer came back to `frame`'s
/// 5-tuple (every repetition was an established hit).
fn mirrored(
    lb: &TestLb,
    program: &'static str,
    ifindex: u32,
    runs: u32,
    want: u32,
    frame: &[u8],
) -> Result<f64, PacketBenchError> {
    let runs = runs & !1;
    let out = lb.run_on(program, frame, runs, ifindex)?;
    check(program, out.verdict, want)?;
    let (a, b) = (packet::read(frame), packet::read(&out.packet));
    match (a, b) {
        (Ok(a), Ok(b)) if (a.src, a.sport, a.dst, a.dport) == (b.src, b.sport, b.dst, b.dport) => {
            Ok(out.ns_per_run as f64)
        }
        (a, b) => Err(PacketBenchError::NotMirrored {
            program,
            sent: format!("{a:?}"),
            got: format!("{b:?}"),
        }),
    }
}

fn ifindex(name: &str) -> Result<u32, PacketBenchError> {
    let none = || PacketBenchError::NoDevice { name: name.to_owned() };
    let c = std::ffi::CString::new(name).map_err(|_| none())?;
    // SAFETY: a valid C string.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(none()),
        i => Ok(i),
    }
}

pub fn run(n: usize, runs: u32) -> Result<PacketMeasurement, PacketBenchError> {
    use rudder_abi::names::{TC_INGRESS as TC, XDP_LB as XDP, XDP_PASS as PASS};
    let max = u32::try_from(n * 2 + n * ENDPOINTS + 4096).unwrap_or(u32::MAX);
    let mut lb = TestLb::load(
        "10.96.0.0/16".parse().expect("a CIDR"),
        "10.128.0.0/10".parse().expect("a CIDR"),
        max,
        None,
    )?;
    lb.sync(&state(n))?;
    let b0 = ifindex("b0")?;
    // The last Service, so nothing favours early keys.
    let vip = synthetic::cluster_ip(n - 1);
    let other = packet::frame(
        PROTO_TCP,
        (Ipv4Addr::new(10, 200, 0, 7), 40000),
        (Ipv4Addr::new(10, 250, 0, 99), 80),
        TCP_ACK,
        &[0; 16],
    );
    // tc: a pod on this node (no masquerade).
    let pod = Ipv4Addr::new(10, 200, 0, 7);
    let tc_est = packet::frame(PROTO_TCP, (pod, 999), (vip, 80), TCP_ACK, &[0; 16]);
    check("tc VIP SYN", lb.run(TC, &tc_est, 1)?.verdict, TC_ACT_REDIRECT)?;
    // The second packet caches the route; its output is what the mirror entry takes back.
    let second = lb.run(TC, &tc_est, 1)?;
    mirror(&mut lb, &tc_est, &second)?;
    // XDP: a client outside, on b0's network.
    let outside = Ipv4Addr::new(10, 250, 0, 50);
    let xdp_est = packet::frame(PROTO_TCP, (outside, 999), (vip, 80), TCP_ACK, &[0; 16]);
    let first = lb.run_on(XDP, &xdp_est, 1, b0)?;
    check("XDP frontend SYN", first.verdict, XDP_TX)?;
    mirror(&mut lb, &xdp_est, &first)?;

    let pass_rep = lb.run(PASS, &other, runs)?;
    check("xdp pass", pass_rep.verdict, XDP_PASS)?;
    let tc_other_rep = lb.run(TC, &other, runs)?;
    check("tc non-service", tc_other_rep.verdict, TC_ACT_OK)?;
    let xdp_other_rep = lb.run_on(XDP, &other, runs, b0)?;
    check("xdp non-service", xdp_other_rep.verdict, XDP_PASS)?;
    let xdp_pass_ns = single_runs(&lb, PASS, 0, runs, XDP_PASS, |_| other.clone())?;
    let tc_non_service_ns = single_runs(&lb, TC, 0, runs, TC_ACT_OK, |_| other.clone())?;
    // Established flows before any new ones: new flows fill the conntrack map, and an
    // evicted entry would turn an "established" run into a new flow.
    let tc_established_ns = single_runs(&lb, TC, 0, runs, TC_ACT_REDIRECT, |_| tc_est.clone())?;
    let tc_established_repeat_ns = mirrored(&lb, TC, 0, runs, TC_ACT_REDIRECT, &tc_est)?;
    let xdp_established_ns = single_runs(&lb, XDP, b0, runs, XDP_TX, |_| xdp_est.clone())?;
    let xdp_established_repeat_ns = mirrored(&lb, XDP, b0, runs, XDP_TX, &xdp_est)?;
    // Both programs' new flows together stay under the conntrack map's size, so no insert
    // pays for an eviction.
    let fresh = runs.min(NEW_FLOWS);
    let tc_new_flow_ns = new_flows(&lb, TC, 0, fresh, TC_ACT_REDIRECT, pod, n)?;
    let xdp_new_flow_ns = new_flows(&lb, XDP, b0, fresh, XDP_TX, outside, n)?;
    Ok(PacketMeasurement {
        services: n,
        runs,
        new_flow_runs: fresh,
        xdp_pass_repeat_ns: pass_rep.ns_per_run as f64,
        xdp_pass_ns,
        tc_non_service_repeat_ns: tc_other_rep.ns_per_run as f64,
        tc_non_service_ns,
        tc_new_flow_ns,
        tc_established_ns,
        tc_established_repeat_ns,
        xdp_non_service_repeat_ns: xdp_other_rep.ns_per_run as f64,
        xdp_new_flow_ns,
        xdp_established_ns,
        xdp_established_repeat_ns,
    })
}
