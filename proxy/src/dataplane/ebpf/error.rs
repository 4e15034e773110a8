//! The ebpf mode's errors. Each variant says what failed and on which object (path, map,
//! program, device); the cause is its `source`, never repeated in the message, so a chain
//! printer (`{:#}` of anyhow, [`chain`]) shows each fact once.

use std::{io, path::PathBuf};

use super::reconcile::ReconcileError;

#[derive(Debug, thiserror::Error)]
pub enum EbpfError {
    /// A file-system step on a path the mode owns or reads (pins, sysctls, cgroups).
    #[error("{action} {}", path.display())]
    Fs {
        action: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("mount {fstype} at {} ({needed_for})", path.display())]
    Mount {
        fstype: &'static str,
        path: PathBuf,
        /// Why the mode needs this file system, and what the kernel must offer.
        needed_for: &'static str,
        #[source]
        source: io::Error,
    },
    #[error("--cgroup-path {}: no such cgroup", path.display())]
    NoCgroup { path: PathBuf },
    #[error("list interface addresses")]
    InterfaceAddresses {
        #[source]
        source: io::Error,
    },
    #[error("{path}: expected two ports, read {text:?}")]
    PortRangeUnreadable { path: &'static str, text: String },
    #[error(
        "{path} is {low}-{high}, which leaves fewer than {min} unprivileged ports outside it; the ebpf mode \
         translates the node's own connections to such ports (narrow the range, e.g. sysctl \
         net.ipv4.ip_local_port_range=\"32768 60999\")"
    )]
    PortRangeTooWide {
        path: &'static str,
        low: u16,
        high: u16,
        min: u32,
    },
    #[error("parse the embedded eBPF object")]
    ParseObject {
        #[source]
        source: Box<aya_obj::ParseError>,
    },
    #[error("the kernel refused the eBPF object (the ebpf mode needs BPF with BTF, run as root)")]
    LoadObject {
        #[source]
        source: Box<aya::EbpfError>,
    },
    #[error("map `{name}` missing from the object")]
    MissingMap { name: &'static str },
    #[error("read the programs' log records (--bpf-log-level)")]
    Logs {
        #[source]
        source: aya_log::Error,
    },
    #[error("start the thread that forwards the programs' log records")]
    LogThread {
        #[source]
        source: io::Error,
    },
    #[error("program `{name}` missing from the object")]
    MissingProgram { name: &'static str },
    #[error("program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    /// Attaching a program to a device or cgroup; `hint` says what the hook needs.
    #[error("attach `{program}` to {target}{hint}")]
    Attach {
        program: &'static str,
        target: String,
        hint: &'static str,
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Turning an attachment into a link that can be pinned, or reopening a pinned one.
    #[error("link of `{program}` on {target}")]
    Link {
        program: &'static str,
        target: String,
        #[source]
        source: aya::programs::links::LinkError,
    },
    #[error("pin {}", path.display())]
    Pin {
        path: PathBuf,
        #[source]
        source: aya::pin::PinError,
    },
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
    #[error("sock_diag {request}{hint}")]
    SockDiag {
        request: &'static str,
        hint: &'static str,
        #[source]
        source: crate::netlink::NetlinkError,
    },
    #[error("enter the network namespace of pid {pid}")]
    EnterNetns {
        pid: u32,
        #[source]
        source: io::Error,
    },
    #[error("the thread ending UDP sockets panicked")]
    SocketThreadPanicked,
    #[error(transparent)]
    Reconcile(#[from] ReconcileError<aya::maps::MapError>),
}

impl EbpfError {
    pub(super) fn fs(action: &'static str, path: impl Into<PathBuf>) -> impl FnOnce(io::Error) -> Self {
        let path = path.into();
        move |source| Self::Fs { action, path, source }
    }
}

/// `error` and its causes, outermost first, joined by ": " (what a log line shows).
pub fn chain(error: &(dyn std::error::Error + 'static)) -> String {
    let mut out = error.to_string();
    let mut next = error.source();
    while let Some(e) = next {
        out.push_str(": ");
        out.push_str(&e.to_string());
        next = e.source();
    }
    out
}
