//! `cargo xtask image`: the `rudder-proxy` container image, built from Debian's packages with
//! no registry and no container engine.
//!
//! mmdebstrap downloads and extracts the packages of the tools the proxy runs (`nft`,
//! `iptables`/`ip6tables` in both flavours, `ip`) with their dependencies into a staging tree;
//! from it we copy only those tools, the shared libraries the dynamic loader says they and
//! the proxy need, and the data they read (xtables extensions, iproute2's tables). umoci
//! turns that root into an OCI image layout, skopeo writes it as a docker-archive `.tar`,
//! the format `docker load`, `podman load` and `ctr images import` all read.

use std::{
    collections::BTreeSet,
    fs,
    io::Read,
    os::unix::fs::{PermissionsExt, symlink},
    path::{Component, Path, PathBuf},
    process::Command,
    time::Instant,
};

use anyhow::{Context, Result, bail};

use crate::cmd;

/// The image's repository name; the DaemonSet in `proxy/deploy/base` names `NAME:VERSION`.
pub const NAME: &str = "rudder-proxy";
/// The workspace version, the image's tag.
pub const VERSION: &str = env!("CARGO_PKG_VERSION");
/// Where the proxy lives in the image, and its entrypoint.
pub const ENTRYPOINT: &str = "/usr/local/bin/rudder-proxy";
const PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// The Debian packages holding what the proxy executes (dataplane/command.rs callers).
const PACKAGES: &[&str] = &["nftables", "iptables", "iproute2"];
/// The executables the proxy runs, as the packages install them. The iptables names are
/// symlinks to the two xtables multi-binaries; every one the proxy may call is listed.
const EXECUTABLES: &[&str] = &["/usr/sbin/nft", "/sbin/ip", "/bin/ip"];
/// Data the tools load at run time: xtables extensions (dlopen'd per `-m`/`-j`, so the
/// loader's list for the binary does not name them), iproute2's name tables, protocol names.
const DATA: &[&str] = &[
    "/usr/lib/x86_64-linux-gnu/xtables",
    "/etc/iproute2",
    "/etc/protocols",
    "/etc/ethertypes",
];
/// The dynamic loader of the one architecture we build for.
const LOADER: &str = "/lib64/ld-linux-x86-64.so.2";

/// `cargo xtask image` arguments.
#[derive(clap::Args)]
pub struct ImageArgs {
    /// Build and package the debug binary (fast to build, larger) instead of the release one.
    #[arg(long)]
    debug: bool,
    /// Package this existing binary as is, building nothing.
    #[arg(long, conflicts_with = "debug")]
    binary: Option<PathBuf>,
    /// Where the OCI layout and the .tar go (default: <target dir>/image).
    #[arg(long)]
    out: Option<PathBuf>,
}

/// What a build produced.
#[derive(Debug)]
pub struct Image {
    /// The OCI image layout directory; the image is its tag `VERSION`.
    pub layout: PathBuf,
    /// The docker-archive tar, tagged `NAME:VERSION`.
    pub archive: PathBuf,
}

impl Image {
    /// `oci:<layout>:<tag>`, the reference umoci and skopeo take.
    pub fn oci_ref(&self) -> String {
        format!("{}:{VERSION}", self.layout.display())
    }
}

pub fn run(args: ImageArgs) -> Result<()> {
    cmd::require_root("building the image (mmdebstrap extracts packages as root, the loader runs in a chroot)")?;
    let root = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let target = crate::cluster::target_dir(&root);
    let binary = match args.binary {
        Some(b) => b,
        None => {
            let profile = if args.debug { "debug" } else { "release" };
            let mut build = Command::new(env!("CARGO"));
            build
                .current_dir(&root)
                .args(["build", "-p", "rudder-proxy", "--bin", "rudder-proxy"]);
            if !args.debug {
                build.arg("--release");
            }
            cmd::run(&mut build)?;
            target.join(profile).join("rudder-proxy")
        }
    };
    let out = args.out.unwrap_or_else(|| target.join("image"));
    let start = Instant::now();
    let image = build(&binary, &out)?;
    println!(
        "image: {NAME}:{VERSION} in {:.1}s\n  OCI layout: {}\n  archive:    {} ({:.1} MB; docker load / podman load / ctr images import)",
        start.elapsed().as_secs_f64(),
        image.layout.display(),
        image.archive.display(),
        fs::metadata(&image.archive)?.len() as f64 / 1e6
    );
    Ok(())
}

