//! Writes the desired state into the BPF maps, touching only what changed (Cilium's
//! loadbalancer reconciler is the model).
//!
//! Ordering is the safety argument: within a Service port, backends and set slots are
//! written first, then the frontend entries that point at them (one atomic map update
//! each), then what nothing points at any more is deleted. A packet therefore sees either
//! the old frontend with its old, still complete set, or the new one; never a count that
//! runs past written slots.
//!
//! The reconciler remembers what it wrote (`ports`, `backends`). After a restart or a failed
//! sync that memory is gone or untrusted: the next sync reads the maps back, writes every
//! port under fresh set ids (each frontend swaps atomically from its old set to its new
//! one, so traffic keeps flowing), then sweeps whatever it did not write.

use std::{
    collections::{BTreeMap, BTreeSet, HashMap, HashSet},
    net::IpAddr,
};

use rudder_abi::lb::{MAX_SERVICE_IDS, Service, SlotKey};

use super::tables::{BackendAddr, FrontendKey, PortTables, Unsupported, port_tables};
use crate::model::{DesiredState, ServicePortName, desired::EndpointSetId};

/// The maps as the reconciler writes them. The kernel implementation is
/// [`super::maps::KernelMaps`]; unit tests use an in-memory one.
pub trait LbMaps {
    type Error: std::error::Error + Send + Sync + 'static;
    fn read_services(&self) -> Result<Vec<(FrontendKey, Service)>, Self::Error>;
    fn read_slots(&self) -> Result<Vec<(SlotKey, u32)>, Self::Error>;
    fn read_backends(&self) -> Result<Vec<(u32, BackendAddr)>, Self::Error>;
    fn read_ranges(&self) -> Result<Vec<RangeKey>, Self::Error>;
    fn put_service(&mut self, key: FrontendKey, value: Service) -> Result<(), Self::Error>;
    fn del_service(&mut self, key: FrontendKey) -> Result<(), Self::Error>;
    fn put_slot(&mut self, key: SlotKey, backend: u32) -> Result<(), Self::Error>;
    fn del_slot(&mut self, key: SlotKey) -> Result<(), Self::Error>;
    fn put_backend(&mut self, id: u32, backend: BackendAddr) -> Result<(), Self::Error>;
    /// Writes Maglev table entries: (index into `RUDDER_MAGLEV`, backend id).
    fn put_maglev(&mut self, entries: &[(u32, u32)]) -> Result<(), Self::Error>;
    fn del_backend(&mut self, id: u32, backend: BackendAddr) -> Result<(), Self::Error>;
    fn put_range(&mut self, key: RangeKey) -> Result<(), Self::Error>;
    fn del_range(&mut self, key: RangeKey) -> Result<(), Self::Error>;
    /// Forgets UDP flows of `service id` to `backend` (a UDP "connection" to a backend that
    /// left would otherwise keep going there). Returns how many went.
    fn flush_udp_flows(&mut self, gone: &HashSet<(u32, BackendAddr)>) -> Result<usize, Self::Error>;
}

/// A source range entry: (service id, network, prefix length).
pub type RangeKey = (u32, IpAddr, u8);

#[derive(Debug, thiserror::Error)]
pub enum ReconcileError<E: std::error::Error + 'static> {
    #[error("BPF map update")]
    Map(#[source] E),
    #[error("more than {0} Service ports; raise --bpf-lb-map-max")]
    OutOfServiceIds(u32),
    #[error("more than {0} endpoint sets need a Maglev table; raise --bpf-lb-maglev-map-max")]
    OutOfMaglevRows(u32),
}

/// Maglev settings: table size M and how many tables (rows) the map holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MaglevConf {
    pub m: u32,
    pub rows: u32,
}

/// One endpoint set as written: its id, backend ids by slot, and its Maglev row (1-based,
/// 0 without Maglev) with the table written there.
#[derive(Debug, Clone, Default)]
struct SetMem {
    set: u32,
    ids: Vec<u32>,
    row: u32,
    table: Vec<u32>,
}

/// A map of a few entries kept as a sorted vector: a port has one or two of each, and a
/// `BTreeMap` of one entry allocates room for eleven (about 1 KiB per port here, 10 MiB
/// at 10k Services).
#[derive(Debug, Clone)]
struct SmallMap<K, V>(Vec<(K, V)>);

impl<K, V> Default for SmallMap<K, V> {
    fn default() -> Self {
        Self(Vec::new())
    }
}

