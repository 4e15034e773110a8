//! `rudder-proxy flows`: which backend each new flow was sent to, read live from the
//! pinned ring buffer of a proxy running with `--flow-events`.

use std::{net::Ipv4Addr, path::Path, time::Duration};

use aya::maps::{Map, MapData, RingBuf};
use rudder_abi::{
    lb::{FlowEvent, PROTO_TCP, PROTO_UDP},
    names,
};

use super::EbpfError;

/// One ring buffer record as a [`FlowEvent`] (`None` if it is not one).
pub fn decode(bytes: &[u8]) -> Option<FlowEvent> {
    if bytes.len() < std::mem::size_of::<FlowEvent>() {
        return None;
    }
    // SAFETY: length checked; FlowEvent is plain old data and read unaligned.
    Some(unsafe { std::ptr::read_unaligned(bytes.as_ptr().cast::<FlowEvent>()) })
}

/// One line per event: protocol, client, frontend, chosen backend, service id.
pub fn line(e: &FlowEvent) -> String {
    let a = |addr: u32, port: u16| format!("{}:{}", Ipv4Addr::from(u32::from_be(addr)), u16::from_be(port));
    let proto = match e.proto {
        PROTO_TCP => "TCP",
        PROTO_UDP => "UDP",
        _ => "?",
    };
    format!(
        "{proto} {} -> {} => {} (service id {})",
        a(e.client, e.client_port),
        a(e.vip, e.vport),
        a(e.backend.addr, e.backend.port),
        e.service_id
    )
}

/// Prints events as they come, `count` of them (or until killed when `None`).
pub fn follow(root: &Path, count: Option<usize>, mut out: impl FnMut(String)) -> Result<(), EbpfError> {
    let data = MapData::from_pin(root.join(names::FLOW_EVENTS))
        .map_err(|source| EbpfError::Map { name: names::FLOW_EVENTS, source })?;
    let mut ring =
        RingBuf::try_from(Map::RingBuf(data)).map_err(|source| EbpfError::Map { name: names::FLOW_EVENTS, source })?;
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
