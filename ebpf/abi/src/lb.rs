//! The load balancer's maps: desired state written by user space (services, slots,
//! backends, source ranges, config) and flow state written by the programs (conntrack,
//! reverse NAT, affinity, socket reverse translation).
//!
//! A frontend's [`Service`] names endpoint *sets* by id; a set is `count` slots
//! (`SlotKey { set, slot }` → backend id). User space writes a changed set's slots first and
//! the services that use it last, so a packet never sees a count that points past the slots
//! written for it.

/// Map sizes. Desired-state maps are sized for 64k frontends; flow maps are LRU, so an
/// overflow evicts the oldest flow rather than refusing a new one.
pub const MAX_SERVICES: u32 = 262_144;
pub const MAX_SLOTS: u32 = 1_048_576;
pub const MAX_BACKENDS: u32 = 262_144;
pub const MAX_FLOWS: u32 = 262_144;
pub const MAX_AFFINITY: u32 = 65_536;
pub const MAX_SOURCE_RANGES: u32 = 16_384;
/// Service ids index the per-CPU stats array, so they stay below its size: this by
/// default, `--bpf-lb-map-max` when set.
pub const MAX_SERVICE_IDS: u32 = 65_536;

/// `RUDDER_XDP_STATS` slots: packets the XDP program translated and sent back out...
pub const XDP_SLOT_TX: u32 = 0;
/// ... and packets of known flows or frontends it left to tc (a local backend, a partial
/// checksum, an unresolved next hop, a rejection).
pub const XDP_SLOT_PASSED: u32 = 1;

/// IP protocol numbers as they appear in the IPv4 header.
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const PROTO_SCTP: u8 = 132;

/// What a frontend does with a new connection ([`Service::action`]).
pub const ACTION_FORWARD: u8 = 0;
/// No endpoint anywhere: TCP gets a reset, everything else ICMP port unreachable.
pub const ACTION_REJECT: u8 = 1;
/// A Local policy leaves no endpoint on this node: drop silently.
pub const ACTION_DROP: u8 = 2;

/// [`Service::flags`].
pub mod flags {
    /// Masquerade every connection.
    pub const MASQ_ALWAYS: u16 = 1 << 0;
    /// Masquerade unless the source is a pod ([`super::Config::pod_net`]).
    pub const MASQ_UNLESS_POD: u16 = 1 << 1;
    /// Pods and the node itself use `sc_set` (`externalTrafficPolicy: Local`'s short circuit).
    pub const SHORT_CIRCUIT: u16 = 1 << 2;
    /// Only sources in [`super::super::names::SOURCE_RANGES`] for this service id may connect.
    pub const SOURCE_RANGES: u16 = 1 << 3;
    /// ClientIP session affinity, for [`super::Service::affinity_timeout`] seconds.
    pub const AFFINITY: u16 = 1 << 4;
    /// A ClusterIP frontend (the others follow `externalTrafficPolicy`).
    pub const CLUSTER_IP: u16 = 1 << 5;
    /// Wildcard entry (port 0, protocol 0) for a ClusterIP: ports it does not define are
    /// rejected rather than dropped.
    pub const WILDCARD: u16 = 1 << 6;
}

/// A frontend: destination address, port and protocol of a new connection.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey {
    pub addr: u32,
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// How a frontend is served.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Service {
    /// Per service port; indexes stats and keys affinity and source ranges.
    pub id: u32,
    /// Endpoint set for this frontend's traffic, with `count` slots.
    pub set: u32,
    pub count: u32,
    /// Endpoint set for the short circuit (pods and the node itself under eTP=Local).
    pub sc_set: u32,
    pub sc_count: u32,
    pub affinity_timeout: u32,
    /// Bumped when a backend leaves either set, so affinity entries to it are not reused.
    pub generation: u32,
    pub flags: u16,
    pub action: u8,
    pub pad: u8,
    /// Maglev rows (1-based; 0: none, pick at random) of `set` and `sc_set`.
    pub row: u32,
    pub sc_row: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SlotKey {
    pub set: u32,
    pub slot: u32,
}

