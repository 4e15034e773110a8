//! A new connection to a frontend, as both per-packet programs (tc and XDP) handle it:
//! which backend it gets and whether it is masqueraded ([`choose`], [`choose6`]), then the
//! flow state that keeps it there ([`open`], [`open6`]). The programs differ only in how
//! they send the packet; the families only in their maps and address widths, so the
//! decision itself ([`decide`]) is written once.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use rudder_abi::lb::{
    ACTION_DROP, ACTION_REJECT, Backend, Backend6, Config, Config6, Conntrack, Conntrack6,
    FlowEvent, FlowEvent6, FlowKey, FlowKey6, Reverse, Reverse6, Service, SourceRangeKey, SourceRangeKey6, flags,
};

use super::{
    maps::{
        BACKENDS, BACKENDS6, CONNTRACK, CONNTRACK6, FLOW_EVENTS, REVERSE, REVERSE6, SOURCE_RANGES,
        SOURCE_RANGES6,
    },
    select::{Client, Origin, flow_hash, fold6, pick},
};

pub enum Choice<B> {
    /// Not allowed (source ranges, or a Local policy with no endpoint here).
    Drop,
    /// No endpoint anywhere: ICMP port unreachable.
    Reject,
    Forward {
        backend_id: u32,
        backend: B,
        masquerade: bool,
    },
}

/// What the decision needs to know of a new connection's source.
struct Source<C, A> {
    client: C,
    is_pod: bool,
    /// Whether `loadBalancerSourceRanges` admit it (asked only when the frontend has them).
    allowed: A,
    hash: u32,
}

#[inline(always)]
fn decide<B: Copy, C: Client>(
    svc: &Service,
    src: Source<C, impl FnOnce() -> bool>,
    ingress: bool,
    maglev_size: u32,
    backend: impl Fn(u32) -> Option<B>,
    is_source: impl Fn(&B) -> bool,
) -> Choice<B> {
    let origin = if !ingress || src.is_pod {
        Origin::Inside
    } else {
        Origin::Outside
    };
    if svc.flags & flags::SOURCE_RANGES != 0 && !(src.allowed)() {
        return Choice::Drop;
    }
    let short_circuit = svc.flags & flags::SHORT_CIRCUIT != 0 && matches!(origin, Origin::Inside);
    if svc.action == ACTION_DROP && !short_circuit {
        return Choice::Drop;
    }
    if svc.action == ACTION_REJECT {
        return Choice::Reject;
    }
    let Some((backend_id, backend)) = pick(svc, src.client, origin, Some(src.hash), maglev_size, backend) else {
        return Choice::Reject;
    };
    // The node's own packets already carry a node address, so replies come back here.
    let masquerade = ingress
        && (svc.flags & flags::MASQ_ALWAYS != 0
            || (svc.flags & flags::MASQ_UNLESS_POD != 0 && !src.is_pod)
            || is_source(&backend));
    Choice::Forward {
        backend_id,
        backend,
        masquerade,
    }
}

/// Decides a new IPv4 connection `key` to `svc`. `ingress`: it arrived at the node (rather
/// than leaving one of the node's own sockets).
#[inline(always)]
pub fn choose(key: &FlowKey, svc: &Service, cfg: Option<&Config>, ingress: bool) -> Choice<Backend> {
    let src = Source {
        client: key.saddr,
        is_pod: cfg.is_some_and(|c| c.pod_mask != 0 && key.saddr & c.pod_mask == c.pod_net),
        allowed: || {
            let range = aya_ebpf::maps::lpm_trie::Key::new(64, SourceRangeKey { service_id: svc.id, addr: key.saddr });
            SOURCE_RANGES.get(&range).is_some()
        },
        hash: flow_hash(key.saddr, key.daddr, key.sport, key.dport, key.proto),
    };
    let maglev = cfg.map_or(0, |c| c.maglev_size);
    decide(svc, src, ingress, maglev, |id| unsafe { BACKENDS.get(&id) }.copied(), |b| b.addr == key.saddr)
}

/// [`choose`] for IPv6.
#[inline(always)]
pub fn choose6(key: &FlowKey6, svc: &Service, cfg: Option<&Config>, cfg6: Option<&Config6>, ingress: bool) -> Choice<Backend6> {
    let src = Source {
        client: key.saddr,
        is_pod: cfg6.is_some_and(|c| in_net6(&key.saddr, &c.pod_net, &c.pod_mask)),
        allowed: || {
            let range = aya_ebpf::maps::lpm_trie::Key::new(160, SourceRangeKey6 { service_id: svc.id, addr: key.saddr });
            SOURCE_RANGES6.get(&range).is_some()
        },
        hash: flow_hash(fold6(&key.saddr), fold6(&key.daddr), key.sport, key.dport, key.proto),
    };
    let maglev = cfg.map_or(0, |c| c.maglev_size);
    decide(svc, src, ingress, maglev, |id| unsafe { BACKENDS6.get(&id) }.copied(), |b| b.addr == key.saddr)
}

