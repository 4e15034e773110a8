//! `GET pods/{name}/log`: finds the pod's node and streams the container log from the
//! node agent's HTTPS port (`/containerLogs/...`), as kube-apiserver proxies to the
//! kubelet. The connection presents the API server's kubelet client certificate and
//! trusts only node certificates issued by the cluster CA.

use std::{convert::Infallible, net::IpAddr, sync::Arc, time::Duration};

use bytes::Bytes;
use http::{Request, Response, header};
use http_body_util::{BodyExt, Empty, StreamBody};
use hyper::body::Frame;
use hyper_util::rt::TokioIo;
use serde_json::Value;
use tokio::sync::mpsc;
use tokio_rustls::{
    TlsConnector,
    rustls::{ClientConfig, pki_types::ServerName},
};

use super::{App, handlers::Body, request::Query, resources, status::ApiError};

const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// The query parameters passed on to the node.
const FORWARDED: &[&str] = &[
    "follow",
    "tailLines",
    "previous",
    "timestamps",
    "limitBytes",
    "sinceSeconds",
    "sinceTime",
];

/// The container to read: the one asked for, or the pod's only one.
pub fn pick_container(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let names = |key: &str| -> Vec<String> {
        pod["spec"][key]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|c| c["name"].as_str().map(str::to_owned))
            .collect()
    };
    let (containers, init) = (names("containers"), names("initContainers"));
    match asked {
        Some(c) if containers.iter().chain(&init).any(|n| n == c) => Ok(c.to_owned()),
        Some(c) => Err(ApiError::bad_request(format!(
            "container {c} is not valid for pod {name}"
        ))),
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => {
            let mut message = format!(
                "a container name must be specified for pod {name}, choose one of: [{}]",
                containers.join(" ")
            );
            if !init.is_empty() {
                message.push_str(&format!(" or one of the init containers: [{}]", init.join(" ")));
            }
            Err(ApiError::bad_request(message))
        }
    }
}

/// The node's InternalIP and agent port.
pub fn node_endpoint(node: &Value) -> Option<(IpAddr, u16)> {
    let ip = node["status"]["addresses"]
        .as_array()?
        .iter()
        .find(|a| a["type"] == "InternalIP")
        .and_then(|a| a["address"].as_str()?.parse().ok())?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .filter(|p| *p > 0 && *p <= 65535)?;
    Some((ip, port as u16))
}

fn status_error(code: u16, message: String) -> ApiError {
    let reason = match code {
        400 => "BadRequest",
        401 => "Unauthorized",
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

pub async fn pod_log(app: &App, ns: &str, name: &str, query: &Query) -> Result<Response<Body>, ApiError> {
    let pods = resources::find("", "v1", "pods").ok_or_else(|| ApiError::internal("pods are not served"))?;
    let nodes = resources::find("", "v1", "nodes").ok_or_else(|| ApiError::internal("nodes are not served"))?;
    let pod = app.registry.get(pods, Some(ns), name).await?;
    let container = pick_container(&pod, query.get("container"))?;
    let node_name = pod["spec"]["nodeName"].as_str().filter(|n| !n.is_empty());
    let Some(node_name) = node_name else {
        return Err(ApiError::bad_request(format!(
            "pod {name} does not have a host assigned"
        )));
    };
    let node = app.registry.get(nodes, None, node_name).await?;
    let (ip, port) = node_endpoint(&node)
        .ok_or_else(|| ApiError::internal(format!("node {node_name} reports no InternalIP or kubelet port")))?;
    let tls = app
        .kubelet_tls
        .clone()
        .ok_or_else(|| ApiError::internal("this API server has no kubelet client credentials"))?;

    let q = {
        let mut q = form_urlencoded::Serializer::new(String::new());
        for key in FORWARDED {
            if let Some(v) = query.get(key) {
                q.append_pair(key, v);
            }
        }
        q.finish()
    };
    let enc = |s: &str| form_urlencoded::byte_serialize(s.as_bytes()).collect::<String>();
    let path = format!(
        "/containerLogs/{}/{}/{}{}{q}",
        enc(ns),
        enc(name),
        enc(&container),
        if q.is_empty() { "" } else { "?" }
    );
    let host = match ip {
        IpAddr::V6(v6) => format!("[{v6}]:{port}"),
        IpAddr::V4(v4) => format!("{v4}:{port}"),
    };
    let url = format!("https://{host}{path}");
    let unreachable = |e: String| ApiError::internal(format!("Get \"{url}\": {e}"));
    let resp = tokio::time::timeout(CONNECT_TIMEOUT, request(tls, ip, &host, &path))
        .await
        .map_err(|_| {
            unreachable(format!(
                "no answer from node {node_name} within {}s",
                CONNECT_TIMEOUT.as_secs()
            ))
        })?
        .map_err(|e| unreachable(format!("node {node_name}: {e}")))?;
    let status = resp.status();
    let mut body = resp.into_body();
    if !status.is_success() {
        let bytes = http_body_util::Limited::new(body, 64 * 1024)
            .collect()
            .await
            .map(|b| b.to_bytes())
            .unwrap_or_default();
        return Err(status_error(
            status.as_u16(),
            String::from_utf8_lossy(&bytes).trim().to_owned(),
        ));
    }
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        while let Some(frame) = body.frame().await {
            let Ok(frame) = frame else { break };
            if let Ok(data) = frame.into_data()
                && tx.send(data).await.is_err()
            {
                // The client left: dropping `body` closes the node connection.
                break;
            }
        }
    });
    let stream = futures::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|b| (Ok::<_, Infallible>(Frame::data(b)), rx))
    });
    let mut resp = Response::new(BodyExt::boxed(StreamBody::new(stream)));
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, header::HeaderValue::from_static("text/plain"));
    Ok(resp)
}

