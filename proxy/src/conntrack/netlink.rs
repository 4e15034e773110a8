//! A minimal ctnetlink client: dump the conntrack table and delete entries by their
//! original tuple, on a raw `NETLINK_NETFILTER` socket. Hand-written because we need two
//! messages, and the netlink crates that cover ctnetlink bring more than they save.
//!
//! The socket lives in the network namespace of the thread that opens it.

use std::{io, net::IpAddr, os::fd::AsRawFd, os::fd::FromRawFd, os::fd::OwnedFd};

use super::stale::{Entry, Tuple};

// <linux/netlink.h>
const NETLINK_NETFILTER: i32 = 12;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_ACK: u16 = 0x4;
const NLM_F_DUMP: u16 = 0x300;
const NLMSG_ERROR: u16 = 0x2;
const NLMSG_DONE: u16 = 0x3;
const NLA_F_NESTED: u16 = 1 << 15;
const NLA_TYPE_MASK: u16 = !(NLA_F_NESTED | (1 << 14));
// <linux/netfilter/nfnetlink.h>, <linux/netfilter/nfnetlink_conntrack.h>
const NFNL_SUBSYS_CTNETLINK: u16 = 1;
const IPCTNL_MSG_CT_GET: u16 = 1;
const IPCTNL_MSG_CT_DELETE: u16 = 2;
const CTA_TUPLE_ORIG: u16 = 1;
const CTA_TUPLE_REPLY: u16 = 2;
const CTA_TUPLE_IP: u16 = 1;
const CTA_TUPLE_PROTO: u16 = 2;
const CTA_IP_V4_SRC: u16 = 1;
const CTA_IP_V4_DST: u16 = 2;
const CTA_IP_V6_SRC: u16 = 3;
const CTA_IP_V6_DST: u16 = 4;
const CTA_PROTO_NUM: u16 = 1;
const CTA_PROTO_SRC_PORT: u16 = 2;
const CTA_PROTO_DST_PORT: u16 = 3;
const IPPROTO_UDP: u8 = 17;

