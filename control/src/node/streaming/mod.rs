//! The node agent's streaming endpoints (the kubelet's): `/exec/{ns}/{pod}/{container}`
//! and `/portForward/{ns}/{pod}`, reached through the API server, which authorizes the
//! client and then relays the upgraded connection byte for byte (as kube-apiserver
//! proxies to the kubelet). The protocol is negotiated here:
//!
//! - WebSocket `v5.channel.k8s.io` / `v4.channel.k8s.io` (kubectl ≥ 1.30 exec, kube-rs
//!   exec and portforward): binary messages whose first byte is the channel (exec: 0 stdin,
//!   1 stdout, 2 stderr, 3 error `Status`, 4 resize; v5's 255 closes a channel; port
//!   forwarding: 2i data and 2i+1 error for the i-th `ports` entry, each opened with the
//!   port as two little-endian bytes).
//! - WebSocket `SPDY/3.1+portforward.k8s.io` (kubectl ≥ 1.31 port-forward): SPDY/3.1
//!   carried in binary messages.
//! - `Upgrade: SPDY/3.1` with `X-Stream-Protocol-Version` `v4.channel.k8s.io` (exec) or
//!   `portforward.k8s.io` (older kubectl, and newer ones' fallback): one SPDY stream per
//!   channel, named by its `streamType` header.
//!
//! `/attach/{ns}/{pod}/{container}` speaks exec's protocols; its session runs on the
//! container's own stdio through the shim's attach socket (`attach`).
//!
//! Not served: the base64 WebSocket protocols and the channel protocols before v4.

mod attach;
pub mod exec;
mod portforward;
pub mod spdy;
mod spdy_exec;
mod websocket;

use std::{convert::Infallible, path::Path};

use bytes::Bytes;
use http::{HeaderMap, HeaderValue, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use tokio_tungstenite::{
    WebSocketStream,
    tungstenite::{handshake::derive_accept_key, protocol::Role},
};

type Body = BoxBody<Bytes, Infallible>;

pub const EXEC_V5: &str = "v5.channel.k8s.io";
pub const EXEC_V4: &str = "v4.channel.k8s.io";
pub const PORT_FORWARD: &str = "portforward.k8s.io";
pub const SPDY_PORT_FORWARD_TUNNEL: &str = "SPDY/3.1+portforward.k8s.io";
const X_STREAM_PROTOCOL: &str = "x-stream-protocol-version";

/// Whether `path` is one of ours.
pub fn serves(path: &str) -> bool {
    ["/exec/", "/attach/", "/portForward/"]
        .iter()
        .any(|p| path.starts_with(p))
}

fn text(code: StatusCode, message: impl Into<String>) -> Response<Body> {
    let mut resp = Response::new(Full::new(Bytes::from(message.into())).boxed());
    *resp.status_mut() = code;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    resp
}

/// Every value of a header that may be repeated or comma-separated.
fn values(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|v| v.trim().to_owned())
        .filter(|v| !v.is_empty())
        .collect()
}

