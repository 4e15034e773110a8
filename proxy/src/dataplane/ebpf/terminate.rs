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
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
    path::Path,
};

use aya::maps::{HashMap, MapData};
use rudder_abi::lb::{Backend, SockReverse, SockReverseKey};

use super::EbpfError;

const NETLINK_SOCK_DIAG: i32 = 4;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const SOCK_DESTROY: u16 = 21;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLMSG_HDRLEN: usize = 16;
/// `struct inet_diag_sockid`, `inet_diag_req_v2` and `inet_diag_msg` sizes.
const SOCKID_LEN: usize = 48;
const REQ_LEN: usize = 8 + SOCKID_LEN;
const MSG_LEN: usize = 4 + SOCKID_LEN + 20;

fn setup(what: impl Into<String>) -> EbpfError {
    EbpfError::Setup(what.into())
}

/// A UDP socket as sock_diag reports it: its `inet_diag_sockid`, raw.
#[derive(Clone)]
struct SockId([u8; SOCKID_LEN]);

impl SockId {
    /// Peer address and port, in network order as the maps keep them.
    fn peer(&self) -> (u32, u16) {
        let b = &self.0;
        (
            u32::from_ne_bytes([b[20], b[21], b[22], b[23]]),
            u16::from_ne_bytes([b[2], b[3]]),
        )
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
        for pid in fs::read_to_string(dir.join("cgroup.procs"))
            .unwrap_or_default()
            .lines()
        {
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

fn request(kind: u16, flags: u16, id: Option<&SockId>) -> Vec<u8> {
    let mut m = Vec::with_capacity(NLMSG_HDRLEN + REQ_LEN);
    m.extend_from_slice(&((NLMSG_HDRLEN + REQ_LEN) as u32).to_ne_bytes());
    m.extend_from_slice(&kind.to_ne_bytes());
    m.extend_from_slice(&flags.to_ne_bytes());
    m.extend_from_slice(&1u32.to_ne_bytes()); // seq
    m.extend_from_slice(&0u32.to_ne_bytes()); // pid: the kernel
    m.extend_from_slice(&[libc::AF_INET as u8, libc::IPPROTO_UDP as u8, 0, 0]);
    m.extend_from_slice(&u32::MAX.to_ne_bytes()); // every state
    m.extend_from_slice(&id.map_or([0; SOCKID_LEN], |i| i.0));
    m
}

fn sock_diag() -> Result<OwnedFd, EbpfError> {
    // SAFETY: plain socket(2); the fd is owned from here on.
    let fd = unsafe {
        libc::socket(
            libc::AF_NETLINK,
            libc::SOCK_RAW | libc::SOCK_CLOEXEC,
            NETLINK_SOCK_DIAG,
        )
    };
    if fd < 0 {
        return Err(setup(format!(
            "sock_diag socket: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

fn send(fd: &OwnedFd, msg: &[u8]) -> Result<(), EbpfError> {
    // SAFETY: a valid buffer of msg.len() bytes.
    if unsafe { libc::send(fd.as_raw_fd(), msg.as_ptr().cast(), msg.len(), 0) } < 0 {
        return Err(setup(format!(
            "sock_diag send: {}",
            std::io::Error::last_os_error()
        )));
    }
    Ok(())
}

/// Reads replies until the dump ends (or, for an ack, the one error message); calls `each`
/// with every socket reported. Returns the ack's error code (0: none).
fn receive(fd: &OwnedFd, mut each: impl FnMut(SockId)) -> Result<i32, EbpfError> {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        // SAFETY: a valid buffer of buf.len() bytes.
        let n = unsafe { libc::recv(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
        if n < 0 {
            return Err(setup(format!(
                "sock_diag recv: {}",
                std::io::Error::last_os_error()
            )));
        }
        let mut at = 0usize;
        let n = n as usize;
        while at + NLMSG_HDRLEN <= n {
            let len = u32::from_ne_bytes([buf[at], buf[at + 1], buf[at + 2], buf[at + 3]]) as usize;
            let kind = u16::from_ne_bytes([buf[at + 4], buf[at + 5]]);
            if len < NLMSG_HDRLEN || at + len > n {
                return Err(setup("sock_diag: a truncated reply"));
            }
            match kind {
                NLMSG_DONE => return Ok(0),
                NLMSG_ERROR => {
                    let b = &buf[at + NLMSG_HDRLEN..at + len];
                    return Ok(b
                        .get(..4)
                        .map_or(0, |e| i32::from_ne_bytes([e[0], e[1], e[2], e[3]])));
                }
                SOCK_DIAG_BY_FAMILY if len >= NLMSG_HDRLEN + MSG_LEN => {
                    let body = &buf[at + NLMSG_HDRLEN..at + NLMSG_HDRLEN + MSG_LEN];
                    let mut id = [0u8; SOCKID_LEN];
                    id.copy_from_slice(&body[4..4 + SOCKID_LEN]);
                    each(SockId(id));
                }
                _ => {}
            }
            at += (len + 3) & !3;
        }
    }
}

/// In the calling thread's namespace: destroys the UDP sockets `doomed` picks.
fn destroy_here(doomed: &dyn Fn(&SockId) -> bool) -> Result<usize, EbpfError> {
    let fd = sock_diag()?;
    send(
        &fd,
        &request(SOCK_DIAG_BY_FAMILY, NLM_F_REQUEST | NLM_F_DUMP, None),
    )?;
    let mut victims = Vec::new();
    receive(&fd, |id| {
        if doomed(&id) {
            victims.push(id);
        }
    })?;
    let mut ended = 0;
    for id in &victims {
        send(
            &fd,
            &request(SOCK_DESTROY, NLM_F_REQUEST | NLM_F_ACK, Some(id)),
        )?;
        match receive(&fd, |_| {})? {
            0 => ended += 1,
            // Gone meanwhile: nothing to end.
            e if e == -libc::ENOENT => {}
            e => {
                return Err(setup(format!(
                    "SOCK_DESTROY: {} (the kernel needs CONFIG_INET_DIAG_DESTROY)",
                    std::io::Error::from_raw_os_error(-e)
                )));
            }
        }
    }
    Ok(ended)
}

/// Destroys the socket-LB'd connected UDP sockets to `departed` backends of every process
/// in `cgroup`; returns how many it ended.
pub fn end_udp_sockets(
    cgroup: &Path,
    departed: &[Backend],
    sock_reverse: &HashMap<MapData, SockReverseKey, SockReverse>,
) -> Result<usize, EbpfError> {
    if departed.is_empty() {
        return Ok(0);
    }
    let peers: HashSet<(u32, u16)> = departed.iter().map(|b| (b.addr, b.port)).collect();
    let doomed = |id: &SockId| {
        let (addr, port) = id.peer();
        peers.contains(&(addr, port))
            && sock_reverse
                .get(
                    &SockReverseKey {
                        cookie: id.cookie(),
                        backend: Backend { addr, port, pad: 0 },
                        pad: [0; 2],
                    },
                    0,
                )
                .is_ok()
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
                    return Err(setup(format!(
                        "enter the netns of pid {pid}: {}",
                        std::io::Error::last_os_error()
                    )));
                }
                destroy_here(&doomed)
            })
            .join()
            .unwrap_or_else(|_| Err(setup("the socket-ending thread panicked")))
        })?;
    }
    Ok(ended)
}
