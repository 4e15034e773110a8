//! Loading and attaching the load balancer, so that a restart never leaves a gap.
//!
//! Maps are pinned under `--bpf-root` and reused by the next process; links are pinned
//! too, so the programs stay attached while the proxy is down. A starting proxy attaches
//! its programs first, then detaches the previous ones (tcx runs the earlier link first, and
//! both read the same maps, so packets see one consistent load balancer throughout).

use std::{
    ffi::CString,
    fs,
    os::fd::AsFd,
    path::{Path, PathBuf},
};

use aya::{
    Ebpf, EbpfLoader,
    maps::Array,
    programs::{
        CgroupAttachMode, CgroupSockAddr, SchedClassifier, TcAttachType, Xdp, XdpMode,
        links::{FdLink, LinkOrder, PinnedLink},
        tc::TcAttachOptions,
        xdp::XdpLink,
    },
};
use rudder_abi::{
    lb::{Config, Config6},
    names,
};

use super::{EbpfError, maps::KernelMaps};
use crate::model::IpNet;

const BPF_FS_MAGIC: i64 = 0xcafe_4a11;
/// Where we mount cgroup2 when nothing has (for example under `ip netns exec`).
const OWN_CGROUP2_MOUNT: &str = "/run/rudder/cgroup2";

/// `rudder-proxy run` settings of the ebpf mode.
#[derive(Debug, Clone)]
pub struct EbpfOptions {
    /// Directory on a bpffs for pinned maps and links (`--bpf-root`).
    pub bpf_root: PathBuf,
    /// cgroup v2 directory for socket LB (`--cgroup-path`); relative paths are relative to
    /// the cgroup2 root, which is also the default.
    pub cgroup: PathBuf,
    /// Devices for the per-packet programs (`--ebpf-devices`); empty: every device that is
    /// not a bridge port, and `lo`.
    pub devices: Vec<String>,
    /// `--service-cluster-ip-range` and `--cluster-cidr`: at most one range per family is
    /// used (the first).
    pub service_cidrs: Vec<IpNet>,
    pub pod_cidrs: Vec<IpNet>,
    /// Entries of the service and backend maps (`--bpf-lb-map-max`).
    pub lb_map_max: u32,
    /// `--bpf-lb-algorithm maglev`: table size and rows.
    pub maglev: Option<super::reconcile::MaglevConf>,
    /// `--flow-events`: the per-packet path reports each new flow's backend.
    pub flow_events: bool,
    /// `--bpf-lb-acceleration`.
    pub acceleration: Acceleration,
    /// `--xdp-devices`; empty: [`default_xdp_devices`].
    pub xdp_devices: Vec<String>,
    /// `--bpf-log-level`.
    pub log_level: super::BpfLogLevel,
}

/// `--bpf-lb-acceleration`: where the XDP program runs, if anywhere.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Acceleration {
    #[default]
    Disabled,
    /// In the driver, before an skb exists.
    Native,
    /// After the skb is built (any device).
    Generic,
}

impl Default for EbpfOptions {
    fn default() -> Self {
        Self {
            bpf_root: PathBuf::from("/sys/fs/bpf/rudder"),
            cgroup: PathBuf::new(),
            devices: Vec::new(),
            service_cidrs: Vec::new(),
            pod_cidrs: Vec::new(),
            lb_map_max: 65_536,
            maglev: None,
            flow_events: false,
            acceleration: Acceleration::Disabled,
            xdp_devices: Vec::new(),
            log_level: super::BpfLogLevel::Off,
        }
    }
}

/// The loaded, attached load balancer.
pub struct LoadedLb {
    ebpf: Ebpf,
    pub maps: KernelMaps,
    links: PathBuf,
    /// Devices the tc programs are attached to; `None` in `--ebpf-devices` is fixed.
    devices: std::collections::BTreeSet<String>,
    /// The socket-LB cgroup, and the map naming the sockets socket LB connected.
    pub cgroup: PathBuf,
    pub sock_reverse: super::terminate::SockReverseMaps,
    auto_devices: bool,
    /// Forwards the programs' log records while they are on (`--bpf-log-level`).
    _logs: Option<super::bpf_log::LogForwarder>,
}

