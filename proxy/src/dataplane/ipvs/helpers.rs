//! What IPVS cannot do alone, done as kube-proxy's ipvs proxier does it: ipsets holding
//! the frontends by role, and a few iptables rules matching those sets.
//!
//! - masquerade: ClusterIPs reached from outside the pod CIDRs (`KUBE-CLUSTER-IP`),
//!   external frontends under `externalTrafficPolicy: Cluster` and everything under
//!   `--masquerade-all` (`KUBE-MASQ`), hairpin (`KUBE-LOOP-BACK`, endpoint,port,endpoint);
//!   IPVS's NAT sends through the output path with `net.ipv4.vs.conntrack=1`, so the nat
//!   POSTROUTING MASQUERADE sees its packets;
//! - refusals: frontends without any endpoint are rejected (`KUBE-REJECT`), those whose
//!   Local policy has none here dropped (`KUBE-DROP`), both in filter before IPVS (which
//!   runs late in LOCAL_IN) so IPVS never sees them;
//! - `loadBalancerSourceRanges`: `KUBE-LB-FW` frontends accept only sources in
//!   `KUBE-LB-SRC` (frontend,port,cidr);
//! - the eTP=Local short circuit: traffic from pods and the node to such a frontend is
//!   DNATed in nat to the cluster-wide endpoints (a per-port chain), before IPVS, which
//!   would only offer the local ones;
//! - the Service CIDRs: new connections to an unassigned address in them are dropped.
//!
//! The sets scale with Services; the rules do not (but for the rare short-circuit
//! chains). Everything here is pure: [`render`] turns a `DesiredState` into an `ipset
//! restore` script and one `iptables-restore` input per family; `apply` feeds them.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    net::IpAddr,
};

use crate::model::{DesiredState, FrontendKind, IpFamily, IpNet, Masquerade, Protocol, ServicePortName, Target};

pub const MASQ_MARK: &str = "0x4000";
/// kube-proxy's KUBE-MARK-DROP mark.
pub const DROP_MARK: &str = "0x8000";

/// Our ipsets, by role. Names are per family (`KUBE-6-…` for IPv6).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SetKind {
    ClusterIp,
    Masq,
    LoopBack,
    LbFirewall,
    LbSource,
    Reject,
    Drop,
}

impl SetKind {
    pub const ALL: [SetKind; 7] = [
        Self::ClusterIp,
        Self::Masq,
        Self::LoopBack,
        Self::LbFirewall,
        Self::LbSource,
        Self::Reject,
        Self::Drop,
    ];

    fn base(self) -> &'static str {
        match self {
            Self::ClusterIp => "CLUSTER-IP",
            Self::Masq => "MASQ",
            Self::LoopBack => "LOOP-BACK",
            Self::LbFirewall => "LB-FW",
            Self::LbSource => "LB-SRC",
            Self::Reject => "REJECT",
            Self::Drop => "DROP",
        }
    }

    pub fn name(self, family: IpFamily) -> String {
        match family {
            IpFamily::V4 => format!("KUBE-{}", self.base()),
            IpFamily::V6 => format!("KUBE-6-{}", self.base()),
        }
    }

    fn set_type(self) -> &'static str {
        match self {
            Self::LoopBack => "hash:ip,port,ip",
            Self::LbSource => "hash:ip,port,net",
            _ => "hash:ip,port",
        }
    }
}

/// Every set name this mode may have created (for cleanup).
pub fn all_set_names() -> Vec<String> {
    let mut out = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for kind in SetKind::ALL {
            out.push(kind.name(family));
            out.push(temp_name(&kind.name(family)));
        }
    }
    out
}

fn temp_name(set: &str) -> String {
    format!("{set}-NEW")
}

/// The members of every set, per family.
pub type Sets = BTreeMap<(IpFamily, SetKind), BTreeSet<String>>;

/// The helper state for one `DesiredState`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Helpers {
    pub sets: Sets,
    /// `iptables-restore` input per family.
    pub v4: String,
    pub v6: String,
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// A set member's port as `ipset restore` reads it: TCP by omission (ipset's default),
/// because naming a protocol makes ipset look it up in `/etc/protocols` for every member —
/// a file open and parse per entry, which made 10k members take 15 s in the QEMU guest.
fn set_port(p: Protocol, port: u16) -> String {
    match p {
        Protocol::Tcp => port.to_string(),
        _ => format!("{}:{port}", proto(p)),
    }
}

fn host(ip: IpAddr) -> String {
    match ip {
        IpAddr::V4(a) => format!("{a}/32"),
        IpAddr::V6(a) => format!("{a}/128"),
    }
}

