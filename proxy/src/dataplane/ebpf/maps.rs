//! The reconciler's maps in the kernel (pinned, so they outlive a restart of the proxy).

use std::collections::HashSet;

use aya::maps::{HashMap, LpmTrie, MapData, MapError, lpm_trie::Key};
use rudder_abi::lb::{
    Backend, Backend6, Conntrack, Conntrack6, FlowKey, FlowKey6, PROTO_UDP, Reverse, Reverse6, Service, ServiceKey,
    ServiceKey6, SlotKey, SourceRangeKey, SourceRangeKey6,
};

use super::{
    reconcile::{LbMaps, RangeKey},
    tables::{BackendAddr, FrontendKey, v6_addr, v6_words},
};

pub struct KernelMaps {
    pub services: HashMap<MapData, ServiceKey, Service>,
    pub services6: HashMap<MapData, ServiceKey6, Service>,
    pub slots: HashMap<MapData, SlotKey, u32>,
    pub backends: HashMap<MapData, u32, Backend>,
    pub backends6: HashMap<MapData, u32, Backend6>,
    pub maglev: aya::maps::Array<MapData, u32>,
    pub ranges: LpmTrie<MapData, SourceRangeKey, u8>,
    pub ranges6: LpmTrie<MapData, SourceRangeKey6, u8>,
    pub conntrack: HashMap<MapData, FlowKey, Conntrack>,
    pub reverse: HashMap<MapData, FlowKey, Reverse>,
    pub conntrack6: HashMap<MapData, FlowKey6, Conntrack6>,
    pub reverse6: HashMap<MapData, FlowKey6, Reverse6>,
}

impl KernelMaps {
    /// Takes the reconciler's maps out of a loaded object.
    pub fn take(ebpf: &mut aya::Ebpf) -> Result<Self, super::EbpfError> {
        use super::attach::take;
        use rudder_abi::names;
        Ok(Self {
            services: take(ebpf, names::SERVICES)?,
            services6: take(ebpf, names::SERVICES6)?,
            slots: take(ebpf, names::SLOTS)?,
            backends: take(ebpf, names::BACKENDS)?,
            backends6: take(ebpf, names::BACKENDS6)?,
            maglev: take(ebpf, names::MAGLEV)?,
            ranges: take(ebpf, names::SOURCE_RANGES)?,
            ranges6: take(ebpf, names::SOURCE_RANGES6)?,
            conntrack: take(ebpf, names::CONNTRACK)?,
            reverse: take(ebpf, names::REVERSE)?,
            conntrack6: take(ebpf, names::CONNTRACK6)?,
            reverse6: take(ebpf, names::REVERSE6)?,
        })
    }
}

/// The trie key of an entry; the prefix counts the service id's 32 bits too.
enum TrieKey {
    V4(Key<SourceRangeKey>),
    V6(Key<SourceRangeKey6>),
}

fn range_key((service_id, addr, len): RangeKey) -> TrieKey {
    let prefix = 32 + u32::from(len);
    match addr {
        std::net::IpAddr::V4(a) => TrieKey::V4(Key::new(
            prefix,
            SourceRangeKey {
                service_id,
                addr: u32::from(a).to_be(),
            },
        )),
        std::net::IpAddr::V6(a) => TrieKey::V6(Key::new(
            prefix,
            SourceRangeKey6 {
                service_id,
                addr: v6_words(a),
            },
        )),
    }
}