impl<K: Ord, V> SmallMap<K, V> {
    fn get(&self, key: &K) -> Option<&V> {
        self.0
            .binary_search_by(|(k, _)| k.cmp(key))
            .ok()
            .map(|at| &self.0[at].1)
    }

    fn contains_key(&self, key: &K) -> bool {
        self.get(key).is_some()
    }

    fn insert(&mut self, key: K, value: V) {
        match self.0.binary_search_by(|(k, _)| k.cmp(&key)) {
            Ok(at) => self.0[at].1 = value,
            Err(at) => self.0.insert(at, (key, value)),
        }
    }

    fn keys(&self) -> impl Iterator<Item = &K> {
        self.0.iter().map(|(k, _)| k)
    }

    fn values(&self) -> impl Iterator<Item = &V> {
        self.0.iter().map(|(_, v)| v)
    }

    fn iter(&self) -> impl Iterator<Item = (&K, &V)> {
        self.0.iter().map(|(k, v)| (k, v))
    }

    fn shrink_to_fit(&mut self) {
        self.0.shrink_to_fit();
    }
}

/// What one port holds in the maps.
#[derive(Debug, Clone, Default)]
struct PortMem {
    id: u32,
    generation: u32,
    sets: SmallMap<EndpointSetId, SetMem>,
    frontends: SmallMap<FrontendKey, Service>,
    ranges: BTreeSet<RangeKey>,
    cluster_ips: BTreeSet<IpAddr>,
}

#[derive(Debug, Default)]
pub struct Reconciler {
    /// False until the maps were read back (at start and after a failure).
    trusted: bool,
    ports: HashMap<ServicePortName, PortMem>,
    /// BackendAddr → id, and id → (backend, number of set slots holding it).
    backend_ids: HashMap<BackendAddr, u32>,
    backends: HashMap<u32, (BackendAddr, usize)>,
    /// ClusterIP → number of ports with it (its wildcard entry lives while any does).
    wildcards: HashMap<IpAddr, usize>,
    free_service_ids: Vec<u32>,
    next_service_id: u32,
    next_set_id: u32,
    next_backend_id: u32,
    epoch: u32,
    maglev: Option<MaglevConf>,
    free_rows: Vec<u32>,
    next_row: u32,
    /// Rows the maps used at read-back; not reused until the sweep.
    reserved_rows: BTreeSet<u32>,
    /// Service ids the maps held at read-back; not reused until the sweep removed them.
    reserved_ids: BTreeSet<u32>,
    /// Left over from before the read-back; swept after the next full sync.
    stale: Option<Leftovers>,
    /// What the last sync left out, for the log.
    pub unsupported: BTreeSet<(ServicePortName, String)>,
    /// Backends the last sync took out of some frontend (sockets connected to them through
    /// socket LB are the caller's to end).
    pub departed: Vec<BackendAddr>,
    /// Service id → port, for the per-Service counters.
    names: super::stats::IdNames,
    /// Ids index the per-CPU stats map, which has this many entries.
    max_service_ids: u32,
}

#[derive(Debug, Default)]
struct Leftovers {
    services: Vec<FrontendKey>,
    sets: BTreeMap<u32, Vec<u32>>,
    ranges: Vec<RangeKey>,
}

/// What a sync did, for logs and tests.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct SyncStats {
    pub map_writes: usize,
    pub map_deletes: usize,
    pub udp_flows_flushed: usize,
}

impl Reconciler {
    pub fn new() -> Self {
        Self {
            next_service_id: 1,
            next_set_id: 1,
            next_backend_id: 1,
            next_row: 1,
            max_service_ids: MAX_SERVICE_IDS,
            ..Self::default()
        }
    }

    /// Allows ids up to `n` (the stats map's size).
    pub fn with_service_ids(mut self, n: u32) -> Self {
        self.max_service_ids = n;
        self
    }

    /// Picks backends with Maglev tables (for traffic the per-packet path balances).
    pub fn with_maglev(maglev: MaglevConf) -> Self {
        Self {
            maglev: Some(maglev),
            ..Self::new()
        }
    }

    fn alloc_row<E: std::error::Error>(&mut self) -> Result<u32, ReconcileError<E>> {
        let rows = self.maglev.map_or(0, |m| m.rows);
        if let Some(r) = self.free_rows.pop() {
            return Ok(r);
        }
        while self.next_row <= rows {
            let r = self.next_row;
            self.next_row += 1;
            if !self.reserved_rows.contains(&r) {
                return Ok(r);
            }
        }
        Err(ReconcileError::OutOfMaglevRows(rows))
    }

