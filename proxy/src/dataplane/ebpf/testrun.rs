//! The load balancer loaded but not attached, its maps written by the real reconciler,
//! and its programs run with `BPF_PROG_TEST_RUN`: what the fixture tests and the
//! per-packet benchmark drive ("packet in, packet out", as Katran's fixtures do).

use aya::{
    Ebpf, EbpfLoader,
    programs::{SchedClassifier, TestRun, TestRunOptions, Xdp},
};
use rudder_abi::names;

use super::{
    BpfLogLevel, EbpfError,
    attach::{tc_program, xdp_program},
    maps::KernelMaps,
    reconcile::{MaglevConf, Reconciler},
};
use crate::model::{DesiredState, IpNet};

/// One program run: its verdict, the packet it left, and the kernel's time per run.
#[derive(Debug, Clone)]
pub struct Outcome {
    pub verdict: u32,
    pub packet: Vec<u8>,
    pub ns_per_run: u64,
}

pub struct TestLb {
    ebpf: Ebpf,
    pub maps: KernelMaps,
    sock_reverse: super::terminate::SockReverseMaps,
    reconciler: Reconciler,
    /// What the config map was written from, to write it again.
    settings: (IpNet, IpNet, Option<MaglevConf>),
    /// The programs' log records, read on demand ([`Self::forward_logs`]).
    logs: Option<aya_log::EbpfLogger<super::bpf_log::ToTracing>>,
}

impl TestLb {
    /// Loads the programs (unpinned maps of `lb_map_max` frontends) and writes the config;
    /// their log records are off, as the proxy's default.
    pub fn load(
        service_cidr: IpNet,
        pod_cidr: IpNet,
        lb_map_max: u32,
        maglev: Option<MaglevConf>,
    ) -> Result<Self, EbpfError> {
        Self::load_with_logs(service_cidr, pod_cidr, lb_map_max, maglev, BpfLogLevel::Off)
    }