/// A backend (an endpoint's address and target port).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend {
    pub addr: u32,
    pub port: u16,
    pub pad: u16,
}

/// An IPv6 frontend (`RUDDER_SERVICES6`). IPv6 keys live in maps of their own, as
/// Cilium's lb6 maps do, so an IPv4 lookup hashes 8 bytes rather than 20. The address is
/// four words as they sit in the packet (each in network order).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ServiceKey6 {
    pub addr: [u32; 4],
    pub port: u16,
    pub proto: u8,
    pub pad: u8,
}

/// An IPv6 backend (`RUDDER_BACKENDS6`). Backend ids are one space across both families,
/// so slots, Maglev tables and affinity entries need no family of their own.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Backend6 {
    pub addr: [u32; 4],
    pub port: u16,
    pub pad: u16,
}

/// A flow's 5-tuple as seen in one direction.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey {
    pub saddr: u32,
    pub daddr: u32,
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// [`FlowKey`] for IPv6 (`RUDDER_CONNTRACK6`, `RUDDER_REVERSE6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct FlowKey6 {
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
    pub sport: u16,
    pub dport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// [`Conntrack`] for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conntrack6 {
    pub backend: Backend6,
    pub backend_id: u32,
    /// Source after masquerade (all zero when the source is kept).
    pub snat_addr: [u32; 4],
    pub snat_port: u16,
    pub pad: u16,
    pub service_id: u32,
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub packets: u32,
    /// [`clock`] time of the flow's last packet from the client.
    pub seen: u32,
}

/// [`Reverse`] for IPv6.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reverse6 {
    pub vip: [u32; 4],
    pub client: [u32; 4],
    pub vport: u16,
    pub client_port: u16,
    pub service_id: u32,
    /// As in [`Reverse`].
    pub seen: u32,
    pub tcp: u32,
}

/// [`AffinityKey`] for IPv6 clients (`RUDDER_AFFINITY6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey6 {
    pub service_id: u32,
    pub client: [u32; 4],
}

/// The IPv6 half of [`Config`] (`RUDDER_CONFIG6`, a map of its own so the IPv4 one keeps
/// its layout across upgrades): Service and pod ranges as address and mask words.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config6 {
    pub service_net: [u32; 4],
    pub service_mask: [u32; 4],
    pub pod_net: [u32; 4],
    pub pod_mask: [u32; 4],
}

/// A forward flow: where its packets are rewritten to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Conntrack {
    pub backend: Backend,
    pub backend_id: u32,
    /// Source after masquerade (0 when the source is kept).
    pub snat_addr: u32,
    pub snat_port: u16,
    pub pad: u16,
    pub service_id: u32,
    /// The route to the backend as last looked up (0: none yet), reused by the flow's
    /// packets and looked up again every [`ROUTE_REFRESH`] packets.
    pub ifindex: u32,
    pub dmac: [u8; 6],
    pub smac: [u8; 6],
    pub packets: u32,
    /// [`clock`] time of the flow's last packet from the client.
    pub seen: u32,
}

/// A flow's cached route is refreshed after this many packets (a power of two), so a
/// changed neighbour costs at most this many packets.
pub const ROUTE_REFRESH: u32 = 256;

/// A reply's way back: the frontend it must appear to come from and the client it goes to.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Reverse {
    pub vip: u32,
    pub vport: u16,
    pub client_port: u16,
    pub client: u32,
    pub service_id: u32,
    /// [`clock`] time of the last reply (or of the flow's opening, or its closing).
    pub seen: u32,
    /// [`tcp_state`] bits: how far a TCP flow has closed.
    pub tcp: u32,
}

