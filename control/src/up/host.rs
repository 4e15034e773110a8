//! What `rudder up` makes on the host: the underlay (a bridge in its own namespace, a veth
//! to the host so the control plane and `kubectl` reach the nodes), the node namespaces,
//! the cgroup tree holding every process, per-node bpffs mounts; and their removal.

use std::{
    fs,
    os::unix::process::CommandExt,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
};

use anyhow::{Context, Result, bail};

use super::Layout;
use crate::node::cgroups;

fn ip(args: &[&str]) -> Result<String> {
    let out = Command::new("ip")
        .args(args)
        .output()
        .context("running ip (install iproute2)")?;
    if !out.status.success() {
        bail!(
            "`ip {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// The cluster's cgroup in the v2 hierarchy (created), which every process joins.
pub fn cgroups(layout: &Layout) -> Result<PathBuf> {
    let root = cgroups::cgroup2_root()?;
    let dir = root.join(layout.cgroup());
    fs::create_dir_all(dir.join("control")).with_context(|| format!("creating {}", dir.display()))?;
    Ok(dir)
}

/// Spawns `cmd` with its output in `log`, inside `netns` (when given) and the v2 cgroup
/// `cgroup` (created).
pub fn spawn(cmd: &mut Command, netns: Option<&Path>, cgroup: &Path, log: &Path) -> Result<Child> {
    fs::File::create(log).with_context(|| format!("creating {}", log.display()))?;
    spawn_appending(cmd, netns, cgroup, log)
}

/// [`spawn`], appending to `log` (a restarted component keeps its earlier lines).
pub fn spawn_appending(cmd: &mut Command, netns: Option<&Path>, cgroup: &Path, log: &Path) -> Result<Child> {
    fs::create_dir_all(cgroup).with_context(|| format!("creating cgroup {}", cgroup.display()))?;
    let procs = fs::OpenOptions::new()
        .write(true)
        .open(cgroup.join("cgroup.procs"))
        .with_context(|| format!("opening {}/cgroup.procs", cgroup.display()))?;
    let ns = netns
        .map(fs::File::open)
        .transpose()
        .context("opening the node's network namespace")?;
    let out = fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .with_context(|| format!("opening {}", log.display()))?;
    cmd.stdin(Stdio::null()).stdout(out.try_clone()?).stderr(out);
    unsafe {
        cmd.pre_exec(move || {
            use std::os::fd::AsRawFd;
            if libc::write(procs.as_raw_fd(), b"0".as_ptr().cast(), 1) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            if let Some(ns) = &ns
                && libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) != 0
            {
                return Err(std::io::Error::last_os_error());
            }
            // Ctrl-C goes to `rudder up`, which tears down in order.
            libc::setpgid(0, 0);
            Ok(())
        });
    }
    Ok(cmd.spawn()?)
}

/// The underlay bridge, the host's veth into it, and one namespace per node on it.
pub fn underlay(layout: &Layout, nodes: usize) -> Result<()> {
    let host_ip = layout.host_ip();
    let prefix = format!(
        "{}.",
        host_ip.octets()[..3]
            .iter()
            .map(|o| o.to_string())
            .collect::<Vec<_>>()
            .join(".")
    );
    if ip(&["-4", "-o", "addr", "show"])?
        .lines()
        .any(|l| l.contains(&format!("inet {prefix}")))
    {
        bail!(
            "the underlay {}/24 is already in use on this host; pick another with --underlay",
            layout.underlay
        );
    }
    let net = layout.underlay_netns();
    ip(&["netns", "add", &net])?;
    ip(&["-n", &net, "link", "add", "br0", "type", "bridge"])?;
    ip(&["-n", &net, "link", "set", "br0", "up"])?;
    let veth = layout.host_veth();
    ip(&[
        "link", "add", &veth, "type", "veth", "peer", "name", "host", "netns", &net,
    ])?;
    ip(&["-n", &net, "link", "set", "host", "master", "br0", "up"])?;
    ip(&["addr", "add", &format!("{host_ip}/24"), "dev", &veth])?;
    ip(&["link", "set", &veth, "up"])?;
    for k in 1..=nodes {
        let ns = layout.node_netns(k);
        let port = layout.node_name(k);
        ip(&["netns", "add", &ns])?;
        ip(&[
            "link", "add", "eth0", "netns", &ns, "type", "veth", "peer", "name", &port, "netns", &net,
        ])?;
        ip(&["-n", &net, "link", "set", &port, "master", "br0", "up"])?;
        ip(&["-n", &ns, "link", "set", "lo", "up"])?;
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{}/24", layout.node_ip(k)),
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &ns, "link", "set", "eth0", "up"])?;
        // Real nodes have a default route; without one a node's own connections to a
        // ClusterIP fail before any proxy mode sees them.
        ip(&["-n", &ns, "route", "add", "default", "via", &host_ip.to_string()])?;
    }
    Ok(())
}