fn statfs_type(path: &Path) -> Option<i64> {
    let c = CString::new(path.as_os_str().as_encoded_bytes()).ok()?;
    // SAFETY: a valid C string and an out-parameter of the right type.
    let mut st: libc::statfs = unsafe { std::mem::zeroed() };
    (unsafe { libc::statfs(c.as_ptr(), &mut st) } == 0).then_some(st.f_type as i64)
}

fn mount(source: &str, target: &Path, fstype: &'static str, needed_for: &'static str) -> Result<(), EbpfError> {
    fs::create_dir_all(target).map_err(EbpfError::fs("create", target))?;
    let failed = |source: std::io::Error| EbpfError::Mount {
        fstype,
        path: target.to_owned(),
        needed_for,
        source,
    };
    let (s, t, f) = (
        CString::new(source).map_err(|e| failed(e.into()))?,
        CString::new(target.as_os_str().as_encoded_bytes()).map_err(|e| failed(e.into()))?,
        CString::new(fstype).map_err(|e| failed(e.into()))?,
    );
    // SAFETY: valid C strings; no data argument.
    if unsafe { libc::mount(s.as_ptr(), t.as_ptr(), f.as_ptr(), 0, std::ptr::null()) } != 0 {
        return Err(failed(std::io::Error::last_os_error()));
    }
    Ok(())
}

/// Makes sure `root` is a directory on a bpffs, mounting one at its parent if needed.
fn ensure_bpffs(root: &Path) -> Result<(), EbpfError> {
    let parent = root.parent().unwrap_or(root);
    if statfs_type(parent) != Some(BPF_FS_MAGIC) {
        mount(
            "bpf",
            parent,
            "bpf",
            "the ebpf mode pins its maps on a bpffs; is CONFIG_BPF_SYSCALL set?",
        )?;
    }
    let links = root.join("links");
    fs::create_dir_all(&links).map_err(EbpfError::fs("create", links))
}

/// The cgroup2 root as mounted here, mounting it if nothing has.
fn cgroup2_root() -> Result<PathBuf, EbpfError> {
    let mountinfo = fs::read_to_string("/proc/self/mountinfo").unwrap_or_default();
    for line in mountinfo.lines() {
        let Some((left, right)) = line.split_once(" - ") else {
            continue;
        };
        if right.split_whitespace().next() == Some("cgroup2")
            && let Some(point) = left.split_whitespace().nth(4)
        {
            return Ok(PathBuf::from(point));
        }
    }
    let own = PathBuf::from(OWN_CGROUP2_MOUNT);
    mount("cgroup2", &own, "cgroup2", "socket load balancing needs cgroup v2")?;
    Ok(own)
}

fn resolve_cgroup(path: &Path) -> Result<PathBuf, EbpfError> {
    let full = if path.is_absolute() {
        path.to_owned()
    } else {
        cgroup2_root()?.join(path)
    };
    if !full.is_dir() {
        return Err(EbpfError::NoCgroup { path: full });
    }
    Ok(full)
}

/// Devices for tc: every interface, bridge ports included. A pod's veth is where its
/// packets are first seen, and the only place that sees a reply bridged straight to
/// another pod on the same node (which the bridge device itself never does).
fn default_devices() -> Result<Vec<String>, EbpfError> {
    let dir = fs::read_dir("/sys/class/net").map_err(EbpfError::fs("list", "/sys/class/net"))?;
    let mut out: Vec<String> = dir
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    out.sort();
    Ok(out)
}