/// A per-port chain name, stable across restarts.
fn port_hash(name: &ServicePortName) -> String {
    format!("{:016X}", crate::dataplane::nftables::ruleset::display_hash(&name))
}

/// Short-circuit DNAT chains of one family: chain name → rules.
type ScChains = BTreeMap<String, Vec<String>>;

pub fn render(state: &DesiredState) -> Helpers {
    let mut sets = Sets::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        for kind in SetKind::ALL {
            sets.insert((family, kind), BTreeSet::new());
        }
    }
    let mut pod_cidrs: BTreeMap<IpFamily, BTreeSet<IpNet>> = BTreeMap::new();
    let mut sc: BTreeMap<IpFamily, (Vec<String>, ScChains)> = BTreeMap::new();
    let node_addresses: BTreeSet<IpAddr> = state
        .ports
        .values()
        .flat_map(|p| p.frontends.keys())
        .filter(|f| f.kind == FrontendKind::NodePort)
        .map(|f| f.address)
        .collect();
    for (name, port) in &state.ports {
        let p = proto(name.protocol);
        let sp = |port: u16| set_port(name.protocol, port);
        for (fe, rule) in &port.frontends {
            let family = IpFamily::of(fe.address);
            let member = format!("{},{}", fe.address, sp(fe.port));
            let mut add = |kind: SetKind, m: String| {
                if let Some(s) = sets.get_mut(&(family, kind)) {
                    s.insert(m);
                }
            };
            match rule.target {
                Target::Reject => add(SetKind::Reject, member.clone()),
                Target::Drop => add(SetKind::Drop, member.clone()),
                Target::Forward(_) => match &rule.masquerade {
                    Masquerade::Always => add(SetKind::Masq, member.clone()),
                    Masquerade::UnlessFrom(cidrs) => {
                        add(SetKind::ClusterIp, member.clone());
                        pod_cidrs.entry(family).or_default().extend(cidrs.iter().copied());
                    }
                    Masquerade::HairpinOnly => {}
                },
            }
            if let (Some(ranges), Target::Forward(_)) = (&rule.source_ranges, &rule.target) {
                // A /0 range admits everyone, and hash:net cannot hold it: no fence.
                if ranges.iter().all(|c| c.prefix_len() > 0) {
                    add(SetKind::LbFirewall, member.clone());
                    for c in ranges {
                        add(SetKind::LbSource, format!("{},{},{c}", fe.address, sp(fe.port)));
                    }
                    // The node reaching its own load balancer IP (bound locally, so the
                    // kernel picks that IP as the source) counts as the node, as in
                    // kube-proxy: admitted when a range holds one of the node's addresses.
                    let node_in_range = node_addresses.iter().any(|a| ranges.iter().any(|c| c.contains(a)));
                    if node_in_range {
                        add(
                            SetKind::LbSource,
                            format!("{},{},{}", fe.address, sp(fe.port), host(fe.address)),
                        );
                    }
                }
            }
            if let Some(short) = &rule.short_circuit {
                let Some(backends) = port.endpoint_sets.get(&short.to) else {
                    continue;
                };
                let chain = format!("KUBE-IPVS-SC{}", port_hash(name));
                let (rules, chains) = sc.entry(family).or_default();
                let d = format!("-d {} -p {p} -m {p} --dport {}", host(fe.address), fe.port);
                for c in &short.pod_sources {
                    rules.push(format!("{d} -s {c} -j {chain}"));
                }
                rules.push(format!("{d} -m addrtype --src-type LOCAL -j KUBE-IPVS-MARK-MASQ"));
                rules.push(format!("{d} -m addrtype --src-type LOCAL -j {chain}"));
                chains.entry(chain).or_insert_with(|| {
                    let n = backends.len();
                    backends
                        .iter()
                        .enumerate()
                        .map(|(i, b)| {
                            let to = match b.address {
                                IpAddr::V4(a) => format!("{a}:{}", b.port),
                                IpAddr::V6(a) => format!("[{a}]:{}", b.port),
                            };
                            let pick = if i + 1 < n {
                                format!("-m statistic --mode random --probability {:.10} ", 1.0 / (n - i) as f64)
                            } else {
                                String::new()
                            };
                            format!("-p {p} {pick}-j DNAT --to-destination {to}")
                        })
                        .collect()
                });
            }
        }
        for (id, backends) in &port.endpoint_sets {
            for b in backends {
                if let Some(s) = sets.get_mut(&(id.family, SetKind::LoopBack)) {
                    s.insert(format!("{},{},{}", b.address, sp(b.port), b.address));
                }
            }
        }
    }
    let rules = |family: IpFamily| {
        let empty = (Vec::new(), ScChains::new());
        let (sc_rules, sc_chains) = sc.get(&family).unwrap_or(&empty);
        restore_text(
            family,
            pod_cidrs.get(&family).cloned().unwrap_or_default(),
            &state.service_cidrs,
            sc_rules,
            sc_chains,
        )
    };
    Helpers {
        v4: rules(IpFamily::V4),
        v6: rules(IpFamily::V6),
        sets,
    }
}

