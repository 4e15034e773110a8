//! The programs' own log records (aya-log): which ones are on, and where they go.
//!
//! The programs log only their rare paths (`ebpf/programs/src/lb/log.rs`): a new flow
//! dropped for want of a route or of room in the flow maps, and connections refused by
//! policy. `--bpf-log-level` sets the object's `AYA_LOG_LEVEL` global at load; the
//! verifier removes every record above it as dead code, so the default, `off`, costs
//! nothing. Records arrive through aya-log's ring buffer and are re-emitted as `tracing`
//! events with target [`TARGET`], at the level they were logged at.

use std::{
    os::fd::AsRawFd,
    sync::{
        Arc,
        atomic::{AtomicBool, Ordering},
    },
    thread::JoinHandle,
    time::Duration,
};

use aya::{Ebpf, EbpfLoader};
use aya_log::EbpfLogger;

use super::EbpfError;

/// The `tracing` target of the programs' records.
pub const TARGET: &str = "rudder_ebpf";

/// `--bpf-log-level`: the most detailed records the programs write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum BpfLogLevel {
    /// None (the records are removed before the programs first run).
    #[default]
    Off,
    Error,
    /// A new flow dropped: no route to its backend, no free source port to translate it,
    /// or a flow map refused its entry.
    Warn,
    /// Also connections refused by policy: no endpoints, outside
    /// `loadBalancerSourceRanges`, no local endpoint under `externalTrafficPolicy: Local`,
    /// an unknown ClusterIP port or an unallocated Service address.
    Info,
    Debug,
}

impl BpfLogLevel {
    /// The value of the programs' `AYA_LOG_LEVEL` (aya-log's level numbers; 0 is none).
    pub fn global(self) -> &'static u8 {
        match self {
            BpfLogLevel::Off => &0,
            BpfLogLevel::Error => &(aya_log::Level::Error as u8),
            BpfLogLevel::Warn => &(aya_log::Level::Warn as u8),
            BpfLogLevel::Info => &(aya_log::Level::Info as u8),
            BpfLogLevel::Debug => &(aya_log::Level::Debug as u8),
        }
    }

    /// Sets the level in the object `loader` loads. Every loader of the load balancer calls
    /// this: the object's own default is aya-log's, everything on.
    pub fn apply(self, loader: &mut EbpfLoader<'_>) {
        loader.override_global(aya_log::LEVEL, self.global(), true);
    }
}

/// Re-emits aya-log's records as `tracing` events.
pub struct ToTracing;

impl log::Log for ToTracing {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let message = record.args();
        match record.level() {
            log::Level::Error => tracing::error!(target: TARGET, "{message}"),
            log::Level::Warn => tracing::warn!(target: TARGET, "{message}"),
            log::Level::Info => tracing::info!(target: TARGET, "{message}"),
            log::Level::Debug => tracing::debug!(target: TARGET, "{message}"),
            log::Level::Trace => tracing::trace!(target: TARGET, "{message}"),
        }
    }

    fn flush(&self) {}
}

/// The programs' record ring buffer of `ebpf`, read into `tracing`.
pub fn logger(ebpf: &mut Ebpf) -> Result<EbpfLogger<ToTracing>, EbpfError> {
    EbpfLogger::init_with_logger(ebpf, ToTracing).map_err(|source| EbpfError::Logs { source })
}

/// A thread that forwards records as they arrive, until dropped.
pub struct LogForwarder {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

/// How long the forwarder sleeps in `poll` before it looks whether it should stop.
const POLL_INTERVAL: Duration = Duration::from_millis(500);

impl LogForwarder {
    pub fn start(mut logger: EbpfLogger<ToTracing>) -> Result<Self, EbpfError> {
        let stop = Arc::new(AtomicBool::new(false));
        let stopping = stop.clone();
        let thread = std::thread::Builder::new()
            .name("bpf-log".into())
            .spawn(move || {
                let mut pfd = libc::pollfd {
                    fd: logger.as_raw_fd(),
                    events: libc::POLLIN,
                    revents: 0,
                };
                while !stopping.load(Ordering::Relaxed) {
                    // SAFETY: one pollfd for the ring buffer's fd, which `logger` keeps open.
                    let ready = unsafe { libc::poll(&mut pfd, 1, POLL_INTERVAL.as_millis() as i32) };
                    if ready > 0 {
                        logger.flush();
                    } else if ready < 0 && std::io::Error::last_os_error().kind() != std::io::ErrorKind::Interrupted {
                        let error = std::io::Error::last_os_error();
                        tracing::warn!(%error, "stopped reading the programs' log records");
                        return;
                    }
                }
                logger.flush();
            })
            .map_err(|source| EbpfError::LogThread { source })?;
        Ok(Self {
            stop,
            thread: Some(thread),
        })
    }
}

impl Drop for LogForwarder {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}
