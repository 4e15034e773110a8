//! Backend selection, shared by the socket and packet paths: affinity first, then a
//! uniformly random slot of the frontend's endpoint set.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use rudder_abi::lb::{Affinity, AffinityKey, Backend, Service, SlotKey, flags};

use super::maps::{AFFINITY, BACKENDS, SLOTS};

/// Which of a frontend's sets a connection uses.
#[derive(Clone, Copy)]
pub enum Origin {
    /// From outside the node (not a pod, not the node itself).
    Outside,
    /// From a pod or the node itself: eligible for the short circuit.
    Inside,
}

/// The backend for a new connection from `client` (0 when unknown, as for sockets),
/// or `None` when the set is empty or being rewritten.
#[inline(always)]
pub fn pick(svc: &Service, client: u32, origin: Origin) -> Option<(u32, Backend)> {
    let (set, count) = match origin {
        Origin::Inside if svc.flags & flags::SHORT_CIRCUIT != 0 => (svc.sc_set, svc.sc_count),
        _ => (svc.set, svc.count),
    };
    if count == 0 {
        return None;
    }
    let affinity = svc.flags & flags::AFFINITY != 0;
    let key = AffinityKey { service_id: svc.id, client };
    let now = unsafe { bpf_ktime_get_ns() };
    if affinity {
        if let Some(a) = unsafe { AFFINITY.get(&key) } {
            let fresh = now.wrapping_sub(a.last_used_ns) < svc.affinity_timeout as u64 * 1_000_000_000;
            if fresh && a.generation == svc.generation {
                if let Some(b) = unsafe { BACKENDS.get(&a.backend_id) } {
                    let id = a.backend_id;
                    let _ = AFFINITY.insert(
                        &key,
                        &Affinity { last_used_ns: now, backend_id: id, generation: svc.generation },
                        0,
                    );
                    return Some((id, *b));
                }
            }
        }
    }
    let slot = unsafe { bpf_get_prandom_u32() } % count;
    // A slot past the end can only be seen while user space shrinks the set; slot 0 is
    // always written.
    let id = match unsafe { SLOTS.get(&SlotKey { set, slot }) } {
        Some(id) => *id,
        None => *unsafe { SLOTS.get(&SlotKey { set, slot: 0 }) }?,
    };
    let backend = *unsafe { BACKENDS.get(&id) }?;
    if affinity {
        let _ = AFFINITY.insert(
            &key,
            &Affinity { last_used_ns: now, backend_id: id, generation: svc.generation },
            0,
        );
    }
    Some((id, backend))
}
