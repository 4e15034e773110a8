//! The iptables mode's kernel side. Which iptables: the kernel has two (legacy x_tables and
//! nf_tables behind the iptables-nft binaries), and rules in one are invisible to the
//! other, so we must write where the node's other components (kubelet, CNI) write. As
//! kubernetes-sigs/iptables-wrappers does, [`detect`] picks the flavor that already holds
//! more rules, and nft when neither has any (what current distributions default to).

use std::{borrow::Cow, collections::BTreeSet};

use super::{
    ledger::Ledger,
    render::{Restore, render_full, render_partial, write_table},
};
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

/// Our chain names: fixed ones and per-Service prefixes (`KUBE-SVC-` today; the others
/// are earlier versions' names, still ours to clean up).
pub fn ours(chain: &str) -> bool {
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

/// The order of the two restores of a sync; the first is rolled back when the second fails.
const FAMILIES: [IpFamily; 2] = [IpFamily::V4, IpFamily::V6];

#[derive(Debug)]
pub struct Iptables {
    pub flavor: Flavor,
    jumps_ready: bool,
    /// Our chains in each family's tables (in [`FAMILIES`] order) as the kernel holds
    /// them; `None` until read (at the first sync) or when a failed rollback left them
    /// unknown.
    ledgers: [Option<Ledger>; 2],
}

impl Iptables {
    pub fn new(flavor: Flavor) -> Self {
        Self {
            flavor,
            jumps_ready: false,
            ledgers: [None, None],
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

    fn read_ledger(&self, family: IpFamily) -> Result<Ledger, CommandError> {
        let mut saved = String::new();
        for table in ["nat", "filter"] {
            saved += &output(&self.flavor.binary(family, "-save"), &["-t", table])?;
        }
        Ok(Ledger::from_save(&saved, ours))
    }

    fn run_restore(&self, family: IpFamily, input: &str) -> Result<(), CommandError> {
        run_with_stdin(&self.flavor.binary(family, "-restore"), &["--noflush", "--wait"], input)
    }

    /// Both families or neither. Each restore is one transaction per table; when the second
    /// family's fails, the first family's chains go back to what the ledger says the kernel
    /// held before (the previous sync's result), with one more restore. Why not check both
    /// with `--test` first: it only parses, while the kernel can still refuse at commit (a
    /// chain still referenced, a missing extension), and another writer can change the
    /// tables between a test and the commit; only an undo makes the pair atomic. A full
    /// sync also deletes the chains of ours it no longer declares.
    fn restore(&mut self, restore: &Restore, full: bool) -> Result<(), CommandError> {
        let [first, second] = FAMILIES;
        let mut known = [self.ledgers[0].take(), self.ledgers[1].take()];
        for (i, family) in FAMILIES.into_iter().enumerate() {
            if known[i].is_none() {
                match self.read_ledger(family) {
                    Ok(l) => known[i] = Some(l),
                    Err(e) => {
                        self.ledgers = known;
                        return Err(e);
                    }
                }
            }
        }
        // Both are known here.
        let [mut l1, mut l2] = known.map(Option::unwrap_or_default);
        let input = |family: IpFamily, ledger: &Ledger| -> Cow<'_, str> {
            let text = restore.family(family);
            if full {
                Cow::Owned(ledger.with_stale_deleted(text))
            } else {
                Cow::Borrowed(text)
            }
        };
        let (in1, in2) = (input(first, &l1), input(second, &l2));
        if let Err(e) = self.run_restore(first, &in1) {
            self.ledgers = [Some(l1), Some(l2)];
            return Err(e);
        }
        if let Err(e) = self.run_restore(second, &in2) {
            let undo = l1.undo(&in1);
            match self.run_restore(first, &undo) {
                Ok(()) => {
                    tracing::warn!(error = %e, "the {second:?} restore failed; the {first:?} rules went back to the previous sync's");
                    self.ledgers = [Some(l1), Some(l2)];
                }
                Err(undo_error) => {
                    tracing::error!(error = %e, %undo_error, "the {second:?} restore failed and the {first:?} rules could not be put back; the next sync rewrites them");
                    self.ledgers = [None, Some(l2)];
                }
            }
            return Err(e);
        }
        l1.apply(&in1);
        l2.apply(&in2);
        self.ledgers = [Some(l1), Some(l2)];
        Ok(())
    }
}

impl Dataplane for Iptables {
    fn mode(&self) -> Mode {
        Mode::Iptables
    }

    fn sync(&mut self, new: &DesiredState, kind: SyncKind<'_>) -> Result<(), DataplaneError> {
        let full = matches!(kind, SyncKind::Full);
        let restore = match kind {
            SyncKind::Full => render_full(new),
            SyncKind::Partial { old, diff } => render_partial(old, new, diff),
        };
        self.restore(&restore, full)?;
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
                let chains: BTreeSet<String> = saved
                    .lines()
                    .filter_map(|l| l.strip_prefix(':'))
                    .filter_map(|l| l.split_whitespace().next())
                    .filter(|c| ours(c))
                    .map(str::to_owned)
                    .collect();
                if chains.is_empty() {
                    continue;
                }
                input += &format!("*{table}\n");
                // The render's order for deletions: cheap for iptables-nft-restore to list.
                write_table(&mut input, &Default::default(), &chains);
                input += "COMMIT\n";
            }
            if !input.is_empty() {
                run_with_stdin(&flavor.binary(family, "-restore"), &["--noflush", "--wait"], &input)?;
            }
        }
    }
    Ok(())
}