async fn request(
    tls: Arc<ClientConfig>,
    ip: IpAddr,
    host: &str,
    path: &str,
) -> Result<Response<hyper::body::Incoming>, String> {
    let req = Request::get(path)
        .header(header::HOST, host)
        .body(Empty::<Bytes>::new())
        .map_err(|e| e.to_string())?;
    send_to_node(tls, ip, host, req).await
}

/// One request to a node agent's HTTPS port as `kube-apiserver-kubelet-client`, trusting
/// only a certificate the cluster CA issued for the node's IP. The connection allows
/// upgrades, which `streaming` (exec, port-forward) relays.
pub(super) async fn send_to_node(
    tls: Arc<ClientConfig>,
    ip: IpAddr,
    host: &str,
    req: Request<Empty<Bytes>>,
) -> Result<Response<hyper::body::Incoming>, String> {
    let tcp = tokio::net::TcpStream::connect(host)
        .await
        .map_err(|e| format!("dial tcp {host}: {e}"))?;
    let _ = tcp.set_nodelay(true);
    let stream = TlsConnector::from(tls)
        .connect(ServerName::IpAddress(ip.into()), tcp)
        .await
        .map_err(|e| format!("TLS with the node agent failed (its serving certificate must be issued by the cluster CA for its IP; see rudder node --tls-cert-file): {e}"))?;
    let (mut sender, conn) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .map_err(|e| e.to_string())?;
    tokio::spawn(async move {
        if let Err(e) = conn.with_upgrades().await {
            tracing::debug!(error = %e, "connection to a node agent ended");
        }
    });
    sender.send_request(req).await.map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn containers_are_picked_or_named() {
        let one = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}]}});
        assert_eq!(pick_container(&one, None).unwrap(), "a");
        let two = json!({"metadata": {"name": "p"}, "spec": {"containers": [{"name": "a"}, {"name": "b"}]}});
        let e = pick_container(&two, None).unwrap_err();
        assert_eq!(
            (e.code, e.message.as_str()),
            (
                400,
                "a container name must be specified for pod p, choose one of: [a b]"
            )
        );
        assert_eq!(pick_container(&two, Some("b")).unwrap(), "b");
        assert_eq!(
            pick_container(&two, Some("c")).unwrap_err().message,
            "container c is not valid for pod p"
        );
    }

    #[test]
    fn node_endpoints() {
        let node = json!({"status": {"addresses": [{"type": "Hostname", "address": "n1"}, {"type": "InternalIP", "address": "10.0.0.5"}],
                                      "daemonEndpoints": {"kubeletEndpoint": {"Port": 10250}}}});
        assert_eq!(node_endpoint(&node), Some(("10.0.0.5".parse().unwrap(), 10250)));
        assert_eq!(node_endpoint(&json!({"status": {}})), None);
    }
}
