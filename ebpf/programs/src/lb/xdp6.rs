//! XDP acceleration for IPv6: the same cases as [`super::xdp`] over the IPv6 maps, taken
//! under the same conditions (the backend, or the client for replies, behind the ingress
//! interface; a complete checksum). IPv6 has no header checksum, so only the L4 one is
//! fixed, by hand as there. Like the tc path, it runs as BPF functions called one after
//! another (known flows, then a new connection) and assembles a new flow in a per-CPU
//! slot: BPF gives one call chain 512 bytes of stack.

use aya_ebpf::{
    bindings::xdp_action::{XDP_DROP, XDP_PASS, XDP_TX},
    programs::XdpContext,
};
use rudder_abi::lb::{Conntrack6, ROUTE_REFRESH, Service, ServiceKey6};

use super::{
    flow::{Choice, choose6, note_client6, note_reply, open6},
    header::{
        ETH_HLEN, FIB_SUCCESS, IPV6_HLEN, Ipv6Hdr, Parsed6, cache_route6, csum_add, csum_fold, empty_fib, macs, parse6,
        rewrite_diffs6, route6, updated_l4_check, write_tuple6,
    },
    log::{self, Refusal},
    maps::{CONNTRACK6, REVERSE6, SCRATCH6, SERVICES6, Scratch6, config, config6, count},
    xdp::tally,
};

/// What [`process`] returns for a new connection to a frontend: not an XDP action; the
/// caller runs [`new_connection`].
pub const NEW_FLOW: u32 = u32::MAX;
/// What [`process`] returns for a packet that is none of ours: passed, and not counted.
pub const NOT_OURS: u32 = u32::MAX - 1;
/// What [`new_connection`] returns, plus the [`Refusal`], for a connection dropped by
/// policy: not an XDP action; the caller hands it to [`dropped`]. Logging the refusal
/// there, in a call chain of its own, keeps `new_connection`'s frame as it was (the
/// record's arguments, held across its helper calls, cost it stack it has none of).
pub const DROPPED: u32 = u32::MAX - 16;

/// Drops a packet [`new_connection`] refused, with its log record if those are on. (The
/// packet's bounds rather than the context: a pointer to the caller's context would give
/// the entry point a stack frame, which every call chain beneath it pays.)
#[inline(never)]
pub fn dropped(data: usize, end: usize, verdict: u32) -> u32 {
    if log::refusals_on()
        && let Some(p) = parse6(data, end)
    {
        let why = match verdict - DROPPED {
            r if r == Refusal::SourceRange as u32 => Refusal::SourceRange,
            _ => Refusal::NoLocalEndpoint,
        };
        log::refused6(why, &p.key);
    }
    XDP_DROP
}

#[inline(never)]
pub fn process(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(p) = parse6(data, end) else {
        return NOT_OURS;
    };
    let p = &p;
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let len = (end - data) as u32;
    let verdict = if let Some(ct) = CONNTRACK6.get_ptr_mut(&p.key) {
        // SAFETY: as in `xdp::rudder_xdp_lb`.
        let ct = unsafe { &mut *ct };
        if note_client6(&p.key, ct, p.tcp_flags).is_none() {
            // A new connection on an old flow's tuple: tc balances it afresh.
            return NOT_OURS;
        }
        established(ctx, p, ct, ingress, len)
    } else if let Some(rev) = REVERSE6.get_ptr_mut(&p.key) {
        // SAFETY: a live map value, only ever written field by field.
        let rev = unsafe { &mut *rev };
        note_reply(&mut rev.seen, &mut rev.tcp, p.tcp_flags);
        if rev.vip == rev.client || partial_checksum(ctx, p) {
            XDP_PASS
        } else {
            let mut fib = empty_fib();
            route6(
                ctx.ctx.cast(),
                ingress,
                &rev.vip,
                &rev.client,
                p.key.proto,
                false,
                &mut fib,
            );
            if fib.0 != FIB_SUCCESS || fib.1.ifindex != ingress {
                XDP_PASS
            } else {
                transmit(
                    ctx,
                    p,
                    (&rev.vip, rev.vport, &rev.client, rev.client_port),
                    &macs(&fib.1.dmac, &fib.1.smac),
                )
            }
        }
    } else {
        let key = ServiceKey6 {
            addr: p.key.daddr,
            port: p.key.dport,
            proto: p.key.proto,
            pad: 0,
        };
        return if unsafe { SERVICES6.get(&key) }.is_some() {
            NEW_FLOW
        } else {
            NOT_OURS
        };
    };
    tally(verdict, len);
    verdict
}

/// A new connection to a frontend ([`process`] found one).
#[inline(never)]
pub fn new_connection(ctx: &XdpContext) -> u32 {
    let (data, end) = (ctx.data(), ctx.data_end());
    let Some(p) = parse6(data, end) else {
        return XDP_PASS;
    };
    let key = ServiceKey6 {
        addr: p.key.daddr,
        port: p.key.dport,
        proto: p.key.proto,
        pad: 0,
    };
    let Some(svc) = (unsafe { SERVICES6.get(&key) }) else {
        return XDP_PASS;
    };
    let len = (end - data) as u32;
    let verdict = new_flow(ctx, &p, svc, len);
    tally(verdict, len);
    verdict
}