/// How far a TCP flow has closed, as the per-packet path saw it (see [`port_free`]).
pub mod tcp_state {
    pub const FIN_CLIENT: u32 = 1 << 0;
    pub const FIN_BACKEND: u32 = 1 << 1;
    pub const RST: u32 = 1 << 2;
    pub const CLOSED: u32 = FIN_CLIENT | FIN_BACKEND;
    /// The backend's FIN came first: the backend holds the tuple in TIME_WAIT.
    pub const BACKEND_FIRST: u32 = 1 << 3;
}

/// Flow times are in units of 2^30 ns (about 1.07 s) of `bpf_ktime_get_coarse_ns`: coarse
/// enough to compare cheaply, fine enough for timeouts of seconds. Never 0 (0: unset).
#[inline(always)]
pub fn clock(ns: u64) -> u32 {
    ((ns >> 30) as u32).max(1)
}

/// A TCP flow the client closed first, or that was reset, frees its translated port after
/// this long (Cilium's CT close timeout).
pub const CLOSE_TIMEOUT: u32 = 10;
/// A TCP flow the backend closed first frees its port only after the backend's TIME_WAIT
/// (60 s in Linux) has passed: a new connection under the same tuple would otherwise meet
/// it, and since Linux draws TCP timestamp offsets per 4-tuple, the new SYN's timestamp is
/// as likely older as newer, and PAWS drops it (measured: a python HTTP/1.0 backend
/// counted 135 `PAWSTimewait` drops when ports were reused after 10 s).
pub const TIME_WAIT_TIMEOUT: u32 = 60;
/// A UDP flow's translated port is free again after this long without a packet either
/// way (nf_conntrack's `udp_timeout`).
pub const UDP_TIMEOUT: u32 = 30;

/// Whether a translated source port, held by a flow of `proto` in TCP state `tcp` whose
/// last packet was at `seen`, may go to another flow `now`. `owner_here`: the flow's
/// client tuple still points at this port (else the client has moved on to a new
/// connection, or the entry was evicted).
#[inline(always)]
pub fn port_free(proto: u8, tcp: u32, seen: u32, now: u32, owner_here: bool) -> bool {
    let idle = now.wrapping_sub(seen);
    if proto != PROTO_TCP {
        return idle >= UDP_TIMEOUT;
    }
    if tcp & tcp_state::RST != 0 {
        return idle >= CLOSE_TIMEOUT;
    }
    if tcp & tcp_state::CLOSED == tcp_state::CLOSED {
        let hold = if tcp & tcp_state::BACKEND_FIRST != 0 {
            TIME_WAIT_TIMEOUT
        } else {
            CLOSE_TIMEOUT
        };
        return idle >= hold;
    }
    // Never seen closing: still open while its client uses it; abandoned (the backend left
    // without a word) once the client has moved on and the backend could no longer hold it.
    !owner_here && idle >= TIME_WAIT_TIMEOUT
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct AffinityKey {
    pub service_id: u32,
    pub client: u32,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Affinity {
    pub last_used_ns: u64,
    pub backend_id: u32,
    pub generation: u32,
}

/// LPM trie key: `prefix_len` counts the bits of `service_id` (32) plus the source's.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeKey {
    pub service_id: u32,
    pub addr: u32,
}

/// [`SourceRangeKey`] for IPv6 (`RUDDER_SOURCE_RANGES6`; `prefix_len` is 32 plus the
/// source's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SourceRangeKey6 {
    pub service_id: u32,
    pub addr: [u32; 4],
}

/// A socket-LB'd socket's peer as the kernel sees it (the backend)...
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockReverseKey {
    pub cookie: u64,
    pub backend: Backend,
    /// Explicit, all of it: with a lone `u32` here the struct had four more bytes of
    /// implicit tail padding, which the programs left as stack garbage in the key, so
    /// user space (and at times the programs themselves) could not find the entry again.
    pub pad: [u32; 2],
}

/// ... and as the application asked for it (the frontend).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockReverse {
    pub vip: u32,
    pub vport: u16,
    pub pad: u16,
}

