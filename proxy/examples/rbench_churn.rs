//! Runs the churn or first-packet suite until `rudder-proxy bench` calls them:
//! `rbench_churn churn|first-packet [MODES] [SIZES] [key=value...]` (as root), printing the
//! table, then the report as one JSON line. Keys: churn: changes, rate, min_sync_ms;
//! first-packet: connections, rounds.

use std::time::Duration;

use anyhow::{Context, Result, bail};
use rudder_proxy::{
    bench::{churn, first_packet},
    dataplane::Mode,
};

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let modes = |s: Option<&String>| -> Result<Option<Vec<Mode>>> {
        s.map(|s| {
            s.split(',')
                .map(|m| match m {
                    "ebpf" => Ok(Mode::Ebpf),
                    "nftables" => Ok(Mode::Nftables),
                    "iptables" => Ok(Mode::Iptables),
                    _ => bail!("unknown mode {m}"),
                })
                .collect()
        })
        .transpose()
    };
    let sizes = |s: Option<&String>| -> Result<Option<Vec<usize>>> {
        s.map(|s| s.split(',').map(|n| n.parse().context("a size")).collect())
            .transpose()
    };
    let kv = |key: &str| args.iter().skip(3).find_map(|a| a.strip_prefix(&format!("{key}=")));
    let progress = |s: &str| eprintln!("{s}");
    match args.first().map(String::as_str) {
        Some("churn") => {
            let mut o = churn::Opts::default();
            o.modes = modes(args.get(1))?.unwrap_or(o.modes);
            o.services = sizes(args.get(2))?.unwrap_or(o.services);
            if let Some(v) = kv("changes") {
                o.changes = v.parse()?;
            }
            if let Some(v) = kv("rate") {
                o.rate = v.parse()?;
            }
            if let Some(v) = kv("min_sync_ms") {
                o.min_sync_period = Duration::from_millis(v.parse()?);
            }
            let r = churn::run(&o, &progress)?;
            println!("{}", r.table());
            println!("{}", serde_json::to_string(&r)?);
        }
        Some("first-packet") => {
            let mut o = first_packet::Opts::default();
            o.modes = modes(args.get(1))?.unwrap_or(o.modes);
            o.services = sizes(args.get(2))?.unwrap_or(o.services);
            if let Some(v) = kv("connections") {
                o.connections = v.parse()?;
            }
            if let Some(v) = kv("rounds") {
                o.rounds = v.parse()?;
            }
            let r = first_packet::run(&o, &progress)?;
            println!("{}", r.table());
            println!("{}", serde_json::to_string(&r)?);
        }
        _ => bail!("usage: rbench_churn churn|first-packet [MODES] [SIZES] [key=value...]"),
    }
    Ok(())
}