const BPF_FS_MAGIC: i64 = 0xcafe4a11;

pub fn mount_bpffs(dir: &Path) -> Result<()> {
    fs::create_dir_all(dir)?;
    let c = std::ffi::CString::new(dir.as_os_str().as_encoded_bytes())?;
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    if unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0 && st.f_type as i64 == BPF_FS_MAGIC {
        return Ok(());
    }
    if unsafe { libc::mount(c"bpf".as_ptr(), c.as_ptr(), c"bpf".as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(std::io::Error::last_os_error().into());
    }
    Ok(())
}

/// Removes everything a cluster of this name may have left: processes (through its
/// cgroup tree), bpffs mounts, network namespaces, the host veth, cgroups and state.
pub fn teardown(layout: &Layout) {
    let relative = layout.cgroup();
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(v2) = cgroups::cgroup2_root() {
        roots.push(v2.join(&relative));
    }
    for v1 in ["memory", "cpu"] {
        let base = Path::new("/sys/fs/cgroup").join(v1);
        if base.join("cgroup.procs").exists() {
            roots.push(base.join(&relative));
        }
    }
    // Kill first in the v2 tree (which holds every process), then remove all trees.
    if let Some(v2) = roots.first()
        && v2.exists()
    {
        let _ = fs::write(v2.join("cgroup.kill"), "1");
        kill_tree(v2);
        // Dying processes keep their cgroups busy: wait until the tree is empty (up to
        // 10 s, for a node full of pods on a loaded machine) before removing it.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        while std::time::Instant::now() < deadline
            && fs::read_to_string(v2.join("cgroup.events")).is_ok_and(|e| e.lines().any(|l| l == "populated 1"))
        {
            std::thread::sleep(std::time::Duration::from_millis(20));
        }
    }
    for r in &roots {
        cgroups::remove_tree(r);
        // The shared `rudder` parent goes too once no other cluster uses it.
        if let Some(parent) = r.parent() {
            let _ = fs::remove_dir(parent);
        }
    }
    let run = layout.run_dir();
    let mounts = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    let mut points: Vec<String> = mounts
        .lines()
        .filter_map(|l| l.split_whitespace().nth(4).map(str::to_owned))
        .filter(|p| Path::new(p).starts_with(&run))
        .collect();
    points.sort_by_key(|p| std::cmp::Reverse(p.len()));
    for p in points {
        if let Ok(c) = std::ffi::CString::new(p) {
            unsafe { libc::umount2(c.as_ptr(), libc::MNT_DETACH) };
        }
    }
    let prefix = format!("rdr-{}-", layout.name);
    for e in fs::read_dir("/run/netns").into_iter().flatten().flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if name.starts_with(&prefix) {
            let _ = ip(&["netns", "delete", &name]);
        }
    }
    let _ = ip(&["link", "delete", &layout.host_veth()]);
    let _ = fs::remove_dir_all(&run);
    // Mount points the nodes' shims created on the host (the process runtime has no image
    // root to create them in): removed when nothing was put in them.
    for node in fs::read_dir(layout.data_dir.join("nodes"))
        .into_iter()
        .flatten()
        .flatten()
    {
        let list =
            fs::read_to_string(node.path().join(crate::node::pod_worker::CREATED_MOUNT_POINTS)).unwrap_or_default();
        for p in list.lines().map(Path::new) {
            remove_if_empty(p);
        }
    }
    let _ = fs::remove_dir_all(layout.data_dir.join("nodes"));
    let _ = fs::remove_dir_all(layout.server_dir());
}

fn kill_tree(dir: &Path) {
    for pid in cgroups::procs(dir) {
        unsafe { libc::kill(pid, libc::SIGKILL) };
    }
    for e in fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.file_type().is_ok_and(|t| t.is_dir()) {
            kill_tree(&e.path());
        }
    }
}

/// Removes `path` if it is an empty file or a tree of empty directories.
fn remove_if_empty(path: &Path) {
    match fs::symlink_metadata(path) {
        Ok(m) if m.is_dir() => {
            for e in fs::read_dir(path).into_iter().flatten().flatten() {
                remove_if_empty(&e.path());
            }
            let _ = fs::remove_dir(path);
        }
        Ok(m) if m.is_file() && m.len() == 0 => {
            let _ = fs::remove_file(path);
        }
        _ => {}
    }
}
