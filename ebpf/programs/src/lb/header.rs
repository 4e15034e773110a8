//! What both per-packet programs (tc and XDP) read of a packet and how they rewrite it:
//! the parsed 5-tuple, Internet checksum arithmetic and the FIB lookup.

use aya_ebpf::bindings::{BPF_F_MARK_MANGLED_0, bpf_fib_lookup};
use rudder_abi::lb::{Conntrack, Conntrack6, FlowKey, FlowKey6, PROTO_TCP, PROTO_UDP};

pub const ETH_HLEN: usize = 14;
pub const ETH_P_IP: u16 = 0x0800;
pub const ETH_P_IPV6: u16 = 0x86dd;

/// The frame's ethertype (host order; 0 for a frame too short to have one).
#[inline(always)]
pub fn ethertype(data: usize, end: usize) -> u16 {
    if data + ETH_HLEN > end {
        return 0;
    }
    // SAFETY: bounds checked above.
    u16::from_be(unsafe { *((data + 12) as *const u16) })
}
const AF_INET: u8 = 2;
// bpf_fib_lookup flags and results (uapi/linux/bpf.h).
const FIB_LOOKUP_SRC: u32 = 1 << 4;
pub const FIB_SUCCESS: i64 = 0;
pub const FIB_NO_NEIGH: i64 = 7;

#[repr(C)]
pub struct Ipv4Hdr {
    pub vihl: u8,
    pub tos: u8,
    pub tot_len: u16,
    pub id: u16,
    pub frag: u16,
    pub ttl: u8,
    pub proto: u8,
    pub check: u16,
    pub saddr: u32,
    pub daddr: u32,
}

pub const IPV4_HLEN: usize = core::mem::size_of::<Ipv4Hdr>();

/// What the load balancer needs of a packet.
pub struct Parsed {
    pub key: FlowKey,
    /// Offset of the L4 header.
    pub l4: usize,
    /// Offset of the L4 checksum.
    pub csum: usize,
    /// `bpf_l4_csum_replace` flags for this protocol (UDP's zero means "no checksum").
    pub csum_flags: u64,
    /// TCP's flags byte ([`TCP_SYN`], ...); 0 for UDP.
    pub tcp_flags: u8,
}

pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_RST: u8 = 0x04;
pub const TCP_ACK: u8 = 0x10;

/// The TCP flags byte at `l4` (0 for UDP); `None` for a TCP header cut short.
#[inline(always)]
fn tcp_flags(data: usize, end: usize, l4: usize, proto: u8) -> Option<u8> {
    if proto != PROTO_TCP {
        return Some(0);
    }
    if data + l4 + 14 > end {
        return None;
    }
    // SAFETY: bounds checked above.
    Some(unsafe { *((data + l4 + 13) as *const u8) })
}

/// A connection's first packet: SYN without ACK.
#[inline(always)]
pub fn is_syn(tcp_flags: u8) -> bool {
    tcp_flags & (TCP_SYN | TCP_ACK) == TCP_SYN
}

/// Parses an Ethernet + IPv4 + TCP/UDP frame between `data` and `end`; `None` for
/// anything the load balancer leaves alone.
#[inline(always)]
pub fn parse(data: usize, end: usize) -> Option<Parsed> {
    if data + ETH_HLEN + IPV4_HLEN > end {
        return None;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { *((data + 12) as *const u16) };
    if ethertype != ETH_P_IP.to_be() {
        return None;
    }
    let ip = unsafe { &*((data + ETH_HLEN) as *const Ipv4Hdr) };
    let ihl = ((ip.vihl & 0x0f) as usize) * 4;
    // Later fragments carry no ports; they pass untouched (as the stack would reassemble).
    if ihl < 20 || u16::from_be(ip.frag) & 0x1fff != 0 {
        return None;
    }
    let (csum, csum_flags) = match ip.proto {
        PROTO_TCP => (16, 0),
        PROTO_UDP => (6, BPF_F_MARK_MANGLED_0 as u64),
        _ => return None,
    };
    let l4 = ETH_HLEN + ihl;
    if data + l4 + 4 > end {
        return None;
    }
    let (sport, dport) = unsafe { (*((data + l4) as *const u16), *((data + l4 + 2) as *const u16)) };
    let tcp_flags = tcp_flags(data, end, l4, ip.proto)?;
    Some(Parsed {
        key: FlowKey {
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport,
            dport,
            proto: ip.proto,
            pad: [0; 3],
        },
        l4,
        csum: l4 + csum,
        csum_flags,
        tcp_flags,
    })
}

/// Ones' complement addition, as the Internet checksum adds.
#[inline(always)]
pub fn csum_add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(carry as u32)
}

