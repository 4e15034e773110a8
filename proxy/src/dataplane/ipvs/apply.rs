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
    pub fn apply(&mut self, helpers: &Helpers, timings: &mut super::SyncTimings) -> Result<(), IpvsError> {
        let last = self.last.take();
        timings.time("ipset restore", || -> Result<(), IpvsError> {
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
            Ok(())
        })?;
        for family in [IpFamily::V4, IpFamily::V6] {
            let (text, before) = match family {
                IpFamily::V4 => (&helpers.v4, last.as_ref().map(|l| &l.v4)),
                IpFamily::V6 => (&helpers.v6, last.as_ref().map(|l| &l.v6)),
            };
            if before == Some(text) && self.jumps_ready {
                continue;
            }
            let saved = timings.time("iptables-save", || {
                output(&self.flavor.binary(family, "-save"), &[]).map_err(op)
            })?;
            let script = complete_script(text, &saved, !self.jumps_ready);
            timings.time("iptables-restore", || {
                run_with_stdin(
                    &self.flavor.binary(family, "-restore"),
                    &["--noflush", "--wait"],
                    &script,
                )
                .map_err(op)
            })?;
        }
        self.jumps_ready = true;
        self.last = Some(helpers.clone());
        Ok(())
    }
}

impl Default for HelperRules {
    fn default() -> Self {
        Self::new()
    }
}

/// `text` completed against `saved` (the kernel's tables as `iptables-save` prints them):
/// plus the deletion of short-circuit chains the kernel holds and `text` no longer declares
/// (with `--noflush`, an undeclared chain would stay), and with `jumps`, the jumps from the
/// built-in chains that `saved` lacks, inserted first as `iptables -I` would. One restore
/// per family where the jumps took two `iptables` processes each (`-C`, then `-I`): the
/// cold sync's largest cost after the sets.
fn complete_script(text: &str, saved: &str, jumps: bool) -> String {
    let mut table = "";
    let mut held: BTreeSet<(&str, &str)> = BTreeSet::new();
    for line in saved.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
        } else {
            held.insert((table, line));
        }
    }
    let stale: Vec<&str> = held
        .iter()
        .filter(|(t, _)| *t == "nat")
        .filter_map(|(_, l)| l.strip_prefix(':')?.split_whitespace().next())
        .filter(|c| c.starts_with("KUBE-IPVS-SC") && !text.contains(&format!(":{c} ")))
        .collect();
    let mut out = String::with_capacity(text.len() + 1024);
    let mut table = "";
    for line in text.lines() {
        if let Some(t) = line.strip_prefix('*') {
            table = t.trim();
        }
        if line == "COMMIT" {
            if table == "nat" {
                for c in &stale {
                    out += &format!(":{c} - [0:0]\n");
                }
                for c in &stale {
                    out += &format!("-X {c}\n");
                }
            }
            for (t, chain, rule) in JUMPS.iter().filter(|(t, ..)| jumps && *t == table) {
                if !held.contains(&(*t, format!("-A {chain} {rule}").as_str())) {
                    out += &format!("-I {chain} {rule}\n");
                }
            }
        }
        out += line;
        out.push('\n');
    }
    out
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn jumps_missing_from_the_kernel_are_inserted_in_the_same_restore_and_present_ones_are_not() {
        let text = super::super::helpers::render(&crate::model::DesiredState::default()).v4;
        let fresh = complete_script(&text, "", true);
        for (_, chain, rule) in JUMPS {
            assert_eq!(
                fresh.matches(&format!("-I {chain} {rule}\n")).count(),
                JUMPS.iter().filter(|(_, c, r)| c == chain && r == rule).count(),
                "{fresh}"
            );
        }
        // Each jump lands in its own table's section.
        let nat = &fresh[fresh.find("*nat").unwrap()..];
        let nat = &nat[..nat.find("COMMIT").unwrap()];
        assert!(nat.contains("-I PREROUTING ") && !nat.contains("-I INPUT "), "{fresh}");
        // What `iptables-save` prints once they are in.
        let mut saved = String::new();
        for table in ["nat", "filter"] {
            saved += &format!("*{table}\n:KUBE-IPVS-SCABC - [0:0]\n");
            for (_, chain, rule) in JUMPS.iter().filter(|(t, ..)| *t == table) {
                saved += &format!("-A {chain} {rule}\n");
            }
            saved += "COMMIT\n";
        }
        let again = complete_script(&text, &saved, true);
        assert!(!again.contains("-I "), "{again}");
        // A short-circuit chain no longer rendered goes (in nat, where they live).
        assert!(again.contains("-X KUBE-IPVS-SCABC\n"), "{again}");
        assert_eq!(again.matches("-X KUBE-IPVS-SCABC").count(), 1);
        assert_eq!(complete_script(&text, "", false), text, "nothing to add");
    }
}
