//! Refusing a connection: the packet becomes an ICMP port unreachable sent back where it
//! came from. TCP reports it as "connection refused" during the handshake, UDP on the next
//! receive, both at once, as kube-proxy's REJECT does.

use aya_ebpf::{
    bindings::{BPF_F_INGRESS, TC_ACT_SHOT},
    helpers::{bpf_csum_diff, bpf_redirect, bpf_skb_change_tail, bpf_skb_load_bytes},
    programs::TcContext,
};

use super::{header::ETH_HLEN, tc::Hook};

const IP_HLEN: usize = 20;
const ICMP_HLEN: usize = 8;
/// The offending packet's IP header and the first 8 bytes of its payload (RFC 792).
const QUOTE: usize = IP_HLEN + 8;
const TOTAL: usize = ETH_HLEN + IP_HLEN + ICMP_HLEN + QUOTE;

#[inline(always)]
fn fold(sum: i64) -> u16 {
    let mut s = sum as u64 & 0xffff_ffff;
    s = (s & 0xffff) + (s >> 16);
    s = (s & 0xffff) + (s >> 16);
    !(s as u16)
}

#[inline(always)]
pub fn unreachable(ctx: &TcContext, hook: Hook) -> i32 {
    let mut eth = [0u8; ETH_HLEN];
    let mut quote = [0u8; QUOTE];
    // The raw helper with constant lengths: the verifier needs to see them non-zero.
    let skb = ctx.skb.skb.cast();
    let loaded = unsafe {
        bpf_skb_load_bytes(skb, 0, eth.as_mut_ptr().cast(), ETH_HLEN as u32) == 0
            && bpf_skb_load_bytes(skb, ETH_HLEN as u32, quote.as_mut_ptr().cast(), QUOTE as u32) == 0
    };
    if !loaded {
        return TC_ACT_SHOT;
    }
    // Only option-less headers are quoted; nothing we serve sends IP options.
    if quote[0] != 0x45 {
        return TC_ACT_SHOT;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, TOTAL as u32, 0) } != 0 {
        return TC_ACT_SHOT;
    }
    let mut head = [0u8; ETH_HLEN + IP_HLEN + ICMP_HLEN];
    // Ethernet: back to the sender.
    head[0..6].copy_from_slice(&eth[6..12]);
    head[6..12].copy_from_slice(&eth[0..6]);
    head[12] = 0x08;
    head[13] = 0x00;
    // IPv4: from the address the client asked for, to the client.
    let ip = ETH_HLEN;
    head[ip] = 0x45;
    head[ip + 1] = 0xc0;
    head[ip + 2..ip + 4].copy_from_slice(&((IP_HLEN + ICMP_HLEN + QUOTE) as u16).to_be_bytes());
    head[ip + 8] = 64;
    head[ip + 9] = 1;
    head[ip + 12..ip + 16].copy_from_slice(&quote[16..20]);
    head[ip + 16..ip + 20].copy_from_slice(&quote[12..16]);
    // ICMP destination unreachable, port unreachable.
    let icmp = ip + IP_HLEN;
    head[icmp] = 3;
    head[icmp + 1] = 3;
    let ip_sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            head[ip..].as_mut_ptr().cast(),
            IP_HLEN as u32,
            0,
        )
    };
    head[ip + 10..ip + 12].copy_from_slice(&fold(ip_sum).to_ne_bytes());
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            head[icmp..].as_mut_ptr().cast(),
            ICMP_HLEN as u32,
            0,
        )
    };
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            quote.as_mut_ptr().cast(),
            QUOTE as u32,
            sum as u32,
        )
    };
    head[icmp + 2..icmp + 4].copy_from_slice(&fold(sum).to_ne_bytes());
    if ctx.store(0, &head, 0).is_err() || ctx.store(ETH_HLEN + IP_HLEN + ICMP_HLEN, &quote, 0).is_err() {
        return TC_ACT_SHOT;
    }
    // Arriving traffic is answered out of the same device; the node's own traffic is
    // answered into it, as if the reply had come from the wire.
    let flags = if hook == Hook::Egress { BPF_F_INGRESS as u64 } else { 0 };
    unsafe { bpf_redirect(ifindex, flags) as i32 }
}

