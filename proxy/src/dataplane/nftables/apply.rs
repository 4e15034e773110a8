//! The nftables mode's kernel side: scripts go to `nft -f -`, which commits each one as a
//! single netlink transaction, so a refused script leaves the previous ruleset whole.
//! Syncs that change only set and map elements skip `nft` and send the same transaction
//! over netlink themselves ([`super::netlink`]).

use super::{
    netlink, readback,
    render::{Incremental, TABLE, incremental},
    render_full,
};
use crate::{
    dataplane::{
        Mode,
        command::run_with_stdin,
        seam::{Dataplane, DataplaneError, SyncKind},
    },
    model::DesiredState,
};

#[derive(Debug, Default)]
pub struct Nftables;

impl Dataplane for Nftables {
    fn mode(&self) -> Mode {
        Mode::Nftables
    }

    fn sync(&mut self, new: &DesiredState, kind: SyncKind<'_>) -> Result<(), DataplaneError> {
        match kind {
            SyncKind::Full => apply_script(&render_full(new)),
            SyncKind::Partial { old, diff } => apply_incremental(&incremental(old, new, diff)),
        }
    }
}

/// Applies an incremental sync: over netlink when it only changes elements, else by `nft`.
pub fn apply_incremental(delta: &Incremental) -> Result<(), DataplaneError> {
    match delta.element_only() {
        Some(ops) => netlink::apply(&ops).map_err(|source| DataplaneError::Netlink {
            what: "nftables element update",
            source,
        }),
        None => apply_script(&delta.script()),
    }
}

pub fn apply_script(script: &str) -> Result<(), DataplaneError> {
    if script.trim().is_empty() {
        return Ok(());
    }
    run_with_stdin("nft", &["-f", "-"], script)?;
    Ok(())
}

/// Removes our tables (both families), found in the kernel's typed table listing
/// ([`readback::tables`]); succeeds, running nothing more, on a node that never ran the
/// nftables mode. All of them go in one `nft -f` transaction.
pub fn cleanup() -> Result<(), DataplaneError> {
    let script: String = readback::tables()
        .map_err(|source| DataplaneError::Readback {
            what: "listing the nftables tables for cleanup",
            source,
        })?
        .iter()
        .filter(|t| t.name == TABLE)
        .map(|t| format!("delete table {} {}\n", readback::family_name(t.family), t.name))
        .collect();
    apply_script(&script)
}
