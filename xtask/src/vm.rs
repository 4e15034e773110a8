//! `cargo xtask vm -- CMD...`: runs a command as root inside a throw-away QEMU guest booted
//! with Debian's stock kernel (`linux-image-amd64`, 6.1, which has `CONFIG_IP_VS=m`), on the
//! host's own root filesystem.
//!
//! Why: the ipvs mode needs IP_VS, which the CI kernel lacks; this kernel has it and boots
//! under TCG in about 7 s. The guest sees the host's `/` read-only over 9p with a tmpfs
//! overlay on top (writes vanish at exit), plus writable 9p shares of the current directory
//! and `CARGO_TARGET_DIR` (and `--rw` ones), so build outputs and results land on the host.
//! The working directory and the exported environment carry over; the command's stdout and
//! stderr stream back over two virtio serial ports; its exit status becomes ours.
//!
//! `prepare` (run by `cargo xtask setup`) downloads the kernel package with `apt-get
//! download` and extracts it under the data directory — never installing it — then builds
//! the small initramfs that mounts the host root and switches to it.

use std::{
    fs,
    io::{Read, Write},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use anyhow::{Context, Result, bail};

use crate::{cmd, toolchain};

/// The meta package whose dependency names the kernel to fetch.
const KERNEL_META: &str = "linux-image-amd64";
/// Modules the initramfs loads before the host root is reachable (with their dependencies).
const EARLY_MODULES: &[&str] = &["virtio_pci", "9pnet_virtio", "9p", "overlay", "virtio_console"];
/// Exit status when the guest could not run the command at all.
const GUEST_FAILED: i32 = 125;
/// Exit status when the command ran out of time.
const TIMED_OUT: i32 = 124;

#[derive(clap::Args, Debug)]
pub struct VmArgs {
    /// Virtual CPUs (TCG runs each on a host thread).
    #[arg(long, default_value_t = 1)]
    pub cpus: u32,
    /// Guest memory in MiB.
    #[arg(long, default_value_t = 1024)]
    pub mem: u32,
    /// Kill the guest after this many seconds (exit status 124).
    #[arg(long, default_value_t = 3600)]
    pub timeout: u64,
    /// More host directories to share writable (the current directory and
    /// CARGO_TARGET_DIR always are).
    #[arg(long)]
    pub rw: Vec<PathBuf>,
    /// Accelerator: auto (KVM when the host offers VMX/SVM KVM, else TCG), kvm or tcg.
    #[arg(long, default_value = "auto")]
    pub accel: String,
    /// Print the guest's console (kernel messages) when it ends.
    #[arg(long)]
    pub console: bool,
    /// The command and its arguments, run as root in the guest.
    #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
    pub command: Vec<String>,
}

/// Where the extracted kernel, its modules and the initramfs live.
fn vm_dir() -> PathBuf {
    toolchain::data_dir().join("vm")
}

/// The kernel files `prepare` leaves, named by the release they were made for.
struct Kernel {
    release: String,
    root: PathBuf,
}

impl Kernel {
    fn modules(&self) -> PathBuf {
        self.root.join("lib/modules").join(&self.release)
    }
    fn vmlinuz(&self) -> PathBuf {
        self.root.join("boot").join(format!("vmlinuz-{}", self.release))
    }
    /// The uncompressed image: QEMU boots it through its PVH entry, about 4 s sooner.
    fn vmlinux(&self) -> PathBuf {
        vm_dir().join(format!("vmlinux-{}", self.release))
    }
    fn initrd(&self) -> PathBuf {
        vm_dir().join(format!("initrd-{}.cpio.gz", self.release))
    }

    /// The kernel `prepare` extracted (the release is recorded in `vm/release`).
    fn prepared() -> Result<Self> {
        let release = fs::read_to_string(vm_dir().join("release"))
            .ok()
            .map(|s| s.trim().to_owned())
            .filter(|s| !s.is_empty());
        let Some(release) = release else {
            bail!(
                "no guest kernel in {}: run `cargo xtask setup` (it downloads {KERNEL_META})",
                vm_dir().display()
            )
        };
        let kernel = Self {
            release,
            root: vm_dir().join("kernel"),
        };
        for f in [
            kernel.vmlinuz(),
            kernel.initrd(),
            kernel.modules().join("modules.dep.bin"),
        ] {
            if !f.exists() {
                bail!("{} is missing: run `cargo xtask setup`", f.display());
            }
        }
        Ok(kernel)
    }
}

/// Downloads and extracts the guest kernel and builds the initramfs; each step is skipped
/// when its result exists.
pub fn prepare() -> Result<()> {
    let dir = vm_dir();
    fs::create_dir_all(&dir)?;
    let depends = cmd::stdout(Command::new("apt-cache").args(["depends", KERNEL_META]))?;
    let package = depends
        .lines()
        .find_map(|l| l.trim().strip_prefix("Depends: "))
        .filter(|p| p.starts_with("linux-image-"))
        .with_context(|| format!("apt-cache depends {KERNEL_META} names no kernel package:\n{depends}"))?
        .to_owned();
    let release = package.trim_start_matches("linux-image-").to_owned();
    let kernel = Kernel {
        release: release.clone(),
        root: dir.join("kernel"),
    };
    if kernel.vmlinuz().exists() && kernel.modules().join("modules.dep.bin").exists() {
        println!("setup: guest kernel {release} present");
    } else {
        println!("setup: downloading {package} for the ipvs guest (extracted, not installed)");
        let download = dir.join("download");
        let _ = fs::remove_dir_all(&download);
        fs::create_dir_all(&download)?;
        cmd::run(
            Command::new("apt-get")
                .args(["download", &package])
                .current_dir(&download),
        )?;
        let deb = fs::read_dir(&download)?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .find(|p| p.extension().is_some_and(|x| x == "deb"))
            .with_context(|| format!("apt-get download {package} left no .deb"))?;
        cmd::run(Command::new("dpkg").arg("-x").arg(&deb).arg(&kernel.root))?;
        cmd::run(Command::new("depmod").arg("-b").arg(&kernel.root).arg(&release))?;
        fs::remove_dir_all(&download)?;
    }
    if !kernel.vmlinux().exists() {
        extract_vmlinux(&kernel)?;
    }
    if kernel.initrd().exists() {
        println!("setup: guest initramfs present");
    } else {
        build_initrd(&kernel)?;
    }
    fs::write(dir.join("release"), format!("{release}\n"))?;
    Ok(())
}

/// Unpacks the xz payload of the bzImage into an ELF `vmlinux` when the kernel has a PVH
/// entry; without one QEMU boots the bzImage (slower, still fine).
fn extract_vmlinux(kernel: &Kernel) -> Result<()> {
    let config =
        fs::read_to_string(kernel.root.join("boot").join(format!("config-{}", kernel.release))).unwrap_or_default();
    if !config.lines().any(|l| l == "CONFIG_PVH=y") {
        return Ok(());
    }
    let image = fs::read(kernel.vmlinuz())?;
    let magic = b"\xfd7zXZ\x00";
    let Some(offset) = image.windows(magic.len()).position(|w| w == magic) else {
        return Ok(());
    };
    let mut xz = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .context("starting xz")?;
    let mut stdin = xz.stdin.take().context("xz stdin")?;
    let payload = image[offset..].to_vec();
    let feeder = std::thread::spawn(move || {
        let _ = stdin.write_all(&payload);
    });
    let mut elf = Vec::new();
    xz.stdout.take().context("xz stdout")?.read_to_end(&mut elf)?;
    let _ = xz.wait();
    let _ = feeder.join();
    if elf.starts_with(b"\x7fELF") {
        let tmp = kernel.vmlinux().with_extension("tmp");
        fs::write(&tmp, &elf)?;
        fs::rename(&tmp, kernel.vmlinux())?;
        println!("setup: extracted {}", kernel.vmlinux().display());
    }
    Ok(())
}

/// PID 1 of the initramfs: loads the early modules, mounts the host root read-only with a
/// tmpfs overlay, the control share and the writable shares, then switches to the host
/// root and runs stage 2 there.
const INIT: &str = r#"#!/bin/busybox sh
/bin/busybox --install -s /bin
export PATH=/bin
mount -t proc proc /proc; mount -t sysfs sys /sys; mount -t devtmpfs dev /dev
fail() { echo "rudder-vm initramfs: $*" > /dev/ttyS0; poweroff -f; }
while read m; do insmod /mods/$m || fail "insmod $m"; done < /mods.list
O=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o ro,$O,cache=loose hostroot /lower || fail "mount hostroot"
mount -t tmpfs -o mode=755 tmpfs /upper && mkdir /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot || fail overlay
mount -t 9p -o $O,cache=none ctl /ctl || fail "mount ctl"
mkdir -p "/newroot$RUDDER_VM_CTL" && mount --bind /ctl "/newroot$RUDDER_VM_CTL"
i=0
while IFS= read -r p; do
  mkdir -p "/newroot$p" && mount -t 9p -o $O,cache=mmap rw$i "/newroot$p" || fail "mount rw $p"
  i=$((i+1))
done < /ctl/rw.list
for f in dev proc sys; do mount --move /$f /newroot/$f; done
exec switch_root /newroot /bin/bash "$RUDDER_VM_CTL/stage2.sh"
"#;

fn build_initrd(kernel: &Kernel) -> Result<()> {
    println!("setup: building the guest initramfs");
    let staging = vm_dir().join("initrd.staging");
    let _ = fs::remove_dir_all(&staging);
    for d in ["bin", "mods", "proc", "sys", "dev", "lower", "upper", "newroot", "ctl"] {
        fs::create_dir_all(staging.join(d))?;
    }
    fs::copy("/bin/busybox", staging.join("bin/busybox")).context("copying /bin/busybox (busybox-static)")?;
    let deps = cmd::stdout(
        Command::new("modprobe")
            .arg("-d")
            .arg(&kernel.root)
            .args(["-S", &kernel.release, "--show-depends", "-a"])
            .args(EARLY_MODULES),
    )?;
    let mut names = Vec::new();
    for line in deps.lines() {
        let mut words = line.split_whitespace();
        if words.next() != Some("insmod") {
            continue;
        }
        let Some(path) = words.next() else { continue };
        let name = Path::new(path).file_name().context("module path")?.to_owned();
        if !names.contains(&name) {
            fs::copy(path, staging.join("mods").join(&name)).with_context(|| format!("copying {path}"))?;
            names.push(name);
        }
    }
    let list: String = names.iter().map(|n| format!("{}\n", n.to_string_lossy())).collect();
    fs::write(staging.join("mods.list"), list)?;
    fs::write(staging.join("init"), INIT)?;
    set_executable(&staging.join("init"))?;
    let tmp = kernel.initrd().with_extension("tmp");
    cmd::run(
        Command::new("sh")
            .arg("-c")
            .arg("find . | cpio -o -H newc --quiet | gzip -1 > \"$0\"")
            .arg(&tmp)
            .current_dir(&staging),
    )?;
    fs::rename(&tmp, kernel.initrd())?;
    fs::remove_dir_all(&staging)?;
    Ok(())
}

fn set_executable(path: &Path) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(0o755))?;
    Ok(())
}

