//! `iptables-restore` input for a `DesiredState`.

use std::{
    collections::{BTreeMap, BTreeSet},
    fmt::Write,
    net::IpAddr,
};

use crate::model::{
    DesiredPort, DesiredState, Diff, EndpointSetId, FrontendKind, IpFamily, IpNet, Masquerade, Protocol,
    ServicePortName, Target, TrafficPolicy,
};

/// One family's input for `iptables-restore` / `ip6tables-restore`.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Restore {
    pub v4: String,
    pub v6: String,
}

impl Restore {
    pub fn family(&self, family: IpFamily) -> &str {
        match family {
            IpFamily::V4 => &self.v4,
            IpFamily::V6 => &self.v6,
        }
    }
}

pub const MASQ_MARK: &str = "0x4000";

/// Chains in order, each with its rules (the arguments after `-A <chain>`).
pub(super) type Chains = BTreeMap<String, Vec<String>>;

/// Per table: the chains this mode owns at the top level, always rewritten.
#[derive(Default)]
pub(super) struct Tables {
    pub(super) nat: Chains,
    pub(super) filter: Chains,
}

pub fn render_full(state: &DesiredState) -> Restore {
    let mut out = Restore::default();
    for family in [IpFamily::V4, IpFamily::V6] {
        let mut t = top_chains(state, family);
        for (name, port) in &state.ports {
            t.nat.extend(port_chains(name, port, family));
        }
        let text = restore_text(&t, &BTreeSet::new());
        match family {
            IpFamily::V4 => out.v4 = text,
            IpFamily::V6 => out.v6 = text,
        }
    }
    out
}

pub fn render_partial(old: &DesiredState, new: &DesiredState, diff: &Diff) -> Restore {
    let names: BTreeSet<&ServicePortName> = diff
        .added
        .iter()
        .chain(&diff.removed)
        .chain(diff.changed.keys())
        .collect();
    let mut out = Restore::default();
    for family in [IpFamily::V4, IpFamily::V6] {
        // The top-level chains only change where a touched port's share of them does (or
        // with the Service CIDRs). Unchanged, they are left out of the input: with
        // `--noflush` an undeclared chain keeps its rules, so a one-endpoint change does
        // not rewrite 10k KUBE-SERVICES rules (kube-proxy always does), and the filter
        // table is not loaded and committed at all. Judged from the touched ports: `old`
        // may hold nothing else (see `DesiredState::update`).
        let tops = |s: &DesiredState| -> Vec<(&ServicePortName, PortTop)> {
            names
                .iter()
                .filter_map(|n| s.ports.get(*n).map(|p| (*n, port_top(n, p, family))))
                .collect()
        };
        let (old_top, new_top) = (tops(old), tops(new));
        let same = |part: fn(&PortTop) -> [&Vec<String>; 2]| {
            old_top.len() == new_top.len()
                && old_top
                    .iter()
                    .zip(&new_top)
                    .all(|((a, x), (b, y))| a == b && part(x) == part(y))
        };
        let nat_unchanged = same(|t| [&t.services, &t.nodeports]);
        let filter_unchanged = !diff.service_cidrs_changed && same(|t| [&t.f_services, &t.f_external]);
        let mut t = if nat_unchanged && filter_unchanged {
            Tables::default()
        } else {
            top_chains(new, family)
        };
        let mut stale = BTreeSet::new();
        for name in &names {
            let chains = |s: &DesiredState| {
                s.ports
                    .get(*name)
                    .map(|p| port_chains(name, p, family))
                    .unwrap_or_default()
            };
            let (before, after) = (chains(old), chains(new));
            stale.extend(before.keys().filter(|c| !after.contains_key(*c)).cloned());
            for (chain, rules) in after {
                if before.get(&chain) != Some(&rules) {
                    t.nat.insert(chain, rules);
                }
            }
        }
        if filter_unchanged {
            t.filter.clear();
        }
        if nat_unchanged {
            t.nat.remove("KUBE-SERVICES");
            t.nat.remove("KUBE-NODEPORTS");
        }
        // Constant chains: the full sync wrote them.
        t.nat.remove("KUBE-MARK-MASQ");
        t.nat.remove("KUBE-POSTROUTING");
        let text = restore_text(&t, &stale);
        match family {
            IpFamily::V4 => out.v4 = text,
            IpFamily::V6 => out.v6 = text,
        }
    }
    out
}

