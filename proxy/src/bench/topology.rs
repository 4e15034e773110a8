//! The benchmarks' node without a cluster: three network namespaces wired by routed veths,
//! like a routing CNI plugs pods into a node.
//!
//! ```text
//!  client ns                 node ns (the proxy's dataplane)            backend ns
//!  10.160.0.2 eth0 ── rb<id>c ─ 10.160.0.1        10.250.1.1 ─ rb<id>b ── eth0 10.250.1.2
//!                                route 10.128.0.0/11 via 10.250.1.2        local 10.128.0.0/11 (AnyIP)
//! ```
//!
//! The backend namespace answers on every address of 10.128.0.0/11 (a `local` route), so
//! every endpoint address the synthetic Services use really answers, with its own address
//! as its identity: a client learns which endpoint the dataplane chose from the reply. The
//! client is in the cluster CIDR (10.128.0.0/10) but outside the answering range, so
//! ClusterIP traffic is not masqueraded, as for a pod.
//!
//! Everything is named `rbench-<pid>-<n>-<what>` (interfaces `rb<pid%10000><n%100><c|b>`) and removed
//! by the guards' `Drop`.

use std::{
    fs,
    io::{Read, Write},
    net::{Ipv4Addr, Shutdown, SocketAddr, SocketAddrV4, TcpListener, TcpStream},
    os::fd::AsRawFd,
    path::{Path, PathBuf},
    process::Command,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread,
    time::Duration,
};

use anyhow::{Context, Result, bail};

/// The port every endpoint answers on (the synthetic Services' targetPort).
pub const BACKEND_PORT: u16 = 8080;
/// The ClusterIPs' port.
pub const SERVICE_PORT: u16 = 80;
pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 160, 0, 2);
/// Where endpoints answer: the synthetic endpoint addresses (10.128.0.0 upwards).
pub const ANSWERING: &str = "10.128.0.0/11";
pub const CLUSTER_CIDR: &str = "10.128.0.0/10";
pub const SERVICE_CIDR: &str = "10.96.0.0/16";

/// The prefix of everything a benchmark creates.
pub const PREFIX: &str = "rbench";

static NEXT: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);

/// `rbench-<pid>-<n>-<what>`: unique in this process too (suites may run side by side).
pub fn unique(what: &str) -> String {
    format!(
        "{PREFIX}-{}-{}-{what}",
        std::process::id(),
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

fn run(cmd: &mut Command) -> Result<()> {
    let out = cmd.output().with_context(|| format!("run {cmd:?}"))?;
    if !out.status.success() {
        bail!("{cmd:?}: {}", String::from_utf8_lossy(&out.stderr).trim());
    }
    Ok(())
}

fn ip(args: &str) -> Result<()> {
    run(Command::new("ip").args(args.split(' ')))
}

/// A named network namespace (`ip netns`), deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn create(what: &str) -> Result<Self> {
        let name = unique(what);
        ip(&format!("netns add {name}"))?;
        let ns = Self { name };
        ns.ip("link set lo up")?;
        Ok(ns)
    }

    /// `ip -n <ns> <args>`.
    pub fn ip(&self, args: &str) -> Result<()> {
        ip(&format!("-n {} {args}", self.name))
    }

    /// Writes a `net.*` sysctl of this namespace (/proc/sys/net is the calling thread's).
    pub fn sysctl(&self, key: &str, value: &str) -> Result<()> {
        let path = PathBuf::from("/proc/sys").join(key.replace('.', "/"));
        let value = value.to_owned();
        self.run(move || fs::write(&path, value).with_context(|| format!("write {}", path.display())))?
    }

    /// Runs `f` on a new thread that lives in this namespace; sockets it creates stay
    /// there, and threads and processes it starts inherit it.
    pub fn spawn<T: Send + 'static>(
        &self,
        name: &str,
        f: impl FnOnce() -> T + Send + 'static,
    ) -> Result<thread::JoinHandle<Result<T>>> {
        let path = PathBuf::from("/run/netns").join(&self.name);
        thread::Builder::new()
            .name(name.to_owned())
            .spawn(move || {
                enter(&path)?;
                Ok(f())
            })
            .context("spawn a thread")
    }

    /// Runs `f` in this namespace and waits for it.
    pub fn run<T: Send + 'static>(&self, f: impl FnOnce() -> T + Send + 'static) -> Result<T> {
        match self.spawn("rbench-in-netns", f)?.join() {
            Ok(r) => r,
            Err(_) => bail!("a thread in {} panicked", self.name),
        }
    }
}