/// The protocol a client asked for and we accept.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Transport {
    WebSocket { protocol: &'static str, key: String },
    Spdy { protocol: &'static str },
}

/// Picks the first protocol of the client's list that we serve, in the client's order of
/// preference.
pub fn negotiate(headers: &HeaderMap, serve: &[&'static str]) -> Result<Transport, String> {
    let upgrade = headers
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default()
        .to_ascii_lowercase();
    let (offered, spdy) = if upgrade == "websocket" {
        (values(headers, "sec-websocket-protocol"), false)
    } else if upgrade.starts_with("spdy/3") {
        (values(headers, X_STREAM_PROTOCOL), true)
    } else {
        return Err("Upgrade request required".into());
    };
    // v5 is WebSocket's alone; `portforward.k8s.io` is SPDY's.
    let usable: Vec<&'static str> = serve
        .iter()
        .copied()
        .filter(|p| {
            if spdy {
                *p != SPDY_PORT_FORWARD_TUNNEL && *p != EXEC_V5
            } else {
                *p != PORT_FORWARD
            }
        })
        .collect();
    let chosen = offered
        .iter()
        .find_map(|o| usable.iter().find(|p| p.eq_ignore_ascii_case(o)).copied())
        .ok_or_else(|| {
            format!(
                "unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server supports {usable:?}"
            )
        })?;
    if spdy {
        return Ok(Transport::Spdy { protocol: chosen });
    }
    let key = headers
        .get("sec-websocket-key")
        .and_then(|v| v.to_str().ok())
        .ok_or("the WebSocket upgrade has no Sec-WebSocket-Key")?
        .to_owned();
    Ok(Transport::WebSocket { protocol: chosen, key })
}

fn switching(transport: &Transport) -> Response<Body> {
    let mut resp = Response::new(Empty::new().boxed());
    *resp.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let h = resp.headers_mut();
    h.insert(header::CONNECTION, HeaderValue::from_static("Upgrade"));
    match transport {
        Transport::WebSocket { protocol, key } => {
            h.insert(header::UPGRADE, HeaderValue::from_static("websocket"));
            if let Ok(v) = HeaderValue::from_str(&derive_accept_key(key.as_bytes())) {
                h.insert(header::SEC_WEBSOCKET_ACCEPT, v);
            }
            h.insert(header::SEC_WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
        }
        Transport::Spdy { protocol } => {
            h.insert(header::UPGRADE, HeaderValue::from_static("SPDY/3.1"));
            h.insert(X_STREAM_PROTOCOL, HeaderValue::from_static(protocol));
        }
    }
    resp
}

/// Serves one streaming request (already authorized).
pub async fn handle(root: &Path, mut req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    let parts: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    let (kind, ns, pod, container) = match parts.as_slice() {
        [kind @ ("exec" | "attach"), ns, pod, container] => (*kind, *ns, *pod, Some(*container)),
        ["portForward", ns, pod] => ("portForward", *ns, *pod, None),
        _ => return text(StatusCode::NOT_FOUND, "404 page not found"),
    };
    if !matches!(*req.method(), http::Method::GET | http::Method::POST) {
        return text(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST are supported");
    }
    let query = req.uri().query().map(str::to_owned);
    let on_upgrade = hyper::upgrade::on(&mut req);
    if let Some(container) = container {
        let opts = match exec::Options::from_query(query.as_deref()) {
            Ok(mut o) if kind == "attach" => {
                o.attach = true;
                o
            }
            Ok(o) if !o.command.is_empty() => o,
            Ok(_) => return text(StatusCode::BAD_REQUEST, "no command given: set the command parameter"),
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let target = match exec::find(root, ns, pod, container) {
            Ok(t) => t,
            Err(e) => {
                return text(
                    StatusCode::from_u16(e.code).unwrap_or(StatusCode::BAD_REQUEST),
                    e.message,
                );
            }
        };
        // An attach session has a terminal only when the container was given one.
        let opts = exec::Options {
            tty: opts.tty && (!opts.attach || target.spec.tty),
            ..opts
        };
        let transport = match negotiate(req.headers(), &[EXEC_V5, EXEC_V4]) {
            Ok(t) => t,
            Err(e) => return text(StatusCode::BAD_REQUEST, e),
        };
        let resp = switching(&transport);
        tokio::spawn(async move {
            let io = match on_upgrade.await {
                Ok(u) => TokioIo::new(u),
                Err(e) => return tracing::debug!(error = %e, "exec: the upgrade failed"),
            };
            match transport {
                Transport::WebSocket { protocol, .. } => {
                    let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                    websocket::exec(ws, protocol == EXEC_V5, target, opts).await;
                }
                Transport::Spdy { .. } => spdy_exec::serve(spdy::Connection::start(io), target, opts).await,
            }
        });
        return resp;
    }
    // v5's close signal would be news to kube-rs's port forwarder: v4 is chosen.
    // Port forwarding enters the pod through any of its running containers' namespaces:
    // they all share the pod's network namespace.
    let Some(target) = any_container(root, ns, pod) else {
        return text(
            StatusCode::BAD_REQUEST,
            format!("pod \"{pod}\" in namespace \"{ns}\" has no running container on this node"),
        );
    };
    let transport = match negotiate(req.headers(), &[SPDY_PORT_FORWARD_TUNNEL, EXEC_V4, PORT_FORWARD]) {
        Ok(t) => t,
        Err(e) => return text(StatusCode::BAD_REQUEST, e),
    };
    let ports = match &transport {
        Transport::WebSocket { protocol, .. } if *protocol != SPDY_PORT_FORWARD_TUNNEL => {
            match portforward::ports_of(query.as_deref()) {
                Ok(p) => p,
                Err(e) => return text(StatusCode::BAD_REQUEST, e),
            }
        }
        _ => Vec::new(),
    };
    let resp = switching(&transport);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(u) => TokioIo::new(u),
            Err(e) => return tracing::debug!(error = %e, "port-forward: the upgrade failed"),
        };
        match transport {
            Transport::WebSocket { protocol, .. } if protocol == SPDY_PORT_FORWARD_TUNNEL => {
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                let (ours, theirs) = tokio::io::duplex(64 * 1024);
                tokio::spawn(websocket::tunnel(ws, theirs));
                portforward::spdy(spdy::Connection::start(ours), target.pid).await;
            }
            Transport::WebSocket { .. } => {
                let ws = WebSocketStream::from_raw_socket(io, Role::Server, None).await;
                portforward::websocket(ws, ports, target.pid).await;
            }
            Transport::Spdy { .. } => portforward::spdy(spdy::Connection::start(io), target.pid).await,
        }
    });
    resp
}

/// A running container of the pod (for its network namespace).
fn any_container(root: &Path, ns: &str, pod: &str) -> Option<exec::Target> {
    let prefix = format!("{ns}_{pod}_");
    let dirs = std::fs::read_dir(root.join("logs")).ok()?;
    for d in dirs.flatten() {
        if !d.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        for c in std::fs::read_dir(d.path()).into_iter().flatten().flatten() {
            if let Ok(t) = exec::find(root, ns, pod, &c.file_name().to_string_lossy()) {
                return Some(t);
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn headers(pairs: &[(&'static str, &'static str)]) -> HeaderMap {
        let mut h = HeaderMap::new();
        for (k, v) in pairs {
            h.append(*k, HeaderValue::from_static(v));
        }
        h
    }

    #[test]
    fn websocket_protocols_follow_the_clients_order() {
        let h = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
            ("sec-websocket-protocol", "v5.channel.k8s.io, v4.channel.k8s.io"),
        ]);
        assert_eq!(
            negotiate(&h, &[EXEC_V4, EXEC_V5]).unwrap(),
            Transport::WebSocket {
                protocol: EXEC_V5,
                key: "k".into()
            }
        );
        let h = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
            ("sec-websocket-protocol", "SPDY/3.1+portforward.k8s.io"),
        ]);
        assert!(matches!(
            negotiate(&h, &[SPDY_PORT_FORWARD_TUNNEL, EXEC_V4]).unwrap(),
            Transport::WebSocket {
                protocol: SPDY_PORT_FORWARD_TUNNEL,
                ..
            }
        ));
        let h = headers(&[
            ("upgrade", "websocket"),
            ("sec-websocket-key", "k"),
            ("sec-websocket-protocol", "base64.channel.k8s.io"),
        ]);
        assert!(negotiate(&h, &[EXEC_V4]).unwrap_err().contains("unable to negotiate"));
    }

    #[test]
    fn spdy_protocols_come_from_x_stream_protocol_version() {
        let h = headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
            ("x-stream-protocol-version", "v3.channel.k8s.io"),
        ]);
        assert_eq!(
            negotiate(&h, &[EXEC_V5, EXEC_V4]).unwrap(),
            Transport::Spdy { protocol: EXEC_V4 }
        );
        let h = headers(&[
            ("upgrade", "SPDY/3.1"),
            ("x-stream-protocol-version", "portforward.k8s.io"),
        ]);
        assert_eq!(
            negotiate(&h, &[SPDY_PORT_FORWARD_TUNNEL, EXEC_V4, PORT_FORWARD]).unwrap(),
            Transport::Spdy { protocol: PORT_FORWARD }
        );
        assert_eq!(
            negotiate(&HeaderMap::new(), &[EXEC_V4]).unwrap_err(),
            "Upgrade request required"
        );
    }
}
