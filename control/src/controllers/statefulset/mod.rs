//! The StatefulSet controller: pods with stable names, hostnames and claims, created,
//! scaled down and rolled over one ordinal at a time, as kube-controller-manager's.
//!
//! The pure decisions live here and are tested without an API: [`identity`] (what a
//! pod and its claims are called and must look like), [`revision`] (ControllerRevisions,
//! the history a partitioned rollout builds old pods from) and [`plan`] (what one sync
//! creates and deletes, and the status it reports).

pub mod identity;
pub mod plan;
pub mod revision;
mod run;

pub use run::{Error, run};