/// Builds the image around `binary` under `out`: `out/rudder-proxy` (OCI layout) and
/// `out/rudder-proxy-VERSION.tar` (docker-archive). Needs root and Debian's mirror.
pub fn build(binary: &Path, out: &Path) -> Result<Image> {
    if std::env::consts::ARCH != "x86_64" {
        bail!(
            "the image is built for amd64 only (its loader and library paths); this is {}",
            std::env::consts::ARCH
        );
    }
    if !binary.is_file() {
        bail!(
            "no rudder-proxy binary at {} (build it first, or drop --binary)",
            binary.display()
        );
    }
    fs::create_dir_all(out).with_context(|| format!("creating {}", out.display()))?;
    let out = out.canonicalize()?;
    let work = out.join("work");
    let _ = fs::remove_dir_all(&work);
    fs::create_dir_all(&work)?;
    let staging = work.join("staging");
    let rootfs = work.join("rootfs");

    extract_packages(&staging)?;
    // The proxy goes into the staging tree too, so the loader there resolves its libraries
    // exactly as for the tools.
    fs::create_dir_all(staging.join("usr/local/bin"))?;
    fs::copy(binary, staging.join(&ENTRYPOINT[1..])).with_context(|| format!("copying {}", binary.display()))?;
    assemble(&staging, &rootfs)?;

    let layout = out.join(NAME);
    let archive = out.join(format!("{NAME}-{VERSION}.tar"));
    let image = Image { layout, archive };
    pack(&rootfs, &image)?;
    fs::remove_dir_all(&work).with_context(|| format!("removing {}", work.display()))?;
    Ok(image)
}

/// The host's Debian release: the proxy binary is linked against its glibc, so the image
/// carries the same one.
fn host_suite() -> Result<String> {
    let release = fs::read_to_string("/etc/os-release").context("reading /etc/os-release")?;
    let field = |key: &str| {
        release
            .lines()
            .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))
            .map(|v| v.trim_matches('"').to_owned())
    };
    match (field("ID").as_deref(), field("VERSION_CODENAME")) {
        (Some("debian"), Some(codename)) => Ok(codename),
        (id, _) => bail!("the image is built from the host's Debian release, and this host is {id:?}, not Debian"),
    }
}

/// Downloads and extracts `PACKAGES` and their dependencies (no maintainer scripts run:
/// mmdebstrap's `extract` variant), from the release, its updates and its security fixes.
fn extract_packages(staging: &Path) -> Result<()> {
    let suite = host_suite()?;
    cmd::output(
        Command::new("mmdebstrap")
            .args(["--variant=extract", "--quiet", "--mode=root", "--format=directory"])
            .arg(format!("--include={}", PACKAGES.join(",")))
            .arg(&suite)
            .arg(staging)
            .arg(format!("deb http://deb.debian.org/debian {suite} main"))
            .arg(format!("deb http://deb.debian.org/debian {suite}-updates main"))
            .arg(format!(
                "deb http://deb.debian.org/debian-security {suite}-security main"
            )),
    )?;
    Ok(())
}

