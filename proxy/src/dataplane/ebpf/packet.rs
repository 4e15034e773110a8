//! Ethernet/IPv4 and Ethernet/IPv6 frames for the fixture tests and the per-packet
//! benchmark: built with correct checksums, and read back with the checksums verified, so a
//! test states what a receiver would see.

use std::net::{Ipv4Addr, Ipv6Addr};

pub const PROTO_ICMP: u8 = 1;
pub const PROTO_ICMPV6: u8 = 58;
pub const PROTO_TCP: u8 = 6;
pub const PROTO_UDP: u8 = 17;
pub const TCP_FIN: u8 = 0x01;
pub const TCP_SYN: u8 = 0x02;
pub const TCP_ACK: u8 = 0x10;

/// The MACs every built frame carries (what a test checks the program replaced).
pub const SRC_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xaa];
pub const DST_MAC: [u8; 6] = [0x02, 0, 0, 0, 0, 0xbb];

fn sum16(data: &[u8], mut acc: u32) -> u32 {
    for chunk in data.chunks(2) {
        let word = if chunk.len() == 2 {
            u16::from_be_bytes([chunk[0], chunk[1]])
        } else {
            u16::from(chunk[0]) << 8
        };
        acc += u32::from(word);
    }
    acc
}

fn fold(mut acc: u32) -> u16 {
    while acc > 0xffff {
        acc = (acc & 0xffff) + (acc >> 16);
    }
    !(acc as u16)
}

fn pseudo(src: Ipv4Addr, dst: Ipv4Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(12);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&[0, proto]);
    p.extend_from_slice(&(len as u16).to_be_bytes());
    sum16(&p, 0)
}

/// A TCP (with `flags`) or UDP frame from `src` to `dst` carrying `payload`.
pub fn frame(proto: u8, src: (Ipv4Addr, u16), dst: (Ipv4Addr, u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    let l4_len = if proto == PROTO_TCP { 20 } else { 8 } + payload.len();
    let mut f = Vec::with_capacity(34 + l4_len);
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x08, 0x00]);
    let mut ip = [0u8; 20];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&((20 + l4_len) as u16).to_be_bytes());
    ip[6] = 0x40; // don't fragment
    ip[8] = 64;
    ip[9] = proto;
    ip[12..16].copy_from_slice(&src.0.octets());
    ip[16..20].copy_from_slice(&dst.0.octets());
    let c = fold(sum16(&ip, 0));
    ip[10..12].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&ip);
    let mut l4 = vec![0u8; l4_len - payload.len()];
    l4[0..2].copy_from_slice(&src.1.to_be_bytes());
    l4[2..4].copy_from_slice(&dst.1.to_be_bytes());
    if proto == PROTO_TCP {
        l4[4..8].copy_from_slice(&1000u32.to_be_bytes());
        l4[12] = 5 << 4;
        l4[13] = flags;
        l4[14..16].copy_from_slice(&65535u16.to_be_bytes());
    } else {
        l4[4..6].copy_from_slice(&(l4_len as u16).to_be_bytes());
    }
    l4.extend_from_slice(payload);
    let at = if proto == PROTO_TCP { 16 } else { 6 };
    let c = fold(sum16(&l4, pseudo(src.0, dst.0, proto, l4_len)));
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f.extend_from_slice(&l4);
    f
}

/// `frame` with its L4 checksum as a sender with checksum offload leaves it (the pseudo
/// header's sum only; the device would add the rest): what a packet from a local veth
/// carries.
pub fn with_partial_checksum(frame: &[u8]) -> Vec<u8> {
    let mut f = frame.to_vec();
    let ip = &f[14..34];
    let (proto, src, dst) = (
        ip[9],
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    );
    let l4_len = f.len() - 34;
    let at = 34 + if proto == PROTO_TCP { 16 } else { 6 };
    let c = !fold(pseudo(src, dst, proto, l4_len));
    f[at..at + 2].copy_from_slice(&c.to_be_bytes());
    f
}

/// What a receiver reads from a frame whose checksums all hold.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub proto: u8,
    pub src: Ipv4Addr,
    pub dst: Ipv4Addr,
    /// Ports for TCP/UDP; (type, code) for ICMP.
    pub sport: u16,
    pub dport: u16,
    /// ICMP: the quoted packet's (source, destination) addresses and ports.
    pub quoted: Option<((Ipv4Addr, u16), (Ipv4Addr, u16))>,
}

