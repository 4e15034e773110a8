//! The kernel side of the ipvs mode: IPVS over generic netlink (`<linux/ip_vs.h>`), and
//! frontend addresses on the dummy `kube-ipvs0` over rtnetlink ([`super::dummy`]).
//!
//! A sync's operations go step by step ([`super::ops::stages`]); within a step they are
//! sent many per datagram and their answers read in bulk ([`Socket::request_all`]), where
//! one request and one wait per virtual service and real server made the kernel's round
//! trips the cost. Each operation is still answered on its own, so a failure names it.
//!
//! The encoding is exercised by unit tests; the kernel side by `tests/tests/ipvs_kernel.rs`
//! and the ipvs e2e, in a guest with IP_VS when this kernel has none.

use std::net::IpAddr;

use super::{
    IpvsError,
    dummy::{Route, address_request},
    ops::{Destination, IpvsState, Op, Scheduler, ServiceKey, Stage, VirtualService},
    seam::IpvsHandle,
};
use crate::{
    model::Protocol,
    netlink::{
        NLM_F_ACK, NLM_F_DUMP, NLM_F_REQUEST, NetlinkError, Request, Socket, attrs, put_attr, put_nested, u16_be,
        u16_ne, u32_ne,
    },
};

// <linux/netlink.h>, <linux/genetlink.h>
const NETLINK_GENERIC: i32 = 16;
const GENL_ID_CTRL: u16 = 0x10;
const CTRL_CMD_GETFAMILY: u8 = 3;
const CTRL_ATTR_FAMILY_ID: u16 = 1;
const CTRL_ATTR_FAMILY_NAME: u16 = 2;
// <linux/ip_vs.h>
const IPVS_GENL_NAME: &str = "IPVS";
const IPVS_GENL_VERSION: u8 = 1;
const IPVS_CMD_NEW_SERVICE: u8 = 1;
const IPVS_CMD_SET_SERVICE: u8 = 2;
const IPVS_CMD_DEL_SERVICE: u8 = 3;
const IPVS_CMD_GET_SERVICE: u8 = 4;
const IPVS_CMD_NEW_DEST: u8 = 5;
const IPVS_CMD_SET_DEST: u8 = 6;
const IPVS_CMD_DEL_DEST: u8 = 7;
const IPVS_CMD_GET_DEST: u8 = 8;
const IPVS_CMD_FLUSH: u8 = 17;
const IPVS_CMD_ATTR_SERVICE: u16 = 1;
const IPVS_CMD_ATTR_DEST: u16 = 2;
const IPVS_SVC_ATTR_AF: u16 = 1;
const IPVS_SVC_ATTR_PROTOCOL: u16 = 2;
const IPVS_SVC_ATTR_ADDR: u16 = 3;
const IPVS_SVC_ATTR_PORT: u16 = 4;
const IPVS_SVC_ATTR_SCHED_NAME: u16 = 6;
const IPVS_SVC_ATTR_FLAGS: u16 = 7;
const IPVS_SVC_ATTR_TIMEOUT: u16 = 8;
const IPVS_SVC_ATTR_NETMASK: u16 = 9;
const IPVS_DEST_ATTR_ADDR: u16 = 1;
const IPVS_DEST_ATTR_PORT: u16 = 2;
const IPVS_DEST_ATTR_FWD_METHOD: u16 = 3;
const IPVS_DEST_ATTR_WEIGHT: u16 = 4;
const IPVS_DEST_ATTR_U_THRESH: u16 = 5;
const IPVS_DEST_ATTR_L_THRESH: u16 = 6;
const IPVS_DEST_ATTR_ACTIVE_CONNS: u16 = 7;
const IPVS_DEST_ATTR_INACT_CONNS: u16 = 8;
const IPVS_DEST_ATTR_ADDR_FAMILY: u16 = 11;
const IP_VS_SVC_F_PERSISTENT: u32 = 0x1;
const IP_VS_CONN_F_MASQ: u32 = 0x0;

/// IPVS and `kube-ipvs0`, both in the network namespace [`NetlinkIpvs::open`] ran in.
pub struct NetlinkIpvs {
    socket: Socket,
    family: u16,
    route: Route,
}

fn op_error(e: NetlinkError) -> IpvsError {
    IpvsError::Operation(e.to_string())
}

