//! A new connection to a frontend, as both per-packet programs (tc and XDP) handle it:
//! which backend it gets and whether it is masqueraded ([`choose`], [`choose6`]), then the
//! flow state that keeps it there ([`open`], [`open6`]), and what later packets tell of it
//! ([`note_client`], [`note_reply`]: when it was last seen, how far it has closed, and
//! whether a SYN starts a new connection on its tuple). The programs differ only in how
//! they send the packet; the families only in their maps and address widths, so the
//! decision itself ([`decide`]) is written once.

use aya_ebpf::{
    bindings::BPF_NOEXIST,
    helpers::{bpf_get_prandom_u32, bpf_ktime_get_coarse_ns},
};
use rudder_abi::lb::{
    ACTION_DROP, ACTION_REJECT, Backend, Backend6, Config, Config6, Conntrack, Conntrack6, FlowEvent, FlowEvent6,
    FlowKey, FlowKey6, Reverse, Reverse6, Service, SourceRangeKey, SourceRangeKey6, clock, flags, port_free, tcp_state,
};

use super::{
    header::{TCP_FIN, TCP_RST, is_syn},
    log::{FlowMap, Refusal, Unrecorded},
    maps::{
        BACKENDS, BACKENDS6, CONNTRACK, CONNTRACK6, FLOW_EVENTS, REVERSE, REVERSE6, SCRATCH6, SOURCE_RANGES,
        SOURCE_RANGES6, Scratch6,
    },
    select::{Client, Origin, flow_hash, fold6, pick},
};

pub enum Choice<B> {
    /// Not allowed (source ranges, or a Local policy with no endpoint here).
    Drop(Refusal),
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
        return Choice::Drop(Refusal::SourceRange);
    }
    let short_circuit = svc.flags & flags::SHORT_CIRCUIT != 0 && matches!(origin, Origin::Inside);
    if svc.action == ACTION_DROP && !short_circuit {
        return Choice::Drop(Refusal::NoLocalEndpoint);
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
            let range = aya_ebpf::maps::lpm_trie::Key::new(
                64,
                SourceRangeKey {
                    service_id: svc.id,
                    addr: key.saddr,
                },
            );
            SOURCE_RANGES.get(&range).is_some()
        },
        hash: flow_hash(key.saddr, key.daddr, key.sport, key.dport, key.proto),
    };
    let maglev = cfg.map_or(0, |c| c.maglev_size);
    decide(
        svc,
        src,
        ingress,
        maglev,
        |id| unsafe { BACKENDS.get(&id) }.copied(),
        |b| b.addr == key.saddr,
    )
}

/// [`choose`] for IPv6.
#[inline(always)]
pub fn choose6(
    key: &FlowKey6,
    svc: &Service,
    cfg: Option<&Config>,
    cfg6: Option<&Config6>,
    ingress: bool,
) -> Choice<Backend6> {
    let src = Source {
        client: key.saddr,
        is_pod: cfg6.is_some_and(|c| in_net6(&key.saddr, &c.pod_net, &c.pod_mask)),
        allowed: || {
            let range = aya_ebpf::maps::lpm_trie::Key::new(
                160,
                SourceRangeKey6 {
                    service_id: svc.id,
                    addr: key.saddr,
                },
            );
            SOURCE_RANGES6.get(&range).is_some()
        },
        hash: flow_hash(fold6(&key.saddr), fold6(&key.daddr), key.sport, key.dport, key.proto),
    };
    let maglev = cfg.map_or(0, |c| c.maglev_size);
    decide(
        svc,
        src,
        ingress,
        maglev,
        |id| unsafe { BACKENDS6.get(&id) }.copied(),
        |b| b.addr == key.saddr,
    )
}

/// Whether `a` is in the range `net`/`mask` (an all-zero mask: no range configured).
#[inline(always)]
pub fn in_net6(a: &[u32; 4], net: &[u32; 4], mask: &[u32; 4]) -> bool {
    mask.iter().any(|m| *m != 0) && (0..4).all(|i| a[i] & mask[i] == net[i])
}

/// Now, in flow time ([`clock`]).
#[inline(always)]
pub fn now() -> u32 {
    clock(unsafe { bpf_ktime_get_coarse_ns() })
}

