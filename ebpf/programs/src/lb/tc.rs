//! The per-packet load balancer on tc (tcx): ingress for traffic arriving at the node,
//! egress for the node's own traffic that socket LB did not see.
//!
//! One pass per packet: a known flow (`CONNTRACK`), a reply to one (`REVERSE`), or a new
//! connection to a frontend (`SERVICES`). Translated packets are routed here with
//! `bpf_fib_lookup` and redirected, so they bypass the stack (and netfilter) on this node;
//! that is also what lets a masqueraded packet leave with one of the node's own addresses
//! as its source, which the stack would drop as a martian.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::{bpf_redirect, bpf_redirect_neigh},
    macros::classifier,
    programs::TcContext,
};
use rudder_abi::lb::{Conntrack, ROUTE_REFRESH, Reverse, ServiceKey};

use super::{
    flow::{Choice, choose, note_client, note_reply, open},
    header::{
        ETH_HLEN, FIB_NO_NEIGH, FIB_SUCCESS, Fib, IPV4_HLEN, Parsed, cache_route, macs, parse, rewrite_diffs,
        write_tuple,
    },
    log::{self, Refusal},
    maps::{CONNTRACK, REVERSE, SERVICES, config, count},
    reject,
};

pub const LOOPBACK_IFINDEX: u32 = 1;

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

/// Each family's path is a BPF function of its own, and the IPv6 path is three, called one
/// after another (known flows, then a new connection, then an ICMPv6 refusal): BPF gives
/// a whole call chain 512 bytes of stack, and the wider IPv6 keys and entries do not fit
/// in one frame, nor either family's path beside the other's.
#[inline(always)]
pub fn process(ctx: &TcContext, hook: Hook) -> i32 {
    match super::header::ethertype(ctx.data(), ctx.data_end()) {
        super::header::ETH_P_IP => process4(ctx, hook),
        super::header::ETH_P_IPV6 => {
            let mut verdict = super::tc6::process(ctx, hook);
            if verdict == super::tc6::NEW_FLOW {
                verdict = super::tc6::new_connection(ctx, hook);
            }
            if verdict == super::tc6::REJECT {
                reject::unreachable6(ctx, hook)
            } else {
                verdict
            }
        }
        _ => TC_ACT_OK,
    }
}

#[inline(never)]
fn process4(ctx: &TcContext, hook: Hook) -> i32 {
    let Some(p) = parse(ctx.data(), ctx.data_end()) else {
        return TC_ACT_OK;
    };
    let p = &p;
    let key = ServiceKey {
        addr: p.key.daddr,
        port: p.key.dport,
        proto: p.key.proto,
        pad: 0,
    };
    if let Some(ct) = CONNTRACK.get_ptr_mut(&p.key) {
        // SAFETY: a live map value; a racing writer can at worst tear the route cache,
        // which the next refresh repairs.
        let ct = unsafe { &mut *ct };
        if note_client(&p.key, ct, p.tcp_flags).is_some() {
            count(ct.service_id, ctx.len());
            return established(ctx, &p, ct, hook);
        }
        // A new connection on an old flow's tuple: balanced afresh below.
    } else if let Some(rev) = REVERSE.get_ptr_mut(&p.key) {
        // SAFETY: a live map value, only ever written field by field.
        let rev = unsafe { &mut *rev };
        note_reply(&mut rev.seen, &mut rev.tcp, p.tcp_flags);
        let rev = *rev;
        return reply(ctx, &p, &rev);
    }
    if let Some(svc) = unsafe { SERVICES.get(&key) } {
        return new_flow(ctx, &p, svc, hook);
    }
    unknown(ctx, &p, hook)
}

/// Not a frontend. A ClusterIP's undefined port is rejected; an unallocated address in the
/// Service CIDR is dropped (it must never be routed out of the node).
#[inline(always)]
fn unknown(ctx: &TcContext, p: &Parsed, hook: Hook) -> i32 {
    let Some(cfg) = config() else {
        return TC_ACT_OK;
    };
    if cfg.service_mask == 0 || p.key.daddr & cfg.service_mask != cfg.service_net {
        return TC_ACT_OK;
    }
    let wildcard = ServiceKey {
        addr: p.key.daddr,
        port: 0,
        proto: 0,
        pad: 0,
    };
    if unsafe { SERVICES.get(&wildcard) }.is_some() {
        log::refused(Refusal::UnknownPort, &p.key);
        return reject::unreachable(ctx, hook);
    }
    log::refused(Refusal::Unallocated, &p.key);
    TC_ACT_SHOT
}

