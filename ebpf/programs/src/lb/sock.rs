//! Socket-level load balancing: connect() and sendto() to a frontend are pointed at a
//! backend before any packet exists, so the flow needs no per-packet NAT and no conntrack.
//! recvmsg() and getpeername() translate back, so UDP replies and peer names show the
//! address the application asked for.
//!
//! Both families run the same logic ([`forward`], [`reverse`]); a [`Family`] says which
//! maps and which `bpf_sock_addr` fields it uses.
//!
//! Frontends with `loadBalancerSourceRanges` are left to the packet path, which sees the
//! real source address.

use aya_ebpf::{
    EbpfContext,
    bindings::bpf_sock_addr,
    helpers::{bpf_get_socket_cookie, bpf_set_retval},
    macros::cgroup_sock_addr,
    programs::SockAddrContext,
};
use rudder_abi::lb::{
    ACTION_DROP, ACTION_REJECT, Backend, Backend6, PROTO_TCP, PROTO_UDP, Service, ServiceKey, ServiceKey6, SockForward,
    SockForwardKey, SockForwardKey6, SockReverse, SockReverse6, SockReverseKey, SockReverseKey6, flags,
};

use super::{
    log,
    maps::{BACKENDS, BACKENDS6, SERVICES, SERVICES6, SOCK_FORWARD, SOCK_FORWARD6, SOCK_REVERSE, SOCK_REVERSE6, count},
    select::{Origin, pick},
};

/// cgroup sock_addr verdicts.
const ALLOW: i32 = 1;
const DENY: i32 = 0;
const ECONNREFUSED: i32 = 111;

#[cgroup_sock_addr(connect4)]
pub fn rudder_connect4(ctx: SockAddrContext) -> i32 {
    forward::<V4>(&ctx, false)
}

#[cgroup_sock_addr(sendmsg4)]
pub fn rudder_sendmsg4(ctx: SockAddrContext) -> i32 {
    forward::<V4>(&ctx, true)
}

#[cgroup_sock_addr(recvmsg4)]
pub fn rudder_recvmsg4(ctx: SockAddrContext) -> i32 {
    reverse::<V4>(&ctx)
}

#[cgroup_sock_addr(getpeername4)]
pub fn rudder_getpeername4(ctx: SockAddrContext) -> i32 {
    reverse::<V4>(&ctx)
}

// An IPv6 socket can talk IPv4 through mapped addresses (::ffff:a.b.c.d): dual-stack
// runtimes (Java's, for one) connect that way to IPv4 Services, so those go to the IPv4
// maps.

#[cgroup_sock_addr(connect6)]
pub fn rudder_connect6(ctx: SockAddrContext) -> i32 {
    if v4_mapped(&ctx) {
        forward::<V4Mapped>(&ctx, false)
    } else {
        forward::<V6>(&ctx, false)
    }
}

#[cgroup_sock_addr(sendmsg6)]
pub fn rudder_sendmsg6(ctx: SockAddrContext) -> i32 {
    if v4_mapped(&ctx) {
        forward::<V4Mapped>(&ctx, true)
    } else {
        forward::<V6>(&ctx, true)
    }
}

#[cgroup_sock_addr(recvmsg6)]
pub fn rudder_recvmsg6(ctx: SockAddrContext) -> i32 {
    if v4_mapped(&ctx) {
        reverse::<V4Mapped>(&ctx)
    } else {
        reverse::<V6>(&ctx)
    }
}

#[cgroup_sock_addr(getpeername6)]
pub fn rudder_getpeername6(ctx: SockAddrContext) -> i32 {
    if v4_mapped(&ctx) {
        reverse::<V4Mapped>(&ctx)
    } else {
        reverse::<V6>(&ctx)
    }
}

#[inline(always)]
fn v4_mapped(ctx: &SockAddrContext) -> bool {
    let a = V6::addr(unsafe { &*ctx.sock_addr });
    a[0] == 0 && a[1] == 0 && a[2] == 0xffffu32.to_be()
}

/// What differs between the families: the address field and the maps.
trait Family {
    type Key: Copy;
    type Backend: Copy;
    type Addr: Copy;
    fn addr(sa: &bpf_sock_addr) -> Self::Addr;
    fn set_addr(sa: &mut bpf_sock_addr, addr: Self::Addr);
    fn key(addr: Self::Addr, port: u16, proto: u8) -> Self::Key;
    fn service(key: &Self::Key) -> Option<Service>;
    fn backend(id: u32) -> Option<Self::Backend>;
    fn backend_addr(b: &Self::Backend) -> (Self::Addr, u16);
    fn sticky(cookie: u64, key: &Self::Key) -> Option<SockForward>;
    fn remember(cookie: u64, key: &Self::Key, f: &SockForward);
    /// Records that `cookie`'s peer `backend` is really `key`'s frontend.
    fn record(cookie: u64, backend: &Self::Backend, key: &Self::Key);
    /// The frontend `cookie`'s peer `addr:port` stands for.
    fn frontend(cookie: u64, addr: Self::Addr, port: u16) -> Option<(Self::Addr, u16)>;
    /// Logs the refusal of a connection to `key` (see `log`).
    fn log_refused(key: &Self::Key);
}