/// External devices for XDP: those with an IPv4 or a global IPv6 address, except lo and
/// bridges (a pod bridge's traffic is the node's own; XDP on it would see only pods).
pub fn default_xdp_devices() -> Result<Vec<String>, EbpfError> {
    let mut out = std::collections::BTreeSet::new();
    let mut addrs: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: getifaddrs fills a list we free below; we only read it in between.
    if unsafe { libc::getifaddrs(&mut addrs) } != 0 {
        return Err(EbpfError::InterfaceAddresses {
            source: std::io::Error::last_os_error(),
        });
    }
    let mut cur = addrs;
    while !cur.is_null() {
        // SAFETY: a node of the list getifaddrs returned.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || !(is_ipv4(ifa.ifa_addr) || is_global_ipv6(ifa.ifa_addr)) {
            continue;
        }
        let name = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }
            .to_string_lossy()
            .into_owned();
        if ifa.ifa_flags & libc::IFF_LOOPBACK as u32 != 0 || is_bridge(&name) {
            continue;
        }
        out.insert(name);
    }
    // SAFETY: the list from getifaddrs above, freed once.
    unsafe { libc::freeifaddrs(addrs) };
    Ok(out.into_iter().collect())
}

fn is_ipv4(addr: *const libc::sockaddr) -> bool {
    // SAFETY: a non-null address from getifaddrs.
    let family = unsafe { (*addr).sa_family };
    family == libc::AF_INET as u16
}

/// An IPv6 address other than link-local (which every IPv6 device has).
fn is_global_ipv6(addr: *const libc::sockaddr) -> bool {
    // SAFETY: a non-null address from getifaddrs; AF_INET6 ones are sockaddr_in6.
    unsafe {
        (*addr).sa_family == libc::AF_INET6 as u16 && {
            let a = std::net::Ipv6Addr::from((*addr.cast::<libc::sockaddr_in6>()).sin6_addr.s6_addr);
            !a.is_unicast_link_local() && !a.is_loopback()
        }
    }
}

/// Whether `dev` is a bridge, by its driver's name (sysfs may show another namespace).
fn is_bridge(dev: &str) -> bool {
    driver_name(dev).as_deref() == Some("bridge")
}

/// The device's driver name (ETHTOOL_GDRVINFO), as `ethtool -i` reports it.
fn driver_name(dev: &str) -> Option<String> {
    const SIOCETHTOOL: libc::c_ulong = 0x8946;
    const ETHTOOL_GDRVINFO: u32 = 0x3;
    #[repr(C)]
    struct DrvInfo {
        cmd: u32,
        driver: [u8; 32],
        rest: [u8; 160],
    }
    let mut info = DrvInfo {
        cmd: ETHTOOL_GDRVINFO,
        driver: [0; 32],
        rest: [0; 160],
    };
    // SAFETY: plain structs; the ioctl writes at most sizeof(DrvInfo) into `info`.
    unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return None;
        }
        let mut req: libc::ifreq = std::mem::zeroed();
        for (d, s) in req.ifr_name.iter_mut().zip(dev.bytes().take(libc::IFNAMSIZ - 1)) {
            *d = s as libc::c_char;
        }
        req.ifr_ifru.ifru_data = (&mut info as *mut DrvInfo).cast();
        let rc = libc::ioctl(fd, SIOCETHTOOL, &mut req);
        libc::close(fd);
        if rc != 0 {
            return None;
        }
    }
    let end = info.driver.iter().position(|&b| b == 0).unwrap_or(info.driver.len());
    Some(String::from_utf8_lossy(&info.driver[..end]).into_owned())
}

/// Sizes the maps user space chooses the size of (the loader of a running proxy and the
/// test-run one alike).
pub(super) fn size_maps(loader: &mut EbpfLoader<'_>, lb_map_max: u32, maglev: Option<super::reconcile::MaglevConf>) {
    loader
        .map_max_entries(names::SERVICES, lb_map_max)
        .map_max_entries(names::SERVICES6, lb_map_max)
        .map_max_entries(names::BACKENDS, lb_map_max)
        .map_max_entries(names::BACKENDS6, lb_map_max)
        .map_max_entries(names::SLOTS, lb_map_max.saturating_mul(4))
        // Service ids index it; there are never more ports than frontends.
        .map_max_entries(names::SERVICE_STATS, lb_map_max)
        .map_max_entries(names::MAGLEV, maglev.map_or(1, |m| m.rows.saturating_mul(m.m)));
}

