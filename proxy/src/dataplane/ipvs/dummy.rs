//! The `kube-ipvs0` dummy interface and the Service addresses bound to it, over rtnetlink
//! (`<linux/rtnetlink.h>`), as kube-proxy's ipvs proxier does through its netlink library.
//!
//! One `ip` process per address made the cold sync of 1k Services spend most of its time
//! spawning (two processes per address); here a sync's binds are requests batched many per
//! datagram on one socket ([`Socket::request_all`]), each answered on its own so a failure
//! names its address.

use std::{collections::BTreeSet, net::IpAddr};

use crate::netlink::{
    NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkError, Request, Socket, attrs, put_attr, put_nested, u32_ne,
};

const NETLINK_ROUTE: i32 = 0;
const RTM_NEWLINK: u16 = 16;
const RTM_DELLINK: u16 = 17;
const RTM_GETLINK: u16 = 18;
const RTM_NEWADDR: u16 = 20;
const RTM_DELADDR: u16 = 21;
const RTM_GETADDR: u16 = 22;
const NLM_F_REPLACE: u16 = 0x100;
const NLM_F_EXCL: u16 = 0x200;
const NLM_F_CREATE: u16 = 0x400;
const IFLA_IFNAME: u16 = 3;
const IFLA_LINKINFO: u16 = 18;
const IFLA_INFO_KIND: u16 = 1;
const IFA_ADDRESS: u16 = 1;
const IFA_LOCAL: u16 = 2;
/// `struct ifinfomsg` and `struct ifaddrmsg`.
const IFINFOMSG_LEN: usize = 16;
const IFADDRMSG_LEN: usize = 8;

/// The interface kube-proxy binds Service addresses to (the name is kube-proxy's: tools
/// and runbooks look for it).
pub const DUMMY: &str = "kube-ipvs0";

/// An rtnetlink socket in the namespace it was opened in.
pub struct Route {
    socket: Socket,
}

fn ifinfomsg(index: i32) -> Vec<u8> {
    let mut h = vec![0u8; IFINFOMSG_LEN];
    h[4..8].copy_from_slice(&index.to_ne_bytes());
    h
}

fn name_attr() -> Result<Vec<u8>, NetlinkError> {
    let mut name = DUMMY.as_bytes().to_vec();
    name.push(0);
    let mut a = Vec::new();
    put_attr(&mut a, IFLA_IFNAME, &name)?;
    Ok(a)
}

fn family(ip: IpAddr) -> u8 {
    if ip.is_ipv4() {
        libc::AF_INET as u8
    } else {
        libc::AF_INET6 as u8
    }
}

/// An RTM_NEWADDR (replace: binding a bound address again is no error) or RTM_DELADDR
/// for `ip`/32 or /128 on interface `index`, as `ip addr replace|del` sends it.
pub fn address_request(index: u32, ip: IpAddr, bind: bool) -> Result<Request, NetlinkError> {
    let (prefix, octets) = match ip {
        IpAddr::V4(a) => (32u8, a.octets().to_vec()),
        IpAddr::V6(a) => (128u8, a.octets().to_vec()),
    };
    let mut header = vec![family(ip), prefix, 0, 0];
    header.extend_from_slice(&index.to_ne_bytes());
    let mut a = Vec::new();
    put_attr(&mut a, IFA_LOCAL, &octets)?;
    put_attr(&mut a, IFA_ADDRESS, &octets)?;
    let (kind, flags) = if bind {
        (RTM_NEWADDR, NLM_F_REQUEST | NLM_F_CREATE | NLM_F_REPLACE)
    } else {
        (RTM_DELADDR, NLM_F_REQUEST)
    };
    Ok(Request {
        kind,
        flags,
        header,
        attrs: a,
    })
}

/// The address of one RTM_NEWADDR message of a dump, if it is on interface `index`.
fn parse_address(index: u32, body: &[u8]) -> Option<IpAddr> {
    let header = body.get(..IFADDRMSG_LEN)?;
    if u32_ne(&header[4..8])? != index {
        return None;
    }
    let (mut local, mut address) = (None, None);
    for (k, v) in attrs(body.get(IFADDRMSG_LEN..)?) {
        let ip = match v.len() {
            4 => IpAddr::from(<[u8; 4]>::try_from(v).ok()?),
            16 => IpAddr::from(<[u8; 16]>::try_from(v).ok()?),
            _ => continue,
        };
        match k {
            IFA_LOCAL => local = Some(ip),
            IFA_ADDRESS => address = Some(ip),
            _ => {}
        }
    }
    // IPv4 reports the local address as IFA_LOCAL (IFA_ADDRESS is the peer's); IPv6 has
    // only IFA_ADDRESS.
    local.or(address)
}