/// Our fixed chains (the short-circuit ones start with `KUBE-IPVS-SC`).
pub const NAT_CHAINS: &[&str] = &[
    "KUBE-IPVS-SERVICES",
    "KUBE-IPVS-MARK-MASQ",
    "KUBE-IPVS-CLUSTER-MASQ",
    "KUBE-IPVS-POSTROUTING",
];
pub const FILTER_CHAINS: &[&str] = &["KUBE-IPVS-FILTER", "KUBE-IPVS-FORWARD"];

/// Jumps from the built-in chains: (table, built-in chain, rule).
pub const JUMPS: &[(&str, &str, &str)] = &[
    (
        "nat",
        "PREROUTING",
        "-m comment --comment rudder-ipvs -j KUBE-IPVS-SERVICES",
    ),
    (
        "nat",
        "OUTPUT",
        "-m comment --comment rudder-ipvs -j KUBE-IPVS-SERVICES",
    ),
    (
        "nat",
        "POSTROUTING",
        "-m comment --comment rudder-ipvs -j KUBE-IPVS-POSTROUTING",
    ),
    (
        "filter",
        "INPUT",
        "-m comment --comment rudder-ipvs -j KUBE-IPVS-FILTER",
    ),
    (
        "filter",
        "FORWARD",
        "-m comment --comment rudder-ipvs -j KUBE-IPVS-FORWARD",
    ),
    (
        "filter",
        "FORWARD",
        "-m comment --comment rudder-ipvs -j KUBE-IPVS-FILTER",
    ),
    (
        "filter",
        "OUTPUT",
        "-m comment --comment rudder-ipvs -j KUBE-IPVS-FILTER",
    ),
];

