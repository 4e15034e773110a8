//! A kube-like cluster made of network namespaces, for tests that send real packets.
//!
//! # Topology
//!
//! ```text
//!  underlay netns <prefix>-net
//!  +----------------------------------------------------+
//!  | br0: the L2 segment between nodes, no address      |
//!  |   ports: n1, n2, ... (one veth per node)           |
//!  +----|-------------------------|---------------------+
//!       |                         |
//!  node netns <prefix>-n1          node netns <prefix>-n2             (node k)
//!  +---------------------------+   +---------------------------+
//!  | eth0 10.250.0.11/24       |   | eth0 10.250.0.12/24       |     10.250.0.(10+k)
//!  | cbr0 10.244.1.1/24        |   | cbr0 10.244.2.1/24        |     10.244.k.1
//!  | 10.244.2.0/24             |   | 10.244.1.0/24             |     every other node's pods
//!  |   via 10.250.0.12         |   |   via 10.250.0.11         |       via that node
//!  | ip_forward=1              |   | ip_forward=1              |
//!  | cbr0 ports: veth0, veth1  |   | cbr0 ports: veth0         |     one veth per pod
//!  +----|----------|-----------+   +----|----------------------+
//!       |          |                    |
//!  pod netns <prefix>-<pod>: eth0 10.244.k.(10+j)/24, default via 10.244.k.1    (pod j of node k)
//! ```
//!
//! # Address plan
//!
//! | what               | addresses                                                          |
//! |--------------------|--------------------------------------------------------------------|
//! | underlay           | [`UNDERLAY_CIDR`] 10.250.0.0/24; node k is 10.250.0.(10+k)         |
//! | pods of node k     | 10.244.k.0/24; gateway 10.244.k.1 (cbr0); pod j is 10.244.k.(10+j) |
//! | service ClusterIPs | [`SERVICE_CIDR`] 10.96.0.0/16, reserved; the harness never uses it |
//!
//! Nodes are numbered from 1 (`n1`, `n2`, ...) so the number matches the addresses; pods are
//! numbered per node in creation order and numbers are never reused, so a deleted pod's address
//! does not come back to confuse conntrack-sensitive tests.
//!
//! All addresses exist only inside namespaces the harness creates. Nothing is created in the
//! host's root namespace, not even transiently: veth pairs are created directly in their
//! target namespaces. Pods reach pods on other nodes by plain routing, without NAT.
//!
//! # Names and cleanup
//!
//! Every namespace is named `rdr-<pid>-<counter>-<short>` (e.g. `rdr-4242-3-n1`,
//! `rdr-4242-3-p1`, `rdr-4242-3-net`), so clusters in parallel tests and parallel test
//! processes never collide. Dropping a [`Cluster`] (also while unwinding from a panic) kills
//! every process inside its namespaces and deletes them; dropping a [`Pod`] does the same for
//! the pod alone. Namespaces left by a process that no longer exists (a crashed or killed test
//! run) are reaped by the first [`Cluster::new`] of each process.
//!
//! # Running things inside
//!
//! [`InNetns`] (implemented by [`Node`] and [`Pod`], with free-function twins taking a netns
//! name) runs commands under `ip netns exec`, spawns processes that are killed when their
//! [`Process`] guard drops, starts the `rudder-echo` server ([`InNetns::serve`]) and asks it
//! for its name over TCP or UDP from inside the namespace ([`InNetns::ask_tcp`]). Asking is done
//! in-process on a thread that `setns()`es into the namespace, which is fast enough for
//! hundreds of requests.
//!
//! Note that `ip netns exec` gives the process a fresh mount namespace with its own `/sys`,
//! so `/sys/fs/bpf` and `/sys/fs/cgroup` are not mounted there unless the program mounts them.

mod cleanup;
mod client;
mod cluster;
mod cmd;
mod error;
mod names;
mod pod;
mod server;

use std::{
    fmt,
    net::{IpAddr, Ipv4Addr},
    process::{Command, Output},
    time::Duration,
};

pub use client::{AskError, AskErrorKind, Proto, ask, ask_tcp, ask_udp, with_netns};
pub use cluster::{Cluster, Node};
pub use cmd::{Process, exec_in, netns_exec, run_in, spawn_in};
pub use error::HarnessError;
pub use names::netns_path;
pub use pod::Pod;
pub use server::{ECHO_BIN_ENV, EchoConfig, ServerGuard, echo_binary, serve_in};

