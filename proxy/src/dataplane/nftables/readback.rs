//! The kernel's nftables ruleset read back (`nft -j list …`) into the typed schema of the
//! `nftables` crate: what cleanup, `rudder-proxy inspect --mode nftables` and the kernel
//! tests compare with what we meant.
//!
//! Reading only. Applying stays with `nft -f` text scripts and our own netlink batches
//! ([`super::apply`]), because our table cannot round-trip through JSON on nft 1.0.6:
//!
//! - the crate (0.6.3) has no `verdict` [`SetType`], nor `integer`, nor a map data type
//!   written as one string (`"ipv4_addr . inet_service"`, which is how nft 1.0.6 lists a
//!   concatenated map value), so deserializing `nft -j list table ip rudder` as one
//!   `Nftables` document fails as a whole on `service-ips`;
//! - nft 1.0.6 itself refuses its own listing of the endpoint maps on `nft -j -f`
//!   ("Invalid map type 'ipv4_addr . inet_service'": concatenated map data types are not
//!   accepted in JSON input by that release).
//!
//! Reading has one more gap: nft prints a single NAT flag as a string (`"flags":
//! "fully-random"`), where the crate accepts only an array, so our masquerade rules are
//! outside its schema too.
//!
//! So a table listing is decoded object by object: each object the crate's schema covers
//! becomes an [`NfListObject`]; the others are kept by kind and name as [`Outside`] (a
//! rule by its chain and handle), with set and map elements still decoded by the crate's
//! [`Expression`] (keys, concatenations and verdicts are all in its schema; only the
//! declared types are not).
//!
//! [`SetType`]: nftables::schema::SetType

use std::fmt::Write;

pub use nftables::types::NfFamily;
use nftables::{
    expr::{Expression, NamedExpression, Verdict},
    schema::{Chain, NfListObject, NfObject, Nftables, Rule, Table},
};
use serde_json::Value;

use crate::dataplane::command::{CommandError, output};

#[derive(Debug, thiserror::Error)]
pub enum ReadbackError {
    #[error(transparent)]
    Command(#[from] CommandError),
    #[error("`{command}` printed JSON that does not parse: {source}")]
    Json {
        command: String,
        #[source]
        source: serde_json::Error,
    },
    #[error("`{command}` printed no `nftables` array")]
    NoObjects { command: String },
}

/// An object of a listing that the crate's schema does not cover: the header is kept
/// as nft printed it; the elements (maps and sets only) are decoded by the crate.
#[derive(Debug, Clone)]
pub struct Outside {
    /// The JSON key: `map`, `set`, `rule`, …
    pub kind: String,
    /// A rule's is `CHAIN handle N`.
    pub name: String,
    /// A rule's chain.
    pub chain: Option<String>,
    /// Why the crate refused it (serde's message).
    pub reason: String,
    /// The key type and, for maps, the data type, as nft printed them.
    pub key_type: Value,
    pub data_type: Option<Value>,
    pub elem: Vec<Expression<'static>>,
}

/// One table as the kernel holds it.
#[derive(Debug, Clone, Default)]
pub struct TableListing {
    /// Every object the crate's schema covers, in listing order.
    pub objects: Vec<NfListObject<'static>>,
    /// The rest, by name (our verdict maps and endpoint maps on nft 1.0.6).
    pub outside: Vec<Outside>,
}

impl TableListing {
    pub fn chains(&self) -> impl Iterator<Item = &Chain<'static>> {
        self.objects.iter().filter_map(|o| match o {
            NfListObject::Chain(c) => Some(c),
            _ => None,
        })
    }

