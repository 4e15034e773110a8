//! Per-Service packet and byte counters from the programs' per-CPU stats map, as
//! Prometheus text: what `cilium-dbg service list` and Hubble answer with counters.

use std::{
    collections::BTreeMap,
    fmt::Write,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, PerCpuArray};
use rudder_abi::PacketCounters;

use crate::model::ServicePortName;

/// Service id → the port it counts for, kept by the reconciler.
pub type IdNames = Arc<Mutex<BTreeMap<u32, ServicePortName>>>;

pub struct ServiceStats {
    map: PerCpuArray<MapData, PacketCounters>,
    names: IdNames,
    /// The XDP program's verdict counters, when acceleration is on.
    xdp: Option<PerCpuArray<MapData, PacketCounters>>,
}

/// Packets and bytes of one slot, summed over the CPUs.
pub fn total(per_cpu: &aya::maps::PerCpuValues<PacketCounters>) -> (u64, u64) {
    per_cpu.iter().fold((0, 0), |(p, b), c| (p + c.packets, b + c.bytes))
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"")
}

impl ServiceStats {
    pub fn new(
        map: PerCpuArray<MapData, PacketCounters>,
        names: IdNames,
        xdp: Option<PerCpuArray<MapData, PacketCounters>>,
    ) -> Self {
        Self { map, names, xdp }
    }

    /// `rudder_service_{packets,bytes}_total` per Service port the maps serve. Counters
    /// start when a port gets its id; an id reused by a later port starts from where the
    /// previous one left (as a counter reset would look to Prometheus, it is rare: ids are
    /// reused only after the old port is gone).
    pub fn render(&self) -> String {
        let names = self.names.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut packets = String::new();
        let mut bytes = String::new();
        for (id, name) in &names {
            let Ok(per_cpu) = self.map.get(id, 0) else {
                continue;
            };
            let (p, b) = total(&per_cpu);
            let labels = format!(
                "namespace=\"{}\",service=\"{}\",port=\"{}\",protocol=\"{}\"",
                escape(&name.namespace),
                escape(&name.name),
                escape(&name.port_name),
                name.protocol
            );
            let _ = writeln!(packets, "rudder_service_packets_total{{{labels}}} {p}");
            let _ = writeln!(bytes, "rudder_service_bytes_total{{{labels}}} {b}");
        }
        let mut xdp = String::new();
        if let Some(map) = &self.xdp {
            let _ = writeln!(
                xdp,
                "# HELP rudder_xdp_packets_total Packets the XDP program translated and sent back out (tx) or left to tc although it knew their flow or frontend (passed)\n# TYPE rudder_xdp_packets_total counter"
            );
            for (slot, verdict) in [
                (rudder_abi::lb::XDP_SLOT_TX, "tx"),
                (rudder_abi::lb::XDP_SLOT_PASSED, "passed"),
            ] {
                let (p, _) = map.get(&slot, 0).map(|c| total(&c)).unwrap_or_default();
                let _ = writeln!(xdp, "rudder_xdp_packets_total{{verdict=\"{verdict}\"}} {p}");
            }
        }
        format!(
            "{xdp}# HELP rudder_service_packets_total Packets the ebpf load balancer sent to a Service port's backends (or refused for it)\n\
             # TYPE rudder_service_packets_total counter\n{packets}\
             # HELP rudder_service_bytes_total Bytes of those packets\n# TYPE rudder_service_bytes_total counter\n{bytes}"
        )
    }
}