fn restore_text(t: &Tables, stale_nat: &BTreeSet<String>) -> String {
    let mut s = String::new();
    for (table, chains, stale) in [("nat", &t.nat, stale_nat), ("filter", &t.filter, &BTreeSet::new())] {
        if chains.is_empty() && stale.is_empty() {
            continue;
        }
        let _ = writeln!(s, "*{table}");
        write_table(&mut s, chains, stale);
        s.push_str("COMMIT\n");
    }
    s
}

/// One table's chains in the order that keeps iptables-nft-restore's chain-name list
/// short to walk (see [`port_key`]): the fixed chains first; then per port, in descending
/// key order, its chains declared (descending), their rules, and the fixed chains' rules
/// that jump to it; then the fixed chains' remaining rules; stale chains last. Every
/// chain is declared before a rule jumps to it, as iptables-legacy-restore requires.
/// Only the relative order of different ports' rules in a fixed chain changes, and those
/// match different frontends.
pub(super) fn write_table(s: &mut String, chains: &Chains, stale: &BTreeSet<String>) {
    /// A fixed chain's rules: before the first rule into a port (in order), those into
    /// each port (in order), and from the first later rule that is not into a port on.
    #[derive(Default)]
    struct Split<'a> {
        head: Vec<&'a str>,
        by_port: BTreeMap<&'a str, Vec<&'a str>>,
        tail: Vec<&'a str>,
    }
    let mut ports: BTreeMap<&str, Vec<(&str, &Vec<String>)>> = BTreeMap::new();
    let mut fixed: Vec<(&str, Split)> = Vec::new();
    for (chain, rules) in chains {
        if let Some(key) = key_of_chain(chain) {
            ports.entry(key).or_default().push((chain, rules));
            continue;
        }
        let mut split = Split::default();
        for rule in rules {
            match key_of_rule(rule) {
                Some(key) if split.tail.is_empty() => split.by_port.entry(key).or_default().push(rule),
                None if split.by_port.is_empty() => split.head.push(rule),
                _ => split.tail.push(rule),
            }
        }
        fixed.push((chain, split));
    }
    for (chain, _) in &fixed {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    for (chain, split) in &fixed {
        for rule in &split.head {
            let _ = writeln!(s, "-A {chain} {rule}");
        }
    }
    let keys: BTreeSet<&str> = ports
        .keys()
        .copied()
        .chain(fixed.iter().flat_map(|(_, split)| split.by_port.keys().copied()))
        .collect();
    for key in keys.iter().rev() {
        let own = ports.get(key).map(Vec::as_slice).unwrap_or_default();
        for (chain, _) in own.iter().rev() {
            let _ = writeln!(s, ":{chain} - [0:0]");
        }
        for (chain, rules) in own {
            for rule in *rules {
                let _ = writeln!(s, "-A {chain} {rule}");
            }
        }
        for (chain, split) in &fixed {
            for rule in split.by_port.get(key).map(Vec::as_slice).unwrap_or_default() {
                let _ = writeln!(s, "-A {chain} {rule}");
            }
        }
    }
    for (chain, split) in &fixed {
        for rule in &split.tail {
            let _ = writeln!(s, "-A {chain} {rule}");
        }
    }
    // Descending too: names of an earlier version (`KUBE-SEP-…`) all sort below the
    // ports' and stay cheap to list.
    for chain in stale.iter().rev() {
        let _ = writeln!(s, ":{chain} - [0:0]");
    }
    for chain in stale.iter().rev() {
        let _ = writeln!(s, "-X {chain}");
    }
}

/// Every chain of one Service port starts with this, followed by its key.
pub const PORT_PREFIX: &str = "KUBE-SVC-";

/// A Service port's key: 40 bits of FNV-1a of its name, in hex. Stable across restarts so
/// partial syncs address earlier chains.
///
/// # Why every chain of a port shares `KUBE-SVC-<key>` (unlike kube-proxy's `KUBE-SEP-…`)
///
/// iptables-nft-restore (1.8.9 at least) keeps the chain names a `--noflush` input
/// mentions in a sorted linked list, inserting each name by walking the list from its
/// smallest (`cache_chain_list_insert` in nft-cache.c): a name costs as many string
/// compares as there are smaller names already listed. kube-proxy's layout names 110k
/// chains at 10k Services × 10 endpoints in scattered order, so the walk is quadratic
/// (a 5k-Service cold restore took minutes). With all chains of a port sharing one prefix
/// and [`restore_text`] writing the ports in descending key order, each new name lands
/// at the head of the list, and every name a rule mentions is among the few smallest;
/// the fixed chains (`KUBE-SERVICES`, `KUBE-MARK-MASQ`, …) all sort below `KUBE-SVC-`.
pub fn port_key(name: &ServicePortName) -> String {
    format!("{:010X}", crate::dataplane::nftables::ruleset::display_hash(name) >> 24)
}

