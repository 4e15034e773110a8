//! The eBPF dataplane: the embedded object and the code that loads it into the kernel.

pub mod counter;
pub mod object;
