//! Socket-level load balancing: connect() and sendto() to a frontend are pointed at a
//! backend before any packet exists, so the flow needs no per-packet NAT and no conntrack.
//! recvmsg() and getpeername() translate back, so UDP replies and peer names show the
//! address the application asked for.
//!
//! Frontends with `loadBalancerSourceRanges` are left to the packet path, which sees the
//! real source address.

use aya_ebpf::{
    EbpfContext,
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use rudder_abi::lb::{
    ACTION_DROP, ACTION_REJECT, PROTO_TCP, PROTO_UDP, ServiceKey, SockForward, SockForwardKey,
    SockReverse, SockReverseKey, flags,
};

use super::{
    maps::{BACKENDS, SERVICES, SOCK_FORWARD, SOCK_REVERSE, count},
    select::{Origin, pick},
};

/// cgroup sock_addr verdicts.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn rudder_connect4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn rudder_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn rudder_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn rudder_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse(&ctx)
}

#[inline(always)]
fn forward(ctx: &SockAddrContext, per_datagram: bool) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return ALLOW;
    }
    let key = ServiceKey { addr: sa.user_ip4, port: sa.user_port as u16, proto, pad: 0 };
    let Some(svc) = (unsafe { SERVICES.get(&key) }) else { return ALLOW };
    let svc = *svc;
    if svc.flags & flags::SOURCE_RANGES != 0 {
        return ALLOW;
    }
    let short_circuit = svc.flags & flags::SHORT_CIRCUIT != 0;
    if svc.action == ACTION_REJECT || (svc.action == ACTION_DROP && !short_circuit) {
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let fkey = SockForwardKey { cookie, frontend: key };
    // An unconnected UDP socket is one flow: every datagram it sends to this frontend goes
    // to the backend its first one went to, until that backend leaves.
    let sticky = if per_datagram {
        unsafe { SOCK_FORWARD.get(&fkey) }
            .filter(|f| f.generation == svc.generation)
            .and_then(|f| unsafe { BACKENDS.get(&f.backend_id) }.map(|b| (f.backend_id, *b)))
    } else {
        None
    };
    let Some((id, backend)) = sticky.or_else(|| pick(&svc, 0, Origin::Inside, None, 0)) else {
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    };
    if per_datagram && sticky.is_none() {
        let _ = SOCK_FORWARD.insert(&fkey, &SockForward { backend_id: id, generation: svc.generation }, 0);
    }
    let rkey = SockReverseKey { cookie, backend, pad: [0; 2] };
    let _ = SOCK_REVERSE.insert(&rkey, &SockReverse { vip: key.addr, vport: key.port, pad: 0 }, 0);
    count(svc.id, 0);
    sa.user_ip4 = backend.addr;
    sa.user_port = backend.port as u32;
    ALLOW
}

#[inline(always)]
fn reverse(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let backend = rudder_abi::lb::Backend { addr: sa.user_ip4, port: sa.user_port as u16, pad: 0 };
    if let Some(r) = unsafe { SOCK_REVERSE.get(&SockReverseKey { cookie, backend, pad: [0; 2] }) } {
        sa.user_ip4 = r.vip;
        sa.user_port = r.vport as u32;
    }
    ALLOW
}
