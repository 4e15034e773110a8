//! A running `rudder up` (the real binary) for the cluster tests: its progress lines, kubectl
//! against it, the network namespaces of its nodes and pods, and a teardown that leaves
//! nothing behind even when the test fails.

use std::{
    io::{BufRead, BufReader},
    net::Ipv4Addr,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::mpsc,
    time::{Duration, Instant},
};

use k8s_openapi::api::core::v1::Pod;

pub const RUDDER: &str = env!("CARGO_BIN_EXE_rudder");

/// A running `rudder up`; Ctrl-C (SIGINT) on drop tears the cluster down.
pub struct Up {
    pub child: Child,
    pub data_dir: tempfile::TempDir,
    pub name: String,
    pub underlay: Ipv4Addr,
    lines: mpsc::Receiver<String>,
    pub transcript: Vec<String>,
}

pub fn require_root_and_proxy() {
    assert_eq!(
        unsafe { libc::geteuid() },
        0,
        "the cluster tests need root (network namespaces, cgroups, eBPF)"
    );
    let proxy = Path::new(RUDDER).with_file_name("rudder-proxy");
    assert!(
        proxy.exists(),
        "{} is missing: build the workspace (cargo xtask test does)",
        proxy.display()
    );
}

impl Up {
    pub fn start(name: &str, underlay: Ipv4Addr, args: &[&str]) -> Self {
        require_root_and_proxy();
        let data_dir = tempfile::tempdir().expect("data dir");
        let mut child = Command::new(RUDDER)
            .arg("up")
            .args(["--name", name, "--underlay", &underlay.to_string()])
            .arg("--data-dir")
            .arg(data_dir.path())
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start rudder up");
        let (tx, lines) = mpsc::channel();
        let stdout = child.stdout.take().expect("stdout");
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                println!("rudder up: {line}");
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Self {
            child,
            data_dir,
            name: name.to_owned(),
            underlay,
            lines,
            transcript: Vec::new(),
        }
    }

    /// Waits for a progress line containing `marker`; panics with the transcript and the
    /// logs' tails if `rudder up` fails or takes longer than `limit`.
    pub fn wait_for(&mut self, marker: &str, limit: Duration) -> String {
        let deadline = Instant::now() + limit;
        loop {
            match self
                .lines
                .recv_timeout(deadline.saturating_duration_since(Instant::now()))
            {
                Ok(line) => {
                    self.transcript.push(line.clone());
                    if line.contains(marker) {
                        return line;
                    }
                }
                Err(_) => panic!(
                    "rudder up did not print {marker:?} within {limit:?}; it printed:\n{}\n{}",
                    self.transcript.join("\n"),
                    self.log_tails()
                ),
            }
        }
    }

    pub fn log_tails(&self) -> String {
        let mut out = String::new();
        for e in std::fs::read_dir(self.data_dir.path().join("logs"))
            .into_iter()
            .flatten()
            .flatten()
        {
            let text = std::fs::read_to_string(e.path()).unwrap_or_default();
            let tail: Vec<&str> = text.lines().rev().take(15).collect();
            out += &format!(
                "--- {} (last lines)\n{}\n",
                e.path().display(),
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        out
    }

    pub fn kubeconfig(&self) -> PathBuf {
        self.data_dir.path().join("server/admin.kubeconfig")
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        let cache = self.data_dir.path().join("kubectl-cache");
        let out = Command::new(super::kubectl(33))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(&cache)
            .args(args)
            .output()
            .expect("run kubectl");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout.into_owned()
    }

    /// kubectl that may fail: (success, stdout, stderr).
    pub fn kubectl_try(&self, args: &[&str]) -> (bool, String, String) {
        super::run_kubectl(
            33,
            &self.kubeconfig(),
            &self.data_dir.path().join("kubectl-cache"),
            args,
        )
    }

    pub fn kubectl_stdin(&self, args: &[&str], input: &str) -> String {
        use std::io::Write;
        let mut child = Command::new(super::kubectl(33))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.data_dir.path().join("kubectl-cache"))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write manifest");
        let out = child.wait_with_output().expect("kubectl");
        let (stdout, stderr) = (
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr),
        );
        assert!(out.status.success(), "kubectl {args:?} failed:\n{stdout}\n{stderr}");
        stdout.into_owned()
    }

    /// Runs kubectl 1.`minor` with `input` on its stdin; the output, whether it succeeded.
    pub fn kubectl_version(&self, minor: u32, args: &[&str], input: &str) -> std::process::Output {
        use std::io::Write;
        let mut child = Command::new(super::kubectl(minor))
            .arg("--kubeconfig")
            .arg(self.kubeconfig())
            .arg("--cache-dir")
            .arg(self.data_dir.path().join(format!("kubectl-cache-{minor}")))
            .args(args)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("run kubectl");
        child
            .stdin
            .take()
            .expect("stdin")
            .write_all(input.as_bytes())
            .expect("write kubectl's stdin");
        child.wait_with_output().expect("kubectl")
    }

    /// `kubectl apply -f -` of one manifest.
    pub fn apply(&self, manifest: &serde_json::Value) {
        self.kubectl_stdin(&["apply", "-f", "-"], &manifest.to_string());
    }

    pub fn node_netns(&self, k: usize) -> PathBuf {
        PathBuf::from("/run/netns").join(format!("rdr-{}-n{k}", self.name))
    }

    pub fn pod_netns(&self, pod: &Pod) -> PathBuf {
        let uid: String = pod
            .metadata
            .uid
            .clone()
            .unwrap_or_default()
            .chars()
            .filter(|c| c.is_ascii_alphanumeric())
            .take(12)
            .collect();
        let node = pod.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        PathBuf::from("/run/netns").join(format!("rdr-{}-{node}-{uid}", self.name))
    }

    /// The pid of node `node`'s agent (in its cgroup, beside the shims).
    pub fn agent_pid(&self, node: &str) -> i32 {
        let rel = format!("rudder/{}/{node}/agent", self.name);
        let dir = Path::new("/sys/fs/cgroup/unified").join(&rel);
        let dir = if dir.exists() {
            dir
        } else {
            Path::new("/sys/fs/cgroup").join(&rel)
        };
        let procs = std::fs::read_to_string(dir.join("cgroup.procs")).expect("agent cgroup");
        procs
            .lines()
            .filter_map(|l| l.trim().parse::<i32>().ok())
            .find(|pid| {
                let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
                let args: Vec<&[u8]> = cmdline.split(|b| *b == 0).collect();
                args.get(1) == Some(&b"node".as_slice())
            })
            .expect("the agent's pid")
    }
}

impl Drop for Up {
    fn drop(&mut self) {
        unsafe { libc::kill(self.child.id() as i32, libc::SIGINT) };
        let deadline = Instant::now() + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Whatever a killed `rudder up` could not remove goes now (a no-op after its own
        // teardown), so a failing test leaves nothing behind either.
        let leaked_before_cleanup = netns_of(&self.name);
        rudder_control::up::teardown(&rudder_control::up::Layout {
            name: self.name.clone(),
            data_dir: self.data_dir.path().to_owned(),
            underlay: self.underlay,
        });
        if !std::thread::panicking() {
            assert!(
                leaked_before_cleanup.is_empty(),
                "rudder up left network namespaces behind: {leaked_before_cleanup:?}"
            );
        }
    }
}

pub fn netns_of(name: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("rdr-{name}-")))
        .collect()
}
