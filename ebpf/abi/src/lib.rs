//! The ABI between Rudder's eBPF programs and user space.
//!
//! Every type that crosses a BPF map lives here, once, so both sides agree on layout by
//! construction. Rules (from aya's own shared crates): `#[repr(C)]`, explicit padding, no
//! `bool` (its size is not guaranteed across the boundary), sizes asserted at compile time.
#![no_std]

/// Program and map names, as the loader looks them up in the object file.
pub mod names {
    /// XDP program that counts every packet and byte it sees, then passes it on.
    pub const XDP_COUNTER: &str = "rudder_xdp_count";
    /// XDP program that only returns `XDP_PASS`: the floor that benchmarks divide by.
    pub const XDP_PASS: &str = "rudder_xdp_pass";
    /// Per-CPU array of [`super::PacketCounters`] written by [`XDP_COUNTER`].
    pub const COUNTERS_MAP: &str = "RUDDER_COUNTERS";
}

/// Index of the one slot in the counters map.
pub const COUNTERS_SLOT: u32 = 0;

/// Packets and bytes seen by a program. Kept per CPU so the hot path takes no lock; user
/// space sums the CPUs.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PacketCounters {
    pub packets: u64,
    pub bytes: u64,
}

const _: () = assert!(core::mem::size_of::<PacketCounters>() == 16);

#[cfg(feature = "user")]
// SAFETY: `PacketCounters` is `repr(C)`, has no padding and every bit pattern is valid.
unsafe impl aya::Pod for PacketCounters {}