impl NetlinkIpvs {
    /// Resolves the IPVS generic netlink family; a kernel without IPVS has none.
    pub fn open() -> Result<Self, IpvsError> {
        let socket = Socket::open(NETLINK_GENERIC).map_err(op_error)?;
        let mut name = IPVS_GENL_NAME.as_bytes().to_vec();
        name.push(0);
        let mut a = Vec::new();
        put_attr(&mut a, CTRL_ATTR_FAMILY_NAME, &name).map_err(op_error)?;
        let seq = socket
            .send(
                GENL_ID_CTRL,
                NLM_F_REQUEST | NLM_F_ACK,
                &[CTRL_CMD_GETFAMILY, 1, 0, 0],
                &a,
            )
            .map_err(op_error)?;
        let mut family = None;
        let result = socket.receive(seq, |body| {
            for (k, v) in attrs(body.get(4..).unwrap_or_default()) {
                if k == CTRL_ATTR_FAMILY_ID {
                    family = u16_ne(v);
                }
            }
            Ok(())
        });
        match (result, family) {
            (Ok(()), Some(family)) => Ok(Self {
                socket,
                family,
                route: Route::open().map_err(op_error)?,
            }),
            (Err(e), _) if e.errno() == Some(libc::ENOENT) => Err(not_available()),
            (Ok(()), None) => Err(not_available()),
            (Err(e), _) => Err(op_error(e)),
        }
    }

    fn request(
        &self,
        cmd: u8,
        flags: u16,
        attrs: &[u8],
        each: impl FnMut(&[u8]) -> Result<(), NetlinkError>,
    ) -> Result<(), IpvsError> {
        let seq = self
            .socket
            .send(self.family, flags, &[cmd, IPVS_GENL_VERSION, 0, 0], attrs)
            .map_err(op_error)?;
        self.socket.receive(seq, each).map_err(op_error)
    }
}

fn not_available() -> IpvsError {
    IpvsError::NotAvailable {
        proc_file: "/proc/net/ip_vs".into(),
        modules_supported: std::path::Path::new("/proc/modules").exists(),
    }
}

fn family(ip: IpAddr) -> u16 {
    if ip.is_ipv4() {
        libc::AF_INET as u16
    } else {
        libc::AF_INET6 as u16
    }
}

fn protocol_number(p: Protocol) -> u16 {
    match p {
        Protocol::Tcp => 6,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    }
}

/// `union nf_inet_addr`: 16 bytes, IPv4 in the first four.
fn inet_addr(ip: IpAddr) -> [u8; 16] {
    let mut out = [0u8; 16];
    match ip {
        IpAddr::V4(a) => out[..4].copy_from_slice(&a.octets()),
        IpAddr::V6(a) => out = a.octets(),
    }
    out
}

fn parse_inet_addr(af: u16, v: &[u8]) -> Option<IpAddr> {
    if af == libc::AF_INET as u16 {
        Some(IpAddr::from(<[u8; 4]>::try_from(v.get(..4)?).ok()?))
    } else {
        Some(IpAddr::from(<[u8; 16]>::try_from(v.get(..16)?).ok()?))
    }
}

fn put_service_key(b: &mut Vec<u8>, k: &ServiceKey) -> Result<(), NetlinkError> {
    put_attr(b, IPVS_SVC_ATTR_AF, &family(k.address).to_ne_bytes())?;
    put_attr(b, IPVS_SVC_ATTR_PROTOCOL, &protocol_number(k.protocol).to_ne_bytes())?;
    put_attr(b, IPVS_SVC_ATTR_ADDR, &inet_addr(k.address))?;
    put_attr(b, IPVS_SVC_ATTR_PORT, &k.port.to_be_bytes())
}

fn service_attrs(s: &VirtualService) -> Result<Vec<u8>, NetlinkError> {
    let mut out = Vec::new();
    put_nested(&mut out, IPVS_CMD_ATTR_SERVICE, |b| {
        put_service_key(b, &s.key)?;
        let mut sched = s.scheduler.name().as_bytes().to_vec();
        sched.push(0);
        put_attr(b, IPVS_SVC_ATTR_SCHED_NAME, &sched)?;
        let flags = if s.persistence_timeout.is_some() {
            IP_VS_SVC_F_PERSISTENT
        } else {
            0
        };
        let mut f = flags.to_ne_bytes().to_vec();
        f.extend_from_slice(&u32::MAX.to_ne_bytes());
        put_attr(b, IPVS_SVC_ATTR_FLAGS, &f)?;
        put_attr(
            b,
            IPVS_SVC_ATTR_TIMEOUT,
            &s.persistence_timeout.unwrap_or(0).to_ne_bytes(),
        )?;
        let mask: u32 = if s.key.address.is_ipv4() { u32::MAX } else { 128 };
        put_attr(b, IPVS_SVC_ATTR_NETMASK, &mask.to_ne_bytes())
    })?;
    Ok(out)
}