    pub fn rules(&self) -> impl Iterator<Item = &Rule<'static>> {
        self.objects.iter().filter_map(|o| match o {
            NfListObject::Rule(r) => Some(r),
            _ => None,
        })
    }

    /// How many rules `chain` holds, typed or outside the schema.
    pub fn rule_count(&self, chain: &str) -> usize {
        let typed = self.rules().filter(|r| r.chain == chain).count();
        typed
            + self
                .outside
                .iter()
                .filter(|o| o.kind == "rule" && o.chain.as_deref() == Some(chain))
                .count()
    }

    /// The elements of the set or map `name`, whether or not its header is in the
    /// crate's schema; `None` when the table has no such set or map.
    pub fn elements(&self, name: &str) -> Option<&[Expression<'static>]> {
        let typed = self.objects.iter().find_map(|o| match o {
            NfListObject::Set(s) if s.name == name => Some(s.elem.as_deref().unwrap_or_default()),
            NfListObject::Map(m) if m.name == name => Some(m.elem.as_deref().unwrap_or_default()),
            _ => None,
        });
        typed.or_else(|| self.outside.iter().find(|o| o.name == name).map(|o| o.elem.as_slice()))
    }

    /// Every set and map name with its element count, typed and outside alike.
    pub fn element_counts(&self) -> Vec<(String, &'static str, usize)> {
        let typed = self.objects.iter().filter_map(|o| match o {
            NfListObject::Set(s) => Some((s.name.to_string(), "set", s.elem.as_ref().map_or(0, |e| e.len()))),
            NfListObject::Map(m) => Some((m.name.to_string(), "map", m.elem.as_ref().map_or(0, |e| e.len()))),
            _ => None,
        });
        let outside = self.outside.iter().map(|o| {
            let kind = if o.kind == "map" { "map" } else { "set" };
            (o.name.clone(), kind, o.elem.len())
        });
        typed.chain(outside).collect()
    }
}

fn nft_json(args: &[&str]) -> Result<(String, Vec<Value>), ReadbackError> {
    let command = format!("nft {}", args.join(" "));
    let text = output("nft", args)?;
    let mut doc: Value = serde_json::from_str(&text).map_err(|source| ReadbackError::Json {
        command: command.clone(),
        source,
    })?;
    match doc.get_mut("nftables").map(Value::take) {
        Some(Value::Array(objects)) => Ok((command, objects)),
        _ => Err(ReadbackError::NoObjects { command }),
    }
}

/// Every table in this network namespace (`nft -j list tables`), all in the crate's
/// schema.
pub fn tables() -> Result<Vec<Table<'static>>, ReadbackError> {
    let args = ["-j", "list", "tables"];
    let text = output("nft", &args)?;
    parse_tables(&text).map_err(|source| ReadbackError::Json {
        command: format!("nft {}", args.join(" ")),
        source,
    })
}

/// The tables of an `nft -j list tables` document.
pub fn parse_tables(json: &str) -> Result<Vec<Table<'static>>, serde_json::Error> {
    let doc: Nftables<'static> = serde_json::from_str(json)?;
    Ok(doc
        .objects
        .iter()
        .filter_map(|o| match o {
            NfObject::ListObject(NfListObject::Table(t)) => Some(t.clone()),
            _ => None,
        })
        .collect())
}

/// One table (`nft -j list table FAMILY NAME`), decoded object by object.
pub fn table(family: NfFamily, name: &str) -> Result<TableListing, ReadbackError> {
    let family = family_name(family);
    let (_, objects) = nft_json(&["-j", "list", "table", family, name])?;
    Ok(decode(objects))
}

/// Decodes a listing's objects one by one, so one object outside the crate's schema
/// costs only itself.
pub fn decode(objects: Vec<Value>) -> TableListing {
    let mut listing = TableListing::default();
    for value in objects {
        match serde_json::from_value::<NfListObject<'static>>(value.clone()) {
            Ok(NfListObject::MetainfoObject(_)) => {}
            Ok(object) => listing.objects.push(object),
            Err(error) => listing.outside.push(outside(value, error)),
        }
    }
    listing
}

fn outside(value: Value, error: serde_json::Error) -> Outside {
    let (kind, mut body) = match value {
        Value::Object(map) => match map.into_iter().next() {
            Some((kind, body)) => (kind, body),
            None => (String::new(), Value::Null),
        },
        other => (String::new(), other),
    };
    let text = |key: &str| body.get(key).and_then(Value::as_str).unwrap_or_default().to_owned();
    // Rules have no name: the chain and handle say which one.
    let name = match kind.as_str() {
        "rule" => format!(
            "{} handle {}",
            text("chain"),
            body.get("handle").unwrap_or(&Value::Null)
        ),
        _ => text("name"),
    };
    let chain = (kind == "rule").then(|| text("chain"));
    // Elements one by one as well: a map whose header is outside the schema still has
    // keys and values the crate knows.
    let elem = match body.get_mut("elem").map(Value::take) {
        Some(Value::Array(elems)) => elems
            .into_iter()
            .filter_map(|e| serde_json::from_value(e).ok())
            .collect(),
        _ => Vec::new(),
    };
    Outside {
        chain,
        kind,
        name,
        reason: error.to_string(),
        key_type: body.get("type").cloned().unwrap_or(Value::Null),
        data_type: body.get("map").cloned(),
        elem,
    }
}

