//! The intermediate ruleset: what the text renderer prints and the tracer interprets, so
//! tests of the tracer test the same objects `nft` receives.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::chains::{
    BASE_CHAINS, CLUSTER_IPS, CLUSTER_IPS_CHECK, FILTER_IPS, FIREWALL_CHECK, HAIRPIN, MASQUERADING, NODEPORT_IPS,
    REJECT_CHAIN, SERVICE_CIDRS, SERVICE_IPS, SERVICE_NODEPORTS, SERVICES,
};
use crate::model::{
    Backend, DesiredPort, DesiredState, EndpointSetId, Frontend, FrontendKind, FrontendRule, IpFamily, IpNet,
    Masquerade, Protocol, ServicePortName, ShortCircuit, Target, TrafficPolicy,
};

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Match {
    SaddrIn(Vec<IpNet>),
    SaddrNotIn(Vec<IpNet>),
    /// `fib saddr type local`: the packet comes from one of the host's addresses.
    SaddrLocal,
    SaddrInSet(String),
    DaddrInSet(String),
    Marked,
    /// `ct status dnat ip saddr . ip daddr @hairpin-endpoints`: a backend reached itself.
    Hairpin,
    Tcp,
}

/// How a verdict map is keyed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VmapKey {
    DaddrProtoPort,
    ProtoPort,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Stmt {
    MarkMasq,
    ClearMark,
    Masquerade,
    /// `update @set { ip saddr }`: refreshes the client's affinity entry.
    UpdateSet(String),
    /// DNAT to this one backend (affinity's per-endpoint chains). nft rewrites ports only
    /// after a transport protocol match, so the protocol comes along.
    Dnat(Protocol, Vec<(IpAddr, u16)>),
    /// DNAT to a uniformly random one of `count` slots that the frontend owns in the
    /// endpoint map `map` (see [`SlotKey`]).
    DnatSlots {
        protocol: Protocol,
        map: String,
        count: u32,
    },
    Jump(String),
    Goto(String),
    GotoRandom(Vec<String>),
    Vmap(VmapKey, String),
    Drop,
    /// TCP gets a reset, everything else ICMP port unreachable (see [`REJECT_CHAIN`]).
    Reject {
        tcp_reset: bool,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rule {
    pub matches: Vec<Match>,
    pub stmts: Vec<Stmt>,
}

impl Rule {
    fn new(matches: Vec<Match>, stmts: Vec<Stmt>) -> Self {
        Self { matches, stmts }
    }
}

/// A verdict map element's value.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Verdict {
    Goto(String),
    Drop,
}

/// Endpoint lists are elements of shared maps keyed `frontend address . protocol . port .
/// slot`, so replacing an endpoint changes elements, never rules; the DNAT rule reads the
/// key from the packet and draws the slot with `numgen random mod <count>`.
///
/// Sharded because the kernel checks each new element of a map against every rule that
/// looks the map up (`nft_add_set_elem` walks the set's bindings): one map for 10k
/// Services made a cold load of 100k endpoints take 40 s. Per-Service maps are no answer
/// either: the kernel finds sets by a linear walk of the table's list, so 10k of them
/// cost 11 s. 64 shards load in under 4 s.
///
/// And per protocol, because nft (1.0.6) re-reads a typeof map's value expression (`ip
/// daddr . tcp dport`) in the protocol context of every rule that uses it: a TCP rule
/// and a UDP rule cannot share a map, and a protocol-neutral value (`th dport`) is
/// refused next to the rule's `meta l4proto`, which nft needs to rewrite the port.
pub const ENDPOINT_SHARDS: u64 = 64;

/// Which list a slot belongs to: the one the frontend's traffic policy selects, or the
/// cluster-wide one that eTP=Local's short circuit uses for the same frontend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum SlotList {
    Selected,
    ShortCircuit,
}

impl SlotList {
    pub fn map(self, protocol: Protocol, shard: u64) -> String {
        let p = protocol_name(protocol);
        match self {
            Self::Selected => format!("endpoints-{p}-{shard}"),
            Self::ShortCircuit => format!("short-circuit-endpoints-{p}-{shard}"),
        }
    }
}