    fn release_row(&mut self, row: u32) {
        if row != 0 {
            self.free_rows.push(row);
        }
    }

    /// The id → port table the counters are labelled from.
    pub fn names(&self) -> super::stats::IdNames {
        std::sync::Arc::clone(&self.names)
    }

    /// Marks the maps' content unknown: the next sync reads them back and rewrites all.
    pub fn distrust(&mut self) {
        self.trusted = false;
    }

    /// Brings the maps to `desired`, visiting `only` the named ports when given (a partial
    /// sync), or every port (and sweeping leftovers) otherwise.
    pub fn sync<M: LbMaps>(
        &mut self,
        maps: &mut M,
        desired: &DesiredState,
        only: Option<&BTreeSet<ServicePortName>>,
    ) -> Result<SyncStats, ReconcileError<M::Error>> {
        let mut run = Run {
            maps,
            stats: SyncStats::default(),
            gone_backends: HashSet::new(),
        };
        let result = self.sync_inner(&mut run, desired, only);
        let departed: HashSet<BackendAddr> = run.gone_backends.iter().map(|(_, b)| *b).collect();
        self.departed = departed.into_iter().collect();
        if result.is_err() {
            self.trusted = false;
        }
        result.map(|()| run.stats)
    }

    fn sync_inner<M: LbMaps>(
        &mut self,
        run: &mut Run<'_, M>,
        desired: &DesiredState,
        only: Option<&BTreeSet<ServicePortName>>,
    ) -> Result<(), ReconcileError<M::Error>> {
        let mut only = only;
        if !self.trusted {
            self.read_back(run.maps)?;
            only = None;
        }
        self.epoch = self.epoch.wrapping_add(1);
        let names: Vec<ServicePortName> = match only {
            Some(names) => names.iter().cloned().collect(),
            None => {
                let mut all: BTreeSet<ServicePortName> = desired.ports.keys().cloned().collect();
                all.extend(self.ports.keys().cloned());
                all.into_iter().collect()
            }
        };
        for name in &names {
            let tables = desired.ports.get(name).map(|p| {
                let (t, left_out) = port_tables(name, p);
                for why in left_out {
                    let why = match why {
                        Unsupported::Sctp => "SCTP",
                    };
                    self.unsupported.insert((name.clone(), why.to_owned()));
                }
                t
            });
            self.port(run, name, tables)?;
        }
        if only.is_none() {
            self.sweep(run)?;
        }
        // Backends last: no slot refers to them any more.
        let unused: Vec<(u32, BackendAddr)> = self
            .backends
            .iter()
            .filter(|(_, (_, n))| *n == 0)
            .map(|(id, (b, _))| (*id, *b))
            .collect();
        for (id, b) in unused {
            run.maps.del_backend(id, b).map_err(ReconcileError::Map)?;
            run.stats.map_deletes += 1;
            self.backends.remove(&id);
            self.backend_ids.remove(&b);
        }
        if !run.gone_backends.is_empty() {
            run.stats.udp_flows_flushed = run
                .maps
                .flush_udp_flows(&run.gone_backends)
                .map_err(ReconcileError::Map)?;
        }
        self.trusted = true;
        Ok(())
    }

