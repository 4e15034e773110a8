//! The few netlink primitives the proxy needs (ctnetlink for conntrack, generic netlink
//! for IPVS, nf_tables element batches): a raw socket that sends a request and reads its replies, and attribute
//! encoding. Hand-written because each user needs a handful of messages, and the netlink
//! crates that cover them bring more than they save.
//!
//! A socket lives in the network namespace of the thread that opens it.

use std::{
    cell::Cell,
    io,
    os::fd::{AsRawFd, FromRawFd, OwnedFd},
};

pub const NLM_F_REQUEST: u16 = 0x1;
pub const NLM_F_ACK: u16 = 0x4;
pub const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
pub const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));
pub const NLMSG_HDRLEN: usize = 16;
const NLA_HDRLEN: usize = 4;
/// The most payload one attribute can carry: its length field is a `u16` that counts the
/// 4-byte header too.
pub const MAX_ATTR_PAYLOAD: usize = u16::MAX as usize - NLA_HDRLEN;
/// Not in the libc crate for Linux (only Android); `linux/netlink.h`.
const NETLINK_CAP_ACK: i32 = 10;

/// How many requests [`Socket::request_all`] puts in one datagram: each answer (an error
/// reply, at worst) costs about a kilobyte of the receive buffer, whose default is 208 KiB.
pub const REQUESTS_PER_DATAGRAM: usize = 64;

/// One request of [`Socket::request_all`]: its message type and flags, the family header
/// after nlmsghdr, and its attributes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    pub kind: u16,
    pub flags: u16,
    pub header: Vec<u8>,
    pub attrs: Vec<u8>,
}

#[derive(Debug, thiserror::Error)]
pub enum NetlinkError {
    #[error("opening a netlink socket: {0}")]
    Open(io::Error),
    #[error("netlink {what}: {source}")]
    Io { what: &'static str, source: io::Error },
    #[error("netlink sent a malformed message ({0})")]
    Malformed(&'static str),
    /// Netlink lengths are fixed-width: an attribute holds at most 64 KiB, a message 4 GiB.
    #[error("netlink attribute {kind} would be {len} bytes, more than its length field holds ({max})")]
    TooLong { kind: u16, len: usize, max: usize },
}

impl NetlinkError {
    /// The errno the kernel answered a request with, if that is what this is.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Self::Io { source, .. } => source.raw_os_error(),
            _ => None,
        }
    }
}

pub struct Socket {
    fd: OwnedFd,
    seq: Cell<u32>,
}

