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
    let mut packets = String::new();
    let mut bytes = String::new();
    for c in services {
        let name = &c.name;
        let labels = format!(
            "namespace=\"{}\",service=\"{}\",port=\"{}\",protocol=\"{}\"",
            escape(&name.namespace),
            escape(&name.name),
            escape(&name.port_name),
            name.protocol
        );
        let _ = writeln!(packets, "rudder_service_packets_total{{{labels}}} {}", c.packets);
        let _ = writeln!(bytes, "rudder_service_bytes_total{{{labels}}} {}", c.bytes);
    }
    let mut xdp_text = String::new();
    if let Some(x) = xdp {
        let _ = writeln!(
            xdp_text,
            "# HELP rudder_xdp_packets_total Packets the XDP program translated and sent back out (tx) or left to tc although it knew their flow or frontend (passed)\n# TYPE rudder_xdp_packets_total counter"
        );
        for (p, verdict) in [(x.tx, "tx"), (x.passed, "passed")] {
            let _ = writeln!(xdp_text, "rudder_xdp_packets_total{{verdict=\"{verdict}\"}} {p}");
        }
    }
    format!(
        "{xdp_text}# HELP rudder_service_packets_total Packets the ebpf load balancer sent to a Service port's backends (or refused for it)\n\
         # TYPE rudder_service_packets_total counter\n{packets}\
         # HELP rudder_service_bytes_total Bytes of those packets\n# TYPE rudder_service_bytes_total counter\n{bytes}"
    )
}

#[cfg(test)]
pub(crate) fn tests_sample() -> (Vec<PortCounters>, XdpCounters) {
    tests::sample()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Protocol;

    pub(super) fn sample() -> (Vec<PortCounters>, XdpCounters) {
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
        crate::agent::metrics::golden::assert_same(&text, "src/dataplane/ebpf/testdata/stats.prom");
        let text = encode(&[], None);
        crate::agent::metrics::golden::assert_same(&text, "src/dataplane/ebpf/testdata/stats-empty.prom");
    }
}