/// Writes the node-wide settings the programs read.
pub(super) fn write_config(
    ebpf: &mut Ebpf,
    service_cidrs: &[IpNet],
    pod_cidrs: &[IpNet],
    maglev: Option<super::reconcile::MaglevConf>,
    flow_events: bool,
) -> Result<(), EbpfError> {
    // Borrowed, not taken: programs loaded later must still find the map in the object.
    let map = ebpf
        .map_mut(names::CONFIG)
        .ok_or(EbpfError::MissingMap { name: names::CONFIG })?;
    let mut config: Array<&mut aya::maps::MapData, Config> = Array::try_from(map).map_err(|source| EbpfError::Map {
        name: names::CONFIG,
        source,
    })?;
    let (service_net, service_mask) = ipv4_net(service_cidrs);
    let (pod_net, pod_mask) = ipv4_net(pod_cidrs);
    let maglev_size = maglev.map_or(0, |m| m.m);
    let flow_events = u32::from(flow_events);
    let (snat_port_min, snat_port_count) = snat_ports()?;
    let value = Config {
        service_net,
        service_mask,
        pod_net,
        pod_mask,
        maglev_size,
        flow_events,
        snat_port_min,
        snat_port_count,
    };
    config.set(0, value, 0).map_err(|source| EbpfError::Map {
        name: names::CONFIG,
        source,
    })?;
    let map = ebpf
        .map_mut(names::CONFIG6)
        .ok_or(EbpfError::MissingMap { name: names::CONFIG6 })?;
    let mut config6: Array<&mut aya::maps::MapData, Config6> =
        Array::try_from(map).map_err(|source| EbpfError::Map {
            name: names::CONFIG6,
            source,
        })?;
    let (service_net, service_mask) = ipv6_net(service_cidrs);
    let (pod_net, pod_mask) = ipv6_net(pod_cidrs);
    let value = Config6 {
        service_net,
        service_mask,
        pod_net,
        pod_mask,
    };
    config6.set(0, value, 0).map_err(|source| EbpfError::Map {
        name: names::CONFIG6,
        source,
    })
}

/// The first IPv4 range of `cidrs` as network and mask (network order); zero: none.
fn ipv4_net(cidrs: &[IpNet]) -> (u32, u32) {
    match cidrs.iter().find_map(|c| match c {
        IpNet::V4(net) => Some(net),
        IpNet::V6(_) => None,
    }) {
        Some(net) => (u32::from(net.network()).to_be(), u32::from(net.netmask()).to_be()),
        None => (0, 0),
    }
}

/// The first IPv6 range of `cidrs` as network and mask words; zero: none.
fn ipv6_net(cidrs: &[IpNet]) -> ([u32; 4], [u32; 4]) {
    match cidrs.iter().find_map(|c| match c {
        IpNet::V6(net) => Some(net),
        IpNet::V4(_) => None,
    }) {
        Some(net) => (
            super::tables::v6_words(net.network()),
            super::tables::v6_words(net.netmask()),
        ),
        None => ([0; 4], [0; 4]),
    }
}

const EPHEMERAL_PORTS: &str = "/proc/sys/net/ipv4/ip_local_port_range";

/// The source ports the per-packet path gives the flows it translates, as
/// ([first; 2], [count; 2]): those the kernel never hands to a socket of its own
/// (`flow::open` in the eBPF programs says why).
fn snat_ports() -> Result<([u16; 2], [u16; 2]), EbpfError> {
    let text = fs::read_to_string(EPHEMERAL_PORTS).map_err(EbpfError::fs("read", EPHEMERAL_PORTS))?;
    let mut words = text.split_whitespace().map(str::parse::<u16>);
    let (Some(Ok(low)), Some(Ok(high))) = (words.next(), words.next()) else {
        return Err(EbpfError::PortRangeUnreadable {
            path: EPHEMERAL_PORTS,
            text,
        });
    };
    outside_ephemeral(low, high).ok_or(EbpfError::PortRangeTooWide {
        path: EPHEMERAL_PORTS,
        low,
        high,
        min: MIN_SNAT_PORTS,
    })
}

