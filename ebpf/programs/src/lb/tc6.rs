//! The tc load balancer for IPv6: the same three cases as [`super::tc`] (a known flow, a
//! reply to one, a new connection to a frontend) over the IPv6 maps. IPv6 has no header
//! checksum, so only the L4 checksum is fixed, through the same helper (it alone knows
//! whether the skb's checksum is partial).

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, BPF_F_PSEUDO_HDR, TC_ACT_OK, TC_ACT_SHOT},
    helpers::bpf_redirect,
    programs::TcContext,
};
use rudder_abi::lb::{Conntrack6, ROUTE_REFRESH, Reverse6, Service, ServiceKey6};

use super::{
    flow::{Choice, choose6, in_net6, note_client6, note_reply, open6},
    header::{
        FIB_NO_NEIGH, FIB_SUCCESS, Fib, Parsed6, cache_route6, empty_fib, macs, parse6, rewrite_diffs6, route6,
        write_tuple6,
    },
    log::{self, Refusal},
    maps::{CONNTRACK6, REVERSE6, SCRATCH6, SERVICES6, Scratch6, config, config6, count},
    tc::{Hook, LOOPBACK_IFINDEX, forward_to, send},
};

/// `bpf_l4_csum_replace`'s flag (Linux 6.16) for a pseudo-header change on IPv6, where a
/// CHECKSUM_COMPLETE skb's sum must not change; older kernels refuse it, and then the
/// update is made without it.
const BPF_F_IPV6: u64 = 1 << 7;

/// What [`process`] and [`new_connection`] return when the connection must be refused:
/// not a tc verdict; the caller answers with ICMPv6.
pub const REJECT: i32 = i32::MIN;
/// What [`process`] returns for a new connection to a frontend: the caller runs
/// [`new_connection`]. Each is a BPF function of its own, called one after the other, so
/// their stack frames never add up (see `tc::process`).
pub const NEW_FLOW: i32 = i32::MIN + 1;

#[inline(never)]
pub fn process(ctx: &TcContext, hook: Hook) -> i32 {
    let Some(p) = parse6(ctx.data(), ctx.data_end()) else {
        return TC_ACT_OK;
    };
    let p = &p;
    if let Some(ct) = CONNTRACK6.get_ptr_mut(&p.key) {
        // SAFETY: as in `tc::process`.
        let ct = unsafe { &mut *ct };
        if note_client6(&p.key, ct, p.tcp_flags).is_none() {
            // A new connection on an old flow's tuple: balanced afresh.
            return NEW_FLOW;
        }
        count(ct.service_id, ctx.len());
        return established(ctx, p, ct, hook);
    }
    if let Some(rev) = REVERSE6.get_ptr_mut(&p.key) {
        // SAFETY: a live map value, only ever written field by field.
        let rev = unsafe { &mut *rev };
        note_reply(&mut rev.seen, &mut rev.tcp, p.tcp_flags);
        return reply(ctx, p, rev);
    }
    let key = ServiceKey6 {
        addr: p.key.daddr,
        port: p.key.dport,
        proto: p.key.proto,
        pad: 0,
    };
    if unsafe { SERVICES6.get(&key) }.is_some() {
        return NEW_FLOW;
    }
    unknown(p)
}

/// A new connection to a frontend ([`process`] found one).
#[inline(never)]
pub fn new_connection(ctx: &TcContext, hook: Hook) -> i32 {
    let Some(p) = parse6(ctx.data(), ctx.data_end()) else {
        return TC_ACT_OK;
    };
    let key = ServiceKey6 {
        addr: p.key.daddr,
        port: p.key.dport,
        proto: p.key.proto,
        pad: 0,
    };
    match unsafe { SERVICES6.get(&key) } {
        Some(svc) => new_flow(ctx, &p, svc, hook),
        // Removed in between: as if it had never been there.
        None => TC_ACT_OK,
    }
}

/// As `tc::unknown`: a ClusterIP's undefined port is rejected, the rest of the Service
/// range dropped.
#[inline(always)]
fn unknown(p: &Parsed6) -> i32 {
    let Some(cfg) = config6() else {
        return TC_ACT_OK;
    };
    if !in_net6(&p.key.daddr, &cfg.service_net, &cfg.service_mask) {
        return TC_ACT_OK;
    }
    let wildcard = ServiceKey6 {
        addr: p.key.daddr,
        port: 0,
        proto: 0,
        pad: 0,
    };
    if unsafe { SERVICES6.get(&wildcard) }.is_some() {
        log::refused6(Refusal::UnknownPort, &p.key);
        return REJECT;
    }
    log::refused6(Refusal::Unallocated, &p.key);
    TC_ACT_SHOT
}

