//! The compiled eBPF object, embedded at build time by proxy/build.rs.

use aya::Ebpf;

/// The ELF object holding every Rudder eBPF program, aligned as aya requires.
pub static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/rudder-ebpf.o"));

/// Errors from loading the object.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    #[error("the kernel refused the eBPF object (are you root, with BPF and BTF enabled?)")]
    Object(#[source] aya::EbpfError),
    #[error("program `{name}` is missing from the eBPF object")]
    MissingProgram { name: &'static str },
    #[error("map `{name}` is missing from the eBPF object")]
    MissingMap { name: &'static str },
    #[error("program `{name}`")]
    Program {
        name: &'static str,
        #[source]
        source: aya::programs::ProgramError,
    },
    #[error("map `{name}`")]
    Map {
        name: &'static str,
        #[source]
        source: aya::maps::MapError,
    },
}

/// Parses the embedded object and creates its maps in the kernel. Programs are loaded
/// (verified) one by one by the code that needs them.
pub fn open() -> Result<Ebpf, LoadError> {
    Ebpf::load(OBJECT).map_err(LoadError::Object)
}
