//! The service load balancer: socket-level (`sock`) for connections this node's processes
//! open, per-packet (`tc`) for everything else, with `xdp` in front of tc on external
//! interfaces for what it can finish alone; `tc6` and `xdp6` are their IPv6 paths. Every path picks backends the same way
//! (`select`, `flow`) from the maps user space writes (`maps`).

mod flow;
mod header;
mod log;
pub mod maps;
mod reject;
pub mod select;
mod sock;
mod tc;
mod tc6;
mod xdp;
mod xdp6;
