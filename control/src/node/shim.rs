//! The container shim (`rudder node-shim SPEC`): containerd-shim's and conmon's job for the
//! process runtime. The agent starts one per container run; it daemonizes, starts the
//! container process inside the pod's namespaces and cgroup, copies its stdout and stderr
//! into a CRI-format log file, and records the exit status. Because the shim, not the
//! agent, is the container's parent and log writer, an agent restart neither kills a
//! container nor breaks its logs: the new agent reads the state files and carries on.
//!
//! Everything here is synchronous and uses raw syscalls: the work between fork and exec
//! must not allocate or take locks.

use std::{
    ffi::CString,
    fs::{self, File, OpenOptions},
    io::{Read, Write},
    os::{
        fd::{AsRawFd, OwnedFd},
        unix::{fs::OpenOptionsExt, process::CommandExt},
    },
    path::{Path, PathBuf},
    process::{Command, Stdio},
    sync::{Arc, Mutex},
    time::Duration,
};

use serde::{Deserialize, Serialize};

use crate::node::attach;

/// How to run one container process: written by the agent as `spec.json` in the run's
/// state directory.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShimSpec {
    pub argv: Vec<String>,
    pub env: Vec<(String, String)>,
    pub working_dir: Option<PathBuf>,
    /// The pod's network namespace; `None` keeps the agent's own (hostNetwork).
    pub netns: Option<PathBuf>,
    /// The pod's hostname (a UTS namespace of its own); `None` keeps the node's.
    pub hostname: Option<String>,
    /// Mount a sysfs of the container's network namespace on `/sys`, so `/sys/class/net`
    /// lists the container's devices (as a container runtime does).
    pub fresh_sysfs: bool,
    /// Bind mounts into the container's private mount namespace, in order.
    pub mounts: Vec<BindMount>,
    /// The container's own cgroups (a leaf under its pod's, in each hierarchy used).
    pub cgroups: Vec<PathBuf>,
    /// The CRI-format log file.
    pub log_path: PathBuf,
    /// The container's `stdin`, `stdinOnce` and `tty`: its stdin stays open for attached
    /// clients, and a terminal is its stdio.
    #[serde(default)]
    pub stdin: bool,
    #[serde(default)]
    pub stdin_once: bool,
    #[serde(default)]
    pub tty: bool,
    /// Mount points this shim had to create on the host are appended here (one path a
    /// line), so whoever tears the node down can remove them.
    #[serde(default)]
    pub created_mount_points: Option<PathBuf>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct BindMount {
    pub source: PathBuf,
    pub target: PathBuf,
    pub read_only: bool,
}

/// `started.json`: written once the container process exists.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Started {
    pub pid: i32,
    pub started_at: String,
}

/// `exit.json`: written once the container process has exited.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq, Eq)]
pub struct Exited {
    pub exit_code: i32,
    pub signal: Option<i32>,
    pub finished_at: String,
    /// Set when the process could not be started at all (bad path, failed mount, ...).
    #[serde(default)]
    pub start_error: Option<String>,
}

pub const SPEC_FILE: &str = "spec.json";
pub const STARTED_FILE: &str = "started.json";
pub const EXIT_FILE: &str = "exit.json";
pub const SHIM_PID_FILE: &str = "shim.pid";

const OPEN_TREE_CLONE: libc::c_uint = 1;
const AT_RECURSIVE: libc::c_uint = 0x8000;
const MOVE_MOUNT_F_EMPTY_PATH: libc::c_uint = 0x4;

/// The default PATH for containers whose env has none (what images usually set).
const DEFAULT_PATH: &str = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// A CRI log line's longest payload; longer lines are split into partial (`P`) records.
const MAX_LOG_LINE: usize = 16 * 1024;

pub fn now_rfc3339() -> String {
    jiff::Timestamp::now().to_string()
}

/// Writes `value` as JSON to `dir/name` atomically (rename), so a reader never sees half.
pub fn write_state<T: Serialize>(dir: &Path, name: &str, value: &T) -> std::io::Result<()> {
    let tmp = dir.join(format!(".{name}.tmp"));
    fs::write(&tmp, serde_json::to_vec(value).map_err(std::io::Error::other)?)?;
    fs::rename(tmp, dir.join(name))
}

pub fn read_state<T: for<'de> Deserialize<'de>>(dir: &Path, name: &str) -> Option<T> {
    serde_json::from_slice(&fs::read(dir.join(name)).ok()?).ok()
}

