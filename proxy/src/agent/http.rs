//! A minimal HTTP/1 server for the agent's small endpoints (healthz, metrics, health
//! check NodePorts): each answer is computed from a path by a plain function.

use std::{convert::Infallible, net::SocketAddr, sync::Arc};

use http_body_util::Full;
use hyper::{Request, Response, body::Bytes, server::conn::http1, service::service_fn};
use hyper_util::rt::TokioIo;
use tokio::{net::TcpListener, task::JoinHandle};

/// An answer: status, content type, body.
pub type Reply = (u16, &'static str, String);

pub type Handler = Arc<dyn Fn(&str) -> Reply + Send + Sync>;

/// Binds `addr` now (so a taken port is an error at startup, naming the address) and
/// serves in the background until the returned task is aborted.
pub async fn serve(addr: SocketAddr, handler: Handler) -> std::io::Result<JoinHandle<()>> {
    let listener = TcpListener::bind(addr).await?;
    Ok(tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                continue;
            };
            let handler = Arc::clone(&handler);
            tokio::spawn(async move {
                let service = service_fn(move |req: Request<hyper::body::Incoming>| {
                    let (status, content_type, body) = handler(req.uri().path());
                    async move {
                        let response = Response::builder()
                            .status(status)
                            .header("content-type", content_type)
                            .header("x-content-type-options", "nosniff")
                            .body(Full::new(Bytes::from(body)));
                        // The builder only fails on invalid header values, and ours are fixed.
                        Ok::<_, Infallible>(response.unwrap_or_else(|_| Response::new(Full::new(Bytes::new()))))
                    }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }))
}
