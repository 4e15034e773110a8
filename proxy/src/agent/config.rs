//! `rudder-proxy run` flags, named and defaulted as kube-proxy's where it has them, and
//! their parsing. Invalid values are refused at startup naming the flag and the reason.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use super::config_file::{self, ConfigFileError, FileConfig};
use crate::{dataplane::Mode, model::IpNet};

#[derive(Debug, Clone, clap::Args)]
pub struct RunArgs {
    /// A kube-proxy `KubeProxyConfiguration` (kubeproxy.config.k8s.io/v1alpha1, YAML or
    /// JSON), e.g. the `config.conf` of kubeadm's `kube-proxy` ConfigMap. Flags given on
    /// the command line override it.
    #[arg(long)]
    pub config: Option<PathBuf>,
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
    pub cluster_cidr: Vec<IpNet>,
    /// The Service CIDRs (kube-apiserver's --service-cluster-ip-range), comma separated.
    /// Packets to an address in them that is no ClusterIP are dropped instead of being
    /// routed off the node. Empty: no such drop.
    #[arg(long, value_delimiter = ',', value_parser = parse_cidr)]
    pub service_cluster_ip_range: Vec<IpNet>,
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
    /// The oom_score_adj of this process, from -1000 to 1000 (kube-proxy's default is
    /// -999; unset: left as inherited).
    #[arg(long, allow_hyphen_values = true, value_parser = clap::value_parser!(i32).range(-1000..=1000))]
    pub oom_score_adj: Option<i32>,
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
    /// ebpf mode: which of the programs' own log records to write (target `rudder_ebpf`):
    /// `off`; `warn`: new flows dropped for want of a route, a free source port or room in
    /// the flow maps; `info`: also connections refused (no endpoints, source ranges, no
    /// local endpoint, unknown ClusterIP port, unallocated Service address). Only rare
    /// paths log, never an established flow's packets; off, the records are removed from
    /// the programs at load.
    #[arg(long, value_enum, default_value = "off")]
    pub bpf_log_level: crate::dataplane::ebpf::BpfLogLevel,
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
            log_level: self.bpf_log_level,
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

impl RunArgs {
    /// Applies `--config`: each value the file sets replaces the flag's, unless the flag
    /// was given on the command line (`matches` tells), as kube-proxy merges them.
    /// Returns the fields the file sets that we do not implement.
    pub fn merge_config_file(&mut self, matches: &clap::ArgMatches) -> Result<Vec<String>, ConfigFileError> {
        let Some(path) = self.config.clone() else {
            return Ok(Vec::new());
        };
        let file = config_file::load(&path)?;
        self.merge(&file, |id| {
            matches.value_source(id) == Some(clap::parser::ValueSource::CommandLine)
        });
        Ok(file.ignored)
    }

    /// `explicit(id)`: whether the flag with that clap id was given on the command line.
    pub fn merge(&mut self, file: &FileConfig, explicit: impl Fn(&str) -> bool) {
        fn set<T: Clone>(slot: &mut T, from: Option<&T>, explicit: bool) {
            if let (false, Some(v)) = (explicit, from) {
                *slot = v.clone();
            }
        }
        set(&mut self.mode, file.mode.as_ref(), explicit("mode"));
        set(
            &mut self.ipvs_scheduler,
            file.ipvs_scheduler.as_ref(),
            explicit("ipvs_scheduler"),
        );
        // The mode's own section, chosen after the flag had its say on the mode.
        let section = file.section(self.mode).clone();
        set(
            &mut self.cluster_cidr,
            file.cluster_cidr.as_ref(),
            explicit("cluster_cidr"),
        );
        let hostname = file.hostname_override.clone().map(Some);
        set(
            &mut self.hostname_override,
            hostname.as_ref(),
            explicit("hostname_override"),
        );
        let kubeconfig = file.kubeconfig.clone().map(Some);
        set(&mut self.kubeconfig, kubeconfig.as_ref(), explicit("kubeconfig"));
        set(
            &mut self.healthz_bind_address,
            file.healthz_bind_address.as_ref(),
            explicit("healthz_bind_address"),
        );
        set(
            &mut self.metrics_bind_address,
            file.metrics_bind_address.as_ref(),
            explicit("metrics_bind_address"),
        );
        set(
            &mut self.nodeport_addresses,
            file.nodeport_addresses.as_ref(),
            explicit("nodeport_addresses"),
        );
        let oom = file.oom_score_adj.map(Some);
        set(&mut self.oom_score_adj, oom.as_ref(), explicit("oom_score_adj"));
        set(
            &mut self.sync_period,
            section.sync_period.as_ref(),
            explicit("sync_period"),
        );
        set(
            &mut self.min_sync_period,
            section.min_sync_period.as_ref(),
            explicit("min_sync_period"),
        );
        set(
            &mut self.masquerade_all,
            section.masquerade_all.as_ref(),
            explicit("masquerade_all"),
        );
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
    Cidr(IpNet),
}

fn parse_cidr(s: &str) -> Result<IpNet, String> {
    crate::model::parse_cidr(s).map_err(|e| e.to_string())
}

pub fn parse_nodeport_address(s: &str) -> Result<NodePortAddress, String> {
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

    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        run: RunArgs,
    }

