//! Where the agent's memory goes at scale (issue #17's memory target): the heap each layer
//! holds after a cold sync of N Services × E endpoints, as the watches, trackers, sync loop
//! and backends keep them. Objects are decoded from the JSON an API server sends (metadata
//! with uid, managedFields and owner references, defaulted specs, status), as the watcher
//! does. Ignored by default (it is a measurement, not a check):
//!
//! `cargo test -p rudder-proxy --test memory -- --ignored --nocapture`
//! (`RUDDER_MEM_SERVICES` sets N, default 10000).

use std::{
    alloc::{GlobalAlloc, Layout, System},
    collections::{BTreeSet, HashSet},
    net::IpAddr,
    sync::atomic::{AtomicIsize, Ordering},
    time::SystemTime,
};

use k8s_openapi::api::{core::v1::Service, discovery::v1::EndpointSlice};
use rudder_abi::lb::{Service as LbService, SlotKey};
use rudder_proxy::{
    dataplane::{
        ebpf::{
            reconcile::{LbMaps, RangeKey, Reconciler},
            tables::{BackendAddr, FrontendKey},
        },
        iptables::{self, ledger::Ledger},
        nftables,
    },
    model::{
        DesiredState, EndpointsChangeTracker, EndpointsMap, ModelConfig, NodeInfo, ServiceChangeTracker, ServicePortMap,
    },
};

/// Counts live heap bytes.
struct Counting;

static LIVE: AtomicIsize = AtomicIsize::new(0);

// SAFETY: every call is forwarded to the system allocator unchanged.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        LIVE.fetch_add(new_size as isize - layout.size() as isize, Ordering::Relaxed);
        // SAFETY: forwarded as given.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn live() -> isize {
    LIVE.load(Ordering::Relaxed)
}

