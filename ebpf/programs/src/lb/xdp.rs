//! XDP acceleration on the node's external interfaces: NodePort and external-IP traffic
//! whose backend lies behind the interface it arrived on (another node) is translated
//! and sent back out with `XDP_TX` before the kernel allocates an skb for it. Everything
//! else passes to the tc program, which handles every case; this one only takes the
//! packets it can finish on its own.
//!
//! XDP cannot tell whether a packet carries a *partial* L4 checksum (only the pseudo
//! header summed, the rest left to offload), which packets from a local veth do and which
//! a rewrite sent out from here would leave broken. Such a checksum equals the folded
//! pseudo-header sum, which a complete one matches by chance once in 65536; those packets
//! pass to tc, whose checksum helper knows.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    macros::xdp,
    programs::XdpContext,
};
use rudder_abi::lb::{Conntrack, FlowKey, PROTO_UDP, ROUTE_REFRESH, ServiceKey, XDP_SLOT_PASSED, XDP_SLOT_TX};

use super::{
    flow::{Choice, choose, note_client, note_reply, open},
    header::{
        ETH_HLEN, ETH_P_IP, ETH_P_IPV6, FIB_SUCCESS, IPV4_HLEN, Ipv4Hdr, Parsed, cache_route, csum_add, csum_fold,
        ethertype, macs, parse, rewrite_diffs, route, updated_l4_check, write_tuple,
    },
    log,
    maps::{CONNTRACK, REVERSE, SERVICES, XDP_STATS, config, count},
};

/// Each family's path is a BPF function of its own (see `tc::process`, and `xdp6`).
#[xdp]
pub fn rudder_xdp_lb(ctx: XdpContext) -> u32 {
    match ethertype(ctx.data(), ctx.data_end()) {
        ETH_P_IP => process4(&ctx),
        ETH_P_IPV6 => {
            let mut verdict = super::xdp6::process(&ctx);
            if verdict == super::xdp6::NEW_FLOW {
                verdict = super::xdp6::new_connection(&ctx);
                if verdict >= super::xdp6::DROPPED {
                    return super::xdp6::dropped(ctx.data(), ctx.data_end(), verdict);
                }
            }
            if verdict == super::xdp6::NOT_OURS {
                XDP_PASS
            } else {
                verdict
            }
        }
        _ => XDP_PASS,
    }
}

#[inline(never)]
fn process4(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(p) = parse(data, end) else {
        return XDP_PASS;
    };
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let len = (end - data) as u32;
    let verdict = if let Some(ct) = CONNTRACK.get_ptr_mut(&p.key) {
        // SAFETY: a live map value; a racing writer can at worst tear the route cache,
        // which the next refresh repairs.
        let ct = unsafe { &mut *ct };
        if note_client(&p.key, ct, p.tcp_flags).is_none() {
            // A new connection on an old flow's tuple: tc balances it afresh.
            return XDP_PASS;
        }
        established(&ctx, &p, ct, ingress, len)
    } else if let Some(rev) = REVERSE.get_ptr_mut(&p.key) {
        // SAFETY: a live map value, only ever written field by field.
        let rev = unsafe { &mut *rev };
        note_reply(&mut rev.seen, &mut rev.tcp, p.tcp_flags);
        let rev = *rev;
        if rev.vip == rev.client || partial_checksum(&ctx, &p) {
            XDP_PASS
        } else {
            let fib = route(ctx.ctx.cast(), ingress, rev.vip, rev.client, p.key.proto, false);
            if fib.0 != FIB_SUCCESS || fib.1.ifindex != ingress {
                XDP_PASS
            } else {
                transmit(
                    &ctx,
                    &p,
                    (rev.vip, rev.vport, rev.client, rev.client_port),
                    &macs(&fib.1.dmac, &fib.1.smac),
                )
            }
        }
    } else {
        let key = ServiceKey {
            addr: p.key.daddr,
            port: p.key.dport,
            proto: p.key.proto,
            pad: 0,
        };
        match unsafe { SERVICES.get(&key) } {
            Some(svc) => new_flow(&ctx, &p, svc, ingress, len),
            // Not ours (or a ClusterIP's unknown port): tc decides.
            None => return XDP_PASS,
        }
    };
    tally(verdict, len);
    verdict
}

#[inline(always)]
pub fn tally(verdict: u32, len: u32) {
    let slot = if verdict == XDP_TX {
        XDP_SLOT_TX
    } else {
        XDP_SLOT_PASSED
    };
    if let Some(c) = XDP_STATS.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot; nothing else writes it while this program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += len as u64;
        }
    }
}