/// Parses `f`, failing with the reason if any checksum is wrong or the frame is cut.
pub fn read(f: &[u8]) -> Result<Seen, String> {
    if f.len() < 34 || f[12..14] != [0x08, 0x00] {
        return Err(format!("not an IPv4 frame ({} bytes)", f.len()));
    }
    let ip = &f[14..];
    let ihl = usize::from(ip[0] & 0x0f) * 4;
    let total = usize::from(u16::from_be_bytes([ip[2], ip[3]]));
    if ip.len() < total || total < ihl {
        return Err(format!("IP total length {total} but {} bytes", ip.len()));
    }
    if fold(sum16(&ip[..ihl], 0)) != 0 {
        return Err("bad IP header checksum".into());
    }
    let (proto, src, dst) = (
        ip[9],
        Ipv4Addr::new(ip[12], ip[13], ip[14], ip[15]),
        Ipv4Addr::new(ip[16], ip[17], ip[18], ip[19]),
    );
    let l4 = &ip[ihl..total];
    let mut seen = Seen {
        dst_mac: f[0..6].try_into().map_err(|_| "short")?,
        src_mac: f[6..12].try_into().map_err(|_| "short")?,
        proto,
        src,
        dst,
        sport: 0,
        dport: 0,
        quoted: None,
    };
    match proto {
        PROTO_TCP | PROTO_UDP => {
            let udp_unchecked = proto == PROTO_UDP && l4[6..8] == [0, 0];
            if !udp_unchecked && fold(sum16(l4, pseudo(src, dst, proto, l4.len()))) != 0 {
                return Err(format!(
                    "bad {} checksum",
                    if proto == PROTO_TCP { "TCP" } else { "UDP" }
                ));
            }
            seen.sport = u16::from_be_bytes([l4[0], l4[1]]);
            seen.dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        PROTO_ICMP => {
            if fold(sum16(l4, 0)) != 0 {
                return Err("bad ICMP checksum".into());
            }
            seen.sport = u16::from(l4[0]);
            seen.dport = u16::from(l4[1]);
            let q = &l4[8..];
            if q.len() >= 28 {
                let qsrc = Ipv4Addr::new(q[12], q[13], q[14], q[15]);
                let qdst = Ipv4Addr::new(q[16], q[17], q[18], q[19]);
                let ports = &q[20..];
                seen.quoted = Some((
                    (qsrc, u16::from_be_bytes([ports[0], ports[1]])),
                    (qdst, u16::from_be_bytes([ports[2], ports[3]])),
                ));
            }
        }
        other => return Err(format!("unexpected protocol {other}")),
    }
    Ok(seen)
}

fn pseudo6(src: Ipv6Addr, dst: Ipv6Addr, proto: u8, len: usize) -> u32 {
    let mut p = Vec::with_capacity(40);
    p.extend_from_slice(&src.octets());
    p.extend_from_slice(&dst.octets());
    p.extend_from_slice(&(len as u32).to_be_bytes());
    p.extend_from_slice(&[0, 0, 0, proto]);
    sum16(&p, 0)
}

/// [`frame`] over IPv6.
pub fn frame6(proto: u8, src: (Ipv6Addr, u16), dst: (Ipv6Addr, u16), flags: u8, payload: &[u8]) -> Vec<u8> {
    // The IPv4 frame's L4 part is the same bytes; only its checksum differs.
    let v4 = frame(
        proto,
        (Ipv4Addr::UNSPECIFIED, src.1),
        (Ipv4Addr::UNSPECIFIED, dst.1),
        flags,
        payload,
    );
    let mut l4 = v4[34..].to_vec();
    let at = if proto == PROTO_TCP { 16 } else { 6 };
    l4[at..at + 2].copy_from_slice(&[0, 0]);
    let c = fold(sum16(&l4, pseudo6(src.0, dst.0, proto, l4.len())));
    l4[at..at + 2].copy_from_slice(&c.to_be_bytes());
    let mut f = Vec::with_capacity(54 + l4.len());
    f.extend_from_slice(&DST_MAC);
    f.extend_from_slice(&SRC_MAC);
    f.extend_from_slice(&[0x86, 0xdd]);
    f.extend_from_slice(&[0x60, 0, 0, 0]);
    f.extend_from_slice(&(l4.len() as u16).to_be_bytes());
    f.extend_from_slice(&[proto, 64]);
    f.extend_from_slice(&src.0.octets());
    f.extend_from_slice(&dst.0.octets());
    f.extend_from_slice(&l4);
    f
}

/// The folded pseudo-header sum of an IPv6 frame: the L4 checksum a sender with checksum
/// offload leaves in it (see [`with_partial_checksum`]).
pub fn pseudo_sum6(frame: &[u8]) -> u16 {
    let ip = &frame[14..54];
    let (src, dst) = (v6_at(ip, 8), v6_at(ip, 24));
    !fold(pseudo6(src, dst, ip[6], frame.len() - 54))
}

/// [`Seen`] for IPv6 frames.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Seen6 {
    pub dst_mac: [u8; 6],
    pub src_mac: [u8; 6],
    pub proto: u8,
    pub src: Ipv6Addr,
    pub dst: Ipv6Addr,
    /// Ports for TCP/UDP; (type, code) for ICMPv6.
    pub sport: u16,
    pub dport: u16,
    /// ICMPv6: the quoted packet's (source, destination) addresses and ports.
    pub quoted: Option<((Ipv6Addr, u16), (Ipv6Addr, u16))>,
}

