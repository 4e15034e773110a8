//! Element-only syncs straight over netlink, as one nf_tables batch (one transaction, so
//! a refused element leaves every other one as it was).
//!
//! Why not `nft -f`: before it sends anything, `nft` downloads the table's chains and sets
//! into its cache, which at 10k Services costs about 40 ms, while the kernel applies a
//! few elements in well under one. Replacing an endpoint, the most common change, touches
//! only elements (see [`super::ruleset::SlotKey`]), so it takes this path; anything that
//! adds or removes chains, rules or sets still goes through `nft`.

use std::net::IpAddr;

use super::{
    render::{Elem, ElementOp, TABLE},
    ruleset::Verdict,
};
use crate::{
    model::{IpFamily, Protocol},
    netlink::{
        MAX_ATTR_PAYLOAD, NLA_F_NESTED, NLM_F_ACK, NLM_F_REQUEST, NetlinkError, Socket, encode_message, put_attr,
        put_nested,
    },
};

const NETLINK_NETFILTER: i32 = 12;
const NFNL_SUBSYS_NFTABLES: u16 = 10;
const NFNL_MSG_BATCH_BEGIN: u16 = 0x10;
const NFNL_MSG_BATCH_END: u16 = 0x11;
const NFT_MSG_NEWSETELEM: u16 = 12;
const NFT_MSG_DELSETELEM: u16 = 14;
const NLM_F_CREATE: u16 = 0x400;

const NFTA_SET_ELEM_LIST_TABLE: u16 = 1;
const NFTA_SET_ELEM_LIST_SET: u16 = 2;
const NFTA_SET_ELEM_LIST_ELEMENTS: u16 = 3;
const NFTA_LIST_ELEM: u16 = 1;
const NFTA_SET_ELEM_KEY: u16 = 1;
const NFTA_SET_ELEM_DATA: u16 = 2;
const NFTA_DATA_VALUE: u16 = 1;
const NFTA_DATA_VERDICT: u16 = 2;
const NFTA_VERDICT_CODE: u16 = 1;
const NFTA_VERDICT_CHAIN: u16 = 2;
const NF_DROP: i32 = 0;
const NFT_GOTO: i32 = -4;

/// Applies `ops` in order, in one transaction.
pub fn apply(ops: &[&ElementOp]) -> Result<(), NetlinkError> {
    if ops.is_empty() {
        return Ok(());
    }
    let socket = Socket::open(NETLINK_NETFILTER)?;
    let batch = encode(&socket, ops)?;
    socket.reserve_send_buffer(batch.bytes.len())?;
    socket.send_raw(&batch.bytes)?;
    socket.receive_batch_ack(&batch.seqs, batch.last)
}

/// One nfnetlink batch: its bytes, the sequence numbers of its element messages, and the
/// one of them that asks for an ACK (the last).
struct Batch {
    bytes: Vec<u8>,
    seqs: Vec<u32>,
    last: u32,
}

/// The batch. An attribute holds at most 64 KiB, so an op whose elements do not fit in one
/// message's element list is split over several messages for the same set; they stay in
/// the one batch, so the kernel still applies all of them or none.
fn encode(socket: &Socket, ops: &[&ElementOp]) -> Result<Batch, NetlinkError> {
    let mut messages = Vec::new();
    for op in ops {
        let family = match op.family {
            IpFamily::V4 => libc::NFPROTO_IPV4 as u8,
            IpFamily::V6 => libc::NFPROTO_IPV6 as u8,
        };
        let (kind, flags) = if op.add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST)
        };
        for list in element_lists(op)? {
            let mut attrs = Vec::new();
            put_attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &cstr(TABLE))?;
            put_attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &cstr(&op.set))?;
            put_attr(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS | NLA_F_NESTED, &list)?;
            messages.push(((NFNL_SUBSYS_NFTABLES << 8) | kind, flags, family, attrs));
        }
    }
    let mut bytes = Vec::new();
    let mut seqs = Vec::new();
    // The batch markers carry the subsystem in res_id (big-endian), the family unspecified.
    let subsys = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    let marker = [libc::AF_UNSPEC as u8, 0, subsys[0], subsys[1]];
    encode_message(
        &mut bytes,
        socket.next_seq(),
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        &marker,
        &[],
    )?;
    let count = messages.len();
    for (i, (kind, flags, family, attrs)) in messages.into_iter().enumerate() {
        let seq = socket.next_seq();
        seqs.push(seq);
        let flags = if i + 1 == count { flags | NLM_F_ACK } else { flags };
        encode_message(&mut bytes, seq, kind, flags, &[family, 0, 0, 0], &attrs)?;
    }
    encode_message(
        &mut bytes,
        socket.next_seq(),
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        &marker,
        &[],
    )?;
    let last = *seqs
        .last()
        .ok_or(NetlinkError::Malformed("an element batch without elements"))?;
    Ok(Batch { bytes, seqs, last })
}