fn key_attrs(k: &ServiceKey) -> Result<Vec<u8>, NetlinkError> {
    let mut out = Vec::new();
    put_nested(&mut out, IPVS_CMD_ATTR_SERVICE, |b| put_service_key(b, k))?;
    Ok(out)
}

fn dest_attrs(k: &ServiceKey, d: &Destination) -> Result<Vec<u8>, NetlinkError> {
    let mut out = key_attrs(k)?;
    put_nested(&mut out, IPVS_CMD_ATTR_DEST, |b| {
        put_attr(b, IPVS_DEST_ATTR_ADDR, &inet_addr(d.address))?;
        put_attr(b, IPVS_DEST_ATTR_PORT, &d.port.to_be_bytes())?;
        put_attr(b, IPVS_DEST_ATTR_FWD_METHOD, &IP_VS_CONN_F_MASQ.to_ne_bytes())?;
        put_attr(b, IPVS_DEST_ATTR_WEIGHT, &d.weight.to_ne_bytes())?;
        // The kernel refuses a full destination entry without both thresholds (0: none).
        put_attr(b, IPVS_DEST_ATTR_U_THRESH, &0u32.to_ne_bytes())?;
        put_attr(b, IPVS_DEST_ATTR_L_THRESH, &0u32.to_ne_bytes())?;
        put_attr(b, IPVS_DEST_ATTR_ADDR_FAMILY, &family(d.address).to_ne_bytes())
    })?;
    Ok(out)
}

fn parse_service(body: &[u8]) -> Option<VirtualService> {
    let (_, svc) = attrs(body.get(4..)?).find(|(k, _)| *k == IPVS_CMD_ATTR_SERVICE)?;
    let (mut af, mut proto, mut addr, mut port, mut sched, mut flags, mut timeout) = (0, 0, None, 0, None, 0, 0);
    let mut raw_addr = None;
    for (k, v) in attrs(svc) {
        match k {
            IPVS_SVC_ATTR_AF => af = u16_ne(v)?,
            IPVS_SVC_ATTR_PROTOCOL => proto = u16_ne(v)?,
            IPVS_SVC_ATTR_ADDR => raw_addr = Some(v.to_vec()),
            IPVS_SVC_ATTR_PORT => port = u16_be(v)?,
            IPVS_SVC_ATTR_SCHED_NAME => sched = Some(String::from_utf8_lossy(v).trim_end_matches('\0').to_owned()),
            IPVS_SVC_ATTR_FLAGS => flags = u32_ne(v)?,
            IPVS_SVC_ATTR_TIMEOUT => timeout = u32_ne(v)?,
            _ => {}
        }
    }
    if let Some(raw) = raw_addr {
        addr = parse_inet_addr(af, &raw);
    }
    let protocol = match proto {
        6 => Protocol::Tcp,
        17 => Protocol::Udp,
        132 => Protocol::Sctp,
        _ => return None,
    };
    let scheduler = match sched.as_deref() {
        Some("lc") => Scheduler::LeastConnection,
        Some("sh") => Scheduler::SourceHashing,
        Some("mh") => Scheduler::MaglevHashing,
        _ => Scheduler::RoundRobin,
    };
    Some(VirtualService {
        key: ServiceKey {
            address: addr?,
            port,
            protocol,
        },
        scheduler,
        persistence_timeout: (flags & IP_VS_SVC_F_PERSISTENT != 0).then_some(timeout),
    })
}