/// The network between nodes; node k is 10.250.0.(10+k).
pub const UNDERLAY_CIDR: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(10, 250, 0, 0), 24);
/// Reserved for service ClusterIPs; the harness never assigns addresses from it.
pub const SERVICE_CIDR: Ipv4Cidr = Ipv4Cidr::new(Ipv4Addr::new(10, 96, 0, 0), 16);

/// An IPv4 network such as `10.244.1.0/24`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Ipv4Cidr {
    network: Ipv4Addr,
    prefix_len: u8,
}

impl Ipv4Cidr {
    /// Host bits of `addr` are cleared, so the value always names the network.
    pub const fn new(addr: Ipv4Addr, prefix_len: u8) -> Self {
        let prefix_len = if prefix_len > 32 { 32 } else { prefix_len };
        let bits = addr.to_bits() & Self::mask(prefix_len);
        Self {
            network: Ipv4Addr::from_bits(bits),
            prefix_len,
        }
    }

    pub const fn network(&self) -> Ipv4Addr {
        self.network
    }

    pub const fn prefix_len(&self) -> u8 {
        self.prefix_len
    }

    pub const fn contains(&self, ip: Ipv4Addr) -> bool {
        ip.to_bits() & Self::mask(self.prefix_len) == self.network.to_bits()
    }

    const fn mask(prefix_len: u8) -> u32 {
        // checked_shl because shifting a u32 by 32 is an overflow, and /0 must mean "no bits".
        match u32::MAX.checked_shl(32 - prefix_len as u32) {
            Some(mask) => mask,
            None => 0,
        }
    }
}

impl fmt::Display for Ipv4Cidr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.network, self.prefix_len)
    }
}

/// Something living in a network namespace the harness created: a [`Node`] or a [`Pod`].
///
/// Every method has a free-function twin taking a netns name (e.g. [`exec_in`]), for
/// namespaces that are neither, such as [`Cluster::underlay_netns`].
pub trait InNetns {
    /// The namespace's name, as `ip netns list` shows it.
    fn netns(&self) -> &str;

    /// Runs `cmd` to completion under `ip netns exec`; a non-zero exit is not an error here.
    fn exec(&self, cmd: &Command) -> Result<Output, HarnessError> {
        exec_in(self.netns(), cmd)
    }

    /// Runs `cmd` under `ip netns exec` and returns its stdout, failing on a non-zero exit.
    fn run(&self, cmd: &Command) -> Result<String, HarnessError> {
        run_in(self.netns(), cmd)
    }

    /// Starts `cmd` under `ip netns exec`; the process is killed when the guard drops.
    fn spawn(&self, cmd: &Command) -> Result<Process, HarnessError> {
        spawn_in(self.netns(), cmd)
    }

    /// Runs `f` on a thread that has entered this namespace and returns its result.
    fn with_netns<T: Send>(&self, f: impl FnOnce() -> T + Send) -> Result<T, HarnessError> {
        with_netns(self.netns(), f)
    }

    /// Connects to `ip:port` from this namespace and returns the name the echo server replies.
    fn ask_tcp(&self, ip: impl Into<IpAddr>, port: u16, timeout: Duration) -> Result<String, AskError> {
        ask_tcp(self.netns(), ip, port, timeout)
    }

    /// Sends one datagram to `ip:port` from this namespace and returns the name in the reply.
    fn ask_udp(&self, ip: impl Into<IpAddr>, port: u16, timeout: Duration) -> Result<String, AskError> {
        ask_udp(self.netns(), ip, port, timeout)
    }

    /// Starts `rudder-echo` answering `name` on TCP and UDP `port`, and waits until it is ready.
    fn serve(&self, name: &str, port: u16) -> Result<ServerGuard, HarnessError> {
        serve_in(self.netns(), &EchoConfig::new(name, port))
    }

    /// Like [`InNetns::serve`], with separate UDP and optional HTTP ports.
    fn serve_with(&self, config: &EchoConfig) -> Result<ServerGuard, HarnessError> {
        serve_in(self.netns(), config)
    }
}