/// What a packet of a flow says of its closing, as [`tcp_state`] bits.
#[inline(always)]
fn closing(tcp_flags: u8, fin: u32) -> u32 {
    let mut bits = 0;
    if tcp_flags & TCP_FIN != 0 {
        bits |= fin;
    }
    if tcp_flags & TCP_RST != 0 {
        bits |= tcp_state::RST;
    }
    bits
}

/// Sets a flow's last-seen time to now, which it returns. Written only when changed: the
/// packets of a busy flow share one cache line across CPUs.
#[inline(always)]
fn touch(seen: &mut u32) -> u32 {
    let t = now();
    if *seen != t {
        *seen = t;
    }
    t
}

/// Notes a reply of a flow: when it was seen, and a FIN or RST.
#[inline(always)]
pub fn note_reply(seen: &mut u32, tcp: &mut u32, tcp_flags: u8) {
    touch(seen);
    let mut bits = closing(tcp_flags, tcp_state::FIN_BACKEND);
    if bits & tcp_state::FIN_BACKEND != 0 && *tcp & tcp_state::FIN_CLIENT == 0 {
        bits |= tcp_state::BACKEND_FIRST;
    }
    if bits != 0 {
        *tcp |= bits;
    }
}

/// The reply key of the IPv4 flow `key` (as translated by `ct`).
#[inline(always)]
pub fn reply_key(key: &FlowKey, ct: &Conntrack) -> FlowKey {
    let (daddr, dport) = if ct.snat_addr != 0 {
        (ct.snat_addr, ct.snat_port)
    } else {
        (key.saddr, key.sport)
    };
    FlowKey {
        saddr: ct.backend.addr,
        daddr,
        sport: ct.backend.port,
        dport,
        proto: key.proto,
        pad: [0; 3],
    }
}

/// [`reply_key`] for IPv6.
#[inline(always)]
pub fn reply_key6(key: &FlowKey6, ct: &Conntrack6) -> FlowKey6 {
    let (daddr, dport) = if ct.snat_addr != [0; 4] {
        (ct.snat_addr, ct.snat_port)
    } else {
        (key.saddr, key.sport)
    };
    FlowKey6 {
        saddr: ct.backend.addr,
        daddr,
        sport: ct.backend.port,
        dport,
        proto: key.proto,
        pad: [0; 3],
    }
}

/// Notes a packet of the IPv4 flow `key` from its client. `Some(())` while the flow stands;
/// `None` for a SYN that opens a new connection on the same tuple (the old one closed, its
/// reply port went to another flow, or its backend left), which the caller balances anew.
#[inline(always)]
pub fn note_client(key: &FlowKey, ct: &mut Conntrack, tcp_flags: u8) -> Option<()> {
    let t = touch(&mut ct.seen);
    let bits = closing(tcp_flags, tcp_state::FIN_CLIENT);
    if bits == 0 && !is_syn(tcp_flags) {
        return Some(());
    }
    let rev = REVERSE.get_ptr_mut(&reply_key(key, ct))?;
    // SAFETY: a live map value; the bits only ever grow.
    let rev = unsafe { &mut *rev };
    if bits != 0 {
        rev.tcp |= bits;
        rev.seen = t;
        return Some(());
    }
    let ours =
        rev.client == key.saddr && rev.client_port == key.sport && rev.vip == key.daddr && rev.vport == key.dport;
    let backend = unsafe { BACKENDS.get(&ct.backend_id) }?;
    (ours && rev.tcp == 0 && *backend == ct.backend).then_some(())
}

/// [`note_client`] for IPv6.
#[inline(always)]
pub fn note_client6(key: &FlowKey6, ct: &mut Conntrack6, tcp_flags: u8) -> Option<()> {
    let t = touch(&mut ct.seen);
    let bits = closing(tcp_flags, tcp_state::FIN_CLIENT);
    if bits == 0 && !is_syn(tcp_flags) {
        return Some(());
    }
    let rev = REVERSE6.get_ptr_mut(&reply_key6(key, ct))?;
    // SAFETY: as in `note_client`.
    let rev = unsafe { &mut *rev };
    if bits != 0 {
        rev.tcp |= bits;
        rev.seen = t;
        return Some(());
    }
    let ours =
        rev.client == key.saddr && rev.client_port == key.sport && rev.vip == key.daddr && rev.vport == key.dport;
    let backend = unsafe { BACKENDS6.get(&ct.backend_id) }?;
    (ours && rev.tcp == 0 && *backend == ct.backend).then_some(())
}

