//! Runs the memory suite until `rudder-proxy bench` has it:
//! `bench_memory --rudder PATH --proxy PATH [--sizes 1000,10000] [--modes nftables,ebpf]
//! [--rounds 3] [--settle-s 5] [--json FILE]` (root; release binaries for real figures).

use std::{path::PathBuf, time::Duration};

use anyhow::{Context, Result, bail};
use rudder_proxy::bench::memory::{Opts, run};

fn main() -> Result<()> {
    let mut opts = Opts::default();
    let mut json = None;
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().with_context(|| format!("{flag} needs a value"))?;
        let list = || value.split(',').map(str::to_owned).collect::<Vec<_>>();
        match flag.as_str() {
            "--rudder" => opts.rudder = Some(PathBuf::from(&value)),
            "--proxy" => opts.proxy = Some(PathBuf::from(&value)),
            "--sizes" => opts.sizes = list().iter().map(|s| s.parse()).collect::<Result<_, _>>()?,
            "--modes" => opts.modes = list(),
            "--rounds" => opts.rounds = value.parse()?,
            "--endpoints" => opts.endpoints = value.parse()?,
            "--settle-s" => opts.settle = Duration::from_secs_f64(value.parse()?),
            "--concurrency" => opts.concurrency = value.parse()?,
            "--json" => json = Some(PathBuf::from(&value)),
            _ => bail!("unknown flag {flag}"),
        }
    }
    let started = std::time::Instant::now();
    let report = run(&opts, &|line| {
        eprintln!("[{:6.1}s] {line}", started.elapsed().as_secs_f64())
    })?;
    if let Some(path) = json {
        std::fs::write(&path, serde_json::to_string_pretty(&report)?)?;
    }
    println!("{}", report.table());
    Ok(())
}
