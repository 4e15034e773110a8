//! Backend selection, shared by the socket and packet paths: affinity first, then a
//! uniformly random slot of the frontend's endpoint set.

use aya_ebpf::helpers::{bpf_get_prandom_u32, bpf_ktime_get_ns};
use rudder_abi::lb::{Affinity, AffinityKey, AffinityKey6, Service, SlotKey, flags};

use super::maps::{AFFINITY, AFFINITY6, MAGLEV, SLOTS};

/// A client as session affinity keys it: an IPv4 or an IPv6 address, each with its own
/// map.
pub trait Client: Copy {
    fn recall(self, service_id: u32) -> Option<Affinity>;
    fn remember(self, service_id: u32, a: &Affinity);
}

impl Client for u32 {
    #[inline(always)]
    fn recall(self, service_id: u32) -> Option<Affinity> {
        unsafe {
            AFFINITY.get(&AffinityKey {
                service_id,
                client: self,
            })
        }
        .copied()
    }
    #[inline(always)]
    fn remember(self, service_id: u32, a: &Affinity) {
        let _ = AFFINITY.insert(
            &AffinityKey {
                service_id,
                client: self,
            },
            a,
            0,
        );
    }
}

impl Client for [u32; 4] {
    #[inline(always)]
    fn recall(self, service_id: u32) -> Option<Affinity> {
        unsafe {
            AFFINITY6.get(&AffinityKey6 {
                service_id,
                client: self,
            })
        }
        .copied()
    }
    #[inline(always)]
    fn remember(self, service_id: u32, a: &Affinity) {
        let _ = AFFINITY6.insert(
            &AffinityKey6 {
                service_id,
                client: self,
            },
            a,
            0,
        );
    }
}

/// An IPv6 address folded to the 32 bits [`flow_hash`] takes (the same on every node).
#[inline(always)]
pub fn fold6(a: &[u32; 4]) -> u32 {
    a[0] ^ a[1].rotate_left(8) ^ a[2].rotate_left(16) ^ a[3].rotate_left(24)
}

/// Which of a frontend's sets a connection uses.
#[derive(Clone, Copy)]
pub enum Origin {
    /// From outside the node (not a pod, not the node itself).
    Outside,
    /// From a pod or the node itself: eligible for the short circuit.
    Inside,
}

/// A flow's hash for Maglev: only the 5-tuple, so every node computes the same one.
#[inline(always)]
pub fn flow_hash(saddr: u32, daddr: u32, sport: u16, dport: u16, proto: u8) -> u32 {
    let mut h = saddr.wrapping_mul(0x9e37_79b1) ^ daddr.rotate_left(13);
    h ^= ((sport as u32) << 16 | dport as u32).wrapping_mul(0x85eb_ca6b);
    h ^= proto as u32;
    // murmur3's finalizer: every input bit reaches every output bit.
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The backend for a new connection from `client` (0 when unknown, as for sockets),
/// or `None` when the set is empty or being rewritten. With a `hash` and a Maglev row
/// the set's Maglev table (of `maglev_size` slots; 0: none) decides; otherwise a random
/// slot. `backend` looks an id up in the frontend's family's backend map; ids are shared
/// by both families, so everything else here is family-blind.
#[inline(always)]
pub fn pick<B: Copy, C: Client>(
    svc: &Service,
    client: C,
    origin: Origin,
    hash: Option<u32>,
    maglev_size: u32,
    backend: impl Fn(u32) -> Option<B>,
) -> Option<(u32, B)> {
    let (set, count, row) = match origin {
        Origin::Inside if svc.flags & flags::SHORT_CIRCUIT != 0 => (svc.sc_set, svc.sc_count, svc.sc_row),
        _ => (svc.set, svc.count, svc.row),
    };
    if count == 0 {
        return None;
    }
    let affinity = svc.flags & flags::AFFINITY != 0;
    let now = unsafe { bpf_ktime_get_ns() };
    let remember = |id: u32| {
        if affinity {
            let a = Affinity {
                last_used_ns: now,
                backend_id: id,
                generation: svc.generation,
            };
            client.remember(svc.id, &a);
        }
    };
    if affinity {
        if let Some(a) = client.recall(svc.id) {
            let fresh = now.wrapping_sub(a.last_used_ns) < svc.affinity_timeout as u64 * 1_000_000_000;
            if fresh && a.generation == svc.generation {
                if let Some(b) = backend(a.backend_id) {
                    remember(a.backend_id);
                    return Some((a.backend_id, b));
                }
            }
        }
    }
    if let (Some(h), true) = (hash, row != 0) {
        let m = maglev_size;
        if m != 0 {
            let index = (row - 1).wrapping_mul(m).wrapping_add(h % m);
            if let Some(id) = MAGLEV.get(index).copied().filter(|id| *id != 0) {
                if let Some(found) = backend(id) {
                    remember(id);
                    return Some((id, found));
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
    let found = backend(id)?;
    remember(id);
    Some((id, found))
}