/// Fewer free ports than this would make translated flows to one backend collide.
const MIN_SNAT_PORTS: u32 = 1024;

/// The unprivileged ports outside the ephemeral range `low..=high`: the stretch above it
/// and the one below it (where servers listen, which is harmless for a source port).
fn outside_ephemeral(low: u16, high: u16) -> Option<([u16; 2], [u16; 2])> {
    let (low, high) = (u32::from(low), u32::from(high));
    let above = (high + 1, 65_535u32.saturating_sub(high));
    let below = (1024u32, low.saturating_sub(1024));
    let narrow = |(first, count): (u32, u32)| (first.min(65_535) as u16, count as u16);
    let ((a, n), (b, m)) = (narrow(above), narrow(below));
    (u32::from(n) + u32::from(m) >= MIN_SNAT_PORTS).then_some(([a, b], [n, m]))
}

/// Unpins the maps under `bpf_root` whose keys or values differ in size from this build's
/// (a proxy of another version pinned them, and the layout changed in between), and returns
/// their names. aya reuses a pinned map as it finds it, so the kernel would refuse our
/// programs over it, or accept them over entries of another shape. Fresh maps are created
/// in their place; what the old ones held (flows, among them) is lost, and logged as such.
pub fn unpin_stale_maps(bpf_root: &Path) -> Result<Vec<&'static str>, EbpfError> {
    let object = aya_obj::Object::parse(crate::ebpf::object::OBJECT)
        .map_err(|source| EbpfError::ParseObject { source: source.into() })?;
    let mut stale = Vec::new();
    for name in names::LB_MAPS {
        let pin = bpf_root.join(name);
        let Some(want) = object.maps.get(name) else { continue };
        if !pin.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&pin).map_err(|source| EbpfError::Map { name, source })?;
        if (info.key_size(), info.value_size()) != (want.key_size(), want.value_size()) {
            tracing::warn!(
                map = name,
                pinned = ?(info.key_size(), info.value_size()),
                now = ?(want.key_size(), want.value_size()),
                "a pinned map has another layout (key, value bytes) than this version's: replacing it; its entries are lost"
            );
            fs::remove_file(&pin).map_err(EbpfError::fs("unpin", &pin))?;
            stale.push(name);
        }
    }
    Ok(stale)
}

