//! The XDP packet counter: proves that the build, load and test-run pipeline works on this
//! kernel, and gives benchmarks a floor.

use aya::{
    Ebpf,
    maps::PerCpuArray,
    programs::{ProgramError, TestRun, TestRunOptions, Xdp},
};
use rudder_abi::{COUNTERS_SLOT, PacketCounters, names};

use super::object::{self, LoadError};

/// A loaded (verified, not attached) counter program with its map.
pub struct Counter {
    ebpf: Ebpf,
}

/// What one `BPF_PROG_TEST_RUN` call returned.
#[derive(Debug, Clone, Copy)]
pub struct RunOutcome {
    /// The program's return value (an `xdp_action`).
    pub verdict: u32,
    /// Mean time per repetition as the kernel measured it.
    pub ns_per_run: u64,
}

impl Counter {
    /// Loads the counter and the bare pass program into the kernel.
    pub fn load() -> Result<Self, LoadError> {
        let mut ebpf = object::open()?;
        for name in [names::XDP_COUNTER, names::XDP_PASS] {
            let program: &mut Xdp = ebpf
                .program_mut(name)
                .ok_or(LoadError::MissingProgram { name })?
                .try_into()
                .map_err(|source| LoadError::Program { name, source })?;
            program.load().map_err(|source| LoadError::Program { name, source })?;
        }
        Ok(Self { ebpf })
    }

    /// Runs `program` over `packet` `repeat` times without attaching it anywhere.
    pub fn test_run(&self, program: &'static str, packet: &[u8], repeat: u32) -> Result<RunOutcome, LoadError> {
        let xdp: &Xdp = self
            .ebpf
            .program(program)
            .ok_or(LoadError::MissingProgram { name: program })?
            .try_into()
            .map_err(|source| LoadError::Program { name: program, source })?;
        let mut opts = TestRunOptions::new();
        opts.data_in = Some(packet);
        opts.repeat = repeat;
        let result = xdp
            .test_run(opts)
            .map_err(|source: ProgramError| LoadError::Program { name: program, source })?;
        Ok(RunOutcome {
            verdict: result.return_value,
            ns_per_run: u64::try_from(result.duration.as_nanos()).unwrap_or(u64::MAX),
        })
    }

    /// Packets and bytes counted so far, summed over CPUs.
    pub fn totals(&self) -> Result<PacketCounters, LoadError> {
        let name = names::COUNTERS_MAP;
        let map = self.ebpf.map(name).ok_or(LoadError::MissingMap { name })?;
        let array =
            PerCpuArray::<_, PacketCounters>::try_from(map).map_err(|source| LoadError::Map { name, source })?;
        let per_cpu = array
            .get(&COUNTERS_SLOT, 0)
            .map_err(|source| LoadError::Map { name, source })?;
        Ok(per_cpu.iter().fold(PacketCounters::default(), |sum, c| PacketCounters {
            packets: sum.packets + c.packets,
            bytes: sum.bytes + c.bytes,
        }))
    }

    /// Names of the programs in the loaded object, for reports.
    pub fn program_names(&self) -> Vec<String> {
        self.ebpf.programs().map(|(name, _)| name.to_owned()).collect()
    }
}

/// A 64-byte Ethernet + IPv4 + UDP frame (10.250.0.11:40000 -> 10.250.0.12:53), enough
/// for the counter; real fixtures come with the load balancer.
pub fn sample_frame() -> [u8; 64] {
    let mut f = [0u8; 64];
    f[0..6].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x02]); // dst MAC
    f[6..12].copy_from_slice(&[0x02, 0, 0, 0, 0, 0x01]); // src MAC
    f[12..14].copy_from_slice(&0x0800u16.to_be_bytes()); // IPv4
    let ip = &mut f[14..34];
    ip[0] = 0x45;
    ip[2..4].copy_from_slice(&50u16.to_be_bytes()); // total length: 20 + 8 + 22
    ip[8] = 64; // TTL
    ip[9] = 17; // UDP
    ip[12..16].copy_from_slice(&[10, 250, 0, 11]);
    ip[16..20].copy_from_slice(&[10, 250, 0, 12]);
    let checksum = ipv4_checksum(ip);
    ip[10..12].copy_from_slice(&checksum.to_be_bytes());
    let udp = &mut f[34..42];
    udp[0..2].copy_from_slice(&40000u16.to_be_bytes());
    udp[2..4].copy_from_slice(&53u16.to_be_bytes());
    udp[4..6].copy_from_slice(&30u16.to_be_bytes());
    f
}

fn ipv4_checksum(header: &[u8]) -> u16 {
    let mut sum: u32 = header
        .chunks(2)
        .map(|w| u32::from(u16::from_be_bytes([w[0], w[1]])))
        .sum();
    while sum > 0xffff {
        sum = (sum & 0xffff) + (sum >> 16);
    }
    !(sum as u16)
}
