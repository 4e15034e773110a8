//! The iptables mode's kernel side. Which iptables: the kernel has two (legacy x_tables and
//! nf_tables behind the iptables-nft binaries), and rules in one are invisible to the
//! other, so we must write where the node's other components (kubelet, CNI) write. As
//! kubernetes-sigs/iptables-wrappers does, [`detect`] picks the flavor that already holds
//! more rules, and nft when neither has any (what current distributions default to).

use super::render::{Restore, render_full, render_partial};
use crate::{
    dataplane::{
        Mode,
        command::{CommandError, output, run_with_stdin},
        seam::{Dataplane, DataplaneError, SyncKind},
    },
    model::{DesiredState, IpFamily},
};

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Legacy,
    Nft,
}

impl Flavor {
    pub const ALL: [Flavor; 2] = [Flavor::Legacy, Flavor::Nft];

    /// `iptables-legacy`, `ip6tables-nft-restore`, …
    pub fn binary(self, family: IpFamily, suffix: &str) -> String {
        let base = match family {
            IpFamily::V4 => "iptables",
            IpFamily::V6 => "ip6tables",
        };
        let flavor = match self {
            Flavor::Legacy => "legacy",
            Flavor::Nft => "nft",
        };
        format!("{base}-{flavor}{suffix}")
    }
}

/// The flavor with more rules in mangle and nat (where kubelet and CNIs write); nft when
/// equal.
pub fn detect() -> Flavor {
    let rules = |f: Flavor| -> usize {
        ["mangle", "nat"]
            .iter()
            .filter_map(|t| output(&f.binary(IpFamily::V4, "-save"), &["-t", t]).ok())
            .map(|s| s.lines().filter(|l| l.starts_with("-A")).count())
            .sum()
    };
    if rules(Flavor::Legacy) > rules(Flavor::Nft) {
        Flavor::Legacy
    } else {
        Flavor::Nft
    }
}

/// Jumps from the built-in chains into ours: (table, built-in chain, rule).
const JUMPS: &[(&str, &str, &str)] = &[
    ("nat", "PREROUTING", "-m comment --comment rudder -j KUBE-SERVICES"),
    ("nat", "OUTPUT", "-m comment --comment rudder -j KUBE-SERVICES"),
    ("nat", "POSTROUTING", "-m comment --comment rudder -j KUBE-POSTROUTING"),
    (
        "filter",
        "INPUT",
        "-m comment --comment rudder -j KUBE-EXTERNAL-SERVICES",
    ),
    ("filter", "FORWARD", "-m comment --comment rudder -j KUBE-FORWARD"),
    ("filter", "FORWARD", "-m comment --comment rudder -j KUBE-SERVICES"),
    (
        "filter",
        "FORWARD",
        "-m comment --comment rudder -j KUBE-EXTERNAL-SERVICES",
    ),
    ("filter", "OUTPUT", "-m comment --comment rudder -j KUBE-SERVICES"),
];

/// Our chain names: fixed ones and per-Service prefixes.
fn ours(chain: &str) -> bool {
    [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-MARK-MASQ",
        "KUBE-POSTROUTING",
    ]
    .contains(&chain)
        || ["KUBE-SVC-", "KUBE-SVL-", "KUBE-EXT-", "KUBE-SEP-", "KUBE-MQ-"]
            .iter()
            .any(|p| chain.starts_with(p))
}

#[derive(Debug)]
pub struct Iptables {
    pub flavor: Flavor,
    jumps_ready: bool,
}

impl Iptables {
    pub fn new(flavor: Flavor) -> Self {
        Self {
            flavor,
            jumps_ready: false,
        }
    }

    /// Inserts the jumps from the built-in chains once (they must come after our chains
    /// exist, and only once: `-C` checks first).
    fn ensure_jumps(&self) -> Result<(), CommandError> {
        for family in [IpFamily::V4, IpFamily::V6] {
            let bin = self.flavor.binary(family, "");
            for (table, chain, rule) in JUMPS {
                let args = |op: &'static str| -> Vec<String> {
                    let mut a: Vec<String> = ["-w", "-t", table, op, chain].iter().map(|s| (*s).to_owned()).collect();
                    a.extend(rule.split_whitespace().map(str::to_owned));
                    a
                };
                let check = args("-C");
                if output(&bin, &check.iter().map(String::as_str).collect::<Vec<_>>()).is_err() {
                    let insert = args("-I");
                    output(&bin, &insert.iter().map(String::as_str).collect::<Vec<_>>())?;
                }
            }
        }
        Ok(())
    }

    fn restore(&self, restore: &Restore) -> Result<(), CommandError> {
        for family in [IpFamily::V4, IpFamily::V6] {
            run_with_stdin(
                &self.flavor.binary(family, "-restore"),
                &["--noflush", "--wait"],
                restore.family(family),
            )?;
        }
        Ok(())
    }
}

impl Dataplane for Iptables {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    fn sync(&mut self, new: &DesiredState, kind: SyncKind<'_>) -> Result<(), DataplaneError> {
        let restore = match kind {
            SyncKind::Full => render_full(new),
            SyncKind::Partial { old, diff } => render_partial(old, new, diff),
        };
        self.restore(&restore)?;
        if !self.jumps_ready {
            self.ensure_jumps()?;
            self.jumps_ready = true;
        }
        Ok(())
    }
}

/// Removes our jumps and chains from both flavors and families. Succeeds when nothing is
/// installed (or a flavor's tools are missing).
pub fn cleanup() -> Result<(), DataplaneError> {
    for flavor in Flavor::ALL {
        for family in [IpFamily::V4, IpFamily::V6] {
            let bin = flavor.binary(family, "");
            for (table, chain, rule) in JUMPS {
                let mut args = vec!["-w", "-t", table, "-D", chain];
                args.extend(rule.split_whitespace());
                while output(&bin, &args).is_ok() {}
            }
            let mut input = String::new();
            for table in ["nat", "filter"] {
                let Ok(saved) = output(&flavor.binary(family, "-save"), &["-t", table]) else {
                    continue;
                };
                let chains: Vec<&str> = saved
                    .lines()
                    .filter_map(|l| l.strip_prefix(':'))
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|c| ours(c))
                    .collect();
                if chains.is_empty() {
                    continue;
                }
                input += &format!("*{table}\n");
                for c in &chains {
                    input += &format!(":{c} - [0:0]\n");
                }
                for c in &chains {
                    input += &format!("-X {c}\n");
                }
                input += "COMMIT\n";
            }
            if !input.is_empty() {
                run_with_stdin(&flavor.binary(family, "-restore"), &["--noflush", "--wait"], &input)?;
            }
        }
    }
    Ok(())
}
