//! A packet counter: the smallest real program that proves the build, load and test-run
//! pipeline end to end. It also gives benchmarks their floor (`rudder_xdp_pass`).

use aya_ebpf::{
    bindings::xdp_action,
    macros::{map, xdp},
    maps::PerCpuArray,
    programs::XdpContext,
};
use rudder_abi::{COUNTERS_SLOT, PacketCounters};

#[map(name = "RUDDER_COUNTERS")]
static RUDDER_COUNTERS: PerCpuArray<PacketCounters> = PerCpuArray::with_max_entries(1, 0);

#[xdp]
pub fn rudder_xdp_count(ctx: XdpContext) -> u32 {
    let len = (ctx.data_end() - ctx.data()) as u64;
    if let Some(slot) = RUDDER_COUNTERS.get_ptr_mut(COUNTERS_SLOT) {
        // SAFETY: per-CPU slot, so nothing else writes it while this program runs.
        unsafe {
            (*slot).packets += 1;
            (*slot).bytes += len;
        }
    }
    // Counting must never cost a packet: pass whatever happens.
    xdp_action::XDP_PASS
}

#[xdp]
pub fn rudder_xdp_pass(_ctx: XdpContext) -> u32 {
    xdp_action::XDP_PASS
}
