//! Everything the bench creates is named `rbench-<pid>-<what>` (network namespaces,
//! cgroups, bpffs pins) and removed by a guard; on SIGINT/SIGTERM the handler kills the
//! running worker, sweeps what this run (or a dead earlier run) left, and exits 130.
//!
//! The sweep leaves alone what belongs to another live bench process: several may run at
//! once (suites of different users, or tests), and each cleans its own.

use std::{
    path::{Path, PathBuf},
    process::Command,
    sync::atomic::{AtomicBool, AtomicI32, Ordering},
};

pub const PREFIX: &str = "rbench";

/// The worker running now (0: none), killed by the signal handler before it sweeps.
static CHILD: AtomicI32 = AtomicI32::new(0);
/// Set by the signal handler before it kills the worker.
static INTERRUPTED: AtomicBool = AtomicBool::new(false);

/// Called where a worker's failure is seen: after an interrupt that failure is the
/// handler's doing, so this thread waits for the handler to sweep and exit (130) instead of
/// reporting it (and racing the exit with its own).
pub fn park_if_interrupted() {
    while INTERRUPTED.load(Ordering::SeqCst) {
        std::thread::sleep(std::time::Duration::from_secs(1));
    }
}

/// `rbench-<pid>-`: the prefix of every name this process creates.
pub fn own_prefix() -> String {
    format!("{PREFIX}-{}-", std::process::id())
}

pub fn set_child(pid: Option<u32>) {
    CHILD.store(pid.and_then(|p| i32::try_from(p).ok()).unwrap_or(0), Ordering::SeqCst);
}

/// A network namespace deleted on drop (also when the run fails or panics).
pub struct Netns(pub String);

impl Netns {
    pub fn create(what: &str) -> anyhow::Result<Self> {
        let name = format!("{}{what}", own_prefix());
        let out = Command::new("ip").args(["netns", "add", &name]).output()?;
        anyhow::ensure!(
            out.status.success(),
            "ip netns add {name}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
        Ok(Self(name))
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip").args(["netns", "del", &self.0]).output();
    }
}

/// Whether a name with our prefix is this process's or a dead process's (so ours to
/// remove); names of live other processes are theirs.
fn ours_to_remove(name: &str) -> bool {
    let Some(rest) = name.strip_prefix(PREFIX) else {
        return false;
    };
    let pid: Option<i32> = rest
        .trim_start_matches('-')
        .split('-')
        .next()
        .and_then(|p| p.parse().ok());
    match pid {
        Some(pid) if pid as u32 == std::process::id() => true,
        // SAFETY: signal 0 only checks that the process exists.
        Some(pid) => {
            let gone = unsafe { libc::kill(pid, 0) } != 0;
            gone && std::io::Error::last_os_error().raw_os_error() == Some(libc::ESRCH)
        }
        // A pin or cgroup without a pid: whoever made it is not told apart, so remove it.
        None => true,
    }
}

pub fn netns_names() -> Vec<String> {
    let Ok(out) = Command::new("ip").args(["netns", "list"]).output() else {
        return Vec::new();
    };
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|n| n.starts_with(PREFIX))
        .map(str::to_owned)
        .collect()
}

pub fn cgroup2_root() -> Option<PathBuf> {
    let mounts = std::fs::read_to_string("/proc/self/mounts").ok()?;
    mounts.lines().find_map(|l| {
        let f: Vec<&str> = l.split_whitespace().collect();
        (f.get(2) == Some(&"cgroup2")).then(|| PathBuf::from(f[1]))
    })
}

/// `rbench*` directories at the top of the cgroup2 hierarchy and one level down (a suite
/// may nest under a parent it cannot create at the top, as under systemd's slices).
pub fn cgroups() -> Vec<PathBuf> {
    let Some(root) = cgroup2_root() else {
        return Vec::new();
    };
    let mut found = Vec::new();
    let dirs = |p: &Path| -> Vec<PathBuf> {
        std::fs::read_dir(p)
            .map(|d| d.flatten().map(|e| e.path()).filter(|p| p.is_dir()).collect())
            .unwrap_or_default()
    };
    for top in dirs(&root) {
        if name_of(&top).starts_with(PREFIX) {
            found.push(top);
        } else {
            found.extend(dirs(&top).into_iter().filter(|p| name_of(p).starts_with(PREFIX)));
        }
    }
    found
}

