//! Ends connected UDP sockets that socket LB pointed at a backend that has since left.
//!
//! Socket LB connects a UDP socket straight to a backend, so no later map change can move
//! it: it would keep talking to a pod that left the Service (Cilium's known pitfall). After
//! a sync that removed backends, every connected UDP socket of a process in the socket-LB
//! cgroup whose peer is such a backend, and which socket LB connected there (its cookie
//! is in the socket reverse map), is destroyed with sock_diag's `SOCK_DESTROY`, as
//! `ss -K` does: the kernel disconnects it with `ECONNABORTED` pending, so the
//! application's next call fails (a `send` with `EDESTADDRREQ`, a `recv` with
//! `ECONNABORTED`), and connecting again reaches a live backend. Sockets an application connected to a pod IP itself are
//! left alone. Needs `CONFIG_INET_DIAG_DESTROY`.

use std::{
    collections::{BTreeMap, HashSet},
    fs,
    os::fd::AsRawFd,
    path::Path,
};

use aya::maps::{HashMap, MapData};
use rudder_abi::lb::{Backend, Backend6, SockReverse, SockReverse6, SockReverseKey, SockReverseKey6};

use super::{EbpfError, tables::BackendAddr};
use crate::netlink::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkError, Socket};

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
/// `struct inet_diag_sockid` and `inet_diag_msg` sizes.
const SOCKID_LEN: usize = 48;
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

/// A UDP socket as sock_diag reports it: its `inet_diag_sockid`, raw.
#[derive(Clone)]
struct SockId([u8; SOCKID_LEN]);

impl SockId {
    /// Peer address and port as the maps keep them (network order), read as `family`.
    fn peer(&self, family: i32) -> BackendAddr {
        let b = &self.0;
        let word = |i: usize| u32::from_ne_bytes([b[20 + 4 * i], b[21 + 4 * i], b[22 + 4 * i], b[23 + 4 * i]]);
        let port = u16::from_ne_bytes([b[2], b[3]]);
        // An IPv6 socket talking IPv4 has a mapped peer (::ffff:a.b.c.d), which socket LB
        // recorded as the IPv4 backend it is.
        let mapped = word(0) == 0 && word(1) == 0 && word(2) == 0xffffu32.to_be();
        if family == libc::AF_INET6 && mapped {
            BackendAddr::V4(Backend {
                addr: word(3),
                port,
                pad: 0,
            })
        } else if family == libc::AF_INET6 {
            BackendAddr::V6(Backend6 {
                addr: std::array::from_fn(word),
                port,
                pad: 0,
            })
        } else {
            BackendAddr::V4(Backend {
                addr: word(0),
                port,
                pad: 0,
            })
        }
    }
    fn cookie(&self) -> u64 {
        let b = &self.0;
        let lo = u32::from_ne_bytes([b[40], b[41], b[42], b[43]]);
        let hi = u32::from_ne_bytes([b[44], b[45], b[46], b[47]]);
        u64::from(lo) | u64::from(hi) << 32
    }
}