/// The image's root: the executables, the libraries the loader resolves for every ELF file
/// among them, and `DATA`, copied with their symlinks; plus the mount points and the
/// directory iptables locks in.
fn assemble(staging: &Path, rootfs: &Path) -> Result<()> {
    fs::create_dir_all(rootfs)?;
    let copier = Copier { staging, rootfs };
    copier.copy(Path::new(ENTRYPOINT))?;
    for exe in EXECUTABLES {
        copier.copy(Path::new(exe))?;
    }
    for family in ["iptables", "ip6tables"] {
        for suffix in ["", "-save", "-restore"] {
            for flavour in ["legacy", "nft"] {
                copier.copy(Path::new(&format!("/usr/sbin/{family}-{flavour}{suffix}")))?;
            }
            // Debian's default alternative (the proxy itself always names the flavour).
            let plain = rootfs.join(format!("usr/sbin/{family}{suffix}"));
            symlink(format!("{family}-nft{suffix}"), &plain).with_context(|| format!("linking {}", plain.display()))?;
        }
    }
    for data in DATA {
        copier.copy(Path::new(data))?;
    }

    let mut libraries = BTreeSet::new();
    for elf in elf_files(rootfs)? {
        let inside = Path::new("/").join(elf.strip_prefix(rootfs)?);
        libraries.extend(needed(staging, &inside)?);
    }
    for library in &libraries {
        copier.copy(library)?;
    }

    for (dir, mode) in [
        ("tmp", 0o1777),
        ("run", 0o755),
        ("proc", 0o755),
        ("sys", 0o755),
        ("dev", 0o755),
    ] {
        let path = rootfs.join(dir);
        fs::create_dir_all(&path)?;
        fs::set_permissions(&path, fs::Permissions::from_mode(mode))?;
    }
    Ok(())
}

/// Every regular file under `dir` that starts with the ELF magic.
fn elf_files(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut found = Vec::new();
    for entry in fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))? {
        let entry = entry?;
        let kind = entry.file_type()?;
        if kind.is_dir() {
            found.extend(elf_files(&entry.path())?);
        } else if kind.is_file() {
            let mut magic = [0u8; 4];
            let read = fs::File::open(entry.path())?.read(&mut magic)?;
            if read == 4 && &magic == b"\x7fELF" {
                found.push(entry.path());
            }
        }
    }
    Ok(found)
}

/// The libraries the loader in `staging` maps for `file` (a path inside it), transitively.
/// A library it cannot find is an error here rather than in a pod.
fn needed(staging: &Path, file: &Path) -> Result<Vec<PathBuf>> {
    let out = Command::new("chroot")
        .arg(staging)
        .arg(LOADER)
        .arg("--list")
        .arg(file)
        .output()
        .with_context(|| format!("running the loader on {}", file.display()))?;
    let text = String::from_utf8_lossy(&out.stdout);
    if text.contains("statically linked") {
        return Ok(Vec::new());
    }
    if !out.status.success() {
        bail!(
            "the loader cannot list {}'s libraries ({}): {}",
            file.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let mut libraries = Vec::new();
    for line in text.lines().map(str::trim) {
        let path = match line.split_once("=>") {
            Some((name, resolved)) => {
                let resolved = resolved.trim();
                if resolved.starts_with("not found") {
                    bail!("{} needs {}, which no package provides", file.display(), name.trim());
                }
                resolved.split(" (").next().unwrap_or_default()
            }
            None => line.split(" (").next().unwrap_or_default(),
        };
        if path.starts_with('/') {
            libraries.push(PathBuf::from(path));
        }
    }
    Ok(libraries)
}

/// Copies paths from the staging tree into the root as they are there: every symlink on the
/// way (e.g. `libfoo.so.1 -> libfoo.so.1.2`, `/sbin/ip -> /bin/ip`) is recreated and
/// followed, directories are copied whole.
struct Copier<'a> {
    staging: &'a Path,
    rootfs: &'a Path,
}

impl Copier<'_> {
    fn copy(&self, path: &Path) -> Result<()> {
        self.copy_within(path, 0)
            .with_context(|| format!("copying {} into the image", path.display()))
    }

    fn copy_within(&self, path: &Path, depth: usize) -> Result<()> {
        if depth > 40 {
            bail!("too many levels of symbolic links at {}", path.display());
        }
        let relative = path
            .strip_prefix("/")
            .with_context(|| format!("{} is not absolute", path.display()))?;
        let parts: Vec<Component> = relative.components().collect();
        let mut at = PathBuf::from("/");
        for (i, part) in parts.iter().enumerate() {
            let here = at.join(part);
            let inner = here.strip_prefix("/")?;
            let (src, dst) = (self.staging.join(inner), self.rootfs.join(inner));
            let meta =
                fs::symlink_metadata(&src).with_context(|| format!("{} is not in the packages", here.display()))?;
            if meta.file_type().is_symlink() {
                let target = fs::read_link(&src)?;
                if fs::symlink_metadata(&dst).is_err() {
                    symlink(&target, &dst)?;
                }
                let rest: PathBuf = parts[i + 1..].iter().collect();
                return self.copy_within(&normalize(&at.join(target).join(rest)), depth + 1);
            }
            if meta.is_dir() {
                fs::create_dir_all(&dst)?;
                fs::set_permissions(&dst, meta.permissions())?;
                if i + 1 == parts.len() {
                    for entry in fs::read_dir(&src)? {
                        self.copy_within(&here.join(entry?.file_name()), depth)?;
                    }
                }
            } else if fs::symlink_metadata(&dst).is_err() {
                fs::copy(&src, &dst).with_context(|| format!("copying {}", src.display()))?;
            }
            at = here;
        }
        Ok(())
    }
}

