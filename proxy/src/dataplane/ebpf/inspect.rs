//! `rudder-proxy inspect`: the load balancer as the kernel holds it, read from the pinned
//! maps of a running (or stopped) proxy, like `cilium-dbg service list` and `bpf ct list`.

use std::{
    collections::BTreeMap,
    fmt::Write,
    net::{Ipv4Addr, SocketAddr},
    path::Path,
};

use aya::maps::{HashMap, Map, MapData, PerCpuArray};
use rudder_abi::{
    PacketCounters,
    lb::{
        ACTION_DROP, ACTION_REJECT, Backend, Backend6, Conntrack, Conntrack6, FlowKey, FlowKey6, PROTO_TCP, PROTO_UDP,
        Service, ServiceKey, ServiceKey6, SlotKey, XDP_SLOT_PASSED, XDP_SLOT_TX, flags,
    },
    names,
};

use super::{
    EbpfError,
    tables::{BackendAddr, FrontendKey, v6_addr},
};

fn open(root: &Path, name: &'static str) -> Result<MapData, EbpfError> {
    MapData::from_pin(root.join(name)).map_err(|source| EbpfError::Map { name, source })
}

fn addr(a: u32, port: u16) -> String {
    format!("{}:{}", Ipv4Addr::from(u32::from_be(a)), u16::from_be(port))
}

fn proto(p: u8) -> &'static str {
    match p {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    }
}

