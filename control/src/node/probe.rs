//! Probes (exec, httpGet, tcpSocket), run by the agent from the node's network namespace,
//! which reaches every pod address on the node.

use std::{net::IpAddr, time::Duration};

use k8s_openapi::{api::core::v1::Probe, apimachinery::pkg::util::intstr::IntOrString};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

/// A probe's outcome, with upstream's wording for the failure.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Success,
    Failure(String),
}

/// Probe timings with upstream's defaults.
#[derive(Debug, Clone, Copy)]
pub struct Timing {
    pub initial_delay: Duration,
    pub period: Duration,
    pub timeout: Duration,
    pub success_threshold: u32,
    pub failure_threshold: u32,
}

pub fn timing(p: &Probe) -> Timing {
    let secs = |v: Option<i32>, default: i32| Duration::from_secs(v.unwrap_or(default).max(0) as u64);
    Timing {
        initial_delay: secs(p.initial_delay_seconds, 0),
        period: secs(p.period_seconds, 10).max(Duration::from_secs(1)),
        timeout: secs(p.timeout_seconds, 1).max(Duration::from_secs(1)),
        success_threshold: p.success_threshold.unwrap_or(1).max(1) as u32,
        failure_threshold: p.failure_threshold.unwrap_or(3).max(1) as u32,
    }
}

fn port(p: &IntOrString, named: &(dyn Fn(&str) -> Option<u16> + Sync)) -> Option<u16> {
    match p {
        IntOrString::Int(n) => u16::try_from(*n).ok(),
        IntOrString::String(s) => s.parse().ok().or_else(|| named(s)),
    }
}

/// Runs one probe. `exec` runs a command inside the container (the caller knows how).
pub async fn run(
    p: &Probe,
    pod_ip: IpAddr,
    named_port: &(dyn Fn(&str) -> Option<u16> + Sync),
    exec: impl AsyncFnOnce(Vec<String>, Duration) -> Outcome,
) -> Outcome {
    let t = timing(p);
    if let Some(e) = &p.exec {
        return exec(e.command.clone().unwrap_or_default(), t.timeout).await;
    }
    if let Some(tcp) = &p.tcp_socket {
        let Some(port) = port(&tcp.port, named_port) else {
            return Outcome::Failure(format!("unknown port {:?}", tcp.port));
        };
        let host: IpAddr = tcp.host.as_deref().and_then(|h| h.parse().ok()).unwrap_or(pod_ip);
        return match tokio::time::timeout(t.timeout, TcpStream::connect((host, port))).await {
            Ok(Ok(_)) => Outcome::Success,
            Ok(Err(e)) => Outcome::Failure(format!("dial tcp {host}:{port}: connect: {e}")),
            Err(_) => Outcome::Failure(format!("dial tcp {host}:{port}: i/o timeout")),
        };
    }
    if let Some(http) = &p.http_get {
        let Some(port) = port(&http.port, named_port) else {
            return Outcome::Failure(format!("unknown port {:?}", http.port));
        };
        let host: IpAddr = http.host.as_deref().and_then(|h| h.parse().ok()).unwrap_or(pod_ip);
        let path = http.path.clone().unwrap_or_else(|| "/".into());
        if http.scheme.as_deref().is_some_and(|s| s.eq_ignore_ascii_case("https")) {
            return Outcome::Failure("HTTPS probes are not supported by this node agent".into());
        }
        let headers: String = http
            .http_headers
            .iter()
            .flatten()
            .map(|h| format!("{}: {}\r\n", h.name, h.value))
            .collect();
        let url = format!("http://{host}:{port}{path}");
        let attempt = async {
            let mut s = TcpStream::connect((host, port)).await?;
            let req = format!(
                "GET {path} HTTP/1.1\r\nHost: {host}:{port}\r\nUser-Agent: kube-probe/1.33\r\nAccept: */*\r\n{headers}Connection: close\r\n\r\n"
            );
            s.write_all(req.as_bytes()).await?;
            // Read the whole (bounded) response: closing with unread data would reset the
            // connection under the server's feet.
            let mut buf = Vec::new();
            s.take(64 * 1024).read_to_end(&mut buf).await?;
            Ok::<_, std::io::Error>(String::from_utf8_lossy(&buf[..buf.len().min(64)]).into_owned())
        };
        return match tokio::time::timeout(t.timeout, attempt).await {
            Ok(Ok(head)) => match head.split_whitespace().nth(1).and_then(|c| c.parse::<u16>().ok()) {
                Some(code) if (200..400).contains(&code) => Outcome::Success,
                Some(code) => Outcome::Failure(format!("HTTP probe failed with statuscode: {code}")),
                None => Outcome::Failure(format!("Get \"{url}\": malformed HTTP response")),
            },
            Ok(Err(e)) => Outcome::Failure(format!("Get \"{url}\": dial tcp {host}:{port}: connect: {e}")),
            Err(_) => Outcome::Failure(format!("Get \"{url}\": context deadline exceeded")),
        };
    }
    Outcome::Failure("probe has no handler".into())
}
