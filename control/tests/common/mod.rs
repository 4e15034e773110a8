//! Starting a real API server for a test: embedded store in a temporary directory, TLS on
//! a free loopback port, and the admin kubeconfig it writes.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{path::PathBuf, sync::Arc};

use rudder_control::{
    apiserver::{Config, launch},
    store::{Store, embedded::EmbeddedStore},
};

pub struct TestServer {
    pub running: launch::Running,
    pub dir: tempfile::TempDir,
}

impl TestServer {
    pub async fn start() -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(&dir.path().join("store.redb"))
                .await
                .expect("open the embedded store"),
        );
        Self::start_with(dir, store).await
    }

    pub async fn start_with(dir: tempfile::TempDir, store: Arc<dyn Store>) -> Self {
        let mut config = Config::new(dir.path().to_path_buf());
        config.listen = "127.0.0.1:0".parse().expect("address");
        config.bookmark_interval = std::time::Duration::from_secs(1);
        let running = launch::start(config, store).await.expect("start the API server");
        Self { running, dir }
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.running.admin_kubeconfig.clone()
    }

    /// A kube-rs client that reads the written kubeconfig, as a user would.
    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig is usable");
        kube::Client::try_from(config).expect("client")
    }
}

/// Path of a real kubectl binary of the given minor version (1.27 ... 1.33 ship with the
/// machine image's Google Cloud SDK).
pub fn kubectl(minor: u32) -> PathBuf {
    let dir = PathBuf::from("/usr/lib/google-cloud-sdk/bin");
    let path = dir.join(format!("kubectl.1.{minor}"));
    assert!(path.exists(), "kubectl 1.{minor} not found at {} (it ships with the image's Google Cloud SDK)", path.display());
    path
}
