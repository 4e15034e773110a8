//! The service load balancer: socket-level (`sock`) for connections this node's processes
//! open, per-packet (`tc`) for everything else. Both pick backends the same way (`select`)
//! from the maps user space writes (`maps`).

pub mod maps;
mod reject;
pub mod select;
mod sock;
mod tc;
