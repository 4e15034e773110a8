//! Running a command in a running container, as the container's own process runs: in its
//! network, UTS and mount namespaces, its cgroup, its working directory and environment,
//! with pipes or a pseudo-terminal. The protocols (WebSocket channels, SPDY streams) feed
//! [`Input`] and carry [`Output`] away; the final [`Output::Done`] is the `metav1.Status`
//! the error channel carries.

use std::{
    ffi::CStr,
    fs::File,
    io::{Read, Write},
    os::{
        fd::{AsRawFd, FromRawFd, OwnedFd},
        unix::process::ExitStatusExt,
    },
    path::{Path, PathBuf},
    time::Duration,
};

use bytes::Bytes;
use serde_json::{Value, json};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    sync::mpsc,
};

use crate::node::{
    log_server::{self, LookupError},
    runtime::{self, RunState},
    shim::{self, ShimSpec},
};

/// How long output still open after the command exited (a daemon it left holding the
/// pipes) is waited for.
const DRAIN: Duration = Duration::from_secs(2);
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A running container: its process and how it was started.
#[derive(Debug, Clone)]
pub struct Target {
    pub pid: i32,
    pub spec: ShimSpec,
    /// The run's state directory (the shim's attach socket lives there).
    pub run_dir: PathBuf,
}

/// Why a container cannot be entered, with the status code to answer.
#[derive(Debug)]
pub struct NotRunning {
    pub code: u16,
    pub message: String,
}

/// The current run of `container` of pod `ns/pod` on this node, if it is running.
pub fn find(root: &Path, ns: &str, pod: &str, container: &str) -> Result<Target, NotRunning> {
    let run = log_server::find_run(root, ns, pod, container, false).map_err(|e| match e {
        LookupError::PodNotFound => NotRunning {
            code: 404,
            message: format!("pod \"{pod}\" in namespace \"{ns}\" not found on this node"),
        },
        _ => NotRunning {
            code: 400,
            message: format!("container \"{container}\" in pod \"{pod}\" is waiting to start: ContainerCreating"),
        },
    })?;
    let not_running = || NotRunning {
        code: 400,
        message: format!("container {container} is not running in pod {pod}"),
    };
    let RunState::Running { pid, .. } = runtime::state(&run.run_dir) else {
        return Err(not_running());
    };
    let spec: ShimSpec = shim::read_state(&run.run_dir, shim::SPEC_FILE).ok_or_else(not_running)?;
    Ok(Target {
        pid,
        spec,
        run_dir: run.run_dir.clone(),
    })
}

#[derive(Debug)]
pub enum Input {
    Stdin(Bytes),
    StdinEnd,
    Resize { width: u16, height: u16 },
}

#[derive(Debug)]
pub enum Output {
    Stdout(Bytes),
    Stderr(Bytes),
    /// The last message: the `metav1.Status` for the error channel.
    Done(Value),
}

pub fn success() -> Value {
    json!({"metadata": {}, "status": "Success"})
}

/// A non-zero exit, as the kubelet reports it: kubectl exits with `causes[ExitCode]`.
pub fn exit_status(argv: &[String], code: i32) -> Value {
    json!({
        "metadata": {},
        "status": "Failure",
        "message": format!("command terminated with non-zero exit code: error executing command {argv:?}, exit code {code}"),
        "reason": "NonZeroExitCode",
        "details": {"causes": [{"reason": "ExitCode", "message": code.to_string()}]},
    })
}

pub fn internal_error(message: String) -> Value {
    json!({"metadata": {}, "status": "Failure", "message": message, "reason": "InternalError", "code": 500})
}

/// What to run and which streams the client opened.
#[derive(Debug, Clone, Default)]
pub struct Options {
    pub command: Vec<String>,
    pub stdin: bool,
    pub stdout: bool,
    pub stderr: bool,
    pub tty: bool,
    /// An attach session rather than a command.
    pub attach: bool,
}