const NLMSG_HDRLEN: usize = 16;
const NFGENMSG_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("opening a ctnetlink socket: {0} (needs CAP_NET_ADMIN and a kernel with nf_conntrack_netlink)")]
    Open(io::Error),
    #[error("ctnetlink {what}: {source}")]
    Io { what: &'static str, source: io::Error },
    #[error("ctnetlink sent a malformed message ({0})")]
    Malformed(&'static str),
}

pub struct Conntrack {
    fd: OwnedFd,
    seq: std::cell::Cell<u32>,
}

impl Conntrack {
    pub fn open() -> Result<Self, ConntrackError> {
        // SAFETY: plain socket(2); the result is checked before use.
        let fd = unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, NETLINK_NETFILTER) };
        if fd < 0 {
            return Err(ConntrackError::Open(io::Error::last_os_error()));
        }
        // SAFETY: `fd` is a fresh descriptor we own.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        Ok(Self { fd, seq: std::cell::Cell::new(1) })
    }

    /// Every UDP entry, both families.
    pub fn udp_entries(&self) -> Result<Vec<Entry>, ConntrackError> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let seq = self.send(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, family, &[])?;
            self.receive(seq, |payload| {
                if let Some(entry) = parse_entry(payload)? {
                    if entry.orig.protocol == IPPROTO_UDP {
                        out.push(entry);
                    }
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Deletes the entry with this original tuple. Returns false if it was already gone.
    pub fn delete(&self, orig: &Tuple) -> Result<bool, ConntrackError> {
        let family = if orig.src.is_ipv4() { libc::AF_INET } else { libc::AF_INET6 } as u8;
        let mut attrs = Vec::new();
        put_tuple(&mut attrs, CTA_TUPLE_ORIG, orig);
        let seq = self.send(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, family, &attrs)?;
        match self.receive(seq, |_| Ok(())) {
            Ok(()) => Ok(true),
            Err(ConntrackError::Io { source, .. }) if source.raw_os_error() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e),
        }
    }

    fn send(&self, msg: u16, flags: u16, family: u8, attrs: &[u8]) -> Result<u32, ConntrackError> {
        let seq = self.seq.get();
        self.seq.set(seq.wrapping_add(1));
        let len = NLMSG_HDRLEN + NFGENMSG_LEN + attrs.len();
        let mut buf = Vec::with_capacity(len);
        buf.extend_from_slice(&(len as u32).to_ne_bytes());
        buf.extend_from_slice(&((NFNL_SUBSYS_CTNETLINK << 8) | msg).to_ne_bytes());
        buf.extend_from_slice(&flags.to_ne_bytes());
        buf.extend_from_slice(&seq.to_ne_bytes());
        buf.extend_from_slice(&0u32.to_ne_bytes());
        buf.extend_from_slice(&[family, 0, 0, 0]);
        buf.extend_from_slice(attrs);
        // SAFETY: sending our own initialized buffer on our socket; the kernel is port 0.
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
            return Err(ConntrackError::Io { what: "send", source: io::Error::last_os_error() });
        }
        Ok(seq)
    }

    /// Reads replies to `seq` until DONE (dumps) or the ACK (requests), calling `each` with
    /// the payload after the nfgenmsg header of every data message.
    fn receive(
        &self,
        seq: u32,
        mut each: impl FnMut(&[u8]) -> Result<(), ConntrackError>,
    ) -> Result<(), ConntrackError> {
        let mut buf = vec![0u8; 1 << 16];
        loop {
            // SAFETY: reading into our own buffer of the given length.
            let n = unsafe { libc::recv(self.fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len(), 0) };
            if n < 0 {
                let err = io::Error::last_os_error();
                if err.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(ConntrackError::Io { what: "receive", source: err });
            }
            let mut msgs = &buf[..n as usize];
            while msgs.len() >= NLMSG_HDRLEN {
                let len = u32::from_ne_bytes(msgs[0..4].try_into().map_err(|_| ConntrackError::Malformed("header"))?)
                    as usize;
                let kind = u16::from_ne_bytes([msgs[4], msgs[5]]);
                let msg_seq = u32::from_ne_bytes([msgs[8], msgs[9], msgs[10], msgs[11]]);
                if len < NLMSG_HDRLEN || len > msgs.len() {
                    return Err(ConntrackError::Malformed("message length"));
                }
                let body = &msgs[NLMSG_HDRLEN..len];
                msgs = &msgs[align(len).min(msgs.len())..];
                if msg_seq != seq {
                    continue;
                }
                match kind {
                    NLMSG_DONE => return Ok(()),
                    NLMSG_ERROR => {
                        let code = body
                            .get(0..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .ok_or(ConntrackError::Malformed("error message"))?;
                        if code == 0 {
                            return Ok(());
                        }
                        return Err(ConntrackError::Io { what: "request", source: io::Error::from_raw_os_error(-code) });
                    }
                    _ => each(body.get(NFGENMSG_LEN..).unwrap_or_default())?,
                }
            }
        }
    }
}

fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterates (type without flags, payload) over a run of netlink attributes.
fn attrs(mut data: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
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

fn parse_entry(payload: &[u8]) -> Result<Option<Entry>, ConntrackError> {
    let (mut orig, mut reply) = (None, None);
    for (kind, value) in attrs(payload) {
        match kind {
            CTA_TUPLE_ORIG => orig = parse_tuple(value),
            CTA_TUPLE_REPLY => reply = parse_tuple(value),
            _ => {}
        }
    }
    Ok(orig.zip(reply).map(|(orig, reply)| Entry { orig, reply }))
}

fn parse_tuple(data: &[u8]) -> Option<Tuple> {
    let (mut src, mut dst, mut protocol, mut sport, mut dport) = (None, None, None, 0u16, 0u16);
    for (kind, value) in attrs(data) {
        match kind {
            CTA_TUPLE_IP => {
                for (k, v) in attrs(value) {
                    let ip = match k {
                        CTA_IP_V4_SRC | CTA_IP_V4_DST => <[u8; 4]>::try_from(v).ok().map(IpAddr::from),
                        CTA_IP_V6_SRC | CTA_IP_V6_DST => <[u8; 16]>::try_from(v).ok().map(IpAddr::from),
                        _ => None,
                    };
                    match k {
                        CTA_IP_V4_SRC | CTA_IP_V6_SRC => src = ip,
                        CTA_IP_V4_DST | CTA_IP_V6_DST => dst = ip,
                        _ => {}
                    }
                }
            }
            CTA_TUPLE_PROTO => {
                for (k, v) in attrs(value) {
                    match k {
                        CTA_PROTO_NUM => protocol = v.first().copied(),
                        CTA_PROTO_SRC_PORT => sport = v.get(0..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
                        CTA_PROTO_DST_PORT => dport = v.get(0..2).map_or(0, |b| u16::from_be_bytes([b[0], b[1]])),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple { src: src?, dst: dst?, src_port: sport, dst_port: dport, protocol: protocol? })
}

fn put_attr(buf: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let len = 4 + value.len();
    buf.extend_from_slice(&(len as u16).to_ne_bytes());
    buf.extend_from_slice(&kind.to_ne_bytes());
    buf.extend_from_slice(value);
    buf.resize(align(buf.len()), 0);
}

fn put_nested(buf: &mut Vec<u8>, kind: u16, fill: impl FnOnce(&mut Vec<u8>)) {
    let mut inner = Vec::new();
    fill(&mut inner);
    put_attr(buf, kind | NLA_F_NESTED, &inner);
}

fn put_tuple(buf: &mut Vec<u8>, kind: u16, t: &Tuple) {
    put_nested(buf, kind, |b| {
        put_nested(b, CTA_TUPLE_IP, |b| match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                put_attr(b, CTA_IP_V4_SRC, &s.octets());
                put_attr(b, CTA_IP_V4_DST, &d.octets());
            }
            (s, d) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    IpAddr::V6(a) => a.octets(),
                };
                put_attr(b, CTA_IP_V6_SRC, &v6(s));
                put_attr(b, CTA_IP_V6_DST, &v6(d));
            }
        });
        put_nested(b, CTA_TUPLE_PROTO, |b| {
            put_attr(b, CTA_PROTO_NUM, &[t.protocol]);
            put_attr(b, CTA_PROTO_SRC_PORT, &t.src_port.to_be_bytes());
            put_attr(b, CTA_PROTO_DST_PORT, &t.dst_port.to_be_bytes());
        });
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tuple_round_trips_through_the_attribute_encoding() {
        let t = Tuple {
            src: "10.244.2.10".parse().unwrap(),
            dst: "10.96.0.10".parse().unwrap(),
            src_port: 40000,
            dst_port: 53,
            protocol: 17,
        };
        let mut buf = Vec::new();
        put_tuple(&mut buf, CTA_TUPLE_ORIG, &t);
        let (kind, inner) = attrs(&buf).next().unwrap();
        assert_eq!(kind, CTA_TUPLE_ORIG);
        assert_eq!(parse_tuple(inner), Some(t));
    }
}