struct V4;
struct V6;
/// IPv4 through an IPv6 socket: the IPv4 maps, the address in the last word.
struct V4Mapped;

impl Family for V4Mapped {
    type Key = ServiceKey;
    type Backend = Backend;
    type Addr = u32;
    #[inline(always)]
    fn addr(sa: &bpf_sock_addr) -> u32 {
        unsafe { core::ptr::read_volatile(&sa.user_ip6[3]) }
    }
    #[inline(always)]
    fn set_addr(sa: &mut bpf_sock_addr, addr: u32) {
        unsafe { core::ptr::write_volatile(&mut sa.user_ip6[3], addr) };
    }
    #[inline(always)]
    fn key(addr: u32, port: u16, proto: u8) -> ServiceKey {
        V4::key(addr, port, proto)
    }
    #[inline(always)]
    fn service(key: &ServiceKey) -> Option<Service> {
        V4::service(key)
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<Backend> {
        V4::backend(id)
    }
    #[inline(always)]
    fn backend_addr(b: &Backend) -> (u32, u16) {
        V4::backend_addr(b)
    }
    #[inline(always)]
    fn sticky(cookie: u64, key: &ServiceKey) -> Option<SockForward> {
        V4::sticky(cookie, key)
    }
    #[inline(always)]
    fn remember(cookie: u64, key: &ServiceKey, f: &SockForward) {
        V4::remember(cookie, key, f)
    }
    #[inline(always)]
    fn record(cookie: u64, backend: &Backend, key: &ServiceKey) {
        V4::record(cookie, backend, key)
    }
    #[inline(always)]
    fn frontend(cookie: u64, addr: u32, port: u16) -> Option<(u32, u16)> {
        V4::frontend(cookie, addr, port)
    }
    #[inline(always)]
    fn log_refused(key: &ServiceKey) {
        V4::log_refused(key)
    }
}

impl Family for V4 {
    type Key = ServiceKey;
    type Backend = Backend;
    type Addr = u32;
    #[inline(always)]
    fn log_refused(key: &ServiceKey) {
        log::sock_refused(key.proto, key.addr, key.port)
    }
    #[inline(always)]
    fn addr(sa: &bpf_sock_addr) -> u32 {
        sa.user_ip4
    }
    #[inline(always)]
    fn set_addr(sa: &mut bpf_sock_addr, addr: u32) {
        sa.user_ip4 = addr;
    }
    #[inline(always)]
    fn key(addr: u32, port: u16, proto: u8) -> ServiceKey {
        ServiceKey {
            addr,
            port,
            proto,
            pad: 0,
        }
    }
    #[inline(always)]
    fn service(key: &ServiceKey) -> Option<Service> {
        unsafe { SERVICES.get(key) }.copied()
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<Backend> {
        unsafe { BACKENDS.get(&id) }.copied()
    }
    #[inline(always)]
    fn backend_addr(b: &Backend) -> (u32, u16) {
        (b.addr, b.port)
    }
    #[inline(always)]
    fn sticky(cookie: u64, key: &ServiceKey) -> Option<SockForward> {
        unsafe { SOCK_FORWARD.get(&SockForwardKey { cookie, frontend: *key }) }.copied()
    }
    #[inline(always)]
    fn remember(cookie: u64, key: &ServiceKey, f: &SockForward) {
        let _ = SOCK_FORWARD.insert(&SockForwardKey { cookie, frontend: *key }, f, 0);
    }
    #[inline(always)]
    fn record(cookie: u64, backend: &Backend, key: &ServiceKey) {
        let rkey = SockReverseKey {
            cookie,
            backend: *backend,
            pad: [0; 2],
        };
        let _ = SOCK_REVERSE.insert(
            &rkey,
            &SockReverse {
                vip: key.addr,
                vport: key.port,
                pad: 0,
            },
            0,
        );
    }
    #[inline(always)]
    fn frontend(cookie: u64, addr: u32, port: u16) -> Option<(u32, u16)> {
        let backend = Backend { addr, port, pad: 0 };
        unsafe {
            SOCK_REVERSE.get(&SockReverseKey {
                cookie,
                backend,
                pad: [0; 2],
            })
        }
        .map(|r| (r.vip, r.vport))
    }
}

impl Family for V6 {
    type Key = ServiceKey6;
    type Backend = Backend6;
    type Addr = [u32; 4];
    #[inline(always)]
    fn log_refused(key: &ServiceKey6) {
        log::sock_refused6(key.proto, &key.addr, key.port)
    }
    #[inline(always)]
    fn addr(sa: &bpf_sock_addr) -> [u32; 4] {
        // The verifier takes the context's user_ip6 only as 4-byte words.
        let mut a = [0u32; 4];
        for (i, w) in a.iter_mut().enumerate() {
            *w = unsafe { core::ptr::read_volatile(&sa.user_ip6[i]) };
        }
        a
    }
    #[inline(always)]
    fn set_addr(sa: &mut bpf_sock_addr, addr: [u32; 4]) {
        for (i, w) in addr.iter().enumerate() {
            unsafe { core::ptr::write_volatile(&mut sa.user_ip6[i], *w) };
        }
    }
    #[inline(always)]
    fn key(addr: [u32; 4], port: u16, proto: u8) -> ServiceKey6 {
        ServiceKey6 {
            addr,
            port,
            proto,
            pad: 0,
        }
    }
    #[inline(always)]
    fn service(key: &ServiceKey6) -> Option<Service> {
        unsafe { SERVICES6.get(key) }.copied()
    }
    #[inline(always)]
    fn backend(id: u32) -> Option<Backend6> {
        unsafe { BACKENDS6.get(&id) }.copied()
    }
    #[inline(always)]
    fn backend_addr(b: &Backend6) -> ([u32; 4], u16) {
        (b.addr, b.port)
    }
    #[inline(always)]
    fn sticky(cookie: u64, key: &ServiceKey6) -> Option<SockForward> {
        unsafe {
            SOCK_FORWARD6.get(&SockForwardKey6 {
                cookie,
                frontend: *key,
                pad: 0,
            })
        }
        .copied()
    }
    #[inline(always)]
    fn remember(cookie: u64, key: &ServiceKey6, f: &SockForward) {
        let _ = SOCK_FORWARD6.insert(
            &SockForwardKey6 {
                cookie,
                frontend: *key,
                pad: 0,
            },
            f,
            0,
        );
    }
    #[inline(always)]
    fn record(cookie: u64, backend: &Backend6, key: &ServiceKey6) {
        let rkey = SockReverseKey6 {
            cookie,
            backend: *backend,
            pad: 0,
        };
        let _ = SOCK_REVERSE6.insert(
            &rkey,
            &SockReverse6 {
                vip: key.addr,
                vport: key.port,
                pad: 0,
            },
            0,
        );
    }
    #[inline(always)]
    fn frontend(cookie: u64, addr: [u32; 4], port: u16) -> Option<([u32; 4], u16)> {
        let backend = Backend6 { addr, port, pad: 0 };
        unsafe {
            SOCK_REVERSE6.get(&SockReverseKey6 {
                cookie,
                backend,
                pad: 0,
            })
        }
        .map(|r| (r.vip, r.vport))
    }
}

#[inline(always)]
fn forward<F: Family>(ctx: &SockAddrContext, per_datagram: bool) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let proto = sa.protocol as u8;
    if proto != PROTO_TCP && proto != PROTO_UDP {
        return ALLOW;
    }
    let key = F::key(F::addr(sa), sa.user_port as u16, proto);
    let Some(svc) = F::service(&key) else { return ALLOW };
    if svc.flags & flags::SOURCE_RANGES != 0 {
        return ALLOW;
    }
    let short_circuit = svc.flags & flags::SHORT_CIRCUIT != 0;
    if svc.action == ACTION_REJECT || (svc.action == ACTION_DROP && !short_circuit) {
        F::log_refused(&key);
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    }
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // An unconnected UDP socket is one flow: every datagram it sends to this frontend goes
    // to the backend its first one went to, until that backend leaves.
    let sticky = if per_datagram {
        F::sticky(cookie, &key)
            .filter(|f| f.generation == svc.generation)
            .and_then(|f| F::backend(f.backend_id).map(|b| (f.backend_id, b)))
    } else {
        None
    };
    let Some((id, backend)) = sticky.or_else(|| pick(&svc, 0, Origin::Inside, None, 0, F::backend)) else {
        F::log_refused(&key);
        unsafe { bpf_set_retval(-ECONNREFUSED) };
        return DENY;
    };
    if per_datagram && sticky.is_none() {
        F::remember(
            cookie,
            &key,
            &SockForward {
                backend_id: id,
                generation: svc.generation,
            },
        );
    }
    F::record(cookie, &backend, &key);
    count(svc.id, 0);
    let (addr, port) = F::backend_addr(&backend);
    F::set_addr(sa, addr);
    sa.user_port = port as u32;
    ALLOW
}

#[inline(always)]
fn reverse<F: Family>(ctx: &SockAddrContext) -> i32 {
    let sa = unsafe { &mut *ctx.sock_addr };
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    if let Some((vip, vport)) = F::frontend(cookie, F::addr(sa), sa.user_port as u16) {
        F::set_addr(sa, vip);
        sa.user_port = vport as u32;
    }
    ALLOW
}