/// `a/b/../c` → `a/c`, without touching the file system (the paths are inside the staging
/// tree, not the host's).
fn normalize(path: &Path) -> PathBuf {
    let mut out = PathBuf::from("/");
    for part in path.components() {
        match part {
            Component::ParentDir => {
                out.pop();
            }
            Component::Normal(p) => out.push(p),
            Component::RootDir | Component::CurDir | Component::Prefix(_) => {}
        }
    }
    out
}

/// The root becomes one layer of an OCI image (umoci), configured to run the proxy, then a
/// docker-archive tar (skopeo).
fn pack(rootfs: &Path, image: &Image) -> Result<()> {
    let _ = fs::remove_dir_all(&image.layout);
    let _ = fs::remove_file(&image.archive);
    let oci = image.oci_ref();
    cmd::output(Command::new("umoci").args(["init", "--layout"]).arg(&image.layout))?;
    cmd::output(Command::new("umoci").args(["new", "--image", &oci]))?;
    cmd::output(
        Command::new("umoci")
            .args(["insert", "--image", &oci, "--history.created_by", "cargo xtask image"])
            .arg(rootfs)
            .arg("/"),
    )?;
    cmd::output(Command::new("umoci").args([
        "config",
        "--image",
        &oci,
        "--config.entrypoint",
        ENTRYPOINT,
        "--config.cmd",
        "run",
        "--config.env",
        PATH_ENV,
        "--config.workingdir",
        "/",
        "--config.label",
        &format!("org.opencontainers.image.title={NAME}"),
        "--config.label",
        &format!("org.opencontainers.image.version={VERSION}"),
        "--history.created_by",
        "cargo xtask image",
    ]))?;
    cmd::output(Command::new("umoci").args(["gc", "--layout"]).arg(&image.layout))?;
    cmd::output(
        Command::new("skopeo")
            .args(["copy", "--quiet"])
            .arg(format!("oci:{oci}"))
            .arg(format!("docker-archive:{}:{NAME}:{VERSION}", image.archive.display())),
    )?;
    Ok(())
}

#[cfg(test)]
mod tests {
    //! Builds the image through `build` (what `cargo xtask image --binary` runs) around the
    //! debug proxy `cargo test --workspace` builds, then checks it as its consumers would.

    use std::{
        path::PathBuf,
        process::{Child, Command, Stdio},
        thread,
        time::Duration,
    };

    use serde_json::Value;

    use super::*;

    fn stdout(cmd: &mut Command) -> String {
        crate::cmd::stdout(cmd).unwrap_or_else(|e| panic!("{e:#}"))
    }

    fn json(cmd: &mut Command) -> Value {
        let text = stdout(cmd);
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{cmd:?} printed no JSON ({e}):\n{text}"))
    }

