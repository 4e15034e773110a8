//! The helper rules' kernel side: `ipset restore`, then `iptables-restore --noflush` per
//! family (our chains only), the jumps from the built-in chains once, and the sysctls
//! IPVS needs. The iptables flavor is the iptables mode's choice ([`detect`]).

use std::collections::BTreeSet;

use super::{
    IpvsError,
    helpers::{FILTER_CHAINS, Helpers, JUMPS, NAT_CHAINS, all_set_names, ipset_delta, ipset_script},
};
use crate::{
    dataplane::{
        command::{output, run_with_stdin},
        iptables::apply::{Flavor, detect},
    },
    model::IpFamily,
};

fn op(e: impl std::fmt::Display) -> IpvsError {
    IpvsError::Operation(e.to_string())
}

/// The sysctls kube-proxy's ipvs proxier sets, in this network namespace: IPVS keeps
/// conntrack entries (so the nat table's MASQUERADE applies to its packets), connections
/// to a deleted real server end on their next packet, persistence templates of a drained
/// one expire, and the `kube-ipvs0` addresses are never announced over ARP.
pub const SYSCTLS: &[(&str, &str)] = &[
    ("net/ipv4/vs/conntrack", "1"),
    ("net/ipv4/vs/expire_nodest_conn", "1"),
    ("net/ipv4/vs/expire_quiescent_template", "1"),
    ("net/ipv4/ip_forward", "1"),
    ("net/ipv4/conf/all/arp_ignore", "1"),
    ("net/ipv4/conf/all/arp_announce", "2"),
];

pub fn set_sysctls() -> Result<(), IpvsError> {
    for (key, value) in SYSCTLS {
        let path = std::path::Path::new("/proc/sys").join(key);
        std::fs::write(&path, value).map_err(|e| IpvsError::Operation(format!("{}: {e}", path.display())))?;
    }
    Ok(())
}

/// Applies the helper state.
#[derive(Debug)]
pub struct HelperRules {
    flavor: Flavor,
    jumps_ready: bool,
    last: Option<Helpers>,
}

impl HelperRules {
    pub fn new() -> Self {
        Self {
            flavor: detect(),
            jumps_ready: false,
            last: None,
        }
    }

    /// Forgets what was applied, so the next `apply` writes everything.
    pub fn forget(&mut self) {
        self.last = None;
    }

    /// Makes the kernel hold `helpers`: the sets first (all or nothing), then each family's
    /// rules (one transaction each). Parts equal to what the previous call applied are
    /// skipped.
    pub fn apply(&mut self, helpers: &Helpers) -> Result<(), IpvsError> {
        let last = self.last.take();
        match &last {
            Some(l) if l.sets == helpers.sets => {}
            Some(l) => {
                run_with_stdin("ipset", &["-exist", "restore"], &ipset_delta(&l.sets, &helpers.sets)).map_err(op)?
            }
            None => {
                let listed = output("ipset", &["list", "-n"]).map_err(op)?;
                let existing: BTreeSet<String> = listed.lines().map(str::to_owned).collect();
                run_with_stdin("ipset", &["restore"], &ipset_script(&helpers.sets, &existing)).map_err(op)?;
            }
        }
        for family in [IpFamily::V4, IpFamily::V6] {
            let (text, before) = match family {
                IpFamily::V4 => (&helpers.v4, last.as_ref().map(|l| &l.v4)),
                IpFamily::V6 => (&helpers.v6, last.as_ref().map(|l| &l.v6)),
            };
            if before == Some(text) {
                continue;
            }
            let script = with_stale_chains(self.flavor, family, text);
            run_with_stdin(
                &self.flavor.binary(family, "-restore"),
                &["--noflush", "--wait"],
                &script,
            )
            .map_err(op)?;
        }
        if !self.jumps_ready {
            ensure_jumps(self.flavor)?;
            self.jumps_ready = true;
        }
        self.last = Some(helpers.clone());
        Ok(())
    }
}

impl Default for HelperRules {
    fn default() -> Self {
        Self::new()
    }
}

/// `text` plus the deletion of short-circuit chains the kernel holds and `text` no longer
/// declares (with `--noflush`, an undeclared chain would stay).
fn with_stale_chains(flavor: Flavor, family: IpFamily, text: &str) -> String {
    let saved = output(&flavor.binary(family, "-save"), &["-t", "nat"]).unwrap_or_default();
    let stale: Vec<&str> = saved
        .lines()
        .filter_map(|l| l.strip_prefix(':')?.split_whitespace().next())
        .filter(|c| c.starts_with("KUBE-IPVS-SC") && !text.contains(&format!(":{c} ")))
        .collect();
    if stale.is_empty() {
        return text.to_owned();
    }
    let mut out = String::new();
    for line in text.lines() {
        if line == "COMMIT" && !out.contains("*filter") {
            for c in &stale {
                out += &format!(":{c} - [0:0]\n");
            }
            for c in &stale {
                out += &format!("-X {c}\n");
            }
        }
        out += line;
        out.push('\n');
    }
    out
}

fn ensure_jumps(flavor: Flavor) -> Result<(), IpvsError> {
    for family in [IpFamily::V4, IpFamily::V6] {
        let bin = flavor.binary(family, "");
        for (table, chain, rule) in JUMPS {
            let args = |verb: &'static str| -> Vec<&str> {
                let mut a = vec!["-w", "-t", table, verb, chain];
                a.extend(rule.split_whitespace());
                a
            };
            if output(&bin, &args("-C")).is_err() {
                output(&bin, &args("-I")).map_err(op)?;
            }
        }
    }
    Ok(())
}

/// Removes our jumps, chains and sets wherever they are (both flavors and families).
/// Succeeds when nothing is installed or a tool is missing.
pub fn cleanup_helpers() -> Result<(), IpvsError> {
    for flavor in Flavor::ALL {
        for family in [IpFamily::V4, IpFamily::V6] {
            let mut input = String::new();
            let mut found = false;
            for table in ["nat", "filter"] {
                let Ok(saved) = output(&flavor.binary(family, "-save"), &["-t", table]) else {
                    continue;
                };
                let chains: Vec<&str> = saved
                    .lines()
                    .filter_map(|l| l.strip_prefix(':')?.split_whitespace().next())
                    .filter(|c| NAT_CHAINS.contains(c) || FILTER_CHAINS.contains(c) || c.starts_with("KUBE-IPVS-SC"))
                    .collect();
                if chains.is_empty() {
                    continue;
                }
                found = true;
                input += &format!("*{table}\n");
                for c in &chains {
                    input += &format!(":{c} - [0:0]\n");
                }
                for c in &chains {
                    input += &format!("-X {c}\n");
                }
                input += "COMMIT\n";
            }
            if !found {
                continue;
            }
            let bin = flavor.binary(family, "");
            for (table, chain, rule) in JUMPS {
                let mut args = vec!["-w", "-t", table, "-D", chain];
                args.extend(rule.split_whitespace());
                while output(&bin, &args).is_ok() {}
            }
            run_with_stdin(&flavor.binary(family, "-restore"), &["--noflush", "--wait"], &input).map_err(op)?;
        }
    }
    // No ipset tool or no ip_set in the kernel: then there are no sets either.
    if let Ok(listed) = output("ipset", &["list", "-n"]) {
        let ours = all_set_names();
        for set in listed.lines().filter(|s| ours.iter().any(|o| o == s)) {
            output("ipset", &["destroy", set]).map_err(op)?;
        }
    }
    Ok(())
}
