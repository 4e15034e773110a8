//! A packet tracer over the [`Ruleset`]: which backends may a new connection reach, is it
//! masqueraded, or is it refused. It interprets the same rules the renderer prints, in
//! hook order, so a wrong rule fails a test instead of a cluster.
//!
//! Affinity sets start empty (a first packet), so affinity chains pick like the others.

use std::{collections::BTreeSet, net::IpAddr};

use super::{
    chains::{BASE_CHAINS, CLUSTER_IPS, HAIRPIN, NODEPORT_IPS, SERVICE_CIDRS, Stage},
    ruleset::{Match, Rule, Ruleset, Stmt, Table, Verdict as MapVerdict, VmapKey},
};
use crate::model::{IpFamily, Protocol};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Packet {
    pub source: IpAddr,
    pub protocol: Protocol,
    pub dest: IpAddr,
    pub dest_port: u16,
    /// Opened by the host itself (output hook, and `fib saddr type local`).
    pub from_local_host: bool,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    /// `masquerade` is true when any of the backends would see the node as source (for
    /// hairpin, that is when the chosen backend is the client itself).
    Dnat {
        backends: BTreeSet<(IpAddr, u16)>,
        masquerade: bool,
    },
    Reject,
    Drop,
    /// Not ours: passes untouched.
    Accept,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Flow {
    Continue,
    Drop,
    Reject,
    Masquerade,
    Dnat(BTreeSet<(IpAddr, u16)>),
}

struct Ctx<'a> {
    table: &'a Table,
    packet: Packet,
    /// The destination as the current hook sees it (the backend after DNAT).
    daddr: IpAddr,
    dnatted: bool,
    marked: bool,
}

pub fn trace(ruleset: &Ruleset, packet: Packet) -> Verdict {
    let table = ruleset.table(IpFamily::of(packet.dest));
    let mut ctx = Ctx {
        table,
        packet,
        daddr: packet.dest,
        dnatted: false,
        marked: false,
    };
    let base = |stage| {
        BASE_CHAINS
            .iter()
            .find(|c| c.stage == stage && c.local.is_none_or(|l| l == packet.from_local_host))
            .expect("every stage has a base chain for both paths")
    };
    let run_base = |ctx: &mut Ctx<'_>, stage| ctx.run_rules(&[jump(base(stage).jump)]);
    match run_base(&mut ctx, Stage::PreDnat) {
        Flow::Drop => return Verdict::Drop,
        Flow::Reject => return Verdict::Reject,
        _ => {}
    }
    let backends = match run_base(&mut ctx, Stage::Dnat) {
        Flow::Dnat(b) => b,
        Flow::Continue => {
            return match run_base(&mut ctx, Stage::PostDnat) {
                Flow::Drop => Verdict::Drop,
                Flow::Reject => Verdict::Reject,
                _ => Verdict::Accept,
            };
        }
        // eTP=Local without local endpoints, for sources the short circuit did not take.
        Flow::Drop => return Verdict::Drop,
        other => panic!("nat chains end in DNAT, drop or fall through, not {other:?}"),
    };
    let marked = ctx.marked;
    let masquerade = backends.iter().any(|(addr, _)| {
        let mut c = Ctx {
            daddr: *addr,
            dnatted: true,
            marked,
            ..ctx
        };
        run_base(&mut c, Stage::Snat) == Flow::Masquerade
    });
    Verdict::Dnat { backends, masquerade }
}

fn jump(chain: &str) -> Rule {
    Rule {
        matches: vec![],
        stmts: vec![Stmt::Jump(chain.into())],
    }
}

