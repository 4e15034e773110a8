//! `rudder server` as a real child process, for tests that kill and restart it.

#![allow(dead_code, reason = "each test binary uses a different part")]

use std::{
    net::TcpListener,
    path::{Path, PathBuf},
    process::{Child, Command},
    time::{Duration, Instant},
};

pub struct ServerProcess {
    child: Option<Child>,
    pub data_dir: PathBuf,
    pub port: u16,
    extra: Vec<String>,
}

/// A loopback port that was free a moment ago.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

impl ServerProcess {
    pub fn start(data_dir: &Path, extra: &[&str]) -> Self {
        let mut s = Self {
            child: None,
            data_dir: data_dir.to_path_buf(),
            port: free_port(),
            extra: extra.iter().map(|s| (*s).to_owned()).collect(),
        };
        s.spawn();
        s
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.join("admin.kubeconfig")
    }

    fn spawn(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.data_dir.join("server.log"))
            .expect("server log");
        let child = Command::new(env!("CARGO_BIN_EXE_rudder"))
            .args([
                "server",
                "--listen",
                &format!("127.0.0.1:{}", self.port),
                "--bookmark-interval",
                "1",
            ])
            .arg("--data-dir")
            .arg(&self.data_dir)
            .args(&self.extra)
            // tracing logs to stdout: keep them beside the errors.
            .stdout(log.try_clone().expect("server log"))
            .stderr(log)
            .spawn()
            .expect("start rudder server");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while Instant::now() < deadline {
            if std::net::TcpStream::connect(("127.0.0.1", self.port)).is_ok() && self.kubeconfig().exists() {
                return;
            }
            if let Some(Ok(Some(status))) = self.child.as_mut().map(Child::try_wait) {
                panic!(
                    "rudder server exited with {status}; see {}",
                    self.data_dir.join("server.log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("rudder server did not listen on port {} within 20 s", self.port);
    }

    /// SIGKILL: no shutdown code runs, as in a crash.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Starts again on the same port and data directory.
    pub fn restart(&mut self) {
        self.kill9();
        self.spawn();
    }

    pub async fn client(&self) -> kube::Client {
        let kubeconfig = kube::config::Kubeconfig::read_from(self.kubeconfig()).expect("read kubeconfig");
        let config = kube::Config::from_custom_kubeconfig(kubeconfig, &Default::default())
            .await
            .expect("kubeconfig");
        kube::Client::try_from(config).expect("client")
    }
}

impl Drop for ServerProcess {
    fn drop(&mut self) {
        self.kill9();
    }
}
