//! The ruleset as an `nft -f` script. Text rather than JSON: `nft -f -` reads it in one
//! atomic transaction, and the proxy needs no JSON dependency at runtime.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::IpAddr,
};

use super::{
    chains::{
        BASE_CHAINS, CLUSTER_IPS, FILTER_IPS, HAIRPIN, MASQ_MARK, NODEPORT_IPS, SERVICE_CIDRS, SERVICE_IPS,
        SERVICE_NODEPORTS,
    },
    ruleset::{
        Element, Globals, Match, PortObjects, Rule, Ruleset, Stmt, Table, Verdict, VmapKey, port_globals, port_objects,
        slot_maps,
    },
};
use crate::model::{DesiredState, Diff, FrontendKind, IpFamily, Protocol, ServicePortName};

pub const TABLE: &str = "rudder";

/// A complete script that replaces both tables in one transaction. `add` before `delete`
/// makes the delete succeed on a node where the table does not exist yet.
pub fn render_full(state: &DesiredState) -> String {
    let ruleset = Ruleset::build(state);
    let mut out = String::new();
    for table in &ruleset.tables {
        full_table(table, &mut out);
    }
    out
}

/// Only what changed for the ports `diff` names, plus the shared sets' changed elements.
pub fn render_incremental(old: &DesiredState, new: &DesiredState, diff: &Diff) -> String {
    incremental(old, new, diff).script()
}

/// [`render_incremental`]'s changes, structured: element changes stay data, so a sync that
/// changes only elements can skip `nft` (see [`super::netlink`]).
pub fn incremental(old: &DesiredState, new: &DesiredState, diff: &Diff) -> Incremental {
    let names: BTreeSet<&ServicePortName> = diff
        .added
        .iter()
        .chain(&diff.removed)
        .chain(diff.changed.keys())
        .collect();
    let mut families = Vec::new();
    for family in [IpFamily::V4, IpFamily::V6] {
        let f = Fam(family);
        let mut ph = Phases::default();
        for name in &names {
            let objects = |s: &DesiredState| {
                s.ports
                    .get(*name)
                    .map(|p| port_objects(name, p, family))
                    .unwrap_or_default()
            };
            port_delta(f, &objects(old), &objects(new), &mut ph);
        }
        shared_sets_delta(old, new, &names, diff.service_cidrs_changed, family, &mut ph);
        families.push(ph);
    }
    Incremental { families }
}

/// The shared sets' element changes, from the touched ports' shares alone: walking every
/// port of both states for them cost ~35 ms per family at 10k Services. An element only a
/// touched port held is deleted unless an untouched port still holds it, which is checked
/// in `new` only when there is such a candidate; adding one that another port holds is a
/// no-op. `old` may hold only the touched ports (see [`DesiredState::update`]).
fn shared_sets_delta(
    old: &DesiredState,
    new: &DesiredState,
    names: &BTreeSet<&ServicePortName>,
    cidrs_changed: bool,
    family: IpFamily,
    ph: &mut Phases,
) {
    let share = |s: &DesiredState| {
        let mut g = Globals::default();
        for name in names {
            if let Some(port) = s.ports.get(*name) {
                port_globals(port, family, &mut g);
            }
        }
        if cidrs_changed {
            g.service_cidrs = s
                .service_cidrs
                .iter()
                .copied()
                .filter(|c| IpFamily::of_net(c) == family)
                .collect();
        }
        g
    };
    let (og, ng) = (share(old), share(new));
    let mut elsewhere: Option<Globals> = None;
    for ((set, o), (_, n)) in og.sets().into_iter().zip(ng.sets()) {
        let (o, n): (BTreeSet<_>, BTreeSet<_>) = (o.into_iter().collect(), n.into_iter().collect());
        let mut gone: Vec<Element> = o.difference(&n).copied().collect();
        if set != SERVICE_CIDRS && !gone.is_empty() {
            let others = new
                .ports
                .iter()
                .filter(|(name, _)| !names.contains(name))
                .map(|(_, p)| p);
            if gone.len() <= 16 {
                // A scan per candidate, stopping at the first holder: no set of 100k
                // hairpin addresses built for one removed endpoint.
                gone.retain(|e| !others.clone().any(|p| port_holds(p, family, set, e)));
            } else {
                let g = elsewhere.get_or_insert_with(|| {
                    let mut g = Globals::default();
                    others.for_each(|p| port_globals(p, family, &mut g));
                    g
                });
                let held: BTreeSet<Element> = g
                    .sets()
                    .into_iter()
                    .find(|(s, _)| *s == set)
                    .map(|(_, e)| e.into_iter().collect())
                    .unwrap_or_default();
                gone.retain(|e| !held.contains(e));
            }
        }
        let came: Vec<_> = n.difference(&o).map(|e| Elem::from(*e)).collect();
        let gone: Vec<_> = gone.into_iter().map(Elem::from).collect();
        ph.del_elems.extend(ElementOp::new(family, false, set, gone));
        ph.add_elems.extend(ElementOp::new(family, true, set, came));
    }
}