pub fn family_name(family: NfFamily) -> &'static str {
    match family {
        NfFamily::IP => "ip",
        NfFamily::IP6 => "ip6",
        NfFamily::INet => "inet",
        NfFamily::ARP => "arp",
        NfFamily::Bridge => "bridge",
        NfFamily::NetDev => "netdev",
    }
}

/// An expression as nft's text would show it, for reports and test assertions: `a . b`
/// for concatenations, `key : value` for map elements, `goto chain` for verdicts.
pub fn show(e: &Expression<'_>) -> String {
    match e {
        Expression::String(s) => s.to_string(),
        Expression::Number(n) => n.to_string(),
        Expression::Boolean(b) => b.to_string(),
        Expression::List(items) => match items.as_slice() {
            [key, value] => format!("{} : {}", show(key), show(value)),
            _ => items.iter().map(show).collect::<Vec<_>>().join(", "),
        },
        Expression::Named(NamedExpression::Concat(items)) => items.iter().map(show).collect::<Vec<_>>().join(" . "),
        Expression::Named(NamedExpression::Prefix(p)) => format!("{}/{}", show(&p.addr), p.len),
        Expression::Named(NamedExpression::Elem(el)) => show(&el.val),
        Expression::Verdict(Verdict::Goto(t)) => format!("goto {}", t.target),
        Expression::Verdict(Verdict::Jump(t)) => format!("jump {}", t.target),
        Expression::Verdict(v) => format!("{v:?}").to_lowercase(),
        other => format!("{other:?}"),
    }
}

/// `rudder-proxy inspect --mode nftables`: both of our tables as the kernel holds them.
pub fn report() -> Result<String, ReadbackError> {
    let mut out = String::new();
    let ours: Vec<Table<'static>> = tables()?
        .into_iter()
        .filter(|t| t.name == super::render::TABLE)
        .collect();
    if ours.is_empty() {
        return Ok("no `rudder` table: the nftables mode is not installed here\n".into());
    }
    for t in ours {
        let listing = table(t.family, &t.name)?;
        write_report(&mut out, family_name(t.family), &t.name, &listing);
    }
    Ok(out)
}

