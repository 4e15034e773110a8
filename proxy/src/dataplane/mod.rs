//! Backends that turn the [`crate::model::DesiredState`] into kernel objects.

pub mod nftables;
