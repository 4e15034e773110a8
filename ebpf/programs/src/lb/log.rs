//! Log records of the rare paths, through aya-log: a new flow dropped for want of a route
//! or of room in the flow maps, and connections refused by policy. Nothing on the paths
//! every packet takes (known flows, replies, packets for no Service) logs.
//!
//! Off unless user space asks: it sets `AYA_LOG_LEVEL` (a read-only global) at load,
//! `rudder-proxy run --bpf-log-level`, default off. The verifier knows a frozen global's
//! value, so with logging off every record below is dead code it removes before the
//! program first runs: the check costs two instructions on a rare path, and nothing
//! anywhere else. Each record is written by a BPF function of its own, entered only when
//! its level is on, so the per-packet functions' code and stack stay as they were.

use aya_log_ebpf::{
    info,
    macro_support::{Level, level_enabled},
    warn,
};
use rudder_abi::lb::{Backend, Backend6, FlowKey, FlowKey6};

use super::maps::SCRATCH6;

/// Why a new connection was refused.
#[derive(Clone, Copy)]
pub enum Refusal {
    /// The Service has no endpoints (answered with ICMP port unreachable).
    NoEndpoints,
    /// The client is outside the frontend's `loadBalancerSourceRanges` (dropped).
    SourceRange,
    /// `externalTrafficPolicy: Local` and no endpoint on this node (dropped).
    NoLocalEndpoint,
    /// A ClusterIP's port no Service defines (answered with ICMP port unreachable).
    UnknownPort,
    /// An address in the Service range that no Service holds (dropped).
    Unallocated,
}

/// A flow map whose insert failed.
#[derive(Clone, Copy)]
pub enum FlowMap {
    Conntrack,
    Reverse,
}

/// An IPv4 address as the programs hold it (network order) in the bytes aya-log prints.
#[inline(always)]
fn v4(addr: u32) -> [u8; 4] {
    addr.to_ne_bytes()
}

/// An IPv6 address as the programs hold it (four network-order words).
#[inline(always)]
fn v6(addr: &[u32; 4]) -> [u8; 16] {
    let mut out = [0u8; 16];
    for (i, w) in addr.iter().enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&w.to_ne_bytes());
    }
    out
}

/// Whether refusals are logged (for a caller that must do work to log one).
#[inline(always)]
pub fn refusals_on() -> bool {
    level_enabled(Level::Info)
}

/// The refusal of the IPv4 connection `key`.
#[inline(always)]
pub fn refused(why: Refusal, key: &FlowKey) {
    if level_enabled(Level::Info) {
        refused4_record(why, key);
    }
}

#[inline(never)]
fn refused4_record(why: Refusal, key: &FlowKey) {
    let (c, cp, v, vp, proto) = (
        v4(key.saddr),
        u16::from_be(key.sport),
        v4(key.daddr),
        u16::from_be(key.dport),
        key.proto,
    );
    match why {
        Refusal::NoEndpoints => {
            info!(
                &(),
                "refused {:i}:{} -> {:i}:{} proto {}: the Service has no endpoints", c, cp, v, vp, proto
            )
        }
        Refusal::SourceRange => info!(
            &(),
            "dropped {:i}:{} -> {:i}:{} proto {}: source not in loadBalancerSourceRanges", c, cp, v, vp, proto
        ),
        Refusal::NoLocalEndpoint => info!(
            &(),
            "dropped {:i}:{} -> {:i}:{} proto {}: externalTrafficPolicy Local and no endpoint on this node",
            c,
            cp,
            v,
            vp,
            proto
        ),
        Refusal::UnknownPort => {
            info!(
                &(),
                "refused {:i}:{} -> {:i}:{} proto {}: no such port on the ClusterIP", c, cp, v, vp, proto
            )
        }
        Refusal::Unallocated => info!(
            &(),
            "dropped {:i}:{} -> {:i}:{} proto {}: no Service holds this address of the Service range",
            c,
            cp,
            v,
            vp,
            proto
        ),
    }
}

/// The refusal of the IPv6 connection `key`. The key is handed over in the per-CPU
/// scratch slot (free at this point: no flow is being opened), not as a pointer to the
/// caller's copy, which would keep that copy on a stack the IPv6 path has little of.
#[inline(always)]
pub fn refused6(why: Refusal, key: &FlowKey6) {
    if level_enabled(Level::Info)
        && let Some(s) = SCRATCH6.get_ptr_mut(0)
    {
        // SAFETY: this CPU's slot; nothing else runs here until the program returns.
        let owner = unsafe { &mut (*s).owner };
        *owner = *key;
        refused6_record(why, owner);
    }
}

#[inline(never)]
fn refused6_record(why: Refusal, key: &FlowKey6) {
    let (c, cp, v, vp, proto) = (
        v6(&key.saddr),
        u16::from_be(key.sport),
        v6(&key.daddr),
        u16::from_be(key.dport),
        key.proto,
    );
    match why {
        Refusal::NoEndpoints => {
            info!(
                &(),
                "refused [{:i}]:{} -> [{:i}]:{} proto {}: the Service has no endpoints", c, cp, v, vp, proto
            )
        }
        Refusal::SourceRange => info!(
            &(),
            "dropped [{:i}]:{} -> [{:i}]:{} proto {}: source not in loadBalancerSourceRanges", c, cp, v, vp, proto
        ),
        Refusal::NoLocalEndpoint => info!(
            &(),
            "dropped [{:i}]:{} -> [{:i}]:{} proto {}: externalTrafficPolicy Local and no endpoint on this node",
            c,
            cp,
            v,
            vp,
            proto
        ),
        Refusal::UnknownPort => {
            info!(
                &(),
                "refused [{:i}]:{} -> [{:i}]:{} proto {}: no such port on the ClusterIP", c, cp, v, vp, proto
            )
        }
        Refusal::Unallocated => info!(
            &(),
            "dropped [{:i}]:{} -> [{:i}]:{} proto {}: no Service holds this address of the Service range",
            c,
            cp,
            v,
            vp,
            proto
        ),
    }
}