/// Records the flow `key` → `ct.backend` and its reply's way back. With `ct.snat_addr` set,
/// the flow leaves under a source port claimed here, which `ct.snat_port` then holds: one
/// from [`Config`]'s range, outside the kernel's ephemeral ports. Translating a connection
/// can make it the same tuple on the wire as another that was never translated (a node
/// process's own connection straight to the backend, under the same source port); netfilter
/// would pick another port on such a clash, but these programs cannot see untranslated
/// connections, so every source they translate gets a port no local socket can hold.
/// An error: the state could not be written, so the packet must not be sent.
#[inline(always)]
pub fn open(key: &FlowKey, ct: &mut Conntrack, cfg: Option<&Config>) -> Result<(), Unrecorded> {
    let t = now();
    ct.seen = t;
    let rev = Reverse {
        vip: key.daddr,
        vport: key.dport,
        client: key.saddr,
        client_port: key.sport,
        service_id: ct.service_id,
        seen: t,
        tcp: 0,
    };
    if ct.snat_addr != 0 {
        let mut reply = reply_key(key, ct);
        let claimed = claim_port(cfg, key.sport, |port| {
            reply.dport = port;
            match slot(&reply, key, t) {
                Slot::Empty => REVERSE.insert(&reply, &rev, BPF_NOEXIST as u64).is_ok(),
                Slot::Reclaimable => REVERSE.insert(&reply, &rev, 0).is_ok(),
                Slot::Taken => false,
            }
        });
        ct.snat_port = claimed.ok_or(Unrecorded::NoPort)?;
    } else {
        REVERSE
            .insert(&reply_key(key, ct), &rev, 0)
            .map_err(|e| Unrecorded::Insert(FlowMap::Reverse, e))?;
    }
    CONNTRACK
        .insert(key, &*ct, 0)
        .map_err(|e| Unrecorded::Insert(FlowMap::Conntrack, e))?;
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
    Ok(())
}

/// What a translated port holds, for a flow about to claim it.
enum Slot {
    Empty,
    /// A flow whose hold on it is over (see [`slot`]).
    Reclaimable,
    Taken,
}

/// Whether the translated port in `reply` is free for the flow `opening`: no entry (looked
/// up first: a failed insert into an LRU map costs a free-list round trip, which made a
/// masqueraded new flow 17 times dearer with 100k flows open), or one the flow held itself
/// (it is being balanced anew, under its own client tuple, which the backend cannot
/// mistake for another), or one [`port_free`] releases.
#[inline(never)]
fn slot(reply: &FlowKey, opening: &FlowKey, now: u32) -> Slot {
    let Some(rev) = (unsafe { REVERSE.get(reply) }) else {
        return Slot::Empty;
    };
    let owner = FlowKey {
        saddr: rev.client,
        daddr: rev.vip,
        sport: rev.client_port,
        dport: rev.vport,
        proto: reply.proto,
        pad: [0; 3],
    };
    if owner == *opening {
        return Slot::Reclaimable;
    }
    let (seen, here) = match unsafe { CONNTRACK.get(&owner) } {
        Some(ct) => (
            later(ct.seen, rev.seen),
            ct.snat_addr == reply.daddr
                && ct.snat_port == reply.dport
                && ct.backend.addr == reply.saddr
                && ct.backend.port == reply.sport,
        ),
        None => (rev.seen, false),
    };
    if port_free(reply.proto, rev.tcp, seen, now, here) {
        Slot::Reclaimable
    } else {
        Slot::Taken
    }
}

/// The later of two flow times (they wrap).
#[inline(always)]
fn later(a: u32, b: u32) -> u32 {
    if (a.wrapping_sub(b) as i32) > 0 { a } else { b }
}

/// [`slot`] for IPv6, with the owner's key in `owner` (per-CPU scratch: the IPv6 path's
/// stack is short).
#[inline(always)]
fn slot6(reply: &FlowKey6, owner: &mut FlowKey6, opening: &FlowKey6, now: u32) -> Slot {
    let Some(rev) = (unsafe { REVERSE6.get(reply) }) else {
        return Slot::Empty;
    };
    *owner = FlowKey6 {
        saddr: rev.client,
        daddr: rev.vip,
        sport: rev.client_port,
        dport: rev.vport,
        proto: reply.proto,
        pad: [0; 3],
    };
    if *owner == *opening {
        return Slot::Reclaimable;
    }
    let (seen, here) = match unsafe { CONNTRACK6.get(owner) } {
        Some(ct) => (
            later(ct.seen, rev.seen),
            ct.snat_addr == reply.daddr
                && ct.snat_port == reply.dport
                && ct.backend.addr == reply.saddr
                && ct.backend.port == reply.sport,
        ),
        None => (rev.seen, false),
    };
    if port_free(reply.proto, rev.tcp, seen, now, here) {
        Slot::Reclaimable
    } else {
        Slot::Taken
    }
}

