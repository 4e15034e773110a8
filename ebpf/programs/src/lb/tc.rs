//! The per-packet load balancer on tc (tcx): ingress for traffic arriving at the node,
//! egress for the node's own traffic that socket LB did not see.
//!
//! One pass per packet: a known flow (`CONNTRACK`), a reply to one (`REVERSE`), or a new
//! connection to a frontend (`SERVICES`). Translated packets are routed here with
//! `bpf_fib_lookup` and redirected, so they bypass the stack (and netfilter) on this node;
//! that is also what lets a masqueraded packet leave with one of the node's own addresses
//! as its source, which the stack would drop as a martian.

use aya_ebpf::{
    bindings::{
        BPF_F_INGRESS, BPF_F_MARK_MANGLED_0, BPF_F_PSEUDO_HDR, BPF_NOEXIST, TC_ACT_OK,
        TC_ACT_SHOT, bpf_fib_lookup,
    },
    helpers::{bpf_get_prandom_u32, bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use rudder_abi::lb::{
    ACTION_DROP, ACTION_REJECT, Conntrack, FlowEvent, FlowKey, PROTO_TCP, PROTO_UDP, ROUTE_REFRESH, Reverse,
    ServiceKey, SourceRangeKey, flags,
};

use super::{
    maps::{CONNTRACK, FLOW_EVENTS, REVERSE, SERVICES, SOURCE_RANGES, config, count},
    reject,
    select::{Origin, flow_hash, pick},
};

pub const ETH_HLEN: usize = 14;
const AF_INET: u8 = 2;
const LOOPBACK_IFINDEX: u32 = 1;
// bpf_fib_lookup flags and results (uapi/linux/bpf.h).
const FIB_LOOKUP_SRC: u32 = 1 << 4;
const FIB_SUCCESS: i64 = 0;
const FIB_NO_NEIGH: i64 = 7;

#[derive(Clone, Copy, PartialEq, Eq)]
pub enum Hook {
    Ingress,
    Egress,
}

#[classifier]
pub fn rudder_tc_ingress(ctx: TcContext) -> i32 {
    process(&ctx, Hook::Ingress)
}

#[classifier]
pub fn rudder_tc_egress(ctx: TcContext) -> i32 {
    process(&ctx, Hook::Egress)
}

/// What the load balancer needs of a packet.
pub struct Parsed {
    pub key: FlowKey,
    l4: usize,
    csum: usize,
    csum_flags: u64,
}

#[repr(C)]
struct Ipv4Hdr {
    vihl: u8,
    tos: u8,
    tot_len: u16,
    id: u16,
    frag: u16,
    ttl: u8,
    proto: u8,
    check: u16,
    saddr: u32,
    daddr: u32,
}

#[inline(always)]
fn parse(ctx: &TcContext) -> Option<Parsed> {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + core::mem::size_of::<Ipv4Hdr>() > end {
        return None;
    }
    // SAFETY: bounds checked above.
    let ethertype = unsafe { *((data + 12) as *const u16) };
    if ethertype != 0x0800u16.to_be() {
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
    Some(Parsed {
        key: FlowKey { saddr: ip.saddr, daddr: ip.daddr, sport, dport, proto: ip.proto, pad: [0; 3] },
        l4,
        csum: l4 + csum,
        csum_flags,
    })
}

#[inline(always)]
pub fn process(ctx: &TcContext, hook: Hook) -> i32 {
    let Some(p) = parse(ctx) else { return TC_ACT_OK };
    if let Some(ct) = CONNTRACK.get_ptr_mut(&p.key) {
        // SAFETY: a live map value; a racing writer can at worst tear the route cache,
        // which the next refresh repairs.
        let ct = unsafe { &mut *ct };
        count(ct.service_id, ctx.len());
        return established(ctx, &p, ct, hook);
    }
    if let Some(rev) = unsafe { REVERSE.get(&p.key) } {
        let rev = *rev;
        return reply(ctx, &p, &rev);
    }
    let key = ServiceKey { addr: p.key.daddr, port: p.key.dport, proto: p.key.proto, pad: 0 };
    if let Some(svc) = unsafe { SERVICES.get(&key) } {
        return new_flow(ctx, &p, svc, hook);
    }
    unknown(ctx, &p, hook)
}

/// Not a frontend. A ClusterIP's undefined port is rejected; an unallocated address in the
/// Service CIDR is dropped (it must never be routed out of the node).
#[inline(always)]
fn unknown(ctx: &TcContext, p: &Parsed, hook: Hook) -> i32 {
    let Some(cfg) = config() else { return TC_ACT_OK };
    if cfg.service_mask == 0 || p.key.daddr & cfg.service_mask != cfg.service_net {
        return TC_ACT_OK;
    }
    let wildcard = ServiceKey { addr: p.key.daddr, port: 0, proto: 0, pad: 0 };
    if unsafe { SERVICES.get(&wildcard) }.is_some() {
        return reject::unreachable(ctx, hook);
    }
    TC_ACT_SHOT
}

#[inline(always)]
fn new_flow(ctx: &TcContext, p: &Parsed, svc: &rudder_abi::lb::Service, hook: Hook) -> i32 {
    let svc = *svc;
    // Read once: the pod range, Maglev and flow events all come from it.
    let cfg = config();
    let is_pod = cfg.is_some_and(|c| c.pod_mask != 0 && p.key.saddr & c.pod_mask == c.pod_net);
    let origin = if hook == Hook::Egress || is_pod { Origin::Inside } else { Origin::Outside };
    if svc.flags & flags::SOURCE_RANGES != 0 {
        let key = aya_ebpf::maps::lpm_trie::Key::new(
            64,
            SourceRangeKey { service_id: svc.id, addr: p.key.saddr },
        );
        if SOURCE_RANGES.get(&key).is_none() {
            return TC_ACT_SHOT;
        }
    }
    let short_circuit = svc.flags & flags::SHORT_CIRCUIT != 0 && matches!(origin, Origin::Inside);
    if svc.action == ACTION_DROP && !short_circuit {
        count(svc.id, ctx.len());
        return TC_ACT_SHOT;
    }
    if svc.action == ACTION_REJECT {
        count(svc.id, ctx.len());
        return reject::unreachable(ctx, hook);
    }
    let hash = flow_hash(p.key.saddr, p.key.daddr, p.key.sport, p.key.dport, p.key.proto);
    let Some((backend_id, backend)) = pick(&svc, p.key.saddr, origin, Some(hash), cfg.map_or(0, |c| c.maglev_size)) else {
        return reject::unreachable(ctx, hook);
    };
    // The node's own packets already carry a node address, so replies come back here.
    let masquerade = hook == Hook::Ingress
        && (svc.flags & flags::MASQ_ALWAYS != 0
            || (svc.flags & flags::MASQ_UNLESS_POD != 0 && !is_pod)
            || backend.addr == p.key.saddr);
    let mut ct = Conntrack { backend, backend_id, service_id: svc.id, ..Default::default() };
    let mut fib = route(ctx, p.key.saddr, backend.addr, p.key.proto, masquerade);
    if masquerade {
        let rc = fib.0;
        if rc != FIB_SUCCESS && rc != FIB_NO_NEIGH {
            return TC_ACT_SHOT;
        }
        let snat = unsafe { fib.1.__bindgen_anon_3.ipv4_src };
        let Some(port) = claim_port(p, &backend, snat, svc.id) else { return TC_ACT_SHOT };
        ct.snat_addr = snat;
        ct.snat_port = port;
    } else {
        let rev = Reverse {
            vip: p.key.daddr,
            vport: p.key.dport,
            client: p.key.saddr,
            client_port: p.key.sport,
            service_id: svc.id,
        };
        let reply = FlowKey {
            saddr: backend.addr,
            daddr: p.key.saddr,
            sport: backend.port,
            dport: p.key.sport,
            proto: p.key.proto,
            pad: [0; 3],
        };
        if REVERSE.insert(&reply, &rev, 0).is_err() {
            return TC_ACT_SHOT;
        }
    }
    if CONNTRACK.insert(&p.key, &ct, 0).is_err() {
        return TC_ACT_SHOT;
    }
    count(svc.id, ctx.len());
    if cfg.is_some_and(|c| c.flow_events != 0) {
        let event = FlowEvent {
            client: p.key.saddr,
            vip: p.key.daddr,
            backend,
            service_id: svc.id,
            client_port: p.key.sport,
            vport: p.key.dport,
            proto: p.key.proto,
            pad: [0; 3],
        };
        let _ = FLOW_EVENTS.output::<FlowEvent>(&event, 0);
    }
    if rewrite_forward(ctx, p, &ct).is_err() {
        return TC_ACT_SHOT;
    }
    // The lookup left the next hop in `ipv4_dst`; `send` needs exactly that.
    send(ctx, &fib, hook)
}

/// Picks the source port for a masqueraded flow: the client's own if free, else a random
/// one, and records the reverse entry for it (so two flows never share one).
#[inline(always)]
fn claim_port(p: &Parsed, backend: &rudder_abi::lb::Backend, snat: u32, service_id: u32) -> Option<u16> {
    let rev = Reverse {
        vip: p.key.daddr,
        vport: p.key.dport,
        client: p.key.saddr,
        client_port: p.key.sport,
        service_id,
    };
    let mut port = p.key.sport;
    for _ in 0..4 {
        let reply = FlowKey {
            saddr: backend.addr,
            daddr: snat,
            sport: backend.port,
            dport: port,
            proto: p.key.proto,
            pad: [0; 3],
        };
        if REVERSE.insert(&reply, &rev, BPF_NOEXIST as u64).is_ok() {
            return Some(port);
        }
        port = ((unsafe { bpf_get_prandom_u32() } % 28_232 + 32_768) as u16).to_be();
    }
    None
}

#[inline(always)]
fn established(ctx: &TcContext, p: &Parsed, ct: &mut Conntrack, hook: Hook) -> i32 {
    if rewrite_forward(ctx, p, ct).is_err() {
        return TC_ACT_SHOT;
    }
    ct.packets = ct.packets.wrapping_add(1);
    if ct.ifindex != 0 && ct.packets & (ROUTE_REFRESH - 1) != 0 {
        // The flow's route, as looked up a few packets ago: no FIB walk per packet.
        let mut macs = [0u8; 12];
        macs[..6].copy_from_slice(&ct.dmac);
        macs[6..].copy_from_slice(&ct.smac);
        return forward_to(ctx, &macs, ct.ifindex, hook);
    }
    let src = if ct.snat_addr != 0 { ct.snat_addr } else { p.key.saddr };
    let mut fib = route(ctx, src, ct.backend.addr, p.key.proto, false);
    if fib.0 == FIB_SUCCESS {
        ct.ifindex = fib.1.ifindex;
        ct.dmac = fib.1.dmac;
        ct.smac = fib.1.smac;
    } else {
        ct.ifindex = 0;
    }
    send(ctx, &fib, hook)
}

#[inline(always)]
fn rewrite_forward(ctx: &TcContext, p: &Parsed, ct: &Conntrack) -> Result<(), i64> {
    let (saddr, sport) =
        if ct.snat_addr != 0 { (ct.snat_addr, ct.snat_port) } else { (p.key.saddr, p.key.sport) };
    rewrite(ctx, p, saddr, sport, ct.backend.addr, ct.backend.port)
}

/// Ones' complement addition, as the Internet checksum adds.
#[inline(always)]
fn csum_add(a: u32, b: u32) -> u32 {
    let (sum, carry) = a.overflowing_add(b);
    sum.wrapping_add(carry as u32)
}

#[inline(always)]
fn csum_fold(mut s: u32) -> u16 {
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    s as u16
}

/// Rewrites the packet's addresses and ports to the given ones (network order). The IP
/// header and the fields are written directly; the L4 checksum goes through the kernel's
/// helper in two calls, because only the helper knows whether the skb carries a partial
/// checksum (the node's own packets and those from pods on veths do), in which case the
/// addresses (pseudo-header) must be folded in and the ports must not.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Parsed, saddr: u32, sport: u16, daddr: u32, dport: u16) -> Result<(), i64> {
    let k = &p.key;
    let addr_diff = csum_add(csum_add(!k.saddr, saddr), csum_add(!k.daddr, daddr));
    let port_diff = csum_add(
        csum_add(!(k.sport as u32) & 0xffff, sport as u32),
        csum_add(!(k.dport as u32) & 0xffff, dport as u32),
    );
    let (data, end) = (ctx.data(), ctx.data_end());
    // Two checks: the verifier tracks the fixed-offset header and the variable-offset
    // ports separately.
    if data + ETH_HLEN + core::mem::size_of::<Ipv4Hdr>() > end || data + p.l4 + 4 > end {
        return Err(-1);
    }
    // SAFETY: bounds checked above.
    unsafe {
        let ip = &mut *((data + ETH_HLEN) as *mut Ipv4Hdr);
        let check = !(ip.check as u32) & 0xffff;
        ip.check = !csum_fold(csum_add(check, addr_diff));
        ip.saddr = saddr;
        ip.daddr = daddr;
        *((data + p.l4) as *mut u16) = sport;
        *((data + p.l4 + 2) as *mut u16) = dport;
    }
    let pseudo = p.csum_flags | BPF_F_PSEUDO_HDR as u64;
    ctx.l4_csum_replace(p.csum, 0, addr_diff as u64, pseudo)?;
    ctx.l4_csum_replace(p.csum, 0, port_diff as u64, p.csum_flags)?;
    Ok(())
}

#[inline(always)]
fn reply(ctx: &TcContext, p: &Parsed, rev: &Reverse) -> i32 {
    if rewrite(ctx, p, rev.vip, rev.vport, rev.client, rev.client_port).is_err() {
        return TC_ACT_SHOT;
    }
    if rev.vip == rev.client {
        // The node talked to its own address (a NodePort on itself): the reply must arrive
        // on loopback, where a local source is no martian. lo's MAC is all zeroes.
        if ctx.store(0, &[0u8; 6], 0).is_err() {
            return TC_ACT_SHOT;
        }
        return unsafe { bpf_redirect(LOOPBACK_IFINDEX, BPF_F_INGRESS as u64) } as i32;
    }
    let mut fib = route(ctx, rev.vip, rev.client, p.key.proto, false);
    send(ctx, &fib, Hook::Ingress)
}

type Fib = (i64, bpf_fib_lookup);

#[inline(always)]
fn route(ctx: &TcContext, src: u32, dst: u32, proto: u8, want_src: bool) -> Fib {
    // SAFETY: a plain C struct; zero is its "unset" value.
    let mut fib: bpf_fib_lookup = unsafe { core::mem::zeroed() };
    fib.family = AF_INET;
    fib.l4_protocol = proto;
    fib.ifindex = unsafe { (*ctx.skb.skb).ifindex };
    fib.__bindgen_anon_3.ipv4_src = src;
    fib.__bindgen_anon_4.ipv4_dst = dst;
    let flags = if want_src { FIB_LOOKUP_SRC } else { 0 };
    let rc = unsafe {
        aya_ebpf::helpers::bpf_fib_lookup(
            ctx.skb.skb.cast(),
            &mut fib,
            core::mem::size_of::<bpf_fib_lookup>() as i32,
            flags,
        )
    };
    (rc, fib)
}

/// Addresses the frame to the next hop and sends it out of `ifindex`.
#[inline(always)]
fn forward_to(ctx: &TcContext, macs: &[u8; 12], ifindex: u32, hook: Hook) -> i32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + 12 > end {
        return TC_ACT_SHOT;
    }
    // SAFETY: bounds checked above.
    unsafe { core::ptr::copy_nonoverlapping(macs.as_ptr(), data as *mut u8, 12) };
    let here = unsafe { (*ctx.skb.skb).ifindex };
    if hook == Hook::Egress && ifindex == here {
        return TC_ACT_OK;
    }
    unsafe { bpf_redirect(ifindex, 0) as i32 }
}

/// Sends a translated packet where the route says. Anything but a forwardable unicast
/// route (local delivery, unreachable, ...) goes back to the stack to decide.
#[inline(always)]
fn send(ctx: &TcContext, fib: &Fib, hook: Hook) -> i32 {
    match fib.0 {
        FIB_SUCCESS => {
            let mut macs = [0u8; 12];
            macs[..6].copy_from_slice(&fib.1.dmac);
            macs[6..].copy_from_slice(&fib.1.smac);
            forward_to(ctx, &macs, fib.1.ifindex, hook)
        }
        // No params: the kernel looks the next hop up again. Passing the next hop the FIB
        // lookup returned loses the first packet while the neighbour resolves (measured:
        // a node's first SYN to a backend behind an unresolved next hop took 1 s, the
        // retransmit); the extra lookup is paid only until the neighbour is known.
        FIB_NO_NEIGH => unsafe { bpf_redirect_neigh(fib.1.ifindex, core::ptr::null_mut(), 0, 0) as i32 },
        _ => TC_ACT_OK,
    }
}