fn mib(bytes: isize) -> String {
    format!("{:8.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

fn uid(kind: u32, i: usize) -> String {
    format!("{kind:08x}-{:04x}-4000-8000-{i:012x}", i % 0xffff)
}

fn endpoint_ip(j: usize) -> String {
    format!("10.{}.{}.{}", 128 + (j >> 16), (j >> 8) & 255, j & 255)
}

/// Service i as the API server returns it from a list or watch.
fn service_json(i: usize) -> String {
    let ip = format!("10.96.{}.{}", i / 250, i % 250 + 1);
    serde_json::json!({
        "apiVersion": "v1", "kind": "Service",
        "metadata": {
            "name": format!("svc-{i}"), "namespace": "bench", "uid": uid(1, i),
            "resourceVersion": format!("{}", 100_000 + i), "creationTimestamp": "2026-12-07T10:00:00Z",
            "labels": {"app": format!("svc-{i}")},
            "managedFields": [{
                "manager": "bench", "operation": "Update", "apiVersion": "v1", "time": "2026-12-07T10:00:00Z",
                "fieldsType": "FieldsV1",
                "fieldsV1": {"f:metadata": {"f:labels": {".": {}, "f:app": {}}},
                             "f:spec": {"f:internalTrafficPolicy": {}, "f:ports": {".": {},
                                 "k:{\"port\":80,\"protocol\":\"TCP\"}": {".": {}, "f:name": {}, "f:port": {},
                                     "f:protocol": {}, "f:targetPort": {}}},
                                 "f:selector": {}, "f:sessionAffinity": {}, "f:type": {}}}
            }]
        },
        "spec": {
            "clusterIP": ip, "clusterIPs": [ip], "ipFamilies": ["IPv4"], "ipFamilyPolicy": "SingleStack",
            "internalTrafficPolicy": "Cluster", "sessionAffinity": "None", "type": "ClusterIP",
            "selector": {"app": format!("svc-{i}")},
            "ports": [{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]
        },
        "status": {"loadBalancer": {}}
    })
    .to_string()
}

/// Service i's slice as the EndpointSlice controller writes it.
fn slice_json(i: usize, endpoints: usize) -> String {
    let eps: Vec<_> = (0..endpoints)
        .map(|k| {
            let j = i * endpoints + k;
            serde_json::json!({
                "addresses": [endpoint_ip(j)],
                "conditions": {"ready": true, "serving": true, "terminating": false},
                "nodeName": if k % 2 == 0 { "node-1" } else { "node-2" },
                "targetRef": {"kind": "Pod", "namespace": "bench", "name": format!("svc-{i}-pod-{k}"),
                              "uid": uid(3, j)}
            })
        })
        .collect();
    let mut fields = serde_json::Map::new();
    for k in 0..endpoints {
        fields.insert(
            format!("k:{{\"addresses\":[\"{}\"]}}", endpoint_ip(i * endpoints + k)),
            serde_json::json!({".": {}, "f:addresses": {}, "f:conditions": {".": {}, "f:ready": {}, "f:serving": {},
                "f:terminating": {}}, "f:nodeName": {}, "f:targetRef": {}}),
        );
    }
    serde_json::json!({
        "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
        "metadata": {
            "name": format!("svc-{i}-x7k2p"), "generateName": format!("svc-{i}-"), "namespace": "bench",
            "uid": uid(2, i), "resourceVersion": format!("{}", 200_000 + i),
            "creationTimestamp": "2026-12-07T10:00:01Z",
            "labels": {"kubernetes.io/service-name": format!("svc-{i}"),
                       "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io"},
            "annotations": {"endpoints.kubernetes.io/last-change-trigger-time": "2026-12-07T10:00:01Z"},
            "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": format!("svc-{i}"),
                                 "uid": uid(1, i), "controller": true, "blockOwnerDeletion": true}],
            "managedFields": [{
                "manager": "endpointslice-controller", "operation": "Apply", "apiVersion": "discovery.k8s.io/v1",
                "time": "2026-12-07T10:00:01Z", "fieldsType": "FieldsV1",
                "fieldsV1": {"f:addressType": {}, "f:endpoints": fields,
                             "f:metadata": {"f:labels": {"f:kubernetes.io/service-name": {}}},
                             "f:ports": {"k:{\"name\":\"http\",\"port\":8080,\"protocol\":\"TCP\"}": {}}}
            }]
        },
        "addressType": "IPv4",
        "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
        "endpoints": eps
    })
    .to_string()
}

/// Maps that keep nothing: only the reconciler's own memory is measured.
struct NullMaps;

impl LbMaps for NullMaps {
    type Error = std::io::Error;
    fn read_services(&self) -> Result<Vec<(FrontendKey, LbService)>, Self::Error> {
        Ok(Vec::new())
    }
    fn read_slots(&self) -> Result<Vec<(SlotKey, u32)>, Self::Error> {
        Ok(Vec::new())
    }
    fn read_backends(&self) -> Result<Vec<(u32, BackendAddr)>, Self::Error> {
        Ok(Vec::new())
    }
    fn read_ranges(&self) -> Result<Vec<RangeKey>, Self::Error> {
        Ok(Vec::new())
    }
    fn put_service(&mut self, _: FrontendKey, _: LbService) -> Result<(), Self::Error> {
        Ok(())
    }
    fn del_service(&mut self, _: FrontendKey) -> Result<(), Self::Error> {
        Ok(())
    }
    fn put_slot(&mut self, _: SlotKey, _: u32) -> Result<(), Self::Error> {
        Ok(())
    }
    fn del_slot(&mut self, _: SlotKey) -> Result<(), Self::Error> {
        Ok(())
    }
    fn put_backend(&mut self, _: u32, _: BackendAddr) -> Result<(), Self::Error> {
        Ok(())
    }
    fn put_maglev(&mut self, _: &[(u32, u32)]) -> Result<(), Self::Error> {
        Ok(())
    }
    fn del_backend(&mut self, _: u32, _: BackendAddr) -> Result<(), Self::Error> {
        Ok(())
    }
    fn put_range(&mut self, _: RangeKey) -> Result<(), Self::Error> {
        Ok(())
    }
    fn del_range(&mut self, _: RangeKey) -> Result<(), Self::Error> {
        Ok(())
    }
    fn flush_udp_flows(&mut self, _: &HashSet<(u32, BackendAddr)>) -> Result<usize, Self::Error> {
        Ok(0)
    }
}

#[test]
#[ignore = "a measurement; run with --ignored --nocapture"]
fn heap_per_layer_at_scale() {
    let n: usize = std::env::var("RUDDER_MEM_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let e = 10;
    println!("{n} Services × {e} endpoints: live heap held by each layer after a cold sync");

    let base = live();
    let services: Vec<Service> = (0..n)
        .map(|i| serde_json::from_str(&service_json(i)).expect("a valid Service"))
        .collect();
    let slices: Vec<EndpointSlice> = (0..n)
        .map(|i| serde_json::from_str(&slice_json(i, e)).expect("a valid EndpointSlice"))
        .collect();
    let full = live() - base;
    println!("watch store, full k8s-openapi objects:   {}", mib(full));
    let before = live();
    let names: BTreeSet<(Option<String>, String)> = services
        .iter()
        .map(|s| &s.metadata)
        .chain(slices.iter().map(|s| &s.metadata))
        .map(|m| (m.namespace.clone(), m.name.clone().unwrap_or_default()))
        .collect();
    println!("watch store, names only:                  {}", mib(live() - before));

    let before = live();
    let mut st = ServiceChangeTracker::new();
    let mut et = EndpointsChangeTracker::new("node-1", SystemTime::UNIX_EPOCH);
    for s in &services {
        st.apply(s).expect("valid");
    }
    let service_pending = live() - before;
    for s in &slices {
        et.apply(s).expect("valid");
    }
    let pending = live() - before;
    println!("  of which the Service tracker:           {}", mib(service_pending));
    let sc = st.take_changes();
    let ec = et.take_changes();
    let with_changes = live() - before;
    let mut ports = ServicePortMap::new();
    let mut eps = EndpointsMap::new();
    sc.apply_to(&mut ports);
    ec.apply_to(&mut eps);
    drop((sc, ec));
    let trackers_and_maps = live() - before;
    drop(ports);
    drop(eps);
    let trackers = live() - before;
    println!("trackers, pending (cold list):            {}", mib(pending));
    println!("trackers + handed-over changes (peak):    {}", mib(with_changes));
    println!("trackers, applied (kept):                 {}", mib(trackers));
    println!(
        "sync loop's full maps (ports, endpoints): {}",
        mib(trackers_and_maps - trackers)
    );

    let mut ports = ServicePortMap::new();
    let mut eps = EndpointsMap::new();
    {
        let mut st = ServiceChangeTracker::new();
        let mut et = EndpointsChangeTracker::new("node-1", SystemTime::UNIX_EPOCH);
        for s in &services {
            st.apply(s).expect("valid");
        }
        for s in &slices {
            et.apply(s).expect("valid");
        }
        st.take_changes().apply_to(&mut ports);
        et.take_changes().apply_to(&mut eps);
    }
    let node = NodeInfo {
        name: "node-1".into(),
        addresses: vec!["10.250.0.11".parse::<IpAddr>().expect("an address")],
        labels: Default::default(),
    };
    let config = ModelConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("a CIDR")],
        service_cidrs: vec!["10.96.0.0/16".parse().expect("a CIDR")],
        ..Default::default()
    };
    let before = live();
    let desired = DesiredState::build(&ports, &eps, &node, &config);
    println!("desired state:                            {}", mib(live() - before));

    let before = live();
    let script = nftables::render_full(&desired);
    println!(
        "nftables full script (transient):         {}  ({} bytes of text)",
        mib(live() - before),
        script.len()
    );
    drop(script);

    let before = live();
    let restore = iptables::render_full(&desired);
    let text = live() - before;
    let mut ledger = Ledger::default();
    let before_ledger = live();
    ledger.apply(&restore.v4);
    ledger.apply(&restore.v6);
    let kept = live() - before_ledger;
    println!("iptables restore input (transient):       {}", mib(text));
    println!("iptables ledgers (kept):                  {}", mib(kept));
    drop((restore, ledger));

    let before = live();
    let mut reconciler = Reconciler::new();
    reconciler
        .sync(&mut NullMaps, &desired, None)
        .expect("null maps never fail");
    println!("ebpf reconciler (kept):                   {}", mib(live() - before));
    drop(reconciler);

    let all: BTreeSet<_> = desired.ports.keys().cloned().collect();
    println!("({} ports in the desired state)", all.len());
    drop((names, services, slices, desired));
}