impl Socket {
    pub fn open(protocol: i32) -> Result<Self, NetlinkError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, protocol) };
        if fd < 0 {
            return Err(NetlinkError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let socket = Self {
            fd: unsafe { OwnedFd::from_raw_fd(fd) },
            seq: Cell::new(1),
        };
        // Without this an error reply echoes the whole request, which for a large batch
        // message is up to 64 KiB per error and can overflow the receive buffer. Kernels
        // before 4.3 lack the option; there the echo is merely wasteful.
        let _ = socket.set_option(libc::SOL_NETLINK, NETLINK_CAP_ACK, 1);
        Ok(socket)
    }

    fn set_option(&self, level: i32, name: i32, value: i32) -> io::Result<()> {
        // SAFETY: setsockopt(2) with a pointer to an int that outlives the call.
        let rc = unsafe {
            libc::setsockopt(
                self.fd.as_raw_fd(),
                level,
                name,
                (&raw const value).cast(),
                std::mem::size_of::<i32>() as libc::socklen_t,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(())
    }

    /// Makes the send buffer hold a datagram of `len` bytes: the kernel refuses a larger
    /// one (EMSGSIZE), and an nfnetlink batch must be a single datagram. As `nft` does, this
    /// forces the size past `wmem_max` with CAP_NET_ADMIN, and without it asks for what
    /// `wmem_max` allows; a batch still too large then fails to send, naming EMSGSIZE.
    pub fn reserve_send_buffer(&self, len: usize) -> Result<(), NetlinkError> {
        // The kernel doubles the value for its bookkeeping and keeps 32 bytes of it.
        let want = i32::try_from(len + 64).map_err(|_| NetlinkError::Io {
            what: "send",
            source: io::Error::from_raw_os_error(libc::EMSGSIZE),
        })?;
        if len < 1 << 16 {
            // Far below any default; forcing a smaller size would only shrink it.
            return Ok(());
        }
        self.set_option(libc::SOL_SOCKET, libc::SO_SNDBUFFORCE, want)
            .or_else(|_| self.set_option(libc::SOL_SOCKET, libc::SO_SNDBUF, want))
            .map_err(|source| NetlinkError::Io {
                what: "set the send buffer",
                source,
            })
    }

    /// Sends one message (`header` is the family header after nlmsghdr, then attributes)
    /// and returns its sequence number.
    pub fn send(&self, kind: u16, flags: u16, header: &[u8], attrs: &[u8]) -> Result<u32, NetlinkError> {
        let seq = self.next_seq();
        let mut buf = Vec::with_capacity(NLMSG_HDRLEN + header.len() + attrs.len());
        encode_message(&mut buf, seq, kind, flags, header, attrs)?;
        self.send_raw(&buf)?;
        Ok(seq)
    }

    /// Reserves a sequence number for a message the caller encodes itself (a batch).
    pub fn next_seq(&self) -> u32 {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        seq
    }

    /// Sends several messages, already encoded back to back, in one datagram: the kernel
    /// reads an nfnetlink batch only from a single one.
    pub fn send_raw(&self, buf: &[u8]) -> Result<(), NetlinkError> {
        // SAFETY: sending our own initialized buffer; the destination is the kernel (port 0).
        let sent = unsafe {
            let mut addr: libc::sockaddr_nl = std::mem::zeroed();
            addr.nl_family = libc::AF_NETLINK as u16;
            libc::sendto(
                self.fd.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                0,
                (&raw const addr).cast(),
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if sent < 0 {
            return Err(NetlinkError::Io {
                what: "send",
                source: io::Error::last_os_error(),
            });
        }
        Ok(())
    }

    /// Waits for the ACK of every one of `seqs`; the first error reply wins.
    pub fn receive_acks(&self, seqs: &[u32]) -> Result<(), NetlinkError> {
        let mut pending: std::collections::BTreeSet<u32> = seqs.iter().copied().collect();
        self.read_until(|kind, seq, body| {
            if kind == NLMSG_ERROR && pending.remove(&seq) {
                ack(body)?;
            }
            Ok(pending.is_empty())
        })
    }

    /// Waits for the ACK of `last` after a batch in which only `last` asked for one: the
    /// kernel answers a failed message of a batch whether or not it asked, and delivers
    /// those answers in order, so once `last` is acknowledged every error has arrived. The
    /// first error for any of `seqs` wins. Asking only once keeps the replies to a batch of
    /// many messages from overflowing the receive buffer.
    pub fn receive_batch_ack(&self, seqs: &[u32], last: u32) -> Result<(), NetlinkError> {
        self.read_until(|kind, seq, body| {
            if kind != NLMSG_ERROR || !(seq == last || seqs.contains(&seq)) {
                return Ok(false);
            }
            ack(body)?;
            Ok(seq == last)
        })
    }

    /// Sends `requests`, many per datagram, each asking for its ACK, and reads the answers
    /// in bulk: one result per request, in order. The kernel handles a datagram's messages
    /// one by one and answers each, so one failure neither stops nor hides the others.
    /// Chunks of [`REQUESTS_PER_DATAGRAM`] keep a chunk's answers (all of them errors, at
    /// worst) within the default receive buffer; a sent chunk is always read to its end
    /// before the next goes, so no answer is left behind for a later call.
    pub fn request_all(&self, requests: &[Request]) -> Result<Vec<Result<(), NetlinkError>>, NetlinkError> {
        let mut results = Vec::with_capacity(requests.len());
        let mut buf = Vec::new();
        for chunk in requests.chunks(REQUESTS_PER_DATAGRAM) {
            buf.clear();
            let first = self.seq.get();
            for r in chunk {
                let seq = self.next_seq();
                encode_message(&mut buf, seq, r.kind, r.flags | NLM_F_ACK, &r.header, &r.attrs)?;
            }
            self.send_raw(&buf)?;
            let mut answers: Vec<Option<Result<(), NetlinkError>>> = (0..chunk.len()).map(|_| None).collect();
            let mut pending = chunk.len();
            self.read_until(|kind, seq, body| {
                let i = seq.wrapping_sub(first) as usize;
                if kind == NLMSG_ERROR
                    && let Some(slot @ None) = answers.get_mut(i)
                {
                    *slot = Some(ack(body));
                    pending -= 1;
                }
                Ok(pending == 0)
            })?;
            results.extend(
                answers
                    .into_iter()
                    .map(|a| a.unwrap_or(Err(NetlinkError::Malformed("no answer")))),
            );
        }
        Ok(results)
    }

    /// Reads the replies to `seq` until DONE (dumps) or the ACK/error (requests), calling
    /// `each` with every data message's payload (after nlmsghdr).
    pub fn receive(
        &self,
        seq: u32,
        mut each: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
    ) -> Result<(), NetlinkError> {
        self.read_until(|kind, msg_seq, body| {
            if msg_seq != seq {
                return Ok(false);
            }
            match kind {
                NLMSG_DONE => Ok(true),
                NLMSG_ERROR => ack(body).map(|()| true),
                _ => each(body).map(|()| false),
            }
        })
    }

    /// Reads datagrams and hands each message's (type, sequence, payload) to `each` until
    /// it returns true or an error.
    fn read_until(
        &self,
        mut each: impl FnMut(u16, u32, &[u8]) -> Result<bool, NetlinkError>,
    ) -> Result<(), NetlinkError> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: reading into our own buffer of the given length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(NetlinkError::Io {
                    what: "receive",
                    source: err,
                });
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes([msgs[0], msgs[1], msgs[2], msgs[3]]) as usize;
                let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
                let seq = u32::from_ne_bytes([msgs[8], msgs[9], msgs[10], msgs[11]]);
                if len < NLMSG_HDRLEN || len > msgs.len() {
                    return Err(NetlinkError::Malformed("message length"));
                }
                let body = &msgs[NLMSG_HDRLEN..len];
                msgs = &msgs[align(len).min(msgs.len())..];
                if each(kind, seq, body)? {
                    return Ok(());
                }
            }
        }
    }
}

/// An NLMSG_ERROR payload: 0 is the ACK, anything else the request's errno.
fn ack(body: &[u8]) -> Result<(), NetlinkError> {
    let code = body
        .get(0..4)
        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
        .ok_or(NetlinkError::Malformed("error message"))?;
    if code == 0 {
        return Ok(());
    }
    Err(NetlinkError::Io {
        what: "request",
        source: io::Error::from_raw_os_error(-code),
    })
}

/// Appends one message (nlmsghdr, then the family header and attributes) to `buf`.
pub fn encode_message(
    buf: &mut Vec<u8>,
    seq: u32,
    kind: u16,
    flags: u16,
    header: &[u8],
    attrs: &[u8],
) -> Result<(), NetlinkError> {
    let len = NLMSG_HDRLEN + header.len() + attrs.len();
    let field = u32::try_from(len).map_err(|_| NetlinkError::TooLong {
        kind,
        len,
        max: u32::MAX as usize,
    })?;
    buf.extend_from_slice(&field.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(&flags.to_ne_bytes());
    buf.extend_from_slice(&seq.to_ne_bytes());
    buf.extend_from_slice(&0u32.to_ne_bytes());
    buf.extend_from_slice(header);
    buf.extend_from_slice(attrs);
    Ok(())
}

pub fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates (type without flags, payload) over a run of attributes.
pub fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    std::iter::from_fn(move || {
        if data.len() < 4 {
            return None;
        }
        let len = u16::from_ne_bytes([data[0], data[1]]) as usize;
        let kind = u16::from_ne_bytes([data[2], data[3]]) & NLA_TYPE_MASK;
        if len < 4 || len > data.len() {
            return None;
        }
        let payload = &data[4..len];
        data = &data[align(len).min(data.len())..];
        Some((kind, payload))
    })
}

/// Appends one attribute; a value longer than [`MAX_ATTR_PAYLOAD`] is an error, never a
/// truncated length (which would make the kernel read the rest as other attributes).
pub fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) -> Result<(), NetlinkError> {
    let len = NLA_HDRLEN + value.len();
    let field = u16::try_from(len).map_err(|_| NetlinkError::TooLong {
        kind: kind & NLA_TYPE_MASK,
        len,
        max: u16::MAX as usize,
    })?;
    buf.extend_from_slice(&field.to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align(buf.len()), 0);
    Ok(())
}