#[inline(always)]
fn established(ctx: &XdpContext, p: &Parsed, ct: &mut Conntrack, ingress: u32, len: u32) -> u32 {
    ct.packets = ct.packets.wrapping_add(1);
    if ct.ifindex == 0 || ct.packets & (ROUTE_REFRESH - 1) == 0 {
        let src = if ct.snat_addr != 0 { ct.snat_addr } else { p.key.saddr };
        let fib = route(ctx.ctx.cast(), ingress, src, ct.backend.addr, p.key.proto, false);
        cache_route(ct, &fib);
    }
    if ct.ifindex != ingress || partial_checksum(ctx, p) {
        return XDP_PASS;
    }
    count(ct.service_id, len);
    let (saddr, sport) = if ct.snat_addr != 0 {
        (ct.snat_addr, ct.snat_port)
    } else {
        (p.key.saddr, p.key.sport)
    };
    transmit(
        ctx,
        p,
        (saddr, sport, ct.backend.addr, ct.backend.port),
        &macs(&ct.dmac, &ct.smac),
    )
}

#[inline(always)]
fn new_flow(ctx: &XdpContext, p: &Parsed, svc: &rudder_abi::lb::Service, ingress: u32, len: u32) -> u32 {
    let svc = *svc;
    if partial_checksum(ctx, p) {
        return XDP_PASS;
    }
    let cfg = config();
    let (backend_id, backend, masquerade) = match choose(&p.key, &svc, cfg, true) {
        Choice::Drop(why) => {
            count(svc.id, len);
            log::refused(why, &p.key);
            return XDP_DROP;
        }
        // tc answers with ICMP.
        Choice::Reject => return XDP_PASS,
        Choice::Forward {
            backend_id,
            backend,
            masquerade,
        } => (backend_id, backend, masquerade),
    };
    let fib = route(
        ctx.ctx.cast(),
        ingress,
        p.key.saddr,
        backend.addr,
        p.key.proto,
        masquerade,
    );
    // Only a backend behind the interface the packet came in on is ours; nothing is
    // recorded otherwise, so tc handles the flow from its first packet.
    if fib.0 != FIB_SUCCESS || fib.1.ifindex != ingress {
        return XDP_PASS;
    }
    let mut ct = Conntrack {
        backend,
        backend_id,
        service_id: svc.id,
        ifindex: fib.1.ifindex,
        dmac: fib.1.dmac,
        smac: fib.1.smac,
        ..Default::default()
    };
    if masquerade {
        ct.snat_addr = unsafe { fib.1.__bindgen_anon_3.ipv4_src };
    }
    // tc tries again (and logs if it fails too).
    if open(&p.key, &mut ct, cfg).is_err() {
        return XDP_PASS;
    }
    count(svc.id, len);
    let (saddr, sport) = if masquerade {
        (ct.snat_addr, ct.snat_port)
    } else {
        (p.key.saddr, p.key.sport)
    };
    transmit(
        ctx,
        p,
        (saddr, sport, backend.addr, backend.port),
        &macs(&ct.dmac, &ct.smac),
    )
}

/// Whether the L4 checksum is only the pseudo-header's (see the module docs).
#[inline(always)]
fn partial_checksum(ctx: &XdpContext, p: &Parsed) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + IPV4_HLEN > end || data + p.csum + 2 > end {
        return true;
    }
    // SAFETY: bounds checked above.
    let (ip, check) = unsafe {
        (
            &*((data + ETH_HLEN) as *const Ipv4Hdr),
            *((data + p.csum) as *const u16),
        )
    };
    if p.key.proto == PROTO_UDP && check == 0 {
        return false;
    }
    let l4_len = u16::from_be(ip.tot_len).wrapping_sub((p.l4 - ETH_HLEN) as u16);
    // Words as they sit in memory (the sum is the same in either byte order).
    let sum = csum_add(
        csum_add(p.key.saddr, p.key.daddr),
        (p.key.proto as u16).to_be() as u32 + l4_len.to_be() as u32,
    );
    csum_fold(sum) == check
}

/// Rewrites the 5-tuple to `(saddr, sport, daddr, dport)` (network order), fixes both
/// checksums, addresses the frame with `macs` and sends it back out.
#[inline(always)]
fn transmit(ctx: &XdpContext, p: &Parsed, to: (u32, u16, u32, u16), macs: &[u8; 12]) -> u32 {
    let (saddr, sport, daddr, dport) = to;
    let k: &FlowKey = &p.key;
    let (addr_diff, port_diff) = rewrite_diffs(k, saddr, sport, daddr, dport);
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + IPV4_HLEN > end || data + p.l4 + 4 > end || data + p.csum + 2 > end {
        return XDP_PASS;
    }
    // SAFETY: bounds checked above.
    unsafe {
        write_tuple(data, p, saddr, sport, daddr, dport, addr_diff);
        let check = (data + p.csum) as *mut u16;
        // UDP's zero means "no checksum"; it stays so.
        if !(p.key.proto == PROTO_UDP && *check == 0) {
            *check = updated_l4_check(*check, addr_diff, port_diff, p.key.proto);
        }
        core::ptr::copy_nonoverlapping(macs.as_ptr(), data as *mut u8, 12);
    }
    XDP_TX
}
