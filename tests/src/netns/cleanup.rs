//! Tearing namespaces down, which must work from `Drop` (so it never panics and only warns)
//! and must leave no process behind to keep a deleted namespace alive.

use std::{fs, os::unix::fs::MetadataExt, sync::Once};

use super::{
    cmd::ip,
    names::{netns_dir, netns_path, owner_pid},
};

/// Kills every process inside `namespaces`, then deletes them. Failures are printed, not
/// returned: this runs in `Drop`, where there is nobody to return them to.
pub(crate) fn destroy_namespaces(namespaces: &[String]) {
    kill_processes_in(namespaces);
    for netns in namespaces {
        if let Err(err) = ip(["netns", "del", netns.as_str()]) {
            eprintln!("warning: netns harness could not delete netns {netns}: {err}");
        }
    }
}

/// SIGKILLs every process whose network namespace is one of `namespaces`, found the way
/// `ip netns pids` does it: by comparing the nsfs inode behind `/proc/<pid>/ns/net`.
/// This also catches processes that escaped their guards (forked children, leaked guards).
fn kill_processes_in(namespaces: &[String]) {
    let targets: Vec<(u64, u64)> = namespaces
        .iter()
        .filter_map(|netns| fs::metadata(netns_path(netns)).ok())
        .map(|meta| (meta.dev(), meta.ino()))
        .collect();
    let Ok(proc_dir) = fs::read_dir("/proc") else {
        eprintln!("warning: netns harness cannot read /proc; processes in {namespaces:?} may linger");
        return;
    };
    let me = std::process::id();
    for entry in proc_dir.flatten() {
        let Some(pid) = entry.file_name().to_str().and_then(|name| name.parse::<u32>().ok()) else {
            continue;
        };
        // Our own main thread never enters a test namespace, but never risk killing ourselves.
        if pid == me {
            continue;
        }
        let Ok(meta) = fs::metadata(entry.path().join("ns/net")) else {
            continue;
        };
        if targets.contains(&(meta.dev(), meta.ino())) {
            let Ok(pid) = libc::pid_t::try_from(pid) else {
                continue;
            };
            // SAFETY: kill has no memory-safety preconditions; the pid is a process in one
            // of our namespaces.
            unsafe { libc::kill(pid, libc::SIGKILL) };
        }
    }
}

/// Deletes namespaces named by a harness process that no longer exists, once per process.
pub(crate) fn reap_stale_namespaces() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let Ok(entries) = fs::read_dir(netns_dir()) else {
            return;
        };
        let stale: Vec<String> = entries
            .flatten()
            .filter_map(|entry| entry.file_name().into_string().ok())
            .filter(|name| owner_pid(name).is_some_and(|pid| !process_exists(pid)))
            .collect();
        if !stale.is_empty() {
            eprintln!(
                "netns harness: reaping {} namespaces left by dead test runs: {stale:?}",
                stale.len()
            );
            destroy_namespaces(&stale);
        }
    });
}

fn process_exists(pid: u32) -> bool {
    let Ok(pid) = libc::pid_t::try_from(pid) else {
        return false;
    };
    // SAFETY: signal 0 only checks whether the pid exists; nothing is delivered.
    let rc = unsafe { libc::kill(pid, 0) };
    rc == 0 || std::io::Error::last_os_error().raw_os_error() != Some(libc::ESRCH)
}
