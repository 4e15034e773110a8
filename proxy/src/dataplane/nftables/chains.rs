//! The table's fixed skeleton, as data: base chains with the reason for each hook and
//! priority, and the few regular chains every sync shares.

/// Packets needing SNAT carry this bit from the DNAT decision to `nat-postrouting`
/// (kube-proxy's value, so operators' existing tooling reads it the same way).
pub const MASQ_MARK: u32 = 0x4000;

pub const FIREWALL_CHECK: &str = "firewall-check";
pub const SERVICES: &str = "services";
pub const CLUSTER_IPS_CHECK: &str = "cluster-ips-check";
pub const MASQUERADING: &str = "masquerading";
pub const REJECT_CHAIN: &str = "reject-chain";

pub const SERVICE_IPS: &str = "service-ips";
pub const SERVICE_NODEPORTS: &str = "service-nodeports";
pub const FILTER_IPS: &str = "filter-ips";
pub const CLUSTER_IPS: &str = "cluster-ips";
pub const NODEPORT_IPS: &str = "nodeport-ips";
pub const SERVICE_CIDRS: &str = "service-cidrs";
pub const HAIRPIN: &str = "hairpin-endpoints";

/// Where in the packet's path a base chain runs; the tracer walks them in this order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stage {
    /// Before DNAT: the destination is still the frontend.
    PreDnat,
    Dnat,
    /// After DNAT, only for packets no frontend translated.
    PostDnat,
    Snat,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BaseChain {
    pub name: &'static str,
    pub kind: &'static str,
    pub hook: &'static str,
    /// Numeric: older nft accepts the names (`dstnat` = -100, `srcnat` = 100, `filter` = 0)
    /// only on some hooks, and kube-proxy's offsets from them are what we mean.
    pub priority: &'static str,
    pub stage: Stage,
    /// `None`: the chain sees both; `Some(true)`: only locally originated packets.
    pub local: Option<bool>,
    pub jump: &'static str,
    pub why: &'static str,
}

pub const BASE_CHAINS: &[BaseChain] = &[
    BaseChain {
        name: "filter-prerouting-pre-dnat",
        kind: "filter",
        hook: "prerouting",
        priority: "-110",
        stage: Stage::PreDnat,
        local: Some(false),
        jump: FIREWALL_CHECK,
        why: "REJECT/DROP and source ranges must see the frontend address, so before DNAT",
    },
    BaseChain {
        name: "filter-output-pre-dnat",
        kind: "filter",
        hook: "output",
        priority: "-110",
        stage: Stage::PreDnat,
        local: Some(true),
        jump: FIREWALL_CHECK,
        why: "the same for connections the host itself opens",
    },
    BaseChain {
        name: "nat-prerouting",
        kind: "nat",
        hook: "prerouting",
        priority: "-100",
        stage: Stage::Dnat,
        local: Some(false),
        jump: SERVICES,
        why: "the standard DNAT slot, so routing sees the backend address",
    },
    BaseChain {
        name: "nat-output",
        kind: "nat",
        hook: "output",
        priority: "-100",
        stage: Stage::Dnat,
        local: Some(true),
        jump: SERVICES,
        why: "host-originated traffic never passes prerouting",
    },
    BaseChain {
        name: "filter-forward",
        kind: "filter",
        hook: "forward",
        priority: "0",
        stage: Stage::PostDnat,
        local: Some(false),
        jump: CLUSTER_IPS_CHECK,
        why: "after DNAT a translated packet no longer targets a service IP, so whatever \
              still does matched no frontend and must not be routed out of the node",
    },
    BaseChain {
        name: "filter-output-post-dnat",
        kind: "filter",
        hook: "output",
        priority: "-90",
        stage: Stage::PostDnat,
        local: Some(true),
        jump: CLUSTER_IPS_CHECK,
        why: "the same for host-originated packets, which skip the forward hook",
    },
    BaseChain {
        name: "nat-postrouting",
        kind: "nat",
        hook: "postrouting",
        priority: "100",
        stage: Stage::Snat,
        local: None,
        jump: MASQUERADING,
        why: "the standard SNAT slot, after the route to the backend is known",
    },
];