/// Whether `port` puts `e` into the shared set `set` ([`port_globals`] for one element).
fn port_holds(port: &crate::model::DesiredPort, family: IpFamily, set: &str, e: &Element) -> bool {
    match (set, e) {
        (CLUSTER_IPS, Element::Addr(a)) => port
            .frontends
            .keys()
            .any(|f| f.kind == FrontendKind::ClusterIp && f.address == *a),
        (NODEPORT_IPS, Element::Addr(a)) => port
            .frontends
            .keys()
            .any(|f| f.kind == FrontendKind::NodePort && f.address == *a),
        (HAIRPIN, Element::Pair(a)) => port
            .endpoint_sets
            .iter()
            .any(|(id, b)| id.family == family && b.iter().any(|b| b.address == *a)),
        _ => false,
    }
}

/// One `add element` or `delete element` command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ElementOp {
    pub family: IpFamily,
    pub add: bool,
    pub set: String,
    pub elems: Vec<Elem>,
}

impl ElementOp {
    fn new(family: IpFamily, add: bool, set: &str, elems: Vec<Elem>) -> Option<Self> {
        (!elems.is_empty()).then(|| Self {
            family,
            add,
            set: set.to_owned(),
            elems,
        })
    }

    fn text(&self) -> String {
        let f = Fam(self.family);
        let elems: Vec<_> = self.elems.iter().map(|e| e.text(self.add)).collect();
        format!(
            "{} element {} {} {{ {} }}",
            if self.add { "add" } else { "delete" },
            f.table(),
            self.set,
            elems.join(", ")
        )
    }
}

/// A set or map element: its key, and for maps its value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Elem {
    Addr(IpAddr),
    /// `addr . addr`, for the hairpin set.
    Pair(IpAddr),
    Cidr(crate::model::IpNet),
    Service((IpAddr, Protocol, u16), Verdict),
    NodePort((Protocol, u16), Verdict),
    /// An endpoint map slot: `frontend . protocol . port . slot : backend . port`.
    Slot((IpAddr, Protocol, u16, u32), (IpAddr, u16)),
}

impl From<Element> for Elem {
    fn from(e: Element) -> Self {
        match e {
            Element::Addr(a) => Self::Addr(a),
            Element::Pair(a) => Self::Pair(a),
            Element::Cidr(c) => Self::Cidr(c),
        }
    }
}

impl Elem {
    /// `delete element` takes keys only.
    fn text(&self, with_value: bool) -> String {
        let (key, value) = match self {
            Self::Addr(a) => (a.to_string(), None),
            Self::Pair(a) => (format!("{a} . {a}"), None),
            Self::Cidr(c) => (c.to_string(), None),
            Self::Service(k, v) => (ip_key(*k), Some(verdict(v))),
            Self::NodePort(k, v) => (port_key(*k), Some(verdict(v))),
            Self::Slot((addr, p, port, slot), (to, to_port)) => (
                format!("{addr} . {} . {port} . {slot}", proto(*p)),
                Some(format!("{to} . {to_port}")),
            ),
        };
        match value {
            Some(v) if with_value => format!("{key} : {v}"),
            _ => key,
        }
    }
}

