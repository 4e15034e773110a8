//! The nftables backend: the [`crate::model::DesiredState`] as one `rudder` table per
//! family, rendered as an `nft -f` script. Pure: no IO; the caller pipes the text to
//! `nft -f -`.
//!
//! # Layout
//!
//! Modelled on kube-proxy's nftables mode, with fewer chains, because at 10k Services
//! the kernel's cost grows with the number of chains (kube-proxy's layout has one per
//! endpoint: about 110k chains at 10k Services × 10 endpoints).
//!
//! - Base chains ([`chains::BASE_CHAINS`], each with the reason for its priority):
//!   filter before DNAT (refusals and source ranges see the frontend address), nat at
//!   `dstnat` (the dispatch), filter after DNAT (a packet still aimed at a service IP
//!   matched nothing: reject on an allocated ClusterIP, drop elsewhere in the service
//!   CIDRs), and nat at `srcnat` (masquerade).
//! - Dispatch by verdict maps: `service-ips` (`addr . proto . port`) for ClusterIPs,
//!   externalIPs and load balancer IPs; `service-nodeports` (`proto . port`) behind
//!   `ip daddr @nodeport-ips` for NodePorts (the set holds exactly the node addresses the
//!   model's NodePort frontends carry; `--nodeport-addresses` is node-wide, so one port map
//!   is exact); `filter-ips` for REJECT, DROP and the source-range chains.
//! - Per Service port and family: `svc-<hash>` (ClusterIP traffic) and `ext-<hash>`
//!   (NodePort, externalIP, LB traffic) mark for masquerade as the frontend's rule says,
//!   then DNAT: `meta l4proto tcp dnat ip addr . port to ip daddr . meta l4proto . th
//!   dport . numgen random mod N map @endpoints-tcp-<shard>`. The endpoint lists are
//!   elements of shared maps ([`ruleset::ENDPOINT_SHARDS`] explains the sharding), so
//!   replacing an endpoint changes elements only. No per-endpoint chains: **1 chain** for a ClusterIP Service, **2** with external
//!   frontends, **+1** (`fw-<hash>`, filter side) with `loadBalancerSourceRanges`.
//!   `<hash>` is FNV-1a of the `ServicePortName`: stable across restarts.
//! - Hairpin needs no per-endpoint rule: `hairpin-endpoints` holds `ep . ep` for every
//!   backend, and postrouting masquerades `ct status dnat ip saddr . ip daddr @hairpin-…`,
//!   i.e. a DNATed packet whose source is its own backend.
//! - Session affinity is the one case with per-endpoint chains: a dynamic map cannot both
//!   remember a random choice and apply it in one rule, and stale entries would outlive
//!   removed endpoints. So, for affinity Services only, `sel-<hash>-{cluster,local}` checks
//!   `ip saddr @aff-<hash>-<ep>` per endpoint, then picks with `numgen … vmap { goto ep-… }`;
//!   each `ep-<hash>-<ep>` updates its timeout set and DNATs (kube-proxy's scheme). That is
//!   1 + E chains and E sets more per set used.
//! - eTP=Local short circuit: pod sources (and the host, masqueraded) take the cluster-wide
//!   set before the local-only DNAT; without local endpoints the chain then drops, so only
//!   traffic from outside the node is dropped.
//!
//! # Syncs
//!
//! [`render_full`] replaces the tables atomically (`add`/`delete`/`add table`).
//! [`render_incremental`] rewrites only the chains and map elements of the ports the
//! [`crate::model::Diff`] names, plus changed elements of the shared sets. When that is
//! elements only, [`apply`] sends them as one netlink batch ([`netlink`]) instead of
//! running `nft`.
//!
//! [`ruleset::Ruleset`] is the intermediate form both the renderer and the tracer
//! ([`trace::trace`]) read. [`readback`] reads what the kernel holds (`nft -j list`) into
//! the `nftables` crate's typed schema, for cleanup, `inspect` and tests.

pub mod apply;
pub mod chains;
pub mod netlink;
pub mod readback;
pub mod render;
pub mod ruleset;
pub mod trace;

#[cfg(test)]
mod tests;

pub use apply::Nftables;
pub use render::{render_full, render_incremental};
pub use ruleset::Ruleset;
pub use trace::{Packet, Verdict, trace};