#[inline(always)]
pub fn csum_fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// The checksum differences of a rewrite to `saddr:sport -> daddr:dport` (network order):
/// (addresses, which are also the pseudo-header; ports).
#[inline(always)]
pub fn rewrite_diffs(k: &FlowKey, saddr: u32, sport: u16, daddr: u32, dport: u16) -> (u32, u32) {
    let addr_diff = csum_add(csum_add(!k.saddr, saddr), csum_add(!k.daddr, daddr));
    let port_diff = csum_add(
        csum_add(!(k.sport as u32) & 0xffff, sport as u32),
        csum_add(!(k.dport as u32) & 0xffff, dport as u32),
    );
    (addr_diff, port_diff)
}

/// Writes the new addresses into the IP header (fixing its checksum) and the new ports
/// into the L4 header; the L4 checksum is the caller's, since only tc can know whether
/// it is partial.
///
/// # Safety
/// `data + ETH_HLEN + IPV4_HLEN` and `data + p.l4 + 4` must be within the packet.
#[inline(always)]
pub unsafe fn write_tuple(data: usize, p: &Parsed, saddr: u32, sport: u16, daddr: u32, dport: u16, addr_diff: u32) {
    unsafe {
        let ip = &mut *((data + ETH_HLEN) as *mut Ipv4Hdr);
        let check = !(ip.check as u32) & 0xffff;
        ip.check = !csum_fold(csum_add(check, addr_diff));
        ip.saddr = saddr;
        ip.daddr = daddr;
        *((data + p.l4) as *mut u16) = sport;
        *((data + p.l4 + 2) as *mut u16) = dport;
    }
}

pub type Fib = (i64, bpf_fib_lookup);

/// `bpf_fib_lookup` from `src` to `dst` as if the packet arrived on `ifindex`. `ctx` is
/// the program's context (an skb or an xdp_md: the helper takes either).
#[inline(always)]
pub fn route(ctx: *mut core::ffi::c_void, ifindex: u32, src: u32, dst: u32, proto: u8, want_src: bool) -> Fib {
    // SAFETY: a plain C struct; zero is its "unset" value.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv4_src = src;
    fib.__bindgen_anon_4.ipv4_dst = dst;
    let flags = if want_src { FIB_LOOKUP_SRC } else { 0 };
    let rc = unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(ctx, &mut fib, core::mem::size_of::<bpf_fib_lookup>() as i32, flags)
    };
    (rc, fib)
}

/// A route lookup's result before the lookup (for [`route6`], which writes into one).
#[inline(always)]
pub fn empty_fib() -> Fib {
    // SAFETY: a plain C struct; zero is its "unset" value.
    (0, unsafe { core::mem::zeroed() })
}

/// An L4 checksum after a rewrite with these differences, computed by hand (XDP has no
/// helper for it). UDP's zero means "no checksum" and is never produced.
#[inline(always)]
pub fn updated_l4_check(check: u16, addr_diff: u32, port_diff: u32, proto: u8) -> u16 {
    let sum = !csum_fold(csum_add(csum_add(!(check as u32) & 0xffff, addr_diff), port_diff));
    if proto == PROTO_UDP && sum == 0 { 0xffff } else { sum }
}

/// The next hop's and our MAC, as a frame's first 12 bytes.
#[inline(always)]
pub fn macs(dmac: &[u8; 6], smac: &[u8; 6]) -> [u8; 12] {
    let mut m = [0u8; 12];
    m[..6].copy_from_slice(dmac);
    m[6..].copy_from_slice(smac);
    m
}

/// Keeps a route lookup's result in the flow's entry for its next packets (none on failure,
/// so the next packet looks again).
#[inline(always)]
pub fn cache_route(ct: &mut Conntrack, fib: &Fib) {
    if fib.0 == FIB_SUCCESS {
        ct.ifindex = fib.1.ifindex;
        ct.dmac = fib.1.dmac;
        ct.smac = fib.1.smac;
    } else {
        ct.ifindex = 0;
    }
}

// --- IPv6: the same jobs with 128-bit addresses and no IP header checksum. ---

const AF_INET6: u8 = 10;

#[repr(C)]
pub struct Ipv6Hdr {
    pub vtc_flow: u32,
    pub payload_len: u16,
    pub nexthdr: u8,
    pub hop_limit: u8,
    pub saddr: [u32; 4],
    pub daddr: [u32; 4],
}