impl Options {
    /// The kubelet's query (`command=..&command=..&stdin=1&stdout=1&stderr=1&tty=1`).
    pub fn from_query(query: Option<&str>) -> Result<Self, String> {
        let mut o = Options::default();
        let flag = |v: &str| matches!(v, "1" | "true" | "True" | "TRUE");
        for (k, v) in form_urlencoded::parse(query.unwrap_or_default().as_bytes()) {
            match &*k {
                "command" => o.command.push(v.into_owned()),
                "stdin" | "input" => o.stdin = flag(&v),
                "stdout" | "output" => o.stdout = flag(&v),
                "stderr" | "error" => o.stderr = flag(&v),
                "tty" => o.tty = flag(&v),
                _ => {}
            }
        }
        if !(o.stdin || o.stdout || o.stderr) {
            return Err("you must specify at least 1 of stdin, stdout, stderr".into());
        }
        // A terminal has one output stream.
        if o.tty {
            o.stderr = false;
        }
        Ok(o)
    }
}

/// The calls made in the child between fork and exec: no allocation.
struct Enter {
    namespaces: Vec<(File, libc::c_int)>,
    cgroup_procs: Vec<File>,
    working_dir: Option<std::ffi::CString>,
    tty: bool,
}

impl Enter {
    fn prepare(target: &Target, tty: bool) -> std::io::Result<Self> {
        let mut namespaces = Vec::new();
        for (name, flag) in [
            ("net", libc::CLONE_NEWNET),
            ("uts", libc::CLONE_NEWUTS),
            ("mnt", libc::CLONE_NEWNS),
        ] {
            let path = format!("/proc/{}/ns/{name}", target.pid);
            let f = File::open(&path).map_err(|e| std::io::Error::new(e.kind(), format!("{path}: {e}")))?;
            namespaces.push((f, flag));
        }
        let cgroup_procs = target
            .spec
            .cgroups
            .iter()
            .filter_map(|d| {
                std::fs::OpenOptions::new()
                    .write(true)
                    .open(d.join("cgroup.procs"))
                    .ok()
            })
            .collect();
        let working_dir = target
            .spec
            .working_dir
            .as_deref()
            .map(|p| std::ffi::CString::new(p.as_os_str().as_encoded_bytes()))
            .transpose()
            .map_err(std::io::Error::other)?;
        Ok(Self {
            namespaces,
            cgroup_procs,
            working_dir,
            tty,
        })
    }

    fn run(&self) -> std::io::Result<()> {
        let check = |rc: libc::c_int| {
            if rc < 0 {
                Err(std::io::Error::last_os_error())
            } else {
                Ok(())
            }
        };
        unsafe {
            for f in &self.cgroup_procs {
                libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1);
            }
            for (f, flag) in &self.namespaces {
                check(libc::setns(f.as_raw_fd(), *flag))?;
            }
            if let Some(dir) = &self.working_dir {
                check(libc::chdir(dir.as_ptr()))?;
            }
            if self.tty {
                check(libc::setsid())?;
                check(libc::ioctl(0, libc::TIOCSCTTY, 0))?;
            }
        }
        Ok(())
    }
}

