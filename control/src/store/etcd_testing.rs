//! A throwaway single-member etcd for tests: the store's own and the API server's, which
//! run the same API tests on both backends.
//!
//! [`EtcdServer::start`] runs Debian's `/usr/bin/etcd` on loopback with free ports and a
//! fresh data directory and returns once it serves requests; dropping the guard (also
//! while a test panics) kills it and removes the directory. A missing etcd is an error,
//! never a skip: tests that need it must fail loudly.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

/// Where Debian's `etcd-server` puts the binary; `RUDDER_ETCD` overrides it.
pub const ETCD_BINARY: &str = "/usr/bin/etcd";

#[derive(thiserror::Error)]
pub enum EtcdLaunchError {
    #[error("{path} not found: install etcd-server (cargo xtask setup does)")]
    Missing { path: PathBuf },
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        source: std::io::Error,
    },
    #[error("etcd did not start: {reason}; its log ends with:\n{log_tail}")]
    NotReady { reason: String, log_tail: String },
}

/// Tests report this with `expect`, which prints `Debug`: show the readable message (with
/// the install hint) rather than the variant's fields.
impl std::fmt::Debug for EtcdLaunchError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{self}")?;
        if let EtcdLaunchError::Io { source, .. } = self {
            write!(f, ": {source}")?;
        }
        Ok(())
    }
}

/// A running etcd, killed on drop.
pub struct EtcdServer {
    child: Child,
    data_dir: PathBuf,
    endpoint: String,
}

impl EtcdServer {
    /// Starts etcd and waits (up to 30 s) until it answers a read. Retries with new ports
    /// when one was taken between choosing it and etcd binding it.
    pub async fn start() -> Result<EtcdServer, EtcdLaunchError> {
        let binary = std::env::var_os("RUDDER_ETCD")
            .map(PathBuf::from)
            .unwrap_or_else(|| ETCD_BINARY.into());
        if !binary.exists() {
            return Err(EtcdLaunchError::Missing { path: binary });
        }
        let mut attempt = 0;
        loop {
            attempt += 1;
            match Self::start_once(&binary).await {
                Err(EtcdLaunchError::NotReady { log_tail, .. })
                    if attempt < 3 && log_tail.contains("address already in use") => {}
                result => return result,
            }
        }
    }

    async fn start_once(binary: &Path) -> Result<EtcdServer, EtcdLaunchError> {
        let client_port = free_port()?;
        let peer_port = free_port()?;
        let data_dir = fresh_dir()?;
        let log_path = data_dir.with_extension("log");
        let log = std::fs::File::create(&log_path).map_err(|e| io(e, format!("create {}", log_path.display())))?;
        let log_err = log.try_clone().map_err(|e| io(e, "duplicate log handle".into()))?;
        let client_url = format!("http://127.0.0.1:{client_port}");
        let peer_url = format!("http://127.0.0.1:{peer_port}");
        let child = Command::new(binary)
            .arg("--data-dir")
            .arg(&data_dir)
            .args([
                "--listen-client-urls",
                &client_url,
                "--advertise-client-urls",
                &client_url,
            ])
            .args([
                "--listen-peer-urls",
                &peer_url,
                "--initial-advertise-peer-urls",
                &peer_url,
            ])
            .args(["--initial-cluster", &format!("default={peer_url}")])
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log_err)
            .spawn()
            .map_err(|e| io(e, format!("spawn {}", binary.display())))?;
        // From here on the guard owns the process and cleans up on every path.
        let mut server = EtcdServer {
            child,
            data_dir,
            endpoint: client_url,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(server.not_ready(format!("exited with {status}")));
            }
            if server.answers().await {
                tracing::debug!(endpoint = %server.endpoint, "etcd is up");
                return Ok(server);
            }
            if Instant::now() > deadline {
                return Err(server.not_ready("no answer within 30 s".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    async fn answers(&self) -> bool {
        let options = etcd_client::ConnectOptions::new()
            .with_connect_timeout(Duration::from_millis(500))
            .with_timeout(Duration::from_secs(2));
        let Ok(mut client) = etcd_client::Client::connect([self.endpoint.as_str()], Some(options)).await else {
            return false;
        };
        client.get("rudder-health-probe", None).await.is_ok()
    }

    fn not_ready(&self, reason: String) -> EtcdLaunchError {
        let log = std::fs::read_to_string(self.data_dir.with_extension("log")).unwrap_or_default();
        let log_tail = log_tail(&log, 15);
        EtcdLaunchError::NotReady { reason, log_tail }
    }

    /// The client URL, e.g. `http://127.0.0.1:40123`.
    pub fn endpoint(&self) -> &str {
        &self.endpoint
    }

    /// The form `EtcdStore::connect` takes.
    pub fn endpoints(&self) -> Vec<String> {
        vec![self.endpoint.clone()]
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.data_dir);
        let _ = std::fs::remove_file(self.data_dir.with_extension("log"));
    }
}

/// A port the kernel just handed out; etcd binds it a moment later (the retry in `start`
/// covers the rare case where someone else took it in between).
fn free_port() -> Result<u16, EtcdLaunchError> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| io(e, "bind a loopback port".into()))?;
    let port = listener
        .local_addr()
        .map_err(|e| io(e, "read the bound port".into()))?
        .port();
    Ok(port)
}

/// A new directory under the temp dir, unique per process and call. etcd wants it 0700.
fn fresh_dir() -> Result<PathBuf, EtcdLaunchError> {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let dir = std::env::temp_dir().join(format!("rudder-etcd-{}-{n}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).map_err(|e| io(e, format!("create {}", dir.display())))?;
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700))
            .map_err(|e| io(e, format!("chmod {}", dir.display())))?;
    }
    Ok(dir)
}

fn io(source: std::io::Error, what: String) -> EtcdLaunchError {
    EtcdLaunchError::Io { what, source }
}

/// The last `n` lines of etcd's log that say something. A Go panic ends the log with its
/// goroutine stacks, which would push the panic's message (the cause) out of a short tail,
/// so the stack frames are left out.
fn log_tail(log: &str, n: usize) -> String {
    let lines: Vec<&str> = log.lines().collect();
    let frame = |i: usize| {
        let line = lines[i];
        line.starts_with('\t') || lines.get(i + 1).is_some_and(|next| next.starts_with('\t'))
    };
    let kept: Vec<&str> = (0..lines.len()).filter(|&i| !frame(i)).map(|i| lines[i]).collect();
    kept[kept.len().saturating_sub(n)..].join("\n")
}

#[cfg(test)]
mod log_tail_tests {
    #[test]
    fn a_panics_message_survives_its_stack() {
        let log = "starting\npanic: write wal: no space left on device\n\ngoroutine 1 [running]:\n\
                   main.a(0x1)\n\tmain.go:1 +0x1\nmain.main()\n\tmain.go:2 +0x2\n";
        let tail = super::log_tail(log, 3);
        assert_eq!(
            tail,
            "panic: write wal: no space left on device\n\ngoroutine 1 [running]:"
        );
    }
}