/// The changes of an incremental sync, per family, in the order they must be applied.
#[derive(Debug, Default)]
pub struct Incremental {
    families: Vec<Phases>,
}

impl Incremental {
    pub fn script(&self) -> String {
        let mut out = String::new();
        for ph in &self.families {
            ph.write(&mut out);
        }
        out
    }

    /// The element changes, when they are all the sync changes (no chain, rule or set is
    /// added or removed) and none is an interval, which netlink would need split into
    /// ranges.
    pub fn element_only(&self) -> Option<Vec<&ElementOp>> {
        let only = self.families.iter().all(|ph| {
            [
                &ph.add_sets,
                &ph.add_chains,
                &ph.flush_chains,
                &ph.add_rules,
                &ph.del_chains,
                &ph.del_sets,
            ]
            .iter()
            .all(|v| v.is_empty())
        });
        let ops: Vec<_> = self
            .families
            .iter()
            .flat_map(|ph| ph.del_elems.iter().chain(&ph.add_elems))
            .collect();
        let plain = ops
            .iter()
            .all(|op| op.elems.iter().all(|e| !matches!(e, Elem::Cidr(_))));
        (only && plain).then_some(ops)
    }
}

#[derive(Debug, Default)]
struct Phases {
    add_sets: Vec<String>,
    add_chains: Vec<String>,
    del_elems: Vec<ElementOp>,
    flush_chains: Vec<String>,
    add_rules: Vec<String>,
    del_chains: Vec<String>,
    del_sets: Vec<String>,
    add_elems: Vec<ElementOp>,
}

impl Phases {
    /// Order matters: chains exist before map elements point at them, references go away
    /// before what they reference.
    fn write(&self, out: &mut String) {
        let del_elems: Vec<_> = self.del_elems.iter().map(ElementOp::text).collect();
        let add_elems: Vec<_> = self.add_elems.iter().map(ElementOp::text).collect();
        for line in [
            &self.add_sets,
            &self.add_chains,
            &del_elems,
            &self.flush_chains,
            &self.add_rules,
            &self.del_chains,
            &self.del_sets,
            &add_elems,
        ]
        .into_iter()
        .flatten()
        {
            out.push_str(line);
            out.push('\n');
        }
    }
}

fn port_delta(f: Fam, old: &PortObjects, new: &PortObjects, ph: &mut Phases) {
    let t = f.table();
    for (chain, rules) in &new.chains {
        match old.chains.get(chain) {
            Some(o) if o == rules => continue,
            Some(_) => ph.flush_chains.push(format!("flush chain {t} {chain}")),
            None => ph.add_chains.push(format!("add chain {t} {chain}")),
        }
        ph.add_rules
            .extend(rules.iter().map(|r| format!("add rule {t} {chain} {}", rule(f, r))));
    }
    for chain in old.chains.keys().filter(|c| !new.chains.contains_key(*c)) {
        ph.flush_chains.push(format!("flush chain {t} {chain}"));
        ph.del_chains.push(format!("delete chain {t} {chain}"));
    }
    for (set, timeout) in &new.sets {
        if !old.sets.contains_key(set) {
            ph.add_sets.push(affinity_set(f, set, *timeout));
        }
    }
    for set in old.sets.keys().filter(|s| !new.sets.contains_key(*s)) {
        ph.del_sets.push(format!("delete set {t} {set}"));
    }
    let svc = |m: &BTreeMap<(IpAddr, Protocol, u16), Verdict>| -> BTreeMap<String, Vec<Elem>> {
        BTreeMap::from([(
            String::new(),
            m.iter().map(|(k, v)| Elem::Service(*k, v.clone())).collect(),
        )])
    };
    map_delta(f, SERVICE_IPS, svc(&old.service_ips), svc(&new.service_ips), ph);
    map_delta(f, FILTER_IPS, svc(&old.filter_ips), svc(&new.filter_ips), ph);
    let np = |m: &BTreeMap<(Protocol, u16), Verdict>| -> BTreeMap<String, Vec<Elem>> {
        BTreeMap::from([(
            String::new(),
            m.iter().map(|(k, v)| Elem::NodePort(*k, v.clone())).collect(),
        )])
    };
    map_delta(
        f,
        SERVICE_NODEPORTS,
        np(&old.service_nodeports),
        np(&new.service_nodeports),
        ph,
    );
    let slots = |o: &PortObjects| {
        let mut by_map: BTreeMap<String, Vec<Elem>> = BTreeMap::new();
        for (k, b) in &o.slots {
            by_map
                .entry(k.map.clone())
                .or_default()
                .push(Elem::Slot((k.address, k.protocol, k.port, k.slot), *b));
        }
        by_map
    };
    map_delta(f, "", slots(old), slots(new), ph);
}

