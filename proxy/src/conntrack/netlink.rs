//! A minimal ctnetlink client: dump the conntrack table and delete entries by their
//! original tuple, on a raw `NETLINK_NETFILTER` socket. Hand-written because we need two
//! messages, and the netlink crates that cover ctnetlink bring more than they save.
//!
//! The socket lives in the network namespace of the thread that opens it.

use std::net::IpAddr;

use super::stale::{Entry, Tuple};
use crate::netlink::{NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkError, Socket, attrs, put_attr, put_nested, u16_be};

// <linux/netlink.h>
const NETLINK_NETFILTER: i32 = 12;
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

const NFGENMSG_LEN: usize = 4;

#[derive(Debug, thiserror::Error)]
pub enum ConntrackError {
    #[error("ctnetlink (needs CAP_NET_ADMIN and nf_conntrack_netlink): {0}")]
    Netlink(#[from] NetlinkError),
}

pub struct Conntrack {
    socket: Socket,
}

impl Conntrack {
    pub fn open() -> Result<Self, ConntrackError> {
        Ok(Self {
            socket: Socket::open(NETLINK_NETFILTER)?,
        })
    }

    /// Every UDP entry, both families.
    pub fn udp_entries(&self) -> Result<Vec<Entry>, ConntrackError> {
        let mut out = Vec::new();
        for family in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let seq = self.send(IPCTNL_MSG_CT_GET, NLM_F_REQUEST | NLM_F_DUMP, family, &[])?;
            self.socket.receive(seq, |body| {
                if let Some(entry) = parse_entry(body.get(NFGENMSG_LEN..).unwrap_or_default())
                    && entry.orig.protocol == IPPROTO_UDP
                {
                    out.push(entry);
                }
                Ok(())
            })?;
        }
        Ok(out)
    }

    /// Deletes the entry with this original tuple. Returns false if it was already gone.
    pub fn delete(&self, orig: &Tuple) -> Result<bool, ConntrackError> {
        let family = if orig.src.is_ipv4() {
            libc::AF_INET
        } else {
            libc::AF_INET6
        } as u8;
        let mut attrs = Vec::new();
        put_tuple(&mut attrs, CTA_TUPLE_ORIG, orig)?;
        let seq = self.send(IPCTNL_MSG_CT_DELETE, NLM_F_REQUEST | NLM_F_ACK, family, &attrs)?;
        match self.socket.receive(seq, |_| Ok(())) {
            Ok(()) => Ok(true),
            Err(e) if e.errno() == Some(libc::ENOENT) => Ok(false),
            Err(e) => Err(e.into()),
        }
    }

    fn send(&self, msg: u16, flags: u16, family: u8, attrs: &[u8]) -> Result<u32, NetlinkError> {
        self.socket
            .send((NFNL_SUBSYS_CTNETLINK << 8) | msg, flags, &[family, 0, 0, 0], attrs)
    }
}

fn parse_entry(payload: &[u8]) -> Option<Entry> {
    let (mut orig, mut reply) = (None, None);
    for (kind, value) in attrs(payload) {
        match kind {
            CTA_TUPLE_ORIG => orig = parse_tuple(value),
            CTA_TUPLE_REPLY => reply = parse_tuple(value),
            _ => {}
        }
    }
    orig.zip(reply).map(|(orig, reply)| Entry { orig, reply })
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
                        CTA_PROTO_SRC_PORT => sport = u16_be(v).unwrap_or(0),
                        CTA_PROTO_DST_PORT => dport = u16_be(v).unwrap_or(0),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    Some(Tuple {
        src: src?,
        dst: dst?,
        src_port: sport,
        dst_port: dport,
        protocol: protocol?,
    })
}

fn put_tuple(buf: &mut Vec<u8>, kind: u16, t: &Tuple) -> Result<(), NetlinkError> {
    put_nested(buf, kind, |b| {
        put_nested(b, CTA_TUPLE_IP, |b| match (t.src, t.dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                put_attr(b, CTA_IP_V4_SRC, &s.octets())?;
                put_attr(b, CTA_IP_V4_DST, &d.octets())
            }
            (s, d) => {
                let v6 = |ip: IpAddr| match ip {
                    IpAddr::V4(a) => a.to_ipv6_mapped().octets(),
                    IpAddr::V6(a) => a.octets(),
                };
                put_attr(b, CTA_IP_V6_SRC, &v6(s))?;
                put_attr(b, CTA_IP_V6_DST, &v6(d))
            }
        })?;
        put_nested(b, CTA_TUPLE_PROTO, |b| {
            put_attr(b, CTA_PROTO_NUM, &[t.protocol])?;
            put_attr(b, CTA_PROTO_SRC_PORT, &t.src_port.to_be_bytes())?;
            put_attr(b, CTA_PROTO_DST_PORT, &t.dst_port.to_be_bytes())
        })
    })
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
        put_tuple(&mut buf, CTA_TUPLE_ORIG, &t).expect("encode");
        let (kind, inner) = attrs(&buf).next().unwrap();
        assert_eq!(kind, CTA_TUPLE_ORIG);
        assert_eq!(parse_tuple(inner), Some(t));
    }
}