/// The report: frontends with their backends and counters, Maglev occupancy, and up to
/// `max_flows` conntrack entries.
pub fn report(root: &Path, max_flows: usize) -> Result<String, EbpfError> {
    let map_err = |name: &'static str| move |source| EbpfError::Map { name, source };
    let services: HashMap<_, ServiceKey, Service> =
        HashMap::try_from(Map::HashMap(open(root, names::SERVICES)?)).map_err(map_err(names::SERVICES))?;
    let services6: HashMap<_, ServiceKey6, Service> =
        HashMap::try_from(Map::HashMap(open(root, names::SERVICES6)?)).map_err(map_err(names::SERVICES6))?;
    let slots: HashMap<_, SlotKey, u32> =
        HashMap::try_from(Map::HashMap(open(root, names::SLOTS)?)).map_err(map_err(names::SLOTS))?;
    let backends: HashMap<_, u32, Backend> =
        HashMap::try_from(Map::HashMap(open(root, names::BACKENDS)?)).map_err(map_err(names::BACKENDS))?;
    let backends6: HashMap<_, u32, Backend6> =
        HashMap::try_from(Map::HashMap(open(root, names::BACKENDS6)?)).map_err(map_err(names::BACKENDS6))?;
    let stats: PerCpuArray<_, PacketCounters> =
        PerCpuArray::try_from(Map::PerCpuArray(open(root, names::SERVICE_STATS)?))
            .map_err(map_err(names::SERVICE_STATS))?;
    let conntrack: HashMap<_, FlowKey, Conntrack> =
        HashMap::try_from(Map::LruHashMap(open(root, names::CONNTRACK)?)).map_err(map_err(names::CONNTRACK))?;

    let backend = |id: u32| {
        let found = backends
            .get(&id, 0)
            .map(BackendAddr::V4)
            .or_else(|_| backends6.get(&id, 0).map(BackendAddr::V6));
        found
            .map(|b| SocketAddr::from(b).to_string())
            .unwrap_or_else(|_| format!("#{id}?"))
    };
    let set = |set: u32, count: u32| -> Vec<String> {
        (0..count)
            .map(|slot| {
                slots
                    .get(&SlotKey { set, slot }, 0)
                    .map(backend)
                    .unwrap_or_else(|_| "(missing)".into())
            })
            .collect()
    };
    let mut entries: Vec<(FrontendKey, Service)> = services
        .iter()
        .filter_map(Result::ok)
        .map(|(k, s)| (FrontendKey::V4(k), s))
        .chain(
            services6
                .iter()
                .filter_map(Result::ok)
                .map(|(k, s)| (FrontendKey::V6(k), s)),
        )
        .collect();
    entries.sort_by_key(|(k, _)| (k.ip(), k.port(), k.proto()));
    let mut out = String::new();
    let _ = writeln!(
        out,
        "{:<24} {:<5} {:<8} {:>4} {:>10} {:>12}  BACKENDS",
        "FRONTEND", "PROTO", "ACTION", "ID", "PACKETS", "BYTES"
    );
    for (k, s) in &entries {
        if s.flags & flags::WILDCARD != 0 {
            continue;
        }
        let action = match s.action {
            ACTION_REJECT => "reject",
            ACTION_DROP => "drop",
            _ => "forward",
        };
        let (p, b) = stats.get(&s.id, 0).map(|c| super::stats::total(&c)).unwrap_or_default();
        let mut line = set(s.set, s.count).join(" ");
        if s.flags & flags::SHORT_CIRCUIT != 0 {
            let _ = write!(line, " | from inside: {}", set(s.sc_set, s.sc_count).join(" "));
        }
        let _ = writeln!(
            out,
            "{:<24} {:<5} {:<8} {:>4} {:>10} {:>12}  {line}",
            SocketAddr::new(k.ip(), k.port()).to_string(),
            proto(k.proto()),
            action,
            s.id,
            p,
            b
        );
    }
    // Maglev occupancy: per row in use, each backend's share of the table.
    let maglev_rows: BTreeMap<u32, u32> = entries
        .iter()
        .flat_map(|(_, s)| [(s.row, s.set), (s.sc_row, s.sc_set)])
        .filter(|(r, _)| *r != 0)
        .collect();
    if !maglev_rows.is_empty()
        && let Ok(table) = aya::maps::Array::<_, u32>::try_from(Map::Array(open(root, names::MAGLEV)?))
    {
        let total = table.len();
        let m = total / u32::try_from(maglev_rows.len()).unwrap_or(1).max(1);
        let _ = writeln!(out, "\nMaglev tables ({} in use):", maglev_rows.len());
        for (row, set_id) in &maglev_rows {
            let mut shares: BTreeMap<u32, u32> = BTreeMap::new();
            let base = (row - 1).saturating_mul(m);
            for i in 0..m {
                if let Ok(id) = table.get(&(base + i), 0) {
                    *shares.entry(id).or_default() += 1;
                }
            }
            let text: Vec<String> = shares.iter().map(|(id, n)| format!("{} {n}", backend(*id))).collect();
            let _ = writeln!(out, "  set {set_id} (row {row}): {}", text.join(", "));
        }
    }
    if let Ok(xdp) = open(root, names::XDP_STATS).and_then(|m| {
        PerCpuArray::<_, PacketCounters>::try_from(Map::PerCpuArray(m)).map_err(map_err(names::XDP_STATS))
    }) {
        let sum = |slot: u32| xdp.get(&slot, 0).map(|c| super::stats::total(&c)).unwrap_or_default();
        let ((tp, tb), (pp, pb)) = (sum(XDP_SLOT_TX), sum(XDP_SLOT_PASSED));
        let _ = writeln!(
            out,
            "\nXDP: {tp} packets ({tb} bytes) sent back out, {pp} packets ({pb} bytes) of known flows left to tc"
        );
    }
    let conntrack6: HashMap<_, FlowKey6, Conntrack6> =
        HashMap::try_from(Map::LruHashMap(open(root, names::CONNTRACK6)?)).map_err(map_err(names::CONNTRACK6))?;
    let v6 = |a: [u32; 4], port: u16| SocketAddr::new(v6_addr(a).into(), u16::from_be(port)).to_string();
    // (protocol, client, frontend, backend, masqueraded source)
    let flows: Vec<(u8, String, String, String, Option<String>)> = conntrack
        .iter()
        .filter_map(Result::ok)
        .map(|(k, c)| {
            let snat = (c.snat_addr != 0).then(|| addr(c.snat_addr, c.snat_port));
            (
                k.proto,
                addr(k.saddr, k.sport),
                addr(k.daddr, k.dport),
                addr(c.backend.addr, c.backend.port),
                snat,
            )
        })
        .chain(conntrack6.iter().filter_map(Result::ok).map(|(k, c)| {
            let snat = (c.snat_addr != [0; 4]).then(|| v6(c.snat_addr, c.snat_port));
            (
                k.proto,
                v6(k.saddr, k.sport),
                v6(k.daddr, k.dport),
                v6(c.backend.addr, c.backend.port),
                snat,
            )
        }))
        .collect();
    let _ = writeln!(out, "\nConntrack: {} flows", flows.len());
    for (proto_number, client, frontend, backend, snat) in flows.iter().take(max_flows) {
        let snat = snat.as_ref().map(|s| format!(" (as {s})")).unwrap_or_default();
        let _ = writeln!(
            out,
            "  {} {client} -> {frontend} => {backend}{snat}",
            proto(*proto_number)
        );
    }
    Ok(out)
}
