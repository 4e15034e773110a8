//! Test support for Rudder's privileged end-to-end tests.
//!
//! The heart of it is [`netns`]: a throwaway "cluster" built from network namespaces, veth
//! pairs and Linux bridges, so tests can push real packets between nodes and pods on one
//! machine without touching the host's own network. The `rudder-echo` binary in this crate is
//! the server the tests talk to.
//!
//! Everything here needs root (network namespaces, links and routes); it refuses loudly
//! rather than skipping when it is not root.

pub mod e2e;
pub mod netns;

pub use netns::{
    AskError, AskErrorKind, Cluster, EchoConfig, HarnessError, InNetns, Ipv4Cidr, Node, Pod, Process, Proto,
    ServerGuard,
};