pub fn pins() -> Vec<PathBuf> {
    std::fs::read_dir("/sys/fs/bpf")
        .map(|d| {
            d.flatten()
                .map(|e| e.path())
                .filter(|p| name_of(p).starts_with(PREFIX))
                .collect()
        })
        .unwrap_or_default()
}

fn name_of(p: &Path) -> String {
    p.file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default()
}

/// Kills what runs in a cgroup, then removes it, innermost first.
fn remove_cgroup(dir: &Path) {
    if let Ok(children) = std::fs::read_dir(dir) {
        for child in children.flatten().filter(|e| e.path().is_dir()) {
            remove_cgroup(&child.path());
        }
    }
    let _ = std::fs::write(dir.join("cgroup.kill"), "1");
    for _ in 0..50 {
        if std::fs::remove_dir(dir).is_ok() || !dir.exists() {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
}

/// Removes every `rbench` namespace, cgroup and pin of this process or of a dead one.
/// Returns what it removed.
pub fn sweep() -> Vec<String> {
    let mut removed = Vec::new();
    for ns in netns_names().into_iter().filter(|n| ours_to_remove(n)) {
        let _ = Command::new("ip").args(["netns", "del", &ns]).output();
        removed.push(format!("netns {ns}"));
    }
    for cg in cgroups().into_iter().filter(|p| ours_to_remove(&name_of(p))) {
        remove_cgroup(&cg);
        removed.push(format!("cgroup {}", cg.display()));
    }
    for pin in pins().into_iter().filter(|p| ours_to_remove(&name_of(p))) {
        let _ = if pin.is_dir() {
            std::fs::remove_dir_all(&pin)
        } else {
            std::fs::remove_file(&pin)
        };
        removed.push(format!("pin {}", pin.display()));
    }
    removed
}

/// On SIGINT or SIGTERM: kill the worker, sweep, exit 130. The handler lives on its own
/// thread (a small runtime of its own), so the synchronous suites need not poll for it;
/// exec resets it, so workers keep the default action.
pub fn install_signal_handler() -> anyhow::Result<()> {
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (ready_tx, ready_rx) = std::sync::mpsc::channel::<anyhow::Result<()>>();
    std::thread::Builder::new()
        .name("bench-signals".into())
        .spawn(move || {
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let (mut int, mut term) = match (signal(SignalKind::interrupt()), signal(SignalKind::terminate())) {
                    (Ok(i), Ok(t)) => (i, t),
                    (Err(e), _) | (_, Err(e)) => {
                        let _ = ready_tx.send(Err(e.into()));
                        return;
                    }
                };
                let _ = ready_tx.send(Ok(()));
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
                INTERRUPTED.store(true, Ordering::SeqCst);
                let child = CHILD.load(Ordering::SeqCst);
                if child > 0 {
                    // SAFETY: the worker leads its own process group (we started it and
                    // have not reaped it: the main thread is blocked waiting for it).
                    unsafe { libc::kill(-child, libc::SIGKILL) };
                }
                let removed = sweep();
                eprintln!(
                    "bench: interrupted; removed {} leftover(s): {}",
                    removed.len(),
                    removed.join(", ")
                );
                std::process::exit(130);
            });
        })?;
    ready_rx.recv()?
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_own_or_dead_names_are_swept() {
        assert!(ours_to_remove(&format!("{}packet-1", own_prefix())));
        assert!(!ours_to_remove("rdr-up-n1"));
        // pid 1 is alive.
        assert!(!ours_to_remove("rbench-1-sync-3"));
        assert!(ours_to_remove("rbench-pins"));
    }
}
