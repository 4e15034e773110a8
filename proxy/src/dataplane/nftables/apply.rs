//! The nftables mode's kernel side: scripts go to `nft -f -`, which commits each one as a
//! single netlink transaction, so a refused script leaves the previous ruleset whole.

use super::{render::TABLE, render_full, render_incremental};
use crate::{
    dataplane::{
        Mode,
        backend::{Backend, BackendError, SyncKind},
        command::run_with_stdin,
    },
    model::DesiredState,
};

#[derive(Debug, Default)]
pub struct Nftables;

impl Backend for Nftables {
    fn mode(&self) -> Mode {
        Mode::Nftables
    }

    fn sync(&mut self, new: &DesiredState, kind: SyncKind<'_>) -> Result<(), BackendError> {
        let script = match kind {
            SyncKind::Full => render_full(new),
            SyncKind::Partial { old, diff } => render_incremental(old, new, diff),
        };
        if script.trim().is_empty() {
            return Ok(());
        }
        run_with_stdin("nft", &["-f", "-"], &script)?;
        Ok(())
    }
}

/// Removes both of our tables. `add` first makes the `delete` valid when a table is absent,
/// so this succeeds on a node that never ran the nftables mode.
pub fn cleanup() -> Result<(), BackendError> {
    let script = format!(
        "add table ip {TABLE}\ndelete table ip {TABLE}\nadd table ip6 {TABLE}\ndelete table ip6 {TABLE}\n"
    );
    run_with_stdin("nft", &["-f", "-"], &script)?;
    Ok(())
}