    /// target/debug/rudder-proxy, beside this test's target/debug/deps/.
    fn debug_proxy() -> PathBuf {
        let exe = std::env::current_exe().expect("the test executable's path");
        let tried: Vec<PathBuf> = exe
            .ancestors()
            .skip(1)
            .take(2)
            .map(|d| d.join("rudder-proxy"))
            .collect();
        tried.iter().find(|p| p.is_file()).cloned().unwrap_or_else(|| {
            panic!(
                "no rudder-proxy binary (tried {tried:?}); `cargo build -p rudder-proxy` (cargo xtask test builds it)"
            )
        })
    }

    fn sha256(path: &Path) -> String {
        let line = stdout(Command::new("sha256sum").arg(path));
        line.split_whitespace().next().unwrap_or_default().to_owned()
    }

    /// A blob of the layout, checked against its descriptor: the file's digest and size.
    fn blob(layout: &Path, descriptor: &Value) -> PathBuf {
        let digest = descriptor["digest"].as_str().expect("a descriptor's digest");
        let hex = digest.strip_prefix("sha256:").expect("a sha256 digest");
        let path = layout.join("blobs/sha256").join(hex);
        assert_eq!(sha256(&path), hex, "blob {digest} does not hash to its name");
        let size = fs::metadata(&path).expect("the blob").len();
        assert_eq!(Some(size), descriptor["size"].as_u64(), "blob {digest}'s size");
        path
    }