    /// Loads what the maps hold: backends keep their ids (so affinity survives), the rest
    /// becomes leftovers to sweep once the new entries are in place.
    fn read_back<M: LbMaps>(&mut self, maps: &M) -> Result<(), ReconcileError<M::Error>> {
        let services = maps.read_services().map_err(ReconcileError::Map)?;
        let slots = maps.read_slots().map_err(ReconcileError::Map)?;
        let backends = maps.read_backends().map_err(ReconcileError::Map)?;
        let ranges = maps.read_ranges().map_err(ReconcileError::Map)?;
        self.ports.clear();
        self.names.lock().unwrap_or_else(|p| p.into_inner()).clear();
        self.wildcards.clear();
        self.free_service_ids.clear();
        self.backends = backends.iter().map(|(id, b)| (*id, (*b, 0))).collect();
        self.backend_ids = backends.iter().map(|(id, b)| (*b, *id)).collect();
        let mut sets: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (k, _) in &slots {
            sets.entry(k.set).or_default().push(k.slot);
        }
        self.next_set_id = sets.keys().max().map_or(1, |m| m + 1).max(self.next_set_id);
        self.next_backend_id = backends
            .iter()
            .map(|(id, _)| id + 1)
            .max()
            .unwrap_or(1)
            .max(self.next_backend_id);
        let used_ids: BTreeSet<u32> = services.iter().map(|(_, s)| s.id).collect();
        self.reserved_rows = services
            .iter()
            .flat_map(|(_, s)| [s.row, s.sc_row])
            .filter(|r| *r != 0)
            .collect();
        self.free_rows.clear();
        self.next_row = 1;
        self.next_service_id = 1;
        self.free_service_ids = Vec::new();
        // Fresh service ids avoid the old ones, so the old frontends' counters and
        // affinity entries never leak into new ports.
        self.reserved_ids = used_ids;
        self.stale = Some(Leftovers {
            services: services.into_iter().map(|(k, _)| k).collect(),
            sets,
            ranges,
        });
        Ok(())
    }

    fn alloc_service_id<E: std::error::Error>(&mut self) -> Result<u32, ReconcileError<E>> {
        if let Some(id) = self.free_service_ids.pop() {
            return Ok(id);
        }
        while self.next_service_id < self.max_service_ids {
            let id = self.next_service_id;
            self.next_service_id += 1;
            if !self.reserved_ids.contains(&id) {
                return Ok(id);
            }
        }
        Err(ReconcileError::OutOfServiceIds(self.max_service_ids))
    }

    fn backend_id<M: LbMaps>(&mut self, run: &mut Run<'_, M>, b: BackendAddr) -> Result<u32, ReconcileError<M::Error>> {
        if let Some(id) = self.backend_ids.get(&b) {
            if let Some((_, n)) = self.backends.get_mut(id) {
                *n += 1;
            }
            return Ok(*id);
        }
        let id = self.next_backend_id;
        self.next_backend_id += 1;
        run.maps.put_backend(id, b).map_err(ReconcileError::Map)?;
        run.stats.map_writes += 1;
        self.backends.insert(id, (b, 1));
        self.backend_ids.insert(b, id);
        Ok(id)
    }

    fn release_backend(&mut self, id: u32) {
        if let Some((_, n)) = self.backends.get_mut(&id) {
            *n = n.saturating_sub(1);
        }
    }

