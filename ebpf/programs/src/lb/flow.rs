//! A new connection to a frontend, as both per-packet programs (tc and XDP) handle it:
//! which backend it gets and whether it is masqueraded ([`choose`]), then the flow state
//! that keeps it there ([`open`]). The programs differ only in how they send the packet.

use aya_ebpf::{bindings::BPF_NOEXIST, helpers::bpf_get_prandom_u32};
use rudder_abi::lb::{
    ACTION_DROP, ACTION_REJECT, Backend, Config, Conntrack, FlowEvent, FlowKey, Reverse, Service,
    SourceRangeKey, flags,
};

use super::{
    maps::{BACKENDS, CONNTRACK, FLOW_EVENTS, REVERSE, SOURCE_RANGES},
    select::{Origin, flow_hash, pick},
};

pub enum Choice {
    /// Not allowed (source ranges, or a Local policy with no endpoint here).
    Drop,
    /// No endpoint anywhere: ICMP port unreachable.
    Reject,
    Forward {
        backend_id: u32,
        backend: Backend,
        masquerade: bool,
    },
}

/// Decides a new connection `key` to `svc`. `ingress`: it arrived at the node (rather
/// than leaving one of the node's own sockets).
#[inline(always)]
pub fn choose(key: &FlowKey, svc: &Service, cfg: Option<&Config>, ingress: bool) -> Choice {
    let is_pod = cfg.is_some_and(|c| c.pod_mask != 0 && key.saddr & c.pod_mask == c.pod_net);
    let origin = if !ingress || is_pod {
        Origin::Inside
    } else {
        Origin::Outside
    };
    if svc.flags & flags::SOURCE_RANGES != 0 {
        let range = aya_ebpf::maps::lpm_trie::Key::new(
            64,
            SourceRangeKey {
                service_id: svc.id,
                addr: key.saddr,
            },
        );
        if SOURCE_RANGES.get(&range).is_none() {
            return Choice::Drop;
        }
    }
    let short_circuit = svc.flags & flags::SHORT_CIRCUIT != 0 && matches!(origin, Origin::Inside);
    if svc.action == ACTION_DROP && !short_circuit {
        return Choice::Drop;
    }
    if svc.action == ACTION_REJECT {
        return Choice::Reject;
    }
    let hash = flow_hash(key.saddr, key.daddr, key.sport, key.dport, key.proto);
    let Some((backend_id, backend)) = pick(
        svc,
        key.saddr,
        origin,
        Some(hash),
        cfg.map_or(0, |c| c.maglev_size),
        |id| unsafe { BACKENDS.get(&id) }.copied(),
    ) else {
        return Choice::Reject;
    };
    // The node's own packets already carry a node address, so replies come back here.
    let masquerade = ingress
        && (svc.flags & flags::MASQ_ALWAYS != 0
            || (svc.flags & flags::MASQ_UNLESS_POD != 0 && !is_pod)
            || backend.addr == key.saddr);
    Choice::Forward {
        backend_id,
        backend,
        masquerade,
    }
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
    if ct.snat_addr != 0 {
        ct.snat_port = claim_port(key, &ct.backend, ct.snat_addr, &rev)?;
    } else {
        let reply = FlowKey {
            saddr: ct.backend.addr,
            daddr: key.saddr,
            sport: ct.backend.port,
            dport: key.sport,
            proto: key.proto,
            pad: [0; 3],
        };
        REVERSE.insert(&reply, &rev, 0).ok()?;
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

/// Picks the source port for a masqueraded flow: the client's own if free, else a random
/// one, and records the reverse entry for it (so two flows never share one).
#[inline(always)]
fn claim_port(key: &FlowKey, backend: &Backend, snat: u32, rev: &Reverse) -> Option<u16> {
    let mut port = key.sport;
    for _ in 0..4 {
        let reply = FlowKey {
            saddr: backend.addr,
            daddr: snat,
            sport: backend.port,
            dport: port,
            proto: key.proto,
            pad: [0; 3],
        };
        if REVERSE.insert(&reply, rev, BPF_NOEXIST as u64).is_ok() {
            return Some(port);
        }
        port = ((unsafe { bpf_get_prandom_u32() } % 28_232 + 32_768) as u16).to_be();
    }
    None
}