/// Element changes of maps (`map` names the map, or is empty when the keys of `old` and
/// `new` do). A changed value is delete + add: `add element` keeps an existing key's old
/// value.
fn map_delta(f: Fam, map: &str, old: BTreeMap<String, Vec<Elem>>, new: BTreeMap<String, Vec<Elem>>, ph: &mut Phases) {
    let names: BTreeSet<&String> = old.keys().chain(new.keys()).collect();
    for name in names {
        let set = if map.is_empty() { name.as_str() } else { map };
        let (o, n) = (old.get(name), new.get(name));
        let (o, n) = (
            o.map(Vec::as_slice).unwrap_or_default(),
            n.map(Vec::as_slice).unwrap_or_default(),
        );
        let gone: Vec<_> = o.iter().filter(|e| !n.contains(e)).cloned().collect();
        let came: Vec<_> = n.iter().filter(|e| !o.contains(e)).cloned().collect();
        ph.del_elems.extend(ElementOp::new(f.0, false, set, gone));
        ph.add_elems.extend(ElementOp::new(f.0, true, set, came));
    }
}

fn elements(lines: &mut Vec<String>, op: &str, f: Fam, set: &str, elems: &[String]) {
    if !elems.is_empty() {
        lines.push(format!("{op} element {} {set} {{ {} }}", f.table(), elems.join(", ")));
    }
}