const IP6_HLEN: usize = 40;
/// The offending packet's IPv6 header and the first 8 bytes of its payload: as much as
/// RFC 4443 asks while keeping the reply a fixed size the verifier can follow.
const QUOTE6: usize = IP6_HLEN + 8;
const TOTAL6: usize = ETH_HLEN + IP6_HLEN + ICMP_HLEN + QUOTE6;
const PROTO_ICMPV6: u8 = 58;

/// [`unreachable`] for IPv6: ICMPv6 destination unreachable, port unreachable. A BPF
/// function of its own: its buffers must not count against the IPv6 path's stack.
#[inline(never)]
pub fn unreachable6(ctx: &TcContext, hook: Hook) -> i32 {
    let mut eth = [0u8; ETH_HLEN];
    let mut quote = [0u8; QUOTE6];
    let skb = ctx.skb.skb.cast();
    let loaded = unsafe {
        bpf_skb_load_bytes(skb, 0, eth.as_mut_ptr().cast(), ETH_HLEN as u32) == 0
            && bpf_skb_load_bytes(skb, ETH_HLEN as u32, quote.as_mut_ptr().cast(), QUOTE6 as u32) == 0
    };
    if !loaded {
        return TC_ACT_SHOT;
    }
    let ifindex = unsafe { (*ctx.skb.skb).ifindex };
    if unsafe { bpf_skb_change_tail(ctx.skb.skb, TOTAL6 as u32, 0) } != 0 {
        return TC_ACT_SHOT;
    }
    let mut head = [0u8; ETH_HLEN + IP6_HLEN + ICMP_HLEN];
    head[0..6].copy_from_slice(&eth[6..12]);
    head[6..12].copy_from_slice(&eth[0..6]);
    head[12] = 0x86;
    head[13] = 0xdd;
    // IPv6: from the address the client asked for, to the client.
    let ip = ETH_HLEN;
    head[ip] = 0x60;
    head[ip + 4..ip + 6].copy_from_slice(&((ICMP_HLEN + QUOTE6) as u16).to_be_bytes());
    head[ip + 6] = PROTO_ICMPV6;
    head[ip + 7] = 64;
    head[ip + 8..ip + 24].copy_from_slice(&quote[24..40]);
    head[ip + 24..ip + 40].copy_from_slice(&quote[8..24]);
    let icmp = ip + IP6_HLEN;
    head[icmp] = 1;
    head[icmp + 1] = 4;
    // The checksum covers a pseudo-header: both addresses, the length, the protocol.
    let mut pseudo = [0u8; 40];
    pseudo[0..32].copy_from_slice(&head[ip + 8..ip + 40]);
    pseudo[34..36].copy_from_slice(&((ICMP_HLEN + QUOTE6) as u16).to_be_bytes());
    pseudo[39] = PROTO_ICMPV6;
    let sum = unsafe { bpf_csum_diff(core::ptr::null_mut(), 0, pseudo.as_mut_ptr().cast(), 40, 0) };
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            head[icmp..].as_mut_ptr().cast(),
            ICMP_HLEN as u32,
            sum as u32,
        )
    };
    let sum = unsafe {
        bpf_csum_diff(
            core::ptr::null_mut(),
            0,
            quote.as_mut_ptr().cast(),
            QUOTE6 as u32,
            sum as u32,
        )
    };
    head[icmp + 2..icmp + 4].copy_from_slice(&fold(sum).to_ne_bytes());
    if ctx.store(0, &head, 0).is_err() || ctx.store(ETH_HLEN + IP6_HLEN + ICMP_HLEN, &quote, 0).is_err() {
        return TC_ACT_SHOT;
    }
    let flags = if hook == Hook::Egress { BPF_F_INGRESS as u64 } else { 0 };
    unsafe { bpf_redirect(ifindex, flags) as i32 }
}
