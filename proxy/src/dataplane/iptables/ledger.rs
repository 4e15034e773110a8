//! What our chains hold in one family's kernel tables, as the last successful restore left
//! them. The two families are two restores, each its own transaction; when the second
//! fails, [`Ledger::undo`] gives the input that puts every chain the first one touched
//! back, so a sync is all or nothing across both families (see `apply.rs`).

use std::collections::{BTreeMap, BTreeSet};

use super::render::{Chains, write_table};

/// Per table (`nat`, `filter`): our chains and their rules, as `iptables-restore` input
/// after `-A <chain>`.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Ledger {
    tables: BTreeMap<String, BTreeMap<String, Rules>>,
}

/// One chain's rules, each ended by a newline, in one string: at 10k Services a ledger
/// holds about 400k rules, and a string each (with its vector slot and allocation) took
/// twice the memory of the text. Only `undo` needs them one by one.
type Rules = String;

fn push_rule(rules: &mut Rules, rule: &str) {
    rules.push_str(rule);
    rules.push('\n');
}

/// One line of restore input or `iptables-save` output that concerns chains.
enum Line<'a> {
    Table(&'a str),
    Declare(&'a str),
    Append(&'a str, &'a str),
    Delete(&'a str),
}

fn lines(text: &str) -> impl Iterator<Item = Line<'_>> {
    text.lines().filter_map(|l| {
        if let Some(t) = l.strip_prefix('*') {
            Some(Line::Table(t.trim()))
        } else if let Some(rest) = l.strip_prefix(':') {
            rest.split_whitespace().next().map(Line::Declare)
        } else if let Some(rest) = l.strip_prefix("-A ") {
            let (chain, rule) = rest.split_once(' ').unwrap_or((rest, ""));
            Some(Line::Append(chain, rule))
        } else {
            l.strip_prefix("-X ").map(|c| Line::Delete(c.trim()))
        }
    })
}

impl Ledger {
    /// Our chains (as `ours` tells them) in `iptables-save` output of any tables.
    pub fn from_save(saved: &str, ours: impl Fn(&str) -> bool) -> Self {
        let mut ledger = Self::default();
        let mut table = String::new();
        for line in lines(saved) {
            match line {
                Line::Table(t) => table = t.to_owned(),
                Line::Declare(c) if ours(c) => {
                    ledger.chains(&table).insert(c.to_owned(), Rules::new());
                }
                Line::Append(c, rule) if ours(c) => {
                    push_rule(ledger.chains(&table).entry(c.to_owned()).or_default(), rule);
                }
                _ => {}
            }
        }
        ledger
    }

    fn chains(&mut self, table: &str) -> &mut BTreeMap<String, Rules> {
        self.tables.entry(table.to_owned()).or_default()
    }

    /// Records a restore input (`--noflush`) that the kernel took.
    pub fn apply(&mut self, input: &str) {
        let mut table = String::new();
        for line in lines(input) {
            match line {
                Line::Table(t) => table = t.to_owned(),
                Line::Declare(c) => {
                    self.chains(&table).insert(c.to_owned(), Rules::new());
                }
                Line::Append(c, rule) => push_rule(self.chains(&table).entry(c.to_owned()).or_default(), rule),
                Line::Delete(c) => {
                    self.chains(&table).remove(c);
                }
            }
        }
    }

    /// `input` (a full sync's, which declares every chain it wants) with the deletion of
    /// every chain the ledger holds and `input` does not declare, inside the same table's
    /// transaction: Services removed while a sync failed, an earlier process's chains, or
    /// chain names of an earlier version.
    pub fn with_stale_deleted(&self, input: &str) -> String {
        let mut declared: BTreeMap<&str, BTreeSet<&str>> = BTreeMap::new();
        let mut table = "";
        for line in lines(input) {
            match line {
                Line::Table(t) => table = t,
                Line::Declare(c) => {
                    declared.entry(table).or_default().insert(c);
                }
                _ => {}
            }
        }
        let stale = |table: &str| -> BTreeSet<String> {
            self.tables
                .get(table)
                .into_iter()
                .flat_map(|chains| chains.keys())
                .filter(|c| !declared.get(table).is_some_and(|d| d.contains(c.as_str())))
                .cloned()
                .collect()
        };
        let mut out = String::with_capacity(input.len());
        let mut table = String::new();
        for line in input.lines() {
            if let Some(t) = line.strip_prefix('*') {
                table = t.trim().to_owned();
            } else if line == "COMMIT" {
                write_table(&mut out, &Chains::new(), &stale(&table));
            }
            out += line;
            out.push('\n');
        }
        for t in self.tables.keys().filter(|t| !declared.contains_key(t.as_str())) {
            let gone = stale(t);
            if !gone.is_empty() {
                out += &format!("*{t}\n");
                write_table(&mut out, &Chains::new(), &gone);
                out += "COMMIT\n";
            }
        }
        out
    }

    /// The restore input that returns every chain `input` declared or deleted to what the
    /// ledger holds: chains it had get their rules back, chains it did not are deleted.
    /// Empty when `input` touched nothing.
    pub fn undo(&self, input: &str) -> String {
        let mut touched: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        let mut table = String::new();
        for line in lines(input) {
            match line {
                Line::Table(t) => table = t.to_owned(),
                Line::Declare(c) | Line::Delete(c) => {
                    touched.entry(table.clone()).or_default().insert(c.to_owned());
                }
                Line::Append(..) => {}
            }
        }
        let mut out = String::new();
        for (table, names) in touched {
            let had = self.tables.get(&table);
            let mut chains = Chains::new();
            let mut gone = BTreeSet::new();
            for name in names {
                match had.and_then(|t| t.get(&name)) {
                    Some(rules) => {
                        chains.insert(name, rules.lines().map(str::to_owned).collect());
                    }
                    None => {
                        gone.insert(name);
                    }
                }
            }
            out += &format!("*{table}\n");
            write_table(&mut out, &chains, &gone);
            out += "COMMIT\n";
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::Ledger;

    #[test]
    fn undo_restores_changed_chains_and_deletes_new_ones() {
        let mut ledger = Ledger::default();
        ledger.apply("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n-A KUBE-SVC-A -j DNAT --to-destination 1.2.3.4:80\n-A KUBE-SERVICES -d 10.96.0.1/32 -j KUBE-SVC-A\nCOMMIT\n");
        let before = ledger.clone();
        let change = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-B - [0:0]\n:KUBE-SVC-A - [0:0]\n-A KUBE-SVC-B -j DNAT --to-destination 1.2.3.5:80\n-A KUBE-SERVICES -d 10.96.0.2/32 -j KUBE-SVC-B\n-X KUBE-SVC-A\nCOMMIT\n";
        let undo = ledger.undo(change);
        let mut after = before.clone();
        after.apply(change);
        after.apply(&undo);
        assert_eq!(after, before, "undo:\n{undo}");
        assert!(undo.contains("-X KUBE-SVC-B"), "{undo}");
        assert!(ledger.undo("").is_empty());
    }

    #[test]
    fn a_full_input_deletes_chains_it_no_longer_declares() {
        let mut ledger = Ledger::default();
        ledger.apply("*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-OLD - [0:0]\nCOMMIT\n*filter\n:KUBE-FORWARD - [0:0]\nCOMMIT\n");
        let full = "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-B - [0:0]\nCOMMIT\n";
        let out = ledger.with_stale_deleted(full);
        assert_eq!(
            out,
            "*nat\n:KUBE-SERVICES - [0:0]\n:KUBE-SVC-B - [0:0]\n:KUBE-SVC-A - [0:0]\n:KUBE-SEP-OLD - [0:0]\n-X KUBE-SVC-A\n-X KUBE-SEP-OLD\nCOMMIT\n*filter\n:KUBE-FORWARD - [0:0]\n-X KUBE-FORWARD\nCOMMIT\n"
        );
    }

    #[test]
    fn a_save_keeps_only_our_chains() {
        let saved = "# Generated\n*nat\n:PREROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:OTHER - [0:0]\n-A PREROUTING -j KUBE-SERVICES\n-A KUBE-SERVICES -j RETURN\n-A OTHER -j RETURN\nCOMMIT\n";
        let ledger = Ledger::from_save(saved, |c| c.starts_with("KUBE-"));
        let mut expected = Ledger::default();
        expected.apply("*nat\n:KUBE-SERVICES - [0:0]\n-A KUBE-SERVICES -j RETURN\nCOMMIT\n");
        assert_eq!(ledger, expected);
    }
}
