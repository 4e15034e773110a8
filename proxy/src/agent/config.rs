//! `rudder-proxy run` flags, named and defaulted as kube-proxy's where it has them, and
//! their parsing. Invalid values are refused at startup naming the flag and the reason.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use crate::{dataplane::Mode, model::Cidr};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// The dataplane (kube-proxy's --proxy-mode names).
    #[arg(long, visible_alias = "proxy-mode", value_enum, default_value = "nftables")]
    pub mode: Mode,
    /// Path to a kubeconfig; without it, the in-cluster service account (or
    /// $KUBECONFIG / ~/.kube/config) is used.
    #[arg(long)]
    pub kubeconfig: Option<PathBuf>,
    /// This node's name as the API knows it (default: the host name, lowercased).
    #[arg(long)]
    pub hostname_override: Option<String>,
    /// The pod CIDRs, comma separated. Traffic to a ClusterIP from outside them is
    /// masqueraded; empty turns that off (as in kube-proxy).
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub cluster_cidr: Vec<Cidr>,
    /// The Service CIDRs (kube-apiserver's --service-cluster-ip-range), comma separated.
    /// Packets to an address in them that is no ClusterIP are dropped instead of being
    /// routed off the node. Empty: no such drop.
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub service_cluster_ip_range: Vec<Cidr>,
    /// Which node addresses serve NodePorts: `primary` (the Node object's addresses,
    /// the default) or CIDRs, comma separated, matched against this host's interfaces.
    #[arg(long, value_delimiter = ',', value_parser = parse_nodeport_address)]
    pub nodeport_addresses: Vec<NodePortAddress>,
    /// ipvs mode: the IPVS scheduler of every virtual service (rr, lc, sh, mh).
    #[arg(long, value_enum, default_value = "rr")]
    pub ipvs_scheduler: crate::dataplane::ipvs::Scheduler,
    /// Masquerade all traffic to ClusterIPs.
    #[arg(long)]
    pub masquerade_all: bool,
    /// The shortest time between two syncs: changes arriving faster are batched.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    pub min_sync_period: Duration,
    /// The longest time between two syncs; each of these is a full resync.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    pub sync_period: Duration,
    /// Where /healthz and /livez listen (port 0 or empty: off).
    #[arg(long, default_value = "0.0.0.0:10256", value_parser = parse_bind_address)]
    pub healthz_bind_address: Bind,
    /// Where /metrics listens (port 0 or empty: off).
    #[arg(long, default_value = "127.0.0.1:10249", value_parser = parse_bind_address)]
    pub metrics_bind_address: Bind,
    /// Remove everything every mode installed, then exit.
    #[arg(long)]
    pub cleanup: bool,
    /// ebpf mode: directory on a bpffs for pinned maps and links (a bpffs is mounted at
    /// its parent when none is).
    #[arg(long, default_value = "/sys/fs/bpf/rudder")]
    pub bpf_root: PathBuf,
    /// ebpf mode: the cgroup v2 whose processes get socket-level load balancing; relative
    /// paths are relative to the cgroup2 root. Default: the root (every process).
    #[arg(long)]
    pub cgroup_path: Option<PathBuf>,
    /// ebpf mode: how many frontends (ClusterIP, NodePort, external and load-balancer
    /// address:port pairs) the service map holds (Cilium's --bpf-lb-map-max). Backends get
    /// as many entries, endpoint slots four times as many.
    #[arg(long, default_value = "65536", value_parser = clap::value_parser!(u32).range(16..=4_194_304))]
    pub bpf_lb_map_max: u32,
    /// ebpf mode: how the per-packet path picks a backend for a new flow: `random`, or
    /// `maglev` (consistent hashing: every node picks the same backend for a flow).
    #[arg(long, value_enum, default_value = "random")]
    pub bpf_lb_algorithm: LbAlgorithm,
    /// ebpf mode: Maglev table size M, a prime from 251 to 131071 (Cilium's default).
    #[arg(long, default_value = "16381", value_parser = parse_maglev_size)]
    pub bpf_lb_maglev_table_size: u32,
    /// ebpf mode: how many endpoint sets (one or two per Service port) get a Maglev
    /// table; the map takes this × M × 4 bytes.
    #[arg(long, default_value = "256", value_parser = clap::value_parser!(u32).range(1..=65_536))]
    pub bpf_lb_maglev_map_max: u32,
    /// ebpf mode: report each new flow the per-packet path balances, and its backend, in
    /// a ring buffer that `rudder-proxy flows` reads.
    #[arg(long)]
    pub flow_events: bool,
    /// ebpf mode: devices for the per-packet programs, comma separated. Default: every
    /// device that is not a bridge port, and lo.
    #[arg(long, value_delimiter = ',')]
    pub ebpf_devices: Vec<String>,
    /// ebpf mode: XDP acceleration of NodePort and external traffic whose backend is on
    /// another node (Cilium's --bpf-lb-acceleration): `disabled`, `native` (in the
    /// driver; startup fails if a device's driver cannot) or `generic` (any device, after
    /// the skb is built: little faster than tc).
    #[arg(long, value_enum, default_value = "disabled")]
    pub bpf_lb_acceleration: Acceleration,
    /// ebpf mode: the external devices for XDP, comma separated. Default: every device
    /// with an IPv4 or global IPv6 address that is neither lo nor a bridge.
    #[arg(long, value_delimiter = ',')]
    pub xdp_devices: Vec<String>,
}