/// A connection a node process opened to a frontend, refused by socket LB (`connect`, or
/// a datagram sent): the Service has no endpoints.
#[inline(always)]
pub fn sock_refused(proto: u8, vip: u32, vport: u16) {
    if level_enabled(Level::Info) {
        sock_refused4_record(proto, vip, vport);
    }
}

#[inline(never)]
fn sock_refused4_record(proto: u8, vip: u32, vport: u16) {
    info!(
        &(),
        "socket LB refused a connection to {:i}:{} proto {}: the Service has no endpoints",
        v4(vip),
        u16::from_be(vport),
        proto
    );
}

/// [`sock_refused`] for IPv6.
#[inline(always)]
pub fn sock_refused6(proto: u8, vip: &[u32; 4], vport: u16) {
    if level_enabled(Level::Info) {
        sock_refused6_record(proto, vip, vport);
    }
}

#[inline(never)]
fn sock_refused6_record(proto: u8, vip: &[u32; 4], vport: u16) {
    info!(
        &(),
        "socket LB refused a connection to [{:i}]:{} proto {}: the Service has no endpoints",
        v6(vip),
        u16::from_be(vport),
        proto
    );
}

/// A masqueraded new flow dropped: the FIB lookup towards its backend gave `rc` (uapi's
/// `BPF_FIB_LKUP_RET_*`), so there is no source address to give it.
#[inline(always)]
pub fn no_route(rc: i64, backend: u32, port: u16) {
    if level_enabled(Level::Warn) {
        no_route4_record(rc, backend, port);
    }
}

#[inline(never)]
fn no_route4_record(rc: i64, backend: u32, port: u16) {
    warn!(
        &(),
        "new flow dropped: FIB lookup towards backend {:i}:{} failed (BPF_FIB_LKUP_RET {})",
        v4(backend),
        u16::from_be(port),
        rc
    );
}

/// [`no_route`] for IPv6.
#[inline(always)]
pub fn no_route6(rc: i64, backend: &[u32; 4], port: u16) {
    if level_enabled(Level::Warn) {
        no_route6_record(rc, backend, port);
    }
}

#[inline(never)]
fn no_route6_record(rc: i64, backend: &[u32; 4], port: u16) {
    warn!(
        &(),
        "new flow dropped: FIB lookup towards backend [{:i}]:{} failed (BPF_FIB_LKUP_RET {})",
        v6(backend),
        u16::from_be(port),
        rc
    );
}

/// Why a new flow's state could not be written (`flow::open`).
#[derive(Clone, Copy)]
pub enum Unrecorded {
    /// Every source port it tried was held by another translated flow to its backend.
    NoPort,
    /// The insert into this map failed with this error (an LRU map evicts rather than
    /// fills, so this is the kernel out of memory for it).
    Insert(FlowMap, i32),
}

/// A new IPv4 flow to `backend` dropped because its state could not be written.
#[inline(always)]
pub fn unrecorded(why: Unrecorded, backend: &Backend) {
    if level_enabled(Level::Warn) {
        match why {
            Unrecorded::NoPort => no_port4_record(backend.addr, backend.port),
            Unrecorded::Insert(map, error) => not_recorded_record(map, false, error),
        }
    }
}

/// [`unrecorded`] for IPv6.
#[inline(always)]
pub fn unrecorded6(why: Unrecorded, backend: &Backend6) {
    if level_enabled(Level::Warn) {
        match why {
            Unrecorded::NoPort => no_port6_record(&backend.addr, backend.port),
            Unrecorded::Insert(map, error) => not_recorded_record(map, true, error),
        }
    }
}

#[inline(never)]
fn no_port4_record(backend: u32, port: u16) {
    warn!(
        &(),
        "new flow dropped: no free source port to translate it to backend {:i}:{}",
        v4(backend),
        u16::from_be(port)
    );
}

#[inline(never)]
fn no_port6_record(backend: &[u32; 4], port: u16) {
    warn!(
        &(),
        "new flow dropped: no free source port to translate it to backend [{:i}]:{}",
        v6(backend),
        u16::from_be(port)
    );
}

#[inline(never)]
fn not_recorded_record(map: FlowMap, ipv6: bool, error: i32) {
    match (map, ipv6) {
        (FlowMap::Conntrack, false) => warn!(&(), "new flow dropped: insert into RUDDER_CONNTRACK failed ({})", error),
        (FlowMap::Reverse, false) => warn!(&(), "new flow dropped: insert into RUDDER_REVERSE failed ({})", error),
        (FlowMap::Conntrack, true) => warn!(
            &(),
            "new flow dropped: insert into RUDDER_CONNTRACK6 failed ({})", error
        ),
        (FlowMap::Reverse, true) => warn!(&(), "new flow dropped: insert into RUDDER_REVERSE6 failed ({})", error),
    }
}
