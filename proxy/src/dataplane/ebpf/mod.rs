//! The ebpf mode (the "Proxy II" issue), built piece by piece. So far: the Maglev table
//! the per-packet programs will read.

pub mod maglev;
