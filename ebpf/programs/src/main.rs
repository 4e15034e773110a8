//! Rudder's eBPF programs. Entry points stay thin (parse, look up, act); the logic lives in
//! modules that name what they own.
#![no_std]
#![no_main]

mod counter;
mod lb;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    // The verifier rejects any path that could reach here, so this never runs.
    loop {}
}
