//! What the cluster zone says for one question, following CoreDNS's kubernetes plugin (with
//! `pods insecure` and `fallthrough in-addr.arpa ip6.arpa`, as kubeadm's Corefile has it):
//! pure, so a table of questions and answers tests it.
//!
//! A name is resolved to items (an address or an alias, with a port and the name that owns
//! it) and the items are rendered for the asked type; no items means NODATA, an unknown name
//! NXDOMAIN, both with the zone's SOA so resolvers cache the negative answer.

use std::net::IpAddr;

use hickory_proto::{
    op::ResponseCode,
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, AAAA, CNAME, NS, PTR, SOA, SRV},
    },
};

use super::index::{Endpoint, Index, Kind, Port, ServiceEntry, undashed};

/// CoreDNS's kubernetes plugin default (`ttl 5`), for answers and negative caching alike.
pub const TTL: u32 = 5;

#[derive(Debug, Clone, PartialEq)]
pub struct Reply {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    /// The zone's SOA on NXDOMAIN and NODATA.
    pub soa: Option<Record>,
    pub additionals: Vec<Record>,
    /// An ExternalName's target, to be resolved for A/AAAA and appended after the CNAME.
    pub chase: Option<Name>,
}

#[derive(Debug, Clone, PartialEq)]
pub enum Outcome {
    /// Ours: answer with this (boxed: a reply is large, a forward is nothing).
    Reply(Box<Reply>),
    /// Not in the cluster's zones: ask the upstream resolvers.
    Forward,
}

enum Host {
    Ip(IpAddr),
    Alias(Name),
}

struct Item {
    host: Host,
    /// 0 when the name has no port (SRV skips it).
    port: u16,
    /// The name an SRV record points at for this item.
    target: Name,
}

/// NXDOMAIN.
struct NoSuchName;

pub fn answer(index: &Index, qname: &Name, qtype: RecordType) -> Outcome {
    let lower = qname.to_lowercase();
    if index.zone.zone_of(&lower) {
        let skip = index.zone.num_labels() as usize;
        let labels: Vec<String> = lower
            .iter()
            .map(|l| String::from_utf8_lossy(l).into_owned())
            .collect::<Vec<_>>();
        let relative = &labels[..labels.len().saturating_sub(skip)];
        let relative: Vec<&str> = relative.iter().map(String::as_str).collect();
        return Outcome::Reply(Box::new(in_zone(index, qname, &relative, qtype)));
    }
    if let Some(reply) = reverse(index, qname, &lower, qtype) {
        return Outcome::Reply(Box::new(reply));
    }
    Outcome::Forward
}

fn in_zone(index: &Index, qname: &Name, labels: &[&str], qtype: RecordType) -> Reply {
    if labels.is_empty() {
        let record = match qtype {
            RecordType::SOA => Some(soa(index)),
            RecordType::NS => ns_name(index).map(|ns| Record::from_rdata(qname.clone(), TTL, RData::NS(NS(ns)))),
            _ => None,
        };
        return match record {
            Some(r) => positive(vec![r], Vec::new(), None),
            None => negative(index, ResponseCode::NoError),
        };
    }
    match find(index, labels) {
        Err(NoSuchName) => negative(index, ResponseCode::NXDomain),
        Ok(items) => render(index, qname, qtype, &items),
    }
}

/// The names under the zone, as CoreDNS parses them (fewest labels first).
fn find(index: &Index, labels: &[&str]) -> Result<Vec<Item>, NoSuchName> {
    match labels {
        // The zone's structure exists for every namespace: NODATA, not NXDOMAIN.
        ["svc"] | ["pod"] | [_, "svc"] | [_, "pod"] => Ok(Vec::new()),
        [svc, ns, "svc"] => service(index, ns, svc, None, None),
        [endpoint, svc, ns, "svc"] => service(index, ns, svc, Some(endpoint), None),
        [port, proto, svc, ns, "svc"] => {
            let (Some(port), Some(proto)) = (port.strip_prefix('_'), proto.strip_prefix('_')) else {
                return Err(NoSuchName);
            };
            service(index, ns, svc, None, Some((port, proto)))
        }
        [ip, ns, "pod"] => {
            let ip = undashed(ip).ok_or(NoSuchName)?;
            let target = index.name(&[&super::index::dashed(ip), ns, "pod"]).ok_or(NoSuchName)?;
            Ok(vec![Item {
                host: Host::Ip(ip),
                port: 0,
                target,
            }])
        }
        _ => Err(NoSuchName),
    }
}

fn port_matches(filter: Option<(&str, &str)>, p: &Port) -> bool {
    filter.is_none_or(|(name, proto)| p.name == name && p.protocol == proto)
}