    /// Brings one port to `tables` (`None`: remove it), in the order the module docs give.
    fn port<M: LbMaps>(
        &mut self,
        run: &mut Run<'_, M>,
        name: &ServicePortName,
        tables: Option<PortTables>,
    ) -> Result<(), ReconcileError<M::Error>> {
        let old = self.ports.remove(name);
        let Some(tables) = tables else {
            if let Some(old) = old {
                self.remove_port(run, old)?;
            }
            return Ok(());
        };
        let mut mem = match &old {
            Some(o) => PortMem {
                id: o.id,
                generation: o.generation,
                ..PortMem::default()
            },
            None => PortMem {
                id: self.alloc_service_id()?,
                generation: self.epoch,
                ..PortMem::default()
            },
        };
        // 1. Backends and slots.
        let mut lost_backend = false;
        for (set_id, backends) in &tables.sets {
            let mut ids = Vec::with_capacity(backends.len());
            for b in backends {
                ids.push(self.backend_id(run, *b)?);
            }
            let old_set = old.as_ref().and_then(|o| o.sets.get(set_id)).cloned();
            let (set, old_ids) = match &old_set {
                Some(o) => (o.set, o.ids.clone()),
                None => {
                    let set = self.next_set_id;
                    self.next_set_id += 1;
                    (set, Vec::new())
                }
            };
            for (slot, id) in ids.iter().enumerate() {
                if old_ids.get(slot) != Some(id) {
                    run.maps
                        .put_slot(SlotKey { set, slot: slot as u32 }, *id)
                        .map_err(ReconcileError::Map)?;
                    run.stats.map_writes += 1;
                }
            }
            // A set: a Service with thousands of endpoints must not cost their square.
            let current: std::collections::HashSet<&u32> = ids.iter().collect();
            for gone in old_ids.iter().filter(|o| !current.contains(o)) {
                lost_backend = true;
                if let Some((b, _)) = self.backends.get(gone) {
                    run.gone_backends.insert((mem.id, *b));
                }
            }
            let (row, table) = match self.maglev {
                Some(conf) if !ids.is_empty() => {
                    let row = match &old_set {
                        Some(o) if o.row != 0 => o.row,
                        _ => self.alloc_row()?,
                    };
                    let keys: Vec<super::maglev::BackendKey> = backends
                        .iter()
                        .map(|b| {
                            let a = std::net::SocketAddr::from(*b);
                            super::maglev::BackendKey {
                                address: a.ip(),
                                port: a.port(),
                            }
                        })
                        .collect();
                    let table: Vec<u32> = super::maglev::table(&keys, conf.m)
                        .into_iter()
                        .map(|i| ids[i as usize])
                        .collect();
                    let old_table = old_set
                        .as_ref()
                        .filter(|o| o.row == row)
                        .map(|o| o.table.as_slice())
                        .unwrap_or(&[]);
                    let base = (row - 1) * conf.m;
                    let changed: Vec<(u32, u32)> = table
                        .iter()
                        .enumerate()
                        .filter(|(i, id)| old_table.get(*i) != Some(*id))
                        .map(|(i, id)| (base + i as u32, *id))
                        .collect();
                    if !changed.is_empty() {
                        run.maps.put_maglev(&changed).map_err(ReconcileError::Map)?;
                        run.stats.map_writes += changed.len();
                    }
                    (row, table)
                }
                _ => (0, Vec::new()),
            };
            mem.sets.insert(*set_id, SetMem { set, ids, row, table });
        }
        if lost_backend {
            mem.generation = self.epoch;
        }
        // 2. Source ranges, then the frontends that check them.
        for (key, spec) in &tables.frontends {
            for (net, len) in &spec.source_ranges {
                mem.ranges.insert((mem.id, *net, *len));
            }
            let lookup = |id: Option<EndpointSetId>| {
                id.and_then(|id| mem.sets.get(&id))
                    .map_or((0, 0, 0), |s| (s.set, s.ids.len() as u32, s.row))
            };
            let (set, count, row) = lookup(spec.set);
            let (sc_set, sc_count, sc_row) = lookup(spec.short_circuit);
            let value = Service {
                id: mem.id,
                set,
                count,
                sc_set,
                sc_count,
                affinity_timeout: tables.affinity_timeout.unwrap_or(0),
                generation: mem.generation,
                flags: spec.flags,
                action: spec.action,
                pad: 0,
                row,
                sc_row,
            };
            mem.frontends.insert(*key, value);
        }
        let old_ranges = old.as_ref().map(|o| o.ranges.clone()).unwrap_or_default();
        for r in mem.ranges.difference(&old_ranges) {
            run.maps.put_range(*r).map_err(ReconcileError::Map)?;
            run.stats.map_writes += 1;
        }
        for (key, value) in mem.frontends.iter() {
            if old.as_ref().and_then(|o| o.frontends.get(key)) != Some(value) {
                run.maps.put_service(*key, *value).map_err(ReconcileError::Map)?;
                run.stats.map_writes += 1;
            }
        }
        for ip in tables
            .cluster_ips
            .difference(&old.as_ref().map(|o| o.cluster_ips.clone()).unwrap_or_default())
        {
            self.add_wildcard(run, *ip)?;
        }
        mem.cluster_ips = tables.cluster_ips;
        // 3. What nothing points at any more.
        if let Some(old) = old {
            for key in old.frontends.keys().filter(|k| !mem.frontends.contains_key(k)) {
                run.maps.del_service(*key).map_err(ReconcileError::Map)?;
                run.stats.map_deletes += 1;
            }
            for r in old.ranges.difference(&mem.ranges) {
                run.maps.del_range(*r).map_err(ReconcileError::Map)?;
                run.stats.map_deletes += 1;
            }
            for ip in old.cluster_ips.difference(&mem.cluster_ips) {
                self.drop_wildcard(run, *ip)?;
            }
            for (set_id, o) in old.sets.iter() {
                let new = mem.sets.get(set_id);
                let keep = new.map_or(0, |n| n.ids.len());
                for slot in keep..o.ids.len() {
                    run.maps
                        .del_slot(SlotKey {
                            set: o.set,
                            slot: slot as u32,
                        })
                        .map_err(ReconcileError::Map)?;
                    run.stats.map_deletes += 1;
                }
                for id in &o.ids {
                    self.release_backend(*id);
                }
                if new.map_or(0, |n| n.row) != o.row {
                    self.release_row(o.row);
                }
            }
        }
        self.names
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(mem.id, name.clone());
        mem.sets.shrink_to_fit();
        mem.frontends.shrink_to_fit();
        self.ports.insert(name.clone(), mem);
        Ok(())
    }

