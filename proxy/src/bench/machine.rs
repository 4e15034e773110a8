//! What the report says about the node (kernel, CPU, memory) and what the node can run:
//! each capability is probed the way the suites use it, so a refusal names the real cause.

use std::{path::Path, process::Command};

use serde::{Deserialize, Serialize};

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Machine {
    pub kernel_release: String,
    pub cpu_model: String,
    /// CPUs this process may run on.
    pub cores: usize,
    pub memory_bytes: u64,
    pub hostname: String,
}

impl Machine {
    pub fn probe() -> Self {
        let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
        let cpuinfo = read("/proc/cpuinfo");
        let cpu_model = cpuinfo
            .lines()
            .find_map(|l| {
                let (k, v) = l.split_once(':')?;
                matches!(k.trim(), "model name" | "Model" | "cpu model").then(|| v.trim().to_owned())
            })
            .unwrap_or_else(|| "unknown".into());
        let memory_bytes = read("/proc/meminfo")
            .lines()
            .find_map(|l| l.strip_prefix("MemTotal:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .map_or(0, |kib| kib * 1024);
        Self {
            kernel_release: read("/proc/sys/kernel/osrelease").trim().to_owned(),
            cpu_model,
            cores: std::thread::available_parallelism().map_or(1, |n| n.get()),
            memory_bytes,
            hostname: read("/proc/sys/kernel/hostname").trim().to_owned(),
        }
    }
}

/// One thing a suite or mode needs, and whether this node has it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capability {
    pub available: bool,
    /// How it was found, or why it is missing.
    pub detail: String,
}

impl Capability {
    fn yes(detail: impl Into<String>) -> Self {
        Self {
            available: true,
            detail: detail.into(),
        }
    }

    fn no(detail: impl Into<String>) -> Self {
        Self {
            available: false,
            detail: detail.into(),
        }
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Capabilities {
    pub root: Capability,
    pub bpf: Capability,
    pub bpffs: Capability,
    pub nft: Capability,
    pub iptables_legacy: Capability,
    pub iptables_nft: Capability,
    pub ip_vs: Capability,
    pub ipset: Capability,
}

impl Capabilities {
    pub fn probe() -> Self {
        Self {
            root: root(),
            bpf: bpf_syscall(),
            bpffs: bpffs(),
            nft: command("nft", &["list", "tables"]),
            iptables_legacy: command("iptables-legacy", &["-t", "nat", "-S", "PREROUTING"]),
            iptables_nft: command("iptables-nft", &["-t", "nat", "-S", "PREROUTING"]),
            ip_vs: ip_vs(),
            ipset: command("ipset", &["version"]),
        }
    }

    /// Why `what` cannot run here, naming the first missing piece; `None` when it can.
    pub fn refusal(&self, needs: &[(&str, &Capability)]) -> Option<String> {
        needs
            .iter()
            .find(|(_, c)| !c.available)
            .map(|(name, c)| format!("{name}: {}", c.detail))
    }
}

fn root() -> Capability {
    // SAFETY: no arguments, no memory.
    match unsafe { libc::geteuid() } {
        0 => Capability::yes("euid 0"),
        uid => Capability::no(format!(
            "running as uid {uid}; the benchmarks create namespaces and need root"
        )),
    }
}

/// Creates (and closes) a one-entry array map: the same syscall the suites' loaders make,
/// so a kernel without BPF, a seccomp filter or a missing CAP_BPF shows here.
fn bpf_syscall() -> Capability {
    #[repr(C)]
    struct MapCreate {
        map_type: u32,
        key_size: u32,
        value_size: u32,
        max_entries: u32,
        pad: [u32; 16],
    }
    let attr = MapCreate {
        map_type: 2, // BPF_MAP_TYPE_ARRAY
        key_size: 4,
        value_size: 4,
        max_entries: 1,
        pad: [0; 16],
    };
    // SAFETY: BPF_MAP_CREATE (0) reads `size` bytes of `attr`, which lives across the call.
    let fd = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            0,
            &attr as *const MapCreate,
            std::mem::size_of::<MapCreate>() as u32,
        )
    };
    if fd < 0 {
        let e = std::io::Error::last_os_error();
        return Capability::no(format!("the bpf() syscall refused to create a map: {e}"));
    }
    // SAFETY: the descriptor the kernel just gave us.
    unsafe { libc::close(fd as i32) };
    Capability::yes("bpf(BPF_MAP_CREATE) works")
}

fn bpffs() -> Capability {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    if mounts.lines().any(|l| l.split_whitespace().nth(2) == Some("bpf")) {
        Capability::yes("bpffs mounted")
    } else {
        Capability::no("no bpf filesystem mounted (mount -t bpf bpf /sys/fs/bpf)")
    }
}

fn command(program: &str, args: &[&str]) -> Capability {
    match Command::new(program).args(args).output() {
        Ok(o) if o.status.success() => Capability::yes(format!("`{program} {}` works", args.join(" "))),
        Ok(o) => Capability::no(format!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )),
        Err(e) => Capability::no(format!("{program} is not installed ({e})")),
    }
}

fn ip_vs() -> Capability {
    let present = || Path::new("/proc/net/ip_vs").exists();
    if !present() {
        // Loadable counts: the ipvs backend loads it the same way.
        let _ = Command::new("modprobe").arg("ip_vs").output();
    }
    if present() {
        Capability::yes("/proc/net/ip_vs present")
    } else {
        Capability::no("this kernel has no IP_VS (/proc/net/ip_vs missing)")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn machine_fields_are_filled() {
        let m = Machine::probe();
        assert!(!m.kernel_release.is_empty());
        assert!(m.cores >= 1);
        assert!(m.memory_bytes > 0);
    }

    #[test]
    fn refusal_names_the_first_missing_piece() {
        let caps = Capabilities::probe();
        let missing = Capability::no("this kernel has no IP_VS (/proc/net/ip_vs missing)");
        let why = caps.refusal(&[("root", &Capability::yes("")), ("ipvs", &missing)]);
        assert_eq!(
            why.as_deref(),
            Some("ipvs: this kernel has no IP_VS (/proc/net/ip_vs missing)")
        );
        assert_eq!(caps.refusal(&[]), None);
    }
}
