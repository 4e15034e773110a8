//! UDP conntrack cleanup: the fix for kube-proxy's most reported problem.
//!
//! UDP has no connection end, so a conntrack entry lives as long as packets keep flowing,
//! and packets of that flow keep following the entry's NAT, to an endpoint that is gone or
//! (for a Service that had none) to no endpoint at all. After every sync we read the UDP
//! entries and delete those whose original destination is one of our UDP frontends but
//! whose reply source is not an endpoint that frontend may use now. Like upstream's
//! reconciler (1.32+), this looks at the kernel's entries rather than at what changed, so
//! it also cleans entries a previous process left behind.
//!
//! - [`stale`]: which entries to delete (pure).
//! - [`netlink`]: a small ctnetlink client (dump and delete) on a raw netlink socket.

pub mod netlink;
pub mod stale;

pub use netlink::{Conntrack, ConntrackError};
pub use stale::{Entry, Tuple, stale_entries};

use crate::model::DesiredState;

/// Deletes the stale UDP entries for `state` in this network namespace. Returns how many
/// were deleted.
pub fn cleanup_stale_udp(state: &DesiredState) -> Result<usize, ConntrackError> {
    if !stale::has_udp_frontends(state) {
        return Ok(0);
    }
    let ct = Conntrack::open()?;
    let entries = ct.udp_entries()?;
    let mut deleted = 0;
    for entry in stale_entries(&entries, state) {
        if ct.delete(&entry.orig)? {
            deleted += 1;
        }
    }
    Ok(deleted)
}