/// One process per network namespace among the processes of `cgroup` and its children.
fn namespaces(cgroup: &Path) -> BTreeMap<(u64, u64), u32> {
    use std::os::unix::fs::MetadataExt;
    let mut out = BTreeMap::new();
    let mut dirs = vec![cgroup.to_owned()];
    while let Some(dir) = dirs.pop() {
        for pid in fs::read_to_string(dir.join("cgroup.procs")).unwrap_or_default().lines() {
            let Ok(pid) = pid.trim().parse::<u32>() else {
                continue;
            };
            // A process can exit between the listing and here.
            if let Ok(m) = fs::metadata(format!("/proc/{pid}/ns/net")) {
                out.entry((m.dev(), m.ino())).or_insert(pid);
            }
        }
        if let Ok(entries) = fs::read_dir(&dir) {
            dirs.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    out
}

/// `struct inet_diag_req_v2` for UDP over `family`, any state, naming `id` (or none: a
/// dump).
fn request(family: i32, id: Option<&SockId>) -> Vec<u8> {
    let mut r = Vec::with_capacity(8 + SOCKID_LEN);
    r.extend_from_slice(&[family as u8, libc::IPPROTO_UDP as u8, 0, 0]);
    r.extend_from_slice(&u32::MAX.to_ne_bytes());
    r.extend_from_slice(&id.map_or([0; SOCKID_LEN], |i| i.0));
    r
}

fn diag_error(request: &'static str) -> impl Fn(NetlinkError) -> EbpfError {
    move |source| EbpfError::SockDiag {
        request,
        hint: "",
        source,
    }
}

/// In the calling thread's namespace: destroys the UDP sockets of `family` that `doomed`
/// picks.
fn destroy_here(family: i32, doomed: &dyn Fn(&SockId) -> bool) -> Result<usize, EbpfError> {
    let socket = Socket::open(NETLINK_SOCK_DIAG).map_err(diag_error("socket"))?;
    let seq = socket
        .send(
            SOCK_DIAG_BY_FAMILY,
            NLM_F_REQUEST | NLM_F_DUMP,
            &request(family, None),
            &[],
        )
        .map_err(diag_error("SOCK_DIAG_BY_FAMILY"))?;
    let mut victims = Vec::new();
    socket
        .receive(seq, |body| {
            let id = body.get(4..4 + SOCKID_LEN).filter(|_| body.len() >= MSG_LEN);
            if let Some(id) = id.and_then(|b| b.try_into().ok()).map(SockId)
                && doomed(&id)
            {
                victims.push(id);
            }
            Ok(())
        })
        .map_err(diag_error("SOCK_DIAG_BY_FAMILY"))?;
    let mut ended = 0;
    for id in &victims {
        let seq = socket
            .send(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, &request(family, Some(id)), &[])
            .map_err(diag_error("SOCK_DESTROY"))?;
        match socket.receive(seq, |_| Ok(())) {
            Ok(()) => ended += 1,
            // Gone meanwhile: nothing to end.
            Err(e) if e.errno() == Some(libc::ENOENT) => {}
            Err(source) => {
                return Err(EbpfError::SockDiag {
                    request: "SOCK_DESTROY",
                    hint: " (the kernel needs CONFIG_INET_DIAG_DESTROY)",
                    source,
                });
            }
        }
    }
    Ok(ended)
}

/// The socket hooks' record of which sockets they connected where, per family.
pub struct SockReverseMaps {
    pub v4: HashMap<MapData, SockReverseKey, SockReverse>,
    pub v6: HashMap<MapData, SockReverseKey6, SockReverse6>,
}

impl SockReverseMaps {
    fn connected_by_us(&self, cookie: u64, peer: BackendAddr) -> bool {
        match peer {
            BackendAddr::V4(backend) => self
                .v4
                .get(
                    &SockReverseKey {
                        cookie,
                        backend,
                        pad: [0; 2],
                    },
                    0,
                )
                .is_ok(),
            BackendAddr::V6(backend) => self
                .v6
                .get(
                    &SockReverseKey6 {
                        cookie,
                        backend,
                        pad: 0,
                    },
                    0,
                )
                .is_ok(),
        }
    }
}

/// Destroys the socket-LB'd connected UDP sockets to `departed` backends of every process
/// in `cgroup`; returns how many it ended.
pub fn end_udp_sockets(
    cgroup: &Path,
    departed: &[BackendAddr],
    sock_reverse: &SockReverseMaps,
) -> Result<usize, EbpfError> {
    if departed.is_empty() {
        return Ok(0);
    }
    let peers: HashSet<BackendAddr> = departed.iter().copied().collect();
    // IPv6 sockets are dumped for IPv4 backends too (mapped peers); IPv4 ones only for them.
    let families: Vec<i32> = if peers.iter().all(|p| matches!(p, BackendAddr::V6(_))) {
        vec![libc::AF_INET6]
    } else {
        vec![libc::AF_INET, libc::AF_INET6]
    };
    let doomed = |family: i32, id: &SockId| {
        let peer = id.peer(family);
        peers.contains(&peer) && sock_reverse.connected_by_us(id.cookie(), peer)
    };
    let mut ended = 0;
    for pid in namespaces(cgroup).into_values() {
        let ns = match fs::File::open(format!("/proc/{pid}/ns/net")) {
            Ok(f) => f,
            Err(_) => continue,
        };
        // setns moves only the calling thread: a scoped thread enters, works, and ends.
        ended += std::thread::scope(|s| {
            s.spawn(|| {
                // SAFETY: a namespace fd we opened; affects only this thread.
                if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                    return Err(EbpfError::EnterNetns {
                        pid,
                        source: std::io::Error::last_os_error(),
                    });
                }
                let mut ended = 0;
                for family in &families {
                    ended += destroy_here(*family, &|id| doomed(*family, id))?;
                }
                Ok(ended)
            })
            .join()
            .unwrap_or_else(|_| Err(EbpfError::SocketThreadPanicked))
        })?;
    }
    Ok(ended)
}
