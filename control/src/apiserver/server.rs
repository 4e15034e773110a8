//! Connections: TLS with optional client certificates, HTTP/1.1 and HTTP/2, and who is
//! asking. Each connection's peer certificate is read once; each request's bearer token
//! is checked per request.

use std::{future::Future, sync::Arc};

use hyper::{Request, body::Incoming, service::service_fn};
use hyper_util::{
    rt::{TokioExecutor, TokioIo},
    server::conn::auto,
};
use tokio::net::TcpListener;
use tokio_rustls::{TlsAcceptor, rustls::ServerConfig};

use super::{App, handlers};

/// Serves until `shutdown` completes. Takes its listener so tests can bind port 0.
pub async fn serve(listener: TcpListener, tls: Arc<ServerConfig>, app: Arc<App>, shutdown: impl Future<Output = ()>) {
    let acceptor = TlsAcceptor::from(tls);
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer_addr) = tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    continue;
                }
            },
            _ = &mut shutdown => return,
        };
        let acceptor = acceptor.clone();
        let app = Arc::clone(&app);
        tokio::spawn(async move {
            let _ = tcp.set_nodelay(true);
            let tls = match acceptor.accept(tcp).await {
                Ok(s) => s,
                Err(e) => {
                    tracing::debug!(%peer_addr, error = %e, "TLS handshake failed");
                    return;
                }
            };
            let peer_cert: Option<Vec<u8>> = tls
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|certs| certs.first())
                .map(|c| c.as_ref().to_vec());
            let service = service_fn(move |req: Request<Incoming>| {
                let app = Arc::clone(&app);
                let peer_cert = peer_cert.clone();
                async move {
                    let auth_header = req
                        .headers()
                        .get(http::header::AUTHORIZATION)
                        .and_then(|v| v.to_str().ok())
                        .map(str::to_owned);
                    let user =
                        match super::sa_token::authenticate(&app, peer_cert.as_deref(), auth_header.as_deref()).await {
                            Ok(user) => user,
                            Err(e) => {
                                tracing::debug!(error = %e, "authentication failed");
                                return Ok::<_, std::convert::Infallible>(handlers::error_response(
                                    &super::status::ApiError::unauthorized(),
                                ));
                            }
                        };
                    Ok(handlers::handle(app, req, user).await)
                }
            });
            if let Err(e) = auto::Builder::new(TokioExecutor::new())
                .serve_connection_with_upgrades(TokioIo::new(tls), service)
                .await
            {
                tracing::debug!(%peer_addr, error = %e, "connection ended with an error");
            }
        });
    }
}