impl Ctx<'_> {
    fn chain(&self, name: &str) -> &[Rule] {
        self.table
            .fixed
            .get(name)
            .or_else(|| self.table.ports.values().find_map(|p| p.chains.get(name)))
            .unwrap_or_else(|| panic!("chain {name} is referenced but not declared"))
    }

    fn run_chain(&mut self, name: &str) -> Flow {
        let rules = self.chain(name).to_vec();
        self.run_rules(&rules)
    }

    fn run_rules(&mut self, rules: &[Rule]) -> Flow {
        for rule in rules {
            if !rule.matches.iter().all(|m| self.matches(m)) {
                continue;
            }
            for stmt in &rule.stmts {
                match self.exec(stmt) {
                    Flow::Continue => {}
                    // A jump that returned resumes after the jumping rule.
                    other => return other,
                }
            }
        }
        Flow::Continue
    }

    fn matches(&self, m: &Match) -> bool {
        let src = self.packet.source;
        match m {
            Match::SaddrIn(c) => c.iter().any(|c| c.contains(&src)),
            Match::SaddrNotIn(c) => !c.iter().any(|c| c.contains(&src)),
            Match::SaddrLocal => self.packet.from_local_host,
            // Dynamic affinity sets: empty for a first packet.
            Match::SaddrInSet(_) => false,
            Match::DaddrInSet(set) => self.in_set(set, self.daddr),
            Match::Marked => self.marked,
            Match::Hairpin => self.dnatted && src == self.daddr && self.in_set(HAIRPIN, src),
            Match::Tcp => self.packet.protocol == Protocol::Tcp,
        }
    }

    fn in_set(&self, set: &str, addr: IpAddr) -> bool {
        let g = &self.table.globals;
        match set {
            CLUSTER_IPS => g.cluster_ips.contains(&addr),
            NODEPORT_IPS => g.nodeport_ips.contains(&addr),
            HAIRPIN => g.hairpin.contains(&addr),
            SERVICE_CIDRS => g.service_cidrs.iter().any(|c| c.contains(&addr)),
            other => panic!("no static set {other}"),
        }
    }

    fn exec(&mut self, stmt: &Stmt) -> Flow {
        match stmt {
            Stmt::MarkMasq => self.marked = true,
            Stmt::ClearMark => self.marked = false,
            Stmt::UpdateSet(_) => {}
            Stmt::Masquerade => return Flow::Masquerade,
            Stmt::Dnat(_, b) => return Flow::Dnat(b.iter().copied().collect()),
            Stmt::DnatSlots { protocol, map, count } => {
                let p = self.packet;
                let slots: Vec<_> = self
                    .table
                    .ports
                    .values()
                    .flat_map(|o| &o.slots)
                    .filter(|(k, _)| {
                        k.map == *map && k.address == self.daddr && k.protocol == *protocol && k.port == p.dest_port
                    })
                    .collect();
                // Every slot numgen can draw must exist, or the kernel's lookup misses
                // and the packet goes on untranslated.
                let drawn: BTreeSet<u32> = slots.iter().map(|(k, _)| k.slot).collect();
                assert_eq!(drawn, (0..*count).collect(), "slots of {map} for {:?}", self.daddr);
                return Flow::Dnat(slots.into_iter().map(|(_, b)| *b).collect());
            }
            Stmt::Jump(chain) => return self.run_chain(chain),
            // Falling off a goto's target returns to our caller: the same as ending here.
            Stmt::Goto(chain) => return self.run_chain(chain),
            Stmt::GotoRandom(chains) => {
                let mut all = BTreeSet::new();
                for chain in chains {
                    let marked = self.marked;
                    match self.run_chain(chain) {
                        Flow::Dnat(b) => all.extend(b),
                        other => panic!("random arms end in DNAT, not {other:?}"),
                    }
                    self.marked = marked;
                }
                return Flow::Dnat(all);
            }
            Stmt::Vmap(key, map) => {
                if let Some(v) = self.lookup(*key, map) {
                    return match v {
                        MapVerdict::Drop => Flow::Drop,
                        MapVerdict::Goto(chain) => self.run_chain(&chain),
                    };
                }
            }
            Stmt::Drop => return Flow::Drop,
            Stmt::Reject { .. } => return Flow::Reject,
        }
        Flow::Continue
    }

    fn lookup(&self, key: VmapKey, map: &str) -> Option<MapVerdict> {
        let p = self.packet;
        let ports = self.table.ports.values();
        let ip_key = (self.daddr, p.protocol, p.dest_port);
        let found = match (key, map) {
            (VmapKey::DaddrProtoPort, super::chains::SERVICE_IPS) => {
                ports.filter_map(|o| o.service_ips.get(&ip_key)).next()
            }
            (VmapKey::DaddrProtoPort, super::chains::FILTER_IPS) => {
                ports.filter_map(|o| o.filter_ips.get(&ip_key)).next()
            }
            (VmapKey::ProtoPort, super::chains::SERVICE_NODEPORTS) => ports
                .filter_map(|o| o.service_nodeports.get(&(p.protocol, p.dest_port)))
                .next(),
            other => panic!("no verdict map {other:?}"),
        };
        found.cloned()
    }
}