/// The shim's entry point: `state_dir` holds `spec.json`. Returns only in the first
/// process (after daemonizing); the daemon exits the process itself.
pub fn main(state_dir: &Path) -> std::io::Result<()> {
    let spec: ShimSpec =
        serde_json::from_slice(&fs::read(state_dir.join(SPEC_FILE))?).map_err(std::io::Error::other)?;
    // Daemonize: the agent reaps the first process at once; the second is reparented to
    // the nearest subreaper and outlives the agent.
    match unsafe { libc::fork() } {
        -1 => return Err(std::io::Error::last_os_error()),
        0 => {}
        _ => return Ok(()),
    }
    unsafe { libc::setsid() };
    let _ = fs::write(state_dir.join(SHIM_PID_FILE), std::process::id().to_string());
    let code = match supervise(&spec, state_dir) {
        Ok(()) => 0,
        Err(e) => {
            let exited = Exited {
                exit_code: 128,
                signal: None,
                finished_at: now_rfc3339(),
                start_error: Some(e.to_string()),
            };
            let _ = write_state(state_dir, EXIT_FILE, &exited);
            1
        }
    };
    std::process::exit(code)
}

/// Everything the child needs, prepared before fork so the child only makes syscalls.
struct Prepared {
    cgroup_procs: Vec<OwnedFd>,
    netns: Option<OwnedFd>,
    hostname: Option<CString>,
    fresh_sysfs: bool,
    mounts: Vec<(OwnedFd, CString, bool)>,
    working_dir: Option<CString>,
    /// Where the child names the step that failed (the spawn error carries only errno).
    diag: OwnedFd,
}

fn cstring(p: &Path) -> std::io::Result<CString> {
    CString::new(p.as_os_str().as_encoded_bytes()).map_err(std::io::Error::other)
}