/// Stage 2, PID 1 on the overlaid host root: the pseudo filesystems, the guest kernel's
/// modules where modprobe looks, then the command with its output relayed to the ports.
const STAGE2: &str = r#"
export PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
m() { mkdir -p "${@: -1}"; mount "$@" 2>/dev/null; }
m -t devpts -o gid=5,mode=620,ptmxmode=666 devpts /dev/pts
m -t tmpfs -o mode=1777 tmpfs /dev/shm
m -t tmpfs -o mode=755 tmpfs /run
m -t cgroup2 cgroup2 /sys/fs/cgroup
m -t bpf bpf /sys/fs/bpf
m -t debugfs debugfs /sys/kernel/debug
m -t tracefs tracefs /sys/kernel/tracing
mkdir -p /lib/modules/$KVER && mount --bind "$KMODS" /lib/modules/$KVER
ln -sfn /proc/self/fd /dev/fd; ln -sf /proc/self/fd/0 /dev/stdin
ln -sf /proc/self/fd/1 /dev/stdout; ln -sf /proc/self/fd/2 /dev/stderr
hostname rudder-vm; ip link set lo up
port() { for n in /sys/class/virtio-ports/*; do [ "$(cat $n/name)" = $1 ] && echo /dev/${n##*/}; done; }
OUT=$(port out); ERR=$(port err)
. "$CTL/env.sh"
# A virtio port can be opened once: the command writes into fifos that one cat each
# relays, so it may reopen /dev/stdout or /dev/stderr freely.
mkfifo /run/vm.o /run/vm.e
cat /run/vm.o > "${OUT:-/dev/console}" & P1=$!
cat /run/vm.e > "${ERR:-/dev/console}" & P2=$!
bash "$CTL/cmd.sh" < /dev/null > /run/vm.o 2> /run/vm.e
rc=$?
for i in $(seq 30); do kill -0 $P1 2>/dev/null || kill -0 $P2 2>/dev/null || break; sleep 0.1; done
kill $P1 $P2 2>/dev/null
echo $rc > "$CTL/rc"
sync
exec /bin/busybox poweroff -f
"#;