/// A real server and its active plus inactive connections.
fn parse_dest(af: u16, body: &[u8]) -> Option<(Destination, u32)> {
    let (_, dest) = attrs(body.get(4..)?).find(|(k, _)| *k == IPVS_CMD_ATTR_DEST)?;
    let (mut addr, mut port, mut weight, mut conns) = (None, 0, 1, 0u32);
    for (k, v) in attrs(dest) {
        match k {
            IPVS_DEST_ATTR_ADDR => addr = parse_inet_addr(af, v),
            IPVS_DEST_ATTR_PORT => port = u16_be(v)?,
            IPVS_DEST_ATTR_WEIGHT => weight = u32_ne(v)?,
            IPVS_DEST_ATTR_ACTIVE_CONNS | IPVS_DEST_ATTR_INACT_CONNS => {
                conns = conns.saturating_add(u32_ne(v)?);
            }
            _ => {}
        }
    }
    Some((
        Destination {
            address: addr?,
            port,
            weight,
        },
        conns,
    ))
}

impl IpvsHandle for NetlinkIpvs {
    fn state(&self) -> Result<IpvsState, IpvsError> {
        let mut services = Vec::new();
        self.request(IPVS_CMD_GET_SERVICE, NLM_F_REQUEST | NLM_F_DUMP, &[], |body| {
            services.extend(parse_service(body));
            Ok(())
        })?;
        let mut out = IpvsState::default();
        for service in services {
            let mut dests = std::collections::BTreeSet::new();
            let af = family(service.key.address);
            let key = service.key;
            let connections = &mut out.connections;
            self.request(
                IPVS_CMD_GET_DEST,
                NLM_F_REQUEST | NLM_F_DUMP,
                &key_attrs(&service.key).map_err(op_error)?,
                |body| {
                    if let Some((d, conns)) = parse_dest(af, body) {
                        if conns > 0 {
                            connections.insert((key, d.address, d.port), conns);
                        }
                        dests.insert(d);
                    }
                    Ok(())
                },
            )?;
            out.services.insert(service.key, (service, dests));
        }
        out.bound = self.route.addresses().map_err(op_error)?;
        Ok(out)
    }

    fn destinations(
        &self,
        key: &ServiceKey,
    ) -> Result<(std::collections::BTreeSet<Destination>, super::seam::Connections), IpvsError> {
        let (mut dests, mut conns) = (std::collections::BTreeSet::new(), super::seam::Connections::new());
        let af = family(key.address);
        self.request(
            IPVS_CMD_GET_DEST,
            NLM_F_REQUEST | NLM_F_DUMP,
            &key_attrs(key).map_err(op_error)?,
            |body| {
                if let Some((d, n)) = parse_dest(af, body) {
                    if n > 0 {
                        conns.insert((*key, d.address, d.port), n);
                    }
                    dests.insert(d);
                }
                Ok(())
            },
        )?;
        Ok((dests, conns))
    }

    fn apply(&mut self, op: &Op) -> Result<(), IpvsError> {
        self.apply_stage(std::slice::from_ref(op))
    }

    /// One step's operations in bulk: the kernel answers each, and every failure counts
    /// (a step is all of one kind, so none depends on another that failed before it).
    fn apply_stage(&mut self, ops: &[Op]) -> Result<(), IpvsError> {
        let Some(stage) = ops.first().map(Op::stage) else {
            return Ok(());
        };
        let results = match stage {
            Stage::Bind | Stage::Unbind => {
                let index = if stage == Stage::Bind {
                    self.route.ensure().map_err(op_error)?
                } else {
                    match self.route.index().map_err(op_error)? {
                        Some(index) => index,
                        // No interface: nothing is bound.
                        None => return Ok(()),
                    }
                };
                let requests = ops
                    .iter()
                    .map(|op| match op {
                        Op::BindAddress(a) => address_request(index, *a, true),
                        Op::UnbindAddress(a) => address_request(index, *a, false),
                        _ => Err(NetlinkError::Malformed("an IPVS operation among address ones")),
                    })
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(op_error)?;
                self.route.request_all(&requests).map_err(op_error)?
            }
            _ => {
                let requests = ops
                    .iter()
                    .map(|op| self.ipvs_request(op))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(op_error)?;
                self.socket.request_all(&requests).map_err(op_error)?
            }
        };
        // Unbinding an address that is gone is an error too, as in kube-proxy: the
        // bindings changed behind the plan's back, and the next sync plans from the kernel.
        let mut failed = ops.iter().zip(results).filter_map(|(op, r)| r.err().map(|e| (op, e)));
        match failed.next() {
            None => Ok(()),
            Some((op, source)) => Err(IpvsError::Refused {
                op: op.to_string(),
                others: failed.count(),
                source,
            }),
        }
    }
}

