//! The ABI between Rudder's eBPF programs and user space.
//!
//! Every type that crosses a BPF map lives here, once, so both sides agree on layout by
//! construction. Rules (from aya's own shared crates): `#[repr(C)]`, explicit padding, no
//! `bool` (its size is not guaranteed across the boundary), sizes asserted at compile time.
//!
//! Addresses and ports are kept in network byte order (as they sit in the packet), so the
//! hot path compares and copies them without swapping; user space converts.
#![no_std]

pub mod lb;

/// Program and map names, as the loader looks them up in the object file.
pub mod names {
    /// XDP program that counts every packet and byte it sees, then passes it on.
    pub const XDP_COUNTER: &str = "rudder_xdp_count";
    /// XDP program that only returns `XDP_PASS`: the floor that benchmarks divide by.
    pub const XDP_PASS: &str = "rudder_xdp_pass";
    /// Per-CPU array of [`super::PacketCounters`] written by [`XDP_COUNTER`].
    pub const COUNTERS_MAP: &str = "RUDDER_COUNTERS";

    /// Per-packet load balancer on tc (tcx) ingress: traffic arriving at the node.
    pub const TC_INGRESS: &str = "rudder_tc_ingress";
    /// Per-packet load balancer on tc (tcx) egress: the node's own traffic from outside
    /// the socket-LB cgroup.
    pub const TC_EGRESS: &str = "rudder_tc_egress";
    /// XDP acceleration on external interfaces (`--bpf-lb-acceleration`).
    pub const XDP_LB: &str = "rudder_xdp_lb";
    /// Socket-level load balancing (cgroup sock_addr hooks).
    pub const CONNECT4: &str = "rudder_connect4";
    pub const SENDMSG4: &str = "rudder_sendmsg4";
    pub const RECVMSG4: &str = "rudder_recvmsg4";
    pub const GETPEERNAME4: &str = "rudder_getpeername4";
    pub const CONNECT6: &str = "rudder_connect6";
    pub const SENDMSG6: &str = "rudder_sendmsg6";
    pub const RECVMSG6: &str = "rudder_recvmsg6";
    pub const GETPEERNAME6: &str = "rudder_getpeername6";
    /// Every socket hook, attached to the socket-LB cgroup together.
    pub const SOCK_PROGRAMS: [&str; 8] = [
        CONNECT4,
        SENDMSG4,
        RECVMSG4,
        GETPEERNAME4,
        CONNECT6,
        SENDMSG6,
        RECVMSG6,
        GETPEERNAME6,
    ];