/// Single-quotes `s` for bash.
fn quote(s: &str) -> String {
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// Runs the command in a guest and returns its exit status.
pub fn run(args: &VmArgs) -> Result<i32> {
    cmd::require_root("the VM task (9p shares of / and the guest's root)")?;
    let kernel = Kernel::prepared()?;
    let ctl = vm_dir().join(format!("run-{}", std::process::id()));
    let _ = fs::remove_dir_all(&ctl);
    fs::create_dir_all(&ctl)?;
    let result = boot(&kernel, &ctl, args);
    if args.console
        && let Ok(console) = fs::read_to_string(ctl.join("console.log"))
    {
        eprintln!("----- guest console -----\n{console}");
    }
    let _ = fs::remove_dir_all(&ctl);
    result
}

fn boot(kernel: &Kernel, ctl: &Path, args: &VmArgs) -> Result<i32> {
    let cwd = std::env::current_dir()?.canonicalize()?;
    let command: Vec<String> = args.command.iter().map(|a| quote(a)).collect();
    fs::write(
        ctl.join("cmd.sh"),
        format!(
            "cd {} 2>/dev/null || cd /\nexec {}\n",
            quote(&cwd.to_string_lossy()),
            command.join(" ")
        ),
    )?;
    let mut env = String::new();
    for (k, v) in std::env::vars() {
        if matches!(k.as_str(), "PWD" | "OLDPWD" | "SHLVL" | "_") || k.starts_with("BASH_") {
            continue;
        }
        if k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            env += &format!("export {k}={}\n", quote(&v));
        }
    }
    fs::write(ctl.join("env.sh"), env)?;
    fs::write(
        ctl.join("stage2.sh"),
        format!(
            "#!/bin/bash\nCTL={}\nKVER={}\nKMODS={}\n{STAGE2}",
            quote(&ctl.to_string_lossy()),
            quote(&kernel.release),
            quote(&kernel.modules().to_string_lossy())
        ),
    )?;

    let mut rw: Vec<PathBuf> = vec![cwd];
    rw.extend(std::env::var_os("CARGO_TARGET_DIR").map(PathBuf::from));
    rw.extend(args.rw.iter().cloned());
    let mut dirs: Vec<PathBuf> = rw
        .iter()
        .filter_map(|d| d.canonicalize().ok())
        .filter(|d| d != Path::new("/"))
        .collect();
    dirs.sort();
    dirs.dedup();
    // A directory inside another shared one is already writable through it.
    let shares: Vec<PathBuf> = dirs
        .iter()
        .filter(|d| !dirs.iter().any(|o| o != *d && d.starts_with(o)))
        .cloned()
        .collect();
    let list: String = shares.iter().map(|p| format!("{}\n", p.display())).collect();
    fs::write(ctl.join("rw.list"), list)?;

    let accel = match args.accel.as_str() {
        "auto" if kvm_usable() => "kvm",
        "auto" => "tcg",
        other => other,
    };
    let image = if kernel.vmlinux().exists() {
        kernel.vmlinux()
    } else {
        kernel.vmlinuz()
    };
    let fifo = |name: &str| -> Result<PathBuf> {
        let p = ctl.join(name);
        cmd::run(Command::new("mkfifo").arg(&p))?;
        Ok(p)
    };
    let (out_fifo, err_fifo) = (fifo("out.fifo")?, fifo("err.fifo")?);
    let virtfs = |path: &Path, tag: &str, extra: &str| {
        format!(
            "local,path={},mount_tag={tag},security_model=none,multidevs=remap{extra}",
            path.to_string_lossy().replace(',', ",,")
        )
    };
    let mut qemu = Command::new("qemu-system-x86_64");
    if accel == "kvm" {
        qemu.args(["-accel", "kvm", "-cpu", "host"]);
    } else {
        qemu.args(["-accel", "tcg,tb-size=256", "-cpu", "max"]);
    }
    qemu.args([
        "-machine",
        "pc",
        "-smp",
        &args.cpus.to_string(),
        "-m",
        &args.mem.to_string(),
    ])
    .args([
        "-nodefaults",
        "-no-user-config",
        "-display",
        "none",
        "-no-reboot",
        "-nic",
        "none",
    ])
    .arg("-kernel")
    .arg(&image)
    .arg("-initrd")
    .arg(kernel.initrd())
    .arg("-append")
    .arg(format!(
        "console=ttyS0 quiet loglevel=4 panic=-1 RUDDER_VM_CTL={}",
        ctl.display()
    ))
    .arg("-serial")
    .arg(format!("file:{}", ctl.join("console.log").display()))
    .arg("-virtfs")
    .arg(virtfs(Path::new("/"), "hostroot", ",readonly=on"))
    .arg("-virtfs")
    .arg(virtfs(ctl, "ctl", ""));
    for (i, dir) in shares.iter().enumerate() {
        qemu.arg("-virtfs").arg(virtfs(dir, &format!("rw{i}"), ""));
    }
    qemu.args(["-device", "virtio-serial-pci"])
        .arg("-chardev")
        .arg(format!("file,id=out,path={}", out_fifo.display()))
        .args(["-device", "virtserialport,chardev=out,name=out"])
        .arg("-chardev")
        .arg(format!("file,id=err,path={}", err_fifo.display()))
        .args(["-device", "virtserialport,chardev=err,name=err"])
        .stdin(Stdio::null());

    let relays = [
        relay(out_fifo.clone(), Box::new(std::io::stdout())),
        relay(err_fifo.clone(), Box::new(std::io::stderr())),
    ];
    let mut child = qemu
        .spawn()
        .context("starting qemu-system-x86_64 (cargo xtask setup installs it)")?;
    let deadline = Instant::now() + Duration::from_secs(args.timeout);
    let status = loop {
        if let Some(status) = child.try_wait()? {
            break Some(status);
        }
        if Instant::now() >= deadline {
            let _ = child.kill();
            let _ = child.wait();
            break None;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    // A relay still waiting for qemu to open its fifo gets a writer that closes at once.
    for f in [&out_fifo, &err_fifo] {
        let _ = fs::OpenOptions::new().write(true).custom_flags_nonblocking().open(f);
    }
    for r in relays {
        let _ = r.join();
    }
    let Some(status) = status else {
        eprintln!("xtask vm: timed out after {} s", args.timeout);
        return Ok(TIMED_OUT);
    };
    match fs::read_to_string(ctl.join("rc"))
        .ok()
        .and_then(|s| s.trim().parse().ok())
    {
        Some(rc) => Ok(rc),
        None => {
            let console = fs::read_to_string(ctl.join("console.log")).unwrap_or_default();
            let tail: Vec<&str> = console.lines().rev().take(30).collect();
            eprintln!(
                "xtask vm: the guest reported no exit status (qemu {status}); console:\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
            Ok(GUEST_FAILED)
        }
    }
}

trait NonBlocking {
    fn custom_flags_nonblocking(&mut self) -> &mut Self;
}

impl NonBlocking for fs::OpenOptions {
    fn custom_flags_nonblocking(&mut self) -> &mut Self {
        use std::os::unix::fs::OpenOptionsExt;
        const O_NONBLOCK: i32 = 0o4000;
        self.custom_flags(O_NONBLOCK)
    }
}

/// Copies what the guest writes into `fifo` to `to` as it arrives.
fn relay(fifo: PathBuf, mut to: Box<dyn Write + Send>) -> std::thread::JoinHandle<()> {
    std::thread::spawn(move || {
        let Ok(mut f) = fs::File::open(&fifo) else { return };
        let mut buf = [0u8; 8192];
        while let Ok(n) = f.read(&mut buf) {
            if n == 0 || to.write_all(&buf[..n]).is_err() {
                break;
            }
            let _ = to.flush();
        }
    })
}

/// KVM that can run a stock kernel: VMX or SVM (kvm_intel/kvm_amd), not a paravirtual one.
fn kvm_usable() -> bool {
    let writable = fs::OpenOptions::new().read(true).write(true).open("/dev/kvm").is_ok();
    writable && (Path::new("/sys/module/kvm_intel").exists() || Path::new("/sys/module/kvm_amd").exists())
}