impl RunArgs {
    pub fn ebpf_options(&self) -> crate::dataplane::ebpf::EbpfOptions {
        crate::dataplane::ebpf::EbpfOptions {
            bpf_root: self.bpf_root.clone(),
            cgroup: self.cgroup_path.clone().unwrap_or_default(),
            devices: self.ebpf_devices.clone(),
            acceleration: self.bpf_lb_acceleration,
            xdp_devices: self.xdp_devices.clone(),
            lb_map_max: self.bpf_lb_map_max,
            flow_events: self.flow_events,
            maglev: (self.bpf_lb_algorithm == LbAlgorithm::Maglev).then_some(
                crate::dataplane::ebpf::reconcile::MaglevConf {
                    m: self.bpf_lb_maglev_table_size,
                    rows: self.bpf_lb_maglev_map_max,
                },
            ),
            service_cidrs: self.service_cluster_ip_range.clone(),
            pod_cidrs: self.cluster_cidr.clone(),
        }
    }
}

pub use crate::dataplane::ebpf::attach::Acceleration;

/// `--bpf-lb-algorithm`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum LbAlgorithm {
    Random,
    Maglev,
}

fn parse_maglev_size(s: &str) -> Result<u32, String> {
    let m: u32 = s.trim().parse().map_err(|e| format!("{s:?} is not a number: {e}"))?;
    crate::dataplane::ebpf::maglev::validate_table_size(m).map_err(|e| e.to_string())
}

/// A listen address, or none.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Bind(pub Option<SocketAddr>);

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodePortAddress {
    Primary,
    Cidr(Cidr),
}

fn parse_cidr(s: &str) -> Result<Cidr, String> {
    s.trim()
        .parse::<Cidr>()
        .map_err(|e| format!("{s:?} is not a CIDR: {e}"))
}

fn parse_nodeport_address(s: &str) -> Result<NodePortAddress, String> {
    match s.trim() {
        "primary" => Ok(NodePortAddress::Primary),
        other => parse_cidr(other).map(NodePortAddress::Cidr),
    }
}

/// Go-style durations as kube-proxy takes them: `1s`, `500ms`, `1m30s`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    if s == "0" {
        return Ok(Duration::ZERO);
    }
    let mut total = Duration::ZERO;
    let mut rest = s;
    if rest.is_empty() {
        return Err("empty duration (use e.g. 1s, 500ms, 2m)".into());
    }
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let number: f64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (use e.g. 1s, 500ms, 2m)"))?;
        rest = &rest[digits..];
        let unit_len = rest.find(|c: char| c.is_ascii_digit()).unwrap_or(rest.len());
        let seconds = match &rest[..unit_len] {
            "ns" => 1e-9,
            "us" | "µs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            unit => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m or h)")),
        };
        rest = &rest[unit_len..];
        total += Duration::from_secs_f64(number * seconds);
    }
    Ok(total)
}

/// `0.0.0.0:10256`, `:10256` (all addresses), `[::]:10256`; an empty value or port 0
/// turns the server off, as in kube-proxy.
pub fn parse_bind_address(s: &str) -> Result<Bind, String> {
    let s = s.trim();
    if s.is_empty() {
        return Ok(Bind(None));
    }
    let full = if s.starts_with(':') {
        format!("0.0.0.0{s}")
    } else {
        s.to_owned()
    };
    let addr: SocketAddr = full
        .parse()
        .map_err(|_| format!("{s:?} is not an address:port (e.g. 0.0.0.0:10256)"))?;
    Ok(Bind((addr.port() != 0).then_some(addr)))
}

/// kube-proxy's default node name: the host name, lowercased.
pub fn node_name(override_: Option<&str>) -> Result<String, std::io::Error> {
    if let Some(name) = override_.map(str::trim).filter(|n| !n.is_empty()) {
        return Ok(name.to_lowercase());
    }
    let name = std::fs::read_to_string("/proc/sys/kernel/hostname")?;
    Ok(name.trim().to_lowercase())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_read_like_go() {
        assert_eq!(parse_duration("1s").unwrap(), Duration::from_secs(1));
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("0").unwrap(), Duration::ZERO);
        let err = parse_duration("5 parsecs").unwrap_err();
        assert!(err.contains("unknown unit"), "{err}");
        assert!(parse_duration("s").is_err());
    }

    #[test]
    fn bind_addresses_follow_kube_proxy() {
        assert_eq!(
            parse_bind_address(":10256").unwrap().0,
            Some("0.0.0.0:10256".parse().unwrap())
        );
        assert_eq!(
            parse_bind_address("[::]:10249").unwrap().0,
            Some("[::]:10249".parse().unwrap())
        );
        assert_eq!(parse_bind_address("0.0.0.0:0").unwrap().0, None);
        assert_eq!(parse_bind_address("").unwrap().0, None);
        assert!(parse_bind_address("10256").unwrap_err().contains("address:port"));
    }

    #[test]
    fn nodeport_addresses_take_primary_or_cidrs() {
        assert_eq!(parse_nodeport_address("primary").unwrap(), NodePortAddress::Primary);
        assert!(matches!(
            parse_nodeport_address("10.0.0.0/8").unwrap(),
            NodePortAddress::Cidr(_)
        ));
        assert!(parse_nodeport_address("ten").unwrap_err().contains("not a CIDR"));
    }
}