fn prepare(spec: &ShimSpec, diag: File) -> std::io::Result<Prepared> {
    let mut cgroup_procs = Vec::new();
    for dir in &spec.cgroups {
        let f = OpenOptions::new()
            .write(true)
            .custom_flags(libc::O_CLOEXEC)
            .open(dir.join("cgroup.procs"))
            .map_err(|e| std::io::Error::new(e.kind(), format!("cgroup {}: {e}", dir.display())))?;
        cgroup_procs.push(OwnedFd::from(f));
    }
    let netns = match &spec.netns {
        Some(p) => Some(
            File::open(p)
                .map_err(|e| std::io::Error::new(e.kind(), format!("netns {}: {e}", p.display())))?
                .into(),
        ),
        None => None,
    };
    let mut mounts = Vec::new();
    for m in &spec.mounts {
        // A detached copy of the source's mount tree: unlike a path or an O_PATH fd, it
        // can be attached inside the container's new mount namespace, even once /sys (where
        // some sources live) has been replaced there.
        let path = cstring(&m.source)?;
        let fd = unsafe {
            libc::syscall(
                libc::SYS_open_tree,
                libc::AT_FDCWD,
                path.as_ptr(),
                OPEN_TREE_CLONE | libc::O_CLOEXEC as libc::c_uint | AT_RECURSIVE,
            )
        };
        if fd < 0 {
            let e = std::io::Error::last_os_error();
            return Err(std::io::Error::new(
                e.kind(),
                format!("volume source {}: {e}", m.source.display()),
            ));
        }
        let source = unsafe { <OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
        // A mount point must exist: directories (and files, for file sources) are created
        // on the host as empty mount points when the path is missing.
        if !m.target.exists() {
            let top = m
                .target
                .ancestors()
                .take_while(|a| !a.exists())
                .last()
                .unwrap_or(&m.target)
                .to_owned();
            if let Some(record) = &spec.created_mount_points {
                let mut f = OpenOptions::new().create(true).append(true).open(record)?;
                writeln!(f, "{}", top.display())?;
            }
            if m.source.is_dir() {
                fs::create_dir_all(&m.target)?;
            } else {
                if let Some(parent) = m.target.parent() {
                    fs::create_dir_all(parent)?;
                }
                File::create(&m.target)?;
            }
        }
        mounts.push((source, cstring(&m.target)?, m.read_only));
    }
    Ok(Prepared {
        cgroup_procs,
        netns,
        hostname: spec
            .hostname
            .as_deref()
            .map(CString::new)
            .transpose()
            .map_err(std::io::Error::other)?,
        fresh_sysfs: spec.fresh_sysfs,
        mounts,
        working_dir: spec.working_dir.as_deref().map(cstring).transpose()?,
        diag: diag.into(),
    })
}

/// Between fork and exec: join the cgroup and namespaces, mount, set the hostname.
fn enter(p: &Prepared) -> std::io::Result<()> {
    let step: std::cell::Cell<&'static str> = std::cell::Cell::new("setsid");
    let check = |rc: libc::c_int| -> std::io::Result<()> {
        if rc >= 0 {
            return Ok(());
        }
        let err = std::io::Error::last_os_error();
        unsafe {
            let what = step.get();
            libc::write(p.diag.as_raw_fd(), what.as_ptr().cast(), what.len());
        }
        Err(err)
    };
    unsafe {
        check(libc::setsid())?;
        step.set("joining the container's cgroup");
        for fd in &p.cgroup_procs {
            check(libc::write(fd.as_raw_fd(), b"0".as_ptr().cast(), 1) as libc::c_int)?;
        }
        step.set("entering the pod's network namespace");
        if let Some(ns) = &p.netns {
            check(libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET))?;
        }
        let uts = if p.hostname.is_some() { libc::CLONE_NEWUTS } else { 0 };
        step.set("unsharing mount and UTS namespaces");
        check(libc::unshare(libc::CLONE_NEWNS | uts))?;
        let root = c"/";
        step.set("making / private");
        check(libc::mount(
            std::ptr::null(),
            root.as_ptr(),
            std::ptr::null(),
            libc::MS_REC | libc::MS_PRIVATE,
            std::ptr::null(),
        ))?;
        if p.fresh_sysfs {
            let sys = c"/sys";
            let sysfs = c"sysfs";
            // Drop the old /sys and everything mounted under it (cgroup and bpffs mounts
            // of the host), so /proc/self/mountinfo shows only what the pod is given.
            libc::umount2(sys.as_ptr(), libc::MNT_DETACH);
            step.set("mounting sysfs on /sys");
            check(libc::mount(
                sysfs.as_ptr(),
                sys.as_ptr(),
                sysfs.as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ))?;
        }
        for (fd, target, read_only) in &p.mounts {
            step.set("attaching a volume");
            check(libc::syscall(
                libc::SYS_move_mount,
                fd.as_raw_fd(),
                c"".as_ptr(),
                libc::AT_FDCWD,
                target.as_ptr(),
                MOVE_MOUNT_F_EMPTY_PATH,
            ) as libc::c_int)?;
            if *read_only {
                step.set("making a volume read-only");
                check(libc::mount(
                    std::ptr::null(),
                    target.as_ptr(),
                    std::ptr::null(),
                    libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
                    std::ptr::null(),
                ))?;
            }
        }
        step.set("setting the hostname");
        if let Some(h) = &p.hostname {
            check(libc::sethostname(h.as_ptr(), h.as_bytes().len()))?;
        }
        step.set("changing to workingDir");
        if let Some(dir) = &p.working_dir {
            check(libc::chdir(dir.as_ptr()))?;
        }
    }
    Ok(())
}