    fn remove_port<M: LbMaps>(&mut self, run: &mut Run<'_, M>, old: PortMem) -> Result<(), ReconcileError<M::Error>> {
        for key in old.frontends.keys() {
            run.maps.del_service(*key).map_err(ReconcileError::Map)?;
            run.stats.map_deletes += 1;
        }
        for r in &old.ranges {
            run.maps.del_range(*r).map_err(ReconcileError::Map)?;
            run.stats.map_deletes += 1;
        }
        for ip in &old.cluster_ips {
            self.drop_wildcard(run, *ip)?;
        }
        for SetMem { set, ids, row, .. } in old.sets.values() {
            self.release_row(*row);
            for (slot, id) in ids.iter().enumerate() {
                run.maps
                    .del_slot(SlotKey {
                        set: *set,
                        slot: slot as u32,
                    })
                    .map_err(ReconcileError::Map)?;
                run.stats.map_deletes += 1;
                if let Some((b, _)) = self.backends.get(id) {
                    run.gone_backends.insert((old.id, *b));
                }
                self.release_backend(*id);
            }
        }
        self.names.lock().unwrap_or_else(|p| p.into_inner()).remove(&old.id);
        self.free_service_ids.push(old.id);
        Ok(())
    }

    fn add_wildcard<M: LbMaps>(&mut self, run: &mut Run<'_, M>, ip: IpAddr) -> Result<(), ReconcileError<M::Error>> {
        let n = self.wildcards.entry(ip).or_default();
        *n += 1;
        if *n == 1 {
            run.maps
                .put_service(wildcard_key(ip), wildcard())
                .map_err(ReconcileError::Map)?;
            run.stats.map_writes += 1;
        }
        Ok(())
    }

    fn drop_wildcard<M: LbMaps>(&mut self, run: &mut Run<'_, M>, ip: IpAddr) -> Result<(), ReconcileError<M::Error>> {
        if let Some(n) = self.wildcards.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.wildcards.remove(&ip);
                run.maps.del_service(wildcard_key(ip)).map_err(ReconcileError::Map)?;
                run.stats.map_deletes += 1;
            }
        }
        Ok(())
    }

    /// Deletes what was in the maps before the read-back and is not part of the new state.
    fn sweep<M: LbMaps>(&mut self, run: &mut Run<'_, M>) -> Result<(), ReconcileError<M::Error>> {
        let Some(stale) = self.stale.take() else { return Ok(()) };
        let live_services: HashSet<FrontendKey> = self
            .ports
            .values()
            .flat_map(|p| p.frontends.keys().copied())
            .chain(self.wildcards.keys().map(|ip| wildcard_key(*ip)))
            .collect();
        for key in stale.services.iter().filter(|k| !live_services.contains(k)) {
            run.maps.del_service(*key).map_err(ReconcileError::Map)?;
            run.stats.map_deletes += 1;
        }
        let live_sets: HashSet<u32> = self
            .ports
            .values()
            .flat_map(|p| p.sets.values().map(|s| s.set))
            .collect();
        for (set, slots) in stale.sets.iter().filter(|(s, _)| !live_sets.contains(s)) {
            for slot in slots {
                run.maps
                    .del_slot(SlotKey { set: *set, slot: *slot })
                    .map_err(ReconcileError::Map)?;
                run.stats.map_deletes += 1;
            }
        }
        let live_ranges: HashSet<RangeKey> = self.ports.values().flat_map(|p| p.ranges.iter().copied()).collect();
        for r in stale.ranges.iter().filter(|r| !live_ranges.contains(r)) {
            run.maps.del_range(*r).map_err(ReconcileError::Map)?;
            run.stats.map_deletes += 1;
        }
        self.reserved_ids.clear();
        self.reserved_rows.clear();
        Ok(())
    }
}

struct Run<'a, M> {
    maps: &'a mut M,
    stats: SyncStats,
    gone_backends: HashSet<(u32, BackendAddr)>,
}

fn wildcard_key(ip: IpAddr) -> FrontendKey {
    FrontendKey::wildcard(ip)
}