pub fn put_nested(
    buf: &mut Vec<u8>,
    kind: u16,
    fill: impl FnOnce(&mut Vec<u8>) -> Result<(), NetlinkError>,
) -> Result<(), NetlinkError> {
    let mut inner = Vec::new();
    fill(&mut inner)?;
    put_attr(buf, kind | NLA_F_NESTED, &inner)
}

pub fn u16_ne(v: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(v.get(0..2)?.try_into().ok()?))
}

pub fn u32_ne(v: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(v.get(0..4)?.try_into().ok()?))
}

pub fn u16_be(v: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(v.get(0..2)?.try_into().ok()?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_attribute_too_long_for_its_length_field_is_refused() {
        let mut buf = Vec::new();
        put_attr(&mut buf, 3, &vec![0; MAX_ATTR_PAYLOAD]).expect("the largest attribute fits");
        assert_eq!(
            attrs(&buf).next().map(|(k, v)| (k, v.len())),
            Some((3, MAX_ATTR_PAYLOAD))
        );
        let mut buf = Vec::new();
        let error = put_nested(&mut buf, 3, |b| put_attr(b, 1, &vec![0; MAX_ATTR_PAYLOAD - 3]))
            .expect_err("a nested attribute one byte too long");
        assert!(
            matches!(
                error,
                NetlinkError::TooLong {
                    kind: 3,
                    len: 65_536,
                    ..
                }
            ),
            "{error}"
        );
        assert!(buf.is_empty(), "nothing of a refused attribute is written");
    }
}