fn supervise(spec: &ShimSpec, state_dir: &Path) -> std::io::Result<()> {
    if let Some(parent) = spec.log_path.parent() {
        fs::create_dir_all(parent)?;
    }
    let log = Arc::new(Mutex::new(
        OpenOptions::new().create(true).append(true).open(&spec.log_path)?,
    ));
    let diag_path = state_dir.join("enter.err");
    let prepared = prepare(spec, File::create(&diag_path)?)?;
    let program = spec
        .argv
        .first()
        .ok_or_else(|| std::io::Error::other("empty command"))?;
    let mut cmd = Command::new(program);
    cmd.args(&spec.argv[1..]).env_clear();
    // A terminal is the container's stdin, stdout and stderr at once; without one, stdin
    // is a pipe only when the container asks for it (attached clients write into it).
    let terminal = if spec.tty {
        let (master, slave) = crate::node::streaming::exec::open_pty()?;
        cmd.stdin(slave.try_clone()?).stdout(slave.try_clone()?).stderr(slave);
        Some(master)
    } else {
        cmd.stdin(if spec.stdin { Stdio::piped() } else { Stdio::null() })
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        None
    };
    if !spec.env.iter().any(|(k, _)| k == "PATH") {
        cmd.env("PATH", DEFAULT_PATH);
    }
    cmd.envs(spec.env.iter().map(|(k, v)| (k, v)));
    let tty = spec.tty;
    unsafe {
        cmd.pre_exec(move || {
            enter(&prepared)?;
            // After `enter`'s setsid: the terminal becomes the new session's.
            if tty && libc::ioctl(0, libc::TIOCSCTTY, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        })
    };
    let mut child = cmd.spawn().map_err(|e| {
        let step = fs::read_to_string(&diag_path).unwrap_or_default();
        let at = if step.is_empty() {
            String::new()
        } else {
            format!(" while {step}")
        };
        std::io::Error::new(e.kind(), format!("starting {program}{at}: {e}"))
    })?;
    // The terminal's other side must close here, or reading it never ends.
    drop(cmd);
    let stdin: Option<Box<dyn Write + Send>> = match (&terminal, child.stdin.take()) {
        (Some(master), _) if spec.stdin => Some(Box::new(File::from(master.try_clone()?))),
        (None, Some(pipe)) => Some(Box::new(pipe)),
        _ => None,
    };
    let resize = terminal.as_ref().map(OwnedFd::try_clone).transpose()?;
    let hub = attach::Hub::new(stdin, resize, spec.stdin_once);
    if let Err(e) = hub.listen(state_dir) {
        // Logs and exec do not need the socket: the container runs without attach.
        eprintln!("attach socket in {}: {e}", state_dir.display());
    }
    write_state(
        state_dir,
        STARTED_FILE,
        &Started {
            pid: child.id() as i32,
            started_at: now_rfc3339(),
        },
    )?;
    let outputs: Vec<(Box<dyn Read + Send>, &'static str, u8)> = match terminal {
        Some(master) => vec![(Box::new(File::from(master)), "stdout", attach::STDOUT)],
        None => [
            child
                .stdout
                .take()
                .map(|s| (Box::new(s) as Box<dyn Read + Send>, "stdout", attach::STDOUT)),
            child
                .stderr
                .take()
                .map(|s| (Box::new(s) as Box<dyn Read + Send>, "stderr", attach::STDERR)),
        ]
        .into_iter()
        .flatten()
        .collect(),
    };
    let relays: Vec<_> = outputs
        .into_iter()
        .map(|(stream, name, kind)| relay(stream, name, kind, Arc::clone(&log), Arc::clone(&hub)))
        .collect();
    let status = child.wait()?;
    // A daemon the container left behind may keep the pipes open: wait briefly for the
    // last lines, never for ever.
    let deadline = std::time::Instant::now() + Duration::from_secs(2);
    for r in relays {
        while !r.is_finished() && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
    }
    use std::os::unix::process::ExitStatusExt;
    let exited = Exited {
        exit_code: status.code().unwrap_or_else(|| 128 + status.signal().unwrap_or(0)),
        signal: status.signal(),
        finished_at: now_rfc3339(),
        start_error: None,
    };
    write_state(state_dir, EXIT_FILE, &exited)
}

/// Copies one stream to attached clients as it comes, and into the log as CRI records,
/// one a line (`<time> <stream> F|P <text>`); a line longer than `MAX_LOG_LINE`, or one the
/// stream ends without finishing, is written in partial (`P`) records.
fn relay(
    mut stream: Box<dyn Read + Send>,
    name: &'static str,
    kind: u8,
    log: Arc<Mutex<File>>,
    hub: Arc<attach::Hub>,
) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let write = |full: bool, text: &[u8]| {
            let mut record = format!("{} {name} {} ", now_rfc3339(), if full { "F" } else { "P" }).into_bytes();
            record.extend_from_slice(text);
            record.push(b'\n');
            if let Ok(mut f) = log.lock() {
                let _ = f.write_all(&record);
            }
        };
        let mut chunk = vec![0u8; 16 * 1024];
        let mut pending: Vec<u8> = Vec::new();
        loop {
            // A terminal's master answers EIO once the container's side is closed.
            let n = match stream.read(&mut chunk) {
                Ok(0) | Err(_) => break,
                Ok(n) => n,
            };
            hub.broadcast(kind, &chunk[..n]);
            pending.extend_from_slice(&chunk[..n]);
            loop {
                match pending.iter().take(MAX_LOG_LINE).position(|b| *b == b'\n') {
                    Some(pos) => {
                        write(true, &pending[..pos]);
                        pending.drain(..=pos);
                    }
                    None if pending.len() >= MAX_LOG_LINE => {
                        write(false, &pending[..MAX_LOG_LINE]);
                        pending.drain(..MAX_LOG_LINE);
                    }
                    None => break,
                }
            }
        }
        if !pending.is_empty() {
            write(false, &pending);
        }
    })
}