/// Moves the calling thread into the network namespace pinned at `path`.
pub fn enter(path: &Path) -> Result<()> {
    let f = fs::File::open(path).with_context(|| format!("open {}", path.display()))?;
    // SAFETY: setns on a namespace fd we hold open; it changes only this thread.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error()).with_context(|| format!("setns {}", path.display()));
    }
    Ok(())
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&format!("netns del {}", self.name)) {
            tracing::warn!(netns = %self.name, error = %e, "could not delete a benchmark namespace");
        }
    }
}

/// A cgroup v2 directory (the ebpf mode's socket-LB hooks attach there, and nothing runs
/// in it, so they change no process of the host), removed on drop.
pub struct Cgroup {
    pub path: PathBuf,
}

impl Cgroup {
    pub fn create(what: &str) -> Result<Self> {
        let root = cgroup2_root().context("find the cgroup2 mount")?;
        let path = root.join(unique(what));
        fs::create_dir(&path).with_context(|| format!("create {}", path.display()))?;
        Ok(Self { path })
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir(&self.path) {
            tracing::warn!(cgroup = %self.path.display(), error = %e, "could not remove a benchmark cgroup");
        }
    }
}

fn cgroup2_root() -> Option<PathBuf> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").ok()?;
    mountinfo.lines().find_map(|line| {
        let (left, right) = line.split_once(" - ")?;
        if right.split_whitespace().next() != Some("cgroup2") {
            return None;
        }
        left.split_whitespace().nth(4).map(PathBuf::from)
    })
}

/// The three namespaces, wired; the responder runs in the backend namespace until drop.
pub struct Topology {
    pub client: Netns,
    pub node: Netns,
    pub backend: Netns,
    /// The node-side interfaces (where the ebpf mode's tc programs attach).
    pub node_devices: Vec<String>,
    stop: Arc<AtomicBool>,
    /// Shut down on drop, which wakes the responders blocked in accept.
    listener: Option<TcpListener>,
    responders: Vec<thread::JoinHandle<Result<Result<()>>>>,
}

impl Topology {
    pub fn create() -> Result<Self> {
        let (client, node, backend) = (
            Netns::create("client")?,
            Netns::create("node")?,
            Netns::create("backend")?,
        );
        let id = format!(
            "{}{}",
            std::process::id() % 10_000,
            NEXT.fetch_add(1, Ordering::Relaxed) % 100
        );
        let (c, b) = (format!("rb{id}c"), format!("rb{id}b"));
        ip(&format!(
            "link add {c} netns {} type veth peer name eth0 netns {}",
            node.name, client.name
        ))?;
        ip(&format!(
            "link add {b} netns {} type veth peer name eth0 netns {}",
            node.name, backend.name
        ))?;
        for (ns, args) in [
            (&node, format!("addr add 10.160.0.1/30 dev {c}")),
            (&node, format!("link set {c} up")),
            (&node, format!("addr add 10.250.1.1/30 dev {b}")),
            (&node, format!("link set {b} up")),
            (&node, format!("route add {ANSWERING} via 10.250.1.2")),
            (&client, format!("addr add {CLIENT_IP}/30 dev eth0")),
            (&client, "link set eth0 up".into()),
            (&client, "route add default via 10.160.0.1".into()),
            (&backend, "addr add 10.250.1.2/30 dev eth0".into()),
            (&backend, "link set eth0 up".into()),
            (&backend, "route add default via 10.250.1.1".into()),
            (&backend, format!("route add local {ANSWERING} dev lo")),
        ] {
            ns.ip(&args)?;
        }
        node.sysctl("net.ipv4.ip_forward", "1")?;
        // Many short connections from one address: let a closed port be reused at once.
        client.sysctl("net.ipv4.tcp_tw_reuse", "1")?;
        let mut t = Self {
            client,
            node,
            backend,
            node_devices: vec![c, b],
            stop: Arc::new(AtomicBool::new(false)),
            listener: None,
            responders: Vec::new(),
        };
        let listener = t
            .backend
            .run(|| TcpListener::bind((Ipv4Addr::UNSPECIFIED, BACKEND_PORT)))??;
        for _ in 0..2 {
            let (l, stop) = (listener.try_clone()?, Arc::clone(&t.stop));
            let r = t.backend.spawn("rbench-responder", move || respond(&l, &stop))?;
            t.responders.push(r);
        }
        t.listener = Some(listener);
        Ok(t)
    }
}