fn full_table(table: &Table, out: &mut String) {
    let f = Fam(table.family);
    let t = f.table();
    let (a, mut lines) = (f.addr_type(), Vec::new());
    lines.push(format!("add table {t}"));
    lines.push(format!("delete table {t}"));
    lines.push(format!("add table {t}"));
    lines.push(format!("add set {t} {CLUSTER_IPS} {{ type {a} ; }}"));
    lines.push(format!("add set {t} {NODEPORT_IPS} {{ type {a} ; }}"));
    lines.push(format!("add set {t} {HAIRPIN} {{ type {a} . {a} ; }}"));
    lines.push(format!("add set {t} {SERVICE_CIDRS} {{ type {a} ; flags interval ; }}"));
    for map in [SERVICE_IPS, FILTER_IPS] {
        lines.push(format!(
            "add map {t} {map} {{ type {a} . inet_proto . inet_service : verdict ; }}"
        ));
    }
    lines.push(format!(
        "add map {t} {SERVICE_NODEPORTS} {{ type inet_proto . inet_service : verdict ; }}"
    ));
    let ip = f.ip();
    // Typed per protocol: see `ENDPOINT_SHARDS`.
    for (p, map) in slot_maps() {
        let p = proto(p);
        lines.push(format!(
            "add map {t} {map} {{ typeof {ip} daddr . meta l4proto . th dport . numgen random mod 2 : {ip} daddr . {p} dport ; }}"
        ));
    }
    for port in table.ports.values() {
        lines.extend(port.sets.iter().map(|(s, timeout)| affinity_set(f, s, *timeout)));
    }
    for base in BASE_CHAINS {
        lines.push(format!(
            "add chain {t} {} {{ type {} hook {} priority {} ; policy accept ; }}",
            base.name, base.kind, base.hook, base.priority
        ));
    }
    let chains: Vec<(&str, &Vec<Rule>)> = table
        .fixed
        .iter()
        .map(|(c, r)| (*c, r))
        .chain(
            table
                .ports
                .values()
                .flat_map(|p| p.chains.iter().map(|(c, r)| (c.as_str(), r))),
        )
        .collect();
    lines.extend(chains.iter().map(|(c, _)| format!("add chain {t} {c}")));
    for base in BASE_CHAINS {
        lines.push(format!("add rule {t} {} jump {}", base.name, base.jump));
    }
    for (chain, rules) in &chains {
        lines.extend(rules.iter().map(|r| format!("add rule {t} {chain} {}", rule(f, r))));
    }
    for (set, elems) in table.globals.sets() {
        let elems: Vec<_> = elems.iter().map(element).collect();
        elements(&mut lines, "add", f, set, &elems);
    }
    let mut ips = Vec::new();
    let mut nodeports = Vec::new();
    let mut filter = Vec::new();
    for port in table.ports.values() {
        ips.extend(
            port.service_ips
                .iter()
                .map(|(k, v)| format!("{} : {}", ip_key(*k), verdict(v))),
        );
        nodeports.extend(
            port.service_nodeports
                .iter()
                .map(|(k, v)| format!("{} : {}", port_key(*k), verdict(v))),
        );
        filter.extend(
            port.filter_ips
                .iter()
                .map(|(k, v)| format!("{} : {}", ip_key(*k), verdict(v))),
        );
    }
    elements(&mut lines, "add", f, SERVICE_IPS, &ips);
    elements(&mut lines, "add", f, SERVICE_NODEPORTS, &nodeports);
    elements(&mut lines, "add", f, FILTER_IPS, &filter);
    let mut slots: BTreeMap<&str, Vec<String>> = BTreeMap::new();
    for (k, b) in table.ports.values().flat_map(|p| &p.slots) {
        let elem = Elem::Slot((k.address, k.protocol, k.port, k.slot), *b);
        slots.entry(&k.map).or_default().push(elem.text(true));
    }
    for (map, elems) in slots {
        elements(&mut lines, "add", f, map, &elems);
    }
    for line in lines {
        out.push_str(&line);
        out.push('\n');
    }
}

fn affinity_set(f: Fam, set: &str, timeout: u32) -> String {
    format!(
        "add set {} {set} {{ type {} ; flags dynamic,timeout ; timeout {timeout}s ; }}",
        f.table(),
        f.addr_type()
    )
}

#[derive(Clone, Copy)]
struct Fam(IpFamily);

impl Fam {
    fn table(self) -> String {
        format!("{} {TABLE}", self.ip())
    }
    fn ip(self) -> &'static str {
        match self.0 {
            IpFamily::V4 => "ip",
            IpFamily::V6 => "ip6",
        }
    }
    fn addr_type(self) -> &'static str {
        match self.0 {
            IpFamily::V4 => "ipv4_addr",
            IpFamily::V6 => "ipv6_addr",
        }
    }
}

fn proto(p: Protocol) -> &'static str {
    match p {
        Protocol::Tcp => "tcp",
        Protocol::Udp => "udp",
        Protocol::Sctp => "sctp",
    }
}

fn ip_key((addr, p, port): (IpAddr, Protocol, u16)) -> String {
    format!("{addr} . {} . {port}", proto(p))
}

fn port_key((p, port): (Protocol, u16)) -> String {
    format!("{} . {port}", proto(p))
}

fn verdict(v: &Verdict) -> String {
    match v {
        Verdict::Goto(chain) => format!("goto {chain}"),
        Verdict::Drop => "drop".into(),
    }
}