/// The chain of one endpoint of a port: `KUBE-SVC-<key>-<32 bits of the endpoint's hash>`
/// (28 characters, iptables' limit). `taken` holds the names the port already uses: a
/// collision takes the next salted hash, so two endpoints never share a chain.
fn endpoint_chain(key: &str, name: &ServicePortName, ep: &str, taken: &BTreeSet<String>) -> String {
    (0u32..)
        .map(|salt| {
            let h = crate::dataplane::nftables::ruleset::display_hash(&format_args!("{name}|{ep}|{salt}"));
            format!("{PORT_PREFIX}{key}-{:08X}", h >> 32)
        })
        .find(|c| !taken.contains(c))
        .expect("a free name among 2^32 salts")
}

/// The port key of a chain of ours, if it is a port's chain.
fn key_of_chain(chain: &str) -> Option<&str> {
    chain
        .strip_prefix(PORT_PREFIX)
        .map(|rest| rest.get(..10).unwrap_or(rest))
}

/// The port key a rule jumps to, if it jumps into a port's chains.
fn key_of_rule(rule: &str) -> Option<&str> {
    let at = rule.find(&format!("-j {PORT_PREFIX}"))?;
    key_of_chain(&rule[at + 3..])
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn host(ip: IpAddr) -> Host {
    Host(ip)
}

/// An address as a host route (`/32`, `/128`), displayed in place.
struct Host(IpAddr);

impl std::fmt::Display for Host {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.0 {
            IpAddr::V4(a) => write!(f, "{a}/32"),
            IpAddr::V6(a) => write!(f, "{a}/128"),
        }
    }
}

fn dest(ip: IpAddr, p: Protocol, port: u16) -> String {
    let p = proto(p);
    format!("-d {} -p {p} -m {p} --dport {port}", host(ip))
}

fn of_family(cidrs: &[IpNet], family: IpFamily) -> Vec<IpNet> {
    cidrs
        .iter()
        .copied()
        .filter(|c| IpFamily::of_net(c) == family)
        .collect()
}

pub fn set_chain(h: &str, id: EndpointSetId) -> String {
    match id.policy {
        TrafficPolicy::Cluster => format!("{PORT_PREFIX}{h}"),
        TrafficPolicy::Local => format!("{PORT_PREFIX}{h}-LOCAL"),
    }
}

fn ext_chain(h: &str) -> String {
    format!("{PORT_PREFIX}{h}-EXT")
}

fn fw_chain(h: &str) -> String {
    format!("{PORT_PREFIX}{h}-FW")
}

fn top_chains(state: &DesiredState, family: IpFamily) -> Tables {
    let mut t = Tables::default();
    let mark = format!("-j MARK --or-mark {MASQ_MARK}");
    t.nat.insert("KUBE-MARK-MASQ".into(), vec![mark]);
    t.nat.insert(
        "KUBE-POSTROUTING".into(),
        vec![
            format!("-m mark ! --mark {MASQ_MARK}/{MASQ_MARK} -j RETURN"),
            format!("-j MARK --xor-mark {MASQ_MARK}"),
            "-j MASQUERADE --random-fully".into(),
        ],
    );
    let mut services = Vec::new();
    let mut nodeports = Vec::new();
    let mut f_services = Vec::new();
    let mut f_external = Vec::new();
    for (name, port) in &state.ports {
        let top = port_top(name, port, family);
        services.extend(top.services);
        nodeports.extend(top.nodeports);
        f_services.extend(top.f_services);
        f_external.extend(top.f_external);
    }
    services.push("-j KUBE-NODEPORTS".into());
    for cidr in of_family(&state.service_cidrs, family) {
        f_services.push(format!("-m conntrack --ctstate NEW -d {cidr} -j DROP"));
    }
    t.nat.insert("KUBE-SERVICES".into(), services);
    t.nat.insert("KUBE-NODEPORTS".into(), nodeports);
    t.filter.insert("KUBE-SERVICES".into(), f_services);
    t.filter.insert("KUBE-EXTERNAL-SERVICES".into(), f_external);
    t.filter.insert(
        "KUBE-FORWARD".into(),
        vec![
            format!("-m mark --mark {MASQ_MARK}/{MASQ_MARK} -j ACCEPT"),
            "-m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into(),
        ],
    );
    t
}

