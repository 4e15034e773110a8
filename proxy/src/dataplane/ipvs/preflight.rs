//! The ipvs mode's kernel check.
//!
//! IPVS lives in the kernel (`ip_vs`); kube-proxy refuses ipvs mode when the kernel cannot
//! provide it. So do we, before touching anything: this kernel has no modules and no
//! built-in IP_VS, and a clear refusal that names the cause and the alternative beats a
//! dataplane that silently does nothing.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum IpvsError {
    #[error(
        "ipvs mode needs the kernel's IP Virtual Server (CONFIG_IP_VS), but {} does not exist: \
         IP_VS is not built into this kernel and its module is not loaded (this kernel has {}). \
         Use --mode nftables (or --mode ebpf) instead",
        proc_file.display(),
        if *modules_supported { "loadable modules: try `modprobe ip_vs`" } else { "no loadable module support" }
    )]
    NotAvailable {
        proc_file: PathBuf,
        modules_supported: bool,
    },
    #[error("ipvs operation failed: {0}")]
    Operation(String),
    /// The kernel refused operations of one step of a sync; the first in plan order is
    /// named, with how many others of that step failed too.
    #[error("ipvs {op} failed{}", if *others > 0 { format!(" (and {others} more of the same step)") } else { String::new() })]
    Refused {
        op: String,
        others: usize,
        #[source]
        source: crate::netlink::NetlinkError,
    },
}

/// Loads IPVS and the modules its helpers use, as kube-proxy does, when the kernel can
/// load modules; a kernel that cannot (or lacks them) is judged by [`preflight`].
pub fn load_modules() {
    if !Path::new("/proc/modules").exists() {
        return;
    }
    for module in ["ip_vs", "ip_vs_rr", "nf_conntrack", "ip_set"] {
        let _ = std::process::Command::new("modprobe")
            .arg(module)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .status();
    }
}

/// Whether this kernel has IPVS now: built in, loaded, or loadable (then loaded). Tests and
/// the e2e suite branch on this (run here, or boot a kernel that has it) rather than assume.
pub fn kernel_has_ip_vs() -> bool {
    load_modules();
    preflight(Path::new("/proc")).is_ok()
}

/// Checks that IPVS is usable, reading `<proc_root>/net/ip_vs` (present exactly when the
/// kernel has IPVS, built in or loaded) and `<proc_root>/modules` (present when the kernel
/// can load modules).
pub fn preflight(proc_root: &Path) -> Result<(), IpvsError> {
    let proc_file = proc_root.join("net/ip_vs");
    if proc_file.exists() {
        return Ok(());
    }
    Err(IpvsError::NotAvailable {
        proc_file,
        modules_supported: proc_root.join("modules").exists(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn missing_ip_vs_is_refused_with_the_cause_and_the_alternative() {
        let root = std::env::temp_dir().join(format!("rudder-ipvs-{}", std::process::id()));
        std::fs::create_dir_all(root.join("net")).unwrap();
        let err = preflight(&root).unwrap_err().to_string();
        assert!(err.contains("net/ip_vs does not exist"), "{err}");
        assert!(err.contains("no loadable module support"), "{err}");
        assert!(err.contains("--mode nftables"), "{err}");
        std::fs::write(root.join("modules"), "").unwrap();
        assert!(preflight(&root).unwrap_err().to_string().contains("modprobe ip_vs"));
        std::fs::write(root.join("net/ip_vs"), "").unwrap();
        assert!(preflight(&root).is_ok());
        std::fs::remove_dir_all(&root).unwrap();
    }
}