/// Answers each connection with the address it was reached at (the endpoint's identity)
/// after reading the one-byte request, then closes.
fn respond(listener: &TcpListener, stop: &AtomicBool) -> Result<()> {
    while !stop.load(Ordering::Relaxed) {
        match listener.accept() {
            Ok((mut s, _)) => {
                let _ = s.set_nodelay(true);
                let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
                let mut req = [0u8; 1];
                if s.read_exact(&mut req).is_err() {
                    continue;
                }
                if let Ok(SocketAddr::V4(me)) = s.local_addr() {
                    let _ = s.write_all(me.ip().to_string().as_bytes());
                }
                let _ = s.shutdown(Shutdown::Write);
            }
            Err(_) if stop.load(Ordering::Relaxed) => break,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e.into()),
        }
    }
    Ok(())
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(l) = &self.listener {
            // SAFETY: shutdown on a listening socket we own: blocked accepts return.
            unsafe { libc::shutdown(l.as_raw_fd(), libc::SHUT_RDWR) };
        }
        for r in self.responders.drain(..) {
            let _ = r.join();
        }
        // The namespaces (and with them the veths) go as the fields drop.
    }
}

/// One request on a new connection, from the calling thread's namespace: connect, send
/// one byte, read the answering endpoint's address. The connection is reset on close, so
/// no TIME_WAIT piles up over thousands of them.
pub fn ask(target: SocketAddrV4, timeout: Duration) -> std::io::Result<Ipv4Addr> {
    let mut s = TcpStream::connect_timeout(&SocketAddr::V4(target), timeout)?;
    s.set_nodelay(true)?;
    s.set_read_timeout(Some(timeout))?;
    s.write_all(b"?")?;
    let mut buf = [0u8; 32];
    let mut n = 0;
    loop {
        match s.read(&mut buf[n..])? {
            0 => break,
            k => n += k,
        }
        if n == buf.len() {
            break;
        }
    }
    reset_on_close(&s)?;
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| t.parse().ok())
        .ok_or_else(|| std::io::Error::other(format!("unexpected answer {:?}", &buf[..n])))
}

/// SO_LINGER with a zero timeout: close sends a reset and leaves no TIME_WAIT.
fn reset_on_close(s: &TcpStream) -> std::io::Result<()> {
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a linger struct of the size we pass from a live socket.
    let rc = unsafe {
        libc::setsockopt(
            s.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&raw const linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        )
    };
    if rc != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// What this process left on the host: namespaces, cgroups, bpffs entries and
/// root-namespace interfaces with its prefix (`rbench-<pid>-`, `rb<pid%10000>`): the
/// tests' cleanup check (other benchmarks may run beside them, with other pids).
pub fn leftovers() -> Vec<String> {
    let pid = std::process::id();
    let (mine, ifaces) = (format!("{PREFIX}-{pid}-"), format!("rb{}", pid % 10_000));
    let mut out = Vec::new();
    let mut scan = |dir: &Path, prefix: &str| {
        if let Ok(entries) = fs::read_dir(dir) {
            for e in entries.flatten() {
                let name = e.file_name().to_string_lossy().into_owned();
                if name.starts_with(prefix) {
                    out.push(dir.join(name).display().to_string());
                }
            }
        }
    };
    scan(Path::new("/run/netns"), &mine);
    scan(Path::new("/sys/fs/bpf"), &mine);
    if let Some(root) = cgroup2_root() {
        scan(&root, &mine);
    }
    scan(Path::new("/sys/class/net"), &ifaces);
    out
}

/// The calling thread's id (for per-thread CPU accounting).
pub fn gettid() -> i32 {
    // SAFETY: gettid has no preconditions.
    unsafe { libc::gettid() }
}

/// CPU seconds a thread of this process has used so far (its scheduler clock, in ns
/// rather than /proc's 10 ms ticks); 0 once it exited.
pub fn thread_cpu_s(tid: i32) -> f64 {
    // The kernel's per-thread CPU clock id: MAKE_THREAD_CPUCLOCK(tid, CPUCLOCK_SCHED).
    let clock = (!(tid as libc::clockid_t) << 3) | 6;
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec we pass; an id of an exited thread fails.
    if unsafe { libc::clock_gettime(clock, &mut ts) } != 0 {
        return 0.0;
    }
    ts.tv_sec as f64 + ts.tv_nsec as f64 / 1e9
}

/// CPU seconds (user + system) of this process's waited-for children (the `nft` and
/// `iptables-restore` runs of a sync).
pub fn children_cpu_s() -> f64 {
    // SAFETY: getrusage fills the struct we pass.
    let u = unsafe {
        let mut u: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_CHILDREN, &mut u);
        u
    };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(u.ru_utime) + tv(u.ru_stime)
}
