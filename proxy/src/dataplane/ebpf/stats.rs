//! Per-Service packet and byte counters from the programs' per-CPU stats map, as
//! Prometheus text (through [`crate::exposition`]): what `cilium-dbg service list` and Hubble answer with counters.

use std::{
    collections::BTreeMap,
    sync::{Arc, Mutex},
};

use aya::maps::{MapData, PerCpuArray};
use prometheus_client::{
    collector::Collector,
    metrics::{MetricType, counter::ConstCounter},
};
use rudder_abi::PacketCounters;

use crate::{
    exposition::{self, Family, Labels},
    model::ServicePortName,
};

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
        let services: Vec<_> = names
            .into_iter()
            .filter_map(|(id, name)| {
                let (packets, bytes) = total(&self.map.get(&id, 0).ok()?);
                Some(PortCounters { name, packets, bytes })
            })
            .collect();
        let xdp = self.xdp.as_ref().map(|map| {
            let packets = |slot| map.get(&slot, 0).map(|c| total(&c).0).unwrap_or_default();
            XdpCounters {
                tx: packets(rudder_abi::lb::XDP_SLOT_TX),
                passed: packets(rudder_abi::lb::XDP_SLOT_PASSED),
            }
        });
        encode(&services, xdp)
    }
}

/// One Service port's totals.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PortCounters {
    pub name: ServicePortName,
    pub packets: u64,
    pub bytes: u64,
}

/// The XDP program's verdict counters.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct XdpCounters {
    pub tx: u64,
    pub passed: u64,
}

/// The exposition of what [`ServiceStats::render`] read from the maps.
pub fn encode(services: &[PortCounters], xdp: Option<XdpCounters>) -> String {
    let series = |value: fn(&PortCounters) -> u64| -> Vec<(Labels, ConstCounter<u64>)> {
        services
            .iter()
            .map(|c| {
                let labels = vec![
                    ("namespace", c.name.namespace.clone()),
                    ("service", c.name.name.clone()),
                    ("port", c.name.port_name.clone()),
                    ("protocol", c.name.protocol.to_string()),
                ];
                (labels, ConstCounter::new(value(c)))
            })
            .collect()
    };
    let mut families: Vec<Box<dyn Collector>> = Vec::new();
    if let Some(x) = xdp {
        families.push(Box::new(Family::labelled(
            "rudder_xdp_packets",
            "Packets the XDP program translated and sent back out (tx) or left to tc although it knew their flow or frontend (passed)",
            MetricType::Counter,
            vec![
                (vec![("verdict", "tx".into())], ConstCounter::new(x.tx)),
                (vec![("verdict", "passed".into())], ConstCounter::new(x.passed)),
            ],
        )));
    }
    families.push(Box::new(Family::labelled(
        "rudder_service_packets",
        "Packets the ebpf load balancer sent to a Service port's backends (or refused for it)",
        MetricType::Counter,
        series(|c| c.packets),
    )));
    families.push(Box::new(Family::labelled(
        "rudder_service_bytes",
        "Bytes of those packets",
        MetricType::Counter,
        series(|c| c.bytes),
    )));
    exposition::encode(families)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    fn sample() -> (Vec<PortCounters>, XdpCounters) {
        let port = |ns: &str, name: &str, port: &str, protocol, packets, bytes| PortCounters {
            name: ServicePortName {
                namespace: ns.into(),
                name: name.into(),
                port_name: port.into(),
                protocol,
            },
            packets,
            bytes,
        };
        (
            vec![
                port("default", "web", "http", Protocol::Tcp, 1200, 96_000),
                port("kube-system", "kube-dns", "dns", Protocol::Udp, 5, 320),
                port("kube-system", "kube-dns", "", Protocol::Sctp, 0, 0),
            ],
            XdpCounters { tx: 77, passed: 3 },
        )
    }

    /// The exposition before it moved to prometheus-client, kept byte for byte where the
    /// format allows (see `golden`).
    #[test]
    fn service_counters_keep_their_names_labels_and_types() {
        let (services, xdp) = sample();
        let text = encode(&services, Some(xdp));
        crate::exposition::golden::assert_same(&text, "src/dataplane/ebpf/testdata/stats.prom");
        let text = encode(&[], None);
        crate::exposition::golden::assert_same(&text, "src/dataplane/ebpf/testdata/stats-empty.prom");
    }
}
