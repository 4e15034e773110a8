//! One measurement in a fresh network namespace: `rudder-proxy bench` re-executes itself
//! there (`ip netns exec rbench-<pid>-<what> rudder-proxy bench-worker ...`, hidden) and
//! reads one JSON line back. A fresh namespace per measurement keeps one run's rules,
//! maps and conntrack entries out of the next one's figure.

use std::{os::unix::process::CommandExt, process::Command, time::Duration};

use anyhow::{Context, Result};

use super::{cleanup, packet, run};

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Job {
    Packet,
    Sync,
}

/// The hidden `bench-worker` subcommand's flags.
#[derive(Debug, Clone, clap::Args)]
pub struct WorkerArgs {
    #[arg(long, value_enum)]
    pub job: Job,
    #[arg(long)]
    pub services: usize,
    /// packet: runs per case.
    #[arg(long, default_value_t = 1_000_000)]
    pub runs: u32,
    /// sync: the mode to time.
    #[arg(long, value_enum)]
    pub mode: Option<run::BenchMode>,
    /// sync: endpoints per Service.
    #[arg(long, default_value_t = 10)]
    pub endpoints: usize,
    /// sync: one-change (and scale-up) syncs after the cold one.
    #[arg(long, default_value_t = 5)]
    pub reps: usize,
    /// The CPU to run on.
    #[arg(long)]
    pub cpu: Option<usize>,
}

impl WorkerArgs {
    pub fn to_args(&self) -> Vec<String> {
        let mut a = vec![
            "bench-worker".to_owned(),
            "--job".into(),
            match self.job {
                Job::Packet => "packet",
                Job::Sync => "sync",
            }
            .into(),
            "--services".into(),
            self.services.to_string(),
            "--runs".into(),
            self.runs.to_string(),
            "--endpoints".into(),
            self.endpoints.to_string(),
            "--reps".into(),
            self.reps.to_string(),
        ];
        if let Some(mode) = self.mode {
            a.extend(["--mode".into(), mode_name(mode)]);
        }
        if let Some(cpu) = self.cpu {
            a.extend(["--cpu".into(), cpu.to_string()]);
        }
        a
    }
}

pub fn mode_name(mode: run::BenchMode) -> String {
    clap::ValueEnum::to_possible_value(&mode).map_or_else(|| format!("{mode:?}"), |v| v.get_name().to_owned())
}

/// The worker itself: pinned, one measurement, one JSON line on stdout.
pub fn main(args: WorkerArgs) -> Result<()> {
    if let Some(cpu) = args.cpu {
        pin_to(cpu).with_context(|| format!("pinning the worker to CPU {cpu}"))?;
    }
    let line = match args.job {
        Job::Packet => {
            packet::set_up_routes()?;
            serde_json::to_string(&packet::run(args.services.max(1), args.runs)?)?
        }
        Job::Sync => {
            let mode = args.mode.context("--mode: a sync job needs the mode to time")?;
            serde_json::to_string(&run::run(mode, args.services.max(1), args.endpoints, args.reps)?)?
        }
    };
    println!("{line}");
    Ok(())
}

/// The CPU measured work runs on when not told: the last one this process may use (the
/// first tends to take more of the machine's interrupts).
pub fn default_cpu() -> Option<usize> {
    // SAFETY: a zeroed cpu_set_t is a valid empty set; the kernel fills it.
    let mut set: libc::cpu_set_t = unsafe { std::mem::zeroed() };
    // SAFETY: pid 0 is this thread; `set` is the size we pass.
    if unsafe { libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) } != 0 {
        return None;
    }
    // SAFETY: CPU_ISSET reads the set within CPU_SETSIZE.
    (0..libc::CPU_SETSIZE as usize)
        .rev()
        .find(|&c| unsafe { libc::CPU_ISSET(c, &set) })
}

pub fn pin_to(cpu: usize) -> std::io::Result<()> {
    // SAFETY: as in default_cpu; CPU_SET bounds-checks against CPU_SETSIZE.
    unsafe {
        let mut set: libc::cpu_set_t = std::mem::zeroed();
        libc::CPU_SET(cpu, &mut set);
        if libc::sched_setaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &set) != 0 {
            return Err(std::io::Error::last_os_error());
        }
    }
    Ok(())
}

/// Runs `job` in a fresh `rbench-<pid>-<what>` namespace and returns its JSON line. The
/// namespace goes when this returns (or fails); the worker dies with us (PDEATHSIG), and
/// the signal handler kills it first when interrupted.
pub fn run_isolated<T: serde::de::DeserializeOwned>(what: &str, job: &WorkerArgs) -> Result<T> {
    let ns = cleanup::Netns::create(what)?;
    let exe = std::env::current_exe().context("finding this executable to run the worker")?;
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.0]).arg(&exe).args(job.to_args());
    cmd.stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    // A process group of its own, so the handler kills the worker together with what it
    // runs (an `iptables-restore` of 100k rules outlives its parent by minutes).
    cmd.process_group(0);
    // SAFETY: prctl is async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    let child = cmd.spawn().context("starting `ip netns exec` for the worker")?;
    cleanup::set_child(Some(child.id()));
    let out = child.wait_with_output();
    cleanup::set_child(None);
    cleanup::park_if_interrupted();
    let out = out.context("waiting for the worker")?;
    anyhow::ensure!(
        out.status.success(),
        "worker {what} in {} ({}): {}",
        ns.0,
        out.status,
        String::from_utf8_lossy(&out.stderr).trim()
    );
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text.lines().last().unwrap_or_default();
    serde_json::from_str(line).with_context(|| format!("worker {what}: its output {line:?}"))
}

/// Waits (at most `limit`) until the CPUs are at least 90% idle over half a second: the
/// kernel frees a deleted namespace's rules in the background, and a run that starts while
/// the previous one's 100k chains are being torn down is measured against that.
pub fn settle(limit: Duration) {
    let idle = || -> Option<(u64, u64)> {
        let stat = std::fs::read_to_string("/proc/stat").ok()?;
        let cpu: Vec<u64> = stat
            .lines()
            .next()?
            .split_whitespace()
            .skip(1)
            .filter_map(|v| v.parse().ok())
            .collect();
        Some((cpu.get(3)? + cpu.get(4)?, cpu.iter().sum()))
    };
    let start = std::time::Instant::now();
    while start.elapsed() < limit {
        let Some((i0, t0)) = idle() else { return };
        std::thread::sleep(Duration::from_millis(500));
        let Some((i1, t1)) = idle() else { return };
        if t1 > t0 && (i1 - i0) as f64 / (t1 - t0) as f64 >= 0.9 {
            return;
        }
    }
}
