//! The ipvs mode: one IPVS virtual service per frontend, its endpoints as real servers,
//! frontend addresses bound to a dummy `kube-ipvs0` so the node accepts them, as
//! kube-proxy's ipvs proxier does.
//!
//! - [`preflight`]: the kernel check. This kernel has no IP_VS, so the mode refuses to start
//!   with the cause and the alternative.
//! - [`ops`]: the desired IPVS table from a `DesiredState`, and the ordered operations that
//!   turn the kernel's table into it (pure).
//! - [`seam`]: where operations meet the kernel (`IpvsHandle`), a fake for tests, and
//!   [`sync`], which plans against what the kernel reports and applies in order.
//! - [`helpers`]: the ipsets and iptables rules for what IPVS cannot do (masquerade,
//!   refusals, source ranges, the eTP=Local short circuit), rendered as data (pure);
//!   [`apply`] writes them and sets the sysctls IPVS needs.
//! - [`netlink`]: the real handle (generic netlink, operations batched per step of a plan),
//!   and [`dummy`]: `kube-ipvs0` and its addresses over rtnetlink.

pub mod apply;
pub mod dummy;
pub mod helpers;
pub mod netlink;
pub mod ops;
pub mod preflight;
pub mod seam;

pub use ops::{Destination, IpvsState, Op, Scheduler, ServiceKey, Stage, VirtualService, desired_table, plan, stages};
pub use preflight::{IpvsError, kernel_has_ip_vs, load_modules, preflight};
pub use seam::{FakeIpvs, IpvsHandle, SyncTimings, sync};
