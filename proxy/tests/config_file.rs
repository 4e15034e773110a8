//! `rudder-proxy run --config FILE` as an operator runs it: a bad field stops the binary
//! before it touches the kernel, naming the field; a good file is merged with the flags
//! (its kubeconfig path is the one the agent reads) and its unimplemented fields are named
//! in one warning.

use std::process::{Command, Output};

fn rudder_proxy(args: &[&str]) -> Output {
    // Cargo builds the binary for this package's integration tests and names it here.
    Command::new(env!("CARGO_BIN_EXE_rudder-proxy"))
        .args(args)
        .env("RUST_LOG", "info")
        .output()
        .expect("run rudder-proxy")
}

fn config(dir: &tempdir::Dir, body: &str) -> String {
    let path = dir.0.join("config.conf");
    std::fs::write(
        &path,
        format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\n{body}"),
    )
    .expect("write the config");
    path.display().to_string()
}

#[test]
fn an_invalid_field_stops_the_proxy_naming_it() {
    let dir = tempdir::Dir::new("invalid");
    for (body, expected) in [
        ("conntrack:\n  foo: 1\n", "unknown field \"foo\" at conntrack.foo"),
        (
            "iptables:\n  syncPeriod: 5x\n",
            "iptables.syncPeriod: invalid duration \"5x\"",
        ),
    ] {
        let path = config(&dir, body);
        let out = rudder_proxy(&["run", "--config", &path]);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(1), "must exit 1: {stderr}");
        assert!(
            stderr.contains(&format!("--config {path}: {expected}")),
            "stderr must name the file and the field ({expected}):\n{stderr}"
        );
    }
}

#[test]
fn a_valid_file_is_used_and_its_unimplemented_fields_named() {
    let dir = tempdir::Dir::new("valid");
    let missing = dir.0.join("no-such-kubeconfig");
    let path = config(
        &dir,
        &format!(
            "mode: nftables\nclusterCIDR: 10.244.0.0/16\nclientConnection:\n  kubeconfig: {}\n  qps: 50\nconntrack:\n  maxPerCore: 65536\nipvs:\n  strictARP: true\n",
            missing.display()
        ),
    );
    let bpf_root = dir.0.join("bpf").display().to_string();
    // In network and mount namespaces of its own, so the nftables table it creates and any
    // bpffs it mounts vanish with it. It stops where it reads the kubeconfig the file named.
    let out = Command::new("unshare")
        .args(["--net", "--mount", "--"])
        .arg(env!("CARGO_BIN_EXE_rudder-proxy"))
        .args([
            "run",
            "--config",
            &path,
            "--hostname-override",
            "n1",
            "--bpf-root",
            &bpf_root,
            "--healthz-bind-address",
            "",
            "--metrics-bind-address",
            "",
        ])
        .env("RUST_LOG", "info")
        .output()
        .expect("run rudder-proxy under unshare (needs root)");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("reading the kubeconfig: {}", missing.display())),
        "the agent must read clientConnection.kubeconfig from the file:\n{stderr}"
    );
    let warnings: Vec<&str> = stderr.lines().filter(|l| l.contains("does not implement")).collect();
    assert_eq!(warnings.len(), 1, "one warning:\n{stderr}");
    for field in ["clientConnection.qps", "conntrack.maxPerCore", "ipvs.strictARP"] {
        assert!(warnings[0].contains(field), "{field} missing from: {}", warnings[0]);
    }
}

/// A directory removed when dropped (the crate has no tempfile dependency).
mod tempdir {
    pub struct Dir(pub std::path::PathBuf);
    impl Dir {
        pub fn new(name: &str) -> Self {
            let path = std::env::temp_dir().join(format!("rudder-proxy-config-{name}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&path);
            std::fs::create_dir_all(&path).expect("a temp dir");
            Self(path)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}