#[inline(always)]
fn new_flow(ctx: &TcContext, p: &Parsed, svc: &rudder_abi::lb::Service, hook: Hook) -> i32 {
    let svc = *svc;
    // Read once: the pod range, Maglev and flow events all come from it.
    let cfg = config();
    let (backend_id, backend, masquerade) = match choose(&p.key, &svc, cfg, hook == Hook::Ingress) {
        Choice::Drop(why) => {
            count(svc.id, ctx.len());
            log::refused(why, &p.key);
            return TC_ACT_SHOT;
        }
        Choice::Reject => {
            count(svc.id, ctx.len());
            log::refused(Refusal::NoEndpoints, &p.key);
            return reject::unreachable(ctx, hook);
        }
        Choice::Forward {
            backend_id,
            backend,
            masquerade,
        } => (backend_id, backend, masquerade),
    };
    let mut ct = Conntrack {
        backend,
        backend_id,
        service_id: svc.id,
        ..Default::default()
    };
    let fib = route(ctx, p.key.saddr, backend.addr, p.key.proto, masquerade);
    if masquerade {
        if fib.0 != FIB_SUCCESS && fib.0 != FIB_NO_NEIGH {
            log::no_route(fib.0, backend.addr, backend.port);
            return TC_ACT_SHOT;
        }
        ct.snat_addr = unsafe { fib.1.__bindgen_anon_3.ipv4_src };
    } else if hook == Hook::Egress {
        // A node process's own connection (outside socket LB): its address stays, its port
        // does not, so it can never clash with the process's direct connections (`open`).
        ct.snat_addr = p.key.saddr;
    }
    if let Err(why) = open(&p.key, &mut ct, cfg) {
        log::unrecorded(why, &ct.backend);
        return TC_ACT_SHOT;
    }
    count(svc.id, ctx.len());
    if rewrite_forward(ctx, p, &ct).is_err() {
        return TC_ACT_SHOT;
    }
    // The lookup left the next hop in `ipv4_dst`; `send` needs exactly that.
    send(ctx, &fib, hook)
}

#[inline(always)]
fn established(ctx: &TcContext, p: &Parsed, ct: &mut Conntrack, hook: Hook) -> i32 {
    if rewrite_forward(ctx, p, ct).is_err() {
        return TC_ACT_SHOT;
    }
    ct.packets = ct.packets.wrapping_add(1);
    if ct.ifindex != 0 && ct.packets & (ROUTE_REFRESH - 1) != 0 {
        // The flow's route, as looked up a few packets ago: no FIB walk per packet.
        return forward_to(ctx, &macs(&ct.dmac, &ct.smac), ct.ifindex, hook);
    }
    let src = if ct.snat_addr != 0 { ct.snat_addr } else { p.key.saddr };
    let fib = route(ctx, src, ct.backend.addr, p.key.proto, false);
    cache_route(ct, &fib);
    send(ctx, &fib, hook)
}

#[inline(always)]
fn rewrite_forward(ctx: &TcContext, p: &Parsed, ct: &Conntrack) -> Result<(), i64> {
    let (saddr, sport) = if ct.snat_addr != 0 {
        (ct.snat_addr, ct.snat_port)
    } else {
        (p.key.saddr, p.key.sport)
    };
    rewrite(ctx, p, saddr, sport, ct.backend.addr, ct.backend.port)
}

/// Rewrites the packet's addresses and ports to the given ones (network order). The IP
/// header and the fields are written directly; the L4 checksum goes through the kernel's
/// helper in two calls, because only the helper knows whether the skb carries a partial
/// checksum (the node's own packets and those from pods on veths do), in which case the
/// addresses (pseudo-header) must be folded in and the ports must not.
#[inline(always)]
fn rewrite(ctx: &TcContext, p: &Parsed, saddr: u32, sport: u16, daddr: u32, dport: u16) -> Result<(), i64> {
    let (addr_diff, port_diff) = rewrite_diffs(&p.key, saddr, sport, daddr, dport);
    let (data, end) = (ctx.data(), ctx.data_end());
    // Two checks: the verifier tracks the fixed-offset header and the variable-offset
    // ports separately.
    if data + ETH_HLEN + IPV4_HLEN > end || data + p.l4 + 4 > end {
        return Err(-1);
    }
    // SAFETY: bounds checked above.
    unsafe { write_tuple(data, p, saddr, sport, daddr, dport, addr_diff) };
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
    let fib = route(ctx, rev.vip, rev.client, p.key.proto, false);
    send(ctx, &fib, Hook::Ingress)
}

#[inline(always)]
fn route(ctx: &TcContext, src: u32, dst: u32, proto: u8, want_src: bool) -> Fib {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    super::header::route(ctx.skb.skb.cast(), ifindex, src, dst, proto, want_src)
}

/// Addresses the frame to the next hop and sends it out of `ifindex`.
#[inline(always)]
pub fn forward_to(ctx: &TcContext, macs: &[u8; 12], ifindex: u32, hook: Hook) -> i32 {
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
pub fn send(ctx: &TcContext, fib: &Fib, hook: Hook) -> i32 {
    match fib.0 {
        FIB_SUCCESS => forward_to(ctx, &macs(&fib.1.dmac, &fib.1.smac), fib.1.ifindex, hook),
        // No params: the kernel looks the next hop up again. Passing the next hop the FIB
        // lookup returned loses the first packet while the neighbour resolves (measured:
        // a node's first SYN to a backend behind an unresolved next hop took 1 s, the
        // retransmit); the extra lookup is paid only until the neighbour is known.
        FIB_NO_NEIGH => unsafe { bpf_redirect_neigh(fib.1.ifindex, core::ptr::null_mut(), 0, 0) as i32 },
        _ => TC_ACT_OK,
    }
}
