//! Container runs on disk: each run of a container has a directory
//! `<pod dir>/containers/<name>/<attempt>/` with the shim's `spec.json`, `shim.pid`,
//! `started.json` and `exit.json`. The attempt number is the restart count, so a
//! restarted agent recovers every container's state, restart count included, from disk.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    time::Duration,
};

use super::shim::{self, EXIT_FILE, Exited, SHIM_PID_FILE, STARTED_FILE, ShimSpec, Started};

/// What the files say about one run.
#[derive(Debug, Clone, PartialEq)]
pub enum RunState {
    /// The shim was started but has not started the process yet.
    Starting,
    Running {
        pid: i32,
        started_at: String,
    },
    Exited {
        started_at: Option<String>,
        exited: Exited,
    },
    /// No exit was recorded and the shim is gone (killed with its node, say).
    Lost {
        started_at: Option<String>,
    },
}

/// The directory of one run.
pub fn run_dir(pod_dir: &Path, container: &str, attempt: u32) -> PathBuf {
    pod_dir.join("containers").join(container).join(attempt.to_string())
}

/// The newest attempt recorded for `container`, if any.
pub fn latest_attempt(pod_dir: &Path, container: &str) -> Option<u32> {
    fs::read_dir(pod_dir.join("containers").join(container))
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_string_lossy().parse::<u32>().ok())
        .max()
}

fn alive(pid: i32) -> bool {
    pid > 0
        && (unsafe { libc::kill(pid, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM))
}

pub fn state(dir: &Path) -> RunState {
    let started: Option<Started> = shim::read_state(dir, STARTED_FILE);
    if let Some(exited) = shim::read_state::<Exited>(dir, EXIT_FILE) {
        return RunState::Exited {
            started_at: started.map(|s| s.started_at),
            exited,
        };
    }
    let shim_alive = fs::read_to_string(dir.join(SHIM_PID_FILE))
        .ok()
        .and_then(|s| s.trim().parse::<i32>().ok())
        .is_some_and(alive);
    match started {
        Some(s) if shim_alive || alive(s.pid) => RunState::Running {
            pid: s.pid,
            started_at: s.started_at,
        },
        Some(s) => RunState::Lost {
            started_at: Some(s.started_at),
        },
        // The shim writes its pid right after it daemonizes; give a just-spawned one time.
        None if shim_alive || !dir.join(SHIM_PID_FILE).exists() && recently_created(dir) => RunState::Starting,
        None => RunState::Lost { started_at: None },
    }
}

fn recently_created(dir: &Path) -> bool {
    fs::metadata(dir.join(shim::SPEC_FILE))
        .and_then(|m| m.modified())
        .ok()
        .and_then(|t| t.elapsed().ok())
        .is_some_and(|age| age < Duration::from_secs(10))
}

/// Starts a shim for `spec` in `dir` (created here). The shim daemonizes, so the child
/// we wait for exits at once and the shim outlives this agent.
pub fn start(dir: &Path, spec: &ShimSpec, agent_cgroups: &[PathBuf]) -> std::io::Result<()> {
    fs::create_dir_all(dir)?;
    shim::write_state(dir, shim::SPEC_FILE, spec)?;
    let exe = std::env::current_exe()?;
    let procs: Vec<PathBuf> = agent_cgroups.iter().map(|d| d.join("cgroup.procs")).collect();
    let mut cmd = std::process::Command::new(exe);
    cmd.arg("node-shim").arg(dir).stdin(std::process::Stdio::null());
    let log = fs::File::create(dir.join("shim.log"))?;
    cmd.stdout(log.try_clone()?).stderr(log);
    // The shims live in the agent's leaf, never in a pod's cgroup: a container's memory
    // limit must not count (or OOM-kill) its shim.
    let files: Vec<fs::File> = procs
        .iter()
        .filter_map(|p| fs::OpenOptions::new().write(true).open(p).ok())
        .collect();
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            for f in &files {
                libc::write(f.as_raw_fd(), b"0".as_ptr().cast(), 1);
            }
            Ok(())
        });
    }
    let status = cmd.status()?;
    if !status.success() {
        return Err(std::io::Error::other(format!(
            "node-shim exited with {status}; see {}",
            dir.join("shim.log").display()
        )));
    }
    Ok(())
}

/// Sends `signal` to a run's process.
pub fn signal(dir: &Path, sig: i32) {
    if let RunState::Running { pid, .. } = state(dir) {
        unsafe { libc::kill(pid, sig) };
    }
}