    /// [`Self::load`] with the programs' log records at `log_level` (`--bpf-log-level`).
    pub fn load_with_logs(
        service_cidr: IpNet,
        pod_cidr: IpNet,
        lb_map_max: u32,
        maglev: Option<MaglevConf>,
        log_level: BpfLogLevel,
    ) -> Result<Self, EbpfError> {
        let mut loader = EbpfLoader::new();
        super::attach::size_maps(&mut loader, lb_map_max, maglev);
        log_level.apply(&mut loader);
        let mut ebpf = loader
            .load(crate::ebpf::object::OBJECT)
            .map_err(|source| EbpfError::LoadObject { source: source.into() })?;
        for name in [names::TC_INGRESS, names::TC_EGRESS] {
            tc_program(&mut ebpf, name)?
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        for name in [names::XDP_PASS, names::XDP_LB] {
            xdp_program(&mut ebpf, name)?
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        super::attach::write_config(&mut ebpf, &[service_cidr], &[pod_cidr], maglev, false)?;
        let maps = KernelMaps::take(&mut ebpf)?;
        let sock_reverse = super::terminate::SockReverseMaps {
            v4: super::attach::take(&mut ebpf, names::SOCK_REVERSE)?,
            v6: super::attach::take(&mut ebpf, names::SOCK_REVERSE6)?,
        };
        // Taken whatever the level, so a test of the default can look for records too.
        let logs = Some(super::bpf_log::logger(&mut ebpf)?);
        let reconciler = match maglev {
            Some(m) => Reconciler::with_maglev(m),
            None => Reconciler::new(),
        }
        .with_service_ids(lb_map_max);
        Ok(Self {
            ebpf,
            maps,
            sock_reverse,
            reconciler,
            settings: (service_cidr, pod_cidr, maglev),
            logs,
        })
    }

    /// Hands the log records the programs have written so far to `tracing`, as the
    /// proxy's forwarder does (target [`super::bpf_log::TARGET`]).
    pub fn forward_logs(&mut self) {
        if let Some(logs) = &mut self.logs {
            logs.flush();
        }
    }

    /// Attaches the socket hooks to the cgroup v2 directory `cgroup` (absolute) until this
    /// is dropped, so real sockets of processes in it are balanced.
    pub fn attach_socket_lb(&mut self, cgroup: &std::path::Path) -> Result<(), EbpfError> {
        use aya::programs::CgroupAttachMode;
        let dir = std::fs::File::open(cgroup).map_err(EbpfError::fs("open", cgroup))?;
        self.load_socket_lb()?;
        for name in names::SOCK_PROGRAMS {
            self.sock_program(name)?
                .attach(&dir, CgroupAttachMode::Single)
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        Ok(())
    }

    /// Loads (has the kernel verify) the socket hooks, unattached.
    pub fn load_socket_lb(&mut self) -> Result<(), EbpfError> {
        for name in names::SOCK_PROGRAMS {
            self.sock_program(name)?
                .load()
                .map_err(|source| EbpfError::Program { name, source })?;
        }
        Ok(())
    }

    fn sock_program(&mut self, name: &'static str) -> Result<&mut aya::programs::CgroupSockAddr, EbpfError> {
        self.ebpf
            .program_mut(name)
            .ok_or(EbpfError::MissingProgram { name })?
            .try_into()
            .map_err(|source| EbpfError::Program { name, source })
    }

    /// What the proxy does after a sync that removed backends: ends the socket-LB'd
    /// connected UDP sockets of processes in `cgroup` whose backend left.
    pub fn end_departed_udp_sockets(&self, cgroup: &std::path::Path) -> Result<usize, EbpfError> {
        super::terminate::end_udp_sockets(cgroup, &self.reconciler.departed, &self.sock_reverse)
    }

    /// Turns flow events on (`--flow-events`); off after `load`, as in the proxy.
    pub fn enable_flow_events(&mut self) -> Result<(), EbpfError> {
        let (service, pod, maglev) = self.settings;
        super::attach::write_config(&mut self.ebpf, &[service], &[pod], maglev, true)
    }

    /// Narrows the source ports translated flows may be given (the proxy takes every port
    /// above the kernel's ephemeral range), so a test can use them all up.
    pub fn set_snat_ports(&mut self, min: u16, count: u16) -> Result<(), EbpfError> {
        let map = self
            .ebpf
            .map_mut(names::CONFIG)
            .ok_or(EbpfError::MissingMap { name: names::CONFIG })?;
        let mut config: aya::maps::Array<&mut aya::maps::MapData, rudder_abi::lb::Config> =
            aya::maps::Array::try_from(map).map_err(|source| EbpfError::Map {
                name: names::CONFIG,
                source,
            })?;
        let mut value = config.get(&0, 0).map_err(|source| EbpfError::Map {
            name: names::CONFIG,
            source,
        })?;
        value.snat_port_min = [min, 0];
        value.snat_port_count = [count, 0];
        config.set(0, value, 0).map_err(|source| EbpfError::Map {
            name: names::CONFIG,
            source,
        })
    }

    /// The flow events the programs have emitted so far.
    pub fn flow_events(&mut self) -> Result<Vec<super::flows::Flow>, EbpfError> {
        let map = self.ebpf.map_mut(names::FLOW_EVENTS).ok_or(EbpfError::MissingMap {
            name: names::FLOW_EVENTS,
        })?;
        let mut ring = aya::maps::RingBuf::try_from(map).map_err(|source| EbpfError::Map {
            name: names::FLOW_EVENTS,
            source,
        })?;
        Ok(
            std::iter::from_fn(|| ring.next().map(|item| super::flows::decode(&item)))
                .flatten()
                .collect(),
        )
    }

    /// Writes `state` into the maps (a full sync).
    pub fn sync(&mut self, state: &DesiredState) -> Result<(), EbpfError> {
        self.reconciler.sync(&mut self.maps, state, None)?;
        Ok(())
    }

    /// Writes what `diff` says changed (a partial sync, as the agent's loop does between
    /// full ones).
    pub fn sync_partial(&mut self, state: &DesiredState, diff: &crate::model::Diff) -> Result<(), EbpfError> {
        let touched = diff
            .added
            .iter()
            .chain(&diff.removed)
            .chain(diff.changed.keys())
            .cloned()
            .collect();
        self.reconciler.sync(&mut self.maps, state, Some(&touched))?;
        Ok(())
    }

    /// Runs `program` once over `packet` (`repeat` times when timing; the kernel reuses one
    /// buffer, so a rewriting program sees its own output from the second run on).
    pub fn run(&self, program: &'static str, packet: &[u8], repeat: u32) -> Result<Outcome, EbpfError> {
        self.run_on(program, packet, repeat, 0)
    }

    /// [`Self::run`], for XDP as if the packet arrived on `ingress_ifindex` (0: lo).
    pub fn run_on(
        &self,
        program: &'static str,
        packet: &[u8],
        repeat: u32,
        ingress_ifindex: u32,
    ) -> Result<Outcome, EbpfError> {
        let mut out = vec![0u8; packet.len() + 256];
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.data_out = Some(&mut out);
        opts.repeat = repeat.max(1);
        // struct xdp_md: data, data_end, data_meta, ingress_ifindex, rx_queue_index,
        // egress_ifindex. The kernel wants data_end to be the packet's length.
        let mut xdp_md = [0u8; 24];
        xdp_md[4..8].copy_from_slice(&(packet.len() as u32).to_ne_bytes());
        xdp_md[12..16].copy_from_slice(&ingress_ifindex.to_ne_bytes());
        if ingress_ifindex != 0 {
            opts.ctx_in = Some(&xdp_md);
        }
        let prog = self
            .ebpf
            .program(program)
            .ok_or(EbpfError::MissingProgram { name: program })?;
        let result = match program {
            names::XDP_PASS | names::XDP_COUNTER | names::XDP_LB => {
                let xdp: &Xdp = prog
                    .try_into()
                    .map_err(|source| EbpfError::Program { name: program, source })?;
                xdp.test_run(opts)
            }
            _ => {
                let tc: &SchedClassifier = prog
                    .try_into()
                    .map_err(|source| EbpfError::Program { name: program, source })?;
                tc.test_run(opts)
            }
        }
        .map_err(|source| EbpfError::Program { name: program, source })?;
        out.truncate(result.data_size_out as usize);
        Ok(Outcome {
            verdict: result.return_value,
            packet: out,
            ns_per_run: u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX),
        })
    }
}

/// The bare `XDP_PASS` program attached in driver mode to devices of the calling thread's
/// namespace, for as long as this lives. A veth delivers frames that its peer's XDP sends
/// with `XDP_TX` or redirects only when it runs XDP itself (its NAPI is on then); test
/// networks of veths attach this to the far ends.
pub struct XdpPassGuard {
    _ebpf: Ebpf,
}

pub fn attach_xdp_pass(devices: &[&str]) -> Result<XdpPassGuard, EbpfError> {
    let mut ebpf = EbpfLoader::new()
        .load(crate::ebpf::object::OBJECT)
        .map_err(|source| EbpfError::LoadObject { source: source.into() })?;
    let name = names::XDP_PASS;
    let prog = xdp_program(&mut ebpf, name)?;
    prog.load().map_err(|source| EbpfError::Program { name, source })?;
    for dev in devices {
        prog.attach(dev, aya::programs::XdpMode::Driver)
            .map_err(|source| EbpfError::Attach {
                program: name,
                target: (*dev).to_owned(),
                hint: "",
                source: source.into(),
            })?;
    }
    Ok(XdpPassGuard { _ebpf: ebpf })
}