/// One Service port's rules in the top-level chains: nat `KUBE-SERVICES` and
/// `KUBE-NODEPORTS`, filter `KUBE-SERVICES` and `KUBE-EXTERNAL-SERVICES`.
#[derive(Debug, Default, PartialEq, Eq)]
struct PortTop {
    services: Vec<String>,
    nodeports: Vec<String>,
    f_services: Vec<String>,
    f_external: Vec<String>,
}

fn port_top(name: &ServicePortName, port: &DesiredPort, family: IpFamily) -> PortTop {
    let mut top = PortTop::default();
    let mut fronts = port
        .frontends
        .iter()
        .filter(|(f, _)| IpFamily::of(f.address) == family)
        .peekable();
    if fronts.peek().is_none() {
        return top;
    }
    let reject = match family {
        IpFamily::V4 => "-j REJECT --reject-with icmp-port-unreachable",
        IpFamily::V6 => "-j REJECT --reject-with icmp6-port-unreachable",
    };
    let h = port_key(name);
    for (fe, rule) in fronts {
        let d = dest(fe.address, name.protocol, fe.port);
        // eTP=Local without local endpoints: in-node sources still take the short
        // circuit in KUBE-EXT (DNATed there, so the filter DROP below, which runs
        // after DNAT, no longer matches them); everyone else falls through to it.
        if rule.target == Target::Drop && rule.short_circuit.is_some() {
            let list = if fe.kind == FrontendKind::NodePort {
                &mut top.nodeports
            } else {
                &mut top.services
            };
            list.push(format!("{d} -j {}", ext_chain(&h)));
        }
        match (&rule.target, fe.kind) {
            (Target::Forward(id), FrontendKind::ClusterIp) => {
                top.services.push(format!("{d} -j {}", set_chain(&h, *id)));
            }
            (Target::Forward(_), FrontendKind::NodePort) => top.nodeports.push(format!("{d} -j {}", ext_chain(&h))),
            // loadBalancerSourceRanges: KUBE-FW passes allowed sources on to KUBE-EXT;
            // the rest leave nat untranslated and meet the filter DROP, which runs
            // after DNAT and so never sees the allowed ones.
            (Target::Forward(_), FrontendKind::LoadBalancer) if rule.source_ranges.is_some() => {
                top.services.push(format!("{d} -j {}", fw_chain(&h)));
                top.f_external.push(format!("-m conntrack --ctstate NEW {d} -j DROP"));
            }
            (Target::Forward(_), _) => top.services.push(format!("{d} -j {}", ext_chain(&h))),
            (refusal, kind) => {
                let verdict = if *refusal == Target::Reject { reject } else { "-j DROP" };
                let list = if kind == FrontendKind::ClusterIp {
                    &mut top.f_services
                } else {
                    &mut top.f_external
                };
                list.push(format!("-m conntrack --ctstate NEW {d} {verdict}"));
            }
        }
    }
    top
}