/// The payloads of `NFTA_SET_ELEM_LIST_ELEMENTS` for `op`: its `NFTA_LIST_ELEM`s, packed
/// into as few lists as hold them within one attribute's length.
fn element_lists(op: &ElementOp) -> Result<Vec<Vec<u8>>, NetlinkError> {
    let mut lists = vec![Vec::new()];
    for elem in &op.elems {
        let mut one = Vec::new();
        put_nested(&mut one, NFTA_LIST_ELEM, |e| element(e, elem, op.add))?;
        let current = lists.last_mut().expect("lists starts non-empty");
        if !current.is_empty() && current.len() + one.len() > MAX_ATTR_PAYLOAD {
            lists.push(one);
        } else {
            current.extend_from_slice(&one);
        }
    }
    Ok(lists)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One element: its key, and with `add` its value. Concatenated fields are each padded
/// to 4 bytes, as nf_tables registers hold them; ports are big-endian like the packet,
/// a numgen slot is host-endian like the register numgen writes.
fn element(buf: &mut Vec<u8>, elem: &Elem, add: bool) -> Result<(), NetlinkError> {
    let mut key = Vec::new();
    let mut value: Option<Vec<u8>> = None;
    let mut verdict: Option<&Verdict> = None;
    match elem {
        Elem::Addr(a) => addr(&mut key, *a),
        Elem::Pair(a) => {
            addr(&mut key, *a);
            addr(&mut key, *a);
        }
        Elem::Cidr(_) => unreachable!("interval elements never take the netlink path"),
        Elem::Service((a, p, port), v) => {
            addr(&mut key, *a);
            proto(&mut key, *p);
            be_port(&mut key, *port);
            verdict = Some(v);
        }
        Elem::NodePort((p, port), v) => {
            proto(&mut key, *p);
            be_port(&mut key, *port);
            verdict = Some(v);
        }
        Elem::Slot((a, p, port, slot), (to, to_port)) => {
            addr(&mut key, *a);
            proto(&mut key, *p);
            be_port(&mut key, *port);
            key.extend_from_slice(&slot.to_ne_bytes());
            let mut v = Vec::new();
            addr(&mut v, *to);
            be_port(&mut v, *to_port);
            value = Some(v);
        }
    }
    put_nested(buf, NFTA_SET_ELEM_KEY, |k| put_attr(k, NFTA_DATA_VALUE, &key))?;
    if !add {
        return Ok(());
    }
    if let Some(v) = value {
        put_nested(buf, NFTA_SET_ELEM_DATA, |d| put_attr(d, NFTA_DATA_VALUE, &v))?;
    }
    if let Some(v) = verdict {
        put_nested(buf, NFTA_SET_ELEM_DATA, |d| {
            put_nested(d, NFTA_DATA_VERDICT, |vd| match v {
                Verdict::Drop => put_attr(vd, NFTA_VERDICT_CODE, &NF_DROP.to_be_bytes()),
                Verdict::Goto(chain) => {
                    put_attr(vd, NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes())?;
                    put_attr(vd, NFTA_VERDICT_CHAIN, &cstr(chain))
                }
            })
        })?;
    }
    Ok(())
}

fn addr(buf: &mut Vec<u8>, a: IpAddr) {
    match a {
        IpAddr::V4(a) => buf.extend_from_slice(&a.octets()),
        IpAddr::V6(a) => buf.extend_from_slice(&a.octets()),
    }
}

fn proto(buf: &mut Vec<u8>, p: Protocol) {
    let n = match p {
        Protocol::Tcp => 6u8,
        Protocol::Udp => 17,
        Protocol::Sctp => 132,
    };
    buf.extend_from_slice(&[n, 0, 0, 0]);
}

fn be_port(buf: &mut Vec<u8>, port: u16) {
    let b = port.to_be_bytes();
    buf.extend_from_slice(&[b[0], b[1], 0, 0]);
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The bytes `nft --debug=netlink add element ip r m { 10.1.1.1 . udp . 53 . 3 :
    /// 10.0.0.1 . 80 }` sends for an endpoint map slot (its words, printed host-endian:
    /// `0101010a 00000011 00003500 00000003 : 0100000a 00005000`).
    #[test]
    fn a_slot_encodes_like_nft_does() {
        let elem = Elem::Slot(
            ("10.1.1.1".parse().unwrap(), Protocol::Udp, 53, 3),
            ("10.0.0.1".parse().unwrap(), 80),
        );
        let mut buf = Vec::new();
        element(&mut buf, &elem, true).expect("encode");
        let words = |b: &[u8]| -> Vec<u32> { b.chunks(4).map(|c| u32::from_ne_bytes(c.try_into().unwrap())).collect() };
        // key: nested(4) + value attr(4) + 16 bytes; data: nested(4) + attr(4) + 8 bytes.
        assert_eq!(words(&buf[8..24]), [0x0101010a, 0x11, 0x3500, 3]);
        assert_eq!(words(&buf[32..40]), [0x0100000a, 0x5000]);
    }

    /// The elements of one message's `NFTA_SET_ELEM_LIST_ELEMENTS`, as the kernel would
    /// read them, for every element message in `batch`.
    fn decoded_elements(batch: &[u8]) -> usize {
        let mut rest = batch;
        let mut count = 0;
        while rest.len() >= crate::netlink::NLMSG_HDRLEN {
            let len = u32::from_ne_bytes(rest[0..4].try_into().unwrap()) as usize;
            let kind = u16::from_ne_bytes(rest[4..6].try_into().unwrap());
            let body = &rest[crate::netlink::NLMSG_HDRLEN..len];
            if kind & 0xff == NFT_MSG_NEWSETELEM || kind & 0xff == NFT_MSG_DELSETELEM {
                for (k, list) in crate::netlink::attrs(&body[4..]) {
                    if k == NFTA_SET_ELEM_LIST_ELEMENTS {
                        count += crate::netlink::attrs(list)
                            .filter(|(k, _)| *k == NFTA_LIST_ELEM)
                            .count();
                    }
                }
            }
            rest = &rest[crate::netlink::align(len).min(rest.len())..];
        }
        count
    }

    /// 10k endpoint slots are far more than one attribute's 64 KiB: the batch must carry
    /// every one of them, split over as many messages as it takes, never a truncated length.
    #[test]
    fn ten_thousand_elements_all_reach_the_kernel() {
        let elems: Vec<Elem> = (0..10_000u32)
            .map(|i| {
                let to = std::net::Ipv4Addr::from(0x0af4_0000 + i);
                Elem::Slot(("10.96.0.10".parse().unwrap(), Protocol::Tcp, 80, i), (to.into(), 8080))
            })
            .collect();
        let op = ElementOp {
            family: IpFamily::V4,
            add: true,
            set: "endpoints-tcp-7".into(),
            elems,
        };
        let socket = Socket::open(NETLINK_NETFILTER).expect("netlink socket");
        let batch = encode(&socket, &[&op]).expect("encode");
        assert_eq!(decoded_elements(&batch.bytes), 10_000, "elements lost in encoding");
        assert!(batch.seqs.len() > 1, "one message cannot hold 10k elements");
    }
}
