//! Every load-balancer map, declared once. Names come from `rudder_abi::names`.

use aya_ebpf::{
    macros::map,
    maps::{Array, HashMap, LpmTrie, LruHashMap, PerCpuArray, RingBuf},
};
use rudder_abi::{
    PacketCounters,
    lb::{
        Affinity, AffinityKey, AffinityKey6, Backend, Backend6, Config, Config6, Conntrack, Conntrack6, FlowKey,
        FlowKey6, MAX_AFFINITY, MAX_BACKENDS, MAX_FLOWS, MAX_SERVICE_IDS, MAX_SERVICES, MAX_SLOTS, MAX_SOURCE_RANGES,
        Reverse, Reverse6, Service, ServiceKey, ServiceKey6, SlotKey, SockForward, SockForwardKey, SockForwardKey6,
        SockReverse, SockReverse6, SockReverseKey, SockReverseKey6, SourceRangeKey, SourceRangeKey6,
    },
};

#[map(name = "RUDDER_SERVICES")]
pub static SERVICES: HashMap<ServiceKey, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RUDDER_SERVICES6")]
pub static SERVICES6: HashMap<ServiceKey6, Service> = HashMap::with_max_entries(MAX_SERVICES, 0);

#[map(name = "RUDDER_SLOTS")]
pub static SLOTS: HashMap<SlotKey, u32> = HashMap::with_max_entries(MAX_SLOTS, 0);

#[map(name = "RUDDER_BACKENDS")]
pub static BACKENDS: HashMap<u32, Backend> = HashMap::with_max_entries(MAX_BACKENDS, 0);

#[map(name = "RUDDER_BACKENDS6")]
pub static BACKENDS6: HashMap<u32, Backend6> = HashMap::with_max_entries(MAX_BACKENDS, 0);

/// Sized by user space (rows × M) when Maglev is on.
#[map(name = "RUDDER_MAGLEV")]
pub static MAGLEV: Array<u32> = Array::with_max_entries(1, 0);

#[map(name = "RUDDER_CONNTRACK")]
pub static CONNTRACK: LruHashMap<FlowKey, Conntrack> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "RUDDER_REVERSE")]
pub static REVERSE: LruHashMap<FlowKey, Reverse> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "RUDDER_CONNTRACK6")]
pub static CONNTRACK6: LruHashMap<FlowKey6, Conntrack6> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "RUDDER_REVERSE6")]
pub static REVERSE6: LruHashMap<FlowKey6, Reverse6> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

/// Room for a new IPv6 flow's conntrack entry and route lookup while they are assembled:
/// the IPv6 path has too little stack for them (per CPU; not pinned, never read by user
/// space).
pub struct Scratch6 {
    pub ct: Conntrack6,
    pub fib: super::header::Fib,
    /// A claimed port's reply key, and the key of the flow that held it before.
    pub reply: FlowKey6,
    pub owner: FlowKey6,
}

#[map(name = "RUDDER_SCRATCH6")]
pub static SCRATCH6: PerCpuArray<Scratch6> = PerCpuArray::with_max_entries(1, 0);

#[map(name = "RUDDER_AFFINITY6")]
pub static AFFINITY6: LruHashMap<AffinityKey6, Affinity> = LruHashMap::with_max_entries(MAX_AFFINITY, 0);

#[map(name = "RUDDER_AFFINITY")]
pub static AFFINITY: LruHashMap<AffinityKey, Affinity> = LruHashMap::with_max_entries(MAX_AFFINITY, 0);

#[map(name = "RUDDER_SOURCE_RANGES")]
pub static SOURCE_RANGES: LpmTrie<SourceRangeKey, u8> = LpmTrie::with_max_entries(MAX_SOURCE_RANGES, 0);

#[map(name = "RUDDER_SOURCE_RANGES6")]
pub static SOURCE_RANGES6: LpmTrie<SourceRangeKey6, u8> = LpmTrie::with_max_entries(MAX_SOURCE_RANGES, 0);

#[map(name = "RUDDER_SOCK_REVERSE")]
pub static SOCK_REVERSE: LruHashMap<SockReverseKey, SockReverse> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "RUDDER_SOCK_FORWARD")]
pub static SOCK_FORWARD: LruHashMap<SockForwardKey, SockForward> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "RUDDER_SOCK_REVERSE6")]
pub static SOCK_REVERSE6: LruHashMap<SockReverseKey6, SockReverse6> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "RUDDER_SOCK_FORWARD6")]
pub static SOCK_FORWARD6: LruHashMap<SockForwardKey6, SockForward> = LruHashMap::with_max_entries(MAX_FLOWS, 0);

#[map(name = "RUDDER_SERVICE_STATS")]
pub static SERVICE_STATS: PerCpuArray<PacketCounters> = PerCpuArray::with_max_entries(MAX_SERVICE_IDS, 0);

/// Flow events for `rudder-proxy flows`; full means dropped events, never a dropped packet.
#[map(name = "RUDDER_FLOW_EVENTS")]
pub static FLOW_EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

#[map(name = "RUDDER_CONFIG")]
pub static CONFIG: Array<Config> = Array::with_max_entries(1, 0);

#[map(name = "RUDDER_CONFIG6")]
pub static CONFIG6: Array<Config6> = Array::with_max_entries(1, 0);

#[inline(always)]
pub fn config() -> Option<&'static Config> {
    CONFIG.get(0)
}

#[inline(always)]
pub fn config6() -> Option<&'static Config6> {
    CONFIG6.get(0)
}

#[inline(always)]
pub fn count(service_id: u32, bytes: u32) {
    if let Some(c) = SERVICE_STATS.get_ptr_mut(service_id) {
        // SAFETY: per-CPU slot; nothing else writes it while this program runs.
        unsafe {
            (*c).packets += 1;
            (*c).bytes += bytes as u64;
        }
    }
}

/// What the XDP program did with the packets it looked at: sent back out, or passed to tc.
#[map(name = "RUDDER_XDP_STATS")]
pub static XDP_STATS: PerCpuArray<PacketCounters> = PerCpuArray::with_max_entries(2, 0);