/// A socket-LB'd socket's choice for one frontend, so every datagram an unconnected UDP
/// socket sends to it reaches the same backend (one socket = one flow).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockForwardKey {
    pub cookie: u64,
    pub frontend: ServiceKey,
}

#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockForward {
    pub backend_id: u32,
    pub generation: u32,
}

/// [`SockReverseKey`] for IPv6 sockets (`RUDDER_SOCK_REVERSE6`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockReverseKey6 {
    pub cookie: u64,
    pub backend: Backend6,
    pub pad: u32,
}

/// [`SockReverse`] for IPv6 sockets.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SockReverse6 {
    pub vip: [u32; 4],
    pub vport: u16,
    pub pad: u16,
}

/// [`SockForwardKey`] for IPv6 sockets (`RUDDER_SOCK_FORWARD6`; the value is a
/// [`SockForward`]).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct SockForwardKey6 {
    pub cookie: u64,
    pub frontend: ServiceKey6,
    pub pad: u32,
}

/// One new flow and the backend it was sent to (`--flow-events`), as Hubble's
/// pre/post-translation pair would say it.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent {
    pub client: u32,
    pub vip: u32,
    pub backend: Backend,
    pub service_id: u32,
    pub client_port: u16,
    pub vport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// [`FlowEvent`] for an IPv6 flow, in the same ring buffer; the reader tells them apart
/// by size.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct FlowEvent6 {
    pub client: [u32; 4],
    pub vip: [u32; 4],
    pub backend: Backend6,
    pub service_id: u32,
    pub client_port: u16,
    pub vport: u16,
    pub proto: u8,
    pub pad: [u8; 3],
}

/// Node-wide settings, written once at start.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// The Service CIDR (address and mask, network order): addresses in it that are not a
    /// frontend are dropped, not routed.
    pub service_net: u32,
    pub service_mask: u32,
    /// `--cluster-cidr` (one IPv4 range): sources that count as pods.
    pub pod_net: u32,
    pub pod_mask: u32,
    /// Non-zero: emit a [`FlowEvent`] per new flow the per-packet path balances.
    pub flow_events: u32,
    /// Maglev table size M (0: random selection everywhere). Row r of an endpoint set is
    /// `RUDDER_MAGLEV[(r - 1) * M .. r * M]`.
    pub maglev_size: u32,
    /// Source ports a translated flow may be given (host order): two stretches
    /// `[snat_port_min[i], snat_port_min[i] + snat_port_count[i])`, the unprivileged ports
    /// above and below the kernel's ephemeral range, so that no socket of the node's own
    /// can ever hold one (see `flow::open`).
    pub snat_port_min: [u16; 2],
    pub snat_port_count: [u16; 2],
}

const _: () = {
    use core::mem::size_of;
    assert!(size_of::<ServiceKey>() == 8);
    assert!(size_of::<Service>() == 40);
    assert!(size_of::<SlotKey>() == 8);
    assert!(size_of::<Backend>() == 8);
    assert!(size_of::<FlowKey>() == 16);
    assert!(size_of::<Conntrack>() == 48);
    assert!(size_of::<Reverse>() == 24);
    assert!(size_of::<AffinityKey>() == 8);
    assert!(size_of::<Affinity>() == 16);
    assert!(size_of::<SourceRangeKey>() == 8);
    assert!(size_of::<SockReverseKey>() == 24);
    assert!(size_of::<SockReverse>() == 8);
    assert!(size_of::<Config>() == 32);
    assert!(size_of::<SockForwardKey>() == 16);
    assert!(size_of::<SockForward>() == 8);
    assert!(size_of::<FlowEvent>() == 28);
    assert!(size_of::<ServiceKey6>() == 20);
    assert!(size_of::<Backend6>() == 20);
    assert!(size_of::<SockReverseKey6>() == 32);
    assert!(size_of::<SockReverse6>() == 20);
    assert!(size_of::<SockForwardKey6>() == 32);
    assert!(size_of::<FlowKey6>() == 40);
    assert!(size_of::<Conntrack6>() == 72);
    assert!(size_of::<Reverse6>() == 48);
    assert!(size_of::<AffinityKey6>() == 20);
    assert!(size_of::<Config6>() == 64);
    assert!(size_of::<SourceRangeKey6>() == 20);
    assert!(size_of::<FlowEvent6>() == 64);
};

