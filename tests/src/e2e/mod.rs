//! A Kubernetes control plane on top of the netns [`Cluster`]: Rudder's API server (with
//! its EndpointSlice controller) in the underlay namespace at [`API_ADDRESS`], a kube-rs
//! client that talks to it from there, and `rudder-proxy run` on every node.
//!
//! Until a node agent exists, tests play the kubelet: they create the Node objects and the
//! Pod objects for the pods the harness runs, and set their status (podIP, Ready) through
//! the API; the EndpointSlice controller does the rest, as in a real cluster.
//!
//! Test support: failures panic with a message that says what was being set up.

mod objects;

use std::{
    fs::File,
    future::Future,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use kube::{Client, config::KubeConfigOptions};

pub use objects::*;

use crate::netns::{Cluster, InNetns, Node, Process, netns_exec, run_in, with_netns};

/// The API server's address on the underlay bridge; every node reaches it directly.
pub const API_ADDRESS: Ipv4Addr = Ipv4Addr::new(10, 250, 0, 1);
pub const API_PORT: u16 = 6443;
/// What the proxies are told the pod and Service ranges are.
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// A binary of this workspace, from the target directory the test runs from. `cargo xtask
/// test` builds every binary first; a bare `cargo test -p rudder-tests` needs
/// `cargo build --bins` before it.
pub fn workspace_binary(name: &str) -> PathBuf {
    let tried = crate::binary_candidates(name);
    tried.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
        panic!("binary {name} not found (tried {tried:?}); run `cargo build --bins` (cargo xtask test does)")
    })
}