pub fn protocol_name(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

/// Every endpoint map a table declares, with its protocol.
pub fn slot_maps() -> impl Iterator<Item = (Protocol, String)> {
    [SlotList::Selected, SlotList::ShortCircuit]
        .into_iter()
        .flat_map(|list| {
            [Protocol::Tcp, Protocol::Udp, Protocol::Sctp]
                .into_iter()
                .flat_map(move |p| (0..ENDPOINT_SHARDS).map(move |shard| (p, list.map(p, shard))))
        })
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct SlotKey {
    pub map: String,
    pub address: IpAddr,
    pub protocol: Protocol,
    pub port: u16,
    pub slot: u32,
}

/// Everything one Service port owns in one table; an incremental sync replaces exactly
/// these for the ports the diff names.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortObjects {
    pub chains: BTreeMap<String, Vec<Rule>>,
    /// Affinity sets, with their timeout in seconds.
    pub sets: BTreeMap<String, u32>,
    pub service_ips: BTreeMap<(IpAddr, Protocol, u16), Verdict>,
    pub service_nodeports: BTreeMap<(Protocol, u16), Verdict>,
    pub filter_ips: BTreeMap<(IpAddr, Protocol, u16), Verdict>,
    /// Endpoint map elements: slot → backend.
    pub slots: BTreeMap<SlotKey, (IpAddr, u16)>,
}

/// Set contents shared by all ports, recomputed from the whole state (an address may be
/// used by several Services, so per-port ownership would delete it too early).
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Globals {
    pub cluster_ips: BTreeSet<IpAddr>,
    pub nodeport_ips: BTreeSet<IpAddr>,
    pub hairpin: BTreeSet<IpAddr>,
    pub service_cidrs: BTreeSet<IpNet>,
}

impl Globals {
    /// (set name, elements rendered by the caller) for uniform handling.
    pub fn sets(&self) -> [(&'static str, Vec<Element>); 4] {
        let addrs = |s: &BTreeSet<IpAddr>| s.iter().map(|a| Element::Addr(*a)).collect();
        [
            (CLUSTER_IPS, addrs(&self.cluster_ips)),
            (NODEPORT_IPS, addrs(&self.nodeport_ips)),
            (HAIRPIN, self.hairpin.iter().map(|a| Element::Pair(*a)).collect()),
            (
                SERVICE_CIDRS,
                self.service_cidrs.iter().map(|c| Element::Cidr(*c)).collect(),
            ),
        ]
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Element {
    Addr(IpAddr),
    /// `addr . addr`, for the hairpin set.
    Pair(IpAddr),
    Cidr(IpNet),
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Table {
    pub family: IpFamily,
    /// The fixed regular chains (dispatch, checks, masquerading).
    pub fixed: BTreeMap<&'static str, Vec<Rule>>,
    pub globals: Globals,
    pub ports: BTreeMap<ServicePortName, PortObjects>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Ruleset {
    pub tables: Vec<Table>,
}

impl Ruleset {
    pub fn build(state: &DesiredState) -> Self {
        let tables = [IpFamily::V4, IpFamily::V6]
            .into_iter()
            .map(|family| Table {
                family,
                fixed: fixed_chains(),
                globals: globals(state, family),
                ports: state
                    .ports
                    .iter()
                    .map(|(name, port)| (name.clone(), port_objects(name, port, family)))
                    .filter(|(_, objects)| *objects != PortObjects::default())
                    .collect(),
            })
            .collect();
        Self { tables }
    }

    pub fn table(&self, family: IpFamily) -> &Table {
        self.tables
            .iter()
            .find(|t| t.family == family)
            .expect("both families are built")
    }
}

fn fixed_chains() -> BTreeMap<&'static str, Vec<Rule>> {
    let rule = Rule::new;
    BTreeMap::from([
        (
            FIREWALL_CHECK,
            vec![rule(
                vec![],
                vec![Stmt::Vmap(VmapKey::DaddrProtoPort, FILTER_IPS.into())],
            )],
        ),
        (
            SERVICES,
            vec![
                rule(vec![], vec![Stmt::Vmap(VmapKey::DaddrProtoPort, SERVICE_IPS.into())]),
                rule(
                    vec![Match::DaddrInSet(NODEPORT_IPS.into())],
                    vec![Stmt::Vmap(VmapKey::ProtoPort, SERVICE_NODEPORTS.into())],
                ),
            ],
        ),
        (
            // A service IP with no frontend on this port is refused, like a closed port; an
            // unallocated address in the service range is dropped, as nothing listens there.
            CLUSTER_IPS_CHECK,
            vec![
                rule(
                    vec![Match::DaddrInSet(CLUSTER_IPS.into())],
                    vec![Stmt::Jump(REJECT_CHAIN.into())],
                ),
                rule(vec![Match::DaddrInSet(SERVICE_CIDRS.into())], vec![Stmt::Drop]),
            ],
        ),
        (
            MASQUERADING,
            vec![
                // Cleared so a packet re-entering the stack (e.g. via a tunnel) is not
                // masqueraded twice.
                rule(vec![Match::Marked], vec![Stmt::ClearMark, Stmt::Masquerade]),
                rule(vec![Match::Hairpin], vec![Stmt::Masquerade]),
            ],
        ),
        (
            REJECT_CHAIN,
            vec![
                rule(vec![Match::Tcp], vec![Stmt::Reject { tcp_reset: true }]),
                rule(vec![], vec![Stmt::Reject { tcp_reset: false }]),
            ],
        ),
    ])
}

pub fn globals(state: &DesiredState, family: IpFamily) -> Globals {
    let mut g = Globals {
        service_cidrs: state
            .service_cidrs
            .iter()
            .copied()
            .filter(|c| IpFamily::of_net(c) == family)
            .collect(),
        ..Globals::default()
    };
    for port in state.ports.values() {
        port_globals(port, family, &mut g);
    }
    g
}

/// One port's elements of the shared sets (all but the Service CIDRs).
pub fn port_globals(port: &DesiredPort, family: IpFamily, g: &mut Globals) {
    for fe in port.frontends.keys().filter(|f| IpFamily::of(f.address) == family) {
        match fe.kind {
            FrontendKind::ClusterIp => g.cluster_ips.insert(fe.address),
            FrontendKind::NodePort => g.nodeport_ips.insert(fe.address),
            _ => false,
        };
    }
    for (id, backends) in &port.endpoint_sets {
        if id.family == family {
            g.hairpin.extend(backends.iter().map(|b| b.address));
        }
    }
}

/// FNV-1a: stable across builds and platforms (std's hasher is not), so chain names
/// survive restarts and an incremental sync can address what the last one wrote.
pub fn short_hash(text: &str) -> String {
    format!("{:016x}", fnv1a(text))
}

fn fnv1a(text: &str) -> u64 {
    let mut h = Fnv1a(0xcbf2_9ce4_8422_2325);
    h.add(text);
    h.0
}

/// FNV-1a of what `value` displays, without building the string (the same value as
/// [`short_hash`] of `value.to_string()`): the iptables renderer hashes every Service
/// port's name on each sync.
pub fn display_hash(value: &impl std::fmt::Display) -> u64 {
    use std::fmt::Write;
    let mut h = Fnv1a(0xcbf2_9ce4_8422_2325);
    let _ = write!(h, "{value}");
    h.0
}

struct Fnv1a(u64);

impl Fnv1a {
    fn add(&mut self, text: &str) {
        for b in text.bytes() {
            self.0 ^= u64::from(b);
            self.0 = self.0.wrapping_mul(0x0100_0000_01b3);
        }
    }
}

impl std::fmt::Write for Fnv1a {
    fn write_str(&mut self, s: &str) -> std::fmt::Result {
        self.add(s);
        Ok(())
    }
}

/// The nat behaviour shared by frontends: the same key means the same chain.
/// `None` as the set: the frontend drops, after its short circuit (eTP=Local without
/// local endpoints).
type NatKey<'a> = (bool, Option<EndpointSetId>, &'a Masquerade, &'a Option<ShortCircuit>);

pub fn port_objects(name: &ServicePortName, port: &DesiredPort, family: IpFamily) -> PortObjects {
    let text = name.to_string();
    let hash = short_hash(&text);
    let shard = fnv1a(&text) % ENDPOINT_SHARDS;
    let mut out = PortObjects::default();
    let mut nat: BTreeMap<String, (NatKey<'_>, Vec<Frontend>)> = BTreeMap::new();
    let proto = name.protocol;
    let fronts = port.frontends.iter().filter(|(f, _)| IpFamily::of(f.address) == family);
    for (fe, rule) in fronts {
        let key = (fe.address, proto, fe.port);
        filter_entry(&hash, rule, &mut out, key);
        let set = match rule.target {
            Target::Forward(set) => Some(set),
            // Dropped in the nat chain, after in-node sources took the short circuit:
            // the pre-DNAT filter would drop those too.
            Target::Drop if rule.short_circuit.is_some() => None,
            _ => continue,
        };
        let external = fe.kind.is_external();
        let nat_key = (external, set, &rule.masquerade, &rule.short_circuit);
        let base = format!("{}-{hash}", if external { "ext" } else { "svc" });
        // The model gives one rule per class; a suffix keeps a future split correct.
        let chain = match nat.iter().find(|(_, (k, _))| *k == nat_key) {
            Some((chain, _)) => chain.clone(),
            None => {
                let n = nat.keys().filter(|c| c.starts_with(&base)).count();
                let chain = if n == 0 { base } else { format!("{base}-{n}") };
                nat.insert(chain.clone(), (nat_key, Vec::new()));
                chain
            }
        };
        if let Some((_, fes)) = nat.get_mut(&chain) {
            fes.push(*fe);
        }
        if fe.kind == FrontendKind::NodePort {
            out.service_nodeports.insert((proto, fe.port), Verdict::Goto(chain));
        } else {
            out.service_ips.insert(key, Verdict::Goto(chain));
        }
    }
    for (chain, ((_, set, masq, sc), fronts)) in nat {
        let at = Selection {
            name,
            hash: &hash,
            shard,
            port,
            fronts: &fronts,
        };
        let rules = nat_chain(&at, set, masq, sc.as_ref(), &mut out);
        out.chains.insert(chain, rules);
    }
    out
}

/// Where a nat chain's backends are chosen: the port, and the frontends that use it.
struct Selection<'a> {
    name: &'a ServicePortName,
    hash: &'a str,
    shard: u64,
    port: &'a DesiredPort,
    fronts: &'a [Frontend],
}

fn filter_entry(hash: &str, rule: &FrontendRule, out: &mut PortObjects, key: (IpAddr, Protocol, u16)) {
    let refuse = match rule.target {
        Target::Forward(_) => None,
        Target::Reject => Some(Stmt::Goto(REJECT_CHAIN.into())),
        // The nat chain drops it, after the short circuit.
        Target::Drop if rule.short_circuit.is_some() => None,
        Target::Drop => Some(Stmt::Drop),
    };
    if let Some(ranges) = &rule.source_ranges {
        let chain = format!("fw-{hash}");
        let mut rules = vec![if ranges.is_empty() {
            Rule::new(vec![], vec![Stmt::Drop])
        } else {
            Rule::new(vec![Match::SaddrNotIn(ranges.clone())], vec![Stmt::Drop])
        }];
        rules.extend(refuse.map(|s| Rule::new(vec![], vec![s])));
        out.chains.insert(chain.clone(), rules);
        out.filter_ips.insert(key, Verdict::Goto(chain));
    } else if let Some(stmt) = refuse {
        let verdict = match stmt {
            Stmt::Drop => Verdict::Drop,
            _ => Verdict::Goto(REJECT_CHAIN.into()),
        };
        out.filter_ips.insert(key, verdict);
    }
}

fn nat_chain(
    at: &Selection<'_>,
    set: Option<EndpointSetId>,
    masq: &Masquerade,
    sc: Option<&ShortCircuit>,
    out: &mut PortObjects,
) -> Vec<Rule> {
    let mut rules = Vec::new();
    if let Some(sc) = sc {
        let to = select(at, sc.to, SlotList::ShortCircuit, out);
        if !sc.pod_sources.is_empty() {
            rules.push(Rule::new(vec![Match::SaddrIn(sc.pod_sources.clone())], to.clone()));
        }
        // The host's own source address would not route back from another node.
        let mut stmts = vec![Stmt::MarkMasq];
        stmts.extend(to);
        rules.push(Rule::new(vec![Match::SaddrLocal], stmts));
    }
    let Some(set) = set else {
        rules.push(Rule::new(vec![], vec![Stmt::Drop]));
        return rules;
    };
    match masq {
        Masquerade::Always => rules.push(Rule::new(vec![], vec![Stmt::MarkMasq])),
        Masquerade::UnlessFrom(c) if c.is_empty() => {
            rules.push(Rule::new(vec![], vec![Stmt::MarkMasq]));
        }
        Masquerade::UnlessFrom(c) => {
            rules.push(Rule::new(vec![Match::SaddrNotIn(c.clone())], vec![Stmt::MarkMasq]));
        }
        // Hairpin is caught in postrouting by the hairpin set, for every frontend.
        Masquerade::HairpinOnly => {}
    }
    rules.push(Rule::new(vec![], select(at, set, SlotList::Selected, out)));
    rules
}

/// The statements that pick a backend of `set`: a DNAT through the frontends' slots in
/// an endpoint map, or, with affinity, a jump into per-endpoint chains that remember the
/// client.
fn select(at: &Selection<'_>, set: EndpointSetId, list: SlotList, out: &mut PortObjects) -> Vec<Stmt> {
    let (name, hash, port) = (at.name, at.hash, at.port);
    let backends: &[Backend] = port.endpoint_sets.get(&set).map(Vec::as_slice).unwrap_or_default();
    if backends.is_empty() {
        // `numgen … mod 0` is invalid; the model never forwards to an empty set.
        return vec![Stmt::Drop];
    }
    let Some(affinity) = port.affinity else {
        let map = list.map(name.protocol, at.shard);
        for fe in at.fronts {
            for (slot, b) in (0u32..).zip(backends) {
                let key = SlotKey {
                    map: map.clone(),
                    address: fe.address,
                    protocol: name.protocol,
                    port: fe.port,
                    slot,
                };
                out.slots.insert(key, (b.address, b.port));
            }
        }
        return vec![Stmt::DnatSlots {
            protocol: name.protocol,
            map,
            count: backends.len() as u32,
        }];
    };
    let policy = match set.policy {
        TrafficPolicy::Cluster => "cluster",
        TrafficPolicy::Local => "local",
    };
    let chain = format!("sel-{hash}-{policy}");
    let mut rules = Vec::new();
    let mut eps = Vec::new();
    for b in backends {
        // The timeout is in the name so changing it replaces the set instead of
        // redefining one that rules still reference.
        let id = short_hash(&format!("{}/{}/{}", b.address, b.port, affinity.timeout_seconds));
        let (ep, aff) = (format!("ep-{hash}-{id}"), format!("aff-{hash}-{id}"));
        rules.push(Rule::new(
            vec![Match::SaddrInSet(aff.clone())],
            vec![Stmt::Goto(ep.clone())],
        ));
        out.sets.insert(aff.clone(), affinity.timeout_seconds);
        out.chains.insert(
            ep.clone(),
            vec![Rule::new(
                vec![],
                vec![
                    Stmt::UpdateSet(aff),
                    Stmt::Dnat(name.protocol, vec![(b.address, b.port)]),
                ],
            )],
        );
        eps.push(ep);
    }
    rules.push(Rule::new(vec![], vec![Stmt::GotoRandom(eps)]));
    out.chains.insert(chain.clone(), rules);
    vec![Stmt::Goto(chain)]
}

/// Names of every chain the ruleset declares in `table`, base chains first.
pub fn chain_names(table: &Table) -> Vec<String> {
    BASE_CHAINS
        .iter()
        .map(|c| c.name.to_owned())
        .chain(table.fixed.keys().map(|c| (*c).to_owned()))
        .chain(table.ports.values().flat_map(|p| p.chains.keys().cloned()))
        .collect()
}