#[inline(always)]
fn new_flow(ctx: &TcContext, p: &Parsed6, svc: &Service, hook: Hook) -> i32 {
    let (backend_id, backend, masquerade) = match choose6(&p.key, svc, config(), config6(), hook == Hook::Ingress) {
        Choice::Drop(why) => {
            count(svc.id, ctx.len());
            log::refused6(why, &p.key);
            return TC_ACT_SHOT;
        }
        Choice::Reject => {
            count(svc.id, ctx.len());
            log::refused6(Refusal::NoEndpoints, &p.key);
            return REJECT;
        }
        Choice::Forward {
            backend_id,
            backend,
            masquerade,
        } => (backend_id, backend, masquerade),
    };
    // The new entry and its route are assembled in a per-CPU slot rather than on the
    // stack, which the IPv6 path has too little of.
    let Some(scratch) = SCRATCH6.get_ptr_mut(0) else {
        return TC_ACT_SHOT;
    };
    // SAFETY: this CPU's slot; nothing else runs here until the program returns.
    let Scratch6 { ct, fib, .. } = unsafe { &mut *scratch };
    *ct = Conntrack6 {
        backend,
        backend_id,
        service_id: svc.id,
        ..Default::default()
    };
    route(ctx, &p.key.saddr, &backend.addr, p.key.proto, masquerade, fib);
    if masquerade {
        if fib.0 != FIB_SUCCESS && fib.0 != FIB_NO_NEIGH {
            log::no_route6(fib.0, &ct.backend.addr, ct.backend.port);
            return TC_ACT_SHOT;
        }
        ct.snat_addr = unsafe { fib.1.__bindgen_anon_3.ipv6_src };
    } else if hook == Hook::Egress {
        // As in `tc::new_flow`: a node process's own connection keeps its address only.
        ct.snat_addr = p.key.saddr;
    }
    if let Err(why) = open6(&p.key, ct, config()) {
        log::unrecorded6(why, &ct.backend);
        return TC_ACT_SHOT;
    }
    count(svc.id, ctx.len());
    if rewrite_forward(ctx, p, ct).is_err() {
        return TC_ACT_SHOT;
    }
    send(ctx, fib, hook)
}

#[inline(always)]
fn established(ctx: &TcContext, p: &Parsed6, ct: &mut Conntrack6, hook: Hook) -> i32 {
    if rewrite_forward(ctx, p, ct).is_err() {
        return TC_ACT_SHOT;
    }
    ct.packets = ct.packets.wrapping_add(1);
    if ct.ifindex != 0 && ct.packets & (ROUTE_REFRESH - 1) != 0 {
        return forward_to(ctx, &macs(&ct.dmac, &ct.smac), ct.ifindex, hook);
    }
    let src = if ct.snat_addr != [0; 4] {
        ct.snat_addr
    } else {
        p.key.saddr
    };
    let mut fib = empty_fib();
    route(ctx, &src, &ct.backend.addr, p.key.proto, false, &mut fib);
    cache_route6(ct, &fib);
    send(ctx, &fib, hook)
}

#[inline(always)]
fn rewrite_forward(ctx: &TcContext, p: &Parsed6, ct: &Conntrack6) -> Result<(), i64> {
    let (saddr, sport) = if ct.snat_addr != [0; 4] {
        (ct.snat_addr, ct.snat_port)
    } else {
        (p.key.saddr, p.key.sport)
    };
    rewrite(ctx, p, &saddr, sport, &ct.backend.addr, ct.backend.port)
}

#[inline(always)]
fn rewrite(
    ctx: &TcContext,
    p: &Parsed6,
    saddr: &[u32; 4],
    sport: u16,
    daddr: &[u32; 4],
    dport: u16,
) -> Result<(), i64> {
    let (addr_diff, port_diff) = rewrite_diffs6(&p.key, saddr, sport, daddr, dport);
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + p.l4 + 4 > end {
        return Err(-1);
    }
    // SAFETY: bounds checked above (the IPv6 header lies before the L4 header).
    unsafe { write_tuple6(data, p, saddr, sport, daddr, dport) };
    let pseudo = p.csum_flags | BPF_F_PSEUDO_HDR as u64;
    if ctx
        .l4_csum_replace(p.csum, 0, addr_diff as u64, pseudo | BPF_F_IPV6)
        .is_err()
    {
        ctx.l4_csum_replace(p.csum, 0, addr_diff as u64, pseudo)?;
    }
    ctx.l4_csum_replace(p.csum, 0, port_diff as u64, p.csum_flags)?;
    Ok(())
}

#[inline(always)]
fn reply(ctx: &TcContext, p: &Parsed6, rev: &Reverse6) -> i32 {
    if rewrite(ctx, p, &rev.vip, rev.vport, &rev.client, rev.client_port).is_err() {
        return TC_ACT_SHOT;
    }
    if rev.vip == rev.client {
        // As in `tc::reply`: the node's own NodePort connection is answered on loopback.
        if ctx.store(0, &[0u8; 6], 0).is_err() {
            return TC_ACT_SHOT;
        }
        return unsafe { bpf_redirect(LOOPBACK_IFINDEX, BPF_F_INGRESS as u64) } as i32;
    }
    let mut fib = empty_fib();
    route(ctx, &rev.vip, &rev.client, p.key.proto, false, &mut fib);
    send(ctx, &fib, Hook::Ingress)
}

#[inline(always)]
fn route(ctx: &TcContext, src: &[u32; 4], dst: &[u32; 4], proto: u8, want_src: bool, out: &mut Fib) {
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    route6(ctx.skb.skb.cast(), ifindex, src, dst, proto, want_src, out)
}