#[inline(always)]
fn established(ctx: &XdpContext, p: &Parsed6, ct: &mut Conntrack6, ingress: u32, len: u32) -> u32 {
    ct.packets = ct.packets.wrapping_add(1);
    if ct.ifindex == 0 || ct.packets & (ROUTE_REFRESH - 1) == 0 {
        let src = if ct.snat_addr != [0; 4] {
            ct.snat_addr
        } else {
            p.key.saddr
        };
        let mut fib = empty_fib();
        route6(
            ctx.ctx.cast(),
            ingress,
            &src,
            &ct.backend.addr,
            p.key.proto,
            false,
            &mut fib,
        );
        cache_route6(ct, &fib);
    }
    if ct.ifindex != ingress || partial_checksum(ctx, p) {
        return XDP_PASS;
    }
    count(ct.service_id, len);
    let (saddr, sport) = if ct.snat_addr != [0; 4] {
        (ct.snat_addr, ct.snat_port)
    } else {
        (p.key.saddr, p.key.sport)
    };
    transmit(
        ctx,
        p,
        (&saddr, sport, &ct.backend.addr, ct.backend.port),
        &macs(&ct.dmac, &ct.smac),
    )
}

#[inline(always)]
fn new_flow(ctx: &XdpContext, p: &Parsed6, svc: &Service, len: u32) -> u32 {
    if partial_checksum(ctx, p) {
        return XDP_PASS;
    }
    let ingress = unsafe { (*ctx.ctx).ingress_ifindex };
    let (backend_id, backend, masquerade) = match choose6(&p.key, svc, config(), config6(), true) {
        Choice::Drop(why) => {
            count(svc.id, len);
            return DROPPED + why as u32;
        }
        // tc answers with ICMPv6.
        Choice::Reject => return XDP_PASS,
        Choice::Forward {
            backend_id,
            backend,
            masquerade,
        } => (backend_id, backend, masquerade),
    };
    let Some(scratch) = SCRATCH6.get_ptr_mut(0) else {
        return XDP_PASS;
    };
    // SAFETY: this CPU's slot; nothing else runs here until the program returns.
    let Scratch6 { ct, fib, .. } = unsafe { &mut *scratch };
    route6(
        ctx.ctx.cast(),
        ingress,
        &p.key.saddr,
        &backend.addr,
        p.key.proto,
        masquerade,
        fib,
    );
    // Only a backend behind the interface the packet came in on is ours; nothing is
    // recorded otherwise, so tc handles the flow from its first packet.
    if fib.0 != FIB_SUCCESS || fib.1.ifindex != ingress {
        return XDP_PASS;
    }
    *ct = Conntrack6 {
        backend,
        backend_id,
        service_id: svc.id,
        ifindex: fib.1.ifindex,
        dmac: fib.1.dmac,
        smac: fib.1.smac,
        ..Default::default()
    };
    if masquerade {
        ct.snat_addr = unsafe { fib.1.__bindgen_anon_3.ipv6_src };
    }
    // tc tries again (and logs if it fails too).
    if open6(&p.key, ct, config()).is_err() {
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
        (&saddr, sport, &backend.addr, backend.port),
        &macs(&ct.dmac, &ct.smac),
    )
}

/// Whether the L4 checksum is only the pseudo-header's (see `xdp`'s module docs).
#[inline(always)]
fn partial_checksum(ctx: &XdpContext, p: &Parsed6) -> bool {
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + ETH_HLEN + IPV6_HLEN > end || data + p.csum + 2 > end {
        return true;
    }
    // SAFETY: bounds checked above.
    let (ip, check) = unsafe {
        (
            &*((data + ETH_HLEN) as *const Ipv6Hdr),
            *((data + p.csum) as *const u16),
        )
    };
    let mut sum = (p.key.proto as u16).to_be() as u32 + ip.payload_len as u32;
    for i in 0..4 {
        sum = csum_add(sum, csum_add(p.key.saddr[i], p.key.daddr[i]));
    }
    csum_fold(sum) == check
}

/// Rewrites the 5-tuple, fixes the L4 checksum, addresses the frame with `macs` and sends
/// it back out.
#[inline(always)]
fn transmit(ctx: &XdpContext, p: &Parsed6, to: (&[u32; 4], u16, &[u32; 4], u16), macs: &[u8; 12]) -> u32 {
    let (saddr, sport, daddr, dport) = to;
    let (addr_diff, port_diff) = rewrite_diffs6(&p.key, saddr, sport, daddr, dport);
    let (data, end) = (ctx.data(), ctx.data_end());
    if data + p.l4 + 4 > end || data + p.csum + 2 > end {
        return XDP_PASS;
    }
    // SAFETY: bounds checked above.
    unsafe {
        write_tuple6(data, p, saddr, sport, daddr, dport);
        let check = (data + p.csum) as *mut u16;
        *check = updated_l4_check(*check, addr_diff, port_diff, p.key.proto);
        core::ptr::copy_nonoverlapping(macs.as_ptr(), data as *mut u8, 12);
    }
    XDP_TX
}