impl Route {
    pub fn open() -> Result<Self, NetlinkError> {
        Ok(Self {
            socket: Socket::open(NETLINK_ROUTE)?,
        })
    }

    /// `kube-ipvs0`'s interface index, or `None` when it does not exist.
    pub fn index(&self) -> Result<Option<u32>, NetlinkError> {
        let seq = self
            .socket
            .send(RTM_GETLINK, NLM_F_REQUEST | NLM_F_ACK, &ifinfomsg(0), &name_attr()?)?;
        let mut index = None;
        match self.socket.receive(seq, |body| {
            index = body.get(4..8).and_then(u32_ne);
            Ok(())
        }) {
            Ok(()) => Ok(index),
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// Creates `kube-ipvs0` (a dummy, left down as kube-proxy leaves it: its addresses are
    /// local either way) unless it exists, and returns its index.
    pub fn ensure(&self) -> Result<u32, NetlinkError> {
        if let Some(index) = self.index()? {
            return Ok(index);
        }
        let mut a = name_attr()?;
        put_nested(&mut a, IFLA_LINKINFO, |b| put_attr(b, IFLA_INFO_KIND, b"dummy"))?;
        let seq = self.socket.send(
            RTM_NEWLINK,
            NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE | NLM_F_EXCL,
            &ifinfomsg(0),
            &a,
        )?;
        if let Err(e) = self.socket.receive(seq, |_| Ok(()))
            && e.errno() != Some(libc::EEXIST)
        {
            return Err(e);
        }
        self.index()?
            .ok_or(NetlinkError::Malformed("kube-ipvs0 vanished after its creation"))
    }

    /// Deletes `kube-ipvs0` and so every address bound to it; no error when it is absent.
    pub fn delete(&self) -> Result<(), NetlinkError> {
        let seq = self
            .socket
            .send(RTM_DELLINK, NLM_F_REQUEST | NLM_F_ACK, &ifinfomsg(0), &name_attr()?)?;
        match self.socket.receive(seq, |_| Ok(())) {
            Err(e) if e.errno() == Some(libc::ENODEV) => Ok(()),
            other => other,
        }
    }

    /// The addresses bound to `kube-ipvs0` (none when it does not exist).
    pub fn addresses(&self) -> Result<BTreeSet<IpAddr>, NetlinkError> {
        let Some(index) = self.index()? else {
            return Ok(BTreeSet::new());
        };
        let mut header = vec![0u8; IFADDRMSG_LEN];
        header[4..8].copy_from_slice(&index.to_ne_bytes());
        let seq = self
            .socket
            .send(RTM_GETADDR, NLM_F_REQUEST | NLM_F_DUMP, &header, &[])?;
        let mut out = BTreeSet::new();
        self.socket.receive(seq, |body| {
            out.extend(parse_address(index, body));
            Ok(())
        })?;
        Ok(out)
    }

    /// Sends the requests of [`address_request`] in bulk: one result per request.
    pub fn request_all(&self, requests: &[Request]) -> Result<Vec<Result<(), NetlinkError>>, NetlinkError> {
        self.socket.request_all(requests)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_request_carries_the_host_prefix_and_the_interface() {
        let r = address_request(7, "10.96.0.10".parse().unwrap(), true).unwrap();
        assert_eq!(r.kind, RTM_NEWADDR);
        assert_eq!(&r.header[..2], &[libc::AF_INET as u8, 32]);
        assert_eq!(u32_ne(&r.header[4..8]), Some(7));
        assert_ne!(r.flags & NLM_F_REPLACE, 0, "binding twice is no error");
        let local: Vec<_> = attrs(&r.attrs).filter(|(k, _)| *k == IFA_LOCAL).collect();
        assert_eq!(local, vec![(IFA_LOCAL, &[10u8, 96, 0, 10][..])]);
        let r = address_request(7, "fd00::a".parse().unwrap(), false).unwrap();
        assert_eq!((r.kind, r.header[1]), (RTM_DELADDR, 128));
    }

    #[test]
    fn a_dumped_address_is_read_back_only_from_our_interface() {
        for ip in ["10.96.0.10", "fd00::a"] {
            let ip: IpAddr = ip.parse().unwrap();
            let r = address_request(7, ip, true).unwrap();
            let body = [r.header, r.attrs].concat();
            assert_eq!(parse_address(7, &body), Some(ip));
            assert_eq!(parse_address(8, &body), None);
        }
    }
}
