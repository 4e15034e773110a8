//! ResourceQuota accounting shared by the quota controller and the ResourceQuota admission
//! plugin: exact quantities (`quantity`) and what an object uses (`usage`).

pub mod quantity;
pub mod usage;
