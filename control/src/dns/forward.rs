//! Names outside the cluster go to the upstream resolvers (the node's, by default), tried in
//! order, as CoreDNS's `forward . /etc/resolv.conf` does. The client's message is relayed
//! as it came; the answer is decoded by hickory and re-encoded for the client.

use std::{
    net::{IpAddr, SocketAddr},
    path::Path,
    time::Duration,
};

use hickory_proto::op::Message;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

/// How long one upstream gets before the next is tried.
const UPSTREAM_TIMEOUT: Duration = Duration::from_secs(2);

#[derive(Debug, thiserror::Error)]
pub enum ForwardError {
    #[error("no upstream resolvers are configured")]
    NoUpstreams,
    #[error("no upstream resolver answered ({0})")]
    Failed(String),
}

#[derive(Debug, Clone, Default)]
pub struct Forwarder {
    pub upstreams: Vec<SocketAddr>,
}

/// The `nameserver` lines of a resolv.conf (port 53).
pub fn nameservers(resolv_conf: &str) -> Vec<SocketAddr> {
    resolv_conf
        .lines()
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            (words.next() == Some("nameserver")).then(|| words.next()).flatten()
        })
        .filter_map(|ip| ip.split('%').next()?.parse::<IpAddr>().ok())
        .map(|ip| SocketAddr::new(ip, 53))
        .collect()
}

pub fn nameservers_of(path: &Path) -> std::io::Result<Vec<SocketAddr>> {
    Ok(nameservers(&std::fs::read_to_string(path)?))
}

/// `IP`, `IP:PORT` or `[IPv6]:PORT`.
pub fn parse_upstream(s: &str) -> Result<SocketAddr, String> {
    if let Ok(addr) = s.parse::<SocketAddr>() {
        return Ok(addr);
    }
    s.parse::<IpAddr>()
        .map(|ip| SocketAddr::new(ip, 53))
        .map_err(|_| format!("{s:?} is not an IP address or IP:PORT"))
}

impl Forwarder {
    /// Relays `query` (a whole DNS message) to the upstreams; `tcp` when the client came over
    /// TCP or the UDP answer was truncated.
    pub async fn forward(&self, query: &[u8], tcp: bool) -> Result<Message, ForwardError> {
        if self.upstreams.is_empty() {
            return Err(ForwardError::NoUpstreams);
        }
        let mut errors = Vec::new();
        for upstream in &self.upstreams {
            let attempt = async {
                if !tcp {
                    let reply = udp(*upstream, query).await?;
                    if !reply.metadata.truncation {
                        return Ok(reply);
                    }
                }
                tcp_exchange(*upstream, query).await
            };
            match tokio::time::timeout(UPSTREAM_TIMEOUT, attempt).await {
                Ok(Ok(reply)) => return Ok(reply),
                Ok(Err(e)) => errors.push(format!("{upstream}: {e}")),
                Err(_) => errors.push(format!("{upstream}: timed out")),
            }
        }
        Err(ForwardError::Failed(errors.join("; ")))
    }
}

/// One question and its answer over UDP or TCP (also the tests' and benchmark's client).
pub async fn exchange(server: SocketAddr, query: &[u8], tcp: bool) -> anyhow::Result<Message> {
    if tcp {
        tcp_exchange(server, query).await
    } else {
        udp(server, query).await
    }
}

async fn udp(upstream: SocketAddr, query: &[u8]) -> anyhow::Result<Message> {
    let bind: SocketAddr = if upstream.is_ipv4() {
        "0.0.0.0:0".parse()?
    } else {
        "[::]:0".parse()?
    };
    let socket = UdpSocket::bind(bind).await?;
    socket.connect(upstream).await?;
    socket.send(query).await?;
    let mut buf = vec![0u8; 65535];
    loop {
        let n = socket.recv(&mut buf).await?;
        let reply = Message::from_vec(&buf[..n])?;
        // A stray datagram (another id) is not our answer.
        if query.len() >= 2 && reply.metadata.id == u16::from_be_bytes([query[0], query[1]]) {
            return Ok(reply);
        }
    }
}

/// DNS over TCP: each message is preceded by its length (RFC 1035 4.2.2).
async fn tcp_exchange(upstream: SocketAddr, query: &[u8]) -> anyhow::Result<Message> {
    let mut stream = TcpStream::connect(upstream).await?;
    let len = u16::try_from(query.len())?;
    let mut framed = Vec::with_capacity(query.len() + 2);
    framed.extend_from_slice(&len.to_be_bytes());
    framed.extend_from_slice(query);
    stream.write_all(&framed).await?;
    let mut len = [0u8; 2];
    stream.read_exact(&mut len).await?;
    let mut buf = vec![0u8; u16::from_be_bytes(len) as usize];
    stream.read_exact(&mut buf).await?;
    Ok(Message::from_vec(&buf)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn resolv_conf_nameservers_in_order() {
        let text = "# generated\nsearch example.com\nnameserver 10.0.0.2\nnameserver fe80::1%eth0\n  nameserver   1.1.1.1  \noptions ndots:2\n";
        assert_eq!(
            nameservers(text),
            vec![
                "10.0.0.2:53".parse().unwrap(),
                "[fe80::1]:53".parse().unwrap(),
                "1.1.1.1:53".parse().unwrap()
            ]
        );
        assert!(nameservers("search x\n").is_empty());
    }

    #[test]
    fn upstream_flags() {
        assert_eq!(parse_upstream("8.8.8.8"), Ok("8.8.8.8:53".parse().unwrap()));
        assert_eq!(parse_upstream("127.0.0.1:5353"), Ok("127.0.0.1:5353".parse().unwrap()));
        assert_eq!(parse_upstream("[::1]:54"), Ok("[::1]:54".parse().unwrap()));
        assert!(parse_upstream("dns.example").is_err());
    }

    #[tokio::test]
    async fn no_upstreams_is_its_own_error() {
        let f = Forwarder::default();
        assert!(matches!(
            f.forward(&[0, 1], false).await,
            Err(ForwardError::NoUpstreams)
        ));
    }
}