/// The nat chains of one Service port in one family.
fn port_chains(name: &ServicePortName, port: &DesiredPort, family: IpFamily) -> Chains {
    let h = port_key(name);
    let mut chains = Chains::new();
    let p = proto(name.protocol);
    let mut sep_names: BTreeMap<String, String> = BTreeMap::new();
    let mut taken = BTreeSet::new();
    for (id, backends) in port.endpoint_sets.iter().filter(|(id, _)| id.family == family) {
        let chain = set_chain(&h, *id);
        let mut rules = Vec::new();
        // ClusterIP traffic to be masqueraded, before the pick.
        for (fe, rule) in &port.frontends {
            if fe.kind != FrontendKind::ClusterIp
                || rule.target != Target::Forward(*id)
                || IpFamily::of(fe.address) != family
            {
                continue;
            }
            let d = dest(fe.address, name.protocol, fe.port);
            match &rule.masquerade {
                Masquerade::Always => rules.push(format!("{d} -j KUBE-MARK-MASQ")),
                Masquerade::UnlessFrom(cidrs) => {
                    let not_pods: String = cidrs.iter().map(|c| format!(" ! -s {c}")).collect();
                    // iptables allows one negated source per rule; several pod CIDRs need
                    // one rule each ANDed, which a RETURN chain gives.
                    if cidrs.len() == 1 {
                        rules.push(format!("{d}{not_pods} -j KUBE-MARK-MASQ"));
                    } else {
                        let mq = format!("{PORT_PREFIX}{h}-MQ");
                        let mut m: Vec<String> = cidrs.iter().map(|c| format!("-s {c} -j RETURN")).collect();
                        m.push("-j KUBE-MARK-MASQ".into());
                        chains.insert(mq.clone(), m);
                        rules.push(format!("{d} -j {mq}"));
                    }
                }
                Masquerade::HairpinOnly => {}
            }
        }
        let seps: Vec<(String, String)> = backends
            .iter()
            .map(|b| {
                let ep = match b.address {
                    IpAddr::V4(a) => format!("{a}:{}", b.port),
                    IpAddr::V6(a) => format!("[{a}]:{}", b.port),
                };
                // An endpoint in both the cluster and the local set keeps one chain.
                let sep = match sep_names.get(&ep) {
                    Some(sep) => sep.clone(),
                    None => {
                        let sep = endpoint_chain(&h, name, &ep, &taken);
                        taken.insert(sep.clone());
                        sep_names.insert(ep.clone(), sep.clone());
                        sep
                    }
                };
                (sep, ep)
            })
            .collect();
        if let Some(aff) = port.affinity {
            for (sep, _) in &seps {
                rules.push(format!(
                    "-m recent --name {sep} --mask {} --rcheck --seconds {} --reap -j {sep}",
                    full_mask(family),
                    aff.timeout_seconds
                ));
            }
        }
        let n = seps.len();
        for (i, (sep, _)) in seps.iter().enumerate() {
            if i + 1 < n {
                rules.push(format!(
                    "-m statistic --mode random --probability {:.10} -j {sep}",
                    1.0 / (n - i) as f64
                ));
            } else {
                rules.push(format!("-j {sep}"));
            }
        }
        chains.insert(chain, rules);
        for (b, (sep, ep)) in backends.iter().zip(&seps) {
            let mut rules = vec![format!("-s {} -j KUBE-MARK-MASQ", host(b.address))];
            if port.affinity.is_some() {
                rules.push(format!(
                    "-p {p} -m recent --name {sep} --mask {} --set -m {p} -j DNAT --to-destination {ep}",
                    full_mask(family)
                ));
            } else {
                rules.push(format!("-p {p} -m {p} -j DNAT --to-destination {ep}"));
            }
            chains.insert(sep.clone(), rules);
        }
    }
    // External frontends share one chain: masquerade, short circuit, then the set.
    let external: Vec<_> = port
        .frontends
        .iter()
        .filter(|(f, r)| {
            f.kind.is_external()
                && IpFamily::of(f.address) == family
                && (matches!(r.target, Target::Forward(_)) || r.short_circuit.is_some())
        })
        .collect();
    if let Some((_, rule)) = external.first() {
        let mut rules = Vec::new();
        if rule.masquerade == Masquerade::Always {
            rules.push("-j KUBE-MARK-MASQ".into());
        }
        if let Some(sc) = &rule.short_circuit {
            let to = set_chain(&h, sc.to);
            for c in &sc.pod_sources {
                rules.push(format!("-s {c} -j {to}"));
            }
            rules.push("-m addrtype --src-type LOCAL -j KUBE-MARK-MASQ".into());
            rules.push(format!("-m addrtype --src-type LOCAL -j {to}"));
        }
        if let Target::Forward(id) = rule.target {
            rules.push(format!("-j {}", set_chain(&h, id)));
        }
        chains.insert(ext_chain(&h), rules);
    }
    let fenced = external.iter().find_map(|(f, r)| {
        (f.kind == FrontendKind::LoadBalancer && matches!(r.target, Target::Forward(_)))
            .then_some(r.source_ranges.as_ref())
            .flatten()
    });
    if let Some(ranges) = fenced {
        let rules = ranges.iter().map(|c| format!("-s {c} -j {}", ext_chain(&h))).collect();
        chains.insert(fw_chain(&h), rules);
    }
    chains
}

fn full_mask(family: IpFamily) -> &'static str {
    match family {
        IpFamily::V4 => "255.255.255.255",
        IpFamily::V6 => "ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff",
    }
}