impl NetlinkIpvs {
    /// The generic netlink request for an IPVS operation.
    fn ipvs_request(&self, op: &Op) -> Result<Request, NetlinkError> {
        let (cmd, attrs) = match op {
            Op::AddService(s) => (IPVS_CMD_NEW_SERVICE, service_attrs(s)?),
            Op::UpdateService(s) => (IPVS_CMD_SET_SERVICE, service_attrs(s)?),
            Op::DeleteService(k) => (IPVS_CMD_DEL_SERVICE, key_attrs(k)?),
            Op::AddDestination(k, d) => (IPVS_CMD_NEW_DEST, dest_attrs(k, d)?),
            Op::UpdateDestination(k, d) => (IPVS_CMD_SET_DEST, dest_attrs(k, d)?),
            Op::DeleteDestination(k, d) => (IPVS_CMD_DEL_DEST, dest_attrs(k, d)?),
            Op::BindAddress(_) | Op::UnbindAddress(_) => {
                return Err(NetlinkError::Malformed("an address operation among IPVS ones"));
            }
        };
        Ok(Request {
            kind: self.family,
            flags: NLM_F_REQUEST | NLM_F_ACK,
            header: vec![cmd, IPVS_GENL_VERSION, 0, 0],
            attrs,
        })
    }
}

impl NetlinkIpvs {
    /// Empties the IPVS table, as kube-proxy's cleanup does (every virtual service on this
    /// node is a proxy's).
    pub fn flush(&self) -> Result<(), IpvsError> {
        self.request(IPVS_CMD_FLUSH, NLM_F_REQUEST | NLM_F_ACK, &[], |_| Ok(()))
    }
}

/// Removes the virtual services (when the kernel has IPVS loaded), `kube-ipvs0` with every
/// bound address, and the helper rules and sets.
pub fn cleanup() -> Result<(), IpvsError> {
    if std::path::Path::new("/proc/net/ip_vs").exists() {
        NetlinkIpvs::open()?.flush()?;
    }
    Route::open().and_then(|r| r.delete()).map_err(op_error)?;
    super::apply::cleanup_helpers()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn service_messages_decode_to_what_was_encoded() {
        let s = VirtualService {
            key: ServiceKey {
                address: "10.96.0.10".parse().unwrap(),
                port: 80,
                protocol: Protocol::Udp,
            },
            scheduler: Scheduler::SourceHashing,
            persistence_timeout: Some(600),
        };
        let mut body = vec![IPVS_CMD_NEW_SERVICE, IPVS_GENL_VERSION, 0, 0];
        body.extend(service_attrs(&s).expect("encode"));
        assert_eq!(parse_service(&body), Some(s.clone()));
        let d = Destination {
            address: "10.244.1.10".parse().unwrap(),
            port: 8080,
            weight: 1,
        };
        let mut body = vec![IPVS_CMD_NEW_DEST, IPVS_GENL_VERSION, 0, 0];
        body.extend(dest_attrs(&s.key, &d).expect("encode"));
        assert_eq!(parse_dest(libc::AF_INET as u16, &body), Some((d, 0)));
        // Both thresholds are there: the kernel refuses a destination without them.
        let nested: Vec<u16> = attrs(&body[4..])
            .filter(|(k, _)| *k == IPVS_CMD_ATTR_DEST)
            .flat_map(|(_, v)| attrs(v).map(|(k, _)| k).collect::<Vec<_>>())
            .collect();
        assert!(nested.contains(&IPVS_DEST_ATTR_U_THRESH) && nested.contains(&IPVS_DEST_ATTR_L_THRESH));
    }

    /// Detects rather than assumes: without IP_VS the family lookup fails with the
    /// clear refusal; with it (loaded) the family resolves and the table can be read.
    #[test]
    fn the_family_lookup_matches_what_the_kernel_has() {
        if std::path::Path::new("/proc/net/ip_vs").exists() {
            let ipvs = NetlinkIpvs::open().expect("IP_VS is loaded: the family resolves");
            // Reading needs no privileges beyond the socket; writing would need root.
            if let Err(e) = ipvs.state() {
                assert!(e.to_string().contains("ermission"), "{e}");
            }
        } else {
            let err = NetlinkIpvs::open().err().expect("no IPVS family here").to_string();
            assert!(err.contains("--mode nftables"), "{err}");
        }
    }
}