/// The report of one table's listing (pure, for unit tests).
pub fn write_report(out: &mut String, family: &str, name: &str, listing: &TableListing) {
    let chains: Vec<_> = listing.chains().collect();
    let rules: usize = chains.iter().map(|c| listing.rule_count(&c.name)).sum();
    let _ = writeln!(out, "table {family} {name}: {} chains, {rules} rules", chains.len());
    for c in chains.iter().filter(|c| c.hook.is_some()) {
        let rules = listing.rule_count(&c.name);
        let _ = writeln!(
            out,
            "  base chain {}: hook {} priority {} ({rules} rules)",
            c.name,
            c.hook.map(|h| format!("{h:?}").to_lowercase()).unwrap_or_default(),
            c.prio.unwrap_or_default()
        );
    }
    for (set, kind, count) in listing.element_counts() {
        let _ = writeln!(out, "  {kind} {set}: {count} elements");
    }
    for o in &listing.outside {
        let _ = match &o.data_type {
            Some(data) => writeln!(
                out,
                "  outside the nftables crate's schema: map {} (type {} : {data}); its elements are read",
                o.name, o.key_type
            ),
            None => writeln!(
                out,
                "  outside the nftables crate's schema: {} {} ({})",
                o.kind, o.name, o.reason
            ),
        };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Objects as nft 1.0.6 lists them for our table (`nft -j list table ip rudder`).
    fn listing() -> Vec<Value> {
        serde_json::from_str(
            r#"[
            {"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "rudder", "handle": 1}},
            {"set": {"family": "ip", "name": "hairpin-endpoints", "table": "rudder", "type": ["ipv4_addr", "ipv4_addr"], "handle": 2,
                "elem": [{"concat": ["10.244.1.10", "10.244.1.10"]}]}},
            {"set": {"family": "ip", "name": "service-cidrs", "table": "rudder", "type": "ipv4_addr", "handle": 3, "flags": ["interval"],
                "elem": [{"prefix": {"addr": "10.96.0.0", "len": 16}}]}},
            {"map": {"family": "ip", "name": "service-ips", "table": "rudder", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 5,
                "map": "verdict", "elem": [[{"concat": ["10.96.0.10", "tcp", 80]}, {"goto": {"target": "svc-1"}}]]}},
            {"map": {"family": "ip", "name": "endpoints-tcp-0", "table": "rudder", "type": ["ipv4_addr", "inet_proto", "inet_service", "integer"],
                "handle": 7, "map": "ipv4_addr . inet_service",
                "elem": [[{"concat": ["10.96.0.10", "tcp", 80, 0]}, {"concat": ["10.244.1.10", 8080]}]]}},
            {"chain": {"family": "ip", "table": "rudder", "name": "nat-prerouting", "handle": 8, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
            {"chain": {"family": "ip", "table": "rudder", "name": "svc-1", "handle": 9}},
            {"rule": {"family": "ip", "table": "rudder", "chain": "nat-prerouting", "handle": 10, "expr": [{"vmap": {"key": {"concat": [
                {"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]},
                "data": "@service-ips"}}]}},
            {"chain": {"family": "ip", "table": "rudder", "name": "masquerading", "handle": 11}},
            {"rule": {"family": "ip", "table": "rudder", "chain": "masquerading", "handle": 12, "expr": [
                {"masquerade": {"flags": "fully-random"}}]}}
            ]"#,
        )
        .expect("fixture")
    }

    #[test]
    fn the_crate_refuses_the_whole_document_but_object_by_object_only_some_objects_fall_outside() {
        let whole = serde_json::json!({ "nftables": listing() });
        assert!(
            serde_json::from_value::<Nftables<'static>>(whole).is_err(),
            "if the crate now reads verdict maps, decode whole documents and drop `Outside`"
        );
        let read = decode(listing());
        assert_eq!(read.chains().count(), 3);
        assert_eq!(read.rules().count(), 1);
        assert_eq!(read.rule_count("masquerading"), 1);
        let outside: Vec<_> = read.outside.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(outside, ["service-ips", "endpoints-tcp-0", "masquerading handle 12"]);
        let show_all = |name| read.elements(name).expect(name).iter().map(show).collect::<Vec<_>>();
        assert_eq!(show_all("service-ips"), ["10.96.0.10 . tcp . 80 : goto svc-1"]);
        assert_eq!(
            show_all("endpoints-tcp-0"),
            ["10.96.0.10 . tcp . 80 . 0 : 10.244.1.10 . 8080"]
        );
        assert_eq!(show_all("hairpin-endpoints"), ["10.244.1.10 . 10.244.1.10"]);
        assert_eq!(show_all("service-cidrs"), ["10.96.0.0/16"]);
        assert!(read.elements("nope").is_none());
    }

    #[test]
    fn the_report_names_what_is_outside_the_schema() {
        let mut out = String::new();
        write_report(&mut out, "ip", "rudder", &decode(listing()));
        assert!(out.contains("table ip rudder: 3 chains, 2 rules"), "{out}");
        assert!(
            out.contains("base chain nat-prerouting: hook prerouting priority -100 (1 rules)"),
            "{out}"
        );
        assert!(out.contains("map service-ips: 1 elements"), "{out}");
        assert!(
            out.contains("outside the nftables crate's schema: map service-ips"),
            "{out}"
        );
        assert!(
            out.contains("outside the nftables crate's schema: rule masquerading handle 12 (invalid type"),
            "{out}"
        );
    }

    #[test]
    fn tables_parse_in_the_crates_schema() {
        let json = r#"{"nftables": [{"metainfo": {"version": "1.0.6", "release_name": "Lester Gooch #5", "json_schema_version": 1}},
            {"table": {"family": "ip", "name": "rudder", "handle": 1}}, {"table": {"family": "ip6", "name": "nat", "handle": 2}}]}"#;
        let tables = parse_tables(json).expect("tables");
        assert_eq!(tables.len(), 2);
        assert_eq!((tables[1].family, tables[1].name.as_ref()), (NfFamily::IP6, "nat"));
    }
}
