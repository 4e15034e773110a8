//! Pod and container cgroups. Every node has a parent directory (so a node's pods share a
//! subtree: the scope the ebpf mode's socket LB attaches to), each pod a directory under
//! `pods/`, each container a leaf under its pod. Limits go where the controllers are:
//! on a pure cgroup v2 host into `memory.max`/`cpu.max` of the same tree; on a hybrid host
//! (v1 controllers, an empty v2 `unified` hierarchy, as these VMs have) into the v1
//! `memory` and `cpu` hierarchies, mirrored under the same relative paths.

use std::{
    fs,
    io::ErrorKind,
    path::{Path, PathBuf},
};

/// A CPU limit's CFS period, as the kubelet uses.
const CFS_PERIOD_US: u64 = 100_000;

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("no cgroup v2 hierarchy is mounted (looked for /sys/fs/cgroup and /sys/fs/cgroup/unified)")]
    NoCgroup2,
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Where the hierarchies are, and the node's place in them.
#[derive(Debug, Clone)]
pub struct Cgroups {
    /// The node's parent in the cgroup v2 hierarchy.
    pub v2_node: PathBuf,
    /// The node's parent in the hierarchy that has the memory controller (v2 or v1).
    memory_node: Option<PathBuf>,
    /// The same for the cpu controller.
    cpu_node: Option<PathBuf>,
    unified_has_controllers: bool,
}

/// A pod's or container's directories in every hierarchy used.
#[derive(Debug, Clone)]
pub struct Dirs {
    pub v2: PathBuf,
    pub memory: Option<PathBuf>,
    pub cpu: Option<PathBuf>,
}

impl Dirs {
    /// Every directory whose `cgroup.procs` a process joins.
    pub fn all(&self) -> Vec<PathBuf> {
        let mut out = vec![self.v2.clone()];
        for d in [&self.memory, &self.cpu].into_iter().flatten() {
            if !out.contains(d) {
                out.push(d.clone());
            }
        }
        out
    }
}

/// The cgroup2 mount point.
pub fn cgroup2_root() -> Result<PathBuf, CgroupError> {
    for candidate in ["/sys/fs/cgroup", "/sys/fs/cgroup/unified"] {
        if Path::new(candidate).join("cgroup.procs").exists()
            && Path::new(candidate).join("cgroup.subtree_control").exists()
        {
            return Ok(candidate.into());
        }
    }
    Err(CgroupError::NoCgroup2)
}

impl Cgroups {
    /// Sets up the node's parent `relative` (e.g. `rudder/c1/n1`) in every hierarchy.
    pub fn open(relative: &Path) -> Result<Self, CgroupError> {
        let root = cgroup2_root()?;
        let controllers = fs::read_to_string(root.join("cgroup.controllers")).unwrap_or_default();
        let unified_has_controllers = controllers.split_whitespace().any(|c| c == "memory");
        let v2_node = root.join(relative);
        fs::create_dir_all(&v2_node).map_err(io(&v2_node))?;
        let (memory_node, cpu_node) = if unified_has_controllers {
            enable_controllers(&root, relative)?;
            (Some(v2_node.clone()), Some(v2_node.clone()))
        } else {
            let v1 = |name: &str| -> Option<PathBuf> {
                let base = Path::new("/sys/fs/cgroup").join(name);
                base.join("cgroup.procs").exists().then(|| base.join(relative))
            };
            let (m, c) = (v1("memory"), v1("cpu"));
            for d in [&m, &c].into_iter().flatten() {
                fs::create_dir_all(d).map_err(io(d))?;
            }
            (m, c)
        };
        let cg = Self {
            v2_node,
            memory_node,
            cpu_node,
            unified_has_controllers,
        };
        for sub in ["pods", "agent"] {
            cg.make(Path::new(sub))?;
        }
        if unified_has_controllers {
            enable_here(&cg.v2_node.join("pods"))?;
        }
        Ok(cg)
    }

    fn dirs(&self, relative: &Path) -> Dirs {
        Dirs {
            v2: self.v2_node.join(relative),
            memory: self.memory_node.as_ref().map(|m| m.join(relative)),
            cpu: self.cpu_node.as_ref().map(|c| c.join(relative)),
        }
    }

    fn make(&self, relative: &Path) -> Result<Dirs, CgroupError> {
        let dirs = self.dirs(relative);
        for d in dirs.all() {
            fs::create_dir_all(&d).map_err(io(&d))?;
        }
        Ok(dirs)
    }

    /// The leaf the agent and the shims live in.
    pub fn agent(&self) -> Dirs {
        self.dirs(Path::new("agent"))
    }

    fn pod_rel(uid: &str) -> PathBuf {
        Path::new("pods").join(format!("pod{uid}"))
    }

    pub fn pod(&self, uid: &str) -> Dirs {
        self.dirs(&Self::pod_rel(uid))
    }

    pub fn container(&self, uid: &str, container: &str) -> Dirs {
        self.dirs(&Self::pod_rel(uid).join(container))
    }

    /// Creates the pod's directory with its limits (`None`: unlimited).
    pub fn create_pod(&self, uid: &str, limits: Limits) -> Result<Dirs, CgroupError> {
        let dirs = self.make(&Self::pod_rel(uid))?;
        if self.unified_has_controllers {
            enable_here(&dirs.v2)?;
        }
        self.set_limits(&dirs, limits)?;
        Ok(dirs)
    }