#[cfg(feature = "user")]
mod pod {
    use super::*;
    // SAFETY: all `repr(C)` with explicit padding fields and no invalid bit patterns.
    unsafe impl aya::Pod for ServiceKey {}
    unsafe impl aya::Pod for Service {}
    unsafe impl aya::Pod for SlotKey {}
    unsafe impl aya::Pod for Backend {}
    unsafe impl aya::Pod for FlowKey {}
    unsafe impl aya::Pod for Conntrack {}
    unsafe impl aya::Pod for Reverse {}
    unsafe impl aya::Pod for AffinityKey {}
    unsafe impl aya::Pod for Affinity {}
    unsafe impl aya::Pod for SourceRangeKey {}
    unsafe impl aya::Pod for SockReverseKey {}
    unsafe impl aya::Pod for SockReverse {}
    unsafe impl aya::Pod for Config {}
    unsafe impl aya::Pod for SockForwardKey {}
    unsafe impl aya::Pod for SockForward {}
    unsafe impl aya::Pod for FlowEvent {}
    unsafe impl aya::Pod for ServiceKey6 {}
    unsafe impl aya::Pod for Backend6 {}
    unsafe impl aya::Pod for SockReverseKey6 {}
    unsafe impl aya::Pod for SockReverse6 {}
    unsafe impl aya::Pod for SockForwardKey6 {}
    unsafe impl aya::Pod for FlowKey6 {}
    unsafe impl aya::Pod for Conntrack6 {}
    unsafe impl aya::Pod for Reverse6 {}
    unsafe impl aya::Pod for AffinityKey6 {}
    unsafe impl aya::Pod for Config6 {}
    unsafe impl aya::Pod for SourceRangeKey6 {}
    unsafe impl aya::Pod for FlowEvent6 {}
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_translated_port_is_held_as_long_as_its_backend_may_remember_the_tuple() {
        let (tcp, udp) = (PROTO_TCP, PROTO_UDP);
        use tcp_state::*;
        // Open and in use: never, however quiet.
        assert!(!port_free(tcp, 0, 100, 100_000, true));
        // The client closed first: the backend keeps no TIME_WAIT.
        assert!(!port_free(tcp, CLOSED, 100, 109, true));
        assert!(port_free(tcp, CLOSED, 100, 110, true));
        // The backend closed first: held through its TIME_WAIT.
        assert!(!port_free(tcp, CLOSED | BACKEND_FIRST, 100, 110, true));
        assert!(!port_free(tcp, CLOSED | BACKEND_FIRST, 100, 159, false));
        assert!(port_free(tcp, CLOSED | BACKEND_FIRST, 100, 160, true));
        // Reset: no TIME_WAIT anywhere.
        assert!(port_free(tcp, RST | FIN_BACKEND, 100, 110, true));
        // Half closed: still open.
        assert!(!port_free(tcp, FIN_CLIENT, 100, 1000, true));
        // Abandoned: the client moved on, and the backend's memory has run out.
        assert!(!port_free(tcp, 0, 100, 159, false));
        assert!(port_free(tcp, 0, 100, 160, false));
        // UDP: quiet for its timeout, whoever holds it.
        assert!(!port_free(udp, 0, 100, 129, true));
        assert!(port_free(udp, 0, 100, 130, true));
        // The clock wraps.
        assert!(port_free(udp, 0, u32::MAX - 5, 30, true));
    }
}