    /// rules the iptables mode writes (every match and target extension it uses), per family.
    const RULES_V4: &str = "*nat
:KUBE-SERVICES - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-SVC-IMAGE - [0:0]
:KUBE-SEP-IMAGE - [0:0]
-A PREROUTING -m comment --comment rudder -j KUBE-SERVICES
-A KUBE-MARK-MASQ -j MARK --or-mark 0x4000
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MASQUERADE --random-fully
-A KUBE-SERVICES -d 10.96.0.10/32 -p tcp -m comment --comment \"ns/svc:http cluster IP\" -m tcp --dport 80 -j KUBE-SVC-IMAGE
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j RETURN
-A KUBE-SVC-IMAGE -m statistic --mode random --probability 0.5 -j KUBE-SEP-IMAGE
-A KUBE-SEP-IMAGE -m recent --name KUBE-SEP-IMAGE --set --mask 255.255.255.255 --rsource -p tcp -j DNAT --to-destination 10.244.1.10:8080
COMMIT
*filter
:KUBE-FORWARD - [0:0]
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-FORWARD -d 10.96.0.11/32 -p udp -j REJECT --reject-with icmp-port-unreachable
COMMIT
";
    const RULES_V6: &str = "*nat
:KUBE-SEP-IMAGE - [0:0]
-A KUBE-SEP-IMAGE -m recent --name KUBE-SEP-IMAGE --set --rsource -p tcp -j DNAT --to-destination [fd00::10]:8080
COMMIT
*filter
:KUBE-FORWARD - [0:0]
-A KUBE-FORWARD -d fd00:96::11/128 -p udp -j REJECT --reject-with icmp6-port-unreachable
COMMIT
";
    const NFT: &str = "table ip rudder-image {
  map service-ips {
    type ipv4_addr . inet_proto . inet_service : verdict
    elements = { 10.96.0.10 . tcp . 80 : goto svc }
  }
  chain svc {
    numgen random mod 2 vmap { 0 : accept, 1 : accept }
  }
  chain nat-prerouting {
    type nat hook prerouting priority dstnat
    ip daddr . meta l4proto . th dport vmap @service-ips
  }
}
";

    #[test]
    fn the_image_holds_the_proxy_and_every_tool_it_runs() {
        crate::cmd::require_root("the image test (mmdebstrap, chroot)").unwrap_or_else(|e| panic!("{e:#}"));
        let started = Instant::now();
        let scratch = Scratch(std::env::temp_dir().join(format!("rudder-image-test-{}", std::process::id())));
        let out = scratch.0.clone();
        let image = build(&debug_proxy(), &out).unwrap_or_else(|e| panic!("building the image: {e:#}"));
        let built = started.elapsed();
        let oci = format!("oci:{}", image.oci_ref());

        // The layout, blob by blob: index → manifest → config and layer, digests and sizes
        // as their descriptors say, the media types the OCI image spec names.
        let index: Value = serde_json::from_slice(&fs::read(image.layout.join("index.json")).unwrap()).unwrap();
        let descriptors = index["manifests"].as_array().expect("index.json's manifests");
        assert_eq!(descriptors.len(), 1, "one image in {index}");
        assert_eq!(
            descriptors[0]["mediaType"],
            "application/vnd.oci.image.manifest.v1+json"
        );
        assert_eq!(
            descriptors[0]["annotations"]["org.opencontainers.image.ref.name"],
            VERSION
        );
        let manifest: Value = serde_json::from_slice(&fs::read(blob(&image.layout, &descriptors[0])).unwrap()).unwrap();
        assert_eq!(
            manifest["config"]["mediaType"],
            "application/vnd.oci.image.config.v1+json"
        );
        let layers = manifest["layers"].as_array().expect("the manifest's layers");
        assert_eq!(layers.len(), 1, "one layer: {manifest}");
        assert_eq!(layers[0]["mediaType"], "application/vnd.oci.image.layer.v1.tar+gzip");
        let compressed = fs::metadata(blob(&image.layout, &layers[0])).unwrap().len();
        let config: Value =
            serde_json::from_slice(&fs::read(blob(&image.layout, &manifest["config"])).unwrap()).unwrap();
        // What an engine runs: `rudder-proxy run` unless the pod says otherwise.
        assert_eq!(config["config"]["Entrypoint"], serde_json::json!([ENTRYPOINT]));
        assert_eq!(config["config"]["Cmd"], serde_json::json!(["run"]));
        assert_eq!(
            (config["os"].as_str(), config["architecture"].as_str()),
            (Some("linux"), Some("amd64"))
        );
        let diff_ids = &config["rootfs"]["diff_ids"];
        // The same, read by the OCI tools: umoci's history and skopeo's view of the config.
        let stat = json(Command::new("umoci").args(["stat", "--json", "--image", &image.oci_ref()]));
        assert!(
            stat["history"].to_string().contains("cargo xtask image"),
            "umoci stat: {stat}"
        );
        let seen = json(Command::new("skopeo").args(["inspect", "--config", &oci]));
        assert_eq!(seen["config"]["Entrypoint"], config["config"]["Entrypoint"]);

        // Unpacked as a runtime would, then every tool run inside that root with the
        // image's PATH: a missing library or extension fails here.
        let bundle = out.join("bundle");
        stdout(
            Command::new("umoci")
                .args(["unpack", "--image", &image.oci_ref()])
                .arg(&bundle),
        );
        let runtime: Value = serde_json::from_slice(&fs::read(bundle.join("config.json")).unwrap()).unwrap();
        assert_eq!(runtime["process"]["args"], serde_json::json!([ENTRYPOINT, "run"]));
        let rootfs = bundle.join("rootfs");
        let unpacked = stdout(Command::new("du").args(["-sb"]).arg(&rootfs));
        let inside = |args: &[&str]| -> String {
            let mut cmd = Command::new("chroot");
            cmd.env_clear()
                .env("PATH", &PATH_ENV["PATH=".len()..])
                .arg(&rootfs)
                .args(args);
            stdout(&mut cmd)
        };
        let version = inside(&[ENTRYPOINT, "--version"]);
        assert_eq!(version.trim(), format!("rudder-proxy {VERSION}"));
        for (args, expect) in [
            (&["nft", "--version"][..], "nftables v"),
            (&["iptables-legacy", "--version"], "(legacy)"),
            (&["iptables-nft", "--version"], "(nf_tables)"),
            (&["ip6tables-legacy-restore", "--version"], "(legacy)"),
            (&["ip6tables-nft-save", "--version"], "(nf_tables)"),
            (&["iptables", "--version"], "(nf_tables)"),
            (&["ip", "-V"], "iproute2"),
        ] {
            let said = inside(args);
            assert!(said.contains(expect), "{args:?} printed {said:?}, not {expect:?}");
        }

        // Real work in a network namespace of their own (with /proc mounted, as a runtime
        // does; iptables-legacy-save reads the table names there): the rules each mode
        // writes, applied and read back by the image's tools.
        let run = |script: &str| {
            stdout(
                Command::new("unshare")
                    .args([
                        "--net",
                        "--mount",
                        "--",
                        "sh",
                        "-euc",
                        &format!("mount -t proc proc \"$ROOT/proc\"\n{script}"),
                    ])
                    .env_clear()
                    .env("PATH", &PATH_ENV["PATH=".len()..])
                    .env("ROOT", &rootfs)
                    .env("RULES_V4", RULES_V4)
                    .env("RULES_V6", RULES_V6)
                    .env("NFT", NFT),
            )
        };
        for flavour in ["legacy", "nft"] {
            let saved = run(&format!(
                "printf %s \"$RULES_V4\" | chroot \"$ROOT\" iptables-{flavour}-restore
                 printf %s \"$RULES_V6\" | chroot \"$ROOT\" ip6tables-{flavour}-restore
                 chroot \"$ROOT\" iptables-{flavour}-save; chroot \"$ROOT\" ip6tables-{flavour}-save"
            ));
            for rule in [
                "--probability 0.5",
                "--to-destination 10.244.1.10:8080",
                "--to-destination [fd00::10]:8080",
            ] {
                assert!(
                    saved.contains(rule),
                    "iptables-{flavour} did not keep {rule:?}:\n{saved}"
                );
            }
        }
        let listed = run(
            "printf %s \"$NFT\" | chroot \"$ROOT\" nft -f -; chroot \"$ROOT\" nft list ruleset
             chroot \"$ROOT\" ip link add rdr-image0 type veth peer name rdr-image1
             chroot \"$ROOT\" ip addr add 10.96.0.10/32 dev rdr-image0
             chroot \"$ROOT\" ip -o addr show dev rdr-image0",
        );
        assert!(listed.contains("numgen random mod 2"), "nft list ruleset:\n{listed}");
        assert!(listed.contains("inet 10.96.0.10/32"), "ip addr:\n{listed}");

        // The tar, read by containers/image (what podman load and skopeo use) both ways it
        // can be: as the docker-archive it is (manifest.json, what docker load and ctr
        // images import read first) and copied into an OCI layout, which verifies every
        // layer against the config's diff_ids.
        let tar = format!("docker-archive:{}", image.archive.display());
        let manifests: Value = serde_json::from_str(&stdout(
            Command::new("tar").arg("-xOf").arg(&image.archive).arg("manifest.json"),
        ))
        .unwrap();
        assert_eq!(
            manifests[0]["RepoTags"],
            serde_json::json!([format!("docker.io/library/{NAME}:{VERSION}")])
        );
        let loaded = out.join("loaded");
        stdout(Command::new("skopeo").args(["copy", "--quiet", &tar, &format!("oci:{}:{VERSION}", loaded.display())]));
        let reloaded =
            json(Command::new("skopeo").args(["inspect", "--config", &format!("oci:{}:{VERSION}", loaded.display())]));
        assert_eq!(reloaded["config"], config["config"], "the tar's config");
        assert_eq!(&reloaded["rootfs"]["diff_ids"], diff_ids, "the tar's layer");

        // And by containerd, what kubeadm nodes run: `ctr images import` names it as the
        // kubelet resolves `rudder-proxy:VERSION`, and runc starts its entrypoint and
        // command as configured: `rudder-proxy run`, which stops at the missing kubeconfig.
        let containerd = Containerd::start(&out.join("containerd"));
        let reference = format!("docker.io/library/{NAME}:{VERSION}");
        stdout(
            containerd
                .ctr()
                .args(["images", "import", "--snapshotter", "native"])
                .arg(&image.archive),
        );
        let listed = stdout(containerd.ctr().args(["images", "ls", "-q"]));
        assert!(listed.lines().any(|l| l == reference), "ctr images ls:\n{listed}");
        let ran = containerd
            .ctr()
            .args(["run", "--rm", "--snapshotter", "native"])
            // Its own cgroup (one level, which runc removes with the container), FIFOs and
            // runc state, so nothing outlives the test.
            .arg(format!("--cgroup=/rudder-image-test-{}", std::process::id()))
            .arg("--fifo-dir")
            .arg(out.join("containerd/fifo"))
            .arg("--runc-root")
            .arg(out.join("containerd/runc"))
            .arg(&reference)
            .arg(format!("rudder-image-{}", std::process::id()))
            .output()
            .expect("ctr run");
        let said = format!(
            "{}{}",
            String::from_utf8_lossy(&ran.stdout),
            String::from_utf8_lossy(&ran.stderr)
        );
        assert!(
            !ran.status.success() && said.contains("reading the kubeconfig"),
            "the image's default process is not `rudder-proxy run` ({}):\n{said}",
            ran.status
        );
        drop(containerd);

        println!(
            "image {NAME}:{VERSION} (debug binary): built in {:.1}s, layer {:.1} MB compressed, {:.1} MB unpacked, tar {:.1} MB; checked in {:.1}s",
            built.as_secs_f64(),
            compressed as f64 / 1e6,
            unpacked
                .split_whitespace()
                .next()
                .and_then(|n| n.parse::<f64>().ok())
                .unwrap_or(0.0)
                / 1e6,
            fs::metadata(&image.archive).unwrap().len() as f64 / 1e6,
            (started.elapsed() - built).as_secs_f64()
        );
    }

    /// The test's directory, removed however the test ends.
    struct Scratch(PathBuf);

    impl Drop for Scratch {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    /// A containerd of the test's own: its own root, state and socket, no CRI plugin;
    /// killed on drop.
    struct Containerd {
        child: Child,
        socket: PathBuf,
    }

    impl Containerd {
        fn start(dir: &Path) -> Self {
            fs::create_dir_all(dir).unwrap();
            let socket = dir.join("containerd.sock");
            let config = dir.join("config.toml");
            fs::write(
                &config,
                format!(
                    "version = 2\nroot = {root:?}\nstate = {state:?}\n\
                     disabled_plugins = [\"io.containerd.grpc.v1.cri\"]\n\
                     [grpc]\naddress = {socket:?}\n[ttrpc]\naddress = \"{socket}.ttrpc\"\n",
                    root = dir.join("root"),
                    state = dir.join("state"),
                    socket = socket.display(),
                ),
            )
            .unwrap();
            let log = fs::File::create(dir.join("containerd.log")).unwrap();
            let child = Command::new("containerd")
                .arg("--config")
                .arg(&config)
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("starting containerd (cargo xtask setup installs it)");
            let containerd = Containerd { child, socket };
            let deadline = Instant::now() + Duration::from_secs(60);
            while !containerd
                .ctr()
                .arg("version")
                .output()
                .is_ok_and(|o| o.status.success())
            {
                assert!(
                    Instant::now() < deadline,
                    "containerd did not answer within 60 s:\n{}",
                    fs::read_to_string(dir.join("containerd.log")).unwrap_or_default()
                );
                thread::sleep(Duration::from_millis(100));
            }
            containerd
        }

        fn ctr(&self) -> Command {
            let mut ctr = Command::new("ctr");
            ctr.arg("--address")
                .arg(&self.socket)
                .args(["--namespace", "rudder-image"]);
            ctr
        }
    }

    impl Drop for Containerd {
        fn drop(&mut self) {
            let _ = self.child.kill();
            let _ = self.child.wait();
            // containerd 1.6 keeps shim sockets in /run/containerd/s whatever its state
            // directory; remove what is left only if empty, i.e. only what we made.
            for dir in ["/run/containerd/s", "/run/containerd"] {
                let _ = fs::remove_dir(dir);
            }
        }
    }
}