    /// Creates (or reuses, emptied) a container's leaf with its limits.
    pub fn create_container(&self, uid: &str, container: &str, limits: Limits) -> Result<Dirs, CgroupError> {
        let dirs = self.make(&Self::pod_rel(uid).join(container))?;
        self.set_limits(&dirs, limits)?;
        Ok(dirs)
    }

    fn set_limits(&self, dirs: &Dirs, limits: Limits) -> Result<(), CgroupError> {
        if let Some(mem) = &dirs.memory {
            let (file, value) = if self.unified_has_controllers {
                (
                    "memory.max",
                    limits.memory_bytes.map_or("max".to_owned(), |b| b.to_string()),
                )
            } else {
                (
                    "memory.limit_in_bytes",
                    limits.memory_bytes.map_or("-1".to_owned(), |b| b.to_string()),
                )
            };
            write(&mem.join(file), &value)?;
        }
        if let Some(cpu) = &dirs.cpu {
            let quota = limits.cpu_millis.map(|m| (m * CFS_PERIOD_US / 1000).max(1000));
            if self.unified_has_controllers {
                let value = format!("{} {CFS_PERIOD_US}", quota.map_or("max".to_owned(), |q| q.to_string()));
                write(&cpu.join("cpu.max"), &value)?;
            } else {
                write(&cpu.join("cpu.cfs_period_us"), &CFS_PERIOD_US.to_string())?;
                write(
                    &cpu.join("cpu.cfs_quota_us"),
                    &quota.map_or("-1".to_owned(), |q| q.to_string()),
                )?;
            }
        }
        Ok(())
    }

    /// How many times the kernel's OOM killer has killed in this container's cgroup.
    pub fn oom_kills(&self, dirs: &Dirs) -> u64 {
        let Some(mem) = &dirs.memory else { return 0 };
        let file = if self.unified_has_controllers {
            "memory.events"
        } else {
            "memory.oom_control"
        };
        fs::read_to_string(mem.join(file))
            .unwrap_or_default()
            .lines()
            .find_map(|l| l.strip_prefix("oom_kill ").and_then(|n| n.trim().parse().ok()))
            .unwrap_or(0)
    }

    /// Removes a pod's directories (bottom up), killing whatever is still inside.
    pub fn remove_pod(&self, uid: &str) {
        let pod = self.pod(uid);
        for root in pod.all() {
            remove_tree(&root);
        }
    }
}

/// The pids in a cgroup directory (not its children).
pub fn procs(dir: &Path) -> Vec<i32> {
    fs::read_to_string(dir.join("cgroup.procs"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

/// Kills every process in `dirs` with `signal` (SIGKILL through `cgroup.kill` where the
/// kernel has it, so forked children cannot escape).
pub fn signal_all(dirs: &Dirs, signal: i32) {
    if signal == libc::SIGKILL && fs::write(dirs.v2.join("cgroup.kill"), "1").is_ok() {
        return;
    }
    for d in dirs.all() {
        for pid in procs(&d) {
            unsafe { libc::kill(pid, signal) };
        }
    }
}

/// Deletes a cgroup tree, killing its processes first and waiting briefly for them to go.
pub fn remove_tree(root: &Path) {
    let Ok(entries) = fs::read_dir(root) else { return };
    for e in entries.flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            remove_tree(&e.path());
        }
    }
    for attempt in 0..50 {
        let pids = procs(root);
        if pids.is_empty() {
            break;
        }
        if attempt == 0 && fs::write(root.join("cgroup.kill"), "1").is_ok() {
        } else {
            for pid in pids {
                unsafe { libc::kill(pid, libc::SIGKILL) };
            }
        }
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    match fs::remove_dir(root) {
        Ok(()) => {}
        Err(e) if e.kind() == ErrorKind::NotFound => {}
        Err(e) => tracing::warn!(path = %root.display(), error = %e, "removing cgroup"),
    }
}

/// CPU and memory limits for one cgroup.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Limits {
    pub cpu_millis: Option<u64>,
    pub memory_bytes: Option<u64>,
}

fn write(path: &Path, value: &str) -> Result<(), CgroupError> {
    fs::write(path, value).map_err(io(path))
}

fn enable_here(dir: &Path) -> Result<(), CgroupError> {
    let available = fs::read_to_string(dir.join("cgroup.controllers")).unwrap_or_default();
    let want: Vec<String> = ["cpu", "memory", "pids"]
        .iter()
        .filter(|c| available.split_whitespace().any(|a| a == **c))
        .map(|c| format!("+{c}"))
        .collect();
    if want.is_empty() {
        return Ok(());
    }
    write(&dir.join("cgroup.subtree_control"), &want.join(" "))
}

/// Enables cpu, memory and pids from the root down to `relative`'s parent chain.
fn enable_controllers(root: &Path, relative: &Path) -> Result<(), CgroupError> {
    let mut dir = root.to_owned();
    enable_here(&dir)?;
    for part in relative.components() {
        dir.push(part);
        enable_here(&dir)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dirs_list_each_hierarchy_once() {
        let d = Dirs {
            v2: "/a".into(),
            memory: Some("/a".into()),
            cpu: Some("/b".into()),
        };
        assert_eq!(d.all(), [PathBuf::from("/a"), PathBuf::from("/b")]);
    }
}