/// Whether `a` is in the range `net`/`mask` (an all-zero mask: no range configured).
#[inline(always)]
pub fn in_net6(a: &[u32; 4], net: &[u32; 4], mask: &[u32; 4]) -> bool {
    mask.iter().any(|m| *m != 0)
        && (0..4).all(|i| a[i] & mask[i] == net[i])
}

/// Records the flow `key` → `ct.backend` (and its reply's way back; with `ct.snat_addr`
/// set, under a source port claimed here, which `ct.snat_port` then holds). `None`: the
/// state could not be written, so the packet must not be sent.
#[inline(always)]
pub fn open(key: &FlowKey, ct: &mut Conntrack, cfg: Option<&Config>) -> Option<()> {
    let rev = Reverse {
        vip: key.daddr,
        vport: key.dport,
        client: key.saddr,
        client_port: key.sport,
        service_id: ct.service_id,
    };
    let (daddr, masq) = if ct.snat_addr != 0 { (ct.snat_addr, true) } else { (key.saddr, false) };
    let reply = |port: u16| FlowKey {
        saddr: ct.backend.addr,
        daddr,
        sport: ct.backend.port,
        dport: port,
        proto: key.proto,
        pad: [0; 3],
    };
    if masq {
        ct.snat_port = claim_port(key.sport, |port| REVERSE.insert(&reply(port), &rev, BPF_NOEXIST as u64).is_ok())?;
    } else {
        REVERSE.insert(&reply(key.sport), &rev, 0).ok()?;
    }
    CONNTRACK.insert(key, &*ct, 0).ok()?;
    if cfg.is_some_and(|c| c.flow_events != 0) {
        let event = FlowEvent {
            client: key.saddr,
            vip: key.daddr,
            backend: ct.backend,
            service_id: ct.service_id,
            client_port: key.sport,
            vport: key.dport,
            proto: key.proto,
            pad: [0; 3],
        };
        // Full means a lost event, never a lost packet.
        let _ = FLOW_EVENTS.output::<FlowEvent>(&event, 0);
    }
    Some(())
}

/// [`open`] for IPv6.
#[inline(always)]
pub fn open6(key: &FlowKey6, ct: &mut Conntrack6, cfg: Option<&Config>) -> Option<()> {
    let rev = Reverse6 {
        vip: key.daddr,
        vport: key.dport,
        client: key.saddr,
        client_port: key.sport,
        service_id: ct.service_id,
    };
    let masq = ct.snat_addr != [0; 4];
    let daddr = if masq { ct.snat_addr } else { key.saddr };
    let reply = |port: u16| FlowKey6 {
        saddr: ct.backend.addr,
        daddr,
        sport: ct.backend.port,
        dport: port,
        proto: key.proto,
        pad: [0; 3],
    };
    if masq {
        ct.snat_port = claim_port(key.sport, |port| REVERSE6.insert(&reply(port), &rev, BPF_NOEXIST as u64).is_ok())?;
    } else {
        REVERSE6.insert(&reply(key.sport), &rev, 0).ok()?;
    }
    CONNTRACK6.insert(key, &*ct, 0).ok()?;
    if cfg.is_some_and(|c| c.flow_events != 0) {
        // Written straight into the ring (no stack copy: the IPv6 path has little).
        if let Some(mut entry) = FLOW_EVENTS.reserve::<FlowEvent6>(0) {
            let e = entry.as_mut_ptr();
            // SAFETY: the reserved record, written field by field, every field once.
            unsafe {
                (*e).client = key.saddr;
                (*e).vip = key.daddr;
                (*e).backend = ct.backend;
                (*e).service_id = ct.service_id;
                (*e).client_port = key.sport;
                (*e).vport = key.dport;
                (*e).proto = key.proto;
                (*e).pad = [0; 3];
            }
            entry.submit(0);
        }
    }
    Some(())
}

/// Picks the source port for a masqueraded flow: the client's own if free, else a random
/// one. `insert(port)` records the reply's entry if that port is free, so two flows never
/// share one.
#[inline(always)]
fn claim_port(sport: u16, insert: impl Fn(u16) -> bool) -> Option<u16> {
    let mut port = sport;
    for _ in 0..4 {
        if insert(port) {
            return Some(port);
        }
        port = ((unsafe { bpf_get_prandom_u32() } % 28_232 + 32_768) as u16).to_be();
    }
    None
}