/// A new pseudo-terminal: (master, slave).
pub(crate) fn open_pty() -> std::io::Result<(OwnedFd, OwnedFd)> {
    unsafe {
        let master = libc::posix_openpt(libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if master < 0 {
            return Err(std::io::Error::last_os_error());
        }
        let master = OwnedFd::from_raw_fd(master);
        if libc::grantpt(master.as_raw_fd()) != 0 || libc::unlockpt(master.as_raw_fd()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let mut name = [0 as libc::c_char; 128];
        if libc::ptsname_r(master.as_raw_fd(), name.as_mut_ptr(), name.len()) != 0 {
            return Err(std::io::Error::last_os_error());
        }
        let path = CStr::from_ptr(name.as_ptr());
        let slave = libc::open(path.as_ptr(), libc::O_RDWR | libc::O_NOCTTY | libc::O_CLOEXEC);
        if slave < 0 {
            return Err(std::io::Error::last_os_error());
        }
        Ok((master, OwnedFd::from_raw_fd(slave)))
    }
}

pub(crate) fn resize(master: &OwnedFd, width: u16, height: u16) {
    let size = libc::winsize {
        ws_row: height,
        ws_col: width,
        ws_xpixel: 0,
        ws_ypixel: 0,
    };
    unsafe { libc::ioctl(master.as_raw_fd(), libc::TIOCSWINSZ, &size) };
}

fn command(target: &Target, opts: &Options) -> std::io::Result<tokio::process::Command> {
    let program = opts
        .command
        .first()
        .ok_or_else(|| std::io::Error::other("no command given"))?;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(&opts.command[1..]).env_clear();
    if !target.spec.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    if opts.tty {
        cmd.env("TERM", "xterm");
    }
    cmd.envs(target.spec.env.iter().map(|(k, v)| (k, v)));
    if let Some(h) = &target.spec.hostname {
        cmd.env("HOSTNAME", h);
    }
    let enter = Enter::prepare(target, opts.tty)?;
    unsafe { cmd.pre_exec(move || enter.run()) };
    Ok(cmd)
}

/// Runs the command until it exits and its output is sent; the input side ends with it.
pub async fn run(target: Target, opts: Options, input: mpsc::Receiver<Input>, output: mpsc::Sender<Output>) {
    if opts.attach {
        return super::attach::run(target, opts, input, output).await;
    }
    let status = if opts.tty {
        run_tty(&target, &opts, input, &output).await
    } else {
        run_pipes(&target, &opts, input, &output).await
    };
    let status = match status {
        Ok(s) if s.success() => success(),
        Ok(s) => exit_status(&opts.command, s.code().unwrap_or_else(|| 128 + s.signal().unwrap_or(0))),
        Err(e) => internal_error(format!("failed to exec in container: {e}")),
    };
    let _ = output.send(Output::Done(status)).await;
}

fn spawn_error(opts: &Options, e: std::io::Error) -> std::io::Error {
    let program = opts.command.first().map(String::as_str).unwrap_or_default();
    std::io::Error::new(e.kind(), format!("starting {program:?}: {e}"))
}

async fn run_pipes(
    target: &Target,
    opts: &Options,
    mut input: mpsc::Receiver<Input>,
    output: &mpsc::Sender<Output>,
) -> std::io::Result<std::process::ExitStatus> {
    use std::process::Stdio;
    let mut cmd = command(target, opts)?;
    let piped = |on: bool| if on { Stdio::piped() } else { Stdio::null() };
    cmd.stdin(piped(opts.stdin))
        .stdout(piped(opts.stdout))
        .stderr(piped(opts.stderr))
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| spawn_error(opts, e))?;
    drop(cmd);
    let mut stdin = child.stdin.take();
    let pump = tokio::spawn(async move {
        while let Some(msg) = input.recv().await {
            match msg {
                Input::Stdin(b) => {
                    if let Some(s) = stdin.as_mut()
                        && s.write_all(&b).await.is_err()
                    {
                        stdin = None;
                    }
                }
                Input::StdinEnd => stdin = None,
                Input::Resize { .. } => {}
            }
        }
    });
    let mut readers = Vec::new();
    if let Some(mut out) = child.stdout.take() {
        let tx = output.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n @ 1..) = out.read(&mut buf).await {
                if tx
                    .send(Output::Stdout(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    if let Some(mut err) = child.stderr.take() {
        let tx = output.clone();
        readers.push(tokio::spawn(async move {
            let mut buf = vec![0u8; 32 * 1024];
            while let Ok(n @ 1..) = err.read(&mut buf).await {
                if tx
                    .send(Output::Stderr(Bytes::copy_from_slice(&buf[..n])))
                    .await
                    .is_err()
                {
                    return;
                }
            }
        }));
    }
    let status = child.wait().await;
    pump.abort();
    for r in readers {
        let _ = tokio::time::timeout(DRAIN, r).await;
    }
    status
}

async fn run_tty(
    target: &Target,
    opts: &Options,
    mut input: mpsc::Receiver<Input>,
    output: &mpsc::Sender<Output>,
) -> std::io::Result<std::process::ExitStatus> {
    let (master, slave) = open_pty()?;
    let mut cmd = command(target, opts)?;
    cmd.stdin(slave.try_clone()?)
        .stdout(slave.try_clone()?)
        .stderr(slave)
        .kill_on_drop(true);
    let mut child = cmd.spawn().map_err(|e| spawn_error(opts, e))?;
    // Our copies of the slave go with the command, so reading the master ends (EIO) once
    // the command and its children have closed theirs.
    drop(cmd);
    let mut reader = File::from(master.try_clone()?);
    let mut writer = File::from(master.try_clone()?);
    let tx = output.clone();
    let read_thread = std::thread::spawn(move || {
        let mut buf = vec![0u8; 32 * 1024];
        while let Ok(n @ 1..) = reader.read(&mut buf) {
            if tx
                .blocking_send(Output::Stdout(Bytes::copy_from_slice(&buf[..n])))
                .is_err()
            {
                return;
            }
        }
    });
    let (stdin_tx, stdin_rx) = std::sync::mpsc::channel::<Bytes>();
    std::thread::spawn(move || {
        while let Ok(b) = stdin_rx.recv() {
            if writer.write_all(&b).is_err() {
                return;
            }
        }
    });
    let pump = tokio::spawn(async move {
        while let Some(msg) = input.recv().await {
            match msg {
                Input::Stdin(b) => {
                    let _ = stdin_tx.send(b);
                }
                // A terminal has no end of input but ^D, which ends a shell's reading.
                Input::StdinEnd => {
                    let _ = stdin_tx.send(Bytes::from_static(b"\x04"));
                }
                Input::Resize { width, height } => resize(&master, width, height),
            }
        }
    });
    let status = child.wait().await;
    pump.abort();
    let deadline = tokio::time::Instant::now() + DRAIN;
    while !read_thread.is_finished() && tokio::time::Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    status
}

/// Connects to `port` on the container's loopback (its network namespace), as the
/// kubelet's port forwarding does.
pub async fn connect_in_pod(pid: i32, port: u16) -> std::io::Result<tokio::net::TcpStream> {
    let netns: PathBuf = format!("/proc/{pid}/ns/net").into();
    let (tx, rx) = tokio::sync::oneshot::channel();
    // A thread of its own: entering a network namespace changes the calling thread for
    // good, which must never be one of the runtime's.
    std::thread::spawn(move || {
        let result = (|| {
            let ns = File::open(&netns)?;
            if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
                return Err(std::io::Error::last_os_error());
            }
            let timeout = Duration::from_secs(10);
            let v4 = std::net::SocketAddr::from(([127, 0, 0, 1], port));
            let stream = std::net::TcpStream::connect_timeout(&v4, timeout).or_else(|e| {
                let v6 = std::net::SocketAddr::from((std::net::Ipv6Addr::LOCALHOST, port));
                std::net::TcpStream::connect_timeout(&v6, timeout).map_err(|_| e)
            })?;
            stream.set_nonblocking(true)?;
            Ok(stream)
        })();
        let _ = tx.send(result);
    });
    let stream = rx
        .await
        .map_err(|_| std::io::Error::other("the connecting thread ended"))??;
    tokio::net::TcpStream::from_std(stream)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn options_from_the_query() {
        let o = Options::from_query(Some(
            "command=sh&command=-c&command=echo+hi&stdin=true&stdout=true&tty=true&stderr=true",
        ))
        .unwrap();
        assert_eq!(o.command, ["sh", "-c", "echo hi"]);
        assert!(o.stdin && o.stdout && o.tty && !o.stderr);
        assert!(Options::from_query(Some("command=ls")).is_err());
        // The old names kubectl before 1.4 used still work.
        let o = Options::from_query(Some("command=ls&output=1")).unwrap();
        assert!(o.stdout);
    }

    #[test]
    fn exit_codes_travel_as_a_cause() {
        let s = exit_status(&["sh".into()], 3);
        assert_eq!(s["details"]["causes"][0], json!({"reason": "ExitCode", "message": "3"}));
        assert_eq!(s["reason"], "NonZeroExitCode");
    }
}