/// A missing key on delete means the map already says what we want.
fn gone(r: Result<(), MapError>) -> Result<(), MapError> {
    match r {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

impl LbMaps for KernelMaps {
    type Error = MapError;

    fn read_services(&self) -> Result<Vec<(FrontendKey, Service)>, MapError> {
        let v4 = self.services.iter().map(|r| r.map(|(k, v)| (FrontendKey::V4(k), v)));
        let v6 = self.services6.iter().map(|r| r.map(|(k, v)| (FrontendKey::V6(k), v)));
        v4.chain(v6).collect()
    }
    fn read_slots(&self) -> Result<Vec<(SlotKey, u32)>, MapError> {
        self.slots.iter().collect()
    }
    fn read_backends(&self) -> Result<Vec<(u32, BackendAddr)>, MapError> {
        let v4 = self.backends.iter().map(|r| r.map(|(id, b)| (id, BackendAddr::V4(b))));
        let v6 = self.backends6.iter().map(|r| r.map(|(id, b)| (id, BackendAddr::V6(b))));
        v4.chain(v6).collect()
    }
    fn read_ranges(&self) -> Result<Vec<RangeKey>, MapError> {
        let len = |prefix: u32| prefix.saturating_sub(32) as u8;
        let v4 = self.ranges.keys().map(|k| {
            k.map(|k| {
                (
                    k.data().service_id,
                    std::net::Ipv4Addr::from(u32::from_be(k.data().addr)).into(),
                    len(k.prefix_len()),
                )
            })
        });
        let v6 = self
            .ranges6
            .keys()
            .map(|k| k.map(|k| (k.data().service_id, v6_addr(k.data().addr).into(), len(k.prefix_len()))));
        v4.chain(v6).collect()
    }
    fn put_service(&mut self, key: FrontendKey, value: Service) -> Result<(), MapError> {
        match key {
            FrontendKey::V4(k) => self.services.insert(k, value, 0),
            FrontendKey::V6(k) => self.services6.insert(k, value, 0),
        }
    }
    fn del_service(&mut self, key: FrontendKey) -> Result<(), MapError> {
        gone(match key {
            FrontendKey::V4(k) => self.services.remove(&k),
            FrontendKey::V6(k) => self.services6.remove(&k),
        })
    }
    fn put_slot(&mut self, key: SlotKey, backend: u32) -> Result<(), MapError> {
        self.slots.insert(key, backend, 0)
    }
    fn del_slot(&mut self, key: SlotKey) -> Result<(), MapError> {
        gone(self.slots.remove(&key))
    }
    fn put_backend(&mut self, id: u32, backend: BackendAddr) -> Result<(), MapError> {
        match backend {
            BackendAddr::V4(b) => self.backends.insert(id, b, 0),
            BackendAddr::V6(b) => self.backends6.insert(id, b, 0),
        }
    }
    fn del_backend(&mut self, id: u32, backend: BackendAddr) -> Result<(), MapError> {
        gone(match backend {
            BackendAddr::V4(_) => self.backends.remove(&id),
            BackendAddr::V6(_) => self.backends6.remove(&id),
        })
    }
    fn put_maglev(&mut self, entries: &[(u32, u32)]) -> Result<(), MapError> {
        for (index, id) in entries {
            self.maglev.set(*index, *id, 0)?;
        }
        Ok(())
    }
    fn put_range(&mut self, key: RangeKey) -> Result<(), MapError> {
        match range_key(key) {
            TrieKey::V4(k) => self.ranges.insert(&k, 1, 0),
            TrieKey::V6(k) => self.ranges6.insert(&k, 1, 0),
        }
    }
    fn del_range(&mut self, key: RangeKey) -> Result<(), MapError> {
        gone(match range_key(key) {
            TrieKey::V4(k) => self.ranges.remove(&k),
            TrieKey::V6(k) => self.ranges6.remove(&k),
        })
    }
    fn flush_udp_flows(&mut self, gone_backends: &HashSet<(u32, BackendAddr)>) -> Result<usize, MapError> {
        let mut flushed = 0;
        if gone_backends.iter().any(|(_, b)| matches!(b, BackendAddr::V4(_))) {
            let doomed: Vec<(FlowKey, Conntrack)> = self
                .conntrack
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, ct)| {
                    k.proto == PROTO_UDP && gone_backends.contains(&(ct.service_id, BackendAddr::V4(ct.backend)))
                })
                .collect();
            for (k, ct) in &doomed {
                gone(self.conntrack.remove(k))?;
                let (daddr, dport) = if ct.snat_addr != 0 {
                    (ct.snat_addr, ct.snat_port)
                } else {
                    (k.saddr, k.sport)
                };
                let reply = FlowKey {
                    saddr: ct.backend.addr,
                    daddr,
                    sport: ct.backend.port,
                    dport,
                    proto: k.proto,
                    pad: [0; 3],
                };
                gone(self.reverse.remove(&reply))?;
            }
            flushed += doomed.len();
        }
        if gone_backends.iter().any(|(_, b)| matches!(b, BackendAddr::V6(_))) {
            let doomed: Vec<(FlowKey6, Conntrack6)> = self
                .conntrack6
                .iter()
                .filter_map(Result::ok)
                .filter(|(k, ct)| {
                    k.proto == PROTO_UDP && gone_backends.contains(&(ct.service_id, BackendAddr::V6(ct.backend)))
                })
                .collect();
            for (k, ct) in &doomed {
                gone(self.conntrack6.remove(k))?;
                let (daddr, dport) = if ct.snat_addr != [0; 4] {
                    (ct.snat_addr, ct.snat_port)
                } else {
                    (k.saddr, k.sport)
                };
                let reply = FlowKey6 {
                    saddr: ct.backend.addr,
                    daddr,
                    sport: ct.backend.port,
                    dport,
                    proto: k.proto,
                    pad: [0; 3],
                };
                gone(self.reverse6.remove(&reply))?;
            }
            flushed += doomed.len();
        }
        Ok(flushed)
    }
}
