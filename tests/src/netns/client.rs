//! The echo client, run in-process: a thread `setns()`es into the namespace and does the
//! socket I/O there. A thread's network namespace is its own, so the rest of the test process
//! is unaffected, and this is far cheaper than spawning a process per request.

use std::{
    fmt,
    fs::File,
    io::{self, Read},
    net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, TcpStream, UdpSocket},
    os::fd::AsRawFd,
    thread,
    time::{Duration, Instant},
};

use super::{HarnessError, names::netns_path};

/// Replies longer than this are not from `rudder-echo`; stop reading rather than hang.
const MAX_REPLY: u64 = 4096;
/// What the UDP client sends; the server answers any datagram, this just makes captures readable.
const UDP_PROBE: &[u8] = b"rudder-echo?\n";

/// Runs `f` on a fresh thread that has entered `netns`, and returns what it returns.
/// Sockets `f` creates belong to `netns`. A panic in `f` is propagated to the caller.
pub fn with_netns<T: Send>(netns: &str, f: impl FnOnce() -> T + Send) -> Result<T, HarnessError> {
    let enter_error = |error| HarnessError::Enter {
        netns: netns.to_owned(),
        error,
    };
    let ns = File::open(netns_path(netns)).map_err(enter_error)?;
    thread::scope(|scope| {
        let handle = scope.spawn(move || {
            // SAFETY: `ns` is an open namespace file; setns only changes this thread, which
            // ends when `f` returns, so no other code ever runs in the wrong namespace.
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(io::Error::last_os_error());
            }
            drop(ns);
            Ok(f())
        });
        match handle.join() {
            Ok(result) => result.map_err(enter_error),
            Err(panic) => std::panic::resume_unwind(panic),
        }
    })
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Proto {
    Tcp,
    Udp,
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        })
    }
}

/// How an ask failed, coarse enough for tests to assert on.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AskErrorKind {
    /// TCP RST or ICMP port unreachable: the destination answered that nothing listens there.
    Refused,
    /// No answer at all within the timeout (dropped packets, or a server that never replied).
    Timeout,
    /// No route, or ICMP host/network unreachable.
    Unreachable,
    /// Anything else: reset after connecting, an empty reply, failing to enter the netns, ...
    Other,
}

impl fmt::Display for AskErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            AskErrorKind::Refused => "connection refused",
            AskErrorKind::Timeout => "timed out",
            AskErrorKind::Unreachable => "unreachable",
            AskErrorKind::Other => "failed",
        })
    }
}

/// A failed ask, naming the protocol, destination and the namespace it was sent from.
#[derive(Debug, thiserror::Error)]
#[error("{proto} {addr} from {}: {kind}: {detail}", origin(.netns))]
pub struct AskError {
    pub kind: AskErrorKind,
    pub proto: Proto,
    pub addr: SocketAddr,
    /// `None` when asked from the caller's own namespace (see [`ask`]).
    pub netns: Option<String>,
    pub detail: String,
}

fn origin(netns: &Option<String>) -> String {
    netns
        .as_ref()
        .map_or_else(|| "the current netns".to_owned(), |ns| format!("netns {ns}"))
}

/// Asks the echo server at `ip:port` for its name over TCP, from inside `netns`.
pub fn ask_tcp(netns: &str, ip: impl Into<IpAddr>, port: u16, timeout: Duration) -> Result<String, AskError> {
    ask_from(netns, Proto::Tcp, SocketAddr::new(ip.into(), port), timeout)
}

/// Asks the echo server at `ip:port` for its name with one UDP datagram, from inside `netns`.
pub fn ask_udp(netns: &str, ip: impl Into<IpAddr>, port: u16, timeout: Duration) -> Result<String, AskError> {
    ask_from(netns, Proto::Udp, SocketAddr::new(ip.into(), port), timeout)
}

fn ask_from(netns: &str, proto: Proto, addr: SocketAddr, timeout: Duration) -> Result<String, AskError> {
    let result = with_netns(netns, || ask(proto, addr, timeout)).unwrap_or_else(|err| {
        Err(AskError {
            kind: AskErrorKind::Other,
            proto,
            addr,
            netns: None,
            detail: err.to_string(),
        })
    });
    result.map_err(|err| AskError {
        netns: Some(netns.to_owned()),
        ..err
    })
}

/// Asks the echo server at `addr` for its name from the caller's own namespace: over TCP it
/// connects and reads the reply line, over UDP it sends one datagram and reads one back.
/// `timeout` bounds the whole exchange.
pub fn ask(proto: Proto, addr: SocketAddr, timeout: Duration) -> Result<String, AskError> {
    let deadline = Instant::now() + timeout;
    let reply = match proto {
        Proto::Tcp => ask_tcp_here(addr, deadline),
        Proto::Udp => ask_udp_here(addr, deadline),
    };
    let fail = |kind, detail| AskError {
        kind,
        proto,
        addr,
        netns: None,
        detail,
    };
    let reply = reply.map_err(|err| match classify(&err) {
        AskErrorKind::Timeout => fail(AskErrorKind::Timeout, format!("no answer within {timeout:?} ({err})")),
        kind => fail(kind, err.to_string()),
    })?;
    let text = String::from_utf8_lossy(&reply);
    match text.lines().next().map(str::trim) {
        Some(name) if !name.is_empty() => Ok(name.to_owned()),
        _ => Err(fail(AskErrorKind::Other, format!("empty reply {text:?}"))),
    }
}

fn ask_tcp_here(addr: SocketAddr, deadline: Instant) -> io::Result<Vec<u8>> {
    let stream = TcpStream::connect_timeout(&addr, remaining(deadline)?)?;
    stream.set_read_timeout(Some(remaining(deadline)?))?;
    // The server writes its name and closes, so reading to EOF gets exactly one reply.
    let mut reply = Vec::new();
    stream.take(MAX_REPLY).read_to_end(&mut reply)?;
    Ok(reply)
}

fn ask_udp_here(addr: SocketAddr, deadline: Instant) -> io::Result<Vec<u8>> {
    let any = if addr.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    let socket = UdpSocket::bind((any, 0))?;
    // Connected, so the kernel reports ICMP port unreachable as ECONNREFUSED and drops replies
    // from any other source: a reply must come back from the address we sent to.
    socket.connect(addr)?;
    socket.send(UDP_PROBE)?;
    socket.set_read_timeout(Some(remaining(deadline)?))?;
    let mut buf = [0u8; MAX_REPLY as usize];
    let n = socket.recv(&mut buf)?;
    Ok(buf[..n].to_vec())
}

/// Time left before `deadline`; zero would mean "no timeout" to the socket calls, so running
/// out is reported as a timeout instead.
fn remaining(deadline: Instant) -> io::Result<Duration> {
    let left = deadline.saturating_duration_since(Instant::now());
    if left.is_zero() {
        Err(io::Error::from(io::ErrorKind::TimedOut))
    } else {
        Ok(left)
    }
}

fn classify(err: &io::Error) -> AskErrorKind {
    use io::ErrorKind as K;
    match err.kind() {
        K::ConnectionRefused => AskErrorKind::Refused,
        // Socket read timeouts surface as WouldBlock (EAGAIN) on Linux.
        K::TimedOut | K::WouldBlock => AskErrorKind::Timeout,
        K::HostUnreachable | K::NetworkUnreachable => AskErrorKind::Unreachable,
        _ => AskErrorKind::Other,
    }
}