pub(super) fn take<T>(ebpf: &mut Ebpf, name: &'static str) -> Result<T, EbpfError>
where
    T: TryFrom<aya::maps::Map, Error = aya::maps::MapError>,
{
    let map = ebpf.take_map(name).ok_or(EbpfError::MissingMap { name })?;
    T::try_from(map).map_err(|source| EbpfError::Map { name, source })
}

impl LoadedLb {
    pub fn start(options: &EbpfOptions) -> Result<Self, EbpfError> {
        ensure_bpffs(&options.bpf_root)?;
        let cgroup = resolve_cgroup(&options.cgroup)?;
        let devices = if options.devices.is_empty() {
            default_devices()?
        } else {
            options.devices.clone()
        };
        unpin_stale_maps(&options.bpf_root)?;
        let mut loader = EbpfLoader::new();
        for name in names::LB_MAPS {
            loader.map_pin_path(name, options.bpf_root.join(name));
        }
        size_maps(&mut loader, options.lb_map_max, options.maglev);
        options.log_level.apply(&mut loader);
        let mut ebpf = loader
            .load(crate::ebpf::object::OBJECT)
            .map_err(|source| EbpfError::LoadObject { source: source.into() })?;
        // Before any program runs, so no record waits for a reader.
        let logs = match options.log_level {
            super::BpfLogLevel::Off => None,
            _ => Some(super::bpf_log::LogForwarder::start(super::bpf_log::logger(&mut ebpf)?)?),
        };
        write_config(
            &mut ebpf,
            &options.service_cidrs,
            &options.pod_cidrs,
            options.maglev,
            options.flow_events,
        )?;

        // A reply to the node's own connection to one of its addresses (a NodePort on itself,
        // from outside the socket-LB cgroup) is handed to lo with that address as source;
        // without accept_local, routing would drop it as a martian. lo only ever carries
        // the node's own packets, so this admits nothing from outside.
        fs::write("/proc/sys/net/ipv4/conf/lo/accept_local", "1")
            .map_err(EbpfError::fs("write", "/proc/sys/net/ipv4/conf/lo/accept_local"))?;
        let links = options.bpf_root.join("links");
        let mut fresh: Vec<(PathBuf, PathBuf)> = Vec::new();
        for name in [names::TC_INGRESS, names::TC_EGRESS] {
            tc_program(&mut ebpf, name)?
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        for dev in &devices {
            fresh.extend(attach_tc(&mut ebpf, &links, dev)?);
        }
        let xdp_devices = if options.acceleration == Acceleration::Disabled {
            Vec::new()
        } else if options.xdp_devices.is_empty() {
            default_xdp_devices()?
        } else {
            options.xdp_devices.clone()
        };
        if !xdp_devices.is_empty() {
            let prog = xdp_program(&mut ebpf, names::XDP_LB)?;
            prog.load().map_err(|source| EbpfError::Program {
                name: names::XDP_LB,
                source,
            })?;
            for dev in &xdp_devices {
                fresh.push(attach_xdp(prog, &links, dev, options.acceleration)?);
            }
        }
        let cgroup_dir = fs::File::open(&cgroup).map_err(EbpfError::fs("open", &cgroup))?;
        for name in names::SOCK_PROGRAMS {
            let prog: &mut CgroupSockAddr = ebpf
                .program_mut(name)
                .ok_or(EbpfError::MissingProgram { name })?
                .try_into()
                .map_err(|source| EbpfError::Program { name, source })?;
            prog.load().map_err(|source| EbpfError::Program { name, source })?;
            let id = prog
                // bpf_link attachments coexist with others by construction; the kernel refuses
                // mode flags on them.
                .attach(cgroup_dir.as_fd(), CgroupAttachMode::Single)
                .map_err(|source| EbpfError::Attach {
                    program: name,
                    target: format!("cgroup {}", cgroup.display()),
                    hint: "",
                    source: source.into(),
                })?;
            let link = prog
                .take_link(id)
                .map_err(|source| EbpfError::Program { name, source })?;
            let fd = FdLink::try_from(link).map_err(|source| EbpfError::Link {
                program: name,
                target: format!("cgroup {}", cgroup.display()),
                source,
            })?;
            let pin = links.join(name);
            fresh.push((pin_new(fd, &pin)?, pin));
        }
        // Only now that ours run: detach the previous process's programs. (An XDP link was
        // updated in place: its pin is already final.)
        for (new, pin) in &fresh {
            if new == pin {
                continue;
            }
            if pin.exists() {
                detach_pinned(pin)?;
            }
            fs::rename(new, pin).map_err(EbpfError::fs("rename", new))?;
        }
        // Links of devices we no longer attach to.
        let keep: Vec<&PathBuf> = fresh.iter().map(|(_, p)| p).collect();
        for entry in fs::read_dir(&links).map_err(EbpfError::fs("list", &links))?.flatten() {
            if !keep.contains(&&entry.path()) {
                detach_pinned(&entry.path())?;
            }
        }
        let maps = KernelMaps::take(&mut ebpf)?;
        let sock_reverse = super::terminate::SockReverseMaps {
            v4: take(&mut ebpf, names::SOCK_REVERSE)?,
            v6: take(&mut ebpf, names::SOCK_REVERSE6)?,
        };
        tracing::info!(?devices, ?xdp_devices, acceleration = ?options.acceleration, cgroup = %cgroup.display(), root = %options.bpf_root.display(), log_level = ?options.log_level, "ebpf load balancer attached");
        Ok(Self {
            ebpf,
            maps,
            links,
            devices: devices.into_iter().collect(),
            auto_devices: options.devices.is_empty(),
            cgroup,
            sock_reverse,
            _logs: logs,
        })
    }

    /// The per-Service counters map, for `/metrics` (once).
    pub fn take_stats(&mut self) -> Option<aya::maps::PerCpuArray<aya::maps::MapData, rudder_abi::PacketCounters>> {
        take(&mut self.ebpf, names::SERVICE_STATS).ok()
    }

    /// The XDP verdict counters, for `/metrics` (once).
    pub fn take_xdp_stats(&mut self) -> Option<aya::maps::PerCpuArray<aya::maps::MapData, rudder_abi::PacketCounters>> {
        take(&mut self.ebpf, names::XDP_STATS).ok()
    }

    /// Attaches the tc programs to devices that appeared since the last call (new pods'
    /// veths), and forgets the links of devices that went away.
    pub fn refresh_devices(&mut self) -> Result<(), EbpfError> {
        if !self.auto_devices {
            return Ok(());
        }
        let now: std::collections::BTreeSet<String> = default_devices()?.into_iter().collect();
        for dev in now.difference(&self.devices).cloned().collect::<Vec<_>>() {
            match attach_tc(&mut self.ebpf, &self.links, &dev) {
                Ok(fresh) => {
                    for (new, pin) in fresh {
                        if pin.exists() {
                            detach_pinned(&pin)?;
                        }
                        fs::rename(&new, &pin).map_err(EbpfError::fs("rename", &new))?;
                    }
                    tracing::info!(device = %dev, "attached the tc load balancer");
                    self.devices.insert(dev);
                }
                // A device can vanish between listing and attaching (a pod going away).
                Err(error) => tracing::debug!(device = %dev, error = %super::chain(&error), "could not attach"),
            }
        }
        for dev in self.devices.difference(&now).cloned().collect::<Vec<_>>() {
            for name in [names::TC_INGRESS, names::TC_EGRESS] {
                let pin = self.links.join(format!("{name}@{dev}"));
                if pin.exists() {
                    let _ = detach_pinned(&pin);
                }
            }
            self.devices.remove(&dev);
        }
        Ok(())
    }
}

pub(super) fn xdp_program<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut Xdp, EbpfError> {
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram { name })?
        .try_into()
        .map_err(|source| EbpfError::Program { name, source })
}

/// Attaches the XDP program to `dev`. A link a previous process pinned there gets our
/// program swapped in atomically (an interface has one XDP program per mode, so there
/// is no attaching ours beside it first); returns (pin, pin) then, else (new pin, pin).
fn attach_xdp(prog: &mut Xdp, links: &Path, dev: &str, mode: Acceleration) -> Result<(PathBuf, PathBuf), EbpfError> {
    let name = names::XDP_LB;
    let pin = links.join(format!("{name}@{dev}"));
    if pin.exists() {
        let link_error = |source| EbpfError::Link {
            program: name,
            target: format!("{dev} (pinned at {})", pin.display()),
            source,
        };
        let pinned = PinnedLink::from_pin(&pin).map_err(link_error)?;
        let link = XdpLink::try_from(FdLink::from(pinned)).map_err(link_error)?;
        let id = prog.attach_to_link(link).map_err(|source| EbpfError::Attach {
            program: name,
            target: format!("{dev}'s pinned XDP link"),
            hint: "",
            source: source.into(),
        })?;
        // The pin holds the link; dropping our handle leaves it attached.
        let _ = prog.take_link(id);
        return Ok((pin.clone(), pin));
    }
    let flags = match mode {
        Acceleration::Generic => XdpMode::Skb,
        _ => XdpMode::Driver,
    };
    let id = prog.attach(dev, flags).map_err(|source| EbpfError::Attach {
        program: name,
        target: format!("{dev} ({mode:?})"),
        hint: " (native XDP needs driver support; on a veth the peer also needs an XDP program or GRO to receive \
               what XDP sends; --bpf-lb-acceleration generic works on any device)",
        source: source.into(),
    })?;
    let link = prog
        .take_link(id)
        .map_err(|source| EbpfError::Program { name, source })?;
    let fd = FdLink::try_from(link).map_err(|source| EbpfError::Link {
        program: name,
        target: dev.to_owned(),
        source,
    })?;
    Ok((pin_new(fd, &pin)?, pin))
}

pub(super) fn tc_program<'e>(ebpf: &'e mut Ebpf, name: &'static str) -> Result<&'e mut SchedClassifier, EbpfError> {
    ebpf.program_mut(name)
        .ok_or(EbpfError::MissingProgram { name })?
        .try_into()
        .map_err(|source| EbpfError::Program { name, source })
}

/// Attaches both tc programs to `dev`; returns (new pin, final pin) pairs.
fn attach_tc(ebpf: &mut Ebpf, links: &Path, dev: &str) -> Result<Vec<(PathBuf, PathBuf)>, EbpfError> {
    let mut out = Vec::new();
    for (name, hook) in [
        (names::TC_INGRESS, TcAttachType::Ingress),
        (names::TC_EGRESS, TcAttachType::Egress),
    ] {
        let prog = tc_program(ebpf, name)?;
        let id = prog
            .attach_with_options(dev, hook, TcAttachOptions::TcxOrder(LinkOrder::default()))
            .map_err(|source| EbpfError::Attach {
                program: name,
                target: dev.to_owned(),
                hint: " (tcx, Linux 6.6+)",
                source: source.into(),
            })?;
        let link = prog
            .take_link(id)
            .map_err(|source| EbpfError::Program { name, source })?;
        let fd = FdLink::try_from(link).map_err(|source| EbpfError::Link {
            program: name,
            target: dev.to_owned(),
            source,
        })?;
        let pin = links.join(format!("{name}@{dev}"));
        out.push((pin_new(fd, &pin)?, pin));
    }
    Ok(out)
}

fn pin_new(fd: FdLink, pin: &Path) -> Result<PathBuf, EbpfError> {
    // bpffs refuses names with a dot.
    let mut name = pin.file_name().unwrap_or_default().to_owned();
    name.push("_new");
    let new = pin.with_file_name(name);
    let _ = fs::remove_file(&new);
    let pinned: PinnedLink = fd.pin(&new).map_err(|source| EbpfError::Pin {
        path: new.clone(),
        source,
    })?;
    // The pin keeps the link; our handle can go.
    drop(pinned);
    Ok(new)
}

fn detach_pinned(pin: &Path) -> Result<(), EbpfError> {
    let link = PinnedLink::from_pin(pin).map_err(|source| EbpfError::Link {
        program: "(pinned)",
        target: pin.display().to_string(),
        source,
    })?;
    let fd = link.unpin().map_err(EbpfError::fs("unpin", pin))?;
    drop(fd);
    Ok(())
}

/// Removes everything the ebpf mode pinned under `root` (links first: that detaches the
/// programs). Succeeds when nothing is there.
pub fn cleanup(root: &Path) -> Result<(), EbpfError> {
    if !root.exists() {
        return Ok(());
    }
    let links = root.join("links");
    if let Ok(dir) = fs::read_dir(&links) {
        for entry in dir.flatten() {
            detach_pinned(&entry.path())?;
        }
        let _ = fs::remove_dir(&links);
    }
    for entry in fs::read_dir(root).map_err(EbpfError::fs("list", root))?.flatten() {
        fs::remove_file(entry.path()).map_err(EbpfError::fs("remove", entry.path()))?;
    }
    fs::remove_dir(root).map_err(EbpfError::fs("remove", root))
}

#[cfg(test)]
mod tests {
    use super::outside_ephemeral;

    #[test]
    fn translated_ports_lie_outside_the_ephemeral_range() {
        // Linux's default: 61000-65535 and 1024-32767.
        assert_eq!(outside_ephemeral(32768, 60999), Some(([61000, 1024], [4536, 31744])));
        assert_eq!(outside_ephemeral(40000, 65535), Some(([65535, 1024], [0, 38976])));
        assert_eq!(outside_ephemeral(1024, 60000), Some(([60001, 1024], [5535, 0])));
        assert_eq!(outside_ephemeral(1024, 65535), None);
        assert_eq!(outside_ephemeral(1500, 65000), None);
    }
}
