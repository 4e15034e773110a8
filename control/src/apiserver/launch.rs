//! Starting a server: store, certificates, admin kubeconfig, bootstrap objects, listener.
//! The CLI and the tests both start servers through here.

use std::{net::SocketAddr, path::PathBuf, sync::Arc};

use tokio::{net::TcpListener, sync::oneshot, task::JoinHandle};

use crate::store::Store;

use super::{
    App, Config,
    authn::{Authenticator, ServiceAccountTokens, TokenFile},
    pki::{self, Credential, Pki},
    status::ApiError,
};

#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("binding {addr}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    #[error("certificates in {dir}")]
    Pki {
        dir: PathBuf,
        #[source]
        source: pki::PkiError,
    },
    #[error("store")]
    Store(#[source] crate::store::StoreError),
    #[error("token file")]
    Tokens(#[source] super::authn::AuthnError),
    #[error("creating the bootstrap objects: {0}")]
    Bootstrap(ApiError),
}

/// A running API server; dropping it does not stop it, `stop` does.
pub struct Running {
    pub addr: SocketAddr,
    pub url: String,
    pub admin_kubeconfig: PathBuf,
    pub pki: Arc<Pki>,
    pub app: Arc<App>,
    shutdown: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

impl Running {
    /// Stops accepting connections and waits for the accept loop to end.
    pub async fn stop(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        let _ = (&mut self.task).await;
    }
}

pub async fn start(config: Config, store: Arc<dyn Store>) -> Result<Running, StartError> {
    let pki_dir = config.data_dir.join("pki");
    let pki = Pki::load_or_create(&pki_dir, &config.extra_sans).map_err(|source| StartError::Pki {
        dir: pki_dir.clone(),
        source,
    })?;
    let tls = pki.server_config().map_err(|source| StartError::Pki {
        dir: pki_dir.clone(),
        source,
    })?;
    let tokens = config
        .token_auth_file
        .as_deref()
        .map(TokenFile::load)
        .transpose()
        .map_err(StartError::Tokens)?;
    let sa = ServiceAccountTokens::load_or_create(&pki_dir).map_err(StartError::Tokens)?;
    let authn = Authenticator::new(tokens, Some(sa));
    let mut app = App::new(store, &config, authn).await.map_err(StartError::Store)?;
    app.kubelet_tls = Some(pki.kubelet_client_config().map_err(|source| StartError::Pki {
        dir: pki_dir.clone(),
        source,
    })?);
    let app = Arc::new(app);

    let listener = TcpListener::bind(config.listen)
        .await
        .map_err(|source| StartError::Bind {
            addr: config.listen,
            source,
        })?;
    let addr = listener.local_addr().map_err(|source| StartError::Bind {
        addr: config.listen,
        source,
    })?;
    app.bootstrap(config.service_cidr, addr.port())
        .await
        .map_err(StartError::Bootstrap)?;

    let url = format!("https://{addr}");
    let (cert_pem, key_pem) = pki
        .issue_client_cert("rudder-admin", &["system:masters"])
        .map_err(|source| StartError::Pki {
            dir: pki_dir.clone(),
            source,
        })?;
    let admin_kubeconfig = config.admin_kubeconfig();
    pki::write_kubeconfig(
        &admin_kubeconfig,
        &url,
        pki.ca_pem(),
        "rudder",
        "rudder-admin",
        Credential::ClientCert { cert_pem, key_pem },
    )
    .map_err(|source| StartError::Pki {
        dir: pki_dir.clone(),
        source,
    })?;

    if !config.compaction_interval.is_zero() {
        tokio::spawn(compact_periodically(
            Arc::clone(&app.registry.store),
            config.compaction_interval,
        ));
    }
    let (tx, rx) = oneshot::channel();
    let task = tokio::spawn(super::server::serve(listener, tls, Arc::clone(&app), async {
        let _ = rx.await;
    }));
    tracing::info!(%url, kubeconfig = %admin_kubeconfig.display(), "API server listening");
    Ok(Running {
        addr,
        url,
        admin_kubeconfig,
        pki: Arc::new(pki),
        app,
        shutdown: Some(tx),
        task,
    })
}

/// Each tick compacts up to the revision seen at the previous tick, so a watcher always has
/// at least one interval of history to resume from (kube-apiserver does the same).
async fn compact_periodically(store: Arc<dyn Store>, every: std::time::Duration) {
    let mut ticker = tokio::time::interval(every);
    ticker.tick().await;
    let mut previous: Option<i64> = None;
    loop {
        ticker.tick().await;
        if let Some(rev) = previous {
            match store.compact(rev).await {
                Ok(()) => tracing::debug!(revision = rev, "compacted"),
                Err(e) => tracing::warn!(revision = rev, error = %e, "compaction failed"),
            }
        }
        previous = store.current_revision().await.ok();
    }
}