fn wildcard() -> Service {
    Service {
        action: rudder_abi::lb::ACTION_REJECT,
        flags: rudder_abi::lb::flags::WILDCARD,
        ..Service::default()
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;
    use crate::model::fixtures::web_state;

    #[derive(Debug, thiserror::Error)]
    #[error("fake map error")]
    struct FakeError;

    /// The maps as plain collections, with a log of every operation in order.
    #[derive(Default)]
    struct FakeMaps {
        services: BTreeMap<FrontendKey, Service>,
        slots: BTreeMap<SlotKey, u32>,
        backends: BTreeMap<u32, BackendAddr>,
        ranges: BTreeSet<RangeKey>,
        maglev: BTreeMap<u32, u32>,
        log: Vec<String>,
    }

    impl LbMaps for FakeMaps {
        type Error = FakeError;
        fn read_services(&self) -> Result<Vec<(FrontendKey, Service)>, FakeError> {
            Ok(self.services.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn read_slots(&self) -> Result<Vec<(SlotKey, u32)>, FakeError> {
            Ok(self.slots.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn read_backends(&self) -> Result<Vec<(u32, BackendAddr)>, FakeError> {
            Ok(self.backends.iter().map(|(k, v)| (*k, *v)).collect())
        }
        fn read_ranges(&self) -> Result<Vec<RangeKey>, FakeError> {
            Ok(self.ranges.iter().copied().collect())
        }
        fn put_service(&mut self, key: FrontendKey, value: Service) -> Result<(), FakeError> {
            self.log.push(format!("put service {}", key.port()));
            self.services.insert(key, value);
            Ok(())
        }
        fn del_service(&mut self, key: FrontendKey) -> Result<(), FakeError> {
            self.log.push(format!("del service {}", key.port()));
            self.services.remove(&key);
            Ok(())
        }
        fn put_slot(&mut self, key: SlotKey, backend: u32) -> Result<(), FakeError> {
            self.log.push(format!("put slot {}", key.slot));
            self.slots.insert(key, backend);
            Ok(())
        }
        fn del_slot(&mut self, key: SlotKey) -> Result<(), FakeError> {
            self.log.push(format!("del slot {}", key.slot));
            self.slots.remove(&key);
            Ok(())
        }
        fn put_backend(&mut self, id: u32, backend: BackendAddr) -> Result<(), FakeError> {
            self.log.push("put backend".into());
            self.backends.insert(id, backend);
            Ok(())
        }
        fn del_backend(&mut self, id: u32, _: BackendAddr) -> Result<(), FakeError> {
            self.log.push("del backend".into());
            self.backends.remove(&id);
            Ok(())
        }
        fn put_maglev(&mut self, entries: &[(u32, u32)]) -> Result<(), FakeError> {
            self.log.push(format!("put maglev {}", entries.len()));
            self.maglev.extend(entries.iter().copied());
            Ok(())
        }
        fn put_range(&mut self, key: RangeKey) -> Result<(), FakeError> {
            self.ranges.insert(key);
            Ok(())
        }
        fn del_range(&mut self, key: RangeKey) -> Result<(), FakeError> {
            self.ranges.remove(&key);
            Ok(())
        }
        fn flush_udp_flows(&mut self, _: &HashSet<(u32, BackendAddr)>) -> Result<usize, FakeError> {
            Ok(0)
        }
    }

    /// What a packet would see: per frontend, its action and the backends of its set, in
    /// slot order. Ids do not appear, so two syncs that chose different ids compare equal.
    fn resolved(maps: &FakeMaps) -> BTreeMap<FrontendKey, (u8, Vec<BackendAddr>)> {
        maps.services
            .iter()
            .map(|(k, s)| {
                let backends = (0..s.count)
                    .map(|slot| {
                        let id = maps.slots[&SlotKey { set: s.set, slot }];
                        maps.backends[&id]
                    })
                    .collect();
                (*k, (s.action, backends))
            })
            .collect()
    }

    fn touched(state: &DesiredState) -> BTreeSet<ServicePortName> {
        state.ports.keys().cloned().collect()
    }

    #[test]
    fn first_sync_writes_backends_and_slots_before_the_frontend() {
        let mut maps = FakeMaps::default();
        let state = web_state(&["10.244.2.10", "10.244.2.11", "10.244.2.12"]);
        Reconciler::new().sync(&mut maps, &state, None).unwrap();
        let first_service = maps.log.iter().position(|l| l.starts_with("put service")).unwrap();
        let last_slot = maps.log.iter().rposition(|l| l.starts_with("put slot")).unwrap();
        assert!(last_slot < first_service, "{:?}", maps.log);
        let r = resolved(&maps);
        // The ClusterIP:80 frontend and its wildcard.
        assert_eq!(r.len(), 2);
        let (action, backends) = r.values().find(|(_, b)| !b.is_empty()).unwrap();
        assert_eq!(*action, rudder_abi::lb::ACTION_FORWARD);
        assert_eq!(backends.len(), 3);
    }

    #[test]
    fn replacing_one_endpoint_touches_a_handful_of_entries() {
        let mut maps = FakeMaps::default();
        let mut r = Reconciler::new();
        let before = web_state(&["10.244.2.10", "10.244.2.11", "10.244.2.12"]);
        r.sync(&mut maps, &before, None).unwrap();
        maps.log.clear();
        let after = web_state(&["10.244.2.10", "10.244.2.11", "10.244.2.13"]);
        let stats = r.sync(&mut maps, &after, Some(&touched(&after))).unwrap();
        // The new backend, its slot, the frontend (new generation: a backend left), then
        // the old backend goes.
        assert_eq!(maps.log, ["put backend", "put slot 2", "put service 80", "del backend"]);
        assert_eq!(stats.map_writes + stats.map_deletes, 4);
        assert_eq!(resolved(&maps), {
            let mut fresh = FakeMaps::default();
            Reconciler::new().sync(&mut fresh, &after, None).unwrap();
            resolved(&fresh)
        });
    }

    #[test]
    fn shrinking_a_set_updates_the_count_before_deleting_slots() {
        let mut maps = FakeMaps::default();
        let mut r = Reconciler::new();
        let before = web_state(&["10.244.2.10", "10.244.2.11", "10.244.2.12"]);
        r.sync(&mut maps, &before, None).unwrap();
        maps.log.clear();
        let after = web_state(&["10.244.2.10"]);
        r.sync(&mut maps, &after, Some(&touched(&after))).unwrap();
        let service = maps.log.iter().position(|l| l == "put service 80").unwrap();
        let slot_deletes: Vec<usize> = maps
            .log
            .iter()
            .enumerate()
            .filter(|(_, l)| l.starts_with("del slot"))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(slot_deletes.len(), 2);
        assert!(slot_deletes.iter().all(|i| *i > service), "{:?}", maps.log);
        assert_eq!(maps.slots.len(), 1);
        assert_eq!(maps.backends.len(), 1);
    }

    #[test]
    fn a_restarted_reconciler_takes_over_the_maps_and_leaves_nothing_stale() {
        let mut maps = FakeMaps::default();
        let before = web_state(&["10.244.2.10", "10.244.2.11", "10.244.2.12"]);
        Reconciler::new().sync(&mut maps, &before, None).unwrap();
        let backend_ids: BTreeMap<u32, BackendAddr> = maps.backends.clone();
        // A new process with the same maps, and one endpoint changed meanwhile.
        let after = web_state(&["10.244.2.10", "10.244.2.11", "10.244.2.13"]);
        let mut restarted = Reconciler::new();
        restarted.sync(&mut maps, &after, Some(&BTreeSet::new())).unwrap();
        let mut fresh = FakeMaps::default();
        Reconciler::new().sync(&mut fresh, &after, None).unwrap();
        assert_eq!(resolved(&maps), resolved(&fresh));
        assert_eq!(maps.slots.len(), fresh.slots.len(), "old sets swept");
        assert_eq!(maps.backends.len(), 3);
        // Surviving backends keep their ids (affinity entries name them).
        for (id, b) in &backend_ids {
            if std::net::SocketAddr::from(*b).ip() != std::net::Ipv4Addr::new(10, 244, 2, 12) {
                assert_eq!(maps.backends.get(id), Some(b));
            }
        }
    }

    #[test]
    fn removing_the_service_empties_the_maps() {
        let mut maps = FakeMaps::default();
        let mut r = Reconciler::new();
        let before = web_state(&["10.244.2.10", "10.244.2.11"]);
        r.sync(&mut maps, &before, None).unwrap();
        let names = touched(&before);
        r.sync(&mut maps, &DesiredState::default(), Some(&names)).unwrap();
        assert!(maps.services.is_empty() && maps.slots.is_empty() && maps.backends.is_empty());
    }
}