fn restore_text(
    family: IpFamily,
    pod_cidrs: BTreeSet<IpNet>,
    service_cidrs: &[IpNet],
    sc_rules: &[String],
    sc_chains: &ScChains,
) -> String {
    let set = |k: SetKind| k.name(family);
    let mut s = String::from("*nat\n");
    for c in NAT_CHAINS
        .iter()
        .map(|c| (*c).to_owned())
        .chain(sc_chains.keys().cloned())
    {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    for r in sc_rules {
        let _ = writeln!(s, "-A KUBE-IPVS-SERVICES {r}");
    }
    // loadBalancerSourceRanges: sources outside them are marked here and dropped in
    // filter. Here, because for the node's own connections IPVS (LOCAL_OUT, just after
    // nat) has rewritten the destination before filter OUTPUT sees it.
    let _ = writeln!(
        s,
        "-A KUBE-IPVS-SERVICES -m set --match-set {} dst,dst -m set ! --match-set {} dst,dst,src -j MARK --or-mark {DROP_MARK}",
        set(SetKind::LbFirewall),
        set(SetKind::LbSource)
    );
    let _ = writeln!(
        s,
        "-A KUBE-IPVS-SERVICES -m set --match-set {} dst,dst -j KUBE-IPVS-CLUSTER-MASQ",
        set(SetKind::ClusterIp)
    );
    let _ = writeln!(
        s,
        "-A KUBE-IPVS-SERVICES -m set --match-set {} dst,dst -j KUBE-IPVS-MARK-MASQ",
        set(SetKind::Masq)
    );
    // Sources in the pod CIDRs keep their address; all others are masqueraded so replies
    // come back through this node.
    for c in &pod_cidrs {
        let _ = writeln!(s, "-A KUBE-IPVS-CLUSTER-MASQ -s {c} -j RETURN");
    }
    s += "-A KUBE-IPVS-CLUSTER-MASQ -j KUBE-IPVS-MARK-MASQ\n";
    let _ = writeln!(s, "-A KUBE-IPVS-MARK-MASQ -j MARK --or-mark {MASQ_MARK}");
    let _ = writeln!(
        s,
        "-A KUBE-IPVS-POSTROUTING -m set --match-set {} dst,dst,src -j MASQUERADE",
        set(SetKind::LoopBack)
    );
    let _ = writeln!(
        s,
        "-A KUBE-IPVS-POSTROUTING -m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"
    );
    let _ = writeln!(s, "-A KUBE-IPVS-POSTROUTING -j MARK --xor-mark {MASQ_MARK}");
    s += "-A KUBE-IPVS-POSTROUTING -j MASQUERADE --random-fully\n";
    for (chain, rules) in sc_chains {
        for r in rules {
            let _ = writeln!(s, "-A {chain} {r}");
        }
    }
    s += "COMMIT\n*filter\n";
    for c in FILTER_CHAINS {
        let _ = writeln!(s, ":{c} - [0:0]");
    }
    let new = "-m conntrack --ctstate NEW";
    // Marked in nat (before IPVS rewrites the destination of the node's own packets in
    // LOCAL_OUT); the mark survives the rewrite.
    let _ = writeln!(s, "-A KUBE-IPVS-FILTER -m mark --mark {DROP_MARK}/{DROP_MARK} -j DROP");
    let reject = match family {
        IpFamily::V4 => "icmp-port-unreachable",
        IpFamily::V6 => "icmp6-port-unreachable",
    };
    let _ = writeln!(
        s,
        "-A KUBE-IPVS-FILTER {new} -m set --match-set {} dst,dst -j REJECT --reject-with {reject}",
        set(SetKind::Reject)
    );
    let _ = writeln!(
        s,
        "-A KUBE-IPVS-FILTER {new} -m set --match-set {} dst,dst -j DROP",
        set(SetKind::Drop)
    );
    for c in service_cidrs.iter().filter(|c| IpFamily::of_net(c) == family) {
        let _ = writeln!(
            s,
            "-A KUBE-IPVS-FILTER {new} -m addrtype ! --dst-type LOCAL -d {c} -j DROP"
        );
    }
    let _ = writeln!(
        s,
        "-A KUBE-IPVS-FORWARD -m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"
    );
    s += "-A KUBE-IPVS-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n";
    s
}

/// An `ipset restore` script that makes the live sets hold `sets`, all or nothing: every
/// new content is built in a `-NEW` set first; only when all are filled are they swapped
/// in (a swap does not fail), then the old contents destroyed. `existing` is what `ipset
/// list -n` reported.
pub fn ipset_script(sets: &Sets, existing: &BTreeSet<String>) -> String {
    let mut s = String::new();
    for ((family, kind), members) in sets {
        let live = kind.name(*family);
        let temp = temp_name(&live);
        let inet = match family {
            IpFamily::V4 => "inet",
            IpFamily::V6 => "inet6",
        };
        let maxelem = (members.len() * 2).next_power_of_two().max(65536);
        let hashsize = (members.len() / 4).next_power_of_two().max(1024);
        let create = |name: &str| {
            format!(
                "create {name} {} family {inet} hashsize {hashsize} maxelem {maxelem}\n",
                kind.set_type()
            )
        };
        if !existing.contains(&live) {
            s += &create(&live);
        }
        if existing.contains(&temp) {
            // Left by a sync that failed half way.
            let _ = writeln!(s, "destroy {temp}");
        }
        s += &create(&temp);
        for m in members {
            let _ = writeln!(s, "add {temp} {m}");
        }
    }
    for (family, kind) in sets.keys() {
        let live = kind.name(*family);
        let _ = writeln!(s, "swap {} {live}", temp_name(&live));
    }
    for (family, kind) in sets.keys() {
        let _ = writeln!(s, "destroy {}", temp_name(&kind.name(*family)));
    }
    s
}

/// The `ipset -exist restore` lines that turn the live sets from `old` into `new` in
/// place: what a sync after a successful one writes (one changed endpoint is two lines,
/// not a rebuild of 100k members). Set by set it is not atomic; a failure makes the next
/// sync a full one, which rebuilds every set by [`ipset_script`].
pub fn ipset_delta(old: &Sets, new: &Sets) -> String {
    let mut s = String::new();
    let none = BTreeSet::new();
    for ((family, kind), members) in new {
        let live = kind.name(*family);
        let before = old.get(&(*family, *kind)).unwrap_or(&none);
        for m in members.difference(before) {
            let _ = writeln!(s, "add {live} {m}");
        }
        for m in before.difference(members) {
            let _ = writeln!(s, "del {live} {m}");
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::model::{
        ModelConfig, NodeInfo, ServicePortMap, endpoints::endpoints_map, fixtures, service::service_ports,
    };

    fn state(spec: serde_json::Value, endpoints: &[&str], local: bool) -> DesiredState {
        let svc = fixtures::service(json!({"metadata": {"namespace": "ns", "name": "web"}, "spec": spec}));
        let mut ports = ServicePortMap::new();
        ports.extend(service_ports(&svc).unwrap());
        let node = if local { "n1" } else { "n2" };
        let eps: Vec<_> = endpoints.iter().map(|a| fixtures::ready(a, node)).collect();
        let slices = if endpoints.is_empty() {
            vec![]
        } else {
            vec![fixtures::simple_slice("web", "web-1", "http", 8080, eps)]
        };
        let endpoints = endpoints_map(&slices, "n1").unwrap();
        let node = NodeInfo {
            name: "n1".into(),
            addresses: vec!["10.250.0.11".parse().unwrap()],
            ..Default::default()
        };
        let config = ModelConfig {
            cluster_cidrs: vec!["10.244.0.0/16".parse().unwrap()],
            service_cidrs: vec!["10.96.0.0/16".parse().unwrap()],
            ..Default::default()
        };
        DesiredState::build(&ports, &endpoints, &node, &config)
    }

    fn members(h: &Helpers, kind: SetKind) -> Vec<&str> {
        h.sets[&(IpFamily::V4, kind)].iter().map(String::as_str).collect()
    }

    #[test]
    fn cluster_ips_and_node_ports_are_masqueraded_by_role() {
        let spec = json!({"type": "NodePort", "clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]});
        let h = render(&state(spec, &["10.244.1.10"], true));
        assert_eq!(members(&h, SetKind::ClusterIp), ["10.96.0.10,80"]);
        assert_eq!(members(&h, SetKind::Masq), ["10.250.0.11,30080"]);
        assert_eq!(members(&h, SetKind::LoopBack), ["10.244.1.10,8080,10.244.1.10"]);
        assert!(
            h.v4.contains("-A KUBE-IPVS-CLUSTER-MASQ -s 10.244.0.0/16 -j RETURN"),
            "{}",
            h.v4
        );
        assert!(h.v4.contains("--ctstate NEW -m addrtype ! --dst-type LOCAL -d 10.96.0.0/16 -j DROP"));
        // Source ranges are judged in nat, before IPVS rewrites the node's own packets.
        assert!(h.v4.contains("-A KUBE-IPVS-SERVICES -m set --match-set KUBE-LB-FW dst,dst -m set ! --match-set KUBE-LB-SRC dst,dst,src -j MARK --or-mark 0x8000"));
        assert!(h.v4.contains("-A KUBE-IPVS-FILTER -m mark --mark 0x8000/0x8000 -j DROP"));
    }

    #[test]
    fn services_without_endpoints_are_rejected_and_local_policy_without_local_ones_dropped() {
        let spec = json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
        let h = render(&state(spec, &[], true));
        assert_eq!(members(&h, SetKind::Reject), ["10.96.0.10,80"]);
        let spec = json!({"type": "NodePort", "externalTrafficPolicy": "Local", "clusterIP": "10.96.0.10",
            "clusterIPs": ["10.96.0.10"], "ports": [{"name": "http", "port": 80, "targetPort": 8080, "nodePort": 30080}]});
        let h = render(&state(spec, &["10.244.2.10"], false));
        assert_eq!(members(&h, SetKind::Drop), ["10.250.0.11,30080"]);
        // Pods and the node still reach the cluster-wide endpoints.
        assert!(h.v4.contains("-s 10.244.0.0/16 -j KUBE-IPVS-SC"), "{}", h.v4);
        // iptables takes chain names of at most 28 characters.
        for line in h.v4.lines().filter_map(|l| l.strip_prefix(':')) {
            let chain = line.split_whitespace().next().unwrap_or_default();
            assert!(chain.len() <= 28, "{chain} is too long for iptables");
        }
        assert!(h.v4.contains("-j DNAT --to-destination 10.244.2.10:8080"), "{}", h.v4);
    }

    #[test]
    fn the_ipset_script_fills_every_new_set_before_swapping_any() {
        let spec = json!({"clusterIP": "10.96.0.10", "clusterIPs": ["10.96.0.10"],
            "ports": [{"name": "http", "port": 80, "targetPort": 8080}]});
        let h = render(&state(spec, &["10.244.1.10"], true));
        let existing = BTreeSet::from(["KUBE-CLUSTER-IP".to_owned(), "KUBE-CLUSTER-IP-NEW".to_owned()]);
        let script = ipset_script(&h.sets, &existing);
        let first_swap = script.find("swap ").unwrap();
        assert!(script.rfind("add ").unwrap() < first_swap);
        assert!(
            !script.contains("create KUBE-CLUSTER-IP hash"),
            "exists already:\n{script}"
        );
        assert!(script.starts_with("destroy KUBE-CLUSTER-IP-NEW\n"), "{script}");
        assert!(script.contains("add KUBE-CLUSTER-IP-NEW 10.96.0.10,80\n"));
    }
}