pub const IPV6_HLEN: usize = core::mem::size_of::<Ipv6Hdr>();

/// [`Parsed`] for IPv6.
pub struct Parsed6 {
    pub key: FlowKey6,
    pub l4: usize,
    pub csum: usize,
    pub csum_flags: u64,
    pub tcp_flags: u8,
}

/// Parses an Ethernet + IPv6 + TCP/UDP frame. Extension headers (fragments among them)
/// are left alone, as the stack would handle them.
#[inline(always)]
pub fn parse6(data: usize, end: usize) -> Option<Parsed6> {
    let l4 = ETH_HLEN + IPV6_HLEN;
    if data + l4 + 4 > end {
        return None;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { *((data + 12) as *const u16) };
    if ethertype != ETH_P_IPV6.to_be() {
        return None;
    }
    let ip = unsafe { &*((data + ETH_HLEN) as *const Ipv6Hdr) };
    let (csum, csum_flags) = match ip.nexthdr {
        PROTO_TCP => (16, 0),
        PROTO_UDP => (6, BPF_F_MARK_MANGLED_0 as u64),
        _ => return None,
    };
    let (sport, dport) = unsafe { (*((data + l4) as *const u16), *((data + l4 + 2) as *const u16)) };
    let tcp_flags = tcp_flags(data, end, l4, ip.nexthdr)?;
    Some(Parsed6 {
        key: FlowKey6 {
            saddr: ip.saddr,
            daddr: ip.daddr,
            sport,
            dport,
            proto: ip.nexthdr,
            pad: [0; 3],
        },
        l4,
        csum: l4 + csum,
        csum_flags,
        tcp_flags,
    })
}

#[inline(always)]
fn addr_diff6(old: &[u32; 4], new: &[u32; 4]) -> u32 {
    let mut d = 0;
    for i in 0..4 {
        d = csum_add(d, csum_add(!old[i], new[i]));
    }
    d
}

/// [`rewrite_diffs`] for IPv6.
#[inline(always)]
pub fn rewrite_diffs6(k: &FlowKey6, saddr: &[u32; 4], sport: u16, daddr: &[u32; 4], dport: u16) -> (u32, u32) {
    let addr_diff = csum_add(addr_diff6(&k.saddr, saddr), addr_diff6(&k.daddr, daddr));
    let port_diff = csum_add(
        csum_add(!(k.sport as u32) & 0xffff, sport as u32),
        csum_add(!(k.dport as u32) & 0xffff, dport as u32),
    );
    (addr_diff, port_diff)
}

/// [`write_tuple`] for IPv6 (no IP header checksum to fix).
///
/// # Safety
/// `data + p.l4 + 4` must be within the packet.
#[inline(always)]
pub unsafe fn write_tuple6(data: usize, p: &Parsed6, saddr: &[u32; 4], sport: u16, daddr: &[u32; 4], dport: u16) {
    unsafe {
        let ip = &mut *((data + ETH_HLEN) as *mut Ipv6Hdr);
        ip.saddr = *saddr;
        ip.daddr = *daddr;
        *((data + p.l4) as *mut u16) = sport;
        *((data + p.l4 + 2) as *mut u16) = dport;
    }
}

/// [`route`] for IPv6, written into `out` (which may be outside the stack).
#[inline(always)]
pub fn route6(
    ctx: *mut core::ffi::c_void,
    ifindex: u32,
    src: &[u32; 4],
    dst: &[u32; 4],
    proto: u8,
    want_src: bool,
    out: &mut Fib,
) {
    // SAFETY: a plain C struct; zero is its "unset" value.
    out.1 = unsafe { core::mem::zeroed() };
    let fib = &mut out.1;
    fib.family = AF_INET6;
    fib.l4_protocol = proto;
    fib.ifindex = ifindex;
    fib.__bindgen_anon_3.ipv6_src = *src;
    fib.__bindgen_anon_4.ipv6_dst = *dst;
    let flags = if want_src { FIB_LOOKUP_SRC } else { 0 };
    out.0 =
        unsafe { aya_ebpf::helpers::bpf_fib_lookup(ctx, fib, core::mem::size_of::<bpf_fib_lookup>() as i32, flags) };
}

/// [`cache_route`] for IPv6 flows.
#[inline(always)]
pub fn cache_route6(ct: &mut Conntrack6, fib: &Fib) {
    if fib.0 == FIB_SUCCESS {
        ct.ifindex = fib.1.ifindex;
        ct.dmac = fib.1.dmac;
        ct.smac = fib.1.smac;
    } else {
        ct.ifindex = 0;
    }
}
