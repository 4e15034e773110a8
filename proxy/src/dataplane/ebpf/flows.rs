//! `rudder-proxy flows`: which backend each new flow was sent to, read live from the
//! pinned ring buffer of a proxy running with `--flow-events`.

use std::{
    net::{Ipv4Addr, SocketAddr},
    path::Path,
    time::Duration,
};

use aya::maps::{Map, MapData, RingBuf};
use rudder_abi::{
    lb::{FlowEvent, FlowEvent6, PROTO_TCP, PROTO_UDP},
    names,
};

use super::{
    EbpfError,
    tables::{BackendAddr, v6_addr},
};

/// One new flow, of either family.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    pub proto: u8,
    pub client: SocketAddr,
    pub frontend: SocketAddr,
    pub backend: SocketAddr,
    pub service_id: u32,
}

/// One ring buffer record: a [`FlowEvent`] or a [`FlowEvent6`], told apart by size (`None`
/// if it is neither).
pub fn decode(bytes: &[u8]) -> Option<Flow> {
    fn read<T: Copy>(bytes: &[u8]) -> T {
        // SAFETY: the caller checked the length; the events are plain old data, read unaligned.
        unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<T>()) }
    }
    let v4 = |addr: u32, port: u16| SocketAddr::new(Ipv4Addr::from(u32::from_be(addr)).into(), u16::from_be(port));
    let v6 = |addr: [u32; 4], port: u16| SocketAddr::new(v6_addr(addr).into(), u16::from_be(port));
    match bytes.len() {
        n if n == std::mem::size_of::<FlowEvent>() => {
            let e: FlowEvent = read(bytes);
            Some(Flow {
                proto: e.proto,
                client: v4(e.client, e.client_port),
                frontend: v4(e.vip, e.vport),
                backend: BackendAddr::V4(e.backend).into(),
                service_id: e.service_id,
            })
        }
        n if n == std::mem::size_of::<FlowEvent6>() => {
            let e: FlowEvent6 = read(bytes);
            Some(Flow {
                proto: e.proto,
                client: v6(e.client, e.client_port),
                frontend: v6(e.vip, e.vport),
                backend: BackendAddr::V6(e.backend).into(),
                service_id: e.service_id,
            })
        }
        _ => None,
    }
}

/// One line per event: protocol, client, frontend, chosen backend, service id.
pub fn line(e: &Flow) -> String {
    let proto = match e.proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    };
    format!(
        "{proto} {} -> {} => {} (service id {})",
        e.client, e.frontend, e.backend, e.service_id
    )
}

/// Prints events as they come, `count` of them (or until killed when `None`).
pub fn follow(root: &Path, count: Option<usize>, mut out: impl FnMut(String)) -> Result<(), EbpfError> {
    let data = MapData::from_pin(root.join(names::FLOW_EVENTS)).map_err(|source| EbpfError::Map {
        name: names::FLOW_EVENTS,
        source,
    })?;
    let mut ring = RingBuf::try_from(Map::RingBuf(data)).map_err(|source| EbpfError::Map {
        name: names::FLOW_EVENTS,
        source,
    })?;
    let mut seen = 0;
    loop {
        while let Some(item) = ring.next() {
            if let Some(e) = decode(&item) {
                out(line(&e));
                seen += 1;
                if count.is_some_and(|c| seen >= c) {
                    return Ok(());
                }
            }
        }
        // A ring buffer can be polled through its fd; a short sleep keeps this simple and
        // costs at most that much delay.
        std::thread::sleep(Duration::from_millis(50));
    }
}
