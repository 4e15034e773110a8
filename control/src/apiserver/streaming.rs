//! `pods/exec`, `pods/attach` and `pods/portforward`: the request is authorized here, then
//! sent to the pod's node agent (`/exec/...`, `/attach/...`, `/portForward/...`) with its
//! upgrade headers, and once the agent switches protocols the two upgraded connections
//! are joined byte for byte, as kube-apiserver proxies to the kubelet. Which protocol is
//! spoken (WebSocket channels, SPDY, SPDY tunnelled in WebSocket) is the agent's business
//! (`node::streaming`).
//!
//! Authorization: as upstream with `AuthorizePodWebsocketUpgradeCreatePermission`, a
//! WebSocket `GET` needs `create` as well as `get` on the subresource, so a read-only role
//! cannot run commands.

use std::{net::IpAddr, time::Duration};

use bytes::Bytes;
use http::{HeaderName, Request, Response, StatusCode, header};
use http_body_util::{BodyExt, Empty};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;

use super::{
    App,
    authn::UserInfo,
    handlers::Body,
    logs::{node_endpoint, pick_container},
    request::{ResourceRequest, Verb},
    resources,
    status::ApiError,
};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);

/// The headers that make an upgrade, passed on to the agent and back.
const UPGRADE_HEADERS: &[&str] = &[
    "connection",
    "upgrade",
    "sec-websocket-key",
    "sec-websocket-version",
    "sec-websocket-protocol",
    "sec-websocket-accept",
    "x-stream-protocol-version",
];

pub fn is_streaming(sub: Option<&str>) -> bool {
    matches!(sub, Some("exec" | "attach" | "portforward"))
}

fn status_of(code: u16, message: String) -> ApiError {
    let reason = match code {
        400 => "BadRequest",
        403 => "Forbidden",
        404 => "NotFound",
        _ => "InternalError",
    };
    ApiError {
        code: if code >= 400 { code } else { 500 },
        reason,
        message,
        details: None,
    }
}

pub async fn proxy(
    app: &App,
    mut req: Request<Incoming>,
    r: &ResourceRequest,
    user: &UserInfo,
) -> Result<Response<Body>, ApiError> {
    let sub = r.subresource.as_deref().unwrap_or_default();
    match r.verb {
        Verb::Create => {}
        Verb::Get => {
            let mut create = r.clone();
            create.verb = Verb::Create;
            app.authorize(user, &create).await?;
        }
        _ => {
            return Err(ApiError::method_not_allowed(format!(
                "{} is not supported on pods/{sub}",
                r.verb.as_str()
            )));
        }
    }
    let upgrade = req
        .headers()
        .get(header::UPGRADE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or_default();
    if upgrade.is_empty() {
        return Err(ApiError::bad_request("Upgrade request required"));
    }
    let ns = r.namespace.as_deref().unwrap_or("default");
    let name = r.name.as_deref().unwrap_or_default();
    let pods = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("pods are not served"))?;
    let nodes = resources::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let pod = app.registry.get(pods, Some(ns), name).await?;
    let phase = pod["status"]["phase"].as_str().unwrap_or_default();
    if matches!(phase, "Succeeded" | "Failed") {
        let verb = match sub {
            "portforward" => "port-forward to",
            "attach" => "attach to",
            _ => "exec into",
        };
        return Err(ApiError::bad_request(format!(
            "cannot {verb} a container in a completed pod; current phase is {phase}"
        )));
    }
    let node_name = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty());
    let Some(node_name) = node_name else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let mut path = match sub {
        "portforward" => format!("/portForward/{}/{}", enc(ns), enc(name)),
        _ => {
            let container = pick_container(&pod, r.query.get("container"))?;
            format!("/{sub}/{}/{}/{}", enc(ns), enc(name), enc(&container))
        }
    };
    if let Some(q) = req.uri().query() {
        path.push('?');
        path.push_str(q);
    }
    let node = app.registry.get(nodes, None, node_name).await?;
    let (ip, port) = node_endpoint(&node)
        .ok_or_else(|| ApiError::internal(format!("node {node_name} reports no InternalIP or kubelet port")))?;
    let tls = app
        .kubelet_tls
        .clone()
        .ok_or_else(|| ApiError::internal("this API server has no kubelet client credentials"))?;
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    };
    let mut upstream = Request::builder().method(req.method().clone()).uri(&path);
    for name in UPGRADE_HEADERS {
        for v in req.headers().get_all(*name) {
            upstream = upstream.header(*name, v);
        }
    }
    let upstream = upstream
        .header(header::HOST, &host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| ApiError::internal(e.to_string()))?;
    let unreachable = |e: String| ApiError::internal(format!("error dialing backend: node {node_name}: {e}"));
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, super::logs::send_to_node(tls, ip, &host, upstream))
        .await
        .map_err(|_| unreachable(format!("no answer within {}s", CONNECT_TIMEOUT.as_secs())))?
        .map_err(unreachable)?;
    if resp.status() != StatusCode::SWITCHING_PROTOCOLS {
        let code = resp.status().as_u16();
        let bytes = http_body_util::Limited::new(resp.into_body(), 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(status_of(code, String::from_utf8_lossy(&bytes).trim().to_owned()));
    }
    let mut answer = Response::new(Empty::<Bytes>::new().map_err(|never| match never {}).boxed());
    *answer.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for name in UPGRADE_HEADERS {
        for v in resp.headers().get_all(*name) {
            answer.headers_mut().append(HeaderName::from_static(name), v.clone());
        }
    }
    let client = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let (client, node) = match tokio::join!(client, hyper::upgrade::on(resp)) {
            (Ok(c), Ok(n)) => (c, n),
            (c, n) => {
                tracing::debug!(client = ?c.err(), node = ?n.err(), "a streaming upgrade failed");
                return;
            }
        };
        let (mut client, mut node) = (TokioIo::new(client), TokioIo::new(node));
        if let Err(e) = tokio::io::copy_bidirectional(&mut client, &mut node).await {
            tracing::debug!(error = %e, "a streaming connection ended");
        }
    });
    Ok(answer)
}