fn service(
    index: &Index,
    ns: &str,
    name: &str,
    endpoint: Option<&str>,
    ports: Option<(&str, &str)>,
) -> Result<Vec<Item>, NoSuchName> {
    let entry: &ServiceEntry = index
        .services
        .get(&(ns.to_owned(), name.to_owned()))
        .ok_or(NoSuchName)?;
    let mut items = Vec::new();
    match &entry.kind {
        Kind::ExternalName(target) => {
            // An alias has no endpoints or ports of its own.
            if endpoint.is_some() || ports.is_some() {
                return Err(NoSuchName);
            }
            let owner = index.name(&[name, ns, "svc"]).ok_or(NoSuchName)?;
            items.push(Item {
                host: Host::Alias(target.clone()),
                port: 0,
                target: owner,
            });
        }
        Kind::ClusterIp(ips) if endpoint.is_none() => {
            let target = index.name(&[name, ns, "svc"]).ok_or(NoSuchName)?;
            for port in with_portless(&entry.ports, ports) {
                for ip in ips {
                    items.push(Item {
                        host: Host::Ip(*ip),
                        port: port.map_or(0, |p| p.port),
                        target: target.clone(),
                    });
                }
            }
        }
        // Headless Services, and any Service's endpoints by their own name.
        _ => {
            let chosen = entry
                .endpoints
                .iter()
                .filter(|e: &&Endpoint| endpoint.is_none_or(|want| e.label == want));
            for ep in chosen {
                let target = index.name(&[&ep.label, name, ns, "svc"]).ok_or(NoSuchName)?;
                for port in with_portless(&ep.ports, ports) {
                    items.push(Item {
                        host: Host::Ip(ep.ip),
                        port: port.map_or(0, |p| p.port),
                        target: target.clone(),
                    });
                }
            }
        }
    }
    // As CoreDNS: a Service that yields nothing (headless without ready endpoints, no port
    // of that name) does not exist for DNS.
    if items.is_empty() {
        return Err(NoSuchName);
    }
    Ok(items)
}

/// The ports a lookup matches; without a port filter a Service without ports still has its
/// addresses (as a port-less item).
fn with_portless<'a>(ports: &'a [Port], filter: Option<(&str, &str)>) -> Vec<Option<&'a Port>> {
    if filter.is_none() && ports.is_empty() {
        return vec![None];
    }
    ports.iter().filter(|p| port_matches(filter, p)).map(Some).collect()
}

fn address_record(owner: Name, ip: IpAddr) -> Record {
    match ip {
        IpAddr::V4(v4) => Record::from_rdata(owner, TTL, RData::A(A(v4))),
        IpAddr::V6(v6) => Record::from_rdata(owner, TTL, RData::AAAA(AAAA(v6))),
    }
}

fn render(index: &Index, qname: &Name, qtype: RecordType, items: &[Item]) -> Reply {
    let mut answers: Vec<Record> = Vec::new();
    let mut additionals: Vec<Record> = Vec::new();
    let mut chase = None;
    let srv_count = items
        .iter()
        .filter(|i| matches!(i.host, Host::Ip(_)) && i.port != 0)
        .count();
    for item in items {
        let record = match (&item.host, qtype) {
            (Host::Alias(target), _) => {
                if matches!(qtype, RecordType::A | RecordType::AAAA) {
                    chase = Some(target.clone());
                }
                Some(Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::CNAME(CNAME(target.clone())),
                ))
            }
            (Host::Ip(ip @ IpAddr::V4(_)), RecordType::A) | (Host::Ip(ip @ IpAddr::V6(_)), RecordType::AAAA) => {
                Some(address_record(qname.clone(), *ip))
            }
            (Host::Ip(ip), RecordType::SRV) if item.port != 0 => {
                let extra = address_record(item.target.clone(), *ip);
                if !additionals.contains(&extra) {
                    additionals.push(extra);
                }
                // CoreDNS shares 100 among the records of one priority.
                let weight = (100 / srv_count.max(1)) as u16;
                Some(Record::from_rdata(
                    qname.clone(),
                    TTL,
                    RData::SRV(SRV::new(0, weight, item.port, item.target.clone())),
                ))
            }
            _ => None,
        };
        if let Some(r) = record
            && !answers.contains(&r)
        {
            answers.push(r);
        }
    }
    if answers.is_empty() {
        return negative(index, ResponseCode::NoError);
    }
    positive(answers, additionals, chase)
}

/// PTR for the addresses the cluster knows; other reverse names fall through to upstream.
fn reverse(index: &Index, qname: &Name, lower: &Name, qtype: RecordType) -> Option<Reply> {
    let net = lower.parse_arpa_name().ok()?;
    if net.prefix_len() != net.max_prefix_len() {
        return None;
    }
    let target = index.reverse.get(&net.addr())?;
    if qtype != RecordType::PTR {
        return Some(negative(index, ResponseCode::NoError));
    }
    Some(positive(
        vec![Record::from_rdata(qname.clone(), TTL, RData::PTR(PTR(target.clone())))],
        Vec::new(),
        None,
    ))
}

fn positive(answers: Vec<Record>, additionals: Vec<Record>, chase: Option<Name>) -> Reply {
    Reply {
        rcode: ResponseCode::NoError,
        answers,
        soa: None,
        additionals,
        chase,
    }
}

fn negative(index: &Index, rcode: ResponseCode) -> Reply {
    Reply {
        rcode,
        answers: Vec::new(),
        soa: Some(soa(index)),
        additionals: Vec::new(),
        chase: None,
    }
}

fn ns_name(index: &Index) -> Option<Name> {
    index.name(&["ns", "dns"])
}

/// CoreDNS's SOA for the zone: `ns.dns.<zone> hostmaster.<zone> <serial> 7200 1800 86400 <ttl>`.
pub fn soa(index: &Index) -> Record {
    let mname = ns_name(index).unwrap_or_else(|| index.zone.clone());
    let rname = index.name(&["hostmaster"]).unwrap_or_else(|| index.zone.clone());
    Record::from_rdata(
        index.zone.clone(),
        TTL,
        RData::SOA(SOA::new(mname, rname, index.serial, 7200, 1800, 86400, TTL)),
    )
}