    /// Every load-balancer map, in the order `rudder-proxy inspect` shows them.
    pub const LB_MAPS: [&str; 23] = [
        SERVICES,
        SERVICES6,
        SLOTS,
        BACKENDS,
        BACKENDS6,
        MAGLEV,
        CONNTRACK,
        CONNTRACK6,
        REVERSE,
        REVERSE6,
        AFFINITY,
        AFFINITY6,
        SOURCE_RANGES,
        SOURCE_RANGES6,
        SOCK_REVERSE,
        SOCK_REVERSE6,
        SOCK_FORWARD,
        SOCK_FORWARD6,
        SERVICE_STATS,
        CONFIG,
        CONFIG6,
        FLOW_EVENTS,
        XDP_STATS,
    ];
    /// Per-CPU array of two [`super::PacketCounters`]: [`super::lb::XDP_SLOT_TX`] and
    /// [`super::lb::XDP_SLOT_PASSED`].
    pub const XDP_STATS: &str = "RUDDER_XDP_STATS";
    /// Ring buffer of [`super::lb::FlowEvent`]s.
    pub const FLOW_EVENTS: &str = "RUDDER_FLOW_EVENTS";
    /// Array of backend ids: the Maglev tables, one row of M per endpoint set.
    pub const MAGLEV: &str = "RUDDER_MAGLEV";
    /// [`super::lb::ServiceKey`] → [`super::lb::Service`].
    pub const SERVICES: &str = "RUDDER_SERVICES";
    /// [`super::lb::ServiceKey6`] → [`super::lb::Service`]: IPv6 frontends.
    pub const SERVICES6: &str = "RUDDER_SERVICES6";
    /// [`super::lb::SlotKey`] → backend id (`u32`).
    pub const SLOTS: &str = "RUDDER_SLOTS";
    /// backend id (`u32`) → [`super::lb::Backend`].
    pub const BACKENDS: &str = "RUDDER_BACKENDS";
    /// backend id (`u32`) → [`super::lb::Backend6`]: IPv6 backends (ids shared with
    /// [`BACKENDS`]).
    pub const BACKENDS6: &str = "RUDDER_BACKENDS6";
    /// [`super::lb::FlowKey`] (as the client sent it) → [`super::lb::Conntrack`].
    pub const CONNTRACK: &str = "RUDDER_CONNTRACK";
    /// [`super::lb::FlowKey`] (a reply as the backend sent it) → [`super::lb::Reverse`].
    pub const REVERSE: &str = "RUDDER_REVERSE";
    /// [`super::lb::FlowKey6`] → [`super::lb::Conntrack6`].
    pub const CONNTRACK6: &str = "RUDDER_CONNTRACK6";
    /// [`super::lb::FlowKey6`] → [`super::lb::Reverse6`].
    pub const REVERSE6: &str = "RUDDER_REVERSE6";
    /// [`super::lb::AffinityKey6`] → [`super::lb::Affinity`].
    pub const AFFINITY6: &str = "RUDDER_AFFINITY6";
    /// Array with one [`super::lb::Config6`].
    pub const CONFIG6: &str = "RUDDER_CONFIG6";
    /// [`super::lb::AffinityKey`] → [`super::lb::Affinity`].
    pub const AFFINITY: &str = "RUDDER_AFFINITY";
    /// LPM trie [`super::lb::SourceRangeKey`] → `u8`: `loadBalancerSourceRanges`.
    pub const SOURCE_RANGES: &str = "RUDDER_SOURCE_RANGES";
    /// LPM trie [`super::lb::SourceRangeKey6`] → `u8`: IPv6 `loadBalancerSourceRanges`.
    pub const SOURCE_RANGES6: &str = "RUDDER_SOURCE_RANGES6";
    /// [`super::lb::SockReverseKey`] → [`super::lb::SockReverse`]: what a socket-LB'd
    /// socket believes it is talking to.
    pub const SOCK_REVERSE: &str = "RUDDER_SOCK_REVERSE";
    /// [`super::lb::SockForwardKey`] → [`super::lb::SockForward`].
    pub const SOCK_FORWARD: &str = "RUDDER_SOCK_FORWARD";
    /// [`super::lb::SockReverseKey6`] → [`super::lb::SockReverse6`].
    pub const SOCK_REVERSE6: &str = "RUDDER_SOCK_REVERSE6";
    /// [`super::lb::SockForwardKey6`] → [`super::lb::SockForward`].
    pub const SOCK_FORWARD6: &str = "RUDDER_SOCK_FORWARD6";
    /// Per-CPU array indexed by service id → [`super::PacketCounters`].
    pub const SERVICE_STATS: &str = "RUDDER_SERVICE_STATS";
    /// Array with one [`super::lb::Config`].
    pub const CONFIG: &str = "RUDDER_CONFIG";
}

/// Index of the one slot in the counters map.
pub const COUNTERS_SLOT: u32 = 0;

/// Packets and bytes seen by a program. Kept per CPU so the hot path takes no lock; user
/// space sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCounters>() == 16);

#[cfg(feature = "user")]
// SAFETY: `PacketCounters` is `repr(C)`, has no padding and every bit pattern is valid.
unsafe impl aya::Pod for PacketCounters {}