    /// Parses `flags` as the binary does, then merges `file` into them.
    fn merged(file: &str, flags: &[&str]) -> Result<(RunArgs, Vec<String>), ConfigFileError> {
        use clap::{CommandFactory, FromArgMatches};
        // One file per call: tests run in parallel threads of one process, and a name shared
        // by two of them let one remove the other's file before it was read.
        static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let path = std::env::temp_dir().join(format!("rudder-kpconfig-{}-{n}.yaml", std::process::id()));
        std::fs::write(&path, file).expect("write the config");
        let mut argv = vec![
            "rudder-proxy".to_owned(),
            "--config".to_owned(),
            path.display().to_string(),
        ];
        argv.extend(flags.iter().map(|f| (*f).to_owned()));
        let matches = Cli::command().try_get_matches_from(argv).expect("flags parse");
        let mut args = Cli::from_arg_matches(&matches).expect("flags").run;
        let result = args.merge_config_file(&matches);
        let _ = std::fs::remove_file(&path);
        result.map(|ignored| (args, ignored))
    }

    const FILE: &str = "apiVersion: kubeproxy.config.k8s.io/v1alpha1
kind: KubeProxyConfiguration
mode: ipvs
clusterCIDR: 10.244.0.0/16
hostnameOverride: from-file
metricsBindAddress: 0.0.0.0:10249
ipvs:
  syncPeriod: 45s
  minSyncPeriod: 3s
nftables:
  syncPeriod: 20s
  masqueradeAll: true
oomScoreAdj: -999
";

    #[test]
    fn the_file_fills_what_the_command_line_left_unsaid() {
        let (args, ignored) = merged(FILE, &[]).expect("merges");
        assert!(ignored.is_empty());
        assert_eq!(args.mode, Mode::Ipvs);
        assert_eq!(args.cluster_cidr, vec!["10.244.0.0/16".parse::<IpNet>().unwrap()]);
        assert_eq!(args.hostname_override.as_deref(), Some("from-file"));
        assert_eq!(args.metrics_bind_address, Bind(Some("0.0.0.0:10249".parse().unwrap())));
        // Unset in the file: the flag's default stays.
        assert_eq!(args.healthz_bind_address, Bind(Some("0.0.0.0:10256".parse().unwrap())));
        assert_eq!(
            args.sync_period,
            Duration::from_secs(45),
            "the ipvs section, for ipvs mode"
        );
        assert_eq!(args.min_sync_period, Duration::from_secs(3));
        assert!(!args.masquerade_all);
        assert_eq!(args.oom_score_adj, Some(-999));
    }

    #[test]
    fn flags_given_on_the_command_line_win() {
        let (args, _) = merged(
            FILE,
            &[
                "--proxy-mode",
                "nftables",
                "--hostname-override",
                "from-flag",
                "--cluster-cidr",
                "10.0.0.0/8",
                "--min-sync-period",
                "1s",
                "--oom-score-adj",
                "-500",
            ],
        )
        .expect("merges");
        assert_eq!(args.mode, Mode::Nftables);
        assert_eq!(args.hostname_override.as_deref(), Some("from-flag"));
        assert_eq!(args.cluster_cidr, vec!["10.0.0.0/8".parse::<IpNet>().unwrap()]);
        // The mode the flag chose picks the section: nftables' syncPeriod and masqueradeAll.
        assert_eq!(args.sync_period, Duration::from_secs(20));
        assert!(args.masquerade_all);
        // A flag given with its default value still wins over the file.
        assert_eq!(args.min_sync_period, Duration::from_secs(1));
        assert_eq!(args.oom_score_adj, Some(-500));
    }

    #[test]
    fn a_bad_file_is_refused_before_anything_runs() {
        let e = merged(&format!("{FILE}conntrack:\n  foo: 1\n"), &[]).unwrap_err();
        assert_eq!(e.to_string(), "unknown field \"foo\" at conntrack.foo");
        let e = merged("{", &[]).unwrap_err();
        assert!(e.to_string().contains("not YAML or JSON"), "{e}");
    }

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
