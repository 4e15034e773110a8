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
    netlink::{NLM_F_ACK, NLM_F_REQUEST, NetlinkError, Socket, encode_message, put_attr, put_nested},
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
    let (batch, seqs) = encode(&socket, ops);
    socket.send_raw(&batch)?;
    socket.receive_acks(&seqs)
}

/// The batch, and the sequence numbers of the messages the kernel acknowledges.
fn encode(socket: &Socket, ops: &[&ElementOp]) -> (Vec<u8>, Vec<u32>) {
    let mut buf = Vec::new();
    let mut seqs = Vec::new();
    // The batch markers carry the subsystem in res_id (big-endian), the family unspecified.
    let subsys = NFNL_SUBSYS_NFTABLES.to_be_bytes();
    let marker = [libc::AF_UNSPEC as u8, 0, subsys[0], subsys[1]];
    encode_message(
        &mut buf,
        socket.next_seq(),
        NFNL_MSG_BATCH_BEGIN,
        NLM_F_REQUEST,
        &marker,
        &[],
    );
    for op in ops {
        let family = match op.family {
            IpFamily::V4 => libc::NFPROTO_IPV4 as u8,
            IpFamily::V6 => libc::NFPROTO_IPV6 as u8,
        };
        let mut attrs = Vec::new();
        put_attr(&mut attrs, NFTA_SET_ELEM_LIST_TABLE, &cstr(TABLE));
        put_attr(&mut attrs, NFTA_SET_ELEM_LIST_SET, &cstr(&op.set));
        put_nested(&mut attrs, NFTA_SET_ELEM_LIST_ELEMENTS, |list| {
            for elem in &op.elems {
                put_nested(list, NFTA_LIST_ELEM, |e| element(e, elem, op.add));
            }
        });
        let (kind, flags) = if op.add {
            (NFT_MSG_NEWSETELEM, NLM_F_REQUEST | NLM_F_ACK | NLM_F_CREATE)
        } else {
            (NFT_MSG_DELSETELEM, NLM_F_REQUEST | NLM_F_ACK)
        };
        let seq = socket.next_seq();
        seqs.push(seq);
        encode_message(
            &mut buf,
            seq,
            (NFNL_SUBSYS_NFTABLES << 8) | kind,
            flags,
            &[family, 0, 0, 0],
            &attrs,
        );
    }
    encode_message(
        &mut buf,
        socket.next_seq(),
        NFNL_MSG_BATCH_END,
        NLM_F_REQUEST,
        &marker,
        &[],
    );
    (buf, seqs)
}

fn cstr(s: &str) -> Vec<u8> {
    let mut v = s.as_bytes().to_vec();
    v.push(0);
    v
}

/// One element: its key, and with `add` its value. Concatenated fields are each padded
/// to 4 bytes, as nf_tables registers hold them; ports are big-endian like the packet,
/// a numgen slot is host-endian like the register numgen writes.
fn element(buf: &mut Vec<u8>, elem: &Elem, add: bool) {
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
    put_nested(buf, NFTA_SET_ELEM_KEY, |k| put_attr(k, NFTA_DATA_VALUE, &key));
    if !add {
        return;
    }
    if let Some(v) = value {
        put_nested(buf, NFTA_SET_ELEM_DATA, |d| put_attr(d, NFTA_DATA_VALUE, &v));
    }
    if let Some(v) = verdict {
        put_nested(buf, NFTA_SET_ELEM_DATA, |d| {
            put_nested(d, NFTA_DATA_VERDICT, |vd| match v {
                Verdict::Drop => put_attr(vd, NFTA_VERDICT_CODE, &NF_DROP.to_be_bytes()),
                Verdict::Goto(chain) => {
                    put_attr(vd, NFTA_VERDICT_CODE, &NFT_GOTO.to_be_bytes());
                    put_attr(vd, NFTA_VERDICT_CHAIN, &cstr(chain));
                }
            });
        });
    }
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
        element(&mut buf, &elem, true);
        let words = |b: &[u8]| -> Vec<u32> { b.chunks(4).map(|c| u32::from_ne_bytes(c.try_into().unwrap())).collect() };
        // key: nested(4) + value attr(4) + 16 bytes; data: nested(4) + attr(4) + 8 bytes.
        assert_eq!(words(&buf[8..24]), [0x0101010a, 0x11, 0x3500, 3]);
        assert_eq!(words(&buf[32..40]), [0x0100000a, 0x5000]);
    }
}