/// [`open`] for IPv6.
#[inline(always)]
pub fn open6(key: &FlowKey6, ct: &mut Conntrack6, cfg: Option<&Config>) -> Result<(), Unrecorded> {
    let t = now();
    ct.seen = t;
    let rev = Reverse6 {
        vip: key.daddr,
        vport: key.dport,
        client: key.saddr,
        client_port: key.sport,
        service_id: ct.service_id,
        seen: t,
        tcp: 0,
    };
    if ct.snat_addr != [0; 4] {
        ct.snat_port = claim_port(cfg, key.sport, |port| claim6(key, &rev, port, t)).ok_or(Unrecorded::NoPort)?;
    } else {
        REVERSE6
            .insert(&reply_key6(key, ct), &rev, 0)
            .map_err(|e| Unrecorded::Insert(FlowMap::Reverse, e))?;
    }
    CONNTRACK6
        .insert(key, &*ct, 0)
        .map_err(|e| Unrecorded::Insert(FlowMap::Conntrack, e))?;
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
    Ok(())
}

/// One try of [`open6`]'s claim for the flow being opened in [`SCRATCH6`], in a frame of
/// its own, with its keys in the scratch too (the IPv6 path's stack is short).
#[inline(never)]
fn claim6(key: &FlowKey6, rev: &Reverse6, port: u16, now: u32) -> bool {
    let Some(s) = SCRATCH6.get_ptr_mut(0) else {
        return false;
    };
    // SAFETY: this CPU's slot; `open6`'s caller holds `ct` in it, which is only read here.
    let Scratch6 { ct, reply, owner, .. } = unsafe { &mut *s };
    *reply = reply_key6(key, ct);
    reply.dport = port;
    match slot6(reply, owner, key, now) {
        Slot::Empty => REVERSE6.insert(&*reply, rev, BPF_NOEXIST as u64).is_ok(),
        Slot::Reclaimable => REVERSE6.insert(&*reply, rev, 0).is_ok(),
        Slot::Taken => false,
    }
}

/// Random ports a new translated flow tries before its packet is dropped (the client
/// retries). A port stays held after its flow (up to [`rudder_abi::lb::TIME_WAIT_TIMEOUT`]),
/// so a node opening hundreds of short connections a second to one backend keeps a good
/// part of the range busy: 32 tries fail practically never below 80 % busy.
const CLAIM_TRIES: u32 = 32;

/// Picks a translated flow's source port (network order) in [`Config`]'s two stretches:
/// the client's `sport` if it lies there and `claim(port)` takes it, else a random one that
/// `claim` takes.
#[inline(always)]
fn claim_port(cfg: Option<&Config>, sport: u16, mut claim: impl FnMut(u16) -> bool) -> Option<u16> {
    let ([min0, min1], [count0, count1]) = match cfg {
        Some(c) => (
            [c.snat_port_min[0] as u32, c.snat_port_min[1] as u32],
            [c.snat_port_count[0] as u32, c.snat_port_count[1] as u32],
        ),
        // Around Linux's default ephemeral range, 32768-60999.
        None => ([61_000, 1024], [4_536, 31_744]),
    };
    // The client's own port first, when it lies in the range (as NAT keeps ports where it
    // can): a remote client's ports rarely meet, so most flows need one try.
    let own = u16::from_be(sport) as u32;
    if ((min0..min0 + count0).contains(&own) || (min1..min1 + count1).contains(&own)) && claim(sport) {
        return Some(sport);
    }
    for _ in 0..CLAIM_TRIES {
        // No ports at all: nothing to claim (and no division by zero, which BPF cannot panic on).
        let r = unsafe { bpf_get_prandom_u32() }.checked_rem(count0 + count1)?;
        let port = if r < count0 { min0 + r } else { min1 + (r - count0) };
        let port = (port as u16).to_be();
        if claim(port) {
            return Some(port);
        }
    }
    None
}