fn scratch_dir(what: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    let dir = std::env::temp_dir().join(format!(
        "rudder-{what}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).expect("create a scratch directory");
    dir
}

/// `rudder server` running in the cluster's underlay namespace.
pub struct ControlPlane {
    _process: Process,
    pub data_dir: PathBuf,
    pub kubeconfig: PathBuf,
    underlay: String,
}

/// Longer than any e2e run, slowed or not (see [`ControlPlane::start`]).
pub const NODE_MONITOR_GRACE_PERIOD: &str = "24h";

impl ControlPlane {
    pub fn start(cluster: &Cluster) -> Self {
        let underlay = cluster.underlay_netns().to_owned();
        run_in(
            &underlay,
            Command::new("ip").args(["addr", "add", &format!("{API_ADDRESS}/24"), "dev", "br0"]),
        )
        .expect("give the underlay bridge the API server's address");
        // Real nodes have a default route; without one, a node's own connections to a
        // ClusterIP fail with "network unreachable" before any proxy rule sees them.
        for node in cluster.nodes() {
            node.run(Command::new("ip").args(["route", "add", "default", "via", &API_ADDRESS.to_string()]))
                .expect("give the node a default route");
        }
        let data_dir = scratch_dir("apiserver");
        let log = File::create(data_dir.join("server.log")).expect("server log");
        let mut server = Command::new(workspace_binary("rudder"));
        server
            .arg("server")
            .args([
                "--listen",
                &format!("{API_ADDRESS}:{API_PORT}"),
                "--tls-san",
                &API_ADDRESS.to_string(),
            ])
            .args(["--bookmark-interval", "1", "--service-cluster-ip-range", SERVICE_CIDR])
            // The harness registers its nodes and pods itself: no node agent renews their
            // Leases. With the default 40 s grace, the node lifecycle controller marked
            // every node Unknown and its pods NotReady 40 s in, and every Service lost
            // its endpoints: a run longer than that (the ipvs guest's, 8x slower) failed
            // with "connection refused" from then on. Node health is not under test here.
            .args(["--node-monitor-grace-period", NODE_MONITOR_GRACE_PERIOD])
            .arg("--data-dir")
            .arg(&data_dir);
        let mut wrapped = netns_exec(&underlay, &server);
        // Its tracing goes to stdout: the log that failures print needs both.
        let out = log.try_clone().expect("server log");
        wrapped.stdin(Stdio::null()).stdout(out).stderr(log);
        let mut process = Process::spawn(&mut wrapped).expect("start rudder server");
        let kubeconfig = data_dir.join("admin.kubeconfig");
        let deadline = Instant::now() + crate::slow(Duration::from_secs(30));
        loop {
            let listening = with_netns(&underlay, || {
                TcpStream::connect_timeout(&SocketAddr::from((API_ADDRESS, API_PORT)), Duration::from_millis(200))
                    .is_ok()
            })
            .unwrap_or(false);
            if listening && kubeconfig.exists() {
                break;
            }
            if let Ok(Some(status)) = process.child_mut().try_wait() {
                panic!(
                    "rudder server exited with {status}; see {}",
                    data_dir.join("server.log").display()
                );
            }
            assert!(
                Instant::now() < deadline,
                "rudder server did not come up within {:?}",
                crate::slow(Duration::from_secs(30))
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        Self {
            _process: process,
            data_dir,
            kubeconfig,
            underlay,
        }
    }

    /// A kube-rs client whose connections start in the underlay namespace.
    pub fn api(&self) -> Api {
        Api::connect(&self.underlay, &self.kubeconfig)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.data_dir.join("server.log")).unwrap_or_default()
    }
}

/// A kube-rs client plus the runtime it lives on. The runtime's threads are created inside
/// the underlay namespace (threads inherit their creator's namespace), so every socket the
/// client opens is there too; [`Api::run`] runs a future on them.
pub struct Api {
    runtime: tokio::runtime::Runtime,
    pub client: Client,
}

impl Api {
    fn connect(netns: &str, kubeconfig: &Path) -> Self {
        let runtime = with_netns(netns, || {
            tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
        })
        .expect("enter the underlay namespace")
        .expect("build a tokio runtime");
        let path = kubeconfig.to_path_buf();
        let client = Self::spawn_on(&runtime, async move {
            let kubeconfig = kube::config::Kubeconfig::read_from(&path).expect("read the admin kubeconfig");
            let config = kube::Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
                .await
                .expect("a client config from the admin kubeconfig");
            Client::try_from(config).expect("a kube client")
        });
        Self { runtime, client }
    }

    fn spawn_on<F>(runtime: &tokio::runtime::Runtime, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        // Spawned, not block_on'd: block_on would poll (and open sockets) on this thread,
        // which is in the root namespace.
        let handle = runtime.spawn(future);
        runtime
            .block_on(handle)
            .unwrap_or_else(|panic| std::panic::resume_unwind(panic.into_panic()))
    }

    pub fn run<F>(&self, future: F) -> F::Output
    where
        F: Future + Send + 'static,
        F::Output: Send + 'static,
    {
        Self::spawn_on(&self.runtime, future)
    }
}

/// `rudder-proxy run` on one node, logging to a file, killed on drop.
pub struct Proxy {
    process: Option<Process>,
    pub log: PathBuf,
    netns: String,
}

impl Proxy {
    pub fn start<S: AsRef<std::ffi::OsStr>>(node: &Node, mode: &str, kubeconfig: &Path, extra: &[S]) -> Self {
        let dir = scratch_dir(&format!("proxy-{}", node.name()));
        let log_path = dir.join("proxy.log");
        let log = File::create(&log_path).expect("proxy log");
        let mut proxy = Command::new(workspace_binary("rudder-proxy"));
        proxy
            .args(["run", "--mode", mode, "--hostname-override", node.name()])
            .arg("--kubeconfig")
            .arg(kubeconfig)
            .args([
                "--cluster-cidr",
                CLUSTER_CIDR,
                "--service-cluster-ip-range",
                SERVICE_CIDR,
            ])
            .args(["--min-sync-period", "100ms"])
            .args(extra)
            .env("RUST_LOG", "info");
        let mut wrapped = netns_exec(node.netns(), &proxy);
        wrapped.stdin(Stdio::null()).stdout(Stdio::null()).stderr(log);
        let process = Process::spawn(&mut wrapped).expect("start rudder-proxy");
        Self {
            process: Some(process),
            log: log_path,
            netns: node.netns().to_owned(),
        }
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Kills the process (as a node's container runtime would on a rollout).
    pub fn stop(&mut self) {
        if let Some(p) = self.process.take() {
            let _ = p.kill();
        }
    }

    /// Whether the process is still running; its exit status otherwise.
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.process
            .as_mut()
            .and_then(|p| p.child_mut().try_wait().ok().flatten())
    }

    /// Waits until the proxy's healthz says it has synced.
    pub fn wait_healthy(&mut self, timeout: Duration) {
        let timeout = crate::slow(timeout);
        let deadline = Instant::now() + timeout;
        loop {
            if http_get(&self.netns, SocketAddr::from((Ipv4Addr::LOCALHOST, 10256)), "/healthz")
                .is_some_and(|(status, _)| status == 200)
            {
                return;
            }
            if let Some(status) = self.exited() {
                panic!("rudder-proxy exited with {status}:\n{}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "rudder-proxy not healthy within {timeout:?}:\n{}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

/// A plain HTTP/1.0 GET from inside `netns`: status and body, or `None` if it failed.
pub fn http_get(netns: &str, addr: SocketAddr, path: &str) -> Option<(u16, String)> {
    use std::io::{Read, Write};
    with_netns(netns, || {
        let mut s = TcpStream::connect_timeout(&addr, crate::slow(Duration::from_secs(2))).ok()?;
        s.set_read_timeout(Some(crate::slow(Duration::from_secs(5)))).ok()?;
        write!(s, "GET {path} HTTP/1.0\r\nHost: {addr}\r\n\r\n").ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let status = text.split_whitespace().nth(1)?.parse().ok()?;
        let body = text
            .split_once("\r\n\r\n")
            .map(|(_, b)| b.to_owned())
            .unwrap_or_default();
        Some((status, body))
    })
    .ok()
    .flatten()
}

/// A cgroup v2 directory of its own for a simulated node, removed on drop: the ebpf mode's
/// socket load balancing applies to the processes in it, as it would to a real node's.
pub struct NodeCgroup {
    /// The path relative to the cgroup2 root (what `--cgroup-path` takes).
    pub relative: PathBuf,
    absolute: PathBuf,
}

impl NodeCgroup {
    pub fn create(netns: &str) -> Self {
        let root = cgroup2_root().expect("cgroup v2 is mounted (the ebpf mode needs it)");
        let relative = PathBuf::from("rudder-e2e").join(netns);
        let absolute = root.join(&relative);
        std::fs::create_dir_all(&absolute).unwrap_or_else(|e| panic!("create cgroup {}: {e}", absolute.display()));
        Self { relative, absolute }
    }

    /// `cmd`, started inside this cgroup (the child joins it before it execs).
    pub fn command(&self, mut cmd: Command) -> Command {
        use std::os::unix::process::CommandExt;
        let procs = std::ffi::CString::new(self.absolute.join("cgroup.procs").as_os_str().as_encoded_bytes())
            .expect("a path without NUL");
        // SAFETY: only async-signal-safe calls (open, write, close) between fork and exec.
        unsafe {
            cmd.pre_exec(move || {
                let fd = libc::open(procs.as_ptr(), libc::O_WRONLY);
                if fd < 0 {
                    return Err(std::io::Error::last_os_error());
                }
                let ok = libc::write(fd, b"0".as_ptr().cast(), 1) == 1;
                libc::close(fd);
                if ok {
                    Ok(())
                } else {
                    Err(std::io::Error::last_os_error())
                }
            });
        }
        cmd
    }
}

impl Drop for NodeCgroup {
    fn drop(&mut self) {
        // Processes killed just before may still be leaving: retry briefly.
        for _ in 0..100 {
            if std::fs::remove_dir(&self.absolute).is_ok() || !self.absolute.exists() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
        // The shared `rudder-e2e` parent goes with the last node that uses it (removing a
        // cgroup that still has children fails, so parallel tests keep theirs).
        if let Some(parent) = self.absolute.parent() {
            let _ = std::fs::remove_dir(parent);
        }
    }
}

/// Where cgroup2 is mounted in this (the test's) mount namespace.
pub fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = std::fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        (right.split_whitespace().next() == Some("cgroup2"))
            .then(|| left.split_whitespace().nth(4).map(PathBuf::from))
            .flatten()
    })
}

/// A bpffs for the ebpf mode's pins, outside /sys (which `ip netns exec` replaces), so the
/// test can reach a proxy's maps and a restarted proxy finds its predecessor's. Mounted
/// once per machine at `/run/rudder-e2e-bpf`.
pub fn e2e_bpffs() -> PathBuf {
    const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
    let dir = PathBuf::from("/run/rudder-e2e-bpf");
    std::fs::create_dir_all(&dir).expect("create /run/rudder-e2e-bpf");
    let c = std::ffi::CString::new("/run/rudder-e2e-bpf").expect("no NUL");
    // SAFETY: valid C strings and an out-parameter of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    let is_bpffs = unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC;
    if !is_bpffs {
        let (src, fstype) = (
            std::ffi::CString::new("bpf").expect("no NUL"),
            std::ffi::CString::new("bpf").expect("no NUL"),
        );
        let rc = unsafe { libc::mount(src.as_ptr(), c.as_ptr(), fstype.as_ptr(), 0, std::ptr::null()) };
        assert_eq!(
            rc,
            0,
            "mount bpffs at /run/rudder-e2e-bpf: {}",
            std::io::Error::last_os_error()
        );
    }
    dir
}

/// A proxy's pin directory on [`e2e_bpffs`], removed on drop (which detaches the programs
/// its pinned links hold).
pub struct PinDir(pub PathBuf);

impl PinDir {
    pub fn for_node(netns: &str) -> Self {
        let dir = e2e_bpffs().join(netns);
        let _ = std::fs::remove_dir_all(&dir);
        Self(dir)
    }
}

impl Drop for PinDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}