fn v6_at(b: &[u8], at: usize) -> Ipv6Addr {
    let mut o = [0u8; 16];
    o.copy_from_slice(&b[at..at + 16]);
    Ipv6Addr::from(o)
}

/// [`read`] for IPv6 frames (no extension headers).
pub fn read6(f: &[u8]) -> Result<Seen6, String> {
    if f.len() < 54 || f[12..14] != [0x86, 0xdd] {
        return Err(format!("not an IPv6 frame ({} bytes)", f.len()));
    }
    let ip = &f[14..];
    let len = usize::from(u16::from_be_bytes([ip[4], ip[5]]));
    if ip.len() < 40 + len {
        return Err(format!("IPv6 payload length {len} but {} bytes", ip.len() - 40));
    }
    let (proto, src, dst) = (ip[6], v6_at(ip, 8), v6_at(ip, 24));
    let l4 = &ip[40..40 + len];
    if fold(sum16(l4, pseudo6(src, dst, proto, l4.len()))) != 0 {
        return Err(format!("bad checksum (protocol {proto})"));
    }
    let mut seen = Seen6 {
        dst_mac: f[0..6].try_into().map_err(|_| "short")?,
        src_mac: f[6..12].try_into().map_err(|_| "short")?,
        proto,
        src,
        dst,
        sport: 0,
        dport: 0,
        quoted: None,
    };
    match proto {
        PROTO_TCP | PROTO_UDP => {
            seen.sport = u16::from_be_bytes([l4[0], l4[1]]);
            seen.dport = u16::from_be_bytes([l4[2], l4[3]]);
        }
        PROTO_ICMPV6 => {
            seen.sport = u16::from(l4[0]);
            seen.dport = u16::from(l4[1]);
            let q = &l4[8..];
            if q.len() >= 44 {
                let port = |at: usize| u16::from_be_bytes([q[at], q[at + 1]]);
                seen.quoted = Some(((v6_at(q, 8), port(40)), (v6_at(q, 24), port(42))));
            }
        }
        other => return Err(format!("unexpected protocol {other}")),
    }
    Ok(seen)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn built_frames_read_back_with_valid_checksums() {
        let a = (Ipv4Addr::new(10, 244, 1, 50), 40000);
        let b = (Ipv4Addr::new(10, 96, 0, 10), 80);
        for proto in [PROTO_TCP, PROTO_UDP] {
            let f = frame(proto, a, b, TCP_SYN, b"hello");
            let seen = read(&f).unwrap();
            assert_eq!((seen.src, seen.sport, seen.dst, seen.dport), (a.0, a.1, b.0, b.1));
            let mut broken = f.clone();
            let last = broken.len() - 1;
            broken[last] ^= 1;
            assert!(
                read(&broken).is_err(),
                "a flipped payload bit must fail the L4 checksum"
            );
        }
    }

    #[test]
    fn built_ipv6_frames_read_back_with_valid_checksums() {
        let a: (Ipv6Addr, u16) = ("fd00:10:244:1::32".parse().unwrap(), 40000);
        let b: (Ipv6Addr, u16) = ("fd00:10:96::a".parse().unwrap(), 80);
        for proto in [PROTO_TCP, PROTO_UDP] {
            let f = frame6(proto, a, b, TCP_SYN, b"hello");
            let seen = read6(&f).unwrap();
            assert_eq!((seen.src, seen.sport, seen.dst, seen.dport), (a.0, a.1, b.0, b.1));
            let mut broken = f.clone();
            let last = broken.len() - 1;
            broken[last] ^= 1;
            assert!(
                read6(&broken).is_err(),
                "a flipped payload bit must fail the L4 checksum"
            );
        }
    }
}
