//! The iptables mode: the `DesiredState` in kube-proxy's iptables chain structure, written
//! with `iptables-restore --noflush`.
//!
//! # Layout (kube-proxy's structure; the names differ, see [`render::port_key`])
//!
//! nat: `KUBE-SERVICES` (from PREROUTING and OUTPUT) matches each ClusterIP, externalIP and
//! load balancer IP frontend and jumps to the Service port's chain; its last rule jumps to
//! `KUBE-NODEPORTS`, which matches `node address . port` for NodePorts. Per Service port
//! (key `<k>`): `KUBE-SVC-<k>` / `KUBE-SVC-<k>-LOCAL` pick an endpoint of the cluster /
//! local set (kube-proxy's `KUBE-SVC-` / `KUBE-SVL-`;
//! `-m statistic --mode random --probability 1/(n-i)`, after `-m recent` checks for
//! ClientIP affinity), first marking for masquerade ClusterIP traffic the model says to
//! masquerade; `KUBE-SVC-<k>-EXT` serves external frontends (masquerade, the
//! externalTrafficPolicy=Local short circuit); `KUBE-SVC-<k>-FW` sends load balancer
//! traffic from `loadBalancerSourceRanges` on to `-EXT` and leaves the rest untranslated
//! for the filter DROP; one `KUBE-SVC-<k>-<8 hex>` per endpoint (kube-proxy's `KUBE-SEP-`)
//! masquerades hairpin traffic and DNATs. `KUBE-MARK-MASQ` sets mark 0x4000 and `KUBE-POSTROUTING`
//! masquerades marked packets. filter: `KUBE-SERVICES` and `KUBE-EXTERNAL-SERVICES` REJECT
//! frontends without endpoints and DROP those whose Local policy allows none here (and
//! load balancer traffic from outside the source ranges, which nat left untranslated), then
//! DROP unallocated addresses in the Service CIDRs; `KUBE-FORWARD` accepts marked and
//! established traffic.
//!
//! # Syncs
//!
//! [`render_full`] declares (so flushes) and writes every chain; [`render_partial`], as
//! kube-proxy does since 1.28, rewrites the top-level chains in full but only the chains of
//! Service ports the `Diff` names, and deletes chains that went away. `iptables-restore`
//! commits each table as one transaction; the two families are two restores, made all or
//! nothing by [`ledger`] (an IPv6 failure puts the IPv4 chains back).

pub mod apply;
pub mod ledger;
pub mod render;

#[cfg(test)]
mod tests;

pub use apply::{Flavor, Iptables};
pub use render::{Restore, render_full, render_partial};