fn vm_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmRSS:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

/// The agent's order of work, each object decoded and dropped as the watch does, the
/// backend's sync on another thread as `spawn_blocking` runs it; then the process's RSS,
/// before and after `malloc_trim`. `RUDDER_MEM_MODE`: nftables (default), iptables, ebpf.
#[test]
#[ignore = "a measurement; run with --ignored --nocapture, one mode per process"]
fn rss_after_a_cold_sync() {
    let n: usize = std::env::var("RUDDER_MEM_SERVICES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(10_000);
    let mode = std::env::var("RUDDER_MEM_MODE").unwrap_or_else(|_| "nftables".into());
    let start = vm_rss_kib();
    let mut st = ServiceChangeTracker::new();
    let mut et = EndpointsChangeTracker::new("node-1", SystemTime::UNIX_EPOCH);
    let mut names = BTreeSet::new();
    // RUDDER_MEM_KEEP_OBJECTS=1: the watches' store before this change, every object kept.
    let keep = std::env::var_os("RUDDER_MEM_KEEP_OBJECTS").is_some();
    let mut kept_services = Vec::new();
    let mut kept_slices = Vec::new();
    // Pages of 500, as the watcher lists.
    for page in (0..n).collect::<Vec<_>>().chunks(500) {
        let services: Vec<Service> = page
            .iter()
            .map(|i| serde_json::from_str(&service_json(*i)).expect("a valid Service"))
            .collect();
        for s in &services {
            names.insert((s.metadata.namespace.clone(), s.metadata.name.clone()));
            st.apply(s).expect("valid");
        }
        if keep {
            kept_services.extend(services);
        }
    }
    for page in (0..n).collect::<Vec<_>>().chunks(500) {
        let slices: Vec<EndpointSlice> = page
            .iter()
            .map(|i| serde_json::from_str(&slice_json(*i, 10)).expect("a valid EndpointSlice"))
            .collect();
        for s in &slices {
            names.insert((s.metadata.namespace.clone(), s.metadata.name.clone()));
            et.apply(s).expect("valid");
        }
        if keep {
            kept_slices.extend(slices);
        }
    }
    let mut ports = ServicePortMap::new();
    let mut eps = EndpointsMap::new();
    st.take_changes().apply_to(&mut ports);
    et.take_changes().apply_to(&mut eps);
    let node = NodeInfo {
        name: "node-1".into(),
        addresses: vec!["10.250.0.11".parse::<IpAddr>().expect("an address")],
        labels: Default::default(),
    };
    let config = ModelConfig {
        cluster_cidrs: vec!["10.244.0.0/16".parse().expect("a CIDR")],
        service_cidrs: vec!["10.96.0.0/16".parse().expect("a CIDR")],
        ..Default::default()
    };
    let desired = DesiredState::build(&ports, &eps, &node, &config);
    let kept: Box<dyn std::any::Any + Send> = std::thread::scope(|scope| {
        scope
            .spawn(|| -> Box<dyn std::any::Any + Send> {
                match mode.as_str() {
                    "iptables" => {
                        let restore = iptables::render_full(&desired);
                        let mut ledger = Ledger::default();
                        ledger.apply(&restore.v4);
                        ledger.apply(&restore.v6);
                        Box::new(ledger)
                    }
                    "ebpf" => {
                        let mut reconciler = Reconciler::new();
                        reconciler
                            .sync(&mut NullMaps, &desired, None)
                            .expect("null maps never fail");
                        Box::new(reconciler)
                    }
                    _ => Box::new(nftables::render_full(&desired).len()),
                }
            })
            .join()
            .expect("the sync thread")
    });
    let rss = vm_rss_kib();
    let heap = live();
    let t = std::time::Instant::now();
    // SAFETY: malloc_trim only returns free memory to the kernel.
    unsafe { libc::malloc_trim(0) };
    let trim_ms = t.elapsed().as_secs_f64() * 1e3;
    let trimmed = vm_rss_kib();
    println!(
        "{mode}, {n} Services × 10 endpoints: RSS {:.1} MiB at start, {:.1} MiB after the cold sync, {:.1} MiB after malloc_trim ({trim_ms:.1} ms); live heap {}",
        start as f64 / 1024.0,
        rss as f64 / 1024.0,
        trimmed as f64 / 1024.0,
        mib(heap)
    );
    drop((kept, desired, ports, eps, st, et, names, kept_services, kept_slices));
}