fn element(e: &Element) -> String {
    match e {
        Element::Addr(a) => a.to_string(),
        Element::Pair(a) => format!("{a} . {a}"),
        Element::Cidr(c) => c.to_string(),
    }
}

fn cidrs(c: &[crate::model::IpNet]) -> String {
    let list: Vec<_> = c.iter().map(ToString::to_string).collect();
    format!("{{ {} }}", list.join(", "))
}

fn rule(f: Fam, r: &Rule) -> String {
    let ip = f.ip();
    let mut parts: Vec<String> = r
        .matches
        .iter()
        .map(|m| match m {
            Match::SaddrIn(c) => format!("{ip} saddr {}", cidrs(c)),
            Match::SaddrNotIn(c) => format!("{ip} saddr != {}", cidrs(c)),
            Match::SaddrLocal => "fib saddr type local".into(),
            Match::SaddrInSet(s) => format!("{ip} saddr @{s}"),
            Match::DaddrInSet(s) => format!("{ip} daddr @{s}"),
            Match::Marked => format!("meta mark & {MASQ_MARK:#x} != 0"),
            Match::Hairpin => format!("ct status dnat {ip} saddr . {ip} daddr @{HAIRPIN}"),
            Match::Tcp => "meta l4proto tcp".into(),
        })
        .collect();
    for s in &r.stmts {
        parts.push(match s {
            Stmt::MarkMasq => format!("meta mark set meta mark | {MASQ_MARK:#x}"),
            Stmt::ClearMark => format!("meta mark set meta mark ^ {MASQ_MARK:#x}"),
            Stmt::Masquerade => "masquerade fully-random".into(),
            Stmt::UpdateSet(set) => format!("update @{set} {{ {ip} saddr }}"),
            Stmt::Dnat(p, backends) => dnat(f, *p, backends),
            Stmt::DnatSlots { protocol, map, count } => format!(
                "meta l4proto {} dnat {ip} addr . port to {ip} daddr . meta l4proto . th dport . numgen random mod {count} map @{map}",
                proto(*protocol)
            ),
            Stmt::Jump(c) => format!("jump {c}"),
            Stmt::Goto(c) => format!("goto {c}"),
            Stmt::GotoRandom(chains) => {
                let arms: Vec<_> = chains
                    .iter()
                    .enumerate()
                    .map(|(i, c)| format!("{i} : goto {c}"))
                    .collect();
                format!(
                    "numgen random mod {} vmap {{ {} }}",
                    chains.len(),
                    arms.join(", ")
                )
            }
            Stmt::Vmap(VmapKey::DaddrProtoPort, m) => {
                format!("{ip} daddr . meta l4proto . th dport vmap @{m}")
            }
            Stmt::Vmap(VmapKey::ProtoPort, m) => format!("meta l4proto . th dport vmap @{m}"),
            Stmt::Drop => "drop".into(),
            Stmt::Reject { tcp_reset: true } => "reject with tcp reset".into(),
            Stmt::Reject { tcp_reset: false } => match f.0 {
                IpFamily::V4 => "reject with icmp type port-unreachable".into(),
                IpFamily::V6 => "reject with icmpv6 type port-unreachable".into(),
            },
        });
    }
    parts.join(" ")
}

fn dnat(f: Fam, p: Protocol, backends: &[(IpAddr, u16)]) -> String {
    let ip = f.ip();
    let l4 = format!("meta l4proto {}", proto(p));
    if let [(addr, port)] = backends {
        let addr = match addr {
            IpAddr::V4(a) => a.to_string(),
            IpAddr::V6(a) => format!("[{a}]"),
        };
        return format!("{l4} dnat {ip} to {addr}:{port}");
    }
    let arms: Vec<_> = backends
        .iter()
        .enumerate()
        .map(|(i, (addr, port))| format!("{i} : {addr} . {port}"))
        .collect();
    format!(
        "{l4} dnat {ip} addr . port to numgen random mod {} map {{ {} }}",
        arms.len(),
        arms.join(", ")
    )
}
